"""A sequential LSTM written as a recursion over chains: step t's only child is step t-1 (``prev``, -1 at a first
step); a batch of sequences is a forest of chains (see :mod:`onnx_ops.grids`).

    x = E[word];  [i, f, g, o] = x @ W + h_prev @ U + b;  c = σ(f)⊙c_prev + σ(i)⊙tanh(g);  h = σ(o)⊙tanh(c)

with a zero initial state (h_prev = c_prev = 0 at a first step). Matrices are stored as ONNX MatMul expects
(``x @ W``): ``W`` [D, 4H], ``U`` [H, 4H], ``b`` [4H]; gate chunks are contiguous blocks of H in the order i, f, g, o
(PyTorch's nn.LSTMCell order, whose ``weight_ih`` is ``W.T``).

Three forms: :func:`reference` (numpy, the Loop visit semantics), :func:`build_treerec` (``cortex.TreeRec`` with
K = 1: ``children`` = ``prev[:, None]``; a first step is a TreeRec leaf) and :func:`build_loop` (a hand-built ONNX
Loop/If model). PyTorch versions: :mod:`onnx_ops.zoo.torch_models_b`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..grids import Chains
from cortex.examples._build import (I64, IR_VERSION, OPSET, EmbeddingSizes, branch, const, embed_affine, leaf_test,  # noqa: F401
                      loop_model, node, row_infos, sigmoid, treerec_internal, treerec_leaf, treerec_model, uniform, vi,
                      visit, visit_body, visit_head, zero_table)

__all__ = ["ChainLSTMParams", "build_loop", "build_treerec", "make_params", "reference"]


@dataclass
class ChainLSTMParams(EmbeddingSizes):
    """float32 weights: ``embedding`` [V, D], ``W`` [D, 4H], ``U`` [H, 4H], ``b`` [4H] (gates i, f, g, o)."""

    embedding: np.ndarray
    W: np.ndarray
    U: np.ndarray
    b: np.ndarray

    @property
    def hidden(self) -> int:
        return int(self.b.shape[0] // 4)


def make_params(hidden: int, embed_dim: int, vocab: int, seed: int = 0) -> ChainLSTMParams:
    """Random weights, uniform ±1/sqrt(H) like nn.LSTMCell (embedding ±1)."""
    u = uniform(seed)
    s = 1 / np.sqrt(hidden)
    return ChainLSTMParams(
        embedding=u((vocab, embed_dim), 1.0),
        W=u((embed_dim, 4 * hidden), s),
        U=u((hidden, 4 * hidden), s),
        b=u((4 * hidden,), s),
    )


def cell(p: ChainLSTMParams, x, h_prev, c_prev) -> tuple[np.ndarray, np.ndarray]:
    """(h, c) of one step (or a batch of rows)."""
    i, f, g, o = np.split(x @ p.W + h_prev @ p.U + p.b, 4, axis=-1)
    c = sigmoid(f) * c_prev + sigmoid(i) * np.tanh(g)
    return (sigmoid(o) * np.tanh(c)).astype(np.float32), c.astype(np.float32)


def reference(
    params: ChainLSTMParams,
    words,
    prev=None,
    order=None,
    *,
    first_test: str = "negative",
) -> tuple[np.ndarray, np.ndarray]:
    """numpy (h, c) [N, H] with the exact visit semantics of an exported Loop: tables start at zeros; for each v
    in ``order`` (repeats and subsets allowed) v is a first step (zero previous state) iff ``prev[v] < 0``
    (``first_test="negative"``, the PyTorch styles) or ``prev[v] == -1`` (``"minus_one"``, :func:`build_loop`);
    otherwise it reads rows ``prev[v]`` as they are at that moment (negative indices wrap, out of range raises
    IndexError, like ONNX Gather); rows v are overwritten. ``words`` may be a :class:`~onnx_ops.grids.Chains`."""
    if isinstance(words, Chains):
        words, prev, order = words.words, words.prev, words.order
    is_first = leaf_test(first_test, "first_test")
    H = params.hidden
    zero = np.zeros(H, dtype=np.float32)

    def step(v, tables):
        h, c = tables
        p = int(prev[v])
        x = params.embedding[words[v]]
        if is_first(p):
            return cell(params, x, zero, zero)
        return cell(params, x, h[p], c[p])

    return tuple(visit(int(np.shape(words)[0]), [H, H], order, step))


def _gates_nodes(word: str) -> list[onnx.NodeProto]:
    """gates = Gather(E, word) @ W + h_prev @ U + b."""
    return [
        node("Gather", ["E", word], ["x"], axis=0),
        node("MatMul", ["x", "W"], ["xW"]),
        node("MatMul", ["h_prev", "U"], ["hU"]),
        node("Add", ["xW", "hU"], ["s"]),
        node("Add", ["s", "b"], ["gates"]),
    ]


def _cell_nodes(i: str, f: str, g: str, o: str, c: str, h: str) -> list[onnx.NodeProto]:
    """c = σ(f)⊙c_prev + σ(i)⊙tanh(g); h = σ(o)⊙tanh(c)."""
    return [
        node("Sigmoid", [f], ["sf"]),
        node("Mul", ["sf", "c_prev"], ["fc"]),
        node("Sigmoid", [i], ["si"]),
        node("Tanh", [g], ["tg"]),
        node("Mul", ["si", "tg"], ["ig"]),
        node("Add", ["fc", "ig"], [c]),
        node("Sigmoid", [o], ["so"]),
        node("Tanh", [c], ["tc"]),
        node("Mul", ["so", "tc"], [h]),
    ]


# ----------------------------------------------------------------------------------------------------------------
# cortex.TreeRec form


def build_treerec(params: ChainLSTMParams) -> onnx.ModelProto:
    """A ``cortex.TreeRec`` model: inputs ``children`` int64 [N, 1] (= prev, -1 at first steps), ``words`` int64
    [N]; outputs ``h``, ``c`` float32 [N, H]. Leaf body ``word -> (h, c)`` (zero previous state: no U term, no
    forget term); internal body ``(h_prev, c_prev, word) -> (h, c)``."""
    H = params.hidden
    n = node
    leaf = treerec_leaf(
        "chainlstm",
        embed_affine("x", "gates", b="b") + [
            n("Split", ["gates", "split4"], ["i", "f", "g", "o"], axis=0),
            n("Sigmoid", ["i"], ["si"]),
            n("Tanh", ["g"], ["tg"]),
            n("Mul", ["si", "tg"], ["c"]),
            n("Sigmoid", ["o"], ["so"]),
            n("Tanh", ["c"], ["tc"]),
            n("Mul", ["so", "tc"], ["h"]),
        ],
        [("h", H), ("c", H)],
        [const("E", params.embedding), const("W", params.W), const("b", params.b),
         const("split4", np.array([H] * 4, np.int64))],
    )
    internal = treerec_internal(
        "chainlstm",
        _gates_nodes("word") + [n("Split", ["gates", "split4"], ["i", "f", "g", "o"], axis=0)]
        + _cell_nodes("i", "f", "g", "o", "c", "h"),
        row_infos(["h_prev", "c_prev"], H), [("h", H), ("c", H)],
        [const("E", params.embedding), const("W", params.W), const("U", params.U),
         const("b", params.b), const("split4", np.array([H] * 4, np.int64))],
    )
    return treerec_model("chainlstm", leaf, internal, [("h", H), ("c", H)], 1)


# ----------------------------------------------------------------------------------------------------------------
# Hand-built Loop/If form


def build_loop(params: ChainLSTMParams) -> onnx.ModelProto:
    """A hand-built Loop/If model: inputs ``words``, ``prev`` int64 [N], ``order`` int64 [L]; outputs ``h``, ``c``
    float32 [N, H]. Same visit semantics as :func:`reference` with ``first_test="minus_one"``.

    Style: the If only *selects the previous state* and the cell is computed after it, in the Loop body:
    p = Gather(prev, v); If(Equal(p, -1)) then (zero row, zero row) (an outer-scope initializer) else
    (Gather(h, p), Gather(c, p)); gates = MatMul(x, W) + MatMul(h_prev, U) + b, Split into 4 equal parts (no split
    input); rows written with ScatterND(table, [[v]] [1, 1], row [1, H]). Tables from
    ConstantOfShape(Concat(Shape(words), [H])); Loop(trip count = Size(order), no condition)."""
    H = params.hidden
    n = node
    inits = [
        const("E", params.embedding), const("W", params.W), const("U", params.U), const("b", params.b),
        const("minus_one", np.int64(-1)), const("axes0", np.array([0], np.int64)),
        const("axes01", np.array([0, 1], np.int64)), const("dim_h", np.array([H], np.int64)),
        const("zero_row", np.zeros(H, np.float32)),
    ]
    then_g = branch(
        "first_step",
        [n("Identity", ["zero_row"], ["first_h"]), n("Identity", ["zero_row"], ["first_c"])],
        [("first_h", [H]), ("first_c", [H])],
    )
    else_g = branch(
        "later_step",
        [n("Gather", ["h_in", "p"], ["prev_h"], axis=0), n("Gather", ["c_in", "p"], ["prev_c"], axis=0)],
        [("prev_h", [H]), ("prev_c", [H])],
    )
    body = visit_body(
        visit_head("prev", "Equal", "minus_one", ["h_prev", "c_prev"], then_g, else_g, child="p", flag="is_first")
        + [n("Gather", ["words", "v"], ["w"], axis=0)] + _gates_nodes("w")
        + [n("Split", ["gates"], ["gi", "gf", "gg", "go"], axis=0)]
        + _cell_nodes("gi", "gf", "gg", "go", "c_row", "h_row") + [
            n("Unsqueeze", ["v", "axes01"], ["v11"]),
            n("Unsqueeze", ["h_row", "axes0"], ["h_row2"]),
            n("Unsqueeze", ["c_row", "axes0"], ["c_row2"]),
            n("ScatterND", ["h_in", "v11", "h_row2"], ["h_out"]),
            n("ScatterND", ["c_in", "v11", "c_row2"], ["c_out"]),
        ],
        [("h", H), ("c", H)],
    )
    main = [
        n("Shape", ["words"], ["N1"]),
        n("Concat", ["N1", "dim_h"], ["table_shape"], axis=0),
        zero_table("table_shape", "h0"),
        zero_table("table_shape", "c0"),
        n("Size", ["order"], ["trip_count"]),
        n("Loop", ["trip_count", "", "h0", "c0"], ["h", "c"], body=body),
    ]
    inputs = [vi("words", I64, ["N"]), vi("prev", I64, ["N"]), vi("order", I64, ["L"])]
    return loop_model("chainlstm", main, inputs, [("h", H), ("c", H)], inits)

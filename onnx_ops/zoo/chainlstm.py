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
from onnx import TensorProto, helper, numpy_helper

from ..grids import Chains
from ..treerec import DOMAIN, VERSION, make_treerec_node, register_schema

__all__ = ["ChainLSTMParams", "build_loop", "build_treerec", "make_params", "reference"]

IR_VERSION = 10
OPSET = 17


@dataclass
class ChainLSTMParams:
    """float32 weights: ``embedding`` [V, D], ``W`` [D, 4H], ``U`` [H, 4H], ``b`` [4H] (gates i, f, g, o)."""

    embedding: np.ndarray
    W: np.ndarray
    U: np.ndarray
    b: np.ndarray

    @property
    def hidden(self) -> int:
        return int(self.b.shape[0] // 4)

    @property
    def embed_dim(self) -> int:
        return int(self.embedding.shape[1])

    @property
    def vocab(self) -> int:
        return int(self.embedding.shape[0])


def make_params(hidden: int, embed_dim: int, vocab: int, seed: int = 0) -> ChainLSTMParams:
    """Random weights, uniform ±1/sqrt(H) like nn.LSTMCell (embedding ±1)."""
    rng = np.random.default_rng(seed)
    s = 1 / np.sqrt(hidden)
    u = lambda shape, k=s: rng.uniform(-k, k, size=shape).astype(np.float32)  # noqa: E731
    return ChainLSTMParams(
        embedding=u((vocab, embed_dim), 1.0),
        W=u((embed_dim, 4 * hidden)),
        U=u((hidden, 4 * hidden)),
        b=u((4 * hidden,)),
    )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def cell(p: ChainLSTMParams, x, h_prev, c_prev) -> tuple[np.ndarray, np.ndarray]:
    """(h, c) of one step (or a batch of rows)."""
    i, f, g, o = np.split(x @ p.W + h_prev @ p.U + p.b, 4, axis=-1)
    c = _sigmoid(f) * c_prev + _sigmoid(i) * np.tanh(g)
    return (_sigmoid(o) * np.tanh(c)).astype(np.float32), c.astype(np.float32)


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
    if first_test not in ("negative", "minus_one"):
        raise ValueError(f"first_test must be 'negative' or 'minus_one', not {first_test!r}")
    n, H = int(np.shape(words)[0]), params.hidden
    h = np.zeros((n, H), dtype=np.float32)
    c = np.zeros((n, H), dtype=np.float32)
    zero = np.zeros(H, dtype=np.float32)
    for v in np.asarray(order).tolist():
        p = int(prev[v])
        x = params.embedding[words[v]]
        if (p < 0) if first_test == "negative" else (p == -1):
            h[v], c[v] = cell(params, x, zero, zero)
        else:
            h[v], c[v] = cell(params, x, h[p], c[p])
    return h, c


# ----------------------------------------------------------------------------------------------------------------
# cortex.TreeRec form


def _const(name: str, arr) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def build_treerec(params: ChainLSTMParams) -> onnx.ModelProto:
    """A ``cortex.TreeRec`` model: inputs ``children`` int64 [N, 1] (= prev, -1 at first steps), ``words`` int64
    [N]; outputs ``h``, ``c`` float32 [N, H]. Leaf body ``word -> (h, c)`` (zero previous state: no U term, no
    forget term); internal body ``(h_prev, c_prev, word) -> (h, c)``."""
    register_schema()
    H = params.hidden
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    vi = helper.make_tensor_value_info
    n = helper.make_node
    leaf = helper.make_graph(
        [
            n("Gather", ["E", "word"], ["x"], axis=0),
            n("MatMul", ["x", "W"], ["xW"]),
            n("Add", ["xW", "b"], ["gates"]),
            n("Split", ["gates", "split4"], ["i", "f", "g", "o"], axis=0),
            n("Sigmoid", ["i"], ["si"]),
            n("Tanh", ["g"], ["tg"]),
            n("Mul", ["si", "tg"], ["c"]),
            n("Sigmoid", ["o"], ["so"]),
            n("Tanh", ["c"], ["tc"]),
            n("Mul", ["so", "tc"], ["h"]),
        ],
        "chainlstm_leaf",
        [vi("word", i64, [])],
        [vi("h", f32, [H]), vi("c", f32, [H])],
        initializer=[_const("E", params.embedding), _const("W", params.W), _const("b", params.b),
                     _const("split4", np.array([H] * 4, np.int64))],
    )
    internal = helper.make_graph(
        [
            n("Gather", ["E", "word"], ["x"], axis=0),
            n("MatMul", ["x", "W"], ["xW"]),
            n("MatMul", ["h_prev", "U"], ["hU"]),
            n("Add", ["xW", "hU"], ["s"]),
            n("Add", ["s", "b"], ["gates"]),
            n("Split", ["gates", "split4"], ["i", "f", "g", "o"], axis=0),
            n("Sigmoid", ["f"], ["sf"]),
            n("Mul", ["sf", "c_prev"], ["fc"]),
            n("Sigmoid", ["i"], ["si"]),
            n("Tanh", ["g"], ["tg"]),
            n("Mul", ["si", "tg"], ["ig"]),
            n("Add", ["fc", "ig"], ["c"]),
            n("Sigmoid", ["o"], ["so"]),
            n("Tanh", ["c"], ["tc"]),
            n("Mul", ["so", "tc"], ["h"]),
        ],
        "chainlstm_internal",
        [vi("h_prev", f32, [H]), vi("c_prev", f32, [H]), vi("word", i64, [])],
        [vi("h", f32, [H]), vi("c", f32, [H])],
        initializer=[_const("E", params.embedding), _const("W", params.W), _const("U", params.U),
                     _const("b", params.b), _const("split4", np.array([H] * 4, np.int64))],
    )
    node = make_treerec_node("children", ["words"], ["h", "c"], leaf, internal, name="chainlstm")
    graph = helper.make_graph(
        [node],
        "chainlstm_treerec",
        [vi("children", i64, ["N", 1]), vi("words", i64, ["N"])],
        [vi("h", f32, ["N", H]), vi("c", f32, ["N", H])],
    )
    return helper.make_model(
        graph,
        ir_version=IR_VERSION,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, VERSION)],
        producer_name="cortex.onnx_ops.zoo",
    )


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
    f32, i64, b8 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
    vi = helper.make_tensor_value_info
    n = helper.make_node
    inits = [
        _const("E", params.embedding), _const("W", params.W), _const("U", params.U), _const("b", params.b),
        _const("minus_one", np.int64(-1)), _const("axes0", np.array([0], np.int64)),
        _const("axes01", np.array([0, 1], np.int64)), _const("dim_h", np.array([H], np.int64)),
        _const("zero_row", np.zeros(H, np.float32)),
    ]
    then_g = helper.make_graph(
        [n("Identity", ["zero_row"], ["first_h"]), n("Identity", ["zero_row"], ["first_c"])],
        "first_step", [], [vi("first_h", f32, [H]), vi("first_c", f32, [H])],
    )
    else_g = helper.make_graph(
        [n("Gather", ["h_in", "p"], ["prev_h"], axis=0), n("Gather", ["c_in", "p"], ["prev_c"], axis=0)],
        "later_step", [], [vi("prev_h", f32, [H]), vi("prev_c", f32, [H])],
    )
    body = helper.make_graph(
        [
            n("Gather", ["order", "i"], ["v"], axis=0),
            n("Gather", ["prev", "v"], ["p"], axis=0),
            n("Equal", ["p", "minus_one"], ["is_first"]),
            n("If", ["is_first"], ["h_prev", "c_prev"], then_branch=then_g, else_branch=else_g),
            n("Gather", ["words", "v"], ["w"], axis=0),
            n("Gather", ["E", "w"], ["x"], axis=0),
            n("MatMul", ["x", "W"], ["xW"]),
            n("MatMul", ["h_prev", "U"], ["hU"]),
            n("Add", ["xW", "hU"], ["s"]),
            n("Add", ["s", "b"], ["gates"]),
            n("Split", ["gates"], ["gi", "gf", "gg", "go"], axis=0),
            n("Sigmoid", ["gf"], ["sf"]),
            n("Mul", ["sf", "c_prev"], ["fc"]),
            n("Sigmoid", ["gi"], ["si"]),
            n("Tanh", ["gg"], ["tg"]),
            n("Mul", ["si", "tg"], ["ig"]),
            n("Add", ["fc", "ig"], ["c_row"]),
            n("Sigmoid", ["go"], ["so"]),
            n("Tanh", ["c_row"], ["tc"]),
            n("Mul", ["so", "tc"], ["h_row"]),
            n("Unsqueeze", ["v", "axes01"], ["v11"]),
            n("Unsqueeze", ["h_row", "axes0"], ["h_row2"]),
            n("Unsqueeze", ["c_row", "axes0"], ["c_row2"]),
            n("ScatterND", ["h_in", "v11", "h_row2"], ["h_out"]),
            n("ScatterND", ["c_in", "v11", "c_row2"], ["c_out"]),
            n("Identity", ["cond_in"], ["cond_out"]),
        ],
        "visit_body",
        [vi("i", i64, []), vi("cond_in", b8, []), vi("h_in", f32, ["N", H]), vi("c_in", f32, ["N", H])],
        [vi("cond_out", b8, []), vi("h_out", f32, ["N", H]), vi("c_out", f32, ["N", H])],
    )
    zero_f = numpy_helper.from_array(np.zeros(1, np.float32))
    main = [
        n("Shape", ["words"], ["N1"]),
        n("Concat", ["N1", "dim_h"], ["table_shape"], axis=0),
        n("ConstantOfShape", ["table_shape"], ["h0"], value=zero_f),
        n("ConstantOfShape", ["table_shape"], ["c0"], value=zero_f),
        n("Size", ["order"], ["trip_count"]),
        n("Loop", ["trip_count", "", "h0", "c0"], ["h", "c"], body=body),
    ]
    graph = helper.make_graph(
        main,
        "chainlstm_loop",
        [vi("words", i64, ["N"]), vi("prev", i64, ["N"]), vi("order", i64, ["L"])],
        [vi("h", f32, ["N", H]), vi("c", f32, ["N", H])],
        initializer=inits,
    )
    return helper.make_model(
        graph, ir_version=IR_VERSION, opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="cortex.onnx_ops.zoo",
    )

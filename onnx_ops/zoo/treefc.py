"""TreeFC: the simplest recursive model, one fully connected layer over the sum of the children.

Leaf:      x = E[word]; h = relu(x @ W + bW)
Internal:  h = relu((h_l + h_r) @ U + bU)

Matrices are stored as ONNX MatMul expects (``x @ W``): ``W`` [D, H] is the math W^T, ``U`` [H, H] the math U^T.
One state table ``h`` [N, H].

Three forms of the same model: :func:`reference` (numpy, the Loop visit semantics), :func:`build_treerec`
(``cortex.TreeRec``, any arity K: the children are summed, missing ones are zero rows) and :func:`build_loop`
(a hand-built ONNX Loop/If model over binary ``left``/``right``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..structures import Forest
from ..treerec import DOMAIN, VERSION, make_treerec_node, register_schema

__all__ = ["Params", "TreeFCParams", "build_loop", "build_treerec", "make_params", "reference"]

IR_VERSION = 10
OPSET = 17


@dataclass
class TreeFCParams:
    """float32 weights: ``embedding`` [V, D], ``W`` [D, H], ``bW`` [H], ``U`` [H, H], ``bU`` [H]."""

    embedding: np.ndarray
    W: np.ndarray
    bW: np.ndarray
    U: np.ndarray
    bU: np.ndarray

    @property
    def hidden(self) -> int:
        return int(self.bW.shape[0])

    @property
    def embed_dim(self) -> int:
        return int(self.embedding.shape[1])

    @property
    def vocab(self) -> int:
        return int(self.embedding.shape[0])


Params = TreeFCParams


def make_params(hidden: int, embed_dim: int, vocab: int, seed: int = 0) -> TreeFCParams:
    """Random weights: uniform ±1/sqrt(fan_in) (embedding ±1)."""
    rng = np.random.default_rng(seed)
    u = lambda shape, s: rng.uniform(-s, s, size=shape).astype(np.float32)  # noqa: E731
    return TreeFCParams(
        embedding=u((vocab, embed_dim), 1.0),
        W=u((embed_dim, hidden), 1 / np.sqrt(embed_dim)),
        bW=u((hidden,), 1 / np.sqrt(embed_dim)),
        U=u((hidden, hidden), 1 / np.sqrt(hidden)),
        bU=u((hidden,), 1 / np.sqrt(hidden)),
    )


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, np.float32(0)).astype(np.float32)


def leaf_cell(p: TreeFCParams, x: np.ndarray) -> np.ndarray:
    return _relu(x @ p.W + p.bW)


def internal_cell(p: TreeFCParams, h_sum: np.ndarray) -> np.ndarray:
    """Row of an internal node from the sum of its children's rows."""
    return _relu(h_sum @ p.U + p.bU)


def reference(params: TreeFCParams, words, left=None, right=None, order=None, *, leaf_test: str = "negative"
              ) -> np.ndarray:
    """numpy ``h`` [N, H] with the exact visit semantics of an exported Loop: the table starts at zeros; for each v
    in ``order`` (repeats and subsets allowed), v is a leaf iff ``left[v] < 0`` (``leaf_test="negative"``: the
    PyTorch styles and :func:`build_loop`) or ``left[v] == -1`` (``"minus_one"``); an internal node reads rows
    ``left[v]`` and ``right[v]`` as they are at that moment; row v is overwritten. Indices wrap when negative and
    raise IndexError when out of range, like ONNX Gather. ``words`` may be a :class:`Forest`."""
    if isinstance(words, Forest):
        words, left, right, order = words.words, words.left, words.right, words.order
    if leaf_test not in ("negative", "minus_one"):
        raise ValueError(f"leaf_test must be 'negative' or 'minus_one', not {leaf_test!r}")
    n = int(np.shape(words)[0])
    h = np.zeros((n, params.hidden), dtype=np.float32)
    for v in np.asarray(order).tolist():
        lv = int(left[v])
        if (lv < 0) if leaf_test == "negative" else (lv == -1):
            h[v] = leaf_cell(params, params.embedding[words[v]])
        else:
            h[v] = internal_cell(params, h[lv] + h[int(right[v])])
    return h


def _const(name: str, arr) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def _model(graph: onnx.GraphProto, treerec: bool) -> onnx.ModelProto:
    ops = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid(DOMAIN, VERSION)] if treerec else [])
    return helper.make_model(graph, ir_version=IR_VERSION, opset_imports=ops, producer_name="cortex.onnx_ops.zoo")


# ----------------------------------------------------------------------------------------------------------------
# cortex.TreeRec form


def build_treerec(params: TreeFCParams, arity: int = 2) -> onnx.ModelProto:
    """A ``cortex.TreeRec`` model: inputs ``children`` int64 [N, arity], ``words`` int64 [N]; output ``h`` float32
    [N, H]. Internal body ``(h_0, ..., h_{K-1}, word) -> h`` sums all K child rows (missing children are zero
    rows, so the sum is over present children); for ``arity=2`` it equals :func:`reference` on a Forest."""
    register_schema()
    H = params.hidden
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    vi = helper.make_tensor_value_info
    leaf = helper.make_graph(
        [
            helper.make_node("Gather", ["E", "word"], ["x"], axis=0),
            helper.make_node("MatMul", ["x", "W"], ["xW"]),
            helper.make_node("Add", ["xW", "bW"], ["pre"]),
            helper.make_node("Relu", ["pre"], ["h"]),
        ],
        "treefc_leaf",
        [vi("word", i64, [])],
        [vi("h", f32, [H])],
        initializer=[_const("E", params.embedding), _const("W", params.W), _const("bW", params.bW)],
    )
    kids = [f"h_{k}" for k in range(arity)]
    internal = helper.make_graph(
        [
            helper.make_node("Sum", kids, ["hs"]),
            helper.make_node("MatMul", ["hs", "U"], ["hU"]),
            helper.make_node("Add", ["hU", "bU"], ["pre"]),
            helper.make_node("Relu", ["pre"], ["h"]),
        ],
        "treefc_internal",
        [vi(k, f32, [H]) for k in kids] + [vi("word", i64, [])],
        [vi("h", f32, [H])],
        initializer=[_const("U", params.U), _const("bU", params.bU)],
    )
    node = make_treerec_node("children", ["words"], ["h"], leaf, internal, name="treefc")
    graph = helper.make_graph(
        [node],
        "treefc_treerec",
        [vi("children", i64, ["N", arity]), vi("words", i64, ["N"])],
        [vi("h", f32, ["N", H])],
    )
    return _model(graph, treerec=True)


# ----------------------------------------------------------------------------------------------------------------
# Hand-built Loop/If form


def build_loop(params: TreeFCParams) -> onnx.ModelProto:
    """A hand-built Loop/If model: inputs ``words``, ``left``, ``right`` int64 [N], ``order`` int64 [L]; output
    ``h`` float32 [N, H]. Same visit semantics as :func:`reference` with ``leaf_test="negative"``.

    Style: table from ConstantOfShape(Concat(Shape(words), [H])); Loop(trip count = Size(order), cond true, carried
    cond from the body); body: v = Gather(order, i); If(Less(Gather(left, v), 0)); leaf: Gather(E, Gather(words,
    v)), MatMul, Add, Relu; internal: Add(Gather(h, l), Gather(h, r)), MatMul, Add, Relu; row written with
    ScatterND(h, Unsqueeze(v) [1], row [H])."""
    H = params.hidden
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    vi = helper.make_tensor_value_info
    n = helper.make_node
    inits = [
        _const("E", params.embedding), _const("W", params.W), _const("bW", params.bW),
        _const("U", params.U), _const("bU", params.bU),
        _const("zero_i", np.int64(0)), _const("axis0", np.array([0], np.int64)),
        _const("H_vec", np.array([H], np.int64)), _const("true", np.array(True)),
    ]
    then_g = helper.make_graph(
        [
            n("Gather", ["words", "v"], ["leaf_w"], axis=0),
            n("Gather", ["E", "leaf_w"], ["leaf_x"], axis=0),
            n("MatMul", ["leaf_x", "W"], ["leaf_xW"]),
            n("Add", ["leaf_xW", "bW"], ["leaf_pre"]),
            n("Relu", ["leaf_pre"], ["leaf_h"]),
        ],
        "leaf_branch", [], [vi("leaf_h", f32, [H])],
    )
    else_g = helper.make_graph(
        [
            n("Gather", ["right", "v"], ["r"], axis=0),
            n("Gather", ["h_in", "l"], ["h_l"], axis=0),
            n("Gather", ["h_in", "r"], ["h_r"], axis=0),
            n("Add", ["h_l", "h_r"], ["h_sum"]),
            n("MatMul", ["h_sum", "U"], ["int_hU"]),
            n("Add", ["int_hU", "bU"], ["int_pre"]),
            n("Relu", ["int_pre"], ["int_h"]),
        ],
        "internal_branch", [], [vi("int_h", f32, [H])],
    )
    body = helper.make_graph(
        [
            n("Gather", ["order", "i"], ["v"], axis=0),
            n("Gather", ["left", "v"], ["l"], axis=0),
            n("Less", ["l", "zero_i"], ["is_leaf"]),
            n("If", ["is_leaf"], ["row"], then_branch=then_g, else_branch=else_g),
            n("Unsqueeze", ["v", "axis0"], ["v1"]),
            n("ScatterND", ["h_in", "v1", "row"], ["h_out"]),
            n("Identity", ["cond_in"], ["cond_out"]),
        ],
        "visit_body",
        [vi("i", i64, []), vi("cond_in", TensorProto.BOOL, []), vi("h_in", f32, ["N", H])],
        [vi("cond_out", TensorProto.BOOL, []), vi("h_out", f32, ["N", H])],
    )
    main = [
        n("Shape", ["words"], ["N1"]),
        n("Concat", ["N1", "H_vec"], ["table_shape"], axis=0),
        n("ConstantOfShape", ["table_shape"], ["h0"], value=numpy_helper.from_array(np.zeros(1, np.float32))),
        n("Size", ["order"], ["trip_count"]),
        n("Loop", ["trip_count", "true", "h0"], ["h"], body=body),
    ]
    graph = helper.make_graph(
        main,
        "treefc_loop",
        [vi("words", i64, ["N"]), vi("left", i64, ["N"]), vi("right", i64, ["N"]), vi("order", i64, ["L"])],
        [vi("h", f32, ["N", H])],
        initializer=inits,
    )
    return _model(graph, treerec=False)

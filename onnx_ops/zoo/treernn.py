"""TreeRNN (Socher et al.): a binary recursive neural network.

Leaf:      x = E[word]; h = tanh(x @ W + bW)
Internal:  h = tanh([h_l; h_r] @ U + bU)

Matrices are stored as ONNX MatMul expects (``x @ W``): ``W`` [D, H] is the math W^T, ``U`` [2H, H] the math U^T.
One state table ``h`` [N, H].

Three forms of the same model: :func:`reference` (numpy, the Loop visit semantics), :func:`build_treerec`
(``cortex.TreeRec``) and :func:`build_loop` (a hand-built ONNX Loop/If model).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..structures import Forest
from ..treerec import DOMAIN, VERSION, make_treerec_node, register_schema

__all__ = ["Params", "TreeRNNParams", "build_loop", "build_treerec", "make_params", "reference"]

IR_VERSION = 10
OPSET = 17


@dataclass
class TreeRNNParams:
    """float32 weights: ``embedding`` [V, D], ``W`` [D, H], ``bW`` [H], ``U`` [2H, H], ``bU`` [H]."""

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


Params = TreeRNNParams


def make_params(hidden: int, embed_dim: int, vocab: int, seed: int = 0) -> TreeRNNParams:
    """Random weights: uniform ±1/sqrt(fan_in) (embedding ±1)."""
    rng = np.random.default_rng(seed)
    u = lambda shape, s: rng.uniform(-s, s, size=shape).astype(np.float32)  # noqa: E731
    return TreeRNNParams(
        embedding=u((vocab, embed_dim), 1.0),
        W=u((embed_dim, hidden), 1 / np.sqrt(embed_dim)),
        bW=u((hidden,), 1 / np.sqrt(embed_dim)),
        U=u((2 * hidden, hidden), 1 / np.sqrt(2 * hidden)),
        bU=u((hidden,), 1 / np.sqrt(2 * hidden)),
    )


def leaf_cell(p: TreeRNNParams, x: np.ndarray) -> np.ndarray:
    return np.tanh(x @ p.W + p.bW).astype(np.float32)


def internal_cell(p: TreeRNNParams, h_l: np.ndarray, h_r: np.ndarray) -> np.ndarray:
    return np.tanh(np.concatenate([h_l, h_r], axis=-1) @ p.U + p.bU).astype(np.float32)


def reference(params: TreeRNNParams, words, left=None, right=None, order=None, *, leaf_test: str = "negative"
              ) -> np.ndarray:
    """numpy ``h`` [N, H] with the exact visit semantics of an exported Loop: the table starts at zeros; for each v
    in ``order`` (repeats and subsets allowed), v is a leaf iff ``left[v] < 0`` (``leaf_test="negative"``, the
    PyTorch styles) or ``left[v] == -1`` (``"minus_one"``, :func:`build_loop`); an internal node reads rows
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
            h[v] = internal_cell(params, h[lv], h[int(right[v])])
    return h


def _const(name: str, arr) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def _model(graph: onnx.GraphProto, treerec: bool) -> onnx.ModelProto:
    ops = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid(DOMAIN, VERSION)] if treerec else [])
    return helper.make_model(graph, ir_version=IR_VERSION, opset_imports=ops, producer_name="cortex.onnx_ops.zoo")


# ----------------------------------------------------------------------------------------------------------------
# cortex.TreeRec form


def build_treerec(params: TreeRNNParams) -> onnx.ModelProto:
    """A ``cortex.TreeRec`` model: inputs ``children`` int64 [N, 2], ``words`` int64 [N]; output ``h`` float32
    [N, H]. Leaf body ``word -> h``; internal body ``(h_l, h_r, word) -> h`` (Concat, MatMul, Add, Tanh)."""
    register_schema()
    H = params.hidden
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    vi = helper.make_tensor_value_info
    leaf = helper.make_graph(
        [
            helper.make_node("Gather", ["E", "word"], ["x"], axis=0),
            helper.make_node("MatMul", ["x", "W"], ["xW"]),
            helper.make_node("Add", ["xW", "bW"], ["pre"]),
            helper.make_node("Tanh", ["pre"], ["h"]),
        ],
        "treernn_leaf",
        [vi("word", i64, [])],
        [vi("h", f32, [H])],
        initializer=[_const("E", params.embedding), _const("W", params.W), _const("bW", params.bW)],
    )
    internal = helper.make_graph(
        [
            helper.make_node("Concat", ["h_l", "h_r"], ["hlr"], axis=0),
            helper.make_node("MatMul", ["hlr", "U"], ["hU"]),
            helper.make_node("Add", ["hU", "bU"], ["pre"]),
            helper.make_node("Tanh", ["pre"], ["h"]),
        ],
        "treernn_internal",
        [vi("h_l", f32, [H]), vi("h_r", f32, [H]), vi("word", i64, [])],
        [vi("h", f32, [H])],
        initializer=[_const("U", params.U), _const("bU", params.bU)],
    )
    node = make_treerec_node("children", ["words"], ["h"], leaf, internal, name="treernn")
    graph = helper.make_graph(
        [node],
        "treernn_treerec",
        [vi("children", i64, ["N", 2]), vi("words", i64, ["N"])],
        [vi("h", f32, ["N", H])],
    )
    return _model(graph, treerec=True)


# ----------------------------------------------------------------------------------------------------------------
# Hand-built Loop/If form


def build_loop(params: TreeRNNParams) -> onnx.ModelProto:
    """A hand-built Loop/If model: inputs ``words``, ``left``, ``right`` int64 [N], ``order`` int64 [L]; output
    ``h`` float32 [N, H]. Same visit semantics as :func:`reference` with ``leaf_test="minus_one"``.

    Style: table from Expand(0.0, Concat(Shape(words)[0:1], [H])); Loop(trip count = Shape(order)[0], no
    condition); body: v = Gather(order, i); If(Equal(Gather(left, v), -1)); both branches give a [1, H] row:
    leaf Gemm(Unsqueeze(Gather(E, word)), W^T, bW, transB=1), Tanh; internal gathers both children at once
    (Gather(h, Concat([l], [r])) [2, H]), Reshape to [1, 2H], Gemm(., U^T, bU, transB=1), Tanh; row written with
    ScatterND(h, Reshape(v, [1, 1]), row [1, H])."""
    H = params.hidden
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    vi = helper.make_tensor_value_info
    n = helper.make_node
    inits = [
        _const("E", params.embedding),
        _const("WT", np.ascontiguousarray(params.W.T)), _const("bW", params.bW),
        _const("UT", np.ascontiguousarray(params.U.T)), _const("bU", params.bU),
        _const("zero_i", np.int64(0)), _const("minus_one", np.int64(-1)), _const("zero_f", np.float32(0)),
        _const("axis0", np.array([0], np.int64)), _const("H_vec", np.array([H], np.int64)),
        _const("start0", np.array([0], np.int64)), _const("end1", np.array([1], np.int64)),
        _const("shape_1_2H", np.array([1, 2 * H], np.int64)), _const("shape_1_1", np.array([1, 1], np.int64)),
    ]
    then_g = helper.make_graph(
        [
            n("Gather", ["words", "v"], ["leaf_w"], axis=0),
            n("Gather", ["E", "leaf_w"], ["leaf_x"], axis=0),
            n("Unsqueeze", ["leaf_x", "axis0"], ["leaf_x2"]),
            n("Gemm", ["leaf_x2", "WT", "bW"], ["leaf_pre"], transB=1),
            n("Tanh", ["leaf_pre"], ["leaf_h"]),
        ],
        "leaf_branch", [], [vi("leaf_h", f32, [1, H])],
    )
    else_g = helper.make_graph(
        [
            n("Gather", ["right", "v"], ["r"], axis=0),
            n("Unsqueeze", ["l", "axis0"], ["l1"]),
            n("Unsqueeze", ["r", "axis0"], ["r1"]),
            n("Concat", ["l1", "r1"], ["lr"], axis=0),
            n("Gather", ["h_in", "lr"], ["h_lr"], axis=0),
            n("Reshape", ["h_lr", "shape_1_2H"], ["hlr2"]),
            n("Gemm", ["hlr2", "UT", "bU"], ["int_pre"], transB=1),
            n("Tanh", ["int_pre"], ["int_h"]),
        ],
        "internal_branch", [], [vi("int_h", f32, [1, H])],
    )
    body = helper.make_graph(
        [
            n("Gather", ["order", "i"], ["v"], axis=0),
            n("Gather", ["left", "v"], ["l"], axis=0),
            n("Equal", ["l", "minus_one"], ["is_leaf"]),
            n("If", ["is_leaf"], ["row"], then_branch=then_g, else_branch=else_g),
            n("Reshape", ["v", "shape_1_1"], ["v11"]),
            n("ScatterND", ["h_in", "v11", "row"], ["h_out"]),
            n("Identity", ["cond_in"], ["cond_out"]),
        ],
        "visit_body",
        [vi("i", i64, []), vi("cond_in", TensorProto.BOOL, []), vi("h_in", f32, ["N", H])],
        [vi("cond_out", TensorProto.BOOL, []), vi("h_out", f32, ["N", H])],
    )
    main = [
        n("Shape", ["words"], ["words_shape"]),
        n("Slice", ["words_shape", "start0", "end1"], ["N1"]),
        n("Concat", ["N1", "H_vec"], ["table_shape"], axis=0),
        n("Expand", ["zero_f", "table_shape"], ["h0"]),
        n("Shape", ["order"], ["order_shape"]),
        n("Gather", ["order_shape", "zero_i"], ["trip_count"], axis=0),
        n("Loop", ["trip_count", "", "h0"], ["h"], body=body),
    ]
    graph = helper.make_graph(
        main,
        "treernn_loop",
        [vi("words", i64, ["N"]), vi("left", i64, ["N"]), vi("right", i64, ["N"]), vi("order", i64, ["L"])],
        [vi("h", f32, ["N", H])],
        initializer=inits,
    )
    return _model(graph, treerec=False)

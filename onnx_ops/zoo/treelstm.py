"""Binary TreeLSTM (Tai et al. 2015, N-ary with N = 2), leaves from an embedding.

Leaf:      x = E[word]; [i, o, u] = x @ W + bW;                       c = σ(i)⊙tanh(u);                  h = σ(o)⊙tanh(c)
Internal:  [i, f_l, f_r, o, u] = [h_l; h_r] @ U + bU;  c = σ(i)⊙tanh(u) + σ(f_l)⊙c_l + σ(f_r)⊙c_r;  h = σ(o)⊙tanh(c)

Matrices are stored as ONNX MatMul expects (``x @ W``): ``W`` [D, 3H] is the math W^T, ``U`` [2H, 5H] the math U^T.
Gate chunks are contiguous blocks of H in the order written above.

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

__all__ = ["TreeLSTMParams", "build_loop", "build_treerec", "make_params", "reference"]

IR_VERSION = 10
OPSET = 17


@dataclass
class TreeLSTMParams:
    """float32 weights: ``embedding`` [V, D], ``W`` [D, 3H], ``bW`` [3H], ``U`` [2H, 5H], ``bU`` [5H]."""

    embedding: np.ndarray
    W: np.ndarray
    bW: np.ndarray
    U: np.ndarray
    bU: np.ndarray

    @property
    def hidden(self) -> int:
        return int(self.bW.shape[0] // 3)

    @property
    def embed_dim(self) -> int:
        return int(self.embedding.shape[1])

    @property
    def vocab(self) -> int:
        return int(self.embedding.shape[0])


def make_params(hidden: int, embed_dim: int, vocab: int, seed: int = 0) -> TreeLSTMParams:
    """Random weights scaled like a trained model: uniform ±1/sqrt(fan_in) (embedding ±1), so gates are not
    saturated."""
    rng = np.random.default_rng(seed)
    u = lambda shape, s: rng.uniform(-s, s, size=shape).astype(np.float32)  # noqa: E731
    return TreeLSTMParams(
        embedding=u((vocab, embed_dim), 1.0),
        W=u((embed_dim, 3 * hidden), 1 / np.sqrt(embed_dim)),
        bW=u((3 * hidden,), 1 / np.sqrt(embed_dim)),
        U=u((2 * hidden, 5 * hidden), 1 / np.sqrt(2 * hidden)),
        bU=u((5 * hidden,), 1 / np.sqrt(2 * hidden)),
    )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def leaf_cell(p: TreeLSTMParams, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(h, c) rows of a leaf with embedded input ``x`` [D] (or a batch [B, D])."""
    i, o, u = np.split(x @ p.W + p.bW, 3, axis=-1)
    c = _sigmoid(i) * np.tanh(u)
    return _sigmoid(o) * np.tanh(c), c


def internal_cell(p: TreeLSTMParams, h_l, c_l, h_r, c_r) -> tuple[np.ndarray, np.ndarray]:
    """(h, c) rows of an internal node from its children's rows (or batches of rows)."""
    i, f_l, f_r, o, u = np.split(np.concatenate([h_l, h_r], axis=-1) @ p.U + p.bU, 5, axis=-1)
    c = _sigmoid(i) * np.tanh(u) + _sigmoid(f_l) * c_l + _sigmoid(f_r) * c_r
    return _sigmoid(o) * np.tanh(c), c


def reference(
    params: TreeLSTMParams,
    words,
    left=None,
    right=None,
    order=None,
    *,
    leaf_test: str = "negative",
) -> tuple[np.ndarray, np.ndarray]:
    """numpy (h, c) [N, H] with the exact visit semantics of an exported Loop: tables start at zeros; for each v
    in ``order`` (repeats and subsets allowed), v is a leaf iff ``left[v] < 0`` (``leaf_test="negative"``, the
    PyTorch styles) or ``left[v] == -1`` (``leaf_test="minus_one"``, :func:`build_loop`); an internal node reads
    rows ``left[v]`` and ``right[v]`` as they are at that moment; rows v are overwritten. Indices wrap when
    negative and raise IndexError when out of range, like ONNX Gather. ``words`` may be a :class:`Forest`."""
    if isinstance(words, Forest):
        words, left, right, order = words.words, words.left, words.right, words.order
    if leaf_test not in ("negative", "minus_one"):
        raise ValueError(f"leaf_test must be 'negative' or 'minus_one', not {leaf_test!r}")
    n, hid = int(np.shape(words)[0]), params.hidden
    h = np.zeros((n, hid), dtype=np.float32)
    c = np.zeros((n, hid), dtype=np.float32)
    for v in np.asarray(order).tolist():
        lv = int(left[v])
        if (lv < 0) if leaf_test == "negative" else (lv == -1):
            h[v], c[v] = leaf_cell(params, params.embedding[words[v]])
        else:
            r = int(right[v])
            h[v], c[v] = internal_cell(params, h[lv], c[lv], h[r], c[r])
    return h, c


# ----------------------------------------------------------------------------------------------------------------
# cortex.TreeRec form


def _const(name: str, arr) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def build_treerec(params: TreeLSTMParams) -> onnx.ModelProto:
    """A ``cortex.TreeRec`` model: inputs ``children`` int64 [N, 2], ``words`` int64 [N]; outputs ``h``, ``c``
    float32 [N, H]. Weights are initializers of the bodies."""
    register_schema()
    H, D = params.hidden, params.embed_dim
    f32 = TensorProto.FLOAT
    vi = helper.make_tensor_value_info
    split3, split5 = _const("split3", [H] * 3), _const("split5", [H] * 5)

    def gates_to_hc(nodes, i, o, u, c_extra=()):
        nodes += [
            helper.make_node("Sigmoid", [i], ["si"]),
            helper.make_node("Tanh", [u], ["tu"]),
            helper.make_node("Mul", ["si", "tu"], ["c0" if c_extra else "c"]),
        ]
        if c_extra:
            acc = "c0"
            for j, (f, cc) in enumerate(c_extra):
                nodes += [
                    helper.make_node("Sigmoid", [f], [f"s{f}"]),
                    helper.make_node("Mul", [f"s{f}", cc], [f"fc{j}"]),
                    helper.make_node("Add", [acc, f"fc{j}"], ["c" if j == len(c_extra) - 1 else f"acc{j}"]),
                ]
                acc = f"acc{j}"
        nodes += [
            helper.make_node("Sigmoid", [o], ["so"]),
            helper.make_node("Tanh", ["c"], ["tc"]),
            helper.make_node("Mul", ["so", "tc"], ["h"]),
        ]

    leaf_nodes = [
        helper.make_node("Gather", ["E", "word"], ["x"], axis=0),
        helper.make_node("MatMul", ["x", "W"], ["xW"]),
        helper.make_node("Add", ["xW", "bW"], ["g"]),
        helper.make_node("Split", ["g", "split3"], ["i", "o", "u"], axis=0),
    ]
    gates_to_hc(leaf_nodes, "i", "o", "u")
    leaf = helper.make_graph(
        leaf_nodes,
        "treelstm_leaf",
        [vi("word", TensorProto.INT64, [])],
        [vi("h", f32, [H]), vi("c", f32, [H])],
        initializer=[_const("E", params.embedding), _const("W", params.W), _const("bW", params.bW), split3],
    )
    int_nodes = [
        helper.make_node("Concat", ["h_l", "h_r"], ["hlr"], axis=0),
        helper.make_node("MatMul", ["hlr", "U"], ["hU"]),
        helper.make_node("Add", ["hU", "bU"], ["g"]),
        helper.make_node("Split", ["g", "split5"], ["i", "f_l", "f_r", "o", "u"], axis=0),
    ]
    gates_to_hc(int_nodes, "i", "o", "u", c_extra=[("f_l", "c_l"), ("f_r", "c_r")])
    internal = helper.make_graph(
        int_nodes,
        "treelstm_internal",
        [vi("h_l", f32, [H]), vi("c_l", f32, [H]), vi("h_r", f32, [H]), vi("c_r", f32, [H]),
         vi("word", TensorProto.INT64, [])],
        [vi("h", f32, [H]), vi("c", f32, [H])],
        initializer=[_const("U", params.U), _const("bU", params.bU), split5],
    )
    node = make_treerec_node("children", ["words"], ["h", "c"], leaf, internal, name="treelstm")
    graph = helper.make_graph(
        [node],
        "treelstm_treerec",
        [vi("children", TensorProto.INT64, ["N", 2]), vi("words", TensorProto.INT64, ["N"])],
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


def build_loop(params: TreeLSTMParams) -> onnx.ModelProto:
    """A hand-built Loop/If model: inputs ``words``, ``left``, ``right`` int64 [N], ``order`` int64 [L]; outputs
    ``h``, ``c`` float32 [N, H]. Same visit semantics as :func:`reference` with ``leaf_test="minus_one"``.

    Style (deliberately unlike the PyTorch exporter): tables from ConstantOfShape(Concat(Shape(words)[0:1], [H]));
    Loop(trip count = Shape(order)[0], no condition); body: v = Gather(order, i); If(Equal(Gather(left, v), -1));
    gates by Gemm on rows made 2-D by Unsqueeze (then Squeeze) and Split with split sizes; rows written back with
    ScatterND(table, Unsqueeze(Unsqueeze(v)) [1, 1], row [1, H])."""
    H = params.hidden
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    vi = helper.make_tensor_value_info
    n = helper.make_node
    inits = [
        _const("E", params.embedding), _const("W", params.W), _const("bW", params.bW),
        _const("U", params.U), _const("bU", params.bU),
        _const("zero_i", np.int64(0)), _const("minus_one", np.int64(-1)), _const("axis0", np.array([0], np.int64)),
        _const("H_vec", np.array([H], np.int64)), _const("start0", np.array([0], np.int64)),
        _const("end1", np.array([1], np.int64)),
        _const("split3", np.array([H] * 3, np.int64)), _const("split5", np.array([H] * 5, np.int64)),
    ]

    def cell(prefix, i, o, u, forgets=()):
        """Nodes computing (prefix_h, prefix_c) [1, H] from gate pre-activations."""
        out = [
            n("Sigmoid", [i], [f"{prefix}_si"]),
            n("Tanh", [u], [f"{prefix}_tu"]),
            n("Mul", [f"{prefix}_si", f"{prefix}_tu"], [f"{prefix}_c0"]),
        ]
        acc = f"{prefix}_c0"
        for j, (f, cc) in enumerate(forgets):
            out += [
                n("Sigmoid", [f], [f"{prefix}_sf{j}"]),
                n("Mul", [f"{prefix}_sf{j}", cc], [f"{prefix}_fc{j}"]),
                n("Add", [acc, f"{prefix}_fc{j}"], [f"{prefix}_c{j + 1}"]),
            ]
            acc = f"{prefix}_c{j + 1}"
        out += [
            n("Identity", [acc], [f"{prefix}_c"]),
            n("Sigmoid", [o], [f"{prefix}_so"]),
            n("Tanh", [f"{prefix}_c"], [f"{prefix}_tc"]),
            n("Mul", [f"{prefix}_so", f"{prefix}_tc"], [f"{prefix}_h"]),
        ]
        return out

    # then: leaf
    leaf_nodes = [
        n("Gather", ["words", "v"], ["leaf_w"], axis=0),
        n("Gather", ["E", "leaf_w"], ["leaf_x"], axis=0),
        n("Unsqueeze", ["leaf_x", "axis0"], ["leaf_x2"]),
        n("Gemm", ["leaf_x2", "W", "bW"], ["leaf_g2"]),
        n("Squeeze", ["leaf_g2", "axis0"], ["leaf_g"]),
        n("Split", ["leaf_g", "split3"], ["leaf_i", "leaf_o", "leaf_u"], axis=0),
    ] + cell("leaf", "leaf_i", "leaf_o", "leaf_u")
    then_g = helper.make_graph(leaf_nodes, "leaf_branch", [], [vi("leaf_h", f32, [H]), vi("leaf_c", f32, [H])])
    # else: internal
    int_nodes = [
        n("Gather", ["right", "v"], ["r"], axis=0),
        n("Gather", ["h_in", "l"], ["h_l"], axis=0),
        n("Gather", ["h_in", "r"], ["h_r"], axis=0),
        n("Gather", ["c_in", "l"], ["c_l"], axis=0),
        n("Gather", ["c_in", "r"], ["c_r"], axis=0),
        n("Concat", ["h_l", "h_r"], ["hlr"], axis=0),
        n("Unsqueeze", ["hlr", "axis0"], ["hlr2"]),
        n("Gemm", ["hlr2", "U", "bU"], ["int_g2"]),
        n("Squeeze", ["int_g2", "axis0"], ["int_g"]),
        n("Split", ["int_g", "split5"], ["int_i", "int_fl", "int_fr", "int_o", "int_u"], axis=0),
    ] + cell("int", "int_i", "int_o", "int_u", forgets=[("int_fl", "c_l"), ("int_fr", "c_r")])
    else_g = helper.make_graph(int_nodes, "internal_branch", [], [vi("int_h", f32, [H]), vi("int_c", f32, [H])])

    body_nodes = [
        n("Gather", ["order", "i"], ["v"], axis=0),
        n("Gather", ["left", "v"], ["l"], axis=0),
        n("Equal", ["l", "minus_one"], ["is_leaf"]),
        n("If", ["is_leaf"], ["row_h", "row_c"], then_branch=then_g, else_branch=else_g),
        n("Unsqueeze", ["v", "axis0"], ["v1"]),
        n("Unsqueeze", ["v1", "axis0"], ["v11"]),
        n("Unsqueeze", ["row_h", "axis0"], ["row_h2"]),
        n("Unsqueeze", ["row_c", "axis0"], ["row_c2"]),
        n("ScatterND", ["h_in", "v11", "row_h2"], ["h_out"]),
        n("ScatterND", ["c_in", "v11", "row_c2"], ["c_out"]),
        n("Identity", ["cond_in"], ["cond_out"]),
    ]
    body = helper.make_graph(
        body_nodes,
        "visit_body",
        [vi("i", i64, []), vi("cond_in", TensorProto.BOOL, []), vi("h_in", f32, ["N", H]), vi("c_in", f32, ["N", H])],
        [vi("cond_out", TensorProto.BOOL, []), vi("h_out", f32, ["N", H]), vi("c_out", f32, ["N", H])],
    )
    main = [
        n("Shape", ["words"], ["words_shape"]),
        n("Slice", ["words_shape", "start0", "end1"], ["N1"]),
        n("Concat", ["N1", "H_vec"], ["table_shape"], axis=0),
        n("ConstantOfShape", ["table_shape"], ["h0"], value=numpy_helper.from_array(np.zeros(1, np.float32))),
        n("ConstantOfShape", ["table_shape"], ["c0"], value=numpy_helper.from_array(np.zeros(1, np.float32))),
        n("Shape", ["order"], ["order_shape"]),
        n("Gather", ["order_shape", "zero_i"], ["trip_count"], axis=0),
        n("Loop", ["trip_count", "", "h0", "c0"], ["h", "c"], body=body),
    ]
    graph = helper.make_graph(
        main,
        "treelstm_loop",
        [vi("words", i64, ["N"]), vi("left", i64, ["N"]), vi("right", i64, ["N"]), vi("order", i64, ["L"])],
        [vi("h", f32, ["N", H]), vi("c", f32, ["N", H])],
        initializer=inits,
    )
    return helper.make_model(
        graph, ir_version=IR_VERSION, opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="cortex.onnx_ops.zoo",
    )

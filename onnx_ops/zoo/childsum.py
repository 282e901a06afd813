"""Child-Sum TreeLSTM (Tai et al. 2015), variable arity: children as a padded [N, K] array, -1 for none.

Leaf (no present child):  x = E[word]; [i, o, u] = x @ W + bW;  c = σ(i)⊙tanh(u);  h = σ(o)⊙tanh(c)
Internal (no input word): h̃ = Σ_k h_k over present children;  [i, o, u] = h̃ @ U_iou + b_iou;
                          f_k = σ(h_k @ U_f + b_f) per present child;
                          c = σ(i)⊙tanh(u) + Σ_k f_k⊙c_k;  h = σ(o)⊙tanh(c)

A child slot is *present* iff its id is >= 0 (-1 pads; any negative id is treated as missing, never wrapped).
Matrices are stored as ONNX MatMul expects (``x @ W``): ``W`` [D, 3H], ``U_iou`` [H, 3H], ``U_f`` [H, H] (the math
matrices transposed); gate chunks are contiguous blocks of H in the order i, o, u. Two state tables ``h``, ``c``
[N, H].

Three forms of the same model: :func:`reference` (numpy, the Loop visit semantics), :func:`build_treerec`
(``cortex.TreeRec`` with K child slots) and :func:`build_loop` (a hand-built ONNX Loop/If model).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..structures import Forest, NaryForest, nary_from_forest
from ..treerec import DOMAIN, VERSION, make_treerec_node, register_schema

__all__ = ["ChildSumParams", "Params", "build_loop", "build_treerec", "make_params", "reference"]

IR_VERSION = 10
OPSET = 17


@dataclass
class ChildSumParams:
    """float32 weights: ``embedding`` [V, D], ``W`` [D, 3H], ``bW`` [3H], ``U_iou`` [H, 3H], ``b_iou`` [3H],
    ``U_f`` [H, H], ``b_f`` [H]."""

    embedding: np.ndarray
    W: np.ndarray
    bW: np.ndarray
    U_iou: np.ndarray
    b_iou: np.ndarray
    U_f: np.ndarray
    b_f: np.ndarray

    @property
    def hidden(self) -> int:
        return int(self.b_f.shape[0])

    @property
    def embed_dim(self) -> int:
        return int(self.embedding.shape[1])

    @property
    def vocab(self) -> int:
        return int(self.embedding.shape[0])


Params = ChildSumParams


def make_params(hidden: int, embed_dim: int, vocab: int, seed: int = 0) -> ChildSumParams:
    """Random weights: uniform ±1/sqrt(fan_in) (embedding ±1)."""
    rng = np.random.default_rng(seed)
    u = lambda shape, s: rng.uniform(-s, s, size=shape).astype(np.float32)  # noqa: E731
    H, sd, sh = hidden, 1 / np.sqrt(embed_dim), 1 / np.sqrt(hidden)
    return ChildSumParams(
        embedding=u((vocab, embed_dim), 1.0),
        W=u((embed_dim, 3 * H), sd), bW=u((3 * H,), sd),
        U_iou=u((H, 3 * H), sh), b_iou=u((3 * H,), sh),
        U_f=u((H, H), sh), b_f=u((H,), sh),
    )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def leaf_cell(p: ChildSumParams, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(h, c) rows of a leaf with embedded input ``x`` [D]."""
    i, o, u = np.split(x @ p.W + p.bW, 3, axis=-1)
    c = _sigmoid(i) * np.tanh(u)
    return (_sigmoid(o) * np.tanh(c)).astype(np.float32), c.astype(np.float32)


def internal_cell(p: ChildSumParams, hs: np.ndarray, cs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(h, c) rows of an internal node from its present children's rows ``hs``, ``cs`` [k, H] (k >= 1)."""
    i, o, u = np.split(hs.sum(axis=0) @ p.U_iou + p.b_iou, 3, axis=-1)
    f = _sigmoid(hs @ p.U_f + p.b_f)
    c = _sigmoid(i) * np.tanh(u) + (f * cs).sum(axis=0)
    return (_sigmoid(o) * np.tanh(c)).astype(np.float32), c.astype(np.float32)


def reference(params: ChildSumParams, words, children=None, order=None) -> tuple[np.ndarray, np.ndarray]:
    """numpy (h, c) [N, H] with the exact visit semantics of an exported Loop: tables start at zeros; for each v in
    ``order`` (repeats and subsets allowed), v is a leaf iff no entry of ``children[v]`` is >= 0; otherwise it
    reads the rows of its present children (ids >= 0; negative ids are missing, not wrapped) as they are at that
    moment; rows v are overwritten. A child id >= N raises IndexError, like ONNX Gather. ``words`` may be a
    :class:`NaryForest` (or a binary :class:`Forest`)."""
    if isinstance(words, Forest):
        words = nary_from_forest(words)
    if isinstance(words, NaryForest):
        words, children, order = words.words, words.children, words.order
    children = np.asarray(children)
    n = int(np.shape(words)[0])
    h = np.zeros((n, params.hidden), dtype=np.float32)
    c = np.zeros((n, params.hidden), dtype=np.float32)
    for v in np.asarray(order).tolist():
        kids = children[v]
        kids = kids[kids >= 0]
        if kids.size == 0:
            h[v], c[v] = leaf_cell(params, params.embedding[words[v]])
        else:
            h[v], c[v] = internal_cell(params, h[kids], c[kids])
    return h, c


def _const(name: str, arr) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def _model(graph: onnx.GraphProto, treerec: bool) -> onnx.ModelProto:
    ops = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid(DOMAIN, VERSION)] if treerec else [])
    return helper.make_model(graph, ir_version=IR_VERSION, opset_imports=ops, producer_name="cortex.onnx_ops.zoo")


def _hc_nodes(n, p: str, i: str, o: str, u: str, extra_c: str | None, h: str, c: str) -> list[onnx.NodeProto]:
    """c = σ(i)⊙tanh(u) (+ extra_c); h = σ(o)⊙tanh(c)."""
    c0 = f"{p}c0" if extra_c else c
    nodes = [
        n("Sigmoid", [i], [f"{p}si"]),
        n("Tanh", [u], [f"{p}tu"]),
        n("Mul", [f"{p}si", f"{p}tu"], [c0]),
    ]
    if extra_c:
        nodes.append(n("Add", [c0, extra_c], [c]))
    return nodes + [
        n("Sigmoid", [o], [f"{p}so"]),
        n("Tanh", [c], [f"{p}tc"]),
        n("Mul", [f"{p}so", f"{p}tc"], [h]),
    ]


# ----------------------------------------------------------------------------------------------------------------
# cortex.TreeRec form


def build_treerec(params: ChildSumParams, max_children: int = 2) -> onnx.ModelProto:
    """A ``cortex.TreeRec`` model: inputs ``children`` int64 [N, K] (K = ``max_children``), ``words`` int64 [N];
    outputs ``h``, ``c`` float32 [N, H]. Leaf body ``word -> (h, c)``; internal body ``(h_0, c_0, ..., h_{K-1},
    c_{K-1}, word) -> (h, c)`` ignores the word: Sum of the K child h rows, MatMul/Split for i, o, u, one forget
    gate per slot. Missing children are zero rows, which add nothing to h̃ and give f_k⊙0 = 0, so no mask is
    needed."""
    register_schema()
    H, K = params.hidden, max_children
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    vi = helper.make_tensor_value_info
    n = helper.make_node
    split3 = _const("split3", np.array([H] * 3, np.int64))
    leaf = helper.make_graph(
        [
            n("Gather", ["E", "word"], ["x"], axis=0),
            n("MatMul", ["x", "W"], ["xW"]),
            n("Add", ["xW", "bW"], ["g"]),
            n("Split", ["g", "split3"], ["i", "o", "u"], axis=0),
        ] + _hc_nodes(n, "", "i", "o", "u", None, "h", "c"),
        "childsum_leaf",
        [vi("word", i64, [])],
        [vi("h", f32, [H]), vi("c", f32, [H])],
        initializer=[_const("E", params.embedding), _const("W", params.W), _const("bW", params.bW), split3],
    )
    int_nodes = [
        n("Sum", [f"h_{k}" for k in range(K)], ["h_sum"]),
        n("MatMul", ["h_sum", "U_iou"], ["hU"]),
        n("Add", ["hU", "b_iou"], ["g"]),
        n("Split", ["g", "split3"], ["i", "o", "u"], axis=0),
    ]
    for k in range(K):
        int_nodes += [
            n("MatMul", [f"h_{k}", "U_f"], [f"f0_{k}"]),
            n("Add", [f"f0_{k}", "b_f"], [f"f1_{k}"]),
            n("Sigmoid", [f"f1_{k}"], [f"f_{k}"]),
            n("Mul", [f"f_{k}", f"c_{k}"], [f"fc_{k}"]),
        ]
    int_nodes.append(n("Sum", [f"fc_{k}" for k in range(K)], ["fc"]))
    int_nodes += _hc_nodes(n, "", "i", "o", "u", "fc", "h", "c")
    child_inputs = [vi(f"{s}_{k}", f32, [H]) for k in range(K) for s in ("h", "c")]
    internal = helper.make_graph(
        int_nodes,
        "childsum_internal",
        child_inputs + [vi("word", i64, [])],
        [vi("h", f32, [H]), vi("c", f32, [H])],
        initializer=[_const("U_iou", params.U_iou), _const("b_iou", params.b_iou), _const("U_f", params.U_f),
                     _const("b_f", params.b_f), split3],
    )
    node = make_treerec_node("children", ["words"], ["h", "c"], leaf, internal, name="childsum")
    graph = helper.make_graph(
        [node],
        "childsum_treerec",
        [vi("children", i64, ["N", K]), vi("words", i64, ["N"])],
        [vi("h", f32, ["N", H]), vi("c", f32, ["N", H])],
    )
    return _model(graph, treerec=True)


# ----------------------------------------------------------------------------------------------------------------
# Hand-built Loop/If form


def build_loop(params: ChildSumParams, max_children: int | None = None) -> onnx.ModelProto:
    """A hand-built Loop/If model: inputs ``words`` int64 [N], ``children`` int64 [N, K], ``order`` int64 [L];
    outputs ``h``, ``c`` float32 [N, H]. Same visit semantics as :func:`reference`. K is symbolic unless
    ``max_children`` is given (nothing in the graph depends on it).

    Style: tables from ConstantOfShape(Concat(Shape(words), [H])); Loop(trip count = Shape(order)[0], no
    condition); body: v = Gather(order, i); kids = Gather(children, v) [K]; mask = Cast(kids >= 0) float [K];
    If(Equal(ReduceSum(mask), 0)); leaf: Gather(E, word), MatMul, Add, Split, cell; internal: safe = Max(kids, 0),
    h_k = Mul(Gather(h, safe), Unsqueeze(Cast(kids >= 0))) [K, H] (the branch casts again: ORT warns when a
    subgraph reads the outer Cast), h̃ = ReduceSum(h_k, axis 0), MatMul/Add/Split for i, o, u,
    f = Sigmoid(MatMul(h_k, U_f) + b_f) [K, H], c_k = Where(Unsqueeze(kids >= 0), Gather(c, safe), 0),
    ReduceSum(f⊙c_k, axis 0); rows written with ScatterND(table, Unsqueeze(v) [1], row [H])."""
    H = params.hidden
    K = max_children if max_children is not None else "K"
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    vi = helper.make_tensor_value_info
    n = helper.make_node
    inits = [
        _const("E", params.embedding), _const("W", params.W), _const("bW", params.bW),
        _const("U_iou", params.U_iou), _const("b_iou", params.b_iou),
        _const("U_f", params.U_f), _const("b_f", params.b_f),
        _const("split3", np.array([H] * 3, np.int64)),
        _const("zero_i", np.int64(0)), _const("zero_f", np.float32(0)),
        _const("axis0", np.array([0], np.int64)), _const("axis1", np.array([1], np.int64)),
        _const("H_vec", np.array([H], np.int64)),
    ]
    then_g = helper.make_graph(
        [
            n("Gather", ["words", "v"], ["leaf_w"], axis=0),
            n("Gather", ["E", "leaf_w"], ["leaf_x"], axis=0),
            n("MatMul", ["leaf_x", "W"], ["leaf_xW"]),
            n("Add", ["leaf_xW", "bW"], ["leaf_g"]),
            n("Split", ["leaf_g", "split3"], ["leaf_i", "leaf_o", "leaf_u"], axis=0),
        ] + _hc_nodes(n, "leaf_", "leaf_i", "leaf_o", "leaf_u", None, "leaf_h", "leaf_c"),
        "leaf_branch", [], [vi("leaf_h", f32, [H]), vi("leaf_c", f32, [H])],
    )
    else_g = helper.make_graph(
        [
            n("Max", ["kids", "zero_i"], ["safe"]),
            n("Cast", ["present"], ["int_mask"], to=f32),
            n("Unsqueeze", ["int_mask", "axis1"], ["mask2"]),
            n("Unsqueeze", ["present", "axis1"], ["present2"]),
            n("Gather", ["h_in", "safe"], ["hk_raw"], axis=0),
            n("Mul", ["hk_raw", "mask2"], ["hk"]),
            n("ReduceSum", ["hk", "axis0"], ["h_sum"], keepdims=0),
            n("MatMul", ["h_sum", "U_iou"], ["int_hU"]),
            n("Add", ["int_hU", "b_iou"], ["int_g"]),
            n("Split", ["int_g", "split3"], ["int_i", "int_o", "int_u"], axis=0),
            n("MatMul", ["hk", "U_f"], ["f0"]),
            n("Add", ["f0", "b_f"], ["f1"]),
            n("Sigmoid", ["f1"], ["f"]),
            n("Gather", ["c_in", "safe"], ["ck_raw"], axis=0),
            n("Where", ["present2", "ck_raw", "zero_f"], ["ck"]),
            n("Mul", ["f", "ck"], ["fck"]),
            n("ReduceSum", ["fck", "axis0"], ["fc"], keepdims=0),
        ] + _hc_nodes(n, "int_", "int_i", "int_o", "int_u", "fc", "int_h", "int_c"),
        "internal_branch", [], [vi("int_h", f32, [H]), vi("int_c", f32, [H])],
    )
    body = helper.make_graph(
        [
            n("Gather", ["order", "i"], ["v"], axis=0),
            n("Gather", ["children", "v"], ["kids"], axis=0),
            n("GreaterOrEqual", ["kids", "zero_i"], ["present"]),
            n("Cast", ["present"], ["mask"], to=f32),
            n("ReduceSum", ["mask"], ["num_kids"], keepdims=0),
            n("Equal", ["num_kids", "zero_f"], ["is_leaf"]),
            n("If", ["is_leaf"], ["row_h", "row_c"], then_branch=then_g, else_branch=else_g),
            n("Unsqueeze", ["v", "axis0"], ["v1"]),
            n("ScatterND", ["h_in", "v1", "row_h"], ["h_out"]),
            n("ScatterND", ["c_in", "v1", "row_c"], ["c_out"]),
            n("Identity", ["cond_in"], ["cond_out"]),
        ],
        "visit_body",
        [vi("i", i64, []), vi("cond_in", TensorProto.BOOL, []), vi("h_in", f32, ["N", H]), vi("c_in", f32, ["N", H])],
        [vi("cond_out", TensorProto.BOOL, []), vi("h_out", f32, ["N", H]), vi("c_out", f32, ["N", H])],
    )
    main = [
        n("Shape", ["words"], ["N1"]),
        n("Concat", ["N1", "H_vec"], ["table_shape"], axis=0),
        n("ConstantOfShape", ["table_shape"], ["h0"], value=numpy_helper.from_array(np.zeros(1, np.float32))),
        n("ConstantOfShape", ["table_shape"], ["c0"], value=numpy_helper.from_array(np.zeros(1, np.float32))),
        n("Shape", ["order"], ["order_shape"]),
        n("Gather", ["order_shape", "zero_i"], ["trip_count"], axis=0),
        n("Loop", ["trip_count", "", "h0", "c0"], ["h", "c"], body=body),
    ]
    graph = helper.make_graph(
        main,
        "childsum_loop",
        [vi("words", i64, ["N"]), vi("children", i64, ["N", K]), vi("order", i64, ["L"])],
        [vi("h", f32, ["N", H]), vi("c", f32, ["N", H])],
        initializer=inits,
    )
    return _model(graph, treerec=False)

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

from cortex.examples.structures import Forest, NaryForest, nary_from_forest
from cortex.examples._build import (F32, I64, IR_VERSION, OPSET, EmbeddingSizes, branch, const, dense, embed_affine,  # noqa: F401
                      embed_inits, embedded_leaf, loop_model, node, row_infos, sigmoid, treerec_internal, treerec_leaf,
                      treerec_model, uniform, vi, visit, visit_body, zero_table)

__all__ = ["ChildSumParams", "Params", "build_loop", "build_treerec", "make_params", "reference"]


@dataclass
class ChildSumParams(EmbeddingSizes):
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


Params = ChildSumParams


def make_params(hidden: int, embed_dim: int, vocab: int, seed: int = 0) -> ChildSumParams:
    """Random weights: uniform ±1/sqrt(fan_in) (embedding ±1)."""
    u = uniform(seed)
    H = hidden
    leaf = embedded_leaf(u, vocab, embed_dim, 3 * H)
    U_iou, b_iou = dense(u, H, 3 * H)
    U_f, b_f = dense(u, H, H)
    return ChildSumParams(**leaf, U_iou=U_iou, b_iou=b_iou, U_f=U_f, b_f=b_f)


def leaf_cell(p: ChildSumParams, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(h, c) rows of a leaf with embedded input ``x`` [D]."""
    i, o, u = np.split(x @ p.W + p.bW, 3, axis=-1)
    c = sigmoid(i) * np.tanh(u)
    return (sigmoid(o) * np.tanh(c)).astype(np.float32), c.astype(np.float32)


def internal_cell(p: ChildSumParams, hs: np.ndarray, cs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(h, c) rows of an internal node from its present children's rows ``hs``, ``cs`` [k, H] (k >= 1)."""
    i, o, u = np.split(hs.sum(axis=0) @ p.U_iou + p.b_iou, 3, axis=-1)
    f = sigmoid(hs @ p.U_f + p.b_f)
    c = sigmoid(i) * np.tanh(u) + (f * cs).sum(axis=0)
    return (sigmoid(o) * np.tanh(c)).astype(np.float32), c.astype(np.float32)


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

    def step(v, tables):
        h, c = tables
        kids = children[v]
        kids = kids[kids >= 0]
        if kids.size == 0:
            return leaf_cell(params, params.embedding[words[v]])
        return internal_cell(params, h[kids], c[kids])

    H = params.hidden
    return tuple(visit(int(np.shape(words)[0]), [H, H], order, step))


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
    H, K = params.hidden, max_children
    n = node
    split3 = const("split3", np.array([H] * 3, np.int64))
    leaf = treerec_leaf(
        "childsum",
        embed_affine("x", "g") + [n("Split", ["g", "split3"], ["i", "o", "u"], axis=0)]
        + _hc_nodes(n, "", "i", "o", "u", None, "h", "c"),
        [("h", H), ("c", H)], embed_inits(params) + [split3],
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
    child_inputs = row_infos([f"{s}_{k}" for k in range(K) for s in ("h", "c")], H)
    internal = treerec_internal(
        "childsum", int_nodes, child_inputs, [("h", H), ("c", H)],
        [const("U_iou", params.U_iou), const("b_iou", params.b_iou), const("U_f", params.U_f),
         const("b_f", params.b_f), split3],
    )
    return treerec_model("childsum", leaf, internal, [("h", H), ("c", H)], K)


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
    n = node
    inits = embed_inits(params) + [
        const("U_iou", params.U_iou), const("b_iou", params.b_iou),
        const("U_f", params.U_f), const("b_f", params.b_f),
        const("split3", np.array([H] * 3, np.int64)),
        const("zero_i", np.int64(0)), const("zero_f", np.float32(0)),
        const("axis0", np.array([0], np.int64)), const("axis1", np.array([1], np.int64)),
        const("H_vec", np.array([H], np.int64)),
    ]
    then_g = branch(
        "leaf_branch",
        [n("Gather", ["words", "v"], ["leaf_w"], axis=0)] + embed_affine("leaf_x", "leaf_g", word="leaf_w")
        + [n("Split", ["leaf_g", "split3"], ["leaf_i", "leaf_o", "leaf_u"], axis=0)]
        + _hc_nodes(n, "leaf_", "leaf_i", "leaf_o", "leaf_u", None, "leaf_h", "leaf_c"),
        [("leaf_h", [H]), ("leaf_c", [H])],
    )
    else_g = branch(
        "internal_branch",
        [
            n("Max", ["kids", "zero_i"], ["safe"]),
            n("Cast", ["present"], ["int_mask"], to=F32),
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
        [("int_h", [H]), ("int_c", [H])],
    )
    body = visit_body(
        [
            n("Gather", ["order", "i"], ["v"], axis=0),
            n("Gather", ["children", "v"], ["kids"], axis=0),
            n("GreaterOrEqual", ["kids", "zero_i"], ["present"]),
            n("Cast", ["present"], ["mask"], to=F32),
            n("ReduceSum", ["mask"], ["num_kids"], keepdims=0),
            n("Equal", ["num_kids", "zero_f"], ["is_leaf"]),
            n("If", ["is_leaf"], ["row_h", "row_c"], then_branch=then_g, else_branch=else_g),
            n("Unsqueeze", ["v", "axis0"], ["v1"]),
            n("ScatterND", ["h_in", "v1", "row_h"], ["h_out"]),
            n("ScatterND", ["c_in", "v1", "row_c"], ["c_out"]),
        ],
        [("h", H), ("c", H)],
    )
    main = [
        n("Shape", ["words"], ["N1"]),
        n("Concat", ["N1", "H_vec"], ["table_shape"], axis=0),
        zero_table("table_shape", "h0"),
        zero_table("table_shape", "c0"),
        n("Shape", ["order"], ["order_shape"]),
        n("Gather", ["order_shape", "zero_i"], ["trip_count"], axis=0),
        n("Loop", ["trip_count", "", "h0", "c0"], ["h", "c"], body=body),
    ]
    inputs = [vi("words", I64, ["N"]), vi("children", I64, ["N", K]), vi("order", I64, ["L"])]
    return loop_model("childsum", main, inputs, [("h", H), ("c", H)], inits)

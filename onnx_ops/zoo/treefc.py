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

from cortex.examples._build import (IR_VERSION, OPSET, EmbedAffineParams, binary_inputs, binary_visit, branch, const,  # noqa: F401
                      dense, embed_affine, embed_inits, embedded_leaf, gather_children, loop_model, node, row_infos,
                      treerec_internal, treerec_leaf, treerec_model, uniform, visit_body, visit_head, zero_table)

__all__ = ["Params", "TreeFCParams", "build_loop", "build_treerec", "make_params", "reference"]


@dataclass
class TreeFCParams(EmbedAffineParams):
    """float32 weights: ``embedding`` [V, D], ``W`` [D, H], ``bW`` [H], ``U`` [H, H], ``bU`` [H]."""


Params = TreeFCParams


def make_params(hidden: int, embed_dim: int, vocab: int, seed: int = 0) -> TreeFCParams:
    """Random weights: uniform ±1/sqrt(fan_in) (embedding ±1)."""
    u = uniform(seed)
    leaf = embedded_leaf(u, vocab, embed_dim, hidden)
    U, bU = dense(u, hidden, hidden)
    return TreeFCParams(**leaf, U=U, bU=bU)


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, np.float32(0)).astype(np.float32)


def leaf_cell(p: TreeFCParams, x: np.ndarray) -> np.ndarray:
    return _relu(x @ p.W + p.bW)


def internal_cell(p: TreeFCParams, h_sum: np.ndarray) -> np.ndarray:
    """Row of an internal node from the sum of its children's rows."""
    return _relu(h_sum @ p.U + p.bU)


def reference(params: TreeFCParams, words, left=None, right=None, order=None, *, leaf_test: str = "negative"
              ) -> np.ndarray:
    """numpy ``h`` [N, H] with the exact visit semantics of an exported Loop (:func:`._common.binary_visit`); leaf
    test ``leaf_test`` (``"negative"``: the PyTorch styles and :func:`build_loop`; ``"minus_one"``).
    ``words`` may be a :class:`~cortex.examples.structures.Forest`."""
    return binary_visit(words, left, right, order, leaf_test, [params.hidden],
                        lambda w: leaf_cell(params, params.embedding[w]),
                        lambda h_l, h_r: internal_cell(params, h_l + h_r))


# ----------------------------------------------------------------------------------------------------------------
# cortex.TreeRec form


def build_treerec(params: TreeFCParams, arity: int = 2) -> onnx.ModelProto:
    """A ``cortex.TreeRec`` model: inputs ``children`` int64 [N, arity], ``words`` int64 [N]; output ``h`` float32
    [N, H]. Internal body ``(h_0, ..., h_{K-1}, word) -> h`` sums all K child rows (missing children are zero
    rows, so the sum is over present children); for ``arity=2`` it equals :func:`reference` on a Forest."""
    H = params.hidden
    leaf = treerec_leaf("treefc", embed_affine("x", "pre") + [node("Relu", ["pre"], ["h"])], [("h", H)],
                        embed_inits(params))
    kids = [f"h_{k}" for k in range(arity)]
    internal = treerec_internal(
        "treefc",
        [
            node("Sum", kids, ["hs"]),
            node("MatMul", ["hs", "U"], ["hU"]),
            node("Add", ["hU", "bU"], ["pre"]),
            node("Relu", ["pre"], ["h"]),
        ],
        row_infos(kids, H), [("h", H)], [const("U", params.U), const("bU", params.bU)],
    )
    return treerec_model("treefc", leaf, internal, [("h", H)], arity)


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
    inits = embed_inits(params) + [
        const("U", params.U), const("bU", params.bU),
        const("zero_i", np.int64(0)), const("axis0", np.array([0], np.int64)),
        const("H_vec", np.array([H], np.int64)), const("true", np.array(True)),
    ]
    then_g = branch(
        "leaf_branch",
        [node("Gather", ["words", "v"], ["leaf_w"], axis=0)]
        + embed_affine("leaf_x", "leaf_pre", word="leaf_w") + [node("Relu", ["leaf_pre"], ["leaf_h"])],
        [("leaf_h", [H])],
    )
    else_g = branch(
        "internal_branch",
        gather_children(["h"]) + [
            node("Add", ["h_l", "h_r"], ["h_sum"]),
            node("MatMul", ["h_sum", "U"], ["int_hU"]),
            node("Add", ["int_hU", "bU"], ["int_pre"]),
            node("Relu", ["int_pre"], ["int_h"]),
        ],
        [("int_h", [H])],
    )
    body = visit_body(
        visit_head("left", "Less", "zero_i", ["row"], then_g, else_g) + [
            node("Unsqueeze", ["v", "axis0"], ["v1"]),
            node("ScatterND", ["h_in", "v1", "row"], ["h_out"]),
        ],
        [("h", H)],
    )
    main = [
        node("Shape", ["words"], ["N1"]),
        node("Concat", ["N1", "H_vec"], ["table_shape"], axis=0),
        zero_table("table_shape", "h0"),
        node("Size", ["order"], ["trip_count"]),
        node("Loop", ["trip_count", "true", "h0"], ["h"], body=body),
    ]
    return loop_model("treefc", main, binary_inputs(), [("h", H)], inits)

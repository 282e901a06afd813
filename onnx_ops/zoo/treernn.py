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

from cortex.examples._build import (IR_VERSION, OPSET, EmbedAffineParams, binary_inputs, binary_visit, branch, const,  # noqa: F401
                      dense, embed_affine, embed_inits, embedded_leaf, loop_model, node, row_infos, treerec_internal,
                      treerec_leaf, treerec_model, uniform, visit_body, visit_head)

__all__ = ["Params", "TreeRNNParams", "build_loop", "build_treerec", "make_params", "reference"]


@dataclass
class TreeRNNParams(EmbedAffineParams):
    """float32 weights: ``embedding`` [V, D], ``W`` [D, H], ``bW`` [H], ``U`` [2H, H], ``bU`` [H]."""


Params = TreeRNNParams


def make_params(hidden: int, embed_dim: int, vocab: int, seed: int = 0) -> TreeRNNParams:
    """Random weights: uniform ±1/sqrt(fan_in) (embedding ±1)."""
    u = uniform(seed)
    leaf = embedded_leaf(u, vocab, embed_dim, hidden)
    U, bU = dense(u, 2 * hidden, hidden)
    return TreeRNNParams(**leaf, U=U, bU=bU)


def leaf_cell(p: TreeRNNParams, x: np.ndarray) -> np.ndarray:
    return np.tanh(x @ p.W + p.bW).astype(np.float32)


def internal_cell(p: TreeRNNParams, h_l: np.ndarray, h_r: np.ndarray) -> np.ndarray:
    return np.tanh(np.concatenate([h_l, h_r], axis=-1) @ p.U + p.bU).astype(np.float32)


def reference(params: TreeRNNParams, words, left=None, right=None, order=None, *, leaf_test: str = "negative"
              ) -> np.ndarray:
    """numpy ``h`` [N, H] with the exact visit semantics of an exported Loop (:func:`._common.binary_visit`); leaf
    test ``leaf_test`` (``"negative"``: the PyTorch styles; ``"minus_one"``: :func:`build_loop`).
    ``words`` may be a :class:`~cortex.examples.structures.Forest`."""
    return binary_visit(words, left, right, order, leaf_test, [params.hidden],
                        lambda w: leaf_cell(params, params.embedding[w]),
                        lambda h_l, h_r: internal_cell(params, h_l, h_r))


# ----------------------------------------------------------------------------------------------------------------
# cortex.TreeRec form


def build_treerec(params: TreeRNNParams) -> onnx.ModelProto:
    """A ``cortex.TreeRec`` model: inputs ``children`` int64 [N, 2], ``words`` int64 [N]; output ``h`` float32
    [N, H]. Leaf body ``word -> h``; internal body ``(h_l, h_r, word) -> h`` (Concat, MatMul, Add, Tanh)."""
    H = params.hidden
    leaf = treerec_leaf("treernn", embed_affine("x", "pre") + [node("Tanh", ["pre"], ["h"])], [("h", H)],
                        embed_inits(params))
    internal = treerec_internal(
        "treernn",
        [
            node("Concat", ["h_l", "h_r"], ["hlr"], axis=0),
            node("MatMul", ["hlr", "U"], ["hU"]),
            node("Add", ["hU", "bU"], ["pre"]),
            node("Tanh", ["pre"], ["h"]),
        ],
        row_infos(["h_l", "h_r"], H), [("h", H)], [const("U", params.U), const("bU", params.bU)],
    )
    return treerec_model("treernn", leaf, internal, [("h", H)], 2)


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
    inits = [
        const("E", params.embedding),
        const("WT", np.ascontiguousarray(params.W.T)), const("bW", params.bW),
        const("UT", np.ascontiguousarray(params.U.T)), const("bU", params.bU),
        const("zero_i", np.int64(0)), const("minus_one", np.int64(-1)), const("zero_f", np.float32(0)),
        const("axis0", np.array([0], np.int64)), const("H_vec", np.array([H], np.int64)),
        const("start0", np.array([0], np.int64)), const("end1", np.array([1], np.int64)),
        const("shape_1_2H", np.array([1, 2 * H], np.int64)), const("shape_1_1", np.array([1, 1], np.int64)),
    ]
    then_g = branch(
        "leaf_branch",
        [
            node("Gather", ["words", "v"], ["leaf_w"], axis=0),
            node("Gather", ["E", "leaf_w"], ["leaf_x"], axis=0),
            node("Unsqueeze", ["leaf_x", "axis0"], ["leaf_x2"]),
            node("Gemm", ["leaf_x2", "WT", "bW"], ["leaf_pre"], transB=1),
            node("Tanh", ["leaf_pre"], ["leaf_h"]),
        ],
        [("leaf_h", [1, H])],
    )
    else_g = branch(
        "internal_branch",
        [
            node("Gather", ["right", "v"], ["r"], axis=0),
            node("Unsqueeze", ["l", "axis0"], ["l1"]),
            node("Unsqueeze", ["r", "axis0"], ["r1"]),
            node("Concat", ["l1", "r1"], ["lr"], axis=0),
            node("Gather", ["h_in", "lr"], ["h_lr"], axis=0),
            node("Reshape", ["h_lr", "shape_1_2H"], ["hlr2"]),
            node("Gemm", ["hlr2", "UT", "bU"], ["int_pre"], transB=1),
            node("Tanh", ["int_pre"], ["int_h"]),
        ],
        [("int_h", [1, H])],
    )
    body = visit_body(
        visit_head("left", "Equal", "minus_one", ["row"], then_g, else_g) + [
            node("Reshape", ["v", "shape_1_1"], ["v11"]),
            node("ScatterND", ["h_in", "v11", "row"], ["h_out"]),
        ],
        [("h", H)],
    )
    main = [
        node("Shape", ["words"], ["words_shape"]),
        node("Slice", ["words_shape", "start0", "end1"], ["N1"]),
        node("Concat", ["N1", "H_vec"], ["table_shape"], axis=0),
        node("Expand", ["zero_f", "table_shape"], ["h0"]),
        node("Shape", ["order"], ["order_shape"]),
        node("Gather", ["order_shape", "zero_i"], ["trip_count"], axis=0),
        node("Loop", ["trip_count", "", "h0"], ["h"], body=body),
    ]
    return loop_model("treernn", main, binary_inputs(), [("h", H)], inits)

"""TreeGRU (binary): a gated recursive unit whose candidate reads the children through reset gates.

Leaf:      x = E[word]; h = tanh(x @ W + bW)
Internal:  z = σ([h_l; h_r] @ Uz + bz)                      [H]
           [r_l; r_r] = σ([h_l; h_r] @ Ur + br)             [2H], one reset gate per child
           h̃ = tanh([r_l⊙h_l; r_r⊙h_r] @ Uh + bh)          (this matrix product depends on the first two)
           h = z⊙(h_l + h_r)/2 + (1 − z)⊙h̃

Matrices are stored as ONNX MatMul expects (``x @ W``): ``W`` [D, H], ``Uz`` [2H, H], ``Ur`` [2H, 2H], ``Uh``
[2H, H] (the math matrices transposed). One state table ``h`` [N, H].

Three forms of the same model: :func:`reference` (numpy, the Loop visit semantics), :func:`build_treerec`
(``cortex.TreeRec``) and :func:`build_loop` (a hand-built ONNX Loop/If model).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from cortex.examples._build import (IR_VERSION, OPSET, EmbeddingSizes, binary_inputs, binary_visit, branch, const,  # noqa: F401
                      dense, embed_affine, embed_inits, embedded_leaf, gather_children, loop_model, node, row_infos,
                      sigmoid, treerec_internal, treerec_leaf, treerec_model, uniform, visit_body, visit_head,
                      zero_table)

__all__ = ["Params", "TreeGRUParams", "build_loop", "build_treerec", "make_params", "reference"]


@dataclass
class TreeGRUParams(EmbeddingSizes):
    """float32 weights: ``embedding`` [V, D], ``W`` [D, H], ``bW`` [H], ``Uz`` [2H, H], ``bz`` [H], ``Ur``
    [2H, 2H], ``br`` [2H], ``Uh`` [2H, H], ``bh`` [H]."""

    embedding: np.ndarray
    W: np.ndarray
    bW: np.ndarray
    Uz: np.ndarray
    bz: np.ndarray
    Ur: np.ndarray
    br: np.ndarray
    Uh: np.ndarray
    bh: np.ndarray

    @property
    def hidden(self) -> int:
        return int(self.bW.shape[0])


Params = TreeGRUParams


def make_params(hidden: int, embed_dim: int, vocab: int, seed: int = 0) -> TreeGRUParams:
    """Random weights: uniform ±1/sqrt(fan_in) (embedding ±1)."""
    u = uniform(seed)
    H = hidden
    leaf = embedded_leaf(u, vocab, embed_dim, H)
    Uz, bz = dense(u, 2 * H, H)
    Ur, br = dense(u, 2 * H, 2 * H)
    Uh, bh = dense(u, 2 * H, H)
    return TreeGRUParams(**leaf, Uz=Uz, bz=bz, Ur=Ur, br=br, Uh=Uh, bh=bh)


def leaf_cell(p: TreeGRUParams, x: np.ndarray) -> np.ndarray:
    return np.tanh(x @ p.W + p.bW).astype(np.float32)


def internal_cell(p: TreeGRUParams, h_l: np.ndarray, h_r: np.ndarray) -> np.ndarray:
    hlr = np.concatenate([h_l, h_r], axis=-1)
    z = sigmoid(hlr @ p.Uz + p.bz)
    r = sigmoid(hlr @ p.Ur + p.br)
    h_tilde = np.tanh((r * hlr) @ p.Uh + p.bh)
    return (z * (h_l + h_r) / np.float32(2) + (np.float32(1) - z) * h_tilde).astype(np.float32)


def reference(params: TreeGRUParams, words, left=None, right=None, order=None, *, leaf_test: str = "negative"
              ) -> np.ndarray:
    """numpy ``h`` [N, H] with the exact visit semantics of an exported Loop (:func:`._common.binary_visit`); leaf
    test ``leaf_test`` (``"negative"``: the PyTorch styles and :func:`build_loop`; ``"minus_one"``).
    ``words`` may be a :class:`~cortex.examples.structures.Forest`."""
    return binary_visit(words, left, right, order, leaf_test, [params.hidden],
                        lambda w: leaf_cell(params, params.embedding[w]),
                        lambda h_l, h_r: internal_cell(params, h_l, h_r))


def _gru_nodes(n, p: str, h_l: str, h_r: str, out: str, fused: bool) -> list[onnx.NodeProto]:
    """Internal-cell nodes from rows ``h_l``, ``h_r`` [H] to ``out`` [H]. ``fused``: one MatMul with ``Uzr``
    [2H, 3H] then Split (the Loop style), else separate MatMuls with ``Uz`` and ``Ur`` (the TreeRec style).
    Needs initializers Uz/bz/Ur/br (or Uzr/bzr/split_zr), Uh, bh, half, one_f."""
    nodes = [n("Concat", [h_l, h_r], [f"{p}hlr"], axis=0)]
    if fused:
        nodes += [
            n("MatMul", [f"{p}hlr", "Uzr"], [f"{p}zr0"]),
            n("Add", [f"{p}zr0", "bzr"], [f"{p}zr"]),
            n("Sigmoid", [f"{p}zr"], [f"{p}szr"]),
            n("Split", [f"{p}szr", "split_zr"], [f"{p}z", f"{p}r_l", f"{p}r_r"], axis=0),
            n("Mul", [f"{p}r_l", h_l], [f"{p}rh_l"]),
            n("Mul", [f"{p}r_r", h_r], [f"{p}rh_r"]),
            n("Concat", [f"{p}rh_l", f"{p}rh_r"], [f"{p}rh"], axis=0),
        ]
    else:
        nodes += [
            n("MatMul", [f"{p}hlr", "Uz"], [f"{p}z0"]),
            n("Add", [f"{p}z0", "bz"], [f"{p}z1"]),
            n("Sigmoid", [f"{p}z1"], [f"{p}z"]),
            n("MatMul", [f"{p}hlr", "Ur"], [f"{p}r0"]),
            n("Add", [f"{p}r0", "br"], [f"{p}r1"]),
            n("Sigmoid", [f"{p}r1"], [f"{p}r"]),
            n("Mul", [f"{p}r", f"{p}hlr"], [f"{p}rh"]),
        ]
    nodes += [
        n("MatMul", [f"{p}rh", "Uh"], [f"{p}ht0"]),
        n("Add", [f"{p}ht0", "bh"], [f"{p}ht1"]),
        n("Tanh", [f"{p}ht1"], [f"{p}ht"]),
        n("Add", [h_l, h_r], [f"{p}hsum"]),
        n("Mul", [f"{p}hsum", "half"], [f"{p}havg"]),
        n("Mul", [f"{p}z", f"{p}havg"], [f"{p}keep"]),
        n("Sub", ["one_f", f"{p}z"], [f"{p}omz"]),
        n("Mul", [f"{p}omz", f"{p}ht"], [f"{p}new"]),
        n("Add", [f"{p}keep", f"{p}new"], [out]),
    ]
    return nodes


# ----------------------------------------------------------------------------------------------------------------
# cortex.TreeRec form


def build_treerec(params: TreeGRUParams) -> onnx.ModelProto:
    """A ``cortex.TreeRec`` model: inputs ``children`` int64 [N, 2], ``words`` int64 [N]; output ``h`` float32
    [N, H]. Leaf body ``word -> h``; internal body ``(h_l, h_r, word) -> h`` (separate MatMuls for z and r, then
    the dependent MatMul with Uh)."""
    H = params.hidden
    leaf = treerec_leaf("treegru", embed_affine("x", "pre") + [node("Tanh", ["pre"], ["h"])], [("h", H)],
                        embed_inits(params))
    internal = treerec_internal(
        "treegru",
        _gru_nodes(node, "", "h_l", "h_r", "h", fused=False),
        row_infos(["h_l", "h_r"], H), [("h", H)],
        [
            const("Uz", params.Uz), const("bz", params.bz), const("Ur", params.Ur), const("br", params.br),
            const("Uh", params.Uh), const("bh", params.bh),
            const("half", np.float32(0.5)), const("one_f", np.float32(1.0)),
        ],
    )
    return treerec_model("treegru", leaf, internal, [("h", H)], 2)


# ----------------------------------------------------------------------------------------------------------------
# Hand-built Loop/If form


def build_loop(params: TreeGRUParams) -> onnx.ModelProto:
    """A hand-built Loop/If model: inputs ``words``, ``left``, ``right`` int64 [N], ``order`` int64 [L]; output
    ``h`` float32 [N, H]. Same visit semantics as :func:`reference` with ``leaf_test="negative"``.

    Style: table from ConstantOfShape(Concat(Shape(words), [H])); Loop(trip count = Shape(order)[0] via
    Squeeze, no condition); body: v = Gather(order, i); If(Less(Gather(left, v), 0)); leaf: Gather(E, word),
    MatMul, Add, Tanh; internal: Concat of the two gathered child rows, one MatMul with [Uz | Ur] [2H, 3H], Add,
    Sigmoid, Split into z, r_l, r_r, then MatMul with Uh on Concat(r_l⊙h_l, r_r⊙h_r), Tanh, and the z blend;
    row written with ScatterElements(h, Expand(Reshape(v, [1, 1]), [1, H]), Unsqueeze(row) [1, H], axis=0)."""
    H = params.hidden
    inits = embed_inits(params) + [
        const("Uzr", np.concatenate([params.Uz, params.Ur], axis=1)),
        const("bzr", np.concatenate([params.bz, params.br])),
        const("split_zr", np.array([H, H, H], np.int64)),
        const("Uh", params.Uh), const("bh", params.bh),
        const("half", np.float32(0.5)), const("one_f", np.float32(1.0)),
        const("zero_i", np.int64(0)), const("axis0", np.array([0], np.int64)),
        const("H_vec", np.array([H], np.int64)), const("shape_1_1", np.array([1, 1], np.int64)),
        const("shape_1_H", np.array([1, H], np.int64)),
    ]
    then_g = branch(
        "leaf_branch",
        [node("Gather", ["words", "v"], ["leaf_w"], axis=0)]
        + embed_affine("leaf_x", "leaf_pre", word="leaf_w") + [node("Tanh", ["leaf_pre"], ["leaf_h"])],
        [("leaf_h", [H])],
    )
    else_g = branch(
        "internal_branch",
        gather_children(["h"]) + _gru_nodes(node, "int_", "h_l", "h_r", "int_h", fused=True),
        [("int_h", [H])],
    )
    body = visit_body(
        visit_head("left", "Less", "zero_i", ["row"], then_g, else_g) + [
            node("Unsqueeze", ["row", "axis0"], ["row2"]),
            node("Reshape", ["v", "shape_1_1"], ["v11"]),
            node("Expand", ["v11", "shape_1_H"], ["idx"]),
            node("ScatterElements", ["h_in", "idx", "row2"], ["h_out"], axis=0),
        ],
        [("h", H)],
    )
    main = [
        node("Shape", ["words"], ["N1"]),
        node("Concat", ["N1", "H_vec"], ["table_shape"], axis=0),
        zero_table("table_shape", "h0"),
        node("Shape", ["order"], ["L1"]),
        node("Squeeze", ["L1", "axis0"], ["trip_count"]),
        node("Loop", ["trip_count", "", "h0"], ["h"], body=body),
    ]
    return loop_model("treegru", main, binary_inputs(), [("h", H)], inits)

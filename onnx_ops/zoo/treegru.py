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
from onnx import TensorProto, helper, numpy_helper

from ..structures import Forest
from ..treerec import DOMAIN, VERSION, make_treerec_node, register_schema

__all__ = ["Params", "TreeGRUParams", "build_loop", "build_treerec", "make_params", "reference"]

IR_VERSION = 10
OPSET = 17


@dataclass
class TreeGRUParams:
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

    @property
    def embed_dim(self) -> int:
        return int(self.embedding.shape[1])

    @property
    def vocab(self) -> int:
        return int(self.embedding.shape[0])


Params = TreeGRUParams


def make_params(hidden: int, embed_dim: int, vocab: int, seed: int = 0) -> TreeGRUParams:
    """Random weights: uniform ±1/sqrt(fan_in) (embedding ±1)."""
    rng = np.random.default_rng(seed)
    u = lambda shape, s: rng.uniform(-s, s, size=shape).astype(np.float32)  # noqa: E731
    H, s2 = hidden, 1 / np.sqrt(2 * hidden)
    return TreeGRUParams(
        embedding=u((vocab, embed_dim), 1.0),
        W=u((embed_dim, H), 1 / np.sqrt(embed_dim)),
        bW=u((H,), 1 / np.sqrt(embed_dim)),
        Uz=u((2 * H, H), s2), bz=u((H,), s2),
        Ur=u((2 * H, 2 * H), s2), br=u((2 * H,), s2),
        Uh=u((2 * H, H), s2), bh=u((H,), s2),
    )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def leaf_cell(p: TreeGRUParams, x: np.ndarray) -> np.ndarray:
    return np.tanh(x @ p.W + p.bW).astype(np.float32)


def internal_cell(p: TreeGRUParams, h_l: np.ndarray, h_r: np.ndarray) -> np.ndarray:
    hlr = np.concatenate([h_l, h_r], axis=-1)
    z = _sigmoid(hlr @ p.Uz + p.bz)
    r = _sigmoid(hlr @ p.Ur + p.br)
    h_tilde = np.tanh((r * hlr) @ p.Uh + p.bh)
    return (z * (h_l + h_r) / np.float32(2) + (np.float32(1) - z) * h_tilde).astype(np.float32)


def reference(params: TreeGRUParams, words, left=None, right=None, order=None, *, leaf_test: str = "negative"
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
            h[v] = internal_cell(params, h[lv], h[int(right[v])])
    return h


def _const(name: str, arr) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def _model(graph: onnx.GraphProto, treerec: bool) -> onnx.ModelProto:
    ops = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid(DOMAIN, VERSION)] if treerec else [])
    return helper.make_model(graph, ir_version=IR_VERSION, opset_imports=ops, producer_name="cortex.onnx_ops.zoo")


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
    register_schema()
    H = params.hidden
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    vi = helper.make_tensor_value_info
    n = helper.make_node
    leaf = helper.make_graph(
        [
            n("Gather", ["E", "word"], ["x"], axis=0),
            n("MatMul", ["x", "W"], ["xW"]),
            n("Add", ["xW", "bW"], ["pre"]),
            n("Tanh", ["pre"], ["h"]),
        ],
        "treegru_leaf",
        [vi("word", i64, [])],
        [vi("h", f32, [H])],
        initializer=[_const("E", params.embedding), _const("W", params.W), _const("bW", params.bW)],
    )
    internal = helper.make_graph(
        _gru_nodes(n, "", "h_l", "h_r", "h", fused=False),
        "treegru_internal",
        [vi("h_l", f32, [H]), vi("h_r", f32, [H]), vi("word", i64, [])],
        [vi("h", f32, [H])],
        initializer=[
            _const("Uz", params.Uz), _const("bz", params.bz), _const("Ur", params.Ur), _const("br", params.br),
            _const("Uh", params.Uh), _const("bh", params.bh),
            _const("half", np.float32(0.5)), _const("one_f", np.float32(1.0)),
        ],
    )
    node = make_treerec_node("children", ["words"], ["h"], leaf, internal, name="treegru")
    graph = helper.make_graph(
        [node],
        "treegru_treerec",
        [vi("children", i64, ["N", 2]), vi("words", i64, ["N"])],
        [vi("h", f32, ["N", H])],
    )
    return _model(graph, treerec=True)


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
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    vi = helper.make_tensor_value_info
    n = helper.make_node
    inits = [
        _const("E", params.embedding), _const("W", params.W), _const("bW", params.bW),
        _const("Uzr", np.concatenate([params.Uz, params.Ur], axis=1)),
        _const("bzr", np.concatenate([params.bz, params.br])),
        _const("split_zr", np.array([H, H, H], np.int64)),
        _const("Uh", params.Uh), _const("bh", params.bh),
        _const("half", np.float32(0.5)), _const("one_f", np.float32(1.0)),
        _const("zero_i", np.int64(0)), _const("axis0", np.array([0], np.int64)),
        _const("H_vec", np.array([H], np.int64)), _const("shape_1_1", np.array([1, 1], np.int64)),
        _const("shape_1_H", np.array([1, H], np.int64)),
    ]
    then_g = helper.make_graph(
        [
            n("Gather", ["words", "v"], ["leaf_w"], axis=0),
            n("Gather", ["E", "leaf_w"], ["leaf_x"], axis=0),
            n("MatMul", ["leaf_x", "W"], ["leaf_xW"]),
            n("Add", ["leaf_xW", "bW"], ["leaf_pre"]),
            n("Tanh", ["leaf_pre"], ["leaf_h"]),
        ],
        "leaf_branch", [], [vi("leaf_h", f32, [H])],
    )
    else_g = helper.make_graph(
        [
            n("Gather", ["right", "v"], ["r"], axis=0),
            n("Gather", ["h_in", "l"], ["h_l"], axis=0),
            n("Gather", ["h_in", "r"], ["h_r"], axis=0),
        ] + _gru_nodes(n, "int_", "h_l", "h_r", "int_h", fused=True),
        "internal_branch", [], [vi("int_h", f32, [H])],
    )
    body = helper.make_graph(
        [
            n("Gather", ["order", "i"], ["v"], axis=0),
            n("Gather", ["left", "v"], ["l"], axis=0),
            n("Less", ["l", "zero_i"], ["is_leaf"]),
            n("If", ["is_leaf"], ["row"], then_branch=then_g, else_branch=else_g),
            n("Unsqueeze", ["row", "axis0"], ["row2"]),
            n("Reshape", ["v", "shape_1_1"], ["v11"]),
            n("Expand", ["v11", "shape_1_H"], ["idx"]),
            n("ScatterElements", ["h_in", "idx", "row2"], ["h_out"], axis=0),
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
        n("Shape", ["order"], ["L1"]),
        n("Squeeze", ["L1", "axis0"], ["trip_count"]),
        n("Loop", ["trip_count", "", "h0"], ["h"], body=body),
    ]
    graph = helper.make_graph(
        main,
        "treegru_loop",
        [vi("words", i64, ["N"]), vi("left", i64, ["N"]), vi("right", i64, ["N"]), vi("order", i64, ["L"])],
        [vi("h", f32, ["N", H])],
        initializer=inits,
    )
    return _model(graph, treerec=False)

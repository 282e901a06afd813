"""MV-RNN (Socher et al. 2012, matrix-vector RNN) over binary trees.

Every node carries a vector a [H] and a matrix A [H, H]; the matrix state is stored as a row of H*H (row-major,
``A.reshape(H*H)``) in an [N, H*H] table.

Leaf:      a = E[word];  A = M[word].reshape(H, H)
Internal:  a = tanh(W @ concat(A_r @ a_l, A_l @ a_r) + b);  A = W_M @ concat(A_l, A_r, axis=0)  (= W_M1 A_l + W_M2 A_r)

The point of the model: ``A_r @ a_l`` multiplies two *states* (no weight involved). Matrices are stored in the math
orientation (left-multiplied): ``W`` [H, 2H], ``W_M`` [H, 2H]; ``embedding`` [V, H], ``matrices`` [V, H*H].

Three forms: :func:`reference` (numpy, the Loop visit semantics), :func:`build_treerec` (``cortex.TreeRec``) and
:func:`build_loop` (a hand-built ONNX Loop/If model). PyTorch versions: :mod:`onnx_ops.zoo.torch_models_b`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..structures import Forest
from ..treerec import DOMAIN, VERSION, make_treerec_node, register_schema

__all__ = ["MVRNNParams", "build_loop", "build_treerec", "make_params", "reference"]

IR_VERSION = 10
OPSET = 17


@dataclass
class MVRNNParams:
    """float32 weights: ``embedding`` [V, H], ``matrices`` [V, H*H] (row-major H×H per word), ``W`` [H, 2H],
    ``b`` [H], ``W_M`` [H, 2H]."""

    embedding: np.ndarray
    matrices: np.ndarray
    W: np.ndarray
    b: np.ndarray
    W_M: np.ndarray

    @property
    def hidden(self) -> int:
        return int(self.b.shape[0])

    @property
    def vocab(self) -> int:
        return int(self.embedding.shape[0])


def make_params(hidden: int, vocab: int, seed: int = 0) -> MVRNNParams:
    """Random weights initialised like Socher et al.: word matrices = I + noise, W_M = [I I]/2 + noise (so matrix
    states stay O(1) on deep trees), W and b uniform ±1/sqrt(2H), embedding uniform ±1."""
    rng = np.random.default_rng(seed)
    u = lambda shape, s: rng.uniform(-s, s, size=shape).astype(np.float32)  # noqa: E731
    H = hidden
    eye = np.eye(H, dtype=np.float32)
    mats = (eye.reshape(1, H * H) + u((vocab, H * H), 0.3)).astype(np.float32)
    wm = (0.5 * np.concatenate([eye, eye], axis=1) + u((H, 2 * H), 0.1 / np.sqrt(H))).astype(np.float32)
    return MVRNNParams(
        embedding=u((vocab, H), 1.0),
        matrices=mats,
        W=u((H, 2 * H), 1 / np.sqrt(2 * H)),
        b=u((H,), 1 / np.sqrt(2 * H)),
        W_M=wm,
    )


def leaf_cell(p: MVRNNParams, word: int) -> tuple[np.ndarray, np.ndarray]:
    """(a [H], A [H*H]) of a leaf."""
    return p.embedding[word].copy(), p.matrices[word].copy()


def internal_cell(p: MVRNNParams, a_l, A_l, a_r, A_r) -> tuple[np.ndarray, np.ndarray]:
    """(a [H], A [H*H]) of an internal node from its children's rows (A rows flat, H*H)."""
    H = p.hidden
    Ml, Mr = np.asarray(A_l).reshape(H, H), np.asarray(A_r).reshape(H, H)
    a = np.tanh(p.W @ np.concatenate([Mr @ a_l, Ml @ a_r]) + p.b).astype(np.float32)
    A = (p.W_M @ np.concatenate([Ml, Mr], axis=0)).reshape(H * H).astype(np.float32)
    return a, A


def reference(
    params: MVRNNParams,
    words,
    left=None,
    right=None,
    order=None,
    *,
    leaf_test: str = "negative",
) -> tuple[np.ndarray, np.ndarray]:
    """numpy (a [N, H], A [N, H*H]) with the exact visit semantics of an exported Loop: tables start at zeros;
    for each v in ``order`` (repeats and subsets allowed) v is a leaf iff ``left[v] < 0`` (``"negative"``: the
    PyTorch styles and :func:`build_loop`) or ``left[v] == -1`` (``"minus_one"``); an internal node reads rows
    ``left[v]``, ``right[v]`` as they are at that moment (negative indices wrap, out of range raises IndexError,
    like ONNX Gather); rows v are overwritten. ``words`` may be a :class:`Forest`."""
    if isinstance(words, Forest):
        words, left, right, order = words.words, words.left, words.right, words.order
    if leaf_test not in ("negative", "minus_one"):
        raise ValueError(f"leaf_test must be 'negative' or 'minus_one', not {leaf_test!r}")
    n, H = int(np.shape(words)[0]), params.hidden
    a = np.zeros((n, H), dtype=np.float32)
    A = np.zeros((n, H * H), dtype=np.float32)
    for v in np.asarray(order).tolist():
        lv = int(left[v])
        if (lv < 0) if leaf_test == "negative" else (lv == -1):
            a[v], A[v] = leaf_cell(params, int(words[v]))
        else:
            r = int(right[v])
            a[v], A[v] = internal_cell(params, a[lv], A[lv], a[r], A[r])
    return a, A


# ----------------------------------------------------------------------------------------------------------------
# cortex.TreeRec form


def _const(name: str, arr) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def build_treerec(params: MVRNNParams) -> onnx.ModelProto:
    """A ``cortex.TreeRec`` model: inputs ``children`` int64 [N, 2], ``words`` int64 [N]; outputs ``a`` float32
    [N, H], ``A`` float32 [N, H*H]. Leaf body ``word -> (a, A)`` (two Gathers); internal body
    ``(a_l, A_l, a_r, A_r, word) -> (a, A)`` (Reshape to [H, H], MatMul matrix-state × vector-state, Concat, MatMul
    by W, Add, Tanh; Concat of the matrices, MatMul by W_M, Reshape to [H*H])."""
    register_schema()
    H = params.hidden
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    vi = helper.make_tensor_value_info
    n = helper.make_node
    leaf = helper.make_graph(
        [n("Gather", ["E", "word"], ["a"], axis=0), n("Gather", ["M", "word"], ["A"], axis=0)],
        "mvrnn_leaf",
        [vi("word", i64, [])],
        [vi("a", f32, [H]), vi("A", f32, [H * H])],
        initializer=[_const("E", params.embedding), _const("M", params.matrices)],
    )
    internal = helper.make_graph(
        [
            n("Reshape", ["A_l", "HH"], ["Ml"]),
            n("Reshape", ["A_r", "HH"], ["Mr"]),
            n("MatMul", ["Mr", "a_l"], ["Mr_al"]),
            n("MatMul", ["Ml", "a_r"], ["Ml_ar"]),
            n("Concat", ["Mr_al", "Ml_ar"], ["x"], axis=0),
            n("MatMul", ["W", "x"], ["Wx"]),
            n("Add", ["Wx", "b"], ["pre"]),
            n("Tanh", ["pre"], ["a"]),
            n("Concat", ["Ml", "Mr"], ["Mlr"], axis=0),
            n("MatMul", ["W_M", "Mlr"], ["Mnew"]),
            n("Reshape", ["Mnew", "flat"], ["A"]),
        ],
        "mvrnn_internal",
        [vi("a_l", f32, [H]), vi("A_l", f32, [H * H]), vi("a_r", f32, [H]), vi("A_r", f32, [H * H]),
         vi("word", i64, [])],
        [vi("a", f32, [H]), vi("A", f32, [H * H])],
        initializer=[
            _const("W", params.W), _const("b", params.b), _const("W_M", params.W_M),
            _const("HH", np.array([H, H], np.int64)), _const("flat", np.array([H * H], np.int64)),
        ],
    )
    node = make_treerec_node("children", ["words"], ["a", "A"], leaf, internal, name="mvrnn")
    graph = helper.make_graph(
        [node],
        "mvrnn_treerec",
        [vi("children", i64, ["N", 2]), vi("words", i64, ["N"])],
        [vi("a", f32, ["N", H]), vi("A", f32, ["N", H * H])],
    )
    return helper.make_model(
        graph,
        ir_version=IR_VERSION,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, VERSION)],
        producer_name="cortex.onnx_ops.zoo",
    )


# ----------------------------------------------------------------------------------------------------------------
# Hand-built Loop/If form


def build_loop(params: MVRNNParams) -> onnx.ModelProto:
    """A hand-built Loop/If model: inputs ``words``, ``left``, ``right`` int64 [N], ``order`` int64 [L]; outputs
    ``a`` float32 [N, H], ``A`` float32 [N, H*H]. Same visit semantics as :func:`reference` with
    ``leaf_test="negative"``.

    Style: tables from ConstantOfShape(Concat(Shape(words), [D])); Loop(trip count = Size(order), cond = a true
    constant passed through); body: v = Gather(order, i); If(Less(Gather(left, v), 0)); then: Gather rows of E and
    M at Gather(words, v); else: child rows gathered from the carried tables, Reshape [H, H], MatMul, Concat,
    MatMul by W (weight on the left), Add, Tanh; W_M MatMul, Reshape [H*H]; rows written back with
    ScatterND(table, Unsqueeze(v, [0]) [1], row [D])."""
    H = params.hidden
    f32, i64, b8 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
    vi = helper.make_tensor_value_info
    n = helper.make_node
    inits = [
        _const("E", params.embedding), _const("M", params.matrices), _const("W", params.W), _const("b", params.b),
        _const("W_M", params.W_M),
        _const("zero", np.int64(0)), _const("axes0", np.array([0], np.int64)), _const("true", np.bool_(True)),
        _const("dim_a", np.array([H], np.int64)), _const("dim_A", np.array([H * H], np.int64)),
        _const("HH", np.array([H, H], np.int64)),
    ]
    then_g = helper.make_graph(
        [
            n("Gather", ["words", "v"], ["w"], axis=0),
            n("Gather", ["E", "w"], ["leaf_a"], axis=0),
            n("Gather", ["M", "w"], ["leaf_A"], axis=0),
        ],
        "leaf_branch", [], [vi("leaf_a", f32, [H]), vi("leaf_A", f32, [H * H])],
    )
    else_g = helper.make_graph(
        [
            n("Gather", ["right", "v"], ["r"], axis=0),
            n("Gather", ["a_in", "l"], ["a_l"], axis=0),
            n("Gather", ["a_in", "r"], ["a_r"], axis=0),
            n("Gather", ["A_in", "l"], ["A_l"], axis=0),
            n("Gather", ["A_in", "r"], ["A_r"], axis=0),
            n("Reshape", ["A_l", "HH"], ["Ml"]),
            n("Reshape", ["A_r", "HH"], ["Mr"]),
            n("MatMul", ["Mr", "a_l"], ["Mr_al"]),
            n("MatMul", ["Ml", "a_r"], ["Ml_ar"]),
            n("Concat", ["Mr_al", "Ml_ar"], ["x"], axis=0),
            n("MatMul", ["W", "x"], ["Wx"]),
            n("Add", ["Wx", "b"], ["pre"]),
            n("Tanh", ["pre"], ["int_a"]),
            n("Concat", ["Ml", "Mr"], ["Mlr"], axis=0),
            n("MatMul", ["W_M", "Mlr"], ["Mnew"]),
            n("Reshape", ["Mnew", "dim_A"], ["int_A"]),
        ],
        "internal_branch", [], [vi("int_a", f32, [H]), vi("int_A", f32, [H * H])],
    )
    body = helper.make_graph(
        [
            n("Gather", ["order", "i"], ["v"], axis=0),
            n("Gather", ["left", "v"], ["l"], axis=0),
            n("Less", ["l", "zero"], ["is_leaf"]),
            n("If", ["is_leaf"], ["row_a", "row_A"], then_branch=then_g, else_branch=else_g),
            n("Unsqueeze", ["v", "axes0"], ["v1"]),
            n("ScatterND", ["a_in", "v1", "row_a"], ["a_out"]),
            n("ScatterND", ["A_in", "v1", "row_A"], ["A_out"]),
            n("Identity", ["cond_in"], ["cond_out"]),
        ],
        "visit_body",
        [vi("i", i64, []), vi("cond_in", b8, []), vi("a_in", f32, ["N", H]), vi("A_in", f32, ["N", H * H])],
        [vi("cond_out", b8, []), vi("a_out", f32, ["N", H]), vi("A_out", f32, ["N", H * H])],
    )
    zero_f = numpy_helper.from_array(np.zeros(1, np.float32))
    main = [
        n("Shape", ["words"], ["N1"]),
        n("Concat", ["N1", "dim_a"], ["shape_a"], axis=0),
        n("Concat", ["N1", "dim_A"], ["shape_A"], axis=0),
        n("ConstantOfShape", ["shape_a"], ["a0"], value=zero_f),
        n("ConstantOfShape", ["shape_A"], ["A0"], value=zero_f),
        n("Size", ["order"], ["trip_count"]),
        n("Loop", ["trip_count", "true", "a0", "A0"], ["a", "A"], body=body),
    ]
    graph = helper.make_graph(
        main,
        "mvrnn_loop",
        [vi("words", i64, ["N"]), vi("left", i64, ["N"]), vi("right", i64, ["N"]), vi("order", i64, ["L"])],
        [vi("a", f32, ["N", H]), vi("A", f32, ["N", H * H])],
        initializer=inits,
    )
    return helper.make_model(
        graph, ir_version=IR_VERSION, opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="cortex.onnx_ops.zoo",
    )

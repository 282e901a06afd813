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

from cortex.examples._build import (IR_VERSION, OPSET, binary_inputs, binary_visit, branch, const, gather_children,  # noqa: F401
                      loop_model, node, row_infos, treerec_internal, treerec_leaf, treerec_model, uniform, visit_body,
                      visit_head, zero_table)

__all__ = ["MVRNNParams", "build_loop", "build_treerec", "make_params", "reference"]


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
    u = uniform(seed)
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
    """numpy (a [N, H], A [N, H*H]) with the exact visit semantics of an exported Loop
    (:func:`._common.binary_visit`); leaf test ``leaf_test`` (``"negative"``: the PyTorch styles and
    :func:`build_loop`; ``"minus_one"``).
    ``words`` may be a :class:`~cortex.examples.structures.Forest`."""
    H = params.hidden
    return binary_visit(words, left, right, order, leaf_test, [H, H * H], lambda w: leaf_cell(params, int(w)),
                        lambda a_l, A_l, a_r, A_r: internal_cell(params, a_l, A_l, a_r, A_r))


def _internal_nodes(a: str, A: str, flat: str) -> list[onnx.NodeProto]:
    """From child rows a_l, A_l, a_r, A_r: Reshape to [H, H], MatMul matrix-state × vector-state, Concat, MatMul by
    W, Add, Tanh -> ``a``; Concat of the matrices, MatMul by W_M, Reshape(., ``flat``) -> ``A``."""
    return [
        node("Reshape", ["A_l", "HH"], ["Ml"]),
        node("Reshape", ["A_r", "HH"], ["Mr"]),
        node("MatMul", ["Mr", "a_l"], ["Mr_al"]),
        node("MatMul", ["Ml", "a_r"], ["Ml_ar"]),
        node("Concat", ["Mr_al", "Ml_ar"], ["x"], axis=0),
        node("MatMul", ["W", "x"], ["Wx"]),
        node("Add", ["Wx", "b"], ["pre"]),
        node("Tanh", ["pre"], [a]),
        node("Concat", ["Ml", "Mr"], ["Mlr"], axis=0),
        node("MatMul", ["W_M", "Mlr"], ["Mnew"]),
        node("Reshape", ["Mnew", flat], [A]),
    ]


# ----------------------------------------------------------------------------------------------------------------
# cortex.TreeRec form


def build_treerec(params: MVRNNParams) -> onnx.ModelProto:
    """A ``cortex.TreeRec`` model: inputs ``children`` int64 [N, 2], ``words`` int64 [N]; outputs ``a`` float32
    [N, H], ``A`` float32 [N, H*H]. Leaf body ``word -> (a, A)`` (two Gathers); internal body
    ``(a_l, A_l, a_r, A_r, word) -> (a, A)`` (Reshape to [H, H], MatMul matrix-state × vector-state, Concat, MatMul
    by W, Add, Tanh; Concat of the matrices, MatMul by W_M, Reshape to [H*H])."""
    H = params.hidden
    outputs = [("a", H), ("A", H * H)]
    leaf = treerec_leaf(
        "mvrnn", [node("Gather", ["E", "word"], ["a"], axis=0), node("Gather", ["M", "word"], ["A"], axis=0)],
        outputs, [const("E", params.embedding), const("M", params.matrices)],
    )
    internal = treerec_internal(
        "mvrnn",
        _internal_nodes("a", "A", "flat"),
        row_infos(["a_l"], H) + row_infos(["A_l"], H * H) + row_infos(["a_r"], H) + row_infos(["A_r"], H * H),
        outputs,
        [
            const("W", params.W), const("b", params.b), const("W_M", params.W_M),
            const("HH", np.array([H, H], np.int64)), const("flat", np.array([H * H], np.int64)),
        ],
    )
    return treerec_model("mvrnn", leaf, internal, outputs, 2)


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
    n = node
    inits = [
        const("E", params.embedding), const("M", params.matrices), const("W", params.W), const("b", params.b),
        const("W_M", params.W_M),
        const("zero", np.int64(0)), const("axes0", np.array([0], np.int64)), const("true", np.bool_(True)),
        const("dim_a", np.array([H], np.int64)), const("dim_A", np.array([H * H], np.int64)),
        const("HH", np.array([H, H], np.int64)),
    ]
    then_g = branch(
        "leaf_branch",
        [
            n("Gather", ["words", "v"], ["w"], axis=0),
            n("Gather", ["E", "w"], ["leaf_a"], axis=0),
            n("Gather", ["M", "w"], ["leaf_A"], axis=0),
        ],
        [("leaf_a", [H]), ("leaf_A", [H * H])],
    )
    else_g = branch("internal_branch", gather_children(["a", "A"]) + _internal_nodes("int_a", "int_A", "dim_A"),
                    [("int_a", [H]), ("int_A", [H * H])])
    body = visit_body(
        visit_head("left", "Less", "zero", ["row_a", "row_A"], then_g, else_g) + [
            n("Unsqueeze", ["v", "axes0"], ["v1"]),
            n("ScatterND", ["a_in", "v1", "row_a"], ["a_out"]),
            n("ScatterND", ["A_in", "v1", "row_A"], ["A_out"]),
        ],
        [("a", H), ("A", H * H)],
    )
    main = [
        n("Shape", ["words"], ["N1"]),
        n("Concat", ["N1", "dim_a"], ["shape_a"], axis=0),
        n("Concat", ["N1", "dim_A"], ["shape_A"], axis=0),
        zero_table("shape_a", "a0"),
        zero_table("shape_A", "A0"),
        n("Size", ["order"], ["trip_count"]),
        n("Loop", ["trip_count", "true", "a0", "A0"], ["a", "A"], body=body),
    ]
    return loop_model("mvrnn", main, binary_inputs(), [("a", H), ("A", H * H)], inits)

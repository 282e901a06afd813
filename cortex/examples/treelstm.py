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
from onnx import helper

from ._build import (IR_VERSION, OPSET, EmbedAffineParams, binary_inputs, binary_visit, branch, const,  # noqa: F401
                      dense, embed_affine, embed_inits, embedded_leaf, gather_children, loop_model, node, row_infos,
                      sigmoid, treerec_internal, treerec_leaf, treerec_model, uniform, visit_body, visit_head,
                      zero_table)

__all__ = ["TreeLSTMParams", "build_loop", "build_treerec", "level_product_operands", "make_params", "reference",
           "with_mean_head", "with_sentiment_head"]


@dataclass
class TreeLSTMParams(EmbedAffineParams):
    """float32 weights: ``embedding`` [V, D], ``W`` [D, 3H], ``bW`` [3H], ``U`` [2H, 5H], ``bU`` [5H]."""

    leaf_gates = 3


def make_params(hidden: int, embed_dim: int, vocab: int, seed: int = 0) -> TreeLSTMParams:
    """Random weights scaled like a trained model: uniform ±1/sqrt(fan_in) (embedding ±1), so gates are not
    saturated."""
    u = uniform(seed)
    leaf = embedded_leaf(u, vocab, embed_dim, 3 * hidden)
    U, bU = dense(u, 2 * hidden, 5 * hidden)
    return TreeLSTMParams(**leaf, U=U, bU=bU)


def leaf_cell(p: TreeLSTMParams, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(h, c) rows of a leaf with embedded input ``x`` [D] (or a batch [B, D])."""
    i, o, u = np.split(x @ p.W + p.bW, 3, axis=-1)
    c = sigmoid(i) * np.tanh(u)
    return sigmoid(o) * np.tanh(c), c


def internal_cell(p: TreeLSTMParams, h_l, c_l, h_r, c_r) -> tuple[np.ndarray, np.ndarray]:
    """(h, c) rows of an internal node from its children's rows (or batches of rows)."""
    i, f_l, f_r, o, u = np.split(np.concatenate([h_l, h_r], axis=-1) @ p.U + p.bU, 5, axis=-1)
    c = sigmoid(i) * np.tanh(u) + sigmoid(f_l) * c_l + sigmoid(f_r) * c_r
    return sigmoid(o) * np.tanh(c), c


def reference(
    params: TreeLSTMParams,
    words,
    left=None,
    right=None,
    order=None,
    *,
    leaf_test: str = "negative",
) -> tuple[np.ndarray, np.ndarray]:
    """numpy (h, c) [N, H] with the exact visit semantics of an exported Loop (:func:`._common.binary_visit`); leaf
    test ``leaf_test`` (``"negative"``: the PyTorch styles; ``"minus_one"``: :func:`build_loop`).
    ``words`` may be a :class:`~cortex.examples.structures.Forest`."""
    H = params.hidden
    return binary_visit(words, left, right, order, leaf_test, [H, H],
                        lambda w: leaf_cell(params, params.embedding[w]),
                        lambda h_l, c_l, h_r, c_r: internal_cell(params, h_l, c_l, h_r, c_r))


def level_product_operands(hidden: int, trees: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(A, U): the rows ``[h_l; h_r]`` [internal nodes, 2H] that the internal nodes of ``trees`` SST-shaped trees
    multiply by ``U`` [2H, 5H] (:func:`reference` with :func:`make_params` weights, embedding dim 300): realistic
    operands to measure a product's precision on."""
    from .structures import batch, sst_like_trees

    params = make_params(hidden, 300, 2000, seed=seed)
    forest = batch(sst_like_trees(trees, np.random.default_rng(seed), 2000))
    h, _ = reference(params, forest)
    internal = forest.order[forest.left[forest.order] >= 0]
    a = np.concatenate([h[forest.left[internal]], h[forest.right[internal]]], axis=1)
    return np.ascontiguousarray(a, dtype=np.float32), params.U


# ----------------------------------------------------------------------------------------------------------------
# cortex.TreeRec form


def build_treerec(params: TreeLSTMParams) -> onnx.ModelProto:
    """A ``cortex.TreeRec`` model: inputs ``children`` int64 [N, 2], ``words`` int64 [N]; outputs ``h``, ``c``
    float32 [N, H]. Weights are initializers of the bodies."""
    H = params.hidden
    split3, split5 = const("split3", [H] * 3), const("split5", [H] * 5)

    def gates_to_hc(nodes, i, o, u, c_extra=()):
        nodes += [
            node("Sigmoid", [i], ["si"]),
            node("Tanh", [u], ["tu"]),
            node("Mul", ["si", "tu"], ["c0" if c_extra else "c"]),
        ]
        if c_extra:
            acc = "c0"
            for j, (f, cc) in enumerate(c_extra):
                nodes += [
                    node("Sigmoid", [f], [f"s{f}"]),
                    node("Mul", [f"s{f}", cc], [f"fc{j}"]),
                    node("Add", [acc, f"fc{j}"], ["c" if j == len(c_extra) - 1 else f"acc{j}"]),
                ]
                acc = f"acc{j}"
        nodes += [
            node("Sigmoid", [o], ["so"]),
            node("Tanh", ["c"], ["tc"]),
            node("Mul", ["so", "tc"], ["h"]),
        ]

    leaf_nodes = embed_affine("x", "g") + [node("Split", ["g", "split3"], ["i", "o", "u"], axis=0)]
    gates_to_hc(leaf_nodes, "i", "o", "u")
    leaf = treerec_leaf("treelstm", leaf_nodes, [("h", H), ("c", H)], embed_inits(params) + [split3])
    int_nodes = [
        node("Concat", ["h_l", "h_r"], ["hlr"], axis=0),
        node("MatMul", ["hlr", "U"], ["hU"]),
        node("Add", ["hU", "bU"], ["g"]),
        node("Split", ["g", "split5"], ["i", "f_l", "f_r", "o", "u"], axis=0),
    ]
    gates_to_hc(int_nodes, "i", "o", "u", c_extra=[("f_l", "c_l"), ("f_r", "c_r")])
    internal = treerec_internal("treelstm", int_nodes, row_infos(["h_l", "c_l", "h_r", "c_r"], H),
                                [("h", H), ("c", H)], [const("U", params.U), const("bU", params.bU), split5])
    return treerec_model("treelstm", leaf, internal, [("h", H), ("c", H)], 2)


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
    n = node
    inits = embed_inits(params) + [
        const("U", params.U), const("bU", params.bU),
        const("zero_i", np.int64(0)), const("minus_one", np.int64(-1)), const("axis0", np.array([0], np.int64)),
        const("H_vec", np.array([H], np.int64)), const("start0", np.array([0], np.int64)),
        const("end1", np.array([1], np.int64)),
        const("split3", np.array([H] * 3, np.int64)), const("split5", np.array([H] * 5, np.int64)),
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
    then_g = branch("leaf_branch", leaf_nodes, [("leaf_h", [H]), ("leaf_c", [H])])
    # else: internal
    int_nodes = gather_children(["h", "c"]) + [
        n("Concat", ["h_l", "h_r"], ["hlr"], axis=0),
        n("Unsqueeze", ["hlr", "axis0"], ["hlr2"]),
        n("Gemm", ["hlr2", "U", "bU"], ["int_g2"]),
        n("Squeeze", ["int_g2", "axis0"], ["int_g"]),
        n("Split", ["int_g", "split5"], ["int_i", "int_fl", "int_fr", "int_o", "int_u"], axis=0),
    ] + cell("int", "int_i", "int_o", "int_u", forgets=[("int_fl", "c_l"), ("int_fr", "c_r")])
    else_g = branch("internal_branch", int_nodes, [("int_h", [H]), ("int_c", [H])])

    body_nodes = visit_head("left", "Equal", "minus_one", ["row_h", "row_c"], then_g, else_g) + [
        n("Unsqueeze", ["v", "axis0"], ["v1"]),
        n("Unsqueeze", ["v1", "axis0"], ["v11"]),
        n("Unsqueeze", ["row_h", "axis0"], ["row_h2"]),
        n("Unsqueeze", ["row_c", "axis0"], ["row_c2"]),
        n("ScatterND", ["h_in", "v11", "row_h2"], ["h_out"]),
        n("ScatterND", ["c_in", "v11", "row_c2"], ["c_out"]),
    ]
    body = visit_body(body_nodes, [("h", H), ("c", H)])
    main = [
        n("Shape", ["words"], ["words_shape"]),
        n("Slice", ["words_shape", "start0", "end1"], ["N1"]),
        n("Concat", ["N1", "H_vec"], ["table_shape"], axis=0),
        zero_table("table_shape", "h0"),
        zero_table("table_shape", "c0"),
        n("Shape", ["order"], ["order_shape"]),
        n("Gather", ["order_shape", "zero_i"], ["trip_count"], axis=0),
        n("Loop", ["trip_count", "", "h0", "c0"], ["h", "c"], body=body),
    ]
    return loop_model("treelstm", main, binary_inputs(), [("h", H), ("c", H)], inits)


def with_mean_head(model: onnx.ModelProto, hidden: int, table: str = "h") -> onnx.ModelProto:
    """`model` with one more output, ``mean`` float32 [H]: the mean of `table` over all its rows (over every node
    of the request's tree: a sentence vector from all its phrases)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    model.graph.node.append(helper.make_node("ReduceMean", [table], ["mean"], axes=[0], keepdims=0))
    model.graph.output.append(helper.make_tensor_value_info("mean", onnx.TensorProto.FLOAT, [hidden]))
    return model


def with_sentiment_head(model: onnx.ModelProto, hidden: int, classes: int = 5, float64: bool = False,
                        seed: int = 0) -> onnx.ModelProto:
    """`model` with one more output, ``log_probs`` [N, classes]: a log-softmax classifier over every node's h (Tai et
    al.'s fine-grained SST sentiment per phrase), in float32, or with `float64` its logits cast to float64 first."""
    rng = np.random.default_rng(seed)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    model.graph.initializer.extend([
        onnx.numpy_helper.from_array(rng.uniform(-0.1, 0.1, (hidden, classes)).astype(np.float32), "sentiment_w"),
        onnx.numpy_helper.from_array(rng.uniform(-0.1, 0.1, classes).astype(np.float32), "sentiment_b")])
    logits = "sentiment_logits64" if float64 else "sentiment_logits"
    model.graph.node.extend([helper.make_node("MatMul", ["h", "sentiment_w"], ["sentiment_xw"]),
                             helper.make_node("Add", ["sentiment_xw", "sentiment_b"], ["sentiment_logits"])])
    if float64:
        model.graph.node.append(helper.make_node("Cast", ["sentiment_logits"], [logits], to=onnx.TensorProto.DOUBLE))
    model.graph.node.append(helper.make_node("LogSoftmax", [logits], ["log_probs"], axis=-1))
    elem = onnx.TensorProto.DOUBLE if float64 else onnx.TensorProto.FLOAT
    model.graph.output.append(helper.make_tensor_value_info("log_probs", elem, ["N", classes]))
    return model

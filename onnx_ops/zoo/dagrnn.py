"""DAG-RNN over an image grid (Shuai et al. 2016, one sweep direction: from the top-left corner).

A grid of R×C cells, node id r*C + c (see :mod:`onnx_ops.grids`); each cell has a feature x [D] and depends on its
up (r-1, c) and left (r, c-1) neighbours; a missing neighbour contributes a zero state:

    h = tanh(x @ W + h_up @ U_up + h_left @ U_left + b)

A DAG: a cell is the child of two cells. Matrices are stored as ONNX MatMul expects (``x @ W``): ``W`` [D, H],
``U_up`` [H, H], ``U_left`` [H, H], ``b`` [H] (the math W, U are their transposes).

Three forms: :func:`reference` (numpy, the Loop visit semantics), :func:`build_treerec` (``cortex.TreeRec`` with
``children`` = [up, left]; a cell without neighbours is a TreeRec leaf, whose body ``tanh(x @ W + b)`` is the same
formula with zero neighbours) and :func:`build_loop` (a hand-built ONNX Loop, no If). PyTorch versions:
:mod:`onnx_ops.zoo.torch_models_b`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..grids import Grid
from cortex.examples._build import (F32, I64, IR_VERSION, OPSET, const, loop_model, node, row_infos,  # noqa: F401
                      treerec_internal, treerec_leaf, treerec_model, uniform, vi, visit, visit_body, zero_table)

__all__ = ["DAGRNNParams", "build_loop", "build_treerec", "make_params", "reference"]


@dataclass
class DAGRNNParams:
    """float32 weights: ``W`` [D, H], ``U_up`` [H, H], ``U_left`` [H, H], ``b`` [H]."""

    W: np.ndarray
    U_up: np.ndarray
    U_left: np.ndarray
    b: np.ndarray

    @property
    def hidden(self) -> int:
        return int(self.b.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.W.shape[0])


def make_params(hidden: int, feature_dim: int, seed: int = 0) -> DAGRNNParams:
    """Random weights, uniform ±1/sqrt(fan_in) (fan_in = D + 2H for all of them)."""
    u = uniform(seed)
    s = 1 / np.sqrt(feature_dim + 2 * hidden)
    return DAGRNNParams(
        W=u((feature_dim, hidden), s), U_up=u((hidden, hidden), s), U_left=u((hidden, hidden), s), b=u((hidden,), s)
    )


def cell(p: DAGRNNParams, x, h_up, h_left) -> np.ndarray:
    """h [H] of one cell (or a batch of rows)."""
    return np.tanh(x @ p.W + h_up @ p.U_up + h_left @ p.U_left + p.b).astype(np.float32)


def reference(
    params: DAGRNNParams, features, up=None, left=None, order=None, *, missing: str = "negative"
) -> np.ndarray:
    """numpy h [N, H] with the exact visit semantics of an exported Loop: the table starts at zeros; for each v in
    ``order`` (repeats and subsets allowed) the neighbour rows ``up[v]``, ``left[v]`` are read as they are at that
    moment and row v is overwritten. A missing neighbour:

    - ``missing="negative"`` (TreeRec, the ``where_mask`` PyTorch style): any negative index reads a zero row;
    - ``missing="zero_row"`` (:func:`build_loop`, the ``zero_row`` PyTorch style): the table has an extra row N
      that stays zero; indices wrap over N+1 rows like ONNX Gather, so -1 reads the zero row (and -2 row N-1).

    The two agree whenever every index is in [-1, N). Out-of-range indices raise IndexError, and so does an
    ``order`` entry outside [0, N) (unspecified across forms). ``features`` may be a
    :class:`~onnx_ops.grids.Grid`."""
    if isinstance(features, Grid):
        features, up, left, order = features.features, features.up, features.left, features.order
    if missing not in ("negative", "zero_row"):
        raise ValueError(f"missing must be 'negative' or 'zero_row', not {missing!r}")
    features = np.asarray(features, dtype=np.float32)
    n, H = int(features.shape[0]), params.hidden
    zero = np.zeros(H, dtype=np.float32)
    ext = missing == "zero_row"

    def read(h: np.ndarray, j: int) -> np.ndarray:
        if ext:
            if not -(n + 1) <= j < n + 1:
                raise IndexError(f"index {j} out of range for {n + 1} rows")
            return h[j]
        if j >= n:
            raise IndexError(f"index {j} out of range for {n} rows")
        return zero if j < 0 else h[j]

    def step(v: int, tables) -> np.ndarray:
        if not 0 <= v < n:  # forms differ on negative entries (the zero-row table wraps over N+1 rows)
            raise IndexError(f"order entry {v} out of range [0, {n})")
        h, = tables
        return cell(params, features[v], read(h, int(up[v])), read(h, int(left[v])))

    h, = visit(n + 1, [H], order, step)  # row n: the zero row (never written by a valid order)
    return h[:n].copy()


# ----------------------------------------------------------------------------------------------------------------
# cortex.TreeRec form


def build_treerec(params: DAGRNNParams) -> onnx.ModelProto:
    """A ``cortex.TreeRec`` model: inputs ``children`` int64 [N, 2] (= [up, left], -1 = missing), ``features``
    float32 [N, D]; output ``h`` float32 [N, H]. Leaf body ``x -> tanh(x @ W + b)``; internal body
    ``(h_up, h_left, x) -> tanh(x @ W + h_up @ U_up + h_left @ U_left + b)`` (a missing neighbour arrives as
    zeros)."""
    H, D = params.hidden, params.feature_dim
    n = node
    leaf = treerec_leaf(
        "dagrnn", [n("MatMul", ["x", "W"], ["xW"]), n("Add", ["xW", "b"], ["pre"]), n("Tanh", ["pre"], ["h"])],
        [("h", H)], [const("W", params.W), const("b", params.b)], inputs=[vi("x", F32, [D])],
    )
    internal = treerec_internal(
        "dagrnn",
        [
            n("MatMul", ["x", "W"], ["xW"]),
            n("MatMul", ["h_up", "U_up"], ["uU"]),
            n("MatMul", ["h_left", "U_left"], ["lU"]),
            n("Add", ["xW", "uU"], ["s1"]),
            n("Add", ["s1", "lU"], ["s2"]),
            n("Add", ["s2", "b"], ["pre"]),
            n("Tanh", ["pre"], ["h"]),
        ],
        row_infos(["h_up", "h_left"], H) + [vi("x", F32, [D])], [("h", H)],
        [const("W", params.W), const("U_up", params.U_up), const("U_left", params.U_left), const("b", params.b)],
        word=False,
    )
    return treerec_model("dagrnn", leaf, internal, [("h", H)], 2, features=vi("features", F32, ["N", D]))


# ----------------------------------------------------------------------------------------------------------------
# Hand-built Loop form


def build_loop(params: DAGRNNParams) -> onnx.ModelProto:
    """A hand-built Loop model (no If): inputs ``features`` float32 [N, D], ``up``, ``left`` int64 [N], ``order``
    int64 [L]; output ``h`` float32 [N, H]. Same visit semantics as :func:`reference` with
    ``missing="zero_row"``.

    Style: an extra zero row: the carried table is [N+1, H] (ConstantOfShape(Concat(Shape(features)[0:1] + 1,
    [H]))), so a missing neighbour (-1) reads row N, which no valid visit writes; the output is Slice(table, 0, N).
    Loop(trip count = Gather(Shape(order), 0), no condition); body: v = Gather(order, i); one fused matmul
    Concat(x, h_up, h_left) [D+2H] @ concat(W; U_up; U_left) [D+2H, H], Add b, Tanh; the row is written with
    ScatterElements(table, Expand(Reshape(v, [1, 1]), [1, H]), Unsqueeze(row, [0]), axis=0)."""
    H, D = params.hidden, params.feature_dim
    n = node
    inits = [
        const("Wcat", np.concatenate([params.W, params.U_up, params.U_left], axis=0)), const("b", params.b),
        const("zero", np.int64(0)), const("axes0", np.array([0], np.int64)),
        const("one1", np.array([1], np.int64)), const("start0", np.array([0], np.int64)),
        const("dim_h", np.array([H], np.int64)), const("shape11", np.array([1, 1], np.int64)),
        const("shape1H", np.array([1, H], np.int64)),
    ]
    body = visit_body(
        [
            n("Gather", ["order", "i"], ["v"], axis=0),
            n("Gather", ["features", "v"], ["x"], axis=0),
            n("Gather", ["up", "v"], ["u"], axis=0),
            n("Gather", ["left", "v"], ["l"], axis=0),
            n("Gather", ["h_in", "u"], ["h_up"], axis=0),
            n("Gather", ["h_in", "l"], ["h_left"], axis=0),
            n("Concat", ["x", "h_up", "h_left"], ["xin"], axis=0),
            n("MatMul", ["xin", "Wcat"], ["xW"]),
            n("Add", ["xW", "b"], ["pre"]),
            n("Tanh", ["pre"], ["row"]),
            n("Reshape", ["v", "shape11"], ["v11"]),
            n("Expand", ["v11", "shape1H"], ["idx"]),
            n("Unsqueeze", ["row", "axes0"], ["row2"]),
            n("ScatterElements", ["h_in", "idx", "row2"], ["h_out"], axis=0),
        ],
        [("h", H)], rows="N1",
    )
    main = [
        n("Shape", ["features"], ["fshape"]),
        n("Slice", ["fshape", "start0", "one1"], ["N"]),
        n("Add", ["N", "one1"], ["N_plus_1"]),
        n("Concat", ["N_plus_1", "dim_h"], ["table_shape"], axis=0),
        zero_table("table_shape", "h0"),
        n("Shape", ["order"], ["oshape"]),
        n("Gather", ["oshape", "zero"], ["trip_count"], axis=0),
        n("Loop", ["trip_count", "", "h0"], ["h_ext"], body=body),
        n("Slice", ["h_ext", "start0", "N", "axes0"], ["h"]),
    ]
    inputs = [vi("features", F32, ["N", D]), vi("up", I64, ["N"]), vi("left", I64, ["N"]), vi("order", I64, ["L"])]
    return loop_model("dagrnn", main, inputs, [("h", H)], inits)

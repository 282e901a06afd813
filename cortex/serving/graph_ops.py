"""What each ONNX op outside the recursions does to the merge's abstract values (graph.py): rows stay rows where
the op works row by row (elementwise math with constants that do not vary along the rows, products with constant
weights, reductions and softmax over other axes, reshapes that keep the rows); shapes and counts become rows again
through ConstantOfShape and Expand; anything that mixes rows is opaque, with the reason. An op not handled here is
opaque (graph.py says so); constants fold in graph.py."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .values import COUNT_OPS, Const, Count, Dims, Flipped, Opaque, Padded, Rows, UnitDim, UnitDimPlus

ELEMENTWISE = {
    "Abs", "Acos", "Acosh", "Add", "And", "Asin", "Asinh", "Atan", "Atanh", "BitwiseAnd", "BitwiseNot", "BitwiseOr",
    "BitwiseXor", "Ceil", "Celu", "Clip", "Cos", "Cosh", "Div", "Dropout", "Elu", "Equal", "Erf", "Exp", "Floor",
    "Gelu", "Greater", "GreaterOrEqual", "HardSigmoid", "HardSwish", "Identity", "IsInf", "IsNaN", "LeakyRelu",
    "Less", "LessOrEqual", "Log", "Max", "Mean", "Min", "Mish", "Mod", "Mul", "Neg", "Not", "Or", "PRelu", "Pow",
    "Reciprocal", "Relu", "Round", "Selu", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Softplus", "Softsign", "Sqrt",
    "Sub", "Sum", "Tan", "Tanh", "ThresholdedRelu", "Where", "Xor",
}
# Elementwise ops whose value at an element never depends on where the element lies in its tensor: exact or
# correctly rounded (IEEE +, -, *, /, sqrt), comparisons, choices, integer and bit ops. The others (exp, tanh,
# sigmoid, erf, log, sin, softplus, ...) ONNX Runtime computes on a vector path and a scalar path that can round
# differently, and which path an element takes depends on its place in the tensor (`python tools/ort_placement.py`:
# float32 Log, Sin, Cos, Softplus, Elu, Selu, Atan, Mish; float64 Tanh, Log, Sin, Cos, Softmax, LogSoftmax; others
# on other data): merged, a request's rows lie elsewhere in the forest, so such a value is computed per request
# (tail.py). A float32 Softmax along the last axis is per row by construction (OpSemantics._softmax). Products with constant weights, LayerNormalization and the other reductions kept their bits there.
EXACT_ELEMENTWISE = {
    "Abs", "Add", "And", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor", "Ceil", "Clip", "Div", "Dropout",
    "Equal", "Floor", "Greater", "GreaterOrEqual", "Identity", "IsInf", "IsNaN", "LeakyRelu", "Less", "LessOrEqual",
    "Max", "Mean", "Min", "Mod", "Mul", "Neg", "Not", "Or", "PRelu", "Reciprocal", "Relu", "Round", "Shrink", "Sign",
    "Sqrt", "Sub", "Sum", "ThresholdedRelu", "Where", "Xor",
}
REDUCTIONS = {"ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
              "ReduceProd", "ReduceSum", "ReduceSumSquare"}
# Reductions whose CPU kernel sums a contiguous run with aligned vector loads (MLAS): the result for a row depends on
# its address modulo the vector width (tools/ort_placement.py: ReduceSum and ReduceMean along the last axis, float32
# and float64; the others, and sums over an outer axis, did not). Merged, a request's rows start anywhere.
_ALIGNED_SUMS = {"ReduceSum", "ReduceMean"}
_WIDENING = {onnx.TensorProto.INT32: {onnx.TensorProto.INT32, onnx.TensorProto.INT64},
             onnx.TensorProto.INT64: {onnx.TensorProto.INT64}}


class OpSemantics:
    """The op handlers of GraphAnalysis (`_op_<OpType>`, elementwise ops, reductions)."""

    def _elementwise(self, node, args):
        rows = [a for a in args if isinstance(a, Rows)]
        where = f"node '{node.name or node.op_type}' ({node.op_type})"
        if any(isinstance(a, (Dims, Count)) for a in args if a is not None):
            plus = _count_plus(node.op_type, args)
            if plus is not None:
                return plus
            count = _count_step(node.op_type, args)
            if count is not None:
                return count
            return Opaque(f"{where} computes with a count (e.g. N + 1 rows): merged, the count would be the forest's")
        if not rows:
            return None
        if node.op_type not in EXACT_ELEMENTWISE:
            return _placed(where)
        units = {self.units.find(r.unit) for r in rows}
        if len(units) > 1:
            return Opaque(f"{where} combines rows of different sizes")
        ranks = {1 + len(r.inner) for r in rows if r.inner is not None}
        rank = max(ranks) if ranks else None
        for a in args:
            if isinstance(a, Const) and a.value.ndim:
                if rank is None or a.value.ndim > rank or (a.value.ndim == rank and a.value.shape[0] != 1):
                    return Opaque(f"{where} combines the rows with a constant that varies along them")
        inner = None
        if all(r.inner is not None for r in rows) and len({r.inner for r in rows}) == 1:
            inner = rows[0].inner
        carries = rows[0].carries if node.op_type == "Identity" else None
        return Rows(rows[0].unit, inner, carries)

    def _reduce(self, node, args, attrs):
        """A reduction of rows: inside each row (rows again), or over the rows (mixes the requests' trees)."""
        x = args[0]
        if not isinstance(x, Rows):
            return None
        axes = attrs.get("axes")
        if axes is None and len(args) > 1 and isinstance(args[1], Const):
            axes = [int(v) for v in args[1].value.reshape(-1)]
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):
                return Rows(x.unit, x.inner)
            return Opaque(f"node '{node.name or node.op_type}' ({node.op_type}) reduces over all rows: merged, "
                          "it would mix the requests' trees")
        rank = None if x.inner is None else 1 + len(x.inner)
        if rank is None and any(a < 0 for a in axes):
            return None
        axes = [a % rank if rank else a for a in axes]
        if 0 in axes:
            return Opaque(f"node '{node.name or node.op_type}' ({node.op_type}) reduces over the rows (axis 0): "
                          "merged, it would mix the requests' trees")
        if node.op_type in _ALIGNED_SUMS and (rank is None or (rank - 1 in axes and x.inner[-1] != 1)):
            return Opaque(f"node '{node.name or node.op_type}' ({node.op_type}) sums along a row's contiguous "
                          "elements, which ONNX Runtime vectorizes from where the row lies in memory: merged, a "
                          "request's rows start elsewhere in the forest, and the sum may round differently")
        keep = attrs.get("keepdims", 1)
        inner = None if x.inner is None else tuple(
            (1 if keep else None) if k + 1 in axes else d for k, d in enumerate(x.inner))
        inner = None if inner is None else tuple(d for d in inner if d is not None)
        return Rows(x.unit, inner)

    # shapes and counts
    def _op_Shape(self, args, attrs):
        x = args[0]
        if isinstance(x, Rows):
            if x.inner is None:
                return None
            items = (UnitDim(x.unit),) + tuple(x.inner)
            start, end = attrs.get("start", 0), attrs.get("end", None)
            return Dims(items[slice(start, end)])
        return None

    def _op_Gather(self, args, attrs):
        data, indices = args[0], args[1]
        axis = attrs.get("axis", 0)
        if isinstance(data, Dims) and isinstance(indices, Const):
            picked = [data.items[int(i)] for i in indices.value.reshape(-1)]
            return Dims(tuple(picked), scalar=indices.value.ndim == 0)
        if isinstance(data, Const) and isinstance(indices, Rows) and axis in (0, -data.value.ndim) \
                and indices.inner is not None:  # an embedding lookup of each row's token
            return Rows(indices.unit, tuple(indices.inner) + tuple(data.value.shape[1:]))
        if isinstance(data, Rows):
            rank = None if data.inner is None else 1 + len(data.inner)
            if rank is not None:
                axis %= rank
            if axis == 0 and isinstance(indices, Rows) and indices.carries:  # rows by node id: the roots' states
                if indices.inner != ():
                    return None
                self._use(indices, "node ids", "a Gather of rows by node id", data.unit)
                return Rows(indices.unit, data.inner)
            if axis == 0:
                return Opaque("a row picked at a fixed index (row k of a forest belongs to another request)")
            if isinstance(indices, Const) and data.inner is not None:
                inner = list(data.inner)
                inner[axis - 1:axis] = list(indices.value.shape)
                return Rows(data.unit, tuple(inner))
        return None

    def _op_GatherND(self, args, attrs):
        """GatherND of rows by node ids [k, 1] (dynamo's h[roots]): the Gather of rows above, one id per row."""
        data, indices = args[0], args[1]
        if attrs.get("batch_dims", 0) == 0 and isinstance(data, Rows) and data.inner is not None and \
                isinstance(indices, Rows) and indices.carries and indices.inner == (1,):
            self._use(indices, "node ids", "a GatherND of rows by node id", data.unit)
            return Rows(indices.unit, data.inner)
        return None

    def _op_Unsqueeze(self, args, attrs):
        return self._squeeze(args, attrs, add=True)

    def _op_Squeeze(self, args, attrs):
        return self._squeeze(args, attrs, add=False)

    def _squeeze(self, args, attrs, add):
        x = args[0]
        axes = attrs.get("axes")
        if axes is None and len(args) > 1 and isinstance(args[1], Const):
            axes = [int(v) for v in args[1].value.reshape(-1)]
        if isinstance(x, Count):
            return x  # one number, whatever its shape
        if isinstance(x, Dims):
            if add and x.scalar and axes in ([0], [-1]):
                return Dims(x.items)
            if not add and not x.scalar and len(x.items) == 1 and axes in (None, [0], [-1]):
                return Dims(x.items, scalar=True)
            return None
        if isinstance(x, Rows) and axes is not None and x.inner is not None:
            rank = 1 + len(x.inner) + (len(axes) if add else 0)
            axes = sorted(a % rank for a in axes)
            if 0 in axes:
                return Opaque("a reshape that moves the rows off the first axis")
            shape = list(x.inner)
            if add:
                for a in axes:
                    shape.insert(a - 1, 1)
            else:
                shape = [d for k, d in enumerate(shape) if k + 1 not in axes]
            return Rows(x.unit, tuple(shape), x.carries)
        return None

    def _op_Concat(self, args, attrs):
        axis = attrs.get("axis", 0)
        if all(isinstance(a, (Dims, Const)) for a in args):
            items = []
            for a in args:
                if isinstance(a, Dims) and not a.scalar:
                    items += a.items
                elif isinstance(a, Const) and a.value.ndim == 1:
                    items += [int(v) for v in a.value]
                else:
                    return None
            return Dims(tuple(items))
        rows = [a for a in args if isinstance(a, Rows)]
        if len(rows) == len(args) and len({self.units.find(r.unit) for r in rows}) == 1 \
                and all(r.inner is not None for r in rows):
            rank = 1 + len(rows[0].inner)
            if axis % rank == 0:
                return Opaque("a concatenation along the rows")
            inner = list(rows[0].inner)
            inner[axis % rank - 1] = sum(r.inner[axis % rank - 1] for r in rows)
            return Rows(rows[0].unit, tuple(inner))
        return None

    def _op_Slice(self, args, attrs):
        x = args[0]
        if isinstance(x, Padded):
            return _unpadded(self, x, args)
        consts = [a.value.reshape(-1).tolist() if isinstance(a, Const) else None for a in args[1:]]
        if any(c is None for c, a in zip(consts, args[1:]) if a is not None):
            return None
        starts, ends = consts[0], consts[1]
        axes = consts[2] if len(consts) > 2 and consts[2] is not None else list(range(len(starts)))
        steps = consts[3] if len(consts) > 3 and consts[3] is not None else [1] * len(starts)
        if isinstance(x, Dims) and axes in ([0], [-1]):
            return Dims(x.items[slice(starts[0], ends[0], steps[0])])
        if isinstance(x, Rows) and x.inner is not None:
            rank = 1 + len(x.inner)
            if [a % rank for a in axes] == [0] and steps == [-1] and starts[0] in (-1, 2 ** 63 - 1) and \
                    ends[0] <= -2 ** 62 and x.carries:  # every row, last first: torch.flip of a model input
                return Flipped(x.unit, x.inner, x.carries)
            if 0 in [a % rank for a in axes]:
                return Opaque("a slice along the rows (e.g. h[:N] of a table with extra rows): merged, the bounds "
                              "would be the forest's")
            inner = list(x.inner)
            for a, s, e, t in zip(axes, starts, ends, steps):
                inner[a % rank - 1] = len(range(*slice(s, e, t).indices(inner[a % rank - 1])))
            return Rows(x.unit, tuple(inner))
        return None

    def _op_ConstantOfShape(self, args, attrs):
        shape = args[0]
        padded = _padded(self, shape, attrs.get("value"))
        if padded is not None:
            return padded
        if isinstance(shape, Dims) and not shape.scalar and shape.items and isinstance(shape.items[0], UnitDim) \
                and all(isinstance(d, int) for d in shape.items[1:]):
            return Rows(shape.items[0].unit, tuple(shape.items[1:]))
        return None

    def _op_Expand(self, args, attrs):
        value, shape = args
        if isinstance(value, Const) and value.value.size == 1:
            padded = _padded(self, shape, value.value)
            if padded is not None:
                return padded
        if isinstance(value, Const) and isinstance(shape, Dims) and not shape.scalar and shape.items \
                and isinstance(shape.items[0], UnitDim) and all(isinstance(d, int) for d in shape.items[1:]):
            rank = len(shape.items)
            if value.value.ndim > rank or (value.value.ndim == rank and value.value.shape[0] != 1):
                return None
            inner = np.broadcast_shapes(value.value.shape, (1,) + tuple(shape.items[1:]))[1:] \
                if value.value.ndim else tuple(shape.items[1:])
            return Rows(shape.items[0].unit, tuple(int(d) for d in inner))
        return None

    def _op_Cast(self, args, attrs):
        x = args[0]
        to = attrs.get("to")
        if isinstance(x, Dims) and to in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            return x
        count = as_count(x)
        if count is not None and to in _COUNT_TYPES:
            return Count(count.unit, count.steps + (("Cast", np.dtype(_COUNT_TYPES[to]), False),))
        if isinstance(x, Rows):
            carries = x.carries if x.carries and to in _WIDENING.get(self._input_type(x.carries), ()) else None
            return Rows(x.unit, x.inner, carries)
        return None

    def _op_Reshape(self, args, attrs):
        x, shape = args
        if isinstance(x, Count) and isinstance(shape, Const) and int(np.prod(shape.value)) in (1, -1):
            return x  # one number, whatever its shape
        if isinstance(x, Dims) and len(x.items) == 1 and isinstance(shape, Const) and \
                shape.value.reshape(-1).tolist() in ([-1], [1]):
            return Dims(x.items)  # a count as a one-item shape
        if not isinstance(x, Rows) or x.inner is None:
            return None
        if isinstance(shape, Dims) and shape.items and isinstance(shape.items[0], UnitDim) \
                and self.units.find(shape.items[0].unit) == self.units.find(x.unit):
            rest = shape.items[1:]
        elif isinstance(shape, Const) and shape.value.ndim == 1 and shape.value.size and \
                int(shape.value[0]) in (0, -1) and not attrs.get("allowzero", 0):
            rest = [int(d) for d in shape.value[1:]]
        else:
            return None
        if not all(isinstance(d, int) for d in rest) or -1 in rest or 0 in rest:
            return None
        if int(np.prod(rest, dtype=np.int64)) != int(np.prod(x.inner, dtype=np.int64)):
            return None
        return Rows(x.unit, tuple(rest), x.carries)

    def _op_Flatten(self, args, attrs):
        x = args[0]
        axis = attrs.get("axis", 1)
        if isinstance(x, Rows) and x.inner is not None and axis % (1 + len(x.inner)) == 1:
            return Rows(x.unit, (int(np.prod(x.inner, dtype=np.int64)),))
        return None

    def _op_Transpose(self, args, attrs):
        x = args[0]
        if isinstance(x, Rows) and x.inner is not None:
            perm = attrs.get("perm") or list(range(len(x.inner), -1, -1))
            if perm[0] != 0:
                return Opaque("a transpose that moves the rows off the first axis")
            return Rows(x.unit, tuple(x.inner[p - 1] for p in perm[1:]))
        return None

    def _op_MatMul(self, args, attrs):
        a, b = args
        if isinstance(a, Rows) and isinstance(b, Const) and a.inner is not None and len(a.inner) >= 1 \
                and b.value.ndim == 2:
            return Rows(a.unit, a.inner[:-1] + (b.value.shape[1],))
        return None

    def _op_Gemm(self, args, attrs):
        a, b = args[0], args[1]
        c = args[2] if len(args) > 2 else None
        if isinstance(a, Rows) and not attrs.get("transA", 0) and isinstance(b, Const) and \
                (c is None or isinstance(c, Const)) and a.inner is not None and len(a.inner) == 1:
            if c is not None and c.value.ndim == 2 and c.value.shape[0] != 1:
                return Opaque("a Gemm whose bias varies along the rows")
            n = b.value.shape[0 if attrs.get("transB", 0) else 1]
            return Rows(a.unit, (int(n),))
        return None

    def _axis_op(self, args, attrs, default):
        x = args[0]
        if isinstance(x, Rows) and x.inner is not None:
            axis = attrs.get("axis", default)
            if axis % (1 + len(x.inner)) == 0:
                return Opaque("a normalization over the rows: merged, it would mix the requests' trees")
            return Rows(x.unit, x.inner)
        return None

    def _op_Softmax(self, args, attrs):
        return self._softmax(args, attrs, "a Softmax")

    def _op_LogSoftmax(self, args, attrs):
        return self._softmax(args, attrs, "a LogSoftmax")

    def _softmax(self, args, attrs, what):
        """Per-node rows where ONNX Runtime computes each row alike wherever it lies: float32 along the last axis
        (MLAS's softmax runs one routine from each row's own first element, unaligned loads, the row length fixed;
        tools/ort_placement.py finds no placement that differs). float64 (another path) varies with the row's
        place, and so may another element type or axis: per request (EXACT_ELEMENTWISE)."""
        default = -1 if self.opset >= 13 else 1
        x = self._axis_op(args, attrs, default)
        if not isinstance(x, Rows):
            return x
        rank = 1 + len(x.inner)
        if attrs.get("axis", default) % rank == rank - 1 and self.elem_type(self.current.input[0]) == \
                onnx.TensorProto.FLOAT:
            return x
        return _placed(what)

    def _op_ArgMax(self, args, attrs):
        x = self._axis_op(args, attrs, 0)
        if isinstance(x, Rows):
            rank = 1 + len(x.inner)
            axis = attrs.get("axis", 0) % rank
            inner = list(x.inner)
            if attrs.get("keepdims", 1):
                inner[axis - 1] = 1
            else:
                del inner[axis - 1]
            return Rows(x.unit, tuple(inner))
        return x

    _op_ArgMin = _op_ArgMax

    def _op_LayerNormalization(self, args, attrs):
        x = self._axis_op(args, attrs, -1)
        if isinstance(x, Rows) and all(a is None or isinstance(a, Const) for a in args[1:]):
            return [x, Opaque("a statistics output"), Opaque("a statistics output")]
        return None


def _placed(where: str) -> Opaque:
    return Opaque(f"{where} is computed by ONNX Runtime on a vector path and a scalar path that can round "
                  "differently, and which one an element takes depends on its place in the tensor: merged, a "
                  "request's rows lie elsewhere in the forest")


def _count_plus(op, args):
    """N + c or N - c of a count (a scalar or one-item shape of a unit's count) and an integer constant: the count
    of a table with c rows past (or short of) the nodes. None for anything else."""
    if op not in ("Add", "Sub") or len(args) != 2 or not isinstance(args[0], Dims):
        return None
    dims, c = args
    if not (isinstance(c, Const) and c.value.size == 1 and c.value.dtype.kind in "iu" and len(dims.items) == 1):
        return None
    item = dims.items[0]
    base, plus = (item.unit, 0) if isinstance(item, UnitDim) else (item.unit, item.plus) \
        if isinstance(item, UnitDimPlus) else (None, None)
    if base is None:
        return None
    plus += int(c.value.reshape(-1)[0]) * (1 if op == "Add" else -1)
    return Dims((UnitDim(base) if plus == 0 else UnitDimPlus(base, plus),), scalar=dims.scalar)


_COUNT_TYPES = {onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32,
                onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64}


def as_count(x):
    """A one-item count (Dims of N or N + c) as a Count, a Count as itself; None for anything else."""
    if isinstance(x, Count):
        return x
    if isinstance(x, Dims) and len(x.items) == 1 and isinstance(x.items[0], (UnitDim, UnitDimPlus)):
        item = x.items[0]
        plus = getattr(item, "plus", 0)
        return Count(item.unit, (("Add", np.int64(plus), False),) if plus else ())
    return None


def _count_step(op, args):
    """A count and a one-item constant through an op `count_value` computes (values.COUNT_OPS); None otherwise."""
    if op not in COUNT_OPS:
        return None
    counts = [as_count(a) for a in args]
    if len(args) == 1 and counts[0] is not None and op not in ("Add", "Sub", "Mul", "Div", "Max", "Min"):
        return Count(counts[0].unit, counts[0].steps + ((op, None, False),))
    if len(args) != 2 or op in ("Neg", "Ceil", "Floor", "Abs", "Identity"):
        return None
    k = 0 if counts[0] is not None else 1
    other = args[1 - k]
    if counts[k] is None or not isinstance(other, Const) or other.value.size != 1:
        return None
    return Count(counts[k].unit, counts[k].steps + ((op, other.value.reshape(()), k == 1),))


def _padded(analysis, shape, value):
    """zeros(N + 1, ...) (ConstantOfShape or Expand of a constant): a Padded table; zeros(N - 1, ...): rows of a
    unit of their own (`analysis.less_one`: mergeable where N counts CSR offsets, len(offsets) - 1); Opaque for
    N + k rows otherwise; None for other shapes."""
    if not (isinstance(shape, Dims) and not shape.scalar and shape.items and isinstance(shape.items[0], UnitDimPlus)
            and all(isinstance(d, int) for d in shape.items[1:])):
        return None
    if shape.items[0].plus == -1:
        inner = tuple(shape.items[1:])
        if value is not None and np.asarray(value if isinstance(value, np.ndarray) else
                                            numpy_helper.to_array(value)).ndim > len(shape.items):
            return None
        return Rows(analysis.less_one(shape.items[0].unit), inner)
    if shape.items[0].plus != 1:
        plus = shape.items[0].plus
        return Opaque(f"a table of N {'+' if plus > 0 else '-'} {abs(plus)} rows: merged, the rows past (or short of) "
                      "each request's nodes would be the forest's; one padding row past the nodes merges")
    fill = 0.0
    if value is not None:
        array = np.asarray(value if isinstance(value, np.ndarray) else numpy_helper.to_array(value))
        if array.size != 1:
            return None
        fill = float(array.reshape(-1)[0])
    return Padded(shape.items[0].unit, tuple(shape.items[1:]), fill)


def _unpadded(analysis, x: Padded, args):
    """h[:N] (or h[:-1]) of a padded table: its rows of the unit; any other slice is opaque."""
    consts = [a.value.reshape(-1).tolist() if isinstance(a, Const) else a for a in args[1:]]
    starts, ends = consts[0], consts[1]
    axes = consts[2] if len(consts) > 2 and consts[2] is not None else [0]
    steps = consts[3] if len(consts) > 3 and consts[3] is not None else [1]
    rank = 1 + len(x.inner)
    count = ends.items[0] if isinstance(ends, Dims) and len(ends.items) == 1 else None
    to_unit = ends == [-1] or (isinstance(count, UnitDim) and analysis.units.find(count.unit) ==
                                analysis.units.find(x.unit))
    if starts == [0] and isinstance(axes, list) and [a % rank for a in axes] == [0] and steps == [1] and to_unit:
        return Rows(x.unit, x.inner)
    return Opaque("a slice of a table with a padding row other than back to its rows: merged, the bounds would be "
                  "the forest's")

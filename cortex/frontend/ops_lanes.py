"""A padded forest: state tables `[B, N, ...]` and structure arrays `[B, N, ...]` advanced B trees at a time by one
loop over positions v (`h[:, v] = cell(x[:, v], h[bidx, left[:, v]])`, `bidx = torch.arange(B)`).

The loop body is interpreted once for one tree, the *lane* b (`Lane`): a value with a batch (lane) axis is a
`Laned` value, its one-tree slice (size 1 along that axis) and the axis' position. Every op runs its own handler on
the slices, after the lane axis has been followed through it (broadcasting, transposes, reshapes, reductions over
other axes); an op that would mix trees (a reduction over the lane axis, a reshape that merges it, a product that
contracts it) is refused with the reason. The recognizer then makes each (iteration, tree) pair one position,
p = k * B + b, whose rows are row b * N + v of the flattened [B * N, ...] table; the tables keep their [B, N, ...]
shape.

Exact because every tree reads and writes only its own rows: a read or write of a table names the lane as its first
index (GatherND / ScatterND with `bidx`, Gather on axis 1, GatherElements on axis 1), each index in its own
dimension with ONNX's semantics (h[b, -1] is tree b's last row). TorchScript's flat form `h.flatten(0, 1)[b * N + u]`
reads row b * N + u with Gather semantics over all B * N rows, which is another tree's row when u is outside
[0, N): such a read sees the table as it was when this iteration began (`Crossed`, resolved by the recognizer
through a copy of each row's value before the step wrote it)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from ..ir import index as ix
from ..ir import nodes as ir
from .interpreter import attr
from .operands import axes_of, known_ints, norm_axis, static_shape
from .values import Array, Choice, Flat, Known, Partial, Refusal, Row, Sym, Table, describe

BIG = 1 << 62


@ir.node
class Lane(ir.IExpr):
    """The tree (lane) b of a padded forest that the body computes, while it is interpreted; the recognizer makes
    each (iteration, tree) one position: b = p % B."""


@ir.node
class Crossed(ir.BExpr):
    """While the body is interpreted: true when flat row `row` of state table `table` (another tree's) was written
    earlier in this iteration by a tree the positions visit before this one; the recognizer replaces it once it
    knows the rows each step writes."""
    table: str
    row: ir.IExpr
    OPERANDS: ClassVar[tuple] = ("row",)


@dataclass(frozen=True)
class Laned:
    """A value with a batch (lane) axis: `value` is one tree's slice, of size 1 along `axis`."""
    value: object
    axis: int
    major: bool = False  # the batch axis is merged, as the major part, into axis `axis` (a reshape to [B * K, H])


@dataclass(frozen=True)
class LaneRange:
    """torch.arange(B) computed before the loop (B the first dimension of a [B, N, ...] input), perhaps reshaped
    there (`.view(-1, 1)`): `laned` is its one-tree slice; outside a forest it is the runtime tensor `array`."""
    count: ir.IExpr
    array: Array
    laned: object = None


def outer_lane_range(interp, node, args, array: Array):
    """A layout op before the loop (Reshape, Unsqueeze, ...) of torch.arange(B): a LaneRange again, else None."""
    if node.op_type not in ("Reshape", "Unsqueeze", "Squeeze", "Identity", "Cast", "Transpose", "Expand") or \
            not isinstance(args[0], LaneRange) or any(isinstance(a, LaneRange) for a in args[1:]):
        return None
    saved = interp.shared.get("lane_tables")
    interp.shared["lane_tables"] = True
    try:
        out = dispatch(interp, node, [_lane_of(args[0])] + list(args[1:]), None)
    except Refusal:
        return None
    finally:
        interp.shared["lane_tables"] = saved
    if not out or not isinstance(out[0], Laned):
        return None
    return LaneRange(args[0].count, array, out[0])


def _lane_of(r: LaneRange):
    return r.laned if r.laned is not None else _range_slice()


@dataclass(frozen=True)
class ArrayLane:
    """One tree's slice of a runtime tensor [B, N, ...]: its dimensions in view order, each "lane" (size 1), "node"
    (N, only the run knows it) or an axis >= 2 of the array; `picks`: ((axis, constant index), ...) of axes already
    indexed away."""
    array: Array
    dims: tuple
    picks: tuple = ()


@dataclass(frozen=True)
class LaneRefused:
    """The output of an op Cortex cannot follow over a padded forest's batch axis; any use of it is refused with
    `message` (an unused per-iteration output does not stop the conversion)."""
    message: str


@dataclass(frozen=True)
class Swapped:
    """The forest's table with its two leading dimensions swapped ([N, B, ...]: dynamo's h[:, v] = r is a Transpose,
    a ScatterND at [v], a Transpose back)."""
    table: Table


@dataclass(frozen=True)
class LaneSlice:
    """h[:, start:stop] of the forest's table (the pieces of a torch.cat write along the node axis)."""
    table: Table
    start: ir.IExpr
    stop: ir.IExpr


LANE_VALUES = (Laned, ArrayLane, LaneRange, Swapped, LaneSlice)


def lane_array(v) -> bool:
    """A runtime tensor of a padded forest: rank >= 2, its first two dimensions dynamic."""
    return isinstance(v, Array) and v.shape is not None and len(v.shape) >= 2 and v.columns is None and \
        not isinstance(v.shape[0], int) and not isinstance(v.shape[1], int)


def lane_count(it, e) -> bool:
    """True when e is B: the first dimension of the forest's tables or of a [B, N, ...] runtime tensor."""
    e = _plain_dim(e)
    scope = it.shared.get("outer_scope")
    if isinstance(e, ir.Load) and scope is not None:
        e = shape_load(scope, e) or e
    if not isinstance(e, ir.Length) or e.axis != 0:
        return False
    if e.array is None:
        return bool(it.shared.get("lane_tables"))
    try:
        array = it.outer(e.array)
    except Exception:  # noqa: BLE001 - not a name in scope
        return False
    if not lane_array(array):
        return False
    it.use_array(array, lead=2)  # the kernel checks that its trees are the tables' (ops_lanes.flatten_lanes)
    return True


def shape_load(scope, e):
    """Length(x, 0) for Shape(x)[0] where ONNX Runtime computes Shape(x) before the loop (element 0 of its output,
    read by the kernel), else None."""
    if not (isinstance(e, ir.Load) and isinstance(e.index, ir.IConst) and e.column is None):
        return None
    node = scope.producer.get(e.array)
    if node is None or node.op_type != "Shape" or node.domain not in ("", "ai.onnx") or \
            int(attr(node, "start", 0)) + int(e.index.value) != 0 or attr(node, "start", 0) < 0:
        return None
    return ir.Length(node.input[0], 0)


def _plain_dim(e):
    """A dimension as exporters rewrite it for torch's expand (-1 keeps the size): Where(d == -1, 1, d) is d for a
    size d >= 0."""
    if isinstance(e, ir.ISelect) and isinstance(e.pred, ir.Compare) and e.pred.op == "eq" and \
            isinstance(e.pred.b, ir.IConst) and e.pred.b.value < 0 and e.b == e.pred.a:
        return e.b  # (a size is never negative)
    if isinstance(e, ir.IBinary) and e.op == "max" and ix.const(1) in (e.a, e.b):
        return e.b if e.a == ix.const(1) else e.a  # max(B, 1) is B where any position runs (B >= 1)
    return e


def _rank(v) -> int:
    return len(static_shape(v.value if isinstance(v, Laned) else v))


def _inner(it, node, args, lookup):
    """The op's own handler on one tree's slices."""
    saved = it.shared.get("lane_inner")
    it.shared["lane_inner"] = True
    try:
        return it.eval_node(node, args, lookup)
    finally:
        it.shared["lane_inner"] = saved


def _wrap(v, axis: int, major: bool = False):
    """One tree's slice as a per-tree value; a value an If chose is chosen per branch."""
    if isinstance(v, Choice):
        return Choice(v.pred, _wrap(v.then, axis, major), _wrap(v.other, axis, major))
    return Laned(v, axis, major)


def _unwrap(v):
    return v.value if isinstance(v, Laned) else v


def _fire(it):
    it.shared["lanes"] = True


def dispatch(it, node, args, lookup):
    """The outputs when `node` reads or computes per-tree values of a padded forest, else None (the op's own
    handler runs)."""
    if it.shared.get("lane_inner"):
        return None
    if not it.shared.get("lane_tables"):
        for k, a in enumerate(args):
            if isinstance(a, LaneRange):
                args[k] = a.array  # not a forest: the runtime tensor it is
        return None
    op = node.op_type
    refused = next((a for a in args if isinstance(a, LaneRefused)), None)
    if refused is not None:
        raise Refusal(refused.message)
    if any(isinstance(a, LaneRange) for a in args):
        for a in args:
            if isinstance(a, LaneRange) and not lane_count(it, a.count):  # registers B's array (checked)
                raise Refusal(f"torch.arange over {describe(a.array)} is not the forest's trees")
        args = [_lane_of(a) if isinstance(a, LaneRange) else a for a in args]
    fn = SOURCES.get(op)
    if fn is not None:
        try:
            out = fn(it, node, args, lookup)
        except Refusal as r:
            if any(isinstance(a, (Table, Flat, Partial)) for a in args) or \
                    not any(isinstance(a, LANE_VALUES) for a in args):
                raise
            out = [LaneRefused(r.message) for _ in node.output]  # refused when used
        if out is not None:
            _fire(it)
            return out if isinstance(out, list) else [out]
    if not any(isinstance(a, LANE_VALUES) for a in args):
        whole = next((a for a in args if lane_array(a)), None)
        if whole is not None and op in BROADCAST:
            raise Refusal(f"{op} of the whole of runtime tensor {whole.name} (every node of every tree: a child set "
                          f"over a padded forest) is not supported", hint="read one node of every tree (x[:, v]), "
                          "or batch the trees into one forest (node ids offset per tree)")
        return None
    _fire(it)
    if any(isinstance(a, Swapped) for a in args):
        return [_swapped_source(it, node, [next(a for a in args if isinstance(a, Swapped))], lookup)] \
            if op == "Identity" else _swapped_source(it, node, args, lookup)
    if any(isinstance(a, ArrayLane) for a in args):
        raise Refusal(f"op {op} on one tree's slice of runtime tensor "
                      f"{next(a for a in args if isinstance(a, ArrayLane)).array.name} is not supported")
    if any(isinstance(a, LaneRange) for a in args):
        args = [_lane_of(a) if isinstance(a, LaneRange) else a for a in args]
    if op != "Reshape" and any(isinstance(a, Laned) and a.major for a in args):
        return [LaneRefused(f"{op} of a per-tree value whose batch axis is merged with another (it would mix "
                            f"trees)") for _ in node.output]
    fn = _broadcast if op in BROADCAST else LANE_OPS.get(op)
    if fn is None:
        raise Refusal(f"op {op} on a per-tree value of a padded forest (a batch axis) is not supported")
    try:
        out = fn(it, node, args, lookup)
    except Refusal as r:  # refused when used: an unused output (a scan's per-iteration copy) does not matter
        return [LaneRefused(r.message) for _ in node.output]
    return out if isinstance(out, list) else [out]


def _range_slice() -> Laned:
    elems = np.empty(1, dtype=object)
    elems[0] = Lane()
    return Laned(Sym(elems, "int64"), 0)


# ---- broadcasting ops ---------------------------------------------------------------------------------------

BROADCAST = {"Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Sum", "Mean", "PRelu", "Less", "LessOrEqual",
             "Greater", "GreaterOrEqual", "Equal", "And", "Or", "Xor", "Not", "Where", "Identity", "Dropout", "Clip",
             "Cast", "CastLike", "Gelu", "IsInf", "IsNaN", "Tanh", "Sigmoid", "Relu", "Exp", "Log", "Neg", "Abs",
             "Sqrt", "Erf", "Softplus", "Softsign", "Elu", "Selu", "Celu", "LeakyRelu", "HardSigmoid", "HardSwish",
             "ThresholdedRelu", "Mish", "Floor", "Ceil", "Round", "Sign", "Reciprocal", "Sin", "Cos", "Tan", "Asin",
             "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Shrink", "BitwiseNot", "BitwiseAnd",
             "BitwiseOr", "BitwiseXor"}


def _broadcast(it, node, args, lookup):
    present = [a for a in args if a is not None]
    rank = max(_rank(a) for a in present)
    lane = None
    for a in present:
        if isinstance(a, Laned):
            pos = rank - (_rank(a) - a.axis)
            if lane is not None and pos != lane:
                raise Refusal(f"{node.op_type} of values whose batch axes do not line up")
            lane = pos
    for a in present:
        if not isinstance(a, Laned):
            shape = static_shape(a)
            q = lane - (rank - len(shape))
            if q >= 0 and shape[q] != 1:
                raise Refusal(f"{node.op_type} of a per-tree value with a value of {shape[q]} rows along the batch "
                              f"axis (the trees' count is only known at run time)")
    outs = _inner(it, node, [_unwrap(a) for a in args], lookup)
    return [_wrap(o, lane) for o in outs]


# ---- layout ops -----------------------------------------------------------------------------------------------


def _op_transpose(it, node, args, lookup):
    x = args[0]
    rank = _rank(x)
    perm = list(attr(node, "perm") or reversed(range(rank)))
    out = _inner(it, node, [x.value], lookup)
    return [_wrap(out[0], perm.index(x.axis))]


def _op_unsqueeze(it, node, args, lookup):
    x = args[0]
    axes = axes_of(it, node, args, 1) or []
    out_rank = _rank(x) + len(axes)
    inserted = {norm_axis(a, out_rank) for a in axes}
    kept = [k for k in range(out_rank) if k not in inserted]
    out = _inner(it, node, [x.value] + list(args[1:]), lookup)
    return [_wrap(out[0], kept[x.axis])]


def _op_squeeze(it, node, args, lookup):
    x = args[0]
    axes = axes_of(it, node, args, 1)
    if not axes:
        raise Refusal("Squeeze of every unit axis of a per-tree value (the batch axis is one when B is 1)",
                      hint="name the axes to squeeze")
    axes = {norm_axis(a, _rank(x)) for a in axes}
    if x.axis in axes:
        raise Refusal("Squeeze of the batch axis of a per-tree value")
    out = _inner(it, node, [x.value] + list(args[1:]), lookup)
    return [_wrap(out[0], x.axis - sum(a < x.axis for a in axes))]


def _shape_entries(it, v):
    """A shape operand as a list of ints, lane counts written as None."""
    if isinstance(v, Known):
        return [int(d) for d in np.asarray(v.value).reshape(-1)]
    if isinstance(v, Sym):
        out = []
        for e in v.elems.reshape(-1):
            e = ix.as_index(e)
            if isinstance(e, ir.IConst):
                out.append(int(e.value))
            elif lane_count(it, e):
                out.append(None)
            else:
                return None
        return out
    return None


def _op_reshape(it, node, args, lookup):
    x, shape = args[0], args[1]
    target = _shape_entries(it, shape)
    if not isinstance(x, Laned):
        return None
    if target is None:
        raise Refusal("a Reshape of a per-tree value to a shape that is not constant")
    before = static_shape(x.value)
    allowzero = bool(attr(node, "allowzero", 0))
    if not allowzero:
        target = [before[k] if d == 0 and k != x.axis else (None if d == 0 else d) for k, d in enumerate(target)]
    lanes = [k for k, d in enumerate(target) if d is None]
    if len(lanes) > 1:
        raise Refusal("a Reshape to two batch axes")
    view = [1 if d is None else d for d in target]
    new = list(_onnx_reshape(before, view))
    major = False
    if lanes:
        q = lanes[0]
    elif -1 in target and (new[target.index(-1)] == 1 or not x.major):
        q = target.index(-1)  # -1 takes the batch axis (times the dimensions merged with it, major first)
        major = new[q] != 1
    else:
        raise Refusal("a Reshape that merges the batch axis of a per-tree value with others (it would mix trees)")
    if int(np.prod(before[:x.axis], dtype=np.int64)) != int(np.prod(new[:q], dtype=np.int64)):
        raise Refusal("a Reshape that moves the batch axis of a per-tree value across others (it would mix trees)")
    if major and int(np.prod(before[x.axis:], dtype=np.int64)) % new[q] != 0:
        raise Refusal("a Reshape that merges the batch axis of a per-tree value with others (it would mix trees)")
    out = _inner(it, node, [x.value, Known(np.array(new, dtype=np.int64))], lookup)
    return [_wrap(out[0], q, major)]


def _onnx_reshape(before, target):
    from .layout import onnx_reshape
    return onnx_reshape(tuple(before), np.asarray(target, dtype=np.int64), False)


def _op_flatten(it, node, args, lookup):
    x = args[0]
    shape = static_shape(x.value)
    axis = int(attr(node, "axis", 1))
    axis = axis + len(shape) if axis < 0 else axis
    side = [d for k, d in enumerate(shape) if (k < axis) == (x.axis < axis) and k != x.axis]
    if any(d != 1 for d in side):
        raise Refusal("a Flatten that merges the batch axis of a per-tree value with others (it would mix trees)")
    out = _inner(it, node, [x.value], lookup)
    return [_wrap(out[0], 0 if x.axis < axis else 1)]


def _op_expand(it, node, args, lookup):
    x, shape = args[0], args[1]
    target = _shape_entries(it, shape)
    if target is None or (None not in target and not isinstance(x, Laned)):
        return None
    if isinstance(x, Array):  # a size ONNX Runtime computes before the loop (torch.full_like(kids, n))
        x = it.sym(x, "the value expanded")
    xs = static_shape(_unwrap(x))
    rank = max(len(target), len(xs))
    lanes = [rank - len(target) + k for k, d in enumerate(target) if d is None]
    if isinstance(x, Laned):
        lanes.append(rank - (len(xs) - x.axis))
    if len(set(lanes)) != 1:
        raise Refusal("an Expand along two batch axes")
    q = lanes[0]
    qx = q - (rank - len(xs))
    if not isinstance(x, Laned) and qx >= 0 and xs[qx] != 1:
        raise Refusal("an Expand of a value with a size other than one along the batch axis")
    qt = q - (rank - len(target))
    if qt >= 0 and target[qt] not in (None, 1):
        raise Refusal(f"an Expand of a per-tree value to {target[qt]} along the batch axis")
    ints = [1 if d is None else d for d in target]
    out = _inner(it, node, [_unwrap(x), Known(np.array(ints, dtype=np.int64))], lookup)
    return [_wrap(out[0], q)]


def _op_constant_of_shape(it, node, args, lookup):
    target = _shape_entries(it, args[0])
    if target is None or None not in target:
        return None
    if target.count(None) > 1:
        raise Refusal("a ConstantOfShape with two batch axes")
    q = target.index(None)
    out = _inner(it, node, [Known(np.array([1 if d is None else d for d in target], dtype=np.int64))], lookup)
    return [_wrap(out[0], q)]


def _op_range(it, node, args, lookup):
    start, limit, delta = args
    if not (isinstance(start, Known) and isinstance(delta, Known) and isinstance(limit, Sym)
            and limit.elems.size == 1 and lane_count(it, limit.scalar())):
        return None
    if int(np.asarray(start.value).reshape(-1)[0]) != 0 or int(np.asarray(delta.value).reshape(-1)[0]) != 1:
        raise Refusal("a Range over the trees other than arange(B)")
    return [_range_slice()]


def _op_shape(it, node, args, lookup):
    x = _lane_of(args[0]) if isinstance(args[0], LaneRange) else args[0]
    if isinstance(x, Laned) and x.major:
        return None
    if isinstance(x, ArrayLane):
        dims = [ir.Length(x.array.name, 0) if d == "lane" else ir.Length(x.array.name, 1) if d == "node" else
                ix.const(int(x.array.shape[d])) for d in x.dims]
    elif isinstance(x, Laned):
        dims = [ir.Length(None, 0) if k == x.axis else ix.const(d) for k, d in enumerate(static_shape(x.value))]
    else:
        return None
    dims = dims[slice(attr(node, "start", 0), attr(node, "end", None))]
    elems = np.empty(len(dims), dtype=object)
    elems[:] = dims
    return [Sym(elems, "int64")]


def _op_concat(it, node, args, lookup):
    laned = [a for a in args if isinstance(a, Laned)]
    if len(laned) != len(args):
        raise Refusal("a Concat of per-tree values with values shared by every tree")
    rank = _rank(laned[0])
    axis = norm_axis(attr(node, "axis", 0), rank)
    if any(a.axis != laned[0].axis for a in laned) or axis == laned[0].axis:
        raise Refusal("a Concat along the batch axis (or of values whose batch axes differ)")
    out = _inner(it, node, [a.value for a in args], lookup)
    return [_wrap(out[0], laned[0].axis)]


def _op_split(it, node, args, lookup):
    x = args[0]
    if not isinstance(x, Laned) or any(isinstance(a, Laned) for a in args[1:]):
        raise Refusal("a Split by per-tree sizes")
    if norm_axis(attr(node, "axis", 0), _rank(x)) == x.axis:
        raise Refusal("a Split along the batch axis")
    outs = _inner(it, node, [x.value] + list(args[1:]), lookup)
    return [_wrap(o, x.axis) for o in outs]


def _op_slice(it, node, args, lookup):
    x = args[0]
    if any(isinstance(a, Laned) for a in args[1:]) or not isinstance(x, Laned):
        raise Refusal("a Slice at per-tree bounds")
    rank = _rank(x)
    starts = known_ints(it, args[1], "Slice starts").reshape(-1)
    ends = known_ints(it, args[2], "Slice ends").reshape(-1)
    axes = known_ints(it, args[3], "Slice axes").reshape(-1) if len(args) > 3 and args[3] is not None else \
        np.arange(len(starts))
    steps = known_ints(it, args[4], "Slice steps").reshape(-1) if len(args) > 4 and args[4] is not None else \
        np.ones(len(starts), dtype=np.int64)
    for s, e, a, st in zip(starts, ends, axes, steps):
        if norm_axis(a, rank) == x.axis and not (s == 0 and e >= 1 << 31 and st == 1):
            raise Refusal("a Slice of the batch axis of a per-tree value (a subset of the trees)")
    out = _inner(it, node, [x.value] + list(args[1:]), lookup)
    return [_wrap(out[0], x.axis)]


def _op_tile(it, node, args, lookup):
    x = args[0]
    if not isinstance(x, Laned):
        raise Refusal("a Tile by per-tree counts")
    repeats = known_ints(it, args[1], "Tile repeats").reshape(-1)
    if int(repeats[x.axis]) != 1:
        raise Refusal("a Tile along the batch axis")
    out = _inner(it, node, [x.value, args[1]], lookup)
    return [_wrap(out[0], x.axis)]


# ---- reductions and normalizations ------------------------------------------------------------------------------

REDUCE_OPS = {"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"}


def _op_reduce(it, node, args, lookup):
    x = args[0]
    if not isinstance(x, Laned) or any(isinstance(a, Laned) for a in args[1:]):
        raise Refusal(f"{node.op_type} over per-tree axes")
    rank = _rank(x)
    axes = axes_of(it, node, args, 1)
    if not axes:
        if attr(node, "noop_with_empty_axes", 0):
            return [x]
        raise Refusal(f"{node.op_type} over every axis of a per-tree value, the batch axis included (it would mix "
                      f"trees)")
    axes = {norm_axis(a, rank) for a in axes}
    if x.axis in axes:
        raise Refusal(f"{node.op_type} over the batch axis (it would mix trees)")
    out = _inner(it, node, [x.value] + list(args[1:]), lookup)
    keep = attr(node, "keepdims", 1)
    return [_wrap(out[0], x.axis if keep else x.axis - sum(a < x.axis for a in axes))]


def _op_arg(it, node, args, lookup):
    x = args[0]
    axis = norm_axis(attr(node, "axis", 0), _rank(x))
    if axis == x.axis:
        raise Refusal(f"{node.op_type} over the batch axis (it would mix trees)")
    out = _inner(it, node, [x.value], lookup)
    keep = attr(node, "keepdims", 1)
    return [_wrap(out[0], x.axis if keep or axis > x.axis else x.axis - 1)]


def _op_softmax(it, node, args, lookup):
    x = args[0]
    rank = _rank(x)
    axis = norm_axis(attr(node, "axis", -1 if it.opset >= 13 else 1), rank)
    if (it.opset >= 13 and axis == x.axis) or (it.opset < 13 and x.axis >= axis):
        raise Refusal(f"{node.op_type} over the batch axis (it would mix trees)")
    out = _inner(it, node, [x.value], lookup)
    return [_wrap(out[0], x.axis)]


def _op_layer_norm(it, node, args, lookup):
    x = args[0]
    if any(isinstance(a, Laned) for a in args[1:]):
        raise Refusal("a LayerNormalization with per-tree weights")
    axis = norm_axis(attr(node, "axis", -1), _rank(x))
    if x.axis >= axis:
        raise Refusal("a LayerNormalization over the batch axis (it would mix trees)")
    outs = _inner(it, node, [x.value] + list(args[1:]), lookup)
    return [_wrap(outs[0], x.axis)] + [_wrap(o, x.axis) for o in outs[1:]]


def _op_cumsum(it, node, args, lookup):
    x = args[0]
    axis = norm_axis(int(known_ints(it, args[1], "CumSum axis").reshape(-1)[0]), _rank(x))
    if axis == x.axis:
        raise Refusal("a CumSum over the batch axis (it would mix trees)")
    out = _inner(it, node, [x.value, args[1]], lookup)
    return [_wrap(out[0], x.axis)]


# ---- products -----------------------------------------------------------------------------------------------


def _op_matmul(it, node, args, lookup):
    a, b = args
    ra, rb = _rank(a), _rank(b)
    if (ra < 2 and isinstance(a, Laned)) or (rb < 2 and isinstance(b, Laned)):
        raise Refusal("a MatMul of a one-dimensional per-tree value (it contracts the batch axis)")
    if rb < 2 or ra < 2:  # a vector shared by the trees: a's last axis, or b's second to last, is contracted
        x, r, contracted = (a, ra, ra - 1) if rb < 2 else (b, rb, rb - 2)
        if x.axis == contracted:
            raise Refusal("a MatMul that contracts the batch axis (it would mix trees)")
        out = _inner(it, node, [_unwrap(a), _unwrap(b)], lookup)
        return [_wrap(out[0], x.axis if x.axis < contracted else x.axis - 1)]
    rank = max(ra, rb)
    lanes = set()
    if isinstance(a, Laned):
        if a.axis == ra - 1:
            raise Refusal("a MatMul that contracts the batch axis (it would mix trees)")
        lanes.add(rank - 2 if a.axis == ra - 2 else rank - (ra - a.axis))
    if isinstance(b, Laned):
        if b.axis == rb - 2:
            raise Refusal("a MatMul that contracts the batch axis (it would mix trees)")
        lanes.add(rank - 1 if b.axis == rb - 1 else rank - (rb - b.axis))
    if len(lanes) != 1:
        raise Refusal("a MatMul of values whose batch axes do not line up")
    q = lanes.pop()
    for v, r in ((a, ra), (b, rb)):  # a value shared by the trees must not have several rows along the batch axis
        if not isinstance(v, Laned) and q < rank - 2 and q - (rank - r) >= 0 and static_shape(v)[q - (rank - r)] != 1:
            raise Refusal("a MatMul of per-tree values with a value of several rows along the batch axis")
    if isinstance(a, Laned) and not isinstance(b, Laned) and q == rank - 1:
        raise Refusal("a MatMul of values whose batch axes do not line up")
    out = _inner(it, node, [_unwrap(a), _unwrap(b)], lookup)
    return [_wrap(out[0], q)]


def _op_gemm(it, node, args, lookup):
    a, b = args[0], args[1]
    c = args[2] if len(args) > 2 else None
    if not isinstance(a, Laned) or isinstance(b, Laned) or attr(node, "transA", 0) or a.axis != 0:
        raise Refusal("a Gemm whose per-tree operand is not A's rows")
    if isinstance(c, Laned) and c.axis != _rank(c) - 2:
        raise Refusal("a Gemm whose bias is per tree along another axis")
    if c is not None and not isinstance(c, Laned):
        cs = static_shape(c)
        if len(cs) == 2 and cs[0] != 1:
            raise Refusal("a Gemm bias with several rows along the batch axis")
    out = _inner(it, node, [a.value, b] + ([_unwrap(c)] if len(args) > 2 else []), lookup)
    return [_wrap(out[0], 0)]


# ---- reads and writes of the forest ------------------------------------------------------------------------------


def _lane_table(v) -> bool:
    return isinstance(v, Table) and v.lead == 2


def _gather_source(it, node, args, lookup):
    """h[:, v] (Gather on axis 1 of the forest's table), left[:, v] (of a [B, N, ...] input), and reads of one
    tree's slice of an input or of a flattened table at per-tree rows."""
    data, indices = args
    axis = attr(node, "axis", 0)
    if isinstance(data, Swapped):
        return _swapped_source(it, node, args, lookup)
    if _lane_table(data) and not isinstance(indices, LANE_VALUES):
        if norm_axis(axis, 2 + len(data.inner)) != 1:
            return None
        idx = it.sym(indices, "the Gather index")
        from .ops_tables import part
        rows = [part(it, data, (Lane(), ix.as_index(e))) for e in idx.elems.reshape(-1)]
        row = Row(ir.concat(r.expr for r in rows), (1,) + tuple(idx.shape) + tuple(data.inner))
        return Laned(row, 0)
    if lane_array(data) and not isinstance(indices, LANE_VALUES) and norm_axis(axis, len(data.shape)) >= 1:
        view = ArrayLane(it.use_array(data, lead=2), ("lane", "node") + tuple(range(2, len(data.shape))))
        return _gather_view(it, view, indices, axis)
    if isinstance(data, ArrayLane):
        if isinstance(indices, LANE_VALUES):
            raise Refusal(f"a Gather from one tree's slice of {data.array.name} at per-tree indices")
        return _gather_view(it, data, indices, axis)
    if isinstance(data, Flat) and _lane_table(data.base) and isinstance(indices, Laned):
        return _flat_read(it, data, indices)
    return None


def _gather_view(it, view: ArrayLane, indices, axis):
    axis = norm_axis(axis, len(view.dims))
    dim = view.dims[axis]
    if dim == "lane":
        raise Refusal(f"a Gather along the batch axis of {view.array.name}")
    if dim == "node":
        return _materialize(it, view, it.sym(indices, "the Gather index"), axis)
    if not isinstance(indices, Known) or np.asarray(indices.value).ndim != 0:
        raise Refusal(f"a Gather along axis {dim} of {view.array.name} other than at one constant index")
    k = int(np.asarray(indices.value))
    size = int(view.array.shape[dim])
    if not -size <= k < size:
        raise Refusal("Gather index out of range (the original fails on every input)")
    return replace(view, dims=view.dims[:axis] + view.dims[axis + 1:], picks=view.picks + ((dim, k % size),))


def _materialize(it, view: ArrayLane, idx: Sym, axis: int):
    """One tree's slice of the array at node indices idx (in the view's axis `axis`): element loads (or float
    rows), laid out as the view with its node axis replaced by idx's dimensions."""
    from .ops_tables import array_rows, flat_row
    data = view.array
    rows = [flat_row(data, (Lane(), ix.as_index(e))) for e in idx.elems.reshape(-1)]
    got = array_rows(it, data, rows, tuple(idx.shape))  # [*idx, *array dims 2..]
    k = len(idx.shape)
    picks = dict(view.picks)
    order = [d for d in range(2, len(data.shape)) if d not in picks]

    def fn(a):
        for d in sorted(picks, reverse=True):
            a = np.take(a, picks[d], axis=k + d - 2)
        a = a[np.newaxis]  # the lane axis first: [1, *idx, *kept]
        src = {"lane": [0], "node": list(range(1, 1 + k))}
        for j, d in enumerate(order):
            src[d] = [1 + k + j]
        perm = [p for dim in view.dims for p in src[dim]]
        return np.transpose(a, perm)

    from .layout import rearrange
    out = rearrange(got, fn)
    lane_pos = sum(k if d == "node" else 1 for d in view.dims[:view.dims.index("lane")])
    return Laned(out, lane_pos)


def _swap_perm(node, rank) -> bool:
    perm = list(attr(node, "perm") or reversed(range(rank)))
    return perm == [1, 0] + list(range(2, rank))


def _view_source(it, node, args, lookup):
    """Slice (whole along the batch axis) and Transpose of a [B, N, ...] input: one tree's slice of it; the
    forest's table with its tree and node axes swapped, and back."""
    x = args[0]
    if node.op_type == "Slice" and _lane_table(x):
        return _slice_table(it, x, args)
    if node.op_type == "Transpose" and (_lane_table(x) or isinstance(x, Swapped)):
        table = x.table if isinstance(x, Swapped) else x
        if not _swap_perm(node, 2 + len(table.inner)):
            raise Refusal("a Transpose of the forest's table other than of its tree and node axes")
        return table if isinstance(x, Swapped) else Swapped(x)
    if lane_array(x):
        if node.op_type == "Slice" and not all(isinstance(a, Known) or a is None for a in args[1:]):
            return None  # a window at structure indices (a grid's rows): not one tree's slice
        x = ArrayLane(it.use_array(x, lead=2), ("lane", "node") + tuple(range(2, len(x.shape))))
    elif not isinstance(x, ArrayLane):
        return None
    if node.op_type == "Transpose":
        perm = list(attr(node, "perm") or reversed(range(len(x.dims))))
        return replace(x, dims=tuple(x.dims[p] for p in perm))
    starts, ends = known_ints(it, args[1], "Slice starts").reshape(-1), known_ints(it, args[2], "Slice ends").reshape(-1)
    axes = known_ints(it, args[3], "Slice axes").reshape(-1) if len(args) > 3 and args[3] is not None else \
        np.arange(len(starts))
    steps = known_ints(it, args[4], "Slice steps").reshape(-1) if len(args) > 4 and args[4] is not None else \
        np.ones(len(starts), dtype=np.int64)
    for s, e, a, st in zip(starts, ends, axes, steps):
        if not (s == 0 and e >= 1 << 31 and st == 1):
            raise Refusal(f"a Slice of {x.array.name} other than whole along its batch and node axes",
                          hint="index one node of every tree: x[:, v]")
    return x


def _gather_nd_source(it, node, args, lookup):
    """GatherND from the forest's table at per-tree index tuples (b, u) (h[bidx, u]), or from one tree's slice of
    an input along its node axis (dynamo's left[:, v])."""
    data, indices = args
    if isinstance(data, Swapped):
        return _swapped_source(it, node, args, lookup)
    if attr(node, "batch_dims", 0):
        return None
    if isinstance(data, ArrayLane):  # (GatherND on a [B, N, ...] input itself reads whole trees: not a lane's)
        view = data
        if isinstance(indices, LANE_VALUES):
            raise Refusal("a GatherND from one tree's slice of an input at per-tree indices")
        idx = it.sym(indices, "the GatherND index")
        if idx.shape[-1] != 1 or view.dims[0] != "node":
            raise Refusal(f"a GatherND from one tree's slice of {view.array.name} other than along its node axis")
        got = _materialize(it, view, Sym(idx.elems[..., 0].copy(), idx.dtype), 0)
        return got
    if _lane_table(data) and isinstance(indices, Laned):
        idx = indices.value
        if not isinstance(idx, Sym):
            idx = it.sym(idx, "the GatherND index")
        if indices.axis == len(idx.shape) - 1 or idx.shape[-1] < 2:
            raise Refusal("a GatherND from the forest's table whose index tuples do not name the tree")
        if any(ix.as_index(e) != Lane() for e in idx.elems[..., 0].reshape(-1)):
            raise Refusal("a GatherND from the forest's table at another tree's rows (the tree index is not "
                          "torch.arange(B))")
        out = _inner(it, node, [data, idx], lookup)
        return [_wrap(out[0], indices.axis)]
    return None  # (a grid's cell, or refused with a forest when the step reads another tree's rows)


def _gather_elements_source(it, node, args, lookup):
    """torch.gather(h, 1, idx): h[b, idx[b, i, c], c] for the forest's table."""
    data, indices = args
    if not _lane_table(data):
        return None
    rank = 2 + len(data.inner)
    if norm_axis(attr(node, "axis", 0), rank) != 1 or not isinstance(indices, Laned) or indices.axis != 0:
        raise Refusal("a GatherElements from the forest's table other than along its node axis at per-tree indices")
    idx = it.sym(indices.value, "the GatherElements index")
    if len(idx.shape) != rank or any(a > b for a, b in zip(idx.shape[2:], data.inner)):
        raise Refusal(f"GatherElements indices of shape {list(idx.shape)}")
    from .ops_tables import part
    parts, cache = [], {}
    for pos in np.ndindex(*idx.shape):
        e = ix.as_index(idx.elems[pos])
        if e not in cache:
            cache[e] = part(it, data, (Lane(), e))
        col = int(np.ravel_multi_index(pos[2:], data.inner)) if data.inner else 0
        parts.append(ir.slice_row(cache[e].expr, col, col + 1))
    return Laned(Row(ir.concat(parts), tuple(idx.shape)), 0)


def _slice_table(it, table: Table, args):
    """h[:, a:b] of the forest's table: whole along the tree axis, a unit-step window of the node axis."""
    from .ops_tables import _unit_slice
    rank = 2 + len(table.inner)
    starts, ends, axes = _unit_slice(it, args[1], args[2], args[3] if len(args) > 3 else None,
                                     args[4] if len(args) > 4 else None, rank, "a strided slice of the forest's table")
    start, stop = ix.const(0), ix.const(BIG)
    for s_, e_, a in zip(starts, ends, axes):
        whole = s_ == ix.const(0) and isinstance(e_, ir.IConst) and e_.value >= 1 << 31
        if a == 1:
            start, stop = s_, e_
        elif not whole:
            raise Refusal("a slice of the forest's table other than along its node axis")
    if start == ix.const(0) and isinstance(stop, ir.IConst) and stop.value >= 1 << 31:
        return table
    return LaneSlice(table, start, stop)


def _concat_source(it, node, args, lookup):
    """torch.cat([h[:, :v], new, h[:, v + 1:]], 1): every tree's row v replaced, for 0 <= v < N (other v change the
    table's size in the original: a run-time error here)."""
    if not any(isinstance(a, LaneSlice) for a in args):
        return None
    from .ops_tables import write_table
    bad = Refusal("a Concat of pieces of the forest's table other than [h[:, :v], row, h[:, v + 1:]] along its node "
                  "axis")
    if len(args) != 3:
        raise bad
    head, mid, tail = args
    if not (isinstance(head, LaneSlice) and isinstance(tail, LaneSlice) and head.table == tail.table and
            isinstance(mid, Laned) and mid.axis == 0):
        raise bad
    table = head.table
    if norm_axis(attr(node, "axis", 0), 2 + len(table.inner)) != 1:
        raise bad
    v = head.stop
    n = ir.Length(None, 1)
    if head.start != ix.const(0) or ix.ibin("sub", tail.start, v) != ix.const(1) or \
            not (tail.stop == n or (isinstance(tail.stop, ir.IConst) and tail.stop.value >= 1 << 31)):
        raise bad
    if tuple(static_shape(mid.value)) != (1, 1) + tuple(table.inner):
        raise Refusal(f"the new rows of a torch.cat write have shape {list(static_shape(mid.value))} per tree")
    row = ir.Guard(ix.band(ix.cmp("ge", v, ix.const(0)), ix.cmp("lt", v, n)), v,
                   "node index out of range [0, N) in a torch.cat write (the original would change the table size)")
    it.shared.setdefault("table_access", set()).add("lane")
    return [write_table(table, ix.ibin("add", ix.ibin("mul", Lane(), n), row), it.row(mid.value).expr)]


def _swapped_rows(it, x: Swapped, idx: Sym):
    """h.transpose(0, 1)[idx]: [*idx, B, ...], each tree's own rows."""
    from .ops_tables import part
    rows = [part(it, x.table, (Lane(), ix.as_index(e))) for e in idx.elems.reshape(-1)]
    return Laned(Row(ir.concat(r.expr for r in rows), tuple(idx.shape) + (1,) + tuple(x.table.inner)),
                 len(idx.shape))


def _swapped_source(it, node, args, lookup):
    """Reads (Gather on axis 0, GatherND with one index) and writes (ScatterND with one index) of the forest's
    table with its tree and node axes swapped: node v of every tree."""
    x = args[0]
    if not isinstance(x, Swapped):
        return None
    op = node.op_type
    if op == "Gather" and norm_axis(attr(node, "axis", 0), 2 + len(x.table.inner)) == 0 and \
            not isinstance(args[1], LANE_VALUES):
        return _swapped_rows(it, x, it.sym(args[1], "the Gather index"))
    if op in ("GatherND", "ScatterND") and not isinstance(args[1], LANE_VALUES) and not attr(node, "batch_dims", 0):
        idx = it.sym(args[1], f"the {op} index")
        if not idx.shape or idx.shape[-1] != 1:
            raise Refusal(f"a {op} into the forest's table (tree and node axes swapped) with index tuples other than "
                          f"one node")
        nodes = Sym(idx.elems[..., 0].copy(), idx.dtype)
        if op == "GatherND":
            return _swapped_rows(it, x, nodes)
        upd = args[2]
        lead = len(nodes.shape)
        if isinstance(upd, Laned):
            if upd.axis != lead:
                raise Refusal("a ScatterND whose rows and indices have their batch axes apart")
            upd = upd.value
        else:
            shape = static_shape(upd)
            if len(shape) > lead and shape[lead] != 1:
                raise Refusal("a ScatterND of rows shared by the trees along the batch axis")
        from .layout import rearrange
        from .ops_tables import scatter_nd_table
        upd = rearrange(upd, lambda a: np.broadcast_to(a, tuple(nodes.shape) + (1,) + tuple(x.table.inner))
                        .reshape(tuple(nodes.shape) + tuple(x.table.inner)))
        pairs = np.empty(tuple(nodes.shape) + (2,), dtype=object)
        pairs[..., 0] = Lane()
        pairs[..., 1] = nodes.elems
        return Swapped(scatter_nd_table(it, x.table, Sym(pairs, "int64"), upd, attr(node, "reduction", "none")))
    if op == "Identity":
        return x
    raise Refusal(f"op {op} on the forest's table with its tree and node axes swapped is not supported")


def _scatter_nd_source(it, node, args, lookup):
    """h[:, v] = r as ScatterND at index tuples (b, v) with b = torch.arange(B)."""
    data, indices, updates = args
    if isinstance(data, Swapped):
        return _swapped_source(it, node, args, lookup)
    if not _lane_table(data):
        return None
    if not isinstance(indices, Laned):
        if isinstance(updates, Laned):
            raise Refusal("a ScatterND of per-tree rows into the forest's table at indices that do not name the "
                          "tree")
        return None
    idx = indices.value if isinstance(indices.value, Sym) else it.sym(indices.value, "the ScatterND index")
    if indices.axis == len(idx.shape) - 1 or idx.shape[-1] < 2:
        raise Refusal("a ScatterND into the forest's table whose index tuples do not name the tree")
    if any(ix.as_index(e) != Lane() for e in idx.elems[..., 0].reshape(-1)):
        raise Refusal("a ScatterND into the forest's table at another tree's rows (the tree index is not "
                      "torch.arange(B))")
    upd = updates
    if isinstance(updates, Laned):
        if updates.axis != indices.axis:
            raise Refusal("a ScatterND whose rows and indices have their batch axes apart")
        upd = updates.value
    else:
        shape = static_shape(updates)
        if indices.axis < len(shape) and shape[indices.axis] != 1:
            raise Refusal("a ScatterND of rows shared by the trees along the batch axis")
    out = _inner(it, node, [data, idx, upd], lookup)
    return out


def _has_lane_term(atom) -> bool:
    """True when an affine atom is the lane or a product with it (an index that is not b * N + u)."""
    return atom == Lane() or (isinstance(atom, ir.IBinary) and atom.op == "mul" and Lane() in (atom.a, atom.b))


def start_table(name: str) -> str:
    """The table holding, for each row written in this iteration, its value before the write."""
    return f"{name}_start"


def _scatter_elements_source(it, node, args, lookup):
    """h.index_copy_(1, v, r) / h.scatter_(1, idx, r): ScatterElements on the node axis of the forest's table at
    per-tree indices: element (b, i, c) goes to h[b, idx[b, i, c], c]."""
    data, indices, updates = args
    if not _lane_table(data):
        return None
    rank = 2 + len(data.inner)
    if norm_axis(attr(node, "axis", 0), rank) != 1 or not isinstance(indices, Laned) or indices.axis != 0:
        raise Refusal("a ScatterElements into the forest's table other than along its node axis at per-tree indices")
    if isinstance(updates, Laned) and updates.axis != 0:
        raise Refusal("a ScatterElements whose rows and indices have their batch axes apart")
    idx = it.sym(indices.value, "the ScatterElements index")
    if len(idx.shape) != rank or any(a > b for a, b in zip(idx.shape[2:], data.inner)):
        raise Refusal(f"ScatterElements indices of shape {list(idx.shape)}")
    from .ops_tables import _row_elements, _update_element, flat_row, write_elements
    upd = _row_elements(it, _unwrap(updates), tuple(idx.shape))
    reduction = attr(node, "reduction", "none")
    groups = {}
    for flat, pos in enumerate(np.ndindex(*idx.shape)):
        row_e = flat_row(data, (Lane(), ix.as_index(idx.elems[pos])))
        col = int(np.ravel_multi_index(pos[2:], data.inner)) if data.inner else 0
        groups.setdefault(row_e, []).append((col, _update_element(upd, flat), reduction))
    it.shared.setdefault("table_access", set()).add("lane")
    for row_e, elems in groups.items():
        data = write_elements(data, row_e, elems)
    return [data]


def _flat_read(it, data: Flat, indices: Laned):
    """h.flatten(0, 1)[b * N + u]: Gather semantics over all B * N rows. Row b * N + u is tree b's own row u when
    0 <= u < N; otherwise another tree's (or an error, out of range), read as it was when this iteration began."""
    from .ops_tables import read_table, table_rows
    table = data.base
    idx = it.sym(indices.value, "the Gather index")
    n = ir.Length(None, 1)
    rows_total = table_rows(table)
    parts = []
    for e in idx.elems.reshape(-1):
        e = ix.as_index(e)
        terms, _ = ix.affine(e)
        u = ix.ibin("sub", e, ix.ibin("mul", Lane(), n))
        if terms.get(ix.ibin("mul", Lane(), n)) != 1 or any(_has_lane_term(a) for a in ix.affine(u)[0]):
            raise Refusal("a read of the flattened forest table at a row that is not b * N + (a node index)",
                          hint="read h[bidx, u] with bidx = torch.arange(B)")
        own = ix.band(ix.cmp("ge", u, ix.const(0)), ix.cmp("lt", u, n))
        local = read_table(table, ix.ibin("add", ix.ibin("mul", Lane(), n), ix.iselect(own, u, ix.const(0))))
        if table.writes:
            raise Refusal("a read of the flattened forest table after this iteration wrote it (another tree's row "
                          "may have been written or not)")
        ok = ix.band(ix.cmp("ge", e, ix.ibin("sub", ix.const(0), rows_total)), ix.cmp("lt", e, rows_total))
        wrapped = ir.Guard(ok, ix.iselect(ix.cmp("lt", e, ix.const(0)), ix.ibin("add", e, rows_total), e),
                           "index out of range for the flattened forest table")
        other = ir.Select(Crossed(table.name, wrapped), ir.ChildState(start_table(table.name), wrapped, False,
                                                                      table.width),
                          ir.ChildState(table.name, wrapped, False, table.width), table.width)
        parts.append(ir.Select(own, local, other, table.width) if own != ir.BConst(True) else local)
        it.shared.setdefault("crossed", set()).add(table.name)
    return Laned(Row(ir.concat(parts), tuple(idx.shape) + tuple(data.shape)), indices.axis)


SOURCES = {"Gather": _gather_source, "GatherND": _gather_nd_source, "GatherElements": _gather_elements_source,
           "ScatterND": _scatter_nd_source, "ScatterElements": _scatter_elements_source, "Slice": lambda it, node, args, lookup: (
               _view_source(it, node, args, lookup) if not isinstance(args[0], Laned) else None),
           "Transpose": lambda it, node, args, lookup: (
               _view_source(it, node, args, lookup) if not isinstance(args[0], Laned) else None),
           "Concat": _concat_source, "Expand": _op_expand, "ConstantOfShape": _op_constant_of_shape, "Range": _op_range, "Shape": _op_shape,
           "Reshape": _op_reshape}

LANE_OPS = {"Transpose": _op_transpose, "Unsqueeze": _op_unsqueeze, "Squeeze": _op_squeeze, "Reshape": _op_reshape,
            "Flatten": _op_flatten, "Expand": _op_expand, "Concat": _op_concat, "Split": _op_split,
            "Slice": _op_slice, "Tile": _op_tile, "Softmax": _op_softmax, "LogSoftmax": _op_softmax,
            "LayerNormalization": _op_layer_norm, "CumSum": _op_cumsum, "MatMul": _op_matmul, "Gemm": _op_gemm,
            "ArgMax": _op_arg, "ArgMin": _op_arg, **{op: _op_reduce for op in REDUCE_OPS}}


def _gather_laned(it, node, args, lookup):
    """A Gather from a per-tree value at constant or structure indices (not along the batch axis), or from a value
    shared by the trees (a constant table, an embedding) at per-tree indices."""
    data, indices = args
    if isinstance(indices, Laned) and isinstance(data, Laned):
        raise Refusal("a Gather from a per-tree value at per-tree indices")
    if isinstance(data, Laned):
        axis = norm_axis(attr(node, "axis", 0), _rank(data))
        if axis == data.axis:
            raise Refusal("a Gather along the batch axis (it would mix trees)")
        k = len(static_shape(indices)) if not isinstance(indices, Array) else 0
        out = _inner(it, node, [data.value, indices], lookup)
        return [_wrap(out[0], data.axis if data.axis < axis else data.axis - 1 + k)]
    if isinstance(data, (Table, Flat, Partial)):
        raise Refusal(f"a Gather from {describe(data)} at per-tree indices other than the forest's own rows")
    axis = norm_axis(attr(node, "axis", 0), len(static_shape(data)) if not isinstance(data, Array) else
                     len(data.shape or (0,)))
    out = _inner(it, node, [data, indices.value], lookup)
    return [_wrap(out[0], axis + indices.axis)]


LANE_OPS["Gather"] = _gather_laned


# ---- the recognizers' part: one position per (iteration, tree) -----------------------------------------------------


def flatten_lanes(interp, cases, tables, trip, extra_state=()):
    """(cases, tables, trip) of a padded forest's loop with each (iteration k, tree b) one position p = k * B + b.
    `extra_state`: what else the loop carries per iteration (host state, carried vectors, emits), refused with a
    forest. Unchanged when the body computed no per-tree value."""
    if not interp.shared.get("lanes"):
        return cases, tables, trip
    if "grid" in interp.shared.get("table_access", set()):
        raise Refusal("the forest's table is read or written both per tree (h[:, v], h[bidx, u]) and at one "
                      "tree's rows (h[i, j])")
    for what in extra_state:
        raise Refusal(f"a padded forest's loop that also carries {what}")
    state = [t for t in tables if t.kind == "state"]
    if any(t.lead != 2 for t in state):
        raise Refusal("a padded forest's loop with a state table that is not [B, N, ...]")
    trees = ir.Length(None, 0)
    checks = ir.BConst(True)
    for name, arr in sorted(interp.arrays.items()):
        if arr.lead == 2 and lane_array(arr):
            checks = ix.band(checks, ix.cmp("eq", ir.Length(name, 0), trees))
    lane = ix.ibin("mod", ir.Iter(), trees)
    if checks != ir.BConst(True):
        lane = ir.Guard(checks, lane, "the forest's inputs and tables have different numbers of trees (their first "
                                      "dimension)")
    own = _own_tree_guards(cases)  # the lane within B (every array's B is the tables', checked): the lane itself
    if own:
        cases = tuple(c.with_roots(ix.substitute(c.roots(), own)) for c in cases)
    crossed = interp.shared.get("crossed", set())
    if crossed:
        cases, tables = _resolve_crossed(cases, tables, crossed)
    mapping = {ir.Iter(): ix.ibin("floordiv", ir.Iter(), trees), Lane(): lane}
    cases = tuple(c.with_roots(ix.substitute(c.roots(), mapping)) for c in cases)
    for c in cases:
        if any(isinstance(x, (Lane, Crossed)) for x in ir.walk(c.roots())):
            raise Refusal("a per-tree value outside the rows the forest's steps compute")
    return cases, tables, ix.ibin("mul", trip, trees)


def _own_tree_guards(cases) -> dict:
    """{Gather-semantics index of the lane in a dimension of B trees (ops_tables._within): Lane}."""
    out = {}
    for x in ir.walk([r for c in cases for r in c.roots()]):
        if isinstance(x, ir.Guard) and isinstance(x.value, ir.ISelect) and x.value.b == Lane():
            size = x.value.a.b if isinstance(x.value.a, ir.IBinary) else None
            if isinstance(size, ir.Length) and size.axis == 0 and \
                    x.value == ix.iselect(ix.cmp("lt", Lane(), ix.const(0)), ix.ibin("add", Lane(), size), Lane()) and \
                    x.pred == ix.band(ix.cmp("ge", Lane(), ix.ibin("sub", ix.const(0), size)),
                                      ix.cmp("lt", Lane(), size)):
                out[x] = Lane()
    return out


def _resolve_crossed(cases, tables, crossed):
    """Reads of another tree's row (`Crossed`): that tree wrote the row earlier in this iteration iff it comes
    before this one (b' < b) and its step's row is that row; then the read takes the row's value from before the
    write, which every step now also keeps, in the table's `_start` copy."""
    targets = {c.target for c in cases if c.target is not None}
    if len(targets) != 1 or any(c.target is None for c in cases):
        raise Refusal("a read of another tree's row in a step whose row differs between its cases",
                      hint="read h[bidx, u] with bidx = torch.arange(B): every tree reads its own rows")
    target = targets.pop()
    found = {x for c in cases for x in ir.walk(c.roots()) if isinstance(x, Crossed)}
    mapping = {}
    n = ir.Length(None, 1)
    terms, c0 = ix.affine(target)
    column = ix.from_affine({a: k for a, k in terms.items() if a != ix.ibin("mul", Lane(), n)}, c0)
    for x in found:
        other = ix.ibin("floordiv", x.row, n)
        if terms.get(ix.ibin("mul", Lane(), n)) == 1 and not ix.mentions(column, Lane()):
            # every tree writes its row b * N + column: tree b' wrote this row iff its column is the row's
            wrote = ix.cmp("eq", ix.ibin("mod", x.row, n), column)
        else:
            [written] = ix.substitute([target], {Lane(): other})
            wrote = ix.cmp("eq", written, x.row)
        mapping[x] = ix.band(ix.cmp("lt", other, Lane()), wrote)
    out = []
    for c in cases:
        [c] = [c.with_roots(ix.substitute(c.roots(), mapping))] if mapping else [c]
        copies = tuple((start_table(t), ir.ChildState(t, c.target, False, _width(tables, t)))
                       for t in sorted(crossed) if any(w[0] == t for w in c.writes))
        out.append(replace(c, writes=c.writes + copies))
    extra = tuple(replace(t, name=start_table(t.name), output="") for t in tables if t.name in crossed)
    return tuple(out), tuple(tables) + extra


def _width(tables, name) -> int:
    return next(t.width for t in tables if t.name == name)

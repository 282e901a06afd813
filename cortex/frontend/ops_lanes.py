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
through a copy of each row's value before the step wrote it). The reads and writes of the forest's tables and
inputs, and the recognizers' part, are in forest.py."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..ir import index as ix
from ..ir import nodes as ir
from .interpreter import attr
from .operands import axes_of, known_ints, norm_axis, static_shape
from .values import Array, Choice, Flat, Known, Partial, Refusal, Sym, Table, describe

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


def lane_count(it, e, any_rank: bool = False) -> bool:
    """True when e is B: the first dimension of the forest's tables or of a [B, N, ...] runtime tensor (with
    `any_rank`, of any runtime tensor: the count of a torch.arange(B) such as roots.size(0)); the kernel checks that
    it is the tables' (forest.flatten_lanes)."""
    plain = _plain_dim(e)
    if plain is not e and isinstance(e, ir.IBinary) and e.op == "max":
        it.shared["lanes_at_least_one"] = True  # max(B, 1): the original fails with no tree (forest.flatten_lanes)
    e = plain
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
        if any_rank and isinstance(array, Array) and array.shape and not isinstance(array.shape[0], int):
            it.shared.setdefault("lane_lengths", set()).add(e)
            return True
        return False
    it.use_array(array, lead=2)
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
    from .ops_sets import IntRow, SetField
    x = v.value if isinstance(v, Laned) else v
    if isinstance(x, SetField):
        return x.rank
    return len(static_shape(x.row if isinstance(x, IntRow) else x))


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
    from . import forest  # noqa: F401 - registers the reads and writes of the forest's tables and inputs
    op = node.op_type
    refused = next((a for a in args if isinstance(a, LaneRefused)), None)
    if refused is not None:
        raise Refusal(refused.message)
    if any(isinstance(a, LaneRange) for a in args):
        for a in args:
            if isinstance(a, LaneRange) and not lane_count(it, a.count, any_rank=True):  # registers B (checked)
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
    mask = _forest_mask(it, node, args)
    if mask is not None:
        _fire(it)
        return [mask]
    args = _forest_rows(it, node, args)
    if not any(isinstance(a, LANE_VALUES) for a in args):
        whole = next((a for a in args if lane_array(a)), None)
        if whole is not None and op in BROADCAST:
            raise Refusal(f"{op} of the whole of runtime tensor {whole.name} (every node of every tree: a child set "
                          f"over a padded forest) is not supported", hint="read one node of every tree (x[:, v]), "
                          "or batch the trees into one forest (node ids offset per tree)")
        return None
    _fire(it)
    if any(isinstance(a, Swapped) for a in args):
        return [forest.swapped_op(it, node, [next(a for a in args if isinstance(a, Swapped))], lookup)] \
            if op == "Identity" else forest.swapped_op(it, node, args, lookup)
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


# ---- child sets of a padded forest ------------------------------------------------------------------------------


def _forest_mask(it, node, args):
    """parent == v over a padded forest's parent arrays [B, N], v one position (shared by the trees, or per tree
    [B, 1]): one tree's mask over its own rows, a child set whose members are rows b * N + u of the flattened
    tables (ops_sets follows it as any child set; a mask over the table's rows, `mask @ h`, `h * mask`)."""
    if node.op_type != "Equal":
        return None
    from .ops_sets import Members, SetField, _key_scalar
    from .values import INT_DTYPES
    for a, k in ((args[0], args[1]), (args[1], args[0])):
        if not (lane_array(a) and len(a.shape) == 2 and a.read_dtype in INT_DTYPES):
            continue
        if isinstance(k, Laned):  # a key per tree: [B, 1] lines up with the trees
            if k.axis != 0 or _rank(k) != 2:
                raise Refusal(f"Equal of {a.name} [B, N] with a per-tree value whose batch axis is not its first "
                              f"of two")
            k = k.value
        elif isinstance(k, LANE_VALUES) or len(static_shape(k)) > 2:
            return None
        key = _key_scalar(k)
        if key is None:
            return None
        it.use_array(a, lead=2)
        return Laned(SetField(Members("forest_parent", (a.name,), (key, Lane()), a.name), "mask", "pred", lead=1), 0)
    return None


def _forest_rows(it, node, args):
    """args with the forest's tables [B, N, ...] used whole (beside a tree's child-set mask, in a product with
    weights, in math within each row) as one tree's value over its rows: row b * N + u at position u."""
    from .ops_elementwise import UNARY
    from .ops_sets import SetField, _all_members, _member_row
    tables = [k for k, a in enumerate(args) if isinstance(a, Table) and a.lead == 2]
    if not tables:
        return args
    with_set = any(isinstance(a, Laned) and isinstance(a.value, SetField) for a in args)
    op = node.op_type
    product = op in ("MatMul", "Gemm") and tables == [0] and len(args) > 1 and isinstance(args[1], Known)
    present = [a for a in args if a is not None]
    unary = op in UNARY and op != "Identity" and len(present) == 1
    reduce = op in REDUCE_OPS and tables == [0] and _reduces_within_rows(it, node, args)
    layout = op == "Unsqueeze" and tables == [0]  # h.unsqueeze(1): the rows beside a mask with a unit axis
    if not (with_set or product or unary or reduce or layout):
        return args
    out = list(args)
    for k in tables:
        t = args[k]
        out[k] = Laned(SetField(_all_members(), "all", "rows", _member_row(it, t), inner=tuple(t.inner), lead=1), 0)
    return out


def _reduces_within_rows(it, node, args) -> bool:
    axes = known_ints(it, args[1], "reduce axes").reshape(-1).tolist() if len(args) > 1 and args[1] is not None \
        else attr(node, "axes")
    rank = 2 + len(args[0].inner)
    return bool(axes) and all(a % rank >= 2 for a in axes)


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
    like = _shaped_like_set(it, node, args, lookup)
    if like is not None:
        return like
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
    like = _shaped_like_set(it, node, args, lookup)
    if like is not None:
        return like
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
    shaped = _set_shape_of(it, node, x)
    if shaped is not None:
        return [shaped]
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


def _set_shape_of(it, node, x):
    """Shape of one tree's child-set value (zeros_like(alpha)): the set's shape marker, per tree, which only an
    Expand or a ConstantOfShape to that shape reads (ops_sets.SetShape)."""
    from .ops_sets import SetField
    if not (isinstance(x, Laned) and isinstance(x.value, SetField)):
        return None
    return Laned(_inner(it, node, [x.value], None)[0], x.axis)


def _shaped_like_set(it, node, args, lookup):
    """Expand(c, Shape(x)) or ConstantOfShape(Shape(x)) of one tree's child-set value x: a value like x, per tree."""
    from .ops_sets import SetShape
    k = 1 if node.op_type == "Expand" else 0
    shape = args[k] if len(args) > k else None
    if not (isinstance(shape, Laned) and isinstance(shape.value, SetShape)):
        return None
    rest = [_unwrap(a) for a in args]
    out = _inner(it, node, rest, lookup)
    return [_wrap(out[0], shape.axis)]


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


def _op_recurrent(it, node, args, lookup):
    """ONNX LSTM / GRU / RNN (nn.LSTMCell on a batch of trees' rows): the batch axis of X and of the initial states
    is the op's own batch axis, each row computed alone."""
    layout = int(attr(node, "layout", 0))
    batch = 0 if layout else 1
    for k, a in enumerate(args):
        if not isinstance(a, Laned):
            continue
        if k == 0 and a.axis == batch or (k >= 5 and k != 7 and a.axis == (0 if layout else 1)):
            continue
        raise Refusal(f"a {node.op_type} whose input {k} is per tree along an axis other than its batch axis")
    if not isinstance(args[0], Laned):
        raise Refusal(f"a {node.op_type} over values shared by the trees with per-tree states")
    for k, a in enumerate(args):
        if k >= 5 and k != 7 and a is not None and not isinstance(a, Laned) and \
                static_shape(a)[0 if layout else 1] != 1:
            raise Refusal(f"a {node.op_type} whose initial state has several rows along the batch axis")
    outs = _inner(it, node, [_unwrap(a) for a in args], lookup)
    axes = [0, 0, 0] if layout else [2, 1, 1]
    return [_wrap(o, q) for o, q in zip(outs, axes)]


SOURCES = {"Expand": _op_expand, "ConstantOfShape": _op_constant_of_shape, "Range": _op_range, "Shape": _op_shape,
           "Reshape": _op_reshape}  # forest.py adds the reads and writes of the forest's tables and inputs

LANE_OPS = {"Transpose": _op_transpose, "Unsqueeze": _op_unsqueeze, "Squeeze": _op_squeeze, "Reshape": _op_reshape,
            "Flatten": _op_flatten, "Expand": _op_expand, "Concat": _op_concat, "Split": _op_split,
            "Slice": _op_slice, "Tile": _op_tile, "Softmax": _op_softmax, "LogSoftmax": _op_softmax,
            "LayerNormalization": _op_layer_norm, "CumSum": _op_cumsum, "MatMul": _op_matmul, "Gemm": _op_gemm,
            "ArgMax": _op_arg, "ArgMin": _op_arg, "LSTM": _op_recurrent, "GRU": _op_recurrent, "RNN": _op_recurrent, **{op: _op_reduce for op in REDUCE_OPS}}


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

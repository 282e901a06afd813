"""Shape and layout ONNX ops: Shape, Size, Reshape, Transpose, (Un)Squeeze, Flatten, Expand, Tile, Slice, Concat,
Split, Pad, and the constant makers (ConstantOfShape, Range, EyeLike, SequenceConstruct). Each is one numpy function
applied by `layout.rearrange` to a value of any kind; state tables and runtime tensors only take part where a
recursion reads or writes them (ops_tables.py: the Slice and Concat of a table, every Gather and Scatter)."""
from __future__ import annotations

import numpy as np

from onnx import numpy_helper

from ..ir import index as ix
from ..ir import nodes as ir
from .interpreter import attr, handler
from .layout import onnx_reshape, rearrange, rearrange_many
from .operands import axes_of, known_ints, norm_axis, static_shape
from .ops_tables import concat_tables, flatten_rows, reshape_part, slice_rows, slice_table
from .values import Array, Flat, Known, Partial, Refusal, Row, Seq, Sym, Table, TableSlice, describe, shape_of


# ---- Shape, Size -------------------------------------------------------------------------------


def symbolic_shape(v):
    """The shape as a list of index expressions (a size the run gives where it is dynamic: a runtime tensor's
    dimension, the state tables' rows)."""
    if isinstance(v, (Known, Row, Sym)):
        return [ix.const(d) for d in static_shape(v)]
    if isinstance(v, Table):
        return [ir.Length(None, k) for k in range(v.lead)] + [ix.const(d) for d in v.inner]
    if isinstance(v, Array) and v.shape is not None and v.columns is None:
        return [ix.const(d) if isinstance(d, int) and k not in v.checked else ir.Length(v.name, k)
                for k, d in enumerate(v.shape)]
    if isinstance(v, Flat):
        rows = ix.const(1)
        for d in symbolic_shape(v.base)[:v.lead]:
            rows = ix.ibin("mul", rows, d)
        return [rows] + [ix.const(d) if d is not None else _flat_rest(v) for d in v.shape]
    if isinstance(v, Partial):
        full = symbolic_shape(v.base)
        left = full[len(v.prefix):]
        return [ix.const(d) for d in v.shape[:len(v.shape) - len(left)]] + left
    raise Refusal(f"the shape of {describe(v)} is unknown")


def _flat_rest(v: Flat):
    """The size of the merged dimensions after a Flatten, where only the run knows it."""
    size = ix.const(1)
    for d in symbolic_shape(v.base)[v.lead:]:
        size = ix.ibin("mul", size, d)
    return size


def _ints_sym(exprs):
    elems = np.empty(len(exprs), dtype=object)
    elems[:] = exprs
    return Sym(elems, "int64")


@handler("Shape")
def op_shape(it, node, args, lookup):
    dims = symbolic_shape(args[0])
    start, end = attr(node, "start", 0), attr(node, "end", None)
    dims = dims[slice(start, end)]
    if all(isinstance(d, ir.IConst) for d in dims):
        return Known(np.array([d.value for d in dims], dtype=np.int64))
    return _ints_sym(dims)


@handler("Size")
def op_size(it, node, args, lookup):
    acc = ix.const(1)
    for d in symbolic_shape(args[0]):
        acc = ix.ibin("mul", acc, d)
    if isinstance(acc, ir.IConst):
        return Known(np.array(acc.value, dtype=np.int64))
    out = np.empty((), dtype=object)
    out[()] = acc
    return Sym(out, "int64")


# ---- reshaping ---------------------------------------------------------------------------------


def _same_table_shape(v, target):
    if isinstance(v, Table) and len(target) == 1 + len(v.inner):
        return all(isinstance(t, ir.Length) or (isinstance(t, ir.IConst) and t.value in (-1, 0)) for t in target[:1]) \
            and all(isinstance(t, ir.IConst) and (t.value == d or (t.value == -1)) for t, d in zip(target[1:], v.inner))
    return False


@handler("Reshape")
def op_reshape(it, node, args, lookup):
    x, shape = args[0], args[1]
    if isinstance(x, Table) and isinstance(shape, Sym) and _same_table_shape(x, list(shape.elems.reshape(-1))):
        return x
    if isinstance(x, Table) and isinstance(shape, Known) and \
            [int(d) for d in shape.value.reshape(-1)][1:] == list(x.inner) and int(shape.value.reshape(-1)[0]) in (-1, 0):
        return x if x.lead == 1 or int(shape.value.reshape(-1)[0]) == 0 else flatten_rows(x, x.lead)
    if isinstance(x, Partial):
        dims = symbolic_shape(x)
        allowzero = bool(attr(node, "allowzero", 0))
        target = [dims[k] if not allowzero and t == ix.const(0) else t for k, t in
                  enumerate(ix.as_index(e) for e in it.sym(shape, "the Reshape target").elems.reshape(-1))]
        return reshape_part(x, dims, target)
    target = known_ints(it, shape, "the Reshape target")
    current = static_shape(x)
    new = onnx_reshape(current, target.reshape(-1), bool(attr(node, "allowzero", 0)))
    return rearrange(x, lambda a: a.reshape(new))


@handler("Flatten")
def op_flatten(it, node, args, lookup):
    x = args[0]
    if (isinstance(x, Table) and x.lead > 1) or (isinstance(x, Array) and shape_of(x) is None):
        rank = x.lead + len(x.inner) if isinstance(x, Table) else len(x.shape or ())
        axis = int(attr(node, "axis", 1))
        return flatten_rows(x, axis + rank if axis < 0 else axis)
    current = static_shape(args[0])
    rank = len(current)
    axis = int(attr(node, "axis", 1))
    if not -rank <= axis <= rank:  # Flatten's axis is in [-r, r]: a negative one counts from r, not r + 1
        raise Refusal(f"Flatten axis {axis} is out of range for rank {rank}")
    axis = axis + rank if axis < 0 else axis
    new = (int(np.prod(current[:axis], dtype=np.int64)), int(np.prod(current[axis:], dtype=np.int64)))
    return rearrange(args[0], lambda a: a.reshape(new))


@handler("Squeeze")
def op_squeeze(it, node, args, lookup):
    if isinstance(args[0], Partial):
        dims = symbolic_shape(args[0])
        axes = {norm_axis(a, len(dims)) for a in axes_of(it, node, args, 1) or
                [k for k, d in enumerate(dims) if d == ix.const(1)]}
        return reshape_part(args[0], dims, [d for k, d in enumerate(dims) if k not in axes])
    current = static_shape(args[0])
    axes = axes_of(it, node, args, 1)
    axes = [norm_axis(a, len(current)) for a in axes] if axes else [i for i, d in enumerate(current) if d == 1]
    if any(current[a] != 1 for a in axes):
        raise Refusal(f"Squeeze of a dimension that is not 1 in {list(current)}")
    new = tuple(d for i, d in enumerate(current) if i not in axes)
    return rearrange(args[0], lambda a: a.reshape(new))


@handler("Unsqueeze")
def op_unsqueeze(it, node, args, lookup):
    if isinstance(args[0], Partial):
        dims = symbolic_shape(args[0])
        axes = axes_of(it, node, args, 1) or []
        for a in sorted(norm_axis(a, len(dims) + len(axes)) for a in axes):
            dims.insert(a, ix.const(1))
        return reshape_part(args[0], symbolic_shape(args[0]), dims)
    current = static_shape(args[0])
    axes = axes_of(it, node, args, 1) or []
    rank = len(current) + len(axes)
    new = list(current)
    for a in sorted(norm_axis(a, rank) for a in axes):
        new.insert(a, 1)
    return rearrange(args[0], lambda a: a.reshape(new))


@handler("Transpose")
def op_transpose(it, node, args, lookup):
    rank = len(static_shape(args[0]))
    perm = attr(node, "perm") or list(reversed(range(rank)))
    if sorted(perm) != list(range(rank)):
        raise Refusal(f"Transpose perm {list(perm)} for rank {rank}")
    return rearrange(args[0], lambda a: np.transpose(a, perm))


@handler("Expand")
def op_expand(it, node, args, lookup):
    target = known_ints(it, args[1], "the Expand shape").reshape(-1)
    current = static_shape(args[0])
    try:
        shape = np.broadcast_shapes(tuple(current), tuple(int(d) for d in target))
    except ValueError:
        raise Refusal(f"Expand of {list(current)} to {list(target)}") from None
    return rearrange(args[0], lambda a: np.broadcast_to(a, shape).copy())


@handler("Tile")
def op_tile(it, node, args, lookup):
    repeats = known_ints(it, args[1], "Tile repeats").reshape(-1)
    return rearrange(args[0], lambda a: np.tile(a, tuple(int(r) for r in repeats)))


# ---- slicing -----------------------------------------------------------------------------------


def _slice_params(it, node, args):
    if it.opset < 10 and len(args) == 1:
        starts, ends = attr(node, "starts"), attr(node, "ends")
        axes = attr(node, "axes") or list(range(len(starts)))
        return list(starts), list(ends), list(axes), [1] * len(starts)
    starts = args[1]
    ends = args[2]
    axes = args[3] if len(args) > 3 else None
    steps = args[4] if len(args) > 4 else None
    return starts, ends, axes, steps


@handler("Slice")
def op_slice(it, node, args, lookup):
    x = args[0]
    starts, ends, axes, steps = _slice_params(it, node, args)
    if isinstance(x, Table):
        return slice_table(it, x, starts, ends, axes, steps)
    if isinstance(x, Array) and not all(isinstance(v, (list, Known)) or v is None for v in (starts, ends)):
        return slice_rows(it, x, starts, ends, axes, steps)
    starts = [int(s) for s in known_ints(it, starts, "Slice starts").reshape(-1)] if not isinstance(starts, list) else starts
    ends = [int(s) for s in known_ints(it, ends, "Slice ends").reshape(-1)] if not isinstance(ends, list) else ends
    rank = len(static_shape(x))
    if axes is None:
        axes = list(range(len(starts)))
    elif not isinstance(axes, list):
        axes = [int(a) for a in known_ints(it, axes, "Slice axes").reshape(-1)]
    if steps is None:
        steps = [1] * len(starts)
    elif not isinstance(steps, list):
        steps = [int(s) for s in known_ints(it, steps, "Slice steps").reshape(-1)]
    index = [slice(None)] * rank
    if not (len(starts) == len(ends) == len(axes) == len(steps)):
        raise Refusal("Slice with parameters of different lengths")
    for s, e, a, st in zip(starts, ends, axes, steps):
        if st == 0:
            raise Refusal("Slice with step 0")
        index[norm_axis(a, rank, "Slice axis")] = slice(s, e, st)
    return rearrange(x, lambda arr: arr[tuple(index)])


# ---- joining and splitting ---------------------------------------------------------------------


@handler("Concat")
def op_concat(it, node, args, lookup):
    axis = attr(node, "axis")
    values = [a for a in args if a is not None]
    ranks = {len(shape_of(v)) for v in values if shape_of(v) is not None}
    if len(ranks) > 1 or 0 in ranks:
        raise Refusal("Concat of tensors of different ranks (or scalars)")
    if ranks:
        axis = norm_axis(axis, ranks.pop(), "Concat axis")
    if any(isinstance(v, (Table, TableSlice)) for v in values):
        return concat_tables(it, values, axis)
    if all(isinstance(v, (Known, Sym)) for v in values) and any(isinstance(v, Sym) for v in values):
        return rearrange_many(it, values, lambda arrs: np.concatenate(arrs, axis=axis))
    return rearrange_many(it, values, lambda arrs: np.concatenate(arrs, axis=axis))


def split_sizes(it, node, args, length, num_outputs):
    if len(args) > 1 and args[1] is not None:
        sizes = [int(s) for s in known_ints(it, args[1], "Split sizes").reshape(-1)]
    elif attr(node, "split") is not None:
        sizes = [int(s) for s in attr(node, "split")]
    else:
        n = attr(node, "num_outputs", num_outputs)
        if n < 1:
            raise Refusal("Split into no outputs")
        chunk = -(-length // n)
        sizes = [min(chunk, length - i * chunk) for i in range(n)]
    if sum(sizes) != length or any(s < 0 for s in sizes):
        raise Refusal(f"Split sizes {sizes} do not add up to {length}")
    return sizes


@handler("Split")
def op_split(it, node, args, lookup):
    x = args[0]
    shape = static_shape(x)
    axis = norm_axis(attr(node, "axis", 0), len(shape), "Split axis")
    sizes = split_sizes(it, node, args, shape[axis], len(node.output))
    cuts = np.cumsum(sizes)[:-1]
    return rearrange_many(it, [x], lambda arrs: np.split(arrs[0], cuts, axis=axis), outputs=len(sizes))


@handler("Pad")
def op_pad(it, node, args, lookup):
    x = args[0]
    shape = static_shape(x)
    rank = len(shape)
    mode = attr(node, "mode", "constant")
    if it.opset < 11:
        pads, value, axes = list(attr(node, "pads")), float(attr(node, "value", 0.0)), None
    else:
        pads = [int(p) for p in known_ints(it, args[1], "Pad pads").reshape(-1)]
        value = args[2] if len(args) > 2 and args[2] is not None else Known(np.array(0, dtype=np.float32))
        axes = axes_of(it, node, args, 3)
    axes = list(range(rank)) if axes is None else [norm_axis(a, rank, "Pad axis") for a in axes]
    if len(pads) != 2 * len(axes):
        raise Refusal(f"Pad with {len(pads)} pads for {len(axes)} axes")
    width = [(0, 0)] * rank
    for k, a in enumerate(axes):
        width[a] = (pads[k], pads[k + len(axes)])
    if any(p < 0 for pair in width for p in pair):
        raise Refusal("Pad with negative pads")
    if mode != "constant":
        numpy_mode = {"reflect": "reflect", "edge": "edge", "wrap": "wrap"}.get(mode)
        if numpy_mode is None:
            raise Refusal(f"Pad mode {mode}")
        return rearrange(x, lambda a: np.pad(a, width, mode=numpy_mode))
    if isinstance(x, Row):
        if not isinstance(value, Known):
            raise Refusal("Pad with a computed value")
        r = it.row(x)
        fill = ir.Scalar(float(np.asarray(value.value).reshape(-1)[0]) if not isinstance(value, float) else value)
        source = ir.concat([r.expr, fill])
        ids = np.pad(np.arange(r.expr.width).reshape(shape), width, constant_values=r.expr.width)
        return Row(ir.take(source, ids.reshape(-1)), ids.shape, r.boolean)
    const = value if isinstance(value, Known) else Known(np.array(value))
    pad_elem = it.sym(const).scalar() if isinstance(x, Sym) else None
    if isinstance(x, Sym):
        out = np.empty(tuple(d + a + b for d, (a, b) in zip(shape, width)), dtype=object)
        out[...] = pad_elem
        out[tuple(slice(a, a + d) for d, (a, _) in zip(shape, width))] = x.elems
        return Sym(out, x.dtype)
    raise Refusal(f"Pad of {describe(x)}")


# ---- constants and sequences ------------------------------------------------------------------


@handler("ConstantOfShape")
def op_constant_of_shape(it, node, args, lookup):
    shape = known_ints(it, args[0], "the ConstantOfShape shape").reshape(-1)
    value = attr(node, "value")
    fill = numpy_helper.to_array(value).reshape(-1)[0] if value is not None else np.float32(0)
    return Known(np.full(tuple(int(d) for d in shape), fill, dtype=np.asarray(fill).dtype))


@handler("Range")
def op_range(it, node, args, lookup):
    start, limit, delta = (known_ints(it, a, "Range bounds") for a in args)
    return Known(np.arange(int(start), int(limit), int(delta), dtype=np.int64))


@handler("EyeLike")
def op_eye_like(it, node, args, lookup):
    shape = static_shape(args[0])
    return Known(np.eye(shape[0], shape[1], k=attr(node, "k", 0), dtype=it.float_dtype))


@handler("SequenceConstruct")
def op_sequence_construct(it, node, args, lookup):
    return Seq(tuple(args))

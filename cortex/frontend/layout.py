"""Layout ops over every kind of value, defined once: a rearrangement is a numpy function of an array. For a
constant it runs on the value, for structure values on the object array of expressions, and for a per-node row on
the array of element ids, whose result becomes a `Take` (simplified to slices where it is contiguous). So Reshape,
Transpose, Expand, Tile, Slice, Gather at constant indices, Concat, Split and Pad follow numpy's (= ONNX's) semantics
exactly, for all kinds alike."""
from __future__ import annotations

import numpy as np

from ..ir import nodes as ir
from .values import Known, Refusal, Row, Sym, describe


def element_ids(r: Row) -> np.ndarray:
    return np.arange(r.expr.width, dtype=np.int64).reshape(r.shape)


def _numpy(fn, *args):
    """numpy's rejection of a rearrangement (shapes that do not fit) is the ONNX op failing: a refusal."""
    try:
        return fn(*args)
    except (ValueError, IndexError, TypeError) as e:
        raise Refusal(f"the shapes do not fit: {e}") from None


def rearrange(v, fn):
    """fn(array) -> array applied to one value of any kind."""
    inner = fn
    fn = lambda a: _numpy(inner, a)  # noqa: E731
    if isinstance(v, Known):
        return Known(np.asarray(fn(v.value)))
    if isinstance(v, Sym):
        out = np.asarray(fn(v.elems), dtype=object)
        return Sym(out, v.dtype)
    if isinstance(v, Row):
        ids = np.asarray(fn(element_ids(v)))
        if ids.size == 0:
            raise Refusal("the result is empty")
        return Row(ir.take(v.expr, ids.reshape(-1)), tuple(ids.shape), v.boolean)
    raise Refusal(f"cannot rearrange {describe(v)}")


def rearrange_many(it, values, fn, outputs=1):
    """fn(list of arrays) -> array (or a list of `outputs` arrays), for several inputs of one kind: rows (any row
    makes every input a row), else structure values, else constants."""
    inner = fn
    fn = lambda arrs: _numpy(inner, arrs)  # noqa: E731
    if all(isinstance(v, Known) for v in values):
        out = fn([v.value for v in values])
        return [Known(np.asarray(o)) for o in out] if outputs != 1 else Known(np.asarray(out))
    if any(isinstance(v, Row) for v in values):
        rows = [it.row(v) for v in values]
        offsets = np.cumsum([0] + [r.expr.width for r in rows])
        source = ir.concat(r.expr for r in rows)
        ids = [element_ids(r) + off for r, off in zip(rows, offsets)]
        boolean = all(r.boolean for r in rows)
        out = fn(ids)
        results = [np.asarray(o) for o in (out if outputs != 1 else [out])]
        rows_out = []
        for o in results:
            if o.size == 0:
                raise Refusal("an empty result")
            rows_out.append(Row(ir.take(source, o.reshape(-1)), tuple(o.shape), boolean))
        return rows_out if outputs != 1 else rows_out[0]
    syms = [it.sym(v) for v in values]
    dtype = syms[0].dtype
    out = fn([s.elems for s in syms])
    if outputs != 1:
        return [Sym(np.asarray(o, dtype=object), dtype) for o in out]
    return Sym(np.asarray(out, dtype=object), dtype)


def onnx_reshape(shape, target, allowzero=False):
    target = [int(d) for d in target]
    for i, d in enumerate(target):
        if d == 0 and not allowzero:
            target[i] = shape[i]
    if -1 in target:
        known = int(np.prod([d for d in target if d != -1], dtype=np.int64))
        total = int(np.prod(shape, dtype=np.int64))
        if known == 0 or total % known:
            raise Refusal(f"cannot reshape {list(shape)} to {target}")
        target[target.index(-1)] = total // known
    if int(np.prod(target, dtype=np.int64)) != int(np.prod(shape, dtype=np.int64)):
        raise Refusal(f"cannot reshape {list(shape)} to {target}")
    return tuple(target)


def broadcast_row(it, v, shape) -> Row:
    """A float operand laid out for an elementwise op with output `shape` (numpy broadcasting): a single element
    stays width 1 (the IR broadcasts it), a matching layout stays as is, anything else becomes a Take."""
    r = it.row(v)
    if r.expr.width == 1 or tuple(r.shape) == tuple(shape):
        return r
    if int(np.prod(r.shape, dtype=np.int64)) == int(np.prod(shape, dtype=np.int64)) and \
            tuple(d for d in r.shape if d != 1) == tuple(d for d in shape if d != 1):
        return Row(r.expr, tuple(shape), r.boolean)  # only size-1 axes differ: the same flat layout
    if isinstance(r.expr, (ir.ConstVec, ir.Scalar)) and isinstance(v, Known):
        arr = np.broadcast_to(it.floats(v.value), shape)
        return it.row(Known(np.ascontiguousarray(arr)))
    ids = _numpy(np.broadcast_to, element_ids(r), shape)
    return Row(ir.take(r.expr, ids.reshape(-1)), tuple(shape), r.boolean)

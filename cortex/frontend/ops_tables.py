"""Reads and writes: Gather / GatherND / GatherElements at constant indices (a numpy function on a value of any
kind) and at structure indices (from state tables, runtime tensors and constant tables such as embeddings), and the
row writes of every form exporters emit (ScatterND, ScatterElements with any reduction, a partial-row write, a
torch.cat of table slices around one new row, a slice of a table). A table read after a write in the same step sees
that write.

Tables and runtime tensors with several dynamic leading dimensions (a grid [R, C, H]) are read and written one
index per dimension, each with ONNX Gather semantics in its own dimension (negative wraps, out of range is an
error, checked at run time): cell (i, j) is row i * C + j of the kernel's table. A runtime tensor whose row size the
model declares dynamic is read as a `Partial` until a product by a weight proves that size."""
from __future__ import annotations

import numpy as np

from ..ir import index as ix
from ..ir import nodes as ir
from .interpreter import DATA_DEPENDENT_HINT, attr, handler
from .layout import broadcast_row, rearrange, rearrange_many
from .operands import known_ints, norm_axis, static_shape
from ..ir.schema import safe_text
from .values import Array, Flat, INT_DTYPES, Known, Partial, Refusal, Row, Sym, Table, TableSlice, describe

INT_READABLE = INT_DTYPES + ("bool",)


def table_rows(table: Table) -> ir.IExpr:
    """The number of rows of the state tables (a grid's R * C)."""
    rows = ir.Length(None)
    for axis in range(1, table.lead):
        rows = ix.ibin("mul", rows, ir.Length(None, axis))
    return rows


def _norm(e, rows):
    """A table row index with Gather's negative wrap, for comparing two indices exactly."""
    if isinstance(e, ir.IConst) and e.value >= 0:
        return e
    return ix.iselect(ix.cmp("lt", e, ix.const(0)), ix.ibin("add", e, rows), e)


def same_row(a, b, table: Table = None, flat: bool = False) -> ir.BExpr:
    """True when row indices a and b name the same row; `flat`: a is an index over a grid's flattened rows."""
    if a == b:
        return ir.BConst(True)
    if table is not None and table.lead > 1 and not flat:  # a grid's rows, each already wrapped
        return ix.cmp("eq", a, b)
    rows = table_rows(table) if table is not None else ir.Length(None)
    return ix.cmp("eq", _norm(a, rows), _norm(b, rows))


def read_table(table: Table, e, flat: bool = False) -> ir.RExpr:
    """Row e of the table as this step sees it: the state before the step, unless this step wrote that row. `flat`:
    e indexes a grid's rows flattened (Gather semantics over all of them), not its already wrapped cells."""
    out = ir.ChildState(table.name, e, False, table.width)
    for target, row in table.writes:
        same = same_row(e, target, table, flat)
        if same == ir.BConst(True):
            out = row
        elif same != ir.BConst(False):
            out = ir.Select(same, row, out, table.width)
    return out


def write_table(table: Table, target, row: ir.RExpr) -> Table:
    """The table after writing `row` at `target` (a later write to the same row replaces the earlier one: the new
    row already includes what it kept of the old one)."""
    writes = tuple(w for w in table.writes if w[0] != target) + ((target, row),)
    return Table(table.name, table.inner, writes, table.lead)


def note_access(it, table: Table, first):
    """Records how a step reads or writes a table of several leading dimensions: at the tree a padded forest's
    step computes (its first index is the lane), or at rows named otherwise (a grid's cells); a forest's steps
    must do only the first (ops_lanes)."""
    from .ops_lanes import Lane
    if table.lead > 1:
        lane = first is not None and ix.as_index(first) == Lane()
        it.shared.setdefault("table_access", set()).add("lane" if lane else "grid")


def _elements(s: Sym):
    return list(s.elems.reshape(-1))


# ---- reads -------------------------------------------------------------------------------------


def gather_rows(it, data, idx: Sym):
    """data[idx] along axis 0 for runtime data: per-node rows (tables, float tensors, constant tables) or
    structure values (integer and bool tensors)."""
    elems = [ix.as_index(e) for e in _elements(idx)]
    if isinstance(data, Table):
        parts = [read_table(data, e) for e in elems]
        return Row(ir.concat(parts), tuple(idx.shape) + tuple(data.inner))
    if isinstance(data, Array) and data.columns is not None:
        return _gather_columns(it, data, idx, elems)
    if isinstance(data, Array):
        if data.shape is None:
            raise Refusal(f"runtime tensor {data.name} has an unknown rank")
        if len(data.shape) == 0:
            raise Refusal(f"Gather from the scalar {data.name}")
        if any(not isinstance(d, int) for d in data.shape[1:]):
            if idx.elems.size != 1 or idx.shape:
                raise Refusal(f"rows of runtime tensor {data.name}, whose rows have a size only the run knows, at "
                              f"{list(idx.shape)} structure indices", hint=DYNAMIC_ROW_HINT)
            return index_leading(it, data, elems[0])
        return array_rows(it, it.use_array(data), elems, tuple(idx.shape))
    if isinstance(data, Known) and data.value.dtype.kind == "f" and data.value.ndim >= 1:
        table = it.floats(data.value)
        flat = table.reshape(table.shape[0], -1)
        name = it.const_name(flat, "table", data.source)
        parts = [ir.ConstRow(name, e, flat.shape[1]) for e in elems]
        return Row(ir.concat(parts), tuple(idx.shape) + tuple(table.shape[1:]))
    if isinstance(data, (Row, Sym, Known)):
        return _select_element(it, data, idx)
    raise Refusal(f"Gather from {describe(data)} at a structure index")


def array_rows(it, data: Array, rows, lead_shape) -> object:
    """The rows (index expressions, Gather semantics over the array's rows) of a runtime tensor whose row shape is
    static, laid out in lead_shape: structure values of an integer or bool tensor, a float row otherwise."""
    inner = tuple(data.shape[data.lead:])
    if data.read_dtype in INT_READABLE:
        if len(inner) == 0:
            loads = [ir.Load(data.name, e) for e in rows]
        elif len(inner) == 1:
            loads = [ir.Load(data.name, e, column=k) for e in rows for k in range(inner[0])]
        else:
            raise Refusal(f"runtime integer tensor {data.name} of rank {len(data.shape)}")
        if data.read_dtype == "bool":
            loads = [ix.as_pred(x) for x in loads]
        out = np.empty(len(loads), dtype=object)
        out[:] = loads
        return Sym(out.reshape(tuple(lead_shape) + inner), data.read_dtype)
    if data.dtype == it.element:
        width = int(np.prod(inner, dtype=np.int64))
        parts = [ir.InputRow(data.name, e, width) for e in rows]
        return Row(ir.concat(parts), tuple(lead_shape) + inner)
    if data.dtype in ir.FLOAT_DTYPES:
        raise it.mixed_float(data.dtype, f"runtime tensor {data.name}")
    raise Refusal(f"runtime tensor {data.name} is {data.dtype}")


# ---- grids: several leading dimensions, one index each --------------------------------------------


DYNAMIC_ROW_HINT = ("index a grid one cell at a time (h[i, j] with scalar i, j), and give each row a static size (or "
                    "multiply it by a weight, which proves its size)")


def _leading_size(base, axis) -> ir.IExpr:
    return ir.Length(None, axis) if isinstance(base, Table) else ir.Length(base.name, axis)


def _what(base) -> str:
    if isinstance(base, Flat):
        base = base.base
    if isinstance(base, Table):
        return "a state table"
    return f"runtime tensor {base.name}" if safe_text(base.name) and len(base.name) < 200 else "a runtime tensor"


def _within(e, size, axis, what) -> ir.IExpr:
    """e as an index into a dimension of `size` with ONNX Gather semantics: a negative index counts from the end,
    one out of range is an error (checked at run time)."""
    ok = ix.band(ix.cmp("ge", e, ix.ibin("sub", ix.const(0), size)), ix.cmp("lt", e, size))
    wrapped = ix.iselect(ix.cmp("lt", e, ix.const(0)), ix.ibin("add", e, size), e)
    return ir.Guard(ok, wrapped, f"index out of range in dimension {axis} of {what}")


def flat_row(base, prefix) -> ir.IExpr:
    """The row of a grid (or of a runtime tensor with several leading dimensions) at one index per leading dimension:
    row-major, each index wrapped within its own dimension. With one leading dimension, the index itself (the kernel
    wraps it over the rows)."""
    if len(prefix) == 1:  # one leading dimension, or a grid's rows flattened: the kernel wraps over all rows
        return ix.as_index(prefix[0])
    row = ix.const(0)
    for axis, e in enumerate(prefix):
        size = _leading_size(base, axis)
        row = ix.ibin("add", ix.ibin("mul", row, size), _within(ix.as_index(e), size, axis, _what(base)))
    return row


def index_leading(it, data, e):
    """data[e] (a scalar structure index on axis 0) for a grid table, a part of one, or a runtime tensor whose rows
    have a size only the run knows: a row once every dynamic leading dimension is indexed, else a Partial."""
    if isinstance(data, Partial):
        if len(data.shape) != len(_base_shape(data.base)) - len(data.prefix):
            raise Refusal(f"Gather from {describe(data)}", hint=DYNAMIC_ROW_HINT)
        return part(it, data.base, data.prefix + (e,))
    return part(it, data, (e,))


def _base_shape(base) -> tuple:
    if isinstance(base, Flat):
        return (None,) + tuple(base.shape)
    return (None,) * base.lead + tuple(base.inner) if isinstance(base, Table) else tuple(base.shape)


def part(it, base, prefix, lead_shape=()):
    """base[prefix]: a table's row once prefix indexes its leading dimensions; a runtime tensor's row once what is
    left has a static size (then its rows are the first len(prefix) dimensions); else a Partial."""
    if isinstance(base, Table):
        note_access(it, base, prefix[0] if prefix else None)
        if len(prefix) < base.lead:
            return Partial(base, tuple(prefix), tuple(lead_shape) + _base_shape(base)[len(prefix):])
        if len(prefix) > base.lead:
            raise Refusal("an element of a state table's row at a structure index", hint=DATA_DEPENDENT_HINT)
        return Row(read_table(base, flat_row(base, prefix)), tuple(lead_shape) + tuple(base.inner))
    if isinstance(base, Flat) and len(prefix) > 1:
        raise Refusal(f"an element of a row of {describe(base)} at a structure index", hint=DATA_DEPENDENT_HINT)
    if isinstance(base, Flat) and isinstance(base.base, Table):
        note_access(it, base.base, None)
        return Row(read_table(base.base, ix.as_index(prefix[0]), flat=True), tuple(lead_shape) + tuple(base.shape))
    rest = tuple(_base_shape(base)[len(prefix):])
    if any(not isinstance(d, int) for d in rest):
        return Partial(base, tuple(prefix), tuple(lead_shape) + rest)
    return array_row(it, base, prefix, lead_shape, {})


def array_row(it, base: Array, prefix, lead_shape, proved: dict):
    """Row base[prefix] of a runtime tensor whose rows are its first len(prefix) dimensions; `proved`: {axis: size}
    for dimensions the model declares dynamic whose size a product proves (each read checks it first)."""
    if isinstance(base, Flat):
        data = it.use_array(base.base, lead=base.lead, proved=proved)
        if len(data.shape) != base.lead + len(base.shape):
            raise Refusal(f"{_what(data)} flattened to rows of several dimensions", hint=DYNAMIC_ROW_HINT)
    else:
        data = it.use_array(base, lead=len(prefix), proved=proved)
    row = flat_row(data, prefix)
    if data.checked:
        same = ir.BConst(True)
        for a in data.checked:
            same = ix.band(same, ix.cmp("eq", ir.Length(data.name, a), ix.const(data.shape[a])))
        sizes = ", ".join(f"dimension {a} must be {data.shape[a]}" for a in data.checked)
        row = ir.Guard(same, row, f"{_what(data)}: {sizes} where the model reads a row (a product by a weight "
                                  f"needs that size)")
    return array_rows(it, data, [row], tuple(lead_shape))


def resolve_part(it, v, size: int, what: str):
    """A Partial whose last dimension only the run knows, contracted with `size` elements (a product by a weight):
    the original fails unless that dimension is `size`, so that is its size (checked where the row is read)."""
    if not isinstance(v, Partial):
        return v
    base = v.base
    array = base.base if isinstance(base, Flat) else base
    left = _base_shape(base)[len(v.prefix):]
    if isinstance(array, Table) or v.shape[-1] is not None or any(d is None for d in v.shape[:-1]) or \
            any(d is None for d in left[:-1]) or left[-1] is not None:
        raise Refusal(f"{what} is {describe(v)}", hint=DYNAMIC_ROW_HINT)
    row = array_row(it, base, v.prefix, (), {len(array.shape) - 1: int(size)})
    return Row(row.expr, tuple(size if d is None else d for d in v.shape))


def reshape_part(v: Partial, dims, target) -> Partial:
    """A Reshape of a Partial (dims: its shape as index expressions) to `target` (index expressions; -1 for the
    rest) that only adds or removes dimensions of 1 (x[i, j].reshape(1, -1), .view(1, F) with F = x.size(2))."""
    one, rest = ix.const(1), ix.const(-1)
    if [d for d in dims if d != one] != [t for t in target if t not in (one, rest)] or \
            sum(t == rest for t in target) > 1:
        raise Refusal(f"a Reshape of {describe(v)} to {len(target)} dimensions", hint=DYNAMIC_ROW_HINT)
    return Partial(v.base, v.prefix, tuple(1 if t in (one, rest) else t.value if isinstance(t, ir.IConst) else None
                                           for t in target))


def _gather_columns(it, data: Array, idx: Sym, elems):
    """Rows of array[:, columns] (a Gather on axis 1 at constant indices, then one at structure indices)."""
    base = Array(data.name, data.dtype, data.base_shape, data.fill, data.view)
    full = gather_rows(it, base, idx)  # [*idx, K] for the whole rows
    cols = np.asarray(data.columns)
    k = len(idx.shape)
    return rearrange(full, lambda a: np.take(a, cols, axis=k))


def _select_element(it, data, idx: Sym):
    """data[idx] for a small per-node tensor and a structure index: a chain of selects over the rows of data
    (index out of range is an error in the original, so it is checked at run time)."""
    shape = static_shape(data)
    if not shape:
        raise Refusal("Gather from a scalar")
    n = shape[0]
    if n > 16 or idx.elems.size != 1:
        raise Refusal(f"Gather from {describe(data)} at a structure index", hint=DATA_DEPENDENT_HINT)
    e = ix.as_index(idx.scalar())
    k = ir.Guard(ix.band(ix.cmp("ge", e, ix.const(-n)), ix.cmp("lt", e, ix.const(n))),
                 ix.iselect(ix.cmp("lt", e, ix.const(0)), ix.ibin("add", e, ix.const(n)), e),
                 f"index out of range for a tensor of {n} rows")
    if isinstance(data, Row) or (isinstance(data, Known) and data.value.dtype.kind == "f"):
        r = it.row(data)
        w = r.expr.width // n
        out = ir.slice_row(r.expr, (n - 1) * w, n * w)
        for j in range(n - 2, -1, -1):
            out = ir.Select(ix.cmp("eq", k, ix.const(j)), ir.slice_row(r.expr, j * w, (j + 1) * w), out, w)
        return Row(out, tuple(idx.shape) + tuple(shape[1:]), r.boolean)
    s = it.sym(data)
    rows = [s.elems[j] for j in range(n)]
    out = np.empty(rows[0].shape if isinstance(rows[0], np.ndarray) else (), dtype=object)
    flat = []
    for pos in range(int(np.prod(shape[1:], dtype=np.int64))):
        vals = [(np.asarray(r).reshape(-1)[pos] if isinstance(r, np.ndarray) else r) for r in rows]
        acc = ix.as_index(vals[-1])
        for j in range(n - 2, -1, -1):
            acc = ix.iselect(ix.cmp("eq", k, ix.const(j)), ix.as_index(vals[j]), acc)
        flat.append(acc if not s.is_bool else ix.as_pred(acc))
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return Sym(out.reshape(tuple(idx.shape) + tuple(shape[1:])), s.dtype)


def _check_range(idx, dim, what):
    idx = np.asarray(idx)
    if idx.size and (idx.min() < -dim or idx.max() >= dim):
        raise Refusal(f"{what} index out of range (the original fails on every input)")
    return np.where(idx < 0, idx + dim, idx)


def gather_constant(x, indices, axis):
    shape = static_shape(x)
    axis = norm_axis(axis, len(shape), "Gather axis")
    if np.asarray(indices.value).dtype.kind not in "iu":
        raise Refusal("Gather with non-integer indices")
    idx = _check_range(np.asarray(indices.value), shape[axis], "Gather")
    return rearrange(x, lambda a: np.take(a, idx, axis=axis))


def _by_parts(data) -> bool:
    """True when data is read one leading index at a time: a grid table, a part of one, a runtime tensor whose rows
    have a size only the run knows."""
    return isinstance(data, (Partial, Flat)) or (isinstance(data, Table) and data.lead > 1) or \
        (isinstance(data, Array) and data.shape is not None and data.columns is None and
         any(not isinstance(d, int) for d in data.shape[1:]))


@handler("Gather")
def op_gather(it, node, args, lookup):
    data, indices = args
    axis = attr(node, "axis", 0)
    if isinstance(indices, Known) and isinstance(data, (Row, Sym, Known)):
        return gather_constant(data, indices, axis)
    idx = it.sym(indices, "the Gather index")
    if _by_parts(data):
        if axis == 0 and isinstance(data, Flat) and idx.shape:  # rows of the flattened grid
            rows = [index_leading(it, data, ix.as_index(e)) for e in idx.elems.reshape(-1)]
            if all(isinstance(r, Row) for r in rows):
                return Row(ir.concat(r.expr for r in rows), tuple(idx.shape) + tuple(rows[0].shape))
            if len(rows) == 1:  # one row whose size only the run knows
                return Partial(data, rows[0].prefix, tuple(idx.shape) + tuple(rows[0].shape))
        if axis != 0 or idx.shape:
            raise Refusal(f"Gather on axis {axis} at {list(idx.shape)} indices from {describe(data)}",
                          hint=DYNAMIC_ROW_HINT)
        return index_leading(it, data, ix.as_index(idx.scalar()))
    if axis != 0 and isinstance(data, Array) and isinstance(indices, Known) and data.columns is None and \
            data.shape is not None and len(data.shape) == 2 and axis % 2 == 1 and isinstance(data.shape[1], int):
        cols = np.asarray(indices.value).astype(np.int64)
        cols = np.where(cols < 0, cols + data.shape[1], cols)
        if cols.size and (cols.min() < 0 or cols.max() >= data.shape[1]):
            raise Refusal("Gather index out of range (the original fails on every input)")
        return Array(data.name, data.dtype, (data.shape[0],) + tuple(cols.shape), data.fill, data.view, cols,
                     tuple(data.shape))
    if axis != 0:
        shape = static_shape(data) if isinstance(data, (Row, Sym, Known)) else None
        if shape is not None:  # move the axis first, gather, move it back
            rank = len(shape)
            a = axis % rank
            moved = rearrange(data, lambda x: np.moveaxis(x, a, 0))
            got = gather_rows(it, moved, idx)
            k = len(idx.shape)
            return rearrange(got, lambda x: np.moveaxis(x, list(range(k)), list(range(a, a + k))))
        raise Refusal(f"Gather on axis {axis} of {describe(data)} at a structure index")
    return gather_rows(it, data, idx)


def gather_nd_runtime(it, data, indices):
    idx = it.sym(indices, "the GatherND index")
    if not idx.shape or idx.shape[-1] < 1:
        raise Refusal("GatherND indices of rank 0")
    k = idx.shape[-1]
    lead = idx.shape[:-1]
    tuples = idx.elems.reshape(-1, k)
    if _by_parts(data) and not isinstance(data, Partial):  # a grid: one index per leading dimension
        got = [_gather_tuple(it, data, [ix.as_index(e) for e in t], lead if len(tuples) == 1 else ())
               for t in tuples]
        if len(got) == 1 and isinstance(got[0], Partial):
            return got[0]
        if all(isinstance(g, Row) for g in got):
            return Row(ir.concat(g.expr for g in got), tuple(lead) + tuple(got[0].shape[len(lead) if len(got) == 1
                                                                                          else 0:]))
        raise Refusal(f"GatherND from {describe(data)} at {list(idx.shape)} indices", hint=DYNAMIC_ROW_HINT)
    if isinstance(data, (Table, Array)) or (isinstance(data, Known) and k == 1):
        first = Sym(tuples[:, 0].copy(), idx.dtype)
        rows = gather_rows(it, data, first)  # [n, ...inner]
        if k == 1:
            return _reshape_lead(rows, lead)
        rest = []
        for t in tuples:
            if not all(isinstance(x, ir.IConst) for x in t[1:]):
                raise Refusal("GatherND inside a row at a structure index", hint=DATA_DEPENDENT_HINT)
            rest.append([x.value for x in t[1:]])
        rest = np.array(rest, dtype=np.int64)
        return rearrange(rows, lambda a: np.stack([a[(j,) + tuple(r)] for j, r in enumerate(rest)])
                         .reshape(tuple(lead) + a.shape[k:]))
    raise Refusal(f"GatherND from {describe(data)} at a structure index")


def _reshape_lead(v, lead):
    shape = static_shape(v)
    return rearrange(v, lambda a: a.reshape(tuple(lead) + tuple(shape[1:])))


def gather_elements_runtime(it, data, indices, axis):
    idx = it.sym(indices, "the GatherElements index")
    if not isinstance(data, (Table, Array)) or axis != 0 or _by_parts(data):
        raise Refusal(f"GatherElements from {describe(data)} at a structure index")
    inner = tuple(data.inner) if isinstance(data, Table) else tuple(data.shape[1:])
    if len(idx.shape) != 1 + len(inner) or any(a > b for a, b in zip(idx.shape[1:], inner)):
        raise Refusal(f"GatherElements indices of shape {list(idx.shape)}")
    # element (i, j...) = data[idx[i, j...], j...]: one row read per distinct index, then the elements
    parts, cache = [], {}
    for pos in np.ndindex(*idx.shape):
        e = ix.as_index(idx.elems[pos])
        if e not in cache:
            one = np.empty(1, dtype=object)
            one[0] = e
            cache[e] = gather_rows(it, data, Sym(one, "int64"))
        row = cache[e]
        col = int(np.ravel_multi_index(pos[1:], inner)) if inner else 0
        parts.append((row, col))
    if isinstance(parts[0][0], Row):
        exprs = [ir.slice_row(r.expr, c, c + 1) for r, c in parts]
        return Row(ir.concat(exprs), tuple(idx.shape))
    elems = np.empty(len(parts), dtype=object)
    elems[:] = [r.elems.reshape(-1)[c] for r, c in parts]
    return Sym(elems.reshape(idx.shape), parts[0][0].dtype)


def flatten_rows(base, axis: int):
    """ONNX Flatten at `axis` of a grid table or a runtime tensor whose leading dimensions are dynamic: its rows, one
    index over the first `axis` dimensions (a table: exactly its leading ones)."""
    if isinstance(base, Table):
        if axis != base.lead:
            raise Refusal(f"Flatten at axis {axis} of a state table with {base.lead} leading dimensions",
                          hint=DYNAMIC_ROW_HINT)
        return Flat(base, axis, (base.width,))
    if base.shape is None or base.columns is not None or not 1 <= axis < len(base.shape):
        raise Refusal(f"Flatten at axis {axis} of {describe(base)}", hint=DYNAMIC_ROW_HINT)
    rest = base.shape[axis:]
    return Flat(base, axis, (int(np.prod(rest, dtype=np.int64)) if all(isinstance(d, int) for d in rest) else None,))


def _gather_tuple(it, data, index, lead_shape):
    """data[index...] for a grid (one structure index per dimension, as GatherND gives them)."""
    rest = list(index)
    base = data
    prefix = []
    depth = 1 if isinstance(base, Flat) else base.lead if isinstance(base, Table) else len(base.shape)
    while rest and len(prefix) < depth:
        prefix.append(rest.pop(0))
        got = part(it, base, tuple(prefix), lead_shape)
        if not isinstance(got, Partial):
            break
    for e in rest:  # components within the row: constants
        if not isinstance(e, ir.IConst):
            raise Refusal("GatherND inside a row at a structure index", hint=DATA_DEPENDENT_HINT)
        got = gather_constant(got, Known(np.array(e.value)), len(lead_shape))
    return got


@handler("GatherElements")
def op_gather_elements(it, node, args, lookup):
    data, indices = args
    axis = attr(node, "axis", 0)
    if isinstance(indices, Known) and isinstance(data, (Row, Sym, Known)):
        shape = static_shape(data)
        axis = norm_axis(axis, len(shape), "GatherElements axis")
        if np.asarray(indices.value).ndim != len(shape):
            raise Refusal("GatherElements indices of another rank")
        idx = _check_range(indices.value, shape[axis], "GatherElements")
        return rearrange(data, lambda a: np.take_along_axis(a, idx, axis=axis))
    return gather_elements_runtime(it, data, indices, axis)


def gather_nd_numpy(a, idx, batch_dims):
    if batch_dims:
        raise Refusal("GatherND with batch_dims")
    k = idx.shape[-1]
    flat = idx.reshape(-1, k)
    parts = [a[tuple(np.where(i < 0, i + np.array(a.shape[:k]), i))] for i in flat]
    return np.stack(parts).reshape(idx.shape[:-1] + a.shape[k:]) if parts else np.empty(idx.shape[:-1] + a.shape[k:], a.dtype)


@handler("GatherND")
def op_gather_nd(it, node, args, lookup):
    data, indices = args
    batch_dims = attr(node, "batch_dims", 0)
    if isinstance(indices, Known) and isinstance(data, (Row, Sym, Known)):
        idx = np.asarray(indices.value).astype(np.int64)
        return rearrange(data, lambda a: gather_nd_numpy(a, idx, batch_dims))
    if batch_dims:
        raise Refusal("GatherND with batch_dims")
    return gather_nd_runtime(it, data, indices)


# ---- writes ------------------------------------------------------------------------------------

REDUCTIONS = {"add": "add", "mul": "mul", "max": "max", "min": "min"}


def _combine(reduction, old, new):
    if reduction == "none":
        return new
    if reduction not in REDUCTIONS:
        raise Refusal(f"a write with reduction {reduction}")
    return ir.binary(REDUCTIONS[reduction], old, new)


def write_elements(table: Table, row_e, updates):
    """Writes elements of one row: updates = [(column within the row, element RExpr of width 1, reduction)].
    A write of every column in order is a whole-row write; anything else merges into the current row."""
    width = table.width
    cols = [c for c, _, _ in updates]
    if cols == list(range(width)) and all(red == "none" for _, _, red in updates):
        new = ir.concat(e for _, e, _ in updates)
        return write_table(table, row_e, _simplify_concat(new))
    old = read_table(table, row_e)
    current = [ir.slice_row(old, c, c + 1) for c in range(width)]
    for c, e, red in updates:
        current[c] = _combine(red, current[c], e)
    return write_table(table, row_e, _simplify_concat(ir.concat(current)))


def _simplify_concat(e):
    """Consecutive single elements of one row become that row's slice again."""
    if not isinstance(e, ir.Concat):
        return e
    parts, run = [], []

    def flush():
        if not run:
            return
        src, start = run[0]
        parts.append(ir.slice_row(src, start, start + len(run)))
        run.clear()

    for p in e.parts:
        if isinstance(p, ir.Slice) and p.width == 1:
            if run and run[-1][0] == p.x and run[-1][1] + 1 == p.start:
                run.append((p.x, p.start))
                continue
            flush()
            run.append((p.x, p.start))
            continue
        flush()
        parts.append(p)
    flush()
    return ir.concat(parts)


def _row_elements(it, updates, shape):
    """The update as a row laid out in `shape`, and a function giving its element at a flat position."""
    r = broadcast_row(it, updates, shape)
    return r


def _update_element(r: Row, pos):
    return ir.slice_row(r.expr, pos, pos + 1) if r.expr.width > 1 else r.expr


def scatter_nd_table(it, table: Table, indices, updates, reduction):
    idx = it.sym(indices, "the ScatterND index")
    if not idx.shape:
        raise Refusal("ScatterND indices of rank 0")
    k = idx.shape[-1]
    rank = table.lead + len(table.inner)
    if k < table.lead or k > rank:
        raise Refusal(f"ScatterND indices of shape {list(idx.shape)} into a table of rank {rank}"
                      + (" (a write of several rows of a grid)" if k < table.lead else ""),
                      hint="write one cell h[i, j] per iteration" if k < table.lead else None)
    lead = tuple(idx.shape[:-1])
    block = tuple(table.inner[k - table.lead:])
    upd = _row_elements(it, updates, lead + block)
    block_size = int(np.prod(block, dtype=np.int64))
    groups = {}
    for j, t in enumerate(idx.elems.reshape(-1, k)):
        note_access(it, table, t[0])
        row_e = flat_row(table, t[:table.lead])
        sub = t[table.lead:]
        if not all(isinstance(x, ir.IConst) for x in sub):
            raise Refusal("ScatterND into a row at a structure index", hint=DATA_DEPENDENT_HINT)
        inner_pos = [x.value for x in sub]
        inner_pos = [p + d if p < 0 else p for p, d in zip(inner_pos, table.inner)]
        if any(not 0 <= p < d for p, d in zip(inner_pos, table.inner)):
            raise Refusal("ScatterND column index out of range (the original fails on every input)")
        base = int(np.ravel_multi_index(tuple(inner_pos) + (0,) * len(block), table.inner)) if table.inner else 0
        elems = groups.setdefault(row_e, [])
        for q in range(block_size):
            elems.append((base + q, _update_element(upd, j * block_size + q), reduction))
    for row_e, elems in groups.items():
        table = write_elements(table, row_e, elems)
    return table


@handler("ScatterND")
def op_scatter_nd(it, node, args, lookup):
    data, indices, updates = args
    reduction = attr(node, "reduction", "none")
    if isinstance(data, Table):
        return scatter_nd_table(it, data, indices, updates, reduction)
    if isinstance(indices, Known) and isinstance(data, (Row, Sym, Known)):
        if reduction != "none":
            raise Refusal(f"ScatterND with reduction {reduction} into {describe(data)}")
        idx = np.asarray(indices.value).astype(np.int64)
        k = idx.shape[-1]

        def fn(arrs):
            out = arrs[0].copy()
            upd = arrs[1].reshape(idx.shape[:-1] + out.shape[k:])
            for pos in np.ndindex(*idx.shape[:-1]):
                out[tuple(idx[pos])] = upd[pos]
            return out
        return rearrange_many(it, [data, updates], fn)
    raise Refusal(f"ScatterND into {describe(data)}, not a state table")


@handler("ScatterElements", "Scatter")
def op_scatter_elements(it, node, args, lookup):
    data, indices, updates = args
    axis = attr(node, "axis", 0)
    reduction = attr(node, "reduction", "none")
    if isinstance(data, Table):
        if data.lead > 1:
            raise Refusal("ScatterElements into a grid state table", hint="write one cell h[i, j] per iteration")
        if axis % (1 + len(data.inner)) != 0:
            raise Refusal(f"ScatterElements along axis {axis} of a state table")
        idx = it.sym(indices, "the ScatterElements index")
        if len(idx.shape) != 1 + len(data.inner):
            raise Refusal(f"ScatterElements indices of shape {list(idx.shape)}")
        upd = _row_elements(it, updates, tuple(idx.shape))
        groups = {}
        for flat, pos in enumerate(np.ndindex(*idx.shape)):
            if any(p >= d for p, d in zip(pos[1:], data.inner)):
                raise Refusal("ScatterElements update wider than the table")
            row_e = ix.as_index(idx.elems[pos])
            col = int(np.ravel_multi_index(pos[1:], data.inner)) if data.inner else 0
            groups.setdefault(row_e, []).append((col, _update_element(upd, flat), reduction))
        for row_e, elems in groups.items():
            data = write_elements(data, row_e, elems)
        return data
    if isinstance(indices, Known) and isinstance(data, (Row, Sym, Known)):
        if reduction != "none":
            raise Refusal(f"ScatterElements with reduction {reduction} into {describe(data)}")
        idx = np.asarray(indices.value).astype(np.int64)

        def fn(arrs):
            out = arrs[0].copy()
            a = axis % out.ndim
            np.put_along_axis(out, np.where(idx < 0, idx + out.shape[a], idx), arrs[1].reshape(idx.shape), axis=a)
            return out
        return rearrange_many(it, [data, updates], fn)
    raise Refusal(f"ScatterElements into {describe(data)}, not a state table")


# ---- torch.cat writes: table slices around one new row --------------------------------------------

BIG = 1 << 62


def _unit_slice(it, starts, ends, axes, steps, rank, strided):
    """A Slice's (starts, ends, axes) as index expressions, for unit steps only (else Refusal(strided))."""
    def values(v, what):
        if isinstance(v, list):
            return [ix.const(x) for x in v]
        return [ix.as_index(e) for e in it.sym(v, what).elems.reshape(-1)]

    starts, ends = values(starts, "Slice starts"), values(ends, "Slice ends")
    axes = list(range(len(starts))) if axes is None else [int(a) % rank for a in (
        axes if isinstance(axes, list) else known_ints(it, axes, "Slice axes").reshape(-1))]
    if steps is not None and not isinstance(steps, list):
        steps = [int(s) for s in known_ints(it, steps, "Slice steps").reshape(-1)]
    if steps is not None and any(s != 1 for s in steps):
        raise Refusal(strided)
    return starts, ends, axes


def slice_table(it, table: Table, starts, ends, axes, steps):
    if table.lead > 1:
        raise Refusal("a slice of a grid state table", hint="read one cell h[i, j] at a time")
    starts, ends, axes = _unit_slice(it, starts, ends, axes, steps, 1 + len(table.inner),
                                     "a strided slice of a state table")
    start, stop = ix.const(0), ix.const(BIG)
    for s, e, a in zip(starts, ends, axes):
        if a == 0:
            start, stop = s, e
        elif not (s == ix.const(0) and isinstance(e, ir.IConst) and e.value >= table.inner[a - 1]):
            raise Refusal("a slice of a state table's columns")
    k = ix.ibin("sub", stop, start)
    if isinstance(k, ir.IConst) and 1 <= k.value <= 64 and not isinstance(stop, ir.IConst):
        # h[i:i + k]: k rows read at a structure index, checked to lie inside the table
        guarded = ir.Guard(ix.band(ix.cmp("ge", start, ix.const(0)),
                                   ix.cmp("le", ix.ibin("add", start, k), ir.Length(None))),
                           start, "a slice of a state table reaches past its rows (the original's would be shorter)")
        rows = [read_table(table, guarded if j == 0 else ix.ibin("add", guarded, ix.const(j))) for j in range(k.value)]
        return Row(ir.concat(rows), (k.value,) + tuple(table.inner))
    return TableSlice(table, start, stop)


def _row_window(it, starts, ends, axes, steps, rank, what):
    """(start, k) for a slice along axis 0 whose length k is a constant (x[i:i + k]), the other axes whole."""
    starts, ends, axes = _unit_slice(it, starts, ends, axes, steps, rank,
                                     f"a strided slice of {what} at a structure index")
    start, stop = None, None
    for s, e, a in zip(starts, ends, axes):
        if a == 0:
            start, stop = s, e
        elif not (s == ix.const(0) and isinstance(e, ir.IConst) and e.value >= 1 << 30):
            raise Refusal(f"a slice of {what} at a structure index across its columns")
    if start is None:
        raise Refusal(f"a slice of {what} at a structure index")
    k = ix.ibin("sub", stop, start)
    if not isinstance(k, ir.IConst) or k.value < 1:
        raise Refusal(f"a slice of {what} whose length depends on the node", hint=DATA_DEPENDENT_HINT)
    return start, k.value


def slice_rows(it, data, starts, ends, axes, steps):
    """x[i:i + k] of a runtime tensor for a structure index i: rows i..i+k-1, checked at run time to lie inside
    x (elsewhere the original's slice is shorter: a different shape, which Cortex cannot compute)."""
    if data.shape is None:
        raise Refusal(f"runtime tensor {data.name} has an unknown rank")
    start, k = _row_window(it, starts, ends, axes, steps, len(data.shape), f"runtime tensor {data.name}")
    rows = ir.Length(data.name)
    guarded = ir.Guard(ix.band(ix.cmp("ge", start, ix.const(0)), ix.cmp("le", ix.ibin("add", start, ix.const(k)), rows)),
                       start, f"a slice of {data.name} reaches past its rows (the original's slice would be shorter)")
    elems = np.empty(k, dtype=object)
    elems[:] = [guarded if j == 0 else ix.ibin("add", guarded, ix.const(j)) for j in range(k)]
    return gather_rows(it, data, Sym(elems, "int64"))


def concat_tables(it, values, axis):
    """torch.cat([h[:v], new_row, h[v + 1:]]): the table with row v replaced, for 0 <= v < N (other v change the
    table's size in the original: a run-time error here)."""
    if axis != 0 or len(values) != 3:
        raise Refusal("a Concat of state-table pieces other than [h[:v], row, h[v+1:]]")
    head, mid, tail = values
    if not (isinstance(head, TableSlice) and isinstance(tail, TableSlice) and head.table == tail.table):
        raise Refusal("a Concat of state-table pieces other than [h[:v], row, h[v+1:]]")
    table = head.table
    if table.lead > 1:
        raise Refusal("a torch.cat write into a grid state table", hint="write one cell h[i, j] per iteration")
    v = head.stop
    if head.start != ix.const(0) or ix.ibin("sub", tail.start, v) != ix.const(1) or \
            not (isinstance(tail.stop, ir.Length) or (isinstance(tail.stop, ir.IConst) and tail.stop.value >= 1 << 31)):
        raise Refusal("a Concat of state-table pieces other than [h[:v], row, h[v+1:]]")
    shape = static_shape(mid)
    if tuple(shape) != (1,) + tuple(table.inner):
        raise Refusal(f"the new row of a torch.cat write has shape {list(shape)}")
    target = ir.Guard(ix.band(ix.cmp("ge", v, ix.const(0)), ix.cmp("lt", v, ir.Length(None))), v,
                      "row index out of range [0, N) in a torch.cat write (the original would change the table size)")
    return write_table(table, target, it.row(mid).expr)

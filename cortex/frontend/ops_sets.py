"""Child sets the structure computes at run time: a node's children (or a DAG node's predecessors) whose number varies
per node, found the way models find them: a mask over a parent array (`parent == v`), a mask over an edge list
(`edge_index[1] == v`), a CSR slice (`indices[offsets[v]:offsets[v + 1]]`). The values over such a set (the mask
itself, the member positions after NonZero, the member ids, the members' rows) are `SetField`s; a reduction over the
set's axis (a sum, a max, a mean, a mask matmul, a count) becomes one `SetReduce` of the IR, whose members the kernel
prepares on the host per position (csrc/runtime/sets.h) and whose reads the linearizer orders.

What is proved: the members are exactly the rows the reduction reads (a mask and the table it selects from span the
same axis; a NonZero's positions index the array they came from; a CSR slice's values are row ids); any other use of
a set value (a reduction over another axis, elementwise math that mixes members with non-members, a position used as
data) is refused with the reason. The interpreter asks `dispatch` before the op's own handler.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..ir import index as ix
from ..ir import nodes as ir
from . import interpreter
from .interpreter import attr
from .ops_elementwise import ROW_ARITH, UNARY
from .operands import known_ints, norm_axis
from .values import INT_DTYPES, Array, Known, Refusal, Row, Sym, Table, describe, shape_of

NEG_INF, POS_INF = float("-inf"), float("inf")


@dataclass(frozen=True)
class KeyRow:
    """Row `row` of a 2-D runtime integer array (an edge list's sources or targets, `edge_index[1]`); `column`: as
    an [E, 1] column (the dynamo exporter's GatherND index)."""
    array: str
    row: int
    column: bool = False


@dataclass(frozen=True)
class Members:
    """The set, as SetReduce reads it: (encoding, arrays, bounds), plus how a position of the set's axis maps to a
    node id: `rows_are_ids` when the axis is the state rows themselves (a parent array)."""
    encoding: str
    arrays: tuple
    bounds: tuple
    axis: str  # the array whose length the set's axis has (for a mask's shape and a mean over it)

    @property
    def rows_are_ids(self) -> bool:
        return self.encoding == "parent"

    @property
    def length(self) -> ir.IExpr:
        """The length of the set's axis (a mask's length: what a mean over it divides by)."""
        return ir.Length(self.axis, 1 if self.encoding in ("edge_index", "forest_parent") else 0)


@dataclass(frozen=True)
class SetField:
    """A value over a set. layout 'mask': spans the whole axis (a mask's shape): members hold `body`, the others
    `fill`; layout 'list': the members only, in order. kind: 'pred' (a mask: true at members), 'positions' (the
    members' positions on the axis, after NonZero), 'ids' (their node ids), 'rows' (per-member values: `body`, an IR
    row expression whose leaves may read a member's rows through ir.Member()). `inner`: each element's shape;
    `index_rank`: NonZero's [1, M] / Transpose's [M, 1] layouts of positions. `lead`: unit dimensions before the
    set's axis (`h[kids].unsqueeze(0)`: [1, M, ...]); the set's axis is axis `lead` of the value.

    Layout 'all' (kind 'rows'): every position of an axis holds `body`, the rows of the position's node: the whole
    state table (`h`, a position is a node id; members encoding 'all', no arrays) or a table's rows gathered at an
    edge list's row (`h[edge_index[0]]`: position e holds row edge_index[0][e]; arrays (edge_index,), bounds (0,)).
    It becomes a set only where a mask over the same axis selects its positions (`h_k * mask`, `where(mask, h_k,
    c)`, `mask @ h_k`): the mask's members then read the rows the positions name ('resolved' members: `_resolve`).
    `negated` (kind 'pred'): the complement of the mask (`~mask`: true at the non-members). `nan_if_empty` (layout
    'mask'): the non-members hold `fill` while the set has members and NaN when it has none (a softmax over a
    mask filled with -inf)."""
    members: Members
    layout: str
    kind: str
    body: object = None
    fill: float = None
    inner: tuple = ()
    shape_tag: str = ""  # positions: "nonzero" [1, M] or "column" [M, 1] or "" [M]
    lead: int = 0
    negated: bool = False
    nan_if_empty: bool = False

    @property
    def rank(self) -> int:
        return self.lead + 1 + len(self.inner)

    def member(self) -> Row:
        """One member's value (rows and masks of rows), its body broadcast to its element shape."""
        width = int(np.prod(self.inner, dtype=np.int64))
        body = self.body if self.body.width == width else ir.Take(self.body, (0,) * width, width)
        return Row(body, tuple(self.inner))

    def with_member(self, row: Row) -> "SetField":
        return replace(self, body=row.expr, inner=tuple(row.shape))


@dataclass(frozen=True)
class AxisIndex:
    """arange(len(array)): the positions along a runtime vector's axis (a range mask compares them with bounds)."""
    array: str


@dataclass(frozen=True)
class Interval:
    """The mask lo <= arange(len(array)) < hi (either bound may be absent): a CSR child list as a mask."""
    array: str
    lo: object = None  # IExpr or None
    hi: object = None


@dataclass(frozen=True)
class SetCount:
    """The number of members of a set value's set (`len(child_h)`), as a scalar (rank 0) or a [1] vector."""
    field: "SetField"
    rank: int = 0


@dataclass(frozen=True)
class SetDims:
    """A shape whose dims are ints and one member count ("M"): the repeats of `x.repeat(len(child_h), 1)`."""
    field: "SetField"
    dims: tuple


@dataclass(frozen=True)
class SetShape:
    """Shape(x) of a set value x: only for an Expand of x to its own shape (the dynamo exporter's index broadcast)."""
    field: "SetField"


@dataclass(frozen=True)
class Filled:
    """A tensor of one constant value whose leading dimension is dynamic (torch.zeros_like of a state table)."""
    value: float
    inner: tuple


def _key_array(v):
    """(name, row or None) for a dynamic-length integer vector of the structure: a 1-D runtime array or a row of a
    2-D one; else None."""
    if isinstance(v, KeyRow):
        return None if v.column else (v.array, v.row)  # [E, 1]: a GatherND's index, not a vector of keys
    if isinstance(v, Array) and v.read_dtype in INT_DTYPES and v.shape is not None and len(v.shape) == 1 \
            and v.columns is None and v.fill is None:
        return v.name, None
    return None


def _key_scalar(v):
    if isinstance(v, Sym) and v.elems.size == 1 and not v.is_bool:
        return ix.as_index(v.scalar())
    if isinstance(v, Known) and v.value.size == 1 and v.value.dtype.kind in "iu":
        return ix.const(int(v.value.reshape(-1)[0]))
    return None


def _mask_members(it, key_ref, key) -> Members:
    name, row = key_ref
    it.use_array(it.arrays.get(name) or Array(name, "int64", (None,)))
    if row is None:
        return Members("parent", (name,), (key,), name)
    return Members("edge_index", (name,), (key, ix.const(row)), name)  # the member row: set by _ids_from


def _all_members(array=None, row=None) -> Members:
    """The positions of an axis before a mask selects some: the state rows (array None) or an edge list's axis, each
    position naming the node whose rows it holds (row `row` of the edge list)."""
    if array is None:
        return Members("all", (), (), None)
    return Members("all", (array,), () if row is None else (ix.const(row),), array)


def _whole_table(it, t: Table) -> SetField:
    """A state table used as a value over its rows (masked by a parent array's mask): row u at position u."""
    if t.lead != 1:
        raise Refusal(f"a child-set mask over the cells of grid state table {t.name}")
    return SetField(_all_members(), "all", "rows", _member_row(it, t), inner=tuple(t.inner))


def _rows_at(it, data, key: KeyRow) -> SetField:
    """data[edge_index[r]] (data[src] for a vector src, key.row None): position e of the edge list holds the row of
    node edge_index[r][e]."""
    if isinstance(data, Table) and data.lead != 1:
        raise Refusal(f"the cells of grid state table {data.name} gathered at an edge list")
    return SetField(_all_members(key.array, key.row), "all", "rows", _member_row(it, data), inner=_row_inner(data))


def _key_of(m: Members) -> Members:
    """The mask part of a set: which positions are members (before what each member reads is known)."""
    if m.encoding == "edges":
        return Members("parent", (m.arrays[1],), m.bounds, m.arrays[1])
    if m.encoding == "edge_index" and len(m.bounds) >= 3:
        return replace(m, bounds=m.bounds[:2])
    return m


def _resolve(key: Members, rows: Members) -> Members:
    """The set a mask (`key`) selects from values over an axis (`rows`, layout 'all'), proved to span the same axis:
    a parent array's mask over the state rows; an edge list's mask [2, E] over rows gathered at the edge list's
    other row. Anything else is refused (a CSR range mask over rows gathered at every index: the original gathers
    indices outside the range too, whose errors only a whole-row check would keep)."""
    if key.encoding in ("parent", "forest_parent") and rows.arrays == ():
        return key  # parent == v over the rows of the tables (its length must be theirs: checked at run time)
    if key.encoding == "parent" and len(rows.arrays) == 1 and not rows.bounds and rows.arrays != key.arrays:
        # dst == v over rows gathered at a vector src (h[src]): the edges e with dst[e] == v read row src[e]; they
        # span the same axis only where len(src) == len(dst), and the model gathers every src: a second bound 1
        # asks the kernel to check both once a position reads the set
        return Members("edges", (rows.arrays[0], key.arrays[0]), key.bounds + (ix.const(1),), key.axis)
    if key.encoding == "edge_index" and len(key.bounds) == 2 and rows.arrays == key.arrays and \
            len(rows.bounds) == 1 and rows.bounds[0] != key.bounds[1]:
        # the model gathers every edge's source row: a fourth bound asks the kernel to check them all
        return replace(key, bounds=key.bounds + rows.bounds + (ix.const(1),))
    what = "the state table's rows" if not rows.arrays else \
        f"rows gathered at {rows.arrays[0]}" + (f"[{rows.bounds[0].value}]" if rows.bounds else "")
    mask = f"{key.arrays[0]}" + (f"[{key.bounds[1].value}]" if key.encoding == "edge_index" else "")
    raise Refusal(f"a mask over {mask} applied to {what}: they do not span the same axis (a parent array's mask "
                  f"selects the table's rows; an edge list's mask selects rows gathered at its other row)",
                  hint="select the members first (h[src[dst == v]], h[indices[offsets[v]:offsets[v + 1]]])")


def _combine(fields) -> Members:
    """The one set of several values over masks and whole axes (layouts 'mask' and 'all'), or a refusal."""
    alls = {f.members for f in fields if f.layout == "all"}
    masks = {f.members for f in fields if f.layout == "mask"}
    if len(alls) > 1:
        raise Refusal("values over the rows of different index arrays combined position by position")
    keys = {_key_of(m) for m in masks}
    if len(keys) > 1:
        raise Refusal("the masks of different child sets combined position by position")
    if not masks:
        return alls.pop()
    key = keys.pop()
    resolved = {m for m in masks if m != key}
    if alls:
        resolved.add(_resolve(key, next(iter(alls))))
    if len(resolved) > 1:
        raise Refusal("a child set's mask applied to rows gathered at different index arrays")
    return resolved.pop() if resolved else key


# ---- the ops ---------------------------------------------------------------------------------------------------


def _equal(it, node, args):
    for a, b in ((args[0], args[1]), (args[1], args[0])):
        ref, key = _key_array(a), _key_scalar(b)
        if ref is not None and key is not None:
            return SetField(_mask_members(it, ref, key), "mask", "pred")
    return None


def _gather(it, node, args):
    data, idx = args[0], args[1]
    if isinstance(data, SetShape):
        return _count_of(it, node, args)
    axis = int(attr(node, "axis", 0))
    if isinstance(data, Array) and data.read_dtype in INT_DTYPES and data.shape is not None and len(data.shape) == 2 \
            and axis == 0 and isinstance(idx, Known) and idx.value.size == 1 and idx.value.ndim == 0:
        if isinstance(data.shape[1], int):
            return None  # a fixed [K, C] array: the existing handlers read it
        row = int(idx.value)
        if row < 0 and isinstance(data.shape[0], int):
            row += data.shape[0]
        if row < 0:
            raise Refusal(f"row {int(idx.value)} of edge list {data.name}, whose row count is dynamic")
        it.use_array(data)
        return KeyRow(data.name, row)
    if isinstance(idx, KeyRow) and axis == 0 and not idx.column and isinstance(data, (Table, Array)):
        return _rows_at(it, data, idx)
    if isinstance(data, Table) and data.lead == 1 and axis == 0 and isinstance(idx, Array) and \
            _key_array(idx) is not None and not isinstance(idx.shape[0], int):
        return _rows_at(it, data, KeyRow(idx.name, None))  # h[src]: the rows of every edge's source
    if isinstance(idx, SetField) and axis == 0:
        return _at_members(it, data, idx)
    if isinstance(data, Table) and data.lead == 1 and isinstance(idx, Known) and axis % (1 + len(data.inner)) != 0:
        data = _whole_table(it, data)  # hc[:, 0] of a whole table: within each row
    if isinstance(data, SetField) and data.layout == "all" and not data.members.arrays and \
            norm_axis(axis, data.rank, "Gather axis") == data.lead and isinstance(idx, (Sym, Known)):
        return _rows_of_whole(it, data, idx)
    if isinstance(data, SetField):
        return _gather_within(data, idx, norm_axis(axis, data.rank, "Gather axis"))
    return None


def _rows_of_whole(it, x: SetField, idx) -> Row:
    """Rows at structure indices of a value over the whole state table (`h[:, cols][l]`): its body, at each index."""
    elems = [ix.as_index(e) for e in it.sym(idx, "the Gather index").elems.reshape(-1)]
    shape = np.asarray(idx.value).shape if isinstance(idx, Known) else idx.shape

    def at(e):
        return ir.transform(lambda n: replace(n, index=e) if isinstance(n, (ir.ChildState, ir.InputRow)) and
                            isinstance(n.index, ir.Member) else n)(x.member().expr)
    return Row(ir.concat([at(e) for e in elems]), (1,) * x.lead + tuple(shape) + tuple(x.inner))


def _gather_within(x: SetField, idx, axis: int) -> SetField:
    """A Gather at constant indices on an axis of a set value other than the set's: an element of each member, or
    the one element of a unit dimension before the set's axis."""
    from .ops_tables import gather_constant
    if axis == x.lead or not isinstance(idx, Known) or x.kind not in ("rows", "pred"):
        raise Refusal("a Gather from a child set's values (index them by position instead)")
    if axis < x.lead:
        if np.asarray(idx.value).reshape(-1).tolist() not in ([0], [-1]):
            raise Refusal("Gather index out of range (the original fails on every input)")
        return replace(x, lead=x.lead - 1 + np.asarray(idx.value).ndim)
    if x.kind == "pred":
        raise Refusal("a Gather within a child set's mask")
    return x.with_member(gather_constant(x.member(), idx, axis - x.lead - 1))


def _at_members(it, data, idx: SetField):
    """data at the members: a table's or a node input's rows at member ids, or an edge list's other row at member
    positions."""
    m = idx.members
    if idx.kind == "positions" and _key_array(data) is not None:  # an integer vector along the set's axis
        return _ids_from(m, _key_array(data))
    if idx.kind == "ids" or (idx.kind == "positions" and m.rows_are_ids):
        if idx.shape_tag == "column":
            raise Refusal("a Gather at [M, 1] member positions (GatherND reads those)")
        return SetField(m, "list", "rows", _member_row(it, data), inner=_row_inner(data))
    if idx.kind == "positions":
        ref = _key_array(data)
        if ref is None:
            raise Refusal(f"member positions of an edge list index {describe(data)}, not the edge list's other row")
        return _ids_from(m, ref)
    raise Refusal(f"a Gather at child-set {idx.kind}")


def _ids_from(m: Members, ref) -> SetField:
    """The node ids at the member positions of an edge list: its other row (or a source array of the same edges)."""
    name, row = ref
    if m.encoding == "edge_index":
        key_row = int(m.bounds[1].value)
        if name != m.arrays[0] or row is None or row == key_row or len(m.bounds) != 2:
            raise Refusal(f"member positions of {m.arrays[0]} read {name}, not the edge list's other row")
        return SetField(replace(m, bounds=m.bounds + (ix.const(row),)), "list", "ids")
    if m.encoding == "range" and (name, row) == (m.arrays[0], None):  # a range mask's positions read its values
        return SetField(m, "list", "ids")
    if m.encoding == "parent" and row is None:  # a mask over a target array, positions into the source array
        return SetField(Members("edges", (name, m.arrays[0]), m.bounds, m.axis), "list", "ids")
    raise Refusal(f"member positions of {m.arrays[0]} read {name}")


def _member_row(it, data) -> ir.RExpr:
    if isinstance(data, Table):
        if data.writes:
            raise Refusal(f"a child set of state table {data.name} read after this step wrote it")
        return ir.ChildState(data.name, ir.Member(), False, data.width)
    if isinstance(data, Array) and data.read_dtype == it.element and data.shape is not None and \
            all(isinstance(d, int) for d in data.shape[1:]):
        it.use_array(data)
        return ir.InputRow(data.name, ir.Member(), int(np.prod(data.shape[1:], dtype=np.int64)))
    raise Refusal(f"the rows of a child set are read from {describe(data)}, not a state table or a node input")


def _row_inner(data) -> tuple:
    return tuple(data.inner) if isinstance(data, Table) else tuple(data.shape[1:])


def _gather_nd(it, node, args):
    data, idx = args[0], args[1]
    if isinstance(idx, KeyRow) and idx.column and int(attr(node, "batch_dims", 0)) == 0 and \
            isinstance(data, (Table, Array)):
        return _rows_at(it, data, replace(idx, column=False))
    if not isinstance(idx, SetField):
        return None
    if idx.kind not in ("positions", "ids") or idx.shape_tag != "column" or int(attr(node, "batch_dims", 0)) != 0:
        raise Refusal("GatherND at child-set values other than [M, 1] member positions or ids")
    return _at_members(it, data, replace(idx, shape_tag=""))


def _nonzero(it, node, args):
    x = args[0]
    if isinstance(x, Interval):
        x = _interval_mask(it, x)
    if not isinstance(x, SetField):
        return None
    if x.kind != "pred" or x.layout != "mask" or x.inner or x.lead or x.negated:  # [1, M]: one row of positions
        raise Refusal("NonZero of a child-set value other than its mask" +
                      (" (of its complement: the non-members)" if x.negated else ""))
    return SetField(x.members, "list", "positions", shape_tag="nonzero")


def _transpose(it, node, args):
    x = args[0]
    if not isinstance(x, SetField):
        return None
    if x.kind == "positions" and x.shape_tag == "nonzero":
        return replace(x, shape_tag="column")
    raise Refusal("a Transpose of a child-set value other than NonZero's positions")


def _squeeze(it, node, args):
    x = args[0]
    if isinstance(x, SetCount):
        return replace(x, rank=0)
    if not isinstance(x, SetField):
        return None
    axes = known_ints(it, args[1], "Squeeze axes").reshape(-1).tolist() if len(args) > 1 and args[1] is not None \
        else attr(node, "axes")
    if x.kind == "positions" and x.shape_tag in ("nonzero", "column"):
        axis = 0 if x.shape_tag == "nonzero" else 1
        if axes is None or [a % 2 for a in axes] == [axis]:
            return replace(x, shape_tag="")
    if x.kind in ("rows", "pred") and axes is not None:
        axes = sorted({norm_axis(a, x.rank, "Squeeze axes") for a in axes})
        shape = (1,) * x.lead + ("M",) + tuple(x.inner)
        if x.lead not in axes and all(shape[a] == 1 for a in axes):
            inner = tuple(d for a, d in enumerate(x.inner, x.lead + 1) if a not in axes)
            return replace(x, lead=x.lead - sum(a < x.lead for a in axes), inner=inner)
    raise Refusal("a Squeeze of a child-set value along its set axis")


def _reshape(it, node, args):
    """A Reshape of member positions or ids to a vector [M] (`nonzero().view(-1)`)."""
    x = args[0]
    if not isinstance(x, SetField):
        return None
    shape = known_ints(it, args[1], "the Reshape shape").reshape(-1).tolist()
    if x.kind in ("positions", "ids") and shape == [-1] and not x.inner:
        return replace(x, shape_tag="")
    raise Refusal("a Reshape of a child set's values other than its member positions to a vector")


def _unsqueeze(it, node, args):
    x = args[0]
    if isinstance(x, SetCount) and x.rank == 0:
        return replace(x, rank=1)
    axes = known_ints(it, args[1], "Unsqueeze axes").reshape(-1).tolist() if len(args) > 1 and args[1] is not None \
        else attr(node, "axes")
    if isinstance(x, KeyRow) and not x.column and axes is not None and [a % 2 for a in axes] == [1]:
        return replace(x, column=True)  # edge_index[0].unsqueeze(-1): the [E, 1] index of a GatherND
    if isinstance(x, Array) and _key_array(x) is not None and not isinstance(x.shape[0], int) and axes is not None \
            and [a % 2 for a in axes] == [1]:
        return KeyRow(x.name, None, column=True)  # src.unsqueeze(-1): dynamo's GatherND index for h[src]
    if isinstance(x, Table) and x.lead == 1 and axes is not None:
        x = _whole_table(it, x)  # h.unsqueeze(0): the whole table as a value over its rows
    if not isinstance(x, SetField):
        return None
    axes = known_ints(it, args[1], "Unsqueeze axes").reshape(-1).tolist() if len(args) > 1 and args[1] is not None \
        else attr(node, "axes")
    if x.kind in ("pred", "rows") and axes is not None and x.shape_tag == "":
        out_rank = x.rank + len(axes)
        shape = [1] * x.lead + ["M"] + list(x.inner)
        for a in sorted({norm_axis(a, out_rank, "Unsqueeze axes") for a in axes}):
            shape.insert(a, 1)
        lead = shape.index("M")
        return replace(x, lead=lead, inner=tuple(shape[lead + 1:]))
    trailing = axes is not None and len(axes) == 1 and axes[0] % (x.rank + 1) == x.rank and x.shape_tag == ""
    if x.kind in ("positions", "ids") and trailing and not x.inner and not x.lead:
        return replace(x, shape_tag="column")
    raise Refusal("an Unsqueeze of a child-set value other than a trailing axis")


def _cast(it, node, args):
    x = args[0]
    to = int(attr(node, "to"))
    import onnx
    if isinstance(x, Row) and x.boolean and to in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) and \
            any(isinstance(e, ir.SetReduce) for e in ir.walk_rows([x.expr])):
        return IntRow(Row(x.expr, x.shape))  # a test of a set's count as 0/1 (`int(bool(count == 0))`)
    if not isinstance(x, SetField):
        return None
    if x.kind == "pred" and to in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
        on, off = (0.0, 1.0) if x.negated else (1.0, 0.0)
        return replace(x, kind="rows", body=ir.Scalar(on), fill=off, negated=False)
    if x.kind == "pred" and to == onnx.TensorProto.BOOL:
        return x
    if x.kind == "pred" and not x.negated and to in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
        return replace(x, kind="int", body=ir.Scalar(1.0), fill=0.0)  # 0/1 integers: counted by a ReduceSum
    if x.kind in ("ids", "positions") and to in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
        return x
    raise Refusal(f"a Cast of child-set {x.kind} to type {to}")


def _slice(it, node, args):
    """indices[start:stop] with bounds computed from the structure: a CSR child list."""
    data = args[0]
    ref = _key_array(data)
    if ref is None or ref[1] is not None or len(args) < 3:
        return None
    starts, ends = args[1], args[2]
    if not (isinstance(starts, Sym) and isinstance(ends, Sym)) or starts.elems.size != 1 or ends.elems.size != 1:
        return None
    axes = known_ints(it, args[3], "Slice axes").reshape(-1).tolist() if len(args) > 3 and args[3] is not None \
        else [0]
    steps = known_ints(it, args[4], "Slice steps").reshape(-1).tolist() if len(args) > 4 and args[4] is not None \
        else [1]
    lo, hi = ix.as_index(starts.scalar()), ix.as_index(ends.scalar())
    if isinstance(ix.ibin("sub", hi, lo), ir.IConst):
        return None  # a window of constant length (order[i:i + 1]): the regular Slice reads it
    if [a % 1 for a in axes] != [0] or steps != [1]:
        raise Refusal("a slice of a structure array with steps other than 1")
    it.use_array(data)
    members = Members("range", (ref[0],), (ix.as_index(starts.scalar()), ix.as_index(ends.scalar())), ref[0])
    return SetField(members, "list", "ids")


def _slice_or_within(it, node, args):
    out = _slice(it, node, args)
    return out if out is not None else _slice_within(it, node, args)


def _constant_like(x: SetField, value: float) -> SetField:
    """torch.full_like(x, value) of a set value x: value at every position (members and non-members alike)."""
    if x.kind not in ("rows", "pred", "int"):
        raise Refusal(f"a constant shaped like child-set {x.kind}")
    return replace(x, kind="rows", body=ir.Scalar(value), fill=value if x.layout == "mask" else None,
                   negated=False, nan_if_empty=False)


def _constant_of_shape(it, node, args):
    shape = args[0]
    if isinstance(shape, SetShape):
        from onnx import numpy_helper
        value = attr(node, "value")
        arr = numpy_helper.to_array(value).reshape(-1) if value is not None else np.zeros(1, np.float32)
        if arr.dtype.kind != "f":
            raise Refusal("an integer tensor shaped like a child-set value")
        return _constant_like(shape.field, float(arr[0]))
    if isinstance(shape, Known) or not isinstance(shape, Sym):
        return None
    from onnx import numpy_helper
    value = attr(node, "value")
    fill = float(numpy_helper.to_array(value).reshape(-1)[0]) if value is not None else 0.0
    dims = list(shape.elems.reshape(-1))
    if not dims or isinstance(dims[0], ir.IConst):
        return None  # a static shape: the regular handler
    inner = []
    for d in dims[1:]:
        if not isinstance(d, ir.IConst):
            return None
        inner.append(int(d.value))
    return Filled(fill, tuple(inner))


def _expand(it, node, args):
    """Expand(constant, Shape(a state table)) is zeros_like / full_like of the table (the dynamo exporter's form);
    Expand(x, Shape(x)) of a set value is x."""
    x, shape = args[0], args[1]
    if isinstance(shape, SetShape):
        if isinstance(x, Known) and x.value.size == 1 and x.value.dtype.kind == "f":
            return _constant_like(shape.field, float(x.value.reshape(-1)[0]))
        if x != shape.field:
            raise Refusal("an Expand of a child-set value to another value's shape")
        return x
    if isinstance(x, SetField):
        raise Refusal("an Expand of a child-set value")
    fill = _fill_value(x) if isinstance(x, Known) and x.value.size == 1 else None
    if fill is None or not isinstance(shape, Sym) or isinstance(shape, Known):
        return None
    dims = list(shape.elems.reshape(-1))
    if not dims or isinstance(dims[0], ir.IConst) or not all(isinstance(d, ir.IConst) for d in dims[1:]):
        return None
    return Filled(fill, tuple(int(d.value) for d in dims[1:]))


def _shape(it, node, args):
    x = args[0]
    if isinstance(x, SetDims):
        return Known(np.array([len(x.dims)], dtype=np.int64))
    if isinstance(x, SetField):
        if int(attr(node, "start", 0)) != 0 or attr(node, "end") is not None:
            raise Refusal("a part of a child-set value's shape")
        return SetShape(x)
    return None


def _variadic(it, node, args):
    """Max / Min / Sum / Mean of one input (the dynamo exporter's broadcast of index tensors) is that input."""
    if len(args) == 1 and isinstance(args[0], SetField):
        return args[0]
    return None


def _range(it, node, args):
    """Range(0, len(array), 1) over a runtime integer vector."""
    start, limit, delta = args
    if not isinstance(limit, Sym) or limit.elems.size != 1:
        return None
    length = limit.scalar()
    if not (isinstance(length, ir.Length) and length.array is not None) or known_ints(it, start, "Range start") != 0 \
            or known_ints(it, delta, "Range step") != 1:
        return None
    arr = it.arrays.get(length.array) or it.outer(length.array)  # a runtime input of an enclosing scope
    if _key_array(arr) is None:
        return None
    it.use_array(arr)
    return AxisIndex(length.array)


COMPARISONS = {"GreaterOrEqual": ("lo", 0), "Greater": ("lo", 1), "Less": ("hi", 0), "LessOrEqual": ("hi", 1)}
MIRRORED = {"GreaterOrEqual": "LessOrEqual", "Greater": "Less", "Less": "Greater", "LessOrEqual": "GreaterOrEqual"}


def _compare(it, node, args):
    """arange(len(a)) >= lo, > lo, < hi, <= hi (either side): an Interval."""
    op, (a, b) = node.op_type, args
    if isinstance(b, AxisIndex) and not isinstance(a, AxisIndex):
        op, a, b = MIRRORED[op], b, a
    if not isinstance(a, AxisIndex):
        if any(isinstance(x, SET_VALUES) for x in args):
            raise Refusal(f"a {node.op_type} of a child set's values")
        return None
    bound = _key_scalar(b)
    if bound is None:
        raise Refusal(f"arange over {a.array} compared with {describe(b)}, not one structure value")
    side, shift = COMPARISONS[op]
    bound = ix.ibin("add", bound, ix.const(shift)) if shift else bound
    return Interval(a.array, **{side: bound})


def _and(it, node, args):
    a, b = args
    if not any(isinstance(x, (Interval, AxisIndex, SetField)) for x in args):
        return None
    if not (isinstance(a, Interval) and isinstance(b, Interval) and a.array == b.array) or \
            (a.lo is not None and b.lo is not None) or (a.hi is not None and b.hi is not None):
        raise Refusal("an And of child-set masks other than a lower and an upper bound of one arange")
    return _interval_mask(it, Interval(a.array, a.lo if a.lo is not None else b.lo,
                                       a.hi if a.hi is not None else b.hi))


def _interval_mask(it, iv: Interval) -> SetField:
    """The mask lo <= i < hi over the vector's positions: a 'range' set whose members are the vector's values there
    (bounds clamped at 0: a mask does not wrap negative bounds as a slice does)."""
    lo = ix.ibin("max", iv.lo if iv.lo is not None else ix.const(0), ix.const(0))
    hi = ix.ibin("max", iv.hi if iv.hi is not None else ir.Length(iv.array), ix.const(0))
    it.use_array(it.arrays[iv.array])
    return SetField(Members("range", (iv.array,), (lo, hi), iv.array), "mask", "pred")


def _count_of(it, node, args):
    """Gather(Shape(x), 0) of a set value x: its member count."""
    data, idx = args[0], args[1]
    if isinstance(data, SetShape) and isinstance(idx, Known) and idx.value.size == 1 and \
            int(attr(node, "axis", 0)) == 0:
        dims = _static_dims(data.field)
        k = int(idx.value.reshape(-1)[0])
        if -len(dims) <= k < len(dims) and dims[k] is not None:  # a dimension other than the set's: a constant
            return Known(np.full(idx.value.shape, dims[k], dtype=np.int64))
    if isinstance(data, SetShape) and isinstance(idx, Known) and idx.value.size == 1 and \
            int(idx.value.reshape(-1)[0]) == 0 and int(attr(node, "axis", 0)) == 0:
        if data.field.layout != "list":
            return None  # a mask's length is its axis's
        return SetCount(data.field, idx.value.ndim)
    if isinstance(data, SetShape):
        raise Refusal("a dimension of a child-set value's shape other than its member count")
    return None


def _static_dims(x: SetField) -> list:
    """The dimensions of a set value's shape, None at the set's axis."""
    if x.kind in ("positions", "ids"):
        return {"nonzero": [1, None], "column": [None, 1]}.get(x.shape_tag, [None])
    return [1] * x.lead + [None] + list(x.inner)


def _concat_dims(it, node, args):
    """Concat of a member count and constants: a shape (the repeats of `x.repeat(len(child_h), 1)`)."""
    counts = [a for a in args if isinstance(a, SetCount)]
    if not counts:
        return None
    if len(counts) > 1 or counts[0].rank != 1 or not all(isinstance(a, (SetCount, Known)) for a in args):
        raise Refusal("a shape built from child-set counts other than one count and constants")
    dims = []
    for a in args:
        dims += ["M"] if isinstance(a, SetCount) else [int(d) for d in a.value.reshape(-1)]
    return SetDims(counts[0].field, tuple(dims))


def _repeat(it, node, args):
    """Tile / Expand of a node value [1, ...] to [M, ...] rows of a set: each member sees the node's value."""
    x, dims = args[0], args[1]
    if isinstance(x, SetField) and node.op_type == "Expand" and isinstance(dims, SetDims) and \
            dims.dims == ("M",) + tuple(x.inner):
        return x
    if not isinstance(dims, SetDims):
        return None
    if dims.dims.count("M") != 1 or dims.dims[0] != "M":
        raise Refusal(f"a {node.op_type} along a member count other than the first axis")
    shape = getattr(x, "shape", None)
    rest = dims.dims[1:]
    if node.op_type == "Tile":
        if shape is None or len(shape) != len(dims.dims) or shape[0] != 1 or any(r != 1 for r in rest):
            raise Refusal(f"a Tile of {describe(x)} by a member count")
        inner = tuple(shape[1:])
    else:  # Expand: broadcast [1, ...] against [M, *rest]
        if shape is None or len(shape) > len(dims.dims) or (len(shape) == len(dims.dims) and shape[0] != 1):
            raise Refusal(f"an Expand of {describe(x)} to a member count")
        tail = tuple(shape[1:]) if len(shape) == len(dims.dims) else tuple(shape)
        inner = tuple(np.broadcast_shapes(tail, tuple(rest)))
    row = it.row(x, f"{node.op_type} operand")
    width = int(np.prod(inner, dtype=np.int64))
    body = row.expr if row.expr.width == width else ir.Take(row.expr, tuple(
        int(i) for i in np.broadcast_to(np.arange(row.expr.width).reshape(
            tuple(shape[1:]) if len(shape) == len(dims.dims) else tuple(shape)), inner).reshape(-1)), width)
    return SetField(dims.field.members, "list", "rows", body, inner=inner)


def _fill_value(v):
    if isinstance(v, Filled):
        return v.value
    if isinstance(v, Known) and v.value.size >= 1 and np.all(v.value == v.value.reshape(-1)[0]) \
            and v.value.dtype.kind == "f":
        return float(v.value.reshape(-1)[0])
    if isinstance(v, Known) and v.value.size >= 1 and np.all(np.isnan(v.value)):
        return float("nan")
    return None


BIG_M = 1_000_003  # the set's axis in a broadcast of static shapes (no model has a dimension this size)


def _set_shape(v):
    """The shape the graph sees, the set's axis as BIG_M (a whole table's rows, zeros_like(table)'s rows too)."""
    if isinstance(v, SetField):
        return (1,) * v.lead + (BIG_M,) + tuple(v.inner)
    if isinstance(v, Table):
        return (BIG_M,) + tuple(v.inner)
    if isinstance(v, Filled):
        return (BIG_M,) + tuple(v.inner)
    return shape_of(v)


def _result_layout(node, args):
    """(lead, inner) of an elementwise result over a set: numpy broadcasting with the set's axis aligned."""
    shapes = [_set_shape(a) for a in args if a is not None]
    if any(sh is None for sh in shapes):
        raise Refusal(f"{node.op_type} of a child set's values with an operand of unknown shape")
    try:
        out = np.broadcast_shapes(*shapes)
    except ValueError:
        raise Refusal(f"{node.op_type}: operands do not broadcast over the child set's axis") from None
    if list(out).count(BIG_M) != 1 or any(d != 1 for d in out[:out.index(BIG_M)]):
        raise Refusal(f"{node.op_type} of a child set's values along another axis than the set's")
    lead = out.index(BIG_M)
    return lead, tuple(out[lead + 1:])


def _member_value(it, v, inner) -> Row:
    """One member's value of v (a set value, or a node value broadcast to every member), shaped `inner`."""
    from .layout import broadcast_row
    if isinstance(v, SetField):
        row = v.member()
    elif isinstance(v, Known):
        shape = tuple(v.value.shape)
        extra = max(len(shape) - len(inner), 0)
        row = it.row(Known(v.value.reshape(shape[extra:])), "operand")
    else:
        row = it.row(v, "operand")
        if len(row.shape) > len(inner):
            extra = len(row.shape) - len(inner)
            row = Row(row.expr, tuple(row.shape[extra:]))
    return broadcast_row(it, row, tuple(inner))


def _where(it, node, args):
    """Where(mask, a, b): the members hold a (a whole table's rows, rows gathered at an edge list, a set value or a
    node value), the others b, which must be one constant (or a set value's constant fill)."""
    cond, a, b = args
    if not isinstance(cond, SetField):
        if any(isinstance(x, SetField) for x in (a, b)):
            raise Refusal("a Where on a child set's values under a condition that is not its mask")
        return None
    if cond.kind != "pred" or cond.layout != "mask":
        raise Refusal("a Where on a child-set value other than its mask")
    if cond.negated:
        a, b = b, a
    a = _whole_table(it, a) if isinstance(a, Table) else a
    if isinstance(b, SetField) and b.layout == "all" and isinstance(b.body, ir.Scalar):
        fill, nan = b.body.value, False  # torch.zeros_like(h_k): one constant everywhere
        b = Known(np.asarray(fill, dtype=np.float32))
    elif isinstance(b, SetField):
        if b.layout != "mask" or b.kind != "rows":
            raise Refusal("a Where over a child set whose other side varies per position")
        fill, nan = b.fill, b.nan_if_empty
    else:
        fill, nan = _fill_value(b), False
        if fill is None or (isinstance(b, Known) and b.value.dtype.kind != "f"):
            raise Refusal(f"a Where over a child set whose other side is {describe(b)}, not one constant")
    if isinstance(a, SetField) and a.kind != "rows":
        raise Refusal("a Where choosing a child set's mask itself")
    fields = [cond] + [x for x in (a, b) if isinstance(x, SetField)]
    if any(f.layout == "list" or f.kind not in ("rows", "pred") for f in fields):
        raise Refusal("a Where mixing a child set's mask with its selected rows (select the members with NonZero "
                      "first, or weigh the whole table by the mask)")
    members = _combine(fields)
    if isinstance(b, Filled) and not members.rows_are_ids:  # zeros_like(h) spans the table's rows, not the edges
        raise Refusal("a Where over an edge list's mask whose other side is shaped like the state table")
    lead, inner = _result_layout(node, [cond, a, b])
    body = _member_value(it, a, inner)
    return SetField(members, "mask", "rows", body.expr, fill, inner, lead=lead, nan_if_empty=nan)


def _not(it, node, args):
    x = args[0]
    if not isinstance(x, SetField):
        return None
    if x.kind != "pred" or x.layout != "mask":
        raise Refusal(f"a Not of child-set {x.kind}")
    return replace(x, negated=not x.negated)


PER_MEMBER_OPS = set(ROW_ARITH) | set(UNARY) | {"Gelu", "Clip", "Identity", "Sum", "Mean", "Max", "Min", "MatMul",
                                                 "Gemm", "PRelu"}


def _per_member(it, node, args, lookup):
    """An op that keeps the set's axis apart (elementwise math, a product by a weight): the regular handler on one
    member's values (the set value's body, with the node's own values broadcast to it) gives the body of the
    result. Values over a whole axis and masks of it combine position by position (`h_k * mask`): the result is a
    mask when one operand is, whose non-members hold one constant (`_nonmember_fill`)."""
    fields = [a for a in args if isinstance(a, SetField)]
    if not fields or node.op_type not in PER_MEMBER_OPS:
        return None
    first = fields[0]
    layouts = {f.layout for f in fields}
    if any(f.kind != "rows" for f in fields) or ("list" in layouts and len(layouts) > 1):
        raise Refusal(f"{node.op_type} of child-set values other than per-member rows of one set")
    if "list" in layouts:
        if any(f.members != first.members for f in fields):
            raise Refusal(f"{node.op_type} of child-set values other than per-member rows of one set")
        members, layout = first.members, "list"
    else:
        args = [_whole_table(it, a) if isinstance(a, Table) else a for a in args]
        fields = [a for a in args if isinstance(a, SetField)]
        first = fields[0]
        members, layout = _combine(fields), ("mask" if "mask" in layouts else "all")
    if node.op_type in ("MatMul", "Gemm") and (args[0] is not first or len(fields) > 1 or not first.inner
                                                 or int(attr(node, "transA", 0))):
        raise Refusal(f"a {node.op_type} that multiplies along a child set's axis")
    if node.op_type in ("MatMul", "Gemm") and any(len(shape_of(a) or ()) > 2 for a in args[1:2]):
        raise Refusal(f"a {node.op_type} of a child set's rows by a batched operand")
    inner_rank = len(first.inner)
    lead = max(f.lead for f in fields)
    member_args = []
    for a in args:
        if isinstance(a, SetField):
            if len(a.inner) != inner_rank:
                raise Refusal(f"{node.op_type} of child-set values of different ranks")
            member_args.append(Row(a.body, tuple(a.inner)) if a.body.width == int(np.prod(a.inner, dtype=np.int64))
                               else a.member())
            continue
        shape = shape_of(a) if isinstance(a, (Row, Known, Sym)) else None
        if shape is not None and len(shape) > inner_rank and node.op_type not in ("MatMul", "Gemm"):
            # dims before the members' own broadcast against the set's axis and its unit dims: all must be 1
            extra = len(shape) - inner_rank
            if any(d != 1 for d in shape[:extra]):
                raise Refusal(f"{node.op_type} of a child set's values with {describe(a)} along the set's axis")
            lead = max(lead, extra - 1)
            a = Row(a.expr, tuple(shape[extra:])) if isinstance(a, Row) else \
                Known(a.value.reshape(shape[extra:])) if isinstance(a, Known) else a
        member_args.append(a)
    out = interpreter.HANDLERS[node.op_type](it, node, member_args, lookup)
    out = out[0] if isinstance(out, list) else out
    if not isinstance(out, Row):
        raise Refusal(f"{node.op_type} of a child set's values gives {describe(out)}")
    if layout != "mask":
        return SetField(members, layout, "rows", out.expr, inner=tuple(out.shape), lead=lead)
    fill = _nonmember_fill(node, args)
    nan = any(f.nan_if_empty for f in fields if f.layout == "mask")
    return SetField(members, "mask", "rows", out.expr, fill, tuple(out.shape), lead=lead, nan_if_empty=nan)


def _nonmember_fill(node, args) -> float:
    """What the op gives at a mask's non-members, which must be one constant: the op folded over the masks' fills
    and the constants; or 0 for a product by a mask's 0 (0 * x; a non-member row holding inf or NaN would give NaN
    in the original: the NaN caveat of docs/ir.md)."""
    values, unknown = [], False
    for a in args:
        if isinstance(a, SetField) and a.layout == "mask":
            values.append(np.asarray(a.fill, dtype=np.float32))
        elif isinstance(a, SetField) and isinstance(a.body, ir.Scalar):  # one constant at every position
            values.append(np.asarray(a.body.value, dtype=np.float32))
        elif isinstance(a, Known):
            values.append(a.value)
        elif a is None:
            values.append(None)
        else:
            values.append(None)
            unknown = True
    zero_mask = any(isinstance(a, SetField) and a.layout == "mask" and a.fill == 0.0 for a in args)
    if node.op_type == "Mul" and zero_mask and unknown:
        return 0.0
    if node.op_type in ("MatMul", "Gemm") and isinstance(args[0], SetField) and args[0].fill == 0.0 and \
            (node.op_type == "MatMul" or len(args) < 3 or args[2] is None):
        return 0.0
    if not unknown:
        out = np.asarray(interpreter.fold_node(node, values)[0], dtype=np.float64).reshape(-1)
        if out.size and (np.all(out == out[0]) or np.all(np.isnan(out))):
            return float(out[0])
    raise Refusal(f"{node.op_type} over a child set's mask whose non-members would hold values that vary (a mask "
                  "selects rows by a product with it, a Where with a constant, or a mask matmul)")


REDUCTIONS = {"ReduceSum": "add", "ReduceMax": "max", "ReduceMin": "min", "ReduceMean": "mean", "ReduceProd": "mul"}
IDENTITY = {"add": 0.0, "mul": 1.0, "max": NEG_INF, "min": POS_INF}


def _reduce(it, node, args):
    x = args[0]
    if not isinstance(x, SetField):
        return None
    axes = known_ints(it, args[1], "reduce axes").reshape(-1).tolist() if len(args) > 1 and args[1] is not None \
        else attr(node, "axes")
    keepdims = int(attr(node, "keepdims", 1))
    if axes is None and not x.inner and not x.lead:
        axes = [0]
    if axes is None:
        raise Refusal(f"{node.op_type} of a child set over all its axes")
    axes = sorted({norm_axis(a, x.rank, "reduce axes") for a in axes})
    if not axes:
        raise Refusal(f"{node.op_type} of a child set over an empty list of axes")
    op = REDUCTIONS[node.op_type]
    if x.kind == "int" and axes == [x.lead] and op == "add":  # the number of members: an integer
        shape = (1,) * x.lead + ((1,) if keepdims else ()) + tuple(x.inner)
        count = _reduction(_counted(x.members), "add", ir.Scalar(1.0), 1)
        return IntRow(Row(count if not x.inner else ir.Take(count, (0,) * len(np.zeros(x.inner).reshape(-1)),
                                                            int(np.prod(x.inner))), shape))
    if x.kind == "int" and axes == [x.lead] and op == "max" and x.layout == "mask" and not x.inner:
        # mask.any(): 1 where the set has a member; over an empty axis ONNX's ReduceMax gives the type's lowest value
        shape = (1,) * x.lead + ((1,) if keepdims else ())
        count = _reduction(_counted(x.members), "add", ir.Scalar(1.0), 1)
        empty_axis = ir.IndexValue(ix.iselect(ix.cmp("eq", x.members.length, ix.const(0)), ix.const(1), ix.const(0)))
        lowest = ir.binary("mul", empty_axis, ir.Scalar(float(np.iinfo(np.int64).min)))
        return IntRow(Row(ir.binary("add", ir.binary("min", count, ir.Scalar(1.0)), lowest), shape))
    if x.kind != "rows":
        raise Refusal(f"{node.op_type} of child-set {x.kind}")
    if all(a > x.lead for a in axes):
        return _reduce_within(it, x, [a - x.lead - 1 for a in axes], bool(keepdims), op)
    if axes != [x.lead]:
        raise Refusal(f"{node.op_type} of a child set over the set's axis and others at once")
    if x.layout == "all":
        raise Refusal(f"{node.op_type} over every position of an axis: no mask selects a child set")
    row = _set_reduce(x, "add" if op == "mean" else op)
    if op == "mean":
        row = ir.binary("div", row, _count(x))
    if x.nan_if_empty:
        row = _nan_where_empty(x.members, row)
    shape = (1,) * x.lead + ((1,) if keepdims else ()) + tuple(x.inner)
    return Row(row, shape)


def _counted(m: Members) -> Members:
    """A set whose members are only counted: an edge list's mask needs a member row to be a SetReduce (the other
    row: its ids are checked as the model's own gather at the mask checks them)."""
    if m.encoding == "edge_index" and len(m.bounds) == 2:
        row = int(m.bounds[1].value)
        return replace(m, bounds=m.bounds + (ix.const(0 if row else 1),))
    return m


def _reduce_within(it, x: SetField, axes, keepdims: bool, op: str) -> SetField:
    """A reduction within each member (over its own elements). A mask's other rows hold the fill: reduced, a fill
    stays itself for max, min and mean, and for a sum of 0 or an infinity."""
    from .ops_linalg import reduce_row
    if x.layout == "mask" and not (op in ("max", "min", "mean") or (op == "add" and x.fill in (0.0, NEG_INF, POS_INF))):
        raise Refusal(f"a {op} within the rows of a child set's mask whose other rows hold {x.fill}")
    if op == "mean":
        total = reduce_row(it, x.member(), axes, keepdims, "add")
        count = float(np.prod([x.inner[a] for a in axes], dtype=np.int64))
        return x.with_member(Row(ir.binary("div", total.expr, ir.Scalar(count)), total.shape))
    return x.with_member(reduce_row(it, x.member(), axes, keepdims, op))


def _softmax(it, node, args):
    """Softmax / LogSoftmax over a child set's axis (attention over the members) or within each member. Over a mask
    whose non-members hold -inf (`scores.masked_fill(~mask, -inf)`): the members' softmax, 0 (or -inf) at the
    non-members, NaN everywhere when the set is empty (as the original: exp(-inf - -inf))."""
    x = args[0]
    if not isinstance(x, SetField):
        if isinstance(x, Table):
            raise Refusal(f"a {node.op_type} of the whole state table {x.name}")
        return None
    if x.kind != "rows" or x.layout == "all" or it.opset < 13:
        raise Refusal(f"a {node.op_type} of a child set's {x.layout} {x.kind} (select the members first)")
    axis = norm_axis(attr(node, "axis", -1), x.rank, f"{node.op_type} axis")
    member = x.member()
    if x.layout == "mask" and (axis != x.lead or x.fill != NEG_INF or x.nan_if_empty):
        raise Refusal(f"a {node.op_type} over a child set's mask whose non-members hold {x.fill}, not -inf "
                      "(scores.masked_fill(~mask, float('-inf')) converts)")
    if axis < x.lead:  # over a unit dimension: every element is its own softmax
        one = ir.Scalar(0.0 if node.op_type == "LogSoftmax" else 1.0)
        return x.with_member(Row(ir.Take(one, (0,) * member.expr.width, member.expr.width), member.shape))
    if axis > x.lead:  # within each member
        from .ops_linalg import softmax_row
        return x.with_member(softmax_row(it, member, [axis - x.lead - 1], node.op_type == "LogSoftmax"))
    width = member.expr.width
    top = _reduction(x.members, "max", member.expr, width)
    shifted = ir.binary("sub", member.expr, top)
    total = _reduction(x.members, "add", ir.unary("exp", shifted), width)
    out = ir.binary("sub", shifted, ir.unary("log", total)) if node.op_type == "LogSoftmax" else \
        ir.binary("div", ir.unary("exp", shifted), total)
    if x.layout == "mask":
        return replace(x.with_member(Row(out, member.shape)), fill=NEG_INF if node.op_type == "LogSoftmax" else 0.0,
                       nan_if_empty=True)
    return x.with_member(Row(out, member.shape))


def _count(x: SetField) -> ir.RExpr:
    """How many elements a mean divides by: the members of a list, the whole axis of a mask."""
    if x.layout == "list":
        return _reduction(x.members, "add", ir.Scalar(1.0), 1)
    return ir.IndexValue(x.members.length)


def _set_reduce(x: SetField, op: str) -> ir.RExpr:
    width = int(np.prod(x.inner, dtype=np.int64)) if x.inner else 1
    body = x.body if x.body.width == width else ir.Take(x.body, (0,) * width, width)
    if x.layout == "mask":
        # the non-members hold `fill`: exact when the fill is the op's identity (0 for a sum, -inf for a max)
        if x.fill is None or x.fill != IDENTITY[op]:
            raise Refusal(f"a {op} over a child set's mask whose other rows hold {x.fill} (the identity of {op}, "
                          f"{IDENTITY[op]}, converts)")
    members = x.members
    if not any(isinstance(e, ir.Member) for e in ir.walk([body])):
        members = _counted(members)  # a count or a sum of constants: the positions only
    return _reduction(members, op, body, width)


def _reduction(m: Members, op: str, body: ir.RExpr, width: int) -> ir.RExpr:
    encoding, arrays, bounds = m.encoding, m.arrays, m.bounds
    if encoding == "edge_index" and len(bounds) not in (3, 4):
        raise Refusal(f"a reduction over a mask of edge list {arrays[0]} (select its other row at the mask's "
                      "NonZero positions)")
    if encoding == "all":
        raise Refusal("a reduction over every position of an axis: no mask selects a child set")
    return ir.SetReduce(op, encoding, tuple(arrays), tuple(bounds), body, IDENTITY[op], width)


def _matmul(it, node, args):
    """mask @ rows: the sum over the positions of the mask's weights times the rows there (`(parent == v).float() @
    h`, `(edge_index[1] == v).float() @ h[edge_index[0]]`, attention weights @ rows): a sum over the members (0 *
    a non-member's row is 0 unless that row is not finite: the NaN caveat)."""
    a, b = args
    if isinstance(b, SetField) and not isinstance(a, SetField):
        raise Refusal("a product with a child set on the right")
    if not isinstance(a, SetField) or a.layout == "list" or a.inner:
        return None  # a product of each member's rows: _per_member
    if a.kind != "rows" or a.layout != "mask" or a.fill != 0.0:
        raise Refusal("a product of child-set values other than its mask or weights that are 0 at non-members")
    b = _whole_table(it, b) if isinstance(b, Table) else b
    if not isinstance(b, SetField) or b.kind != "rows" or b.layout == "list" or len(b.inner) > 1 or \
            (b.layout == "mask" and b.fill != 0.0):
        raise Refusal(f"the mask of a child set multiplies {describe(b)}, not rows over the mask's axis")
    members = _combine([a, b])
    rows = b.member()
    body = rows.expr if a.body == ir.Scalar(1.0) else \
        ir.binary("mul", ir.Take(a.body, (0,) * rows.expr.width, rows.expr.width) if a.body.width == 1 else a.body,
                  rows.expr)
    a_shape = (1,) * a.lead + (7,)
    b_shape = (1,) * b.lead + (7,) + tuple(b.inner)
    if not b.inner and b.lead:
        raise Refusal("a mask times a vector over the set's axis with unit dimensions before it")
    shape = tuple(np.matmul(np.zeros(a_shape, np.float32), np.zeros(b_shape, np.float32)).shape)
    row = _reduction(members, "add", body, rows.expr.width)
    if a.nan_if_empty or (b.layout == "mask" and b.nan_if_empty):
        row = _nan_where_empty(members, row)
    return Row(row, shape)


def _nan_where_empty(m: Members, row: ir.RExpr) -> ir.RExpr:
    """row, or NaN where the set is empty and its axis is not: a sum over softmax weights of a mask filled with
    -inf, which are NaN at every position when no position is a member (as the original computes them)."""
    count = _reduction(_counted(m), "add", ir.Scalar(1.0), 1)
    axis_nonempty = ir.IndexValue(ix.iselect(ix.cmp("gt", m.length, ix.const(0)), ix.const(1), ix.const(0)))
    empty = ir.binary("and", ir.binary("eq", count, ir.Scalar(0.0)), axis_nonempty)
    return ir.Where(empty, ir.Scalar(float("nan")), row, row.width)


class IntRow:
    """An integer value computed from a child set (its member count, `(parent == v).sum()`), held as a float row
    (exact for counts below 2**24). Ops that integers and floats compute alike keep it (comparisons give boolean
    rows, a Cast to float gives the row); integer division and the like are refused."""
    __slots__ = ("row",)

    def __init__(self, row: Row):
        self.row = row


INT_ROW_KEEP = {"Add", "Sub", "Mul", "Max", "Min", "Clip", "Neg", "Abs", "Unsqueeze", "Squeeze", "Reshape",
                "Identity", "Expand", "Flatten"}
INT_ROW_BOOL = {"Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual"}


def _int_row_op(it, node, args, lookup):
    if not any(isinstance(a, IntRow) for a in args):
        return None
    import onnx
    if node.op_type == "Cast" and int(attr(node, "to")) in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
        return args[0]
    if any(isinstance(a, Known) and a.value.dtype.kind == "f" for a in args) and node.op_type in INT_ROW_KEEP:
        raise Refusal(f"{node.op_type} of a child set's integer count with a float constant")
    plain = [a.row if isinstance(a, IntRow) else a for a in args]
    if node.op_type == "Cast" and int(attr(node, "to")) in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
        return plain[0]
    if node.op_type == "Cast" and int(attr(node, "to")) == onnx.TensorProto.BOOL:
        row = plain[0]
        return Row(ir.binary("ne", row.expr, ir.Scalar(0.0)), tuple(row.shape), True)
    if node.op_type not in INT_ROW_KEEP | INT_ROW_BOOL:
        raise Refusal(f"{node.op_type} of a child set's integer count (comparisons, sums, products, clamps and a "
                      "Cast to float convert)")
    if node.op_type in ("Unsqueeze", "Squeeze", "Reshape", "Expand") and not isinstance(args[0], IntRow):
        raise Refusal(f"a {node.op_type} shaped by a child set's integer count")
    out = interpreter.HANDLERS[node.op_type](it, node, plain, lookup)
    out = out[0] if isinstance(out, list) else out
    if node.op_type in INT_ROW_BOOL or not isinstance(out, Row):
        return out
    return IntRow(out)


def _slice_within(it, node, args):
    """A Slice of a set value (or of a whole table) on axes within each member (`hc_k[..., 0:1, :]`)."""
    x = args[0]
    if isinstance(x, Table) and x.lead == 1 and len(args) >= 4 and args[3] is not None and \
            all(isinstance(a, Known) for a in args[1:] if a is not None):
        axes = [a % (1 + len(x.inner)) for a in known_ints(it, args[3], "Slice axes").reshape(-1).tolist()]
        starts = known_ints(it, args[1], "Slice starts").reshape(-1).tolist()
        ends = known_ints(it, args[2], "Slice ends").reshape(-1).tolist()
        steps = known_ints(it, args[4], "Slice steps").reshape(-1).tolist() if len(args) > 4 and \
            args[4] is not None else [1] * len(axes)
        narrowed = any(not (lo == 0 and hi >= x.inner[a - 1] and st == 1)
                       for a, lo, hi, st in zip(axes, starts, ends, steps) if a)
        if 0 not in axes and narrowed:  # hc[:, 0:1]: a part of every row (a whole-row slice stays the table's)
            x = _whole_table(it, x)
    if not isinstance(x, SetField):
        return None
    if len(args) < 4 or args[3] is None or not all(isinstance(a, Known) for a in args[1:] if a is not None):
        raise Refusal("a Slice of a child set's values without constant axes and bounds")
    if x.kind != "rows":
        raise Refusal(f"a Slice of child-set {x.kind}")
    axes = [norm_axis(a, x.rank, "Slice axes") for a in known_ints(it, args[3], "Slice axes").reshape(-1).tolist()]
    if any(a <= x.lead for a in axes):
        raise Refusal("a Slice of a child set's values along the set's axis or before it")
    member = x.member()
    member_args = [member, args[1], args[2], Known(np.asarray([a - x.lead - 1 for a in axes], dtype=np.int64))] + \
        list(args[4:5])
    out = interpreter.HANDLERS["Slice"](it, node, member_args, None)
    out = out[0] if isinstance(out, list) else out
    if not isinstance(out, Row):
        raise Refusal(f"a Slice within a child set's values gives {describe(out)}")
    return x.with_member(out)


HANDLERS = {"Equal": _equal, "Gather": _gather, "GatherND": _gather_nd, "NonZero": _nonzero,
            "Transpose": _transpose, "Squeeze": _squeeze, "Reshape": _reshape,
            "Unsqueeze": _unsqueeze, "Cast": _cast, "Slice": _slice_or_within,
            "Range": _range, **{op: _compare for op in COMPARISONS}, "And": _and,
            "ConstantOfShape": _constant_of_shape, "Expand": _expand, "Shape": _shape, "Max": _variadic,
            "Min": _variadic, "Sum": _variadic, "Mean": _variadic, "Where": _where, "Not": _not,
            "MatMul": _matmul, "Concat": _concat_dims, "Tile": _repeat, "Softmax": _softmax, "LogSoftmax": _softmax,
            **{op: _reduce for op in REDUCTIONS}}


SET_VALUES = (SetField, KeyRow, Filled, SetShape, AxisIndex, Interval, SetCount, SetDims, IntRow)


def _within_rows(it, node, args) -> bool:
    """An op on a whole state table that computes each row from that row alone: elementwise math of one operand,
    a reduction over the rows' own axes."""
    if node.op_type in UNARY and node.op_type != "Identity" and len([a for a in args if a is not None]) == 1:
        return True
    if node.op_type in REDUCTIONS:
        axes = known_ints(it, args[1], "reduce axes").reshape(-1).tolist() if len(args) > 1 and args[1] is not None \
            else attr(node, "axes")
        rank = 1 + len(args[0].inner)
        return bool(axes) and all(a % rank != 0 for a in axes)
    return False


def count_edges(cases) -> tuple:
    """A count over a mask of an edge list's targets (`(dst == v).any()`) in a model that also reads the edges'
    sources whole beside that mask (`h[src]`): counted over the edge list (members src[e], whose values and length
    the kernel checks as the model's own gather does) rather than as a parent array, whose length would have to be
    the tables' number of rows."""
    found = [e for c in cases for e in ir.walk(c.roots()) if isinstance(e, ir.SetReduce)]
    sources = {e.arrays[1]: e.arrays[0] for e in found if e.encoding == "edges" and len(e.bounds) == 2}
    mapping = {e: replace(e, encoding="edges", arrays=(sources[e.arrays[0]], e.arrays[0]),
                          bounds=e.bounds + (ix.const(1),))
               for e in found if e.encoding == "parent" and e.arrays[0] in sources and
               not any(isinstance(x, ir.Member) for x in ir.walk([e.body]))}
    if not mapping:
        return cases
    return tuple(c.with_roots(ix.substitute(c.roots(), mapping)) for c in cases)


def dispatch(it, node, args, lookup):
    """The outputs when `node` builds or consumes a child set, else None (the op's own handler runs)."""
    out = _int_row_op(it, node, args, lookup)
    if out is not None:
        return [out]
    if node.op_type in ("MatMul", "Gemm") and isinstance(args[0], Table) and args[0].lead == 1 and \
            isinstance(args[1], Known):
        args = [_whole_table(it, args[0])] + list(args[1:])  # h @ w of a whole table: each row's product
    elif args and isinstance(args[0], Table) and args[0].lead == 1 and _within_rows(it, node, args):
        args = [_whole_table(it, args[0])] + list(args[1:])  # tanh(h), h.sum(-1): each row's own
    fn = HANDLERS.get(node.op_type)
    out = fn(it, node, args) if fn is not None else None
    if out is None:
        out = _per_member(it, node, args, lookup)
    if out is not None:
        return [out]
    if any(isinstance(a, SET_VALUES) for a in args):
        kinds = ", ".join(sorted({a.kind if isinstance(a, SetField) else type(a).__name__
                                  for a in args if isinstance(a, SET_VALUES)}))
        raise Refusal(f"op {node.op_type} on a child set's values ({kinds}) is not supported")
    return None

"""A padded forest's tables and inputs: the reads and writes that name the tree (ops_lanes.py follows the lane axis
through every other op), and the recognizers' part, one position per (iteration, tree).

Reads and writes of the forest's table name the lane as their first index, each index in its own dimension with
ONNX's semantics: GatherND / ScatterND at (b, u) tuples, Gather on axis 1 (h[:, v]), GatherElements /
ScatterElements on axis 1, the table with its tree and node axes swapped (dynamo's h[:, v] = r), torch.cat along the
node axis. One tree's slice of an input [B, N, ...] (left[:, v]) is an `ArrayLane` until its node axis is indexed.
TorchScript's flat read h.flatten(0, 1)[b * N + u] is another tree's row for u outside [0, N): read as it was when
the iteration began (`Crossed`, resolved in `flatten_lanes` through the table's `_start` copy)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..ir import index as ix
from ..ir import nodes as ir
from .interpreter import attr
from .operands import known_ints, norm_axis, static_shape
from .ops_lanes import (BIG, LANE_VALUES, SOURCES, ArrayLane, Crossed, Lane, Laned, LaneSlice, Swapped, _inner,
                        _unwrap, _wrap, lane_array)
from .values import Flat, Known, Refusal, Row, Sym, Table

# ---- reads and writes of the forest ------------------------------------------------------------------------------


def _lane_table(v) -> bool:
    return isinstance(v, Table) and v.lead == 2


def _gather_source(it, node, args, lookup):
    """h[:, v] (Gather on axis 1 of the forest's table), left[:, v] (of a [B, N, ...] input), and reads of one
    tree's slice of an input or of a flattened table at per-tree rows."""
    data, indices = args
    axis = attr(node, "axis", 0)
    if isinstance(data, Swapped):
        return swapped_op(it, node, args, lookup)
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
        return swapped_op(it, node, args, lookup)
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


def swapped_op(it, node, args, lookup):
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
        return swapped_op(it, node, args, lookup)
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


SOURCES.update({
    "Gather": _gather_source, "GatherND": _gather_nd_source, "GatherElements": _gather_elements_source,
    "ScatterND": _scatter_nd_source, "ScatterElements": _scatter_elements_source, "Concat": _concat_source,
    "Slice": lambda it, node, args, lookup: (
        _view_source(it, node, args, lookup) if not isinstance(args[0], Laned) else None),
    "Transpose": lambda it, node, args, lookup: (
        _view_source(it, node, args, lookup) if not isinstance(args[0], Laned) else None)})

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
    for length in sorted(interp.shared.get("lane_lengths", ()), key=repr):  # torch.arange(roots.size(0))
        checks = ix.band(checks, ix.cmp("eq", length, trees))
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
    positions = ix.ibin("mul", trip, trees)
    if interp.shared.get("lanes_at_least_one"):  # shapes of max(B, 1) rows fail the original's first iteration at B = 0
        positions = ir.Guard(ix.bor(ix.cmp("le", trip, ix.const(0)), ix.cmp("ge", trees, ix.const(1))), positions,
                             "the forest has no tree (B = 0) while the loop runs: the exported model's index shapes "
                             "take max(B, 1) trees and fail")
    return cases, tables, positions


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

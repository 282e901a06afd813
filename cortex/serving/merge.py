"""Running several requests as one forest: the plan (what each model input and output is), merging the requests'
inputs, checking the merged batch, and splitting the outputs back.

`plan_for(model)` reads the decision a converted model's Cortex nodes carry (`notes.merge`, recorded at conversion
from the IR and derived again here) and the ONNX nodes around them (graph.py). A mergeable plan says, per model
input, which unit its rows count (the nodes, the positions, the rows of some input) and whether its values are node
ids; per output, which unit its rows count. Then, for a batch:

1. `check_request` (per request, before it is queued): names, element types, ranks and static dimensions as the
   model declares them, and every input of a unit with the same number of rows; a request that fails runs alone
   (ONNX Runtime or the kernel gives it its own error).
2. `merge`: inputs concatenated along their rows, node ids shifted by the request's node base (values >= 0 only:
   negative values are "no child" sentinels and stay as they are).
3. `out_of_bounds`: the requests whose indices leave their own rows in the merged arrays (indexeval.py); they are
   taken out of the batch and run alone.
4. `split`: each output cut back into the requests' rows.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import onnx

from ..ir import nodes as ir
from ..ir.printer import format_index
from .graph import GraphAnalysis
from .tail import TailPlan, cut_tail
from .values import Columns, Const, Flipped, Opaque, Padded, Rows, count_value
from .indexeval import BoundsCheck, native, wrapping_reads
from .kernel import COUNT, OFFSETS, POSITIONS, WINDOWS, NotMergeable, trip_count
from .windows import unwritten_clamps, window_input

_NUMPY_TYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
                onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32, onnx.TensorProto.BOOL: np.bool_,
                onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.INT8: np.int8, onnx.TensorProto.UINT8: np.uint8,
                onnx.TensorProto.INT16: np.int16}


class FeedError(ValueError):
    """A request that names inputs the model does not have, or lacks one it needs; the message is one line."""


@dataclass(frozen=True)
class InputPlan:
    name: str
    unit: str  # the unit its rows count
    node_ids: bool  # its values are node ids: shifted by the request's node base
    dtype: Optional[np.dtype]  # as the model declares it (None: not declared)
    inner: Optional[tuple]  # declared dimensions other than the rows' axis (None entries: symbolic)
    axis: int = 0  # the axis its rows run along (1: an edge list [2, E])
    offsets_into: Optional[str] = None  # CSR offsets: one row per node plus one, values rows of this unit (edges)
    backward: bool = False  # positions a recursion walks from the end: the requests' rows laid out last first


@dataclass(frozen=True)
class OutputPlan:
    name: str
    unit: Optional[str]  # the unit its rows count; None: the same value for every request
    padding: Optional[float] = None  # a tail's table with one row of this constant past the rows (values.Padded)


@dataclass(frozen=True)
class KernelCheck:
    """What the per-batch bounds check needs of one recursion."""
    name: str
    program: object  # cortex.ir.nodes.Program
    arrays: dict  # kernel array -> model input whose values it holds
    nodes: str
    positions: str
    positions_are_nodes: bool
    lengths: dict  # kernel input -> the unit its rows count (what a trip count's len() reads)
    bounds: BoundsCheck = field(compare=False, repr=False)  # prepared once: the per-batch index check
    trips: dict = field(default_factory=dict, compare=False, repr=False)  # unit counts -> trip count (a cache)
    flipped: frozenset = frozenset()  # arrays that hold their model input's rows last first (torch.flip)
    counts: dict = field(default_factory=dict)  # inputs the trip count reads -> (unit, values.Count) the graph computes
    nonempty: tuple = ()  # (kernel array, the unit its rows count) whose emptiness a case tests
    windows: Optional[str] = None  # its window input (windows.py): each node's request's rows, written by the merge

    @functools.cached_property
    def trip_units(self) -> tuple:
        """The units whose counts the trip count reads (the nodes, the lengths, the numbers the graph computes)."""
        return tuple(sorted({self.nodes, *self.lengths.values(), *(unit for unit, _ in self.counts.values())}))


@dataclass(frozen=True)
class MergePlan:
    mergeable: bool
    reason: Optional[str] = None  # why not, when not
    inputs: tuple = ()
    outputs: tuple = ()
    measures: dict = field(default_factory=dict)  # unit -> the input whose rows count it
    kernels: tuple = ()
    node_unit: Optional[str] = None  # the unit node ids count
    warnings: tuple = ()  # what merges less than it seems (reads that send some requests to run alone)
    less_one: frozenset = frozenset()  # units counted by CSR offsets: that input's rows minus one
    # outputs that do not split by rows, computed per request after the forest (tail.py); `outputs` then lists the
    # model's other outputs and, after them, the recursions' tables the tail reads (`tail.cut`)
    tail: Optional[TailPlan] = None
    # the recursions' window inputs (windows.py): fed by the merge to a session that takes them (merge_session), they
    # keep exact the reads of a missing child that would otherwise send requests to run alone
    windows: tuple = ()

    @functools.cached_property
    def request_spec(self) -> "RequestSpec":
        return _request_spec(self)

    def count(self, unit: str, feeds: dict) -> int:
        """The rows of `unit` in `feeds` (one request's inputs, or a forest's)."""
        name = self.measures[unit]
        return feeds[name].shape[self.request_spec.axes[name]] - int(unit in self.less_one)

    def describe(self) -> str:
        """Two or three lines for people: merged how, or why not."""
        if not self.mergeable:
            return f"not mergeable: {self.reason}"
        ins = ", ".join(f"{i.name} ({i.unit}{' along axis 1' if i.axis else ''}{', node ids' if i.node_ids else ''}"
                        f"{f' + 1, offsets into the {i.offsets_into}' if i.offsets_into else ''}"
                        f"{', the last request first' if i.backward else ''})" for i in self.inputs)
        outs = ", ".join(f"{o.name} ({o.unit or 'shared'})" for o in self.outputs)
        tail = f"; {self.tail.describe()}" if self.tail is not None else ""
        return f"mergeable: inputs {ins}; outputs {outs}{tail}" + "".join(f"; note: {w}" for w in self.warnings)


def refused(reason: str) -> MergePlan:
    return MergePlan(False, reason)


def plan_for(model) -> MergePlan:
    """The merge plan of a converted model (a path or a ModelProto); never raises for a model it cannot merge: the
    plan then says why."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(os.fspath(model))
    try:
        analysis = GraphAnalysis(model)
        if not analysis.recursions:
            return refused("the model has no Cortex node (convert it first: cortex-convert)")
        analysis.run()
        return _plan(analysis)
    except NotMergeable as e:
        return refused(str(e))
    except Exception as e:  # noqa: BLE001 - an analysis bug means "do not merge", never a broken session
        return refused(f"internal error in the merge analysis: {type(e).__name__}: {e}")


def _plan(analysis: GraphAnalysis) -> MergePlan:
    units, env = analysis.units, analysis.env
    # node ids: which inputs, and which unit they count
    node_id_units = {}
    for name, uses in analysis.uses.items():
        id_uses = [u for u in uses if u[0] == "node ids"]
        if not id_uses:
            continue
        data = [where for how, where, _ in uses if how == "data"]
        if data:
            raise NotMergeable(f"input '{name}' holds node ids ({id_uses[0][1]} reads them) but {data[0]} uses its "
                               "values as data: merged, they would be shifted")
        node_id_units[name] = {units.find(u) for _, _, u in id_uses}
    id_units = set().union(*node_id_units.values()) if node_id_units else set()
    kernel_nodes = {units.find(k.nodes) for k in analysis.kernels}
    if len(id_units | kernel_nodes) > 1:
        raise NotMergeable("the model's node ids count the rows of more than one structure")
    node_unit = next(iter(id_units | kernel_nodes))

    names = {}  # unit root -> its name in the plan

    def unit_name(u: int) -> str:
        root = units.find(u)
        if root not in names:
            if root == node_unit:
                names[root] = "nodes"
            elif any(units.find(k.positions) == root for k in analysis.kernels):
                names[root] = "positions"
            elif any(k.iterations is not None and units.find(k.iterations) == root for k in analysis.kernels):
                site = next(k for k in analysis.kernels if k.iterations is not None and units.find(k.iterations) == root)
                names[root] = f"steps of {site.name}"
            else:
                first = next((n for n, v in analysis.input_units.items() if units.find(v) == root), None)
                names[root] = f"rows of '{first}'" if first else f"unit {root}"
        return names[root]

    offsets = _csr_offsets(analysis, node_unit)
    backward = _backward_units(analysis, node_unit)
    inputs = []
    for value in analysis.inputs:
        abstract = env[value.name]
        if isinstance(abstract, Opaque):
            raise NotMergeable(abstract.reason)
        if value.name in offsets:
            t = value.type.tensor_type
            inputs.append(InputPlan(value.name, unit_name(node_unit), False, _NUMPY_TYPES.get(t.elem_type), (),
                                    offsets_into=unit_name(offsets[value.name])))
            continue
        t = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim] if t.HasField("shape") else None
        axis = 1 if isinstance(abstract, Columns) else 0
        inputs.append(InputPlan(value.name, unit_name(abstract.unit), value.name in node_id_units,
                                _NUMPY_TYPES.get(t.elem_type),
                                tuple(d for a, d in enumerate(dims) if a != axis) if dims is not None else None, axis,
                                backward=units.find(abstract.unit) in backward))
    measures = {}
    for i in inputs:
        if i.offsets_into is None:  # CSR offsets have a row more than the nodes they count
            measures.setdefault(i.unit, i.name)
    for site in analysis.kernels:  # a walk from the end: as many steps as positions (graph.KernelSite.iterations)
        if site.iterations is None:
            continue
        others = [node_unit, *analysis.input_units.values()]
        for k in analysis.kernels:
            others += [k.nodes, k.positions] + ([k.iterations] if k is not site and k.iterations is not None else [])
        # ONNX nodes keep rows of different units apart (graph_ops: opaque, then computed per request), but a
        # recursion reading the per-step rows as its node or position rows ties the two counts: nothing checks them
        if units.find(site.iterations) in {units.find(u) for u in others}:
            raise NotMergeable(f"{site.name} walks its positions from the end, and its per-step table is read as "
                               "rows of another kind: merged, they would not line up")
        if unit_name(site.positions) in measures:
            measures.setdefault(unit_name(site.iterations), measures[unit_name(site.positions)])
    less_one = set()
    for i in inputs:
        if i.offsets_into is not None and i.unit not in measures:  # the nodes only CSR offsets count
            measures[i.unit] = i.name
            less_one.add(i.unit)
        if i.offsets_into is not None and i.offsets_into not in measures:
            raise NotMergeable(f"the CSR offsets '{i.name}': no other input counts the {i.offsets_into}")

    outputs, per_request, order = [], [], []
    for value in analysis.graph.output:
        why = _unsplittable(analysis, env.get(value.name, Opaque(f"output '{value.name}' has no value")), backward,
                            measures, unit_name)
        if why is not None:  # computed per request after the forest, if the recursions it reads split (tail.py)
            order.append((False, len(per_request)))
            per_request.append((value.name, why))
            continue
        order.append((True, len(outputs)))
        abstract = env[value.name]
        outputs.append(OutputPlan(value.name, None if isinstance(abstract, Const) else unit_name(abstract.unit)))
    tail = _tail(analysis, outputs, per_request, order, backward, measures, unit_name) if per_request else None
    if tail is not None:
        outputs += [OutputPlan(name, unit_name(env[name].unit),
                               env[name].fill if isinstance(env[name], Padded) else None)
                    for name in tail.cut if name not in {o.name for o in outputs}]

    kernels = []
    for site in analysis.kernels:
        if site.padded:  # a request's table has a row past its nodes: -1 counted from its end is that padding row,
            site.windows = None  # not the node before the next request's (windows.py): its reads of -1 run alone
        nodes, positions = unit_name(site.nodes), unit_name(site.positions)
        for needed in (nodes, positions):
            if needed not in measures:
                raise NotMergeable(f"{site.name}: its {needed} are counted by no input")
        lengths = {name: unit_name(site.unit_of(units, role.rows))
                   for name, role in site.merge.inputs.items()
                   if role.rows not in ("unused", COUNT, WINDOWS) and not role.rows.startswith(OFFSETS)}
        counts = {name: (unit_name(count.unit), count) for name, count in site.counts.items()}
        for name, (unit, _) in counts.items():
            if unit not in measures:
                raise NotMergeable(f"{site.name}: its trip count '{name}' is computed from the {unit}, which no "
                                   "input's rows count")
        for n in (0, 1, 2, 3, 7, 37, 100, 4096) if counts else ():  # as kernel.py checks a trip count of lengths
            numbers = _numbers(counts, lambda _: n)
            trip = None if numbers is None else trip_count(site.merge.program.trip, lambda _: n, numbers)
            if trip != n:
                raise NotMergeable(f"{site.name}: its trip count, computed in the graph from a length, is not the "
                                   f"number of positions (it is {trip} for {n})")
        kernels.append(KernelCheck(site.name, site.merge.program, dict(site.arrays), nodes, positions,
                                   site.merge.positions == "nodes", lengths, BoundsCheck(site.merge.program),
                                   flipped=frozenset(site.flipped), counts=counts,
                                   nonempty=tuple((name, lengths[name]) for name in site.merge.nonempty),
                                   windows=site.windows))
    clamped = {site.name: site.merge.clamped + (() if site.windows is not None else unwritten_clamps(site.merge.program))
               for site in analysis.kernels}
    warnings = tuple(f"{name} reads rows at {', '.join(reads)}: a request that reaches one with a missing child (a "
                     "negative id) runs alone (merged, it would read the first request's row 0)"
                     for name, reads in clamped.items() if reads)
    for site in analysis.kernels:
        wrapping = [format_index(i) for i in wrapping_reads(site.merge.program, windowed=site.windows is not None)]
        if wrapping:
            warnings += (f"{site.name} reads rows at {', '.join(wrapping)}: a request that reaches one with a missing "
                         "child (a negative id) runs alone (its own run reads the table's last row there, as ONNX's "
                         "Gather counts -1 from the end; merged, it would read the last request's)",)
    warnings += tuple(f"{site.name} starts table {t.name} with a padding row past the nodes: a request whose node ids "
                      "name that row (N, where its own run reads the padding) runs alone (merged, N would be the next "
                      "request's first node)" for site in analysis.kernels for t in site.merge.program.tables
                      if t.init in site.padded and t.name not in site.merge.padded)
    _check_less_ones(analysis, offsets, node_unit, set(names))  # the units the outputs and kernels named, too
    return MergePlan(True, None, tuple(inputs), tuple(outputs), measures, tuple(kernels), "nodes", warnings,
                     frozenset(less_one), tail, tuple(k.windows for k in kernels if k.windows))


def _unsplittable(analysis: GraphAnalysis, abstract, backward: set, measures: dict, unit_name) -> Optional[str]:
    """Why an output's value cannot be cut from the forest's by rows, or None when it can (rows of a counted unit,
    or the same value for every request)."""
    if isinstance(abstract, Opaque):
        return abstract.reason
    if isinstance(abstract, Const):
        return None
    if isinstance(abstract, Padded):
        return "a table with a padding row past the nodes: merged, the row would be the forest's (return h[:N])"
    if isinstance(abstract, (Columns, Flipped)):
        return f"it returns input '{abstract.carries}' (merged, it would be the forest's, its node ids shifted)"
    if not isinstance(abstract, Rows):
        return "a count or a shape: merged, it would be the forest's"
    if abstract.carries:
        return f"it returns the values of input '{abstract.carries}' (merged, node ids would come back shifted)"
    if analysis.units.find(abstract.unit) in backward:
        return "one row per position of a visit walked from its end: merged, its rows would come in the forest's " \
               "walk order"
    if unit_name(abstract.unit) not in measures:
        return f"one row per {unit_name(abstract.unit)}, which no input's rows count"
    return None


def _tail(analysis: GraphAnalysis, outputs: list, per_request: list, order: list, backward: set, measures: dict,
          unit_name) -> TailPlan:
    """The tail that computes `per_request` outputs per request (tail.py), or NotMergeable with the first one's
    reason where a recursion's table it reads does not split by rows either."""
    first, why = per_request[0]
    body, tail, cut, reads = cut_tail(analysis.model, set(analysis.recursions), [o.name for o in outputs],
                                      [name for name, _ in per_request])
    for name in cut:
        abstract = analysis.env.get(name, Opaque("no value"))
        if isinstance(abstract, Padded):  # the request's rows and the same padding row (merged, never written)
            abstract = Rows(abstract.unit, abstract.inner)
        problem = _unsplittable(analysis, abstract, backward, measures, unit_name)
        if problem is not None:
            raise NotMergeable(f"output '{first}': {why}; and it reads the recursion's table '{name}', which does not "
                               f"split by requests either: {problem}")
    return TailPlan(body.SerializeToString(), tail.SerializeToString(), cut, reads, tuple(order), tuple(per_request))


def _check_less_ones(analysis: GraphAnalysis, offsets: dict, node_unit: int, named: set):
    """A count minus one (len(A) - 1, graph.py) makes rows that merge only where A is CSR offsets and the count is
    their nodes: merged, the offsets drop each request's last row but the last one's, so len - 1 adds up over the
    requests (for any other array the forest's len - 1 is the requests' sum minus one less per request)."""
    units = analysis.units
    csr_units = {units.find(analysis.input_units[name]) for name in offsets}
    for derived, of in analysis.less_ones.items():
        root = units.find(derived)
        if root not in named:
            continue  # computed, never reaching a recursion, an output or a counted input
        if units.find(of) not in csr_units or root != units.find(node_unit):
            raise NotMergeable("a table of N - 1 rows (the length of an array minus one) other than the nodes of "
                               "CSR offsets: merged, the rows short of each request's would be the forest's")


def _backward_units(analysis: GraphAnalysis, node_unit: int) -> set:
    """The position units of recursions that walk their visit from the end (kernel.py: KernelMerge.backward). Their
    rows are merged with the requests in reverse order, so that the forest's walk from its end takes the first
    request's positions first, each request's from its own end; no other recursion may read them forwards."""
    units = analysis.units
    backward = {units.find(k.positions) for k in analysis.kernels if k.merge.backward or k.flipped}
    for k in analysis.kernels:
        root = units.find(k.positions)
        if root not in backward:
            continue
        if root == units.find(node_unit):
            raise NotMergeable(f"{k.name} walks its positions from the end, and they are also its nodes: merged, "
                               "their rows cannot be laid out for both")
        forwards = [name for name, role in k.merge.inputs.items()
                    if role.rows == POSITIONS and k.flipped and name not in k.flipped | k.measured]
        if not (k.merge.backward or k.flipped) or forwards:
            raise NotMergeable(f"{k.name} reads {forwards[0] if forwards else 'positions'} forwards, and the same "
                               "positions are walked from the end elsewhere: merged, their rows cannot be laid out "
                               "for both")
    return backward


def _csr_offsets(analysis: GraphAnalysis, node_unit: int) -> dict:
    """Model inputs that are CSR offsets (a recursion slices its indices by them) -> the unit of those indices' rows
    (the edges). Such an input is read as offsets and nothing else, and no other value counts its rows."""
    units = analysis.units
    out = {}
    for name, uses in analysis.uses.items():
        kinds = {how for how, _, _ in uses}
        if "offsets" not in kinds:
            continue
        if kinds != {"offsets"}:
            other = next(where for how, where, _ in uses if how != "offsets")
            raise NotMergeable(f"input '{name}' holds CSR offsets and {other} also reads it")
        edges = {units.find(u) for _, _, u in uses}
        if len(edges) > 1:
            raise NotMergeable(f"the CSR offsets '{name}' index the rows of more than one array")
        own = units.find(analysis.input_units[name])
        shared = [n for n, u in analysis.input_units.items() if n != name and units.find(u) == own]
        if shared or own == units.find(node_unit) or any(units.find(k.positions) == own for k in analysis.kernels):
            raise NotMergeable(f"the CSR offsets '{name}' have as many rows as another value: they must have one "
                               "more than the nodes")
        out[name] = next(iter(edges))
    return out


# ---- per request -----------------------------------------------------------------------------------------------

def check_request(plan: MergePlan, feeds: dict) -> Optional[str]:
    """None when the request can join a merged batch; else why it must run alone. FeedError for a request that
    misses an input or names one the model does not have (it would fail anyway: the caller hears it at once)."""
    spec = plan.request_spec
    if spec.common is not None and type(feeds) is dict:  # every input a plain one: one native call checks them all
        rows = native().request_rows(feeds, *spec.common)
        if rows is not None:  # the visit orders and node ids were checked too
            return None if spec.rows_suffice else \
                _check_counts(plan, spec, feeds, dict(zip(spec.common_units, rows)), ids_checked=True)
    if feeds.keys() != spec.names:
        missing, extra = sorted(spec.names - set(feeds)), sorted(set(feeds) - spec.names)
        parts = ([f"missing input(s) {', '.join(map(repr, missing))}"] if missing else []) + \
                ([f"unknown input(s) {', '.join(map(repr, extra))}"] if extra else [])
        raise FeedError(f"{'; '.join(parts)} (the model takes {', '.join(map(repr, sorted(spec.names)))})")
    counts = {}
    for name, dtype, tail, ndim, fixed, unit, axis, offsets_into in spec.inputs:
        value = feeds[name]
        if type(value) is not np.ndarray:
            return f"input '{name}' is not a numpy array"
        if dtype is not None and value.dtype is not dtype and value.dtype != dtype:
            return f"input '{name}' is {value.dtype}, the model declares {dtype}"
        shape = value.shape
        if (not shape or shape[1:] != tail) if tail is not None else \
                len(shape) <= axis or (ndim is not None and (len(shape) != ndim or
                                                            any(shape[a] != d for a, d in fixed))):
            return f"input '{name}' has shape {list(shape)}, not what the model declares"
        if offsets_into is not None:
            continue  # below, once the counts are known
        rows = counts.setdefault(unit, shape[axis])
        if rows != shape[axis]:
            return (f"input '{name}' has {shape[axis]} rows, '{plan.measures[unit]}' {rows}: inputs of one unit "
                    f"({unit}) must agree to be merged")
    return _check_counts(plan, spec, feeds, counts)


def _check_counts(plan: MergePlan, spec: "RequestSpec", feeds: dict, counts: dict, ids_checked: bool = False) \
        -> Optional[str]:
    """check_request past each input's own checks: `counts`, the rows of each unit its inputs measure;
    `ids_checked`: the visit orders and node ids are known to be in the request's rows."""
    for unit in plan.less_one:  # the nodes only CSR offsets count
        name = plan.measures[unit]
        if feeds[name].shape[0] == 0:
            return f"the CSR offsets '{name}' have no rows (one per node, plus one)"
        counts[unit] = feeds[name].shape[0] - 1
    for name in spec.offsets:
        reason = _csr_offsets_reason(plan, name, feeds[name], counts)
        if reason is not None:
            return reason
    for k in spec.emptiness:
        for name, unit in k.nonempty:
            if counts[unit] == 0 and counts[k.positions] > 0:
                return (f"{k.name} tests whether '{name}' is empty, and the request's is while it visits positions: "
                        "merged, the test would see the forest's")
    for k in spec.loops:
        positions = _positions(k, counts)
        if positions != counts[k.positions]:
            return f"{k.name} visits {positions} positions but '{plan.measures[k.positions]}' has {counts[k.positions]} rows"
    if ids_checked:
        return None
    for name in spec.orders:
        order, nodes = feeds[name], counts[plan.node_unit]
        if order.shape[0] != nodes or not native().ids_within(order, nodes, distinct=True):
            # exact merged too, but the forest would lose its batched schedule for every request in it
            return f"the visit order '{name}' is not a permutation of the request's {nodes} nodes"
    for name in spec.head_ids:
        # node ids a Gather of rows reads (a head): in the request's own rows
        if not native().ids_within(feeds[name], counts[plan.node_unit]):
            return f"input '{name}' holds node ids outside [0, {counts[plan.node_unit]})"
    return None


@dataclass(frozen=True)
class RequestSpec:
    """What check_request looks at, prepared once per plan."""
    names: frozenset
    # (name, numpy dtype or None, the shape after the rows when the rows are axis 0 and every other size is fixed
    # (else None), rank or None, ((axis, size), ...) fixed sizes, unit, rows' axis, the unit CSR offsets index)
    inputs: tuple
    loops: tuple  # KernelChecks of Loop recursions (their trip count must be the request's positions)
    head_ids: tuple  # inputs of node ids only graph nodes (not a recursion) read
    orders: tuple  # visit orders (node ids, one per position): each request's must be a permutation of its nodes
    axes: dict  # input -> the axis its rows run along
    offsets: tuple  # CSR offsets inputs
    emptiness: tuple  # KernelChecks with emptiness tests (KernelCheck.nonempty)
    measured: tuple  # (unit, the input counting it, that input's rows' axis, 1 where it counts one row more)
    # where every input is a plain one (a declared dtype, rows along axis 0, every other size fixed, no CSR offsets):
    # cortex._C.request_rows' arguments after the feeds (names, dtypes, shapes after the rows, unit indices, units),
    # and the units in that order; else None
    common: Optional[tuple] = None
    common_units: tuple = ()
    # request_rows' answer is the whole check (no CSR offsets, emptiness tests or trip counts to compare)
    rows_suffice: bool = False


def _request_spec(plan: MergePlan) -> RequestSpec:
    inputs = []
    for i in plan.inputs:
        ndim = None if i.inner is None else 1 + len(i.inner)
        others = [a for a in range(ndim) if a != i.axis] if ndim is not None else []
        fixed = () if i.inner is None else tuple((a, d) for a, d in zip(others, i.inner) if d is not None)
        every_other_fixed = i.inner is not None and i.axis == 0 and len(fixed) == len(i.inner)
        tail = tuple(int(d) for d in i.inner) if every_other_fixed else None
        inputs.append((i.name, None if i.dtype is None else np.dtype(i.dtype), tail, ndim, fixed, i.unit, i.axis,
                       i.offsets_into))
    kernel_arrays = {source for k in plan.kernels for source in k.arrays.values()}
    position_units = {k.positions for k in plan.kernels if k.positions != k.nodes}
    names = tuple(i.name for i in plan.inputs)
    head_ids = tuple(i.name for i in plan.inputs if i.node_ids and i.name not in kernel_arrays)
    orders = tuple(i.name for i in plan.inputs if i.node_ids and i.unit in position_units)
    common, common_units = None, tuple(dict.fromkeys(unit for _, _, _, _, _, unit, _, _ in inputs))
    if plan.node_unit in common_units and all(dtype is not None and tail is not None and offsets_into is None
                                              for _, dtype, tail, _, _, _, _, offsets_into in inputs):
        common = (names, tuple(i[1] for i in inputs), tuple(i[2] for i in inputs),
                  tuple(common_units.index(i[5]) for i in inputs), len(common_units),
                  common_units.index(plan.node_unit), tuple(map(names.index, orders)),
                  tuple(map(names.index, head_ids)))
    axes = {i.name: i.axis for i in plan.inputs}
    loops = tuple(k for k in plan.kernels if k.program.mode == "visit" and not _trip_is_positions(k))
    offsets = tuple(i.name for i in plan.inputs if i.offsets_into is not None)
    emptiness = tuple(k for k in plan.kernels if k.nonempty)
    return RequestSpec(frozenset(names), tuple(inputs), loops, head_ids, orders, axes, offsets, emptiness,
                       tuple((unit, name, axes[name], int(unit in plan.less_one))
                             for unit, name in plan.measures.items()),
                       common, common_units,
                       rows_suffice=common is not None and not (plan.less_one or offsets or emptiness or loops))


def _trip_is_positions(kernel: KernelCheck) -> bool:
    """Whether a Loop's trip count is by its form the count of its positions (the length of an array whose rows
    count them, or max(that, 0)): then it is for every request, and check_request need not compute it."""
    trip = kernel.program.trip
    if isinstance(trip, ir.IBinary) and trip.op == "max" and ir.IConst(0) in (trip.a, trip.b):
        trip = trip.b if trip.a == ir.IConst(0) else trip.a
    if not isinstance(trip, ir.Length) or trip.axis != 0:
        return False
    return (kernel.nodes if trip.array is None else kernel.lengths.get(trip.array)) == kernel.positions


def _csr_offsets_reason(plan: MergePlan, name: str, offsets: np.ndarray, counts: dict) -> Optional[str]:
    """Why a request's CSR offsets cannot merge, or None. Merged, each request's offsets are shifted by the edges
    before it and its last offset is the next request's first; that is the request's own slices exactly when its
    offsets run from 0 to its edge count and stay within (no slice is clamped or counted from the end, as ONNX Slice
    would do with offsets outside [0, E])."""
    i = next(i for i in plan.inputs if i.name == name)
    nodes, edges = counts[i.unit], counts[i.offsets_into]
    if offsets.shape[0] != nodes + 1:
        return f"the CSR offsets '{name}' have {offsets.shape[0]} rows, not the request's {nodes} nodes + 1"
    if offsets.dtype.kind not in "iu" or int(offsets[0]) != 0 or int(offsets[-1]) != edges or \
            not native().ids_within(offsets, edges + 1):
        return (f"the CSR offsets '{name}' do not run from 0 to the request's {edges} edges within [0, {edges}] (its "
                "own run clamps such slices to its edges; merged, they would reach a neighbour's)")
    return None


def _positions(kernel: KernelCheck, counts: dict) -> Optional[int]:
    """A Loop's trip count for a request (or a batch) whose units have these row counts (cached: it depends on the
    counts alone)."""
    key = tuple(map(counts.get, kernel.trip_units))
    value = kernel.trips.get(key, _MISSING)
    if value is _MISSING:
        numbers = _numbers(kernel.counts, counts.__getitem__)
        value = None if numbers is None else trip_count(
            kernel.program.trip, lambda name: counts[kernel.lengths[name]] if name else counts[kernel.nodes], numbers)
        if len(kernel.trips) < 4096:
            kernel.trips[key] = value
    return value


_MISSING = object()


def _numbers(counts: dict, count_of) -> Optional[dict]:
    """The numbers a trip count reads (KernelCheck.counts: the graph computes them from a unit's count), as ONNX
    Runtime computes them for the unit counts `count_of(unit)`; None where one is undefined or not an integer."""
    out = {}
    for name, (unit, count) in counts.items():
        value = count_value(count, count_of(unit))
        if value is None or value.dtype.kind not in "iu":
            return None
        out[name] = int(value)
    return out


@dataclass
class MergedBatch:
    feeds: dict  # the forest's inputs (with the plan's window inputs, when the session takes them)
    counts: dict  # unit -> np.ndarray of each request's row count, in batch order


def unit_counts(plan: MergePlan, requests: list) -> dict:
    return {unit: np.array([r[name].shape[axis] - less for r in requests], dtype=np.int64)
            for unit, name, axis, less in plan.request_spec.measured}


def merge(plan: MergePlan, requests: list, windows: bool = False) -> MergedBatch:
    """One forest from requests that passed check_request. The arrays are built by cortex._C.concat_rows, one call
    each that keeps the GIL (numpy's ufuncs would release it several times a forest, see csrc/python/forest_rows.cc).
    `windows`: the session takes the plan's window inputs (merge_session): each node's request's [first, end) rows."""
    counts = unit_counts(plan, requests)
    nodes = counts[plan.node_unit]
    total = int(nodes.sum())
    base = np.cumsum(nodes) - nodes  # each request's first node in the forest
    concat_rows = native().concat_rows
    feeds = {}
    for i in plan.inputs:
        parts = [r[i.name] for r in requests]
        dtype = parts[0].dtype
        # a declared type is every request's (check_request); an input of none gets numpy's promotion, as before
        if i.dtype is None and any(p.dtype != dtype for p in parts):
            dtype = np.result_type(*parts)
            parts = [p.astype(dtype, copy=False) for p in parts]
        shift = i.node_ids and len(requests) > 1
        if shift and total > _largest(dtype):
            raise OverflowError(f"{total} nodes do not fit input '{i.name}' ({dtype})")
        if i.offsets_into is not None:  # CSR offsets: shifted by the edges before, each last one but the last dropped
            edges = counts[i.offsets_into]
            if int(edges.sum()) > _largest(dtype):
                raise OverflowError(f"{int(edges.sum())} edges do not fit input '{i.name}' ({dtype})")
            feeds[i.name] = concat_rows([p[:-1] for p in parts[:-1]] + parts[-1:], np.cumsum(edges) - edges)
        elif i.backward:  # walked from the end: the last request's positions first
            feeds[i.name] = concat_rows(parts[::-1], base[::-1] if shift else None)
        elif i.axis:  # an edge list [k, E]: each of its k rows concatenated (check_request: every part is [k, E_r])
            feeds[i.name] = np.stack([concat_rows([p[j] for p in parts], base if shift else None)
                                      for j in range(parts[0].shape[0])])
        else:
            feeds[i.name] = concat_rows(parts, base if shift else None)
    if windows and plan.windows:  # one native call that keeps the GIL, as concat_rows
        rows = native().request_windows(nodes)
        feeds.update((name, rows) for name in plan.windows)
    return MergedBatch(feeds, counts)


def _largest(dtype) -> int:
    largest = _LARGEST.get(dtype)
    if largest is None:
        largest = _LARGEST[dtype] = int(np.iinfo(dtype).max)
    return largest


_LARGEST = {}
_NO_WINDOWS = np.zeros((0, 2), dtype=np.int64)


def out_of_bounds(plan: MergePlan, batch: MergedBatch, thorough: bool = False) -> set:
    """Requests (indices in the batch) whose reads leave their own rows, or whose trip count does not add up;
    `thorough`: also those that would fail the forest without mixing requests (BoundsCheck's `thorough`)."""
    flagged = set()
    totals = {unit: int(c.sum()) for unit, c in batch.counts.items()}
    for k in plan.kernels:
        if k.program.mode == "visit" and _positions(k, totals) != totals[k.positions]:
            return set(range(len(batch.counts[k.positions])))  # the trip count does not add up: nobody merges
        arrays = {name: np.ascontiguousarray(batch.feeds[source][::-1]) if name in k.flipped else batch.feeds[source]
                  for name, source in k.arrays.items()}
        window = window_input(k.program)
        if window is not None:  # not written: empty, as in a plain run (a read of a missing child then leaves)
            arrays[window] = batch.feeds.get(window, _NO_WINDOWS) if k.windows is not None else _NO_WINDOWS
        for name, unit in k.lengths.items():  # arrays the recursion only measures: their length is what counts
            if name not in arrays and unit in totals:
                arrays[name] = np.zeros(totals[unit], dtype=np.int64)
        rows = {name: batch.counts[unit] for name, unit in k.lengths.items() if unit in batch.counts}
        flagged |= k.bounds(arrays, batch.counts[k.nodes], batch.counts[k.positions], k.positions_are_nodes, rows,
                            thorough)
    return flagged


def split(plan: MergePlan, outputs: list, batch: MergedBatch) -> list:
    """Per request, its outputs (in the model's output order) cut from the forest's (views, no copies)."""
    size = len(next(iter(batch.counts.values()))) if batch.counts else 0
    per_request = [[] for _ in range(size)]
    edges = {}
    for o, value in zip(plan.outputs, outputs):
        if o.unit is None:
            for r in per_request:
                r.append(value.copy())
            continue
        if o.unit not in edges:
            edges[o.unit] = np.concatenate([[0], np.cumsum(batch.counts[o.unit])]).tolist()
        cuts = edges[o.unit]
        if o.padding is not None:  # the forest's one padding row past all its rows: each request's own, again
            value = value[:-1]
        if value.shape[0] != cuts[-1]:
            raise RuntimeError(f"output '{o.name}' has {value.shape[0]} rows, the batch {cuts[-1]} {o.unit}")
        for k, r in enumerate(per_request):
            r.append(value[cuts[k]:cuts[k + 1]])
    return per_request

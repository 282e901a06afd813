"""Merge safety of a whole converted model: the recursions' proofs (kernel.py) joined through the ONNX nodes
around them.

A converted model is more than its Cortex nodes: ONNX Runtime computes initial tables from the inputs' shapes
(`zeros(N, H)`), and heads may follow the recursion (a classifier on every node's state, the rows of the roots).
This module interprets the main graph abstractly, one value at a time:

- `Rows(unit)`: a tensor whose first axis has one row per unit of the request (its nodes, its positions, the rows of
  some input); merged, it is the requests' tensors concatenated. Inputs start so; row-wise ops keep it (elementwise
  math with constants that do not vary along the rows, products with constant weights, reductions, softmax and
  slices over the other axes, casts, reshapes that keep the rows).
- `Dims`: a shape vector whose entries are constants or a unit's count (`Shape(words)[0]`); `ConstantOfShape` and
  `Expand` of such a shape make `Rows` again (merged: the summed count, the same zeros).
- `Const`: a value every request shares (initializers, constants, what folds from them).
- `Columns(unit)`: a model input [k, E] whose second axis counts a unit (an edge list); only a recursion reads it.
- `Opaque(reason)`: anything else (a mean over all rows, row k of the forest, N + 1 rows). It may exist, but if it
  reaches a Cortex node or a graph output the model is not mergeable, for that reason.

Units are unified as the values meet (a kernel's node rows with the input whose shape made its initial table), and
the node ids a recursion reads tell which inputs must be offset. The result is a `MergePlan` (merge.py). The values
are in values.py, what each op does to them in graph_ops.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..artifacts import cortex_nodes
from .graph_ops import ELEMENTWISE, REDUCTIONS, OpSemantics, as_count
from .kernel import COUNT, EDGES, NODES, OFFSETS, POSITIONS, WINDOWS, KernelMerge, NotMergeable, analyze
from .values import Columns, Const, Flipped, Opaque, Padded, Rows


class _Units:
    """Union-find over row units; each unit remembers the names that describe it."""

    def __init__(self):
        self.parent = []

    def new(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, u: int) -> int:
        while self.parent[u] != u:
            self.parent[u] = self.parent[self.parent[u]]
            u = self.parent[u]
        return u

    def union(self, a: int, b: int):
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


@dataclass
class KernelSite:
    """One Cortex node: its proof, its row units, and the model input behind each array its indices read."""
    name: str
    merge: KernelMerge
    nodes: int
    positions: int
    arrays: dict  # kernel input name -> model input whose values it carries
    edges: dict = None  # 'edges:<dst>' -> the unit of that edge list's rows
    flipped: set = field(default_factory=set)  # kernel inputs that hold their model input's rows last first
    measured: set = field(default_factory=set)  # kernel inputs whose length alone the recursion reads
    padded: dict = field(default_factory=dict)  # init inputs with a padding row past the nodes -> their Padded value
    counts: dict = field(default_factory=dict)  # inputs only the trip count reads -> the Count the graph computes
    windows: str = None  # the kernel input the merge writes each node's request's rows into (windows.py), if any
    # a visit walked from its end (or read through inputs the graph flips, torch.flip / scan(reverse=True)): the
    # unit of its per-step tables' rows. Merged, its position inputs are laid out last request first (merge.py), but
    # its steps take the first request's positions first, each request's in its own run's order: a per-step table
    # splits in the requests' order, as many rows each as their positions
    iterations: int = None

    def unit_of(self, units, rows: str) -> int:
        """The unit of a row kind of this recursion ('nodes', 'positions', 'edges:<dst>')."""
        if rows == NODES:
            return self.nodes
        if rows == POSITIONS:
            return self.positions
        if rows.startswith(EDGES):
            if rows not in self.edges:
                self.edges[rows] = units.new()
            return self.edges[rows]
        raise NotMergeable(f"{self.name}: unknown row kind '{rows}'")


class GraphAnalysis(OpSemantics):
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.graph = model.graph
        self.units = _Units()
        self.env = {}
        self.uses = {}  # model input -> list of (how, where, unit or None)
        self.kernels = []
        self.finals = {}  # a recursion's final outputs (ir.Final) -> why each is computed per request
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
        self.recursions = {c.index: c for c in cortex_nodes(model)}
        self.inputs = [i for i in self.graph.input if i.name not in {t.name for t in self.graph.initializer}]
        self.input_units = {}
        self.less_ones = {}  # unit u -> the unit whose count is u's minus one (len(offsets) - 1: CSR offsets' nodes)
        self.current = None  # the node whose op handler runs (what a handler reads of it: its inputs' names)
        self._elem_types = None

    def elem_type(self, name: str) -> int:
        """The element type (onnx.TensorProto) ONNX's shape inference gives the value `name`; UNDEFINED unknown."""
        if self._elem_types is None:
            self._elem_types = {}
            try:
                inferred = onnx.shape_inference.infer_shapes(self.model, strict_mode=False).graph
            except Exception:  # noqa: BLE001 - a graph ONNX cannot infer: every type unknown
                inferred = None
            values = list(inferred.value_info) + list(inferred.input) + list(inferred.output) if inferred else []
            for v in values:
                if v.type.HasField("tensor_type"):
                    self._elem_types[v.name] = v.type.tensor_type.elem_type
            for t in self.graph.initializer:
                self._elem_types[t.name] = t.data_type
        return self._elem_types.get(name, onnx.TensorProto.UNDEFINED)

    # ---- values --------------------------------------------------------------------------------------------
    def _start(self):
        for t in self.graph.initializer:
            self.env[t.name] = Const(numpy_helper.to_array(t))
        for value in self.inputs:
            t = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim] if t.HasField("shape") \
                else None
            if dims is not None and not dims:
                self.env[value.name] = Opaque(f"input '{value.name}' is a scalar: requests may differ in it")
                continue
            if dims is not None and len(dims) == 2 and dims[0] is not None and dims[1] is None:
                unit = self.units.new()  # an edge list [k, E], if a recursion reads it so (_recursion checks)
                self.input_units[value.name] = unit
                self.env[value.name] = Columns(unit, dims[0], value.name)
                continue
            if dims is not None and dims[0] is not None:
                self.env[value.name] = Opaque(f"input '{value.name}' has a fixed first dimension ({dims[0]}): "
                                              "a forest of several requests cannot have it")
                continue
            unit = self.units.new()
            self.input_units[value.name] = unit
            inner = tuple(dims[1:]) if dims is not None and all(d is not None for d in dims[1:]) else None
            self.env[value.name] = Rows(unit, inner, value.name)

    def less_one(self, unit: int) -> int:
        """The unit of `unit`'s count minus one (one per unit). Its rows merge as any unit's only where `unit` is
        the rows of CSR offsets, whose merge drops each request's last row but the last one's (merge.py checks)."""
        root = self.units.find(unit)
        for derived, of in self.less_ones.items():
            if self.units.find(of) == root:
                return derived
        derived = self.units.new()
        self.less_ones[derived] = root
        return derived

    def _use(self, value, how: str, where: str, unit=None):
        if isinstance(value, (Rows, Columns, Flipped)) and value.carries:
            self.uses.setdefault(value.carries, []).append((how, where, unit))

    # ---- the walk ------------------------------------------------------------------------------------------
    def run(self):
        self._start()
        for index, node in enumerate(self.graph.node):
            args = [self.env.get(name, Opaque(f"'{name}' has no value")) if name else None for name in node.input]
            special = next((a for a in args if isinstance(a, (Columns, Flipped))), None)
            padded = next((a for a in args if isinstance(a, Padded)), None)
            if padded is not None and index not in self.recursions and node.op_type != "Slice":
                outs = [Opaque(f"node '{node.name or node.op_type}' ({node.op_type}) reads a table with a padding "
                               "row past the nodes: merged, the row would be the forest's")] * len(node.output)
            elif index in self.recursions:
                outs = self._recursion(self.recursions[index], node, args)
            elif special is not None and node.op_type == "Cast" and _widening_cast(self, special, node):
                outs = [special]  # cast to a wider integer type: the same values in the same layout
            elif isinstance(special, Columns):
                outs = [Opaque(f"input '{special.carries}' has a fixed first dimension ({special.rows}) and is read by "
                               f"node '{node.name or node.op_type}' ({node.op_type}): only a recursion's child set "
                               "may read such an input (an edge list [2, E], merged along its second axis)")] \
                    * len(node.output)
            elif special is not None:
                outs = [Opaque(f"the rows of input '{special.carries}' in reverse order are read by node "
                               f"'{node.name or node.op_type}' ({node.op_type}): only a recursion may read them "
                               "(at its positions)")] * len(node.output)
            elif all(a is None or isinstance(a, Const) for a in args) and not _has_subgraph(node) \
                    and not node.op_type.startswith(("Random", "Bernoulli", "Multinomial")):
                outs = self._fold(node, args)
            else:
                try:
                    outs = self._node(node, args)
                except Exception as e:  # noqa: BLE001 - an op this interpreter misreads is opaque, never a crash
                    reason = f"node '{node.name or node.op_type}' ({node.op_type}): {type(e).__name__}: {e}"
                    outs = [Opaque(reason)] * len(node.output)
            if outs is None:
                outs = [Opaque(f"node '{node.name or node.op_type}' ({node.op_type}) computes something the merge "
                               "analysis cannot attribute to one request")] * len(node.output)
            outs = [self.finals.get(name, value) for name, value in zip(node.output, outs)]
            for name, value in zip(node.output, outs):
                if name:
                    self.env[name] = value
            self._record_data_uses(index, node, args, outs)
        return self

    def _record_data_uses(self, index, node, args, outs):
        """Every use of a model input's values other than travelling unchanged, being measured, or being read as
        node ids (a recursion's, or a Gather of rows) counts as data: an input whose node ids are offset must have
        no such use."""
        if index in self.recursions or node.op_type in ("Shape", "Size"):
            return
        for k, value in enumerate(args):
            if not (isinstance(value, Rows) and value.carries):
                continue
            if any(isinstance(o, (Rows, Flipped, Columns)) and o.carries == value.carries for o in outs):
                continue
            if node.op_type in ("Gather", "GatherND") and k == 1 and isinstance(args[0], Rows):
                continue
            self._use(value, "data", f"node '{node.name or node.op_type}' ({node.op_type})")

    def _fold(self, node, args):
        """A node of constants only: evaluated once here (onnx.reference), shared by every request."""
        from onnx.reference import ReferenceEvaluator

        inputs = [f"in{k}" if a is not None else "" for k, a in enumerate(args)]
        outputs = [f"out{k}" for k in range(len(node.output))]
        copy = helper.make_node(node.op_type, inputs, outputs, domain=node.domain)
        copy.attribute.extend(node.attribute)
        values = [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in inputs if n]
        graph = helper.make_graph([copy], "fold", values,
                                  [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in outputs])
        model = helper.make_model(graph, opset_imports=list(self.model.opset_import))
        try:
            results = ReferenceEvaluator(model).run(None, {n: a.value for n, a in zip(inputs, args) if n})
        except Exception as e:  # noqa: BLE001
            return [Opaque(f"node '{node.name or node.op_type}' ({node.op_type}) could not be evaluated on its "
                           f"constants: {type(e).__name__}")] * len(node.output)
        return [Const(np.asarray(r)) for r in results]

    # ---- one op --------------------------------------------------------------------------------------------
    def _node(self, node, args):
        op = node.op_type
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        opaque = [a for a in args if isinstance(a, Opaque)]
        if opaque:
            return [opaque[0]] * len(node.output)
        if node.domain not in ("", "ai.onnx") or _has_subgraph(node):
            return None
        handler = getattr(self, f"_op_{op}", None)
        if handler is not None:
            self.current = node
            out = handler(args, attrs)
            if isinstance(out, list):
                return [Opaque(f"output {k} of node '{node.name or op}' ({op})") if o is None else o
                        for k, o in enumerate(out)]
            return None if out is None else [out]
        if op in ELEMENTWISE:
            out = self._elementwise(node, args)
            return None if out is None else [out] + [Opaque("a mask output")] * (len(node.output) - 1)
        if op in REDUCTIONS:
            out = self._reduce(node, args, attrs)
            return None if out is None else [out]
        return None

    # ---- the recursions ------------------------------------------------------------------------------------
    def _recursion(self, cortex_node, node, args):
        where = f"recursion '{cortex_node.notes.get('recursion', node.name)}'"
        merge = _kernel_merge(cortex_node)
        site = KernelSite(where, merge, self.units.new(), self.units.new(), {}, {})
        if merge.positions == NODES:
            self.units.union(site.positions, site.nodes)
        self.kernels.append(site)
        for final in merge.program.finals:  # computed from the kernel's per-position rows by the nodes after it
            what = {"last": "the last value of a carried vector", "reduce": f"a running {final.op} over every position",
                    "sequence": "a list appended to at every position"}.get(final.kind, final.kind)
            self.finals[final.output] = Opaque(f"{what} of {where}: merged, it would cover the forest's positions")
        read_by_index = _arrays_read_by_index(merge.program)
        values_read = _arrays_whose_values_are_read(merge.program)
        for decl, value in zip(merge.program.inputs, args):
            role = merge.inputs[decl.name]
            if role.rows == WINDOWS:  # no request sends it: the merge writes it (a Constant in the model)
                site.windows = decl.name  # (not written where a table has a padding row: merge._plan)
                continue
            if decl.kind == "shape":  # the kernel makes the table of zeros the model's ConstantOfShape made from it
                value = self._op_ConstantOfShape([value], {}) or Opaque(
                    f"the shape of its table of zeros '{decl.name}' is not one row per node of some input")
            if isinstance(value, Opaque):
                raise NotMergeable(f"{where} input '{decl.name}': {value.reason}")
            if role.rows == COUNT:
                count = as_count(value)
                if count is None:
                    raise NotMergeable(f"{where} reads its trip count from input '{decl.name}', which the graph does "
                                       "not compute from one input's length and constants")
                site.counts[decl.name] = count
                continue
            if isinstance(value, Columns) != (role.axis == 1):
                raise NotMergeable(f"{where} input '{decl.name}': " + (
                    f"model input '{value.carries}' has a fixed first dimension ({value.rows}), and the recursion "
                    "does not read it as an edge list [2, E]" if isinstance(value, Columns) else
                    "the recursion reads it as an edge list [2, E], and the model does not declare it so (a fixed "
                    "first dimension, a dynamic second): its edges could not be told from its rows"))
            if isinstance(value, Padded):
                if decl.kind not in ("init", "shape") or role.rows != NODES:
                    raise NotMergeable(f"{where} input '{decl.name}' has a padding row past the nodes, and it is not "
                                       "a table's initial value")
                self.units.union(value.unit, site.nodes)
                site.padded[decl.name] = value
                continue
            if role.rows == "unused" and isinstance(value, Const):
                continue  # the cases never read it (a carried value's initial value only a final reads)
            if not isinstance(value, (Rows, Columns, Flipped)):
                raise NotMergeable(f"{where} input '{decl.name}' is the same for every request (a constant or a "
                                   "count), not one row per node or position")
            if isinstance(value, Flipped):
                if role.rows != POSITIONS or merge.positions == NODES or merge.backward:
                    raise NotMergeable(f"{where} input '{decl.name}' holds the rows of input '{value.carries}' in "
                                       "reverse order, and the recursion reads it other than at its positions")
                site.flipped.add(decl.name)
            if role.rows.startswith(OFFSETS):  # N + 1 rows: no unit's count; values rows of the indices' edges
                if not value.carries:
                    raise NotMergeable(f"{where} reads CSR offsets '{decl.name}', which the graph computes: the "
                                       "merge needs offsets that are a model input")
                site.arrays[decl.name] = value.carries
                edges = site.unit_of(self.units, EDGES + role.rows[len(OFFSETS):])
                self._use(value, "offsets", where, edges)
                continue
            if role.rows != "unused":
                self.units.union(value.unit, site.unit_of(self.units, role.rows))
            if decl.name in read_by_index or role.node_ids:
                if not value.carries:
                    raise NotMergeable(f"{where} reads indices from '{decl.name}', which the graph computes: the "
                                       "merge needs structure arrays that are model inputs")
                site.arrays[decl.name] = value.carries
            how = "node ids" if role.node_ids else "data" if decl.name in values_read else "measured"
            if how == "measured":
                site.measured.add(decl.name)
            self._use(value, how, where, site.nodes if role.node_ids else None)
        for table in merge.program.tables:
            if table.name in merge.padded and table.init not in site.padded:
                raise NotMergeable(f"{where} reads table {table.name} at the row past the nodes, and its initial "
                                   "value has no such row (the same constant for every request: zeros(N + 1, H))")
        outputs = []
        for name, table in zip(node.output, merge.program.tables):
            rows = merge.outputs.get(name, NODES if table.kind == "state" else POSITIONS)
            if table.init in site.padded:  # the padding row stays as it was: rows past a request's nodes are
                init = site.padded[table.init]  # never written in a merged forest (the bounds check)
                outputs.append(Padded(site.nodes, tuple(table.inner), init.fill))
            else:
                reversed_layout = merge.backward or site.flipped
                if rows != NODES and reversed_layout and site.iterations is None:
                    site.iterations = self.units.new()
                unit = site.nodes if rows == NODES else site.iterations if reversed_layout else site.positions
                outputs.append(Rows(unit, tuple(table.inner)))
        return outputs

    def _input_type(self, name):
        value = next(v for v in self.inputs if v.name == name)
        return value.type.tensor_type.elem_type


def _has_subgraph(node) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def _arrays_read_by_index(program) -> set:
    """Runtime arrays whose values index expressions read (Load), or whose length the trip count uses."""
    from ..ir import nodes as ir

    roots = [program.trip] if program.trip is not None else []
    for case in program.cases:
        roots += [case.predicate] + ([case.target] if case.target is not None else []) + [x for _, x in case.writes]
    names = {e.array for e in ir.walk(roots) if isinstance(e, ir.Load)}
    if program.mode == "dag":
        names.add(program.rows_from)
    return names


def _arrays_whose_values_are_read(program) -> set:
    """Runtime inputs the recursion reads other than by their length (len(A) alone does not care what A holds)."""
    from ..ir import nodes as ir

    roots = [program.trip] if program.trip is not None else []
    for case in program.cases:
        roots += case.roots()
    names = {d.name for d in program.inputs if d.kind != "array"}  # initial tables and the like: read whole
    for e in ir.walk(roots):
        if isinstance(e, ir.SetReduce):
            names.update(e.arrays)
        elif isinstance(e, (ir.Load, ir.InputRow, ir.InputProjection)):
            names.add(e.array)
        elif isinstance(e, ir.PreviousRow):
            names.add(e.init)
    if program.mode == "dag":
        names.add(program.rows_from)
    return names


def _widening_cast(analysis, columns, node) -> bool:
    from .graph_ops import _WIDENING
    to = next((a.i for a in node.attribute if a.name == "to"), None)
    return to in _WIDENING.get(analysis._input_type(columns.carries), ())


def _kernel_merge(cortex_node) -> KernelMerge:
    """The recursion's proof, derived again from the IR it carries and held to what conversion recorded."""
    from ..ir.serialize import IRFormatError, constant_specs, from_json

    notes = cortex_node.notes
    document = notes.get("ir")
    if not isinstance(document, dict):
        raise NotMergeable("the converted model carries no IR for its recursion, so merging cannot be proven "
                           f"({notes.get('ir_error', 'converted by an older Cortex')}); convert the model again")
    try:
        constants = {name: np.zeros(shape, dtype) for name, (shape, dtype) in constant_specs(document).items()}
        program = from_json(document, constants)
    except IRFormatError as e:
        raise NotMergeable(f"the recursion's IR cannot be read: {e}") from None
    recorded = notes.get("merge")
    if isinstance(recorded, dict) and recorded.get("per_tree") is False:
        raise NotMergeable(str(recorded.get("reason", "conversion found it not mergeable")))
    merge = analyze(program)  # NotMergeable with the reason
    if recorded is not None and recorded != merge.to_notes():
        raise NotMergeable("the merge decision recorded at conversion differs from the one its IR proves (the model "
                           "was edited, or converted by another version of Cortex); convert the model again")
    return merge

"""Finds the recursive regions of a model and raises each into a Cortex IR Program, or says why not.

Two forms:
- `cortex.TreeRec`: the structure and both cases are explicit;
- a `Loop` as exporters write it: each iteration picks a node (usually `order[i]`), reads its children's rows
  from loop-carried state tables, and scatters the node's new rows back, often under an `If` on "is a leaf".
  The abstract interpreter must prove every step of that; anything else stays with ONNX Runtime.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..ir import nodes as ir
from ..ir.verify import IRError, verify
from .abstract import (ONNX_DTYPES, Array, Choice, Index, Interpreter, Known, Pred, Refusal, Row, ShapeVal,
                       Table, describe)


@dataclass
class Region:
    """One recursive region found in the model: converted (program set) or left to ORT (reason set)."""
    kind: str  # 'Loop' | 'TreeRec'
    node_index: int
    node_name: str
    program: Optional[ir.Program] = None
    reason: Optional[str] = None


def _value_types(model: onnx.ModelProto) -> dict:
    """name -> (dtype, shape) from graph inputs/outputs/value_info after ONNX shape inference."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is a hint only
        inferred = model
    types = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if not t.elem_type:
            continue
        shape = None
        if t.HasField("shape"):
            shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
        types[vi.name] = (ONNX_DTYPES.get(t.elem_type), shape)
    return types


class OuterScope:
    """Abstract values of the main graph's names, computed on demand; anything not provably constant or
    shape-like is an opaque runtime tensor that the converted node will take as an input."""

    def __init__(self, model: onnx.ModelProto):
        self.graph = model.graph
        self.types = _value_types(model)
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.initializers = {i.name: i for i in self.graph.initializer}
        self.values = {}
        self.interp = Interpreter(outer=self.lookup)

    def opaque(self, name):
        dtype, shape = self.types.get(name, (None, None))
        return Array(name, dtype, shape)

    def lookup(self, name):
        if name in self.values:
            return self.values[name]
        if name in self.initializers:
            value = Known(numpy_helper.to_array(self.initializers[name]))
        elif name in self.producer:
            node = self.producer[name]
            value = self.opaque(name)
            if node.op_type not in ("Loop", "If", "Scan") and node.domain in ("", "ai.onnx"):
                try:
                    args = [self.lookup(n) if n else None for n in node.input]
                    outs = self.interp.eval_node(node, args, self.lookup)
                    value = outs[list(node.output).index(name)]
                except Refusal:
                    pass
                if isinstance(value, (Index, Pred, Row, Table, Choice)):
                    value = self.opaque(name)  # only meaningful inside a recursion
        else:
            value = self.opaque(name)  # a graph input
        self.values[name] = value
        return value


def _table_width(value, name) -> int:
    shape = value.value.shape if isinstance(value, Known) else (value.shape if isinstance(value, Array) else None)
    if shape is None or len(shape) != 2 or shape[1] is None:
        raise Refusal(f"loop-carried {name} is not a [N, width] state table of known width")
    dtype = value.value.dtype if isinstance(value, Known) else value.dtype
    if str(dtype) != "float32":
        raise Refusal(f"loop-carried {name} is {dtype}, not a float32 state table")
    return int(shape[1])


def _flatten_choices(outputs, path=()):
    """Splits outputs that are (nested) If choices into cases: [(predicates, outputs), ...]."""
    for o in outputs:
        if isinstance(o, Choice):
            c = o.pred
            then = [x.then if isinstance(x, Choice) and x.pred == c else x for x in outputs]
            other = [x.other if isinstance(x, Choice) and x.pred == c else x for x in outputs]
            return _flatten_choices(then, path + (c,)) + _flatten_choices(other, path + (ir.BNot(c),))
    return [(path, outputs)]


def _conjunction(preds) -> ir.BExpr:
    out = ir.BConst(True)
    for p in preds:
        out = p if out == ir.BConst(True) else ir.BAnd(out, p)
    return out


def _cases_from_tables(case_outputs, table_names) -> tuple:
    cases = []
    for k, (path, outs) in enumerate(case_outputs):
        writes, targets = [], set()
        for table_name, out in zip(table_names, outs):
            if not isinstance(out, Table) or out.name != table_name:
                raise Refusal(f"state {table_name} is replaced by {describe(out)}, not updated row-wise")
            if len(out.writes) > 1:
                raise Refusal(f"state {table_name} is written at two rows in one step")
            for target, row in out.writes:
                targets.add(target)
                writes.append((table_name, row))
        if len(targets) > 1:
            raise Refusal("one step writes different rows of different states")
        if writes:
            cases.append(ir.Case(f"case{k}", _conjunction(path), targets.pop(), tuple(writes)))
    if not cases:
        raise Refusal("the loop never writes its state")
    return tuple(cases)


def _array_inputs(lookup, cases) -> list:
    """InputDecls for the runtime arrays the cases read, in first-use order."""
    decls = []
    for name in ir.referenced_arrays(cases):
        arr = lookup(name)
        if not isinstance(arr, Array):
            raise Refusal(f"{name} is read as a runtime array but is {describe(arr)}")
        if arr.dtype not in ("int64", "float32") or arr.shape is None or len(arr.shape) not in (1, 2):
            raise Refusal(f"runtime tensor {name} ({arr.dtype}, shape {arr.shape}) is not a supported node array")
        inner = tuple(arr.shape[1:])
        if any(d is None for d in inner):
            raise Refusal(f"runtime tensor {name} has a dynamic inner dimension")
        decls.append(ir.InputDecl(name, "array", arr.dtype, len(arr.shape), inner))
    return decls


def recognize_loop(model: onnx.ModelProto, node: onnx.NodeProto, outer: OuterScope, region_name: str) -> ir.Program:
    body = next(helper.get_attribute_value(a) for a in node.attribute if a.name == "body")
    trip_name = node.input[0] if len(node.input) > 0 else ""
    cond_name = node.input[1] if len(node.input) > 1 else ""
    carried_names = list(node.input[2:])
    n_carried = len(carried_names)
    if len(body.output) != 1 + n_carried:
        raise Refusal("the loop has scan outputs")
    if not carried_names:
        raise Refusal("the loop carries no state")
    if not trip_name:
        raise Refusal("the loop has no trip count (iterates to a data-dependent condition)")
    if cond_name:
        cond = outer.lookup(cond_name)
        if not (isinstance(cond, Known) and bool(cond.value.reshape(-1)[0])):
            raise Refusal("the loop's initial condition is not constant true")

    trip = outer.lookup(trip_name)
    if isinstance(trip, Known):
        trip_value = int(np.asarray(trip.value).reshape(-1)[0])
    else:
        trip_value = trip_name

    interp = Interpreter(outer=outer.lookup)
    table_names, bindings, inputs = [], {}, []
    tables = []
    for k, (init_name, body_in, loop_out) in enumerate(zip(carried_names, body.input[2:], node.output)):
        width = _table_width(outer.lookup(init_name), init_name)
        table = f"state{k}"
        table_names.append(table)
        bindings[body_in.name] = Table(table, width)
        inputs.append(ir.InputDecl(init_name, "init", "float32", 2, (width,)))
        tables.append(ir.TableDecl(table, width, init_name, loop_out))
    bindings[body.input[0].name] = Index(ir.Iter())
    bindings[body.input[1].name] = Known(np.array(True))

    outs = interp.run_graph(body, bindings)
    cond_out = outs[0]
    if not (isinstance(cond_out, Known) and bool(cond_out.value.reshape(-1)[0])):
        raise Refusal("the loop condition may become false (a data-dependent iteration)")
    cases = _cases_from_tables(_flatten_choices(outs[1:]), table_names)

    arrays = _array_inputs(outer.lookup, cases)
    trip_inputs = [] if isinstance(trip_value, int) else [ir.InputDecl(trip_value, "trip", "int64", 0)]
    program = ir.Program(region_name, "visit", tuple(arrays + trip_inputs + inputs), tuple(tables), cases,
                         dict(interp.constants), trip=trip_value)
    return program


def recognize_treerec(model: onnx.ModelProto, node: onnx.NodeProto, outer: OuterScope, region_name: str) -> ir.Program:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    leaf_body, internal_body = attrs["leaf_body"], attrs["internal_body"]
    num_states = int(attrs.get("num_states", len(node.output)))
    children_name, node_input_names = node.input[0], list(node.input[1:])
    children = outer.lookup(children_name)
    if not isinstance(children, Array) or children.shape is None or len(children.shape) != 2 or children.shape[1] is None:
        raise Refusal("TreeRec children must be an int64 [N, K] tensor of static K")
    num_children = int(children.shape[1])

    interp = Interpreter(outer=outer.lookup)
    interp.arrays[children_name] = Array(children_name, "int64", children.shape)

    def node_input_bindings(graph, first):
        bindings = {}
        for name, body_in in zip(node_input_names, graph.input[first:]):
            arr = outer.lookup(name)
            if not isinstance(arr, Array) or arr.shape is None:
                raise Refusal(f"TreeRec node input {name} is not a runtime tensor of known rank")
            interp.arrays[name] = arr
            if arr.dtype == "int64" and len(arr.shape) == 1:
                bindings[body_in.name] = Index(ir.Load(name, ir.Iter()))
            elif arr.dtype == "float32" and len(arr.shape) == 2 and arr.shape[1] is not None:
                bindings[body_in.name] = Row(ir.InputRow(name, ir.Iter(), arr.shape[1]), (arr.shape[1],))
            else:
                raise Refusal(f"TreeRec node input {name} ({arr.dtype}, {arr.shape}) is not supported")
        return bindings

    leaf_out = [interp.as_row(v) for v in interp.run_graph(leaf_body, node_input_bindings(leaf_body, 0))]
    widths = [r.expr.width for r in leaf_out]
    if len(leaf_out) != num_states:
        raise Refusal("leaf_body outputs do not match num_states")
    tables = [ir.TableDecl(f"state{s}", widths[s], None, node.output[s]) for s in range(num_states)]

    bindings = node_input_bindings(internal_body, num_children * num_states)
    for k in range(num_children):
        child = ir.Load(children_name, ir.Iter(), column=k)
        for s in range(num_states):
            body_in = internal_body.input[k * num_states + s]
            bindings[body_in.name] = Row(ir.ChildState(f"state{s}", child, True, widths[s]), (widths[s],))
    internal_out = [interp.as_row(v) for v in interp.run_graph(internal_body, bindings)]

    is_leaf = _conjunction([ir.Compare("eq", ir.Load(children_name, ir.Iter(), column=k), ir.IConst(-1))
                            for k in range(num_children)])
    cases = (
        ir.Case("internal", ir.BNot(is_leaf), ir.Iter(), tuple((t.name, r.expr) for t, r in zip(tables, internal_out))),
        ir.Case("leaf", is_leaf, ir.Iter(), tuple((t.name, r.expr) for t, r in zip(tables, leaf_out))),
    )
    arrays = _array_inputs(lambda n: children if n == children_name else outer.lookup(n), cases)
    return ir.Program(region_name, "dag", tuple(arrays), tuple(tables), cases, dict(interp.constants),
                      rows_from=children_name)


def find_regions(model: onnx.ModelProto) -> list:
    """Every Loop and TreeRec in the main graph, each raised to IR or refused with a reason."""
    outer = OuterScope(model)
    regions = []
    for index, node in enumerate(model.graph.node):
        if node.op_type == "Loop" and node.domain in ("", "ai.onnx"):
            kind, recognize = "Loop", recognize_loop
        elif node.op_type == "TreeRec" and node.domain == "cortex":
            kind, recognize = "TreeRec", recognize_treerec
        else:
            continue
        region = Region(kind, index, node.name or f"{kind}_{index}")
        try:
            region.program = verify(recognize(model, node, outer, f"recursion{len(regions)}"))
        except (Refusal, IRError) as e:
            region.reason = str(e)
        regions.append(region)
    return regions

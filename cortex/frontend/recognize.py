"""Finds the recursive regions of a model and raises each into a Cortex IR Program, or says why not.

Three forms:
- `cortex.TreeRec`: the structure and both cases are explicit;
- a `Loop` as exporters write it: a trip count (TorchScript) or a condition that bounds a counter (dynamo's
  `torch.while_loop`), or both; each iteration picks a node (usually `order[i]`, read through any index arithmetic
  on the iteration number or on a carried counter), reads its children's rows from loop-carried state tables, and
  writes the node's new rows back, often under an `If` on "is a leaf";
- a `Scan` over a node order (dynamo's `scan` + `torch.cond`), per-iteration outputs included.
The abstract interpreter must prove every step; anything else stays with ONNX Runtime, with the node and the reason.
"""
from __future__ import annotations

import dataclasses

import traceback
from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..ir import index as ix
from ..ir import nodes as ir
from ..ir.verify import IRError, verify
from . import ops_control, ops_elementwise, ops_linalg, ops_shape, ops_tables  # noqa: F401 - register handlers
from .interpreter import MAX_PATHS, ONNX_DTYPES, Interpreter, node_label
from .values import Array, Choice, Known, Refusal, Row, Seq, Sym, Table, TableSlice, describe, sym_scalar

KERNEL_DTYPES = ("int64", "int32", "bool", "float32")


@dataclass
class Region:
    """One recursive region found in the model: converted (program set) or left to ORT (reason set)."""
    kind: str  # 'Loop' | 'Scan' | 'TreeRec'
    node_index: int
    node_name: str
    program: Optional[ir.Program] = None
    reason: Optional[str] = None
    hint: Optional[str] = None


@ir.node
class Carried(ir.IExpr):
    """A loop-carried integer (a counter) while the body is interpreted; replaced by its closed form after."""
    slot: int


def _opset(model) -> int:
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return int(op.version)
    return 17


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
    """Abstract values of the main graph's names, computed on demand. Constants and host-computable structure
    values (lengths of inputs, loads at constant positions) keep their meaning; anything else is an opaque runtime
    tensor that the converted node takes as an input (ONNX Runtime computes it before the recursion)."""

    def __init__(self, model: onnx.ModelProto):
        self.graph = model.graph
        self.types = _value_types(model)
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.initializers = {i.name: i for i in self.graph.initializer}
        self.values = {}
        self.interp = Interpreter(outer=self.lookup, opset=_opset(model))

    def opaque(self, name, fill=None):
        dtype, shape = self.types.get(name, (None, None))
        return Array(name, dtype, shape, fill)

    def lookup(self, name):
        if name in self.values:
            return self.values[name]
        self.values[name] = self.opaque(name)  # breaks cycles; replaced below
        if name in self.initializers:
            value = Known(numpy_helper.to_array(self.initializers[name]), source=name)
        elif name in self.producer:
            node = self.producer[name]
            value = self.opaque(name)
            if node.op_type == "ConstantOfShape" and node.domain in ("", "ai.onnx"):
                value = self._constant_of_shape(node, name)
            elif node.op_type not in ("Loop", "If", "Scan") and node.domain in ("", "ai.onnx"):
                try:
                    args = [self.lookup(n) if n else None for n in node.input]
                    outs = self.interp.eval_node(node, args, self.lookup)
                    value = outs[list(node.output).index(name)]
                except Exception:  # noqa: BLE001 - outside a recursion, anything not understood is opaque
                    value = self.opaque(name)
                if not _host_value(value) or (isinstance(value, Array) and value.name != name):
                    value = self.opaque(name)  # computed by ONNX Runtime: the converted node takes it as an input
        else:
            value = self.opaque(name)  # a graph input
        self.values[name] = value
        return value

    def _constant_of_shape(self, node, name):
        attr = next((a for a in node.attribute if a.name == "value"), None)
        fill = float(numpy_helper.to_array(attr.t).reshape(-1)[0]) if attr is not None else 0.0
        try:
            shape = self.lookup(node.input[0])
            if isinstance(shape, Known):
                value = numpy_helper.to_array(attr.t) if attr is not None else np.zeros(1, np.float32)
                return Known(np.full(tuple(int(d) for d in shape.value), value.reshape(-1)[0], dtype=value.dtype))
        except Exception:  # noqa: BLE001
            pass
        return self.opaque(name, fill)


def _host_value(v) -> bool:
    """A value the host can compute before the recursion: constants, runtime tensors, and structure values that
    do not depend on the position."""
    if isinstance(v, (Known, Array)):
        return True
    if isinstance(v, Sym):
        return not any(isinstance(x, (ir.Iter, Carried)) for e in v.elems.flat for x in ir.walk([e]))
    return False


# ---- helpers shared by the recognizers ----------------------------------------------------------------


def _flatten_choices(outputs, path=()):
    """Splits outputs that are (nested) If choices into cases: [(predicates, outputs), ...]."""
    for o in outputs:
        if isinstance(o, Choice):
            c = o.pred
            then = [x.then if isinstance(x, Choice) and x.pred == c else x for x in outputs]
            other = [x.other if isinstance(x, Choice) and x.pred == c else x for x in outputs]
            return _flatten_choices(then, path + (c,)) + _flatten_choices(other, path + (ix.bnot(c),))
    return [(path, outputs)]


def _conjunction(preds) -> ir.BExpr:
    out = ir.BConst(True)
    for p in preds:
        out = ix.band(out, p)
    return out


def _table_inner(value, name) -> tuple:
    if isinstance(value, Known):
        dtype, shape = str(value.value.dtype), tuple(value.value.shape)
    elif isinstance(value, Array):
        dtype, shape = value.dtype, value.shape
    else:
        raise Refusal(f"loop-carried {name} is {describe(value)}, not a state table")
    if shape is None or len(shape) < 2 or any(not isinstance(d, int) for d in shape[1:]):
        raise Refusal(f"loop-carried {name} is not an [N, ...] state table of static row shape (shape {shape})")
    if dtype != "float32":
        raise Refusal(f"loop-carried {name} is {dtype}, not a float32 state table")
    return tuple(int(d) for d in shape[1:])


def _is_integer_scalar(value) -> bool:
    if isinstance(value, Known):
        return value.value.dtype.kind in "iu" and value.value.size == 1
    if isinstance(value, Sym):
        return not value.is_bool and value.elems.size == 1
    if isinstance(value, Array):
        return value.dtype in ("int64", "int32") and value.shape is not None and \
            all(d == 1 for d in value.shape) and len(value.shape) <= 1
    return False


def _host_index(value, lookup_arrays) -> ir.IExpr:
    """An integer scalar from outside the loop as an index expression the kernel evaluates."""
    if isinstance(value, Known):
        return ix.const(int(np.asarray(value.value).reshape(-1)[0]))
    if isinstance(value, Sym):
        return ix.as_index(value.scalar())
    if isinstance(value, Array):
        lookup_arrays[value.name] = value
        return ir.Load(value.name, ix.const(0))
    raise Refusal(f"{describe(value)} as a loop count")


def _host_pred(value, lookup_arrays) -> ir.BExpr:
    if isinstance(value, Known):
        return ir.BConst(bool(np.asarray(value.value).reshape(-1)[0]))
    if isinstance(value, Sym):
        return ix.as_pred(value.scalar())
    if isinstance(value, Array):
        lookup_arrays[value.name] = value
        return ix.as_pred(ir.Load(value.name, ix.const(0)))
    raise Refusal(f"{describe(value)} as a loop condition")


def _row_of(interp, value, what) -> tuple:
    """A per-iteration output as (row expression, shape)."""
    if isinstance(value, (Known, Sym, Row)):
        r = interp.row(value, what)
        return r.expr, tuple(r.shape)
    raise Refusal(f"{what} is {describe(value)}")


def _input_decls(interp, cases, extra, outer_lookup, first=(), also=()) -> list:
    """InputDecls for the runtime arrays the program reads, in first-use order, then those named in `also`."""
    decls = list(first)
    for name in ir.referenced_arrays(cases, extra) + list(also):
        if any(d.name == name for d in decls):
            continue
        arr = interp.arrays.get(name) or outer_lookup(name)
        if not isinstance(arr, Array):
            raise Refusal(f"{name} is read as a runtime tensor but is {describe(arr)}")
        if arr.dtype not in KERNEL_DTYPES or arr.shape is None:
            raise Refusal(f"runtime tensor {name} ({arr.dtype}, shape {arr.shape}) is not a supported node input")
        inner = tuple(arr.shape[1:])
        if any(not isinstance(d, int) for d in inner):
            raise Refusal(f"runtime tensor {name} has a dynamic inner dimension")
        decls.append(ir.InputDecl(name, "array", arr.dtype, len(arr.shape), inner))
    return decls


def _cases(paths, state_slots, emit_slots, interp) -> tuple:
    """Cases from the flattened paths: each path's table writes (one target row) and per-iteration rows."""
    if len(paths) > MAX_PATHS:
        raise Refusal(f"the step splits into {len(paths)} branch combinations (more than {MAX_PATHS})")
    cases = []
    for k, (preds, outs) in enumerate(paths):
        writes, targets = [], []
        for slot, table_name in state_slots:
            out = outs[slot]
            if not isinstance(out, Table) or out.name != table_name:
                raise Refusal(f"state {table_name} is replaced by {describe(out)}, not updated row by row",
                              hint="update the state with h[v] = new_row (or index_copy_/index_put) only")
            for target, row in out.writes:
                if target not in targets:
                    targets.append(target)
                writes.append((table_name, row))
        if len(targets) > 1:
            from ..ir.printer import format_index
            raise Refusal("the state is written at two rows in one step (" +
                          ", ".join(format_index(t) for t in targets[:3]) + ")",
                          hint="write one node's rows per iteration")
        for slot, table_name, width in emit_slots:
            expr, shape = _row_of(interp, outs[slot], f"the per-iteration output {table_name}")
            if expr.width != width:
                raise Refusal(f"the per-iteration output {table_name} changes shape between branches")
            writes.append((table_name, expr))
        if writes:
            cases.append(ir.Case(f"case{k}", _conjunction(preds), targets[0] if targets else None, tuple(writes)))
    if not any(c.target is not None for c in cases) and state_slots:
        raise Refusal("the loop never writes its state")
    return tuple(cases)


def _check_outputs_unused(node, slots, used, what):
    for k in slots:
        if k < len(node.output) and node.output[k] and node.output[k] in used:
            raise Refusal(f"the loop's {what} {node.output[k]} is used after the loop")


def _loop_trip(trip_m, cond0, cond_out, lookup_arrays) -> ir.IExpr:
    """The number of iterations: M (if any), capped by the condition, which must be constant true or bound a
    counter: after iteration p the loop goes on iff d(p) = a*p + b compares with 0."""
    if isinstance(cond_out, ir.BConst):
        if not cond_out.value:
            count = ix.const(1)
        elif trip_m is None:
            raise Refusal("the loop runs until a condition that never changes (no trip count)")
        else:
            count = None
    else:
        count = _counted_iterations(cond_out)
    if count is None:
        total = trip_m
    else:
        total = count if trip_m is None else ix.ibin("min", trip_m, count)
    if trip_m is not None:
        total = ix.ibin("max", total, ix.const(0))
    return ix.iselect(cond0, total, ix.const(0))


def _counted_iterations(cond: ir.BExpr) -> ir.IExpr:
    """1 + the number of p >= 0 with cond(p) true before the first false, for cond affine in p and monotone."""
    if not isinstance(cond, ir.Compare):
        raise Refusal("the loop condition is not a bound on the iteration count (data-dependent iteration)",
                      hint="iterate over a node order of known length (for i in range(L)) or bound a counter")
    terms, const = ix.affine(ix.ibin("sub", cond.a, cond.b))
    a = terms.pop(ir.Iter(), 0)
    if any(ix.mentions(atom, ir.Iter()) for atom in terms):
        raise Refusal("the loop condition is not affine in the iteration number")
    op = cond.op
    if a < 0:
        a, terms, const, op = -a, {k: -v for k, v in terms.items()}, -const, ix.SWAPPED[op]
    if a == 0 or op not in ("lt", "le"):
        raise Refusal(f"the loop condition ({op} on a counter that moves by {a}) does not bound the iteration count")
    b = ix.from_affine(terms, const)
    neg_b = ix.ibin("sub", ix.const(0), b)
    if op == "lt":  # a*p + b < 0  <=>  p < ceil(-b / a)
        count = ix.ibin("floordiv", ix.ibin("add", neg_b, ix.const(a - 1)), ix.const(a))
    else:  # a*p + b <= 0  <=>  p <= floor(-b / a)
        count = ix.ibin("add", ix.ibin("floordiv", neg_b, ix.const(a)), ix.const(1))
    return ix.ibin("add", ix.const(1), ix.ibin("max", count, ix.const(0)))


# ---- Loop -------------------------------------------------------------------------------------------


def recognize_loop(model, node, outer: OuterScope, region_name: str, used: set) -> ir.Program:
    body = next(helper.get_attribute_value(a) for a in node.attribute if a.name == "body")
    trip_name = node.input[0] if len(node.input) > 0 else ""
    cond_name = node.input[1] if len(node.input) > 1 else ""
    carried_names = list(node.input[2:])
    n_carried = len(carried_names)
    n_scan = len(body.output) - 1 - n_carried
    if not carried_names:
        raise Refusal("the loop carries no state")
    host_arrays = {}
    trip_m = _host_index(outer.lookup(trip_name), host_arrays) if trip_name else None
    cond0 = _host_pred(outer.lookup(cond_name), host_arrays) if cond_name else ir.BConst(True)

    interp = Interpreter(outer=outer.lookup, opset=outer.interp.opset)
    bindings = {body.input[0].name: sym_scalar(ir.Iter())}
    if len(body.input) > 1:
        bindings[body.input[1].name] = Known(np.array(True))
    state_slots, tables, inits, counters, invariants = [], [], [], {}, {}
    for k, (init_name, body_in) in enumerate(zip(carried_names, body.input[2:])):
        init = outer.lookup(init_name)
        if _is_integer_scalar(init):
            counters[k] = (init, body_in)
            shape = _scalar_shape(init)
            elems = np.empty(shape, dtype=object)
            elems[...] = Carried(k)
            bindings[body_in.name] = Sym(elems, "int64")
        elif isinstance(init, (Known, Sym)) and not (isinstance(init, Known) and init.value.dtype.kind == "f"):
            invariants[k] = init
            bindings[body_in.name] = init
        else:
            inner = _table_inner(init, init_name)
            table = f"state{len(tables)}"
            bindings[body_in.name] = Table(table, inner)
            state_slots.append((1 + k, table))
            if init_name not in inits:
                inits.append(init_name)
            tables.append(ir.TableDecl(table, inner, init_name, node.output[k] if k < len(node.output) else ""))
    _check_outputs_unused(node, list(counters) + list(invariants), used, "counter")

    outs = interp.run_graph(body, bindings)
    paths = _flatten_choices(outs)
    steps = _counter_steps(paths, counters)
    for k, init in invariants.items():
        for _, path_outs in paths:
            if path_outs[1 + k] != init:
                raise Refusal(f"loop-carried {carried_names[k]} changes in a way Cortex does not follow")
    closed = {Carried(k): ix.ibin("add", _host_index(init, host_arrays), ix.ibin("mul", ix.const(steps[k]), ir.Iter()))
              for k, (init, _) in counters.items()}

    emit_slots = []
    for j in range(n_scan):
        slot = 1 + n_carried + j
        _, shape = _row_of(interp, paths[0][1][slot], f"scan output {j}")
        name = f"emit{j}"
        emit_slots.append((slot, name, int(np.prod(shape, dtype=np.int64))))
        tables.append(ir.TableDecl(name, tuple(shape), None, node.output[n_carried + j], kind="emit"))
    if not state_slots:
        raise Refusal("the loop carries no state table (nothing recursive to compute)")

    cond_outs = {_subst(closed, path_outs[0], interp) for _, path_outs in paths}
    if len(cond_outs) != 1:
        raise Refusal("the loop condition differs between branches")
    cond_out = cond_outs.pop()
    cases = _cases(paths, state_slots, emit_slots, interp)
    cases = tuple(_substitute_case(c, closed) for c in cases)
    trip = _loop_trip(trip_m, cond0, cond_out, host_arrays)
    interp.arrays.update(host_arrays)
    init_decls = [_init_decl(name, outer) for name in inits]
    arrays = _input_decls(interp, cases, [trip], outer.lookup)
    return ir.Program(region_name, "visit", tuple(arrays + init_decls), tuple(tables), cases,
                      dict(interp.constants), trip=trip,
                      labels=_labels(interp))


def _init_decl(name, outer) -> ir.InputDecl:
    inner = _table_inner(outer.lookup(name), name)
    return ir.InputDecl(name, "init", "float32", 1 + len(inner), inner)


def _scalar_shape(init):
    if isinstance(init, Known):
        return init.value.shape
    if isinstance(init, Sym):
        return init.shape
    return tuple(init.shape)


def _counter_steps(paths, counters) -> dict:
    steps = {}
    for k in counters:
        found = set()
        for _, outs in paths:
            out = outs[1 + k]
            if not isinstance(out, Sym) or out.elems.size != 1:
                raise Refusal(f"loop-carried counter {k} becomes {describe(out)}")
            terms, c = ix.affine(ix.ibin("sub", ix.as_index(out.scalar()), Carried(k)))
            if terms:
                raise Refusal("a loop-carried integer changes by something other than a constant step",
                              hint="derive node positions from the loop's iteration number")
            found.add(c)
        if len(found) != 1:
            raise Refusal("a loop-carried counter moves by different steps in different branches")
        steps[k] = found.pop()
    return steps


def _subst(closed, value, interp):
    if isinstance(value, Known):
        return ir.BConst(bool(np.asarray(value.value).reshape(-1)[0]))
    if isinstance(value, Row):
        value = interp.sym(value, "the loop condition")
    if isinstance(value, Sym):
        [e] = ix.substitute([ix.as_pred(value.scalar())], closed)
        return e
    raise Refusal(f"the loop condition is {describe(value)}")


def _substitute_case(case: ir.Case, closed: dict) -> ir.Case:
    if not closed:
        return case
    roots = [case.predicate] + ([case.target] if case.target is not None else []) + [x for _, x in case.writes]
    new = ix.substitute(roots, closed)
    pred, rest = new[0], new[1:]
    target = None
    if case.target is not None:
        target, rest = rest[0], rest[1:]
    return ir.Case(case.name, pred, target, tuple((t, x) for (t, _), x in zip(case.writes, rest)))


# ---- Scan -------------------------------------------------------------------------------------------


def recognize_scan(model, node, outer: OuterScope, region_name: str, used: set) -> ir.Program:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    body = attrs["body"]
    m = int(attrs["num_scan_inputs"])
    n_state = len(node.input) - m
    n_out = len(body.output) - n_state
    if any(attrs.get("scan_input_axes", [0] * m)) or any(attrs.get("scan_output_axes", [0] * n_out)):
        raise Refusal("a Scan along an axis other than 0")
    if any(attrs.get("scan_output_directions", [0] * n_out)):
        raise Refusal("a Scan output in reverse order")
    directions = list(attrs.get("scan_input_directions", [0] * m))
    interp = Interpreter(outer=outer.lookup, opset=outer.interp.opset)
    bindings, state_slots, tables, inits, invariants = {}, [], [], [], {}
    for k in range(n_state):
        name, body_in = node.input[k], body.input[k]
        init = outer.lookup(name)
        if isinstance(init, (Known, Sym)) and not (isinstance(init, Known) and init.value.dtype.kind == "f"):
            invariants[k] = init
            bindings[body_in.name] = init
            continue
        inner = _table_inner(init, name)
        table = f"state{len(tables)}"
        bindings[body_in.name] = Table(table, inner)
        state_slots.append((k, table))
        if name not in inits:
            inits.append(name)
        tables.append(ir.TableDecl(table, inner, name, node.output[k]))
    _check_outputs_unused(node, list(invariants), used, "carried value")
    lengths = []
    for j in range(m):
        name, body_in = node.input[n_state + j], body.input[n_state + j]
        arr = outer.lookup(name)
        if not isinstance(arr, Array) or arr.shape is None or len(arr.shape) < 1:
            raise Refusal(f"Scan input {name} is {describe(arr)}, not a runtime tensor")
        length = ir.Length(name)
        lengths.append(length)
        position = ix.ibin("sub", ix.ibin("sub", length, ix.const(1)), ir.Iter()) if directions[j] else ir.Iter()
        one = np.empty((), dtype=object)
        one[()] = position
        from .ops_tables import gather_rows
        bindings[body_in.name] = gather_rows(interp, arr, Sym(one, "int64"))
    if not state_slots:
        raise Refusal("the Scan carries no state table (nothing recursive to compute)")
    outs = interp.run_graph(body, bindings)
    paths = _flatten_choices(outs)
    for k, init in invariants.items():
        for _, path_outs in paths:
            if path_outs[k] != init:
                raise Refusal(f"Scan state {node.input[k]} changes in a way Cortex does not follow")
    emit_slots = []
    for j in range(n_out):
        slot = n_state + j
        _, shape = _row_of(interp, paths[0][1][slot], f"scan output {j}")
        name = f"emit{j}"
        emit_slots.append((slot, name, int(np.prod(shape, dtype=np.int64))))
        tables.append(ir.TableDecl(name, tuple(shape), None, node.output[n_state + j], kind="emit"))
    cases = _cases(paths, state_slots, emit_slots, interp)
    trip = lengths[0]
    for other in lengths[1:]:  # ONNX Runtime fails on scan inputs of different lengths: so does the kernel
        trip = ir.Guard(ix.cmp("eq", other, lengths[0]), trip, "Scan inputs of different lengths")
    init_decls = [_init_decl(name, outer) for name in inits]
    arrays = _input_decls(interp, cases, [trip], outer.lookup)
    return ir.Program(region_name, "visit", tuple(arrays + init_decls), tuple(tables), cases,
                      dict(interp.constants), trip=trip,
                      labels=_labels(interp))


# ---- TreeRec -----------------------------------------------------------------------------------------


def recognize_treerec(model, node, outer: OuterScope, region_name: str, used: set) -> ir.Program:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    leaf_body, internal_body = attrs["leaf_body"], attrs["internal_body"]
    num_states = int(attrs.get("num_states", len(node.output)))
    children_name, node_input_names = node.input[0], list(node.input[1:])
    children = outer.lookup(children_name)
    if not isinstance(children, Array) or children.shape is None or len(children.shape) != 2 or \
            not isinstance(children.shape[1], int):
        raise Refusal("TreeRec children must be an int64 [N, K] tensor of static K")
    if children.dtype != "int64":
        raise Refusal(f"TreeRec children are {children.dtype}, not int64")
    num_children = int(children.shape[1])

    interp = Interpreter(outer=outer.lookup, opset=outer.interp.opset)  # bodies may read the main graph's names
    interp.use_array(children)
    from .ops_tables import gather_rows

    def node_input_bindings(graph, first):
        bindings = {}
        one = np.empty((), dtype=object)
        one[()] = ir.Iter()
        for name, body_in in zip(node_input_names, graph.input[first:]):
            arr = outer.lookup(name)
            if not isinstance(arr, Array) or arr.shape is None:
                raise Refusal(f"TreeRec node input {name} is not a runtime tensor of known rank")
            bindings[body_in.name] = gather_rows(interp, arr, Sym(one, "int64"))
        return bindings

    leaf_out = [_row(interp, v, "leaf_body output") for v in interp.run_graph(leaf_body, node_input_bindings(leaf_body, 0))]
    if len(leaf_out) != num_states:
        raise Refusal("leaf_body outputs do not match num_states")
    tables = [ir.TableDecl(f"state{s}", tuple(leaf_out[s].shape), None, node.output[s]) for s in range(num_states)]

    bindings = node_input_bindings(internal_body, num_children * num_states)
    for k in range(num_children):
        child = ir.Load(children_name, ir.Iter(), column=k)
        for s in range(num_states):
            body_in = internal_body.input[k * num_states + s]
            t = tables[s]
            bindings[body_in.name] = Row(ir.ChildState(t.name, child, True, t.width), t.inner)
    internal_paths = _flatten_choices(interp.run_graph(internal_body, bindings))
    is_leaf = _conjunction([ix.cmp("eq", ir.Load(children_name, ir.Iter(), column=k), ix.const(-1))
                            for k in range(num_children)])
    cases = []
    for k, (preds, outs) in enumerate(internal_paths):
        rows = [_row(interp, v, "internal_body output") for v in outs]
        for t, r in zip(tables, rows):
            if tuple(r.shape) != t.inner:
                raise Refusal(f"internal_body state {t.name} has shape {list(r.shape)}, leaf_body {list(t.inner)}")
        cases.append(ir.Case(f"internal{k}", _conjunction((ix.bnot(is_leaf),) + tuple(preds)), ir.Iter(),
                             tuple((t.name, r.expr) for t, r in zip(tables, rows))))
    cases.append(ir.Case("leaf", is_leaf, ir.Iter(), tuple((t.name, r.expr) for t, r in zip(tables, leaf_out))))
    # every node input is a kernel input, checked to have N rows, even one no node reads
    arrays = _input_decls(interp, cases, [], outer.lookup, also=node_input_names)
    arrays = [dataclasses.replace(d, per_node=True) if d.name in node_input_names else d for d in arrays]
    return ir.Program(region_name, "dag", tuple(arrays), tuple(tables), tuple(cases), dict(interp.constants),
                      rows_from=children_name, labels=_labels(interp))


def _labels(interp) -> tuple:
    """(constant, the ONNX name it came from) for the IR's messages; names that cannot be written safely are left
    out (the message then names the constant)."""
    from ..ir.schema import safe_text
    return tuple((name, source) for name, source in sorted(interp.labels.items())
                 if name in interp.constants and isinstance(source, str) and safe_text(source))


def _row(interp, v, what) -> Row:
    if isinstance(v, Choice):
        raise Refusal(f"{what} is chosen by an If on a structure value")
    r = interp.row(v, what)
    return r


# ---- the model ---------------------------------------------------------------------------------------

RECOGNIZERS = {("", "Loop"): ("Loop", recognize_loop), ("ai.onnx", "Loop"): ("Loop", recognize_loop),
               ("", "Scan"): ("Scan", recognize_scan), ("ai.onnx", "Scan"): ("Scan", recognize_scan),
               ("cortex", "TreeRec"): ("TreeRec", recognize_treerec)}


def _used_names(graph) -> set:
    used = {o.name for o in graph.output}
    for n in graph.node:
        used.update(x for x in n.input if x)
        for a in n.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                used |= _used_names(sub)
    return used


def find_regions(model: onnx.ModelProto) -> list:
    """Every Loop, Scan and TreeRec in the main graph, each raised to IR or refused with a reason. Never raises
    for a model: an internal error is a refusal of that region, naming the node."""
    outer = OuterScope(model)
    used = _used_names(model.graph)
    regions = []
    for index, node in enumerate(model.graph.node):
        found = RECOGNIZERS.get((node.domain, node.op_type))
        if found is None:
            continue
        kind, recognize = found
        region = Region(kind, index, node.name or f"{kind}_{index}")
        try:
            program = recognize(model, node, outer, f"recursion{len(regions)}", used)
            region.program = verify(program)
        except Refusal as e:
            region.reason, region.hint = str(e), e.hint
        except IRError as e:
            region.reason = f"the IR raised from {node_label(node)} is inconsistent: {e}"
        except RecursionError:
            region.reason = f"{node_label(node)}: the expressions are too deeply nested"
        except Exception as e:  # noqa: BLE001 - never crash on a model
            where = traceback.extract_tb(e.__traceback__)[-1]
            region.reason = (f"{node_label(node)}: internal error {type(e).__name__}: {e} "
                             f"(at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})")
        if region.program is not None:
            for table in region.program.tables:  # later regions may read these tables
                if table.output:
                    outer.types[table.output] = ("float32", (None,) + tuple(table.inner))
                    outer.values.pop(table.output, None)
        regions.append(region)
    return regions

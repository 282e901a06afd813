"""The Loop recognizer: a Loop as exporters write it (a trip count, a condition that bounds a carried counter, or
both), each iteration picking a node, reading its children's rows from loop-carried state tables and writing the
node's rows back; carried counters become closed forms of the iteration number."""
from __future__ import annotations

import numpy as np
from onnx import helper

from ..ir import index as ix
from ..ir import nodes as ir
from .interpreter import Interpreter, node_label
from .ops_host import HostTable
from .forest import flatten_lanes
from .ops_sets import count_edges
from .region import (Carried, InnerIter, OuterScope, build_cases, carried_decls, carried_tables, carried_value,
                     check_outputs_unused, constant_labels, flatten_choices, float_element, init_decl, input_decls,
                     row_of, table_layout, used_names, zero_tables_by_shape)
from .values import Array, Known, Refusal, Row, Sym, Table, describe, sym_scalar


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
    interp.shared["element"] = element = float_element(outer, carried_names)
    bindings = {body.input[0].name: sym_scalar(ir.Iter())}
    if len(body.input) > 1:
        bindings[body.input[1].name] = Known(np.array(True))
    state_slots, tables, inits, counters, invariants = [], [], [], {}, {}
    carried = {}  # k -> CarriedValue
    host_tables = {}  # k -> ir.HostVar of an integer table the loop carries
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
        elif (value := carried_value(outer, body, body_in.name, body.output[1 + k].name, init_name, k,
                                     element)) is not None:
            body, bindings[body_in.name], carried[k] = value  # a vector, a running reduction or a list
        elif (table := _host_table(outer, init_name, k)) is not None:  # integer bookkeeping: the host runs it
            host_tables[k] = table
            bindings[body_in.name] = HostTable(table.name, table.size)
        else:
            lead, inner = table_layout(init, init_name)
            table = f"state{len(tables)}"
            bindings[body_in.name] = Table(table, inner, lead=lead)
            state_slots.append((1 + k, table))
            if init_name not in inits:
                inits.append(init_name)
            tables.append(ir.TableDecl(table, inner, init_name, node.output[k] if k < len(node.output) else "",
                                       lead=lead))
    check_outputs_unused(node, list(counters) + list(invariants) + list(host_tables), used, "counter")

    interp.shared["outer_scope"] = outer
    interp.shared["lane_tables"] = any(t.lead == 2 for t in tables if t.kind == "state")  # maybe a padded forest
    outs = interp.run_graph(body, bindings)
    paths = flatten_choices(outs)
    steps = _counter_steps(paths, counters)
    for k, init in invariants.items():
        for _, path_outs in paths:
            if path_outs[1 + k] != init:
                raise Refusal(f"loop-carried {carried_names[k]} changes in a way Cortex does not follow")
    # a counter with a constant step is a closed form of the iteration; any other is host state (ir.HostVar)
    closed = {Carried(k): ix.ibin("add", _host_index(init, host_arrays), ix.ibin("mul", ix.const(steps[k]), ir.Iter()))
              for k, (init, _) in counters.items() if k in steps}
    host_vars = [ir.HostVar(f"hv{k}", _host_index(init, host_arrays)) for k, (init, _) in counters.items()
                 if k not in steps] + list(host_tables.values())
    closed.update({Carried(k): ir.HostValue(f"hv{k}") for k in counters if k not in steps})
    host_slots = [(1 + k, f"hv{k}") for k in counters if k not in steps] + [(1 + k, t.name) for k, t in
                                                                           host_tables.items()]

    emit_slots, finals = carried_tables(interp, paths, {1 + k: (v, node.output[k] if k < len(node.output) else "")
                                                       for k, v in carried.items()}, tables)
    for j in range(n_scan):
        slot = 1 + n_carried + j
        _, shape = row_of(interp, paths[0][1][slot], f"scan output {j}")
        name = f"emit{j}"
        emit_slots.append((slot, name, int(np.prod(shape, dtype=np.int64))))
        tables.append(ir.TableDecl(name, tuple(shape), None, node.output[n_carried + j], kind="emit"))
    if not state_slots and not any(v.recurrent for v in carried.values()):
        raise Refusal("the loop carries no state table (nothing recursive to compute)")

    cond_outs = {_subst(closed, path_outs[0], interp) for _, path_outs in paths}
    if len(cond_outs) != 1:
        raise Refusal("the loop condition differs between branches")
    cond_out = cond_outs.pop()
    cases = build_cases(paths, state_slots, emit_slots, interp, host_slots)
    trip = _loop_trip(trip_m, cond0, cond_out, host_arrays)
    if "inner_loop" in interp.shared:  # for i: for j: one position per (i, j)
        closed, trip = _flatten_inner_loop(interp.shared["inner_loop"], body, outs, state_slots,
                                           emit_slots + host_slots, closed, trip, host_arrays)
    cases = tuple(_substitute_case(c, closed) for c in cases)
    extra = (["host state"] if host_vars else []) + (["carried values"] if carried else []) + \
        (["per-iteration outputs"] if n_scan else []) + (["a nested loop"] if "inner_loop" in interp.shared else [])
    cases, tables, trip = flatten_lanes(interp, cases, tuple(tables), trip, extra)
    cases = count_edges(cases)
    interp.arrays.update(host_arrays)
    init_decls = [init_decl(name, outer) for name in inits]
    arrays = input_decls(interp, cases, [trip], outer.lookup, first=carried_decls(carried.values(), element))
    program = ir.Program(region_name, "visit", tuple(arrays + init_decls), tuple(tables), cases,
                         dict(interp.constants), trip=trip,
                         labels=constant_labels(interp), finals=tuple(finals), host_vars=tuple(host_vars),
                         element=element)
    return zero_tables_by_shape(program, outer)


def _host_table(outer, init_name: str, k: int):
    """An ir.HostVar for a 1-D integer tensor the loop carries that starts filled with one value (torch.zeros(T,
    dtype=torch.long): a ConstantOfShape of a structure length, or a constant), else None."""
    init = outer.lookup(init_name)
    if isinstance(init, Known) and init.value.dtype.kind in "iu" and init.value.ndim == 1 and init.value.size and \
            np.all(init.value == init.value[0]):
        return ir.HostVar(f"ht{k}", ix.const(int(init.value[0])), ix.const(init.value.size))
    producer = outer.producer.get(init_name)
    if not (isinstance(init, Array) and init.dtype in ("int64", "int32") and init.fill is not None and
            producer is not None and producer.op_type == "ConstantOfShape"):
        return None
    shape = outer.lookup(producer.input[0])
    if not isinstance(shape, Sym) or shape.elems.size != 1:
        return None
    return ir.HostVar(f"ht{k}", ix.const(int(init.fill)), ix.as_index(shape.elems.reshape(-1)[0]))


NESTED_HINT = "write the grid's loops as one: for k in range(R * C): i, j = k // C, k % C"


def nested_loop(it, node, body, args, lookup):
    """A Loop nested in the recursion's loop that carries the state tables (`for j in range(C)` inside `for i in
    range(R)`, or a nested torch.while_loop): its body is interpreted once with j an `InnerIter` (its counters
    Carried(k, 1)); `_flatten_inner_loop` then makes each (i, j) one position. The tables must enter unwritten; no
    per-iteration outputs."""
    if "inner_loop" in it.shared:
        raise Refusal("two loops over the state inside the recursion's loop", hint=NESTED_HINT)
    trip = ix.as_index(it.sym(args[0], "the inner loop's count").scalar()) if args and args[0] is not None else None
    cond0 = ix.as_pred(it.sym(args[1], "the inner loop's condition").scalar()) \
        if len(args) > 1 and args[1] is not None else ir.BConst(True)
    carried = list(args[2:])
    if len(body.output) != 1 + len(carried):
        raise Refusal("an inner loop over the state with per-iteration outputs", hint=NESTED_HINT)
    bindings = {body.input[0].name: sym_scalar(InnerIter())}
    if len(body.input) > 1:
        bindings[body.input[1].name] = Known(np.array(True))
    counters = {}
    for k, (b, v) in enumerate(zip(body.input[2:], carried)):
        if isinstance(v, Table) and v.writes:
            raise Refusal("the state is written before the inner loop over it", hint=NESTED_HINT)
        if _is_integer_scalar(v) and not isinstance(v, Array):  # a counter (torch.while_loop carries its own)
            counters[k] = ix.as_index(it.sym(v).scalar())
            elems = np.empty(_scalar_shape(v), dtype=object)
            elems[...] = Carried(k, 1)
            bindings[b.name] = Sym(elems, "int64")
        elif isinstance(v, (Table, Known, Sym)):
            bindings[b.name] = v
        else:
            raise Refusal(f"an inner loop carrying {describe(v)}", hint=NESTED_HINT)
    outs = it.nested(lookup).run_graph(body, bindings)
    steps = {}
    for k, v in enumerate(carried):
        out = outs[1 + k]
        if k in counters:
            if not isinstance(out, Sym) or out.elems.size != 1:
                raise Refusal(f"an inner loop's counter becomes {describe(out)}", hint=NESTED_HINT)
            terms, steps[k] = ix.affine(ix.ibin("sub", ix.as_index(out.scalar()), Carried(k, 1)))
            if terms:
                raise Refusal("an inner loop's counter changes by something other than a constant step",
                              hint=NESTED_HINT)
        elif not isinstance(v, Table) and out != v:
            raise Refusal("an inner loop carries a value that changes (only the state tables and counters may)",
                          hint=NESTED_HINT)
    if not isinstance(outs[0], (Known, Sym)):
        raise Refusal(f"an inner loop's condition is {describe(outs[0])}", hint=NESTED_HINT)
    cond = ir.BConst(bool(np.asarray(outs[0].value).reshape(-1)[0])) if isinstance(outs[0], Known) else \
        ix.as_pred(outs[0].scalar())
    closed = {Carried(k, 1): ix.ibin("add", init, ix.ibin("mul", ix.const(steps[k]), InnerIter()))
              for k, init in counters.items()}
    it.shared["inner_loop"] = (trip, cond0, ix.substitute([cond], closed)[0], closed,
                               tuple(o for k, o in enumerate(outs[1:]) if isinstance(carried[k], Table)),
                               {node.output[k] for k in counters if k < len(node.output) and node.output[k]},
                               node_label(node))
    return list(outs[1:])


def _flatten_inner_loop(inner, body, outs, state_slots, per_outer, closed, trip, host_arrays):
    """A loop over j in [0, C) nested in this one over i, carrying the state tables (a grid's rows and columns): one
    position p per (i, j), i = p // C and j = p % C, R * C positions. C must not change with i; the outer body must
    pass the inner loop's tables on unchanged (no other write per i), emit, carry or step on the host nothing per i
    (`per_outer`: its emit and host slots) and not read the inner loop's counters after it."""
    inner_trip, cond0, cond, inner_closed, tables_out, counter_outputs, label = inner
    if per_outer:
        raise Refusal("a loop nested in the recursion's loop, with per-iteration outputs, carried values or host "
                      "state of the outer one", hint=NESTED_HINT)
    for slot, _ in state_slots:
        if not any(outs[slot] == v for v in tables_out):
            raise Refusal("the state is written outside the inner loop over it", hint=NESTED_HINT)
    if counter_outputs & used_names(body):
        raise Refusal("the outer loop reads an inner loop's counter after it", hint=NESTED_HINT).at(label)
    try:
        count = _loop_trip(inner_trip, cond0, cond, host_arrays, var=InnerIter())
    except Refusal as r:
        raise r.at(label) from None
    if any(isinstance(x, (ir.Iter, Carried, InnerIter)) for x in ir.walk([count])):
        raise Refusal("a loop inside the recursion whose count changes with the outer iteration",
                      hint=NESTED_HINT).at(label)
    count = ix.ibin("max", count, ix.const(0))
    flat = {ir.Iter(): ix.ibin("floordiv", ir.Iter(), count), InnerIter(): ix.ibin("mod", ir.Iter(), count)}
    inner_closed = {k: ix.substitute([v], closed)[0] for k, v in inner_closed.items()}  # an init may read i's counters
    closed = {k: ix.substitute([v], flat)[0] for k, v in {**closed, **inner_closed}.items()}
    return {**closed, **flat}, ix.ibin("mul", trip, count)


def _scalar_shape(init):
    if isinstance(init, Known):
        return init.value.shape
    if isinstance(init, Sym):
        return init.shape
    return tuple(init.shape)


def _counter_steps(paths, counters) -> dict:
    """{k: step} for the counters that move by one constant step in every branch; the others are host state."""
    steps = {}
    for k in counters:
        found = set()
        for _, outs in paths:
            out = outs[1 + k]
            if not isinstance(out, Sym) or out.elems.size != 1:
                raise Refusal(f"loop-carried counter {k} becomes {describe(out)}")
            terms, c = ix.affine(ix.ibin("sub", ix.as_index(out.scalar()), Carried(k)))
            found.add(None if terms else c)
        if len(found) == 1 and None not in found:
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
    return case.with_roots(ix.substitute(case.roots(), closed))



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



def _loop_trip(trip_m, cond0, cond_out, lookup_arrays, var=ir.Iter()) -> ir.IExpr:
    """The number of iterations: M (if any), capped by the condition, which must be constant true or bound a
    counter: after iteration p (`var`) the loop goes on iff d(p) = a*p + b compares with 0."""
    if isinstance(cond_out, ir.BConst):
        if not cond_out.value:
            count = ix.const(1)
        elif trip_m is None:
            raise Refusal("the loop runs until a condition that never changes (no trip count)")
        else:
            count = None
    else:
        count = _counted_iterations(cond_out, var)
    if count is None:
        total = trip_m
    else:
        total = count if trip_m is None else ix.ibin("min", trip_m, count)
    if trip_m is not None:
        total = ix.ibin("max", total, ix.const(0))
    return ix.iselect(cond0, total, ix.const(0))


def _counted_iterations(cond: ir.BExpr, var=ir.Iter()) -> ir.IExpr:
    """1 + the number of p >= 0 with cond(p) true before the first false, for cond affine in p (`var`) and
    monotone."""
    if not isinstance(cond, ir.Compare):
        raise Refusal("the loop condition is not a bound on the iteration count (data-dependent iteration)",
                      hint="iterate over a node order of known length (for i in range(L)) or bound a counter")
    terms, const = ix.affine(ix.ibin("sub", cond.a, cond.b))
    a = terms.pop(var, 0)
    if any(ix.mentions(atom, var) for atom in terms):
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

"""The Scan recognizer: a Scan over a node order (dynamo's ``scan`` + ``torch.cond``), its carried state tables and
per-iteration outputs."""
from __future__ import annotations

import numpy as np
from onnx import helper

from ..ir import index as ix
from ..ir import nodes as ir
from .interpreter import Interpreter
from .forest import flatten_lanes
from .ops_sets import count_edges
from .ops_tables import gather_rows
from .region import (OuterScope, build_cases, carried_decls, carried_tables, carried_value, check_outputs_unused,
                     constant_labels, flatten_choices, float_element, init_decl, input_decls, row_of, table_layout,
                     zero_tables_by_shape)
from .values import Array, Known, Refusal, Sym, Table, describe


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
    interp.shared["element"] = element = float_element(outer, node.input)  # the states' and scanned inputs'
    bindings, state_slots, tables, inits, invariants, carried = {}, [], [], [], {}, {}
    for k in range(n_state):
        name, body_in = node.input[k], body.input[k]
        init = outer.lookup(name)
        if isinstance(init, (Known, Sym)) and not (isinstance(init, Known) and init.value.dtype.kind == "f"):
            invariants[k] = init
            bindings[body_in.name] = init
            continue
        value = carried_value(outer, body, body_in.name, body.output[k].name, name, k, element)
        if value is not None:  # a vector, a running reduction or a list
            body, bindings[body_in.name], carried[k] = value
            continue
        lead, inner = table_layout(init, name)
        table = f"state{len(tables)}"
        bindings[body_in.name] = Table(table, inner, lead=lead)
        state_slots.append((k, table))
        if name not in inits:
            inits.append(name)
        tables.append(ir.TableDecl(table, inner, name, node.output[k], lead=lead))
    check_outputs_unused(node, list(invariants), used, "carried value")
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
        bindings[body_in.name] = gather_rows(interp, arr, Sym(one, "int64"))
    if not state_slots and not any(v.recurrent for v in carried.values()):
        raise Refusal("the Scan carries no state table (nothing recursive to compute)")
    interp.shared["outer_scope"] = outer
    interp.shared["lane_tables"] = any(t.lead == 2 for t in tables if t.kind == "state")  # maybe a padded forest
    outs = interp.run_graph(body, bindings)
    paths = flatten_choices(outs)
    for k, init in invariants.items():
        for _, path_outs in paths:
            if path_outs[k] != init:
                raise Refusal(f"Scan state {node.input[k]} changes in a way Cortex does not follow")
    emit_slots, finals = carried_tables(interp, paths, {k: (v, node.output[k] if k < len(node.output) else "")
                                                       for k, v in carried.items()}, tables)
    for j in range(n_out):
        slot = n_state + j
        if interp.shared.get("lanes") and node.output[n_state + j] not in used:
            continue  # a padded forest's unused per-iteration output (one row per tree): not computed
        _, shape = row_of(interp, paths[0][1][slot], f"scan output {j}")
        name = f"emit{j}"
        emit_slots.append((slot, name, int(np.prod(shape, dtype=np.int64))))
        tables.append(ir.TableDecl(name, tuple(shape), None, node.output[n_state + j], kind="emit"))
    cases = build_cases(paths, state_slots, emit_slots, interp)
    trip = lengths[0]
    for other in lengths[1:]:  # ONNX Runtime fails on scan inputs of different lengths: so does the kernel
        trip = ir.Guard(ix.cmp("eq", other, lengths[0]), trip, "Scan inputs of different lengths")
    extra = (["carried values"] if carried else []) + (["per-iteration outputs"] if emit_slots else [])
    cases, tables, trip = flatten_lanes(interp, cases, tuple(tables), trip, extra)
    cases = count_edges(cases)
    init_decls = [init_decl(name, outer) for name in inits]
    arrays = input_decls(interp, cases, [trip], outer.lookup, first=carried_decls(carried.values(), element))
    program = ir.Program(region_name, "visit", tuple(arrays + init_decls), tuple(tables), cases,
                         dict(interp.constants), trip=trip,
                         labels=constant_labels(interp), finals=tuple(finals), element=element)
    return zero_tables_by_shape(program, outer)

"""The TreeRec recognizer: ``cortex.TreeRec``, where the structure (children [N, K]) and both cases (leaf_body,
internal_body) are explicit."""
from __future__ import annotations

import dataclasses

import numpy as np
from onnx import helper

from ..ir import index as ix
from ..ir import nodes as ir
from .interpreter import ONNX_DTYPES, Interpreter
from .ops_tables import gather_rows
from .region import OuterScope, conjunction, constant_labels, flatten_choices, input_decls
from .values import Array, Choice, Refusal, Row, Sym


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
    interp.shared["element"] = element = _element(outer, node_input_names, leaf_body, internal_body)
    interp.use_array(children)
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
    internal_paths = flatten_choices(interp.run_graph(internal_body, bindings))
    is_leaf = conjunction([ix.cmp("eq", ir.Load(children_name, ir.Iter(), column=k), ix.const(-1))
                            for k in range(num_children)])
    cases = []
    for k, (preds, outs) in enumerate(internal_paths):
        rows = [_row(interp, v, "internal_body output") for v in outs]
        for t, r in zip(tables, rows):
            if tuple(r.shape) != t.inner:
                raise Refusal(f"internal_body state {t.name} has shape {list(r.shape)}, leaf_body {list(t.inner)}")
        cases.append(ir.Case(f"internal{k}", conjunction((ix.bnot(is_leaf),) + tuple(preds)), ir.Iter(),
                             tuple((t.name, r.expr) for t, r in zip(tables, rows))))
    cases.append(ir.Case("leaf", is_leaf, ir.Iter(), tuple((t.name, r.expr) for t, r in zip(tables, leaf_out))))
    # every node input is a kernel input, checked to have N rows, even one no node reads
    arrays = input_decls(interp, cases, [], outer.lookup, also=node_input_names)
    arrays = [dataclasses.replace(d, per_node=True) if d.name in node_input_names else d for d in arrays]
    return ir.Program(region_name, "dag", tuple(arrays), tuple(tables), tuple(cases), dict(interp.constants),
                      rows_from=children_name, labels=constant_labels(interp), element=element)


def _element(outer, node_input_names, *bodies) -> str:
    """The float type the TreeRec computes in: its float node inputs' and its bodies' declared state outputs' (a mix
    is refused: converting either would change the answers)."""
    found = {v.dtype for v in map(outer.lookup, node_input_names) if isinstance(v, Array)}
    found |= {ONNX_DTYPES.get(o.type.tensor_type.elem_type) for body in bodies for o in body.output}
    floats = sorted(found & set(ir.FLOAT_DTYPES))
    if len(floats) > 1:
        raise Refusal("the TreeRec mixes float32 and float64 node inputs or states: Cortex computes a region in one "
                      "float type, and converting either would change the answers",
                      hint="write the whole recursion in one precision")
    return floats[0] if floats else "float32"


def _row(interp, v, what) -> Row:
    if isinstance(v, Choice):
        raise Refusal(f"{what} is chosen by an If on a structure value")
    r = interp.row(v, what)
    return r

"""The frontend and the passes never crash on a model: whatever a recursion's body holds (ill-typed ops, wrong
arities, shuffled inputs, missing nodes, odd attributes), each region either converts to verified IR or is refused
with a reason that names the node. Bodies are mutated from real zoo models and built at random."""
from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from onnx import TensorProto, helper

from cortex.codegen import generator
from cortex.frontend import find_regions
from cortex.passes import optimize
from onnx_ops.zoo import MODELS

OPS = ["Add", "Sub", "Mul", "Div", "MatMul", "Gemm", "Gather", "GatherND", "GatherElements", "ScatterND",
       "ScatterElements", "Concat", "Split", "Slice", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Expand",
       "Where", "Cast", "Sigmoid", "Tanh", "Relu", "Softmax", "ReduceSum", "ReduceMax", "Less", "Equal", "Not",
       "If", "Identity", "Shape", "Size", "ConstantOfShape", "Tile", "Pad", "Range", "Max", "Min", "Clip",
       "LayerNormalization", "TopK", "ArgMax", "Flatten", "Mod", "Abs", "Neg", "Exp", "Log", "Pow", "Einsum"]

_BASES = {}


def _base(name, form):
    key = (name, form)
    if key not in _BASES:
        entry = MODELS[name]
        params = entry.make_params(4, seed=0)
        _BASES[key] = entry.build_loop(params) if form == "loop" else entry.build_treerec(params)
    return _BASES[key]


def _bodies(graph):
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield a.g
                yield from _bodies(a.g)


def _values(graph):
    names = [i.name for i in graph.input] + [i.name for i in graph.initializer]
    for n in graph.node:
        names += [o for o in n.output if o]
    return names


def _mutate(model, data):
    model = copy.deepcopy(model)
    bodies = list(_bodies(model.graph))
    body = data.draw(hs.sampled_from(bodies))
    for _ in range(data.draw(hs.integers(1, 4))):
        if not body.node:
            break
        k = data.draw(hs.integers(0, len(body.node) - 1))
        node = body.node[k]
        kind = data.draw(hs.sampled_from(["op", "input", "drop", "attr", "swap"]))
        if kind == "op":
            node.op_type = data.draw(hs.sampled_from(OPS))
        elif kind == "input" and node.input:
            j = data.draw(hs.integers(0, len(node.input) - 1))
            node.input[j] = data.draw(hs.sampled_from(_values(body) + [""]))
        elif kind == "drop":
            del body.node[k]
        elif kind == "attr" and node.attribute:
            a = node.attribute[data.draw(hs.integers(0, len(node.attribute) - 1))]
            if a.type == onnx.AttributeProto.INT:
                a.i = data.draw(hs.integers(-3, 3))
            elif a.type == onnx.AttributeProto.INTS:
                del a.ints[:]
                a.ints.extend(data.draw(hs.lists(hs.integers(-3, 3), max_size=3)))
        elif kind == "swap" and len(node.input) >= 2:
            node.input[0], node.input[1] = node.input[1], node.input[0]
    return model


def _never_crashes(model):
    for region in find_regions(model):  # must not raise
        if region.program is None:
            assert region.reason, "a refusal without a reason"
            continue
        program = optimize(region.program)
        generator("cpu", program).generate("fuzz")


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=hs.data(), name=hs.sampled_from(sorted(MODELS)), form=hs.sampled_from(["loop", "treerec"]))
def test_mutated_bodies_only_ever_refuse(data, name, form):
    _never_crashes(_mutate(_base(name, form), data))


def _random_body(data):
    """A Loop body of random ops over a state table, a structure array, the iteration number and constants."""
    values = {"i": "int", "h_in": "table", "w": "float", "k1": "int", "axes0": "int"}
    nodes = []
    for n in range(data.draw(hs.integers(1, 10))):
        op = data.draw(hs.sampled_from(OPS[:40]))
        arity = data.draw(hs.integers(1, 3))
        inputs = [data.draw(hs.sampled_from(sorted(values))) for _ in range(arity)]
        out = f"v{n}"
        attrs = {}
        if op in ("Concat", "Gather", "Softmax", "Split", "Flatten"):
            attrs["axis"] = data.draw(hs.integers(-2, 1))
        if op == "Cast":
            attrs["to"] = data.draw(hs.sampled_from([TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL]))
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        values[out] = "any"
    h_out = data.draw(hs.sampled_from(sorted(values)))
    nodes.append(helper.make_node("Identity", [h_out], ["h_out"]))
    nodes.append(helper.make_node("Identity", ["cond_in"], ["cond_out"]))
    body = helper.make_graph(
        nodes, "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_out", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor("w", TensorProto.FLOAT, [4, 4], np.eye(4, dtype=np.float32).reshape(-1)),
         helper.make_tensor("k1", TensorProto.INT64, [], [1]),
         helper.make_tensor("axes0", TensorProto.INT64, [1], [0])])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["L", "", "h0"], ["h"], body=body)], "g",
        [helper.make_tensor_value_info("L", TensorProto.INT64, []),
         helper.make_tensor_value_info("h0", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, [None, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=hs.data())
def test_random_bodies_only_ever_refuse(data):
    _never_crashes(_random_body(data))


def test_an_internal_error_is_a_refusal_naming_the_node(monkeypatch):
    """A bug in an op handler (simulated) becomes a refusal of that region with the node and op, not a crash."""
    from cortex.frontend import interpreter

    def broken(it, node, args, lookup):
        raise KeyError("simulated bug")

    monkeypatch.setitem(interpreter.HANDLERS, "Concat", broken)
    model = _base("treelstm", "loop")
    [region] = find_regions(model)
    assert region.program is None
    assert "internal error KeyError" in region.reason and "(Concat)" in region.reason

"""The frontend paths issue 19 added (Einsum, CumSum, grids with several dynamic leading dimensions, a loop nested in
the recursion's loop) refuse what they cannot prove, naming the node and the reason, and never crash: malformed
attributes, wrong ranks and arities, in hand-built Loop bodies (tests/frontend/test_frontend_robustness.py mutates
zoo models the same way)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cortex.codegen import generator
from cortex.frontend import find_regions
from cortex.passes import optimize

H = 4
VI = helper.make_tensor_value_info


def _tree_loop(op_nodes, inits=(), opset=17):
    """for i in range(L): v = order[i]; h[v] = <op_nodes>(h[v]) -- op_nodes read 'row' [H] and write 'y'."""
    body_nodes = [helper.make_node("Gather", ["order", "i"], ["v"]),
                  helper.make_node("Gather", ["h_in", "v"], ["row"], axis=0),
                  *op_nodes,
                  helper.make_node("Unsqueeze", ["v", "ax0"], ["v1"]),
                  helper.make_node("Unsqueeze", ["v1", "ax0"], ["v2"]),
                  helper.make_node("Unsqueeze", ["y", "ax0"], ["y1"]),
                  helper.make_node("ScatterND", ["h_in", "v2", "y1"], ["h_out"]),
                  helper.make_node("Identity", ["cond_in"], ["cond_out"])]
    body = helper.make_graph(body_nodes, "body",
                             [VI("i", TensorProto.INT64, []), VI("cond_in", TensorProto.BOOL, []),
                              VI("h_in", TensorProto.FLOAT, [None, H])],
                             [VI("cond_out", TensorProto.BOOL, []), VI("h_out", TensorProto.FLOAT, [None, H])],
                             [numpy_helper.from_array(np.array([0], np.int64), "ax0"), *inits])
    graph = helper.make_graph([helper.make_node("Shape", ["order"], ["L1"]),
                               helper.make_node("Squeeze", ["L1"], ["L"]),
                               helper.make_node("Loop", ["L", "", "h0"], ["h"], body=body)], "g",
                              [VI("order", TensorProto.INT64, [None]), VI("h0", TensorProto.FLOAT, [None, H])],
                              [VI("h", TensorProto.FLOAT, [None, H])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def _outcome(model):
    """The one region's refusal reason, or None when it converts (then it also optimizes and generates)."""
    [region] = find_regions(model)
    if region.program is None:
        assert region.reason and "internal error" not in region.reason, region.reason
        return region.reason
    generator("cpu", optimize(region.program)).generate("robustness")
    return None


def _c(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


T = np.linspace(-1, 1, H * H * H, dtype=np.float32).reshape(H, H, H)


def test_the_base_bodies_convert():
    assert _outcome(_tree_loop([helper.make_node("Einsum", ["row", "T", "row"], ["y"], equation="i,kij,j->k")],
                               [_c("T", T)])) is None
    assert _outcome(_tree_loop([helper.make_node("CumSum", ["row", "a0"], ["y"])], [_c("a0", np.int64(0))])) is None


@pytest.mark.parametrize("equation,why", [
    ("i,kij->k", "operand"),  # two terms for three operands
    ("i,kij,j->kk", ""),  # a repeated output label
    ("i,kij,j->z", ""),  # an output label no operand has
    ("ij,kij,j->k", ""),  # a term of the wrong rank
    ("i,k1j,j->k", ""),  # not a letter
    ("i,kij,j->k->k", ""),  # two arrows
    ("", ""),  # empty
    ("i,kij,j->...k", ""),  # an ellipsis in the output only
    ("i,kii,j->k", ""),  # a diagonal of unequal sizes? (sizes are equal: converts or refuses, never crashes)
])
def test_malformed_einsum_equations_refuse_naming_the_node(equation, why):
    reason = _outcome(_tree_loop([helper.make_node("Einsum", ["row", "T", "row"], ["y"], equation=equation)],
                                 [_c("T", T)]))
    if reason is not None:
        assert "Einsum" in reason and "node " in reason
        assert why in reason


def test_einsum_without_an_equation_refuses():
    reason = _outcome(_tree_loop([helper.make_node("Einsum", ["row", "T", "row"], ["y"])], [_c("T", T)]))
    assert reason and "Einsum" in reason


@pytest.mark.parametrize("axis", [np.int64(1), np.int64(-2), np.array([0, 0], np.int64), np.array([[0]], np.int64),
                                  np.float32(0.0)])
def test_cumsum_with_a_bad_axis_refuses_naming_the_node(axis):
    reason = _outcome(_tree_loop([helper.make_node("CumSum", ["row", "ax"], ["y"])], [_c("ax", axis)]))
    assert reason and "CumSum" in reason and "node " in reason


@pytest.mark.parametrize("attrs", [{"exclusive": 2}, {"reverse": -1}, {"exclusive": 1, "reverse": 7}])
def test_cumsum_with_odd_flags_refuses_or_converts_but_never_crashes(attrs):
    reason = _outcome(_tree_loop([helper.make_node("CumSum", ["row", "a0"], ["y"], **attrs)],
                                 [_c("a0", np.int64(0))]))
    assert reason is None or "CumSum" in reason


def test_cumsum_without_an_axis_refuses():
    reason = _outcome(_tree_loop([helper.make_node("CumSum", ["row"], ["y"])]))
    assert reason and "CumSum" in reason


def _grid_loop(inner_nodes, inner_inputs=None, trip="C", carried_extra=()):
    """for i in range(R): for j in range(C): h[i, j] = tanh(x[i, j]) -- a nested Loop over a [R, C, H] table."""
    inner = helper.make_graph(
        [helper.make_node("Unsqueeze", ["i_o", "ax0"], ["i1"]), helper.make_node("Unsqueeze", ["j", "ax0"], ["j1"]),
         helper.make_node("Concat", ["i1", "j1"], ["ij"], axis=0),
         helper.make_node("GatherND", ["x", "ij"], ["xr"]),
         *inner_nodes,
         helper.make_node("Unsqueeze", ["ij", "ax0"], ["ij2"]),
         helper.make_node("Unsqueeze", ["y", "ax0"], ["y1"]),
         helper.make_node("ScatterND", ["hj", "ij2", "y1"], ["hj_out"]),
         helper.make_node("Identity", ["cj"], ["cj_out"])], "inner",
        inner_inputs or [VI("j", TensorProto.INT64, []), VI("cj", TensorProto.BOOL, []),
                         VI("hj", TensorProto.FLOAT, [None, None, H])],
        [VI("cj_out", TensorProto.BOOL, []), VI("hj_out", TensorProto.FLOAT, [None, None, H])],
        [_c("ax0", np.array([0], np.int64))])
    outer = helper.make_graph(
        [helper.make_node("Loop", [trip, "", "hi", *carried_extra], ["hi_out"], body=inner),
         helper.make_node("Identity", ["ci"], ["ci_out"])], "outer",
        [VI("i_o", TensorProto.INT64, []), VI("ci", TensorProto.BOOL, []),
         VI("hi", TensorProto.FLOAT, [None, None, H])],
        [VI("ci_out", TensorProto.BOOL, []), VI("hi_out", TensorProto.FLOAT, [None, None, H])])
    graph = helper.make_graph(
        [helper.make_node("Shape", ["x"], ["shape"]),
         helper.make_node("Gather", ["shape", "k0"], ["R"]), helper.make_node("Gather", ["shape", "k1"], ["C"]),
         helper.make_node("Loop", ["R", "", "h0"], ["h"], body=outer)], "g",
        [VI("x", TensorProto.FLOAT, [None, None, H]), VI("h0", TensorProto.FLOAT, [None, None, H])],
        [VI("h", TensorProto.FLOAT, [None, None, H])],
        [_c("k0", np.int64(0)), _c("k1", np.int64(1))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def test_the_base_grid_converts():
    assert _outcome(_grid_loop([helper.make_node("Tanh", ["xr"], ["y"])])) is None


def test_a_grid_inner_loop_whose_count_is_the_outer_index_refuses_with_the_rewrite():
    reason = _outcome(_grid_loop([helper.make_node("Tanh", ["xr"], ["y"])], trip="i_o"))
    assert reason and "node " in reason and "Loop" in reason


def test_a_grid_inner_loop_with_a_missing_body_input_refuses():
    inputs = [VI("j", TensorProto.INT64, []), VI("cj", TensorProto.BOOL, [])]  # no carried table
    model = _grid_loop([helper.make_node("Tanh", ["xr"], ["y"])], inner_inputs=inputs)
    [region] = find_regions(model)
    assert region.program is None and region.reason


def test_a_grid_inner_loop_carrying_a_float_that_changes_refuses():
    inputs = [VI("j", TensorProto.INT64, []), VI("cj", TensorProto.BOOL, []),
              VI("hj", TensorProto.FLOAT, [None, None, H])]
    model = _grid_loop([helper.make_node("Tanh", ["xr"], ["y"])], inner_inputs=inputs, carried_extra=["k0"])
    [region] = find_regions(model)  # the body has fewer inputs than the Loop carries: refused, not a crash
    assert region.program is None and region.reason


@pytest.mark.parametrize("op", ["Einsum", "CumSum", "Gather", "GatherND", "Reshape", "Flatten", "Size", "Shape"])
def test_ops_on_the_whole_grid_table_refuse_or_convert_never_crash(op):
    """The op applied to the grid table itself (a wrong rank for most) inside the inner loop."""
    extra = {"Einsum": dict(equation="ijk->k")}.get(op, {})
    inputs = {"Einsum": ["hj"], "CumSum": ["hj", "k0"], "Gather": ["hj", "k0"], "GatherND": ["hj", "ij"],
              "Reshape": ["hj", "shape4"], "Flatten": ["hj"], "Size": ["hj"], "Shape": ["hj"]}[op]
    nodes = [helper.make_node(op, inputs, ["z"], **extra),
             helper.make_node("Cast", ["z"], ["zf"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["zf"], ["s"], keepdims=0),
             helper.make_node("Tanh", ["xr"], ["t"]), helper.make_node("Add", ["t", "s"], ["y"])]
    model = _grid_loop(nodes)
    model.graph.initializer.append(_c("shape4", np.array([-1, H], np.int64)))
    _outcome(model)

"""The passes as IR -> IR functions, each checked alone on IR that the frontend raised from zoo models."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cortex.frontend import find_regions
from cortex.ir import IRError, format_program, nodes as ir, verify
from cortex.passes import PIPELINE, optimize
from cortex.passes.rewrite import (fold_constant_rows, fuse_bias, hoist_input_products, lift_member_products,
                                   merge_added_products, simplify, split_concat_matmul)
import ir_programs
from onnx_ops.zoo import MODELS


def _program(name, form="loop", hidden=8):
    entry = MODELS[name]
    params = entry.make_params(hidden, seed=0)
    model = entry.build_loop(params) if form == "loop" else entry.build_treerec(params)
    [region] = find_regions(model)
    assert region.program is not None, region.reason
    return region.program


def _nodes(program, case_index=None):
    cases = program.cases if case_index is None else [program.cases[case_index]]
    return [n for c in cases for n in ir.walk_rows([x for _, x in c.writes])]


def test_pipeline_is_listed_in_one_place():
    assert [name for name, _ in PIPELINE] == ["simplify", "lift-member-products", "split-select-cases",
                                               "fold-constant-rows", "split-concat-matmul", "hoist-input-products",
                                               "merge-added-products", "fuse-bias", "simplify"]


def test_fold_constant_rows_turns_treelstm_leaves_into_lookups():
    program = simplify(_program("treelstm"))
    leaf = next(k for k, c in enumerate(program.cases) if not any(isinstance(n, ir.ChildState) for n in _nodes(program, k)))
    assert any(isinstance(n, ir.MatMul) for n in _nodes(program, leaf))
    folded = verify(fold_constant_rows(program))
    assert all(isinstance(n, ir.ConstRow) for n in _nodes(folded, leaf))
    table = next(n for n in _nodes(folded, leaf) if isinstance(n, ir.ConstRow))
    assert folded.constants[table.const].shape == (MODELS["treelstm"].make_params(8).embedding.shape[0], 8)


def test_split_and_hoist_take_pixel_products_out_of_the_recursion():
    program = simplify(_program("dagrnn"))
    assert any(isinstance(n, ir.MatMul) and isinstance(n.x, ir.Concat) for n in _nodes(program))
    hoisted = verify(hoist_input_products(verify(split_concat_matmul(program))))
    assert any(isinstance(n, ir.InputProjection) for n in _nodes(hoisted))
    assert not any(isinstance(n, ir.MatMul) and isinstance(n.x, ir.InputRow) for n in _nodes(hoisted))


def test_fuse_bias_moves_the_add_into_the_product():
    program = verify(fuse_bias(fold_constant_rows(simplify(_program("treernn")))))
    products = [n for n in _nodes(program) if isinstance(n, ir.MatMul)]
    assert products and all(p.bias is not None for p in products)
    assert not any(isinstance(n, ir.ConstVec) for n in _nodes(program))


def test_simplify_distributes_elementwise_math_over_concat():
    program = optimize(_program("treegru", form="treerec"))
    for node in _nodes(program):
        if isinstance(node, (ir.Unary, ir.Binary)):
            assert not any(isinstance(c, ir.Concat) for c in ir.row_children(node))


def test_passes_keep_the_program_verified_and_printable():
    for name in MODELS:
        text = format_program(optimize(_program(name)))
        assert text.startswith("recursion ") and "case " in text


def test_verifier_rejects_inconsistent_ir():
    program = _program("treefc")
    case = program.cases[0]
    table, expr = case.writes[0]
    bad_width = dataclasses.replace(case, writes=((table, ir.Scalar(1.0)),))
    with pytest.raises(IRError, match="width"):
        verify(dataclasses.replace(program, cases=(bad_width,) + program.cases[1:]))
    weight = next(n for n in _nodes(program) if isinstance(n, ir.MatMul)).weight
    broken = dict(program.constants)
    broken[weight] = np.zeros((3, 3), dtype=np.float32)
    with pytest.raises(IRError, match="shape"):
        verify(dataclasses.replace(program, constants=broken))


def test_merge_added_products_makes_one_deeper_gemm():
    program = hoist_input_products(split_concat_matmul(fold_constant_rows(simplify(_program("dagrnn", "treerec")))))
    internal = next(k for k, c in enumerate(program.cases) if any(isinstance(n, ir.ChildState) for n in _nodes(program, k)))
    before = [n for n in _nodes(program, internal) if isinstance(n, ir.MatMul)]
    merged = verify(merge_added_products(program))
    after = [n for n in _nodes(merged, internal) if isinstance(n, ir.MatMul)]
    assert len(before) >= 2 and len(after) == 1 and after[0].x.width == sum(m.x.width for m in before)


# ---- each simplification rule alone (cortex/passes/rules.py) -----------------------------------------------------

from cortex.passes.rules import SIMPLIFY, apply_rules  # noqa: E402

H = ir.ChildState("state0", ir.Load("left", ir.Iter()), False, 8)
G = ir.ChildState("state1", ir.Load("right", ir.Iter()), False, 4)


def _rule(name):
    return next(r for r in SIMPLIFY if r.name == name)


def _fires(name, e):
    """What one rule alone makes of e (`again` is the identity: the rule's own step only)."""
    rule = _rule(name)
    assert type(e) in rule.kinds
    return rule.apply(e, lambda x: x)


@pytest.mark.parametrize("name, before, after", [
    ("drop-identity", ir.unary("identity", H), H),
    ("slice-of-slice", ir.Slice(ir.Slice(H, 2, 5), 1, 3), ir.Slice(H, 3, 3)),
    ("slice-of-take", ir.Slice(ir.Take(H, (7, 6, 5, 4), 4), 1, 2), ir.take(H, (6, 5))),
    ("take-of-take", ir.Take(ir.Take(H, (7, 6, 5, 4), 4), (3, 0), 2), ir.take(H, (4, 7))),
    ("take-of-slice", ir.Take(ir.Slice(H, 2, 5), (4, 0, 2), 3), ir.take(H, (6, 2, 4))),
    ("take-of-concat", ir.Take(ir.Concat((H, G), 12), (11, 8), 2), ir.take(G, (3, 0))),
    ("take-below-elementwise", ir.Take(ir.unary("tanh", H), (1, 0), 2), ir.unary("tanh", ir.take(H, (1, 0)))),
    ("slice-of-concat", ir.Slice(ir.Concat((H, G), 12), 9, 2), ir.Slice(G, 1, 2)),
    ("slice-below-elementwise", ir.Slice(ir.binary("mul", H, ir.Scalar(2.0)), 2, 3),
     ir.binary("mul", ir.Slice(H, 2, 3), ir.Scalar(2.0))),
    ("elementwise-over-concat", ir.unary("tanh", ir.Concat((H, G), 12)),
     ir.concat([ir.Slice(ir.unary("tanh", ir.Concat((H, G), 12)), 0, 8),
                ir.Slice(ir.unary("tanh", ir.Concat((H, G), 12)), 8, 4)])),
])
def test_each_simplification_rule_alone(name, before, after):
    assert _fires(name, before) == after


@pytest.mark.parametrize("name, untouched", [
    ("drop-identity", ir.unary("tanh", H)),
    ("slice-of-slice", ir.Slice(H, 1, 3)),
    ("take-of-concat", ir.Take(ir.Concat((H, G), 12), (7, 8), 2)),  # across two parts: no single part to take from
    ("take-below-elementwise", ir.Take(ir.unary("tanh", H), (1, 1), 2)),  # a repeated index: math would repeat
    ("slice-of-concat", ir.Slice(ir.Concat((H, G), 12), 7, 2)),
    ("elementwise-over-concat", ir.unary("tanh", H)),
])
def test_each_rule_leaves_what_it_does_not_match(name, untouched):
    assert _fires(name, untouched) is None


def test_the_driver_applies_the_first_rule_of_the_kind_and_simplifies_again():
    again = apply_rules(SIMPLIFY)
    table = ir.ConstRow("t", ir.IConst(0), 8)
    constants = {"t": np.arange(16, dtype=np.float32).reshape(2, 8)}

    def values(e):
        return e.evaluate(values, constants)

    nested = ir.Slice(ir.Take(ir.Slice(table, 1, 6), (5, 4, 3, 2), 4), 1, 2)  # slice of take of slice
    out = ir.transform(again)(nested)  # bottom-up, as simplify runs it
    assert not any(isinstance(n, (ir.Take, ir.Slice)) and isinstance(n.x, (ir.Take, ir.Slice))
                   for n in ir.walk_rows([out]))  # no rearrangement of a rearrangement is left
    np.testing.assert_array_equal(values(out), values(nested))
    np.testing.assert_array_equal(values(out)[0], [5, 4])
    assert again(H) is H


# ---- every node kind knows itself ---------------------------------------------------------------------------------

def test_every_row_node_kind_prints_verifies_and_says_what_the_plan_needs():
    from cortex.codegen import cstyle
    from cortex.ir import schema

    kinds = [c for c in schema.ir_classes().values() if issubclass(c, ir.RExpr)]
    for kind in kinds:
        assert kind.text is not ir.RExpr.text, f"{kind.__name__} has no text form (printer)"
        assert kind.verify is not ir.Expr.verify, f"{kind.__name__} has no verify"
        rendered = kind in cstyle.ADDRESSING or kind in cstyle.VALUES
        assert rendered or kind.MATERIALIZED, f"{kind.__name__} has no rendering and no step"
        if kind.MATERIALIZED:
            from cortex.codegen.cpp import CpuEmitter
            from cortex.codegen.cuda import CudaEmitter
            for emitter in (CpuEmitter, CudaEmitter):
                assert hasattr(emitter, f"emit_{kind.STEP}"), f"{emitter.__name__} cannot emit {kind.STEP}"
    for kind in [c for c in schema.ir_classes().values() if issubclass(c, (ir.IExpr, ir.BExpr))]:
        assert "render" in vars(kind) and "verify" in vars(kind), kind.__name__


def test_lift_member_products_moves_a_members_product_to_its_writer():
    lifted = verify(lift_member_products(ir_programs.child_sum(zeros=True)))
    [extra] = [t for t in lifted.tables if t.name != "state0"]
    assert extra.init is None and extra.kind == "state" and extra.width == 4
    [case] = lifted.cases
    written = dict(case.writes)
    assert isinstance(written[extra.name], ir.MatMul) and written[extra.name].weight == "wf"
    assert written[extra.name].x == written["state0"], "the writer multiplies the row it writes"
    members = [n for n in ir.walk_rows([written["state0"]]) if isinstance(getattr(n, "index", None), ir.Member)]
    assert {n.table for n in members} == {"state0", extra.name}
    assert not any(isinstance(n, ir.MatMul) and ir.member_dependent(n) for n in ir.walk_rows([written["state0"]]))


def test_a_members_product_over_a_table_from_an_input_stays_and_is_refused():
    program = ir_programs.child_sum(zeros=False)
    assert lift_member_products(program) == program
    from cortex.codegen import CodegenError
    from cortex.codegen.plan import plan_kernel
    from cortex.codegen.targets import TARGETS
    with pytest.raises(CodegenError, match="do not start at zeros"):
        plan_kernel(optimize(program), TARGETS["cpu"].configure())

"""The passes as IR -> IR functions, each checked alone on IR that the frontend raised from zoo models."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cortex.frontend import find_regions
from cortex.ir import IRError, format_program, nodes as ir, verify
from cortex.passes import PIPELINE, optimize
from cortex.passes.rewrite import (fold_constant_rows, fuse_bias, hoist_input_products, merge_added_products,
                                   simplify, split_concat_matmul)
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
    assert [name for name, _ in PIPELINE] == ["simplify", "split-select-cases", "fold-constant-rows", "split-concat-matmul",
                                               "hoist-input-products", "merge-added-products", "fuse-bias", "simplify"]


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

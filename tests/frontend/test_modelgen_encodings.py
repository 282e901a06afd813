"""Unit tests of the generator's encodings of issue 19 (onnx_ops.modelgen: NEW_VALUES): how a structure encodes a
child set (padded, a parent array, CSR, an edge list; selected by a mask, a mask matmul or the rows themselves),
softmax attention, the table layouts (flat, batched, 1-D, rank-3), float64, and a chain's carried state.

The generator itself, not Cortex: every new value generates source that runs in eager PyTorch and gives the same
answer as the plain encoding on the same structures (where their semantics agree: a padded max counts a missing
child as a zero row, a set's max does not), and the real exporters export it where UNEXPORTABLE does not say
otherwise (the export loads in ONNX Runtime and agrees with eager PyTorch). The CI sample
(test_modelgen.py) never draws these values; ``tools/fuzz_import.py --explore-new`` measures them.
"""
from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import pytest

from onnx_ops.modelgen import (CHOICES, MEANINGLESS, NEW_CHOICES, NEW_VALUES, UNEXPORTABLE, UNWRITTEN, Spec,
                               draw_many, irrelevant, write_source)
from onnx_ops.modelgen.spec import draw

TOL = 1e-4


def _seed(*parts) -> int:
    """A stable seed from names (Python's string hash changes from run to run)."""
    return zlib.crc32(repr(parts).encode())


# ------------------------------------------------------------------------------------------------ draws
def test_plain_draws_have_no_new_values():
    """Without ``new`` every new choice keeps its plain value (or "-"), so the CI sample is what it was."""
    for s in draw_many(1500, seed=21, explore=True):
        d = s.to_json()
        assert d["agg"] != "attn", s.short()
        assert d["encoding"] in ("padded", "-") and d["select"] == "-", s.short()
        assert d["table"] in ("flat", "-") and d["precision"] == "float32", s.short()
        assert d["carry"] in ("table", "-"), s.short()


def test_new_draws_reach_every_value():
    seen = {k: set() for k in CHOICES}
    for s in draw_many(3000, seed=22, explore=True, new=True):
        for k, v in s.choices().items():
            seen[k].add(v)
    for k, values in CHOICES.items():
        missing = set(values) - seen[k]
        assert not missing, f"choice {k}: values never drawn with new=True: {sorted(map(str, missing))}"


def test_new_draws_respect_the_rules():
    for s in draw_many(1500, seed=23, new=True):
        d = s.to_json()
        for rules in (MEANINGLESS, UNWRITTEN, UNEXPORTABLE):
            assert not [r for p, r in rules if p(d)], s.short()
        gone = irrelevant(d)
        assert all(d[k] == "-" for k in gone), (s.short(), gone)


def test_specs_written_before_the_new_choices_load_with_plain_values():
    old = {k: v for k, v in draw_many(1, seed=24)[0].to_json().items() if k not in NEW_CHOICES}
    s = Spec.from_json(old)
    assert s.encoding in ("padded", "-") and s.select == "-" and s.table in ("flat", "-")
    assert s.precision == "float32" and s.carry in ("table", "-")
    assert s == draw_many(1, seed=24)[0]


def test_every_new_source_compiles_and_its_inputs_match_the_signature():
    from onnx_ops.modelgen.inputs import cases, export_example

    for s in draw_many(400, seed=25, explore=True, new=True):
        compile(write_source(s).text, f"<{s.short()}>", "exec")
    for s in draw_many(40, seed=26, new=True):
        src = write_source(s)
        for name, feeds in cases(s).items():
            assert list(feeds) == [n for n, _ in src.inputs], (name, s.short())
        ex = export_example(s)
        assert set(src.dims) >= set(ex), s.short()


# ------------------------------------------------------------------------------------------------ eager
def _variant(base: Spec, **changes) -> Spec | None:
    """``base`` with some choices changed (irrelevant ones set to "-"); None where the result is rejected as
    meaningless or unwritten."""
    d = {**base.to_json(), **changes}
    d.update({k: "-" for k in irrelevant(d)})
    if any(p(d) for p, _ in MEANINGLESS + UNWRITTEN):
        return None
    return Spec.from_json(d)


def _eager(spec: Spec, tmp: Path, arrays: dict | None = None, names=("single", "forest", "odd")) -> dict:
    """Case name -> the model's outputs (numpy) in eager PyTorch, on the spec's structures (or ``arrays``)."""
    import torch

    from onnx_ops.modelgen.harness import _as_list, _tensors, build
    from onnx_ops.modelgen.inputs import case_arrays, feeds_for

    torch._dynamo.reset()
    model, _ = build(spec, tmp / spec.key())
    out = {}
    for name, (arr, order) in (arrays or case_arrays(spec)).items():
        if name not in names:
            continue
        with torch.no_grad():
            out[name] = [t.detach().numpy() for t in _as_list(model(*_tensors(feeds_for(spec, arr, order))))]
    return out


def _close(a, b, what):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, f"{what}: shape {a.shape} vs {b.shape}"
    assert np.isfinite(a).all() and np.isfinite(b).all(), f"{what}: not finite"
    err = np.abs(a - b).max(initial=0.0) / max(1.0, np.abs(b).max(initial=0.0))
    assert err <= TOL, f"{what}: scaled max abs error {err}"


def _base(seed: int, accept=lambda s: True, **fixed) -> Spec:
    """A spec drawn with ``new`` (fixed choices pinned) that ``accept`` takes."""
    rng = np.random.default_rng(seed)
    for _ in range(500):
        s = draw(rng, seed=int(rng.integers(1, 10**6)), new=True, explore=True, **fixed)
        if accept(s) and s.dtype != "int32":
            return s
    raise AssertionError(f"no base spec for {fixed}")


def _padded_agrees(structure: str, agg: str) -> bool:
    """Whether padded children aggregate like a child set: a missing child reads as a zero row, so a padded max
    (n-ary holes, grid borders) and a padded binary mean (grid borders, halved) differ from the set's."""
    return agg in ("sum", "attn") or (agg == "mean" and structure != "grid") or (agg == "max" and structure == "binary")


#: (structure, agg) pairs with at least two forms that must agree (a grid's max has one: only a mask over an edge
#: list takes it; exact sets of a uniform cell are empty at the corner, a parent array cannot hold a DAG, a padded
#: max counts missing neighbours as zeros)
CHILD_SETS = [("binary", "sum"), ("binary", "max"), ("binary", "attn"), ("nary", "mean"), ("nary", "max"),
              ("nary", "attn"), ("grid", "sum"), ("grid", "mean"), ("grid", "attn")]


@pytest.mark.parametrize("structure,agg", CHILD_SETS, ids=[f"{s}-{a}" for s, a in CHILD_SETS])
def test_child_set_encodings_give_the_padded_answer(structure, agg, tmp_path):
    """One model, one structure, every encoding of its child sets: the same table (single tree, forest, shuffled
    visit order)."""
    pytest.importorskip("torch")
    ok_leaf = ("-", "is_leaf", "num_children", "where", "mask", "none")
    base = _base(_seed(structure, agg), lambda s: s.family != "mvrnn" and s.leaf_test in ok_leaf and
                 s.gather in ("stacked", "index_select", "-"),
                 structure=structure, agg=agg, encoding="padded", table="flat", precision="float32", head="none",
                 exporter="torchscript")
    forms = [("padded", "-"), ("csr", "-")] + [(e, s) for e in ("parent", "edges") for s in CHOICES["select"]]
    specs = {f"{e}/{s}": v for e, s in forms if (v := _variant(base, encoding=e, select=s)) is not None}
    assert len(specs) >= 3 or (len(specs) == 2 and _padded_agrees(structure, agg)), list(specs)
    outs = {name: _eager(s, tmp_path) for name, s in specs.items()}
    ref = "padded/-" if _padded_agrees(structure, agg) else next(k for k in outs if k != "padded/-")
    for name, out in outs.items():
        if name == "padded/-" and ref != name:
            continue
        for case, rows in out.items():
            for i, (a, b) in enumerate(zip(rows, outs[ref][case])):
                _close(a, b, f"{name} vs {ref}, {case}, output {i} [{specs[name].short()}]")


@pytest.mark.parametrize("family", ["treelstm", "childsum", "treegru", "treernn", "treefc", "mvrnn", "dagrnn",
                                    "chainlstm", "chaingru"])
def test_a_batched_table_holds_the_flat_rows(family, tmp_path):
    """[B, N, H] tables (every tree renumbered in its visit order, one loop over positions) hold each node's row
    of the flat [N, H] table."""
    pytest.importorskip("torch")
    from onnx_ops.modelgen.inputs import case_arrays, node_rows

    exporter = "dynamo_scan" if family in ("treegru", "chainlstm") else "torchscript"
    base = _base(_seed(family, 'batched'), lambda s: _variant(s, table="batched") is not None, family=family,
                 table="flat", precision="float32", head="none", exporter=exporter, read="slice",
                 carry="table")
    batched = _variant(base, table="batched")
    names = ("single", "forest")
    flat, wide = _eager(base, tmp_path, names=names), _eager(batched, tmp_path, names=names)
    arrays = case_arrays(base)
    for case in names:
        for i, (a, b) in enumerate(zip(wide[case], flat[case])):
            _close(node_rows(batched, arrays[case][0], a), b, f"batched vs flat, {case}, output {i} "
                                                              f"[{batched.short()}]")


@pytest.mark.parametrize("family", ["treefc", "treernn", "dagrnn"])
def test_a_vector_table_holds_the_one_column_rows(family, tmp_path):
    pytest.importorskip("torch")
    base = _base(_seed(family, 'vector'), lambda s: _variant(s, table="vector") is not None, family=family,
                 table="flat", precision="float32", head="none", exporter="torchscript")
    flat = Spec.from_json({**base.to_json(), "hidden": 1})
    vec = _variant(base, table="vector")
    a, b = _eager(vec, tmp_path), _eager(flat, tmp_path)
    for case in a:
        _close(a[case][0], b[case][0][..., 0], f"vector vs flat H=1, {case} [{vec.short()}]")


@pytest.mark.parametrize("family", ["treelstm", "childsum", "chainlstm"])
def test_a_rank3_table_stacks_h_and_c(family, tmp_path):
    pytest.importorskip("torch")
    base = _base(_seed(family, 'rank3'), lambda s: _variant(s, table="rank3") is not None, family=family,
                 table="flat", precision="float32", head="none", exporter="torchscript",
                 carry="table")
    (hc,), (h, c) = _eager(_variant(base, table="rank3"), tmp_path)["forest"], _eager(base, tmp_path)["forest"]
    _close(hc[..., 0, :], h, "rank3 h vs flat h")
    _close(hc[..., 1, :], c, "rank3 c vs flat c")


@pytest.mark.parametrize("family", ["treelstm", "treegru", "mvrnn", "chaingru", "dagrnn"])
def test_float64_computes_the_float32_answer(family, tmp_path):
    pytest.importorskip("torch")
    base = _base(_seed(family, 'float64'), lambda s: _variant(s, precision="float64") is not None, family=family,
                 precision="float32", exporter="torchscript")
    a, b = _eager(_variant(base, precision="float64"), tmp_path), _eager(base, tmp_path)
    for case in a:
        assert all(x.dtype == np.float64 for x in a[case])
        for x, y in zip(a[case], b[case]):
            _close(x, y, f"float64 vs float32, {case} [{base.short()}]")


CARRIES = [(f, c) for f in ("chainlstm", "chaingru", "childsum", "treefc")
           for c in ("vector", "list", "running_max", "running_sum")]


@pytest.mark.parametrize("family,carry", CARRIES, ids=[f"{f}-{c}" for f, c in CARRIES])
def test_a_carried_chain_state_is_the_table_read_in_visit_order(family, carry, tmp_path):
    """One sequence: the carried vector is the table's row of the last step, the list its rows in visit order, a
    running max / sum their reduction."""
    pytest.importorskip("torch")
    from onnx_ops.modelgen.inputs import case_arrays

    exporter = "dynamo_while" if carry == "running_max" else ("dynamo_scan" if carry == "list" else "torchscript")
    carried = _base(_seed(family, carry), lambda s: _variant(s, carry="table") is not None, family=family,
                    structure="chain", carry=carry, head="none", precision="float32", exporter=exporter,
                    read="slice")
    table = _variant(carried, carry="table", missing="mask", write="index_copy_", table="flat")
    arrays = {k: v for k, v in case_arrays(carried).items() if k != "odd"}  # one sequence, valid order
    got, want = _eager(carried, tmp_path, arrays), _eager(table, tmp_path, arrays)
    for case, (arr, _) in arrays.items():
        rows = want[case][0][np.asarray(arr["order"])]  # h in visit order
        out = got[case][0].reshape(-1, rows.shape[-1])
        if carry == "list" and exporter == "dynamo_scan" and carried.loop == "reverse":
            out = out[::-1]  # scan(reverse=True) stacks each step's row at its place in the order input
        expect = {"vector": rows[-1:], "list": rows, "running_max": rows.max(0, keepdims=True),
                  "running_sum": rows.sum(0, keepdims=True)}[carry]
        _close(out, expect, f"{carry} vs table, {case} [{carried.short()}]")


# ------------------------------------------------------------------------------------------------ exporters
NEW = [(k, v) for k, vals in NEW_VALUES.items() for v in vals]


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo_while", "dynamo_scan"])
@pytest.mark.parametrize("choice,value", NEW, ids=[f"{k}={v}" for k, v in NEW])
def test_the_real_exporters_export_every_new_value(choice, value, exporter, tmp_path_factory):
    """A spec with the value, drawn where UNEXPORTABLE allows it: the real exporter exports it, ONNX Runtime loads
    it and agrees with eager PyTorch."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    import torch

    from onnx_ops.modelgen.harness import _as_list, _err, _ort_session, _tensors, build, export
    from onnx_ops.modelgen.inputs import cases

    rng = np.random.default_rng(_seed(choice, value, exporter))
    for _ in range(50):
        try:
            spec = draw(rng, seed=int(rng.integers(1, 10**6)), new=True, **{choice: value, "exporter": exporter})
        except ValueError as e:
            pytest.skip(f"no exportable spec with {choice}={value} for {exporter}: {e}")
        # not the ONNX Runtime defect docs/modelgen.md describes (a TorchScript If returning hoisted zeros)
        if not (spec.missing == "node_if_zeros" and exporter == "torchscript"):
            break
    cache = Path(os.environ.get("CORTEX_MODELGEN_CACHE") or tmp_path_factory.mktemp("modelgen-new"))
    torch._dynamo.reset()
    ex = export(spec, cache)
    assert "error" not in ex, f"{spec.short()}: {ex.get('error')}"
    session = _ort_session(ex["path"])
    model, _ = build(spec, Path(ex["source"]).parent)
    for name, feeds in cases(spec).items():
        with torch.no_grad():
            want = [t.numpy() for t in _as_list(model(*_tensors(feeds)))]
        err = _err(session.run(None, feeds), want)
        assert err <= TOL, f"{name}: ONNX Runtime vs eager scaled max abs error {err} [{spec.short()}]"

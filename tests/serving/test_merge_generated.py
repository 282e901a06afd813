"""Merging models nobody wrote for the merge: recursive PyTorch models drawn by onnx_ops.modelgen, exported with the
real exporters and converted. Each is served with its cases and with copies whose structure arrays were corrupted,
all in one forest: every answer is the bits (or the error) of the request's own run, and the good requests merge.
The forms here were refused (or ran every request alone) before the analysis learned them: a visit walked from its
end (`order[L - 1 - p]`, over an edge list cast to int64), TorchScript's range guards on order[p] and on the node ids
it writes, a scan over `torch.flip(order)` with the roots read by GatherND, and reads at clamp(child, 0) that a
torch.where drops where the child is missing; and a head that reads the request's table whole (`h.mean(0)` of a 1-D
table: a vectorized mean, computed per request on its rows aligned as ONNX Runtime allocates them).
(`python tools/fuzz_import.py --explore-new --merge` measures the rest.)"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import cortex
from cortex.serving import plan_for
from cortex.serving.forest import ForestStats, run_forest, tail_sessions

pytest.importorskip("torch")


def _spec(choices: str) -> dict:
    """A generated model's spec JSON from its choices other than "-" ("key=value ..."; the rest are "-")."""
    from dataclasses import fields

    from onnx_ops.modelgen.spec import Spec
    values = {f.name: "-" for f in fields(Spec) if f.name != "rejected"}
    for item in choices.split():
        key, value = item.split("=")
        values[key] = {"True": True, "False": False}.get(value, int(value) if value.isdigit() else value)
    return values


TAIL = "a mean over a 1-D table after the recursion, per request after the forest (dynamo scan, parent array)"
EMPTINESS = "a test whether the parent array is empty, len(parent) == 0 (dynamo scan, .any() of a child mask)"
SPECS = {  # each spec's choices other than "-" (onnx_ops.modelgen: not relevant to the model)
    "backward walk, edge list cast (dynamo while_loop)": _spec(
        "family=dagrnn mix=cat bias=False agg=mean write=index_put_ read=slice leaf_input=embedding act=sigmoid "
        "act_form=module head=none dtype=int32_long loop=reverse exporter=dynamo_while hidden=5 embed=8 "
        "structure=grid encoding=edges select=mask table=flat precision=float64 seed=32"),
    "range guards (TorchScript counter loop)": _spec(
        "family=treegru gates=fused_split mix=cat bias=True agg=mean write=cat read=slice leaf_test=none "
        "leaf_input=features act=relu act_form=functional head=log_softmax dtype=int32_long loop=counter "
        "exporter=torchscript hidden=12 embed=5 structure=binary encoding=parent select=matmul table=flat "
        "precision=float64 seed=9"),
    "scan over the flipped order, roots read by GatherND (dynamo scan)": _spec(
        "family=treefc bias=True agg=attn gather=index_select write=index_put read=slice leaf_test=is_leaf "
        "leaf_input=features head=root_linear layout=children dtype=int32_long loop=reverse exporter=dynamo_scan "
        "hidden=11 embed=7 structure=binary encoding=padded table=flat precision=float32 seed=27"),
    "clamped reads a torch.where drops (dynamo scan)": _spec(
        "family=dagrnn mix=cat bias=False agg=attn gather=index_select write=index_put read=slice missing=where "
        "leaf_input=constant act=relu act_form=module head=none layout=children dtype=int32_long loop=forward "
        "exporter=dynamo_scan embed=9 structure=grid encoding=padded table=vector precision=float32 seed=41"),
    "CSR child counts offsets[v + 1] - offsets[v], a table of len(offsets) - 1 rows (dynamo while_loop)": _spec(
        "family=treelstm gates=fused_slice bias=False agg=mean gather=index_select write=index_put read=slice "
        "leaf_test=mask leaf_input=constant act=gelu act_form=functional head=none dtype=int64 loop=reverse "
        "exporter=dynamo_while hidden=13 embed=4 structure=binary encoding=csr table=rank3 precision=float32 "
        "seed=11000080"),
    "a trip count the graph computes, range(L - 1, -1, -1) (TorchScript)": _spec(
        "family=treefc bias=True agg=mean gather=index_select write=scatter read=scalar leaf_test=num_children "
        "leaf_input=embedding head=root_linear layout=children dtype=int64 loop=reverse exporter=torchscript "
        "hidden=6 embed=7 structure=binary encoding=padded table=flat precision=float32 seed=11000096"),
    EMPTINESS: _spec(
        "family=treelstm gates=fused_slice mix=cat bias=False agg=max write=assign read=slice leaf_test=none "
        "leaf_input=constant act=gelu act_form=module head=log_softmax dtype=int32_long loop=reverse "
        "exporter=dynamo_scan hidden=14 embed=9 structure=binary encoding=parent select=mask table=rank3 "
        "precision=float32 seed=11000140"),
    TAIL: _spec(
        "family=treernn bias=True agg=attn write=index_copy_ read=slice leaf_test=is_leaf leaf_input=embedding "
        "act=hardtanh act_form=module head=mean dtype=int32_long loop=forward exporter=dynamo_scan embed=8 "
        "structure=binary encoding=parent select=mask table=vector precision=float64 seed=11000161"),
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return Path(os.environ.get("CORTEX_MODELGEN_CACHE") or tmp_path_factory.mktemp("modelgen-cache"))


def _corrupted(plan, request):
    """Copies of `request` with one node id of a structure array moved past the request's nodes, or to -2."""
    out = []
    for i in plan.inputs:
        if not i.node_ids or request[i.name].size == 0:
            continue
        nodes = max(request[j.name].shape[j.axis] for j in plan.inputs if j.unit == plan.node_unit)
        for value in (nodes + 3, -2):
            bad = request[i.name].copy()
            bad.reshape(-1)[bad.size // 2] = value
            out.append(dict(request, **{i.name: bad}))
    return out


def _converted(name, cache, tmp_path):
    """(plan, session, its good requests, the plan's tail sessions or None) of the spec `name`, exported, converted
    and mergeable."""
    pytest.importorskip("onnxscript")
    from onnx_ops.modelgen.harness import export
    from onnx_ops.modelgen.inputs import cases
    from onnx_ops.modelgen.spec import Spec

    spec = Spec.from_json(SPECS[name])
    exported = export(spec, cache)
    assert "error" not in exported, exported["error"]
    out = tmp_path / "model.cortex.onnx"
    report = cortex.convert(exported["path"], str(out), strict=True)
    assert all(r.converted for r in report.regions)
    plan = plan_for(out)
    assert plan.mergeable, plan.reason
    session = cortex.InferenceSession(str(out))
    names = [i.name for i in session.get_inputs()]
    return plan, session, [{n: f[n] for n in names} for f in cases(spec).values()], tail_sessions(plan, out)


@pytest.mark.parametrize("name", list(SPECS))
def test_generated_models_merge_exactly(name, cache, tmp_path):
    plan, session, good, tail = _converted(name, cache, tmp_path)
    assert tail is not None or name != TAIL, plan.describe()  # float64 log_softmax heads too (graph_ops)
    requests = good + [bad for r in good for bad in _corrupted(plan, r)] + good
    stats = ForestStats()
    answers = run_forest(plan, session, requests, stats=stats, tail=tail)
    for k, (request, got) in enumerate(zip(requests, answers)):
        try:
            want = session.run(None, request)
        except Exception:  # noqa: BLE001 - its own error, and only its own
            assert isinstance(got, Exception), f"request {k}: its own run fails, merged it did not"
            continue
        assert not isinstance(got, Exception), f"request {k}: {got}"
        for a, b in zip(got, want):
            assert a.shape == b.shape and np.array_equal(a, b, equal_nan=True), f"request {k}"
    assert stats.merged_requests >= 2 * len(good) and stats.alone >= 1, stats


def test_an_empty_array_whose_emptiness_is_tested_runs_alone(cache, tmp_path):
    """len(parent) == 0 has one outcome for every non-empty parent array, the request's or the forest's; a request
    whose parent array is empty while its order is not would see the forest's, so it runs alone (its own error)."""
    plan, session, good, tail = _converted(EMPTINESS, cache, tmp_path)
    assert plan.kernels[0].nonempty, plan.describe()
    parent = next(i.name for i in plan.inputs if i.node_ids and i.unit == plan.node_unit)
    hollow = dict(good[0], **{parent: good[0][parent][:0]})
    from cortex.serving import check_request
    assert "is empty" in check_request(plan, hollow)
    stats = ForestStats()
    answers = run_forest(plan, session, good + [hollow] + good, stats=stats, tail=tail)
    assert stats.alone == 1 and stats.merged_requests == 2 * len(good), stats
    with pytest.raises(Exception):
        session.run(None, hollow)
    assert isinstance(answers[len(good)], Exception)


def test_a_head_over_the_whole_table_is_exact_wherever_the_request_starts(cache, tmp_path):
    """The tail's mean over a request's 1-D table is vectorized: from a start that is not aligned as ONNX Runtime
    aligns what it allocates, it sums in another order (one more ulp). Each case is served after 0 to 15 copies of
    another (an odd node count), so its rows start at every 8-byte offset of a 64-byte line in the forest: its
    answer is its own run's every time."""
    plan, session, good, tail = _converted(TAIL, cache, tmp_path)
    rows = [r["words"].shape[0] for r in good]
    small, big = good[rows.index(min(rows))], good[rows.index(max(rows))]
    assert min(rows) % 2 == 1 and max(rows) % 2 == 1, rows
    for request, other in ((small, big), (big, small)):
        want = session.run(None, request)
        for before in range(16):
            stats = ForestStats()
            got = run_forest(plan, session, [other] * before + [request], stats=stats, tail=tail)[-1]
            assert stats.merged_requests == before + 1 or before == 0, stats
            assert all(np.array_equal(a, b) for a, b in zip(got, want)), f"after {before} requests"

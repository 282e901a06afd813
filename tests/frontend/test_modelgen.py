"""Generated recursive PyTorch models (onnx_ops.modelgen), exported with the real exporters (TorchScript and
dynamo), converted by Cortex.

Property, on a fixed-seed sample of SAMPLE_SIZE models (about a third per exporter form): nothing crashes, every
converted model matches eager PyTorch (scaled max abs error <= 1e-4) on a single structure, a forest and a
shuffled visit order, every refusal has a reason naming the node and op, the generator itself never fails, and the
real exporters fail on few specs, and at least MIN_CONVERSION_RATE of the sample converts and matches
(`tools/fuzz_import.py --n 1000` measures the rate on more: docs/generality.md).

Plus unit tests of the generator: every choice value reachable, deterministic for a seed, no meaningless or
known-unexportable combination drawn, every source compiles. REGRESSIONS pins generated models that once broke the
property (they must hold it now).

Exports are cached in $CORTEX_MODELGEN_CACHE when set, else in pytest's tmp dir (cold every run: 1-4 minutes on
2 cores while few models convert, depending on the machine's load; each converted model adds a kernel compile).
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from onnx_ops.modelgen import CHOICES, MEANINGLESS, NEW_CHOICES, NEW_VALUES, UNEXPORTABLE, Spec, draw_many, write_source
from onnx_ops.modelgen.harness import normalize_reason

SEED = 20261201
SAMPLE_SIZE = 54
#: the fraction of the exported sample that must convert and match (the issue's bar for 1000 models; 99.5% measured
#: on 1000, docs/generality.md)
MIN_CONVERSION_RATE = 0.95
#: the generator writes exportable code: at most this fraction may fail in the real exporters
MAX_EXPORT_FAILED_RATE = 0.15


# ------------------------------------------------------------------------------------------------ generator
#: the values the CI sample draws: every choice's values except issue 19's encodings (NEW_VALUES, drawn with
#: tools/fuzz_import.py --explore-new; tests/frontend/test_modelgen_encodings.py tests them)
PLAIN = {k: tuple(v for v in vals if v not in NEW_VALUES.get(k, ())) for k, vals in CHOICES.items()
         if k not in NEW_CHOICES}


def test_every_choice_value_is_reachable():
    seen = {k: set() for k in PLAIN}
    for s in draw_many(4000, seed=1, explore=True):
        for k in PLAIN:
            seen[k].add(getattr(s, k))
    for k, values in PLAIN.items():
        missing = set(values) - seen[k]
        assert not missing, f"choice {k}: values never drawn: {sorted(map(str, missing))}"


def test_default_draw_skips_only_the_unexportable_values():
    """Without explore, the only value never drawn is int32 used directly as indices (no exporter writes a valid
    model for it); every other value of every choice is reachable."""
    seen = {k: set() for k in PLAIN}
    for s in draw_many(4000, seed=2):
        for k in PLAIN:
            seen[k].add(getattr(s, k))
    missing = {(k, v) for k, values in PLAIN.items() for v in values if v not in seen[k]}
    assert missing == {("dtype", "int32")}


def test_deterministic_for_a_seed():
    a, b = draw_many(40, seed=11), draw_many(40, seed=11)
    assert a == b
    assert [s.key() for s in a] == [s.key() for s in b]
    assert [write_source(s).text for s in a] == [write_source(s).text for s in b]
    assert draw_many(40, seed=12) != a
    from onnx_ops.modelgen.inputs import cases

    for s in a[:8]:
        ca, cb = cases(s), cases(s)
        assert ca.keys() == cb.keys()
        for name in ca:
            assert ca[name].keys() == cb[name].keys()
            for k in ca[name]:
                assert (ca[name][k] == cb[name][k]).all()


def test_spec_json_roundtrip():
    for s in draw_many(30, seed=3, explore=True):
        assert Spec.from_json(s.to_json()) == s
        assert Spec.from_json(s.to_json()).key() == s.key()


def test_no_meaningless_or_unexportable_combination_is_drawn():
    for s in draw_many(1500, seed=4):
        d = s.to_json()
        assert not [r for p, r in MEANINGLESS if p(d)], s.short()
        assert not [r for p, r in UNEXPORTABLE if p(d)], s.short()
    for s in draw_many(500, seed=5, explore=True):
        assert not [r for p, r in MEANINGLESS if p(s.to_json())], s.short()


def test_every_source_compiles_and_inputs_match_signature():
    from onnx_ops.modelgen.inputs import cases

    for s in draw_many(300, seed=6, explore=True):
        src = write_source(s)
        compile(src.text, f"<{s.short()}>", "exec")
        assert "class Model(nn.Module)" in src.text
    for s in draw_many(30, seed=7):
        src = write_source(s)
        for name, feeds in cases(s).items():
            assert list(feeds) == [n for n, _ in src.inputs], (name, s.short())


def test_reason_normalization_merges_names_and_numbers():
    a = normalize_reason("Loop '/Loop': node /Add_1 (Add): index arithmetic on runtime tensor /Sub_output_0")
    b = normalize_reason("Loop 'node_while_loop__3': node /Add (Add): index arithmetic on runtime tensor /Sub_output_7")
    assert a == b
    assert "(Add)" in a


# ------------------------------------------------------------------------------------------------ property
@pytest.fixture(scope="module")
def sample_results(tmp_path_factory):
    import torch  # noqa: F401  (the exporters and the eager ground truth; ImportError -> skipped)
    import onnxscript  # noqa: F401  (the dynamo exporter)

    from onnx_ops.modelgen.harness import run_many

    cache = Path(os.environ.get("CORTEX_MODELGEN_CACHE") or tmp_path_factory.mktemp("modelgen-cache"))
    specs = draw_many(SAMPLE_SIZE, seed=SEED)
    results = run_many(specs, jobs=2, cache=cache, timeout=420, merge=True)
    return specs, results


def _describe(r) -> str:
    tb = (r.get("traceback") or "").strip().splitlines()[-3:]
    return f"{r['outcome']} {r['key']} [{r['short']}]: {r['reason']}" + "".join(f"\n    | {ln}" for ln in tb)


def test_sample_mixes_the_exporters(sample_results):
    specs, _ = sample_results
    kinds = Counter(s.exporter for s in specs)
    assert set(kinds) == {"torchscript", "dynamo_while", "dynamo_scan"}
    assert min(kinds.values()) >= SAMPLE_SIZE // 6


def test_nothing_crashes(sample_results):
    _, results = sample_results
    bad = [r for r in results if r["outcome"] in ("crash", "gen-error")]
    assert not bad, "\n".join(_describe(r) for r in bad)


def test_converted_models_match_eager_pytorch(sample_results):
    _, results = sample_results
    bad = [r for r in results if r["outcome"] == "converted-MISMATCH"]
    assert not bad, "\n".join(_describe(r) for r in bad)
    for r in results:
        if r["outcome"] == "converted-match":
            assert set(r["cases"]) == {"single", "forest", "odd"}
            assert all(c["converted_vs_eager"] <= 1e-4 for c in r["cases"].values())


def test_models_that_convert_merge_exactly(sample_results):
    """Every model that converts whole is also served as a batching server would (its three cases, each twice, as
    one forest): each answer the bits of its separate run; a model that is not merged says why."""
    _, results = sample_results
    bad = [r for r in results if r["outcome"] == "merge-MISMATCH"]
    assert not bad, "\n".join(_describe(r) for r in bad)
    checked = [r for r in results if r["outcome"] == "converted-match"]
    assert checked and all(r.get("merge") for r in checked)
    for r in checked:
        m = r["merge"]
        assert m["outcome"] in ("merged", "partly", "alone", "refused"), _describe(r)
        assert m["outcome"] != "refused" or m["reason"], _describe(r)
        # the labels count what ran: "partly" merged some requests, "alone" none (every one ran by itself)
        assert m["outcome"] not in ("partly", "alone") or (m["merged"] > 0) == (m["outcome"] == "partly"), m
    # a third of the sample merges at least in part (54 models on 2026-12-06: 20 merged; the rest carry a chain's
    # state, mix trees in a head, or read a missing child's clamped row unguarded, which sends a request alone:
    # "alone" when that leaves none merged): a floor that catches a regression
    served = sum(r["merge"]["outcome"] in ("merged", "partly") for r in checked)
    assert served >= len(checked) // 3, Counter(r["merge"]["reason"] for r in checked)


def test_a_wrong_merge_is_seen(tmp_path, monkeypatch):
    """merge_check holds merged answers to the separate runs' bits: with the forest's outputs cut one request off
    (every request gets its neighbour's rows), it reports a mismatch."""
    import cortex
    from cortex.examples import structures as S
    from cortex.serving import forest
    from onnx_ops.modelgen.harness import merge_check
    from onnx_ops.zoo import wild

    pytest.importorskip("torch")
    src, out = tmp_path / "m.onnx", tmp_path / "m.cortex.onnx"
    wild.export_model("tai_treelstm", src, wild.feeds_for("binary", np.random.default_rng(0), 2))
    cortex.convert(str(src), str(out), strict=True)
    session = cortex.InferenceSession(str(out))
    rng = np.random.default_rng(1)
    feeds = {f"t{k}": wild.binary_feeds([t]) for k, t in enumerate(S.sst_like_trees(3, rng, 50))}
    assert merge_check(str(out), session, feeds)["outcome"] == "merged"
    real_split = forest.split
    monkeypatch.setattr(forest, "split", lambda *a: (lambda parts: parts[1:] + parts[:1])(real_split(*a)))
    assert merge_check(str(out), session, feeds)["outcome"] == "MISMATCH"


def test_every_refusal_names_node_and_op(sample_results):
    _, results = sample_results
    for r in results:
        if r["outcome"] != "refused":
            continue
        assert r["reason"], _describe(r)
        if r["unreported"]:
            # the report lists no region at all: the harness names the recursion node it left alone
            assert "Loop '" in r["reason"] or "Scan '" in r["reason"], _describe(r)
            continue
        refused = [g for g in r["regions"] if not g["converted"]]
        assert refused, _describe(r)
        for g in refused:
            assert g["kind"] and g["node"] and (g["reason"] or "").strip(), _describe(r)


def test_conversion_rate(sample_results):
    _, results = sample_results
    exported = [r for r in results if r["outcome"] != "export-failed"]  # the exporters' failures are counted below
    rate = sum(r["outcome"] == "converted-match" for r in exported) / max(len(exported), 1)
    assert rate >= MIN_CONVERSION_RATE, "\n".join(_describe(r) for r in exported if r["outcome"] != "converted-match")


def test_exporters_export_most_specs(sample_results):
    _, results = sample_results
    failed = [r for r in results if r["outcome"] == "export-failed"]
    assert len(failed) <= MAX_EXPORT_FAILED_RATE * len(results), "\n".join(_describe(r) for r in failed)


# ------------------------------------------------------------------------------------------------ found bugs
#: generated models that once failed the property, kept so that CI checks them on every run: (spec, bug)
REGRESSIONS = [
    ({"family": "chainlstm", "gates": "torch_cell", "mix": "-", "bias": "-", "agg": "-", "gather": "-",
      "write": "index_put", "read": "scalar", "leaf_test": "-", "missing": "if_zeros", "leaf_input": "constant",
      "act": "elu", "act_form": "functional", "head": "log_softmax", "layout": "-", "dtype": "int64",
      "loop": "forward", "exporter": "torchscript", "hidden": 8, "embed": 4, "arity": "-", "structure": "chain",
      "seed": 10000040},
     "crash: cortex.convert raises ValueError ('truth value of an array ... is ambiguous') in "
     "cortex/frontend/abstract.py:205 (eval_node merging If branches: `t == o` on values holding arrays); "
     "TorchScript + nn.LSTMCell + a per-child `if` returning torch.zeros(H), 0-d or int ids"),
    ({"family": "chainlstm", "gates": "torch_cell", "mix": "-", "bias": "-", "agg": "-", "gather": "-",
      "write": "cat", "read": "int", "leaf_test": "-", "missing": "if_zeros", "leaf_input": "features",
      "act": "gelu", "act_form": "functional", "head": "mean", "layout": "-", "dtype": "int64", "loop": "forward",
      "exporter": "torchscript", "hidden": 15, "embed": 6, "arity": "-", "structure": "chain",
      "seed": 20261261783640},
     "crash: the same ValueError in cortex/frontend/abstract.py:205"),
    ({"family": "treelstm", "gates": "separate", "mix": "cat", "bias": True, "agg": "sum", "gather": "stacked",
      "write": "assign", "read": "int", "leaf_test": "-", "missing": "mask", "leaf_input": "embedding", "act": "selu",
      "act_form": "functional", "head": "root_linear", "layout": "lr", "dtype": "int64", "loop": "forward",
      "exporter": "torchscript", "hidden": 10, "embed": 7, "arity": "-", "structure": "grid", "seed": 1000039},
     "refused: the fused CPU level declared one copy of the product's input rows per product ('redeclaration of "
     "float* A0': one Linear per gate, every gate reading the same rows), so the kernel did not compile"),
    ({"family": "treernn", "gates": "-", "mix": "-", "bias": True, "agg": "attn", "gather": "stacked",
      "write": "index_put", "read": "slice", "leaf_test": "mask", "missing": "-", "leaf_input": "constant",
      "act": "leaky_relu", "act_form": "functional", "head": "none", "layout": "lr", "dtype": "int32_long",
      "loop": "reverse", "exporter": "dynamo_scan", "hidden": "-", "embed": 10, "arity": "-", "structure": "binary",
      "encoding": "padded", "select": "-", "table": "vector", "precision": "float32", "carry": "-", "seed": 11000083},
     "converted-MISMATCH: softmax attention over two children of a 1-D table: the fused loop read the max of the "
     "scores (width 1, broadcast to 2) at element 1, past its row (Access.normalized kept the fixed element)"),
    ({"family": "treelstm", "gates": "separate", "mix": "-", "bias": True, "agg": "attn", "gather": "index_select",
      "write": "scatter", "read": "slice", "leaf_test": "eq_m1", "missing": "-", "leaf_input": "constant",
      "act": "silu", "act_form": "module", "head": "mean", "layout": "children", "dtype": "int64", "loop": "forward",
      "exporter": "torchscript", "hidden": 4, "embed": 5, "arity": "-", "structure": "binary", "encoding": "padded",
      "select": "-", "table": "rank3", "precision": "float32", "carry": "-", "seed": 11000108},
     "converted-MISMATCH (NaN): the same broadcast read, attention over a rank-3 [N, 2, H] table"),
    ({"family": "chainlstm", "gates": "fused_slice", "mix": "cat", "bias": False, "agg": "-", "gather": "-",
      "write": "-", "read": "scalar", "leaf_test": "-", "missing": "-", "leaf_input": "features", "act": "elu",
      "act_form": "module", "head": "log_softmax", "layout": "-", "dtype": "int64", "loop": "counter",
      "exporter": "torchscript", "hidden": 15, "embed": 3, "arity": "-", "structure": "chain", "encoding": "-",
      "select": "-", "table": "-", "precision": "float32", "carry": "list", "seed": 11000040},
     "refused: h and c of an LSTM chain start from TorchScript's one merged zeros: two kernel inputs of one name "
     "('duplicate input names')"),
    ({"family": "chainlstm", "gates": "separate", "mix": "sum", "bias": True, "agg": "-", "gather": "-",
      "write": "-", "read": "slice", "leaf_test": "-", "missing": "-", "leaf_input": "features", "act": "selu",
      "act_form": "module", "head": "log_softmax", "layout": "-", "dtype": "int64", "loop": "reverse",
      "exporter": "torchscript", "hidden": 14, "embed": 6, "arity": "-", "structure": "chain", "encoding": "-",
      "select": "-", "table": "-", "precision": "float32", "carry": "running_max", "seed": 11000063},
     "refused: a chain whose state and running max are [1, H] rows was taken for a node table ('the shape of state"
     " table is not static')"),
]
#: regressions whose model once converted or must convert: a refusal is a failure too
MUST_CONVERT = {2, 3, 4, 5, 6}


@pytest.mark.parametrize("i", range(len(REGRESSIONS)), ids=[f"regression{i}" for i in range(len(REGRESSIONS))])
def test_found_regressions(i, tmp_path_factory):
    import torch  # noqa: F401

    from onnx_ops.modelgen.harness import run_many

    cache = Path(os.environ.get("CORTEX_MODELGEN_CACHE") or tmp_path_factory.mktemp("modelgen-regressions"))
    spec_json, bug = REGRESSIONS[i]
    (r,) = run_many([Spec.from_json(spec_json)], jobs=1, cache=cache, timeout=420)
    assert r["outcome"] not in ("crash", "gen-error", "converted-MISMATCH"), f"{bug}\n{_describe(r)}"
    if i in MUST_CONVERT:
        assert r["outcome"] == "converted-match", f"{bug}\n{_describe(r)}"


def test_must_convert_regressions_convert_for_cuda_too(tmp_path_factory):
    """Issue 21: a generated model that converts for the CPU converts for CUDA (compiled with nvcc; run and compared
    with eager PyTorch where a GPU is usable: converted-match, else converted-unrun)."""
    import torch  # noqa: F401

    from onnx_ops.modelgen.harness import run_many
    from onnx_ops.modelgen.harness import gpu_usable

    from gpu import nvcc_missing

    if nvcc_missing():
        pytest.skip(nvcc_missing())
    cache = Path(os.environ.get("CORTEX_MODELGEN_CACHE") or tmp_path_factory.mktemp("modelgen-cuda"))
    specs = [Spec.from_json(REGRESSIONS[i][0]) for i in sorted(MUST_CONVERT)[:2]]
    for r in run_many(specs, jobs=1, cache=cache, timeout=420, target="cuda"):
        assert r["outcome"] == ("converted-match" if gpu_usable() else "converted-unrun"), _describe(r)


#: a TorchScript TreeLSTM whose `if` returns torch.zeros for a leaf's children (the exporter hoists the zeros out of
#: the If); ONNX Runtime 1.31 gives NaN for the original, PyTorch and Cortex agree (docs/modelgen.md)
ORT_NAN_SPEC = {"family": "treelstm", "gates": "fused_chunk", "mix": "sum", "bias": True, "agg": "cat",
                "gather": "index_select", "write": "assign_slice", "read": "slice", "leaf_test": "none",
                "missing": "node_if_zeros", "leaf_input": "constant", "act": "tanh", "act_form": "functional",
                "head": "log_softmax", "layout": "children", "dtype": "int64", "loop": "counter",
                "exporter": "torchscript", "hidden": 10, "embed": 3, "arity": "-", "structure": "binary",
                "seed": 1000294}


def test_zeros_from_a_branch_matches_pytorch_where_onnx_runtime_gives_nan(tmp_path_factory):
    import cortex
    from onnx_ops.modelgen.harness import export, run_many

    spec = Spec.from_json(ORT_NAN_SPEC)
    cache = Path(os.environ.get("CORTEX_MODELGEN_CACHE") or tmp_path_factory.mktemp("modelgen-ort-nan"))
    (r,) = run_many([spec], jobs=1, cache=cache, timeout=420)
    assert r["outcome"] == "converted-match", _describe(r)
    assert any("nan" in d for d in r["ort_defects"]), (
        "ONNX Runtime no longer gives NaN on this export: the defect is fixed upstream; update docs/modelgen.md "
        f"and this test\n{_describe(r)}")
    out = tmp_path_factory.mktemp("ort-nan-report") / "m.cortex.onnx"
    report = cortex.convert(export(spec, cache)["path"], out, strict=True)
    (region,) = report.regions
    assert region.warnings and "hoisted" in region.warnings[0] and "NaN" in region.warnings[0], report.format()
    assert "the converted kernel computes it as PyTorch does" in report.format()

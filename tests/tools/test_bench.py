"""tools/bench.py: the cross-system output check stops the run on a mismatch; a tiny run writes its outputs.

Tiny configs (hidden 8, a few trees, sub-second budgets) so the module runs in well under a minute; the converted
model is cached once for the module."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tools import bench  # noqa: E402
from tools.peers import BenchMismatch, systems  # noqa: E402

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_DYNET = importlib.util.find_spec("dynet") is not None
TINY = ["--hidden", "8", "--batch", "1,3", "--throughput", "0", "--trees", "3", "--max-forests", "1",
        "--budget", "0.05", "--repeats", "1,2", "--no-progress", "--no-plots", "--peak-n", "128"]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("bench")


def args_for(out, *extra):
    return bench.parse_args(TINY + ["--out", str(out)] + list(extra))


def bump(h, c):
    h = h.copy()
    h.flat[0] += 1e-3  # 10x the tolerance
    return h, c


def test_check_outputs_names_system_model_config():
    from cortex.examples import structures as st
    from cortex.examples import treelstm as tl

    p = tl.make_params(hidden=4, embed_dim=5, vocab=20, seed=0)
    f = st.random_tree(4, np.random.default_rng(0), 20)
    ref = tl.reference(p, f)
    good = lambda forest: tl.reference(p, forest)  # noqa: E731
    err, _ = bench.check_outputs("Good", good, [f], [ref], "treelstm", "hidden=4, batch=1", 1e-4)
    assert err == 0.0
    with pytest.raises(BenchMismatch) as ei:
        bench.check_outputs("Bad", good, [f], [ref], "treelstm", "hidden=4, batch=1", 1e-4, perturb=bump)
    msg = str(ei.value)
    assert "Bad" in msg and "treelstm" in msg and "hidden=4, batch=1" in msg and "1e-03" in msg.replace("0.001", "1e-03")
    assert ei.value.error == pytest.approx(1e-3, rel=1e-3)
    # a NaN or a wrong shape is a mismatch too
    nan = lambda forest: (np.full_like(ref[0], np.nan), ref[1])  # noqa: E731
    with pytest.raises(BenchMismatch):
        bench.check_outputs("NaN", nan, [f], [ref], "treelstm", "c", 1e-4)
    assert systems.max_abs_err(ref[0][:-1], ref[0]) == float("inf")


def test_tiny_run_writes_results(out):
    res = bench.run_bench(args_for(out), "test")
    data = json.loads((out / "results.json").read_text())
    assert (out / "results.md").read_text().startswith("# Cortex benchmark results")
    assert [(r["hidden"], r["batch"]) for r in data["rows"]] == [(8, 1), (8, 3)]
    for row in res["rows"]:
        for name in systems.CPU_SYSTEMS:
            r = row["results"][name]
            if r["status"] == "ok":
                assert r["ms_median"] > 0 and row["check_max_abs_err"][name] <= 1e-4
            else:  # reported, not hidden
                assert r["status"].startswith("not installed")
        assert row["results"][systems.CUDA_GRAPH]["status"].startswith("not requested")
    assert res["rows"][0]["results"][systems.ORT]["status"] == "ok"


@pytest.mark.parametrize("key", ["ort", "pytorch", "dynet", "cortex"])
def test_injected_peer_mismatch_stops_the_run(out, key):
    if key == "pytorch" and not HAS_TORCH:
        pytest.skip("torch is not installed")
    if key == "dynet" and not HAS_DYNET:
        pytest.skip("dynet (dynet38) is not installed")
    name = next(n for n, k in systems.KEYS.items() if k == key)
    with pytest.raises(BenchMismatch) as ei:
        bench.run_bench(args_for(out), "test", perturb={key: bump})
    assert ei.value.system == name and ei.value.model == "treelstm" and ei.value.config == "hidden=8, batch=1"
    assert name in str(ei.value)


def test_cli_exit_code_2_on_mismatch(out, capsys):
    rc = bench.main(TINY + ["--out", str(out), "--systems", "ort", "--inject-mismatch", "ort"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "STOPPED" in err and "ONNX Runtime" in err and "hidden=8, batch=1" in err


def test_cuda_target_without_gpu_runs_cpu_systems(out):
    res = bench.run_bench(args_for(out, "--target", "cuda", "--systems", "ort"), "test")
    assert res["rows"][0]["results"][systems.ORT]["status"] == "ok"
    if not systems.torch_peer.cuda_status():
        pytest.skip("a CUDA GPU is present")
    assert any("no GPU" in n for n in res["notes"])
    assert "not available on this machine" in res["rows"][0]["results"][systems.TORCH_GPU]["status"] or \
        res["rows"][0]["results"][systems.TORCH_GPU]["status"].startswith("not installed")


# ----------------------------------------------------------------------------------------------------------------
# every zoo model; every form


def test_registry_covers_every_zoo_model():
    from onnx_ops import zoo
    from tools.peers import models

    assert models.names() == list(zoo.MODELS)
    assert models.parse_models("all") == list(zoo.MODELS)
    rng = np.random.default_rng(0)
    for name in models.names():
        e = models.get(name)
        assert e.zoo is zoo.MODELS[name] and e.structure == zoo.MODELS[name].structure
        p = e.make_params(4, 0)
        s = zoo.batch(e.structure, zoo.structures(e.structure, 2, rng, vocab=e.vocab or zoo.VOCAB))
        assert e.flops(p, s) > 0
        assert (e.dynet_builder is None) == (e.dynet_status == models.NO_DYNET)


def test_all_models_path(tmp_path):
    res = bench.run_bench(args_for(tmp_path, "--models", "treefc,chainlstm", "--batch", "2", "--systems",
                                   "cortex,ort,pytorch,dynet"), "test")
    assert [(r["model"], r["batch"]) for r in res["rows"]] == [("treefc", 2), ("chainlstm", 2)]
    for row in res["rows"]:
        assert row["flops_mean"] > 0
        for name in (systems.CORTEX, systems.ORT):
            assert row["results"][name]["status"] == "ok" and row["check_max_abs_err"][name] <= 1e-4
        dy = row["results"][systems.DYNET]["status"]
        assert dy == "no DyNet implementation of this model" or dy.startswith("not installed")
    md = (tmp_path / "results.md").read_text()
    assert "no DyNet implementation of this model" in md or not HAS_DYNET
    assert "Structures (chain" in md and "Model chainlstm" in md


def test_one_output_model_mismatch_is_caught(tmp_path):
    with pytest.raises(BenchMismatch) as ei:
        bench.run_bench(args_for(tmp_path, "--models", "treernn", "--systems", "ort"), "test",
                        perturb={"ort": lambda h: (h + 1e-3,)})
    assert ei.value.model == "treernn" and ei.value.system == systems.ORT


def test_forms_mode_one_row_per_form(tmp_path):
    from tools.peers import models

    doc = tmp_path / "models.md"
    args = bench.parse_args(["--forms", "--models", "treernn", "--hidden", "8", "--batch", "2", "--forms-batches",
                             "2", "--budget", "0.02", "--repeats", "1,2", "--no-progress", "--out", str(tmp_path)])
    res = bench.run_forms(args, "test")
    forms = ["loop", "treerec"] + [s for s, _ in models.export_styles("treernn") + models.cell_forms("treernn")
                                   + models.wild_forms("treernn")]
    assert [(r["model"], r["form"]) for r in res["rows"]] == [("treernn", f) for f in forms]
    for r in res["rows"]:
        assert r["status"] == "ok" and r["converted"] is True, r
        assert r["max_abs_err"] <= 1e-4 and r["ort"]["ms_median"] > 0 and r["cortex"]["ms_median"] > 0
        assert r["speedup"] > 0
    bench.write_models_doc(res, doc)
    text = doc.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| treernn |")]
    assert [line.split(" | ")[1] for line in rows] == forms
    assert "Git revision" in text and "Machine:" in text and "Command: `test`" in text
    assert json.loads((tmp_path / "forms.json").read_text())["rows"][0]["form"] == "loop"


def test_forms_table_reports_unconverted_forms():
    res = {"rows": [{"model": "m", "form": "loop", "converted": False, "reason": "Loop 'x': unsupported op Foo | bar",
                     "max_abs_err": None, "ort": {"ms_median": 12.0}, "status": "ok"}]}
    line = bench.render_forms_table(res).splitlines()[-1]
    assert line.startswith("| m | loop | no: Loop 'x': unsupported op Foo \\| bar | – | 12 | – | – |")


def test_phases_break_cortex_time_down(tmp_path):
    """--phases: the kernel's own clocks read after each session run (a fresh process: CORTEX_PROFILE is read when a
    kernel library first runs); the steps are the kernel's, and they add up to about its time."""
    import subprocess

    run = subprocess.run([sys.executable, str(REPO / "tools" / "bench.py"), *TINY, "--systems", "cortex", "--phases",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    for row in rows:
        phases = row["results"][systems.CORTEX]["phases"]
        steps = phases["steps_us"]
        assert list(steps) == ["input checks", "prepare", "hoisted products", "linearize", "leaves", "levels"]
        assert phases["kernel_us"] > 0 and all(v >= 0 for v in steps.values())
        assert sum(steps.values()) <= 2 * phases["kernel_us"]
    assert "## Where Cortex's time goes" in (tmp_path / "results.md").read_text()


def test_timing_keeps_the_collector_off_and_restores_it():
    """time_system: a collector pause must not land in one system's timed pass (as timeit: collected before, off
    while timing), and the collector is on again afterwards."""
    import gc

    from tools.benchlib.measure import time_system

    seen = []
    assert gc.isenabled()
    stats = time_system(lambda x: seen.append(gc.isenabled()), [1, 2, 3], budget_s=0.01, min_reps=3, max_reps=3,
                        warmup=1)
    assert stats["repeats"] == 3 and seen and not any(seen)
    assert gc.isenabled()

"""--precision bf16 (opt-in): products on bf16 values (AMX tiles or AVX512-BF16), float32 sums and gates. Every zoo
model converts with it, stays within a stated error of float32 on SST-shaped trees, and the convert report states
the measured max and mean error; a CPU level (or CPU) with neither AVX512-BF16 nor AMX is refused with one clear
line. float32 stays the default and exact (test_zoo_convert.py)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

import cortex
from cortex.codegen import toolchain
from cortex.convert import ConvertError
from cortex.examples import structures as st
from onnx_ops.zoo import MODELS, batch, structures

HIDDEN = 64
# bf16 keeps 8 significant bits of each product operand (relative rounding 2^-9 each); sums and gates stay float32.
# Measured on 10 SST-shaped trees at hidden 64: the zoo TreeLSTM's h max abs error 1.4e-4, mean 1.2e-5 (values up
# to 0.27), c 2.8e-4 / 2.4e-5. The bounds leave room for every zoo model and deeper trees; float32 stays at 1e-4.
MAX_ABS_BOUND = 5e-2
MEAN_ABS_BOUND = 5e-3

HAS_BF16 = "avx512bf16" in (toolchain.host_cpu_features() or ())
needs_bf16 = pytest.mark.skipif(not HAS_BF16, reason="this CPU has no AVX512-BF16")


def _model_and_feeds(tmp_path, name, seed=1):
    entry = MODELS[name]
    params = entry.make_params(HIDDEN, seed=seed)
    src = tmp_path / f"{name}.onnx"
    onnx.save(entry.build_loop(params), str(src))
    items = structures(entry.structure, 10, np.random.default_rng(4), sst_dir=st.sst_dir_default(), vocab=50)
    feeds = entry.loop_feeds(batch(entry.structure, items))
    names = {i.name for i in onnx.load(str(src)).graph.input}
    return src, {k: v for k, v in feeds.items() if k in names}


def _notes(path):
    node = next(n for n in onnx.load(str(path)).graph.node if n.op_type == "EPContext")
    return json.loads(next(a.s for a in node.attribute if a.name == "notes"))


@needs_bf16
@pytest.mark.parametrize("name", sorted(MODELS))
def test_bf16_error_within_bound_and_reported(tmp_path, name):
    src, feeds = _model_and_feeds(tmp_path, name)
    out = tmp_path / "model.bf16.onnx"
    report = cortex.convert(str(src), str(out), strict=True, precision="bf16", example_inputs=feeds)
    assert report.precision == "bf16" and report.errors
    notes = _notes(out)
    assert notes["precision"] == "bf16" and notes["micro_kernel"] in ("amx", "avx512bf16")
    assert "avx512bf16" in notes["cpu_features"]
    # the report's numbers are what the two conversions give on the example inputs
    ref = tmp_path / "model.f32.onnx"
    cortex.convert(str(src), str(ref), strict=True)
    want = cortex.InferenceSession(str(ref)).run(None, feeds)
    got = cortex.InferenceSession(str(out)).run(None, feeds)
    for e, w, g in zip(report.errors, want, got):
        diff = np.abs(np.asarray(w, np.float64) - np.asarray(g, np.float64))
        assert e.max_abs == pytest.approx(diff.max(), rel=1e-6, abs=1e-12)
        assert e.mean_abs == pytest.approx(diff.mean(), rel=1e-6, abs=1e-12)
        assert e.max_abs <= MAX_ABS_BOUND and e.mean_abs <= MEAN_ABS_BOUND, report.format()
    assert any(e.max_abs > 0 for e in report.errors)  # the products really ran in bf16
    text = report.format()
    assert "precision bf16" in text and "max abs error" in text and "mean abs error" in text


@needs_bf16
def test_bf16_from_the_command_line(tmp_path):
    src, feeds = _model_and_feeds(tmp_path, "treelstm")
    np.savez(tmp_path / "inputs.npz", **feeds)
    result = subprocess.run([sys.executable, "-m", "cortex.cli", str(src), "-o", str(tmp_path / "m.onnx"),
                             "--precision", "bf16", "--example-inputs", str(tmp_path / "inputs.npz")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "max abs error" in result.stdout and "mean abs error" in result.stdout


def test_bf16_needs_example_inputs(tmp_path):
    src, _ = _model_and_feeds(tmp_path, "treelstm")
    with pytest.raises(ConvertError, match="example inputs"):
        cortex.convert(str(src), str(tmp_path / "m.onnx"), precision="bf16")


@pytest.mark.parametrize("level", ["x86-64-v3", "x86-64-v2"])
def test_bf16_refused_where_the_level_has_neither(tmp_path, level):
    src, feeds = _model_and_feeds(tmp_path, "treelstm")
    with pytest.raises(ConvertError, match=f"needs AVX512-BF16 or AMX; CPU level {level} has neither"):
        cortex.convert(str(src), str(tmp_path / "m.onnx"), cpu=level, precision="bf16", example_inputs=feeds)
    assert not (tmp_path / "m.onnx").exists()
    result = subprocess.run([sys.executable, "-m", "cortex.cli", str(src), "-o", str(tmp_path / "m.onnx"), "--cpu",
                             level, "--precision", "bf16"], capture_output=True, text=True)
    assert result.returncode == 1 and "neither" in result.stderr and "Traceback" not in result.stderr


def test_bf16_refused_on_a_cpu_without_it(tmp_path, monkeypatch):
    # simulate a CPU with AVX-512 but neither AVX512-BF16 nor AMX
    host = frozenset(f for f in (toolchain.host_cpu_features() or ()) if f not in ("avx512bf16", "amx-tile",
                                                                                     "amx-bf16"))
    monkeypatch.setattr(toolchain, "host_cpu_features", lambda *a: host)
    from cortex.codegen import targets
    monkeypatch.setattr(targets, "host_cpu_features", lambda *a: host)
    src, feeds = _model_and_feeds(tmp_path, "treelstm")
    with pytest.raises(ConvertError, match="this CPU has neither"):
        cortex.convert(str(src), str(tmp_path / "m.onnx"), cpu="x86-64-v4", precision="bf16", example_inputs=feeds)


def test_float32_default_records_its_micro_kernel(tmp_path):
    src, feeds = _model_and_feeds(tmp_path, "treelstm")
    out = tmp_path / "m.onnx"
    report = cortex.convert(str(src), str(out), strict=True)
    assert report.precision == "float32" and not report.errors and "precision" not in report.format()
    notes = _notes(out)
    assert "precision" not in notes
    level = toolchain.default_cpu_level()
    assert notes["cpu_level"] == level
    want = {"x86-64-v4": "avx512", "x86-64-v3": "avx2"}.get(level, "portable")
    assert notes["micro_kernel"] == want


@needs_bf16
def test_bf16_model_rebuilds_with_its_precision(tmp_path):
    from cortex.rebuild import rebuild
    src, feeds = _model_and_feeds(tmp_path, "treelstm")
    out = tmp_path / "m.onnx"
    cortex.convert(str(src), str(out), precision="bf16", example_inputs=feeds)
    rebuilt = tmp_path / "rebuilt.onnx"
    rebuild(str(out), str(rebuilt))
    assert _notes(rebuilt)["precision"] == "bf16"
    want = cortex.InferenceSession(str(out)).run(None, feeds)
    got = cortex.InferenceSession(str(rebuilt)).run(None, feeds)
    for w, g in zip(want, got):  # the panels_bf16 constants read back and packed again: the same bits
        np.testing.assert_array_equal(w, g)

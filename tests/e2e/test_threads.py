"""A converted kernel under any thread count (CORTEX_NUM_THREADS 1, 2, 3 and more threads than this machine has
cores): the same bits as with one thread (every product element is one FMA chain, whatever the split of a level
over the workers), ONNX Runtime's answer to 1e-4, and no hang, on forests with no node (no level), one leaf (one
level), 10 SST-shaped trees and 100. At hidden 64 the weights fit a core's L2, so from 2 threads the forests run in
lanes (independent trees on their own threads, csrc/runtime/linearize.h's Lanes) while one thread runs the shared
level schedule: the bits agree across the two."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import cortex
from cortex.examples import structures as st
from onnx_ops.zoo import MODELS, batch, structures

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
THREADS = [1, 2, 3, 16]

RUNNER = """
import sys, numpy as np
sys.path.insert(0, sys.argv[3])
import cortex
from cortex import _C
feeds = dict(np.load(sys.argv[1], allow_pickle=False))
session = cortex.InferenceSession(sys.argv[2])
out = {}
for name in sorted({k.split("/")[0] for k in feeds}):
    run = {k.split("/")[1]: v for k, v in feeds.items() if k.startswith(name + "/")}
    for _ in range(3):  # repeated runs: the pool's workers between regions, spinning or asleep
        got = session.run(None, run)
    for k, g in enumerate(got):
        out[f"{name}/{k}"] = g
out["threads"] = np.array(_C.num_threads())
np.savez(sys.argv[4], **out)
"""


def _feeds(entry, forest):
    return {k: v for k, v in entry.loop_feeds(forest).items() if k in ("words", "left", "right", "order")}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("threads")
    entry = MODELS["treelstm"]
    src = d / "tl.onnx"
    onnx.save(entry.build_loop(entry.make_params(64, seed=2)), str(src))
    out = d / "tl.cortex.onnx"
    report = cortex.convert(str(src), str(out), strict=True)
    assert [r.converted for r in report.regions] == [True]
    rng = np.random.default_rng(7)
    sst = st.sst_dir_default()
    cases = {
        "empty": {"words": np.zeros(0, np.int64), "left": np.zeros(0, np.int64), "right": np.zeros(0, np.int64),
                  "order": np.zeros(0, np.int64)},
        "leaf": {"words": np.array([3], np.int64), "left": np.array([-1], np.int64),
                 "right": np.array([-1], np.int64), "order": np.array([0], np.int64)},
        "b10": _feeds(entry, batch(entry.structure, structures(entry.structure, 10, rng, sst_dir=sst, vocab=50))),
        "b100": _feeds(entry, batch(entry.structure, structures(entry.structure, 100, rng, sst_dir=sst, vocab=50))),
    }
    feeds_file = d / "feeds.npz"
    np.savez(feeds_file, **{f"{name}/{k}": v for name, f in cases.items() for k, v in f.items()})
    original = ort.InferenceSession(str(src))
    expected = {name: original.run(None, f) for name, f in cases.items()}
    return d, out, feeds_file, cases, expected


def _run(d, out, feeds_file, threads):
    result_file = d / f"out_{threads}.npz"
    env = {**os.environ, "CORTEX_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(feeds_file), str(out), REPO, str(result_file)],
                          env=env, capture_output=True, text=True, timeout=300)  # a hang fails here
    assert proc.returncode == 0, proc.stderr[-2000:]
    return dict(np.load(result_file))


def test_any_thread_count_gives_the_same_bits(model):
    d, out, feeds_file, cases, expected = model
    results = {t: _run(d, out, feeds_file, t) for t in THREADS}
    for t, got in results.items():
        assert int(got["threads"]) == t
        for name in cases:
            for k, want in enumerate(expected[name]):
                g = got[f"{name}/{k}"]
                assert g.shape == want.shape, (t, name, k)
                assert np.abs(g - want).max(initial=0.0) <= 1e-4, (t, name, k)
                np.testing.assert_array_equal(g, results[1][f"{name}/{k}"], err_msg=f"{t} threads, {name}, output {k}")


def test_small_weights_run_in_lanes_large_ones_by_columns(model, tmp_path):
    # the kernel above (hidden 64: 160 KiB of weights) cuts forests into lanes; hidden 256 (2.5 MiB) never does
    d, out, _, _, _ = model
    [source] = (d / "tl.cortex").glob("*.cc")
    assert "ws.lanes.split(" in source.read_text()
    entry = MODELS["treelstm"]
    onnx.save(entry.build_loop(entry.make_params(256, seed=2)), str(tmp_path / "big.onnx"))
    cortex.convert(str(tmp_path / "big.onnx"), str(tmp_path / "big.cortex.onnx"), strict=True)
    [big] = (tmp_path / "big.cortex").glob("*.cc")
    assert "const int64_t lanes = 0;" in big.read_text()

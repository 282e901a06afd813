"""Data-only edits of an honest converted model must never corrupt memory, hang or leak (docs/reliability.md,
"Kernels are code"; docs/contracts.md, "The converted node").

Every case starts from a TreeLSTM converted here (so its kernel is trusted on this machine) and edits only data: what
lies at the kernel's path. Each session is created in a child process, so a crash or a hang counts as a failure of
the test, never of pytest:

- a FIFO, a 2 GiB sparse file and a directory at the kernel's path: refused at once, before a byte is read.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

import cortex
from onnx_ops import structures as st
from onnx_ops.zoo import treelstm as tl

PARAMS = dict(hidden=8, embed_dim=4, vocab=12)
REPO = Path(cortex.__file__).resolve().parent.parent

# Creates a session for a model and runs it once; prints where it stopped and the message.
CHILD = textwrap.dedent(r"""
    import json, sys, time
    import numpy as np
    import cortex
    model, feeds = sys.argv[1:3]
    start = time.monotonic()
    try:
        session = cortex.InferenceSession(model)
    except Exception as e:
        out = {"phase": "create", "message": str(e)}
    else:
        try:
            outputs = session.run(None, dict(np.load(feeds)))
            out = {"phase": "ran", "dtypes": [str(o.dtype) for o in outputs]}
        except Exception as e:
            out = {"phase": "run", "message": str(e)}
    out["seconds"] = time.monotonic() - start
    print("RESULT " + json.dumps(out), flush=True)
""")


def _env() -> dict:
    """Children import this checkout's cortex and use the test session's trust store (conftest)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _child(script: str, *args, timeout: float) -> dict:
    """Runs `script` in a child; its RESULT line, or a failure that says how it died."""
    try:
        process = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                                 timeout=timeout, env=_env())
    except subprocess.TimeoutExpired:
        pytest.fail(f"the child did not finish within {timeout} s (a hang)")
    lines = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
    assert process.returncode == 0 and lines, (f"the child died (exit status {process.returncode}):\n"
                                               f"{process.stdout[-2000:]}{process.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """An honest conversion, its kernel compiled (and so trusted) here; feeds with a long chain of positions."""
    d = tmp_path_factory.mktemp("hostile")
    onnx.save(tl.build_loop(tl.make_params(**PARAMS, seed=1)), str(d / "tl.onnx"))
    cortex.convert(str(d / "tl.onnx"), str(d / "tl.cortex.onnx"), strict=True)
    forest = st.batch(st.sst_like_trees(64, np.random.default_rng(7), PARAMS["vocab"]))
    np.savez(d / "feeds.npz", words=forest.words, left=forest.left, right=forest.right, order=forest.order)
    return d


def _kernel_of(model: onnx.ModelProto) -> str:
    node = next(n for n in model.graph.node if n.op_type == "EPContext")
    return next(a.s.decode() for a in node.attribute if a.name == "ep_cache_context")


def test_the_honest_model_still_runs(converted):
    result = _child(CHILD, converted / "tl.cortex.onnx", converted / "feeds.npz", timeout=120)
    assert result == {**result, "phase": "ran", "dtypes": ["float32", "float32"]}


# ---- what lies at the kernel's path --------------------------------------------------------------------------


def _with_kernel_replaced(converted: Path, tmp_path: Path, replace) -> Path:
    """A copy of the model's folder whose kernel file is replaced by replace(path)."""
    folder = tmp_path / "model"
    shutil.copytree(converted, folder)
    kernel = folder / _kernel_of(onnx.load(str(folder / "tl.cortex.onnx")))
    kernel.unlink()
    replace(kernel)
    return folder / "tl.cortex.onnx"


def test_a_fifo_as_the_kernel_is_refused_at_once(converted, tmp_path):
    model = _with_kernel_replaced(converted, tmp_path, os.mkfifo)
    result = _child(CHILD, model, converted / "feeds.npz", timeout=60)  # before: blocked forever in open()
    assert result["phase"] == "create" and result["seconds"] < 20, result
    assert "is a FIFO, not a regular file" in result["message"], result["message"]


def test_a_huge_sparse_kernel_file_is_refused_unread(converted, tmp_path):
    def sparse(path):
        with open(path, "wb") as f:
            f.truncate(2 << 30)  # 2 GiB of holes: before, all of it was hashed
    model = _with_kernel_replaced(converted, tmp_path, sparse)
    result = _child(CHILD, model, converted / "feeds.npz", timeout=120)
    assert result["phase"] == "create", result
    assert f"is {2 << 30} bytes, more than a kernel may be ({512 << 20})" in result["message"], result["message"]


def test_a_directory_as_the_kernel_is_refused(converted, tmp_path):
    model = _with_kernel_replaced(converted, tmp_path, os.mkdir)
    result = _child(CHILD, model, converted / "feeds.npz", timeout=60)
    assert result["phase"] == "create", result
    assert "is a directory, not a regular file" in result["message"], result["message"]

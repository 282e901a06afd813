"""tools/cuda_rows.py: the TreeLSTM CUDA kernel with 1 and 4 rows per warp, timed and compared bit for bit (a GPU)."""
from __future__ import annotations

import json

import pytest


def test_rows_variants_run_and_agree(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from tools.cuda_rows import main

    out = tmp_path / "rows.json"
    assert main(["--hidden", "32", "--batches", "1,40", "--rows", "1,4", "--reps", "2", "--out", str(out)]) == 0
    records = json.loads(out.read_text())
    assert [(r["batch"], r["rows"]) for r in records] == [(1, 1), (1, 4), (40, 1), (40, 4)]
    assert all(r["us"] > 0 and "GPU kernel (events)" in r["steps"] for r in records)

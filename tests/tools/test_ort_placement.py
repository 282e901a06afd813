"""tools/ort_placement.py: the table the docs and graph_ops.EXACT_ELEMENTWISE cite, from a real ONNX Runtime."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import ort_placement  # noqa: E402


def test_exact_ops_keep_their_bits_in_every_place(capsys):
    assert ort_placement.main(["--ops", "Relu,MatMul,ReduceSum"]) == 0
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:4]]
            for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line}
    assert rows["Relu"] == ["0", "0"] and rows["MatMul"] == ["0", "0"]
    assert all(c.isdigit() for c in rows["ReduceSum"]), rows  # counted (how many varies with the CPU)

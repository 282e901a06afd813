"""tools/kernel_variants.py: the kernel alone against variants of its own source. The `scalar` build (element loops
left to the compiler, -fno-openmp-simd) computes what the vectorized one computes (to float rounding: vector and
scalar code may contract a multiply-add differently); the `no-products` variant differs (it is a diagnostic)."""
from __future__ import annotations

import pytest

pytest.importorskip("cortex._C", reason="cortex._C is not built")

from tools.kernel_variants import measure  # noqa: E402


@pytest.mark.parametrize("model", ["treelstm", "childsum"])
def test_variants_run_and_scalar_loops_agree_bitwise(model):
    results = measure(model, hidden=32, batch_size=3, precision="float32", variants=["no-products", "scalar"],
                      reps=2)
    assert set(results) == {"as-built", "no-products", "scalar"}
    assert results["as-built"]["difference"] == 0.0
    assert results["scalar"]["difference"] <= 1e-6
    assert results["no-products"]["difference"] > 0.0
    assert all(r["us"] > 0 and "levels" in r["steps"] for r in results.values())

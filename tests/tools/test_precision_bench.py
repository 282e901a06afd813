"""tools/precision_bench.py: both precisions (and ONNX Runtime with --ort) timed on several forests per batch size."""
from __future__ import annotations

import re

import pytest

from cortex.codegen import toolchain

pytest.importorskip("cortex._C", reason="cortex._C is not built")
HAS_BF16 = "avx512bf16" in (toolchain.host_cpu_features() or ())


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no AVX512-BF16")
def test_it_times_float32_bf16_and_ort_on_several_forests(capsys):
    from tools.precision_bench import main

    main(["--hidden", "16", "--batch", "1,3", "--reps", "1", "--block", "1", "--forests", "2", "--ort"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("hidden 16 batch")]
    assert len(lines) == 2
    for line, b in zip(lines, (1, 3)):
        assert re.match(rf"hidden 16 batch {b} \(2 forests\): float32 [\d.]+ ms, bf16 [\d.]+ ms \([\d.]+x\); "
                        r"ONNX Runtime [\d.]+ ms: float32 [\d.]+x, bf16 [\d.]+x$", line), line

"""Every zoo model's kernels called through their C ABI alone (tests/kernel_harness.py), at a hidden size where the
fused product + epilogue path runs (a multiple of 16 on the CPU): the CPU kernel matches ONNX Runtime on the original
model, in both forms; where a CUDA GPU is present, the CUDA kernel does too."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from onnx_ops.zoo import MODELS

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("cuda_check", ROOT / "tools" / "cuda_check.py")
cuda_check = importlib.util.module_from_spec(_spec)
sys.modules["cuda_check"] = cuda_check
_spec.loader.exec_module(cuda_check)


def _has_cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.mark.parametrize("form", ["loop", "treerec"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_kernel_matches_onnx_runtime(name, form, tmp_path):
    cuda = _has_cuda()
    built = cuda_check.build_kernels([name], [form], 32, cuda, tmp_path, jobs=1)[(name, form)]
    result = cuda_check.check_model(name, form, built, cuda, np.random.default_rng(7))
    assert result["status"] == "ok", result

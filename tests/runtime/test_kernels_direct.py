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


@pytest.mark.parametrize("name", ["treelstm", "treegru"])
def test_cuda_rows_per_warp_give_the_same_bits(name, tmp_path, monkeypatch):
    """A wide forest's products take their rows four at a time per warp (cuda.py, CudaEmitter.GEMM_ROWS); every dot
    product sums in the same order as with one row per warp, so the two kernels' outputs are the same bits."""
    if not _has_cuda():
        pytest.skip("needs a CUDA GPU")
    from cortex.codegen import generator
    from cortex.codegen.cuda import CudaEmitter
    from cortex.examples import structures as st
    from cortex.frontend import find_regions
    from cortex.passes import optimize
    from kernel_harness import Kernel
    from onnx_ops.zoo import batch, structures

    entry = MODELS[name]
    model = entry.build_loop(entry.make_params(64, seed=1))
    [region] = find_regions(model)
    program = optimize(region.program)
    items = structures(entry.structure, 40, np.random.default_rng(3), sst_dir=st.sst_dir_default(), vocab=50)
    feeds = entry.loop_feeds(batch(entry.structure, items))
    outputs = {}
    for rows in (1, 4):
        monkeypatch.setattr(CudaEmitter, "GEMM_ROWS", rows)
        gen = generator("cuda", program)
        kernel = Kernel(cuda_check.compile_source(gen.generate(f"rows{rows}"), True, tmp_path / f"rows{rows}.so"))
        args = cuda_check.to_device(cuda_check.kernel_inputs(model, gen, feeds), gen)
        outputs[rows] = [o.cpu().numpy() for o in kernel.run(args, len(program.tables))]
    assert "if (B > cortex::cuda::kWarps)" in generator("cuda", program).generate("check")  # the wide path exists
    for one, four in zip(outputs[1], outputs[4]):
        np.testing.assert_array_equal(one, four)

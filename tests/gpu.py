"""What the CUDA tests need to know about this machine: nvcc (CUDA compiles everywhere CI runs) and a GPU the
Cortex EP offers (the GPU tests run only there: tools/gpu_check.sh)."""
from __future__ import annotations

import onnxruntime as ort

import cortex
from cortex.codegen import toolchain


def nvcc_missing() -> str | None:
    try:
        toolchain.nvcc()
    except toolchain.ToolchainError as e:
        return str(e)
    return None


def cortex_gpus() -> list:
    cortex.session._ep_devices()
    return [d for d in ort.get_ep_devices()
            if d.ep_name == cortex.get_ep_name() and d.device.type == ort.OrtHardwareDeviceType.GPU]


def gpu_skip_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "no CUDA GPU (torch, used to look for one, is not importable)"
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        return "no CUDA GPU"
    if not cortex_gpus():
        return "no CUDA GPU offered by the Cortex EP (see cortex.session_options(device='cuda')'s error)"
    return nvcc_missing()

"""PyTorch peer: the natural per-node eager implementation (onnx_ops.zoo.torch_treelstm, "row_assign" style by
default) run under ``torch.inference_mode()`` on CPU."""

from __future__ import annotations

import numpy as np


def status() -> str | None:
    try:
        import torch  # noqa: F401
    except ImportError as e:
        return f"not installed ({e})"
    return None


def cuda_status() -> str | None:
    """None when a CUDA GPU is usable from PyTorch, else why not."""
    try:
        import torch
    except ImportError as e:
        return f"not installed ({e})"
    if not torch.cuda.is_available():
        return "not available on this machine (no CUDA GPU)"
    return None


class TorchEager:
    def __init__(self, module):
        import torch

        self.torch = torch
        self.module = module.eval()

    def __call__(self, forest) -> tuple[np.ndarray, np.ndarray]:
        t = self.torch
        args = [t.from_numpy(np.ascontiguousarray(a)) for a in (forest.words, forest.left, forest.right, forest.order)]
        with t.inference_mode():
            h, c = self.module(*args)
        return h.numpy(), c.numpy()

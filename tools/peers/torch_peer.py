"""PyTorch peer: the natural per-node eager implementation of each model (the style named in
tools/peers/models.py TORCH_STYLE, e.g. TreeLSTM "row_assign") run under ``torch.inference_mode()`` on CPU."""

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
    """Calls ``module`` with the Loop model's feeds of a structure, as tensors in the feeds' order; returns the
    outputs as a tuple of numpy arrays."""

    def __init__(self, module, feeds_fn):
        import torch

        self.torch = torch
        self.module = module.eval()
        self.feeds_fn = feeds_fn

    def __call__(self, structure) -> tuple:
        t = self.torch
        args = [t.from_numpy(np.ascontiguousarray(a)) for a in self.feeds_fn(structure).values()]
        with t.inference_mode():
            out = self.module(*args)
        if not isinstance(out, (tuple, list)):
            out = (out,)
        return tuple(o.numpy() for o in out)

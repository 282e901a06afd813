"""The TorchScript plumbing the PyTorch zoo modules share: the optional torch import, loading numpy params into a
module, and scripting + exporting with the TorchScript ONNX exporter (``dynamo=False``, opset 17, dynamic N and L).

The modules themselves (their coding styles) stay in :mod:`.torch_treelstm`, :mod:`.torch_models_a` and
:mod:`.torch_models_b`: they differ on purpose.
"""

from __future__ import annotations

import warnings
from typing import Callable, Mapping, Sequence

import numpy as np

try:
    import torch
    import torch.nn.functional as F
    from torch import Tensor, nn

    TORCH_AVAILABLE = True
except ImportError:  # pragma: no cover - exercised only without torch
    torch = F = Tensor = nn = None
    TORCH_AVAILABLE = False

__all__ = ["F", "TORCH_AVAILABLE", "Tensor", "WordModule", "dynamic_axes", "export_script", "load_params", "nn",
           "require_torch", "to_tensor", "torch"]

OPSET = 17


def require_torch(module: str) -> None:
    """ImportError naming ``module`` when torch is not installed."""
    if not TORCH_AVAILABLE:
        raise ImportError(f"torch is not installed; {module} needs it for make_module/export", name="torch")


def to_tensor(a: np.ndarray) -> "Tensor":
    return torch.from_numpy(np.ascontiguousarray(a))


def load_params(module: "nn.Module", values: Mapping[str, np.ndarray]) -> "nn.Module":
    """Copy numpy arrays into the module's parameters, by dotted name (``"W.weight"``, ``"cell.bias_hh"``), without
    recording gradients; returns the module."""
    with torch.no_grad():
        for name, value in values.items():
            module.get_parameter(name).copy_(to_tensor(value))
    return module


if TORCH_AVAILABLE:

    class WordModule(nn.Module):
        """Base of the word-embedding styles: ``hidden_size`` and ``embedding`` = nn.Embedding(vocab, embed_dim),
        registered first; each style adds its own cells in its own ``__init__`` and writes its own ``forward``."""

        def __init__(self, vocab: int, embed_dim: int, hidden: int):
            super().__init__()
            self.hidden_size = hidden
            self.embedding = nn.Embedding(vocab, embed_dim)

        @classmethod
        def from_params(cls, params) -> "WordModule":
            """The module sized by ``params`` (``vocab``, ``embed_dim``, ``hidden``), loaded, in eval mode."""
            return cls(params.vocab, params.embed_dim, params.hidden).load(params).eval()
else:  # pragma: no cover
    WordModule = None


def dynamic_axes(inputs: Sequence[str], outputs: Sequence[str]) -> dict[str, dict[int, str]]:
    """Axis 0 of every input and output is ``N``, except ``order``'s, which is ``L``."""
    return {name: {0: "L" if name == "order" else "N"} for name in [*inputs, *outputs]}


def export_script(make: Callable[[], "nn.Module"], feeds: Mapping[str, np.ndarray], path, outputs: Sequence[str],
                  ignore: type[Warning] = Warning) -> str:
    """Script the module ``make()`` and export it to ONNX at ``path`` with the example ``feeds`` (input name ->
    array, in the forward's order) and output names ``outputs``; warnings of category ``ignore`` are silenced.
    Returns ``str(path)``."""
    names = list(feeds)
    args = tuple(to_tensor(a) for a in feeds.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ignore)
        m = torch.jit.script(make())
        torch.onnx.export(
            m,
            args,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=names,
            output_names=list(outputs),
            dynamic_axes=dynamic_axes(names, outputs),
        )
    return str(path)

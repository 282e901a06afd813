"""Bring your PyTorch model: a recursive model from its two cells, no loop exporter needed.

Every recursive model is two loop-free functions: what a leaf computes from its inputs, and what an internal node
computes from its children's states and its inputs. :func:`export` exports each cell (an ordinary ``nn.Module``)
with torch's ONNX exporter (dynamo first, TorchScript trace as the fallback) into the bodies of one
``cortex.TreeRec`` node; :func:`convert` does that and ``cortex.convert`` in one call; :func:`run_reference` runs the
same cells in eager PyTorch, the ground truth. The calling convention of the cells: docs/bring-your-pytorch-model.md.

Importing this module needs torch (``import cortex`` does not).
"""
try:
    import torch as _torch  # noqa: F401
except ImportError as _e:  # pragma: no cover - exercised in a subprocess without torch
    raise ImportError("cortex.torch needs PyTorch: pip install torch onnxscript (onnxscript for the dynamo "
                      "exporter)", name="torch") from _e

from ._export import convert, export
from ._reference import run_reference

__all__ = ["convert", "export", "run_reference"]

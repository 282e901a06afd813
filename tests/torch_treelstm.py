"""Thin re-export: the natural PyTorch TreeLSTMs live in onnx_ops.zoo.torch_treelstm (shared with tools/bench.py)."""

from onnx_ops.zoo.torch_treelstm import *  # noqa: F401,F403
from onnx_ops.zoo.torch_treelstm import STYLES, TORCH_AVAILABLE, export, make_module  # noqa: F401

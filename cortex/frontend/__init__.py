"""ONNX -> Cortex IR."""
from .recognize import Region, find_regions

__all__ = ["Region", "find_regions"]

"""Cortex IR -> C++ source -> compiled kernel library."""
from .cpp import CodegenError, CppGenerator, KernelInput, pack_panels
from .toolchain import ToolchainError, compile_kernel

__all__ = ["CodegenError", "CppGenerator", "KernelInput", "pack_panels", "ToolchainError", "compile_kernel"]

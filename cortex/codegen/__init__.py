"""Cortex IR -> C++ source -> compiled kernel library."""
from .cpp import CppGenerator
from .plan import CodegenError, KernelInput, KernelPlan, pack_panels, plan_kernel
from .toolchain import ToolchainError, compile_kernel

__all__ = ["CodegenError", "CppGenerator", "KernelInput", "KernelPlan", "pack_panels", "plan_kernel", "ToolchainError", "compile_kernel"]

"""Cortex IR -> kernel plan -> C++ / CUDA source -> compiled kernel library, per backend (targets.py)."""
from .plan import CodegenError, KernelInput, KernelPlan, plan_kernel
from .targets import TARGETS, Backend, BuiltKernel, build_kernel, generator
from .toolchain import ToolchainError, compile_kernel

__all__ = ["CodegenError", "KernelInput", "KernelPlan", "plan_kernel", "TARGETS", "Backend", "BuiltKernel",
           "build_kernel", "generator", "ToolchainError", "compile_kernel"]

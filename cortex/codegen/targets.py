"""The code generation targets, in one place: what `cortex-convert --target` accepts. A target is its generator
(kernel plan -> source) and its toolchain (source -> kernel library); convert, rebuild and the CLI read this table.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..ir import nodes as ir
from .cpp import CppGenerator
from .cuda import CudaGenerator
from .toolchain import CpuTarget, compile_cuda_kernel, compile_kernel


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    generator: Callable  # Program -> an object with .generate(identity) -> source and .inputs
    compile: Callable  # (source, BuildOptions) -> Path of the kernel library


TARGETS = {
    "cpu": Target("cpu", "C++ for this machine's CPU level (g++)", CppGenerator,
                  lambda source, options: compile_kernel(source, options.cpu)),
    "cuda": Target("cuda", "one persistent CUDA kernel (nvcc, --cuda-arch)", CudaGenerator,
                   lambda source, options: compile_cuda_kernel(source, options.cuda_arch)),
}


@dataclass(frozen=True)
class BuildOptions:
    target: Target
    cpu: CpuTarget  # the host code's CPU level (a CUDA kernel's host part is compiled for the default level)
    cuda_arch: str = "sm_90"


@dataclass
class BuiltKernel:
    """A compiled kernel for one optimized program, not yet written beside a model."""
    program: ir.Program
    generator: object
    source_code: str
    library: Path  # in the kernel cache
    target: Target
    cpu: CpuTarget
    cuda_arch: str


def build_kernel(program: ir.Program, identity: str, options: BuildOptions) -> BuiltKernel:
    generator = options.target.generator(program)
    source_code = generator.generate(identity)
    library = options.target.compile(source_code, options)
    return BuiltKernel(program, generator, source_code, library, options.target, options.cpu, options.cuda_arch)

"""The code generation targets, in one place: a backend per target (what `cortex-convert --target` accepts).

A backend carries its own options (a CPU level; a CUDA architecture), what the kernel plan asks of it (its weight
layout, its panel width, how its products read their operands), its renderings (the element dialect, the emitter),
its toolchain, and the notes a converted node records about it. `convert`, `rebuild`, the CLI and the session ask
this registry; nothing else names a target.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..ir import nodes as ir
from . import cstyle
from .cpp import CpuEmitter
from .cuda import CudaDialect, CudaEmitter
from .layouts import NR, PANELS, TRANSPOSED, WeightLayout
from .plan import COPY_PER_WORKER, IN_PLACE
from .toolchain import CpuTarget, compile_cuda_kernel, compile_kernel, cpu_target

DEFAULT_CUDA_ARCH = "sm_90"


@dataclass(frozen=True)
class Backend:
    """A target configured for one build. `cpu`: the CPU level of the kernel's host code (the EP checks the CPU
    features it records before loading the kernel)."""
    cpu: CpuTarget

    name: ClassVar[str]
    description: ClassVar[str]
    weight_layout: ClassVar[WeightLayout]
    panel_width: ClassVar[int]  # fused product columns come in multiples of it
    operand_reads: ClassVar[str]  # plan.COPY_PER_WORKER | plan.IN_PLACE
    dialect: ClassVar[type]  # cstyle.Dialect: where per-position values live in the generated code
    emitter: ClassVar[type]  # emitter.KernelEmitter

    @classmethod
    def configure(cls, cpu: str | None = None, cuda_arch: str | None = None) -> "Backend":
        raise NotImplementedError

    @classmethod
    def from_notes(cls, notes: dict, cpu: str | None = None) -> "Backend":
        """The backend to rebuild a converted node's kernel on this machine (cortex rebuild)."""
        raise NotImplementedError

    def generator(self, program: ir.Program):
        return self.emitter(program, self)

    def compile(self, source: str) -> Path:
        raise NotImplementedError

    def notes(self) -> dict:
        """What the converted node records about the kernel's target (docs/contracts.md)."""
        return {"target": self.name, "cpu_arch": self.cpu.arch, "cpu_level": self.cpu.level,
                "cpu_features": list(self.cpu.features)}

    def built_for(self) -> str:
        """For people: what the kernel was compiled for."""
        return self.cpu.level


@dataclass(frozen=True)
class CpuBackend(Backend):
    name = "cpu"
    description = "C++ for this machine's CPU level (g++)"
    weight_layout = PANELS
    panel_width = NR
    operand_reads = COPY_PER_WORKER
    dialect = cstyle.Dialect
    emitter = CpuEmitter

    @classmethod
    def configure(cls, cpu=None, cuda_arch=None) -> "CpuBackend":
        return cls(cpu_target(cpu))

    @classmethod
    def from_notes(cls, notes, cpu=None) -> "CpuBackend":
        return cls.configure(cpu=cpu)  # this machine's level (or the one asked for), whatever it was built for

    def compile(self, source: str) -> Path:
        return compile_kernel(source, self.cpu)


@dataclass(frozen=True)
class CudaBackend(Backend):
    cuda_arch: str = DEFAULT_CUDA_ARCH

    name = "cuda"
    description = "one persistent CUDA kernel (nvcc, --cuda-arch)"
    weight_layout = TRANSPOSED
    panel_width = 1
    operand_reads = IN_PLACE
    dialect = CudaDialect
    emitter = CudaEmitter

    @classmethod
    def configure(cls, cpu=None, cuda_arch=None) -> "CudaBackend":
        return cls(cpu_target(cpu), cuda_arch or DEFAULT_CUDA_ARCH)

    @classmethod
    def from_notes(cls, notes, cpu=None) -> "CudaBackend":
        return cls.configure(cpu=cpu, cuda_arch=str(notes.get("cuda_arch", DEFAULT_CUDA_ARCH)))

    def compile(self, source: str) -> Path:
        return compile_cuda_kernel(source, self.cuda_arch)

    def notes(self) -> dict:
        return {**super().notes(), "cuda_arch": self.cuda_arch}

    def built_for(self) -> str:
        return self.cuda_arch


TARGETS = {backend.name: backend for backend in (CpuBackend, CudaBackend)}


def generator(target: str, program: ir.Program):
    """The emitter of `program` for a target with its default options (tests and tools)."""
    return TARGETS[target].configure().generator(program)


@dataclass
class BuiltKernel:
    """A compiled kernel for one optimized program, not yet written beside a model."""
    program: ir.Program
    generator: object  # the emitter: its plan's inputs are the converted node's inputs
    source_code: str
    library: Path  # in the kernel cache
    backend: Backend


def build_kernel(program: ir.Program, identity: str, backend: Backend) -> BuiltKernel:
    generator = backend.generator(program)
    source_code = generator.generate(identity)
    return BuiltKernel(program, generator, source_code, backend.compile(source_code), backend)

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
from .cpp import PRODUCTS, CpuEmitter, Products
from .cuda import CudaDialect, CudaEmitter
from .layouts import NR, TRANSPOSED, WeightLayout
from .plan import COPY_PER_WORKER, IN_PLACE
from .toolchain import CpuTarget, ToolchainError, compile_cuda_kernel, compile_kernel, cpu_target, host_cpu_features

DEFAULT_CUDA_ARCH = "sm_90"
PRECISIONS = ("float32", "bf16")  # of the matrix products (cortex-convert --precision); float32 is the default


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
    def configure(cls, cpu: str | None = None, cuda_arch: str | None = None,
                  precision: str | None = None) -> "Backend":
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


# bf16 products need AVX512-BF16 (vdpbf16ps) on top of AVX-512; AMX tiles are used where the CPU has them too.
BF16_EXTENSIONS = ("-mavx512bf16",)
AMX_EXTENSIONS = ("-mamx-tile", "-mamx-bf16")


def bf16_cpu_target(level: str | None) -> CpuTarget:
    """The CPU target of a kernel with bf16 products: the level plus AVX512-BF16 (and AMX where this host has it);
    ToolchainError, one clear line, where the level or this CPU has neither."""
    base = cpu_target(level)
    host = host_cpu_features()
    if base.level == "native":
        if "avx512bf16" not in base.features:
            raise ToolchainError("--precision bf16 needs AVX512-BF16 (AMX where present); this CPU has neither: "
                                 "convert with the default --precision float32")
        return base
    if "avx512f" not in base.features:
        raise ToolchainError(f"--precision bf16 needs AVX512-BF16 or AMX; CPU level {base.level} has neither (bf16 "
                             f"products build on AVX-512: use --cpu x86-64-v4 or native on a CPU with AVX512-BF16, "
                             f"or the default --precision float32)")
    if host is not None and "avx512bf16" not in host:
        raise ToolchainError("--precision bf16 needs AVX512-BF16 or AMX; this CPU has neither: convert with the "
                             "default --precision float32")
    amx = host is not None and {"amx-tile", "amx-bf16"} <= host
    return cpu_target(base.level, BF16_EXTENSIONS + (AMX_EXTENSIONS if amx else ()))


@dataclass(frozen=True)
class CpuBackend(Backend):
    """`cpu` picks the products' micro-kernel (csrc/runtime/gemm.h follows the level's -march: AVX-512, AVX2 or
    portable), `precision` their element type and so the weights' layout (float32: `panels`; bf16: `panels_bf16`,
    opt-in, AVX512-BF16 or AMX)."""
    precision: str = "float32"

    name = "cpu"
    description = "C++ for this machine's CPU level (g++)"
    panel_width = NR
    operand_reads = COPY_PER_WORKER
    dialect = cstyle.Dialect
    emitter = CpuEmitter

    @property
    def products(self) -> Products:
        return PRODUCTS[self.precision]

    @property
    def weight_layout(self) -> WeightLayout:
        return self.products.layout

    @property
    def micro_kernel(self) -> str:
        """The product micro-kernel the level compiles (gemm.h's gemm_isa(), gemm_bf16.h's for bf16)."""
        features = set(self.cpu.features)
        if self.precision == "bf16":
            return "amx" if {"amx-tile", "amx-bf16"} <= features else "avx512bf16"
        if "avx512f" in features:
            return "avx512"
        return "avx2" if {"avx2", "fma"} <= features else "portable"

    @classmethod
    def configure(cls, cpu=None, cuda_arch=None, precision=None) -> "CpuBackend":
        precision = precision or "float32"
        if precision not in PRECISIONS:
            raise ToolchainError(f"unknown precision '{precision}' (choose from {', '.join(PRECISIONS)})")
        return cls(bf16_cpu_target(cpu) if precision == "bf16" else cpu_target(cpu), precision)

    @classmethod
    def from_notes(cls, notes, cpu=None) -> "CpuBackend":
        # this machine's level (or the one asked for), whatever it was built for; the precision it was converted with
        return cls.configure(cpu=cpu, precision=str(notes.get("precision", "float32")))

    def compile(self, source: str) -> Path:
        return compile_kernel(source, self.cpu)

    def notes(self) -> dict:
        notes = {**super().notes(), "micro_kernel": self.micro_kernel}
        if self.precision != "float32":
            notes["precision"] = self.precision
        return notes

    def built_for(self) -> str:
        return f"{self.cpu.level} ({self.micro_kernel} products{', bf16' if self.precision == 'bf16' else ''})"


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
    def configure(cls, cpu=None, cuda_arch=None, precision=None) -> "CudaBackend":
        if precision not in (None, "float32"):
            raise ToolchainError(f"--precision {precision} is for the CPU target; CUDA kernels compute in float32")
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

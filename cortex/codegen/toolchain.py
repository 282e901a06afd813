"""Compiles generated kernel source with the system toolchain for a stated CPU level; caches the result by content
hash (source, compiler, flags, level).

CPU levels (`cortex-convert --cpu`): the x86-64 micro-architecture levels `x86-64-v2`, `x86-64-v3` (AVX2, FMA,
BMI2), `x86-64-v4` (AVX-512), plain `x86-64`, and `native` (everything the converting host has). The default is
the portable `x86-64-v3` where the host has it (the runtime's AVX2/FMA GEMM path), else `x86-64-v2`. A kernel
records the CPU features its level lets the compiler use (`CpuTarget.features`, names from
csrc/runtime/cpu_features.def); the EP checks them before it loads the kernel.
"""
from __future__ import annotations

import hashlib
import os
import platform
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .._paths import runtime_include_dir

# Neither -fno-math-errno nor -fno-trapping-math changes a result; both let loops vectorize. -fno-gnu-unique: the
# static locals of std:: templates (std::to_string's digit table) would be STB_GNU_UNIQUE symbols, and glibc never
# unloads a library that has one; the EP unloads a kernel when no session uses it.
BASE_FLAGS = ("-O3", "-std=c++17", "-fPIC", "-shared", "-fvisibility=hidden", "-fno-gnu-unique", "-pthread",
              "-fno-math-errno", "-fno-trapping-math")
X86_LEVELS = ("x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4")
CPU_LEVELS = X86_LEVELS + ("native",)
# Extra flags for every kernel compile (the sanitizer build sets -fsanitize=...); part of the cache key.
EXTRA_FLAGS_ENV = "CORTEX_KERNEL_CXXFLAGS"


class ToolchainError(RuntimeError):
    pass


def cache_dir() -> Path:
    root = os.environ.get("CORTEX_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "cortex")
    path = Path(root) / "kernels"
    path.mkdir(parents=True, exist_ok=True)
    return path


def compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise ToolchainError("no C++ compiler found: install g++ (or set CXX) to compile Cortex kernels")
    return cxx


# ---- CPU levels and features -----------------------------------------------------------------------------------

_FEATURE_LINE = re.compile(r'^CORTEX_CPU_FEATURE\("([^"]+)",\s*(\w+),\s*"([^"]+)"\)\s*$')


@lru_cache(maxsize=None)
def cpu_feature_table() -> tuple:
    """((name, compiler macro, /proc/cpuinfo flag), ...) from csrc/runtime/cpu_features.def."""
    text = (runtime_include_dir() / "cpu_features.def").read_text()
    return tuple(m.groups() for m in map(_FEATURE_LINE.match, text.splitlines()) if m)


def machine() -> str:
    """The host architecture as recorded in converted models (x86_64, aarch64, ...)."""
    name = platform.machine().lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(name, name)


def host_cpu_features(cpuinfo: str = "/proc/cpuinfo") -> frozenset | None:
    """The feature names (cpu_features.def) this host's CPU has, from /proc/cpuinfo; None where unknown."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return frozenset(name for name, _, flag in cpu_feature_table() if flag in flags)
    except OSError:
        pass
    return None


@dataclass(frozen=True)
class CpuTarget:
    """What a kernel is compiled for: the level, the compiler flags it means, and the CPU features it needs."""
    level: str
    arch: str
    flags: tuple
    features: tuple  # names from cpu_features.def, sorted

    def missing_on(self, host: frozenset | None) -> list:
        """The needed features `host` lacks ([] when the host's features are unknown)."""
        return [] if host is None else [f for f in self.features if f not in host]


@lru_cache(maxsize=None)
def _compiler_features(cxx: str, flags: tuple) -> tuple:
    """The feature names whose macro the compiler defines with `flags`."""
    result = subprocess.run([cxx, *flags, "-dM", "-E", "-x", "c++", os.devnull], capture_output=True, text=True)
    if result.returncode != 0:
        raise ToolchainError(f"{cxx} rejects {' '.join(flags)}: {result.stderr.strip()[-500:]}")
    defined = {line.split()[1] for line in result.stdout.splitlines() if line.startswith("#define ")}
    return tuple(sorted(name for name, macro, _ in cpu_feature_table() if macro in defined))


def default_cpu_level() -> str:
    """x86-64-v3 where the host has it (AVX2, FMA, BMI2, ...), else x86-64-v2 (else x86-64); native elsewhere."""
    if machine() != "x86_64":
        return "native"
    host = host_cpu_features()
    if host is None:
        return "x86-64-v2"
    for level in ("x86-64-v3", "x86-64-v2"):
        if not cpu_target(level).missing_on(host):
            return level
    return "x86-64"


def cpu_target(level: str | None = None) -> CpuTarget:
    """The target for a level name (None: the default level)."""
    level = level or default_cpu_level()
    if level not in CPU_LEVELS:
        raise ToolchainError(f"unknown CPU level '{level}' (choose from {', '.join(CPU_LEVELS)})")
    arch = machine()
    if level in X86_LEVELS and arch != "x86_64":
        raise ToolchainError(f"CPU level '{level}' is for x86-64; this host is {arch} (use --cpu native)")
    flags = (f"-march={level}",)
    features = _compiler_features(compiler(), flags) if arch == "x86_64" else ()
    return CpuTarget(level, arch, flags, features)


def extra_flags() -> tuple:
    return tuple(shlex.split(os.environ.get(EXTRA_FLAGS_ENV, "")))


# ---- compiling and caching -------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _toolchain_fingerprint(cxx: str) -> str:
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    include = runtime_include_dir()
    headers = sorted([*include.glob("*.h"), *include.glob("*.def")])
    digest = hashlib.sha256(version.encode())
    for h in headers:
        digest.update(h.name.encode())
        digest.update(h.read_bytes())
    return digest.hexdigest()


def source_hash(source: str, target: CpuTarget | None = None) -> str:
    target = target or cpu_target()
    cxx = compiler()
    digest = hashlib.sha256(source.encode())
    digest.update(_toolchain_fingerprint(cxx).encode())
    digest.update(" ".join((*BASE_FLAGS, *target.flags, *extra_flags())).encode())
    digest.update(f"{target.arch} {target.level} {','.join(target.features)}".encode())
    if target.level == "native":  # -march=native means this host's CPU: a shared cache must not mix hosts
        digest.update(",".join(sorted(host_cpu_features() or ())).encode())
    return digest.hexdigest()


def compile_kernel(source: str, target: CpuTarget | None = None) -> Path:
    """Returns the path of the compiled kernel library for `source` and `target` (default: the default CPU level),
    compiling it unless cached."""
    target = target or cpu_target()
    key = source_hash(source, target)
    out = cache_dir() / f"kernel_{key[:32]}.so"
    if out.is_file():
        return out
    cxx = compiler()
    with tempfile.TemporaryDirectory(prefix="cortex_build_") as tmp:
        src = Path(tmp) / "kernel.cc"
        src.write_text(source)
        tmp_out = Path(tmp) / "kernel.so"
        cmd = [cxx, *BASE_FLAGS, *target.flags, *extra_flags(), f"-I{runtime_include_dir()}", str(src),
               "-o", str(tmp_out)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise ToolchainError(f"compiling the Cortex kernel failed:\n{result.stderr[-4000:]}")
        # Atomic publish: concurrent converters never see a half-written library.
        staged = cache_dir() / f".{out.name}.{os.getpid()}"
        shutil.copyfile(tmp_out, staged)
        os.replace(staged, out)
    return out


# ---- CUDA ------------------------------------------------------------------------------------------------------

CUDA_FLAGS = ("-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC,-fvisibility=hidden,-fno-gnu-unique", "-lineinfo")
_CUDA_ARCH = re.compile(r"^sm_[0-9]{2,3}a?$")


def nvcc() -> str:
    path = os.environ.get("NVCC") or shutil.which("nvcc") or (
        "/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
    if not path:
        raise ToolchainError("no CUDA compiler found: install the CUDA toolkit (nvcc) or set NVCC to compile CUDA "
                             "kernels (--target cuda)")
    return path


@lru_cache(maxsize=None)
def _nvcc_fingerprint(path: str) -> str:
    version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    include = runtime_include_dir()
    digest = hashlib.sha256(version.encode())
    for h in sorted([*include.glob("*.h"), *include.glob("*.cuh"), *include.glob("*.def")]):
        digest.update(h.name.encode())
        digest.update(h.read_bytes())
    return digest.hexdigest()


def compile_cuda_kernel(source: str, arch: str = "sm_90") -> Path:
    """The CUDA kernel library for `source` compiled for `arch` (sm_90 for Hopper), compiling it unless cached."""
    if not _CUDA_ARCH.match(arch):
        raise ToolchainError(f"unknown CUDA architecture '{arch}' (expected sm_XX, e.g. sm_90)")
    path = nvcc()
    digest = hashlib.sha256(source.encode())
    digest.update(_nvcc_fingerprint(path).encode())
    digest.update(" ".join((*CUDA_FLAGS, arch)).encode())
    out = cache_dir() / f"kernel_cuda_{digest.hexdigest()[:32]}.so"
    if out.is_file():
        return out
    with tempfile.TemporaryDirectory(prefix="cortex_build_") as tmp:
        src = Path(tmp) / "kernel.cu"
        src.write_text(source)
        tmp_out = Path(tmp) / "kernel.so"
        cmd = [path, *CUDA_FLAGS, f"-arch={arch}", f"-I{runtime_include_dir()}", str(src), "-o", str(tmp_out)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise ToolchainError(f"compiling the Cortex CUDA kernel failed:\n{result.stderr[-4000:]}")
        staged = cache_dir() / f".{out.name}.{os.getpid()}"
        shutil.copyfile(tmp_out, staged)
        os.replace(staged, out)
    return out

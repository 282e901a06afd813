"""Compiles generated kernel source with the system toolchain for a stated CPU level; caches the result by content
hash (source, compiler, flags, level).

CPU levels (`cortex-convert --cpu`): the x86-64 micro-architecture levels `x86-64-v2`, `x86-64-v3` (AVX2, FMA,
BMI2), `x86-64-v4` (AVX-512), plain `x86-64`, and `native` (everything the converting host has). The default is
the best portable level the host runs: `x86-64-v4` where it has AVX-512 (the runtime's AVX-512 micro-kernel), else
`x86-64-v3` (AVX2/FMA), else `x86-64-v2`. A kernel
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
import signal
import stat
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .._paths import runtime_include_dir
from ..artifacts import MAX_KERNEL_BYTES

# Neither -fno-math-errno nor -fno-trapping-math changes a result; both let loops vectorize. -fno-gnu-unique: the
# static locals of std:: templates (std::to_string's digit table) would be STB_GNU_UNIQUE symbols, and glibc never
# unloads a library that has one; the EP unloads a kernel when no session uses it. -fopenmp-simd honours the
# generated element loops' `#pragma omp simd` (no OpenMP runtime).
BASE_FLAGS = ("-O3", "-std=c++17", "-fPIC", "-shared", "-fvisibility=hidden", "-fno-gnu-unique", "-pthread",
              "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd")
X86_LEVELS = ("x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4")
CPU_LEVELS = X86_LEVELS + ("native",)
# Extra flags for every kernel compile (the sanitizer build sets -fsanitize=...); part of the cache key.
EXTRA_FLAGS_ENV = "CORTEX_KERNEL_CXXFLAGS"

# The compile budget: generated source larger than this is refused before the compiler starts (the largest zoo
# kernel is about 50 KB); a compiler still running after the time limit is killed, with its children; a library
# larger than the size limit is refused (the EP refuses larger files too).
MAX_SOURCE_BYTES = 1 << 20
COMPILE_TIMEOUT_S = 600
COMPILE_TIMEOUT_ENV = "CORTEX_COMPILE_TIMEOUT"


class ToolchainError(RuntimeError):
    pass


CACHE_DIR_ENV = "CORTEX_CACHE_DIR"
_private_fallback = None


def cache_root() -> Path:
    """Cortex's cache (compiled kernels, rebuilt models): $CORTEX_CACHE_DIR, else ~/.cache/cortex. What it holds is
    reused as trusted code, so it must be private (cortex.trust.not_private: the trust store's rule); a cache others
    could write into is not used at all: this process compiles into a private temporary folder instead, and says so
    once."""
    global _private_fallback
    from ..trust import not_private

    root = Path(os.environ.get(CACHE_DIR_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "cortex"))
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        why = not_private(root)
    except OSError as e:
        why = f"it cannot be created ({e.strerror})"
    if why is None:
        return root
    if _private_fallback is None:
        _private_fallback = Path(tempfile.mkdtemp(prefix="cortex-cache-"))
        warnings.warn(f"Cortex does not use the cache {root}: {why}. Kernels are compiled into {_private_fallback} "
                      f"for this process; make the cache yours alone (chmod go-w) or set {CACHE_DIR_ENV}.",
                      stacklevel=2)
    return _private_fallback


def cache_dir() -> Path:
    """The compiled kernels' folder in the cache."""
    path = cache_root() / "kernels"
    path.mkdir(exist_ok=True, mode=0o700)
    return path


def cached_file(path: Path) -> bool:
    """True when `path` is a cache entry this user made: a regular file (not a link, not a FIFO) of the user's, which
    no one else may write, of a kernel's size at most. Anything else is compiled again and replaced."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return (stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o022
            and info.st_size <= MAX_KERNEL_BYTES)


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
    """The best x86-64 level this host runs: x86-64-v4 (AVX-512), x86-64-v3 (AVX2, FMA, BMI2, ...), x86-64-v2, else
    x86-64; x86-64-v2 where the host's features are unknown; native off x86-64."""
    if machine() != "x86_64":
        return "native"
    host = host_cpu_features()
    if host is None:
        return "x86-64-v2"
    for level in ("x86-64-v4", "x86-64-v3", "x86-64-v2"):
        if not cpu_target(level).missing_on(host):
            return level
    return "x86-64"


def cpu_target(level: str | None = None, extensions: tuple = ()) -> CpuTarget:
    """The target for a level name (None: the default level), with optional ISA extensions on top of it (`-m` flags
    such as `-mavx512bf16`; their features are recorded like the level's)."""
    level = level or default_cpu_level()
    if level not in CPU_LEVELS:
        raise ToolchainError(f"unknown CPU level '{level}' (choose from {', '.join(CPU_LEVELS)})")
    arch = machine()
    if level in X86_LEVELS and arch != "x86_64":
        raise ToolchainError(f"CPU level '{level}' is for x86-64; this host is {arch} (use --cpu native)")
    flags = (f"-march={level}", *extensions)
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


def compile_timeout() -> float:
    try:
        return max(1.0, float(os.environ.get(COMPILE_TIMEOUT_ENV) or COMPILE_TIMEOUT_S))
    except ValueError:
        return float(COMPILE_TIMEOUT_S)


def _run_compiler(cmd: list, what: str) -> None:
    """Runs a compiler in its own process group, killed with every child (cc1plus, ptxas) past the time limit."""
    limit = compile_timeout()
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise ToolchainError(f"compiling the {what} took more than {limit:g} s, the compile budget "
                             f"({COMPILE_TIMEOUT_ENV} raises it); the compiler was stopped") from None
    if process.returncode != 0:
        raise ToolchainError(f"compiling the {what} failed:\n{stderr[-4000:]}")


def _build(source: str, suffix: str, cmd_for, out: Path, what: str) -> Path:
    """Compiles `source` (within the compile budget) into the cache entry `out`, published atomically."""
    if len(source.encode()) > MAX_SOURCE_BYTES:
        raise ToolchainError(f"the generated {what} is {len(source.encode())} bytes of source, over the compile "
                             f"budget of {MAX_SOURCE_BYTES} bytes; Cortex does not compile it")
    with tempfile.TemporaryDirectory(prefix="cortex_build_") as tmp:
        src = Path(tmp) / f"kernel{suffix}"
        src.write_text(source)
        tmp_out = Path(tmp) / "kernel.so"
        _run_compiler(cmd_for(src, tmp_out), what)
        size = tmp_out.stat().st_size
        if size > MAX_KERNEL_BYTES:
            raise ToolchainError(f"the compiled {what} is {size} bytes, over the limit of {MAX_KERNEL_BYTES}")
        # Atomic publish: concurrent converters never see a half-written library.
        staged = out.parent / f".{out.name}.{os.getpid()}"
        shutil.copyfile(tmp_out, staged)
        os.chmod(staged, 0o644)
        os.replace(staged, out)
    return out


def compile_kernel(source: str, target: CpuTarget | None = None) -> Path:
    """Returns the path of the compiled kernel library for `source` and `target` (default: the default CPU level),
    compiling it unless cached."""
    target = target or cpu_target()
    key = source_hash(source, target)
    out = cache_dir() / f"kernel_{key[:32]}.so"
    if cached_file(out):
        return out
    cxx = compiler()
    return _build(source, ".cc", lambda src, dst: [cxx, *BASE_FLAGS, *target.flags, *extra_flags(),
                                                   f"-I{runtime_include_dir()}", str(src), "-o", str(dst)],
                  out, "Cortex kernel")


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
    if cached_file(out):
        return out
    return _build(source, ".cu", lambda src, dst: [path, *CUDA_FLAGS, f"-arch={arch}", f"-I{runtime_include_dir()}",
                                                   str(src), "-o", str(dst)],
                  out, "Cortex CUDA kernel")

"""Compiles generated kernel source with the system toolchain; caches the result by content hash."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

from .._paths import runtime_include_dir

CXX_FLAGS = ("-O3", "-march=native", "-std=c++17", "-fPIC", "-shared", "-fvisibility=hidden", "-pthread",
             "-fno-math-errno", "-fno-trapping-math")  # neither changes a result; both let loops vectorize


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


@lru_cache(maxsize=None)
def _toolchain_fingerprint(cxx: str) -> str:
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    headers = sorted(runtime_include_dir().glob("*.h"))
    digest = hashlib.sha256(version.encode())
    for h in headers:
        digest.update(h.name.encode())
        digest.update(h.read_bytes())
    return digest.hexdigest()


def source_hash(source: str) -> str:
    cxx = compiler()
    digest = hashlib.sha256(source.encode())
    digest.update(_toolchain_fingerprint(cxx).encode())
    digest.update(" ".join(CXX_FLAGS).encode())
    return digest.hexdigest()


def compile_kernel(source: str) -> Path:
    """Returns the path of the compiled kernel library for `source`, compiling it unless cached."""
    key = source_hash(source)
    out = cache_dir() / f"kernel_{key[:32]}.so"
    if out.is_file():
        return out
    cxx = compiler()
    with tempfile.TemporaryDirectory(prefix="cortex_build_") as tmp:
        src = Path(tmp) / "kernel.cc"
        src.write_text(source)
        tmp_out = Path(tmp) / "kernel.so"
        cmd = [cxx, *CXX_FLAGS, f"-I{runtime_include_dir()}", str(src), "-o", str(tmp_out)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise ToolchainError(f"compiling the Cortex kernel failed:\n{result.stderr[-4000:]}")
        # Atomic publish: concurrent converters never see a half-written library.
        staged = cache_dir() / f".{out.name}.{os.getpid()}"
        shutil.copyfile(tmp_out, staged)
        os.replace(staged, out)
    return out

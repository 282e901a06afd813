"""Machine description for benchmark reports: CPU model, cores, memory, package versions."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import subprocess


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [x for x in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if x in flags]
    except OSError:
        pass
    return []


def _mem_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def _git_rev() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5).stdout.strip() or "unknown"
        # uncommitted changes to the compiler or runtime make the numbers those of the working tree, not of rev
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "cortex", "csrc", "onnx_ops"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except Exception:  # noqa: BLE001
        return "unknown"


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def describe() -> dict:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    d = {
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "logical_cores": os.cpu_count(),
        "usable_cores": affinity,
        "memory_gib": _mem_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "onnx": _version("onnx"),
        "onnxruntime": _version("onnxruntime"),
        "torch": _version("torch"),
        "dynet": _version("dyNET38") if _version("dyNET38") != "not installed" else _version("dyNET"),
        "cortex": _version("onnxruntime-ep-cortex"),
        "cortex_git": _git_rev(),
        "CORTEX_NUM_THREADS": os.environ.get("CORTEX_NUM_THREADS", "(unset: all cores)"),
        "load_average_start": load_average(),
    }
    return d


def one_line(d: dict) -> str:
    return (f"{d['cpu']}, {d['usable_cores']} cores ({', '.join(d['cpu_flags']) or 'no AVX2'}), "
            f"{d['memory_gib']} GiB; Python {d['python']}, onnxruntime {d['onnxruntime']}, torch {d['torch']}, "
            f"dynet {d['dynet']}, numpy {d['numpy']}, cortex {d['cortex']} (git {d['cortex_git']})")

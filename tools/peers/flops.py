"""Model FLOPs (2·M·K·N of the matrix products; the same count for every system) and the matrix-product peak
measured in the same run."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np

# tools/bench.py keeps numpy's BLAS to one thread in its own process (its idle threads spin beside the system being
# timed) and names here the setting the peak's child process gets ("": the BLAS default, every core).
PEAK_BLAS_THREADS_ENV = "CORTEX_BENCH_PEAK_BLAS_THREADS"
_CHILD_PEAK = """
import sys, time
import numpy as np
n = int(sys.argv[1])
rng = np.random.default_rng(0)
a = rng.standard_normal((n, n), dtype=np.float32)
b = rng.standard_normal((n, n), dtype=np.float32)
a @ b
best = float("inf")
for _ in range(5):
    t0 = time.perf_counter()
    for _ in range(3):
        a @ b
    best = min(best, (time.perf_counter() - t0) / 3)
print(best)
"""


def treelstm_flops(params, forest) -> int:
    """TreeLSTM FLOPs of one forward over ``forest``, counted per *visit*: a leaf's projection x[D] @ W[D, 3H] is
    2·D·3H, an internal node's [h_l; h_r][2H] @ U[2H, 5H] is 2·2H·5H. Elementwise work is not counted. Every system
    is charged the same count (Cortex folds the leaf projection into the embedding at conversion time, but the
    model's FLOPs are what the rows report)."""
    H, D = params.hidden, params.embed_dim
    order = np.asarray(forest.order)
    is_leaf = np.asarray(forest.left)[order] < 0
    leaves = int(is_leaf.sum())
    internal = int(order.shape[0]) - leaves
    return leaves * 2 * D * 3 * H + internal * 2 * (2 * H) * (5 * H)


def _time_best(fn, reps: int, trials: int = 5) -> float:
    best = float("inf")
    for _ in range(trials):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def fma_peak(cores: int) -> float | None:
    """Register-only FMA throughput of one thread (cortex._C) times ``cores``: the compute ceiling, GFLOP/s."""
    try:
        from cortex import _C  # type: ignore

        return float(_C._bench_fma_peak_1thread(5_000_000)) * cores or None
    except Exception:  # noqa: BLE001
        return None


def combine_peaks(first: dict, second: dict) -> dict:
    """The larger of two peak measurements (start and end of a run): on a shared machine a single measurement
    can be depressed by other load."""
    out = dict(first)
    for k in ("numpy_matmul_gflops", "cortex_gemm_packed_gflops"):
        vals = [d.get(k) for d in (first, second) if d.get(k)]
        out[k] = max(vals) if vals else None
        out[k + "_runs"] = [d.get(k) for d in (first, second)]
    cands = {"numpy float32 matmul %d^3" % out["matmul_n"]: out["numpy_matmul_gflops"]}
    if out.get("cortex_gemm_packed_gflops"):
        cands["cortex._C.gemm_packed %d^3" % out["matmul_n"]] = out["cortex_gemm_packed_gflops"]
    src = max(cands, key=cands.get)
    out["peak_gflops"], out["peak_source"] = cands[src], src + " (best of start and end of the run)"
    return out


def _numpy_matmul_seconds(n: int, a, b) -> float:
    """Best seconds of numpy's n³ float32 matmul: in a child process with the BLAS threads tools/bench.py set aside
    for the peak, else here (warm-up first: thread pool, pages)."""
    if PEAK_BLAS_THREADS_ENV in os.environ:
        env = dict(os.environ)
        threads = env.pop(PEAK_BLAS_THREADS_ENV)
        if threads:
            env["OPENBLAS_NUM_THREADS"] = threads
        else:
            env.pop("OPENBLAS_NUM_THREADS", None)
        done = subprocess.run([sys.executable, "-c", _CHILD_PEAK, str(n)], env=env, capture_output=True, text=True,
                              check=True)
        return float(done.stdout.strip().splitlines()[-1])
    a @ b
    return _time_best(lambda: a @ b, reps=3)


def matmul_peak(n: int = 1024) -> dict:
    """Measured float32 matrix-product peak of this machine (GFLOP/s, best of several runs, all cores):
    numpy (its BLAS) on n³, and cortex._C's packed GEMM (the kernel Cortex's generated code calls) when the
    extension is built. ``peak_gflops`` is the larger; ``peak_source`` says which."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    t = _numpy_matmul_seconds(n, a, b)
    out = {"numpy_matmul_gflops": 2.0 * n**3 / t / 1e9, "matmul_n": n}
    try:
        from cortex import _C  # type: ignore

        packed = _C.pack_panels(b)
        _C._bench_gemm(a, packed, n, 1)  # warm-up
        tg = _C._bench_gemm(a, packed, n, 3)
        out["cortex_gemm_packed_gflops"] = 2.0 * n**3 / tg / 1e9
    except Exception as e:  # noqa: BLE001 - the extension is optional for the benchmark
        out["cortex_gemm_packed_gflops"] = None
        out["cortex_gemm_packed_note"] = f"not measured: {type(e).__name__}: {e}"
    cands = {"numpy float32 matmul %d^3" % n: out["numpy_matmul_gflops"]}
    if out.get("cortex_gemm_packed_gflops"):
        cands["cortex._C.gemm_packed %d^3" % n] = out["cortex_gemm_packed_gflops"]
    src = max(cands, key=cands.get)
    out["peak_gflops"] = cands[src]
    out["peak_source"] = src
    return out

#!/usr/bin/env python3
"""GFLOP/s of cortex::gemm_packed (through cortex._C) vs the machine's FMA peak.

    python tools/gemm_peak.py [--K 512] [--N 1280] [--M 1,4,16,64,256] [--threads 1,2] [--repeat 5]

Each thread count runs in a subprocess with CORTEX_NUM_THREADS set (the pool reads it once).
Numbers are the best of --repeat measurements (each itself the best of 3 timed loops), which is the
fairest figure on a shared machine. cortex._C must be built with -march=native (AVX2+FMA), e.g.
``python tests/_build_c.py``.
"""

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_C():
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from _build_c import load_C

    C = load_C()
    if C is None:
        sys.exit("cortex._C is not built: python tests/_build_c.py")
    return C


def worker(Ms, K, N, repeat):
    import numpy as np

    C = _load_C()
    rng = np.random.default_rng(0)
    W = rng.standard_normal((K, N)).astype(np.float32)
    Bp = C.pack_panels(W)
    out = {"threads": C.num_threads(), "avx2_fma": bool(C._has_avx2_fma), "gflops": {}}
    for M in Ms:
        A = rng.standard_normal((M, K)).astype(np.float32)
        flops = 2.0 * M * N * K
        reps = max(3, int(2e8 / flops))  # ~0.2 GFLOP per timed loop
        best = min(C._bench_gemm(A, Bp, N, reps) for _ in range(repeat))
        out["gflops"][M] = flops / best * 1e-9
        out.setdefault("us", {})[M] = best * 1e6
    out["fma_peak"] = max(C._bench_fma_peak(out["threads"]) for _ in range(repeat))
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--K", type=int, default=512)
    ap.add_argument("--N", type=int, default=1280)
    ap.add_argument("--M", default="1,4,16,64,256")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    Ms = [int(x) for x in a.M.split(",")]
    if a.worker:
        worker(Ms, a.K, a.N, a.repeat)
        return
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    print(f"gemm_packed  K={a.K} N={a.N}  (load average {load:.2f}, {os.cpu_count()} cpus)")
    for t in [int(x) for x in a.threads.split(",")]:
        env = dict(os.environ, CORTEX_NUM_THREADS=str(t))
        res = subprocess.run([sys.executable, __file__, "--worker", "--K", str(a.K), "--N", str(a.N), "--M", a.M,
                              "--repeat", str(a.repeat)], env=env, capture_output=True, text=True, check=True)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        peak = r["fma_peak"]
        if not r["avx2_fma"]:
            print("  WARNING: cortex._C was built without AVX2/FMA: scalar fallback")
        print(f"  threads={r['threads']}  FMA peak estimate {peak:7.1f} GFLOP/s")
        for M in Ms:
            g = r["gflops"][str(M)]
            pct = 100.0 * g / peak if peak else float("nan")
            print(f"    M={M:4d}  {g:7.1f} GFLOP/s  {pct:5.1f}% of peak  {r['us'][str(M)]:9.1f} us/call")


if __name__ == "__main__":
    main()

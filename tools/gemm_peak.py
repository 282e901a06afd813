#!/usr/bin/env python3
"""GFLOP/s of the runtime's matrix products (cortex._C) at the shapes of TreeLSTM levels, against numpy's float32
peak measured in the same run.

    python tools/gemm_peak.py [--hidden 64,256] [--M 1,2,4,...] [--threads 1,2] [--rounds 5] [--errors] [--json F]

Shapes: a level of a binary TreeLSTM with hidden H multiplies its M rows [h_l; h_r] (K = 2H) by U (N = 5H); M is
the level's node count (1-3 for one tree, ~12 for 10 SST trees, ~100 for 100). --shapes K,N[;K,N] adds others.
Variants: every micro-kernel this build of cortex._C has (`_C.gemm_isas()`): f32:avx2, f32:avx512, bf16:avx512bf16,
bf16:amx, bf16:auto (what gemm_packed_bf16 picks for M); and numpy:f32, numpy's own A @ W at the shape.
Peak: numpy float32 matmul 1024^3 with the same number of threads (its BLAS), measured in every round.
Each thread count runs in a subprocess with CORTEX_NUM_THREADS and the BLAS thread variables set.
Timing: every round measures every variant at every shape (interleaved, so load changes hit all alike); one
measurement is the best of 3 timed loops of ~0.2 GFLOP each; tables show the median over rounds. The machine may
be shared: the load average is printed at the start and end; compare only numbers of one run.
--errors: the bf16 products' max and mean abs error against float32 (float64 reference) on the operands of a
TreeLSTM level (cortex.examples.treelstm.level_product_operands: 10 SST-shaped trees, trained-scale weights).
cortex._C must be built for this machine (-march=native, as pip install -e . does).
"""

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _load_C():
    sys.path[:0] = [REPO, os.path.join(REPO, "tests")]  # this checkout's cortex, not an installed one
    from _build_c import load_C

    C = load_C()
    if C is None:
        sys.exit("cortex._C is not built: pip install -e . (or python tests/_build_c.py)")
    return C


def variants(C):
    isas = C.gemm_isas()
    return ([f"f32:{i}" for i in isas["f32"] if i != "portable"] + [f"bf16:{i}" for i in isas["bf16"] if i != "portable"]
            + ["bf16:auto", "numpy:f32"])


def numpy_peak(np, n=1024):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best * 1e-9


def worker(shapes, Ms, rounds, names):
    import numpy as np

    C = _load_C()
    rng = np.random.default_rng(0)
    ops = {}
    for K, N in shapes:
        W = rng.standard_normal((K, N)).astype(np.float32)
        ops[K, N] = (W, C.pack_panels(W), C.pack_panels_bf16(W))
    A_all = {K: rng.standard_normal((max(Ms), K)).astype(np.float32) for K, _ in shapes}

    def seconds(name, A, K, N):
        W, P, Pb = ops[K, N]
        M = A.shape[0]
        reps = max(3, int(2e8 / (2.0 * M * N * K)))
        kind, isa = name.split(":")
        if kind == "f32":
            return C._bench_gemm(A, P, N, reps, isa=isa)
        if kind == "bf16":
            return C._bench_gemm_bf16(A, Pb, N, reps, isa=isa)
        out = np.empty((M, N), np.float32)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(reps):
                np.matmul(A, W, out=out)
            best = min(best, (time.perf_counter() - t0) / reps)
        return best

    res = {"threads": C.num_threads(), "isas": C.gemm_isas(), "peak": [], "seconds": {}}
    for _ in range(rounds):
        res["peak"].append(numpy_peak(np))
        for K, N in shapes:
            for M in Ms:
                A = A_all[K][:M]
                for name in names:
                    res["seconds"].setdefault(f"{K},{N},{M},{name}", []).append(seconds(name, A, K, N))
    print(json.dumps(res))


def bf16_errors(hiddens):
    """{hidden: {isa: (max abs error, mean abs error, mean |output|)}} of the bf16 products against float64."""
    import numpy as np
    from cortex.examples.treelstm import level_product_operands

    C = _load_C()
    out = {}
    for H in hiddens:
        A, U = level_product_operands(H)
        exact = A.astype(np.float64) @ U.astype(np.float64)
        row = {"f32:auto": C.gemm_packed(A, C.pack_panels(U), U.shape[1])}
        for isa in C.gemm_isas()["bf16"]:
            row[f"bf16:{isa}"] = C.gemm_packed_bf16(A, C.pack_panels_bf16(U), U.shape[1], isa=isa)
        out[H] = {k: (float(np.abs(v - exact).max()), float(np.abs(v - exact).mean()), float(np.abs(exact).mean()),
                      A.shape[0]) for k, v in row.items()}
    return out


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", default="64,256", help="TreeLSTM hidden sizes: K = 2H, N = 5H")
    ap.add_argument("--shapes", default="", help="more K,N pairs, ';'-separated")
    ap.add_argument("--M", default="1,2,3,4,6,8,12,16,24,32,48,64,100,300")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--variants", default="", help="comma-separated subset (default: all in the build)")
    ap.add_argument("--errors", action="store_true", help="also the bf16 error against float32")
    ap.add_argument("--json", default="", help="write all raw numbers here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    hiddens = [int(x) for x in a.hidden.split(",") if x]
    shapes = [(2 * h, 5 * h) for h in hiddens] + [tuple(int(v) for v in s.split(",")) for s in a.shapes.split(";") if s]
    Ms = [int(x) for x in a.M.split(",")]
    if a.worker:
        worker(shapes, Ms, a.rounds, a.variants.split(","))
        return
    names = a.variants.split(",") if a.variants else variants(_load_C())
    load0 = os.getloadavg()
    print(f"tools/gemm_peak.py  {' '.join(sys.argv[1:])}")
    print(f"load average at start {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, {os.cpu_count()} cpus; "
          f"{a.rounds} rounds, medians")
    raw = {"argv": sys.argv[1:], "load_start": load0, "runs": {}}
    for t in [int(x) for x in a.threads.split(",")]:
        env = dict(os.environ, CORTEX_NUM_THREADS=str(t), **{v: str(t) for v in BLAS_THREAD_VARS})
        cmd = [sys.executable, __file__, "--worker", "--hidden", "", "--shapes", ";".join(f"{k},{n}" for k, n in shapes),
               "--M", a.M, "--rounds", str(a.rounds), "--variants", ",".join(names)]
        r = json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
        raw["runs"][t] = r
        peak = median(r["peak"])
        print(f"\nthreads={r['threads']}  numpy float32 peak (1024^3) {peak:.1f} GFLOP/s "
              f"(rounds {min(r['peak']):.1f}-{max(r['peak']):.1f}); AMX granted: {r['isas'].get('amx_ready')}")
        for K, N in shapes:
            print(f"  K={K} N={N}: GFLOP/s (% of the numpy peak)")
            print("    " + f"{'M':>4}" + "".join(f"{n:>20}" for n in names))
            for M in Ms:
                cells = []
                for n in names:
                    g = 2.0 * M * N * K / median(r["seconds"][f"{K},{N},{M},{n}"]) * 1e-9
                    cells.append(f"{g:8.1f} ({100 * g / peak:4.0f}%)")
                print("    " + f"{M:>4}" + "".join(f"{c:>20}" for c in cells))
    if a.errors:
        errs = bf16_errors(hiddens)
        raw["errors"] = errs
        print("\nerror against float32 (float64 reference) on TreeLSTM level operands: max / mean abs error")
        for H, row in errs.items():
            first = next(iter(row.values()))
            print(f"  H={H} ({first[3]} rows [h_l; h_r] x U [{2 * H}, {5 * H}], mean |output| {first[2]:.3g}): "
                  + "; ".join(f"{k} {mx:.2e} / {mn:.2e}" for k, (mx, mn, _, _) in row.items()))
    load1 = os.getloadavg()
    raw["load_end"] = load1
    print(f"\nload average at end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(raw, f, indent=1)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Where a CPU kernel's time goes: a zoo model's converted kernel called alone (no ONNX Runtime), against variants
of its own generated source compiled the same way, timed interleaved on the same forest.

    python tools/kernel_variants.py [--model treelstm] [--hidden 256] [--batch 10] [--precision float32|bf16]
                                    [--variants no-products,scalar] [--reps 100]

Variants (each a diagnostic, not a model: their outputs are wrong and reported as such):
- `as-built`: the kernel cortex-convert built (always first);
- `no-products`: the generated source with every matrix-product call removed: the time of everything else
  (input checks, prepare, leaves, gathers, gates, dispatch); as-built minus this is the products' time;
- `scalar`: the same source compiled with -fno-openmp-simd (its element loops as GCC 13 left them before the
  generated code carried `#pragma omp simd`).
Threads: CORTEX_NUM_THREADS as for any kernel. Prints the median microseconds per call and the kernel's own step
clocks (CORTEX_PROFILE) for each variant. The machine may be shared: compare the rows of one run.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["CORTEX_PROFILE"] = "1"  # the kernels' step clocks, read when a kernel library loads

REPO = Path(__file__).resolve().parent.parent
for path in (REPO, REPO / "tests", REPO / "tools"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import numpy as np  # noqa: E402
import onnx  # noqa: E402

import cortex  # noqa: E402
import kernel_harness  # noqa: E402
from cortex._paths import runtime_include_dir  # noqa: E402
from cortex.codegen import targets, toolchain  # noqa: E402
from cortex.examples import structures as st  # noqa: E402
from onnx_ops.zoo import MODELS, batch, structures  # noqa: E402
from peers.kernel_alone import KernelAlone  # noqa: E402

VARIANTS = ("no-products", "scalar")
_PRODUCT_CALL = re.compile(r"^(\s*)(cortex::gemm_packed\w*\()", re.M)


def variant_source(source: str, name: str) -> str:
    if name == "no-products":
        changed, count = _PRODUCT_CALL.subn(r"\1if (false) \2", source)
        if not count:
            raise SystemExit("kernel_variants: this kernel calls no matrix product")
        return changed
    return source


def compile_variant(source: str, name: str, flags: tuple, folder: Path) -> Path:
    if name not in VARIANTS:
        raise SystemExit(f"kernel_variants: unknown variant {name!r} (known: {', '.join(VARIANTS)})")
    cc, so = folder / f"{name}.cc", folder / f"{name}.so"
    cc.write_text(variant_source(source, name))
    extra = ("-fno-openmp-simd",) if name == "scalar" else ()
    subprocess.run([toolchain.compiler(), *toolchain.BASE_FLAGS, *flags, *toolchain.extra_flags(), *extra,
                    f"-I{runtime_include_dir()}", str(cc), "-o", str(so)], check=True)
    return so


def measure(model: str, hidden: int, batch_size: int, precision: str, variants: list, reps: int) -> dict:
    """variant -> {"us": median microseconds a call, "steps": the kernel's step clocks, "difference": max abs
    difference of its outputs from the as-built kernel's}."""
    entry = MODELS[model]
    folder = Path(tempfile.mkdtemp(prefix="cortex_variants_"))
    src = folder / "model.onnx"
    onnx.save(entry.build_loop(entry.make_params(hidden, seed=1)), str(src))
    names = {i.name for i in onnx.load(str(src)).graph.input}
    items = structures(entry.structure, batch_size, np.random.default_rng(3), sst_dir=st.sst_dir_default(), vocab=50)
    feeds = {k: v for k, v in entry.loop_feeds(batch(entry.structure, items)).items() if k in names}
    out = folder / "model.cortex.onnx"
    if precision == "bf16":
        cortex.convert(str(src), str(out), precision="bf16", example_inputs=feeds)
        flags = targets.bf16_cpu_target(None).flags
    else:
        cortex.convert(str(src), str(out))
        flags = toolchain.cpu_target().flags
    [source_file] = sorted((folder / "model.cortex").glob("*.cc"))
    alone = KernelAlone(out)
    arguments = alone.arguments(feeds)
    kernels = {"as-built": alone.kernel}
    for name in variants:
        kernels[name] = kernel_harness.Kernel(compile_variant(source_file.read_text(), name, flags, folder),
                                              reuse_outputs=True)
    reference = [np.array(o) for o in alone.kernel.run(arguments, alone.num_outputs)]
    times = {k: [] for k in kernels}
    steps = {k: [] for k in kernels}
    for _ in range(reps):
        for name, kernel in kernels.items():
            start = time.perf_counter()
            kernel.run(arguments, alone.num_outputs)
            times[name].append(time.perf_counter() - start)
            steps[name].append(kernel.steps()[0])
    results = {}
    for name, kernel in kernels.items():
        outputs = kernel.run(arguments, alone.num_outputs)
        results[name] = {
            "us": 1e6 * float(np.median(times[name])),
            "steps": {n: float(np.median([s[n] for s in steps[name]])) for n in steps[name][0]},
            "difference": max(float(np.abs(np.array(o) - r).max()) for o, r in zip(outputs, reference))}
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="treelstm", choices=sorted(MODELS))
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--precision", default="float32", choices=targets.PRECISIONS)
    ap.add_argument("--variants", default="no-products,scalar")
    ap.add_argument("--reps", type=int, default=100)
    args = ap.parse_args(argv)
    results = measure(args.model, args.hidden, args.batch, args.precision,
                      [v for v in args.variants.split(",") if v], args.reps)
    print(f"{args.model}, hidden {args.hidden}, batch {args.batch}, {args.precision}, "
          f"CORTEX_NUM_THREADS={os.environ.get('CORTEX_NUM_THREADS', 'all cores')}, {args.reps} interleaved calls, "
          "median us")
    for name, r in results.items():
        parts = ", ".join(f"{n} {v:.1f}" for n, v in r["steps"].items() if v >= 0.05)
        print(f"  {name:12s} {r['us']:9.1f}   ({parts}; max abs difference from as-built {r['difference']:.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

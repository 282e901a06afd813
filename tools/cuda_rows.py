#!/usr/bin/env python3
"""The binary TreeLSTM's CUDA kernel (Loop form) built with each warp of a product taking 1, 2 or 4 rows at a time
in a wide batch (cortex/codegen/cuda.py, CudaEmitter.GEMM_ROWS), timed through the C ABI alone on forests of SST
test trees, interleaved, with the kernel's own step clocks; every variant's outputs are checked bit for bit against
the first's (the same sums in the same order). Needs a CUDA GPU and torch.

    python tools/cuda_rows.py [--hidden 256] [--batches 1,10,32,64,100] [--rows 1,2,4]
                              [--reps 20] [--out rows.json]

Prints one JSON line per (batch, rows): microseconds per kernel call (median over up to 10 forests of that many
trees), the mean nodes per forest and the kernel's steps (CORTEX_PROFILE: input checks, prepare+linearize, schedule
upload, launch call, until finished, and the GPU kernel alone between CUDA events).
"""
from __future__ import annotations

import argparse
import json
import os
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

import cuda_check  # noqa: E402
from cortex.codegen import generator  # noqa: E402
from cortex.codegen.cuda import CudaEmitter  # noqa: E402
from cortex.examples import structures as st  # noqa: E402
from cortex.frontend import find_regions  # noqa: E402
from cortex.passes import optimize  # noqa: E402
from kernel_harness import Kernel  # noqa: E402
from onnx_ops.zoo import MODELS  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batches", default="1,10,32,64,100")
    ap.add_argument("--rows", default="1,2,4")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    import torch

    batches = [int(b) for b in args.batches.split(",")]
    variants = [int(v) for v in args.rows.split(",")]
    entry = MODELS["treelstm"]
    model = entry.build_loop(entry.make_params(args.hidden, seed=1))
    [region] = find_regions(model)
    program = optimize(region.program)
    trees = st.read_sst(st.sst_dir_default(), split="test", vocab_size=50, limit=2000) if st.sst_dir_default() \
        else st.sst_like_trees(2000, np.random.default_rng(0), 50)
    kernels = {}
    for rows in variants:
        CudaEmitter.GEMM_ROWS = rows
        gen = generator("cuda", program)
        folder = Path(tempfile.mkdtemp())
        kernels[rows] = (gen, Kernel(cuda_check.compile_source(gen.generate(f"rows{rows}"), True,
                                                               folder / f"rows{rows}.so")))
    records = []
    for size in batches:
        groups = [trees[i:i + size] for i in range(0, min(len(trees), size * 10), size)][:10]
        times = {rows: [] for rows in variants}
        steps = {}
        for group in groups:
            feeds = entry.loop_feeds(st.batch(group))
            first = None
            for rows in variants:
                gen, kernel = kernels[rows]
                args_ = cuda_check.to_device(cuda_check.kernel_inputs(model, gen, feeds), gen)
                outs = [o.cpu().numpy() for o in kernel.run(args_, len(program.tables))]
                if first is None:
                    first = outs
                elif not all(np.array_equal(a, b) for a, b in zip(first, outs)):
                    print(f"cuda_rows: {rows} rows per warp differ from {variants[0]} at batch {size}", file=sys.stderr)
                    return 1
                kernel.run(args_, len(program.tables))
                torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(args.reps):
                    kernel.run(args_, len(program.tables))
                torch.cuda.synchronize()
                times[rows].append((time.perf_counter() - start) / args.reps * 1e6)
                steps[rows] = kernel.steps()
        for rows in variants:
            clocks = steps[rows][0] if steps.get(rows) else {}
            record = {"hidden": args.hidden, "batch": size, "rows": rows,
                      "us": round(float(np.median(times[rows])), 1),
                      "nodes": float(np.mean([sum(len(t.words) for t in g) for g in groups])),
                      "steps": {k: round(v, 1) for k, v in clocks.items()}}
            records.append(record)
            print(json.dumps(record), flush=True)
        if args.out:  # after every batch size: a run stopped by a time limit keeps what finished
            Path(args.out).write_text(json.dumps(records, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

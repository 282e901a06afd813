#!/usr/bin/env python3
"""bf16 against float32 end to end: converts the zoo TreeLSTM (Loop form) at each hidden size twice, with
`precision="bf16"` (its report: the error against float32 on the batch-10 inputs) and with the float32 default,
then times both sessions interleaved on SST trees (or SST-shaped ones) at each batch size.

    python tools/precision_bench.py [--hidden 64,256] [--batch 1,10,100] [--reps 15] [--block 5]

Median ms per run over `reps` interleaved blocks of `block` timed runs per session (each block after one untimed
run: the other session's pool workers stop spinning). The machine may be shared: compare the columns of one row.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cortex  # noqa: E402
from cortex.examples import structures as st  # noqa: E402
from onnx_ops.zoo import MODELS, batch, structures  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", default="64,256")
    ap.add_argument("--batch", default="1,10,100")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--block", type=int, default=5, help="timed calls of one session in a row (default 5)")
    args = ap.parse_args()
    entry = MODELS["treelstm"]
    folder = Path(tempfile.mkdtemp(prefix="cortex_precision_"))
    for hidden in map(int, args.hidden.split(",")):
        src = folder / f"treelstm{hidden}.onnx"
        onnx.save(entry.build_loop(entry.make_params(hidden, seed=1)), str(src))
        rng = np.random.default_rng(3)
        feeds = {}
        for b in map(int, args.batch.split(",")):
            items = structures(entry.structure, b, rng, sst_dir=st.sst_dir_default(), vocab=50)
            feeds[b] = {k: v for k, v in entry.loop_feeds(batch(entry.structure, items)).items()
                        if k in ("words", "left", "right", "order")}
        example = feeds.get(10, next(iter(feeds.values())))
        report = cortex.convert(str(src), str(folder / f"bf16_{hidden}.onnx"), precision="bf16", example_inputs=example)
        print(report.format())
        cortex.convert(str(src), str(folder / f"f32_{hidden}.onnx"))
        sessions = {"float32": cortex.InferenceSession(str(folder / f"f32_{hidden}.onnx")),
                    "bf16": cortex.InferenceSession(str(folder / f"bf16_{hidden}.onnx"))}
        for b, f in feeds.items():
            times = {k: [] for k in sessions}
            for _ in range(args.reps):
                for k, session in sessions.items():
                    # each kernel has its own thread pool, whose workers spin for a while after a call: a call
                    # right after the other session's would share the cores with them, so each session runs a
                    # block of calls and the first of the block is not counted
                    for call in range(args.block + 1):
                        t0 = time.perf_counter()
                        session.run(None, f)
                        if call:
                            times[k].append(time.perf_counter() - t0)
            f32, bf16 = (1e3 * np.median(times[k]) for k in ("float32", "bf16"))
            print(f"hidden {hidden} batch {b}: float32 {f32:.3f} ms, bf16 {bf16:.3f} ms ({f32 / bf16:.2f}x)")


if __name__ == "__main__":
    main()

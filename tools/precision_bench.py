#!/usr/bin/env python3
"""bf16 against float32 end to end: converts the zoo TreeLSTM (Loop form) at each hidden size twice, with
`precision="bf16"` (its report: the error against float32 on the batch-10 inputs) and with the float32 default,
then times both sessions interleaved on SST trees (or SST-shaped ones) at each batch size; with --ort also the
original model in ONNX Runtime on the same inputs.

    python tools/precision_bench.py [--hidden 64,256] [--batch 1,10,100] [--reps 15] [--block 5] [--forests 5]
                                    [--ort]

Each batch size is timed on `forests` different forests (at batch 1: that many single trees): the SST test split's
trees in order (forest f holds trees f*b .. f*b+b-1), or synthetic SST-shaped ones without the SST folder. Per session, a block is one untimed pass over them (the other session's pool workers stop
spinning) and `block` timed passes; `reps` blocks per session, interleaved. Printed: the median ms per forest (the
mean over the forests of a pass). The machine may be shared: compare the columns of one row.
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

INPUTS = ("words", "left", "right", "order")


def time_sessions(sessions: dict, forests: list, reps: int, block: int) -> dict:
    """name -> median seconds per forest: blocks of passes over the forests, the sessions interleaved block by
    block, the first pass of a block untimed."""
    times = {k: [] for k in sessions}
    for _ in range(reps):
        for name, session in sessions.items():
            for call in range(block + 1):
                t0 = time.perf_counter()
                for feeds in forests:
                    session.run(None, feeds)
                if call:
                    times[name].append((time.perf_counter() - t0) / len(forests))
    return {k: float(np.median(v)) for k, v in times.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", default="64,256")
    ap.add_argument("--batch", default="1,10,100")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--block", type=int, default=5, help="timed passes of one session in a row (default 5)")
    ap.add_argument("--forests", type=int, default=5, help="different forests per batch size (default 5)")
    ap.add_argument("--ort", action="store_true", help="also the original model in ONNX Runtime (CPU EP)")
    args = ap.parse_args(argv)
    entry = MODELS["treelstm"]
    folder = Path(tempfile.mkdtemp(prefix="cortex_precision_"))
    for hidden in map(int, args.hidden.split(",")):
        src = folder / f"treelstm{hidden}.onnx"
        onnx.save(entry.build_loop(entry.make_params(hidden, seed=1)), str(src))
        rng = np.random.default_rng(3)
        forests = {}
        for b in map(int, args.batch.split(",")):
            forests[b] = [{k: v for k, v in entry.loop_feeds(batch(entry.structure, structures(
                entry.structure, b, rng, sst_dir=st.sst_dir_default(), vocab=50, offset=f * b))).items()
                if k in INPUTS} for f in range(args.forests)]
        example = forests.get(10, next(iter(forests.values())))[0]
        report = cortex.convert(str(src), str(folder / f"bf16_{hidden}.onnx"), precision="bf16", example_inputs=example)
        print(report.format())
        cortex.convert(str(src), str(folder / f"f32_{hidden}.onnx"))
        sessions = {"float32": cortex.InferenceSession(str(folder / f"f32_{hidden}.onnx")),
                    "bf16": cortex.InferenceSession(str(folder / f"bf16_{hidden}.onnx"))}
        if args.ort:
            import onnxruntime as ort

            sessions["ort"] = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
        for b, fs in forests.items():
            ms = {k: 1e3 * v for k, v in time_sessions(sessions, fs, args.reps, args.block).items()}
            line = (f"hidden {hidden} batch {b} ({len(fs)} forests): float32 {ms['float32']:.3f} ms, bf16 "
                    f"{ms['bf16']:.3f} ms ({ms['float32'] / ms['bf16']:.2f}x)")
            if args.ort:
                line += (f"; ONNX Runtime {ms['ort']:.3f} ms: float32 {ms['ort'] / ms['float32']:.1f}x, bf16 "
                         f"{ms['ort'] / ms['bf16']:.1f}x")
            print(line)


if __name__ == "__main__":
    main()

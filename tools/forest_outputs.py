#!/usr/bin/env python3
"""Where a merged forest's run goes on a GPU, by where its outputs are bound: the TreeLSTM (TreeRec form) of
tools/serve_bench.py over forests of SST test trees, through one `cortex.InferenceSession(device="cuda")`, one
caller, medians over --reps runs:

- `pageable`: `session.run`, outputs into ONNX Runtime's pageable host buffers (a per-request server);
- `pinned_copy`: outputs bound as host memory at pinned buffers' addresses, copied there after the kernel (what
  `cortex.serving.PinnedOutputs` does for the BatchingSession and the bound);
- `on_device`: outputs left in GPU memory (IO binding), no copy at all;
- `in_pinned`: outputs bound as the Cortex EP's host-accessible memory, so the kernel computes its state tables in
  pinned host memory itself, every child read across the link;
- `link_pinned` / `link_pageable`: the link's own copy of the forest's output bytes from GPU memory (torch, when
  installed), the floor under `pinned_copy - on_device`.

    python tools/forest_outputs.py [--hidden 256] [--forests 1,32,64] [--reps 200]

Prints one line per forest size (microseconds a run; `in_pinned` also says whether its outputs equal
`pageable`'s). Needs a CUDA GPU.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def median_us(step, items: list, reps: int) -> float:
    for item in items[:2]:
        step(item)
    times = []
    for k in range(reps):
        started = time.perf_counter()
        step(items[k % len(items)])
        times.append(time.perf_counter() - started)
    return 1e6 * float(np.median(times))


def link_us(nbytes: int, pinned: bool, reps: int = 100) -> float | None:
    """A copy of `nbytes` from GPU memory into pinned or pageable host memory (torch), microseconds."""
    try:
        import torch
    except ImportError:
        return None
    source = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda")
    target = torch.empty(nbytes // 4, dtype=torch.float32, pin_memory=pinned)
    target.copy_(source)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(reps):
        target.copy_(source, non_blocking=pinned)
        torch.cuda.synchronize()
    return 1e6 * (time.perf_counter() - started) / reps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--forests", default="1,32,64", help="comma list of trees per forest")
    p.add_argument("--reps", type=int, default=200)
    args = p.parse_args(argv)

    import onnxruntime as ort

    import cortex
    from cortex.examples import structures as st
    from cortex.session import pinned_memory_info
    from tools.serve_bench import convert_model, feeds_of, sst_trees

    try:
        memory = pinned_memory_info("cuda")
    except Exception as e:  # noqa: BLE001 - no GPU the Cortex EP offers
        raise SystemExit(f"forest_outputs: needs a CUDA GPU ({e})") from None
    folder = Path(tempfile.mkdtemp(prefix="forest_outputs_"))
    session = cortex.InferenceSession(convert_model(args.hidden, "treerec", "cuda", folder), device="cuda")
    names = [o.name for o in session.get_outputs()]
    trees = sst_trees(500)

    def bound(feeds, outputs):
        binding = session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        outputs(binding)
        session.run_with_iobinding(binding)

    def host_buffers(feeds):
        rows = feeds["words"].shape[0]
        return [ort.OrtValue.ortvalue_from_shape_and_type([rows, args.hidden], np.float32, memory_info=memory)
                for _ in names]

    def pinned_copy(feeds):
        values = host_buffers(feeds)
        bound(feeds, lambda b: [b.bind_output(n, "cpu", 0, np.float32, v.shape(), v.data_ptr())
                                for n, v in zip(names, values)])
        return [v.numpy() for v in values]

    def in_pinned(feeds):
        values = host_buffers(feeds)
        bound(feeds, lambda b: [b.bind_ortvalue_output(n, v) for n, v in zip(names, values)])
        return [v.numpy() for v in values]

    def on_device(feeds):
        bound(feeds, lambda b: [b.bind_output(n, "cuda", 0) for n in names])

    for size in [int(x) for x in args.forests.split(",") if x]:
        forests = [feeds_of(st.batch(trees[i:i + size]), "treerec") for i in range(0, len(trees) - size + 1, size)]
        nodes = float(np.mean([f["words"].shape[0] for f in forests]))
        out_bytes = int(nodes * len(names) * args.hidden * 4)
        same = all(np.array_equal(a, b) for a, b in zip(in_pinned(forests[0]), session.run(None, forests[0])))
        row = {"pageable": median_us(lambda f: session.run(None, f), forests, args.reps),
               "pinned_copy": median_us(pinned_copy, forests, args.reps),
               "on_device": median_us(on_device, forests, args.reps),
               "in_pinned": median_us(in_pinned, forests, max(10, args.reps // 10)),
               "link_pinned": link_us(out_bytes, True), "link_pageable": link_us(out_bytes, False)}
        shown = ", ".join(f"{k} {v:.0f}" for k, v in row.items() if v is not None)
        print(f"forest of {size} ({nodes:.0f} nodes, outputs {out_bytes / 1e6:.2f} MB), us a run: {shown}; "
              f"in_pinned's outputs equal pageable's: {same}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

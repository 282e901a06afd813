#!/usr/bin/env python
"""Benchmark Cortex against its peers on the model zoo (onnx_ops.zoo.MODELS) over SST trees, sentences and grids.

    python tools/bench.py [--models treelstm|all|treefc,chainlstm,...] [--hidden 64,256,512] [--batch 1,10]
                          [--throughput 100] [--target cpu|cuda] [--sst PATH] [--quick] [--out DIR] [--write-docs]
    python tools/bench.py --forms [--models all] [--hidden 256] [--batch 10] [--out DIR] [--write-models-doc]

Systems (same inputs, same process, same run): Cortex (the converted model in an ONNX Runtime session with the
Cortex EP), ONNX Runtime on the original Loop/If model (CPU EP), PyTorch eager with the natural per-node module of
each model (tools/peers/models.py TORCH_STYLE), DyNet with autobatching (one renew_cg per batch, all trees built,
one forward; TreeLSTM only: the other models report "no DyNet implementation of this model"). With --target cuda
and a CUDA GPU, also PyTorch on the GPU (tools/peers/torch_gpu_peer.py; TreeLSTM only, the other models report
"not implemented for this model"): the per-node module, level-batched eager, and CUDA-graph replay of the
level-batched schedule (one graph per input, captured untimed); tables then label every system with its device
(the CPU systems still run on the CPU). A system that cannot run is reported with the reason ("not installed",
"not available on this machine"), never dropped.

Models: ``--models`` takes zoo names or ``all``. The default is treelstm: all eight models at the default sizes
(hidden up to 512, batch 100, where ONNX Runtime's Loop takes seconds per forest and MV-RNN keeps an H×H matrix per
node) take far more than a few minutes; ``--quick --models all`` covers every model. Inputs per structure kind
come from ``onnx_ops.zoo.structures``: SST test trees (binary; n-ary for Child-Sum), SST sentences as chains,
synthetic grids for the DAG-RNN; ``onnx_ops.zoo.batch`` makes one input of B of them.

Per (model, hidden, batch): every system's output tables are first checked against the numpy reference on the
same inputs (max abs error <= --tol); a disagreement raises :class:`BenchMismatch` (exit code 2). Then each
system gets a warm-up and timed repeats; one repeat times every input of the config once (batch 1: many single
structures; batch B: several different batches of B) and its value is the mean time per input. Reported: the
median over repeats, p10/p90 over repeats, FLOPs (the model's matrix products, the same count for every system),
GFLOP/s and its fraction of the matrix-product peak measured in the same run, trees/s.

Outputs under --out: results.json (everything), results.md (tables), speedup_<model>.png and
latency_<model>.png; converted models are cached in <out>/models per (model, hidden). --write-docs regenerates the
benchmark section of docs/performance.md from this run.

--forms: every form of every model (``loop``: the hand-built Loop/If; ``treerec``: the cortex.TreeRec model, run
by ORT as ``lower_treerec(model)``; each TorchScript export style of the model), built at one hidden size (256),
converted with ``cortex.convert(strict=False)``: converted or not (and the report's reason), max abs error of the
converted model against the original in ORT, median latency of ORT on the original and of Cortex on
--forms-batches different batches of --batch (10) structures, and the speedup. Writes forms.json and forms.md
under --out; --write-models-doc regenerates docs/models.md. Each form's time is bounded: at least 3 repeats,
as many as fit in --budget, and fewer batches timed when ORT is slow (--forms-cap). Exit code 2 when a converted
form disagrees with its original above --tol (the table still says MISMATCH).

This file is the command line; the pieces live in tools/benchlib (measure, compare, forms, report, plots) and the
peers in tools/peers.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# numpy's BLAS only builds inputs and the reference here, and its idle threads spin for a while after each call,
# on the cores the timed system needs (the 16-core GPU host: Cortex h256 b10 2.1 ms beside them, 0.93 ms without).
# One BLAS thread in this process (set before numpy loads); the peak is measured in a child process with the
# user's setting, or the BLAS default (every core) (tools/peers/flops.py).
os.environ.setdefault("CORTEX_BENCH_PEAK_BLAS_THREADS", os.environ.get("OPENBLAS_NUM_THREADS", ""))
os.environ["OPENBLAS_NUM_THREADS"] = "1"

from tools.benchlib.compare import perturb_hook, run_bench  # noqa: E402
from tools.benchlib.forms import MODELS_DOC, render_forms_markdown, render_forms_table, run_forms  # noqa: E402
from tools.benchlib.forms import write_models_doc  # noqa: E402
from tools.benchlib.measure import check_outputs  # noqa: E402
from tools.benchlib.report import render_markdown, write_docs  # noqa: E402
from tools.peers import BenchMismatch, models as _models  # noqa: E402

__all__ = ["BenchMismatch", "main", "run_bench", "run_forms", "parse_args", "check_outputs", "render_forms_table",
           "write_models_doc"]


def parse_list(s: str) -> list[int]:
    return [int(x) for x in str(s).split(",") if x.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default=None,
                   help=f"comma list of zoo models ({', '.join(_models.names())}) or 'all' (default treelstm; "
                        "--forms: all)")
    p.add_argument("--forms", action="store_true",
                   help="every form of every model (hand-built Loop/If, TreeRec, each TorchScript export style): "
                        "convert (strict=False), max error against the original in ORT, ORT vs Cortex latency at "
                        "one hidden size and batch (default --hidden 256 --batch 10)")
    p.add_argument("--write-models-doc", action="store_true", help="with --forms: regenerate docs/models.md")
    p.add_argument("--forms-batches", type=int, default=None,
                   help="--forms: different batches checked and timed per form (default 5; quick 3)")
    p.add_argument("--forms-cap", type=float, default=None,
                   help="--forms: seconds the min repeats of ORT may take per form; fewer batches are timed when "
                        "ORT is slower (default 30; quick 10)")
    p.add_argument("--hidden", default=None, help="comma list of hidden sizes (default 64,256,512; quick 64,256)")
    p.add_argument("--batch", default=None, help="comma list of batch sizes (structures per input) (default 1,10; "
                                                  "--forms: 10)")
    p.add_argument("--throughput", type=int, default=100,
                   help="also time forests of this many trees and report trees/s (0: off) (default 100)")
    p.add_argument("--target", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--sst", default=None, help="SST directory (default: cortex.examples.structures.sst_dir_default(); "
                                               "synthetic SST-shaped trees when none)")
    p.add_argument("--quick", action="store_true", help="fewer trees and repeats; finishes in a few minutes")
    p.add_argument("--out", default=None, help="output directory (default: a new temp dir)")
    p.add_argument("--trees", type=int, default=None, help="single trees timed at batch 1 (default 200; quick 50)")
    p.add_argument("--max-forests", type=int, default=None,
                   help="different forests timed per batch size > 1 (default 20; quick 5)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of timed repeats per system and config (default 10; quick 4)")
    p.add_argument("--repeats", default=None, help="min,max repeats (default 5,25; quick 3,10)")
    p.add_argument("--peak-n", type=int, default=1024, help="size n of the n^3 matmul measuring the peak (1024)")
    p.add_argument("--tol", type=float, default=1e-4, help="max abs error against the numpy reference (1e-4)")
    p.add_argument("--seed", type=int, default=0, help="weights seed")
    p.add_argument("--systems", default=None, help="comma list of system keys to run (cortex,ort,pytorch,dynet; "
                        "with --target cuda also cortex_cuda,ort_cuda,pytorch_cuda_node,pytorch_cuda,cuda_graph)")
    p.add_argument("--write-docs", action="store_true", help="regenerate the benchmark section of "
                                                             "docs/performance.md from this run")
    p.add_argument("--phases", action="store_true", help="also time Cortex's kernel alone per step (checks, "
                   "linearize, leaves, levels; the kernel's own clocks, CORTEX_PROFILE=1)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--inject-mismatch", default=None, metavar="SYSTEM_KEY", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    q = a.quick
    a.batch_set = a.batch is not None
    a.batch = a.batch or "1,10"
    if a.forms:
        a.hidden_list = parse_list(a.hidden or "256")
        a.batch_list = parse_list(a.batch if a.batch_set else "10")
        a.model_list = _models.parse_models(a.models or "all")
        a.forms_batches = a.forms_batches or (3 if q else 5)
        a.forms_cap = a.forms_cap if a.forms_cap is not None else (10.0 if q else 30.0)
        if a.budget is None:
            a.budget = 2.0 if q else 3.0
        a.min_reps, a.max_reps = parse_list(a.repeats or "3,10")
        a.warmup = 1
        return a
    a.hidden_list = parse_list(a.hidden or ("64,256" if q else "64,256,512"))
    a.batch_list = parse_list(a.batch)
    a.model_list = _models.parse_models(a.models or "treelstm")
    a.trees = a.trees or (50 if q else 200)
    a.max_forests = a.max_forests or (5 if q else 20)
    a.budget = a.budget if a.budget is not None else (4.0 if q else 10.0)
    a.min_reps, a.max_reps = parse_list(a.repeats or ("3,10" if q else "5,25"))
    a.warmup = 1 if q else 2
    return a


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.phases:  # read once, when a kernel library first runs
        os.environ["CORTEX_PROFILE"] = "1"
    cmd = "python tools/bench.py " + " ".join(shlex.quote(a) for a in argv
                                              if a not in ("--write-docs", "--write-models-doc"))
    if args.forms:
        res = run_forms(args, cmd.strip())
        print(render_forms_markdown(res))
        print(f"\nwrote {res['out']}/forms.json, forms.md in {res['elapsed_s']:.0f} s", file=sys.stderr)
        if args.write_models_doc:
            write_models_doc(res)
            print(f"updated {MODELS_DOC}", file=sys.stderr)
        bad = [f"{r['model']}/{r['form']}" for r in res["rows"] if r.get("mismatch")]
        if bad:
            print(f"bench.py: converted output differs from the original above --tol: {', '.join(bad)}",
                  file=sys.stderr)
            return 2
        return 0
    try:
        res = run_bench(args, cmd.strip(), perturb=perturb_hook(args.inject_mismatch))
    except BenchMismatch as e:
        print(f"\nbench.py: STOPPED: {e}", file=sys.stderr)
        return 2
    print(render_markdown(res))
    print(f"\nwrote {res['out']}/results.json, results.md" + "".join(f", {Path(p).name}" for p in res["plots"])
          + f" in {res['elapsed_s']:.0f} s", file=sys.stderr)
    if args.write_docs and args.target == "cuda":  # the GPU run has its own page
        from tools.peers import gpu_report

        gpu_report.write_doc(res, REPO / "docs" / "performance-gpu.md")
        print(f"updated {REPO / 'docs' / 'performance-gpu.md'}", file=sys.stderr)
    elif args.write_docs:
        write_docs(res, REPO / "docs" / "performance.md")
        print(f"updated {REPO / 'docs' / 'performance.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

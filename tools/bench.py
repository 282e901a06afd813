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
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import sys
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tools.peers import BenchMismatch, flops as _flops, machine as _machine, models as _models  # noqa: E402
from tools.peers import systems as S  # noqa: E402

__all__ = ["BenchMismatch", "main", "run_bench", "parse_args"]

DOCS_BEGIN = "<!-- BEGIN GENERATED: tools/bench.py --write-docs -->"
DOCS_END = "<!-- END GENERATED: tools/bench.py --write-docs -->"
MODELS_DOC = REPO / "docs" / "models.md"


# ----------------------------------------------------------------------------------------------------------------
# progress


class Progress:
    """A text progress bar on stderr (a line per step when stderr is not a terminal)."""

    def __init__(self, total: int, enabled: bool = True, width: int = 30):
        self.total, self.done, self.width, self.enabled = max(total, 1), 0, width, enabled
        self.tty = sys.stderr.isatty()
        self.t0 = time.perf_counter()

    def step(self, label: str, advance: int = 1) -> None:
        self.done += advance
        self.show(label)

    def show(self, label: str) -> None:
        if not self.enabled:
            return
        frac = min(self.done / self.total, 1.0)
        bar = "#" * int(frac * self.width) + "." * (self.width - int(frac * self.width))
        line = f"[{bar}] {self.done:3d}/{self.total} {time.perf_counter() - self.t0:6.0f}s  {label}"
        if self.tty:
            sys.stderr.write("\r" + line[:150].ljust(150))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


# ----------------------------------------------------------------------------------------------------------------
# inputs


def load_trees(sst, count: int, vocab: int, seed: int):
    """(trees, description): the first ``count`` SST test trees from ``sst`` (default: the repo's data), or
    SST-shaped synthetic trees when there is no SST directory."""
    return load_structures("binary", sst, count, vocab, seed)


def load_structures(kind: str, sst, count: int, vocab: int | None, seed: int):
    """(structures, description) of a zoo structure kind, from ``onnx_ops.zoo.structures``: the first ``count``
    SST test trees from ``sst`` (default: the repo's data) for trees, their sentences as chains for chains;
    SST-shaped synthetic trees when there is no SST directory; synthetic grids for grids."""
    from cortex.examples import structures as st
    from onnx_ops import zoo

    vocab = vocab or zoo.VOCAB
    path = Path(sst) if sst else st.sst_dir_default()
    have_sst = path is not None and (Path(path) / "STree.txt").exists()
    if sst and not have_sst:
        raise FileNotFoundError(f"--sst {sst}: no STree.txt there")
    rng = np.random.default_rng(seed)
    items = zoo.structures(kind, count, rng, sst_dir=path if have_sst else None, vocab=vocab)
    if kind == "grid":
        src = (f"synthetic grids about {zoo.GRID_SIDE}x{zoo.GRID_SIDE} (sides {zoo.GRID_SIDE}±1), "
               f"{zoo.GRID_FEATURES} features, {len(items)} grids, seed {seed}")
    elif have_sst:
        what = {"binary": "trees", "nary": "trees as n-ary (padded children)", "chain": "sentences as chains"}[kind]
        src = f"SST test split ({path}), first {len(items)} {what}, hashed token ids mod {vocab}"
    else:
        src = f"synthetic SST-shaped {kind} structures (no SST directory found), {len(items)}, seed {seed}"
    nodes = [x.num_nodes for x in items]
    desc = {"kind": kind, "source": src, "num_trees": len(items), "mean_nodes": float(np.mean(nodes)),
            "max_nodes": int(max(nodes))}
    if all(hasattr(x, "height") for x in items):
        hts = [x.height() for x in items]
        desc.update(mean_height=float(np.mean(hts)), max_height=int(max(hts)))
    return items, desc


def config_inputs(trees, batch: int, max_inputs: int, kind: str = "binary"):
    """Batches of ``batch`` consecutive structures (different ones per input), at most ``max_inputs`` of them."""
    from onnx_ops import zoo

    k = min(len(trees) // batch, max_inputs)
    if k < 1:
        raise ValueError(f"batch {batch} needs at least {batch} structures, have {len(trees)}")
    return [zoo.batch(kind, trees[i * batch:(i + 1) * batch]) for i in range(k)]


# ----------------------------------------------------------------------------------------------------------------
# checking and timing


def _outs(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def check_outputs(name, runner, inputs, refs, model, config, tol, perturb=None, out_names=None):
    """Max abs error of ``runner`` against the reference over ``inputs`` (every output table, every node); raises
    BenchMismatch above ``tol``. ``perturb`` (*outputs) -> outputs is a test hook applied to the system's
    outputs."""
    worst, elapsed = 0.0, 0.0
    for f, ref in zip(inputs, refs):
        ref = _outs(ref)
        t0 = time.perf_counter()
        got = _outs(runner(f))
        elapsed += time.perf_counter() - t0
        if perturb is not None:
            got = _outs(perturb(*[np.array(g) for g in got]))
        errs = [S.max_abs_err(g, r) for g, r in zip(got, ref)] if len(got) == len(ref) else [float("inf")]
        err = max(errs)
        worst = max(worst, err)
        if not err <= tol:
            k = int(np.argmax(errs))
            names = out_names or (["h", "c"] if len(ref) == 2 else [f"output {i}" for i in range(len(ref))])
            which = names[k] if len(got) == len(ref) else f"{len(got)} outputs, expected {len(ref)}"
            raise BenchMismatch(name, model, config, err, tol,
                                f"worst on {which}, input with {f.num_nodes} nodes; systems compared: {name} vs "
                                "numpy reference")
    return worst, elapsed / max(len(inputs), 1)


def time_system(runner, inputs, budget_s: float, min_reps: int, max_reps: int, warmup: int,
                est_pass_s: float | None = None, floor_reps: int = 2):
    """Times ``runner`` over ``inputs``: up to ``warmup`` untimed passes (fewer when a pass takes more than half
    the budget; none when ``est_pass_s`` already does), then repeats, each one timed pass over all inputs:
    as many as fit in ``budget_s``, clipped to [min_reps, max_reps], but at least 2 and at most ~3x the budget
    when one pass is slow. Returns stats in ms per input."""

    def one_pass():
        ts = np.empty(len(inputs))
        for i, f in enumerate(inputs):
            t0 = time.perf_counter()
            runner(f)
            ts[i] = time.perf_counter() - t0
        return ts

    t_est = est_pass_s
    done_warm = 0
    while done_warm < warmup and not (t_est is not None and t_est > budget_s / 2):
        t_est = float(one_pass().sum())
        done_warm += 1
    rows = []
    if t_est is None:
        rows.append(one_pass())
        t_est = float(rows[0].sum())
    reps = int(np.clip(np.floor(budget_s / max(t_est, 1e-9)), min_reps, max_reps))
    if t_est * reps > 3 * budget_s:
        reps = max(floor_reps, int(3 * budget_s / t_est))
    while len(rows) < reps:
        rows.append(one_pass())
    per = np.array(rows)  # [reps, inputs] seconds
    pass_mean = per.mean(axis=1) * 1e3  # ms per input, per repeat
    return {
        "ms_median": float(np.median(pass_mean)),
        "ms_p10": float(np.percentile(pass_mean, 10)),
        "ms_p90": float(np.percentile(pass_mean, 90)),
        "ms_min": float(pass_mean.min()),
        "repeats": int(per.shape[0]),
        "warmup_passes": done_warm,
        "per_input_ms_median": [round(float(x), 4) for x in np.median(per, axis=0) * 1e3],
    }


# ----------------------------------------------------------------------------------------------------------------
# the run


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


def _perturb_hook(key):
    def perturb(*outs):
        h = outs[0].copy()
        if h.size:
            h.flat[h.size // 2] += 1e-2
        return (h,) + tuple(outs[1:])

    return {key: perturb} if key else {}


def run_bench(args, argv_text: str = "", perturb: dict | None = None, log=None) -> dict:
    """Runs the benchmark described by ``args`` (see :func:`parse_args`); returns the results dict (also written
    to ``args.out``). ``perturb`` maps a system key (``cortex``, ``ort``, ``pytorch``, ``dynet``) to a hook applied
    to that system's outputs in the check (tests use it to inject a mismatch)."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    perturb = dict(perturb or {})
    t_start = time.perf_counter()
    out = Path(args.out) if args.out else Path(__import__("tempfile").mkdtemp(prefix="cortex_bench_"))
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    res: dict = {
        "command": argv_text or "python tools/bench.py",
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
        "target": args.target,
        "tolerance": args.tol,
        "settings": {"hidden": args.hidden_list, "batch": args.batch_list, "throughput": args.throughput,
                     "trees_batch1": args.trees, "max_forests": args.max_forests, "budget_s": args.budget,
                     "repeats_min_max": [args.min_reps, args.max_reps], "warmup_passes": args.warmup,
                     "quick": bool(args.quick), "seed": args.seed},
        "notes": notes,
    }
    res["machine"] = _machine.describe()
    log("machine: " + _machine.one_line(res["machine"]))

    # systems
    wanted = set(k.strip() for k in args.systems.split(",")) if args.systems else None
    sys_status: dict[str, str] = {}
    for name in S.CPU_SYSTEMS:
        if wanted is not None and S.KEYS[name] not in wanted:
            sys_status[name] = "not requested (--systems)"
            continue
        st_ = S.system_status(name)
        sys_status[name] = st_ or "ok"
    for name in S.GPU_SYSTEMS:
        if args.target != "cuda":
            sys_status[name] = "not requested (--target cpu)"
        else:
            sys_status[name] = S.system_status(name) or "ok"
            if sys_status[name] == "ok" and wanted is not None and S.KEYS[name] not in wanted:
                sys_status[name] = "not requested (--systems)"
    if args.target == "cuda":
        from tools.peers import torch_peer

        why = torch_peer.cuda_status()
        if why:
            notes.append(f"--target cuda: no GPU is available on this machine ({why}); the CPU systems were run "
                         "and GPU peers are listed as not available")
            log("note: " + notes[-1])
        notes.append("Cortex (CPU) is the CPU kernel on this host's cores; Cortex (CUDA) is the same model converted "
                     "with --target cuda (end to end here; the kernel alone in the GPU table)")
    runnable = [n for n in S.ALL_SYSTEMS if sys_status[n] == "ok"]
    res["systems"] = {n: {"key": S.KEYS[n], "status": sys_status[n], "device": S.DEVICE[n]} for n in S.ALL_SYSTEMS}
    _gpu_info(res, runnable)
    for n, s in sys_status.items():
        if s != "ok":
            log(f"system {n}: {s}")
    try:
        import torch

        res["systems"][S.TORCH]["threads"] = torch.get_num_threads()
        res["systems"][S.TORCH]["style"] = "per model (see Models), inference_mode"
    except ImportError:
        pass
    if sys_status[S.DYNET] == "ok":
        from tools.peers import dynet_peer

        res["systems"][S.DYNET]["autobatch"] = dynet_peer.autobatch_setting()
    res["systems"][S.ORT]["note"] = "original Loop/If model, CPUExecutionProvider, default session options"
    res["systems"][S.CORTEX]["note"] = ("converted model, cortex.InferenceSession (Cortex EP + CPU EP); kernel "
                                        "threads: CORTEX_NUM_THREADS or all cores")

    # peak
    log("measuring the matrix-product peak ...")
    res["peak"] = _flops.matmul_peak(args.peak_n)
    res["peak"]["fma_peak_gflops"] = _flops.fma_peak(res["machine"]["usable_cores"] or 1)
    log(f"peak: {res['peak']['peak_gflops']:.1f} GFLOP/s ({res['peak']['peak_source']})")

    entries = [_models.get(m) for m in args.model_list]
    pool = max([args.trees] + [b * (args.max_forests if b > 1 else 1) for b in args.batch_list]
               + ([args.throughput] if args.throughput else []))
    res["structures"] = {}
    pools = {}  # (kind, vocab) -> structures
    for entry in entries:
        k = (entry.structure, entry.vocab)
        if k not in pools:
            pools[k], desc = load_structures(entry.structure, args.sst, pool, entry.vocab, args.seed)
            res["structures"][f"{entry.structure}" + (f" (vocab {entry.vocab})" if entry.vocab else "")] = desc
            log(f"structures ({entry.structure}): " + desc["source"])

    configs = []  # (batch, kind)
    for b in args.batch_list:
        configs.append((b, "latency"))
    if args.throughput and args.throughput not in args.batch_list:
        configs.append((args.throughput, "throughput"))

    def inputs_for(entry):
        items = pools[(entry.structure, entry.vocab)]
        out_ = {}
        for b, _ in configs:
            if b == 1:
                out_[b] = config_inputs(items[:args.trees], 1, args.trees, entry.structure)
            else:
                out_[b] = config_inputs(items, b, args.max_forests if b <= 10 else max(1, args.max_forests // 10),
                                        entry.structure)
        return out_

    res["models"] = {}
    res["rows"] = []
    cache = out / "models"
    total = sum(len(args.hidden_list) * (1 + len(configs) * len([n for n in runnable if not S.model_status(n, e)]))
                for e in entries)
    bar = Progress(total, enabled=not args.no_progress)
    try:
        for entry in entries:
            minfo = res["models"].setdefault(entry.name, {
                "description": entry.description, "structure": entry.structure, "convert": {},
                "pytorch_style": entry.torch_style, "dynet": entry.dynet_status or "ok", "flops": entry.flops_doc})
            inputs_by_batch = inputs_for(entry)
            model_runnable = [n for n in runnable if not S.model_status(n, entry)]
            for H in args.hidden_list:
                params = entry.make_params(H, args.seed)
                bar.show(f"{entry.name} h={H}: converting (cached per model, hidden)")
                loop_path, cortex_path = None, None
                if any(n in runnable for n in S.MODEL_FILE_SYSTEMS):
                    loop_path, cortex_path, cinfo = S.converted_model(entry, params, H, args.seed, cache)
                    minfo["convert"][str(H)] = cinfo
                bar.step(f"{entry.name} h={H}: model ready")
                runners = {}
                for name in model_runnable:
                    runners[name] = S.build(name, entry, params, loop_path, cortex_path)
                for b, kind in configs:
                    inputs = inputs_by_batch[b]
                    config = f"hidden={H}, batch={b}"
                    row = {"model": entry.name, "hidden": H, "batch": b, "kind": kind, "n_inputs": len(inputs),
                           "nodes_mean": float(np.mean([f.num_nodes for f in inputs])),
                           "flops_mean": float(np.mean([entry.flops(params, f) for f in inputs])),
                           "check_max_abs_err": {}, "results": {}}
                    check_s: dict[str, float] = {}
                    ncheck = min(len(inputs), 3 if b == 1 else 1)
                    refs = [entry.reference(params, f) for f in inputs[:ncheck]]
                    prepared = {}  # CUDA graphs: one capture per input, untimed
                    for name in runners:
                        if hasattr(runners[name], "prepare"):
                            bar.show(f"{entry.name} h={H} b={b}: preparing {name}")
                            prepared[name] = runners[name].prepare(inputs)
                    # check every system first (also the first warm-up of each)
                    for name in S.ALL_SYSTEMS:
                        if name not in runners:
                            row["results"][name] = {"status": sys_status[name] if sys_status[name] != "ok"
                                                    else S.model_status(name, entry)}
                            continue
                        bar.show(f"{entry.name} h={H} b={b}: checking {name}")
                        err, t_call = check_outputs(
                            name, runners[name], inputs[:ncheck], refs, entry.name, config, args.tol,
                            perturb.get(S.KEYS[name]))
                        row["check_max_abs_err"][name] = err
                        check_s[name] = t_call * len(inputs)
                    for name in runners:
                        bar.show(f"{entry.name} h={H} b={b}: timing {name}")
                        # a first call far slower than the budget counts as the warm-up (ORT's Loop at batch 100)
                        est = check_s[name] if check_s[name] > args.budget / 2 else None
                        # GPU runners: timed_call returns once the device is synchronized (outputs stay there)
                        r = time_system(getattr(runners[name], "timed_call", runners[name]), inputs, args.budget,
                                        args.min_reps, args.max_reps, args.warmup, est_pass_s=est)
                        r["status"] = "ok"
                        r["device"] = S.DEVICE[name]
                        if name in prepared:
                            r["prepare"] = prepared[name]
                        if hasattr(runners[name], "kernel_call") and S.DEVICE[name] != "CPU":
                            # Cortex (CUDA): the kernel alone through its C ABI, too
                            r["kernel"] = time_system(runners[name].kernel_call, inputs, args.budget, args.min_reps,
                                                      args.max_reps, args.warmup)
                        if args.phases and hasattr(runners[name], "session_steps"):
                            r["phases"] = runners[name].session_steps(inputs)
                        sec = r["ms_median"] / 1e3
                        r["gflops"] = row["flops_mean"] / sec / 1e9 if sec > 0 else None
                        r["peak_frac"] = (r["gflops"] / res["peak"]["peak_gflops"]
                                          if r["gflops"] and S.DEVICE[name] == "CPU" else None)
                        r["trees_per_s"] = b / sec if sec > 0 else None
                        row["results"][name] = r
                        bar.step(f"{entry.name} h={H} b={b}: {name} {r['ms_median']:.3f} ms")
                    cx = row["results"].get(S.CORTEX, {})
                    row["speedup"] = {}
                    for name in S.ALL_SYSTEMS[1:]:
                        o = row["results"].get(name, {})
                        if cx.get("status") == "ok" and o.get("status") == "ok":
                            row["speedup"][name] = o["ms_median"] / cx["ms_median"]
                    res["rows"].append(row)
                    _write_json(out / "results.json", res)  # partial results survive an interrupted run
                del runners
    finally:
        bar.close()
    # the peak again at the end (the larger counts), then every row's fraction of it
    fma = res["peak"].get("fma_peak_gflops")
    res["peak"] = _flops.combine_peaks(res["peak"], _flops.matmul_peak(args.peak_n))
    res["peak"]["fma_peak_gflops"] = fma
    for row in res["rows"]:
        for r in row["results"].values():
            if r.get("gflops") and r.get("device", "CPU") == "CPU":
                r["peak_frac"] = r["gflops"] / res["peak"]["peak_gflops"]
    res["machine"]["load_average_end"] = _machine.load_average()
    res["elapsed_s"] = time.perf_counter() - t_start
    _write_json(out / "results.json", res)
    (out / "results.md").write_text(render_markdown(res))
    res["plots"] = [] if args.no_plots else make_plots(res, out)
    _write_json(out / "results.json", res)
    (out / "results.md").write_text(render_markdown(res))
    res["out"] = str(out)
    return res


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------------
# --forms: every form of every model


def _form_model(entry, form: str, export_module, params, example, tmp: Path):
    """(ModelProto of ``form``, the ModelProto ORT runs as the original): the hand-built Loop/If, the TreeRec model
    (ORT runs its lowering, ``cortex.treerec.lower_treerec``) or a TorchScript export of a PyTorch style."""
    import onnx

    if form == "loop":
        m = entry.build_loop(params)
        return m, m
    if form == "treerec":
        from cortex.treerec import lower_treerec

        m = entry.build_treerec(params)
        return m, lower_treerec(m)
    if form == "cells":  # the PyTorch cell road (cortex.torch.export of onnx_ops.zoo.cells), the zoo model's weights
        from cortex.treerec import lower_treerec

        m = export_module.export(entry.name, params.hidden, None, entry.treerec_feeds(example), params=params)
        return m, lower_treerec(m)
    path = tmp / f"{entry.name}_{form}.onnx"
    if getattr(export_module, "BENCH_FORMS", None) is not None:  # onnx_ops.zoo.wild: its own weights and sizes
        sizes = _wild_form(entry, form, export_module)[0](params.hidden, entry)
        export_module.export_model(form, path, _form_feeds(entry, form, export_module)(example), **sizes)
        return onnx.load(str(path)), onnx.load(str(path))
    export_module.export(form, params, str(path), example)
    m = onnx.load(str(path))
    return m, m


def _wild_form(entry, form: str, export_module):
    """(sizes for a hidden size and entry, inputs for a structure or None) of a form of onnx_ops.zoo.wild."""
    return next((sizes, feeds) for name, sizes, feeds in export_module.BENCH_FORMS[entry.name] if name == form)


def _form_feeds(entry, form: str, export_module):
    """The inputs of ``form`` for one of the entry's structures (the TreeRec inputs, a wild model's own, or the
    Loop model's)."""
    if form in ("treerec", "cells"):
        return entry.treerec_feeds
    if getattr(export_module, "BENCH_FORMS", None) is not None:
        own = _wild_form(entry, form, export_module)[1]
        if own is not None:
            return own
    return entry.feeds


def _one_line(e: BaseException, limit: int = 300) -> str:
    """``Type: first non-empty line of the message`` (torch errors often start with a newline)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    msg = f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return msg if len(msg) <= limit else msg[:limit] + "…"


def _max_err(a: tuple, b: tuple) -> float:
    if len(a) != len(b):
        return float("inf")
    return max((S.max_abs_err(x, y) for x, y in zip(a, b)), default=0.0)


def run_forms(args, argv_text: str = "", log=None) -> dict:
    """Every form of every model in ``args.model_list``: convert with ``cortex.convert(strict=False)``, record
    converted or not (and the report's reason), the max abs error of the converted model against the original
    (ORT on the original form; TreeRec: on its lowering) over every input, and the median latency of ORT on the
    original and of Cortex on the converted model over ``args.forms_batches`` different batches of
    ``args.batch_list[0]`` structures. Returns the results (also written to ``args.out``/forms.json, forms.md)."""
    import tempfile

    log = log or (lambda msg: print(msg, file=sys.stderr))
    t_start = time.perf_counter()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="cortex_forms_"))
    out.mkdir(parents=True, exist_ok=True)
    H, B = args.hidden_list[0], args.batch_list[0]
    res: dict = {
        "command": argv_text or "python tools/bench.py --forms",
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
        "machine": _machine.describe(),
        "tolerance": args.tol,
        "settings": {"hidden": H, "batch": B, "batches": args.forms_batches, "budget_s": args.budget,
                     "repeats_min_max": [args.min_reps, args.max_reps], "warmup_passes": args.warmup,
                     "form_cap_s": args.forms_cap, "seed": args.seed, "quick": bool(args.quick)},
        "structures": {}, "rows": [], "notes": [],
    }
    log("machine: " + _machine.one_line(res["machine"]))
    for n in (S.CORTEX, S.ORT):
        why = S.system_status(n)
        if why:
            raise RuntimeError(f"--forms needs {n}: {why}")
    entries = [_models.get(m) for m in args.model_list]
    forms_of = {e.name: [("loop", None), ("treerec", None)] + _models.export_styles(e.name) + _models.cell_forms(e.name)
                + _models.wild_forms(e.name) for e in entries}
    if not any(len(v) > 2 for v in forms_of.values()):
        res["notes"].append("torch is not installed: no TorchScript export forms")
    total = sum(len(v) for v in forms_of.values())
    bar = Progress(total, enabled=not args.no_progress)
    cache = out / "models"
    tmp = Path(tempfile.mkdtemp(prefix="exports_", dir=out))
    pools = {}
    try:
        for entry in entries:
            k = (entry.structure, entry.vocab)
            if k not in pools:
                items, desc = load_structures(entry.structure, args.sst, B * args.forms_batches, entry.vocab,
                                              args.seed)
                pools[k] = config_inputs(items, B, args.forms_batches, entry.structure)
                res["structures"][entry.structure + (f" (vocab {entry.vocab})" if entry.vocab else "")] = desc
            inputs = pools[k]
            params = entry.make_params(H, args.seed)
            example = inputs[0]
            for form, export_module in forms_of[entry.name]:
                t_form = time.perf_counter()
                row = {"model": entry.name, "form": form, "structure": entry.structure, "hidden": H, "batch": B,
                       "n_inputs": len(inputs), "nodes_mean": float(np.mean([f.num_nodes for f in inputs]))}
                res["rows"].append(row)
                bar.show(f"{entry.name} {form}: building and converting")
                try:
                    model, original = _form_model(entry, form, export_module, params, example, tmp)
                    src, dst, info = S.convert_cached(model, f"{entry.name}_{form}_h{H}_s{args.seed}", cache,
                                                      strict=False)
                except Exception as e:  # noqa: BLE001 - reported in the row, the run goes on
                    row.update(status="error", converted=False, reason=_one_line(e),
                               traceback=traceback.format_exc())
                    log(f"{entry.name} {form}: {row['reason']}")
                    bar.step(f"{entry.name} {form}: error")
                    continue
                row.update(converted=info["converted"], reason=info.get("reason"), convert_s=info.get("convert_s"),
                           convert_cached=info.get("cached"), regions=info.get("regions"))
                orig_path = src
                if original is not model:
                    import onnx

                    orig_path = src.parent / "original_lowered.onnx"
                    onnx.save(original, str(orig_path))
                feeds = _form_feeds(entry, form, export_module)
                try:
                    ort_run = S.OrtRunner(orig_path, feeds, cortex_ep=False)
                    cx_run = S.OrtRunner(dst, feeds, cortex_ep=True) if info["converted"] else None
                    # the check: every input through both (also the first warm-up pass of each)
                    bar.show(f"{entry.name} {form}: checking")
                    err, t_ort, t_cx = 0.0, [], []
                    for f in inputs:
                        t0 = time.perf_counter()
                        want = _outs(ort_run(f))
                        t_ort.append(time.perf_counter() - t0)
                        if cx_run is not None:
                            t0 = time.perf_counter()
                            got = _outs(cx_run(f))
                            t_cx.append(time.perf_counter() - t0)
                            err = max(err, _max_err(got, want))
                    row["max_abs_err"] = err if cx_run is not None else None
                    row["mismatch"] = bool(cx_run is not None and not err <= args.tol)
                    # time bounded: as many batches (>= 1) as fit min_reps repeats of ORT in the per-form cap
                    per_in = float(np.mean(t_ort))
                    k = int(np.clip(args.forms_cap / max(per_in * args.min_reps, 1e-9), 1, len(inputs)))
                    timed = inputs[:k]
                    row["n_timed"] = k
                    bar.show(f"{entry.name} {form}: timing ONNX Runtime ({k} batches)")
                    est = per_in * k if per_in * k > args.budget / 2 else None
                    row["ort"] = time_system(ort_run, timed, args.budget, args.min_reps, args.max_reps,
                                             args.warmup, est_pass_s=est, floor_reps=args.min_reps)
                    if cx_run is not None:
                        bar.show(f"{entry.name} {form}: timing Cortex")
                        row["cortex"] = time_system(cx_run, timed, args.budget, args.min_reps, args.max_reps,
                                                    args.warmup, floor_reps=args.min_reps)
                        row["speedup"] = row["ort"]["ms_median"] / row["cortex"]["ms_median"]
                    row["status"] = "ok"
                    del ort_run, cx_run
                except Exception as e:  # noqa: BLE001
                    row.update(status="error", error=_one_line(e), traceback=traceback.format_exc())
                    log(f"{entry.name} {form}: {row['error']}")
                row["form_s"] = time.perf_counter() - t_form
                msg = (f"{entry.name} {form}: converted={row['converted']}"
                       + (f" err={row['max_abs_err']:.2g}" if row.get("max_abs_err") is not None else "")
                       + (f" ORT {row['ort']['ms_median']:.3g} ms" if row.get("ort") else "")
                       + (f" Cortex {row['cortex']['ms_median']:.3g} ms" if row.get("cortex") else "")
                       + f" ({row['form_s']:.0f} s)")
                bar.step(msg)
                if args.no_progress:
                    log(msg)
                _write_json(out / "forms.json", res)
    finally:
        bar.close()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    res["machine"]["load_average_end"] = _machine.load_average()
    res["elapsed_s"] = time.perf_counter() - t_start
    _write_json(out / "forms.json", res)
    (out / "forms.md").write_text(render_forms_markdown(res))
    res["out"] = str(out)
    return res


def _fmt_ms(r) -> str:
    if not r:
        return "–"
    m = r["ms_median"]
    return f"{m:.3g}" if m < 100 else f"{m:.0f}"


def render_forms_table(res: dict) -> str:
    lines = ["| model | form | converted | max abs error | ORT ms | Cortex ms | speedup |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in res["rows"]:
        if r.get("converted"):
            conv = "yes"
        else:
            why = (r.get("reason") or r.get("error") or "").replace("|", "\\|").replace("\n", " ")
            conv = "no" + (f": {why}" if why else "")
        if r.get("status") == "error" and r.get("error"):
            conv += f" (run failed: {r['error']})".replace("|", "\\|")
        err = r.get("max_abs_err")
        errs = "–" if err is None else (f"{err:.1e}" + (" MISMATCH" if r.get("mismatch") else ""))
        sp = f"{r['speedup']:.1f}×" if r.get("speedup") else "–"
        lines.append(f"| {r['model']} | {r['form']} | {conv} | {errs} | {_fmt_ms(r.get('ort'))} | "
                     f"{_fmt_ms(r.get('cortex'))} | {sp} |")
    return "\n".join(lines)


def render_forms_header(res: dict) -> str:
    m, s = res["machine"], res["settings"]
    lines = [
        f"- Command: `{res['command']}` ({res['started']}, {res.get('elapsed_s', 0) / 60:.1f} min)",
        f"- Git revision: {m.get('cortex_git')}",
        f"- Machine: {_machine.one_line(m)}",
        f"- Load average (1, 5, 15 min) at start / end: {m.get('load_average_start')} / "
        f"{m.get('load_average_end')} (on a shared machine other load inflates times)",
    ]
    for key, d in res["structures"].items():
        lines.append(f"- Structures ({key}): {d['source']}; batches of {s['batch']}, mean "
                     f"{d['mean_nodes']:.1f} nodes per structure")
    lines += [
        f"- Each form is built at hidden {s['hidden']}, seed {s['seed']}, and converted with "
        "`cortex.convert(..., strict=False)`; \"converted\" = every recursive region became a Cortex kernel (else "
        "the report's reason). Forms: `loop` = the hand-built Loop/If model; `treerec` = the `cortex.TreeRec` model "
        "(ONNX Runtime runs its lowering `cortex.treerec.lower_treerec`); `cells` = the PyTorch cell road "
        "(`cortex.torch.export` of `onnx_ops/zoo/cells.py`, a TreeRec model, run by ORT as its lowering); the "
        "others are TorchScript exports (`torch.onnx.export(dynamo=False)`) of the PyTorch styles in "
        "`onnx_ops/zoo/torch_*.py`.",
        f"- Max abs error: the converted model (Cortex EP) against the original form in ONNX Runtime (CPU EP), every "
        f"output, every node, over {s['batches']} different batches (tolerance {res['tolerance']:g}).",
        f"- Timing: ms per batch of {s['batch']} structures; median over repeats of the mean over batches; "
        f"{s['warmup_passes']} warm-up pass, {s['repeats_min_max'][0]}–{s['repeats_min_max'][1]} repeats (as many as "
        f"fit in {s['budget_s']:g} s, at least {s['repeats_min_max'][0]}); when ONNX Runtime is slow the number of "
        f"batches timed is cut so that its repeats fit in about {s['form_cap_s']:g} s (both systems time the same "
        "batches). Speedup = ORT ms / Cortex ms.",
    ]
    for n in res.get("notes", []):
        lines.append(f"- Note: {n}")
    return "\n".join(lines)


def render_forms_markdown(res: dict) -> str:
    return "\n".join(["# Cortex on every form of every zoo model", "", render_forms_header(res), "",
                      render_forms_table(res), ""])


def write_models_doc(res: dict, path: Path = MODELS_DOC) -> None:
    """Writes docs/models.md from a --forms run (the whole file is generated)."""
    text = "\n".join([
        "# Models: every form, converted or not, error and speed",
        "",
        "<!-- GENERATED by `tools/bench.py --forms --write-models-doc`; do not edit by hand. -->",
        "",
        "Every model of the zoo (`onnx_ops.zoo.MODELS`) in every form Cortex reads. Regenerate with the command "
        "below plus `--write-models-doc`; every number comes from that one run.",
        "",
        render_forms_header(res),
        "",
        render_forms_table(res),
        "",
        "Models: " + "; ".join(f"`{n}`: {_models.get(n).description}" for n in dict.fromkeys(
            r["model"] for r in res["rows"])) + ".",
        "",
    ])
    generality = path.parent / "generality.md"  # tools/fuzz_import.py --write-doc: the generated-models section
    if generality.is_file():
        text += "\n" + generality.read_text()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# ----------------------------------------------------------------------------------------------------------------
# reporting


def _ms(r) -> str:
    if r.get("status") != "ok":
        return r.get("status", "-").split(" (")[0]
    m = r["ms_median"]
    f = (lambda x: f"{x:.3g}") if m < 10 else (lambda x: f"{x:.0f}")
    return f"{f(m)} ({f(r['ms_p10'])}–{f(r['ms_p90'])})"


def _table_systems(res: dict) -> list[str]:
    """Columns of the tables: the CPU systems, plus the GPU systems on a --target cuda run."""
    return list(S.CPU_SYSTEMS) + (list(S.GPU_SYSTEMS) if res.get("target") == "cuda" else [])


def _label(res: dict, name: str) -> str:
    """A system's name, with its device on a --target cuda run (the CPU systems still run on the CPU there)."""
    if res.get("target") != "cuda":
        return name
    dev = S.DEVICE.get(name, "?")
    return name if name.endswith(f"({dev})") else f"{name} ({dev})"


def _gpu_info(res: dict, runnable: list) -> None:
    """Records the GPU (name, CUDA version) and the GPU systems' notes when any of them runs."""
    gpu = [n for n in S.GPU_SYSTEMS if n in runnable]
    if not gpu:
        return
    import torch

    desc = (f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}; "
            "float32 (TF32 off)")
    res["machine"]["gpu"] = desc
    notes = {S.TORCH_GPU_NODE: "the natural per-node module (onnx_ops.zoo.torch_treelstm style index_put) on the "
                               "GPU: inputs copied to the device per call",
             S.TORCH_GPU: "level-batched eager PyTorch: host level schedule (O(N)) and one index copy per call, "
                          "one gather + matmul + gates + index_copy_ per level",
             S.CUDA_GRAPH: "the level-batched forward captured once per input structure (capture untimed, in "
                           "results.json 'prepare'); timed: graph.replay() + synchronize"}
    for n in gpu:
        if n not in notes:  # the systems that run through ONNX Runtime (tools/peers/cortex_gpu.py)
            from tools.peers import cortex_gpu

            res["systems"][n]["note"] = cortex_gpu.NOTES[S.KEYS[n]] + f"; {desc}"
            continue
        res["systems"][n]["note"] = notes[n] + f"; {desc}; timed until torch.cuda.synchronize(), outputs left " \
                                               "on the device"


def render_table(res: dict) -> str:
    """The main table: ms per forest (median, p10–p90 over repeats) per system, Cortex's speedups, GFLOP/s."""
    sysn = _table_systems(res)
    peers = sysn[1:]
    short = {S.ORT: "ORT"}
    lines = []
    hdr = (["model", "hidden", "batch"] + [f"{_label(res, n)} ms" for n in sysn]
           + [f"Cortex vs {short.get(peers[0], peers[0])}"] + [f"vs {n}" for n in peers[1:]]
           + ["GFLOP/s " + " / ".join(short.get(n, n) for n in sysn), "Cortex % of peak", "Cortex trees/s"])
    lines.append("| " + " | ".join(hdr) + " |")
    lines.append("|" + "|".join(["---"] * 3 + ["---:"] * (len(hdr) - 3)) + "|")
    for row in res["rows"]:
        R = row["results"]
        sp = row.get("speedup", {})
        gf = " / ".join(f"{R[n]['gflops']:.2f}" if R.get(n, {}).get("status") == "ok" else "–" for n in sysn)
        cx = R.get(S.CORTEX, {})
        cells = [row["model"], str(row["hidden"]), f"{row['batch']}" + (" (throughput)" if row["kind"] == "throughput"
                                                                        else "")]
        cells += [_ms(R.get(n, {})) for n in sysn]
        cells += [f"{sp[n]:.1f}×" if n in sp else "–" for n in peers]
        cells += [gf, f"{100 * cx['peak_frac']:.1f}%" if cx.get("peak_frac") else "–",
                  f"{cx['trees_per_s']:.0f}" if cx.get("trees_per_s") else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_throughput(res: dict) -> str:
    sysn = _table_systems(res)
    lines = ["| model | hidden | batch | " + " | ".join(f"{_label(res, n)} trees/s" for n in sysn) + " |",
             "|---|---|---|" + "---:|" * len(sysn)]
    for row in res["rows"]:
        R = row["results"]
        cells = [row["model"], str(row["hidden"]), str(row["batch"])]
        cells += [f"{R[n]['trees_per_s']:.0f}" if R.get(n, {}).get("status") == "ok" else R.get(n, {}).get(
            "status", "–").split(" (")[0] for n in sysn]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_steps(res: dict, system: str) -> str | None:
    """Where ``system``'s time goes per config (--phases): end to end, in the kernel, outside it, and the kernel's
    steps; None without --phases."""
    rows = [r for r in res["rows"] if r["results"].get(system, {}).get("phases")]
    if not rows:
        return None
    steps = list(rows[0]["results"][system]["phases"]["steps_us"])
    hdr = ["model", "hidden", "batch", "end to end µs", "outside the kernel µs", "kernel µs"] + [f"{k} µs"
                                                                                               for k in steps]
    lines = ["| " + " | ".join(hdr) + " |", "|---|---|---|" + "---:|" * (len(hdr) - 3)]
    for row in rows:
        r = row["results"][system]
        ph = r["phases"]
        cells = [row["model"], str(row["hidden"]), str(row["batch"]), f"{1e3 * r['ms_median']:.1f}",
                 f"{ph['outside_us']:.1f}", f"{ph['kernel_us']:.1f}"]
        cells += [f"{ph['steps_us'][k]:.1f}" if k in ph["steps_us"] else "–" for k in steps]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


STEPS_NOTE = ("End to end: the median of the timed repeats above, through the ORT session. The rest comes from 3 "
              "untimed passes over the same inputs through the same session (--phases sets CORTEX_PROFILE=1, which "
              "turns on the kernel's own clocks), medians over the runs: kernel = its clocks from its entry to its "
              "end; outside the kernel = that run's end to end less its kernel time (ORT's run, input and output "
              "handling, the EP's call, Python); then the kernel's steps, which add up to about the kernel's time "
              "(on the GPU 'until finished' holds the GPU kernel (events) and the wait for it).")


def render_header(res: dict) -> str:
    m, pk = res["machine"], res["peak"]
    st_ = res["structures"]
    s = res["settings"]
    lines = [
        f"- Command: `{res['command']}` ({res['started']}, {res.get('elapsed_s', 0) / 60:.1f} min)",
        f"- Machine: {_machine.one_line(m)}" + (f"; GPU: {m['gpu']}" if m.get("gpu") else ""),
        f"- Matrix-product peak (measured in this run): {pk['peak_gflops']:.1f} GFLOP/s ({pk['peak_source']}; numpy "
        f"{pk['numpy_matmul_gflops']:.1f}" + (f", cortex._C.gemm_packed {pk['cortex_gemm_packed_gflops']:.1f}"
                                                if pk.get("cortex_gemm_packed_gflops") else "")
        + (f"; register-only FMA ceiling {pk['fma_peak_gflops']:.0f}" if pk.get("fma_peak_gflops") else "") + ")",
        f"- Load average (1, 5, 15 min) at start / end: {m.get('load_average_start')} / "
        f"{m.get('load_average_end')} (the machine is shared; other load inflates times and spreads)",
    ]
    for key, d in st_.items():
        lines.append(f"- Structures ({key}): {d['source']}; mean {d['mean_nodes']:.1f} nodes"
                     + (f", mean height {d['mean_height']:.1f}, max height {d['max_height']}" if "mean_height" in d
                        else ""))
    lines += [
        f"- Timing: per config and system, the outputs are first checked against the numpy reference (every "
        f"output table, every node, max abs error <= {res['tolerance']:g}); then {s['warmup_passes']} warm-up pass(es) and "
        f"{s['repeats_min_max'][0]}–{s['repeats_min_max'][1]} timed repeats (as many as fit in {s['budget_s']:g} s); "
        "a repeat runs every input of the config once. ms = time per forest: median over repeats of the mean "
        "over inputs (p10–p90 over repeats in brackets). Batch 1 = "
        f"{s['trees_batch1']} different single trees; batch B = up to {s['max_forests']} different forests of B trees.",
        "- FLOPs: the model's matrix products (2·M·K·N per node visit as the model defines them; per model below), "
        "the same for every system; GFLOP/s = FLOPs / median time; % of peak = Cortex GFLOP/s / the peak above (can exceed 100%: Cortex "
        "folds the leaf projection into the embedding at conversion, so it does fewer FLOPs than the model's count, "
        "and a loaded machine depresses the measured peak).",
    ]
    for name, info in res["systems"].items():
        extra = ""
        if info.get("autobatch") is not None:
            extra = f", autobatch={info['autobatch']}"
        if info.get("threads"):
            extra += f", {info['threads']} threads"
        tail = f" ({info['note']}{extra})" if info.get("note") else (f" ({extra.lstrip(', ')})" if extra else "")
        lines.append(f"- {_label(res, name)}: {info['status']}" + tail)
    for name, mi in res.get("models", {}).items():
        lines.append(f"- Model {name} ({mi['structure']}): {mi['description']}; PyTorch style {mi['pytorch_style']}; "
                     f"DyNet: {mi['dynet']}; FLOPs {mi['flops']} (D = 300 unless noted)")
    for n in res.get("notes", []):
        lines.append(f"- Note: {n}")
    return "\n".join(lines)


def render_markdown(res: dict) -> str:
    parts = ["# Cortex benchmark results", "", render_header(res), "", "## Latency per forest (ms) and speedup of "
             "Cortex", "", render_table(res), "", "## Throughput (trees/s)", "", render_throughput(res), ""]
    if render_steps(res, S.CORTEX):
        parts += ["## Where Cortex's time goes (µs per forest)", "", STEPS_NOTE, "", render_steps(res, S.CORTEX), ""]
    if res.get("target") == "cuda":  # Cortex (CUDA): kernel alone and end to end against the GPU peers
        from tools.peers import gpu_report

        parts += [gpu_report.render_section(res), ""]
    if res.get("plots"):
        parts += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in res["plots"]] + [""]
    return "\n".join(parts)


def make_plots(res: dict, out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        res["notes"].append(f"plots skipped: matplotlib not installed ({e})")
        return []
    paths = []
    for model in sorted({r["model"] for r in res["rows"]}):
        rows = [r for r in res["rows"] if r["model"] == model]
        # speedup of Cortex over each peer, per configuration
        labels = [f"h={r['hidden']}\nb={r['batch']}" for r in rows]
        peers = [n for n in _table_systems(res)[1:] if any(n in r.get("speedup", {}) for r in rows)]
        fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows) + 2), 4))
        w = 0.8 / max(len(peers), 1)
        x = np.arange(len(rows))
        for j, n in enumerate(peers):
            vals = [r.get("speedup", {}).get(n, np.nan) for r in rows]
            ax.bar(x + (j - (len(peers) - 1) / 2) * w, vals, w, label=f"over {n}")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_ylabel("speedup of Cortex (×, log)")
        ax.set_title(f"{model}: Cortex speedup (median ms ratio), {res['machine']['usable_cores']} CPU cores")
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = out / f"speedup_{model}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(str(p))
        # latency against hidden size, one panel per batch size
        batches = sorted({r["batch"] for r in rows})
        fig, axes = plt.subplots(1, len(batches), figsize=(4.2 * len(batches), 3.8), squeeze=False)
        for ax, b in zip(axes[0], batches):
            rb = sorted((r for r in rows if r["batch"] == b), key=lambda r: r["hidden"])
            for n in _table_systems(res):
                pts = [(r["hidden"], r["results"][n]["ms_median"], r["results"][n]["ms_p10"],
                        r["results"][n]["ms_p90"]) for r in rb if r["results"].get(n, {}).get("status") == "ok"]
                if not pts:
                    continue
                hs, ms, lo, hi = map(np.array, zip(*pts))
                ax.errorbar(hs, ms, yerr=[ms - lo, hi - ms], marker="o", capsize=3, label=_label(res, n))
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("hidden size")
            ax.set_ylabel("ms per forest")
            ax.set_title(f"batch {b}")
            ax.legend(fontsize=7)
        fig.suptitle(f"{model}: latency against hidden size")
        fig.tight_layout()
        p = out / f"latency_{model}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(str(p))
    return paths


def write_docs(res: dict, path: Path) -> None:
    """Regenerates the section between the generated-section markers of docs/performance.md (created if
    missing; text outside the markers is kept)."""
    body = "\n".join([
        DOCS_BEGIN,
        "## Benchmark: Cortex against ONNX Runtime, PyTorch and DyNet",
        "",
        "Generated by `tools/bench.py --write-docs` from one run; regenerate with the command below (add "
        "`--write-docs`). Every number here comes from that run.",
        "",
        render_header(res),
        "",
        "### Latency per forest (ms) and speedup of Cortex",
        "",
        render_table(res),
        "",
        "### Throughput (trees/s)",
        "",
        render_throughput(res),
        "",
    ] + ([
        "### Where Cortex's time goes (µs per forest)",
        "",
        STEPS_NOTE,
        "",
        render_steps(res, S.CORTEX),
        "",
    ] if render_steps(res, S.CORTEX) else []) + [
        f"Plots (`speedup_<model>.png`, `latency_<model>.png`) and all raw numbers (`results.json`) are written to "
        f"the run's `--out` directory. Every form of every zoo model (converted or not, error, ORT vs Cortex at "
        "hidden 256, batch 10): [models.md](models.md), generated by `tools/bench.py --forms --write-models-doc`.",
        DOCS_END,
    ])
    replace_generated(path, body, "# Performance\n\n")


def replace_generated(path: Path, body: str, new_page: str) -> None:
    """Writes body (which starts with DOCS_BEGIN and ends with DOCS_END) over the generated section of path, keeping
    the hand-written text around it; a page without the markers gets the section appended."""
    text = path.read_text() if path.exists() else new_page
    if DOCS_BEGIN in text and DOCS_END in text:
        pre, rest = text.split(DOCS_BEGIN, 1)
        post = rest.split(DOCS_END, 1)[1]
        text = pre + body + post
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


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
        res = run_bench(args, cmd.strip(), perturb=_perturb_hook(args.inject_mismatch))
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

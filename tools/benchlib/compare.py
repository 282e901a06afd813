"""The comparison run of ``tools/bench.py``: which systems can run, the matrix-product peak, then every system on
every (model, hidden, batch): checked against the numpy reference, timed, and written to results.json/.md and
plots."""

from __future__ import annotations

import datetime as _dt
import sys
import time
from pathlib import Path

import numpy as np

from tools.peers import flops as _flops, machine as _machine, models as _models
from tools.peers import systems as S

from .measure import Progress, check_outputs, config_inputs, load_structures, time_system, write_json
from .plots import make_plots
from .report import render_markdown


def perturb_hook(key):
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
                    write_json(out / "results.json", res)  # partial results survive an interrupted run
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
    write_json(out / "results.json", res)
    (out / "results.md").write_text(render_markdown(res))
    res["plots"] = [] if args.no_plots else make_plots(res, out)
    write_json(out / "results.json", res)
    (out / "results.md").write_text(render_markdown(res))
    res["out"] = str(out)
    return res

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

"""Checks and times Cortex kernels through their C ABI alone (no ONNX Runtime session): every zoo model in both of
its forms is converted to IR, compiled for the CPU and (where a GPU is present, or with --cuda) for CUDA, run on
the same inputs, and compared with ONNX Runtime on the original model; then the TreeLSTM kernel is timed.

    python tools/cuda_check.py [--cuda] [--models treelstm,...] [--hidden 8] [--time] [--out results.json] [--jobs N]

The kernel inputs that are intermediate values of the model (a zero table made by ConstantOfShape) are taken from
ONNX Runtime running the original with those values as extra outputs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from cortex.codegen import generator  # noqa: E402
from cortex.codegen import toolchain  # noqa: E402
from cortex.frontend import find_regions  # noqa: E402
from cortex.passes import optimize  # noqa: E402
from kernel_harness import Kernel  # noqa: E402
from cortex.examples import structures as st  # noqa: E402
from cortex.treerec import lower_treerec  # noqa: E402
from onnx_ops.zoo import MODELS, batch, structures  # noqa: E402


def compile_source(source: str, cuda: bool, out: Path) -> Path:
    src = out.with_suffix(".cu" if cuda else ".cc")
    src.write_text(source)
    include = str(toolchain.runtime_include_dir())
    if cuda:
        cmd = ["nvcc", "-O3", "-std=c++17", f"-arch={os.environ.get('CORTEX_CUDA_ARCH', 'sm_90')}", "-Xcompiler",
               "-fPIC,-fvisibility=hidden", "-shared", f"-I{include}", str(src), "-o", str(out)]
    else:
        cmd = ["g++", "-O3", "-march=native", "-std=c++17", "-fPIC", "-shared", "-fvisibility=hidden", "-pthread",
               f"-I{include}", str(src), "-o", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"compiling {src} failed:\n{result.stderr[-4000:]}")
    return out


def model_values(model: onnx.ModelProto, names, feeds: dict) -> list:
    """Values of any names of the model (graph outputs or intermediate values), from ONNX Runtime."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    outputs = {o.name for o in m.graph.output}
    for n in names:
        if n not in outputs:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(list(names), {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}})


def kernel_inputs(model: onnx.ModelProto, gen, feeds: dict) -> list:
    """The kernel's inputs in order: feeds, intermediate values (from ORT on the original), then constants."""
    names = [i.name for i in gen.inputs if i.kind != "const"]
    missing = [n for n in names if n not in feeds]
    values = dict(feeds)
    if missing:
        values.update(zip(missing, model_values(model, missing, feeds)))
    out = [np.asarray(values[n]) for n in names]
    out += [i.array for i in gen.inputs if i.kind == "const"]
    return out


def to_device(arrays, gen):
    import torch
    out = []
    for arr, inp in zip(arrays, gen.inputs):
        host = inp.kind == "array" and arr.dtype != np.float32
        out.append(arr if host else torch.from_numpy(np.ascontiguousarray(arr)).cuda())
    return out


def build_kernels(names, forms, hidden, cuda, tmp: Path, jobs: int) -> dict:
    """Every (model, form)'s generators and compiled kernel libraries, compiled in parallel:
    {(name, form): (model, program, {target: (generator, path or the exception)}) or the refusal reason}."""
    plans, work = {}, []
    for name in names:
        entry = MODELS[name]
        params = entry.make_params(hidden, seed=1)
        for form in forms:
            model = entry.build_loop(params) if form == "loop" else entry.build_treerec(params)
            [region] = find_regions(model)
            if region.program is None:
                plans[(name, form)] = f"refused: {region.reason}"
                continue
            program = optimize(region.program)
            gens = {"cpu": generator("cpu", program)}
            if cuda:
                gens["cuda"] = generator("cuda", program)
            plans[(name, form)] = (model, program, gens)
            work += [((name, form), target, gen) for target, gen in gens.items()]

    def compile_one(job):
        key, target, gen = job
        try:
            return key, target, gen, compile_source(gen.generate(key[0]), target == "cuda",
                                                    tmp / f"{key[0]}_{key[1]}_{target}.so")
        except Exception as e:  # noqa: BLE001 - reported by that model's check
            return key, target, gen, e

    out = {key: plan for key, plan in plans.items() if isinstance(plan, str)}
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for key, target, gen, result in pool.map(compile_one, work):
            out.setdefault(key, (plans[key][0], plans[key][1], {}))[2][target] = (gen, result)
    return out


def check_model(name, form, built, cuda, rng):
    entry = MODELS[name]
    if isinstance(built, str):
        return {"model": name, "form": form, "status": built}
    model, program, kernels = built
    for target, (_, result) in kernels.items():
        if isinstance(result, Exception):
            raise result
    item = batch(entry.structure, structures(entry.structure, 6, rng, sst_dir=st.sst_dir_default(), vocab=50))
    feeds = entry.treerec_feeds(item) if form == "treerec" else entry.loop_feeds(item)
    original = lower_treerec(model) if form == "treerec" else model
    sess = ort.InferenceSession(original.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}}
    expected = model_values(original, [t.output for t in program.tables], feeds)
    result = {"model": name, "form": form}
    cpu, cpu_path = kernels["cpu"]
    cpu_kernel = Kernel(cpu_path)
    got = cpu_kernel.run(kernel_inputs(original, cpu, feeds), len(program.tables))
    result["cpu_error"] = max(float(np.abs(e - g).max(initial=0.0)) for e, g in zip(expected, got))
    if cuda:
        gpu, gpu_path = kernels["cuda"]
        gpu_kernel = Kernel(gpu_path)
        outs = gpu_kernel.run(to_device(kernel_inputs(original, gpu, feeds), gpu), len(program.tables))
        got = [o.cpu().numpy() for o in outs]
        result["cuda_error"] = max(float(np.abs(e - g).max(initial=0.0)) for e, g in zip(expected, got))
    result["status"] = "ok" if all(v <= 1e-4 for k, v in result.items() if k.endswith("_error")) else "MISMATCH"
    return result


def time_treelstm(hidden, batches, cuda, tmp: Path, repeats=50):
    """Kernel-alone latency of the binary TreeLSTM (Loop form) on SST test trees."""
    entry = MODELS["treelstm"]
    params = entry.make_params(hidden, seed=1)
    model = entry.build_loop(params)
    [region] = find_regions(model)
    program = optimize(region.program)
    gens = {"cpu": generator("cpu", program)}
    if cuda:
        gens["cuda"] = generator("cuda", program)
    out = []
    trees = st.read_sst(st.sst_dir_default(), split="test", vocab_size=50, limit=200) if st.sst_dir_default() \
        else st.sst_like_trees(200, np.random.default_rng(0), 50)
    for target, gen in gens.items():
        kernel = Kernel(compile_source(gen.generate("bench"), target == "cuda", tmp / f"bench_{target}_{hidden}.so"))
        for size in batches:
            groups = [trees[i:i + size] for i in range(0, min(len(trees), size * 20), size)][:20]
            times = []
            for group in groups:
                feeds = entry.loop_feeds(st.batch(group))
                args = kernel_inputs(model, gen, feeds)
                if target == "cuda":
                    import torch
                    args = to_device(args, gen)
                    kernel.run(args, 2)
                    torch.cuda.synchronize()
                    start = time.perf_counter()
                    for _ in range(repeats):
                        kernel.run(args, 2)
                    torch.cuda.synchronize()
                else:
                    kernel.run(args, 2)
                    start = time.perf_counter()
                    for _ in range(repeats):
                        kernel.run(args, 2)
                times.append((time.perf_counter() - start) / repeats * 1e3)
            record = {"target": target, "hidden": hidden, "batch": size, "ms_median": float(np.median(times)),
                      "nodes_mean": float(np.mean([sum(len(t.words) for t in g) for g in groups]))}
            steps, total = kernel.steps() or ({}, None)
            record["steps_us"] = {k: round(v, 2) for k, v in steps.items()}
            record["kernel_total_us"] = total
            out.append(record)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cuda", action="store_true", help="also compile and run the CUDA kernels")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--forms", default="loop,treerec")
    ap.add_argument("--hidden", type=int, default=8)
    ap.add_argument("--time", action="store_true", help="time the TreeLSTM kernel (hidden 256, batch 1 and 10)")
    ap.add_argument("--out")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiles (default: all cores)")
    args = ap.parse_args(argv)
    if args.time:
        os.environ.setdefault("CORTEX_PROFILE", "1")
    rng = np.random.default_rng(0)
    results = {"checks": [], "timings": []}
    failed = False
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        names, forms = args.models.split(","), args.forms.split(",")
        built = build_kernels(names, forms, args.hidden, args.cuda, tmp, args.jobs)
        for name in names:
            for form in forms:
                try:
                    r = check_model(name, form, built[(name, form)], args.cuda, rng)
                except Exception as e:  # noqa: BLE001 - report and go on
                    r = {"model": name, "form": form, "status": f"ERROR {type(e).__name__}: {str(e)[:2000]}"}
                failed |= r["status"] != "ok"
                results["checks"].append(r)
                print(json.dumps(r), flush=True)
        if args.time:
            for r in time_treelstm(256, [1, 10], args.cuda, tmp):
                results["timings"].append(r)
                print(json.dumps(r), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""``tools/bench.py --forms``: every form of every model (the hand-built Loop/If, the TreeRec model, each
TorchScript export style, the cell road, the wild exports) converted with ``cortex.convert(strict=False)``, checked
against ONNX Runtime on the original and timed against it; forms.json/.md and docs/models.md."""

from __future__ import annotations

import datetime as _dt
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from tools.peers import machine as _machine, models as _models
from tools.peers import systems as S

from .measure import Progress, config_inputs, load_structures, outs, time_system, write_json

REPO = Path(__file__).resolve().parents[2]
MODELS_DOC = REPO / "docs" / "models.md"


def form_model(entry, form: str, export_module, params, example, tmp: Path):
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
                    model, original = form_model(entry, form, export_module, params, example, tmp)
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
                        want = outs(ort_run(f))
                        t_ort.append(time.perf_counter() - t0)
                        if cx_run is not None:
                            t0 = time.perf_counter()
                            got = outs(cx_run(f))
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
                write_json(out / "forms.json", res)
    finally:
        bar.close()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    res["machine"]["load_average_end"] = _machine.load_average()
    res["elapsed_s"] = time.perf_counter() - t_start
    write_json(out / "forms.json", res)
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

"""Fuzz Cortex's import with generated recursive PyTorch models (onnx_ops.modelgen), exported by the real exporters.

    python tools/fuzz_import.py --n 1000 [--seed S] [--exporter torchscript|dynamo|both] [--jobs J]
                                [--out results.json] [--explore] [--explore-new] [--timeout SEC]
                                [--fix CHOICE=VALUE ...] [--merge]

Prints the conversion rate overall and by construct (every value of every choice: how many specs had it, what
fraction converted), the refusal reasons ranked by count (names and numbers blanked so that they do not split
counts), the export failures, mismatches, crashes and ONNX Runtime defects. Exit code 1 on any mismatch, crash or
generator error.

``--explore`` keeps the combinations the real exporters are known not to export (onnx_ops.modelgen.UNEXPORTABLE)
instead of drawing again, so that their export failures are measured. ``--explore-new`` draws the encodings of
issue 19 too (onnx_ops.modelgen.NEW_VALUES: child sets from a parent array, CSR lists or an edge list; softmax
attention; batched, 1-D and rank-3 tables; float64; carried chain states), which the CI sample leaves out while
the frontend has no handlers for them; the rates by construct then show which encodings convert. Exports are
cached by spec under $CORTEX_MODELGEN_CACHE (default ~/.cache/cortex/modelgen).

``--merge`` also serves every model that converts whole as a batching server would (cortex.serving): its cases
merged into one forest, each answer held to the bits of its separate run (a difference is a ``merge-MISMATCH``), and
prints how many merge and why the others are refused.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onnx_ops.modelgen import CHOICES, draw_many  # noqa: E402
from onnx_ops.modelgen.harness import cache_dir, normalize_reason, run_many  # noqa: E402

EXPORTERS = {"torchscript": ["torchscript"], "dynamo": ["dynamo_while", "dynamo_scan"],
             "both": ["torchscript", "dynamo_while", "dynamo_scan"]}
BAD = ("converted-MISMATCH", "merge-MISMATCH", "crash", "gen-error")
CONVERTED = ("converted-match", "converted-unrun")  # unrun: compiled for CUDA on a machine without a GPU


def parse_fix(items) -> dict:
    """["missing=if_zeros", "hidden=8", "bias=False"] -> {"missing": "if_zeros", "hidden": 8, "bias": False}."""
    fixed = {}
    for item in items or []:
        key, _, raw = item.partition("=")
        if key not in CHOICES:
            raise SystemExit(f"--fix: unknown choice {key!r} (choices: {', '.join(CHOICES)})")
        match = [v for v in CHOICES[key] if str(v) == raw]
        if not match:
            raise SystemExit(f"--fix: {key} has no value {raw!r} (values: {', '.join(map(str, CHOICES[key]))})")
        fixed[key] = match[0]
    return fixed


def specs_for(n: int, seed: int, exporter: str, explore: bool, fixed: dict | None = None, new: bool = False) -> list:
    """n specs; with one exporter family, the exporter choice is restricted to it (drawn among its values);
    ``fixed`` pins choices; ``new`` draws issue 19's encodings too."""
    fixed = dict(fixed or {})
    allowed = EXPORTERS[exporter]
    if exporter == "both" or "exporter" in fixed:
        return draw_many(n, seed=seed, explore=explore, new=new, **fixed)
    out, k = [], 0
    import numpy as np

    from onnx_ops.modelgen.spec import draw
    rng = np.random.default_rng(seed)
    while len(out) < n:
        ex = allowed[int(rng.integers(len(allowed)))]
        out.append(draw(rng, seed=seed * 1_000_003 + k, explore=explore, new=new, **{**fixed, "exporter": ex}))
        k += 1
    return out


def summarize(results: list, out=print) -> dict:
    n = len(results)
    outcomes = Counter(r["outcome"] for r in results)
    conv = sum(outcomes[o] for o in CONVERTED)
    out(f"\n== {n} generated models ==")
    shown = ("converted-match",) + (("converted-unrun",) if outcomes["converted-unrun"] else ()) + \
        ("converted-MISMATCH",) + (("merge-MISMATCH",) if outcomes["merge-MISMATCH"] else ()) + \
        ("refused", "export-failed", "crash", "gen-error")
    for o in shown:
        out(f"  {o:20s} {outcomes[o]:5d}  ({100.0 * outcomes[o] / max(n, 1):.1f}%)")
    exported = n - outcomes["export-failed"] - outcomes["gen-error"]
    out(f"  conversion rate: {conv}/{n} = {100.0 * conv / max(n, 1):.1f}% of all, "
        f"{100.0 * conv / max(exported, 1):.1f}% of the {exported} exported")
    unrep = sum(1 for r in results if r.get("unreported"))
    if unrep:
        out(f"  of the refused, {unrep} had no region in the report at all (harness reason 'unreported: ...')")

    out("\n== conversion rate by construct (specs with the value: converted / exported, rate) ==")
    by = defaultdict(lambda: [0, 0, 0])  # (choice, value) -> [specs, exported, converted]
    for r in results:
        for k, v in r["spec"].items():
            if k not in CHOICES or v == "-":
                continue
            cell = by[(k, str(v))]
            cell[0] += 1
            if r["outcome"] not in ("export-failed", "gen-error"):
                cell[1] += 1
                cell[2] += r["outcome"] in CONVERTED
    for k in CHOICES:
        vals = [(v, c) for (kk, v), c in by.items() if kk == k]
        if not vals:
            continue
        order = {str(x): i for i, x in enumerate(CHOICES[k])}
        vals.sort(key=lambda t: order.get(t[0], 99))
        parts = [f"{v}: {c[2]}/{c[1]}" + (f" ({100.0 * c[2] / c[1]:.0f}%)" if c[1] else "") +
                 (f" [{c[0] - c[1]} not exported]" if c[0] - c[1] else "") for v, c in vals]
        out(f"  {k:10s} " + "; ".join(parts))

    reasons = Counter()
    examples = {}
    for r in results:
        if r["outcome"] == "refused":
            for part in (r["reason"] or "").split("; "):
                key = normalize_reason(part)
                reasons[key] += 1
                examples.setdefault(key, (part, r["short"]))
    out(f"\n== refusal reasons, ranked ({sum(reasons.values())} refused regions) ==")
    for key, c in reasons.most_common():
        out(f"  {c:5d}  {key}")
        out(f"         e.g. {examples[key][0][:200]}")

    ex_fail = Counter()
    ex_examples = {}
    for r in results:
        if r["outcome"] == "export-failed":
            key = normalize_reason(r["reason"])
            ex_fail[key] += 1
            ex_examples.setdefault(key, r["short"])
    if ex_fail:
        out(f"\n== export failures (the real exporter; not Cortex) ({sum(ex_fail.values())}) ==")
        for key, c in ex_fail.most_common():
            out(f"  {c:5d}  {key}")
            out(f"         e.g. {ex_examples[key]}")

    merged = [r for r in results if r.get("merge")]
    if merged:
        kinds = Counter(r["merge"]["outcome"] for r in merged)
        out(f"\n== merging the {len(merged)} models that converted whole (their cases as one forest, bit for bit) ==")
        out("  " + "; ".join(f"{k}: {kinds[k]}" for k in ("merged", "partly", "alone", "refused", "MISMATCH",
                                                                 "crash")))
        out("  (partly: some requests ran alone; alone: mergeable on paper, but every request ran alone)")
        tails = sum(1 for r in merged if r["merge"].get("tail") and r["merge"]["outcome"] in ("merged", "partly"))
        out(f"  (of the merged and partly: {tails} with outputs computed per request after the forest)")
        by = defaultdict(lambda: [0, 0])  # (choice, value) -> [models, merged or partly]
        for r in merged:
            for k, v in r["spec"].items():
                if k in CHOICES and v != "-":
                    by[(k, str(v))][0] += 1
                    by[(k, str(v))][1] += r["merge"]["outcome"] in ("merged", "partly")
        for k in CHOICES:
            vals = sorted(((v, c) for (kk, v), c in by.items() if kk == k),
                          key=lambda t: {str(x): i for i, x in enumerate(CHOICES[k])}.get(t[0], 99))
            if vals:
                out(f"  {k:10s} " + "; ".join(f"{v}: {c[1]}/{c[0]}" for v, c in vals))
        why = Counter(normalize_reason(r["merge"]["reason"] or "") for r in merged
                      if r["merge"]["outcome"] == "refused")
        for key, c in why.most_common():
            out(f"  {c:5d}  not mergeable: {key[:200]}")
        # why requests ran alone: the plan's warnings, without the rows they name (one line per kind of read)
        sent = Counter(normalize_reason(w.split(": ", 1)[-1]) for r in merged
                       if r["merge"]["outcome"] in ("alone", "partly") for w in set(r["merge"].get("warnings", ())))
        for key, c in sent.most_common():
            out(f"  {c:5d}  requests ran alone: {key[:200]}")

    defects = [r for r in results if r.get("ort_defects")]
    out(f"\n== ONNX Runtime defects (ORT on the original export disagrees with eager PyTorch): {len(defects)} ==")
    for r in defects:
        out(f"  {r['key']}  {r['short']}")
        for d in r["ort_defects"]:
            out(f"      {d[:300]}")

    for o in BAD:
        bad = [r for r in results if r["outcome"] == o]
        out(f"\n== {o}: {len(bad)} ==")
        for r in bad:
            out(f"  {r['key']}  {r['short']}")
            out(f"      {r['reason']}")
            if r.get("source"):
                out(f"      source: {r['source']}")
            tb = (r.get("traceback") or "").strip().splitlines()
            for line in tb[-4:]:
                out(f"      | {line[:200]}")
    return {"outcomes": dict(outcomes), "reasons": dict(reasons), "export_failures": dict(ex_fail)}


def write_doc(path: Path, lines: list, elapsed: str, argv) -> None:
    import datetime
    import subprocess

    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent).stdout.strip()
    command = "python tools/fuzz_import.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = ["## Generality: generated models through the real exporters", "",
            "Recursive PyTorch models drawn from independent style choices (onnx_ops/modelgen, docs/modelgen.md), "
            "exported with TorchScript (`dynamo=False`) and the dynamo exporter (`torch.while_loop`, `scan` + "
            "`torch.cond`), converted with `cortex.convert` and compared with eager PyTorch. "
            "A conversion counts only when it matches.", "",
            f"Command: `{command}` ({datetime.date.today().isoformat()}, git {rev}); {elapsed}.", "", "```"]
    text += [line.rstrip() for line in lines if line.strip() or True]
    text += ["```", ""]
    path.write_text("\n".join(text))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100, help="number of generated models (default 100)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--exporter", choices=sorted(EXPORTERS), default="both")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--out", help="write every result (spec, outcome, reason, errors) to this JSON file")
    ap.add_argument("--explore", action="store_true", help="keep known-unexportable combinations")
    ap.add_argument("--explore-new", action="store_true",
                    help="draw issue 19's encodings too (child-set encodings, attention, table layouts, float64, "
                         "carried chain states); the CI sample does not")
    ap.add_argument("--target", choices=("cpu", "cuda"), default="cpu",
                    help="convert for this target (cuda: compiled with nvcc; run and compared only where a GPU is "
                         "usable, else counted as converted-unrun)")
    ap.add_argument("--merge", action="store_true",
                    help="serve each model that converts whole with its cases merged into one forest, bit for bit")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per model before it counts as a hang")
    ap.add_argument("--cache", help=f"export cache directory (default {cache_dir()})")
    ap.add_argument("--quiet", action="store_true", help="no line per model")
    ap.add_argument("--fix", nargs="*", metavar="CHOICE=VALUE", help="pin choices, e.g. --fix missing=if_zeros")
    ap.add_argument("--write-doc", metavar="FILE",
                    help="write the summary as Markdown (docs/generality.md; tools/bench.py --write-models-doc "
                         "includes it in docs/models.md)")
    args = ap.parse_args(argv)

    specs = specs_for(args.n, args.seed, args.exporter, args.explore, parse_fix(args.fix), new=args.explore_new)
    t0 = time.time()
    done = [0]

    def on_result(i, r):
        done[0] += 1
        if not args.quiet:
            reason = (r.get("reason") or "")[:110]
            print(f"[{done[0]:4d}/{len(specs)}] {r['outcome']:18s} {r['key']}  {reason}", flush=True)

    results = run_many(specs, jobs=args.jobs, cache=Path(args.cache) if args.cache else None,
                       timeout=args.timeout, on_result=on_result, target=args.target, merge=args.merge)
    lines = []
    summary = summarize(results, out=lambda s: (print(s), lines.append(s)))
    elapsed = f"{len(results)} models in {time.time() - t0:.0f} s (seed {args.seed}, exporter {args.exporter}, " \
              f"target {args.target}" \
              f"{', explore' if args.explore else ''}{', explore-new' if args.explore_new else ''})"
    print(f"\n{elapsed}")
    if args.write_doc:
        write_doc(Path(args.write_doc), lines, elapsed, argv)
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "summary": summary, "results": results},
                                             indent=1, default=str))
        print(f"results: {args.out}")
    bad = sum(1 for r in results if r["outcome"] in BAD)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

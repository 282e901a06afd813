"""Measuring: the inputs of a run (zoo structures and batches of them), the check of a system's outputs against the
reference, the timing loop, a progress bar and the results file."""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from tools.peers import BenchMismatch
from tools.peers import systems as S


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


def outs(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def check_outputs(name, runner, inputs, refs, model, config, tol, perturb=None, out_names=None):
    """Max abs error of ``runner`` against the reference over ``inputs`` (every output table, every node); raises
    BenchMismatch above ``tol``. ``perturb`` (*outputs) -> outputs is a test hook applied to the system's
    outputs."""
    worst, elapsed = 0.0, 0.0
    for f, ref in zip(inputs, refs):
        ref = outs(ref)
        t0 = time.perf_counter()
        got = outs(runner(f))
        elapsed += time.perf_counter() - t0
        if perturb is not None:
            got = outs(perturb(*[np.array(g) for g in got]))
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

    # as timeit does: the collector's pauses (this process holds every system's models and references) would
    # land in whichever system's pass they happen to fall; collected before, off while timing
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _timed_passes(one_pass, budget_s, min_reps, max_reps, warmup, est_pass_s, floor_reps)
    finally:
        if gc_was_enabled:
            gc.enable()


def _timed_passes(one_pass, budget_s, min_reps, max_reps, warmup, est_pass_s, floor_reps) -> dict:

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


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)

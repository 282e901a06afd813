"""One batch of requests through one session: merged into a forest where that is safe, each request alone where
not; every request gets its own outputs or its own error. The Ray Serve deployment serves through `run_forest`; the
BatchingSession through its steps: `prepare_forest` and `finish_prepared` in its worker, `run_merged` in the
worker's runner thread (the next forest is merged, and the last one split and answered, while one runs)."""
from __future__ import annotations

import collections
import os
import time
import weakref
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .merge import FeedError, MergedBatch, MergePlan, check_request, merge, out_of_bounds, split
from .tail import MODEL_PATH_KEY, TailSessions
from .windows import with_window_inputs


@dataclass
class ForestStats:
    requests: int = 0  # answered (results or errors)
    batches: int = 0  # kernel calls for merged forests
    merged_requests: int = 0  # requests answered from a merged forest
    alone: int = 0  # requests run by themselves (could not merge, or a batch of one)
    fallbacks: int = 0  # merged runs that failed and were rerun without their bad requests (or in halves)
    largest_batch: int = 0
    sizes: collections.Counter = field(default_factory=collections.Counter, repr=False)  # requests per call -> calls
    # Where the time went, in seconds (time.perf_counter): building forests (merge and the bounds check), the
    # session's runs (merged forests and requests run alone), cutting the outputs back (split); the
    # BatchingSession adds answering its callers.
    merging_s: float = 0.0
    running_s: float = 0.0
    splitting_s: float = 0.0
    answering_s: float = 0.0

    _SUMMED = ("requests", "batches", "merged_requests", "alone", "fallbacks", "merging_s", "running_s", "splitting_s",
               "answering_s")

    def add(self, other: "ForestStats"):
        for name in self._SUMMED:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.largest_batch = max(self.largest_batch, other.largest_batch)
        self.sizes.update(other.sizes)

    @property
    def mean_batch(self) -> float:
        """Mean number of requests a kernel call answered (merged forests and single runs)."""
        calls = self.batches + self.alone
        return self.requests / calls if calls else 0.0


_NUMPY_OF_ORT = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
                 "tensor(int32)": np.int32, "tensor(bool)": np.bool_, "tensor(float16)": np.float16}


class PinnedOutputs:
    """A GPU session's forests with their outputs copied by ONNX Runtime into pinned host memory (buffers of the
    Cortex EP's host-accessible allocator), not into pageable buffers through a staging copy. It needs every
    output's shape before the run: rows that count a unit of the plan and other dimensions the model fixes; `of`
    returns None for a model whose outputs are not all such, or for a session on the CPU."""

    def __init__(self, plan: MergePlan, session, memory_info, specs: list):
        self.plan, self.session, self.memory_info, self.specs = plan, session, memory_info, specs

    @classmethod
    def of(cls, plan: MergePlan, session, device) -> Optional["PinnedOutputs"]:
        from ..session import pinned_memory_info

        memory_info = pinned_memory_info(device)
        if memory_info is None or not plan.mergeable or plan.tail is not None:  # a tail's forests run in its body
            return None
        specs = []  # (name, unit, dimensions after the first, numpy dtype)
        for out, declared in zip(plan.outputs, session.get_outputs()):
            inner, dtype = list(declared.shape or [])[1:], _NUMPY_OF_ORT.get(declared.type)
            if out.unit is None or dtype is None or not declared.shape or \
                    not all(isinstance(d, int) and d >= 0 for d in inner):
                return None
            specs.append((out.name, out.unit, inner, dtype))
        return cls(plan, session, memory_info, specs)

    def run(self, feeds: dict) -> Optional[list]:
        """The forest `feeds` (merged requests, or any forest of the model's inputs) run once: its outputs, or None
        when this run failed (the caller runs it plainly and gets its error, if it has one)."""
        import onnxruntime as ort

        try:
            values = [ort.OrtValue.ortvalue_from_shape_and_type([self.plan.count(unit, feeds), *inner],
                                                                dtype, memory_info=self.memory_info)
                      for _, unit, inner, dtype in self.specs]
            binding = self.session.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, value)
            # bound as plain CPU memory at the pinned buffer's address: ONNX Runtime then copies the kernel's output
            # there from the GPU (a DMA at the link's speed). Bound as the EP's host-accessible memory, the kernel
            # would write its state tables straight into host memory across the link (several times slower).
            for (name, _, _, dtype), value in zip(self.specs, values):
                binding.bind_output(name, "cpu", 0, dtype, value.shape(), value.data_ptr())
            self.session.run_with_iobinding(binding)
        except Exception:  # noqa: BLE001 - no pinned memory, or the forest's own error: the caller runs it plainly
            return None
        return [value.numpy() for value in values]


def merge_session(plan: MergePlan, path, sess_options=None, trust=None, device: str = "cpu"):
    """The session a server runs a converted model's forests and lone requests through: `cortex.InferenceSession`
    of the model, or, where the plan has window inputs (windows.py), of a copy in memory that takes them as inputs
    (its kernels found beside `path`). Through it, the reads of a missing child merge exactly."""
    import onnx

    from ..session import InferenceSession, session_options

    if not plan.windows:
        return InferenceSession(path, sess_options, trust=trust, device=device)
    options = session_options(sess_options, trust=trust, device=device)
    options.add_session_config_entry(MODEL_PATH_KEY, os.path.abspath(os.fspath(path)))
    model = with_window_inputs(onnx.load(os.fspath(path), load_external_data=False))
    return InferenceSession(model.SerializeToString(), options, device=device)


_TAKES_WINDOWS = weakref.WeakKeyDictionary()  # session -> whether its inputs include every window input asked


def takes_windows(plan: MergePlan, session) -> bool:
    """Whether `session` takes the plan's window inputs (one made by merge_session, or a tail's body)."""
    if not plan.windows:
        return False
    known = _TAKES_WINDOWS.get(session)
    if known is None:
        names = {i.name for i in session.get_inputs()}
        known = _TAKES_WINDOWS[session] = all(w in names for w in plan.windows)
    return known


def run_alone(plan: MergePlan, session, request: dict) -> list:
    """One request run by itself, as a plain session runs it (a session that takes window inputs gets them
    empty: a plain run)."""
    if takes_windows(plan, session):
        request = {**request, **{w: _NO_WINDOWS for w in plan.windows}}
    return session.run(None, request)


_NO_WINDOWS = np.zeros((0, 2), dtype=np.int64)


@dataclass
class PreparedForest:
    """A batch of requests ready to run: `merged`, the forest of the requests at `together` (or None), and the
    requests that run alone; `results` already holds the answers known before running (a request's FeedError)."""
    requests: list
    results: list
    together: list
    alone: list
    merged: Optional[MergedBatch]


def prepare_forest(plan: MergePlan, requests: list, reasons: Optional[list] = None,
                   stats: Optional[ForestStats] = None, windows: bool = False) -> PreparedForest:
    """The requests (dicts of input arrays) merged where they can be: check_request's answers (`reasons`, when the
    caller has them), the forest of those that may join, the bounds check that sends a request reading outside its
    own rows to run alone. `windows`: the forest runs through a session that takes the plan's window inputs
    (`takes_windows`)."""
    stats = stats if stats is not None else ForestStats()
    results = [None] * len(requests)
    if reasons is None:
        reasons = []
        for k, feeds in enumerate(requests):
            try:
                reasons.append(check_request(plan, feeds) if plan.mergeable else "not mergeable")
            except FeedError as e:
                reasons.append(str(e))
                results[k] = e
    together = [k for k, why in enumerate(reasons) if why is None]
    alone = [k for k, why in enumerate(reasons) if why is not None and results[k] is None]
    merged = None
    if len(together) > 1:
        started = time.perf_counter()
        try:
            merged = merge(plan, [requests[k] for k in together], windows)
            outside = out_of_bounds(plan, merged)
            if outside:
                alone += [k for j, k in enumerate(together) if j in outside]
                together = [k for j, k in enumerate(together) if j not in outside]
                merged = merge(plan, [requests[k] for k in together], windows) if len(together) > 1 else None
        except (ValueError, OverflowError):  # shapes that do not concatenate, too many nodes: each runs alone
            merged = None
        stats.merging_s += time.perf_counter() - started
    if merged is None:
        alone, together = alone + together, []
    return PreparedForest(requests, results, together, alone, merged)


def run_merged(session, forest: PreparedForest, stats: Optional[ForestStats] = None,
               pinned: Optional[PinnedOutputs] = None, tail: Optional[TailSessions] = None):
    """The merged forest of `forest` run once: its outputs, an exception when the run failed, or None when
    `forest` has no merged forest. (The BatchingSession's runner thread does this; `finish_prepared` the rest.)
    `tail`: a plan's TailSessions, whose body runs the forest."""
    if forest.merged is None:
        return None
    stats = stats if stats is not None else ForestStats()
    ran = time.perf_counter()
    try:
        outputs = pinned.run(forest.merged.feeds) if pinned is not None else None
        if outputs is None:
            outputs = (session if tail is None else tail.body).run(None, forest.merged.feeds)
    except Exception as e:  # noqa: BLE001 - whichever request caused it gets its own error when it runs alone
        outputs = e
    stats.running_s += time.perf_counter() - ran
    return outputs


def finish_prepared(plan: MergePlan, session, forest: PreparedForest, outputs, stats: Optional[ForestStats] = None,
                    tail: Optional[TailSessions] = None) -> list:
    """Per request of `forest`, in order: its outputs (a list, the model's output order) or the exception a plain
    `session.run` of it raises. `outputs`: what `run_merged` gave. A merged run that failed (or whose outputs do
    not split) is run again without the requests that fail a forest by themselves, or in halves
    (`_rerun_in_halves`): whichever caused it gets its own error, the others stay merged. `tail`: the plan's
    TailSessions (a plan with a tail needs them), which compute its other outputs per request; a request whose tail
    fails runs alone."""
    _check_tail(plan, tail)
    stats = stats if stats is not None else ForestStats()
    results, alone = list(forest.results), list(forest.alone)
    if forest.merged is not None:
        cut = time.perf_counter()
        try:
            if isinstance(outputs, BaseException):
                raise outputs
            parts = split(plan, outputs, forest.merged)
        except Exception:  # noqa: BLE001
            stats.fallbacks += 1
            stats.splitting_s += time.perf_counter() - cut
            answered, failed = _rerun_in_halves(plan, session, forest, forest.together, results, stats, tail)
            alone += failed
        else:
            _count_forest(stats, len(forest.together))
            for k, request_outputs in zip(forest.together, parts):
                results[k] = request_outputs
            answered = forest.together
            stats.splitting_s += time.perf_counter() - cut
        if tail is not None and answered:  # split: each request's tail
            started = time.perf_counter()
            for k in answered:
                try:
                    results[k] = tail.answer(results[k], forest.requests[k])
                except Exception:  # noqa: BLE001 - its own run says what fails, and how
                    results[k] = None
                    alone.append(k)
                    stats.merged_requests -= 1
                    stats.requests -= 1
            stats.running_s += time.perf_counter() - started
    for k in sorted(alone):
        stats.alone += 1
        stats.requests += 1
        stats.sizes[1] += 1
        started = time.perf_counter()
        try:
            results[k] = run_alone(plan, session, forest.requests[k])
        except Exception as e:  # noqa: BLE001 - the request's own error, as a plain session raises it
            results[k] = e
        stats.running_s += time.perf_counter() - started
    return results


def _count_forest(stats: ForestStats, size: int):
    stats.batches += 1
    stats.merged_requests += size
    stats.requests += size
    stats.largest_batch = max(stats.largest_batch, size)
    stats.sizes[size] += 1


def _rerun_in_halves(plan: MergePlan, session, forest: PreparedForest, indices: list, results: list,
                     stats: ForestStats, tail: Optional[TailSessions]) -> tuple:
    """After the merged run of the requests at `indices` (those of `forest.merged`) failed: the thorough check
    names the requests that fail a forest by themselves (a TreeRec's cycle, a word id past its embedding), which run
    alone, and the others run again as one forest. Where it names none (a failure it does not foresee), or the rest
    fails again, each half is merged and run again, halving a half that fails, down to requests run alone: one bad
    request of n costs about 2 log2(n) smaller forests, not n lone runs. Any subset of a batch merges exactly, as the
    whole does. Fills `results`; returns (the indices answered from forests, those left to run alone)."""
    runner = session if tail is None else tail.body
    windows = takes_windows(plan, runner)
    try:
        named = out_of_bounds(plan, forest.merged, thorough=True)
    except Exception:  # noqa: BLE001 - no help from the check: halves
        named = set()
    failed = [k for j, k in enumerate(indices) if j in named]
    rest = [k for j, k in enumerate(indices) if j not in named]
    answered, pending = [], [rest] if failed else [indices[:len(indices) // 2], indices[len(indices) // 2:]]
    while pending:
        half = pending.pop(0)
        if len(half) < 2:
            failed += half
            continue
        started = time.perf_counter()
        try:
            merged = merge(plan, [forest.requests[k] for k in half], windows)
            parts = split(plan, runner.run(None, merged.feeds), merged)
        except Exception:  # noqa: BLE001 - the bad request is in this half: halve it again
            stats.running_s += time.perf_counter() - started
            pending += [half[:len(half) // 2], half[len(half) // 2:]]
            continue
        stats.running_s += time.perf_counter() - started
        _count_forest(stats, len(half))
        for k, request_outputs in zip(half, parts):
            results[k] = request_outputs
        answered += half
    return answered, failed


def run_prepared(plan: MergePlan, session, forest: PreparedForest, stats: Optional[ForestStats] = None,
                 pinned: Optional[PinnedOutputs] = None, tail: Optional[TailSessions] = None) -> list:
    """`run_merged` then `finish_prepared`: per request of `forest`, its outputs or its own error. `pinned`: the
    merged forest's outputs into pinned host memory (a session on a GPU); `tail`: the plan's TailSessions."""
    _check_tail(plan, tail)
    stats = stats if stats is not None else ForestStats()
    return finish_prepared(plan, session, forest, run_merged(session, forest, stats, pinned, tail), stats, tail)


def run_forest(plan: MergePlan, session, requests: list, reasons: Optional[list] = None,
               stats: Optional[ForestStats] = None, pinned: Optional[PinnedOutputs] = None,
               tail: Optional[TailSessions] = None) -> list:
    """Per request (a dict of input arrays), in order: its outputs (a list, the model's output order) or the
    exception a plain `session.run` of it raises. `reasons`: check_request's answers when the caller has them.
    `pinned`: merged forests' outputs into pinned host memory (a session on a GPU). `tail`: for a plan with a tail
    (outputs computed per request after the forest), its TailSessions (`tail_sessions`)."""
    stats = stats if stats is not None else ForestStats()
    windows = takes_windows(plan, session if tail is None else tail.body)
    return run_prepared(plan, session, prepare_forest(plan, requests, reasons, stats, windows), stats, pinned, tail)


def tail_sessions(plan: MergePlan, path, sess_options=None, trust=None, device: str = "cpu") \
        -> Optional[TailSessions]:
    """The sessions a plan with a tail needs beside the model's own (made as `cortex.InferenceSession(path,
    sess_options, trust=trust, device=device)`); None for any other plan."""
    return TailSessions(plan, path, sess_options, trust, device) if plan.mergeable and plan.tail else None


def _check_tail(plan: MergePlan, tail: Optional[TailSessions]):
    if plan.tail is not None and tail is None:
        raise ValueError("this model's plan computes some outputs per request after the forest: pass its sessions "
                         "(tail=tail_sessions(plan, path, ...))")

#!/usr/bin/env python
"""Closed-loop load generator for serving a converted TreeLSTM: many clients, one SST tree per request.

    python tools/serve_bench.py [--hidden 64,256] [--clients 1,2,4,8,16,32,64] [--seconds 2] [--repeats 3]
                                [--max-requests 20000]
                                [--max-trees 32] [--delay-ms 2] [--modes run,batching,ray] [--device cpu|cuda]
                                [--form treerec|loop] [--head none|mean|sentiment|sentiment64] [--clients-as threads|asyncio|uvloop]
                                [--replicas 1]
                                [--quick] [--out DIR]

Each of N clients sends one single-tree request (SST test trees, in turn), waits for its answer, and sends
the next (closed loop), for --seconds or until --max-requests answers, whichever comes first (--repeats times, the
modes interleaved, the median reported: a neighbour's burst on a shared machine hits one repeat), on this machine only
(in-process sessions; Ray Serve through its handles on a local Ray). Modes, the same trees and weights:

- `run`: a plain Cortex session, `session.run` per request from every client thread (what a server without
  batching does);
- `batching`: `cortex.BatchingSession(max_trees, max_delay_ms)`, `run` per request;
- `ray`: the Ray Serve deployment of cortex/serving/ray_app.py (`@serve.batch` with the same max_trees and delay),
  one replica, called through its handle (needs the `serve` extra; reported as skipped without it);
- `bound`: the same trees run back to back as prebuilt forests of the mean batch size the batching session reached
  at that client count (one caller, no merging cost): what merging is measured against. On a GPU the forests'
  outputs go to pinned host memory, as the batching session's do (`cortex.serving.PinnedOutputs`);
- `merge`: the same groups of single-tree requests through `cortex.serving.run_forest` by one caller: the bound
  plus merging, the bounds check and splitting, without the queue and the callers' threads;
- `bound_on_device` (CUDA only): the bound's forests with their outputs left in GPU memory (IO binding): the
  bound less copying the outputs to the host;
- `bound_callers` (with `--bound-callers K`): the bound's forests run by K threads at once on the one session:
  whether the device takes several forests at once (two or three in flight serve 1.8-2.25x one on an H100);
- `ceiling` (asked for by name): a BatchingSession with the same settings whose forests are not built or run, every
  request answered with no outputs: what the callers, the request checks, the queue and the answers cost by
  themselves, so the most any server called from these clients in this process could serve (they all share one
  GIL). Not a system; measured to tell the load generator's limit from the server's.
- `floor` (asked for by name): the least a batching server in this process could do for a request, none of it
  Cortex's: requests queued unchecked, taken by one thread in batches as the BatchingSession takes them, answered
  with no outputs through one call into each event loop a batch (`FloorServer`). What the clients and their event
  loop cost by themselves; `ceiling` less `floor` is the BatchingSession's own request path (checks, queue,
  bookkeeping, answers). Not a system either.

Clients (--clients-as): `threads` (default), N Python threads each blocking on its call (a threaded server);
`asyncio`, N coroutines on one event loop (an asyncio server, as a Ray Serve replica or an ASGI app is): `batching`
awaits `run_async`, `run` awaits `session.run` on a pool of N threads (`loop.run_in_executor`), `ray` awaits the
handle's response; `uvloop`, the same coroutines on uvloop's event loop (what Ray's actors, Serve's replicas among
them, and uvicorn run when uvloop is installed, as the `serve` extra installs it).

Replicas (--replicas P > 1): the modes are served by P processes at once on the same device, each with its own
sessions and an even share of the clients, as a serving engine's replicas are (Ray Serve's replicas, Triton's
Python backend instances), without the engine's front end between them and the clients; rates are added, latencies
pooled, and the bound is P callers at once running prebuilt forests of the batch size the replicas reached. On a
CPU each replica's kernels get the cores divided between the replicas (unless CORTEX_NUM_THREADS is set).

Reported per (hidden, mode, clients): throughput (trees/s), p50 and p99 latency (ms) from send to answer, the mean
requests per kernel call. Before timing, every mode's answers for the first trees are checked against a plain run
of each tree (bitwise on the CPU, within 1e-6 on CUDA). Writes results.json, results.md and throughput.png (matplotlib, the
`bench` extra) under --out; prints the table and the issue's targets (>= 80% of the bound, p99 <= 2 x the
single-request latency + the delay, the speedup over per-request runs at 32 clients on the CPU, 64 on CUDA).

--quick: hidden 256, clients 1,8,32,64, 1.5 s a point, at most 5,000 requests a point: under 2 minutes on the GPU
host (kernel compiles included), a few minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

VOCAB = 5000  # SST tokens hashed into this many embedding rows, as tools/bench.py does
EMBED = 300


# ---- inputs and models -------------------------------------------------------------------------------------------

def sst_trees(limit: int):
    from cortex.examples import structures as st

    sst = st.sst_dir_default()
    if sst is None:
        print("serve_bench: no SST directory (set CORTEX_SST_DIR); using SST-shaped random trees", file=sys.stderr)
        return st.sst_like_trees(limit, np.random.default_rng(0), VOCAB)
    return st.read_sst(sst, split="test", vocab_size=VOCAB, limit=limit)


def feeds_of(tree, form: str) -> dict:
    return dict(children=tree.children, words=tree.words) if form == "treerec" else tree.arrays()


def convert_model(hidden: int, form: str, device: str, folder: Path, head: str = "none") -> str:
    import onnx

    import cortex
    from cortex.examples import treelstm

    params = treelstm.make_params(hidden=hidden, embed_dim=EMBED, vocab=VOCAB)
    model = treelstm.build_treerec(params) if form == "treerec" else treelstm.build_loop(params)
    if head == "mean":  # a mean over the tree's states: per request after the forest (cortex/serving/tail.py)
        model = treelstm.with_mean_head(model, hidden)
    elif head in ("sentiment", "sentiment64"):  # log-probabilities per node: float32 merges whole, float64 per request
        model = treelstm.with_sentiment_head(model, hidden, float64=head == "sentiment64")
    name = f"treelstm_{form}{'' if head == 'none' else '_' + head}_h{hidden}"
    source = folder / f"{name}.onnx"
    onnx.save(model, str(source))
    out = folder / f"{name}_{device.split(':')[0]}.cortex.onnx"
    cortex.convert(str(source), str(out), target="cpu" if device == "cpu" else "cuda", strict=True)
    return str(out)


# ---- the closed loop ---------------------------------------------------------------------------------------------

def loop_point(clients: int, latencies, elapsed: float, errors: int = 0) -> dict:
    """A closed loop's point: its answers' rate and latency percentiles (an error is an answer: `errors` of them);
    the latencies (s) themselves under "latencies", for points of several replicas to be combined (`combine`), then
    dropped."""
    kept = np.asarray(latencies, dtype=float)
    lat = kept if len(kept) else np.array([np.nan])
    return {"clients": clients, "requests": len(kept), "seconds": round(elapsed, 3), "errors": errors,
            "throughput": len(kept) / elapsed, "p50_ms": float(np.percentile(lat, 50) * 1e3),
            "p99_ms": float(np.percentile(lat, 99) * 1e3), "latencies": kept}


def failing_requests(requests: list, every: int, form: str) -> list:
    """`requests` with every `every`-th one (0: none) replaced by a request that fails: a client sending malformed
    trees. TreeRec: a two-node cycle, which no per-request check sees, so it fails a merged forest; Loop: a visit
    order past the tree's nodes, which the merge's bounds check sends to run alone."""
    if not every:
        return requests
    out = list(requests)
    for k in range(every - 1, len(out), every):
        good = out[k]
        if form == "treerec":
            out[k] = dict(children=np.array([[1, -1], [0, -1]], np.int64), words=np.array([1, 2], np.int64))
        else:
            out[k] = dict(good, order=np.append(good["order"], len(good["words"])))
    return out


def closed_loop(call, requests: list, clients: int, seconds: float, max_requests: int) -> dict:
    """`clients` threads, each calling `call(feeds)` on the next request in turn until the time or the count is
    reached; latencies (s) of the answers that arrived in the window."""
    latencies, lock = [], threading.Lock()
    taken, errors = [0], [0]
    start = time.perf_counter()
    deadline = start + seconds

    def client():
        mine, failed = [], 0
        while time.perf_counter() < deadline:
            with lock:
                if taken[0] >= max_requests:
                    break
                k = taken[0]
                taken[0] += 1
            sent = time.perf_counter()
            try:
                call(requests[k % len(requests)])
            except Exception:  # noqa: BLE001 - a failing request's answer (failing_requests)
                failed += 1
            mine.append(time.perf_counter() - sent)
        with lock:
            latencies.extend(mine)
            errors[0] += failed

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    return loop_point(clients, latencies, time.perf_counter() - start, errors[0])


def closed_loop_async(acall, requests: list, clients: int, seconds: float, max_requests: int,
                      loop_factory=None) -> dict:
    """`closed_loop` with `clients` coroutines on one event loop (asyncio's, or `loop_factory()`'s), each awaiting
    `acall(feeds)`."""
    import asyncio

    latencies = []
    taken, errors = [0], [0]

    async def client(deadline):
        while time.perf_counter() < deadline and taken[0] < max_requests:
            k = taken[0]
            taken[0] += 1
            sent = time.perf_counter()
            try:
                await acall(requests[k % len(requests)])
            except Exception:  # noqa: BLE001 - a failing request's answer (failing_requests)
                errors[0] += 1
            latencies.append(time.perf_counter() - sent)

    async def main():
        await asyncio.gather(*(client(start + seconds) for _ in range(clients)))

    start = time.perf_counter()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
    return loop_point(clients, latencies, time.perf_counter() - start, errors[0])


def forest_bound(session, plan, requests: list, batch: int, seconds: float, form: str, trees,
                 on_device: Optional[int] = None, pinned=None, tail=None) -> tuple:
    """Trees/s by one caller, back to back, over the same trees in groups of `batch`: (prebuilt forests: the bound;
    run_forest over the single-tree requests: the bound plus merging, checking and splitting, without the queue and
    the callers' threads; with `on_device` (a CUDA device id), prebuilt forests whose outputs stay in that GPU's
    memory (IO binding), which shows what copying the outputs to the host costs, else None). `pinned`: a
    PinnedOutputs of `session` (a GPU): the bound's and run_forest's forests write their outputs through it. `tail`:
    the plan's TailSessions (outputs computed per request after the forest), for run_forest."""
    from cortex.examples import structures as st
    from cortex.serving import run_forest

    batch = max(1, batch)
    starts = range(0, len(trees) - batch + 1, batch)
    forests = [feeds_of(st.batch(trees[i:i + batch]), form) for i in starts]
    groups = [requests[i:i + batch] for i in starts]

    def rate(step, items):
        step(items[0])
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 2:
            step(items[done % len(items)])
            done += 1
        return done * batch / (time.perf_counter() - start)

    kept = None
    if on_device is not None:
        names = [o.name for o in session.get_outputs()]

        def outputs_on_device(feeds):
            binding = session.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, value)
            for name in names:
                binding.bind_output(name, "cuda", on_device)
            session.run_with_iobinding(binding)
        kept = rate(outputs_on_device, forests)

    def prebuilt(feeds):
        if pinned is None or pinned.run(feeds) is None:
            session.run(None, feeds)

    merged = rate(lambda g: run_forest(plan, session, g, pinned=pinned, tail=tail), groups)
    return rate(prebuilt, forests), merged, kept


def concurrent_bound(session, requests: list, batch: int, seconds: float, form: str, trees, callers: int,
                     pinned=None) -> float:
    """Trees/s of the bound's prebuilt forests run by `callers` threads at once on the one session (each releases
    the GIL inside its run): whether the device, or the CPU kernel's pool, takes several forests at once, which
    one caller (the bound) and one BatchingSession worker do not ask of it."""
    from cortex.examples import structures as st

    batch = max(1, batch)
    forests = [feeds_of(st.batch(trees[i:i + batch]), form) for i in range(0, len(trees) - batch + 1, batch)]

    def step(feeds):
        if pinned is None or pinned.run(feeds) is None:
            session.run(None, feeds)

    step(forests[0])
    done = [0] * callers
    stop = time.perf_counter() + seconds / 2

    def caller(j):
        k = j
        while time.perf_counter() < stop:
            step(forests[k % len(forests)])
            done[j] += 1
            k += callers

    threads = [threading.Thread(target=caller, args=(j,), daemon=True) for j in range(callers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    return sum(done) * batch / (time.perf_counter() - start)


# ---- modes -------------------------------------------------------------------------------------------------------

# The BatchingSession's steps (ForestStats' *_s): forests built and bounds-checked, the session's runs, outputs cut
# back, callers answered; reported per kernel call beside the call's cycle (the point's time / its calls).
STEPS = ("merging", "running", "splitting", "answering")
BATCHING_MODES = ("batching", "ceiling")  # modes served by a BatchingSession (its stats, its timeout)


def runners(args):
    """BatchingSession(runners=...) for --runners."""
    value = getattr(args, "runners", "auto")
    return None if value == "auto" else int(value)


def unrun_session(path: str, args):
    """The `ceiling` mode: a BatchingSession that answers each request with no outputs, without merging or running
    (its requests are still checked and queued, its callers answered the same way)."""
    from cortex.serving.batching import BatchingSession, BatchingStats

    class Unrun(BatchingSession):
        def _prepare(self, batch: list):  # the "forest" is the number of requests whose callers still wait
            batch = [r for r in batch if r.claim()]
            return (batch, len(batch), BatchingStats(batches=1, requests=len(batch), merged_requests=len(batch))) \
                if batch else None

        def _run(self, forest, counts):
            return None

        def _results(self, forest, counts, ran):
            return [[] for _ in range(forest)]

    return Unrun(path, max_trees=args.max_trees, max_delay_ms=args.delay_ms, device=args.device, max_queue=4096,
                 workers=args.workers, runners=runners(args), pinned_outputs=False)


class FloorServer:
    """The `floor` mode: requests queued unchecked, taken by one thread as a BatchingSession takes them (at most
    max_trees; when as many wait as the last batch took, or the oldest has waited max_delay_ms), each answered with
    no outputs, asyncio callers through one call_soon_threadsafe into their loop a batch."""

    def __init__(self, max_trees: int, max_delay_ms: float):
        import collections

        self.max_trees, self.max_delay = max_trees, max_delay_ms / 1000.0
        self._queue, self._cond, self._closing = collections.deque(), threading.Condition(), False
        self._last = max_trees
        self._thread = threading.Thread(target=self._serve, name="serve-bench-floor", daemon=True)
        self._thread.start()

    def _enqueue(self, future, loop):
        with self._cond:
            self._queue.append((future, loop, time.monotonic()))
            if len(self._queue) == 1 or len(self._queue) >= min(self.max_trees, self._last):  # the first, or a batch
                self._cond.notify()
        return future

    def run_async(self, feeds):
        import asyncio

        loop = asyncio.get_running_loop()
        return self._enqueue(loop.create_future(), loop)

    def run(self, feeds, timeout=None):
        from concurrent.futures import Future

        return self._enqueue(Future(), None).result(timeout)

    def _serve(self):
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                deadline = self._queue[0][2] + self.max_delay
                while len(self._queue) < min(self.max_trees, self._last) and not self._closing:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                self._last = count = min(self.max_trees, len(self._queue))
                batch = [self._queue.popleft() for _ in range(count)]
            loops = {}
            for future, loop, _ in batch:
                if loop is None:
                    future.set_result([])
                else:
                    loops.setdefault(loop, []).append(future)
            for loop, futures in loops.items():
                loop.call_soon_threadsafe(_answer_empty, futures)

    def close(self):
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(30)


def _answer_empty(futures: list):
    for future in futures:
        if not future.done():
            future.set_result([])


class Modes:
    """The systems under load for one converted model: a plain session, a BatchingSession, a Ray Serve app."""

    def __init__(self, path: str, args, trees, requests: list):
        import cortex
        from cortex.serving import PinnedOutputs

        self.path, self.args, self.trees, self.requests = path, args, trees, requests
        self.load = failing_requests(requests, args.bad_every, args.form)  # what the clients send
        self.plain = cortex.InferenceSession(path, device=args.device)
        self.batching = cortex.BatchingSession(path, max_trees=args.max_trees, max_delay_ms=args.delay_ms,
                                               device=args.device, max_queue=4096, workers=args.workers,
                                               runners=runners(args), pinned_outputs=not args.no_pinned)
        # on a GPU, the bound's forests write their outputs where the batching session's do (pinned host memory)
        self.pinned = None if args.no_pinned else PinnedOutputs.of(self.batching.plan, self.plain, args.device)
        self.ceiling = unrun_session(path, args) if "ceiling" in args.modes else None
        self.floor = FloorServer(args.max_trees, args.delay_ms) if "floor" in args.modes else None
        self.ray_handle, self.ray_error = None, None

    def start_ray(self):
        try:
            import ray
            from ray import serve

            from cortex.serving.ray_app import cortex_app
        except ImportError as e:
            self.ray_error = f"not installed ({e.name}): pip install -e '.[serve]'"
            return
        env = {k: os.environ[k] for k in ("CORTEX_TRUST_DIR", "CORTEX_CACHE_DIR", "CORTEX_NUM_THREADS")
               if k in os.environ}
        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False, object_store_memory=256 * 1024 * 1024,
                     runtime_env={"env_vars": env})
            serve.start(proxy_location="Disabled")  # handles only: no HTTP port opened
        actor = {"num_gpus": 1} if self.args.device != "cpu" else {}
        app = cortex_app(self.path, max_batch_size=self.args.max_trees, batch_wait_timeout_s=self.args.delay_ms / 1e3,
                         device=self.args.device, ray_actor_options=actor)
        self.ray_handle = serve.run(app, name=Path(self.path).stem.replace(".", "_"), route_prefix=None)

    def call(self, mode: str):
        if mode == "run":
            return lambda feeds: self.plain.run(None, feeds)
        if mode in BATCHING_MODES or mode == "floor":
            return lambda feeds: getattr(self, mode).run(feeds, timeout=120)
        if mode == "ray":
            return lambda feeds: self.ray_handle.infer.remote(feeds).result(timeout_s=120)
        raise ValueError(mode)

    def acall(self, mode: str):
        """The coroutine function an asyncio client awaits per request."""
        import asyncio

        if mode == "run":
            if getattr(self, "_executor", None) is None:
                from concurrent.futures import ThreadPoolExecutor

                self._executor = ThreadPoolExecutor(max_workers=max(self.args.clients))

            async def run(feeds):
                return await asyncio.get_running_loop().run_in_executor(self._executor, self.plain.run, None, feeds)
            return run
        if mode in BATCHING_MODES or mode == "floor":
            return getattr(self, mode).run_async
        if mode == "ray":
            async def ray(feeds):
                return await self.ray_handle.infer.remote(feeds)
            return ray
        raise ValueError(mode)

    def loop(self, mode: str, requests: list, clients: int, seconds: float, max_requests: int) -> dict:
        if self.args.clients_as == "uvloop":
            import uvloop

            return closed_loop_async(self.acall(mode), requests, clients, seconds, max_requests, uvloop.new_event_loop)
        if self.args.clients_as == "asyncio":
            return closed_loop_async(self.acall(mode), requests, clients, seconds, max_requests)
        return closed_loop(self.call(mode), requests, clients, seconds, max_requests)

    def served(self, mode: str):
        """(requests answered, kernel calls, {step: seconds}) so far by a batching mode; None for the others."""
        if mode in BATCHING_MODES:
            stats = getattr(self, mode).stats
            return stats.requests, stats.batches + stats.alone, {step: getattr(stats, f"{step}_s") for step in STEPS}
        if mode == "ray":
            stats = self.ray_handle.statistics.remote().result(timeout_s=60)
            return stats["requests"], stats["batches"] + stats["alone"], {}
        return None

    def point(self, mode: str, clients: int, seconds: float, max_requests: int) -> dict:
        """One closed-loop point of `mode` after a short warm-up; a batching mode's point also holds what its
        session served meanwhile: "served" = (requests, kernel calls, {step: seconds})."""
        self.loop(mode, self.load, clients, min(0.3, seconds), 10 ** 9)  # warm
        before = self.served(mode)
        point = self.loop(mode, self.load, clients, seconds, max_requests)
        if point["errors"] and not self.args.bad_every:
            raise SystemExit(f"serve_bench: mode {mode} failed {point['errors']} well-formed requests")
        after = self.served(mode)
        if after is not None:
            point["served"] = (after[0] - before[0], after[1] - before[1],
                               {step: after[2][step] - before[2][step] for step in after[2]})
        return point

    def bound(self, batch: int, seconds: float) -> tuple:
        """forest_bound's (bound, merged, outputs kept on the GPU) at forests of `batch`."""
        gpu = None if self.args.device == "cpu" else int(self.args.device.partition(":")[2] or 0)
        return forest_bound(self.plain, self.batching.plan, self.requests, batch, seconds, self.args.form, self.trees,
                            on_device=gpu, pinned=self.pinned, tail=self.batching.tail)

    def check(self, mode: str, requests: Optional[list] = None):
        """Every mode answers the first trees as a plain run does (bitwise on the CPU); the batching session also
        with the first max_trees * workers + 1 trees queued at once, so merged forests (several in flight, with
        more than one worker) are what is checked."""
        requests = self.requests if requests is None else requests
        call = self.call(mode)
        if mode in ("ceiling", "floor"):
            if any(call(feeds) != [] for feeds in requests[:8]):
                raise SystemExit(f"serve_bench: the {mode} mode answered with outputs")
            return
        answers = [(feeds, call(feeds)) for feeds in requests[:8]]
        if mode == "batching":
            queued = requests[:self.args.max_trees * self.batching.workers + 1]
            futures = [self.batching.submit(feeds) for feeds in queued]
            answers += [(feeds, future.result(timeout=120)) for feeds, future in zip(queued, futures)]
        for feeds, got in answers:
            want = self.plain.run(None, feeds)
            for a, b in zip(got, want):
                if a.shape != b.shape:
                    raise SystemExit(f"serve_bench: mode {mode} answers differently from a plain run (shape "
                                     f"{a.shape} against {b.shape})")
                same = np.array_equal(a, b) if self.args.device == "cpu" else np.allclose(a, b, rtol=1e-6, atol=1e-6)
                if not same:
                    raise SystemExit(f"serve_bench: mode {mode} answers differently from a plain run "
                                     f"(max abs diff {float(np.abs(a - b).max())})")

    def close(self):
        self.batching.close()
        if self.ceiling is not None:
            self.ceiling.close()
        if self.floor is not None:
            self.floor.close()
        if getattr(self, "_executor", None) is not None:
            self._executor.shutdown()
        if self.ray_handle is not None:
            import ray
            from ray import serve
            serve.shutdown()
            ray.shutdown()


def combine(parts: list, hidden: int, mode: str, clients: int) -> dict:
    """The point of `clients` clients from the points of the processes that served them (one, or each replica's):
    rates added, latencies pooled; for a batching mode, the mean trees per kernel call and the worker's steps per
    call beside the call's cycle (a replica's time over its calls, averaged over the calls)."""
    latencies = np.concatenate([p.pop("latencies") for p in parts])
    point = loop_point(clients, latencies, max(p["seconds"] for p in parts), sum(p.get("errors", 0) for p in parts))
    point.pop("latencies")
    point.update(hidden=hidden, mode=mode, throughput=sum(p["throughput"] for p in parts))
    served = [p["served"] for p in parts if "served" in p]
    if served:
        requests, calls = sum(s[0] for s in served), sum(s[1] for s in served)
        point["mean_batch"] = requests / calls if calls else 0.0
        if calls and served[0][2]:
            point["steps_us"] = {step: sum(s[2][step] for s in served) / calls * 1e6 for step in STEPS}
            point["steps_us"]["cycle"] = sum(p["seconds"] for p in parts) / calls * 1e6
    if len(parts) > 1:
        point["replicas"] = [{"clients": p["clients"], "throughput": round(p["throughput"])} for p in parts]
    return point


class Replicas:
    """--replicas P: the modes served by P processes at once, each with its own sessions (a BatchingSession, a
    plain session) on the same device and its share of the clients, as a serving engine's replicas or instances
    are (Ray Serve's replicas, Triton's Python backend instances), without the engine's front end: each replica's
    clients are its own threads or coroutines. A point's rate is the replicas' rates added; the bound is P
    callers at once, one a replica, each running prebuilt forests of the batch size the replicas reached."""

    def __init__(self, path: str, args):
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no CUDA context or threads inherited
        self.conns, self.processes = [], []
        for _ in range(args.replicas):
            mine, theirs = context.Pipe()
            process = context.Process(target=replica_main, args=(theirs, path, args), daemon=True)
            process.start()
            self.conns.append(mine)
            self.processes.append(process)
        self._gather(self.conns)

    def _gather(self, conns: list) -> list:
        answers = []
        for conn in conns:
            if not conn.poll(600):
                raise SystemExit("serve_bench: a replica did not answer in 600 s")
            try:
                kind, value = conn.recv()
            except EOFError:  # it died: its traceback, if any, went to stderr
                process = self.processes[self.conns.index(conn)]
                process.join(5)
                raise SystemExit(f"serve_bench: a replica exited (exit code {process.exitcode})") from None
            if kind == "exit":
                raise SystemExit(value)
            if kind == "error":
                raise RuntimeError(f"serve_bench: a replica failed: {value}")
            answers.append(value)
        return answers

    def _at_once(self, method: str, kwargs: list) -> list:
        """`method(**kwargs[i])` on replica i for each kwargs given, all starting at the same moment."""
        start_at = time.time() + 0.1
        conns = [conn for conn, kw in zip(self.conns, kwargs) if kw is not None]
        for conn, kw in zip(self.conns, kwargs):
            if kw is not None:
                conn.send((method, dict(kw, start_at=start_at)))
        return self._gather(conns)

    def share(self, clients: int) -> list:
        """Each replica's clients: `clients` spread as evenly as they go (replicas past the count get none)."""
        n = len(self.conns)
        return [clients // n + (1 if i < clients % n else 0) for i in range(n)]

    def check(self, mode: str):
        self._at_once("check", [{"mode": mode}] * len(self.conns))

    def point(self, mode: str, clients: int, seconds: float, max_requests: int) -> list:
        shares = self.share(clients)
        return self._at_once("point", [{"mode": mode, "clients": c, "seconds": seconds,
                                        "max_requests": max(1, max_requests * c // clients)} if c else None
                                       for c in shares])

    def bound(self, batch: int, seconds: float, clients: int) -> tuple:
        kwargs = [{"batch": batch, "seconds": seconds} if c else None for c in self.share(clients)]
        rates = list(zip(*self._at_once("bound", kwargs)))
        return tuple(None if None in r else sum(r) for r in rates)

    def close(self):
        for conn in self.conns:
            try:
                conn.send(("close", {}))
            except OSError:  # already gone
                pass
        for process in self.processes:
            process.join(60)
            if process.is_alive():
                process.kill()


def replica_main(conn, path: str, args):
    """A replica process: its sessions on `path`, then the parent's commands (Modes' check, point and bound) until
    "close". On a CPU its kernels get the cores divided between the replicas unless CORTEX_NUM_THREADS is set."""
    if args.device == "cpu" and "CORTEX_NUM_THREADS" not in os.environ:
        os.environ["CORTEX_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.replicas))
    _switch_interval(args)
    trees = sst_trees(args.trees)
    modes = Modes(path, args, trees, [feeds_of(t, args.form) for t in trees])
    conn.send(("ready", None))
    while True:
        method, kwargs = conn.recv()
        if method == "close":
            modes.close()
            return
        time.sleep(max(0.0, kwargs.pop("start_at") - time.time()))
        try:
            conn.send(("ok", getattr(modes, method)(**kwargs)))
        except SystemExit as e:  # a wrong answer found by check
            conn.send(("exit", str(e)))
        except Exception as e:
            conn.send(("error", f"{type(e).__name__}: {e}"))


def _switch_interval(args):
    if args.switch_interval_us is not None:
        sys.setswitchinterval(args.switch_interval_us / 1e6)


def run(args) -> dict:
    from tools.peers import machine

    _switch_interval(args)
    info = machine.describe()
    trees = sst_trees(args.trees)
    requests = [feeds_of(t, args.form) for t in trees]
    folder = Path(args.out) / "models"
    folder.mkdir(parents=True, exist_ok=True)
    results = {"command": "python tools/serve_bench.py " + " ".join(shlex.quote(a) for a in args.argv),
               "date": _dt.datetime.now().isoformat(timespec="seconds"), "machine": info,
               "settings": {k: v for k, v in vars(args).items() if k != "argv"}, "points": [], "skipped": {}}
    for hidden in args.hidden:
        path = convert_model(hidden, args.form, args.device, folder, args.head)
        modes = Modes(path, args, trees, requests) if args.replicas == 1 else Replicas(path, args)
        try:
            if "ray" in args.modes:
                modes.start_ray()
                if modes.ray_error:
                    results["skipped"]["ray"] = modes.ray_error
                    print(f"serve_bench: Ray Serve skipped: {modes.ray_error}", file=sys.stderr)
            active = [m for m in args.modes if m != "ray" or modes.ray_handle is not None]
            for mode in active:
                modes.check(mode)
            for clients in args.clients:
                extra = ["bound", "merge"] + (["bound_on_device"] if args.device != "cpu" else [])
                runs = {mode: [] for mode in active + extra}
                for repeat in range(args.repeats):  # everything interleaved: a neighbour's burst hits one repeat
                    for mode in active:
                        if args.replicas == 1:
                            parts = [modes.point(mode, clients, args.seconds, args.max_requests)]
                        else:
                            parts = modes.point(mode, clients, args.seconds, args.max_requests)
                        runs[mode].append(combine(parts, hidden, mode, clients))
                    # the bound at the batch size the BatchingSession reached in this repeat
                    reached = runs["batching"][-1].get("mean_batch", 1.0) if "batching" in active else clients
                    batch = max(1, int(round(reached)))
                    if args.replicas == 1:
                        rates = modes.bound(batch, args.seconds)
                    else:
                        rates = modes.bound(batch, args.seconds, clients)
                    for mode, value in zip(("bound", "merge", "bound_on_device"), rates):
                        if value is None:
                            continue
                        runs[mode].append({"hidden": hidden, "mode": mode, "clients": clients, "batch": batch,
                                           "throughput": value})
                    if args.bound_callers > 1 and args.replicas == 1:
                        value = concurrent_bound(modes.plain, requests, batch, args.seconds, args.form, trees,
                                                 args.bound_callers, modes.pinned)
                        runs.setdefault("bound_callers", []).append(
                            {"hidden": hidden, "mode": "bound_callers", "clients": clients, "batch": batch,
                             "callers": args.bound_callers, "throughput": value})
                for mode, repeats in runs.items():  # the repeat of median throughput, with its latencies
                    ranked = sorted(repeats, key=lambda p: p["throughput"])
                    point = dict(ranked[len(ranked) // 2], repeats=[round(p["throughput"]) for p in repeats])
                    results["points"].append(point)
                    print(_line(point), flush=True)
        finally:
            modes.close()
    info["load_average_end"] = machine.load_average()
    return results


def _line(p: dict) -> str:
    callers = f", {p['callers']} callers at once" if "callers" in p else ""
    extra = f", p50 {p['p50_ms']:.3f} ms, p99 {p['p99_ms']:.3f} ms" if "p50_ms" in p else \
        f" (forests of {p['batch']}{callers})"
    batch = f", {p['mean_batch']:.1f} trees per call" if "mean_batch" in p else ""
    errors = f", {p['errors']} errors" if p.get("errors") else ""
    return (f"h{p['hidden']} {p['mode']:>8} clients {p['clients']:3d}: {p['throughput']:9.0f} trees/s{extra}{batch}"
            f"{errors}")


# ---- report ------------------------------------------------------------------------------------------------------

def targets(results: dict) -> list:
    """The issue's targets, per hidden size, at the reference client count (32 on the CPU, 64 on CUDA)."""
    device = results["settings"]["device"]
    ref = 32 if device == "cpu" else 64
    delay = results["settings"]["delay_ms"]
    rows = []
    for hidden in results["settings"]["hidden"]:
        pts = {(p["mode"], p["clients"]): p for p in results["points"] if p["hidden"] == hidden}
        clients = max((c for m, c in pts if m == "batching" and c <= ref), default=None)
        if clients is None or ("run", clients) not in pts:
            continue
        b, r, bound = pts[("batching", clients)], pts[("run", clients)], pts.get(("bound", clients))
        single = pts.get(("run", 1))
        row = {"hidden": hidden, "clients": clients, "speedup_over_run": b["throughput"] / r["throughput"],
               "of_bound": b["throughput"] / bound["throughput"] if bound else None,
               "p99_ms": b["p99_ms"], "p99_limit_ms": 2 * single["p50_ms"] + delay if single else None}
        if bound and ("merge", clients) in pts:
            row["merge_of_bound"] = pts[("merge", clients)]["throughput"] / bound["throughput"]
        if ("ceiling", clients) in pts:  # the most a server called from these clients could reach, over run
            row["ceiling_over_run"] = pts[("ceiling", clients)]["throughput"] / r["throughput"]
        if ("floor", clients) in pts:  # what the clients alone allow, over run
            row["floor_over_run"] = pts[("floor", clients)]["throughput"] / r["throughput"]
        if ("ray", clients) in pts:
            row["ray_speedup_over_run"] = pts[("ray", clients)]["throughput"] / r["throughput"]
            row["ray_of_bound"] = pts[("ray", clients)]["throughput"] / bound["throughput"] if bound else None
        rows.append(row)
    return rows


_HEADS = {"mean": ", with a mean over its states", "sentiment": ", with float32 log-probabilities per node",
          "sentiment64": ", with float64 log-probabilities per node"}


def markdown(results: dict) -> str:
    s, m = results["settings"], results["machine"]
    lines = [f"Command: `{results['command']}` ({results['date']})", "",
             f"Machine: {m['cpu']}, {m['usable_cores']} cores, load average {m.get('load_average_start')} at the "
             f"start, {m.get('load_average_end')} at the end; onnxruntime {m['onnxruntime']}, cortex git "
             f"{m['cortex_git']}; device {s['device']}, TreeLSTM ({s['form']} form"
             f"{_HEADS.get(s.get('head'), '')}), SST test trees, max_trees "
             f"{s['max_trees']}, max_delay_ms {s['delay_ms']}, {s['seconds']} s or {s['max_requests']} requests a "
             "point" + (f", {s['replicas']} replicas (processes)" if s.get("replicas", 1) > 1 else "") + ("" if s["device"] == "cpu" else
                        f", forests' outputs into {'pageable' if s.get('no_pinned') else 'pinned'} host memory") + ".",
             ""]
    for name, why in results["skipped"].items():
        lines += [f"Skipped: {name}: {why}", ""]
    lines += ["| hidden | clients | mode | trees/s | p50 ms | p99 ms | trees per call |",
              "| ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
    for p in results["points"]:
        per_call = f"{p['mean_batch']:.1f}" if "mean_batch" in p else (str(p["batch"]) if "batch" in p else "1" if
                                                                        p["mode"] == "run" else "")
        lat = (f"{p['p50_ms']:.3f} | {p['p99_ms']:.3f}") if "p50_ms" in p else " | "
        lines.append(f"| {p['hidden']} | {p['clients']} | {p['mode']} | {p['throughput']:.0f} | {lat} | {per_call} |")
    rows = targets(results)
    if rows:
        lines += ["", "| hidden | clients | batching / run | batching / bound | run_forest / bound | p99 ms (limit: 2 x "
                  "single p50 + delay) | Ray / run | Ray / bound | ceiling / run | floor / run |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in rows:
            of_bound = f"{r['of_bound']:.0%}" if r["of_bound"] is not None else ""
            limit = f" ({r['p99_limit_ms']:.3f})" if r["p99_limit_ms"] is not None else ""
            ray_run = f"{r['ray_speedup_over_run']:.2f}x" if "ray_speedup_over_run" in r else ""
            ray_bound = f"{r['ray_of_bound']:.0%}" if r.get("ray_of_bound") is not None else ""
            merged = f"{r['merge_of_bound']:.0%}" if "merge_of_bound" in r else ""
            ceiling = f"{r['ceiling_over_run']:.2f}x" if "ceiling_over_run" in r else ""
            floor = f"{r['floor_over_run']:.2f}x" if "floor_over_run" in r else ""
            lines.append(f"| {r['hidden']} | {r['clients']} | {r['speedup_over_run']:.2f}x | {of_bound} | {merged} | "
                         f"{r['p99_ms']:.3f}{limit} | {ray_run} | {ray_bound} | {ceiling} | {floor} |")
    steps = [p for p in results["points"] if "steps_us" in p]
    if steps:
        lines += ["", "Where a batching call's time goes (the worker's clocks, microseconds per kernel call; the cycle is "
                  "the point's time over its calls: with one worker, the rest of it is the worker waiting for "
                  "requests, which is the callers' side: answers received, the next requests made and queued):", "",
                  "| hidden | mode | clients | trees per call | cycle | merging | running | splitting | answering | rest |",
                  "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for p in steps:
            u = p["steps_us"]
            rest = u["cycle"] - sum(u[step] for step in STEPS)
            lines.append(f"| {p['hidden']} | {p['mode']} | {p['clients']} | {p['mean_batch']:.1f} | {u['cycle']:.0f} | " +
                         " | ".join(f"{u[step]:.0f}" for step in STEPS) + f" | {rest:.0f} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hiddens = results["settings"]["hidden"]
    fig, axes = plt.subplots(1, len(hiddens), figsize=(5.5 * len(hiddens), 4), squeeze=False)
    labels = {"run": "session.run per request", "batching": "BatchingSession", "ray": "Ray Serve (@serve.batch)",
              "bound": "bound: prebuilt forests", "merge": "run_forest, one caller",
              "ceiling": "ceiling: callers and queue, nothing run", "floor": "floor: the callers alone"}
    for ax, hidden in zip(axes[0], hiddens):
        for mode, style in (("bound", "k--"), ("merge", "k:"), ("floor", "k-"), ("ceiling", "k-."), ("batching", "o-"),
                            ("ray", "s-"), ("run", "^-")):
            pts = sorted((p["clients"], p["throughput"]) for p in results["points"]
                         if p["hidden"] == hidden and p["mode"] == mode)
            if pts:
                ax.plot(*zip(*pts), style, label=labels[mode])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")  # Ray Serve's rate is an order of magnitude below the others on a small CPU
        ax.set_xlabel("concurrent clients (closed loop)")
        ax.set_ylabel("trees / s (log scale)")
        ax.set_title(f"TreeLSTM h{hidden}, {results['settings']['device']}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- command line ------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--hidden", default=None, help="comma list of hidden sizes (default 64,256; quick 256)")
    p.add_argument("--clients", default=None, help="comma list of client counts (default 1,2,4,8,16,32,64; quick "
                                                   "1,8,32,64)")
    p.add_argument("--seconds", type=float, default=None, help="time per point and repeat (default 2; quick 1.5)")
    p.add_argument("--max-requests", type=int, default=None, help="answers per point at most (default 20000; "
                                                                  "quick 5000)")
    p.add_argument("--repeats", type=int, default=None, help="repeats of each point, modes interleaved; the median "
                                                             "is reported (default 3; quick 1)")
    p.add_argument("--max-trees", type=int, default=32, help="BatchingSession max_trees / @serve.batch size (32)")
    p.add_argument("--delay-ms", type=float, default=2.0, help="max_delay_ms / batch_wait_timeout_s (2 ms)")
    p.add_argument("--workers", type=int, default=1, help="BatchingSession workers: forests in flight at once (1)")
    p.add_argument("--replicas", type=int, default=1, help="server processes, each with its own sessions and an even "
                   "share of the clients (1: this process). Not with the ray mode (Ray Serve has its own replicas)")
    p.add_argument("--runners", choices=("auto", "0", "1", "2"), default="auto",
                   help="BatchingSession runners: threads of the worker that run its forests (auto: 1 on a GPU, 0 on "
                        "the CPU)")
    p.add_argument("--modes", default="run,batching,ray", help="comma list of run,batching,ray,ceiling,floor (bound and "
                                                                "merge always)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (models converted for that target)")
    p.add_argument("--form", choices=("treerec", "loop"), default="treerec")
    p.add_argument("--head", choices=("none", "mean", "sentiment", "sentiment64"), default="none",
                   help="an output more: mean, the mean over the tree's states (computed per request after the "
                        "forest); sentiment, log-probabilities of 5 classes per node (float32: merged whole); "
                        "sentiment64, the same in float64 (per request after the forest)")
    p.add_argument("--clients-as", choices=("threads", "asyncio", "uvloop"), default="threads",
                   help="the clients: N threads (default) or N coroutines on one event loop (asyncio's or uvloop's)")
    p.add_argument("--trees", type=int, default=500, help="SST test trees cycled through (500)")
    p.add_argument("--bound-callers", type=int, default=1, help="K > 1: also the bound's forests run by K threads "
                   "at once on the one session (mode bound_callers; one replica only)")
    p.add_argument("--bad-every", type=int, default=0, help="every K-th request sent fails (TreeRec: a cycle; Loop: "
                   "an order past the tree): a client sending malformed trees; its errors count as answers (0: none)")
    p.add_argument("--quick", action="store_true", help="a short run (under 2 minutes on the GPU host)")
    p.add_argument("--out", default=None, help="output folder (default: a new temporary folder)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--switch-interval-us", type=float, default=None,
                   help="sys.setswitchinterval for this process and its replicas, in microseconds (default: "
                   "Python's, 5000): how long a thread waiting for the GIL lets the holder run before it asks for it")
    p.add_argument("--no-pinned", action="store_true", help="on a GPU, forests' outputs into ONNX Runtime's pageable "
                   "buffers, not pinned host memory (BatchingSession(pinned_outputs=False), and so the bound)")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    ints = lambda text: [int(x) for x in text.split(",") if x]  # noqa: E731
    args.hidden = ints(args.hidden or ("256" if args.quick else "64,256"))
    args.clients = ints(args.clients or ("1,8,32,64" if args.quick else "1,2,4,8,16,32,64"))
    args.seconds = args.seconds or (1.5 if args.quick else 2.0)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.max_requests = args.max_requests or (5000 if args.quick else 20000)
    args.modes = [m for m in args.modes.split(",") if m and m not in ("bound", "merge")]
    unknown = set(args.modes) - {"run", "batching", "ray", "ceiling", "floor"}
    if unknown:
        p.error(f"unknown modes {sorted(unknown)} (choose from run, batching, ray, ceiling, floor)")
    if args.replicas < 1:
        p.error("--replicas must be at least 1")
    if args.replicas > 1 and "ray" in args.modes:
        if "--modes" in args.argv:
            p.error("the ray mode runs in this process: not with --replicas (ray_app has its own num_replicas)")
        args.modes.remove("ray")  # the default list's
    if 1 not in args.clients:
        args.clients = [1] + args.clients  # the single-request latency the p99 target refers to
    args.out = args.out or tempfile.mkdtemp(prefix="serve_bench_")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = run(args)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results))
    if not args.no_plot:
        try:
            plot(results, out / "throughput.png")
        except ImportError:
            print("serve_bench: matplotlib is not installed (the bench extra): no plot", file=sys.stderr)
    print(markdown(results))
    print(f"serve_bench: wrote {out}/results.json, results.md" + ("" if args.no_plot else ", throughput.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

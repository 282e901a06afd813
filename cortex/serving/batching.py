"""BatchingSession: concurrent single-tree requests, one forest per kernel call.

Callers on any thread (`run`, blocking) or event loop (`await run_async`) hand in one request each. A worker
thread takes the waiting requests (up to `max_trees`); it waits for more only while fewer wait than its last batch
held (callers answered together tend to come back together; a lone caller waits only the first time), and never
longer than `max_delay_ms` from the oldest request's arrival. It merges them into one forest (merge.py: proven safe
from the IR at conversion), runs it through an ordinary Cortex session and answers every caller with its own rows.
While a forest runs, new requests queue up and form the next one, so under load batches fill without waiting. On a GPU
each worker hands its forests to a runner thread of its own: while one forest runs, the worker merges the next batch
as soon as it fills and answers the last forest's callers, and the next forest starts the moment the last one ends
(see _serve_forever).

A request that cannot join (its inputs disagree with the model's declarations, or its indices leave its own rows)
runs alone and gets exactly what a plain session gives it: its results or its own error. When a merged run fails
(a cycle, a token id past the embedding), every request of it runs again alone, so one bad tree never fails or
changes its neighbours.

Backpressure: at most `max_queue` requests wait. A request that arrives when the queue is full is refused at once
with `QueueFull` (nothing is queued; shed the load or retry later); requests already queued are served.
"""
from __future__ import annotations

import asyncio
import collections
import queue
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Optional

from .forest import (ForestStats, PinnedOutputs, finish_prepared, merge_session, prepare_forest, run_merged,
                     tail_sessions, takes_windows)
from .kernel import NotMergeable
from .merge import check_request, plan_for


_NONE_WAITING = sys.maxsize  # BatchingSession._wanted while no worker waits for requests


class QueueFull(RuntimeError):
    """The session's queue holds `max_queue` requests; this one was not queued."""


class SessionClosed(RuntimeError):
    """The session is closed (or closing) and takes no new requests."""


class _Waiter:
    """The answer slot of a blocking `run`: a lock held until the answer is in (lighter than a Future)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._lock.acquire()
        self._value = self._error = None
        self._done = False

    def set_running_or_notify_cancel(self) -> bool:
        return True

    def done(self) -> bool:
        return self._done

    def set_result(self, value):
        self._value, self._done = value, True
        self._lock.release()

    def set_exception(self, error):
        self._error, self._done = error, True
        self._lock.release()

    def result(self, timeout: Optional[float] = None):
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError(f"no answer within {timeout} s (the request stays queued)")
        if self._error is not None:
            raise self._error
        return self._value


def _settle(pairs: list):
    """In the caller's loop: each future gets its result or exception (unless its caller gave up meanwhile)."""
    for future, outcome in pairs:
        if future.done():
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


def _answer_loops(answers: list):
    """(a `run_async` request, result or exception) pairs: one call_soon_threadsafe per event loop, not one wake-up
    of the loop per request."""
    by_loop = {}
    for request, outcome in answers:
        by_loop.setdefault(request.loop, []).append((request.future, outcome))
    _wake_loops(by_loop)


def _wake_loops(by_loop: dict):
    """Each event loop settles its (future, result or exception) pairs, in one call."""
    for loop, pairs in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, pairs)
        except RuntimeError:  # the caller's loop is closed: nobody is waiting for these answers
            pass


@dataclass(slots=True)
class _Request:
    feeds: dict
    future: object  # a Future (submit), an asyncio future of `loop` (run_async) or a _Waiter (run)
    arrival: float
    alone: Optional[str]  # why it cannot join a merged run, or None
    loop: Optional[asyncio.AbstractEventLoop] = None  # run_async's event loop: its answers go through that loop

    def claim(self) -> bool:
        """Whether its caller still waits (then the request runs): a cancelled asyncio await drops it."""
        return not self.future.cancelled() if self.loop is not None else self.future.set_running_or_notify_cancel()

    def answer(self, outcome):
        """Its result (a list of outputs) or its exception, to its caller (unless answered already)."""
        if self.loop is not None:
            _answer_loops([(self, outcome)])
        elif not self.future.done():
            if isinstance(outcome, BaseException):
                self.future.set_exception(outcome)
            else:
                self.future.set_result(outcome)


class _Forest:
    """A prepared forest handed to a worker's runner, and what its run gave (`done` set under the session's
    condition)."""
    __slots__ = ("batch", "forest", "counts", "results", "error", "done")

    def __init__(self, batch: list, forest, counts):
        self.batch, self.forest, self.counts = batch, forest, counts
        self.results = self.error = None
        self.done = False


BatchingStats = ForestStats  # what `BatchingSession.stats` holds


class BatchingSession:
    """Serves one converted model to many concurrent callers, merging their trees into forests.

    `path`: a converted model (cortex-convert). `max_trees`: most requests in one forest. `max_delay_ms`: longest a
    request waits for others before its forest runs. `device`: as `cortex.InferenceSession` ("cpu", "cuda",
    "cuda:N"). `max_queue`: most requests waiting (then `QueueFull`). `workers`: forests in flight at once (more
    add contention for the GIL: docs/serving.md, seventh and eighth passes). `runners`: threads of each worker
    that run its forests, so that it merges the next batch and answers the last one's callers while a forest runs
    (0: the worker runs them itself); with two, the next forest starts as soon as it is merged, while the last one
    still runs (measured on an H100: no better than one). Default: 1 on a GPU (the run is device time), 0 on the
    CPU (the kernel already uses every core; another thread only adds hand-offs). Outputs that do not split by rows
    (a mean over the tree's states) are computed per request after the forest (cortex/serving/tail.py:
    `plan.tail`, the sessions in `tail`). A model whose merge is not proven raises `NotMergeable` with the reason,
    unless `allow_unmerged=True` (then every request runs alone, in order).
    `pinned_outputs`: on a GPU, forests' outputs copied into pinned (page-locked) host memory, a faster copy
    (False: ONNX Runtime's own pageable buffers). `sess_options` and `trust` go to `cortex.InferenceSession`."""

    def __init__(self, path, max_trees: int = 32, max_delay_ms: float = 2.0, device: str = "cpu", *,
                 max_queue: int = 1024, workers: int = 1, runners: Optional[int] = None,
                 allow_unmerged: bool = False, pinned_outputs: bool = True, sess_options=None, trust=None):
        if not isinstance(max_trees, int) or max_trees < 1:
            raise ValueError(f"max_trees must be an integer >= 1, got {max_trees!r}")
        if not max_delay_ms >= 0:
            raise ValueError(f"max_delay_ms must be >= 0, got {max_delay_ms!r}")
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
        runners = (0 if device == "cpu" else 1) if runners is None else runners
        if not isinstance(runners, int) or runners < 0:
            raise ValueError(f"runners must be an integer >= 0, got {runners!r}")
        if not isinstance(max_queue, int) or max_queue < 1:
            raise ValueError(f"max_queue must be an integer >= 1, got {max_queue!r}")
        self.plan = plan_for(path)
        if not self.plan.mergeable and not allow_unmerged:
            raise NotMergeable(f"{path}: requests cannot be merged: {self.plan.reason} (BatchingSession(..., "
                               "allow_unmerged=True) serves it one request at a time)")
        # the model (a copy that takes its window inputs, where it has them: windows.py)
        self.session = merge_session(self.plan, path, sess_options, trust, device)
        # the body and tail sessions of a plan with outputs computed per request after the forest (tail.py), or None
        self.tail = tail_sessions(self.plan, path, sess_options, trust, device)
        self._windows = takes_windows(self.plan, self.session if self.tail is None else self.tail.body)
        self._pinned = PinnedOutputs.of(self.plan, self.session, device) if pinned_outputs else None
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.max_trees, self.max_delay = max_trees, max_delay_ms / 1000.0
        self.max_queue, self.workers = max_queue, workers
        self.stats = BatchingStats()
        self._stats_lock = threading.Lock()
        self._queue = collections.deque()
        self._lock = threading.RLock()  # re-entered: _batch_while_running calls _ready_batch
        self._cond = threading.Condition(self._lock)
        self._closing = False
        self._last_batch = max_trees  # requests the last batch took: how many to expect (the first: a full one)
        # each waiting worker's threshold: the queued requests that make its batch ready (None: it waits for its
        # forest to end, not for requests); enqueue wakes the workers once the smallest is reached
        self._waiting = {}
        # that smallest threshold; _NONE_WAITING while no worker waits for requests: a worker decides to wait
        # under the lock enqueue holds (it sees the queue first), so a notify then would wake nobody
        self._wanted = _NONE_WAITING
        self.runners = runners
        # each worker's runners' queues of forests (none: the worker runs its forests itself)
        inboxes = [[queue.SimpleQueue() for _ in range(runners)] for _ in range(workers)]
        self._runners = [threading.Thread(target=self._run_forever, args=(inbox,), name=f"cortex-runner-{k}-{j}",
                                          daemon=True)
                         for k, mine in enumerate(inboxes) for j, inbox in enumerate(mine)]
        self._workers = [threading.Thread(target=self._serve_forever, args=(mine,), name=f"cortex-batching-{k}",
                                          daemon=True) for k, mine in enumerate(inboxes)]
        for thread in self._runners + self._workers:
            thread.start()

    # ---- callers ------------------------------------------------------------------------------------------
    def submit(self, feeds: dict) -> Future:
        """Queues one request; its Future resolves to the outputs (a list, in the model's output order) or to the
        request's own error. Raises at once: FeedError (inputs missing or unknown), QueueFull, SessionClosed. The
        arrays are read when the forest runs: leave them unchanged until the result arrives."""
        return self._enqueue(feeds, Future())

    def _enqueue(self, feeds, future, loop=None):
        if type(feeds) is not dict and not isinstance(feeds, dict):
            raise TypeError(f"feeds must be a dict of input name -> numpy array, got {type(feeds).__name__}")
        alone = check_request(self.plan, feeds) if self.plan.mergeable else "the model is not mergeable"
        request = _Request(dict(feeds), future, time.monotonic(), alone, loop)
        with self._lock:  # the condition's lock, taken directly (Condition.__enter__ is a Python call per request)
            if self._closing:
                raise SessionClosed("this BatchingSession is closed")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are waiting (max_queue={self.max_queue}); this one was "
                                "not queued: retry later or shed load")
            self._queue.append(request)
            if len(self._queue) >= self._wanted:  # wake a worker only when its batch is ready, not per request
                self._wake()
        return request.future

    def run(self, feeds: dict, timeout: Optional[float] = None) -> list:
        """The outputs of one request (blocking); its own error if it fails; TimeoutError after `timeout` s."""
        return self._enqueue(feeds, _Waiter()).result(timeout)

    def run_async(self, feeds: dict) -> asyncio.Future:
        """`run` for asyncio: `await session.run_async(feeds)` waits without blocking the event loop (cancelling the
        await drops a request not yet run). It returns a future of the running loop, not a coroutine (one object less
        per request); what is known at once (FeedError, QueueFull, SessionClosed) raises from the call itself."""
        loop = asyncio.get_running_loop()
        return self._enqueue(feeds, loop.create_future(), loop)

    def close(self, cancel_pending: bool = False, timeout: Optional[float] = None) -> bool:
        """Takes no new requests; serves those queued (or, with `cancel_pending`, fails them with SessionClosed);
        returns when the workers have stopped (True), or after `timeout` s with a forest still running (False: the
        workers finish it and its callers get their answers; call close again to wait for them)."""
        with self._cond:
            self._closing = True
            dropped = list(self._queue) if cancel_pending else []
            if cancel_pending:
                self._queue.clear()
            self._cond.notify_all()
        for request in dropped:
            if request.claim():
                request.answer(SessionClosed("the BatchingSession was closed before this request ran"))
        deadline = None if timeout is None else time.monotonic() + timeout
        threads = self._workers + self._runners  # a worker stops its runners when it stops
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads if t is not threading.current_thread())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- the worker ---------------------------------------------------------------------------------------
    def _next_batch(self) -> list:
        """The next requests to run together. It goes when `max_trees` wait, when as many wait as the last batch
        answered (in a closed loop those callers come back at once; a single caller never waits), or when the
        oldest has waited `max_delay_ms`."""
        with self._cond:
            while True:
                while not self._queue and not self._closing:
                    self._wait_for(1)
                if not self._queue:
                    return []  # closing, and nothing left to serve
                deadline = self._queue[0].arrival + self.max_delay
                expected = min(self.max_trees, self._last_batch)
                while len(self._queue) < expected and not self._closing:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._wait_for(expected, remaining)
                if self._queue:  # else another worker took them while this one waited: wait again
                    return self._take()

    def _ready_batch(self) -> list:
        """The next batch if `_next_batch` would take it now, without waiting; else []."""
        with self._cond:
            if not self._queue:
                return []
            if len(self._queue) < min(self.max_trees, self._last_batch) and not self._closing and \
                    time.monotonic() < self._queue[0].arrival + self.max_delay:
                return []
            return self._take()

    def _take(self) -> list:
        """The first max_trees queued requests (the condition held)."""
        count = min(self.max_trees, len(self._queue))
        self._last_batch = count
        # more requests than one batch are waiting: another worker may start on them now
        if len(self._queue) > count:
            self._wake()
        return [self._queue.popleft() for _ in range(count)]

    def _wait_for(self, threshold: int, timeout: Optional[float] = None):
        """Waits (the condition held) until woken: by `threshold` requests queued (enqueue wakes the waiting workers
        when the smallest threshold among them is reached), a forest's end, closing, or `timeout`."""
        me = threading.get_ident()
        self._waiting[me] = threshold
        self._wanted = min(self._waiting.values())
        try:
            self._cond.wait(timeout)
        finally:
            del self._waiting[me]
            self._wanted = min(self._waiting.values(), default=_NONE_WAITING)

    def _wake(self):
        """Wakes the waiting workers (the condition held): one if there is one worker; else all, since a plain
        notify may wake one whose own threshold is not reached while another's is."""
        if len(self._workers) > 1:
            self._cond.notify_all()
        else:
            self._cond.notify()

    def _batch_while_running(self, running: _Forest) -> list:
        """The next batch, taken while `running` runs: as soon as a full one waits (as many as the last batch took),
        so it is merged before that forest ends; else, once it has ended, what `_ready_batch` would take."""
        with self._cond:
            expected = min(self.max_trees, self._last_batch)
            while not running.done and len(self._queue) < expected and not self._closing:
                self._wait_for(expected)
            if len(self._queue) >= expected or (self._closing and self._queue):
                return self._take()
            return self._ready_batch()

    def _serve_forever(self, inboxes: list):
        """Forest after forest. With runner threads (`inboxes`: their queues), while a forest runs this thread
        merges the next batch once it fills and hands it over at once, so that it starts the moment the last one
        ends (one runner) or at once (two: the device queues it behind the last); then it splits and answers the
        last one's callers (their event loop then takes the GIL for their next requests while the device works).
        Without one, it runs each forest itself, then merges the batch already waiting (if any) before answering, so
        that the next run overlaps the callers' Python rather than the next merge. Per worker, one forest runs (or
        two, with two runners) and at most one more waits merged; callers are answered in the order of their
        forests."""
        running = None  # the forest being run (or, without a runner, about to be)
        turn = 0  # the runner the next forest goes to, in turn: the last one's is still busy with it
        try:
            while True:
                inbox = inboxes[turn % len(inboxes)] if inboxes else None
                if running is None:
                    batch = self._next_batch()
                    if not batch:
                        return
                    running = self._hand_over(inbox, self._prepare(batch))
                    turn += running is not None
                    continue
                if inbox is None:
                    self._execute(running)
                following = self._batch_while_running(running)
                following = self._hand_over(inbox, self._prepare(following)) if following else None
                turn += following is not None
                with self._cond:
                    while not running.done:
                        self._cond.wait()
                self._finish(running)
                running = following
        finally:
            for inbox in inboxes:
                inbox.put(None)  # a runner stops after the forests handed to it

    def _hand_over(self, inbox: Optional[queue.SimpleQueue], prepared) -> Optional[_Forest]:
        """The prepared forest (requests, forest, stats), queued for the worker's runner if it has one; None for
        none."""
        if prepared is None:
            return None
        forest = _Forest(*prepared)
        if inbox is not None:
            inbox.put(forest)
        return forest

    def _run_forever(self, inbox: queue.SimpleQueue):
        """One of a worker's runners: the forests handed to it, one at a time, in order (the session's run releases
        the GIL)."""
        while True:
            forest = inbox.get()
            if forest is None:
                return
            self._execute(forest)

    def _execute(self, forest: _Forest):
        try:
            forest.results = self._run(forest.forest, forest.counts)
        except BaseException as e:  # noqa: BLE001 - a bug here must not leave callers waiting forever
            forest.error = e
        with self._cond:
            forest.done = True
            self._cond.notify_all()

    def _finish(self, forest: _Forest):
        """A forest's callers get their answers (or the internal error that stopped it)."""
        try:
            if forest.error is not None:
                raise forest.error
            results = self._results(forest.forest, forest.counts, forest.results)
            with self._stats_lock:  # before the answers: a caller that reads the stats after its answer sees its batch
                self.stats.add(forest.counts)
            self._answer(forest.batch, results)
        except BaseException as e:  # noqa: BLE001 - a bug here must not leave callers waiting forever
            self._fail(forest.batch, e)

    def _prepare(self, batch: list):
        """(requests, prepared forest, its stats) for the requests of `batch` whose callers still wait; None when
        none does (or preparing failed: its callers then have their error)."""
        batch = [r for r in batch if r.claim()]  # callers may have given up
        if not batch:
            return None
        counts = BatchingStats()
        try:
            return batch, prepare_forest(self.plan, [r.feeds for r in batch], [r.alone for r in batch], counts,
                                         self._windows), counts
        except BaseException as e:  # noqa: BLE001
            self._fail(batch, e)
            return None

    def _run(self, forest, counts: BatchingStats):
        """The merged forest's run (its outputs, or its exception), in the runner thread if there is one."""
        return run_merged(self.session, forest, counts, self._pinned, self.tail)

    def _results(self, forest, counts: BatchingStats, ran) -> list:
        """In the worker: each request's outputs or error (the merged outputs split, requests that cannot join run
        alone)."""
        return finish_prepared(self.plan, self.session, forest, ran, counts, self.tail)

    @staticmethod
    def _fail(batch: list, error: BaseException):
        for r in batch:
            r.answer(RuntimeError(f"internal error in the batching session: {type(error).__name__}: {error}"))

    def _answer(self, batch: list, results: list):
        """Each request of `batch` gets its result (a list of outputs) or its exception."""
        answering = time.perf_counter()
        by_loop = {}  # run_async's requests, answered together below: one wake-up of each loop
        for request, result in zip(batch, results):
            loop = request.loop
            if loop is None:
                request.answer(result)
                continue
            pairs = by_loop.get(loop)
            if pairs is None:
                pairs = by_loop[loop] = []
            pairs.append((request.future, result))
        _wake_loops(by_loop)
        with self._stats_lock:
            self.stats.answering_s += time.perf_counter() - answering

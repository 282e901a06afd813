"""cortex.BatchingSession: concurrent callers (threads, asyncio) get their own results, bit for bit what a plain
session gives them; a bad request fails alone (never a neighbour's wrong answer); backpressure, closing and
errors are clear."""
from __future__ import annotations

import asyncio
import re
import threading
import time

import numpy as np
import onnx
import pytest

import cortex
from cortex.examples import structures as st
from cortex.examples import treelstm
from cortex.serving import FeedError, NotMergeable, QueueFull, SessionClosed
from serving_models import whole_tree_input

HIDDEN = 8
VOCAB = 50


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The TreeLSTM converted in its TreeRec and Loop forms, its Loop form with a mean over every node's state (the
    mean per request after the forest), and its Loop form reading its token ids through their minimum over the
    tree (the recursion reads the whole request: not mergeable)."""
    folder = tmp_path_factory.mktemp("batching")
    params = treelstm.make_params(hidden=HIDDEN, embed_dim=6, vocab=VOCAB)
    paths = {}
    for name, model in [("treerec", treelstm.build_treerec(params)), ("loop", treelstm.build_loop(params)),
                        ("mean", treelstm.with_mean_head(treelstm.build_loop(params), HIDDEN)),
                        ("mixing", whole_tree_input(treelstm.build_loop(params), "words"))]:
        onnx.save(model, str(folder / f"{name}.onnx"))
        cortex.convert(str(folder / f"{name}.onnx"), str(folder / f"{name}.cortex.onnx"), strict=True)
        paths[name] = str(folder / f"{name}.cortex.onnx")
    return paths


def _trees(count, seed=0):
    sst = st.sst_dir_default()
    if sst:
        return st.read_sst(sst, split="test", vocab_size=VOCAB, limit=count)
    return st.sst_like_trees(count, np.random.default_rng(seed), VOCAB)


def _feeds(form, tree):
    return dict(children=tree.children, words=tree.words) if form == "treerec" else tree.arrays()


def _same(got, want):
    return len(got) == len(want) and all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(got, want))


# the name ONNX Runtime gives the Cortex node differs between sessions (a server's session of a model with window
# inputs is made from a copy of it: windows.py); the message is the same
_NODE_NAME = re.compile(r"CortexExecutionProvider_\d+")


def _outcome(session, feeds):
    """What a plain session gives: ('ok', outputs) or ('error', message)."""
    try:
        return "ok", session.run(None, feeds)
    except Exception as e:  # noqa: BLE001
        return "error", _NODE_NAME.sub("", str(e))


def _answer(future):
    try:
        return "ok", future.result(timeout=60)
    except Exception as e:  # noqa: BLE001
        return "error", _NODE_NAME.sub("", str(e))


@pytest.mark.parametrize("form,workers,runners", [("treerec", 1, 0), ("loop", 1, 0), ("treerec", 2, 0),
                                                  ("treerec", 1, 1), ("loop", 2, 1), ("treerec", 1, 2), ("loop", 2, 2)])
def test_threads_get_their_own_bits(models, form, workers, runners):
    path = models[form]
    plain = cortex.InferenceSession(path)
    feeds = [_feeds(form, t) for t in _trees(48)]
    want = [plain.run(None, f) for f in feeds]
    got = [None] * len(feeds)
    with cortex.BatchingSession(path, max_trees=16, max_delay_ms=20, workers=workers, runners=runners) as session:
        assert session.workers == workers and len(session._workers) == workers
        assert len(session._runners) == workers * runners
        barrier = threading.Barrier(len(feeds))

        def client(k):
            barrier.wait()
            got[k] = session.run(feeds[k], timeout=60)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(len(feeds))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        stats = session.stats
    assert all(_same(g, w) for g, w in zip(got, want))
    assert stats.requests == len(feeds) and stats.merged_requests > 0 and stats.largest_batch > 1
    assert stats.largest_batch <= 16 and stats.fallbacks == 0
    # where the worker's time went: forests built, the session's runs, outputs cut back, callers answered
    assert stats.merging_s > 0 and stats.running_s > 0 and stats.splitting_s > 0 and stats.answering_s > 0


@pytest.mark.parametrize("pinned", [True, False])
def test_threads_on_the_gpu(models, tmp_path, pinned):
    """On a GPU: concurrent callers' answers within 1e-6 of plain runs, the forests' outputs through pinned host
    memory (the default) or ONNX Runtime's own buffers (pinned_outputs=False)."""
    from gpu import gpu_skip_reason
    reason = gpu_skip_reason()
    if reason:
        pytest.skip(reason)
    params = treelstm.make_params(hidden=HIDDEN, embed_dim=6, vocab=VOCAB)
    onnx.save(treelstm.build_treerec(params), str(tmp_path / "m.onnx"))
    path = str(tmp_path / "m.cortex.onnx")
    cortex.convert(str(tmp_path / "m.onnx"), path, strict=True, target="cuda")
    plain = cortex.InferenceSession(path, device="cuda")
    feeds = [_feeds("treerec", t) for t in _trees(40)]
    want = [plain.run(None, f) for f in feeds]
    with cortex.BatchingSession(path, max_trees=16, max_delay_ms=20, device="cuda", pinned_outputs=pinned) as session:
        assert (session._pinned is not None) == pinned
        futures = [session.submit(f) for f in feeds]
        got = [f.result(timeout=60) for f in futures]
        stats = session.stats
    for g, w in zip(got, want):
        assert all(a.shape == b.shape and np.allclose(a, b, rtol=0.0, atol=1e-6) for a, b in zip(g, w))
    assert stats.merged_requests > 0 and stats.fallbacks == 0


def test_a_mean_head_served_on_the_gpu(tmp_path):
    """On a GPU, a model whose mean over every node runs per request after the forest: concurrent callers' answers
    within 1e-6 of plain runs."""
    from gpu import gpu_skip_reason
    reason = gpu_skip_reason()
    if reason:
        pytest.skip(reason)
    params = treelstm.make_params(hidden=HIDDEN, embed_dim=6, vocab=VOCAB)
    onnx.save(treelstm.with_mean_head(treelstm.build_treerec(params), HIDDEN), str(tmp_path / "m.onnx"))
    path = str(tmp_path / "m.cortex.onnx")
    cortex.convert(str(tmp_path / "m.onnx"), path, strict=True, target="cuda")
    plain = cortex.InferenceSession(path, device="cuda")
    feeds = [_feeds("treerec", t) for t in _trees(40)]
    want = [plain.run(None, f) for f in feeds]
    with cortex.BatchingSession(path, max_trees=16, max_delay_ms=20, device="cuda") as session:
        assert session.tail is not None
        got = [f.result(timeout=60) for f in [session.submit(f) for f in feeds]]
        stats = session.stats
    for g, w in zip(got, want):
        assert all(a.shape == b.shape and np.allclose(a, b, rtol=0.0, atol=1e-6) for a, b in zip(g, w))
    assert stats.merged_requests > 0 and stats.fallbacks == 0


def test_asyncio_callers(models):
    path = models["treerec"]
    plain = cortex.InferenceSession(path)
    feeds = [_feeds("treerec", t) for t in _trees(20)]

    async def main(session):
        return await asyncio.gather(*(session.run_async(f) for f in feeds))

    with cortex.BatchingSession(path, max_trees=8, max_delay_ms=20) as session:
        assert session.workers == 1  # the default: one worker overlaps a forest's run with the last one's callers
        got = asyncio.run(main(session))
        assert session.stats.batches >= 1
    assert all(_same(g, plain.run(None, f)) for g, f in zip(got, feeds))


def _bad_treerec(good):
    """Requests a plain session refuses or answers oddly, each next to good neighbours."""
    n = len(good["words"])
    children = good["children"]
    out_of_range = children.copy()
    out_of_range[np.flatnonzero(children[:, 0] >= 0)[0], 0] = n + 3  # a child past the tree: a neighbour's node
    cycle = dict(children=np.array([[1, -1], [0, -1]], np.int64), words=np.array([1, 2], np.int64))
    below = children.copy()
    below[np.flatnonzero(children[:, 1] >= 0)[0], 1] = -2  # not a sentinel
    big_word = dict(good, words=np.where(good["words"] > 0, VOCAB + 7, 0).astype(np.int64))  # past the embedding
    int64_min = children.copy()
    int64_min[np.flatnonzero(children[:, 0] >= 0)[-1], 0] = np.iinfo(np.int64).min
    return {"out_of_range": dict(good, children=out_of_range), "cycle": cycle, "minus_two": dict(good, children=below),
            "word": big_word, "int32": dict(good, children=children.astype(np.int32)),
            "short_words": dict(good, words=good["words"][:-1]), "int64_min": dict(good, children=int64_min),
            "huge_word": dict(good, words=np.full_like(good["words"], np.iinfo(np.int64).max)),
            **_odd_layouts(good, "children")}


def _odd_layouts(good, ids):
    """Valid requests in the shapes numpy hands out: a strided view, Fortran order, read-only memory, a list, none
    at all."""
    strided = np.repeat(good[ids], 2, axis=0)[::2]  # every other row of a copy: not contiguous
    read_only = good[ids].copy()
    read_only.flags.writeable = False
    return {"strided": dict(good, **{ids: strided}), "fortran": dict(good, **{ids: np.asfortranarray(good[ids])}),
            "read_only": dict(good, **{ids: read_only}), "list_words": dict(good, words=good["words"].tolist()),
            "empty": {k: v[:0] for k, v in good.items()}}


def _bad_loop(good):
    n = len(good["words"])
    internal = np.flatnonzero(good["left"] >= 0)
    wrapped = good["left"].copy()
    wrapped[internal[0]] = -1 - n + int(good["left"][internal[0]])  # a negative id Gather wraps to a real child
    past = good["right"].copy()
    past[internal[-1]] = n  # one past the end
    order = good["order"]
    return {"wrap": dict(good, left=wrapped), "past_end": dict(good, right=past),
            "negative_order": dict(good, order=order - n),  # Gather wraps every position: valid, not mergeable
            "repeated": dict(good, order=np.concatenate([order, order[:3]])),  # exact sequential semantics
            "short_order": dict(good, order=order[:-2]), "order_minus_one": dict(good, order=np.append(order, -1)),
            "negative_word": dict(good, words=-good["words"] - 1), **_odd_layouts(good, "left")}


@pytest.mark.parametrize("form", ["treerec", "loop"])
def test_a_bad_request_fails_alone(models, form):
    """Each odd request gets exactly what a plain session gives it (results or its own error); its neighbours in
    the same batch get their own bits."""
    path = models[form]
    plain = cortex.InferenceSession(path)
    trees = _trees(16)
    good = [_feeds(form, t) for t in trees]
    bad = (_bad_treerec if form == "treerec" else _bad_loop)(good[0])
    errors = []
    with cortex.BatchingSession(path, max_trees=3, max_delay_ms=500) as session:
        for k, (name, feeds) in enumerate(bad.items()):  # one batch each: the bad request between two good ones
            group = [("good", good[(2 * k + 1) % len(good)]), (name, feeds), ("good", good[(2 * k + 2) % len(good)])]
            answers = [_answer(f) for f in [session.submit(f) for _, f in group]]
            for (who, f), (kind, value) in zip(group, answers):
                want_kind, want = _outcome(plain, f)
                assert kind == want_kind, f"{who} next to {name}: {value}"
                assert _same(value, want) if kind == "ok" else value == want, f"{who} next to {name}"
                if kind == "error":
                    errors.append(who)
        assert session.stats.batches >= 1
    assert "good" not in errors and len(errors) >= (3 if form == "treerec" else 1)


def test_missing_or_unknown_inputs_are_refused_at_once(models):
    feeds = _feeds("treerec", _trees(1)[0])
    with cortex.BatchingSession(models["treerec"]) as session:
        with pytest.raises(FeedError, match="missing input.*'words'"):
            session.submit({"children": feeds["children"]})
        with pytest.raises(FeedError, match="unknown input.*'extra'"):
            session.submit(dict(feeds, extra=np.zeros(1)))
        with pytest.raises(TypeError, match="feeds must be a dict"):
            session.submit([feeds])


def test_a_full_queue_refuses_and_close_serves_what_is_queued(models):
    feeds = _feeds("treerec", _trees(1)[0])
    session = cortex.BatchingSession(models["treerec"], max_trees=8, max_delay_ms=60_000, max_queue=2)
    first, second = session.submit(feeds), session.submit(feeds)  # the worker waits for more (or the delay)
    with pytest.raises(QueueFull, match="max_queue=2"):
        session.submit(feeds)
    started = time.monotonic()
    session.close()  # closing ends the wait: the two queued requests are served
    assert time.monotonic() - started < 30
    assert _same(first.result(1), second.result(1))
    with pytest.raises(SessionClosed):
        session.submit(feeds)


def test_close_can_cancel_what_is_queued(models):
    feeds = _feeds("treerec", _trees(1)[0])
    session = cortex.BatchingSession(models["treerec"], max_trees=8, max_delay_ms=60_000)
    pending = session.submit(feeds)
    session.close(cancel_pending=True)
    with pytest.raises(SessionClosed, match="closed before this request ran"):
        pending.result(5)


def test_a_model_that_mixes_trees_is_refused_unless_asked(models):
    path = models["mixing"]
    with pytest.raises(NotMergeable, match="input 'words_clamped'.*reduces over all rows.*allow_unmerged=True"):
        cortex.BatchingSession(path)
    tree = _trees(1)[0].arrays()
    plain = cortex.InferenceSession(path)
    with cortex.BatchingSession(path, allow_unmerged=True) as session:
        futures = [session.submit(tree) for _ in range(4)]
        assert all(_same(f.result(30), plain.run(None, tree)) for f in futures)
        assert session.stats.batches == 0 and session.stats.alone == 4


def test_a_mean_over_the_tree_is_answered_per_request_from_the_forest(models):
    """The recursion of every caller runs in one forest; each caller's mean over its own tree's states is computed
    after it, per request: the same bits as its own run, for every output."""
    path = models["mean"]
    trees = [t.arrays() for t in _trees(12, seed=4)]
    plain = cortex.InferenceSession(path)
    with cortex.BatchingSession(path, max_trees=12, max_delay_ms=50) as session:
        assert session.plan.tail is not None
        futures = [session.submit(tree) for tree in trees]
        assert all(_same(f.result(30), plain.run(None, tree)) for f, tree in zip(futures, trees))
        assert session.stats.merged_requests >= 2 and session.stats.fallbacks == 0


@pytest.mark.parametrize("kwargs,message", [({"max_trees": 0}, "max_trees"), ({"max_delay_ms": -1}, "max_delay_ms"),
                                            ({"max_queue": 0}, "max_queue"), ({"workers": 0}, "workers")])
def test_bad_settings_are_clear(models, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cortex.BatchingSession(models["treerec"], **kwargs)


def test_run_times_out_clearly(models):
    feeds = _feeds("treerec", _trees(1)[0])
    session = cortex.BatchingSession(models["treerec"], max_trees=8, max_delay_ms=60_000)
    with pytest.raises(TimeoutError, match="no answer within 0.2 s"):
        session.run(feeds, timeout=0.2)  # the worker waits for a full first batch
    session.close()


def test_a_request_alone_waits_at_most_about_the_delay(models):
    feeds = _feeds("treerec", _trees(1)[0])
    with cortex.BatchingSession(models["treerec"], max_trees=64, max_delay_ms=30) as session:
        session.run(feeds)  # warm
        started = time.monotonic()
        session.run(feeds, timeout=10)
        assert time.monotonic() - started < 5  # the delay, not max_trees, ends the wait


class _Stalled:
    """A session whose runs wait for `release` (a kernel call that takes long), for bounded-wait tests."""

    def __init__(self, session):
        self.session, self.release, self.started = session, threading.Event(), threading.Event()

    def run(self, names, feeds):
        self.started.set()
        assert self.release.wait(60), "never released"
        return self.session.run(names, feeds)


def test_close_with_a_forest_running_is_bounded(models):
    """close(timeout) returns within its bound while a forest runs; the running requests still get their answers,
    the queued ones too, and nothing waits forever."""
    path = models["treerec"]
    plain = cortex.InferenceSession(path)
    feeds = [_feeds("treerec", t) for t in _trees(4)]
    session = cortex.BatchingSession(path, max_trees=2, max_delay_ms=0)
    stalled = _Stalled(session.session)
    session.session = stalled
    first = session.submit(feeds[0])
    assert stalled.started.wait(30)
    queued = [session.submit(f) for f in feeds[1:]]
    started = time.monotonic()
    assert session.close(timeout=0.2) is False
    assert time.monotonic() - started < 5
    with pytest.raises(SessionClosed):
        session.submit(feeds[0])
    stalled.release.set()
    assert session.close(timeout=60) is True
    for f, future in zip(feeds, [first] + queued):
        assert _same(future.result(1), plain.run(None, f))


def test_asyncio_cancel_timeout_and_close(models):
    """An awaiting caller that gives up (wait_for) or is cancelled drops only its own request; close with
    cancel_pending fails the awaiting callers with SessionClosed instead of leaving them waiting."""
    path = models["treerec"]
    plain = cortex.InferenceSession(path)
    feeds = [_feeds("treerec", t) for t in _trees(6)]

    async def scenario(session):
        with pytest.raises(asyncio.TimeoutError):  # the worker waits for a full first batch (60 s delay)
            await asyncio.wait_for(session.run_async(feeds[0]), 0.2)
        doomed = asyncio.ensure_future(session.run_async(feeds[1]))
        await asyncio.sleep(0.05)
        doomed.cancel()
        waiting = [asyncio.ensure_future(session.run_async(f)) for f in feeds[2:4]]
        await asyncio.sleep(0.05)
        await asyncio.get_running_loop().run_in_executor(None, lambda: session.close(cancel_pending=True, timeout=30))
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        assert all(isinstance(o, SessionClosed) for o in outcomes), outcomes
        assert doomed.cancelled()

    session = cortex.BatchingSession(path, max_trees=16, max_delay_ms=60_000)
    asyncio.run(asyncio.wait_for(scenario(session), 60))

    async def bad_and_good(session):
        bad = dict(feeds[0], words=feeds[0]["words"][:-1])  # fails in its own run
        return await asyncio.gather(*(session.run_async(f) for f in [feeds[4], bad, feeds[5]]),
                                    return_exceptions=True)

    with cortex.BatchingSession(path, max_trees=3, max_delay_ms=200) as session:
        good_a, bad, good_b = asyncio.run(asyncio.wait_for(bad_and_good(session), 60))
    assert isinstance(bad, Exception)
    assert _same(good_a, plain.run(None, feeds[4])) and _same(good_b, plain.run(None, feeds[5]))


def test_every_worker_keeps_serving(models):
    """Several workers: one may take the batch another was collecting; that one must go back to waiting, not stop
    (a worker that stopped would leave fewer forests in flight, and none once all had)."""
    trees = _trees(8)
    with cortex.BatchingSession(models["treerec"], max_trees=2, max_delay_ms=1, workers=3) as session:
        for burst in range(40):
            futures = [session.submit(_feeds("treerec", t)) for t in trees[:1 + burst % 7]]
            assert all(_answer(f)[0] == "ok" for f in futures)
            time.sleep(0.003)  # past every worker's deadline: an emptied queue is what a worker then finds
        alive = [w.is_alive() for w in session._workers]
    assert all(alive), f"workers stopped while the session was open: {alive}"


class _StallFirst(_Stalled):
    """A session whose first run waits for `release`; the runs after it go straight through."""

    def __init__(self, session):
        super().__init__(session)
        self.calls, self.lock = 0, threading.Lock()

    def run(self, names, feeds):
        with self.lock:
            self.calls += 1
            first = self.calls == 1
        return super().run(names, feeds) if first else self.session.run(names, feeds)


@pytest.mark.parametrize("runners", [0, 1])
def test_an_idle_worker_serves_while_another_waits_for_a_full_batch(models, runners):
    """Two workers: while one runs a long forest and waits for a full next batch, a request that arrives alone is
    served by the idle one within about the delay; it must not wait for the busy worker's forest to end (each
    waiting worker's own threshold wakes it, not the last one set)."""
    path = models["treerec"]
    plain = cortex.InferenceSession(path)
    feeds = [_feeds("treerec", t) for t in _trees(5)]
    session = cortex.BatchingSession(path, max_trees=4, max_delay_ms=100, workers=2, runners=runners)
    stalled = _StallFirst(session.session)
    session.session = stalled
    try:
        first = [session.submit(f) for f in feeds[:4]]  # a full batch: one worker takes it and stalls in its run
        assert stalled.started.wait(30)
        time.sleep(0.3)  # that worker now waits for a full next batch; the other for any request
        alone = session.run(feeds[4], timeout=20)
        assert not any(f.done() for f in first)  # served while the first forest still ran
    finally:
        stalled.release.set()
        session.close()
    assert _same(alone, plain.run(None, feeds[4]))
    assert all(_same(f.result(1), plain.run(None, x)) for f, x in zip(first, feeds))


def test_callers_of_several_event_loops_share_forests(models):
    """Coroutines of two event loops (two threads) and a blocking caller in one forest: each loop gets its own
    answers (the worker settles a forest's asyncio callers with one call into each loop)."""
    path = models["treerec"]
    plain = cortex.InferenceSession(path)
    feeds = [_feeds("treerec", t) for t in _trees(13)]
    got = {}

    def loop_thread(name, part):
        async def main():
            return await asyncio.gather(*(session.run_async(f) for f in part))
        got[name] = asyncio.run(main())

    with cortex.BatchingSession(path, max_trees=13, max_delay_ms=500) as session:
        threads = [threading.Thread(target=loop_thread, args=(k, feeds[6 * k:6 * k + 6])) for k in range(2)]
        for t in threads:
            t.start()
        alone = session.run(feeds[12], timeout=60)
        for t in threads:
            t.join(60)
        assert session.stats.largest_batch > 6  # the loops' callers met in a forest
    answers = got[0] + got[1] + [alone]
    assert all(_same(a, plain.run(None, f)) for a, f in zip(answers, feeds))


class _Overlapping(cortex.BatchingSession):
    """A BatchingSession whose forests' runs count how many run at once; the first waits (up to 10 s) for a second
    to start."""

    def __init__(self, *args, **kwargs):
        self.lock, self.both = threading.Lock(), threading.Event()
        self.active = self.most = 0
        super().__init__(*args, **kwargs)

    def _run(self, forest, counts):
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
            if self.active == 2:
                self.both.set()
        self.both.wait(10)
        try:
            return super()._run(forest, counts)
        finally:
            with self.lock:
                self.active -= 1


def test_two_runners_run_the_next_forest_while_the_last_runs(models):
    """With two runners the worker hands the next forest over while the last still runs, and both run at once;
    every caller still gets its own answer, each forest's callers after the forest before it."""
    plain = cortex.InferenceSession(models["treerec"])
    feeds = [_feeds("treerec", t) for t in _trees(12)]
    with _Overlapping(models["treerec"], max_trees=4, max_delay_ms=500, runners=2) as session:
        answered = []
        futures = [session.submit(f) for f in feeds]
        for k, future in enumerate(futures):
            future.add_done_callback(lambda _, k=k: answered.append(k))
        got = [f.result(timeout=60) for f in futures]
        assert session.most == 2 and session.stats.batches == 3
    assert all(_same(g, plain.run(None, f)) for g, f in zip(got, feeds))
    assert [k // 4 for k in answered] == sorted(k // 4 for k in answered)  # forest by forest, in order


def test_runners_must_be_a_count(models):
    with pytest.raises(ValueError, match="runners must be an integer >= 0"):
        cortex.BatchingSession(models["treerec"], runners=-1)


class _Recorded(cortex.BatchingSession):
    """A BatchingSession that logs when each batch is prepared, handed to the runner and answered (all in the worker
    thread); its forests' runs wait for `release` (so that the batches after the first are queued by then)."""

    def __init__(self, *args, **kwargs):
        self.events, self.release = [], threading.Event()
        super().__init__(*args, **kwargs)

    def _prepare(self, batch):
        self.events.append(("prepare", len(batch)))
        return super()._prepare(batch)

    def _hand_over(self, inbox, prepared):
        if prepared is not None:
            self.events.append(("hand over", len(prepared[0])))
        return super()._hand_over(inbox, prepared)

    def _run(self, forest, counts):
        self.release.wait(30)
        return super()._run(forest, counts)

    def _answer(self, batch, results):
        self.events.append(("answer", len(batch)))
        super()._answer(batch, results)


@pytest.mark.parametrize("runners", [0, 1, 2])
def test_the_next_waiting_batch_is_merged_before_the_last_is_answered(models, runners):
    """Three full batches queued while the first runs: each following batch is prepared and handed to the runner
    before the one before it is answered (the runner starts it as the last one ends, while the worker answers; its
    callers' loop would otherwise hold the GIL while it merges), and every answer is still right."""
    plain = cortex.InferenceSession(models["treerec"])
    feeds = [_feeds("treerec", t) for t in _trees(12)]
    with _Recorded(models["treerec"], max_trees=4, max_delay_ms=500, runners=runners) as session:
        assert len(session._runners) == runners
        futures = [session.submit(f) for f in feeds]
        session.release.set()
        got = [f.result(timeout=60) for f in futures]
        events = list(session.events)
    assert events == [("prepare", 4), ("hand over", 4), ("prepare", 4), ("hand over", 4), ("answer", 4),
                      ("prepare", 4), ("hand over", 4), ("answer", 4), ("answer", 4)]
    assert all(_same(g, plain.run(None, f)) for g, f in zip(got, feeds))


@pytest.mark.parametrize("runners", [0, 1, 2])
@pytest.mark.parametrize("step", ["_run", "prepare_forest", "_results"])
def test_an_internal_error_fails_its_batch_and_the_worker_goes_on(models, monkeypatch, step, runners):
    """A bug in preparing or running a forest fails that forest's callers with a clear error (never leaves them
    waiting) and the next requests are served."""
    import cortex.serving.batching as batching

    feeds = [_feeds("treerec", t) for t in _trees(6)]
    failed = []

    def broken(*args, **kwargs):
        failed.append(True)
        raise KeyError("broken on purpose")

    with cortex.BatchingSession(models["treerec"], max_trees=3, max_delay_ms=500, runners=runners) as session:
        if step in ("_run", "_results"):
            monkeypatch.setattr(session, step, broken)
        else:
            monkeypatch.setattr(batching, "prepare_forest", broken)
        first = [_answer(f) for f in [session.submit(f) for f in feeds[:3]]]
        monkeypatch.undo()
        second = [_answer(f) for f in [session.submit(f) for f in feeds[3:]]]
    assert failed and all(kind == "error" and "internal error in the batching session: KeyError" in message
                          for kind, message in first)
    assert all(kind == "ok" for kind, _ in second)

"""The Ray Serve example (cortex/serving/ray_app.py), started locally on loopback: `@serve.batch` merges concurrent
requests into forests, each caller gets the bits a plain session gives it (handle and HTTP), a bad request fails
alone. Bounded: every wait has a timeout, Serve and Ray are shut down at the end."""
from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest

import cortex
from cortex.examples import structures as st
from cortex.examples import treelstm

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

TIMEOUT_S = 60
VOCAB = 50


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """The TreeLSTM with a mean over its tree's states beside them: the states split from the forest, the mean
    computed per request after it (cortex/serving/tail.py)."""
    folder = tmp_path_factory.mktemp("ray")
    params = treelstm.make_params(hidden=8, embed_dim=6, vocab=VOCAB)
    onnx.save(treelstm.with_mean_head(treelstm.build_treerec(params), 8), str(folder / "tl.onnx"))
    cortex.convert(str(folder / "tl.onnx"), str(folder / "tl.cortex.onnx"), strict=True)
    return str(folder / "tl.cortex.onnx")


@pytest.fixture(scope="module")
def app(model_path):
    """The deployment on a local Ray (2 CPUs, small object store), HTTP on a free loopback port."""
    import os

    from cortex.serving.ray_app import cortex_app

    env = {k: os.environ[k] for k in ("CORTEX_TRUST_DIR", "CORTEX_CACHE_DIR") if k in os.environ}
    ray.init(num_cpus=2, object_store_memory=100 * 1024 * 1024, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": env})
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        handle = serve.run(cortex_app(model_path, max_batch_size=16, batch_wait_timeout_s=0.05), name="treelstm",
                           route_prefix="/treelstm")
        yield handle, f"http://127.0.0.1:{port}/treelstm"
    finally:
        serve.shutdown()
        ray.shutdown()


def _trees(count):
    sst = st.sst_dir_default()
    return st.read_sst(sst, split="test", vocab_size=VOCAB, limit=count) if sst else \
        st.sst_like_trees(count, np.random.default_rng(0), VOCAB)


def _same(got, want):
    return len(got) == len(want) and all(np.array_equal(np.asarray(a, np.float32), b) for a, b in zip(got, want))


def test_handle_requests_merge_and_match(app, model_path):
    handle, _ = app
    plain = cortex.InferenceSession(model_path)
    feeds = [dict(children=t.children, words=t.words) for t in _trees(40)]
    responses = [handle.infer.remote(f) for f in feeds]  # concurrent: @serve.batch forms forests
    got = [r.result(timeout_s=TIMEOUT_S) for r in responses]
    assert all(_same(g, plain.run(None, f)) for g, f in zip(got, feeds))
    stats = handle.statistics.remote().result(timeout_s=TIMEOUT_S)
    assert stats["requests"] >= 40 and stats["largest_batch"] > 1 and stats["merged_requests"] > 1
    assert stats["merging_s"] > 0 and stats["running_s"] > 0 and stats["splitting_s"] > 0  # the replica's clocks


def test_a_bad_request_fails_alone(app, model_path):
    handle, _ = app
    plain = cortex.InferenceSession(model_path)
    good = [dict(children=t.children, words=t.words) for t in _trees(6)]
    cycle = dict(children=np.array([[1, -1], [0, -1]], np.int64), words=np.array([1, 2], np.int64))
    responses = [handle.infer.remote(f) for f in good[:3] + [cycle] + good[3:]]
    with pytest.raises(Exception, match="cycle"):
        responses[3].result(timeout_s=TIMEOUT_S)
    for r, f in zip(responses[:3] + responses[4:], good):
        assert _same(r.result(timeout_s=TIMEOUT_S), plain.run(None, f))


def _post(url, body):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_http_on_loopback(app, model_path):
    _, url = app
    plain = cortex.InferenceSession(model_path)
    trees = _trees(12)
    bodies = [{"children": t.children.tolist(), "words": t.words.tolist()} for t in trees]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: _post(url, b), bodies))
    for (status, body), tree in zip(answers, trees):
        assert status == 200, body
        assert _same([body["h"], body["c"], body["mean"]],
                     plain.run(None, dict(children=tree.children, words=tree.words)))
    status, body = _post(url, {"children": [[5, -1]], "words": [1]})
    assert status == 422 and "out of range" in body["error"]
    status, body = _post(url, {"words": [1]})
    assert status == 400 and "missing input" in body["error"]

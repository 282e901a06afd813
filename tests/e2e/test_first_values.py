"""A state table's first value: a CPU kernel with a batched schedule copies the initial table (or zeros) only into
the rows no position overwrites before reading them (kernel_support.h, mark_overwritten_rows); the others would be
overwritten anyway. Differential against ONNX Runtime on the original model with non-zero initial tables and visits
that leave rows unvisited, read unvisited rows, read their own row, list a node twice or run parents first."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

import cortex
from onnx_ops.zoo import CHILDSUM_ARITY, MODELS, VOCAB

HIDDEN = 8


@pytest.fixture(scope="module", params=["treelstm", "childsum"])
def sessions(request, tmp_path_factory):
    entry = MODELS[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    model = entry.build_loop(entry.make_params(HIDDEN, seed=1))
    onnx.save(model, str(folder / "m.onnx"))
    report = cortex.convert(str(folder / "m.onnx"), str(folder / "m.cortex.onnx"))
    assert all(r.converted for r in report.regions), report
    options = ort.SessionOptions()
    options.log_severity_level = 3
    original = ort.InferenceSession(str(folder / "m.onnx"), options, providers=["CPUExecutionProvider"])
    return request.param, original, cortex.InferenceSession(str(folder / "m.cortex.onnx"))


@hs.composite
def visits(draw, kind):
    """A structure with any visit: a subset of the nodes, repeats, parents before children, self-reads."""
    n = draw(hs.integers(1, 12))
    node = hs.integers(0, n - 1)
    unique = draw(hs.booleans())
    order = draw(hs.lists(node, max_size=2 * n, unique=unique))
    words = np.array(draw(hs.lists(hs.integers(0, VOCAB - 1), min_size=n, max_size=n)), np.int64)
    if kind == "childsum":
        children = draw(hs.lists(hs.lists(hs.integers(-1, n - 1), min_size=CHILDSUM_ARITY, max_size=CHILDSUM_ARITY),
                                 min_size=n, max_size=n))
        structure = dict(words=words, children=np.array(children, np.int64).reshape(n, CHILDSUM_ARITY))
    else:
        pairs = draw(hs.lists(hs.one_of(hs.just((-1, -1)), hs.tuples(node, node)), min_size=n, max_size=n))
        structure = dict(words=words, left=np.array([a for a, _ in pairs], np.int64),
                         right=np.array([b for _, b in pairs], np.int64))
    seed = draw(hs.integers(0, 2 ** 31 - 1))
    return n, np.array(order, np.int64), structure, seed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=hs.data())
def test_initial_tables_survive_where_no_position_overwrites_them(sessions, data):
    kind, original, converted = sessions
    n, order, structure, seed = data.draw(visits(kind))
    rng = np.random.default_rng(seed)
    feeds = dict(structure, order=order)
    for state in original.get_inputs():
        if state.name not in feeds:
            feeds[state.name] = rng.standard_normal((n, HIDDEN)).astype(np.float32)
    feeds = {i.name: feeds[i.name] for i in original.get_inputs()}
    try:
        want = original.run(None, feeds)
    except Exception:  # the original refuses this input: so must the converted model
        with pytest.raises(Exception):
            converted.run(None, feeds)
        return
    got = converted.run(None, feeds)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_a_node_reading_its_own_row_reads_the_initial_value(sessions):
    # node 1 reads itself (and node 0, visited first); node 2 is never visited: both keep or read h0 / c0
    kind, original, converted = sessions
    rng = np.random.default_rng(7)
    structure = (dict(children=np.array([[-1, -1], [0, 1], [-1, -1]], np.int64)) if kind == "childsum" else
                 dict(left=np.array([-1, 0, -1], np.int64), right=np.array([-1, 1, -1], np.int64)))
    feeds = dict(structure, words=np.array([3, 0, 4], np.int64), order=np.array([0, 1], np.int64))
    for state in original.get_inputs():
        if state.name not in feeds:
            feeds[state.name] = rng.standard_normal((3, HIDDEN)).astype(np.float32)
    feeds = {i.name: feeds[i.name] for i in original.get_inputs()}
    for g, w in zip(converted.run(None, feeds), original.run(None, feeds)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)

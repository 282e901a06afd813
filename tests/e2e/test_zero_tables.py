"""State tables the model fills with zeros (`torch.zeros(N, H)`: a ConstantOfShape, or the dynamo exporter's Expand
of a scalar zero) reach the converted node as the shape vector they are made from, and the kernel fills them: ONNX
Runtime neither fills them nor, on a GPU, copies them to the device before each run. Differential against ONNX
Runtime on the original, with the shapes as model inputs so that any shape can be tried: bigger tables than the
visit needs, smaller ones, negative or wrong dimensions, an empty visit."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from onnx import helper, numpy_helper

import cortex
from cortex.examples import structures as st
from cortex.examples import treelstm

HIDDEN = 8
VOCAB = 30


def _shapes_as_inputs(model: onnx.ModelProto, fill=0.0, expand=False) -> onnx.ModelProto:
    """The TreeLSTM's Loop form with h0 and c0 of the rows model inputs 'h_rows' and 'c_rows' (int64 [1]) give:
    ConstantOfShape(Concat(rows, [H])) of `fill`, or (expand) an Expand of a scalar `fill` to that shape."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    nodes = []
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.output[0] in ("h0", "c0"):
            k = node.output[0][0]
            nodes.append(helper.make_node("Concat", [f"{k}_rows", "H_vec"], [f"{k}_shape"], axis=0))
            if expand:
                nodes.append(helper.make_node("Expand", [f"{k}_fill", f"{k}_shape"], list(node.output)))
                graph.initializer.append(numpy_helper.from_array(np.array(fill, np.float32), f"{k}_fill"))
            else:
                nodes.append(helper.make_node("ConstantOfShape", [f"{k}_shape"], list(node.output),
                                              value=numpy_helper.from_array(np.array([fill], np.float32))))
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.input.extend(helper.make_tensor_value_info(f"{k}_rows", onnx.TensorProto.INT64, [1]) for k in "hc")
    return model


def _convert(model, folder, name):
    onnx.save(model, str(folder / f"{name}.onnx"))
    report = cortex.convert(str(folder / f"{name}.onnx"), str(folder / f"{name}.cortex.onnx"), strict=True)
    assert all(r.converted for r in report.regions)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return (ort.InferenceSession(str(folder / f"{name}.onnx"), options, providers=["CPUExecutionProvider"]),
            cortex.InferenceSession(str(folder / f"{name}.cortex.onnx")),
            onnx.load(str(folder / f"{name}.cortex.onnx")))


@pytest.fixture(scope="module")
def params():
    return treelstm.make_params(hidden=HIDDEN, embed_dim=6, vocab=VOCAB)


@pytest.fixture(scope="module", params=["constant_of_shape", "expand"])
def shaped(request, params, tmp_path_factory):
    model = _shapes_as_inputs(treelstm.build_loop(params), expand=request.param == "expand")
    return _convert(model, tmp_path_factory.mktemp(request.param), "m")


def _kernel(converted: onnx.ModelProto) -> onnx.NodeProto:
    return next(n for n in converted.graph.node if n.op_type == "EPContext")


def test_the_node_takes_the_shape_and_not_the_table(params, tmp_path):
    """The example's own graph (ConstantOfShape of Concat(Shape(words)[0:1], [H])): the kernel takes that shape
    vector, once for both tables, and no table of zeros is left for ONNX Runtime to make."""
    original, session, converted = _convert(treelstm.build_loop(params), tmp_path, "loop")
    assert "table_shape" in _kernel(converted).input and "h0" not in _kernel(converted).input
    assert not any(n.op_type == "ConstantOfShape" for n in converted.graph.node)
    for t in st.sst_like_trees(6, np.random.default_rng(1), VOCAB):
        feeds = t.arrays()
        for got, want in zip(session.run(None, feeds), original.run(None, feeds)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_shapes_from_model_inputs_reach_the_kernel(shaped):
    _, _, converted = shaped
    assert {"h_shape", "c_shape"} <= set(_kernel(converted).input)
    assert not any(n.op_type in ("ConstantOfShape", "Expand") for n in converted.graph.node)


@hs.composite
def requests(draw):
    n = draw(hs.integers(1, 8))
    node = hs.integers(0, n - 1)
    order = draw(hs.lists(node, max_size=n, unique=True))
    pairs = draw(hs.lists(hs.one_of(hs.just((-1, -1)), hs.tuples(node, node)), min_size=n, max_size=n))
    words = draw(hs.lists(hs.integers(0, VOCAB - 1), min_size=n, max_size=n))
    rows = draw(hs.one_of(hs.just(n), hs.integers(-2, n + 3)))
    other = draw(hs.one_of(hs.just(rows), hs.integers(-1, n + 1)))  # c's rows: mostly h's
    return dict(words=np.array(words, np.int64), left=np.array([a for a, _ in pairs], np.int64),
                right=np.array([b for _, b in pairs], np.int64), order=np.array(order, np.int64),
                h_rows=np.array([rows], np.int64), c_rows=np.array([other], np.int64))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(feeds=requests())
def test_any_rows_give_the_originals_answer_or_an_error(shaped, feeds):
    """More rows than the visit writes (they stay zeros), fewer (a write past them), none, negative: the converted
    model answers as the original, or fails where it fails. h and c of different rows are the one exception, a
    Cortex limitation for any initial tables: a clear error where the original may answer."""
    original, session, _ = shaped
    try:
        want = original.run(None, feeds)
    except Exception:  # noqa: BLE001 - the original refuses this input: so must the converted model
        with pytest.raises(Exception):
            session.run(None, feeds)
        return
    if feeds["h_rows"][0] != feeds["c_rows"][0]:
        with pytest.raises(Exception, match="Cortex limitation"):
            session.run(None, feeds)
        return
    got = session.run(None, feeds)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
        assert np.array_equal(np.signbit(g[g == 0]), np.signbit(w[w == 0]))


def test_an_edited_model_feeding_any_shape_gets_clear_errors(params, tmp_path):
    """A converted model whose kernel is fed a shape vector from outside (edited by hand: the converter's own
    graphs compute it): negative or wrong dimensions and vectors of the wrong length are errors, not tables."""
    _, _, converted = _convert(treelstm.build_loop(params), tmp_path, "loop")
    node = _kernel(converted)
    node.input[list(node.input).index("table_shape")] = "shape"
    converted.graph.input.append(helper.make_tensor_value_info("shape", onnx.TensorProto.INT64, ["k"]))
    onnx.save(converted, str(tmp_path / "loop.cortex.onnx"))
    session = cortex.InferenceSession(str(tmp_path / "loop.cortex.onnx"))
    feeds = dict(words=np.array([1, 2, 3], np.int64), left=np.array([-1, -1, 0], np.int64),
                 right=np.array([-1, -1, 1], np.int64), order=np.array([0, 1, 2], np.int64))
    want = session.run(None, dict(feeds, shape=np.array([3, HIDDEN], np.int64)))
    assert want[0].shape == (3, HIDDEN)
    for shape, message in (([-1, HIDDEN], "negative dimension"), ([3, 5], "the model's state has 8"),
                           ([3, -HIDDEN], "negative dimension"), ([3], r"kernel reads int64 \[2\]"),
                           ([3, HIDDEN, 1], r"kernel reads int64 \[2\]"), ([2 ** 40, HIDDEN], "could not allocate"),
                           ([0, HIDDEN], "out of range for the state row")):
        with pytest.raises(Exception, match=message):
            session.run(None, dict(feeds, shape=np.array(shape, np.int64)))


def test_a_table_of_negative_zeros_keeps_its_input(params, tmp_path):
    """-0.0 is not what the kernel's fill gives: such a table stays an input, its unvisited rows -0.0 as before."""
    original, session, converted = _convert(_shapes_as_inputs(treelstm.build_loop(params), fill=-0.0), tmp_path,
                                            "negzero")
    assert any(n.op_type == "ConstantOfShape" for n in converted.graph.node)
    feeds = dict(words=np.array([1, 2, 3], np.int64), left=np.array([-1, -1, 0], np.int64),
                 right=np.array([-1, -1, 1], np.int64), order=np.array([0, 2], np.int64),
                 h_rows=np.array([4], np.int64), c_rows=np.array([4], np.int64))
    got, want = session.run(None, feeds), original.run(None, feeds)
    for g, w in zip(got, want):
        assert np.signbit(g[3]).all() and np.array_equal(np.signbit(g), np.signbit(w))

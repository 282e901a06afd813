"""End to end: ONNX model -> cortex.convert -> ORT session with the Cortex EP, against the original model in
ONNX Runtime (and the numpy reference), on random and SST trees, batches of one and many, and odd
structure inputs where exact semantics matter."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

import cortex
from cortex.examples import structures as st
from cortex.treerec import TreeRecOp, lower_treerec
from cortex.examples import treelstm as tl

HIDDEN, EMBED, VOCAB = 16, 8, 60
TOL = 1e-4


@pytest.fixture(scope="module")
def params():
    return tl.make_params(hidden=HIDDEN, embed_dim=EMBED, vocab=VOCAB, seed=3)


@pytest.fixture(scope="module")
def example_forest():
    return st.batch(st.sst_like_trees(3, np.random.default_rng(0), VOCAB))


def _convert(tmp_path_factory, name, model):
    d = tmp_path_factory.mktemp(name)
    src, out = d / f"{name}.onnx", d / f"{name}.cortex.onnx"
    onnx.save(model, str(src))
    report = cortex.convert(str(src), str(out), strict=True)
    assert [r.converted for r in report.regions] == [True]
    return src, out


LOOP_FORMS = ["loop", "torch_row_assign", "torch_index_put", "torch_python_int"]


def _loop_model(form, params, example_forest, tmp_path_factory):
    if form == "loop":
        return tl.build_loop(params)
    torch_treelstm = pytest.importorskip("torch_treelstm", reason="torch is needed for TorchScript exports")
    path = tmp_path_factory.mktemp("export") / f"{form}.onnx"
    torch_treelstm.export(form[len("torch_"):], params, str(path), example_forest)
    return onnx.load(str(path))


class Pair:
    """The original model in plain ONNX Runtime and the converted one with the Cortex EP."""

    def __init__(self, src, out):
        self.original = ort.InferenceSession(str(src))
        self.converted = cortex.InferenceSession(str(out))
        self.out = out

    def both(self, feeds):
        return self.original.run(None, feeds), self.converted.run(None, feeds)


@pytest.fixture(scope="module", params=LOOP_FORMS)
def loop_pair(request, params, example_forest, tmp_path_factory):
    model = _loop_model(request.param, params, example_forest, tmp_path_factory)
    src, out = _convert(tmp_path_factory, request.param, model)
    return Pair(src, out)


def _feeds(forest, order=None, **override):
    feeds = dict(words=forest.words, left=forest.left, right=forest.right,
                 order=forest.order if order is None else np.asarray(order, dtype=np.int64))
    feeds.update(override)
    return feeds


def _assert_close(expected, got):
    assert len(expected) == len(got)
    for e, g in zip(expected, got):
        assert e.shape == g.shape
        assert np.abs(e - g).max(initial=0.0) <= TOL


def _sst_or_synthetic(count, split="test"):
    sst = st.sst_dir_default()
    if sst is not None:
        return st.read_sst(sst, split=split, vocab_size=VOCAB, limit=count)
    return st.sst_like_trees(count, np.random.default_rng(7), VOCAB)


# ---- conversion ------------------------------------------------------------------------------


def test_converted_models_contain_no_loop(loop_pair):
    model = onnx.load(str(loop_pair.out))
    ops = [n.op_type for n in model.graph.node]
    assert "Loop" not in ops and ops.count("EPContext") == 1


def test_converted_model_keeps_inputs_and_outputs(loop_pair):
    names = lambda s: ([i.name for i in s.get_inputs()], [o.name for o in s.get_outputs()])  # noqa: E731
    assert names(loop_pair.original) == names(loop_pair.converted)


# ---- agreement on real and random trees -----------------------------------------------------


def test_single_sst_trees_match(loop_pair):
    for tree in _sst_or_synthetic(25):
        _assert_close(*loop_pair.both(_feeds(tree)))


def test_sst_batches_match(loop_pair):
    trees = _sst_or_synthetic(60, split="dev")
    for i in range(0, 60, 20):
        _assert_close(*loop_pair.both(_feeds(st.batch(trees[i:i + 20]))))


def test_random_trees_match(loop_pair):
    rng = np.random.default_rng(11)
    for n in (1, 2, 5, 40):
        _assert_close(*loop_pair.both(_feeds(st.random_tree(n, rng, VOCAB))))
    _assert_close(*loop_pair.both(_feeds(st.batch([st.random_tree(n, rng, VOCAB) for n in range(1, 30)]))))


def test_matches_numpy_reference(loop_pair, params):
    forest = st.batch(st.sst_like_trees(5, np.random.default_rng(2), VOCAB))
    expected = tl.reference(params, forest)
    _assert_close(expected, loop_pair.converted.run(None, _feeds(forest)))


# ---- exact semantics on odd structure inputs --------------------------------------------------




@pytest.mark.parametrize("case", sorted(st.odd_orders([0], num_nodes=1)))
def test_odd_orders_match_original(loop_pair, case):
    forest = st.batch(_sst_or_synthetic(3))
    order = st.odd_orders(forest.order, num_nodes=forest.num_nodes)[case]
    _assert_close(*loop_pair.both(_feeds(forest, order=order)))


def test_cycle_in_structure_matches_original(loop_pair):
    forest = st.batch(_sst_or_synthetic(2))
    left, right = forest.left.copy(), forest.right.copy()
    internal = np.flatnonzero(left >= 0)
    a, b = internal[0], internal[1]
    left[a], left[b] = b, a  # a <-> b: a cycle through two internal nodes
    _assert_close(*loop_pair.both(_feeds(forest, left=left, right=right)))


def test_negative_child_wraps_like_gather(loop_pair):
    forest = st.batch(_sst_or_synthetic(2))
    right = forest.right.copy()
    right[np.flatnonzero(forest.left >= 0)[-1]] = -2
    _assert_close(*loop_pair.both(_feeds(forest, right=right)))


@pytest.mark.parametrize("where", ["order", "left"])
def test_index_out_of_range_raises_like_original(loop_pair, where):
    forest = st.batch(_sst_or_synthetic(2))
    n = len(forest.words)
    if where == "order":
        feeds = _feeds(forest, order=np.concatenate([forest.order, [n + 3]]))
    else:
        left = forest.left.copy()
        left[np.flatnonzero(forest.left >= 0)[0]] = n + 3
        feeds = _feeds(forest, left=left)
    with pytest.raises(Exception):
        loop_pair.original.run(None, feeds)
    with pytest.raises(Exception, match="out of range"):
        loop_pair.converted.run(None, feeds)


# ---- int64 index arithmetic wraps, as ONNX Runtime computes it -------------------------------------------------

_INT64_MAX = (1 << 63) - 1


def _scaled_reads_model(scale: int, shift: int) -> onnx.ModelProto:
    """A Loop over `order` whose position v reads row `src[v] * scale + shift` of the table it writes
    (h[v] = tanh(h[src[v] * scale + shift] + x[v]), by ScatterND): index arithmetic on an input's values."""
    from onnx import TensorProto, helper, numpy_helper

    def c(name, value):
        return numpy_helper.from_array(np.array(value, dtype=np.int64), name)

    body = helper.make_graph(
        [helper.make_node("Gather", ["order", "i"], ["v"], axis=0),
         helper.make_node("Gather", ["src", "v"], ["s"], axis=0),
         helper.make_node("Mul", ["s", "scale"], ["scaled"]),
         helper.make_node("Add", ["scaled", "shift"], ["u"]),
         helper.make_node("Gather", ["h_in", "u"], ["row"], axis=0),
         helper.make_node("Gather", ["x", "v"], ["xv"], axis=0),
         helper.make_node("Add", ["row", "xv"], ["pre"]),
         helper.make_node("Tanh", ["pre"], ["new"]),
         helper.make_node("Unsqueeze", ["v", "axes0"], ["v1"]),
         helper.make_node("Unsqueeze", ["v1", "axes0"], ["v2"]),
         helper.make_node("Unsqueeze", ["new", "axes0"], ["new2"]),
         helper.make_node("ScatterND", ["h_in", "v2", "new2"], ["h_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["N", 4])])
    graph = helper.make_graph(
        [helper.make_node("Shape", ["order"], ["trip1"]),
         helper.make_node("Squeeze", ["trip1", "axes0"], ["trip"]),
         helper.make_node("Loop", ["trip", "", "h0"], ["h"], body=body)],
        "scaled_reads",
        [helper.make_tensor_value_info("order", TensorProto.INT64, ["L"]),
         helper.make_tensor_value_info("src", TensorProto.INT64, ["N"]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("h0", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", 4])],
        [c("scale", scale), c("shift", shift), c("axes0", [0])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def _wrapped(value: int) -> int:
    value %= 1 << 64
    return value - (1 << 64) if value >= 1 << 63 else value


@pytest.mark.parametrize("scale,shift", [(3, 0), (3, _INT64_MAX), (-5, -_INT64_MAX - 1)])
def test_index_arithmetic_wraps_like_onnx_runtime(tmp_path_factory, scale, shift):
    # ids chosen so that src[v] * scale + shift overflows int64 and wraps to a row of the table: ONNX Runtime's
    # Mul and Add wrap, so the original reads that row; the kernel must too (and not overflow a signed C++ int,
    # which is undefined behaviour: the sanitizer run of this test aborts on it)
    src_path, out = _convert(tmp_path_factory, "scaled_reads", _scaled_reads_model(scale, shift))
    pair = Pair(src_path, out)
    n = 6
    inverse = pow(scale, -1, 1 << 64)
    rows = [0, 0, 1, 2, 4, 3]
    src = np.array([_wrapped((r - shift) * inverse) for r in rows], dtype=np.int64)
    assert [_wrapped(int(s) * scale + shift) for s in src] == rows
    assert any(abs(int(s) * scale) >= 1 << 63 for s in src)  # the products do overflow
    rng = np.random.default_rng(2)
    feeds = {"order": np.arange(n, dtype=np.int64), "src": src,
             "x": rng.standard_normal((n, 4)).astype(np.float32), "h0": rng.standard_normal((n, 4)).astype(np.float32)}
    _assert_close(*pair.both(feeds))


def test_empty_forest(loop_pair):
    empty = np.zeros(0, dtype=np.int64)
    feeds = dict(words=empty, left=empty, right=empty, order=empty)
    _assert_close(*loop_pair.both(feeds))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=hs.data())
def test_any_visit_sequence_matches_original(loop_pair, data):
    forest = st.batch(st.sst_like_trees(2, np.random.default_rng(data.draw(hs.integers(0, 50))), VOCAB))
    n = len(forest.words)
    order = data.draw(hs.lists(hs.integers(-n, n - 1), max_size=3 * n))
    _assert_close(*loop_pair.both(_feeds(forest, order=order)))


# ---- the TreeRec form -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def treerec(params, tmp_path_factory):
    model = tl.build_treerec(params)
    src, out = _convert(tmp_path_factory, "treerec", model)
    lowered = tmp_path_factory.mktemp("lowered") / "lowered.onnx"
    onnx.save(lower_treerec(model), str(lowered))
    return model, ort.InferenceSession(str(lowered)), cortex.InferenceSession(str(out))


def test_treerec_matches_reference_and_lowering(treerec):
    model, lowered, converted = treerec
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(model, new_ops=[TreeRecOp])
    for trees in (_sst_or_synthetic(1), _sst_or_synthetic(12)):
        forest = st.batch(trees)
        feeds = dict(children=forest.children, words=forest.words)
        got = converted.run(None, feeds)
        _assert_close(evaluator.run(None, feeds), got)
        _assert_close(lowered.run(None, feeds), got)


def test_treerec_dag_sharing(treerec):
    model, _, converted = treerec
    from onnx.reference import ReferenceEvaluator

    # node 2 has both children = node 0; node 3 reads node 2 twice: a DAG, not a tree
    children = np.array([[-1, -1], [-1, -1], [0, 0], [2, 2], [1, 3]], dtype=np.int64)
    feeds = dict(children=children, words=np.array([4, 5, 0, 0, 0], dtype=np.int64))
    _assert_close(ReferenceEvaluator(model, new_ops=[TreeRecOp]).run(None, feeds), converted.run(None, feeds))


def test_treerec_cycle_is_an_error(treerec):
    _, _, converted = treerec
    children = np.array([[-1, -1], [2, 0], [1, 0]], dtype=np.int64)
    with pytest.raises(Exception, match="cycle"):
        converted.run(None, dict(children=children, words=np.zeros(3, dtype=np.int64)))


def test_treerec_child_out_of_range_is_an_error(treerec):
    _, _, converted = treerec
    children = np.array([[-1, -1], [0, 7]], dtype=np.int64)
    with pytest.raises(Exception, match="out of range"):
        converted.run(None, dict(children=children, words=np.zeros(2, dtype=np.int64)))


# ---- the recursion inside a larger graph --------------------------------------------------------


def _with_classifier(model: onnx.ModelProto, hidden: int, classes: int = 5) -> onnx.ModelProto:
    """Adds a sentiment head after the recursion: root rows -> linear -> log-softmax (runs on the CPU EP)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    graph = model.graph
    graph.initializer.extend([
        numpy_helper.from_array(rng.standard_normal((hidden, classes)).astype(np.float32), "head_w"),
        numpy_helper.from_array(rng.standard_normal(classes).astype(np.float32), "head_b")])
    graph.input.append(helper.make_tensor_value_info("roots", TensorProto.INT64, ["R"]))
    graph.node.extend([
        helper.make_node("Gather", ["h", "roots"], ["root_h"], axis=0),
        helper.make_node("MatMul", ["root_h", "head_w"], ["logits0"]),
        helper.make_node("Add", ["logits0", "head_b"], ["logits"]),
        helper.make_node("LogSoftmax", ["logits"], ["log_probs"], axis=-1)])
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("log_probs", TensorProto.FLOAT, ["R", classes]))
    return model


def test_recursion_inside_a_larger_graph(params, tmp_path_factory):
    src, out = _convert(tmp_path_factory, "classifier", _with_classifier(tl.build_loop(params), HIDDEN))
    pair = Pair(src, out)
    forest = st.batch(_sst_or_synthetic(8))
    _assert_close(*pair.both(_feeds(forest, roots=forest.roots)))


# ---- thread counts -----------------------------------------------------------------------------

_RUN_AT_THREADS = """
import sys, numpy as np, cortex
feeds = dict(np.load(sys.argv[2]))
out = cortex.InferenceSession(sys.argv[1]).run(None, feeds)
np.savez(sys.argv[3], *out)
"""


def test_thread_counts_give_identical_results(tmp_path):
    """The CPU levels split their work by column chunks and, on many threads, by row ranges too (kernel_support.h
    fused_tasks); neither changes any element's summation order, so every thread count gives the same bits. Hidden
    64 (4 column chunks) on 100 trees: at 16 threads the wide levels split their rows."""
    import subprocess
    import sys

    params64 = tl.make_params(hidden=64, embed_dim=EMBED, vocab=VOCAB, seed=5)
    src, out = tmp_path / "t.onnx", tmp_path / "t.cortex.onnx"
    onnx.save(tl.build_loop(params64), str(src))
    cortex.convert(str(src), str(out), strict=True)
    forest = st.batch(st.sst_like_trees(100, np.random.default_rng(11), VOCAB))
    np.savez(tmp_path / "feeds.npz", **_feeds(forest))
    results = {}
    for threads in ("1", "2", "16"):
        dest = tmp_path / f"out{threads}.npz"
        env = dict(__import__("os").environ, CORTEX_NUM_THREADS=threads)
        subprocess.run([sys.executable, "-c", _RUN_AT_THREADS, str(out), str(tmp_path / "feeds.npz"), str(dest)],
                       env=env, check=True)
        with np.load(dest) as z:
            results[threads] = [z[k] for k in sorted(z.files)]
    original = ort.InferenceSession(str(src)).run(None, _feeds(forest))
    _assert_close(original, results["1"])
    for threads in ("2", "16"):
        for a, b in zip(results["1"], results[threads]):
            np.testing.assert_array_equal(a, b, err_msg=f"{threads} threads differ from 1")


# ---- TreeRec node inputs of the wrong length ----------------------------------------------------------------------


@pytest.mark.parametrize("change", [-3, +2, -1])
def test_treerec_node_input_of_the_wrong_length_is_an_error(params, tmp_path_factory, change):
    # the op's spec: a node input whose leading dimension is not N is an error, whether or not a node reads the rows
    # it lacks (here the last nodes are internal: no node reads their words); the CUDA kernel makes the same check
    model = tl.build_treerec(params)
    src, out = _convert(tmp_path_factory, f"treerec_len{change}", model)
    forest = st.batch(st.sst_like_trees(2, np.random.default_rng(5), VOCAB))
    n = forest.children.shape[0]
    words = np.resize(forest.words, n + change)
    session = cortex.InferenceSession(str(out))
    with pytest.raises(Exception, match=f"node input 'words' has {n + change} rows; the structure 'children' has "
                                        f"{n} nodes"):
        session.run(None, {"children": forest.children, "words": words})
    with pytest.raises(ValueError, match="leading dimension"):
        _reference(model, forest.children, words)
    got = session.run(None, {"children": forest.children, "words": forest.words})
    want = _reference(model, forest.children, forest.words)
    for g, w in zip(got, want):
        assert np.abs(g - w).max() <= TOL
    from cortex.codegen import generator
    from cortex.frontend import find_regions
    from cortex.passes import optimize

    [region] = find_regions(model)
    assert "cortex::check_node_rows(" in generator("cuda", optimize(region.program)).generate("treerec")


def _reference(model, children, words):
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model, new_ops=[TreeRecOp]).run(None, {"children": children, "words": words})

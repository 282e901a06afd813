"""cortex.TreeRec (schema, reference, lowering) and the TreeLSTM zoo, checked against the numpy reference and ONNX
Runtime; TorchScript exports of natural PyTorch TreeLSTMs checked the same way."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator


from cortex.examples import structures as S
from cortex.treerec import TreeRecOp, lower_treerec, make_treerec_node, register_schema, treerec_reference
from cortex.examples import treelstm as T

SST = S.sst_dir_default()
needs_sst = pytest.mark.skipif(SST is None, reason="SST directory not found (../shared/data/sst or CORTEX_SST_DIR)")
HAS_TORCH = importlib.util.find_spec("torch") is not None
TOL = 1e-5
H, D, V = 8, 6, 64


def session(model: onnx.ModelProto | str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    src = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def close(a, b, what="", tol=TOL):
    assert a.shape == b.shape, what
    err = float(np.abs(a - b).max(initial=0.0))
    assert err <= tol, f"{what}: max abs error {err}"


@pytest.fixture(scope="module")
def params():
    return T.make_params(H, D, V, seed=3)


@pytest.fixture(scope="module")
def forests():
    rng = np.random.default_rng(7)
    single = [S.random_tree(k, rng, V) for k in (1, 2, 5, 11)]
    return {
        "single_leaf": single[0],
        "small": single[2],
        "batch": S.batch(single),
        "sst_like": S.batch(S.sst_like_trees(6, rng, V)),
    }


@pytest.fixture(scope="module")
def sst_forest():
    if SST is None:
        pytest.skip("SST directory not found (../shared/data/sst or CORTEX_SST_DIR)")
    return S.batch(S.read_sst(SST, split="test", vocab_size=V, limit=25))


@pytest.fixture(scope="module")
def treerec_model(params):
    return T.build_treerec(params)


@pytest.fixture(scope="module")
def lowered_session(treerec_model):
    return session(lower_treerec(treerec_model))


@pytest.fixture(scope="module")
def loop_session(params):
    return session(T.build_loop(params))


# ---------------------------------------------------------------------------------------------------------------
# Schema


def test_checker_accepts_treerec(treerec_model):
    register_schema()
    register_schema()  # idempotent
    assert onnx.defs.has("TreeRec", 1, "cortex")
    onnx.checker.check_model(treerec_model, full_check=True)
    onnx.checker.check_model(lower_treerec(treerec_model), full_check=True)
    assert all(o.domain != "cortex" for o in lower_treerec(treerec_model).opset_import)


# ---------------------------------------------------------------------------------------------------------------
# TreeRec reference


@pytest.mark.parametrize("name", ["single_leaf", "small", "batch", "sst_like"])
def test_treerec_reference_matches_numpy(params, treerec_model, forests, name):
    f = forests[name]
    h, c = T.reference(params, f)
    ev = ReferenceEvaluator(treerec_model, new_ops=[TreeRecOp])
    h2, c2 = ev.run(None, {"children": f.children, "words": f.words})
    close(h2, h)
    close(c2, c)
    node = treelstm_node(treerec_model)
    h3, c3 = treerec_reference(node, [f.children, f.words])
    close(h3, h)
    close(c3, c)


def treelstm_node(model):
    return next(n for n in model.graph.node if n.op_type == "TreeRec")


def test_treerec_reference_sst(params, treerec_model, sst_forest):
    h, c = T.reference(params, sst_forest)
    h2, c2 = treerec_reference(treelstm_node(treerec_model), [sst_forest.children, sst_forest.words])
    close(h2, h)
    close(c2, c)


def test_treerec_cycle_and_bad_index(treerec_model):
    ev = ReferenceEvaluator(treerec_model, new_ops=[TreeRecOp])
    words = np.array([1, 0, 0], dtype=np.int64)
    cyc = np.array([[-1, -1], [0, 2], [1, 0]], dtype=np.int64)
    with pytest.raises(ValueError, match="cycle"):
        treerec_reference(treelstm_node(treerec_model), [cyc, words])
    with pytest.raises(ValueError, match="cycle"):
        ev.run(None, {"children": cyc, "words": words})
    for bad in ([[-1, -1], [0, 3], [0, 1]], [[-1, -1], [0, -2], [0, 1]]):
        with pytest.raises(ValueError, match="out of range"):
            ev.run(None, {"children": np.array(bad, dtype=np.int64), "words": words})


# A generic TreeRec: K = 3 children, one state, DAG sharing, missing children -> zero rows.
def sum_model() -> onnx.ModelProto:
    f32 = TensorProto.FLOAT
    vi = helper.make_tensor_value_info
    leaf = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["s"])],
        "leaf",
        [vi("x", f32, [3])],
        [vi("s", f32, [3])],
        initializer=[numpy_helper.from_array(np.full(3, 2.0, np.float32), "two")],
    )
    internal = helper.make_graph(
        [
            helper.make_node("Sum", ["a", "b", "c"], ["abc"]),
            helper.make_node("Mul", ["b", "b"], ["bb"]),
            helper.make_node("Add", ["abc", "bb"], ["t"]),
            helper.make_node("Add", ["t", "x"], ["s"]),
        ],
        "internal",
        [vi("a", f32, [3]), vi("b", f32, [3]), vi("c", f32, [3]), vi("x", f32, [3])],
        [vi("s", f32, [3])],
    )
    node = make_treerec_node("children", ["x"], ["state"], leaf, internal, name="sum")
    g = helper.make_graph(
        [node],
        "sum",
        [vi("children", TensorProto.INT64, ["N", 3]), vi("x", f32, ["N", 3])],
        [vi("state", f32, ["N", 3])],
    )
    register_schema()
    return helper.make_model(
        g, ir_version=10, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("cortex", 1)]
    )


def sum_numpy(children, x):
    out = np.zeros_like(x)
    for v in S.dag_heights(children).argsort(kind="stable"):
        ch = children[v]
        if np.all(ch < 0):
            out[v] = 2 * x[v]
        else:
            rows = [out[k] if k >= 0 else np.zeros(3, np.float32) for k in ch]
            out[v] = rows[0] + rows[1] + rows[2] + rows[1] * rows[1] + x[v]
    return out


def test_treerec_generic_dag_lowered():
    m = sum_model()
    onnx.checker.check_model(m, full_check=True)
    # node 4 and 5 share node 2; node 5 has missing children in the middle; node 3 is a leaf listed late.
    children = np.array(
        [[-1, -1, -1], [-1, -1, -1], [0, 1, -1], [-1, -1, -1], [2, 3, 2], [-1, 2, 4]], dtype=np.int64
    )
    x = np.random.default_rng(0).uniform(-1, 1, (6, 3)).astype(np.float32)
    want = sum_numpy(children, x)
    (got_ref,) = ReferenceEvaluator(m, new_ops=[TreeRecOp]).run(None, {"children": children, "x": x})
    close(got_ref, want)
    (got_ort,) = session(lower_treerec(m)).run(None, {"children": children, "x": x})
    close(got_ort, want)


# ---------------------------------------------------------------------------------------------------------------
# Lowered TreeRec in ONNX Runtime


@pytest.mark.parametrize("name", ["single_leaf", "small", "batch", "sst_like"])
def test_lowered_treerec_ort(params, lowered_session, forests, name):
    f = forests[name]
    h, c = T.reference(params, f)
    h2, c2 = lowered_session.run(None, {"children": f.children, "words": f.words})
    close(h2, h)
    close(c2, c)


def test_lowered_treerec_sst(params, lowered_session, sst_forest):
    h, c = T.reference(params, sst_forest)
    h2, c2 = lowered_session.run(None, {"children": sst_forest.children, "words": sst_forest.words})
    close(h2, h)
    close(c2, c)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(1, 12), min_size=1, max_size=4), seed=st.integers(0, 2**31 - 1))
def test_lowered_treerec_random(params, lowered_session, sizes, seed):
    rng = np.random.default_rng(seed)
    f = S.batch([S.random_tree(k, rng, V) for k in sizes])
    # A permutation of node ids: TreeRec does not care how nodes are numbered.
    perm = rng.permutation(f.num_nodes)
    inv = np.argsort(perm)
    children = np.where(f.children >= 0, inv[np.maximum(f.children, 0)], -1)[perm]
    words = f.words[perm]
    h, c = T.reference(params, words, children[:, 0], children[:, 1], np.argsort(S.dag_heights(children)))
    h2, c2 = lowered_session.run(None, {"children": children, "words": words})
    close(h2, h)
    close(c2, c)


# ---------------------------------------------------------------------------------------------------------------
# Hand-built Loop


def test_build_loop_checker(params):
    m = T.build_loop(params)
    onnx.checker.check_model(m, full_check=True)
    ops = {n.op_type for n in m.graph.node}
    assert "Loop" in ops


@pytest.mark.parametrize("name", ["single_leaf", "batch", "sst_like"])
def test_build_loop_odd_orders(params, loop_session, forests, name):
    f = forests[name]
    for label, order in S.odd_orders(f.order).items():
        h, c = T.reference(params, f.words, f.left, f.right, order, leaf_test="minus_one")
        h2, c2 = loop_session.run(None, {**f.arrays(), "order": order})
        close(h2, h, label)
        close(c2, c)


def test_build_loop_sst(params, loop_session, sst_forest):
    h, c = T.reference(params, sst_forest, leaf_test="minus_one")
    h2, c2 = loop_session.run(None, sst_forest.arrays())
    close(h2, h)
    close(c2, c)


def test_build_loop_out_of_range(params, loop_session, forests):
    f = forests["small"]
    bad = f.arrays()
    bad["left"] = bad["left"].copy()
    bad["left"][f.roots[0]] = f.num_nodes + 3
    with pytest.raises(IndexError):
        T.reference(params, bad["words"], bad["left"], bad["right"], bad["order"])
    with pytest.raises(Exception):  # noqa: B017 - ORT raises its own error type
        loop_session.run(None, bad)


def test_reference_leaf_tests_differ_only_below_minus_one(params, forests):
    f = forests["small"]
    left = f.left.copy()
    left[left < 0] = -2  # leaves marked -2: "negative" still sees leaves, "minus_one" reads rows -2 and -1
    h1, _ = T.reference(params, f.words, left, f.right, f.order)
    h0, _ = T.reference(params, f)
    close(h1, h0)
    h2, _ = T.reference(params, f.words, left, f.right, f.order, leaf_test="minus_one")
    assert not np.allclose(h2, h0)


# ---------------------------------------------------------------------------------------------------------------
# TorchScript exports of natural PyTorch models

if HAS_TORCH:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch_treelstm

    STYLES = torch_treelstm.STYLES
else:
    STYLES = ("row_assign",)


@pytest.fixture(scope="module", params=STYLES)
def torch_export(request, params, tmp_path_factory):
    if not HAS_TORCH:
        pytest.skip("torch is not installed")
    rng = np.random.default_rng(11)
    example = S.batch([S.random_tree(k, rng, V) for k in (3, 4)])
    path = tmp_path_factory.mktemp("export") / f"{request.param}.onnx"
    torch_treelstm.export(request.param, params, path, example)
    return request.param, session(str(path))


def test_torch_export_matches_reference(params, torch_export, forests):
    style, sess = torch_export
    for name in ("single_leaf", "batch", "sst_like"):
        f = forests[name]
        for label, order in S.odd_orders(f.order).items():
            h, c = T.reference(params, f.words, f.left, f.right, order)
            h2, c2 = sess.run(None, {**f.arrays(), "order": order})
            close(h2, h, f"{style} {name} {label}")
            close(c2, c)


def test_torch_export_sst(params, torch_export, sst_forest):
    _, sess = torch_export
    h, c = T.reference(params, sst_forest)
    h2, c2 = sess.run(None, sst_forest.arrays())
    close(h2, h)
    close(c2, c)


def test_torch_eager_matches_reference(params, forests):
    if not HAS_TORCH:
        pytest.skip("torch is not installed")
    import torch

    f = forests["batch"]
    h, c = T.reference(params, f)
    for style in STYLES:
        m = torch_treelstm.make_module(style, params)
        with torch.no_grad():
            h2, c2 = m(*(torch.from_numpy(a) for a in f.arrays().values()))
        close(h2.numpy(), h)
        close(c2.numpy(), c)


def test_empty_forest(params, treerec_model, lowered_session, loop_session):
    e = {"children": np.zeros((0, 2), np.int64), "words": np.zeros(0, np.int64)}
    for out in (ReferenceEvaluator(treerec_model, new_ops=[TreeRecOp]).run(None, e), lowered_session.run(None, e)):
        assert [x.shape for x in out] == [(0, H), (0, H)]
    z = np.zeros(0, np.int64)
    assert [x.shape for x in loop_session.run(None, {"words": z, "left": z, "right": z, "order": z})] == [(0, H)] * 2

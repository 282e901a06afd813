"""MV-RNN, DAG-RNN (grids) and the chain LSTM in every form: numpy reference vs cortex.TreeRec (reference evaluator
and the lowering in ONNX Runtime), vs the hand-built Loop (odd visit orders included) and vs TorchScript exports of
natural PyTorch modules (with N and L unlike the export example)."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx.reference import ReferenceEvaluator

from onnx_ops import grids as G
from cortex.examples import structures as S
from cortex.treerec import TreeRecOp, lower_treerec, register_schema
from onnx_ops.zoo import chainlstm, dagrnn, mvrnn
from onnx_ops.zoo import torch_models_b as TB

SST = S.sst_dir_default()
HAS_TORCH = importlib.util.find_spec("torch") is not None
TOL = 1e-5
H, D, V = 5, 3, 12
MODULES = {"mvrnn": mvrnn, "dagrnn": dagrnn, "chainlstm": chainlstm}


def session(model: onnx.ModelProto | str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    src = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def as_tuple(x):
    return x if isinstance(x, (tuple, list)) else (x,)


def close(got, want, what=""):
    got, want = as_tuple(got), as_tuple(want)
    assert len(got) == len(want), what
    for a, b in zip(got, want):
        a = np.asarray(a)
        assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
        err = float(np.abs(a - b).max(initial=0.0))
        assert err <= TOL, f"{what}: max abs error {err}"


# ---------------------------------------------------------------------------------------------------------------
# Parameters and structures


@pytest.fixture(scope="module")
def params():
    return {
        "mvrnn": mvrnn.make_params(H, V, seed=1),
        "dagrnn": dagrnn.make_params(H, D, seed=2),
        "chainlstm": chainlstm.make_params(H, D, V, seed=3),
    }


def _trees():
    rng = np.random.default_rng(7)
    single = [S.random_tree(k, rng, V) for k in (1, 2, 5, 9)]
    out = {"single_leaf": single[0], "small": single[2], "batch": S.batch(single),
           "sst_like": S.batch(S.sst_like_trees(3, rng, V))}
    if SST is not None:
        out["sst"] = S.batch(S.read_sst(SST, split="test", vocab_size=V, limit=6))
    return out


def _grids():
    rng = np.random.default_rng(8)
    sizes = {"1x1": (1, 1), "1x5": (1, 5), "4x1": (4, 1), "3x4": (3, 4)}
    out = {k: G.grid(r, c, D, rng) for k, (r, c) in sizes.items()}
    out["batch"] = G.batch_grids([G.grid(r, c, D, rng) for r, c in ((2, 3), (1, 1), (3, 2))])
    return out


def _chains():
    rng = np.random.default_rng(9)
    return {
        "len1": G.chains([1], rng, V),
        "len6": G.chains([6], rng, V),
        "batch": G.chains([3, 1, 0, 7], rng, V),
        "interleaved": G.chains([4, 2, 5], rng, V, interleave=True),
    }


STRUCTS = {"mvrnn": _trees(), "dagrnn": _grids(), "chainlstm": _chains()}
CASES = [(m, k) for m, d in STRUCTS.items() for k in d]
NODE_INPUT = {"mvrnn": "words", "dagrnn": "features", "chainlstm": "words"}


def treerec_feeds(model: str, s) -> dict[str, np.ndarray]:
    return {"children": s.children, NODE_INPUT[model]: getattr(s, NODE_INPUT[model])}


def reference(model: str, p, s, order=None, **kw):
    arrays = dict(s.arrays())
    if order is not None:
        arrays["order"] = order
    return as_tuple(MODULES[model].reference(p, *arrays.values(), **kw))


# ---------------------------------------------------------------------------------------------------------------
# Structures


def test_grid_structure():
    g = G.grid(3, 4, D, np.random.default_rng(0))
    assert g.num_nodes == 12 and g.features.shape == (12, D) and g.features.dtype == np.float32
    assert g.up.tolist() == [-1] * 4 + list(range(8))
    assert g.left.reshape(3, 4)[:, 0].tolist() == [-1] * 3 and g.left[5] == 4
    assert g.order.tolist() == list(range(12))
    assert g.children.shape == (12, 2) and g.last.tolist() == [11]
    b = G.batch_grids([G.grid(1, 2, D, np.random.default_rng(1)), g])
    assert b.up[2 + 4] == 2 and b.left[2 + 1] == 2 and b.last.tolist() == [1, 13]
    assert S.dag_heights(b.children).max() == 3 + 4 - 2
    with pytest.raises(ValueError):
        G.grid(0, 3, D, np.random.default_rng(0))


def test_chain_structure():
    c = G.chains([3, 0, 2], np.random.default_rng(0), V)
    assert c.prev.tolist() == [-1, 0, 1, -1, 3] and c.order.tolist() == [0, 1, 2, 3, 4]
    assert c.last.tolist() == [2, -1, 4] and c.children.shape == (5, 1)
    ci = G.chains([3, 1, 2], np.random.default_rng(0), V, interleave=True)
    assert ci.order.tolist() == [0, 3, 4, 1, 5, 2]
    b = G.batch_chains([c, ci])
    assert b.prev[5 + 1] == 5 and b.order[5:].tolist() == [5, 8, 9, 6, 10, 7]
    assert ((b.words >= 1) & (b.words < V)).all()


# ---------------------------------------------------------------------------------------------------------------
# cortex.TreeRec


@pytest.fixture(scope="module")
def treerec_models(params):
    return {m: MODULES[m].build_treerec(params[m]) for m in MODULES}


@pytest.fixture(scope="module")
def lowered_sessions(treerec_models):
    return {m: session(lower_treerec(tm)) for m, tm in treerec_models.items()}


@pytest.mark.parametrize("model", list(MODULES))
def test_treerec_checker(treerec_models, model):
    register_schema()
    onnx.checker.check_model(treerec_models[model], full_check=True)
    assert treerec_models[model].ir_version == 10


@pytest.mark.parametrize("model,name", CASES)
def test_treerec_reference_evaluator(params, treerec_models, model, name):
    s = STRUCTS[model][name]
    want = reference(model, params[model], s)
    got = ReferenceEvaluator(treerec_models[model], new_ops=[TreeRecOp]).run(None, treerec_feeds(model, s))
    close(got, want, f"{model} {name}")


@pytest.mark.parametrize("model,name", CASES)
def test_treerec_lowered_ort(params, lowered_sessions, model, name):
    s = STRUCTS[model][name]
    close(lowered_sessions[model].run(None, treerec_feeds(model, s)), reference(model, params[model], s),
          f"{model} {name}")


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.integers(1, 5), cols=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_dagrnn_random_grids_lowered(params, lowered_sessions, rows, cols, seed):
    g = G.grid(rows, cols, D, np.random.default_rng(seed))
    close(lowered_sessions["dagrnn"].run(None, treerec_feeds("dagrnn", g)), reference("dagrnn", params["dagrnn"], g))


def test_dagrnn_row_major_is_any_topological_order(params):
    """The DAG result does not depend on which valid order visits it (column-major, anti-diagonals)."""
    g = G.grid(3, 4, D, np.random.default_rng(3))
    want = dagrnn.reference(params["dagrnn"], g)
    ids = np.arange(12).reshape(3, 4)
    col_major = ids.T.reshape(-1)
    diag = np.array(sorted(range(12), key=lambda v: (v // 4 + v % 4, v)))
    for order in (col_major, diag):
        close(dagrnn.reference(params["dagrnn"], g.features, g.up, g.left, order), want)


def test_mvrnn_matrix_state_is_a_product_of_states(params):
    """Hand check of one internal node: a = tanh(W [A_r a_l; A_l a_r] + b), A = W_M1 A_l + W_M2 A_r."""
    p = params["mvrnn"]
    f = S.random_tree(2, np.random.default_rng(0), V)
    a, A = mvrnn.reference(p, f)
    root = int(f.roots[0])
    l, r = int(f.left[root]), int(f.right[root])
    Ml, Mr = p.matrices[f.words[l]].reshape(H, H), p.matrices[f.words[r]].reshape(H, H)
    al, ar = p.embedding[f.words[l]], p.embedding[f.words[r]]
    close(a[root], np.tanh(p.W[:, :H] @ (Mr @ al) + p.W[:, H:] @ (Ml @ ar) + p.b).astype(np.float32))
    close(A[root], (p.W_M[:, :H] @ Ml + p.W_M[:, H:] @ Mr).reshape(-1).astype(np.float32))


# ---------------------------------------------------------------------------------------------------------------
# Hand-built Loop

LOOP_KW = {"mvrnn": {"leaf_test": "negative"}, "dagrnn": {"missing": "zero_row"},
           "chainlstm": {"first_test": "minus_one"}}


@pytest.fixture(scope="module")
def loop_sessions(params):
    out = {}
    for m in MODULES:
        lm = MODULES[m].build_loop(params[m])
        onnx.checker.check_model(lm, full_check=True)
        assert lm.ir_version == 10 and "Loop" in {n.op_type for n in lm.graph.node}
        out[m] = session(lm)
    return out


@pytest.mark.parametrize("model,name", CASES)
def test_build_loop_odd_orders(params, loop_sessions, model, name):
    s = STRUCTS[model][name]
    for label, order in S.odd_orders(s.order).items():
        want = reference(model, params[model], s, order, **LOOP_KW[model])
        got = loop_sessions[model].run(None, {**s.arrays(), "order": order})
        close(got, want, f"{model} {name} {label}")


def test_loop_empty_structures(loop_sessions):
    z = np.zeros(0, np.int64)
    assert [x.shape for x in loop_sessions["mvrnn"].run(None, {"words": z, "left": z, "right": z, "order": z})] == [
        (0, H), (0, H * H)]
    feeds = {"features": np.zeros((0, D), np.float32), "up": z, "left": z, "order": z}
    assert [x.shape for x in loop_sessions["dagrnn"].run(None, feeds)] == [(0, H)]
    assert [x.shape for x in loop_sessions["chainlstm"].run(None, {"words": z, "prev": z, "order": z})] == [(0, H)] * 2


def test_reference_variants_differ_only_below_minus_one(params):
    """Marking 'missing' with -2 instead of -1: the negative tests still see it, the -1 / zero-row forms wrap."""
    g = STRUCTS["dagrnn"]["3x4"]
    p = params["dagrnn"]
    up = np.where(g.up < 0, -2, g.up)
    order = np.concatenate([[g.num_nodes - 1], g.order])  # row N-1 written first: -2 (wrapping) reads it
    want = dagrnn.reference(p, g.features, g.up, g.left, order)
    close(dagrnn.reference(p, g.features, up, g.left, order), want)
    close(dagrnn.reference(p, g.features, g.up, g.left, order, missing="zero_row"), want)
    assert not np.allclose(dagrnn.reference(p, g.features, up, g.left, order, missing="zero_row"), want)
    c = STRUCTS["chainlstm"]["batch"]
    pc = params["chainlstm"]
    prev = np.where(c.prev < 0, -2, c.prev)
    order = np.concatenate([c.order, c.order])  # second pass: rows N-2 (what -2 wraps to) are written
    want = chainlstm.reference(pc, c.words, c.prev, order)
    close(chainlstm.reference(pc, c.words, prev, order), want)
    assert not np.allclose(chainlstm.reference(pc, c.words, prev, order, first_test="minus_one")[0], want[0])
    t = STRUCTS["mvrnn"]["small"]
    left = np.where(t.left < 0, -2, t.left)
    close(mvrnn.reference(params["mvrnn"], t.words, left, t.right, t.order), mvrnn.reference(params["mvrnn"], t))


def test_out_of_range_raises(params, loop_sessions):
    g = STRUCTS["dagrnn"]["3x4"]
    bad = {**g.arrays(), "up": np.where(g.up < 0, g.up, g.num_nodes + 3)}
    with pytest.raises(IndexError):
        dagrnn.reference(params["dagrnn"], *bad.values())
    with pytest.raises(Exception):  # noqa: B017 - ORT raises its own error type
        loop_sessions["dagrnn"].run(None, bad)
    c = STRUCTS["chainlstm"]["len6"]
    with pytest.raises(IndexError):
        chainlstm.reference(params["chainlstm"], c.words, np.where(c.prev < 0, -1, 99), c.order)


# ---------------------------------------------------------------------------------------------------------------
# TorchScript exports of natural PyTorch modules

STYLES = list(TB.STYLES)


def _export_example(model: str):
    rng = np.random.default_rng(11)
    if model == "mvrnn":
        return S.batch([S.random_tree(k, rng, V) for k in (3, 4)])
    if model == "dagrnn":
        return G.grid(2, 3, D, rng)
    return G.chains([2, 3], rng, V)


@pytest.fixture(scope="module", params=STYLES)
def torch_export(request, params, tmp_path_factory):
    if not HAS_TORCH:
        pytest.skip("torch is not installed")
    style = request.param
    model = TB.STYLES[style][0]
    path = tmp_path_factory.mktemp("export") / f"{style}.onnx"
    example = _export_example(model)
    TB.export(style, params[model], path, example)
    m = onnx.load(str(path))
    assert "Loop" in {n.op_type for n in m.graph.node}, f"{style}: no Loop in the export"
    return style, model, session(str(path)), example


def test_torch_export_matches_reference(params, torch_export):
    style, model, sess, example = torch_export
    kw = TB.REFERENCE_KWARGS[style]
    for name, s in STRUCTS[model].items():
        assert s.num_nodes != example.num_nodes, "test N must differ from the export example's"
        for label, order in S.odd_orders(s.order).items():
            want = reference(model, params[model], s, order, **kw)
            got = sess.run(None, {**s.arrays(), "order": order})
            close(got, want, f"{style} {name} {label}")


@pytest.mark.parametrize("style", STYLES)
def test_torch_eager_matches_reference(params, style):
    if not HAS_TORCH:
        pytest.skip("torch is not installed")
    import torch

    model = TB.STYLES[style][0]
    m = TB.make_module(style, params[model])
    for name, s in STRUCTS[model].items():
        with torch.no_grad():
            got = m(*(torch.from_numpy(s.arrays()[k]) for k in TB.INPUT_NAMES[model]))
        close(tuple(t.numpy() for t in as_tuple(got)), reference(model, params[model], s, **TB.REFERENCE_KWARGS[style]),
              f"{style} {name}")


def test_styles_cover_models():
    models = [m for m, _ in TB.STYLES.values()]
    assert models.count("mvrnn") >= 1 and models.count("dagrnn") >= 2 and models.count("chainlstm") >= 1
    assert set(TB.REFERENCE_KWARGS) == set(TB.STYLES)

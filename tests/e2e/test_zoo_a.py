"""Zoo A: TreeFC, TreeRNN, TreeGRU, Child-Sum TreeLSTM. Every form (TreeRec under the onnx reference evaluator and
lowered into ONNX Runtime, the hand-built Loop, the TorchScript exports) checked against the numpy reference."""

from __future__ import annotations

import functools
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator

from cortex.examples import structures as S
from cortex.treerec import TreeRecOp, lower_treerec, register_schema
from onnx_ops.zoo import childsum, torch_models_a, treefc, treegru, treernn

SST = S.sst_dir_default()
HAS_TORCH = importlib.util.find_spec("torch") is not None
TOL = 1e-5
H, D, V = 12, 6, 64

BINARY = {"treefc": treefc, "treernn": treernn, "treegru": treegru}
MODELS = {**BINARY, "childsum": childsum}
#: leaf test of each binary model's hand-built Loop (``reference(..., leaf_test=...)``)
LOOP_LEAF_TEST = {"treefc": "negative", "treernn": "minus_one", "treegru": "negative"}


def session(model: onnx.ModelProto | str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    src = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def close(got, want, what=""):
    got = got if isinstance(got, (list, tuple)) else [got]
    want = want if isinstance(want, (list, tuple)) else [want]
    assert len(got) == len(want), what
    for s, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape, f"{what} state {s}: shape {a.shape} != {b.shape}"
        err = float(np.abs(a - b).max(initial=0.0))
        assert err <= TOL, f"{what} state {s}: max abs error {err}"


def as_list(x):
    return list(x) if isinstance(x, tuple) else [x]


@functools.lru_cache(maxsize=None)
def params(model: str):
    return MODELS[model].make_params(H, D, V, seed=5)


@functools.lru_cache(maxsize=None)
def treerec_model(model: str, k: int = 2) -> onnx.ModelProto:
    if model == "childsum":
        return childsum.build_treerec(params(model), max_children=k)
    if model == "treefc":
        return treefc.build_treerec(params(model), arity=k)
    assert k == 2
    return MODELS[model].build_treerec(params(model))


@functools.lru_cache(maxsize=None)
def lowered_session(model: str, k: int = 2) -> ort.InferenceSession:
    return session(lower_treerec(treerec_model(model, k)))


@functools.lru_cache(maxsize=None)
def loop_session(model: str) -> ort.InferenceSession:
    return session(MODELS[model].build_loop(params(model)))


def pad_children(f: S.NaryForest, k: int) -> S.NaryForest:
    ch = np.full((f.num_nodes, k), -1, np.int64)
    ch[:, : f.max_children] = f.children
    return S.NaryForest(f.words, ch, f.order, f.roots)


_rng = np.random.default_rng(7)
_single = [S.random_tree(k, _rng, V) for k in (1, 2, 5, 11)]
FORESTS = {
    "single_leaf": _single[0],
    "small": _single[2],
    "batch": S.batch(_single),
    "sst_like": S.batch(S.sst_like_trees(5, _rng, V)),
}
NARY = {
    "single_leaf": S.random_nary_tree(1, 3, _rng, V),
    "chain": S.random_nary_tree(6, 1, _rng, V),
    "packed": S.batch_nary([S.random_nary_tree(k, 3, _rng, V) for k in (2, 7, 15)]),
    "holes": S.batch_nary([S.random_nary_tree(k, 3, _rng, V, holes=True) for k in (1, 9, 20)]),
    "wide": S.random_nary_tree(30, 6, _rng, V, holes=True),
    "binary": S.nary_from_forest(FORESTS["batch"]),
}


def structures(model: str):
    """(name, structure) pairs for ``model``: binary Forests, or NaryForests for Child-Sum."""
    return list((NARY if model == "childsum" else FORESTS).items())


def case_ids(model):
    return [f"{model}-{name}" for name, _ in structures(model)]


ALL_CASES = [(m, name) for m in MODELS for name, _ in structures(m)]


def treerec_feeds(f) -> dict[str, np.ndarray]:
    return {"children": f.children, "words": f.words}


def k_of(f) -> int:
    return int(f.children.shape[1])


@functools.lru_cache(maxsize=1)
def sst_forests() -> list[S.Forest]:
    if SST is None:
        pytest.skip("SST directory not found (../shared/data/sst or CORTEX_SST_DIR)")
    return S.read_sst(SST, split="test", vocab_size=V, limit=20)


def sst_structure(model: str, k: int = 2):
    f = S.batch(sst_forests())
    return pad_children(S.nary_from_forest(f), k) if model == "childsum" else f


def ref_with_order(model: str, f, order, leaf_test: str = "negative"):
    """The numpy reference of ``model`` on structure ``f`` visited in ``order``."""
    p = params(model)
    if model == "childsum":
        return as_list(childsum.reference(p, f.words, f.children, order))
    return as_list(MODELS[model].reference(p, f.words, f.left, f.right, order, leaf_test=leaf_test))


# ---------------------------------------------------------------------------------------------------------------
# Models are valid ONNX


@pytest.mark.parametrize("model", list(MODELS))
def test_checker(model):
    register_schema()
    k = 3 if model == "childsum" else 2
    m = treerec_model(model, k)
    onnx.checker.check_model(m, full_check=True)
    low = lower_treerec(m)
    onnx.checker.check_model(low, full_check=True)
    assert all(o.domain != "cortex" for o in low.opset_import)
    loop = MODELS[model].build_loop(params(model))
    onnx.checker.check_model(loop, full_check=True)
    assert "Loop" in {n.op_type for n in loop.graph.node}
    for mm in (m, low, loop):
        assert mm.ir_version == 10
        assert next(o.version for o in mm.opset_import if o.domain == "") == 17


def test_params_shapes_and_scale():
    for name, mod in MODELS.items():
        p = mod.make_params(H, D, V, seed=1)
        assert (p.hidden, p.embed_dim, p.vocab) == (H, D, V), name
        for field, arr in vars(p).items():
            assert arr.dtype == np.float32, (name, field)
            assert np.abs(arr).max() <= 1.0, (name, field)
        q = mod.make_params(H, D, V, seed=1)
        assert all(np.array_equal(getattr(p, a), getattr(q, a)) for a in vars(p)), "seeded"
        assert mod.Params is type(p)


# ---------------------------------------------------------------------------------------------------------------
# TreeRec: onnx reference evaluator and lowering in ONNX Runtime


@pytest.mark.parametrize("model,name", ALL_CASES)
def test_treerec_reference_evaluator(model, name):
    f = dict(structures(model))[name]
    want = as_list(MODELS[model].reference(params(model), f))
    ev = ReferenceEvaluator(treerec_model(model, k_of(f)), new_ops=[TreeRecOp])
    close(ev.run(None, treerec_feeds(f)), want, f"{model} {name}")


@pytest.mark.parametrize("model,name", ALL_CASES)
def test_lowered_treerec_ort(model, name):
    f = dict(structures(model))[name]
    want = as_list(MODELS[model].reference(params(model), f))
    close(lowered_session(model, k_of(f)).run(None, treerec_feeds(f)), want, f"{model} {name}")


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lowered_treerec_permuted_ids(model, seed):
    """TreeRec does not care how nodes are numbered: permute ids, visit by height."""
    rng = np.random.default_rng(seed)
    if model == "childsum":
        f = S.batch_nary([S.random_nary_tree(int(k), 3, rng, V, holes=True) for k in rng.integers(1, 14, 3)])
    else:
        f = S.batch([S.random_tree(int(k), rng, V) for k in rng.integers(1, 12, 3)])
    perm = rng.permutation(f.num_nodes)
    inv = np.argsort(perm)
    children = np.where(f.children >= 0, inv[np.maximum(f.children, 0)], -1)[perm]
    words = f.words[perm]
    order = np.argsort(S.dag_heights(children), kind="stable")
    p = params(model)
    if model == "childsum":
        want = as_list(childsum.reference(p, words, children, order))
    else:
        want = as_list(MODELS[model].reference(p, words, children[:, 0], children[:, 1], order))
    close(lowered_session(model, children.shape[1]).run(None, {"children": children, "words": words}), want)


@pytest.mark.parametrize("model", list(MODELS))
def test_treerec_sst(model):
    f = sst_structure(model)
    want = as_list(MODELS[model].reference(params(model), f))
    close(lowered_session(model, 2).run(None, treerec_feeds(f)), want, "lowered")
    small = S.batch(sst_forests()[:3])
    small = S.nary_from_forest(small) if model == "childsum" else small
    ev = ReferenceEvaluator(treerec_model(model, 2), new_ops=[TreeRecOp])  # slow: only 3 sentences
    close(ev.run(None, treerec_feeds(small)), as_list(MODELS[model].reference(params(model), small)), "evaluator")


def test_treefc_treerec_any_arity():
    """TreeFC's TreeRec sums K child rows; with a binary forest padded by -1 columns it equals the binary model,
    and on n-ary trees it equals a direct numpy sum over present children."""
    p = params("treefc")
    f = FORESTS["batch"]
    padded = pad_children(S.nary_from_forest(f), 4)
    close(lowered_session("treefc", 4).run(None, treerec_feeds(padded)), [treefc.reference(p, f)])
    nf = NARY["holes"]
    h = np.zeros((nf.num_nodes, H), np.float32)
    for v in nf.order:
        kids = nf.children[v][nf.children[v] >= 0]
        h[v] = treefc.leaf_cell(p, p.embedding[nf.words[v]]) if kids.size == 0 else treefc.internal_cell(
            p, h[kids].sum(0))
    close(lowered_session("treefc", 3).run(None, treerec_feeds(nf)), [h])
    ev = ReferenceEvaluator(treerec_model("treefc", 3), new_ops=[TreeRecOp])
    close(ev.run(None, treerec_feeds(nf)), [h])


def test_treerec_rejects_bad_structures():
    """The reference evaluator raises on cycles and on ids outside [-1, N) (Child-Sum: -2 too)."""
    words = np.array([1, 0, 0], np.int64)
    for model in MODELS:
        ev = ReferenceEvaluator(treerec_model(model, 2), new_ops=[TreeRecOp])
        with pytest.raises(ValueError, match="cycle"):
            ev.run(None, {"children": np.array([[-1, -1], [0, 2], [1, 0]], np.int64), "words": words})
        with pytest.raises(ValueError, match="out of range"):
            ev.run(None, {"children": np.array([[-1, -1], [0, -2], [0, 1]], np.int64), "words": words})


# ---------------------------------------------------------------------------------------------------------------
# Hand-built Loop in ONNX Runtime


def loop_feeds(model, f, order):
    return {**f.arrays(), "order": np.asarray(order, np.int64)}


@pytest.mark.parametrize("model,name", ALL_CASES)
def test_build_loop_odd_orders(model, name):
    f = dict(structures(model))[name]
    sess = loop_session(model)
    for label, order in S.odd_orders(f.order).items():
        want = ref_with_order(model, f, order, LOOP_LEAF_TEST.get(model, "negative"))
        close(sess.run(None, loop_feeds(model, f, order)), want, f"{model} {name} {label}")


@pytest.mark.parametrize("model", list(MODELS))
def test_build_loop_sst(model):
    f = sst_structure(model, 3)
    want = ref_with_order(model, f, f.order, LOOP_LEAF_TEST.get(model, "negative"))
    close(loop_session(model).run(None, loop_feeds(model, f, f.order)), want)


@pytest.mark.parametrize("model", list(BINARY))
def test_build_loop_leaf_test(model):
    """Leaves marked -2: a "negative" Loop still sees leaves, a "minus_one" Loop reads (wrapped) rows -2."""
    f = FORESTS["batch"]
    left = f.left.copy()
    left[left < 0] = -2
    lt = LOOP_LEAF_TEST[model]
    p = params(model)
    want = MODELS[model].reference(p, f.words, left, f.right, f.order, leaf_test=lt)
    (got,) = loop_session(model).run(None, {**f.arrays(), "left": left})
    close(got, want)
    same = np.allclose(want, MODELS[model].reference(p, f))
    assert same == (lt == "negative")


def test_childsum_loop_masks_any_negative_child():
    """Child-Sum: every negative id is a missing child (masked, never wrapped), in the Loop and the reference."""
    f = NARY["holes"]
    ch = f.children.copy()
    ch[ch < 0] = np.random.default_rng(0).integers(-7, 0, size=int((ch < 0).sum()))
    close(loop_session("childsum").run(None, {**f.arrays(), "children": ch}),
          as_list(childsum.reference(params("childsum"), f)))


@pytest.mark.parametrize("model", list(MODELS))
def test_build_loop_out_of_range(model):
    f = (NARY["packed"] if model == "childsum" else FORESTS["small"])
    feeds = f.arrays()
    root = int(f.roots[0])
    if model == "childsum":
        feeds["children"] = feeds["children"].copy()
        feeds["children"][root, 0] = f.num_nodes + 3
        with pytest.raises(IndexError):
            childsum.reference(params(model), feeds["words"], feeds["children"], feeds["order"])
    else:
        feeds["left"] = feeds["left"].copy()
        feeds["left"][root] = f.num_nodes + 3
        with pytest.raises(IndexError):
            MODELS[model].reference(params(model), feeds["words"], feeds["left"], feeds["right"], feeds["order"])
    with pytest.raises(Exception):  # noqa: B017 - ORT raises its own error type
        loop_session(model).run(None, feeds)


@pytest.mark.parametrize("model", list(MODELS))
def test_empty_forest(model):
    z = np.zeros(0, np.int64)
    k = 3 if model == "childsum" else 2
    e = {"children": np.zeros((0, k), np.int64), "words": z}
    for out in (ReferenceEvaluator(treerec_model(model, k), new_ops=[TreeRecOp]).run(None, e),
                lowered_session(model, k).run(None, e)):
        assert [x.shape for x in out] == [(0, H)] * len(out)
    feeds = {"words": z, "children": e["children"], "order": z} if model == "childsum" else {
        "words": z, "left": z, "right": z, "order": z}
    out = loop_session(model).run(None, feeds)
    assert [x.shape for x in out] == [(0, H)] * (2 if model == "childsum" else 1)


# ---------------------------------------------------------------------------------------------------------------
# TorchScript exports of natural PyTorch models

STYLES = list(torch_models_a.STYLES)


def test_styles_cover_models():
    models = [m for m, _ in torch_models_a.STYLES.values()]
    assert set(models) == set(MODELS)
    assert models.count("childsum") >= 2


@functools.lru_cache(maxsize=None)
def _export(style: str, tmp: str) -> ort.InferenceSession:
    model = torch_models_a.STYLES[style][0]
    rng = np.random.default_rng(11)
    if model == "childsum":
        example = S.batch_nary([S.random_nary_tree(k, 3, rng, V) for k in (3, 4)])
    else:
        example = S.batch([S.random_tree(k, rng, V) for k in (3, 4)])
    path = Path(tmp) / f"{style}.onnx"
    torch_models_a.export(style, params(model), path, example)
    m = onnx.load(str(path))
    assert any(n.op_type == "Loop" for n in m.graph.node), "the export keeps the loop (dynamic L)"
    return session(str(path))


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    if not HAS_TORCH:
        pytest.skip("torch is not installed")
    return str(tmp_path_factory.mktemp("zoo_a_exports"))


def torch_structures(model):
    """Structures whose N and L differ from the export example (N = 12 binary, 7 Child-Sum); Child-Sum at K = 3."""
    if model == "childsum":
        return [("holes", NARY["holes"]), ("single_leaf", NARY["single_leaf"]),
                ("binary_padded", pad_children(NARY["binary"], 3)), ("chain_padded", pad_children(NARY["chain"], 3))]
    return [(n, FORESTS[n]) for n in ("single_leaf", "batch", "sst_like")]


@pytest.mark.parametrize("style", STYLES)
def test_torch_export_matches_reference(style, export_dir):
    model = torch_models_a.STYLES[style][0]
    sess = _export(style, export_dir)
    for name, f in torch_structures(model):
        for label, order in S.odd_orders(f.order).items():
            want = ref_with_order(model, f, order)
            close(sess.run(None, loop_feeds(model, f, order)), want, f"{style} {name} {label}")


@pytest.mark.parametrize("style", STYLES)
def test_torch_export_sst(style, export_dir):
    model = torch_models_a.STYLES[style][0]
    sess = _export(style, export_dir)
    f = sst_structure(model, 3)
    close(sess.run(None, loop_feeds(model, f, f.order)), ref_with_order(model, f, f.order))


@pytest.mark.parametrize("style", STYLES)
def test_torch_eager_and_scripted_match_reference(style):
    if not HAS_TORCH:
        pytest.skip("torch is not installed")
    import torch

    model = torch_models_a.STYLES[style][0]
    f = NARY["holes"] if model == "childsum" else FORESTS["batch"]
    want = as_list(MODELS[model].reference(params(model), f))
    m = torch_models_a.make_module(style, params(model))
    args = [torch.from_numpy(a) for a in f.arrays().values()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(m)
    with torch.no_grad():
        for mod in (m, scripted):
            close([t.numpy() for t in as_list(mod(*args))], want, style)


# ---------------------------------------------------------------------------------------------------------------
# n-ary structures


def test_random_nary_tree_is_a_tree():
    rng = np.random.default_rng(3)
    for n in (1, 2, 5, 40):
        for k in (1, 2, 5):
            for holes in (False, True):
                f = S.random_nary_tree(n, k, rng, V, holes=holes)
                assert f.children.shape == (n, k) and f.children.dtype == np.int64
                kids = f.children[f.children >= 0]
                assert sorted(kids.tolist() + f.roots.tolist()) == list(range(n)), "one parent each"
                pos = np.empty(n, np.int64)
                pos[f.order] = np.arange(n)
                for v in range(n):
                    assert all(pos[c] < pos[v] for c in f.children[v] if c >= 0)
                    is_leaf = bool((f.children[v] < 0).all())
                    assert (f.words[v] > 0) == is_leaf
                    if not holes:
                        row = f.children[v]
                        assert not ((row[:-1] < 0) & (row[1:] >= 0)).any(), "packed rows"
    b = S.batch_nary([S.random_nary_tree(5, 2, rng, V), S.random_nary_tree(4, 3, rng, V)])
    assert b.children.shape == (9, 3) and sorted(b.order.tolist()) == list(range(9))
    assert b.roots.tolist()[1] >= 5


@pytest.mark.parametrize("style", STYLES)
def test_torch_export_empty_forest(style, export_dir):
    model = torch_models_a.STYLES[style][0]
    z = np.zeros(0, np.int64)
    feeds = {"words": z, "children": np.zeros((0, 3), np.int64), "order": z} if model == "childsum" else {
        "words": z, "left": z, "right": z, "order": z}
    out = _export(style, export_dir).run(None, feeds)
    assert [x.shape for x in out] == [(0, H)] * (2 if model == "childsum" else 1)

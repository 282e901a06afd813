"""The PyTorch cell road (cortex.torch): six recursive models go from their cells (onnx_ops.zoo.cells) to one
cortex.TreeRec model, written in its portable form, which runs in plain ONNX Runtime and through cortex.convert
--strict, and returns what the cells return in eager PyTorch (run_reference), within 1e-4, on SST trees and random
structures."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")

import cortex  # noqa: E402
import cortex.torch as ct  # noqa: E402
from onnx_ops import grids  # noqa: E402
from cortex.examples import structures as st  # noqa: E402
from onnx_ops import zoo  # noqa: E402
from cortex.treerec import TreeRecOp, defined_names, lower_treerec  # noqa: E402
from cortex.treerec.portable import raise_treerec  # noqa: E402
from onnx_ops.zoo import cells  # noqa: E402

HIDDEN = 8
TOL = 1e-4
CHILDSUM_ARITY = 3  # wider than SST's 2: every SST node gets a padded slot

def _sst(count: int, vocab: int) -> list:
    path = st.sst_dir_default()
    if path is None:
        return st.sst_like_trees(count, np.random.default_rng(11), vocab)
    return st.read_sst(path, split="test", vocab_size=vocab, limit=count)


def _structures(cm: cells.CellModel) -> dict:
    """name -> feeds: SST trees (all but the grid model) and random structures of the model's kind."""
    rng = np.random.default_rng(7)
    vocab = cm.vocab or zoo.VOCAB
    if cm.structure == "grid":
        sizes = [(3, 4), (1, 1), (5, 2), (1, 6), (6, 6)]
        return {"grids": cm.feeds(grids.batch_grids([grids.grid(r, c, zoo.GRID_FEATURES, rng) for r, c in sizes])),
                "one_cell": cm.feeds(grids.grid(1, 1, zoo.GRID_FEATURES, rng))}
    sst = _sst(6, vocab)
    if cm.structure == "binary":
        return {"sst": cm.feeds(st.batch(sst)), "random": cm.feeds(st.batch(st.sst_like_trees(4, rng, vocab))),
                "one_leaf": cm.feeds(st.Forest(*(np.array([x], np.int64) for x in (3, -1, -1, 0, 0))))}
    if cm.structure == "nary":
        padded = st.batch_nary([st.nary_from_forest(t) for t in sst]
                               + [st.random_nary_tree(2, CHILDSUM_ARITY, rng, vocab)])  # K = 3
        wide = st.batch_nary([st.random_nary_tree(n, CHILDSUM_ARITY, rng, vocab, holes=True) for n in (5, 30, 17)])
        return {"sst_padded": cm.feeds(padded), "random_holes": cm.feeds(wide)}
    assert cm.structure == "ast"
    return {"random_ast": cm.feeds(st.batch_nary(cells.ast_trees(4, rng))),
            "sst": cm.feeds(st.batch_nary([st.nary_from_forest(t) for t in sst]))}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """name -> (cells, {label: feeds}, path of the exported model, ModelProto); each model exported once."""
    cache = {}

    def get(name):
        if name not in cache:
            c = cells.make_cells(name, HIDDEN, seed=3)
            inputs = _structures(cells.MODELS[name])
            path = tmp_path_factory.mktemp(name) / "model.onnx"
            model = ct.export(c.leaf, c.internal, next(iter(inputs.values())), path, **c.options)
            cache[name] = c, inputs, path, model
        return cache[name]

    return get


def _close(got, want, what):
    assert len(got) == len(want), what
    for g, w in zip(got, want):
        assert g.shape == w.shape, what
        err = float(np.max(np.abs(g - w))) if g.size else 0.0
        assert err <= TOL, f"{what}: max abs error {err:.3g}"


@pytest.mark.parametrize("name", list(cells.MODELS))
def test_the_exported_file_runs_in_plain_ort_and_matches_eager(name, exports):
    c, inputs, path, model = exports(name)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # nothing of Cortex involved
    assert [o.name for o in session.get_outputs()] == c.options["state_names"]
    for label, feeds in inputs.items():
        want = ct.run_reference(c.leaf, c.internal, feeds, **c.options)
        _close(session.run(None, feeds), want, f"{name} {label}")


@pytest.mark.parametrize("name", list(cells.MODELS))
def test_converts_strict_and_matches_eager(name, exports, tmp_path):
    c, inputs, path, _ = exports(name)
    out = tmp_path / "model.cortex.onnx"
    report = cortex.convert(str(path), str(out), strict=True)
    assert [r.converted for r in report.regions] == [True]
    session = cortex.InferenceSession(str(out))
    for label, feeds in inputs.items():
        want = ct.run_reference(c.leaf, c.internal, feeds, **c.options)
        _close(session.run(None, feeds), want, f"{name} {label} converted")


@pytest.mark.parametrize("name", [n for n, cm in cells.MODELS.items() if cm.zoo and n != "childsum"])
def test_cells_compute_the_zoo_models_math(name):
    """The four cell models with a zoo twin return the zoo's numpy reference (same weights, same feeds)."""
    cm, zm = cells.MODELS[name], zoo.MODELS[cells.MODELS[name].zoo]
    c = cells.make_cells(name, HIDDEN, seed=2)
    p = zm.make_params(HIDDEN, seed=2)
    rng = np.random.default_rng(1)
    s = (grids.batch_grids([grids.grid(4, 5, zoo.GRID_FEATURES, rng)]) if cm.structure == "grid"
         else st.batch(_sst(4, cm.vocab or zoo.VOCAB)))
    got = ct.run_reference(c.leaf, c.internal, cm.feeds(s), **c.options)
    order = {"treelstm": ["h", "c"], "treegru": ["h"], "mvrnn": ["a", "A"], "dagrnn": ["h"]}[name]
    want = dict(zip(order, zm.reference(p, s)))
    _close(got, [want[n] for n in c.options["state_names"]], name)


def _top_names(g: onnx.GraphProto) -> set:
    return {vi.name for vi in g.input} | {i.name for i in g.initializer} | {o for n in g.node for o in n.output}


@pytest.mark.parametrize("name", list(cells.MODELS))
def test_parameters_stored_once_and_names_unique(name, exports):
    """Every parameter is one main-graph initializer however many cells use it (DAG-RNN's W, the AST's embedding
    and input projection, Child-Sum's whole cell); no body value name collides with another scope's."""
    c, _, _, model = exports(name)
    model, problem = raise_treerec(model)  # the TreeRec node the portable file records
    assert problem is None
    params = {}
    for cell in (c.leaf, c.internal):
        for t in list(cell.parameters()) + list(cell.buffers()):
            params[(t.data_ptr(), tuple(t.shape))] = t
    main = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    stored = [a for a in main.values() if a.dtype == np.float32 and a.size > 1]
    assert len(stored) == len(params), f"{name}: {sorted(main)}"
    for t in params.values():
        assert any(a.shape == tuple(t.shape) and np.array_equal(a, t.detach().numpy()) for a in stored)
    treerec = next(n for n in model.graph.node if n.op_type == "TreeRec")
    bodies = {a.name: a.g for a in treerec.attribute if a.type == onnx.AttributeProto.GRAPH}
    for g in bodies.values():  # the bodies keep only the exporters' constants (shapes, a folded W·0), no parameter
        for i in g.initializer:
            a = onnx.numpy_helper.to_array(i)
            assert not any(a.shape == tuple(t.shape) and np.array_equal(a, t.detach().numpy())
                           for t in params.values()), f"{name}: parameter {i.name} inside a body"
    leaf, internal = defined_names(bodies["leaf_body"]), defined_names(bodies["internal_body"])
    top = _top_names(model.graph)
    assert not leaf & internal and not leaf & top and not internal & top
    if name == "dagrnn":
        assert sorted(main) == ["internal.U_left.weight", "internal.U_up.weight", "leaf.W.bias", "leaf.W.weight"]


@pytest.mark.parametrize("name", ["treegru", "dagrnn"])
def test_onnx_reference_evaluator_reads_outer_scope_weights(name, exports):
    """onnx.reference runs the exported model (its bodies read the main graph's initializers) like the cells."""
    from onnx.reference import ReferenceEvaluator

    c, _, _, model = exports(name)
    model, _ = raise_treerec(model)  # the TreeRec node the portable file records, run by TreeRecOp
    rng = np.random.default_rng(0)
    s = grids.grid(2, 3, zoo.GRID_FEATURES, rng) if name == "dagrnn" else st.sst_like_trees(1, rng, 50)[0]
    feeds = cells.MODELS[name].feeds(s)
    got = ReferenceEvaluator(model, new_ops=[TreeRecOp]).run(None, feeds)
    _close(got, ct.run_reference(c.leaf, c.internal, feeds, **c.options), f"{name} onnx.reference")


def test_child_sum_padding_is_exact():
    """treelstm.pytorch's cell on padded children: a -1 slot is a zero child, which adds nothing to sum(child_h)
    and whose forget gate multiplies its zero c; the result equals the unpadded one."""
    c = cells.make_cells("childsum", HIDDEN, seed=4)
    f = st.nary_from_forest(st.batch(_sst(3, zoo.VOCAB)))
    padded = np.full((f.num_nodes, 4), -1, np.int64)
    padded[:, [0, 2]] = f.children  # holes: slots 1 and 3 empty everywhere
    a = ct.run_reference(c.leaf, c.internal, {"children": f.children, "words": f.words}, children="stack")
    b = ct.run_reference(c.leaf, c.internal, {"children": padded, "words": f.words}, children="stack")
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)


def test_head_and_one_call_convert(tmp_path):
    """A head after the recursion (sentiment logits from h), with the tables kept; one call exports and converts;
    the converted model and the lowering agree with the eager cells."""
    c = cells.make_cells("treelstm", HIDDEN, seed=5)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        head = torch.nn.Sequential(torch.nn.Linear(HIDDEN, 5), torch.nn.LogSoftmax(dim=1)).eval()

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.classify = head

        def forward(self, h, c_):
            return self.classify(h)

    feeds = cells.MODELS["treelstm"].feeds(st.batch(_sst(5, zoo.VOCAB)))
    out = tmp_path / "sentiment.cortex.onnx"
    report = ct.convert(c.leaf, c.internal, feeds, out, head=Head().eval(), keep_states=True,
                        output_names=["logits"], **c.options)
    assert [r.converted for r in report.regions] == [True]
    want = ct.run_reference(c.leaf, c.internal, feeds, head=Head().eval(), keep_states=True, **c.options)
    src = onnx.load(str(tmp_path / "sentiment.onnx"))
    assert [o.name for o in src.graph.output] == ["logits", "h", "c"]
    lowered = ort.InferenceSession(lower_treerec(src).SerializeToString(), providers=["CPUExecutionProvider"])
    _close(lowered.run(None, feeds), want, "head, lowering")
    _close(cortex.InferenceSession(str(out)).run(None, feeds), want, "head, converted")


def test_torchscript_exporter_and_fallback(tmp_path):
    """exporter='torchscript' gives the same model semantics (and converts); with 'auto', a cell the dynamo
    exporter cannot export (a data-dependent branch) falls back to the trace, with a warning."""
    c = cells.make_cells("treegru", HIDDEN, seed=6)
    feeds = cells.MODELS["treegru"].feeds(st.batch(_sst(3, zoo.VOCAB)))
    model = ct.export(c.leaf, c.internal, feeds, tmp_path / "ts.onnx", exporter="torchscript", **c.options)
    assert {p.key: p.value for p in model.metadata_props}["cortex.torch.internal_exporter"] == "torchscript"
    report = cortex.convert(str(tmp_path / "ts.onnx"), str(tmp_path / "ts.cortex.onnx"), strict=True)
    assert [r.converted for r in report.regions] == [True]
    want = ct.run_reference(c.leaf, c.internal, feeds, **c.options)
    _close(cortex.InferenceSession(str(tmp_path / "ts.cortex.onnx")).run(None, feeds), want, "torchscript")

    class Branchy(torch.nn.Module):
        def forward(self, word):
            return torch.ones(1, 2) if bool(word.sum() > 10**9) else torch.zeros(1, 2)

    class Sum(torch.nn.Module):
        def forward(self, word, h_l, h_r):
            return h_l + h_r + 1

    with pytest.warns(UserWarning, match="TorchScript trace"):
        model = ct.export(Branchy(), Sum(), feeds, children="list")
    assert {p.key: p.value for p in model.metadata_props}["cortex.torch.leaf_exporter"] == "torchscript"


def test_bad_cells_are_clear_errors():
    c = cells.make_cells("treegru", HIDDEN)
    feeds = cells.MODELS["treegru"].feeds(st.batch(_sst(1, zoo.VOCAB)))

    class Wide(torch.nn.Module):
        def forward(self, h_l, h_r):
            return torch.cat([h_l, h_r], dim=1)

    with pytest.raises(TypeError, match="nn.Module"):
        ct.export(lambda w: w, c.internal, feeds, **c.options)
    with pytest.raises(ValueError, match="widths"):
        ct.export(c.leaf, Wide(), feeds, children="list", internal_inputs=False)
    with pytest.raises(ValueError, match="children"):
        ct.export(c.leaf, c.internal, {"words": feeds["words"]}, **c.options)
    with pytest.raises(ValueError, match="children must be one of"):
        ct.run_reference(c.leaf, c.internal, feeds, children="tuple")
    bad = dict(feeds, children=np.where(feeds["children"] >= 0, feeds["children"] + 10**6, -1))
    with pytest.raises(ValueError, match="TreeRec"):
        ct.run_reference(c.leaf, c.internal, bad, children="list", internal_inputs=False)


def test_import_without_torch():
    """``import cortex`` works without torch; ``import cortex.torch`` raises ImportError naming torch."""
    code = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None  # as if torch were not installed
        import cortex
        try:
            import cortex.torch
        except ImportError as e:
            print("ImportError", e.name)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["ImportError", "torch"]

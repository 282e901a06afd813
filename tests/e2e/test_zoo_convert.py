"""Every zoo model, in every form (TreeRec, hand-built Loop/If, each TorchScript export style), converts with
--strict and returns what the original returns: on SST trees (or SST-shaped ones), grids of several sizes,
chains, and odd visit orders."""
from __future__ import annotations

import importlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import cortex
from cortex.examples import structures as st
from cortex.treerec import lower_treerec
from onnx_ops.zoo import MODELS, batch, structures

HIDDEN = 8
TOL = 1e-4


def _torch_styles():
    """(model, style, export module) for every TorchScript export style of the zoo (TreeLSTM's own styles are
    covered in test_pipeline.py)."""
    out = []
    for module_name in ("torch_models_a", "torch_models_b"):
        try:
            module = importlib.import_module(f"onnx_ops.zoo.{module_name}")
            import torch  # noqa: F401
        except ImportError:
            continue
        for style, (model, _) in module.STYLES.items():
            out.append((model, style, module))
    return out


FORMS = [(name, "loop", None) for name in MODELS] + [(name, "treerec", None) for name in MODELS] + \
    [(m, s, mod) for m, s, mod in _torch_styles() if m in MODELS]


def _example(kind, rng, count=3):
    return batch(kind, structures(kind, count, rng, vocab=50))


@pytest.fixture(scope="module", params=FORMS, ids=[f"{m}-{s}" for m, s, _ in FORMS])
def converted(request, tmp_path_factory):
    name, form, export_module = request.param
    entry = MODELS[name]
    params = entry.make_params(HIDDEN, seed=1)
    d = tmp_path_factory.mktemp(f"{name}_{form}")
    src = d / "model.onnx"
    if form == "loop":
        onnx.save(entry.build_loop(params), str(src))
    elif form == "treerec":
        onnx.save(entry.build_treerec(params), str(src))
    else:
        export_module.export(form, params, str(src), _example(entry.structure, np.random.default_rng(9)))
    out = d / "model.cortex.onnx"
    report = cortex.convert(str(src), str(out), strict=True)
    assert [r.converted for r in report.regions] == [True]
    if form in ("loop", "treerec"):  # built by hand: no If returns a constant from outside it
        assert not report.regions[0].warnings, report.format()
    assert not any(n.op_type in ("Loop", "TreeRec") for n in onnx.load(str(out)).graph.node)
    if form == "treerec":
        lowered = d / "lowered.onnx"
        onnx.save(lower_treerec(onnx.load(str(src))), str(lowered))
        original = ort.InferenceSession(str(lowered))
    else:
        original = ort.InferenceSession(str(src))
    return entry, form, params, original, cortex.InferenceSession(str(out))


def _feeds(entry, form, structure, session):
    feeds = entry.treerec_feeds(structure) if form == "treerec" else entry.loop_feeds(structure)
    names = {i.name for i in session.get_inputs()}
    return {k: v for k, v in feeds.items() if k in names}


def _check(original, converted_session, feeds):
    expected, got = original.run(None, feeds), converted_session.run(None, feeds)
    for e, g in zip(expected, got):
        assert e.shape == g.shape
        assert np.abs(e - g).max(initial=0.0) <= TOL


def test_matches_original_on_real_structures(converted):
    entry, form, _, original, session = converted
    rng = np.random.default_rng(4)
    items = structures(entry.structure, 12, rng, sst_dir=st.sst_dir_default(), vocab=50)
    for item in items[:4]:  # batch of one
        _check(original, session, _feeds(entry, form, item, session))
    _check(original, session, _feeds(entry, form, batch(entry.structure, items), session))


def test_matches_reference(converted):
    entry, form, params, _, session = converted
    if form == "treerec":
        pytest.skip("the numpy reference follows the Loop's semantics; TreeRec is checked against its lowering")
    structure = _example(entry.structure, np.random.default_rng(5), count=4)
    expected = entry.reference(params, structure)
    got = session.run(None, _feeds(entry, form, structure, session))
    for e, g in zip(expected, got):
        assert np.abs(e[: len(g)] - g).max(initial=0.0) <= TOL


@pytest.mark.parametrize("odd", ["reversed", "twice", "all_twice", "subset"])
def test_odd_orders_match_original(converted, odd):
    entry, form, _, original, session = converted
    if form == "treerec":
        pytest.skip("TreeRec has no visit order")
    structure = _example(entry.structure, np.random.default_rng(6))
    feeds = _feeds(entry, form, structure, session)
    feeds["order"] = st.odd_orders(feeds["order"])[odd]
    _check(original, session, feeds)


def test_grids_of_several_sizes():
    entry = MODELS["dagrnn"]
    params = entry.make_params(HIDDEN, seed=2)
    from onnx_ops import grids
    import tempfile, os  # noqa: E401

    with tempfile.TemporaryDirectory() as d:
        src, out = os.path.join(d, "g.onnx"), os.path.join(d, "g.cortex.onnx")
        onnx.save(entry.build_loop(params), src)
        cortex.convert(src, out, strict=True)
        original, session = ort.InferenceSession(src), cortex.InferenceSession(out)
        rng = np.random.default_rng(0)
        for rows, cols in [(1, 1), (1, 7), (7, 1), (3, 4), (12, 12)]:
            _check(original, session, entry.loop_feeds(grids.grid(rows, cols, 64, rng)))

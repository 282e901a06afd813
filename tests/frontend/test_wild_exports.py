"""The recursive models the generality issue measured (written as PyTorch users write them, exported with the
TorchScript and the dynamo exporters) convert with --strict and return what eager PyTorch returns, on real SST trees,
synthetic ones, grids, and odd visit orders; ONNX Runtime on the original is compared too."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

pytest.importorskip("torch")

import cortex  # noqa: E402
from cortex.examples import structures as st  # noqa: E402
from onnx_ops.zoo.wild import MODELS, eager, export_model, feeds_for  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module", params=sorted(MODELS))
def converted(request, tmp_path_factory):
    name = request.param
    _, exporter, inputs, outputs, kind = MODELS[name]
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
    d = tmp_path_factory.mktemp(name)
    example = feeds_for(kind, np.random.default_rng(0), 2)
    module = export_model(name, d / "m.onnx", example)
    report = cortex.convert(str(d / "m.onnx"), str(d / "m.cortex.onnx"), strict=True)
    assert report.regions and all(r.converted for r in report.regions), report.format()
    return name, module, ort.InferenceSession(str(d / "m.onnx")), cortex.InferenceSession(str(d / "m.cortex.onnx"))


def _check(name, module, original, session, feeds):
    inputs = MODELS[name][2]
    feeds = {k: v for k, v in feeds.items() if k in inputs}
    truth = eager(module, inputs, feeds)
    got = session.run(None, feeds)
    orig = original.run(None, feeds)
    for t, g, o in zip(truth, got, orig):
        assert g.shape == t.shape
        assert np.abs(g - t).max(initial=0.0) <= TOL, f"{name}: Cortex differs from eager PyTorch"
        assert np.abs(o - t).max(initial=0.0) <= TOL, f"{name}: ONNX Runtime differs from eager PyTorch"


def test_matches_eager_on_sst_and_random_structures(converted):
    name, module, original, session = converted
    kind = MODELS[name][4]
    rng = np.random.default_rng(1)
    for count in (1, 3, 10):
        _check(name, module, original, session, feeds_for(kind, rng, count))
    if kind != "grid" and st.sst_dir_default() is not None:
        _check(name, module, original, session, feeds_for(kind, rng, 10, sst_dir=st.sst_dir_default()))


@pytest.mark.parametrize("odd", ["reversed", "twice", "subset"])
def test_odd_orders_match_onnx_runtime(converted, odd):
    """Orders that are not children-first: the exact sequential semantics (ORT on the original is the reference,
    eager PyTorch agrees where the model's loop semantics are the same)."""
    name, module, original, session = converted
    feeds = {k: v for k, v in feeds_for(MODELS[name][4], np.random.default_rng(2), 3).items() if k in MODELS[name][2]}
    feeds["order"] = st.odd_orders(feeds["order"])[odd].astype(feeds["order"].dtype)
    for o, g in zip(original.run(None, feeds), session.run(None, feeds)):
        assert o.shape == g.shape and np.abs(o - g).max(initial=0.0) <= TOL

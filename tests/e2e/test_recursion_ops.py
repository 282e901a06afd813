"""Ops inside a recursion (issue: generality, part two, class 4): RNTN's tensor composition by torch.einsum,
nn.Bilinear, torch.cumsum over the children and over a row, and products whose operand's size only the run knows,
written as PyTorch users write them (tests/e2e/recursion_op_models.py), exported with the exporters that take them
(TorchScript has no aten::bilinear: nn.Bilinear is dynamo's), converted with --strict and matched against eager
PyTorch and ONNX Runtime on one-node trees, SST-shaped forests and visits that are not children-first. What stays
refused names the node and the rewrite."""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

import cortex  # noqa: E402
import recursion_op_models as M  # noqa: E402
from cortex.examples import structures as S  # noqa: E402

TREE = ["words", "left", "right", "order"]
FEATURES = ["x", "left", "right", "order"]
MATRICES = ["words", "mats", "left", "right", "order"]
MODELS = {  # name -> (inputs, exporter)
    "RNTN": (TREE, "script"), "RNTNWhile": (TREE, "dynamo"), "BilinearWhile": (TREE, "dynamo"),
    "CumSumTree": (TREE, "script"), "CumSumWhile": (TREE, "dynamo"), "RuntimeShapeMatMul": (FEATURES, "script"),
}
TOL = 1e-4


def _feeds(inputs, forest, rng, features=M.F):
    feeds = {"words": forest.words, "left": forest.left, "right": forest.right, "order": forest.order}
    n = len(forest.words)
    if "x" in inputs:
        feeds["x"] = rng.standard_normal((n, features)).astype(np.float32)
    if "mats" in inputs:
        feeds["mats"] = (0.3 * rng.standard_normal((n, M.H, M.H))).astype(np.float32)
    return {k: feeds[k] for k in inputs}


def _export(name, inputs, exporter, path):
    torch.manual_seed(0)
    module = getattr(M, name)().eval()
    rng = np.random.default_rng(0)
    example = _feeds(inputs, S.random_tree(3, rng, M.V), rng)
    args = tuple(torch.from_numpy(example[n]) for n in inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "script":  # features and matrices marked dynamic in every dimension, as users mark them
            torch.onnx.export(torch.jit.script(module), args, str(path), dynamo=False, input_names=inputs,
                              dynamic_axes={n: list(range(example[n].ndim)) for n in inputs})
        else:
            pytest.importorskip("onnxscript")
            torch._dynamo.reset()
            dims = {n: {0: torch.export.Dim("L" if n == "order" else "N")} for n in inputs}
            torch.onnx.export(module, args, str(path), dynamo=True, input_names=inputs, dynamic_shapes=dims)
    return module


def _forests(rng):
    yield "one node", S.random_tree(1, rng, M.V)
    yield "sst-like", S.batch(S.sst_like_trees(4, rng, M.V))
    tree = S.random_tree(9, rng, M.V)
    yield "reversed order", dataclasses.replace(tree, order=tree.order[::-1].copy())


@pytest.fixture(scope="module", params=sorted(MODELS))
def converted(request, tmp_path_factory):
    name = request.param
    inputs, exporter = MODELS[name]
    d = tmp_path_factory.mktemp(name)
    module = _export(name, inputs, exporter, d / "m.onnx")
    report = cortex.convert(str(d / "m.onnx"), str(d / "m.cortex.onnx"), strict=True)
    assert [r.converted for r in report.regions] == [True], report.format()
    return name, module, ort.InferenceSession(str(d / "m.onnx")), cortex.InferenceSession(str(d / "m.cortex.onnx"))


def test_matches_eager_pytorch_and_onnx_runtime(converted):
    name, module, original, session = converted
    inputs = MODELS[name][0]
    rng = np.random.default_rng(1)
    for what, forest in _forests(rng):
        feeds = _feeds(inputs, forest, rng)
        want = original.run(None, feeds)[0]
        got = session.run(None, feeds)[0]
        assert got.shape == want.shape
        assert np.abs(got - want).max(initial=0.0) <= TOL, f"{name}, {what}: Cortex differs from ONNX Runtime"
        if what != "reversed order":  # a parents-first visit: eager and the exported loop agree only children-first
            with torch.no_grad():
                eager = module(*[torch.from_numpy(feeds[n]) for n in inputs]).numpy()
            assert np.abs(got - eager).max(initial=0.0) <= TOL, f"{name}, {what}: Cortex differs from eager PyTorch"


def test_a_feature_size_other_than_the_weights_is_an_error(converted):
    name, _, original, session = converted
    if name != "RuntimeShapeMatMul":
        pytest.skip("only this model's features have a size the run gives")
    rng = np.random.default_rng(3)
    feeds = _feeds(MODELS[name][0], S.random_tree(5, rng, M.V), rng, features=M.F + 1)
    with pytest.raises(Exception):
        original.run(None, feeds)
    with pytest.raises(Exception, match="dimension 1 must be 5"):
        session.run(None, feeds)


def test_a_product_that_leaves_a_size_unknown_is_refused_with_the_rewrite(tmp_path):
    module = _export("RuntimeShapeMatrices", MATRICES, "script", tmp_path / "m.onnx")
    report = cortex.convert(str(tmp_path / "m.onnx"), str(tmp_path / "m.cortex.onnx"))
    [region] = report.regions
    assert not region.converted
    assert "(MatMul)" in region.reason and "mats" in region.reason
    assert "static size" in (region.hint or "")
    rng = np.random.default_rng(4)
    feeds = _feeds(MATRICES, S.batch(S.sst_like_trees(2, rng, M.V)), rng)
    with torch.no_grad():
        eager = module(*[torch.from_numpy(feeds[n]) for n in MATRICES]).numpy()
    got = cortex.InferenceSession(str(tmp_path / "m.cortex.onnx")).run(None, feeds)[0]  # left to ONNX Runtime
    np.testing.assert_allclose(got, eager, rtol=1e-4, atol=1e-5)

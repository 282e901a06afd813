"""float64 models (issue 19, "float64, computed in double"): recursions written in ordinary PyTorch with
`model.double()` (float64 node inputs, weights and state tables), exported with both real exporters, converted, run
through ONNX Runtime with the Cortex EP and matched against eager PyTorch in double to ~1e-10, which float32 could
never reach. A region that mixes float32 and float64 values is refused with the reason; the IR's element type
round-trips through the typed loader; the EP holds the kernel's declared DOUBLE types to the model's."""
from __future__ import annotations

import importlib.util
import json
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import cortex  # noqa: E402
from cortex.examples import structures as S  # noqa: E402

D, H = 6, 8
TOL = dict(rtol=1e-10, atol=1e-12)


# ---- the models, as a user writes them (a file: TorchScript reads the source, dynamo looks its globals up) ---------

MODELS = {
    # A binary TreeLSTM over node features: leaves from x[v], internal nodes from both children's h and c.
    "treelstm": ("x, left, right, order", """
class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.W = nn.Linear(D, 3 * H)
        self.U = nn.Linear(2 * H, 5 * H)

    def leaf(self, xv):
        i, o, u = torch.chunk(self.W(xv), 3, dim=-1)
        c = torch.sigmoid(i) * torch.tanh(u)
        return torch.sigmoid(o) * torch.tanh(c), c

    def internal(self, hl, hr, cl, cr):
        i, fl, fr, o, u = torch.chunk(self.U(torch.cat([hl, hr], dim=-1)), 5, dim=-1)
        c = torch.sigmoid(i) * torch.tanh(u) + torch.sigmoid(fl) * cl + torch.sigmoid(fr) * cr
        c = c.clamp(-0.75, 0.75)  # Clip in double (its bounds and the clamped values: no float rounding)
        return torch.sigmoid(o) * torch.tanh(c), c
%(forward)s
""", """
    def forward(self, x, left, right, order):
        h = torch.zeros(x.shape[0], H, dtype=x.dtype)
        c = torch.zeros(x.shape[0], H, dtype=x.dtype)
        for k in range(order.shape[0]):
            v = order[k]
            if bool(left[v] < 0):
                hv, cv = self.leaf(x[v])
            else:
                hv, cv = self.internal(h[left[v]], h[right[v]], c[left[v]], c[right[v]])
            h[v] = hv
            c[v] = cv
        return h, c
""", """
    def forward(self, x, left, right, order):
        h0 = torch.zeros(x.shape[0], H, dtype=x.dtype)
        c0 = torch.zeros(x.shape[0], H, dtype=x.dtype)
        def cond_fn(k, h, c):
            return k < order.size(0)
        def body_fn(k, h, c):
            v = order[k.unsqueeze(0)]
            lv, rv = left[v], right[v]
            hl, cl = self.leaf(x[v])
            hi, ci = self.internal(h[lv.clamp(min=0)], h[rv.clamp(min=0)], c[lv.clamp(min=0)], c[rv.clamp(min=0)])
            is_leaf = (lv < 0).unsqueeze(-1)
            h = h.clone()
            c = c.clone()
            h[v] = torch.where(is_leaf, hl, hi)
            c[v] = torch.where(is_leaf, cl, ci)
            return k + 1, h, c
        _, h, c = torch.while_loop(cond_fn, body_fn, (torch.zeros((), dtype=torch.int64), h0, c0))
        return h, c
"""),
    # The Child-Sum TreeLSTM (Tai et al.) over a parent array: a forget gate per child, sums over the children.
    "childsum": ("x, parent, order", """
class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.W = nn.Linear(D, 4 * H)
        self.U_iou = nn.Linear(H, 3 * H, bias=False)
        self.U_f = nn.Linear(H, H, bias=False)

    def cell(self, xv, h, c, kids):
        wi, wo, wu, wf = torch.chunk(self.W(xv), 4, dim=-1)
        hk = h[kids]
        ui, uo, uu = torch.chunk(self.U_iou(hk.sum(0)), 3, dim=-1)
        f = torch.sigmoid(wf + self.U_f(hk))
        cv = torch.sigmoid(wi + ui) * torch.tanh(wu + uu) + (f * c[kids]).sum(0)
        return torch.sigmoid(wo + uo) * torch.tanh(cv), cv
%(forward)s
""", """
    def forward(self, x, parent, order):
        h = torch.zeros(x.shape[0], H, dtype=x.dtype)
        c = torch.zeros(x.shape[0], H, dtype=x.dtype)
        for k in range(order.shape[0]):
            v = order[k]
            hv, cv = self.cell(x[v], h, c, parent == v)
            h[v] = hv
            c[v] = cv
        return h, c
""", """
    def forward(self, x, parent, order):
        h0 = torch.zeros(x.shape[0], H, dtype=x.dtype)
        c0 = torch.zeros(x.shape[0], H, dtype=x.dtype)
        def cond_fn(k, h, c):
            return k < order.size(0)
        def body_fn(k, h, c):
            v = order[k.unsqueeze(0)]
            hv, cv = self.cell(x[v].reshape(-1), h, c, parent == v)
            h = h.clone()
            c = c.clone()
            h[v] = hv.reshape(1, H)
            c[v] = cv.reshape(1, H)
            return k + 1, h, c
        _, h, c = torch.while_loop(cond_fn, body_fn, (torch.zeros((), dtype=torch.int64), h0, c0))
        return h, c
"""),
    # A chain: an LSTM cell over a sequence, the state carried from step to step, every step's h stacked.
    "chain": ("x", """
class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.cell_ = nn.LSTMCell(D, H)
%(forward)s
""", """
    def forward(self, x):
        h = torch.zeros(1, H, dtype=x.dtype)
        c = torch.zeros(1, H, dtype=x.dtype)
        outs = []
        for t in range(x.shape[0]):
            h, c = self.cell_(x[t].unsqueeze(0), (h, c))
            outs.append(h)
        return torch.cat(outs, 0), c
""", """
    def forward(self, x):
        h0 = torch.zeros(1, H, dtype=x.dtype)
        c0 = torch.zeros(1, H, dtype=x.dtype)
        def cond_fn(t, h, c):
            return t < x.size(0)
        def body_fn(t, h, c):
            h, c = self.cell_(x[t.unsqueeze(0)], (h, c))
            return t + 1, h, c
        _, h, c = torch.while_loop(cond_fn, body_fn, (torch.zeros((), dtype=torch.int64), h0, c0))
        return h, c
"""),
}


def _module(kind: str, dynamo: bool, folder: Path) -> nn.Module:
    _, cls, script_forward, dynamo_forward = MODELS[kind]
    source = folder / f"user_f64_{kind}_{'dynamo' if dynamo else 'script'}.py"
    code = cls % {"forward": dynamo_forward if dynamo else script_forward}
    code = re.sub(r"\bH\b", str(H), re.sub(r"\bD\b", str(D), code))  # literals: TorchScript reads no globals
    source.write_text("import torch\nfrom torch import nn\n" + code)
    spec = importlib.util.spec_from_file_location(source.stem, source)
    module = importlib.util.module_from_spec(spec)
    sys.modules[source.stem] = module  # dynamo looks its globals up there
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    return module.Model().double().eval()


def _feeds(kind: str, tree, rng, order=None) -> dict:
    if kind == "chain":
        return {"x": rng.standard_normal((tree, D))}
    n = len(tree.order)
    feeds = {"x": rng.standard_normal((n, D)), "order": tree.order if order is None else np.asarray(order, np.int64)}
    if kind == "treelstm":
        feeds["left"], feeds["right"] = tree.left, tree.right
    else:
        feeds["parent"] = S.parents_of(tree.children)
    return {k: np.ascontiguousarray(v) for k, v in feeds.items()}


def _structures(kind: str, rng):
    """Trees (sequence lengths for a chain) with their height order and other valid topological orders."""
    if kind == "chain":
        return [(f"len{n}", n, [None]) for n in (1, 7, 33)]
    if kind == "treelstm":
        trees = [(f"binary{n}", S.random_tree(n, rng, 5)) for n in (1, 5, 21)]
    else:
        trees = [(f"nary{n}", S.random_nary_tree(n, k, rng, 5)) for n, k in ((1, 2), (9, 3), (40, 5))]
    return [(name, tree, [None] + list(S.topological_orders(tree.children, 2, rng))) for name, tree in trees]


def _export(module, kind: str, dynamo: bool, path: Path, rng) -> list:
    names = [n.strip() for n in MODELS[kind][0].split(",")]
    example = _feeds(kind, _structures(kind, rng)[1][1], rng)
    args = tuple(torch.from_numpy(example[n]) for n in names)
    outputs = ["h", "c"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            dims = {"x": {0: "N"}, "left": {0: "N"}, "right": {0: "N"}, "parent": {0: "N"}, "order": {0: "L"}}
            torch.onnx.export(module, args, str(path), input_names=names, output_names=outputs, dynamo=True,
                              dynamic_shapes={n: dims[n] for n in names})
        else:
            torch.onnx.export(torch.jit.script(module), args, str(path), input_names=names, output_names=outputs,
                              dynamic_axes={n: [0] for n in names}, dynamo=False)
    return names


CASES = [(kind, dynamo) for kind in MODELS for dynamo in (False, True)]


@pytest.mark.parametrize("kind,dynamo", CASES, ids=[f"{k}-{'dynamo' if d else 'script'}" for k, d in CASES])
def test_float64_model_converts_and_matches_eager_in_double(tmp_path, kind, dynamo):
    if dynamo:
        pytest.importorskip("onnxscript")
        torch._dynamo.reset()
    rng = np.random.default_rng(3)
    module = _module(kind, dynamo, tmp_path)
    src = tmp_path / "model.onnx"
    names = _export(module, kind, dynamo, src, rng)
    report = cortex.convert(src, tmp_path / "model.cortex.onnx")
    assert [r.converted for r in report.regions] == [True], report.regions[0].reason
    session = cortex.InferenceSession(str(tmp_path / "model.cortex.onnx"))
    assert [o.type for o in session.get_outputs()] == ["tensor(double)"] * 2
    for name, tree, orders in _structures(kind, rng):
        for order in orders:
            feeds = _feeds(kind, tree, rng, order)
            with torch.no_grad():
                expected = [t.numpy() for t in module(*[torch.from_numpy(feeds[n]) for n in names])]
            got = session.run(None, feeds)
            for g, e in zip(got, expected):
                assert g.dtype == np.float64
                np.testing.assert_allclose(g, e, **TOL, err_msg=f"{name}, order {order}")


# ---- one region, one float type: a mix is refused with the reason --------------------------------------------------

MIXED = """
import torch
from torch import nn


class Model(nn.Module):
    '''float64 state tables fed by float32 features and weights, cast up in the loop: the kind of mix a user writes
    when only part of a model is made double.'''

    def __init__(self):
        super().__init__()
        self.W = nn.Linear(6, 8)

    def forward(self, x, left, right, order):
        h = torch.zeros(x.shape[0], 8, dtype=torch.float64)
        for k in range(order.shape[0]):
            v = order[k]
            if bool(left[v] < 0):
                hv = torch.tanh(self.W(x[v])).double()
            else:
                hv = torch.tanh(h[left[v]] + h[right[v]])
            h[v] = hv
        return h
"""


def test_a_region_mixing_float32_and_float64_is_refused_with_the_reason(tmp_path):
    source = tmp_path / "user_f64_mixed.py"
    source.write_text(MIXED)
    spec = importlib.util.spec_from_file_location(source.stem, source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.Model().eval()  # float32 weights
    tree = S.random_tree(5, np.random.default_rng(0), 5)
    x = np.random.default_rng(1).standard_normal((len(tree.order), D)).astype(np.float32)
    args = (torch.from_numpy(x), torch.from_numpy(tree.left), torch.from_numpy(tree.right),
            torch.from_numpy(tree.order))
    names = ["x", "left", "right", "order"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.jit.script(model), args, str(tmp_path / "mixed.onnx"), input_names=names,
                          output_names=["h"], dynamic_axes={n: [0] for n in names}, dynamo=False)
    report = cortex.convert(tmp_path / "mixed.onnx", tmp_path / "mixed.cortex.onnx")
    [region] = report.regions
    assert not region.converted
    assert "float32" in region.reason and "float64" in region.reason, region.reason
    assert "one float type" in region.reason, region.reason
    assert region.hint and "model.double()" in region.hint
    # what is left to ONNX Runtime still runs, and returns what PyTorch returns
    session = cortex.InferenceSession(str(tmp_path / "mixed.cortex.onnx"))
    feeds = dict(zip(names, (a.numpy() for a in args)))
    with torch.no_grad():
        np.testing.assert_allclose(session.run(None, feeds)[0], model(*args).numpy(), rtol=1e-6, atol=1e-6)


# ---- the IR carries its element type; the typed loader checks it ----------------------------------------------------

@pytest.fixture(scope="module")
def treelstm64(tmp_path_factory):
    """The float64 TreeLSTM (TorchScript export), converted once: (folder, module, feeds)."""
    folder = tmp_path_factory.mktemp("treelstm64")
    rng = np.random.default_rng(3)
    module = _module("treelstm", False, folder)
    names = _export(module, "treelstm", False, folder / "model.onnx", rng)
    report = cortex.convert(folder / "model.onnx", folder / "model.cortex.onnx")
    assert report.regions[0].converted, report.regions[0].reason
    tree = S.random_tree(7, rng, 5)
    return folder, module, {n: v for n, v in _feeds("treelstm", tree, rng).items() if n in names}


def _programs(path):
    from cortex.frontend.recognize import find_regions
    from cortex.passes.pipeline import optimize
    [region] = find_regions(onnx.load(str(path)))
    return region.program, optimize(region.program)


def test_the_ir_element_type_round_trips_and_is_checked(treelstm64):
    from cortex.ir import serialize
    from cortex.ir.schema import IRFormatError

    folder, _, _ = treelstm64
    for program in _programs(folder / "model.onnx"):
        assert program.element == "float64"
        assert all(c.dtype == np.float64 for c in program.constants.values())
        document = serialize.to_json(program)
        root = document["nodes"][document["root"]]["fields"]
        assert root["element"] == "float64"
        assert {spec["dtype"] for spec in root["constants"]["$arrays"].values()} == {"float64"}
        loaded = serialize.from_json(json.loads(json.dumps(document)), program.constants)
        assert loaded == program and loaded.element == "float64"
        with pytest.raises(IRFormatError, match="the IR says float64"):  # constants of another type
            serialize.from_json(document, {k: v.astype(np.float32) for k, v in program.constants.items()})
        bad = json.loads(json.dumps(document))
        bad["nodes"][bad["root"]]["fields"]["element"] = "float16"
        with pytest.raises(IRFormatError, match="element"):
            serialize.from_json(bad, program.constants)
        bad["nodes"][bad["root"]]["fields"]["element"] = "float32"  # float64 constants in a float32 program
        with pytest.raises(IRFormatError, match="float32 array"):
            serialize.from_json(bad, program.constants)


def test_a_float32_program_serializes_as_before(tmp_path):
    """No `element` field in a float32 program's document: old IRs load, and new float32 ones are byte-identical."""
    from cortex.ir import serialize
    from cortex.examples import treelstm as tl

    path = tmp_path / "tl.onnx"
    onnx.save(tl.build_loop(tl.make_params(hidden=8, embed_dim=4, vocab=12)), str(path))
    program, _ = _programs(path)
    document = serialize.to_json(program)
    assert program.element == "float32" and "element" not in document["nodes"][document["root"]]["fields"]
    assert serialize.from_json(document, program.constants).element == "float32"


# ---- targets and precisions that cannot keep float64 refuse it ----------------------------------------------------

def test_cuda_and_bf16_refuse_float64_with_the_reason(treelstm64, tmp_path):
    from cortex.codegen.cpp import CpuEmitter
    from cortex.codegen.plan import CodegenError
    from cortex.codegen.targets import CpuBackend
    from cortex.codegen.toolchain import cpu_target

    folder, _, _ = treelstm64
    report = cortex.convert(folder / "model.onnx", tmp_path / "cuda.cortex.onnx", target="cuda")
    [region] = report.regions
    assert not region.converted and "float64 on CUDA is not supported" in region.reason, region.reason
    _, program = _programs(folder / "model.onnx")
    with pytest.raises(CodegenError, match="--precision bf16 is not supported with float64"):
        CpuEmitter(program, CpuBackend(cpu_target(), "bf16"))


# ---- the EP holds the kernel's declared DOUBLE to the model's declarations ----------------------------------------

@pytest.mark.parametrize("value,kind,index", [("h", "output", 0), ("x", "input", None)])
def test_the_ep_refuses_a_declaration_that_differs_from_the_kernels_double(treelstm64, tmp_path, value, kind, index):
    folder, _, feeds = treelstm64
    model = onnx.load(str(folder / "model.cortex.onnx"))
    declared = next(v for v in list(model.graph.output) + list(model.graph.input) if v.name == value)
    assert declared.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    declared.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    edited = folder / f"edited_{value}.onnx"  # beside the model: its kernel path resolves the same
    edited.write_bytes(model.SerializeToString())
    with pytest.raises(Exception) as refused:
        cortex.InferenceSession(str(edited))
    message = str(refused.value)
    assert f"'{value}' is declared float32" in message and "float64" in message, message
    assert "edited after conversion" in message, message


def test_the_honest_float64_model_runs_with_double_tensors(treelstm64):
    folder, module, feeds = treelstm64
    session = cortex.InferenceSession(str(folder / "model.cortex.onnx"))
    got = session.run(None, feeds)
    with torch.no_grad():
        expected = module(*[torch.from_numpy(feeds[n]) for n in ("x", "left", "right", "order")])
    for g, e in zip(got, expected):
        assert g.dtype == np.float64
        np.testing.assert_allclose(g, e.numpy(), **TOL)


def test_cortex_rebuild_keeps_a_float64_model(treelstm64, tmp_path):
    """`cortex rebuild` reads the float64 constants back from their panels and rebuilds the double kernel."""
    from cortex.rebuild import rebuild

    folder, module, feeds = treelstm64
    rebuild(str(folder / "model.cortex.onnx"), str(tmp_path / "rebuilt.onnx"))
    got = cortex.InferenceSession(str(tmp_path / "rebuilt.onnx")).run(None, feeds)
    with torch.no_grad():
        expected = module(*[torch.from_numpy(feeds[n]) for n in ("x", "left", "right", "order")])
    for g, e in zip(got, expected):
        assert g.dtype == np.float64
        np.testing.assert_allclose(g, e.numpy(), **TOL)


# ---- cortex.TreeRec in double ------------------------------------------------------------------------------------

def _to_double(graph: onnx.GraphProto) -> None:
    """Every float32 of a graph (and its bodies) made float64: value types, initializers, Constant values, Casts."""
    from onnx import numpy_helper
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            value.type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    for k, init in enumerate(graph.initializer):
        if init.data_type == onnx.TensorProto.FLOAT:
            graph.initializer[k].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float64),
                                                                  init.name))
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == onnx.TensorProto.FLOAT:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float64), attr.t.name))
            elif attr.name == "to" and attr.i == onnx.TensorProto.FLOAT:
                attr.i = onnx.TensorProto.DOUBLE
            elif attr.type == onnx.AttributeProto.GRAPH:
                _to_double(attr.g)


def test_a_float64_treerec_computes_in_double(tmp_path):
    from cortex.examples import treelstm as tl
    from cortex.treerec.reference import treerec_reference

    model = tl.build_treerec(tl.make_params(hidden=8, embed_dim=4, vocab=12))
    _to_double(model.graph)
    onnx.save(model, str(tmp_path / "tr64.onnx"))
    report = cortex.convert(tmp_path / "tr64.onnx", tmp_path / "tr64.cortex.onnx")
    assert [r.converted for r in report.regions] == [True], report.regions[0].reason
    session = cortex.InferenceSession(str(tmp_path / "tr64.cortex.onnx"))
    node = next(n for n in model.graph.node if n.op_type == "TreeRec")
    forest = S.batch([S.random_tree(n, np.random.default_rng(n), 12) for n in (1, 6, 17)])
    feeds = {"children": forest.children, "words": forest.words}
    got = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})
    want = treerec_reference(node, [forest.children, forest.words])
    for g, w in zip(got, want):
        assert g.dtype == np.float64 and w.dtype == np.float64
        np.testing.assert_allclose(g, w, **TOL)

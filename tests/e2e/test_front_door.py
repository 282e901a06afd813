"""The front door as a new user meets it (issue 17): cells written the way people write them, not the project's own.

What `cortex.torch.export` writes runs in plain ONNX Runtime and still converts; a conversion that refuses a region
writes a model that runs; the user's modules come back as they were; a cell in training mode, a calling convention
that does not fit and a refused op each get a message that says what to do; sessions are quiet and run-time errors
name the model's own inputs and initializers.
"""
from __future__ import annotations

import json
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
from cortex.examples import structures as st  # noqa: E402
from cortex.treerec.portable import RECORD_KEY, raise_treerec  # noqa: E402

H, V, D = 8, 30, 6
nn = torch.nn


class Leaf(nn.Module):
    """A leaf as people write it: an embedding, dropout, a gate projection (not the project's cell)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(V, D)
        self.dropout = nn.Dropout(0.25)
        self.gates = nn.Linear(D, 3 * H)

    def forward(self, token):
        i, o, u = self.gates(self.dropout(self.embed(token))).chunk(3, dim=-1)
        c = i.sigmoid() * u.tanh()
        return o.sigmoid() * c.tanh(), c


class Node(nn.Module):
    """A binary node cell taking its children one by one (h_l, c_l, h_r, c_r): no options needed."""

    def __init__(self):
        super().__init__()
        self.W = nn.Linear(2 * H, 5 * H)

    def forward(self, h_l, c_l, h_r, c_r):
        i, f1, f2, o, u = self.W(torch.cat((h_l, h_r), -1)).chunk(5, dim=-1)
        c = i.sigmoid() * u.tanh() + f1.sigmoid() * c_l + f2.sigmoid() * c_r
        return o.sigmoid() * c.tanh(), c


class CumSumNode(nn.Module):
    """A node cell using an op Cortex refuses inside a recursion (CumSum)."""

    def forward(self, h_l, c_l, h_r, c_r):
        s = torch.cumsum(torch.stack((h_l, h_r), 0), 0)[-1]
        return s.tanh(), c_l + c_r


def _feeds(seed=0, trees=3):
    f = st.batch(st.sst_like_trees(trees, np.random.default_rng(seed), V))
    return {"children": f.children, "words": f.words}


@pytest.fixture
def cells():
    torch.manual_seed(0)
    return Leaf().eval(), Node().eval()


def _close(got, want, tol=1e-4):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and float(np.abs(g - w).max()) <= tol


def test_the_exported_model_runs_in_plain_ort_and_cortex_finds_the_recursion(cells, tmp_path):
    leaf, node = cells
    feeds = _feeds()
    path = tmp_path / "model.onnx"
    ct.export(leaf, node, feeds, path)
    want = ct.run_reference(leaf, node, feeds)
    # plain ONNX Runtime, no Cortex options, no registration: the file is standard ONNX
    code = textwrap.dedent(f"""
        import numpy as np, onnxruntime as ort, json, sys
        feeds = {{k: np.array(v, dtype=np.int64) for k, v in json.loads(sys.argv[1]).items()}}
        out = ort.InferenceSession({str(path)!r}).run(None, feeds)
        print(json.dumps([o.tolist() for o in out]))
    """)
    result = subprocess.run([sys.executable, "-c", code, json.dumps({k: v.tolist() for k, v in feeds.items()})],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "cortex" not in result.stderr.lower()
    _close([np.array(o, np.float32) for o in json.loads(result.stdout)], want)
    assert not any(n.domain == "cortex" for n in onnx.load(str(path)).graph.node)
    # cortex.InferenceSession and ORT with cortex.session_options() run it as it is
    _close(cortex.InferenceSession(str(path)).run(None, feeds), want)
    _close(ort.InferenceSession(str(path), sess_options=cortex.session_options()).run(None, feeds), want)
    # and cortex-convert converts the TreeRec it records (one region, a TreeRec)
    report = cortex.convert(str(path), str(tmp_path / "model.cortex.onnx"), strict=True)
    assert [(r.kind, r.converted) for r in report.regions] == [("TreeRec", True)]
    _close(cortex.InferenceSession(str(tmp_path / "model.cortex.onnx")).run(None, _feeds(5)),
           ct.run_reference(leaf, node, _feeds(5)))


def test_an_edited_portable_model_is_converted_as_its_graph_says(cells, tmp_path):
    leaf, node = cells
    model = ct.export(leaf, node, _feeds(), tmp_path / "model.onnx")
    edited = onnx.load(str(tmp_path / "model.onnx"))
    for t in edited.graph.initializer:  # new weights are still the same model: the record proves out with them
        if t.name.endswith("gates.bias"):
            t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t) + 1, t.name))
    _, problem = raise_treerec(model)
    assert problem is None
    raised, problem = raise_treerec(edited)
    assert problem is None and any(n.op_type == "TreeRec" for n in raised.graph.node)
    assert onnx.numpy_helper.to_array(next(t for t in raised.graph.initializer if t.name.endswith("gates.bias"))) \
        == pytest.approx(onnx.numpy_helper.to_array(next(t for t in model.graph.initializer
                                                          if t.name.endswith("gates.bias"))) + 1)
    edited.graph.node[-1].name = "renamed"  # a node changed: the record no longer proves out
    _, problem = raise_treerec(edited)
    assert problem and "does not match its graph" in problem
    onnx.save(edited, str(tmp_path / "edited.onnx"))
    report = cortex.convert(str(tmp_path / "edited.onnx"), str(tmp_path / "edited.cortex.onnx"))
    assert any("does not match its graph" in n for n in report.notes)
    assert all(r.kind != "TreeRec" for r in report.regions)  # the graph (its Loops), not the record
    feeds = _feeds(2)
    want = ort.InferenceSession(str(tmp_path / "edited.onnx")).run(None, feeds)
    _close(cortex.InferenceSession(str(tmp_path / "edited.cortex.onnx")).run(None, feeds), want)


def test_a_refused_region_is_written_so_that_ort_runs_it(tmp_path):
    leaf = Leaf().eval()
    feeds = _feeds()
    path = tmp_path / "cumsum.onnx"
    ct.export(leaf, CumSumNode(), feeds, path)
    report = cortex.convert(str(path), str(tmp_path / "cumsum.cortex.onnx"))  # not --strict
    [region] = report.regions
    assert not region.converted and "CumSum" in region.reason
    assert "torch.triu" in (region.hint or "")  # the rewrite that converts
    assert any("standard-ONNX lowering" in n for n in report.notes)
    want = ct.run_reference(leaf, CumSumNode(), feeds)
    _close(ort.InferenceSession(str(tmp_path / "cumsum.cortex.onnx")).run(None, feeds), want)
    _close(cortex.InferenceSession(str(tmp_path / "cumsum.cortex.onnx")).run(None, feeds), want)


def test_a_raw_treerec_model_runs_in_cortex_inference_session(cells, tmp_path):
    leaf, node = cells
    feeds = _feeds()
    model = ct.export(leaf, node, feeds, portable=False)  # keeps the cortex.TreeRec node
    assert any(n.domain == "cortex" for n in model.graph.node)
    onnx.save(model, str(tmp_path / "raw.onnx"))
    want = ct.run_reference(leaf, node, feeds)
    _close(cortex.InferenceSession(str(tmp_path / "raw.onnx")).run(None, feeds), want)
    _close(cortex.InferenceSession(model.SerializeToString()).run(None, feeds), want)


@pytest.mark.parametrize("exporter", ["torchscript", "auto", "dynamo"])
def test_the_users_modules_come_back_as_they_were(exporter, tmp_path):
    torch.manual_seed(1)
    leaf, node = Leaf().eval(), Node().eval()
    node.W.train()  # mixed flags, on purpose
    leaf.gates.weight.requires_grad_(False)
    calls = []
    handle = leaf.register_forward_hook(lambda *a: calls.append(1))
    before = {name: m.training for name, m in list(leaf.named_modules()) + list(node.named_modules())}
    weights = [p.detach().clone() for p in list(leaf.parameters()) + list(node.parameters())]
    ct.export(leaf, node, _feeds(), tmp_path / "m.onnx", exporter=exporter)
    after = {name: m.training for name, m in list(leaf.named_modules()) + list(node.named_modules())}
    assert after == before
    assert not leaf.gates.weight.requires_grad and node.W.weight.requires_grad
    assert all(torch.equal(a, b) for a, b in zip(weights, list(leaf.parameters()) + list(node.parameters())))
    assert list(leaf._forward_hooks.values()) and calls  # the user's hook is still there (and ran)
    handle.remove()


def test_eval_cells_with_dropout_export_through_torchscript(tmp_path):
    torch.manual_seed(2)
    leaf, node = Leaf().eval(), Node().eval()
    feeds = _feeds(3)
    ct.export(leaf, node, feeds, tmp_path / "ts.onnx", exporter="torchscript")  # the check inside passes
    assert not leaf.training and not leaf.dropout.training
    _close(ort.InferenceSession(str(tmp_path / "ts.onnx")).run(None, feeds), ct.run_reference(leaf, node, feeds))


def test_training_mode_with_dropout_says_call_eval(tmp_path):
    leaf, node = Leaf(), Node()  # nn.Modules start in training mode
    with pytest.raises(ValueError, match=r"training mode and has Dropout \(leaf\.dropout\).*call \.eval\(\)"):
        ct.export(leaf, node, _feeds(), tmp_path / "m.onnx")
    assert leaf.training  # untouched


def test_a_calling_convention_that_does_not_fit_names_the_options_that_do(cells):
    leaf, node = cells
    feeds = _feeds()
    with pytest.raises(ValueError, match=r"takes 4 positional arguments.*children='list', internal_inputs=False"):
        ct.export(leaf, node, feeds, children="stack")

    class Stacked(nn.Module):  # Child-Sum style: the children's states stacked, the node's token first
        def __init__(self):
            super().__init__()
            self.embed, self.U = nn.Embedding(V, D), nn.Linear(D + H, 2 * H)

        def forward(self, token, child_h, child_c):
            h, c = self.U(torch.cat((self.embed(token), child_h.sum(0, keepdim=True)), -1)).chunk(2, -1)
            return h.tanh(), c + child_c.sum(0, keepdim=True)

    model = ct.export(leaf, Stacked().eval(), feeds)  # inferred: children="stack", internal_inputs=True
    assert model is not None

    class TooMany(nn.Module):
        def forward(self, a, b, c, d, e, f, g):
            return a, b

    with pytest.raises(ValueError, match="no combination of children=, internal_inputs=, mask= fits"):
        ct.export(leaf, TooMany(), feeds)

    class Leaf2(nn.Module):
        def forward(self, token, extra):
            return token.float(), token.float()

    with pytest.raises(ValueError, match=r"leaf cell takes 2 positional arguments.*1 node input"):
        ct.export(Leaf2(), node, feeds)


def test_dynamo_failures_do_not_print_graphs(tmp_path):
    # a cell dynamo cannot export: the fallback warns in one line; nothing of the exporter reaches the terminal
    code = textwrap.dedent(f"""
        import warnings, numpy as np, torch
        import cortex.torch as ct
        from cortex.examples import structures as st
        warnings.simplefilter("ignore")
        class Branchy(torch.nn.Module):
            def forward(self, word):
                return torch.ones(1, 2) if bool(word.sum() > 10**9) else torch.zeros(1, 2)
        class Sum(torch.nn.Module):
            def forward(self, h_l, h_r):
                return h_l + h_r + 1
        f = st.batch(st.sst_like_trees(2, np.random.default_rng(0), 20))
        ct.export(Branchy(), Sum(), {{"children": f.children, "words": f.words}}, {str(tmp_path / 'b.onnx')!r},
                  children="list", internal_inputs=False)
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    assert len(result.stderr) < 500, result.stderr


def test_sessions_are_quiet_and_errors_come_once_in_the_users_terms(cells, tmp_path):
    leaf, node = cells
    feeds = _feeds()

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.out = nn.Linear(H, 5)

        def forward(self, h, c):
            return self.out(h).log_softmax(-1)

    ct.convert(leaf, node, feeds, tmp_path / "m.cortex.onnx", head=Head().eval())
    code = textwrap.dedent(f"""
        import json, sys, numpy as np, cortex
        feeds = {{k: np.array(v, dtype=np.int64) for k, v in json.loads(sys.argv[1]).items()}}
        session = cortex.InferenceSession({str(tmp_path / 'm.cortex.onnx')!r})
        session.run(None, feeds)
        feeds["words"][0] = 5000
        try:
            session.run(None, feeds)
        except Exception as e:
            print("ERROR", e)
    """)
    result = subprocess.run([sys.executable, "-c", code, json.dumps({k: v.tolist() for k, v in feeds.items()})],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no "nodes were not assigned" warning, no error log line before the exception
    assert "index 5000 out of range for the rows of initializer 'leaf.embed.weight', indexed by words[p]" \
        in result.stdout
    assert "folded" not in result.stdout and "table_" not in result.stdout

"""Honest refusal: loops that are not a recursion over a given structure, and ops the code generator does not
support, stay with ONNX Runtime region by region, with a precise reason; the converted model still returns
the original's results."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import cortex
from cortex.examples import structures as st
from cortex.examples import treelstm as tl

HIDDEN = 8


def _forest():
    return st.batch(st.sst_like_trees(3, np.random.default_rng(1), 40))


def _feeds(forest):
    return dict(words=forest.words, left=forest.left, right=forest.right, order=forest.order)


def _convert_and_compare(tmp_path, model, feeds):
    src, out = tmp_path / "m.onnx", tmp_path / "m.cortex.onnx"
    onnx.save(model, str(src))
    report = cortex.convert(str(src), str(out))
    original = ort.InferenceSession(str(src))
    feeds = {k: v for k, v in feeds.items() if k in {i.name for i in original.get_inputs()}}
    expected = original.run(None, feeds)
    got = cortex.InferenceSession(str(out)).run(None, feeds)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, atol=1e-5)
    return report, onnx.load(str(out))


def _loop_body_if(model):
    loop = next(n for n in model.graph.node if n.op_type == "Loop")
    body = next(a.g for a in loop.attribute if a.name == "body")
    return next(n for n in body.node if n.op_type == "If"), body


def test_unsupported_op_is_named_and_left_to_ort(tmp_path):
    model = tl.build_loop(tl.make_params(hidden=HIDDEN, embed_dim=4, vocab=40))
    if_node, _ = _loop_body_if(model)
    internal = next(a.g for a in if_node.attribute if a.name == "else_branch")
    sigmoid = next(n for n in internal.node if n.op_type == "Sigmoid")
    sigmoid.op_type = "Hardmax"  # hardmax over a gate: valid ONNX, not in Cortex's op set
    report, converted = _convert_and_compare(tmp_path, model, _feeds(_forest()))
    [region] = report.regions
    assert not region.converted and "Hardmax" in region.reason
    assert any(n.op_type == "Loop" for n in converted.graph.node)


def test_state_written_at_two_rows(tmp_path):
    model = tl.build_loop(tl.make_params(hidden=HIDDEN, embed_dim=4, vocab=40))
    _, body = _loop_body_if(model)
    # after writing h[v], also write the same row into h[order[0]]
    scatter = next(n for n in body.node if n.op_type == "ScatterND")
    index = helper.make_tensor("zero_pos", onnx.TensorProto.INT64, [], [0])
    body.initializer.append(index)
    extra = [helper.make_node("Gather", ["order", "zero_pos"], ["first_v"], axis=0),
             helper.make_node("Unsqueeze", ["first_v", "axis0"], ["first_v1"]),
             helper.make_node("Unsqueeze", ["first_v1", "axis0"], ["first_v11"]),
             helper.make_node("ScatterND", [scatter.output[0], "first_v11", scatter.input[2]], ["h_twice"])]
    position = list(body.node).index(scatter) + 1
    for k, node in enumerate(extra):
        body.node.insert(position + k, node)
    out = next(o for o in body.output if o.name == scatter.output[0])
    out.name = "h_twice"
    report, _ = _convert_and_compare(tmp_path, model, _feeds(_forest()))
    [region] = report.regions
    assert not region.converted and "written at two rows" in region.reason


def test_data_dependent_read_is_refused(tmp_path):
    torch = pytest.importorskip("torch", reason="the model is written in PyTorch")

    class ArgmaxRead(torch.nn.Module):
        """Each internal node reads the row whose id is the argmax of its left child's state: a read that
        depends on data, not on the given structure."""

        def __init__(self):
            super().__init__()
            self.hidden = HIDDEN
            self.emb = torch.nn.Embedding(40, HIDDEN)

        def forward(self, words, left, right, order):
            h = torch.zeros(words.size(0), self.hidden)
            for i in range(order.size(0)):
                v = order[i]
                if bool(left[v] < 0):
                    h[v] = torch.tanh(self.emb(words[v]))
                else:
                    j = torch.argmax(h[left[v]])
                    h[v] = torch.tanh(h[left[v]] + h[j])
            return h

    forest = _forest()
    path = tmp_path / "argmax.onnx"
    args = tuple(torch.from_numpy(a) for a in _feeds(forest).values())
    torch.onnx.export(torch.jit.script(ArgmaxRead()), args, str(path), dynamo=False, opset_version=17,
                      input_names=["words", "left", "right", "order"], output_names=["h"],
                      dynamic_axes={k: {0: k} for k in ("words", "left", "right", "order", "h")})
    report, _ = _convert_and_compare(tmp_path, onnx.load(str(path)), _feeds(forest))
    [region] = report.regions
    assert not region.converted and "ArgMax" in region.reason


def test_regions_fall_back_one_by_one(tmp_path):
    """One model, two recursions: the TreeLSTM converts, a Hardmax variant of it stays with ORT."""
    good = tl.build_loop(tl.make_params(hidden=HIDDEN, embed_dim=4, vocab=40, seed=1))
    bad = tl.build_loop(tl.make_params(hidden=HIDDEN, embed_dim=4, vocab=40, seed=2))
    if_node, _ = _loop_body_if(bad)
    internal = next(a.g for a in if_node.attribute if a.name == "else_branch")
    next(n for n in internal.node if n.op_type == "Tanh").op_type = "Hardmax"
    bad = onnx.compose.add_prefix(bad, "b_", rename_inputs=False)
    graph = good.graph
    graph.node.extend(bad.graph.node)
    graph.initializer.extend(bad.graph.initializer)
    graph.output.extend(bad.graph.output)
    report, converted = _convert_and_compare(tmp_path, good, _feeds(_forest()))
    assert [r.converted for r in report.regions] == [True, False]
    assert "Hardmax" in report.regions[1].reason
    assert [n.op_type for n in converted.graph.node].count("Loop") == 1

"""Child sets the structure computes at run time (issue: generality, part two): a node's children given by a parent
array (a mask, a mask matmul, boolean indexing, NonZero), CSR offsets + indices, an edge list (two vectors or one
[2, E] tensor); sums, means and maxima over them. Models written as people write them, exported with both real
exporters, converted, and matched against eager PyTorch on SST trees, random n-ary trees, DAGs, random topological
orders and visits that are not one pass over the nodes."""
from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import cortex  # noqa: E402
from cortex.examples import structures as S  # noqa: E402

V, H = 20, 8


# ---- how models select and aggregate a node's children -----------------------------------------------------------
# Each takes the state table h [N, H], the structure and the node v (a scalar, or a [1] tensor in the dynamo form)
# and returns the aggregate, reshaped to [1, H] by the caller.

class MaskMatmul(nn.Module):
    def forward(self, h, parent, v):
        return (parent == v).float() @ h


class WhereSum(nn.Module):
    def forward(self, h, parent, v):
        return torch.where((parent == v).unsqueeze(1), h, torch.zeros_like(h)).sum(0)


class BoolIndexSum(nn.Module):
    def forward(self, h, parent, v):
        return h[parent == v].sum(0)


class NonzeroSum(nn.Module):
    def forward(self, h, parent, v):
        return h[torch.nonzero(parent == v).view(-1)].sum(0)


class NonzeroSqueezeIndexSelect(nn.Module):
    """nonzero().squeeze(-1): TorchScript tests the [M, 1] positions' last dimension before it squeezes."""

    def forward(self, h, parent, v):
        return h.index_select(0, (parent == v).nonzero().squeeze(-1)).sum(0)


class MaskMultiplySum(nn.Module):
    def forward(self, h, parent, v):
        return ((parent == v).float().unsqueeze(1) * h).sum(0)


class BoolIndexMean(nn.Module):
    def forward(self, h, parent, v):
        mean = h[parent == v].mean(0)
        return torch.where(torch.isnan(mean), torch.zeros_like(mean), mean)  # a leaf's mean is NaN


class WhereMax(nn.Module):
    def forward(self, h, parent, v):
        m = (parent == v).unsqueeze(1)
        return torch.where(m, h, torch.full_like(h, float("-inf"))).max(0).values.clamp(min=-5.0)


class CsrSlice(nn.Module):
    EXPORTERS = ("script",)  # dynamo cannot trace a slice with data-dependent bounds: CsrItemSlice is its form

    def forward(self, h, offsets, indices, v):
        return h[indices[offsets[v]:offsets[v + 1]]].sum(0)


class CsrItemSlice(nn.Module):
    EXPORTERS = ("dynamo",)  # the form torch.export documents for data-dependent sizes

    def forward(self, h, offsets, indices, v):
        a, b = offsets[v].item(), offsets[v + 1].item()
        torch._check_is_size(a)
        torch._check(b >= a)
        torch._check(b <= indices.size(0))
        return h[indices[a:b]].sum(0)


class CsrRangeMask(nn.Module):
    def forward(self, h, offsets, indices, v):
        pos = torch.arange(indices.size(0))
        return h[indices[(pos >= offsets[v]) & (pos < offsets[v + 1])]].sum(0)


class EdgesSum(nn.Module):
    def forward(self, h, src, dst, v):
        return h[src[dst == v]].sum(0)


class ParentCountTestBlend(nn.Module):
    """A leaf test as TorchScript users write it, `float(bool(count == 0))`: an integer computed from the set's
    count through bool and float casts (scripted only: dynamo cannot take bool() of a tensor in a loop)."""
    EXPORTERS = ("script",)

    def forward(self, h, parent, v):
        s = (parent == v).float() @ h
        m = float(bool((parent == v).sum(-1) == 0))
        return m * torch.ones_like(s) + (1 - m) * s


class EdgesMaskSum(nn.Module):
    """Separate src and dst vectors: a mask over the targets weighs the rows gathered at every source."""

    def forward(self, h, src, dst, v):
        return (h[src] * (dst == v).unsqueeze(-1).float()).sum(0)


class EdgesMaskMatmul(nn.Module):
    def forward(self, h, src, dst, v):
        return (dst == v).float() @ h[src]


class EdgesMaskMean(nn.Module):
    """The mean over the members: their sum over the count of the targets' mask (a count over dst, E entries)."""

    def forward(self, h, src, dst, v):
        m = (dst == v).unsqueeze(-1).float()
        return (h[src] * m).sum(0) / m.sum(0).clamp(min=1)


class EdgeIndexSum(nn.Module):
    def forward(self, h, edge_index, v):
        return h[edge_index[0][edge_index[1] == v]].sum(0)


class EdgeIndexMean(nn.Module):
    def forward(self, h, edge_index, v):
        mean = h[edge_index[0][edge_index[1] == v]].mean(0)
        return torch.where(torch.isnan(mean), torch.zeros_like(mean), mean)


class _Attention(nn.Module):
    """Softmax attention over a set's rows [1, M, H] (a batch of one, as a model written for batches holds them):
    scores against a learned query, scaled within each row by its largest magnitude; an empty set gives zeros."""

    def __init__(self):
        super().__init__()
        self.q = nn.Parameter(torch.linspace(-1.0, 1.0, H))

    def attend(self, rows):
        rows = rows.unsqueeze(0)
        scale = rows.abs().amax(-1, keepdim=True) + 1.0
        alpha = torch.softmax((rows / scale) @ self.q, dim=-1)
        return (alpha.unsqueeze(-1) * rows).sum(-2)


class CsrAttention(_Attention):
    EXPORTERS = ("script",)

    def forward(self, h, offsets, indices, v):
        return self.attend(h[indices[offsets[v]:offsets[v + 1]]])


class BoolIndexAttention(_Attention):
    def forward(self, h, parent, v):
        return self.attend(h[parent == v])


class EdgeIndexAttention(_Attention):
    EXPORTERS = ("script",)

    def forward(self, h, edge_index, v):
        return self.attend(h.index_select(0, edge_index[0][edge_index[1] == v]))


class EdgeIndexMaskSum(nn.Module):
    """A mask over the edges weighs the rows gathered at their sources: h[src] * (dst == v)."""

    def forward(self, h, edge_index, v):
        return (h[edge_index[0]] * (edge_index[1] == v).unsqueeze(-1).float()).sum(0)


class EdgeIndexMaskMeanOverEdges(nn.Module):
    """A mean over the edge axis of masked rows: the members' sum over the number of edges."""

    def forward(self, h, edge_index, v):
        return (h[edge_index[0]] * (edge_index[1] == v).unsqueeze(-1).float()).mean(0)


class EdgeIndexMaskMatmul(nn.Module):
    def forward(self, h, edge_index, v):
        return (edge_index[1] == v).float() @ h[edge_index[0]]


class EdgeIndexWhereMean(nn.Module):
    """torch.where over the edges, divided by the integer count of the mask (a leaf's count clamped to 1)."""

    def forward(self, h, edge_index, v):
        sel = edge_index[1] == v
        total = torch.where(sel.unsqueeze(-1), h[edge_index[0]], torch.zeros(1, 8)).sum(0)
        return total / sel.sum(-1).clamp(min=1).float()


class EdgeIndexWhereZerosLike(nn.Module):
    def forward(self, h, edge_index, v):
        rows = h[edge_index[0]]
        return torch.where((edge_index[1] == v).unsqueeze(-1), rows, torch.zeros_like(rows)).sum(0)


class EdgeIndexMaskAttention(nn.Module):
    """Softmax attention over the edges into v: scores of every edge's source row, -inf off the mask, guarded
    where the set is empty; a leading unit axis as a batched model holds it."""

    def __init__(self):
        super().__init__()
        self.q = nn.Parameter(torch.linspace(-1.0, 1.0, H))

    def forward(self, h, edge_index, v):
        sel = (edge_index[1] == v).unsqueeze(0)
        rows = h[edge_index[0]].unsqueeze(0)
        scores = (rows @ self.q).masked_fill(~sel, float("-inf"))
        alpha = torch.softmax(scores, dim=-1)
        alpha = torch.where(sel, alpha, torch.zeros_like(alpha))
        return (alpha.unsqueeze(-2) @ rows).squeeze(-2)


class EdgeIndexUnguardedAttention(nn.Module):
    """Softmax weights over a -inf-filled mask summed without a guard: NaN where v has no edge in (a leaf), as the
    original computes exp(-inf - -inf); the model then tells that NaN apart (3.0), so no NaN row reaches the table
    (a non-member's NaN row would make the original's mask product NaN: the NaN caveat)."""

    def __init__(self):
        super().__init__()
        self.q = nn.Parameter(torch.linspace(-1.0, 1.0, H))

    def forward(self, h, edge_index, v):
        rows = h[edge_index[0]]
        alpha = torch.softmax((rows @ self.q).masked_fill(edge_index[1] != v, float("-inf")), dim=-1)
        out = alpha @ rows
        return torch.where(torch.isnan(out), torch.full_like(out, 3.0), out)


class ParentUnitAxisMatmul(nn.Module):
    """The whole table with a leading unit axis (hc.unsqueeze(0)) times the mask: [1, 1, N] @ [1, N, H]."""

    def forward(self, h, parent, v):
        a = (parent == v).unsqueeze(0).float()
        return (a.unsqueeze(-2) @ h.unsqueeze(0)).squeeze(-2)


class ParentMaskAttention(nn.Module):
    """Attention over the whole table's rows, masked to the children: scores = h @ q, -inf off the mask."""

    def __init__(self):
        super().__init__()
        self.q = nn.Parameter(torch.linspace(-1.0, 1.0, H))

    def forward(self, h, parent, v):
        sel = parent == v
        alpha = torch.softmax((h @ self.q).masked_fill(~sel, float("-inf")), dim=-1)
        alpha = torch.where(sel, alpha, torch.zeros_like(alpha))
        return (alpha.unsqueeze(-1) * h).sum(0)


# encoding -> structure inputs (after words) and the aggregators written for it
ENCODINGS = {
    "parent": (("parent",), [MaskMatmul, WhereSum, BoolIndexSum, NonzeroSum, MaskMultiplySum, BoolIndexMean,
                             WhereMax, BoolIndexAttention, ParentUnitAxisMatmul, ParentMaskAttention,
                             NonzeroSqueezeIndexSelect, ParentCountTestBlend]),
    "csr": (("offsets", "indices"), [CsrSlice, CsrItemSlice, CsrRangeMask, CsrAttention]),
    "edges": (("src", "dst"), [EdgesSum, EdgesMaskSum, EdgesMaskMatmul, EdgesMaskMean]),
    "edge_index": (("edge_index",), [EdgeIndexSum, EdgeIndexMean, EdgeIndexAttention, EdgeIndexMaskSum,
                                     EdgeIndexMaskMeanOverEdges, EdgeIndexMaskMatmul, EdgeIndexWhereMean,
                                     EdgeIndexMaskAttention, EdgeIndexWhereZerosLike, EdgeIndexUnguardedAttention]),
}


class Scripted(nn.Module):
    """for v in order: h[v] = tanh(W emb(words[v]) + U agg(children of v)) (TorchScript: a Loop with a trip count)."""

    def __init__(self, agg: nn.Module):
        super().__init__()
        self.emb = nn.Embedding(V, H)
        self.W = nn.Linear(H, H)
        self.U = nn.Linear(H, H, bias=False)
        self.agg = agg

    def cell(self, words, v, hs):
        return torch.tanh(self.W(self.emb(words[v])) + self.U(hs.reshape(-1)))


def _module(encoding: str, agg_cls, dynamo: bool, folder) -> nn.Module:
    """The model a user writes for this structure input, as a source file (TorchScript reads the source)."""
    names = ENCODINGS[encoding][0]
    args = ", ".join(names)
    if dynamo:
        body = f"""
def forward(self, words, {args}, order):
    h0 = torch.zeros(words.shape[0], 8)
    def cond_fn(k, h):
        return k < order.size(0)
    def body_fn(k, h):
        v = order[k.unsqueeze(0)]
        hs = self.agg(h, {args}, v).reshape(1, 8)
        h = h.clone()
        h[v] = torch.tanh(self.W(self.emb(words[v])) + self.U(hs))
        return k + 1, h
    _, h = torch.while_loop(cond_fn, body_fn, (torch.zeros((), dtype=torch.int64), h0))
    return h
"""
    else:
        body = f"""
def forward(self, words, {args}, order):
    h = torch.zeros(words.shape[0], 8)
    for i in range(order.shape[0]):
        v = order[i]
        h[v] = self.cell(words, v, self.agg(h, {args}, v))
    return h
"""
    source = folder / f"user_{encoding}_{agg_cls.__name__}_{'dynamo' if dynamo else 'script'}.py"
    source.write_text("import torch\nfrom test_child_sets import H, Scripted\n\n\nclass Model(Scripted):" +
                      body.replace("\n", "\n    ") + "\n")
    spec = importlib.util.spec_from_file_location(source.stem, source)
    module = importlib.util.module_from_spec(spec)
    sys.modules[source.stem] = module  # dynamo looks its globals up there
    spec.loader.exec_module(module)
    return module.Model(agg_cls())


def _export(module: nn.Module, encoding: str, dynamo: bool, path) -> None:
    names = ["words", *ENCODINGS[encoding][0], "order"]
    example = _feeds(encoding, S.random_nary_tree(6, 3, np.random.default_rng(0), V))
    args = tuple(torch.from_numpy(example[n]) for n in names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            dims = {"words": {0: "N"}, "order": {0: "L"}, "parent": {0: "N"}, "offsets": {0: "N1"},
                    "indices": {0: "E"}, "src": {0: "E"}, "dst": {0: "E"}, "edge_index": {1: "E"}}
            torch.onnx.export(module, args, str(path), input_names=names, dynamo=True,
                              dynamic_shapes={n: dims[n] for n in names})
        else:
            dyn = {"words": [0], "order": [0], "parent": [0], "offsets": [0], "indices": [0], "src": [0],
                   "dst": [0], "edge_index": [1]}
            torch.onnx.export(torch.jit.script(module), args, str(path), input_names=names, output_names=["h"],
                              dynamic_axes={n: dyn[n] for n in names}, dynamo=False)


def _feeds(encoding: str, tree: S.NaryForest, order=None) -> dict:
    feeds = {"words": tree.words, "order": tree.order if order is None else np.asarray(order, dtype=np.int64)}
    if encoding == "parent":
        feeds["parent"] = S.parents_of(tree.children)
    elif encoding == "csr":
        feeds["offsets"], feeds["indices"] = S.csr_of(tree.children)
    elif encoding == "edges":
        feeds["src"], feeds["dst"] = S.edge_index_of(tree.children)
    else:
        feeds["edge_index"] = S.edge_index_of(tree.children)
    return {k: np.ascontiguousarray(v) for k, v in feeds.items()}


def _structures(encoding: str):
    """(name, tree, orders) for the encoding: SST trees and random n-ary trees (DAGs where the encoding lists
    predecessors), each with its height order, random topological orders and visits that are not one pass."""
    rng = np.random.default_rng(7)
    trees = []
    sst = S.sst_dir_default()
    if sst is not None:
        forest = S.batch(S.read_sst(sst, split="test", vocab_size=V, limit=6))
        trees.append(("sst", S.nary_from_forest(forest)))
    trees += [(f"nary{n}", S.random_nary_tree(n, k, rng, V)) for n, k in ((1, 2), (9, 3), (40, 5))]
    if encoding != "parent":
        trees += [(f"dag{n}", S.random_dag(n, 3, rng, V)) for n in (7, 30)]
    for name, tree in trees:
        orders = {"height": tree.order}
        orders.update({f"topo{k}": o for k, o in enumerate(S.topological_orders(tree.children, 2, rng))})
        odd = S.odd_orders(tree.order)
        orders.update({k: odd[k] for k in ("reversed", "twice", "subset", "empty", "shuffled")})
        yield name, tree, orders


CASES = [(enc, agg, dyn) for enc, (_, aggs) in ENCODINGS.items() for agg in aggs for dyn in (False, True)
         if ("dynamo" if dyn else "script") in getattr(agg, "EXPORTERS", ("script", "dynamo"))]


def _assert_matches_eager(session, module, encoding: str) -> None:
    """The converted session against eager PyTorch on every structure of the encoding, in every visit order."""
    names = [i.name for i in session.get_inputs()]
    for name, tree, orders in _structures(encoding):
        for order_name, order in orders.items():
            feeds = _feeds(encoding, tree, order)
            with torch.no_grad():
                expected = module(*[torch.from_numpy(feeds[n]) for n in names]).numpy()
            got = session.run(None, {n: feeds[n] for n in names})[0]
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=f"{name}, order {order_name}")


def _exported(tmp_path, encoding: str, agg, dynamo: bool):
    """The user's module for (encoding, agg), exported with the chosen exporter to tmp_path / "model.onnx"."""
    if dynamo:
        pytest.importorskip("onnxscript")
        torch._dynamo.reset()
    torch.manual_seed(0)
    sys.path.insert(0, str(Path(__file__).parent))  # the user's file imports this one's cells
    module = _module(encoding, agg, dynamo, tmp_path).eval()
    _export(module, encoding, dynamo, tmp_path / "model.onnx")
    return module


@pytest.mark.parametrize("encoding,agg,dynamo", CASES,
                         ids=[f"{e}-{a.__name__}-{'dynamo' if d else 'script'}" for e, a, d in CASES])
def test_child_set_model_converts_and_matches_eager(tmp_path, encoding, agg, dynamo):
    module = _exported(tmp_path, encoding, agg, dynamo)
    src = tmp_path / "model.onnx"
    report = cortex.convert(src, tmp_path / "model.cortex.onnx")
    assert [r.converted for r in report.regions] == [True], report.regions[0].reason
    _assert_matches_eager(cortex.InferenceSession(str(tmp_path / "model.cortex.onnx")), module, encoding)


# ---- the CUDA target: compiles everywhere nvcc is; runs and matches where a GPU is (tools/gpu_check.sh) ----------

CUDA_CASES = [("parent", MaskMatmul, False), ("csr", CsrSlice, False), ("edge_index", EdgeIndexMean, False),
              ("parent", BoolIndexSum, True), ("parent", WhereMax, False), ("parent", BoolIndexAttention, False),
              ("edge_index", EdgeIndexMaskAttention, True), ("edge_index", EdgeIndexUnguardedAttention, False),
              ("parent", ParentMaskAttention, False)]


@pytest.mark.parametrize("encoding,agg,dynamo", CUDA_CASES,
                         ids=[f"{e}-{a.__name__}-{'dynamo' if d else 'script'}" for e, a, d in CUDA_CASES])
def test_child_set_models_on_cuda(tmp_path, encoding, agg, dynamo):
    from gpu import gpu_skip_reason, nvcc_missing

    if nvcc_missing():
        pytest.skip(nvcc_missing())
    module = _exported(tmp_path, encoding, agg, dynamo)
    report = cortex.convert(tmp_path / "model.onnx", tmp_path / "model.cortex.onnx", target="cuda")
    assert [r.converted for r in report.regions] == [True], report.regions[0].reason
    if gpu_skip_reason():
        pytest.skip(f"compiled for CUDA; not run: {gpu_skip_reason()}")
    _assert_matches_eager(cortex.InferenceSession(str(tmp_path / "model.cortex.onnx"), device="cuda"), module,
                          encoding)


class BatchedWeightSum(nn.Module):
    """The members' rows times a batched [1, H, H] weight: [1, M, H], whose layout a per-member product would lose."""

    def __init__(self):
        super().__init__()
        self.W3 = nn.Parameter(torch.randn(1, H, H) * 0.1)

    def forward(self, h, parent, v):
        return (h[parent == v] @ self.W3).sum(-2)


def test_a_product_of_set_rows_by_a_batched_weight_is_refused_or_exact(tmp_path):
    torch.manual_seed(0)
    sys.path.insert(0, str(Path(__file__).parent))
    module = _module("parent", BatchedWeightSum, False, tmp_path).eval()
    _export(module, "parent", False, tmp_path / "model.onnx")
    report = cortex.convert(tmp_path / "model.onnx", tmp_path / "model.cortex.onnx")
    if not report.regions[0].converted:
        assert "batched operand" in report.regions[0].reason
        return
    _assert_matches_eager(cortex.InferenceSession(str(tmp_path / "model.cortex.onnx")), module, "parent")


class EdgeIndexSameRowMask(nn.Module):
    """A mask over the targets weighing rows gathered at the targets themselves: not the set of sources."""

    def forward(self, h, edge_index, v):
        return (h[edge_index[1]] * (edge_index[1] == v).unsqueeze(-1).float()).sum(0)


class ParentZeroFilledSoftmax(nn.Module):
    """A softmax over the whole table whose non-members hold 0, not -inf: every row weighs in."""

    def forward(self, h, parent, v):
        scores = torch.where(parent == v, h.sum(-1), torch.zeros(1))
        return (torch.softmax(scores, dim=-1).unsqueeze(-1) * h).sum(0)


REFUSED = [("edge_index", EdgeIndexSameRowMask, "do not span the same axis"),
           ("parent", ParentZeroFilledSoftmax, "not -inf")]


@pytest.mark.parametrize("encoding,agg,reason", REFUSED, ids=[a.__name__ for _, a, _ in REFUSED])
@pytest.mark.parametrize("dynamo", [False, True], ids=["script", "dynamo"])
def test_masks_that_do_not_select_the_set_are_refused(tmp_path, encoding, agg, reason, dynamo):
    module = _exported(tmp_path, encoding, agg, dynamo)
    report = cortex.convert(tmp_path / "model.onnx", tmp_path / "model.cortex.onnx")
    assert not report.regions[0].converted
    assert reason in report.regions[0].reason


def _converted_feeds(tmp_path, encoding: str, agg) -> dict:
    """The scripted model for (encoding, agg) exported and converted in tmp_path; feeds of a 9-node tree."""
    torch.manual_seed(0)
    sys.path.insert(0, str(Path(__file__).parent))
    module = _module(encoding, agg, False, tmp_path).eval()
    _export(module, encoding, False, tmp_path / "model.onnx")
    report = cortex.convert(tmp_path / "model.onnx", tmp_path / "model.cortex.onnx")
    assert [r.converted for r in report.regions] == [True], report.regions[0].reason
    return _feeds(encoding, S.random_nary_tree(9, 3, np.random.default_rng(1), V))


def _both_fail(tmp_path, feeds: dict, match: str) -> None:
    """The original fails on feeds, and the converted model raises with `match` in its message."""
    import onnxruntime as ort

    with pytest.raises(Exception):
        ort.InferenceSession(str(tmp_path / "model.onnx")).run(None, feeds)
    with pytest.raises(Exception, match=match):
        cortex.InferenceSession(str(tmp_path / "model.cortex.onnx")).run(None, feeds)


def test_a_bad_source_outside_the_mask_is_the_originals_error(tmp_path):
    """h[edge_index[0]] gathers every edge's source, inside the set or not: an out-of-range source is an error in
    the original even on an edge into a node no one visits, and the converted model raises too."""
    feeds = _converted_feeds(tmp_path, "edge_index", EdgeIndexMaskSum)
    n = feeds["words"].shape[0]
    bad = np.array([[n + 5], [n + 7]], dtype=feeds["edge_index"].dtype)  # into a node that does not exist
    feeds["edge_index"] = np.ascontiguousarray(np.concatenate([feeds["edge_index"], bad], axis=1))
    _both_fail(tmp_path, feeds, "out of range")


@pytest.mark.parametrize("bad", ["source out of range", "lengths differ"])
def test_separate_edge_vectors_read_whole_keep_the_originals_errors(tmp_path, bad):
    """h[src] masked by dst == v gathers every source and pairs src[e] with dst[e]: an out-of-range source (on an
    edge into a node no one visits) or vectors of different lengths fail the original, and the converted model
    raises too, with the reason."""
    feeds = _converted_feeds(tmp_path, "edges", EdgesMaskMatmul)
    n = feeds["words"].shape[0]
    if bad == "source out of range":
        feeds["src"] = np.append(feeds["src"], n + 5).astype(feeds["src"].dtype)
        feeds["dst"] = np.append(feeds["dst"], n + 7).astype(feeds["dst"].dtype)
    else:
        feeds["src"] = np.append(feeds["src"], 0).astype(feeds["src"].dtype)
    _both_fail(tmp_path, feeds, "out of range" if bad == "source out of range" else "same length")


@pytest.mark.parametrize("encoding,agg,expected", [
    ("edge_index", EdgeIndexMaskMatmul, ("edge_index", 4)), ("parent", ParentUnitAxisMatmul, ("parent", 1))],
    ids=["edge_index-mask-matmul", "parent-unit-axis"])
def test_a_mask_over_a_whole_axis_lowers_to_the_structures_set(tmp_path, encoding, agg, expected):
    """The frontend proves what a mask product selects and lowers it to the set the structure defines: an edge
    list's members are the sources of the edges into v (read whole: the fourth bound), a parent array's the rows
    whose parent is v."""
    import onnx

    from cortex.frontend import find_regions
    from cortex.ir import nodes as ir

    torch.manual_seed(0)
    sys.path.insert(0, str(Path(__file__).parent))
    module = _module(encoding, agg, False, tmp_path).eval()
    _export(module, encoding, False, tmp_path / "model.onnx")
    (region,) = find_regions(onnx.load(str(tmp_path / "model.onnx")))
    assert region.program is not None, region.reason
    sets = {(e.encoding, len(e.bounds)) for e in ir.walk_rows([x for c in region.program.cases for _, x in c.writes])
            if isinstance(e, ir.SetReduce)}
    assert sets == {expected}

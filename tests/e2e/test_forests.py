"""Padded forests (issue 19, "Tables of any shape"): state tables [B, N, H] holding B trees, one loop over positions v
advancing every tree at once (`h[:, v] = cell(x[:, v], h[bidx, left[:, v]], ...)`, `bidx = torch.arange(B)`), as
people write batched TreeLSTMs. Written in ordinary PyTorch, exported with both real exporters, converted, and
matched against eager PyTorch (and against ONNX Runtime on the original export, whose semantics Cortex keeps) on SST
trees and random n-ary trees, in their visit order and in visits that are not one pass; what Cortex cannot prove
exact is refused with the node and the reason."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
from torch import Tensor, nn  # noqa: E402

import cortex  # noqa: E402
from cortex.examples import structures as S  # noqa: E402

V, E, H = 20, 6, 8


class BinaryTreeLSTM(nn.Module):
    """Tai et al.'s binary TreeLSTM over a padded forest: a missing child (-1) reads as zeros through a mask."""

    def __init__(self):
        super().__init__()
        self.hidden = H
        self.emb = nn.Embedding(V, E)
        self.W = nn.Linear(E, 5 * H)
        self.U = nn.Linear(2 * H, 5 * H, bias=False)

    def cell(self, x: Tensor, hl: Tensor, hr: Tensor, cl: Tensor, cr: Tensor):
        g = self.W(x) + self.U(torch.cat([hl, hr], -1))
        i, fl, fr, o, u = g.chunk(5, -1)
        c = torch.sigmoid(i) * torch.tanh(u) + torch.sigmoid(fl) * cl + torch.sigmoid(fr) * cr
        return torch.sigmoid(o) * torch.tanh(c), c

    def forward(self, words: Tensor, left: Tensor, right: Tensor, order: Tensor) -> Tensor:
        B, n = left.size(0), left.size(1)
        bidx = torch.arange(B).view(-1, 1)
        h = torch.zeros(B, n, self.hidden)
        c = torch.zeros(B, n, self.hidden)
        for k in range(order.size(0)):
            v = order[k:k + 1]  # (TorchScript's export of h[bidx, l] with a 0-d v mixes the trees)
            l, r = left[:, v], right[:, v]
            ml, mr = (l >= 0).float().unsqueeze(-1), (r >= 0).float().unsqueeze(-1)
            h_new, c_new = self.cell(self.emb(words[:, v]), h[bidx, l] * ml, h[bidx, r] * mr, c[bidx, l] * ml,
                                     c[bidx, r] * mr)
            h[:, v] = h_new
            c[:, v] = c_new
        return h


class BinaryTreeLSTMWhile(BinaryTreeLSTM):
    """The same model for dynamo: torch.while_loop, v read as a [1] tensor, functional writes."""

    def forward(self, words, left, right, order):
        B, n = left.size(0), left.size(1)
        bidx = torch.arange(B).view(-1, 1)

        def cond_fn(k, h, c):
            return k < order.size(0)

        def body_fn(k, h, c):
            v = order[k.unsqueeze(0)]
            l, r = left[:, v], right[:, v]
            ml, mr = (l >= 0).float().unsqueeze(-1), (r >= 0).float().unsqueeze(-1)
            h_new, c_new = self.cell(self.emb(words[:, v]), h[bidx, l] * ml, h[bidx, r] * mr, c[bidx, l] * ml,
                                     c[bidx, r] * mr)
            return k + 1, h.index_put((bidx, v), h_new), c.index_put((bidx, v), c_new)

        _, h, _ = torch.while_loop(cond_fn, body_fn, (torch.zeros((), dtype=torch.int64), torch.zeros(B, n, self.hidden),
                                                      torch.zeros(B, n, self.hidden)))
        return h


class ChildSumTreeLSTM(nn.Module):
    """Tai et al.'s Child-Sum TreeLSTM over a padded forest of n-ary trees (children [B, N, K], -1 padded): a
    forget gate per child, sums over the children."""

    def __init__(self):
        super().__init__()
        self.hidden = H
        self.emb = nn.Embedding(V, E)
        self.W = nn.Linear(E, 3 * H)
        self.U = nn.Linear(H, 3 * H, bias=False)
        self.W_f = nn.Linear(E, H)
        self.U_f = nn.Linear(H, H, bias=False)

    def cell(self, x: Tensor, hk: Tensor, ck: Tensor, mask: Tensor):
        """x [B, 1, E]; hk, ck [B, 1, K, H]; mask [B, 1, K, 1]."""
        hk, ck = hk * mask, ck * mask
        i, o, u = (self.W(x) + self.U(hk.sum(-2))).chunk(3, -1)
        f = torch.sigmoid(self.W_f(x).unsqueeze(-2) + self.U_f(hk))
        c = torch.sigmoid(i) * torch.tanh(u) + (f * ck).sum(-2)
        return torch.sigmoid(o) * torch.tanh(c), c

    def step(self, words: Tensor, children: Tensor, v: Tensor, bidx: Tensor, h: Tensor, c: Tensor):
        """The new rows [B, 1, H] of every tree's node v (v [1]; h, c [B, N, H]; bidx [B, 1, 1])."""
        kids = children[:, v]  # [B, 1, K]
        mask = (kids >= 0).float().unsqueeze(-1)
        return self.cell(self.emb(words[:, v]), h[bidx, kids], c[bidx, kids], mask)

    def forward(self, words: Tensor, structure: Tensor, order: Tensor) -> Tensor:
        B, n = structure.size(0), structure.size(1)
        bidx = torch.arange(B).view(-1, 1, 1)
        h = torch.zeros(B, n, self.hidden)
        c = torch.zeros(B, n, self.hidden)
        for k in range(order.size(0)):
            v = order[k:k + 1]
            h_new, c_new = self.step(words, structure, v, bidx, h, c)
            h[:, v] = h_new
            c[:, v] = c_new
        return h


class ChildSumWhile(ChildSumTreeLSTM):
    def forward(self, words, children, order):
        B, n = children.size(0), children.size(1)
        bidx = torch.arange(B).view(-1, 1, 1)

        def cond_fn(k, h, c):
            return k < order.size(0)

        def body_fn(k, h, c):
            v = order[k.unsqueeze(0)]
            h_new, c_new = self.step(words, children, v, bidx, h, c)
            h, c = h.clone(), c.clone()
            h[:, v] = h_new
            c[:, v] = c_new
            return k + 1, h, c

        _, h, _ = torch.while_loop(cond_fn, body_fn, (torch.zeros((), dtype=torch.int64), torch.zeros(B, n, self.hidden),
                                                      torch.zeros(B, n, self.hidden)))
        return h


class UnmaskedRNN(nn.Module):
    """h[:, v] = tanh(W x + U (h[b, l] + h[b, r])) with no mask: a leaf reads its children at -1. Eager PyTorch
    reads tree b's last row; TorchScript's export reads row b * N - 1 of the flattened table (the previous tree's
    last row, as this iteration began): Cortex keeps the ONNX model's semantics."""

    def __init__(self):
        super().__init__()
        self.hidden = H
        self.emb = nn.Embedding(V, H)
        self.U = nn.Linear(H, H)

    def forward(self, words: Tensor, left: Tensor, right: Tensor, order: Tensor) -> Tensor:
        B, n = left.size(0), left.size(1)
        bidx = torch.arange(B).view(-1, 1)
        h = torch.zeros(B, n, self.hidden)
        for k in range(order.size(0)):
            v = order[k:k + 1]
            h[:, v] = torch.tanh(self.emb(words[:, v]) + self.U(h[bidx, left[:, v]] + h[bidx, right[:, v]]))
        return h


class ParentChildSum(ChildSumTreeLSTM):
    """The same Child-Sum TreeLSTM over a padded forest given as parent arrays [B, N] (-1 at a root): each tree's
    children found with `parent == v`, summed by a mask matmul or by masking the whole table (issue 19: a child set
    over a padded forest)."""

    def __init__(self, form: str):
        super().__init__()
        self.matmul = form == "matmul"

    def step(self, words: Tensor, parent: Tensor, v: Tensor, bidx: Tensor, h: Tensor, c: Tensor):
        x = self.emb(words[:, v])  # [B, 1, E]
        sel = (parent == v).float()  # [B, N]: tree b's children of its node v
        f = torch.sigmoid(self.W_f(x) + self.U_f(h))  # [B, N, H]
        if self.matmul:
            hs, fc = sel.unsqueeze(-2) @ h, sel.unsqueeze(-2) @ (f * c)
        else:
            m = sel.unsqueeze(-1)
            hs, fc = (h * m).sum(1, keepdim=True), (f * c * m).sum(1, keepdim=True)
        i, o, u = (self.W(x) + self.U(hs)).chunk(3, -1)
        c_new = torch.sigmoid(i) * torch.tanh(u) + fc
        return torch.sigmoid(o) * torch.tanh(c_new), c_new


class ParentChildSumWhile(ParentChildSum):
    """The same for dynamo: torch.while_loop, functional scatter writes."""

    def forward(self, words, parent, order):
        B, n = parent.size(0), parent.size(1)
        bidx = torch.arange(B).view(-1, 1, 1)  # (unused by the parent array's step)

        def cond_fn(k, h, c):
            return k < order.size(0)

        def body_fn(k, h, c):
            v = order[k.unsqueeze(0)]
            h_new, c_new = self.step(words, parent, v, bidx, h, c)
            at = v.view(1, 1, 1).expand(h.size(0), 1, self.hidden)
            return k + 1, h.scatter(1, at, h_new), c.scatter(1, at, c_new)

        _, h, _ = torch.while_loop(cond_fn, body_fn, (torch.zeros((), dtype=torch.int64), torch.zeros(B, n, self.hidden),
                                                      torch.zeros(B, n, self.hidden)))
        return h


def _export(module, names, example, path, dynamo):
    args = tuple(torch.from_numpy(example[n]) for n in names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch._dynamo.reset()
            B, N = torch.export.Dim("B"), torch.export.Dim("N")
            dims = {n: ({0: torch.export.Dim("L")} if n == "order" else {0: B, 1: N}) for n in names}
            with torch.no_grad():
                torch.onnx.export(module, args, str(path), input_names=names, output_names=["h"], dynamo=True,
                                  dynamic_shapes=dims)
        else:
            dyn = {n: ([0] if n == "order" else [0, 1]) for n in names}
            torch.onnx.export(torch.jit.script(module), args, str(path), input_names=names, output_names=["h"],
                              dynamic_axes=dyn, dynamo=False)


def _forests(k: int):
    """(name, padded forest) of SST trees (binary) and random n-ary trees of up to k children."""
    rng = np.random.default_rng(3)
    out = []
    sst = S.sst_dir_default()
    if sst is not None and k == 2:
        trees = [S.nary_from_forest(t) for t in S.read_sst(sst, split="test", vocab_size=V, limit=5)]
        out.append(("sst", S.pad_forest(trees)))
    out.append(("nary", S.pad_forest([S.random_nary_tree(n, k, rng, V) for n in (1, 9, 4, 17)])))
    out.append(("one", S.pad_forest([S.random_nary_tree(12, k, rng, V)])))
    return out


def _parents(forest: S.PaddedForest) -> np.ndarray:
    """[B, N] each position's parent position in its tree (-1 at a root and at padding)."""
    parent = np.full(forest.words.shape, -1, dtype=np.int64)
    for b, u, k in zip(*np.nonzero(forest.children >= 0)):
        parent[b, forest.children[b, u, k]] = u
    return parent


def _feeds(forest: S.PaddedForest, names, order) -> dict:
    arrays = {"words": forest.words, "left": forest.left, "right": forest.right, "children": forest.children,
              "order": np.asarray(order, dtype=np.int64)}
    if "parent" in names:
        arrays["parent"] = _parents(forest)
    return {n: np.ascontiguousarray(arrays[n]) for n in names}


def _orders(forest: S.PaddedForest) -> dict:
    n = forest.words.shape[1]
    rng = np.random.default_rng(5)
    return {"visit": forest.order, "reversed": forest.order[::-1].copy(), "twice": np.concatenate([forest.order] * 2),
            "shuffled": rng.permutation(n), "negative": np.array([-1, 0, n - 1], dtype=np.int64)[: max(n, 1)],
            "empty": np.zeros(0, dtype=np.int64)}


def _convert_and_check(tmp_path, module, names, dynamo, k, against_ort=False, target="cpu"):
    forests = _forests(k)
    src = tmp_path / "model.onnx"
    example = dict(forests)["nary"]  # several trees of several nodes: dynamo specializes a dimension of 1
    _export(module, names, _feeds(example, names, example.order), src, dynamo)
    report = cortex.convert(src, tmp_path / "model.cortex.onnx", target=target)
    assert report.regions and all(r.converted for r in report.regions), report
    if target == "cuda":
        from gpu import gpu_skip_reason
        if gpu_skip_reason():
            pytest.skip(f"compiled for CUDA; not run: {gpu_skip_reason()}")
    session = cortex.InferenceSession(str(tmp_path / "model.cortex.onnx"), **({"device": "cuda"} if target == "cuda"
                                                                               else {}))
    original = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    for name, forest in forests:
        for order_name, order in _orders(forest).items():
            feeds = _feeds(forest, names, order)
            if against_ort:
                expected = original.run(None, feeds)[0]
            else:
                if dynamo:
                    torch._dynamo.reset()  # eager while_loop compiles its body: none kept from other shapes
                with torch.no_grad():
                    expected = module(*[torch.from_numpy(feeds[n]) for n in names]).numpy()
            got = session.run(None, feeds)[0]
            assert got.shape == expected.shape
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=f"{name}, order {order_name}")


MODELS = {"binary-script": (BinaryTreeLSTM, ["words", "left", "right", "order"], False, 2),
          "binary-dynamo": (BinaryTreeLSTMWhile, ["words", "left", "right", "order"], True, 2),
          "childsum-script": (ChildSumTreeLSTM, ["words", "children", "order"], False, 4),
          "childsum-dynamo": (ChildSumWhile, ["words", "children", "order"], True, 4),
          "parent-matmul-script": (lambda: ParentChildSum("matmul"), ["words", "parent", "order"], False, 4),
          "parent-mask-script": (lambda: ParentChildSum("mask"), ["words", "parent", "order"], False, 4),
          "parent-matmul-dynamo": (lambda: ParentChildSumWhile("matmul"), ["words", "parent", "order"], True, 4),
          "parent-mask-dynamo": (lambda: ParentChildSumWhile("mask"), ["words", "parent", "order"], True, 4)}


@pytest.mark.parametrize("which", list(MODELS))
def test_padded_forest_model_converts_and_matches_eager(tmp_path, which):
    cls, names, dynamo, k = MODELS[which]
    if dynamo:
        pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    # eager scatter refuses the index -1 that the export's ScatterElements wraps: the ONNX model is the reference
    _convert_and_check(tmp_path, cls().eval(), names, dynamo, k, against_ort=which.startswith("parent-") and dynamo)


@pytest.mark.parametrize("which", ["binary-script", "childsum-dynamo", "unmasked-script", "parent-matmul-script"])
def test_padded_forest_models_on_cuda(tmp_path, which):
    """The CUDA target: compiles everywhere nvcc is; runs and matches where a GPU is (tools/gpu_check.sh)."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent.parent))
    from gpu import nvcc_missing

    if nvcc_missing():
        pytest.skip(nvcc_missing())
    torch.manual_seed(0)
    if which == "unmasked-script":
        _convert_and_check(tmp_path, UnmaskedRNN().eval(), ["words", "left", "right", "order"], False, 2,
                           against_ort=True, target="cuda")
        return
    cls, names, dynamo, k = MODELS[which]
    if dynamo:
        pytest.importorskip("onnxscript")
    _convert_and_check(tmp_path, cls().eval(), names, dynamo, k, target="cuda")


@pytest.mark.parametrize("dynamo", [False, True], ids=["script", "dynamo"])
def test_reads_at_minus_one_keep_the_exported_semantics(tmp_path, dynamo):
    """Unmasked reads at -1: TorchScript's flat index reads another tree's row (as the iteration began), dynamo's
    GatherND the tree's own last row; the converted model returns what ONNX Runtime returns on the export."""
    if dynamo:
        pytest.skip("dynamo cannot export a Python for loop over a tensor's length")
    torch.manual_seed(0)
    _convert_and_check(tmp_path, UnmaskedRNN().eval(), ["words", "left", "right", "order"], dynamo, 2,
                       against_ort=True)


class ReadsTreeZero(nn.Module):
    """Every tree reads tree 0's rows: not one tree per position (the trees would see each other's writes)."""

    def __init__(self):
        super().__init__()
        self.hidden = H
        self.U = nn.Linear(H, H)

    def forward(self, left: Tensor, order: Tensor) -> Tensor:
        B, n = left.size(0), left.size(1)
        h = torch.ones(B, n, self.hidden)
        for k in range(order.size(0)):
            v = order[k:k + 1]
            zero = torch.zeros_like(left[:, v])
            h[:, v] = torch.tanh(self.U(h[zero, left[:, v]]))
        return h


class SumsOverTrees(nn.Module):
    """A reduction over the batch axis mixes the trees."""

    def __init__(self):
        super().__init__()
        self.hidden = H
        self.U = nn.Linear(H, H)

    def forward(self, left: Tensor, order: Tensor) -> Tensor:
        B, n = left.size(0), left.size(1)
        bidx = torch.arange(B).view(-1, 1)
        h = torch.zeros(B, n, self.hidden)
        for k in range(order.size(0)):
            v = order[k:k + 1]
            h[:, v] = torch.tanh(self.U(h[bidx, left[:, v]]) + h[bidx, left[:, v]].sum(0, keepdim=True))
        return h


@pytest.mark.parametrize("cls,why", [(ReadsTreeZero, "forest table"), (SumsOverTrees, "batch axis")])
def test_a_forest_model_that_mixes_trees_is_refused(tmp_path, cls, why):
    names = ["left", "order"]
    forest = dict(_forests(2))["nary"]
    src = tmp_path / "model.onnx"
    _export(cls().eval(), names, _feeds(forest, names, forest.order), src, False)
    report = cortex.convert(src, tmp_path / "model.cortex.onnx")
    assert report.regions and not any(r.converted for r in report.regions)
    assert why in report.regions[0].reason, report.regions[0].reason


def test_no_tree_fails_where_the_dynamo_export_fails(tmp_path):
    """dynamo's index_put shapes take max(B, 1) trees: with B = 0 and a loop that runs, the original fails, and so
    does the converted model (with no iteration both return the empty tables)."""
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    names = ["words", "left", "right", "order"]
    example = dict(_forests(2))["nary"]
    src = tmp_path / "model.onnx"
    _export(BinaryTreeLSTMWhile().eval(), names, _feeds(example, names, example.order), src, True)
    report = cortex.convert(src, tmp_path / "model.cortex.onnx")
    assert [r.converted for r in report.regions] == [True], report.regions[0].reason
    session = cortex.InferenceSession(str(tmp_path / "model.cortex.onnx"))
    original = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    n = 5
    empty = {"words": np.zeros((0, n), np.int64), "left": np.zeros((0, n), np.int64),
             "right": np.zeros((0, n), np.int64)}
    with pytest.raises(Exception):
        original.run(None, {**empty, "order": np.arange(n, dtype=np.int64)})
    with pytest.raises(Exception, match="no tree"):
        session.run(None, {**empty, "order": np.arange(n, dtype=np.int64)})
    feeds = {**empty, "order": np.zeros(0, np.int64)}
    np.testing.assert_array_equal(session.run(None, feeds)[0], original.run(None, feeds)[0])

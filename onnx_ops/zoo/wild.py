"""Recursive models written the way PyTorch users write them (not in Cortex's zoo styles), each exported with a real
exporter: the cases the generality issue measured, kept as regression tests. Each entry gives the module, its
structure kind, the exporter and how to build its inputs; `export_model` writes the ONNX file."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from onnx_ops import grids
from cortex.examples import structures as st


class TaiTreeLSTM(nn.Module):
    """Binary TreeLSTM (Tai et al. 2015) with h = zeros(N, H); c = zeros(N, H): TorchScript merges the two zero
    tensors into one value that initializes both loop-carried tables."""

    def __init__(self, vocab=50, emb=8, hidden=8):
        super().__init__()
        self.hidden = hidden
        self.emb = nn.Embedding(vocab, emb)
        self.W = nn.Linear(emb, 3 * hidden)
        self.U = nn.Linear(2 * hidden, 5 * hidden)

    def forward(self, words, left, right, order):
        N = words.size(0)
        h = torch.zeros(N, self.hidden)
        c = torch.zeros(N, self.hidden)
        for i in range(order.size(0)):
            v = order[i]
            if bool(left[v] < 0):
                i_, o, u = self.W(self.emb(words[v])).chunk(3)
                c_new = torch.sigmoid(i_) * torch.tanh(u)
            else:
                l, r = left[v], right[v]
                i_, fl, fr, o, u = self.U(torch.cat([h[l], h[r]])).chunk(5)
                c_new = torch.sigmoid(i_) * torch.tanh(u) + torch.sigmoid(fl) * c[l] + torch.sigmoid(fr) * c[r]
            h[v] = torch.sigmoid(o) * torch.tanh(c_new)
            c[v] = c_new
        return h, c


class ChildSumForget(nn.Module):
    """Child-Sum TreeLSTM with per-child forget gates sigmoid(Wf(x).unsqueeze(0) + Uf(h_children)): a [K, H]
    stack broadcast against a [1, H] row."""

    def __init__(self, vocab=50, emb=8, hidden=8):
        super().__init__()
        self.hidden = hidden
        self.emb = nn.Embedding(vocab, emb)
        self.ioux = nn.Linear(emb, 3 * hidden)
        self.iouh = nn.Linear(hidden, 3 * hidden)
        self.fx = nn.Linear(emb, hidden)
        self.fh = nn.Linear(hidden, hidden)

    def forward(self, words, children, order):
        N = words.size(0)
        h = torch.zeros(N, self.hidden)
        c = torch.zeros(N, self.hidden)
        for i in range(order.size(0)):
            v = order[i]
            x = self.emb(words[v])
            kids = children[v]
            mask = (kids >= 0).float().unsqueeze(1)
            idx = kids.clamp(min=0)
            h_children = h[idx] * mask
            c_children = c[idx] * mask
            iou = self.ioux(x) + self.iouh(h_children.sum(0))
            i_, o, u = torch.split(iou, self.hidden)
            f = torch.sigmoid(self.fx(x).unsqueeze(0) + self.fh(h_children))
            c_new = torch.sigmoid(i_) * torch.tanh(u) + (f * c_children).sum(0)
            h[v] = torch.sigmoid(o) * torch.tanh(c_new)
            c[v] = c_new
        return h, c


class ChildSumParent(ChildSumForget):
    """ChildSumForget with each node's children found in a parent array (`parent == v`, boolean indexing), as
    dependency-tree models receive them: only the present children are read."""

    def forward(self, words, parent, order):
        N = words.size(0)
        h = torch.zeros(N, self.hidden)
        c = torch.zeros(N, self.hidden)
        for i in range(order.size(0)):
            v = order[i]
            x = self.emb(words[v])
            kids = parent == v
            h_children = h[kids]
            iou = self.ioux(x) + self.iouh(h_children.sum(0))
            i_, o, u = torch.split(iou, self.hidden)
            f = torch.sigmoid(self.fx(x).unsqueeze(0) + self.fh(h_children))
            c_new = torch.sigmoid(i_) * torch.tanh(u) + (f * c[kids]).sum(0)
            h[v] = torch.sigmoid(o) * torch.tanh(c_new)
            c[v] = c_new
        return h, c


class ChildSumCSR(ChildSumForget):
    """ChildSumForget with each node's children as a CSR list: indices[offsets[v]:offsets[v + 1]]."""

    def forward(self, words, offsets, indices, order):
        N = words.size(0)
        h = torch.zeros(N, self.hidden)
        c = torch.zeros(N, self.hidden)
        for i in range(order.size(0)):
            v = order[i]
            x = self.emb(words[v])
            kids = indices[offsets[v]:offsets[v + 1]]
            h_children = h[kids]
            iou = self.ioux(x) + self.iouh(h_children.sum(0))
            i_, o, u = torch.split(iou, self.hidden)
            f = torch.sigmoid(self.fx(x).unsqueeze(0) + self.fh(h_children))
            c_new = torch.sigmoid(i_) * torch.tanh(u) + (f * c[kids]).sum(0)
            h[v] = torch.sigmoid(o) * torch.tanh(c_new)
            c[v] = c_new
        return h, c


class DagRNNWhere(nn.Module):
    """DAG-RNN over a grid whose missing neighbour reads an extra zero row: torch.where(up[v] < 0,
    torch.tensor(N), up[v])."""

    def __init__(self, features=6, hidden=8):
        super().__init__()
        self.hidden = hidden
        self.inp = nn.Linear(features, hidden)
        self.up = nn.Linear(hidden, hidden, bias=False)
        self.left = nn.Linear(hidden, hidden, bias=False)

    def forward(self, features, up, left, order):
        N = features.size(0)
        h = torch.zeros(N + 1, self.hidden)
        for i in range(order.size(0)):
            v = order[i]
            u = torch.where(up[v] < 0, torch.tensor(N), up[v])
            l = torch.where(left[v] < 0, torch.tensor(N), left[v])
            h[v] = torch.relu(self.inp(features[v]) + self.up(h[u]) + self.left(h[l]))
        return h[:N]


class ZeroBranchTreeRNN(nn.Module):
    """An `if` that returns torch.zeros(H) for a missing child and a table row otherwise."""

    def __init__(self, vocab=50, hidden=8):
        super().__init__()
        self.hidden = hidden
        self.emb = nn.Embedding(vocab, hidden)
        self.U = nn.Linear(2 * hidden, hidden)

    def forward(self, words, left, right, order):
        h = torch.zeros(words.size(0), self.hidden)
        for i in range(order.size(0)):
            v = order[i]
            l, r = left[v], right[v]
            if bool(l >= 0):
                hl = h[l]
            else:
                hl = torch.zeros(self.hidden)
            if bool(r >= 0):
                hr = h[r]
            else:
                hr = torch.zeros(self.hidden)
            h[v] = torch.tanh(self.emb(words[v]) + self.U(torch.cat([hl, hr])))
        return h


class WhileLoopTreeLSTM(TaiTreeLSTM):
    """The TreeLSTM with torch.while_loop (dynamo exporter: a Loop whose condition bounds a counter; reads through
    [1]-shaped indices; leaves chosen branch-free with torch.where)."""

    def forward(self, words, left, right, order):
        N, L = words.shape[0], order.shape[0]

        def cond_fn(i, h, c):
            return i < L

        def body_fn(i, h, c):
            v = order[i.view(1)]
            l, r = left[v], right[v]
            leaf = (l < 0).view(1, 1)
            li, lo, lu = self.W(self.emb(words[v])).chunk(3, dim=1)
            lc = torch.sigmoid(li) * torch.tanh(lu)
            lh = torch.sigmoid(lo) * torch.tanh(lc)
            ls, rs = l.clamp(min=0), r.clamp(min=0)
            ii, fl, fr, o, u = self.U(torch.cat([h[ls], h[rs]], dim=1)).chunk(5, dim=1)
            ic = torch.sigmoid(ii) * torch.tanh(u) + torch.sigmoid(fl) * c[ls] + torch.sigmoid(fr) * c[rs]
            ih = torch.sigmoid(o) * torch.tanh(ic)
            h = h.index_put((v,), torch.where(leaf, lh, ih))
            c = c.index_put((v,), torch.where(leaf, lc, ic))
            return i + 1, h.clone(), c.clone()

        _, h, c = torch.while_loop(cond_fn, body_fn, (torch.tensor(0), torch.zeros(N, self.hidden),
                                                       torch.zeros(N, self.hidden)))
        return h, c


class ScanCondTreeLSTM(TaiTreeLSTM):
    """The TreeLSTM with scan + torch.cond (dynamo exporter: a Scan over the order with an If inside), returning
    the per-step rows too."""

    def forward(self, words, left, right, order):
        from torch._higher_order_ops.scan import scan
        N = words.shape[0]

        def leaf(h, c, x, l, r):
            li, lo, lu = self.W(x).chunk(3, dim=1)
            lc = torch.sigmoid(li) * torch.tanh(lu)
            return torch.sigmoid(lo) * torch.tanh(lc), lc

        def internal(h, c, x, l, r):
            ii, fl, fr, o, u = self.U(torch.cat([h[l], h[r]], dim=1)).chunk(5, dim=1)
            ic = torch.sigmoid(ii) * torch.tanh(u) + torch.sigmoid(fl) * c[l] + torch.sigmoid(fr) * c[r]
            return torch.sigmoid(o) * torch.tanh(ic), ic

        def step(carry, v):
            h, c = carry
            v1 = v.view(1)
            l, r = left[v1], right[v1]
            hn, cn = torch.cond((l < 0).all(), leaf, internal, (h, c, self.emb(words[v1]), l, r))
            return (h.index_put((v1,), hn), c.index_put((v1,), cn)), hn.view(-1)

        (h, c), per_step = scan(step, (torch.zeros(N, self.hidden), torch.zeros(N, self.hidden)), order)
        return h, c, per_step


def binary_feeds(trees):
    f = st.batch(trees)
    return dict(words=f.words, left=f.left, right=f.right, order=f.order)


def nary_feeds(trees):
    f = st.batch_nary([st.nary_from_forest(t) for t in trees])
    return dict(words=f.words, children=f.children, order=f.order)


def grid_feeds(sizes, seed):
    rng = np.random.default_rng(seed)
    g = grids.batch_grids([grids.grid(r, c, 6, rng) for r, c in sizes])
    return dict(features=g.features, up=g.up, left=g.left, order=g.order)


BINARY = ["words", "left", "right", "order"]
MODELS = {  # name -> (module class, exporter, input names, output names, structure kind)
    "tai_treelstm": (TaiTreeLSTM, "torchscript", BINARY, ["h", "c"], "binary"),
    "childsum_forget": (ChildSumForget, "torchscript", ["words", "children", "order"], ["h", "c"], "nary"),
    "dagrnn_where": (DagRNNWhere, "torchscript", ["features", "up", "left", "order"], ["h"], "grid"),
    "zero_branch": (ZeroBranchTreeRNN, "torchscript", BINARY, ["h"], "binary"),
    "while_loop": (WhileLoopTreeLSTM, "dynamo", BINARY, ["h", "c"], "binary"),
    "scan_cond": (ScanCondTreeLSTM, "dynamo", BINARY, ["h", "c", "steps"], "binary"),
}


def feeds_for(kind, rng, count, sst_dir=None):
    if kind == "grid":
        sizes = [(int(rng.integers(1, 6)), int(rng.integers(1, 6))) for _ in range(count)]
        return grid_feeds(sizes, int(rng.integers(1 << 30)))
    trees = (st.read_sst(sst_dir, split="test", vocab_size=50, limit=count) if sst_dir
             else st.sst_like_trees(count, rng, 50))
    return binary_feeds(trees) if kind == "binary" else nary_feeds(trees)


def export_model(name, path, example, **sizes):
    """Exports model `name` (built with `sizes`, e.g. hidden=256) to `path` with its exporter; returns the module."""
    cls, exporter, inputs, outputs, _ = MODELS[name]
    torch.manual_seed(0)
    module = cls(**sizes).eval()
    args = tuple(torch.from_numpy(example[n]) for n in inputs)
    if exporter == "torchscript":
        torch.onnx.export(torch.jit.script(module), args, str(path), dynamo=False, opset_version=17,
                          input_names=inputs, output_names=outputs, dynamic_axes={n: [0] for n in inputs})
    else:
        n_dim, l_dim = torch.export.Dim("N"), torch.export.Dim("L")
        shapes = {n: {0: (l_dim if n == "order" else n_dim)} for n in inputs}
        with torch.no_grad():
            torch.onnx.export(module, args, str(path), dynamo=True, input_names=inputs, output_names=outputs,
                              dynamic_shapes=shapes)
    return module


def eager(module, names, feeds):
    with torch.no_grad():
        out = module(*(torch.from_numpy(feeds[n]) for n in names))
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


class Int32BoolTreeRNN(nn.Module):
    """Structure arrays in int32 and a bool leaf flag (indices widened with .long(): the TorchScript exporter writes
    an invalid ScatterND for int32 row indices)."""

    def __init__(self, vocab=50, hidden=8):
        super().__init__()
        self.hidden = hidden
        self.emb = nn.Embedding(vocab, hidden)
        self.U = nn.Linear(2 * hidden, hidden)

    def visit(self, h, words, left, right, is_leaf, v):
        """Writes row v of h: a leaf's embedding, or its two children's rows combined (the cell every variant's loop
        calls; TorchScript inlines it)."""
        if bool(is_leaf[v]):
            h[v] = torch.tanh(self.emb(words[v]))
        else:
            h[v] = torch.tanh(self.U(torch.cat([h[left[v].long()], h[right[v].long()]])))

    def forward(self, words, left, right, is_leaf, order):
        h = torch.zeros(words.size(0), self.hidden)
        for i in range(order.size(0)):
            v = order[i].long()
            self.visit(h, words, left, right, is_leaf, v)
        return h


class ReverseCounterTreeRNN(Int32BoolTreeRNN):
    """A loop that walks a parents-first order backwards through index arithmetic, with a hand-carried counter."""

    def forward(self, words, left, right, is_leaf, order):
        h = torch.zeros(words.size(0), self.hidden)
        L = order.size(0)
        j = 0
        for _ in range(L):
            v = order[L - 1 - j].long()
            j += 1
            self.visit(h, words, left, right, is_leaf, v)
        return h


class ReverseRangeTreeRNN(Int32BoolTreeRNN):
    """A loop over a parents-first order from its end, `for k in range(L - 1, -1, -1)`: TorchScript computes the
    trip count in the graph (ceil(float(-1 - (L - 1)) / -1)) and the row as L - 1 - i."""

    def forward(self, words, left, right, is_leaf, order):
        h = torch.zeros(words.size(0), self.hidden)
        for k in range(order.size(0) - 1, -1, -1):
            v = order[k].long()
            self.visit(h, words, left, right, is_leaf, v)
        return h


class NestedLoopChildSum(nn.Module):
    """Children summed by a nested loop over a fixed child count (unrolled), with -1 padding masked."""

    def __init__(self, vocab=50, hidden=8, arity=3):
        super().__init__()
        self.hidden, self.arity = hidden, arity
        self.emb = nn.Embedding(vocab, hidden)
        self.U = nn.Linear(hidden, hidden)

    def forward(self, words, children, order):
        h = torch.zeros(words.size(0), self.hidden)
        for i in range(order.size(0)):
            v = order[i]
            acc = torch.zeros(self.hidden)
            for k in range(self.arity):
                kid = children[v, k]
                if bool(kid >= 0):
                    acc = acc + h[kid]
            h[v] = torch.relu(self.emb(words[v]) + self.U(acc))
        return h


class MatrixStateMVRNN(nn.Module):
    """MV-RNN: a vector and a matrix per node, the matrices a rank-3 state table [N, d, d]."""

    def __init__(self, vocab=50, d=4):
        super().__init__()
        self.d = d
        self.emb = nn.Embedding(vocab, d)
        self.mats = nn.Parameter(torch.randn(vocab, d, d) * 0.3)
        self.W = nn.Linear(2 * d, d)
        self.WM = nn.Parameter(torch.randn(d, 2 * d) * 0.3)

    def forward(self, words, left, right, order):
        N = words.size(0)
        a = torch.zeros(N, self.d)
        A = torch.zeros(N, self.d, self.d)
        for i in range(order.size(0)):
            v = order[i]
            if bool(left[v] < 0):
                a[v] = self.emb(words[v])
                A[v] = self.mats[words[v]]
            else:
                l, r = left[v], right[v]
                a[v] = torch.tanh(self.W(torch.cat([A[r] @ a[l], A[l] @ a[r]])))
                A[v] = self.WM @ torch.cat([A[l], A[r]], dim=0)
        return a, A


class TwoPassTreeRNN(Int32BoolTreeRNN):
    """Two recursions: bottom-up, then top-down (parents first, over the reversed order) reading the first pass's
    table."""

    def forward(self, words, left, right, is_leaf, order, parent):
        left, right, order = left.long(), right.long(), order.long()
        N, L = words.size(0), order.size(0)
        up = torch.zeros(N, self.hidden)
        for i in range(L):
            v = order[i]
            if bool(is_leaf[v]):
                up[v] = torch.tanh(self.emb(words[v]))
            else:
                up[v] = torch.tanh(self.U(torch.cat([up[left[v]], up[right[v]]])))
        down = torch.zeros(N, self.hidden)
        for i in range(L):
            v = order[L - 1 - i]
            p = parent[v]
            if bool(p < 0):
                down[v] = up[v]
            else:
                down[v] = torch.tanh(down[p] + up[v])
        return up, down


def int32_feeds(trees):
    return int32_forest_feeds(st.batch(trees))


def int32_forest_feeds(f):
    """The int32/bool models' inputs for a binary forest (one tree or a batch)."""
    parent = np.full(len(f.words), -1, dtype=np.int64)
    for v in range(len(f.words)):
        for child in (f.left[v], f.right[v]):
            if child >= 0:
                parent[child] = v
    return dict(words=f.words, left=f.left.astype(np.int32), right=f.right.astype(np.int32),
                is_leaf=f.left < 0, order=f.order.astype(np.int32), parent=parent)


MODELS.update({
    "childsum_parent": (ChildSumParent, "torchscript", ["words", "parent", "order"], ["h", "c"], "parent"),
    "childsum_csr": (ChildSumCSR, "torchscript", ["words", "offsets", "indices", "order"], ["h", "c"], "csr"),
})
MODELS.update({
    "int32_bool": (Int32BoolTreeRNN, "torchscript", ["words", "left", "right", "is_leaf", "order"], ["h"], "binary32"),
    "reverse_counter": (ReverseCounterTreeRNN, "torchscript", ["words", "left", "right", "is_leaf", "order"], ["h"],
                        "binary32_reversed"),
    "reverse_range": (ReverseRangeTreeRNN, "torchscript", ["words", "left", "right", "is_leaf", "order"], ["h"],
                      "binary32_reversed"),
    "nested_loop": (NestedLoopChildSum, "torchscript", ["words", "children", "order"], ["h"], "nary3"),
    "matrix_state": (MatrixStateMVRNN, "torchscript", BINARY, ["a", "A"], "binary"),
    "two_pass": (TwoPassTreeRNN, "torchscript", ["words", "left", "right", "is_leaf", "order", "parent"], ["up", "down"],
                 "binary32"),
})


_feeds_for_base = feeds_for


def feeds_for(kind, rng, count, sst_dir=None):  # noqa: F811 - extends the kinds above
    if kind.startswith("binary32"):
        trees = (st.read_sst(sst_dir, split="test", vocab_size=50, limit=count) if sst_dir
                 else st.sst_like_trees(count, rng, 50))
        feeds = int32_feeds(trees)
        if kind.endswith("reversed"):
            feeds["order"] = np.ascontiguousarray(feeds["order"][::-1])
        return feeds
    if kind in ("nary3", "parent", "csr"):
        trees = (st.read_sst(sst_dir, split="test", vocab_size=50, limit=count) if sst_dir
                 else st.sst_like_trees(count, rng, 50))
        forest = st.batch_nary([st.nary_from_forest(t) for t in trees])
        return {"nary3": nary3_forest_feeds, "parent": parent_feeds, "csr": csr_feeds}[kind](forest)
    return _feeds_for_base(kind, rng, count, sst_dir)


def reversed_int32_forest_feeds(f):
    feeds = int32_forest_feeds(f)
    feeds["order"] = np.ascontiguousarray(feeds["order"][::-1])
    return feeds


def nary3_forest_feeds(f):
    """The nested-loop model's inputs for an N-ary forest of at most 3 children a node (-1 padded to 3)."""
    if f.children.shape[1] > 3:
        raise ValueError(f"nested_loop takes at most 3 children a node, got {f.children.shape[1]}")
    children = np.full((f.children.shape[0], 3), -1, dtype=np.int64)
    children[:, :f.children.shape[1]] = f.children
    return dict(words=f.words, children=children, order=f.order)


def parent_feeds(f):
    """The parent-array model's inputs for an N-ary forest."""
    return dict(words=f.words, parent=st.parents_of(f.children), order=f.order)


def csr_feeds(f):
    """The CSR model's inputs for an N-ary forest."""
    offsets, indices = st.csr_of(f.children)
    return dict(words=f.words, offsets=offsets, indices=indices, order=f.order)


def _grid_features():
    from onnx_ops.zoo import GRID_FEATURES
    return GRID_FEATURES


#: zoo model -> the models of this module written for its structure, with their sizes for a hidden size and a zoo
#: entry and their inputs for one of that entry's structures (None: the zoo entry's own Loop inputs): the benchmark's
#: newly converted forms (tools/bench.py --forms). The int32/bool, reverse-counter, two-pass and nested-loop models
#: compute RNNs of their own over the same structures; MatrixStateMVRNN is left out (its random matrices of a bench
#: size overflow float32 within a few levels).
BENCH_FORMS = {
    "treelstm": [(n, lambda h, e: dict(vocab=e.vocab, emb=h, hidden=h), None)
                 for n in ("tai_treelstm", "while_loop", "scan_cond")],
    "treernn": [("zero_branch", lambda h, e: dict(vocab=e.vocab, hidden=h), None),
                ("int32_bool", lambda h, e: dict(vocab=e.vocab, hidden=h), int32_forest_feeds),
                ("reverse_counter", lambda h, e: dict(vocab=e.vocab, hidden=h), reversed_int32_forest_feeds),
                ("two_pass", lambda h, e: dict(vocab=e.vocab, hidden=h), int32_forest_feeds)],
    "childsum": [("childsum_forget", lambda h, e: dict(vocab=e.vocab, emb=h, hidden=h), None),
                 ("childsum_parent", lambda h, e: dict(vocab=e.vocab, emb=h, hidden=h), parent_feeds),
                 ("childsum_csr", lambda h, e: dict(vocab=e.vocab, emb=h, hidden=h), csr_feeds),
                 ("nested_loop", lambda h, e: dict(vocab=e.vocab, hidden=h), nary3_forest_feeds)],
    "dagrnn": [("dagrnn_where", lambda h, e: dict(features=_grid_features(), hidden=h), None)],
}

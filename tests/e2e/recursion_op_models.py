"""Binary tree recursions whose step uses the ops issue 19 names (class 4, "ops inside a recursion"), written as
PyTorch users write them: RNTN's tensor composition with torch.einsum, nn.Bilinear, running sums with torch.cumsum,
and a product whose operand's shape the export leaves to the run. tests/e2e/test_recursion_ops.py exports each with
the exporters that take it and matches the converted model against eager PyTorch and ONNX Runtime."""
from __future__ import annotations

import torch
from torch import nn

V, H, F = 20, 6, 5


class RNTN(nn.Module):
    """Socher et al. 2013: h = tanh(h_l^T T h_r + W [h_l; h_r]), the tensor product written with torch.einsum."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, H)
        self.T = nn.Parameter(torch.randn(H, H, H) * 0.2)
        self.W = nn.Linear(2 * H, H)

    def forward(self, words, left, right, order):
        h = torch.zeros(words.size(0), 6)
        for i in range(order.size(0)):
            v = order[i]
            if bool(left[v] < 0):
                h[v] = torch.tanh(self.emb(words[v]))
            else:
                a, b = h[left[v]], h[right[v]]
                h[v] = torch.tanh(torch.einsum("i,kij,j->k", a, self.T, b) + self.W(torch.cat([a, b])))
        return h


class RNTNWhile(RNTN):
    """The RNTN with torch.while_loop: [1, H] rows read through [1]-shaped indices, leaves chosen by torch.where."""

    def forward(self, words, left, right, order):
        N, L = words.shape[0], order.shape[0]

        def cond_fn(i, h):
            return i < L

        def body_fn(i, h):
            v = order[i.view(1)]
            l, r = left[v], right[v]
            a, b = h[l.clamp(min=0)], h[r.clamp(min=0)]
            inner = torch.tanh(torch.einsum("bi,kij,bj->bk", a, self.T, b) + self.W(torch.cat([a, b], dim=1)))
            new = torch.where((l < 0).view(1, 1), torch.tanh(self.emb(words[v])), inner)
            return i + 1, h.index_put((v,), new).clone()

        return torch.while_loop(cond_fn, body_fn, (torch.tensor(0), torch.zeros(N, H)))[1]


class BilinearWhile(nn.Module):
    """nn.Bilinear composes the two children (the TorchScript exporter has no aten::bilinear; dynamo writes it as
    MatMuls, Reshapes and Squeezes)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, H)
        self.bil = nn.Bilinear(H, H, H)

    def forward(self, words, left, right, order):
        N, L = words.shape[0], order.shape[0]

        def cond_fn(i, h):
            return i < L

        def body_fn(i, h):
            v = order[i.view(1)]
            l, r = left[v], right[v]
            inner = torch.tanh(self.bil(h[l.clamp(min=0)], h[r.clamp(min=0)]))
            new = torch.where((l < 0).view(1, 1), torch.tanh(self.emb(words[v])), inner)
            return i + 1, h.index_put((v,), new).clone()

        return torch.while_loop(cond_fn, body_fn, (torch.tensor(0), torch.zeros(N, H)))[1]


class BilinearVectorWhile(BilinearWhile):
    """nn.Bilinear on 1-D rows (no batch dimension)."""

    def forward(self, words, left, right, order):
        N, L = words.shape[0], order.shape[0]

        def cond_fn(i, h):
            return i < L

        def body_fn(i, h):
            v = order[i]
            l, r = left[v], right[v]
            inner = torch.tanh(self.bil(h[l.clamp(min=0)], h[r.clamp(min=0)]))
            new = torch.where(l < 0, torch.tanh(self.emb(words[v])), inner)
            return i + 1, h.index_put((v.view(1),), new.view(1, H)).clone()

        return torch.while_loop(cond_fn, body_fn, (torch.tensor(0), torch.zeros(N, H)))[1]


class CumSumTree(nn.Module):
    """Running sums inside the step: over the stacked children (child positions, as tree convolutions weigh them)
    and over a row, reversed."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, H)
        self.W = nn.Linear(H, H)

    def forward(self, words, left, right, order):
        h = torch.zeros(words.size(0), 6)
        for i in range(order.size(0)):
            v = order[i]
            if bool(left[v] < 0):
                h[v] = torch.tanh(self.emb(words[v]).cumsum(0))
            else:
                kids = torch.stack([h[left[v]], h[right[v]]]).cumsum(0)
                h[v] = torch.tanh(self.W(kids[1] - 0.5 * kids[0]) + h[left[v]].flip(0).cumsum(0).flip(0))
        return h


class CumSumWhile(CumSumTree):
    def forward(self, words, left, right, order):
        N, L = words.shape[0], order.shape[0]

        def cond_fn(i, h):
            return i < L

        def body_fn(i, h):
            v = order[i.view(1)]
            l, r = left[v], right[v]
            a, b = h[l.clamp(min=0)], h[r.clamp(min=0)]
            kids = torch.cat([a, b]).cumsum(0)
            inner = torch.tanh(self.W(kids[1:] - 0.5 * kids[:1]) + torch.cumsum(a, dim=1))
            new = torch.where((l < 0).view(1, 1), torch.tanh(self.emb(words[v]).cumsum(1)), inner)
            return i + 1, h.index_put((v,), new).clone()

        return torch.while_loop(cond_fn, body_fn, (torch.tensor(0), torch.zeros(N, H)))[1]


class RuntimeShapeMatMul(nn.Module):
    """Node features x [N, F] whose feature size the TorchScript export leaves dynamic (it marks every dimension):
    x[v] @ P (a product by a weight proves the size where the row is read) and x[v] @ Q(s).view(F, H), a matrix
    the step computes from the children (a product by a row of static shape proves it too)."""

    def __init__(self):
        super().__init__()
        self.P = nn.Parameter(torch.randn(F, H) * 0.4)
        self.Q = nn.Linear(H, F * H)
        self.U = nn.Linear(H, H)

    def forward(self, x, left, right, order):
        h = torch.zeros(x.size(0), 6)
        for i in range(order.size(0)):
            v = order[i]
            if bool(left[v] < 0):
                h[v] = torch.tanh(x[v] @ self.P)
            else:
                s = h[left[v]] + h[right[v]]
                h[v] = torch.tanh(self.U(s) + torch.matmul(x[v], self.Q(s).view(5, 6)))
        return h


class RuntimeShapeMatrices(nn.Module):
    """A per-node matrix M[v] read from an input whose every dimension the export leaves dynamic: M[v] @ s proves
    the size it contracts, not the size of its result (refused, with the rewrite: static inner dimensions)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, H)

    def forward(self, words, mats, left, right, order):
        h = torch.zeros(words.size(0), 6)
        for i in range(order.size(0)):
            v = order[i]
            if bool(left[v] < 0):
                h[v] = torch.tanh(self.emb(words[v]))
            else:
                h[v] = torch.tanh(torch.matmul(mats[v], h[left[v]] + h[right[v]]))
        return h

"""Recursive and chain models whose loops carry values other than one [N, H] float table, written as PyTorch users
write them (tests/e2e/test_carried_values.py exports them with both exporters)."""
from __future__ import annotations

from typing import List

import torch
from torch import nn

V, H = 20, 8


class Depth1D(nn.Module):
    """A 1-D table (each node's depth) beside the state table; the cell scales by the depth."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, H)
        self.W = nn.Linear(H, H)

    def forward(self, words, left, right, order):
        d = torch.zeros(words.size(0))
        h = torch.zeros(words.size(0), 8)
        for i in range(order.size(0)):
            v = order[i]
            if bool(left[v] < 0):
                d[v] = 0.0
                h[v] = torch.tanh(self.emb(words[v]))
            else:
                d[v] = torch.maximum(d[left[v]], d[right[v]]) + 1.0
                h[v] = torch.tanh(self.W(h[left[v]] + h[right[v]])) * (1.0 + 0.1 * d[v])
        return h, d


class Chain(nn.Module):
    """A chain whose loop carries one state vector; returns the last state."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, H)
        self.W = nn.Linear(H, H)

    def forward(self, words):
        h = torch.zeros(8)
        for i in range(words.size(0)):
            h = torch.tanh(self.emb(words[i]) + self.W(h))
        return h


class ChainList(nn.Module):
    """A chain collecting its states in a Python list, stacked after the loop."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, H)
        self.W = nn.Linear(H, H)

    def forward(self, words):
        h = torch.zeros(8)
        outs: List[torch.Tensor] = []
        for i in range(words.size(0)):
            h = torch.tanh(self.emb(words[i]) + self.W(h))
            outs.append(h)
        return torch.stack(outs)


class ChainLSTMList(nn.Module):
    """An LSTM chain whose h and c start from zeros (TorchScript merges the two into one constant, read twice) and
    whose states are collected in a list."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, H)
        self.gates = nn.Linear(2 * H, 4 * H)

    def forward(self, words):
        h = torch.zeros(8)
        c = torch.zeros(8)
        outs: List[torch.Tensor] = []
        for i in range(words.size(0)):
            i_g, f_g, o_g, u_g = self.gates(torch.cat([self.emb(words[i]), h], -1)).chunk(4, -1)
            c = torch.sigmoid(f_g) * c + torch.sigmoid(i_g) * torch.tanh(u_g)
            h = torch.sigmoid(o_g) * torch.tanh(c)
            outs.append(h)
        return torch.stack(outs)


class ChainRowPool(nn.Module):
    """A chain over the words in reverse whose state and running max are [1, H] rows (`torch.zeros(1, H)`)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, H)
        self.W = nn.Linear(H, H)

    def forward(self, words):
        h = torch.zeros(1, 8)
        pool = torch.full((1, 8), float("-inf"))
        for k in range(words.size(0) - 1, -1, -1):
            h = torch.tanh(self.emb(words[k:k + 1]) + self.W(h))
            pool = torch.maximum(pool, h)
        return pool, h


class _TreeRNN(nn.Module):
    """The tree RNN cell the models below share: a leaf embeds its word, an internal node mixes its two children."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, H)
        self.W = nn.Linear(H, H)

    def node(self, h, words, left, right, v):
        if bool(left[v] < 0):
            return torch.tanh(self.emb(words[v]))
        return torch.tanh(self.W(h[left[v]] + h[right[v]]))


class RunningMax(_TreeRNN):
    """A tree RNN that also carries a running max and a running sum over the rows it computes."""

    def forward(self, words, left, right, order):
        h = torch.zeros(words.size(0), 8)
        best = torch.full((8,), -1e9)
        total = torch.zeros(8)
        for i in range(order.size(0)):
            v = order[i]
            h[v] = self.node(h, words, left, right, v)
            best = torch.maximum(best, h[v])
            total = total + h[v]
        return h, best, total


class TreeLastState(_TreeRNN):
    """A tree RNN that also carries the state it computed last (the root's, in a bottom-up order), and a list of
    every state it computed, stacked after the loop."""

    def forward(self, words, left, right, order):
        h = torch.zeros(words.size(0), 8)
        last = torch.zeros(8)
        seen: List[torch.Tensor] = []
        for i in range(order.size(0)):
            v = order[i]
            h[v] = self.node(h, words, left, right, v)
            last = h[v]
            seen.append(h[v])
        return last, torch.stack(seen + [last])


class TreeSumPool(_TreeRNN):
    """A tree RNN whose sentence vector is a running sum of its node states, classified by a linear head."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(H, 3)

    def forward(self, words, left, right, order):
        h = torch.zeros(words.size(0), 8)
        pool = torch.zeros(8)
        for i in range(order.size(0)):
            v = order[i]
            h[v] = self.node(h, words, left, right, v)
            pool = pool + h[v]
        return torch.log_softmax(self.head(pool), dim=-1)


class TreeSumPoolReversed(_TreeRNN):
    """A running sum of the node states, walking a parents-first order from its end (`for i in range(L - 1, -1,
    -1)`)."""

    def forward(self, words, left, right, order):
        h = torch.zeros(words.size(0), 8)
        pool = torch.zeros(8)
        for i in range(order.size(0) - 1, -1, -1):
            v = order[i]
            h[v] = self.node(h, words, left, right, v)
            pool = pool + h[v]
        return pool


class TreeReversedStepsPlusStates(_TreeRNN):
    """A walk from the end whose list of step states is added to the node table row by row (the list is stacked
    after the loop, so the sum is computed per request)."""

    def forward(self, words, left, right, order):
        h = torch.zeros(words.size(0), 8)
        seen: List[torch.Tensor] = []
        for i in range(order.size(0) - 1, -1, -1):
            v = order[i]
            h[v] = self.node(h, words, left, right, v)
            seen.append(h[v])
        return torch.stack(seen) + h


class ChainWhileLoop(nn.Module):
    """Chain in the dynamo form: torch.while_loop carrying the state vector."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, H)
        self.W = nn.Linear(H, H)

    def forward(self, words):
        def cond_fn(k, h):
            return k < words.size(0)

        def body_fn(k, h):
            return k + 1, torch.tanh(self.emb(words[k.unsqueeze(0)]).reshape(H) + self.W(h))

        _, h = torch.while_loop(cond_fn, body_fn, (torch.zeros((), dtype=torch.int64), torch.zeros(H)))
        return h


class ChainScan(nn.Module):
    """Chain in the dynamo form: scan carrying the state vector, stacking each state."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, H)
        self.W = nn.Linear(H, H)

    def forward(self, words):
        from torch._higher_order_ops.scan import scan

        def step(h, w):
            h2 = torch.tanh(self.emb(w.unsqueeze(0)).reshape(H) + self.W(h))
            return h2, h2.clone()

        h, hs = scan(step, torch.zeros(H), words)
        return h, hs


class RunningMaxWhileLoop(nn.Module):
    """RunningMax in the dynamo form (torch.while_loop; the leaf test by torch.where)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, H)
        self.W = nn.Linear(H, H)

    def forward(self, words, left, right, order):
        def cond_fn(k, h, best):
            return k < order.size(0)

        def body_fn(k, h, best):
            v = order[k.unsqueeze(0)]
            l, r = left[v].clamp(min=0), right[v].clamp(min=0)
            leaf = (left[v] < 0).unsqueeze(1)
            new = torch.where(leaf, torch.tanh(self.emb(words[v])), torch.tanh(self.W(h[l] + h[r])))
            h = h.clone()
            h[v] = new
            return k + 1, h, torch.maximum(best, new.reshape(H))

        init = (torch.zeros((), dtype=torch.int64), torch.zeros(words.size(0), H), torch.full((H,), -1e9))
        _, h, best = torch.while_loop(cond_fn, body_fn, init)
        return h, best


class ThinStackSPINN(nn.Module):
    """SPINN's thin stack (Bowman et al., 2016): every shifted or composed vector in a [T, H] stack, an integer queue of
    back-pointers into it, a queue pointer and a buffer pointer moved by data-dependent steps; transitions 0 = shift,
    1 = reduce."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, H)
        self.compose = nn.Linear(2 * H, H)

    def forward(self, tokens, transitions):
        T = transitions.size(0)
        stack = torch.zeros(T, 8)
        queue = torch.zeros(T, dtype=torch.long)
        qp = torch.zeros((), dtype=torch.long)
        bp = torch.zeros((), dtype=torch.long)
        for t in range(T):
            if bool(transitions[t] == 0):
                stack[t] = self.emb(tokens[bp])
                bp = bp + 1
                queue[qp] = t
                qp = qp + 1
            else:
                right = stack[queue[qp - 1]]
                left = stack[queue[qp - 2]]
                stack[t] = torch.tanh(self.compose(torch.cat([left, right])))
                queue[qp - 2] = t
                qp = qp - 1
        return stack

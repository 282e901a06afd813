"""The binary TreeLSTM of :mod:`.treelstm` as two PyTorch cells (ordinary ``nn.Module``s, no loop), as a user writes
it for :mod:`cortex.torch`: ``leaf(word) -> (h, c)``, ``internal(h_l, c_l, h_r, c_r) -> (h, c)``. Needs torch."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


def sigmoid_tanh_cell(gates, c_extra=None):
    """h, c of an LSTM cell from its (input, output, update) gates, plus the children's forgotten cells."""
    i, o, u = gates
    c = torch.sigmoid(i) * torch.tanh(u)
    if c_extra is not None:
        c = c + c_extra
    return torch.sigmoid(o) * torch.tanh(c), c


class TreeLSTMLeaf(nn.Module):
    def __init__(self, vocab: int, embed_dim: int, hidden: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed_dim)
        self.W = nn.Linear(embed_dim, 3 * hidden)

    def forward(self, word):
        return sigmoid_tanh_cell(self.W(self.embedding(word)).chunk(3, dim=1))


class TreeLSTMInternal(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.U = nn.Linear(2 * hidden, 5 * hidden)

    def forward(self, h_l, c_l, h_r, c_r):
        i, f_l, f_r, o, u = self.U(torch.cat([h_l, h_r], dim=1)).chunk(5, dim=1)
        return sigmoid_tanh_cell((i, o, u), torch.sigmoid(f_l) * c_l + torch.sigmoid(f_r) * c_r)


def make_cells(params) -> tuple:
    """(leaf, internal) in eval mode with the weights of a :class:`.treelstm.TreeLSTMParams` (ONNX MatMul layout,
    ``x @ W``: an nn.Linear's weight is its transpose)."""
    leaf, internal = TreeLSTMLeaf(params.vocab, params.embed_dim, params.hidden), TreeLSTMInternal(params.hidden)
    values = {leaf: {"embedding.weight": params.embedding, "W.weight": params.W.T, "W.bias": params.bW},
              internal: {"U.weight": params.U.T, "U.bias": params.bU}}
    with torch.no_grad():
        for module, named in values.items():
            for name, value in named.items():
                module.get_parameter(name).copy_(torch.from_numpy(np.ascontiguousarray(value)))
    return leaf.eval(), internal.eval()


CELL_OPTIONS = dict(state_names=["h", "c"])  # the rest (children="list", no node input) follows from the signatures

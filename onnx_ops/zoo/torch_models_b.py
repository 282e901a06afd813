"""MV-RNN, DAG-RNN and the chain LSTM written the way people write them in PyTorch, scriptable with
torch.jit.script and exported with the TorchScript ONNX exporter (``dynamo=False``, dynamic N and L).

Same math as :mod:`onnx_ops.zoo.mvrnn`, :mod:`onnx_ops.zoo.dagrnn`, :mod:`onnx_ops.zoo.chainlstm`; each style
matches its model's ``reference`` called with :data:`REFERENCE_KWARGS` [style]. No recursion: every module loops
over ``order`` and overwrites rows of state tables.

Styles (:data:`STYLES`: name -> (model name, class)):

- ``"mvrnn_row_assign"``: nn.Embedding for the vectors and for the flat word matrices, ``A[l].view(H, H)``,
  ``torch.mv``, nn.Linear(2H, H) with bias, ``self.W_M @ torch.cat([A_l, A_r])`` on a Parameter, ``if bool(left[v]
  < 0):`` and rows written after the if with ``a[v] = ...`` / ``A[v] = M.view(-1)``.
- ``"mvrnn_index_put"``: ``v = int(order[k])`` Python ints, ``if int(left[v]) < 0:``, weights indexed directly
  (``self.embedding.weight[w]``), ``reshape(H, H) @ vector``, ``torch.matmul(self.W_M.weight, ...)`` on an
  nn.Linear without bias, ``F.linear``, rows written with ``index_put_``.
- ``"dagrnn_where_mask"``: ``torch.where(u >= 0, h[u.clamp(min=0)], zero)`` for missing neighbours, nn.Linear for
  W (bias) and U_up, U_left (no bias), ``h[v] = ...``.
- ``"dagrnn_zero_row"``: an extra zero row: ``h = torch.zeros(n + 1, H)`` so ``h[-1]`` (a missing neighbour) is
  zero, one F.linear over ``torch.cat([x, h_up, h_left])``, rows written with ``index_put_``, ``return h[:n]``.
- ``"chainlstm_if_first"``: nn.Embedding, nn.Linear(D, 4H) with bias and nn.Linear(H, 4H) without,
  ``if bool(p >= 0):`` adds the recurrent term (else a zero c_prev), ``chunk(4)``, ``h[t] = ...``.
- ``"chainlstm_lstm_cell"``: nn.LSTMCell on 1-row batches, ``p = int(prev[t])``, ``if p < 0:`` zero states,
  ``h[t] = h_new[0]``.

torch is optional: importing this module without torch works (``TORCH_AVAILABLE`` is False) and
:func:`make_module` / :func:`export` then raise ImportError.
"""

from __future__ import annotations

import numpy as np

from ._torch import (TORCH_AVAILABLE, F, Tensor, WordModule, export_script, load_params, nn, require_torch,
                     torch)

__all__ = ["INPUT_NAMES", "OUTPUT_NAMES", "REFERENCE_KWARGS", "STYLES", "TORCH_AVAILABLE", "export", "make_module"]

#: model name -> ONNX input names of its exports (also the keys of the structure's ``arrays()``).
INPUT_NAMES = {
    "mvrnn": ["words", "left", "right", "order"],
    "dagrnn": ["features", "up", "left", "order"],
    "chainlstm": ["words", "prev", "order"],
}
#: model name -> ONNX output names of its exports.
OUTPUT_NAMES = {"mvrnn": ["a", "A"], "dagrnn": ["h"], "chainlstm": ["h", "c"]}
#: style -> keyword arguments of the model's ``reference`` that give exactly the export's visit semantics.
REFERENCE_KWARGS = {
    "mvrnn_row_assign": {"leaf_test": "negative"},
    "mvrnn_index_put": {"leaf_test": "negative"},
    "dagrnn_where_mask": {"missing": "negative"},
    "dagrnn_zero_row": {"missing": "zero_row"},
    "chainlstm_if_first": {"first_test": "negative"},
    "chainlstm_lstm_cell": {"first_test": "negative"},
}


def _require_torch() -> None:
    require_torch("onnx_ops.zoo.torch_models_b")


STYLES: dict = {}

if TORCH_AVAILABLE:

    # ------------------------------------------------------------------------------------------------------------
    # MV-RNN

    class MVRNNRowAssign(nn.Module):
        def __init__(self, vocab: int, hidden: int):
            super().__init__()
            self.hidden_size = hidden
            self.embedding = nn.Embedding(vocab, hidden)
            self.word_matrix = nn.Embedding(vocab, hidden * hidden)
            self.W = nn.Linear(2 * hidden, hidden)
            self.W_M = nn.Parameter(torch.zeros(hidden, 2 * hidden))

        def forward(self, words: Tensor, left: Tensor, right: Tensor, order: Tensor) -> tuple[Tensor, Tensor]:
            n = words.size(0)
            H = self.hidden_size
            a = torch.zeros(n, H)
            A = torch.zeros(n, H * H)
            for k in range(order.size(0)):
                v = order[k]
                if bool(left[v] < 0):
                    a_v = self.embedding(words[v])
                    A_v = self.word_matrix(words[v])
                else:
                    l = left[v]  # noqa: E741
                    r = right[v]
                    A_l = A[l].view(H, H)
                    A_r = A[r].view(H, H)
                    a_v = torch.tanh(self.W(torch.cat([torch.mv(A_r, a[l]), torch.mv(A_l, a[r])])))
                    A_v = (self.W_M @ torch.cat([A_l, A_r], dim=0)).view(-1)
                a[v] = a_v
                A[v] = A_v
            return a, A

        def load(self, p) -> "MVRNNRowAssign":
            return load_params(self, {"embedding.weight": p.embedding, "word_matrix.weight": p.matrices,
                                      "W.weight": p.W, "W.bias": p.b, "W_M": p.W_M})

    class MVRNNIndexPut(nn.Module):
        def __init__(self, vocab: int, hidden: int):
            super().__init__()
            self.hidden_size = hidden
            self.embedding = nn.Embedding(vocab, hidden)
            self.word_matrix = nn.Embedding(vocab, hidden * hidden)
            self.weight = nn.Parameter(torch.zeros(hidden, 2 * hidden))
            self.bias = nn.Parameter(torch.zeros(hidden))
            self.W_M = nn.Linear(2 * hidden, hidden, bias=False)

        def forward(self, words: Tensor, left: Tensor, right: Tensor, order: Tensor) -> tuple[Tensor, Tensor]:
            H = self.hidden_size
            a = words.new_zeros((words.size(0), H), dtype=torch.float32)
            A = words.new_zeros((words.size(0), H * H), dtype=torch.float32)
            for k in range(order.size(0)):
                v = int(order[k])
                lv = int(left[v])
                if lv < 0:
                    w = words[v]
                    a_v = self.embedding.weight[w]
                    A_v = self.word_matrix.weight[w]
                else:
                    rv = int(right[v])
                    M_l = A[lv].reshape(H, H)
                    M_r = A[rv].reshape(H, H)
                    x = torch.cat([M_r @ a[lv], M_l @ a[rv]], dim=0)
                    a_v = torch.tanh(F.linear(x, self.weight, self.bias))
                    A_v = torch.matmul(self.W_M.weight, torch.cat([M_l, M_r], dim=0)).reshape(H * H)
                idx = torch.tensor([v])
                a.index_put_((idx,), a_v.unsqueeze(0))
                A.index_put_((idx,), A_v.unsqueeze(0))
            return a, A

        def load(self, p) -> "MVRNNIndexPut":
            return load_params(self, {"embedding.weight": p.embedding, "word_matrix.weight": p.matrices,
                                      "weight": p.W, "bias": p.b, "W_M.weight": p.W_M})

    # ------------------------------------------------------------------------------------------------------------
    # DAG-RNN

    class DAGRNNWhereMask(nn.Module):
        def __init__(self, feature_dim: int, hidden: int):
            super().__init__()
            self.hidden_size = hidden
            self.W = nn.Linear(feature_dim, hidden)
            self.U_up = nn.Linear(hidden, hidden, bias=False)
            self.U_left = nn.Linear(hidden, hidden, bias=False)

        def forward(self, features: Tensor, up: Tensor, left: Tensor, order: Tensor) -> Tensor:
            n = features.size(0)
            h = torch.zeros(n, self.hidden_size)
            zero = torch.zeros(self.hidden_size)
            for k in range(order.size(0)):
                v = order[k]
                u = up[v]
                l = left[v]  # noqa: E741
                h_up = torch.where(u >= 0, h[u.clamp(min=0)], zero)
                h_left = torch.where(l >= 0, h[l.clamp(min=0)], zero)
                h[v] = torch.tanh(self.W(features[v]) + self.U_up(h_up) + self.U_left(h_left))
            return h

        def load(self, p) -> "DAGRNNWhereMask":
            return load_params(self, {"W.weight": p.W.T, "W.bias": p.b, "U_up.weight": p.U_up.T,
                                      "U_left.weight": p.U_left.T})

    class DAGRNNZeroRow(nn.Module):
        def __init__(self, feature_dim: int, hidden: int):
            super().__init__()
            self.hidden_size = hidden
            self.weight = nn.Parameter(torch.zeros(hidden, feature_dim + 2 * hidden))
            self.bias = nn.Parameter(torch.zeros(hidden))

        def forward(self, features: Tensor, up: Tensor, left: Tensor, order: Tensor) -> Tensor:
            n = features.size(0)
            h = torch.zeros(n + 1, self.hidden_size)  # row n stays zero: h[-1] is a missing neighbour
            for k in range(order.size(0)):
                v = order[k]
                inp = torch.cat([features[v], h[up[v]], h[left[v]]])
                row = torch.tanh(F.linear(inp, self.weight, self.bias))
                h.index_put_((v.unsqueeze(0),), row.unsqueeze(0))
            return h[:n]

        def load(self, p) -> "DAGRNNZeroRow":
            return load_params(self, {"weight": np.concatenate([p.W, p.U_up, p.U_left], axis=0).T, "bias": p.b})

    # ------------------------------------------------------------------------------------------------------------
    # Chain LSTM

    class ChainLSTMIfFirst(WordModule):
        def __init__(self, vocab: int, embed_dim: int, hidden: int):
            super().__init__(vocab, embed_dim, hidden)
            self.W = nn.Linear(embed_dim, 4 * hidden)
            self.U = nn.Linear(hidden, 4 * hidden, bias=False)

        def forward(self, words: Tensor, prev: Tensor, order: Tensor) -> tuple[Tensor, Tensor]:
            n = words.size(0)
            h = torch.zeros(n, self.hidden_size)
            c = torch.zeros(n, self.hidden_size)
            for k in range(order.size(0)):
                t = order[k]
                p = prev[t]
                gates = self.W(self.embedding(words[t]))
                if bool(p >= 0):
                    gates = gates + self.U(h[p])
                    c_prev = c[p]
                else:
                    c_prev = torch.zeros(self.hidden_size)
                i, f, g, o = gates.chunk(4)
                c_t = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
                h[t] = torch.sigmoid(o) * torch.tanh(c_t)
                c[t] = c_t
            return h, c

        def load(self, p) -> "ChainLSTMIfFirst":
            return load_params(self, {"embedding.weight": p.embedding, "W.weight": p.W.T, "W.bias": p.b,
                                      "U.weight": p.U.T})

    class ChainLSTMCell(WordModule):
        def __init__(self, vocab: int, embed_dim: int, hidden: int):
            super().__init__(vocab, embed_dim, hidden)
            self.cell = nn.LSTMCell(embed_dim, hidden)

        def forward(self, words: Tensor, prev: Tensor, order: Tensor) -> tuple[Tensor, Tensor]:
            n = words.size(0)
            h = torch.zeros(n, self.hidden_size)
            c = torch.zeros(n, self.hidden_size)
            for k in range(order.size(0)):
                t = int(order[k])
                p = int(prev[t])
                x = self.embedding(words[t]).unsqueeze(0)
                if p < 0:
                    h_prev = torch.zeros(1, self.hidden_size)
                    c_prev = torch.zeros(1, self.hidden_size)
                else:
                    h_prev = h[p].unsqueeze(0)
                    c_prev = c[p].unsqueeze(0)
                h_new, c_new = self.cell(x, (h_prev, c_prev))
                h[t] = h_new[0]
                c[t] = c_new[0]
            return h, c

        def load(self, p) -> "ChainLSTMCell":
            return load_params(self, {"embedding.weight": p.embedding, "cell.weight_ih": p.W.T,
                                      "cell.weight_hh": p.U.T, "cell.bias_ih": p.b,
                                      "cell.bias_hh": np.zeros_like(p.b)})

    STYLES.update({
        "mvrnn_row_assign": ("mvrnn", MVRNNRowAssign),
        "mvrnn_index_put": ("mvrnn", MVRNNIndexPut),
        "dagrnn_where_mask": ("dagrnn", DAGRNNWhereMask),
        "dagrnn_zero_row": ("dagrnn", DAGRNNZeroRow),
        "chainlstm_if_first": ("chainlstm", ChainLSTMIfFirst),
        "chainlstm_lstm_cell": ("chainlstm", ChainLSTMCell),
    })
    __all__ += [
        "MVRNNRowAssign", "MVRNNIndexPut", "DAGRNNWhereMask", "DAGRNNZeroRow", "ChainLSTMIfFirst", "ChainLSTMCell",
    ]
else:  # names only, so callers can list styles without torch
    STYLES.update({s: (s.split("_")[0], None) for s in REFERENCE_KWARGS})


def make_module(style: str, params) -> "nn.Module":
    """The eager module of ``style`` with ``params`` (MVRNNParams / DAGRNNParams / ChainLSTMParams) loaded."""
    _require_torch()
    model, cls = STYLES[style]
    if model == "mvrnn":
        m = cls(params.vocab, params.hidden)
    elif model == "dagrnn":
        m = cls(params.feature_dim, params.hidden)
    else:
        return cls.from_params(params)
    return m.load(params).eval()


def export(style: str, params, path, example) -> str:
    """Script the ``style`` module and export it to ONNX at ``path`` (opset 17, dynamic N and L); ``example`` is a
    structure of the model's kind (Forest / Grid / Chains, anything with ``arrays()``). Returns ``str(path)``."""
    _require_torch()
    model, _ = STYLES[style]
    arrays = example.arrays()
    feeds = {k: arrays[k] for k in INPUT_NAMES[model]}
    return export_script(lambda: make_module(style, params), feeds, path, OUTPUT_NAMES[model])

"""Binary TreeLSTMs written the way people write them in PyTorch, scriptable with torch.jit.script and exported
with the TorchScript ONNX exporter (``dynamo=False``): the real client Cortex's Loop/If recognizer must handle.

Styles (same math as cortex.examples.treelstm.reference, leaf iff ``left[v] < 0``):

- ``"row_assign"``: ``h[v] = ...`` row assignment, ``if bool(left[v] < 0):``, nn.Embedding, one nn.Linear per
  cell (with bias) and ``torch.chunk``.
- ``"index_put"``: one nn.Linear per leaf gate (W_i, W_o, W_u), embedding by indexing the weight, ``torch.cat`` of
  the children and ``torch.split`` for the internal gates, rows written with ``h.index_put_((v.unsqueeze(0),),
  row.unsqueeze(0))``, leaf test ``is_leaf = left[v] < 0; if bool(is_leaf):``.
- ``"python_int"``: ``v = int(order[k])`` scalar indexing, leaf test ``if int(left[v]) < 0:``, nn.Embedding,
  ``torch.stack`` rows written with ``h[v] = ...`` and F.linear on parameters.

torch is optional: importing this module without torch works (``TORCH_AVAILABLE`` is False) and
:func:`make_module` / :func:`export` then raise ImportError. ``import onnx_ops`` never imports this module.
"""

from __future__ import annotations

from ._torch import (TORCH_AVAILABLE, F, Tensor, WordModule, export_script, load_params, nn, require_torch,
                     torch)

__all__ = ["STYLES", "TORCH_AVAILABLE", "make_module", "export"]

STYLES = ("row_assign", "index_put", "python_int")


def _require_torch() -> None:
    require_torch("onnx_ops.zoo.torch_treelstm")


if TORCH_AVAILABLE:

    class TreeLSTMRowAssign(WordModule):
        def __init__(self, vocab: int, embed_dim: int, hidden: int):
            super().__init__(vocab, embed_dim, hidden)
            self.W = nn.Linear(embed_dim, 3 * hidden)
            self.U = nn.Linear(2 * hidden, 5 * hidden)

        def forward(self, words: Tensor, left: Tensor, right: Tensor, order: Tensor) -> tuple[Tensor, Tensor]:
            n = words.size(0)
            h = torch.zeros(n, self.hidden_size)
            c = torch.zeros(n, self.hidden_size)
            for k in range(order.size(0)):
                v = order[k]
                if bool(left[v] < 0):
                    x = self.embedding(words[v])
                    i, o, u = torch.chunk(self.W(x), 3)
                    cv = torch.sigmoid(i) * torch.tanh(u)
                else:
                    lv = left[v]
                    rv = right[v]
                    g = self.U(torch.cat([h[lv], h[rv]]))
                    i, fl, fr, o, u = torch.chunk(g, 5)
                    cv = torch.sigmoid(i) * torch.tanh(u) + torch.sigmoid(fl) * c[lv] + torch.sigmoid(fr) * c[rv]
                h[v] = torch.sigmoid(o) * torch.tanh(cv)
                c[v] = cv
            return h, c

        def load(self, p) -> "TreeLSTMRowAssign":
            return load_params(self, {"embedding.weight": p.embedding, "W.weight": p.W.T, "W.bias": p.bW,
                                      "U.weight": p.U.T, "U.bias": p.bU})


    class TreeLSTMIndexPut(WordModule):
        def __init__(self, vocab: int, embed_dim: int, hidden: int):
            super().__init__(vocab, embed_dim, hidden)
            self.W_i = nn.Linear(embed_dim, hidden)
            self.W_o = nn.Linear(embed_dim, hidden)
            self.W_u = nn.Linear(embed_dim, hidden)
            self.U = nn.Linear(2 * hidden, 5 * hidden)

        def forward(self, words: Tensor, left: Tensor, right: Tensor, order: Tensor) -> tuple[Tensor, Tensor]:
            h = words.new_zeros((words.size(0), self.hidden_size), dtype=torch.float32)
            c = torch.zeros_like(h)
            for k in range(order.size(0)):
                v = order[k]
                is_leaf = left[v] < 0
                if bool(is_leaf):
                    x = self.embedding.weight[words[v]]
                    c_row = torch.sigmoid(self.W_i(x)) * torch.tanh(self.W_u(x))
                    h_row = torch.sigmoid(self.W_o(x)) * torch.tanh(c_row)
                else:
                    kids = torch.stack([left[v], right[v]])
                    hs = h[kids]
                    cs = c[kids]
                    gates = torch.split(self.U(torch.cat([hs[0], hs[1]], dim=0)), self.hidden_size)
                    c_row = (
                        torch.sigmoid(gates[0]) * torch.tanh(gates[4])
                        + torch.sigmoid(gates[1]) * cs[0]
                        + torch.sigmoid(gates[2]) * cs[1]
                    )
                    h_row = torch.sigmoid(gates[3]) * torch.tanh(c_row)
                h.index_put_((v.unsqueeze(0),), h_row.unsqueeze(0))
                c.index_put_((v.unsqueeze(0),), c_row.unsqueeze(0))
            return h, c

        def load(self, p) -> "TreeLSTMIndexPut":
            H = p.hidden
            values = {"embedding.weight": p.embedding}
            for j, gate in enumerate(("W_i", "W_o", "W_u")):
                values[f"{gate}.weight"] = p.W[:, j * H : (j + 1) * H].T
                values[f"{gate}.bias"] = p.bW[j * H : (j + 1) * H]
            return load_params(self, {**values, "U.weight": p.U.T, "U.bias": p.bU})


    class TreeLSTMPythonInt(WordModule):
        def __init__(self, vocab: int, embed_dim: int, hidden: int):
            super().__init__(vocab, embed_dim, hidden)
            self.leaf_weight = nn.Parameter(torch.zeros(3 * hidden, embed_dim))
            self.leaf_bias = nn.Parameter(torch.zeros(3 * hidden))
            self.node_weight = nn.Parameter(torch.zeros(5 * hidden, 2 * hidden))
            self.node_bias = nn.Parameter(torch.zeros(5 * hidden))

        def forward(self, words: Tensor, left: Tensor, right: Tensor, order: Tensor) -> tuple[Tensor, Tensor]:
            n = words.size(0)
            H = self.hidden_size
            h = torch.zeros(n, H)
            c = torch.zeros(n, H)
            for k in range(order.size(0)):
                v = int(order[k])
                lv = int(left[v])
                if lv < 0:
                    g = F.linear(self.embedding(words[v]), self.leaf_weight, self.leaf_bias)
                    cv = torch.sigmoid(g[0:H]) * torch.tanh(g[2 * H : 3 * H])
                    hv = torch.sigmoid(g[H : 2 * H]) * torch.tanh(cv)
                else:
                    rv = int(right[v])
                    g = F.linear(torch.cat([h[lv], h[rv]]), self.node_weight, self.node_bias)
                    cv = (
                        torch.sigmoid(g[0:H]) * torch.tanh(g[4 * H : 5 * H])
                        + torch.sigmoid(g[H : 2 * H]) * c[lv]
                        + torch.sigmoid(g[2 * H : 3 * H]) * c[rv]
                    )
                    hv = torch.sigmoid(g[3 * H : 4 * H]) * torch.tanh(cv)
                h[v] = hv
                c[v] = cv
            return h, c

        def load(self, p) -> "TreeLSTMPythonInt":
            return load_params(self, {"embedding.weight": p.embedding, "leaf_weight": p.W.T, "leaf_bias": p.bW,
                                      "node_weight": p.U.T, "node_bias": p.bU})

    _CLASSES = {"row_assign": TreeLSTMRowAssign, "index_put": TreeLSTMIndexPut, "python_int": TreeLSTMPythonInt}
    __all__ += ["TreeLSTMRowAssign", "TreeLSTMIndexPut", "TreeLSTMPythonInt"]


def make_module(style: str, params) -> nn.Module:
    """The eager module of ``style`` with ``params`` (cortex.examples.treelstm.TreeLSTMParams) loaded."""
    _require_torch()
    return _CLASSES[style].from_params(params)


def export(style: str, params, path, example_forest) -> str:
    """Script the ``style`` module and export it to ONNX at ``path`` (opset 17, dynamic N and L); returns path."""
    _require_torch()
    f = example_forest
    feeds = {"words": f.words, "left": f.left, "right": f.right, "order": f.order}
    return export_script(lambda: make_module(style, params), feeds, path, ["h", "c"], ignore=DeprecationWarning)

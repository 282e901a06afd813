"""TreeFC, TreeRNN, TreeGRU and the Child-Sum TreeLSTM written the way people write them in PyTorch, scriptable
with ``torch.jit.script`` and exported with the TorchScript ONNX exporter (``dynamo=False``, opset 17, dynamic N
and L). Same math as the numpy ``reference`` of onnx_ops.zoo.{treefc,treernn,treegru,childsum} (binary models:
leaf iff ``left[v] < 0``, i.e. ``leaf_test="negative"``; Child-Sum: leaf iff no child id >= 0).

Styles (:data:`STYLES`: name -> (model name, module class)):

- ``"treefc_row_assign"`` (TreeFC): nn.Embedding, nn.Linear with bias, ``if bool(left[v] < 0):``, children summed
  ``h[left[v]] + h[right[v]]``, rows written ``h[v] = ...``.
- ``"treefc_where"`` (TreeFC): branchless: every step computes the leaf row and the internal row and picks one
  with ``torch.where(left[v] < 0, leaf, internal)`` (a leaf reads rows -1, which wrap: harmless, discarded);
  python-int loop index ``v = int(order[k])``.
- ``"treernn_index_put"`` (TreeRNN): embedding by indexing ``self.embedding.weight[words[v]]``, nn.Linear without
  bias plus a separate bias Parameter for the internal cell, ``torch.cat`` of the children (gathered together with
  ``h[torch.stack([l, r])]``), rows written with ``h.index_put_((v.unsqueeze(0),), row.unsqueeze(0))``.
- ``"treegru_python_int"`` (TreeGRU): ``v = int(order[k])``, ``if int(left[v]) < 0:``, F.linear on raw
  Parameters, gates z and r from one fused [3H, 2H] weight sliced by rows, ``h[v] = ...``.
- ``"childsum_clamp_mask"`` (Child-Sum): clamp-and-mask gathers
  ``h[kids.clamp(min=0)] * (kids >= 0).unsqueeze(1)``, ``if bool((kids < 0).all()):``, nn.Embedding,
  nn.Linear (bias) for W, U_iou and U_f, ``torch.chunk``, ``h[v] = ...``.
- ``"childsum_zero_row"`` (Child-Sum): tables of N+1 rows whose row N stays zero, children remapped
  ``torch.where(children < 0, N, children)`` once before the loop, leaf test on a precomputed child count
  ``if int(num_kids[v]) == 0:``, F.linear on Parameters, ``index_put_``; returns ``h[:N], c[:N]``.
- ``"childsum_where"`` (Child-Sum): ``torch.where(present.unsqueeze(1), h[safe], zeros)`` masks,
  ``if bool(present.any()):`` (internal first), nn.Linear without bias for U_f plus a bias Parameter,
  ``torch.split``, ``index_put_`` with ``accumulate=False``.

Inputs of the exports: binary models ``words``, ``left``, ``right`` int64 [N], ``order`` int64 [L]; Child-Sum
``words`` [N], ``children`` int64 [N, K] (K fixed by the example), ``order`` [L]. Outputs: ``h`` [N, H] (TreeFC,
TreeRNN, TreeGRU) or ``h``, ``c`` [N, H] (Child-Sum).

torch is optional: importing this module without torch works (``TORCH_AVAILABLE`` is False, the classes in
:data:`STYLES` are None) and :func:`make_module` / :func:`export` raise ImportError.
"""

from __future__ import annotations

import numpy as np

from . import childsum, treefc, treegru, treernn
from cortex.examples.structures import Forest, NaryForest, nary_from_forest
from ._torch import (TORCH_AVAILABLE, F, Tensor, WordModule, export_script, load_params, nn, require_torch,
                     torch)

__all__ = ["MODELS", "STYLES", "TORCH_AVAILABLE", "export", "make_module"]

#: model name -> its zoo module (``reference``, ``make_params``, ``build_treerec``, ``build_loop``)
MODELS = {"treefc": treefc, "treernn": treernn, "treegru": treegru, "childsum": childsum}

_STYLE_MODELS = {
    "treefc_row_assign": "treefc",
    "treefc_where": "treefc",
    "treernn_index_put": "treernn",
    "treegru_python_int": "treegru",
    "childsum_clamp_mask": "childsum",
    "childsum_zero_row": "childsum",
    "childsum_where": "childsum",
}


def _require_torch() -> None:
    require_torch("onnx_ops.zoo.torch_models_a")


if TORCH_AVAILABLE:

    # ------------------------------------------------------------------------------------------------------------
    # TreeFC

    class TreeFCRowAssign(WordModule):
        def __init__(self, vocab: int, embed_dim: int, hidden: int):
            super().__init__(vocab, embed_dim, hidden)
            self.W = nn.Linear(embed_dim, hidden)
            self.U = nn.Linear(hidden, hidden)

        def forward(self, words: Tensor, left: Tensor, right: Tensor, order: Tensor) -> Tensor:
            h = torch.zeros(words.size(0), self.hidden_size)
            for k in range(order.size(0)):
                v = order[k]
                if bool(left[v] < 0):
                    h[v] = torch.relu(self.W(self.embedding(words[v])))
                else:
                    h[v] = torch.relu(self.U(h[left[v]] + h[right[v]]))
            return h

        def load(self, p: treefc.TreeFCParams) -> "TreeFCRowAssign":
            return load_params(self, {"embedding.weight": p.embedding, "W.weight": p.W.T, "W.bias": p.bW,
                                      "U.weight": p.U.T, "U.bias": p.bU})

    class TreeFCWhere(WordModule):
        def __init__(self, vocab: int, embed_dim: int, hidden: int):
            super().__init__(vocab, embed_dim, hidden)
            self.leaf = nn.Linear(embed_dim, hidden)
            self.node = nn.Linear(hidden, hidden)

        def forward(self, words: Tensor, left: Tensor, right: Tensor, order: Tensor) -> Tensor:
            n = words.size(0)
            h = torch.zeros(n, self.hidden_size)
            for k in range(order.size(0)):
                v = int(order[k])
                leaf_row = F.relu(self.leaf(self.embedding(words[v])))
                node_row = F.relu(self.node(h[left[v]] + h[right[v]]))
                h[v] = torch.where(left[v] < 0, leaf_row, node_row)
            return h

        def load(self, p: treefc.TreeFCParams) -> "TreeFCWhere":
            return load_params(self, {"embedding.weight": p.embedding, "leaf.weight": p.W.T, "leaf.bias": p.bW,
                                      "node.weight": p.U.T, "node.bias": p.bU})

    # ------------------------------------------------------------------------------------------------------------
    # TreeRNN

    class TreeRNNIndexPut(WordModule):
        def __init__(self, vocab: int, embed_dim: int, hidden: int):
            super().__init__(vocab, embed_dim, hidden)
            self.W = nn.Linear(embed_dim, hidden)
            self.U = nn.Linear(2 * hidden, hidden, bias=False)
            self.U_bias = nn.Parameter(torch.zeros(hidden))

        def forward(self, words: Tensor, left: Tensor, right: Tensor, order: Tensor) -> Tensor:
            h = words.new_zeros((words.size(0), self.hidden_size), dtype=torch.float32)
            for k in range(order.size(0)):
                v = order[k]
                is_leaf = left[v] < 0
                if bool(is_leaf):
                    row = torch.tanh(self.W(self.embedding.weight[words[v]]))
                else:
                    kids = h[torch.stack([left[v], right[v]])]
                    row = torch.tanh(self.U(torch.cat([kids[0], kids[1]], dim=0)) + self.U_bias)
                h.index_put_((v.unsqueeze(0),), row.unsqueeze(0))
            return h

        def load(self, p: treernn.TreeRNNParams) -> "TreeRNNIndexPut":
            return load_params(self, {"embedding.weight": p.embedding, "W.weight": p.W.T, "W.bias": p.bW,
                                      "U.weight": p.U.T, "U_bias": p.bU})

    # ------------------------------------------------------------------------------------------------------------
    # TreeGRU

    class TreeGRUPythonInt(WordModule):
        def __init__(self, vocab: int, embed_dim: int, hidden: int):
            super().__init__(vocab, embed_dim, hidden)
            self.leaf_weight = nn.Parameter(torch.zeros(hidden, embed_dim))
            self.leaf_bias = nn.Parameter(torch.zeros(hidden))
            self.gate_weight = nn.Parameter(torch.zeros(3 * hidden, 2 * hidden))  # rows: z, r_l, r_r
            self.gate_bias = nn.Parameter(torch.zeros(3 * hidden))
            self.cand_weight = nn.Parameter(torch.zeros(hidden, 2 * hidden))
            self.cand_bias = nn.Parameter(torch.zeros(hidden))

        def forward(self, words: Tensor, left: Tensor, right: Tensor, order: Tensor) -> Tensor:
            H = self.hidden_size
            h = torch.zeros(words.size(0), H)
            for k in range(order.size(0)):
                v = int(order[k])
                lv = int(left[v])
                if lv < 0:
                    h[v] = torch.tanh(F.linear(self.embedding(words[v]), self.leaf_weight, self.leaf_bias))
                else:
                    rv = int(right[v])
                    h_l = h[lv]
                    h_r = h[rv]
                    g = torch.sigmoid(F.linear(torch.cat([h_l, h_r]), self.gate_weight, self.gate_bias))
                    z = g[0:H]
                    rh = torch.cat([g[H : 2 * H] * h_l, g[2 * H : 3 * H] * h_r])
                    cand = torch.tanh(F.linear(rh, self.cand_weight, self.cand_bias))
                    h[v] = z * (h_l + h_r) / 2 + (1 - z) * cand
            return h

        def load(self, p: treegru.TreeGRUParams) -> "TreeGRUPythonInt":
            return load_params(self, {"embedding.weight": p.embedding, "leaf_weight": p.W.T, "leaf_bias": p.bW,
                                      "gate_weight": np.concatenate([p.Uz, p.Ur], axis=1).T,
                                      "gate_bias": np.concatenate([p.bz, p.br]), "cand_weight": p.Uh.T,
                                      "cand_bias": p.bh})

    # ------------------------------------------------------------------------------------------------------------
    # Child-Sum TreeLSTM

    class ChildSumClampMask(WordModule):
        def __init__(self, vocab: int, embed_dim: int, hidden: int):
            super().__init__(vocab, embed_dim, hidden)
            self.W = nn.Linear(embed_dim, 3 * hidden)
            self.U_iou = nn.Linear(hidden, 3 * hidden)
            self.U_f = nn.Linear(hidden, hidden)

        def forward(self, words: Tensor, children: Tensor, order: Tensor) -> tuple[Tensor, Tensor]:
            n = words.size(0)
            h = torch.zeros(n, self.hidden_size)
            c = torch.zeros(n, self.hidden_size)
            for k in range(order.size(0)):
                v = order[k]
                kids = children[v]
                if bool((kids < 0).all()):
                    i, o, u = torch.chunk(self.W(self.embedding(words[v])), 3)
                    cv = torch.sigmoid(i) * torch.tanh(u)
                else:
                    mask = (kids >= 0).unsqueeze(1)
                    hs = h[kids.clamp(min=0)] * mask
                    cs = c[kids.clamp(min=0)] * mask
                    i, o, u = torch.chunk(self.U_iou(hs.sum(0)), 3)
                    f = torch.sigmoid(self.U_f(hs))
                    cv = torch.sigmoid(i) * torch.tanh(u) + (f * cs).sum(0)
                h[v] = torch.sigmoid(o) * torch.tanh(cv)
                c[v] = cv
            return h, c

        def load(self, p: childsum.ChildSumParams) -> "ChildSumClampMask":
            return load_params(self, {"embedding.weight": p.embedding, "W.weight": p.W.T, "W.bias": p.bW,
                                      "U_iou.weight": p.U_iou.T, "U_iou.bias": p.b_iou, "U_f.weight": p.U_f.T,
                                      "U_f.bias": p.b_f})

    class ChildSumZeroRow(WordModule):
        def __init__(self, vocab: int, embed_dim: int, hidden: int):
            super().__init__(vocab, embed_dim, hidden)
            self.leaf_weight = nn.Parameter(torch.zeros(3 * hidden, embed_dim))
            self.leaf_bias = nn.Parameter(torch.zeros(3 * hidden))
            self.iou_weight = nn.Parameter(torch.zeros(3 * hidden, hidden))
            self.iou_bias = nn.Parameter(torch.zeros(3 * hidden))
            self.f_weight = nn.Parameter(torch.zeros(hidden, hidden))
            self.f_bias = nn.Parameter(torch.zeros(hidden))

        def forward(self, words: Tensor, children: Tensor, order: Tensor) -> tuple[Tensor, Tensor]:
            n = words.size(0)
            H = self.hidden_size
            h = torch.zeros(n + 1, H)  # row n stays zero: the state of a missing child
            c = torch.zeros(n + 1, H)
            kids_all = torch.where(children < 0, torch.full_like(children, n), children)
            num_kids = (children >= 0).sum(1)
            for k in range(order.size(0)):
                v = order[k]
                if int(num_kids[v]) == 0:
                    g = F.linear(self.embedding(words[v]), self.leaf_weight, self.leaf_bias)
                    cv = torch.sigmoid(g[0:H]) * torch.tanh(g[2 * H : 3 * H])
                else:
                    hs = h[kids_all[v]]
                    cs = c[kids_all[v]]
                    g = F.linear(hs.sum(0), self.iou_weight, self.iou_bias)
                    f = torch.sigmoid(F.linear(hs, self.f_weight, self.f_bias))
                    cv = torch.sigmoid(g[0:H]) * torch.tanh(g[2 * H : 3 * H]) + (f * cs).sum(0)
                hv = torch.sigmoid(g[H : 2 * H]) * torch.tanh(cv)
                h.index_put_((v.unsqueeze(0),), hv.unsqueeze(0))
                c.index_put_((v.unsqueeze(0),), cv.unsqueeze(0))
            return h[:n], c[:n]

        def load(self, p: childsum.ChildSumParams) -> "ChildSumZeroRow":
            return load_params(self, {"embedding.weight": p.embedding, "leaf_weight": p.W.T, "leaf_bias": p.bW,
                                      "iou_weight": p.U_iou.T, "iou_bias": p.b_iou, "f_weight": p.U_f.T,
                                      "f_bias": p.b_f})

    class ChildSumWhere(WordModule):
        def __init__(self, vocab: int, embed_dim: int, hidden: int):
            super().__init__(vocab, embed_dim, hidden)
            self.W = nn.Linear(embed_dim, 3 * hidden)
            self.U_iou = nn.Linear(hidden, 3 * hidden)
            self.U_f = nn.Linear(hidden, hidden, bias=False)
            self.f_bias = nn.Parameter(torch.zeros(hidden))

        def forward(self, words: Tensor, children: Tensor, order: Tensor) -> tuple[Tensor, Tensor]:
            n = words.size(0)
            h = torch.zeros(n, self.hidden_size)
            c = torch.zeros(n, self.hidden_size)
            for k in range(order.size(0)):
                v = int(order[k])
                kids = children[v]
                present = kids >= 0
                if bool(present.any()):
                    safe = torch.where(present, kids, torch.zeros_like(kids))
                    keep = present.unsqueeze(1)
                    hs = torch.where(keep, h[safe], torch.zeros_like(h[safe]))
                    cs = torch.where(keep, c[safe], torch.zeros_like(c[safe]))
                    i, o, u = torch.split(self.U_iou(torch.sum(hs, dim=0)), self.hidden_size)
                    f = torch.sigmoid(self.U_f(hs) + self.f_bias)
                    cv = torch.sigmoid(i) * torch.tanh(u) + torch.sum(f * cs, dim=0)
                else:
                    i, o, u = torch.split(self.W(self.embedding(words[v])), self.hidden_size)
                    cv = torch.sigmoid(i) * torch.tanh(u)
                hv = torch.sigmoid(o) * torch.tanh(cv)
                idx = torch.tensor([v])
                h.index_put_((idx,), hv.unsqueeze(0), accumulate=False)
                c.index_put_((idx,), cv.unsqueeze(0), accumulate=False)
            return h, c

        def load(self, p: childsum.ChildSumParams) -> "ChildSumWhere":
            return load_params(self, {"embedding.weight": p.embedding, "W.weight": p.W.T, "W.bias": p.bW,
                                      "U_iou.weight": p.U_iou.T, "U_iou.bias": p.b_iou, "U_f.weight": p.U_f.T,
                                      "f_bias": p.b_f})

    _CLASSES = {
        "treefc_row_assign": TreeFCRowAssign,
        "treefc_where": TreeFCWhere,
        "treernn_index_put": TreeRNNIndexPut,
        "treegru_python_int": TreeGRUPythonInt,
        "childsum_clamp_mask": ChildSumClampMask,
        "childsum_zero_row": ChildSumZeroRow,
        "childsum_where": ChildSumWhere,
    }
    __all__ += [c.__name__ for c in _CLASSES.values()]
else:  # pragma: no cover
    _CLASSES = {s: None for s in _STYLE_MODELS}

#: style name -> (model name, module class or None without torch)
STYLES: dict[str, tuple[str, type | None]] = {s: (m, _CLASSES[s]) for s, m in _STYLE_MODELS.items()}


def make_module(style: str, params) -> "nn.Module":
    """The eager module of ``style`` with ``params`` (the Params of its model) loaded, in eval mode."""
    _require_torch()
    _, cls = STYLES[style]
    return cls.from_params(params)


def example_arrays(style: str, structure) -> dict[str, np.ndarray]:
    """The feeds of ``style``'s export for ``structure`` (a Forest for binary models; a NaryForest or Forest
    for Child-Sum)."""
    if STYLES[style][0] == "childsum":
        if isinstance(structure, Forest):
            structure = nary_from_forest(structure)
        return structure.arrays()
    if isinstance(structure, NaryForest):
        raise TypeError(f"style {style!r} is binary: give a Forest")
    return structure.arrays()


def export(style: str, params, path, example) -> str:
    """Script the ``style`` module and export it to ONNX at ``path`` (opset 17, dynamic N and L; Child-Sum's K is
    fixed by ``example``); returns ``str(path)``. ``example``: a Forest (binary models) or NaryForest/Forest
    (Child-Sum)."""
    _require_torch()
    outputs = ["h", "c"] if STYLES[style][0] == "childsum" else ["h"]
    return export_script(lambda: make_module(style, params), example_arrays(style, example), path, outputs)

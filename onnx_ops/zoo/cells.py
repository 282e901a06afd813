"""Six recursive models written as PyTorch cells for :mod:`cortex.torch` (the cell road: a leaf module, an internal
module, no loop): each exports with one call to one ``cortex.TreeRec`` model.

:data:`MODELS`: name -> :class:`CellModel`. Five have a zoo twin with the same structures and feeds as its TreeRec
form, whose Loop form is their speed baseline (``tools/bench.py --forms``, form ``cells``); four of them compute
exactly the twin (its ``make_params`` weights, its numpy reference's outputs); ``childsum`` computes
treelstm.pytorch's function; ``ast`` is new (no twin, no Loop form):

- ``treelstm``: binary TreeLSTM (:mod:`.treelstm`), ``children="list"``, the internal cell takes no node input.
- ``childsum``: Child-Sum TreeLSTM, the cell of treelstm.pytorch (``ChildSumTreeLSTM.node_forward(inputs, child_c,
  child_h)``, reproduced op for op), ``children="stack"``. Its function is treelstm.pytorch's, not :mod:`.childsum`'s:
  every node, internal ones too, reads its word (``ioux(x)``, ``fx(x)``), and a leaf is ``node_forward`` with one zero
  child, as treelstm.pytorch computes it. A padded slot (-1) is a zero child: it adds nothing to ``sum(child_h)``,
  and its forget gate (``fx(inputs).repeat`` included) multiplies its zero ``c``: exact, no mask needed.
- ``treegru``: binary TreeGRU (:mod:`.treegru`).
- ``mvrnn``: MV-RNN (:mod:`.mvrnn`), a vector state and a matrix state (stored flat, H*H) per node.
- ``dagrnn``: DAG-RNN over an image grid (:mod:`.dagrnn`); the leaf and internal cells share one ``nn.Linear``
  (exported once).
- ``ast``: an N-ary TreeLSTM over abstract syntax trees (K = 4 positional child slots, a node-type embedding at
  every node, the input projection shared by both cells); a padded slot reads a learned "absent child" state, so it
  needs ``mask=True``.

torch is optional: importing this module without torch works (``TORCH_AVAILABLE`` is False); :func:`make_cells`
then raises ImportError.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from cortex.examples import structures as st
from cortex.examples import treelstm

from . import EMBED_DIM, GRID_FEATURES, MVRNN_VOCAB, VOCAB, dagrnn, mvrnn, treegru
from ._torch import TORCH_AVAILABLE, load_params, nn, require_torch, torch

AST_ARITY = 4  # child slots of the AST model
AST_TYPES = 120  # node types of the AST model (SST tokens are hashed into this many)


@dataclass
class Cells:
    """A model as cells plus how to call them: ``cortex.torch.export(c.leaf, c.internal, example, path,
    **c.options)``."""

    leaf: Any
    internal: Any
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class CellModel:
    name: str
    description: str
    structure: str  # zoo structure kind: 'binary' | 'nary' | 'grid', or 'ast' (ast_trees)
    make: Callable[..., Cells]  # (hidden, seed=0, params=None) -> Cells; params: the zoo twin's (weights)
    feeds: Callable[[Any], dict]  # structure -> feeds {"children": ..., node inputs}
    zoo: str | None = None  # the zoo twin: same structures and feeds (its Loop form is the speed baseline)
    vocab: int | None = None  # token ids of the structures must be below this (None: the zoo's VOCAB or no tokens)


def _sigmoid_tanh_cell(gates, c_extra=None):
    i, o, u = gates
    c = torch.sigmoid(i) * torch.tanh(u)
    if c_extra is not None:
        c = c + c_extra
    return torch.sigmoid(o) * torch.tanh(c), c


if TORCH_AVAILABLE:

    # ------------------------------------------------------------------------------------------------------------
    # binary TreeLSTM (the zoo's treelstm)

    from cortex.examples.treelstm_cells import TreeLSTMInternal, TreeLSTMLeaf  # noqa: F401 - the zoo's cells

    # ------------------------------------------------------------------------------------------------------------
    # Child-Sum TreeLSTM: the cell of treelstm.pytorch

    class ChildSumTreeLSTM(nn.Module):
        """The cell of treelstm.pytorch (github.com/dasguptar/treelstm.pytorch, ``treelstm/model.py``):
        ``node_forward`` computes what it computes, op for op (there ``F.sigmoid``/``F.tanh``, the same ops)."""

        def __init__(self, in_dim: int, mem_dim: int):
            super().__init__()
            self.in_dim = in_dim
            self.mem_dim = mem_dim
            self.ioux = nn.Linear(self.in_dim, 3 * self.mem_dim)
            self.iouh = nn.Linear(self.mem_dim, 3 * self.mem_dim)
            self.fx = nn.Linear(self.in_dim, self.mem_dim)
            self.fh = nn.Linear(self.mem_dim, self.mem_dim)

        def node_forward(self, inputs, child_c, child_h):
            child_h_sum = torch.sum(child_h, dim=0, keepdim=True)
            iou = self.ioux(inputs) + self.iouh(child_h_sum)
            i, o, u = torch.split(iou, iou.size(1) // 3, dim=1)
            i, o, u = torch.sigmoid(i), torch.sigmoid(o), torch.tanh(u)
            f = torch.sigmoid(self.fh(child_h) + self.fx(inputs).repeat(len(child_h), 1))
            fc = torch.mul(f, child_c)
            c = torch.mul(i, u) + torch.sum(fc, dim=0, keepdim=True)
            h = torch.mul(o, torch.tanh(c))
            return c, h

    class ChildSumLeaf(nn.Module):
        """treelstm.pytorch's leaf: ``node_forward`` of the embedded word with one zero child."""

        def __init__(self, emb: nn.Embedding, cell: ChildSumTreeLSTM):
            super().__init__()
            self.emb, self.cell = emb, cell

        def forward(self, word):
            zero = torch.zeros(1, self.cell.mem_dim)
            return self.cell.node_forward(self.emb(word), zero, zero)

    class ChildSumInternal(nn.Module):
        def __init__(self, emb: nn.Embedding, cell: ChildSumTreeLSTM):
            super().__init__()
            self.emb, self.cell = emb, cell

        def forward(self, word, child_c, child_h):
            return self.cell.node_forward(self.emb(word), child_c, child_h)

    # ------------------------------------------------------------------------------------------------------------
    # TreeGRU (the zoo's treegru)

    class TreeGRULeaf(nn.Module):
        def __init__(self, vocab: int, embed_dim: int, hidden: int):
            super().__init__()
            self.embedding = nn.Embedding(vocab, embed_dim)
            self.W = nn.Linear(embed_dim, hidden)

        def forward(self, word):
            return torch.tanh(self.W(self.embedding(word)))

    class TreeGRUInternal(nn.Module):
        def __init__(self, hidden: int):
            super().__init__()
            self.z = nn.Linear(2 * hidden, hidden)
            self.r = nn.Linear(2 * hidden, 2 * hidden)
            self.h = nn.Linear(2 * hidden, hidden)

        def forward(self, h_l, h_r):
            hlr = torch.cat([h_l, h_r], dim=1)
            z = torch.sigmoid(self.z(hlr))
            r = torch.sigmoid(self.r(hlr))
            h_tilde = torch.tanh(self.h(r * hlr))
            return z * (h_l + h_r) / 2 + (1 - z) * h_tilde

    # ------------------------------------------------------------------------------------------------------------
    # MV-RNN (the zoo's mvrnn)

    class MVRNNLeaf(nn.Module):
        def __init__(self, vocab: int, hidden: int):
            super().__init__()
            self.embedding = nn.Embedding(vocab, hidden)
            self.word_matrix = nn.Embedding(vocab, hidden * hidden)

        def forward(self, word):
            return self.embedding(word), self.word_matrix(word)

    class MVRNNInternal(nn.Module):
        def __init__(self, hidden: int):
            super().__init__()
            self.hidden = hidden
            self.W = nn.Linear(2 * hidden, hidden)
            self.W_M = nn.Parameter(torch.zeros(hidden, 2 * hidden))

        def forward(self, a_l, A_l, a_r, A_r):
            H = self.hidden
            M_l, M_r = A_l.view(H, H), A_r.view(H, H)
            a = torch.tanh(self.W(torch.cat([M_r @ a_l[0], M_l @ a_r[0]])))
            A = self.W_M @ torch.cat([M_l, M_r], dim=0)
            return a, A

    # ------------------------------------------------------------------------------------------------------------
    # DAG-RNN over a grid (the zoo's dagrnn): one nn.Linear shared by both cells

    class DAGRNNInternal(nn.Module):
        def __init__(self, feature_dim: int, hidden: int):
            super().__init__()
            self.W = nn.Linear(feature_dim, hidden)
            self.U_up = nn.Linear(hidden, hidden, bias=False)
            self.U_left = nn.Linear(hidden, hidden, bias=False)

        def forward(self, x, h_up, h_left):
            return torch.tanh(self.W(x) + self.U_up(h_up) + self.U_left(h_left))

    class DAGRNNLeaf(nn.Module):
        """The corner cell: no neighbour; the same W (the internal cell's nn.Linear)."""

        def __init__(self, W: nn.Linear):
            super().__init__()
            self.W = W

        def forward(self, x):
            return torch.tanh(self.W(x))

    # ------------------------------------------------------------------------------------------------------------
    # N-ary TreeLSTM over ASTs (K positional slots, learned absent-child state)

    class ASTLeaf(nn.Module):
        def __init__(self, types: int, embed_dim: int, hidden: int):
            super().__init__()
            self.embedding = nn.Embedding(types, embed_dim)
            self.W_iou = nn.Linear(embed_dim, 3 * hidden)

        def forward(self, node_type):
            return _sigmoid_tanh_cell(self.W_iou(self.embedding(node_type)).chunk(3, dim=1))

    class ASTInternal(nn.Module):
        """gates = W_iou x + U_iou [h_0; ...; h_{K-1}] (slot k's weights for child k), f_k = σ(W_f x + U_f h_k),
        c = σ(i)⊙tanh(u) + Σ_k f_k⊙c_k; an absent slot reads the learned ``h_absent[k]`` (its c stays 0)."""

        def __init__(self, leaf: ASTLeaf, arity: int, hidden: int):
            super().__init__()
            self.embedding, self.W_iou = leaf.embedding, leaf.W_iou
            self.U_iou = nn.Linear(arity * hidden, 3 * hidden, bias=False)
            self.W_f = nn.Linear(leaf.embedding.embedding_dim, hidden)
            self.U_f = nn.Linear(hidden, hidden, bias=False)
            self.h_absent = nn.Parameter(torch.zeros(arity, hidden))

        def forward(self, node_type, child_h, child_c, mask):
            x = self.embedding(node_type)
            present = mask.unsqueeze(1)
            h = present * child_h + (1 - present) * self.h_absent
            iou = self.W_iou(x) + self.U_iou(h.reshape(1, -1))
            f = torch.sigmoid(self.W_f(x) + self.U_f(h))
            return _sigmoid_tanh_cell(iou.chunk(3, dim=1), (f * child_c).sum(dim=0, keepdim=True))


# ----------------------------------------------------------------------------------------------------------------
# builders: (hidden, seed) -> Cells


def _linear(prefix: str, weight_xW: np.ndarray, bias=None) -> dict:
    """nn.Linear ``prefix``'s values from a weight stored as ONNX MatMul takes it (x @ W): its weight is W^T."""
    out = {f"{prefix}.weight": np.ascontiguousarray(weight_xW.T)}
    if bias is not None:
        out[f"{prefix}.bias"] = bias
    return out


def _load(module, values: dict):
    return load_params(module, values).eval()


def _make_treelstm(hidden: int, seed: int = 0, params=None) -> Cells:
    p = params if params is not None else treelstm.make_params(hidden, EMBED_DIM, VOCAB, seed=seed)
    leaf = _load(TreeLSTMLeaf(p.vocab, p.embed_dim, hidden),
                 {"embedding.weight": p.embedding, **_linear("W", p.W, p.bW)})
    internal = _load(TreeLSTMInternal(hidden), _linear("U", p.U, p.bU))
    return Cells(leaf, internal, dict(children="list", internal_inputs=False, state_names=["h", "c"]))


def _make_childsum(hidden: int, seed: int = 0, params=None) -> Cells:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        emb, cell = nn.Embedding(VOCAB, EMBED_DIM), ChildSumTreeLSTM(EMBED_DIM, hidden)
    return Cells(ChildSumLeaf(emb, cell).eval(), ChildSumInternal(emb, cell).eval(),
                 dict(children="stack", state_names=["c", "h"]))


def _make_treegru(hidden: int, seed: int = 0, params=None) -> Cells:
    p = params if params is not None else treegru.make_params(hidden, EMBED_DIM, VOCAB, seed=seed)
    leaf = _load(TreeGRULeaf(p.vocab, p.embed_dim, hidden),
                 {"embedding.weight": p.embedding, **_linear("W", p.W, p.bW)})
    internal = _load(TreeGRUInternal(hidden), {**_linear("z", p.Uz, p.bz), **_linear("r", p.Ur, p.br),
                                               **_linear("h", p.Uh, p.bh)})
    return Cells(leaf, internal, dict(children="list", internal_inputs=False, state_names=["h"]))


def _make_mvrnn(hidden: int, seed: int = 0, params=None) -> Cells:
    p = params if params is not None else mvrnn.make_params(hidden, MVRNN_VOCAB, seed=seed)
    leaf = _load(MVRNNLeaf(p.vocab, hidden), {"embedding.weight": p.embedding, "word_matrix.weight": p.matrices})
    internal = _load(MVRNNInternal(hidden), {"W.weight": p.W, "W.bias": p.b, "W_M": p.W_M})
    return Cells(leaf, internal, dict(children="list", internal_inputs=False, state_names=["a", "A"]))


def _make_dagrnn(hidden: int, seed: int = 0, params=None) -> Cells:
    p = params if params is not None else dagrnn.make_params(hidden, GRID_FEATURES, seed=seed)
    internal = _load(DAGRNNInternal(p.feature_dim, hidden),
                     {**_linear("W", p.W, p.b), **_linear("U_up", p.U_up), **_linear("U_left", p.U_left)})
    return Cells(DAGRNNLeaf(internal.W).eval(), internal, dict(children="list", state_names=["h"]))


def _make_ast(hidden: int, seed: int = 0, params=None) -> Cells:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        leaf = ASTLeaf(AST_TYPES, EMBED_DIM, hidden)
        internal = ASTInternal(leaf, AST_ARITY, hidden)
        nn.init.uniform_(internal.h_absent, -0.5, 0.5)
    return Cells(leaf.eval(), internal.eval(), dict(children="stack", mask=True, state_names=["h", "c"]))


def _children_words(s) -> dict:
    return {"children": np.ascontiguousarray(s.children), "words": np.ascontiguousarray(s.words)}


def _ast_feeds(s) -> dict:
    """A K = AST_ARITY tree's feeds: ``children`` padded to K slots, ``types`` (the word ids, hashed into the node
    types)."""
    children = np.full((s.children.shape[0], AST_ARITY), -1, dtype=np.int64)
    children[:, :s.children.shape[1]] = s.children
    return {"children": children, "types": np.ascontiguousarray(s.words % AST_TYPES)}


MODELS: dict[str, CellModel] = {
    "treelstm": CellModel("treelstm", "binary TreeLSTM", "binary", _make_treelstm, _children_words, "treelstm"),
    "childsum": CellModel("childsum", "Child-Sum TreeLSTM (treelstm.pytorch's cell)", "nary", _make_childsum,
                          _children_words, "childsum"),
    "treegru": CellModel("treegru", "binary TreeGRU", "binary", _make_treegru, _children_words, "treegru"),
    "mvrnn": CellModel("mvrnn", "MV-RNN (vector and matrix states)", "binary", _make_mvrnn, _children_words, "mvrnn",
                       vocab=MVRNN_VOCAB),
    "dagrnn": CellModel("dagrnn", "DAG-RNN over an image grid (shared W)", "grid", _make_dagrnn,
                        lambda g: {"children": g.children, "features": g.features}, "dagrnn"),
    "ast": CellModel("ast", "N-ary TreeLSTM over ASTs (K = 4 slots, mask)", "ast", _make_ast, _ast_feeds),
}


def make_cells(name: str, hidden: int, seed: int = 0, params=None) -> Cells:
    """Model ``name``'s cells at ``hidden``, weights drawn from ``seed``; for a model with a zoo twin, ``params``
    (the twin's ``make_params``) gives the weights instead (Child-Sum and AST draw their own, sized by ``hidden``)."""
    require_torch("onnx_ops.zoo.cells")
    return MODELS[name].make(hidden, seed=seed, params=params)


def ast_trees(count: int, rng: np.random.Generator, *, min_nodes: int = 8, max_nodes: int = 60) -> list:
    """Random AST-shaped trees: up to AST_ARITY children per node in random slots (holes), a node type at every
    node (:class:`~cortex.examples.structures.NaryForest`, ``words`` = types)."""
    out = []
    for _ in range(count):
        f = st.random_nary_tree(int(rng.integers(min_nodes, max_nodes + 1)), AST_ARITY, rng, AST_TYPES, holes=True)
        out.append(st.NaryForest(rng.integers(0, AST_TYPES, size=f.num_nodes).astype(np.int64), f.children, f.order,
                                 f.roots))
    return out


def export(name: str, hidden: int, path, example: dict, seed: int = 0, params=None, **options):
    """Export model ``name`` (weights as :func:`make_cells` makes them) with ``cortex.torch.export`` to ``path``;
    ``example``: the feeds the model takes. Returns the ModelProto."""
    import cortex.torch

    cells = make_cells(name, hidden, seed, params)
    return cortex.torch.export(cells.leaf, cells.internal, example, path, **{**cells.options, **options})


__all__ = ["AST_ARITY", "AST_TYPES", "CellModel", "Cells", "MODELS", "TORCH_AVAILABLE", "ast_trees", "export",
           "make_cells"]

"""The recursive model zoo: each model in the forms Cortex reads (TreeRec, hand-built Loop/If, TorchScript
exports of natural PyTorch code) with a numpy reference. `MODELS` is the one registry that tests and
tools/bench.py iterate over: every entry knows its structure kind, how to build inputs for each form, and its
reference.

Structure kinds: 'binary' (binary trees: SST parse trees, `structures.Forest`), 'nary' (padded [N, K] children:
`structures.NaryForest`), 'grid' (image grids, each cell the child of its up and left neighbours:
`grids.Grid`), 'chain' (sequences: `grids.Chains`)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .. import grids
from cortex.examples import structures as st
from cortex.examples import treelstm

from . import chainlstm, childsum, dagrnn, mvrnn, treefc, treegru, treernn

VOCAB = 5000  # token ids of SST are hashed into this many rows (structures.token_id)
EMBED_DIM = 300
MVRNN_VOCAB = 200  # MV-RNN keeps a [V, H*H] matrix per word: a small vocabulary keeps it in memory at H=256
GRID_FEATURES = 64
GRID_SIDE = 6  # 6x6 grids: 36 cells, about the size of an SST tree
CHILDSUM_ARITY = 2  # SST trees are binary; Child-Sum tests also use wider random trees


@dataclass(frozen=True)
class ZooModel:
    name: str
    description: str
    structure: str  # 'binary' | 'nary' | 'grid' | 'chain'
    make_params: Callable[..., Any]  # (hidden, seed=0) -> params (vocab/embedding sizes fixed per model)
    build_loop: Callable[[Any], Any]  # params -> ModelProto (hand-built Loop/If)
    build_treerec: Callable[[Any], Any]  # params -> ModelProto (cortex.TreeRec)
    reference: Callable[[Any, Any], tuple]  # (params, structure) -> outputs in the Loop model's order
    loop_feeds: Callable[[Any], dict]  # structure -> feeds of the Loop model and of the TorchScript exports
    treerec_feeds: Callable[[Any], dict]  # structure -> feeds of the TreeRec model
    module: Any = None


def _tuple(x):
    return x if isinstance(x, tuple) else (x,)


def _binary_feeds(f):
    return dict(words=f.words, left=f.left, right=f.right, order=f.order)


def _binary_treerec_feeds(f):
    return dict(children=f.children, words=f.words)


def _binary(name, module, description, *, vocab=VOCAB, params=None, leaf_test="negative"):
    make = params or (lambda hidden, seed=0, vocab=vocab: module.make_params(hidden=hidden, embed_dim=EMBED_DIM,
                                                                             vocab=vocab, seed=seed))
    return ZooModel(name, description, "binary", make, module.build_loop, module.build_treerec,
                    lambda p, f: _tuple(module.reference(p, f, leaf_test=leaf_test)), _binary_feeds,
                    _binary_treerec_feeds, module)


MODELS = {
    "treelstm": _binary("treelstm", treelstm, "binary TreeLSTM (Tai et al. 2015)", leaf_test="minus_one"),
    "treefc": _binary("treefc", treefc, "TreeFC: children summed, one linear map, relu"),
    "treernn": _binary("treernn", treernn, "TreeRNN (Socher): tanh(U [h_l; h_r] + c)", leaf_test="minus_one"),
    "treegru": _binary("treegru", treegru, "binary TreeGRU (two dependent matrix products)"),
    "mvrnn": _binary("mvrnn", mvrnn, "MV-RNN: a vector and a matrix per node (Socher 2012)",
                     params=lambda hidden, seed=0: mvrnn.make_params(hidden=hidden, vocab=MVRNN_VOCAB, seed=seed)),
    "childsum": ZooModel(
        "childsum", "Child-Sum TreeLSTM (variable arity, padded children)", "nary",
        lambda hidden, seed=0: childsum.make_params(hidden=hidden, embed_dim=EMBED_DIM, vocab=VOCAB, seed=seed),
        lambda p: childsum.build_loop(p, max_children=CHILDSUM_ARITY),
        lambda p: childsum.build_treerec(p, max_children=CHILDSUM_ARITY),
        lambda p, f: _tuple(childsum.reference(p, f)),
        lambda f: dict(words=f.words, children=f.children, order=f.order),
        lambda f: dict(children=f.children, words=f.words), childsum),
    "dagrnn": ZooModel(
        "dagrnn", "DAG-RNN over an image grid (up and left neighbours)", "grid",
        lambda hidden, seed=0: dagrnn.make_params(hidden=hidden, feature_dim=GRID_FEATURES, seed=seed),
        dagrnn.build_loop, dagrnn.build_treerec,
        lambda p, g: _tuple(dagrnn.reference(p, g, missing="zero_row")),
        lambda g: dict(features=g.features, up=g.up, left=g.left, order=g.order),
        lambda g: dict(children=g.children, features=g.features), dagrnn),
    "chainlstm": ZooModel(
        "chainlstm", "sequential LSTM as a chain (one child: the previous step)", "chain",
        lambda hidden, seed=0: chainlstm.make_params(hidden=hidden, embed_dim=EMBED_DIM, vocab=VOCAB, seed=seed),
        chainlstm.build_loop, chainlstm.build_treerec,
        lambda p, c: _tuple(chainlstm.reference(p, c, first_test="minus_one")),
        lambda c: dict(words=c.words, prev=c.prev, order=c.order),
        lambda c: dict(children=c.children, words=c.words), chainlstm),
}


def structures(kind: str, count: int, rng: np.random.Generator, *, sst_dir=None, split: str = "test",
               vocab: int = VOCAB, offset: int = 0) -> list:
    """`count` structures of a kind, from SST sentences when `sst_dir` is given (trees; sentences as chains),
    else synthetic SST-shaped ones; grids are always synthetic (GRID_SIDE x GRID_SIDE, sizes varied)."""
    if kind == "grid":
        sides = [(GRID_SIDE + d % 3 - 1, GRID_SIDE + (d // 3) % 3 - 1) for d in range(offset, offset + count)]
        return [grids.grid(r, c, GRID_FEATURES, rng) for r, c in sides]
    if sst_dir is not None:
        trees = st.read_sst(sst_dir, split=split, vocab_size=vocab, limit=offset + count)[offset:]
    else:
        trees = st.sst_like_trees(count, rng, vocab)
    if kind == "binary":
        return trees
    if kind == "nary":
        return [st.nary_from_forest(t) for t in trees]
    if kind == "chain":
        out = []
        for t in trees:
            words = t.words[t.left < 0]  # SST numbers the leaves first, in sentence order
            chain = grids.chains([len(words)], rng, vocab)
            out.append(dataclasses.replace(chain, words=np.ascontiguousarray(words, dtype=np.int64)))
        return out
    raise ValueError(f"unknown structure kind {kind!r}")


def batch(kind: str, items: list):
    """One structure holding all items (a forest, several grids, several chains)."""
    return {"binary": st.batch, "nary": st.batch_nary, "grid": grids.batch_grids, "chain": grids.batch_chains}[kind](items)


__all__ = ["MODELS", "ZooModel", "structures", "batch", "VOCAB", "EMBED_DIM"]

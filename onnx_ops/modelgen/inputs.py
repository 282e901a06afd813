"""Example inputs of a generated model: structures of its kind (real SST parse trees where the kind allows, else
synthetic ones) turned into feeds by input name.

:func:`cases` gives the inputs a model is checked on: ``single`` (one structure), ``forest`` (a batch of several)
and ``odd`` (the forest visited in a shuffled order: children may be read before they are computed, so a
converted model must keep the loop's exact sequential semantics). :func:`export_example` gives the input the
exporter traces with: a batch whose dynamic sizes N, L, R are pairwise different and >= 2 (torch.export
specializes sizes 0 and 1 and may relate equal sizes).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .. import grids as G
from cortex.examples import structures as S
from .source import VOCAB
from .spec import Spec

__all__ = ["cases", "export_example", "feeds_for"]

SST_LIMIT = 60
MAX_SST_NODES = 41  # keep the checks fast: SST sentences of at most 21 words


@lru_cache(maxsize=1)
def _sst() -> tuple:
    path = S.sst_dir_default()
    if path is None:
        return ()
    trees = S.read_sst(path, split="test", vocab_size=VOCAB, limit=SST_LIMIT)
    return tuple(t for t in trees if t.num_nodes <= MAX_SST_NODES)


def _binary(rng, count: int, sst: bool) -> S.Forest:
    trees = list(_sst())
    if sst and len(trees) >= count:
        pick = rng.choice(len(trees), size=count, replace=False)
        return S.batch([trees[int(i)] for i in pick])
    return S.batch([S.random_tree(int(rng.integers(2, 12)), rng, VOCAB) for _ in range(count)])


def _pad(f: S.NaryForest, k: int) -> S.NaryForest:
    ch = np.full((f.num_nodes, k), -1, np.int64)
    ch[:, : f.max_children] = f.children
    return S.NaryForest(f.words, ch, f.order, f.roots)


def _nary(rng, count: int, k: int, sst: bool) -> S.NaryForest:
    if sst and _sst():
        return _pad(S.nary_from_forest(_binary(rng, count, True)), k)  # binary parses as n-ary (K >= 2)
    return S.batch_nary([_pad(S.random_nary_tree(int(rng.integers(2, 14)), k, rng, VOCAB, holes=True), k)
                         for _ in range(count)])


def _structure(spec: Spec, rng, count: int, sst: bool) -> dict:
    """Node arrays of one structure of the spec's kind: words, children [N, K] (or the two/one arrays), order,
    roots, plus num_children / is_leaf / features."""
    st, D = spec.structure, spec.embed
    if st == "binary":
        f = _binary(rng, count, sst)
        arr = {"words": f.words, "children": f.children, "order": f.order, "roots": f.roots}
    elif st == "nary":
        f = _nary(rng, count, spec.arity, sst)
        arr = {"words": f.words, "children": f.children, "order": f.order, "roots": f.roots}
    elif st == "grid":
        shapes = [(int(rng.integers(1, 5)), int(rng.integers(2, 5))) for _ in range(count)]
        g = G.batch_grids([G.grid(r, c, D, rng) for r, c in shapes])
        arr = {"words": rng.integers(0, VOCAB, size=g.num_nodes), "children": g.children, "order": g.order,
               "roots": g.last, "features": g.features}
    else:
        lengths = rng.integers(2, 9, size=count)
        c = G.chains(lengths, rng, VOCAB, interleave=bool(rng.integers(2)))
        arr = {"words": c.words, "children": c.children, "order": c.order, "roots": c.last}
    n = len(arr["words"])
    if "features" not in arr or arr["features"].shape[1] != D:
        arr["features"] = rng.uniform(-1, 1, size=(n, D)).astype(np.float32)
    kids = np.asarray(arr["children"], np.int64)
    arr["num_children"] = (kids >= 0).sum(axis=1)
    arr["is_leaf"] = arr["num_children"] == 0
    return arr


def feeds_for(spec: Spec, arr: dict, order=None) -> dict:
    """Feeds by input name (in the forward's order) from structure arrays ``arr``."""
    from .source import SLOTS, write_source

    idx = np.int64 if spec.dtype == "int64" else np.int32
    order = arr["order"] if order is None else order
    if spec.loop == "reverse":
        order = order[::-1]  # parents first: the model walks it backwards
    kids = np.asarray(arr["children"], np.int64)
    out = {}
    for name, kind in write_source(spec).inputs:
        if kind == "words":
            out[name] = np.asarray(arr["words"], np.int64)
        elif kind == "features":
            out[name] = np.asarray(arr["features"], np.float32)
        elif kind == "bool":
            out[name] = np.asarray(arr["is_leaf"], bool)
        elif kind == "order":
            out[name] = np.ascontiguousarray(order).astype(idx)
        elif kind == "roots":
            out[name] = np.asarray(arr["roots"]).astype(idx)
        elif kind == "index2":
            out[name] = kids.astype(idx)
        elif name == "num_children":
            out[name] = arr["num_children"].astype(idx)
        else:  # one array of the lr layout
            lr = SLOTS[spec.structure][1]
            out[name] = np.ascontiguousarray(kids[:, lr.index(name)]).astype(idx)
    return out


def cases(spec: Spec) -> dict:
    """name -> feeds: ``single``, ``forest`` and ``odd`` (the forest in a shuffled order)."""
    rng = np.random.default_rng(spec.seed % (2**32))
    single = _structure(spec, rng, 1, sst=True)
    forest = _structure(spec, rng, 3, sst=True)
    odd = S.odd_orders(forest["order"])["shuffled"]
    if spec.loop == "reverse":
        odd = odd[::-1]  # feeds_for reverses it again: the model then visits the shuffled sequence
    return {"single": feeds_for(spec, single), "forest": feeds_for(spec, forest),
            "odd": feeds_for(spec, forest, order=odd)}


def export_example(spec: Spec) -> dict:
    """Feeds the exporter traces with: N, L, R pairwise different and >= 2."""
    rng = np.random.default_rng(12345)
    for _ in range(100):
        arr = _structure(spec, rng, 2, sst=False)
        n, r = len(arr["words"]), len(arr["roots"])
        order = arr["order"][:-1]  # L = N - 1: only traced, never compared
        if len({n, len(order), r}) == 3 and min(n, len(order), r) >= 2 and n not in (spec.hidden, spec.embed):
            return feeds_for(spec, arr, order=order)
    raise AssertionError("no example with distinct sizes")

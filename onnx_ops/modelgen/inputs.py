"""Example inputs of a generated model: structures of its kind (real SST parse trees where the kind allows, else
synthetic ones) turned into feeds by input name.

One structure, every encoding: the same nodes become padded children (``left``/``right``, ``children [N, K]``),
a parent array, CSR offsets + indices or an edge list (``edge_index [2, E]``, child -> parent, in a shuffled
order), and, for a batched table, a padded forest ``[B, N_max]`` (each tree renumbered in its visit order, so that
one order over positions visits every tree; positions past a tree's end are isolated leaves). A model's result is
the same whatever the encoding (:func:`node_rows` maps a batched table's rows back to the nodes).

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
from .source import VOCAB, write_source
from .spec import NEW_VALUES, Spec

__all__ = ["batched_arrays", "case_arrays", "cases", "encode_children", "export_example", "feeds_for", "is_new", "node_rows"]

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


def encode_children(children: np.ndarray, rng_seed: int = 0) -> dict:
    """The child sets of ``children`` [N, K] (-1 = no child) in every set encoding: ``parent`` [N] (-1 at roots;
    ValueError when a node has two parents), ``offsets`` [N + 1] and ``indices`` [E] (children in slot order),
    ``edge_index`` [2, E] (child -> parent, edges in a shuffled order)."""
    kids = np.asarray(children, np.int64)
    n = kids.shape[0]
    out = {}
    rows, slots = np.nonzero(kids >= 0)  # row-major: each node's children in slot order
    src = kids[rows, slots]
    parent = np.full(n, -1, np.int64)
    if len(np.unique(src)) == len(src):
        parent[src] = rows
        out["parent"] = parent
    counts = (kids >= 0).sum(axis=1)
    out["offsets"] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    out["indices"] = src.astype(np.int64)
    perm = np.random.default_rng(rng_seed + n).permutation(len(src))
    out["edge_index"] = np.stack([src[perm], rows[perm]]).astype(np.int64)
    return out


def _components(arr: dict) -> list:
    """Each tree (grid, chain) of a structure: the node ids reachable from its root, in the order's sequence."""
    kids = np.asarray(arr["children"], np.int64)
    rank = np.full(len(kids), len(kids), np.int64)
    rank[np.asarray(arr["order"], np.int64)] = np.arange(len(arr["order"]))
    seen = np.zeros(len(kids), bool)
    comps = []
    for r in np.asarray(arr["roots"], np.int64):
        stack, nodes = [int(r)], []
        while stack:
            v = stack.pop()
            if seen[v]:
                continue
            seen[v] = True
            nodes.append(v)
            stack += [int(c) for c in kids[v] if c >= 0 and not seen[c]]
        comps.append(np.array(sorted(nodes, key=lambda u: rank[u]), np.int64))
    if not seen.all():
        raise AssertionError("a node outside every tree")
    return comps


def batched_arrays(arr: dict) -> dict:
    """The structure as a padded forest: every per-node array [B, N_max] (features [B, N_max, D], children
    [B, N_max, K]), each tree's nodes renumbered in visit order; ``roots`` [B] (positions); ``order`` the positions
    0..N_max-1; ``pos`` [N, 2] (tree, position) of every node."""
    comps = _components(arr)
    B, width = len(comps), max(len(c) for c in comps)
    n = len(arr["words"])
    pos = np.zeros((n, 2), np.int64)
    for b, nodes in enumerate(comps):
        pos[nodes, 0] = b
        pos[nodes, 1] = np.arange(len(nodes))
    kids = np.asarray(arr["children"], np.int64)
    out = {"pos": pos, "order": np.arange(width, dtype=np.int64),
           "roots": pos[np.asarray(arr["roots"], np.int64), 1]}
    ch = np.full((B, width, kids.shape[1]), -1, np.int64)
    ch[pos[:, 0], pos[:, 1]] = np.where(kids >= 0, pos[np.maximum(kids, 0), 1], -1)
    out["children"] = ch
    for name in ("words", "features", "num_children", "is_leaf"):
        a = np.asarray(arr[name])
        pad = np.zeros((B, width) + a.shape[1:], a.dtype)
        if name == "is_leaf":
            pad[:] = True  # a padding position is an isolated leaf
        pad[pos[:, 0], pos[:, 1]] = a
        out[name] = pad
    ids = (ch >= 0)
    parent = np.full((B, width), -1, np.int64)
    b_, v_, k_ = np.nonzero(ids)
    parent[b_, ch[b_, v_, k_]] = v_
    out["parent"] = parent
    return out


def node_rows(spec: Spec, arr: dict, table: np.ndarray) -> np.ndarray:
    """A state table's rows by node id: a batched table [B, N_max, ...] is read at each node's (tree, position);
    a flat table is returned as it is."""
    if spec.table != "batched":
        return table
    pos = batched_arrays(arr)["pos"]
    return table[pos[:, 0], pos[:, 1]]


def feeds_for(spec: Spec, arr: dict, order=None) -> dict:
    """Feeds by input name (in the forward's order) from structure arrays ``arr``. For a batched table the order
    is over positions (default: every position in turn)."""
    from .source import SLOTS

    idx = np.int64 if spec.dtype == "int64" else np.int32
    fdt = np.float64 if spec.precision == "float64" else np.float32
    if spec.table == "batched":
        arr = {**arr, **batched_arrays(arr)}
    order = arr["order"] if order is None else order
    if spec.loop == "reverse":
        order = order[::-1]  # parents first: the model walks it backwards
    kids = np.asarray(arr["children"], np.int64)
    sets = encode_children(kids, spec.seed % 1000) if spec.encoding in ("csr", "edges") else {}
    out = {}
    for name, kind in write_source(spec).inputs:
        if kind == "words":
            out[name] = np.asarray(arr["words"], np.int64)
        elif kind == "features":
            out[name] = np.asarray(arr["features"], fdt)
        elif kind == "bool":
            out[name] = np.asarray(arr["is_leaf"], bool)
        elif kind == "order":
            out[name] = np.ascontiguousarray(order).astype(idx)
        elif kind == "roots":
            out[name] = np.asarray(arr["roots"]).astype(idx)
        elif kind == "index2":
            out[name] = kids.astype(idx)
        elif kind in ("offsets", "indices", "edges"):
            out[name] = sets[name].astype(idx)
        elif name == "parent":
            out[name] = (arr["parent"] if spec.table == "batched" else encode_children(kids)["parent"]).astype(idx)
        elif name == "num_children":
            out[name] = arr["num_children"].astype(idx)
        else:  # one array of the lr layout
            lr = SLOTS[spec.structure][1]
            out[name] = np.ascontiguousarray(kids[..., lr.index(name)]).astype(idx)
    return out


def _count(spec: Spec) -> int:
    """Trees in a forest: one sequence for a chain's carried state (it has no node table to hold several)."""
    return 1 if spec.carry not in ("-", "table") and spec.structure == "chain" else 3


def case_arrays(spec: Spec) -> dict:
    """name -> (structure arrays, order or None): the structures of :func:`cases` before encoding. The same for
    every spec that differs only in how it encodes them (a spec's seed, structure kind, embed and arity decide
    them; a carried chain state takes one sequence)."""
    rng = np.random.default_rng(spec.seed % (2**32))
    single = _structure(spec, rng, 1, sst=True)
    forest = _structure(spec, rng, _count(spec), sst=True)
    valid = batched_arrays(forest)["order"] if spec.table == "batched" else forest["order"]
    odd = S.odd_orders(valid)["shuffled"]
    if spec.loop == "reverse":
        odd = odd[::-1]  # feeds_for reverses it again: the model then visits the shuffled sequence
    return {"single": (single, None), "forest": (forest, None), "odd": (forest, odd)}


def cases(spec: Spec) -> dict:
    """name -> feeds: ``single``, ``forest`` and ``odd`` (the forest in a shuffled order)."""
    return {name: feeds_for(spec, arr, order=order) for name, (arr, order) in case_arrays(spec).items()}


def is_new(spec: Spec) -> bool:
    """Whether the spec has a value of issue 19's encodings (values the CI sample does not draw)."""
    d = spec.to_json()
    return d["select"] != "-" or any(d[k] in vals for k, vals in NEW_VALUES.items() if k != "select")


def _distinct_sizes(spec: Spec, feeds: dict) -> bool:
    """Every dynamic dimension's size >= 2 and different from the others and from the model's static sizes
    (torch.export specializes sizes 0 and 1 and may relate equal sizes)."""
    src = write_source(spec)
    sizes: dict = {}
    for name, axes in src.dims.items():
        if name in feeds:
            for axis, dim in axes.items():
                sizes.setdefault(dim, feeds[name].shape[axis])
    static = {spec.hidden, spec.embed, 2} | ({spec.arity} if spec.structure == "nary" else set())
    vals = list(sizes.values())
    return len(set(vals)) == len(vals) and min(vals) >= 2 and not (set(vals) & static)


def export_example(spec: Spec) -> dict:
    """Feeds the exporter traces with: N, L, R pairwise different and >= 2."""
    rng = np.random.default_rng(12345)
    for _ in range(200):
        if not is_new(spec):
            arr = _structure(spec, rng, 2, sst=False)
            n, r = len(arr["words"]), len(arr["roots"])
            order = arr["order"][:-1]  # L = N - 1: only traced, never compared
            if len({n, len(order), r}) == 3 and min(n, len(order), r) >= 2 and n not in (spec.hidden, spec.embed):
                return feeds_for(spec, arr, order=order)
            continue
        arr = _structure(spec, rng, 1 if _count(spec) == 1 else int(rng.integers(3, 7)), sst=False)
        valid = batched_arrays(arr)["order"] if spec.table == "batched" else arr["order"]
        feeds = feeds_for(spec, arr, order=valid[:-1])  # L = N - 1: only traced, never compared
        if _distinct_sizes(spec, feeds):
            return feeds
    raise AssertionError("no example with distinct sizes")

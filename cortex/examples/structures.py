"""Tree structures for recursive models: forests, the SST reader, random and SST-shaped trees.

A :class:`Forest` holds one or more binary trees as flat node arrays (see docs/contracts.md, "Structure inputs of
the TreeLSTM examples"): ``words`` (leaf token ids, 0 at internal nodes), ``left`` / ``right`` (child ids, -1 for
none), ``order`` (a visit sequence with children before parents) and ``roots``.

Token ids of :func:`read_sst`: with ``vocab_size=None`` a token's id is its index (starting at 1) in the list of
distinct lowercased tokens of ``SOStr.txt`` in order of first appearance over the *whole* file (all splits), so
ids do not depend on the split read; the vocabulary then has ``max(words) + 1`` entries (see :func:`sst_vocab`).
With ``vocab_size=V`` the id is ``crc32(token.lower().encode("utf-8")) % V`` (stable across runs and machines).
Internal nodes get word 0.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..treerec.reference import dag_heights

__all__ = [
    "Forest",
    "batch",
    "forest_from_parents",
    "random_tree",
    "read_sst",
    "sst_dir_default",
    "sst_like_trees",
    "sst_vocab",
    "heights",
    "dag_heights",
    "token_id",
]

SPLITS = {"train": 1, "test": 2, "dev": 3}


@dataclass
class Forest:
    """Binary trees as node arrays. ``words``, ``left``, ``right``: int64 [N]; ``order``: int64 [L]
    (children before parents); ``roots``: int64 [num_trees]."""

    words: np.ndarray
    left: np.ndarray
    right: np.ndarray
    order: np.ndarray
    roots: np.ndarray

    @property
    def num_nodes(self) -> int:
        return int(self.words.shape[0])

    @property
    def children(self) -> np.ndarray:
        """int64 [N, 2]: (left, right) per node; the ``children`` input of ``cortex.TreeRec``."""
        return np.stack([self.left, self.right], axis=1).astype(np.int64)

    def height(self) -> int:
        """Height of the tallest tree (a single leaf has height 0)."""
        return int(heights(self.left, self.right).max(initial=-1))

    def arrays(self) -> dict[str, np.ndarray]:
        """The Loop-model feeds: ``words``, ``left``, ``right``, ``order``."""
        return {"words": self.words, "left": self.left, "right": self.right, "order": self.order}


def heights(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Height of every node of a binary forest (leaves 0, else 1 + max child height); see :func:`dag_heights`."""
    return dag_heights(np.stack([np.asarray(left, dtype=np.int64), np.asarray(right, dtype=np.int64)], axis=1))


def _order_by_height(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    return np.argsort(heights(left, right), kind="stable").astype(np.int64)


def forest_from_parents(parents, words) -> Forest:
    """One tree from 0-based parent pointers (-1 = root), the first ``len(words)`` nodes being the leaves in
    sentence order. Every internal node must have exactly two children (ValueError otherwise); the left child is
    the one whose span starts first."""
    parents = np.asarray(parents, dtype=np.int64)
    n = parents.shape[0]
    num_leaves = len(words)
    roots = np.flatnonzero(parents < 0)
    if len(roots) != 1:
        raise ValueError(f"expected one root, found {len(roots)}")
    if parents.max() >= n:
        raise ValueError("parent index out of range")
    kids: list[list[int]] = [[] for _ in range(n)]
    for v, p in enumerate(parents):
        if p >= 0:
            kids[p].append(v)
    for v in range(n):
        k = len(kids[v])
        if v < num_leaves and k:
            raise ValueError(f"leaf {v} has children")
        if v >= num_leaves and k != 2:
            raise ValueError(f"internal node {v} has {k} children; only binary trees are supported")
    left = np.full(n, -1, dtype=np.int64)
    right = np.full(n, -1, dtype=np.int64)
    for v in range(num_leaves, n):
        left[v], right[v] = kids[v]
    order = _order_by_height(left, right)  # also rejects cycles
    # Span starts (min leaf below), in children-before-parents order, to orient children.
    start = np.arange(n, dtype=np.int64)
    start[num_leaves:] = n
    for v in order:
        if left[v] >= 0:
            start[v] = min(start[left[v]], start[right[v]])
            if start[left[v]] > start[right[v]]:
                left[v], right[v] = right[v], left[v]
    w = np.zeros(n, dtype=np.int64)
    w[:num_leaves] = np.asarray(words, dtype=np.int64)
    return Forest(w, left, right, order, roots.astype(np.int64))


def token_id(token: str, vocab_size: int) -> int:
    """Hashed token id: ``crc32(token.lower()) % vocab_size``."""
    return zlib.crc32(token.lower().encode("utf-8")) % vocab_size


@lru_cache(maxsize=4)
def _sst_vocab_cached(path: str) -> dict[str, int]:
    vocab: dict[str, int] = {}
    with open(Path(path) / "SOStr.txt", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            for tok in line.rstrip("\n").split("|"):
                vocab.setdefault(tok.lower(), len(vocab) + 1)
    return vocab


def sst_vocab(path) -> dict[str, int]:
    """Lowercased token -> id (from 1, in order of first appearance in SOStr.txt). Size of an embedding table
    covering it: ``len(vocab) + 1``."""
    return dict(_sst_vocab_cached(str(Path(path))))


def read_sst(path=None, split: str = "test", vocab_size: int | None = None, limit: int | None = None) -> list[Forest]:
    """Read SST parse trees of one split (``train``/``test``/``dev``/``all``) from the directory ``path``
    (default :func:`sst_dir_default`). One Forest per sentence, in file order; ``limit`` keeps the first ones."""
    if path is None:
        path = sst_dir_default()
        if path is None:
            raise FileNotFoundError("no SST directory (set CORTEX_SST_DIR)")
    path = Path(path)
    if split != "all" and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    with open(path / "datasetSplit.txt", encoding="utf-8") as f:
        next(f)
        label = {}
        for line in f:
            line = line.strip()
            if line:
                idx, s = line.split(",")
                label[int(idx)] = int(s)
    vocab = None if vocab_size is not None else _sst_vocab_cached(str(path))
    out: list[Forest] = []
    with open(path / "STree.txt", encoding="utf-8") as ft, open(path / "SOStr.txt", encoding="utf-8") as fs:
        for i, (tline, sline) in enumerate(zip(ft, fs), start=1):
            if not tline.strip():
                continue
            if split != "all" and label.get(i) != SPLITS[split]:
                continue
            toks = sline.rstrip("\n").split("|")
            if vocab is None:
                ids = [token_id(t, vocab_size) for t in toks]
            else:
                ids = [vocab[t.lower()] for t in toks]
            parents = np.array([int(p) for p in tline.strip().split("|")], dtype=np.int64) - 1
            try:
                out.append(forest_from_parents(parents, ids))
            except ValueError as e:
                raise ValueError(f"{path / 'STree.txt'} line {i}: {e}") from None
            if limit is not None and len(out) >= limit:
                break
    return out


def sst_dir_default() -> Path | None:
    """``$CORTEX_SST_DIR`` if set, else ``../shared/data/sst`` beside the source tree Cortex runs from or beside the
    current directory (a checkout), if either exists; else None."""
    env = os.environ.get("CORTEX_SST_DIR")
    if env:
        p = Path(env)
        return p if (p / "STree.txt").exists() else None
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        p = (root.parent / "shared" / "data" / "sst").resolve()
        if (p / "STree.txt").exists():
            return p
    return None


def _tree_from_merges(num_leaves: int, rng: np.random.Generator, vocab: int, right_bias: float) -> Forest:
    """Merge adjacent spans until one is left; ``right_bias`` > 0 favours merging near the right end
    (right-branching trees, like English parses)."""
    n = 2 * num_leaves - 1
    words = np.zeros(n, dtype=np.int64)
    words[:num_leaves] = rng.integers(1 if vocab > 1 else 0, vocab, size=num_leaves)
    left = np.full(n, -1, dtype=np.int64)
    right = np.full(n, -1, dtype=np.int64)
    spans = list(range(num_leaves))
    nxt = num_leaves
    while len(spans) > 1:
        m = len(spans) - 1
        if right_bias > 0:
            w = np.exp(right_bias * np.arange(m) / max(m, 1))
            k = int(rng.choice(m, p=w / w.sum()))
        else:
            k = int(rng.integers(0, m))
        left[nxt], right[nxt] = spans[k], spans[k + 1]
        spans[k : k + 2] = [nxt]
        nxt += 1
    order = _order_by_height(left, right)
    return Forest(words, left, right, order, np.array([n - 1], dtype=np.int64))


def random_tree(num_leaves: int, rng: np.random.Generator, vocab: int) -> Forest:
    """A random binary tree with ``num_leaves`` leaves (ids 0..num_leaves-1, in sentence order) and
    ``num_leaves - 1`` internal nodes (word 0); leaf words uniform in [1, vocab)."""
    if num_leaves < 1:
        raise ValueError("num_leaves must be >= 1")
    return _tree_from_merges(num_leaves, rng, vocab, right_bias=0.0)


def sst_like_trees(count: int, rng: np.random.Generator, vocab: int) -> list[Forest]:
    """Synthetic trees shaped like SST's: sentence lengths with mean ~19 (37 nodes), right-leaning merges giving
    mean height ~10 and a maximum near 29 over a test-set-sized sample."""
    lengths = np.clip(np.round(rng.gamma(shape=3.5, scale=19.0 / 3.5, size=count)), 2, 56).astype(int)
    return [_tree_from_merges(int(n), rng, vocab, right_bias=_SST_RIGHT_BIAS) for n in lengths]


_SST_RIGHT_BIAS = 5.5


def batch(forests: list[Forest]) -> Forest:
    """Concatenate forests into one: node arrays concatenated, child ids, order and roots offset."""
    words, left, right, order, roots = [], [], [], [], []
    off = 0
    for f in forests:
        words.append(f.words)
        left.append(np.where(f.left >= 0, f.left + off, f.left))
        right.append(np.where(f.right >= 0, f.right + off, f.right))
        order.append(f.order + off)
        roots.append(f.roots + off)
        off += f.num_nodes
    cat = lambda xs: np.concatenate(xs).astype(np.int64) if xs else np.zeros(0, dtype=np.int64)  # noqa: E731
    return Forest(cat(words), cat(left), cat(right), cat(order), cat(roots))


# ----------------------------------------------------------------------------------------------------------------
# Variable-arity (n-ary) trees: ``children`` [N, K], -1 padded (the Child-Sum TreeLSTM's structure input).


@dataclass
class NaryForest:
    """Trees of any arity as node arrays. ``words``: int64 [N] (leaf token ids, 0 at internal nodes);
    ``children``: int64 [N, K] (child ids, -1 = no child, holes allowed anywhere in a row); ``order``: int64 [L]
    (children before parents); ``roots``: int64 [num_trees]."""

    words: np.ndarray
    children: np.ndarray
    order: np.ndarray
    roots: np.ndarray

    @property
    def num_nodes(self) -> int:
        return int(self.words.shape[0])

    @property
    def max_children(self) -> int:
        return int(self.children.shape[1])

    def height(self) -> int:
        return int(dag_heights(self.children).max(initial=-1))

    def arrays(self) -> dict[str, np.ndarray]:
        """The Loop-model feeds: ``words``, ``children``, ``order``."""
        return {"words": self.words, "children": self.children, "order": self.order}


def random_nary_tree(
    num_nodes: int, max_children: int, rng: np.random.Generator, vocab: int, *, holes: bool = False
) -> NaryForest:
    """A random tree of ``num_nodes`` nodes, each with at most ``max_children`` children (node ids shuffled;
    leaves get words uniform in [1, vocab), internal nodes word 0). Children fill the first slots of their row
    (-1 after them) unless ``holes``, which puts them in random slots (-1 anywhere in the row)."""
    if num_nodes < 1 or max_children < 1:
        raise ValueError("num_nodes and max_children must be >= 1")
    n, k = num_nodes, max_children
    perm = rng.permutation(n)  # perm[j]: id of the j-th created node; created node 0 is the root
    kids: list[list[int]] = [[] for _ in range(n)]
    for j in range(1, n):
        open_ = [p for p in range(j) if len(kids[p]) < k]
        p = open_[int(rng.integers(0, len(open_)))]
        kids[p].append(j)
    children = np.full((n, k), -1, dtype=np.int64)
    words = np.zeros(n, dtype=np.int64)
    for j in range(n):
        v = int(perm[j])
        ids = [int(perm[c]) for c in kids[j]]
        slots = sorted(rng.choice(k, size=len(ids), replace=False).tolist()) if holes else list(range(len(ids)))
        for s, c in zip(slots, ids):
            children[v, s] = c
        if not ids:
            words[v] = int(rng.integers(1 if vocab > 1 else 0, vocab))
    order = np.argsort(dag_heights(children), kind="stable").astype(np.int64)
    return NaryForest(words, children, order, np.array([perm[0]], dtype=np.int64))


def nary_from_forest(forest: Forest) -> NaryForest:
    """A binary :class:`Forest` as a :class:`NaryForest` with K = 2."""
    return NaryForest(forest.words.astype(np.int64), forest.children, forest.order.astype(np.int64),
                      forest.roots.astype(np.int64))


def batch_nary(forests: list[NaryForest]) -> NaryForest:
    """Concatenate n-ary forests (K = the largest K among them; narrower rows padded with -1)."""
    k = max((f.max_children for f in forests), default=1)
    words, children, order, roots = [], [], [], []
    off = 0
    for f in forests:
        ch = np.full((f.num_nodes, k), -1, dtype=np.int64)
        ch[:, : f.max_children] = np.where(f.children >= 0, f.children + off, f.children)
        words.append(f.words)
        children.append(ch)
        order.append(f.order + off)
        roots.append(f.roots + off)
        off += f.num_nodes
    cat = lambda xs: np.concatenate(xs).astype(np.int64) if xs else np.zeros(0, dtype=np.int64)  # noqa: E731
    ch = np.concatenate(children).astype(np.int64) if children else np.zeros((0, k), dtype=np.int64)
    return NaryForest(cat(words), ch, cat(order), cat(roots))


__all__ += ["NaryForest", "batch_nary", "nary_from_forest", "random_nary_tree"]


def odd_orders(order, num_nodes: int | None = None) -> dict[str, np.ndarray]:
    """Visit sequences derived from a valid children-first `order` that are not one valid pass over the nodes
    (plus `valid` itself): the inputs on which a converted Loop model must still keep the loop's exact
    semantics. With `num_nodes`, also the same order written with negative ids (Gather wraps them)."""
    o = np.asarray(order, dtype=np.int64)
    n, mid = len(o), len(o) // 2
    out = {
        "valid": o.copy(),
        "reversed": o[::-1].copy(),
        "twice": np.concatenate([o[:mid], o[max(mid - 1, 0):mid], o[mid:]]),
        "all_twice": np.concatenate([o, o]),
        "subset": o[::2].copy(),
        "empty": o[:0].copy(),
        "shuffled": np.random.default_rng(n).permutation(o),
    }
    if num_nodes is not None:
        out["negative_ids"] = o - num_nodes
    return out


# ----------------------------------------------------------------------------------------------------------------
# The other ways models receive a node's children (each node's child set, whatever the encoding; docs/ir.md,
# "Child sets"): a parent array, CSR offsets + indices, an edge list [2, E]. Each is computed from `children`
# [N, K] (-1 = no child); children are listed in slot order.


def parents_of(children: np.ndarray) -> np.ndarray:
    """int64 [N]: each node's parent, -1 for a root. Trees only (a node listed by two parents is a DAG)."""
    children = np.asarray(children, dtype=np.int64)
    parent = np.full(children.shape[0], -1, dtype=np.int64)
    for v, row in enumerate(children):
        for c in row[row >= 0]:
            if parent[c] >= 0:
                raise ValueError(f"node {int(c)} has two parents ({int(parent[c])} and {v}): not a tree")
            parent[c] = v
    return parent


def csr_of(children: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(offsets int64 [N + 1], indices int64 [E]): node v's children are indices[offsets[v]:offsets[v + 1]]."""
    children = np.asarray(children, dtype=np.int64)
    lists = [row[row >= 0] for row in children]
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int64)
    indices = np.concatenate(lists).astype(np.int64) if lists else np.zeros(0, dtype=np.int64)
    return offsets, indices


def edge_index_of(children: np.ndarray) -> np.ndarray:
    """int64 [2, E]: one column (child, parent) per child link, the PyTorch Geometric convention (messages flow from
    row 0 to row 1: a node's predecessors are edge_index[0][edge_index[1] == v])."""
    children = np.asarray(children, dtype=np.int64)
    src = [int(c) for v, row in enumerate(children) for c in row if c >= 0]
    dst = [v for v, row in enumerate(children) for c in row if c >= 0]
    return np.array([src, dst], dtype=np.int64).reshape(2, len(src))


def random_dag(num_nodes: int, max_preds: int, rng: np.random.Generator, vocab: int) -> NaryForest:
    """A random DAG as a :class:`NaryForest`: node j (in a shuffled id order) lists up to `max_preds` distinct
    earlier nodes as its children (a node may be listed by several), sources get words in [1, vocab)."""
    if num_nodes < 1 or max_preds < 1:
        raise ValueError("num_nodes and max_preds must be >= 1")
    perm = rng.permutation(num_nodes)
    children = np.full((num_nodes, max_preds), -1, dtype=np.int64)
    words = np.zeros(num_nodes, dtype=np.int64)
    for j in range(num_nodes):
        k = int(rng.integers(0, min(j, max_preds) + 1)) if j else 0
        preds = rng.choice(j, size=k, replace=False) if k else []
        children[perm[j], :k] = perm[np.asarray(preds, dtype=np.int64)]
        if k == 0:
            words[perm[j]] = int(rng.integers(1 if vocab > 1 else 0, vocab))
    order = np.argsort(dag_heights(children), kind="stable").astype(np.int64)
    has_parent = np.zeros(num_nodes, dtype=bool)
    has_parent[children[children >= 0]] = True
    return NaryForest(words, children, order, np.flatnonzero(~has_parent).astype(np.int64))


def topological_orders(children: np.ndarray, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`count` random visit orders with every node after its children (Kahn's algorithm, random ready node)."""
    children = np.asarray(children, dtype=np.int64)
    n = children.shape[0]
    parents = [[] for _ in range(n)]
    for v, row in enumerate(children):
        for c in set(int(c) for c in row if c >= 0):
            parents[c].append(v)
    out = []
    for _ in range(count):
        pending = np.array([len(set(int(c) for c in row if c >= 0)) for row in children])
        ready = [v for v in range(n) if pending[v] == 0]
        order = []
        while ready:
            v = ready.pop(int(rng.integers(0, len(ready))))
            order.append(v)
            for p in parents[v]:
                pending[p] -= 1
                if pending[p] == 0:
                    ready.append(p)
        out.append(np.array(order, dtype=np.int64))
    return out


__all__ += ["csr_of", "edge_index_of", "parents_of", "random_dag", "topological_orders"]


# ----------------------------------------------------------------------------------------------------------------
# Padded forests: B trees side by side, [B, N_max] per node array (a model that advances every tree at once).


@dataclass
class PaddedForest:
    """B trees as [B, N_max] arrays, each tree's nodes renumbered in its visit order (position j of tree b is the
    j-th node it visits), so that ``order`` = 0..N_max-1 is a children-first order of every tree. ``words``: int64
    [B, N_max]; ``children``: int64 [B, N_max, K] (positions in the same tree, -1 = none); positions past a tree's
    end are isolated leaves (word 0, no children); ``roots``: int64 [B] (positions)."""

    words: np.ndarray
    children: np.ndarray
    order: np.ndarray
    roots: np.ndarray

    @property
    def left(self) -> np.ndarray:
        return np.ascontiguousarray(self.children[:, :, 0])

    @property
    def right(self) -> np.ndarray:
        return np.ascontiguousarray(self.children[:, :, 1])


def pad_forest(trees: list[NaryForest]) -> PaddedForest:
    """Single-tree (or any) n-ary forests as one padded forest, one tree per row of the batch."""
    width = max((t.num_nodes for t in trees), default=0)
    k = max((t.max_children for t in trees), default=1)
    words = np.zeros((len(trees), width), dtype=np.int64)
    children = np.full((len(trees), width, k), -1, dtype=np.int64)
    roots = np.zeros(len(trees), dtype=np.int64)
    for b, t in enumerate(trees):
        position = np.full(t.num_nodes, -1, dtype=np.int64)
        position[t.order] = np.arange(len(t.order))
        words[b, position] = t.words
        kids = t.children
        children[b, position, : kids.shape[1]] = np.where(kids >= 0, position[np.maximum(kids, 0)], -1)
        roots[b] = position[t.roots[0]] if len(t.roots) else 0
    return PaddedForest(words, children, np.arange(width, dtype=np.int64), roots)


__all__ += ["PaddedForest", "pad_forest"]

"""Grid and chain structures for the DAG-RNN and chain-LSTM zoo models (trees live in :mod:`cortex.examples.structures`).

A :class:`Grid` holds one or more image grids of R×C cells as flat node arrays: cell (r, c) of a grid starting at
node ``off`` has id ``off + r*C + c``; ``up`` / ``left`` are the ids of cells (r-1, c) / (r, c-1), -1 where missing;
``order`` is the row-major scan (grid after grid), which visits every cell after both its neighbours; ``features``
float32 [N, D] are the per-cell inputs. ``children`` = [up, left] ([N, 2]) is the ``cortex.TreeRec`` input: a DAG
(a cell is the child of the cell below and of the cell to its right).

:class:`Chains` holds sequences as chains: step t of a sequence is a node whose only child is step t-1 (``prev``,
-1 at the first step); ``words`` int64 [N] are the tokens; ``order`` visits sequence after sequence
(``interleave=True``: time-major, step 0 of every sequence, then step 1, ...); ``children`` = ``prev[:, None]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Chains", "Grid", "batch_chains", "batch_grids", "chains", "grid"]


def _cat(xs, dtype=np.int64) -> np.ndarray:
    return np.concatenate(xs).astype(dtype) if xs else np.zeros(0, dtype=dtype)


@dataclass
class Grid:
    """Grids as node arrays: ``features`` float32 [N, D]; ``up``, ``left`` int64 [N] (-1 = no neighbour);
    ``order`` int64 [L] (row-major, grid after grid); ``shapes`` int64 [num_grids, 2] (rows, cols) and
    ``offsets`` int64 [num_grids] (first node id of each grid)."""

    features: np.ndarray
    up: np.ndarray
    left: np.ndarray
    order: np.ndarray
    shapes: np.ndarray
    offsets: np.ndarray

    @property
    def num_nodes(self) -> int:
        return int(self.up.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def children(self) -> np.ndarray:
        """int64 [N, 2]: (up, left) per cell; the ``children`` input of ``cortex.TreeRec``."""
        return np.stack([self.up, self.left], axis=1).astype(np.int64)

    @property
    def last(self) -> np.ndarray:
        """int64 [num_grids]: the bottom-right cell of each grid (it depends on every cell of its grid)."""
        return (self.offsets + self.shapes[:, 0] * self.shapes[:, 1] - 1).astype(np.int64)

    def arrays(self) -> dict[str, np.ndarray]:
        """The Loop-model feeds: ``features``, ``up``, ``left``, ``order``."""
        return {"features": self.features, "up": self.up, "left": self.left, "order": self.order}


def grid(rows: int, cols: int, feature_dim: int, rng: np.random.Generator) -> Grid:
    """One ``rows`` × ``cols`` grid, features uniform in [-1, 1)."""
    if rows < 1 or cols < 1:
        raise ValueError(f"grid needs rows, cols >= 1, got {rows}x{cols}")
    n = rows * cols
    ids = np.arange(n, dtype=np.int64).reshape(rows, cols)
    up = np.full((rows, cols), -1, dtype=np.int64)
    left = np.full((rows, cols), -1, dtype=np.int64)
    up[1:, :] = ids[:-1, :]
    left[:, 1:] = ids[:, :-1]
    feats = rng.uniform(-1.0, 1.0, size=(n, feature_dim)).astype(np.float32)
    return Grid(feats, up.reshape(-1), left.reshape(-1), ids.reshape(-1).copy(),
                np.array([[rows, cols]], dtype=np.int64), np.zeros(1, dtype=np.int64))


def batch_grids(grids: list[Grid]) -> Grid:
    """Concatenate grids into one: node arrays concatenated, neighbour ids, order and offsets shifted."""
    feats, up, left, order, shapes, offsets = [], [], [], [], [], []
    off = 0
    dim = grids[0].feature_dim if grids else 0
    for g in grids:
        feats.append(g.features)
        up.append(np.where(g.up >= 0, g.up + off, g.up))
        left.append(np.where(g.left >= 0, g.left + off, g.left))
        order.append(g.order + off)
        shapes.append(g.shapes)
        offsets.append(g.offsets + off)
        off += g.num_nodes
    return Grid(
        np.concatenate(feats).astype(np.float32) if feats else np.zeros((0, dim), np.float32),
        _cat(up), _cat(left), _cat(order),
        np.concatenate(shapes).astype(np.int64) if shapes else np.zeros((0, 2), np.int64),
        _cat(offsets),
    )


@dataclass
class Chains:
    """Sequences as chains: ``words``, ``prev`` int64 [N] (prev = previous step, -1 at a first step); ``order``
    int64 [L]; ``lengths`` and ``starts`` int64 [num_chains]."""

    words: np.ndarray
    prev: np.ndarray
    order: np.ndarray
    lengths: np.ndarray
    starts: np.ndarray

    @property
    def num_nodes(self) -> int:
        return int(self.words.shape[0])

    @property
    def children(self) -> np.ndarray:
        """int64 [N, 1]: the ``children`` input of ``cortex.TreeRec``."""
        return self.prev.reshape(-1, 1).astype(np.int64)

    @property
    def last(self) -> np.ndarray:
        """int64 [num_chains]: the last step of each chain (-1 for an empty chain)."""
        return np.where(self.lengths > 0, self.starts + self.lengths - 1, -1).astype(np.int64)

    def arrays(self) -> dict[str, np.ndarray]:
        """The Loop-model feeds: ``words``, ``prev``, ``order``."""
        return {"words": self.words, "prev": self.prev, "order": self.order}


def chains(lengths, rng: np.random.Generator, vocab: int, *, interleave: bool = False) -> Chains:
    """Chains of the given lengths (0 allowed), words uniform in [1, vocab) (0 if vocab == 1). Order: chain after
    chain, or time-major with ``interleave=True``."""
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    if (lengths < 0).any():
        raise ValueError("chain lengths must be >= 0")
    n = int(lengths.sum())
    starts = (np.cumsum(lengths) - lengths).astype(np.int64)
    words = rng.integers(1 if vocab > 1 else 0, max(vocab, 1), size=n).astype(np.int64)
    prev = np.arange(n, dtype=np.int64) - 1
    prev[starts[lengths > 0]] = -1
    if interleave:
        t = np.arange(n, dtype=np.int64) - np.repeat(starts, lengths)
        order = np.argsort(t, kind="stable").astype(np.int64)
    else:
        order = np.arange(n, dtype=np.int64)
    return Chains(words, prev, order, lengths, starts)


def batch_chains(cs: list[Chains]) -> Chains:
    """Concatenate chain sets into one: node arrays concatenated, ids, order and starts shifted."""
    words, prev, order, lengths, starts = [], [], [], [], []
    off = 0
    for c in cs:
        words.append(c.words)
        prev.append(np.where(c.prev >= 0, c.prev + off, c.prev))
        order.append(c.order + off)
        lengths.append(c.lengths)
        starts.append(c.starts + off)
        off += c.num_nodes
    return Chains(_cat(words), _cat(prev), _cat(order), _cat(lengths), _cat(starts))

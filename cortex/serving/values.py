"""The abstract values of the graph analysis (graph.py): what a tensor of the main graph is to the merge."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class Rows:
    unit: int
    inner: Optional[tuple]  # the static dimensions after the rows, None where unknown
    carries: Optional[str] = None  # the model input whose values this holds unchanged (node ids travel so)


@dataclass(frozen=True)
class Columns:
    """A model input [rows, n] whose second axis counts a unit (an edge list [2, E]); merged, the requests' arrays
    are concatenated along that axis. Only a recursion's child set may read it: any other op makes it Opaque."""
    unit: int
    rows: int
    carries: str


@dataclass(frozen=True)
class Flipped:
    """A model input's rows in reverse order (`torch.flip(order, [0])`, dynamo's scan over a reversed order). Merged,
    the input's requests are laid out last first, so that the flipped forest holds each request's reversed rows in
    request order. Only a recursion reading it at its positions may use it: any other op makes it Opaque."""
    unit: int
    inner: Optional[tuple]
    carries: str


@dataclass(frozen=True)
class UnitDim:
    unit: int


@dataclass(frozen=True)
class UnitDimPlus:
    """A unit's count plus a constant (N + 1: a table with a padding row past the nodes)."""
    unit: int
    plus: int


@dataclass(frozen=True)
class Padded:
    """A table of one row per unit and, past them, one row of a constant (zeros(N + 1, H): the row a missing child
    reads). Merged, the forest has the same one row past all the nodes; only a recursion's init and a slice back to
    the unit's rows may use it."""
    unit: int
    inner: tuple
    fill: float


@dataclass(frozen=True)
class Dims:
    items: tuple  # ints and UnitDims
    scalar: bool = False  # a 0-D count rather than a [k] shape vector


@dataclass(frozen=True)
class Const:
    value: np.ndarray


@dataclass(frozen=True)
class Opaque:
    reason: str

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


@dataclass(frozen=True)
class Count:
    """A number computed from one unit's count n and constants: TorchScript's trip count of
    `range(len(order) - 1, -1, -1)` is ceil(float(-1 - (n - 1)) / -1). `steps` are applied to n in order, each
    (ONNX op, the constant operand or the type cast to, whether the constant comes first). Merged, the graph computes
    it from the forest's count; the merge evaluates it as ONNX Runtime does (`count_value`), per request and for the
    forest, and merges only where it is what the recursion needs (merge.py: a trip count equal to the positions)."""
    unit: int
    steps: tuple = ()


_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Max": np.maximum, "Min": np.minimum}
_UNARY = {"Neg": np.negative, "Ceil": np.ceil, "Floor": np.floor, "Abs": np.abs, "Identity": np.asarray}
COUNT_OPS = set(_BINARY) | set(_UNARY) | {"Div"}


def count_value(count: Count, n: int):
    """`count` for a unit of n rows, computed with numpy scalars of the ONNX types (the same IEEE operations, integer
    division truncated toward zero as ONNX Runtime's); None where ONNX Runtime's result would not be defined (a
    division by zero, a float cast to an integer out of its range, an integer narrowed out of its range: ONNX
    Runtime's optimizer may fold float -> int64 -> int32 into one float -> int32 cast, which is out of range then)."""
    value = np.asarray(n, dtype=np.int64)
    with np.errstate(all="ignore"):
        for op, const, const_first in count.steps:
            if op == "Cast":
                if const.kind in "iu" and value.dtype.kind == "f":
                    info = np.iinfo(const)
                    if not (np.isfinite(value) and info.min <= np.trunc(value) <= info.max):
                        return None
                elif const.kind in "iu" and value.dtype.kind in "iu":
                    info = np.iinfo(const)
                    if not info.min <= int(value) <= info.max:
                        return None
                value = value.astype(const)
                continue
            if op in _UNARY:
                value = np.asarray(_UNARY[op](value))
                continue
            a, b = (const, value) if const_first else (value, const)
            if op == "Div" and value.dtype.kind in "iu":
                if b == 0:
                    return None
                q = np.abs(a) // np.abs(b)  # truncated toward zero, the sign then
                value = np.asarray(np.where((a < 0) != (b < 0), -q, q), dtype=value.dtype)
            elif op == "Div":
                value = np.asarray(np.divide(a, b), dtype=value.dtype)
            else:
                value = np.asarray(_BINARY[op](a, b), dtype=value.dtype)
    return value

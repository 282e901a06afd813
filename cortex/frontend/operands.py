"""An op's operands as its handler needs them: constant integer vectors (shapes, axes, bounds, sizes), ONNX axes
made non-negative, static shapes. Shared by every op family."""
from __future__ import annotations

import numpy as np

from .interpreter import attr, sym_known
from .values import Known, Refusal, Sym, describe, shape_of


def known_ints(it, v, what):
    """A constant integer vector (shapes, axes, bounds), from a constant or a structure value that folds."""
    if v is None:
        return None
    if isinstance(v, Known):
        return np.asarray(v.value).astype(np.int64)
    if isinstance(v, Sym):
        k = sym_known(v)
        if k is not None:
            return np.asarray(k).astype(np.int64)
    raise Refusal(f"{what} is not constant ({describe(v)})")


def norm_axis(axis, rank: int, what: str = "axis") -> int:
    """An ONNX axis in [-rank, rank) as a non-negative axis, or a refusal (the original fails too)."""
    axis = int(axis)
    if not -rank <= axis < rank:
        raise Refusal(f"{what} {axis} is out of range for rank {rank}")
    return axis % rank


def static_shape(v):
    s = shape_of(v)
    if s is None:
        raise Refusal(f"the shape of {describe(v)} is not static")
    return s


def axes_of(it, node, args, position):
    """Axes from the input at `position` (newer opsets) or the `axes` attribute."""
    if len(args) > position and args[position] is not None:
        return [int(a) for a in known_ints(it, args[position], "axes").reshape(-1)]
    value = attr(node, "axes")
    return None if value is None else [int(a) for a in value]

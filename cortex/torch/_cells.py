"""How Cortex calls a recursive model's two cells: one place for the calling convention, shared by the eager
reference (:mod:`._reference`) and by the modules that become the TreeRec bodies (:mod:`._export`).

One node per call, with a leading batch dimension of 1:

- ``leaf(*x)``: ``x`` are the node's inputs, each ``X[v:v+1]`` (an int64 ``[1]`` for a token id, a ``[1, F]`` row for
  features). Returns the node's S states: a tensor or a tuple of tensors, each ``[1, D_s]`` (any shape with
  D_s elements; a state is stored flat, as a row of D_s floats).
- ``internal(*x, *children[, mask])``: ``x`` as for the leaf (left out with ``internal_inputs=False``); the
  children's states, K child slots (K = ``children.shape[1]``), a missing child (-1) given as zeros:
  ``children="stack"``: one tensor per state, ``[K, D_s]`` (slot k in row k), as Child-Sum cells take them;
  ``children="list"``: child-major, ``[1, D_s]`` each: ``h_0, c_0, h_1, c_1, ...`` for states (h, c).
  With ``mask=True`` a last argument ``mask``, float32 ``[K]``: 1.0 where the slot holds a child, 0.0 where it is
  padding. Returns the S states, as the leaf does.

A node is a leaf iff all its child slots are -1 (TreeRec's rule).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

CHILD_LAYOUTS = ("stack", "list")
CHILDREN = "children"


@dataclass(frozen=True)
class Convention:
    """How the internal cell receives its children (see the module docstring)."""

    children: str = "stack"  # 'stack': one [K, D_s] tensor per state; 'list': [1, D_s] per child and state
    mask: bool = False  # a last argument mask [K] (1.0 = child present)
    internal_inputs: bool = True  # the internal cell receives the node's inputs first

    def __post_init__(self):
        if self.children not in CHILD_LAYOUTS:
            raise ValueError(f"children must be one of {CHILD_LAYOUTS}, not {self.children!r}")


def as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


@dataclass(frozen=True)
class Structure:
    """The inputs of one run: ``children`` int64 [N, K] (-1 = no child) and the node inputs [N, ...], by name, in
    the order the cells take them."""

    children: np.ndarray
    node_inputs: dict

    @classmethod
    def of(cls, inputs: Mapping) -> "Structure":
        if CHILDREN not in inputs:
            raise ValueError(f"the inputs need a {CHILDREN!r} entry (int64 [N, K], -1 = no child)")
        children = np.ascontiguousarray(as_numpy(inputs[CHILDREN]), dtype=np.int64)
        if children.ndim != 2:
            raise ValueError(f"children must be [N, K], got shape {children.shape}")
        node_inputs = {}
        for name, value in inputs.items():
            if name == CHILDREN:
                continue
            arr = np.ascontiguousarray(as_numpy(value))
            if arr.ndim < 1 or arr.shape[0] != children.shape[0]:
                raise ValueError(f"node input {name!r} has shape {arr.shape}: its leading dimension must be N = "
                                 f"{children.shape[0]}")
            node_inputs[name] = arr
        return cls(children, node_inputs)

    @property
    def num_nodes(self) -> int:
        return int(self.children.shape[0])

    @property
    def num_children(self) -> int:
        return int(self.children.shape[1])

    def slices(self, v: int) -> list:
        """Node v's inputs as the cells take them: ``X[v:v+1]`` each."""
        return [torch.from_numpy(x[v:v + 1]) for x in self.node_inputs.values()]

    def mask(self, v: int) -> torch.Tensor:
        return torch.from_numpy((self.children[v] >= 0).astype(np.float32))


def states(out, cell: str) -> tuple:
    """A cell's result as a tuple of flat rows [D_s] (float32)."""
    outs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
    if not outs:
        raise ValueError(f"the {cell} cell returned no state")
    for k, o in enumerate(outs):
        if not isinstance(o, torch.Tensor) or o.dtype != torch.float32:
            what = o.dtype if isinstance(o, torch.Tensor) else type(o).__name__
            raise TypeError(f"the {cell} cell's state {k} is {what}, not a float32 tensor")
    return tuple(o.reshape(-1) for o in outs)


def call_leaf(leaf, xs: Sequence[torch.Tensor]) -> tuple:
    return states(leaf(*xs), "leaf")


def call_internal(internal, conv: Convention, xs: Sequence[torch.Tensor], child_rows: Sequence[Sequence],
                  mask: torch.Tensor | None) -> tuple:
    """``child_rows[k][s]``: child slot k's state s, a flat row (zeros for a missing child)."""
    num_states = len(child_rows[0])
    if conv.children == "stack":
        kids = [torch.stack([rows[s] for rows in child_rows]) for s in range(num_states)]
    else:
        kids = [row.unsqueeze(0) for rows in child_rows for row in rows]
    args = (list(xs) if conv.internal_inputs else []) + kids + ([mask] if conv.mask else [])
    return states(internal(*args), "internal")


class LeafBody(nn.Module):
    """The TreeRec leaf body around the leaf cell: inputs the node-input slices (``X[v]``; with a mask, the mask
    slice last, which the leaf does not take), outputs the flat state rows."""

    def __init__(self, cell: nn.Module, num_inputs: int):
        super().__init__()
        self.cell = cell
        self.num_inputs = num_inputs

    def forward(self, *slices):
        return call_leaf(self.cell, [x.unsqueeze(0) for x in slices[:self.num_inputs]])


class InternalBody(nn.Module):
    """The TreeRec internal body around the internal cell: inputs K·S child rows (child-major), then the
    node-input slices (and the mask slice), outputs the flat state rows."""

    def __init__(self, cell: nn.Module, conv: Convention, num_children: int, num_states: int, num_inputs: int):
        super().__init__()
        self.cell = cell
        self.conv = conv
        self.num_children, self.num_states, self.num_inputs = num_children, num_states, num_inputs

    def forward(self, *args):
        k, s = self.num_children, self.num_states
        rows, slices = args[:k * s], args[k * s:]
        child_rows = [rows[i * s:(i + 1) * s] for i in range(k)]
        xs = [x.unsqueeze(0) for x in slices[:self.num_inputs]]
        mask = slices[self.num_inputs] if self.conv.mask else None
        return call_internal(self.cell, self.conv, xs, child_rows, mask)

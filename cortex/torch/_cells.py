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

import inspect
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


def _positional_arity(cell) -> int | None:
    """How many positional arguments the cell's forward takes (None: any number, *args)."""
    try:
        signature = inspect.signature(cell.forward if isinstance(cell, nn.Module) else cell)
    except (TypeError, ValueError):
        return None
    count = 0
    for p in signature.parameters.values():
        if p.kind == p.VAR_POSITIONAL:
            return None
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty:
            count += 1
    return count


def _last_parameter(cell) -> str | None:
    try:
        names = list(inspect.signature(cell.forward if isinstance(cell, nn.Module) else cell).parameters)
    except (TypeError, ValueError):
        return None
    return names[-1] if names else None


def internal_arity(conv: Convention, num_inputs: int, num_states: int, num_children: int) -> int:
    """The positional arguments an internal cell takes under `conv`."""
    kids = num_states if conv.children == "stack" else num_children * num_states
    return (num_inputs if conv.internal_inputs else 0) + kids + (1 if conv.mask else 0)


def describe_convention(conv: Convention) -> str:
    return f"children={conv.children!r}, internal_inputs={conv.internal_inputs}, mask={conv.mask}"


def resolve_convention(internal, children, mask, internal_inputs, num_inputs: int, num_states: int,
                       num_children: int) -> Convention:
    """The calling convention of the internal cell: the options given, the rest inferred from the cell's signature
    (the one combination whose argument count it takes; the defaults stack / True / False where several fit or the
    signature says nothing). A convention the cell cannot take is a ValueError that names the options that fit."""
    given = {"children": children, "mask": mask, "internal_inputs": internal_inputs}
    candidates = [Convention(c, m, i) for c in CHILD_LAYOUTS for i in (True, False) for m in (False, True)
                  if all(v is None or v == getattr(Convention(c, m, i), k) for k, v in given.items())]
    arity = _positional_arity(internal)
    default = Convention(children or "stack", bool(mask), True if internal_inputs is None else internal_inputs)
    if arity is None:
        return default
    fitting = [c for c in candidates if internal_arity(c, num_inputs, num_states, num_children) == arity]
    if default in fitting:
        return default
    if mask is None:  # a mask is the last argument, named so; otherwise there is none
        wants_mask = "mask" in (_last_parameter(internal) or "").lower()
        fitting = [c for c in fitting if c.mask == wants_mask]
    if len(fitting) == 1:
        return fitting[0]
    every = [c for c in (Convention(c, m, i) for c in CHILD_LAYOUTS for i in (True, False) for m in (False, True))
             if internal_arity(c, num_inputs, num_states, num_children) == arity]
    what = (f"the internal cell takes {arity} positional arguments, but with {describe_convention(default)} Cortex "
            f"passes {internal_arity(default, num_inputs, num_states, num_children)} ({num_inputs} node input(s), "
            f"{num_states} state(s), {num_children} child slots)")
    if fitting:
        raise ValueError(f"{what}; several conventions fit its signature, say which: "
                         + " or ".join(describe_convention(c) for c in fitting) + " (docs/bring-your-pytorch-model.md)")
    if every:
        raise ValueError(f"{what}; these options fit its signature: "
                         + " or ".join(describe_convention(c) for c in every) + " (docs/bring-your-pytorch-model.md)")
    raise ValueError(f"{what}, and no combination of children=, internal_inputs=, mask= fits it "
                     "(docs/bring-your-pytorch-model.md: the calling convention of the cells)")


def check_leaf_arity(leaf, num_inputs: int, names) -> None:
    arity = _positional_arity(leaf)
    if arity is not None and arity != num_inputs:
        raise ValueError(f"the leaf cell takes {arity} positional arguments; Cortex calls it with the {num_inputs} node "
                         f"input(s) of the example ({', '.join(names) or 'none'}), in that order: give the example "
                         "those node inputs, or change the cell")


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

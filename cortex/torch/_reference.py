"""The cells run in eager PyTorch over a structure, node by node in a children-before-parents order: the ground
truth for the exported model."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from ..treerec import treerec_visit_order

from ._cells import Structure, as_numpy, call_internal, call_leaf, resolve_convention


def outputs(states: tuple, head, keep_states: bool) -> tuple:
    """What the exported model returns, from the state tables: the head's outputs (then the tables with
    ``keep_states``), or the tables."""
    if head is None:
        return states
    out = head(*states)
    out = tuple(out) if isinstance(out, (tuple, list)) else (out,)
    return out + (states if keep_states else ())


def run_reference(leaf, internal, inputs: Mapping, *, head=None, children: str | None = None, mask: bool | None = None,
                  internal_inputs: bool | None = None, keep_states: bool = False, state_names=None, output_names=None,
                  **export_only) -> tuple:
    """Run ``leaf`` and ``internal`` (and ``head``) in eager PyTorch over the structure ``inputs`` (``children``
    int64 [N, K] and the node inputs by name, as for :func:`cortex.torch.export`): every node once, children
    before parents; a missing child is zero states. Returns numpy arrays in the exported model's output order.
    ``state_names`` and ``output_names`` are accepted and unused, so that one dict of options serves
    :func:`~cortex.torch.export` and this function. ValueError on a cycle or a child index outside [-1, N), as
    TreeRec."""
    del state_names, output_names, export_only
    st = Structure.of(inputs)
    if st.num_nodes == 0:
        raise ValueError("run_reference needs at least one node")
    rows: list = [None] * st.num_nodes
    conv = None
    with torch.no_grad():
        for v in treerec_visit_order(st.children).tolist():
            kids = st.children[v].tolist()
            if all(c < 0 for c in kids):
                rows[v] = call_leaf(leaf, st.slices(v))
                continue
            template = rows[next(c for c in kids if c >= 0)]
            if conv is None:  # the options given, the rest inferred from the cell's signature (as export does)
                conv = resolve_convention(internal, children, mask, internal_inputs, len(st.node_inputs),
                                          len(template), st.num_children)
            child_rows = [rows[c] if c >= 0 else tuple(torch.zeros_like(r) for r in template) for c in kids]
            out = call_internal(internal, conv, st.slices(v), child_rows, st.mask(v))
            if [r.shape for r in out] != [r.shape for r in template]:
                raise ValueError(f"node {v}: the internal cell returned states of shapes "
                                 f"{[tuple(r.shape) for r in out]}, its children have "
                                 f"{[tuple(r.shape) for r in template]}")
            rows[v] = out
        widths = {tuple(r.shape[0] for r in node) for node in rows}
        if len(widths) != 1:
            raise ValueError(f"the cells return states of different widths: {sorted(widths)}")
        tables = tuple(torch.stack([node[s] for node in rows]) for s in range(len(rows[0])))
        return tuple(np.ascontiguousarray(as_numpy(o)) for o in outputs(tables, head, keep_states))

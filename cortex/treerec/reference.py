"""The reference implementation of ``cortex.TreeRec`` (docs/treerec.md): a children-before-parents visit of every
node, each body run with ``onnx.reference``; :class:`TreeRecOp` runs whole models in ``ReferenceEvaluator``."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from .schema import DOMAIN, VERSION, node_attribute


def dag_heights(children: np.ndarray) -> np.ndarray:
    """Height of every node given ``children`` int64 [N, K] (-1 = none): leaves (no child) 0, else 1 + max child
    height; DAG sharing allowed. Raises ValueError on a child index outside [-1, N) or a cycle (naming a node on
    it). O(N * K)."""
    children = np.asarray(children, dtype=np.int64)
    if children.ndim != 2:
        raise ValueError(f"children must be [N, K], got shape {children.shape}")
    n = int(children.shape[0])
    if children.size and (children.min() < -1 or children.max() >= n):
        bad = np.argwhere((children < -1) | (children >= n))[0]
        raise ValueError(
            f"child index {int(children[bad[0], bad[1]])} of node {int(bad[0])} is out of range [-1, {n})"
        )
    kids = [[c for c in row if c >= 0] for row in children.tolist()]
    parents: list[list[int]] = [[] for _ in range(n)]
    pending = [0] * n
    for v, cs in enumerate(kids):
        pending[v] = len(cs)
        for c in cs:
            parents[c].append(v)
    h = [0] * n
    ready = [v for v in range(n) if pending[v] == 0]
    done = 0
    while ready:
        v = ready.pop()
        done += 1
        hv = h[v] + 1
        for p in parents[v]:
            if h[p] < hv:
                h[p] = hv
            pending[p] -= 1
            if pending[p] == 0:
                ready.append(p)
    if done < n:
        # Walk unfinished children from an unfinished node until a node repeats: it lies on a cycle.
        v = next(v for v in range(n) if pending[v] > 0)
        seen = set()
        while v not in seen:
            seen.add(v)
            v = next(c for c in kids[v] if pending[c] > 0)
        raise ValueError(f"cycle through node {v}")
    return np.asarray(h, dtype=np.int64)


def treerec_visit_order(children: np.ndarray) -> np.ndarray:
    """A children-before-parents order of all N nodes (by height, stable). ValueError on a cycle or an index
    outside [-1, N)."""
    try:
        h = dag_heights(children)
    except ValueError as e:
        raise ValueError(f"TreeRec: {e}") from None
    return np.argsort(h, kind="stable").astype(np.int64)


def _run_treerec(
    children: np.ndarray,
    node_inputs: Sequence[np.ndarray],
    run_leaf: Callable[[list[np.ndarray]], list[np.ndarray]],
    run_internal: Callable[[list[np.ndarray]], list[np.ndarray]],
    num_states: int,
    empty_tables: Callable[[], list[np.ndarray]] | None = None,
) -> list[np.ndarray]:
    children = np.asarray(children)
    if children.ndim != 2:
        raise ValueError(f"TreeRec: children must be [N, K], got shape {children.shape}")
    n, k = children.shape
    for j, x in enumerate(node_inputs):
        if x.ndim < 1 or x.shape[0] != n:
            raise ValueError(f"TreeRec: node input {j} has shape {x.shape}, expected leading dimension {n}")
    order = treerec_visit_order(children)
    rows: list[list[np.ndarray] | None] = [None] * n
    for v in order.tolist():
        slices = [x[v] for x in node_inputs]
        kids = children[v].tolist()
        if all(c < 0 for c in kids):
            out = run_leaf(slices)
        else:
            template = rows[next(c for c in kids if c >= 0)]
            child_rows: list[np.ndarray] = []
            for c in kids:
                child_rows.extend(rows[c] if c >= 0 else [np.zeros_like(r) for r in template])
            out = run_internal(child_rows + slices)
        if len(out) != num_states:
            raise ValueError(f"TreeRec: a body returned {len(out)} outputs, num_states is {num_states}")
        rows[v] = [np.asarray(r) for r in out]
    if n == 0:
        return empty_tables() if empty_tables else [np.zeros((0, 0), np.float32) for _ in range(num_states)]
    return [np.stack([rows[v][s] for v in range(n)]) for s in range(num_states)]


def _empty_tables(leaf_body: onnx.GraphProto) -> list[np.ndarray]:
    """[0, D_s] tables from the leaf body's declared output types ([0, 0] float32 where unknown)."""
    out = []
    for vi in leaf_body.output:
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tt.shape.dim] if tt.HasField("shape") else [0]
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type) if tt.elem_type else np.float32
        out.append(np.zeros((0, *dims), dtype=dtype))
    return out


def _feeds(evaluator, xs, outer) -> dict:
    """The feeds of a body run: the outer-scope values it may read, then its own inputs (which shadow them)."""
    feeds = dict(outer or {})
    feeds.update(zip(evaluator.input_names, xs, strict=True))
    return feeds


def treerec_reference(
    node: onnx.NodeProto, inputs: Sequence[np.ndarray], opsets: dict[str, int] | None = None,
    outer: dict[str, np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Evaluate one TreeRec node on ``inputs`` = [children, *node_inputs] (numpy); bodies run with
    ``onnx.reference``; ``outer`` holds the values of the enclosing graph the bodies read (e.g. its initializers).
    Returns the S state tables. ValueError on a cycle or a child index outside [-1, N)."""
    opsets = dict(opsets or {"": 17})
    opsets.setdefault(DOMAIN, VERSION)
    leaf = ReferenceEvaluator(node_attribute(node, "leaf_body"), opsets=opsets, new_ops=[TreeRecOp])
    internal = ReferenceEvaluator(node_attribute(node, "internal_body"), opsets=opsets, new_ops=[TreeRecOp])
    return _run_treerec(
        inputs[0],
        list(inputs[1:]),
        lambda xs: leaf.run(None, _feeds(leaf, xs, outer)),
        lambda xs: internal.run(None, _feeds(internal, xs, outer)),
        int(node_attribute(node, "num_states")),
        lambda: _empty_tables(node_attribute(node, "leaf_body")),
    )


class TreeRec(OpRun):
    """``cortex.TreeRec`` for ``onnx.reference.ReferenceEvaluator(model, new_ops=[TreeRecOp])``."""

    op_domain = DOMAIN

    def need_context(self) -> bool:
        return True  # the bodies may read names of the enclosing graph (its initializers, its values)

    def _run(self, children, *node_inputs, context=None, **kwargs):  # noqa: ARG002 (attributes come from self)
        leaf, internal = self.leaf_body, self.internal_body
        out = _run_treerec(
            children,
            list(node_inputs),
            lambda xs: leaf.run(None, _feeds(leaf, xs, context)),
            lambda xs: internal.run(None, _feeds(internal, xs, context)),
            int(self.num_states),
            lambda: _empty_tables(node_attribute(self.onnx_node, "leaf_body")),
        )
        return tuple(out)


TreeRecOp = TreeRec

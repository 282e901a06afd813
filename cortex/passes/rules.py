"""Rewrite rules as data: each rule is named, says which node kinds it looks at, and returns a replacement or None
(no change). `apply_rules(rules)` is the one driver: for a node, the first rule of its kind that fires wins; a rule
calls `again` on what it builds when that may simplify further. Each rule can be tested alone
(tests/passes/test_passes.py)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from ..ir import nodes as ir

ELEMENTWISE = (ir.Unary, ir.Binary, ir.Where)
ELEMENTWISE_OR_SELECT = ELEMENTWISE + (ir.Select,)


@dataclass(frozen=True)
class Rule:
    name: str
    kinds: tuple  # node classes the rule looks at
    apply: Callable  # (node, again) -> replacement node, or None


def apply_rules(rules) -> Callable:
    """The driver: a rewrite function (node -> node) for ir.transform / passes.map_rows."""
    by_kind = {}
    for rule in rules:
        for kind in rule.kinds:
            by_kind.setdefault(kind, []).append(rule)

    def again(e):
        for rule in by_kind.get(type(e), ()):
            out = rule.apply(e, again)
            if out is not None:
                return out
        return e

    return again


def _drop_identity(e, again):
    return e.x if e.op == "identity" else None


def _slice_of_slice(e, again):
    return ir.Slice(e.x.x, e.x.start + e.start, e.width) if isinstance(e.x, ir.Slice) else None


def _slice_of_take(e, again):
    return again(ir.take(e.x.x, e.x.indices[e.start:e.start + e.width])) if isinstance(e.x, ir.Take) else None


def _take_of_take(e, again):
    return again(ir.take(e.x.x, [e.x.indices[i] for i in e.indices])) if isinstance(e.x, ir.Take) else None


def _take_of_slice(e, again):
    return again(ir.take(e.x.x, [e.x.start + i for i in e.indices])) if isinstance(e.x, ir.Slice) else None


def _take_of_concat(e, again):
    """All the indices in one part: take from that part."""
    if not isinstance(e.x, ir.Concat):
        return None
    lo, hi, offset = min(e.indices), max(e.indices), 0
    for part in e.x.parts:
        if offset <= lo and hi < offset + part.width:
            return again(ir.take(part, [i - offset for i in e.indices]))
        offset += part.width
    return None


def _take_below_elementwise(e, again):
    """take(f(a, b), I) = f(take(a, I), take(b, I)): rearrangements move to the leaves, where reading an element at
    any index is a load (width-1 operands broadcast and stay)."""
    if not (isinstance(e.x, ELEMENTWISE_OR_SELECT) and len(set(e.indices)) == len(e.indices)):
        return None
    x = e.x
    kids = [k if k.width == 1 else ir.take(k, e.indices) for k in ir.operands(x)]
    return again(dataclasses.replace(ir.with_operands(x, kids), width=e.width))


def _slice_of_concat(e, again):
    if not isinstance(e.x, ir.Concat):
        return None
    offset = 0
    for part in e.x.parts:
        if offset <= e.start and e.start + e.width <= offset + part.width:
            return again(ir.slice_row(part, e.start - offset, e.start - offset + e.width))
        offset += part.width
    return None


def _slice_below_elementwise(e, again):
    if not isinstance(e.x, ELEMENTWISE_OR_SELECT):
        return None
    kids = [k if k.width == 1 else ir.slice_row(k, e.start, e.start + e.width) for k in ir.operands(e.x)
            if isinstance(k, ir.RExpr)]
    others = [k for k in ir.operands(e.x) if not isinstance(k, ir.RExpr)]
    rebuilt = ir.with_operands(e.x, others + kids)
    return again(dataclasses.replace(rebuilt, width=e.width))


def _elementwise_over_concat(e, again):
    """Elementwise math over a concatenation distributes over its parts (r * [h_l; h_r] in a GRU), so the
    concatenation only ever feeds a matrix product or a table write."""
    concat = next((k for k in ir.operands(e) if isinstance(k, ir.Concat) and k.width == e.width), None)
    if concat is None:
        return None
    out, start = [], 0
    for part in concat.parts:
        out.append(again(ir.Slice(e, start, part.width) if part.width != e.width else e))
        start += part.width
    return ir.concat(out)


SIMPLIFY = (
    Rule("drop-identity", (ir.Unary,), _drop_identity),
    Rule("slice-of-slice", (ir.Slice,), _slice_of_slice),
    Rule("slice-of-take", (ir.Slice,), _slice_of_take),
    Rule("take-of-take", (ir.Take,), _take_of_take),
    Rule("take-of-slice", (ir.Take,), _take_of_slice),
    Rule("take-of-concat", (ir.Take,), _take_of_concat),
    Rule("take-below-elementwise", (ir.Take,), _take_below_elementwise),
    Rule("slice-of-concat", (ir.Slice,), _slice_of_concat),
    Rule("slice-below-elementwise", (ir.Slice,), _slice_below_elementwise),
    Rule("elementwise-over-concat", ELEMENTWISE_OR_SELECT, _elementwise_over_concat),
)

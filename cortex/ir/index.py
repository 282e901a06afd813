"""Constructors for index expressions and predicates that fold constants and keep sums of terms in one canonical
form (so `(c + p) + 1` and `(c + 1) + p` are the same value, which is what lets the frontend prove a loop counter
equals `c0 + p`), plus substitution and evaluation."""
from __future__ import annotations

import numpy as np

from . import nodes as ir

_COMPARE = {"lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal, "eq": np.equal,
            "ne": np.not_equal}
NEGATED = {"lt": "ge", "le": "gt", "gt": "le", "ge": "lt", "eq": "ne", "ne": "eq"}
SWAPPED = {"lt": "gt", "le": "ge", "gt": "lt", "ge": "le", "eq": "eq", "ne": "ne"}


def wrap64(value: int) -> int:
    """`value` as int64 arithmetic leaves it: two's complement modulo 2**64, as ONNX Runtime's integer Add, Sub and
    Mul compute and as the generated code does (kernel_support.h: wrapping_add). Sums of terms stay a canonical
    form under it (the integers modulo 2**64 are a ring); orderings do not (`cmp`)."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def const(value: int) -> ir.IConst:
    return ir.IConst(wrap64(int(value)))


def _int_op(op: str, a: int, b: int):
    value = _exact_op(op, a, b)
    return None if value is None else wrap64(value)


def _exact_op(op: str, a: int, b: int):
    if op == "add":
        return a + b
    if op == "sub":
        return a - b
    if op == "mul":
        return a * b
    if op == "max":
        return max(a, b)
    if op == "min":
        return min(a, b)
    if b == 0:
        return None  # a run-time error: keep the expression
    if op == "div":
        q = abs(a) // abs(b)
        return q if (a >= 0) == (b >= 0) else -q
    if op == "floordiv":
        return a // b
    if op == "mod":
        return a % b
    if op == "fmod":
        return int(np.fmod(a, b))
    raise ValueError(op)


def affine(e: ir.IExpr):
    """e as ({atom: coefficient}, constant) where atoms are the non-affine subexpressions."""
    if isinstance(e, ir.IConst):
        return {}, e.value
    if isinstance(e, ir.IBinary) and e.op in ("add", "sub"):
        ta, ca = affine(e.a)
        tb, cb = affine(e.b)
        sign = 1 if e.op == "add" else -1
        terms = dict(ta)
        for atom, coef in tb.items():
            terms[atom] = wrap64(terms.get(atom, 0) + sign * coef)
        return {k: v for k, v in terms.items() if v}, wrap64(ca + sign * cb)
    if isinstance(e, ir.IBinary) and e.op == "mul":
        ta, ca = affine(e.a)
        tb, cb = affine(e.b)
        if not ta:
            return {k: wrap64(v * ca) for k, v in tb.items() if wrap64(v * ca)}, wrap64(ca * cb)
        if not tb:
            return {k: wrap64(v * cb) for k, v in ta.items() if wrap64(v * cb)}, wrap64(ca * cb)
    return {e: 1}, 0


def from_affine(terms: dict, constant: int) -> ir.IExpr:
    out = None
    for atom in sorted(terms, key=repr):
        coef = terms[atom]
        term = atom if coef == 1 else ir.IBinary("mul", const(coef), atom)
        if out is None:
            out = term
        else:
            out = ir.IBinary("add", out, term)
    if out is None:
        return const(constant)
    return out if constant == 0 else ir.IBinary("add", out, const(constant))


def ibin(op: str, a: ir.IExpr, b: ir.IExpr) -> ir.IExpr:
    if isinstance(a, ir.IConst) and isinstance(b, ir.IConst):
        value = _int_op(op, a.value, b.value)
        if value is not None:
            return const(value)
    if op in ("add", "sub") or (op == "mul" and (isinstance(a, ir.IConst) or isinstance(b, ir.IConst))):
        terms, c = affine(ir.IBinary(op, a, b))
        return from_affine(terms, c)
    if op in ("max", "min") and a == b:
        return a
    return ir.IBinary(op, a, b)


def cmp(op: str, a: ir.IExpr, b: ir.IExpr) -> ir.BExpr:
    if isinstance(a, ir.IConst) and isinstance(b, ir.IConst):
        return ir.BConst(bool(_COMPARE[op](a.value, b.value)))
    if a == b:
        return ir.BConst(op in ("le", "ge", "eq"))
    # a - b is a constant: the comparison is decided. An ordering only where neither side can wrap (x + 1 < x holds
    # at x = INT64_MAX, as ONNX Runtime computes it); equality holds or fails modulo 2**64 either way.
    terms, c = affine(ibin("sub", a, b))
    if not terms and (op in ("eq", "ne") or (magnitude(a) < 1 << 63 and magnitude(b) < 1 << 63)):
        return ir.BConst(bool(_COMPARE[op](c, 0)))
    return ir.Compare(op, a, b)


# Positions and lengths count the rows of tensors, which memory bounds far below this: sums of a few of them
# with small coefficients cannot wrap.
ROWS_BOUND = 1 << 48


def magnitude(e: ir.IExpr):
    """A bound on |e| over every input (no intermediate value wraps below it), or infinity where values read from
    the inputs (or host state) take part."""
    if isinstance(e, ir.IConst):
        return abs(e.value)
    if isinstance(e, (ir.Iter, ir.Length, ir.Member)):
        return ROWS_BOUND
    if isinstance(e, ir.IBinary):
        a, b = magnitude(e.a), magnitude(e.b)
        bound = {"add": a + b, "sub": a + b, "mul": a * b, "max": max(a, b), "min": max(a, b), "div": a,
                 "floordiv": a + 1, "mod": b, "fmod": b}[e.op]
        return bound if bound < 1 << 63 else float("inf")
    if isinstance(e, ir.ISelect):
        return max(magnitude(e.a), magnitude(e.b))
    if isinstance(e, ir.Guard):
        return magnitude(e.value)
    return float("inf")  # Load, HostValue, HostElement: any int64


def bnot(a: ir.BExpr) -> ir.BExpr:
    if isinstance(a, ir.BConst):
        return ir.BConst(not a.value)
    if isinstance(a, ir.BNot):
        return a.a
    if isinstance(a, ir.Compare):
        return ir.Compare(NEGATED[a.op], a.a, a.b)
    return ir.BNot(a)


def band(a: ir.BExpr, b: ir.BExpr) -> ir.BExpr:
    if isinstance(a, ir.BConst):
        return b if a.value else a
    if isinstance(b, ir.BConst):
        return a if b.value else b
    if a == b:
        return a
    return ir.BAnd(a, b)


def bor(a: ir.BExpr, b: ir.BExpr) -> ir.BExpr:
    if isinstance(a, ir.BConst):
        return a if a.value else b
    if isinstance(b, ir.BConst):
        return b if b.value else a
    if a == b:
        return a
    return ir.BOr(a, b)


def bxor(a: ir.BExpr, b: ir.BExpr) -> ir.BExpr:
    return bor(band(a, bnot(b)), band(bnot(a), b))


def iselect(pred: ir.BExpr, a: ir.IExpr, b: ir.IExpr) -> ir.IExpr:
    if isinstance(pred, ir.BConst):
        return a if pred.value else b
    if a == b:
        return a
    return ir.ISelect(pred, a, b)


def as_index(e) -> ir.IExpr:
    """A bool as 0/1."""
    if isinstance(e, ir.BExpr):
        return iselect(e, const(1), const(0))
    return e


def as_pred(e) -> ir.BExpr:
    """An integer as a bool (nonzero)."""
    if isinstance(e, ir.IExpr):
        if isinstance(e, ir.ISelect) and e.a == const(1) and e.b == const(0):
            return e.pred
        return cmp("ne", e, const(0))
    return e


def substitute(roots, mapping: dict):
    """The expressions with every occurrence of a key of `mapping` replaced by its value (rebuilt canonically)."""
    def fn(e):
        if e in mapping:
            return mapping[e]
        if isinstance(e, ir.IBinary):
            return ibin(e.op, e.a, e.b)
        if isinstance(e, ir.Compare):
            return cmp(e.op, e.a, e.b)
        if isinstance(e, ir.ISelect):
            return iselect(e.pred, e.a, e.b)
        return e

    rewrite = ir.transform(fn)
    return [rewrite(r) for r in roots]


def mentions(e, atom) -> bool:
    return any(x == atom for x in ir.walk([e]))

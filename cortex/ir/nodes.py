"""The Cortex IR: a recursion over a structure.

A `Program` visits positions p = 0..L-1. At each position a *case* is chosen by its predicate (first true
wins); the case computes new rows for some state tables from child states, node inputs and constants, and
writes them at the case's `target` row. Everything per position is an expression tree of three sorts:

- index expressions (`IExpr`): int64 scalars computed from the structure (the iteration number and loads
  from integer input arrays). They never depend on state, which is what lets the host linearize the
  structure before any float work runs.
- predicates (`BExpr`): booleans over index expressions; they select the case.
- row expressions (`RExpr`): float32 vectors of a static width: child states, constant-table rows, node
  input rows, matrix products with constant weights, elementwise math, slices and concatenations.

Nodes are small frozen dataclasses: equal subtrees compare (and hash) equal, which gives CSE for free.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


def _cached_hash(cls):
    """Frozen dataclass trees are hashed often (CSE maps); cache each node's hash."""
    plain_hash = cls.__hash__

    def __hash__(self):
        h = self.__dict__.get("_hash")
        if h is None:
            h = plain_hash(self)
            object.__setattr__(self, "_hash", h)
        return h

    cls.__hash__ = __hash__
    return cls


# ---- index expressions -------------------------------------------------------------------------


class IExpr:
    pass


@_cached_hash
@dataclass(frozen=True)
class Iter(IExpr):
    """The position p being visited (the Loop's iteration number)."""


@_cached_hash
@dataclass(frozen=True)
class IConst(IExpr):
    value: int


@_cached_hash
@dataclass(frozen=True)
class Load(IExpr):
    """Element of an integer runtime array, with ONNX Gather semantics on `index` (negative wraps, out of
    range is an error). For a 2-D array, `column` picks the column of row `index`."""
    array: str
    index: IExpr
    column: Optional[int] = None


@_cached_hash
@dataclass(frozen=True)
class Length(IExpr):
    """The number of rows of a runtime array (e.g. N from Shape(words)[0]), or of the state tables when
    `array` is None."""
    array: Optional[str]


@_cached_hash
@dataclass(frozen=True)
class IBinary(IExpr):
    op: str  # add | sub | mul | max | min
    a: IExpr
    b: IExpr


@_cached_hash
@dataclass(frozen=True)
class ISelect(IExpr):
    """pred ? a : b over indices (torch.where on indices, e.g. -1 -> a zero row)."""
    pred: "BExpr"
    a: IExpr
    b: IExpr


# ---- predicates --------------------------------------------------------------------------------


class BExpr:
    pass


@_cached_hash
@dataclass(frozen=True)
class BConst(BExpr):
    value: bool


@_cached_hash
@dataclass(frozen=True)
class Compare(BExpr):
    op: str  # lt | le | gt | ge | eq | ne
    a: IExpr
    b: IExpr


@_cached_hash
@dataclass(frozen=True)
class BNot(BExpr):
    a: BExpr


@_cached_hash
@dataclass(frozen=True)
class BAnd(BExpr):
    a: BExpr
    b: BExpr


@_cached_hash
@dataclass(frozen=True)
class BOr(BExpr):
    a: BExpr
    b: BExpr


# ---- row expressions ---------------------------------------------------------------------------


class RExpr:
    width: int


@_cached_hash
@dataclass(frozen=True)
class ChildState(RExpr):
    """Row `index` of state table `table` as it was before this position ran. `missing_zero`: an index of -1
    means "no child" and reads a zero row (TreeRec semantics); otherwise Gather semantics apply."""
    table: str
    index: IExpr
    missing_zero: bool
    width: int


@_cached_hash
@dataclass(frozen=True)
class ConstRow(RExpr):
    """Row `index` (Gather semantics) of a constant matrix, e.g. an embedding table."""
    const: str
    index: IExpr
    width: int


@_cached_hash
@dataclass(frozen=True)
class InputRow(RExpr):
    """Row `index` (Gather semantics) of a runtime float32 matrix input (per-node features)."""
    array: str
    index: IExpr
    width: int


@_cached_hash
@dataclass(frozen=True)
class InputProjection(RExpr):
    """Row `index` of X @ W (+ bias) for a runtime float matrix input X: the whole product is computed once per
    run, before the recursion, as one large matrix product (hoisting node-input-only work)."""
    array: str
    weight: str
    bias: Optional[str]
    index: IExpr
    width: int


@_cached_hash
@dataclass(frozen=True)
class ConstVec(RExpr):
    """A constant vector (width 1 broadcasts)."""
    const: str
    width: int


@_cached_hash
@dataclass(frozen=True)
class Scalar(RExpr):
    value: float
    width: int = 1


@_cached_hash
@dataclass(frozen=True)
class MatMul(RExpr):
    """x @ W (+ bias): W a constant [K, N] matrix, bias an optional constant [N] vector. x holds `rows`
    rows of K (a per-node matrix times a weight), giving rows x N."""
    x: RExpr
    weight: str
    bias: Optional[str]
    width: int
    rows: int = 1


@_cached_hash
@dataclass(frozen=True)
class LeftMatMul(RExpr):
    """W @ X for a constant W [R, K] and a per-node matrix X [K, cols] (row-major in x): [R, cols]. `weight`
    names W transposed ([K, R]), the layout the GEMM reads."""
    weight: str
    x: RExpr
    cols: int
    width: int


@_cached_hash
@dataclass(frozen=True)
class MatVec(RExpr):
    """A per-node matrix [rows, C] (row-major in `mat`) times a per-node vector [C]: [rows]."""
    mat: RExpr
    vec: RExpr
    width: int


@_cached_hash
@dataclass(frozen=True)
class Mask(RExpr):
    """1.0 where the predicate holds at this position, else 0.0 (a cast of a structure test to float)."""
    pred: BExpr
    width: int = 1


@_cached_hash
@dataclass(frozen=True)
class Select(RExpr):
    """pred ? a : b elementwise (torch.where with a per-node condition)."""
    pred: BExpr
    a: RExpr
    b: RExpr
    width: int


UNARY_OPS = ("sigmoid", "tanh", "relu", "neg", "exp", "abs", "identity")
BINARY_OPS = ("add", "sub", "mul", "div", "max", "min")


@_cached_hash
@dataclass(frozen=True)
class Unary(RExpr):
    op: str
    x: RExpr
    width: int


@_cached_hash
@dataclass(frozen=True)
class Binary(RExpr):
    op: str
    a: RExpr
    b: RExpr
    width: int


@_cached_hash
@dataclass(frozen=True)
class Slice(RExpr):
    x: RExpr
    start: int
    width: int


@_cached_hash
@dataclass(frozen=True)
class Concat(RExpr):
    parts: tuple
    width: int


def unary(op: str, x: RExpr) -> RExpr:
    return Unary(op, x, x.width)


def binary(op: str, a: RExpr, b: RExpr) -> RExpr:
    if a.width != b.width and 1 not in (a.width, b.width):
        raise ValueError(f"elementwise {op} of widths {a.width} and {b.width}")
    return Binary(op, a, b, max(a.width, b.width))


def slice_row(x: RExpr, start: int, stop: int) -> RExpr:
    if start == 0 and stop == x.width:
        return x
    return Slice(x, start, stop - start)


def concat(parts) -> RExpr:
    parts = tuple(parts)
    if len(parts) == 1:
        return parts[0]
    return Concat(parts, sum(p.width for p in parts))


# ---- the program -------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputDecl:
    """One runtime input of the converted node. kind: 'array' (int64 structure or float32 node-input
    array, leading dim dynamic), 'trip' (int64 scalar: the number of positions), 'init' (initial state
    table [N, width])."""
    name: str
    kind: str
    dtype: str  # 'int64' | 'float32'
    rank: int
    inner: tuple = ()  # static trailing dims (all but the first)


@dataclass(frozen=True)
class TableDecl:
    name: str
    width: int
    init: Optional[str]  # input holding the initial table, or None: starts at zeros
    output: str  # ONNX name of the output holding the final table


@dataclass(frozen=True)
class Case:
    name: str
    predicate: BExpr
    target: IExpr  # the row every write of this case goes to
    writes: tuple  # ((table name, RExpr), ...)


@dataclass(frozen=True)
class Program:
    """mode 'visit': positions follow a Loop (p -> target row), trip count from `trip` (an input name or an
    int); mode 'dag': every node once (TreeRec), p is the node, `rows_from` names the structure array whose
    length is N, a cycle is an error."""
    name: str
    mode: str
    inputs: tuple  # InputDecl, in the converted node's input order (constants follow them)
    tables: tuple  # TableDecl
    cases: tuple  # Case
    constants: dict = field(default_factory=dict)  # name -> np.ndarray (float32)
    trip: object = None
    rows_from: Optional[str] = None

    def input(self, name: str) -> InputDecl:
        for decl in self.inputs:
            if decl.name == name:
                return decl
        raise KeyError(name)

    def table(self, name: str) -> TableDecl:
        for decl in self.tables:
            if decl.name == name:
                return decl
        raise KeyError(name)


MATERIALIZED = (MatMul, LeftMatMul, MatVec)  # computed per batch into a buffer, not inside a fused loop


def row_children(e: RExpr):
    if isinstance(e, (MatMul, LeftMatMul)):
        return (e.x,)
    if isinstance(e, MatVec):
        return (e.mat, e.vec)
    if isinstance(e, Unary):
        return (e.x,)
    if isinstance(e, Binary):
        return (e.a, e.b)
    if isinstance(e, Slice):
        return (e.x,)
    if isinstance(e, Concat):
        return e.parts
    if isinstance(e, Select):
        return (e.a, e.b)
    return ()


def walk_rows(roots):
    """Every row node reachable from roots, children before parents, each once."""
    seen, out = set(), []
    stack = [(r, False) for r in reversed(list(roots))]
    while stack:
        node, expanded = stack.pop()
        if node in seen:
            continue
        if expanded:
            seen.add(node)
            out.append(node)
            continue
        stack.append((node, True))
        for child in reversed(row_children(node)):
            if child not in seen:
                stack.append((child, False))
    return out


def row_index_exprs(e: RExpr):
    """The index expression a row leaf reads at, or None."""
    if isinstance(e, (ChildState, ConstRow, InputRow, InputProjection)):
        return e.index
    return None


def const_array(program: Program, name: str) -> np.ndarray:
    return program.constants[name]


def referenced_arrays(cases) -> list:
    """Names of the runtime arrays the cases read (loads, lengths, input rows), in first-use order."""
    names = []

    def add(name):
        if name is not None and name not in names:
            names.append(name)

    def index(e):
        if isinstance(e, Load):
            add(e.array)
            index(e.index)
        elif isinstance(e, Length):
            add(e.array)
        elif isinstance(e, IBinary):
            index(e.a)
            index(e.b)
        elif isinstance(e, ISelect):
            pred(e.pred)
            index(e.a)
            index(e.b)

    def pred(e):
        if isinstance(e, Compare):
            index(e.a)
            index(e.b)
        elif isinstance(e, BNot):
            pred(e.a)
        elif isinstance(e, (BAnd, BOr)):
            pred(e.a)
            pred(e.b)

    for case in cases:
        pred(case.predicate)
        index(case.target)
        for node in walk_rows([x for _, x in case.writes]):
            if isinstance(node, (InputRow, InputProjection)):
                add(node.array)
            if isinstance(node, (ChildState, ConstRow, InputRow, InputProjection)):
                index(node.index)
            if isinstance(node, (Mask, Select)):
                pred(node.pred)
    return names

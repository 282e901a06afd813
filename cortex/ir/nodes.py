"""The Cortex IR: a recursion over a structure.

A `Program` visits positions p = 0..L-1. At each position a *case* is chosen by its predicate (first true
wins); the case computes new rows for some tables from child states, node inputs and constants, and writes
them: a state table at the case's `target` row, a per-position table ("emit", a Loop's or Scan's stacked
per-iteration output) at row p. Everything per position is an expression tree of three sorts:

- index expressions (`IExpr`): int64 scalars computed from the structure (the position and loads from
  integer or bool input arrays). They never depend on state, which is what lets the host linearize the
  structure before any float work runs.
- predicates (`BExpr`): booleans over index expressions; they select the case.
- row expressions (`RExpr`): float32 vectors of a static width (a per-position tensor of any static shape,
  row-major): child states, constant-table rows, node input rows, matrix products with constant weights,
  elementwise math (the ops of `ops.py`), element gathers, reductions, slices and concatenations.

Every node is a small frozen dataclass that declares which of its fields hold sub-expressions (`OPERANDS`);
`operands`, `with_operands`, `walk` and `transform` work from that declaration alone, so a new node kind is
one class here plus its rendering, never an edit of every pass. Equal subtrees compare (and hash) equal,
which gives CSE for free.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Annotated, ClassVar, Literal, Optional

import numpy as np

from . import ops

# ---- field types ---------------------------------------------------------------------------------------------
# Every field of every IR class has one of these declared types; `cortex.ir.schema` enforces them on every IR that
# reaches the code generator (built here or loaded from a model), so generated code is written only from checked
# values. The markers say what a plain int or str must also satisfy.

IDENT = "identifier"  # [A-Za-z_][A-Za-z0-9_]{0,127}: program, table, constant names (parts of C++ identifiers)
NAME = "onnx name"  # an ONNX value name: safe text (may be empty: an unused output)
TEXT = "text"  # a message or label: safe text (never ends a C++ comment or string literal)
DIM = "dimension"  # a size or offset: 0 <= d < 2**31

Ident = Annotated[str, IDENT]
Name = Annotated[str, NAME]
Text = Annotated[str, TEXT]
Dim = Annotated[int, DIM]
Int64 = int  # any int64
Constants = Annotated[dict, "constants"]  # Ident -> float32 ndarray


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


def _plain_equal(u, v) -> bool:
    return u is v or u == v


def structurally_equal(a, b) -> bool:
    """Equality of two IR nodes in time linear in their size: hashes (cached) decide most pairs at once, and each pair
    of equal-but-distinct subtrees is compared once (the dataclass `==` compares them again at every path that reaches
    them: exponential time on a chain of x = x + x)."""
    if a is b:
        return True
    proven, stack = set(), [(a, b)]
    while stack:
        x, y = stack.pop()
        if x is y or (id(x), id(y)) in proven:
            continue
        if not isinstance(x, Expr):
            if not _plain_equal(x, y):
                return False
            continue
        if type(x) is not type(y) or hash(x) != hash(y):
            return False
        proven.add((id(x), id(y)))  # every pair pushed must hold, so a later failure fails the whole comparison
        for f in fields(x):
            u, v = getattr(x, f.name), getattr(y, f.name)
            if isinstance(u, Expr):
                stack.append((u, v))
            elif isinstance(u, tuple) and any(isinstance(item, (Expr, tuple)) for item in u):
                if not isinstance(v, tuple) or len(u) != len(v):
                    return False
                stack.extend(zip(u, v))
            elif not _plain_equal(u, v):
                return False
    return True


def _structural_eq(cls):
    def __eq__(self, other):
        if self is other:
            return True
        if type(other) is not type(self):
            return NotImplemented
        return structurally_equal(self, other)

    cls.__eq__ = __eq__
    return cls


def node(cls):
    return _cached_hash(_structural_eq(dataclass(frozen=True)(cls)))


class Expr:
    """Base of every IR expression. OPERANDS: the names of the fields that hold sub-expressions (a field may
    hold one expression or a tuple of them), in evaluation order."""
    OPERANDS: ClassVar[tuple] = ()


def operands(e: Expr) -> tuple:
    out = []
    for name in type(e).OPERANDS:
        value = getattr(e, name)
        if isinstance(value, tuple):
            out.extend(value)
        else:
            out.append(value)
    return tuple(out)


def with_operands(e: Expr, new) -> Expr:
    """e with its operands replaced, in `operands(e)` order; e itself when nothing changed."""
    new = list(new)
    if list(operands(e)) == new:
        return e
    changes, k = {}, 0
    for name in type(e).OPERANDS:
        value = getattr(e, name)
        if isinstance(value, tuple):
            changes[name] = tuple(new[k:k + len(value)])
            k += len(value)
        else:
            changes[name] = new[k]
            k += 1
    return type(e)(**{f.name: changes.get(f.name, getattr(e, f.name)) for f in fields(e)})


def walk(roots, into=lambda e: True):
    """Every expression reachable from roots (through operands, where `into(parent)` allows), children before
    parents, each once."""
    seen, out = set(), []
    stack = [(r, False) for r in reversed(list(roots))]
    while stack:
        e, expanded = stack.pop()
        if e in seen:
            continue
        if expanded:
            seen.add(e)
            out.append(e)
            continue
        stack.append((e, True))
        if into(e):
            for child in reversed(operands(e)):
                if child not in seen:
                    stack.append((child, False))
    return out


def transform(fn, memo=None):
    """A bottom-up rewriter: `rewrite(e)` rebuilds e from its rewritten operands, then applies fn. Memoized,
    so shared subtrees stay shared."""
    memo = {} if memo is None else memo

    def rewrite(e):
        out = memo.get(e)
        if out is None:
            kids = operands(e)
            rebuilt = with_operands(e, [rewrite(c) for c in kids]) if kids else e
            out = fn(rebuilt)
            memo[e] = out
        return out

    return rewrite


# ---- index expressions -------------------------------------------------------------------------


class IExpr(Expr):
    pass


@node
class Iter(IExpr):
    """The position p being visited (the Loop's iteration number)."""


@node
class IConst(IExpr):
    value: Int64


@node
class Load(IExpr):
    """Element of an integer (or bool, read as 0/1) runtime array, with ONNX Gather semantics on `index`
    (negative wraps, out of range is an error). For a 2-D array, `column` picks the column of row `index`;
    a 0-D array (a scalar input) is read at index 0."""
    array: Name
    index: IExpr
    column: Optional[Dim] = None
    OPERANDS: ClassVar[tuple] = ("index",)


@node
class Length(IExpr):
    """The number of rows of a runtime array (e.g. N from Shape(words)[0]), or of the state tables when
    `array` is None."""
    array: Optional[Name]


INDEX_BINARY_OPS = ("add", "sub", "mul", "max", "min", "div", "floordiv", "mod", "fmod")


@node
class IBinary(IExpr):
    """Integer arithmetic: add | sub | mul | max | min | div (truncating, ONNX Div on integers) | floordiv |
    mod (the sign of the divisor, ONNX Mod fmod=0) | fmod (the sign of the dividend). Division by zero is a
    run-time error."""
    op: Literal[INDEX_BINARY_OPS]
    a: IExpr
    b: IExpr
    OPERANDS: ClassVar[tuple] = ("a", "b")


@node
class ISelect(IExpr):
    """pred ? a : b over indices (torch.where on indices, e.g. -1 -> a zero row)."""
    pred: "BExpr"
    a: IExpr
    b: IExpr
    OPERANDS: ClassVar[tuple] = ("pred", "a", "b")


@node
class Guard(IExpr):
    """value, after checking at run time that pred holds; otherwise the run fails with `message` (an input the
    original model would treat differently from what Cortex can compute, e.g. a torch.cat write at a negative
    row, which changes the table's size)."""
    pred: "BExpr"
    value: IExpr
    message: Text
    OPERANDS: ClassVar[tuple] = ("pred", "value")


# ---- predicates --------------------------------------------------------------------------------


class BExpr(Expr):
    pass


@node
class BConst(BExpr):
    value: bool


COMPARE_OPS = ("lt", "le", "gt", "ge", "eq", "ne")


@node
class Compare(BExpr):
    op: Literal[COMPARE_OPS]
    a: IExpr
    b: IExpr
    OPERANDS: ClassVar[tuple] = ("a", "b")


@node
class BNot(BExpr):
    a: BExpr
    OPERANDS: ClassVar[tuple] = ("a",)


@node
class BAnd(BExpr):
    a: BExpr
    b: BExpr
    OPERANDS: ClassVar[tuple] = ("a", "b")


@node
class BOr(BExpr):
    a: BExpr
    b: BExpr
    OPERANDS: ClassVar[tuple] = ("a", "b")


# ---- row expressions ---------------------------------------------------------------------------


class RExpr(Expr):
    width: int


@node
class ChildState(RExpr):
    """Row `index` of state table `table` as it was before this position ran. `missing_zero`: an index of -1
    means "no child" and reads a zero row (TreeRec semantics); otherwise Gather semantics apply."""
    table: Ident
    index: IExpr
    missing_zero: bool
    width: Dim
    OPERANDS: ClassVar[tuple] = ("index",)


@node
class ConstRow(RExpr):
    """Row `index` (Gather semantics) of a constant matrix, e.g. an embedding table."""
    const: Ident
    index: IExpr
    width: Dim
    OPERANDS: ClassVar[tuple] = ("index",)


@node
class InputRow(RExpr):
    """Row `index` (Gather semantics) of a runtime float32 input (per-node features; all dims but the first
    flattened)."""
    array: Name
    index: IExpr
    width: Dim
    OPERANDS: ClassVar[tuple] = ("index",)


@node
class InputProjection(RExpr):
    """Row `index` of X @ W (+ bias) for a runtime float matrix input X: the whole product is computed once per
    run, before the recursion, as one large matrix product (hoisting node-input-only work)."""
    array: Name
    weight: Ident
    bias: Optional[Ident]
    index: IExpr
    width: Dim
    OPERANDS: ClassVar[tuple] = ("index",)


@node
class ConstVec(RExpr):
    """A constant vector (width 1 broadcasts)."""
    const: Ident
    width: Dim


@node
class Scalar(RExpr):
    value: float
    width: Dim = 1


@node
class IndexValue(RExpr):
    """An index expression as a float (a cast of a structure value: 1.0 where a structure test holds, a child
    count, a node id)."""
    index: IExpr
    width: Dim = 1
    OPERANDS: ClassVar[tuple] = ("index",)


@node
class MatMul(RExpr):
    """x @ W (+ bias): W a constant [K, N] matrix, bias an optional constant [N] vector. x holds `rows`
    rows of K (a per-node matrix times a weight), giving rows x N."""
    x: RExpr
    weight: Ident
    bias: Optional[Ident]
    width: Dim
    rows: Dim = 1
    OPERANDS: ClassVar[tuple] = ("x",)


@node
class LeftMatMul(RExpr):
    """W @ X for a constant W [R, K] and a per-node matrix X [K, cols] (row-major in x): [R, cols]. `weight`
    names W transposed ([K, R]), the layout the GEMM reads."""
    weight: Ident
    x: RExpr
    cols: Dim
    width: Dim
    OPERANDS: ClassVar[tuple] = ("x",)


@node
class MatVec(RExpr):
    """A per-node matrix [rows, C] (row-major in `mat`) times a per-node vector [C]: [rows]."""
    mat: RExpr
    vec: RExpr
    width: Dim
    OPERANDS: ClassVar[tuple] = ("mat", "vec")


@node
class Select(RExpr):
    """pred ? a : b elementwise, pred a structure predicate (torch.where with a per-node condition)."""
    pred: BExpr
    a: RExpr
    b: RExpr
    width: Dim
    OPERANDS: ClassVar[tuple] = ("pred", "a", "b")


@node
class Unary(RExpr):
    """An elementwise op of `ops.UNARY` (params: its float attributes, e.g. LeakyRelu's alpha)."""
    op: Literal[tuple(ops.UNARY)]
    x: RExpr
    width: Dim
    params: tuple[float, ...] = ()
    OPERANDS: ClassVar[tuple] = ("x",)


@node
class Binary(RExpr):
    """An elementwise op of `ops.BINARY`; an operand of width 1 broadcasts."""
    op: Literal[tuple(ops.BINARY)]
    a: RExpr
    b: RExpr
    width: Dim
    OPERANDS: ClassVar[tuple] = ("a", "b")


@node
class Where(RExpr):
    """cond != 0 ? a : b elementwise, cond a per-node float (0/1) row: torch.where on computed values.
    Width-1 operands broadcast."""
    cond: RExpr
    a: RExpr
    b: RExpr
    width: Dim
    OPERANDS: ClassVar[tuple] = ("cond", "a", "b")


@node
class Slice(RExpr):
    x: RExpr
    start: Dim
    width: Dim
    OPERANDS: ClassVar[tuple] = ("x",)


@node
class Concat(RExpr):
    parts: tuple[RExpr, ...]
    width: Dim
    OPERANDS: ClassVar[tuple] = ("parts",)


@node
class Take(RExpr):
    """out[i] = x[indices[i]]: any static rearrangement of a row's elements (transpose, broadcast, gather at
    constant indices, strided slices), computed once by running the ONNX op on element ids."""
    x: RExpr
    indices: tuple[Dim, ...]
    width: Dim
    OPERANDS: ClassVar[tuple] = ("x",)


REDUCE_OPS = ("add", "mul", "max", "min")


@node
class Reduce(RExpr):
    """out[i] = op over x[i * group : (i + 1) * group] (a reduction over the innermost `group` elements)."""
    op: Literal[REDUCE_OPS]
    x: RExpr
    group: Dim
    width: Dim
    OPERANDS: ClassVar[tuple] = ("x",)


def unary(op: str, x: RExpr, params: tuple = ()) -> RExpr:
    return Unary(op, x, x.width, tuple(float(p) for p in params))


def binary(op: str, a: RExpr, b: RExpr) -> RExpr:
    if a.width != b.width and 1 not in (a.width, b.width):
        raise ValueError(f"elementwise {op} of widths {a.width} and {b.width}")
    return Binary(op, a, b, max(a.width, b.width))


def where(cond: RExpr, a: RExpr, b: RExpr) -> RExpr:
    widths = {cond.width, a.width, b.width} - {1}
    if len(widths) > 1:
        raise ValueError(f"where of widths {cond.width}, {a.width}, {b.width}")
    return Where(cond, a, b, max(cond.width, a.width, b.width))


def slice_row(x: RExpr, start: int, stop: int) -> RExpr:
    if start == 0 and stop == x.width:
        return x
    return Slice(x, start, stop - start)


def concat(parts) -> RExpr:
    parts = tuple(parts)
    if len(parts) == 1:
        return parts[0]
    return Concat(parts, sum(p.width for p in parts))


def take(x: RExpr, indices) -> RExpr:
    """x rearranged: contiguous runs become slices (and a concatenation of them), the identity disappears."""
    indices = tuple(int(i) for i in np.asarray(indices).reshape(-1))
    if indices == tuple(range(x.width)):
        return x
    if x.width == 1:
        return x if len(indices) == 1 else Take(x, indices, len(indices))
    runs, start = [], 0
    for k in range(1, len(indices) + 1):
        if k == len(indices) or indices[k] != indices[k - 1] + 1:
            runs.append((indices[start], indices[k - 1] + 1))
            start = k
    if len(runs) <= 4 or len(runs) * 8 <= len(indices):
        return concat(slice_row(x, a, b) for a, b in runs)
    return Take(x, indices, len(indices))


# ---- the program -------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputDecl:
    """One runtime input of the converted node. kind: 'array' (an integer, bool or float32 tensor: structure
    arrays, node inputs, scalars such as a trip count; leading dim dynamic unless rank 0), 'init' (initial
    state table [N, ...]). `per_node`: its leading dimension must equal the node count N (a TreeRec node input:
    the op's spec makes any other length an error, even where no node reads the missing rows)."""
    name: Name
    kind: Literal["array", "init"]
    dtype: Literal["int64", "int32", "bool", "float32"]
    rank: Dim
    inner: tuple[Dim, ...] = ()  # static trailing dims (all but the first)
    per_node: bool = False


@dataclass(frozen=True)
class TableDecl:
    """A float32 table the recursion writes. 'state': [N, *inner], rows written at a case's target and read
    as child states. 'emit': [L, *inner], row p written at position p and never read (a Loop's scan output,
    a Scan's per-iteration output)."""
    name: Ident
    inner: tuple[Dim, ...]
    init: Optional[Name]  # input holding the initial table, or None: starts at zeros (state tables only)
    output: Name  # ONNX name of the output holding the final table ("" when nothing reads it)
    kind: Literal["state", "emit"] = "state"

    @property
    def width(self) -> int:
        return int(np.prod(self.inner, dtype=np.int64))


@dataclass(frozen=True)
class Case:
    name: Text
    predicate: BExpr
    target: Optional[IExpr]  # the state row every state write of this case goes to (None: it writes no state)
    writes: tuple[tuple[Ident, RExpr], ...]


@dataclass(frozen=True)
class Program:
    """mode 'visit': positions follow a Loop or Scan (p -> target row); `trip`, an index expression over the
    inputs, is the number of positions. mode 'dag': every node once (TreeRec), p is the node, `rows_from`
    names the structure array whose length is N, a cycle is an error."""
    name: Ident
    mode: Literal["visit", "dag"]
    inputs: tuple[InputDecl, ...]  # in the converted node's input order (constants follow them)
    tables: tuple[TableDecl, ...]
    cases: tuple[Case, ...]
    constants: Constants = field(default_factory=dict)  # name -> np.ndarray (float32)
    trip: Optional[IExpr] = None
    rows_from: Optional[Name] = None
    labels: tuple[tuple[Ident, Name], ...] = ()  # (constant, the ONNX name it came from): messages in user terms

    def label(self, const: str) -> str:
        """What run-time messages call a constant: the initializer it came from, else its IR name."""
        source = next((s for c, s in self.labels if c == const), None)
        return f"initializer '{source}'" if source else f"constant {const}"

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


MATERIALIZED = (MatMul, LeftMatMul, MatVec, Reduce)  # computed per batch into a buffer, not inside a fused loop
ROW_LEAVES = (ChildState, ConstRow, InputRow, InputProjection)  # rows read at an index expression


def row_children(e: RExpr) -> tuple:
    return tuple(c for c in operands(e) if isinstance(c, RExpr))


def walk_rows(roots):
    """Every row node reachable from roots through row operands, children before parents, each once."""
    return [e for e in walk(roots, into=lambda e: isinstance(e, RExpr)) if isinstance(e, RExpr)]


def case_exprs(case: Case):
    """Every expression of a case (all sorts), children first."""
    return walk([case.predicate, case.target] + [x for _, x in case.writes])


def const_array(program: Program, name: str) -> np.ndarray:
    return program.constants[name]


def referenced_arrays(cases, extra=()) -> list:
    """Names of the runtime arrays the cases (and the extra expressions) read, in first-use order."""
    names = []
    roots = list(extra)
    for case in cases:
        roots += [case.predicate, case.target] + [x for _, x in case.writes]
    for e in walk(roots):
        name = getattr(e, "array", None) if isinstance(e, (Load, Length, InputRow, InputProjection)) else None
        if name is not None and name not in names:
            names.append(name)
    return names

"""The Cortex IR: a recursion over a structure.

A `Program` visits positions p = 0..L-1. At each position a *case* is chosen by its predicate (first true
wins); the case computes new rows for some tables from child states, node inputs and constants, and writes
them: a state table at the case's `target` row, a per-position table ("emit", a Loop's or Scan's stacked
per-iteration output) at row p. Everything per position is an expression tree of three sorts:

- index expressions (`IExpr`): int64 scalars computed from the structure (the position and loads from
  integer or bool input arrays). They never depend on state, which is what lets the host linearize the
  structure before any float work runs.
- predicates (`BExpr`): booleans over index expressions; they select the case.
- row expressions (`RExpr`): vectors of a static width of the program's element type (float32; float64 where
  `Program.element` says so), a per-position tensor of any static shape, row-major: child states, constant-table
  rows, node input rows, matrix products with constant weights, elementwise math (the ops of `ops.py`), element gathers, reductions, slices and concatenations.

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
Constants = Annotated[dict, "constants"]  # Ident -> ndarray of the program's element type
Element = Literal["float32", "float64"]  # a program's float element type: its tables, float inputs, constants, math
FLOAT_DTYPES = ("float32", "float64")


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


class IRError(ValueError):
    """An IR that breaks one of its invariants (the verifier, `cortex.ir.verify`, names the node)."""


def check(cond, message):
    if not cond:
        raise IRError(message)


class Expr:
    """Base of every IR expression. A node kind knows itself: its fields (declared types, cortex.ir.schema), which
    of them hold sub-expressions (OPERANDS, in evaluation order; a field may hold one expression or a tuple of
    them), and what the generic walkers ask of it:

    - `verify(program)`: its own invariants (cortex.ir.verify runs the rest);
    - index expressions and predicates: `render(syntax)`, the expression as text or host code (the syntax decides
      the leaves: constants, loads, lengths, calls);
    - row expressions: `text(show)` for the printer (show renders an operand), `evaluate(ev, constants)`: its value
      for every row of its constant tables ([rows, width], the passes' folding; ev evaluates an operand),
      `host_value()`: the per-position value the host prepares for a leaf (a child row read, a table row, a mask,
      an index value), and two facts the kernel plan reads: MATERIALIZED (computed per batch into a buffer, not
      element by element; STEP names the kernel step that computes it, STEP_INPUT the one that lays its operand out
      first) and ADDRESSABLE (a leaf whose any element can be read in place).

    A new kind is its class here plus its rendering in the code generator (cortex/codegen/cstyle.py)."""
    OPERANDS: ClassVar[tuple] = ()
    MATERIALIZED: ClassVar[bool] = False
    ADDRESSABLE: ClassVar[bool] = False
    STEP: ClassVar[str] = ""  # a materialized node: the kernel step that computes it over a batch
    STEP_INPUT: ClassVar[str] = ""  # a step that lays its operand out first (else each row operand is materialized)
    MATERIALIZE_OPERANDS: ClassVar[bool] = True  # a step reads its row operands from buffers

    def verify(self, program):
        raise IRError(f"not an IR expression: {type(self).__name__}")

    def host_value(self):
        """(HOST_READ, (index, missing_zero)) or (HOST_SLOT, (key, kind, source)) for a leaf the host prepares;
        None for every other node."""
        return None


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


# ---- what the nodes' own checks and renderings share ------------------------------------------

INT_INPUT_DTYPES = ("int64", "int32", "bool")
INDEX_INFIX = {"add": "+", "sub": "-", "mul": "*"}
COMPARE_INFIX = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}
# What the host prepares per position for a leaf: a child-state row it reads, or a slot holding a table row
# (HOST_ROW), a predicate (HOST_MASK) or an index value (HOST_VALUE).
HOST_READ, HOST_SLOT = "read", "slot"
HOST_ROW, HOST_MASK, HOST_VALUE = "row", "mask", "value"


def constant(program, name, what):
    c = program.constants.get(name)
    check(c is not None, f"{what}: no constant {name}")
    return c


def float_rows(program, array, width, what):
    decl = program.input(array)
    check(decl.kind == "array" and decl.dtype == program.element and decl.rank >= 1,
          f"{what} {array}: not a {program.element} array")
    check(int(np.prod(decl.inner, dtype=np.int64)) == width, f"{what} {array}: width {width}")


def same_or_one(e, *widths):
    check(set(widths) <= {1, e.width} and e.width == max(widths), f"{type(e).__name__}: widths {widths}")


# ---- index expressions -------------------------------------------------------------------------


class IExpr(Expr):
    pass


@node
class Iter(IExpr):
    """The position p being visited (the Loop's iteration number)."""

    def render(self, syntax) -> str:
        return "p"

    def verify(self, program):
        pass


@node
class IConst(IExpr):
    value: Int64

    def render(self, syntax) -> str:
        return syntax.const(self.value)

    def verify(self, program):
        pass


@node
class Load(IExpr):
    """Element of an integer (or bool, read as 0/1) runtime array, with ONNX Gather semantics on `index`
    (negative wraps, out of range is an error) over its rows (the product of its `lead` dimensions). For an
    array with one more dimension, `column` picks the column of row `index`; a 0-D array (a scalar input) is
    read at index 0."""
    array: Name
    index: IExpr
    column: Optional[Dim] = None
    OPERANDS: ClassVar[tuple] = ("index",)

    def render(self, syntax) -> str:
        return syntax.load(self, self.index.render(syntax))

    def verify(self, program):
        decl = program.input(self.array)
        check(decl.kind == "array" and decl.dtype in INT_INPUT_DTYPES, f"load from non-integer array {self.array}")
        check(len(decl.inner) <= 1, f"load from {self.array} of rank {decl.rank}")
        check(not decl.dynamic_inner, f"load from {self.array}: its columns are dynamic")
        check((len(decl.inner) == 1) == (self.column is not None), f"load from {self.array}: column does not match "
                                                                   f"rank")
        if self.column is not None:
            check(0 <= self.column < decl.inner[0], f"load column {self.column} of {self.array}")


@node
class Length(IExpr):
    """The size of dimension `axis` of a runtime array (e.g. N from Shape(words)[0], a grid's width from
    x.size(1)), or of the state tables when `array` is None (their leading dimensions: the rows N, or a grid's
    R and C)."""
    array: Optional[Name]
    axis: Dim = 0

    def render(self, syntax) -> str:
        return syntax.length(self)

    def verify(self, program):
        if self.array is None:
            lead = max((t.lead for t in program.tables if t.kind == "state"), default=1)
            check(self.axis < lead, f"length of the state tables' dimension {self.axis}")
            return
        decl = program.input(self.array)
        check(decl.kind == "array" and (self.axis < decl.rank or self.axis == 0), f"length of {self.array} "
                                                                                  f"dimension {self.axis}")


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

    def render(self, syntax) -> str:
        a, b = self.a.render(syntax), self.b.render(syntax)
        if self.op in INDEX_INFIX:
            return syntax.arith(self.op, a, b)
        return syntax.call(self.op, a, b)

    def verify(self, program):
        pass


@node
class ISelect(IExpr):
    """pred ? a : b over indices (torch.where on indices, e.g. -1 -> a zero row)."""
    pred: "BExpr"
    a: IExpr
    b: IExpr
    OPERANDS: ClassVar[tuple] = ("pred", "a", "b")

    def render(self, syntax) -> str:
        return f"({self.pred.render(syntax)} ? {self.a.render(syntax)} : {self.b.render(syntax)})"

    def verify(self, program):
        pass


@node
class Guard(IExpr):
    """value, after checking at run time that pred holds; otherwise the run fails with `message` (an input the
    original model would treat differently from what Cortex can compute, e.g. a torch.cat write at a negative
    row, which changes the table's size)."""
    pred: "BExpr"
    value: IExpr
    message: Text
    OPERANDS: ClassVar[tuple] = ("pred", "value")

    def render(self, syntax) -> str:
        return syntax.guard(self.pred.render(syntax), self.value.render(syntax), self.message)

    def verify(self, program):
        pass


@node
class Member(IExpr):
    """The member of the set a SetReduce runs over: only as the row index of a ChildState or InputRow in its body."""

    def render(self, syntax) -> str:
        return "u"  # the member's row in a SetReduce step (verify keeps it there)

    def verify(self, program):
        pass


@node
class HostValue(IExpr):
    """The current value of the host scalar `var` (Program.host_vars): integer state the loop carries."""
    var: Ident

    def render(self, syntax) -> str:
        return syntax.host_value(self.var)

    def verify(self, program):
        var = next((v for v in program.host_vars if v.name == self.var), None)
        check(var is not None and var.size is None, f"host value {self.var}: not a declared host scalar")


@node
class HostElement(IExpr):
    """Element `index` of the host table `var` (Program.host_vars), with ONNX Gather semantics (a negative index
    counts from the end, out of range is a run-time error)."""
    var: Ident
    index: IExpr
    OPERANDS: ClassVar[tuple] = ("index",)

    def render(self, syntax) -> str:
        return syntax.host_element(self.var, self.index.render(syntax))

    def verify(self, program):
        var = next((v for v in program.host_vars if v.name == self.var), None)
        check(var is not None and var.size is not None, f"host element of {self.var}: not a declared host table")


# ---- predicates --------------------------------------------------------------------------------


class BExpr(Expr):
    pass


@node
class BConst(BExpr):
    value: bool

    def render(self, syntax) -> str:
        return "true" if self.value else "false"

    def verify(self, program):
        pass


COMPARE_OPS = ("lt", "le", "gt", "ge", "eq", "ne")


@node
class Compare(BExpr):
    op: Literal[COMPARE_OPS]
    a: IExpr
    b: IExpr
    OPERANDS: ClassVar[tuple] = ("a", "b")

    def render(self, syntax) -> str:
        return f"({self.a.render(syntax)} {COMPARE_INFIX[self.op]} {self.b.render(syntax)})"

    def verify(self, program):
        pass


@node
class BNot(BExpr):
    a: BExpr
    OPERANDS: ClassVar[tuple] = ("a",)

    def render(self, syntax) -> str:
        return f"!{self.a.render(syntax)}"

    def verify(self, program):
        pass


@node
class BAnd(BExpr):
    a: BExpr
    b: BExpr
    OPERANDS: ClassVar[tuple] = ("a", "b")

    def render(self, syntax) -> str:
        return f"({self.a.render(syntax)} && {self.b.render(syntax)})"

    def verify(self, program):
        pass


@node
class BOr(BExpr):
    a: BExpr
    b: BExpr
    OPERANDS: ClassVar[tuple] = ("a", "b")

    def render(self, syntax) -> str:
        return f"({self.a.render(syntax)} || {self.b.render(syntax)})"

    def verify(self, program):
        pass


# ---- row expressions ---------------------------------------------------------------------------


class RExpr(Expr):
    width: int
    VARIES: ClassVar[bool] = False  # a leaf whose value depends on the position (not only on constant table rows)

    def text(self, show) -> str:
        raise TypeError(f"{type(self).__name__} has no text form")

    def evaluate(self, ev, constants):
        """Only nodes that depend on nothing but rows of constant tables can be folded; the others say so."""
        raise TypeError(f"{type(self).__name__} varies with the position")


@node
class ChildState(RExpr):
    """Row `index` of state table `table` as it was before this position ran. `missing_zero`: an index of -1
    means "no child" and reads a zero row (TreeRec semantics); otherwise Gather semantics apply."""
    VARIES: ClassVar[bool] = True
    table: Ident
    index: IExpr
    missing_zero: bool
    width: Dim
    OPERANDS: ClassVar[tuple] = ("index",)

    ADDRESSABLE: ClassVar[bool] = True

    def text(self, show) -> str:
        missing = ", missing=zero" if self.missing_zero else ""
        return f"child_state {self.table}[{show(self.index)}{missing}]"

    def verify(self, program):
        table = program.table(self.table)
        check(table.kind == "state" and table.width == self.width, f"child_state {self.table}: width {self.width}")

    def host_value(self):
        if isinstance(self.index, Member):
            return None  # a set member's row: the set's step reads it
        return HOST_READ, (self.index, self.missing_zero)


@node
class ConstRow(RExpr):
    """Row `index` (Gather semantics) of a constant matrix, e.g. an embedding table."""
    const: Ident
    index: IExpr
    width: Dim
    OPERANDS: ClassVar[tuple] = ("index",)

    ADDRESSABLE: ClassVar[bool] = True

    def text(self, show) -> str:
        return f"const_row {self.const}[{show(self.index)}]"

    def evaluate(self, ev, constants):
        return constants[self.const]

    def verify(self, program):
        table = constant(program, self.const, "const_row")
        check(table.ndim == 2 and table.shape[1] == self.width, f"const_row {self.const}: shape")

    def host_value(self):
        return HOST_SLOT, (self.index, HOST_ROW, self.const)


@node
class InputRow(RExpr):
    """Row `index` (Gather semantics) of a runtime float32 input (per-node features; all dims but the first
    flattened)."""
    VARIES: ClassVar[bool] = True
    array: Name
    index: IExpr
    width: Dim
    OPERANDS: ClassVar[tuple] = ("index",)

    ADDRESSABLE: ClassVar[bool] = True

    def text(self, show) -> str:
        return f"input_row {self.array}[{show(self.index)}]"

    def verify(self, program):
        float_rows(program, self.array, self.width, "input_row")

    def host_value(self):
        if isinstance(self.index, Member):
            return None  # a set member's row: the set's step reads it
        return HOST_SLOT, (self.index, HOST_ROW, self.array)


@node
class InputProjection(RExpr):
    """Row `index` of X @ W (+ bias) for a runtime float matrix input X: the whole product is computed once per
    run, before the recursion, as one large matrix product (hoisting node-input-only work)."""
    VARIES: ClassVar[bool] = True
    array: Name
    weight: Ident
    bias: Optional[Ident]
    index: IExpr
    width: Dim
    OPERANDS: ClassVar[tuple] = ("index",)

    ADDRESSABLE: ClassVar[bool] = True

    def text(self, show) -> str:
        bias = f" + {self.bias}" if self.bias else ""
        return f"input_projection ({self.array} @ {self.weight}{bias})[{show(self.index)}]"

    def verify(self, program):
        width = int(np.prod(program.input(self.array).inner, dtype=np.int64))
        float_rows(program, self.array, width, "input_projection")
        w = constant(program, self.weight, "input_projection")
        check(w.shape == (width, self.width), f"input_projection {self.array} @ {self.weight}: shapes")
        if self.bias is not None:
            check(constant(program, self.bias, "input_projection bias").shape == (self.width,),
                  "input_projection bias")

    def host_value(self):
        return HOST_SLOT, (self.index, HOST_ROW, self.array)


@node
class PreviousRow(RExpr):
    """A value the loop carries from one iteration to the next (a chain's state vector): row p - 1 of the emit table
    `table`, which holds each iteration's new value, or the float input `init` (the loop's initial value, `width`
    elements) at p = 0. A program that reads one runs its positions in order."""
    VARIES: ClassVar[bool] = True
    table: Ident
    init: Name
    width: Dim
    OPERANDS: ClassVar[tuple] = ()

    ADDRESSABLE: ClassVar[bool] = True

    def text(self, show) -> str:
        return f"previous {self.table}[p - 1] (at p = 0: {self.init})"

    def verify(self, program):
        table = program.table(self.table)
        check(table.kind == "emit" and table.width == self.width, f"previous {self.table}: not an emit table of "
                                                                    f"width {self.width}")
        decl = program.input(self.init)
        check(decl.kind == "array" and decl.dtype == program.element and decl.rows is not None and
              decl.rows * int(np.prod(decl.inner, dtype=np.int64)) == self.width,
              f"previous {self.table}: initial value {self.init} has not {self.width} elements")

    def host_value(self):
        return HOST_SLOT, (IBinary("sub", Iter(), IConst(1)), HOST_VALUE, None)


@node
class ConstVec(RExpr):
    """A constant vector (width 1 broadcasts)."""
    const: Ident
    width: Dim

    ADDRESSABLE: ClassVar[bool] = True

    def text(self, show) -> str:
        return f"const {self.const}"

    def evaluate(self, ev, constants):
        return constants[self.const].reshape(1, -1)

    def verify(self, program):
        check(constant(program, self.const, "const").size == self.width, f"const {self.const}: size {self.width}")


@node
class Scalar(RExpr):
    value: float
    width: Dim = 1

    ADDRESSABLE: ClassVar[bool] = True

    def text(self, show) -> str:
        return f"scalar {self.value!r}"

    def evaluate(self, ev, constants):
        return np.full((1, 1), self.value, dtype=np.float64)  # the evaluator rounds it to the program's element type

    def verify(self, program):
        check(self.width == 1, "scalar width")


@node
class IndexValue(RExpr):
    """An index expression as a float (a cast of a structure value: 1.0 where a structure test holds, a child
    count, a node id)."""
    VARIES: ClassVar[bool] = True
    index: IExpr
    width: Dim = 1
    OPERANDS: ClassVar[tuple] = ("index",)

    ADDRESSABLE: ClassVar[bool] = True

    def text(self, show) -> str:
        return f"index_value {show(self.index)}"

    def verify(self, program):
        check(self.width == 1, "index_value width")

    def host_value(self):
        return HOST_SLOT, (self.index, HOST_VALUE, None)


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

    MATERIALIZED: ClassVar[bool] = True
    STEP: ClassVar[str] = "gemm"

    def text(self, show) -> str:
        bias = f" + {self.bias}" if self.bias else ""
        rows = f" ({self.rows} rows)" if self.rows != 1 else ""
        return f"matmul {show(self.x)}{rows} @ {self.weight}{bias}"

    def evaluate(self, ev, constants):
        xs = ev(self.x)
        out = (xs.reshape(xs.shape[0], self.rows, -1) @ constants[self.weight]).reshape(xs.shape[0], -1)
        return out + constants[self.bias] if self.bias else out

    def verify(self, program):
        w = constant(program, self.weight, "matmul")
        check(self.rows >= 1 and self.x.width % self.rows == 0 and self.width % self.rows == 0,
              f"matmul {self.weight}: rows")
        check(w.shape == (self.x.width // self.rows, self.width // self.rows), f"matmul {self.weight}: shape")
        if self.bias is not None:
            check(constant(program, self.bias, "matmul bias").shape == (self.width,), f"matmul bias {self.bias}: shape")


@node
class LeftMatMul(RExpr):
    """W @ X for a constant W [R, K] and a per-node matrix X [K, cols] (row-major in x): [R, cols]. `weight`
    names W transposed ([K, R]), the layout the GEMM reads."""
    weight: Ident
    x: RExpr
    cols: Dim
    width: Dim
    OPERANDS: ClassVar[tuple] = ("x",)

    MATERIALIZED: ClassVar[bool] = True
    STEP: ClassVar[str] = "left_gemm"
    STEP_INPUT: ClassVar[str] = "transpose"  # X^T's rows, the GEMM's left operand

    def text(self, show) -> str:
        return f"left_matmul {self.weight}^T @ {show(self.x)} ({self.cols} cols)"

    def evaluate(self, ev, constants):
        xs = ev(self.x)
        w = constants[self.weight]  # W^T [K, R]
        return (w.T @ xs.reshape(xs.shape[0], -1, self.cols)).reshape(xs.shape[0], -1)

    def verify(self, program):
        w = constant(program, self.weight, "left_matmul")
        check(w.ndim == 2 and w.shape[0] * self.cols == self.x.width and w.shape[1] * self.cols == self.width,
              f"left_matmul {self.weight}: shape")


@node
class MatVec(RExpr):
    """A per-node matrix [rows, C] (row-major in `mat`) times a per-node vector [C]: [rows]."""
    mat: RExpr
    vec: RExpr
    width: Dim
    OPERANDS: ClassVar[tuple] = ("mat", "vec")

    MATERIALIZED: ClassVar[bool] = True
    STEP: ClassVar[str] = "matvec"

    def text(self, show) -> str:
        return f"matvec {show(self.mat)} @ {show(self.vec)}"

    def evaluate(self, ev, constants):
        m, v = ev(self.mat), ev(self.vec)
        rows = max(m.shape[0], v.shape[0])
        return np.einsum("brc,bc->br", np.broadcast_to(m, (rows, m.shape[1])).reshape(rows, self.width, -1),
                         np.broadcast_to(v, (rows, v.shape[1])))

    def verify(self, program):
        check(self.vec.width > 0 and self.mat.width == self.width * self.vec.width, "matvec widths")


@node
class Select(RExpr):
    """pred ? a : b elementwise, pred a structure predicate (torch.where with a per-node condition)."""
    VARIES: ClassVar[bool] = True
    pred: BExpr
    a: RExpr
    b: RExpr
    width: Dim
    OPERANDS: ClassVar[tuple] = ("pred", "a", "b")

    def text(self, show) -> str:
        return f"select {show(self.pred)} ? {show(self.a)} : {show(self.b)}"

    def verify(self, program):
        same_or_one(self, self.a.width, self.b.width)

    def host_value(self):
        return HOST_SLOT, (self.pred, HOST_MASK, None)


@node
class Unary(RExpr):
    """An elementwise op of `ops.UNARY` (params: its float attributes, e.g. LeakyRelu's alpha)."""
    op: Literal[tuple(ops.UNARY)]
    x: RExpr
    width: Dim
    params: tuple[float, ...] = ()
    OPERANDS: ClassVar[tuple] = ("x",)

    def text(self, show) -> str:
        params = "(" + ", ".join(f"{p:g}" for p in self.params) + ")" if self.params else ""
        return f"{self.op}{params} {show(self.x)}"

    def evaluate(self, ev, constants):
        return ops.evaluate(self.op, ev(self.x), params=self.params)

    def verify(self, program):
        check(self.width == self.x.width and len(self.params) == ops.param_count(self.op),
              f"unary {self.op} with {len(self.params)} parameters")


@node
class Binary(RExpr):
    """An elementwise op of `ops.BINARY`; an operand of width 1 broadcasts."""
    op: Literal[tuple(ops.BINARY)]
    a: RExpr
    b: RExpr
    width: Dim
    OPERANDS: ClassVar[tuple] = ("a", "b")

    def text(self, show) -> str:
        return f"{self.op} {show(self.a)}, {show(self.b)}"

    def evaluate(self, ev, constants):
        return ops.evaluate(self.op, ev(self.a), ev(self.b))

    def verify(self, program):
        same_or_one(self, self.a.width, self.b.width)


@node
class Where(RExpr):
    """cond != 0 ? a : b elementwise, cond a per-node float (0/1) row: torch.where on computed values.
    Width-1 operands broadcast."""
    cond: RExpr
    a: RExpr
    b: RExpr
    width: Dim
    OPERANDS: ClassVar[tuple] = ("cond", "a", "b")

    def text(self, show) -> str:
        return f"where {show(self.cond)} ? {show(self.a)} : {show(self.b)}"

    def evaluate(self, ev, constants):
        return np.where(ev(self.cond) != 0, ev(self.a), ev(self.b))

    def verify(self, program):
        same_or_one(self, self.cond.width, self.a.width, self.b.width)


@node
class Slice(RExpr):
    x: RExpr
    start: Dim
    width: Dim
    OPERANDS: ClassVar[tuple] = ("x",)

    def text(self, show) -> str:
        return f"slice {show(self.x)}[{self.start}:{self.start + self.width}]"

    def evaluate(self, ev, constants):
        return ev(self.x)[:, self.start:self.start + self.width]

    def verify(self, program):
        check(0 <= self.start and self.width >= 1 and self.start + self.width <= self.x.width,
              f"slice [{self.start}:+{self.width}] of {self.x.width}")


@node
class Concat(RExpr):
    parts: tuple[RExpr, ...]
    width: Dim
    OPERANDS: ClassVar[tuple] = ("parts",)

    def text(self, show) -> str:
        return "concat " + ", ".join(show(p) for p in self.parts)

    def evaluate(self, ev, constants):
        parts = [ev(p) for p in self.parts]
        rows = max(p.shape[0] for p in parts)
        return np.concatenate([np.broadcast_to(p, (rows, p.shape[1])) for p in parts], axis=1)

    def verify(self, program):
        check(self.width == sum(x.width for x in self.parts) and len(self.parts) >= 1, "concat width")


@node
class Take(RExpr):
    """out[i] = x[indices[i]]: any static rearrangement of a row's elements (transpose, broadcast, gather at
    constant indices, strided slices), computed once by running the ONNX op on element ids."""
    x: RExpr
    indices: tuple[Dim, ...]
    width: Dim
    OPERANDS: ClassVar[tuple] = ("x",)

    def text(self, show) -> str:
        shown = ", ".join(str(i) for i in self.indices[:8]) + (", ..." if len(self.indices) > 8 else "")
        return f"take {show(self.x)}[{shown}]"

    def evaluate(self, ev, constants):
        xs = ev(self.x)
        return xs[:, list(self.indices)] if self.x.width > 1 else np.repeat(xs, self.width, axis=1)

    def verify(self, program):
        check(self.width == len(self.indices) and all(0 <= i < self.x.width for i in self.indices), "take indices")


REDUCE_OPS = ("add", "mul", "max", "min")


@node
class Reduce(RExpr):
    """out[i] = op over x[i * group : (i + 1) * group] (a reduction over the innermost `group` elements)."""
    op: Literal[REDUCE_OPS]
    x: RExpr
    group: Dim
    width: Dim
    OPERANDS: ClassVar[tuple] = ("x",)

    MATERIALIZED: ClassVar[bool] = True
    STEP: ClassVar[str] = "reduce"

    def text(self, show) -> str:
        return f"reduce_{self.op} {show(self.x)} (groups of {self.group})"

    def evaluate(self, ev, constants):
        xs = ev(self.x)
        return ops.REDUCE_NUMPY[self.op](xs.reshape(xs.shape[0], self.width, self.group), axis=2)

    def verify(self, program):
        check(self.group >= 1 and self.x.width == self.group * self.width, f"reduce {self.op} groups")


SET_ENCODINGS = ("parent", "edges", "range", "edge_index", "forest_parent")
HOST_SET = "set"


@node
class SetReduce(RExpr):
    """op, elementwise, of body(u) over the members u of a set the structure defines (a node's children or a DAG
    node's predecessors, however the model encodes them), `empty` where the set is empty. The body is elementwise math
    whose leaves read a member's rows (ChildState(table, Member()), InputRow(array, Member())) and values of the node
    itself. Members, in order:
    - 'parent': every u in [0, len(arrays[0])) with arrays[0][u] == bounds[0] (children from a parent array);
    - 'edges': arrays[0][e] for every e with arrays[1][e] == bounds[0] (predecessors from an edge list src, dst); a
      second bound 1 says the model reads arrays[0] whole (`h[src]`, masked by `dst == v` after): it is checked to
      hold row indices and to be as long as arrays[1] once a position reads the set;
    - 'range': arrays[0][i] for i in the slice [bounds[0], bounds[1]) (ONNX Slice clamping: CSR child lists);
    - 'edge_index': arrays[0][bounds[2]][e] for every e with arrays[0][bounds[1]][e] == bounds[0] (an edge list
      [2, E], the PyTorch Geometric convention; bounds[1] and bounds[2] are constant rows); a fourth bound 1 says
      the model reads row bounds[2] whole (`h[edge_index[0]]`, masked after): every value of it is checked to be a
      row index (ONNX Gather) once a position reads the set, not only the members'.
    - 'forest_parent': tree * N + u for every u in [0, N) with arrays[0][tree][u] == bounds[0], tree = bounds[1] (a
      padded forest's parent arrays [B, N]: each tree's children among its own rows of the flattened table).
    Sums count a member as often as it is listed, as the model's own sum does."""
    VARIES: ClassVar[bool] = True
    op: Literal[REDUCE_OPS]
    encoding: Literal[SET_ENCODINGS]
    arrays: tuple[Name, ...]
    bounds: tuple[IExpr, ...]
    body: RExpr
    empty: float
    width: Dim
    OPERANDS: ClassVar[tuple] = ("bounds", "body")

    MATERIALIZED: ClassVar[bool] = True
    STEP: ClassVar[str] = "set_reduce"
    MATERIALIZE_OPERANDS: ClassVar[bool] = False  # the body is computed per member inside the step

    def text(self, show) -> str:
        a, b = self.arrays, [show(x) for x in self.bounds]
        members = {"parent": lambda: f"u in 0..len({a[0]}) where {a[0]}[u] == {b[0]}",
                   "edges": lambda: f"u = {a[0]}[e] where {a[1]}[e] == {b[0]}",
                   "range": lambda: f"u in {a[0]}[{b[0]} : {b[1]}]",
                   "edge_index": lambda: f"u = {a[0]}[{b[2]}][e] where {a[0]}[{b[1]}][e] == {b[0]}",
                   "forest_parent": lambda: f"{b[1]} * len({a[0]}, 1) + u where {a[0]}[{b[1]}][u] == {b[0]}"}
        where = members[self.encoding]() if (len(a), len(b)) == {"parent": (1, 1), "edges": (2, len(b)),
                                                                   "range": (1, 2),
                                                                   "edge_index": (1, len(b)),
                                                                   "forest_parent": (1, 2)}[self.encoding] \
            and len(b) <= 4 else "?"
        return f"set_{self.op} {{{where}}} of {show(self.body)} (empty: {self.empty!r})"

    def verify(self, program):
        arity = {"parent": (1, 1), "edges": (2, 1), "range": (1, 2), "edge_index": (1, 3),
                 "forest_parent": (1, 2)}[self.encoding]
        whole = (self.encoding, len(self.bounds)) in (("edge_index", 4), ("edges", 2))
        check((len(self.arrays), len(self.bounds) - whole) == arity, f"set_{self.op}: {self.encoding} takes "
                                                                     f"{arity[0]} arrays and {arity[1]} bounds")
        check(not whole or self.bounds[-1] == IConst(1), f"set_{self.op}: the last bound of an edge list read whole "
                                                          "is 1")
        rank = 2 if self.encoding in ("edge_index", "forest_parent") else 1
        for name in self.arrays:
            decl = program.input(name)
            check(decl.kind == "array" and decl.dtype in INT_INPUT_DTYPES and decl.rank == rank,
                  f"set_{self.op}: {name} is not an integer array of rank {rank}")
        if self.encoding == "edge_index":
            check(all(isinstance(b, IConst) and 0 <= b.value < 2 ** 31 for b in self.bounds[1:]),
                  f"set_{self.op}: the rows of edge list {self.arrays[0]} are not constants")
        check(self.width == self.body.width, f"set_{self.op}: width {self.width}, body {self.body.width}")
        for e in walk([self.body], into=lambda e: isinstance(e, RExpr)):
            if isinstance(e, RExpr) and member_dependent(e):  # a product of each member: lifted by the passes
                check(not e.MATERIALIZED or (isinstance(e, MatMul) and e.rows == 1),
                      f"set_{self.op}: a {type(e).__name__} of each member")
            if isinstance(e, (ChildState, InputRow)) and isinstance(e.index, Member):
                continue
            if isinstance(e, RExpr):
                for k in operands(e):
                    if not isinstance(k, RExpr):
                        check(not any(isinstance(x, Member) for x in walk([k])),
                              f"set_{self.op}: a member used other than as a row index")

    def host_value(self):
        return HOST_SET, self.members()

    def members(self) -> tuple:
        """What the host prepares for each position: the set's encoding, arrays and bounds."""
        return (self.encoding, self.arrays, self.bounds)


def is_sequential(program) -> bool:
    """True when a position reads what the previous one computed (a carried vector): positions run in order."""
    return any(isinstance(e, PreviousRow) for case in program.cases for e in walk([x for _, x in case.writes]))


def member_dependent(e) -> bool:
    """True when e reads a set member's rows."""
    return any(isinstance(x, (ChildState, InputRow)) and isinstance(x.index, Member)
               for x in walk([e], into=lambda n: not isinstance(n, SetReduce)))


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
    state table [N, ...]), 'shape' (the int64 shape vector a state table the model fills with zeros is made from,
    `torch.zeros(N, H)`'s ConstantOfShape input: the node takes the shape, not the table, and the kernel fills the
    table itself; rank, lead and inner describe that table, `dtype` the vector). `per_node`: its leading dimension must equal the node count N (a TreeRec node input:
    the op's spec makes any other length an error, even where no node reads the missing rows). `dynamic_inner`:
    only a SetReduce reads it (its rows as vectors of the run's column count). `lead`: how many leading
    dimensions are dynamic and make its rows (a grid [R, C, F] has R * C rows of F; rank = lead + len(inner) for
    rank >= 1). `checked`: inner axes the model declares dynamic whose size the recursion proves where it reads
    a row (a product by a weight of that many rows): every such read checks the size first (a Guard), and a run
    whose size differs holds no rows of the array, so nothing reads it with the wrong stride."""
    name: Name
    kind: Literal["array", "init", "shape"]
    dtype: Literal["int64", "int32", "bool", "float32", "float64"]  # a float input is of the program's element type
    rank: Dim
    inner: tuple[Dim, ...] = ()  # static trailing dims (all but the first `lead`)
    per_node: bool = False
    dynamic_inner: bool = False  # a rank-2 integer array whose columns are dynamic too (an edge list [2, E]): inner ()
    zeros: bool = False  # an 'init' the model's own graph fills with zeros (torch.zeros): the kernel checks it
    lead: Dim = 1
    checked: tuple[Dim, ...] = ()
    rows: Optional[Dim] = None  # a static leading dimension the kernel checks (a carried value's initial value)


@dataclass(frozen=True)
class TableDecl:
    """A float32 table the recursion writes. 'state': [N, *inner] (or [R, C, *inner] with `lead` 2: row i * C + j
    is cell (i, j)), rows written at a case's target and read as child states. 'emit': [L, *inner], row p written
    at position p and never read (a Loop's scan output, a Scan's per-iteration output)."""
    name: Ident
    inner: tuple[Dim, ...]
    init: Optional[Name]  # input holding the initial table, or None: starts at zeros (state tables only)
    output: Name  # ONNX name of the output holding the final table ("" when nothing reads it)
    kind: Literal["state", "emit"] = "state"
    lead: Dim = 1  # a state table's leading dimensions, its init's (a grid [R, C, ...]: 2; its N = R * C rows)

    @property
    def width(self) -> int:
        return int(np.prod(self.inner, dtype=np.int64))


@dataclass(frozen=True)
class HostVar:
    """Integer state a loop carries that the host evaluates position by position, before any float work (a stack
    pointer moved by a data-dependent step, a queue of back-pointers): a scalar starting at `init`, or a table of
    `size` elements that all start at `init`. HostValue and HostElement read it; the cases' updates change it."""
    name: Ident
    init: IExpr
    size: Optional[IExpr] = None


@dataclass(frozen=True)
class HostUpdate:
    """A case's change to a host variable: the scalar `var` (index None) or its element `index` (ONNX ScatterND
    semantics: a negative index counts from the end, out of range is an error) becomes `value`. A case's updates are
    computed from the state before its position, then applied in order."""
    var: Ident
    index: Optional[IExpr]
    value: IExpr


@dataclass(frozen=True)
class Case:
    name: Text
    predicate: BExpr
    target: Optional[IExpr]  # the state row every state write of this case goes to (None: it writes no state)
    writes: tuple[tuple[Ident, RExpr], ...]
    updates: tuple[HostUpdate, ...] = ()

    def roots(self) -> list:
        """Every expression of the case: predicate, target, rows written, and its host updates' indices and values."""
        out = [self.predicate] + ([self.target] if self.target is not None else []) + [x for _, x in self.writes]
        for u in self.updates:
            out += ([u.index] if u.index is not None else []) + [u.value]
        return out

    def with_roots(self, roots) -> "Case":
        """The case with its expressions replaced, in `roots()` order."""
        it = iter(roots)
        predicate = next(it)
        target = next(it) if self.target is not None else None
        writes = tuple((t, next(it)) for t, _ in self.writes)
        updates = tuple(HostUpdate(u.var, next(it) if u.index is not None else None, next(it)) for u in self.updates)
        return Case(self.name, predicate, target, writes, updates)


FINAL_KINDS = ("last", "reduce", "sequence")
FINAL_OPS = ("none", "add", "mul", "max", "min")


@dataclass(frozen=True)
class Final:
    """An output of the converted region computed after the kernel from an emit table: 'last', the loop's final
    value of a carried vector (the table's last row, or `init` when the loop ran no iteration); 'reduce', a value the
    loop reduces into (a running max or sum): `op` over `init` and every row of the table; 'sequence', a list the
    loop appends one row to per iteration (from an empty list: `init` is unused). The converted graph computes it
    with standard ONNX ops."""
    output: Name
    kind: Literal[FINAL_KINDS]
    table: Ident
    init: Name
    op: Literal[FINAL_OPS] = "none"


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
    constants: Constants = field(default_factory=dict)  # name -> np.ndarray (of `element`)
    trip: Optional[IExpr] = None
    rows_from: Optional[Name] = None
    labels: tuple[tuple[Ident, Name], ...] = ()  # (constant, the ONNX name it came from): messages in user terms
    finals: tuple[Final, ...] = ()
    host_vars: tuple[HostVar, ...] = ()
    # The element type of its tables, float inputs, constants and math (a model written with `model.double()`:
    # float64). Serialized only when not float32, so a float32 program's document is what it always was.
    element: Element = field(default="float32", metadata={"omit_default": True})

    def host_var(self, name: str) -> HostVar:
        for var in self.host_vars:
            if var.name == name:
                return var
        raise KeyError(name)

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
        roots += case.roots()
    for e in walk(roots):
        found = e.arrays if isinstance(e, SetReduce) else (e.init,) if isinstance(e, PreviousRow) else \
            (getattr(e, "array", None),) if isinstance(e, (Load, Length, InputRow, InputProjection)) else ()
        for name in found:
            if name is not None and name not in names:
                names.append(name)
    return names

"""The abstract values of the frontend: what an ONNX value means inside a recursion.

- `Known`: a constant (weights, and the shape arithmetic exporters leave in loop bodies).
- `Sym`: a per-position integer or bool tensor of static shape; each element is an IR index expression (ints)
  or predicate (bools). Node ids, child ids, leaf tests, lengths such as N, the loop counter.
- `Row`: a per-position float32 tensor of static shape (an IR row expression, row-major); `boolean` marks a 0/1
  row computed from float values (a comparison of rows).
- `Table`: a state table (a loop-carried [N, ...] float tensor, or a grid [R, C, ...]), with the rows written so far
  at this position.
- `TableSlice`: rows [start, stop) of a table (the pieces of a `torch.cat` write).
- `Array`: a runtime tensor from outside the recursion (structure arrays, node inputs, scalars).
- `Partial`: a table or runtime tensor indexed at some of its leading dimensions, or at a row whose size is only
  known at run time (h[i] of a grid; x[v] of an input whose feature dimension the model declares dynamic).
- `Flat`: a grid table or runtime tensor with its leading dimensions flattened into one (TorchScript's form of
  h[i, j] with tensor indices: Flatten, then row i * C + j).
- `Choice`: the outputs of an `If` on a structure predicate, one value per branch (becomes cases).
- `Seq`: an ONNX sequence of values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..ir import nodes as ir


class Refusal(Exception):
    """The frontend cannot prove what a node means. `where` is the chain of nodes (outermost first) the refusal
    happened in; `hint` says how to rewrite the model so it converts, where one is known."""

    def __init__(self, message: str, hint: Optional[str] = None, where: tuple = ()):
        super().__init__(message)
        self.message, self.hint, self.where = message, hint, tuple(where)

    def at(self, node_label: str) -> "Refusal":
        return Refusal(self.message, self.hint, (node_label,) + self.where)

    def __str__(self):
        prefix = " > ".join(self.where)
        return f"{prefix}: {self.message}" if prefix else self.message


class Known:
    """A constant. `source`: the ONNX name it was read from (an initializer), for messages in the user's terms."""
    __slots__ = ("value", "source")

    def __init__(self, value, source=None):
        self.value = np.asarray(value)
        self.source = source

    def __eq__(self, other):
        return (isinstance(other, Known) and self.value.dtype == other.value.dtype
                and self.value.shape == other.value.shape and np.array_equal(self.value, other.value, equal_nan=True)
                if self.value.dtype.kind in "fc" else
                isinstance(other, Known) and self.value.dtype == other.value.dtype
                and self.value.shape == other.value.shape and np.array_equal(self.value, other.value))

    def __hash__(self):
        return hash((self.value.dtype.str, self.value.shape, self.value.tobytes()))

    def __repr__(self):
        return f"Known({self.value.dtype}{list(self.value.shape)})"


class Sym:
    """elems: an object ndarray of IExpr (dtype an integer type) or BExpr (dtype 'bool')."""
    __slots__ = ("elems", "dtype")

    def __init__(self, elems, dtype: str):
        self.elems = elems if isinstance(elems, np.ndarray) and elems.dtype == object else _object_array(elems)
        self.dtype = dtype

    @property
    def shape(self):
        return self.elems.shape

    @property
    def is_bool(self):
        return self.dtype == "bool"

    def scalar(self):
        """The one element (for a shape with one element)."""
        if self.elems.size != 1:
            raise Refusal(f"expected one structure value, got a tensor of shape {list(self.shape)}")
        return self.elems.reshape(-1)[0]

    def __eq__(self, other):
        return (isinstance(other, Sym) and self.dtype == other.dtype and self.shape == other.shape
                and all(a == b for a, b in zip(self.elems.flat, other.elems.flat)))

    def __hash__(self):
        return hash((self.dtype, self.shape, tuple(self.elems.flat)))

    def __repr__(self):
        return f"Sym({self.dtype}{list(self.shape)})"


def _object_array(items) -> np.ndarray:
    if isinstance(items, (ir.IExpr, ir.BExpr)):
        out = np.empty((), dtype=object)
        out[()] = items
        return out
    items = np.asarray(items, dtype=object)
    return items


def sym_scalar(e, dtype: Optional[str] = None) -> Sym:
    out = np.empty((), dtype=object)
    out[()] = e
    return Sym(out, dtype or ("bool" if isinstance(e, ir.BExpr) else "int64"))


@dataclass(frozen=True)
class Row:
    expr: ir.RExpr
    shape: tuple
    boolean: bool = False

    def __post_init__(self):
        size = int(np.prod(self.shape, dtype=np.int64))
        if size != self.expr.width:
            raise ValueError(f"row of shape {self.shape} with an expression of width {self.expr.width}")


@dataclass(frozen=True)
class Table:
    name: str
    inner: tuple
    writes: tuple = ()  # ((target IExpr, RExpr), ...) in program order
    lead: int = 1  # leading dimensions (a grid [R, C, ...]: 2); its rows are then flat, already wrapped: i * C + j

    @property
    def width(self) -> int:
        return int(np.prod(self.inner, dtype=np.int64))


@dataclass(frozen=True)
class TableSlice:
    table: Table
    start: ir.IExpr
    stop: ir.IExpr


@dataclass(frozen=True)
class Array:
    name: str
    dtype: Optional[str]
    shape: Optional[tuple]  # dims (int or None) or None if the rank is unknown
    fill: Optional[float] = None  # a ConstantOfShape: every element is this value
    view: Optional[str] = None  # read as this dtype (a Cast between integer and bool types inside the recursion)
    columns: Optional[np.ndarray] = None  # a Gather on axis 1 at constant indices: the columns kept (shape = index)
    base_shape: Optional[tuple] = None  # with columns: the shape of the whole array
    lead: int = 1  # how many leading dimensions the recursion indexes to read a row (a grid [R, C, F]: 2)
    checked: tuple = ()  # axes declared dynamic whose size a product proves where a row is read (checked there)

    def __eq__(self, other):
        return (isinstance(other, Array) and (self.name, self.dtype, self.shape, self.fill, self.view, self.lead,
                                              self.checked) ==
                (other.name, other.dtype, other.shape, other.fill, other.view, other.lead, other.checked) and
                (self.columns is None) == (other.columns is None) and
                (self.columns is None or np.array_equal(self.columns, other.columns)))

    def __hash__(self):
        return hash((self.name, self.view))

    @property
    def read_dtype(self) -> Optional[str]:
        return self.view or self.dtype


@dataclass(frozen=True)
class Partial:
    """base[prefix...]: a state table or runtime tensor (`base`) indexed at `prefix` (structure indices, as the
    model wrote them) along its leading dimensions; `shape`: the dimensions left (None where only the run knows
    them). It becomes a row once every dynamic dimension is indexed or proved (a product by a weight)."""
    base: object
    prefix: tuple
    shape: tuple


@dataclass(frozen=True)
class Flat:
    """`base` (a grid table or runtime tensor) with its first `lead` dimensions flattened into one (ONNX Flatten):
    row e is the base's row at e with Gather semantics over all its rows; `shape`: the dimensions after it (None
    where only the run knows them)."""
    base: object
    lead: int
    shape: tuple


@dataclass(frozen=True)
class Choice:
    pred: ir.BExpr
    then: object
    other: object


@dataclass(frozen=True)
class Seq:
    items: tuple


def describe(v) -> str:
    if isinstance(v, Known):
        return f"constant {v.value.dtype}{list(v.value.shape)}"
    if isinstance(v, Row):
        return f"{'boolean ' if v.boolean else ''}row{list(v.shape)}"
    if isinstance(v, Sym):
        return f"structure {'predicate' if v.is_bool else 'index'}{list(v.shape) if v.shape else ''}"
    if isinstance(v, Table):
        return f"state table {v.name}"
    if isinstance(v, TableSlice):
        return f"a slice of state table {v.table.name}"
    if isinstance(v, Array):
        return f"runtime tensor {v.name}"
    if isinstance(v, Flat):
        return f"the rows of {describe(v.base)}, its first {v.lead} dimensions flattened"
    if isinstance(v, Partial):
        dims = ", ".join("?" if d is None else str(d) for d in v.shape)
        return f"a part [{dims}] of {describe(v.base)} (? known only at run time)"
    if isinstance(v, Choice):
        return "a value chosen by an If"
    if isinstance(v, Seq):
        return f"a sequence of {len(v.items)}"
    if v is None:
        return "a missing input"
    return type(v).__name__


def shape_of(v) -> Optional[tuple]:
    """The static shape the ONNX graph sees, or None."""
    if isinstance(v, Known):
        return tuple(v.value.shape)
    if isinstance(v, (Row, Sym)):
        return tuple(v.shape)
    if isinstance(v, Array) and v.shape is not None and all(isinstance(d, int) for d in v.shape):
        return tuple(v.shape)
    return None


INT_DTYPES = ("int64", "int32", "int16", "int8", "uint8", "uint16", "uint32", "uint64")

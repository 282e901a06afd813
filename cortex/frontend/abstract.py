"""Abstract interpretation of ONNX graphs into Cortex IR values.

Each ONNX value is given one abstract meaning; an op handler either proves what its output means from what its
inputs mean, or raises `Refusal` with the reason. Meanings:

- `Known`: a constant (weights, and the shape arithmetic exporters leave in loop bodies, folded here);
- `ShapeVal`: an int vector with some entries unknown (the dynamic node count N);
- `Array`: a runtime tensor from outside the recursion (structure arrays, node inputs);
- `Index` / `Pred`: per-position int64 / bool scalars over the structure;
- `Row`: a per-position float32 row (an IR row expression) with the shape the ONNX graph sees;
- `Table`: a state table, with the rows written at this position;
- `Choice`: the outputs of an `If`, one value per branch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..ir import nodes as ir


class Refusal(Exception):
    """The frontend cannot prove what a node means; the message says which node and why."""


@dataclass(frozen=True)
class Known:
    value: np.ndarray


@dataclass(frozen=True)
class ShapeVal:
    dims: tuple  # ints or None (unknown)
    scalar: bool = False


@dataclass(frozen=True)
class Array:
    name: str
    dtype: Optional[str]
    shape: Optional[tuple]  # dims (int or None) or None if rank unknown


@dataclass(frozen=True)
class Index:
    expr: ir.IExpr
    shape: tuple = ()


@dataclass(frozen=True)
class Pred:
    expr: ir.BExpr
    shape: tuple = ()


@dataclass(frozen=True)
class Row:
    expr: ir.RExpr
    shape: tuple


@dataclass(frozen=True)
class Table:
    name: str
    width: int
    writes: tuple = ()  # ((target IExpr, Row expr), ...)


@dataclass(frozen=True)
class IndexVec:
    """Several structure indices in a 1-D tensor, e.g. torch.stack([left[v], right[v]])."""
    exprs: tuple


@dataclass(frozen=True)
class PredVec:
    """Several structure predicates in a 1-D tensor (a test on each child)."""
    exprs: tuple


@dataclass(frozen=True)
class RowStack:
    """Rows gathered at several indices: a [k, width] tensor, e.g. h[torch.stack([l, r])]. `shape` is the
    visible shape ([k, width], or [k] for a stack of scalars)."""
    rows: tuple  # RExpr, one per gathered index
    width: int
    shape: tuple = None

    def __post_init__(self):
        if self.shape is None:
            object.__setattr__(self, "shape", (len(self.rows), self.width))

    def element(self, i):
        return Row(self.rows[i], tuple(self.shape[1:]))


@dataclass(frozen=True)
class RowSeq:
    """A sequence of rows (SplitToSequence)."""
    rows: tuple  # Row


@dataclass(frozen=True)
class Choice:
    pred: ir.BExpr
    then: object
    other: object


ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32",
               onnx.TensorProto.BOOL: "bool", onnx.TensorProto.DOUBLE: "float64"}


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _row_shape_ok(shape) -> bool:
    return len(shape) >= 1 and all(d == 1 for d in shape[:-1])


def _prod(shape):
    return int(np.prod(shape)) if shape else 1


@dataclass
class Interpreter:
    """Interprets a body graph. `outer` resolves names from enclosing scopes; `constants` collects the
    constant tensors the IR refers to (name -> array); `node_name` is the node being interpreted (errors)."""
    outer: object  # callable(name) -> value
    constants: dict = field(default_factory=dict)
    _const_ids: dict = field(default_factory=dict)
    arrays: dict = field(default_factory=dict)  # runtime tensors the IR reads: name -> Array

    # ---- scopes --------------------------------------------------------------------------------

    def run_graph(self, graph: onnx.GraphProto, bindings: dict) -> list:
        env = dict(bindings)
        for init in graph.initializer:
            env[init.name] = Known(numpy_helper.to_array(init))

        def lookup(name):
            if name in env:
                return env[name]
            return self.outer(name)

        for node in graph.node:
            args = [lookup(n) if n else None for n in node.input]
            try:
                outs = self.eval_node(node, args, lookup)
            except Refusal as r:
                msg = str(r)
                if not msg.startswith("node "):
                    msg = f"node {node.name or node.op_type} ({node.op_type}): {msg}"
                raise Refusal(msg) from None
            for name, value in zip(node.output, outs):
                if name:
                    env[name] = value
        return [lookup(o.name) for o in graph.output]

    # ---- constants -----------------------------------------------------------------------------

    def const_name(self, value: np.ndarray, hint: str) -> str:
        value = np.ascontiguousarray(value, dtype=np.float32)
        key = (value.shape, value.tobytes())
        if key not in self._const_ids:
            name = f"{hint}_{len(self._const_ids)}"
            self._const_ids[key] = name
            self.constants[name] = value
        return self._const_ids[key]

    def as_row(self, v, width_hint: Optional[int] = None) -> Row:
        """A float operand of elementwise math as a row: rows stay, constant vectors become ConstVec."""
        if isinstance(v, Row):
            return v
        if isinstance(v, Known) and v.value.dtype.kind == "f":
            arr = np.asarray(v.value, dtype=np.float32)
            if arr.size == 1:
                return Row(ir.Scalar(float(arr.reshape(-1)[0])), arr.shape)
            if _row_shape_ok(arr.shape):
                return Row(ir.ConstVec(self.const_name(arr.reshape(-1), "vec"), arr.size), arr.shape)
        raise Refusal(f"operand is not a per-node row or a constant vector: {describe(v)}")

    # ---- dispatch ------------------------------------------------------------------------------

    def eval_node(self, node, args, lookup):
        if node.domain not in ("", "ai.onnx"):
            raise Refusal(f"op {node.domain}.{node.op_type} is not supported inside a recursion")
        if node.op_type == "Constant":
            return [Known(_constant_value(node))]
        choice = next((a for a in args if isinstance(a, Choice)), None)
        if choice is not None:
            # A value chosen by an If flows on: evaluate the node once per branch (path splitting).
            then_args = [a.then if isinstance(a, Choice) and a.pred == choice.pred else a for a in args]
            other_args = [a.other if isinstance(a, Choice) and a.pred == choice.pred else a for a in args]
            then_out = self.eval_node(node, then_args, lookup)
            other_out = self.eval_node(node, other_args, lookup)
            return [t if t == o else Choice(choice.pred, t, o) for t, o in zip(then_out, other_out)]
        if node.op_type in STACK_SPLIT_OPS and any(isinstance(a, (IndexVec, PredVec, RowStack)) for a in args):
            return self._split_stacks(node, args, lookup)
        if node.op_type not in ("If", "Loop", "Scan") and args and all(isinstance(a, Known) or a is None for a in args):
            return [Known(v) for v in fold_node(node, [a.value if a else None for a in args])]
        handler = getattr(self, "op_" + node.op_type, None)
        if handler is None:
            raise Refusal(f"op {node.op_type} is not supported here")
        out = handler(node, args, lookup) if node.op_type == "If" else handler(node, *args)
        return out if isinstance(out, list) else [out]

    def _split_stacks(self, node, args, lookup):
        """An elementwise op over per-child stacks: evaluate it once per child, then stack the results."""
        sizes = {len(_stack_items(a)) for a in args if isinstance(a, (IndexVec, PredVec, RowStack))}
        if len(sizes) != 1:
            raise Refusal("elementwise op over stacks of different lengths")
        k = sizes.pop()
        stack_rank = max(len(_visible_shape(a)) for a in args if isinstance(a, (IndexVec, PredVec, RowStack)))
        for a in args:
            if a is not None and not isinstance(a, (IndexVec, PredVec, RowStack)):
                shape = _visible_shape(a) if not isinstance(a, Known) else a.value.shape
                per_child_const = isinstance(a, Known) and len(shape) == stack_rank and shape[0] in (1, k)
                if shape is not None and len(shape) >= stack_rank and not per_child_const:
                    raise Refusal(f"{node.op_type} of a per-child stack with {describe(a)}")
        if node.op_type in ("Unsqueeze", "Squeeze"):
            axes = self._axes(node, args[1] if len(args) > 1 else None)
            if any(ax % (stack_rank + (node.op_type == "Unsqueeze") * len(axes)) == 0 for ax in axes):
                raise Refusal(f"{node.op_type} on the children axis")
            inner = helper.make_node(node.op_type, ["x", "axes"], ["y"])
            shifted = Known(np.array([ax - 1 if ax > 0 else ax for ax in axes], dtype=np.int64))
            outs = [self.eval_node(inner, [_stack_items(args[0])[i], shifted], lookup)[0] for i in range(k)]
            return [_restack(outs)]
        per_child = []
        for i in range(k):
            child_args = [_stack_items(a)[i] if isinstance(a, (IndexVec, PredVec, RowStack)) else
                          (Known(a.value[i if a.value.shape[0] == k else 0])
                           if isinstance(a, Known) and a.value.ndim == stack_rank else a) for a in args]
            per_child.append(self.eval_node(node, child_args, lookup))
        return [_restack([outs[j] for outs in per_child]) for j in range(len(node.output))]

    def op_ReduceSum(self, node, x, axes=None):
        return self._reduce_children(node, x, axes, "add")

    def op_ReduceMax(self, node, x, axes=None):
        return self._reduce_children(node, x, axes, "max")

    def _reduce_children(self, node, x, axes_input, op):
        if isinstance(x, IndexVec):  # e.g. the number of present children
            acc = x.exprs[0]
            for e in x.exprs[1:]:
                acc = ir.IBinary(op, acc, e)
            return Index(acc, (1,) if _attr(node, "keepdims", 1) else ())
        if not isinstance(x, RowStack):
            raise Refusal(f"{node.op_type} of {describe(x)}")
        axes = self._axes(node, axes_input) or list(range(len(x.shape)))
        if [a % len(x.shape) for a in axes] != [0]:
            raise Refusal(f"{node.op_type} over axes {axes}: only the children axis is supported")
        acc = x.rows[0]
        for r in x.rows[1:]:
            acc = ir.binary(op, acc, r)
        keep = _attr(node, "keepdims", 1)
        return Row(acc, ((1,) if keep else ()) + tuple(x.shape[1:]))

    def op_Where(self, node, cond, a, b):
        if isinstance(cond, Known):
            return a if bool(cond.value.reshape(-1)[0]) else b
        if not isinstance(cond, Pred):
            raise Refusal(f"Where on {describe(cond)}")
        if any(isinstance(x, Index) for x in (a, b)):
            ia, ib = self._as_index(a), self._as_index(b)
            return Index(ir.ISelect(cond.expr, ia[0], ib[0]), max(ia[1], ib[1], cond.shape, key=len))
        ra, rb = self.as_row(a), self.as_row(b)
        shape = tuple(np.broadcast_shapes(ra.shape, rb.shape, cond.shape))
        width = max(ra.expr.width, rb.expr.width)
        return Row(ir.Select(cond.expr, ra.expr, rb.expr, width), shape)

    def _as_index(self, v):
        if isinstance(v, Index):
            return v.expr, v.shape
        if isinstance(v, Known) and v.value.size == 1 and v.value.dtype.kind in "iu":
            return ir.IConst(int(v.value.reshape(-1)[0])), v.value.shape
        raise Refusal(f"index arithmetic on {describe(v)}")

    def op_Clip(self, node, x, low=None, high=None):
        if not isinstance(x, Index):
            raise Refusal(f"Clip of {describe(x)}")
        out = x
        if low is not None:
            out = self._index_arith("max", out, low)
        if high is not None:
            out = self._index_arith("min", out, high)
        return out

    # ---- shape arithmetic ----------------------------------------------------------------------

    def op_Shape(self, node, x):
        start, end = _attr(node, "start", 0), _attr(node, "end", None)
        if isinstance(x, (Row, Index, Pred)):
            dims = tuple(x.shape)
        elif isinstance(x, Table):
            dims = (ir.Length(None), x.width)
        elif isinstance(x, (RowStack, IndexVec, PredVec)):
            dims = _visible_shape(x)
        elif isinstance(x, Array) and x.shape is not None:
            dims = (ir.Length(x.name),) + tuple(x.shape[1:]) if x.shape and x.shape[0] is None else tuple(x.shape)
        else:
            raise Refusal(f"shape of {describe(x)} is unknown")
        dims = dims[start:end]
        if all(isinstance(d, int) for d in dims):
            return Known(np.array(dims, dtype=np.int64))
        return ShapeVal(dims)

    def op_Size(self, node, x):
        shape = self.op_Shape(node, x)
        if isinstance(shape, Known):
            return Known(np.array(int(np.prod(shape.value)), dtype=np.int64))
        return ShapeVal((None,), scalar=True)

    def op_ConstantOfShape(self, node, shape):
        if isinstance(shape, ShapeVal) and not shape.scalar:
            value = _attr(node, "value")
            dtype = ONNX_DTYPES.get(value.data_type, None) if value is not None else "float32"
            return Array(node.output[0], dtype, tuple(d if isinstance(d, int) else None for d in shape.dims))
        raise Refusal("ConstantOfShape of an unknown shape")

    # ---- indexing ------------------------------------------------------------------------------

    def op_Gather(self, node, data, indices):
        axis = _attr(node, "axis", 0)
        if isinstance(data, ShapeVal) and isinstance(indices, Known) and indices.value.ndim <= 1:
            picked = tuple(data.dims[int(i)] for i in np.atleast_1d(indices.value))
            scalar = indices.value.ndim == 0
            if all(isinstance(d, int) for d in picked):
                arr = np.array(picked, dtype=np.int64)
                return Known(arr[0] if scalar else arr)
            if len(picked) == 1 and isinstance(picked[0], ir.IExpr):
                return Index(picked[0], () if scalar else (1,))  # a runtime length, e.g. N
            return ShapeVal(picked, scalar=scalar)
        if axis != 0:
            raise Refusal(f"Gather on axis {axis}")
        if isinstance(data, RowStack) and isinstance(indices, Known) and indices.value.ndim <= 1:
            picked = [data.rows[int(i)] for i in np.atleast_1d(indices.value)]
            if indices.value.ndim == 0:
                return Row(picked[0], (data.width,))
            return RowStack(tuple(picked), data.width)
        if isinstance(indices, IndexVec):
            return self._gather_many(data, indices)
        if (isinstance(data, Row) and len(data.shape) >= 2 and data.shape[0] == 1 and isinstance(indices, Known)
                and indices.value.size == 1 and int(indices.value.reshape(-1)[0]) in (0, -1)):
            return Row(data.expr, tuple(indices.value.shape) + tuple(data.shape[1:]))  # x[0] of a [1, ...] row
        if (isinstance(indices, Known) and indices.value.size == 1 and indices.value.dtype.kind in "iu"
                and isinstance(data, (Array, Table))):
            indices = Index(ir.IConst(int(indices.value.reshape(-1)[0])), tuple(indices.value.shape))
        if isinstance(indices, Row):
            raise Refusal(f"Gather at an index computed from state values (data-dependent), not from the structure")
        if not isinstance(indices, Index) or _prod(indices.shape) != 1:
            raise Refusal(f"Gather with indices {describe(indices)}: expected one structure index")
        idx = indices.expr
        if isinstance(data, Array):
            self.arrays[data.name] = data
            if data.shape is None:
                raise Refusal(f"Gather from {data.name} of unknown rank")
            if data.dtype == "int64" and len(data.shape) == 1:
                return Index(ir.Load(data.name, idx), tuple(indices.shape))
            if data.dtype == "int64" and len(data.shape) == 2 and data.shape[1] is not None and indices.shape == ():
                return IndexVec(tuple(ir.Load(data.name, idx, column=k) for k in range(data.shape[1])))
            if data.dtype == "float32" and len(data.shape) == 2 and data.shape[1] is not None:
                width = data.shape[1]
                return Row(ir.InputRow(data.name, idx, width), tuple(indices.shape) + (width,))
            raise Refusal(f"Gather from {data.name} ({data.dtype}, shape {data.shape})")
        if isinstance(data, Known) and data.value.ndim == 2 and data.value.dtype.kind == "f":
            width = data.value.shape[1]
            name = self.const_name(data.value, "table")
            return Row(ir.ConstRow(name, idx, width), tuple(indices.shape) + (width,))
        if isinstance(data, Table):
            if data.writes:
                raise Refusal(f"reads state {data.name} after writing it in the same step")
            return Row(ir.ChildState(data.name, idx, False, data.width), tuple(indices.shape) + (data.width,))
        if isinstance(data, Row) and len(data.shape) == 2 and data.shape[0] == 1 and isinstance(indices, Index):
            raise Refusal("Gather of a row by a structure index")
        raise Refusal(f"Gather from {describe(data)}")

    def _gather_many(self, data, indices: "IndexVec"):
        """Gather at several structure indices: one gather per index, stacked."""
        singles = [self.op_Gather_one(data, Index(e)) for e in indices.exprs]
        if all(isinstance(x, Index) for x in singles):
            return IndexVec(tuple(x.expr for x in singles))
        if all(isinstance(x, Row) for x in singles):
            return RowStack(tuple(x.expr for x in singles), singles[0].expr.width)
        raise Refusal(f"Gather of {describe(data)} at several indices")

    def op_Gather_one(self, data, index):
        return self.op_Gather(_GATHER0, data, index)

    def op_ScatterElements(self, node, data, indices, updates):
        """ScatterElements(table, indices, row) with axis 0 and every index the same structure index: a row
        write (torch's scatter_ / index_copy_ style)."""
        if _attr(node, "reduction", "none") != "none":
            raise Refusal("ScatterElements with a reduction")
        if not isinstance(data, Table):
            raise Refusal(f"ScatterElements into {describe(data)}, not a state table")
        if _attr(node, "axis", 0) != 0 or not isinstance(indices, Index):
            raise Refusal("ScatterElements other than one row along axis 0")
        row = self.as_row(updates)
        if tuple(indices.shape) != tuple(row.shape) or len(row.shape) != 2 or row.shape != (1, data.width):
            raise Refusal(f"ScatterElements of indices {indices.shape} and updates {row.shape}: not one whole row")
        return Table(data.name, data.width, data.writes + ((indices.expr, row.expr),))

    def op_LSTM(self, node, x, w, r, b=None, seq_lens=None, h0=None, c0=None, peepholes=None):
        """One step of ONNX LSTM (seq_len 1, batch 1, forward, default activations) on per-node rows."""
        attrs = {a.name for a in node.attribute} - {"hidden_size", "direction", "layout"}
        if attrs or _attr(node, "direction", b"forward") not in (b"forward", "forward") or _attr(node, "layout", 0):
            raise Refusal("LSTM with non-default activations, clip, direction or layout")
        if peepholes is not None or seq_lens is not None:
            raise Refusal("LSTM with peepholes or sequence lengths")
        if not all(isinstance(t, Known) for t in (w, r)) or (b is not None and not isinstance(b, Known)):
            raise Refusal("LSTM weights are not constant")
        hidden = int(_attr(node, "hidden_size"))
        xr = self.as_row(x)
        if _prod(xr.shape) != xr.expr.width or xr.shape[:-1] != (1, 1):
            raise Refusal(f"LSTM input of shape {xr.shape}: expected one step of one sequence")
        gates = self.op_MatMul(node, Row(xr.expr, (xr.expr.width,)), Known(np.asarray(w.value[0]).T))
        if h0 is not None:
            gates = self._binary("add", gates, self.op_MatMul(node, self._flat(h0), Known(np.asarray(r.value[0]).T)))
        if b is not None:
            bias = np.asarray(b.value[0], dtype=np.float32)
            gates = self._binary("add", gates, Known(bias[:4 * hidden] + bias[4 * hidden:]))
        g = gates.expr
        i, o, f, cand = (ir.slice_row(g, k * hidden, (k + 1) * hidden) for k in range(4))  # ONNX order: i o f c
        c = ir.binary("mul", ir.unary("sigmoid", i), ir.unary("tanh", cand))
        if c0 is not None:
            c = ir.binary("add", ir.binary("mul", ir.unary("sigmoid", f), self._flat(c0).expr), c)
        h = ir.binary("mul", ir.unary("sigmoid", o), ir.unary("tanh", c))
        return [Row(h, (1, 1, 1, hidden)), Row(h, (1, 1, hidden)), Row(c, (1, 1, hidden))]

    def _flat(self, v):
        r = self.as_row(v)
        return Row(r.expr, (r.expr.width,))

    def op_ScatterND(self, node, data, indices, updates):
        if _attr(node, "reduction", "none") != "none":
            raise Refusal("ScatterND with a reduction")
        if not isinstance(data, Table):
            raise Refusal(f"ScatterND into {describe(data)}, not a state table")
        if isinstance(indices, IndexVec) and len(indices.exprs) == 1:
            indices = Index(indices.exprs[0], (1,))
        if not isinstance(indices, Index) or not indices.shape or indices.shape[-1] != 1 or _prod(indices.shape) != 1:
            raise Refusal(f"ScatterND indices {describe(indices)}: expected one row index")
        row = self.as_row(updates)
        if _prod(row.shape) != data.width or len(row.shape) != len(indices.shape) - 1 + 1:
            raise Refusal(f"ScatterND update of shape {row.shape} into rows of width {data.width}")
        return Table(data.name, data.width, data.writes + ((indices.expr, row.expr),))

    # ---- structure predicates ------------------------------------------------------------------

    def _compare(self, op, a, b):
        def as_index(v):
            if isinstance(v, Index):
                return v.expr, v.shape
            if isinstance(v, Row) and _prod(v.shape) == 1 and _mask_count(v.expr) is not None:
                return _mask_count(v.expr), v.shape  # a float count of structure tests, compared exactly
            if isinstance(v, Known) and v.value.size == 1 and v.value.dtype.kind in "iu":
                return ir.IConst(int(v.value.reshape(-1)[0])), v.value.shape
            if (isinstance(v, Known) and v.value.size == 1 and v.value.dtype.kind == "f"
                    and float(v.value.reshape(-1)[0]).is_integer()):
                return ir.IConst(int(v.value.reshape(-1)[0])), v.value.shape  # against a count of tests
            raise Refusal(f"comparison of {describe(v)}")

        (ea, sa), (eb, sb) = as_index(a), as_index(b)
        return Pred(ir.Compare(op, ea, eb), sa if len(sa) >= len(sb) else sb)

    def op_Less(self, node, a, b):
        return self._compare("lt", a, b)

    def op_LessOrEqual(self, node, a, b):
        return self._compare("le", a, b)

    def op_Greater(self, node, a, b):
        return self._compare("gt", a, b)

    def op_GreaterOrEqual(self, node, a, b):
        return self._compare("ge", a, b)

    def op_Equal(self, node, a, b):
        return self._compare("eq", a, b)

    def op_Not(self, node, a):
        if isinstance(a, Pred):
            return Pred(ir.BNot(a.expr), a.shape)
        raise Refusal(f"Not of {describe(a)}")

    def op_And(self, node, a, b):
        return self._logic(ir.BAnd, a, b)

    def op_Or(self, node, a, b):
        return self._logic(ir.BOr, a, b)

    def _logic(self, cls, a, b):
        def as_pred(v):
            if isinstance(v, Pred):
                return v.expr
            if isinstance(v, Known) and v.value.size == 1:
                return ir.BConst(bool(v.value.reshape(-1)[0]))
            raise Refusal(f"logic on {describe(v)}")

        return Pred(cls(as_pred(a), as_pred(b)))

    def op_Cast(self, node, x):
        to = _attr(node, "to")
        if isinstance(x, Pred) and to == onnx.TensorProto.BOOL:
            return x
        if isinstance(x, Pred) and to == onnx.TensorProto.FLOAT:
            return Row(ir.Mask(x.expr), tuple(x.shape))
        if isinstance(x, Pred) and to in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            return Index(ir.ISelect(x.expr, ir.IConst(1), ir.IConst(0)), tuple(x.shape))
        if isinstance(x, Index) and to == onnx.TensorProto.INT64:
            return x
        if isinstance(x, Row) and to == onnx.TensorProto.FLOAT:
            return x
        if isinstance(x, ShapeVal) and to == onnx.TensorProto.INT64:
            return x
        raise Refusal(f"Cast of {describe(x)} to {onnx.TensorProto.DataType.Name(to)}")

    # ---- control flow --------------------------------------------------------------------------

    def op_If(self, node, args, lookup):
        cond = args[0]
        then_g, else_g = _attr(node, "then_branch"), _attr(node, "else_branch")
        if isinstance(cond, Known):
            return self.run_graph(then_g if bool(cond.value.reshape(-1)[0]) else else_g, {})
        if not isinstance(cond, Pred) or _prod(cond.shape) != 1:
            raise Refusal(f"If on {describe(cond)}: expected a structure predicate")
        sub = Interpreter(outer=lookup, constants=self.constants, _const_ids=self._const_ids, arrays=self.arrays)
        then_out = sub.run_graph(then_g, {})
        else_out = sub.run_graph(else_g, {})
        return [t if t == e else Choice(cond.expr, t, e) for t, e in zip(then_out, else_out)]

    # ---- row math ------------------------------------------------------------------------------

    def _binary(self, op, a, b):
        if isinstance(a, (Index, ShapeVal)) or isinstance(b, (Index, ShapeVal)):
            return self._index_arith(op, a, b)
        ra, rb = self.as_row(a), self.as_row(b)
        shape = tuple(np.broadcast_shapes(ra.shape, rb.shape))
        flat = ra.shape == rb.shape or 1 in (_prod(ra.shape), _prod(rb.shape)) or _row_shape_ok(shape)
        if not flat or _prod(shape) != max(ra.expr.width, rb.expr.width):
            raise Refusal(f"elementwise {op} of shapes {ra.shape} and {rb.shape} is not flat elementwise")
        try:
            return Row(ir.binary(op, ra.expr, rb.expr), shape)
        except ValueError as e:
            raise Refusal(str(e)) from None

    def _index_arith(self, op, a, b):
        if op not in ("add", "sub", "mul", "max", "min"):
            raise Refusal(f"{op} on structure indices")
        (ea, sa), (eb, sb) = self._as_index(a), self._as_index(b)
        return Index(ir.IBinary(op, ea, eb), sa if len(sa) >= len(sb) else sb)

    def op_Add(self, node, a, b):
        return self._binary("add", a, b)

    def op_Sub(self, node, a, b):
        return self._binary("sub", a, b)

    def op_Mul(self, node, a, b):
        return self._binary("mul", a, b)

    def op_Div(self, node, a, b):
        return self._binary("div", a, b)

    def op_Max(self, node, *xs):
        return self._reduce_variadic("max", xs)

    def op_Min(self, node, *xs):
        return self._reduce_variadic("min", xs)

    def op_Sum(self, node, *xs):
        return self._reduce_variadic("add", xs)

    def _reduce_variadic(self, op, xs):
        acc = xs[0]
        for x in xs[1:]:
            acc = self._binary(op, acc, x)
        return acc if isinstance(acc, (Row, Index)) else self.as_row(acc)

    def _unary(self, op, x):
        r = self.as_row(x)
        return Row(ir.unary(op, r.expr), r.shape)

    def op_Sigmoid(self, node, x):
        return self._unary("sigmoid", x)

    def op_Tanh(self, node, x):
        return self._unary("tanh", x)

    def op_Relu(self, node, x):
        return self._unary("relu", x)

    def op_Neg(self, node, x):
        return self._unary("neg", x)

    def op_Exp(self, node, x):
        return self._unary("exp", x)

    def op_Abs(self, node, x):
        return self._unary("abs", x)

    def op_Identity(self, node, x):
        return x

    def op_MatMul(self, node, a, b):
        if isinstance(a, RowStack) and isinstance(b, Known) and b.value.ndim == 2:
            rows = [self.op_MatMul(node, a.element(i), b) for i in range(len(a.rows))]
            return _restack(rows)
        if isinstance(a, Row) and isinstance(b, Known) and b.value.ndim == 2:
            w = np.asarray(b.value, dtype=np.float32)
            if a.shape[-1] != w.shape[0]:
                raise Refusal(f"MatMul of width {a.shape[-1]} by {w.shape}")
            name = self.const_name(w, "weight")
            rows = _prod(a.shape[:-1])  # > 1: a per-node matrix times a weight, one GEMM row per matrix row
            return Row(ir.MatMul(a.expr, name, None, rows * w.shape[1], rows), tuple(a.shape[:-1]) + (w.shape[1],))
        if isinstance(a, Known) and a.value.ndim == 2 and isinstance(b, Row):
            w = np.asarray(a.value, dtype=np.float32)
            if len(b.shape) == 1 and b.shape[0] == w.shape[1]:  # W @ x = x @ W^T
                name = self.const_name(np.ascontiguousarray(w.T), "weight")
                return Row(ir.MatMul(b.expr, name, None, w.shape[0]), (w.shape[0],))
            if len(b.shape) == 2 and b.shape[0] == w.shape[1]:  # W @ X for a per-node matrix X
                name = self.const_name(np.ascontiguousarray(w.T), "weight")
                cols = b.shape[1]
                return Row(ir.LeftMatMul(name, b.expr, cols, w.shape[0] * cols), (w.shape[0], cols))
        if isinstance(a, Row) and isinstance(b, Row) and len(a.shape) == 2 and b.shape == (a.shape[1],):
            return Row(ir.MatVec(a.expr, b.expr, a.shape[0]), (a.shape[0],))  # per-node matrix times vector
        raise Refusal(f"MatMul of {describe(a)} by {describe(b)}: expected a row times a constant matrix")

    def op_Gemm(self, node, a, b, c=None):
        alpha, beta = _attr(node, "alpha", 1.0), _attr(node, "beta", 1.0)
        if _attr(node, "transA", 0):
            raise Refusal("Gemm with transA")
        if isinstance(a, RowStack) and len(a.shape) == 2:
            # [k, K] stacked child rows times a constant: one product per child
            outs = [self.op_Gemm(node, Row(r, (1, a.width)), b, c) for r in a.rows]
            return _restack([Row(o.expr, (o.expr.width,)) for o in outs])
        if not isinstance(a, Row) or len(a.shape) != 2 or not isinstance(b, Known):
            raise Refusal(f"Gemm of {describe(a)} by {describe(b)}: expected a [1, K] row times a constant")
        w = np.asarray(b.value, dtype=np.float32)
        w = w.T if _attr(node, "transB", 0) else w
        out = self.op_MatMul(node, a, Known(w * np.float32(alpha)))
        if c is None:
            return out
        return self._binary("add", out, Known(np.asarray(c.value, dtype=np.float32) * np.float32(beta)) if isinstance(c, Known) else c)

    # ---- reshaping -----------------------------------------------------------------------------

    def _reshaped(self, x, new_shape):
        new_shape = tuple(int(d) for d in new_shape)
        if isinstance(x, RowStack):
            # [k, width] -> [k * width]: the children's rows side by side (torch.cat / view(-1))
            if _prod(new_shape) == len(x.rows) * x.width and _row_shape_ok(new_shape):
                return Row(ir.concat(x.rows), new_shape)
            if _prod(new_shape) == len(x.rows) * x.width and new_shape and new_shape[0] == len(x.rows):
                return RowStack(x.rows, x.width, new_shape)
            raise Refusal(f"reshape of {len(x.rows)} stacked rows to {new_shape}")
        if isinstance(x, Row):
            # any shape of the same size: a per-node vector may be viewed as a matrix (MV-RNN) and back
            if _prod(new_shape) != x.expr.width:
                raise Refusal(f"reshape of a row of width {x.expr.width} to {new_shape}")
            return Row(x.expr, new_shape)
        if isinstance(x, (Index, Pred)):
            if _prod(new_shape) != 1:
                raise Refusal(f"reshape of a scalar to {new_shape}")
            return type(x)(x.expr, new_shape)
        if isinstance(x, ShapeVal) and len(new_shape) <= 1 and _prod(new_shape) == len(x.dims):
            return ShapeVal(x.dims, scalar=len(new_shape) == 0)
        raise Refusal(f"reshape of {describe(x)}")

    def op_Reshape(self, node, x, shape):
        if isinstance(shape, ShapeVal) and all(isinstance(d, int) for d in shape.dims):
            shape = Known(np.array(shape.dims, dtype=np.int64))
        if not isinstance(shape, Known):
            raise Refusal(f"Reshape to an unknown shape {describe(shape)}")
        target = [int(d) for d in shape.value.reshape(-1)]
        current = _visible_shape(x)
        if current is None:
            raise Refusal(f"Reshape of {describe(x)}")
        allowzero = _attr(node, "allowzero", 0)
        total = _prod(current)
        for i, d in enumerate(target):
            if d == 0 and not allowzero:
                target[i] = current[i]
        if -1 in target:
            known = _prod([d for d in target if d != -1])
            target[target.index(-1)] = total // known if known else 0
        return self._reshaped(x, target)

    def _axes(self, node, axes_input):
        if axes_input is not None:
            if not isinstance(axes_input, Known):
                raise Refusal("axes are not constant")
            return [int(a) for a in axes_input.value.reshape(-1)]
        return list(_attr(node, "axes", []) or [])

    def op_Unsqueeze(self, node, x, axes=None):
        current = _visible_shape(x)
        if current is None:
            raise Refusal(f"Unsqueeze of {describe(x)}")
        if isinstance(x, ShapeVal) and x.scalar:
            return ShapeVal(x.dims, scalar=False)
        out_rank = len(current) + len(self._axes(node, axes))
        shape = list(current)
        for a in sorted(ax % out_rank for ax in self._axes(node, axes)):
            shape.insert(a, 1)
        return self._reshaped(x, shape)

    def op_Squeeze(self, node, x, axes=None):
        current = _visible_shape(x)
        if current is None:
            raise Refusal(f"Squeeze of {describe(x)}")
        axes = self._axes(node, axes)
        axes = [a % len(current) for a in axes] if axes else [i for i, d in enumerate(current) if d == 1]
        return self._reshaped(x, [d for i, d in enumerate(current) if i not in axes])

    def op_Expand(self, node, x, shape):
        if not isinstance(shape, Known):
            raise Refusal("Expand to an unknown shape")
        if isinstance(x, Index) and _prod(x.shape) == 1:
            # one structure index broadcast to a block (ScatterElements indices): every element is the same
            target = tuple(int(d) for d in np.broadcast_shapes(tuple(x.shape), tuple(int(d) for d in shape.value)))
            return Index(x.expr, target)
        current = _visible_shape(x)
        if current is None:
            raise Refusal(f"Expand of {describe(x)}")
        target = tuple(int(d) for d in np.broadcast_shapes(tuple(current), tuple(int(d) for d in shape.value)))
        if _prod(target) != _prod(current):
            raise Refusal(f"Expand broadcasts {current} to {target}")
        return self._reshaped(x, target)

    def op_SplitToSequence(self, node, x, split=None):
        if not isinstance(x, Row) or split is None or not isinstance(split, Known):
            raise Refusal(f"SplitToSequence of {describe(x)} without constant split sizes")
        axis = _attr(node, "axis", 0) % len(x.shape)
        if axis != len(x.shape) - 1:
            raise Refusal("SplitToSequence across rows")
        width = x.shape[-1]
        sizes = ([int(split.value)] * (-(-width // int(split.value))) if split.value.ndim == 0
                 else [int(v) for v in split.value])
        rows, start = [], 0
        for size in sizes:
            stop = min(start + size, width)
            rows.append(Row(ir.slice_row(x.expr, start, stop), tuple(x.shape[:-1]) + (stop - start,)))
            start = stop
        return RowSeq(tuple(rows))

    def op_SequenceAt(self, node, seq, position):
        if not isinstance(seq, RowSeq) or not isinstance(position, Known):
            raise Refusal(f"SequenceAt of {describe(seq)}")
        return seq.rows[int(position.value)]

    def op_Flatten(self, node, x):
        current = _visible_shape(x)
        axis = _attr(node, "axis", 1) % (len(current) + 1) if current is not None else 1
        if current is None:
            raise Refusal(f"Flatten of {describe(x)}")
        return self._reshaped(x, [_prod(current[:axis]), _prod(current[axis:])])

    # ---- slicing and joining -------------------------------------------------------------------

    def op_Slice(self, node, x, starts, ends, axes=None, steps=None):
        if isinstance(x, ShapeVal):
            return self._slice_shape(x, starts, ends, axes, steps)
        if not isinstance(x, Row):
            raise Refusal(f"Slice of {describe(x)}")
        parts = [starts, ends] + [p for p in (axes, steps) if p is not None]
        if not all(isinstance(p, Known) for p in parts):
            raise Refusal("Slice bounds are not constant")
        rank = len(x.shape)
        axes_v = [int(a) % rank for a in axes.value] if axes is not None else list(range(len(starts.value)))
        steps_v = [int(s) for s in steps.value] if steps is not None else [1] * len(axes_v)
        start, stop = 0, x.shape[-1]
        for ax, s, e, st in zip(axes_v, starts.value, ends.value, steps_v):
            dim = x.shape[ax]
            s, e, _ = slice(int(s), int(e), st).indices(dim) if st == 1 else (None, None, None)
            if st != 1:
                raise Refusal("Slice with a step")
            if ax != rank - 1:
                if (s, e) != (0, dim):
                    raise Refusal("Slice across rows")
                continue
            start, stop = s, max(s, e)
        new_shape = tuple(x.shape[:-1]) + (stop - start,)
        return Row(ir.slice_row(x.expr, start, stop), new_shape)

    def _slice_shape(self, x, starts, ends, axes, steps):
        if not all(isinstance(p, Known) for p in (starts, ends) + tuple(p for p in (axes, steps) if p is not None)):
            raise Refusal("Slice of a shape with unknown bounds")
        step = int(steps.value[0]) if steps is not None else 1
        s, e = int(starts.value[0]), int(ends.value[0])
        dims = x.dims[slice(s, e, step)]
        if all(isinstance(d, int) for d in dims):
            return Known(np.array(dims, dtype=np.int64))
        return ShapeVal(dims)

    def op_Split(self, node, x, split=None):
        if not isinstance(x, Row):
            raise Refusal(f"Split of {describe(x)}")
        axis = _attr(node, "axis", 0) % len(x.shape)
        if axis != len(x.shape) - 1:
            raise Refusal("Split across rows")
        if split is not None:
            sizes = [int(s) for s in split.value] if isinstance(split, Known) else None
            if sizes is None:
                raise Refusal("Split sizes are not constant")
        elif _attr(node, "split") is not None:
            sizes = list(_attr(node, "split"))
        else:
            n = _attr(node, "num_outputs", len(node.output))
            width = x.shape[-1]
            chunk = -(-width // n)
            sizes = [min(chunk, width - i * chunk) for i in range(n)]
        outs, start = [], 0
        for size in sizes:
            outs.append(Row(ir.slice_row(x.expr, start, start + size), tuple(x.shape[:-1]) + (size,)))
            start += size
        return outs

    def op_Concat(self, node, *xs):
        if any(isinstance(x, (Index, IndexVec)) for x in xs):
            exprs = []
            for x in xs:
                if isinstance(x, Index) and x.shape == (1,):
                    exprs.append(x.expr)
                elif isinstance(x, IndexVec):
                    exprs.extend(x.exprs)
                elif isinstance(x, Known) and x.value.ndim == 1 and x.value.dtype.kind in "iu":
                    exprs.extend(ir.IConst(int(v)) for v in x.value)
                else:
                    raise Refusal(f"Concat of structure indices with {describe(x)}")
            return IndexVec(tuple(exprs))
        if all(isinstance(x, (Known, ShapeVal)) for x in xs):
            dims = []
            for x in xs:
                dims.extend(x.dims if isinstance(x, ShapeVal) else [int(d) for d in x.value.reshape(-1)])
            return ShapeVal(tuple(dims))
        rows = [self.as_row(x) for x in xs]
        rank = len(rows[0].shape)
        axis = _attr(node, "axis") % rank
        if axis == 0 and rank >= 2 and len({tuple(r.shape[1:]) for r in rows}) == 1:
            # matrices stacked along their rows: row-major, so their flat vectors concatenate
            height = sum(r.shape[0] for r in rows)
            return Row(ir.concat(r.expr for r in rows), (height,) + tuple(rows[0].shape[1:]))
        if axis != rank - 1 or any(len(r.shape) != rank for r in rows) or not all(_row_shape_ok(r.shape) for r in rows):
            raise Refusal("Concat of rows along a non-feature axis")
        width = sum(r.shape[-1] for r in rows)
        return Row(ir.concat(r.expr for r in rows), tuple(rows[0].shape[:-1]) + (width,))


def _mask_count(e):
    """A float row built only from 0/1 masks and integral constants by +, -, * is an integer count: its index
    expression, or None."""
    if isinstance(e, ir.Mask):
        return ir.ISelect(e.pred, ir.IConst(1), ir.IConst(0))
    if isinstance(e, ir.Scalar) and float(e.value).is_integer():
        return ir.IConst(int(e.value))
    if isinstance(e, ir.Binary) and e.op in ("add", "sub", "mul"):
        a, b = _mask_count(e.a), _mask_count(e.b)
        return ir.IBinary(e.op, a, b) if a is not None and b is not None else None
    return None


STACK_SPLIT_OPS = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sigmoid", "Tanh", "Relu", "Neg", "Exp", "Abs",
                   "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal", "Not", "And", "Or", "Cast",
                   "Where", "Clip", "Identity", "Unsqueeze", "Squeeze"}


def _stack_items(x):
    if isinstance(x, IndexVec):
        return [Index(e) for e in x.exprs]
    if isinstance(x, PredVec):
        return [Pred(e) for e in x.exprs]
    return [x.element(i) for i in range(len(x.rows))]


def _restack(values):
    if len(values) == 1 and isinstance(values[0], (Index, Pred)):
        return type(values[0])(values[0].expr, (1,) + tuple(values[0].shape))  # keeps e.g. a [1, 1] index
    if all(isinstance(v, Index) and _prod(v.shape) == 1 for v in values):
        return IndexVec(tuple(v.expr for v in values))
    if all(isinstance(v, Pred) and _prod(v.shape) == 1 for v in values):
        return PredVec(tuple(v.expr for v in values))
    if all(isinstance(v, Row) for v in values) and len({v.shape for v in values}) == 1:
        return RowStack(tuple(v.expr for v in values), values[0].expr.width, (len(values),) + tuple(values[0].shape))
    raise Refusal("per-child results of different kinds")


def _visible_shape(x):
    if isinstance(x, (Row, Index, Pred)):
        return tuple(x.shape)
    if isinstance(x, RowStack):
        return tuple(x.shape)
    if isinstance(x, (IndexVec, PredVec)):
        return (len(x.exprs),)
    if isinstance(x, ShapeVal):
        return () if x.scalar else (len(x.dims),)
    return None


_GATHER0 = helper.make_node("Gather", ["data", "indices"], ["output"], axis=0)


def _constant_value(node) -> np.ndarray:
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
    raise Refusal("Constant without a supported value attribute")


def fold_node(node, values):
    """Constant-folds one node with ONNX's reference implementation (one place for every op's semantics)."""
    from onnx.reference import ReferenceEvaluator

    feeds = {name: v for name, v in zip(node.input, values) if name}
    try:
        outs = ReferenceEvaluator(node).run(None, feeds)
    except Exception as e:  # noqa: BLE001 - any failure means "cannot fold"
        raise Refusal(f"cannot fold constant {node.op_type}: {e}") from None
    return [np.asarray(o) for o in outs]


def describe(v) -> str:
    if isinstance(v, Known):
        return f"constant {v.value.dtype}{list(v.value.shape)}"
    if isinstance(v, Row):
        return f"row{list(v.shape)}"
    if isinstance(v, Index):
        return "structure index"
    if isinstance(v, Pred):
        return "structure predicate"
    if isinstance(v, Table):
        return f"state table {v.name}"
    if isinstance(v, Array):
        return f"runtime tensor {v.name}"
    if isinstance(v, ShapeVal):
        return f"shape {v.dims}"
    if isinstance(v, Choice):
        return "value chosen by an If"
    return type(v).__name__

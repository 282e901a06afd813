"""Merge safety of a whole converted model: the recursions' proofs (kernel.py) joined through the ONNX nodes
around them.

A converted model is more than its Cortex nodes: ONNX Runtime computes initial tables from the inputs' shapes
(`zeros(N, H)`), and heads may follow the recursion (a classifier on every node's state, the rows of the roots).
This module interprets the main graph abstractly, one value at a time:

- `Rows(unit)`: a tensor whose first axis has one row per unit of the request (its nodes, its positions, the rows of
  some input); merged, it is the requests' tensors concatenated. Inputs start so; row-wise ops keep it (elementwise
  math with constants that do not vary along the rows, products with constant weights, reductions, softmax and
  slices over the other axes, casts, reshapes that keep the rows).
- `Dims`: a shape vector whose entries are constants or a unit's count (`Shape(words)[0]`); `ConstantOfShape` and
  `Expand` of such a shape make `Rows` again (merged: the summed count, the same zeros).
- `Const`: a value every request shares (initializers, constants, what folds from them).
- `Opaque(reason)`: anything else (a mean over all rows, row k of the forest, N + 1 rows). It may exist, but if it
  reaches a Cortex node or a graph output the model is not mergeable, for that reason.

Units are unified as the values meet (a kernel's node rows with the input whose shape made its initial table), and
the node ids a recursion reads tell which inputs must be offset. The result is a `MergePlan` (merge.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..artifacts import cortex_nodes
from .kernel import NODES, POSITIONS, KernelMerge, NotMergeable, analyze


@dataclass(frozen=True)
class Rows:
    unit: int
    inner: Optional[tuple]  # the static dimensions after the rows, None where unknown
    carries: Optional[str] = None  # the model input whose values this holds unchanged (node ids travel so)


@dataclass(frozen=True)
class UnitDim:
    unit: int


@dataclass(frozen=True)
class Dims:
    items: tuple  # ints and UnitDims
    scalar: bool = False  # a 0-D count rather than a [k] shape vector


@dataclass(frozen=True)
class Const:
    value: np.ndarray


@dataclass(frozen=True)
class Opaque:
    reason: str


ELEMENTWISE = {
    "Abs", "Acos", "Acosh", "Add", "And", "Asin", "Asinh", "Atan", "Atanh", "BitwiseAnd", "BitwiseNot", "BitwiseOr",
    "BitwiseXor", "Ceil", "Celu", "Clip", "Cos", "Cosh", "Div", "Dropout", "Elu", "Equal", "Erf", "Exp", "Floor",
    "Gelu", "Greater", "GreaterOrEqual", "HardSigmoid", "HardSwish", "Identity", "IsInf", "IsNaN", "LeakyRelu",
    "Less", "LessOrEqual", "Log", "Max", "Mean", "Min", "Mish", "Mod", "Mul", "Neg", "Not", "Or", "PRelu", "Pow",
    "Reciprocal", "Relu", "Round", "Selu", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Softplus", "Softsign", "Sqrt",
    "Sub", "Sum", "Tan", "Tanh", "ThresholdedRelu", "Where", "Xor",
}
REDUCTIONS = {"ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
              "ReduceProd", "ReduceSum", "ReduceSumSquare"}
_WIDENING = {onnx.TensorProto.INT32: {onnx.TensorProto.INT32, onnx.TensorProto.INT64},
             onnx.TensorProto.INT64: {onnx.TensorProto.INT64}}


class _Units:
    """Union-find over row units; each unit remembers the names that describe it."""

    def __init__(self):
        self.parent = []

    def new(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, u: int) -> int:
        while self.parent[u] != u:
            self.parent[u] = self.parent[self.parent[u]]
            u = self.parent[u]
        return u

    def union(self, a: int, b: int):
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


@dataclass
class KernelSite:
    """One Cortex node: its proof, its row units, and the model input behind each array its indices read."""
    name: str
    merge: KernelMerge
    nodes: int
    positions: int
    arrays: dict  # kernel input name -> model input whose values it carries


class GraphAnalysis:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.graph = model.graph
        self.units = _Units()
        self.env = {}
        self.uses = {}  # model input -> list of (how, where, unit or None)
        self.kernels = []
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
        self.recursions = {c.index: c for c in cortex_nodes(model)}
        self.inputs = [i for i in self.graph.input if i.name not in {t.name for t in self.graph.initializer}]
        self.input_units = {}

    # ---- values --------------------------------------------------------------------------------------------
    def _start(self):
        for t in self.graph.initializer:
            self.env[t.name] = Const(numpy_helper.to_array(t))
        for value in self.inputs:
            t = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim] if t.HasField("shape") \
                else None
            if dims is not None and not dims:
                self.env[value.name] = Opaque(f"input '{value.name}' is a scalar: requests may differ in it")
                continue
            if dims is not None and dims[0] is not None:
                self.env[value.name] = Opaque(f"input '{value.name}' has a fixed first dimension ({dims[0]}): "
                                              "a forest of several requests cannot have it")
                continue
            unit = self.units.new()
            self.input_units[value.name] = unit
            inner = tuple(dims[1:]) if dims is not None and all(d is not None for d in dims[1:]) else None
            self.env[value.name] = Rows(unit, inner, value.name)

    def _use(self, value, how: str, where: str, unit=None):
        if isinstance(value, Rows) and value.carries:
            self.uses.setdefault(value.carries, []).append((how, where, unit))

    # ---- the walk ------------------------------------------------------------------------------------------
    def run(self):
        self._start()
        for index, node in enumerate(self.graph.node):
            args = [self.env.get(name, Opaque(f"'{name}' has no value")) if name else None for name in node.input]
            if index in self.recursions:
                outs = self._recursion(self.recursions[index], node, args)
            elif all(a is None or isinstance(a, Const) for a in args) and not _has_subgraph(node) \
                    and not node.op_type.startswith(("Random", "Bernoulli", "Multinomial")):
                outs = self._fold(node, args)
            else:
                try:
                    outs = self._node(node, args)
                except Exception as e:  # noqa: BLE001 - an op this interpreter misreads is opaque, never a crash
                    reason = f"node '{node.name or node.op_type}' ({node.op_type}): {type(e).__name__}: {e}"
                    outs = [Opaque(reason)] * len(node.output)
            if outs is None:
                outs = [Opaque(f"node '{node.name or node.op_type}' ({node.op_type}) computes something the merge "
                               "analysis cannot attribute to one request")] * len(node.output)
            for name, value in zip(node.output, outs):
                if name:
                    self.env[name] = value
            self._record_data_uses(index, node, args, outs)
        return self

    def _record_data_uses(self, index, node, args, outs):
        """Every use of a model input's values other than travelling unchanged, being measured, or being read as
        node ids (a recursion's, or a Gather of rows) counts as data: an input whose node ids are offset must have
        no such use."""
        if index in self.recursions or node.op_type in ("Shape", "Size"):
            return
        for k, value in enumerate(args):
            if not (isinstance(value, Rows) and value.carries):
                continue
            if any(isinstance(o, Rows) and o.carries == value.carries for o in outs):
                continue
            if node.op_type == "Gather" and k == 1 and isinstance(args[0], Rows):
                continue
            self._use(value, "data", f"node '{node.name or node.op_type}' ({node.op_type})")

    def _fold(self, node, args):
        """A node of constants only: evaluated once here (onnx.reference), shared by every request."""
        from onnx.reference import ReferenceEvaluator

        inputs = [f"in{k}" if a is not None else "" for k, a in enumerate(args)]
        outputs = [f"out{k}" for k in range(len(node.output))]
        copy = helper.make_node(node.op_type, inputs, outputs, domain=node.domain)
        copy.attribute.extend(node.attribute)
        values = [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in inputs if n]
        graph = helper.make_graph([copy], "fold", values,
                                  [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in outputs])
        model = helper.make_model(graph, opset_imports=list(self.model.opset_import))
        try:
            results = ReferenceEvaluator(model).run(None, {n: a.value for n, a in zip(inputs, args) if n})
        except Exception as e:  # noqa: BLE001
            return [Opaque(f"node '{node.name or node.op_type}' ({node.op_type}) could not be evaluated on its "
                           f"constants: {type(e).__name__}")] * len(node.output)
        return [Const(np.asarray(r)) for r in results]

    # ---- one op --------------------------------------------------------------------------------------------
    def _node(self, node, args):
        op = node.op_type
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        opaque = [a for a in args if isinstance(a, Opaque)]
        if opaque:
            return [opaque[0]] * len(node.output)
        if node.domain not in ("", "ai.onnx") or _has_subgraph(node):
            return None
        handler = getattr(self, f"_op_{op}", None)
        if handler is not None:
            out = handler(args, attrs)
            if isinstance(out, list):
                return [Opaque(f"output {k} of node '{node.name or op}' ({op})") if o is None else o
                        for k, o in enumerate(out)]
            return None if out is None else [out]
        if op in ELEMENTWISE:
            out = self._elementwise(node, args)
            return None if out is None else [out] + [Opaque("a mask output")] * (len(node.output) - 1)
        if op in REDUCTIONS:
            out = self._reduce(node, args, attrs)
            return None if out is None else [out]
        return None

    def _rows_of(self, args):
        rows = [a for a in args if isinstance(a, Rows)]
        return rows[0] if rows else None

    def _elementwise(self, node, args):
        rows = [a for a in args if isinstance(a, Rows)]
        where = f"node '{node.name or node.op_type}' ({node.op_type})"
        if any(isinstance(a, Dims) for a in args if a is not None):
            return Opaque(f"{where} computes with a count (e.g. N + 1 rows): merged, the count would be the forest's")
        if not rows:
            return None
        units = {self.units.find(r.unit) for r in rows}
        if len(units) > 1:
            return Opaque(f"{where} combines rows of different sizes")
        ranks = {1 + len(r.inner) for r in rows if r.inner is not None}
        rank = max(ranks) if ranks else None
        for a in args:
            if isinstance(a, Const) and a.value.ndim:
                if rank is None or a.value.ndim > rank or (a.value.ndim == rank and a.value.shape[0] != 1):
                    return Opaque(f"{where} combines the rows with a constant that varies along them")
        inner = None
        if all(r.inner is not None for r in rows) and len({r.inner for r in rows}) == 1:
            inner = rows[0].inner
        carries = rows[0].carries if node.op_type == "Identity" else None
        return Rows(rows[0].unit, inner, carries)

    def _reduce(self, node, args, attrs):
        x = args[0]
        if not isinstance(x, Rows):
            return None
        axes = attrs.get("axes")
        if axes is None and len(args) > 1 and isinstance(args[1], Const):
            axes = [int(v) for v in args[1].value.reshape(-1)]
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):
                return Rows(x.unit, x.inner)
            return Opaque(f"node '{node.name or node.op_type}' ({node.op_type}) reduces over all rows: merged, "
                          "it would mix the requests' trees")
        rank = None if x.inner is None else 1 + len(x.inner)
        if rank is None and any(a < 0 for a in axes):
            return None
        axes = [a % rank if rank else a for a in axes]
        if 0 in axes:
            return Opaque(f"node '{node.name or node.op_type}' ({node.op_type}) reduces over the rows (axis 0): "
                          "merged, it would mix the requests' trees")
        keep = attrs.get("keepdims", 1)
        inner = None if x.inner is None else tuple(
            (1 if keep else None) if k + 1 in axes else d for k, d in enumerate(x.inner))
        inner = None if inner is None else tuple(d for d in inner if d is not None)
        return Rows(x.unit, inner)

    # shapes and counts
    def _op_Shape(self, args, attrs):
        x = args[0]
        if isinstance(x, Rows):
            if x.inner is None:
                return None
            items = (UnitDim(x.unit),) + tuple(x.inner)
            start, end = attrs.get("start", 0), attrs.get("end", None)
            return Dims(items[slice(start, end)])
        return None

    def _op_Gather(self, args, attrs):
        data, indices = args[0], args[1]
        axis = attrs.get("axis", 0)
        if isinstance(data, Dims) and isinstance(indices, Const):
            picked = [data.items[int(i)] for i in indices.value.reshape(-1)]
            return Dims(tuple(picked), scalar=indices.value.ndim == 0)
        if isinstance(data, Const) and isinstance(indices, Rows) and axis in (0, -data.value.ndim) \
                and indices.inner is not None:  # an embedding lookup of each row's token
            return Rows(indices.unit, tuple(indices.inner) + tuple(data.value.shape[1:]))
        if isinstance(data, Rows):
            rank = None if data.inner is None else 1 + len(data.inner)
            if rank is not None:
                axis %= rank
            if axis == 0 and isinstance(indices, Rows) and indices.carries:  # rows by node id: the roots' states
                if indices.inner != ():
                    return None
                self._use(indices, "node ids", "a Gather of rows by node id", data.unit)
                return Rows(indices.unit, data.inner)
            if axis == 0:
                return Opaque("a row picked at a fixed index (row k of a forest belongs to another request)")
            if isinstance(indices, Const) and data.inner is not None:
                inner = list(data.inner)
                inner[axis - 1:axis] = list(indices.value.shape)
                return Rows(data.unit, tuple(inner))
        return None

    def _op_Unsqueeze(self, args, attrs):
        return self._squeeze(args, attrs, add=True)

    def _op_Squeeze(self, args, attrs):
        return self._squeeze(args, attrs, add=False)

    def _squeeze(self, args, attrs, add):
        x = args[0]
        axes = attrs.get("axes")
        if axes is None and len(args) > 1 and isinstance(args[1], Const):
            axes = [int(v) for v in args[1].value.reshape(-1)]
        if isinstance(x, Dims):
            if add and x.scalar and axes in ([0], [-1]):
                return Dims(x.items)
            if not add and not x.scalar and len(x.items) == 1 and axes in (None, [0], [-1]):
                return Dims(x.items, scalar=True)
            return None
        if isinstance(x, Rows) and axes is not None and x.inner is not None:
            rank = 1 + len(x.inner) + (len(axes) if add else 0)
            axes = sorted(a % rank for a in axes)
            if 0 in axes:
                return Opaque("a reshape that moves the rows off the first axis")
            shape = list(x.inner)
            if add:
                for a in axes:
                    shape.insert(a - 1, 1)
            else:
                shape = [d for k, d in enumerate(shape) if k + 1 not in axes]
            return Rows(x.unit, tuple(shape), x.carries)
        return None

    def _op_Concat(self, args, attrs):
        axis = attrs.get("axis", 0)
        if all(isinstance(a, (Dims, Const)) for a in args):
            items = []
            for a in args:
                if isinstance(a, Dims) and not a.scalar:
                    items += a.items
                elif isinstance(a, Const) and a.value.ndim == 1:
                    items += [int(v) for v in a.value]
                else:
                    return None
            return Dims(tuple(items))
        rows = [a for a in args if isinstance(a, Rows)]
        if len(rows) == len(args) and len({self.units.find(r.unit) for r in rows}) == 1 \
                and all(r.inner is not None for r in rows):
            rank = 1 + len(rows[0].inner)
            if axis % rank == 0:
                return Opaque("a concatenation along the rows")
            inner = list(rows[0].inner)
            inner[axis % rank - 1] = sum(r.inner[axis % rank - 1] for r in rows)
            return Rows(rows[0].unit, tuple(inner))
        return None

    def _op_Slice(self, args, attrs):
        x = args[0]
        consts = [a.value.reshape(-1).tolist() if isinstance(a, Const) else None for a in args[1:]]
        if any(c is None for c, a in zip(consts, args[1:]) if a is not None):
            return None
        starts, ends = consts[0], consts[1]
        axes = consts[2] if len(consts) > 2 and consts[2] is not None else list(range(len(starts)))
        steps = consts[3] if len(consts) > 3 and consts[3] is not None else [1] * len(starts)
        if isinstance(x, Dims) and axes in ([0], [-1]):
            return Dims(x.items[slice(starts[0], ends[0], steps[0])])
        if isinstance(x, Rows) and x.inner is not None:
            rank = 1 + len(x.inner)
            if 0 in [a % rank for a in axes]:
                return Opaque("a slice along the rows (e.g. h[:N] of a table with extra rows): merged, the bounds "
                              "would be the forest's")
            inner = list(x.inner)
            for a, s, e, t in zip(axes, starts, ends, steps):
                inner[a % rank - 1] = len(range(*slice(s, e, t).indices(inner[a % rank - 1])))
            return Rows(x.unit, tuple(inner))
        return None

    def _op_ConstantOfShape(self, args, attrs):
        shape = args[0]
        if isinstance(shape, Dims) and not shape.scalar and shape.items and isinstance(shape.items[0], UnitDim) \
                and all(isinstance(d, int) for d in shape.items[1:]):
            return Rows(shape.items[0].unit, tuple(shape.items[1:]))
        return None

    def _op_Expand(self, args, attrs):
        value, shape = args
        if isinstance(value, Const) and isinstance(shape, Dims) and not shape.scalar and shape.items \
                and isinstance(shape.items[0], UnitDim) and all(isinstance(d, int) for d in shape.items[1:]):
            rank = len(shape.items)
            if value.value.ndim > rank or (value.value.ndim == rank and value.value.shape[0] != 1):
                return None
            inner = np.broadcast_shapes(value.value.shape, (1,) + tuple(shape.items[1:]))[1:] \
                if value.value.ndim else tuple(shape.items[1:])
            return Rows(shape.items[0].unit, tuple(int(d) for d in inner))
        return None

    def _op_Cast(self, args, attrs):
        x = args[0]
        to = attrs.get("to")
        if isinstance(x, Dims) and to in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            return x
        if isinstance(x, Rows):
            carries = x.carries if x.carries and to in _WIDENING.get(self._input_type(x.carries), ()) else None
            return Rows(x.unit, x.inner, carries)
        return None

    def _op_Reshape(self, args, attrs):
        x, shape = args
        if not isinstance(x, Rows) or x.inner is None:
            return None
        if isinstance(shape, Dims) and shape.items and isinstance(shape.items[0], UnitDim) \
                and self.units.find(shape.items[0].unit) == self.units.find(x.unit):
            rest = shape.items[1:]
        elif isinstance(shape, Const) and shape.value.ndim == 1 and shape.value.size and \
                int(shape.value[0]) in (0, -1) and not attrs.get("allowzero", 0):
            rest = [int(d) for d in shape.value[1:]]
        else:
            return None
        if not all(isinstance(d, int) for d in rest) or -1 in rest or 0 in rest:
            return None
        if int(np.prod(rest, dtype=np.int64)) != int(np.prod(x.inner, dtype=np.int64)):
            return None
        return Rows(x.unit, tuple(rest), x.carries)

    def _op_Flatten(self, args, attrs):
        x = args[0]
        axis = attrs.get("axis", 1)
        if isinstance(x, Rows) and x.inner is not None and axis % (1 + len(x.inner)) == 1:
            return Rows(x.unit, (int(np.prod(x.inner, dtype=np.int64)),))
        return None

    def _op_Transpose(self, args, attrs):
        x = args[0]
        if isinstance(x, Rows) and x.inner is not None:
            perm = attrs.get("perm") or list(range(len(x.inner), -1, -1))
            if perm[0] != 0:
                return Opaque("a transpose that moves the rows off the first axis")
            return Rows(x.unit, tuple(x.inner[p - 1] for p in perm[1:]))
        return None

    def _op_MatMul(self, args, attrs):
        a, b = args
        if isinstance(a, Rows) and isinstance(b, Const) and a.inner is not None and len(a.inner) >= 1 \
                and b.value.ndim == 2:
            return Rows(a.unit, a.inner[:-1] + (b.value.shape[1],))
        return None

    def _op_Gemm(self, args, attrs):
        a, b = args[0], args[1]
        c = args[2] if len(args) > 2 else None
        if isinstance(a, Rows) and not attrs.get("transA", 0) and isinstance(b, Const) and \
                (c is None or isinstance(c, Const)) and a.inner is not None and len(a.inner) == 1:
            if c is not None and c.value.ndim == 2 and c.value.shape[0] != 1:
                return Opaque("a Gemm whose bias varies along the rows")
            n = b.value.shape[0 if attrs.get("transB", 0) else 1]
            return Rows(a.unit, (int(n),))
        return None

    def _axis_op(self, args, attrs, default):
        x = args[0]
        if isinstance(x, Rows) and x.inner is not None:
            axis = attrs.get("axis", default)
            if axis % (1 + len(x.inner)) == 0:
                return Opaque("a normalization over the rows: merged, it would mix the requests' trees")
            return Rows(x.unit, x.inner)
        return None

    def _op_Softmax(self, args, attrs):
        return self._axis_op(args, attrs, -1 if self.opset >= 13 else 1)

    def _op_LogSoftmax(self, args, attrs):
        return self._axis_op(args, attrs, -1 if self.opset >= 13 else 1)

    def _op_ArgMax(self, args, attrs):
        x = self._axis_op(args, attrs, 0)
        if isinstance(x, Rows):
            rank = 1 + len(x.inner)
            axis = attrs.get("axis", 0) % rank
            inner = list(x.inner)
            if attrs.get("keepdims", 1):
                inner[axis - 1] = 1
            else:
                del inner[axis - 1]
            return Rows(x.unit, tuple(inner))
        return x

    _op_ArgMin = _op_ArgMax

    def _op_LayerNormalization(self, args, attrs):
        x = self._axis_op(args, attrs, -1)
        if isinstance(x, Rows) and all(a is None or isinstance(a, Const) for a in args[1:]):
            return [x, Opaque("a statistics output"), Opaque("a statistics output")]
        return None

    # ---- the recursions ------------------------------------------------------------------------------------
    def _recursion(self, cortex_node, node, args):
        where = f"recursion '{cortex_node.notes.get('recursion', node.name)}'"
        merge = _kernel_merge(cortex_node)
        site = KernelSite(where, merge, self.units.new(), self.units.new(), {})
        if merge.positions == NODES:
            self.units.union(site.positions, site.nodes)
        self.kernels.append(site)
        read_by_index = _arrays_read_by_index(merge.program)
        for decl, value in zip(merge.program.inputs, args):
            role = merge.inputs[decl.name]
            if isinstance(value, Opaque):
                raise NotMergeable(f"{where} input '{decl.name}': {value.reason}")
            if not isinstance(value, Rows):
                raise NotMergeable(f"{where} input '{decl.name}' is the same for every request (a constant or a "
                                   "count), not one row per node or position")
            if role.rows != "unused":
                self.units.union(value.unit, site.nodes if role.rows == NODES else site.positions)
            if decl.name in read_by_index or role.node_ids:
                if not value.carries:
                    raise NotMergeable(f"{where} reads indices from '{decl.name}', which the graph computes: the "
                                       "merge needs structure arrays that are model inputs")
                site.arrays[decl.name] = value.carries
            self._use(value, "node ids" if role.node_ids else "data", where, site.nodes if role.node_ids else None)
        outputs = []
        for name, table in zip(node.output, merge.program.tables):
            rows = merge.outputs.get(name, NODES if table.kind == "state" else POSITIONS)
            outputs.append(Rows(site.nodes if rows == NODES else site.positions, tuple(table.inner)))
        return outputs

    def _input_type(self, name):
        value = next(v for v in self.inputs if v.name == name)
        return value.type.tensor_type.elem_type


def _has_subgraph(node) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def _arrays_read_by_index(program) -> set:
    """Runtime arrays whose values index expressions read (Load), or whose length the trip count uses."""
    from ..ir import nodes as ir

    roots = [program.trip] if program.trip is not None else []
    for case in program.cases:
        roots += [case.predicate] + ([case.target] if case.target is not None else []) + [x for _, x in case.writes]
    names = {e.array for e in ir.walk(roots) if isinstance(e, ir.Load)}
    if program.mode == "dag":
        names.add(program.rows_from)
    return names


def _kernel_merge(cortex_node) -> KernelMerge:
    """The recursion's proof, derived again from the IR it carries and held to what conversion recorded."""
    from ..ir.serialize import IRFormatError, constant_specs, from_json

    notes = cortex_node.notes
    document = notes.get("ir")
    if not isinstance(document, dict):
        raise NotMergeable("the converted model carries no IR for its recursion, so merging cannot be proven "
                           f"({notes.get('ir_error', 'converted by an older Cortex')}); convert the model again")
    try:
        constants = {name: np.zeros(shape, np.float32) for name, (shape, _) in constant_specs(document).items()}
        program = from_json(document, constants)
    except IRFormatError as e:
        raise NotMergeable(f"the recursion's IR cannot be read: {e}") from None
    recorded = notes.get("merge")
    if isinstance(recorded, dict) and recorded.get("per_tree") is False:
        raise NotMergeable(str(recorded.get("reason", "conversion found it not mergeable")))
    merge = analyze(program)  # NotMergeable with the reason
    if recorded is not None and recorded != merge.to_notes():
        raise NotMergeable("the merge decision recorded at conversion differs from the one its IR proves (the model "
                           "was edited, or converted by another version of Cortex); convert the model again")
    return merge

"""The abstract interpreter: runs an ONNX graph over abstract values (values.py), one op handler per ONNX op
(the `ops_*.py` modules register them in HANDLERS). A handler implements what the ONNX spec says the op does, for
every kind of value it can meet, or raises `Refusal` saying what it expected. Constants fold through ONNX's
reference implementation; a value chosen by an `If` is carried as a `Choice` and every op that reads it runs once
per branch (path splitting), so rows computed under an `If` become cases of the program.
"""
from __future__ import annotations

import traceback
from dataclasses import replace

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..ir import index as ix
from ..ir import nodes as ir
from .values import INT_DTYPES, Array, Choice, Known, Refusal, Row, Seq, Sym, Table, TableSlice, describe

HANDLERS = {}
CONTROL_FLOW = ("If", "Loop", "Scan")
MAX_PATHS = 64  # branch combinations (cases) one region may split into


def handler(*names):
    def register(fn):
        for name in names:
            HANDLERS[name] = fn
        return fn
    return register


def attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32",
               onnx.TensorProto.BOOL: "bool", onnx.TensorProto.DOUBLE: "float64", onnx.TensorProto.FLOAT16: "float16",
               onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.INT16: "int16",
               onnx.TensorProto.UINT16: "uint16", onnx.TensorProto.UINT32: "uint32",
               onnx.TensorProto.UINT64: "uint64", onnx.TensorProto.BFLOAT16: "bfloat16"}


def node_label(node) -> str:
    return f"node {node.name or '(unnamed)'} ({node.op_type})"


class Interpreter:
    """Runs graphs over abstract values. `outer(name)` gives values of enclosing scopes. The interpreter records
    the constants the IR refers to (name -> float32 array) and the runtime tensors it reads (name -> Array)."""

    def __init__(self, outer, opset: int = 17, shared=None):
        self.outer = outer
        self.opset = opset
        if shared is None:
            shared = {"constants": {}, "const_ids": {}, "arrays": {}, "labels": {}}
        self.shared = shared
        self.constants = shared["constants"]
        self.labels = shared["labels"]  # constant name -> what the user calls it (an initializer's name)
        self.arrays = shared["arrays"]

    @property
    def element(self) -> str:
        """The float element type the region computes in (its state tables'): float32, or float64 (a model written
        with `model.double()`). The recognizer sets it before it interprets the body."""
        return self.shared.get("element", "float32")

    @property
    def float_dtype(self) -> np.dtype:
        return np.dtype(self.element)

    def floats(self, value) -> np.ndarray:
        """A float constant in the region's element type."""
        return np.asarray(value, dtype=self.float_dtype)

    def mixed_float(self, dtype: str, what: str) -> "Refusal":
        """The refusal of a float value of the other float type (one region computes in one float type)."""
        return Refusal(f"{what} is {dtype} in a region that computes in {self.element}: Cortex computes a region in "
                       "one float type (a mix of float32 and float64 would change the rounding)",
                       hint="write the whole recursion in one precision (model.double() or model.float())")

    def nested(self, outer) -> "Interpreter":
        """An interpreter for a subgraph: its own scope, the same constants and arrays."""
        return Interpreter(outer, self.opset, self.shared)

    # ---- scopes --------------------------------------------------------------------------------

    def run_graph(self, graph: onnx.GraphProto, bindings: dict) -> list:
        env = dict(bindings)
        for init in graph.initializer:
            env[init.name] = Known(numpy_helper.to_array(init), source=init.name)

        def lookup(name):
            if name in env:
                return env[name]
            return self.outer(name)

        for node in graph.node:
            try:
                args = [lookup(n) if n else None for n in node.input]
                outs = self.eval_node(node, args, lookup)
            except Refusal as r:
                raise r.at(node_label(node)) from None
            except RecursionError:
                raise Refusal("the expressions are too deeply nested").at(node_label(node)) from None
            except Exception as e:  # noqa: BLE001 - never crash on a model: a bug here is a refusal, with the node
                where = traceback.extract_tb(e.__traceback__)[-1]
                raise Refusal(f"internal error {type(e).__name__}: {e} (at {where.filename.rsplit('/', 1)[-1]}:"
                              f"{where.lineno})").at(node_label(node)) from None
            if len(outs) < len([o for o in node.output if o]):
                raise Refusal(f"produced {len(outs)} of {len(node.output)} outputs").at(node_label(node))
            for name, value in zip(node.output, outs):
                if name:
                    env[name] = value
        return [lookup(o.name) for o in graph.output]

    # ---- constants -----------------------------------------------------------------------------

    def const_name(self, value: np.ndarray, hint: str, source=None) -> str:
        """The IR constant holding `value` (one per distinct value); `source`: the ONNX name it came from."""
        value = np.ascontiguousarray(value, dtype=self.float_dtype)
        key = (value.shape, value.tobytes())
        ids = self.shared["const_ids"]
        if key not in ids:
            name = f"{hint}_{len(ids)}"
            ids[key] = name
            self.constants[name] = value
        if source is not None:
            self.labels.setdefault(ids[key], source)
        return ids[key]

    def use_array(self, array: Array, lead: int = None, proved: dict = None) -> Array:
        """Records that the recursion reads a runtime tensor: `lead`, how many leading dimensions make its rows
        (default: as recorded before, else 1); `proved`, {axis: size} of dimensions the model declares dynamic whose
        size a product proves. Returns the tensor as the kernel takes it; reads that disagree are refused."""
        known = self.arrays.get(array.name)
        if lead is None:
            lead = known.lead if known is not None else array.lead
        if known is not None and known.lead != lead:
            raise Refusal(f"runtime tensor {array.name} is read with {known.lead} and with {lead} leading indices",
                          hint="read every row of a tensor the same way")
        sizes = dict(proved or {})
        for axis in (known.checked if known is not None else ()):
            if sizes.get(axis, known.shape[axis]) != known.shape[axis]:
                raise Refusal(f"runtime tensor {array.name} dimension {axis} is multiplied by weights of "
                              f"{known.shape[axis]} and of {sizes[axis]} rows (the original fails on every input)")
            sizes[axis] = known.shape[axis]
        shape = None if array.shape is None else tuple(sizes.get(a, d) for a, d in enumerate(array.shape))
        array = replace(array, shape=shape, lead=lead, checked=tuple(sorted(set(array.checked) | set(sizes))))
        self.arrays[array.name] = array
        return array

    # ---- dispatch ------------------------------------------------------------------------------

    def eval_node(self, node, args, lookup):
        if node.domain not in ("", "ai.onnx"):
            raise Refusal(f"op {node.domain}.{node.op_type} is not an ONNX op Cortex knows inside a recursion")
        check_schema(node, self.opset)
        if node.op_type == "Constant":
            return [Known(constant_value(node))]
        choice = next((a for a in args if isinstance(a, Choice)), None)
        if choice is not None and node.op_type not in CONTROL_FLOW:
            return self._per_branch(node, args, lookup, choice)
        if choice is not None:  # control flow reading a chosen value: run it per branch as well
            return self._per_branch(node, args, lookup, choice)
        from . import ops_host, ops_lanes, ops_sets  # they import this module's attr
        for values in (ops_lanes, ops_sets, ops_host):  # a padded forest's per-tree values; child sets; host tables  # child sets the structure computes; integer tables the loop carries
            out = values.dispatch(self, node, args, lookup)
            if out is not None:
                return out
        fn = HANDLERS.get(node.op_type)
        if node.op_type not in CONTROL_FLOW and args and all(isinstance(a, Known) or a is None for a in args):
            try:
                return [Known(v) for v in fold_node(node, [a.value if a is not None else None for a in args])]
            except Refusal:
                if fn is None:  # the reference implementation lacks it (Gelu at some opsets): the handler computes it
                    raise
        if fn is None:
            raise Refusal(f"op {node.op_type} is not supported inside a recursion", hint=REWRITES.get(node.op_type))
        out = fn(self, node, args, lookup)
        return out if isinstance(out, list) else [out]

    def _per_branch(self, node, args, lookup, choice):
        then_args = [a.then if isinstance(a, Choice) and a.pred == choice.pred else a for a in args]
        other_args = [a.other if isinstance(a, Choice) and a.pred == choice.pred else a for a in args]
        then_out = self.eval_node(node, then_args, lookup)
        other_out = self.eval_node(node, other_args, lookup)
        return [choose(choice.pred, t, o) for t, o in zip(then_out, other_out)]

    # ---- conversions between kinds ---------------------------------------------------------------

    def row(self, v, what="operand") -> Row:
        """A float operand as a row: rows stay; constants become ConstVec / Scalar; structure values become
        IndexValue rows (a cast)."""
        if isinstance(v, Row):
            return v
        if isinstance(v, Known):
            if v.value.dtype.kind not in "fiub":
                raise Refusal(f"{what} is a constant of type {v.value.dtype}")
            arr = self.floats(v.value)
            if arr.size == 1:
                return Row(ir.Scalar(float(arr.reshape(-1)[0])), arr.shape)
            return Row(ir.ConstVec(self.const_name(arr.reshape(-1), "vec"), arr.size), arr.shape)
        if isinstance(v, Sym):
            return sym_to_row(v)
        if isinstance(v, Table):
            raise Refusal(f"{what} is the whole state table {v.name}: Cortex follows a state only through row reads "
                          f"and writes at structure indices", hint="read and write one node's rows per iteration")
        raise Refusal(f"{what} is {describe(v)}, expected a per-node float tensor")

    def sym(self, v, what="operand") -> Sym:
        """An integer/bool operand as a Sym: constants lift, structural float rows (casts of structure values)
        lower back; anything computed from state values is data-dependent and refused."""
        if isinstance(v, Sym):
            return v
        if isinstance(v, Known):
            return known_to_sym(v.value)
        if isinstance(v, Row):
            s = row_to_sym(v, self.constants)
            if s is not None:
                return Sym(np.vectorize(ix.as_pred, otypes=[object])(s.elems), "bool") if v.boolean else s
            if all(isinstance(x, (ir.IndexValue, ir.Scalar, ir.ConstVec)) for x in ir.walk_rows([v.expr])
                   if not ir.row_children(x)):
                raise Refusal(f"{what} is computed from structure values through float arithmetic (a division, a "
                              f"floor), which Cortex does not follow exactly",
                              hint="compute indices with integer ops (k // C, k % C), not torch.div(..., "
                                   "rounding_mode='floor') or float casts")
            raise Refusal(f"{what} is computed from state values (data-dependent); Cortex needs it to come from the "
                          f"structure arrays", hint=DATA_DEPENDENT_HINT)
        if isinstance(v, Array) and v.read_dtype in INT_DTYPES + ("bool",) and v.shape is not None and \
                all(d == 1 for d in v.shape) and v.columns is None:
            # a scalar ONNX Runtime computes before the recursion (a grid's width from Shape): the kernel reads it
            load = ir.Load(self.use_array(v).name, ix.const(0), column=0 if len(v.shape) == 2 else None)
            elems = np.empty(v.shape, dtype=object)
            elems[...] = ix.as_pred(load) if v.read_dtype == "bool" else load
            return Sym(elems, v.read_dtype)
        raise Refusal(f"{what} is {describe(v)}, expected a structure value")


# PyTorch rewrites that convert, for ops Cortex does not follow inside a recursion (docs/ops.md lists them).
REWRITES = {
    "Conv": "write a convolution over a node's fixed-size rows as a matmul with an unfolded (im2col) weight",
    "Trilu": "multiply by a constant triangular mask instead",
    "Resize": "resize outside the recursion, or index the rows with constant indices",
}


DATA_DEPENDENT_HINT = ("compute indices and branch conditions only from the structure inputs (child ids, node order, "
                       "leaf flags), never from hidden states")


_SCHEMAS = {}


def check_schema(node, opset: int):
    """The node against its ONNX schema: input count and required attributes (a malformed node is refused with
    what the spec expects, before any handler reads it)."""
    key = (node.op_type, opset)
    if key not in _SCHEMAS:
        try:
            _SCHEMAS[key] = onnx.defs.get_schema(node.op_type, opset, "")
        except Exception:  # noqa: BLE001 - not an ONNX op at this opset
            _SCHEMAS[key] = None
    schema = _SCHEMAS[key]
    if schema is None:
        raise Refusal(f"{node.op_type} is not an ONNX op at opset {opset}")
    present = len(node.input)
    if present < schema.min_input or present > schema.max_input:
        raise Refusal(f"{node.op_type} has {present} inputs; the ONNX spec allows {schema.min_input} to "
                      f"{schema.max_input}")
    if len(node.output) < schema.min_output or len(node.output) > schema.max_output:
        raise Refusal(f"{node.op_type} has {len(node.output)} outputs; the ONNX spec allows {schema.min_output} to "
                      f"{schema.max_output}")
    given = {a.name for a in node.attribute}
    for name, attribute in schema.attributes.items():
        if attribute.required and name not in given:
            raise Refusal(f"{node.op_type} lacks its required attribute {name}")
    for a in node.attribute:
        if a.name in schema.attributes and a.type != schema.attributes[a.name].type and a.type != 0:
            raise Refusal(f"{node.op_type} attribute {a.name} has the wrong type")


def choose(pred, then, other):
    if isinstance(then, Known) and isinstance(other, Known) and then == other:
        return then
    if then == other:
        return then
    return Choice(pred, then, other)


def constant_value(node) -> np.ndarray:
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
        raise Refusal(f"cannot fold constant {node.op_type}: {type(e).__name__}: {e}") from None
    return [np.asarray(o) for o in outs]


# ---- Sym <-> Known <-> Row ------------------------------------------------------------------------


def known_to_sym(value) -> Sym:
    value = np.asarray(value)
    if value.dtype == np.bool_:
        elems = np.vectorize(lambda b: ir.BConst(bool(b)), otypes=[object])(value) if value.size else \
            np.empty(value.shape, dtype=object)
        return Sym(_obj(elems, value.shape), "bool")
    if value.dtype.kind in "iu":
        elems = np.vectorize(lambda i: ir.IConst(int(i)), otypes=[object])(value) if value.size else \
            np.empty(value.shape, dtype=object)
        return Sym(_obj(elems, value.shape), str(value.dtype))
    if value.dtype.kind == "f" and np.all(np.isfinite(value)) and np.all(value == np.round(value)):
        elems = np.vectorize(lambda i: ir.IConst(int(i)), otypes=[object])(value) if value.size else \
            np.empty(value.shape, dtype=object)
        return Sym(_obj(elems, value.shape), "int64")
    raise Refusal(f"a constant {value.dtype}{list(value.shape)} used as a structure value")


def _obj(elems, shape):
    out = np.empty(shape, dtype=object)
    if out.size:
        out[...] = elems
    return out


def sym_known(s: Sym):
    """The Sym as a constant array when every element is a constant, else None."""
    if all(isinstance(e, (ir.IConst, ir.BConst)) for e in s.elems.flat):
        dtype = np.bool_ if s.is_bool else np.dtype(s.dtype if s.dtype != "bool" else "int64")
        return np.array([e.value for e in s.elems.flat], dtype=dtype).reshape(s.shape)
    return None


def sym_to_row(s: Sym) -> Row:
    parts = [ir.IndexValue(ix.as_index(e)) if not isinstance(e, (ir.IConst, ir.BConst)) else
             ir.Scalar(float(int(e.value))) for e in s.elems.flat]
    if not parts:
        raise Refusal("an empty structure tensor used as a float tensor")
    return Row(ir.concat(parts) if len(parts) > 1 else parts[0], tuple(s.shape), boolean=s.is_bool)


def row_element_index(e: ir.RExpr, i: int, constants: dict = None):
    """Element i of a float row as an exact integer index expression, when the row is built only from casts of
    structure values and integral constants by +, -, *; else None."""
    if isinstance(e, ir.IndexValue):
        return e.index
    if isinstance(e, ir.Scalar):
        return ix.const(int(e.value)) if float(e.value).is_integer() else None
    if isinstance(e, ir.ConstVec) and constants is not None:
        v = float(constants[e.const].reshape(-1)[0 if e.width == 1 else i])
        return ix.const(int(v)) if v.is_integer() else None
    if isinstance(e, ir.Binary) and e.op in ("add", "sub", "mul", "max", "min"):
        a = row_element_index(e.a, 0 if e.a.width == 1 else i, constants)
        b = row_element_index(e.b, 0 if e.b.width == 1 else i, constants)
        return ix.ibin(e.op, a, b) if a is not None and b is not None else None
    if isinstance(e, ir.Select):
        a = row_element_index(e.a, 0 if e.a.width == 1 else i, constants)
        b = row_element_index(e.b, 0 if e.b.width == 1 else i, constants)
        return ix.iselect(e.pred, a, b) if a is not None and b is not None else None
    if isinstance(e, ir.Slice):
        return row_element_index(e.x, e.start + i, constants)
    if isinstance(e, ir.Take):
        return row_element_index(e.x, e.indices[i], constants)
    if isinstance(e, ir.Concat):
        for part in e.parts:
            if i < part.width:
                return row_element_index(part, i, constants)
            i -= part.width
    return None


def row_to_sym(r: Row, constants: dict = None):
    elems = [row_element_index(r.expr, i, constants) for i in range(r.expr.width)]
    if any(e is None for e in elems):
        return None
    out = np.empty(len(elems), dtype=object)
    out[:] = elems
    return Sym(out.reshape(r.shape), "int64")

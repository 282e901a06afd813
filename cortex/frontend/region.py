"""What every recognizer shares: the Region record, the outer scope (the main graph's names as abstract values),
and the pieces a region's Program is built from (branch paths, cases, state tables, kernel inputs, labels)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx
from onnx import numpy_helper

from ..ir import index as ix
from ..ir import nodes as ir
from ..ir.printer import format_index
from ..ir.schema import safe_text
from .interpreter import MAX_PATHS, ONNX_DTYPES, Interpreter
from .ops_lanes import LaneRange, lane_array, outer_lane_range, shape_load
from .values import Array, Choice, Known, Refusal, Row, Sym, Table, describe

KERNEL_DTYPES = ("int64", "int32", "bool", "float32", "float64")


@dataclass
class Region:
    """One recursive region found in the model: converted (program set) or left to ORT (reason set)."""
    kind: str  # 'Loop' | 'Scan' | 'TreeRec'
    node_index: int
    node_name: str
    program: Optional[ir.Program] = None
    reason: Optional[str] = None
    hint: Optional[str] = None


@ir.node
class Carried(ir.IExpr):
    """A loop-carried integer (a counter) while the body is interpreted; replaced by its closed form after. `depth`: 1
    for a counter of a loop nested in the recursion's loop."""
    slot: int
    depth: int = 0


@ir.node
class InnerIter(ir.IExpr):
    """The iteration number of a loop nested in the recursion's loop (`for i: for j:` over a grid) while the body is
    interpreted; the recognizer flattens the two into one position p: i = p // C, j = p % C."""


def _opset(model) -> int:
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return int(op.version)
    return 17


def _value_types(model: onnx.ModelProto) -> dict:
    """name -> (dtype, shape) from graph inputs/outputs/value_info after ONNX shape inference."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is a hint only
        inferred = model
    types = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if not t.elem_type:
            continue
        shape = None
        if t.HasField("shape"):
            shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
        types[vi.name] = (ONNX_DTYPES.get(t.elem_type), shape)
    return types


class OuterScope:
    """Abstract values of the main graph's names, computed on demand. Constants and host-computable structure
    values (lengths of inputs, loads at constant positions) keep their meaning; anything else is an opaque runtime
    tensor that the converted node takes as an input (ONNX Runtime computes it before the recursion)."""

    def __init__(self, model: onnx.ModelProto):
        self.graph = model.graph
        self.types = _value_types(model)
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.initializers = {i.name: i for i in self.graph.initializer}
        self.values = {}
        self.interp = Interpreter(outer=self.lookup, opset=_opset(model))

    def opaque(self, name, fill=None):
        dtype, shape = self.types.get(name, (None, None))
        return Array(name, dtype, shape, fill)

    def lookup(self, name):
        if name in self.values:
            return self.values[name]
        self.values[name] = self.opaque(name)  # breaks cycles; replaced below
        if name in self.initializers:
            value = Known(numpy_helper.to_array(self.initializers[name]), source=name)
        elif name in self.producer:
            node = self.producer[name]
            value = self.opaque(name)
            if node.op_type == "ConstantOfShape" and node.domain in ("", "ai.onnx"):
                value = self._constant_of_shape(node, name)
            elif node.op_type == "Range" and node.domain in ("", "ai.onnx") and \
                    (count := self._tree_count(node)) is not None:
                value = LaneRange(count, self.opaque(name))  # torch.arange(B): a padded forest's tree index
            elif node.op_type == "Expand" and node.domain in ("", "ai.onnx") and self._one_value(node.input[0]):
                value = self.opaque(name, float(self.lookup(node.input[0]).value.reshape(-1)[0]))  # the dynamo
                # exporter's torch.zeros(n, H): a scalar expanded to a shape ONNX Runtime computes
            elif node.op_type not in ("Loop", "If", "Scan") and node.domain in ("", "ai.onnx"):
                try:
                    args = [self.lookup(n) if n else None for n in node.input]
                    ranged = outer_lane_range(self.interp, node, args, value)
                    if ranged is not None:  # torch.arange(B).view(-1, 1): still the trees' index
                        self.values[name] = ranged
                        return ranged
                    outs = self.interp.eval_node(node, args, self.lookup)
                    value = outs[list(node.output).index(name)]
                except Exception:  # noqa: BLE001 - outside a recursion, anything not understood is opaque
                    value = self.opaque(name)
                if not _host_value(value) or (isinstance(value, Array) and value.name != name):
                    value = self.opaque(name)  # computed by ONNX Runtime: the converted node takes it as an input
        else:
            value = self.opaque(name)  # a graph input
        self.values[name] = value
        return value

    def _tree_count(self, node):
        """B for a Range(0, B, 1) with B the first dimension of a [B, N, ...] runtime tensor, else None."""
        try:
            start, limit, delta = (self.lookup(n) for n in node.input)
        except (ValueError, Refusal):
            return None
        if not (isinstance(start, Known) and isinstance(delta, Known) and isinstance(limit, Sym) and
                limit.elems.size == 1 and start.value.size == 1 and delta.value.size == 1 and
                int(start.value.reshape(-1)[0]) == 0 and int(delta.value.reshape(-1)[0]) == 1):
            return None
        count = ix.as_index(limit.elems.reshape(-1)[0])
        count = shape_load(self, count) or count
        if isinstance(count, ir.Length) and count.axis == 0 and count.array is not None:
            array = self.lookup(count.array)  # B of a [B, N, ...] input, or the length of a [B] one (roots)
            if lane_array(array) or (isinstance(array, Array) and array.shape is not None and len(array.shape) == 1
                                     and not isinstance(array.shape[0], int)):
                return count
        return None

    def _one_value(self, name) -> bool:
        v = self.lookup(name)
        return isinstance(v, Known) and v.value.size == 1 and v.value.dtype.kind == "f"

    def _constant_of_shape(self, node, name):
        attr = next((a for a in node.attribute if a.name == "value"), None)
        fill = float(numpy_helper.to_array(attr.t).reshape(-1)[0]) if attr is not None else 0.0
        try:
            shape = self.lookup(node.input[0])
            if isinstance(shape, Known):
                value = numpy_helper.to_array(attr.t) if attr is not None else np.zeros(1, np.float32)
                return Known(np.full(tuple(int(d) for d in shape.value), value.reshape(-1)[0], dtype=value.dtype))
        except Exception:  # noqa: BLE001
            pass
        return self.opaque(name, fill)


def _host_value(v) -> bool:
    """A value the host can compute before the recursion: constants, runtime tensors, and structure values that
    do not depend on the position."""
    if isinstance(v, (Known, Array)):
        return True
    if isinstance(v, Sym):  # a size other than the rows (Length on another axis) ONNX Runtime computes: an input
        return not any(isinstance(x, (ir.Iter, Carried)) or (isinstance(x, ir.Length) and x.axis)
                       for e in v.elems.flat for x in ir.walk([e]))
    return False



# ---- helpers shared by the recognizers ----------------------------------------------------------------


def used_names(graph) -> set:
    """Every name a graph reads (its outputs, its nodes' inputs, its subgraphs' reads)."""
    used = {o.name for o in graph.output}
    for n in graph.node:
        used.update(x for x in n.input if x)
        for a in n.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                used |= used_names(sub)
    return used


def flatten_choices(outputs, path=()):
    """Splits outputs that are (nested) If choices into cases: [(predicates, outputs), ...]."""
    for o in outputs:
        if isinstance(o, Choice):
            c = o.pred
            then = [x.then if isinstance(x, Choice) and x.pred == c else x for x in outputs]
            other = [x.other if isinstance(x, Choice) and x.pred == c else x for x in outputs]
            return flatten_choices(then, path + (c,)) + flatten_choices(other, path + (ix.bnot(c),))
    return [(path, outputs)]


def conjunction(preds) -> ir.BExpr:
    out = ir.BConst(True)
    for p in preds:
        out = ix.band(out, p)
    return out


MAX_LEAD = 4  # leading dimensions of a state table (a grid [R, C, ...]: 2)


def float_element(outer, names) -> str:
    """The float element type of a region from the values it carries (and, for a Scan, reads): float64 when they
    are float64 (a model written with `model.double()`), float32 otherwise; a mix is refused, naming a value of
    each type (computing one in the other's type would change the answers)."""
    first = {}
    for name in names:
        value = outer.lookup(name) if name else None
        dtype = str(value.value.dtype) if isinstance(value, Known) else value.dtype if isinstance(value, Array) \
            else None
        if dtype in ir.FLOAT_DTYPES:
            first.setdefault(dtype, name)
    if len(first) > 1:
        raise Refusal(f"the recursion mixes float32 ({first['float32']}) and float64 ({first['float64']}) values: "
                      "Cortex computes a region in one float type, and converting either would change the answers",
                      hint="write the whole recursion in one precision (model.double() or model.float())")
    return next(iter(first), "float32")


def table_layout(value, name) -> tuple:
    """(lead, inner) of a state table from its initial value: the leading dimensions up to the last dynamic one make
    its rows ([N, ...]: 1; a grid [R, C, H]: 2, cell (i, j) at row i * C + j), the static row shape follows."""
    if isinstance(value, Known):
        dtype, shape = str(value.value.dtype), tuple(value.value.shape)
    elif isinstance(value, Array):
        dtype, shape = value.dtype, value.shape
    else:
        raise Refusal(f"loop-carried {name} is {describe(value)}, not a state table")
    if shape is None or len(shape) < 1:
        raise Refusal(f"loop-carried {name} is not an [N, ...] state table of static row shape (shape {shape})")
    lead = 1 + max((k for k, d in enumerate(shape) if not isinstance(d, int)), default=0)
    if lead > MAX_LEAD:
        raise Refusal(f"loop-carried {name} has {lead} dynamic leading dimensions (shape {shape}); Cortex follows "
                      f"tables of at most {MAX_LEAD}",
                      hint="a padded forest [B, N, ...] advanced B trees at a time: batch the trees into one forest "
                           "(node ids offset per tree, cortex.examples.structures.batch) and visit its nodes one per "
                           "iteration")
    if dtype not in ir.FLOAT_DTYPES:
        hint = ("keep integer bookkeeping (stack pointers, back-pointers) in the structure inputs, computed before "
                "the loop" if dtype and dtype.startswith(("int", "uint")) else None)
        raise Refusal(f"loop-carried {name} is {dtype}, not a float32 or float64 state table", hint=hint)
    return lead, tuple(int(d) for d in shape[lead:])


def row_of(interp, value, what) -> tuple:
    """A per-iteration output as (row expression, shape)."""
    if isinstance(value, (Known, Sym, Row)):
        r = interp.row(value, what)
        return r.expr, tuple(r.shape)
    raise Refusal(f"{what} is {describe(value)}")


def input_decls(interp, cases, extra, outer_lookup, first=(), also=()) -> list:
    """InputDecls for the runtime arrays the program reads, in first-use order, then those named in `also`."""
    decls = list(first)
    for name in ir.referenced_arrays(cases, extra) + list(also):
        if any(d.name == name for d in decls):
            continue
        arr = interp.arrays.get(name) or outer_lookup(name)
        if not isinstance(arr, Array):
            raise Refusal(f"{name} is read as a runtime tensor but is {describe(arr)}")
        if arr.dtype not in KERNEL_DTYPES or arr.shape is None:
            raise Refusal(f"runtime tensor {name} ({arr.dtype}, shape {arr.shape}) is not a supported node input")
        if arr.dtype in ir.FLOAT_DTYPES and arr.dtype != interp.element:
            raise interp.mixed_float(arr.dtype, f"runtime tensor {name}")
        lead = min(arr.lead, max(len(arr.shape), 1))
        inner = tuple(arr.shape[lead:])
        if any(not isinstance(d, int) for d in inner):
            if len(arr.shape) != 2 or arr.dtype not in ("int64", "int32") or lead != 1:
                raise Refusal(f"runtime tensor {name} has a dynamic inner dimension (shape "
                              f"{[d if isinstance(d, int) else '?' for d in arr.shape]})", hint=DYNAMIC_DIM_HINT)
            # an edge list [2, E]: only a child set may read it (verify refuses any other read)
            decls.append(ir.InputDecl(name, "array", arr.dtype, 2, (), dynamic_inner=True))
            continue
        decls.append(ir.InputDecl(name, "array", arr.dtype, len(arr.shape), inner, lead=lead,
                                  checked=tuple(arr.checked)))
    return decls


DYNAMIC_DIM_HINT = ("export the feature dimensions as static (dynamic_axes / dynamic_shapes only on the node or grid "
                    "dimensions), or multiply each row read by a weight, which proves its size")


def build_cases(paths, state_slots, emit_slots, interp, host_slots=()) -> tuple:
    """Cases from the flattened paths: each path's table writes (one target row), per-iteration rows, and updates of
    the integer state the host carries (host_slots: [(output slot, host variable)])."""
    if len(paths) > MAX_PATHS:
        raise Refusal(f"the step splits into {len(paths)} branch combinations (more than {MAX_PATHS})")
    cases = []
    for k, (preds, outs) in enumerate(paths):
        writes, targets = [], []
        for slot, table_name in state_slots:
            out = outs[slot]
            if not isinstance(out, Table) or out.name != table_name:
                raise Refusal(f"state {table_name} is replaced by {describe(out)}, not updated row by row",
                              hint="update the state with h[v] = new_row (or index_copy_/index_put) only")
            for target, row in out.writes:
                if target not in targets:
                    targets.append(target)
                writes.append((table_name, row))
        target = _step_target(targets)
        for slot, table_name, width in emit_slots:
            expr, shape = row_of(interp, outs[slot], f"the per-iteration output {table_name}")
            if expr.width != width:
                raise Refusal(f"the per-iteration output {table_name} changes shape between branches")
            writes.append((table_name, expr))
        updates = _host_updates(outs, host_slots)
        if writes or updates:
            cases.append(ir.Case(f"case{k}", conjunction(preds), target, tuple(writes), updates))
    if not any(c.target is not None for c in cases) and state_slots:
        raise Refusal("the loop never writes its state")
    return tuple(cases)


def _host_updates(outs, host_slots) -> tuple:
    from .ops_host import HostTable  # ops_host imports the interpreter, which imports this module

    updates = []
    for slot, var in host_slots:
        out = outs[slot]
        if isinstance(out, HostTable) and out.var == var:
            updates += [ir.HostUpdate(var, at, value) for at, value in out.writes]
        elif isinstance(out, Sym) and out.elems.size == 1 and not out.is_bool:
            updates.append(ir.HostUpdate(var, None, ix.as_index(out.scalar())))
        else:
            raise Refusal(f"the loop's integer state {var} becomes {describe(out)}")
    return tuple(updates)


def _step_target(targets):
    """The one row a step writes (None when it writes none). Tables written at one row, some through a Guard (a
    torch.cat write checks its row) and some not, write that row, checked."""
    if len(targets) <= 1:
        return targets[0] if targets else None
    rows = {t.value if isinstance(t, ir.Guard) else t for t in targets}
    guards = {t for t in targets if isinstance(t, ir.Guard)}
    if len(rows) == 1 and len(guards) == 1:
        return guards.pop()
    raise Refusal("the state is written at two rows in one step (" + ", ".join(format_index(t) for t in targets[:3])
                  + ")", hint="write one node's rows per iteration")


def check_outputs_unused(node, slots, used, what):
    for k in slots:
        if k < len(node.output) and node.output[k] and node.output[k] in used:
            raise Refusal(f"the loop's {what} {node.output[k]} is used after the loop")


def init_decl(name, outer) -> ir.InputDecl:
    value = outer.lookup(name)
    lead, inner = table_layout(value, name)
    zeros = isinstance(value, Array) and value.fill is not None and float(value.fill) == 0.0  # torch.zeros(N, H)
    dtype = str(value.value.dtype) if isinstance(value, Known) else value.dtype
    return ir.InputDecl(name, "init", dtype, lead + len(inner), inner, zeros=zeros, lead=lead)



def zero_tables_by_shape(program: ir.Program, outer) -> ir.Program:
    """The program with each initial table the model fills with zeros (`torch.zeros(N, H)`: a ConstantOfShape, or
    the dynamo exporter's Expand of a scalar zero) taken as the shape vector it is made from: ONNX Runtime then
    neither fills it nor, on a GPU, copies it to the device before every run; the kernel fills the table itself.
    A table whose initial value anything else reads, or that starts at -0.0, keeps its input."""
    if program.mode != "visit":
        return program
    names = {d.name for d in program.inputs}
    read = set(ir.referenced_arrays(program.cases, [program.trip] if program.trip is not None else []))
    read |= {f.init for f in program.finals}
    shapes = {}  # init name -> the shape vector's ONNX name
    for decl in program.inputs:
        if decl.kind == "init" and decl.zeros and decl.dtype == program.element and decl.name not in read:
            shape = _zeros_shape(outer, decl)
            if shape is not None and shape not in names:
                shapes[decl.name] = shape
    if not shapes:
        return program
    inputs, added = [], set()
    for decl in program.inputs:
        if decl.name not in shapes:
            inputs.append(decl)
        elif shapes[decl.name] not in added:  # h and c from one shape: one input
            added.add(shapes[decl.name])
            inputs.append(dataclasses.replace(decl, name=shapes[decl.name], kind="shape", dtype="int64"))
    tables = tuple(dataclasses.replace(t, init=shapes.get(t.init, t.init)) for t in program.tables)
    by_shape = {}  # one shape vector for tables of different layouts would be two declarations of one input
    for t in tables:
        if t.init in added and by_shape.setdefault(t.init, (t.lead, t.inner)) != (t.lead, t.inner):
            return program
    return dataclasses.replace(program, inputs=tuple(inputs), tables=tables)


def _zeros_shape(outer, decl: ir.InputDecl) -> Optional[str]:
    """The ONNX name of the int64 shape vector an initial table of zeros is made from, else None."""
    node = getattr(outer, "producer", {}).get(decl.name)  # a main-graph value's node (OuterScope)
    value = outer.lookup(decl.name)
    if node is None or node.domain not in ("", "ai.onnx") or not isinstance(value, Array) or value.fill is None \
            or float(value.fill) != 0.0 or np.signbit(value.fill):
        return None
    if node.op_type == "ConstantOfShape":
        return node.input[0]
    if node.op_type == "Expand" and len(node.input) == 2:
        scalar = outer.lookup(node.input[0])  # a scalar expanded: the output's shape is the shape vector's
        if isinstance(scalar, Known) and scalar.value.size == 1 and (scalar.value.ndim == 0 or
                                                                     (scalar.value.ndim == 1 and decl.rank >= 2)):
            return node.input[1]
    return None


def constant_labels(interp) -> tuple:
    """(constant, the ONNX name it came from) for the IR's messages; names that cannot be written safely are left
    out (the message then names the constant)."""
    return tuple((name, source) for name, source in sorted(interp.labels.items())
                 if name in interp.constants and isinstance(source, str) and safe_text(source))


# ---- values a loop carries that are not state tables --------------------------------------------------------------
# A chain's state vector (read and rewritten each iteration), a running reduction (c = max(c, x)), a list appended
# to: each becomes an emit table with one row per iteration (ir.PreviousRow reads the previous one), and the loop's
# output is computed from it after the kernel (ir.Final).


@dataclass
class CarriedValue:
    table: str  # the emit table of per-iteration rows
    init: str  # the ONNX name of the initial value
    shape: Optional[tuple]  # the value's shape (None for a list: its element's, found from the body)
    fold: str  # "": read and rewritten (recurrent); "append": a list; else the reduction op (max, min, add, mul)

    @property
    def recurrent(self) -> bool:
        return self.fold == ""


REDUCERS = {"Max": "max", "Min": "min", "Add": "add", "Mul": "mul", "Sum": "add"}
APPENDS = {"SequenceInsert": "append"}


def carried_value(outer, body, in_name: str, out_name: str, init_name: str, k: int, element: str = "float32"):
    """(body, binding of the body's input, CarriedValue) for a float value of static shape with no node dimension or
    an empty list that a loop carries; None for anything else (a state table, or refused as one). The body returned
    has the fold op replaced by its operand when the value is only folded (c = max(c, x), c.append(x))."""
    init = outer.lookup(init_name)
    producer = outer.producer.get(init_name)
    if producer is not None and producer.op_type == "SequenceEmpty" and producer.domain in ("", "ai.onnx"):
        appended = _fold_of(body, in_name, out_name, APPENDS)
        if appended is None:
            raise Refusal(f"loop-carried list {init_name} is used other than by appending one value per iteration",
                          hint="append one tensor per iteration and stack the list after the loop")
        return appended[0], Known(np.zeros(0, dtype=element)), CarriedValue(f"carry{k}", init_name, None, "append")
    shape = _carried_value_shape(init, element)
    if shape is None:
        return None
    folded = _fold_of(body, in_name, out_name, REDUCERS)
    if folded is not None:  # the input is no longer read
        return folded[0], Known(np.zeros(shape, dtype=element)), CarriedValue(f"carry{k}", init_name, shape,
                                                                              folded[1])
    width = int(np.prod(shape, dtype=np.int64))
    return body, Row(ir.PreviousRow(f"carry{k}", init_name, width), shape), CarriedValue(f"carry{k}", init_name,
                                                                                          shape, "")


def carried_tables(interp, paths, carried: dict, tables: list) -> tuple:
    """For carried values {body output slot: (CarriedValue, the region's output name)}: appends their emit tables to
    `tables`; returns (emit slots, finals)."""
    slots, finals = [], []
    for slot, (value, output) in carried.items():
        _, got = row_of(interp, paths[0][1][slot], f"loop-carried {value.init}")
        if value.shape is not None and tuple(got) != tuple(value.shape):
            raise Refusal(f"loop-carried {value.init} changes shape from {list(value.shape)} to {list(got)}")
        slots.append((slot, value.table, int(np.prod(got, dtype=np.int64))))
        tables.append(ir.TableDecl(value.table, tuple(got), None, "", kind="emit"))
        if output:
            kind = {"": "last", "append": "sequence"}.get(value.fold, "reduce")
            finals.append(ir.Final(output, kind, value.table, value.init, value.fold if kind == "reduce" else "none"))
    return slots, finals


def carried_decls(values, element: str = "float32") -> list:
    """Kernel inputs for the initial values of recurrent carried values (read at the first position); values that
    start from one ONNX value (h and c from one merged zeros) share its input."""
    decls = {v.init: ir.InputDecl(v.init, "array", element, len(v.shape), tuple(v.shape[1:]),
                                  rows=int(v.shape[0]) if v.shape else 1) for v in values if v.recurrent}
    return list(decls.values())


def _carried_value_shape(init, element: str = "float32"):
    """The static shape of a float value (of the region's element type) a loop carries that has no node dimension
    (rank 0 or 1, or a leading unit dimension: PyTorch's `torch.zeros(1, H)`), else None."""
    shape = None
    if isinstance(init, Known) and init.value.dtype == np.dtype(element):
        shape = tuple(init.value.shape)
    elif isinstance(init, Array) and init.dtype == element and init.shape is not None \
            and all(isinstance(d, int) for d in init.shape):
        shape = tuple(init.shape)
    if shape is not None and (len(shape) <= 1 or shape[0] == 1):
        return shape
    return None  # a state table [N, ...] (or refused as one)


def _fold_of(body, name: str, out: str, ops: dict):
    """When the body only folds its carried input `name` into its output `out` with one op of `ops` (c = max(c, x),
    c.append(x)) and nothing else reads it: (the body with that op replaced by x, the op's name in `ops`); else
    None."""
    used_inside = {i for n in body.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH
                   for i in used_names(a.g)}  # a branch returning it reads it too
    consumers = lambda x: [n for n in body.node if x in n.input]  # noqa: E731
    if name in used_inside or name == out:
        return None
    fold = consumers(name)
    if len(fold) != 1 or fold[0].op_type not in ops or len(fold[0].input) != 2 or \
            list(fold[0].input).count(name) != 1 or fold[0].domain not in ("", "ai.onnx"):
        return None
    if fold[0].op_type == "SequenceInsert" and fold[0].input[0] != name:
        return None
    result = fold[0].output[0]
    while result != out:  # identities between the fold and the output
        users = consumers(result)
        if result in used_inside or len(users) != 1 or users[0].op_type != "Identity":
            return None
        result = users[0].output[0]
    if consumers(result) or result in used_inside:
        return None
    other = next(i for i in fold[0].input if i != name)
    rewritten = onnx.GraphProto()
    rewritten.CopyFrom(body)
    index = list(body.node).index(fold[0])
    rewritten.node[index].CopyFrom(onnx.helper.make_node("Identity", [other], [fold[0].output[0]]))
    return rewritten, ops[fold[0].op_type]

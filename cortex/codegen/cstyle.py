"""What the C++ (CPU) and CUDA emitters share: C literals, the host-side code every kernel runs before the
recursion (input checks, the per-position `prepare` that evaluates predicates and indices with ONNX semantics), and
the element renderer that turns a row expression into C code for one element (each op from the op table's code for
the target; leaves read through per-position pointers; rearrangements become index arithmetic).

A target differs only in its `Dialect`: where the per-position values live and how a buffer element is addressed.
"""
from __future__ import annotations

import re

import numpy as np

from ..ir import nodes as ir
from ..ir import ops
from ..ir.printer import ScalarSyntax, format_index, format_pred, render_index, render_pred
from .plan import MASK, ROW, VALUE, Access, CodegenError, KernelPlan


def cfloat(x: float) -> str:
    x = float(np.float32(x))
    if np.isnan(x):  # <cmath>'s macros: constants in host and device code alike (numeric_limits is host-only)
        return "NAN"
    if np.isinf(x):
        return ("-" if x < 0 else "") + "INFINITY"
    return f"{x.hex()}f"


def cdouble(x: float) -> str:
    """A float64 literal (a float64 kernel's constants: the value exactly, no rounding to float32)."""
    x = float(x)
    if np.isnan(x):
        return "std::numeric_limits<double>::quiet_NaN()"
    if np.isinf(x):
        return ("-" if x < 0 else "") + "std::numeric_limits<double>::infinity()"
    return x.hex()


REALS = {"float32": ("float", cfloat), "float64": ("double", cdouble)}  # element type -> (C type, literal)


def creal(program: ir.Program) -> str:
    """The C type of a program's float values: `float`, or `double` for a float64 program."""
    return REALS[program.element][0]


def cstr(s: str) -> str:
    """`s` as the inside of a C++ string literal: quotes, backslashes, '?' (trigraphs) and control characters are
    escaped (octal: bounded, unlike \\x), so no name can end the literal or the line."""
    out = []
    for ch in str(s):
        if ch in '"\\?':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\{ord(ch):03o}")
        else:
            out.append(ch)
    return "".join(out)


INT64_MAX = (1 << 63) - 1


def cint(value, lo: int = -INT64_MAX, hi: int = INT64_MAX) -> str:
    """An integer for generated C++, in decimal: only a Python int (not a bool, not a numpy scalar, not a subclass
    that could print itself as anything) within [lo, hi]; anything else is a CodegenError, never text in the
    kernel."""
    if type(value) is not int or not lo <= value <= hi:
        raise CodegenError(f"not an integer in [{lo}, {hi}] for generated code: {type(value).__name__} {value!r:.40}")
    return int.__repr__(value)


def cints(values, empty: str = "", lo: int = -INT64_MAX) -> str:
    """Integers as a C++ initializer list body ("1, 2, 3"), `empty` when there are none."""
    return ", ".join(cint(v, lo=lo) for v in values) or empty


def comment(s: str) -> str:
    """Text safe inside a // comment: one line, printable ASCII (no line splice at the end)."""
    text = re.sub(r"[^ -~]", "?", str(s))
    return text.rstrip("\\")[:300]


DTYPES = {"int64": ("int64_t", "CORTEX_INT64"), "int32": ("int32_t", "CORTEX_INT32"),
          "bool": ("uint8_t", "CORTEX_BOOL"), "float32": ("float", "CORTEX_FLOAT"),
          "float64": ("double", "CORTEX_DOUBLE")}


class HostSyntax(ScalarSyntax):
    """Index expressions as host C++ over the kernel's context `cx`: loads follow ONNX Gather semantics (negative ids
    wrap, out of range throws a KernelError naming the array and the position)."""

    def __init__(self, plan: KernelPlan):
        self.plan = plan

    def const(self, value: int) -> str:
        return "INT64_MIN" if value == -INT64_MAX - 1 and type(value) is int else f"INT64_C({cint(value)})"

    def arith(self, op: str, a: str, b: str) -> str:
        # ONNX Runtime's integer Add, Sub and Mul wrap around (as the IR folds them: ir.index.wrap64); signed
        # overflow in C++ is undefined, so the generated code never writes `a + b` on int64 values
        return f"cortex::wrapping_{op}({a}, {b})"

    def load(self, e: ir.Load, index: str) -> str:
        a = self.plan.array_ids[e.array]
        row = f"cortex::normalize_index({index}, cx.{a}_rows, \"{cstr(e.array)}\", p)"
        element = f"cx.{a}[{row}]" if e.column is None else f"cx.{a}[{row} * cx.{a}_cols + {e.column}]"
        if self.plan.program.input(e.array).dtype == "bool":
            return f"static_cast<int64_t>({element} != 0)"
        return f"static_cast<int64_t>({element})"

    def length(self, e: ir.Length) -> str:
        if e.array is None:
            return "cx.N" if table_lead(self.plan.program) == 1 else f"cx.table_dims[{cint(e.axis, lo=0)}]"
        a = self.plan.array_ids[e.array]
        if e.axis == 0 and self.plan.program.input(e.array).lead == 1:
            return f"cx.{a}_rows"
        return f"cx.{a}_shape[{cint(e.axis, lo=0)}]"

    def call(self, op: str, a: str, b: str) -> str:
        if op in ("max", "min"):
            return f"std::{op}<int64_t>({a}, {b})"
        return f"cortex::i{op}({a}, {b}, p)"

    def guard(self, pred: str, value: str, message: str) -> str:
        return f"cortex::guard({pred}, {value}, \"{cstr(message)}\", p)"

    def host_value(self, var: str) -> str:
        return f"hv_{var}"  # prepare's local (host_state_lines)

    def host_element(self, var: str, index: str) -> str:
        return (f"ht_{var}[cortex::normalize_index({index}, static_cast<int64_t>(ht_{var}.size()), "
                f"\"{cstr(var)}\", p)]")


# ---- host code shared by every target --------------------------------------------------------------------------


def signature_source(plan: KernelPlan) -> str:
    """The kernel's signature (kernel_abi.h's cortex_kernel_signature): element type, rank and every dimension (-1:
    dynamic) of each input, in the kernel's order (runtime arrays and initial tables as the program declares them,
    then the prepared constants with their full static shape), and of each output (the program's tables, of its
    element type, [rows, *inner]). The EP refuses a model that declares anything else and checks every run against it."""
    def tensor(kind: str, k: int, dtype: str, dims, leading_dynamic: bool) -> tuple:
        if dtype not in DTYPES:
            raise CodegenError(f"{kind} {k} has element type {dtype!r}, which kernels do not exchange")
        name = f"k{kind.capitalize()}{k}Dims"
        values = ["-1"] * leading_dynamic + ["-1" if d is None else cint(d, lo=0) for d in dims]
        array = f"const int64_t {name}[] = {{{', '.join(values)}}};" if values else None
        entry = f"{{{DTYPES[dtype][1]}, {cint(len(values), lo=0, hi=32)}, {name if values else 'nullptr'}}}"
        return array, entry

    inputs, outputs = [], []
    for k, inp in enumerate(plan.inputs):
        if inp.kind == "const":
            inputs.append(tensor("input", k, inp.array.dtype.name, inp.array.shape, False))
            continue
        d = plan.program.input(inp.name)
        cint(d.rank, lo=0, hi=32)  # an int before it is compared
        if d.kind == "shape":  # the int64 shape vector of a table of zeros: one value per table dimension
            inputs.append(tensor("input", k, "int64", (d.rank,), False))
            continue
        if d.dynamic_inner:  # an edge list [K, E]: every dimension dynamic
            inputs.append(tensor("input", k, d.dtype, (None,) * (d.rank - 1), True))
            continue
        if d.rank and len(d.inner) != d.rank - d.lead:
            raise CodegenError(f"input {comment(d.name)} of rank {d.rank} declares {len(d.inner)} inner dimensions")
        inputs.append(tensor("input", k, d.dtype, _declared_dims(d)[1:], d.rank >= 1))
    for k, t in enumerate(plan.program.tables):
        outputs.append(tensor("output", k, plan.program.element, (None,) * (t.lead - 1) + tuple(t.inner), True))
    lines = ["// The kernel's signature: the EP holds the model's declarations and every run to it (kernel_abi.h).",
             "namespace {"]
    lines += [array for array, _ in inputs + outputs if array]
    for kind, entries in (("Inputs", inputs), ("Outputs", outputs)):
        if entries:
            lines.append(f"const CortexTensorSignature kSignature{kind}[] = {{")
            lines += [f"    {entry}," for _, entry in entries]
            lines.append("};")
    pointer = {kind: f"kSignature{kind}" if entries else "nullptr" for kind, entries in
               (("Inputs", inputs), ("Outputs", outputs))}
    lines += [f"const CortexSignature kSignature = {{{cint(len(inputs))}, {cint(len(outputs))}, {pointer['Inputs']}, "
              f"{pointer['Outputs']}}};",
              "}  // namespace",
              'extern "C" CORTEX_EXPORT const CortexSignature* cortex_kernel_signature(void) { return &kSignature; }']
    return "\n".join(lines) + "\n"


def host_context_fields(plan: KernelPlan) -> list:
    """Ctx members for the runtime arrays (host copies of the structure arrays are what `prepare` reads), the shape of
    the arrays whose dimensions the host reads, and a grid's table dimensions."""
    lines = ["  int64_t N = 0, L = 0;"]
    lead = table_lead(plan.program)
    if lead > 1:
        lines.append(f"  int64_t table_dims[{cint(lead, lo=2, hi=8)}] = {{}};  // the state tables' leading dimensions")
    shaped = shaped_arrays(plan.program)
    for d in plan.program.inputs:
        if d.kind == "array":
            a = plan.array_ids[d.name]
            ctype = DTYPES[d.dtype][0]
            lines.append(f"  const {ctype}* {a} = nullptr; int64_t {a}_rows = 0, {a}_cols = 1;  // {comment(d.name)}")
            if d.name in shaped:
                lines.append(f"  const int64_t* {a}_shape = nullptr;  // its dimensions")
    return lines


def table_lead(program: ir.Program) -> int:
    """The state tables' leading dimensions (1: [N, ...]; 2: a grid [R, C, ...])."""
    return max((t.lead for t in program.tables if t.kind == "state"), default=1)


def shaped_arrays(program: ir.Program) -> set:
    """The runtime arrays whose dimensions the host reads: several leading dimensions, checked sizes, or a size the
    recursion reads (Length of another axis)."""
    roots = [program.trip] if program.trip is not None else []
    for case in program.cases:
        roots += [case.predicate] + ([case.target] if case.target is not None else []) + [x for _, x in case.writes]
    read = {e.array for e in ir.walk(roots) if isinstance(e, ir.Length) and e.array is not None and e.axis}
    return read | {d.name for d in program.inputs if d.kind == "array" and (d.lead > 1 or d.checked)}


def _declared_dims(d: ir.InputDecl) -> list:
    """Every dimension of an input as the kernel checks it: None where dynamic (the leading ones, checked ones)."""
    if d.rank == 0:
        return []
    return [None if a < d.lead or a in d.checked else x for a, x in enumerate([None] * d.lead + list(d.inner))]


def _inner_dims(d: ir.InputDecl) -> str:
    """check_input's dimensions after the first: -1 where dynamic."""
    return cints([-1 if x is None else x for x in _declared_dims(d)[1:]], "0", lo=-1)


def _rows(d: ir.InputDecl, i: int) -> str:
    """An input's rows: the product of its leading dimensions; none where a checked size differs."""
    if d.rank == 0:
        return "1"
    rows = " * ".join(f"inputs[{i}].shape[{k}]" for k in range(d.lead))
    if d.checked:
        same = " && ".join(f"inputs[{i}].shape[{a}] == {cint(d.inner[a - d.lead], lo=0)}" for a in d.checked)
        rows = f"({same}) ? {rows} : INT64_C(0)"
    return rows


def check_array_inputs(plan: KernelPlan, host_data) -> list:
    """Lines checking each runtime array (dtype, rank, static dims) and setting cx.aK (via host_data(i), the host
    pointer of input i), cx.aK_rows, cx.aK_cols."""
    lines = []
    shaped = shaped_arrays(plan.program)
    for i, d in enumerate(plan.program.inputs):
        if d.kind != "array":
            continue
        a = plan.array_ids[d.name]
        ctype, dt = DTYPES[d.dtype]
        inner = "-1" if d.dynamic_inner else _inner_dims(d)
        lines.append(f"    {{ static const int64_t inner[] = {{{inner}}};")
        lines.append(f"      cortex::check_input(inputs[{i}], \"{cstr(d.name)}\", {dt}, {cint(d.rank, lo=0, hi=32)}, inner);")
        lines.append(f"      cx.{a} = static_cast<const {ctype}*>({host_data(i, d)});")
        cols = f" cx.{a}_cols = {int(np.prod(d.inner, dtype=np.int64))};" if d.rank >= 2 else ""
        if d.dynamic_inner:
            cols = f" cx.{a}_cols = inputs[{i}].shape[1];"
        if d.name in shaped:
            cols += f" cx.{a}_shape = inputs[{i}].shape;"
        if d.rows is not None:
            cols += (f" if (cx.{a}_rows != {cint(d.rows)}) throw cortex::KernelError(\"input '{cstr(d.name)}' must "
                     f"have {cint(d.rows)} rows, got \" + std::to_string(cx.{a}_rows));")
        lines.append(f"      cx.{a}_rows = {_rows(d, i)};{cols} }}")
    return lines


def check_const_inputs(plan: KernelPlan, assign) -> list:
    """Lines checking each prepared constant's shape; assign(input index, const id) stores its pointer."""
    lines = []
    for i, inp in enumerate(plan.inputs):
        if inp.kind == "const":
            dims = cints(inp.array.shape[1:], "0", lo=0)
            lines.append(f"    {{ static const int64_t inner[] = {{{dims}}};")
            lines.append(f"      cortex::check_input(inputs[{i}], \"{cstr(inp.name)}\", {DTYPES[inp.array.dtype.name][1]}, "
                         f"{cint(inp.array.ndim)}, inner);")
            lines.append(f"      if (inputs[{i}].shape[0] != {cint(inp.array.shape[0])}) throw cortex::KernelError(\"constant {cstr(inp.name)} has the wrong shape\");")
            lines.append(f"      {assign(i, plan.const_ids[inp.const])} }}")
    return lines


def zeros_shape_rows(d: ir.InputDecl, i: int, host_data, leading: str) -> str:
    """An expression checking the shape vector `d` (input i; host_data(i, d) its host pointer) of a table of zeros:
    the table's rows, its leading dimensions stored in `leading` (an int64_t array)."""
    inner = cints(d.inner, "0", lo=0)
    return (f"[&] {{ static const int64_t inner[] = {{{inner}}}; return cortex::zeros_table_rows(inputs[{i}], "
            f"{host_data(i, d)}, {cint(d.lead, lo=1, hi=8)}, inner, {cint(len(d.inner), lo=0, hi=32)}, "
            f"\"{cstr(d.name)}\", {leading}); }}()")


def rows_and_positions(plan: KernelPlan, syntax: HostSyntax, values: bool = True, host_data=None) -> list:
    """Lines setting cx.N (rows of the state tables) and cx.L (positions); values=False leaves out the checks that
    read the structure's values (structure_value_checks). host_data(i, decl): the host pointer of input i (the shape
    vector a table of zeros is made from)."""
    p = plan.program
    if p.mode == "visit":
        first = next((i for i, d in enumerate(p.inputs) if d.kind in ("init", "shape")), None)
        positions = f"    cx.L = std::max<int64_t>(0, {render_index(p.trip, syntax)});  // {comment(format_index(p.trip))}"
        if first is None:  # no state table (a chain carrying a vector)
            return ["    cx.N = 0;", positions]
        lead = table_lead(p)
        if p.inputs[first].kind == "shape":  # the rows (and a grid's dimensions) the shape vector gives
            leading = "cx.table_dims" if lead > 1 else "leading"
            return ["    { int64_t leading[1] = {0}; (void)leading;",
                    f"      cx.N = {zeros_shape_rows(p.inputs[first], first, host_data, leading)}; }}", positions]
        if lead == 1:
            return [f"    cx.N = inputs[{first}].rank >= 1 ? inputs[{first}].shape[0] : 0;", positions]
        d = p.inputs[first]  # a grid: N = R * C rows, cell (i, j) at row i * C + j
        return [f"    {{ static const int64_t inner[] = {{{_inner_dims(d)}}};",
                f"      cortex::check_input(inputs[{first}], \"{cstr(d.name)}\", {DTYPES[p.element][1]}, {cint(d.rank, lo=0, hi=32)}, inner); }}",
                "    cx.N = 1;",
                f"    for (int k = 0; k < {cint(lead)}; ++k) {{ cx.table_dims[k] = inputs[{first}].shape[k]; cx.N *= cx.table_dims[k]; }}",
                positions]
    a = plan.array_ids[p.rows_from]
    lines = [f"    cx.N = cx.{a}_rows;", "    cx.L = cx.N;"] + (structure_value_checks(plan) if values else [])
    for d in p.inputs:  # a node input shorter or longer than the structure is an error, read or not
        if d.per_node:
            lines.append(f"    cortex::check_node_rows(cx.{plan.array_ids[d.name]}_rows, cx.N, \"{cstr(d.name)}\", "
                         f"\"{cstr(p.rows_from)}\");")
    return lines


def structure_value_checks(plan: KernelPlan) -> list:
    """Lines checking the structure's values before prepare (a TreeRec's children: -1 or a node)."""
    p = plan.program
    if p.mode != "dag":
        return []
    a = plan.array_ids[p.rows_from]
    return [f"    for (int64_t i = 0; i < cx.N * cx.{a}_cols; ++i) cortex::child_index(cx.{a}[i], cx.N, "
            f"\"{cstr(p.rows_from)}\", i / cx.{a}_cols);"]


def relies_on_zero_inits(program: ir.Program) -> bool:
    """True when a table derived from another starts at zeros because that one does (lift_member_products): the
    initial tables the model fills with zeros must then be zeros."""
    return program.mode == "visit" and any(t.kind == "state" and t.init is None for t in program.tables)


def allocate_tables(plan: KernelPlan, pointer: str, init_copy, zero_fill, zero_check=None, host_data=None) -> list:
    """Lines allocating each state or output table as the kernel's output and giving it its first value: the
    checked initial table (init_copy(input index, table id, table) copies it in) or zeros (zero_fill(table id,
    rows expression, table)), also for a table given by its shape vector (checked: host_data(i, decl) is its host
    pointer). `pointer` is where the table pointers live ("cx" on the CPU, "P" on the GPU).
    zero_check(input index, table id, table): a line checking that an initial table is zeros, where
    relies_on_zero_inits (the GPU trusts the frontend's proof)."""
    p = plan.program
    lines = []
    for k, t in enumerate(p.tables):
        rows = "cx.N" if t.kind == "state" else "cx.L"
        leading = [rows] if t.lead == 1 else [f"cx.table_dims[{d}]" for d in range(t.lead)]
        dims = ", ".join(leading + [cint(d, lo=0) for d in t.inner])
        rank = cint(t.lead + len(t.inner), lo=1, hi=32)
        tid = plan.table_ids[t.name]
        lines.append(f"    {{ const int64_t shape[{rank}] = {{{dims}}};")
        lines.append(f"      {pointer}.{tid} = static_cast<{creal(p)}*>(alloc_output(alloc_context, {k}, shape, {rank}));")
        lines.append(f"      if ({pointer}.{tid} == nullptr && {rows} > 0) throw cortex::KernelError(\"could not allocate output {cstr(t.output)}\");")
        if t.init is not None and p.input(t.init).kind == "shape":
            i = next(j for j, d in enumerate(p.inputs) if d.name == t.init)
            lead = cint(t.lead, lo=1, hi=8)
            lines.append(f"      {{ int64_t leading[{lead}] = {{}}; (void){zeros_shape_rows(p.inputs[i], i, host_data, 'leading')};")
            lines.append(f"        for (int d = 0; d < {lead}; ++d) if (leading[d] != shape[d]) throw cortex::KernelError(\"state "
                         f"tables must have the same leading dimensions (Cortex limitation): the shape {cstr(t.init)} gives \" + "
                         "std::to_string(leading[d]) + \" in dimension \" + std::to_string(d) + \", expected \" + "
                         "std::to_string(shape[d])); }")
            lines.append(f"      {zero_fill(tid, rows, t)} }}")
        elif t.init is not None:
            i = next(j for j, d in enumerate(p.inputs) if d.name == t.init)
            inner = cints([-1] * (t.lead - 1) + list(t.inner), lo=-1)
            lines.append(f"      static const int64_t inner[] = {{{inner}}};")
            lines.append(f"      cortex::check_input(inputs[{i}], \"{cstr(t.init)}\", {DTYPES[p.element][1]}, {rank}, inner);")
            if t.lead == 1:
                lines.append(f"      if (inputs[{i}].shape[0] != cx.N) throw cortex::KernelError(\"state tables must have the same number of rows (Cortex limitation): {cstr(t.init)} has \" + std::to_string(inputs[{i}].shape[0]) + \", expected \" + std::to_string(cx.N));")
            else:
                lines.append(f"      for (int d = 0; d < {cint(t.lead)}; ++d) if (inputs[{i}].shape[d] != cx.table_dims[d]) throw cortex::KernelError(\"state tables must have the same leading dimensions (Cortex limitation): {cstr(t.init)} has \" + std::to_string(inputs[{i}].shape[d]) + \" in dimension \" + std::to_string(d) + \", expected \" + std::to_string(cx.table_dims[d]));")
            if zero_check is not None and p.inputs[i].zeros and relies_on_zero_inits(p):
                lines.append(f"      {zero_check(i, tid, t)}")
            lines.append(f"      {init_copy(i, tid, t)} }}")
        else:
            lines.append(f"      {zero_fill(tid, rows, t)} }}")
    return lines


def linearize_call(plan: KernelPlan) -> str:
    """The host linearizer's call for this recursion (a DAG's own order, or the visit order of a Loop; the members of
    child sets are reads too)."""
    if plan.program.mode == "dag":
        return "ws.linearizer.dag(cx.N, ws.case_id.data(), kNumCases, ws.reads.data(), kReads, ws.schedule)"
    if ir.is_sequential(plan.program):  # each position reads what the one before computed: in order, one by one
        return "(ws.schedule.clear(), std::string())"
    members = ", ws.read_offsets.data(), ws.members.data()" if plan.max_sets else ""
    return ("ws.linearizer.visit(cx.N, ws.listed, ws.node.data(), ws.case_id.data(), kNumCases, ws.reads.data(), "
            f"kReads, ws.schedule{members})")


def hazard_call(plan: KernelPlan) -> str:
    """True when a position of the batch reads its own row (then the batch's rows are committed after it)."""
    members = ", ws.read_offsets.data(), ws.members.data()" if plan.max_sets else ""
    return f"cortex::reads_own_row(ws.node.data(), ws.reads.data(), kReads, batch, B{members})"


def set_arrays(plan: KernelPlan) -> str:
    """Workspace members for child sets (none when the program has no set)."""
    if not plan.max_sets:
        return ""
    buckets = max(len(_bucket_arrays(plan)), 1)
    return f"""
  // child sets: every position's members (CSR over positions: read_offsets), each set's [begin, end)
  static constexpr int64_t kSets = {cint(plan.max_sets)};
  std::vector<int64_t> members, read_offsets, set_begin, set_end;
  cortex::KeyBuckets buckets[{cint(buckets)}];

  void resize_sets(int64_t L) {{
    members.clear();
    read_offsets.assign(L + 1, 0);
    set_begin.resize(L * kSets);
    set_end.resize(L * kSets);
  }}"""


TREES = "trees"  # the key row of a padded forest's parent arrays [B, N]: each tree's keys name its own rows


def _bucket_key(encoding: str, arrays: tuple, bounds: tuple):
    """(array, row or None): the integer vector whose values key a set's members (a parent array, an edge list's
    targets: a vector, or a row of an edge list [2, E]; TREES: a padded forest's parent arrays); None for a CSR
    range."""
    if encoding == "parent":
        return arrays[0], None
    if encoding == "forest_parent":
        return arrays[0], TREES
    if encoding == "edges":
        return arrays[1], None
    if encoding == "edge_index":
        return arrays[0], int(bounds[1].value)
    return None


def _bucket_arrays(plan: KernelPlan) -> list:
    """The key vectors of the program's child sets, each once, in order."""
    keys = []
    for cp in plan.cases:
        for members in cp.layout.sets:
            key = _bucket_key(*members)
            if key is not None and key not in keys:
                keys.append(key)
    return keys


def _key_vector(plan: KernelPlan, key) -> tuple:
    """(pointer, count) of a key vector in the kernel's host context."""
    name, row = key
    a = plan.array_ids[name]
    if row is None:
        return f"cx.{a}", f"cx.{a}_rows"
    return f"cx.{a} + {cint(row)} * cx.{a}_cols", f"cx.{a}_cols"


def _set_lines(plan: KernelPlan, syntax, s: int, members) -> list:
    """Lines appending set s's members for position q to ws.members."""
    encoding, arrays, bounds = members
    ids = plan.array_ids
    dtype = {d.name: DTYPES[d.dtype][0] for d in plan.program.inputs if d.kind == "array"}
    lines = [f"        ws.set_begin[q * Workspace::kSets + {s}] = static_cast<int64_t>(ws.members.size());"]
    if encoding == "range":
        a = ids[arrays[0]]
        lines += [f"        {{ int64_t i0, i1; cortex::slice_bounds({render_index(bounds[0], syntax)}, "
                  f"{render_index(bounds[1], syntax)}, cx.{a}_rows, &i0, &i1);",
                  f"          for (int64_t i = i0; i < i1; ++i) ws.members.push_back(cortex::normalize_index("
                  f"static_cast<int64_t>(cx.{a}[i]), cx.N, \"a member listed by {cstr(arrays[0])}\", p)); }}"]
    else:
        key = _bucket_key(encoding, arrays, bounds)
        b = _bucket_arrays(plan).index(key)
        if encoding in ("parent", "forest_parent"):
            push = "ws.members.push_back(cortex::normalize_index(u, cx.N, \"a member of a parent array\", p));"
        else:
            source = (f"cx.{ids[arrays[0]]}" if encoding == "edges" else
                      f"(cx.{ids[arrays[0]]} + {cint(bounds[2].value)} * cx.{ids[arrays[0]]}_cols)")
            push = (f"ws.members.push_back(cortex::normalize_index(static_cast<int64_t>({source}[u]), cx.N, "
                    f"\"a member listed by {cstr(arrays[0])}\", p));")
        if encoding == "edge_index" and len(bounds) == 4:  # the model gathers the whole source row
            a, row = ids[arrays[0]], cint(bounds[2].value)
            lines.append(f"        if (!sources_checked) {{ cortex::check_row_ids(cx.{a} + {row} * cx.{a}_cols, "
                         f"cx.{a}_cols, cx.N, \"{cstr(arrays[0])}\", p); sources_checked = true; }}")
        if encoding == "edges" and len(bounds) == 2:  # the model gathers every source, beside the targets' mask
            a, d = ids[arrays[0]], ids[arrays[1]]
            lines.append(f"        if (!sources_checked) {{ cortex::check_same_length(cx.{a}_rows, cx.{d}_rows, "
                         f"\"{cstr(arrays[0])}\", \"{cstr(arrays[1])}\"); cortex::check_row_ids(cx.{a}, cx.{a}_rows, "
                         f"cx.N, \"{cstr(arrays[0])}\", p); sources_checked = true; }}")
        each = f"each<{dtype[key[0]]}>(" if encoding != "forest_parent" else \
            f"each_in_tree<{dtype[key[0]]}>({render_index(bounds[1], syntax)}, "
        lines.append(f"        ws.buckets[{b}].{each}{render_index(bounds[0], syntax)}, "
                     f"[&](int64_t u) {{ {push} }});  // {comment(encoding)} {comment(', '.join(arrays))}")
    lines.append(f"        ws.set_end[q * Workspace::kSets + {s}] = static_cast<int64_t>(ws.members.size());")
    return lines


class MemoLoads:
    """A HostSyntax whose loads of input arrays are evaluated once per position: the first evaluation, wherever the
    code reaches it first (so range errors are raised where and as they were), stores the value; later ones read it
    (cortex::memo_load, a call so that two operands reaching one load stay sequenced). The compiler cannot do this
    itself (the workspace's stores might alias the inputs), and the case predicates and a case's node, reads and
    slots repeat the same loads (`left[order[p]]`, `order[p]`...). prepare_fn renders only those with it: set members
    and host-state updates keep the plain syntax, and loads that read the host state (hv_, ht_: updated as positions
    go) are left as they are."""

    def __init__(self, syntax: HostSyntax):
        self._syntax = syntax
        self._names = {}  # a load's text -> its slot's number, the load as IR text

    def __getattr__(self, name):
        return getattr(self._syntax, name)

    def load(self, e: ir.Load, index: str) -> str:
        text = self._syntax.load(e, index)
        if "hv_" in text or "ht_" in text:
            return text
        k, _ = self._names.setdefault(text, (len(self._names), format_index(e)))
        return f"cortex::memo_load(have{k}, load{k}, [&] {{ return {text}; }})"

    def declarations(self) -> list:
        """The per-position slots, declared at the top of the position's loop body."""
        return [f"    int64_t load{k} = 0; bool have{k} = false;  // {comment(label)}"
                for k, label in self._names.values()]


def prepare_fn(plan: KernelPlan, syntax: HostSyntax) -> str:
    """Evaluates every position's case and indices on the host (ONNX index semantics and errors), keeping the
    positions that write something, in order: ws.case_id, ws.position, ws.node, ws.reads, ws.slots, ws.listed."""
    p = plan.program
    lines = [
        "// Evaluates every position's case and indices on the host (ONNX index semantics and errors),",
        "// keeping the positions that write something, in order.",
        "static void prepare(Ctx& cx, Workspace& ws) {",
        "  ws.resize_positions(cx.L);",
    ]
    if plan.max_sets:
        dtype = {d.name: DTYPES[d.dtype][0] for d in p.inputs if d.kind == "array"}
        lines.append("  ws.resize_sets(cx.L);")
        parents = {a for cp in plan.cases for enc, arrays, _ in cp.layout.sets if enc in ("parent", "forest_parent")
                   for a in arrays}
        for cp in plan.cases:
            for encoding, arrays, bounds in cp.layout.sets:
                if encoding == "edge_index":  # the rows an edge list must have
                    rows = 1 + max(int(bounds[1].value), int(bounds[2].value))
                    lines.append(f"  cortex::check_edge_rows(cx.{plan.array_ids[arrays[0]]}_rows, {cint(rows)}, "
                                 f"\"{cstr(arrays[0])}\");")
        for b, key in enumerate(_bucket_arrays(plan)):
            a = plan.array_ids[key[0]]
            if key[0] in parents:  # one parent per state row
                lines.append(f"  cortex::check_parent_rows(cx.{a}_rows, cx.N, \"{cstr(key[0])}\");")
            if key[1] == TREES:  # [B, N], one tree per row (its entries are checked to be the tables' rows above)
                lines.append(f"  ws.buckets[{b}].build_trees<{dtype[key[0]]}>(cx.{a}, cx.{a}_shape[0], cx.{a}_shape[1]);"
                             f"  // members by {comment(key[0])}, tree by tree")
                continue
            pointer, count = _key_vector(plan, key)
            lines.append(f"  ws.buckets[{b}].build<{dtype[key[0]]}>({pointer}, {count}, cx.N);  // members by "
                         f"{comment(key[0])}" + (f" row {key[1]}" if key[1] is not None else ""))
    lines += _host_state_lines(plan, syntax)
    if any((enc, len(bounds)) in (("edge_index", 4), ("edges", 2)) for cp in plan.cases
           for enc, _, bounds in cp.layout.sets):
        lines.append("  bool sources_checked = false;  // a whole source row of an edge list, once read")
    plain, syntax = syntax, MemoLoads(syntax)
    lines += [
        "  int64_t q = 0;",
        "  for (int64_t p = 0; p < cx.L; ++p) {",
    ]
    memo_at = len(lines)
    lines.append("    int32_t c = -1;")
    for c, case in enumerate(p.cases):
        cond = "if" if c == 0 else "else if"
        lines.append(f"    {cond} ({render_pred(case.predicate, syntax)}) c = {c};  // {comment(format_pred(case.predicate))}")
    lines += ["    if (c < 0) continue;",
              "    ws.case_id[q] = c;",
              "    ws.position[q] = p;",
              "    int64_t* reads = &ws.reads[q * kReads];",
              "    int64_t* slots = &ws.slots[q * kSlots];",
              "    std::fill(reads, reads + kReads, INT64_C(-1));"]
    if plan.max_sets:
        lines.append("    ws.read_offsets[q] = static_cast<int64_t>(ws.members.size());")
    lines += ["    switch (c) {"]
    for cp in plan.cases:
        case, layout = cp.case, cp.layout
        lines.append(f"      case {cp.index}: {{  // {comment(case.name)}")
        if case.target is None:
            lines.append("        ws.node[q] = -1;  // writes no state row")
        elif p.mode == "dag":
            lines.append(f"        ws.node[q] = {render_index(case.target, syntax)};")
        else:
            lines.append(f"        ws.node[q] = cortex::normalize_index({render_index(case.target, syntax)}, cx.N, "
                         f"\"the state row written\", p);  // {comment(format_index(case.target))}")
        for k, (index, missing_zero) in enumerate(layout.reads):
            fn = "cortex::child_index" if missing_zero else "cortex::normalize_index"
            lines.append(f"        reads[{k}] = {fn}({render_index(index, syntax)}, cx.N, \"a child state row\", p);"
                         f"  // {comment(format_index(index))}")
        for s, (key, kind, source) in enumerate(layout.slots):
            if kind == MASK:
                lines.append(f"        slots[{s}] = {render_pred(key, syntax)} ? 1 : 0;  // {comment(format_pred(key))}")
            elif kind == VALUE:
                lines.append(f"        slots[{s}] = {render_index(key, syntax)};  // {comment(format_index(key))}")
            else:
                rows = (f"INT64_C({p.constants[source].shape[0]})" if source in p.constants
                        else f"cx.{plan.array_ids[source]}_rows")
                what = (f"the rows of {p.label(source)}, indexed by {format_index(key)}" if source in p.constants
                        else source)
                lines.append(f"        slots[{s}] = cortex::normalize_index({render_index(key, syntax)}, {rows}, "
                             f"\"{cstr(what)}\", p);  // {comment(format_index(key))}")
        for s, members in enumerate(layout.sets):
            lines += _set_lines(plan, plain, s, members)
        lines += _update_lines(case, plain)
        if not case.writes:
            lines.append("        continue;  // only host state changes: nothing for the kernel to run")
        lines += ["        break;", "      }"]
    lines += ["    }", "    ++q;", "  }", "  ws.listed = q;"]
    lines[memo_at:memo_at] = syntax.declarations()
    if plan.max_sets:
        lines.append("  ws.read_offsets[q] = static_cast<int64_t>(ws.members.size());")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _host_state_lines(plan: KernelPlan, syntax) -> list:
    """Declarations of the integer state the loop carries (ir.HostVar), as prepare's locals at their first values."""
    lines = []
    for var in plan.program.host_vars:
        init = render_index(var.init, syntax)
        if var.size is None:
            lines.append(f"  int64_t hv_{var.name} = {init};  // {comment(format_index(var.init))}")
        else:
            size = render_index(var.size, syntax)
            lines.append(f"  std::vector<int64_t> ht_{var.name}(static_cast<size_t>(cortex::host_table_size({size}, "
                         f"\"{cstr(var.name)}\")), {init});  // [{comment(format_index(var.size))}]")
    return lines


def _update_lines(case: ir.Case, syntax) -> list:
    """A case's host updates: every index and value from the state before the position, then assigned in order."""
    if not case.updates:
        return []
    lines, assigns = ["        {  // host state"], []
    for k, u in enumerate(case.updates):
        lines.append(f"          const int64_t u{k} = {render_index(u.value, syntax)};  // {comment(format_index(u.value))}")
        if u.index is None:
            assigns.append(f"          hv_{u.var} = u{k};")
        else:
            lines.append(f"          const int64_t i{k} = cortex::normalize_index({render_index(u.index, syntax)}, "
                         f"static_cast<int64_t>(ht_{u.var}.size()), \"{cstr(u.var)}\", p);")
            assigns.append(f"          ht_{u.var}[i{k}] = u{k};")
    return lines + assigns + ["        }"]


# A kernel's workspaces (kernel_support.h's WorkspacePool): declared after `struct Workspace`, leased by each run.
WORKSPACE_POOL = "cortex::WorkspacePool<Workspace> workspaces;  // one workspace per concurrent run, reused\n"
LEASE_WORKSPACE = ["    cortex::WorkspacePool<Workspace>::Lease lease(workspaces);",
                   "    Workspace& ws = *lease;"]

POSITION_ARRAYS = """  std::vector<int64_t> node, position, reads, slots;
  std::vector<int32_t> case_id;
  int64_t listed = 0;

  void resize_positions(int64_t L) {
    node.resize(L);
    position.resize(L);
    case_id.resize(L);
    reads.resize(L * kReads);
    slots.resize(L * kSlots);
  }"""


# ---- the element renderer ---------------------------------------------------------------------------------------


class Dialect:
    """Where a target keeps per-position values; the CPU kernel's layout (the CUDA emitter overrides)."""
    target = "cpp"
    zeros = "kZeros"
    index_table_decl = "alignas(64) const int32_t"

    def read(self, k):
        return f"ws.reads[q * kReads + {k}]"

    def slot(self, s):
        return f"ws.slots[q * kSlots + {s}]"

    def table(self, tid):
        return f"cx.{tid}"

    def const(self, cid):
        return f"cx.{cid}"

    def array(self, aid):
        return f"cx.{aid}"

    def projection(self, k):
        return f"cx.proj{k}"


# ---- the element renderer: a row expression as C code for one element j of a loop ---------------------------
# One table entry per node kind (a new kind adds its entry here): leaves declare a per-position pointer or value
# (POINTERS), rearrangements move the access (ADDRESSING), computed values become temporaries (VALUES).


def _child_state(r, node, name):
    k = r.cp.layout.reads.index((node.index, node.missing_zero))
    row = r.d.read(k)
    return (f"const {r.real}* {name} = {row} >= 0 ? {r.d.table(r.plan.table_ids[node.table])} + {row} * {node.width} "
            f": {r.d.zeros};  // {comment(node.table)}[{comment(format_index(node.index))}]")


def _const_row(r, node, name):
    s = r.cp.layout.slots.index((node.index, ROW, node.const))
    return (f"const {r.real}* {name} = {r.d.const(r.plan.const_ids[node.const])} + {r.d.slot(s)} * {node.width};"
            f"  // {comment(node.const)}[{comment(format_index(node.index))}]")


def _input_projection(r, node, name):
    s = r.cp.layout.slots.index((node.index, ROW, node.array))
    k = r.plan.projections.index((node.array, node.weight, node.bias))
    return (f"const {r.real}* {name} = {r.d.projection(k)} + {r.d.slot(s)} * {node.width};"
            f"  // ({comment(node.array)} @ {comment(node.weight)})[{comment(format_index(node.index))}]")


def _input_row(r, node, name):
    s = r.cp.layout.slots.index((node.index, ROW, node.array))
    return (f"const {r.real}* {name} = {r.d.array(r.plan.array_ids[node.array])} + {r.d.slot(s)} * {node.width};"
            f"  // {comment(node.array)}[{comment(format_index(node.index))}]")


def _mask(r, node, name):
    s = r.cp.layout.slots.index((node, MASK, None))
    return f"const bool {name} = {r.d.slot(s)} != 0;  // {comment(format_pred(node))}"


def _index_value(r, node, name):
    s = r.cp.layout.slots.index((node.index, VALUE, None))
    return f"const {r.real} {name} = static_cast<{r.real}>({r.d.slot(s)});  // {comment(format_index(node.index))}"


def _previous_row(r, node, name):
    s = r.cp.layout.slots.index(node.host_value()[1])
    table = r.d.table(r.plan.table_ids[node.table])
    return (f"const {r.real}* {name} = {r.d.slot(s)} >= 0 ? {table} + {r.d.slot(s)} * {node.width} : "
            f"{r.d.array(r.plan.array_ids[node.init])};  // the carried value: {comment(node.table)}[p - 1] or "
            f"{comment(node.init)}")


# kind -> (name prefix, declaration): what a leaf needs per position
POINTERS = {ir.ChildState: ("child", _child_state), ir.ConstRow: ("crow", _const_row), ir.PreviousRow: ("prev", _previous_row),
            ir.InputProjection: ("iproj", _input_projection), ir.InputRow: ("irow", _input_row),
            ir.BExpr: ("mask", _mask), ir.IndexValue: ("ival", _index_value)}


def _leaf_element(r, e, access, *walk):
    return f"{r.leaf_pointer(e, walk[-1])}[{r.index(access)}]"


def _const_vec(r, e, access, *walk):
    return f"{r.d.const(r.plan.const_ids[e.const])}[{r.index(access)}]"


def _scalar(r, e, access, *walk):
    return r.literal(e.value)


def _index_value_element(r, e, access, *walk):
    return r.leaf_pointer(e, walk[-1])


def _slice(r, e, access, w, *walk):
    return r.expr(e.x, access.shifted(e.start), w, *walk)


def _take(r, e, access, w, *walk):
    return r.expr(e.x, access.through(e.indices, w), w, *walk)


def _concat(r, e, access, w, *walk):
    lo, hi = access.span(w)
    col = 0
    for part in e.parts:
        if col <= lo and hi < col + part.width:
            return r.expr(part, access.shifted(-col), w, *walk)
        col += part.width
    raise CodegenError("a concatenation is read across its parts inside elementwise math")


# kind -> render(renderer, node, access, w, temps, code, pointers): elements read where they are
ADDRESSING = {ir.ChildState: _leaf_element, ir.ConstRow: _leaf_element, ir.InputRow: _leaf_element,
              ir.PreviousRow: _leaf_element,
              ir.InputProjection: _leaf_element, ir.ConstVec: _const_vec, ir.Scalar: _scalar,
              ir.IndexValue: _index_value_element, ir.Slice: _slice, ir.Take: _take, ir.Concat: _concat}


def _unary(r, e, access, *walk):
    return ops.render(e.op, r.op_target, {"x": r.expr(e.x, access, *walk)}, e.params, r.literal)


def _binary(r, e, access, *walk):
    a, b = r.expr(e.a, access, *walk), r.expr(e.b, access, *walk)
    return ops.render(e.op, r.op_target, {"a": a, "b": b}, (), r.literal)


def _select(r, e, access, *walk):
    m = r.leaf_pointer(e.pred, walk[-1])
    a, b = r.expr(e.a, access, *walk), r.expr(e.b, access, *walk)
    return f"({m} ? {a} : {b})"


def _where(r, e, access, *walk):
    c, a, b = (r.expr(x, access, *walk) for x in (e.cond, e.a, e.b))
    return f"({c} != 0.0f ? {a} : {b})"


# kind -> C expression of one element, kept in a temporary (computed once per element and access)
VALUES = {ir.Unary: _unary, ir.Binary: _binary, ir.Select: _select, ir.Where: _where}


class ElementRenderer:
    """C code for one element of row expressions of a case, over a loop variable j and a batch row b (position q):
    `pointers` collects the per-position declarations the code needs, `code` the temporaries, in order."""

    def __init__(self, plan: KernelPlan, cp, dialect: Dialect, index_table):
        self.plan, self.cp, self.d, self.index_table = plan, cp, dialect, index_table
        self.computing = None
        self.real, self.literal = REALS[plan.program.element]  # the C type of its values, their literals
        # the op table's dialect: a float64 kernel's own entries first (where a float literal would round)
        self.op_target = dialect.target + ("64" if plan.program.element == "float64" else "")

    def start(self, computing=None):
        """A new loop: fresh temporaries (and the buffered value it fills, which it must compute, not read)."""
        self.computing = computing
        return {}, [], {}

    def leaf_pointer(self, node, pointers) -> str:
        if node in pointers:
            return pointers[node][0]
        if isinstance(getattr(node, "index", None), ir.Member):  # a set member's row: declared per member
            name = f"mrow{len(pointers)}"
            base = (self.d.table(self.plan.table_ids[node.table]) if isinstance(node, ir.ChildState)
                    else self.d.array(self.plan.array_ids[node.array]))
            pointers[node] = (name, f"const {self.real}* {name} = {base} + u * {node.width};  // a member's row")
            return name
        kind = next((k for k in type(node).__mro__ if k in POINTERS), None)
        if kind is None:
            raise CodegenError(f"no pointer for {type(node).__name__}")
        prefix, declare = POINTERS[kind]
        name = f"{prefix}{len(pointers)}"
        pointers[node] = (name, declare(self, node, name))
        return name

    def index(self, access: Access) -> str:
        if access.const is not None:
            return cint(access.const)
        if access.indices is not None:
            return f"{self.index_table(access.indices)}[j]"
        return f"j + {access.offset}" if access.offset else "j"

    def expr(self, e, access: Access, w, temps, code, pointers) -> str:
        """C for the element of e that the loop's j reads through `access`."""
        access = access.normalized(e)
        buffers = self.cp.buffers
        if e in buffers and e != self.computing:
            idx = self.index(access)
            if isinstance(e, ir.LeftMatMul):  # element (r, c) sits at row (b, c), column r of the GEMM
                rows = e.width // e.cols
                return f"{buffers[e]}[(b * {e.cols} + ({idx}) % {e.cols}) * {rows} + ({idx}) / {e.cols}]"
            return f"{buffers[e]}[b * {e.width} + {idx}]"
        render = ADDRESSING.get(type(e))
        if render is not None:
            return render(self, e, access, w, temps, code, pointers)
        key = (e, access.key())
        if key in temps:
            return temps[key]
        render = VALUES.get(type(e))
        if render is None:
            raise CodegenError(f"row expression {type(e).__name__}")
        value = render(self, e, access, w, temps, code, pointers)
        name = f"v{len(temps)}"
        code.append(f"const {self.real} {name} = {value};")
        temps[key] = name
        return name

    def pieces(self, targets):
        """Root expressions split at a root concatenation: [(expr, dest, column offset)], grouped by width."""
        out = {}
        for expr, dest in targets:
            parts = expr.parts if isinstance(expr, ir.Concat) else (expr,)
            col = 0
            for part in parts:
                out.setdefault(part.width, []).append((part, dest, col))
                col += part.width
        return out


def dense(buffer: str, width: int):
    """Element i of row b of a [B, width] buffer."""
    return lambda i: f"{buffer}[b * {width} + {i}]"


def transposed(buffer: str, cols: int, k: int):
    """Element i = (kk, c) of a per-node [k, cols] matrix stored transposed: row (b, c), column kk."""
    return lambda i: f"{buffer}[(b * {cols} + ({i}) % {cols}) * {k} + ({i}) / {cols}]"


REDUCE = {"add": "({a} + {b})", "mul": "({a} * {b})", "max": "cortex::fmax_nan({a}, {b})",
          "min": "cortex::fmin_nan({a}, {b})"}

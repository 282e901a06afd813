"""Kernel plan -> C++ kernel source (CPU).

The generated kernel implements csrc/runtime/kernel_abi.h. Per run it:
1. checks its inputs, allocates the tables (initial values or zeros);
2. *prepares* every position on the host: evaluates the case predicates and every index the position uses
   (with ONNX's index semantics and errors), giving compact arrays: the row each position writes, the child
   rows it reads, the table rows it looks up and its masks and index values;
3. linearizes (csrc/runtime/linearize.h): level batches when the visit is a valid topological order (or the
   structure is a DAG), otherwise the exact sequential semantics, one position at a time;
4. runs each batch of one case through the plan's steps: per-batch buffers (matrix products with their input rows,
   reductions, rearranged values), one GEMM per product for the batch (bias in the GEMM), then one fused
   elementwise loop that computes the rows the case writes, and commits them.
Model shapes are compile-time constants; generated code carries comments naming the IR values.
"""
from __future__ import annotations

import re

import numpy as np

from ..ir import nodes as ir
from ..ir import ops
from ..ir.printer import ScalarSyntax, format_index, format_pred, render_index, render_pred
from .plan import MASK, ROW, VALUE, CodegenError, KernelInput, KernelPlan, pack_panels, plan_kernel  # noqa: F401

TARGET = "cpp"


def _cfloat(x: float) -> str:
    x = float(np.float32(x))
    if np.isnan(x):
        return "std::numeric_limits<float>::quiet_NaN()"
    if np.isinf(x):
        return ("-" if x < 0 else "") + "std::numeric_limits<float>::infinity()"
    return f"{x.hex()}f"


def _cstr(s: str) -> str:
    """A C++ string literal body: printable ASCII only, quotes and backslashes escaped."""
    out = []
    for ch in str(s):
        if ch in "\\\"":
            out.append("\\" + ch)
        elif " " <= ch <= "~" and ch != "?":
            out.append(ch)
        else:
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else "?")
    return "".join(out)


def comment(s: str) -> str:
    """Text safe inside a // comment: one line, printable ASCII (no line splice at the end)."""
    text = re.sub(r"[^ -~]", "?", str(s))
    return text.rstrip("\\")[:300]


_DTYPES = {"int64": ("int64_t", "CORTEX_INT64"), "int32": ("int32_t", "CORTEX_INT32"),
           "bool": ("uint8_t", "CORTEX_BOOL"), "float32": ("float", "CORTEX_FLOAT")}


class _CppSyntax(ScalarSyntax):
    """Index expressions as C++ over the kernel's Ctx: loads follow ONNX Gather semantics (negative ids wrap,
    out of range throws a KernelError naming the array and the position)."""

    def __init__(self, plan: KernelPlan):
        self.plan = plan

    def const(self, value: int) -> str:
        return f"INT64_C({value})"

    def load(self, e: ir.Load, index: str) -> str:
        a = self.plan.array_ids[e.array]
        row = f"cortex::normalize_index({index}, cx.{a}_rows, \"{_cstr(e.array)}\", p)"
        element = f"cx.{a}[{row}]" if e.column is None else f"cx.{a}[{row} * cx.{a}_cols + {e.column}]"
        if self.plan.program.input(e.array).dtype == "bool":
            return f"static_cast<int64_t>({element} != 0)"
        return f"static_cast<int64_t>({element})"

    def length(self, array) -> str:
        return f"cx.{self.plan.array_ids[array]}_rows" if array else "cx.N"

    def call(self, op: str, a: str, b: str) -> str:
        if op in ("max", "min"):
            return f"std::{op}<int64_t>({a}, {b})"
        return f"cortex::i{op}({a}, {b}, p)"

    def guard(self, pred: str, value: str, message: str) -> str:
        return f"cortex::guard({pred}, {value}, \"{_cstr(message)}\", p)"


class _Access:
    """Which element of a value a fused loop over j in [0, width) reads: `j + offset`, `indices[j]`, or one fixed
    element `const` (a width-1 value broadcast over the loop)."""

    def __init__(self, offset=0, indices=None, const=None):
        if indices is not None:
            indices = tuple(int(i) for i in indices)
            if all(b == a + 1 for a, b in zip(indices, indices[1:])):
                offset, indices = indices[0], None
        self.offset, self.indices, self.const = offset, indices, const

    def key(self):
        if self.const is not None:
            return ("const", self.const)
        return ("gather", self.indices) if self.indices is not None else ("affine", self.offset)

    def shifted(self, start):
        if self.const is not None:
            return _Access(const=self.const + start)
        if self.indices is None:
            return _Access(self.offset + start)
        return _Access(indices=[i + start for i in self.indices])

    def through(self, indices, width):
        if self.const is not None:
            return _Access(const=indices[self.const])
        if self.indices is None:
            return _Access(indices=indices[self.offset:self.offset + width])
        return _Access(indices=[indices[i] for i in self.indices])

    def span(self, width):
        if self.const is not None:
            return self.const, self.const
        if self.indices is None:
            return self.offset, self.offset + width - 1
        return min(self.indices), max(self.indices)


class CppGenerator:
    def __init__(self, program: ir.Program):
        self.plan = plan_kernel(program)
        self.p = program
        self.inputs = self.plan.inputs
        self.syntax = _CppSyntax(self.plan)
        self.index_tables = {}  # tuple of indices -> C identifier of a static table

    # ---- index expressions (host side) ------------------------------------------------------------

    def index_expr(self, e: ir.IExpr) -> str:
        return render_index(e, self.syntax)

    def pred_expr(self, e: ir.BExpr) -> str:
        return render_pred(e, self.syntax)

    # ---- source ---------------------------------------------------------------------------------

    def generate(self, identity: str) -> str:
        plan = self.plan
        body = [self.ctx_struct(), self.prepare_fn()]
        body += [self.case_fn(c) for c in plan.cases]
        body.append(self.dispatch_fn())
        tables = [f"alignas(64) const int32_t {name}[] = {{{', '.join(map(str, idx))}}};"
                  for idx, name in self.index_tables.items()]
        out = [HEADER.format(name=comment(self.p.name), identity=_cstr(identity)),
               WORKSPACE.format(cases=len(self.p.cases), reads=plan.max_reads, slots=plan.max_slots,
                                width=plan.max_width)]
        if tables:
            out.append("// element positions of rearranged values\n" + "\n".join(tables) + "\n")
        out += body
        out.append("}  // namespace\n")
        out.append(self.run_fn())
        return "\n".join(out)

    def ctx_struct(self) -> str:
        plan = self.plan
        lines = ["struct Ctx {", "  int64_t N = 0, L = 0;"]
        for d in self.p.inputs:
            if d.kind == "array":
                a = plan.array_ids[d.name]
                ctype = _DTYPES[d.dtype][0]
                lines.append(f"  const {ctype}* {a} = nullptr; int64_t {a}_rows = 0, {a}_cols = 1;  // {comment(d.name)}")
        for name, value in self.p.constants.items():
            lines.append(f"  const float* {plan.const_ids[name]} = nullptr;  // {comment(name)} {list(value.shape)}")
        for t in self.p.tables:
            rows = "N" if t.kind == "state" else "L"
            lines.append(f"  float* {plan.table_ids[t.name]} = nullptr;  // {t.kind} {comment(t.name)} [{rows} x {t.width}]")
        for k, (array, weight, bias) in enumerate(plan.projections):
            plus = f" + {bias}" if bias else ""
            lines.append(f"  const float* proj{k} = nullptr;  // {comment(array)} @ {comment(weight)}{comment(plus)}, every row")
        lines.append("  Workspace* ws = nullptr;")
        lines.append("};")
        return "\n".join(lines) + "\n"

    def prepare_fn(self) -> str:
        plan = self.plan
        lines = [
            "// Evaluates every position's case and indices on the host (ONNX index semantics and errors),",
            "// keeping the positions that write something, in order.",
            "static void prepare(Ctx& cx) {",
            "  Workspace& ws = *cx.ws;",
            "  ws.resize_positions(cx.L);",
            "  int64_t q = 0;",
            "  for (int64_t p = 0; p < cx.L; ++p) {",
            "    int32_t c = -1;",
        ]
        for c, case in enumerate(self.p.cases):
            cond = "if" if c == 0 else "else if"
            lines.append(f"    {cond} ({self.pred_expr(case.predicate)}) c = {c};  // {comment(format_pred(case.predicate))}")
        lines.append("    if (c < 0) continue;")
        lines.append("    ws.case_id[q] = c;")
        lines.append("    ws.position[q] = p;")
        lines.append("    int64_t* reads = &ws.reads[q * kReads];")
        lines.append("    int64_t* slots = &ws.slots[q * kSlots];")
        lines.append("    std::fill(reads, reads + kReads, INT64_C(-1));")
        lines.append("    switch (c) {")
        for cp in plan.cases:
            case, layout = cp.case, cp.layout
            lines.append(f"      case {cp.index}: {{  // {comment(case.name)}")
            if case.target is None:
                lines.append("        ws.node[q] = -1;  // writes no state row")
            elif self.p.mode == "dag":
                lines.append(f"        ws.node[q] = {self.index_expr(case.target)};")
            else:
                lines.append(f"        ws.node[q] = cortex::normalize_index({self.index_expr(case.target)}, cx.N, "
                             f"\"the state row written\", p);  // {comment(format_index(case.target))}")
            for k, (index, missing_zero) in enumerate(layout.reads):
                fn = "cortex::child_index" if missing_zero else "cortex::normalize_index"
                lines.append(f"        reads[{k}] = {fn}({self.index_expr(index)}, cx.N, \"a child state row\", p);"
                             f"  // {comment(format_index(index))}")
            for s, (key, kind, source) in enumerate(layout.slots):
                if kind == MASK:
                    lines.append(f"        slots[{s}] = {self.pred_expr(key)} ? 1 : 0;  // {comment(format_pred(key))}")
                elif kind == VALUE:
                    lines.append(f"        slots[{s}] = {self.index_expr(key)};  // {comment(format_index(key))}")
                else:
                    rows = (f"INT64_C({self.p.constants[source].shape[0]})" if source in self.p.constants
                            else f"cx.{plan.array_ids[source]}_rows")
                    lines.append(f"        slots[{s}] = cortex::normalize_index({self.index_expr(key)}, {rows}, "
                                 f"\"{_cstr(source)}\", p);  // {comment(format_index(key))}")
            lines.append("        break;")
            lines.append("      }")
        lines.append("    }")
        lines.append("    ++q;")
        lines.append("  }")
        lines.append("  ws.listed = q;")
        lines.append("}")
        return "\n".join(lines) + "\n"

    # ---- one case over a batch of positions -----------------------------------------------------

    def case_fn(self, cp) -> str:
        plan, case = self.plan, cp.case
        lines = [f"// case {comment(case.name)}: when {comment(format_pred(case.predicate))}",
                 f"static void run_case_{cp.index}(Ctx& cx, const int64_t* batch, int64_t B) {{",
                 "  Workspace& ws = *cx.ws;"]
        env = _RowEnv(self, cp)
        for k, step in enumerate(cp.steps):
            e = step.node
            width = e.x.width if step.kind == "transpose" else e.width
            lines.append(f"  float* {step.buffer} = ws.buffer({k}, B * {width});  // {step.kind}")
            if step.kind == "compute":
                lines += env.row_loop([(e, _dense(step.buffer, e.width))], "  ", computing=e)
            elif step.kind == "transpose":
                lines += env.row_loop([(e.x, _transposed(step.buffer, e.cols, e.x.width // e.cols))], "  ")
            elif step.kind == "gemm":
                k_dim, n_dim = e.x.width // e.rows, e.width // e.rows
                bias = f"cx.{plan.const_ids[e.bias]}" if e.bias else "nullptr"
                lines.append(f"  cortex::gemm_packed(B * {e.rows}, {n_dim}, {k_dim}, {step.inputs[0]}, {k_dim}, "
                             f"cx.{plan.const_ids[e.weight]}, {step.buffer}, {n_dim}, {bias}, false);"
                             f"  // {comment(e.weight)}")
            elif step.kind == "left_gemm":
                k_dim, r = e.x.width // e.cols, e.width // e.cols
                lines.append(f"  cortex::gemm_packed(B * {e.cols}, {r}, {k_dim}, {step.inputs[0]}, {k_dim}, "
                             f"cx.{plan.const_ids[e.weight]}, {step.buffer}, {r}, nullptr, false);  // {comment(e.weight)}")
            elif step.kind == "matvec":
                mat, vec = step.inputs
                cols = e.vec.width
                lines += [f"  cortex::for_rows(B, {e.mat.width}, [&](int64_t b) {{",
                          f"    const float* mat = {mat} + b * {e.mat.width};",
                          f"    const float* vec = {vec} + b * {cols};",
                          f"    for (int64_t r = 0; r < {e.width}; ++r) {{",
                          "      float acc = 0.0f;",
                          f"      for (int64_t j = 0; j < {cols}; ++j) acc += mat[r * {cols} + j] * vec[j];",
                          f"      {step.buffer}[b * {e.width} + r] = acc;",
                          "    }",
                          "  });"]
            elif step.kind == "reduce":
                lines += [f"  cortex::for_rows(B, {e.x.width}, [&](int64_t b) {{",
                          f"    const float* x = {step.inputs[0]} + b * {e.x.width};",
                          f"    for (int64_t i = 0; i < {e.width}; ++i) {{",
                          f"      float acc = x[i * {e.group}];",
                          f"      for (int64_t g = 1; g < {e.group}; ++g) acc = {REDUCE_CPP[e.op].format(a='acc', b=f'x[i * {e.group} + g]')};",
                          f"      {step.buffer}[b * {e.width} + i] = acc;",
                          "    }",
                          "  });"]
            else:
                raise CodegenError(f"step {step.kind}")
        first = len(cp.steps)
        for k, (table, expr, buf) in enumerate(cp.outputs):
            lines.append(f"  float* {buf} = ws.buffer({first + k}, B * {expr.width});  // new rows of {comment(table)}")
        lines += env.row_loop([(e, _dense(buf, e.width)) for _, e, buf in cp.outputs], "  ")
        lines.append("  // commit: rows are written after the whole batch is computed")
        for table, expr, buf in cp.outputs:
            t = self.p.table(table)
            row = "ws.position[batch[b]]" if t.kind == "emit" else "ws.node[batch[b]]"
            lines.append(f"  for (int64_t b = 0; b < B; ++b) std::memcpy(cx.{plan.table_ids[table]} + {row} * "
                         f"{expr.width}, {buf} + b * {expr.width}, sizeof(float) * {expr.width});")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def index_table(self, indices) -> str:
        key = tuple(indices)
        if key not in self.index_tables:
            self.index_tables[key] = f"kIdx{len(self.index_tables)}"
        return self.index_tables[key]

    # ---- the entry point ---------------------------------------------------------------------------

    def run_fn(self) -> str:
        p, plan = self.p, self.plan
        lines = ["extern \"C\" CORTEX_EXPORT int32_t cortex_kernel_run(const CortexTensor* inputs, int32_t num_inputs,",
                 "    CortexAllocOutput alloc_output, void* alloc_context, char* error, size_t error_size) {",
                 "  try {",
                 "    cortex::check_cpu_features();",
                 f"    if (num_inputs != {len(self.inputs)}) throw cortex::KernelError(\"expected {len(self.inputs)} inputs, got \" + std::to_string(num_inputs));",
                 "    Ctx cx;",
                 "    const int64_t p = -1;  // index errors before the recursion name no position"]
        for i, d in enumerate(p.inputs):
            if d.kind == "array":
                a = plan.array_ids[d.name]
                ctype, dt = _DTYPES[d.dtype]
                inner = ", ".join(str(x) for x in d.inner) or "0"
                lines.append(f"    {{ static const int64_t inner[] = {{{inner}}};")
                lines.append(f"      cx.{a} = static_cast<const {ctype}*>(cortex::check_input(inputs[{i}], \"{_cstr(d.name)}\", {dt}, {d.rank}, inner));")
                rows = f"inputs[{i}].shape[0]" if d.rank >= 1 else "1"
                cols = f" cx.{a}_cols = {int(np.prod(d.inner, dtype=np.int64))};" if d.rank >= 2 else ""
                lines.append(f"      cx.{a}_rows = {rows};{cols} }}")
        for i, inp in enumerate(self.inputs):
            if inp.kind == "const":
                dims = ", ".join(str(x) for x in inp.array.shape[1:]) or "0"
                lines.append(f"    {{ static const int64_t inner[] = {{{dims}}};")
                lines.append(f"      cx.{plan.const_ids[inp.const]} = static_cast<const float*>(cortex::check_input(inputs[{i}], \"{_cstr(inp.name)}\", CORTEX_FLOAT, {inp.array.ndim}, inner));")
                lines.append(f"      if (inputs[{i}].shape[0] != {inp.array.shape[0]}) throw cortex::KernelError(\"constant {_cstr(inp.name)} has the wrong shape\"); }}")
        if p.mode == "visit":
            first = next(i for i, d in enumerate(p.inputs) if d.kind == "init")
            lines.append(f"    cx.N = inputs[{first}].rank >= 1 ? inputs[{first}].shape[0] : 0;")
            lines.append(f"    cx.L = std::max<int64_t>(0, {self.index_expr(p.trip)});  // {comment(format_index(p.trip))}")
        else:
            a = plan.array_ids[p.rows_from]
            lines.append(f"    cx.N = cx.{a}_rows;")
            lines.append("    cx.L = cx.N;")
            lines.append(f"    for (int64_t i = 0; i < cx.N * cx.{a}_cols; ++i) cortex::child_index(cx.{a}[i], cx.N, \"{_cstr(p.rows_from)}\", i / cx.{a}_cols);")
        for k, t in enumerate(p.tables):
            rows = "cx.N" if t.kind == "state" else "cx.L"
            dims = ", ".join([rows] + [str(d) for d in t.inner])
            tid = plan.table_ids[t.name]
            lines.append(f"    {{ const int64_t shape[{1 + len(t.inner)}] = {{{dims}}};")
            lines.append(f"      cx.{tid} = static_cast<float*>(alloc_output(alloc_context, {k}, shape, {1 + len(t.inner)}));")
            lines.append(f"      if (cx.{tid} == nullptr) throw cortex::KernelError(\"could not allocate output {_cstr(t.output)}\");")
            if t.init is not None:
                i = next(j for j, d in enumerate(p.inputs) if d.name == t.init)
                inner = ", ".join(str(d) for d in t.inner)
                lines.append(f"      static const int64_t inner[] = {{{inner}}};")
                lines.append(f"      const float* init = static_cast<const float*>(cortex::check_input(inputs[{i}], \"{_cstr(t.init)}\", CORTEX_FLOAT, {1 + len(t.inner)}, inner));")
                lines.append(f"      if (inputs[{i}].shape[0] != cx.N) throw cortex::KernelError(\"state tables must have the same number of rows (Cortex limitation): {_cstr(t.init)} has \" + std::to_string(inputs[{i}].shape[0]) + \", expected \" + std::to_string(cx.N));")
                lines.append(f"      if (cx.N) std::memcpy(cx.{tid}, init, sizeof(float) * cx.N * {t.width}); }}")
            else:
                lines.append(f"      if ({rows}) std::memset(cx.{tid}, 0, sizeof(float) * {rows} * {t.width}); }}")
        linearize = ("ws.linearizer.dag(cx.N, ws.case_id.data(), kNumCases, ws.reads.data(), kReads, ws.schedule)"
                     if p.mode == "dag" else
                     "ws.linearizer.visit(cx.N, ws.listed, ws.node.data(), ws.case_id.data(), kNumCases, "
                     "ws.reads.data(), kReads, ws.schedule)")
        lines += [
            "    thread_local Workspace ws;",
            "    cx.ws = &ws;",
            "    prepare(cx);",
            *self.projection_lines(),
            f"    std::string failure = {linearize};",
            "    if (!failure.empty()) throw cortex::KernelError(failure);",
            "    if (ws.schedule.valid) {",
            "      for (int64_t b = 0; b < ws.schedule.num_batches(); ++b) {",
            "        const int64_t* batch = ws.schedule.positions.data() + ws.schedule.batch_offsets[b];",
            "        run_case(cx, ws.schedule.batch_case[b], batch, ws.schedule.batch_offsets[b + 1] - ws.schedule.batch_offsets[b]);",
            "      }",
            "    } else {",
            "      // Not a topological visit: the exact sequential semantics, one position at a time.",
            "      for (int64_t q = 0; q < ws.listed; ++q) run_case(cx, ws.case_id[q], &q, 1);",
            "    }",
            "    return 0;",
            "  } catch (const std::exception& e) {",
            "    cortex::write_error(error, error_size, e.what());",
            "    return 1;",
            "  } catch (...) {",
            "    cortex::write_error(error, error_size, \"unknown error in Cortex kernel\");",
            "    return 1;",
            "  }",
            "}",
        ]
        return "\n".join(lines) + "\n"

    def projection_lines(self) -> list:
        """Hoisted node-input products: one GEMM over every row of the input, before the recursion."""
        lines = []
        plan = self.plan
        for k, (array, weight, bias) in enumerate(plan.projections):
            a = plan.array_ids[array]
            width = self.p.constants[weight].shape[1]
            depth = self.p.constants[weight].shape[0]
            b = f"cx.{plan.const_ids[bias]}" if bias else "nullptr"
            lines += [f"    {{  // {comment(array)} @ {comment(weight)}",
                      f"      float* table = ws.projection({k}, cx.{a}_rows * {width});",
                      f"      cortex::gemm_packed(cx.{a}_rows, {width}, {depth}, cx.{a}, {depth}, cx.{plan.const_ids[weight]}, "
                      f"table, {width}, {b}, false);",
                      f"      cx.proj{k} = table;",
                      "    }"]
        return lines

    def dispatch_fn(self) -> str:
        lines = ["static void run_case(Ctx& cx, int32_t c, const int64_t* batch, int64_t B) {", "  switch (c) {"]
        for c in range(len(self.p.cases)):
            lines.append(f"    case {c}: run_case_{c}(cx, batch, B); break;")
        lines += ["  }", "}"]
        return "\n".join(lines) + "\n"


class _RowEnv:
    """Emits per-row loops that evaluate row expressions elementwise (the fused epilogue)."""

    def __init__(self, gen: CppGenerator, cp):
        self.gen, self.cp = gen, cp

    def row_loop(self, targets, indent, computing=None):
        """For each row b of the batch, stores every element of each expression: `targets` are (expr, dest)
        with dest(i) the C++ lvalue for element i (a C++ expression over b and j). A concatenation at the
        root splits into one loop per part."""
        pieces = []  # (expr, dest, column offset)
        for expr, dest in targets:
            if isinstance(expr, ir.Concat):
                col = 0
                for part in expr.parts:
                    pieces.append((part, dest, col))
                    col += part.width
            else:
                pieces.append((expr, dest, 0))
        self.computing = computing
        pointers, body, by_width = {}, [], {}
        for piece in pieces:
            by_width.setdefault(piece[0].width, []).append(piece)
        for w, group in by_width.items():
            temps, code, stores = {}, [], []
            for expr, dest, col in group:
                value = self.expr(expr, _Access(0), w, temps, code, pointers)
                stores.append(f"{dest(f'{col} + j' if col else 'j')} = {value};")
            body.append(f"    for (int64_t j = 0; j < {w}; ++j) {{")
            body += ["      " + line for line in code]
            body += ["      " + st for st in stores]
            body.append("    }")
        work = sum(e.width for e, _, _ in pieces) * 8
        lines = [f"{indent}cortex::for_rows(B, {work}, [&](int64_t b) {{",
                 f"{indent}  const int64_t q = batch[b]; (void)q;"]
        for _, decl in pointers.values():
            lines.append(f"{indent}  {decl}")
        lines += [indent + line[2:] for line in body]
        lines.append(f"{indent}}});")
        return lines

    def leaf_pointer(self, node, pointers) -> str:
        gen, layout, plan = self.gen, self.cp.layout, self.gen.plan
        if node in pointers:
            return pointers[node][0]
        if isinstance(node, ir.ChildState):
            k = layout.reads.index((node.index, node.missing_zero))
            name = f"child{len(pointers)}"
            row = f"ws.reads[q * kReads + {k}]"
            decl = (f"const float* {name} = {row} >= 0 ? cx.{plan.table_ids[node.table]} + {row} * {node.width} : kZeros;"
                    f"  // {comment(node.table)}[{comment(format_index(node.index))}]")
        elif isinstance(node, ir.ConstRow):
            s = layout.slots.index((node.index, ROW, node.const))
            name = f"crow{len(pointers)}"
            decl = (f"const float* {name} = cx.{plan.const_ids[node.const]} + ws.slots[q * kSlots + {s}] * {node.width};"
                    f"  // {comment(node.const)}[{comment(format_index(node.index))}]")
        elif isinstance(node, ir.InputProjection):
            s = layout.slots.index((node.index, ROW, node.array))
            k = plan.projections.index((node.array, node.weight, node.bias))
            name = f"iproj{len(pointers)}"
            decl = (f"const float* {name} = cx.proj{k} + ws.slots[q * kSlots + {s}] * {node.width};"
                    f"  // ({comment(node.array)} @ {comment(node.weight)})[{comment(format_index(node.index))}]")
        elif isinstance(node, ir.InputRow):
            s = layout.slots.index((node.index, ROW, node.array))
            name = f"irow{len(pointers)}"
            decl = (f"const float* {name} = cx.{plan.array_ids[node.array]} + ws.slots[q * kSlots + {s}] * {node.width};"
                    f"  // {comment(node.array)}[{comment(format_index(node.index))}]")
        elif isinstance(node, ir.BExpr):
            s = layout.slots.index((node, MASK, None))
            name = f"mask{len(pointers)}"
            decl = f"const bool {name} = ws.slots[q * kSlots + {s}] != 0;  // {comment(format_pred(node))}"
        elif isinstance(node, ir.IndexValue):
            s = layout.slots.index((node.index, VALUE, None))
            name = f"ival{len(pointers)}"
            decl = f"const float {name} = static_cast<float>(ws.slots[q * kSlots + {s}]);  // {comment(format_index(node.index))}"
        else:
            raise CodegenError(f"no pointer for {type(node).__name__}")
        pointers[node] = (name, decl)
        return name

    def _index(self, e, access: _Access) -> str:
        if access.const is not None:
            return str(access.const)
        if access.indices is not None:
            return f"{self.gen.index_table(access.indices)}[j]"
        return f"j + {access.offset}" if access.offset else "j"

    def expr(self, e, access: _Access, w, temps, code, pointers) -> str:
        """C++ for the element of e that the loop's j reads through `access`."""
        if e.width == 1 and access.const is None:
            access = _Access(const=0)  # a width-1 value broadcasts over the loop
        buffers = self.cp.buffers
        if e in buffers and e != self.computing:
            idx = self._index(e, access)
            if isinstance(e, ir.LeftMatMul):  # element (r, c) sits at row (b, c), column r of the GEMM
                rows = e.width // e.cols
                return f"{buffers[e]}[(b * {e.cols} + ({idx}) % {e.cols}) * {rows} + ({idx}) / {e.cols}]"
            return f"{buffers[e]}[b * {e.width} + {idx}]"
        if isinstance(e, (ir.ChildState, ir.ConstRow, ir.InputRow, ir.InputProjection)):
            return f"{self.leaf_pointer(e, pointers)}[{self._index(e, access)}]"
        if isinstance(e, ir.ConstVec):
            return f"cx.{self.gen.plan.const_ids[e.const]}[{self._index(e, access)}]"
        if isinstance(e, ir.Scalar):
            return _cfloat(e.value)
        if isinstance(e, ir.IndexValue):
            return self.leaf_pointer(e, pointers)
        if isinstance(e, ir.Slice):
            return self.expr(e.x, access.shifted(e.start), w, temps, code, pointers)
        if isinstance(e, ir.Take):
            return self.expr(e.x, access.through(e.indices, w), w, temps, code, pointers)
        if isinstance(e, ir.Concat):
            lo, hi = access.span(w)
            col = 0
            for part in e.parts:
                if col <= lo and hi < col + part.width:
                    return self.expr(part, access.shifted(-col), w, temps, code, pointers)
                col += part.width
            raise CodegenError("a concatenation is read across its parts inside elementwise math")
        key = (e, access.key())
        if key in temps:
            return temps[key]
        if isinstance(e, ir.Unary):
            x = self.expr(e.x, access, w, temps, code, pointers)
            value = ops.render(e.op, TARGET, {"x": x}, e.params, _cfloat)
        elif isinstance(e, ir.Binary):
            a = self.expr(e.a, access, w, temps, code, pointers)
            b = self.expr(e.b, access, w, temps, code, pointers)
            value = ops.render(e.op, TARGET, {"a": a, "b": b}, (), _cfloat)
        elif isinstance(e, ir.Select):
            m = self.leaf_pointer(e.pred, pointers)
            a = self.expr(e.a, access, w, temps, code, pointers)
            b = self.expr(e.b, access, w, temps, code, pointers)
            value = f"({m} ? {a} : {b})"
        elif isinstance(e, ir.Where):
            c = self.expr(e.cond, access, w, temps, code, pointers)
            a = self.expr(e.a, access, w, temps, code, pointers)
            b = self.expr(e.b, access, w, temps, code, pointers)
            value = f"({c} != 0.0f ? {a} : {b})"
        else:
            raise CodegenError(f"row expression {type(e).__name__}")
        name = f"v{len(temps)}"
        code.append(f"const float {name} = {value};")
        temps[key] = name
        return name


def _dense(buffer: str, width: int):
    """Element i of row b of a [B, width] buffer."""
    return lambda i: f"{buffer}[b * {width} + {i}]"


def _transposed(buffer: str, cols: int, k: int):
    """Element i = (kk, c) of a per-node [k, cols] matrix stored transposed: row (b, c), column kk."""
    return lambda i: f"{buffer}[(b * {cols} + ({i}) % {cols}) * {k} + ({i}) / {cols}]"


REDUCE_CPP = {"add": "({a} + {b})", "mul": "({a} * {b})", "max": "cortex::fmax_nan({a}, {b})",
              "min": "cortex::fmin_nan({a}, {b})"}


HEADER = """// Generated by Cortex for recursion {name}. Do not edit: regenerate with cortex-convert.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "activations.h"
#include "gemm.h"
#include "kernel_abi.h"
#include "kernel_support.h"
#include "linearize.h"

#define CORTEX_EXPORT __attribute__((visibility("default")))

extern "C" CORTEX_EXPORT int32_t cortex_kernel_abi_version(void) {{ return CORTEX_KERNEL_ABI_VERSION; }}
extern "C" CORTEX_EXPORT const char* cortex_kernel_identity(void) {{ return "{identity}"; }}

namespace {{
"""

WORKSPACE = """constexpr int32_t kNumCases = {cases};
constexpr int64_t kReads = {reads};  // child-state rows a position reads, at most
constexpr int64_t kSlots = {slots};  // host values a position looks up, at most
alignas(64) const float kZeros[{width}] = {{}};  // the state of a missing child

// Per-thread buffers, reused across runs: no allocation in steady state.
struct Workspace {{
  cortex::Linearizer linearizer;
  cortex::Schedule schedule;
  std::vector<int64_t> node, position, reads, slots;
  std::vector<int32_t> case_id;
  int64_t listed = 0;
  std::vector<std::vector<float>> buffers;
  std::vector<std::vector<float>> projections;  // hoisted input products, one table per run

  void resize_positions(int64_t L) {{
    node.resize(L);
    position.resize(L);
    case_id.resize(L);
    reads.resize(L * kReads);
    slots.resize(L * kSlots);
  }}
  float* buffer(size_t i, int64_t size) {{ return grow(buffers, i, size); }}
  float* projection(size_t i, int64_t size) {{ return grow(projections, i, size); }}

  static float* grow(std::vector<std::vector<float>>& pool, size_t i, int64_t size) {{
    if (pool.size() <= i) pool.resize(i + 1);
    if (static_cast<int64_t>(pool[i].size()) < size) pool[i].resize(size);
    return pool[i].data();
  }}
}};
"""

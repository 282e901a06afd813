"""Cortex IR -> C++ kernel source (CPU).

The generated kernel implements csrc/runtime/kernel_abi.h. Per run it:
1. checks its inputs, allocates the state tables (initial values or zeros);
2. *prepares* every position on the host: evaluates the case predicates and every index the position uses
   (with ONNX's index semantics and errors), giving compact arrays: the row each position writes, the child
   rows it reads, and the table rows it looks up;
3. linearizes (csrc/runtime/linearize.h): level batches when the visit is a valid topological order (or the
   structure is a DAG), otherwise the exact sequential semantics, one position at a time;
4. runs each batch of one case: materializes each matrix product's input rows, one GEMM for the batch (bias in
   the GEMM), then one fused elementwise loop that computes the rows the case writes, and commits them.
Model shapes are compile-time constants; generated code carries comments naming the IR values.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..ir import nodes as ir
from ..ir.printer import ScalarSyntax, format_index, format_pred, render_index, render_pred
from ..ir.serialize import unsafe_strings

NR = 16  # GEMM panel width: the packed weight layout in docs/contracts.md


class CodegenError(Exception):
    """The IR uses something this code generator does not support; the region falls back."""


def pack_panels(w: np.ndarray) -> np.ndarray:
    """[K, N] weight -> [ceil(N/16), K, 16] panels (zero padded), the layout gemm_packed reads."""
    k, n = w.shape
    panels = -(-n // NR)
    padded = np.zeros((k, panels * NR), dtype=np.float32)
    padded[:, :n] = w
    return np.ascontiguousarray(padded.reshape(k, panels, NR).transpose(1, 0, 2))


@dataclass
class KernelInput:
    """One input of the kernel (and of the converted node), in order."""
    name: str  # ONNX value name (runtime) or initializer name (constant)
    kind: str  # array | trip | init | const
    array: np.ndarray = None  # constants only: the prepared tensor to store as an initializer


def _cfloat(x: float) -> str:
    x = float(np.float32(x))
    if np.isnan(x):
        return "std::numeric_limits<float>::quiet_NaN()"
    if np.isinf(x):
        return ("-" if x < 0 else "") + "std::numeric_limits<float>::infinity()"
    return f"{x.hex()}f"


@dataclass
class _CaseLayout:
    reads: list = field(default_factory=list)  # [(index IExpr, missing_zero)] -> read slot k
    slots: list = field(default_factory=list)  # [(index IExpr, source name)] -> lookup slot s


def _case_layout(case: ir.Case) -> _CaseLayout:
    layout = _CaseLayout()
    for node in ir.walk_rows([x for _, x in case.writes]):
        if isinstance(node, ir.ChildState):
            key = (node.index, node.missing_zero)
            if key not in layout.reads:
                layout.reads.append(key)
        elif isinstance(node, (ir.ConstRow, ir.InputRow, ir.InputProjection)):
            key = (node.index, node.const if isinstance(node, ir.ConstRow) else node.array)
            if key not in layout.slots:
                layout.slots.append(key)
        elif isinstance(node, (ir.Mask, ir.Select)):
            key = (node.pred, MASK)
            if key not in layout.slots:
                layout.slots.append(key)
    return layout


MASK = "<mask>"  # the lookup slot of a per-position predicate holds 0 or 1


class CppGenerator:
    def __init__(self, program: ir.Program):
        _check_source_safe(program)
        self.p = program
        self.inputs = [KernelInput(d.name, d.kind) for d in program.inputs]
        self.cid = {}  # IR constant name -> C identifier
        for name, value in program.constants.items():
            self.cid[name] = f"k_{name}"
        nodes = [n for c in program.cases for n in ir.walk_rows([x for _, x in c.writes])]
        packed = {n.weight for n in nodes if isinstance(n, (ir.MatMul, ir.LeftMatMul, ir.InputProjection))}
        # X @ W (+ b) tables computed once per run, before the recursion
        self.projections = list(dict.fromkeys((n.array, n.weight, n.bias) for n in nodes
                                              if isinstance(n, ir.InputProjection)))
        for name, value in program.constants.items():
            prepared = pack_panels(value) if name in packed else np.ascontiguousarray(value, dtype=np.float32)
            self.inputs.append(KernelInput(f"{program.name}_{name}", "const", prepared))
        self.aid = {d.name: f"a{i}" for i, d in enumerate(program.inputs) if d.kind == "array"}
        self.tid = {t.name: f"t_{t.name}" for t in program.tables}
        self.layouts = [_case_layout(c) for c in program.cases]
        self.syntax = _CppSyntax(self.aid)
        self.K = max([len(l.reads) for l in self.layouts] + [1])
        self.J = max([len(l.slots) for l in self.layouts] + [1])
        self.max_width = max(t.width for t in program.tables)

    # ---- index expressions (host side) ------------------------------------------------------------

    def index_expr(self, e: ir.IExpr) -> str:
        return render_index(e, self.syntax)

    def pred_expr(self, e: ir.BExpr) -> str:
        return render_pred(e, self.syntax)

    # ---- source ---------------------------------------------------------------------------------

    def generate(self, identity: str) -> str:
        out = [HEADER.format(name=self.p.name, identity=_cstr(identity))]
        out.append(WORKSPACE.format(cases=len(self.p.cases), reads=self.K, slots=self.J, width=self.max_width))
        out.append(self.ctx_struct())
        out.append(self.prepare_fn())
        for c, case in enumerate(self.p.cases):
            out.append(self.case_fn(c, case))
        out.append(self.dispatch_fn())
        out.append("}  // namespace\n")
        out.append(self.run_fn())
        return "\n".join(out)

    def ctx_struct(self) -> str:
        lines = ["struct Ctx {", "  int64_t N = 0, L = 0;"]
        for d in self.p.inputs:
            if d.kind == "array":
                a = self.aid[d.name]
                ctype = "int64_t" if d.dtype == "int64" else "float"
                lines.append(f"  const {ctype}* {a} = nullptr; int64_t {a}_rows = 0, {a}_cols = 1;  // {d.name}")
        for name in self.p.constants:
            lines.append(f"  const float* {self.cid[name]} = nullptr;  // {name} {list(self.p.constants[name].shape)}")
        for t in self.p.tables:
            lines.append(f"  float* {self.tid[t.name]} = nullptr;  // state {t.name} [N x {t.width}]")
        for k, (array, weight, bias) in enumerate(self.projections):
            plus = f" + {bias}" if bias else ""
            lines.append(f"  const float* proj{k} = nullptr;  // {array} @ {weight}{plus}, every row")
        lines.append("  Workspace* ws = nullptr;")
        lines.append("};")
        return "\n".join(lines) + "\n"

    def prepare_fn(self) -> str:
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
            lines.append(f"    {cond} ({self.pred_expr(case.predicate)}) c = {c};  // {format_pred(case.predicate)}")
        lines.append("    if (c < 0) continue;")
        lines.append("    ws.case_id[q] = c;")
        lines.append("    ws.position[q] = p;")
        lines.append("    int64_t* reads = &ws.reads[q * kReads];")
        lines.append("    int64_t* slots = &ws.slots[q * kSlots];")
        lines.append("    std::fill(reads, reads + kReads, INT64_C(-1));")
        lines.append("    switch (c) {")
        for c, (case, layout) in enumerate(zip(self.p.cases, self.layouts)):
            lines.append(f"      case {c}: {{  // {case.name}")
            target = self.index_expr(case.target)
            if self.p.mode == "dag":
                lines.append(f"        ws.node[q] = {target};")
            else:
                lines.append(f"        ws.node[q] = cortex::normalize_index({target}, cx.N, \"the state row written\", p);"
                             f"  // {format_index(case.target)}")
            for k, (index, missing_zero) in enumerate(layout.reads):
                fn = "cortex::child_index" if missing_zero else "cortex::normalize_index"
                lines.append(f"        reads[{k}] = {fn}({self.index_expr(index)}, cx.N, \"a child state row\", p);"
                             f"  // {format_index(index)}")
            for s, (index, source) in enumerate(layout.slots):
                if source == MASK:
                    lines.append(f"        slots[{s}] = {self.pred_expr(index)} ? 1 : 0;  // {format_pred(index)}")
                    continue
                rows = (f"INT64_C({self.p.constants[source].shape[0]})" if source in self.p.constants
                        else f"cx.{self.aid[source]}_rows")
                lines.append(f"        slots[{s}] = cortex::normalize_index({self.index_expr(index)}, {rows}, "
                             f"\"{_cstr(source)}\", p);  // {format_index(index)}")
            lines.append("        break;")
            lines.append("      }")
        lines.append("    }")
        lines.append("    ++q;")
        lines.append("  }")
        lines.append("  ws.listed = q;")
        lines.append("}")
        return "\n".join(lines) + "\n"

    # ---- one case over a batch of positions -----------------------------------------------------

    def case_fn(self, c: int, case: ir.Case) -> str:
        layout = self.layouts[c]
        roots = [x for _, x in case.writes]
        order = ir.walk_rows(roots)
        mats = [n for n in order if isinstance(n, ir.MATERIALIZED)]
        mat_id = {m: i for i, m in enumerate(mats)}
        lines = [f"// case {case.name}: when {format_pred(case.predicate)}",
                 f"static void run_case_{c}(Ctx& cx, const int64_t* batch, int64_t B) {{",
                 "  Workspace& ws = *cx.ws;"]
        env = _RowEnv(self, layout, mat_id)
        buffers = 0

        def buffer(name, size, comment):
            nonlocal buffers
            lines.append(f"  float* {name} = ws.buffer({buffers}, B * {size});  // {comment}")
            buffers += 1

        for i, m in enumerate(mats):
            if isinstance(m, ir.MatMul):
                k, n = m.x.width // m.rows, m.width // m.rows
                buffer(f"A{i}", m.x.width, f"rows of the input of matmul {m.weight}")
                buffer(f"G{i}", m.width, f"matmul {m.weight} for the batch")
                lines += env.row_loop([(m.x, _dense(f"A{i}", m.x.width))], indent="  ")
                bias = f"cx.{self.cid[m.bias]}" if m.bias else "nullptr"
                lines.append(f"  cortex::gemm_packed(B * {m.rows}, {n}, {k}, A{i}, {k}, cx.{self.cid[m.weight]}, "
                             f"G{i}, {n}, {bias}, false);")
            elif isinstance(m, ir.LeftMatMul):
                # W @ X = (X^T @ W^T)^T: X^T's rows for every node of the batch, one GEMM against W^T
                k = m.x.width // m.cols
                r = m.width // m.cols
                buffer(f"A{i}", m.x.width, f"transposed rows of the input of left_matmul {m.weight}")
                buffer(f"G{i}", m.width, f"left_matmul {m.weight} for the batch (transposed)")
                lines += env.row_loop([(m.x, _transposed(f"A{i}", m.cols, k))], indent="  ")
                lines.append(f"  cortex::gemm_packed(B * {m.cols}, {r}, {k}, A{i}, {k}, cx.{self.cid[m.weight]}, "
                             f"G{i}, {r}, nullptr, false);")
            else:  # MatVec
                cols = m.vec.width
                buffer(f"P{i}", m.mat.width, "per-node matrices of matvec")
                buffer(f"Q{i}", cols, "per-node vectors of matvec")
                buffer(f"G{i}", m.width, "matvec for the batch")
                lines += env.row_loop([(m.mat, _dense(f"P{i}", m.mat.width)), (m.vec, _dense(f"Q{i}", cols))],
                                      indent="  ")
                lines += [f"  cortex::for_rows(B, {m.mat.width}, [&](int64_t b) {{",
                          f"    const float* mat = P{i} + b * {m.mat.width};",
                          f"    const float* vec = Q{i} + b * {cols};",
                          f"    for (int64_t r = 0; r < {m.width}; ++r) {{",
                          "      float acc = 0.0f;",
                          f"      for (int64_t j = 0; j < {cols}; ++j) acc += mat[r * {cols} + j] * vec[j];",
                          f"      G{i}[b * {m.width} + r] = acc;",
                          "    }",
                          "  });"]
        out_buf = {}
        for k, (table, expr) in enumerate(case.writes):
            out_buf[table] = f"O{k}"
            buffer(f"O{k}", expr.width, f"new rows of {table}")
        lines += env.row_loop([(e, _dense(out_buf[t], e.width)) for t, e in case.writes], indent="  ")
        lines.append("  // commit: rows are written after the whole batch is computed")
        for table, expr in case.writes:
            lines.append(f"  for (int64_t b = 0; b < B; ++b) std::memcpy(cx.{self.tid[table]} + ws.node[batch[b]] * "
                         f"{expr.width}, {out_buf[table]} + b * {expr.width}, sizeof(float) * {expr.width});")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def run_fn(self) -> str:
        p = self.p
        lines = ["extern \"C\" CORTEX_EXPORT int32_t cortex_kernel_run(const CortexTensor* inputs, int32_t num_inputs,",
                 "    CortexAllocOutput alloc_output, void* alloc_context, char* error, size_t error_size) {",
                 "  try {",
                 "    cortex::check_cpu_features();",
                 f"    if (num_inputs != {len(self.inputs)}) throw cortex::KernelError(\"expected {len(self.inputs)} inputs, got \" + std::to_string(num_inputs));",
                 "    Ctx cx;"]
        for i, d in enumerate(p.inputs):
            if d.kind == "array":
                a = self.aid[d.name]
                ctype, dt = ("int64_t", "CORTEX_INT64") if d.dtype == "int64" else ("float", "CORTEX_FLOAT")
                inner = ", ".join(str(x) for x in d.inner) or "0"
                lines.append(f"    {{ static const int64_t inner[] = {{{inner}}};")
                lines.append(f"      cx.{a} = static_cast<const {ctype}*>(cortex::check_input(inputs[{i}], \"{_cstr(d.name)}\", {dt}, {d.rank}, inner));")
                lines.append(f"      cx.{a}_rows = inputs[{i}].shape[0];" + (f" cx.{a}_cols = {d.inner[0]};" if d.rank == 2 else "") + " }")
        if p.mode == "visit":
            inits = [(i, d) for i, d in enumerate(p.inputs) if d.kind == "init"]
            first = inits[0][0]
            lines.append(f"    cx.N = inputs[{first}].rank >= 1 ? inputs[{first}].shape[0] : 0;")
            if isinstance(p.trip, int):
                lines.append(f"    cx.L = std::max<int64_t>(0, INT64_C({p.trip}));")
            else:
                ti = next(i for i, d in enumerate(p.inputs) if d.kind == "trip")
                lines.append(f"    cx.L = std::max<int64_t>(0, cortex::scalar_int64(inputs[{ti}], \"{_cstr(p.trip)}\"));")
        else:
            a = self.aid[p.rows_from]
            lines.append(f"    cx.N = cx.{a}_rows;")
            lines.append("    cx.L = cx.N;")
            lines.append(f"    for (int64_t i = 0; i < cx.N * cx.{a}_cols; ++i) cortex::child_index(cx.{a}[i], cx.N, \"{_cstr(p.rows_from)}\", i / cx.{a}_cols);")
        for i, inp in enumerate(self.inputs):
            if inp.kind == "const":
                name = list(p.constants)[i - len(p.inputs)]
                dims = ", ".join(str(x) for x in inp.array.shape[1:]) or "0"
                lines.append(f"    {{ static const int64_t inner[] = {{{dims}}};")
                lines.append(f"      cx.{self.cid[name]} = static_cast<const float*>(cortex::check_input(inputs[{i}], \"{_cstr(inp.name)}\", CORTEX_FLOAT, {inp.array.ndim}, inner));")
                lines.append(f"      if (inputs[{i}].shape[0] != {inp.array.shape[0]}) throw cortex::KernelError(\"constant {_cstr(inp.name)} has the wrong shape\"); }}")
        for k, t in enumerate(p.tables):
            lines.append(f"    {{ const int64_t shape[2] = {{cx.N, {t.width}}};")
            lines.append(f"      cx.{self.tid[t.name]} = static_cast<float*>(alloc_output(alloc_context, {k}, shape, 2));")
            lines.append(f"      if (cx.{self.tid[t.name]} == nullptr) throw cortex::KernelError(\"could not allocate output {_cstr(t.output)}\");")
            if t.init is not None:
                i = next(j for j, d in enumerate(p.inputs) if d.name == t.init)
                lines.append(f"      static const int64_t inner[] = {{{t.width}}};")
                lines.append(f"      const float* init = static_cast<const float*>(cortex::check_input(inputs[{i}], \"{_cstr(t.init)}\", CORTEX_FLOAT, 2, inner));")
                lines.append(f"      if (inputs[{i}].shape[0] != cx.N) throw cortex::KernelError(\"state tables must have the same number of rows (Cortex limitation): {_cstr(t.init)} has \" + std::to_string(inputs[{i}].shape[0]) + \", expected \" + std::to_string(cx.N));")
                lines.append(f"      if (cx.N) std::memcpy(cx.{self.tid[t.name]}, init, sizeof(float) * cx.N * {t.width}); }}")
            else:
                lines.append(f"      std::memset(cx.{self.tid[t.name]}, 0, sizeof(float) * cx.N * {t.width}); }}")
        lines += [
            "    thread_local Workspace ws;",
            "    cx.ws = &ws;",
            "    prepare(cx);",
            *self.projection_lines(),
            f"    std::string failure = {'ws.linearizer.dag(cx.N, ws.case_id.data(), kNumCases, ws.reads.data(), kReads, ws.schedule)' if p.mode == 'dag' else 'ws.linearizer.visit(cx.N, ws.listed, ws.node.data(), ws.case_id.data(), kNumCases, ws.reads.data(), kReads, ws.schedule)'};",
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
        for k, (array, weight, bias) in enumerate(self.projections):
            a = self.aid[array]
            width = self.p.constants[weight].shape[1]
            depth = self.p.constants[weight].shape[0]
            b = f"cx.{self.cid[bias]}" if bias else "nullptr"
            lines += [f"    {{  // {array} @ {weight}",
                      f"      float* table = ws.projection({k}, cx.{a}_rows * {width});",
                      f"      cortex::gemm_packed(cx.{a}_rows, {width}, {depth}, cx.{a}, {depth}, cx.{self.cid[weight]}, "
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


class _CppSyntax(ScalarSyntax):
    """Index expressions as C++ over the kernel's Ctx: loads follow ONNX Gather semantics (negative ids wrap,
    out of range throws a KernelError naming the array and the position)."""

    def __init__(self, array_ids: dict):
        self.aid = array_ids

    def const(self, value: int) -> str:
        return f"INT64_C({value})"

    def load(self, e: ir.Load, index: str) -> str:
        a = self.aid[e.array]
        row = f"cortex::normalize_index({index}, cx.{a}_rows, \"{_cstr(e.array)}\", p)"
        return f"cx.{a}[{row}]" if e.column is None else f"cx.{a}[{row} * cx.{a}_cols + {e.column}]"

    def length(self, array) -> str:
        return f"cx.{self.aid[array]}_rows" if array else "cx.N"

    def min_max(self, op: str, a: str, b: str) -> str:
        return f"std::{op}<int64_t>({a}, {b})"


class _RowEnv:
    """Emits per-row loops that evaluate row expressions elementwise (the fused epilogue)."""

    def __init__(self, gen: CppGenerator, layout: _CaseLayout, mat_id: dict):
        self.gen, self.layout, self.mat_id = gen, layout, mat_id

    def row_loop(self, targets, indent):
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
        pointers, body, by_width = {}, [], {}
        for piece in pieces:
            by_width.setdefault(piece[0].width, []).append(piece)
        for w, group in by_width.items():
            temps, code, stores = {}, [], []
            for expr, dest, col in group:
                value = self.expr(expr, 0, w, temps, code, pointers)
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
        gen = self.gen
        if node in pointers:
            return pointers[node][0]
        if isinstance(node, ir.ChildState):
            k = self.layout.reads.index((node.index, node.missing_zero))
            name = f"child{len(pointers)}"
            row = f"ws.reads[q * kReads + {k}]"
            decl = (f"const float* {name} = {row} >= 0 ? cx.{gen.tid[node.table]} + {row} * {node.width} : kZeros;"
                    f"  // {node.table}[{format_index(node.index)}]")
        elif isinstance(node, ir.ConstRow):
            s = self.layout.slots.index((node.index, node.const))
            name = f"crow{len(pointers)}"
            decl = (f"const float* {name} = cx.{gen.cid[node.const]} + ws.slots[q * kSlots + {s}] * {node.width};"
                    f"  // {node.const}[{format_index(node.index)}]")
        elif isinstance(node, ir.InputProjection):
            s = self.layout.slots.index((node.index, node.array))
            k = gen.projections.index((node.array, node.weight, node.bias))
            name = f"iproj{len(pointers)}"
            decl = (f"const float* {name} = cx.proj{k} + ws.slots[q * kSlots + {s}] * {node.width};"
                    f"  // ({node.array} @ {node.weight})[{format_index(node.index)}]")
        elif isinstance(node, ir.BExpr):
            s = self.layout.slots.index((node, MASK))
            name = f"mask{len(pointers)}"
            decl = (f"const float {name} = static_cast<float>(ws.slots[q * kSlots + {s}]);"
                    f"  // {format_pred(node)}")
        else:
            s = self.layout.slots.index((node.index, node.array))
            name = f"irow{len(pointers)}"
            decl = (f"const float* {name} = cx.{gen.aid[node.array]} + ws.slots[q * kSlots + {s}] * {node.width};"
                    f"  // {node.array}[{format_index(node.index)}]")
        pointers[node] = (name, decl)
        return name

    def expr(self, e, offset, access_width, temps, code, pointers) -> str:
        """C++ for element (j + offset) of e, where j runs over [0, access_width)."""
        idx = "0" if e.width == 1 else (f"j + {offset}" if offset else "j")
        if isinstance(e, (ir.ChildState, ir.ConstRow, ir.InputRow, ir.InputProjection)):
            name = self.leaf_pointer(e, pointers)
            return f"{name}[{idx}]"
        if isinstance(e, ir.ConstVec):
            return f"cx.{self.gen.cid[e.const]}[{idx}]"
        if isinstance(e, ir.Scalar):
            return _cfloat(e.value)
        if isinstance(e, ir.Mask):
            return self.leaf_pointer(e.pred, pointers)
        if isinstance(e, (ir.MatMul, ir.MatVec)):
            return f"G{self.mat_id[e]}[b * {e.width} + {idx}]"
        if isinstance(e, ir.LeftMatMul):
            rows = e.width // e.cols  # element (r, c) of W @ X sits at row (b, c), column r of the GEMM
            return f"G{self.mat_id[e]}[(b * {e.cols} + ({idx}) % {e.cols}) * {rows} + ({idx}) / {e.cols}]"
        if isinstance(e, ir.Slice):
            return self.expr(e.x, offset + e.start, access_width, temps, code, pointers)
        if isinstance(e, ir.Concat):
            col = 0
            for part in e.parts:
                if col <= offset and offset + access_width <= col + part.width:
                    return self.expr(part, offset - col, access_width, temps, code, pointers)
                col += part.width
            raise CodegenError("a concatenation is used by elementwise math across its parts")
        key = (e, offset if e.width != 1 else 0)
        if key in temps:
            return temps[key]
        if isinstance(e, ir.Unary):
            x = self.expr(e.x, offset, access_width, temps, code, pointers)
            value = UNARY_CPP[e.op].format(x=x)
        elif isinstance(e, ir.Binary):
            a = self.expr(e.a, offset, access_width, temps, code, pointers)
            b = self.expr(e.b, offset, access_width, temps, code, pointers)
            value = BINARY_CPP[e.op].format(a=a, b=b)
        elif isinstance(e, ir.Select):
            m = self.leaf_pointer(e.pred, pointers)
            a = self.expr(e.a, offset, access_width, temps, code, pointers)
            b = self.expr(e.b, offset, access_width, temps, code, pointers)
            value = f"({m} != 0.0f ? {a} : {b})"
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


UNARY_CPP = {"sigmoid": "cortex::sigmoid({x})", "tanh": "cortex::tanh_f({x})", "relu": "cortex::relu({x})",
             "neg": "(-{x})", "exp": "std::exp({x})", "abs": "std::fabs({x})", "identity": "{x}"}
BINARY_CPP = {"add": "({a} + {b})", "sub": "({a} - {b})", "mul": "({a} * {b})", "div": "({a} / {b})",
              "max": "std::max({a}, {b})", "min": "std::min({a}, {b})"}


def _cstr(s: str) -> str:
    """`s` as the inside of a C++ string literal, in plain printable ASCII: quotes, backslashes and '?' (trigraphs)
    escaped, control characters and every non-ASCII byte of the UTF-8 as octal escapes (bounded, unlike \\x), so
    no name can end the literal or the line, or hide text with bidirectional controls."""
    out = []
    for ch in s:
        if ch in '"\\?':
            out.append("\\" + ch)
        elif 0x20 <= ord(ch) < 0x7F:
            out.append(ch)
        else:
            out.extend(f"\\{byte:03o}" for byte in ch.encode("utf-8", errors="surrogatepass"))
    return "".join(out)


def _check_source_safe(program: ir.Program):
    """IR names reach generated source in comments and string literals: refuse any that could end a comment or a
    line there (a newline, a backslash continuation, `*/`, bidirectional overrides; see ir.serialize.safe_text)."""
    bad = unsafe_strings(program)
    if bad:
        raise CodegenError(f"the IR holds a name that cannot be written safely into generated code: {bad[0][:60]!r}")


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
constexpr int64_t kSlots = {slots};  // table rows a position looks up, at most
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

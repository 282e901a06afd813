"""Kernel plan -> C++ kernel source (CPU).

The generated kernel implements csrc/runtime/kernel_abi.h. Per run it:
1. checks its inputs, allocates the tables (initial values or zeros);
2. *prepares* every position on the host (cstyle.prepare_fn): the case, the row it writes, the child rows it reads,
   the table rows it looks up, its masks and index values, with ONNX's index semantics and errors;
3. linearizes (csrc/runtime/linearize.h): level batches when the visit is a valid topological order (or the
   structure is a DAG), otherwise the exact sequential semantics, one position at a time;
4. runs each batch of one case through the plan's steps: per-batch buffers (matrix products with their input rows,
   reductions, rearranged values), one GEMM per product for the batch (bias in the GEMM), then one fused
   elementwise loop per width that computes the rows the case writes, and commits them.
Model shapes are compile-time constants; generated code carries comments naming the IR values.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir.printer import format_pred
from . import cstyle
from .cstyle import Access, cstr, comment, dense, transposed
from .emitter import KernelEmitter
from .layouts import PANELS, PANELS_BF16, WeightLayout
from .plan import CodegenError


@dataclass(frozen=True)
class Products:
    """The matrix products of a CPU kernel in one precision: the weights' layout and C element type, the runtime's
    entry points (all with gemm_packed's arguments), and the header that declares them."""
    precision: str
    layout: WeightLayout
    weight_ctype: str
    call: str
    columns: str
    header: str
    blocks: str = ""  # one call for the same columns of equally spaced blocks (where the rows' rounding is shared)


FLOAT32_PRODUCTS = Products("float32", PANELS, "float", "cortex::gemm_packed", "cortex::gemm_packed_columns", "gemm.h")
# Opt-in (--precision bf16): weights and product inputs rounded to bf16, float32 sums (csrc/runtime/gemm_bf16.h).
BF16_PRODUCTS = Products("bf16", PANELS_BF16, "uint16_t", "cortex::gemm_packed_bf16",
                         "cortex::gemm_packed_bf16_columns", "gemm_bf16.h", "cortex::gemm_packed_bf16_blocks")
PRODUCTS = {p.precision: p for p in (FLOAT32_PRODUCTS, BF16_PRODUCTS)}
# A float64 program (a model written with `model.double()`): double weights in the same panels, double sums
# (csrc/runtime/gemm_f64.h); whatever the backend's precision, which is refused with float64 unless float32.
FLOAT64_PRODUCTS = Products("float64", PANELS, "double", "cortex::gemm_packed_f64", "cortex::gemm_packed_f64_columns",
                            "gemm_f64.h")


class CpuEmitter(KernelEmitter):
    """C++ for the CPU backend (targets.CPU): host functions per case over level batches, products on the runtime's
    packed-panel GEMM (csrc/runtime/gemm.h; gemm_bf16.h for bf16 products), one parallel region per fused level."""

    def __init__(self, program, backend):
        if program.element == "float64" and backend.precision != "float32":
            raise CodegenError(f"--precision {backend.precision} is not supported with float64: this recursion "
                               f"computes in float64 (a model written with model.double()) and {backend.precision} "
                               "products would round its values; convert it with the default --precision float32, "
                               "which keeps its float64 math")
        super().__init__(program, backend)
        self.real = cstyle.creal(program)  # the C type of the kernel's float values
        self.literal = cstyle.REALS[program.element][1]

    @property
    def products(self) -> Products:
        return FLOAT64_PRODUCTS if self.p.element == "float64" else self.backend.products

    def weight_ctype(self, const: str) -> str:
        return self.products.weight_ctype if const in self.plan.packed else self.real

    @property
    def header(self) -> str:
        if self.products.header == "gemm.h":
            return HEADER
        return HEADER.replace('#include "gemm.h"\n', f'#include "gemm.h"\n#include "{self.products.header}"\n', 1)

    def body(self) -> list:
        plan = self.plan
        return ([self.ctx_struct(), cstyle.prepare_fn(plan, self.syntax)] + [self.case_fn(c) for c in plan.cases]
                + [self.dispatch_fn()])

    def before_tables(self) -> list:
        plan = self.plan
        return [WORKSPACE.format(cases=len(self.p.cases), reads=plan.max_reads, slots=plan.max_slots,
                                 width=plan.max_width, positions=cstyle.POSITION_ARRAYS + cstyle.set_arrays(plan),
                                 real=self.real),
                cstyle.WORKSPACE_POOL]

    def ctx_struct(self) -> str:
        plan = self.plan
        lines = ["struct Ctx {"] + cstyle.host_context_fields(plan)
        for name, value in self.p.constants.items():
            lines.append(f"  const {self.weight_ctype(name)}* {plan.const_ids[name]} = nullptr;  // {comment(name)} {list(value.shape)}")
        for t in self.p.tables:
            rows = "N" if t.kind == "state" else "L"
            lines.append(f"  {self.real}* {plan.table_ids[t.name]} = nullptr;  // {t.kind} {comment(t.name)} [{rows} x {t.width}]")
        for k, (array, weight, bias) in enumerate(plan.projections):
            plus = f" + {bias}" if bias else ""
            lines.append(f"  const {self.real}* proj{k} = nullptr;  // {comment(array)} @ {comment(weight)}{comment(plus)}, every row")
        lines.append("};")
        return "\n".join(lines) + "\n"

    # ---- one case over a batch of positions -----------------------------------------------------

    @staticmethod
    def _row_body(env, targets, indent, head, tail, computing=None, prelude=(), span=None):
        """One row b of the batch, inside the loop header `head` (which binds b) and `tail`: stores every element of
        each expression (`targets` are (expr, dest) with dest(i) the C++ lvalue for element i), one loop over j per
        width; with span=(j0, j1) only elements j0 <= j < j1."""
        temps, code, pointers = env.start(computing)
        body = []
        for w, group in env.pieces(targets).items():
            temps, code = {}, []
            stores = []
            for expr, dest, col in group:
                value = env.expr(expr, Access(0), w, temps, code, pointers)
                stores.append(f"{dest(f'{col} + j' if col else 'j')} = {value};")
            bounds = f"int64_t j = {span[0]}; j < {span[1]}; ++j" if span else f"int64_t j = 0; j < {w}; ++j"
            # omp simd (with -fopenmp-simd): element loops must vectorize; GCC 13 gives up on the if-conversion of
            # a TreeLSTM gate loop without it (scalar: 25x slower than GCC 12's vector loop)
            body.append("    #pragma omp simd")
            body.append(f"    for ({bounds}) {{")
            body += ["      " + line for line in code + stores]
            body.append("    }")
        lines = [f"{indent}{head}", f"{indent}  const int64_t q = batch[b]; (void)q;"]
        lines += [f"{indent}  {line}" for line in prelude]
        lines += [f"{indent}  {decl}" for _, decl in pointers.values()]
        lines += [indent + line[2:] for line in body]
        lines.append(f"{indent}{tail}")
        return lines

    def row_loop(self, env, targets, indent, computing=None, prelude=()):
        """Every element of each target for each row b of the batch, rows split over the pool (`_row_body`)."""
        work = sum(w * len(g) for w, g in env.pieces(targets).items()) * 8
        return self._row_body(env, targets, indent, f"cortex::for_rows(B, {work}, [&](int64_t b) {{", "});",
                              computing, prelude)

    def serial_rows(self, env, targets, indent, span=None, computing=None, prelude=(), rows=("0", "B")):
        """Like row_loop, on the calling thread, for rows[0] <= b < rows[1]; with span=(j0, j1) only elements
        j0 <= j < j1 of each target."""
        return self._row_body(env, targets, indent, f"for (int64_t b = {rows[0]}; b < {rows[1]}; ++b) {{", "}",
                              computing, prelude, span)

    def fused_section(self, env, cp):
        """The fused products and the new rows, one dispatch: each worker takes a range of elements j (chunks of
        the panel width) and a range of rows b (when the chunks are fewer than the workers the work can use),
        computes its own copy of its rows of each product's input, the product columns offsets + j of its range,
        then its elements of the new rows."""
        plan, fused, width, inline = self.plan, cp.fused, cp.fused_width, cp.inline
        nr = self.backend.panel_width
        flops = sum(2 * e.x.width * len(offs) * width for e, offs in fused.items())
        lines = [f"  const int64_t chunks = {-(-width // nr)};",
                 f"  const cortex::FusedTasks split = {'cortex::fused_tasks(chunks, B, ' + str(flops) + '.0 * B)' if width % nr == 0 else 'cortex::FusedTasks{}'};",
                 "  sc.reserve_tasks(split.tasks());",
                 "  cortex::run_tasks(split.tasks(), [&](int64_t task) {",
                 "    const int64_t ct = task % split.columns, rt = task / split.columns;",
                 f"    const int64_t j0 = {nr} * (chunks * ct / split.columns), j1 = std::min<int64_t>({width}, {nr} * (chunks * (ct + 1) / split.columns));",
                 "    const int64_t b0 = B * rt / split.rows, b1 = B * (rt + 1) / split.rows;"]
        rows = ("b0", "b1")
        copied = set()  # several products may read the same input rows (e.g. one Linear per gate): one copy
        for n, step in enumerate(cp.steps):
            if step.node not in fused:
                continue
            e = step.node
            k_dim, n_dim = e.x.width, e.width
            source = step.inputs[0]
            if source in inline and source not in copied:
                copied.add(source)
                lines.append(f"    {self.real}* {source} = sc.task_buffer(task, {n}, B * {k_dim});  // its input rows, this worker's copy")
                lines += self.serial_rows(env, [(e.x, dense(source, k_dim))], "    ", rows=rows)
            bias = f"cx.{plan.const_ids[e.bias]}" if e.bias else "nullptr"
            args = (f"b1 - b0, {n_dim}, {k_dim}, {source} + b0 * {k_dim}, {k_dim}, cx.{plan.const_ids[e.weight]}, "
                    f"{step.buffer} + b0 * {n_dim}, {n_dim}, {bias}")
            offs = list(fused[e])
            stride = offs[1] - offs[0] if len(offs) > 1 else 0
            if (self.products.blocks and len(offs) > 1 and width % nr == 0 and stride > 0 and stride % nr == 0
                    and offs[0] % nr == 0 and offs == [offs[0] + g * stride for g in range(len(offs))]):
                lines.append(f"    {self.products.blocks}({args}, j0, j1, {offs[0]}, {len(offs)}, {stride});"
                             f"  // {comment(e.weight)}, columns j0..j1 of {len(offs)} blocks")
                continue
            for o in offs:
                lines.append(f"    {self.products.columns}({args}, {o} + j0, {o} + j1);  // {comment(e.weight)}")
        targets, prelude = self.output_rows(cp)
        lines += self.serial_rows(env, targets, "    ", span=("j0", "j1"), prelude=prelude, rows=rows)
        lines.append("  });")
        return lines

    def output_rows(self, cp):
        """The new rows' destinations: straight into the table rows, or (a batch where a position reads its own row
        before writing it) into per-batch buffers committed after the batch. (targets, per-row declarations)."""
        targets, prelude = [], []
        for k, (table, expr, buf) in enumerate(cp.outputs):
            t = self.p.table(table)
            row = "ws.position[q]" if t.kind == "emit" else "ws.node[q]"
            w = expr.width
            prelude.append(f"{self.real}* out{k} = hazard ? {buf} + b * {w} : cx.{self.plan.table_ids[table]} + {row} * {w};")
            targets.append((expr, lambda i, k=k: f"out{k}[{i}]"))
        return targets, prelude

    def case_fn(self, cp) -> str:
        plan, case = self.plan, cp.case
        env = cstyle.ElementRenderer(plan, cp, self.dialect, self.index_table)
        lines = [f"// case {comment(case.name)}: when {comment(format_pred(case.predicate))}",
                 f"static void run_case_{cp.index}(Ctx& cx, const Workspace& ws, Scratch& sc, const int64_t* batch, int64_t B, "
                 "bool hazard) {"]
        self.emit_steps(env, cp, lines,
                        lambda k, step, width: f"  {self.real}* {step.buffer} = sc.buffer({k}, B * {width});  // {step.kind}")
        first = len(cp.steps)
        for k, (table, expr, buf) in enumerate(cp.outputs):
            lines.append(f"  {self.real}* {buf} = sc.buffer({first + k}, B * {expr.width});  // new rows of {comment(table)}")
        if cp.fused:
            lines += self.fused_section(env, cp)
        else:
            targets, prelude = self.output_rows(cp)
            lines += self.row_loop(env, targets, "  ", prelude=prelude)
        lines.append("  if (!hazard) return;")
        lines.append("  // a position read its own row before writing it: the rows are committed after the whole batch")
        for table, expr, buf in cp.outputs:
            t = self.p.table(table)
            row = "ws.position[batch[b]]" if t.kind == "emit" else "ws.node[batch[b]]"
            lines.append(f"  for (int64_t b = 0; b < B; ++b) std::memcpy(cx.{plan.table_ids[table]} + {row} * "
                         f"{expr.width}, {buf} + b * {expr.width}, sizeof({self.real}) * {expr.width});")
        lines.append("}")
        return "\n".join(lines) + "\n"

    # ---- one emit function per step kind (plan.Step) --------------------------------------------------------

    def emit_compute(self, env, cp, step):
        return self.row_loop(env, [(step.node, dense(step.buffer, step.node.width))], "  ", computing=step.node)

    def emit_transpose(self, env, cp, step):
        e = step.node
        return self.row_loop(env, [(e.x, transposed(step.buffer, e.cols, e.x.width // e.cols))], "  ")

    def emit_gemm(self, env, cp, step):
        e = step.node
        k_dim, n_dim = e.x.width // e.rows, e.width // e.rows
        bias = f"cx.{self.plan.const_ids[e.bias]}" if e.bias else "nullptr"
        return [f"  {self.products.call}(B * {e.rows}, {n_dim}, {k_dim}, {step.inputs[0]}, {k_dim}, "
                f"cx.{self.plan.const_ids[e.weight]}, {step.buffer}, {n_dim}, {bias}, false);  // {comment(e.weight)}"]

    def emit_left_gemm(self, env, cp, step):
        e = step.node
        k_dim, r = e.x.width // e.cols, e.width // e.cols
        return [f"  {self.products.call}(B * {e.cols}, {r}, {k_dim}, {step.inputs[0]}, {k_dim}, "
                f"cx.{self.plan.const_ids[e.weight]}, {step.buffer}, {r}, nullptr, false);  // {comment(e.weight)}"]

    def emit_matvec(self, env, cp, step):
        e = step.node
        mat, vec = step.inputs
        cols = e.vec.width
        return [f"  cortex::for_rows(B, {e.mat.width}, [&](int64_t b) {{",
                f"    const {self.real}* mat = {mat} + b * {e.mat.width};",
                f"    const {self.real}* vec = {vec} + b * {cols};",
                f"    for (int64_t r = 0; r < {e.width}; ++r) {{",
                f"      {self.real} acc = 0.0f;",
                f"      for (int64_t j = 0; j < {cols}; ++j) acc += mat[r * {cols} + j] * vec[j];",
                f"      {step.buffer}[b * {e.width} + r] = acc;",
                "    }",
                "  });"]

    def emit_set_reduce(self, env, cp, step):
        """Per position of the batch: the op over its set's members of the body, element by element (a member's rows
        declared per member, the node's own values per position)."""
        e = step.node
        s, temps, code, node_decls, member_decls, combine = self.set_reduce_parts(env, cp, step, "acc[j]")
        return ([f"  cortex::for_rows(B, {e.width * 16}, [&](int64_t b) {{",
                 "    const int64_t q = batch[b]; (void)q;"]
                + [f"    {d}" for d in node_decls]
                + [f"    {self.real}* acc = {step.buffer} + b * {e.width};  // {comment(e.op)} over the set",
                   f"    for (int64_t j = 0; j < {e.width}; ++j) acc[j] = {self.literal(e.empty)};",
                   f"    for (int64_t m = ws.set_begin[q * Workspace::kSets + {s}]; "
                   f"m < ws.set_end[q * Workspace::kSets + {s}]; ++m) {{",
                   "      const int64_t u = ws.members[m];"]
                + [f"      {d}" for d in member_decls]
                + ["      #pragma omp simd", f"      for (int64_t j = 0; j < {e.width}; ++j) {{"]
                + [f"        {line}" for line in code]
                + [f"        acc[j] = {combine};", "      }", "    }", "  });"])

    def emit_reduce(self, env, cp, step):
        e = step.node
        combine = cstyle.REDUCE[e.op].format(a="acc", b=f"x[i * {e.group} + g]")
        return [f"  cortex::for_rows(B, {e.x.width}, [&](int64_t b) {{",
                f"    const {self.real}* x = {step.inputs[0]} + b * {e.x.width};",
                f"    for (int64_t i = 0; i < {e.width}; ++i) {{",
                f"      {self.real} acc = x[i * {e.group}];",
                f"      for (int64_t g = 1; g < {e.group}; ++g) acc = {combine};",
                f"      {step.buffer}[b * {e.width} + i] = acc;",
                "    }",
                "  });"]

    def dispatch_fn(self) -> str:
        lines = ["static void run_case(Ctx& cx, const Workspace& ws, Scratch& sc, int32_t c, const int64_t* batch, "
                 "int64_t B) {",
                 f"  const bool hazard = {cstyle.hazard_call(self.plan)};",
                 "  switch (c) {"]
        for c in range(len(self.p.cases)):
            lines.append(f"    case {c}: run_case_{c}(cx, ws, sc, batch, B, hazard); break;")
        lines += ["  }", "}"]
        return "\n".join(lines) + "\n"

    # ---- the entry point ---------------------------------------------------------------------------

    # Weights (bytes) up to which a forest runs in lanes: each thread then reads all of them, level after level, from
    # its own L2 (kernel_support.h's kWeightShare); larger ones are split by columns across the threads instead.
    LANE_WEIGHT_BYTES = 512 * 1024

    def lane_split(self) -> list:
        """`lanes`: how many independent parts of the forest run side by side (0: the level-batched schedule over the
        pool). Only where every thread can keep all the fused weights in its L2 (small hidden sizes: at hidden 64,
        10 trees, the level barriers and gathers cost more than the products)."""
        plan = self.plan
        size = {"float32": 4, "bf16": 2, "float64": 8}[self.products.precision]
        weights = {(e.weight) for cp in plan.cases for e in cp.fused}
        nbytes = sum(int(self.p.constants[w].size) * size for w in weights)
        if nbytes > self.LANE_WEIGHT_BYTES:
            return [f"    const int64_t lanes = 0;  // fused weights of {nbytes} bytes: levels split by columns"]
        members = ", ws.read_offsets.data(), ws.members.data()" if plan.max_sets else ""
        return ["    const int64_t lanes = ws.lanes.split(ws.schedule, cx.N, ws.listed, ws.node.data(), ws.reads.data(), "
                f"kReads, cortex::num_threads(){members});"]

    def first_values(self) -> list:
        """Lines giving each state table its first value (its initial input, or zeros): with a valid schedule only in
        the rows no position overwrites first (at batch 100, hidden 256: two 3.6 MB copies that every run overwrote);
        otherwise (positions one at a time) in every row."""
        plan, p = self.plan, self.p
        members = ", ws.read_offsets.data(), ws.members.data()" if plan.max_sets else ""
        valid, whole = [], []
        for t in p.tables:
            if t.kind != "state":
                continue
            tid = plan.table_ids[t.name]
            row_bytes = f"sizeof({self.real}) * {t.width}"
            if t.init is not None and p.input(t.init).kind == "init":
                i = next(j for j, d in enumerate(p.inputs) if d.name == t.init)
                src = f"cortex::host_data(inputs[{i}], \"{cstr(t.init)}\")"
                whole.append(f"      if (cx.N) cortex::copy_table(cx.{tid}, {src}, {row_bytes} * cx.N);")
            else:
                src = "nullptr"
                whole.append(f"      if (cx.N) std::memset(cx.{tid}, 0, {row_bytes} * cx.N);")
            writes = ", ".join("true" if any(w == t.name for w, _ in case.writes) else "false" for case in p.cases)
            valid += [f"      {{ static const bool writes[] = {{{writes}}};  // which cases write {comment(t.name)}",
                      "        cortex::mark_overwritten_rows(cx.N, ws.listed, ws.node.data(), ws.case_id.data(), writes, "
                      f"ws.reads.data(), kReads, ws.overwritten{members});",
                      f"        cortex::fill_rows_not_overwritten(cx.{tid}, {src}, {row_bytes}, cx.N, ws.overwritten); }}"]
        if not whole:
            return []
        return ["    if (ws.schedule.valid) {", *valid, "    } else {", *whole, "    }"]

    def run_body(self) -> list:
        plan = self.plan
        lines = ["    (void)execution;  // a CPU kernel runs on the calling thread and its pool",
                 "    cortex::check_cpu_features();",
                 f"    if (num_inputs != {len(self.inputs)}) throw cortex::KernelError(\"expected {len(self.inputs)} inputs, got \" + std::to_string(num_inputs));",
                 "    cortex::Phases phases;",
                 "    Ctx cx;",
                 "    const int64_t p = -1;  // index errors before the recursion name no position"]
        host_data = lambda i, d: f"cortex::host_data(inputs[{i}], \"{cstr(d.name)}\")"  # noqa: E731
        lines += cstyle.check_array_inputs(plan, host_data)
        ctypes = {plan.const_ids[name]: self.weight_ctype(name) for name in self.p.constants}
        lines += cstyle.check_const_inputs(
            plan, lambda i, cid: f"cx.{cid} = static_cast<const {ctypes[cid]}*>(inputs[{i}].data);")
        lines += cstyle.rows_and_positions(plan, self.syntax, host_data=host_data)
        # State tables get their first value once the schedule is known (first_values); emit tables here.
        lines += cstyle.allocate_tables(
            plan, "cx",
            lambda i, tid, t: "/* its first value: after the schedule */",
            lambda tid, rows, t: (f"if ({rows}) std::memset(cx.{tid}, 0, sizeof({self.real}) * {rows} * {t.width});"
                                  if t.kind != "state" else "/* its first value: after the schedule */"),
            lambda i, tid, t: (f"cortex::check_zeros(static_cast<const {self.real}*>(cortex::host_data(inputs[{i}], "
                               f"\"{cstr(t.init)}\")), cx.N * {t.width}, \"{cstr(t.init)}\");"),
            host_data)
        linearize = cstyle.linearize_call(plan)
        lines += cstyle.LEASE_WORKSPACE
        lines += [
            "    phases.mark(0);  // inputs checked, tables started",
            "    prepare(cx, ws);",
            "    phases.mark(1);  // prepared",
            *self.projection_lines(),
            "    phases.mark(2);  // hoisted input products",
            f"    std::string failure = {linearize};",
            "    if (!failure.empty()) throw cortex::KernelError(failure);",
            *self.first_values(),
            "    phases.mark(3);  // linearized, state tables given their first values",
            *self.lane_split(),
            "    if (lanes > 1) {",
            "      // independent parts (trees): one lane a thread, level by level, no barrier between them",
            "      if (static_cast<int64_t>(ws.scratch.size()) < lanes) ws.scratch.resize(lanes);",
            "      phases.mark(4);  // the leaves run inside the lanes: their time counts as levels",
            "      cortex::parallel_for(lanes, [&](int64_t l) {",
            "        cortex::SerialScope serial;",
            "        const cortex::Schedule& s = ws.lanes.lane[l];",
            "        for (int64_t b = 0; b < s.num_batches(); ++b)",
            "          run_case(cx, ws, ws.scratch[l], s.batch_case[b], s.positions.data() + s.batch_offsets[b], s.batch_offsets[b + 1] - s.batch_offsets[b]);",
            "      });",
            "    } else if (ws.schedule.valid) {",
            "      const int64_t batches = ws.schedule.num_batches();",
            "      for (int64_t b = 0; b < batches; ++b) {",
            "        const int64_t* batch = ws.schedule.positions.data() + ws.schedule.batch_offsets[b];",
            "        run_case(cx, ws, ws.scratch[0], ws.schedule.batch_case[b], batch, ws.schedule.batch_offsets[b + 1] - ws.schedule.batch_offsets[b]);",
            "        if (ws.schedule.batch_level[b] == 0 && (b + 1 == batches || ws.schedule.batch_level[b + 1] != 0)) phases.mark(4);  // level 0 (leaves)",
            "      }",
            "    } else {",
            "      // Not a topological visit: the exact sequential semantics, one position at a time.",
            "      for (int64_t q = 0; q < ws.listed; ++q) run_case(cx, ws, ws.scratch[0], ws.case_id[q], &q, 1);",
            "    }",
            "    phases.mark(5);  // every level",
            "    phases.publish();",
            "    return 0;",
        ]
        return lines

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
                      f"      {self.real}* table = ws.projection({k}, cx.{a}_rows * {width});",
                      f"      {self.products.call}(cx.{a}_rows, {width}, {depth}, cx.{a}, {depth}, cx.{plan.const_ids[weight]}, "
                      f"table, {width}, {b}, false);",
                      f"      cx.proj{k} = table;",
                      "    }"]
        return lines


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
extern "C" CORTEX_EXPORT int32_t cortex_kernel_device(void) {{ return CORTEX_DEVICE_CPU; }}
extern "C" CORTEX_EXPORT const char* cortex_kernel_identity(void) {{ return "{identity}"; }}
// The phases of this thread's last run in microseconds, when CORTEX_PROFILE is set: inputs checked, prepared,
// hoisted products, linearized, level 0 (leaves) done, every level done.
extern "C" CORTEX_EXPORT int32_t cortex_kernel_profile(double* out, int32_t n) {{ return cortex::Phases::last(out, n); }}

namespace {{
"""

WORKSPACE = """constexpr int32_t kNumCases = {cases};
constexpr int64_t kReads = {reads};  // child-state rows a position reads, at most
constexpr int64_t kSlots = {slots};  // host values a position looks up, at most
alignas(64) const {real} kZeros[{width}] = {{}};  // the state of a missing child

static {real}* grow(std::vector<std::vector<{real}>>& pool, size_t i, int64_t size) {{
  if (pool.size() <= i) pool.resize(i + 1);
  if (static_cast<int64_t>(pool[i].size()) < size) pool[i].resize(size);
  return pool[i].data();
}}

// The batch buffers of one thread running levels (the run's, or one lane's), reused across runs.
struct Scratch {{
  std::vector<std::vector<{real}>> buffers;
  std::vector<std::vector<std::vector<{real}>>> task_buffers;  // per worker of a fused section

  {real}* buffer(size_t i, int64_t size) {{ return grow(buffers, i, size); }}
  void reserve_tasks(int64_t tasks) {{
    if (static_cast<int64_t>(task_buffers.size()) < tasks) task_buffers.resize(tasks);
  }}
  {real}* task_buffer(int64_t task, size_t i, int64_t size) {{ return grow(task_buffers[task], i, size); }}
}};

// One run's buffers, reused across runs (WorkspacePool): no allocation in steady state.
struct Workspace {{
  cortex::Linearizer linearizer;
  cortex::Schedule schedule;
  cortex::Lanes lanes;
  std::vector<Scratch> scratch{{1}};  // [0]: the run's; one per lane
  std::vector<uint8_t> overwritten;  // a state table's rows the positions overwrite before any read
{positions}
  std::vector<std::vector<{real}>> projections;  // hoisted input products, one table per run

  {real}* projection(size_t i, int64_t size) {{ return grow(projections, i, size); }}
}};
"""



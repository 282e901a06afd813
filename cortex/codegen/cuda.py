"""Kernel plan -> CUDA kernel source: the whole recursion in one persistent cooperative kernel.

Per run, on the host: the inputs are checked, the structure arrays (host memory, or copied from the device) are
prepared and linearized exactly as on the CPU (the same `prepare` code, cstyle.py), and the schedule (level batches,
each position's rows, reads and slots) goes to the device in one copy. Then one cooperative launch, one block per
SM, walks every batch:

- a matrix product whose result only the case's new rows read is *fused* with them: the rows' elements j are split
  over the blocks, each block computes exactly the product columns its elements read (Slice offsets + j) and then
  those elements, so no grid barrier separates the product from its epilogue; the weight columns a block needs stay
  in its shared memory for the whole run;
- a product's input rows (child states, lookups, elementwise math over them) are read in place inside the dot
  products, not copied first;
- other steps of the plan (products other steps read, reductions, per-node matrices) run grid-wide with a barrier
  after each;
- batches of one level are independent: the barrier comes only where the level changes.
Hoisted input products (X @ W for every row) run once before the first batch. Constants and tables live on the
device; the structure is never needed there except as the schedule.
"""
from __future__ import annotations

import numpy as np

from ..ir import nodes as ir
from ..ir.printer import format_pred
from . import cstyle
from .cstyle import Access, comment, cstr, dense, transposed
from .emitter import KernelEmitter
from .plan import CodegenError


def _table_row(table: str, row: str, width: int):
    """Element i of the table row a position writes."""
    return lambda i: f"{table}[{row} * {width} + {i}]"


class CudaDialect(cstyle.Dialect):
    target = "cuda"
    zeros = "kZeros"
    index_table_decl = "__device__ const int32_t"

    def read(self, k):
        return f"P.reads[q * kReads + {k}]"

    def slot(self, s):
        return f"P.slots[q * kSlots + {s}]"

    def table(self, tid):
        return f"P.{tid}"

    def const(self, cid):
        return f"P.{cid}"

    def array(self, aid):
        return f"P.{aid}"

    def projection(self, k):
        return f"P.proj{k}"


class CudaEmitter(KernelEmitter):
    """CUDA for the GPU backend (targets.CUDA): one persistent cooperative kernel walking every batch, products read
    their operands in place (a warp per row) against weight columns kept in shared memory (plan.product_columns).
    float32 only: a float64 program (a model written with `model.double()`) is refused, and its region is left to
    ONNX Runtime."""

    def __init__(self, program, backend):
        if program.element != "float32":
            raise CodegenError(f"{program.element} on CUDA is not supported: the CUDA kernels compute in float32 (convert "
                               "this model for the CPU target, which computes float64 in double)")
        super().__init__(program, backend)

    def body(self) -> list:
        return [self.case_fn(c) for c in self.plan.cases] + [self.kernel_fn()]

    def before_tables(self) -> list:
        plan = self.plan
        return [CONSTANTS.format(cases=len(self.p.cases), reads=plan.max_reads, slots=plan.max_slots,
                                 width=plan.max_width, weights=max(len(plan.product_columns), 1),
                                 buffers=max(len(plan.buffer_widths), 1))]

    def after_tables(self) -> list:
        return [WORKSPACE.format(positions=cstyle.POSITION_ARRAYS + cstyle.set_arrays(self.plan)),
                cstyle.WORKSPACE_POOL, self.ctx_struct(),
                self.params_struct(), cstyle.prepare_fn(self.plan, self.syntax)]

    def _resident(self, weight, offsets=None, width=0) -> int:
        """The shared-memory slot of the weight columns a product reads (plan.product_columns)."""
        return self.plan.product_slot(weight, offsets, width)

    def residency(self) -> list:
        """[(const id, N, K, column offsets or None, output width)] per shared-memory slot."""
        return [(self.plan.const_ids[w], self.p.constants[w].shape[1], self.p.constants[w].shape[0], offsets, width)
                for w, offsets, width in self.plan.product_columns]

    def ctx_struct(self) -> str:
        lines = ["struct Ctx {"] + cstyle.host_context_fields(self.plan) + ["};"]
        return "\n".join(lines) + "\n"

    def params_struct(self) -> str:
        plan = self.plan
        lines = ["// What the device kernel reads: passed by value at launch.", "struct Params {",
                 "  int64_t N, L, num_batches;"]
        for name, value in self.p.constants.items():
            lines.append(f"  const float* {plan.const_ids[name]};  // {comment(name)}")
        for t in self.p.tables:
            lines.append(f"  float* {plan.table_ids[t.name]};  // {t.kind} {comment(t.name)} [{t.width} per row]")
        for d in self.p.inputs:
            if d.kind == "array" and d.dtype == "float32":
                a = plan.array_ids[d.name]
                lines.append(f"  const float* {a}; int64_t {a}_rows;  // {comment(d.name)} (device)")
        for k, _ in enumerate(plan.projections):
            lines.append(f"  float* proj{k};")
        lines += ["  const int64_t* node; const int64_t* position; const int64_t* reads; const int64_t* slots;",
                  "  const int64_t* positions; const int64_t* batch_offset;",
                  "  const int32_t* batch_case; const int32_t* batch_hazard; const int32_t* batch_level;"]
        if plan.max_sets:
            lines.append("  const int64_t* members; const int64_t* set_begin; const int64_t* set_end;  // child sets, "
                         "per position in schedule order")
        lines += [
                  "  float* buffer[kBuffers];",
                  "  int64_t resident[kWeights];  // offset of a weight's columns in shared memory, or -1",
                  "};"]
        return "\n".join(lines) + "\n"

    # ---- device code per case -------------------------------------------------------------------

    def element_loop(self, env, targets, computing=None, span=None):
        """Loops computing every element of the targets for the batch; targets are (expr, dest). Grid-stride over
        B x width, or, with span=(j0, nj) (fused), block-stride over B x this block's elements j0 .. j0+nj."""
        lines = []
        env.start(computing)
        for w, group in env.pieces(targets).items():
            temps, code, pointers = {}, [], {}
            stores = []
            for expr, dest, col in group:
                value = env.expr(expr, Access(0), w, temps, code, pointers)
                stores.append(f"{dest(f'{col} + j' if col else 'j')} = {value};")
            if span is None:
                lines += [f"  for (int64_t e = blockIdx.x * blockDim.x + threadIdx.x; e < B * {w}; e += gridDim.x * blockDim.x) {{",
                          f"    const int64_t b = e / {w}, j = e % {w};"]
            else:
                lines += ["  for (int64_t e = threadIdx.x; e < B * nj; e += blockDim.x) {",
                          "    const int64_t b = e / nj, j = j0 + e % nj;"]
            lines.append("    const int64_t q = off + b; (void)q;  // the schedule is in batch order")
            lines += [f"    {decl}" for _, decl in pointers.values()]
            lines += [f"    {line}" for line in code + stores]
            lines.append("  }")
        return lines

    def gemm_loop(self, env, e, source, out, slot, fused=None):
        """out[b][c] = x[b] . W[:, c] (+ bias) for the batch: a warp per row of x, which it holds in registers (read
        once: in place through the element renderer when source is None, else from a buffer), then a dot product
        per column with the weight column from shared memory (or global). Columns: this block's range of N, or
        (fused) the columns offsets[s] + j for its elements j. A wide batch (more rows than the block has warps)
        takes its rows GEMM_ROWS at a time per warp: each weight element read once for all of them, their dot
        products interleaved (independent chains in flight); every dot product sums in the same order either way,
        so the results are the same bits."""
        plan = self.plan
        n, k = e.width, e.x.width
        wid = plan.const_ids[e.weight]
        bias = f"P.{plan.const_ids[e.bias]}[c]" if e.bias else None
        parts = e.x.parts if isinstance(e.x, ir.Concat) and source is None else (e.x,)
        if k > 2048:
            raise CodegenError(f"a product of depth {k} (the CUDA kernel holds a row in registers, up to 2048)")
        lines = ["  {  // " + comment(f"matmul {e.weight}"),
                 "    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;",
                 f"    const float* resident = P.resident[{slot}] >= 0 ? smem + P.resident[{slot}] : nullptr;"]
        if fused is None:
            lines += [f"    int64_t c0, c1; cortex::cuda::column_range({n}, blockIdx.x, gridDim.x, &c0, &c1);",
                      "    const int64_t cols = c1 - c0;"]
        else:
            offsets = cstyle.cints(fused)
            lines += [f"    const int64_t offsets[{len(fused)}] = {{{offsets}}};",
                      "    const int64_t cols = " + f"{len(fused)} * nj;"]
        # the row's elements, rendered once: the code reads `b` and `q`, which each row's scope defines
        env.start()
        pointers, regs, col = {}, [], 0
        for pi, part in enumerate(parts):
            if source is not None:
                code, value = [], f"{source}[b * {k} + j]"
            else:
                temps, code = {}, []
                value = env.expr(part, Access(0), part.width, temps, code, pointers)
            regs.append((pi, -(-part.width // 32), part.width, col, code, value))
            col += part.width
        rows = self.GEMM_ROWS if k * self.GEMM_ROWS <= 2048 else 1  # x in registers: at most 64 floats a lane
        if rows > 1:
            lines.append("    if (B > cortex::cuda::kWarps) {  // wide: rows " + f"{rows} at a time per warp")
            lines += ["  " + line for line in self._gemm_rows(rows, regs, pointers, k, n, wid, bias, out, fused)]
            lines.append("    } else {")
            lines += ["  " + line for line in self._gemm_rows(1, regs, pointers, k, n, wid, bias, out, fused)]
            lines.append("    }")
        else:
            lines += self._gemm_rows(1, regs, pointers, k, n, wid, bias, out, fused)
        lines.append("  }")
        return lines

    GEMM_ROWS = 4  # rows a warp takes at once in a wide batch

    @staticmethod
    def _gemm_rows(rows, regs, pointers, k, n, wid, bias, out, fused):
        """The product's loop with each warp taking `rows` rows at a time (rows b0 .. b0 + rows - 1)."""
        lines = [f"    for (int64_t b0 = warp * {rows}; b0 < B; b0 += cortex::cuda::kWarps * {rows}) {{"]
        for r in range(rows):
            lines += [f"      float x{pi}_{r}[{count}];" for pi, count, *_ in regs]
        for r in range(rows):
            lines += ["      {", f"        const int64_t b = b0 + {r}, q = off + b; (void)q;  // the schedule is in batch order"]
            guard = r > 0
            pad = "  " if guard else ""
            if guard:
                lines.append("        if (b < B) {")
            lines += [f"        {pad}{decl}" for _, decl in pointers.values()]
            for pi, count, width, _, code, value in regs:
                lines += [f"        {pad}#pragma unroll", f"        {pad}for (int i = 0; i < {count}; ++i) {{",
                          f"        {pad}  const int64_t j = lane + 32 * i;",
                          f"        {pad}  if (j < {width}) {{"]
                lines += [f"        {pad}    {line}" for line in code]
                lines += [f"        {pad}    x{pi}_{r}[i] = {value};",
                          f"        {pad}  }} else {{ x{pi}_{r}[i] = 0.0f; }}", f"        {pad}}}"]
            if guard:
                lines.append("        } else {")
                for pi, count, *_ in regs:
                    lines.append(f"          for (int i = 0; i < {count}; ++i) x{pi}_{r}[i] = 0.0f;")
                lines.append("        }")
            lines.append("      }")
        lines.append("      for (int64_t t = 0; t < cols; ++t) {")
        if fused is None:
            lines.append("        const int64_t c = c0 + t, row = t;")
        else:
            lines.append("        const int64_t c = offsets[t / nj] + j0 + t % nj, row = t;")
        lines += [f"        const float* w = resident != nullptr ? resident + row * {k} : P.{wid} + c * {k};",
                  "        " + " ".join(f"float acc{r} = 0.0f;" for r in range(rows))]
        for pi, count, width, offset, _, _ in regs:
            lines += ["        #pragma unroll",
                      f"        for (int i = 0; i < {count}; ++i) {{",
                      "          const int64_t j = lane + 32 * i;",
                      f"          if (j < {width}) {{",
                      f"            const float wj = w[{offset} + j];"]
            lines += [f"            acc{r} = fmaf(x{pi}_{r}[i], wj, acc{r});" for r in range(rows)]
            lines += ["          }", "        }"]
        lines += [f"        acc{r} = cortex::cuda::warp_sum(acc{r});" for r in range(rows)]
        lines.append("        if (lane == 0) {")
        for r in range(rows):
            value = f"acc{r} + {bias}" if bias else f"acc{r}"
            store = f"{out}[(b0 + {r}) * {n} + c] = {value};"
            lines.append(f"          {store}" if r == 0 else f"          if (b0 + {r} < B) {store}")
        lines += ["        }", "      }", "    }"]
        return lines

    def case_fn(self, cp) -> str:
        plan, case = self.plan, cp.case
        env = cstyle.ElementRenderer(plan, cp, self.dialect, self.index_table)
        lines = [f"// case {comment(case.name)}: when {comment(format_pred(case.predicate))}",
                 f"__device__ void run_case_{cp.index}(const Params& P, int64_t off, int64_t B, bool hazard, "
                 "const float* smem, cg::grid_group& grid) {"]
        self.emit_steps(env, cp, lines, lambda k, step, width: f"  float* {step.buffer} = P.buffer[{step.slot}];  "
                                                              f"// {step.kind}")
        direct, outs = [], []
        for k, (table, expr, buf) in enumerate(cp.outputs):
            t = self.p.table(table)
            row = "P.position[q]" if t.kind == "emit" else "P.node[q]"
            direct.append((expr, _table_row(f"P.{plan.table_ids[table]}", row, expr.width)))
            lines.append(f"  float* {buf} = P.buffer[{cp.output_slots[k]}];  // new rows of {comment(table)}")
            outs.append((expr, dense(buf, expr.width)))
        span = None
        if cp.fused:
            span = True
            lines += [f"  int64_t j0, j1; cortex::cuda::column_range({cp.fused_width}, blockIdx.x, gridDim.x, &j0, &j1);",
                      "  const int64_t nj = j1 - j0;",
                      "  // the products' columns this block's elements read, then those elements: no grid barrier"]
            for step in cp.steps:
                if step.node in cp.fused:
                    e = step.node
                    source = None if step.inputs[0] in cp.inline else step.inputs[0]
                    slot = self._resident(e.weight, cp.fused[e], cp.fused_width)
                    lines += self.gemm_loop(env, e, source, step.buffer, slot, fused=cp.fused[e])
            lines.append("  __syncthreads();")
        lines.append("  if (!hazard) {  // the new rows go straight into the tables")
        lines += ["  " + line for line in self.element_loop(env, direct, span=span)]
        lines += ["    return;", "  }",
                  "  // a position reads its own row before writing it: compute every new row, then commit"]
        lines += self.element_loop(env, outs, span=span)
        lines.append("  grid.sync();")
        for table, expr, buf in cp.outputs:
            t = self.p.table(table)
            row = "P.position[q]" if t.kind == "emit" else "P.node[q]"
            w = expr.width
            lines += [f"  for (int64_t e = blockIdx.x * blockDim.x + threadIdx.x; e < B * {w}; e += gridDim.x * blockDim.x) {{",
                      f"    const int64_t b = e / {w}, j = e % {w};",
                      "    const int64_t q = off + b;",
                      f"    P.{plan.table_ids[table]}[{row} * {w} + j] = {buf}[e];",
                      "  }"]
        lines.append("}")
        return "\n".join(lines) + "\n"

    def after_step(self) -> list:
        return ["  grid.sync();"]

    # ---- one emit function per step kind (plan.Step) --------------------------------------------------------

    def emit_compute(self, env, cp, step):
        return self.element_loop(env, [(step.node, dense(step.buffer, step.node.width))], computing=step.node)

    def emit_transpose(self, env, cp, step):
        e = step.node
        return self.element_loop(env, [(e.x, transposed(step.buffer, e.cols, e.x.width // e.cols))])

    def emit_gemm(self, env, cp, step):
        e = step.node
        if e.rows == 1:
            source = None if step.inputs[0] in cp.inline else step.inputs[0]
            return self.gemm_loop(env, e, source, step.buffer, self._resident(e.weight))
        return self._gemm_columns(step, f"B * {e.rows}", e.x.width // e.rows, e.width // e.rows)

    def emit_left_gemm(self, env, cp, step):
        e = step.node
        return self._gemm_columns(step, f"B * {e.cols}", e.x.width // e.cols, e.width // e.cols)

    def _gemm_columns(self, step, m, k_dim, n_dim):
        e, plan = step.node, self.plan
        slot = self._resident(e.weight)
        bias = f"P.{plan.const_ids[e.bias]}" if getattr(e, "bias", None) else "nullptr"
        return [f"  cortex::cuda::gemm_columns({m}, {n_dim}, {k_dim}, {step.inputs[0]}, {k_dim}, "
                f"P.{plan.const_ids[e.weight]}, P.resident[{slot}] >= 0 ? smem + P.resident[{slot}] : "
                f"nullptr, {bias}, {step.buffer}, {n_dim});  // {comment(e.weight)}"]

    def emit_matvec(self, env, cp, step):
        e = step.node
        mat, vec = step.inputs
        cols = e.vec.width
        return [f"  for (int64_t e = blockIdx.x * blockDim.x + threadIdx.x; e < B * {e.width}; e += gridDim.x * blockDim.x) {{",
                f"    const int64_t b = e / {e.width}, r = e % {e.width};",
                f"    const float* mat = {mat} + b * {e.mat.width} + r * {cols};",
                f"    const float* vec = {vec} + b * {cols};",
                "    float acc = 0.0f;",
                f"    for (int64_t j = 0; j < {cols}; ++j) acc = fmaf(mat[j], vec[j], acc);",
                f"    {step.buffer}[e] = acc;",
                "  }"]

    def emit_set_reduce(self, env, cp, step):
        """A thread per element of the batch's rows: the op over the position's set members of the body."""
        e = step.node
        s, temps, code, node_decls, member_decls, combine = self.set_reduce_parts(env, cp, step, "acc")
        return ([f"  for (int64_t e = blockIdx.x * blockDim.x + threadIdx.x; e < B * {e.width}; e += gridDim.x * blockDim.x) {{",
                 f"    const int64_t b = e / {e.width}, j = e % {e.width};",
                 "    const int64_t q = off + b; (void)q;  // the schedule is in batch order"]
                + [f"    {d}" for d in node_decls]
                + [f"    float acc = {cstyle.cfloat(e.empty)};  // {comment(e.op)} over the set",
                   f"    for (int64_t m = P.set_begin[q * Workspace::kSets + {s}]; "
                   f"m < P.set_end[q * Workspace::kSets + {s}]; ++m) {{",
                   "      const int64_t u = P.members[m];"]
                + [f"      {d}" for d in member_decls]
                + [f"      {line}" for line in code]
                + [f"      acc = {combine};", "    }", f"    {step.buffer}[e] = acc;", "  }"])

    def emit_reduce(self, env, cp, step):
        e = step.node
        combine = cstyle.REDUCE[e.op].format(a="acc", b="x[g]")
        return [f"  for (int64_t e = blockIdx.x * blockDim.x + threadIdx.x; e < B * {e.width}; e += gridDim.x * blockDim.x) {{",
                f"    const float* x = {step.inputs[0]} + e * {e.group};",
                "    float acc = x[0];",
                f"    for (int64_t g = 1; g < {e.group}; ++g) acc = {combine};",
                f"    {step.buffer}[e] = acc;",
                "  }"]

    def kernel_fn(self) -> str:
        plan = self.plan
        projection_slots = [self._resident(weight) for _, weight, _ in plan.projections]
        lines = ["// The persistent kernel: resident weights, hoisted products, then every batch; a grid barrier where",
                 "// the level changes.",
                 "__global__ void __launch_bounds__(cortex::cuda::kThreads) cortex_recursion(Params P) {",
                 "  cg::grid_group grid = cg::this_grid();",
                 "  extern __shared__ float smem[];"]
        for slot, (cid, n, k, offsets, width) in enumerate(self.residency()):
            if offsets is None:
                lines.append(f"  if (P.resident[{slot}] >= 0) cortex::cuda::load_resident({n}, {k}, P.{cid}, smem + P.resident[{slot}]);")
            else:
                offs = cstyle.cints(offsets)
                lines += [f"  if (P.resident[{slot}] >= 0) {{",
                          f"    const int64_t offsets[{len(offsets)}] = {{{offs}}};",
                          f"    cortex::cuda::load_resident_columns({len(offsets)}, offsets, {width}, {k}, P.{cid}, smem + P.resident[{slot}]);",
                          "  }"]
        lines.append("  __syncthreads();")
        for k, (array, weight, bias) in enumerate(plan.projections):
            a = plan.array_ids[array]
            kk, n = self.p.constants[weight].shape
            slot = projection_slots[k]
            b = f"P.{plan.const_ids[bias]}" if bias else "nullptr"
            lines.append(f"  cortex::cuda::gemm_columns(P.{a}_rows, {n}, {kk}, P.{a}, {kk}, P.{plan.const_ids[weight]}, "
                         f"P.resident[{slot}] >= 0 ? smem + P.resident[{slot}] : nullptr, {b}, P.proj{k}, {n});"
                         f"  // {comment(array)} @ {comment(weight)}")
        if plan.projections:
            lines.append("  grid.sync();")
        lines += ["  for (int64_t b = 0; b < P.num_batches; ++b) {",
                  "    const int64_t off = P.batch_offset[b], B = P.batch_offset[b + 1] - off;",
                  "    const bool hazard = P.batch_hazard[b] != 0;",
                  "    switch (P.batch_case[b]) {"]
        for c in range(len(self.p.cases)):
            lines.append(f"      case {c}: run_case_{c}(P, off, B, hazard, smem, grid); break;")
        lines += ["    }",
                  "    // batches of one level are independent (each case has its own buffers)",
                  "    if (b + 1 == P.num_batches || P.batch_level[b + 1] != P.batch_level[b]) grid.sync();",
                  "  }", "}"]
        return "\n".join(lines) + "\n"

    # ---- the host entry point ---------------------------------------------------------------------

    def run_body(self) -> list:
        p, plan = self.p, self.plan
        float_arrays = [(i, d) for i, d in enumerate(p.inputs) if d.kind == "array" and d.dtype == "float32"]
        lines = ["    cortex::Phases phases;",
                 f"    if (num_inputs != {len(self.inputs)}) throw cortex::KernelError(\"expected {len(self.inputs)} inputs, got \" + std::to_string(num_inputs));",
                 "    if (execution == nullptr || execution->device_type != CORTEX_DEVICE_CUDA) throw cortex::KernelError(\"a CUDA kernel needs a CUDA execution (device and stream)\");",
                 "    cortex::cuda::check(cudaSetDevice(execution->device_id), \"cudaSetDevice\");",
                 "    cudaStream_t stream = static_cast<cudaStream_t>(execution->stream);",
                 *cstyle.LEASE_WORKSPACE,
                 "    Ctx cx;",
                 "    Params P{};",
                 "    const int64_t p = -1; (void)p;  // index errors before the recursion name no position"]
        structure = [i for i, d in enumerate(p.inputs) if (d.kind == "array" and d.dtype != "float32") or
                     d.kind == "shape"]
        if structure:
            lines += [f"    static const int kStructure[] = {{{cstyle.cints(structure)}}};  // read on the host",
                      f"    ws.host_copies(inputs, kStructure, {len(structure)}, stream);"]
        lines += cstyle.check_array_inputs(plan, lambda i, d: (
            f"ws.host_data({i})" if d.dtype != "float32" else f"inputs[{i}].data"))
        for i, d in float_arrays:
            a = plan.array_ids[d.name]
            lines.append(f"    P.{a} = static_cast<const float*>(ws.device_copy({i}, inputs[{i}], stream)); P.{a}_rows = cx.{a}_rows;")
        lines += cstyle.check_const_inputs(plan, lambda i, cid: f"P.{cid} = static_cast<const float*>(ws.device_copy({i}, inputs[{i}], stream));")
        lines += cstyle.rows_and_positions(plan, self.syntax, host_data=lambda i, d: f"ws.host_data({i})")
        lines += ["    P.N = cx.N;", "    P.L = cx.L;"]
        lines += cstyle.allocate_tables(
            plan, "P",
            lambda i, tid, t: (f"if (cx.N) cortex::cuda::check(cudaMemcpyAsync(P.{tid}, inputs[{i}].data, sizeof(float) * "
                               f"cx.N * {t.width}, inputs[{i}].device == CORTEX_DEVICE_CUDA ? cudaMemcpyDeviceToDevice : "
                               f"cudaMemcpyHostToDevice, stream), \"copying {cstr(t.init)}\");"),
            lambda tid, rows, t: (f"if ({rows}) cortex::cuda::check(cudaMemsetAsync(P.{tid}, 0, sizeof(float) * {rows} * "
                                  f"{t.width}, stream), \"cudaMemsetAsync\");"),
            host_data=lambda i, d: f"ws.host_data({i})")
        linearize = cstyle.linearize_call(plan)
        widths = cstyle.cints(plan.buffer_widths, "1")
        shapes = ", ".join(f"{n}, {k}, {len(offs) if offs else 0}, {width}"
                           for _, n, k, offs, width in self.residency()) or "0, 0, 0, 0"
        lines += [
            "    phases.mark(0);  // inputs checked, tables started",
            "    prepare(cx, ws);",
            f"    std::string failure = {linearize};",
            "    if (!failure.empty()) throw cortex::KernelError(failure);",
            "    phases.mark(1);  // prepared and linearized",
            "    const cortex::cuda::DeviceSchedule s = ws.upload_schedule(ws.schedule, ws.listed, ws.case_id.data(), "
            "ws.node.data(), ws.position.data(), ws.reads.data(), kReads, ws.slots.data(), kSlots, stream"
            + (", ws.read_offsets.data(), ws.members.data());" if plan.max_sets else ");"),
            "    P.node = s.node; P.position = s.position; P.reads = s.reads; P.slots = s.slots;",
            "    P.positions = s.positions; P.batch_offset = s.batch_offset; P.batch_case = s.batch_case;",
            "    P.batch_hazard = s.batch_hazard; P.batch_level = s.batch_level;",
            "    P.num_batches = s.num_batches;",
            *(["    ws.upload_sets(ws.set_begin.data(), ws.set_end.data(), Workspace::kSets, ws.members, &P.set_begin, "
               "&P.set_end, &P.members, stream);"] if plan.max_sets else []),
            f"    static const int64_t widths[kBuffers] = {{{widths}}};",
            "    ws.buffers(widths, kBuffers, s.max_batch, P.buffer);",
        ]
        for k, (array, weight, bias) in enumerate(plan.projections):
            a = plan.array_ids[array]
            n = self.p.constants[weight].shape[1]
            lines.append(f"    P.proj{k} = ws.projection({k}, cx.{a}_rows * {n});")
        work = "true" if plan.projections else "P.num_batches > 0"
        lines += [
            "    phases.mark(2);  // schedule sent",
            f"    static const int64_t shapes[] = {{{shapes}}};",
            f"    if ({work}) ws.launch(reinterpret_cast<const void*>(cortex_recursion), &P, shapes, {len(plan.product_columns)}, "
            "P.resident, stream);",
            "    phases.mark(3);  // launched",
            "    cortex::cuda::check(cudaStreamSynchronize(stream), \"the Cortex kernel\");",
            "    phases.mark(4);  // done",
            "    if (phases.on()) phases.set(5, ws.timer.elapsed_us());  // the kernel alone",
            "    phases.publish();",
            "    return 0;",
        ]
        return lines

    def after_run(self) -> list:
        return ["",
                "// The phases of this thread's last run, in microseconds, when CORTEX_PROFILE is set (tools/cuda_check.py):",
                "// check inputs, prepare + linearize, send the schedule, launch, finish, and the kernel alone (events).",
                "extern \"C\" CORTEX_EXPORT int32_t cortex_kernel_profile(double* out, int32_t n) {",
                "  return cortex::Phases::last(out, n);",
                "}"]


HEADER = """// Generated by Cortex for recursion {name} (CUDA). Do not edit: regenerate with cortex-convert --target cuda.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "activations.h"
#include "cuda_support.cuh"
#include "kernel_abi.h"
#include "kernel_support.h"
#include "linearize.h"

#define CORTEX_EXPORT __attribute__((visibility("default")))

extern "C" CORTEX_EXPORT int32_t cortex_kernel_abi_version(void) {{ return CORTEX_KERNEL_ABI_VERSION; }}
extern "C" CORTEX_EXPORT int32_t cortex_kernel_device(void) {{ return CORTEX_DEVICE_CUDA; }}
extern "C" CORTEX_EXPORT const char* cortex_kernel_identity(void) {{ return "{identity}"; }}

namespace {{
namespace cg = cooperative_groups;
"""

CONSTANTS = """constexpr int32_t kNumCases = {cases};
constexpr int64_t kReads = {reads};  // child-state rows a position reads, at most
constexpr int64_t kSlots = {slots};  // host values a position looks up, at most
constexpr int kWeights = {weights};  // weights a block may keep in shared memory
constexpr int kBuffers = {buffers};  // per-batch buffers (each case its own)
__device__ const float kZeros[{width}] = {{}};  // the state of a missing child
"""

WORKSPACE = """// One run's host state, reused across runs (WorkspacePool): the positions, the linearizer and the device buffers.
struct Workspace : cortex::cuda::Runtime {{
  cortex::Linearizer linearizer;
  cortex::Schedule schedule;
{positions}
}};
"""


CudaEmitter.header = HEADER

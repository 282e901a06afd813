"""Kernel plan -> CUDA kernel source: the whole recursion in one persistent cooperative kernel.

Per run, on the host: the inputs are checked, the structure arrays (host memory, or copied from the device) are
prepared and linearized exactly as on the CPU (the same `prepare` code, cstyle.py), and the schedule (level batches,
each position's rows, reads and slots) goes to the device in one copy. Then one cooperative launch, one block per
SM, walks every batch:

- weight columns are split over the blocks and held in shared memory for the whole run when they fit (each block
  owns the same output columns of a product at every level), else read from global memory (L2);
- per batch, each step of the plan runs grid-wide (the products as warp dot products, elementwise steps as
  grid-stride loops over the batch's elements), with a grid barrier where the next step reads what other blocks
  wrote; the rows a case writes are computed in one fused elementwise loop and stored straight into the tables;
- hoisted input products (X @ W for every row) run once before the first batch.
Constants and tables live on the device; the structure is never needed there except as the schedule.
"""
from __future__ import annotations

from ..ir import nodes as ir
from ..ir.printer import format_pred
from . import cstyle
from .cstyle import Access, cstr, comment, dense, transposed
from .plan import CodegenError, KernelPlan, plan_kernel

import numpy as np


def _table_row(table: str, row: str, width: int):
    """Element i of the table row a position writes."""
    return lambda i: f"{table}[{row} * {width} + {i}]"


def transpose_weights(plan: KernelPlan) -> None:
    """GEMM weights are stored as W^T ([N, K]) for the device: a warp reads one column's K values contiguously."""
    for inp in plan.inputs:
        if inp.kind == "const" and inp.const in plan.packed:
            w = plan.program.constants[inp.const]
            inp.array = np.ascontiguousarray(w.T, dtype=np.float32)
            inp.layout = "transposed"


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


class CudaGenerator:
    target = "cuda"

    def __init__(self, program: ir.Program):
        self.plan = plan_kernel(program)
        transpose_weights(self.plan)
        self.p = program
        self.inputs = self.plan.inputs
        self.syntax = cstyle.HostSyntax(self.plan)
        self.dialect = CudaDialect()
        self.index_tables = {}
        self.weights = self._gemm_weights()  # [(const id, N, K)] in resident-slot order

    def index_table(self, indices) -> str:
        key = tuple(indices)
        if key not in self.index_tables:
            self.index_tables[key] = f"kIdx{len(self.index_tables)}"
        return self.index_tables[key]

    def _gemm_weights(self):
        seen = []
        for name in self.p.constants:
            if name in self.plan.packed:
                k, n = self.p.constants[name].shape
                seen.append((self.plan.const_ids[name], n, k))
        return seen

    def _slot(self, const_name) -> int:
        cid = self.plan.const_ids[const_name]
        return next(i for i, (c, _, _) in enumerate(self.weights) if c == cid)

    # ---- source ---------------------------------------------------------------------------------

    def generate(self, identity: str) -> str:
        plan = self.plan
        cases = [self.case_fn(c) for c in plan.cases]
        tables = [f"{self.dialect.index_table_decl} {name}[] = {{{', '.join(map(str, idx))}}};"
                  for idx, name in self.index_tables.items()]
        out = [HEADER.format(name=comment(self.p.name), identity=cstr(identity)),
               CONSTANTS.format(cases=len(self.p.cases), reads=plan.max_reads, slots=plan.max_slots,
                                width=plan.max_width, weights=max(len(self.weights), 1),
                                buffers=plan.num_buffers)]
        if tables:
            out.append("// element positions of rearranged values\n" + "\n".join(tables) + "\n")
        out += [WORKSPACE.format(positions=cstyle.POSITION_ARRAYS), self.ctx_struct(), self.params_struct(),
                cstyle.prepare_fn(plan, self.syntax)]
        out += cases
        out.append(self.kernel_fn())
        out.append("}  // namespace\n")
        out.append(self.run_fn())
        return "\n".join(out)

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
                  "  const int64_t* positions; const int64_t* batch_offset; const int32_t* batch_case; const int32_t* batch_hazard;",
                  "  float* buffer[kBuffers];",
                  "  int64_t resident[kWeights];  // offset of a weight's columns in shared memory, or -1",
                  "};"]
        return "\n".join(lines) + "\n"

    # ---- device code per case -------------------------------------------------------------------

    def element_loop(self, env, targets, computing=None, hazard=None):
        """Grid-stride loops computing every element of the targets for the batch; targets are (expr, dest)."""
        lines = []
        _, _, pointers = env.start(computing)
        for w, group in env.pieces(targets).items():
            temps, code, pointers = {}, [], {}
            stores = []
            for expr, dest, col in group:
                value = env.expr(expr, Access(0), w, temps, code, pointers)
                stores.append(f"{dest(f'{col} + j' if col else 'j')} = {value};")
            lines += [f"  for (int64_t e = blockIdx.x * blockDim.x + threadIdx.x; e < B * {w}; e += gridDim.x * blockDim.x) {{",
                      f"    const int64_t b = e / {w}, j = e % {w};",
                      "    const int64_t q = P.positions[off + b]; (void)q;"]
            lines += [f"    {decl}" for _, decl in pointers.values()]
            lines += [f"    {line}" for line in code + stores]
            lines.append("  }")
        return lines

    def case_fn(self, cp) -> str:
        plan, case = self.plan, cp.case
        env = cstyle.ElementRenderer(plan, cp, self.dialect, self.index_table)
        lines = [f"// case {comment(case.name)}: when {comment(format_pred(case.predicate))}",
                 f"__device__ void run_case_{cp.index}(const Params& P, int64_t off, int64_t B, bool hazard, "
                 "const float* smem, cg::grid_group& grid) {"]
        buffers = {}
        for k, step in enumerate(cp.steps):
            e = step.node
            buf = f"P.buffer[{k}]"
            buffers[step.buffer] = buf
            lines.append(f"  float* {step.buffer} = {buf};  // {step.kind}")
            if step.kind == "compute":
                lines += self.element_loop(env, [(e, dense(step.buffer, e.width))], computing=e)
            elif step.kind == "transpose":
                lines += self.element_loop(env, [(e.x, transposed(step.buffer, e.cols, e.x.width // e.cols))])
            elif step.kind in ("gemm", "left_gemm"):
                if step.kind == "gemm":
                    m, k_dim, n_dim = f"B * {e.rows}", e.x.width // e.rows, e.width // e.rows
                else:
                    m, k_dim, n_dim = f"B * {e.cols}", e.x.width // e.cols, e.width // e.cols
                slot = self._slot(e.weight)
                bias = f"P.{plan.const_ids[e.bias]}" if getattr(e, "bias", None) else "nullptr"
                wid = plan.const_ids[e.weight]
                lines.append(f"  cortex::cuda::gemm_columns({m}, {n_dim}, {k_dim}, {step.inputs[0]}, {k_dim}, P.{wid}, "
                             f"P.resident[{slot}] >= 0 ? smem + P.resident[{slot}] : nullptr, {bias}, {step.buffer}, "
                             f"{n_dim});  // {comment(e.weight)}")
            elif step.kind == "matvec":
                mat, vec = step.inputs
                cols = e.vec.width
                lines += [f"  for (int64_t e = blockIdx.x * blockDim.x + threadIdx.x; e < B * {e.width}; e += gridDim.x * blockDim.x) {{",
                          f"    const int64_t b = e / {e.width}, r = e % {e.width};",
                          f"    const float* mat = {mat} + b * {e.mat.width} + r * {cols};",
                          f"    const float* vec = {vec} + b * {cols};",
                          "    float acc = 0.0f;",
                          f"    for (int64_t j = 0; j < {cols}; ++j) acc = fmaf(mat[j], vec[j], acc);",
                          f"    {step.buffer}[e] = acc;",
                          "  }"]
            elif step.kind == "reduce":
                combine = cstyle.REDUCE[e.op].format(a="acc", b=f"x[g]")
                lines += [f"  for (int64_t e = blockIdx.x * blockDim.x + threadIdx.x; e < B * {e.width}; e += gridDim.x * blockDim.x) {{",
                          f"    const float* x = {step.inputs[0]} + e * {e.group};",
                          "    float acc = x[0];",
                          f"    for (int64_t g = 1; g < {e.group}; ++g) acc = {combine};",
                          f"    {step.buffer}[e] = acc;",
                          "  }"]
            else:
                raise CodegenError(f"step {step.kind}")
            lines.append("  grid.sync();")
        direct = []
        for table, expr, _ in cp.outputs:
            t = self.p.table(table)
            row = "P.position[q]" if t.kind == "emit" else "P.node[q]"
            direct.append((expr, _table_row(f"P.{plan.table_ids[table]}", row, expr.width)))
        lines.append("  if (!hazard) {  // the new rows go straight into the tables")
        lines += ["  " + line for line in self.element_loop(env, direct)]
        lines.append("    return;")
        lines.append("  }")
        lines.append("  // a position reads its own row before writing it: compute every new row, then commit")
        first = len(cp.steps)
        outs = []
        for k, (table, expr, buf) in enumerate(cp.outputs):
            lines.append(f"  float* {buf} = P.buffer[{first + k}];  // new rows of {comment(table)}")
            outs.append((expr, dense(buf, expr.width)))
        lines += self.element_loop(env, outs)
        lines.append("  grid.sync();")
        for table, expr, buf in cp.outputs:
            t = self.p.table(table)
            row = "P.position[q]" if t.kind == "emit" else "P.node[q]"
            w = expr.width
            lines += [f"  for (int64_t e = blockIdx.x * blockDim.x + threadIdx.x; e < B * {w}; e += gridDim.x * blockDim.x) {{",
                      f"    const int64_t b = e / {w}, j = e % {w};",
                      "    const int64_t q = P.positions[off + b];",
                      f"    P.{plan.table_ids[table]}[{row} * {w} + j] = {buf}[e];",
                      "  }"]
        lines.append("}")
        return "\n".join(lines) + "\n"

    def kernel_fn(self) -> str:
        plan = self.plan
        lines = ["// The persistent kernel: resident weights, hoisted products, then every batch with a grid barrier.",
                 "__global__ void __launch_bounds__(cortex::cuda::kThreads) cortex_recursion(Params P) {",
                 "  cg::grid_group grid = cg::this_grid();",
                 "  extern __shared__ float smem[];"]
        for slot, (cid, n, k) in enumerate(self.weights):
            lines.append(f"  if (P.resident[{slot}] >= 0) cortex::cuda::load_resident({n}, {k}, P.{cid}, smem + P.resident[{slot}]);")
        lines.append("  __syncthreads();")
        for k, (array, weight, bias) in enumerate(plan.projections):
            a = plan.array_ids[array]
            kk, n = self.p.constants[weight].shape
            slot = self._slot(weight)
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
        lines += ["    }", "    grid.sync();", "  }", "}"]
        return "\n".join(lines) + "\n"

    # ---- the host entry point ---------------------------------------------------------------------

    def run_fn(self) -> str:
        p, plan = self.p, self.plan
        float_arrays = [(i, d) for i, d in enumerate(p.inputs) if d.kind == "array" and d.dtype == "float32"]
        lines = ["extern \"C\" CORTEX_EXPORT int32_t cortex_kernel_run(const CortexTensor* inputs, int32_t num_inputs,",
                 "    CortexAllocOutput alloc_output, void* alloc_context, const CortexExecution* execution,",
                 "    char* error, size_t error_size) {",
                 "  try {",
                 f"    if (num_inputs != {len(self.inputs)}) throw cortex::KernelError(\"expected {len(self.inputs)} inputs, got \" + std::to_string(num_inputs));",
                 "    if (execution == nullptr || execution->device_type != CORTEX_DEVICE_CUDA) throw cortex::KernelError(\"a CUDA kernel needs a CUDA execution (device and stream)\");",
                 "    cortex::cuda::check(cudaSetDevice(execution->device_id), \"cudaSetDevice\");",
                 "    cudaStream_t stream = static_cast<cudaStream_t>(execution->stream);",
                 "    thread_local Workspace ws;",
                 "    Ctx cx;",
                 "    Params P{};",
                 "    const int64_t p = -1;  // index errors before the recursion name no position"]
        lines += cstyle.check_array_inputs(plan, lambda i, d: (
            f"ws.host_copy({i}, inputs[{i}], stream)" if d.dtype != "float32" else f"inputs[{i}].data"))
        for i, d in float_arrays:
            a = plan.array_ids[d.name]
            lines.append(f"    P.{a} = static_cast<const float*>(ws.device_copy({i}, inputs[{i}], stream)); P.{a}_rows = cx.{a}_rows;")
        lines += cstyle.check_const_inputs(plan, lambda i, cid: f"P.{cid} = static_cast<const float*>(ws.device_copy({i}, inputs[{i}], stream));")
        lines += cstyle.rows_and_positions(plan, self.syntax)
        lines += ["    P.N = cx.N;", "    P.L = cx.L;"]
        for k, t in enumerate(p.tables):
            rows = "cx.N" if t.kind == "state" else "cx.L"
            dims = ", ".join([rows] + [str(d) for d in t.inner])
            tid = plan.table_ids[t.name]
            lines.append(f"    {{ const int64_t shape[{1 + len(t.inner)}] = {{{dims}}};")
            lines.append(f"      P.{tid} = static_cast<float*>(alloc_output(alloc_context, {k}, shape, {1 + len(t.inner)}));")
            lines.append(f"      if (P.{tid} == nullptr && {rows} > 0) throw cortex::KernelError(\"could not allocate output {cstr(t.output)}\");")
            if t.init is not None:
                i = next(j for j, d in enumerate(p.inputs) if d.name == t.init)
                inner = ", ".join(str(d) for d in t.inner)
                lines.append(f"      static const int64_t inner[] = {{{inner}}};")
                lines.append(f"      cortex::check_input(inputs[{i}], \"{cstr(t.init)}\", CORTEX_FLOAT, {1 + len(t.inner)}, inner);")
                lines.append(f"      if (inputs[{i}].shape[0] != cx.N) throw cortex::KernelError(\"state tables must have the same number of rows (Cortex limitation): {cstr(t.init)} has \" + std::to_string(inputs[{i}].shape[0]) + \", expected \" + std::to_string(cx.N));")
                lines.append(f"      if (cx.N) cortex::cuda::check(cudaMemcpyAsync(P.{tid}, inputs[{i}].data, sizeof(float) * cx.N * {t.width}, "
                             f"inputs[{i}].device == CORTEX_DEVICE_CUDA ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice, stream), \"copying {cstr(t.init)}\"); }}")
            else:
                lines.append(f"      if ({rows}) cortex::cuda::check(cudaMemsetAsync(P.{tid}, 0, sizeof(float) * {rows} * {t.width}, stream), \"cudaMemsetAsync\"); }}")
        linearize = ("ws.linearizer.dag(cx.N, ws.case_id.data(), kNumCases, ws.reads.data(), kReads, ws.schedule)"
                     if p.mode == "dag" else
                     "ws.linearizer.visit(cx.N, ws.listed, ws.node.data(), ws.case_id.data(), kNumCases, "
                     "ws.reads.data(), kReads, ws.schedule)")
        widths = ", ".join(str(w) for w in self.buffer_widths())
        shapes = ", ".join(f"{n}, {k}" for _, n, k in self.weights) or "0, 0"
        lines += [
            "    prepare(cx, ws);",
            f"    std::string failure = {linearize};",
            "    if (!failure.empty()) throw cortex::KernelError(failure);",
            "    const cortex::cuda::DeviceSchedule s = ws.upload_schedule(ws.schedule, ws.listed, ws.case_id.data(), "
            "ws.node.data(), ws.position.data(), ws.reads.data(), kReads, ws.slots.data(), kSlots, stream);",
            "    P.node = s.node; P.position = s.position; P.reads = s.reads; P.slots = s.slots;",
            "    P.positions = s.positions; P.batch_offset = s.batch_offset; P.batch_case = s.batch_case;",
            "    P.batch_hazard = s.batch_hazard;",
            "    P.num_batches = s.num_batches;",
            f"    static const int64_t widths[kBuffers] = {{{widths}}};",
            "    ws.buffers(widths, kBuffers, s.max_batch, P.buffer);",
        ]
        for k, (array, weight, bias) in enumerate(plan.projections):
            a = plan.array_ids[array]
            n = self.p.constants[weight].shape[1]
            lines.append(f"    P.proj{k} = ws.projection({k}, cx.{a}_rows * {n});")
        work = "true" if plan.projections else "P.num_batches > 0"
        lines += [
            f"    static const int64_t shapes[] = {{{shapes}}};",
            f"    if ({work}) ws.launch(reinterpret_cast<const void*>(cortex_recursion), &P, shapes, {len(self.weights)}, P.resident, stream);",
            "    cortex::cuda::check(cudaStreamSynchronize(stream), \"the Cortex kernel\");",
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

    def buffer_widths(self):
        """Widths of the per-batch buffers, by buffer index: the widest any case puts there."""
        widths = [1] * self.plan.num_buffers
        for cp in self.plan.cases:
            for k, step in enumerate(cp.steps):
                e = step.node
                widths[k] = max(widths[k], e.x.width if step.kind == "transpose" else e.width)
            for k, (_, expr, _) in enumerate(cp.outputs):
                widths[len(cp.steps) + k] = max(widths[len(cp.steps) + k], expr.width)
        return widths


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
constexpr int kWeights = {weights};  // GEMM weights (each may be resident in shared memory)
constexpr int kBuffers = {buffers};  // per-batch buffers
__device__ const float kZeros[{width}] = {{}};  // the state of a missing child
"""

WORKSPACE = """// Per-thread host state, reused across runs: the positions, the linearizer and the device buffers.
struct Workspace : cortex::cuda::Runtime {{
  cortex::Linearizer linearizer;
  cortex::Schedule schedule;
{positions}
}};
"""

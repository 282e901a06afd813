"""IR -> kernel plan: the target-independent decisions every emitter shares.

The plan fixes the kernel's inputs (runtime arrays in the program's order, then the prepared constants: weights
packed into GEMM panels, biases, folded tables), the per-position host values (child rows read, table rows looked
up, masks and index values: evaluated once per run, before any float work), and for each case the ordered steps over
a batch of positions: which values are materialized into per-batch buffers (matrix products and their inputs,
reductions, rearrangements of computed values), then the fused elementwise loop that computes the rows the case
writes, then the commits. An emitter (cpp.py, cuda.py) renders these steps; it decides nothing about the schedule.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..ir import nodes as ir

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
    kind: str  # array | init | const
    array: np.ndarray = None  # constants only: the prepared tensor to store as an initializer
    const: Optional[str] = None  # constants only: the IR constant it holds
    layout: str = "dense"  # constants only: dense | panels (the CPU GEMM's) | transposed (the CUDA GEMM's)


# Kinds of per-position host values ("slots")
ROW = "row"  # a row index into a constant table, a runtime float array or a hoisted projection
MASK = "mask"  # a predicate, 0 or 1
VALUE = "value"  # an index expression's value


@dataclass
class CaseLayout:
    reads: list = field(default_factory=list)  # [(index IExpr, missing_zero)]: child-state rows read
    slots: list = field(default_factory=list)  # [(key, kind, source)]: host values per position


@dataclass
class Step:
    """One step of a case over a batch of B positions.
    kind 'compute': evaluate `node` for every position into `buffer` [B, width] (a fused elementwise loop);
    'transpose': node.x of a LeftMatMul node, stored transposed ([B * cols, K]) for its GEMM;
    'gemm': buffer = input @ weight (+ bias) (node: MatMul); 'left_gemm': W @ X (node: LeftMatMul, X stored
    transposed in `input`); 'matvec': per-node matrix times vector; 'reduce': groups of `input` reduced."""
    kind: str
    node: ir.RExpr
    buffer: str
    inputs: tuple = ()  # buffer names the step reads


@dataclass
class CasePlan:
    index: int
    case: ir.Case
    layout: CaseLayout
    steps: list  # Step, in order
    buffers: dict  # RExpr -> buffer name (values materialized per batch)
    outputs: list  # [(table, RExpr, buffer name)]: the final rows, then committed


@dataclass
class KernelPlan:
    program: ir.Program
    inputs: list  # KernelInput
    array_ids: dict  # runtime array name -> short id
    const_ids: dict  # IR constant name -> short id
    table_ids: dict  # table name -> short id
    packed: set  # IR constants stored as GEMM panels
    projections: list  # [(array, weight, bias)]: X @ W (+ b) for every row, before the recursion
    cases: list  # CasePlan
    max_reads: int
    max_slots: int
    max_width: int

    @property
    def num_buffers(self) -> int:
        return max([len(c.steps) + len(c.outputs) for c in self.cases] + [1])


ADDRESSABLE = (ir.ChildState, ir.ConstRow, ir.InputRow, ir.InputProjection, ir.ConstVec, ir.Scalar, ir.IndexValue)


def case_layout(case: ir.Case) -> CaseLayout:
    layout = CaseLayout()
    for node in ir.walk_rows([x for _, x in case.writes]):
        if isinstance(node, ir.ChildState):
            key = (node.index, node.missing_zero)
            if key not in layout.reads:
                layout.reads.append(key)
        elif isinstance(node, (ir.ConstRow, ir.InputRow, ir.InputProjection)):
            source = node.const if isinstance(node, ir.ConstRow) else node.array
            key = (node.index, ROW, source)
            if key not in layout.slots:
                layout.slots.append(key)
        elif isinstance(node, ir.Select):
            key = (node.pred, MASK, None)
            if key not in layout.slots:
                layout.slots.append(key)
        elif isinstance(node, ir.IndexValue):
            key = (node.index, VALUE, None)
            if key not in layout.slots:
                layout.slots.append(key)
    return layout


def _needs_buffer(e: ir.RExpr, parent: ir.RExpr) -> bool:
    """Values a fused loop cannot compute element by element at any index: materialized per batch."""
    if isinstance(e, ir.MATERIALIZED):
        return True
    if isinstance(parent, ir.Take) and not isinstance(e, ADDRESSABLE):
        return True  # a rearrangement of a computed value reads it from a buffer
    if isinstance(e, ir.Concat) and parent is not None and not isinstance(parent, (ir.Slice,) + ir.MATERIALIZED):
        return True  # a concatenation inside elementwise math (simplify distributes most of them)
    return False


def plan_case(index: int, case: ir.Case) -> CasePlan:
    roots = [x for _, x in case.writes]
    order = ir.walk_rows(roots)
    buffered = set()
    for node in order:
        for child in ir.row_children(node):
            if _needs_buffer(child, node):
                buffered.add(child)
    for node in order:
        if isinstance(node, ir.MATERIALIZED):
            buffered.add(node)
    steps, buffers, operands = [], {}, {}

    def new_buffer(prefix):
        return f"{prefix}{len(steps)}"

    def materialize(expr) -> str:
        """The buffer holding expr for the batch (a compute step unless it exists). Only values the plan buffers
        are read from their buffer by later loops; an operand copied for a GEMM is not (it is cheaper to read
        its leaves again than to order every loop after every copy)."""
        if expr in buffers:
            return buffers[expr]
        if expr in operands:
            return operands[expr]
        name = new_buffer("A")
        steps.append(Step("compute", expr, name))
        if expr in buffered:
            buffers[expr] = name
        else:
            operands[expr] = name
        return name

    for node in order:
        if node not in buffered or node in buffers:
            continue
        if isinstance(node, (ir.MatMul, ir.LeftMatMul, ir.Reduce)):
            if isinstance(node, ir.LeftMatMul):
                source = new_buffer("T")
                steps.append(Step("transpose", node, source))  # X^T's rows, the GEMM's left operand
            else:
                source = materialize(node.x)
            kind = {ir.MatMul: "gemm", ir.LeftMatMul: "left_gemm", ir.Reduce: "reduce"}[type(node)]
            name = new_buffer("G")
            steps.append(Step(kind, node, name, (source,)))
            buffers[node] = name
        elif isinstance(node, ir.MatVec):
            mat, vec = materialize(node.mat), materialize(node.vec)
            name = new_buffer("G")
            steps.append(Step("matvec", node, name, (mat, vec)))
            buffers[node] = name
        else:
            materialize(node)
    outputs = [(table, expr, f"O{k}") for k, (table, expr) in enumerate(case.writes)]
    return CasePlan(index, case, case_layout(case), steps, buffers, outputs)


def check_program(program: ir.Program):
    """Code is generated only from checked values: every field of the IR has its declared type (ir/schema.py: names
    that cannot break out of a comment or string literal, integers that are integers) and the IR is within the limits
    on work (ir/limits.py)."""
    from ..ir.limits import check_limits
    from ..ir.schema import IRFormatError, check_program as check_types
    try:
        check_types(program)
        check_limits(program)
    except IRFormatError as e:
        raise CodegenError(str(e)) from None


def plan_kernel(program: ir.Program) -> KernelPlan:
    check_program(program)
    inputs = [KernelInput(d.name, d.kind) for d in program.inputs]
    nodes = [n for c in program.cases for n in ir.walk_rows([x for _, x in c.writes])]
    packed = {n.weight for n in nodes if isinstance(n, (ir.MatMul, ir.LeftMatMul, ir.InputProjection))}
    projections = list(dict.fromkeys((n.array, n.weight, n.bias) for n in nodes if isinstance(n, ir.InputProjection)))
    const_ids = {}
    for k, (name, value) in enumerate(program.constants.items()):
        const_ids[name] = f"k{k}"
        prepared = pack_panels(value) if name in packed else np.ascontiguousarray(value, dtype=np.float32)
        inputs.append(KernelInput(f"{program.name}_{name}", "const", prepared, name,
                                  "panels" if name in packed else "dense"))
    array_ids = {d.name: f"a{i}" for i, d in enumerate(program.inputs) if d.kind == "array"}
    table_ids = {t.name: f"t{i}" for i, t in enumerate(program.tables)}
    cases = [plan_case(i, c) for i, c in enumerate(program.cases)]
    return KernelPlan(program, inputs, array_ids, const_ids, table_ids, packed, projections, cases,
                      max([len(c.layout.reads) for c in cases] + [1]),
                      max([len(c.layout.slots) for c in cases] + [1]),
                      max(t.width for t in program.tables))

"""IR -> kernel plan: every target-independent decision, made once, for the backend at hand.

`plan_kernel(program, backend)` fixes:
- the kernel's inputs: runtime arrays in the program's order, then the prepared constants (product weights in the
  backend's layout, biases, folded tables);
- the per-position host values: child rows read, table rows looked up, masks and index values (evaluated once per
  run on the host, before any float work);
- per case, the ordered steps over a batch of positions: which values are materialized into per-batch buffers
  (matrix products and their inputs, reductions, rearrangements of computed values), then the elementwise loop that
  computes the rows the case writes, then the commits;
- fusion: the products only the new rows read, each read at column offsets + j, computed per column range together
  with the new rows (no barrier between product and epilogue), aligned to the backend's panel width;
- inlining: which operand copies a product reads in place (or, on the CPU, each worker copies for itself);
- the buffers' global slots and widths, and the weight column sets each product reads (a GPU keeps them resident).

The backend (targets.py) says what it can do: its weight layout, its panel width, how its products read their
operands. An emitter (cpp.py, cuda.py) renders the plan; it decides nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..ir import nodes as ir
from .layouts import DENSE, NR, PANELS, pack_panels  # noqa: F401 - pack_panels: the CPU layout's packer


class CodegenError(Exception):
    """The IR uses something this code generator does not support; the region falls back."""


@dataclass
class KernelInput:
    """One input of the kernel (and of the converted node), in order."""
    name: str  # ONNX value name (runtime) or initializer name (constant)
    kind: str  # array | init | const
    array: np.ndarray = None  # constants only: the prepared tensor to store as an initializer
    const: Optional[str] = None  # constants only: the IR constant it holds
    layout: str = "dense"  # constants only: a name of layouts.LAYOUTS


# Kinds of per-position host values ("slots"), as the IR's leaves name them (nodes.host_value)
ROW = ir.HOST_ROW  # a row index into a constant table, a runtime float array or a hoisted projection
MASK = ir.HOST_MASK  # a predicate, 0 or 1
VALUE = ir.HOST_VALUE  # an index expression's value

# How a backend's products read a copied operand (Step 'compute' feeding only products):
COPY_PER_WORKER = "copy-per-worker"  # each worker of a fused section copies the rows it needs (CPU)
IN_PLACE = "in-place"  # a product reads the operand's elements where they are (GPU: a warp per row)


@dataclass
class CaseLayout:
    reads: list = field(default_factory=list)  # [(index IExpr, missing_zero)]: child-state rows read
    slots: list = field(default_factory=list)  # [(key, kind, source)]: host values per position
    sets: list = field(default_factory=list)  # [(encoding, arrays, bounds)]: member lists per position


@dataclass
class Step:
    """One step of a case over a batch of B positions, named by the node kind that asks for it (nodes.STEP).
    kind 'compute': evaluate `node` for every position into `buffer` [B, width] (a fused elementwise loop);
    'transpose': node.x of a LeftMatMul node, stored transposed ([B * cols, K]) for its GEMM;
    'gemm': buffer = input @ weight (+ bias) (node: MatMul); 'left_gemm': W @ X (node: LeftMatMul, X stored
    transposed in `input`); 'matvec': per-node matrix times vector; 'reduce': groups of `input` reduced."""
    kind: str
    node: ir.RExpr
    buffer: str
    inputs: tuple = ()  # buffer names the step reads
    slot: int = 0  # its global buffer slot (cuda: P.buffer[slot])


@dataclass
class CasePlan:
    index: int
    case: ir.Case
    layout: CaseLayout
    steps: list  # Step, in order
    buffers: dict  # RExpr -> buffer name (values materialized per batch)
    outputs: list  # [(table, RExpr, buffer name)]: the final rows, then committed
    fused: dict = field(default_factory=dict)  # product node -> sorted column offsets (fused with the new rows)
    fused_width: Optional[int] = None  # the new rows' width when products are fused
    inline: set = field(default_factory=set)  # operand buffers products read in place (or copy per worker)
    output_slots: list = field(default_factory=list)  # global buffer slot of each output


@dataclass
class KernelPlan:
    program: ir.Program
    inputs: list  # KernelInput
    array_ids: dict  # runtime array name -> short id
    const_ids: dict  # IR constant name -> short id
    table_ids: dict  # table name -> short id
    packed: set  # IR constants stored in the backend's product-weight layout
    projections: list  # [(array, weight, bias)]: X @ W (+ b) for every row, before the recursion
    cases: list  # CasePlan
    max_reads: int
    max_slots: int
    max_width: int
    max_sets: int = 0  # member lists a position has, at most (0: the program has no set)
    buffer_widths: list = field(default_factory=list)  # per global buffer slot: the widest row it holds
    product_columns: list = field(default_factory=list)  # [(weight, offsets or None, width)]: column sets read

    @property
    def num_buffers(self) -> int:
        return max([len(c.steps) + len(c.outputs) for c in self.cases] + [1])

    def product_slot(self, weight: str, offsets=None, width: int = 0) -> int:
        """The index of the column set a product reads: all of the weight's columns (offsets None) or the columns
        offsets + j of fused elements j < width."""
        return self.product_columns.index((weight, tuple(offsets) if offsets else None, width))


def case_layout(case: ir.Case) -> CaseLayout:
    """The host values a case's positions need, each once, in first-use order (each leaf says what it needs)."""
    layout = CaseLayout()
    for node in ir.walk_rows([x for _, x in case.writes]):
        need = node.host_value()
        if need is None:
            continue
        kind, key = need
        into = {ir.HOST_READ: layout.reads, ir.HOST_SLOT: layout.slots, ir.HOST_SET: layout.sets}[kind]
        if key not in into:
            into.append(key)
    return layout


def _needs_buffer(e: ir.RExpr, parent: ir.RExpr) -> bool:
    """Values a fused loop cannot compute element by element at any index: materialized per batch."""
    if e.MATERIALIZED:
        return True
    if isinstance(parent, ir.Take) and not e.ADDRESSABLE:
        return True  # a rearrangement of a computed value reads it from a buffer
    if isinstance(e, ir.Concat) and parent is not None and not (isinstance(parent, ir.Slice) or parent.MATERIALIZED):
        return True  # a concatenation inside elementwise math (simplify distributes most of them)
    if isinstance(e, ir.Concat) and isinstance(parent, ir.Slice) and not _within_one_part(e, parent):
        return True  # a slice across the parts: read from the concatenation's buffer
    return False


def _within_one_part(concat: ir.Concat, piece: ir.Slice) -> bool:
    col = 0
    for part in concat.parts:
        if col <= piece.start and piece.start + piece.width <= col + part.width:
            return True
        col += part.width
    return False


def plan_case(index: int, case: ir.Case) -> CasePlan:
    roots = [x for _, x in case.writes]
    order = ir.walk_rows(roots)
    per_member = {n for n in order if ir.member_dependent(n)}  # computed inside their set's step, per member
    for node in per_member:
        if node.MATERIALIZED:  # lift_member_products moves these to the writer where it can
            raise CodegenError(f"a {type(node).__name__} of each member of a child set whose rows do not start at "
                               "zeros (Cortex computes such a product where the member's row is written, which "
                               "needs the table to start from torch.zeros)")
    buffered = set()
    for node in order:
        for child in ir.row_children(node):
            if _needs_buffer(child, node) and child not in per_member:
                buffered.add(child)
    for node in order:
        if node.MATERIALIZED:
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
        if node.MATERIALIZED:
            if node.STEP_INPUT:
                source = new_buffer("T")
                steps.append(Step(node.STEP_INPUT, node, source))
                sources = (source,)
            elif node.MATERIALIZE_OPERANDS:
                sources = tuple(materialize(child) for child in ir.row_children(node))
            else:
                sources = ()
            name = new_buffer("G")
            steps.append(Step(node.STEP, node, name, sources))
            buffers[node] = name
        else:
            materialize(node)
    outputs = [(table, expr, f"O{k}") for k, (table, expr) in enumerate(case.writes)]
    return CasePlan(index, case, case_layout(case), steps, buffers, outputs)


# ---- how the new rows read the buffered values: fusion ------------------------------------------------------


class Access:
    """Which element of a value a loop over j in [0, width) reads: `j + offset`, `indices[j]`, or one fixed element
    `const` (a width-1 value broadcast over the loop)."""

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
            return Access(const=self.const + start)
        if self.indices is None:
            return Access(self.offset + start)
        return Access(indices=[i + start for i in self.indices])

    def through(self, indices, width):
        if self.const is not None:
            return Access(const=indices[self.const])
        if self.indices is None:
            return Access(indices=indices[self.offset:self.offset + width])
        return Access(indices=[indices[i] for i in self.indices])

    def span(self, width):
        if self.const is not None:
            return self.const, self.const
        if self.indices is None:
            return self.offset, self.offset + width - 1
        return min(self.indices), max(self.indices)

    def normalized(self, e):
        """A width-1 value broadcasts over the loop: its one element."""
        return Access(const=0) if e.width == 1 and self.const is None else self


def buffer_reads(cp: CasePlan, roots, width: int) -> dict:
    """{buffered node: {access keys}}: how an elementwise loop over j < width computing `roots` reads the buffered
    values (through slices, rearrangements and concatenations, as the element renderer walks them)."""
    reads, seen = {}, set()

    def walk(e, access):
        access = access.normalized(e)
        if e in cp.buffers:
            reads.setdefault(e, set()).add(access.key())
            return
        if e.ADDRESSABLE or isinstance(e, ir.IndexValue):
            return
        if isinstance(e, ir.Slice):
            return walk(e.x, access.shifted(e.start))
        if isinstance(e, ir.Take):
            return walk(e.x, access.through(e.indices, width))
        if isinstance(e, ir.Concat):
            lo, hi = access.span(width)
            col = 0
            for part in e.parts:
                if col <= lo and hi < col + part.width:
                    return walk(part, access.shifted(-col))
                col += part.width
            raise CodegenError("a concatenation is read across its parts inside elementwise math")
        if (e, access.key()) in seen:
            return
        seen.add((e, access.key()))
        for child in ir.row_children(e):
            walk(child, access)

    for root in roots:
        walk(root, Access(0))
    return reads


def fuse_products(cp: CasePlan, align: int) -> None:
    """The matrix products of a case that only its new rows read, each read at column offsets + j (unit stride) by
    rows of one width W, so that a worker can compute the columns of elements j0..j1 and then those elements with no
    barrier in between; offsets must be multiples of `align` (the backend's panel width)."""
    widths = {expr.width for _, expr, _ in cp.outputs}
    if len(widths) != 1 or any(isinstance(e, ir.Concat) for _, e, _ in cp.outputs):
        return
    w = widths.pop()
    reads = buffer_reads(cp, [e for _, e, _ in cp.outputs], w)
    read_by_steps = {node for step in cp.steps for node in ir.walk_rows([step.node])
                     if node is not step.node and node in cp.buffers}
    for step in cp.steps:
        e = step.node
        if step.kind != "gemm" or e.rows != 1 or e in read_by_steps or e not in reads:
            continue
        keys = reads[e]
        if all(kind == "affine" and 0 <= o and o + w <= e.width and o % align == 0 for kind, o in keys):
            cp.fused[e] = sorted({o for _, o in keys})
    cp.fused_width = w if cp.fused else None


def inline_operands(cp: CasePlan, how: str) -> None:
    """Operand copies (compute steps no later loop reads) that the products read themselves: every worker copies
    the rows it needs (COPY_PER_WORKER: only operands of fused products), or the product reads the elements in
    place (IN_PLACE: operands of row-by-row products)."""
    consumers = {}
    for step in cp.steps:
        for name in step.inputs:
            consumers.setdefault(name, []).append(step)
    for step in cp.steps:
        users = consumers.get(step.buffer, [])
        if step.kind != "compute" or step.node in cp.buffers or not users:
            continue
        if how == COPY_PER_WORKER and all(u.node in cp.fused for u in users):
            cp.inline.add(step.buffer)
        elif how == IN_PLACE and all(u.kind == "gemm" and u.node.rows == 1 for u in users):
            cp.inline.add(step.buffer)


def _buffer_slots(plan: KernelPlan) -> None:
    """Each case's buffers get global slots (its own range: batches of one level run different cases at once), and
    each slot the widest row it holds."""
    widths, base = [], 0
    for cp in plan.cases:
        def use(k, width):
            while len(widths) <= base + k:
                widths.append(1)
            widths[base + k] = max(widths[base + k], width)
            return base + k
        for k, step in enumerate(cp.steps):
            step.slot = base + k
            if step.buffer not in cp.inline:
                use(k, step.node.x.width if step.kind == "transpose" else step.node.width)
        first = len(cp.steps)
        cp.output_slots = [use(first + k, expr.width) for k, (_, expr, _) in enumerate(cp.outputs)]
        base += len(cp.steps) + len(cp.outputs)
    plan.buffer_widths = widths


def _product_columns(plan: KernelPlan) -> None:
    """The weight column sets the products read, in the order the kernel meets them: every case's products (the
    fused ones by their offsets), then the hoisted input products."""
    columns = []

    def add(weight, offsets=None, width=0):
        key = (weight, tuple(offsets) if offsets else None, width)
        if key not in columns:
            columns.append(key)

    for cp in plan.cases:
        for step in cp.steps:
            e = step.node
            if step.buffer in cp.inline or e in cp.fused:
                continue
            if step.kind in ("gemm", "left_gemm"):
                add(e.weight)
        for step in cp.steps:
            if step.node in cp.fused:
                add(step.node.weight, cp.fused[step.node], cp.fused_width)
    for _, weight, _ in plan.projections:
        add(weight)
    plan.product_columns = columns


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


def plan_kernel(program: ir.Program, backend) -> KernelPlan:
    """The plan of `program` for `backend` (weight_layout, panel_width, operand_reads: targets.Backend)."""
    check_program(program)
    inputs = [KernelInput(d.name, d.kind) for d in program.inputs]
    nodes = [n for c in program.cases for n in ir.walk_rows([x for _, x in c.writes])]
    packed = {n.weight for n in nodes if isinstance(n, (ir.MatMul, ir.LeftMatMul, ir.InputProjection))}
    projections = list(dict.fromkeys((n.array, n.weight, n.bias) for n in nodes if isinstance(n, ir.InputProjection)))
    const_ids = {}
    for k, (name, value) in enumerate(program.constants.items()):
        const_ids[name] = f"k{k}"
        layout = backend.weight_layout if name in packed else DENSE
        inputs.append(KernelInput(f"{program.name}_{name}", "const", layout.pack(value), name, layout.name))
    array_ids = {d.name: f"a{i}" for i, d in enumerate(program.inputs) if d.kind == "array"}
    table_ids = {t.name: f"t{i}" for i, t in enumerate(program.tables)}
    cases = [plan_case(i, c) for i, c in enumerate(program.cases)]
    for cp in cases:
        fuse_products(cp, backend.panel_width)
        inline_operands(cp, backend.operand_reads)
    plan = KernelPlan(program, inputs, array_ids, const_ids, table_ids, packed, projections, cases,
                      max([len(c.layout.reads) for c in cases] + [1]),
                      max([len(c.layout.slots) for c in cases] + [1]),
                      max(t.width for t in program.tables),
                      max([len(c.layout.sets) for c in cases] + [0]))
    _buffer_slots(plan)
    _product_columns(plan)
    return plan

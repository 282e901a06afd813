"""Textual form of the Cortex IR (`cortex-convert --dump-ir`): one line per shared value, like SSA."""
from __future__ import annotations

from . import nodes as ir


class ScalarSyntax:
    """How index expressions and predicates are written: the IR's text form. The C++ code generator subclasses
    it for the leaves that differ (constants, loads, lengths, min/max); the structure is rendered once, here."""

    def const(self, value: int) -> str:
        return str(value)

    def load(self, e: ir.Load, index: str) -> str:
        column = "" if e.column is None else f", {e.column}"
        return f"{e.array}[{index}{column}]"

    def length(self, array) -> str:
        return f"len({array})" if array else "N"

    def call(self, op: str, a: str, b: str) -> str:
        """max, min, div (truncating), floordiv, mod, fmod of two integers."""
        return f"{op}({a}, {b})"

    def guard(self, pred: str, value: str, message: str) -> str:
        return f"guard({pred}, {value})"


INDEX_OPS = {"add": "+", "sub": "-", "mul": "*"}
COMPARE_OPS = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}


def render_index(e: ir.IExpr, syntax: ScalarSyntax) -> str:
    if isinstance(e, ir.Iter):
        return "p"
    if isinstance(e, ir.IConst):
        return syntax.const(e.value)
    if isinstance(e, ir.Load):
        return syntax.load(e, render_index(e.index, syntax))
    if isinstance(e, ir.IBinary):
        a, b = render_index(e.a, syntax), render_index(e.b, syntax)
        if e.op in INDEX_OPS:
            return f"({a} {INDEX_OPS[e.op]} {b})"
        return syntax.call(e.op, a, b)
    if isinstance(e, ir.Length):
        return syntax.length(e.array)
    if isinstance(e, ir.ISelect):
        return (f"({render_pred(e.pred, syntax)} ? {render_index(e.a, syntax)} : "
                f"{render_index(e.b, syntax)})")
    if isinstance(e, ir.Guard):
        return syntax.guard(render_pred(e.pred, syntax), render_index(e.value, syntax), e.message)
    raise TypeError(f"not an index expression: {e!r}")


def render_pred(e: ir.BExpr, syntax: ScalarSyntax) -> str:
    if isinstance(e, ir.BConst):
        return "true" if e.value else "false"
    if isinstance(e, ir.Compare):
        return f"({render_index(e.a, syntax)} {COMPARE_OPS[e.op]} {render_index(e.b, syntax)})"
    if isinstance(e, ir.BNot):
        return f"!{render_pred(e.a, syntax)}"
    if isinstance(e, (ir.BAnd, ir.BOr)):
        op = "&&" if isinstance(e, ir.BAnd) else "||"
        return f"({render_pred(e.a, syntax)} {op} {render_pred(e.b, syntax)})"
    raise TypeError(f"not a predicate: {e!r}")


TEXT = ScalarSyntax()


def format_index(e: ir.IExpr) -> str:
    return render_index(e, TEXT)


def format_pred(e: ir.BExpr) -> str:
    return render_pred(e, TEXT)


def _format_row(e: ir.RExpr, names: dict) -> str:
    def ref(x):
        return names[x]

    if isinstance(e, ir.ChildState):
        missing = ", missing=zero" if e.missing_zero else ""
        return f"child_state {e.table}[{format_index(e.index)}{missing}]"
    if isinstance(e, ir.ConstRow):
        return f"const_row {e.const}[{format_index(e.index)}]"
    if isinstance(e, ir.InputRow):
        return f"input_row {e.array}[{format_index(e.index)}]"
    if isinstance(e, ir.InputProjection):
        bias = f" + {e.bias}" if e.bias else ""
        return f"input_projection ({e.array} @ {e.weight}{bias})[{format_index(e.index)}]"
    if isinstance(e, ir.ConstVec):
        return f"const {e.const}"
    if isinstance(e, ir.Scalar):
        return f"scalar {e.value!r}"
    if isinstance(e, ir.IndexValue):
        return f"index_value {format_index(e.index)}"
    if isinstance(e, ir.MatMul):
        bias = f" + {e.bias}" if e.bias else ""
        rows = f" ({e.rows} rows)" if e.rows != 1 else ""
        return f"matmul {ref(e.x)}{rows} @ {e.weight}{bias}"
    if isinstance(e, ir.LeftMatMul):
        return f"left_matmul {e.weight}^T @ {ref(e.x)} ({e.cols} cols)"
    if isinstance(e, ir.MatVec):
        return f"matvec {ref(e.mat)} @ {ref(e.vec)}"
    if isinstance(e, ir.Unary):
        params = "(" + ", ".join(f"{p:g}" for p in e.params) + ")" if e.params else ""
        return f"{e.op}{params} {ref(e.x)}"
    if isinstance(e, ir.Binary):
        return f"{e.op} {ref(e.a)}, {ref(e.b)}"
    if isinstance(e, ir.Where):
        return f"where {ref(e.cond)} ? {ref(e.a)} : {ref(e.b)}"
    if isinstance(e, ir.Slice):
        return f"slice {ref(e.x)}[{e.start}:{e.start + e.width}]"
    if isinstance(e, ir.Concat):
        return "concat " + ", ".join(ref(p) for p in e.parts)
    if isinstance(e, ir.Take):
        shown = ", ".join(str(i) for i in e.indices[:8]) + (", ..." if len(e.indices) > 8 else "")
        return f"take {ref(e.x)}[{shown}]"
    if isinstance(e, ir.Reduce):
        return f"reduce_{e.op} {ref(e.x)} (groups of {e.group})"
    if isinstance(e, ir.Select):
        return f"select {format_pred(e.pred)} ? {ref(e.a)} : {ref(e.b)}"
    raise TypeError(e)


def format_program(program: ir.Program) -> str:
    lines = [f"recursion {program.name} (mode={program.mode})"]
    for decl in program.inputs:
        inner = "x".join(str(d) for d in decl.inner)
        shape = "[N" + (f"x{inner}" if inner else "") + "]" if decl.rank else "[]"
        lines.append(f"  input {decl.name}: {decl.kind} {decl.dtype}{shape}")
    for name, value in program.constants.items():
        lines.append(f"  const {name}: float32{list(value.shape)}")
    for table in program.tables:
        rows = "N" if table.kind == "state" else "L"
        shape = "x".join(str(d) for d in table.inner)
        init = f" init={table.init or 'zeros'}" if table.kind == "state" else " (one row per position)"
        lines.append(f"  {table.kind} {table.name}: [{rows} x {shape}]{init} -> output {table.output}")
    if program.mode == "visit":
        lines.append(f"  positions: p in [0, L = {format_index(program.trip)})")
    else:
        lines.append(f"  positions: every node of {program.rows_from}, children first")
    for case in program.cases:
        lines.append(f"  case {case.name} when {format_pred(case.predicate)}:")
        roots = [expr for _, expr in case.writes]
        names = {}
        for i, node in enumerate(ir.walk_rows(roots)):
            names[node] = f"%{i}"
            lines.append(f"    %{i} = {_format_row(node, names)}  : [{node.width}]")
        for table, expr in case.writes:
            row = "p" if program.table(table).kind == "emit" else format_index(case.target)
            lines.append(f"    {table}[{row}] <- {names[expr]}")
    return "\n".join(lines) + "\n"

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

    def length(self, e: ir.Length) -> str:
        if e.axis:
            return f"len({e.array or 'tables'}, {e.axis})"
        return f"len({e.array})" if e.array else "N"

    def arith(self, op: str, a: str, b: str) -> str:
        """add, sub, mul of two integers (int64: they wrap)."""
        return f"({a} {ir.INDEX_INFIX[op]} {b})"

    def call(self, op: str, a: str, b: str) -> str:
        """max, min, div (truncating), floordiv, mod, fmod of two integers."""
        return f"{op}({a}, {b})"

    def guard(self, pred: str, value: str, message: str) -> str:
        return f"guard({pred}, {value})"

    def host_value(self, var: str) -> str:
        return f"${var}"

    def host_element(self, var: str, index: str) -> str:
        return f"${var}[{index}]"


def render_index(e: ir.IExpr, syntax: ScalarSyntax) -> str:
    if not isinstance(e, ir.IExpr):
        raise TypeError(f"not an index expression: {e!r}")
    return e.render(syntax)


def render_pred(e: ir.BExpr, syntax: ScalarSyntax) -> str:
    if not isinstance(e, ir.BExpr):
        raise TypeError(f"not a predicate: {e!r}")
    return e.render(syntax)


TEXT = ScalarSyntax()


def format_index(e: ir.IExpr) -> str:
    return render_index(e, TEXT)


def format_pred(e: ir.BExpr) -> str:
    return render_pred(e, TEXT)


def _format_row(e: ir.RExpr, names: dict) -> str:
    """One line of a case: the node's own text, its row operands by their SSA names, index operands as text."""
    return e.text(lambda x: names[x] if isinstance(x, ir.RExpr) else x.render(TEXT))


def format_program(program: ir.Program) -> str:
    element = "" if program.element == "float32" else f", element={program.element}"
    lines = [f"recursion {program.name} (mode={program.mode}{element})"]
    for decl in program.inputs:
        inner = "x".join(str(d) for d in decl.inner)
        rows = "x".join(["N"] * decl.lead)
        shape = f"[{rows}" + (f"x{inner}" if inner else "") + "]" if decl.rank else "[]"
        if decl.kind == "shape":  # the shape vector of a table the kernel fills with zeros
            lines.append(f"  input {decl.name}: shape {decl.dtype}[{decl.rank}] of zeros{shape}")
        else:
            lines.append(f"  input {decl.name}: {decl.kind} {decl.dtype}{shape}")
    for name, value in program.constants.items():
        lines.append(f"  const {name}: {program.element}{list(value.shape)}")
    for table in program.tables:
        rows = "x".join(["N"] * table.lead) if table.kind == "state" else "L"
        shape = "x".join(str(d) for d in table.inner)
        init = f" init={table.init or 'zeros'}" if table.kind == "state" else " (one row per position)"
        if table.init is not None and program.input(table.init).kind == "shape":
            init = f" init=zeros of shape {table.init}"
        lines.append(f"  {table.kind} {table.name}: [{rows} x {shape}]{init} -> output {table.output}")
    for var in program.host_vars:
        size = f"[{format_index(var.size)}]" if var.size is not None else ""
        lines.append(f"  host ${var.name}{size} = {format_index(var.init)}")
    for final in program.finals:
        op = f" {final.op}" if final.kind == "reduce" else ""
        lines.append(f"  output {final.output} = {final.kind}{op} of {final.table} from {final.init}")
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
        for u in case.updates:
            at = f"[{format_index(u.index)}]" if u.index is not None else ""
            lines.append(f"    ${u.var}{at} <- {format_index(u.value)}")
    return "\n".join(lines) + "\n"

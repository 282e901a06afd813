"""IR verifier: every pass's output must pass it; failures name the offending node."""
from __future__ import annotations

import numpy as np

from . import nodes as ir
from . import ops


class IRError(ValueError):
    pass


def _check(cond, message):
    if not cond:
        raise IRError(message)


INT_INPUT_DTYPES = ("int64", "int32", "bool")


def _load(program, e: ir.Load):
    decl = program.input(e.array)
    _check(decl.kind == "array" and decl.dtype in INT_INPUT_DTYPES, f"load from non-integer array {e.array}")
    _check(decl.rank <= 2, f"load from {e.array} of rank {decl.rank}")
    _check((decl.rank == 2) == (e.column is not None), f"load from {e.array}: column does not match rank")
    if e.column is not None:
        _check(0 <= e.column < decl.inner[0], f"load column {e.column} of {e.array}")


def _const(program, name, what):
    c = program.constants.get(name)
    _check(c is not None, f"{what}: no constant {name}")
    return c


def _input_rows(program, array, width, what):
    decl = program.input(array)
    _check(decl.kind == "array" and decl.dtype == "float32" and decl.rank >= 1, f"{what} {array}: not a float array")
    _check(int(np.prod(decl.inner, dtype=np.int64)) == width, f"{what} {array}: width {width}")


def _same_or_one(e, *widths):
    _check(set(widths) <= {1, e.width} and e.width == max(widths), f"{type(e).__name__}: widths {widths}")


CHECKS = {
    ir.Iter: lambda p, e: None,
    ir.IConst: lambda p, e: _check(isinstance(e.value, int), "iconst value"),
    ir.Load: _load,
    ir.Length: lambda p, e: _check(e.array is None or p.input(e.array).kind == "array", f"length of {e.array}"),
    ir.IBinary: lambda p, e: _check(e.op in ir.INDEX_BINARY_OPS, f"index op {e.op}"),
    ir.ISelect: lambda p, e: None,
    ir.Guard: lambda p, e: _check(isinstance(e.message, str), "guard message"),
    ir.BConst: lambda p, e: None,
    ir.Compare: lambda p, e: _check(e.op in ir.COMPARE_OPS, f"compare op {e.op}"),
    ir.BNot: lambda p, e: None,
    ir.BAnd: lambda p, e: None,
    ir.BOr: lambda p, e: None,
    ir.ChildState: lambda p, e: _check(p.table(e.table).kind == "state" and p.table(e.table).width == e.width,
                                       f"child_state {e.table}: width {e.width}"),
    ir.ConstRow: lambda p, e: _check(_const(p, e.const, "const_row").ndim == 2 and
                                     p.constants[e.const].shape[1] == e.width, f"const_row {e.const}: shape"),
    ir.ConstVec: lambda p, e: _check(_const(p, e.const, "const").size == e.width, f"const {e.const}: size {e.width}"),
    ir.Scalar: lambda p, e: _check(e.width == 1, "scalar width"),
    ir.IndexValue: lambda p, e: _check(e.width == 1, "index_value width"),
    ir.Unary: lambda p, e: _check(e.op in ops.UNARY and e.width == e.x.width and len(e.params) == ops.param_count(e.op),
                                  f"unary {e.op} with {len(e.params)} parameters"),
    ir.Binary: lambda p, e: (_check(e.op in ops.BINARY, f"binary {e.op}"), _same_or_one(e, e.a.width, e.b.width)),
    ir.Where: lambda p, e: _same_or_one(e, e.cond.width, e.a.width, e.b.width),
    ir.Select: lambda p, e: _same_or_one(e, e.a.width, e.b.width),
    ir.Slice: lambda p, e: _check(0 <= e.start and e.width >= 1 and e.start + e.width <= e.x.width,
                                  f"slice [{e.start}:+{e.width}] of {e.x.width}"),
    ir.Concat: lambda p, e: _check(e.width == sum(x.width for x in e.parts) and len(e.parts) >= 1, "concat width"),
    ir.Take: lambda p, e: _check(e.width == len(e.indices) and all(0 <= i < e.x.width for i in e.indices),
                                 "take indices"),
    ir.Reduce: lambda p, e: _check(e.op in ir.REDUCE_OPS and e.group >= 1 and e.x.width == e.group * e.width,
                                   f"reduce {e.op} groups"),
}


def _row_width(program, array):
    return int(np.prod(program.input(array).inner, dtype=np.int64))


def _input_projection(p, e):
    _input_rows(p, e.array, _row_width(p, e.array), "input_projection")
    w = _const(p, e.weight, "input_projection")
    _check(w.shape == (_row_width(p, e.array), e.width), f"input_projection {e.array} @ {e.weight}: shapes")
    if e.bias is not None:
        _check(_const(p, e.bias, "input_projection bias").shape == (e.width,), "input_projection bias")


def _matmul(p, e):
    w = _const(p, e.weight, "matmul")
    _check(e.rows >= 1 and e.x.width % e.rows == 0 and e.width % e.rows == 0, f"matmul {e.weight}: rows")
    _check(w.shape == (e.x.width // e.rows, e.width // e.rows), f"matmul {e.weight}: shape")
    if e.bias is not None:
        _check(_const(p, e.bias, "matmul bias").shape == (e.width,), f"matmul bias {e.bias}: shape")


def _left_matmul(p, e):
    w = _const(p, e.weight, "left_matmul")
    _check(w.ndim == 2 and w.shape[0] * e.cols == e.x.width and w.shape[1] * e.cols == e.width,
           f"left_matmul {e.weight}: shape")


CHECKS[ir.InputProjection] = _input_projection
CHECKS[ir.MatMul] = _matmul
CHECKS[ir.LeftMatMul] = _left_matmul
CHECKS[ir.MatVec] = lambda p, e: _check(e.vec.width > 0 and e.mat.width == e.width * e.vec.width, "matvec widths")
CHECKS[ir.InputRow] = lambda p, e: _input_rows(p, e.array, e.width, "input_row")


def _sort_of(e):
    return ir.IExpr if isinstance(e, ir.IExpr) else ir.BExpr if isinstance(e, ir.BExpr) else ir.RExpr


OPERAND_SORTS = {  # the sort each operand of a node must have
    ir.ISelect: (ir.BExpr, ir.IExpr, ir.IExpr), ir.Guard: (ir.BExpr, ir.IExpr), ir.Select: (ir.BExpr, ir.RExpr, ir.RExpr),
    ir.Compare: (ir.IExpr, ir.IExpr), ir.BNot: (ir.BExpr,), ir.BAnd: (ir.BExpr, ir.BExpr), ir.BOr: (ir.BExpr, ir.BExpr),
    ir.IBinary: (ir.IExpr, ir.IExpr),
}


def _verify_expr(program, e):
    check = CHECKS.get(type(e))
    _check(check is not None, f"not an IR expression: {type(e).__name__}")
    sorts = OPERAND_SORTS.get(type(e))
    kids = ir.operands(e)
    if sorts is not None:
        _check(all(isinstance(k, s) for k, s in zip(kids, sorts)), f"{type(e).__name__}: operand sorts")
    elif isinstance(e, ir.RExpr):
        index_fields = isinstance(e, (ir.ChildState, ir.ConstRow, ir.InputRow, ir.InputProjection, ir.IndexValue))
        expected = ir.IExpr if index_fields else ir.RExpr
        _check(all(isinstance(k, expected) for k in kids), f"{type(e).__name__}: operand sorts")
    check(program, e)


def verify(program: ir.Program) -> ir.Program:
    _check(program.mode in ("visit", "dag"), f"mode {program.mode}")
    _check(any(t.kind == "state" for t in program.tables), "no state tables")
    names = [d.name for d in program.inputs]
    _check(len(names) == len(set(names)), "duplicate input names")
    roots = []
    if program.mode == "visit":
        _check(isinstance(program.trip, ir.IExpr), "trip count")
        roots.append(program.trip)
        _check(all(t.kind == "state" or t.init is None for t in program.tables), "emit tables start empty")
    else:
        _check(program.rows_from is not None and program.input(program.rows_from).kind == "array", "rows_from")
        _check(all(t.kind == "state" for t in program.tables), "per-position outputs in a TreeRec")
    inits = {t.init for t in program.tables if t.init is not None}
    for table in program.tables:
        _check(table.kind in ("state", "emit"), f"table kind {table.kind}")
        if table.init is not None:
            decl = program.input(table.init)
            _check(decl.kind == "init" and decl.inner == tuple(table.inner), f"init of {table.name}")
    _check(all(d.kind != "init" or d.name in inits for d in program.inputs), "an init input no table uses")
    _check(len(program.cases) > 0, "no cases")
    for case in program.cases:
        roots += [case.predicate] + ([case.target] if case.target is not None else []) + [x for _, x in case.writes]
        _check(isinstance(case.predicate, ir.BExpr), f"case {case.name}: predicate")
        _check(case.target is None or isinstance(case.target, ir.IExpr), f"case {case.name}: target")
        written = [t for t, _ in case.writes]
        _check(len(written) == len(set(written)), f"case {case.name} writes a table twice")
        for table, expr in case.writes:
            decl = program.table(table)
            _check(decl.width == expr.width, f"case {case.name}: {table} row width {expr.width}, table {decl.width}")
            _check(decl.kind == "emit" or case.target is not None, f"case {case.name}: a state write with no target")
        if program.mode == "dag":
            _check(case.target == ir.Iter(), "dag cases write their own node")
    for e in ir.walk(roots):
        _verify_expr(program, e)
    return program

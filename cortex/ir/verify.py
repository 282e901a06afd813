"""IR verifier: every pass's output must pass it; failures name the offending node."""
from __future__ import annotations

from . import nodes as ir


class IRError(ValueError):
    pass


def _check(cond, message):
    if not cond:
        raise IRError(message)


def _verify_index(program: ir.Program, e: ir.IExpr):
    if isinstance(e, (ir.Iter, ir.IConst)):
        return
    if isinstance(e, ir.Load):
        decl = program.input(e.array)
        _check(decl.kind == "array" and decl.dtype == "int64", f"load from non-integer array {e.array}")
        _check((decl.rank == 1) == (e.column is None), f"load from {e.array}: column does not match rank")
        if e.column is not None:
            _check(decl.rank == 2 and 0 <= e.column < decl.inner[0], f"load column {e.column} of {e.array}")
        _verify_index(program, e.index)
        return
    if isinstance(e, ir.IBinary):
        _check(e.op in ("add", "sub", "mul", "max", "min"), f"index op {e.op}")
        _verify_index(program, e.a)
        _verify_index(program, e.b)
        return
    if isinstance(e, ir.Length):
        _check(e.array is None or program.input(e.array).kind == "array", f"length of {e.array}")
        return
    if isinstance(e, ir.ISelect):
        _verify_pred(program, e.pred)
        _verify_index(program, e.a)
        _verify_index(program, e.b)
        return
    raise IRError(f"not an index expression: {e!r}")


def _verify_pred(program, e: ir.BExpr):
    if isinstance(e, ir.BConst):
        return
    if isinstance(e, ir.Compare):
        _verify_index(program, e.a)
        _verify_index(program, e.b)
        return
    if isinstance(e, ir.BNot):
        return _verify_pred(program, e.a)
    if isinstance(e, (ir.BAnd, ir.BOr)):
        _verify_pred(program, e.a)
        _verify_pred(program, e.b)
        return
    raise IRError(f"not a predicate: {e!r}")


def _verify_row(program: ir.Program, e: ir.RExpr):
    consts = program.constants
    if isinstance(e, ir.ChildState):
        _check(program.table(e.table).width == e.width, f"child_state {e.table}: width {e.width}")
        _verify_index(program, e.index)
    elif isinstance(e, ir.ConstRow):
        c = consts.get(e.const)
        _check(c is not None and c.ndim == 2 and c.shape[1] == e.width, f"const_row {e.const}: shape")
        _verify_index(program, e.index)
    elif isinstance(e, ir.InputRow):
        decl = program.input(e.array)
        _check(decl.dtype == "float32" and decl.rank == 2 and decl.inner == (e.width,), f"input_row {e.array}")
        _verify_index(program, e.index)
    elif isinstance(e, ir.InputProjection):
        decl = program.input(e.array)
        w = consts.get(e.weight)
        _check(decl.dtype == "float32" and decl.rank == 2 and w is not None and w.shape == (decl.inner[0], e.width),
               f"input_projection {e.array} @ {e.weight}: shapes")
        if e.bias is not None:
            _check(consts.get(e.bias) is not None and consts[e.bias].shape == (e.width,), "input_projection bias")
        _verify_index(program, e.index)
    elif isinstance(e, ir.ConstVec):
        c = consts.get(e.const)
        _check(c is not None and c.size == e.width, f"const {e.const}: size {e.width}")
    elif isinstance(e, ir.Scalar):
        _check(e.width == 1, "scalar width")
    elif isinstance(e, ir.MatMul):
        w = consts.get(e.weight)
        _check(e.rows >= 1 and e.x.width % e.rows == 0 and e.width % e.rows == 0, f"matmul {e.weight}: rows")
        _check(w is not None and w.shape == (e.x.width // e.rows, e.width // e.rows), f"matmul {e.weight}: shape")
        if e.bias is not None:
            b = consts.get(e.bias)
            _check(b is not None and b.shape == (e.width,), f"matmul bias {e.bias}: shape")
    elif isinstance(e, ir.LeftMatMul):
        w = consts.get(e.weight)
        _check(w is not None and w.ndim == 2 and w.shape[0] * e.cols == e.x.width and w.shape[1] * e.cols == e.width,
               f"left_matmul {e.weight}: shape")
    elif isinstance(e, ir.MatVec):
        _check(e.vec.width > 0 and e.mat.width == e.width * e.vec.width, "matvec widths")
    elif isinstance(e, ir.Unary):
        _check(e.op in ir.UNARY_OPS and e.width == e.x.width, f"unary {e.op}")
    elif isinstance(e, ir.Binary):
        _check(e.op in ir.BINARY_OPS, f"binary {e.op}")
        _check(e.width == max(e.a.width, e.b.width) and {e.a.width, e.b.width} <= {1, e.width}, f"binary {e.op}: widths")
    elif isinstance(e, ir.Slice):
        _check(0 <= e.start and e.start + e.width <= e.x.width, f"slice [{e.start}:+{e.width}] of {e.x.width}")
    elif isinstance(e, ir.Concat):
        _check(e.width == sum(p.width for p in e.parts), "concat width")
    elif isinstance(e, ir.Mask):
        _check(e.width == 1, "mask width")
        _verify_pred(program, e.pred)
    elif isinstance(e, ir.Select):
        _verify_pred(program, e.pred)
        _check(e.width == max(e.a.width, e.b.width) and {e.a.width, e.b.width} <= {1, e.width}, "select widths")
    else:
        raise IRError(f"not a row expression: {e!r}")


def verify(program: ir.Program) -> ir.Program:
    _check(program.mode in ("visit", "dag"), f"mode {program.mode}")
    _check(len(program.tables) > 0, "no state tables")
    names = [d.name for d in program.inputs]
    _check(len(names) == len(set(names)), "duplicate input names")
    if program.mode == "visit":
        _check(isinstance(program.trip, int) or program.input(program.trip).kind == "trip", "trip count")
    else:
        _check(program.rows_from is not None and program.input(program.rows_from).kind == "array", "rows_from")
    for table in program.tables:
        if table.init is not None:
            decl = program.input(table.init)
            _check(decl.kind == "init" and decl.inner == (table.width,), f"init of {table.name}")
    _check(len(program.cases) > 0, "no cases")
    for case in program.cases:
        _verify_pred(program, case.predicate)
        _verify_index(program, case.target)
        written = [t for t, _ in case.writes]
        _check(len(written) == len(set(written)), f"case {case.name} writes a table twice")
        for table, expr in case.writes:
            _check(program.table(table).width == expr.width, f"case {case.name}: {table} row width {expr.width}")
        for node in ir.walk_rows([e for _, e in case.writes]):
            _verify_row(program, node)
    return program

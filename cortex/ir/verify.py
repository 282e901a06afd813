"""IR verifier: every pass's output must pass it; failures name the offending node.

Generic over node kinds: the fields' declared types (operand sorts included) are checked by cortex.ir.schema, each
node's own invariants by its `verify(program)` (nodes.py), and the program's by `verify` below.
"""
from __future__ import annotations

from . import nodes as ir
from .nodes import INT_INPUT_DTYPES, IRError, check  # noqa: F401 - re-exported: the verifier's vocabulary
from .schema import IRFormatError, check_program


def verify(program: ir.Program) -> ir.Program:
    try:
        check_program(program)
    except IRFormatError as e:
        raise IRError(str(e)) from None
    check(any(t.kind == "state" for t in program.tables) or ir.is_sequential(program), "no state tables")
    names = [d.name for d in program.inputs]
    check(len(names) == len(set(names)), "duplicate input names")
    roots = []
    if program.mode == "visit":
        check(program.trip is not None, "trip count")
        roots.append(program.trip)
        check(all(t.kind == "state" or t.init is None for t in program.tables), "emit tables start empty")
    else:
        check(program.rows_from is not None and program.input(program.rows_from).kind == "array", "rows_from")
        check(all(t.kind == "state" for t in program.tables), "per-position outputs in a TreeRec")
    inits = {t.init for t in program.tables if t.init is not None}
    for table in program.tables:
        if table.init is not None:
            decl = program.input(table.init)
            check(decl.kind in ("init", "shape") and decl.inner == tuple(table.inner) and decl.lead == table.lead,
                  f"init of {table.name}")
            check(decl.kind != "shape" or (decl.dtype == "int64" and decl.zeros and table.kind == "state"),
                  f"the shape {decl.name} of {table.name}")
    leads = {t.lead for t in program.tables if t.kind == "state"}
    check(len(leads) <= 1, "state tables with different leading dimensions")
    # a state table without an initial value takes its leading dimensions from one that has one (a lifted table)
    check(all(t.lead == 1 for t in program.tables if t.kind == "emit") and
          (leads <= {1} or any(t.kind == "state" and t.init is not None for t in program.tables)) and
          (program.mode == "visit" or leads <= {1}), "leading dimensions of a table without an initial value")
    for decl in program.inputs:
        check(decl.lead >= 1 and (decl.rank == 0 or decl.dynamic_inner or decl.rank == decl.lead + len(decl.inner)),
              f"input {decl.name}: rank {decl.rank}, {decl.lead} leading and {len(decl.inner)} inner dimensions")
        check(all(decl.lead <= a < decl.rank for a in decl.checked) and len(set(decl.checked)) == len(decl.checked),
              f"input {decl.name}: checked axes {decl.checked}")
    check(all(d.kind == "array" or d.name in inits for d in program.inputs), "an init input no table uses")
    check(len(program.cases) > 0, "no cases")
    for case in program.cases:
        roots += case.roots()
        written = [t for t, _ in case.writes]
        check(len(written) == len(set(written)), f"case {case.name} writes a table twice")
        for table, expr in case.writes:
            decl = program.table(table)
            check(decl.width == expr.width, f"case {case.name}: {table} row width {expr.width}, table {decl.width}")
            check(decl.kind == "emit" or case.target is not None, f"case {case.name}: a state write with no target")
        if program.mode == "dag":
            check(case.target == ir.Iter(), "dag cases write their own node")
    for e in ir.walk(roots):
        e.verify(program)
    host = [v.name for v in program.host_vars]
    check(len(host) == len(set(host)), "host variables named twice")
    before = ([program.trip] if program.trip is not None else []) + \
        [e for v in program.host_vars for e in ([v.init] + ([v.size] if v.size is not None else []))]
    check(not any(isinstance(e, (ir.HostValue, ir.HostElement)) for e in ir.walk(before)),
          "host state read before the loop (in the trip count or a host variable's first value)")
    for case in program.cases:
        for u in case.updates:
            check(u.var in host and (u.index is None) == (program.host_var(u.var).size is None),
                  f"case {case.name}: an update of host variable {u.var}")
    for final in program.finals:
        table = program.table(final.table)
        check(table.kind == "emit" and (final.kind == "reduce") == (final.op != "none"), f"final {final.output}")
    check(not any(isinstance(e, ir.Member) for e in _outside_sets(roots)), "a set member outside a SetReduce body")
    check(program.mode == "visit" or not any(isinstance(e, ir.SetReduce) for e in ir.walk(roots)),
          "a SetReduce in a TreeRec (its children are slots)")
    return program


def _outside_sets(roots):
    """Every expression reachable from roots except through a SetReduce's body."""
    seen, stack = set(), list(roots)
    while stack:
        e = stack.pop()
        if e in seen:
            continue
        seen.add(e)
        yield e
        stack.extend(e.bounds if isinstance(e, ir.SetReduce) else ir.operands(e))

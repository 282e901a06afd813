"""Bounds on the work any IR can cause: the one place for the limits a program must meet before code is generated
from it (a converted model's IR is data from anywhere; `cortex rebuild` compiles it). Conversion checks the same
limits, so every model Cortex writes can be rebuilt.

- nodes, depth and cases: the passes and emitters walk expressions recursively, and each case is a function of
  generated code;
- index expressions and predicates are written out as trees (the host code evaluates them per position): the size
  of each written-out tree is bounded, however much the IR shares;
- row widths are bounded absolutely and by what the model's weights justify: a row wider than every weight
  together (and than a free allowance) is not what any layer computes, and each width becomes buffers and
  compile-time tables in the kernel.

The compile budget (source size, compiler time, library size) lives with the toolchain (codegen/toolchain.py).
"""
from __future__ import annotations

import numpy as np

from . import nodes as ir
from .schema import IRFormatError

MAX_IR_NODES = 100_000  # distinct nodes in a serialized IR
MAX_DEPTH = 160  # nesting of expressions (Python recursion in the passes and emitters stays far from its limit)
MAX_CASES = 256
MAX_DECLS = 1024  # inputs, tables
MAX_RANK = 8
MAX_WRITTEN_TERMS = 4096  # nodes of one index expression or predicate when written out as a tree
FREE_ROW_WIDTH = 1 << 16  # any model may have rows this wide (MV-RNN at hidden 256 has 65,536-wide matrices)
MAX_ROW_WIDTH = 1 << 22  # and none wider, whatever its weights


def row_width_budget(program: ir.Program) -> int:
    """The widest row this program may have: the free allowance, or as many elements as all its constants hold."""
    weights = sum(int(np.prod(a.shape, dtype=np.int64)) for a in program.constants.values())
    return min(MAX_ROW_WIDTH, max(FREE_ROW_WIDTH, weights))


def _roots(program: ir.Program) -> list:
    roots = [program.trip] if program.trip is not None else []
    for case in program.cases:
        roots += case.roots()
    return roots


def check_limits(program: ir.Program) -> None:
    """Raises IRFormatError when `program` exceeds a limit; linear in the IR's size."""
    if len(program.cases) > MAX_CASES:
        raise IRFormatError(f"the IR has {len(program.cases)} cases; Cortex compiles at most {MAX_CASES}")
    if len(program.inputs) > MAX_DECLS or len(program.tables) > MAX_DECLS:
        raise IRFormatError(f"the IR declares more than {MAX_DECLS} inputs or tables")
    for decl in program.inputs:
        inner = 0 if decl.dynamic_inner else max(decl.rank - 1, 0)
        if decl.rank > MAX_RANK or len(decl.inner) != inner or \
                (decl.dynamic_inner and (decl.rank != 2 or decl.dtype not in ("int64", "int32"))):
            raise IRFormatError(f"input {decl.name!r}: rank {decl.rank} with inner dimensions {list(decl.inner)[:8]}")
    budget = row_width_budget(program)
    for table in program.tables:
        if len(table.inner) > MAX_RANK or table.width > budget:
            raise IRFormatError(f"table {table.name!r} has rows of {table.width} elements; this model's weights "
                                f"justify at most {budget}")
    depth, written = {}, {}
    for e in ir.walk(_roots(program)):
        kids = ir.operands(e)
        depth[e] = 1 + max((depth[k] for k in kids), default=0)
        if depth[e] > MAX_DEPTH:
            raise IRFormatError(f"the IR nests expressions more than {MAX_DEPTH} deep")
        if isinstance(e, (ir.IExpr, ir.BExpr)):
            written[e] = min(1 + sum(written[k] for k in kids), MAX_WRITTEN_TERMS + 1)
            if written[e] > MAX_WRITTEN_TERMS:
                raise IRFormatError(f"an index expression or predicate of the IR would be written out with more than "
                                    f"{MAX_WRITTEN_TERMS} terms")
        elif e.width > budget:
            raise IRFormatError(f"a {type(e).__name__} row of {e.width} elements; this model's weights justify at "
                                f"most {budget}")

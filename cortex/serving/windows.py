"""Request windows: reads of a missing child that stay exact when requests are merged into one forest.

A model that reads a child's row before it tests whether the child exists (`h[left[v]] * (left[v] >= 0)`, or the
clamp `h[left[v].clamp(min=0)] * mask`) reads, for a missing child (-1), a real row of its table and masks the value
afterwards. In its own run that row is the table's last (ONNX's Gather counts -1 from the end) or its first (the
clamp). Merged, the forest's last row is the last request's and its first row the first request's: the value read
differs, and a mask by multiplication keeps traces of it (0 x inf, the sign of a zero), so such requests used to run
alone (indexeval.wrapping_reads, kernel.py's clamped reads).

Conversion gives each such read its request's *window* instead: the kernel takes one more input, `W` [N, 2] (int64),
row v holding the first and the end (one past the last) row of the request that owns node v; it is empty in a plain
run, where the read is exactly the model's. With W, a read at i < 0 counts from the request's end (`i + W[t, 1]`) and
a clamped read takes the request's first row (`max(x, W[t, 0])`), t being the node the case writes: the same row of
the request's own block as in its own run. In the IR these are ordinary index expressions (the kernel and the bounds
check evaluate them as any other); `windowed` recognizes them for the merge proof (kernel.py).

The converted model feeds W from a Constant (an empty [0, 2]): its inputs stay the original's. Merging needs W fed,
so a server runs merged forests through a copy of the model that takes W as an input (`with_window_inputs`,
forest.merge_session); a session that does not take W merges as before (the bounds check then sends the requests
that reach those reads to run alone).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import onnx
from onnx import helper

from ..ir import nodes as ir
from ..ir.limits import check_limits
from ..ir.schema import IRFormatError

PREFIX = "cortex.request_rows."  # + the program's name: the kernel input W (an ONNX value name no exporter writes)
FIRST, END = 0, 1  # W's columns


def window_name(program: ir.Program) -> str:
    return PREFIX + program.name


def window_input(program: ir.Program) -> Optional[str]:
    """The program's window input W, or None."""
    return next((d.name for d in program.inputs if d.name.startswith(PREFIX)), None)


def _has_rows(w: str) -> ir.BExpr:
    return ir.Compare("gt", ir.Length(w), ir.IConst(0))


def _clamped(index: ir.IExpr) -> Optional[ir.IExpr]:
    """x of `max(x, 0)` (either order), else None."""
    if isinstance(index, ir.IBinary) and index.op == "max" and ir.IConst(0) in (index.a, index.b):
        return index.b if index.a == ir.IConst(0) else index.a
    return None


def wrapped_read(i: ir.IExpr, target: ir.IExpr, w: str) -> ir.IExpr:
    """`i`, or with W fed and i < 0, i counted from the end of the request that owns `target`."""
    return ir.ISelect(ir.BAnd(ir.Compare("lt", i, ir.IConst(0)), _has_rows(w)),
                      ir.IBinary("add", i, ir.Load(w, target, END)), i)


def clamped_read(x: ir.IExpr, target: ir.IExpr, w: str) -> ir.IExpr:
    """`max(x, 0)`, or with W fed, max(x, the first row of the request that owns `target`)."""
    return ir.ISelect(_has_rows(w), ir.IBinary("max", x, ir.Load(w, target, FIRST)),
                      ir.IBinary("max", x, ir.IConst(0)))


def windowed(index: ir.IExpr) -> Optional[tuple]:
    """(kind 'wrap' | 'clamp', the read's own index i or x, the target t, W) when `index` is one of the two
    forms above, exactly; else None."""
    if not (isinstance(index, ir.ISelect) and isinstance(index.a, ir.IBinary) and isinstance(index.a.b, ir.Load)):
        return None
    load = index.a.b
    w, target = load.array, load.index
    if not w.startswith(PREFIX):
        return None
    if index.a.op == "add" and index == wrapped_read(index.a.a, target, w):
        return "wrap", index.a.a, target, w
    if index.a.op == "max" and index == clamped_read(index.a.a, target, w):
        return "clamp", index.a.a, target, w
    return None


def plain_index(index: ir.IExpr) -> ir.IExpr:
    """A windowed read's index as the model wrote it (i, or max(x, 0)); any other index itself."""
    window = windowed(index)
    if window is None:
        return index
    return window[1] if window[0] == "wrap" else ir.IBinary("max", window[1], ir.IConst(0))


def unwritten_clamps(program: ir.Program) -> tuple:
    """The clamped reads given windows, as the model wrote them (`max(x, 0)`): where the merge does not write the
    windows, they are the clamped reads they were."""
    from ..ir.printer import format_index

    clamps = []
    for case in program.cases:
        for e in ir.case_exprs(case):
            window = windowed(e.index) if isinstance(e, ir.ChildState) else None
            if window is not None and window[0] == "clamp":
                clamps.append(format_index(plain_index(e.index)))
    return tuple(dict.fromkeys(clamps))


def read_sites(program: ir.Program):
    """(case index, the ChildState read) of the reads a missing child would send out of its request once merged:
    at a node id from the structure (not the row the case writes, not a position or a set's member), with no zero
    row for -1, under no choice that drops them where the id is negative, in a case not taken only where it is
    >= 0, and not the padding row past the nodes."""
    from .indexeval import _non_negative_in, _padding_read, _read_only_where_not_negative

    for k, case in enumerate(program.cases):
        roots = [x for _, x in case.writes]
        guarded = _read_only_where_not_negative(roots)
        non_negative = _non_negative_in(case.predicate)
        for e in ir.walk(roots):
            if not isinstance(e, ir.ChildState) or e.missing_zero or e in guarded or e.index == case.target or \
                    e.index in non_negative or isinstance(e.index, (ir.Iter, ir.Member)) or \
                    _padding_read(e.index)[0] or windowed(e.index) is not None:
                continue
            yield k, e


def with_request_windows(program: ir.Program) -> ir.Program:
    """The program with its reads of a missing child given request windows (and the input W), where a case that
    writes a row makes them; unchanged where there are none, or where the windows would take an index expression
    past the IR's limits (ir/limits.py: it is written out as a tree, and a window repeats the read's index)."""
    w = window_name(program)
    cases = list(program.cases)
    changed = False
    for k in sorted({k for k, _ in read_sites(program)}):
        case = cases[k]
        if case.target is None:
            continue  # no row written: no node to find the request by (such requests keep running alone)
        mapping = {}
        for _, e in read_sites(dataclasses.replace(program, cases=(case,))):
            x = _clamped(e.index)
            index = clamped_read(x, case.target, w) if x is not None else wrapped_read(e.index, case.target, w)
            mapping[e] = dataclasses.replace(e, index=index)
        rewrite = ir.transform(lambda e: mapping.get(e, e))
        cases[k] = dataclasses.replace(case, writes=tuple((t, rewrite(x)) for t, x in case.writes))
        changed = True
    if not changed:
        return program
    decl = ir.InputDecl(w, "array", "int64", 2, inner=(2,))
    windowed_program = dataclasses.replace(program, inputs=program.inputs + (decl,), cases=tuple(cases))
    try:  # a window writes its read's index out three times: past the IR's limits, the model keeps its reads
        check_limits(windowed_program)
    except IRFormatError:
        return program
    return windowed_program


def windows_if_mergeable(program: ir.Program) -> ir.Program:
    """What conversion compiles: the program with request windows where it has reads to window and its merge is
    proven (kernel.py); else the program as it is (windows would only cost a recursion that never merges)."""
    from .kernel import merge_notes

    windowed_program = with_request_windows(program)
    if windowed_program is program or not merge_notes(windowed_program)["per_tree"]:
        return program
    return windowed_program


def window_constant(name: str) -> onnx.NodeProto:
    """The Constant that feeds W in the converted model: no rows (a plain run)."""
    empty = helper.make_tensor(name, onnx.TensorProto.INT64, [0, 2], [])
    return helper.make_node("Constant", [], [name], name=f"{name} (empty: a plain run)", value=empty)


def with_window_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a converted model whose window inputs W are graph inputs (int64 [N, 2]) instead of Constants: the
    model a server runs merged forests through. The model itself where it has none."""
    names = [n.output[0] for n in model.graph.node if n.op_type == "Constant" and len(n.output) == 1
             and n.output[0].startswith(PREFIX)]
    if not names:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    kept = [n for n in copy.graph.node if not (n.op_type == "Constant" and n.output[0] in names)]
    del copy.graph.node[:]
    copy.graph.node.extend(kept)
    copy.graph.input.extend(helper.make_tensor_value_info(n, onnx.TensorProto.INT64, [f"{n}.nodes", 2])
                            for n in names)
    return copy

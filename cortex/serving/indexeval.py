"""The run-time half of the merge proof: which requests of a batch read outside their own rows.

`kernel.analyze` proves that merging shifts every node index by the request's base (T(x) in its docstring). What it
cannot know is whether a request's indices lie in its own rows: a child id past the end of its tree, a missing child
read through a Gather that wraps (-1 is the last row: merged, another request's), `max(child, 0)` of a missing child.
This module evaluates a recursion's index expressions over all positions of the merged arrays at once and names the
requests that read a row outside [base, base + nodes): those run alone, with their own results or their own errors.
The expressions are compiled once per recursion (`Compiled`) into instructions that `cortex._C.check_positions`
(csrc/python/index_check.cc) runs in one call that keeps the GIL; `_Evaluator` (numpy) is their reference semantics,
used for scalars (trip counts, also at conversion, where no native module is loaded) and by the tests as the oracle.
Reads of a TreeRec's missing child (-1 with zero rows) are in bounds. The evaluation follows ONNX's integer semantics
as the kernel computes them (overflow wraps); where it meets an error (division by zero, a failed guard) the
position's request runs alone too.
"""
from __future__ import annotations

import numpy as np

from ..ir import nodes as ir
from .kernel import csr_offsets, read_row, set_node, walks_back

_COMPARE = {"lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal, "eq": np.equal,
            "ne": np.not_equal}


_native_module = None


def native():
    """cortex._C (csrc/python: the merge path's array work and bounds check), loaded on first use: importing cortex
    alone loads no native module (a process that never merges need not load it). Kept once loaded: an import
    statement per call costs more than the checks it serves."""
    global _native_module
    if _native_module is None:
        from .. import _C
        _native_module = _C
    return _native_module


class _Evaluator:
    """Index expressions and predicates over `count` positions: each value is (int64 or bool array [count],
    trouble bool array [count]: positions where evaluating it would raise in the kernel). The reference semantics
    of `Compiled` (native); integer overflow wraps in both."""

    def __init__(self, arrays: dict, count: int, length):
        self.arrays = arrays
        self.count = count
        self.length = length
        self.memo = {}
        self.none = np.zeros(count, dtype=bool)

    def __call__(self, e):
        out = self.memo.get(e)
        if out is None:
            out = self._eval(e)
            self.memo[e] = out
        return out

    def _full(self, value):
        return np.full(self.count, value, dtype=np.int64)

    def _eval(self, e):
        if isinstance(e, ir.Iter):
            return np.arange(self.count, dtype=np.int64), self.none
        if isinstance(e, ir.IConst):
            return self._full(e.value), self.none
        if isinstance(e, ir.Length):
            if e.axis and e.array in self.arrays:  # a dimension after the rows: as the array has it
                a = self.arrays[e.array]
                return self._full(a.shape[e.axis] if a.ndim > e.axis else 1), self.none
            return self._full(self.length(e.array)), self.none
        if isinstance(e, ir.Load):
            return self._load(e)
        if isinstance(e, ir.IBinary):
            return self._binary(e)
        if isinstance(e, ir.ISelect):
            (p, tp), (a, ta), (b, tb) = self(e.pred), self(e.a), self(e.b)
            return np.where(p, a, b), tp | np.where(p, ta, tb)
        if isinstance(e, ir.Guard):
            (p, tp), (v, tv) = self(e.pred), self(e.value)
            return v, tp | tv | ~p
        if isinstance(e, ir.BConst):
            return np.full(self.count, e.value), self.none
        if isinstance(e, ir.Compare):
            (a, ta), (b, tb) = self(e.a), self(e.b)
            return _COMPARE[e.op](a, b), ta | tb
        if isinstance(e, ir.BNot):
            a, ta = self(e.a)
            return ~a, ta
        if isinstance(e, (ir.BAnd, ir.BOr)):
            (a, ta), (b, tb) = self(e.a), self(e.b)
            if isinstance(e, ir.BAnd):  # the kernel's && does not evaluate b where a is false
                return a & b, ta | (a & tb)
            return a | b, ta | (~a & tb)
        raise TypeError(f"not an index expression or predicate: {type(e).__name__}")

    def _load(self, e: ir.Load):
        array = self.arrays[e.array]
        index, trouble = self(e.index)
        if array.ndim == 0:
            return self._full(int(array)), trouble
        rows = array.shape[0]
        column = e.column or 0
        if rows == 0 or column >= array.size // rows:  # nothing to read: every read fails
            return self._full(0), trouble | True
        flat = array.reshape(rows, -1)
        outside = (index < -rows) | (index >= rows)
        safe = np.where(outside, 0, np.where(index < 0, index + rows, index))
        return flat[safe, column].astype(np.int64), trouble | outside

    def _binary(self, e: ir.IBinary):
        (a, ta), (b, tb) = self(e.a), self(e.b)
        trouble = ta | tb
        if e.op == "add":
            return a + b, trouble
        if e.op == "sub":
            return a - b, trouble
        if e.op == "mul":
            return a * b, trouble
        if e.op == "max":
            return np.maximum(a, b), trouble
        if e.op == "min":
            return np.minimum(a, b), trouble
        zero = b == 0
        d = np.where(zero, 1, b)
        with np.errstate(all="ignore"):  # INT64_MIN // -1 wraps, as in the kernel
            if e.op == "div":  # ONNX Div on integers truncates: the floor, plus one where it rounded a negative down
                value = np.floor_divide(a, d) + ((np.mod(a, d) != 0) & ((a < 0) != (d < 0)))
            elif e.op == "floordiv":
                value = np.floor_divide(a, d)
            elif e.op == "mod":
                value = np.mod(a, d)
            else:
                value = np.fmod(a, d)
        return value, trouble | zero


# Instruction codes of csrc/python/index_check.cc (its enum Op, in this order).
_OPS = {name: code for code, name in enumerate(
    ("iter", "const", "length", "load", "add", "sub", "mul", "max", "min", "div", "floordiv", "mod", "fmod", "select",
     "guard", "lt", "le", "gt", "ge", "eq", "ne", "not", "and", "or"))}


class Compiled:
    """Index expressions as instructions for cortex._C (one per distinct expression, operands first): rows of (op,
    operand, operand, operand, immediate, immediate). Loads read `arrays[k]` (immediate 0: k; immediate 1: the column
    or -1), lengths read `lengths[k]` ((array name or None for the state tables, axis)); both are passed per call."""

    def __init__(self):
        self.code = []
        self.registers = {}
        self.arrays = []  # names, in slot order
        self.lengths = []  # (array name or None, axis), in slot order
        self._code = None  # self.code as an array (rebuilt when instructions were added)

    def __call__(self, e) -> int:
        """The register holding e's value (compiled on first use)."""
        reg = self.registers.get(e)
        if reg is None:
            reg = self.registers[e] = self._emit(*self._instruction(e))
        return reg

    def _emit(self, op, a=0, b=0, c=0, imm0=0, imm1=0) -> int:
        self.code.append((_OPS[op], a, b, c, imm0, imm1))
        return len(self.code) - 1

    @staticmethod
    def _slot(items: list, item) -> int:
        if item not in items:
            items.append(item)
        return items.index(item)

    def _instruction(self, e) -> tuple:
        if isinstance(e, ir.Iter):
            return ("iter",)
        if isinstance(e, (ir.IConst, ir.BConst)):
            return ("const", 0, 0, 0, int(e.value))
        if isinstance(e, ir.Length):
            return ("length", 0, 0, 0, self._slot(self.lengths, (e.array, e.axis)))
        if isinstance(e, ir.Load):
            column = -1 if e.column is None else int(e.column)
            return ("load", self(e.index), 0, 0, self._slot(self.arrays, e.array), column)
        if isinstance(e, ir.IBinary):
            return (e.op, self(e.a), self(e.b))
        if isinstance(e, ir.ISelect):
            return ("select", self(e.pred), self(e.a), self(e.b))
        if isinstance(e, ir.Guard):
            return ("guard", self(e.pred), self(e.value))
        if isinstance(e, ir.Compare):
            return (e.op, self(e.a), self(e.b))
        if isinstance(e, ir.BNot):
            return ("not", self(e.a))
        if isinstance(e, (ir.BAnd, ir.BOr)):
            return ("and" if isinstance(e, ir.BAnd) else "or", self(e.a), self(e.b))
        raise TypeError(f"not an index expression or predicate: {type(e).__name__}")

    def inputs(self, arrays: dict, node_total: int):
        """(code, arrays, lengths) for one call: the merged arrays by slot, the lengths they give."""
        def length(name, axis):
            if name is None:
                return node_total  # the state tables: one row per node of the forest
            a = arrays[name]
            return a.shape[axis] if a.ndim > axis else 1
        if self._code is None or len(self._code) != len(self.code):
            self._code = np.asarray(self.code, dtype=np.int64).reshape(-1, 6)
        return (self._code, [arrays[name] for name in self.arrays],
                np.asarray([length(*k) for k in self.lengths], dtype=np.int64))

    def evaluate(self, exprs: list, arrays: dict, count: int, node_total: int) -> list:
        """[(values, trouble)] of each expression over `count` positions (what the tests compare with _Evaluator)."""
        registers = [self(e) for e in exprs]
        values, trouble = native().eval_index(*self.inputs(arrays, node_total), count, registers)
        return list(zip(values, trouble))


def scalar_value(e: ir.IExpr, length, arrays=None):
    """The value of an index expression (a trip count) for the given lengths and the arrays it reads (none, or
    0-D numbers); None where evaluating it would fail."""
    value, trouble = _Evaluator(arrays or {}, 1, length)(e)
    return None if trouble[0] else int(value[0])


OWN_ROWS = -1  # a read's rows: the request's own nodes (else the row count of a table every request shares)


class CaseCheck:
    """The cases of a recursion, in order, as the bounds check reads them: (predicate, the reads that evaluating it
    makes, the reads a position it selects makes), each read (row index, missing_zero: -1 reads a zero row[, rows]):
    `rows` OWN_ROWS (the default) for a row of the request's own nodes, else the row count of a table every request
    shares (a constant's rows, read with Gather semantics: merging leaves the index as it is, but a read past them
    fails the whole forest)."""

    def __init__(self, cases: list):
        self.cases = [(predicate, _with_rows(tested), _with_rows(used)) for predicate, tested, used in cases]
        self.compiled = Compiled()
        # as registers for cortex._C.check_positions; a read at the position itself (Iter) is always the request's
        # own row
        self.native_cases = [
            (self.compiled(predicate),
             [(self.compiled(i), z, rows) for i, z, rows in tested if not _own_position(i, rows)],
             [(self.compiled(i), z, rows) for i, z, rows in used if not _own_position(i, rows)])
            for predicate, tested, used in self.cases]

    def __call__(self, arrays: dict, node_counts, position_counts) -> set:
        """The requests (indices) of a merged forest with a position that, trying the cases in order as the kernel
        does, evaluates a predicate that fails or reads outside the request's rows, or is selected by a case that
        uses a row outside them. Request r owns position_counts[r] consecutive positions and node_counts[r]
        consecutive node ids; `arrays`: the recursion's arrays as merged."""
        node_counts = np.asarray(node_counts, dtype=np.int64)
        code, loaded, lengths = self.compiled.inputs(arrays, int(node_counts.sum()))
        return set(native().check_positions(code, loaded, lengths, self.native_cases, node_counts,
                                            np.asarray(position_counts, dtype=np.int64)))

    def reference(self, arrays: dict, node_counts, position_counts) -> set:
        """The same answer in numpy with _Evaluator (the tests' oracle)."""
        node_counts = np.asarray(node_counts, dtype=np.int64)
        requests = np.arange(len(node_counts))
        starts = np.cumsum(node_counts) - node_counts
        owner = np.repeat(requests, np.asarray(position_counts, dtype=np.int64))
        base = starts[owner]
        stop = base + node_counts[owner]
        count = owner.shape[0]
        merged_length = {name: (a.shape[0] if a.ndim else 1) for name, a in arrays.items()}
        evaluate = _Evaluator(arrays, count, lambda name: merged_length[name] if name else int(node_counts.sum()))
        bad = np.zeros(count, dtype=bool)
        selected = np.zeros(count, dtype=bool)  # positions an earlier case took
        for predicate, tested_indices, used_indices in self.cases:
            tested = ~selected  # where the kernel evaluates this case's predicate
            taken, trouble = evaluate(predicate)
            bad |= tested & (trouble | _outside(evaluate, tested_indices, base, stop))
            if used_indices:
                bad |= tested & taken & _outside(evaluate, used_indices, base, stop)
            selected |= taken
        return set(np.unique(owner[bad]).tolist()) if bad.any() else set()


class BoundsCheck:
    """The run-time check of one recursion, prepared once: for each case, the row indices its predicate and its
    writes use (each distinct index once). In a TreeRec the kernel checks every child id against the structure, so
    reads of a node's own child slots with "no child" zero rows are covered by the per-request check of the whole
    children array and are not evaluated again."""

    def __init__(self, program: ir.Program):
        self.program = program
        cases = []
        offsets = csr_offsets(program)
        for case in program.cases:
            # a read from the end of the positions (kernel.walks_back) is the request's own row, as p is: the
            # merge lays positions out so (merge.py)
            tested = [u for u in _distinct(_loads(case.predicate, offsets)) if _from_the_end(u[0]) is None]
            used = [u for u in _distinct(_row_indices(case, offsets))
                    if not self._covered(u) and _from_the_end(u[0]) is None]
            cases.append((case.predicate, tested, used, _shared_rows(case, program)))
        # Nothing to evaluate when no case reads a row by a computed index and no predicate can fail (a TreeRec:
        # its child slots are checked as a whole below).
        fallible = any(isinstance(e, ir.Guard) or (isinstance(e, ir.IBinary) and e.op in ("div", "floordiv", "mod",
                                                                                          "fmod"))
                       for case in program.cases for e in ir.walk([case.predicate]))
        self.evaluate_cases = fallible or any(
            any(not isinstance(i, ir.Iter) for i, _ in tested + used) for _, tested, used, _ in cases)
        # A constant's rows read at an input's value (an embedding at a word id) are checked where the cases are
        # evaluated anyway; they never turn that evaluation on by themselves (a TreeRec's check would cost a tenth
        # more a forest): a read past them fails the merged run, and only then does the thorough check look
        # (`thorough`, forest.py).
        self.cases = CaseCheck([(p, tested, used + shared if self.evaluate_cases else used)
                                for p, tested, used, shared in cases])
        shared_only = not self.evaluate_cases and any(shared for *_, shared in cases)
        self.thorough_cases = CaseCheck([(p, tested, used + shared) for p, tested, used, shared in cases]) \
            if shared_only else None
        # child sets: (encoding, arrays, (target row, source row) of an edge list [k, E]), each once
        self.sets = list(dict.fromkeys((e.encoding, e.arrays, _edge_rows(e)) for case in program.cases
                                       for e in ir.walk_rows([x for _, x in case.writes])
                                       if isinstance(e, ir.SetReduce)))

    def _covered(self, use) -> bool:
        index, missing_zero = use
        p = self.program
        return (p.mode == "dag" and missing_zero and isinstance(index, ir.Load) and index.array == p.rows_from
                and isinstance(index.index, ir.Iter))

    def __call__(self, arrays: dict, node_counts, position_counts, positions_are_nodes: bool,
                 row_counts=None, thorough: bool = False) -> set:
        """`row_counts`: kernel array -> each request's row count of it (needed for edge lists: their own unit).
        `thorough`: also what fails a forest without mixing requests, which the per-batch check leaves to the
        kernel (a TreeRec's word id past its embedding, a cycle): asked once a merged run has failed."""
        program = self.program
        node_counts = np.asarray(node_counts, dtype=np.int64)
        position_counts = node_counts if positions_are_nodes or program.mode == "dag" else \
            np.asarray(position_counts, dtype=np.int64)
        flagged = set()
        if self.evaluate_cases:
            flagged = self.cases(arrays, node_counts, position_counts)
        if thorough and self.thorough_cases is not None:
            flagged |= self.thorough_cases(arrays, node_counts, position_counts)
        if thorough and program.mode == "dag":
            children = np.asarray(arrays[program.rows_from])
            flagged.update(native().requests_with_cycles(children.reshape(children.shape[0], -1), node_counts))
        if self.sets:
            flagged |= self._sets(arrays, node_counts, np.cumsum(node_counts) - node_counts, row_counts or {})
        if program.mode == "dag":  # the kernel checks every child id of the structure, read or not
            flagged.update(native().rows_outside(arrays[program.rows_from], node_counts, node_counts, -1))
        return flagged

    def _sets(self, arrays, node_counts, starts, row_counts) -> set:
        """Requests whose child-set arrays could select or read another request's nodes once merged: a parent or
        target (dst) value past the request's last node (shifted, it would name another request's node; negative
        values never match a node and stay), a source (src) value outside the request's nodes. Arrays whose rows per
        request are unknown flag every request (they run alone)."""
        requests = np.arange(len(node_counts))
        flagged = set()
        for encoding, names, edge_rows in self.sets:
            counts = node_counts if encoding == "parent" else row_counts.get(names[-1])
            if counts is None or encoding not in ("parent", "edges", "edge_index", "range"):
                return set(requests.tolist())
            owner = np.repeat(requests, np.asarray(counts, dtype=np.int64))
            lo, hi = starts[owner], starts[owner] + node_counts[owner]
            if encoding == "edge_index":  # [k, E]: its target and source rows
                table = arrays[names[0]]
                if table.ndim != 2 or table.shape[0] <= max(edge_rows):
                    return set(requests.tolist())
                columns = [(table[edge_rows[1]], True), (table[edge_rows[0]], False)]
            else:  # src or a CSR slice's indices (read as rows: must be the request's), dst; or the parent array
                columns = [(arrays[name], encoding == "range" or (encoding == "edges" and k == 0))
                           for k, name in enumerate(names)]
            for column, member in columns:
                values = column.reshape(-1).astype(np.int64)
                if values.shape[0] != owner.shape[0]:
                    return set(requests.tolist())
                wrong = ((values < lo) | (values >= hi)) if member else (values >= hi)
                if wrong.any():
                    flagged |= set(np.unique(owner[wrong]).tolist())
        return flagged


def _edge_rows(e: ir.SetReduce):
    """(target row, source row) of an edge list [k, E] (constants: SetReduce.verify); None for other encodings."""
    return (int(e.bounds[1].value), int(e.bounds[2].value)) if e.encoding == "edge_index" else None


def _from_the_end(index):
    """kernel.walks_back of a row index, through the range guard an exporter puts around it (`order[L - 1 - i]`
    checked to be in range): the analysis proved the guard's test one with the same outcome merged (a position in
    range holds at every position), so the row is the request's own position (and a guard that fails, fails the
    merged run, whose requests then run alone)."""
    return walks_back(index.value if isinstance(index, ir.Guard) else index)


def _distinct(uses):
    return list(dict.fromkeys(uses))


def out_of_bounds(program: ir.Program, arrays: dict, node_counts, position_counts, positions_are_nodes: bool) -> set:
    """Indices of the requests of a merged batch that read outside their own rows (or would fail) in `program`.

    `arrays`: the recursion's runtime arrays as merged (name -> array); `node_counts[r]`, `position_counts[r]`: the
    nodes and positions of request r, in batch order. (BoundsCheck prepares this once per program.)"""
    return BoundsCheck(program)(arrays, node_counts, position_counts, positions_are_nodes)


def _with_rows(uses) -> list:
    return [u if len(u) == 3 else (*u, OWN_ROWS) for u in uses]


def _own_position(index, rows) -> bool:
    """A read at p itself: a position, or the node itself, always the request's own row."""
    return rows == OWN_ROWS and isinstance(index, ir.Iter)


def _outside(evaluate, indices, base, stop):
    """Positions where one of the (index, missing_zero, rows) reads falls outside [base, stop) (a shared table's:
    outside [-rows, rows)) or fails."""
    out = np.zeros(base.shape[0], dtype=bool)
    for index, missing_zero, rows in indices:
        if _own_position(index, rows):
            continue
        value, trouble = evaluate(index)
        if rows != OWN_ROWS:
            inside = (value >= -rows) & (value < rows)
        else:
            inside = (value >= base) & (value < stop)
            if missing_zero:
                inside |= value == -1
        out |= trouble | ~inside
    return out


def _shared_rows(case: ir.Case, program: ir.Program) -> list:
    """(index, False, rows) of every constant's row a case reads (an embedding row at a word id): the host prepares
    each with Gather semantics (codegen: a slot), and an index past the rows fails the run, the forest's if merged."""
    out = []
    for e in ir.walk_rows([x for _, x in case.writes]):
        need = e.host_value()
        if need is None or need[0] != ir.HOST_SLOT:
            continue
        index, kind, source = need[1]
        if kind == ir.HOST_ROW and source in program.constants and \
                not any(isinstance(x, ir.Member) for x in ir.walk([index])):
            out.append((index, False, int(program.constants[source].shape[0])))
    return _distinct(out)


def _loads(expr, offsets: dict):
    return [(read_row(e, offsets), False) for e in ir.walk([expr]) if isinstance(e, ir.Load)]


def _padding_read(index):
    """(True, None) for a read at len(A), the row past the nodes; (True, i) for a choice between it and i (i is
    then checked, -1 allowed: a choice that sends -1 to the padding row); (False, None) otherwise."""
    if isinstance(index, ir.Length):
        return True, None
    if isinstance(index, ir.ISelect):
        if isinstance(index.a, ir.Length):
            return True, index.b
        if isinstance(index.b, ir.Length):
            return True, index.a
    return False, None


def _read_only_where_not_negative(roots) -> dict:
    """Child-state reads that every path reaches through a choice `select(i >= 0 ? read(i) : ...)` (or
    `i < 0 ? ... : read(i)`), read at i or at max(i, 0) (torch's clamp of a missing child) -> i. Where i is -1
    ("no child", kept by the merge) the choice drops the read in the request's own run and in the forest alike, so
    the bounds check may accept -1 there (and, for max(i, 0), need not check the row 0 it reads)."""
    guarded_reads, open_reads = {}, set()
    seen = set()

    def guard_of(pred):
        if isinstance(pred, ir.Compare) and pred.b in (ir.IConst(0), ir.IConst(-1)):
            if (pred.op, pred.b) in (("ge", ir.IConst(0)), ("gt", ir.IConst(-1))):
                return pred.a, "a"
            if (pred.op, pred.b) in (("lt", ir.IConst(0)), ("le", ir.IConst(-1))):
                return pred.a, "b"
        return None, None

    def visit(e, guards):
        key = (e, guards)
        if key in seen or not isinstance(e, ir.RExpr):
            return
        seen.add(key)
        if isinstance(e, ir.ChildState):
            index = e.index
            if isinstance(index, ir.IBinary) and index.op == "max" and ir.IConst(0) in (index.a, index.b):
                index = index.b if index.a == ir.IConst(0) else index.a
            if index in guards:
                guarded_reads[e] = index
            else:
                open_reads.add(e)
            return
        if isinstance(e, ir.Select):
            index, branch = guard_of(e.pred)
            visit(e.a, guards | {index} if branch == "a" else guards)
            visit(e.b, guards | {index} if branch == "b" else guards)
            return
        for x in ir.operands(e):
            visit(x, guards)

    for root in roots:
        visit(root, frozenset())
    return {e: i for e, i in guarded_reads.items() if e not in open_reads}


def wrapping_reads(program: ir.Program, windowed: bool = True) -> tuple:
    """The indices of the table reads where a missing child (-1) would read what ONNX's Gather reads there, the
    table's last row (windows.read_sites, less the clamped reads `max(i, 0)`, noted apart). Merged, -1 would be the
    forest's last row, so the bounds check sends a request that reaches one with -1 to run alone. Conversion gives
    these reads their request's window (windows.py) where the case writes a row: those are not named while the
    merge writes the windows (`windowed`), and named as the reads they were where it does not."""
    from .windows import plain_index, read_sites

    found = [e.index for _, e in read_sites(program)]
    if not windowed:
        found += [plain_index(e.index) for case in program.cases for e in ir.case_exprs(case)
                  if isinstance(e, ir.ChildState) and plain_index(e.index) is not e.index]
    return tuple(dict.fromkeys(i for i in found if not (isinstance(i, ir.IBinary) and i.op == "max")))


def _non_negative_in(pred) -> set:
    """The index expressions a predicate holds to be >= 0 wherever it is true (`i >= 0`, `i > -1`, `!(i < 0)`,
    `!(i <= -1)`, and the terms of a conjunction of those)."""
    if isinstance(pred, ir.BAnd):
        return _non_negative_in(pred.a) | _non_negative_in(pred.b)
    negated = isinstance(pred, ir.BNot)
    c = pred.a if negated else pred
    if not isinstance(c, ir.Compare):
        return set()
    holds = (("ge", ir.IConst(0)), ("gt", ir.IConst(-1))) if not negated else (("lt", ir.IConst(0)),
                                                                              ("le", ir.IConst(-1)))
    return {c.a} if (c.op, c.b) in holds else set()


def _row_indices(case: ir.Case, offsets: dict):
    """(index, missing_zero) of every row a case selects by node id: its target, child-state reads, node-input reads
    and array loads (CSR offsets at v + 1: v, kernel.read_row)."""
    roots = [x for _, x in case.writes] + ([case.target] if case.target is not None else [])
    out = [(case.target, False)] if case.target is not None else []
    guarded = _read_only_where_not_negative([x for _, x in case.writes])
    for e in ir.walk(roots):
        if isinstance(getattr(e, "index", None), ir.Member):
            continue  # a set's member: _sets checks the set's arrays
        if isinstance(e, ir.ChildState):
            pad, other = _padding_read(e.index)
            if pad:  # the row past the nodes (kernel.py): the same constant row in both runs
                if other is not None:
                    out.append((other, True))
            else:
                out.append((guarded[e], True) if e in guarded else (e.index, e.missing_zero))
        elif isinstance(e, ir.Load):
            out.append((read_row(e, offsets), False))
        elif isinstance(e, (ir.InputRow, ir.InputProjection)):
            out.append((e.index, False))
        elif isinstance(e, ir.SetReduce):
            out.append((set_node(e), False))  # the node whose set it is: one of the request's own
    return out

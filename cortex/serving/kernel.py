"""Merge safety of one recursion, decided from its IR.

Several requests can run as one forest when every output row of a request depends only on that request's inputs.
Merging concatenates each runtime array along its rows and adds the request's *node base* (the nodes of the requests
before it) to every non-negative value of an array that holds node ids; negative values ("no child" sentinels) are
kept. Writing T(x) for that map (x < 0: x; else x + base), the analysis proves, expression by expression:

- a *node* index expression evaluates in the merged run to T of its value in the request's own run
  (`Load` of a node-id array, the node `p` of a TreeRec, `max(node, c)` for a constant c < 0, choices between
  them); `max(node, 0)` is *clamped*: T of its own value, or 0, which lies outside every request's rows but the
  first (whose base is 0), so a run-time bounds check catches it (see `indexeval`); a read conversion gave its
  request's window (windows.py: -1 counted from the request's end, a clamp to its first row, through the input W
  the merge writes) is a node id;
- a *position* is `p` of a Loop or Scan: position blocks are concatenated in request order;
- *data* (token ids, 0/1 flags, constants and arithmetic on them) is the same in both runs;
- every predicate has the same outcome in both runs: data against data, node against node (T is increasing), node
  against a constant c < 0, or `node >= 0` / `node < 0`; anything else (a node id against 5, a position against 0,
  a length) could change a case;
- rows are read only at node or position indices of arrays of that kind, and node ids never become data (a
  constant-table row, a float value, arithmetic);
- a `Length` appears only in the trip count, and the trip count of a request is its number of positions;
- a child set (`SetReduce`) is selected from a parent array (one row per node) or an edge list `src`, `dst` (one
  row per edge, its own unit, the rows of both counted together): their values are node ids, shifted like any other,
  and the node whose set it is must be a node id the run-time check finds in the request's own rows. Members then
  stay in the request (the run-time check sends a request whose parent / dst / src values leave its nodes to run
  alone), in the same order, so a sum over them adds the same numbers in the same order. An edge list [2, E] (the
  PyTorch Geometric convention) is the same list with its edges along the second axis: a unit of its own, merged
  along that axis (`ArrayRole.axis`). A CSR child list `indices[offsets[v] : offsets[v + 1]]` merges too: the
  indices are node ids on rows of their own unit (the edges), the offsets (one row per node, plus one) index those
  rows and are shifted by the request's *edge* base, each request's last offset dropped but the last request's
  (merge.py: only requests whose offsets run from 0 to their edge count, within, merge). Offsets read at a node v
  or at v + 1 (the end of v's slice, the one arithmetic on a node id that is allowed) are *edge positions*: merged,
  each is its own run's value plus the request's edge base, so the difference of two (a child count,
  `offsets[v + 1] - offsets[v]`) is data and two compare alike; any other use of one is refused;
- row expressions are the known, row-local kinds only (elementwise math, products with constant weights, slices,
  reductions inside a row); anything else is refused, never guessed.

Refused outright, with the reason: host integer state (a stack, a counter: it runs on from one position to the next,
so a merged request would start from its predecessor's final state), a value carried from one position to the next
(a chain's vector: the first position of a merged request would read its predecessor's last row), values reduced or
collected over every position after the kernel (`Final`: a running max or sum, a list, the last value: merged, over
the forest's positions), and inputs of a fixed row count.

What the IR cannot prove (the value of a node id depends on the base) makes the recursion "not mergeable" with the
reason. The static proof covers every request; the bounds of the indices a request actually uses are checked per
batch, on the merged arrays (`indexeval.out_of_bounds`): a request that reads outside its own rows runs alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..ir import nodes as ir
from ..ir.printer import format_index, format_pred
from .windows import window_input, windowed

NODE, CLAMPED, POSITION, DATA = "node", "clamped node", "position", "data"
BACKWARD = "position from the end"  # len(A) - 1 - p: the visit order walked from its last position
PAD = "padding row"  # len(A) of a node array: the row past the nodes (zeros(N + 1, H): a missing child's row)


@dataclass(frozen=True)
class EdgeShifted:
    """The kind of `times` x a value of CSR offsets `array` (plus data): merged, it is its own run's value plus
    times x the request's edge base. A sum whose shifts cancel is data; two of one kind compare alike."""
    array: str
    times: int

    def __str__(self):
        return f"CSR offset of '{self.array}'" + (f" (x{self.times})" if self.times != 1 else "")


NODES, POSITIONS = "nodes", "positions"  # the two row kinds of a recursion's arrays and tables
EDGES = "edges:"  # + the dst array's name: the rows of one edge list (src, dst), a unit of their own
OFFSETS = "offsets:"  # + the indices' name: CSR offsets, one row per node plus one, values rows of those indices
COUNT = "count"  # a number the trip count reads (a Loop's M the graph computes from a length): no rows
WINDOWS = "request windows"  # W of windows.py: no request sends it; merged, each node's request's [first, end)

# Row expressions whose value at a position depends only on their operands at that position (elementwise math,
# products with constant weights, static rearrangements and reductions inside the row) or on rows the analysis
# checks (_row). Any other kind is refused: a new node kind must be judged here before it can merge.
_ROW_LOCAL = (ir.ConstVec, ir.Scalar, ir.MatMul, ir.LeftMatMul, ir.MatVec, ir.Unary, ir.Binary, ir.Where, ir.Slice,
              ir.Concat, ir.Take, ir.Reduce)
_ROW_CHECKED = (ir.ChildState, ir.InputRow, ir.InputProjection, ir.ConstRow, ir.IndexValue, ir.Select, ir.SetReduce)
NOTES_VERSION = 1


class NotMergeable(Exception):
    """The analysis cannot prove that a request's outputs depend only on its own tree; str() is the reason."""


@dataclass(frozen=True)
class ArrayRole:
    """How merging treats one runtime input of a recursion: `rows` is 'nodes' (one row per node), 'positions' (one
    row per visited position), 'edges:<name>' (one per edge of an edge list), 'offsets:<indices>' (CSR offsets: one
    per node plus one, values rows of the indices), 'count' (a number only the trip count reads) or 'unused';
    `node_ids`: its values are
    node ids (offset by the node base); `axis`: the axis its rows run along (1: an edge list [2, E])."""
    rows: str
    node_ids: bool = False
    axis: int = 0


@dataclass(frozen=True)
class KernelMerge:
    """A recursion proven per-tree: the role of each runtime input and the row kind of each output."""
    inputs: dict  # input name -> ArrayRole
    outputs: dict  # ONNX output name -> 'nodes' | 'positions'
    positions: str  # what the visited positions are counted in: 'positions', or 'nodes' (a TreeRec, range(N))
    program: ir.Program = field(compare=False, repr=False)
    clamped: tuple = field(default=(), compare=False)  # rows read at max(node id, 0): where a request runs alone
    backward: bool = False  # positions read at len - 1 - p only (the visit walked from its end)
    padded: tuple = ()  # state tables read at the row past the nodes (their init must have it: graph.py)
    nonempty: tuple = ()  # arrays whose emptiness a case tests: a request visiting positions must have rows of them

    def to_notes(self) -> dict:
        """The node's notes member `merge` (JSON)."""
        return {"version": NOTES_VERSION, "per_tree": True, "positions": self.positions,
                "inputs": {name: {"rows": r.rows, "node_ids": r.node_ids, **({"axis": r.axis} if r.axis else {})}
                           for name, r in self.inputs.items()},
                "outputs": dict(self.outputs), **({"backward": True} if self.backward else {}),
                **({"padded": list(self.padded)} if self.padded else {}),
                **({"nonempty": list(self.nonempty)} if self.nonempty else {})}


def merge_notes(program: ir.Program) -> dict:
    """The `merge` member convert.publish_kernel records for a recursion: its roles, or why it is not mergeable."""
    try:
        return analyze(program).to_notes()
    except NotMergeable as e:
        return {"version": NOTES_VERSION, "per_tree": False, "reason": str(e)}
    except Exception as e:  # noqa: BLE001 - an analysis bug must never fail a conversion: the model is just not merged
        return {"version": NOTES_VERSION, "per_tree": False,
                "reason": f"internal error in the merge analysis: {type(e).__name__}: {e}"}


def _strip(e: ir.IExpr):
    """The expressions whose value an index may take: through guards, choices and max() with a constant."""
    if isinstance(e, ir.Guard):
        return _strip(e.value)
    if isinstance(e, ir.ISelect):
        return _strip(e.a) + _strip(e.b)
    if isinstance(e, ir.IBinary) and e.op == "max":
        return _strip(e.a) + _strip(e.b)
    return [e]


def node_uses(program: ir.Program):
    """(index expression, missing_zero, where) for every place an index selects a row by node id or position: loads,
    child states, node inputs, the cases' targets. A position is `p` of a Loop; everything else must be a node id."""
    uses = []

    def add(index, missing_zero, where):
        if not isinstance(index, ir.Member):  # a set's member: the set's arrays are checked instead
            uses.append((index, missing_zero, where))

    offsets = csr_offsets(program)
    for case in program.cases:
        if case.target is not None:
            add(case.target, False, f"the row case '{case.name}' writes")
        for e in ir.case_exprs(case):
            if isinstance(e, ir.Load):
                add(read_row(e, offsets), False, f"a read of '{e.array}'")
            elif isinstance(e, ir.ChildState):
                add(e.index, e.missing_zero, f"a read of table {e.table}")
            elif isinstance(e, (ir.InputRow, ir.InputProjection)):
                add(e.index, False, f"a read of node input '{e.array}'")
            elif isinstance(e, ir.SetReduce):
                add(set_node(e), False, f"the node whose child set {e.encoding} '{', '.join(e.arrays)}' selects")
    return uses


def _affine(e: ir.IExpr, terms: dict, sign: int = 1) -> bool:
    """Adds sign * e to `terms` (p, len(A) of a first axis, and "const" -> coefficient) when e is a sum of those
    with coefficients +-1 (sums, differences, -1 * x); False for anything else."""
    if isinstance(e, ir.IBinary) and e.op in ("add", "sub"):
        return _affine(e.a, terms, sign) and _affine(e.b, terms, sign if e.op == "add" else -sign)
    if isinstance(e, ir.IBinary) and e.op == "mul" and ir.IConst(-1) in (e.a, e.b):
        return _affine(e.b if e.a == ir.IConst(-1) else e.a, terms, -sign)
    if isinstance(e, ir.IConst):
        terms["const"] = terms.get("const", 0) + sign * e.value
        return True
    if isinstance(e, ir.Iter) or (isinstance(e, ir.Length) and e.array is not None and e.axis == 0):
        terms[e] = terms.get(e, 0) + sign
        return True
    return False


def _position_terms(e: ir.IExpr):
    """(c_p, the array A, c_len, c) with e = c_p * p + c_len * len(A) + c, at most one array; None otherwise."""
    terms = {}
    if not _affine(e, terms):
        return None
    lengths = [x for x, c in terms.items() if isinstance(x, ir.Length) and c]
    if len(lengths) > 1:
        return None
    array = lengths[0].array if lengths else None
    return terms.get(ir.Iter(), 0), array, terms[lengths[0]] if lengths else 0, terms.get("const", 0)


def walks_back(e: ir.IExpr):
    """The array A when `e` is len(A) - 1 - p (in any arrangement of sums, differences and -1 * p), else None."""
    if not isinstance(e, ir.IBinary):
        return None
    terms = _position_terms(e)
    return terms[1] if terms is not None and terms[1] is not None and terms[0::2] == (-1, 1) and \
        terms[3] == -1 else None


def csr_slice(e: ir.SetReduce):
    """(offsets array, node v, the read offsets[v + 1]) of a CSR child list `indices[offsets[v] : offsets[v + 1]]`
    (either bound may be max(., 0): a range mask's form, the same for offsets >= 0); None for any other set."""
    if e.encoding != "range" or len(e.bounds) != 2:
        return None
    lo, hi = (_unclamped(b) for b in e.bounds)
    if not (isinstance(lo, ir.Load) and isinstance(hi, ir.Load) and lo.array == hi.array):
        return None
    if hi.index in (ir.IBinary("add", lo.index, ir.IConst(1)), ir.IBinary("add", ir.IConst(1), lo.index)):
        return lo.array, lo.index, hi
    return None


def _unclamped(b: ir.IExpr) -> ir.IExpr:
    if isinstance(b, ir.IBinary) and b.op == "max" and ir.IConst(0) in (b.a, b.b):
        return b.b if b.a == ir.IConst(0) else b.a
    return b


def csr_offsets(program: ir.Program) -> dict:
    """The CSR offsets arrays of a program's child sets -> the indices array each slices."""
    out = {}
    for case in program.cases:
        for e in ir.walk_rows([x for _, x in case.writes]):
            csr = csr_slice(e) if isinstance(e, ir.SetReduce) else None
            if csr is not None:
                out.setdefault(csr[0], e.arrays[0])
    return out


def read_row(e: ir.Load, offsets: dict) -> ir.IExpr:
    """The row whose place a load reads: its index; for CSR offsets read at v + 1 (node v's slice end), v. Merged,
    offsets[v + 1] of a request's last node is the next request's first offset, which the merge makes equal to it
    (merge.py: canonical offsets), so what must lie in the request's rows is v."""
    if e.array in offsets and isinstance(e.index, ir.IBinary) and e.index.op == "add" and \
            ir.IConst(1) in (e.index.a, e.index.b):
        return e.index.b if e.index.a == ir.IConst(1) else e.index.a
    return e.index


def set_node(e: ir.SetReduce) -> ir.IExpr:
    """The node whose child set `e` selects: `bounds[0]`, or the node a CSR slice's offsets are read at."""
    csr = csr_slice(e)
    return csr[1] if csr is not None else e.bounds[0]


class _Analysis:
    """One attempt at the proof; `iter_kind` is what `p` of a Loop is: a position (it indexes the visit order), or a
    node (a loop over range(N) that writes row p: positions and nodes are then the same rows)."""

    def __init__(self, program: ir.Program, iter_kind: str = POSITION):
        self.program = program
        self.visit = program.mode == "visit"
        self.iter_kind = iter_kind if self.visit else NODE
        self.position_rows = POSITIONS if self.iter_kind == POSITION else NODES
        self.node_ids = set()  # arrays whose values are used as node ids
        self.rows = {}  # array -> set of row kinds it is read at
        self.columns = set()  # arrays whose rows run along their second axis (edge lists [2, E])
        self.position_arrays = set()  # arrays whose length a position is compared with: one row per position
        self.node_arrays = set()  # arrays whose length a guarded node id is compared with: one row per node
        self.backward_arrays = set()  # arrays A of the positions read at len(A) - 1 - p
        self.pad_arrays = set()  # arrays A whose len(A) a state table is read at: the row past the nodes
        self.padded_tables = set()  # state tables read there
        self.nonempty_arrays = set()  # arrays A of an emptiness test len(A) == 0
        self.kinds = {}  # memo: IExpr -> kind
        self.offsets = csr_offsets(program)  # CSR offsets arrays -> the indices they slice
        self.counts = set()  # inputs only the trip count reads (a number the graph computes: graph.py checks it)

    def is_position(self, e) -> bool:
        return self.iter_kind == POSITION and isinstance(e, ir.Iter)

    def mark_node_id_arrays(self):
        for index, _, _ in node_uses(self.program):
            if self.is_position(index):
                continue
            for source in _strip(index):
                if isinstance(source, ir.Load):
                    self.node_ids.add(source.array)
        for case in self.program.cases:  # a child set's arrays hold node ids, before any kind is memoized
            for e in ir.walk_rows([x for _, x in case.writes]):
                if isinstance(e, ir.SetReduce) and e.encoding in ("parent", "edges", "edge_index", "range"):
                    self.node_ids.update(e.arrays)  # a CSR slice's indices (its offsets are edge rows)

    # ---- kinds of index expressions ------------------------------------------------------------------------
    def kind(self, e: ir.IExpr) -> str:
        k = self.kinds.get(e)
        if k is None:
            k = self._kind(e)
            self.kinds[e] = k
        return k

    def _kind(self, e: ir.IExpr) -> str:
        if isinstance(e, ir.Iter):
            return self.iter_kind
        if isinstance(e, ir.Member):
            return NODE  # a member of a child set: a row of the request's own nodes (see _set)
        if isinstance(e, (ir.HostValue, ir.HostElement)):
            raise NotMergeable(f"host integer state '{e.var}' is read as an index: it carries from one position to "
                               "the next, so merged, a request would start from the previous request's final state")
        if isinstance(e, ir.IConst):
            return DATA
        if isinstance(e, ir.Length):
            what = f"len({e.array})" if e.array else "the number of nodes N"
            raise NotMergeable(f"{what} is used inside the recursion: merged, it would be the forest's, not the "
                               "request's")
        if isinstance(e, ir.Load):
            return self._load(e)
        if isinstance(e, ir.Guard):
            self._guard_pred(e.pred, e.value)
            return self.kind(e.value)
        if isinstance(e, ir.ISelect):
            window = windowed(e)
            if window is not None:
                return self._windowed(e, *window)
            self.check_pred(e.pred)
            return self._choice(e, self.kind(e.a), self.kind(e.b))
        if isinstance(e, ir.IBinary):
            back = walks_back(e) if self.visit and self.iter_kind == POSITION else None
            if back is not None:
                self.backward_arrays.add(back)
                return BACKWARD
            shifted = self._edge_sum(e)
            if shifted is not None:
                return shifted
            return self._binary(e)
        raise NotMergeable(f"unknown index expression {type(e).__name__}")

    def _load(self, e: ir.Load) -> str:
        decl = self.program.input(e.array)
        if decl.rank == 0:
            raise NotMergeable(f"the scalar input '{e.array}' is read inside the recursion: requests may differ in it")
        if e.array in self.offsets:  # an edge position: read at a node v or v + 1 (read_row)
            if self.kind(read_row(e, self.offsets)) not in (NODE, CLAMPED):
                raise NotMergeable(f"the CSR offsets '{e.array}' are read at {format_index(e.index)}, which is not a "
                                   "node v or v + 1")
            self.rows.setdefault(e.array, set()).add(OFFSETS + self.offsets[e.array])
            return EdgeShifted(e.array, 1)
        k = self.kind(e.index)
        if k in (POSITION, BACKWARD):
            self.rows.setdefault(e.array, set()).add(POSITIONS)
        elif k in (NODE, CLAMPED):
            self.rows.setdefault(e.array, set()).add(NODES)
        else:
            raise NotMergeable(f"'{e.array}' is read at row {format_index(e.index)}, which is not a node or a "
                               "position (merged, that row belongs to another request)")
        return NODE if e.array in self.node_ids else DATA

    def _windowed(self, e, how, index, target, w) -> str:
        """A read given its request's window (windows.py): a node id wherever its own index and the node the case
        writes are node ids (merged, the window is the request's: T of the row its own run reads)."""
        if self.kind(index) not in (NODE, CLAMPED) or self.kind(target) != NODE:
            raise NotMergeable(f"{format_index(e)} reads a window at a value that is not a node id")
        return NODE

    def _choice(self, e, ka, kb) -> str:
        if ka == kb:
            return ka
        kinds = {ka, kb}
        if kinds == {NODE, CLAMPED}:
            return CLAMPED
        other = e.b if ka in (NODE, CLAMPED) else e.a
        if kinds & {NODE, CLAMPED} and DATA in kinds and isinstance(other, ir.IConst) and other.value < 0:
            return ka if ka != DATA else kb  # a negative sentinel is the same in both runs
        raise NotMergeable(f"{format_index(e)} chooses between a {ka} and a {kb}")

    def _edge_sum(self, e: ir.IBinary):
        """The kind of a sum of CSR offsets and data (+, -, -1 x) with an offset among its terms: data where the
        edge bases cancel (offsets[v + 1] - offsets[v]), else EdgeShifted; None for any other expression."""
        times = {}

        def terms(x, sign) -> bool:
            if isinstance(x, ir.IBinary) and x.op in ("add", "sub"):
                return terms(x.a, sign) and terms(x.b, sign if x.op == "add" else -sign)
            if isinstance(x, ir.IBinary) and x.op == "mul" and ir.IConst(-1) in (x.a, x.b):
                return terms(x.b if x.a == ir.IConst(-1) else x.a, -sign)
            k = self.kind(x)
            if isinstance(k, EdgeShifted):
                times[k.array] = times.get(k.array, 0) + sign * k.times
                return True
            return k == DATA

        negation = e.op == "mul" and ir.IConst(-1) in (e.a, e.b)
        if not self.offsets or not (e.op in ("add", "sub") or negation) or not terms(e, 1) or not times:
            return None
        left = {a: t for a, t in times.items() if t}
        if not left:
            return DATA
        if len(left) == 1:
            return EdgeShifted(*next(iter(left.items())))
        raise NotMergeable(f"{format_index(e)} adds offsets of different CSR arrays: merged, they shift by different "
                           "bases")

    def _binary(self, e: ir.IBinary) -> str:
        ka, kb = self.kind(e.a), self.kind(e.b)
        if ka == DATA and kb == DATA:
            return DATA
        if e.op == "max":
            node_side, other = (e.a, e.b) if ka in (NODE, CLAMPED) else (e.b, e.a)
            k = self.kind(node_side)
            if k in (NODE, CLAMPED) and isinstance(other, ir.IConst) and other.value <= 0:
                return CLAMPED if other.value == 0 or k == CLAMPED else NODE
        what = POSITION if POSITION in (ka, kb) else next((str(k) for k in (ka, kb) if isinstance(k, EdgeShifted)),
                                                           "node id")
        raise NotMergeable(f"{format_index(e)} computes with a {what}: merged, its value would depend on the "
                           "requests before it")

    # ---- predicates ------------------------------------------------------------------------------------------
    def check_pred(self, p: ir.BExpr):
        if isinstance(p, ir.BConst):
            return
        if isinstance(p, (ir.BNot,)):
            return self.check_pred(p.a)
        if isinstance(p, (ir.BAnd, ir.BOr)):
            self.check_pred(p.a)
            return self.check_pred(p.b)
        if not isinstance(p, ir.Compare):
            raise NotMergeable(f"unknown predicate {type(p).__name__}")
        if self._position_in_range(p) or self._emptiness(p):
            return
        ka, kb = self.kind(p.a), self.kind(p.b)
        if ka == DATA and kb == DATA:
            return
        if ka == NODE and kb == NODE:
            return  # both shifted by the same base, negatives kept: T is increasing, so the order is the same
        if ka == kb and isinstance(ka, EdgeShifted):
            return  # both shifted by the same multiple of the edge base
        op, node_side, other = (p.op, ka, p.b) if ka != DATA else (_SWAPPED[p.op], kb, p.a)
        if node_side in (NODE, CLAMPED, POSITION) and isinstance(other, ir.IConst):
            if other.value < 0 or (other.value == 0 and op in ("ge", "lt")):
                return  # a valid node id (>= 0) and its shifted value compare alike with these
        what = "CSR offsets are shifted by a request's edge base" if EdgeShifted in (type(ka), type(kb)) else \
            "node ids are shifted by a request's base"
        raise NotMergeable(f"the test {format_pred(p)} may change when {what}")

    def _guard_pred(self, pred: ir.BExpr, value: ir.IExpr):
        """A guard's test: what check_pred allows, and `value < N` (N the tables' rows or the length of a node
        array) of the node id it guards (TorchScript's range check on an index). Merged, N is the forest's, so the
        test passes for a node past the request's own rows; but such a node is a row the bounds check finds outside
        the request (merge.py: it runs alone and fails as its own run does)."""
        if isinstance(pred, ir.BAnd):
            self._guard_pred(pred.a, value)
            self._guard_pred(pred.b, value)
            return
        if isinstance(pred, ir.Compare):
            a, op, b = (pred.a, pred.op, pred.b) if pred.op in ("lt", "le") else (pred.b, _SWAPPED[pred.op], pred.a)
            if op == "lt" and a == value and isinstance(b, ir.Length) and b.axis == 0 and \
                    self.kind(value) in (NODE, CLAMPED):
                if b.array is not None:
                    self.node_arrays.add(b.array)
                return
        self.check_pred(pred)

    def _emptiness(self, p: ir.Compare) -> bool:
        """A test whether an array is empty (`len(A) == 0`, `len(A) > 0`: how dynamo guards `.any()` over a set
        that may be empty): its outcome is the same for every len(A) >= 1. At a position of a request whose own A
        has a row, merged, len(A) is the forest's, at least as large: the same outcome; merge.py runs a request
        whose A is empty but whose visit is not alone."""
        a, op, c = (p.a, p.op, p.b) if isinstance(p.a, ir.Length) else (p.b, _SWAPPED[p.op], p.a)
        if not (isinstance(a, ir.Length) and a.array is not None and a.axis == 0 and isinstance(c, ir.IConst)):
            return False
        outcome = {"lt": int.__lt__, "le": int.__le__, "gt": int.__gt__, "ge": int.__ge__, "eq": int.__eq__,
                   "ne": int.__ne__}[op]
        if not (c.value <= 1 and outcome(1, c.value) == outcome(2 ** 62, c.value)):
            return False  # the outcome may differ between two non-empty lengths
        self.nonempty_arrays.add(a.array)
        return True

    def _pad_row(self, index: ir.IExpr) -> bool:
        """Whether a table read at `index` reads the row past the nodes where it does not read a node: len(A) of a
        node array A (N: in a request's own run its N, merged the forest's; the graph checks that the table's
        initial value has that row, the same constant in both), or a choice between it and a node id
        (`where(child < 0, N, child)`)."""
        if isinstance(index, ir.Length):
            if index.array is None or index.axis != 0:
                return False
            self.pad_arrays.add(index.array)  # checked to have one row per node (run)
            return True
        if isinstance(index, ir.ISelect):
            for pad, other in ((index.a, index.b), (index.b, index.a)):
                if isinstance(pad, ir.Length) and self._pad_row(pad):
                    self.check_pred(index.pred)
                    if self._pad_row(other) or self.kind(other) in (NODE, CLAMPED):
                        return True
                    raise NotMergeable(f"table rows are read at {format_index(index)}, a choice of the row past the "
                                       f"nodes and {format_index(other)}, which is not a node id")
        return False

    def _use_kind(self, index: ir.IExpr) -> str:
        """The kind of a row index (node_uses), the padding row included."""
        return PAD if self._pad_row(index) else self.kind(index)

    def _position_in_range(self, p: ir.Compare) -> bool:
        """A test of the position p against the length of an array A of one row per position that holds at every
        position of a visit (0 <= p < len(A)), in the request's own run and the forest's alike: `p < len(A)`,
        `p + 1 <= len(A)` (the guards TorchScript puts on order[p]), `len(A) - 1 - p >= 0` (on a walk from the end).
        A is checked to be read at positions once the analysis has seen every read (run)."""
        if not self.visit or self.iter_kind != POSITION or p.op not in _SWAPPED or p.op in ("eq", "ne"):
            return False
        a, op, b = (p.a, p.op, p.b) if p.op in ("lt", "le") else (p.b, _SWAPPED[p.op], p.a)
        terms = _position_terms(ir.IBinary("sub", a, b))
        if terms is None or terms[0] == 0:
            return False
        c_p, array, c_len, c = terms
        if c_len and array is None:
            return False
        # the largest value of a - b over 0 <= p <= len - 1, len >= 1: bounded iff it does not grow with len
        if (c_p + c_len if c_p > 0 else c_len) > 0:
            return False
        at_one = c_len + c  # len = 1, p = 0: where the largest value is
        if not (at_one <= 0 if op == "le" else at_one < 0):
            return False
        if array is not None:
            self.position_arrays.add(array)
        return True

    # ---- the program ------------------------------------------------------------------------------------------
    def run(self) -> KernelMerge:
        program = self.program
        self._refuse_state_across_positions()
        self.mark_node_id_arrays()
        for case in program.cases:
            self.check_pred(case.predicate)
            if case.target is not None and self.kind(case.target) not in (NODE, CLAMPED):
                raise NotMergeable(f"case '{case.name}' writes row {format_index(case.target)}, which is not a "
                                   "node id")
            for e in ir.walk_rows([x for _, x in case.writes]):
                self._row(e)
        if self.visit:
            self._trip()
            # an array only measured (the trip count's len(A), a test of p against len(A), a walk from the end):
            # what the proof used is that it has one row per position, which the merge then checks per request
            measured = {e.array for e in ir.walk([program.trip]) if isinstance(e, ir.Length) and e.array}
            for name in measured | self.position_arrays | self.backward_arrays:
                self.rows.setdefault(name, {self.position_rows})
        for name in self.pad_arrays:  # only measured: its length is the node count, which the merge checks
            self.rows.setdefault(name, {NODES})
        for name in self.nonempty_arrays:
            rows = self.rows.get(name, set())
            if len(rows) != 1 or next(iter(rows)).startswith(OFFSETS):
                raise NotMergeable(f"a case tests whether '{name}' is empty, and it has no one kind of rows")
        for names, rows, what in ((self.position_arrays, POSITIONS, "a position is compared with len({})"),
                                  (self.node_arrays, NODES, "a node id is compared with len({})"),
                                  (self.pad_arrays, NODES, "a table is read at row len({})")):
            for name in names:
                if self.rows.get(name) != {rows}:
                    raise NotMergeable(f"{what.format(name)}, and '{name}' does not have one row per "
                                       f"{'position' if rows == POSITIONS else 'node'}")
        roles = {}
        for decl in program.inputs:
            rows = self.rows.get(decl.name, set())
            if decl.kind in ("init", "shape") or (not self.visit and (decl.per_node or decl.name == program.rows_from)):
                rows = rows | {NODES}
            if len(rows) > 1:
                raise NotMergeable(f"'{decl.name}' is read both at positions and at node ids")
            if decl.rank == 0 and decl.name not in self.counts:
                raise NotMergeable(f"the scalar input '{decl.name}': requests may differ in it")
            if decl.name in self.counts:
                roles[decl.name] = ArrayRole(COUNT)
                continue
            if decl.name == window_input(program):  # the merge writes it: each node's request's rows
                roles[decl.name] = ArrayRole(WINDOWS, True)
                continue
            roles[decl.name] = ArrayRole(next(iter(rows)) if rows else "unused", decl.name in self.node_ids,
                                         1 if decl.name in self.columns else 0)
        outputs = {t.output: NODES if t.kind == "state" else self.position_rows for t in program.tables if t.output}
        clamped = tuple(dict.fromkeys(format_index(i) for i, _, _ in node_uses(program)
                                      if not self.is_position(i) and self._use_kind(i) == CLAMPED))
        if self.backward_arrays:
            self._check_backward(roles)
        return KernelMerge(roles, outputs, self.position_rows, program, clamped, bool(self.backward_arrays),
                           tuple(sorted(self.padded_tables)), tuple(sorted(self.nonempty_arrays)))

    def _check_backward(self, roles):
        """A visit walked from its end (order[len(order) - 1 - p]) merges with the position arrays laid out in the
        reverse order of the requests (merge.py): the forest's walk then takes the first request's positions first,
        each request's from its own end, as in its own run. Every position read must be from the end. A table
        written per step keeps the walk's order: the first request's steps first, each in its own run's order, so
        it splits by the requests' steps (graph.KernelSite.iterations)."""
        for name in self.backward_arrays:
            if roles.get(name) is None or roles[name].rows != POSITIONS:
                raise NotMergeable(f"a position is read from the end of '{name}', which does not have one row per "
                                   "position")
        forward = [where for index, _, where in node_uses(self.program) if self._use_kind(index) == POSITION]
        if forward:
            raise NotMergeable(f"the visit is walked from its end, and {forward[0]} is at the position p itself: "
                               "merged, the two would belong to different requests")

    def _refuse_state_across_positions(self):
        program = self.program
        if program.host_vars:
            names = ", ".join(v.name for v in program.host_vars)
            raise NotMergeable(f"the recursion carries host integer state ({names}: a stack, a counter) from one "
                               "position to the next: merged, a request would start from the previous request's "
                               "final state")
        if ir.is_sequential(program):
            raise NotMergeable("a value is carried from one position to the next (a chain's vector): merged, a "
                               "request's first position would read the previous request's last one")
        read = set(ir.referenced_arrays(program.cases, [program.trip] if program.trip is not None else []))
        for decl in program.inputs:
            # a carried value's initial value that only a final reads (the nodes after the kernel, per request)
            if decl.rows is not None and decl.name in read:
                raise NotMergeable(f"input '{decl.name}' has a fixed number of rows ({decl.rows}): a forest of "
                                   "several requests cannot have it")

    def _set(self, e: ir.SetReduce):
        """A child set: its arrays hold node ids (shifted); the node it selects for must be a node id."""
        if e.encoding == "range":
            csr = csr_slice(e)
            if csr is None:
                raise NotMergeable(f"a CSR child list ({e.arrays[0]} sliced at {format_index(e.bounds[0])} : "
                                   f"{format_index(e.bounds[1])}): only slices offsets[v] : offsets[v + 1] of one "
                                   "offsets array at a node v merge")
            offsets, node, _ = csr
            if self.kind(node) not in (NODE, CLAMPED):
                raise NotMergeable(f"a CSR child list is read at offsets[{format_index(node)}], which is not a node id")
            if offsets in self.node_ids or offsets == e.arrays[0]:
                raise NotMergeable(f"the CSR offsets '{offsets}' are also read as node ids")
            self.rows.setdefault(offsets, set()).add(OFFSETS + e.arrays[0])
            self.rows.setdefault(e.arrays[0], set()).add(EDGES + e.arrays[0])
            self.node_ids.add(e.arrays[0])
            return
        if e.encoding not in ("parent", "edges", "edge_index"):
            raise NotMergeable(f"a child set of encoding '{e.encoding}' the merge analysis does not know")
        if self.kind(e.bounds[0]) not in (NODE, CLAMPED):
            raise NotMergeable(f"a child set selects the members of {format_index(e.bounds[0])}, which is not a node "
                               "id")
        if e.encoding == "edge_index":
            # rows bounds[1] (targets) and bounds[2] (sources) of one array, its edges along the second axis
            # (SetReduce.verify: constant rows); every row is shifted, only those two are read
            self.columns.add(e.arrays[0])
        rows = NODES if e.encoding == "parent" else EDGES + e.arrays[-1]
        for name in e.arrays:
            self.node_ids.add(name)
            self.rows.setdefault(name, set()).add(rows)

    def _row(self, e: ir.RExpr):
        if not isinstance(e, _ROW_LOCAL + _ROW_CHECKED):
            raise NotMergeable(f"a row expression of kind {type(e).__name__} the merge analysis does not know")
        if isinstance(e, ir.SetReduce):
            self._set(e)
        elif isinstance(e, ir.ChildState):
            if self._pad_row(e.index):
                self.padded_tables.add(e.table)  # the row past the nodes: the same constant row in both runs
            elif self.kind(e.index) not in (NODE, CLAMPED):
                raise NotMergeable(f"table {e.table} is read at row {format_index(e.index)}, which is not a node id")
        elif isinstance(e, (ir.InputRow, ir.InputProjection)):
            k = self.kind(e.index)
            if k == DATA:
                raise NotMergeable(f"node input '{e.array}' is read at row {format_index(e.index)}, which is not a "
                                   "node or a position")
            self.rows.setdefault(e.array, set()).add(POSITIONS if k in (POSITION, BACKWARD) else NODES)
        elif isinstance(e, ir.ConstRow):
            if self.kind(e.index) != DATA:
                raise NotMergeable(f"constant {e.const} is read at row {format_index(e.index)}: a node id or position "
                                   "used as data")
        elif isinstance(e, ir.IndexValue):
            if self.kind(e.index) != DATA:
                raise NotMergeable(f"{format_index(e.index)} (a node id or position) is used as a value")
        elif isinstance(e, ir.Select):
            self.check_pred(e.pred)

    def _trip(self):
        trip = self.program.trip
        for e in ir.walk([trip]):
            if isinstance(e, ir.Load) and e.index == ir.IConst(0) and self.program.input(e.array).rank in (0, 1) \
                    and e.array not in self.rows and e.array not in self.node_ids:
                self.counts.add(e.array)  # a number the graph computes (a Loop's M): graph.py proves it a count
            elif isinstance(e, (ir.Load, ir.Iter, ir.Guard)):
                raise NotMergeable(f"the trip count {format_index(trip)} reads the structure: only lengths can be "
                                   "summed over requests")
        for length in {e for e in ir.walk([trip]) if isinstance(e, ir.Length)}:
            rows = self.rows.get(length.array, set()) if length.array else {NODES}
            if rows - {self.position_rows}:
                raise NotMergeable(f"the trip count {format_index(trip)} depends on len({length.array or 'N'}), which "
                                   "is not the number of positions")
        for count in (0, 1, 2, 3, 7, 37, 100, 4096):  # the number of positions of a request is its trip count
            numbers = {name: count for name in self.counts}  # each read number, checked per batch (merge.py)
            if trip_count(trip, lambda _: count, numbers) != count:
                raise NotMergeable(f"the trip count {format_index(trip)} is not the length of the visit order "
                                   f"(it is {trip_count(trip, lambda _: count, numbers)} for {count} positions)")


_SWAPPED = {"lt": "gt", "le": "ge", "gt": "lt", "ge": "le", "eq": "eq", "ne": "ne"}


def analyze(program: ir.Program) -> KernelMerge:
    """The merge roles of `program`, or NotMergeable with the reason. A Loop's `p` is tried as a position first, then
    as a node (a loop over range(N)); the reason given is the first attempt's."""
    try:
        return _Analysis(program, POSITION).run()
    except NotMergeable as first:
        if program.mode != "visit":
            raise
        try:
            return _Analysis(program, NODE).run()
        except NotMergeable:
            raise first from None


def trip_count(trip: ir.IExpr, length, numbers=None) -> int:
    """The trip count for the given lengths (`length(array name or None)`) and the numbers it reads (`numbers`:
    input name -> int, the COUNT inputs); None where it is undefined."""
    from .indexeval import scalar_value
    arrays = {name: np.asarray(value, dtype=np.int64) for name, value in (numbers or {}).items()}
    return scalar_value(trip, length, arrays)

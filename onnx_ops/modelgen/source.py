"""Writes the Python source of an ordinary PyTorch ``nn.Module`` for a :class:`~.spec.Spec`.

The module loops over a visit order and overwrites rows of state tables, the way people write recursive models in
PyTorch: a ``for``/``while`` loop for TorchScript (``torch.jit.script``), ``torch.while_loop`` or ``scan`` (+
``torch.cond``) for the dynamo exporter. This module writes the loop, the reads of ids and children's rows, the leaf
test, the writes and the head; the cell math is in :mod:`.cells`.

The encodings of issue 19 change the reads and the tables, never the cell: a child set read from a parent array,
CSR lists or an edge list (selected by a mask, a mask matmul or the selected rows themselves), tables batched
``[B, N, H]`` (all B trees advanced at each position), 1-D tables ``[N]``, an LSTM's h and c in one ``[N, 2, H]``
table, float64, and a chain whose state is carried (a vector, a list of vectors, a running max or sum).

:func:`write_source` returns a :class:`Source`: the text (class ``Model``, no argument constructor), the names and
kinds of its inputs and outputs, and their dynamic axes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .cells import ACTS, CLASSES, SLOTS, VOCAB, CellWriter, _W
from .spec import SET_ENCODINGS, Spec

__all__ = ["CLASSES", "SLOTS", "Source", "VOCAB", "write_source"]


@dataclass
class Source:
    text: str
    inputs: list  # [(name, kind)]: kind in words, features, index, index2, bool, order, roots, offsets, indices, edges
    outputs: list  # [(name, kind)]: kind in node (the node axis), root (one row per tree), whole, step (per visit)
    dims: dict = field(default_factory=dict)  # input or output name -> {axis: dynamic dim name (N, L, R, B, E, N1)}


class _Gen(CellWriter):
    def __init__(self, spec: Spec):
        self.s = spec
        self.table = spec.table if spec.table != "-" else "flat"
        self.batched = self.table == "batched"
        self.vector = self.table == "vector"
        self.rank3 = self.table == "rank3"
        self.f64 = spec.precision == "float64"
        self.enc = spec.encoding if spec.encoding in SET_ENCODINGS else "padded"
        self.select = spec.select
        chain = spec.structure == "chain"
        # a chain's state carried from step to step instead of tabled; a tree's or grid's value carried beside
        # its table (the last state, a running max or sum of its states)
        self.carry = spec.carry if spec.carry not in ("-", "table") and chain else None
        self.pool = spec.carry if spec.carry not in ("-", "table") and not chain else None
        self.H = 1 if self.vector else spec.hidden
        self.init = _W()  # __init__ body
        self.init.depth = 2
        self.helpers = _W()  # extra methods
        self.helpers.depth = 1
        self.mode = spec.read  # scalar | int | slice: how v is read from order
        # how child ids are read: a batched step reads one id per tree (a tensor [B] or [B, 1]), never a Python int
        self.idmode = ("slice" if spec.read == "slice" else "scalar") if self.batched else spec.read
        self.struct = spec.structure
        self.family = spec.family
        self.uniform = spec.structure in ("grid", "chain") or spec.leaf_test == "none"
        # the internal cell also runs at leaves (their child sets are empty): aggregations over an empty set are
        # guarded there (a softmax or a max over nothing is NaN / -inf, which a mask blend would keep)
        self.node_at_leaves = self.uniform or spec.leaf_test in ("where", "mask")
        self.bias = spec.bias if spec.bias != "-" else True
        self.gates_layout = spec.gates if spec.gates != "-" else "fused_chunk"
        self.mix = spec.mix if spec.mix != "-" else "sum"
        self.agg = spec.agg if spec.agg != "-" else "sum"
        self.tmp = 0
        self.D = self.H if spec.family == "mvrnn" else spec.embed
        self.states = {"treelstm": ["h", "c"], "childsum": ["h", "c"], "chainlstm": ["h", "c"],
                       "mvrnn": ["a", "A"]}.get(spec.family, ["h"])
        self.tables = ["hc"] if self.rank3 else list(self.states)  # what the loop carries and writes
        self.zero_row = spec.missing == "zero_row"
        self.inputs: list = []
        self.slots = None  # child slot names (named children)
        self.stacked = spec.gather in ("stacked", "index_select") or spec.structure == "nary" or \
            self.enc in SET_ENCODINGS
        # how a child set's rows are aggregated: weighted by a mask, a mask matmul, or the exact rows
        self.set_form = None if self.enc == "padded" else \
            {"mask": "mask", "matmul": "matmul"}.get(self.select, "exact")
        self.attn_mask = None  # name of the child mask softmax attention uses (None: every slot is a child)
        if self.carry:
            self.slots = SLOTS["chain"][0]  # the previous step: the carried state itself (see kid)

    # ---------------------------------------------------------------------------------------------- small helpers
    def kid(self, S, c):
        return S if self.carry else f"{S}_{c}"  # a carried state is the previous step's row itself

    def zeros(self, shape):
        return f"torch.zeros({shape}, dtype=torch.float64)" if self.f64 else f"torch.zeros({shape})"

    def at(self, arr):
        """``arr`` at the current position: ``arr[v]``, or ``arr[:, v]`` for all trees of a batch."""
        return f"{arr}[:, v]" if self.batched else f"{arr}[v]"

    def bix(self, extra: int):
        """The tree index of a batched read whose ids have ``extra`` dims after the batch."""
        return "bidx" if extra == 0 else f"bidx.view(-1{', 1' * extra})"

    def row(self, T, c, extra=None):
        """The rows of table T at ids ``c`` (a batched read takes every tree's own row; a 1-D table's rows are
        widened to [1])."""
        if self.batched:
            if extra is None:
                extra = 1 if self.idmode == "slice" else 0
            e = f"{T}[{self.bix(extra)}, {c}]"
        else:
            e = f"{T}[{c}]"
        return e + (".unsqueeze(-1)" if self.vector else "")

    def mask_to_row(self, e, T):
        """A per-id mask ``e`` broadcast over the rows of T (one more trailing dim per row dim beyond the first:
        rank-3 rows)."""
        extra = len(self.row_dims(T)) - 1
        return e + ".unsqueeze(-1)" + ".unsqueeze(-1)" * extra

    def mm(self, a, e):
        """Mask (or weights) ``a`` over a set's rows times the rows ``e``: a matmul (batched over the leading
        dims of a batch or of one-element slices)."""
        e = e if e.isidentifier() else f"({e})"
        if self.batched or self.idmode == "slice":
            return f"({a}.unsqueeze(-2) @ {e}).squeeze(-2)"
        return f"{a} @ {e}"

    def lead(self):
        """Where a child set's rows get the one-element dim of slice mode (rows [.., 1, M, H], as padded children
        read with one-element slices)."""
        if self.idmode != "slice":
            return ""
        return ".unsqueeze(1)" if self.batched else ".unsqueeze(0)"

    def split(self, w: _W, suffix):
        """An [.., 2, H] row of the rank-3 table as the LSTM's h and c rows."""
        if self.rank3:
            w(f"h_{suffix} = hc_{suffix}[..., 0, :]", f"c_{suffix} = hc_{suffix}[..., 1, :]")

    # ---------------------------------------------------------------------------------------------- ids and reads
    def idx(self, arr, *sub):
        """Read structure array ``arr`` at v (and further subscripts): an int in int mode, else a tensor."""
        pos = [":", "v"] if self.batched else ["v"]
        e = f"{arr}[{', '.join([*pos, *map(str, sub)])}]"
        return f"int({e})" if self.idmode == "int" else e

    def child_ids(self, w: _W):
        """Child id variables: named slots (l, r / u, lf / p) and/or ``kids`` (stacked, n-ary)."""
        if self.carry:
            return
        if self.enc in SET_ENCODINGS:
            self.set_ids(w)
            return
        st, lay = self.struct, self.s.layout
        if st == "nary":
            w(f"kids = {self.at('children')}")
            return
        slots, lr_names, ch_name = SLOTS[st]
        self.slots = slots
        if st == "chain" or lay == "lr":
            for c, a in zip(slots, lr_names):
                w(f"{c} = {self.idx(a)}")
            if self.stacked:
                w(f"kids = torch.tensor([{', '.join(slots)}])" if self.idmode == "int" else
                  f"kids = torch.stack([{', '.join(slots)}], -1)")
        else:
            if self.stacked:
                w(f"kids = {self.at(ch_name)}")
            else:
                for k, c in enumerate(slots):
                    w(f"{c} = {self.idx(ch_name, k)}")

    def set_ids(self, w: _W):
        """The child set of v from a parent array, CSR lists or an edge list: ``sel`` (a mask over nodes or edges)
        or ``kids`` (the children's ids)."""
        enc, sel, lead = self.enc, self.select, self.lead()
        if enc == "parent":
            if sel in ("mask", "matmul"):
                w(f"sel = (parent == v){lead}" if lead else "sel = parent == v")
            elif self.s.gather == "index_select":
                w("kids = (parent == v).nonzero().squeeze(-1)")
            # gather stacked: the rows are read by the mask itself (h[parent == v])
        elif enc == "edges":
            if sel in ("mask", "matmul"):
                w(f"sel = (edge_index[1] == v){lead}" if lead else "sel = edge_index[1] == v")
            else:
                w("kids = edge_index[0][edge_index[1] == v]")
        elif self.idmode == "slice":  # TorchScript slices with 0-d tensors or ints, not one-element tensors
            w("kids = indices[int(offsets[v]):int(offsets[v + 1])]")
        else:  # csr
            w("kids = indices[offsets[v]:offsets[v + 1]]")

    def set_count(self):
        """Number of children of v, from the structure (the leaf test of a child set)."""
        kd = ", keepdim=True" if self.idmode == "slice" else ""
        if self.enc == "parent":
            return f"(parent == v).sum(-1{kd})"
        if self.enc == "edges":
            return f"(edge_index[1] == v).sum(-1{kd})"
        return "(offsets[v + 1] - offsets[v])"

    def leaf_pred(self):
        """The leaf condition: a tensor (0-d or [1]) in tensor modes, a Python bool in int mode."""
        t, st = self.s.leaf_test, self.struct
        if t == "is_leaf":
            return f"bool({self.at('is_leaf')})" if self.idmode == "int" else self.at("is_leaf")
        if t == "num_children":
            return f"{self.idx('num_children')} == 0"
        if self.enc in SET_ENCODINGS:  # where / mask: the set is empty
            e = f"{self.set_count()} == 0"
            return f"bool({e})" if self.idmode == "int" else e
        op = "== -1" if t == "eq_m1" else "< 0"
        if st == "nary":
            e = f"(kids {op}).all(-1)"
            return f"bool({e})" if self.idmode == "int" else e
        first = "l" if not self.stacked or self.s.layout == "lr" else None
        if first is None:
            e = f"kids[..., 0] {op}"
            return f"bool({e})" if self.idmode == "int" else e
        return f"{first} {op}"

    def remap_zero_row(self, w: _W, names):
        for c in names:
            if self.idmode == "int" and c != "kids":
                w(f"{c} = {c} if {c} >= 0 else n")
            else:
                w(f"{c} = torch.where({c} < 0, torch.full_like({c}, n), {c})")

    def missing_applies(self):
        return self.s.missing != "-"

    def read_one(self, S, c):
        """Row of table S at child id c, a missing child (-1) reading as zeros where that applies."""
        m = self.s.missing if self.missing_applies() else "none"
        if m in ("none", "zero_row"):
            return self.row(S, c)
        if m == "if_zeros":
            return f"self.child({S}, {c})"
        if self.idmode == "int":
            if m == "mask":
                return f"{self.row(S, c)} * float({c} >= 0)"
            return f"{self.row(S, f'max({c}, 0)')} * float({c} >= 0)"  # clamp_mask
        if m == "mask":
            return f"{self.row(S, c)} * {self.mask_to_row(f'({c} >= 0).{self.fl()}()', S)}"
        if m == "where":
            r = self.row(S, c)
            return f"torch.where({self.mask_to_row(f'({c} >= 0)', S)}, {r}, torch.zeros_like({r}))"
        return f"{self.row(S, f'{c}.clamp(min=0)')} * {self.mask_to_row(f'({c} >= 0)', S)}"  # clamp_mask

    def gather(self, w: _W, S):
        """``S_k``: the children's rows of S stacked on dim -2 (-3 for matrices)."""
        m = self.s.missing if self.missing_applies() else "none"
        if m == "node_if_zeros":
            m = "none"  # read only when the node has its children
        ids = "kids"
        if self.s.gather == "index_select" or m == "clamp_mask":
            if m != "zero_row":
                ids = "kids.clamp(min=0)"
        extra = 2 if self.idmode == "slice" else 1
        if self.s.gather == "index_select":
            if self.batched:  # index_select has no batch: torch.gather along the node axis
                dims = self.row_dims(S) if not self.vector else []
                ex = f".view(B, -1{', 1' * len(dims)}).expand(-1, -1{''.join(', ' + d for d in dims)})"
                base = f"torch.gather({S}, 1, {ids}{ex})" + (".unsqueeze(1)" if self.idmode == "slice" else "")
                base += ".unsqueeze(-1)" if self.vector else ""
            else:
                base = (f"{S}.index_select(0, {ids}.view(-1)).unsqueeze(0)" if self.idmode == "slice" else
                        f"{S}.index_select(0, {ids})") + (".unsqueeze(-1)" if self.vector else "")
        else:
            base = self.row(S, ids, extra)
        if m in ("none", "zero_row"):
            w(f"{S}_k = {base}")
        elif m in ("mask",):
            w(f"{S}_k = {base} * {self.mask_to_row(f'(kids >= 0).{self.fl()}()', S)}")
        elif m == "clamp_mask":
            w(f"{S}_k = {base} * {self.mask_to_row('(kids >= 0)', S)}")
        else:  # where
            w(f"{S}_k = {base}",
              f"{S}_k = torch.where({self.mask_to_row('(kids >= 0)', S)}, {S}_k, torch.zeros_like({S}_k))")

    def child_mask(self, w: _W):
        """Softmax attention over padded children: which slots hold a child (written before a zero-row remap).
        None where every slot is a child (a binary node behind a leaf test)."""
        if self.agg != "attn" or self.enc in SET_ENCODINGS or self.s.missing == "node_if_zeros":
            return
        if self.struct == "nary":
            w(f"km = {self.at('children')} >= 0" if self.s.gather == "one" else "km = kids >= 0")
        elif not self.uniform:
            return
        elif self.stacked:
            w("km = kids >= 0")
        elif self.idmode == "int":
            w(f"km = torch.tensor([{', '.join(f'{c} >= 0' for c in self.slots)}])")
        else:
            w(f"km = torch.stack([{', '.join(f'{c} >= 0' for c in self.slots)}], -1)")
        self.attn_mask = "km"

    def attention(self, w: _W):
        """Softmax attention weights ``alpha`` over the children (scores = child rows @ a learned query)."""
        H = self.H
        self.init(f"self.att_q = nn.Parameter(0.5 * torch.randn({H}))")
        if self.named_children():  # stack the named rows: attention weighs them as one set
            w(f"h_k = torch.stack([{', '.join(self.kid_rows('h'))}], -2)")
        w("scores = h_k @ self.att_q")
        if self.attn_mask:
            w(f"scores = scores.masked_fill(~{self.attn_mask}, float(\"-inf\"))")
        w("alpha = torch.softmax(scores, dim=-1)")
        if self.attn_mask and self.node_at_leaves:  # a leaf's set is empty: softmax gives NaN; no weight instead
            w(f"alpha = torch.where({self.attn_mask}, alpha, torch.zeros_like(alpha))")

    def read_set(self, w: _W):
        """The rows of a child set (parent array, CSR, edge list) and what its aggregation needs."""
        lead = self.lead()
        for T in self.tables:
            vec = ".unsqueeze(-1)" if self.vector else ""
            if self.set_form in ("mask", "matmul"):
                base = f"{T}[edge_index[0]]" if self.enc == "edges" else T
            elif self.enc == "parent" and self.s.gather != "index_select":
                base = f"{T}[parent == v]"
            elif self.s.gather == "index_select":
                base = f"{T}.index_select(0, kids)"
            else:
                base = f"{T}[kids]"
            w(f"{T}_k = {base}{lead}{vec}")
        self.split(w, "k")
        f = self.fl()
        if self.set_form == "mask":
            w(f"selw = sel.unsqueeze(-1).{f}()")
            if self.agg == "mean":
                w("cnt = selw.sum(-2).clamp(min=1)")
            if self.agg == "max":
                w('h_max = h_k.masked_fill(~sel.unsqueeze(-1), float("-inf")).amax(-2)')
                if self.node_at_leaves:  # a leaf's set is empty: its max is -inf; zeros instead
                    w("h_max = torch.where(sel.any(-1, keepdim=True), h_max, torch.zeros_like(h_max))")
            self.attn_mask = "sel"
        elif self.set_form == "matmul":
            w(f"a = sel.{f}()")
            if self.agg == "mean":
                w("cnt = a.sum(-1, keepdim=True).clamp(min=1)")
            self.attn_mask = "sel"
        elif self.agg == "mean" and self.node_at_leaves:  # exact rows; a leaf's set is empty
            w(f"cnt = {self.set_count()}.clamp(min=1).{f}()")

    def read_children(self, w: _W):
        """Child ids (after the leaf test) and the children's rows of every state table."""
        if self.carry:
            return
        self.child_mask(w)
        if self.enc in SET_ENCODINGS:
            self.read_set(w)
        else:
            self.read_padded(w)
        if self.agg == "attn":
            self.attention(w)

    def read_padded(self, w: _W):
        one_by_one_nary = self.struct == "nary" and self.s.gather == "one"
        if self.zero_row and not one_by_one_nary:
            self.remap_zero_row(w, ["kids"] if self.stacked else self.slots)
        if one_by_one_nary:
            for T in self.tables:
                w(f"{T}_rows: List[Tensor] = []")
            w("for j in range(self.arity):")
            with w.indent():
                w(f"cj = {self.idx('children', 'j')}")
                if self.zero_row:
                    self.remap_zero_row(w, ["cj"])
                for T in self.tables:
                    w(f"{T}_rows.append({self.read_one(T, 'cj')})")
            for T in self.tables:
                w(f"{T}_k = torch.stack({T}_rows, dim=-2)" if T != "hc" else
                  f"{T}_k = torch.stack({T}_rows, dim=-3)")
            self.split(w, "k")
        elif self.s.missing == "node_if_zeros":
            self.node_if_zeros(w)
        elif self.stacked:
            for T in self.tables:
                self.gather(w, T)
            self.split(w, "k")
        else:
            for T in self.tables:
                for c in self.slots:
                    w(f"{T}_{c} = {self.read_one(T, c)}")
            for c in self.slots:
                self.split(w, c)
        if self.struct == "nary" and self.agg == "mean":
            w(f"cnt = ({self.at('children')} >= 0).sum(-1, keepdim=True).clamp(min=1)")

    def node_if_zeros(self, w: _W):
        """One `if` for the whole node: no children -> every child row is torch.zeros, else the rows are read (binary
        trees and chains: a node has all its children or none)."""
        names = [f"{T}_k" for T in self.tables] if self.stacked else \
            [f"{T}_{c}" for T in self.tables for c in self.slots]
        k = len(self.slots)

        def zeros(name):
            T = name.split("_")[0]
            if not self.stacked:
                return self.zeros(self.row_shape(T))
            core = ", ".join(self.row_dims(T))
            return self.zeros(f"1, {k}, {core}") if self.mode == "slice" else self.zeros(f"{k}, {core}")

        def reads(w2: _W):
            for T in self.tables:
                if self.stacked:
                    self.gather(w2, T)
                else:
                    for c in self.slots:
                        w2(f"{T}_{c} = {self.row(T, c)}")

        first = self.slots[0] if (not self.stacked or self.s.layout == "lr" or self.struct == "chain") else "kids[..., 0]"
        if self.s.dynamo:
            ops = ", ".join(self.tables + ["v"])
            w(f"def no_children({ops}):")
            with w.indent():
                w(f"return {', '.join(zeros(nm) for nm in names)}")
            w(f"def read_children({ops}):")
            with w.indent():
                self.child_ids(w)
                reads(w)
                w(f"return {', '.join(names)}")
            w(f"{', '.join(names)} = torch.cond(({first} < 0).squeeze(0), no_children, read_children, ({ops}))")
        else:
            w(f"if {first} < 0:" if self.idmode == "int" else f"if bool({first} < 0):")
            with w.indent():
                for nm in names:
                    w(f"{nm} = {zeros(nm)}")
            w("else:")
            with w.indent():
                reads(w)
        for suffix in (["k"] if self.stacked else self.slots):
            self.split(w, suffix)

    def x_expr(self):
        li = self.s.leaf_input
        if li == "embedding":
            return f"self.embedding({self.at('words')})"
        if li == "features":
            return self.at("features")
        if self.batched:  # the same input for every tree of the batch
            return "self.leaf_x.expand(B, -1, -1)" if self.mode == "slice" else "self.leaf_x.expand(B, -1)"
        return "self.leaf_x"

    # ---------------------------------------------------------------------------------------------- body
    def rows(self, w: _W, cell, suffix: str) -> dict:
        out: dict = {}
        cell(w, out)
        names = {}
        for S in self.states:
            name = f"{S}_{suffix}"
            if out[S] != name:
                w(f"{name} = {out[S]}")
            names[S] = name
        return names

    def mask_for(self, m, S):
        """The leaf mask ``m`` ([.., 1]) for rows of state S: batched matrices need one more dim."""
        return f"{m}.unsqueeze(-1)" if self.batched and len(self.row_dims(S)) > 1 else m

    def body(self, w: _W):
        """Lines of one visit of node v (v defined): new rows ``<S>_new`` of every state."""
        fam = self.family
        cond_form = self.s.dynamo and not self.uniform and self.s.leaf_test not in ("where", "mask")
        if not cond_form and (fam != "mvrnn" or self.s.leaf_input != "features"):
            w(f"x = {self.x_expr()}")
        self.child_ids(w)
        if self.uniform:
            self.read_children(w)
            self.rows(w, self.node_cell, "new")
            return
        t = self.s.leaf_test
        pred = self.leaf_pred()
        if t in ("where", "mask"):
            leaf = self.rows(w, self.leaf_cell, "leaf")
            self.read_children(w)
            node = self.rows(w, self.node_cell, "node")
            if t == "where":
                w(f"m = ({pred}).unsqueeze(-1)")
                for S in self.states:
                    w(f"{S}_new = torch.where({self.mask_for('m', S)}, {leaf[S]}, {node[S]})")
            else:
                w(f"m = float({pred})" if self.idmode == "int" else f"m = ({pred}).{self.fl()}().unsqueeze(-1)")
                for S in self.states:
                    m = self.mask_for("m", S)
                    w(f"{S}_new = {m} * {leaf[S]} + (1 - {m}) * {node[S]}")
            return
        if self.s.dynamo:  # torch.cond(pred, leaf_fn, node_fn, operands)
            ops = ", ".join(self.tables + ["v"])
            # a branch may not return (an alias of) an input or parameter: clone those
            ret = lambda d: ", ".join(  # noqa: E731
                f"{d[S]}.clone()" if d[S] in ("x", "self.leaf_matrix", "self.leaf_x") else d[S] for S in self.states)
            w(f"def leaf_fn({ops}):")
            with w.indent():
                w(f"x = {self.x_expr()}")
                out: dict = {}
                self.leaf_cell(w, out)
                w(f"return {ret(out)}")
            w(f"def node_fn({ops}):")
            with w.indent():
                self.child_ids(w)
                self.read_children(w)
                node = self.rows(w, self.node_cell, "node")
                w(f"return {ret(node)}")
            outs = ", ".join(f"{S}_new" for S in self.states)
            w(f"{outs} = torch.cond(({pred}).squeeze(0), leaf_fn, node_fn, ({ops},))"
              if len(self.tables) == 1 else f"{outs} = torch.cond(({pred}).squeeze(0), leaf_fn, node_fn, ({ops}))")
            return
        w(f"if {pred}:" if self.idmode == "int" else f"if bool({pred}):")
        with w.indent():
            self.rows(w, self.leaf_cell, "new")
        w("else:")
        with w.indent():
            self.read_children(w)
            self.rows(w, self.node_cell, "new")

    def writes(self, w: _W):
        st, mode, dyn = self.s.write, self.mode, self.s.dynamo
        if self.rank3:
            w("hc_new = torch.stack([h_new, c_new], -2)")
        for T in self.tables:
            # a 1-D table's row: the cell's [.., 1] row at its one column (a squeeze exports as an untyped If)
            new = f"{T}_new[..., 0]" if self.vector else f"{T}_new"
            v1 = {"slice": "v", "scalar": "v.view(1)", "int": "torch.tensor([v])"}[mode]
            if self.s.dtype == "int32" and mode != "int" and st in ("index_copy_", "scatter"):
                v1 += ".long()"  # index_copy_ and scatter take int64 indices only
            if dyn and st in ("assign", "assign_slice", "index_copy_", "index_put_"):
                w(f"{T} = {T}.clone()")
            if self.batched:
                self.write_batched(w, T, new, v1)
                continue
            new1 = new if mode == "slice" else f"{new}.unsqueeze(0)"
            if self.vector:  # its row is [1] already: the one-row update of index_copy_ / scatter / index_put
                new1 = f"{T}_new[..., 0]" if mode == "slice" else f"{T}_new"
            if st == "assign":
                w(f"{T}[v] = {new}")
            elif st == "assign_slice":
                w(f"{T}[v, {', '.join([':'] * (self.table_rank(T) - 1))}] = {new}")
            elif st == "index_copy_":
                w(f"{T}.index_copy_(0, {v1}, {new1})")
            elif st == "index_put":
                w(f"{T} = {T}.index_put(({v1},), {new1})")
            elif st == "index_put_":
                w(f"{T}.index_put_(({v1},), {new1})")
            elif st == "cat":
                vi = "v" if mode == "int" else "int(v)"
                w(f"{T} = torch.cat([{T}[:{vi}], {new1}, {T}[{vi} + 1:]])")
            else:  # scatter
                dims = [] if self.vector else self.row_dims(T)
                shape = ", ".join(["-1"] + ["1"] * len(dims))
                exp = ", ".join(["-1"] + dims)
                index = f"{v1}.view({shape})" + (f".expand({exp})" if dims else "")
                w(f"{T} = {T}.scatter(0, {index}, {new1})")

    def table_rank(self, T):
        return 1 if self.vector else self.rank(T)

    def write_batched(self, w: _W, T, new, v1):
        """Write the rows ``new`` ([B, ...]) of all trees at position v of the batched table T ([B, N, ...])."""
        st, mode = self.s.write, self.mode
        new1 = new if mode == "slice" else f"{new}.unsqueeze(1)"
        colons = ", ".join([":"] * (self.table_rank(T) - 1))
        if st == "assign":
            w(f"{T}[:, v] = {new}")
        elif st == "assign_slice":
            w(f"{T}[:, v{', ' + colons if colons else ''}] = {new}")
        elif st == "index_copy_":
            w(f"{T}.index_copy_(1, {v1}, {new1})")
        elif st in ("index_put", "index_put_"):
            pos = {"slice": "(bidx.view(-1, 1), v)", "scalar": "(bidx, v.expand(B))",
                   "int": "(bidx, torch.full_like(bidx, v))"}[mode]
            if st == "index_put":
                w(f"{T} = {T}.index_put({pos}, {new})")
            else:
                w(f"{T}.index_put_({pos}, {new})")
        elif st == "cat":
            vi = "v" if mode == "int" else "int(v)"
            w(f"{T} = torch.cat([{T}[:, :{vi}], {new1}, {T}[:, {vi} + 1:]], dim=1)")
        else:  # scatter
            dims = [] if self.vector else self.row_dims(T)
            shape = ", ".join(["1", "1"] + ["1"] * len(dims))
            exp = ", ".join(["B", "1"] + dims)
            w(f"{T} = {T}.scatter(1, {v1}.view({shape}).expand({exp}), {new1})")

    # ---------------------------------------------------------------------------------------------- module
    def signature(self):
        s = self.s
        ins = []
        if s.leaf_input == "embedding":
            ins.append(("words", "words"))
        elif s.leaf_input == "features":
            ins.append(("features", "features"))
        st = self.struct
        if self.carry:
            pass  # a carried state reads no structure: the order is the sequence
        elif self.enc == "parent":
            ins.append(("parent", "index"))
        elif self.enc == "csr":
            ins += [("offsets", "offsets"), ("indices", "indices")]
        elif self.enc == "edges":
            ins.append(("edge_index", "edges"))
        elif st == "nary":
            ins.append(("children", "index2"))
        else:
            slots, lr_names, ch = SLOTS[st]
            if st == "chain" or s.layout == "lr":
                ins += [(a, "index") for a in lr_names]
            else:
                ins.append((ch, "index2"))
        if s.leaf_test == "is_leaf":
            ins.append(("is_leaf", "bool"))
        elif s.leaf_test == "num_children":
            ins.append(("num_children", "index"))
        ins.append(("order", "order"))
        if s.head == "root_linear" and not self.carry:
            ins.append(("roots", "roots"))
        return ins

    def outputs(self):
        h = self.s.head
        if self.carry:
            per_step = self.carry == "list" and h in ("none", "log_softmax")
            if h == "none":
                outs = ["hs"] if self.carry == "list" else (["pool"] if self.carry.startswith("running") else
                                                              self.states)
                return [(o, "step" if per_step else "whole") for o in outs]
            return [("out", "step" if per_step else "whole")]
        pool = [("pool", "whole")] if self.pool else []
        if h == "none":
            return [(T, "node") for T in self.tables] + pool
        return [("out", {"root_linear": "root", "log_softmax": "node", "mean": "whole"}[h])] + pool

    def dims(self, ins, outs) -> dict:
        node = {0: "B", 1: "N"} if self.batched else {0: "N"}
        d = {}
        for name, kind in ins:
            d[name] = {"order": {0: "L"}, "roots": {0: "B" if self.batched else "R"}, "offsets": {0: "N1"},
                       "indices": {0: "E"}, "edges": {1: "E"}}.get(kind, node)
        for name, kind in outs:
            d[name] = {"node": node, "root": {0: "B" if self.batched else "R"}, "step": {0: "L"},
                       "whole": {0: "B"} if self.batched else {}}[kind]
        return d

    def main_rows(self, T, at=None):
        """Rows of the head's input (the first state) of table T: all of them, or at tree roots ``at``."""
        if at is not None:
            idx = f"bidx, {at}" if self.batched else at
            e = f"{T}[{idx}, 0]" if self.rank3 else f"{T}[{idx}]"
        else:
            e = f"{T}[..., 0, :]" if self.rank3 else T
        return f"{e}.unsqueeze(-1)" if self.vector else e

    def forward(self, w: _W):
        s = self.s
        ins = self.signature()
        index_names = [n for n, k in ins if k in ("index", "index2", "order", "roots", "offsets", "indices",
                                                  "edges")] + \
            (["num_children"] if s.leaf_test == "num_children" else [])
        index_names = list(dict.fromkeys(index_names))
        outs = self.outputs()
        if s.dynamo:
            w(f"def forward(self, {', '.join(n for n, _ in ins)}):")
        else:
            ret = "Tensor" if len(outs) == 1 else f"Tuple[{', '.join(['Tensor'] * len(outs))}]"
            w(f"def forward(self, {', '.join(f'{n}: Tensor' for n, _ in ins)}) -> {ret}:")
        w.depth += 1
        if s.dtype == "int32_long":
            for n in index_names:
                w(f"{n} = {n}.long()")
        if self.carry:
            self.forward_carried(w)
            w.depth -= 1
            return
        if self.enc == "csr":
            w("n = offsets.size(0) - 1", "H = self.hidden")
        elif self.enc == "edges":  # PyG: the node count comes from the node inputs
            w(f"n = {'words' if s.leaf_input == 'embedding' else 'features'}.size(0)", "H = self.hidden")
        else:
            struct_arr = next(n for n, k in ins if k in ("index", "index2"))
            if self.batched:
                w(f"B, n = {struct_arr}.size(0), {struct_arr}.size(1)", "H = self.hidden", "bidx = torch.arange(B)")
            else:
                w(f"n = {struct_arr}.size(0)", "H = self.hidden")
        for T in self.tables:
            rows = "n + 1" if self.zero_row and T != "A" else "n"
            lead = f"B, {rows}" if self.batched else rows
            core = [] if self.vector else ["H" if d == "self.hidden" else d for d in self.row_dims(T)]
            w(f"{T} = {self.zeros(', '.join([lead] + core))}")
        tables = ", ".join(self.tables)
        carried = tables + (", pool" if self.pool else "")
        if self.pool:
            self.pool_init(w)
        self.loop(w, carried, lambda w2: (self.body(w2), self.writes(w2), self.pool_step(w2)),
                  self.tables[0] if not self.rank3 else "h")
        if self.zero_row:
            for T in self.tables:
                if T != "A":
                    w(f"{T} = {T}[:, :n]" if self.batched else f"{T} = {T}[:n]")
        main = self.tables[0]
        pool = ", pool" if self.pool else ""
        if s.head == "none":
            w(f"return {tables}{pool}")
        elif s.head == "root_linear":
            w(f"return self.head({self.main_rows(main, 'roots')}){pool}")
        elif s.head == "log_softmax":
            w(f"return F.log_softmax(self.head({self.main_rows(main)}), dim=-1){pool}")
        else:
            w(f"return {main}.mean({1 if self.batched else 0}){pool}" if not self.rank3 else
              f"return {self.main_rows(main)}.mean({1 if self.batched else 0}){pool}")
        w.depth -= 1

    def pool_init(self, w: _W):
        """A tree's value carried beside its table, before the loop: the last state (zeros until the first step),
        a running max (from -inf) or a running sum (from zeros) of the first state's new rows."""
        shape = "1, H" if self.mode == "slice" else "H,"
        if self.pool == "running_max":
            dt = ", dtype=torch.float64" if self.f64 else ""
            w(f"pool = torch.full(({shape}), float(\"-inf\"){dt})")
        else:
            w(f"pool = {self.zeros(shape.rstrip(','))}")

    def pool_step(self, w: _W):
        """In the loop, after the writes: the carried value takes the step's new row of the first state."""
        if not self.pool:
            return
        new = f"{self.states[0]}_new"
        w({"vector": f"pool = {new}.clone()", "running_max": f"pool = torch.maximum(pool, {new})",
           "running_sum": f"pool = pool + {new}"}[self.pool])

    def loop(self, w: _W, carried: str, step, first: str, ys: str | None = None):
        """The loop over ``order`` in the exporter's form: ``step(w)`` writes one visit (v defined) that updates
        the ``carried`` variables; ``first`` is the state whose new row a scan step returns (``ys``: the name that
        receives scan's stacked rows, else they are dropped)."""
        s = self.s
        if s.exporter == "torchscript":
            if s.loop == "counter":
                w("k = 0", "while k < order.size(0):")
            elif s.loop == "reverse":
                w("for k in range(order.size(0) - 1, -1, -1):")
            else:
                w("for k in range(order.size(0)):")
            with w.indent():
                w({"scalar": "v = order[k]", "int": "v = int(order[k])", "slice": "v = order[k:k + 1]"}[self.mode])
                step(w)
                if s.loop == "counter":
                    w("k += 1")
        elif s.exporter == "dynamo_while":
            rev = s.loop == "reverse"
            w(f"def cond_fn(k, {carried}):")
            with w.indent():
                w("return k >= 0" if rev else "return k < order.size(0)")
            w(f"def body_fn(k, {carried}):")
            with w.indent():
                # order[k:k + 1] has an unbacked length under while_loop (eager fails to broadcast it): index
                # with a one-element tensor instead
                w({"scalar": "v = order[k]", "int": "v = int(order[k])",
                   "slice": "v = order[k.unsqueeze(0)]"}[self.mode])
                self.batch_size(w, carried)
                step(w)
                w(f"return k {'-' if rev else '+'} 1, {carried}")
            w("k0 = torch.full((), order.size(0) - 1, dtype=torch.int64)" if rev else
              "k0 = torch.zeros((), dtype=torch.int64)")
            w(f"_, {carried} = torch.while_loop(cond_fn, body_fn, (k0, {carried}))")
        else:  # dynamo_scan
            multi = "," in carried
            w(f"def step({'carry' if multi else carried}, v):")
            with w.indent():
                if multi:
                    w(f"{carried} = carry")
                w({"scalar": "v = v", "int": "v = int(v)", "slice": "v = v.unsqueeze(0)"}[self.mode])
                self.batch_size(w, carried)
                step(w)
                # a carried state is returned as the carry too: the stacked output must not alias it
                y = f"{first}_new.reshape(-1)" + (".clone()" if self.carry else "")
                w(f"return ({carried}), {y}" if multi else f"return {carried}, {y}")
            rev = ", reverse=True" if s.loop == "reverse" else ""
            out = ys or "_"
            w(f"({carried}), {out} = scan(step, ({carried}), order{rev})" if multi else
              f"{carried}, {out} = scan(step, {carried}, order{rev})")

    def batch_size(self, w: _W, carried: str):
        """In a torch.while_loop / scan body of a batched table: the batch size read from the carried table (the
        dynamo exporter fails on some uses of the outer symbolic size B inside the body: 'argument of type
        LazyProxy')."""
        if self.batched:
            w(f"B = {carried.split(',')[0].strip()}.size(0)")

    def forward_carried(self, w: _W):
        """A chain whose state is carried from step to step: one vector, a list of vectors, or a running
        reduction of the visited states (with the vector)."""
        s, carry = self.s, self.carry
        w("H = self.hidden")
        shape = "1, H" if self.mode == "slice" else "H"
        for S in self.states:
            w(f"{S} = {self.zeros(shape)}")
        carried = list(self.states)
        if carry == "running_max":
            dt = ", dtype=torch.float64" if self.f64 else ""
            w(f"pool = torch.full(({shape}{',' if self.mode != 'slice' else ''}), float(\"-inf\"){dt})")
            carried.append("pool")
        elif carry == "running_sum":
            w(f"pool = {self.zeros(shape)}")
            carried.append("pool")
        scan_list = carry == "list" and s.exporter == "dynamo_scan"
        if carry == "list" and not scan_list:
            w("hs: List[Tensor] = []")

        def step(w2: _W):
            w2(f"x = {self.x_expr()}")
            self.rows(w2, self.node_cell, "new")
            if carry == "running_max":
                w2("pool_new = torch.maximum(pool, h_new)")
            elif carry == "running_sum":
                w2("pool_new = pool + h_new")
            w2(f"{', '.join(carried)} = {', '.join(f'{S}_new' for S in carried)}")
            if carry == "list" and not scan_list:
                w2("hs.append(h)")

        self.loop(w, ", ".join(carried), step, "h", ys="hs" if scan_list else None)
        if carry == "list" and not scan_list:
            w("hs = torch.cat(hs)" if self.mode == "slice" else "hs = torch.stack(hs)")
        last = {"list": "hs[-1]", "vector": "h"}.get(carry, "pool")
        every = "hs" if carry == "list" else last
        if s.head == "none":
            w(f"return {', '.join(o for o, _ in self.outputs())}")
        elif s.head == "root_linear":
            w(f"return self.head({last})")
        elif s.head == "log_softmax":
            w(f"return F.log_softmax(self.head({every}), dim=-1)")
        else:
            w(f"return {every}.mean(0)")

    def child_helper(self):
        h = self.helpers
        zeros = self.zeros(self.row_shape(self.tables[0]))
        if self.s.dynamo:
            h("def child(self, t, c):")
            with h.indent():
                h("def missing(t, c):")
                with h.indent():
                    h(f"return {zeros}")
                h("def present(t, c):")
                with h.indent():
                    h(f"return {self.row('t', 'c')}")
                h("return torch.cond((c < 0).squeeze(0), missing, present, (t, c))")
        else:
            ct = "int" if self.idmode == "int" else "Tensor"
            h(f"def child(self, t: Tensor, c: {ct}) -> Tensor:")
            with h.indent():
                h("if c < 0:" if self.idmode == "int" else "if bool(c < 0):")
                with h.indent():
                    h(f"return {zeros}")
                h(f"return {self.row('t', 'c')}")

    def module(self) -> Source:
        s = self.s
        fw = _W()
        fw.depth = 1
        self.forward(fw)
        if s.missing == "if_zeros":
            self.child_helper()
        head = _W()
        head.depth = 2
        head("super().__init__()", f"self.hidden = {self.H}")
        if self.struct == "nary":
            head(f"self.arity = {s.arity}")
        if s.leaf_input == "embedding":
            head(f"self.embedding = nn.Embedding({VOCAB}, {self.D})")
        elif s.leaf_input == "constant":
            shape = f"1, {self.D}" if self.mode == "slice" else f"{self.D}"
            head(f"self.leaf_x = nn.Parameter(0.5 * torch.randn({shape}))")
        if s.family == "mvrnn" and s.leaf_input != "embedding":
            eye = "torch.eye(self.hidden).unsqueeze(0)" if self.mode == "slice" else "torch.eye(self.hidden)"
            head(f"self.leaf_matrix = nn.Parameter({eye} + 0.1 * torch.randn({self.row_shape('A')}))")
        if s.act_form == "module" and s.family != "treefc":
            head(f"self.act = {ACTS[s.act][1]}")
        tail = _W()
        tail.depth = 2
        if s.head != "none":
            tail(f"self.head = nn.Linear({self.H}, {CLASSES})")
        # the spec goes on line 3: Python reads "encoding=..." on line 1 or 2 as the file's source encoding
        lines = ["# generated by onnx_ops.modelgen from the spec:", "#", "# " + s.short(),
                 "from typing import List, Tuple", "", "import torch", "import torch.nn.functional as F",
                 "from torch import Tensor, nn"]
        if s.exporter == "dynamo_scan":
            lines.append("from torch._higher_order_ops.scan import scan")
        lines += ["", "", "class Model(nn.Module):", "    def __init__(self):"]
        lines += head.lines + self.init.lines + tail.lines + [""]
        if self.helpers.lines:
            lines += self.helpers.lines + [""]
        lines += fw.lines
        ins, outs = self.signature(), self.outputs()
        return Source("\n".join(lines) + "\n", ins, outs, self.dims(ins, outs))


def write_source(spec: Spec) -> Source:
    """The module source for ``spec`` (class ``Model``), with its input and output names, kinds and dynamic axes."""
    return _Gen(spec).module()

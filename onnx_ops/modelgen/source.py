"""Writes the Python source of an ordinary PyTorch ``nn.Module`` for a :class:`~.spec.Spec`.

The module loops over a visit order and overwrites rows of state tables, the way people write recursive models in
PyTorch: a ``for``/``while`` loop for TorchScript (``torch.jit.script``), ``torch.while_loop`` or ``scan`` (+
``torch.cond``) for the dynamo exporter. This module writes the loop, the reads of ids and children's rows, the leaf
test, the writes and the head; the cell math is in :mod:`.cells`.

:func:`write_source` returns a :class:`Source`: the text (class ``Model``, no argument constructor) and the names
and kinds of its inputs and outputs.
"""
from __future__ import annotations

from dataclasses import dataclass

from .cells import ACTS, CLASSES, SLOTS, VOCAB, CellWriter, _W
from .spec import Spec

__all__ = ["CLASSES", "SLOTS", "Source", "VOCAB", "write_source"]


@dataclass
class Source:
    text: str
    inputs: list  # [(name, kind)]: kind in words, features, index, bool, order, roots
    outputs: list  # [(name, kind)]: kind in node (axis 0 = N), root (axis 0 = R), whole (no dynamic axis)


class _Gen(CellWriter):
    def __init__(self, spec: Spec):
        self.s = spec
        self.H = spec.hidden
        self.init = _W()  # __init__ body
        self.init.depth = 2
        self.helpers = _W()  # extra methods
        self.helpers.depth = 1
        self.mode = spec.read  # scalar | int | slice
        self.struct = spec.structure
        self.family = spec.family
        self.uniform = spec.structure in ("grid", "chain") or spec.leaf_test == "none"
        self.bias = spec.bias if spec.bias != "-" else True
        self.gates_layout = spec.gates if spec.gates != "-" else "fused_chunk"
        self.mix = spec.mix if spec.mix != "-" else "sum"
        self.agg = spec.agg if spec.agg != "-" else "sum"
        self.tmp = 0
        self.D = spec.hidden if spec.family == "mvrnn" else spec.embed
        self.states = {"treelstm": ["h", "c"], "childsum": ["h", "c"], "chainlstm": ["h", "c"],
                       "mvrnn": ["a", "A"]}.get(spec.family, ["h"])
        self.zero_row = spec.missing == "zero_row"
        self.inputs: list = []
        self.slots = None  # child slot names (named children)
        self.stacked = spec.gather in ("stacked", "index_select") or (spec.structure == "nary")

    # ---------------------------------------------------------------------------------------------- ids and reads
    def idx(self, arr, *sub):
        """Read structure array ``arr`` at v (and further subscripts): an int in int mode, else a tensor."""
        e = f"{arr}[{', '.join(['v', *map(str, sub)])}]"
        return f"int({e})" if self.mode == "int" else e

    def child_ids(self, w: _W):
        """Child id variables: named slots (l, r / u, lf / p) and/or ``kids`` (stacked, n-ary)."""
        st, lay = self.struct, self.s.layout
        if st == "nary":
            w("kids = children[v]")
            return
        slots, lr_names, ch_name = SLOTS[st]
        self.slots = slots
        if st == "chain" or lay == "lr":
            for c, a in zip(slots, lr_names):
                w(f"{c} = {self.idx(a)}")
            if self.stacked:
                w(f"kids = torch.tensor([{', '.join(slots)}])" if self.mode == "int" else
                  f"kids = torch.stack([{', '.join(slots)}], -1)")
        else:
            if self.stacked:
                w(f"kids = {ch_name}[v]")
            else:
                for k, c in enumerate(slots):
                    w(f"{c} = {self.idx(ch_name, k)}")

    def leaf_pred(self):
        """The leaf condition: a tensor (0-d or [1]) in tensor modes, a Python bool in int mode."""
        t, st = self.s.leaf_test, self.struct
        if t == "is_leaf":
            return "bool(is_leaf[v])" if self.mode == "int" else "is_leaf[v]"
        if t == "num_children":
            return f"{self.idx('num_children')} == 0"
        op = "== -1" if t == "eq_m1" else "< 0"
        if st == "nary":
            e = f"(kids {op}).all(-1)"
            return f"bool({e})" if self.mode == "int" else e
        first = "l" if not self.stacked or self.s.layout == "lr" else None
        if first is None:
            e = f"kids[..., 0] {op}"
            return f"bool({e})" if self.mode == "int" else e
        return f"{first} {op}"

    def remap_zero_row(self, w: _W, names):
        for c in names:
            if self.mode == "int" and c != "kids":
                w(f"{c} = {c} if {c} >= 0 else n")
            else:
                w(f"{c} = torch.where({c} < 0, torch.full_like({c}, n), {c})")

    def missing_applies(self):
        return self.s.missing != "-"

    def read_one(self, S, c):
        """Row of table S at child id c, a missing child (-1) reading as zeros where that applies."""
        m = self.s.missing if self.missing_applies() else "none"
        if m in ("none", "zero_row"):
            return f"{S}[{c}]"
        if m == "if_zeros":
            return f"self.child({S}, {c})"
        if self.mode == "int":
            if m == "mask":
                return f"{S}[{c}] * float({c} >= 0)"
            return f"{S}[max({c}, 0)] * float({c} >= 0)"  # clamp_mask
        if m == "mask":
            return f"{S}[{c}] * ({c} >= 0).float().unsqueeze(-1)"
        if m == "where":
            return f"torch.where(({c} >= 0).unsqueeze(-1), {S}[{c}], torch.zeros_like({S}[{c}]))"
        return f"{S}[{c}.clamp(min=0)] * ({c} >= 0).unsqueeze(-1)"  # clamp_mask

    def gather(self, w: _W, S):
        """``S_k``: the children's rows of S stacked on dim -2 (-3 for matrices)."""
        m = self.s.missing if self.missing_applies() else "none"
        if m == "node_if_zeros":
            m = "none"  # read only when the node has its children
        ids = "kids"
        if self.s.gather == "index_select" or m == "clamp_mask":
            if m != "zero_row":
                ids = "kids.clamp(min=0)"
        if self.s.gather == "index_select":
            base = (f"{S}.index_select(0, {ids}.view(-1)).unsqueeze(0)" if self.mode == "slice" else
                    f"{S}.index_select(0, {ids})")
        else:
            base = f"{S}[{ids}]"
        if m in ("none", "zero_row"):
            w(f"{S}_k = {base}")
        elif m in ("mask",):
            w(f"{S}_k = {base} * (kids >= 0).float().unsqueeze(-1)")
        elif m == "clamp_mask":
            w(f"{S}_k = {base} * (kids >= 0).unsqueeze(-1)")
        else:  # where
            w(f"{S}_k = {base}", f"{S}_k = torch.where((kids >= 0).unsqueeze(-1), {S}_k, torch.zeros_like({S}_k))")

    def read_children(self, w: _W):
        """Child ids (after the leaf test) and the children's rows of every state table."""
        one_by_one_nary = self.struct == "nary" and self.s.gather == "one"
        if self.zero_row and not one_by_one_nary:
            self.remap_zero_row(w, ["kids"] if self.stacked else self.slots)
        if one_by_one_nary:
            for S in self.states:
                w(f"{S}_rows: List[Tensor] = []")
            w("for j in range(self.arity):")
            with w.indent():
                w(f"cj = {self.idx('children', 'j')}")
                if self.zero_row:
                    self.remap_zero_row(w, ["cj"])
                for S in self.states:
                    w(f"{S}_rows.append({self.read_one(S, 'cj')})")
            for S in self.states:
                w(f"{S}_k = torch.stack({S}_rows, dim=-2)")
        elif self.s.missing == "node_if_zeros":
            self.node_if_zeros(w)
        elif self.stacked:
            for S in self.states:
                self.gather(w, S)
        else:
            for S in self.states:
                for c in self.slots:
                    w(f"{S}_{c} = {self.read_one(S, c)}")
        if self.struct == "nary" and self.agg == "mean":
            w("cnt = (children[v] >= 0).sum(-1, keepdim=True).clamp(min=1)")

    def node_if_zeros(self, w: _W):
        """One `if` for the whole node: no children -> every child row is torch.zeros, else the rows are read (binary
        trees and chains: a node has all its children or none)."""
        names = [f"{S}_k" for S in self.states] if self.stacked else \
            [f"{S}_{c}" for S in self.states for c in self.slots]
        k = len(self.slots)

        def zeros(name):
            S = name.split("_")[0]
            if not self.stacked:
                return f"torch.zeros({self.row_shape(S)})"
            return f"torch.zeros(1, {k}, self.hidden)" if self.mode == "slice" else f"torch.zeros({k}, self.hidden)"

        def reads(w2: _W):
            for S in self.states:
                if self.stacked:
                    self.gather(w2, S)
                else:
                    for c in self.slots:
                        w2(f"{S}_{c} = {S}[{c}]")

        first = self.slots[0] if (not self.stacked or self.s.layout == "lr" or self.struct == "chain") else "kids[..., 0]"
        if self.s.dynamo:
            ops = ", ".join(self.states + ["v"])
            w(f"def no_children({ops}):")
            with w.indent():
                w(f"return {', '.join(zeros(nm) for nm in names)}")
            w(f"def read_children({ops}):")
            with w.indent():
                self.child_ids(w)
                reads(w)
                w(f"return {', '.join(names)}")
            w(f"{', '.join(names)} = torch.cond(({first} < 0).squeeze(0), no_children, read_children, ({ops}))")
            return
        w(f"if {first} < 0:" if self.mode == "int" else f"if bool({first} < 0):")
        with w.indent():
            for nm in names:
                w(f"{nm} = {zeros(nm)}")
        w("else:")
        with w.indent():
            reads(w)

    def x_expr(self):
        li = self.s.leaf_input
        if li == "embedding":
            return "self.embedding(words[v])"
        if li == "features":
            return "features[v]"
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

    def body(self, w: _W):
        """Lines of one visit of node v (v defined): new rows ``<S>_new`` of every state table."""
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
                    w(f"{S}_new = torch.where(m, {leaf[S]}, {node[S]})")
            else:
                w(f"m = float({pred})" if self.mode == "int" else f"m = ({pred}).float().unsqueeze(-1)")
                for S in self.states:
                    w(f"{S}_new = m * {leaf[S]} + (1 - m) * {node[S]}")
            return
        if self.s.dynamo:  # torch.cond(pred, leaf_fn, node_fn, operands)
            ops = ", ".join(self.states + ["v"])
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
              if len(self.states) == 1 else f"{outs} = torch.cond(({pred}).squeeze(0), leaf_fn, node_fn, ({ops}))")
            return
        w(f"if {pred}:" if self.mode == "int" else f"if bool({pred}):")
        with w.indent():
            leaf = self.rows(w, self.leaf_cell, "new")
        w("else:")
        with w.indent():
            self.read_children(w)
            self.rows(w, self.node_cell, "new")

    def writes(self, w: _W):
        st, mode, dyn = self.s.write, self.mode, self.s.dynamo
        for S in self.states:
            new = f"{S}_new"
            new1 = new if mode == "slice" else f"{new}.unsqueeze(0)"
            v1 = {"slice": "v", "scalar": "v.view(1)", "int": "torch.tensor([v])"}[mode]
            if self.s.dtype == "int32" and mode != "int" and st in ("index_copy_", "scatter"):
                v1 += ".long()"  # index_copy_ and scatter take int64 indices only
            if dyn and st in ("assign", "assign_slice", "index_copy_", "index_put_"):
                w(f"{S} = {S}.clone()")
            if st == "assign":
                w(f"{S}[v] = {new}")
            elif st == "assign_slice":
                w(f"{S}[v, {', '.join([':'] * (self.rank(S) - 1))}] = {new}")
            elif st == "index_copy_":
                w(f"{S}.index_copy_(0, {v1}, {new1})")
            elif st == "index_put":
                w(f"{S} = {S}.index_put(({v1},), {new1})")
            elif st == "index_put_":
                w(f"{S}.index_put_(({v1},), {new1})")
            elif st == "cat":
                vi = "v" if mode == "int" else "int(v)"
                w(f"{S} = torch.cat([{S}[:{vi}], {new1}, {S}[{vi} + 1:]])")
            else:  # scatter
                shape = "-1, 1, 1" if S == "A" else "-1, 1"
                exp = "-1, self.hidden, self.hidden" if S == "A" else "-1, self.hidden"
                w(f"{S} = {S}.scatter(0, {v1}.view({shape}).expand({exp}), {new1})")

    # ---------------------------------------------------------------------------------------------- module
    def signature(self):
        s = self.s
        ins = []
        if s.leaf_input == "embedding":
            ins.append(("words", "words"))
        elif s.leaf_input == "features":
            ins.append(("features", "features"))
        st = self.struct
        if st == "nary":
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
        if s.head == "root_linear":
            ins.append(("roots", "roots"))
        return ins

    def outputs(self):
        if self.s.head == "none":
            return [(S, "node") for S in self.states]
        return [("out", {"root_linear": "root", "log_softmax": "node", "mean": "whole"}[self.s.head])]

    def forward(self, w: _W):
        s = self.s
        ins = self.signature()
        index_names = [n for n, k in ins if k in ("index", "index2", "order", "roots")] + \
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
        struct_arr = next(n for n, k in ins if k in ("index", "index2"))
        w(f"n = {struct_arr}.size(0)", "H = self.hidden")
        for S in self.states:
            rows = "n + 1" if self.zero_row and S != "A" else "n"
            w(f"{S} = torch.zeros({rows}, H, H)" if S == "A" else f"{S} = torch.zeros({rows}, H)")
        tables = ", ".join(self.states)
        if s.exporter == "torchscript":
            if s.loop == "counter":
                w("k = 0", "while k < order.size(0):")
            elif s.loop == "reverse":
                w("for k in range(order.size(0) - 1, -1, -1):")
            else:
                w("for k in range(order.size(0)):")
            with w.indent():
                w({"scalar": "v = order[k]", "int": "v = int(order[k])", "slice": "v = order[k:k + 1]"}[self.mode])
                self.body(w)
                self.writes(w)
                if s.loop == "counter":
                    w("k += 1")
        elif s.exporter == "dynamo_while":
            rev = s.loop == "reverse"
            w(f"def cond_fn(k, {tables}):")
            with w.indent():
                w("return k >= 0" if rev else "return k < order.size(0)")
            w(f"def body_fn(k, {tables}):")
            with w.indent():
                # order[k:k + 1] has an unbacked length under while_loop (eager fails to broadcast it): index
                # with a one-element tensor instead
                w({"scalar": "v = order[k]", "int": "v = int(order[k])",
                   "slice": "v = order[k.unsqueeze(0)]"}[self.mode])
                self.body(w)
                self.writes(w)
                w(f"return k {'-' if rev else '+'} 1, {tables}")
            w("k0 = torch.full((), order.size(0) - 1, dtype=torch.int64)" if rev else
              "k0 = torch.zeros((), dtype=torch.int64)")
            w(f"_, {tables} = torch.while_loop(cond_fn, body_fn, (k0, {tables}))")
        else:  # dynamo_scan
            multi = len(self.states) > 1
            w(f"def step({'carry' if multi else tables}, v):")
            with w.indent():
                if multi:
                    w(f"{tables} = carry")
                w({"scalar": "v = v", "int": "v = int(v)", "slice": "v = v.unsqueeze(0)"}[self.mode])
                self.body(w)
                self.writes(w)
                first = self.states[0]
                w(f"return ({tables}), {first}_new.reshape(-1)" if multi else
                  f"return {tables}, {first}_new.reshape(-1)")
            rev = ", reverse=True" if s.loop == "reverse" else ""
            w(f"({tables}), _ = scan(step, ({tables}), order{rev})" if multi else
              f"{tables}, _ = scan(step, {tables}, order{rev})")
        if self.zero_row:
            for S in self.states:
                if S != "A":
                    w(f"{S} = {S}[:n]")
        main = self.states[0]
        if s.head == "none":
            w(f"return {tables}")
        elif s.head == "root_linear":
            w(f"return self.head({main}[roots])")
        elif s.head == "log_softmax":
            w(f"return F.log_softmax(self.head({main}), dim=-1)")
        else:
            w(f"return {main}.mean(0)")
        w.depth -= 1

    def child_helper(self):
        h = self.helpers
        zeros = f"torch.zeros({self.row_shape('h')})"
        if self.s.dynamo:
            h("def child(self, t, c):")
            with h.indent():
                h("def missing(t, c):")
                with h.indent():
                    h(f"return {zeros}")
                h("def present(t, c):")
                with h.indent():
                    h("return t[c]")
                h("return torch.cond((c < 0).squeeze(0), missing, present, (t, c))")
        else:
            ct = "int" if self.mode == "int" else "Tensor"
            h(f"def child(self, t: Tensor, c: {ct}) -> Tensor:")
            with h.indent():
                h("if c < 0:" if self.mode == "int" else "if bool(c < 0):")
                with h.indent():
                    h(f"return {zeros}")
                h("return t[c]")

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
        lines = ["# generated by onnx_ops.modelgen from spec: " + s.short(),
                 "from typing import List, Tuple", "", "import torch", "import torch.nn.functional as F",
                 "from torch import Tensor, nn"]
        if s.exporter == "dynamo_scan":
            lines.append("from torch._higher_order_ops.scan import scan")
        lines += ["", "", "class Model(nn.Module):", "    def __init__(self):"]
        lines += head.lines + self.init.lines + tail.lines + [""]
        if self.helpers.lines:
            lines += self.helpers.lines + [""]
        lines += fw.lines
        return Source("\n".join(lines) + "\n", self.signature(), self.outputs())


def write_source(spec: Spec) -> Source:
    """The module source for ``spec`` (class ``Model``), with its input and output names and kinds."""
    return _Gen(spec).module()

"""Writes the Python source of an ordinary PyTorch ``nn.Module`` for a :class:`~.spec.Spec`.

The module loops over a visit order and overwrites rows of state tables, the way people write recursive models in
PyTorch: a ``for``/``while`` loop for TorchScript (``torch.jit.script``), ``torch.while_loop`` or ``scan`` (+
``torch.cond``) for the dynamo exporter. The cell math uses negative dims only (``chunk(.., dim=-1)``,
``sum(-2)``), so the same lines serve 0-d ids (rows ``[H]``) and one-element slices (rows ``[1, H]``).

:func:`write_source` returns a :class:`Source`: the text (class ``Model``, no argument constructor) and the names
and kinds of its inputs and outputs.
"""
from __future__ import annotations

from dataclasses import dataclass

from .spec import Spec

__all__ = ["Source", "write_source", "VOCAB", "CLASSES"]

VOCAB = 40  # embedding rows (SST tokens are hashed mod VOCAB)
CLASSES = 5  # classifier width of the heads

ACTS = {  # name -> (functional form, module form)
    "tanh": ("torch.tanh({})", "nn.Tanh()"),
    "relu": ("torch.relu({})", "nn.ReLU()"),
    "sigmoid": ("torch.sigmoid({})", "nn.Sigmoid()"),
    "gelu": ("F.gelu({})", "nn.GELU()"),
    "elu": ("F.elu({})", "nn.ELU()"),
    "leaky_relu": ("F.leaky_relu({}, 0.1)", "nn.LeakyReLU(0.1)"),
    "softplus": ("F.softplus({})", "nn.Softplus()"),
    "silu": ("F.silu({})", "nn.SiLU()"),
    "hardtanh": ("F.hardtanh({})", "nn.Hardtanh()"),
    "selu": ("F.selu({})", "nn.SELU()"),
}

#: structure kind -> (child slot names, lr-layout array names, children-layout array name)
SLOTS = {"binary": (["l", "r"], ["left", "right"], "children"),
         "grid": (["u", "lf"], ["up", "left"], "neighbors"),
         "chain": (["p"], ["prev"], None),
         "nary": (None, None, "children")}


@dataclass
class Source:
    text: str
    inputs: list  # [(name, kind)]: kind in words, features, index, bool, order, roots
    outputs: list  # [(name, kind)]: kind in node (axis 0 = N), root (axis 0 = R), whole (no dynamic axis)


class _W:
    """Lines with indentation."""

    def __init__(self):
        self.lines: list[str] = []
        self.depth = 0

    def __call__(self, *lines: str):
        for ln in lines:
            self.lines.append("    " * self.depth + ln if ln else "")

    def indent(self):
        w = self

        class _Ctx:
            def __enter__(self):
                w.depth += 1

            def __exit__(self, *a):
                w.depth -= 1
        return _Ctx()


class _Gen:
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

    # ---------------------------------------------------------------------------------------------- small helpers
    def rank(self, S):
        return 3 if S == "A" else 2

    def row_shape(self, S):
        """Shape of one row of table S, as the source writes it."""
        core = "self.hidden, self.hidden" if S == "A" else "self.hidden"
        return ("1, " + core) if self.mode == "slice" else core

    def act(self, e):
        if self.family == "treefc":
            return f"torch.relu({e})"
        if self.s.act_form == "module":
            return f"self.act({e})"
        return ACTS[self.s.act][0].format(e)

    def lin(self, name, din, dout, bias=None):
        bias = self.bias if bias is None else bias
        self.init(f"self.{name} = nn.Linear({din}, {dout}{'' if bias else ', bias=False'})")
        return f"self.{name}"

    def var(self, base="t"):
        self.tmp += 1
        return f"{base}{self.tmp}"

    # ---------------------------------------------------------------------------------------------- gate math
    def pre(self, w: _W, prefix: str, operands: list, gates: list, gated: bool = True) -> list:
        """Pre-activations of ``gates`` (each hidden wide) from ``operands`` [(expr, width, weight-name)]: returns
        one expression per gate, writing the lines it needs to ``w``."""
        H, G = self.H, len(gates)
        layout = self.gates_layout if gated and G > 1 else "fused_chunk"
        names = [g for g in gates]
        if len(operands) == 1 or self.mix == "cat":
            if len(operands) == 1:
                inp, width = operands[0][0], operands[0][1]
            else:
                inp = self.var("xh")
                w(f"{inp} = torch.cat([{', '.join(o[0] for o in operands)}], dim=-1)")
                width = sum(o[1] for o in operands)
            if layout == "separate":
                return [f"{self.lin(f'{prefix}_{g}', width, H)}({inp})" for g in names]
            call = f"{self.lin(prefix, width, G * H)}({inp})"
        else:  # mix == "sum": a Linear per operand
            if layout == "separate":
                out = []
                for g in names:
                    out.append(" + ".join(f"{self.lin(f'{o[2]}_{g}', o[1], H)}({o[0]})" for o in operands))
                return out
            call = " + ".join(f"{self.lin(o[2], o[1], G * H)}({o[0]})" for o in operands)
        if G == 1:
            return [call]
        g = self.var("g")
        w(f"{g} = {call}")
        outs = [f"{n}_{g}" for n in names]
        if layout == "fused_chunk":
            w(f"{', '.join(outs)} = {g}.chunk({G}, dim=-1)" if G % 2 else
              f"{', '.join(outs)} = torch.chunk({g}, {G}, -1)")
        elif layout == "fused_split":
            w(f"{', '.join(outs)} = torch.split({g}, self.hidden, dim=-1)")
        else:  # fused_slice
            for k, o in enumerate(outs):
                lo = "" if k == 0 else (f"{k} * H" if k > 1 else "H")
                hi = "" if k == G - 1 else (f"{k + 1} * H" if k + 1 > 1 else "H")
                w(f"{o} = {g}[..., {lo}:{hi}]")
        return outs

    # ---------------------------------------------------------------------------------------------- children
    def named_children(self):
        return self.slots is not None and not self.stacked

    def kid_rows(self, S):
        """Expressions of the children's rows of S (named children)."""
        return [f"{S}_{c}" for c in self.slots]

    def agg_rows(self, S):
        """The children's aggregate row of table S (agg sum / mean / max; cat -> mean, for GRU's hbar)."""
        agg = "mean" if self.agg == "cat" else self.agg
        if self.named_children():
            rows = self.kid_rows(S)
            if len(rows) == 1:
                return rows[0]
            if agg == "sum":
                return f"{rows[0]} + {rows[1]}"
            if agg == "mean":
                return f"0.5 * ({rows[0]} + {rows[1]})"
            return f"torch.maximum({rows[0]}, {rows[1]})"
        k = f"{S}_k"
        if agg == "sum":
            return f"{k}.sum(-2)"
        if agg == "max":
            return f"{k}.amax(-2)" if self.s.seed % 2 else f"torch.max({k}, dim=-2)[0]"
        if self.struct == "nary":
            return f"{k}.sum(-2) / cnt"
        return f"{k}.mean(-2)"

    def cat_parts(self, S):
        """The two children's rows of S as separate operands (agg cat, binary and grid)."""
        if self.named_children():
            return self.kid_rows(S)
        return [f"{S}_k[..., 0, :]", f"{S}_k[..., 1, :]"]

    def child_operands(self, S="h", scale=None):
        """Operands of the children into a pre-activation: [(expr, width, weight name)]."""
        H = self.H
        sc = (lambda e: f"{scale} * {e}") if scale else (lambda e: e)
        if self.agg == "cat" and self.struct in ("binary", "grid"):
            if self.mix == "cat" and not self.named_children() and not scale:
                return [(f"{S}_k.flatten(-2)", 2 * H, "U")]
            names = ["U_l", "U_r"] if self.struct == "binary" else ["U_up", "U_left"]
            scales = scale if isinstance(scale, list) else [scale, scale]
            return [((f"{s_} * ({e})" if s_ else e), H, n) for e, n, s_ in zip(self.cat_parts(S), names, scales)]
        return [(sc(f"({self.agg_rows(S)})") if scale else self.agg_rows(S), H, "U")]

    def per_child_sum(self, fn):
        """Sum over children of fn(row dict) (named) or of the stacked expression summed over dim -2."""
        if self.named_children():
            return " + ".join(f"{fn({S: f'{S}_{c}' for S in self.states}, c)}" for c in self.slots)
        return f"({fn({S: f'{S}_k' for S in self.states}, None)}).sum(-2)"

    # ---------------------------------------------------------------------------------------------- cells
    def leaf_cell(self, w: _W, out: dict):
        """Rows of a leaf (no children): out[S] = expression."""
        f, D = self.family, self.D
        if f in ("treefc", "treernn", "treegru", "dagrnn"):
            out["h"] = self.act(self.pre(w, "W", [("x", D, "W")], ["h"], gated=False)[0])
        elif f in ("treelstm", "childsum"):
            i, o, u = self.pre(w, "W_leaf", [("x", D, "W_leaf")], ["i", "o", "u"])
            w(f"c_leaf = torch.sigmoid({i}) * {self.act(u)}")
            out["c"] = "c_leaf"
            out["h"] = f"torch.sigmoid({o}) * {self.act('c_leaf')}"
        elif f == "mvrnn":
            li = self.s.leaf_input
            if li == "embedding":
                out["a"] = "x"
                self.init(f"self.word_matrix = nn.Embedding({VOCAB}, {self.H * self.H})")
                out["A"] = f"self.word_matrix(words[v]).view({self.row_shape('A')})"
            elif li == "features":
                out["a"] = f"{self.lin('W_in', self.s.embed, self.H)}(features[v])"
                out["A"] = "self.leaf_matrix"
            else:
                out["a"] = "x"
                out["A"] = "self.leaf_matrix"
        else:
            raise AssertionError(f)

    def node_cell(self, w: _W, out: dict):
        """Rows of an internal node (children rows prepared); with a uniform cell x enters too."""
        f, H, D = self.family, self.H, self.D
        xs = [("x", D, "W")] if self.uniform else []
        if f in ("treefc", "treernn", "dagrnn"):
            out["h"] = self.act(self.pre(w, "U" if not xs else "cell", xs + self.child_operands(), ["h"],
                                         gated=False)[0])
        elif f == "treegru":
            gates = ["z", "r_l", "r_r"] if self.agg == "cat" and self.struct in ("binary", "grid") else ["z", "r"]
            pre = self.pre(w, "gates", xs + self.child_operands(), gates)
            z = "z"
            w(f"z = torch.sigmoid({pre[0]})")
            if len(gates) == 3:
                w(f"r_l = torch.sigmoid({pre[1]})", f"r_r = torch.sigmoid({pre[2]})")
                kids = self.child_operands(scale=["r_l", "r_r"])
            else:
                w(f"reset = torch.sigmoid({pre[1]})")  # not `r`: that is the right child's id
                kids = self.child_operands(scale="reset")
            xs_c = [("x", D, "W_c")] if xs else []
            kids = [(e, wd, n.replace("U", "U_c")) for e, wd, n in kids]
            cand = self.pre(w, "cand", xs_c + kids, ["n"], gated=False)[0]
            out["h"] = f"{z} * ({self.agg_rows('h')}) + (1 - {z}) * {self.act(cand)}"
        elif f in ("treelstm", "childsum"):
            per_child_weights = f == "treelstm" and self.agg == "cat" and self.struct in ("binary", "grid")
            if per_child_weights:
                i, fl, fr, o, u = self.pre(w, "U_gates" if not xs else "gates", xs + self.child_operands(),
                                           ["i", "f_l", "f_r", "o", "u"])
                fc = (f"torch.sigmoid({fl}) * {self.cat_parts('c')[0]} + "
                      f"torch.sigmoid({fr}) * {self.cat_parts('c')[1]}")
            else:
                i, o, u = self.pre(w, "U_iou" if not xs else "iou", xs + self.child_operands(), ["i", "o", "u"])
                U_f = self.lin("U_f", H, H)
                if xs:
                    wf = self.lin("W_f", D, H, bias=False)
                    w(f"fx = {wf}(x)")
                    fx = " + fx" if self.named_children() else " + fx.unsqueeze(-2)"
                else:
                    fx = ""
                fc = self.per_child_sum(lambda r, c: f"torch.sigmoid({U_f}({r['h']}){fx}) * {r['c']}")
            w(f"c_new = torch.sigmoid({i}) * {self.act(u)} + {fc}")
            out["c"] = "c_new"
            out["h"] = f"torch.sigmoid({o}) * {self.act('c_new')}"
        elif f == "mvrnn":
            al, ar = self.cat_parts("a")
            Al, Ar = [p.replace("..., 0, :", "..., 0, :, :").replace("..., 1, :", "..., 1, :, :")
                      for p in self.cat_parts("A")]
            w(f"p_l = torch.matmul({Ar}, {al}.unsqueeze(-1)).squeeze(-1)",
              f"p_r = torch.matmul({Al}, {ar}.unsqueeze(-1)).squeeze(-1)")
            pre = self.pre(w, "W", [("p_l", H, "W_l"), ("p_r", H, "W_r")], ["a"], gated=False)[0]
            out["a"] = self.act(pre)
            if self.mix == "cat":
                self.init(f"self.W_M = nn.Linear({2 * H}, {H}, bias=False)")
                out["A"] = f"torch.matmul(self.W_M.weight, torch.cat([{Al}, {Ar}], dim=-2))"
            else:
                self.init(f"self.W_M_l = nn.Linear({H}, {H}, bias=False)",
                          f"self.W_M_r = nn.Linear({H}, {H}, bias=False)")
                out["A"] = f"torch.matmul(self.W_M_l.weight, {Al}) + torch.matmul(self.W_M_r.weight, {Ar})"
        elif f == "chainlstm":
            if self.gates_layout == "torch_cell":
                self.init(f"self.cell = nn.LSTMCell({D}, {H})")
                w("h_new, c_new = self.cell(x, (h_p, c_p))")
            else:
                i, f_, o, u = self.pre(w, "gates", [("x", D, "W"), ("h_p", H, "U")], ["i", "f", "o", "u"])
                w(f"c_new = torch.sigmoid({f_}) * c_p + torch.sigmoid({i}) * {self.act(u)}",
                  f"h_new = torch.sigmoid({o}) * {self.act('c_new')}")
            out["h"], out["c"] = "h_new", "c_new"
        elif f == "chaingru":
            if self.gates_layout == "torch_cell":
                self.init(f"self.cell = nn.GRUCell({D}, {H})")
                out["h"] = "self.cell(x, h_p)"
            else:
                z, r = self.pre(w, "gates", [("x", D, "W"), ("h_p", H, "U")], ["z", "r"])
                w(f"z = torch.sigmoid({z})", f"r = torch.sigmoid({r})")
                n = self.pre(w, "cand", [("x", D, "W_n"), ("r * h_p", H, "U_n")], ["n"], gated=False)[0]
                out["h"] = f"(1 - z) * {self.act(n)} + z * h_p"
        else:
            raise AssertionError(f)

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

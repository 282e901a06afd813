"""The cell math of a generated model: gate pre-activations (fused Linear + chunk / split / slicing, or a Linear
per gate; ``W(x) + U(h)`` or ``Linear(torch.cat([x, h]))``), the children's aggregate, and the leaf and internal
rows of every family. Mixed into the source writer of :mod:`.source`; every expression uses negative dims only, so
the same lines serve rows ``[H]`` and ``[1, H]``."""
from __future__ import annotations

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


class CellWriter:
    """Cell math; the host class provides ``s`` (the spec), ``H``, ``D``, ``init`` (a :class:`_W` of __init__
    lines), ``mode``, ``struct``, ``family``, ``uniform``, ``bias``, ``gates_layout``, ``mix``, ``agg``, ``states``,
    ``slots`` and ``stacked``."""

    # ---------------------------------------------------------------------------------------------- small helpers
    def row_dims(self, S) -> list:
        """Dims of one row of table (or state) S as the cell sees it: [H], [H, H] (MV-RNN's matrices), [2, H] (an
        LSTM's h and c in one rank-3 table); a 1-D table's rows are seen as [1] (``self.hidden`` is 1)."""
        if S == "A":
            return ["self.hidden", "self.hidden"]
        if S == "hc":
            return ["2", "self.hidden"]
        return ["self.hidden"]

    def rank(self, S):
        return 1 + len(self.row_dims(S))

    def row_shape(self, S):
        """Shape of one row of table S, as the source writes it."""
        core = ", ".join(self.row_dims(S))
        return ("1, " + core) if self.mode == "slice" else core

    def fl(self):
        """The float cast of the model's dtype: ``float`` or ``double``."""
        return "double" if getattr(self, "f64", False) else "float"

    def cell_squeeze(self):
        """nn.LSTMCell / nn.GRUCell take rows [B, H]: a batched table read with one-element slices has [B, 1, H]."""
        return getattr(self, "batched", False) and self.mode == "slice"

    def kid(self, S, c):
        """The row of state S of the child in slot c (named children)."""
        return f"{S}_{c}"

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
        return [self.kid(S, c) for c in self.slots]

    def set_sum(self, e):
        """Sum over the child set of ``e`` (rows of the set stacked on dim -2): weighted by the set's mask or a mask
        matmul where the set is selected from the whole table."""
        form = getattr(self, "set_form", None)
        if form == "mask":
            return f"({e} * selw).sum(-2)"
        if form == "matmul":
            return self.mm("a", e)
        return f"({e}).sum(-2)" if not e.isidentifier() else f"{e}.sum(-2)"

    def agg_rows(self, S):
        """The children's aggregate row of table S (agg sum / mean / max / attn; cat -> mean, for GRU's hbar)."""
        agg = "mean" if self.agg == "cat" else self.agg
        if agg == "attn":
            k = f"{S}_k"
            return self.mm("alpha", k) if getattr(self, "set_form", None) == "matmul" else \
                f"(alpha.unsqueeze(-1) * {k}).sum(-2)"
        form = getattr(self, "set_form", None)
        if form is not None:
            k = f"{S}_k"
            if agg == "max" and form == "mask":
                return f"{S}_max"  # written by the reader (masked with -inf, guarded for empty sets)
            if form == "exact" and agg == "mean":  # the rows of the set itself: a leaf's set may be empty
                # (counted from the structure: the dynamo exporter drops max(u, 1) of an unbacked size, so an
                # empty set's mean exported as 0 / 0)
                return f"{k}.sum(-2) / cnt" if self.node_at_leaves else f"{k}.mean(-2)"
            if form == "exact" and agg == "max":
                return f"{k}.amax(-2)"
            total = self.set_sum(k)
            return total if agg == "sum" else f"{total} / cnt"
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
            return " + ".join(f"{fn({S: self.kid(S, c) for S in self.states}, c)}" for c in self.slots)
        if getattr(self, "set_form", None) is not None:
            return self.set_sum(fn({S: f"{S}_k" for S in self.states}, None))
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
                shape = ("-1, " if self.batched else "") + self.row_shape("A")
                out["A"] = f"self.word_matrix({self.at('words')}).view({shape})"
            elif li == "features":
                out["a"] = f"{self.lin('W_in', self.s.embed, self.H)}({self.at('features')})"
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
            hp, cp = self.kid("h", "p"), self.kid("c", "p")
            if self.gates_layout == "torch_cell" and self.cell_squeeze():  # the cell takes [B, H] rows
                self.init(f"self.cell = nn.LSTMCell({D}, {H})")
                w(f"h_new, c_new = self.cell(x.squeeze(1), ({hp}.squeeze(1), {cp}.squeeze(1)))",
                  "h_new, c_new = h_new.unsqueeze(1), c_new.unsqueeze(1)")
            elif self.gates_layout == "torch_cell":
                self.init(f"self.cell = nn.LSTMCell({D}, {H})")
                w(f"h_new, c_new = self.cell(x, ({hp}, {cp}))")
            else:
                i, f_, o, u = self.pre(w, "gates", [("x", D, "W"), (hp, H, "U")], ["i", "f", "o", "u"])
                w(f"c_new = torch.sigmoid({f_}) * {cp} + torch.sigmoid({i}) * {self.act(u)}",
                  f"h_new = torch.sigmoid({o}) * {self.act('c_new')}")
            out["h"], out["c"] = "h_new", "c_new"
        elif f == "chaingru":
            hp = self.kid("h", "p")
            if self.gates_layout == "torch_cell":
                self.init(f"self.cell = nn.GRUCell({D}, {H})")
                out["h"] = f"self.cell(x.squeeze(1), {hp}.squeeze(1)).unsqueeze(1)" if self.cell_squeeze() else \
                    f"self.cell(x, {hp})"
            else:
                z, r = self.pre(w, "gates", [("x", D, "W"), (hp, H, "U")], ["z", "r"])
                w(f"z = torch.sigmoid({z})", f"r = torch.sigmoid({r})")
                n = self.pre(w, "cand", [("x", D, "W_n"), (f"r * {hp}", H, "U_n")], ["n"], gated=False)[0]
                out["h"] = f"(1 - z) * {self.act(n)} + z * {hp}"
        else:
            raise AssertionError(f)

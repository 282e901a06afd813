"""``cortex.TreeRec`` lowered to standard ONNX (Loop / If / TopK / ScatterND) that any ONNX Runtime runs, and the
graph-renaming helpers the lowering and ``cortex.torch`` share."""
from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .schema import DOMAIN, OP_TYPE, node_attribute


def rename_graph(g: onnx.GraphProto, f: Callable[[str], str]) -> None:
    """Rename every value name in ``g`` and its nested subgraphs with ``f`` (in place)."""
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        vi.name = f(vi.name)
    for t in g.initializer:
        t.name = f(t.name)
    for n in g.node:
        rename_node(n, f)


def rename_node(n: onnx.NodeProto, f: Callable[[str], str]) -> None:
    n.input[:] = [f(x) if x else x for x in n.input]
    n.output[:] = [f(x) if x else x for x in n.output]
    if n.name:
        n.name = f(n.name)
    for a in n.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            rename_graph(a.g, f)
        elif a.type == onnx.AttributeProto.GRAPHS:
            for sub in a.graphs:
                rename_graph(sub, f)


def defined_names(g: onnx.GraphProto) -> set[str]:
    """Every value name ``g`` or one of its nested subgraphs defines (inputs, initializers, node outputs); the names
    it reads and does not define come from an enclosing scope."""
    names = {vi.name for vi in g.input} | {t.name for t in g.initializer}
    for n in g.node:
        names.update(o for o in n.output if o)
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                names |= defined_names(sub)
    return names


def _row_type(vi: onnx.ValueInfoProto, what: str) -> tuple[int, list[int]]:
    tt = vi.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim] if tt.HasField("shape") else None
    if dims is None or any(d < 0 for d in dims):
        raise ValueError(f"lower_treerec: {what} {vi.name!r} needs a static shape (got {dims})")
    return tt.elem_type, dims


class _Lowering:
    def __init__(self, model: onnx.ModelProto, node: onnx.NodeProto, prefix: str):
        self.p = prefix
        self.node = node
        self.initializers: list[onnx.TensorProto] = []
        self.nodes: list[onnx.NodeProto] = []
        self.leaf = node_attribute(node, "leaf_body")
        self.internal = node_attribute(node, "internal_body")
        self.S = int(node_attribute(node, "num_states"))
        self.M = len(node.input) - 1  # node inputs
        n_int = len(self.internal.input) - self.M
        if len(self.leaf.input) != self.M or n_int <= 0 or n_int % self.S:
            raise ValueError(
                f"lower_treerec: body inputs do not match: leaf has {len(self.leaf.input)} (want {self.M}), "
                f"internal has {len(self.internal.input)} (want K*{self.S} + {self.M})"
            )
        self.K = n_int // self.S
        if len(self.leaf.output) != self.S or len(self.internal.output) != self.S:
            raise ValueError("lower_treerec: each body must have num_states outputs")
        self.state_types = [_row_type(vi, "state") for vi in self.leaf.output]
        self._uid = 0

    # naming / constants ------------------------------------------------------------------------------------
    def name(self, hint: str) -> str:
        self._uid += 1
        return f"{self.p}{hint}_{self._uid}"

    def const(self, value, dtype, hint="c") -> str:
        nm = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), nm))
        return nm

    @staticmethod
    def emit(nodes: list, op: str, inputs: Sequence[str], out: str | Sequence[str], **attrs) -> str | list[str]:
        outs = [out] if isinstance(out, str) else list(out)
        nodes.append(helper.make_node(op, list(inputs), outs, **attrs))
        return out

    # pieces -------------------------------------------------------------------------------------------------
    def inline(self, body: onnx.GraphProto, feeds: list[str], nodes: list, tag: str) -> list[str]:
        """Append ``body``'s nodes to ``nodes`` with names prefixed; its inputs bound to ``feeds``, its
        initializers hoisted to the main graph; names it reads from the enclosing graph kept as they are (the Loop
        and If bodies that replace TreeRec see them too). Returns the names holding the body's outputs."""
        body = copy.deepcopy(body)
        pre = f"{self.p}{tag}__"
        bound = {vi.name: feed for vi, feed in zip(body.input, feeds, strict=True)}
        own = defined_names(body)
        f = lambda x: bound.get(x, pre + x if x in own else x)  # noqa: E731
        for t in body.initializer:
            t2 = copy.deepcopy(t)
            t2.name = f(t.name)
            self.initializers.append(t2)
        for n in body.node:
            rename_node(n, f)
            nodes.append(n)
        outs = []
        for s, vi in enumerate(body.output):
            o = self.name(f"{tag}_row{s}")
            self.emit(nodes, "Identity", [f(vi.name)], o)
            outs.append(o)
        return outs

    def branch(self, nodes: list, outs: list[str], tag: str) -> onnx.GraphProto:
        vis = [
            helper.make_tensor_value_info(o, et, dims)
            for o, (et, dims) in zip(outs, self.state_types, strict=True)
        ]
        return helper.make_graph(nodes, f"{self.p}{tag}", [], vis)

    def lower(self) -> list[onnx.NodeProto]:
        E, nodes = self.emit, self.nodes
        children, xs = self.node.input[0], list(self.node.input[1:])
        i64 = np.int64
        zero, one = self.const(0, i64, "zero"), self.const(1, i64, "one")
        axes0 = self.const([0], i64, "axes0")
        shape = E(nodes, "Shape", [children], self.name("children_shape"))
        n_scalar = E(nodes, "Gather", [shape, zero], self.name("N"), axis=0)
        n_vec = E(nodes, "Unsqueeze", [n_scalar, axes0], self.name("N1"))

        # Heights: iterate h <- [leaf ? 0 : 1 + max child h] until it stops changing (at most N times).
        hb = []
        h_in, it_in, c_in = self.name("h_in"), self.name("it"), self.name("cond_in")
        cands = []
        for k in range(self.K):
            ck = E(hb, "Gather", [children, self.const(k, i64, "k")], self.name("ck"), axis=1)
            mk = E(hb, "GreaterOrEqual", [ck, zero], self.name("has_child"))
            idx = E(hb, "Max", [ck, zero], self.name("safe_child"))
            hk = E(hb, "Gather", [h_in, idx], self.name("child_h"), axis=0)
            hk1 = E(hb, "Add", [hk, one], self.name("child_h1"))
            cands.append(E(hb, "Where", [mk, hk1, zero], self.name("cand")))
        h_new = E(hb, "Max" if len(cands) > 1 else "Identity", cands, self.name("h_new"))
        same = E(hb, "Equal", [h_new, h_in], self.name("same"))
        changed = E(hb, "Not", [same], self.name("changed"))
        nchanged = E(hb, "ReduceSum", [E(hb, "Cast", [changed], self.name("changed_i"), to=TensorProto.INT64)],
                     self.name("nchanged"), keepdims=0)
        c_out = E(hb, "Greater", [nchanged, zero], self.name("cond_out"))
        h_out = E(hb, "Identity", [h_new], self.name("h_out"))
        height_body = helper.make_graph(
            hb,
            f"{self.p}heights_body",
            [
                helper.make_tensor_value_info(it_in, TensorProto.INT64, []),
                helper.make_tensor_value_info(c_in, TensorProto.BOOL, []),
                helper.make_tensor_value_info(h_in, TensorProto.INT64, ["N"]),
            ],
            [
                helper.make_tensor_value_info(c_out, TensorProto.BOOL, []),
                helper.make_tensor_value_info(h_out, TensorProto.INT64, ["N"]),
            ],
        )
        h0 = E(nodes, "ConstantOfShape", [n_vec], self.name("h0"),
               value=numpy_helper.from_array(np.zeros(1, i64)))
        true = self.const(True, np.bool_, "true")
        heights = E(nodes, "Loop", [n_scalar, true, h0], self.name("heights"), body=height_body)
        _, order = E(nodes, "TopK", [heights, n_vec], [self.name("sorted_h"), self.name("order")],
                     axis=0, largest=0, sorted=1)

        # Visit loop: tables carried, one node per iteration.
        tables0 = []
        for s, (et, dims) in enumerate(self.state_types):
            full = E(nodes, "Concat", [n_vec, self.const(dims, i64, "dims")], self.name(f"table{s}_shape"), axis=0)
            zval = numpy_helper.from_array(np.zeros(1, dtype=helper.tensor_dtype_to_np_dtype(et)))
            tables0.append(E(nodes, "ConstantOfShape", [full], self.name(f"table{s}_0"), value=zval))
        vb = []
        it, cond = self.name("i"), self.name("cond")
        t_in = [self.name(f"table{s}_in") for s in range(self.S)]
        v = E(vb, "Gather", [order, it], self.name("v"), axis=0)
        row = E(vb, "Gather", [children, v], self.name("child_row"), axis=0)
        mx = E(vb, "ReduceMax", [row], self.name("max_child"), keepdims=0)
        is_leaf = E(vb, "Less", [mx, zero], self.name("is_leaf"))

        then_nodes: list = []
        slices = [E(then_nodes, "Gather", [x, v], self.name("leaf_slice"), axis=0) for x in xs]
        then_outs = self.inline(self.leaf, slices, then_nodes, "leaf")

        else_nodes: list = []
        child_rows = []
        for k in range(self.K):
            ck = E(else_nodes, "Gather", [row, self.const(k, i64, "k")], self.name("child"), axis=0)
            mk = E(else_nodes, "GreaterOrEqual", [ck, zero], self.name("has_child"))
            safe = E(else_nodes, "Max", [ck, zero], self.name("safe_child"))
            for s, (et, dims) in enumerate(self.state_types):
                r = E(else_nodes, "Gather", [t_in[s], safe], self.name(f"child_state{s}"), axis=0)
                z = self.const(np.zeros(dims), helper.tensor_dtype_to_np_dtype(et), f"zero_row{s}")
                child_rows.append(E(else_nodes, "Where", [mk, r, z], self.name(f"child_state{s}_or0")))
        slices = [E(else_nodes, "Gather", [x, v], self.name("node_slice"), axis=0) for x in xs]
        else_outs = self.inline(self.internal, child_rows + slices, else_nodes, "internal")

        rows = [self.name(f"row{s}") for s in range(self.S)]
        E(vb, "If", [is_leaf], rows,
          then_branch=self.branch(then_nodes, then_outs, "leaf_branch"),
          else_branch=self.branch(else_nodes, else_outs, "internal_branch"))
        idx = E(vb, "Unsqueeze", [v, axes0], self.name("row_index"))
        t_out = [E(vb, "ScatterND", [t_in[s], idx, rows[s]], self.name(f"table{s}_out")) for s in range(self.S)]
        cond_out = E(vb, "Identity", [cond], self.name("cond_out"))
        visit_body = helper.make_graph(
            vb,
            f"{self.p}visit_body",
            [helper.make_tensor_value_info(it, TensorProto.INT64, []),
             helper.make_tensor_value_info(cond, TensorProto.BOOL, [])]
            + [helper.make_tensor_value_info(t, et, ["N", *dims])
               for t, (et, dims) in zip(t_in, self.state_types, strict=True)],
            [helper.make_tensor_value_info(cond_out, TensorProto.BOOL, [])]
            + [helper.make_tensor_value_info(t, et, ["N", *dims])
               for t, (et, dims) in zip(t_out, self.state_types, strict=True)],
        )
        E(nodes, "Loop", [n_scalar, "", *tables0], list(self.node.output), body=visit_body)
        return nodes


def _uses_domain(g: onnx.GraphProto, domain: str) -> bool:
    for n in g.node:
        if n.domain == domain:
            return True
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH and _uses_domain(a.g, domain):
                return True
            if a.type == onnx.AttributeProto.GRAPHS and any(_uses_domain(s, domain) for s in a.graphs):
                return True
    return False


def lower_treerec(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of ``model`` with every top-level ``cortex.TreeRec`` node replaced by standard ONNX
    (opset >= 13 forms; heights Loop, TopK visit order, visit Loop with If and ScatterND) that ONNX Runtime runs.
    State rows must have static shapes in the leaf body's outputs. Behaviour on inputs TreeRec rejects (cycles,
    bad indices) is unspecified."""
    return lower_with_spans(model)[0]


def lower_with_spans(model: onnx.ModelProto) -> tuple:
    """(the lowered model, [(first node index, node count, names of the initializers it added, the TreeRec node)] of
    each lowered node, in order)."""
    model = copy.deepcopy(model)
    g = model.graph
    default_opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if default_opset is None or default_opset < 13:
        raise ValueError("lower_treerec needs a default-domain opset import >= 13")
    new_nodes: list[onnx.NodeProto] = []
    spans = []
    for node in g.node:
        if node.domain == DOMAIN and node.op_type == OP_TYPE:
            prefix = re.sub(r"[^A-Za-z0-9_]", "_", node.name or "treerec") + f"_{len(spans)}__"
            lw = _Lowering(model, node, prefix)
            lowered = lw.lower()
            spans.append((len(new_nodes), len(lowered), [t.name for t in lw.initializers], copy.deepcopy(node)))
            new_nodes.extend(lowered)
            g.initializer.extend(lw.initializers)
        else:
            new_nodes.append(node)
    del g.node[:]
    g.node.extend(new_nodes)
    if not _uses_domain(g, DOMAIN):
        keep = [o for o in model.opset_import if o.domain != DOMAIN]
        del model.opset_import[:]
        model.opset_import.extend(keep)
    return model, spans

"""Per-op semantics of the frontend's handlers (cortex.frontend.interpreter.HANDLERS; docs/ops.md), as TVM's ONNX
frontend tests its converters: for every op the frontend follows inside a recursion, tiny recursive models whose
body uses that op in representative forms (attributes, broadcasting, negative axes, edge values, and the kinds of
value it can meet: a per-node row, a constant, a structure value, a state table or runtime tensor), converted with
cortex.convert(strict=True) and compared with ONNX Runtime on the original (onnx's reference implementation where ORT
cannot run a form) over a few random forests. Forms the frontend must refuse check that the refusal names the node
and the op.

One test id per op; a form that shows a known bug outside the frontend is its own xfail(strict=True) id. The kernel
compile is the cost, so the forms are built into a few shared models: each form is one state of a cortex.TreeRec model
(ORT runs its lowering) or one table of a Loop/If model, and a group of forms is converted once; a form the frontend
refuses (or that breaks its group's conversion) is split off and reported on its own test.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import cortex
from cortex.examples import structures as st
from cortex.frontend import find_regions
from cortex.frontend.interpreter import HANDLERS
from cortex.treerec import lower_treerec, make_treerec_node, register_schema

H = 6  # a node's base row (the children's states) and its feature row are [H]
V = 5  # words (a structure value per node) in [0, V)
GROUP = 56  # forms per shared model
TOL = 1e-4
VI = helper.make_tensor_value_info


def F(*v):
    return np.array(v[0] if len(v) == 1 else v, dtype=np.float32)


def I(*v):  # noqa: E743 - int64 constant
    return np.array(v[0] if len(v) == 1 else v, dtype=np.int64)


# ---- building a form's nodes ------------------------------------------------------------------------------------


class Frag:
    """The nodes and initializers of one form, every name prefixed with the form's key (so a refusal that names a
    node names the form). Calling it adds a node: inputs are names or numpy constants (made initializers)."""

    def __init__(self, prefix: str):
        self.prefix, self.nodes, self.inits, self.count = prefix, [], [], 0

    def c(self, value) -> str:
        name = f"{self.prefix}c{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def _name(self, x) -> str:
        return x if isinstance(x, str) else self.c(x)

    def __call__(self, op: str, *inputs, outs: int = 1, **attrs):
        self.count += 1
        base = f"{self.prefix}{op}{self.count}"
        names = [f"{base}_{j}" for j in range(outs)]
        self.nodes.append(helper.make_node(op, [self._name(x) for x in inputs], names, name=base, **attrs))
        return names[0] if outs == 1 else names

    def graph(self, name: str, build: Callable, inputs=(), outputs=()) -> onnx.GraphProto:
        """A subgraph (an If branch, a Loop or Scan body): `build(sub, *input names)` adds its nodes and returns its
        output names; inputs and outputs are (elem type, shape) each. It may read the enclosing form's names."""
        sub = Frag(f"{self.prefix}{name}_")
        names = [f"{sub.prefix}in{k}" for k in range(len(inputs))]
        outs = build(sub, *names)
        outs = [outs] if isinstance(outs, str) else list(outs)
        self.count += sub.count
        ids = [sub("Identity", o) for o in outs]
        return helper.make_graph(sub.nodes, f"{sub.prefix}graph", [VI(n, *s) for n, s in zip(names, inputs)],
                                 [VI(n, *s) for n, s in zip(ids, outputs)], initializer=sub.inits)


@dataclass
class Form:
    """One form of an op. `build(f, a, b, x, w)` adds the form's nodes and returns the name of its result (any
    dtype, static shape): a, b are the children's rows [H] (float32), x the node's feature row [H], w its word (an
    int64 scalar, a structure value). `refused`: the form must be refused, the reason matching this pattern.
    `opset`: the model's opset (a later one for ops or attributes newer than 17)."""
    op: str
    name: str
    build: Callable
    opset: int = 17
    refused: Optional[str] = None
    tol: float = TOL
    xfail: Optional[str] = None  # a known bug this test documents (IR or codegen, not the frontend's)
    # Loop forms (a state table among the values): `build(f, n)` reads from the tables and arrays named in n (see
    # loop_group) in the internal branch and returns a float row of `width`; `write(f, table, n, row)` writes it.
    loop: bool = False
    width: int = 0
    write: Optional[Callable] = None
    init: float = 0.0
    # "ort": compared with ONNX Runtime on the original; "reference": with onnx's reference implementation (numpy),
    # for forms ONNX Runtime cannot run or gets wrong
    oracle: str = "ort"
    cases: bool = False  # splits the step into cases (an If on a structure value): grouped apart, since a group's
    # code is repeated in every case

    @property
    def key(self) -> str:
        return re.sub(r"[^A-Za-z0-9]", "_", f"{self.op}_{self.name}") + "__"


FORMS: list[Form] = []


def form(op, name, build=None, **kw):
    def add(fn):
        FORMS.append(Form(op, name, fn, **kw))
        return fn
    return add(build) if build is not None else add


def loop_form(op, name, width, read=None, write=None, **kw):
    """A form in the Loop model: `read(f, n)` -> a float row [width] (default: the node's feature row scaled),
    `write(f, table, n, row)` -> the table after the write (default: ScatterND of the row at v)."""
    read = read or (lambda f, n: f("Mul", n.x, F(np.linspace(-1, 1, H))))
    FORMS.append(Form(op, name, read, loop=True, width=width, write=write, **kw))


# ---- the shared TreeRec model ------------------------------------------------------------------------------------

rng0 = np.random.default_rng(7)
W_LEAF = rng0.uniform(-0.6, 0.6, (H, H)).astype(np.float32)
U_A = rng0.uniform(-0.6, 0.6, (H, H)).astype(np.float32)
U_B = rng0.uniform(-0.6, 0.6, (H, H)).astype(np.float32)


def _fragment(frm: Form):
    """(nodes, initializers, name of the form's flat float32 row) of a form in a body with inputs a, b, x, w."""
    f = Frag(frm.key)
    out = frm.build(f, "a", "b", "x", "w")
    flat = f("Reshape", f("Cast", out, to=TensorProto.FLOAT), I([-1]))
    return f.nodes, f.inits, flat


_WIDTHS: dict = {}


def _width(frm: Form) -> int:
    """The form's result width: its fragment run alone (ONNX Runtime, else onnx's reference evaluator)."""
    if frm.loop:
        return frm.width
    if frm.key not in _WIDTHS:
        _WIDTHS[frm.key] = _run_fragment(frm)
    return _WIDTHS[frm.key]


def _run_fragment(frm: Form) -> int:
    nodes, inits, flat = _fragment(frm)
    inputs = [VI(n, TensorProto.FLOAT, [H]) for n in ("a", "b", "x")] + [VI("w", TensorProto.INT64, [])]
    graph = helper.make_graph(nodes, "fragment", inputs, [VI(flat, TensorProto.FLOAT, ["W"])], initializer=inits)
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", frm.opset)])
    onnx.checker.check_model(model, full_check=True)  # a form must be valid ONNX
    feeds = {"a": F([0.1] * H), "b": F([0.2] * H), "x": F([0.5] * H), "w": I(1)}
    quiet = ort.SessionOptions()
    quiet.log_severity_level = 4  # a form ORT cannot run is expected here: the reference takes it
    try:
        session = ort.InferenceSession(model.SerializeToString(), quiet, providers=["CPUExecutionProvider"])
        out = session.run(None, feeds)
    except Exception:  # noqa: BLE001 - ORT lacks the op or gets it wrong: the reference knows the shape
        from onnx.reference import ReferenceEvaluator
        out = ReferenceEvaluator(model).run(None, feeds)
    return int(np.asarray(out[0]).size)


def treerec_group(forms: list[Form], opset: int) -> onnx.ModelProto:
    """A cortex.TreeRec model: state 0 is a node's base row h [H] (leaf: tanh(x W); internal: tanh(x W + h_a U_a +
    h_b U_b)); state k is form k's result at internal nodes (zeros at leaves)."""
    register_schema()
    widths = [_width(f) for f in forms]
    states = [("h", H)] + [(f"s{k}", w) for k, w in enumerate(widths)]
    inits = [numpy_helper.from_array(W_LEAF, "Wl")]
    leaf_nodes = [helper.make_node("MatMul", ["x", "Wl"], ["xw"]), helper.make_node("Tanh", ["xw"], ["h"])]
    leaf_inits = list(inits)
    for k, w in enumerate(widths):
        leaf_inits.append(numpy_helper.from_array(np.zeros(w, np.float32), f"s{k}"))
    leaf = helper.make_graph(leaf_nodes, "leaf", [VI("x", TensorProto.FLOAT, [H]), VI("w", TensorProto.INT64, [])],
                             [VI(n, TensorProto.FLOAT, [w]) for n, w in states], initializer=leaf_inits)
    internal_inputs = [VI(f"c{c}_{n}", TensorProto.FLOAT, [w]) for c in range(2) for n, w in states]
    internal_nodes = [helper.make_node("Identity", ["c0_h"], ["a"]), helper.make_node("Identity", ["c1_h"], ["b"]),
                      helper.make_node("MatMul", ["x", "Wl"], ["xw"]), helper.make_node("MatMul", ["a", "Ua"], ["au"]),
                      helper.make_node("MatMul", ["b", "Ub"], ["bu"]),
                      helper.make_node("Sum", ["xw", "au", "bu"], ["pre"]), helper.make_node("Tanh", ["pre"], ["h"])]
    internal_inits = inits + [numpy_helper.from_array(U_A, "Ua"), numpy_helper.from_array(U_B, "Ub")]
    for k, frm in enumerate(forms):
        nodes, finits, flat = _fragment(frm)
        internal_nodes += nodes + [helper.make_node("Identity", [flat], [f"s{k}"])]
        internal_inits += finits
    internal = helper.make_graph(
        internal_nodes, "internal",
        internal_inputs + [VI("x", TensorProto.FLOAT, [H]), VI("w", TensorProto.INT64, [])],
        [VI(n, TensorProto.FLOAT, [w]) for n, w in states], initializer=internal_inits)
    node = make_treerec_node("children", ["feats", "words"], [n for n, _ in states], leaf, internal, name="forms")
    graph = helper.make_graph(
        [node], "forms",
        [VI("children", TensorProto.INT64, ["N", 2]), VI("feats", TensorProto.FLOAT, ["N", H]),
         VI("words", TensorProto.INT64, ["N"])],
        [VI(n, TensorProto.FLOAT, ["N", w]) for n, w in states])
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", opset),
                                                                  helper.make_opsetid("cortex", 1)])


def forests(seed: int) -> list[tuple]:
    """(forest, features [N, H], words [N]) of a few forests: single trees of several sizes and a batch of three (one
    a lone leaf). Features are multiples of 0.5 in [-3, 3] (exact halves for Round, zeros for Reciprocal); words in
    [0, V) at every node."""
    rng = np.random.default_rng(seed)
    out = []
    for fr in (st.random_tree(9, rng, V), st.batch([st.random_tree(n, rng, V) for n in (1, 4, 6)]),
               st.random_tree(3, rng, V)):
        n = fr.num_nodes
        out.append((fr, (rng.integers(-6, 7, (n, H)) / 2).astype(np.float32), rng.integers(0, V, n).astype(np.int64)))
    return out


def treerec_feeds(seed: int) -> list[dict]:
    return [{"children": fr.children, "feats": feats, "words": words} for fr, feats, words in forests(seed)]


# ---- the shared Loop/If model ------------------------------------------------------------------------------------

E_TABLE = F(np.linspace(-1.5, 1.5, V * H).reshape(V, H))


class Names:
    """The names a Loop form reads: v (the node), l, r (its children), h (the state table as the step sees it), the
    runtime arrays feats [N, H], words, left, right [N], pairs [N, 2] (the children), the constant E [V, H]; and
    (in the internal branch) a, b (the children's rows), x (the node's features), w (its word)."""
    v, l, r, h, feats, words, left, right, pairs, E = "v", "l", "r", "h_in", "feats", "words", "left", "right", \
        "pairs", "E"
    a, b, x, w = "a", "b", "x", "w"


def loop_group(forms: list[Form]) -> onnx.ModelProto:
    """A Loop over `order`, one node per iteration: the state table h [N, H] as in treerec_group, written with
    ScatterND; table k holds form k's row (its read in the If's internal branch, zeros at leaves; its write after
    the If)."""
    opset = max(f.opset for f in forms)
    n = Names()
    top = Frag("top_")
    inits = [numpy_helper.from_array(W_LEAF, "Wl"), numpy_helper.from_array(U_A, "Ua"),
             numpy_helper.from_array(U_B, "Ub"), numpy_helper.from_array(E_TABLE, "E")]

    def table(width, init):
        shape = top("Concat", top("Slice", top("Shape", "words"), I([0]), I([1])), I([width]), axis=0)
        return top("ConstantOfShape", shape, value=numpy_helper.from_array(F([init])))

    tables0 = [table(H, 0.0)] + [table(f.width, f.init) for f in forms]
    leaf = Frag("leaf_")
    leaf_outs = [leaf("Unsqueeze", leaf("Tanh", leaf("MatMul", leaf("Gather", "feats", "v"), "Wl")), I([0]))]
    leaf_outs += [leaf("Identity", F(np.zeros(f.width))) for f in forms]
    e = Frag("internal_")
    e.nodes += [helper.make_node("Gather", ["h_in", "l"], ["a"], name="internal_a"),
                helper.make_node("Gather", ["h_in", "r"], ["b"], name="internal_b"),
                helper.make_node("Gather", ["feats", "v"], ["x"], name="internal_x"),
                helper.make_node("Gather", ["words", "v"], ["w"], name="internal_w")]
    pre = e("Sum", e("MatMul", "x", "Wl"), e("MatMul", "a", "Ua"), e("MatMul", "b", "Ub"))
    internal_outs = [e("Unsqueeze", e("Tanh", pre), I([0]))]
    for f in forms:
        fr = Frag(f.key)
        internal_outs.append(fr("Reshape", fr("Cast", f.build(fr, n), to=TensorProto.FLOAT), I([-1])))
        e.nodes += fr.nodes
        e.inits += fr.inits
    rows_t = [(TensorProto.FLOAT, [1, H])] + [(TensorProto.FLOAT, [f.width]) for f in forms]
    leaf_g = helper.make_graph(leaf.nodes, "leaf_branch", [], [VI(o, *s) for o, s in zip(leaf_outs, rows_t)],
                               initializer=leaf.inits)
    internal_g = helper.make_graph(e.nodes, "internal_branch", [], [VI(o, *s) for o, s in zip(internal_outs, rows_t)],
                                   initializer=e.inits)
    body = Frag("body_")
    body.nodes += [helper.make_node("Gather", ["order", "i"], ["v"], name="body_v"),
                   helper.make_node("Gather", ["left", "v"], ["l"], name="body_l"),
                   helper.make_node("Gather", ["right", "v"], ["r"], name="body_r")]
    rows = body("If", body("Equal", "l", I(-1)), then_branch=leaf_g, else_branch=internal_g, outs=1 + len(forms))
    rows = [rows] if isinstance(rows, str) else rows
    outs = [body("ScatterND", "h_in", body("Reshape", "v", I([1, 1])), rows[0])]
    for k, f in enumerate(forms):
        fw = Frag(f.key + "w_")
        tin = f"t{k}_in"
        outs.append(f.write(fw, tin, n, rows[1 + k]) if f.write else fw(
            "ScatterND", tin, fw("Reshape", "v", I([1, 1])), fw("Unsqueeze", rows[1 + k], I([0]))))
        body.nodes += fw.nodes
        body.inits += fw.inits
    cond_out = body("Identity", "cond")
    tables = [("h_in", H)] + [(f"t{k}_in", f.width) for k, f in enumerate(forms)]
    body_g = helper.make_graph(
        body.nodes, "visit_body",
        [VI("i", TensorProto.INT64, []), VI("cond", TensorProto.BOOL, [])]
        + [VI(name, TensorProto.FLOAT, ["N", w]) for name, w in tables],
        [VI(cond_out, TensorProto.BOOL, [])] + [VI(o, TensorProto.FLOAT, ["N", w]) for o, (_, w) in zip(outs, tables)],
        initializer=body.inits)
    trip = top("Gather", top("Shape", "order"), I(0))
    out_names = ["h"] + [f"s{k}" for k in range(len(forms))]
    top.nodes.append(helper.make_node("Loop", [trip, "", *tables0], out_names, name="visit", body=body_g))
    inputs = [VI(a, TensorProto.INT64, ["N"]) for a in ("words", "left", "right")] + [
        VI("order", TensorProto.INT64, ["L"]), VI("feats", TensorProto.FLOAT, ["N", H]),
        VI("pairs", TensorProto.INT64, ["N", 2])]
    graph = helper.make_graph(top.nodes, "loop_forms", inputs,
                              [VI(o, TensorProto.FLOAT, ["N", w]) for o, (_, w) in zip(out_names, tables)],
                              initializer=inits + top.inits)
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", opset)])


def loop_feeds(seed: int) -> list[dict]:
    """The forests as Loop inputs (children before parents in `order`)."""
    return [{"words": words, "left": fr.left, "right": fr.right, "order": fr.order, "feats": feats,
             "pairs": fr.children} for fr, feats, words in forests(seed)]


def build_group(forms: list[Form]) -> onnx.ModelProto:
    return loop_group(forms) if forms[0].loop else treerec_group(forms, max(f.opset for f in forms))


# ---- converting a group, isolating what breaks it ------------------------------------------------------------------


@dataclass
class Converted:
    path: str
    original: onnx.ModelProto  # what ORT runs (the reference: the model itself)
    state: int  # the form's output index
    loop: bool  # a Loop model (else a TreeRec one)
    oracle: str  # Form.oracle


def convert_forms(forms: list[Form], build, directory, tag: str) -> dict:
    """{form key: Converted or the reason it did not convert}. The forms convert together; when that fails, the form
    the reason names is set apart (else the group is halved) and the rest convert again."""
    results = {}

    def attempt(subset, label):
        if not subset:
            return
        model = build(subset)
        src, dst = directory / f"{label}.onnx", directory / f"{label}.cortex.onnx"
        onnx.save(model, str(src))
        try:
            cortex.convert(str(src), str(dst), strict=True)
        except cortex.ConvertError as e:
            message = str(e)
            named = [f for f in subset if f.key in message]
            if len(subset) == 1:
                results[subset[0].key] = message
                return
            if named:
                results[named[0].key] = message
                attempt([f for f in subset if f is not named[0]], label + "r")
                return
            warnings.warn(f"{label}: {len(subset)} forms do not convert together ({message[-200:]}); halving it "
                          "(each half is another compile)")
            half = len(subset) // 2
            attempt(subset[:half], label + "a")
            attempt(subset[half:], label + "b")
            return
        oracle = subset[0].oracle
        treerec = any(n.domain == "cortex" for n in model.graph.node)
        original = lower_treerec(model) if treerec and oracle == "ort" else model
        for k, f in enumerate(subset):
            results[f.key] = Converted(str(dst), original, 1 + k, f.loop, oracle)

    attempt(forms, tag)
    return results


class Runs:
    """Converted models and their outputs (Cortex and ORT) per group, computed on first use."""

    def __init__(self, directory):
        self.directory, self.groups, self.outputs = directory, {}, {}

    def result(self, frm: Form):
        group = GROUPS[frm.key]
        if group not in self.groups:
            forms, invalid = [], {}
            for f in FORMS:
                if GROUPS.get(f.key) == group:
                    try:
                        _width(f)
                        forms.append(f)
                    except Exception as e:  # noqa: BLE001 - a broken form fails its own test, not its group's
                        invalid[f.key] = f"the form is not valid ONNX: {type(e).__name__}: {e}"
            self.groups[group] = invalid
            if forms:
                self.groups[group].update(convert_forms(forms, build_group, self.directory, f"g{group}"))
        return self.groups[group][frm.key]

    def run(self, conv: Converted):
        if conv.path not in self.outputs:
            want, got = [], []
            if conv.oracle == "reference":
                from onnx.reference import ReferenceEvaluator

                from cortex.treerec import TreeRecOp
                original = ReferenceEvaluator(conv.original, new_ops=[TreeRecOp])
            else:
                original = ort.InferenceSession(conv.original.SerializeToString(), providers=["CPUExecutionProvider"])
            converted = cortex.InferenceSession(conv.path)
            for feeds in (loop_feeds(0) if conv.loop else treerec_feeds(0)):
                want.append(original.run(None, feeds))
                got.append(converted.run(None, feeds))
            self.outputs[conv.path] = (want, got)
        return self.outputs[conv.path]


def _groups() -> dict:
    """form key -> group number: forms to convert (not refusals), by opset, in chunks of GROUP."""
    out, number = {}, 0
    def kind(f):  # opset 17, or a later one (the group's model takes the latest of its forms)
        return (f.opset > 17, f.loop, f.cases, f.oracle)

    for k in sorted({kind(f) for f in FORMS}):
        chosen = [f for f in FORMS if kind(f) == k and f.refused is None and f.xfail is None]
        for i in range(0, len(chosen), GROUP):
            for f in chosen[i:i + GROUP]:
                out[f.key] = number
            number += 1
    for f in FORMS:  # a known bug converts alone, so it never breaks a group
        if f.refused is None and f.xfail is not None:
            out[f.key] = number
            number += 1
    return out


def _all_nodes(graph):
    for n in graph.node:
        yield n
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(a.g)


def check_form(runs: Runs, frm: Form) -> Optional[str]:
    """None when the form behaves (converts and matches ORT, or is refused as it must be), else what is wrong."""
    if frm.refused is not None:
        model = build_group([frm])
        reasons = [r.reason for r in find_regions(model) if r.program is None]
        if not reasons:
            return "converted, but it must be refused"
        reason = reasons[0]
        op_nodes = [n for n in _all_nodes(model.graph) if n.name.startswith(frm.key) and n.op_type == frm.op]
        if not any(f"node {n.name} ({frm.op})" in reason for n in op_nodes):
            return f"the refusal does not name the {frm.op} node: {reason}"
        if not re.search(frm.refused, reason):
            return f"refused for another reason: {reason}"
        return None
    conv = runs.result(frm)
    if not isinstance(conv, Converted):
        return f"not converted: {conv}"
    want, got = runs.run(conv)
    for k, (w, g) in enumerate(zip(want, got)):
        expected, actual = w[conv.state], g[conv.state]
        if expected.shape != actual.shape:
            return f"input {k}: shape {actual.shape}, ORT gives {expected.shape}"
        if not np.allclose(actual, expected, rtol=frm.tol, atol=frm.tol, equal_nan=True):
            bad = np.argwhere(~np.isclose(actual, expected, rtol=frm.tol, atol=frm.tol, equal_nan=True))[0]
            return (f"input {k}: differs from ORT at {tuple(bad)}: {actual[tuple(bad)]} vs {expected[tuple(bad)]} "
                    f"(row {actual[bad[0]]} vs {expected[bad[0]]})")
    if not np.all(np.isfinite(np.concatenate([w[conv.state].reshape(-1) for w in want]))) and \
            frm.name.endswith("finite"):
        return "ORT gives non-finite values for a form meant to stay finite"
    return None


# =================================================================================================================
# The forms. Shorthands: f(op, *inputs, **attrs) adds a node; a, b, x are [H] rows, w an int64 scalar.


def m23(f, v):
    return f("Reshape", v, I([2, 3]))


def m32(f, v):
    return f("Reshape", v, I([3, 2]))


def head(f, v, n):
    """The first n elements of a [H] row."""
    return f("Slice", v, I([0]), I([n]))


def flat_all(f, outs):
    """Several results as one flat row."""
    return f("Concat", *[f("Reshape", o, I([-1])) for o in outs], axis=0)


def ws(f, w):
    """w - 2: a structure value that can be negative."""
    return f("Sub", w, I(2))


def wvec(f, w, *coef):
    """A structure vector [w * c + 1 for c in coef]."""
    return f("Add", f("Mul", w, I(list(coef))), I(1))



# ---- elementwise arithmetic -------------------------------------------------------------------------------------

for _op in ("Add", "Sub", "Mul", "Div"):
    form(_op, "rows broadcast [2,3] by [1,3]", lambda f, a, b, x, w, op=_op: f(
        op, m23(f, a), f("Reshape", head(f, b, 3), I([1, 3]))))
    form(_op, "rows broadcast [3,1] by [1,2]", lambda f, a, b, x, w, op=_op: f(
        op, f("Reshape", head(f, a, 3), I([3, 1])), f("Reshape", head(f, b, 2), I([1, 2]))))
    form(_op, "constant [2,3] and row [3]", lambda f, a, b, x, w, op=_op: f(
        op, F([[1.5, -2.0, 0.25], [3.0, 0.5, -1.0]]), head(f, x, 3)))
    form(_op, "row and scalar constant", lambda f, a, b, x, w, op=_op: f(op, a, F(0.75)))
    form(_op, "structure values", lambda f, a, b, x, w, op=_op: f(op, f("Mul", ws(f, w), I([3, -3, 1, -1])),
                                                                   I([2, 3, -2, 4])))
    form(_op, "structure value and row", lambda f, a, b, x, w, op=_op: f(op, f("Cast", ws(f, w), to=TensorProto.FLOAT),
                                                                          f("Add", f("Abs", a), F(0.5))))

form("Pow", "row squared", lambda f, a, b, x, w: f("Pow", x, F(2.0)))
form("Pow", "row to an integer constant", lambda f, a, b, x, w: f("Pow", x, I(3)))
form("Pow", "positive row to a row", lambda f, a, b, x, w: f("Pow", f("Add", f("Abs", x), F(0.5)), a))
form("Pow", "row to broadcast constants", lambda f, a, b, x, w: f("Pow", m23(f, f("Add", f("Abs", a), F(0.1))),
                                                                   F([0.5, 2.0, -1.0])))
form("Pow", "structure values", lambda f, a, b, x, w: f("Pow", wvec(f, w, 1, 2), I(2)),
     refused="Pow on structure indices")

form("Mod", "structure values, Python sign", lambda f, a, b, x, w: f("Mod", f("Mul", ws(f, w), I([3, -3, 5, -5])),
                                                                      I([2, 2, -3, -3])))
form("Mod", "structure values, fmod", lambda f, a, b, x, w: f("Mod", f("Mul", ws(f, w), I([3, -3, 5, -5])),
                                                               I([2, 2, -3, -3]), fmod=1))
form("Mod", "rows, fmod", lambda f, a, b, x, w: f("Mod", m23(f, x), F([1.5, -2.0, 0.75]), fmod=1))

for _op in ("Max", "Min"):
    form(_op, "three rows and a constant, broadcast", lambda f, a, b, x, w, op=_op: f(
        op, m23(f, a), f("Reshape", b, I([2, 3])), f("Slice", x, I([3]), I([6])), F(0.1)))
    form(_op, "structure values", lambda f, a, b, x, w, op=_op: f(op, ws(f, w), I([0, -1, 2])))
    form(_op, "one row", lambda f, a, b, x, w, op=_op: f(op, a))
form("Sum", "three rows, broadcast", lambda f, a, b, x, w: f("Sum", m23(f, a), head(f, b, 3), F(0.5)))
form("Sum", "structure values as floats", lambda f, a, b, x, w: f(
    "Sum", f("Cast", w, to=TensorProto.FLOAT), f("Cast", f("Mul", ws(f, w), I([1, -2])), to=TensorProto.FLOAT), F(0.5)))
form("Mean", "three rows, broadcast", lambda f, a, b, x, w: f(
    "Mean", m23(f, a), head(f, b, 3), f("Reshape", head(f, x, 2), I([2, 1]))))
form("Mean", "row and constant", lambda f, a, b, x, w: f("Mean", a, F(1.0)))

form("PRelu", "slope constant per channel", lambda f, a, b, x, w: f("PRelu", m23(f, x), F([0.1, -0.5, 2.0])))
form("PRelu", "slope a row", lambda f, a, b, x, w: f("PRelu", x, a))

# ---- comparisons and logic ----------------------------------------------------------------------------------

for _op in ("Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal"):
    form(_op, "row and constants, broadcast", lambda f, a, b, x, w, op=_op: f(op, m23(f, x), F([0.5, 0.0, -1.0])))
    form(_op, "structure values", lambda f, a, b, x, w, op=_op: f(op, ws(f, w), I([-1, 0, 1, 2])))
    form(_op, "rows", lambda f, a, b, x, w, op=_op: f(op, a, b))
    form(_op, "structure value cast, against a constant", lambda f, a, b, x, w, op=_op: f(
        op, f("Cast", w, to=TensorProto.FLOAT), F([0.0, 1.0, 2.5, 4.0])))

for _op in ("And", "Or", "Xor"):
    form(_op, "structure predicates", lambda f, a, b, x, w, op=_op: f(op, f("Less", w, I([1, 2, 3])),
                                                                       f("Greater", w, I([0, 2, 1]))))
    form(_op, "row predicates, broadcast", lambda f, a, b, x, w, op=_op: f(
        op, f("Greater", m23(f, a), F(0.0)), f("Less", head(f, x, 3), F(0.0))))
    form(_op, "a row and a structure predicate", lambda f, a, b, x, w, op=_op: f(op, f("Greater", a, F(0.0)),
                                                                                  f("Less", w, I(2))))
form("Not", "structure predicate", lambda f, a, b, x, w: f("Not", f("Less", w, I([1, 3]))))
form("Not", "row predicate", lambda f, a, b, x, w: f("Not", f("Greater", x, F(0.0))))


# ---- unary math -------------------------------------------------------------------------------------------------


def positive(f, v, shift=0.25):
    return f("Add", f("Abs", v), F(shift))


UNARY_FORMS = {  # op: (row transform before the op, attributes)
    "Sigmoid": (None, {}), "Tanh": (None, {}), "Relu": (None, {}), "Neg": (None, {}), "Abs": (None, {}),
    "Exp": (None, {}), "Erf": (None, {}), "Softplus": (None, {}), "Softsign": (None, {}), "Floor": (None, {}),
    "Ceil": (None, {}), "Round": (None, {}), "Sign": (None, {}), "Sin": (None, {}), "Cos": (None, {}),
    "Tan": (lambda f, v: f("Mul", v, F(0.4)), {}), "Atan": (None, {}), "Sinh": (None, {}), "Cosh": (None, {}),
    "Asinh": (None, {}), "Asin": (lambda f, v: f("Div", v, F(3.5)), {}), "Acos": (lambda f, v: f("Div", v, F(3.5)), {}),
    "Acosh": (lambda f, v: positive(f, v, 1.0), {}), "Atanh": (lambda f, v: f("Div", v, F(3.5)), {}),
    "Log": (positive, {}), "Sqrt": (positive, {}), "Reciprocal": (None, {}), "HardSwish": (None, {}),
    "Mish": (None, {}), "Elu": (None, {"alpha": 0.5}), "Selu": (None, {"alpha": 1.5, "gamma": 0.75}),
    "Celu": (None, {"alpha": 2.0}), "LeakyRelu": (None, {"alpha": 0.2}), "ThresholdedRelu": (None, {"alpha": 0.5}),
    "HardSigmoid": (None, {"alpha": 0.3, "beta": 0.4}), "Shrink": (None, {"bias": 0.5, "lambd": 1.0}),
}
OPSET_OF = {"Mish": 18}

for _op, (_pre, _attrs) in UNARY_FORMS.items():
    form(_op, "feature row (halves, zeros)", lambda f, a, b, x, w, op=_op, pre=_pre, at=_attrs: f(
        op, pre(f, x) if pre else x, **at), opset=OPSET_OF.get(_op, 17))
    form(_op, "computed row [2,3]", lambda f, a, b, x, w, op=_op, pre=_pre, at=_attrs: f(
        op, m23(f, pre(f, f("Mul", a, F(2.5))) if pre else f("Mul", a, F(2.5))), **at), opset=OPSET_OF.get(_op, 17))
for _op in ("Elu", "Selu", "Celu", "LeakyRelu", "ThresholdedRelu", "HardSigmoid", "Shrink"):
    form(_op, "default attributes", lambda f, a, b, x, w, op=_op: f(op, x))
for _op in ("Neg", "Abs", "Sign"):
    form(_op, "structure values", lambda f, a, b, x, w, op=_op: f(op, f("Mul", ws(f, w), I([1, -3, 2]))))
form("Relu", "structure values (int32)", lambda f, a, b, x, w: f(  # integers: opset 14 on
    "Relu", f("Cast", f("Mul", ws(f, w), I([1, -3, 2])), to=TensorProto.INT32)), opset=18)
form("Relu", "structure values (int64), against the reference", lambda f, a, b, x, w: f(  # ORT has no int64 Relu
    "Relu", f("Mul", ws(f, w), I([1, -3, 2]))), opset=20, oracle="reference")  # kernel at opsets 14 and 20
for _op in ("Floor", "Ceil", "Round"):
    form(_op, "structure values as floats", lambda f, a, b, x, w, op=_op: f(
        op, f("Div", f("Cast", f("Mul", ws(f, w), I([1, -3, 5])), to=TensorProto.FLOAT), F(2.0))))
form("Log", "any row (-inf, nan)", lambda f, a, b, x, w: f("Log", x))
form("Sqrt", "any row (nan)", lambda f, a, b, x, w: f("Sqrt", x))
form("IsNaN", "nan from Sqrt", lambda f, a, b, x, w: f("IsNaN", f("Sqrt", x)))
form("IsNaN", "row [2,3]", lambda f, a, b, x, w: f("IsNaN", m23(f, f("Log", x))))
form("IsInf", "inf from Reciprocal", lambda f, a, b, x, w: f("IsInf", f("Reciprocal", x)))
form("IsInf", "signed, both", lambda f, a, b, x, w: f("IsInf", f("Log", f("Abs", x)), detect_negative=1,
                                                        detect_positive=1))
form("IsInf", "negative only", lambda f, a, b, x, w: f("IsInf", f("Log", f("Abs", x)), detect_positive=0),
     refused="IsInf detecting one sign only")
form("Gelu", "exact", lambda f, a, b, x, w: f("Gelu", x), opset=20)
form("Gelu", "tanh approximation", lambda f, a, b, x, w: f("Gelu", m23(f, a), approximate="tanh"), opset=20)

# ---- Clip, Where, Cast, Identity, Dropout --------------------------------------------------------------------------

form("Clip", "constant bounds", lambda f, a, b, x, w: f("Clip", x, F(-1.0), F(1.5)))
form("Clip", "upper bound only", lambda f, a, b, x, w: f("Clip", m23(f, x), "", F(0.5)))
form("Clip", "no bounds", lambda f, a, b, x, w: f("Clip", x))
form("Clip", "per-node bounds", lambda f, a, b, x, w: f("Clip", x, f("ReduceMin", a, keepdims=0),
                                                          f("ReduceMax", b, keepdims=0)))
form("Clip", "structure values", lambda f, a, b, x, w: f("Clip", f("Mul", ws(f, w), I([1, -1, 3])), I(-1), I(2)))

form("Where", "constant condition, broadcast", lambda f, a, b, x, w: f(
    "Where", np.array([[True], [False]]), m23(f, a), head(f, b, 3)))
form("Where", "row condition", lambda f, a, b, x, w: f("Where", f("Greater", a, b), x, F(-0.5)))
form("Where", "structure condition, rows", lambda f, a, b, x, w: f("Where", f("Less", w, I(2)), a, b))
form("Where", "structure conditions per element", lambda f, a, b, x, w: f(
    "Where", f("Less", w, I([1, 2, 4])), m23(f, a), head(f, x, 3)))
form("Where", "structure condition, structure values", lambda f, a, b, x, w: f(
    "Where", f("Equal", f("Mod", w, I(2)), I(0)), ws(f, w), I([7, -7])))

form("Cast", "row to bool", lambda f, a, b, x, w: f("Cast", x, to=TensorProto.BOOL))
form("Cast", "structure value to float", lambda f, a, b, x, w: f("Mul", f("Cast", ws(f, w), to=TensorProto.FLOAT), a))
form("Cast", "structure predicate to float", lambda f, a, b, x, w: f(
    "Add", f("Cast", f("Less", w, I([1, 3])), to=TensorProto.FLOAT), F(0.5)))
form("Cast", "structure value to int32 and back", lambda f, a, b, x, w: f(
    "Cast", f("Add", f("Cast", ws(f, w), to=TensorProto.INT32), np.int32(3)), to=TensorProto.INT64))
form("Cast", "row predicate to float", lambda f, a, b, x, w: f("Cast", f("Greater", x, a), to=TensorProto.FLOAT))
form("Cast", "row to int64", lambda f, a, b, x, w: f("Cast", f("Floor", x), to=TensorProto.INT64),
     refused="computed from state values")
form("CastLike", "structure value like a row", lambda f, a, b, x, w: f("Mul", f("CastLike", w, x), x))
form("CastLike", "row predicate like an int", lambda f, a, b, x, w: f("CastLike", f("Greater", a, F(0.0)), I(0)),
     refused="computed from state values")  # an integer per-node value: Cortex computes rows in float32
form("CastLike", "row like a bool", lambda f, a, b, x, w: f("CastLike", x, np.array(True)))

form("Identity", "row", lambda f, a, b, x, w: f("Identity", m23(f, a)))
form("Identity", "structure value", lambda f, a, b, x, w: f("Identity", ws(f, w)))
form("Dropout", "inference", lambda f, a, b, x, w: f("Dropout", x))
form("Dropout", "ratio, training off, mask", lambda f, a, b, x, w: f(
    "Concat", *[f("Cast", o, to=TensorProto.FLOAT) for o in f("Dropout", a, F(0.3), np.array(False), outs=2)],
    axis=0))
form("Dropout", "training on", lambda f, a, b, x, w: f("Dropout", a, F(0.3), np.array(True), seed=1),
     refused="Dropout in training mode")


# ---- shape and layout -------------------------------------------------------------------------------------------

form("Shape", "of a row [2,3]", lambda f, a, b, x, w: f("Mul", f("Cast", f("Shape", m23(f, a)), to=TensorProto.FLOAT),
                                                          head(f, x, 2)))
form("Shape", "start and end", lambda f, a, b, x, w: f("Shape", f("Reshape", a, I([1, 2, 3])), start=-2, end=-1))
form("Shape", "of a structure value", lambda f, a, b, x, w: f("Shape", wvec(f, w, 1, 2, 3), start=0))
form("Size", "of a row", lambda f, a, b, x, w: f("Add", a, f("Cast", f("Size", m23(f, x)), to=TensorProto.FLOAT)))

form("Reshape", "row with 0 and -1", lambda f, a, b, x, w: f("Transpose", f("Reshape", m23(f, a), I([0, -1, 1])),
                                                                perm=[1, 0, 2]))
form("Reshape", "structure values", lambda f, a, b, x, w: f("Transpose", f("Reshape", wvec(f, w, 1, 2, 3, 4, 5, 6),
                                                                          I([3, 2]))))
form("Reshape", "target from Shape", lambda f, a, b, x, w: f("Add", f("Reshape", x, f("Shape", m32(f, a))), m32(f, b)))
form("Flatten", "axis 0", lambda f, a, b, x, w: f("Transpose", f("Flatten", m23(f, a), axis=0)))
form("Flatten", "axis -1 of [1,2,3]", lambda f, a, b, x, w: f("Transpose", f("Flatten", f("Reshape", a, I([1, 2, 3])),
                                                                              axis=-1)))
form("Flatten", "structure values", lambda f, a, b, x, w: f("Flatten", f("Reshape", wvec(f, w, 1, 2, 3, 4), I([2, 2])),
                                                            axis=2))
form("Squeeze", "negative axes", lambda f, a, b, x, w: f("Squeeze", f("Reshape", a, I([2, 1, 3, 1])), I([-1, 1])))
form("Squeeze", "every size-1 axis", lambda f, a, b, x, w: f(
    "Transpose", f("Squeeze", f("Reshape", a, I([1, 3, 1, 2])))))
form("Unsqueeze", "negative and positive axes", lambda f, a, b, x, w: f(
    "Add", f("Unsqueeze", m23(f, a), I([-1, 0])), f("Reshape", head(f, x, 3), I([1, 1, 3, 1]))))
form("Unsqueeze", "structure value", lambda f, a, b, x, w: f("Concat", f("Unsqueeze", w, I([0])), I([5]), axis=0))
form("Transpose", "default permutation", lambda f, a, b, x, w: f("Transpose", m23(f, a)))
form("Transpose", "rank 3", lambda f, a, b, x, w: f("Transpose", f("Reshape", a, I([1, 2, 3])), perm=[2, 0, 1]))
form("Transpose", "structure values", lambda f, a, b, x, w: f("Transpose", f("Reshape", wvec(f, w, 1, 2, 3, 4, 5, 6),
                                                                            I([2, 3]))))
form("Expand", "row to a higher rank", lambda f, a, b, x, w: f("Expand", f("Reshape", head(f, a, 3), I([3, 1])),
                                                                 I([2, 1, 4])))
form("Expand", "target of lower rank", lambda f, a, b, x, w: f("Expand", m23(f, a), I([3])))
form("Expand", "structure value", lambda f, a, b, x, w: f("Expand", f("Unsqueeze", ws(f, w), I([0])), I([2, 3])))
form("Tile", "row", lambda f, a, b, x, w: f("Tile", m23(f, a), I([2, 1])))
form("Tile", "structure values", lambda f, a, b, x, w: f("Tile", wvec(f, w, 1, -1), I([3])))
form("Slice", "negative steps", lambda f, a, b, x, w: f("Slice", x, I([-1]), I([-1000]), I([0]), I([-2])))
form("Slice", "negative axes, ends past the end", lambda f, a, b, x, w: f("Slice", m23(f, a), I([1, -2]), I([100, 9]),
                                                                           I([-1, 0])))
form("Slice", "opset-17 defaults (no axes, no steps)", lambda f, a, b, x, w: f("Slice", m32(f, a), I([1, 0]),
                                                                                I([3, 1])))
form("Slice", "structure values", lambda f, a, b, x, w: f("Slice", wvec(f, w, 1, 2, 3, 4, 5), I([4]), I([0]),
                                                          I([0]), I([-2])))
form("Slice", "bounds that are structure values folding to constants", lambda f, a, b, x, w: f(
    "Slice", x, f("Mul", w, I([0])), f("Add", f("Mul", w, I([0])), I([4]))))
form("Concat", "rows, constants and structure values", lambda f, a, b, x, w: f(
    "Concat", head(f, a, 2), F([9.0]), f("Cast", wvec(f, w, 2), to=TensorProto.FLOAT), x, axis=0))
form("Concat", "axis -1 of [2,k]", lambda f, a, b, x, w: f("Concat", m23(f, a), f("Reshape", head(f, b, 2), I([2, 1])),
                                                             F([[0.5], [1.5]]), axis=-1))
form("Concat", "structure values", lambda f, a, b, x, w: f("Concat", f("Unsqueeze", ws(f, w), I([0])),
                                                           I([3, 4]), wvec(f, w, 2), axis=0))
form("Split", "sizes input, axis -1", lambda f, a, b, x, w: f(
    "Concat", *f("Split", m23(f, a), I([1, 2]), axis=-1, outs=2)[::-1], axis=-1))
form("Split", "equal parts", lambda f, a, b, x, w: f("Sub", *f("Split", a, outs=2)))
form("Split", "structure values", lambda f, a, b, x, w: f("Mul", *f("Split", wvec(f, w, 1, 2, 3, 4), axis=0, outs=2)))
form("Split", "uneven num_outputs", lambda f, a, b, x, w: f(
    "Concat", *[f("ReduceSum", p, keepdims=1) for p in f("Split", head(f, x, 5), axis=0, num_outputs=3, outs=3)],
    axis=0), opset=18)
form("Pad", "constant value", lambda f, a, b, x, w: f("Pad", m23(f, a), I([1, 0, 0, 2]), F(-1.5)))
form("Pad", "default zeros", lambda f, a, b, x, w: f("Pad", x, I([2, 1])))
form("Pad", "reflect", lambda f, a, b, x, w: f("Pad", m23(f, a), I([0, 2, 0, 1]), mode="reflect"))
form("Pad", "edge", lambda f, a, b, x, w: f("Pad", m23(f, a), I([1, 1, 1, 1]), mode="edge"))
form("Pad", "wrap", lambda f, a, b, x, w: f("Pad", m23(f, a), I([0, 2, 0, 1]), mode="wrap"), opset=19)
form("Pad", "axes input", lambda f, a, b, x, w: f("Pad", m23(f, a), I([1, 2]), F(0.5), I([-1])), opset=18)
form("Pad", "structure values", lambda f, a, b, x, w: f("Pad", wvec(f, w, 1, 2), I([1, 2]), I(-7)))
form("Pad", "negative pads (crop)", lambda f, a, b, x, w: f("Pad", m23(f, a), I([0, -1, 0, 0])),
     refused="Pad with negative pads")

# ---- constants made inside the body ------------------------------------------------------------------------------

form("ConstantOfShape", "shape of a row", lambda f, a, b, x, w: f("Add", m23(f, a), f(
    "ConstantOfShape", f("Shape", m23(f, b)), value=numpy_helper.from_array(F([1.5])))))
form("ConstantOfShape", "int64 value", lambda f, a, b, x, w: f("Add", wvec(f, w, 1, 2), f(
    "ConstantOfShape", I([2]), value=numpy_helper.from_array(I([3])))))
form("Range", "bounds that are structure values folding to constants", lambda f, a, b, x, w: f(
    "Add", f("Range", f("Mul", w, I(0)), I(6), I(2)), w))
form("Range", "a per-node bound", lambda f, a, b, x, w: f("Range", I(0), w, I(1)), refused="not constant")
form("EyeLike", "of a row, k=1", lambda f, a, b, x, w: f("Mul", f("EyeLike", m23(f, a), k=1), m23(f, x)))
form("EyeLike", "k=-1, dtype int64", lambda f, a, b, x, w: f("Add", f("EyeLike", m32(f, a), k=-1,
                                                                        dtype=TensorProto.INT64), w))

# ---- gathers and scatters on values (tables: the Loop forms below) -------------------------------------------------

form("Gather", "constant indices, negative, 2-D", lambda f, a, b, x, w: f("Gather", x, I([[-1, 0], [2, -3]])))
form("Gather", "constant indices, axis 1", lambda f, a, b, x, w: f("Gather", m23(f, a), I([2, -3]), axis=1))
form("Gather", "constant scalar index, axis -2", lambda f, a, b, x, w: f("Gather", m23(f, a), I(-1), axis=-2))
form("Gather", "a row at a structure index", lambda f, a, b, x, w: f("Gather", m32(f, a), f("Mod", w, I(3))))
form("Gather", "a row at a negative structure index, axis 1", lambda f, a, b, x, w: f(
    "Gather", m23(f, a), f("Sub", f("Mod", w, I(3)), I(3)), axis=1))
form("Gather", "a constant table at a structure index", lambda f, a, b, x, w: f(
    "Add", f("Gather", F(np.arange(V * 3).reshape(V, 3) / 4.0 - 1.0), w), head(f, x, 3)))
form("Gather", "a constant table at structure indices [2]", lambda f, a, b, x, w: f(
    "Gather", F(np.arange(V * 2).reshape(V, 2) * 0.5), f("Concat", f("Unsqueeze", w, I([0])),
                                                        f("Unsqueeze", f("Sub", I(V - 1), w), I([0])), axis=0)))
form("Gather", "structure values at a structure index", lambda f, a, b, x, w: f(
    "Gather", wvec(f, w, 1, -2, 3), f("Mod", w, I(3))))
form("GatherElements", "row, constant indices, axis -1", lambda f, a, b, x, w: f(
    "GatherElements", m23(f, a), I([[2, -1], [0, 1]]), axis=-1))
form("GatherElements", "row, constant indices, axis 0", lambda f, a, b, x, w: f(
    "GatherElements", m32(f, a), I([[2, 0], [-3, 1], [1, 1]]), axis=0))
form("GatherElements", "structure values", lambda f, a, b, x, w: f(
    "GatherElements", f("Reshape", wvec(f, w, 1, 2, 3, 4), I([2, 2])), I([[1, 0], [0, 0]]), axis=1))
form("GatherND", "row, constant indices", lambda f, a, b, x, w: f("GatherND", m23(f, a), I([[1, 2], [0, -1]])))
form("GatherND", "row, constant index prefixes", lambda f, a, b, x, w: f(
    "GatherND", f("Reshape", a, I([3, 1, 2])), I([[2], [0]])))
form("GatherND", "a constant table at a structure index", lambda f, a, b, x, w: f(
    "GatherND", F(np.arange(V * 2).reshape(V, 2) - 3.0), f("Reshape", w, I([1, 1]))))
form("GatherND", "batch_dims 1", lambda f, a, b, x, w: f("GatherND", m23(f, a), I([[1], [2]]), batch_dims=1),
     refused="batch_dims")
form("ScatterND", "row, constant indices", lambda f, a, b, x, w: f("ScatterND", m32(f, a), I([[2], [0]]),
                                                                     f("Reshape", head(f, x, 4), I([2, 2]))))
form("ScatterND", "row, element indices", lambda f, a, b, x, w: f("ScatterND", m23(f, a), I([[1, 2], [0, -1]]),
                                                                    head(f, b, 2)))
form("ScatterND", "structure values", lambda f, a, b, x, w: f("ScatterND", wvec(f, w, 1, 2, 3), I([[1]]),
                                                                f("Unsqueeze", w, I([0]))))
form("ScatterND", "row, reduction add", lambda f, a, b, x, w: f("ScatterND", m32(f, a), I([[2]]),
                                                                  f("Reshape", head(f, x, 2), I([1, 2])),
                                                                  reduction="add"), refused="reduction")
form("ScatterElements", "row, axis 1, negative indices", lambda f, a, b, x, w: f(
    "ScatterElements", m23(f, a), I([[-1, 0], [1, -3]]), f("Reshape", head(f, x, 4), I([2, 2])), axis=1))
form("ScatterElements", "row, axis 0", lambda f, a, b, x, w: f(
    "ScatterElements", m32(f, a), I([[2, 0]]), f("Reshape", head(f, b, 2), I([1, 2]))))
form("ScatterElements", "structure values", lambda f, a, b, x, w: f(
    "ScatterElements", wvec(f, w, 1, 2, 3), I([2]), f("Unsqueeze", w, I([0]))))


# ---- matrix products, reductions, normalization -------------------------------------------------------------------

W34 = F(np.linspace(-1, 1, 12).reshape(3, 4))
W42 = F(np.linspace(1, -0.5, 8).reshape(4, 2))
form("MatMul", "row [2,3] by a constant [3,4]", lambda f, a, b, x, w: f("MatMul", m23(f, a), W34))
form("MatMul", "a constant [4,2] by a row [2,3]", lambda f, a, b, x, w: f("MatMul", W42, m23(f, x)))
form("MatMul", "rows [2,3] by [3,2]", lambda f, a, b, x, w: f("MatMul", m23(f, a), m32(f, b)))
form("MatMul", "rows, dot product", lambda f, a, b, x, w: f("MatMul", a, b))
form("MatMul", "row [3] by a constant [3]", lambda f, a, b, x, w: f("MatMul", head(f, x, 3), F([0.5, -1.0, 2.0])))
form("MatMul", "row [6] by a constant [6,4]", lambda f, a, b, x, w: f(
    "MatMul", x, F(np.linspace(-1, 1, 24).reshape(6, 4))))
form("MatMul", "batched row [2,1,3] by a constant [3,4]", lambda f, a, b, x, w: f(
    "MatMul", f("Reshape", a, I([2, 1, 3])), W34))

T233 = F(np.linspace(-1, 1, 18).reshape(2, 3, 3))
form("Einsum", "RNTN's tensor product i,kij,j->k", lambda f, a, b, x, w: f(
    "Einsum", head(f, a, 3), T233, head(f, b, 3), equation="i,kij,j->k"), opset=12)
form("Einsum", "batched bilinear bi,kij,bj->bk", lambda f, a, b, x, w: f(
    "Einsum", f("Reshape", head(f, a, 3), I([1, 3])), T233, f("Reshape", head(f, x, 3), I([1, 3])),
    equation="bi,kij,bj->bk"), opset=12)
form("Einsum", "outer product and a diagonal", lambda f, a, b, x, w: f(
    "Einsum", f("Einsum", a, b, equation="i,j->ij"), equation="ii->i"), opset=12)
form("Einsum", "row-wise dot with a constant, implicit output", lambda f, a, b, x, w: f(
    "Einsum", m23(f, a), F(np.linspace(0, 1, 6).reshape(2, 3)), equation="ij,ij"), opset=12)
form("Einsum", "full contraction of two rows", lambda f, a, b, x, w: f(
    "Einsum", m23(f, a), m32(f, b), equation="ij,ji->"), opset=12)
form("Einsum", "ellipsis and broadcasting", lambda f, a, b, x, w: f(
    "Einsum", f("Reshape", a, I([2, 1, 3])), W34, equation="...i,ij->...j"), opset=12)
form("Einsum", "a transpose and a sum over a row's own axis", lambda f, a, b, x, w: f(
    "Einsum", m23(f, a), m23(f, b), equation="ij,kj->jk"), opset=12)
form("Einsum", "a constant times a row", lambda f, a, b, x, w: f(
    "Einsum", W42, m23(f, x), equation="ab,bc->ca"), opset=12)
form("Einsum", "structure values", lambda f, a, b, x, w: f(
    "Einsum", wvec(f, w, 1, 2), wvec(f, w, 3, 1), equation="i,i->"), opset=12, refused="structure values")
form("CumSum", "over a row", lambda f, a, b, x, w: f("CumSum", x, I(0)))
form("CumSum", "over a [2,3] row's axis 1, reversed", lambda f, a, b, x, w: f("CumSum", m23(f, a), I(1), reverse=1))
form("CumSum", "over axis 0 of [3,2], exclusive", lambda f, a, b, x, w: f("CumSum", m32(f, b), I(-2), exclusive=1))
form("CumSum", "exclusive and reversed over a row of 5", lambda f, a, b, x, w: f(
    "CumSum", head(f, a, 5), I(0), exclusive=1, reverse=1))
form("CumSum", "of a softmax, plus a reversed running sum (a width-1 operand read at fixed elements)",
     lambda f, a, b, x, w: f("Tanh", f("Add", f("CumSum", f("Softmax", a, axis=0), I(0)), f(
         "Slice", f("CumSum", f("Slice", b, I([-1]), I([-(1 << 62)]), I([0]), I([-1])), I(0)), I([-1]),
         I([-(1 << 62)]), I([0]), I([-1])))))
form("CumSum", "structure values", lambda f, a, b, x, w: f("CumSum", wvec(f, w, 1, -2, 3), I(0), exclusive=1))
form("CumSum", "axis from a structure value", lambda f, a, b, x, w: f(
    "CumSum", x, f("Sub", w, w)), refused="axis")
form("MatMul", "constant [2,3] by a batched row [2,3,1]", lambda f, a, b, x, w: f(
    "MatMul", F([[1, 2, 3], [-1, 0.5, 0]]), f("Reshape", f("Concat", a, b, axis=0), I([2, 3, 2]))))
form("MatMul", "structure values", lambda f, a, b, x, w: f("MatMul", wvec(f, w, 1, 2), I([[1, 2], [3, 4]])),
     refused="MatMul of structure values")
form("Gemm", "transA, alpha, beta, C [4]", lambda f, a, b, x, w: f("Gemm", m32(f, a), W34, F([1, 2, 3, 4]),
                                                                      transA=1, alpha=0.5, beta=2.0))
form("Gemm", "transB with a row B, scalar C", lambda f, a, b, x, w: f("Gemm", m23(f, x), m23(f, a), F(0.25),
                                                                         transB=1))
form("Gemm", "transB with a constant B", lambda f, a, b, x, w: f("Gemm", m23(f, x), F(W34.T), F(0.25), transB=1))
form("Gemm", "rows, alpha, no C", lambda f, a, b, x, w: f("Gemm", m23(f, a), m32(f, b), alpha=-1.5))
form("Gemm", "row C [2,4]", lambda f, a, b, x, w: f(
    "Gemm", m23(f, a), W34, f("Reshape", f("Concat", b, head(f, x, 2), axis=0), I([2, 4])), beta=0.5))

REDUCTIONS = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp")


def reduce(f, op, v, axes, **attrs):
    """A Reduce node with `axes` as the attribute (opset 17, but ReduceSum) or the input."""
    if axes is None:
        return f(op, v, **attrs)
    if op == "ReduceSum":
        return f(op, v, I(axes), **attrs)
    return f(op, v, axes=axes, **attrs)


for _op in REDUCTIONS:
    _pre = positive if _op == "ReduceLogSum" else (lambda f, v: v)
    form(_op, "axis -1, keepdims 0", lambda f, a, b, x, w, op=_op, pre=_pre: reduce(f, op, m23(f, pre(f, a)), [-1],
                                                                                   keepdims=0))
    form(_op, "every axis", lambda f, a, b, x, w, op=_op, pre=_pre: reduce(f, op, m23(f, pre(f, x)), None))
    form(_op, "axis 0 of rank 3", lambda f, a, b, x, w, op=_op, pre=_pre: reduce(
        f, op, f("Reshape", pre(f, a), I([2, 1, 3])), [0, -2]))
    form(_op, "axes input", lambda f, a, b, x, w, op=_op, pre=_pre: f(op, m23(f, pre(f, b)), I([1]), keepdims=0),
         opset=18)
form("ReduceSum", "empty axes, noop", lambda f, a, b, x, w: f("ReduceSum", m23(f, a), np.zeros(0, np.int64),
                                                                noop_with_empty_axes=1))
for _op in ("ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd"):
    form(_op, "structure values", lambda f, a, b, x, w, op=_op: reduce(
        f, op, f("Reshape", wvec(f, w, 1, -2, 3, 1), I([2, 2])), [1], keepdims=1))
form("ReduceMean", "structure values", lambda f, a, b, x, w: reduce(f, "ReduceMean", wvec(f, w, 1, 3), [0]),
     refused="ReduceMean of structure values")

form("Softmax", "default axis", lambda f, a, b, x, w: f("Softmax", m23(f, x)))
form("Softmax", "axis 0", lambda f, a, b, x, w: f("Softmax", m23(f, a), axis=0))
form("Softmax", "1-D", lambda f, a, b, x, w: f("Softmax", x))
form("LogSoftmax", "default axis", lambda f, a, b, x, w: f("LogSoftmax", m23(f, x)))
form("LogSoftmax", "axis -2 of rank 3", lambda f, a, b, x, w: f("LogSoftmax", f("Reshape", a, I([1, 2, 3])), axis=-2))
form("LayerNormalization", "last axis, scale and bias", lambda f, a, b, x, w: f(
    "LayerNormalization", m23(f, x), F([1.0, 0.5, -2.0]), F([0.1, 0.2, 0.3])))
form("LayerNormalization", "axis 0, mean and inverse deviation", lambda f, a, b, x, w: flat_all(f, f(
    "LayerNormalization", m23(f, a), F(np.full((2, 3), 1.5)), axis=0, epsilon=1e-3, outs=3)))
form("LayerNormalization", "per-node scale", lambda f, a, b, x, w: f("LayerNormalization", x, a, axis=-1))
form("BatchNormalization", "[N, C]", lambda f, a, b, x, w: f("BatchNormalization", m23(f, x), F([1, 2, 0.5]),
                                                               F([0, 0.1, -1]), F([0.5, 0, -0.5]), F([1, 4, 0.25])))
form("BatchNormalization", "[N, C, D]", lambda f, a, b, x, w: f(
    "BatchNormalization", f("Reshape", a, I([1, 3, 2])), F([1, 2, 0.5]), F([0, 0.1, -1]), F([0.5, 0, -0.5]),
    F([1, 4, 0.25]), epsilon=0.01))
form("BatchNormalization", "statistics computed per node", lambda f, a, b, x, w: f(
    "BatchNormalization", m23(f, x), F([1, 2, 0.5]), F([0, 0.1, -1]), head(f, a, 3), F([1, 4, 0.25])),
    refused="computed statistics")

for _op, _args in (("ArgMax", {}), ("ArgMin", {"keepdims": 0}), ("NonZero", None), ("Unique", None),
                   ("TopK", "k")):
    def _build(f, a, b, x, w, op=_op, args=_args):
        if args == "k":
            return f("TopK", x, I([2]), outs=2)[1]
        if args is None:
            return f(op, f("Greater", x, F(0.0))) if op == "NonZero" else f(op, x)
        return f(op, m23(f, x), axis=1, **args)
    form(_op, "a row", _build, refused="data-dependent")
form("ArgMax", "structure values", lambda f, a, b, x, w: f("ArgMax", wvec(f, w, 1, -1, 2)), refused="data-dependent")

# ---- control flow -----------------------------------------------------------------------------------------------

R6 = (TensorProto.FLOAT, [H])


def if_on(f, cond, then_fn, else_fn, out=R6):
    return f("If", cond, then_branch=f.graph("then", then_fn, (), [out]),
             else_branch=f.graph("else", else_fn, (), [out]))


form("If", "structure predicate", lambda f, a, b, x, w: if_on(
    f, f("Less", w, I(2)), lambda g: g("Add", a, b), lambda g: g("Mul", a, x)), cases=True)
form("If", "nested, on structure predicates", lambda f, a, b, x, w: if_on(
    f, f("Less", w, I(3)), lambda g: if_on(g, g("Equal", w, I(0)), lambda h: h("Neg", x), lambda h: h("Tanh", b)),
    lambda g: g("Sub", a, b)), cases=True)
form("If", "per-node float condition", lambda f, a, b, x, w: if_on(
    f, f("Greater", f("ReduceSum", a, I([0]), keepdims=0), F(0.0)), lambda g: g("Add", a, F(1.0)),
    lambda g: g("Sigmoid", x)))
form("If", "constant condition", lambda f, a, b, x, w: if_on(f, np.array(False), lambda g: g("Add", a, b),
                                                             lambda g: g("Sub", a, b)))
form("If", "structure outputs", lambda f, a, b, x, w: if_on(
    f, f("Greater", w, I(1)), lambda g: g("Add", w, I([1, 2])), lambda g: g("Mul", w, I([3, -3])),
    out=(TensorProto.INT64, [2])), cases=True)


def loop_body(g, i, cond, c):
    """c <- c / 2 + a * i (a: the enclosing body's child row); scan output sin(c)."""
    nc = g("Add", g("Mul", c, F(0.5)), g("Mul", "a", g("Cast", i, to=TensorProto.FLOAT)))
    return [g("Identity", cond), nc, g("Sin", nc)]


form("Loop", "constant trip count, carried row and scan output", lambda f, a, b, x, w: flat_all(f, f(
    "Loop", I(3), "", x, body=f.graph("body", loop_body, [(TensorProto.INT64, []), (TensorProto.BOOL, []), R6],
                                      [(TensorProto.BOOL, []), R6, R6]), outs=2)))
form("Loop", "trip count from a shape, condition kept", lambda f, a, b, x, w: f(
    "Loop", f("Size", m23(f, a)), np.array(True), b, body=f.graph(
        "body", lambda g, i, cond, c: [g("Identity", cond), g("Add", c, g("Cast", i, to=TensorProto.FLOAT))],
        [(TensorProto.INT64, []), (TensorProto.BOOL, []), R6], [(TensorProto.BOOL, []), R6])))
form("Loop", "a per-node trip count", lambda f, a, b, x, w: f(
    "Loop", w, "", b, body=f.graph(
        "body", lambda g, i, cond, c: [g("Identity", cond), g("Add", c, F(1.0))],
        [(TensorProto.INT64, []), (TensorProto.BOOL, []), R6], [(TensorProto.BOOL, []), R6])),
    refused="per-node number of times")


def scan_body(g, s, row):
    ns = g("Add", g("Mul", s, F(0.5)), row)
    return [ns, g("Mul", ns, row)]


R2 = (TensorProto.FLOAT, [2])
form("Scan", "over the rows of [3,2], state and output", lambda f, a, b, x, w: flat_all(f, f(
    "Scan", head(f, b, 2), m32(f, a), num_scan_inputs=1, body=f.graph("body", scan_body, [R2, R2], [R2, R2]),
    outs=2)))
form("Scan", "reversed input, output along axis 1", lambda f, a, b, x, w: f(
    "Scan", head(f, b, 2), m32(f, a), num_scan_inputs=1, scan_input_directions=[1], scan_output_axes=[1],
    body=f.graph("body", scan_body, [R2, R2], [R2, R2]), outs=2)[1])

# ---- sequences --------------------------------------------------------------------------------------------------

form("SequenceConstruct", "rows, read back", lambda f, a, b, x, w: f(
    "Add", f("SequenceAt", f("SequenceConstruct", a, b, x), I(-1)),
    f("SequenceAt", f("SequenceConstruct", a, b), I(0))))
form("SequenceAt", "negative position", lambda f, a, b, x, w: f("SequenceAt", f("SequenceConstruct", a, b, x), I(-2)))
form("SequenceInsert", "at a position and at the end", lambda f, a, b, x, w: f(
    "ConcatFromSequence", f("SequenceInsert", f("SequenceInsert", f("SequenceConstruct", a), x, I(0)), b), axis=0))
form("SequenceErase", "first and default (last)", lambda f, a, b, x, w: f(
    "ConcatFromSequence", f("SequenceErase", f("SequenceErase", f("SequenceConstruct", a, b, x, a), I(0))), axis=0))
form("SequenceLength", "of a built sequence", lambda f, a, b, x, w: f(
    "Mul", x, f("Cast", f("SequenceLength", f("SequenceConstruct", a, b, x)), to=TensorProto.FLOAT)))
form("SequenceEmpty", "then inserts", lambda f, a, b, x, w: f(
    "ConcatFromSequence", f("SequenceInsert", f("SequenceInsert", f("SequenceEmpty", dtype=TensorProto.FLOAT), b), a),
    axis=0))
form("SplitToSequence", "every row, keepdims 0, stacked on a new axis", lambda f, a, b, x, w: f(
    "ConcatFromSequence", f("SplitToSequence", m32(f, a), axis=0, keepdims=0), axis=1, new_axis=1))
form("SplitToSequence", "scalar split size", lambda f, a, b, x, w: f(
    "SequenceAt", f("SplitToSequence", x, I(4)), I(-1)))
form("SplitToSequence", "sizes", lambda f, a, b, x, w: f("SequenceAt", f("SplitToSequence", m23(f, a), I([1, 2]),
                                                                         axis=1), I(1)))
form("ConcatFromSequence", "axis -1", lambda f, a, b, x, w: f(
    "ConcatFromSequence", f("SequenceConstruct", m23(f, a), m23(f, b)), axis=-1))
form("ConcatFromSequence", "new axis 0", lambda f, a, b, x, w: f(
    "ConcatFromSequence", f("SequenceConstruct", a, x), axis=0, new_axis=1))

# ---- the ONNX recurrent ops -------------------------------------------------------------------------------------

_rw = np.random.default_rng(3)


def rw(*shape):
    return F(_rw.uniform(-0.7, 0.7, shape))


def seq_x(f, x):
    """X [seq 2, batch 1, input 3] from the node's feature row."""
    return f("Reshape", x, I([2, 1, 3]))


def state0(f, v, dirs=1):
    return f("Reshape", head(f, v, 2 * dirs), I([dirs, 1, 2]))


LSTM_W, LSTM_R, LSTM_B = rw(2, 8, 3), rw(2, 8, 2), rw(2, 16)
GRU_W, GRU_R, GRU_B = rw(2, 6, 3), rw(2, 6, 2), rw(2, 12)
RNN_W, RNN_R, RNN_B = rw(2, 2, 3), rw(2, 2, 2), rw(2, 4)
form("LSTM", "forward, bias, initial states", lambda f, a, b, x, w: flat_all(f, f(
    "LSTM", seq_x(f, x), LSTM_W[:1], LSTM_R[:1], LSTM_B[:1], "", state0(f, a), state0(f, b), hidden_size=2, outs=3)))
form("LSTM", "bidirectional, no initial state", lambda f, a, b, x, w: flat_all(f, f(
    "LSTM", seq_x(f, x), LSTM_W, LSTM_R, LSTM_B, direction="bidirectional", hidden_size=2, outs=3)))
form("LSTM", "reverse, clip, no bias", lambda f, a, b, x, w: flat_all(f, f(
    "LSTM", seq_x(f, x), LSTM_W[1:], LSTM_R[1:], "", "", state0(f, a), direction="reverse", clip=0.5,
    hidden_size=2, outs=2)))
form("LSTM", "activations", lambda f, a, b, x, w: flat_all(f, f(
    "LSTM", seq_x(f, x), LSTM_W[:1], LSTM_R[:1], LSTM_B[:1], activations=["Sigmoid", "Relu", "Tanh"], hidden_size=2,
    outs=2)))
form("LSTM", "bidirectional, activations per direction", lambda f, a, b, x, w: flat_all(f, f(
    "LSTM", seq_x(f, x), LSTM_W, LSTM_R, LSTM_B, direction="bidirectional", hidden_size=2,
    activations=["Sigmoid", "Tanh", "Tanh", "Sigmoid", "Relu", "Relu"], outs=2)))
form("LSTM", "peepholes", lambda f, a, b, x, w: f("LSTM", seq_x(f, x), LSTM_W[:1], LSTM_R[:1], "", "", "", "",
                                                   rw(1, 6), hidden_size=2), refused="peepholes")
form("GRU", "forward, bias, initial state", lambda f, a, b, x, w: flat_all(f, f(
    "GRU", seq_x(f, x), GRU_W[:1], GRU_R[:1], GRU_B[:1], "", state0(f, a), hidden_size=2, outs=2)))
form("GRU", "linear before reset, initial state", lambda f, a, b, x, w: flat_all(f, f(
    "GRU", seq_x(f, x), GRU_W[:1], GRU_R[:1], GRU_B[:1], "", state0(f, a), linear_before_reset=1, hidden_size=2,
    outs=2)))
form("GRU", "linear before reset, no initial state", lambda f, a, b, x, w: flat_all(f, f(
    "GRU", seq_x(f, x), GRU_W[1:], GRU_R[1:], GRU_B[1:], linear_before_reset=1, hidden_size=2, outs=2)))
form("GRU", "bidirectional, no bias", lambda f, a, b, x, w: flat_all(f, f(
    "GRU", seq_x(f, x), GRU_W, GRU_R, "", "", state0(f, b, 2), direction="bidirectional", hidden_size=2, outs=2)))
form("GRU", "bidirectional, activations per direction", lambda f, a, b, x, w: flat_all(f, f(
    "GRU", seq_x(f, x), GRU_W, GRU_R, GRU_B, direction="bidirectional", hidden_size=2,
    activations=["Sigmoid", "Tanh", "Sigmoid", "Relu"], outs=2)))
form("RNN", "forward, bias, initial state", lambda f, a, b, x, w: flat_all(f, f(
    "RNN", seq_x(f, x), RNN_W[:1], RNN_R[:1], RNN_B[:1], "", state0(f, a), hidden_size=2, outs=2)))
form("RNN", "relu, reverse, clip", lambda f, a, b, x, w: flat_all(f, f(
    "RNN", seq_x(f, x), RNN_W[1:], RNN_R[1:], RNN_B[1:], activations=["Relu"], direction="reverse", clip=1.0,
    hidden_size=2, outs=2)))
form("RNN", "bidirectional, activations per direction", lambda f, a, b, x, w: flat_all(f, f(
    "RNN", seq_x(f, x), RNN_W, RNN_R, RNN_B, direction="bidirectional", activations=["Tanh", "Sigmoid"],
    hidden_size=2, outs=2)))
form("RNN", "layout 1", lambda f, a, b, x, w: f("RNN", f("Reshape", x, I([1, 2, 3])), RNN_W[:1], RNN_R[:1],
                                                 layout=1, hidden_size=2), refused="layout 1")


# ---- state tables and runtime tensors: reads and writes (the Loop model) ---------------------------------------------


def pair(f, i, j):
    """[i, j] from two scalars."""
    return f("Concat", f("Unsqueeze", i, I([0])), f("Unsqueeze", j, I([0])), axis=0)


def rows_count(f, n):
    return f("Gather", f("Shape", n.h), I(0))


def at_v(f, n):
    return f("Reshape", n.v, I([1, 1]))


loop_form("Gather", "the state table at the children", 2 * H, lambda f, n: f("Gather", n.h, pair(f, n.l, n.r)))
loop_form("Gather", "the state table at a negative index (l - N)", H, lambda f, n: f(
    "Gather", n.h, f("Sub", n.l, rows_count(f, n))))
loop_form("Gather", "a runtime tensor at the children", 2 * H, lambda f, n: f("Gather", n.feats, pair(f, n.r, n.l)))
loop_form("Gather", "integer runtime tensors at the children", 3, lambda f, n: f(
    "Concat", f("Unsqueeze", f("Gather", n.words, n.l), I([0])), f("Gather", n.pairs, n.r), axis=0))
loop_form("Gather", "a column (axis 1) of a runtime tensor, then a row", 1, lambda f, n: f(
    "Gather", f("Gather", n.pairs, I([1]), axis=1), n.l))
loop_form("Gather", "a constant table at a child's word", H, lambda f, n: f("Gather", n.E, f("Gather", n.words, n.l)))
loop_form("Gather", "columns (axis 1) of the table", 2, lambda f, n: f(
    "Gather", f("Gather", n.h, I([0, 2]), axis=1), n.l))  # the whole table's columns, then a row of them
loop_form("GatherND", "the state table at the children", 2 * H, lambda f, n: f(
    "GatherND", n.h, f("Reshape", pair(f, n.l, n.r), I([2, 1]))))
loop_form("GatherND", "elements of the table", 2, lambda f, n: f(
    "GatherND", n.h, f("Concat", f("Reshape", pair(f, n.l, n.r), I([2, 1])), I([[2], [-1]]), axis=1)))
loop_form("GatherND", "a runtime tensor at a child", H, lambda f, n: f(
    "GatherND", n.feats, f("Reshape", n.r, I([1, 1]))))
loop_form("GatherElements", "the state table at the children", 2 * H, lambda f, n: f(
    "GatherElements", n.h, f("Expand", f("Reshape", pair(f, n.l, n.r), I([2, 1])), I([2, H])), axis=0))
loop_form("GatherElements", "part of a runtime tensor's row", 3, lambda f, n: f(
    "GatherElements", n.feats, f("Expand", f("Reshape", n.l, I([1, 1])), I([1, 3])), axis=0))
loop_form("Slice", "a one-row window of the table", H, lambda f, n: f(
    "Slice", n.h, f("Unsqueeze", n.l, I([0])), f("Unsqueeze", f("Add", n.l, I(1)), I([0]))))
loop_form("Slice", "a one-row window, axes and steps given", H, lambda f, n: f(
    "Slice", n.h, f("Unsqueeze", n.r, I([0])), f("Unsqueeze", f("Add", n.r, I(1)), I([0])), I([0]), I([1])))
loop_form("Slice", "a one-row window of a runtime tensor", H, lambda f, n: f(
    "Slice", n.feats, f("Unsqueeze", n.r, I([0])), f("Unsqueeze", f("Add", n.r, I(1)), I([0]))))
loop_form("Slice", "a strided slice of the table", H, lambda f, n: f(
    "Slice", n.h, f("Unsqueeze", n.l, I([0])), f("Unsqueeze", f("Add", n.l, I(1)), I([0])), I([0]), I([2])),
    refused="strided slice")
loop_form("Slice", "a window of the table's columns", 3, lambda f, n: f(
    "Slice", n.h, pair(f, n.l, I(1)), pair(f, f("Add", n.l, I(1)), I(4))), refused="columns")
loop_form("Shape", "of the state table", 2, lambda f, n: f("Shape", n.h))
loop_form("Size", "of the state table", 1, lambda f, n: f("Size", n.h))


def scatter_nd(**attrs):
    return lambda f, table, n, row: f("ScatterND", table, at_v(f, n), f("Unsqueeze", row, I([0])), **attrs)


def scatter_elements(**attrs):
    def write(f, table, n, row):
        return f("ScatterElements", table, f("Expand", at_v(f, n), I([1, H])), f("Unsqueeze", row, I([0])), axis=0,
                 **attrs)
    return write


loop_form("ScatterND", "one row at [[v]]", H)
loop_form("ScatterND", "one row at [v]", H, write=lambda f, table, n, row: f(
    "ScatterND", table, f("Unsqueeze", n.v, I([0])), row))
loop_form("ScatterND", "every element of the row, in order", H, write=lambda f, table, n, row: f(
    "ScatterND", table, f("Concat", f("Expand", at_v(f, n), I([H, 1])), I(np.arange(H).reshape(H, 1)), axis=1), row))
loop_form("ScatterND", "two elements of the row (the rest kept)", H, init=0.5, write=lambda f, table, n, row: f(
    "ScatterND", table, f("Concat", f("Expand", at_v(f, n), I([2, 1])), I([[4], [-6]]), axis=1), head(f, row, 2)))
loop_form("ScatterND", "a write read back in the same step", H, write=lambda f, table, n, row: f(
    "ScatterND", f("ScatterND", table, at_v(f, n), f("Unsqueeze", f("Mul", row, F(0.5)), I([0]))), at_v(f, n),
    f("Unsqueeze", f("Add", f("Gather", f("ScatterND", table, at_v(f, n), f("Unsqueeze", f("Mul", row, F(0.5)),
                                                                                      I([0]))), n.v), row), I([0]))))
loop_form("ScatterND", "reduction add", H, init=1.0, write=scatter_nd(reduction="add"))
loop_form("ScatterND", "reduction mul", H, init=2.0, write=scatter_nd(reduction="mul"))
loop_form("ScatterND", "reduction max", H, init=0.25, write=scatter_nd(reduction="max"), opset=18)
loop_form("ScatterND", "reduction min", H, init=0.25, write=scatter_nd(reduction="min"), opset=18)
loop_form("ScatterElements", "one row along axis 0", H, write=scatter_elements())
loop_form("ScatterElements", "reduction add", H, init=-1.0, write=scatter_elements(reduction="add"))
loop_form("ScatterElements", "reduction mul", H, init=3.0, write=scatter_elements(reduction="mul"))
loop_form("ScatterElements", "reduction max", H, init=0.1, write=scatter_elements(reduction="max"), opset=18)
loop_form("ScatterElements", "reduction min", H, init=0.1, write=scatter_elements(reduction="min"), opset=18)
loop_form("ScatterElements", "part of the row (the rest kept)", H, init=0.5, write=lambda f, table, n, row: f(
    "ScatterElements", table, f("Expand", at_v(f, n), I([1, 2])), f("Reshape", head(f, row, 2), I([1, 2])), axis=0))
loop_form("ScatterElements", "along axis 1 of the table", H, write=lambda f, table, n, row: f(
    "ScatterElements", table, f("Expand", at_v(f, n), I([1, H])), f("Unsqueeze", row, I([0])), axis=1),
    refused="along axis 1")
loop_form("Concat", "torch.cat write [t[:v], row, t[v+1:]]", H, write=lambda f, table, n, row: f(
    "Concat", f("Slice", table, I([0]), f("Unsqueeze", n.v, I([0]))), f("Unsqueeze", row, I([0])),
    f("Slice", table, f("Unsqueeze", f("Add", n.v, I(1)), I([0])), I([2 ** 62])), axis=0))
loop_form("Concat", "torch.cat write to the table's length", H, write=lambda f, table, n, row: f(
    "Concat", f("Slice", table, I([0]), f("Unsqueeze", n.v, I([0]))), f("Unsqueeze", row, I([0])),
    f("Slice", table, f("Unsqueeze", f("Add", n.v, I(1)), I([0])), f("Slice", f("Shape", table), I([0]), I([1]))),
    axis=0))
loop_form("Concat", "table pieces that are not [t[:v], row, t[v+1:]]", H, write=lambda f, table, n, row: f(
    "Concat", f("Slice", table, I([0]), f("Unsqueeze", n.v, I([0]))), f("Unsqueeze", row, I([0])),
    f("Slice", table, f("Unsqueeze", f("Add", n.v, I(2)), I([0])), I([2 ** 62])), f("Unsqueeze", row, I([0])),
    axis=0), refused="Concat of state-table pieces")


# ---- edge values and more refusals --------------------------------------------------------------------------------

form("Max", "rows with NaN", lambda f, a, b, x, w: f("Max", f("Sqrt", x), a))
form("Min", "rows with NaN", lambda f, a, b, x, w: f("Min", b, f("Log", x)))
form("Clip", "min above max", lambda f, a, b, x, w: f("Clip", x, F(1.0), F(-1.0)))
form("Clip", "NaN input", lambda f, a, b, x, w: f("Clip", f("Sqrt", x), F(0.5), F(1.5)))
form("Sign", "NaN and zeros", lambda f, a, b, x, w: f("Sign", f("Mul", f("Sqrt", x), x)))
form("Pow", "zero to negative powers", lambda f, a, b, x, w: f("Pow", x, F(-1.0)))
form("Equal", "rows with NaN", lambda f, a, b, x, w: f("Equal", f("Sqrt", x), f("Sqrt", x)))
form("Cast", "NaN to bool", lambda f, a, b, x, w: f("Cast", f("Sqrt", x), to=TensorProto.BOOL))
form("Mod", "structure values by structure values", lambda f, a, b, x, w: f(
    "Mod", f("Mul", ws(f, w), I([7, -7])), f("Add", w, I(1))))
form("PRelu", "slope [2,1]", lambda f, a, b, x, w: f("PRelu", m23(f, x), F([[0.5], [-2.0]])))
form("Pad", "a per-node value", lambda f, a, b, x, w: f("Pad", m23(f, a), I([1, 0, 0, 0]),
                                                         f("ReduceMax", b, keepdims=0)), refused="computed value")
form("Gather", "a row at structure indices [2]", lambda f, a, b, x, w: f(
    "Gather", m32(f, a), f("Concat", f("Unsqueeze", f("Mod", w, I(3)), I([0])), I([1]), axis=0)),
    refused="at a structure index")
form("GatherElements", "a row at structure indices", lambda f, a, b, x, w: f(
    "GatherElements", m23(f, a), f("Reshape", f("Mod", wvec(f, w, 1, 2), I(3)), I([1, 2])), axis=1),
    refused="at a structure index")
form("GatherND", "a row at a structure index", lambda f, a, b, x, w: f(
    "GatherND", m32(f, a), f("Reshape", f("Mod", w, I(3)), I([1, 1]))), refused="at a structure index")
form("ScatterND", "a row at a structure index", lambda f, a, b, x, w: f(
    "ScatterND", m32(f, a), f("Reshape", f("Mod", w, I(3)), I([1, 1])), f("Reshape", head(f, x, 2), I([1, 2]))),
    refused="not a state table")
form("ScatterElements", "a row at structure indices", lambda f, a, b, x, w: f(
    "ScatterElements", m32(f, a), f("Reshape", f("Mod", w, I(3)), I([1, 1])), f("Reshape", head(f, x, 1), I([1, 1]))),
    refused="not a state table")
form("MatMul", "row [2,3] by a constant [3]", lambda f, a, b, x, w: f("MatMul", m23(f, a), F([1.0, -2.0, 0.5])))
form("MatMul", "a constant [3] by a row [3,2]", lambda f, a, b, x, w: f("MatMul", F([1.0, -2.0, 0.5]), m32(f, a)))
form("MatMul", "row [2] by a row [2,3]", lambda f, a, b, x, w: f("MatMul", head(f, b, 2), m23(f, a)))
form("MatMul", "batched rows [2,1,3] by [2,3,1]", lambda f, a, b, x, w: f(
    "MatMul", f("Reshape", a, I([2, 1, 3])), f("Reshape", b, I([2, 3, 1]))))
form("Gemm", "C [2,1]", lambda f, a, b, x, w: f("Gemm", m23(f, a), W34, f("Reshape", head(f, x, 2), I([2, 1]))))
form("ReduceMax", "empty axes input: every axis", lambda f, a, b, x, w: f("ReduceMax", m23(f, a), np.zeros(0, np.int64),
                                                                           keepdims=0), opset=18)
form("ReduceLogSumExp", "large values", lambda f, a, b, x, w: f("ReduceLogSumExp", f("Mul", x, F(40.0)), axes=[0]))
form("LogSoftmax", "large values", lambda f, a, b, x, w: f("LogSoftmax", f("Mul", m23(f, x), F(60.0))))
form("Softmax", "large values", lambda f, a, b, x, w: f("Softmax", f("Mul", x, F(60.0))))
form("LayerNormalization", "bias a row", lambda f, a, b, x, w: f("LayerNormalization", m23(f, x), F([1.0, 0.5, 2.0]),
                                                                  m23(f, b)))
form("BatchNormalization", "training mode", lambda f, a, b, x, w: f(
    "BatchNormalization", m23(f, x), F([1, 2, 0.5]), F([0, 0.1, -1]), F([0.5, 0, -0.5]), F([1, 4, 0.25]),
    training_mode=1, outs=3)[0], refused="training mode")
form("Loop", "a condition that ends it early", lambda f, a, b, x, w: f(
    "Loop", I(5), np.array(True), b, body=f.graph(
        "body", lambda g, i, cond, c: [g("Less", i, I(1)), g("Add", c, "x")],
        [(TensorProto.INT64, []), (TensorProto.BOOL, []), R6], [(TensorProto.BOOL, []), R6])))
form("Scan", "two inputs, reversed output", lambda f, a, b, x, w: f(
    "Scan", head(f, b, 2), m32(f, a), m32(f, x), num_scan_inputs=2, scan_output_directions=[1], body=f.graph(
        "body", lambda g, s, r1, r2: [g("Add", s, g("Mul", r1, r2)), g("Sub", r1, s)], [R2, R2, R2], [R2, R2]),
    outs=2)[1])
form("LSTM", "a batch of 2, Y only", lambda f, a, b, x, w: f(
    "LSTM", f("Reshape", x, I([1, 2, 3])), LSTM_W[:1], LSTM_R[:1], LSTM_B[:1], "", f("Reshape", head(f, a, 4),
                                                                                   I([1, 2, 2])), hidden_size=2))
form("GRU", "a batch of 2, clip", lambda f, a, b, x, w: flat_all(f, f(
    "GRU", f("Reshape", x, I([1, 2, 3])), GRU_W[:1], GRU_R[:1], GRU_B[:1], "",
    f("Reshape", head(f, a, 4), I([1, 2, 2])), clip=0.3, hidden_size=2, outs=2)))
form("RNN", "a batch of 2, no bias", lambda f, a, b, x, w: flat_all(f, f(
    "RNN", f("Reshape", x, I([1, 2, 3])), RNN_W[1:], RNN_R[1:], hidden_size=2, outs=2)))

form("Cast", "structure value to bool", lambda f, a, b, x, w: f("Cast", f("Mul", ws(f, w), I([1, 0, -1])),
                                                                to=TensorProto.BOOL))
form("Cast", "structure predicate to int64", lambda f, a, b, x, w: f(
    "Mul", f("Cast", f("Less", w, I([1, 3])), to=TensorProto.INT64), I([5, -5])))
form("Cast", "row to float64", lambda f, a, b, x, w: f("Cast", f("Cast", x, to=TensorProto.DOUBLE),
                                                       to=TensorProto.FLOAT), refused="float64")
form("Gemm", "constant A, alpha", lambda f, a, b, x, w: f("Gemm", F(W34.T), m32(f, a), alpha=2.0))
form("ReduceSum", "middle axis of rank 3", lambda f, a, b, x, w: f("ReduceSum", f("Reshape", a, I([1, 3, 2])), I([1])))
form("ReduceMax", "middle axis of rank 3", lambda f, a, b, x, w: reduce(f, "ReduceMax", f("Reshape", x, I([1, 3, 2])),
                                                                         [-2], keepdims=0))
form("LayerNormalization", "axis -2 of rank 3", lambda f, a, b, x, w: f(
    "LayerNormalization", f("Reshape", a, I([1, 2, 3])), F(np.linspace(0.5, 2, 6).reshape(2, 3)), axis=-2))
form("ConcatFromSequence", "structure values", lambda f, a, b, x, w: f(
    "ConcatFromSequence", f("SequenceConstruct", wvec(f, w, 1, 2), ws(f, f("Unsqueeze", w, I([0])))), axis=0))
loop_form("Identity", "of a written table", H, write=lambda f, table, n, row: f("Identity", f(
    "ScatterND", f("Identity", table), at_v(f, n), f("Unsqueeze", row, I([0])))))
loop_form("If", "choosing which child's row to read", H, lambda f, n: f(
    "If", f("Less", n.l, n.r), then_branch=f.graph("then", lambda g: g("Gather", n.h, n.r), (), [R6]),
    else_branch=f.graph("else", lambda g: g("Add", g("Gather", n.h, n.l), F(1.0)), (), [R6])), cases=True)
loop_form("Where", "choosing the row index", H, lambda f, n: f("Gather", n.h, f("Where", f("Less", n.l, n.r), n.r,
                                                                                  n.l)))
loop_form("Max", "of the child ids, as a row index", H, lambda f, n: f("Gather", n.h, f("Max", n.l, n.r)))
loop_form("Cast", "child ids as floats", H, lambda f, n: f(
    "Add", n.x, f("Cast", f("Sub", n.l, f("Mul", n.r, I(2))), to=TensorProto.FLOAT)))
loop_form("Shape", "of runtime tensors", 3, lambda f, n: f("Concat", f("Shape", n.feats), f("Shape", n.words), axis=0))
loop_form("Size", "of a runtime tensor", 1, lambda f, n: f("Size", n.pairs))
loop_form("Range", "to the table's length", H, lambda f, n: f("Range", I(0), rows_count(f, n), I(1)),
          refused="not constant")
loop_form("ScatterND", "an element written twice (the last wins)", H, init=0.5, write=lambda f, table, n, row: f(
    "ScatterND", table, f("Concat", f("Expand", at_v(f, n), I([2, 1])), I([[1], [1]]), axis=1), head(f, row, 2)))
loop_form("ScatterND", "an element added twice", H, init=0.5, write=lambda f, table, n, row: f(
    "ScatterND", table, f("Concat", f("Expand", at_v(f, n), I([2, 1])), I([[1], [1]]), axis=1), head(f, row, 2),
    reduction="add"))

form("Expand", "a scalar row", lambda f, a, b, x, w: f("Expand", f("ReduceSum", a, keepdims=0), I([2, 3])))
form("Unsqueeze", "a scalar row", lambda f, a, b, x, w: f("Unsqueeze", f("ReduceMax", x, keepdims=0), I([0, 1])))
form("Where", "row condition, structure values", lambda f, a, b, x, w: f(
    "Where", f("Greater", head(f, a, 2), F(0.0)), f("Mul", ws(f, w), I([2, 3])), I([-1, 7])))
form("Where", "row condition [3] over [2,3]", lambda f, a, b, x, w: f(
    "Where", f("Less", head(f, x, 3), F(0.0)), m23(f, a), F(2.0)))
form("If", "per-node float condition, structure outputs", lambda f, a, b, x, w: if_on(
    f, f("Greater", f("ReduceSum", a, I([0]), keepdims=0), F(0.0)), lambda g: g("Add", w, I([1, 2])),
    lambda g: g("Mul", w, I([3, -3])), out=(TensorProto.INT64, [2])), refused="data-dependent condition")
form("Equal", "structure predicates", lambda f, a, b, x, w: f("Equal", f("Less", w, I([2, 3])),
                                                               f("Less", w, I([3, 1]))))
form("Sum", "one row", lambda f, a, b, x, w: f("Sum", a))
form("Gather", "an integer constant table at a structure index", lambda f, a, b, x, w: f(
    "Add", f("Gather", I(np.arange(V * 2).reshape(V, 2) - 4), w), w))
form("Gather", "a constant [V,2,3] table at a structure index", lambda f, a, b, x, w: f(
    "Gather", F(np.arange(V * 6).reshape(V, 2, 3) * 0.25), w))
form("GatherND", "a constant table at a structure element index", lambda f, a, b, x, w: f(
    "GatherND", F(np.arange(V * 2).reshape(V, 2) - 3.0), f("Reshape", f("Concat", f("Unsqueeze", w, I([0])), I([1]),
                                                                         axis=0), I([1, 2]))),
    refused="GatherND")

loop_form("Reshape", "the table to its own shape", H, lambda f, n: f(
    "Gather", f("Reshape", n.h, f("Shape", n.h)), n.l))
loop_form("Gather", "the state table at a constant row (the last)", H, lambda f, n: f("Gather", n.h, I(-1)))
loop_form("Gather", "the state table at a constant row (the first)", H, lambda f, n: f("Gather", n.h, I(0)))

TABLE = (TensorProto.FLOAT, ["N", H])
loop_form("If", "writes inside the branches", H, cases=True, write=lambda f, table, n, row: f(
    "If", f("Less", f("Gather", n.words, n.v), I(2)),
    then_branch=f.graph("then", lambda g: g("ScatterND", table, at_v(g, n), g("Unsqueeze", row, I([0]))), (), [TABLE]),
    else_branch=f.graph("else", lambda g: g("ScatterND", table, at_v(g, n), g("Unsqueeze", g("Neg", row), I([0]))),
                        (), [TABLE])))

form("Where", "structure condition, a row and structure values", lambda f, a, b, x, w: f(
    "Where", f("Less", w, I([1, 3, 4])), head(f, a, 3), f("Cast", f("Mul", ws(f, w), I([1, 2, 3])),
                                                           to=TensorProto.FLOAT)))
form("Pad", "structure values, reflect", lambda f, a, b, x, w: f("Pad", wvec(f, w, 1, 2, 3), I([2, 1]), mode="reflect"))
form("Squeeze", "structure values", lambda f, a, b, x, w: f("Squeeze", f("Reshape", wvec(f, w, 1, 2), I([1, 2, 1])),
                                                            I([0])))
form("SplitToSequence", "structure values", lambda f, a, b, x, w: f(
    "SequenceAt", f("SplitToSequence", wvec(f, w, 1, 2, 3, 4), I([1, 3])), I(1)))
form("Expand", "a row predicate", lambda f, a, b, x, w: f("Expand", f("Greater", head(f, a, 3), F(0.0)), I([2, 3])))


# =================================================================================================================
# the tests

GROUPS = _groups()
OPS = sorted({f.op for f in FORMS})
# Handlers with no form here, and why.
NOT_COVERED = {"Scatter": "removed from ONNX at opset 11; the lowering of the shared models needs opset 13 or later"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return Runs(tmp_path_factory.mktemp("forms"))


def _params():
    out = [pytest.param(op, None, id=op) for op in OPS if any(f.op == op and f.xfail is None for f in FORMS)]
    for f in FORMS:
        if f.xfail is not None:
            out.append(pytest.param(f.op, f.key, id=f"{f.op}-{f.name}",
                                    marks=pytest.mark.xfail(strict=True, reason=f.xfail)))
    return out


@pytest.mark.parametrize("op,only", _params())
def test_op(runs, op, only):
    forms = [f for f in FORMS if f.op == op and (f.key == only if only else f.xfail is None)]
    failures = [f"{f.name}: {problem}" for f in forms if (problem := check_form(runs, f)) is not None]
    assert not failures, f"{op}:\n" + "\n".join(failures)


def test_every_handler_has_forms():
    missing = sorted(set(HANDLERS) - set(OPS) - set(NOT_COVERED))
    assert not missing, f"handlers without a per-op test: {missing}"

"""What the zoo models share: weight init, the numpy visit loop of the Loop semantics, and the ONNX builder pieces
of the TreeRec and hand-built Loop/If forms.

Only the plumbing lives here. The *styles* of the hand-built graphs (how a table is made, how the trip count is
taken, how the leaf is tested, how a row is written back) stay in each model's module: they differ on purpose, so
that the importer is tested on variety.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .structures import Forest
from ..treerec import DOMAIN, VERSION, make_treerec_node, register_schema

IR_VERSION = 10
OPSET = 17
PRODUCER = "cortex.onnx_ops.zoo"

F32, I64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
vi = helper.make_tensor_value_info
node = helper.make_node


# ----------------------------------------------------------------------------------------------------------------
# Parameters


def uniform(seed: int) -> Callable[..., np.ndarray]:
    """``u(shape, s)``: float32 uniform in [-s, s) from one generator seeded with ``seed`` (draws in call order)."""
    rng = np.random.default_rng(seed)
    return lambda shape, s: rng.uniform(-s, s, size=shape).astype(np.float32)


def dense(u: Callable[..., np.ndarray], fan_in: int, fan_out: int, scale: float | None = None):
    """(weight [fan_in, fan_out], bias [fan_out]) drawn with ``u``, uniform ±``scale`` (default 1/sqrt(fan_in))."""
    s = 1 / np.sqrt(fan_in) if scale is None else scale
    return u((fan_in, fan_out), s), u((fan_out,), s)


def embedded_leaf(u: Callable[..., np.ndarray], vocab: int, embed_dim: int, out: int) -> dict:
    """``embedding`` [V, D] (±1) then the leaf map ``W`` [D, out], ``bW`` [out] (±1/sqrt(D)), as keyword args."""
    embedding = u((vocab, embed_dim), 1.0)
    W, bW = dense(u, embed_dim, out)
    return dict(embedding=embedding, W=W, bW=bW)


class EmbeddingSizes:
    """``embed_dim`` and ``vocab`` of a params dataclass with an ``embedding`` [V, D] field."""

    embedding: np.ndarray

    @property
    def embed_dim(self) -> int:
        return int(self.embedding.shape[1])

    @property
    def vocab(self) -> int:
        return int(self.embedding.shape[0])


@dataclass
class EmbedAffineParams(EmbeddingSizes):
    """float32 weights of a model whose leaf maps an embedding by ``W``, ``bW`` and whose internal cell maps its
    children by ``U``, ``bU``: ``embedding`` [V, D], ``W`` [D, G*H], ``bW`` [G*H], ``U``, ``bU`` (G =
    ``leaf_gates``)."""

    embedding: np.ndarray
    W: np.ndarray
    bW: np.ndarray
    U: np.ndarray
    bU: np.ndarray

    leaf_gates: ClassVar[int] = 1

    @property
    def hidden(self) -> int:
        return int(self.bW.shape[0] // self.leaf_gates)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# numpy visit loop (the semantics of an exported Loop)

_LEAF_TESTS = {"negative": lambda j: j < 0, "minus_one": lambda j: j == -1}


def leaf_test(value: str, keyword: str = "leaf_test") -> Callable[[int], bool]:
    """The predicate on a child index that ``value`` names: ``"negative"`` (``j < 0``) or ``"minus_one"``
    (``j == -1``); ValueError names ``keyword`` otherwise."""
    if value not in _LEAF_TESTS:
        raise ValueError(f"{keyword} must be 'negative' or 'minus_one', not {value!r}")
    return _LEAF_TESTS[value]


def _tuple(x):
    return x if isinstance(x, tuple) else (x,)


def visit(rows: int, widths: Sequence[int], order, step: Callable) -> list[np.ndarray]:
    """float32 tables [rows, w] (one per width), all zeros; for each v in ``order``, ``step(v, tables)`` gives the
    new row(s) of v (a row or a tuple of rows, one per table), computed from the tables as they are at that moment,
    and row v of each table is overwritten. Indexing a table wraps negative indices and raises IndexError out of
    range, like ONNX Gather."""
    tables = [np.zeros((rows, w), dtype=np.float32) for w in widths]
    for v in np.asarray(order).tolist():
        for table, row in zip(tables, _tuple(step(v, tables))):
            table[v] = row
    return tables


def binary_visit(words, left, right, order, leaf_test_name: str, widths: Sequence[int], leaf: Callable,
                 internal: Callable):
    """:func:`visit` over a binary forest (``words`` may be a :class:`~cortex.examples.structures.Forest`): for each v in
    ``order`` (repeats and subsets allowed), v is a leaf iff ``left[v]`` passes :func:`leaf_test` (``"negative"``:
    ``left[v] < 0``; ``"minus_one"``: ``left[v] == -1``); a leaf's rows are ``leaf(words[v])``, an internal node's
    ``internal(t0[l], t1[l], ..., t0[r], t1[r], ...)`` (child-major) for l, r = left[v], right[v], read as they are
    at that moment (negative indices wrap, out of range raises IndexError, like ONNX Gather); rows v are
    overwritten. Returns the one table, or a tuple of them."""
    if isinstance(words, Forest):
        words, left, right, order = words.words, words.left, words.right, words.order
    is_leaf = leaf_test(leaf_test_name)

    def step(v, tables):
        lv = int(left[v])
        if is_leaf(lv):
            return leaf(words[v])
        r = int(right[v])
        return internal(*[t[lv] for t in tables], *[t[r] for t in tables])

    tables = visit(int(np.shape(words)[0]), widths, order, step)
    return tables[0] if len(tables) == 1 else tuple(tables)


# ----------------------------------------------------------------------------------------------------------------
# ONNX pieces


def const(name: str, arr) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def embed_inits(params) -> list[onnx.TensorProto]:
    """Initializers ``E``, ``W``, ``bW`` from ``params.embedding``, ``params.W``, ``params.bW``."""
    return [const("E", params.embedding), const("W", params.W), const("bW", params.bW)]


def model(graph: onnx.GraphProto, treerec: bool) -> onnx.ModelProto:
    ops = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid(DOMAIN, VERSION)] if treerec else [])
    return helper.make_model(graph, ir_version=IR_VERSION, opset_imports=ops, producer_name=PRODUCER)


def row_infos(names: Sequence[str], width, lead: Sequence = ()) -> list[onnx.ValueInfoProto]:
    """float32 value infos of shape [*lead, width]."""
    return [vi(name, F32, [*lead, width]) for name in names]


def embed_affine(x: str, out: str, *, word: str = "word", E: str = "E", W: str = "W", b: str = "bW"
                 ) -> list[onnx.NodeProto]:
    """Gather(E, word) -> x; MatMul(x, W) -> {x}W; Add({x}W, b) -> out."""
    xw = f"{x}W"
    return [
        node("Gather", [E, word], [x], axis=0),
        node("MatMul", [x, W], [xw]),
        node("Add", [xw, b], [out]),
    ]


def treerec_leaf(name: str, nodes, outputs: Sequence[tuple[str, int]], initializer,
                 inputs: Sequence[onnx.ValueInfoProto] | None = None) -> onnx.GraphProto:
    """The TreeRec leaf body ``{name}_leaf``: input ``word`` int64 [] (unless ``inputs``), outputs (name, width)."""
    return helper.make_graph(
        list(nodes), f"{name}_leaf", list(inputs) if inputs is not None else [vi("word", I64, [])],
        [vi(o, F32, [w]) for o, w in outputs], initializer=list(initializer),
    )


def treerec_internal(name: str, nodes, inputs: Sequence[onnx.ValueInfoProto], outputs: Sequence[tuple[str, int]],
                     initializer, word: bool = True) -> onnx.GraphProto:
    """The TreeRec internal body ``{name}_internal``: ``inputs`` (the children's rows) then ``word`` int64 []
    (when ``word``), outputs (name, width)."""
    return helper.make_graph(
        list(nodes), f"{name}_internal", list(inputs) + ([vi("word", I64, [])] if word else []),
        [vi(o, F32, [w]) for o, w in outputs], initializer=list(initializer),
    )


def treerec_model(name: str, leaf: onnx.GraphProto, internal: onnx.GraphProto, outputs: Sequence[tuple[str, int]],
                  arity, features: onnx.ValueInfoProto | None = None) -> onnx.ModelProto:
    """A model of one ``cortex.TreeRec`` node ``name``: inputs ``children`` int64 [N, arity] and ``features``
    (default ``words`` int64 [N]); outputs (name, width) float32 [N, width]."""
    register_schema()
    features = features if features is not None else vi("words", I64, ["N"])
    treerec = make_treerec_node("children", [features.name], [o for o, _ in outputs], leaf, internal, name=name)
    graph = helper.make_graph(
        [treerec], f"{name}_treerec", [vi("children", I64, ["N", arity]), features],
        [vi(o, F32, ["N", w]) for o, w in outputs],
    )
    return model(graph, treerec=True)


def branch(name: str, nodes, outputs: Sequence[tuple[str, Sequence]]) -> onnx.GraphProto:
    """An If branch graph (no inputs): outputs (name, shape) float32."""
    return helper.make_graph(list(nodes), name, [], [vi(o, F32, list(s)) for o, s in outputs])


def gather_children(tables: Sequence[str]) -> list[onnx.NodeProto]:
    """r = Gather(right, v); then for each table t: Gather(t_in, l) -> t_l, Gather(t_in, r) -> t_r."""
    nodes = [node("Gather", ["right", "v"], ["r"], axis=0)]
    for t in tables:
        nodes += [node("Gather", [f"{t}_in", "l"], [f"{t}_l"], axis=0),
                  node("Gather", [f"{t}_in", "r"], [f"{t}_r"], axis=0)]
    return nodes


def visit_head(index: str, test: str, test_const: str, outputs: Sequence[str], then_g, else_g, *,
               child: str = "l", flag: str = "is_leaf") -> list[onnx.NodeProto]:
    """v = Gather(order, i); child = Gather(index, v); flag = test(child, test_const) (``Less`` / ``Equal``);
    If(flag) -> outputs."""
    return [
        node("Gather", ["order", "i"], ["v"], axis=0),
        node("Gather", [index, "v"], [child], axis=0),
        node(test, [child, test_const], [flag]),
        node("If", [flag], list(outputs), then_branch=then_g, else_branch=else_g),
    ]


def visit_body(nodes, tables: Sequence[tuple[str, object]], rows="N") -> onnx.GraphProto:
    """The Loop body ``visit_body``: inputs ``i``, ``cond_in``, ``{t}_in`` [rows, width]; outputs ``cond_out``,
    ``{t}_out``; ``nodes`` then Identity(cond_in) -> cond_out (the condition passed through)."""
    return helper.make_graph(
        list(nodes) + [node("Identity", ["cond_in"], ["cond_out"])],
        "visit_body",
        [vi("i", I64, []), vi("cond_in", BOOL, [])] + [vi(f"{t}_in", F32, [rows, w]) for t, w in tables],
        [vi("cond_out", BOOL, [])] + [vi(f"{t}_out", F32, [rows, w]) for t, w in tables],
    )


def zero_table(shape: str, out: str) -> onnx.NodeProto:
    """ConstantOfShape(shape) -> out, float32 zeros."""
    return node("ConstantOfShape", [shape], [out], value=numpy_helper.from_array(np.zeros(1, np.float32)))


def binary_inputs() -> list[onnx.ValueInfoProto]:
    """``words``, ``left``, ``right`` int64 [N], ``order`` int64 [L]."""
    return [vi("words", I64, ["N"]), vi("left", I64, ["N"]), vi("right", I64, ["N"]), vi("order", I64, ["L"])]


def loop_model(name: str, main, inputs, outputs: Sequence[tuple[str, object]], initializer) -> onnx.ModelProto:
    """The hand-built Loop model ``{name}_loop``: ``main`` nodes, ``inputs``, outputs (name, width) float32
    [N, width]."""
    graph = helper.make_graph(list(main), f"{name}_loop", list(inputs), [vi(o, F32, ["N", w]) for o, w in outputs],
                              initializer=list(initializer))
    return model(graph, treerec=False)

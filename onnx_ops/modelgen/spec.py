"""The independent style choices of a generated recursive model, drawn from a seeded RNG.

A :class:`Spec` holds one value per choice of :data:`CHOICES`. :func:`draw` draws every choice independently
(uniformly), then:

- a choice that has no effect on the drawn family (e.g. the gate layout of a TreeFC, which has no gates) is set to
  ``"-"`` (:func:`irrelevant`), so statistics by construct never count a value that changed nothing;
- a combination that is genuinely meaningless (:data:`MEANINGLESS`, each with its reason) is rejected and the whole
  spec drawn again from the same RNG stream;
- a combination that the real exporter is known not to export (:data:`UNEXPORTABLE`, found by trying, each with
  the exporter's error) is rejected likewise, unless ``explore=True``: then it is kept, so that a fuzz run can
  measure it (its outcome is ``export-failed``);
- a combination that makes sense but that the generator does not write yet (:data:`UNWRITTEN`, each with its
  reason) is rejected likewise (an open item, listed so that it is never mistaken for meaningless).

The encodings of issue 19 (:data:`NEW_VALUES`: how the structure encodes a child set, the table's layout, the
float dtype, a chain's carried state, softmax attention) are drawn only with ``new=True``
(``tools/fuzz_import.py --explore-new``); otherwise every new choice keeps its plain value and the draw consumes
the random stream exactly as before they existed, so the CI sample stays what it was while the frontend has no
handlers for them.

The per-reason rejection counts of a draw are kept in :attr:`Spec.rejected` (not part of the spec's identity).
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field, fields

import numpy as np

__all__ = ["CHOICES", "MEANINGLESS", "NEW_CHOICES", "NEW_VALUES", "UNEXPORTABLE", "UNWRITTEN", "Spec", "draw", "draw_many",
           "irrelevant", "GENERATOR_VERSION"]

#: bumped whenever the generated source for a given spec changes (part of the export cache key)
GENERATOR_VERSION = 7

#: choice name -> its values (the first value of each is the "plain" one)
CHOICES: dict[str, tuple] = {
    # recursive cell
    "family": ("treelstm", "childsum", "treegru", "treernn", "treefc", "mvrnn", "dagrnn", "chainlstm", "chaingru"),
    # how gate pre-activations are computed: one fused Linear then chunk / split / slicing, one Linear per gate,
    # or torch's own nn.LSTMCell / nn.GRUCell (chains only)
    "gates": ("fused_chunk", "fused_split", "fused_slice", "separate", "torch_cell"),
    # several operands into one pre-activation: W(x) + U(h) (a Linear each) or Linear(torch.cat([x, h]))
    "mix": ("sum", "cat"),
    "bias": (True, False),
    # children combined: sum / mean / max with shared weights, cat (per-child weights; binary only), or softmax
    # attention (scores = child rows @ a learned query, -inf where no child, softmax over the set, weighted sum)
    "agg": ("sum", "mean", "max", "cat", "attn"),
    # children read one by one (h[left[v]]; n-ary: a `for k in range(K)` loop building a list) or as one
    # stacked [K, H] tensor (h[kids], h.index_select(0, kids))
    "gather": ("one", "stacked", "index_select"),
    # how a node's new row is written into its state table
    "write": ("assign", "assign_slice", "index_copy_", "index_put", "index_put_", "cat", "scatter"),
    # how ids are read from the structure arrays: 0-d tensors (order[k]), Python ints (int(order[k])) or
    # one-element slices (order[k:k + 1], rows [1, H])
    "read": ("scalar", "int", "slice"),
    # leaf test (tree families): left[v] < 0, left[v] == -1, a bool is_leaf input, num_children[v] == 0,
    # branch-free torch.where / 0-1 float mask, or none (one uniform cell: leaf input at every node, missing
    # children read as zeros)
    "leaf_test": ("lt0", "eq_m1", "is_leaf", "num_children", "where", "mask", "none"),
    # how a missing child (-1: n-ary padding, grid border, first chain step, leaves without a leaf test) reads as
    # zeros: an extra zero row N, a float mask, torch.where, an `if` returning torch.zeros(H), clamp + mask
    # ...or one `if` for the whole node whose branch sets every child's rows to torch.zeros (binary, chain)
    "missing": ("zero_row", "mask", "where", "if_zeros", "clamp_mask", "node_if_zeros"),
    "leaf_input": ("embedding", "features", "constant"),
    "act": ("tanh", "relu", "sigmoid", "gelu", "elu", "leaky_relu", "softplus", "silu", "hardtanh", "selu"),
    "act_form": ("functional", "module"),
    "head": ("none", "root_linear", "log_softmax", "mean"),
    # binary trees and grids: separate left/right (up/left) arrays or one children [N, 2] array
    "layout": ("lr", "children"),
    # dtype of the structure arrays; int32_long: int32 inputs cast with .long() at the top of forward
    "dtype": ("int64", "int32", "int32_long"),
    # forward over order; reverse loop over a parents-first order (for i in range(L - 1, -1, -1)); a counter
    # carried by hand (k = 0; while k < L: ...; k += 1)
    "loop": ("forward", "reverse", "counter"),
    "exporter": ("torchscript", "dynamo_while", "dynamo_scan"),
    # structure kind, drawn among the family's kinds (:data:`STRUCTURES`)
    "structure": ("binary", "nary", "grid", "chain"),
    "hidden": tuple(range(4, 17)),
    "embed": tuple(range(3, 11)),
    "arity": (2, 3, 4),  # K of the n-ary families' children [N, K]
    # ---- issue 19: how the structure and the state are encoded (drawn only with new=True)
    # the child sets: padded children [N, K] / left, right (-1 = none); a parent (head) array [N] (children of v:
    # parent == v); CSR offsets [N + 1] + indices [E] (children of v: indices[offsets[v]:offsets[v + 1]]); an
    # edge list edge_index [2, E] (PyG: source -> target, child -> parent; predecessors: edge_index[1] == v)
    "encoding": ("padded", "parent", "csr", "edges"),
    # how a parent array / edge list selects the set: a boolean mask over nodes or edges (rows weighted by it;
    # -inf where it is false for max and attention), a mask matmul ((parent == v).float() @ h), or the selected
    # rows themselves (h[parent == v], or nonzero + index_select)
    "select": ("mask", "matmul", "index"),
    # the state tables: flat [N, H]; batched [B, N, H] (a padded forest: the loop over positions advances all B
    # trees at once, h[:, v] = ...); vector [N] (one number per node); rank3 (an LSTM's h and c in one
    # [N, 2, H] table; MV-RNN's matrices are rank-3 rows in every layout)
    "table": ("flat", "batched", "vector", "rank3"),
    # the float dtype of the model, its inputs and its state: float32, or float64 (model.double())
    "precision": ("float32", "float64"),
    # what a chain carries from step to step: a state table written at each step; one carried vector
    # (h = cell(x, h)); a Python list of vectors (hs.append(h); torch.stack(hs)); a running max / sum of the
    # visited states (with the carried vector). A tree's or a grid's loop carries beside its state table: nothing
    # more ("table"), the state it computed last (vector), or a running max / sum of its states (returned as one
    # more output)
    "carry": ("table", "vector", "list", "running_max", "running_sum"),
}

#: the choices added for issue 19 (their first value is the one every spec had before)
NEW_CHOICES = ("encoding", "select", "table", "precision", "carry")
#: choice -> the values added for issue 19; drawn only with ``new=True``
NEW_VALUES: dict[str, tuple] = {"agg": ("attn",), **{k: CHOICES[k][1:] for k in NEW_CHOICES}}
NEW_VALUES["select"] = CHOICES["select"]  # only relevant to the new encodings
#: set encodings: a child set read from a parent array, CSR lists or an edge list (no -1 padding)
SET_ENCODINGS = ("parent", "csr", "edges")

#: family -> the structure kinds it runs on (``structure`` is drawn uniformly among them)
STRUCTURES = {
    "treelstm": ("binary", "grid"),  # on a grid: the 2-D LSTM (a forget gate per neighbour)
    "treegru": ("binary", "grid"),
    "treernn": ("binary", "grid"),
    "treefc": ("binary", "nary", "grid", "chain"),
    "childsum": ("nary", "binary", "grid", "chain"),
    "mvrnn": ("binary",),
    "dagrnn": ("grid",),
    "chainlstm": ("chain",),
    "chaingru": ("chain",),
}
GATED = {"treelstm", "childsum", "treegru", "chainlstm", "chaingru"}


@dataclass(frozen=True)
class Spec:
    family: str
    gates: str
    mix: str
    bias: bool
    agg: str
    gather: str
    write: str
    read: str
    leaf_test: str
    missing: str
    leaf_input: str
    act: str
    act_form: str
    head: str
    layout: str
    dtype: str
    loop: str
    exporter: str
    hidden: int
    embed: int
    arity: int
    structure: str
    encoding: str = "padded"
    select: str = "-"
    table: str = "flat"
    precision: str = "float32"
    carry: str = "-"
    seed: int = 0
    rejected: tuple = field(default=(), compare=False, hash=False, repr=False)

    @property
    def dynamo(self) -> bool:
        return self.exporter.startswith("dynamo")

    def choices(self) -> dict:
        """choice name -> value (without seed and bookkeeping)."""
        return {k: getattr(self, k) for k in CHOICES}

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("rejected")
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Spec":
        """A spec from its JSON; a spec written before a choice existed gets that choice's plain value (or "-"
        where it is irrelevant)."""
        names = {f.name for f in fields(cls)} - {"rejected"}
        d = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        missing = [k for k in NEW_CHOICES if k not in d]
        if missing:
            full = {**{k: CHOICES[k][0] for k in missing}, **d}
            gone = irrelevant(full)
            d.update({k: ("-" if k in gone else full[k]) for k in missing})
        return cls(**d)

    def key(self) -> str:
        """Stable hash of the spec (and of the generator version): the export cache key."""
        blob = json.dumps({"v": GENERATOR_VERSION, **self.to_json()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def short(self) -> str:
        """One line naming every relevant choice."""
        keep = [f"{k}={v}" for k, v in self.choices().items() if v != "-" and k not in ("hidden", "embed", "arity")]
        return " ".join(keep) + f" H={self.hidden} seed={self.seed}"


def _operands(d: dict) -> int:
    """How many operands enter the family's main pre-activation (for the relevance of ``mix``)."""
    fam = d["family"]
    if fam == "mvrnn":
        return 2
    if fam in ("chainlstm", "chaingru"):
        return 2  # x and h_prev
    uniform = d["leaf_test"] == "none" or d["structure"] in ("grid", "chain") or fam == "dagrnn"
    kids = 2 if d["agg"] == "cat" and d["structure"] in ("binary", "grid") else 1
    return kids + (1 if uniform else 0)


def irrelevant(d: dict) -> dict[str, str]:
    """choice -> why it has no effect on this spec (its value is then "-")."""
    fam, s = d["family"], d["structure"]
    out = {}
    if fam not in GATED:
        out["gates"] = f"{fam} has no gates (one Linear per operand)"
    if d["gates"] == "torch_cell" and fam in ("chainlstm", "chaingru"):
        out["mix"] = "nn.LSTMCell/nn.GRUCell own their weights"
        out["bias"] = "nn.LSTMCell/nn.GRUCell keep their default biases"
    elif _operands(d) < 2:
        out["mix"] = "one operand per pre-activation: nothing to mix"
    if fam == "mvrnn":
        out["agg"] = "MV-RNN combines its children by its own formula"
    if s == "chain":
        out["agg"] = "one child per step"
        out["gather"] = "one child per step"
    if s in ("grid", "chain"):
        out["leaf_test"] = "every cell uses the same formula; missing neighbours read as zeros"
    elif s == "binary" and d["leaf_test"] != "none":
        out["missing"] = "a leaf test guards every child read"
    if fam == "mvrnn":
        out["missing"] = "MV-RNN always tests for leaves"
    if s in ("nary", "chain"):
        out["layout"] = "n-ary children and chains have one layout"
    if fam == "treefc":
        out["act"] = "TreeFC is relu by definition"
        out["act_form"] = "TreeFC is relu by definition"
    if s != "nary":
        out["arity"] = "fixed arity"
    # ---- issue 19
    enc = d.get("encoding", "padded")
    if s == "chain":
        out["encoding"] = "a chain has one predecessor per step"
    elif enc in SET_ENCODINGS:
        out["missing"] = "a child set has no -1 slots: no missing child to read as zeros"
        out["layout"] = "the child set's encoding replaces the left/right or [N, 2] arrays"
        if enc != "csr" and d.get("select") in ("mask", "matmul"):
            out["gather"] = "a mask weights rows of the whole table: nothing is gathered"
    if s == "chain" or enc not in ("parent", "edges"):
        out["select"] = "only a parent array or an edge list is selected by a mask"
    if s != "chain" and d.get("table") in ("batched", "vector"):
        out["carry"] = "a value carried beside the table is one [H] row: a batched or 1-D table has none"
    elif s == "chain" and d.get("carry", "table") != "table":
        out["table"] = "a carried state has no node table"
        out["missing"] = "a carried state has no missing predecessor"
        out["write"] = "a carried state is not written into a table"
    if d.get("table") == "vector" and "table" not in out:
        out["hidden"] = "one number per node"
    return out


#: (predicate, reason): combinations that make no sense; the spec is drawn again
MEANINGLESS = [
    (lambda d: d["gates"] == "torch_cell" and d["family"] not in ("chainlstm", "chaingru"),
     "nn.LSTMCell/nn.GRUCell take one previous state: chains only"),
    (lambda d: d["agg"] == "cat" and d["family"] == "childsum",
     "Child-Sum is defined by an order-free aggregation of its children"),
    (lambda d: d["agg"] == "cat" and d["structure"] == "nary",
     "n-ary: no fixed-width concatenation of a variable number of children"),
    (lambda d: d["family"] == "mvrnn" and d["leaf_test"] == "none",
     "MV-RNN leaves carry word matrices that internal nodes do not: no uniform cell"),
    (lambda d: d["missing"] == "if_zeros" and d["gather"] in ("stacked", "index_select"),
     "an `if` per missing child needs children read one by one"),
    (lambda d: d["missing"] == "node_if_zeros" and d["structure"] in ("nary", "grid"),
     "one `if` for the whole node cannot zero some children only (n-ary padding, grid borders)"),
    (lambda d: d["read"] == "int" and d["leaf_test"] == "where",
     "with Python-int ids the leaf condition is a Python bool: torch.where has no tensor condition"),
    (lambda d: d["read"] == "int" and d["missing"] == "where",
     "with Python-int ids the missing-child condition is a Python bool: torch.where has no tensor condition"),
    (lambda d: d["exporter"] != "torchscript" and d["loop"] == "counter",
     "torch.while_loop always carries its counter and scan has none: a hand-carried counter is the plain form"),
    # ---- issue 19 (every rule names a new value, so that plain specs are never rejected by one)
    (lambda d: d["encoding"] in SET_ENCODINGS and d["agg"] == "cat",
     "a child set has no order: per-child weights (cat) need fixed child slots"),
    (lambda d: d["encoding"] in SET_ENCODINGS and d["family"] == "mvrnn",
     "MV-RNN multiplies the left child's vector by the right child's matrix: it needs ordered child slots"),
    (lambda d: d["encoding"] == "parent" and d["structure"] == "grid",
     "a parent array names one parent per node: a grid cell is the predecessor of two cells (a DAG needs CSR or "
     "an edge list)"),
    (lambda d: d["encoding"] in SET_ENCODINGS and d["leaf_test"] in ("lt0", "eq_m1"),
     "a child set has no -1 sentinel to test: its leaf test is its size (num_children, is_leaf, or the count in "
     "torch.where / a mask)"),
    (lambda d: d["encoding"] == "edges" and d["leaf_input"] == "constant",
     "an edge list does not give the node count: PyG takes it from the node inputs (x [N, F]), and a learned "
     "constant input has none"),
    (lambda d: d["select"] == "matmul" and d["agg"] == "max",
     "a mask matmul sums the selected rows: it cannot take their max"),
    (lambda d: (d["select"] == "index" or d["encoding"] == "csr") and d["agg"] in ("max", "attn") and
     _node_at_leaves(d),
     "the exact child set of a leaf is empty: its max or softmax has no value, and this cell computes it at leaves "
     "too (a uniform cell, or a branch-free leaf test); exact sets (nonzero, a CSR slice) take an if/cond leaf "
     "test"),
    (lambda d: d["table"] == "batched" and (d["encoding"] in ("csr", "edges") or d["select"] == "index"),
     "a batched step reads all B trees with one op: CSR slices and selected rows have a per-tree length, and "
     "PyG batches edge lists by concatenation into one graph (the flat table)"),
    (lambda d: d["table"] == "batched" and (d["leaf_test"] in ("lt0", "eq_m1", "is_leaf", "num_children") or
                                            d["missing"] in ("if_zeros", "node_if_zeros")),
     "a batched step cannot branch per tree: it tests leaves and missing children with torch.where or a mask"),
    (lambda d: d["table"] == "vector" and d["family"] not in ("treefc", "treernn", "dagrnn"),
     "one number per node is a scalar recursion (a score, a depth): gated cells and MV-RNN's matrices have "
     "vector states"),
    (lambda d: d["table"] == "vector" and d["write"] == "assign_slice",
     "a 1-D table's row is one number: there is no slice h[v, :] to assign"),
    (lambda d: d["table"] == "rank3" and d["family"] not in ("treelstm", "childsum", "chainlstm"),
     "a rank-3 state table stacks an LSTM's h and c ([N, 2, H]); one-state families have nothing to stack and "
     "MV-RNN's matrices are rank-3 rows already"),
    (lambda d: d["carry"] == "list" and d["exporter"] == "dynamo_while",
     "torch.while_loop carries tensors only, not a Python list; scan's stacked outputs are the list form"),
    (lambda d: d["carry"] in ("vector", "running_max", "running_sum") and d["head"] == "mean" and
     d["structure"] == "chain",
     "a carried vector or reduction keeps no per-step rows to average"),
]


def _node_at_leaves(d: dict) -> bool:
    """The internal-node cell runs at leaves too, reading their empty child sets: one cell for every node (no leaf
    test), or a branch-free leaf test (torch.where / a mask blend of both cells)."""
    return d["structure"] in ("grid", "chain") or d["leaf_test"] in ("none", "-", "where", "mask")


#: (predicate, reason): meaningful combinations that the generator does not write yet (drawn again; open items)
UNWRITTEN = [
    (lambda d: d["carry"] == "list" and d["structure"] != "chain",
     "a Python list of states appended to beside a tree's table"),
    (lambda d: d["encoding"] in SET_ENCODINGS and d["gather"] == "one",
     "a child set read child by child (a Python loop over a CSR slice or over nonzero(parent == v))"),
]

#: (predicate, reason): combinations the real exporter cannot export (found by trying; see docs in the report)
UNEXPORTABLE = [
    (lambda d: d["exporter"] != "torchscript" and d["read"] in ("scalar", "int"),
     "dynamo: indexing with a 0-d tensor or int() of a tensor inside torch.while_loop/scan is data-dependent "
     "(GuardOnDataDependentSymNode); ids must be read as one-element slices"),
    (lambda d: d["exporter"] == "dynamo_while" and (
        d["leaf_test"] in ("lt0", "eq_m1", "is_leaf", "num_children") or d["missing"] in ("if_zeros",
                                                                                          "node_if_zeros")),
     "dynamo: torch.cond inside torch.while_loop fails in the ONNX exporter (InlinePass: opset mismatch when "
     "inlining 'pkg.torch.__subgraph__::while_loop_body_graph_0')"),
    (lambda d: d["dtype"] == "int32",
     "int32 ids used directly as indices: both exporters write ScatterND/GatherND with int32 indices (or a Slice "
     "with int32 and int64 bounds), an invalid ONNX model that ONNX Runtime refuses to load"),
    (lambda d: d["exporter"] == "torchscript" and d["family"] == "chaingru" and d["gates"] == "torch_cell",
     "TorchScript exporter: a scripted nn.GRUCell fails (SymbolicValueError: ONNX symbolic expected node type "
     "prim::ListConstruct, got onnx::Constant)"),
    (lambda d: d["exporter"] != "torchscript" and d["write"] == "cat",
     "dynamo: h[:v] with a tensor v inside torch.while_loop/scan is a data-dependent slice"),
    # ---- issue 19
    (lambda d: d["precision"] == "float64" and (d["act"] in ("gelu", "elu", "softplus", "selu") or
                                                (d["act"] == "leaky_relu" and d["exporter"] != "torchscript")),
     "float64: ONNX Runtime (CPU) has no double kernel for Erf (gelu), Elu, Softplus, Selu, or LeakyRelu-16 (the "
     "dynamo exporter's leaky_relu): NOT_IMPLEMENTED, the exported model does not load"),
    (lambda d: d["table"] == "batched" and d["exporter"] == "torchscript" and d["read"] == "scalar",
     "TorchScript exporter: a batched read arr[:, v] with a 0-d tensor v is exported as an index that keeps a "
     "broadcast dim; the model loads but ONNX Runtime fails on batches of more than one tree (Reshape: 'The input "
     "tensor cannot be reshaped to the requested shape', input {B, B, H}, requested {B, 1, H})"),
    (lambda d: d["precision"] == "float64" and d["gates"] == "torch_cell" and d["exporter"] == "torchscript",
     "float64: the TorchScript exporter writes nn.LSTMCell as an ONNX LSTM, which ONNX Runtime runs in float32 "
     "only ('LSTM operator does not support double yet')"),
]


def _normalize(d: dict) -> dict:
    d = dict(d)
    kinds = STRUCTURES[d["family"]]
    d["structure"] = kinds[d["structure"] % len(kinds)]  # drawn as an integer: uniform among the family's kinds
    for k in irrelevant(d):
        d[k] = "-"
    return d


def _check(d: dict, explore: bool) -> str | None:
    for pred, reason in MEANINGLESS:
        if pred(d):
            return "meaningless: " + reason
    for pred, reason in UNWRITTEN:
        if pred(d):
            return "unwritten: " + reason
    if not explore:
        for pred, reason in UNEXPORTABLE:
            if pred(d):
                return "unexportable: " + reason
    return None


#: drawn once per spec (uniform marginals); the other choices are drawn again until the combination is valid
PRIMARY = ("family", "exporter")


def _values(new: bool) -> dict:
    """choice -> the values a draw picks among: all of them with ``new``, else those that existed before issue 19
    (the new choices keep their plain value and consume no random numbers)."""
    if new:
        return CHOICES
    return {k: tuple(v for v in vals if v not in NEW_VALUES.get(k, ())) for k, vals in CHOICES.items()
            if k not in NEW_CHOICES}


def draw(rng: np.random.Generator, seed: int = 0, explore: bool = False, new: bool = False, **fixed) -> Spec:
    """One spec from ``rng``: every choice uniform and independent; ``fixed`` pins choices (e.g.
    ``exporter="torchscript"``). The family and the exporter are drawn once (so both stay uniform); when the
    combination is rejected the other choices are drawn again (the reasons are counted in ``Spec.rejected``).
    ``new`` draws the encodings of issue 19 too (:data:`NEW_VALUES`); without it they keep their plain values."""
    rejected: Counter = Counter()
    values = _values(new)
    primary = {k: fixed.get(k, values[k][int(rng.integers(len(values[k])))]) for k in PRIMARY}
    why = None
    for attempt in range(20_000):
        if attempt and attempt % 500 == 0:  # pinned choices that this family/exporter cannot have: draw them again
            primary = {k: fixed.get(k, values[k][int(rng.integers(len(values[k])))]) for k in PRIMARY}
        d = {k: (int(rng.integers(12)) if k == "structure" else v[int(rng.integers(len(v)))])
             for k, v in values.items() if k not in PRIMARY}
        d.update({k: CHOICES[k][0] for k in CHOICES if k not in d})  # the new choices, plain, without new
        d.update(primary)
        d.update({k: v for k, v in fixed.items() if k != "structure"})
        d = _normalize(d)
        lost = [k for k, v in fixed.items() if d[k] != v]  # a pinned value made irrelevant ("-") or remapped
        if lost:
            rejected[f"fixed: {lost[0]}"] += 1
            continue
        why = _check(d, explore)
        if why is None:
            d = {k: d[k] for k in CHOICES}
            return Spec(**d, seed=seed, rejected=tuple(sorted(rejected.items())))
        rejected[why] += 1
    raise ValueError(f"no valid spec with {fixed}: last rejection {why}")


def draw_many(n: int, seed: int = 0, explore: bool = False, new: bool = False, **fixed) -> list[Spec]:
    """``n`` specs from one seeded stream (``fixed`` pins choices; ``new`` draws the encodings of issue 19 too);
    spec i gets ``seed * 1_000_003 + i`` as its own (parameter) seed."""
    rng = np.random.default_rng(seed)
    return [draw(rng, seed=seed * 1_000_003 + i, explore=explore, new=new, **fixed) for i in range(n)]

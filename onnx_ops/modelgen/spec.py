"""The independent style choices of a generated recursive model, drawn from a seeded RNG.

A :class:`Spec` holds one value per choice of :data:`CHOICES`. :func:`draw` draws every choice independently
(uniformly), then:

- a choice that has no effect on the drawn family (e.g. the gate layout of a TreeFC, which has no gates) is set to
  ``"-"`` (:func:`irrelevant`), so statistics by construct never count a value that changed nothing;
- a combination that is genuinely meaningless (:data:`MEANINGLESS`, each with its reason) is rejected and the whole
  spec drawn again from the same RNG stream;
- a combination that the real exporter is known not to export (:data:`UNEXPORTABLE`, found by trying, each with
  the exporter's error) is rejected likewise, unless ``explore=True``: then it is kept, so that a fuzz run can
  measure it (its outcome is ``export-failed``).

The per-reason rejection counts of a draw are kept in :attr:`Spec.rejected` (not part of the spec's identity).
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field, fields

import numpy as np

__all__ = ["CHOICES", "MEANINGLESS", "UNEXPORTABLE", "Spec", "draw", "draw_many", "irrelevant", "GENERATOR_VERSION"]

#: bumped whenever the generated source for a given spec changes (part of the export cache key)
GENERATOR_VERSION = 5

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
    # children combined: sum / mean / max with shared weights, or cat (per-child weights; binary only)
    "agg": ("sum", "mean", "max", "cat"),
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
}

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
        names = {f.name for f in fields(cls)} - {"rejected"}
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names})

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
    if not explore:
        for pred, reason in UNEXPORTABLE:
            if pred(d):
                return "unexportable: " + reason
    return None


#: drawn once per spec (uniform marginals); the other choices are drawn again until the combination is valid
PRIMARY = ("family", "exporter")


def draw(rng: np.random.Generator, seed: int = 0, explore: bool = False, **fixed) -> Spec:
    """One spec from ``rng``: every choice uniform and independent; ``fixed`` pins choices (e.g.
    ``exporter="torchscript"``). The family and the exporter are drawn once (so both stay uniform); when the
    combination is rejected the other choices are drawn again (the reasons are counted in ``Spec.rejected``)."""
    rejected: Counter = Counter()
    primary = {k: fixed.get(k, CHOICES[k][int(rng.integers(len(CHOICES[k])))]) for k in PRIMARY}
    why = None
    for attempt in range(20_000):
        if attempt and attempt % 500 == 0:  # pinned choices that this family/exporter cannot have: draw them again
            primary = {k: fixed.get(k, CHOICES[k][int(rng.integers(len(CHOICES[k])))]) for k in PRIMARY}
        d = {k: (int(rng.integers(12)) if k == "structure" else v[int(rng.integers(len(v)))])
             for k, v in CHOICES.items() if k not in PRIMARY}
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


def draw_many(n: int, seed: int = 0, explore: bool = False, **fixed) -> list[Spec]:
    """``n`` specs from one seeded stream (``fixed`` pins choices); spec i gets ``seed * 1_000_003 + i`` as its own
    (parameter) seed."""
    rng = np.random.default_rng(seed)
    return [draw(rng, seed=seed * 1_000_003 + i, explore=explore, **fixed) for i in range(n)]

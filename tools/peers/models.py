"""Model registry of the benchmark, built from :data:`onnx_ops.zoo.MODELS` (the one registry of the zoo: structure
kind, params, Loop/If and TreeRec builders, feeds, numpy reference). This module only adds what the benchmark needs
on top of it:

- the PyTorch eager module per model (one natural style per model, from the zoo's ``STYLES``),
- the DyNet builder (TreeLSTM only; the other models report "no DyNet implementation of this model"),
- the FLOP counter per model (matrix products 2·M·K·N as the model defines them, the same for every system),
- the TorchScript export styles of each model (the ``--forms`` mode converts every one of them), and its PyTorch
  cell form (``cortex.torch``, :func:`cell_forms`).

Adding a model to the zoo adds it here; a model without an entry in :data:`TORCH_STYLE` / :data:`_FLOPS` fails
loudly at :func:`get` rather than being dropped."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from . import flops as _flops

NO_DYNET = "no DyNet implementation of this model"

#: model -> (module of onnx_ops.zoo holding its PyTorch styles, the style run eagerly by the PyTorch peer)
TORCH_STYLE = {
    "treelstm": ("torch_treelstm", "row_assign"),
    "treefc": ("torch_models_a", "treefc_row_assign"),
    "treernn": ("torch_models_a", "treernn_index_put"),
    "treegru": ("torch_models_a", "treegru_python_int"),
    "childsum": ("torch_models_a", "childsum_clamp_mask"),
    "mvrnn": ("torch_models_b", "mvrnn_row_assign"),
    "dagrnn": ("torch_models_b", "dagrnn_where_mask"),
    "chainlstm": ("torch_models_b", "chainlstm_lstm_cell"),
}
_TORCH_MODULES = ("torch_treelstm", "torch_models_a", "torch_models_b")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    structure: str  # zoo structure kind: 'binary' | 'nary' | 'grid' | 'chain'
    zoo: Any  # the onnx_ops.zoo.ZooModel
    make_params: Callable[[int, int], Any]  # (hidden, seed) -> params
    build_loop: Callable[[Any], Any]  # params -> onnx.ModelProto (the Loop/If form, input of cortex.convert and ORT)
    build_treerec: Callable[[Any], Any]  # params -> onnx.ModelProto (cortex.TreeRec)
    reference: Callable[[Any, Any], tuple]  # (params, structure) -> outputs (tuple, the Loop model's order)
    torch_module: Callable[[Any], Any]  # params -> eager torch module called with the Loop feeds, in order
    dynet_builder: Callable[[Any], Callable] | None  # params -> callable(structure) -> outputs; None: no DyNet
    flops: Callable[[Any, Any], int]  # (params, structure) -> FLOPs of one forward
    flops_doc: str
    feeds: Callable[[Any], dict]  # structure -> ONNX feeds of the Loop model (and of the TorchScript exports)
    treerec_feeds: Callable[[Any], dict]  # structure -> ONNX feeds of the TreeRec model
    vocab: int | None  # token ids of the inputs are in [0, vocab) (None: no tokens, e.g. grid features)
    torch_style: str = ""
    dynet_status: str | None = None  # None when dynet_builder exists, else why not


# ----------------------------------------------------------------------------------------------------------------
# FLOPs per model: 2·M·K·N of each matrix product of one node visit, as the model defines it (elementwise work is
# not counted; Cortex's folding of a leaf projection into the embedding does not change the count)


def _visits(structure):
    return np.asarray(structure.order)


def _binary_split(structure):
    order = _visits(structure)
    leaves = int((np.asarray(structure.left)[order] < 0).sum())
    return leaves, int(order.shape[0]) - leaves


def _binary_flops(leaf, internal):
    def count(p, f):
        nl, ni = _binary_split(f)
        return nl * leaf(p) + ni * internal(p)

    return count


def _childsum_flops(p, f):
    H, D = p.hidden, p.embed_dim
    kids = (np.asarray(f.children)[_visits(f)] >= 0).sum(axis=1)
    leaves = int((kids == 0).sum())
    internal = int((kids > 0).sum())
    # leaf x @ W [D, 3H]; internal sum(h_k) @ U_iou [H, 3H] and each present child's h_k @ U_f [H, H]
    return leaves * 2 * D * 3 * H + internal * 2 * H * 3 * H + int(kids[kids > 0].sum()) * 2 * H * H


def _dagrnn_flops(p, g):
    H, D = p.hidden, p.feature_dim
    return int(_visits(g).shape[0]) * (2 * D * H + 2 * 2 * H * H)


def _chainlstm_flops(p, c):
    H, D = p.hidden, p.embed_dim
    return int(_visits(c).shape[0]) * (2 * D * 4 * H + 2 * H * 4 * H)


_FLOPS: dict[str, tuple[Callable, str]] = {
    "treelstm": (_flops.treelstm_flops, "leaf 2·D·3H, internal node 2·2H·5H"),
    "treefc": (_binary_flops(lambda p: 2 * p.embed_dim * p.hidden, lambda p: 2 * p.hidden * p.hidden),
               "leaf 2·D·H, internal 2·H·H"),
    "treernn": (_binary_flops(lambda p: 2 * p.embed_dim * p.hidden, lambda p: 2 * 2 * p.hidden * p.hidden),
                "leaf 2·D·H, internal 2·2H·H"),
    "treegru": (_binary_flops(lambda p: 2 * p.embed_dim * p.hidden, lambda p: 2 * 2 * p.hidden * 4 * p.hidden),
                "leaf 2·D·H, internal 2·2H·H (z) + 2·2H·2H (r) + 2·2H·H (candidate)"),
    "mvrnn": (_binary_flops(lambda p: 0, lambda p: 4 * p.hidden ** 2 + 4 * p.hidden ** 2 + 4 * p.hidden ** 3),
              "leaf 0 (lookups), internal 2·2·H² (M_r a_l, M_l a_r) + 2·H·2H (W) + 2·H·2H·H (W_M [M_l; M_r])"),
    "childsum": (_childsum_flops, "leaf 2·D·3H, internal 2·H·3H + 2·H·H per present child"),
    "dagrnn": (_dagrnn_flops, "cell 2·D·H + 2·2·H·H (D = 64 features)"),
    "chainlstm": (_chainlstm_flops, "step 2·D·4H + 2·H·4H"),
}


# ----------------------------------------------------------------------------------------------------------------
# PyTorch


def torch_styles_module(module_name: str):
    import importlib

    return importlib.import_module(f"onnx_ops.zoo.{module_name}")


def export_styles(name: str) -> list[tuple[str, Any]]:
    """(style, module) for every TorchScript export style of model ``name`` (empty without torch)."""
    out = []
    for module_name in _TORCH_MODULES:
        try:
            import torch  # noqa: F401

            mod = torch_styles_module(module_name)
        except ImportError:
            return []
        styles = mod.STYLES
        if module_name == "torch_treelstm":
            if name == "treelstm":
                out += [(s, mod) for s in styles]
        else:
            out += [(s, mod) for s, (m, _) in styles.items() if m == name]
    return out


def cell_forms(name: str) -> list[tuple[str, Any]]:
    """[("cells", onnx_ops.zoo.cells)] when model ``name`` has a PyTorch cell form (cortex.torch) and torch and
    onnxscript are installed, else []."""
    try:
        import onnxscript  # noqa: F401
        import torch  # noqa: F401

        from onnx_ops.zoo import cells
    except ImportError:
        return []
    return [("cells", cells)] if name in cells.MODELS and cells.MODELS[name].zoo == name else []


def wild_forms(name: str) -> list[tuple[str, Any]]:
    """[(form, onnx_ops.zoo.wild)] for the models written as PyTorch users write them that compute zoo model
    ``name`` (TorchScript and dynamo exports: the generality issue's newly converted forms); [] without torch."""
    try:
        import onnxscript  # noqa: F401
        import torch  # noqa: F401

        from onnx_ops.zoo import wild
    except ImportError:
        return []
    return [(form, wild) for form, _, _ in wild.BENCH_FORMS.get(name, [])]


def _torch_module_fn(name: str):
    module_name, style = TORCH_STYLE[name]

    def make(params):
        return torch_styles_module(module_name).make_module(style, params)

    return make


# ----------------------------------------------------------------------------------------------------------------
# the registry


def _dynet_treelstm(p):
    from .dynet_peer import DynetTreeLSTM

    return DynetTreeLSTM(p)


_DYNET = {"treelstm": _dynet_treelstm}


def _probe_vocab(zm) -> int | None:
    p = zm.make_params(2, seed=0)
    v = getattr(p, "vocab", None)
    return int(v) if v is not None else None


def names() -> list[str]:
    from onnx_ops.zoo import MODELS

    return list(MODELS)


def parse_models(text: str) -> list[str]:
    """``all`` or a comma list of zoo model names."""
    names_ = [m.strip() for m in str(text).split(",") if m.strip()]
    if names_ == ["all"]:
        return names()
    return names_


_CACHE: dict[str, ModelEntry] = {}


def get(name: str) -> ModelEntry:
    from onnx_ops.zoo import MODELS

    if name in _CACHE:
        return _CACHE[name]
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r} (known: {', '.join(MODELS)})")
    if name not in TORCH_STYLE or name not in _FLOPS:
        raise KeyError(f"zoo model {name!r} has no PyTorch style or FLOP counter in tools/peers/models.py")
    zm = MODELS[name]
    flops, flops_doc = _FLOPS[name]

    def feeds(s, _zm=zm):
        return {k: np.ascontiguousarray(v) for k, v in _zm.loop_feeds(s).items()}

    def treerec_feeds(s, _zm=zm):
        return {k: np.ascontiguousarray(v) for k, v in _zm.treerec_feeds(s).items()}

    e = ModelEntry(
        name=name,
        description=zm.description,
        structure=zm.structure,
        zoo=zm,
        make_params=lambda hidden, seed=0, _zm=zm: _zm.make_params(hidden, seed=seed),
        build_loop=zm.build_loop,
        build_treerec=zm.build_treerec,
        reference=lambda p, s, _zm=zm: tuple(_zm.reference(p, s)),
        torch_module=_torch_module_fn(name),
        dynet_builder=_DYNET.get(name),
        flops=flops,
        flops_doc=flops_doc,
        feeds=feeds,
        treerec_feeds=treerec_feeds,
        vocab=_probe_vocab(zm),
        torch_style=f"{TORCH_STYLE[name][1]} (onnx_ops.zoo.{TORCH_STYLE[name][0]})",
        dynet_status=None if name in _DYNET else NO_DYNET,
    )
    _CACHE[name] = e
    return e

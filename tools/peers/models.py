"""Model registry of the benchmark. An entry brings everything every system needs to run the same model with the
same weights; adding a model to the zoo means adding one :class:`ModelEntry` to ``MODELS``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from . import flops as _flops


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    make_params: Callable[[int, int], Any]  # (hidden, seed) -> params
    build_loop: Callable[[Any], Any]  # params -> onnx.ModelProto (the Loop/If form, input of cortex.convert and ORT)
    reference: Callable[[Any, Any], tuple]  # (params, Forest) -> (h, c) numpy
    torch_module: Callable[[Any], Any]  # params -> eager torch module called as m(words, left, right, order)
    dynet_builder: Callable[[Any], Callable]  # params -> callable(Forest) -> (h, c)
    flops: Callable[[Any, Any], int]  # (params, Forest) -> FLOPs of one forward
    feeds: Callable[[Any], dict]  # Forest -> ONNX feeds
    vocab: int
    torch_style: str = ""


VOCAB = 5000
EMBED_DIM = 300


def _treelstm() -> ModelEntry:
    from onnx_ops.zoo import treelstm as tl

    def torch_module(p):
        from onnx_ops.zoo import torch_treelstm

        return torch_treelstm.make_module("row_assign", p)

    def dynet_builder(p):
        from .dynet_peer import DynetTreeLSTM

        return DynetTreeLSTM(p)

    return ModelEntry(
        name="treelstm",
        description=f"binary TreeLSTM (Tai et al. 2015), embedding {VOCAB}x{EMBED_DIM}",
        make_params=lambda hidden, seed: tl.make_params(hidden=hidden, embed_dim=EMBED_DIM, vocab=VOCAB, seed=seed),
        build_loop=tl.build_loop,
        reference=lambda p, f: tl.reference(p, f),
        torch_module=torch_module,
        dynet_builder=dynet_builder,
        flops=_flops.treelstm_flops,
        feeds=lambda f: {k: np.ascontiguousarray(v) for k, v in f.arrays().items()},
        vocab=VOCAB,
        torch_style="row_assign",
    )


_FACTORIES: dict[str, Callable[[], ModelEntry]] = {"treelstm": _treelstm}


def names() -> list[str]:
    return list(_FACTORIES)


def get(name: str) -> ModelEntry:
    try:
        return _FACTORIES[name]()
    except KeyError:
        raise KeyError(f"unknown model {name!r} (known: {', '.join(_FACTORIES)})") from None

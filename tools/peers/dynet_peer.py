"""DyNet peer: the same models built in DyNet (dynet38 = DyNet 2.2, CPU) with autobatching.

Autobatching is a process-wide setting fixed when ``dynet`` is first imported: :func:`import_dynet` calls
``dynet_config.set(autobatch=1, ...)`` before the import (the equivalent of ``--dynet-autobatch 1``). Per batch of
trees the peer does one ``renew_cg()``, builds every tree's expressions, and runs one forward (on the
concatenation of all nodes' h and c, which the other systems also return)."""

from __future__ import annotations

import numpy as np

_dy = None
_dy_error: str | None = None


def import_dynet(autobatch: int = 1, mem: int = 2048):
    """The ``dynet`` module configured with ``autobatch`` (first call wins), or None when it is not installed
    (:func:`status` says why)."""
    global _dy, _dy_error
    if _dy is not None or _dy_error is not None:
        return _dy
    import sys

    try:
        import dynet_config

        if "dynet" not in sys.modules:
            dynet_config.set(autobatch=autobatch, mem=str(mem), random_seed=1)
        import dynet as dy  # noqa: F401

        _dy = dy
    except ImportError as e:
        _dy_error = f"not installed ({e})"
    return _dy


def status() -> str | None:
    """None when DyNet is usable, else why not."""
    import_dynet()
    return _dy_error


def autobatch_setting() -> int | None:
    try:
        import dynet_config

        cfg = dynet_config.get()
        return int(cfg["autobatch"]) if cfg else None
    except Exception:  # noqa: BLE001
        return None


class DynetTreeLSTM:
    """Binary TreeLSTM in DyNet from :class:`cortex.examples.treelstm.TreeLSTMParams` (DyNet multiplies ``W x``, so
    the stored ``x @ W`` matrices are transposed)."""

    def __init__(self, params):
        dy = import_dynet()
        if dy is None:
            raise ImportError(f"DyNet is {_dy_error}")
        self.dy = dy
        self.H = params.hidden
        self.pc = dy.ParameterCollection()
        self.E = self.pc.lookup_parameters_from_numpy(np.asarray(params.embedding, dtype=np.float32))
        self.W = self.pc.parameters_from_numpy(np.ascontiguousarray(params.W.T, dtype=np.float32))
        self.bW = self.pc.parameters_from_numpy(np.asarray(params.bW, dtype=np.float32))
        self.U = self.pc.parameters_from_numpy(np.ascontiguousarray(params.U.T, dtype=np.float32))
        self.bU = self.pc.parameters_from_numpy(np.asarray(params.bU, dtype=np.float32))

    def __call__(self, forest) -> tuple[np.ndarray, np.ndarray]:
        dy, H = self.dy, self.H
        dy.renew_cg()
        W, bW, U, bU = self.W, self.bW, self.U, self.bU  # DyNet >= 2.1: parameters join the graph when used
        words, left, right = forest.words.tolist(), forest.left.tolist(), forest.right.tolist()
        n = len(words)
        hs: list = [None] * n
        cs: list = [None] * n
        logistic, tanh, cmult, pick = dy.logistic, dy.tanh, dy.cmult, dy.pick_range
        # Fewest expressions per node (each one an autobatched op): one affine transform, one logistic over every
        # sigmoid gate at once, one tanh for the candidate, then the products.
        for v in forest.order.tolist():
            lv = left[v]
            if lv < 0:
                g = dy.affine_transform([bW, W, dy.lookup(self.E, words[v])])
                s = logistic(pick(g, 0, 2 * H))  # i, o
                c = cmult(pick(s, 0, H), tanh(pick(g, 2 * H, 3 * H)))
                o = pick(s, H, 2 * H)
            else:
                rv = right[v]
                g = dy.affine_transform([bU, U, dy.concatenate([hs[lv], hs[rv]])])
                s = logistic(pick(g, 0, 4 * H))  # i, fl, fr, o
                c = (cmult(pick(s, 0, H), tanh(pick(g, 4 * H, 5 * H))) + cmult(pick(s, H, 2 * H), cs[lv])
                     + cmult(pick(s, 2 * H, 3 * H), cs[rv]))
                o = pick(s, 3 * H, 4 * H)
            hs[v] = cmult(o, tanh(c))
            cs[v] = c
        if n == 0:
            z = np.zeros((0, H), np.float32)
            return z, z.copy()
        zero = None
        for k in range(n):  # nodes never visited keep zero rows, like the Loop model's tables
            if hs[k] is None:
                zero = zero if zero is not None else dy.zeros(H)
                hs[k] = cs[k] = zero
        both = dy.concatenate([dy.concatenate_cols(hs), dy.concatenate_cols(cs)])  # [2H, N]: one forward
        val = both.npvalue().reshape(2 * H, n)
        return np.ascontiguousarray(val[:H].T), np.ascontiguousarray(val[H:].T)

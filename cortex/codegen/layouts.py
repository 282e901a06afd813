"""How a matrix product's constant weight is stored in the converted model (and handed to the kernel): each layout
packs a [K, N] weight for a backend's products and unpacks it again (`cortex rebuild` reads the IR's constants back
from the model's initializers). One registry by name; a converted node's notes name each constant's layout."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NR = 16  # the panel width of the CPU products (csrc/runtime/gemm.h kGemmNR; docs/contracts.md)


class LayoutError(ValueError):
    """An initializer that does not hold what its layout says."""


@dataclass(frozen=True)
class WeightLayout:
    name: str

    def pack(self, w: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(w, dtype=np.float32)

    def unpack(self, stored: np.ndarray, shape) -> np.ndarray:
        if tuple(stored.shape) != tuple(shape):
            raise LayoutError(f"a {self.name} constant of shape {list(stored.shape)}, the IR says {list(shape)}")
        return np.ascontiguousarray(stored)


@dataclass(frozen=True)
class Panels(WeightLayout):
    """[K, N] -> [ceil(N/nr), K, nr] column panels, zero padded: packed[p][k][r] = W[k][p*nr + r], the layout
    gemm_packed reads."""
    nr: int = NR

    def pack(self, w: np.ndarray) -> np.ndarray:
        k, n = w.shape
        panels = -(-n // self.nr)
        padded = np.zeros((k, panels * self.nr), dtype=np.float32)
        padded[:, :n] = w
        return np.ascontiguousarray(padded.reshape(k, panels, self.nr).transpose(1, 0, 2))

    def unpack(self, stored: np.ndarray, shape) -> np.ndarray:
        if len(shape) != 2:
            raise LayoutError(f"a packed constant must be a matrix, the IR says shape {list(shape)}")
        k, n = shape
        panels = -(-n // self.nr)
        if stored.shape != (panels, k, self.nr):
            raise LayoutError(f"packed constant has shape {list(stored.shape)}, expected {[panels, k, self.nr]}")
        return np.ascontiguousarray(stored.transpose(1, 0, 2).reshape(k, panels * self.nr)[:, :n])


@dataclass(frozen=True)
class Transposed(WeightLayout):
    """W^T ([N, K]): a GPU warp reads one column's K values contiguously."""

    def pack(self, w: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(w.T, dtype=np.float32)

    def unpack(self, stored: np.ndarray, shape) -> np.ndarray:
        if stored.ndim != 2 or tuple(stored.shape[::-1]) != tuple(shape):
            raise LayoutError(f"a transposed initializer of shape {list(stored.shape)}, the IR says {list(shape)}")
        return np.ascontiguousarray(stored.T)


DENSE, PANELS, TRANSPOSED = WeightLayout("dense"), Panels("panels"), Transposed("transposed")
LAYOUTS = {layout.name: layout for layout in (DENSE, PANELS, TRANSPOSED)}


def pack_panels(w: np.ndarray) -> np.ndarray:
    """[K, N] weight -> [ceil(N/16), K, 16] panels (zero padded), the layout gemm_packed reads."""
    return PANELS.pack(w)

"""How a matrix product's constant weight is stored in the converted model (and handed to the kernel): each layout
packs a [K, N] weight for a backend's products and unpacks it again (`cortex rebuild` reads the IR's constants back
from the model's initializers). One registry by name; a converted node's notes name each constant's layout.

The CPU's layouts are chosen by the products' precision, never by the ISA: every float32 micro-kernel (AVX-512,
AVX2, portable; csrc/runtime/gemm.h) reads `panels`, every bf16 one (AMX, AVX512-BF16, portable; gemm_bf16.h) reads
`panels_bf16`, so a converted model's constants do not change with `--cpu`.

- `panels` (float32): 16 columns a panel, `packed[p][k][r] = W[k][p*16 + r]`, shape [ceil(N/16), K, 16], zero
  padded. A panel row is one cache line and one AVX-512 register (the AVX-512 tile reads two adjacent panels).
- `panels_bf16`: 16 columns a panel, k in pairs, K padded to a multiple of 32:
  `bits[p][kk][r][t] = bf16(W[2*kk + t][p*16 + r])` (uint16), zero padded, stored as int32 pairs
  `[ceil(N/16), Kp/2, 16]` (the even k in the low half: the uint16 array [.., 16, 2] read as little-endian int32,
  an element type the kernel ABI exchanges), Kp = ceil(K/32)*32. A pair row is one vdpbf16ps operand; 16 pair rows
  are one AMX B tile. bf16() rounds to nearest even, flushes denormals to zero and keeps NaN (VCVTNEPS2BF16). Its
  inverse returns the rounded weights: the float32 weights are gone once packed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NR = 16  # the panel width of the CPU products (csrc/runtime/gemm.h kGemmNR; docs/contracts.md)


class LayoutError(ValueError):
    """An initializer that does not hold what its layout says."""


def _element(w) -> np.dtype:
    """The element type a float layout keeps: float64 for a float64 program's constants, float32 otherwise."""
    return np.dtype(np.float64) if np.asarray(w).dtype == np.float64 else np.dtype(np.float32)


@dataclass(frozen=True)
class WeightLayout:
    """A float layout keeps its constant's element type (float32; float64 in a float64 program)."""
    name: str
    stored_dtype = None  # the initializer's element type when fixed (bf16 bits), else the constant's own

    def stored(self, dtype) -> np.dtype:
        """The initializer's element type for a constant of `dtype` (the IR's)."""
        return self.stored_dtype if self.stored_dtype is not None else np.dtype(dtype)

    def pack(self, w: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(w, dtype=_element(w))

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
        padded = np.zeros((k, panels * self.nr), dtype=_element(w))
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


BF16_K_STEP = 32  # K of panels_bf16 is padded to a multiple of this (one AMX tile's depth)


def bf16_bits(x) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), as the runtime rounds: nearest even, denormals to signed zero, NaN quiet."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    sign = ((u >> 16) & np.uint32(0x8000)).astype(np.uint16)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    tiny = (u & np.uint32(0x7F800000)) == 0
    return np.where(nan, ((u >> 16) | np.uint32(0x40)).astype(np.uint16), np.where(tiny, sign, rounded))


def bf16_to_float32(bits) -> np.ndarray:
    """bfloat16 bits (uint16) -> float32 (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def bf16_padded_k(k: int) -> int:
    return -(-k // BF16_K_STEP) * BF16_K_STEP


def pack_panels_bf16(w) -> np.ndarray:
    """[K, N] float32 -> the bf16 panel bits [ceil(N/16), Kp/2, 16, 2] uint16 (cortex._C.pack_panels_bf16)."""
    w = np.asarray(w)
    if w.ndim != 2:
        raise LayoutError(f"a weight to pack must be 2-D [K, N], got shape {list(w.shape)}")
    k, n = w.shape
    panels, kp = -(-n // NR), bf16_padded_k(k)
    bits = np.zeros((kp, panels * NR), dtype=np.uint16)
    bits[:k, :n] = bf16_bits(w)
    return np.ascontiguousarray(bits.reshape(kp // 2, 2, panels, NR).transpose(2, 0, 3, 1))


def unpack_panels_bf16(packed, shape) -> np.ndarray:
    """The inverse of pack_panels_bf16: the [K, N] weight as float32 (its bf16 values; packing it again gives the
    same bits)."""
    k, n = shape
    panels, kp = -(-n // NR), bf16_padded_k(k)
    packed = np.asarray(packed)
    if packed.shape != (panels, kp // 2, NR, 2) or packed.dtype != np.uint16:
        raise LayoutError(f"packed bf16 weight has shape {list(packed.shape)} ({packed.dtype}), expected "
                          f"{[panels, kp // 2, NR, 2]} (uint16)")
    bits = packed.transpose(1, 3, 0, 2).reshape(kp, panels * NR)[:k, :n]
    return np.ascontiguousarray(bf16_to_float32(bits))


@dataclass(frozen=True)
class PanelsBf16(WeightLayout):
    """[K, N] -> bf16 panels as int32 pairs [ceil(N/16), Kp/2, 16], the layout gemm_packed_bf16 reads."""
    stored_dtype = np.dtype(np.int32)

    def pack(self, w: np.ndarray) -> np.ndarray:
        bits = pack_panels_bf16(w)
        return np.ascontiguousarray(bits).view("<i4")[..., 0].astype(np.int32)

    def unpack(self, stored: np.ndarray, shape) -> np.ndarray:
        if len(shape) != 2:
            raise LayoutError(f"a packed constant must be a matrix, the IR says shape {list(shape)}")
        k, n = shape
        want = (-(-n // NR), bf16_padded_k(k) // 2, NR)
        if stored.shape != want or stored.dtype != np.int32:
            raise LayoutError(f"packed bf16 constant has shape {list(stored.shape)} ({stored.dtype}), expected "
                              f"{list(want)} (int32)")
        bits = np.ascontiguousarray(stored.astype("<i4")).view(np.uint16).reshape(*want, 2)
        return unpack_panels_bf16(bits, shape)


@dataclass(frozen=True)
class Transposed(WeightLayout):
    """W^T ([N, K]): a GPU warp reads one column's K values contiguously."""

    def pack(self, w: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(w.T, dtype=_element(w))

    def unpack(self, stored: np.ndarray, shape) -> np.ndarray:
        if stored.ndim != 2 or tuple(stored.shape[::-1]) != tuple(shape):
            raise LayoutError(f"a transposed initializer of shape {list(stored.shape)}, the IR says {list(shape)}")
        return np.ascontiguousarray(stored.T)


DENSE, PANELS, TRANSPOSED = WeightLayout("dense"), Panels("panels"), Transposed("transposed")
PANELS_BF16 = PanelsBf16("panels_bf16")
LAYOUTS = {layout.name: layout for layout in (DENSE, PANELS, PANELS_BF16, TRANSPOSED)}


def pack_panels(w: np.ndarray) -> np.ndarray:
    """[K, N] weight -> [ceil(N/16), K, 16] panels (zero padded), the layout gemm_packed reads."""
    return PANELS.pack(w)

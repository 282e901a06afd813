"""The weight layouts the CPU matrix products read (csrc/runtime/gemm.h, gemm_bf16.h): reference packers and their
inverses (for `cortex rebuild`), in numpy.

A layout is chosen by the product's precision, never by the ISA: every float32 micro-kernel (AVX2, AVX-512,
portable) reads `panels`, and every bf16 one (AMX, AVX512-BF16, portable) reads `panels_bf16`, so a converted model's
constants do not change with `--cpu`.

- `panels` (float32): 16 columns a panel, `packed[p][k][r] = W[k][p*16 + r]`, shape [ceil(N/16), K, 16], zero
  padded. A panel row is one cache line and one AVX-512 register.
- `panels_bf16` (bf16 bits as uint16): 16 columns a panel, k in pairs, K padded to a multiple of 32:
  `packed[p][kk][r][t] = bf16(W[2*kk + t][p*16 + r])`, shape [ceil(N/16), Kp/2, 16, 2], Kp = ceil(K/32)*32, zero
  padded. A pair row is one vdpbf16ps operand; 16 pair rows are one AMX B tile. bf16() rounds to nearest even,
  flushes denormals to zero and keeps NaN (VCVTNEPS2BF16). Its inverse returns the rounded weights: the float32
  weights are gone once packed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

NR = 16  # columns of a panel in both layouts; column ranges of a product are multiples of it
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


def _padded(w: np.ndarray, rows: int, cols: int, dtype) -> np.ndarray:
    out = np.zeros((rows, cols), dtype=dtype)
    out[: w.shape[0], : w.shape[1]] = w
    return out


def _check_2d(w) -> np.ndarray:
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"a weight to pack must be 2-D [K, N], got shape {list(w.shape)}")
    return w


def pack_panels(w) -> np.ndarray:
    """[K, N] float32 -> `panels` [ceil(N/16), K, 16] float32."""
    w = _check_2d(w)
    k, n = w.shape
    panels = -(-n // NR)
    return np.ascontiguousarray(_padded(w, k, panels * NR, np.float32).reshape(k, panels, NR).transpose(1, 0, 2))


def unpack_panels(packed, shape) -> np.ndarray:
    """The inverse of pack_panels: `panels` -> the [K, N] float32 weight."""
    k, n = shape
    panels = -(-n // NR)
    packed = np.asarray(packed)
    if packed.shape != (panels, k, NR):
        raise ValueError(f"packed weight has shape {list(packed.shape)}, expected {[panels, k, NR]}")
    return np.ascontiguousarray(packed.transpose(1, 0, 2).reshape(k, panels * NR)[:, :n], dtype=np.float32)


def bf16_padded_k(k: int) -> int:
    return -(-k // BF16_K_STEP) * BF16_K_STEP


def pack_panels_bf16(w) -> np.ndarray:
    """[K, N] float32 -> `panels_bf16` [ceil(N/16), Kp/2, 16, 2] uint16 (bf16 bits)."""
    w = _check_2d(w)
    k, n = w.shape
    panels, kp = -(-n // NR), bf16_padded_k(k)
    bits = _padded(bf16_bits(w), kp, panels * NR, np.uint16)  # [Kp, P*16]
    return np.ascontiguousarray(bits.reshape(kp // 2, 2, panels, NR).transpose(2, 0, 3, 1))


def unpack_panels_bf16(packed, shape) -> np.ndarray:
    """The inverse of pack_panels_bf16: `panels_bf16` -> the [K, N] weight as float32 (its bf16 values; packing it
    again gives the same bits)."""
    k, n = shape
    panels, kp = -(-n // NR), bf16_padded_k(k)
    packed = np.asarray(packed)
    if packed.shape != (panels, kp // 2, NR, 2) or packed.dtype != np.uint16:
        raise ValueError(f"packed weight has shape {list(packed.shape)} ({packed.dtype}), expected "
                         f"{[panels, kp // 2, NR, 2]} (uint16)")
    bits = packed.transpose(1, 3, 0, 2).reshape(kp, panels * NR)[:k, :n]
    return np.ascontiguousarray(bf16_to_float32(bits))


@dataclass(frozen=True)
class PanelLayout:
    """A named weight layout: its stored dtype, packer and inverse."""
    name: str
    dtype: type
    pack: Callable[[np.ndarray], np.ndarray]
    unpack: Callable[[np.ndarray, tuple], np.ndarray]


LAYOUTS = {
    "panels": PanelLayout("panels", np.float32, pack_panels, unpack_panels),
    "panels_bf16": PanelLayout("panels_bf16", np.uint16, pack_panels_bf16, unpack_panels_bf16),
}

# The layout a product of each precision reads (whatever the ISA).
LAYOUT_FOR_PRECISION = {"float32": "panels", "bf16": "panels_bf16"}


def layout(name: str) -> PanelLayout:
    try:
        return LAYOUTS[name]
    except KeyError:
        raise ValueError(f"unknown panel layout {name!r} (known: {', '.join(LAYOUTS)})") from None

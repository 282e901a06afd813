"""The kernels' activations (csrc/runtime/activations.h, through cortex._C): accurate to a few float ulps over
the whole float range, NaN in gives NaN out, infinities give the limits."""
from __future__ import annotations

import math

import numpy as np
import pytest

_C = pytest.importorskip("cortex._C", reason="cortex._C is not built")

GRID = np.concatenate([np.linspace(-100, 100, 20001), np.linspace(-1, 1, 2001), [0.0, -0.0, 1e-30, -1e-30]])


def _f32(x):
    return float(np.float32(x))


def test_sigmoid_is_accurate():
    for x in GRID:
        x = _f32(x)
        exact = 1.0 / (1.0 + math.exp(-x)) if x > -700 else 0.0
        assert abs(_C.sigmoid(x) - exact) <= 3e-7 * max(exact, 1e-30) + 1e-38


def test_tanh_is_accurate():
    for x in GRID:
        x = _f32(x)
        assert abs(_C.tanh(x) - math.tanh(x)) <= 3e-7


def test_special_values():
    assert math.isnan(_C.sigmoid(float("nan"))) and math.isnan(_C.tanh(float("nan")))
    assert _C.sigmoid(float("inf")) == 1.0 and _C.sigmoid(float("-inf")) == pytest.approx(0.0, abs=1e-37)
    assert _C.tanh(float("inf")) == 1.0 and _C.tanh(float("-inf")) == -1.0
    assert _C.tanh(0.0) == 0.0 and _C.sigmoid(0.0) == 0.5

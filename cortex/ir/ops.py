"""The elementwise op table: each op defined once, with its numpy semantics (constant folding, the evaluator of
the passes) and its code per target. The frontend maps ONNX ops onto these names; a code generator renders an op
with `render(op, target, ...)`, and an op with no rendering for a target is a `MissingOp` (the region is refused),
never a KeyError.

Row values are of the program's element type (float32, or float64): the numpy semantics compute in float64 when
an operand is float64, else in float32. Comparisons and logic produce 0.0 / 1.0 (a per-node boolean computed from float values,
e.g. `x > 0` in a hand-written leaky ReLU); `where` and the logic ops read any nonzero as true.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


class MissingOp(Exception):
    """An op has no rendering for a target."""


@dataclass(frozen=True)
class ElementOp:
    name: str
    arity: int
    numpy: Callable  # (*operands, *params) -> array: float32 in, float32 out (float64 when an operand is)
    code: dict = field(default_factory=dict)  # dialect -> format string over {x} / {a}, {b} and {p0}, {p1}


def element_of(*args) -> type:
    """The element type an op computes in: float64 when an operand (an array; parameters are Python floats) is
    float64, else float32."""
    return np.float64 if any(isinstance(a, np.ndarray) and a.dtype == np.float64 for a in args) else np.float32


def _f32(fn):
    def wrapped(*args):
        dtype = element_of(*args)
        with np.errstate(all="ignore"):
            return np.asarray(fn(*args), dtype=dtype)
    return wrapped


def _bool(fn):
    return _f32(lambda *args: fn(*args).astype(np.float32))


def _u(name, fn, cpp):
    return ElementOp(name, 1, _f32(fn), {"c": cpp})


def _b(name, fn, cpp):
    return ElementOp(name, 2, _f32(fn), {"c": cpp})


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _softplus(x):
    return np.where(x > 0, x + np.log1p(np.exp(-x)), np.log1p(np.exp(x)))


def _erf(x):
    from math import erf
    return np.vectorize(erf, otypes=[np.float64])(np.asarray(x, dtype=np.float64))


_UNARY = [
    _u("identity", lambda x: x, "{x}"),
    _u("neg", lambda x: -x, "(-{x})"),
    _u("abs", np.abs, "std::fabs({x})"),
    _u("sigmoid", _sigmoid, "cortex::sigmoid({x})"),
    _u("tanh", np.tanh, "cortex::tanh_f({x})"),
    _u("relu", lambda x: np.maximum(x, 0), "cortex::relu({x})"),
    _u("exp", np.exp, "std::exp({x})"),
    _u("log", np.log, "std::log({x})"),
    _u("sqrt", np.sqrt, "std::sqrt({x})"),
    _u("reciprocal", lambda x: 1.0 / x, "(1.0f / {x})"),
    _u("erf", _erf, "std::erf({x})"),
    _u("softplus", _softplus, "cortex::softplus({x})"),
    _u("softsign", lambda x: x / (1 + np.abs(x)), "({x} / (1.0f + std::fabs({x})))"),
    _u("elu", lambda x, a: np.where(x > 0, x, a * np.expm1(x)), "cortex::elu({x}, {p0})"),
    _u("selu", lambda x, a, g: g * np.where(x > 0, x, a * np.expm1(x)), "({p1} * cortex::elu({x}, {p0}))"),
    _u("celu", lambda x, a: np.maximum(x, 0) + np.minimum(0, a * np.expm1(x / a)), "cortex::celu({x}, {p0})"),
    _u("leakyrelu", lambda x, a: np.where(x < 0, a * x, x), "({x} < 0.0f ? {p0} * {x} : {x})"),
    _u("thresholdedrelu", lambda x, a: np.where(x > a, x, 0), "({x} > {p0} ? {x} : 0.0f)"),
    _u("hardsigmoid", lambda x, a, b: np.clip(a * x + b, 0, 1), "cortex::hardsigmoid({x}, {p0}, {p1})"),
    ElementOp("hardswish", 1, _f32(lambda x: x * np.clip(x / 6 + 0.5, 0, 1)),
              {"c": "({x} * cortex::hardsigmoid({x}, 1.0f / 6.0f, 0.5f))",
               "c64": "({x} * cortex::hardsigmoid({x}, 1.0 / 6.0, 0.5))"}),
    _u("gelu", lambda x: 0.5 * x * (1 + _erf(x / np.sqrt(2))), "cortex::gelu({x})"),
    _u("gelu_tanh", lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3))),
       "cortex::gelu_tanh({x})"),
    _u("mish", lambda x: x * np.tanh(_softplus(x)), "({x} * cortex::tanh_f(cortex::softplus({x})))"),
    _u("clip", lambda x, lo, hi: np.minimum(np.maximum(x, lo), hi), "cortex::clip({x}, {p0}, {p1})"),
    _u("shrink", lambda x, bias, lambd: np.where(x < -lambd, x + bias, np.where(x > lambd, x - bias, 0)),
       "({x} < -{p1} ? {x} + {p0} : ({x} > {p1} ? {x} - {p0} : 0.0f))"),
    _u("sin", np.sin, "std::sin({x})"),
    _u("cos", np.cos, "std::cos({x})"),
    _u("tan", np.tan, "std::tan({x})"),
    _u("asin", np.arcsin, "std::asin({x})"),
    _u("acos", np.arccos, "std::acos({x})"),
    _u("atan", np.arctan, "std::atan({x})"),
    _u("sinh", np.sinh, "std::sinh({x})"),
    _u("cosh", np.cosh, "std::cosh({x})"),
    _u("asinh", np.arcsinh, "std::asinh({x})"),
    _u("acosh", np.arccosh, "std::acosh({x})"),
    _u("atanh", np.arctanh, "std::atanh({x})"),
    _u("floor", np.floor, "std::floor({x})"),
    _u("ceil", np.ceil, "std::ceil({x})"),
    _u("round", np.round, "std::nearbyint({x})"),  # half to even, as ONNX Round
    _u("sign", np.sign, "cortex::sign({x})"),
    ElementOp("not", 1, _bool(lambda x: x == 0), {"c": "({x} == 0.0f ? 1.0f : 0.0f)"}),
    ElementOp("isnan", 1, _bool(np.isnan), {"c": "(std::isnan({x}) ? 1.0f : 0.0f)"}),
    ElementOp("isinf", 1, _bool(np.isinf), {"c": "(std::isinf({x}) ? 1.0f : 0.0f)"}),
]

_BINARY = [
    _b("add", np.add, "({a} + {b})"),
    _b("sub", np.subtract, "({a} - {b})"),
    _b("mul", np.multiply, "({a} * {b})"),
    _b("div", np.divide, "({a} / {b})"),
    _b("max", np.maximum, "cortex::fmax_nan({a}, {b})"),
    _b("min", np.minimum, "cortex::fmin_nan({a}, {b})"),
    _b("pow", np.power, "std::pow({a}, {b})"),
    _b("fmod", np.fmod, "std::fmod({a}, {b})"),
    _b("prelu", lambda x, s: np.where(x < 0, s * x, x), "({a} < 0.0f ? {b} * {a} : {a})"),
    ElementOp("lt", 2, _bool(np.less), {"c": "({a} < {b} ? 1.0f : 0.0f)"}),
    ElementOp("le", 2, _bool(np.less_equal), {"c": "({a} <= {b} ? 1.0f : 0.0f)"}),
    ElementOp("gt", 2, _bool(np.greater), {"c": "({a} > {b} ? 1.0f : 0.0f)"}),
    ElementOp("ge", 2, _bool(np.greater_equal), {"c": "({a} >= {b} ? 1.0f : 0.0f)"}),
    ElementOp("eq", 2, _bool(np.equal), {"c": "({a} == {b} ? 1.0f : 0.0f)"}),
    ElementOp("ne", 2, _bool(np.not_equal), {"c": "({a} != {b} ? 1.0f : 0.0f)"}),
    ElementOp("and", 2, _bool(lambda a, b: (a != 0) & (b != 0)), {"c": "(({a} != 0.0f && {b} != 0.0f) ? 1.0f : 0.0f)"}),
    ElementOp("or", 2, _bool(lambda a, b: (a != 0) | (b != 0)), {"c": "(({a} != 0.0f || {b} != 0.0f) ? 1.0f : 0.0f)"}),
    ElementOp("xor", 2, _bool(lambda a, b: (a != 0) ^ (b != 0)), {"c": "((({a} != 0.0f) != ({b} != 0.0f)) ? 1.0f : 0.0f)"}),
]

UNARY = {op.name: op for op in _UNARY}
BINARY = {op.name: op for op in _BINARY}

REDUCE_NUMPY = {"add": np.sum, "mul": np.prod, "max": np.max, "min": np.min}


def param_count(op: str) -> int:
    """How many float parameters an elementwise op takes ({p0}, {p1}, ... in its code)."""
    entry = UNARY.get(op) or BINARY.get(op)
    return len({m for code in entry.code.values() for m in re.findall(r"\{p\d+\}", code)}) if entry else 0


def evaluate(op: str, *args, params=()):
    """numpy semantics of op over float32 arrays (broadcasting); over float64 arrays when an operand is float64."""
    table = UNARY if op in UNARY else BINARY
    dtype = element_of(*[np.asarray(a) for a in args])
    return table[op].numpy(*[np.asarray(a, dtype=dtype) for a in args], *params)


# A target's code for an op is its own entry, else the C-style one both the C++ and the CUDA emitters compile (the
# shared functions live in csrc/runtime/activations.h, host and device alike).
DIALECTS = {"cpp": ("cpp", "c"), "cuda": ("cuda", "c"),
            "cpp64": ("c64", "cpp", "c")}  # a float64 kernel: its own entry where a float literal would round


def render(op: str, target: str, operands: dict, params=(), literal=str) -> str:
    """The code of op for a target, with operands ({x} or {a}, {b}) and params ({p0}, ...) filled in; `literal`
    renders a float parameter."""
    entry = UNARY.get(op) or BINARY.get(op)
    code = next((entry.code[d] for d in DIALECTS.get(target, (target,)) if entry and d in entry.code), None)
    if code is None:
        raise MissingOp(f"elementwise op '{op}' has no {target} code")
    fill = dict(operands)
    fill.update({f"p{i}": literal(p) for i, p in enumerate(params)})
    return code.format(**fill)

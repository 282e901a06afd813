"""Elementwise ONNX ops over every kind of value, with numpy broadcasting: arithmetic, comparisons, logic, every
ONNX activation, Where, Cast, Clip. Structure values (Sym) stay exact integer/bool expressions; anything involving a
per-node float row becomes row math from the op table (cortex/ir/ops.py)."""
from __future__ import annotations

import numpy as np
import onnx

from ..ir import index as ix
from ..ir import nodes as ir
from ..ir import ops as irops
from .interpreter import Interpreter, ONNX_DTYPES, attr, handler, sym_to_row
from .layout import broadcast_row, rearrange_many
from .values import Array, INT_DTYPES, Known, Refusal, Row, Seq, Sym, Table, describe, shape_of


def _shape(v):
    s = shape_of(v)
    if isinstance(v, Table):
        raise Refusal(f"operand is the whole state table {v.name}: Cortex follows a state only through row reads and "
                      f"writes at structure indices", hint="read and write one node's rows per iteration")
    if s is None:
        raise Refusal(f"operand {describe(v)} has no static shape")
    return s


def out_shape(values):
    try:
        return tuple(np.broadcast_shapes(*[_shape(v) for v in values if v is not None]))
    except ValueError:
        raise Refusal("operands do not broadcast: " + ", ".join(str(list(_shape(v))) for v in values)) from None


def _is_float(v):
    return (isinstance(v, Row) and not v.boolean) or (isinstance(v, Known) and v.value.dtype.kind == "f")


def smap(fn, syms, dtype):
    """fn over the elements of structure values, with numpy broadcasting."""
    elems = np.frompyfunc(fn, len(syms), 1)(*[s.elems for s in syms])
    elems = np.asarray(elems, dtype=object)
    return Sym(elems, dtype)


def _struct(it, values):
    """The operands as structure values when none is a float row (or float constant), else None."""
    if any(isinstance(v, Row) for v in values):
        return None
    if any(isinstance(v, Known) and v.value.dtype.kind == "f" for v in values) and \
            not any(isinstance(v, Sym) for v in values):
        return None
    try:
        return [it.sym(v) for v in values]
    except Refusal:
        return None


# ---- arithmetic --------------------------------------------------------------------------------

INDEX_ARITH = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Max": "max", "Min": "min"}
ROW_ARITH = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Max": "max", "Min": "min", "Pow": "pow"}


def row_binary(it, op, a, b):
    shape = out_shape([a, b])
    ra, rb = broadcast_row(it, a, shape), broadcast_row(it, b, shape)
    return Row(ir.binary(op, ra.expr, rb.expr), shape, op in ("lt", "le", "gt", "ge", "eq", "ne", "and", "or", "xor"))


def arith(it: Interpreter, op_type, a, b):
    syms = _struct(it, [a, b])
    if syms is not None:
        if op_type not in INDEX_ARITH:
            raise Refusal(f"{op_type} on structure indices")
        op = INDEX_ARITH[op_type]
        return smap(lambda x, y: ix.ibin(op, ix.as_index(x), ix.as_index(y)), syms, _int_dtype(syms))
    return row_binary(it, ROW_ARITH[op_type], a, b)


def _int_dtype(syms):
    for s in syms:
        if s.dtype in INT_DTYPES:
            return s.dtype
    return "int64"


@handler("Add", "Sub", "Mul", "Div", "Pow")
def op_arith(it, node, args, lookup):
    return arith(it, node.op_type, args[0], args[1])


@handler("Mod")
def op_mod(it, node, args, lookup):
    a, b = args
    fmod = attr(node, "fmod", 0)
    syms = _struct(it, [a, b])
    if syms is not None:
        op = "fmod" if fmod else "mod"
        return smap(lambda x, y: ix.ibin(op, ix.as_index(x), ix.as_index(y)), syms, _int_dtype(syms))
    if not fmod:
        raise Refusal("Mod of floats needs fmod=1")
    return row_binary(it, "fmod", a, b)


@handler("Max", "Min", "Sum", "Mean")
def op_variadic(it, node, args, lookup):
    op = {"Max": "Max", "Min": "Min", "Sum": "Add", "Mean": "Add"}[node.op_type]
    acc = args[0]
    for x in args[1:]:
        acc = arith(it, op, acc, x)
    if node.op_type == "Mean" and len(args) > 1:
        acc = row_binary(it, "div", acc, Known(it.float_dtype.type(len(args))))
    if isinstance(acc, Known):
        return acc
    return acc


@handler("PRelu")
def op_prelu(it, node, args, lookup):
    return row_binary(it, "prelu", args[0], args[1])


# ---- comparisons and logic ---------------------------------------------------------------------

COMPARE = {"Less": "lt", "LessOrEqual": "le", "Greater": "gt", "GreaterOrEqual": "ge", "Equal": "eq"}


@handler(*COMPARE)
def op_compare(it, node, args, lookup):
    op = COMPARE[node.op_type]
    a, b = args
    syms = _exact_structural(it, [a, b])
    if syms is not None:
        return smap(lambda x, y: ix.cmp(op, ix.as_index(x), ix.as_index(y)), syms, "bool")
    return row_binary(it, op, a, b)


def _exact_structural(it, values):
    """Operands as exact integer structure values: structure values, integer constants, integral float constants
    and float rows that are casts of structure values (compared exactly); else None."""
    out = []
    for v in values:
        try:
            out.append(it.sym(v))
        except Refusal:
            return None
    return out


LOGIC = {"And": ix.band, "Or": ix.bor, "Xor": ix.bxor}


@handler("And", "Or", "Xor")
def op_logic(it, node, args, lookup):
    syms = _struct(it, args)
    if syms is not None:
        fn = LOGIC[node.op_type]
        return smap(lambda x, y: fn(ix.as_pred(x), ix.as_pred(y)), syms, "bool")
    return row_binary(it, node.op_type.lower(), args[0], args[1])


@handler("Not")
def op_not(it, node, args, lookup):
    x = args[0]
    if isinstance(x, Row):
        return Row(ir.unary("not", x.expr), x.shape, True)
    s = it.sym(x)
    return smap(lambda e: ix.bnot(ix.as_pred(e)), [s], "bool")


# ---- activations and other unary math ------------------------------------------------------------

def _params(*spec):
    """Reads float attributes with defaults: spec = ((name, default), ...)."""
    return lambda node: tuple(float(attr(node, name, default)) for name, default in spec)


UNARY = {
    "Sigmoid": ("sigmoid", None), "Tanh": ("tanh", None), "Relu": ("relu", None), "Neg": ("neg", None),
    "Exp": ("exp", None), "Log": ("log", None), "Abs": ("abs", None), "Sqrt": ("sqrt", None),
    "Reciprocal": ("reciprocal", None), "Erf": ("erf", None), "Softplus": ("softplus", None),
    "Softsign": ("softsign", None), "Elu": ("elu", _params(("alpha", 1.0))),
    "Selu": ("selu", _params(("alpha", 1.67326319217681884765625), ("gamma", 1.05070102214813232421875))),
    "Celu": ("celu", _params(("alpha", 1.0))), "LeakyRelu": ("leakyrelu", _params(("alpha", 0.01))),
    "ThresholdedRelu": ("thresholdedrelu", _params(("alpha", 1.0))),
    "HardSigmoid": ("hardsigmoid", _params(("alpha", 0.2), ("beta", 0.5))), "HardSwish": ("hardswish", None),
    "Mish": ("mish", None), "Shrink": ("shrink", _params(("bias", 0.0), ("lambd", 0.5))),
    "Sin": ("sin", None), "Cos": ("cos", None), "Tan": ("tan", None), "Asin": ("asin", None),
    "Acos": ("acos", None), "Atan": ("atan", None), "Sinh": ("sinh", None), "Cosh": ("cosh", None),
    "Asinh": ("asinh", None), "Acosh": ("acosh", None), "Atanh": ("atanh", None), "Floor": ("floor", None),
    "Ceil": ("ceil", None), "Round": ("round", None), "Sign": ("sign", None), "IsNaN": ("isnan", None),
}


def _index_unary(op_type, e):
    e = ix.as_index(e)
    if op_type == "Neg":
        return ix.ibin("mul", ix.const(-1), e)
    if op_type == "Abs":
        return ix.ibin("max", e, ix.ibin("mul", ix.const(-1), e))
    if op_type == "Sign":
        return ix.iselect(ix.cmp("gt", e, ix.const(0)), ix.const(1),
                          ix.iselect(ix.cmp("lt", e, ix.const(0)), ix.const(-1), ix.const(0)))
    if op_type in ("Floor", "Ceil", "Round", "Relu"):
        return e if op_type != "Relu" else ix.ibin("max", e, ix.const(0))
    raise Refusal(f"{op_type} of structure indices")


@handler(*UNARY, "Gelu", "IsInf")
def op_unary(it, node, args, lookup):
    x = args[0]
    if isinstance(x, Sym) or (isinstance(x, Known) and x.value.dtype.kind in "iu"):
        s = it.sym(x)
        return smap(lambda e: _index_unary(node.op_type, e), [s], s.dtype)
    r = it.row(x)
    if node.op_type == "Gelu":
        op, params = ("gelu_tanh" if attr(node, "approximate", "none") == "tanh" else "gelu"), ()
    elif node.op_type == "IsInf":
        if not attr(node, "detect_negative", 1) or not attr(node, "detect_positive", 1):
            raise Refusal("IsInf detecting one sign only")
        op, params = "isinf", ()
    else:
        op, read = UNARY[node.op_type]
        params = read(node) if read else ()
    boolean = op in ("isnan", "isinf")
    return Row(ir.unary(op, r.expr, params), r.shape, boolean)


@handler("Identity")
def op_identity(it, node, args, lookup):
    return args[0]


@handler("Dropout")
def op_dropout(it, node, args, lookup):
    """Inference: the identity (training_mode, when given, must be a constant false)."""
    if len(args) > 2 and args[2] is not None:
        if not (isinstance(args[2], Known) and not bool(np.asarray(args[2].value).reshape(-1)[0])):
            raise Refusal("Dropout in training mode")
    x = args[0]
    outs = [x]
    if len(node.output) > 1:
        outs.append(Known(np.ones(shape_of(x) or (), dtype=bool)))
    return outs


@handler("Clip")
def op_clip(it, node, args, lookup):
    x = args[0]
    low = args[1] if len(args) > 1 else None
    high = args[2] if len(args) > 2 else None
    if it.opset < 11:
        low = Known(np.float32(attr(node, "min", -np.inf)))
        high = Known(np.float32(attr(node, "max", np.inf)))
    syms = _struct(it, [v for v in (x, low, high) if v is not None])
    if syms is not None and isinstance(x, Sym):
        out = x
        if low is not None:
            out = arith(it, "Max", out, low)
        if high is not None:
            out = arith(it, "Min", out, high)
        return out
    r = it.row(x)
    if (low is None or isinstance(low, Known)) and (high is None or isinstance(high, Known)):
        lo = float(np.asarray(low.value).reshape(-1)[0]) if low is not None else -np.inf
        hi = float(np.asarray(high.value).reshape(-1)[0]) if high is not None else np.inf
        return Row(ir.unary("clip", r.expr, (lo, hi)), r.shape)
    out = x
    if low is not None:
        out = row_binary(it, "max", out, low)
    if high is not None:
        out = row_binary(it, "min", out, high)
    return out


# ---- Where -------------------------------------------------------------------------------------


@handler("Where")
def op_where(it, node, args, lookup):
    cond, a, b = args
    if isinstance(cond, Known):
        c = np.asarray(cond.value, dtype=bool)
        return rearrange_many(it, [a, b], lambda ids: np.where(c, ids[0], ids[1]))
    if isinstance(cond, Row) and row_to_pred(it, cond) is None:
        shape = out_shape([cond, a, b])
        rc, ra, rb = (broadcast_row(it, v, shape) for v in (cond, a, b))
        return Row(ir.where(rc.expr, ra.expr, rb.expr), shape)
    pred = it.sym(cond) if not isinstance(cond, Row) else row_to_pred(it, cond)
    syms = _struct(it, [a, b])
    if syms is not None:
        return smap(lambda p, x, y: ix.iselect(ix.as_pred(p), ix.as_index(x), ix.as_index(y)),
                    [pred] + syms, _int_dtype(syms))
    shape = out_shape([pred, a, b])
    ra, rb = broadcast_row(it, a, shape), broadcast_row(it, b, shape)
    preds = np.broadcast_to(pred.elems, shape).reshape(-1)
    boolean = ra.boolean and rb.boolean
    if all(p == preds[0] for p in preds):
        return Row(_select(ix.as_pred(preds[0]), ra.expr, rb.expr), shape, boolean)
    parts, start = [], 0
    for k in range(1, len(preds) + 1):  # runs of elements under one predicate (one per child of a stack)
        if k == len(preds) or preds[k] != preds[start]:
            pa = ra.expr if ra.expr.width == 1 else ir.slice_row(ra.expr, start, k)
            pb = rb.expr if rb.expr.width == 1 else ir.slice_row(rb.expr, start, k)
            parts.append(_select(ix.as_pred(preds[start]), _widen(pa, k - start), _widen(pb, k - start)))
            start = k
    return Row(ir.concat(parts), shape, boolean)


def _widen(e, width):
    return e if e.width == width else ir.take(e, [0] * width)


def _select(pred, a, b):
    if isinstance(pred, ir.BConst):
        return a if pred.value else b
    if a == b:
        return a
    width = max(a.width, b.width)
    if a.width != b.width:
        a, b = _widen(a, width), _widen(b, width)
    return ir.Select(pred, a, b, width)


def row_to_pred(it, r: Row):
    """A boolean row that is exactly a structure predicate (a cast), as a Sym, or None."""
    try:
        s = it.sym(r)
    except Refusal:
        return None
    return smap(ix.as_pred, [s], "bool")


# ---- Cast --------------------------------------------------------------------------------------


def cast(it, x, to: str):
    if isinstance(x, Known):
        if to in ("float16", "bfloat16"):
            raise Refusal(f"Cast to {to}")
        return Known(np.asarray(x.value).astype(to if to != "bool" else bool))
    if isinstance(x, Sym):
        if to == "bool":
            return smap(ix.as_pred, [x], "bool")
        if to in INT_DTYPES:
            return smap(ix.as_index, [x], to)
        if to == it.element:
            r = sym_to_row(x)
            return Row(r.expr, r.shape)
        if to in ir.FLOAT_DTYPES:
            raise it.mixed_float(to, "a Cast of a structure value")
        raise Refusal(f"Cast of a structure value to {to}")
    if isinstance(x, Row):
        if to == it.element:
            return Row(x.expr, x.shape)
        if to in ir.FLOAT_DTYPES:
            raise it.mixed_float(to, f"a Cast of a per-node {it.element} row to {to}: the result")
        if to == "bool":
            if x.boolean:
                return x
            s = row_to_pred(it, x)
            if s is not None:
                return s
            return Row(ir.binary("ne", x.expr, ir.Scalar(0.0)), x.shape, True)
        if to in INT_DTYPES:
            return it.sym(x, "the integer value")
        raise Refusal(f"Cast of a per-node row to {to}: Cortex computes in {it.element}")
    if isinstance(x, Array):
        if to == x.dtype or (to in INT_DTYPES + ("bool",) and x.dtype in INT_DTYPES + ("bool",)):
            return Array(x.name, x.dtype, x.shape, x.fill, view=to)
        if to == it.element and x.read_dtype in INT_DTYPES + ("bool",) and x.shape is not None and \
                all(d == 1 for d in x.shape):  # a scalar ONNX Runtime computes (a size), as a float
            return cast(it, it.sym(x), to)
        raise Refusal(f"Cast of runtime tensor {x.name} ({x.dtype}) to {to}")
    if isinstance(x, Seq):
        return Seq(tuple(cast(it, v, to) for v in x.items))
    raise Refusal(f"Cast of {describe(x)}")


@handler("Cast")
def op_cast(it, node, args, lookup):
    to = ONNX_DTYPES.get(attr(node, "to"))
    if to is None:
        raise Refusal(f"Cast to {onnx.TensorProto.DataType.Name(attr(node, 'to'))}")
    return cast(it, args[0], to)


@handler("CastLike")
def op_cast_like(it, node, args, lookup):
    like = args[1]
    if isinstance(like, Known):
        to = str(like.value.dtype) if like.value.dtype != np.bool_ else "bool"
    elif isinstance(like, Row):
        to = "bool" if like.boolean else it.element
    elif isinstance(like, Sym):
        to = like.dtype
    elif isinstance(like, Array) and like.dtype:
        to = like.dtype
    else:
        raise Refusal(f"CastLike of {describe(like)}")
    return cast(it, args[0], to)


# the ops this module defines the row semantics of, so other modules can check coverage
ROW_OPS = set(irops.UNARY) | set(irops.BINARY)

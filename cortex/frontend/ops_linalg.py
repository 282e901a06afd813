"""Matrix products, reductions and normalizations over per-node values: MatMul and Gemm (every transpose, constant or
per-node operands on either side), Reduce* over any axes, Softmax/LogSoftmax, LayerNormalization,
BatchNormalization in inference, and the ONNX RNN/GRU/LSTM ops over a short static sequence."""
from __future__ import annotations

import numpy as np

from ..ir import index as ix
from ..ir import nodes as ir
from .interpreter import attr, handler
from .layout import element_ids, rearrange
from .operands import axes_of, norm_axis, static_shape
from .ops_elementwise import row_binary
from .ops_tables import resolve_part
from .values import Known, Partial, Refusal, Row, Sym, describe

# ---- matrix products ---------------------------------------------------------------------------


def _sub(r: Row, index) -> Row:
    """A sub-block r[index] (numpy indexing on the element ids)."""
    ids = element_ids(r)[index]
    return Row(ir.take(r.expr, ids.reshape(-1)), tuple(ids.shape))


def row_matmul_const(it, a: Row, w: np.ndarray) -> Row:
    """a @ W for a per-node a [..., K] and a constant 2-D W [K, N]: one GEMM row per row of a."""
    w = it.floats(w)
    if a.shape[-1] != w.shape[0]:
        raise Refusal(f"MatMul of {list(a.shape)} by {list(w.shape)}")
    rows = int(np.prod(a.shape[:-1], dtype=np.int64))
    name = it.const_name(w, "weight")
    return Row(ir.MatMul(a.expr, name, None, rows * w.shape[1], rows), tuple(a.shape[:-1]) + (w.shape[1],))


def const_matmul_row(it, w: np.ndarray, b: Row) -> Row:
    """W @ b for a constant 2-D W [M, K] and a per-node b [K] or [K, C]."""
    w = it.floats(w)
    if len(b.shape) == 1:
        out = row_matmul_const(it, Row(b.expr, (1, b.shape[0])), w.T)
        return Row(out.expr, (w.shape[0],))
    if b.shape[0] != w.shape[1]:
        raise Refusal(f"MatMul of {list(w.shape)} by {list(b.shape)}")
    cols = b.shape[1]
    name = it.const_name(np.ascontiguousarray(w.T), "weight")
    return Row(ir.LeftMatMul(name, b.expr, cols, w.shape[0] * cols), (w.shape[0], cols))


def row_matmul_row(it, a: Row, b: Row) -> Row:
    """a [R, C] @ b [C] or [C, D], both per node."""
    if len(b.shape) == 1:
        if a.shape[-1] != b.shape[0]:
            raise Refusal(f"MatMul of {list(a.shape)} by {list(b.shape)}")
        return Row(ir.MatVec(a.expr, b.expr, a.expr.width // b.shape[0]), tuple(a.shape[:-1]))
    r, c = a.shape
    c2, d = b.shape
    if c != c2:
        raise Refusal(f"MatMul of {list(a.shape)} by {list(b.shape)}")
    ia = np.broadcast_to(element_ids(a)[:, None, :], (r, d, c))
    ib = np.broadcast_to(element_ids(b).T[None, :, :], (r, d, c))
    prod = ir.binary("mul", ir.take(a.expr, ia.reshape(-1)), ir.take(b.expr, ib.reshape(-1)))
    return Row(ir.Reduce("add", prod, c, r * d), (r, d))


def matmul(it, a, b):
    """numpy.matmul semantics over per-node and constant operands. A row whose size only the run knows (a Partial)
    contracted with an operand of static shape (a weight or a row) has the size the product needs (else the original
    fails): checked where it is read. Only the contracted dimension is proved: the last of the left operand, the only
    one of a 1-D right operand (a right operand's other dimensions stay unknown: refused)."""
    if isinstance(a, Partial) and not isinstance(b, Partial):
        sb = static_shape(b)
        if len(sb) >= 1:
            a = resolve_part(it, a, sb[0] if len(sb) == 1 else sb[-2], "the MatMul's left operand")
    if isinstance(b, Partial) and not isinstance(a, Partial) and len(b.shape) == 1:
        sa = static_shape(a)
        if len(sa) >= 1:
            b = resolve_part(it, b, sa[-1], "the MatMul's right operand")
    for v in (a, b):
        if isinstance(v, Partial):
            raise Refusal(f"MatMul of {describe(v)}: a product proves only the size it contracts",
                          hint="export the dimensions of a per-node input other than its node dimensions as static "
                               "(dynamic_axes / dynamic_shapes on the node dimension only)")
    sa, sb = static_shape(a), static_shape(b)
    if isinstance(a, Sym) or isinstance(b, Sym):
        raise Refusal("MatMul of structure values")
    if not sa or not sb:
        raise Refusal("MatMul of a scalar")
    if len(sa) > 2 or len(sb) > 2:
        return _batched_matmul(it, a, b, sa, sb)
    if isinstance(b, Known) and not isinstance(a, Known):
        ra = it.row(a)
        if len(sa) == 1:
            out = row_matmul_const(it, Row(ra.expr, (1, sa[0])), b.value if len(sb) == 2 else b.value[:, None])
            return Row(out.expr, out.shape[1:] if len(sb) == 2 else ())
        if len(sb) == 1:
            out = row_matmul_const(it, ra, b.value[:, None])
            return Row(out.expr, out.shape[:-1])
        return row_matmul_const(it, ra, b.value)
    if isinstance(a, Known):
        rb = it.row(b)
        w = a.value if len(sa) == 2 else a.value[None, :]
        out = const_matmul_row(it, w, rb)
        return Row(out.expr, out.shape[1:]) if len(sa) == 1 else out
    ra, rb = it.row(a), it.row(b)
    if len(sa) == 1:
        out = row_matmul_row(it, Row(ra.expr, (1, sa[0])), rb)
        return Row(out.expr, out.shape[1:] if len(out.shape) > 1 else out.shape)
    return row_matmul_row(it, ra, rb)


def _batched_matmul(it, a, b, sa, sb):
    a2 = sa if len(sa) >= 2 else (1,) + tuple(sa)
    b2 = sb if len(sb) >= 2 else tuple(sb) + (1,)
    batch = np.broadcast_shapes(a2[:-2], b2[:-2])
    parts, shape = [], None
    for pos in np.ndindex(*batch) if batch else [()]:
        pa = tuple(p if d != 1 else 0 for p, d in zip(pos[len(pos) - len(a2[:-2]):], a2[:-2]))
        pb = tuple(p if d != 1 else 0 for p, d in zip(pos[len(pos) - len(b2[:-2]):], b2[:-2]))
        sub_a = _block(it, a, a2, pa)
        sub_b = _block(it, b, b2, pb)
        out = matmul(it, sub_a, sub_b)
        parts.append(it.row(out).expr)
        shape = static_shape(out)
    full = tuple(batch) + tuple(shape)
    if len(sa) == 1:
        full = full[:-2] + full[-1:]
    if len(sb) == 1:
        full = full[:-1]
    return Row(ir.concat(parts), full)


def _block(it, v, shape2, pos):
    if isinstance(v, Known):
        return Known(np.asarray(v.value).reshape(shape2)[pos])
    r = it.row(v)
    return _sub(Row(r.expr, tuple(shape2)), pos)


@handler("MatMul")
def op_matmul(it, node, args, lookup):
    return matmul(it, args[0], args[1])


@handler("Gemm")
def op_gemm(it, node, args, lookup):
    a, b = args[0], args[1]
    c = args[2] if len(args) > 2 else None
    alpha, beta = float(attr(node, "alpha", 1.0)), float(attr(node, "beta", 1.0))
    if attr(node, "transA", 0):
        a = rearrange(a, lambda x: x.T)
    if attr(node, "transB", 0):
        b = rearrange(b, lambda x: x.T)
    if isinstance(b, Known) and alpha != 1.0:
        b = Known(it.floats(b.value) * it.float_dtype.type(alpha))
        alpha = 1.0
    elif isinstance(a, Known) and alpha != 1.0:
        a = Known(it.floats(a.value) * it.float_dtype.type(alpha))
        alpha = 1.0
    out = matmul(it, a, b)
    if alpha != 1.0:
        out = row_binary(it, "mul", out, Known(it.float_dtype.type(alpha)))
    if c is None:
        return out
    if isinstance(c, Known):
        c = Known(it.floats(c.value) * it.float_dtype.type(beta))
    elif beta != 1.0:
        c = row_binary(it, "mul", c, Known(it.float_dtype.type(beta)))
    return row_binary(it, "add", out, c)


# ---- reductions --------------------------------------------------------------------------------

REDUCE = {"ReduceSum": "add", "ReduceMean": "add", "ReduceMax": "max", "ReduceMin": "min", "ReduceProd": "mul",
          "ReduceL1": "add", "ReduceL2": "add", "ReduceSumSquare": "add", "ReduceLogSum": "add",
          "ReduceLogSumExp": "add"}


def reduce_row(it, r: Row, axes, keepdims: bool, op: str) -> Row:
    shape = tuple(r.shape)
    rank = len(shape)
    axes = sorted({norm_axis(a, rank, "reduction axis") for a in axes}) if rank else []
    kept = [a for a in range(rank) if a not in axes]
    out_shape = tuple(1 if a in axes else shape[a] for a in range(rank)) if keepdims else tuple(shape[a] for a in kept)
    count = int(np.prod([shape[a] for a in axes], dtype=np.int64))
    block = int(np.prod([shape[a] for a in kept], dtype=np.int64))
    if count == 1:
        return Row(r.expr, out_shape, r.boolean)
    if axes == list(range(len(axes))) and count <= 64:
        # outer axes (the children of a stack): combine whole blocks, each one contiguous
        parts = [ir.slice_row(r.expr, j * block, (j + 1) * block) for j in range(count)]
        while len(parts) > 1:
            parts = [ir.binary(op, parts[i], parts[i + 1]) if i + 1 < len(parts) else parts[i]
                     for i in range(0, len(parts), 2)]
        return Row(parts[0], out_shape)
    expr = r.expr
    if axes != list(range(rank - len(axes), rank)):  # reduced axes last, then contiguous groups
        expr = ir.take(expr, np.transpose(element_ids(r), kept + axes).reshape(-1))
    return Row(ir.Reduce(op, expr, count, block), out_shape)


def reduce_value(it, node, x, axes, keepdims):
    kind = node.op_type
    if isinstance(x, Sym):
        if kind not in ("ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd"):
            raise Refusal(f"{kind} of structure values")
        op = REDUCE[kind]
        rank = len(x.shape)
        axes = sorted({a % rank for a in axes}) if axes else list(range(rank))
        elems = np.moveaxis(x.elems, axes, list(range(rank - len(axes), rank)))
        lead = elems.shape[:rank - len(axes)]
        flat = elems.reshape(lead + (-1,))
        out = np.empty(lead, dtype=object)
        for pos in np.ndindex(*lead) if lead else [()]:
            acc = None
            for e in flat[pos]:
                e = ix.as_index(e)
                acc = e if acc is None else ix.ibin(op, acc, e)
            out[pos] = acc if acc is not None else ix.const(0 if op == "add" else 1)
        if keepdims:
            out = out.reshape(tuple(1 if a in axes else d for a, d in enumerate(x.shape)))
        return Sym(out, "int64")
    r = it.row(x)
    axes = list(range(len(r.shape))) if axes is None else [norm_axis(a, max(len(r.shape), 1)) for a in axes]
    count = int(np.prod([r.shape[a] for a in axes], dtype=np.int64)) if r.shape else 1
    if kind in ("ReduceL1",):
        r = Row(ir.unary("abs", r.expr), r.shape)
    elif kind in ("ReduceL2", "ReduceSumSquare"):
        r = Row(ir.binary("mul", r.expr, r.expr), r.shape)
    elif kind == "ReduceLogSumExp":  # log(sum(exp(x - max))) + max, as ONNX Runtime computes it (no overflow)
        m = reduce_row(it, r, axes, True, "max")
        shifted = row_binary(it, "sub", r, m)
        s = reduce_row(it, Row(ir.unary("exp", shifted.expr), shifted.shape), axes, keepdims, "add")
        return row_binary(it, "add", Row(ir.unary("log", s.expr), s.shape), Row(m.expr, s.shape))
    out = reduce_row(it, r, axes, keepdims, REDUCE[kind])
    if kind == "ReduceMean":
        out = Row(ir.binary("div", out.expr, ir.Scalar(float(count))), out.shape)
    elif kind == "ReduceL2":
        out = Row(ir.unary("sqrt", out.expr), out.shape)
    elif kind == "ReduceLogSum":
        out = Row(ir.unary("log", out.expr), out.shape)
    return out


@handler(*REDUCE)
def op_reduce(it, node, args, lookup):
    x = args[0]
    from_input = node.op_type == "ReduceSum" and it.opset >= 13 or it.opset >= 18
    axes = axes_of(it, node, args, 1) if from_input or len(args) > 1 else attr(node, "axes")
    keepdims = bool(attr(node, "keepdims", 1))
    if not axes:
        if attr(node, "noop_with_empty_axes", 0):
            return x
        axes = None
    else:
        axes = [int(a) for a in axes]
    return reduce_value(it, node, x, axes, keepdims)


@handler("ArgMax", "ArgMin", "TopK", "NonZero", "Unique")
def op_data_dependent(it, node, args, lookup):
    raise Refusal(f"{node.op_type} gives indices computed from values (data-dependent)")


# ---- softmax and normalization -----------------------------------------------------------------


def _softmax(it, node, x, log):
    r = it.row(x)
    rank = len(r.shape)
    axis = norm_axis(attr(node, "axis", -1 if it.opset >= 13 else 1), max(rank, 1), f"{node.op_type} axis")
    return softmax_row(it, r, [axis] if it.opset >= 13 else list(range(axis, rank)), log)


def softmax_row(it, r: Row, axes, log: bool) -> Row:
    """Softmax (or LogSoftmax) of a row over `axes` (normalized), max-shifted as ONNX Runtime computes it."""
    m = reduce_row(it, r, axes, True, "max")
    shifted = row_binary(it, "sub", r, m)
    e = Row(ir.unary("exp", shifted.expr), shifted.shape)
    s = reduce_row(it, e, axes, True, "add")
    if log:
        return row_binary(it, "sub", shifted, Row(ir.unary("log", s.expr), s.shape))
    return row_binary(it, "div", e, s)


@handler("Softmax")
def op_softmax(it, node, args, lookup):
    return _softmax(it, node, args[0], log=False)


@handler("LogSoftmax")
def op_log_softmax(it, node, args, lookup):
    return _softmax(it, node, args[0], log=True)


@handler("LayerNormalization")
def op_layer_norm(it, node, args, lookup):
    x = it.row(args[0])
    scale = args[1]
    bias = args[2] if len(args) > 2 else None
    rank = len(x.shape)
    axis = norm_axis(attr(node, "axis", -1), max(rank, 1), "LayerNormalization axis")
    axes = list(range(axis, rank))
    count = float(np.prod(x.shape[axis:], dtype=np.int64))
    eps = float(attr(node, "epsilon", 1e-5))
    mean = Row(ir.binary("div", reduce_row(it, x, axes, True, "add").expr, ir.Scalar(count)),
               tuple(1 if a in axes else d for a, d in enumerate(x.shape)))
    d = row_binary(it, "sub", x, mean)
    sq = Row(ir.binary("mul", d.expr, d.expr), d.shape)
    var = Row(ir.binary("div", reduce_row(it, sq, axes, True, "add").expr, ir.Scalar(count)), mean.shape)
    inv = Row(ir.unary("reciprocal", ir.unary("sqrt", ir.binary("add", var.expr, ir.Scalar(eps)))), var.shape)
    y = row_binary(it, "mul", row_binary(it, "mul", d, inv), scale)
    if bias is not None:
        y = row_binary(it, "add", y, bias)
    return [y, mean, inv][:max(1, len(node.output))]


@handler("BatchNormalization")
def op_batch_norm(it, node, args, lookup):
    if attr(node, "training_mode", 0):
        raise Refusal("BatchNormalization in training mode")
    x, scale, bias, mean, var = args[:5]
    if not all(isinstance(v, Known) for v in (scale, bias, mean, var)):
        raise Refusal("BatchNormalization with computed statistics")
    shape = static_shape(x)
    eps = it.float_dtype.type(attr(node, "epsilon", 1e-5))
    factor = it.floats(scale.value) / np.sqrt(it.floats(var.value) + eps)
    shift = it.floats(bias.value) - it.floats(mean.value) * factor
    channel_shape = (shape[1],) + (1,) * (len(shape) - 2) if len(shape) > 1 else (shape[0],)
    y = row_binary(it, "mul", x, Known(factor.reshape(channel_shape)))
    return row_binary(it, "add", y, Known(shift.reshape(channel_shape)))


# ---- the ONNX recurrent ops, over a short static sequence -------------------------------------------

ACTIVATIONS = {"Sigmoid": "sigmoid", "Tanh": "tanh", "Relu": "relu"}


def _activation_ops(node, defaults, dirs):
    """The activation functions of each direction: `activations` lists them direction after direction (the same
    for every direction when it lists one direction's)."""
    names = attr(node, "activations")
    if names is None:
        return [list(defaults)] * dirs
    if attr(node, "activation_alpha") or attr(node, "activation_beta"):
        raise Refusal(f"{node.op_type} with activation parameters")
    out = []
    for n in names:
        n = n.decode() if isinstance(n, bytes) else n
        if n not in ACTIVATIONS:
            raise Refusal(f"{node.op_type} activation {n}")
        out.append(ACTIVATIONS[n])
    count = len(defaults)
    if len(out) == count:
        return [out] * dirs
    if len(out) != count * dirs:
        raise Refusal(f"{node.op_type} with {len(out)} activations for {dirs} direction(s) of {count}")
    return [out[d * count:(d + 1) * count] for d in range(dirs)]


def _rnn_inputs(it, node, args, gates):
    if attr(node, "layout", 0):
        raise Refusal(f"{node.op_type} with layout 1")
    x, w, r = args[0], args[1], args[2]
    b = args[3] if len(args) > 3 else None
    if len(args) > 4 and args[4] is not None:
        raise Refusal(f"{node.op_type} with sequence lengths")
    if not isinstance(w, Known) or not isinstance(r, Known) or (b is not None and not isinstance(b, Known)):
        raise Refusal(f"{node.op_type} weights are not constant")
    xr = it.row(x)
    if len(xr.shape) != 3:
        raise Refusal(f"{node.op_type} input of shape {list(xr.shape)}")
    hidden = int(attr(node, "hidden_size", np.asarray(r.value).shape[-1]))
    direction = attr(node, "direction", "forward")
    dirs = 2 if direction == "bidirectional" else 1
    return xr, it.floats(w.value), it.floats(r.value), \
        (None if b is None else it.floats(b.value)), hidden, direction, dirs


def _initial(it, v, d, batch, hidden):
    if v is None:
        return [None] * batch
    r = it.row(v)
    return [_sub(Row(r.expr, tuple(r.shape)), (d, j)).expr for j in range(batch)]


def _recurrent(it, node, args, gates, activations, step):
    """Unrolls the recurrence; `step(it, xw, hr, h, c, bias, hidden, clip, node, ri, acts)` computes one step with
    its direction's activation functions `acts` (the op's defaults: `activations`)."""
    xr, w, r, b, hidden, direction, dirs = _rnn_inputs(it, node, args, gates)
    acts_per_dir = _activation_ops(node, activations, dirs)
    seq, batch, _ = xr.shape
    clip = attr(node, "clip")
    outs_y, outs_h, outs_c = [], [], []
    for d in range(dirs):
        reverse = direction == "reverse" or d == 1
        h = _initial(it, args[5] if len(args) > 5 else None, d, batch, hidden)
        c = _initial(it, args[6] if len(args) > 6 else None, d, batch, hidden) if gates == 4 else None
        wi, ri = w[d].T, r[d].T
        bi = None if b is None else (b[d][:gates * hidden], b[d][gates * hidden:])
        ys = [None] * seq
        for t in (range(seq - 1, -1, -1) if reverse else range(seq)):
            for j in range(batch):
                xt = _sub(xr, (t, j))
                xw = row_matmul_const(it, Row(xt.expr, (1, xt.shape[0])), wi).expr
                hr = None if h[j] is None else row_matmul_const(it, Row(h[j], (1, hidden)), ri).expr
                h[j], cj = step(it, xw, hr, h[j], None if c is None else c[j], bi, hidden, clip, node, ri,
                                acts_per_dir[d])
                if c is not None:
                    c[j] = cj
            ys[t] = list(h)
        outs_y.append(ys)
        outs_h.append(list(h))
        outs_c.append(c)
    y = ir.concat(ys_t[j] for t in range(seq) for d in range(dirs) for j in range(batch)
                  for ys_t in [outs_y[d][t]])
    results = [Row(y, (seq, dirs, batch, hidden)),
               Row(ir.concat(outs_h[d][j] for d in range(dirs) for j in range(batch)), (dirs, batch, hidden))]
    if gates == 4:
        results.append(Row(ir.concat(outs_c[d][j] for d in range(dirs) for j in range(batch)), (dirs, batch, hidden)))
    return results[:len(node.output)]


def _add_opt(a, b):
    return a if b is None else (b if a is None else ir.binary("add", a, b))


def _clip(e, clip):
    return e if clip is None else ir.unary("clip", e, (-float(clip), float(clip)))


def _const(it, v):
    return ir.ConstVec(it.const_name(it.floats(v), "vec"), int(np.asarray(v).size))


@handler("LSTM")
def op_lstm(it, node, args, lookup):
    if len(args) > 7 and args[7] is not None:
        raise Refusal("LSTM with peepholes")
    if attr(node, "input_forget", 0):
        raise Refusal("LSTM with input_forget")

    def step(it, xw, hr, h, c, bias, hidden, clip, node, ri, acts):
        f, g, h_act = acts
        gates = _add_opt(xw, hr)
        if bias is not None:
            gates = ir.binary("add", gates, _const(it, bias[0] + bias[1]))
        i, o, fo, cand = (ir.slice_row(gates, k * hidden, (k + 1) * hidden) for k in range(4))  # ONNX: i o f c
        new_c = ir.binary("mul", ir.unary(f, _clip(i, clip)), ir.unary(g, _clip(cand, clip)))
        if c is not None:
            new_c = ir.binary("add", ir.binary("mul", ir.unary(f, _clip(fo, clip)), c), new_c)
        new_h = ir.binary("mul", ir.unary(f, _clip(o, clip)), ir.unary(h_act, new_c))
        return new_h, new_c

    return _recurrent(it, node, args, 4, ["sigmoid", "tanh", "tanh"], step)


@handler("GRU")
def op_gru(it, node, args, lookup):
    before_reset = attr(node, "linear_before_reset", 0)

    def step(it, xw, hr, h, c, bias, hidden, clip, node, ri, acts):
        f, g = acts
        wb = None if bias is None else bias[0]
        rb = None if bias is None else bias[1]
        xz, xr_, xh = (ir.slice_row(xw, k * hidden, (k + 1) * hidden) for k in range(3))  # ONNX: z r h
        if wb is not None:
            xz, xr_, xh = (ir.binary("add", e, _const(it, wb[k * hidden:(k + 1) * hidden]))
                           for k, e in enumerate((xz, xr_, xh)))
        hz = hr_ = hh = None
        if hr is not None:
            hz, hr_, hh = (ir.slice_row(hr, k * hidden, (k + 1) * hidden) for k in range(3))
        if rb is not None:
            hz, hr_ = (_add_opt(e, _const(it, rb[k * hidden:(k + 1) * hidden])) for k, e in enumerate((hz, hr_)))
        z = ir.unary(f, _clip(_add_opt(xz, hz), clip))
        r = ir.unary(f, _clip(_add_opt(xr_, hr_), clip))
        if h is None:  # a zero initial state: only the recurrent bias remains
            rbh = None if rb is None else _const(it, rb[2 * hidden:])
            rec = None if rbh is None else (ir.binary("mul", r, rbh) if before_reset else rbh)
        elif before_reset:
            rec = hh if rb is None else ir.binary("add", hh, _const(it, rb[2 * hidden:]))
            rec = ir.binary("mul", r, rec)
        else:
            rh = ir.binary("mul", r, h)
            rec = row_matmul_const(it, Row(rh, (1, hidden)), ri[:, 2 * hidden:]).expr
            if rb is not None:
                rec = ir.binary("add", rec, _const(it, rb[2 * hidden:]))
        cand = ir.unary(g, _clip(_add_opt(xh, rec), clip))
        one_minus_z = ir.binary("sub", ir.Scalar(1.0), z)
        new_h = ir.binary("mul", one_minus_z, cand)
        if h is not None:
            new_h = ir.binary("add", new_h, ir.binary("mul", z, h))
        return new_h, None

    return _recurrent(it, node, args, 3, ["sigmoid", "tanh"], step)


@handler("RNN")
def op_rnn(it, node, args, lookup):
    def step(it, xw, hr, h, c, bias, hidden, clip, node, ri, acts):
        (f,) = acts
        pre = _add_opt(xw, hr)
        if bias is not None:
            pre = ir.binary("add", pre, _const(it, bias[0] + bias[1]))
        return ir.unary(f, _clip(pre, clip)), None

    return _recurrent(it, node, args, 1, ["tanh"], step)


# ---- Einsum: products and sums of the operands, two at a time -----------------------------------------


def einsum_subscripts(equation: str, ranks) -> tuple:
    """([subscripts of each operand], output subscripts): one letter per dimension; an ellipsis becomes letters the
    equation does not use (numpy's convention, which ONNX follows: its dimensions align at the right and broadcast;
    in implicit mode the output is the ellipsis, then the letters used once, in alphabetical order)."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise Refusal(f"Einsum equation {equation!r} names {len(terms)} operands, the node has {len(ranks)}")
    spare = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in eq]
    ellipsis = max((rank - len(t.replace("...", "")) for t, rank in zip(terms, ranks) if "..." in t), default=0)
    if ellipsis > len(spare):
        raise Refusal(f"Einsum equation {equation!r} has too many dimensions")
    dots = "".join(spare[:max(ellipsis, 0)])
    out_terms = []
    for t, rank in zip(terms, ranks):
        if "..." in t:
            k = rank - len(t.replace("...", ""))
            if k < 0:
                raise Refusal(f"Einsum term {t!r} has more subscripts than its operand's rank {rank}")
            t = t.replace("...", dots[len(dots) - k:] if k else "")
        if len(t) != rank or not t.isalpha():
            raise Refusal(f"Einsum term {t!r} does not match its operand's rank {rank}")
        out_terms.append(t)
    if arrow:
        out = rhs.replace("...", dots)
        if (out and not out.isalpha()) or len(set(out)) != len(out) or any(c not in "".join(out_terms) for c in out):
            raise Refusal(f"Einsum output {rhs!r} of {equation!r}")
    else:
        used = "".join(out_terms)
        out = dots + "".join(sorted(c for c in set(used) if used.count(c) == 1 and c not in dots))
    return out_terms, out


def _shaped(v, fn):
    """fn (a numpy function) applied to a constant or a per-node row."""
    return Known(np.asarray(fn(np.asarray(v.value)))) if isinstance(v, Known) else rearrange(v, fn)


def _einsum_diagonals(v, t):
    """An operand whose subscripts repeat a letter (ii->i): its diagonal, once per repeated letter."""
    while len(set(t)) < len(t):
        c = next(c for c in t if t.count(c) > 1)
        p, q = t.index(c), t.index(c, t.index(c) + 1)
        shape = static_shape(v)
        if shape[p] != shape[q]:
            raise Refusal(f"Einsum diagonal of dimensions {shape[p]} and {shape[q]}")
        v = _shaped(v, lambda a, p=p, q=q: np.diagonal(a, axis1=p, axis2=q))
        t = "".join(x for k, x in enumerate(t) if k not in (p, q)) + c
    return v, t


def _einsum_sum(it, v, t, keep):
    """The operand summed over the letters no other operand or the output keeps."""
    axes = [k for k, c in enumerate(t) if c not in keep]
    if not axes:
        return v, t
    left = "".join(c for c in t if c in keep)
    if isinstance(v, Known):
        return Known(it.floats(np.sum(it.floats(v.value), axis=tuple(axes)))), left
    out = reduce_row(it, it.row(v), axes, False, "add")
    return out, left


def _einsum_pair(it, a, ta, b, tb, keep):
    """a, b contracted over the letters both have and nothing after them keeps; a numpy matmul over [batch, a's own,
    summed] x [batch, summed, b's own], so a constant operand makes one matrix product per node (a GEMM)."""
    batch = [c for c in ta if c in tb and c in keep]
    summed = [c for c in ta if c in tb and c not in keep]
    own_a = [c for c in ta if c not in tb]
    own_b = [c for c in tb if c not in ta]
    size = dict(zip(ta, static_shape(a)))
    size.update(zip(tb, static_shape(b)))
    dims = lambda letters: [size[c] for c in letters]  # noqa: E731
    count = lambda letters: int(np.prod(dims(letters), dtype=np.int64))  # noqa: E731
    pa = [ta.index(c) for c in batch + own_a + summed]
    pb = [tb.index(c) for c in batch + summed + own_b]
    a2 = _shaped(a, lambda x: np.transpose(x, pa).reshape(dims(batch) + [count(own_a), count(summed)]))
    b2 = _shaped(b, lambda x: np.transpose(x, pb).reshape(dims(batch) + [count(summed), count(own_b)]))
    if isinstance(a2, Known) and isinstance(b2, Known):
        out = Known(np.matmul(it.floats(a2.value), it.floats(b2.value)))
    else:
        out = matmul(it, a2, b2)
    return _shaped(out, lambda x: x.reshape(dims(batch) + dims(own_a) + dims(own_b))), "".join(batch + own_a + own_b)


def einsum(it, equation: str, values):
    """ONNX Einsum over per-node rows and constants: each operand's diagonals, then sums over letters only it has,
    then products two at a time from the left (each a numpy matmul: a constant operand is a GEMM, two rows are
    products and a reduction), then the output's order."""
    if any(isinstance(v, Sym) or (isinstance(v, Known) and v.value.dtype.kind != "f") or
           (isinstance(v, Row) and v.boolean) for v in values):
        raise Refusal("Einsum of structure values or integers: Cortex computes it over float rows and constants")
    shapes = [static_shape(v) for v in values]
    terms, out = einsum_subscripts(equation, [len(s) for s in shapes])
    size = {}
    for t, shape in zip(terms, shapes):
        for c, d in zip(t, shape):
            if d != 1 and size.get(c, 1) not in (1, d):
                raise Refusal(f"Einsum {equation!r}: subscript {c} is {size[c]} and {d} (the original fails)")
            size[c] = max(size.get(c, 1), d)
    ops = []
    for v, t in zip(values, terms):
        v, t = _einsum_diagonals(v, t)
        target = [size[c] for c in t]
        if list(static_shape(v)) != target:  # a dimension of 1 broadcasts
            v = _shaped(v, lambda x, target=target: np.broadcast_to(x, target).copy())
        ops.append((v, t))
    while True:
        ops = [_einsum_sum(it, v, t, set(out).union(*[u for j, (_, u) in enumerate(ops) if j != k]))
               for k, (v, t) in enumerate(ops)]
        if len(ops) == 1:
            break
        (a, ta), (b, tb), rest = ops[0], ops[1], ops[2:]
        ops = [_einsum_pair(it, a, ta, b, tb, set(out).union(*[u for _, u in rest]))] + rest
    v, t = ops[0]
    perm = [t.index(c) for c in out]
    return _shaped(v, lambda x: np.transpose(x, perm)) if perm != list(range(len(perm))) else v


@handler("Einsum")
def op_einsum(it, node, args, lookup):
    return einsum(it, attr(node, "equation"), [a for a in args])


# ---- CumSum: a running sum over one dimension of a node's row ----------------------------------------

CUMSUM_HINT = ("take cumulative sums of runtime tensors before the loop (they do not depend on the recursion), and "
               "inside it over a node's own row")


def _scan_blocks(e: ir.RExpr, n: int, block: int) -> ir.RExpr:
    """Inclusive running sums over n consecutive blocks of `block` elements: log2(n) rounds of shifted additions
    (each element adds the one `s` blocks before it: Hillis and Steele)."""
    s = 1
    while s < n:
        e = ir.concat([ir.slice_row(e, 0, s * block),
                       ir.binary("add", ir.slice_row(e, s * block, n * block), ir.slice_row(e, 0, (n - s) * block))])
        s *= 2
    return e


@handler("CumSum")
def op_cumsum(it, node, args, lookup):
    if len(args) != 2 or args[1] is None:
        raise Refusal("CumSum needs its input and an axis")
    x, axis_value = args
    if not isinstance(axis_value, Known):
        raise Refusal("CumSum over an axis that is not a constant")
    axis_array = np.asarray(axis_value.value)
    if axis_array.dtype.kind not in "iu" or axis_array.ndim > 1 or axis_array.size != 1:
        raise Refusal(f"CumSum's axis is {describe(axis_value)}, not one integer")
    flags = {name: attr(node, name, 0) for name in ("exclusive", "reverse")}
    if any(v not in (0, 1) for v in flags.values()):
        raise Refusal(f"CumSum with {flags} (ONNX Runtime takes 0 or 1)")
    exclusive, reverse = bool(flags["exclusive"]), bool(flags["reverse"])
    if not isinstance(x, (Row, Sym, Known)):
        raise Refusal(f"CumSum over {describe(x)}: Cortex computes running sums over a node's own values (a row, "
                      f"a per-node tensor of static shape)", hint=CUMSUM_HINT)
    shape = static_shape(x)
    if not shape:
        raise Refusal("CumSum of a scalar")
    axis = norm_axis(int(np.asarray(axis_value.value).reshape(-1)[0]), len(shape), "CumSum axis")
    n = shape[axis]

    def first(a):  # the summed axis first (reversed for a reverse sum)
        a = np.moveaxis(a, axis, 0)
        return a[::-1] if reverse else a

    def back(a):
        return np.moveaxis(a[::-1] if reverse else a, 0, axis)

    moved = _shaped(x, first) if not isinstance(x, Sym) else rearrange(x, first)
    if isinstance(moved, Sym):  # structure values: exact integer sums
        flat = np.array(moved.elems, dtype=object).reshape(n, -1)
        out = np.empty(flat.shape, dtype=object)
        acc = [ix.const(0)] * flat.shape[1]
        for k in range(n):
            step = [ix.ibin("add", a, ix.as_index(e)) for a, e in zip(acc, flat[k])]
            out[k, :] = acc if exclusive else step
            acc = step
        return rearrange(Sym(out.reshape(moved.shape), "int64"), back)
    r = it.row(moved)
    block = r.expr.width // n
    out = _scan_blocks(r.expr, n, block)
    if exclusive:
        zeros = ir.take(ir.Scalar(0.0), [0] * block)
        out = ir.concat([zeros] + ([ir.slice_row(out, 0, (n - 1) * block)] if n > 1 else []))
    return rearrange(Row(out, r.shape), back)

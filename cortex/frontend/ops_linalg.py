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
from .values import Known, Refusal, Row, Sym

# ---- matrix products ---------------------------------------------------------------------------


def _sub(r: Row, index) -> Row:
    """A sub-block r[index] (numpy indexing on the element ids)."""
    ids = element_ids(r)[index]
    return Row(ir.take(r.expr, ids.reshape(-1)), tuple(ids.shape))


def row_matmul_const(it, a: Row, w: np.ndarray) -> Row:
    """a @ W for a per-node a [..., K] and a constant 2-D W [K, N]: one GEMM row per row of a."""
    w = np.asarray(w, dtype=np.float32)
    if a.shape[-1] != w.shape[0]:
        raise Refusal(f"MatMul of {list(a.shape)} by {list(w.shape)}")
    rows = int(np.prod(a.shape[:-1], dtype=np.int64))
    name = it.const_name(w, "weight")
    return Row(ir.MatMul(a.expr, name, None, rows * w.shape[1], rows), tuple(a.shape[:-1]) + (w.shape[1],))


def const_matmul_row(it, w: np.ndarray, b: Row) -> Row:
    """W @ b for a constant 2-D W [M, K] and a per-node b [K] or [K, C]."""
    w = np.asarray(w, dtype=np.float32)
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
    """numpy.matmul semantics over per-node and constant operands."""
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
        b = Known(np.asarray(b.value, dtype=np.float32) * np.float32(alpha))
        alpha = 1.0
    elif isinstance(a, Known) and alpha != 1.0:
        a = Known(np.asarray(a.value, dtype=np.float32) * np.float32(alpha))
        alpha = 1.0
    out = matmul(it, a, b)
    if alpha != 1.0:
        out = row_binary(it, "mul", out, Known(np.float32(alpha)))
    if c is None:
        return out
    if isinstance(c, Known):
        c = Known(np.asarray(c.value, dtype=np.float32) * np.float32(beta))
    elif beta != 1.0:
        c = row_binary(it, "mul", c, Known(np.float32(beta)))
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
    axes = [axis] if it.opset >= 13 else list(range(axis, rank))
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
    eps = np.float32(attr(node, "epsilon", 1e-5))
    factor = np.asarray(scale.value, np.float32) / np.sqrt(np.asarray(var.value, np.float32) + eps)
    shift = np.asarray(bias.value, np.float32) - np.asarray(mean.value, np.float32) * factor
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
    return xr, np.asarray(w.value, np.float32), np.asarray(r.value, np.float32), \
        (None if b is None else np.asarray(b.value, np.float32)), hidden, direction, dirs


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
    return ir.ConstVec(it.const_name(np.asarray(v, np.float32), "vec"), int(np.asarray(v).size))


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

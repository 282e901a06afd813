"""Control flow and sequences inside a recursion: `If` on a structure predicate (a Choice: the branches become
cases) or on a per-node float condition (an elementwise select of pure values); a `Loop` or `Scan` with a constant
trip count inside the body (unrolled); the ONNX sequence ops over a static number of items."""
from __future__ import annotations

import numpy as np

from ..ir import index as ix
from ..ir import nodes as ir
from .interpreter import Interpreter, attr, choose, handler, sym_known
from .layout import rearrange, rearrange_many
from .operands import known_ints, static_shape
from .ops_elementwise import op_where
from .values import Known, Refusal, Row, Seq, Sym, describe

MAX_UNROLL = 256


@handler("If")
def op_if(it: Interpreter, node, args, lookup):
    cond = args[0]
    then_g, else_g = attr(node, "then_branch"), attr(node, "else_branch")
    if isinstance(cond, Known):
        return it.nested(lookup).run_graph(then_g if bool(np.asarray(cond.value).reshape(-1)[0]) else else_g, {})
    if isinstance(cond, Row) and not cond.boolean:
        cond = Row(cond.expr, cond.shape, True)
    pred = None
    if isinstance(cond, Sym):
        pred = cond
    elif isinstance(cond, Row):
        try:
            pred = it.sym(cond)
        except Refusal:
            pred = None
    if pred is not None:
        if pred.elems.size != 1:
            raise Refusal(f"If on a condition of shape {list(pred.shape)}")
        p = ix.as_pred(pred.scalar())
        if isinstance(p, ir.BConst):
            return it.nested(lookup).run_graph(then_g if p.value else else_g, {})
        then_out = it.nested(lookup).run_graph(then_g, {})
        else_out = it.nested(lookup).run_graph(else_g, {})
        return [choose(p, t, e) for t, e in zip(then_out, else_out)]
    if isinstance(cond, Row):
        # a condition computed from state values: both branches are pure, so select elementwise
        then_out = it.nested(lookup).run_graph(then_g, {})
        else_out = it.nested(lookup).run_graph(else_g, {})
        outs = []
        for t, e in zip(then_out, else_out):
            if not all(isinstance(v, (Row, Known)) for v in (t, e)):
                raise Refusal(f"If on a data-dependent condition whose branches give {describe(t)} and {describe(e)}",
                              hint="write the data-dependent choice as torch.where over values")
            outs.append(op_where(it, node, [cond, t, e], lookup))
        return outs
    raise Refusal(f"If on {describe(cond)}")


def stack(it, values):
    """Values of one shape stacked along a new leading axis (a Loop's or Scan's per-iteration outputs)."""
    if not values:
        raise Refusal("a loop with no iteration inside the recursion")
    return rearrange_many(it, list(values), lambda arrs: np.stack(arrs))


def _trip_count(it, m):
    if m is None:
        return None
    try:
        return int(known_ints(it, m, "the trip count").reshape(-1)[0])
    except Refusal:
        raise Refusal("a loop inside the recursion runs a per-node number of times",
                      hint="loop over a fixed number of children (pad with -1) instead of a per-node count") from None


@handler("Loop")
def op_loop(it: Interpreter, node, args, lookup):
    """A Loop inside the recursion with a constant trip count (e.g. over a fixed number of children): unrolled."""
    body = attr(node, "body")
    trip = _trip_count(it, args[0] if args else None)
    cond = args[1] if len(args) > 1 else None
    carried = list(args[2:])
    n_carried = len(carried)
    n_scan = len(body.output) - 1 - n_carried
    running = True if cond is None else _known_bool(cond, "the loop condition")
    scans = [[] for _ in range(n_scan)]
    i = 0
    while running and (trip is None or i < trip):
        if i >= MAX_UNROLL:
            raise Refusal(f"a loop inside the recursion runs more than {MAX_UNROLL} times")
        bindings = {body.input[0].name: Known(np.array(i, dtype=np.int64))}
        if len(body.input) > 1:
            bindings[body.input[1].name] = Known(np.array(True))
        for b, v in zip(body.input[2:], carried):
            bindings[b.name] = v
        outs = it.nested(lookup).run_graph(body, bindings)
        running = _known_bool(outs[0], "the loop condition")
        carried = outs[1:1 + n_carried]
        for k in range(n_scan):
            scans[k].append(outs[1 + n_carried + k])
        i += 1
    return carried + [stack(it, s) for s in scans]


def _known_bool(v, what):
    if isinstance(v, Known):
        return bool(np.asarray(v.value).reshape(-1)[0])
    if isinstance(v, Sym):
        k = sym_known(v)
        if k is not None:
            return bool(np.asarray(k).reshape(-1)[0])
    raise Refusal(f"{what} inside the recursion depends on the node ({describe(v)})")


@handler("Scan")
def op_scan(it: Interpreter, node, args, lookup):
    """A Scan inside the recursion over a static number of elements: unrolled."""
    body = attr(node, "body")
    m = attr(node, "num_scan_inputs")
    n_state = len(args) - m
    states, inputs = list(args[:n_state]), list(args[n_state:])
    in_dirs = list(attr(node, "scan_input_directions") or [0] * m)
    in_axes = list(attr(node, "scan_input_axes") or [0] * m)
    n_out = len(body.output) - n_state
    out_dirs = list(attr(node, "scan_output_directions") or [0] * n_out)
    out_axes = list(attr(node, "scan_output_axes") or [0] * n_out)
    lengths = {static_shape(x)[a % len(static_shape(x))] for x, a in zip(inputs, in_axes)}
    if len(lengths) != 1:
        raise Refusal("Scan inputs of different lengths")
    length = lengths.pop()
    if length > MAX_UNROLL:
        raise Refusal(f"a Scan inside the recursion over {length} elements")
    outs_per_step = [[] for _ in range(n_out)]
    for t in range(length):
        bindings = {}
        for b, v in zip(body.input[:n_state], states):
            bindings[b.name] = v
        for k, (b, x) in enumerate(zip(body.input[n_state:], inputs)):
            pos = length - 1 - t if in_dirs[k] else t
            axis = in_axes[k] % len(static_shape(x))
            bindings[b.name] = rearrange(x, lambda a, pos=pos, axis=axis: np.take(a, pos, axis=axis))
        outs = it.nested(lookup).run_graph(body, bindings)
        states = outs[:n_state]
        for k in range(n_out):
            outs_per_step[k].append(outs[n_state + k])
    results = []
    for k in range(n_out):
        items = outs_per_step[k][::-1] if out_dirs[k] else outs_per_step[k]
        stacked = stack(it, items)
        if out_axes[k]:
            rank = len(static_shape(stacked))
            axis = out_axes[k] % rank
            stacked = rearrange(stacked, lambda a, axis=axis: np.moveaxis(a, 0, axis))
        results.append(stacked)
    return states + results


# ---- sequences ---------------------------------------------------------------------------------


def _seq(v):
    if not isinstance(v, Seq):
        raise Refusal(f"a sequence op on {describe(v)}")
    return v


def _position(it, v, length, insert=False):
    if v is None:
        return length if insert else length - 1
    p = int(known_ints(it, v, "the sequence position").reshape(-1)[0])
    return p + length if p < 0 else p


@handler("SequenceEmpty")
def op_sequence_empty(it, node, args, lookup):
    return Seq(())


@handler("SequenceInsert")
def op_sequence_insert(it, node, args, lookup):
    seq = _seq(args[0])
    pos = _position(it, args[2] if len(args) > 2 else None, len(seq.items), insert=True)
    items = list(seq.items)
    items.insert(pos, args[1])
    return Seq(tuple(items))


@handler("SequenceAt")
def op_sequence_at(it, node, args, lookup):
    seq = _seq(args[0])
    pos = _position(it, args[1], len(seq.items))
    if not 0 <= pos < len(seq.items):
        raise Refusal("SequenceAt out of range")
    return seq.items[pos]


@handler("SequenceErase")
def op_sequence_erase(it, node, args, lookup):
    seq = _seq(args[0])
    pos = _position(it, args[1] if len(args) > 1 else None, len(seq.items))
    items = list(seq.items)
    del items[pos]
    return Seq(tuple(items))


@handler("SequenceLength")
def op_sequence_length(it, node, args, lookup):
    return Known(np.array(len(_seq(args[0]).items), dtype=np.int64))


@handler("SplitToSequence")
def op_split_to_sequence(it, node, args, lookup):
    x = args[0]
    shape = static_shape(x)
    axis = attr(node, "axis", 0) % len(shape)
    split = args[1] if len(args) > 1 else None
    if split is None:
        pieces = rearrange_many(it, [x], lambda arrs: np.split(arrs[0], shape[axis], axis=axis), outputs=shape[axis])
        if not attr(node, "keepdims", 1):
            pieces = [rearrange(p, lambda a: np.squeeze(a, axis=axis)) for p in pieces]
        return Seq(tuple(pieces))
    values = known_ints(it, split, "SplitToSequence sizes")
    if values.ndim == 0:
        size = int(values)
        sizes = [min(size, shape[axis] - k) for k in range(0, shape[axis], size)]
    else:
        sizes = [int(s) for s in values]
    cuts = np.cumsum(sizes)[:-1]
    return Seq(tuple(rearrange_many(it, [x], lambda arrs: np.split(arrs[0], cuts, axis=axis), outputs=len(sizes))))


@handler("ConcatFromSequence")
def op_concat_from_sequence(it, node, args, lookup):
    seq = _seq(args[0])
    axis = attr(node, "axis")
    if attr(node, "new_axis", 0):
        return rearrange_many(it, list(seq.items), lambda arrs: np.stack(arrs, axis=axis))
    return rearrange_many(it, list(seq.items), lambda arrs: np.concatenate(arrs, axis=axis))

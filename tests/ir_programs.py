"""Small IR programs built by hand, one per construct the frontend raises from exporters' models (child sets, carried
values, host integer state): the passes' and the IR fuzzer's tests use them without exporting anything."""
from __future__ import annotations

import numpy as np

from cortex.ir import nodes as ir
from cortex.ir import verify

WIDTH = 4


def _constants(*names):
    rng = np.random.default_rng(0)
    return {name: rng.standard_normal((WIDTH, WIDTH) if name.startswith("w") else WIDTH).astype(np.float32)
            for name in names}


def child_sum(zeros: bool = True, encoding: str = "parent") -> ir.Program:
    """h[v] = tanh(sum over the children u of v of sigmoid(h[u] @ wf + bf) * h[u]), children from a parent array
    (or an edge list [2, E]); the table starts at torch.zeros when `zeros`, else from a user's input."""
    member = ir.ChildState("state0", ir.Member(), False, WIDTH)
    gate = ir.unary("sigmoid", ir.binary("add", ir.MatMul(member, "wf", None, WIDTH), ir.ConstVec("bf", WIDTH)))
    v = ir.Load("order", ir.Iter())
    if encoding == "parent":
        arrays, bounds = ("parent",), (v,)
        structure = ir.InputDecl("parent", "array", "int64", 1)
    else:
        arrays, bounds = ("edges",), (v, ir.IConst(1), ir.IConst(0))
        structure = ir.InputDecl("edges", "array", "int64", 2, (), dynamic_inner=True)
    total = ir.SetReduce("add", encoding, arrays, bounds, ir.binary("mul", gate, member), 0.0, WIDTH)
    case = ir.Case("node", ir.BConst(True), v, (("state0", ir.unary("tanh", total)),))
    inputs = (ir.InputDecl("order", "array", "int64", 1), structure,
              ir.InputDecl("h0", "init", "float32", 2, (WIDTH,), zeros=zeros))
    return verify(ir.Program("childsum", "visit", inputs, (ir.TableDecl("state0", (WIDTH,), "h0", "h"),), (case,),
                             _constants("wf", "bf"), trip=ir.Length("order")))


def chain() -> ir.Program:
    """h = tanh(x[p] @ w + h) for p in range(len(x)), h starting at h_init: the carried vector is an emit table read
    at p - 1; the loop's outputs are its last row and a running max of it."""
    x = ir.InputRow("x", ir.Iter(), WIDTH)
    new = ir.unary("tanh", ir.binary("add", ir.MatMul(x, "w", None, WIDTH), ir.PreviousRow("carry0", "h_init", WIDTH)))
    case = ir.Case("step", ir.BConst(True), None, (("carry0", new), ("carry1", new)))
    inputs = (ir.InputDecl("h_init", "array", "float32", 1, (), rows=WIDTH),
              ir.InputDecl("x", "array", "float32", 2, (WIDTH,)))
    tables = (ir.TableDecl("carry0", (WIDTH,), None, "", "emit"), ir.TableDecl("carry1", (WIDTH,), None, "", "emit"))
    finals = (ir.Final("h_last", "last", "carry0", "h_init"), ir.Final("h_max", "reduce", "carry1", "m_init", "max"))
    return verify(ir.Program("chain", "visit", inputs, tables, (case,), _constants("w"), trip=ir.Length("x"),
                             finals=finals))


def thin_stack() -> ir.Program:
    """SPINN's thin stack: shift pushes x[bp] (bp, the queue pointer qp and the queue of back-pointers are integer
    state the host carries), reduce composes the two rows the queue's top names."""
    qp, bp = ir.HostValue("qp"), ir.HostValue("bp")
    shift = ir.Compare("eq", ir.Load("transitions", ir.Iter()), ir.IConst(0))
    top = lambda k: ir.ChildState("stack", ir.HostElement("queue", ir.IBinary("sub", qp, ir.IConst(k))), False,
                                  WIDTH)  # noqa: E731
    composed = ir.unary("tanh", ir.MatMul(ir.Concat((top(2), top(1)), 2 * WIDTH), "w2", None, WIDTH))
    cases = (ir.Case("shift", shift, ir.Iter(), (("stack", ir.InputRow("x", bp, WIDTH)),),
                     (ir.HostUpdate("bp", None, ir.IBinary("add", bp, ir.IConst(1))),
                      ir.HostUpdate("queue", qp, ir.Iter()),
                      ir.HostUpdate("qp", None, ir.IBinary("add", qp, ir.IConst(1))))),
             ir.Case("reduce", ir.BNot(shift), ir.Iter(), (("stack", composed),),
                     (ir.HostUpdate("queue", ir.IBinary("sub", qp, ir.IConst(2)), ir.Iter()),
                      ir.HostUpdate("qp", None, ir.IBinary("sub", qp, ir.IConst(1))))))
    inputs = (ir.InputDecl("transitions", "array", "int64", 1), ir.InputDecl("x", "array", "float32", 2, (WIDTH,)),
              ir.InputDecl("s0", "init", "float32", 2, (WIDTH,)))
    host = (ir.HostVar("qp", ir.IConst(0)), ir.HostVar("bp", ir.IConst(0)),
            ir.HostVar("queue", ir.IConst(0), ir.Length("transitions")))
    rng = np.random.default_rng(1)
    return verify(ir.Program("thinstack", "visit", inputs, (ir.TableDecl("stack", (WIDTH,), "s0", "stack_out"),),
                             cases, {"w2": rng.standard_normal((2 * WIDTH, WIDTH)).astype(np.float32)},
                             trip=ir.Length("transitions"), host_vars=host))

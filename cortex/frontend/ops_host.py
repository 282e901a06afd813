"""Integer tables a loop carries, evaluated by the host position by position (ir.HostVar): a queue of back-pointers
(SPINN's thin stack) written with ScatterND and read with Gather at structure indices. A `HostTable` value records
this iteration's writes, so that a read after a write in the same iteration sees it: the read becomes an index
expression over the state before the iteration (`read`), and the writes become the case's host updates."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..ir import index as ix
from ..ir import nodes as ir
from .interpreter import attr
from .values import Known, Refusal, Sym


@dataclass(frozen=True)
class HostTable:
    var: str
    size: ir.IExpr
    writes: tuple = ()  # ((index in [0, size), value), ...) in program order


def _normalized(index: ir.IExpr, size: ir.IExpr) -> ir.IExpr:
    return ix.iselect(ix.cmp("lt", index, ix.const(0)), ix.ibin("add", index, size), index)


def read(table: HostTable, index: ir.IExpr) -> ir.IExpr:
    """Element `index` of the table after this iteration's writes so far."""
    value = ir.HostElement(table.var, index)
    for at, written in table.writes:
        value = ix.iselect(ix.cmp("eq", _normalized(index, table.size), at), written, value)
    return value


def _elements(value, what) -> list:
    if isinstance(value, Known) and value.value.dtype.kind in "iu":
        return [ix.const(int(v)) for v in value.value.reshape(-1)]
    if isinstance(value, Sym) and not value.is_bool:
        return [ix.as_index(e) for e in value.elems.reshape(-1)]
    raise Refusal(f"{what} is not a structure value")


def _gather(it, node, args):
    table, index = args[0], args[1]
    if int(attr(node, "axis", 0)) != 0:
        raise Refusal("a Gather from an integer table the loop carries along an axis other than 0")
    shape = index.value.shape if isinstance(index, Known) else index.shape
    elems = np.empty(len(_elements(index, "the index")), dtype=object)
    elems[:] = [read(table, i) for i in _elements(index, "the index")]
    return Sym(elems.reshape(shape), "int64")


def _scatter_nd(it, node, args):
    table, indices, updates = args
    if attr(node, "reduction", "none") not in ("none", b"none"):
        raise Refusal("a ScatterND with a reduction into an integer table the loop carries")
    shape = indices.value.shape if isinstance(indices, Known) else indices.shape
    if not shape or shape[-1] != 1:
        raise Refusal("a ScatterND into an integer table the loop carries at indices other than [..., 1]")
    at, values = _elements(indices, "the ScatterND indices"), _elements(updates, "the ScatterND updates")
    if len(at) != len(values):
        raise Refusal("a ScatterND into an integer table with as many indices as updates")
    writes = table.writes
    for i, v in zip(at, values):
        # the value from the state before the write (reads of this iteration's earlier writes resolved), at an index
        # ONNX normalizes (the host checks the range when it applies the update)
        writes += ((_normalized(i, table.size), v),)
    return replace(table, writes=writes)


def _shape(it, node, args):
    elems = np.empty(1, dtype=object)
    elems[0] = args[0].size
    return Sym(elems, "int64")


HANDLERS = {"Gather": _gather, "ScatterND": _scatter_nd, "Shape": _shape, "Identity": lambda it, node, args: args[0]}


def dispatch(it, node, args, lookup):
    """The outputs when `node` reads or writes an integer table the loop carries, else None."""
    if not args or not isinstance(args[0], HostTable):
        if any(isinstance(a, HostTable) for a in args):
            raise Refusal(f"op {node.op_type} on an integer table the loop carries (only Gather and ScatterND)")
        return None
    fn = HANDLERS.get(node.op_type)
    if fn is None:
        raise Refusal(f"op {node.op_type} on an integer table the loop carries (only Gather and ScatterND)",
                      hint="keep the loop's integer bookkeeping to reads (t[i]) and writes (t[i] = v)")
    return [fn(it, node, args)]

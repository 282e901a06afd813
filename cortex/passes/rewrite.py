"""IR -> IR passes. Each takes a Program and returns a new one; `pipeline.py` lists them in order."""
from __future__ import annotations

import dataclasses

import numpy as np

from ..ir import nodes as ir

# Folding a constant-indexed subtree materializes one value per table row; beyond this many floats per
# folded table the lookup table would cost more memory than the work it saves.
MAX_FOLDED_ELEMENTS = 1 << 26


def _rebuild(e: ir.RExpr, new_children) -> ir.RExpr:
    if isinstance(e, (ir.MatMul, ir.LeftMatMul)):
        return dataclasses.replace(e, x=new_children[0])
    if isinstance(e, ir.MatVec):
        return dataclasses.replace(e, mat=new_children[0], vec=new_children[1])
    if isinstance(e, ir.Unary):
        return dataclasses.replace(e, x=new_children[0])
    if isinstance(e, ir.Binary):
        return dataclasses.replace(e, a=new_children[0], b=new_children[1])
    if isinstance(e, ir.Slice):
        return dataclasses.replace(e, x=new_children[0])
    if isinstance(e, ir.Concat):
        return dataclasses.replace(e, parts=tuple(new_children))
    if isinstance(e, ir.Select):
        return dataclasses.replace(e, a=new_children[0], b=new_children[1])
    return e


def map_rows(program: ir.Program, rewrite) -> ir.Program:
    """Applies `rewrite(node) -> node` bottom-up to every row expression of every case (memoized, so
    shared subtrees stay shared)."""
    memo = {}

    def visit(e):
        if e in memo:
            return memo[e]
        children = ir.row_children(e)
        rebuilt = _rebuild(e, [visit(c) for c in children]) if children else e
        out = rewrite(rebuilt)
        memo[e] = out
        return out

    cases = tuple(dataclasses.replace(c, writes=tuple((t, visit(x)) for t, x in c.writes)) for c in program.cases)
    return _drop_unused_constants(dataclasses.replace(program, cases=cases))


def _drop_unused_constants(program: ir.Program) -> ir.Program:
    used = set()
    for case in program.cases:
        for node in ir.walk_rows([x for _, x in case.writes]):
            for name in (getattr(node, "const", None), getattr(node, "weight", None), getattr(node, "bias", None)):
                if name:
                    used.add(name)
    return dataclasses.replace(program, constants={k: v for k, v in program.constants.items() if k in used})


# ---- simplification --------------------------------------------------------------------------


def simplify(program: ir.Program) -> ir.Program:
    """Removes identities, merges slices of slices and picks the part a slice of a concat lies in."""

    def rewrite(e):
        if isinstance(e, ir.Unary) and e.op == "identity":
            return e.x
        if isinstance(e, ir.Slice) and isinstance(e.x, ir.Slice):
            return ir.Slice(e.x.x, e.x.start + e.start, e.width)
        if isinstance(e, ir.Slice) and isinstance(e.x, ir.Concat):
            offset = 0
            for part in e.x.parts:
                if offset <= e.start and e.start + e.width <= offset + part.width:
                    return ir.slice_row(part, e.start - offset, e.start - offset + e.width)
                offset += part.width
        # Elementwise math over a concatenation distributes over its parts (r * [h_l; h_r] in a GRU), so
        # the concatenation only ever feeds a matrix product or a table write.
        if isinstance(e, ir.Unary) and isinstance(e.x, ir.Concat):
            return ir.concat(rewrite(ir.unary(e.op, p)) for p in e.x.parts)
        if isinstance(e, ir.Binary) and (isinstance(e.a, ir.Concat) or isinstance(e.b, ir.Concat)):
            parts = (e.a if isinstance(e.a, ir.Concat) else e.b).parts
            out, start = [], 0
            for part in parts:
                a = e.a if e.a.width == 1 else ir.slice_row(e.a, start, start + part.width)
                b = e.b if e.b.width == 1 else ir.slice_row(e.b, start, start + part.width)
                out.append(rewrite(ir.binary(e.op, rewrite(a), rewrite(b))))
                start += part.width
            return ir.concat(out)
        return e

    return map_rows(program, rewrite)


# ---- hoisting: constant-indexed subtrees fold into lookup tables ------------------------------


def _const_indexed(e: ir.RExpr):
    """(index, rows) if every leaf of e is a constant, and the row leaves are rows of constant tables that
    share one index and one row count; else None."""
    index, rows = None, None
    for node in ir.walk_rows([e]):
        if isinstance(node, ir.ConstRow):
            if index is not None and node.index != index:
                return None
            index = node.index
        elif isinstance(node, (ir.ChildState, ir.InputRow, ir.InputProjection, ir.Mask, ir.Select)):
            return None  # varies with the position, not only with one table row
    return index


def _evaluate_on_all_rows(program: ir.Program, e: ir.RExpr) -> np.ndarray:
    """Evaluates e for every row of its constant tables at once: [rows, e.width] float32."""
    consts = program.constants
    memo = {}

    def ev(x):
        if x in memo:
            return memo[x]
        if isinstance(x, ir.ConstRow):
            out = consts[x.const]
        elif isinstance(x, ir.ConstVec):
            out = consts[x.const].reshape(1, -1)
        elif isinstance(x, ir.Scalar):
            out = np.full((1, 1), x.value, dtype=np.float32)
        elif isinstance(x, ir.MatMul):
            xs = ev(x.x)
            w = consts[x.weight]
            out = (xs.reshape(xs.shape[0], x.rows, -1) @ w).reshape(xs.shape[0], -1)
            if x.bias:
                out = (out.reshape(out.shape[0], x.rows, -1) + consts[x.bias]).reshape(out.shape[0], -1)
        elif isinstance(x, ir.LeftMatMul):
            xs = ev(x.x)
            w = consts[x.weight]  # W^T [K, R]
            out = (w.T @ xs.reshape(xs.shape[0], -1, x.cols)).reshape(xs.shape[0], -1)
        elif isinstance(x, ir.MatVec):
            m, v = ev(x.mat), ev(x.vec)
            rows = max(m.shape[0], v.shape[0])
            out = np.einsum("brc,bc->br", np.broadcast_to(m, (rows, m.shape[1])).reshape(rows, x.width, -1),
                            np.broadcast_to(v, (rows, v.shape[1])))
        elif isinstance(x, ir.Unary):
            out = NUMPY_UNARY[x.op](ev(x.x))
        elif isinstance(x, ir.Binary):
            out = NUMPY_BINARY[x.op](ev(x.a), ev(x.b))
        elif isinstance(x, ir.Slice):
            out = ev(x.x)[:, x.start:x.start + x.width]
        elif isinstance(x, ir.Concat):
            parts = [ev(p) for p in x.parts]
            rows = max(p.shape[0] for p in parts)
            out = np.concatenate([np.broadcast_to(p, (rows, p.shape[1])) for p in parts], axis=1)
        else:
            raise TypeError(x)
        memo[x] = np.asarray(out, dtype=np.float32)
        return memo[x]

    return np.ascontiguousarray(ev(e), dtype=np.float32)


NUMPY_UNARY = {
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "tanh": np.tanh, "relu": lambda x: np.maximum(x, 0), "neg": np.negative, "exp": np.exp, "abs": np.abs,
    "identity": lambda x: x,
}
NUMPY_BINARY = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "max": np.maximum,
                "min": np.minimum}


def fold_constant_rows(program: ir.Program) -> ir.Program:
    """Constant . constant folds at conversion time: a subtree that depends only on one row of constant
    tables (an embedding lookup, its projection W.x + b, even a leaf's whole gate math) becomes one lookup
    into a precomputed table. Largest foldable subtrees first."""
    constants = dict(program.constants)
    folded = {}

    def fold(e):
        if e in folded:
            return folded[e]
        index = _const_indexed(e) if not isinstance(e, (ir.ConstRow, ir.ConstVec, ir.Scalar)) else None
        if index is not None:
            rows = {program.constants[n.const].shape[0] for n in ir.walk_rows([e]) if isinstance(n, ir.ConstRow)}
            if len(rows) == 1 and rows.pop() * e.width <= MAX_FOLDED_ELEMENTS:
                table = _evaluate_on_all_rows(program, e)
                name = f"folded_{len(constants)}"
                constants[name] = table
                folded[e] = ir.ConstRow(name, index, e.width)
                return folded[e]
        children = ir.row_children(e)
        folded[e] = _rebuild(e, [fold(c) for c in children]) if children else e
        return folded[e]

    cases = tuple(dataclasses.replace(c, writes=tuple((t, fold(x)) for t, x in c.writes)) for c in program.cases)
    return _drop_unused_constants(dataclasses.replace(program, cases=cases, constants=constants))


# ---- fusion: bias into the matrix product -----------------------------------------------------


def fuse_bias(program: ir.Program) -> ir.Program:
    """add(matmul(x, W), b) -> matmul(x, W, bias=b): the bias is added in the GEMM's store. Also through one
    addition: (matmul + y) + b -> matmul(bias=b) + y (the hoisted half of a split product takes it)."""
    constants = dict(program.constants)

    def fusable(e):
        return (isinstance(e, ir.MatMul) and e.rows == 1) or isinstance(e, ir.InputProjection)

    def with_bias(mm, vec):
        bias = np.broadcast_to(constants[vec.const].reshape(-1) if isinstance(vec, ir.ConstVec)
                               else np.float32(vec.value), (mm.width,)).astype(np.float32)
        if mm.bias:
            bias = bias + constants[mm.bias]
        name = f"bias_{len(constants)}"
        constants[name] = np.ascontiguousarray(bias)
        return dataclasses.replace(mm, bias=name)

    def rewrite(e):
        if not (isinstance(e, ir.Binary) and e.op == "add"):
            return e
        for x, vec in ((e.a, e.b), (e.b, e.a)):
            if not isinstance(vec, (ir.ConstVec, ir.Scalar)):
                continue
            if fusable(x):
                return with_bias(x, vec)
            if isinstance(x, ir.Binary) and x.op == "add":
                for p, q in ((x.a, x.b), (x.b, x.a)):
                    if fusable(p) and p.width == e.width:
                        return ir.binary("add", with_bias(p, vec), q)
        return e

    program = dataclasses.replace(program, constants=constants)
    return map_rows(program, rewrite)


# ---- hoisting: node-input-only products out of the recursion ----------------------------------


def split_concat_matmul(program: ir.Program) -> ir.Program:
    """matmul(concat(x, h...), W) = x @ W_x + concat(h...) @ W_h when x is a runtime node input, so that x's
    product can leave the recursion (DAG-RNN: concat(pixel, h_up, h_left) @ W)."""
    constants = dict(program.constants)

    def rewrite(e):
        if not (isinstance(e, ir.MatMul) and e.rows == 1 and isinstance(e.x, ir.Concat)):
            return e
        if not any(isinstance(p, ir.InputRow) for p in e.x.parts):
            return e
        w = constants[e.weight]
        hoisted, rest, rest_rows, start = [], [], [], 0
        for part in e.x.parts:
            block = w[start:start + part.width]
            start += part.width
            if isinstance(part, ir.InputRow):
                hoisted.append((part, block))
            else:
                rest.append(part)
                rest_rows.append(block)
        terms = []
        for k, (part, block) in enumerate(hoisted):
            name = f"{e.weight}_in{k}"
            constants[name] = np.ascontiguousarray(block)
            terms.append(ir.MatMul(part, name, e.bias if k == 0 else None, e.width))
        if rest:
            name = f"{e.weight}_rest"
            constants[name] = np.ascontiguousarray(np.concatenate(rest_rows, axis=0))
            terms.append(ir.MatMul(ir.concat(rest), name, None, e.width))
        out = terms[0]
        for t in terms[1:]:
            out = ir.binary("add", out, t)
        return out

    return map_rows(dataclasses.replace(program, constants=constants), rewrite)


def hoist_input_products(program: ir.Program) -> ir.Program:
    """matmul(input_row(X)[i], W, b) -> row i of X @ W + b, computed for all rows at once before the
    recursion: one large, efficient GEMM instead of one per level batch."""

    def rewrite(e):
        if isinstance(e, ir.MatMul) and e.rows == 1 and isinstance(e.x, ir.InputRow):
            return ir.InputProjection(e.x.array, e.weight, e.bias, e.x.index, e.width)
        return e

    return map_rows(program, rewrite)


def merge_added_products(program: ir.Program) -> ir.Program:
    """x @ W1 + y @ W2 (+ ...) -> concat(x, y) @ [W1; W2]: one GEMM with a deeper K per level batch instead of
    several shallow ones (U_up h_up + U_left h_left; U_l h_l + U_r h_r)."""
    constants = dict(program.constants)

    def terms(e):
        if isinstance(e, ir.Binary) and e.op == "add" and e.a.width == e.b.width == e.width:
            return terms(e.a) + terms(e.b)
        return [e]

    def rewrite(e):
        if not (isinstance(e, ir.Binary) and e.op == "add"):
            return e
        parts = terms(e)
        products = [t for t in parts if isinstance(t, ir.MatMul) and t.rows == 1 and t.width == e.width]
        if len(products) < 2:
            return e
        name = "merged_" + "_".join(p.weight for p in products)
        constants[name] = np.ascontiguousarray(np.concatenate([constants[p.weight] for p in products], axis=0))
        biases = [constants[p.bias] for p in products if p.bias]
        bias = None
        if biases:
            bias = f"{name}_bias"
            constants[bias] = np.ascontiguousarray(np.sum(biases, axis=0, dtype=np.float32))
        out = ir.MatMul(ir.concat(p.x for p in products), name, bias, e.width)
        for t in parts:
            if t not in products:
                out = ir.binary("add", out, t)
        return out

    return map_rows(dataclasses.replace(program, constants=constants), rewrite)

"""IR -> IR passes. Each takes a Program and returns a new one; `pipeline.py` lists them in order."""
from __future__ import annotations

import dataclasses

import numpy as np

from ..ir import index as ix
from ..ir import nodes as ir
from ..ir import ops
from .rules import SIMPLIFY, apply_rules

# Folding a constant-indexed subtree materializes one value per table row; beyond this many floats per
# folded table the lookup table would cost more memory than the work it saves.
MAX_FOLDED_ELEMENTS = 1 << 26


def map_rows(program: ir.Program, rewrite) -> ir.Program:
    """Applies `rewrite(node) -> node` bottom-up to every expression of every case (memoized, so shared subtrees
    stay shared); `rewrite` sees each node rebuilt from its rewritten operands."""
    visit = ir.transform(rewrite)
    cases = tuple(dataclasses.replace(c, predicate=visit(c.predicate),
                                      target=visit(c.target) if c.target is not None else None,
                                      writes=tuple((t, visit(x)) for t, x in c.writes)) for c in program.cases)
    return _drop_unused_constants(dataclasses.replace(program, cases=cases))


CONSTANT_FIELDS = ("const", "weight", "bias")


def _drop_unused_constants(program: ir.Program) -> ir.Program:
    used = set()
    for case in program.cases:
        for node in ir.walk_rows([x for _, x in case.writes]):
            used.update(getattr(node, f) for f in CONSTANT_FIELDS if getattr(node, f, None))
    return dataclasses.replace(program, constants={k: v for k, v in program.constants.items() if k in used},
                               labels=tuple((c, s) for c, s in program.labels if c in used))


# ---- simplification: named rules, one driver ----------------------------------------------------

def simplify(program: ir.Program) -> ir.Program:
    """Applies the simplification rules (rules.SIMPLIFY, in order) bottom-up: identities go, slices and takes
    merge, a slice or take picks the part of a concat it lies in, rearrangements move below elementwise math, and
    elementwise math distributes over concatenations."""
    return map_rows(program, apply_rules(SIMPLIFY))


# ---- case splitting: branch-free choices become cases ------------------------------------------

MAX_CASES = 16


def _conjuncts(pred):
    if isinstance(pred, ir.BAnd):
        return _conjuncts(pred.a) + _conjuncts(pred.b)
    return [pred]


def _satisfiable(pred) -> bool:
    """False when the conjunction holds a predicate and its negation (or a false constant)."""
    parts = _conjuncts(pred)
    return not any(p == ir.BConst(False) for p in parts) and not any(ix.bnot(p) in parts for p in parts)


def _specialize(case: ir.Case, pred, value: bool) -> ir.Case:
    def fn(e):
        if isinstance(e, ir.Select) and e.pred == pred:
            return e.a if value else e.b
        if isinstance(e, ir.Select) and e.pred == ix.bnot(pred):
            return e.b if value else e.a
        return e

    rewrite = ir.transform(fn)
    return ir.Case(f"{case.name}{'t' if value else 'f'}", ix.band(case.predicate, pred if value else ix.bnot(pred)),
                   case.target, tuple((t, rewrite(x)) for t, x in case.writes))


def _heavy(case: ir.Case) -> int:
    return sum(n.MATERIALIZED for n in ir.walk_rows([x for _, x in case.writes]))


def split_select_cases(program: ir.Program) -> ir.Program:
    """A case whose rows choose between two computations on a structure predicate (the branch-free
    torch.where(is_leaf, leaf_row, internal_row) of a dynamo export) splits into one case per side, each computing
    only its own rows, when that removes a matrix product from one of them: leaf specialization for branch-free
    models."""
    done, work = [], list(program.cases)
    while work:
        case = work.pop(0)
        chosen = None
        for node in ir.walk_rows([x for _, x in case.writes]):
            if isinstance(node, ir.Select) and len(done) + len(work) + 2 <= MAX_CASES:
                sides = [_specialize(case, node.pred, v) for v in (True, False)]
                if min(_heavy(s) for s in sides) < _heavy(case):
                    chosen = sides
                    break
        if chosen is None:
            done.append(case)
        else:
            work = [s for s in chosen if _satisfiable(s.predicate)] + work
    return dataclasses.replace(program, cases=tuple(done))


# ---- hoisting: constant-indexed subtrees fold into lookup tables ------------------------------



def _const_indexed(e: ir.RExpr):
    """The index if every leaf of e is a constant, and the row leaves are rows of constant tables that share one
    index; else None."""
    index = None
    for node in ir.walk_rows([e]):
        if isinstance(node, ir.ConstRow):
            if index is not None and node.index != index:
                return None
            index = node.index
        elif node.VARIES:
            return None  # varies with the position, not only with one table row
    return index


def _evaluate_on_all_rows(program: ir.Program, e: ir.RExpr) -> np.ndarray:
    """Evaluates e for every row of its constant tables at once: [rows, e.width] of the program's element type
    (each node's own `evaluate`)."""
    memo = {}
    dtype = np.dtype(program.element)

    def ev(x):
        if x not in memo:
            memo[x] = np.asarray(x.evaluate(ev, program.constants), dtype=dtype)
        return memo[x]

    return np.ascontiguousarray(ev(e), dtype=dtype)


def fold_constant_rows(program: ir.Program) -> ir.Program:
    """Constant . constant folds at conversion time: a subtree that depends only on one row of constant
    tables (an embedding lookup, its projection W.x + b, even a leaf's whole gate math) becomes one lookup
    into a precomputed table. Largest foldable subtrees first."""
    constants = dict(program.constants)
    labels = dict(program.labels)
    folded = {}

    def fold(e):
        if e in folded:
            return folded[e]
        out = None
        if isinstance(e, ir.RExpr) and not isinstance(e, (ir.ConstRow, ir.ConstVec, ir.Scalar)):
            index = _const_indexed(e)
            if index is not None:
                rows = {program.constants[n.const].shape[0] for n in ir.walk_rows([e]) if isinstance(n, ir.ConstRow)}
                if len(rows) == 1 and rows.pop() * e.width <= MAX_FOLDED_ELEMENTS:
                    table = _evaluate_on_all_rows(program, e)
                    name = f"folded_{len(constants)}"
                    constants[name] = table
                    # indexed as the table it folds: a bad index is reported against that table's name
                    source = next((labels[n.const] for n in ir.walk_rows([e])
                                   if isinstance(n, ir.ConstRow) and n.const in labels), None)
                    if source is not None:
                        labels[name] = source
                    out = ir.ConstRow(name, index, e.width)
        if out is None:
            kids = ir.operands(e) if isinstance(e, ir.RExpr) else ()
            out = ir.with_operands(e, [fold(c) for c in kids]) if kids else e
        folded[e] = out
        return out

    cases = tuple(dataclasses.replace(c, writes=tuple((t, fold(x)) for t, x in c.writes)) for c in program.cases)
    return _drop_unused_constants(dataclasses.replace(program, cases=cases, constants=constants,
                                                      labels=tuple(labels.items())))


# ---- fusion: bias into the matrix product -----------------------------------------------------


def fuse_bias(program: ir.Program) -> ir.Program:
    """add(matmul(x, W), b) -> matmul(x, W, bias=b): the bias is added in the GEMM's store. Also through one
    addition: (matmul + y) + b -> matmul(bias=b) + y (the hoisted half of a split product takes it)."""
    constants = dict(program.constants)

    def fusable(e):
        return (isinstance(e, ir.MatMul) and e.rows == 1) or isinstance(e, ir.InputProjection)

    def with_bias(mm, vec):
        dtype = np.dtype(program.element)
        bias = np.broadcast_to(constants[vec.const].reshape(-1) if isinstance(vec, ir.ConstVec)
                               else dtype.type(vec.value), (mm.width,)).astype(dtype)
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
            constants[bias] = np.ascontiguousarray(np.sum(biases, axis=0, dtype=np.dtype(program.element)))
        out = ir.MatMul(ir.concat(p.x for p in products), name, bias, e.width)
        for t in parts:
            if t not in products:
                out = ir.binary("add", out, t)
        return out

    return map_rows(dataclasses.replace(program, constants=constants), rewrite)


# ---- products of each member of a child set: computed once where the member's row is written ----------------

def lift_member_products(program: ir.Program) -> ir.Program:
    """A product of each member's row of a child set (the Child-Sum TreeLSTM's U_f h_k; attention's scores
    f(h_k) @ q) moves to where that row is written: a new state table holds f(row) @ W for every row of the source
    table, each case that writes the source writes it too, and the set reads it as a member row. A node's product is
    then computed once (as a padded form computes it once per child slot) in the batch that writes the node. Exact
    when f reads nothing but the member's row and constants (the writer has no other member to read) and the new
    table's first rows are the products of the source's first rows: the source starts at zeros and f(0) @ W = 0;
    otherwise the product stays and the plan refuses it with the reason."""
    lifted = {}  # (operand f(member row), weight) -> (source table, lifted table)

    def source_of(x) -> str | None:
        tables = set()
        for node in ir.walk_rows([x]):
            if isinstance(node, ir.ChildState) and isinstance(node.index, ir.Member):
                tables.add(node.table)
            elif node.VARIES:
                return None  # a value of the node reading the set, not of the member
        if len(tables) != 1:
            return None
        table = next(iter(tables))
        init = program.table(table).init
        return table if init is None or program.input(init).zeros else None

    def zero_at_zero(e) -> bool:
        memo = {}

        def ev(x):
            if x not in memo:
                memo[x] = np.zeros((1, x.width), program.element) if isinstance(x, ir.ChildState) else \
                    np.asarray(x.evaluate(ev, program.constants), dtype=program.element)
            return memo[x]

        try:
            with np.errstate(all="ignore"):
                return bool(np.all(ev(ir.MatMul(e.x, e.weight, None, e.width)) == 0.0))
        except (TypeError, ValueError):  # a node that cannot be evaluated alone: the product stays
            return False

    def rewrite(e):
        if not (isinstance(e, ir.MatMul) and e.rows == 1 and ir.member_dependent(e)):
            return e
        key = (e.x, e.weight)
        if key not in lifted:
            source = source_of(e.x)
            if source is None or not zero_at_zero(e):
                return e
            taken = [name for _, name in lifted.values()]
            lifted[key] = (source, _fresh_table_name(program, f"{source}_by_{e.weight}", taken))
        row = ir.ChildState(lifted[key][1], ir.Member(), False, e.width)
        return ir.binary("add", row, ir.ConstVec(e.bias, e.width)) if e.bias else row

    constants, labels = program.constants, program.labels
    program = map_rows(program, rewrite)
    if not lifted:
        return program
    program = dataclasses.replace(program, constants=constants, labels=labels)  # the writers use the weights now
    tables = list(program.tables)
    for (x, weight), (source, name) in lifted.items():
        tables.append(ir.TableDecl(name, (program.constants[weight].shape[1],), None, "", "state",
                                   program.table(source).lead))  # a forest's [B, N] rows as its source's
    cases = []
    for case in program.cases:
        writes = list(case.writes)
        for table, row in case.writes:
            for (x, weight), (source, name) in lifted.items():
                if table == source:
                    at_row = ir.transform(lambda n, row=row, source=source: row if isinstance(n, ir.ChildState) and
                                          n.table == source and isinstance(n.index, ir.Member) else n)
                    width = program.constants[weight].shape[1]
                    writes.append((name, ir.MatMul(at_row(x), weight, None, width)))
        cases.append(dataclasses.replace(case, writes=tuple(writes)))
    return dataclasses.replace(program, tables=tuple(tables), cases=tuple(cases))


def _fresh_table_name(program: ir.Program, base: str, taken) -> str:
    names = {t.name for t in program.tables} | set(taken)
    name, k = base, 1
    while name in names:
        name, k = f"{base}_{k}", k + 1
    return name

"""The merge's per-batch bounds check in native code (csrc/python/index_check.cc, compiled by indexeval.Compiled):
the same answers as its numpy reference (indexeval._Evaluator) over random index expressions, random case lists
and a converted model's merged forests with corrupted structure arrays; and integer division as the kernel computes
it (csrc/runtime/kernel_support.h), a divisor of -1 included."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

import cortex
from cortex.examples import structures as st
from cortex.examples import treelstm
from cortex.ir import nodes as ir
from cortex.serving import merge, plan_for
from cortex.serving.indexeval import OWN_ROWS, CaseCheck, Compiled, _Evaluator, _loads, native

REPO = Path(__file__).resolve().parents[2]
INT64_MIN, INT64_MAX = -2 ** 63, 2 ** 63 - 1

# ---- random index expressions over three arrays: 1-D, two columns, a scalar ---------------------------------------

ARRAYS = ("a", "b", "s")


def _arrays(draw_rows):
    rows_a, rows_b, values = draw_rows
    return {"a": np.array(values[:rows_a], dtype=np.int64),
            "b": np.array(values[:2 * rows_b], dtype=np.int32).reshape(rows_b, 2),
            "s": np.array(values[0] if values else 3, dtype=np.int64)}


array_values = hs.tuples(hs.integers(0, 8), hs.integers(0, 4), hs.lists(hs.integers(-12, 12), min_size=8, max_size=8))


def _leaf():
    return hs.one_of(hs.just(ir.Iter()), hs.integers(-4, 12).map(ir.IConst),
                     hs.sampled_from([None, "a", "b"]).map(ir.Length))


def _extend(inner):
    pred = hs.deferred(lambda: predicates)
    return hs.one_of(
        hs.builds(ir.Load, hs.sampled_from(["a", "s"]), inner),
        hs.builds(lambda i, c: ir.Load("b", i, c), inner, hs.integers(0, 1)),
        hs.builds(ir.IBinary, hs.sampled_from(ir.INDEX_BINARY_OPS), inner, inner),
        hs.builds(ir.ISelect, pred, inner, inner),
        hs.builds(lambda p, v: ir.Guard(p, v, "a guard"), pred, inner))


indices = hs.recursive(_leaf(), _extend, max_leaves=8)
predicates = hs.recursive(
    hs.one_of(hs.booleans().map(ir.BConst), hs.builds(ir.Compare, hs.sampled_from(list(ir.COMPARE_OPS)), indices,
                                                       indices)),
    lambda inner: hs.one_of(hs.builds(ir.BNot, inner), hs.builds(ir.BAnd, inner, inner),
                            hs.builds(ir.BOr, inner, inner)),
    max_leaves=4)


def _reference(exprs, arrays, count, node_total):
    lengths = {name: a.shape[0] if a.ndim else 1 for name, a in arrays.items()}
    evaluate = _Evaluator(arrays, count, lambda name: lengths[name] if name else node_total)
    return [evaluate(e) for e in exprs]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hs.lists(hs.one_of(indices, predicates), min_size=1, max_size=4), array_values, hs.integers(0, 12),
       hs.integers(0, 20))
def test_native_evaluation_is_the_reference(exprs, rows, count, node_total):
    arrays = _arrays(rows)
    got = Compiled().evaluate(exprs, arrays, count, node_total)
    for e, (value, trouble), (want, want_trouble) in zip(exprs, got, _reference(exprs, arrays, count, node_total)):
        assert np.array_equal(trouble, want_trouble), e
        ok = ~want_trouble  # where evaluating fails the kernel raises: the value is not used
        assert np.array_equal(value[ok], np.asarray(want, dtype=np.int64)[ok]), e


def _python_division(op, a, b):
    """ONNX integer division of int64 values as the kernel computes it (wrapping: INT64_MIN / -1 is INT64_MIN)."""
    wrap = lambda v: (v + 2 ** 63) % 2 ** 64 - 2 ** 63  # noqa: E731
    q = abs(a) // abs(b) * (1 if (a < 0) == (b < 0) else -1)  # truncated
    return wrap({"div": q, "floordiv": a // b, "mod": a % b, "fmod": a - b * q}[op])


EDGES_A = [INT64_MIN, INT64_MIN + 1, -7, -6, -1, 0, 6, 7, INT64_MAX]
EDGES_B = [-1, 1, -2, 2, -3, 3, INT64_MIN, INT64_MAX]


def test_division_edges_native_reference_and_kernel_agree(tmp_path):
    """Truncating, floor, mod and fmod on the edges of int64 (a divisor of -1 traps on x86 if not taken apart): the
    kernel's helpers, the native check and its reference all give Python's exact answer, wrapped."""
    pairs = [(a, b) for a in EDGES_A for b in EDGES_B]
    ops = ("div", "floordiv", "mod", "fmod")
    want = {op: [_python_division(op, a, b) for a, b in pairs] for op in ops}
    arrays = {"x": np.array([a for a, _ in pairs], np.int64), "y": np.array([b for _, b in pairs], np.int64)}
    exprs = [ir.IBinary(op, ir.Load("x", ir.Iter()), ir.Load("y", ir.Iter())) for op in ops]
    for source in (Compiled().evaluate(exprs, arrays, len(pairs), 0), _reference(exprs, arrays, len(pairs), 0)):
        for op, (value, trouble) in zip(ops, source):
            assert not trouble.any()
            assert value.tolist() == want[op], op

    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    driver = tmp_path / "division.cc"
    literal = lambda v: f"(long long){v % 2 ** 64}ULL"  # noqa: E731 - two's complement, as gcc converts
    driver.write_text('#include "kernel_support.h"\n#include <cstdio>\nint main() {\n  long long v[][2] = {'
                      + ", ".join(f"{{{literal(a)}, {literal(b)}}}" for a, b in pairs)
                      + '};\n  for (auto& p : v) std::printf("%lld %lld %lld %lld\\n", (long long)cortex::idiv(p[0], '
                        'p[1], 0), (long long)cortex::ifloordiv(p[0], p[1], 0), (long long)cortex::imod(p[0], p[1], 0),'
                        ' (long long)cortex::ifmod(p[0], p[1], 0));\n}\n')
    exe = tmp_path / "division"
    plain = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}  # under tools/sanitize.sh: not the compiler
    subprocess.run([compiler, "-std=c++17", "-O1", f"-I{REPO / 'csrc' / 'runtime'}", str(driver), "-o", str(exe)],
                   check=True, capture_output=True, timeout=120, env=plain)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True, timeout=30, env=plain).stdout
    out = out.split("\n")
    for k, line in enumerate(out[:len(pairs)]):
        assert [int(x) for x in line.split()] == [want[op][k] for op in ops], pairs[k]


# ---- random case lists: CaseCheck's native answer against its reference ------------------------------------------

# a read of the request's own rows (OWN_ROWS), or of a shared table's (an embedding of 0-6 rows)
uses = hs.lists(hs.tuples(indices, hs.booleans(), hs.one_of(hs.just(OWN_ROWS), hs.integers(0, 6))), max_size=3)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hs.lists(hs.tuples(predicates, uses), min_size=1, max_size=3), array_values,
       hs.lists(hs.tuples(hs.integers(0, 4), hs.integers(0, 4)), min_size=1, max_size=5))
def test_case_check_is_the_reference(cases, rows, counts):
    arrays = _arrays(rows)
    check = CaseCheck([(p, list(dict.fromkeys(_loads(p, {}))), list(dict.fromkeys(u))) for p, u in cases])
    nodes = [n for n, _ in counts]
    positions = [p for _, p in counts]
    assert check(arrays, nodes, positions) == check.reference(arrays, nodes, positions)


def test_native_machine_refuses_malformed_code():
    C = native()
    ok = np.array([[0, 0, 0, 0, 0, 0]], np.int64)
    assert C.eval_index(ok, [], np.zeros(0, np.int64), 3, [0])[0][0].tolist() == [0, 1, 2]
    for code, why in [([[99, 0, 0, 0, 0, 0]], "unknown op"),
                      ([[4, 0, 0, 0, 0, 0]], "earlier result"),  # add reading itself
                      ([[3, 0, 0, 0, 0, 0]], "earlier result"),  # load of its own result
                      ([[0, 0, 0, 0, 0, 0], [3, 0, 0, 0, 1, -1]], "array not passed"),
                      ([[2, 0, 0, 0, 5, 0]], "length not passed"),
                      ([[0, 0, 0, 0, 0, 0], [21, 0, 7, 0, 0, 0]], "earlier result")]:  # not: a stray operand
        with pytest.raises(ValueError, match=why):
            C.eval_index(np.array(code, np.int64), [np.zeros(2, np.int64)], np.zeros(1, np.int64), 2, [0])
    with pytest.raises(ValueError, match="register"):
        C.eval_index(ok, [], np.zeros(0, np.int64), 3, [1])
    with pytest.raises(ValueError, match="one node count and one position count"):
        C.check_positions(ok, [], np.zeros(0, np.int64), [], np.zeros(2, np.int64), np.zeros(1, np.int64))


# ---- a converted Loop TreeLSTM: merged forests with structure arrays corrupted ------------------------------------

@pytest.fixture(scope="module")
def loop_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("index_check")
    model = treelstm.build_loop(treelstm.make_params(hidden=8, embed_dim=6, vocab=50))
    src, out = folder / "tl.onnx", folder / "tl.cortex.onnx"
    onnx.save(model, str(src))
    cortex.convert(str(src), str(out), strict=True)
    plan = plan_for(str(out))
    assert plan.mergeable, plan.reason
    (kernel,) = plan.kernels
    assert kernel.bounds.evaluate_cases  # the Loop form reads rows through its order and child arrays
    return plan, kernel


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hs.integers(0, 2 ** 32 - 1), hs.integers(1, 6), hs.lists(hs.tuples(hs.integers(0, 2), hs.integers(0, 10 ** 6),
                                                                            hs.integers(-3, 60)), max_size=4))
def test_corrupted_forests_flag_what_the_reference_flags(loop_model, seed, count, edits):
    plan, kernel = loop_model
    rng = np.random.default_rng(seed)
    trees = [st.random_tree(int(rng.integers(1, 9)), rng, 50).arrays() for _ in range(count)]
    batch = merge(plan, trees, windows=True)
    arrays = {name: batch.feeds[source].copy() for name, source in kernel.arrays.items()}
    arrays[kernel.windows] = batch.feeds[kernel.windows]  # its child reads have request windows (windows.py)
    names = sorted(n for n in arrays if arrays[n].ndim == 1 and n != "words" and arrays[n].dtype == np.int64)
    for which, where, value in edits:  # any id anywhere: past its tree, into a neighbour's, -1, -2 ...
        a = arrays[names[which % len(names)]]
        if a.size:
            a[where % a.size] = value
    nodes, positions = batch.counts[kernel.nodes], batch.counts[kernel.positions]
    check = kernel.bounds.cases
    assert check(arrays, nodes, positions) == check.reference(arrays, nodes, positions)
    if not edits:
        assert check(arrays, nodes, positions) == set()

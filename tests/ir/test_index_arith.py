"""Index arithmetic is int64 arithmetic, as ONNX Runtime computes it: add, sub and mul wrap modulo 2**64 when the IR
folds constants and in the generated code; an ordering is decided at conversion only where neither side can wrap."""
from __future__ import annotations

import pytest

from cortex.ir import index as ix
from cortex.ir import nodes as ir
from cortex.ir.printer import TEXT

INT64_MAX, INT64_MIN = (1 << 63) - 1, -(1 << 63)
LOADED = ir.Load("src", ir.Iter())  # an input's value: any int64


@pytest.mark.parametrize("op,a,b,expected", [("add", INT64_MAX, 1, INT64_MIN), ("sub", INT64_MIN, 1, INT64_MAX),
                                             ("mul", 1 << 62, 4, 0), ("mul", INT64_MAX, 3, INT64_MAX - 2),
                                             ("div", INT64_MIN, -1, INT64_MIN), ("add", 2, 3, 5)])
def test_folded_constants_wrap(op, a, b, expected):
    assert ix.ibin(op, ix.const(a), ix.const(b)) == ix.const(expected)


def test_sums_of_terms_keep_wrapped_coefficients():
    twice = ix.ibin("mul", ix.const(1 << 62), ix.ibin("mul", ix.const(4), LOADED))  # 2**64 * src: zero
    assert twice == ix.const(0)
    assert ix.ibin("add", ix.ibin("add", LOADED, ix.const(INT64_MAX)), ix.const(1)) == \
        ix.ibin("add", LOADED, ix.const(INT64_MIN))


def test_an_ordering_over_an_input_value_is_not_decided():
    # src[p] + 1 < src[p] holds where src[p] == INT64_MAX: left to run time
    assert isinstance(ix.cmp("lt", ix.ibin("add", LOADED, ix.const(1)), LOADED), ir.Compare)
    # equality is decided either way: x + 1 == x never holds modulo 2**64
    assert ix.cmp("eq", ix.ibin("add", LOADED, ix.const(1)), LOADED) == ir.BConst(False)


def test_an_ordering_over_positions_and_lengths_is_decided():
    p, n = ir.Iter(), ir.Length("order")
    assert ix.cmp("lt", ix.ibin("add", p, ix.const(1)), p) == ir.BConst(False)
    assert ix.cmp("le", ix.ibin("sub", n, ix.const(1)), n) == ir.BConst(True)
    # unless a constant is large enough for the sum to wrap
    assert isinstance(ix.cmp("lt", ix.ibin("add", p, ix.const(INT64_MAX)), p), ir.Compare)


def test_the_generated_code_never_writes_signed_overflow():
    from cortex.codegen.cstyle import HostSyntax

    syntax = HostSyntax.__new__(HostSyntax)  # the arithmetic and constants need no kernel plan
    e = ir.IBinary("sub", ir.IBinary("mul", ir.Iter(), ir.IConst(3)), ir.IConst(INT64_MIN))
    assert e.render(syntax) == "cortex::wrapping_sub(cortex::wrapping_mul(p, INT64_C(3)), INT64_MIN)"
    assert e.render(TEXT) == f"((p * 3) - {INT64_MIN})"

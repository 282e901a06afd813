"""values.count_value computes a number of the graph from a length as ONNX Runtime does: chains of the ops it knows
(integer and float arithmetic with a constant on either side, rounding, casts) over random lengths, held to ONNX
Runtime's own result bit for bit; where it says the result is undefined (an integer division by zero, a float cast
to an integer out of range) ONNX Runtime is not asked (it would trap or return anything)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import given, settings, strategies as hs
from onnx import TensorProto, helper, numpy_helper

from cortex.serving.values import Count, count_value

_TYPES = {np.dtype(np.int64): TensorProto.INT64, np.dtype(np.int32): TensorProto.INT32,
          np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE}
_BINARY = ["Add", "Sub", "Mul", "Div", "Max", "Min"]
_UNARY_FLOAT = ["Neg", "Ceil", "Floor", "Abs"]


@hs.composite
def chains(draw):
    """(steps, dtype of each step's result): a count n (int64) through up to six ops."""
    dtype = np.dtype(np.int64)
    steps = []
    for _ in range(draw(hs.integers(1, 6))):
        kind = draw(hs.sampled_from(["binary", "unary", "cast"]))
        if kind == "cast":
            dtype = np.dtype(draw(hs.sampled_from(list(_TYPES))))
            steps.append(("Cast", dtype, False))
        elif kind == "unary":
            op = draw(hs.sampled_from(_UNARY_FLOAT if dtype.kind == "f" else ["Neg", "Abs"]))
            steps.append((op, None, False))
        else:
            op = draw(hs.sampled_from(_BINARY))
            if dtype.kind == "f":
                const = draw(hs.sampled_from([-1.0, 1.0, 2.0, -3.0, 0.5, 0.1, 7.0, 0.0]))
            else:
                const = draw(hs.integers(-9, 9))
            steps.append((op, np.asarray(const, dtype=dtype), draw(hs.booleans())))
    return tuple(steps)


def _onnx_value(steps, n):
    nodes, inits, name, dtype = [], [], "n", np.dtype(np.int64)
    for k, (op, const, first) in enumerate(steps):
        out = f"v{k}"
        if op == "Cast":
            dtype = const
            nodes.append(helper.make_node("Cast", [name], [out], to=_TYPES[const]))
        elif const is None:
            nodes.append(helper.make_node(op, [name], [out]))
        else:
            inits.append(numpy_helper.from_array(const, f"c{k}"))
            nodes.append(helper.make_node(op, [f"c{k}", name] if first else [name, f"c{k}"], [out]))
        name = out
    graph = helper.make_graph(nodes, "count", [helper.make_tensor_value_info("n", TensorProto.INT64, [])],
                              [helper.make_tensor_value_info(name, _TYPES[dtype], [])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"n": np.asarray(n, dtype=np.int64)})[0]


@settings(max_examples=150, deadline=None)
@given(chains(), hs.sampled_from([0, 1, 2, 3, 17, 255, 4096, 16777217, 2 ** 40 + 3]))
def test_count_value_is_onnx_runtimes(steps, n):
    got = count_value(Count(0, steps), n)
    if got is None:
        return  # undefined in ONNX Runtime too: not asked
    want = _onnx_value(steps, n)
    assert got.dtype == want.dtype, (steps, got.dtype, want.dtype)
    assert np.array_equal(got, want, equal_nan=True), (steps, n, got, want)


def test_torchscripts_reverse_range_trip_count():
    """ceil(float(-1 - (n - 1)) / -1) is n for every n a float32 holds exactly, and not past them."""
    steps = (("Add", np.int64(-1), False), ("Sub", np.int64(-1), True), ("Cast", np.dtype(np.float32), False),
             ("Div", np.float32(-1), False), ("Ceil", None, False), ("Cast", np.dtype(np.int64), False))
    for n in (0, 1, 2, 1000, 2 ** 24):
        assert int(count_value(Count(0, steps), n)) == n == int(_onnx_value(steps, n))
    assert int(count_value(Count(0, steps), 2 ** 24 + 1)) != 2 ** 24 + 1  # float32 rounds it: the merge checks


def test_an_integer_narrowed_out_of_range_is_not_asked():
    """float32 -> int64 -> int32 of 2^40: ONNX Runtime folds the two casts into one float -> int32, out of range
    (it gave INT32_MIN where the casts one by one give 0): undefined, so the merge does not rely on it."""
    steps = (("Cast", np.dtype(np.float32), False), ("Cast", np.dtype(np.int64), False),
             ("Cast", np.dtype(np.int32), False))
    assert count_value(Count(0, steps), 2 ** 40 + 3) is None
    assert int(count_value(Count(0, steps), 4096)) == 4096 == int(_onnx_value(steps, 4096))

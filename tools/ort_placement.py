#!/usr/bin/env python
"""Which of ONNX Runtime's CPU ops give an element other bits depending on where it lies in its tensor.

    python tools/ort_placement.py [--ops Tanh,ReduceSum,...] [--seed 0]

The merge path (cortex/serving) runs the ONNX nodes around a recursion on the forest, where a request's rows lie
after its neighbours', and owes each request the bits of its own run. For each op and dtype this feeds rows of
random values alone (aligned, as ONNX Runtime allocates), then the same rows at every 4-byte offset of a 64-byte
line and after 1 to 33 other rows of a larger tensor, and counts the placements whose result for those rows differs
from the rows alone. An op that differs somewhere must not be split from a forest (cortex/serving/graph_ops.py:
EXACT_ELEMENTWISE and the row sums it computes per request); one that never differs here is evidence, for this
CPU and this onnxruntime, not a proof.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

UNARY = ["Abs", "Ceil", "Cos", "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid", "HardSwish", "LeakyRelu", "Log",
         "Neg", "Reciprocal", "Relu", "Round", "Selu", "Sigmoid", "Sign", "Sin", "Softplus", "Softsign", "Sqrt",
         "Tanh", "Atan", "Mish", "Celu"]
ROWS = ["Softmax", "LogSoftmax", "ReduceSum", "ReduceMean", "ReduceMax", "ReduceL2", "ReduceLogSumExp", "MatMul",
        "Gemm", "LayerNormalization"]
TYPES = {"float32": (onnx.TensorProto.FLOAT, np.float32), "float64": (onnx.TensorProto.DOUBLE, np.float64)}


def _session(op: str, elem: int, dtype, width: int, rng) -> ort.InferenceSession:
    inits, inputs, attrs = [], ["x"], {}
    if op in ("MatMul", "Gemm"):
        inits.append(numpy_helper.from_array(rng.standard_normal((width, 7)).astype(dtype), "w"))
        inputs.append("w")
        if op == "Gemm":
            inits.append(numpy_helper.from_array(rng.standard_normal(7).astype(dtype), "b"))
            inputs.append("b")
    elif op == "LayerNormalization":
        inits += [numpy_helper.from_array(np.ones(width, dtype), "s"), numpy_helper.from_array(np.zeros(width, dtype), "z")]
        inputs += ["s", "z"]
    elif op.startswith("Reduce"):
        inits.append(numpy_helper.from_array(np.array([-1], np.int64), "axes"))
        inputs.append("axes")
    elif op in ("Softmax", "LogSoftmax"):
        attrs["axis"] = -1
    graph = helper.make_graph([helper.make_node(op, inputs, ["y"], **attrs)], "placement",
                              [helper.make_tensor_value_info("x", elem, None)],
                              [helper.make_tensor_value_info("y", elem, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    options = ort.SessionOptions()
    options.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _aligned(value: np.ndarray, offset_bytes: int = 0) -> np.ndarray:
    raw = np.empty(value.nbytes + 128, np.uint8)
    start = -raw.ctypes.data % 64 + offset_bytes
    out = raw[start:start + value.nbytes].view(value.dtype).reshape(value.shape)
    out[...] = value
    return out


def placements(op: str, type_name: str, rng) -> int | None:
    """Placements (8 widths x 4 row counts x (64 / itemsize offsets + 7 positions in a forest): 736 for float32, 480
    for float64) whose rows got other bits; None where ONNX Runtime has no such kernel."""
    elem, dtype = TYPES[type_name]
    differ = 0
    for width in (1, 5, 8, 13, 16, 31, 64, 100):
        try:
            session = _session(op, elem, dtype, width, rng)
        except Exception:  # noqa: BLE001 - no kernel for this type
            return None
        for rows in (1, 3, 7, 40):
            x = (rng.random((rows, width)) * 1.6 - 0.8 + (2.0 if op in ("Log", "Sqrt") else 0.0)).astype(dtype)
            want = session.run(None, {"x": _aligned(x)})[0]
            for offset in range(0, 64, dtype().itemsize):
                got = session.run(None, {"x": _aligned(x, offset)})[0]
                differ += not np.array_equal(got, want, equal_nan=True)
            for before in (1, 2, 3, 5, 8, 17, 33):
                forest = np.concatenate([(rng.random((before, width)) + 0.5).astype(dtype), x,
                                         (rng.random((3, width)) + 0.5).astype(dtype)])
                got = session.run(None, {"x": forest})[0][before:before + rows]
                differ += not np.array_equal(got, want, equal_nan=True)
    return differ


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", default=",".join(UNARY + ROWS), help="comma list of ONNX ops")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    print(f"onnxruntime {ort.__version__}; placements whose rows got other bits than the rows alone (of 736 for "
          "float32, 480 for float64)")
    print("| op | float32 | float64 |\n| --- | ---: | ---: |")
    for op in [o for o in args.ops.split(",") if o]:
        counts = [placements(op, t, rng) for t in TYPES]
        print(f"| {op} | " + " | ".join("no kernel" if c is None else str(c) for c in counts) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

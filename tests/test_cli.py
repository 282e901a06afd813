"""cortex-convert: the report, --strict, --dump-ir, and one-line errors."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnx_ops.zoo import treelstm as tl


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "cortex.cli", *map(str, args)], capture_output=True, text=True)


def _fixed_point_loop() -> onnx.ModelProto:
    """A Loop that iterates x <- x / 2 until it is small: a data-dependent iteration, not a recursion."""
    half = helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])
    eps = helper.make_tensor("eps", TensorProto.FLOAT, [], [1e-3])
    body = helper.make_graph(
        [helper.make_node("Mul", ["x_in", "half"], ["x_out"]),
         helper.make_node("ReduceMax", ["x_out"], ["m"], keepdims=0),
         helper.make_node("Greater", ["m", "eps"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_in", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_out", TensorProto.FLOAT, [None, 4])],
        [half, eps])
    true = helper.make_tensor("true", TensorProto.BOOL, [], [True])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["", "true", "x"], ["y"], body=body)], "fixed_point",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])], [true])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def test_convert_reports_and_dumps_ir(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(tl.build_loop(tl.make_params(hidden=8, embed_dim=4, vocab=10)), str(src))
    result = run_cli(src, "-o", tmp_path / "m.cortex.onnx", "--strict", "--dump-ir")
    assert result.returncode == 0, result.stderr
    assert "converted ->" in result.stdout and "1 of 1 recursive regions converted" in result.stdout
    assert "IR as imported" in result.stdout and "IR after passes" in result.stdout
    assert "matmul" in result.stdout and "child_state" in result.stdout
    kernels = list((tmp_path / "m.cortex").glob("*.so"))
    assert len(kernels) == 1


def test_strict_fails_when_a_loop_is_left(tmp_path):
    src = tmp_path / "fp.onnx"
    onnx.save(_fixed_point_loop(), str(src))
    relaxed = run_cli(src, "-o", tmp_path / "fp.cortex.onnx")
    assert relaxed.returncode == 0
    assert "left to ONNX Runtime" in relaxed.stdout and "whole state table" in relaxed.stdout
    strict = run_cli(src, "-o", tmp_path / "fp2.cortex.onnx", "--strict")
    assert strict.returncode != 0 and "--strict" in strict.stderr
    # the region left to ORT still computes what the original computes
    import onnxruntime as ort
    x = np.random.default_rng(0).random((3, 4), dtype=np.float32)
    expected = ort.InferenceSession(str(src)).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(tmp_path / "fp.cortex.onnx")).run(None, {"x": x})[0]
    np.testing.assert_array_equal(expected, got)


def test_missing_file_is_one_clear_line(tmp_path):
    result = run_cli(tmp_path / "nope.onnx", "-o", tmp_path / "out.onnx")
    assert result.returncode != 0
    assert result.stderr.strip() == f"cortex-convert: error: no such file: {tmp_path / 'nope.onnx'}"


def test_not_onnx_is_one_clear_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf \x00\xff\xfe")
    result = run_cli(bad, "-o", tmp_path / "out.onnx")
    assert result.returncode != 0
    assert "is not an ONNX model" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

"""cortex-convert: the report, --strict, --dump-ir, and one-line errors."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import onnx
from onnx import TensorProto, helper

from cortex.examples import treelstm as tl


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


# ---- one line, never a traceback, on any file or path (hostile or mistaken) ------------------------------------


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    import cortex

    folder = tmp_path_factory.mktemp("cli")
    onnx.save(tl.build_loop(tl.make_params(hidden=8, embed_dim=4, vocab=10)), str(folder / "m.onnx"))
    cortex.convert(str(folder / "m.onnx"), str(folder / "m.cortex.onnx"), strict=True)
    return folder


def _one_line_error(result, *fragments):
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_bad_output_paths_are_one_line(converted, tmp_path):
    src = converted / "m.onnx"
    (tmp_path / "folder").mkdir()
    _one_line_error(run_cli(src, "-o", tmp_path / "folder"), "is a folder")
    _one_line_error(run_cli(src, "-o", tmp_path / "x.cortex"), "the output itself")
    (tmp_path / "y.cortex").write_text("a file where the kernels go")
    _one_line_error(run_cli(src, "-o", tmp_path / "y.onnx"), "exists and is not a folder")
    (tmp_path / "plain").write_text("a file, not a folder")
    _one_line_error(run_cli(src, "-o", tmp_path / "plain" / "z.onnx"), "cannot write")


def test_inputs_that_are_not_models_are_one_line(tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    _one_line_error(run_cli(tmp_path / "empty.onnx", "-o", tmp_path / "o.onnx"), "the file is empty")
    assert not (tmp_path / "o.onnx").exists()
    (tmp_path / "dir.onnx").mkdir()
    _one_line_error(run_cli(tmp_path / "dir.onnx", "-o", tmp_path / "o.onnx"), "is not a file")


def _cortex(*args):
    return subprocess.run([sys.executable, "-m", "cortex", *map(str, args)], capture_output=True, text=True)


def _with_notes(converted, folder, notes: bytes):
    import shutil

    shutil.copytree(converted, folder)
    model = onnx.load(str(folder / "m.cortex.onnx"))
    for attribute in next(n for n in model.graph.node if n.op_type == "EPContext").attribute:
        if attribute.name == "notes":
            attribute.s = notes
    onnx.save(model, str(folder / "m.cortex.onnx"))
    return folder / "m.cortex.onnx"


def test_deeply_nested_notes_are_one_line(converted, tmp_path):
    model = _with_notes(converted, tmp_path / "deep", b"[" * 100000 + b"]" * 100000)
    for command in ("trust", "rebuild"):
        _one_line_error(_cortex(command, model), "nest JSON values too deeply")


def test_external_data_outside_the_folder_is_one_line(converted, tmp_path):
    (tmp_path / "inside").mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\0" * 4096)
    model = onnx.load(str(converted / "m.cortex.onnx"))
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../secret.bin"
    onnx.save(model, str(tmp_path / "inside" / "m.cortex.onnx"))
    for args in (("trust",), ("rebuild",), ("convert", "-o", tmp_path / "inside" / "o.onnx")):
        _one_line_error(_cortex(*args[:1], tmp_path / "inside" / "m.cortex.onnx", *args[1:]),
                        "external data cannot be read safely")


def test_a_cortex_node_inside_a_subgraph_is_refused_by_trust_and_rebuild(converted, tmp_path):
    import shutil

    shutil.copytree(converted, tmp_path / "nested")
    model = onnx.load(str(tmp_path / "nested" / "m.cortex.onnx"))
    graph = model.graph
    k = next(i for i, n in enumerate(graph.node) if n.op_type == "EPContext")
    cortex_node = graph.node[k]
    branch = helper.make_graph([cortex_node], "then", [], [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                                                          for o in cortex_node.output])
    flag = helper.make_tensor("always", TensorProto.BOOL, [], [True])
    graph.initializer.append(flag)
    if_node = helper.make_node("If", ["always"], list(cortex_node.output), name="choose", then_branch=branch,
                               else_branch=branch)
    graph.node[k].CopyFrom(if_node)
    onnx.save(model, str(tmp_path / "nested" / "m.cortex.onnx"))
    for command in ("trust", "rebuild"):
        _one_line_error(_cortex(command, tmp_path / "nested" / "m.cortex.onnx"),
                        "is inside the subgraph of node 'choose'", "convert the original model again")

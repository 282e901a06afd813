"""The Cortex execution provider end to end: a hand-written kernel library behind an EPContext node."""
import gc
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import cortex
from cortex import _paths, trust

NODE_NAME = "cortex_recursion_0 [run with cortex.session_options() or cortex.InferenceSession]"
BIAS = np.array([0.5, -4.0, 1.0, -0.25], dtype=np.float32)

# y = SCALE * x + b (SCALE 2 unless defined), elementwise, float32 vectors (its signature); a length mismatch is the
# kernel's error. BAD_OUTPUT_RANK: it asks for its output as [n, 1], against its own signature.
KERNEL_SOURCE = r"""
#include <stdio.h>
#include "kernel_abi.h"

#ifndef ABI_VERSION
#define ABI_VERSION CORTEX_KERNEL_ABI_VERSION
#endif
#ifndef SCALE
#define SCALE 2.0f
#endif

static const int64_t kVector[] = {-1};
static const CortexTensorSignature kInputs[] = {{CORTEX_FLOAT, 1, kVector}, {CORTEX_FLOAT, 1, kVector}};
static const CortexTensorSignature kOutputs[] = {{CORTEX_FLOAT, 1, kVector}};
static const CortexSignature kSignature = {2, 1, kInputs, kOutputs};

extern "C" {
int32_t cortex_kernel_abi_version(void) { return ABI_VERSION; }
const char* cortex_kernel_identity(void) { return "test_axpy"; }
int32_t cortex_kernel_device(void) { return CORTEX_DEVICE_CPU; }
#ifndef NO_SIGNATURE
const CortexSignature* cortex_kernel_signature(void) { return &kSignature; }
#endif

int32_t cortex_kernel_run(const CortexTensor* inputs, int32_t num_inputs, CortexAllocOutput alloc_output,
                          void* alloc_context, const CortexExecution* execution, char* error, size_t error_size) {
  (void)execution;
  if (num_inputs != 2) { snprintf(error, error_size, "expected 2 inputs, got %d", num_inputs); return 1; }
  const CortexTensor& x = inputs[0];
  const CortexTensor& b = inputs[1];
  if (x.dtype != CORTEX_FLOAT || b.dtype != CORTEX_FLOAT || x.rank != 1 || b.rank != 1) {
    snprintf(error, error_size, "expected two float32 vectors");
    return 1;
  }
  if (x.shape[0] != b.shape[0]) {
    snprintf(error, error_size, "shape mismatch: x has %lld elements, b has %lld",
             (long long)x.shape[0], (long long)b.shape[0]);
    return 1;
  }
#ifdef BAD_OUTPUT_RANK
  const int64_t column[2] = {x.shape[0], 1};
  float* y = static_cast<float*>(alloc_output(alloc_context, 0, column, 2));
#else
  float* y = static_cast<float*>(alloc_output(alloc_context, 0, x.shape, 1));
#endif
  if (y == nullptr) { snprintf(error, error_size, "could not allocate the output"); return 1; }
  const float* xs = static_cast<const float*>(x.data);
  const float* bs = static_cast<const float*>(b.data);
  for (int64_t i = 0; i < x.shape[0]; ++i) y[i] = SCALE * xs[i] + bs[i];
  return 0;
}
}
"""


def build_kernel(directory: Path, name: str = "kernel.so", abi_version=None, trusted=True, extra_source="",
                 signature=True, defines=()) -> Path:
    """Compiles the hand-written kernel; `trusted` records it in the (test) trust store, as cortex-convert does for
    the kernels it compiles; signature=False leaves out cortex_kernel_signature (as in kernels of ABI 2); `defines`:
    macros for the source (SCALE=3.0f, BAD_OUTPUT_RANK)."""
    source = directory / (Path(name).stem + ".cc")
    source.write_text(KERNEL_SOURCE + extra_source)
    output = directory / name
    command = ["g++", "-shared", "-fPIC", "-O2", "-std=c++17", f"-I{_paths.runtime_include_dir()}"]
    if abi_version is not None:
        command.append(f"-DABI_VERSION={abi_version}")
    if not signature:
        command.append("-DNO_SIGNATURE")
    command += [f"-D{define}" for define in defines]
    subprocess.run(command + [str(source), "-o", str(output)], check=True)
    if trusted:
        trust.add(sha256_of(output), "test kernel")
    return output


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_model(path: Path, kernel_relative: str, kernel_sha256: str, node_inputs=("x", "b"), **notes_extra) -> Path:
    """x -> EPContext(x, b) -> t -> Relu -> y, with b an initializer (a prepared constant)."""
    notes = {"kernel_sha256": kernel_sha256, "model": "axpy", "inputs": [{"name": "x"}, {"name": "b"}], "n": 1.5e3,
             **notes_extra}
    ep_context = helper.make_node(
        "EPContext", list(node_inputs), ["t"], name=NODE_NAME, domain="com.microsoft",
        source="CortexExecutionProvider", embed_mode=0, main_context=1, ep_cache_context=kernel_relative,
        ep_sdk_version="cortex-abi-3", notes=json.dumps(notes),
    )
    relu = helper.make_node("Relu", ["t"], ["y"], name="relu")
    graph = helper.make_graph(
        [ep_context, relu], "axpy_relu",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
        initializer=[numpy_helper.from_array(BIAS, "b")],
        value_info=[helper.make_tensor_value_info("t", TensorProto.FLOAT, ["n"])],
    )
    model = helper.make_model(
        graph, ir_version=10,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
    )
    onnx.save(model, str(path))
    return path


@pytest.fixture
def model(tmp_path):
    """A converted model whose kernel lies in kernels/ beside it."""
    kernel_dir = tmp_path / "kernels"
    kernel_dir.mkdir()
    kernel = build_kernel(kernel_dir)
    return write_model(tmp_path / "model.cortex.onnx", "kernels/kernel.so", sha256_of(kernel))


def expected(x):
    return np.maximum(2.0 * x + BIAS, 0.0)


def test_library_and_name():
    assert Path(cortex.get_library_path()).is_file()
    assert cortex.get_ep_name() == "CortexExecutionProvider"


def test_runs_kernel_then_cpu_op(model, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the artifact resolves against the model's directory, not the cwd
    session = cortex.InferenceSession(str(model))
    assert "CortexExecutionProvider" in session.get_providers()
    x = np.array([1.0, 2.0, -3.0, 0.5], dtype=np.float32)
    for scale in (1.0, -1.0, 3.0):  # several runs on one session
        (y,) = session.run(None, {"x": scale * x})
        np.testing.assert_allclose(y, expected(scale * x), rtol=0, atol=1e-6)


def test_model_from_bytes_resolves_against_cwd(model, monkeypatch):
    monkeypatch.chdir(model.parent)
    session = cortex.InferenceSession(model.read_bytes())
    x = np.arange(4, dtype=np.float32)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], expected(x), atol=1e-6)


def test_model_from_bytes_resolves_beside_the_model_path_it_names(model, tmp_path, monkeypatch):
    """The session config entry cortex.model_path (the serving tail's body runs from bytes): the kernels are found
    in that file's folder, wherever the process runs."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(Exception, match="artifact missing"):
        cortex.InferenceSession(model.read_bytes())
    options = cortex.session_options()
    options.add_session_config_entry("cortex.model_path", str(model))
    session = cortex.InferenceSession(model.read_bytes(), options)
    x = np.arange(4, dtype=np.float32)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], expected(x), atol=1e-6)


def test_relative_model_path(model, monkeypatch):
    monkeypatch.chdir(model.parent.parent)
    session = cortex.InferenceSession(str(Path(model.parent.name) / model.name))
    x = np.ones(4, dtype=np.float32)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], expected(x), atol=1e-6)


def test_node_reading_one_value_twice(tmp_path):
    # ORT passes a fused node each distinct value once; the kernel must still get the node's own input list.
    kernel = build_kernel(tmp_path)
    model = write_model(tmp_path / "model.onnx", "kernel.so", sha256_of(kernel), node_inputs=("x", "x"))
    x = np.array([1.0, -2.0, 0.5], dtype=np.float32)
    (y,) = cortex.InferenceSession(str(model)).run(None, {"x": x})
    np.testing.assert_allclose(y, np.maximum(3.0 * x, 0.0), atol=1e-6)


def test_kernel_error_becomes_exception(model):
    session = cortex.InferenceSession(str(model))
    with pytest.raises(Exception, match="shape mismatch: x has 3 elements, b has 4"):
        session.run(None, {"x": np.zeros(3, dtype=np.float32)})
    # the session stays usable after a failed run
    x = np.ones(4, dtype=np.float32)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], expected(x), atol=1e-6)


def test_missing_artifact(model):
    artifact = model.parent / "kernels" / "kernel.so"
    artifact.unlink()
    with pytest.raises(Exception, match="Cortex kernel artifact missing: .*kernels/kernel.so"):
        cortex.InferenceSession(str(model))


def test_corrupted_artifact(model):
    artifact = model.parent / "kernels" / "kernel.so"
    with open(artifact, "ab") as f:
        f.write(b"\0")
    with pytest.raises(Exception, match=r"Cortex kernel artifact corrupted \(sha256 mismatch\): .*kernels/kernel.so"):
        cortex.InferenceSession(str(model))


def test_wrong_abi_version(tmp_path):
    kernel = build_kernel(tmp_path, "future.so", abi_version=99)
    model = write_model(tmp_path / "model.onnx", "future.so", sha256_of(kernel))
    with pytest.raises(Exception, match="kernel ABI version 99, this Cortex EP expects 3"):
        cortex.InferenceSession(str(model))


def test_kernel_of_abi_2_says_convert_again(tmp_path):
    # a kernel from before signatures: the version check comes first, with what to do
    kernel = build_kernel(tmp_path, "old.so", abi_version=2, signature=False)
    model = write_model(tmp_path / "model.onnx", "old.so", sha256_of(kernel))
    with pytest.raises(Exception, match=r"kernel ABI version 2, this Cortex EP expects 3; convert the model again "
                                        r"with this version of Cortex, or run `cortex rebuild"):
        cortex.InferenceSession(str(model))


def test_kernel_without_signature_is_refused(tmp_path):
    kernel = build_kernel(tmp_path, "unsigned.so", signature=False)
    model = write_model(tmp_path / "model.onnx", "unsigned.so", sha256_of(kernel))
    with pytest.raises(Exception, match="has no valid signature: it does not export cortex_kernel_signature"):
        cortex.InferenceSession(str(model))


def test_notes_without_sha256(tmp_path):
    build_kernel(tmp_path)
    model = onnx.load(str(write_model(tmp_path / "model.onnx", "kernel.so", "0" * 64)))
    for attribute in model.graph.node[0].attribute:
        if attribute.name == "notes":
            attribute.s = b'{"model": "axpy"}'
    with pytest.raises(Exception, match="kernel_sha256"):
        cortex.InferenceSession(model.SerializeToString())


def test_without_ep_says_what_to_do(model):
    with pytest.raises(Exception) as error:
        ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    assert "cortex.session_options()" in str(error.value)


def test_ort_threads_do_not_spin_on_the_cpu_unless_asked():
    """ONNX Runtime's intra-op threads would spin after each of its own ops on the cores the Cortex kernel's pool
    then needs (a forest with a mean head ran twice as long on 2 cores): off by default on the CPU, the user's
    choice kept."""
    assert cortex.session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    asked = ort.SessionOptions()
    asked.add_session_config_entry("session.intra_op.allow_spinning", "1")
    assert cortex.session_options(asked).get_session_config_entry("session.intra_op.allow_spinning") == "1"


def test_session_options_twice_and_merge(model):
    first = cortex.session_options()
    second = cortex.session_options()
    user = ort.SessionOptions()
    user.intra_op_num_threads = 1
    merged = cortex.session_options(user)
    assert merged is user and merged.intra_op_num_threads == 1
    assert cortex.session_options(merged) is merged  # adding the EP again is a no-op
    x = np.linspace(-2, 2, 4).astype(np.float32)
    for options in (first, second, merged):
        session = ort.InferenceSession(str(model), sess_options=options)
        np.testing.assert_allclose(session.run(None, {"x": x})[0], expected(x), atol=1e-6)
    session = cortex.InferenceSession(str(model), sess_options=user)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], expected(x), atol=1e-6)


def test_an_output_against_the_kernels_own_signature_fails_the_run(tmp_path):
    kernel = build_kernel(tmp_path, "bad_rank.so", defines=("BAD_OUTPUT_RANK",))
    session = cortex.InferenceSession(str(write_model(tmp_path / "model.onnx", "bad_rank.so", sha256_of(kernel))))
    with pytest.raises(Exception, match=r"the kernel asked for output 0 't' as float32 \[4, 1\], against its own "
                                        r"signature float32 \[\?\]"):
        session.run(None, {"x": np.zeros(4, np.float32)})


def test_an_input_against_the_signature_never_reaches_the_kernel(tmp_path):
    # a model whose graph input has no declared shape passes the check at session creation; the run is checked
    model = onnx.load(str(write_model(tmp_path / "model.onnx", "kernel.so", sha256_of(build_kernel(tmp_path)))))
    model.graph.input[0].type.tensor_type.ClearField("shape")
    for value in model.graph.value_info:
        value.type.tensor_type.ClearField("shape")
    model.graph.output[0].type.tensor_type.ClearField("shape")
    path = tmp_path / "unshaped.onnx"
    onnx.save(model, str(path))
    session = cortex.InferenceSession(str(path))
    np.testing.assert_allclose(session.run(None, {"x": np.ones(4, np.float32)})[0], expected(np.ones(4)), atol=1e-6)
    with pytest.raises(Exception, match=r"input 0 'x' is float32 \[2, 2\], but the kernel reads float32 \[\?\]"):
        session.run(None, {"x": np.ones((2, 2), np.float32)})


# A function-local static of an inline function with default visibility: g++ makes it an STB_GNU_UNIQUE symbol, and
# glibc then never unloads the library.
PINNED = r"""
inline int& cortex_test_pinned_count() { static int count = 0; return count; }
extern "C" int cortex_test_pinned(void) { return ++cortex_test_pinned_count(); }
"""


def descriptors_of(path: Path) -> list:
    """This process's descriptors open on the file at `path` (same device and inode)."""
    want = (path.stat().st_dev, path.stat().st_ino)
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            info = os.stat(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if (info.st_dev, info.st_ino) == want:
            found.append(int(name))
    return found


def test_an_unused_kernel_is_unloaded_and_one_glibc_keeps_keeps_its_descriptor(tmp_path):
    x = np.array([1.0, 2.0, -3.0, 0.5], dtype=np.float32)
    plain = build_kernel(tmp_path, "plain.so")
    pinned = build_kernel(tmp_path, "pinned.so", extra_source=PINNED)
    triple = build_kernel(tmp_path, "triple.so", defines=("SCALE=3.0f",))
    models = {k.stem: write_model(tmp_path / f"{k.stem}.onnx", k.name, sha256_of(k)) for k in (plain, pinned, triple)}

    session = cortex.InferenceSession(str(models["plain"]))
    assert len(descriptors_of(plain)) == 1 and session.run(None, {"x": x})
    del session
    gc.collect()
    assert descriptors_of(plain) == []  # unloaded: nothing kept

    session = cortex.InferenceSession(str(models["pinned"]))
    (kept,) = descriptors_of(pinned)
    del session
    gc.collect()
    # glibc keeps it loaded under the name /proc/self/fd/N: the EP keeps N open, so N can never name another file
    assert descriptors_of(pinned) == [kept]
    session = cortex.InferenceSession(str(models["triple"]))
    np.testing.assert_allclose(session.run(None, {"x": x})[0], np.maximum(3.0 * x + BIAS, 0.0), atol=1e-6)
    again = cortex.InferenceSession(str(models["pinned"]))  # loaded again through the kept descriptor
    np.testing.assert_allclose(again.run(None, {"x": x})[0], expected(x), atol=1e-6)
    assert descriptors_of(pinned) == [kept]


# Session A maps kernel.so; kernel.so is then rewritten in place (same inode) with another trusted kernel, and model B
# names it with the new digest. The mapped library is the old content: B is refused, never handed A's kernel. In a
# child, which leaves with os._exit: A's library was overwritten under it and must not run its destructors.
REWRITE_IN_PLACE = r"""
import json, os, sys
import cortex
model_a, model_b, kernel, replacement = sys.argv[1:5]
session = cortex.InferenceSession(model_a)
with open(replacement, "rb") as f:
    data = f.read()
with open(kernel, "r+b") as f:
    f.write(data)
    f.truncate(len(data))
try:
    cortex.InferenceSession(model_b)
    out = {"error": None}
except Exception as e:
    out = {"error": str(e)}
print("RESULT " + json.dumps(out), flush=True)
os._exit(0)
"""


def test_a_kernel_rewritten_in_place_while_loaded_is_refused(tmp_path):
    kernel = build_kernel(tmp_path, "kernel.so")
    replacement = build_kernel(tmp_path, "triple.so", defines=("SCALE=3.0f",))
    model_a = write_model(tmp_path / "a.onnx", "kernel.so", sha256_of(kernel))
    model_b = write_model(tmp_path / "b.onnx", "kernel.so", sha256_of(replacement))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(cortex.__file__).resolve().parent.parent)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    result = subprocess.run([sys.executable, "-c", REWRITE_IN_PLACE, str(model_a), str(model_b), str(kernel),
                             str(replacement)], capture_output=True, text=True, timeout=120, env=env)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, result.stdout[-2000:] + result.stderr[-2000:]
    error = json.loads(lines[-1][len("RESULT "):])["error"]
    assert error and "was rewritten in place while its earlier content is loaded" in error, error

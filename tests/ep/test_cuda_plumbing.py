"""The Cortex EP's GPU plumbing inside ONNX Runtime, on any machine: a stand-in CUDA runtime (host memory behind the
CUDA calls the EP makes, with call counters) is loaded through CORTEX_CUDART, so the factory offers a "GPU" (created
by the EP: ORT's discovery finds none), and a hand-written kernel that says it is a CUDA kernel runs between CPU
nodes. This checks what a real GPU cannot tell us cheaply: device selection, the allocators and their memory infos,
the data transfer ORT copies inputs and outputs with (MemcpyFromHost/MemcpyToHost around the node), the sync stream
handed to the kernel, each input's reported location, IO binding of outputs to the device's memory, and the
messages. Each case runs in a child process (the EP loads its CUDA runtime once per process)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cortex import _paths

REPO = Path(__file__).resolve().parents[2]
BIAS = np.array([0.5, -4.0, 1.0, -0.25], dtype=np.float32)

FAKE_CUDART = r"""
#include <stdlib.h>
#include <string.h>
int calls_malloc, calls_free, calls_malloc_host, calls_memcpy, calls_memcpy_async, calls_stream_create,
    calls_stream_sync, calls_event_record, calls_set_device;
static int current;
int cudaGetDeviceCount(int* n) { *n = 1; return 0; }
int cudaSetDevice(int d) { ++calls_set_device; if (d != 0) return 101; current = d; return 0; }
int cudaGetDevice(int* d) { *d = current; return 0; }
int cudaDeviceGetAttribute(int* v, int attr, int d) { (void)d; *v = attr == 75 ? 9 : 0; return 0; }
int cudaDeviceGetPCIBusId(char* id, int n, int d) { (void)d; strncpy(id, "0000:00:00.0", n); return 0; }
int cudaMalloc(void** p, size_t n) { ++calls_malloc; *p = malloc(n ? n : 1); return *p ? 0 : 2; }
int cudaFree(void* p) { ++calls_free; free(p); return 0; }
int cudaMallocHost(void** p, size_t n) { ++calls_malloc_host; *p = malloc(n ? n : 1); return *p ? 0 : 2; }
int cudaFreeHost(void* p) { free(p); return 0; }
int cudaMemcpy(void* d, const void* s, size_t n, int k) { (void)k; ++calls_memcpy; memmove(d, s, n); return 0; }
int cudaMemcpyAsync(void* d, const void* s, size_t n, int k, void* st) {
  (void)k; (void)st; ++calls_memcpy_async; memmove(d, s, n); return 0; }
int cudaStreamCreateWithFlags(void** s, unsigned f) { (void)f; ++calls_stream_create; *s = malloc(8); return 0; }
int cudaStreamDestroy(void* s) { free(s); return 0; }
int cudaStreamSynchronize(void* s) { (void)s; ++calls_stream_sync; return 0; }
int cudaStreamWaitEvent(void* s, void* e, unsigned f) { (void)s; (void)e; (void)f; return 0; }
int cudaEventCreateWithFlags(void** e, unsigned f) { (void)f; *e = malloc(8); return 0; }
int cudaEventDestroy(void* e) { free(e); return 0; }
int cudaEventRecord(void* e, void* s) { (void)e; (void)s; ++calls_event_record; return 0; }
int cudaEventSynchronize(void* e) { (void)e; return 0; }
const char* cudaGetErrorString(int e) { (void)e; return "stand-in error"; }
const char* cudaGetErrorName(int e) { (void)e; return "cudaErrorStandIn"; }
"""

# y = 2 * x + b on the "device" (host memory behind the stand-in runtime); records what it was given.
CUDA_KERNEL = r"""
#include <stdio.h>
#include <string.h>
#include "kernel_abi.h"
static char seen[512];
static const int64_t kVector[] = {-1};
static const CortexTensorSignature kInputs[] = {{CORTEX_FLOAT, 1, kVector}, {CORTEX_FLOAT, 1, kVector}};
static const CortexTensorSignature kOutputs[] = {{CORTEX_FLOAT, 1, kVector}};
static const CortexSignature kSignature = {2, 1, kInputs, kOutputs};
extern "C" {
const char* seen_by_kernel(void) { return seen; }
const CortexSignature* cortex_kernel_signature(void) { return &kSignature; }
int32_t cortex_kernel_abi_version(void) { return CORTEX_KERNEL_ABI_VERSION; }
const char* cortex_kernel_identity(void) { return "stand_in_cuda_axpy"; }
int32_t cortex_kernel_device(void) { return CORTEX_DEVICE_CUDA; }
int32_t cortex_kernel_run(const CortexTensor* inputs, int32_t num_inputs, CortexAllocOutput alloc_output,
                          void* alloc_context, const CortexExecution* execution, char* error, size_t error_size) {
  if (num_inputs != 2) { snprintf(error, error_size, "expected 2 inputs"); return 1; }
  snprintf(seen, sizeof(seen), "{\"device_type\": %d, \"device_id\": %d, \"stream\": %s, \"inputs\": [%d, %d]}",
           execution->device_type, execution->device_id, execution->stream ? "true" : "false",
           inputs[0].device, inputs[1].device);
  const CortexTensor& x = inputs[0];
  float* y = static_cast<float*>(alloc_output(alloc_context, 0, x.shape, 1));
  if (y == nullptr) { snprintf(error, error_size, "could not allocate the output"); return 1; }
  const float* xs = static_cast<const float*>(x.data);
  const float* bs = static_cast<const float*>(inputs[1].data);
  for (int64_t i = 0; i < x.shape[0]; ++i) y[i] = 2.0f * xs[i] + bs[i];
  return 0;
}
}
"""

CHILD = r"""
import ctypes, json, sys
import numpy as np
import onnxruntime as ort
import cortex
from cortex import session as cs
from tools.peers.cortex_gpu import DeviceOutputs

model, kernel, cudart, case = sys.argv[1:5]
out = {}
devices = cs._ep_devices()
out["devices"] = [{"type": str(d.device.type), "vendor": d.device.vendor_id, "hw": dict(d.device.metadata),
                   "ep": dict(d.ep_metadata)} for d in devices]
if case == "cpu":
    try:
        cortex.InferenceSession(model)
    except Exception as e:
        out["error"] = str(e)
else:
    s = cortex.InferenceSession(model, device="cuda")
    out["providers"] = s.get_providers()
    x = np.array([1.0, 2.0, -3.0, 0.5], dtype=np.float32)
    out["ys"] = [s.run(None, {"x": k * x})[0].tolist() for k in (1.0, -1.0, 3.0)]
    seen = ctypes.CDLL(kernel)
    seen.seen_by_kernel.restype = ctypes.c_char_p
    out["seen"] = json.loads(seen.seen_by_kernel().decode())
    outputs = DeviceOutputs(s)
    out["bound"] = [outputs.prepare({"x": x}), outputs.how]
    if out["bound"][0]:
        out["bound_y"] = outputs.binding.copy_outputs_to_cpu()[0].tolist()
    fake = ctypes.CDLL(cudart)
    out["calls"] = {name: ctypes.c_int.in_dll(fake, "calls_" + name).value for name in
                    ("malloc", "free", "malloc_host", "memcpy", "memcpy_async", "stream_create", "stream_sync",
                     "event_record", "set_device")}
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    """(the stand-in libcudart, a model with a target-cuda node around CPU nodes, its kernel)."""
    d = tmp_path_factory.mktemp("cuda_plumbing")
    (d / "fake_cudart.c").write_text(FAKE_CUDART)
    cudart = d / "libcudart-standin.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", str(d / "fake_cudart.c"), "-o", str(cudart)], check=True)
    (d / "kernels").mkdir()
    (d / "kernels" / "kernel.cc").write_text(CUDA_KERNEL)
    kernel = d / "kernels" / "kernel.so"
    subprocess.run(["g++", "-shared", "-fPIC", "-O1", "-std=c++17", f"-I{_paths.runtime_include_dir()}",
                    str(d / "kernels" / "kernel.cc"), "-o", str(kernel)], check=True)
    digest = hashlib.sha256(kernel.read_bytes()).hexdigest()
    notes = {"kernel_sha256": digest, "target": "cuda", "cuda_arch": "sm_90"}

    def write(name, before: bool):
        """[x -> Mul(x, 1) [CPU] ->] EPContext(x1, b) [the "GPU"] -> t -> Relu [CPU] -> y"""
        first = "x1" if before else "x"
        nodes = [helper.make_node("Mul", ["x", "one"], ["x1"], name="mul")] if before else []
        nodes += [
            helper.make_node("EPContext", [first, "b"], ["t"], name="cortex_recursion_0", domain="com.microsoft",
                             source="CortexExecutionProvider", embed_mode=0, main_context=1,
                             ep_cache_context="kernels/kernel.so", ep_sdk_version="cortex-abi-3",
                             notes=json.dumps(notes)),
            helper.make_node("Relu", ["t"], ["y"], name="relu"),
        ]
        graph = helper.make_graph(
            nodes, name, inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
            outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
            initializer=[numpy_helper.from_array(BIAS, "b")] +
                        ([numpy_helper.from_array(np.ones(1, np.float32), "one")] if before else []),
            value_info=[helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n"]) for n in ("x1", "t")])
        path = d / f"{name}.cortex.onnx"
        onnx.save(helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17),
                                                                        helper.make_opsetid("com.microsoft", 1)]),
                  str(path))
        return path

    return cudart, {"around": write("around", True), "direct": write("direct", False)}, kernel, digest


def _child(stand_in, case: str, extra_env=None, model="around") -> dict:
    cudart, models, kernel, digest = stand_in
    model = models[model]
    env = dict(os.environ, CORTEX_CUDART=str(cudart), CORTEX_TRUSTED_KERNELS=digest,
               PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    env.pop("CORTEX_DISABLE_CUDA", None)
    env.update(extra_env or {})
    result = subprocess.run([sys.executable, "-c", CHILD, str(model), str(kernel), str(cudart), case], env=env,
                            capture_output=True, text=True, timeout=120)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def expected(x):
    return np.maximum(2.0 * x + BIAS, 0.0)


def test_gpu_device_offered_where_discovery_misses_it(stand_in):
    devices = _child(stand_in, "cpu")["devices"]
    gpus = [d for d in devices if "GPU" in d["type"]]
    cpus = [d for d in devices if "CPU" in d["type"]]
    assert len(cpus) == 1 and "cuda_unavailable" not in cpus[0]["ep"]
    assert len(gpus) == 1
    gpu = gpus[0]
    assert gpu["vendor"] == 0x10DE and gpu["ep"]["cuda_device_id"] == "0" and gpu["ep"]["target"] == "cuda"
    assert gpu["ep"]["cuda_compute_capability"] == "9.0"
    # ORT found no NVIDIA GPU here, so the EP made the hardware device (a real GPU machine may list ORT's own)
    assert gpu["hw"].get("discovered_by") in ("CortexExecutionProvider", None)


def test_cuda_node_runs_between_cpu_nodes_on_the_device(stand_in):
    out = _child(stand_in, "cuda")
    assert out["providers"][0] == "CortexExecutionProvider"
    x = np.array([1.0, 2.0, -3.0, 0.5], dtype=np.float32)
    for k, y in zip((1.0, -1.0, 3.0), out["ys"]):
        np.testing.assert_allclose(np.array(y, np.float32), expected(k * x), rtol=0, atol=1e-6)
    # The kernel ran on device 0 with ORT's stream. The initializer is in device memory; the CPU node's output is
    # where ORT left it (ORT 1.31 hands it over in CPU memory, no MemcpyFromHost): the EP reports the real place.
    seen = out["seen"]
    assert (seen["device_type"], seen["device_id"], seen["stream"], seen["inputs"][1]) == (1, 0, True, 1)
    assert seen["inputs"][0] in (0, 1)
    calls = out["calls"]
    assert calls["malloc"] >= 1 and calls["stream_create"] >= 1  # the device allocator and the sync stream
    assert calls["memcpy"] + calls["memcpy_async"] >= 3  # x to the device, b at initialization, t back to the host


def test_graph_input_reaches_the_node_in_device_memory(stand_in):
    out = _child(stand_in, "cuda", model="direct")
    x = np.array([1.0, 2.0, -3.0, 0.5], dtype=np.float32)
    np.testing.assert_allclose(np.array(out["ys"][0], np.float32), expected(x), rtol=0, atol=1e-6)
    assert out["seen"]["inputs"] == [1, 1]  # ORT copies a feed to the node's device (structure arrays too)


def test_outputs_bind_to_the_device_memory(stand_in):
    out = _child(stand_in, "cuda")
    ok, how = out["bound"]
    assert ok, how
    x = np.array([1.0, 2.0, -3.0, 0.5], dtype=np.float32)
    np.testing.assert_allclose(np.array(out["bound_y"], np.float32), expected(x), rtol=0, atol=1e-6)


def test_cpu_session_on_the_cuda_node_says_what_to_do(stand_in):
    error = _child(stand_in, "cpu")["error"]
    assert "target 'cuda'" in error and "device='cuda'" in error


def test_no_gpu_without_the_runtime(stand_in):
    missing = {"CORTEX_CUDART": str(stand_in[0].parent / "missing-libcudart.so")}
    devices = _child(stand_in, "cpu", missing)["devices"]
    assert not [d for d in devices if "GPU" in d["type"]]
    [cpu] = devices
    assert "CORTEX_CUDART" in cpu["ep"]["cuda_unavailable"]

"""CUDA target. Everywhere (CI has nvcc and no GPU): CUDA source is generated for every zoo model in both forms
(Loop, TreeRec) and compiles with nvcc into a kernel library that says it is a CUDA kernel of this ABI; a converted
model records target cuda; a CPU session on it, or device="cuda" without a GPU, fails with a message saying what to
do. On a machine with an NVIDIA GPU (else skipped: "no CUDA GPU"): every zoo model converted for CUDA runs through
cortex.InferenceSession(device="cuda") and matches ONNX Runtime on the original (SST-shaped trees, odd visit orders
that take the sequential fallback, a batch of several structures), and the CUDA kernel agrees with the CPU kernel.

All 16 CUDA compiles run once, in parallel, in a module fixture (about a minute on 2 cores, cached afterwards in
CORTEX_CACHE_DIR); tools/gpu_check.sh runs this file on the GPU machine.
"""
from __future__ import annotations

import ctypes
import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import cortex
from cortex.artifacts import cortex_nodes
from cortex.codegen import toolchain
from cortex.codegen import generator
from cortex.frontend import find_regions
from cortex.passes import optimize
from cortex.examples import structures as st
from cortex.treerec import lower_treerec
from gpu import cortex_gpus, gpu_skip_reason, nvcc_missing
from onnx_ops.zoo import MODELS, batch, structures

HIDDEN = 8
TOL = 1e-4
FORMS = [(name, form) for name in MODELS for form in ("loop", "treerec")]
IDS = [f"{name}-{form}" for name, form in FORMS]
CORTEX_DEVICE_CUDA, ABI_VERSION = 1, 3


def _model(name: str, form: str) -> onnx.ModelProto:
    entry = MODELS[name]
    params = entry.make_params(HIDDEN, seed=1)
    return entry.build_loop(params) if form == "loop" else entry.build_treerec(params)


@lru_cache(maxsize=None)
def _cuda_source(name: str, form: str) -> str:
    [region] = find_regions(_model(name, form))
    assert region.program is not None, region.reason
    program = optimize(region.program)
    # the identity cortex.convert gives a model saved as model.onnx: the GPU tests' conversions reuse these compiles
    return generator("cuda", program).generate(f"{program.name} of model.onnx")


# ---- everywhere: generation, compilation, conversion, messages ---------------------------------------------------


@pytest.mark.parametrize("name,form", FORMS, ids=IDS)
def test_cuda_source_is_generated(name, form):
    source = _cuda_source(name, form)
    assert "__global__" in source and "cortex_kernel_run" in source and "return CORTEX_DEVICE_CUDA" in source
    assert "ws.launch(" in source  # the persistent kernel's cooperative launch (cuda_support.cuh)
    assert "ws.host_copies(" in source  # structure arrays read on the host (one copy, one sync), wherever ORT put them


@pytest.fixture(scope="module")
def compiled():
    """Every form's kernel library, compiled in parallel: {(name, form): path or the exception}."""
    missing = nvcc_missing()
    if missing:
        pytest.skip(f"nvcc not found, CUDA kernels cannot be compiled here: {missing}")
    sources = {key: _cuda_source(*key) for key in FORMS}

    def build(key):
        try:
            return key, toolchain.compile_cuda_kernel(sources[key])
        except Exception as e:  # noqa: BLE001 - reported by the test of that form
            return key, e

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        return dict(pool.map(build, FORMS))


@pytest.mark.parametrize("name,form", FORMS, ids=IDS)
def test_cuda_source_compiles(compiled, name, form):
    result = compiled[(name, form)]
    if isinstance(result, Exception):
        raise result
    # The static CUDA runtime in the library loads without a GPU; its exports say what it is.
    library = ctypes.CDLL(str(result))
    assert library.cortex_kernel_device() == CORTEX_DEVICE_CUDA
    assert library.cortex_kernel_abi_version() == ABI_VERSION
    library.cortex_kernel_signature.restype = ctypes.POINTER(_Signature)
    signature = library.cortex_kernel_signature().contents  # what the EP holds the model to
    tensors = [signature.inputs[i] for i in range(signature.num_inputs)]
    tensors += [signature.outputs[i] for i in range(signature.num_outputs)]
    assert signature.num_inputs >= 1 and signature.num_outputs >= 1
    assert all(t.dtype in (1, 6, 7, 9) and 0 <= t.rank <= 32 for t in tensors)
    assert all(t.dtype == 1 and t.dims[0] == -1 for t in tensors[signature.num_inputs:])  # float32 [rows, ...]


class _TensorSignature(ctypes.Structure):
    _fields_ = [("dtype", ctypes.c_int32), ("rank", ctypes.c_int32), ("dims", ctypes.POINTER(ctypes.c_int64))]


class _Signature(ctypes.Structure):
    _fields_ = [("num_inputs", ctypes.c_int32), ("num_outputs", ctypes.c_int32),
                ("inputs", ctypes.POINTER(_TensorSignature)), ("outputs", ctypes.POINTER(_TensorSignature))]


@pytest.fixture(scope="module")
def cuda_model(tmp_path_factory):
    """The binary TreeLSTM (Loop form) converted with target cuda: (original path, converted path)."""
    missing = nvcc_missing()
    if missing:
        pytest.skip(f"nvcc not found, CUDA kernels cannot be compiled here: {missing}")
    d = tmp_path_factory.mktemp("cuda_model")
    src, out = d / "model.onnx", d / "model.cortex.onnx"
    onnx.save(_model("treelstm", "loop"), str(src))
    report = cortex.convert(str(src), str(out), target="cuda", strict=True)
    assert [r.converted for r in report.regions] == [True]
    return src, out


def test_convert_records_target_cuda(cuda_model):
    _, out = cuda_model
    [node] = cortex_nodes(onnx.load(str(out)))
    assert node.notes["target"] == "cuda"
    assert node.notes["cuda_arch"] == "sm_90"
    library = ctypes.CDLL(str(out.parent / node.cache_context))
    assert library.cortex_kernel_device() == CORTEX_DEVICE_CUDA


def test_cpu_session_on_cuda_model_says_what_to_do(cuda_model):
    _, out = cuda_model
    with pytest.raises(RuntimeError, match=r"target 'cuda'.*device='cuda'"):
        cortex.InferenceSession(str(out))


def test_raw_ort_with_cpu_ep_does_not_claim_cuda_node(cuda_model):
    """Through ONNX Runtime directly, the CPU Cortex EP leaves a CUDA node alone (ORT then names the node, whose
    name says how to run it)."""
    _, out = cuda_model
    with pytest.raises(Exception, match="EPContext"):
        ort.InferenceSession(str(out), sess_options=cortex.session_options())


def test_device_names():
    parse = cortex.session.parse_device
    assert [parse(d) for d in ("cpu", "CUDA", "cuda:1", "gpu")] == ["cpu", "cuda:0", "cuda:1", "cuda:0"]
    with pytest.raises(ValueError, match="expected 'cpu', 'cuda' or 'cuda:N'"):
        parse("tpu")


def test_cpu_and_cuda_options_do_not_mix():
    options = cortex.session_options()
    with pytest.raises(ValueError, match="already run the Cortex EP on 'cpu'"):
        cortex.session_options(options, device="cuda")


def test_cuda_device_without_gpu_says_why():
    if cortex_gpus():
        pytest.skip("this machine has a GPU the Cortex EP offers")
    with pytest.raises(RuntimeError, match="lists no NVIDIA GPU"):
        cortex.session_options(device="cuda")


# ---- with an NVIDIA GPU ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpu():
    reason = gpu_skip_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def converted_for_gpu(gpu, tmp_path_factory):
    """Every form converted for both targets, in parallel: {(name, form): {target: path or the exception}}."""
    jobs = []
    for name, form in FORMS:
        d = tmp_path_factory.mktemp(f"gpu_{name}_{form}")
        onnx.save(_model(name, form), str(d / "model.onnx"))
        jobs += [((name, form), target, d) for target in ("cuda", "cpu")]

    def convert(job):
        key, target, d = job
        out = d / f"model_{target}.cortex.onnx"
        try:
            report = cortex.convert(str(d / "model.onnx"), str(out), target=target, strict=True)
            assert [r.converted for r in report.regions] == [True]
            return key, target, out
        except Exception as e:  # noqa: BLE001 - raised by the tests of that form
            return key, target, e

    converted = {}
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        for key, target, result in pool.map(convert, jobs):
            converted.setdefault(key, {})[target] = result
    return converted


@pytest.fixture(scope="module", params=FORMS, ids=IDS)
def on_gpu(request, converted_for_gpu):
    """(entry, form, ORT on the original, Cortex CUDA session, Cortex CPU session) for one zoo form."""
    name, form = request.param
    sessions = {}
    for target, path in converted_for_gpu[(name, form)].items():
        if isinstance(path, Exception):
            raise path
        sessions[target] = cortex.InferenceSession(str(path), device="cuda" if target == "cuda" else "cpu")
    assert cortex.get_ep_name() in sessions["cuda"].get_providers()
    model = _model(name, form)
    original = ort.InferenceSession((lower_treerec(model) if form == "treerec" else model).SerializeToString(),
                                    providers=["CPUExecutionProvider"])
    return MODELS[name], form, original, sessions["cuda"], sessions["cpu"]


def _feeds(entry, form, structure, session):
    feeds = entry.treerec_feeds(structure) if form == "treerec" else entry.loop_feeds(structure)
    names = {i.name for i in session.get_inputs()}
    return {k: v for k, v in feeds.items() if k in names}


def _max_error(expected, got) -> float:
    assert len(expected) == len(got)
    worst = 0.0
    for e, g in zip(expected, got):
        assert e.shape == g.shape
        worst = max(worst, float(np.abs(e.astype(np.float64) - g).max(initial=0.0)))
    return worst


def test_gpu_matches_original_on_sst_shaped_structures(on_gpu):
    entry, form, original, cuda_session, _ = on_gpu
    items = structures(entry.structure, 12, np.random.default_rng(4), sst_dir=st.sst_dir_default(), vocab=50)
    for item in items[:4]:  # one structure per run
        feeds = _feeds(entry, form, item, cuda_session)
        assert _max_error(original.run(None, feeds), cuda_session.run(None, feeds)) <= TOL
    feeds = _feeds(entry, form, batch(entry.structure, items), cuda_session)  # a batch of several
    assert _max_error(original.run(None, feeds), cuda_session.run(None, feeds)) <= TOL


def test_gpu_wide_levels_match_original(on_gpu):
    """A forest whose levels hold far more rows than a block has warps (16): the products take their rows four at a
    time per warp, the last group holding one to three (61 trees)."""
    entry, form, original, cuda_session, _ = on_gpu
    items = structures(entry.structure, 61, np.random.default_rng(11), sst_dir=st.sst_dir_default(), vocab=50)
    feeds = _feeds(entry, form, batch(entry.structure, items), cuda_session)
    assert _max_error(original.run(None, feeds), cuda_session.run(None, feeds)) <= TOL


@pytest.mark.parametrize("odd", ["reversed", "twice", "all_twice", "subset"])
def test_gpu_odd_orders_match_original(on_gpu, odd):
    entry, form, original, cuda_session, _ = on_gpu
    if form == "treerec":
        pytest.skip("TreeRec has no visit order")
    structure = batch(entry.structure, structures(entry.structure, 3, np.random.default_rng(6), vocab=50))
    feeds = _feeds(entry, form, structure, cuda_session)
    feeds["order"] = st.odd_orders(feeds["order"])[odd]
    assert _max_error(original.run(None, feeds), cuda_session.run(None, feeds)) <= TOL


def test_cuda_kernel_agrees_with_cpu_kernel(on_gpu):
    entry, form, _, cuda_session, cpu_session = on_gpu
    items = structures(entry.structure, 8, np.random.default_rng(7), sst_dir=st.sst_dir_default(), vocab=50)
    feeds = _feeds(entry, form, batch(entry.structure, items), cuda_session)
    assert _max_error(cpu_session.run(None, feeds), cuda_session.run(None, feeds)) <= TOL


def test_gpu_outputs_bound_to_device_memory(gpu, tmp_path):
    """IO binding with the outputs left in the Cortex GPU device's memory, then copied back, matches host outputs."""
    from tools.peers.cortex_gpu import bind_outputs_on_device

    entry = MODELS["treelstm"]
    src, out = tmp_path / "m.onnx", tmp_path / "m.cortex.onnx"
    onnx.save(_model("treelstm", "loop"), str(src))
    cortex.convert(str(src), str(out), target="cuda", strict=True)
    session = cortex.InferenceSession(str(out), device="cuda")
    feeds = _feeds(entry, "loop", batch(entry.structure, structures(entry.structure, 3, np.random.default_rng(8),
                                                                    vocab=50)), session)
    binding, how = bind_outputs_on_device(session, feeds)
    assert binding is not None, how
    session.run_with_iobinding(binding)
    got = binding.copy_outputs_to_cpu()
    assert _max_error(session.run(None, feeds), got) <= TOL


def _error(session, feeds) -> str | None:
    """The kernel's message when the run fails (after ORT's prefix naming the node), else None."""
    try:
        session.run(None, feeds)
    except Exception as e:  # noqa: BLE001 - compared between the devices
        return str(e).split("]): ")[-1]
    return None


def test_gpu_bad_structure_gives_the_cpu_error(on_gpu):
    """Issue 21: a bad structure input on the GPU path fails with the message the CPU path gives (an index out of
    range either way in every integer input; a cycle in a TreeRec)."""
    entry, form, _, cuda_session, cpu_session = on_gpu
    structure = batch(entry.structure, structures(entry.structure, 3, np.random.default_rng(9), vocab=50))
    feeds = _feeds(entry, form, structure, cuda_session)
    bad = []
    for name, value in feeds.items():
        if value.dtype.kind in "iu":
            for wrong in (10 ** 6, -(10 ** 6)):
                changed = value.copy()
                changed.flat[-1] = wrong
                bad.append(dict(feeds, **{name: changed}))
    if form == "treerec" and "children" in feeds:
        children = feeds["children"].copy()
        children[-1, 0] = children.shape[0] - 1  # the last node reads itself
        bad.append(dict(feeds, children=children))
    assert bad
    failed = 0
    for wrong in bad:
        expected = _error(cpu_session, wrong)
        assert _error(cuda_session, wrong) == expected
        failed += expected is not None
    assert failed > 0
    assert _max_error(cpu_session.run(None, feeds), cuda_session.run(None, feeds)) <= TOL  # still fine afterwards

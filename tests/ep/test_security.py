"""Loading a model never runs code nobody chose to trust (docs/reliability.md, "Kernels are code").

Crafted converted models name a kernel library whose constructor writes a marker file: by absolute path, by '..',
through symlinks, and a foreign kernel inside the model's own folder. Each must be refused when the session is
created, with a message that says what to do, and the marker must never appear (the library was never mapped).
Then the ways to trust (store, `cortex trust`, session option, EP option, environment), `cortex rebuild` from the
IR a model carries, and the CPU check before loading.
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import cortex
from cortex import trust
from cortex.artifacts import cortex_nodes
from cortex.codegen import toolchain
from cortex.examples import structures as st
from cortex.examples import treelstm as tl
from test_ep import build_kernel, descriptors_of, expected, sha256_of, write_model

CONSTRUCTOR = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void cortex_test_constructor(void) {
  const char* marker = getenv("CORTEX_TEST_MARKER");
  if (marker != NULL) {
    FILE* f = fopen(marker, "w");
    if (f != NULL) { fputs("constructor ran\n", f); fclose(f); }
  }
}
"""


@pytest.fixture
def marker(tmp_path, monkeypatch):
    path = tmp_path / "MARKER"
    monkeypatch.setenv("CORTEX_TEST_MARKER", str(path))
    return path


def mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def unique() -> str:
    """Source that makes a kernel's bytes (so its sha256) its own: trust given to one test's kernel is not another's."""
    return f'\nextern "C" __attribute__((used)) const char cortex_test_salt[] = "{os.urandom(16).hex()}";\n'


def evil_kernel(directory: Path, name="evil.so", trusted=False) -> Path:
    """A working kernel whose constructor writes the marker: it shows whether the library was ever mapped."""
    return build_kernel(mkdir(directory), name, trusted=trusted, extra_source=CONSTRUCTOR + unique())


def refused(model, match, **kwargs):
    with pytest.raises(Exception, match=match) as error:
        cortex.InferenceSession(str(model), **kwargs)
    return str(error.value)


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "cortex", *map(str, args)], capture_output=True, text=True,
                          env=env)


# ---- crafted models: refused before the library is mapped -----------------------------------------------------


def test_absolute_path_is_refused(tmp_path, marker):
    # trusted and with the right sha256: the path alone refuses it
    kernel = evil_kernel(tmp_path / "outside", trusted=True)
    (tmp_path / "model").mkdir()
    model = write_model(tmp_path / "model" / "m.onnx", str(kernel), sha256_of(kernel))
    message = refused(model, "Cortex kernel refused: .* is an absolute path")
    assert "cortex rebuild" in message
    assert not marker.exists()


@pytest.mark.parametrize("relative", ["../outside/evil.so", "kernels/../../outside/evil.so", "./../outside/evil.so"])
def test_dotdot_is_refused(tmp_path, marker, relative):
    kernel = evil_kernel(tmp_path / "outside", trusted=True)
    (tmp_path / "model" / "kernels").mkdir(parents=True)
    model = write_model(tmp_path / "model" / "m.onnx", relative, sha256_of(kernel))
    refused(model, "Cortex kernel refused: .* climbs out with '..'")
    assert not marker.exists()


def test_symlinked_folder_is_refused(tmp_path, marker):
    kernel = evil_kernel(tmp_path / "outside", trusted=True)
    (tmp_path / "model").mkdir()
    os.symlink(tmp_path / "outside", tmp_path / "model" / "kernels")
    model = write_model(tmp_path / "model" / "m.onnx", "kernels/evil.so", sha256_of(kernel))
    refused(model, r"Cortex kernel refused: .*resolves \(through a symbolic link\) to .*outside/evil.so")
    assert not marker.exists()


def test_symlinked_file_is_refused(tmp_path, marker):
    kernel = evil_kernel(tmp_path / "outside", trusted=True)
    (tmp_path / "model").mkdir()
    os.symlink(kernel, tmp_path / "model" / "k.so")
    model = write_model(tmp_path / "model" / "m.onnx", "k.so", sha256_of(kernel))
    refused(model, "outside the model's folder")
    assert not marker.exists()


def test_symlink_inside_the_folder_is_followed(tmp_path):
    # a link that stays inside the folder is fine: only where the file really is matters
    kernel = build_kernel(mkdir(tmp_path / "model"))
    os.symlink("kernel.so", tmp_path / "model" / "link.so")
    model = write_model(tmp_path / "model" / "m.onnx", "link.so", sha256_of(kernel))
    x = np.arange(4, dtype=np.float32)
    np.testing.assert_allclose(cortex.InferenceSession(str(model)).run(None, {"x": x})[0], expected(x), atol=1e-6)


def test_foreign_kernel_in_the_models_folder_is_refused(tmp_path, marker):
    kernel = evil_kernel(tmp_path / "model" / "m.cortex")
    model = write_model(tmp_path / "model" / "m.onnx", "m.cortex/evil.so", sha256_of(kernel))
    message = refused(model, "Cortex kernel refused: .*evil.so .* is not trusted on this machine")
    assert f"cortex rebuild {model}" in message and f"cortex trust {model}" in message
    assert sha256_of(kernel) in message  # what to put in CORTEX_TRUSTED_KERNELS
    assert not marker.exists()


def test_model_from_bytes_resolves_inside_the_current_directory(tmp_path, marker, monkeypatch):
    kernel = evil_kernel(tmp_path / "outside", trusted=True)
    (tmp_path / "cwd").mkdir()
    model = write_model(tmp_path / "cwd" / "m.onnx", "../outside/evil.so", sha256_of(kernel))
    monkeypatch.chdir(tmp_path / "cwd")
    with pytest.raises(Exception, match="climbs out"):
        cortex.InferenceSession(model.read_bytes())
    assert not marker.exists()


def test_a_named_model_path_keeps_the_folder_policy(tmp_path, marker):
    """cortex.model_path moves the folder a model given as bytes resolves in, never the policy: a kernel path that
    climbs out of that folder is refused and nothing of it runs."""
    kernel = evil_kernel(tmp_path / "outside", trusted=True)
    (tmp_path / "model").mkdir()
    model = write_model(tmp_path / "model" / "m.onnx", "../outside/evil.so", sha256_of(kernel))
    options = cortex.session_options()
    options.add_session_config_entry("cortex.model_path", str(model))
    with pytest.raises(Exception, match="climbs out"):
        cortex.InferenceSession(model.read_bytes(), options)
    assert not marker.exists()


def test_duplicate_notes_members_are_refused(tmp_path, marker):
    kernel = evil_kernel(tmp_path, trusted=True)
    model = onnx.load(str(write_model(tmp_path / "m.onnx", "evil.so", sha256_of(kernel))))
    notes = json.dumps({"kernel_sha256": sha256_of(kernel)})
    for attribute in model.graph.node[0].attribute:
        if attribute.name == "notes":  # two readers must never disagree on which sha256 counts
            attribute.s = (notes[:-1] + ', "kernel_sha256": "' + "0" * 64 + '"}').encode()
    with pytest.raises(Exception, match="appears twice"):
        cortex.InferenceSession(model.SerializeToString())
    assert not marker.exists()


def test_an_unsafe_trust_store_is_ignored(tmp_path, marker, monkeypatch):
    store = tmp_path / "store"
    monkeypatch.setenv("CORTEX_TRUST_DIR", str(store))
    kernel = evil_kernel(tmp_path / "model", trusted=True)  # recorded in the new store
    model = write_model(tmp_path / "model" / "m.onnx", "evil.so", sha256_of(kernel))
    os.chmod(store, 0o777)  # anyone could have added that entry
    refused(model, "is not trusted .*writable by other users")
    assert not marker.exists()
    os.chmod(store, 0o700)
    cortex.InferenceSession(str(model))
    assert marker.exists()  # trusted: now, and only now, its code runs


# ---- explicit trust ---------------------------------------------------------------------------------------------


@pytest.fixture
def foreign_model(tmp_path):
    kernel = build_kernel(mkdir(tmp_path / "model"), trusted=False, extra_source=unique())
    return write_model(tmp_path / "model" / "m.onnx", "kernel.so", sha256_of(kernel)), sha256_of(kernel)


def _runs(session):
    x = np.linspace(-3, 3, 4).astype(np.float32)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], expected(x), atol=1e-6)


def test_cortex_trust_command(foreign_model, tmp_path, monkeypatch):
    model, sha = foreign_model
    monkeypatch.setenv("CORTEX_TRUST_DIR", str(tmp_path / "store"))
    refused(model, "not trusted")
    result = run_cli("trust", model)
    assert result.returncode == 0, result.stderr
    assert sha in result.stdout and (tmp_path / "store" / sha).is_file()
    _runs(cortex.InferenceSession(str(model)))
    assert run_cli("trust", "--remove", model).returncode == 0
    refused(model, "not trusted")


def test_cortex_trust_refuses_what_the_ep_would_refuse(tmp_path):
    kernel = evil_kernel(tmp_path / "outside")
    (tmp_path / "model").mkdir()
    model = write_model(tmp_path / "model" / "m.onnx", "../outside/evil.so", sha256_of(kernel))
    result = run_cli("trust", model)
    assert result.returncode == 1 and "climbs out" in result.stderr and not trust.in_store(sha256_of(kernel))
    swapped = write_model(tmp_path / "outside" / "m.onnx", "evil.so", "0" * 64)
    result = run_cli("trust", swapped)
    assert result.returncode == 1 and "does not match its node" in result.stderr


def test_trust_by_session_option(foreign_model):
    model, sha = foreign_model
    refused(model, "not trusted")
    _runs(cortex.InferenceSession(str(model), trust=[sha]))
    _runs(cortex.InferenceSession(str(model), trust=str(model)))  # a model path: its kernel files
    options = ort.SessionOptions()
    options.add_session_config_entry("cortex.trusted_kernels", sha.upper())
    _runs(ort.InferenceSession(str(model), sess_options=cortex.session_options(options)))


def test_trust_by_ep_option(foreign_model):
    model, sha = foreign_model
    options = ort.SessionOptions()
    devices = [d for d in ort.get_ep_devices() if d.ep_name == cortex.get_ep_name()]
    if not devices:
        cortex.session_options()  # registers the EP library
        devices = [d for d in ort.get_ep_devices() if d.ep_name == cortex.get_ep_name()]
    options.add_provider_for_devices(devices, {"trusted_kernels": sha})
    _runs(ort.InferenceSession(str(model), sess_options=options))


def test_trust_by_environment(foreign_model, monkeypatch):
    model, sha = foreign_model
    monkeypatch.setenv("CORTEX_TRUSTED_KERNELS", f"{'1' * 64}, {sha}")
    _runs(cortex.InferenceSession(str(model)))


def test_malformed_trust_option_is_a_clear_error(foreign_model):
    model, _ = foreign_model
    options = ort.SessionOptions()
    options.add_session_config_entry("cortex.trusted_kernels", "not-a-digest")
    with pytest.raises(Exception, match="cortex.trusted_kernels: 'not-a-digest' is not a sha256 digest"):
        ort.InferenceSession(str(model), sess_options=cortex.session_options(options))


# ---- rebuild from the IR a model carries --------------------------------------------------------------------------

PARAMS = dict(hidden=8, embed_dim=4, vocab=12)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A TreeLSTM converted on "another machine": its kernels are in the session's store; tests that play the
    deployment machine switch to an empty store."""
    d = tmp_path_factory.mktemp("converted")
    onnx.save(tl.build_loop(tl.make_params(**PARAMS, seed=1)), str(d / "tl.onnx"))
    cortex.convert(str(d / "tl.onnx"), str(d / "tl.cortex.onnx"), strict=True)
    return d


def _copy_model(converted: Path, to: Path) -> Path:
    import shutil
    shutil.copytree(converted, to)
    return to / "tl.cortex.onnx"


def _feeds():
    forest = st.batch(st.sst_like_trees(4, np.random.default_rng(5), PARAMS["vocab"]))
    return dict(words=forest.words, left=forest.left, right=forest.right, order=forest.order)


def _check_against_original(session, folder: Path):
    feeds = _feeds()
    want = ort.InferenceSession(str(folder / "tl.onnx")).run(None, feeds)
    got = session.run(None, feeds)
    for w, g in zip(want, got):
        assert np.abs(w - g).max() <= 1e-4


@pytest.fixture
def deployment(tmp_path, monkeypatch):
    """A machine that never compiled the model: an empty trust store."""
    monkeypatch.setenv("CORTEX_TRUST_DIR", str(tmp_path / "deploy-store"))
    return tmp_path


def test_untrusted_model_runs_after_cortex_rebuild(converted, deployment):
    model = _copy_model(converted, deployment / "m")
    refused(model, "not trusted on this machine")
    result = run_cli("rebuild", model)
    assert result.returncode == 0, result.stderr
    assert "compiled here for" in result.stdout
    _check_against_original(cortex.InferenceSession(str(model)), model.parent)


def test_rebuild_never_loads_the_shipped_kernel(converted, deployment, marker):
    # a model whose IR is honest but whose shipped kernel is not: rebuild compiles from the IR and never maps it
    model = _copy_model(converted, deployment / "m")
    proto = onnx.load(str(model))
    node = next(n for n in proto.graph.node if n.op_type == "EPContext")
    context = next(a for a in node.attribute if a.name == "ep_cache_context").s.decode()
    evil = evil_kernel(model.parent / "scratch")
    os.replace(evil, model.parent / context)
    notes_attr = next(a for a in node.attribute if a.name == "notes")
    notes = json.loads(notes_attr.s)
    notes["kernel_sha256"] = sha256_of(model.parent / context)
    notes_attr.s = json.dumps(notes).encode()
    onnx.save(proto, str(model))
    refused(model, "not trusted")
    result = run_cli("rebuild", model, "-o", deployment / "out" / "tl.cortex.onnx")
    assert result.returncode == 0, result.stderr
    (deployment / "out" / "tl.onnx").write_bytes((model.parent / "tl.onnx").read_bytes())
    _check_against_original(cortex.InferenceSession(str(deployment / "out" / "tl.cortex.onnx")), deployment / "out")
    assert not marker.exists()


def test_inference_session_rebuilds_when_asked(converted, deployment, monkeypatch):
    monkeypatch.setenv("CORTEX_CACHE_DIR", str(deployment / "cache"))
    model = _copy_model(converted, deployment / "m")
    before = model.read_bytes()
    refused(model, "not trusted")
    _check_against_original(cortex.InferenceSession(str(model), rebuild=True), model.parent)
    assert model.read_bytes() == before  # the user's model is not changed; the rebuilt copy lives in the cache
    assert list((deployment / "cache" / "rebuilt").glob("*/tl.cortex.onnx"))
    _check_against_original(cortex.InferenceSession(str(model), rebuild=True), model.parent)  # reuses the copy


def test_rebuild_of_a_model_without_ir_says_so(converted, deployment):
    model = _copy_model(converted, deployment / "m")
    proto = onnx.load(str(model))
    notes_attr = next(a for n in proto.graph.node if n.op_type == "EPContext" for a in n.attribute
                      if a.name == "notes")
    notes = json.loads(notes_attr.s)
    del notes["ir"]
    notes_attr.s = json.dumps(notes).encode()
    onnx.save(proto, str(model))
    result = run_cli("rebuild", model)
    assert result.returncode == 1 and "carries no IR" in result.stderr and "Traceback" not in result.stderr


# ---- CPU levels -----------------------------------------------------------------------------------------------------


def _edit_notes(model: Path, **changes) -> Path:
    proto = onnx.load(str(model))
    notes_attr = next(a for n in proto.graph.node if n.op_type == "EPContext" for a in n.attribute
                      if a.name == "notes")
    notes = json.loads(notes_attr.s)
    notes.update(changes)
    notes_attr.s = json.dumps(notes).encode()
    onnx.save(proto, str(model))
    return model


def test_cpu_levels_record_what_the_kernel_needs():
    v2, v3, v4 = (toolchain.cpu_target(level) for level in ("x86-64-v2", "x86-64-v3", "x86-64-v4"))
    assert "sse4.2" in v2.features and "avx2" not in v2.features
    assert {"avx2", "fma", "bmi2"} <= set(v3.features) and "avx512f" not in v3.features
    assert {"avx512f", "avx512bw", "avx512vl"} <= set(v4.features)
    host = toolchain.host_cpu_features()
    best = next(level for level, t in (("x86-64-v4", v4), ("x86-64-v3", v3), ("x86-64-v2", v2), ("x86-64", None))
                if t is None or not t.missing_on(host))
    assert toolchain.default_cpu_level() == best  # the best level this host runs
    source = "int x;"
    assert len({toolchain.source_hash(source, t) for t in (v2, v3, v4)}) == 3  # the level is in the cache key
    with pytest.raises(toolchain.ToolchainError, match="unknown CPU level"):
        toolchain.cpu_target("pentium")


def test_convert_cpu_flag_is_recorded(tmp_path):
    onnx.save(tl.build_loop(tl.make_params(**PARAMS)), str(tmp_path / "tl.onnx"))
    result = subprocess.run([sys.executable, "-m", "cortex.cli", tmp_path / "tl.onnx", "-o", tmp_path / "v2.onnx",
                             "--cpu", "x86-64-v2"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    node = next(n for n in onnx.load(str(tmp_path / "v2.onnx")).graph.node if n.op_type == "EPContext")
    notes = json.loads(next(a.s for a in node.attribute if a.name == "notes"))
    assert notes["cpu_level"] == "x86-64-v2" and notes["cpu_arch"] == "x86_64"
    assert "avx2" not in notes["cpu_features"] and "sse4.2" in notes["cpu_features"]


LACKING = next((f for f in ("amx-tile", "amx-int8", "avx512fp16") if f not in (toolchain.host_cpu_features() or ())),
               None)


@pytest.mark.skipif(LACKING is None, reason="this CPU has every feature the test could ask for")
def test_kernel_for_a_higher_level_is_refused_cleanly(converted, tmp_path, marker):
    model = _copy_model(converted, tmp_path / "m")
    features = json.loads(next(a.s for n in onnx.load(str(model)).graph.node if n.op_type == "EPContext"
                               for a in n.attribute if a.name == "notes"))["cpu_features"]
    _edit_notes(model, cpu_level="x86-64-v9", cpu_features=features + [LACKING])
    # the edited notes still name the same, trusted kernel file: the CPU check alone refuses it
    message = refused(model, f"compiled for x86-64-v9.* needs the CPU feature '{LACKING}', which this CPU lacks")
    assert "cortex rebuild" in message
    _check_against_original(cortex.InferenceSession(str(model), rebuild=True), model.parent)


def test_unknown_cpu_feature_and_other_arch_are_refused(converted, tmp_path):
    model = _copy_model(converted, tmp_path / "m")
    _edit_notes(model, cpu_features=["avx2", "quantum-ops"])
    refused(model, "needs the CPU feature 'quantum-ops', which this Cortex EP does not know")
    _edit_notes(model, cpu_features=[], cpu_arch="riscv64")
    refused(model, "was compiled for riscv64 CPUs; this machine is x86_64")
    _edit_notes(model, cpu_arch="x86_64", cpu_features="avx2")
    refused(model, "cpu_features.* is not an array of strings")


def _other_model(tmp_path: Path) -> Path:
    """A second converted TreeLSTM (another width, so another kernel) in a folder of its own."""
    other = tmp_path / "other"
    other.mkdir()
    onnx.save(tl.build_loop(tl.make_params(hidden=6, embed_dim=4, vocab=PARAMS["vocab"], seed=3)),
              str(other / "tl.onnx"))
    cortex.convert(str(other / "tl.onnx"), str(other / "tl.cortex.onnx"), strict=True)
    return other


def test_each_model_loads_its_own_kernel(converted, tmp_path):
    # kernels are mapped through /proc/self/fd/N, and glibc reuses a loaded library whose name matches: a descriptor
    # number used again must never hand one model another model's kernel (the EP fuzz test found exactly that)
    other = _other_model(tmp_path)
    for folder in (converted, other, converted, other):
        session = cortex.InferenceSession(str(folder / "tl.cortex.onnx"))
        _check_against_original(session, folder)
        del session


# ---- what Cortex reuses as trusted: the kernel cache and rebuilt copies ------------------------------------------


def test_a_kernel_planted_in_a_shared_cache_never_runs(tmp_path, marker, monkeypatch):
    # builds are deterministic, so the cache key of a model's kernel is predictable: plant a kernel under it
    from cortex.codegen import toolchain

    onnx.save(tl.build_loop(tl.make_params(**PARAMS, seed=11)), str(tmp_path / "tl.onnx"))
    monkeypatch.setenv("CORTEX_CACHE_DIR", str(tmp_path / "private"))
    cortex.convert(str(tmp_path / "tl.onnx"), str(tmp_path / "probe" / "tl.cortex.onnx"), strict=True)
    [source] = (tmp_path / "probe" / "tl.cortex").glob("*.cc")
    key = toolchain.source_hash(source.read_text(), toolchain.cpu_target())
    shared = mkdir(tmp_path / "shared")
    os.chmod(shared, 0o777)
    planted = evil_kernel(mkdir(shared / "kernels"), f"kernel_{key[:32]}.so")
    monkeypatch.setenv("CORTEX_CACHE_DIR", str(shared))
    monkeypatch.setattr(toolchain, "_private_fallback", None)
    with pytest.warns(UserWarning, match="does not use the cache"):
        cortex.convert(str(tmp_path / "tl.onnx"), str(tmp_path / "out" / "tl.cortex.onnx"), strict=True)
    [kernel] = (tmp_path / "out" / "tl.cortex").glob("*.so")
    assert sha256_of(kernel) != sha256_of(planted) and not trust.in_store(sha256_of(planted))
    (tmp_path / "out" / "tl.onnx").write_bytes((tmp_path / "tl.onnx").read_bytes())
    _check_against_original(cortex.InferenceSession(str(tmp_path / "out" / "tl.cortex.onnx")), tmp_path / "out")
    assert not marker.exists()


def test_a_rebuilt_copy_is_keyed_by_the_external_data_too(converted, deployment, monkeypatch):
    # rebuild=True caches the rebuilt copy; new weights in the external data file must not get the old copy back
    monkeypatch.setenv("CORTEX_CACHE_DIR", str(deployment / "cache"))
    folder = deployment / "ext"
    model = _copy_model(converted, folder)
    proto = onnx.load(str(model))
    onnx.save(proto, str(model), save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin")
    feeds = _feeds()
    first = cortex.InferenceSession(str(model), rebuild=True).run(None, feeds)
    _check_against_original(cortex.InferenceSession(str(model), rebuild=True), folder)
    # new weights, same .onnx file: every externally stored weight doubled, saved with the same layout
    proto = onnx.load(str(model))
    from onnx import numpy_helper
    for tensor in proto.graph.initializer:
        array = numpy_helper.to_array(tensor)
        if array.dtype == np.float32 and array.nbytes >= 1024:  # onnx's threshold for external data
            tensor.CopyFrom(numpy_helper.from_array(array * 2, tensor.name))
    scratch = mkdir(deployment / "scratch")
    onnx.save(proto, str(scratch / "tl.cortex.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin")
    assert (scratch / "tl.cortex.onnx").read_bytes() == model.read_bytes()  # only the external data differs
    (folder / "weights.bin").write_bytes((scratch / "weights.bin").read_bytes())
    second = cortex.InferenceSession(str(model), rebuild=True).run(None, feeds)
    fresh_cache = deployment / "fresh"
    monkeypatch.setenv("CORTEX_CACHE_DIR", str(fresh_cache))
    want = cortex.InferenceSession(str(model), rebuild=True).run(None, feeds)
    assert any(np.abs(a - b).max() > 1e-3 for a, b in zip(first, second))
    for w, g in zip(want, second):
        np.testing.assert_array_equal(w, g)


def test_trusting_a_model_whose_kernel_is_a_fifo_or_huge_fails_at_once(foreign_model, tmp_path):
    model, _ = foreign_model
    kernel = model.parent / "kernel.so"
    kernel.unlink()
    os.mkfifo(kernel)  # opening it for reading would wait for a writer forever
    script = ("import cortex, sys\n"
              "try:\n    cortex.session_options(trust=sys.argv[1])\n"
              "except Exception as e:\n    print(type(e).__name__, e)\n")
    result = subprocess.run([sys.executable, "-c", script, str(model)], capture_output=True, text=True, timeout=60)
    assert "is not a regular file" in result.stdout, result.stdout + result.stderr
    result = subprocess.run([sys.executable, "-m", "cortex", "trust", str(model)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1 and "is not a regular file" in result.stderr
    kernel.unlink()
    with open(kernel, "wb") as f:
        f.truncate(1 << 40)  # a sparse terabyte: refused by its size, never read
    result = subprocess.run([sys.executable, "-m", "cortex", "trust", str(model)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1 and "is larger than" in result.stderr


def _kernel_file(folder: Path) -> Path:
    return folder / cortex_nodes(onnx.load(str(folder / "tl.cortex.onnx")))[0].cache_context


def test_a_reused_descriptor_number_loads_the_new_kernel(converted, tmp_path):
    # the EP unloads a kernel no session uses and closes its descriptor; here the next kernel is made to get that very
    # number, so it is loaded as the same name /proc/self/fd/N: it must be itself, never the unloaded one
    other = _other_model(tmp_path)
    first, second = _kernel_file(converted), _kernel_file(other)
    gc.collect()
    session = cortex.InferenceSession(str(converted / "tl.cortex.onnx"))
    (number,) = descriptors_of(first)
    _check_against_original(session, converted)
    del session
    gc.collect()
    assert descriptors_of(first) == [], "the unused kernel's descriptor is still open"
    held = []  # every free descriptor below `number`, so the next open gets `number` itself
    try:
        while True:
            fd = os.open(os.devnull, os.O_RDONLY)
            if fd >= number:
                os.close(fd)
                break
            held.append(fd)
        session = cortex.InferenceSession(str(other / "tl.cortex.onnx"))
        assert descriptors_of(second) == [number]
    finally:
        for fd in held:
            os.close(fd)
    _check_against_original(session, other)

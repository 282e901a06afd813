"""Fuzzing the EP with malformed converted models and hostile inputs: every case ends in a clean ORT status or the
original model's result, never a crash (docs/reliability.md, "The EP under malformed models").

The cases run in a worker process (tests/_fuzz_worker.py); when it dies, the case it was running is reported as a
crash and a fresh worker goes on with the next case.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import cortex
from onnx_ops import grids
from cortex.examples import structures as st
from onnx_ops.zoo import MODELS
from cortex.examples import treelstm as tl

WORKER = Path(__file__).resolve().parents[1] / "_fuzz_worker.py"
VOCAB = 12


# ---- base models: converted once, kernels trusted by this machine's (the test session's) store ------------------


def _convert(directory: Path, name: str, model: onnx.ModelProto):
    src, out = directory / f"{name}.onnx", directory / f"{name}.cortex.onnx"
    onnx.save(model, str(src))
    cortex.convert(str(src), str(out), strict=True)
    return src, out


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    dag = MODELS["dagrnn"]
    return {
        "tl": _convert(d, "tl", tl.build_loop(tl.make_params(hidden=8, embed_dim=4, vocab=VOCAB, seed=2))),
        "tlrec": _convert(d, "tlrec", tl.build_treerec(tl.make_params(hidden=8, embed_dim=4, vocab=VOCAB, seed=2))),
        "dag": _convert(d, "dag", dag.build_loop(dag.make_params(8))),
    }


# ---- mutations --------------------------------------------------------------------------------------------------


def _node(model):
    return next(n for n in model.graph.node if n.op_type == "EPContext")


def _attr(model, name):
    return next((a for a in _node(model).attribute if a.name == name), None)


def drop_attr(name):
    def mutate(model):
        node = _node(model)
        kept = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend(kept)
    return mutate


def set_attr(name, value):
    def mutate(model):
        drop_attr(name)(model)
        _node(model).attribute.append(helper.make_attribute(name, value))
    return mutate


def set_raw_notes(text_fn):
    def mutate(model):
        notes = _attr(model, "notes").s.decode()
        set_attr("notes", text_fn(notes))(model)
    return mutate


def edit_notes(**changes):
    def mutate(model):
        notes = json.loads(_attr(model, "notes").s)
        notes.update(changes)
        set_attr("notes", json.dumps(notes))(model)
    return mutate


def sha_upper(model):
    notes = json.loads(_attr(model, "notes").s)
    notes["kernel_sha256"] = notes["kernel_sha256"].upper()
    set_attr("notes", json.dumps(notes))(model)


def set_inputs(fn):
    def mutate(model):
        node = _node(model)
        inputs = fn(list(node.input))
        del node.input[:]
        node.input.extend(inputs)
    return mutate


def set_outputs(fn):
    def mutate(model):
        node = _node(model)
        outputs = fn(list(node.output))
        del node.output[:]
        node.output.extend(outputs)
        if len(outputs) > 2:
            model.graph.value_info.append(helper.make_tensor_value_info(outputs[-1], TensorProto.FLOAT, None))
    return mutate


def replace_initializer(pick, fn):
    """Replaces the converted node's constant initializer number `pick` (in node input order) by fn(array)."""
    def mutate(model):
        inits = {t.name: t for t in model.graph.initializer}
        names = [n for n in _node(model).input if n in inits]
        name = names[pick]
        new = numpy_helper.from_array(np.asarray(fn(numpy_helper.to_array(inits[name]))), name)
        inits[name].CopyFrom(new)
    return mutate


def add_initializer_input(position, name, array):
    """Points input `position` of the node at a new initializer (a trip count of 2**62, say)."""
    def mutate(model):
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(array), name))
        set_inputs(lambda ins: ins[:position] + [name] + ins[position + 1:])(model)
    return mutate


def relax_graph_input(name, elem_type=None):
    """Drops the declared shape (and optionally changes the type) of a graph input, so odd feeds reach the EP."""
    def mutate(model):
        for value in model.graph.input:
            if value.name == name:
                value.type.tensor_type.ClearField("shape")
                if elem_type is not None:
                    value.type.tensor_type.elem_type = elem_type
    return mutate


def chain(*mutations):
    def mutate(model):
        for m in mutations:
            m(model)
    return mutate


# ---- feeds ------------------------------------------------------------------------------------------------------


def tl_feeds(count=3, seed=4, **override):
    forest = st.batch(st.sst_like_trees(count, np.random.default_rng(seed), VOCAB))
    feeds = dict(words=forest.words, left=forest.left, right=forest.right, order=forest.order)
    feeds.update(override)
    return feeds


def tlrec_feeds(count=3, seed=4, **override):
    forest = st.batch(st.sst_like_trees(count, np.random.default_rng(seed), VOCAB))
    feeds = dict(children=np.stack([forest.left, forest.right], axis=1), words=forest.words)
    feeds.update(override)
    return feeds


def dag_feeds(edit=None, rows=4, cols=5):
    g = grids.grid(rows, cols, 64, np.random.default_rng(1))
    feeds = dict(features=g.features.astype(np.float32), up=g.up, left=g.left, order=g.order)
    if edit is not None:
        feeds["features"] = edit(feeds["features"].copy())
    return feeds


def empty_tl():
    z = np.zeros(0, np.int64)
    return dict(words=z, left=z, right=z, order=z)


def all_leaves(n):
    return dict(words=np.arange(n, dtype=np.int64) % VOCAB, left=-np.ones(n, np.int64), right=-np.ones(n, np.int64),
                order=np.arange(n, dtype=np.int64))


def with_nan(features):
    features[1, 3] = np.nan
    features[7, :] = np.nan
    return features


def with_inf(sign):
    def edit(features):
        features[0, 0] = sign * np.inf
        features[5, 10:20] = sign * np.inf
        return features
    return edit


def _trip_position(model):
    return next((i for i, n in enumerate(_node(model).input) if n == "trip_count"), None)


def huge_trip(value):
    """A hostile trip count, where the converted node takes one (a TorchScript Loop's M); the zoo TreeLSTM's count
    is the length of `order`, which the kernel reads itself, so there the node is left as it is."""
    def mutate(model):
        position = _trip_position(model)
        if position is not None:
            add_initializer_input(position, "fuzz_trip", np.array(value, dtype=np.int64))(model)
    return mutate


BIG = 1 << 62
# (class, name, base, mutation, feeds, expectation): "error" = a clean ORT error; "match" = runs and equals the
# original model; "runs" = runs (no original to compare with); "any" = a clean error or the original's result.
CASES = [
    # attributes missing
    ("attribute missing", "no ep_cache_context", "tl", drop_attr("ep_cache_context"), tl_feeds, "error"),
    ("attribute missing", "no notes", "tl", drop_attr("notes"), tl_feeds, "error"),
    ("attribute missing", "no source", "tl", drop_attr("source"), tl_feeds, "error"),
    ("attribute missing", "no embed_mode", "tl", drop_attr("embed_mode"), tl_feeds, "any"),
    ("attribute missing", "no main_context", "tl", drop_attr("main_context"), tl_feeds, "any"),
    ("attribute missing", "no ep_sdk_version", "tl", drop_attr("ep_sdk_version"), tl_feeds, "any"),
    # attributes of the wrong type
    ("attribute of the wrong type", "ep_cache_context int", "tl", set_attr("ep_cache_context", 5), tl_feeds, "error"),
    ("attribute of the wrong type", "ep_cache_context tensor", "tl",
     set_attr("ep_cache_context", numpy_helper.from_array(np.zeros(2, np.float32), "t")), tl_feeds, "error"),
    ("attribute of the wrong type", "notes int", "tl", set_attr("notes", 7), tl_feeds, "error"),
    ("attribute of the wrong type", "notes floats", "tl", set_attr("notes", [1.0, 2.0]), tl_feeds, "error"),
    ("attribute of the wrong type", "embed_mode string", "tl", set_attr("embed_mode", "0"), tl_feeds, "error"),
    ("attribute of the wrong type", "embed_mode 1", "tl", set_attr("embed_mode", 1), tl_feeds, "error"),
    ("attribute of the wrong type", "source int", "tl", set_attr("source", 3), tl_feeds, "error"),
    ("attribute of the wrong type", "kernel_sha256 number", "tl", edit_notes(kernel_sha256=12), tl_feeds, "error"),
    ("attribute of the wrong type", "cpu_features string", "tl", edit_notes(cpu_features="avx2"), tl_feeds, "error"),
    ("attribute of the wrong type", "cpu_features ints", "tl", edit_notes(cpu_features=[1, 2]), tl_feeds, "error"),
    ("attribute of the wrong type", "cpu_arch list", "tl", edit_notes(cpu_arch=["x86_64"]), tl_feeds, "error"),
    # malformed notes
    ("malformed notes", "not JSON", "tl", set_raw_notes(lambda s: s[:-1]), tl_feeds, "error"),
    ("malformed notes", "a JSON array", "tl", set_raw_notes(lambda s: "[" + s + "]"), tl_feeds, "error"),
    ("malformed notes", "empty", "tl", set_attr("notes", ""), tl_feeds, "error"),
    ("malformed notes", "trailing text", "tl", set_raw_notes(lambda s: s + " x"), tl_feeds, "error"),
    ("malformed notes", "nested 100000 deep", "tl",
     set_raw_notes(lambda s: s[:-1] + ', "deep": ' + "[" * 100000 + "]" * 100000 + "}"), tl_feeds, "error"),
    ("malformed notes", "a 1 MB member", "tl", edit_notes(padding="x" * (1 << 20)), tl_feeds, "match"),
    ("malformed notes", "bad escapes", "tl", set_raw_notes(lambda s: s[:-1] + ', "e": "\\u12"}'), tl_feeds, "error"),
    ("malformed notes", "sha256 in capitals", "tl", sha_upper, tl_feeds, "match"),
    ("malformed notes", "sha256 of another file", "tl", edit_notes(kernel_sha256="ab" * 32), tl_feeds, "error"),
    ("malformed notes", "no IR, unknown members", "tl", edit_notes(ir=None, future={"x": [1, {"y": None}]}),
     tl_feeds, "match"),
    # input and output counts that disagree with the kernel
    ("input/output counts", "last input dropped", "tl", set_inputs(lambda ins: ins[:-1]), tl_feeds, "error"),
    ("input/output counts", "first input dropped", "tl", set_inputs(lambda ins: ins[1:]), tl_feeds, "error"),
    ("input/output counts", "extra input", "tl", set_inputs(lambda ins: ins + [ins[-1]]), tl_feeds, "error"),
    ("input/output counts", "no inputs", "tl", set_inputs(lambda ins: []), tl_feeds, "error"),
    ("input/output counts", "constants swapped", "tl", set_inputs(lambda ins: ins[:-4] + ins[-3:-1] + [ins[-4], ins[-1]]),
     tl_feeds, "error"),
    ("input/output counts", "one output", "tl", set_outputs(lambda outs: outs[:1]), tl_feeds, "error"),
    ("input/output counts", "extra output", "tl", set_outputs(lambda outs: outs + ["fuzz_extra"]), tl_feeds, "error"),
    # shapes and dtypes that disagree with the kernel
    ("shapes/dtypes", "packed weight flattened", "tl", replace_initializer(0, lambda a: a.reshape(a.shape[0], -1)),
     tl_feeds, "error"),
    ("shapes/dtypes", "packed weight truncated", "tl", replace_initializer(0, lambda a: a[:1]), tl_feeds, "error"),
    ("shapes/dtypes", "bias too short", "tl", replace_initializer(-1, lambda a: a[:-1]), tl_feeds, "error"),
    ("shapes/dtypes", "constant float64", "tl", replace_initializer(1, lambda a: a.astype(np.float64)), tl_feeds,
     "error"),
    ("shapes/dtypes", "constant int64", "tl", replace_initializer(1, lambda a: a.astype(np.int64)), tl_feeds,
     "error"),
    ("shapes/dtypes", "structure array of rank 2", "tl", relax_graph_input("left"),
     lambda: tl_feeds(left=tl_feeds()["left"].reshape(-1, 1)), "error"),
    ("shapes/dtypes", "structure array int32", "tl", relax_graph_input("order", TensorProto.INT32),
     lambda: tl_feeds(order=tl_feeds()["order"].astype(np.int32)), "error"),
    ("shapes/dtypes", "features 63 wide", "dag", relax_graph_input("features"),
     lambda: dag_feeds(lambda f: f[:, :63].copy()), "error"),
    ("shapes/dtypes", "children 3 wide", "tlrec", relax_graph_input("children"),
     lambda: tlrec_feeds(children=np.zeros((5, 3), np.int64) - 1, words=np.zeros(5, np.int64)), "error"),
    # zero-size and huge dimensions and values
    ("zero-size and huge", "empty forest", "tl", None, empty_tl, "match"),
    ("zero-size and huge", "empty order", "tl", None, lambda: tl_feeds(order=np.zeros(0, np.int64)), "match"),
    ("zero-size and huge", "empty TreeRec", "tlrec", None,
     lambda: dict(children=np.zeros((0, 2), np.int64), words=np.zeros(0, np.int64)), "runs"),
    ("zero-size and huge", "empty grid", "dag", None,
     lambda: dict(features=np.zeros((0, 64), np.float32), up=np.zeros(0, np.int64), left=np.zeros(0, np.int64),
                  order=np.zeros(0, np.int64)), "match"),
    ("zero-size and huge", "zero-size constant", "tl", replace_initializer(-1, lambda a: a[:0]), tl_feeds, "error"),
    ("zero-size and huge", "trip count 2**62", "tl", huge_trip(BIG), tl_feeds, "any"),
    ("zero-size and huge", "trip count -5", "tl", huge_trip(-5), tl_feeds, "any"),
    ("zero-size and huge", "child index 2**62", "tl", None,
     lambda: tl_feeds(left=np.where(tl_feeds()["left"] >= 0, BIG, -1)), "error"),
    ("zero-size and huge", "child index -2**63", "tl", None,
     lambda: tl_feeds(right=np.where(tl_feeds()["right"] >= 0, -(1 << 63), -1)), "error"),
    ("zero-size and huge", "order entry 2**62", "tl", None,
     lambda: tl_feeds(order=np.append(tl_feeds()["order"], BIG)), "error"),
    ("zero-size and huge", "word id 2**62", "tl", None,
     lambda: tl_feeds(words=np.full_like(tl_feeds()["words"], BIG)), "error"),
    ("zero-size and huge", "TreeRec child 2**62", "tlrec", None,
     lambda: tlrec_feeds(children=np.where(tlrec_feeds()["children"] >= 0, BIG, -1)), "error"),
    ("zero-size and huge", "400000 leaves", "tl", None, lambda: all_leaves(400_000), "runs"),
    # NaN and Inf inputs
    ("NaN/Inf inputs", "NaN features", "dag", None, lambda: dag_feeds(with_nan), "match"),
    ("NaN/Inf inputs", "+Inf features", "dag", None, lambda: dag_feeds(with_inf(1)), "match"),
    ("NaN/Inf inputs", "-Inf features", "dag", None, lambda: dag_feeds(with_inf(-1)), "match"),
    ("NaN/Inf inputs", "all NaN", "dag", None, lambda: dag_feeds(lambda f: np.full_like(f, np.nan)), "match"),
    ("NaN/Inf inputs", "NaN weights", "tl", replace_initializer(0, lambda a: np.full_like(a, np.nan)), tl_feeds,
     "runs"),
]


def _write_jobs(bases, directory: Path):
    jobs = []
    for k, (klass, name, base, mutation, feeds, expect) in enumerate(CASES):
        original, converted = bases[base]
        model = converted
        if mutation is not None:
            proto = copy.deepcopy(onnx.load(str(converted)))
            mutation(proto)
            model = converted.parent / f"fuzz_{k}.onnx"  # beside the base: the kernel path resolves the same
            model.write_bytes(proto.SerializeToString())
        feeds_path = directory / f"feeds_{k}.npz"
        np.savez(feeds_path, **feeds())
        jobs.append({"name": name, "model": str(model), "original": str(original), "feeds": str(feeds_path),
                     "expect": expect})
    path = directory / "jobs.jsonl"
    path.write_text("".join(json.dumps(job) + "\n" for job in jobs))
    return path


def _worker_env() -> dict:
    """The worker imports this checkout's cortex (the one under test), not whichever is installed."""
    root = str(Path(cortex.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _run_all(jobs_path: Path, count: int) -> dict:
    """Runs every job, restarting the worker after a crash; returns {index: result}."""
    results, first = {}, 0
    while first < count:
        process = subprocess.run([sys.executable, str(WORKER), str(jobs_path), str(first)], capture_output=True,
                                 text=True, timeout=600, env=_worker_env())
        started = None
        for line in process.stdout.splitlines():
            if not line.startswith("{"):
                continue
            record = json.loads(line)
            if "start" in record:
                started = record["start"]
            elif "done" in record:
                results[record["done"]] = record
        if started is not None and started not in results:  # the worker died inside this case
            results[started] = {"outcome": "crash", "message": f"exit status {process.returncode}: "
                                                               f"{process.stderr[-1500:]}"}
        elif process.returncode != 0:
            raise AssertionError(f"the fuzz worker failed outside a case: {process.stderr[-3000:]}")
        first = max(results) + 1 if results else count
    return results


def test_malformed_models_and_inputs_end_in_a_clean_status(bases, tmp_path):
    results = _run_all(_write_jobs(bases, tmp_path), len(CASES))
    failures, tally = [], Counter()
    for k, (klass, name, _, _, _, expect) in enumerate(CASES):
        result = results.get(k, {"outcome": "missing"})
        outcome, message = result["outcome"], result.get("message", "")
        ok = {
            "error": outcome == "error" and bool(message.strip()),
            "match": outcome == "ran" and result.get("compare") == "match",
            "runs": outcome == "ran",
            "any": (outcome == "error" and bool(message.strip())) or result.get("compare", "match") == "match",
        }[expect] and outcome in ("ran", "error")
        tally[(klass, outcome if outcome != "ran" else "result")] += 1
        if not ok:
            failures.append(f"{klass} / {name}: expected {expect}, got {outcome} {result.get('compare', '')} "
                            f"{message[:400]}")
    print("\nEP fuzz:", len(CASES), "cases;", dict(sorted(tally.items())))
    assert not failures, "\n".join(failures)

"""Data-only edits of an honest converted model must never corrupt memory, hang or leak (docs/reliability.md,
"Kernels are code"; docs/contracts.md, "The converted node").

Every case starts from a TreeLSTM converted here (so its kernel is trusted on this machine) and edits only data: the
types and shapes the graph declares around the Cortex node, what lies at the kernel's path, where the node sits. Each
session is created in a child process, so a crash or a hang counts as a failure of the test, never of pytest:

- outputs re-declared uint8, string, float64, int64, a wrong static width, another rank; an input
  re-declared int32: refused at session creation, naming the node, the value, what the model declares and what the
  kernel needs (the kernel's own signature, kernel ABI 3);
- a FIFO, a 2 GiB sparse file and a directory at the kernel's path: refused at once, before a byte is read;
- a kernel file replaced (same bytes, new inode) and its model reloaded 600 times under a 256-descriptor limit: every
  run succeeds, descriptors and mapped kernels stay bounded (an unused kernel is unloaded);
- the Cortex node moved into an If's branch: refused with one message (Cortex writes its nodes only into the main
  graph).
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import cortex
from cortex.artifacts import cortex_nodes
from cortex.examples import structures as st
from cortex.examples import treelstm as tl

PARAMS = dict(hidden=8, embed_dim=4, vocab=12)
REPO = Path(cortex.__file__).resolve().parent.parent

# Creates a session for a model and runs it once; prints where it stopped and the message.
CHILD = textwrap.dedent(r"""
    import json, sys, time
    import numpy as np
    import cortex
    model, feeds = sys.argv[1:3]
    start = time.monotonic()
    try:
        session = cortex.InferenceSession(model)
    except Exception as e:
        out = {"phase": "create", "message": str(e)}
    else:
        try:
            outputs = session.run(None, dict(np.load(feeds)))
            out = {"phase": "ran", "dtypes": [str(o.dtype) for o in outputs]}
        except Exception as e:
            out = {"phase": "run", "message": str(e)}
    out["seconds"] = time.monotonic() - start
    print("RESULT " + json.dumps(out), flush=True)
""")


def _env() -> dict:
    """Children import this checkout's cortex and use the test session's trust store (conftest)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _child(script: str, *args, timeout: float) -> dict:
    """Runs `script` in a child; its RESULT line, or a failure that says how it died."""
    try:
        process = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                                 timeout=timeout, env=_env())
    except subprocess.TimeoutExpired:
        pytest.fail(f"the child did not finish within {timeout} s (a hang)")
    lines = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
    assert process.returncode == 0 and lines, (f"the child died (exit status {process.returncode}):\n"
                                               f"{process.stdout[-2000:]}{process.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """An honest conversion, its kernel compiled (and so trusted) here; feeds with a long chain of positions."""
    d = tmp_path_factory.mktemp("hostile")
    onnx.save(tl.build_loop(tl.make_params(**PARAMS, seed=1)), str(d / "tl.onnx"))
    cortex.convert(str(d / "tl.onnx"), str(d / "tl.cortex.onnx"), strict=True)
    forest = st.batch(st.sst_like_trees(64, np.random.default_rng(7), PARAMS["vocab"]))
    np.savez(d / "feeds.npz", words=forest.words, left=forest.left, right=forest.right, order=forest.order)
    return d


def _kernel_of(model: onnx.ModelProto) -> str:
    return cortex_nodes(model)[0].cache_context


def _edited(converted: Path, name: str, edit) -> Path:
    """A copy of the converted model beside it (its kernel path resolves the same), edited by edit(model)."""
    model = copy.deepcopy(onnx.load(str(converted / "tl.cortex.onnx")))
    edit(model)
    path = converted / f"{name}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _graph_value(model, name):
    return next(v for v in list(model.graph.output) + list(model.graph.input) + list(model.graph.value_info)
                if v.name == name)


def declare(name, elem_type=None, dims=None):
    """Re-declares graph value `name` (an output or input of the Cortex node): its element type and/or its dims. (An
    output with no type at all never reaches the EP: ONNX Runtime refuses the model, as EPContext infers none.)"""
    def edit(model):
        value = _graph_value(model, name)
        if elem_type is not None:
            value.type.tensor_type.elem_type = elem_type
        if dims is not None:
            value.type.tensor_type.ClearField("shape")
            value.type.tensor_type.shape.dim.extend(
                [onnx.TensorShapeProto.Dimension(dim_param=d) if isinstance(d, str)
                 else onnx.TensorShapeProto.Dimension(dim_value=d) for d in dims])
    return edit


NODE = "Cortex node 'recursion0 [run with cortex.session_options() or cortex.InferenceSession]': "
EDITED = "; the model no longer matches its kernel, so it was edited after conversion: convert the original model again"
TABLE = "writes float32 [?, 8]"  # what the kernel writes: the state tables h and c
# (case, edit, the value as the message names it, what the model now declares, what the kernel needs)
DECLARATIONS = [
    ("output uint8", declare("h", TensorProto.UINT8), "output 0 'h'", "uint8 [?, 8]", TABLE),
    ("output string", declare("c", TensorProto.STRING), "output 1 'c'", "string [?, 8]", TABLE),
    ("output float64", declare("h", TensorProto.DOUBLE), "output 0 'h'", "float64 [?, 8]", TABLE),
    ("output int64", declare("h", TensorProto.INT64), "output 0 'h'", "int64 [?, 8]", TABLE),
    ("output width 7", declare("h", dims=["N", 7]), "output 0 'h'", "float32 [?, 7]", TABLE),
    ("output rank 3", declare("c", dims=["N", 8, 1]), "output 1 'c'", "float32 [?, 8, 1]", TABLE),
    ("output rank 1", declare("h", dims=["N8"]), "output 0 'h'", "float32 [?]", TABLE),
    ("input int32", declare("order", TensorProto.INT32), "input 0 'order'", "int32 [?]", "reads int64 [?]"),
]


@pytest.mark.parametrize("name,edit,value,declared,needed", DECLARATIONS, ids=[case[0] for case in DECLARATIONS])
def test_declarations_that_disagree_with_the_kernel_are_refused(converted, name, edit, value, declared, needed):
    model = _edited(converted, name.replace(" ", "_"), edit)
    result = _child(CHILD, model, converted / "feeds.npz", timeout=120)
    assert result["phase"] == "create", result  # before: it ran, and wrote float32 rows into these buffers
    pattern = re.escape(f"{NODE}{value} is declared {declared}, but its kernel {needed} (") + r"[^)]*\)" + \
        re.escape(EDITED)
    assert re.search(pattern, result["message"]), result["message"]


def test_the_honest_model_still_runs(converted):
    result = _child(CHILD, converted / "tl.cortex.onnx", converted / "feeds.npz", timeout=120)
    assert result == {**result, "phase": "ran", "dtypes": ["float32", "float32"]}


# ---- what lies at the kernel's path --------------------------------------------------------------------------


def _with_kernel_replaced(converted: Path, tmp_path: Path, replace) -> Path:
    """A copy of the model's folder whose kernel file is replaced by replace(path)."""
    folder = tmp_path / "model"
    shutil.copytree(converted, folder)
    kernel = folder / _kernel_of(onnx.load(str(folder / "tl.cortex.onnx")))
    kernel.unlink()
    replace(kernel)
    return folder / "tl.cortex.onnx"


def test_a_fifo_as_the_kernel_is_refused_at_once(converted, tmp_path):
    model = _with_kernel_replaced(converted, tmp_path, os.mkfifo)
    result = _child(CHILD, model, converted / "feeds.npz", timeout=60)  # before: blocked forever in open()
    assert result["phase"] == "create" and result["seconds"] < 20, result
    assert "is a FIFO, not a regular file" in result["message"], result["message"]


def test_a_huge_sparse_kernel_file_is_refused_unread(converted, tmp_path):
    def sparse(path):
        with open(path, "wb") as f:
            f.truncate(2 << 30)  # 2 GiB of holes: before, all of it was hashed
    model = _with_kernel_replaced(converted, tmp_path, sparse)
    result = _child(CHILD, model, converted / "feeds.npz", timeout=120)
    assert result["phase"] == "create", result
    assert f"is {2 << 30} bytes, more than a kernel may be ({512 << 20})" in result["message"], result["message"]


def test_a_directory_as_the_kernel_is_refused(converted, tmp_path):
    model = _with_kernel_replaced(converted, tmp_path, os.mkdir)
    result = _child(CHILD, model, converted / "feeds.npz", timeout=60)
    assert result["phase"] == "create", result
    assert "is a directory, not a regular file" in result["message"], result["message"]


# ---- no descriptor or mapping kept for a kernel no session uses -----------------------------------------------

RELOADS = textwrap.dedent(r"""
    import gc, json, os, resource, sys
    import numpy as np
    import cortex
    model, kernel, feeds, limit, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    feeds = dict(np.load(feeds))
    data = open(kernel, "rb").read()
    name = os.path.basename(kernel)

    def mapped_kernels():
        return len({line.split(None, 5)[5] for line in open("/proc/self/maps") if name in line})

    descriptors, mapped, failures = [], [], []
    for i in range(rounds):
        staged = kernel + ".staged"
        with open(staged, "wb") as f:  # the same bytes through a new inode, as a re-conversion writes it
            f.write(data)
        os.replace(staged, kernel)
        try:
            session = cortex.InferenceSession(model)
            session.run(None, feeds)
        except Exception as e:
            failures.append(f"round {i}: {str(e)[:300]}")
            if len(failures) > 3:
                break
        session = None
        gc.collect()
        descriptors.append(len(os.listdir("/proc/self/fd")))
        mapped.append(mapped_kernels())
    print("RESULT " + json.dumps({"failures": failures, "descriptors": descriptors, "mapped": mapped}), flush=True)
""")


def test_reloading_a_replaced_kernel_leaks_nothing(converted, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(converted, folder)
    model = folder / "tl.cortex.onnx"
    kernel = folder / _kernel_of(onnx.load(str(model)))
    forest = st.batch(st.sst_like_trees(2, np.random.default_rng(3), PARAMS["vocab"]))
    np.savez(tmp_path / "small.npz", words=forest.words, left=forest.left, right=forest.right, order=forest.order)
    result = _child(RELOADS, model, kernel, tmp_path / "small.npz", 256, 600, timeout=540)
    assert not result["failures"], result["failures"]
    descriptors, mapped = result["descriptors"], result["mapped"]
    assert len(descriptors) == 600
    # before: one more descriptor and one more mapped (deleted) kernel per round, until the limit ended the runs
    assert max(descriptors) <= descriptors[0] + 4, descriptors[::50]
    assert max(mapped) <= 1, mapped[::50]


# ---- a Cortex node where Cortex never writes one ----------------------------------------------------------------


def _into_if_branch(model):
    """Moves the Cortex node into the then-branch of an If whose condition is known only at run time (so ONNX Runtime
    cannot inline the branch); the else-branch gives zero tables of the shape the Cortex node reads."""
    graph = model.graph
    node = next(n for n in graph.node if n.op_type == "EPContext")
    rest = [n for n in graph.node if n is not node]
    outputs = {o.name: o for o in graph.output}

    def like(name, new_name):
        value = copy.deepcopy(outputs[name])
        value.name = new_name
        return value

    inner = copy.deepcopy(node)
    del inner.output[:]
    inner.output.extend(["h_then", "c_then"])
    then_branch = helper.make_graph([inner], "then", [], [like("h", "h_then"), like("c", "c_then")])
    else_branch = helper.make_graph(
        [helper.make_node("ConstantOfShape", ["table_shape"], ["h_else"]),
         helper.make_node("ConstantOfShape", ["table_shape"], ["c_else"])],
        "else", [], [like("h", "h_else"), like("c", "c_else")])
    graph.initializer.append(numpy_helper.from_array(np.array(0, np.int64), "hostile_zero"))
    condition = [helper.make_node("Size", ["order"], ["hostile_size"]),
                 helper.make_node("GreaterOrEqual", ["hostile_size", "hostile_zero"], ["hostile_cond"])]
    branch = helper.make_node("If", ["hostile_cond"], [node.output[0], node.output[1]], name="edited_if",
                              then_branch=then_branch, else_branch=else_branch)
    del graph.node[:]
    graph.node.extend(rest + condition + [branch])


def test_a_cortex_node_inside_a_subgraph_is_refused(converted):
    model = _edited(converted, "in_if", _into_if_branch)
    result = _child(CHILD, model, converted / "feeds.npz", timeout=120)
    assert result["phase"] == "create", result
    assert ("Cortex node 'recursion0 [run with cortex.session_options() or cortex.InferenceSession]' is inside the "
            "subgraph of node 'edited_if': Cortex writes its nodes only into the main graph, so this model was "
            "edited; convert the original model again") in result["message"], result["message"]


# ---- the signature is written from typed integers only ---------------------------------------------------------


class _Sneaky(int):
    """An int that prints itself as code."""

    def __repr__(self):
        return '8}; int pwned = system("x"); //'

    __str__ = __repr__

    def __format__(self, spec):
        return repr(self)


def test_integers_reach_generated_code_only_through_the_checked_formatter():
    from cortex.codegen import CodegenError
    from cortex.codegen.cstyle import cint
    assert (cint(8), cint(-1, lo=-1), cint(0, lo=0, hi=32)) == ("8", "-1", "0")
    for bad in (True, np.int64(8), 8.0, "8", _Sneaky(8), None, 1 << 63, -2, 33):
        with pytest.raises(CodegenError):
            cint(bad, lo=-1, hi=32)


def test_a_program_with_a_sneaky_size_is_refused_by_the_generator():
    import dataclasses

    from cortex.codegen import CodegenError, generator
    from cortex.frontend import find_regions
    from cortex.passes import optimize
    (program,) = [optimize(r.program) for r in find_regions(tl.build_loop(tl.make_params(**PARAMS)))]
    assert "cortex_kernel_signature" in generator("cpu", program).generate("k")
    sneaky_table = dataclasses.replace(program, tables=tuple(
        dataclasses.replace(t, inner=(_Sneaky(8),)) for t in program.tables))
    sneaky_rank = dataclasses.replace(program, inputs=tuple(
        dataclasses.replace(d, rank=True) if d.rank == 1 else d for d in program.inputs))
    for evil in (sneaky_table, sneaky_rank):
        with pytest.raises(CodegenError, match="not a valid dimension|not an integer"):
            generator("cpu", evil).generate("k")

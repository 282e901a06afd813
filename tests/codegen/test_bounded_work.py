"""Work on any input is bounded (docs/reliability.md, "Hostile models"): structural comparison is linear, an IR past
the limits of ir/limits.py is refused before code is generated, and the compile budget of the toolchain refuses
what is too large and stops a compiler that runs too long. Crafted IRs are edits of an honest conversion's IR; every
step that could hang runs in a subprocess with a timeout, so a hang fails the test instead of the run.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest

import cortex
from cortex.codegen import toolchain
from cortex.ir import nodes as ir
from cortex.ir.serialize import IRFormatError, from_json, to_json
from cortex.examples import treelstm as tl


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bounded")
    onnx.save(tl.build_loop(tl.make_params(hidden=8, embed_dim=4, vocab=12, seed=3)), str(folder / "tl.onnx"))
    cortex.convert(str(folder / "tl.onnx"), str(folder / "tl.cortex.onnx"), strict=True)
    return folder / "tl.cortex.onnx"


def _notes(model):
    attribute = next(a for n in model.graph.node if n.op_type == "EPContext" for a in n.attribute if a.name == "notes")
    return attribute, json.loads(attribute.s)


def _edit_ir(converted: Path, out: Path, edit) -> Path:
    """A copy of the converted model (and its kernel folder) whose IR document `edit` changed."""
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(converted.parent / "tl.cortex", out / "tl.cortex", dirs_exist_ok=True)
    model = onnx.load(str(converted))
    attribute, notes = _notes(model)
    edit(notes["ir"])
    attribute.s = json.dumps(notes).encode()
    onnx.save(model, str(out / "tl.cortex.onnx"))
    return out / "tl.cortex.onnx"


def _append(document, kind, **fields) -> dict:
    document["nodes"].append({"kind": kind, "fields": fields})
    return {"$node": len(document["nodes"]) - 1}


def _move_root_last(document):
    """Nodes may only refer to earlier ones: put the Program (and the cases it holds) after the new nodes again."""
    nodes = document["nodes"]
    root = document["root"]
    program = nodes[root]
    nodes.append(program)
    nodes[root] = {"kind": "Iter", "fields": {}}  # a harmless placeholder keeps every index valid
    document["root"] = len(nodes) - 1


def _rebuild(model: Path, timeout=300):
    return subprocess.run([sys.executable, "-m", "cortex", "rebuild", str(model)], capture_output=True, text=True,
                          timeout=timeout)


def _chain(document, leaf_ref, depth, kind="Binary"):
    """x = x + x, `depth` times, as distinct entries (an attacker's document shares nothing)."""
    x = leaf_ref
    for _ in range(depth):
        if kind == "Binary":
            x = _append(document, "Binary", op="add", a=x, b=x, width=8)
        else:
            x = _append(document, "IBinary", op="add", a=x, b=x)
    return x


def test_equal_but_distinct_subtrees_compare_in_linear_time():
    script = textwrap.dedent("""
        from cortex.ir import nodes as ir
        def chain(depth, leaf):
            x = leaf
            for _ in range(depth):
                x = ir.Binary("add", x, x, 8)
            return x
        leaf = lambda: ir.ChildState("state0", ir.Load("left", ir.Iter()), False, 8)
        a, b = chain(150, leaf()), chain(150, leaf())
        assert a is not b and a == b and hash(a) == hash(b)
        c = chain(150, ir.ChildState("state0", ir.Load("right", ir.Iter()), False, 8))
        assert a != c
        print("ok")
    """)
    # 2**150 comparisons before; the dataclass `==` took 82 s at 22 levels
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr


def test_rebuild_of_two_equal_chains_finishes(converted, tmp_path):
    def edit(document):
        # case1 writes state1 <- chain(40) + chain(40): 84 nodes, two structurally equal chains
        case = next(e for e in document["nodes"] if e["kind"] == "Case" and e["fields"]["name"] == "case1")
        leaf = next(k for k, e in enumerate(document["nodes"]) if e["kind"] == "ChildState")
        a = _chain(document, {"$node": leaf}, 40)
        b = _chain(document, {"$node": leaf}, 40)
        total = _append(document, "Binary", op="add", a=a, b=b, width=8)
        writes = case["fields"]["writes"]
        case_copy = {"kind": "Case", "fields": dict(case["fields"], writes=[writes[0], ["state1", total]])}
        document["nodes"].append(case_copy)
        program = document["nodes"][document["root"]]
        program["fields"]["cases"] = [c if document["nodes"][c["$node"]] is not case else
                                      {"$node": len(document["nodes"]) - 1} for c in program["fields"]["cases"]]
        _move_root_last(document)

    model = _edit_ir(converted, tmp_path / "chains", edit)
    result = _rebuild(model)  # 19 s at 20 levels and growing 4x a level before; now linear
    assert result.returncode == 0, result.stderr


def test_an_index_expression_that_would_be_written_out_exponentially_is_refused(converted):
    # the case's target row becomes t = t + t, 30 times: 2**30 terms when written out as a tree
    model = onnx.load(str(converted))
    _, notes = _notes(model)
    document = notes["ir"]
    case_index = next(k for k, e in enumerate(document["nodes"]) if e["kind"] == "Case")
    target = document["nodes"][case_index]["fields"]["target"]
    chained = _chain(document, target, 30, kind="IBinary")
    # a fresh case after the chain, and a fresh program after it
    document["nodes"].append({"kind": "Case", "fields": dict(document["nodes"][case_index]["fields"], target=chained)})
    new_case = {"$node": len(document["nodes"]) - 1}
    program = dict(document["nodes"][document["root"]]["fields"])
    program["cases"] = [new_case if c["$node"] == case_index else c for c in program["cases"]]
    document["nodes"].append({"kind": "Program", "fields": program})
    document["root"] = len(document["nodes"]) - 1
    constants = _constants(converted)
    with pytest.raises(IRFormatError, match="written out with more than 4096 terms"):
        from_json(document, constants)


def _constants(converted: Path) -> dict:
    from cortex.rebuild import _constants as read_constants

    model = onnx.load(str(converted))
    node = next(n for n in model.graph.node if n.op_type == "EPContext")
    _, notes = _notes(model)
    return read_constants(model, node, notes, notes["ir"])


def _program(converted: Path) -> ir.Program:
    _, notes = _notes(onnx.load(str(converted)))
    return from_json(notes["ir"], _constants(converted))


def test_too_many_cases_are_refused(converted):
    import dataclasses

    program = _program(converted)
    many = dataclasses.replace(program, cases=program.cases * 200)
    with pytest.raises(IRFormatError, match="at most 256"):
        from_json(json.loads(json.dumps(to_json(many))), program.constants)


def test_a_table_wider_than_the_weights_justify_is_refused(converted):
    import dataclasses

    program = _program(converted)
    wide = dataclasses.replace(program, tables=(dataclasses.replace(program.tables[0], inner=(1 << 26,)),)
                               + program.tables[1:])
    with pytest.raises(IRFormatError, match="weights justify at most 65536"):
        from_json(json.loads(json.dumps(to_json(wide))), program.constants)


def test_nesting_past_the_depth_limit_is_refused_before_anything_recurses(converted):
    program = _program(converted)
    document = json.loads(json.dumps(to_json(program)))
    leaf = next(k for k, e in enumerate(document["nodes"]) if e["kind"] == "ChildState")
    x = {"$node": leaf}
    for _ in range(20000):  # far deeper than Python's recursion limit
        x = _append(document, "Unary", op="neg", x=x, width=8, params=[])
    with pytest.raises(IRFormatError, match="nests more than"):
        from_json(document, program.constants)


# ---- the compile budget -------------------------------------------------------------------------------------------


def test_source_over_the_budget_is_refused_before_compiling(monkeypatch):
    monkeypatch.setattr(toolchain, "MAX_SOURCE_BYTES", 1000)
    monkeypatch.setattr(toolchain, "_run_compiler", lambda *a, **k: pytest.fail("the compiler was started"))
    with pytest.raises(toolchain.ToolchainError, match="over the compile budget of 1000 bytes"):
        toolchain.compile_kernel("int x;\n" * 500)


def test_a_compiler_past_the_time_limit_is_killed_with_its_children(tmp_path, monkeypatch):
    pids = tmp_path / "pids"
    fake = tmp_path / "slow-g++"
    real = toolchain.compiler()
    fake.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        case "$*" in *-dM*|*--version*) exec {real} "$@";; esac
        sleep 600 &
        echo $! >> {pids}
        echo $$ >> {pids}
        sleep 600
    """))
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    monkeypatch.setenv("CORTEX_COMPILE_TIMEOUT", "2")
    monkeypatch.setenv("CORTEX_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(toolchain.ToolchainError, match="took more than 2 s, the compile budget"):
        toolchain.compile_kernel("int cortex_slow_compile;\n")
    for pid in map(int, pids.read_text().split()):  # the compiler and its child are gone (or dead, not yet reaped)
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            continue
        assert state in ("Z", "X"), f"process {pid} still runs (state {state})"


def test_the_cache_of_another_user_or_of_everyone_is_not_used(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # anyone may plant kernel_<key>.so here
    monkeypatch.setenv("CORTEX_CACHE_DIR", str(shared))
    monkeypatch.setattr(toolchain, "_private_fallback", None)
    with pytest.warns(UserWarning, match="does not use the cache .*writable by other users"):
        root = toolchain.cache_root()
    assert root != shared and not os.stat(root).st_mode & 0o077
    os.chmod(shared, 0o700)
    assert toolchain.cache_root() == shared


def test_a_cache_entry_others_could_write_is_compiled_again(tmp_path, monkeypatch):
    monkeypatch.setenv("CORTEX_CACHE_DIR", str(tmp_path / "cache"))
    source = "extern \"C\" int cortex_cache_entry_test() { return 7; }\n"
    first = toolchain.compile_kernel(source)
    assert toolchain.compile_kernel(source) == first
    planted = first.read_bytes()[:-16] + b"\0" * 16
    first.write_bytes(planted)
    os.chmod(first, 0o666)  # as a planted file would be
    again = toolchain.compile_kernel(source)
    assert again == first and again.read_bytes() != planted
    assert not stat.S_IMODE(os.stat(again).st_mode) & 0o022

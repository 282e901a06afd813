"""The IR a converted model carries (cortex.ir.serialize): a faithful round trip for every zoo model, generic over
node kinds, and a loader that builds data only: a malicious IR cannot put code into a rebuilt kernel."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

import cortex
from cortex.codegen import CodegenError, generator
from cortex.codegen.cstyle import cstr as _cstr
from cortex.frontend import find_regions
from cortex.ir import format_program
from cortex.ir import nodes as ir
from cortex.ir import serialize
from cortex.ir.serialize import IRFormatError, from_json, safe_text, to_json
from cortex.passes import optimize
from onnx_ops.zoo import MODELS
from cortex.examples import treelstm as tl


def _programs(model):
    return [optimize(r.program) for r in find_regions(model) if r.program is not None]


def _round_trip(program):
    text = json.dumps(to_json(program))
    return from_json(json.loads(text), program.constants)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("form", ["loop", "treerec"])
def test_round_trip_regenerates_the_same_kernel(name, form):
    zoo = MODELS[name]
    params = zoo.make_params(8)
    model = zoo.build_loop(params) if form == "loop" else zoo.build_treerec(params)
    programs = _programs(model)
    assert programs, f"{name} {form}: no region converted"
    for program in programs:
        loaded = _round_trip(program)
        assert loaded == program and format_program(loaded) == format_program(program)
        assert generator("cpu", loaded).generate("k") == generator("cpu", program).generate("k")


@pytest.fixture(scope="module")
def treelstm_program():
    return _programs(tl.build_loop(tl.make_params(hidden=8, embed_dim=4, vocab=10)))[0]


def test_a_new_node_kind_needs_no_serializer_edit(monkeypatch, treelstm_program):
    # another engineer adds a node kind to cortex/ir/nodes.py: it serializes and loads with no edit here

    @dataclasses.dataclass(frozen=True)
    class Softsign(ir.RExpr):  # annotations written as in nodes.py (declared types), resolved in its namespace
        x: RExpr  # noqa: F821
        width: Dim  # noqa: F821
        scale: float = 1.0
        tag: tuple[Text, ...] = ()  # noqa: F821

    Softsign.__module__ = ir.__name__
    Softsign.__qualname__ = "Softsign"
    monkeypatch.setattr(ir, "Softsign", Softsign, raising=False)
    # the verifier learns a new kind in the same change as nodes.py; the serializer needs no change at all
    monkeypatch.setattr(serialize, "verify", lambda program: program)
    case = treelstm_program.cases[1]
    table, row = case.writes[0]
    new_case = dataclasses.replace(case, writes=((table, Softsign(row, row.width, -0.0, ("a", "b c"))),)
                                   + case.writes[1:])
    program = dataclasses.replace(treelstm_program, cases=(treelstm_program.cases[0], new_case))
    document = to_json(program)
    assert any(entry["kind"] == "Softsign" for entry in document["nodes"])
    loaded = from_json(json.loads(json.dumps(document)), program.constants)
    node = loaded.cases[1].writes[0][1]
    assert isinstance(node, Softsign) and node.tag == ("a", "b c") and node.x == row
    assert np.signbit(node.scale)  # -0.0 survives (identity-keyed node table, hex floats)


def _document(program):
    return json.loads(json.dumps(to_json(program)))


def _rename_input(document, old, new):
    """Renames a runtime input everywhere in the document (declarations and loads), as an attacker would."""
    text = json.dumps(document).replace(json.dumps(old), json.dumps(new))
    return json.loads(text)


INJECTION = 'left\n}  system("touch /tmp/cortex_pwned"); //'


@pytest.mark.parametrize("name", [INJECTION, "left */ int pwned; /*", "left\\", "left\r", "left\u202e",
                                  "left\u2028x"])
def test_unsafe_names_are_refused_at_load_and_by_the_generator(treelstm_program, name):
    assert not safe_text(name)
    document = _rename_input(_document(treelstm_program), "left", name)
    with pytest.raises(IRFormatError, match="cannot be written safely"):
        from_json(document, treelstm_program.constants)
    # the code generator refuses it too, however the IR was made
    evil = dataclasses.replace(treelstm_program, inputs=tuple(
        dataclasses.replace(d, name=name) if d.name == "left" else d for d in treelstm_program.inputs))
    with pytest.raises(CodegenError, match="cannot be written safely"):
        generator("cpu", evil)


def _set_first(document, kind, field, value):
    for entry in document["nodes"]:
        if entry["kind"] == kind:
            entry["fields"][field] = value
            return document
    raise AssertionError(kind)


@pytest.mark.parametrize("edit, message", [
    (lambda d: _set_first(d, "IConst", "value", "1); system(\"id\"); (1"), "is not a valid int"),
    (lambda d: _set_first(d, "IConst", "value", 1 << 70), "is not a valid int"),
    (lambda d: _set_first(d, "TableDecl", "name", "t; system(\"id\")"), "not an identifier"),
    (lambda d: _set_first(d, "Program", "name", "r\nx"), "not an identifier"),
    (lambda d: _set_first(d, "TableDecl", "inner", [-8]), "-8 is not a valid dimension"),
    (lambda d: _set_first(d, "Unary", "op", "system"), "'system' is not one of"),
    (lambda d: _set_first(d, "Binary", "a", {"$node": 10 ** 6}), "does not name an earlier node"),
    (lambda d: _set_first(d, "Binary", "a", {"$node": 0}), "is not a RExpr"),
    (lambda d: d["nodes"].append({"kind": "Scalar", "fields": {"value": {"$float": "__import__('os')"}}}) or d,
     "bad float"),
    (lambda d: d["nodes"].append({"kind": "os.system", "fields": {}}) or d, "not an IR class"),
    (lambda d: d["nodes"].append({"kind": "Iter", "fields": {"__class__": 1}}) or d, "has no field"),
    (lambda d: d["nodes"].append({"kind": "Program", "fields": {}}) or d, "lacks field"),
    (lambda d: dict(d, format="pickle"), "not a Cortex IR document"),
    (lambda d: dict(d, root=0), "root is not a Program"),
])
def test_malformed_ir_is_refused(treelstm_program, edit, message):
    document = _document(treelstm_program)
    with pytest.raises(IRFormatError, match=message):
        from_json(edit(document), treelstm_program.constants)


def test_constants_must_match_the_ir(treelstm_program):
    document = _document(treelstm_program)
    constants = dict(treelstm_program.constants)
    name = next(iter(constants))
    with pytest.raises(IRFormatError, match="constants do not match"):
        from_json(document, {k: v for k, v in constants.items() if k != name})
    with pytest.raises(IRFormatError, match=f"constant '{name}' is float32"):
        from_json(document, {**constants, name: np.zeros((1, 1), np.float32)})


def test_string_literals_cannot_be_broken(tmp_path):
    # every string a kernel prints comes through _cstr: compile them and read them back byte for byte
    nasty = ['a"b', "back\\slash", "new\nline", "??/ trigraph", "tab\t\x7f\x01", "end\\", "\u00e9\u202e"]
    source = "#include <cstdio>\nint main() {\n" + "".join(
        f'  std::fputs("{_cstr(s)}", stdout); std::fputs("\\n--\\n", stdout);\n' for s in nasty) + "}\n"
    (tmp_path / "t.cc").write_text(source)
    subprocess.run(["g++", "-std=c++17", str(tmp_path / "t.cc"), "-o", str(tmp_path / "t")], check=True)
    out = subprocess.run([str(tmp_path / "t")], capture_output=True).stdout.decode()
    assert out.split("\n--\n")[:-1] == nasty


def test_malicious_ir_in_a_model_cannot_reach_a_rebuilt_kernel(tmp_path):
    onnx.save(tl.build_loop(tl.make_params(hidden=8, embed_dim=4, vocab=10)), str(tmp_path / "tl.onnx"))
    out = tmp_path / "tl.cortex.onnx"
    cortex.convert(str(tmp_path / "tl.onnx"), str(out), strict=True)
    model = onnx.load(str(out))
    node = next(n for n in model.graph.node if n.op_type == "EPContext")
    notes_attr = next(a for a in node.attribute if a.name == "notes")
    notes = json.loads(notes_attr.s)
    # the attacker renames an input to carry C++, in the IR and in the graph alike
    notes["ir"] = _rename_input(notes["ir"], "left", INJECTION)
    notes_attr.s = json.dumps(notes).encode()
    onnx.save(model, str(out))
    kernels_before = sorted((tmp_path / "tl.cortex").iterdir())
    result = subprocess.run([sys.executable, "-m", "cortex", "rebuild", str(out)], capture_output=True, text=True)
    assert result.returncode == 1
    assert "cannot be written safely into generated code" in result.stderr and "Traceback" not in result.stderr
    assert sorted((tmp_path / "tl.cortex").iterdir()) == kernels_before  # nothing generated, nothing compiled

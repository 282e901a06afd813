"""The IR a converted model carries is typed data (docs/reliability.md, "Hostile models"): a type-level fuzzer.

Real IRs (the zoo's models, Loop and TreeRec forms, as serialized by cortex-convert) have every field of every node
mutated: values of the wrong type (strings, C++ text, floats, bools, nesting, objects), out-of-range sizes, unknown
enum values, names that are not identifiers. Each mutated document must be refused by the loader with
IRFormatError, and no compiler may ever be started. A property test draws random mutations too; the end-to-end
attack of the issue (C++ in `InputDecl.inner`, through `cortex rebuild`) is refused in one line with no kernel file
written and nothing of the attacker's run.
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys
import typing

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from cortex.codegen import toolchain
from cortex.frontend import find_regions
from cortex.ir import nodes as ir
from cortex.ir import schema
from cortex.ir.serialize import IRFormatError, from_json, to_json
from cortex.passes import optimize
import ir_programs
from onnx_ops.zoo import MODELS

INJECTION = '0}; std::FILE* f = std::fopen("/tmp/cortex_fuzz_marker","w"); std::fclose(f); {0'


def _program(name, form):
    entry = MODELS[name]
    params = entry.make_params(8, seed=1)
    model = entry.build_loop(params) if form == "loop" else entry.build_treerec(params)
    [region] = find_regions(model)
    return optimize(region.program)


PROGRAMS = {f"{name}-{form}": _program(name, form) for name in ("treelstm", "dagrnn", "mvrnn", "childsum")
            for form in ("loop", "treerec")}
PROGRAMS.update({"child-sets": optimize(ir_programs.child_sum()), "edge-list": ir_programs.child_sum(
    encoding="edge_index"), "chain": optimize(ir_programs.chain()), "thin-stack": optimize(ir_programs.thin_stack())})


@pytest.fixture(autouse=True)
def no_compiler(monkeypatch):
    """Whatever the loader accepts or refuses, no test here may start a compiler."""
    def refuse(*args, **kwargs):
        raise AssertionError("a compiler was started on a fuzzed IR")
    monkeypatch.setattr(toolchain, "_run_compiler", refuse)


def _wrong_values(annotation) -> list:
    """JSON values that are not of the declared type."""
    inner = schema.optional_of(annotation)
    base = inner if inner is not None else annotation
    origin, args = typing.get_origin(base), typing.get_args(base)
    code, nested = INJECTION, [[[[1]]]]
    if origin is tuple:
        return [code, 7, {"$float": "0x1p+0"}, [code], [[code]], {"$node": 0}, [-1] * 3, nested]
    if origin is typing.Literal:
        return [code, "", 1, True, [args[0]], "system"]
    if origin is typing.Annotated and args[1] == "constants":
        return [code, {"$arrays": {code: {"shape": [1], "dtype": "float32"}}}, [], {"$arrays": []}]
    if origin is typing.Annotated:
        base, marker = args
    else:
        marker = None
    if base is int:
        wrong = [code, "1", 1.5, {"$float": "0x1p+0"}, True, [1], nested, 1 << 64, None if inner is None else code]
        if marker == ir.DIM:
            wrong += [-1, 1 << 31, -(1 << 40)]
        return wrong
    if base is str:
        wrong = [7, True, [code], nested, {"$node": 0}, "a\nb", "x */ y", "a\\", "\u202e", "z" * 2000]
        if marker == ir.IDENT:
            wrong += [code, "1abc", "", "a-b", "a b"]
        return wrong
    if base is float:
        return [code, "1.0", {"$float": code}, {"$float": "nan();"}, [1.0], True, nested]
    if base is bool:
        return [code, 1, 0, "true", [True], nested]
    if isinstance(base, type):  # a node reference
        return [code, 0, {"$node": code}, {"$node": -1}, {"$node": 10 ** 9}, {"$node": 1.0}, [{"$node": 0}], nested]
    raise AssertionError(f"no mutations for {annotation!r}")


def _mutations(document):
    """(where, mutated document) for every field of every node and every wrong value of its type."""
    classes = schema.ir_classes()
    for i, entry in enumerate(document["nodes"]):
        cls = classes[entry["kind"]]
        for name, annotation in schema.field_types(cls):
            for value in _wrong_values(annotation):
                if value is None:
                    continue
                mutated = copy.deepcopy(document)
                mutated["nodes"][i]["fields"][name] = value
                yield f"nodes[{i}] {entry['kind']}.{name} = {str(value)[:40]!r}", mutated


@pytest.mark.parametrize("key", sorted(PROGRAMS))
def test_every_field_refuses_every_wrong_type(key):
    program = PROGRAMS[key]
    document = json.loads(json.dumps(to_json(program)))
    count = 0
    for where, mutated in _mutations(document):
        count += 1
        try:
            from_json(mutated, program.constants)
        except IRFormatError:
            continue
        pytest.fail(f"accepted: {where}")
    assert count > 500  # every field of a real IR was mutated, many times


def test_every_ir_class_declares_checkable_types():
    # a new node kind cannot slip in an untyped field: the loader would not know how to check it
    for cls in schema.ir_classes().values():
        for name, annotation in schema.field_types(cls):
            assert _wrong_values(annotation), (cls.__name__, name)


@pytest.mark.parametrize("key", sorted(PROGRAMS))
def test_honest_irs_round_trip(key):
    program = PROGRAMS[key]
    loaded = from_json(json.loads(json.dumps(to_json(program))), program.constants)
    assert loaded == program


_JSON = hs.recursive(hs.none() | hs.booleans() | hs.integers(-(1 << 70), 1 << 70) | hs.text(max_size=12)
                     | hs.sampled_from([INJECTION, "*/", "\\", "\n"]),
                     lambda children: hs.lists(children, max_size=3) | hs.dictionaries(
                         hs.sampled_from(["$node", "$float", "$arrays", "x"]), children, max_size=2), max_leaves=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=hs.data())
def test_random_mutations_are_refused_or_harmless(data):
    key = data.draw(hs.sampled_from(sorted(PROGRAMS)))
    program = PROGRAMS[key]
    document = json.loads(json.dumps(to_json(program)))
    i = data.draw(hs.integers(0, len(document["nodes"]) - 1))
    fields = document["nodes"][i]["fields"]
    if not fields:
        return
    name = data.draw(hs.sampled_from(sorted(fields)))
    fields[name] = data.draw(_JSON)
    try:
        loaded = from_json(document, program.constants)
    except IRFormatError:
        return
    # accepted: then it is a well-typed program, and no string of it can end a comment or a literal
    schema.check_program(loaded)
    assert INJECTION not in repr(loaded)


# ---- end to end: the attack through `cortex rebuild` ------------------------------------------------------


def test_code_in_the_ir_is_refused_by_rebuild(tmp_path, monkeypatch):
    import cortex
    from cortex.examples import treelstm as tl

    monkeypatch.undo()  # this test runs the real toolchain in a subprocess
    marker = tmp_path / "MARKER"
    onnx.save(tl.build_loop(tl.make_params(hidden=8, embed_dim=4, vocab=12, seed=2)), str(tmp_path / "tl.onnx"))
    cortex.convert(str(tmp_path / "tl.onnx"), str(tmp_path / "tl.cortex.onnx"), strict=True)
    model = onnx.load(str(tmp_path / "tl.cortex.onnx"))
    notes_attr = next(a for n in model.graph.node if n.op_type == "EPContext" for a in n.attribute
                      if a.name == "notes")
    notes = json.loads(notes_attr.s)
    decl = next(e for e in notes["ir"]["nodes"] if e["kind"] == "InputDecl")
    attacks = [INJECTION.replace("/tmp/cortex_fuzz_marker", str(marker)), 1.5, [[1]], -3, "8"]
    kernels_before = sorted((tmp_path / "tl.cortex").iterdir())
    for value in attacks:
        decl["fields"]["inner"] = [value]
        notes_attr.s = json.dumps(notes).encode()
        onnx.save(model, str(tmp_path / "tl.cortex.onnx"))
        result = subprocess.run([sys.executable, "-m", "cortex", "rebuild", str(tmp_path / "tl.cortex.onnx")],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 1, result.stdout
        assert "the IR is invalid" in result.stderr and "not a valid dimension" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert sorted((tmp_path / "tl.cortex").iterdir()) == kernels_before  # no kernel was written
    assert not marker.exists()


def test_a_program_built_in_process_is_checked_before_code_generation():
    # the code generator checks types too: IR from any source, not only the loader
    from cortex.codegen import generator
    from cortex.codegen.plan import CodegenError

    program = PROGRAMS["treelstm-loop"]
    decl = program.inputs[0]
    evil = ir.InputDecl(decl.name, decl.kind, decl.dtype, 2, (INJECTION,))
    with pytest.raises(CodegenError, match="not a valid dimension"):
        generator("cpu", ir.Program(program.name, program.mode, (evil,) + program.inputs[1:], program.tables,
                                program.cases, program.constants, program.trip, program.rows_from))
    np.testing.assert_equal(len(program.inputs), len(PROGRAMS["treelstm-loop"].inputs))

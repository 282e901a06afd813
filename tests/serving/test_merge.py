"""Merging single-tree requests into one forest (cortex/serving): the proof from the IR, both ways (per-tree
recursions merge, recursions and heads that mix trees are refused with the reason), and exactness: a merged run
gives every request the bits of its separate run, over the zoo (Loop and TreeRec forms), SST trees and random
trees, and the real exporters' forms."""
from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import cortex
from cortex.artifacts import cortex_nodes
from cortex.examples import structures as st
from cortex.examples import treelstm
from cortex.frontend import find_regions
from cortex.ir import nodes as ir
from cortex.passes import optimize
from cortex.serving import check_request, plan_for
from cortex.serving.forest import ForestStats, PinnedOutputs, merge_session, run_forest, tail_sessions
from cortex.serving.kernel import NotMergeable, analyze
from onnx_ops.zoo import MODELS, MVRNN_VOCAB, VOCAB, structures
from serving_models import whole_tree_input

HIDDEN = 8
SST = st.sst_dir_default()


# ---- helpers -----------------------------------------------------------------------------------------------------

def _program(model: onnx.ModelProto) -> ir.Program:
    (region,) = [r for r in find_regions(model) if r.program is not None]
    return optimize(region.program)


@pytest.fixture(scope="module")
def params():
    return treelstm.make_params(hidden=HIDDEN, embed_dim=6, vocab=50)


@pytest.fixture(scope="module")
def loop_program(params):
    return _program(treelstm.build_loop(params))


@pytest.fixture(scope="module")
def treerec_program(params):
    from cortex.treerec.portable import raise_treerec
    model, _ = raise_treerec(treelstm.build_treerec(params))
    return _program(model)


def _rewrite(program: ir.Program, mapping: dict, trip=None) -> ir.Program:
    """The program with index expressions replaced (every occurrence, all sorts)."""
    rewrite = ir.transform(lambda e: mapping.get(e, e))
    cases = tuple(dataclasses.replace(c, predicate=rewrite(c.predicate),
                                      target=None if c.target is None else rewrite(c.target),
                                      writes=tuple((t, rewrite(x)) for t, x in c.writes)) for c in program.cases)
    return dataclasses.replace(program, cases=cases, trip=trip if trip is not None else program.trip)


def _add_term(program: ir.Program, case_index: int, term: ir.RExpr) -> ir.Program:
    """The program with `term` (width 1 or the table's) added to the first write of one case."""
    cases = list(program.cases)
    case = cases[case_index]
    (table, expr), *rest = case.writes
    cases[case_index] = dataclasses.replace(case, writes=((table, ir.binary("add", expr, term)), *rest))
    return dataclasses.replace(program, cases=tuple(cases))


def _with_predicate(program: ir.Program, case_index: int, extra: ir.BExpr) -> ir.Program:
    cases = list(program.cases)
    cases[case_index] = dataclasses.replace(cases[case_index], predicate=ir.BAnd(cases[case_index].predicate, extra))
    return dataclasses.replace(program, cases=tuple(cases))


def _refused(program) -> str:
    with pytest.raises(NotMergeable) as info:
        analyze(program)
    return str(info.value)


NODE = ir.Load("order", ir.Iter())  # the node a Loop position visits
LEFT = ir.Load("left", NODE)


# ---- the proof, on the IR ----------------------------------------------------------------------------------------

def test_loop_treelstm_is_per_tree(loop_program):
    merge_ = analyze(loop_program)
    roles = {name: (r.rows, r.node_ids) for name, r in merge_.inputs.items()}
    assert roles["order"] == ("positions", True)  # rows per position, values node ids
    assert roles["left"] == ("nodes", True) and roles["right"] == ("nodes", True)
    assert roles["words"] == ("nodes", False)  # token ids: data, concatenated as they are
    assert merge_.outputs == {"h": "nodes", "c": "nodes"} and merge_.positions == "positions"


def test_treerec_treelstm_is_per_tree(treerec_program):
    merge_ = analyze(treerec_program)
    assert merge_.inputs["children"].node_ids and merge_.inputs["children"].rows == "nodes"
    assert not merge_.inputs["words"].node_ids
    assert merge_.positions == "nodes"


def test_length_inside_the_recursion_is_refused(loop_program):
    program = _add_term(loop_program, 1, ir.IndexValue(ir.Length("words")))
    assert "len(words) is used inside the recursion" in _refused(program)


def test_node_id_used_as_a_value_is_refused(loop_program):
    assert "used as a value" in _refused(_add_term(loop_program, 1, ir.IndexValue(LEFT)))


def test_node_id_picking_a_constant_row_is_refused(loop_program):
    const = next(c for c, v in loop_program.constants.items() if v.ndim == 2 and v.shape[1] == HIDDEN)
    program = _add_term(loop_program, 1, ir.ConstRow(const, NODE, HIDDEN))
    assert f"constant {const} is read at row order[p]" in _refused(program)


def test_constant_node_id_is_refused(loop_program):
    program = _add_term(loop_program, 1, ir.ChildState("state0", ir.IConst(0), False, HIDDEN))
    assert "read at row 0, which is not a node id" in _refused(program)


def test_node_id_arithmetic_is_refused(loop_program):
    shifted = ir.IBinary("add", LEFT, ir.IConst(1))
    program = _add_term(loop_program, 1, ir.ChildState("state0", shifted, False, HIDDEN))
    assert "computes with a node id" in _refused(program)


@pytest.mark.parametrize("test,ok", [(ir.Compare("ne", LEFT, ir.IConst(-1)), True),
                                     (ir.Compare("ge", LEFT, ir.IConst(0)), True),
                                     (ir.Compare("lt", ir.IConst(0), LEFT), False),  # 0 < left: left == 0 differs
                                     (ir.Compare("ne", LEFT, ir.IConst(5)), False),
                                     (ir.Compare("eq", ir.Iter(), ir.IConst(0)), False),
                                     (ir.Compare("lt", LEFT, ir.Load("right", NODE)), True),
                                     (ir.Compare("lt", LEFT, ir.Load("words", NODE)), False)])
def test_tests_that_shifting_may_change_are_refused(loop_program, test, ok):
    program = _with_predicate(loop_program, 1, test)
    if ok:
        analyze(program)
    else:
        assert "may change" in _refused(program) or "computes with" in _refused(program)


def test_a_visit_walked_from_its_end_merges_backward(loop_program):
    """order[len(order) - 1 - p], in any arrangement of the sum: merged with the positions laid out last request
    first (merge.py); read at p as well, or with another offset, it is refused."""
    count = ir.Length("order")
    for backwards in (ir.IBinary("sub", ir.IBinary("sub", count, ir.IConst(1)), ir.Iter()),
                      ir.IBinary("add", ir.IBinary("add", ir.IBinary("mul", ir.IConst(-1), ir.Iter()), count),
                                 ir.IConst(-1))):
        merge_ = analyze(_rewrite(loop_program, {NODE: ir.Load("order", backwards)}))
        assert merge_.backward and merge_.inputs["order"].rows == "positions"
        assert merge_.to_notes()["backward"] is True
    # the order also read at p itself: merged, the two reads would belong to different requests
    both = _add_term(_rewrite(loop_program, {NODE: ir.Load("order", backwards)}), 1,
                     ir.ChildState("state0", ir.Load("order", ir.Iter()), False, HIDDEN))
    assert "at the position p itself" in _refused(both)
    off_by_one = ir.IBinary("sub", count, ir.Iter())  # len - p: past the order at p = 0
    reason = _refused(_rewrite(loop_program, {NODE: ir.Load("order", off_by_one)}))
    assert "len(order) is used inside the recursion" in reason


def test_a_guarded_walk_from_the_end_reads_each_requests_own_positions(loop_program):
    """order[L - 1 - i] as dynamo exports a reverse loop: inside a guard that it lies in range (a test that holds at
    every position, merged or not). The bounds check takes the guarded read as the walk itself, the request's own
    position, as it takes the bare one: a forest of valid trees has nothing outside (it used to send every request
    alone)."""
    from cortex.serving.indexeval import BoundsCheck

    count = ir.Length("order")
    back = ir.IBinary("sub", ir.IBinary("sub", count, ir.IConst(1)), ir.Iter())
    in_range = ir.BAnd(ir.Compare("ge", back, ir.IConst(0)),
                       ir.Compare("le", ir.IBinary("sub", count, ir.Iter()), count))
    trees = [t.arrays() for t in st.sst_like_trees(4, np.random.default_rng(2), 50)]
    nodes = np.array([len(t["words"]) for t in trees], dtype=np.int64)
    base = np.cumsum(nodes) - nodes
    arrays = {name: np.concatenate([np.where(t[name] >= 0, t[name] + b, t[name]) for t, b in zip(trees, base)])
              for name in ("left", "right")}
    arrays["words"] = np.concatenate([t["words"] for t in trees])
    arrays["order"] = np.concatenate([t["order"] + b for t, b in zip(trees[::-1], base[::-1])])  # last first
    for index in (back, ir.Guard(in_range, back, "order index out of range")):
        program = _rewrite(loop_program, {NODE: ir.Load("order", index)})
        assert analyze(program).backward
        check = BoundsCheck(program)
        assert check(arrays, nodes, nodes, False) == set()
        wrong = dict(arrays, right=arrays["right"].copy())
        wrong["right"][np.flatnonzero(wrong["left"] >= 0)[0]] = base[1] + 1  # the first tree reads the second's
        assert check(wrong, nodes, nodes, False) == {0}


def test_trip_count_other_than_the_order_length_is_refused(loop_program):
    program = dataclasses.replace(loop_program, trip=ir.IBinary("sub", ir.Length("order"), ir.IConst(1)))
    reason = _refused(program)
    assert "is not the length of the visit order" in reason and "it is -1 for 0 positions" in reason


def test_trip_count_over_the_nodes_makes_the_order_a_node_array(loop_program):
    """for i in range(N): v = order[i]: the order then has one row per node (and merges as such)."""
    merge_ = analyze(dataclasses.replace(loop_program, trip=ir.Length("words")))
    assert merge_.positions == "nodes" and merge_.inputs["order"] == merge_.inputs["left"]


def test_loop_over_range_n_writing_row_p_merges_with_positions_as_nodes(loop_program):
    program = _rewrite(loop_program, {NODE: ir.Iter()}, trip=ir.Length("words"))
    merge_ = analyze(program)
    assert merge_.positions == "nodes" and merge_.inputs["order"].rows == "unused"
    assert merge_.inputs["left"].node_ids and not merge_.inputs["words"].node_ids


def test_clamped_child_id_merges(loop_program):
    """max(child, 0) (torch's clamp(min=0) of a missing child) is a node id that bounds checks catch at run time."""
    clamped = ir.IBinary("max", LEFT, ir.IConst(0))
    merge_ = analyze(_rewrite(loop_program, {ir.ChildState("state0", LEFT, False, HIDDEN):
                                             ir.ChildState("state0", clamped, False, HIDDEN)}))
    assert merge_.inputs["left"].node_ids
    assert merge_.clamped == ("max(left[order[p]], 0)",)  # plan.describe() notes where requests run alone
    assert analyze(loop_program).clamped == ()


def test_reads_where_a_missing_child_wraps_are_named(loop_program, treerec_program):
    """A table read at a child id with no zero row for -1, no choice dropping it and no clamp reads, in its own run,
    the table's last row where a child is missing (ONNX's Gather counts -1 from the end): the bounds check sends
    such a request alone, and the plan says where. A choice that drops the read, the clamp (noted apart), a TreeRec's
    zero rows and the row a case writes are not named."""
    from cortex.ir.printer import format_index
    from cortex.serving.indexeval import wrapping_reads

    assert [format_index(i) for i in wrapping_reads(loop_program)] == ["left[order[p]]", "right[order[p]]"]
    assert wrapping_reads(treerec_program) == ()
    reads = {e for case in loop_program.cases for e in ir.case_exprs(case)
             if isinstance(e, ir.ChildState) and e.index == LEFT}  # every table's read of the left child
    assert reads
    dropped = {e: ir.Select(ir.Compare("ge", LEFT, ir.IConst(0)), e, ir.ConstVec("zeros", e.width), e.width)
               for e in reads}
    clamped = {e: dataclasses.replace(e, index=ir.IBinary("max", LEFT, ir.IConst(0))) for e in reads}
    for mapping in (dropped, clamped):
        named = [format_index(i) for i in wrapping_reads(_rewrite(loop_program, mapping))]
        assert named == ["right[order[p]]"], named
    # a case taken only where the left child is >= 0 reads it where it cannot be negative
    internal = next(k for k, case in enumerate(loop_program.cases) if any(e in reads for e in ir.case_exprs(case)))
    guarded = _with_predicate(loop_program, internal, ir.Compare("ge", LEFT, ir.IConst(0)))
    assert [format_index(i) for i in wrapping_reads(guarded)] == ["right[order[p]]"]


def test_reads_of_a_missing_child_get_their_request_window(loop_program, treerec_program):
    """Conversion gives each read of a child that may be missing (wrapped, or clamped at 0) its request's window
    (windows.py): an input W of each node's request's [first, end) rows, empty in a plain run. The proof takes the
    exact forms as node ids (W merged by the merge itself), so nothing is left to name; anything else that adds a
    node id is refused as before. A program with no such read is left as it is."""
    from cortex.ir.printer import format_index
    from cortex.serving.indexeval import wrapping_reads
    from cortex.serving.kernel import WINDOWS, ArrayRole
    from cortex.serving.windows import window_input, windowed, with_request_windows

    assert with_request_windows(treerec_program) is treerec_program
    windowed_program = with_request_windows(loop_program)
    w = window_input(windowed_program)
    assert w == "cortex.request_rows." + loop_program.name
    assert wrapping_reads(windowed_program) == ()
    reads = [e for case in windowed_program.cases for e in ir.case_exprs(case)
             if isinstance(e, ir.ChildState) and windowed(e.index)]
    assert {format_index(windowed(e.index)[1]) for e in reads} == {"left[order[p]]", "right[order[p]]"}
    merge_ = analyze(windowed_program)
    assert merge_.inputs[w] == ArrayRole(WINDOWS, True) and merge_.clamped == ()

    clamped = {e: dataclasses.replace(e, index=ir.IBinary("max", e.index, ir.IConst(0)))
               for case in loop_program.cases for e in ir.case_exprs(case)
               if isinstance(e, ir.ChildState) and e.index == LEFT}
    assert analyze(_rewrite(loop_program, clamped)).clamped == ("max(left[order[p]], 0)",)
    windowed_clamp = with_request_windows(_rewrite(loop_program, clamped))
    assert {windowed(e.index)[0] for case in windowed_clamp.cases for e in ir.case_exprs(case)
            if isinstance(e, ir.ChildState) and windowed(e.index)} == {"clamp", "wrap"}
    assert analyze(windowed_clamp).clamped == ()

    # a form the rewrite does not write (the window's first row added, not its end) proves nothing
    (read, *_) = reads
    kind, index, target, name = windowed(read.index)
    edited = {read.index: ir.ISelect(read.index.pred, ir.IBinary("add", index, ir.Load(name, target, 0)), index)}
    assert "computes with a node id" in _refused(_rewrite(windowed_program, edited))


def test_windows_that_would_pass_the_irs_limits_are_not_written(loop_program, monkeypatch):
    """A window writes its read's index out three times; where that would take an index expression past the IR's
    limit on written-out terms (which the converter refuses), the program keeps its reads (and converts)."""
    from cortex.ir import limits
    from cortex.serving.windows import window_input, with_request_windows

    written = {}
    for e in ir.walk([x for case in loop_program.cases for x in case.roots()]):
        if isinstance(e, (ir.IExpr, ir.BExpr)):
            written[e] = 1 + sum(written[k] for k in ir.operands(e))
    monkeypatch.setattr(limits, "MAX_WRITTEN_TERMS", max(written.values()))  # the program itself just fits
    limits.check_limits(loop_program)
    assert with_request_windows(loop_program) is loop_program
    monkeypatch.undo()
    assert window_input(with_request_windows(loop_program)) is not None


def _one_child_loop_requests(count, seed=0):
    """Loop TreeLSTM requests where one internal node of each tree has lost its right child (-1): the model reads
    h[right] before any test, so that node reads h[-1], its table's last row as it stands then."""
    trees = st.read_sst(SST, split="test", vocab_size=50, limit=count) if SST else \
        st.sst_like_trees(count, np.random.default_rng(seed), 50)
    requests = []
    for k, t in enumerate(trees):
        feeds = {name: value.copy() for name, value in t.arrays().items()}
        internal = np.flatnonzero(feeds["left"] >= 0)
        if len(internal):
            feeds["right"][internal[k % len(internal)]] = -1
        requests.append(feeds)
    return requests


def test_a_missing_child_read_from_the_end_merges_through_windows(params, tmp_path):
    """Merged through merge_session, each request's h[-1] is its own table's last row: every request joins the
    forest, bit for bit its own run. Through a plain session (no windows), those requests run alone, as exact. A
    read past the request's own rows (right = -(N + 1): its own run fails) runs alone and gets its own error."""
    path = _convert(treelstm.build_loop(params), tmp_path, "loop")
    requests = _one_child_loop_requests(9)
    _assert_merged_equals_separate(path, requests)

    plan, plain = plan_for(path), cortex.InferenceSession(path)
    stats = ForestStats()
    results = run_forest(plan, plain, requests, stats=stats)
    assert stats.alone == len(requests) and stats.merged_requests == 0
    assert all(np.array_equal(a, b) for got, r in zip(results, requests) for a, b in zip(got, plain.run(None, r)))

    bad = {name: value.copy() for name, value in requests[3].items()}
    bad["right"][np.flatnonzero((bad["left"] >= 0) & (bad["right"] == -1))[0]] = -len(bad["words"]) - 1
    with pytest.raises(Exception) as own:
        plain.run(None, bad)
    stats = ForestStats()
    results = run_forest(plan, merge_session(plan, path), requests[:3] + [bad] + requests[4:], stats=stats)
    session_id = re.compile(r"CortexExecutionProvider_\d+")  # the node's name differs between sessions
    assert isinstance(results[3], Exception) and "out of range" in str(own.value)
    assert session_id.sub("", str(results[3])) == session_id.sub("", str(own.value))
    assert stats.alone == 1 and stats.merged_requests == len(requests) - 1


def test_the_converted_model_keeps_the_original_inputs(params, tmp_path):
    """W reaches the kernel from a Constant (an empty [0, 2]): the converted model's inputs are the original's, and
    only the copy a server runs forests through (with_window_inputs) takes W."""
    import onnxruntime as ort

    from cortex.serving.windows import PREFIX, with_window_inputs

    source = treelstm.build_loop(params)
    path = _convert(source, tmp_path, "loop")
    converted = onnx.load(path)
    assert [i.name for i in converted.graph.input] == [i.name for i in source.graph.input]
    assert [i.name for i in cortex.InferenceSession(path).get_inputs()] == \
        [i.name for i in ort.InferenceSession(source.SerializeToString()).get_inputs()]
    served = with_window_inputs(converted)
    assert [i.name for i in served.graph.input] == [i.name for i in source.graph.input] + \
        [PREFIX + "recursion0"]
    assert not any(n.op_type == "Constant" and n.output[0].startswith(PREFIX) for n in served.graph.node)
    plan = plan_for(path)
    assert plan.windows == (PREFIX + "recursion0",)
    assert [i.name for i in merge_session(plan, path).get_inputs()][-1] == PREFIX + "recursion0"


def test_a_recursion_that_cannot_merge_gets_no_windows(loop_program):
    """Conversion writes windows only where the merge is proven: a recursion that reads a scalar input inside keeps
    its reads (and the kernel its inputs); the Loop TreeLSTM itself gets them."""
    from cortex.serving.windows import window_input, windows_if_mergeable

    scalar = ir.InputDecl("k", "array", "int64", 0)
    program = dataclasses.replace(loop_program, inputs=loop_program.inputs + (scalar,))
    program = _with_predicate(program, 1, ir.Compare("ne", ir.Load("k", ir.IConst(0)), ir.IConst(0)))
    assert windows_if_mergeable(program) is program
    assert window_input(windows_if_mergeable(loop_program)) is not None


def test_scalar_input_read_in_the_recursion_is_refused(loop_program):
    scalar = ir.InputDecl("k", "array", "int64", 0)
    program = dataclasses.replace(loop_program, inputs=loop_program.inputs + (scalar,))
    program = _with_predicate(program, 1, ir.Compare("ne", ir.Load("k", ir.IConst(0)), ir.IConst(0)))
    assert "scalar input 'k'" in _refused(program)


# ---- the converted model: recorded decision, graph around the kernel --------------------------------------------

def _convert(model: onnx.ModelProto, tmp_path, name: str, target: str = "cpu") -> str:
    src, out = tmp_path / f"{name}.onnx", tmp_path / f"{name}.cortex.onnx"
    onnx.save(model, str(src))
    report = cortex.convert(str(src), str(out), strict=True, target=target)
    assert all(r.converted for r in report.regions)
    return str(out)


def _with_head(model: onnx.ModelProto, nodes, outputs, inputs=(), inits=()) -> onnx.ModelProto:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    model.graph.node.extend(nodes)
    model.graph.input.extend(inputs)
    model.graph.initializer.extend(inits)
    model.graph.output.extend(outputs)
    return model


def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


@pytest.fixture(scope="module")
def treerec_model(params):
    return treelstm.build_treerec(params)


def test_conversion_records_the_decision(treerec_model, tmp_path):
    path = _convert(treerec_model, tmp_path, "tl")
    (node,) = cortex_nodes(onnx.load(path))
    recorded = node.notes["merge"]
    assert recorded["per_tree"] is True and recorded["outputs"] == {"h": "nodes", "c": "nodes"}
    assert recorded["inputs"]["children"] == {"rows": "nodes", "node_ids": True}


def test_the_report_says_how_the_model_serves(params, treerec_model, tmp_path):
    """cortex-convert's report says, before any server starts, whether BatchingSession merges the model's requests
    (and what runs per request after the forest, and which reads send requests alone), or why it cannot."""
    def report(model, name):
        onnx.save(model, str(tmp_path / f"{name}.onnx"))
        return cortex.convert(str(tmp_path / f"{name}.onnx"), str(tmp_path / f"{name}.cortex.onnx"), strict=True)

    merged = report(treerec_model, "tl")
    assert merged.serving.mergeable and not merged.serving.warnings
    lines = merged.format().splitlines()
    assert any(line.startswith("  serving: concurrent requests run as one forest") for line in lines), lines
    assert not any("note:" in line for line in lines)

    mean = report(treelstm.with_mean_head(treerec_model, HIDDEN), "mean").format()
    assert "note: outputs computed 'mean' per request after the forest" in mean, mean
    loop = report(treelstm.build_loop(params), "loop")
    assert loop.serving.mergeable and "note:" not in loop.format()  # its child reads have request windows
    loop.serving = dataclasses.replace(loop.serving, warnings=("a read sends some requests to run alone",))
    assert "    note: a read sends some requests to run alone" in loop.format().splitlines()

    mixing = report(whole_tree_input(treelstm.build_loop(params), "words"), "mixing")
    assert not mixing.serving.mergeable
    (line,) = [line for line in mixing.format().splitlines() if "serving:" in line]
    assert "cannot run as one forest: " + mixing.serving.reason in line and "allow_unmerged=True" in line


def test_an_edited_decision_is_not_believed(treerec_model, tmp_path):
    path = _convert(treerec_model, tmp_path, "tl")
    model = onnx.load(path)
    (cortex_node,) = cortex_nodes(model)
    notes = dict(cortex_node.notes)
    notes["merge"] = dict(notes["merge"], inputs={**notes["merge"]["inputs"],
                                                  "children": {"rows": "nodes", "node_ids": False}})
    attribute = next(a for a in model.graph.node[cortex_node.index].attribute if a.name == "notes")
    attribute.s = json.dumps(notes).encode()
    plan = plan_for(model)
    assert not plan.mergeable and "differs from the one its IR proves" in plan.reason
    notes["merge"] = {"version": 1, "per_tree": False, "reason": "someone said so"}
    attribute.s = json.dumps(notes).encode()
    assert plan_for(model).reason == "someone said so"


def _tree_requests(count, seed=0):
    return [dict(children=t.children, words=t.words)
            for t in st.sst_like_trees(count, np.random.default_rng(seed), 50)]


def _message(error: Exception) -> str:
    return re.sub(r"CortexExecutionProvider_\d+", "CortexExecutionProvider", str(error))  # the session's EP name


def _served_as_plain_runs(path, batch) -> ForestStats:
    """run_forest's answer to `batch`, each request's checked against its plain run (bits, or its error)."""
    plan, session, stats = plan_for(path), cortex.InferenceSession(path), ForestStats()
    results = run_forest(plan, merge_session(plan, path), batch, stats=stats)
    for k, (request, got) in enumerate(zip(batch, results)):
        try:
            want = session.run(None, request)
        except Exception as e:  # noqa: BLE001
            assert isinstance(got, Exception) and _message(got) == _message(e), k
            continue
        assert not isinstance(got, Exception) and all(np.array_equal(a, b) for a, b in zip(got, want)), k
    return stats


def test_a_request_that_fails_the_forest_leaves_the_others_merged(params, treerec_model, tmp_path, monkeypatch):
    """A request that fails a forest by itself, which the per-batch check leaves to the kernel (a TreeRec's cycle,
    a word id past its embedding), fails the merged run; the thorough check then names it, it runs alone with the
    error its own run gives, and the others run again as one forest. A failure no check foresees is run again in
    halves. Where the check evaluates the cases anyway (the Loop form), a word past the embedding is found before
    the forest runs."""
    from cortex.serving import forest as forest_module

    path = _convert(treerec_model, tmp_path, "tl")
    requests = _tree_requests(16, seed=3)
    past = dict(requests[5], words=np.where(requests[5]["words"] >= 0, 10 ** 6, 0).astype(np.int64))
    cycle = dict(children=np.array([[1, -1], [0, -1]], np.int64), words=np.array([1, 2], np.int64))
    for bad, at in ((cycle, 11), (past, 5)):
        stats = _served_as_plain_runs(path, requests[:at] + [bad] + requests[at + 1:])
        assert (stats.fallbacks, stats.batches, stats.merged_requests, stats.alone) == (1, 1, 15, 1), stats

    plain_check = forest_module.out_of_bounds
    monkeypatch.setattr(forest_module, "out_of_bounds", lambda plan, batch, thorough=False:
                        set() if thorough else plain_check(plan, batch))  # a failure nothing foresees
    stats = _served_as_plain_runs(path, requests[:11] + [cycle] + requests[12:])
    # halves of 8 and 8 (one fails), 4 and 4 (one fails), 2 and 2 (one fails), then the cycle and its neighbour
    # alone: 3 forests and 2 lone runs after the failed forest, not 16 lone runs
    assert (stats.fallbacks, stats.batches, stats.merged_requests, stats.alone) == (1, 3, 14, 2), stats
    monkeypatch.undo()

    loop = _convert(treelstm.build_loop(params), tmp_path, "loop")
    trees = [t.arrays() for t in st.sst_like_trees(16, np.random.default_rng(3), 50)]
    past = dict(trees[5], words=np.where(trees[5]["left"] < 0, 10 ** 6, 0).astype(np.int64))
    stats = _served_as_plain_runs(loop, trees[:5] + [past] + trees[6:])
    assert (stats.fallbacks, stats.batches, stats.merged_requests, stats.alone) == (0, 1, 15, 1), stats


def test_a_mean_over_all_nodes_runs_per_request_after_the_forest(treerec_model, tmp_path):
    """A head that reads a request's rows as a whole (a mean over every node's state) would mix the trees on the
    forest: the recursion merges, and the mean runs per request on the request's own rows (tail.py), bit for bit."""
    path = _convert(treelstm.with_mean_head(treerec_model, HIDDEN), tmp_path, "mean")
    plan = plan_for(path)
    assert plan.mergeable and plan.tail is not None, plan.reason
    ((name, why),) = plan.tail.reasons
    assert name == "mean" and "reduces over the rows" in why and "mix" in why
    assert plan.tail.cut == ("h",) and "'mean' per request after the forest" in plan.describe()
    _assert_merged_equals_separate(path, _tree_requests(7))
    with pytest.raises(ValueError, match="per request after the forest"):
        run_forest(plan, cortex.InferenceSession(path), _tree_requests(2))  # without its tail sessions


def test_a_mean_head_per_request_after_a_forest_on_the_gpu(treerec_model, tmp_path):
    """The body's forest on the GPU (its outputs through pinned memory or ONNX Runtime's), the mean per request on
    the tail's session: every request within 1e-6 of its separate run."""
    from gpu import gpu_skip_reason
    reason = gpu_skip_reason()
    if reason:
        pytest.skip(reason)
    path = _convert(treelstm.with_mean_head(treerec_model, HIDDEN), tmp_path, "mean_cuda", target="cuda")
    assert plan_for(path).tail is not None
    _assert_merged_equals_separate(path, _tree_requests(9), device="cuda", tol=1e-6)


def test_heads_on_a_requests_rows_as_a_whole_run_per_request(treerec_model, tmp_path):
    """The first row (`h[0]`), the node count, a softmax over every node's score (attention pooling) and a mean over
    every element of a table beside a per-node classifier that splits: the classifier's rows come from the forest,
    the rest per request. The tables reach the tail aligned as ONNX Runtime allocates them: a vectorized mean over a
    request's rows where they start in the forest (anywhere) would sum in another order than its own run."""
    rng = np.random.default_rng(2)
    zero = numpy_helper.from_array(np.array(0, np.int64), "zero")
    w = numpy_helper.from_array(rng.standard_normal((HIDDEN, 1)).astype(np.float32), "w_att")
    nodes = [helper.make_node("Gather", ["h", "zero"], ["first"], axis=0),
             helper.make_node("Shape", ["c"], ["rows"], start=0, end=1),
             helper.make_node("MatMul", ["h", "w_att"], ["score"]),
             helper.make_node("Softmax", ["score"], ["weight"], axis=0),
             helper.make_node("Mul", ["weight", "h"], ["weighted"]),
             helper.make_node("ReduceSum", ["weighted"], ["pooled"], keepdims=0),
             helper.make_node("ReduceMean", ["c"], ["overall"], keepdims=0)]
    model = _with_head(treerec_model, nodes, [_vi("first", onnx.TensorProto.FLOAT, [HIDDEN]),
                                              _vi("rows", onnx.TensorProto.INT64, [1]),
                                              _vi("score", onnx.TensorProto.FLOAT, ["N", 1]),
                                              _vi("pooled", onnx.TensorProto.FLOAT, [HIDDEN]),
                                              _vi("overall", onnx.TensorProto.FLOAT, [])], inits=[zero, w])
    path = _convert(model, tmp_path, "heads")
    plan = plan_for(path)
    assert plan.mergeable and plan.tail is not None, plan.reason
    assert [name for name, _ in plan.tail.reasons] == ["first", "rows", "pooled", "overall"]
    assert {o.name: o.unit for o in plan.outputs}["score"] == "nodes"  # split from the forest, not recomputed
    assert set(plan.tail.cut) == {"h", "c"}
    _assert_merged_equals_separate(path, _tree_requests(9, seed=1))


def test_a_sum_along_each_nodes_row_is_computed_per_request(tmp_path):
    """A per-node score `(h * w).sum(-1)` is a ReduceSum along each row's contiguous elements, which ONNX Runtime
    vectorizes from where the row lies in memory: on the forest, a request's rows start elsewhere and the sums may
    round differently. So it is computed per request after the forest, and a request served after 0 to 15 others
    (its rows at every offset of a 64-byte line: 5 floats a row) gets its own run's bits every time."""
    hidden = 5
    model = treelstm.build_treerec(treelstm.make_params(hidden=hidden, embed_dim=6, vocab=50))
    w = numpy_helper.from_array(np.random.default_rng(3).standard_normal(hidden).astype(np.float32), "w_score")
    axis = numpy_helper.from_array(np.array([-1], np.int64), "last_axis")
    model = _with_head(model, [helper.make_node("Mul", ["h", "w_score"], ["weighted"]),
                               helper.make_node("ReduceSum", ["weighted", "last_axis"], ["score"], keepdims=0)],
                       [_vi("score", onnx.TensorProto.FLOAT, ["N"])], inits=[w, axis])
    path = _convert(model, tmp_path, "score")
    plan = plan_for(path)
    assert plan.mergeable and plan.tail is not None, plan.reason
    ((name, why),) = plan.tail.reasons
    assert name == "score" and "contiguous elements" in why, why
    session, tail = cortex.InferenceSession(path), tail_sessions(plan, path)
    requests = _tree_requests(2, seed=5)
    requests = [r for r in requests if len(r["words"]) % 2] + [dict(children=np.array([[-1, -1]], np.int64),
                                                                    words=np.array([3], np.int64))]
    one_node, target = requests[-1], requests[0]
    want = session.run(None, target)
    for before in range(16):
        got = run_forest(plan, session, [one_node] * before + [target], tail=tail)[-1]
        assert all(np.array_equal(a, b) for a, b in zip(got, want)), f"after {before} requests"


def test_a_recursion_that_reads_the_whole_tree_is_refused(treerec_model, tmp_path):
    """When what a recursion reads depends on every row of the request (here its token ids clamped below by their
    minimum over the tree: the same values, computed from all rows), merged it would depend on the forest: refused,
    with the reason, tail or not."""
    path = _convert(whole_tree_input(treerec_model, "words"), tmp_path, "clamped")
    plan = plan_for(path)
    assert not plan.mergeable
    assert "input 'words_clamped'" in plan.reason and "reduces over all rows" in plan.reason, plan.reason


def test_a_padding_row_past_the_nodes_merges_and_other_extra_rows_do_not(tmp_path):
    """DAG-RNN's Loop form keeps a zero row past the nodes (zeros(N + 1, H), missing neighbours read row N, then
    h[:N]): merged, the forest has one such row past all its nodes, the same zeros (test_zoo_merged_equals_separate
    runs it). The padded table returned is answered per request after the forest; two padding rows are refused."""
    m = MODELS["dagrnn"]
    path = _convert(m.build_loop(m.make_params(HIDDEN)), tmp_path, "dagrnn")
    assert plan_for(path).mergeable
    model = onnx.load(path)
    whole = next(n for n in model.graph.node if n.op_type == "Slice" and n.output[0] == "h")
    returned = onnx.ModelProto()
    returned.CopyFrom(model)
    returned.graph.output[0].name = whole.input[0]  # the table with its padding row
    onnx.save(returned, str(tmp_path / "returned.cortex.onnx"))
    plan = plan_for(tmp_path / "returned.cortex.onnx")  # per request: its rows, and the padding row again
    assert plan.mergeable and "padding row" in plan.tail.reasons[0][1], plan.describe()
    two = onnx.ModelProto()
    two.CopyFrom(model)
    plus = next(n for n in two.graph.node if n.op_type == "Add" and n.output[0] == "N_plus_1")
    two.graph.initializer.append(numpy_helper.from_array(np.array([2], np.int64), "two_rows"))
    plus.input[1] = "two_rows"
    onnx.save(two, str(tmp_path / "two.cortex.onnx"))
    plan = plan_for(tmp_path / "two.cortex.onnx")
    assert not plan.mergeable and "a table of N + 2 rows" in plan.reason, plan.reason


def _classifier_head(model, classes=3, roots=False, float64=False):
    """A softmax classifier over every node's h (its probabilities in float64 with `float64`), and with `roots`
    the roots' rows of it."""
    rng = np.random.default_rng(1)
    W = numpy_helper.from_array(rng.standard_normal((HIDDEN, classes)).astype(np.float32), "Wc")
    b = numpy_helper.from_array(rng.standard_normal(classes).astype(np.float32), "bc")
    nodes = [helper.make_node("MatMul", ["h", "Wc"], ["logits0"]), helper.make_node("Add", ["logits0", "bc"], ["z"])]
    elem = onnx.TensorProto.DOUBLE if float64 else onnx.TensorProto.FLOAT
    if float64:
        nodes.append(helper.make_node("Cast", ["z"], ["z64"], to=elem))
    nodes.append(helper.make_node("Softmax", ["z64" if float64 else "z"], ["probs"], axis=-1))
    outputs = [_vi("probs", elem, ["N", classes])]
    inputs = []
    if roots:
        nodes.append(helper.make_node("Gather", ["probs", "roots"], ["root_probs"], axis=0))
        outputs.append(_vi("root_probs", elem, ["R", classes]))
        inputs.append(_vi("roots", onnx.TensorProto.INT64, ["R"]))
    return _with_head(model, nodes, outputs, inputs, [W, b])


def _assert_roots_merge_and_a_bad_root_fails_alone(path, plan):
    """SST-shaped trees with their roots merge bit for bit; a request naming a root past its tree's nodes gets its
    own run's error, alone (merged, it would read the next request's first node; a head per request fails on it in
    its tail), and its neighbours stay merged."""
    trees = _trees("binary", 10, vocab=50)
    requests = [dict(children=t.children, words=t.words, roots=t.roots) for t in trees]
    _assert_merged_equals_separate(path, requests)
    bad = dict(requests[0], roots=np.array([trees[0].num_nodes], np.int64))
    session = cortex.InferenceSession(path)
    stats = ForestStats()
    answers = run_forest(plan, session, [requests[1], bad, requests[2]], stats=stats, tail=tail_sessions(plan, path))
    with pytest.raises(Exception) as own:
        session.run(None, bad)
    assert type(answers[1]) is type(own.value) and str(answers[1]) == str(own.value)
    assert stats.merged_requests == 2 and stats.alone == 1, stats


def test_per_node_and_per_root_heads_merge_exactly(treerec_model, tmp_path):
    """A float32 softmax classifier over every node, and its roots' rows: merged whole, each request's bits."""
    path = _convert(_classifier_head(treerec_model, roots=True), tmp_path, "head")
    plan = plan_for(path)
    assert plan.mergeable and plan.tail is None, plan.describe()
    units = {o.name: o.unit for o in plan.outputs}
    assert units["probs"] == "nodes" and units["root_probs"] not in (None, "nodes"), units
    _assert_roots_merge_and_a_bad_root_fails_alone(path, plan)


def test_a_float32_softmax_per_node_keeps_its_bits_wherever_its_rows_lie(treerec_model, tmp_path):
    """ONNX Runtime's float32 softmax computes each row from its own first element (MLAS): a request served after 0
    to 15 one-node requests (its rows at every offset of a 64-byte line, 3 floats a row) gets its own run's bits."""
    path = _convert(_classifier_head(treerec_model), tmp_path, "head32")
    plan = plan_for(path)
    assert plan.mergeable and plan.tail is None, plan.describe()
    session = cortex.InferenceSession(path)
    one_node = dict(children=np.array([[-1, -1]], np.int64), words=np.array([3], np.int64))
    for target in _tree_requests(3, seed=8):
        want = session.run(None, target)
        for before in range(16):
            got = run_forest(plan, session, [one_node] * before + [target])[-1]
            assert all(np.array_equal(a, b) for a, b in zip(got, want)), f"after {before} requests"


@pytest.mark.parametrize("float64", [False, True])
def test_the_sentiment_example_merges_whole_in_float32(params, tmp_path, float64):
    """cortex.examples.treelstm.with_sentiment_head (what `serve_bench --head sentiment|sentiment64` serves): its
    float32 log-probabilities merge with the recursion, its float64 ones are computed per request."""
    model = treelstm.with_sentiment_head(treelstm.build_loop(params), HIDDEN, float64=float64)
    path = _convert(model, tmp_path, f"sentiment{64 if float64 else 32}")
    plan = plan_for(path)
    assert plan.mergeable, plan.reason
    assert (plan.tail is not None) == float64 and \
        ([name for name, _ in plan.tail.reasons] == ["log_probs"] if float64 else True), plan.describe()
    _assert_merged_equals_separate(path, [t.arrays() for t in _trees("binary", 8, vocab=50)])


def test_a_float64_softmax_head_runs_per_request(treerec_model, tmp_path):
    """float64's softmax is not computed alike wherever a row lies (tools/ort_placement.py): per request after the
    forest, and a request whose head fails (a root past its nodes) fails alone, with its own run's error."""
    path = _convert(_classifier_head(treerec_model, roots=True, float64=True), tmp_path, "head64")
    plan = plan_for(path)
    assert plan.mergeable, plan.reason
    units = {o.name: o.unit for o in plan.outputs}
    assert units == {"h": "nodes", "c": "nodes"}
    assert [name for name, _ in plan.tail.reasons] == ["probs", "root_probs"]
    assert all("vector path and a scalar path" in why for _, why in plan.tail.reasons)
    _assert_roots_merge_and_a_bad_root_fails_alone(path, plan)


# ---- exactness ---------------------------------------------------------------------------------------------------

def _trees(kind, count, vocab=VOCAB, seed=0, sst=True):
    rng = np.random.default_rng(seed)
    return structures(kind, count, rng, sst_dir=SST if sst and kind != "grid" else None, vocab=vocab)


def _assert_merged_equals_separate(path, requests, merged=None, device="cpu", tol=0.0, pinned=False):
    """run_forest answers every request with the bits of its separate run (within `tol` on the GPU, whose products
    may sum in another order in a larger forest); all of them from one merged forest, unless `merged` names how many
    could be (the others ran alone). `pinned`: the forest's outputs through pinned host memory (a GPU session)."""
    plan = plan_for(path)
    assert plan.mergeable, plan.reason
    session = cortex.InferenceSession(path, device=device)  # the model as a user runs it
    server = merge_session(plan, path, device=device)  # what a BatchingSession runs forests through
    stats = ForestStats()
    outputs = PinnedOutputs.of(plan, server, device) if pinned else None
    assert outputs is not None or not pinned, "a GPU session of this model should take pinned outputs"
    tail = tail_sessions(plan, path, device=device)
    results = run_forest(plan, server, requests, stats=stats, pinned=outputs, tail=tail)
    for k, (request, got) in enumerate(zip(requests, results)):
        assert not isinstance(got, Exception), f"request {k}: {got}"
        want = session.run(None, request)
        for name, a, b in zip(session.get_outputs(), got, want):
            assert a.shape == b.shape, f"request {k}, output {name.name}"
            if tol == 0.0:
                assert np.array_equal(a, b, equal_nan=True), f"request {k}, output {name.name}"
            else:
                assert np.allclose(a, b, rtol=0.0, atol=tol, equal_nan=True), \
                    f"request {k}, output {name.name}: {np.abs(a - b).max()}"
    assert stats.merged_requests == (len(requests) if merged is None else merged), stats
    assert stats.fallbacks == 0


@pytest.mark.parametrize("form", ["loop", "treerec"])
@pytest.mark.parametrize("name", list(MODELS))
def test_zoo_merged_equals_separate(name, form, tmp_path):
    m = MODELS[name]
    params = m.make_params(HIDDEN)
    model = m.build_loop(params) if form == "loop" else m.build_treerec(params)
    path = _convert(model, tmp_path, f"{name}_{form}")
    vocab = MVRNN_VOCAB if name == "mvrnn" else VOCAB
    feeds = m.loop_feeds if form == "loop" else m.treerec_feeds
    real = _trees(m.structure, 9, vocab=vocab)  # SST trees where the kind has them
    synthetic = _trees(m.structure, 7, vocab=vocab, seed=5, sst=False)  # random SST-shaped trees
    # DAG-RNN's Loop form names its padding row N for a missing neighbour: merged, N would be the next request's
    # first node, so such requests (every grid here) run alone, exact; the plan says so
    alone = name == "dagrnn" and form == "loop"
    assert ("padding row" in plan_for(path).describe()) == alone
    # its -1 counted from a request's end is that padding row, not a node: no windows for it (windows.py)
    assert not alone or (plan_for(path).windows == () and "left[order[p]]" in plan_for(path).describe())
    _assert_merged_equals_separate(path, [feeds(s) for s in real + synthetic], merged=0 if alone else None)


@pytest.mark.parametrize("form", ["loop", "treerec"])
@pytest.mark.parametrize("name", ["treelstm", "childsum", "mvrnn"])
def test_zoo_merged_matches_separate_on_the_gpu(name, form, tmp_path):
    """The CUDA kernel on a merged forest: every request within 1e-6 of its separate run (issue 22)."""
    from gpu import gpu_skip_reason
    reason = gpu_skip_reason()
    if reason:
        pytest.skip(reason)
    m = MODELS[name]
    params = m.make_params(HIDDEN)
    model = m.build_loop(params) if form == "loop" else m.build_treerec(params)
    path = _convert(model, tmp_path, f"{name}_{form}", target="cuda")
    vocab = MVRNN_VOCAB if name == "mvrnn" else VOCAB
    feeds = m.loop_feeds if form == "loop" else m.treerec_feeds
    trees = _trees(m.structure, 9, vocab=vocab) + _trees(m.structure, 7, vocab=vocab, seed=5, sst=False)
    _assert_merged_equals_separate(path, [feeds(s) for s in trees], device="cuda", tol=1e-6)
    if name == "treelstm":  # the same forest with its outputs copied into pinned host memory
        _assert_merged_equals_separate(path, [feeds(s) for s in trees], device="cuda", tol=1e-6, pinned=True)


def test_pinned_outputs_only_on_a_gpu(tmp_path, params):
    path = _convert(treelstm.build_treerec(params), tmp_path, "tl_treerec")
    assert PinnedOutputs.of(plan_for(path), cortex.InferenceSession(path), "cpu") is None


@pytest.mark.parametrize("form", ["loop", "treerec"])
def test_pinned_outputs_binding_with_cpu_memory(form, tmp_path, monkeypatch):
    """The pinned path's binding (each output's rows from the plan's measures, outputs bound at the buffers'
    addresses), run with plain CPU memory in place of the GPU's pinned memory: every request still gets the bits of
    its separate run, from buffers the path allocated (zero-copy views that keep them alive)."""
    import onnxruntime as ort
    import cortex.session

    allocate = ort.OrtValue.ortvalue_from_shape_and_type
    monkeypatch.setattr(cortex.session, "pinned_memory_info", lambda device: "host memory")
    monkeypatch.setattr(ort.OrtValue, "ortvalue_from_shape_and_type",
                        staticmethod(lambda shape, dtype, memory_info: allocate(shape, dtype)))
    ran, real_run = [], PinnedOutputs.run
    monkeypatch.setattr(PinnedOutputs, "run", lambda self, feeds: ran.append(real_run(self, feeds)) or ran[-1])
    m = MODELS["treelstm"]
    params = m.make_params(HIDDEN)
    path = _convert(m.build_loop(params) if form == "loop" else m.build_treerec(params), tmp_path, f"tl_{form}")
    feeds = m.loop_feeds if form == "loop" else m.treerec_feeds
    trees = _trees(m.structure, 9) + _trees(m.structure, 7, seed=5, sst=False)
    _assert_merged_equals_separate(path, [feeds(s) for s in trees], pinned=True)
    assert len(ran) == 1 and ran[0] is not None and all(type(a.base).__name__ == "PyCapsule" for a in ran[0])


def test_random_nary_trees_with_holes_merge_exactly(tmp_path):
    """Child-Sum over random trees of up to 4 children, -1 anywhere in a row: missing children are sentinels."""
    from onnx_ops.zoo import childsum
    params = childsum.make_params(hidden=HIDDEN, embed_dim=6, vocab=50)
    rng = np.random.default_rng(3)
    trees = [st.random_nary_tree(int(rng.integers(1, 30)), 4, rng, 50, holes=True) for _ in range(12)]
    path = _convert(childsum.build_treerec(params, max_children=4), tmp_path, "childsum4")
    _assert_merged_equals_separate(path, [dict(children=t.children, words=t.words) for t in trees])


def test_requests_that_must_run_alone_say_why(tmp_path, params):
    path = _convert(treelstm.build_loop(params), tmp_path, "tl_loop")
    plan = plan_for(path)
    tree = st.random_tree(6, np.random.default_rng(0), 50)
    good = tree.arrays()
    assert check_request(plan, good) is None
    order = good["order"]
    cases = {"a repeated node": dict(good, order=np.concatenate([order[:-1], order[:1]])),
             "a node left out": dict(good, order=order[:-1]),
             "an id past the tree": dict(good, order=np.where(order == order[0], 11, order)),
             "int32 ids": dict(good, left=good["left"].astype(np.int32)),
             "a short input": dict(good, words=good["words"][:-1])}
    reasons = {what: check_request(plan, feeds) for what, feeds in cases.items()}
    # an order that is not a permutation would be exact merged too, but would cost the whole forest its schedule
    for what in ("a repeated node", "a node left out", "an id past the tree"):
        assert reasons[what] == "the visit order 'order' is not a permutation of the request's 11 nodes"
    assert reasons["int32 ids"] == "input 'left' is int32, the model declares int64"
    assert reasons["a short input"] == ("input 'left' has 11 rows, 'words' 10: inputs of one unit (nodes) must "
                                        "agree to be merged")


def test_single_node_and_empty_trees_merge(tmp_path, params):
    path = _convert(treelstm.build_loop(params), tmp_path, "tl_loop")
    rng = np.random.default_rng(0)
    one = st.random_tree(1, rng, 50)
    empty = dict(words=np.zeros(0, np.int64), left=np.zeros(0, np.int64), right=np.zeros(0, np.int64),
                 order=np.zeros(0, np.int64))
    trees = [one, st.random_tree(5, rng, 50), one]
    _assert_merged_equals_separate(path, [t.arrays() for t in trees] + [empty])


def _wild_feeds(kind):
    """One tree's inputs for a model of onnx_ops.zoo.wild of this structure kind."""
    from onnx_ops.zoo import wild
    return {"binary": lambda t: wild.binary_feeds([t]), "nary": lambda t: wild.nary_feeds([t]),
            "binary32": lambda t: wild.int32_feeds([t]),
            "nary3": lambda t: wild.nary3_forest_feeds(st.batch_nary([st.nary_from_forest(t)])),
            "parent": lambda t: wild.parent_feeds(st.batch_nary([st.nary_from_forest(t)])),
            "csr": lambda t: wild.csr_feeds(st.batch_nary([st.nary_from_forest(t)])),
            "binary32_reversed": lambda t: wild.reversed_int32_forest_feeds(st.batch([t]))}[kind]


@pytest.mark.parametrize("name", ["tai_treelstm", "while_loop", "scan_cond", "childsum_forget", "zero_branch",
                                  "int32_bool", "nested_loop", "matrix_state",
                                  "childsum_parent", "childsum_csr", "reverse_counter", "reverse_range"])
def test_real_exports_merge_exactly(name, tmp_path):
    """TorchScript and dynamo exports of natural PyTorch code: torch's clamp(min=0) of child ids (while_loop,
    childsum_forget), a per-step output split by positions (scan_cond), int32 and bool structure arrays, an
    unrolled loop over child slots, a matrix per node (whose random weights overflow: NaN compares equal here), a
    Child-Sum TreeLSTM whose children are a parent array (parent ids shifted too) or CSR offsets + indices (the
    offsets shifted by the edges before them), a loop walking the order from its end (order[L - 1 - i]), and one
    over range(L - 1, -1, -1), whose trip count the graph computes from L through floats (values.Count)."""
    pytest.importorskip("torch")
    from onnx_ops.zoo import wild
    kind = wild.MODELS[name][4]
    example = wild.feeds_for(kind, np.random.default_rng(0), 2)
    src = tmp_path / f"{name}.onnx"
    wild.export_model(name, src, example)
    out = tmp_path / f"{name}.cortex.onnx"
    cortex.convert(str(src), str(out), strict=True)
    trees = st.read_sst(SST, split="test", vocab_size=50, limit=8) if SST else \
        st.sst_like_trees(8, np.random.default_rng(1), 50)
    names = {i.name for i in plan_for(out).inputs}
    requests = [{k: v for k, v in _wild_feeds(kind)(t).items() if k in names} for t in trees]
    # childsum_forget reads h[clamp(child, 0)] at every node, leaves too: merged, a missing child reads its own
    # request's first row through the request's window (windows.py), as its own run reads row 0
    _assert_merged_equals_separate(str(out), requests)


def test_a_missing_neighbour_sent_to_the_padding_row_merges(tmp_path):
    """DAG-RNN written as `h[torch.where(up[v] < 0, N, up[v])]` over zeros(N + 1, H): merged, N is the forest's
    padding row, zeros as each grid's own."""
    pytest.importorskip("torch")
    from onnx_ops.zoo import wild
    src, out = tmp_path / "dagrnn_where.onnx", tmp_path / "dagrnn_where.cortex.onnx"
    wild.export_model("dagrnn_where", src, wild.feeds_for("grid", np.random.default_rng(0), 2))
    cortex.convert(str(src), str(out), strict=True)
    rng = np.random.default_rng(3)
    sizes = [(1, 1), (2, 3), (4, 4), (3, 1), (5, 2)]
    _assert_merged_equals_separate(str(out), [wild.grid_feeds([size], int(rng.integers(1 << 30))) for size in sizes])


def test_a_per_request_head_reads_a_padded_table_with_its_padding_row(tmp_path):
    """A head computed per request (a float64 LogSoftmax) over `h[:N]` of a table with a padding row past the nodes: the
    tail gets the request's rows of the forest's table and the padding row again, as its own run has them."""
    pytest.importorskip("torch")
    from onnx_ops.zoo import wild
    src, out = tmp_path / "dagrnn_where.onnx", tmp_path / "dagrnn_where.cortex.onnx"
    wild.export_model("dagrnn_where", src, wild.feeds_for("grid", np.random.default_rng(0), 2))
    cortex.convert(str(src), str(out), strict=True)
    model = onnx.load(str(out))
    first = model.graph.output[0].name
    model.graph.node.extend([helper.make_node("Cast", [first], ["first64"], to=onnx.TensorProto.DOUBLE),
                             helper.make_node("LogSoftmax", ["first64"], ["log_probs"], axis=-1)])
    model.graph.output.append(onnx.ValueInfoProto(name="log_probs"))
    path = tmp_path / "dagrnn_where_head.cortex.onnx"  # beside the kernels it names
    onnx.save(model, str(path))
    plan = plan_for(path)
    assert plan.mergeable and [name for name, _ in plan.tail.reasons] == ["log_probs"], plan.describe()
    assert any(o.padding is not None for o in plan.outputs if o.name in plan.tail.cut), plan.outputs
    rng = np.random.default_rng(4)
    sizes = [(1, 1), (2, 3), (4, 4), (3, 1), (5, 2)]
    _assert_merged_equals_separate(str(path), [wild.grid_feeds([size], int(rng.integers(1 << 30))) for size in sizes])


@pytest.mark.parametrize("name,reason", [("two_pass", "walked from the end elsewhere")])
def test_real_exports_that_mix_trees_are_refused(name, reason, tmp_path):
    """Two recursions over one order, one from its start, one from its end: merged, the order cannot be laid out
    for both."""
    pytest.importorskip("torch")
    from onnx_ops.zoo import wild
    kind = wild.MODELS[name][4]
    src = tmp_path / f"{name}.onnx"
    wild.export_model(name, src, wild.feeds_for(kind, np.random.default_rng(0), 2))
    cortex.convert(str(src), str(tmp_path / f"{name}.cortex.onnx"), strict=True)
    plan = plan_for(tmp_path / f"{name}.cortex.onnx")
    assert not plan.mergeable and reason in plan.reason


def _converted_wild(name, tmp_path) -> str:
    from onnx_ops.zoo import wild
    example = wild.feeds_for(wild.MODELS[name][4], np.random.default_rng(0), 2)
    src, out = tmp_path / f"{name}.onnx", tmp_path / f"{name}.cortex.onnx"
    wild.export_model(name, src, example)
    cortex.convert(str(src), str(out), strict=True)
    return str(out)


def test_a_trip_count_the_graph_computes_merges_only_as_the_positions(tmp_path):
    """range(L - 1, -1, -1) under TorchScript: the Loop's trip count is ceil(float(-1 - (L - 1)) / -1), computed by
    ONNX nodes from L. It merges as that number (evaluated as ONNX Runtime does, values.count_value) is the positions;
    one more step (edited into the graph), or a trip count read from the values of an input, is refused."""
    pytest.importorskip("torch")
    path = _converted_wild("reverse_range", tmp_path)
    plan = plan_for(path)
    assert plan.mergeable and [k.counts for k in plan.kernels] != [{}], plan.describe()
    model = onnx.load(path)
    kernel = next(n for n in model.graph.node if n.op_type == "EPContext")
    trip = kernel.input[0]

    def one_more(m):
        m.graph.node.insert(list(m.graph.node).index(kernel), helper.make_node(
            "Add", [trip, "one_more_c"], ["one_more"]))
        m.graph.initializer.append(numpy_helper.from_array(np.array(1, np.int64), "one_more_c"))
        next(n for n in m.graph.node if n.op_type == "EPContext").input[0] = "one_more"

    def from_values(m):  # the largest node id + 1: a number of the request's values, not of its length
        m.graph.node.insert(list(m.graph.node).index(kernel), helper.make_node(
            "ReduceMax", ["order"], ["top"], keepdims=0))
        next(n for n in m.graph.node if n.op_type == "EPContext").input[0] = "top"

    for edit, reason in ((one_more, "is not the number of positions (it is 1 for 0)"),
                         (from_values, "reduces over all rows")):
        edited = onnx.load(path)
        kernel = next(n for n in edited.graph.node if n.op_type == "EPContext")
        edit(edited)
        got = plan_for(edited)
        assert not got.mergeable and reason in got.reason, got.reason

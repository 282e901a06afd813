"""Merging the structures and state the frontend learned after the merge analysis was written (cortex/serving/kernel.py):
child sets from a parent array or an edge list merge, with their ids shifted, and give every request the bits of its
separate run, whatever the requests try (ids past their tree, negative ids, empty trees), and so do edge lists [2, E]
(merged along their second axis) and CSR child lists (offsets shifted by the edges before them); host integer state
(SPINN's thin stack), carried vectors, running reductions and lists are refused with the reason. A 1-D table beside
the state table merges."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import cortex
from cortex.examples import structures as S
from cortex.ir import nodes as ir
from cortex.serving import plan_for
from cortex.serving.forest import ForestStats, run_forest, tail_sessions
from cortex.serving.kernel import NotMergeable, analyze

torch = pytest.importorskip("torch")

E2E = Path(__file__).resolve().parents[1] / "e2e"
sys.path.insert(0, str(E2E))  # the e2e tests' user models (child sets, carried values)

import carried_models  # noqa: E402
import test_carried_values as carried  # noqa: E402
import test_child_sets as sets  # noqa: E402


def _convert_child_set(tmp_path, encoding, agg, dynamo=False) -> str:
    if dynamo:
        pytest.importorskip("onnxscript")
        torch._dynamo.reset()
    torch.manual_seed(0)
    module = sets._module(encoding, agg, dynamo, tmp_path).eval()
    src = tmp_path / "model.onnx"
    sets._export(module, encoding, dynamo, src)
    out = tmp_path / "model.cortex.onnx"
    report = cortex.convert(src, out)
    assert [r.converted for r in report.regions] == [True], report.regions[0].reason
    return str(out)


def _check(path, requests, alone=()):
    """Every request gets what its own run gives (the same bits, or an error where its own run fails); the requests
    in `alone` ran by themselves, all others in one merged forest."""
    plan = plan_for(path)
    assert plan.mergeable, plan.reason
    session = cortex.InferenceSession(path)
    names = [i.name for i in session.get_inputs()]
    requests = [{n: r[n] for n in names} for r in requests]
    stats = ForestStats()
    results = run_forest(plan, session, requests, stats=stats, tail=tail_sessions(plan, path))
    for k, (request, got) in enumerate(zip(requests, results)):
        try:
            want = session.run(None, request)
        except Exception as e:  # noqa: BLE001 - its own error, and only its own
            assert isinstance(got, Exception), f"request {k}: its own run fails ({e}), merged it did not"
            assert k in alone
            continue
        assert not isinstance(got, Exception), f"request {k}: {got}"
        for a, b in zip(got, want):
            assert a.shape == b.shape and np.array_equal(a, b, equal_nan=True), f"request {k}"
    assert stats.merged_requests == len(requests) - len(alone), stats
    assert stats.alone == len(alone), stats
    assert stats.fallbacks == 0
    return session


def _trees(encoding, count=8, seed=0):
    """SST trees (where the data is) and random n-ary trees of every small size, DAGs where the encoding lists
    predecessors."""
    rng = np.random.default_rng(seed)
    trees = []
    if S.sst_dir_default() is not None:
        trees += [S.nary_from_forest(S.batch([t])) for t in S.read_sst(S.sst_dir_default(), split="test",
                                                                         vocab_size=sets.V, limit=count)]
    trees += [S.random_nary_tree(n, k, rng, sets.V) for n, k in ((1, 2), (2, 3), (9, 3), (40, 5), (5, 1))]
    if encoding != "parent":
        trees += [S.random_dag(n, 3, rng, sets.V) for n in (7, 30)]
    return [sets._feeds(encoding, t) for t in trees]


def _empty(encoding):
    feeds = {"words": np.zeros(0, np.int64), "order": np.zeros(0, np.int64)}
    if encoding == "parent":
        feeds["parent"] = np.zeros(0, np.int64)
    elif encoding == "csr":
        feeds["offsets"], feeds["indices"] = np.zeros(1, np.int64), np.zeros(0, np.int64)
    elif encoding == "edge_index":
        feeds["edge_index"] = np.zeros((2, 0), np.int64)
    else:
        feeds["src"], feeds["dst"] = np.zeros(0, np.int64), np.zeros(0, np.int64)
    return feeds


# ---- child sets that merge ----------------------------------------------------------------------------------------

MERGING = [("parent", sets.MaskMatmul, False), ("parent", sets.WhereMax, False), ("parent", sets.BoolIndexSum, True),
           ("edges", sets.EdgesSum, False), ("edge_index", sets.EdgeIndexSum, False),
           ("edge_index", sets.EdgeIndexMaskAttention, True), ("edge_index", sets.EdgeIndexWhereMean, False),
           ("csr", sets.CsrSlice, False), ("csr", sets.CsrItemSlice, True), ("csr", sets.CsrRangeMask, False),
           ("csr", sets.CsrAttention, True)]
SHIFTED = {"parent": {"parent", "order"}, "edges": {"src", "dst", "order"}, "edge_index": {"edge_index", "order"},
           "csr": {"indices", "order"}}


@pytest.mark.parametrize("encoding,agg,dynamo", MERGING,
                         ids=[f"{e}-{a.__name__}-{'dynamo' if d else 'script'}" for e, a, d in MERGING])
def test_child_sets_merge_exactly(tmp_path, encoding, agg, dynamo):
    path = _convert_child_set(tmp_path, encoding, agg, dynamo)
    plan = plan_for(path)
    shifted = {i.name for i in plan.inputs if i.node_ids}
    assert shifted == SHIFTED[encoding], plan.describe()
    assert [i.name for i in plan.inputs if i.offsets_into] == (["offsets"] if encoding == "csr" else [])
    trees = _trees(encoding)
    _check(path, trees + [_empty(encoding)] + trees[:3])


def _attacks(encoding, tree):
    """Requests whose ids leave their own tree (each merged, unshifted or shifted wrongly, would reach a neighbour's
    nodes) and requests whose odd ids are harmless. -> (name, feeds, must run alone)."""
    n = tree["words"].shape[0]
    out = []
    if encoding == "parent":
        for name, value, alone in (("past the tree", n + 1, True), ("at n", n, True), ("far past", 10 ** 6, True),
                                   ("negative", -7, False), ("minus one", -1, False)):
            parent = tree["parent"].copy()
            parent[0] = value  # node 0 is a leaf somewhere in the tree: it leaves its parent's set
            out.append((name, dict(tree, parent=parent), alone))
    elif encoding == "csr":
        offsets, indices = tree["offsets"], tree["indices"]
        inner = int(np.argmax(np.diff(offsets) > 0))  # a node with children
        for name, column, value, alone in (
                ("index past the tree", "indices", np.where(np.arange(len(indices)) == 0, n, indices), True),
                ("index negative", "indices", np.where(np.arange(len(indices)) == 0, -1, indices), True),
                ("offsets from 1", "offsets", np.maximum(offsets, 1), True),
                ("last offset short", "offsets", np.concatenate([offsets[:-1], [offsets[-1] - 1]]), True),
                ("last offset past", "offsets", np.concatenate([offsets[:-1], [offsets[-1] + 1]]), True),
                ("an offset negative", "offsets", np.where(np.arange(n + 1) == inner, -1, offsets), True),
                ("an offset past the edges", "offsets", np.where(np.arange(n + 1) == inner, 10 ** 6, offsets), True),
                ("one offset fewer", "offsets", offsets[:-1], True),
                ("offsets going back", "offsets", np.where(np.arange(n + 1) == inner + 1, 0, offsets), False)):
            out.append((name, dict(tree, **{column: np.ascontiguousarray(value, dtype=np.int64)}), alone))
    elif encoding == "edge_index":  # row 0 the sources (read as rows), row 1 the targets (selected by)
        for name, row, value, alone in (("source past the tree", 0, n + 1, True), ("source negative", 0, -1, True),
                                        ("target past the tree", 1, n, True), ("target negative", 1, -3, False),
                                        ("target far past", 1, 2 ** 62, True)):
            edges = tree["edge_index"].copy()
            edges[row, 0] = value
            out.append((name, dict(tree, edge_index=edges), alone))
    else:
        for name, column, value, alone in (("src past the tree", "src", n + 1, True), ("src negative", "src", -1, True),
                                           ("dst past the tree", "dst", n, True), ("dst negative", "dst", -3, False)):
            edges = tree[column].copy()
            edges[0] = value
            out.append((name, dict(tree, **{column: edges}), alone))
    return out


@pytest.mark.parametrize("encoding,agg", [("parent", sets.MaskMatmul), ("edges", sets.EdgesSum),
                                          ("edge_index", sets.EdgeIndexMaskSum), ("csr", sets.CsrSlice),
                                          ("csr", sets.CsrRangeMask)])
def test_ids_outside_their_tree_run_alone(tmp_path, encoding, agg):
    """Each attack sits between good requests; those that could cross trees run alone (with their own result or
    their own error), the harmless ones merge; every answer is the bits of the request's own run."""
    path = _convert_child_set(tmp_path, encoding, agg)
    rng = np.random.default_rng(1)
    good = [sets._feeds(encoding, S.random_nary_tree(int(n), 3, rng, sets.V)) for n in (6, 11, 4)]
    for name, attack, alone in _attacks(encoding, sets._feeds(encoding, S.random_nary_tree(9, 3, rng, sets.V))):
        _check(path, [good[0], attack, good[1], good[2]], alone={1} if alone else set())


def test_unshifted_ids_would_cross_trees(tmp_path):
    """The exactness tests can see a wrong merge: the same forest with parent ids not shifted gives the second
    request other numbers than its own run."""
    path = _convert_child_set(tmp_path, "parent", sets.MaskMatmul)
    session = cortex.InferenceSession(path)
    rng = np.random.default_rng(2)
    a, b = (sets._feeds("parent", S.random_nary_tree(n, 3, rng, sets.V)) for n in (7, 7))
    naive = {k: np.concatenate([a[k], b[k] + (7 if k == "order" else 0)]) for k in a}
    wrong = session.run(None, naive)[0][7:]
    assert not np.array_equal(wrong, session.run(None, b)[0])


def test_child_set_arrays_of_one_request_must_agree(tmp_path):
    """src and dst count the same edges, a parent array the nodes: a request whose arrays disagree runs alone (merged,
    its edges would pair with a neighbour's, its parents name another request's nodes)."""
    path = _convert_child_set(tmp_path, "edges", sets.EdgesSum)
    plan = plan_for(path)
    from cortex.serving import check_request
    tree = sets._feeds("edges", S.random_nary_tree(8, 3, np.random.default_rng(3), sets.V))
    assert check_request(plan, tree) is None
    assert "rows" in check_request(plan, dict(tree, dst=tree["dst"][:-1]))
    (tmp_path / "parent").mkdir()
    parent_path = _convert_child_set(tmp_path / "parent", "parent", sets.MaskMatmul)
    tree = sets._feeds("parent", S.random_nary_tree(8, 3, np.random.default_rng(3), sets.V))
    longer = dict(tree, parent=np.concatenate([tree["parent"], [0]]))  # one row per node: a ninth parent is not
    assert "rows" in check_request(plan_for(parent_path), longer)


def test_an_edge_list_of_another_shape_runs_alone(tmp_path):
    """An edge list [2, E] is merged along its second axis; a request whose list has another number of rows (a third,
    or the edges along the first axis) runs alone, and its own run gives it ONNX Runtime's error."""
    path = _convert_child_set(tmp_path, "edge_index", sets.EdgeIndexSum)
    plan = plan_for(path)
    assert [i.axis for i in plan.inputs if i.name == "edge_index"] == [1], plan.describe()
    from cortex.serving import check_request
    rng = np.random.default_rng(6)
    tree = sets._feeds("edge_index", S.random_nary_tree(8, 3, rng, sets.V))
    assert check_request(plan, tree) is None
    three = dict(tree, edge_index=np.concatenate([tree["edge_index"], tree["edge_index"][:1]]))
    flipped = dict(tree, edge_index=np.ascontiguousarray(tree["edge_index"].T))
    for odd in (three, flipped):
        assert "shape" in check_request(plan, odd)
    good = [sets._feeds("edge_index", S.random_nary_tree(int(n), 3, rng, sets.V)) for n in (5, 12)]
    _check(path, [good[0], three, good[1], flipped, good[0]], alone={1, 3})


def _edited(path, edit) -> str:
    import onnx
    model = onnx.load(path)
    edit(model.graph)
    out = path.replace(".cortex.onnx", ".edited.cortex.onnx")
    onnx.save(model, out)
    return out


def test_an_edge_list_read_outside_the_recursion_runs_per_request_or_is_refused(tmp_path):
    """Only a recursion's child set may read an edge list [2, E] on the forest: returned or reduced by an ONNX node,
    that output is computed per request after the forest (tail.py), exact; declared with a dynamic first dimension,
    the model is not merged, and the plan says why."""
    import onnx
    from onnx import helper
    path = _convert_child_set(tmp_path, "edge_index", sets.EdgeIndexSum)

    def returned(graph):
        graph.output.append(helper.make_tensor_value_info("edge_index", onnx.TensorProto.INT64, [2, "E"]))

    def reduced(graph):
        graph.node.append(helper.make_node("ReduceMax", ["edge_index"], ["top"], keepdims=0))
        graph.output.append(helper.make_tensor_value_info("top", onnx.TensorProto.INT64, []))

    def undeclared(graph):
        dim = next(i for i in graph.input if i.name == "edge_index").type.tensor_type.shape.dim[0]
        dim.dim_param = "two"

    for edit, reason in ((returned, "returns input 'edge_index'"), (reduced, "is read by node")):
        edited = _edited(path, edit)
        plan = plan_for(edited)
        assert plan.mergeable and reason in plan.tail.reasons[0][1], plan.describe()
        _check(edited, _trees("edge_index"))
    plan = plan_for(_edited(path, undeclared))
    assert not plan.mergeable and "does not declare it so" in plan.reason, plan.reason


def test_a_mean_over_every_edge_is_refused(tmp_path):
    """A mean over all edges of the list (masked, divided by E) mixes trees: merged, E would be the forest's."""
    plan = plan_for(_convert_child_set(tmp_path, "edge_index", sets.EdgeIndexMaskMeanOverEdges))
    assert not plan.mergeable and "len(edge_index)" in plan.reason, plan.reason


# ---- refused, with the reason -------------------------------------------------------------------------------------

def test_csr_offsets_read_otherwise_are_refused(tmp_path):
    """CSR offsets merge only as the bounds of slices offsets[v] : offsets[v + 1]; read by an ONNX node besides, the
    model is not merged, and the plan says why. Returned, they are the request's own, per request after the forest
    (tail.py)."""
    import onnx
    from onnx import helper
    path = _convert_child_set(tmp_path, "csr", sets.CsrSlice)

    def returned(graph):
        graph.output.append(helper.make_tensor_value_info("offsets", onnx.TensorProto.INT64, ["N1"]))

    def reduced(graph):
        graph.node.append(helper.make_node("ReduceMax", ["offsets"], ["top"], keepdims=0))
        graph.output.append(helper.make_tensor_value_info("top", onnx.TensorProto.INT64, []))

    def gathered(graph):  # the offsets read as node ids by a head: h[offsets]
        graph.node.append(helper.make_node("Gather", ["h", "offsets"], ["picked"]))
        graph.output.append(helper.make_tensor_value_info("picked", onnx.TensorProto.FLOAT, ["N1", 8]))

    for edit, reason in ((reduced, "holds CSR offsets and node 'ReduceMax'"),
                         (gathered, "holds CSR offsets and a Gather of rows by node id")):
        plan = plan_for(_edited(path, edit))
        assert not plan.mergeable and reason in plan.reason, plan.reason
    edited = _edited(path, returned)
    plan = plan_for(edited)
    assert plan.mergeable and "returns the values of input 'offsets'" in plan.tail.reasons[0][1], plan.describe()
    _check(edited, _trees("csr"))


def _convert_carried(tmp_path, name) -> str:
    src = tmp_path / f"{name}.onnx"
    carried._export(name, src)
    out = tmp_path / f"{name}.cortex.onnx"
    report = cortex.convert(str(src), str(out))
    assert all(r.converted for r in report.regions), [r.reason for r in report.regions]
    return str(out)


CARRIED = {"ThinStackSPINN": "host integer state", "Chain": "carried",
           "ChainWhileLoop": "carried", "ChainScan": "carried",
           "ChainList": "carried", "ChainRowPool": "carried"}


@pytest.mark.parametrize("name", list(CARRIED))
def test_carried_state_is_refused(tmp_path, name):
    if carried.MODELS[name][1] == "dynamo":
        pytest.importorskip("onnxscript")
    plan = plan_for(_convert_carried(tmp_path, name))
    assert not plan.mergeable, plan.describe()
    assert CARRIED[name] in plan.reason, plan.reason


# a tree's recursion that also carries a value over its visit (a running max or sum, the last state, a list of
# states): the value is computed after the kernel from per-position rows, so per request from the request's own
POOLED = {"RunningMax": ("a running max", "a running add"), "RunningMaxWhileLoop": ("a running max",),
          "TreeLastState": ("the last value of a carried vector", "a list appended to"),
          "TreeSumPool": ("a running add",), "TreeSumPoolReversed": ("a running add",),
          "TreeReversedStepsPlusStates": ("a list appended to",)}


@pytest.mark.parametrize("name", list(POOLED))
def test_values_carried_beside_a_tree_merge_per_request(tmp_path, name):
    if carried.MODELS[name][1] == "dynamo":
        pytest.importorskip("onnxscript")
    path = _convert_carried(tmp_path, name)
    plan = plan_for(path)
    assert plan.mergeable and plan.tail is not None, plan.describe()
    reasons = plan.tail.describe()
    assert all(what in reasons for what in POOLED[name]), reasons
    rng = np.random.default_rng(5)
    trees = [S.random_tree(int(n), rng, carried_models.V) for n in (1, 5, 12, 30, 3)]
    requests = [carried._tree_feeds(t) for t in trees]
    if S.sst_dir_default() is not None:
        requests += [carried._tree_feeds(S.batch([t])) for t in
                     S.read_sst(S.sst_dir_default(), split="test", vocab_size=carried_models.V, limit=6)]
    if "Reversed" in name:  # walked from its end: a parents-first order (its steps split in request order)
        requests = [{**r, "order": r["order"][::-1].copy()} for r in requests]
    requests.append({k: np.zeros(0, np.int64) for k in ("words", "left", "right", "order")})  # the finals' inits
    # stacking an empty list fails in the empty tree's own run (ConcatFromSequence): its tail fails, it runs alone
    _check(path, requests, alone=(len(requests) - 1,) if name == "TreeReversedStepsPlusStates" else ())


def test_per_step_rows_of_a_walk_from_the_end_added_to_node_rows_are_computed_per_request(tmp_path):
    """A walk from the end's per-step rows, added row by row to the node table by a node after the recursion: merged,
    the two are counted by different units (steps, nodes), so the sum is computed per request from the request's
    own rows of each, and every request gets its own run's bits (a request whose order does not visit every node
    once fails alone, as in its own run)."""
    import onnx
    from onnx import helper

    path = _convert_carried(tmp_path, "TreeSumPoolReversed")
    model = onnx.load(path)
    kernel = next(n for n in model.graph.node if n.op_type == "EPContext")
    states, steps = kernel.output[0], next(o for o in kernel.output if "rows_of" in o)
    model.graph.node.append(helper.make_node("Add", [steps, states], ["steps_plus_states"]))
    model.graph.output.append(helper.make_tensor_value_info("steps_plus_states", onnx.TensorProto.FLOAT, None))
    edited = Path(path).with_name("edited.cortex.onnx")
    onnx.save(model, edited)
    plan = plan_for(str(edited))
    assert plan.mergeable and "'steps_plus_states' per request" in plan.describe(), plan.describe()
    rng = np.random.default_rng(7)
    requests = [carried._tree_feeds(S.random_tree(int(n), rng, carried_models.V)) for n in (1, 6, 13, 29)]
    requests = [{**r, "order": r["order"][::-1].copy()} for r in requests]
    requests.append({**requests[1], "order": requests[1]["order"][:-1].copy()})  # a node short: [5, H] + [6, H]
    _check(str(edited), requests, alone=(4,))


def test_a_batching_session_serves_a_pooled_tree(tmp_path):
    path = _convert_carried(tmp_path, "TreeSumPool")
    rng = np.random.default_rng(6)
    requests = [carried._tree_feeds(S.random_tree(int(n), rng, carried_models.V)) for n in rng.integers(1, 40, 24)]
    plain = cortex.InferenceSession(path)
    with cortex.BatchingSession(path, max_trees=8, max_delay_ms=20) as server:
        futures = [server.submit(r) for r in requests]
        for request, future in zip(requests, futures):
            (got,), (want,) = future.result(timeout=60), plain.run(None, request)
            assert got.shape == want.shape and np.array_equal(got, want)
    assert server.stats.merged_requests == len(requests) and server.stats.mean_batch > 1, server.stats


def test_a_1d_table_beside_the_state_merges(tmp_path):
    path = _convert_carried(tmp_path, "Depth1D")
    rng = np.random.default_rng(4)
    trees = [S.random_tree(int(n), rng, carried_models.V) for n in (1, 5, 12, 30, 3)]
    requests = [carried._tree_feeds(t) for t in trees]
    requests.append({k: np.zeros(0, np.int64) for k in ("words", "left", "right", "order")})
    _check(path, requests)


# ---- the IR alone: whatever the analysis does not know is refused ---------------------------------------------------

def _program(tmp_path, encoding="parent", agg=sets.MaskMatmul) -> ir.Program:
    from cortex.artifacts import cortex_nodes
    from cortex.ir.serialize import constant_specs, from_json
    import onnx
    node = cortex_nodes(onnx.load(_convert_child_set(tmp_path, encoding, agg)))[0]
    doc = node.notes["ir"]
    return from_json(doc, {n: np.zeros(s, np.float32) for n, (s, _) in constant_specs(doc).items()})


def test_ir_forms_that_are_refused(tmp_path):
    program = _program(tmp_path)
    analyze(program)  # the model itself merges
    case = program.cases[0]
    (table, row), = case.writes
    set_reduce = next(e for e in ir.walk_rows([row]) if isinstance(e, ir.SetReduce))

    def refused(p):
        with pytest.raises(NotMergeable) as e:
            analyze(p)
        return str(e.value)

    import dataclasses
    # host state, even unread
    host = dataclasses.replace(program, host_vars=(ir.HostVar("sp", ir.IConst(0)),))
    assert "host integer state" in refused(host)
    # a set selecting the members of a constant node (merged: every request's members of that id)
    const_node = dataclasses.replace(set_reduce, bounds=(ir.IConst(0),))
    rewritten = ir.transform(lambda e: const_node if e == set_reduce else e)(row)
    p = dataclasses.replace(program, cases=(dataclasses.replace(case, writes=((table, rewritten),)),))
    assert "not a node id" in refused(p)
    # a set's array also used as data (a node id picking a constant row)
    words_load = next(e for e in ir.walk([row]) if isinstance(e, ir.Load) and e.array == "words")
    as_data = ir.transform(lambda e: dataclasses.replace(e, array="parent") if e == words_load else e)(row)
    p = dataclasses.replace(program, cases=(dataclasses.replace(case, writes=((table, as_data),)),))
    assert "used as data" in refused(p)


def test_csr_slices_that_are_not_one_nodes_children_are_refused(tmp_path):
    """A CSR slice merges only as offsets[v] : offsets[v + 1] of one offsets array at a node id v (max(., 0) around
    either bound allowed); other bounds, or offsets also read as node ids, are refused with the reason."""
    import dataclasses
    program = _program(tmp_path, "csr", sets.CsrSlice)
    assert analyze(program).inputs["offsets"].rows == "offsets:indices"
    case = program.cases[0]
    (table, row), = case.writes
    set_reduce = next(e for e in ir.walk_rows([row]) if isinstance(e, ir.SetReduce))
    lo, hi = set_reduce.bounds
    v = lo.index

    def with_bounds(a, b):
        rewritten = dataclasses.replace(set_reduce, bounds=(a, b))
        new_row = ir.transform(lambda e: rewritten if e == set_reduce else e)(row)
        return dataclasses.replace(program, cases=(dataclasses.replace(case, writes=((table, new_row),)),))

    def refused(p):
        with pytest.raises(NotMergeable) as e:
            analyze(p)
        return str(e.value)

    clamp = ir.IBinary("max", hi, ir.IConst(0))
    assert analyze(with_bounds(ir.IBinary("max", ir.IConst(0), lo), clamp)).inputs["indices"].node_ids
    two = ir.Load("offsets", ir.IBinary("add", v, ir.IConst(2)))
    assert "only slices offsets[v] : offsets[v + 1]" in refused(with_bounds(lo, two))
    assert "only slices offsets[v] : offsets[v + 1]" in refused(with_bounds(lo, ir.Load("order", hi.index)))
    assert "not a node id" in refused(with_bounds(ir.Load("offsets", ir.IConst(3)),
                                                  ir.Load("offsets", ir.IBinary("add", ir.IConst(3), ir.IConst(1)))))
    # the offsets also read as a node id: the row the case writes
    target = dataclasses.replace(with_bounds(lo, hi), cases=(dataclasses.replace(case, target=lo),))
    assert "offsets" in refused(target)


@pytest.mark.parametrize("encoding,agg", [("edges", sets.EdgesSum), ("edge_index", sets.EdgeIndexSum),
                                          ("csr", sets.CsrSlice)])
def test_batching_session_serves_child_sets_with_attacks_among_them(tmp_path, encoding, agg):
    """Concurrent callers, good trees and requests whose edges leave their tree mixed: each caller gets the bits (or
    the error) of its own run, within a bounded wait."""
    import threading

    path = _convert_child_set(tmp_path, encoding, agg)
    plain = cortex.InferenceSession(path)
    rng = np.random.default_rng(5)
    requests = _trees(encoding, count=6)
    for k in range(3):
        requests += [feeds for _, feeds, _ in _attacks(encoding, sets._feeds(encoding, S.random_nary_tree(
            int(rng.integers(2, 20)), 3, rng, sets.V)))]
    rng.shuffle(requests)
    answers = [None] * len(requests)
    with cortex.BatchingSession(path, max_trees=8, max_delay_ms=20) as session:
        barrier = threading.Barrier(len(requests))

        def client(k):
            barrier.wait(30)
            try:
                answers[k] = ("ok", session.run(requests[k], timeout=60))
            except Exception as e:  # noqa: BLE001
                answers[k] = ("error", str(e))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert not any(t.is_alive() for t in threads)
        assert session.stats.merged_requests > 0
    for k, request in enumerate(requests):
        try:
            want = ("ok", plain.run(None, request))
        except Exception as e:  # noqa: BLE001
            want = ("error", str(e))
        assert answers[k][0] == want[0], (k, answers[k])
        if want[0] == "ok":
            assert all(np.array_equal(a, b) for a, b in zip(answers[k][1], want[1])), k
        else:
            assert answers[k][1] == want[1]


# ---- CSR as people write it: the count from the offsets, the table sized by them ----------------------------------

class CsrCountMean(torch.nn.Module):
    """A Child-Sum cell over CSR children written without a per-node input: the table is zeros(len(offsets) - 1, H),
    the mean divides by offsets[v + 1] - offsets[v], a leaf is a node whose count is 0 (the modelgen CSR forms)."""

    def __init__(self):
        super().__init__()
        self.leaf = torch.nn.Parameter(0.5 * torch.randn(8))
        self.U = torch.nn.Linear(8, 8)

    def forward(self, offsets, indices, order):
        h = torch.zeros(offsets.size(0) - 1, 8)
        for k in range(order.size(0)):
            v = order[k]
            kids = indices[offsets[v]:offsets[v + 1]]
            count = offsets[v + 1] - offsets[v]
            mean = h[kids].sum(0) / count.clamp(min=1).float()
            leaf = (count == 0).float()
            h[v] = leaf * self.leaf + (1 - leaf) * torch.tanh(self.U(mean))
        return h


class CsrCountMeanWhile(CsrCountMean):
    """The same cell as dynamo exports it: torch.while_loop over the order, from its end."""

    def forward(self, offsets, indices, order):
        h0 = torch.zeros(offsets.size(0) - 1, 8)

        def cond_fn(k, h):
            return k >= 0

        def body_fn(k, h):
            v = order[k.unsqueeze(0)]
            kids = indices[offsets[v].item():offsets[v + 1].item()]
            count = offsets[v + 1] - offsets[v]
            mean = h[kids].sum(0, keepdim=True) / count.clamp(min=1).float().unsqueeze(-1)
            leaf = (count == 0).float().unsqueeze(-1)
            h = h.clone()
            h[v] = leaf * self.leaf + (1 - leaf) * torch.tanh(self.U(mean))
            return k - 1, h

        _, h = torch.while_loop(cond_fn, body_fn, (torch.full((), order.size(0) - 1, dtype=torch.int64), h0))
        return h


def _convert_csr_count(tmp_path, dynamo: bool) -> str:
    torch.manual_seed(0)
    names = ["offsets", "indices", "order"]
    example = sets._feeds("csr", S.random_nary_tree(6, 3, np.random.default_rng(0), sets.V))  # edges for dynamo
    args = tuple(torch.from_numpy(example[n]) for n in names)
    src, out = tmp_path / "csr_count.onnx", tmp_path / "csr_count.cortex.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            pytest.importorskip("onnxscript")
            torch._dynamo.reset()
            order = torch.export.Dim("L", min=2)
            torch.onnx.export(CsrCountMeanWhile().eval(), args, str(src), input_names=names, dynamo=True,
                              dynamic_shapes={"offsets": {0: torch.export.Dim("N1", min=2)},
                                              "indices": {0: torch.export.Dim("E", min=2)}, "order": {0: order}})
        else:
            torch.onnx.export(torch.jit.script(CsrCountMean().eval()), args, str(src), input_names=names,
                              output_names=["h"], dynamic_axes={n: [0] for n in names}, dynamo=False)
    report = cortex.convert(str(src), str(out))
    assert [r.converted for r in report.regions] == [True], report.regions[0].reason
    return str(out)


@pytest.mark.parametrize("dynamo", [False, True], ids=["script", "dynamo"])
def test_csr_counts_and_a_table_sized_by_the_offsets_merge_exactly(tmp_path, dynamo):
    """offsets[v + 1] - offsets[v] is data (the two reads shift by the same edge base), and zeros(len(offsets) - 1,
    H) has one row per node: merged, the forest's offsets drop every request's last row but the last one's, so
    len - 1 adds up. The offsets alone count the nodes here (no per-node input)."""
    path = _convert_csr_count(tmp_path, dynamo)
    plan = plan_for(path)
    assert plan.mergeable, plan.reason
    assert plan.measures["nodes"] == "offsets" and plan.less_one == {"nodes"}, plan.describe()
    requests = _trees("csr", 8)
    empty = {"offsets": np.zeros(1, np.int64), "indices": np.zeros(0, np.int64), "order": np.zeros(0, np.int64)}
    if dynamo:
        empty = None  # dynamo's export asks for at least two nodes (its symbolic shapes): no empty tree there
    _check(path, requests + ([empty] if empty else []) + requests[:3])


def test_csr_offsets_that_lie_about_the_nodes_run_alone(tmp_path):
    """With the offsets counting the nodes, a request whose offsets are not canonical (not from 0, past the edges),
    whose order names a node past len(offsets) - 1 or that has no offsets at all runs alone, with its own result or
    error. Offsets that go back within [0, E] are harmless (an empty slice in both runs) and merge."""
    path = _convert_csr_count(tmp_path, False)
    good = _trees("csr", 2)
    tree = good[-1]
    bad = []
    shifted = dict(tree, offsets=tree["offsets"] + 1)  # not from 0
    bad.append(shifted)
    past = dict(tree, offsets=np.concatenate([tree["offsets"][:-1], [tree["offsets"][-1] + 3]]))  # past the edges
    bad.append(past)
    beyond = dict(tree, order=np.concatenate([tree["order"], [len(tree["offsets"]) + 2]]))  # a node past the tree
    bad.append(beyond)
    no_rows = {"offsets": np.zeros(0, np.int64), "indices": np.zeros(0, np.int64), "order": np.zeros(0, np.int64)}
    bad.append(no_rows)
    back = tree["offsets"].copy()
    back[1:-1] = back[1:-1][::-1]  # going back, within [0, E]
    requests = good[:3] + bad + good[3:] + [dict(tree, offsets=back)]
    _check(path, requests, alone=set(range(3, 3 + len(bad))))


def test_a_table_of_another_count_minus_one_is_refused(tmp_path):
    """zeros(len(A) - 1, H) merges only where A is the CSR offsets: of the indices (one row per edge) it would be
    the forest's edges minus one, not each request's summed."""
    import onnx
    path = _convert_csr_count(tmp_path, False)

    def measure_indices(graph):
        shape = next(n for n in graph.node if n.op_type == "Shape" and n.input[0] == "offsets")
        shape.input[0] = "indices"

    plan = plan_for(_edited(path, measure_indices))
    assert not plan.mergeable and "N - 1 rows" in plan.reason, plan.reason
    assert onnx.load(path)  # the original is untouched


def test_csr_offsets_other_than_differences_are_refused(tmp_path):
    """An offset read is the request's value plus its edge base: used as data on its own, added to another, scaled,
    compared with a constant or read at v + 2, the model is refused with the reason; the difference merges."""
    import dataclasses
    from cortex.artifacts import cortex_nodes
    from cortex.ir.serialize import constant_specs, from_json
    import onnx
    node = cortex_nodes(onnx.load(_convert_csr_count(tmp_path, False)))[0]
    doc = node.notes["ir"]
    program = from_json(doc, {n: np.zeros(s, np.float32) for n, (s, _) in constant_specs(doc).items()})
    analyze(program)
    count = next(e for case in program.cases for e in ir.walk(list(case.roots()))
                 if isinstance(e, ir.IBinary) and e.op in ("add", "sub") and
                 any(isinstance(x, ir.Load) and x.array == "offsets" for x in (e.a, e.b)))
    end = next(x for x in ir.walk([count]) if isinstance(x, ir.Load) and isinstance(x.index, ir.IBinary))
    start = next(x for x in ir.walk([count]) if isinstance(x, ir.Load) and x != end and x.array == "offsets")

    def replaced(new):
        return ir.transform(lambda e: new if e == count else e)

    def refused(new):
        p = dataclasses.replace(program, cases=tuple(
            dataclasses.replace(c, predicate=replaced(new)(c.predicate),
                                writes=tuple((t, replaced(new)(x)) for t, x in c.writes)) for c in program.cases))
        with pytest.raises(NotMergeable) as e:
            analyze(p)
        return str(e.value)

    assert "CSR offset" in refused(end)  # offsets[v + 1] as a value
    assert "CSR offset" in refused(ir.IBinary("add", end, start))  # twice the edge base
    assert "CSR offset" in refused(ir.IBinary("mul", end, ir.IConst(2)))
    v = start.index
    two_on = ir.Load("offsets", ir.IBinary("add", v, ir.IConst(2)))
    assert "computes with a node id" in refused(ir.IBinary("sub", two_on, start))
    flag = ir.ISelect(ir.Compare("gt", end, ir.IConst(3)), ir.IConst(1), ir.IConst(0))
    assert "may change when CSR offsets are shifted" in refused(flag)
    same = ir.ISelect(ir.Compare("gt", end, start), ir.IConst(1), ir.IConst(0))  # both shifted alike: merges
    analyze(dataclasses.replace(program, cases=tuple(
        dataclasses.replace(c, writes=tuple((t, replaced(same)(x)) for t, x in c.writes)) for c in program.cases)))

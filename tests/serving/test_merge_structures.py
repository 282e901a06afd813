"""Merging the structures and state the frontend learned after the merge analysis was written (cortex/serving/kernel.py):
child sets from a parent array or an edge list merge, with their ids shifted, and give every request the bits of its
separate run, whatever the requests try (ids past their tree, negative ids, empty trees); CSR child lists and [2, E]
edge lists, host integer state (SPINN's thin stack), carried vectors, running reductions and lists are refused with
the reason. A 1-D table beside the state table merges."""
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
from cortex.serving.forest import ForestStats, run_forest
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
    results = run_forest(plan, session, requests, stats=stats)
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
    else:
        feeds["src"], feeds["dst"] = np.zeros(0, np.int64), np.zeros(0, np.int64)
    return feeds


# ---- child sets that merge ----------------------------------------------------------------------------------------

MERGING = [("parent", sets.MaskMatmul, False), ("parent", sets.WhereMax, False), ("parent", sets.BoolIndexSum, True),
           ("edges", sets.EdgesSum, False)]


@pytest.mark.parametrize("encoding,agg,dynamo", MERGING,
                         ids=[f"{e}-{a.__name__}-{'dynamo' if d else 'script'}" for e, a, d in MERGING])
def test_child_sets_merge_exactly(tmp_path, encoding, agg, dynamo):
    path = _convert_child_set(tmp_path, encoding, agg, dynamo)
    plan = plan_for(path)
    shifted = {i.name for i in plan.inputs if i.node_ids}
    assert shifted == ({"parent", "order"} if encoding == "parent" else {"src", "dst", "order"}), plan.describe()
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
    else:
        for name, column, value, alone in (("src past the tree", "src", n + 1, True), ("src negative", "src", -1, True),
                                           ("dst past the tree", "dst", n, True), ("dst negative", "dst", -3, False)):
            edges = tree[column].copy()
            edges[0] = value
            out.append((name, dict(tree, **{column: edges}), alone))
    return out


@pytest.mark.parametrize("encoding,agg", [("parent", sets.MaskMatmul), ("edges", sets.EdgesSum)])
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


# ---- refused, with the reason -------------------------------------------------------------------------------------

REFUSED_SETS = [("csr", sets.CsrSlice, "a CSR child list"), ("edge_index", sets.EdgeIndexSum, "an edge list [2, E]")]


@pytest.mark.parametrize("encoding,agg,reason", REFUSED_SETS, ids=[e for e, _, _ in REFUSED_SETS])
def test_csr_and_edge_index_are_refused(tmp_path, encoding, agg, reason):
    plan = plan_for(_convert_child_set(tmp_path, encoding, agg))
    assert not plan.mergeable and reason in plan.reason, plan.reason


def _convert_carried(tmp_path, name) -> str:
    src = tmp_path / f"{name}.onnx"
    carried._export(name, src)
    out = tmp_path / f"{name}.cortex.onnx"
    report = cortex.convert(str(src), str(out))
    assert all(r.converted for r in report.regions), [r.reason for r in report.regions]
    return str(out)


CARRIED = {"ThinStackSPINN": "host integer state", "Chain": "carried",
           "ChainWhileLoop": "carried", "ChainScan": "carried",
           "ChainList": "carried", "RunningMax": "a running max", "RunningMaxWhileLoop": "a running max"}


@pytest.mark.parametrize("name", list(CARRIED))
def test_carried_state_is_refused(tmp_path, name):
    if carried.MODELS[name][1] == "dynamo":
        pytest.importorskip("onnxscript")
    plan = plan_for(_convert_carried(tmp_path, name))
    assert not plan.mergeable, plan.describe()
    assert CARRIED[name] in plan.reason, plan.reason


def test_a_1d_table_beside_the_state_merges(tmp_path):
    path = _convert_carried(tmp_path, "Depth1D")
    rng = np.random.default_rng(4)
    trees = [S.random_tree(int(n), rng, carried_models.V) for n in (1, 5, 12, 30, 3)]
    requests = [carried._tree_feeds(t) for t in trees]
    requests.append({k: np.zeros(0, np.int64) for k in ("words", "left", "right", "order")})
    _check(path, requests)


# ---- the IR alone: whatever the analysis does not know is refused ---------------------------------------------------

def _program(tmp_path) -> ir.Program:
    from cortex.artifacts import cortex_nodes
    from cortex.ir.serialize import constant_specs, from_json
    import onnx
    node = cortex_nodes(onnx.load(_convert_child_set(tmp_path, "parent", sets.MaskMatmul)))[0]
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


def test_batching_session_serves_child_sets_with_attacks_among_them(tmp_path):
    """Concurrent callers, good trees and requests whose edges leave their tree mixed: each caller gets the bits (or
    the error) of its own run, within a bounded wait."""
    import threading

    path = _convert_child_set(tmp_path, "edges", sets.EdgesSum)
    plain = cortex.InferenceSession(path)
    rng = np.random.default_rng(5)
    requests = _trees("edges", count=6)
    for k in range(3):
        requests += [feeds for _, feeds, _ in _attacks("edges", sets._feeds("edges", S.random_nary_tree(
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

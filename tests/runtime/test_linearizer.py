"""cortex::Linearizer (csrc/runtime/linearize.h) against a Python reference of
"Linearizer semantics" (docs/contracts.md), through cortex._C."""

import os
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _build_c import load_C  # noqa: E402

_C = load_C()
pytestmark = pytest.mark.skipif(_C is None, reason="cortex._C is not built (python tests/_build_c.py)")


# ----------------------------------------------------------------------------- reference


def _batches(levels, case_id):
    """Batches ordered by level, then case; positions increasing inside a batch."""
    groups = {}
    for p, (lv, c) in enumerate(zip(levels, case_id)):
        groups.setdefault((lv, c), []).append(p)
    return [(lv, c, ps) for (lv, c), ps in sorted(groups.items())]


def ref_visit(num_nodes, node, case_id, reads):
    """Returns (valid, num_levels, batches) for visit mode (Loop semantics)."""
    L = len(node)
    first = {}
    for p, v in enumerate(node):
        if v == -1:  # writes no state row
            continue
        if v in first:
            return False, 0, []
        first[v] = p
    levels = []
    for p in range(L):
        lv = 0
        for r in reads[p]:
            if r < 0 or r not in first:
                continue
            q = first[r]
            if q == p:  # its own row, before writing it: the initial state
                continue
            if q > p:
                return False, 0, []
            lv = max(lv, levels[q] + 1)
        levels.append(lv)
    return True, (max(levels) + 1 if L else 0), _batches(levels, case_id)


def ref_dag(num_nodes, case_id, reads):
    """Returns (num_levels, batches), or raises ValueError naming the cycle nodes set."""
    N = num_nodes
    level = [None] * N
    # memoized DFS with an explicit stack (reference only; small inputs)
    state = [0] * N  # 0 new, 1 on stack, 2 done
    for s in range(N):
        if state[s]:
            continue
        stack = [(s, 0)]
        state[s] = 1
        while stack:
            v, k = stack[-1]
            rs = [r for r in reads[v] if r >= 0]
            if k < len(rs):
                stack[-1] = (v, k + 1)
                r = rs[k]
                if state[r] == 1:
                    raise ValueError("cycle")
                if state[r] == 0:
                    state[r] = 1
                    stack.append((r, 0))
            else:
                level[v] = 0 if not rs else 1 + max(level[r] for r in rs)
                state[v] = 2
                stack.pop()
    return (max(level) + 1 if N else 0), _batches(level, case_id)


def nodes_on_cycles(num_nodes, reads):
    """Nodes that lie on some cycle of the read graph (Tarjan SCC, iterative)."""
    N = num_nodes
    adj = [[r for r in reads[v] if r >= 0] for v in range(N)]
    index = [None] * N
    low = [0] * N
    on = [False] * N
    st_, out, counter = [], set(), 0
    for s in range(N):
        if index[s] is not None:
            continue
        work = [(s, 0)]
        while work:
            v, k = work[-1]
            if k == 0 and index[v] is None:
                index[v] = low[v] = counter
                counter += 1
                st_.append(v)
                on[v] = True
            if k < len(adj[v]):
                work[-1] = (v, k + 1)
                w = adj[v][k]
                if index[w] is None:
                    work.append((w, 0))
                elif on[w]:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = st_.pop()
                        on[w] = False
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1 or v in adj[v]:
                        out.update(comp)
    return out


def as_batches(res):
    off, pos = res["batch_offsets"], res["positions"]
    return [(int(res["batch_level"][b]), int(res["batch_case"][b]), [int(p) for p in pos[off[b]:off[b + 1]]])
            for b in range(len(res["batch_level"]))]


def check_schedule_shape(res, L):
    off = res["batch_offsets"]
    assert off.dtype == np.int64 and res["positions"].dtype == np.int64
    assert res["batch_level"].dtype == np.int32 and res["batch_case"].dtype == np.int32
    assert off[0] == 0 and len(off) == len(res["batch_level"]) + 1 == len(res["batch_case"]) + 1
    if res["valid"]:
        assert off[-1] == L == len(res["positions"])
        assert sorted(res["positions"].tolist()) == list(range(L))
        assert np.all(np.diff(off) > 0)


def run_visit(num_nodes, node, case_id, num_cases, reads, K=None):
    L = len(node)
    K = (max((len(r) for r in reads), default=0) if K is None else K)
    R = np.full((L, K), -1, np.int64)
    for p, rs in enumerate(reads):
        R[p, :len(rs)] = rs
    return _C.linearize_visit(num_nodes, np.asarray(node, np.int64), np.asarray(case_id, np.int32), num_cases, R)


def run_dag(num_nodes, case_id, num_cases, reads, K=None):
    K = (max((len(r) for r in reads), default=0) if K is None else K)
    R = np.full((num_nodes, K), -1, np.int64)
    for p, rs in enumerate(reads):
        R[p, :len(rs)] = rs
    return _C.linearize_dag(num_nodes, np.asarray(case_id, np.int32), num_cases, R)


def compare_visit(num_nodes, node, case_id, num_cases, reads):
    res = run_visit(num_nodes, node, case_id, num_cases, reads)
    valid, nl, batches = ref_visit(num_nodes, list(node), list(case_id), reads)
    check_schedule_shape(res, len(node))
    assert res["valid"] == valid
    if valid:
        assert res["num_levels"] == nl
        assert as_batches(res) == batches
    else:
        assert len(res["batch_level"]) == 0
    return res


def compare_dag(num_nodes, case_id, num_cases, reads):
    try:
        nl, batches = ref_dag(num_nodes, list(case_id), reads)
    except ValueError:
        cyc = nodes_on_cycles(num_nodes, reads)
        assert cyc
        with pytest.raises(ValueError, match="cycle") as ei:
            run_dag(num_nodes, case_id, num_cases, reads)
        msg = str(ei.value)
        named = int(msg.split("through node ")[1].split()[0])
        assert named in cyc, (msg, cyc)
        return None
    res = run_dag(num_nodes, case_id, num_cases, reads)
    check_schedule_shape(res, num_nodes)
    assert res["valid"] and res["num_levels"] == nl
    assert as_batches(res) == batches
    return res


# ----------------------------------------------------------------------------- strategies


@st.composite
def forests(draw, max_nodes=40):
    """Random forests (children before parents in id order not required): returns (N, children lists)."""
    N = draw(st.integers(0, max_nodes))
    K = draw(st.integers(1, 3))
    perm = draw(st.permutations(range(N)))  # perm[i] = node id of the i-th created node
    children = [[] for _ in range(N)]
    free = []  # roots so far (as created indices)
    for i in range(N):
        k = draw(st.integers(0, min(K, len(free))))
        picks = draw(st.lists(st.sampled_from(free), min_size=k, max_size=k, unique=True)) if k else []
        for c in picks:
            free.remove(c)
        children[perm[i]] = [perm[c] for c in picks]
        free.append(i)
    return N, K, children


def topo_order(N, children):
    order, done = [], [False] * N
    for s in range(N):
        stack = [(s, False)]
        while stack:
            v, expanded = stack.pop()
            if done[v]:
                continue
            if expanded:
                done[v] = True
                order.append(v)
            else:
                stack.append((v, True))
                stack.extend((c, False) for c in children[v] if not done[c])
    return order


# ----------------------------------------------------------------------------- explicit cases


def test_visit_single_tree():
    # 0,1 leaves -> 2 ; 3 leaf ; 2,3 -> 4 ; cases: leaves 0, internal 1
    res = compare_visit(5, [0, 1, 3, 2, 4], [0, 0, 0, 1, 1], 2, [[-1, -1], [-1, -1], [-1, -1], [0, 1], [2, 3]])
    assert res["valid"] and res["num_levels"] == 3
    assert as_batches(res) == [(0, 0, [0, 1, 2]), (1, 1, [3]), (2, 1, [4])]


def test_visit_reads_of_unlisted_nodes_are_level_zero():
    res = compare_visit(4, [2, 3], [0, 0], 1, [[0, 1], [2, 0]])
    assert as_batches(res) == [(0, 0, [0]), (1, 0, [1])]


def test_visit_invalid_duplicate_and_forward_reads():
    assert not compare_visit(3, [0, 1, 0], [0, 0, 0], 1, [[], [], []])["valid"]
    assert not compare_visit(3, [0, 1], [0, 0], 1, [[1], []])["valid"]  # reads a node listed later
    assert compare_visit(3, [0, 1], [0, 0], 1, [[], [1]])["valid"]  # reads its own row first: the initial state
    assert compare_visit(3, [0, -1, 1], [0, 0, 0], 1, [[], [0], [0]])["valid"]  # -1: a position writing no row


def test_visit_empty_and_no_reads():
    res = compare_visit(0, [], [], 1, [])
    assert res["valid"] and res["num_levels"] == 0 and len(res["batch_level"]) == 0
    res = _C.linearize_visit(3, np.array([2, 0, 1]), np.array([1, 0, 1], np.int32), 2, np.zeros((3, 0), np.int64))
    assert as_batches(res) == [(0, 0, [1]), (0, 1, [0, 2])]


def test_visit_errors():
    R = np.full((2, 1), -1, np.int64)
    with pytest.raises(ValueError, match="out of range"):
        _C.linearize_visit(2, np.array([0, 2]), np.zeros(2, np.int32), 1, R)
    with pytest.raises(ValueError, match="out of range"):
        _C.linearize_visit(2, np.array([0, -2]), np.zeros(2, np.int32), 1, R)
    with pytest.raises(ValueError, match="case_id"):
        _C.linearize_visit(2, np.array([0, 1]), np.array([0, 1], np.int32), 1, R)
    with pytest.raises(ValueError, match="reads"):
        _C.linearize_visit(2, np.array([0, 1]), np.zeros(2, np.int32), 1, np.array([[-1], [5]]))
    with pytest.raises(ValueError, match="reads"):
        _C.linearize_visit(2, np.array([0, 1]), np.zeros(2, np.int32), 1, np.array([[-2], [0]]))
    with pytest.raises(ValueError):
        _C.linearize_visit(2, np.array([0, 1]), np.zeros(3, np.int32), 1, R)
    # range errors win over invalidity
    with pytest.raises(ValueError):
        _C.linearize_visit(2, np.array([0, 0, 7]), np.zeros(3, np.int32), 1, np.full((3, 1), -1))


def test_dag_basic_and_shared_children():
    # 0,1 leaves; 2 = f(0,1); 3 = f(0,0) (shared, duplicate read); 4 = f(2,3)
    res = compare_dag(5, [0, 0, 1, 1, 2], 3, [[], [], [0, 1], [0, 0], [2, 3]])
    assert as_batches(res) == [(0, 0, [0, 1]), (1, 1, [2, 3]), (2, 2, [4])]


def test_dag_cycle_errors_name_a_cycle_node():
    with pytest.raises(ValueError, match="cycle through node 1"):
        run_dag(3, [0, 0, 0], 1, [[], [1], []])  # self loop
    # 0 <- 1 <- 2 <- 3 <- 1 ; node 4 reads into the cycle but is not on it
    compare_dag(5, [0] * 5, 1, [[], [0, 3], [1], [2], [3]])


def test_dag_errors():
    with pytest.raises(ValueError, match="out of range"):
        _C.linearize_dag(2, np.zeros(2, np.int32), 1, np.array([[-1], [2]]))
    with pytest.raises(ValueError):
        _C.linearize_dag(2, np.zeros(3, np.int32), 1, np.full((2, 1), -1))
    with pytest.raises(ValueError, match="case_id"):
        _C.linearize_dag(2, np.array([0, 3], np.int32), 2, np.full((2, 1), -1))


def test_long_chains_100k():
    N = 100_000
    # dag: node p reads p-1
    R = np.arange(-1, N - 1, dtype=np.int64).reshape(N, 1)
    res = _C.linearize_dag(N, np.zeros(N, np.int32), 1, R)
    assert res["valid"] and res["num_levels"] == N and len(res["batch_level"]) == N
    assert np.array_equal(res["positions"], np.arange(N))
    # reversed ids: node p reads p+1
    R2 = np.arange(1, N + 1, dtype=np.int64).reshape(N, 1)
    R2[-1, 0] = -1
    res = _C.linearize_dag(N, np.zeros(N, np.int32), 1, R2)
    assert res["num_levels"] == N and np.array_equal(res["positions"], np.arange(N)[::-1])
    # one big cycle
    R3 = R.copy()
    R3[0, 0] = N - 1
    with pytest.raises(ValueError, match="cycle"):
        _C.linearize_dag(N, np.zeros(N, np.int32), 1, R3)
    # visit mode: chain in order
    res = _C.linearize_visit(N, np.arange(N), np.zeros(N, np.int32), 1, R)
    assert res["valid"] and res["num_levels"] == N
    # visit mode: reversed order is invalid
    res = _C.linearize_visit(N, np.arange(N)[::-1].copy(), np.zeros(N, np.int32), 1, R)
    assert not res["valid"]


def test_many_cases_few_positions():
    res = compare_visit(3, [2, 0, 1], [100000, 5, 100000], 200000, [[], [], [2]])
    assert as_batches(res) == [(0, 5, [1]), (0, 100000, [0]), (1, 100000, [2])]


def test_one_dimensional_reads_is_k1():
    res = _C.linearize_visit(3, np.array([0, 1, 2]), np.zeros(3, np.int32), 1, np.array([-1, 0, 1]))
    assert res["num_levels"] == 3


# ----------------------------------------------------------------------------- properties


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(forests(), st.data())
def test_visit_topological_orders_match_reference(forest, data):
    N, K, children = forest
    C = data.draw(st.integers(1, 4))
    case = [data.draw(st.integers(0, C - 1)) for _ in range(N)]
    order = topo_order(N, children)
    if data.draw(st.booleans()):  # a different valid order: level order reversed within levels is also topological
        order = sorted(order, key=lambda v: (ref_depth(v, children), data.draw(st.integers(0, 3))))
    reads = [children[v] for v in order]
    res = compare_visit(N, order, [case[v] for v in order], C, reads)
    assert res["valid"]


def ref_depth(v, children):
    # height above leaves (iterative)
    memo = {}
    stack = [v]
    while stack:
        u = stack[-1]
        pend = [c for c in children[u] if c not in memo]
        if pend:
            stack.extend(pend)
            continue
        memo[u] = 0 if not children[u] else 1 + max(memo[c] for c in children[u])
        stack.pop()
    return memo[v]


@SETTINGS
@given(forests(), st.data())
def test_visit_mutated_orders_match_reference(forest, data):
    """Random orders, subsets, duplicates, reversals: valid or not, _C agrees with the reference."""
    N, K, children = forest
    C = data.draw(st.integers(1, 3))
    order = topo_order(N, children)
    kind = data.draw(st.sampled_from(["shuffle", "subset", "dup", "reverse", "swap"]))
    if kind == "shuffle":
        order = data.draw(st.permutations(order))
    elif kind == "subset" and order:
        keep = data.draw(st.lists(st.booleans(), min_size=len(order), max_size=len(order)))
        order = [v for v, k in zip(order, keep) if k]
    elif kind == "dup" and order:
        i = data.draw(st.integers(0, len(order) - 1))
        j = data.draw(st.integers(0, len(order)))
        order = order[:j] + [order[i]] + order[j:]
    elif kind == "reverse":
        order = order[::-1]
    elif kind == "swap" and len(order) > 1:
        i = data.draw(st.integers(0, len(order) - 2))
        order[i], order[i + 1] = order[i + 1], order[i]
    case = [data.draw(st.integers(0, C - 1)) for _ in order]
    # sometimes a node also reads nodes outside the forest structure (random extra reads)
    reads = []
    for v in order:
        rs = list(children[v])
        if N and data.draw(st.integers(0, 9)) == 0:
            rs.append(data.draw(st.integers(-1, N - 1)))
        reads.append(rs)
    compare_visit(N, order, case, C, reads)


@SETTINGS
@given(st.data())
def test_visit_arbitrary_sequences_match_reference(data):
    N = data.draw(st.integers(0, 25))
    L = data.draw(st.integers(0, 30)) if N else 0
    K = data.draw(st.integers(0, 3))
    C = data.draw(st.integers(1, 3))
    node = [data.draw(st.integers(0, N - 1)) for _ in range(L)]
    case = [data.draw(st.integers(0, C - 1)) for _ in range(L)]
    reads = [[data.draw(st.integers(-1, N - 1)) for _ in range(K)] for _ in range(L)]
    res = run_visit(N, node, case, C, reads, K=K)
    valid, nl, batches = ref_visit(N, node, case, reads)
    check_schedule_shape(res, L)
    assert res["valid"] == valid
    if valid:
        assert res["num_levels"] == nl and as_batches(res) == batches


@st.composite
def dags(draw, max_nodes=30, cyclic=False):
    N = draw(st.integers(1 if cyclic else 0, max_nodes))
    K = draw(st.integers(1, 3))
    perm = draw(st.permutations(range(N)))  # topological rank -> node id
    reads = []
    rank = {v: i for i, v in enumerate(perm)}
    for v in range(N):
        rs = []
        for _ in range(K):
            if rank[v] > 0 and draw(st.booleans()):
                rs.append(perm[draw(st.integers(0, rank[v] - 1))])  # shared children allowed
            else:
                rs.append(-1)
        reads.append(rs)
    if cyclic:
        # add back edges
        for _ in range(draw(st.integers(1, 3))):
            v = draw(st.integers(0, N - 1))
            u = perm[draw(st.integers(rank[v], N - 1))]  # u at or after v: u reads... v reads u
            reads[v][draw(st.integers(0, K - 1))] = u
    return N, K, reads


@SETTINGS
@given(dags(), st.data())
def test_dag_matches_reference(dag, data):
    N, K, reads = dag
    C = data.draw(st.integers(1, 4))
    case = [data.draw(st.integers(0, C - 1)) for _ in range(N)]
    compare_dag(N, case, C, reads)


@SETTINGS
@given(dags(cyclic=True), st.data())
def test_dag_with_back_edges_matches_reference(dag, data):
    N, K, reads = dag
    C = data.draw(st.integers(1, 2))
    case = [data.draw(st.integers(0, C - 1)) for _ in range(N)]
    compare_dag(N, case, C, reads)


@SETTINGS
@given(dags())
def test_dag_equals_visit_of_its_topological_order(dag):
    """A DAG whose positions are visited in topological order gives the same levels in both modes."""
    N, K, reads = dag
    res = compare_dag(N, [0] * N, 1, reads)
    order = topo_order(N, [[r for r in rs if r >= 0] for rs in reads])
    res_v = compare_visit(N, order, [0] * N, 1, [reads[v] for v in order])
    lv_dag = {}
    for lv, _, ps in as_batches(res):
        for p in ps:
            lv_dag[p] = lv
    for lv, _, ps in as_batches(res_v):
        for p in ps:
            assert lv_dag[order[p]] == lv


# ----------------------------------------------------------------------------- lanes


@SETTINGS
@given(st.lists(forests(max_nodes=15), min_size=1, max_size=6), st.integers(2, 4), st.data())
def test_lanes_keep_trees_whole_and_the_batch_order(trees, max_lanes, data):
    # a forest of independent trees (ids offset per tree), visited in one topological order: the lanes hold every
    # position once, never split a tree (a read's writer is in the reader's lane), keep the schedule's batch order
    N, children = 0, []
    for n, _, ch in trees:
        children += [[c + N for c in kids] for kids in ch]
        N += n
    order = topo_order(N, children)
    if data.draw(st.booleans()):
        order = sorted(order, key=lambda v: (ref_depth(v, children), data.draw(st.integers(0, 3))))
    C = data.draw(st.integers(1, 3))
    case = np.array([data.draw(st.integers(0, C - 1)) for _ in order], np.int32)
    K = max([len(c) for c in children] + [1])
    reads = np.full((len(order), K), -1, np.int64)
    for q, v in enumerate(order):
        reads[q, :len(children[v])] = children[v]
    node = np.array(order, np.int64)
    whole = _C.linearize_visit(N, node, case, C, reads)
    lanes = _C.split_lanes(N, node, case, C, reads, max_lanes)
    if not lanes:
        return
    assert 2 <= len(lanes) <= max_lanes
    lane_of = {}
    for k, lane in enumerate(lanes):
        assert lane["valid"]
        for q in lane["positions"]:
            assert q not in lane_of
            lane_of[int(q)] = k
        levels = list(lane["batch_level"])
        assert levels == sorted(levels)
        for b in range(len(levels)):  # each lane batch is part of one whole batch: its level and case
            ps = lane["positions"][lane["batch_offsets"][b]:lane["batch_offsets"][b + 1]]
            assert len(ps) and list(ps) == sorted(ps)
            assert {int(case[q]) for q in ps} == {int(lane["batch_case"][b])}
    assert sorted(lane_of) == list(range(len(order)))
    writer = {v: q for q, v in enumerate(order)}
    for q, v in enumerate(order):
        for c in children[v]:
            assert lane_of[writer[c]] == lane_of[q]
    loads = np.bincount(list(lane_of.values()))
    assert 4 * loads.max() <= 3 * len(order)  # else not cut: one part would hold most of the work
    assert whole["valid"]


def test_lanes_leave_one_tree_whole():
    # one tree: nothing to split; two equal trees: two lanes
    node = np.array([0, 1, 2], np.int64)
    reads = np.array([[-1, -1], [-1, -1], [0, 1]], np.int64)
    assert _C.split_lanes(3, node, np.zeros(3, np.int32), 1, reads, 2) == []
    node2 = np.array([0, 1, 2, 3, 4, 5], np.int64)
    reads2 = np.array([[-1, -1], [-1, -1], [0, 1], [-1, -1], [-1, -1], [3, 4]], np.int64)
    lanes = _C.split_lanes(6, node2, np.zeros(6, np.int32), 1, reads2, 2)
    assert [sorted(lane["positions"].tolist()) for lane in lanes] == [[0, 1, 2], [3, 4, 5]]

"""cortex._C.concat_rows and rows_outside (csrc/python/forest_rows.cc), the array work of merging requests: the same
values as the numpy they replace, over random parts (dtypes, ranks, empty parts, non-contiguous views, sentinels),
and clear errors for what cannot be concatenated. The merged runs themselves are checked in test_merge.py."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from cortex import _C
from cortex.serving.forest import ForestStats, run_forest

INT_TYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]


@hs.composite
def node_id_parts(draw):
    """Per request: an id array (rows, *inner) of values in [-3, nodes + 2), and the request's node count."""
    dtype = draw(hs.sampled_from(INT_TYPES))
    inner = draw(hs.sampled_from([(), (1,), (2,), (3, 2)]))
    parts, nodes = [], []
    for _ in range(draw(hs.integers(1, 6))):
        n = draw(hs.integers(0, 9))
        low = 0 if np.issubdtype(dtype, np.unsignedinteger) else -3
        values = draw(hs.lists(hs.integers(low, n + 2), min_size=n * int(np.prod(inner, dtype=np.int64)),
                               max_size=n * int(np.prod(inner, dtype=np.int64))))
        part = np.array(values, dtype=dtype).reshape((n,) + inner)
        if draw(hs.booleans()) and n > 1:  # a strided view: every other row of a longer array
            part = np.repeat(part, 2, axis=0)[::2]
        parts.append(part)
        nodes.append(n)
    return parts, np.array(nodes, dtype=np.int64)


def _shifted(parts, bases):
    """The numpy reference: concatenated, each non-negative value plus its request's base."""
    out = []
    for part, base in zip(parts, bases):
        wide = part.astype(np.int64)
        out.append(np.where(wide >= 0, wide + base, wide).astype(part.dtype))
    return np.concatenate(out)


@pytest.mark.parametrize("dtype", INT_TYPES)
def test_ids_the_shift_would_carry_past_the_largest_stay_at_the_largest(dtype):
    """A request's id near its type's largest value, shifted by its base, stays at the largest (outside every
    request's nodes, as the id was), never wraps to a negative "no child"; the bounds check flags that request."""
    top = int(np.iinfo(dtype).max)
    parts = [np.array([1, 0], dtype), np.array([top - 1, top, 2], dtype)]
    nodes = np.array([2, 3], dtype=np.int64)
    shifted = _C.concat_rows(parts, np.cumsum(nodes) - nodes)
    np.testing.assert_array_equal(shifted, np.array([1, 0, top, top, 4], dtype))
    assert _C.rows_outside(shifted, nodes, nodes, -1) == [1]


@settings(max_examples=200, deadline=None)
@given(node_id_parts())
def test_concat_rows_is_numpy_concatenate_with_shifted_ids(case):
    parts, nodes = case
    plain = _C.concat_rows(parts)
    assert plain.dtype == parts[0].dtype and plain.flags.c_contiguous
    np.testing.assert_array_equal(plain, np.concatenate(parts))
    bases = np.cumsum(nodes) - nodes
    if int(nodes.sum()) <= np.iinfo(parts[0].dtype).max:  # merge refuses a forest whose ids would not fit
        shifted = _C.concat_rows(parts, bases)
        assert shifted.dtype == parts[0].dtype and shifted.shape == plain.shape
        np.testing.assert_array_equal(shifted, _shifted(parts, bases))
    for part, copy in zip(parts, [p.copy() for p in parts]):  # the inputs are never written
        np.testing.assert_array_equal(part, copy)


@settings(max_examples=200, deadline=None)
@given(node_id_parts(), hs.sampled_from([-1, -2]))
def test_rows_outside_flags_the_requests_numpy_flags(case, missing):
    parts, nodes = case
    if int(nodes.sum()) > np.iinfo(parts[0].dtype).max:
        return
    starts = np.cumsum(nodes) - nodes
    merged = _C.concat_rows(parts, starts)
    want = []
    for r, part in enumerate(parts):  # shifted values outside [start, start + nodes), other than the sentinel
        values = _shifted([part], [starts[r]]).astype(np.int64).reshape(-1)
        if part.dtype == np.uint64:
            values = part.reshape(-1).astype(np.uint64).astype(object) + int(starts[r])
            values = np.array([v if v <= np.iinfo(np.int64).max else -(2 ** 62) for v in values], dtype=np.int64)
        if np.any((values != missing) & ((values < starts[r]) | (values >= starts[r] + nodes[r]))):
            want.append(r)
    assert _C.rows_outside(merged, nodes, nodes, missing) == want


def test_rows_outside_counts_rows_and_nodes_apart():
    """An edge list: request r owns rows[r] rows (its edges) and nodes[r] nodes."""
    values = np.array([0, 1, 2, 4, 3, 4], dtype=np.int64)  # request 0: 2 edges, nodes 0, 1; 1: 4 edges, nodes 2..4
    assert _C.rows_outside(values, [2, 4], [2, 3], -1) == []
    assert _C.rows_outside(values, [3, 3], [2, 3], -1) == [0]  # row 2 (node 2) now belongs to request 0
    assert _C.rows_outside(values, [2, 4], [2, 2], -1) == [1]  # request 1 owns nodes 2, 3 only


def test_uint64_ids_past_int64_are_outside():
    values = np.array([0, np.iinfo(np.uint64).max], dtype=np.uint64)
    assert _C.rows_outside(values, [2], [2], -1) == [0]


@pytest.mark.parametrize("parts,message", [
    ([], "no parts"),
    ([np.zeros((2, 3)), np.zeros((2, 4))], "trailing shapes differ"),
    ([np.zeros((2, 3)), np.zeros(2)], "ranks differ"),
    ([np.zeros(2, np.int64), np.zeros(2, np.int32)], "dtypes differ"),
    ([np.float32(1.0)], "not a numpy array"),
    ([np.array(1.0)], "scalar"),
    ([np.array([None, 1], dtype=object)], "only arrays of numbers"),  # references: a byte copy would not count them
    ([np.array(["a", "b"])], "only arrays of numbers"),
])
def test_concat_rows_refuses_what_does_not_concatenate(parts, message):
    with pytest.raises(ValueError, match=message):
        _C.concat_rows(parts)


def test_concat_rows_refuses_bad_bases():
    ids = [np.zeros(2, np.int64), np.zeros(1, np.int64)]
    with pytest.raises(ValueError, match="one value per part"):
        _C.concat_rows(ids, np.array([0]))
    with pytest.raises(ValueError, match="integers"):
        _C.concat_rows([np.zeros(2, np.float32)], np.array([0]))


def test_rows_outside_refuses_counts_that_do_not_add_up():
    with pytest.raises(ValueError, match="do not add up"):
        _C.rows_outside(np.zeros(3, np.int64), [1, 1], [1, 1], -1)
    with pytest.raises(ValueError, match="negative"):
        _C.rows_outside(np.zeros(0, np.int64), [-1, 1], [1, 1], -1)
    with pytest.raises(ValueError, match="integers"):
        _C.rows_outside(np.zeros(2, np.float64), [2], [2], -1)


def test_a_merge_that_cannot_concatenate_runs_each_request_alone(tmp_path):
    """Requests whose arrays pass the checks but do not concatenate (a model input of no declared rank, one request
    with a matrix where another has a vector) are each run alone: their own results or errors, nobody else's."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, None)  # no declared shape
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)

    class Session:
        def run(self, names, feeds):
            import onnxruntime as ort
            return ort.InferenceSession(model.SerializeToString()).run(names, feeds)

    from cortex.serving.merge import InputPlan, MergePlan, OutputPlan

    plan = MergePlan(True, None, (InputPlan("x", "nodes", False, None, None),), (OutputPlan("y", "nodes"),),
                     {"nodes": "x"}, (), "nodes")
    requests = [dict(x=np.ones((2, 3), np.float32)), dict(x=np.ones(2, np.float32))]
    stats = ForestStats()
    results = run_forest(plan, Session(), requests, [None, None], stats)
    assert stats.alone == 2 and stats.batches == 0
    np.testing.assert_array_equal(results[0][0], requests[0]["x"])
    np.testing.assert_array_equal(results[1][0], requests[1]["x"])


@settings(max_examples=200, deadline=None)
@given(hs.sampled_from(INT_TYPES), hs.integers(0, 12), hs.lists(hs.integers(-3, 14), max_size=14))
def test_ids_within_is_numpys_range_and_permutation_check(dtype, n, values):
    if np.issubdtype(dtype, np.unsignedinteger):
        values = [abs(v) for v in values]
    ids = np.array(values, dtype=dtype)
    inside = all(0 <= v < n for v in values)
    assert _C.ids_within(ids, n) == inside
    assert _C.ids_within(ids, n, distinct=True) == (inside and len(set(values)) == len(values))
    if len(values) > 2:  # a strided view reads the same values as its copy
        assert _C.ids_within(ids[::2], n) == _C.ids_within(ids[::2].copy(), n)


def test_byte_swapped_ids_are_not_read_as_numbers():
    swapped = np.array([0, 1, -1], dtype=np.dtype(np.int64).newbyteorder())
    with pytest.raises(ValueError, match="integers"):
        _C.concat_rows([swapped], np.array([5]))
    np.testing.assert_array_equal(_C.concat_rows([swapped, swapped]), np.concatenate([swapped, swapped]))
    assert not _C.ids_within(swapped[:2], 2)
    with pytest.raises(ValueError, match="integers"):
        _C.rows_outside(swapped, [3], [3], -1)


def test_ids_within_takes_no_float_for_an_id():
    assert not _C.ids_within(np.array([0.0, 1.0]), 2)
    assert _C.ids_within(np.zeros(0, np.float32), 0) is False  # not integers, even when empty
    assert _C.ids_within(np.zeros(0, np.int64), 0)


def test_importing_cortex_loads_no_native_module():
    """The merge path loads cortex._C when it first merges: a process that only imports cortex (the sanitizers'
    kernel preparation, a converter) loads no native module it does not use."""
    import subprocess
    import sys

    code = "import sys, cortex, cortex.serving; assert 'cortex._C' not in sys.modules, 'cortex._C loaded'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---- request_rows: check_request's common path ---------------------------------------------------------------

class _OtherDict(dict):
    """A dict of another type: check_request takes its Python path for it (the native one reads plain dicts)."""


class _SubArray(np.ndarray):
    """An ndarray subclass: not a plain array to either path."""


MUTATIONS = ("drop", "extra", "dtype", "byteswap", "rank", "tail", "rows", "list", "subclass", "strided", "empty",
             "repeat_id", "id_past_nodes", "negative_id")


@pytest.fixture(scope="module")
def tree_plans(tmp_path_factory):
    """The TreeLSTM's TreeRec and Loop forms, converted: their merge plans (both all plain inputs)."""
    import onnx

    import cortex
    from cortex.examples import treelstm
    from cortex.serving import plan_for

    folder = tmp_path_factory.mktemp("request_rows")
    params = treelstm.make_params(hidden=4, embed_dim=3, vocab=20)
    plans = {}
    for form, model in [("treerec", treelstm.build_treerec(params)), ("loop", treelstm.build_loop(params))]:
        onnx.save(model, str(folder / f"{form}.onnx"))
        cortex.convert(str(folder / f"{form}.onnx"), str(folder / f"{form}.cortex.onnx"), strict=True)
        plans[form] = plan_for(str(folder / f"{form}.cortex.onnx"))
        assert plans[form].request_spec.common is not None, form  # the native path is the one taken
    return plans


def _mutated(feeds: dict, mutation: str, name: str) -> dict:
    """`feeds` with one thing changed in input `name` (or in the dict)."""
    feeds, value = dict(feeds), np.asarray(feeds[name])  # an input an earlier mutation made a list: its values
    if mutation == "drop":
        del feeds[name]
    elif mutation == "extra":
        feeds["extra"] = value
    elif mutation == "dtype":
        feeds[name] = value.astype(np.int32)
    elif mutation == "byteswap":
        feeds[name] = value.astype(value.dtype.newbyteorder())
    elif mutation == "rank":
        feeds[name] = value[..., None]
    elif mutation == "tail" and value.ndim > 1:
        feeds[name] = np.concatenate([value, value[:, :1]], axis=1)
    elif mutation == "rows":
        feeds[name] = value[:-1]
    elif mutation == "list":
        feeds[name] = value.tolist()
    elif mutation == "subclass":
        feeds[name] = value.view(_SubArray)
    elif mutation == "strided":  # a strided view of the same values: as valid as the values are
        feeds[name] = np.repeat(value, 2, axis=0)[::2]
    elif mutation == "empty":
        feeds = {k: v[:0] for k, v in feeds.items()}
    elif mutation == "repeat_id" and len(value) > 1:
        feeds[name] = np.concatenate([value[:-1], value[:1]])
    elif mutation == "id_past_nodes":
        feeds[name] = np.where(value == value.max(initial=0), len(value), value)
    elif mutation == "negative_id":
        feeds[name] = value - 1
    return feeds


def _verdict(plan, feeds):
    from cortex.serving import FeedError, check_request

    try:
        return "ok", check_request(plan, feeds)
    except FeedError as e:
        return "FeedError", str(e)


@settings(max_examples=300, deadline=None)
@given(data=hs.data())
def test_the_native_request_check_says_what_the_python_one_says(tree_plans, data):
    """check_request reads a plain dict of plain inputs in one native call (cortex._C.request_rows) and anything
    else in Python: for valid requests and requests with one or two things wrong (a missing or unknown input, a
    dtype, a byte order, a rank, a trailing size, rows that disagree, a list, an ndarray subclass, a strided view,
    empty arrays, a visit order that repeats a node or leaves the nodes), both say the same: None, the same reason,
    or the same FeedError."""
    from cortex.examples import structures as st

    form = data.draw(hs.sampled_from(sorted(tree_plans)), label="form")
    plan = tree_plans[form]
    [tree] = st.sst_like_trees(1, np.random.default_rng(data.draw(hs.integers(0, 2**16), label="seed")), 20)
    feeds = dict(children=tree.children, words=tree.words) if form == "treerec" else tree.arrays()
    for _ in range(data.draw(hs.integers(0, 2), label="mutations")):
        feeds = _mutated(feeds, data.draw(hs.sampled_from(MUTATIONS)), data.draw(hs.sampled_from(sorted(feeds))))
    native, python = _verdict(plan, feeds), _verdict(plan, _OtherDict(feeds))
    assert native == python
    # these plans check nothing past the inputs themselves: the native call alone accepts exactly what merges
    accepted = _C.request_rows(feeds, *plan.request_spec.common) is not None
    assert accepted == (native == ("ok", None))


@settings(max_examples=100, deadline=None)
@given(hs.lists(hs.integers(0, 12), max_size=8))
def test_request_windows_are_each_nodes_request_rows(nodes):
    """Row v: the first and the end node of the request that owns v (windows.py), as numpy would build it."""
    counts = np.array(nodes, dtype=np.int64)
    first = np.cumsum(counts) - counts
    want = np.repeat(np.stack([first, first + counts], axis=1), counts, axis=0).reshape(-1, 2)
    got = _C.request_windows(counts)
    assert got.dtype == np.int64 and got.shape == want.shape and np.array_equal(got, want)


def test_request_windows_refuse_what_is_not_counts():
    with pytest.raises(ValueError, match="negative"):
        _C.request_windows(np.array([3, -1], np.int64))
    with pytest.raises(ValueError, match="one count per request"):
        _C.request_windows(np.zeros((2, 2), np.int64))


def _has_cycle(children: np.ndarray) -> bool:
    """Reference: depth-first search for a node that reaches itself (ids outside the rows are not edges)."""
    n = children.shape[0]
    state = [0] * n  # 0 new, 1 on the path, 2 done

    def visit(v) -> bool:
        state[v] = 1
        for u in children[v]:
            if 0 <= u < n and (state[u] == 1 or (state[u] == 0 and visit(u))):
                return True
        state[v] = 2
        return False
    return any(state[v] == 0 and visit(v) for v in range(n))


@settings(max_examples=300, deadline=None)
@given(hs.lists(hs.tuples(hs.integers(0, 6), hs.integers(1, 3), hs.integers(0, 2 ** 32 - 1)), max_size=5))
def test_requests_with_cycles_is_a_search_for_a_node_reaching_itself(requests):
    """cortex._C.requests_with_cycles (what a failed TreeRec forest asks) against a depth-first search per request,
    on random child arrays of ids inside and outside each request (2-4 slots a node), merged with their bases."""
    width = 2
    parts, counts, want = [], [], []
    base = 0
    for n, density, seed in requests:
        rng = np.random.default_rng(seed)
        own = rng.integers(-2, n + 2, size=(n, width))  # a few ids outside the request: not edges
        own[rng.random((n, width)) > density / 3] = -1
        want.append(_has_cycle(own))
        parts.append(np.where((own >= 0) & (own < n), own + base, np.where(own >= n, own + 10 ** 6, own)))
        counts.append(n)
        base += n
    children = np.concatenate(parts) if parts else np.zeros((0, width), np.int64)
    assert _C.requests_with_cycles(children.astype(np.int64), counts) == [r for r, c in enumerate(want) if c]
    with pytest.raises(ValueError, match="do not add up"):
        _C.requests_with_cycles(np.zeros((3, 2), np.int64), [2])

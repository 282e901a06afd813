"""Structure helpers: SST reader, random and SST-shaped trees, batching, heights."""

from __future__ import annotations

import zlib

import numpy as np
import pytest


from cortex.examples import structures as S

SST = S.sst_dir_default()
needs_sst = pytest.mark.skipif(SST is None, reason="SST directory not found (../shared/data/sst or CORTEX_SST_DIR)")


def assert_valid_forest(f: S.Forest) -> None:
    n = f.num_nodes
    for a in (f.words, f.left, f.right, f.order, f.roots):
        assert a.dtype == np.int64
    assert sorted(f.order.tolist()) == list(range(n)), "order visits every node once"
    pos = np.empty(n, dtype=np.int64)
    pos[f.order] = np.arange(n)
    for v in range(n):
        assert (f.left[v] < 0) == (f.right[v] < 0), "binary: both children or none"
        for ch in (f.left[v], f.right[v]):
            if ch >= 0:
                assert pos[ch] < pos[v], "children before parents"
    is_child = np.zeros(n, dtype=bool)
    is_child[f.left[f.left >= 0]] = True
    is_child[f.right[f.right >= 0]] = True
    assert sorted(np.flatnonzero(~is_child).tolist()) == sorted(f.roots.tolist())
    assert np.all(f.words[f.left >= 0] == 0), "internal nodes have word 0"


@pytest.fixture(scope="module")
def sst_splits():
    return {split: S.read_sst(SST, split=split) for split in ("train", "test", "dev")}


@needs_sst
def test_sst_counts_and_shape(sst_splits):
    assert sum(len(v) for v in sst_splits.values()) == 11855
    assert len(sst_splits["test"]) == 2210
    assert len(sst_splits["dev"]) == 1101
    assert len(sst_splits["train"]) == 8544
    for f in [f for v in sst_splits.values() for f in v][::7]:
        assert_valid_forest(f)
        num_leaves = int((f.left < 0).sum())
        assert f.num_nodes == 2 * num_leaves - 1
        assert np.all(f.left[:num_leaves] < 0) and np.all(f.left[num_leaves:] >= 0), "leaves first"
        assert len(f.roots) == 1


@needs_sst
def test_sst_test_split_statistics(sst_splits):
    test = sst_splits["test"]
    nodes = np.array([f.num_nodes for f in test])
    hts = np.array([f.height() for f in test])
    assert 36 < nodes.mean() < 39
    assert 9 < hts.mean() < 11 and hts.max() == 28


@needs_sst
def test_sst_token_ids():
    vocab = S.sst_vocab(SST)
    first = S.read_sst(SST, split="train", limit=1)[0]
    toks = open(SST / "SOStr.txt", encoding="utf-8").readline().rstrip("\n").split("|")
    leaves = first.words[first.left < 0]
    assert leaves.tolist() == [vocab[t.lower()] for t in toks]
    assert min(vocab.values()) == 1
    hashed = S.read_sst(SST, split="train", vocab_size=1000, limit=1)[0]
    assert hashed.words[hashed.left < 0].tolist() == [zlib.crc32(t.lower().encode()) % 1000 for t in toks]
    assert len(S.read_sst(SST, split="dev", limit=5)) == 5
    assert len(S.read_sst(SST, split="all", limit=3)) == 3


@needs_sst
def test_sst_children_oriented_by_span():
    f = S.read_sst(SST, split="test", limit=1)[0]
    num_leaves = int((f.left < 0).sum())
    start = np.arange(f.num_nodes)
    end = np.arange(f.num_nodes)
    for v in f.order:
        if f.left[v] >= 0:
            start[v], end[v] = start[f.left[v]], end[f.right[v]]
            assert end[f.left[v]] + 1 == start[f.right[v]], "left span is just before right span"
    root = f.roots[0]
    assert (start[root], end[root]) == (0, num_leaves - 1)


def test_sst_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CORTEX_SST_DIR", str(tmp_path))
    assert S.sst_dir_default() is None
    (tmp_path / "STree.txt").write_text("")
    assert S.sst_dir_default() == tmp_path


def test_reader_rejects_non_binary():
    with pytest.raises(ValueError, match="children"):
        S.forest_from_parents([3, 3, 3, -1], [1, 2, 3])  # ternary root
    with pytest.raises(ValueError, match="children"):
        S.forest_from_parents([2, 3, 3, -1], [1, 2])  # unary node 3
    f = S.forest_from_parents([2, 2, -1], [5, 6])
    assert f.left.tolist() == [-1, -1, 0] and f.right.tolist() == [-1, -1, 1]


@pytest.mark.parametrize("num_leaves", [1, 2, 5, 40])
def test_random_tree(num_leaves):
    f = S.random_tree(num_leaves, np.random.default_rng(num_leaves), vocab=30)
    assert f.num_nodes == 2 * num_leaves - 1
    assert_valid_forest(f)
    assert np.all((f.words[: num_leaves] >= 1) & (f.words[: num_leaves] < 30))


def test_sst_like_trees_shape():
    trees = S.sst_like_trees(400, np.random.default_rng(0), vocab=100)
    for f in trees[:50]:
        assert_valid_forest(f)
    nodes = np.array([f.num_nodes for f in trees])
    hts = np.array([f.height() for f in trees])
    assert 33 < nodes.mean() < 41
    assert 8.5 < hts.mean() < 11.5


def test_batch_offsets():
    rng = np.random.default_rng(1)
    parts = [S.random_tree(k, rng, 10) for k in (1, 3, 6)]
    b = S.batch(parts)
    assert_valid_forest(b)
    assert b.num_nodes == sum(p.num_nodes for p in parts)
    assert b.roots.tolist() == [0, 1 + 4, 1 + 5 + 10]
    assert b.left[1 + 4].tolist() >= 1
    assert S.batch([]).num_nodes == 0


def test_dag_heights_errors_and_sharing():
    ch = np.array([[-1, -1], [0, 0], [1, 0]])  # node 0 shared
    assert S.dag_heights(ch).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="cycle through node"):
        S.dag_heights(np.array([[-1, -1], [2, 0], [1, -1]]))
    with pytest.raises(ValueError, match="out of range"):
        S.dag_heights(np.array([[-1, -1], [0, 2]]))
    with pytest.raises(ValueError, match="out of range"):
        S.dag_heights(np.array([[-1, -2], [0, 0]]))

"""tools/peers/torch_gpu_peer.py: the level schedule, the level-batched and per-node PyTorch TreeLSTMs (run on the
CPU here: the device is a parameter) against cortex.examples.treelstm.reference; the CUDA-graph runner only where a
CUDA GPU is present."""

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

torch = pytest.importorskip("torch")

from cortex.examples import structures as st  # noqa: E402
from cortex.examples import treelstm as tl  # noqa: E402
from tools.peers import torch_gpu_peer as gp  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
V, D = 50, 7


def _params(H=6, seed=0):
    return tl.make_params(hidden=H, embed_dim=D, vocab=V, seed=seed)


def _forests():
    rng = np.random.default_rng(1)
    rand = [st.random_tree(k, rng, V) for k in (1, 2, 3, 9, 17)]
    sst = st.sst_like_trees(6, np.random.default_rng(2), V)
    return {
        "one_leaf": st.random_tree(1, rng, V),
        "random_tree": rand[3],
        "random_forest": st.batch(rand),
        "sst_forest": st.batch(sst),
        "sst_tree": sst[0],
        "leaves_only": st.batch([st.random_tree(1, rng, V) for _ in range(4)]),  # no internal level at all
    }


FORESTS = _forests()


def _check(runner, p, f, tol=1e-5):
    ref = tl.reference(p, f)
    got = runner(f)
    assert len(got) == 2
    for g, r in zip(got, ref):
        assert isinstance(g, np.ndarray) and g.shape == r.shape and g.dtype == np.float32
        np.testing.assert_allclose(g, r, atol=tol, rtol=0)


def test_level_schedule_levels_and_bounds():
    f = FORESTS["sst_forest"]
    s = gp.level_schedule(f)
    hts = st.heights(f.left, f.right)
    assert s.num_nodes == f.num_nodes
    assert sorted(s.leaf_ids.tolist()) == np.flatnonzero(f.left < 0).tolist()
    np.testing.assert_array_equal(s.leaf_words, f.words[s.leaf_ids])
    assert s.num_levels == int(hts.max())
    for k, (a, b) in enumerate(s.bounds, start=1):
        assert b > a and (hts[s.nodes[a:b]] == k).all()
        np.testing.assert_array_equal(s.kids[2 * a:2 * b:2], f.left[s.nodes[a:b]])
        np.testing.assert_array_equal(s.kids[2 * a + 1:2 * b:2], f.right[s.nodes[a:b]])
    assert len(s.nodes) + len(s.leaf_ids) == f.num_nodes


def test_level_schedule_edge_cases():
    one = gp.level_schedule(FORESTS["one_leaf"])
    assert one.bounds == [] and one.leaf_ids.tolist() == [0] and len(one.nodes) == 0
    assert gp.level_schedule(FORESTS["leaves_only"]).bounds == []
    empty = st.Forest(*(np.zeros(0, np.int64) for _ in range(5)))
    e = gp.level_schedule(empty)
    assert e.num_nodes == 0 and e.bounds == [] and e.packed().shape == (0,)
    f = FORESTS["random_tree"]
    with pytest.raises(ValueError, match="twice"):
        gp.level_schedule(st.Forest(f.words, f.left, f.right, np.concatenate([f.order, f.order[:1]]), f.roots))
    with pytest.raises(ValueError, match="before its child"):
        gp.level_schedule(st.Forest(f.words, f.left, f.right, f.order[::-1].copy(), f.roots))


@pytest.mark.parametrize("name", list(FORESTS))
@pytest.mark.parametrize("kind", ["level_batched", "per_node"])
def test_cpu_runner_matches_reference(kind, name):
    p = _params()
    _check(gp.build(kind, p, device="cpu"), p, FORESTS[name])


def test_level_batched_sst_sizes_and_unvisited_rows():
    p = _params(H=32, seed=3)
    r = gp.LevelBatchedRunner(p, device="cpu")
    trees = st.sst_like_trees(20, np.random.default_rng(5), V)
    _check(r, p, st.batch(trees), tol=1e-4)
    # nodes outside ``order`` keep zero rows, like the reference's tables
    f = trees[0]
    root = int(f.roots[0])
    sub = st.Forest(f.words, f.left, f.right, f.order[f.order != root].copy(), f.roots)
    _check(r, p, sub)
    h, c = r(sub)
    assert not h[root].any() and not c[root].any()
    # timed_call returns tensors on the device
    h_t, c_t = r.timed_call(trees[1])
    assert isinstance(h_t, torch.Tensor) and h_t.device.type == "cpu"


def test_empty_forest():
    p = _params()
    empty = st.Forest(*(np.zeros(0, np.int64) for _ in range(5)))
    h, c = gp.LevelBatchedRunner(p, device="cpu")(empty)
    assert h.shape == (0, p.hidden) and c.shape == (0, p.hidden)


def test_model_status():
    assert gp.model_status("treelstm") is None
    assert gp.model_status("treegru") == "not implemented for this model"


def test_cuda_graph_runner_refuses_cpu():
    with pytest.raises(ValueError):
        gp.CudaGraphRunner(_params(), device="cpu")


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU on this machine")
@pytest.mark.parametrize("kind", ["level_batched", "per_node", "cuda_graph"])
def test_cuda_runners_match_reference(kind):
    p = _params(H=32, seed=1)
    r = gp.build(kind, p, device="cuda")
    assert not torch.backends.cuda.matmul.allow_tf32
    forests = list(FORESTS.values())
    if kind == "cuda_graph":
        stats = r.prepare(forests)
        assert stats["graphs"] == len(forests)
    for _ in range(2):  # twice: replays reuse the captured graphs and the shared pool
        for f in forests:
            _check(r, p, f, tol=1e-4)
    h, _ = r.timed_call(forests[-1])
    assert h.device.type == "cuda"


def test_bench_wiring_devices_and_models():
    from tools.benchlib import report
    from tools.peers import models, systems as S

    for n in S.GPU_SYSTEMS:
        assert S.DEVICE[n] == "CUDA"
        assert S.model_status(n, models.get("treelstm")) is None
    for n in S.TORCH_GPU_SYSTEMS:  # the PyTorch GPU peers: TreeLSTM only; Cortex and ORT on the GPU: every model
        assert S.model_status(n, models.get("treegru")) == "not implemented for this model"
    assert S.model_status(S.CORTEX_CUDA, models.get("treegru")) is None
    assert S.model_status(S.ORT_CUDA, models.get("treegru")) is None
    assert S.model_status(S.DYNET, models.get("treegru")) == models.NO_DYNET
    cpu, cuda = {"target": "cpu", "rows": []}, {"target": "cuda", "rows": []}
    assert report.table_systems(cpu) == list(S.CPU_SYSTEMS)
    assert report.table_systems(cuda) == list(S.ALL_SYSTEMS)
    assert report.system_label(cuda, S.CORTEX) == "Cortex (CPU)"
    assert report.system_label(cuda, S.TORCH_GPU) == S.TORCH_GPU
    assert report.system_label(cpu, S.CORTEX) == "Cortex"
    hdr = report.render_table(cuda).splitlines()[0]
    assert "Cortex (CPU) ms" in hdr and "CUDA graph replay (CUDA) ms" in hdr and "Cortex (CUDA) ms" in hdr
    assert report.render_table(cpu).splitlines()[0].startswith(
        "| model | hidden | batch | Cortex ms | ONNX Runtime ms | PyTorch ms | DyNet ms | Cortex vs ORT |")


def test_gpu_report_puts_kernel_and_end_to_end_apart(tmp_path):
    """The GPU section of a --target cuda run: Cortex (CUDA) kernel alone, end to end, the session overhead between
    them, and speedups over the GPU peers (a peer that could not run shows its status)."""
    from tools.peers import gpu_report, systems as S

    def ok(ms):
        return {"status": "ok", "ms_median": ms, "ms_p10": ms * 0.9, "ms_p90": ms * 1.1}

    cortex_cuda = dict(ok(0.5), kernel=ok(0.2), prepare={"outputs": "outputs left in GPU memory (test)"})
    res = {"target": "cuda", "systems": {S.CORTEX_CUDA: {"status": "ok"},
                                         S.ORT_CUDA: {"status": "not available (a CPU build)"}},
           "rows": [{"model": "treelstm", "hidden": 64, "batch": 10, "kind": "latency",
                     "results": {S.CORTEX_CUDA: cortex_cuda, S.ORT_CUDA: {"status": "not available (a CPU build)"},
                                 S.TORCH_GPU_NODE: ok(100.0), S.TORCH_GPU: ok(5.0), S.CUDA_GRAPH: ok(0.6)}}]}
    text = gpu_report.render_section(res)
    line = [line for line in text.splitlines() if line.startswith("| treelstm")][0]
    row = [cell.strip() for cell in line.strip().strip("|").split("|")]
    assert row[3].startswith("0.2 ") and row[4].startswith("0.5 ") and row[5] == "0.3"
    assert row[6] == "not available" and row[10:] == ["–", "200.0×", "10.0×", "1.2×", "3.0×"]
    assert "outputs left in GPU memory (test)" in text


def test_regenerating_a_page_keeps_its_hand_written_text(tmp_path):
    from tools.benchlib import report

    page = tmp_path / "page.md"
    report.replace_generated(page, f"{report.DOCS_BEGIN}\nrun 1\n{report.DOCS_END}", "# Title\n\n")
    page.write_text(page.read_text() + "\n## Analysis by hand\n")
    report.replace_generated(page, f"{report.DOCS_BEGIN}\nrun 2\n{report.DOCS_END}", "# Title\n\n")
    text = page.read_text()
    assert text.startswith("# Title") and "run 2" in text and "run 1" not in text
    assert text.rstrip().endswith("## Analysis by hand")

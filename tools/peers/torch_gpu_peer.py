"""GPU peers of the benchmark (TreeLSTM only): PyTorch on a CUDA device, three ways.

- :class:`PerNodeRunner`: the natural per-node module (``onnx_ops.zoo.torch_treelstm`` style ``index_put``, the
  style whose tables follow the inputs' device) moved to the device: one small kernel sequence per node, and a
  host sync per node (``bool(left[v] < 0)``).
- :class:`LevelBatchedRunner`: level-batched eager PyTorch. The host computes every node's level in O(N) from the
  Forest (:func:`level_schedule`: leaves 0, a node 1 + the max of its children's levels), then the device runs one
  batched step per level: leaves gather their embedding rows and do one matmul with W; each level of internal
  nodes gathers its children's h/c rows with index tensors, does one matmul with U, the gates, and scatters its
  rows back (``index_copy_``). The schedule (host) and its single host-to-device copy are part of each call.
- :class:`CudaGraphRunner`: the same level-batched forward captured once per input structure in a
  ``torch.cuda.CUDAGraph`` (all index tensors precomputed on the device as static buffers, warm-up on a side
  stream first); a call is ``graph.replay()`` + synchronize. :meth:`CudaGraphRunner.prepare` captures outside the
  timed region and records the capture time.

Every runner takes ``device`` (default ``"cuda"``; ``"cpu"`` for tests, except the graph runner). ``runner(f)``
returns numpy (h, c) [N, H] for the benchmark's check against the numpy reference; ``runner.timed_call(f)`` runs
the same work and returns with the outputs still on the device after ``torch.cuda.synchronize()`` (the timed
call: the device-to-host copy of the outputs is not timed).

Float32 stays float32: building a runner for a CUDA device turns TF32 off
(``torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False``; a process-wide setting).
Nodes not in ``order`` keep zero rows, like the Loop model's tables. Forests whose ``order`` repeats a node or
visits a parent before its child raise ValueError (level batching assumes each node once, children first; the
benchmark's forests are like that).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

__all__ = ["LevelSchedule", "level_schedule", "LevelBatchedTreeLSTM", "PerNodeRunner", "LevelBatchedRunner",
           "CudaGraphRunner", "SUPPORTED_MODELS", "model_status", "cuda_graph_status", "build"]

SUPPORTED_MODELS = ("treelstm",)
NOT_FOR_MODEL = "not implemented for this model"


def model_status(model_name: str) -> str | None:
    """None when the GPU peers implement ``model_name``, else why not."""
    return None if model_name in SUPPORTED_MODELS else NOT_FOR_MODEL


def cuda_graph_status() -> str | None:
    try:
        import torch
    except ImportError as e:
        return f"not installed ({e})"
    if not hasattr(torch.cuda, "CUDAGraph"):
        return "not available (this torch has no torch.cuda.CUDAGraph)"
    return None


# ----------------------------------------------------------------------------------------------------------------
# host: the level schedule


@dataclass
class LevelSchedule:
    """Host (numpy) schedule of one forest. ``leaf_ids`` / ``leaf_words`` int64 [nL]: the visited leaves and their
    token ids; ``nodes`` int64 [nI]: the visited internal nodes sorted by level; ``kids`` int64 [2 nI]: their
    (left, right) children interleaved; ``bounds``: (start, end) into ``nodes`` per non-empty level, bottom-up;
    ``num_nodes``: N (rows of the output tables)."""

    num_nodes: int
    leaf_ids: np.ndarray
    leaf_words: np.ndarray
    nodes: np.ndarray
    kids: np.ndarray
    bounds: list

    @property
    def num_levels(self) -> int:
        return len(self.bounds)

    def packed(self) -> np.ndarray:
        """Every index array in one int64 buffer (one host-to-device copy): leaf_ids, leaf_words, nodes, kids."""
        return np.concatenate([self.leaf_ids, self.leaf_words, self.nodes, self.kids]).astype(np.int64, copy=False)


def level_schedule(forest) -> LevelSchedule:
    """The level schedule of a binary :class:`cortex.examples.structures.Forest` (words, left, right, order): one pass
    over ``order`` (O(N)): a leaf (``left < 0``) gets level 0, an internal node 1 + max(level of its children).
    Raises ValueError when ``order`` visits a node twice or a parent before one of its children."""
    words = np.asarray(forest.words, dtype=np.int64)
    left_a = np.asarray(forest.left, dtype=np.int64)
    n = int(words.shape[0])
    left, right, order = left_a.tolist(), np.asarray(forest.right, dtype=np.int64).tolist(), \
        np.asarray(forest.order, dtype=np.int64).tolist()
    lev = [-1] * n
    for v in order:
        if lev[v] >= 0:
            raise ValueError(f"order visits node {v} twice; the level-batched schedule needs each node once")
        lv = left[v]
        if lv < 0:
            lev[v] = 0
            continue
        a, b = lev[lv], lev[right[v]]
        if a < 0 or b < 0:
            raise ValueError(f"order visits node {v} before its child {lv if a < 0 else right[v]}")
        lev[v] = 1 + (a if a > b else b)
    lev_a = np.asarray(lev, dtype=np.int64) if n else np.zeros(0, np.int64)
    leaf_ids = np.flatnonzero(lev_a == 0)
    internal = np.flatnonzero(lev_a > 0)
    levels = lev_a[internal]
    nodes = internal[np.argsort(levels, kind="stable")]
    kids = np.stack([left_a[nodes], np.asarray(forest.right, dtype=np.int64)[nodes]], axis=1).reshape(-1)
    counts = np.bincount(levels)[1:] if levels.size else np.zeros(0, np.int64)
    ends = np.cumsum(counts)
    bounds = [(int(e - c), int(e)) for c, e in zip(counts, ends) if c > 0]  # empty levels are skipped
    return LevelSchedule(n, leaf_ids.astype(np.int64), words[leaf_ids], nodes.astype(np.int64),
                         kids.astype(np.int64), bounds)


# ----------------------------------------------------------------------------------------------------------------
# device: the level-batched forward


def _torch():
    import torch

    return torch


def _strict_fp32(device) -> None:
    torch = _torch()
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def _sync(device) -> None:
    torch = _torch()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class DeviceSchedule:
    """A :class:`LevelSchedule` on the device: one int64 tensor (one copy) and views into it."""

    def __init__(self, sched: LevelSchedule, device):
        torch = _torch()
        self.num_nodes, self.bounds = sched.num_nodes, sched.bounds
        buf = torch.from_numpy(sched.packed()).to(device)
        nl, ni = sched.leaf_ids.shape[0], sched.nodes.shape[0]
        self.buf = buf
        self.leaf_ids = buf[:nl]
        self.leaf_words = buf[nl:2 * nl]
        self.nodes = buf[2 * nl:2 * nl + ni]
        self.kids = buf[2 * nl + ni:]


class LevelBatchedTreeLSTM:
    """The binary TreeLSTM of :mod:`cortex.examples.treelstm` (same weights: ``embedding``, ``W``, ``bW``, ``U``,
    ``bU`` of TreeLSTMParams), evaluated one level at a time on ``device``."""

    def __init__(self, params, device="cuda"):
        torch = _torch()
        _strict_fp32(device)
        self.device = torch.device(device)
        self.H = int(params.hidden)

        def t(a):
            return torch.as_tensor(np.ascontiguousarray(a, dtype=np.float32)).to(self.device)

        self.E, self.W, self.bW, self.U, self.bU = (t(params.embedding), t(params.W), t(params.bW), t(params.U),
                                                    t(params.bU))

    def schedule(self, forest) -> DeviceSchedule:
        return DeviceSchedule(level_schedule(forest), self.device)

    def tables(self, num_nodes: int):
        torch = _torch()
        z = torch.zeros(num_nodes, self.H, dtype=torch.float32, device=self.device)
        return z, torch.zeros_like(z)

    def forward_into(self, ds: DeviceSchedule, h, c) -> None:
        """Writes every visited node's rows of ``h``, ``c`` [N, H] (rows of unvisited nodes are left as they are)."""
        torch = _torch()
        H = self.H
        sig, tanh = torch.sigmoid, torch.tanh
        if ds.leaf_ids.shape[0]:
            x = self.E.index_select(0, ds.leaf_words)
            i, o, u = torch.addmm(self.bW, x, self.W).split(H, dim=1)
            cc = sig(i) * tanh(u)
            h.index_copy_(0, ds.leaf_ids, sig(o) * tanh(cc))
            c.index_copy_(0, ds.leaf_ids, cc)
        for s, e in ds.bounds:
            m = e - s
            nodes, kids = ds.nodes[s:e], ds.kids[2 * s:2 * e]
            hk = h.index_select(0, kids).view(m, 2 * H)  # [h_l; h_r] per node
            ck = c.index_select(0, kids).view(m, 2, H)
            i, f_l, f_r, o, u = torch.addmm(self.bU, hk, self.U).split(H, dim=1)
            cc = sig(i) * tanh(u) + sig(f_l) * ck[:, 0] + sig(f_r) * ck[:, 1]
            h.index_copy_(0, nodes, sig(o) * tanh(cc))
            c.index_copy_(0, nodes, cc)


def _numpy(h, c) -> tuple[np.ndarray, np.ndarray]:
    return h.detach().cpu().numpy(), c.detach().cpu().numpy()


class LevelBatchedRunner:
    """Level-batched eager PyTorch: per call, the host schedule, one index copy to the device, the level-batched
    forward, synchronize."""

    def __init__(self, params, device="cuda"):
        self.model = LevelBatchedTreeLSTM(params, device)
        self.device = self.model.device

    def timed_call(self, forest):
        torch = _torch()
        with torch.no_grad():
            ds = self.model.schedule(forest)
            h, c = self.model.tables(ds.num_nodes)
            self.model.forward_into(ds, h, c)
        _sync(self.device)
        return h, c

    def __call__(self, forest) -> tuple[np.ndarray, np.ndarray]:
        return _numpy(*self.timed_call(forest))


class PerNodeRunner:
    """The natural per-node PyTorch TreeLSTM (style ``index_put`` of onnx_ops.zoo.torch_treelstm, whose tables are
    created on the inputs' device) with its weights and inputs on ``device``; the four input arrays are copied to
    the device in each call."""

    STYLE = "index_put"

    def __init__(self, params, device="cuda"):
        torch = _torch()
        from onnx_ops.zoo import torch_treelstm

        _strict_fp32(device)
        self.device = torch.device(device)
        self.module = torch_treelstm.make_module(self.STYLE, params).to(self.device).eval()

    def timed_call(self, forest):
        torch = _torch()
        args = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(self.device)
                for a in (forest.words, forest.left, forest.right, forest.order)]
        with torch.no_grad():
            h, c = self.module(*args)
        _sync(self.device)
        return h, c

    def __call__(self, forest) -> tuple[np.ndarray, np.ndarray]:
        return _numpy(*self.timed_call(forest))


class _Captured:
    __slots__ = ("forest", "graph", "ds", "h", "c", "capture_s")

    def __init__(self, forest, graph, ds, h, c, capture_s):
        self.forest, self.graph, self.ds, self.h, self.c, self.capture_s = forest, graph, ds, h, c, capture_s


class CudaGraphRunner:
    """CUDA-graph replay of the level-batched forward, one graph per input structure (captured by :meth:`prepare`
    or on the first call with that structure object). The graph's index tensors and output tables are static
    buffers allocated outside the capture; the graphs share one memory pool for their intermediates (they never
    run concurrently, and nothing allocated inside a capture outlives it)."""

    def __init__(self, params, device="cuda", warmup_iters: int = 3):
        torch = _torch()
        if torch.device(device).type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.model = LevelBatchedTreeLSTM(params, device)
        self.device = self.model.device
        self.warmup_iters = warmup_iters
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: dict[int, _Captured] = {}
        self.capture_s: list[float] = []  # seconds per capture (schedule, copies, warm-up, capture)

    def _captured(self, forest) -> _Captured:
        got = self.graphs.get(id(forest))
        if got is not None and got.forest is forest:
            return got
        torch = _torch()
        t0 = time.perf_counter()
        with torch.no_grad():
            ds = self.model.schedule(forest)
            h, c = self.model.tables(ds.num_nodes)
            graph = None
            if ds.num_nodes and (ds.leaf_ids.shape[0] or ds.bounds):
                side = torch.cuda.Stream(device=self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graphs asks
                    for _ in range(self.warmup_iters):
                        self.model.forward_into(ds, h, c)
                torch.cuda.current_stream(self.device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self.pool):
                    self.model.forward_into(ds, h, c)
            torch.cuda.synchronize(self.device)
        cap = _Captured(forest, graph, ds, h, c, time.perf_counter() - t0)
        self.graphs[id(forest)] = cap
        self.capture_s.append(cap.capture_s)
        return cap

    def prepare(self, forests) -> dict:
        """Captures a graph for every structure in ``forests`` (untimed); returns capture stats in ms."""
        n0 = len(self.capture_s)
        for f in forests:
            self._captured(f)
        new = self.capture_s[n0:]
        return {"graphs": len(self.graphs), "capture_ms_mean": float(np.mean(new)) * 1e3 if new else None,
                "capture_ms_total": float(np.sum(new)) * 1e3 if new else 0.0}

    def timed_call(self, forest):
        cap = self._captured(forest)
        if cap.graph is not None:
            cap.graph.replay()
        _torch().cuda.synchronize(self.device)
        return cap.h, cap.c

    def __call__(self, forest) -> tuple[np.ndarray, np.ndarray]:
        return _numpy(*self.timed_call(forest))


def build(kind: str, params, device="cuda"):
    """A runner of ``kind`` ('per_node', 'level_batched', 'cuda_graph')."""
    return {"per_node": PerNodeRunner, "level_batched": LevelBatchedRunner, "cuda_graph": CudaGraphRunner}[kind](
        params, device)

"""The systems of the benchmark. Each is built for one (model, params) and runs a structure to its output tables;
``status`` is None when it can run, else the reason shown in the results ("not installed", "not available on this
machine")."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from . import dynet_peer, torch_peer
from .kernel_alone import KernelAlone, KernelCalls

# display names, in table order
CORTEX = "Cortex"
ORT = "ONNX Runtime"
TORCH = "PyTorch"
DYNET = "DyNet"
CORTEX_CUDA = "Cortex (CUDA)"
ORT_CUDA = "ONNX Runtime (CUDA)"
TORCH_GPU_NODE = "PyTorch per-node (CUDA)"
TORCH_GPU = "PyTorch level-batched (CUDA)"
CUDA_GRAPH = "CUDA graph replay"
CPU_SYSTEMS = (CORTEX, ORT, TORCH, DYNET)
TORCH_GPU_SYSTEMS = (TORCH_GPU_NODE, TORCH_GPU, CUDA_GRAPH)  # tools/peers/torch_gpu_peer.py (TreeLSTM only)
GPU_SYSTEMS = (CORTEX_CUDA, ORT_CUDA) + TORCH_GPU_SYSTEMS
ALL_SYSTEMS = CPU_SYSTEMS + GPU_SYSTEMS
KEYS = {CORTEX: "cortex", ORT: "ort", TORCH: "pytorch", DYNET: "dynet", CORTEX_CUDA: "cortex_cuda",
        ORT_CUDA: "ort_cuda", TORCH_GPU_NODE: "pytorch_cuda_node", TORCH_GPU: "pytorch_cuda",
        CUDA_GRAPH: "cuda_graph"}
#: systems that run a model file (the Loop model, or its conversion), which the benchmark writes first
MODEL_FILE_SYSTEMS = (CORTEX, ORT, CORTEX_CUDA, ORT_CUDA)
DEVICE = {**{n: "CPU" for n in CPU_SYSTEMS}, **{n: "CUDA" for n in GPU_SYSTEMS}}
#: GPU system -> runner kind of tools/peers/torch_gpu_peer.py
_GPU_KIND = {TORCH_GPU_NODE: "per_node", TORCH_GPU: "level_batched", CUDA_GRAPH: "cuda_graph"}


def system_status(name: str) -> str | None:
    if name in (CORTEX, ORT):
        try:
            import onnxruntime  # noqa: F401
        except ImportError as e:
            return f"not installed ({e})"
        if name == CORTEX:
            try:
                import cortex

                cortex.get_library_path()
                if not Path(cortex.get_library_path()).is_file():
                    return "not installed (Cortex EP library not built)"
            except ImportError as e:
                return f"not installed ({e})"
        return None
    if name == TORCH:
        return torch_peer.status()
    if name == DYNET:
        return dynet_peer.status()
    if name in (CORTEX_CUDA, ORT_CUDA):
        from . import cortex_gpu

        return cortex_gpu.cortex_cuda_status() if name == CORTEX_CUDA else cortex_gpu.ort_cuda_status()
    if name in GPU_SYSTEMS:
        s = torch_peer.cuda_status()
        if s is None and name == CUDA_GRAPH:
            from . import torch_gpu_peer

            s = torch_gpu_peer.cuda_graph_status()
        return s
    return "unknown system"


def model_status(name: str, entry) -> str | None:
    """None when system ``name`` implements model ``entry`` (a tools.peers.models.ModelEntry), else why not."""
    if name == DYNET:
        return entry.dynet_status if entry.dynet_builder is None else None
    if name in TORCH_GPU_SYSTEMS:
        from . import torch_gpu_peer

        return torch_gpu_peer.model_status(entry.name)
    return None


_FINGERPRINT: str | None = None


def _compiler_fingerprint() -> str:
    """Hash (computed once per process, so a run uses one compiler) of the Cortex compiler's Python sources and runtime headers: a cached converted model is reused only
    when the compiler that made it is unchanged."""
    global _FINGERPRINT
    if _FINGERPRINT is not None:
        return _FINGERPRINT
    import cortex

    root = Path(cortex.__file__).resolve().parent
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*.py"))
    try:
        from cortex.codegen import toolchain

        inc = Path(toolchain.runtime_include_dir())
        files += sorted(inc.rglob("*.h"))
    except Exception:  # noqa: BLE001
        pass
    for p in files:
        h.update(str(p.name).encode())
        h.update(p.read_bytes())
    _FINGERPRINT = h.hexdigest()[:16]
    return _FINGERPRINT


def converted_model(entry, params, hidden: int, seed: int, cache_dir: Path) -> tuple[Path, Path, dict]:
    """(Loop model path, converted model path, info) for (model, hidden, seed), cached under ``cache_dir``; the
    cache key (a hash of the Loop model and of the compiler's sources) names the directory, so a new conversion
    never overwrites a kernel library that a live session has loaded."""
    src, dst, info = convert_cached(entry.build_loop(params), f"{entry.name}_h{hidden}_s{seed}", cache_dir,
                                    strict=True)
    return src, dst, info


def convert_cached(model, tag: str, cache_dir: Path, strict: bool = True, target: str = "cpu") -> tuple[Path, Path, dict]:
    """Saves ``model`` (a ModelProto) and converts it with ``cortex.convert(strict=strict, target=target)``, cached
    under ``cache_dir/tag/<hash of the model and of the compiler>``. Returns (source path, converted path, info);
    info has ``converted`` (every recursive region converted, at least one), ``reason`` (why not, from the
    report), ``convert_s`` and ``cached``."""
    import cortex
    import onnx

    raw = model.SerializeToString()
    key = hashlib.sha256(raw).hexdigest()[:12] + "_" + _compiler_fingerprint() + ("" if target == "cpu" else f"_{target}")
    d = Path(cache_dir) / tag / key
    d.mkdir(parents=True, exist_ok=True)
    src, dst, meta = d / "model.onnx", d / "model.cortex.onnx", d / "cache.json"
    info = {"cache_dir": str(d), "key": key}
    if meta.exists() and dst.exists() and src.exists():
        try:
            old = json.loads(meta.read_text())
        except ValueError:
            old = {}
        if old.get("key") == key:
            info.update(old, cached=True)
            return src, dst, info
    src.write_bytes(raw)
    t0 = time.perf_counter()
    report = cortex.convert(str(src), str(dst), strict=strict, target=target)
    convert_s = time.perf_counter() - t0
    regions = [{"kind": r.kind, "node": r.node_name, "converted": r.converted, "reason": r.reason}
               for r in report.regions]
    ok = bool(report.regions) and not report.left
    reason = None if ok else ("no recursive region (Loop or cortex.TreeRec) found" if not report.regions else
                              "; ".join(f"{r.kind} '{r.node_name}': {r.reason}" for r in report.left))
    rec = {"key": key, "convert_s": convert_s, "converted": ok, "reason": reason, "regions": regions}
    meta.write_text(json.dumps(rec))
    info.update(rec, cached=False)
    return src, dst, info


class OrtRunner:
    def __init__(self, path, feeds_fn, cortex_ep: bool):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3  # no "nodes not assigned to the preferred EP" warnings
        if cortex_ep:
            import cortex

            self.sess = cortex.InferenceSession(str(path), sess_options=so)
        else:
            self.sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        self.feeds_fn = feeds_fn

        self.names = {i.name for i in self.sess.get_inputs()}

    def __call__(self, structure):
        return tuple(self.sess.run(None, {k: v for k, v in self.feeds_fn(structure).items() if k in self.names}))


class CortexRunner(OrtRunner, KernelCalls):
    """Cortex on the CPU through the session; ``session_steps`` where its time goes (tools/peers/kernel_alone.py)."""

    def __init__(self, path, feeds_fn):
        super().__init__(path, feeds_fn, cortex_ep=True)
        self.kernel = KernelAlone(path)


def build(name: str, entry, params, loop_path: Path, cortex_path: Path | None):
    """A callable structure -> outputs (a tuple, the Loop model's order) for system ``name``."""
    if name == CORTEX:
        return CortexRunner(cortex_path, entry.feeds)
    if name == ORT:
        return OrtRunner(loop_path, entry.feeds, cortex_ep=False)
    if name == TORCH:
        return torch_peer.TorchEager(entry.torch_module(params), entry.feeds)
    if name == DYNET:
        if entry.dynet_builder is None:
            raise ValueError(f"{entry.name}: {entry.dynet_status}")
        return entry.dynet_builder(params)
    if name == CORTEX_CUDA:
        from . import cortex_gpu

        # converted for the GPU beside the CPU conversion's cache entry (cache/<tag>/<key>/model.onnx)
        _, cuda_path, info = convert_cached(entry.build_loop(params), Path(loop_path).parents[1].name,
                                            Path(loop_path).parents[2], strict=True, target="cuda")
        runner = cortex_gpu.CortexCudaRunner(cuda_path, entry.feeds)
        runner.convert_info = info
        return runner
    if name == ORT_CUDA:
        from . import cortex_gpu

        return cortex_gpu.OrtCudaRunner(loop_path, entry.feeds)
    if name in GPU_SYSTEMS:
        from . import torch_gpu_peer

        why = torch_gpu_peer.model_status(entry.name)
        if why:
            raise ValueError(f"{entry.name}: {why}")
        return torch_gpu_peer.build(_GPU_KIND[name], params, device="cuda")
    raise ValueError(f"system {name!r} cannot run here")


def max_abs_err(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return float(np.nanmax(d)) if not np.isnan(d).any() else float("inf")

"""Running converted models: ONNX Runtime sessions with the Cortex execution provider (csrc/ep) selected.

The EP library is registered with ONNX Runtime once per process. It offers one device on the CPU and, where the
CUDA runtime sees NVIDIA GPUs, one per GPU; `device` picks one ("cpu", the default, "cuda" or "cuda:N"). A Cortex
EP runs the Cortex nodes converted for its device's target (`cortex-convert --target cpu|cuda`). ONNX Runtime's CPU
EP stays in the session and runs every node the Cortex EP does not claim; on a GPU, ONNX Runtime's CUDA EP runs them
first where this onnxruntime package has it (onnxruntime-gpu).
"""
import os
import threading
from pathlib import Path
from typing import Optional

import onnx
import onnxruntime as ort

from . import _paths, trust as trust_store

_EP_NAME = "CortexExecutionProvider"
# A session config entry marking options that already carry the Cortex EP (its value: the device), so adding it
# twice is a no-op.
_MARKER_KEY = "cortex.ep_added"
_ORT_CUDA_EP = "CUDAExecutionProvider"
QUIET_LOG_LEVEL = 4  # FATAL (SessionOptions start at -1: "not set", ORT's WARNING)
# ONNX Runtime's intra-op threads spin after each parallel op of theirs (a head's ReduceMean, a classifier's MatMul),
# on the cores the Cortex kernel's own pool then needs: a TreeLSTM forest with a mean head took 5.5 ms against
# 2.8 ms without spinning (2 cores, tools/serve_bench.py --head mean). On the CPU they do not spin unless asked.
_ORT_SPINNING_KEY = "session.intra_op.allow_spinning"
_registration_lock = threading.Lock()
_registered = False
# The EP library is built against ORT C API version 29 (the pinned headers): any ONNX Runtime package
# (onnxruntime, onnxruntime-gpu) of that version or newer can host it.
MIN_ORT_VERSION = (1, 29)


def check_ort_version(version: str = None) -> None:
    """Raises a clear error when the host ONNX Runtime is older than the EP library needs."""
    version = version or ort.__version__
    try:
        major_minor = tuple(int(x) for x in version.split(".")[:2])
    except ValueError:
        return  # a development build: let registration decide
    if major_minor < MIN_ORT_VERSION:
        need = ".".join(map(str, MIN_ORT_VERSION))
        raise RuntimeError(f"the Cortex EP needs ONNX Runtime >= {need} (C API {MIN_ORT_VERSION[1]}); this "
                           f"process has onnxruntime {version}: pip install -U onnxruntime (or onnxruntime-gpu)")


def get_library_path() -> str:
    """Path of the Cortex plugin EP library (libcortex_ep.so)."""
    return str(_paths.ep_library_path())


def get_ep_name() -> str:
    return _EP_NAME


def _cortex_ep_devices():
    return [device for device in ort.get_ep_devices() if device.ep_name == _EP_NAME]


def _ep_devices():
    """The Cortex EP's devices, registering the EP library first if this process has not yet."""
    global _registered
    check_ort_version()
    with _registration_lock:
        if not _registered:
            if not _cortex_ep_devices():  # someone may have registered the library already
                path = _paths.ep_library_path()
                if not path.is_file():
                    raise FileNotFoundError(
                        f"Cortex EP library not found at {path}; build it with `pip install .` "
                        "(or `pip install -e .`) in the Cortex source tree"
                    )
                ort.register_execution_provider_library(_EP_NAME, str(path))
            _registered = True
    devices = _cortex_ep_devices()
    if not devices:
        raise RuntimeError(f"ONNX Runtime lists no device for {_EP_NAME} after registering {get_library_path()}")
    return devices


def _cortex_ep_device(options: ort.SessionOptions) -> Optional[str]:
    """The device the options already run the Cortex EP on ("cpu", "cuda:0", ...), or None."""
    try:
        value = options.get_session_config_entry(_MARKER_KEY)
    except RuntimeError:  # ORT raises for a key that was never set
        return None
    return {"": None, "1": "cpu"}.get(value, value)


def parse_device(device) -> str:
    """"cpu", or "cuda:N" for "cuda" (N = 0), "cuda:N" and "gpu"; ValueError for anything else."""
    text = str(device or "cpu").strip().lower()
    if text == "cpu":
        return "cpu"
    kind, _, index = text.partition(":")
    if kind in ("cuda", "gpu") and (index == "" or index.isdigit()):
        return f"cuda:{int(index or 0)}"
    raise ValueError(f"device {device!r}: expected 'cpu', 'cuda' or 'cuda:N'")


def _cuda_unavailable(devices) -> str:
    """Why the Cortex EP offers no GPU, as its CPU device reports it."""
    for d in devices:
        reason = dict(d.ep_metadata).get("cuda_unavailable")
        if reason:
            return reason
    return "the CUDA runtime sees no NVIDIA GPU here"


def _select(device: str, devices) -> list:
    """The Cortex EP's OrtEpDevice for `device` (parse_device form), in a list; a clear error when there is none."""
    if device == "cpu":
        chosen = [d for d in devices if d.device.type == ort.OrtHardwareDeviceType.CPU]
        if not chosen:
            raise RuntimeError(f"ONNX Runtime lists no CPU device for {_EP_NAME}")
        return chosen
    ordinal = int(device.split(":")[1])
    gpus = [d for d in devices if d.device.type == ort.OrtHardwareDeviceType.GPU]
    chosen = [d for d in gpus if dict(d.ep_metadata).get("cuda_device_id") == str(ordinal)]
    if not chosen:
        if not gpus:
            raise RuntimeError(f"device={device!r}: the Cortex EP lists no NVIDIA GPU in this process "
                               f"({_cuda_unavailable(devices)}). Run on a machine with an NVIDIA GPU, its driver and "
                               "the CUDA runtime (libcudart, or set CORTEX_CUDART), or use device='cpu' with a model "
                               "converted for the CPU (cortex-convert --target cpu).")
        raise RuntimeError(f"device={device!r}: the Cortex EP lists CUDA devices "
                           f"{sorted(dict(d.ep_metadata).get('cuda_device_id') for d in gpus)} only")
    return chosen[:1]


def pinned_memory_info(device) -> Optional["ort.OrtMemoryInfo"]:
    """The Cortex EP's pinned (page-locked) host memory for GPU `device` ("cuda", "cuda:N"): outputs ONNX Runtime
    copies there from the GPU move at the link's speed, not through a pageable staging copy. None for "cpu"."""
    device = parse_device(device)
    if device == "cpu":
        return None
    return _select(device, _ep_devices())[0].memory_info(ort.OrtDeviceMemoryType.HOST_ACCESSIBLE)


def _ort_cuda_devices(cortex_gpu) -> list:
    """ONNX Runtime's own CUDA EP device for the same GPU, when this onnxruntime has one (onnxruntime-gpu)."""
    ordinal = int(dict(cortex_gpu.ep_metadata).get("cuda_device_id", 0))
    cuda = [d for d in ort.get_ep_devices()
            if d.ep_name == _ORT_CUDA_EP and d.device.type == ort.OrtHardwareDeviceType.GPU]
    return cuda[ordinal:ordinal + 1]


def _trusted_digests(trust) -> list:
    """sha256 digests from `trust`: digests, and paths of converted models (meaning: their kernel files)."""
    from .artifacts import MAX_KERNEL_BYTES, cortex_nodes, resolve_kernel, sha256_file
    from .convert import load_model

    items = [trust] if isinstance(trust, (str, bytes, os.PathLike)) else list(trust)
    digests = []
    for item in items:
        if trust_store.is_sha256(item):
            digests.append(item.lower())
            continue
        path = Path(os.fsdecode(item))
        if not path.is_file():
            raise trust_store.TrustError(f"trust: {item!r} is neither a sha256 digest nor a model file")
        for node in cortex_nodes(load_model(path)):
            digests.append(sha256_file(resolve_kernel(path, node.cache_context), MAX_KERNEL_BYTES))
    return digests


def _config_entry(options: ort.SessionOptions, key: str) -> Optional[str]:
    try:
        return options.get_session_config_entry(key)
    except RuntimeError:  # never set
        return None


def _add_trust(options: ort.SessionOptions, digests: list):
    key = trust_store.SESSION_CONFIG_KEY
    current = trust_store.parse_list(_config_entry(options, key) or "")
    merged = list(dict.fromkeys(current + digests))
    options.add_session_config_entry(key, ",".join(merged))


def session_options(base: Optional[ort.SessionOptions] = None, trust=None, device: str = "cpu") -> ort.SessionOptions:
    """SessionOptions that run Cortex nodes on the Cortex EP (and everything else on ORT's CPU EP).

    With `base`, the Cortex EP is added to those options (in place) and they are returned.
    ONNX Runtime's log level is set to FATAL unless the options set one: errors still raise, once; set
    `log_severity_level` to see ORT's log. On the CPU, ONNX Runtime's own intra-op threads do not spin between ops
    unless the options say so (`session.intra_op.allow_spinning`): the Cortex kernel's threads need those cores.
    `trust`: kernels to trust in these sessions beyond the local trust store (cortex.trust): sha256 digests and/or
    paths of converted models whose kernel files you trust (a str, a path, or a list of them).
    `device`: "cpu" (models converted with --target cpu), or "cuda" / "cuda:N" (models converted with --target
    cuda; the Cortex EP then runs on that NVIDIA GPU, and ONNX Runtime's CUDA EP, where this onnxruntime package has
    it, runs the other nodes before ORT's CPU EP does). A clear error when the Cortex EP lists no such device.
    """
    device = parse_device(device)
    options = base if base is not None else ort.SessionOptions()
    if options.log_severity_level < 0:
        # Quiet unless asked: every error reaches the caller as an exception (an ORT log line would say it twice),
        # and nodes run by ORT's CPU EP beside the Cortex EP are by design, not worth a warning.
        options.log_severity_level = QUIET_LOG_LEVEL
    if trust is not None:
        _add_trust(options, _trusted_digests(trust))
    present = _cortex_ep_device(options)
    if present is not None:
        if present != device:
            raise ValueError(f"these session options already run the Cortex EP on {present!r}, not {device!r}")
        return options
    chosen = _select(device, _ep_devices())
    if device == "cpu" and _config_entry(options, _ORT_SPINNING_KEY) is None:
        options.add_session_config_entry(_ORT_SPINNING_KEY, "0")
    if device != "cpu":
        # ORT's CUDA EP first: ORT keeps one stream factory per device type and the first EP to register wins, and
        # ORT's CUDA kernels need their own streams (Cortex kernels take any CUDA stream). It claims no Cortex node.
        cuda = _ort_cuda_devices(chosen[0])
        if cuda:
            options.add_provider_for_devices(cuda, {})
    options.add_provider_for_devices(chosen, {})
    options.add_session_config_entry(_MARKER_KEY, device)
    return options


# The EP's messages for a kernel it would not or could not load; a rebuild from the model's IR answers each.
_REBUILDABLE = ("Cortex kernel refused", "Cortex kernel artifact")


def _rebuilt_path(path: Path) -> Path:
    """Where a rebuilt copy of the model at `path` lives: the (private) cache's `rebuilt/<digest>/`, keyed by the
    model file and all its external data, leaving the user's model and its folder untouched."""
    from .artifacts import model_digest
    from .codegen.toolchain import cache_root

    return cache_root() / "rebuilt" / model_digest(path)[:32] / path.name


def _target_mismatch(path_or_bytes, device: str) -> Optional[str]:
    """When the model's Cortex nodes were converted for another target than `device` runs: what to do."""
    from .artifacts import cortex_nodes

    try:
        model = onnx.load_model_from_string(bytes(path_or_bytes)) if isinstance(path_or_bytes, (bytes, bytearray)) \
            else onnx.load(os.fspath(path_or_bytes), load_external_data=False)
        targets = {n.node.name: n.notes.get("target", "cpu") for n in cortex_nodes(model)}
    except Exception:  # noqa: BLE001 - only a better message is at stake; ORT's own error follows otherwise
        return None
    wanted = "cpu" if device == "cpu" else "cuda"
    other = {name: t for name, t in targets.items() if t != wanted}
    if not other:
        return None
    name, target = next(iter(other.items()))
    if target == "cuda":
        advice = ("open it with cortex.InferenceSession(path, device='cuda') on a machine with an NVIDIA GPU, or "
                  "convert the original model for the CPU (cortex-convert --target cpu)")
    else:
        advice = ("open it with cortex.InferenceSession(path) (device='cpu'), or convert the original model for the "
                  "GPU (cortex-convert --target cuda)")
    return (f"Cortex node '{name}' holds a kernel for target '{target}', but this session runs the Cortex EP on "
            f"{device!r}: {advice}")


def _portable(path_or_bytes):
    """A model holding ``cortex.TreeRec`` nodes (not converted, or partly) as ONNX Runtime can run it: their lowering,
    in memory; any other model as it was given."""
    from .treerec.portable import has_treerec, to_portable

    try:
        model = onnx.load_model_from_string(bytes(path_or_bytes)) if isinstance(path_or_bytes, (bytes, bytearray)) \
            else onnx.load(os.fspath(path_or_bytes), load_external_data=False)
    except Exception:  # noqa: BLE001 - not ours to judge: ONNX Runtime says what is wrong with the file
        return path_or_bytes
    if not has_treerec(model):
        return path_or_bytes
    if not isinstance(path_or_bytes, (bytes, bytearray)):
        if any(n.op_type == "EPContext" for n in model.graph.node):
            raise RuntimeError(f"{os.fspath(path_or_bytes)} holds Cortex kernels and cortex.TreeRec nodes: convert the "
                               "original model again (cortex-convert writes no such mix)")
        model = onnx.load(os.fspath(path_or_bytes))
    return to_portable(model).SerializeToString()


def _create(path_or_bytes, options, device, kwargs) -> ort.InferenceSession:
    path_or_bytes = _portable(path_or_bytes)
    try:
        return ort.InferenceSession(path_or_bytes, sess_options=options, **kwargs)
    except Exception as e:  # onnxruntime raises its own exception types
        if "EPContext" in str(e):  # no EP claimed a Cortex node: say why when it is the target
            why = _target_mismatch(path_or_bytes, device)
            if why:
                raise RuntimeError(why) from e
        raise


def InferenceSession(path_or_bytes, sess_options: Optional[ort.SessionOptions] = None, *, trust=None,
                     rebuild: bool = False, device: str = "cpu", **kwargs) -> ort.InferenceSession:
    """An onnxruntime.InferenceSession for a converted model, with the Cortex EP selected.

    `sess_options`, when given, is extended with the Cortex EP (see `session_options`); `trust` and `device` as
    there (a model converted with --target cuda runs with device="cuda"). With `rebuild=True`, a model whose kernels
    the EP refuses (not trusted here, built for another CPU, missing) is rebuilt from the IR it carries (see
    `cortex.rebuild`) into a copy in Cortex's cache, and that copy runs; the model file given is never changed.
    Other keyword arguments go to onnxruntime.InferenceSession unchanged.
    """
    device = parse_device(device)
    options = session_options(sess_options, trust=trust, device=device)
    if not rebuild:
        return _create(path_or_bytes, options, device, kwargs)
    if isinstance(path_or_bytes, (bytes, bytearray)):
        raise ValueError("rebuild=True needs the model's path (the rebuilt copy is written beside Cortex's cache)")
    try:
        return ort.InferenceSession(path_or_bytes, sess_options=options, **kwargs)
    except Exception as e:  # onnxruntime raises its own exception types
        if not any(marker in str(e) for marker in _REBUILDABLE):
            raise
    from .rebuild import rebuild as rebuild_model

    rebuilt = _rebuilt_path(Path(os.fsdecode(path_or_bytes)))
    if rebuilt.is_file():
        try:
            return ort.InferenceSession(str(rebuilt), sess_options=options, **kwargs)
        except Exception as e:
            if not any(marker in str(e) for marker in _REBUILDABLE):
                raise
    rebuild_model(path_or_bytes, rebuilt)
    return ort.InferenceSession(str(rebuilt), sess_options=options, **kwargs)

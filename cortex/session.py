"""Running converted models: ONNX Runtime sessions with the Cortex execution provider (csrc/ep) selected.

The EP library is registered with ONNX Runtime once per process; ONNX Runtime's CPU EP stays in the session and
runs every node the Cortex EP does not claim.
"""
import os
import threading
from pathlib import Path
from typing import Optional

import onnxruntime as ort

from . import _paths, trust as trust_store

_EP_NAME = "CortexExecutionProvider"
# A session config entry marking options that already carry the Cortex EP, so adding it twice is a no-op.
_MARKER_KEY = "cortex.ep_added"
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


def _has_cortex_ep(options: ort.SessionOptions) -> bool:
    try:
        return options.get_session_config_entry(_MARKER_KEY) == "1"
    except RuntimeError:  # ORT raises for a key that was never set
        return False


def _trusted_digests(trust) -> list:
    """sha256 digests from `trust`: digests, and paths of converted models (meaning: their kernel files)."""
    from .artifacts import cortex_nodes, resolve_kernel, sha256_file
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
            digests.append(sha256_file(resolve_kernel(path, node.cache_context)))
    return digests


def _add_trust(options: ort.SessionOptions, digests: list):
    key = trust_store.SESSION_CONFIG_KEY
    try:
        current = trust_store.parse_list(options.get_session_config_entry(key))
    except RuntimeError:  # never set
        current = []
    merged = list(dict.fromkeys(current + digests))
    options.add_session_config_entry(key, ",".join(merged))


def session_options(base: Optional[ort.SessionOptions] = None, trust=None) -> ort.SessionOptions:
    """SessionOptions that run Cortex nodes on the Cortex EP (and everything else on ORT's CPU EP).

    With `base`, the Cortex EP is added to those options (in place) and they are returned.
    `trust`: kernels to trust in these sessions beyond the local trust store (cortex.trust): sha256 digests and/or
    paths of converted models whose kernel files you trust (a str, a path, or a list of them).
    """
    options = base if base is not None else ort.SessionOptions()
    if trust is not None:
        _add_trust(options, _trusted_digests(trust))
    if not _has_cortex_ep(options):
        options.add_provider_for_devices(_ep_devices(), {})
        options.add_session_config_entry(_MARKER_KEY, "1")
    return options


# The EP's messages for a kernel it would not or could not load; a rebuild from the model's IR answers each.
_REBUILDABLE = ("Cortex kernel refused", "Cortex kernel artifact")


def _rebuilt_path(path: Path) -> Path:
    """Where a rebuilt copy of the model at `path` lives: the kernel cache's `rebuilt/<model sha256>/`, leaving the
    user's model and its folder untouched."""
    from .artifacts import sha256_file
    from .codegen.toolchain import cache_dir

    return cache_dir().parent / "rebuilt" / sha256_file(path)[:32] / path.name


def InferenceSession(path_or_bytes, sess_options: Optional[ort.SessionOptions] = None, *, trust=None,
                     rebuild: bool = False, **kwargs) -> ort.InferenceSession:
    """An onnxruntime.InferenceSession for a converted model, with the Cortex EP selected.

    `sess_options`, when given, is extended with the Cortex EP (see `session_options`); `trust` as there. With
    `rebuild=True`, a model whose kernels the EP refuses (not trusted here, built for another CPU, missing) is
    rebuilt from the IR it carries (see `cortex.rebuild`) into a copy in Cortex's cache, and that copy runs; the
    model file given is never changed. Other keyword arguments go to onnxruntime.InferenceSession unchanged.
    """
    options = session_options(sess_options, trust=trust)
    if not rebuild:
        return ort.InferenceSession(path_or_bytes, sess_options=options, **kwargs)
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

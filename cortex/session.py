"""Running converted models: ONNX Runtime sessions with the Cortex execution provider (csrc/ep) selected.

The EP library is registered with ONNX Runtime once per process; ONNX Runtime's CPU EP stays in the session and
runs every node the Cortex EP does not claim.
"""
import threading
from typing import Optional

import onnxruntime as ort

from . import _paths

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


def session_options(base: Optional[ort.SessionOptions] = None) -> ort.SessionOptions:
    """SessionOptions that run Cortex nodes on the Cortex EP (and everything else on ORT's CPU EP).

    With `base`, the Cortex EP is added to those options (in place) and they are returned.
    """
    options = base if base is not None else ort.SessionOptions()
    if not _has_cortex_ep(options):
        options.add_provider_for_devices(_ep_devices(), {})
        options.add_session_config_entry(_MARKER_KEY, "1")
    return options


def InferenceSession(path_or_bytes, sess_options: Optional[ort.SessionOptions] = None, **kwargs) -> ort.InferenceSession:
    """An onnxruntime.InferenceSession for a converted model, with the Cortex EP selected.

    `sess_options`, when given, is extended with the Cortex EP (see `session_options`); other keyword arguments go
    to onnxruntime.InferenceSession unchanged.
    """
    return ort.InferenceSession(path_or_bytes, sess_options=session_options(sess_options), **kwargs)

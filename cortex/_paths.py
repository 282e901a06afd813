"""Where Cortex's built native pieces live, for installed and for editable (source tree) installs."""
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
_SOURCE_ROOT = _PACKAGE_DIR.parent


def ep_library_path() -> Path:
    """The plugin execution provider library, `cortex/lib/libcortex_ep.so`."""
    return _PACKAGE_DIR / "lib" / "libcortex_ep.so"


def runtime_include_dir() -> Path:
    """The directory holding the runtime headers (kernel_abi.h, ...) that generated kernels include.

    Installed: `cortex/include/cortex`. Editable install or plain source tree: `<repo>/csrc/runtime`.
    """
    installed = _PACKAGE_DIR / "include" / "cortex"
    if (installed / "kernel_abi.h").is_file():
        return installed
    source = _SOURCE_ROOT / "csrc" / "runtime"
    if (source / "kernel_abi.h").is_file():
        return source
    raise FileNotFoundError(
        f"Cortex runtime headers not found in {installed} or {source}; reinstall cortex (pip install .)"
    )

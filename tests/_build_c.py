"""Helpers for tests that need the pybind11 module ``cortex._C``.

``load_C()`` imports ``cortex._C`` (adding the repository root to ``sys.path`` when the package
is not installed) and returns it, or ``None`` when the module has not been built.

Run this file to build the module in place (a stop-gap until the CMake build lands)::

    python tests/_build_c.py

which runs
``c++ -O3 -march=native -shared -fPIC -std=c++17 $(python -m pybind11 --includes)
-Icsrc/runtime csrc/python/*.cc -o cortex/_C$(python3-config --extension-suffix)``.
"""

from __future__ import annotations

import glob
import importlib
import os
import subprocess
import sys
import sysconfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_C():
    try:
        return importlib.import_module("cortex._C")
    except ImportError:
        pass
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
        # a namespace-package 'cortex' imported from elsewhere would shadow ours
        for name in [m for m in sys.modules if m == "cortex" or m.startswith("cortex.")]:
            mod = sys.modules[name]
            if getattr(mod, "__file__", None) is None:
                del sys.modules[name]
    try:
        return importlib.import_module("cortex._C")
    except ImportError:
        return None


def build(extra_flags=()):
    import pybind11

    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    out = os.path.join(REPO, "cortex", "_C" + suffix)
    cmd = [
        os.environ.get("CXX", "c++"),
        "-O3",
        "-march=native",
        "-shared",
        "-fPIC",
        "-std=c++17",
        "-Wall",
        "-Wextra",
        "-I" + pybind11.get_include(),
        "-I" + sysconfig.get_paths()["include"],
        "-I" + os.path.join(REPO, "csrc", "runtime"),
        *sorted(glob.glob(os.path.join(REPO, "csrc", "python", "*.cc"))),
        "-o",
        out,
        *extra_flags,
    ]
    print(" ".join(cmd))
    subprocess.check_call(cmd)
    return out


if __name__ == "__main__":
    print(build(sys.argv[1:]))

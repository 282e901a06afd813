"""Builds Cortex's native parts with CMake (see CMakeLists.txt) into the `cortex` package.

Regular builds fill <build_lib>/cortex: `_C*.so`, `lib/libcortex_ep.so`, `include/cortex/*.{h,cuh,def}`.
Editable builds put `_C*.so` and `lib/` into the source tree's cortex/ (the headers are read from csrc/runtime).
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeBuild(build_ext):
    """One CMake project builds every native piece; the single Extension only marks the wheel as binary."""

    def run(self):
        cmake = shutil.which("cmake")
        if cmake is None:
            raise RuntimeError("Building Cortex needs CMake >= 3.18 on PATH (apt-get install cmake, or pip install cmake)")
        import pybind11

        in_tree = self.inplace or getattr(self, "editable_mode", False)
        package_dir = ROOT / "cortex" if in_tree else Path(self.build_lib).resolve() / "cortex"
        build_dir = Path(self.build_temp).resolve() / "cmake"
        configure = [
            cmake, "-S", str(ROOT), "-B", str(build_dir),
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DCORTEX_PACKAGE_DIR={package_dir}",
            f"-DCORTEX_COPY_HEADERS={'OFF' if in_tree else 'ON'}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
        ]
        subprocess.check_call(configure)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 2)
        subprocess.check_call([cmake, "--build", str(build_dir), "--parallel", jobs])
        # Everything both targets need at conversion and at run time: the EP, cortex._C, the runtime headers that
        # generated C++ and CUDA kernels include.
        self._built = [p for p in package_dir.rglob("*") if p.is_file() and p.suffix in (".so", ".h", ".cuh", ".def")]

    def get_outputs(self):
        return [str(p) for p in getattr(self, "_built", [])]

    def get_output_mapping(self):
        return {}


setup(
    packages=find_packages(include=["cortex", "cortex.*"]),  # the repository's onnx_ops (zoo, generator) is not installed
    ext_modules=[Extension("cortex._native", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)

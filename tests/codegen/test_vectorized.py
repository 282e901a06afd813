"""The generated element loops (gates, activations, set reductions) vectorize. They carry `#pragma omp simd` and the
kernels compile with -fopenmp-simd: without it GCC 13 leaves a TreeLSTM's gate loop scalar ("control flow in loop":
its if-conversion gives up on the activations' selects), which made the whole kernel 2-3x slower on a host with
that compiler (docs/performance.md). Checked with the compiler's own vectorization report, on every zoo model, with
the flags and CPU level cortex-convert compiles with (GCC only: the report is GCC's)."""
from __future__ import annotations

import re
import subprocess

import onnx
import pytest

import cortex
from cortex._paths import runtime_include_dir
from cortex.codegen import toolchain
from onnx_ops.zoo import MODELS


def _is_gcc(cxx: str) -> bool:
    result = subprocess.run([cxx, "--version"], capture_output=True, text=True)
    return result.returncode == 0 and ("GCC" in result.stdout or "Free Software Foundation" in result.stdout)


pytestmark = pytest.mark.skipif(not _is_gcc(toolchain.compiler()), reason="the vectorization report is GCC's")


def _simd_loops(source: str) -> list:
    """(first, last) 1-based lines of each loop that follows a `#pragma omp simd` and computes (its body names
    temporaries: gates, activations, arithmetic; a pure copy or transposition may stay scalar); GCC reports a
    vectorized loop at its header or at a line of its body."""
    lines = source.splitlines()
    loops = []
    for k, line in enumerate(lines[:-1]):
        if line.strip() == "#pragma omp simd":
            header = lines[k + 1]
            indent = header[:len(header) - len(header.lstrip())]
            end = k + 1
            if header.rstrip().endswith("{"):
                end = next(e for e in range(k + 2, len(lines)) if lines[e].startswith(indent + "}"))
            if any(re.match(r"\s*const (float|double) v\d+ = ", body) for body in lines[k + 2:end]):
                loops.append((k + 2, end + 1))
    return loops


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_element_loop_vectorizes(tmp_path, name):
    entry = MODELS[name]
    src = tmp_path / f"{name}.onnx"
    onnx.save(entry.build_loop(entry.make_params(32, seed=1)), str(src))
    out = tmp_path / f"{name}.cortex.onnx"
    cortex.convert(str(src), str(out))
    [source_file] = sorted((tmp_path / f"{name}.cortex").glob("*.cc"))
    source = source_file.read_text()
    loops = _simd_loops(source)
    assert loops, "no computing element loop carries #pragma omp simd"
    target = toolchain.cpu_target()
    result = subprocess.run([toolchain.compiler(), *toolchain.BASE_FLAGS, *target.flags, *toolchain.extra_flags(),
                             f"-I{runtime_include_dir()}", str(source_file), "-o", str(tmp_path / "k.so"),
                             "-fopt-info-vec-optimized"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    pattern = re.compile(rf"{re.escape(source_file.name)}:(\d+):\d+: optimized: loop vectorized")
    vectorized = {int(m.group(1)) for m in pattern.finditer(result.stderr)}
    scalar = [first for first, last in loops if not any(first <= line <= last for line in vectorized)]
    assert not scalar, (f"{name}: element loops left scalar at lines {scalar} of the generated source:\n"
                        + "\n".join(source.splitlines()[line - 1] for line in scalar))

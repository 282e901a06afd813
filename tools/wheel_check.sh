#!/usr/bin/env bash
# The package as users install it: build the wheel, install it (not editable) in a fresh virtual environment with
# the `cpu` extra's ONNX Runtime and no torch, and use it from outside the checkout: `cortex demo` converts a
# TreeLSTM for the CPU, runs it against ONNX Runtime and checks they agree; `cortex-convert --target cuda` generates
# and compiles the same model's CUDA kernel with nvcc (set CORTEX_SKIP_CUDA_CHECK=1 on a machine without nvcc);
# only the `cortex` package is installed, with the runtime headers both targets include. Run by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
python -m pip wheel -q --no-deps "$repo" -w "$work/dist"
wheel="$(ls "$work"/dist/onnxruntime_ep_cortex-*.whl)"
echo "wheel-check: built $(basename "$wheel") in $(( $(date +%s) - start )) s"
python -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip
"$work/venv/bin/python" -m pip install -q "${wheel}[cpu]"
cd "$work"  # away from the checkout: nothing of it is importable
export CORTEX_CACHE_DIR="$work/cache" CORTEX_TRUST_DIR="$work/trust"
"$work/venv/bin/python" - "$wheel" <<'EOF'
import importlib.util, sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
assert tops == {"cortex"}, f"the wheel installs {sorted(tops)}, not only cortex"
for header in ("kernel_abi.h", "kernel_support.h", "cuda_support.cuh", "cpu_features.def"):
    assert f"cortex/include/cortex/{header}" in names, f"the wheel lacks the runtime header {header}"
assert importlib.util.find_spec("onnx_ops") is None, "the repository's onnx_ops is importable"
assert importlib.util.find_spec("torch") is None, "torch is installed: the check wants a user's plain install"
import cortex, cortex._paths
assert "site-packages" in cortex.__file__, cortex.__file__
print(f"wheel-check: installed cortex from {cortex.__file__.rsplit('/', 2)[0]}; headers in "
      f"{cortex._paths.runtime_include_dir()}")
EOF
"$work/venv/bin/cortex" demo --hidden 32 --trees 3 --out "$work/demo"
if [ "${CORTEX_SKIP_CUDA_CHECK:-0}" = "1" ]; then
  echo "wheel-check: CUDA check skipped (CORTEX_SKIP_CUDA_CHECK=1)"
else
  "$work/venv/bin/cortex-convert" "$work/demo/treelstm.onnx" -o "$work/cuda/treelstm.cuda.onnx" --target cuda --strict
  ls "$work"/cuda/treelstm.cortex/*.so > /dev/null
  echo "wheel-check: CUDA kernel generated and compiled from the installed wheel"
fi
echo "wheel-check: ok in $(( $(date +%s) - start )) s"

#!/usr/bin/env bash
# The GPU check, in one call on a machine with an NVIDIA GPU: builds the native parts in place, runs the GPU tests,
# checks every zoo kernel through its C ABI (CPU and CUDA against ONNX Runtime), and runs the GPU benchmark.
# Everything it produces goes under $OUT (default ./gpu_check_out): logs, JUnit XML, cuda_check.json, bench/ (the
# benchmark's results.json and results.md) and performance-gpu.md (docs/performance-gpu.md from that run).
#
#   bash tools/gpu_check.sh
#
# Needs: python3 with numpy, onnx, onnxruntime (>= 1.29; a CPU build is fine: the Cortex EP brings the GPU), torch
# with CUDA (the GPU peers and the kernel-alone timing), pybind11, cmake, g++, nvcc. No network: the ONNX Runtime C
# headers must come with the repository, in the git-ignored folder .cache/ort-headers (the build's default place;
# ORT_INCLUDE_DIR overrides). On the project's device machine:
#
#   mkdir -p .cache && cp -r /work/main/.cache/ort-headers .cache/     # once, in the worktree (.cache/ is ignored)
#   run(command="bash tools/gpu_check.sh", carry=[".cache/ort-headers"], timeout_s=600)
#
# Each step is bounded so the whole run ends within GPU_CHECK_BUDGET seconds (default 570) and $OUT always holds
# what finished; summary.txt lists every step with its exit code and time. Exit code: 0 when every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
OUT="${OUT:-$repo/gpu_check_out}"
mkdir -p "$OUT"
start=$(date +%s)
deadline=$((start + ${GPU_CHECK_BUDGET:-570}))
summary="$OUT/summary.txt"
: > "$summary"
status=0

work="$(mktemp -d)"
export CORTEX_CACHE_DIR="$work/cache"  # compiled kernels of this run only
export CORTEX_TRUST_DIR="$work/trust"  # kernels compiled here are trusted here
mkdir -m 700 -p "$CORTEX_TRUST_DIR"
export ORT_INCLUDE_DIR="${ORT_INCLUDE_DIR:-$repo/.cache/ort-headers}"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
# The Cortex EP loads libcudart at run time (never linked): make the toolkit's findable too.
for lib in "${CUDA_HOME:-/usr/local/cuda}/lib64" /usr/local/cuda/lib64; do
  [ -d "$lib" ] && export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" && break
done
command -v nvcc >/dev/null || { [ -x /usr/local/cuda/bin/nvcc ] && export PATH="/usr/local/cuda/bin:$PATH"; }

# step NAME CAP_SECONDS COMMAND...: runs COMMAND with its output in $OUT/NAME.log, for at most CAP seconds and never
# past the deadline; records the outcome in summary.txt.
step() {
  local name="$1" cap="$2"
  shift 2
  local left=$((deadline - $(date +%s)))
  local limit=$((cap < left ? cap : left))
  if [ "$limit" -le 5 ]; then
    echo "$name: SKIPPED (no time left in GPU_CHECK_BUDGET)" | tee -a "$summary"
    status=1
    return 1
  fi
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local took=$(( $(date +%s) - t0 ))
  local verdict="ok"
  [ $rc -ne 0 ] && verdict="FAILED (exit $rc$([ $rc -eq 124 ] && echo ", timed out after ${limit}s"))" && status=1
  echo "$name: $verdict in ${took}s: $*" | tee -a "$summary"
  tail -n 3 "$OUT/$name.log" | sed 's/^/    /' | tee -a "$summary"
  return $rc
}

{
  echo "date: $(date -Is)"; echo "host: $(hostname)"; uname -a
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | head -5
  nvcc --version 2>&1 | tail -2
  python3 - <<'EOF'
import sys
print("python", sys.version.split()[0])
for name in ("numpy", "onnx", "onnxruntime", "torch", "pybind11"):
    try:
        module = __import__(name)
        extra = ""
        if name == "torch":
            extra = f" cuda {module.version.cuda}, available {module.cuda.is_available()}"
        if name == "onnxruntime":
            extra = f" providers {module.get_available_providers()}"
        print(name, module.__version__ + extra)
    except Exception as e:  # noqa: BLE001
        print(name, "MISSING", e)
EOF
  echo "ORT_INCLUDE_DIR=$ORT_INCLUDE_DIR"; ls "$ORT_INCLUDE_DIR" 2>&1 | head -3
} > "$OUT/env.txt" 2>&1

if [ ! -f "$ORT_INCLUDE_DIR/onnxruntime_ep_c_api.h" ]; then
  echo "build: FAILED: no ONNX Runtime headers in $ORT_INCLUDE_DIR (carry .cache/ort-headers, see the top of" \
       "tools/gpu_check.sh)" | tee -a "$summary"
  exit 1
fi

step build 240 python3 setup.py build_ext --inplace || { echo "stopping: the build failed" | tee -a "$summary"; exit 1; }

step ep_devices 60 python3 - <<'EOF'
import onnxruntime as ort
import cortex
from cortex import session
session._ep_devices()
for d in ort.get_ep_devices():
    print(d.ep_name, d.device.type, hex(d.device.vendor_id), dict(d.device.metadata), dict(d.ep_metadata))
print("cortex device='cuda':", session._select("cuda:0", session._ep_devices()))
EOF

step tests 240 python3 -m pytest -q -rs -p no:cacheprovider --junitxml="$OUT/tests.xml" tests/codegen/test_cuda.py \
  tests/tools/test_gpu_peers.py
step cuda_check 150 python3 tools/cuda_check.py --cuda --time --out "$OUT/cuda_check.json"
step bench 330 python3 tools/bench.py --target cuda --quick --phases --no-progress --out "$OUT/bench"
if [ -f "$OUT/bench/results.json" ]; then
  step gpu_doc 30 python3 -m tools.peers.gpu_report "$OUT/bench/results.json" --doc "$OUT/performance-gpu.md"
fi
echo "total: $(( $(date +%s) - start ))s, exit $status" | tee -a "$summary"
rm -rf "$work"
exit $status

#!/usr/bin/env bash
# Sanitizer runs over Cortex's native code (docs/reliability.md, "Sanitizers"). CI runs this after the tests.
#
# 1. AddressSanitizer + UndefinedBehaviorSanitizer: the EP library and cortex._C are built again with
#    -fsanitize=address,undefined into a copy of the checkout, generated kernels are compiled with the same flags
#    (CORTEX_KERNEL_CXXFLAGS), and the EP, security, fuzz, pipeline, linearizer and GEMM tests run with the ASan
#    runtime preloaded into Python. Any report aborts the process (-fno-sanitize-recover, halt_on_error), so a
#    finding is a failed test.
# 2. ThreadSanitizer: kernels compiled with -fsanitize=thread run from several threads at once in a small C++
#    driver (tools/sanitize/kernel_driver.cc), which exercises the thread pool, the workspace pool and the
#    linearizer; a Python process cannot host TSan.
#
# Usage: tools/sanitize.sh [pytest args...]   (default: the test files below). Needs g++ with libasan, libubsan
# and libtsan, CMake, pybind11 (the test extra), and the ORT headers (ORT_INCLUDE_DIR or .cache/ort-headers).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ -n "${CORTEX_SANITIZE_WORK:-}" ]; then  # keep the builds between runs (development)
    work="$CORTEX_SANITIZE_WORK"
    mkdir -p "$work"
else
    work="$(mktemp -d "${TMPDIR:-/tmp}/cortex-sanitize.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
fi
jobs="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
start=$(date +%s)
log="$work/sanitize.log"
: > "$log"
# A process that aborts on a report loses what pytest captured: pytest captures only Python's sys.stdout/stderr
# here (--capture=sys), so reports written to file descriptor 2 land in the log, which is searched afterwards.
show_reports() {
    if grep -q -E "runtime error:|ERROR: (AddressSanitizer|LeakSanitizer)|WARNING: ThreadSanitizer" "$log"; then
        grep -n -A30 -E "runtime error:|ERROR: (AddressSanitizer|LeakSanitizer)|WARNING: ThreadSanitizer" "$log" \
            | head -150
        return 0
    fi
    return 1
}

# ---- a copy of the checkout, so the sanitized build never replaces the normal one -------------------------------
src="$work/src"
mkdir -p "$src"
tar -C "$root" --exclude=./.git --exclude=./build --exclude=./cortex/lib --exclude='./cortex/_C*.so' \
    --exclude='*/__pycache__' -cf - . | tar -C "$src" -xf -

# ---- 1. ASan + UBSan --------------------------------------------------------------------------------------------
asan_flags="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
# -O1 -g1 (line tables): sanitized code compiles twice as fast as at -O3 -g and still names file:line in reports.
opt_flags="-O1 -g1"
python_module=ON
pybind11_dir="$(python -m pybind11 --cmakedir 2>/dev/null)" || python_module=OFF
cmake -S "$src" -B "$work/build-asan" -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="$opt_flags" \
    -DCMAKE_CXX_FLAGS="$asan_flags" -DCMAKE_SHARED_LINKER_FLAGS="$asan_flags" \
    -DCMAKE_MODULE_LINKER_FLAGS="$asan_flags" -DCORTEX_PACKAGE_DIR="$src/cortex" -DCORTEX_COPY_HEADERS=OFF \
    -DCORTEX_BUILD_PYTHON_MODULE="$python_module" -DPython_EXECUTABLE="$(command -v python)" \
    ${pybind11_dir:+-Dpybind11_DIR="$pybind11_dir"} > "$work/cmake-asan.log"
nice cmake --build "$work/build-asan" --parallel "$jobs" > "$work/build-asan.log" || {
    tail -50 "$work/build-asan.log"; exit 1; }
echo "sanitize: ASan/UBSan build done ($(( $(date +%s) - start )) s; cortex._C: $python_module)"

tests=("$@")
if [ ${#tests[@]} -eq 0 ]; then
    tests=(tests/ep/test_ep.py tests/ep/test_security.py tests/ep/test_ep_fuzz.py tests/ir/test_ir_serialize.py
           tests/runtime/test_linearizer.py tests/runtime/test_gemm.py tests/e2e/test_pipeline.py tests/ep/test_cuda_plumbing.py
           tests/serving/test_forest_rows.py tests/serving/test_index_check.py)
fi
(
    cd "$src"
    export CORTEX_CACHE_DIR="$work/cache-asan"  # kernels compiled with the sanitizer flags
    export CORTEX_KERNEL_CXXFLAGS="$asan_flags $opt_flags"
    # libstdc++ beside the ASan runtime: its __cxa_throw interceptor needs the real one at start-up, and Python
    # itself does not link libstdc++ (ONNX Runtime's exceptions would abort the process otherwise).
    export LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so)"
    # Python's own allocations are not ours to judge: no leak check; everything else aborts on the first report.
    export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:detect_odr_violation=0"
    export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
    # No real CUDA runtime under ASan (its mappings can collide with ASan's shadow memory); the GPU plumbing runs
    # against test_cuda_plumbing.py's stand-in runtime, which that test loads itself.
    export CORTEX_DISABLE_CUDA=1
    export PYTHONPATH="$src${PYTHONPATH:+:$PYTHONPATH}"
    nice python -m pytest -q -rfE --capture=sys -p no:cacheprovider "${tests[@]}" 2>&1 | tee -a "$log" \
        | grep -v -E "onnxruntime:|VerifyEachNodeIsAssignedToAnEp"
    exit "${PIPESTATUS[0]}"
) || { echo "sanitize: ASan/UBSan tests FAILED"; show_reports; exit 1; }
if show_reports; then  # a report from a process whose failure a test tolerated
    echo "sanitize: sanitizer reports were written although the tests passed"; exit 1
fi
echo "sanitize: ASan/UBSan tests passed ($(( $(date +%s) - start )) s)"

# ---- 2. TSan ----------------------------------------------------------------------------------------------------
tsan="$work/tsan"
mkdir -p "$tsan"
(
    cd "$src"
    export CORTEX_CACHE_DIR="$work/cache-tsan"
    export CORTEX_KERNEL_CXXFLAGS="-fsanitize=thread -O1 -g1"
    export PYTHONPATH="$src${PYTHONPATH:+:$PYTHONPATH}"
    nice python tools/sanitize/prepare.py "$tsan" > "$tsan/kernels.txt"
)
nice g++ -std=c++17 -O1 -g -fsanitize=thread -I"$src/csrc/runtime" "$src/tools/sanitize/kernel_driver.cc" \
    -o "$tsan/kernel_driver" -ldl -pthread
while read -r kernel good bad; do
    # four pool threads on any machine, so the pool's workers really run beside the callers
    CORTEX_NUM_THREADS=4 TSAN_OPTIONS="halt_on_error=1:exitcode=66" \
        "$tsan/kernel_driver" "$kernel" "$good" "$bad" 4 12 2>&1 | tee -a "$log"
    [ "${PIPESTATUS[0]}" = 0 ] || { echo "sanitize: TSan FAILED"; show_reports; exit 1; }
done < "$tsan/kernels.txt"
echo "sanitize: TSan runs passed ($(( $(date +%s) - start )) s)"

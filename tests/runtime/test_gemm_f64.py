"""csrc/runtime/gemm_f64.h, the products of float64 kernels: C = (accumulate ? C : 0) + bias + A @ W in double on
the float32 panel layout (of doubles), against numpy in float64, serial, over the pool and by column ranges (the
fused sections), every row count a tile meets; a row's bits do not depend on the other rows of its product."""
from __future__ import annotations

import ctypes
import subprocess

import numpy as np
import pytest

from cortex.codegen.layouts import PANELS
from _build_c import REPO

SOURCE = r"""
#include "gemm_f64.h"
extern "C" void run(int mode, int64_t M, int64_t N, int64_t K, const double* A, const double* W, double* C,
                    const double* bias, int accumulate, int64_t n0, int64_t n1) {
  if (mode == 0) cortex::gemm_packed_f64(M, N, K, A, K, W, C, N, bias, accumulate != 0);
  if (mode == 1) cortex::gemm_packed_f64_serial(M, N, K, A, K, W, C, N, bias, accumulate != 0);
  if (mode == 2) cortex::gemm_packed_f64_columns(M, N, K, A, K, W, C, N, bias, n0, n1);
}
"""


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gemm_f64")
    (folder / "gemm_f64_test.cc").write_text(SOURCE)
    out = folder / "gemm_f64_test.so"
    subprocess.run(["c++", "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread",
                    f"-I{REPO}/csrc/runtime", str(folder / "gemm_f64_test.cc"), "-o", str(out)], check=True)
    library = ctypes.CDLL(str(out))
    library.run.argtypes = [ctypes.c_int] + [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 4 + [ctypes.c_int] + \
        [ctypes.c_int64] * 2
    return library


def _run(lib, mode, A, W, C, bias=None, accumulate=False, n0=0, n1=0):
    M, K = A.shape
    N = W.shape[1]
    packed = PANELS.pack(W)
    assert packed.dtype == np.float64
    ptr = lambda a: None if a is None else a.ctypes.data  # noqa: E731
    lib.run(mode, M, N, K, ptr(A), ptr(packed), ptr(C), ptr(bias), int(accumulate), n0, n1)
    return C


@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (3, 7, 5), (4, 16, 16), (9, 33, 40), (64, 48, 100), (200, 64, 96),
                                   (5, 0, 17)])
@pytest.mark.parametrize("mode", [0, 1])
def test_gemm_f64_matches_numpy(lib, M, K, N, mode):
    rng = np.random.default_rng(M * 1000 + K * 10 + N)
    A, W = rng.standard_normal((M, K)), rng.standard_normal((K, N))
    bias, C0 = rng.standard_normal(N), rng.standard_normal((M, N))
    got = _run(lib, mode, A, W, C0.copy(), bias, accumulate=True)
    np.testing.assert_allclose(got, C0 + bias + A @ W, rtol=1e-13, atol=1e-12)
    got = _run(lib, mode, A, W, np.full((M, N), np.nan))
    np.testing.assert_allclose(got, A @ W, rtol=1e-13, atol=1e-12)


def test_gemm_f64_columns_and_row_independence(lib):
    rng = np.random.default_rng(5)
    M, K, N = 11, 29, 70
    A, W, bias = rng.standard_normal((M, K)), rng.standard_normal((K, N)), rng.standard_normal(N)
    whole = _run(lib, 1, A, W, np.zeros((M, N)), bias)
    for n0, n1 in ((0, 16), (16, 48), (48, 70), (32, 64)):
        C = np.full((M, N), 7.0)
        _run(lib, 2, A, W, C, bias, n0=n0, n1=n1)
        hi = min(N, -(-n1 // 16) * 16)
        assert np.array_equal(C[:, n0:hi], whole[:, n0:hi])  # the same bits as the whole product
        assert np.all(C[:, :n0] == 7.0) and np.all(C[:, hi:] == 7.0)  # nothing else written
    for m in range(M):  # one row alone: the same bits as within the product
        assert np.array_equal(_run(lib, 1, A[m:m + 1].copy(), W, np.zeros((1, N)), bias)[0], whole[m])

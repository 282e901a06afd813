"""cortex::gemm_packed (csrc/runtime/gemm.h) against numpy, through cortex._C."""

import os
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _build_c import REPO, load_C  # noqa: E402

_C = load_C()
pytestmark = pytest.mark.skipif(_C is None, reason="cortex._C is not built (python tests/_build_c.py)")

NR = 16


def pack_ref(W):
    K, N = W.shape
    P = (N + NR - 1) // NR
    Wp = np.zeros((K, P * NR), np.float32)
    Wp[:, :N] = W
    return np.ascontiguousarray(Wp.reshape(K, P, NR).transpose(1, 0, 2))


def ref_gemm(A, W, bias=None, C0=None):
    out = A.astype(np.float64) @ W.astype(np.float64)
    if bias is not None:
        out += bias
    if C0 is not None:
        out += C0
    return out


def tol(K):
    return 1e-5 * np.sqrt(max(K, 1)) * 4


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def test_pack_panels_layout():
    rng = np.random.default_rng(0)
    for K, N in [(1, 1), (3, 16), (5, 17), (7, 40), (2, 33)]:
        W = rand(rng, K, N)
        P = _C.pack_panels(W)
        assert P.shape == ((N + 15) // 16, K, 16)
        np.testing.assert_array_equal(P, pack_ref(W))
        for p in range(P.shape[0]):
            for k in range(K):
                for r in range(16):
                    n = p * 16 + r
                    assert P[p, k, r] == (W[k, n] if n < N else 0.0)


SHAPES = [(M, K, N) for M in list(range(1, 15)) + [16, 17, 23, 24, 25, 31, 37, 48, 53, 64, 70]
          for (K, N) in [(1, 1), (3, 17), (33, 50), (64, 16), (97, 300)]]


@pytest.mark.parametrize("serial", [False, True])
@pytest.mark.parametrize("M,K,N", SHAPES)
def test_gemm_shapes(M, K, N, serial):
    rng = np.random.default_rng(M * 1000 + K * 7 + N)
    A, W = rand(rng, M, K), rand(rng, K, N)
    out = _C.gemm_packed(A, _C.pack_panels(W), N, serial=serial)
    assert out.shape == (M, N) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref_gemm(A, W), rtol=0, atol=tol(K))


@pytest.mark.parametrize("M,K,N", [(1, 257, 1280), (2, 511, 33), (3, 1024, 2560), (4, 300, 271), (5, 129, 17),
                                   (13, 1023, 1040), (70, 255, 513), (130, 777, 270), (300, 512, 100)])
@pytest.mark.parametrize("mode", ["plain", "bias", "acc", "bias_acc"])
def test_gemm_bias_accumulate(M, K, N, mode):
    rng = np.random.default_rng(M + K + N)
    A, W = rand(rng, M, K), rand(rng, K, N)
    Bp = pack_ref(W)
    bias = rand(rng, N) if "bias" in mode else None
    acc = "acc" in mode
    C0 = rand(rng, M, N)
    C = C0.copy() if acc else None
    out = _C.gemm_packed(A, Bp, N, bias=bias, C=C, accumulate=acc)
    if acc:
        assert out is C or np.shares_memory(out, C)
    np.testing.assert_allclose(out, ref_gemm(A, W, bias, C0 if acc else None), rtol=0, atol=tol(K))
    out_s = _C.gemm_packed(A, Bp, N, bias=bias, C=C0.copy() if acc else None, accumulate=acc, serial=True)
    np.testing.assert_allclose(out_s, out, rtol=0, atol=tol(K))


def test_gemm_overwrites_without_accumulate():
    rng = np.random.default_rng(1)
    A, W = rand(rng, 9, 40), rand(rng, 40, 37)
    C = np.full((9, 37), np.nan, np.float32)
    _C.gemm_packed(A, pack_ref(W), 37, C=C, accumulate=False)
    np.testing.assert_allclose(C, ref_gemm(A, W), atol=tol(40))


def test_gemm_strided_c_and_untouched_padding():
    # C is a column slice of a wider buffer: columns outside [0, N) must not be written
    rng = np.random.default_rng(2)
    M, K, N = 11, 70, 45
    A, W, bias = rand(rng, M, K), rand(rng, K, N), rand(rng, N)
    big = rand(rng, M, N + 19)
    before = big.copy()
    view = big[:, :N]
    _C.gemm_packed(A, pack_ref(W), N, bias=bias, C=view, accumulate=True)
    np.testing.assert_array_equal(big[:, N:], before[:, N:])
    np.testing.assert_allclose(big[:, :N], ref_gemm(A, W, bias, before[:, :N]), atol=tol(K))


def test_gemm_k_zero_and_empty():
    Bp = np.zeros((2, 0, 16), np.float32)
    bias = np.arange(20, dtype=np.float32)
    out = _C.gemm_packed(np.zeros((3, 0), np.float32), Bp, 20, bias=bias)
    np.testing.assert_array_equal(out, np.broadcast_to(bias, (3, 20)))
    out = _C.gemm_packed(np.zeros((0, 5), np.float32), np.zeros((1, 5, 16), np.float32), 7)
    assert out.shape == (0, 7)


def test_gemm_rejects_bad_arguments():
    A = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError):
        _C.gemm_packed(A, np.zeros((1, 4, 16), np.float32), 5)  # K mismatch
    with pytest.raises(ValueError):
        _C.gemm_packed(A, np.zeros((1, 3, 16), np.float32), 5, bias=np.zeros(4, np.float32))
    with pytest.raises(ValueError):
        _C.gemm_packed(A, np.zeros((1, 3, 16), np.float32), 5, accumulate=True)
    with pytest.raises(ValueError):
        _C.gemm_packed(A, np.zeros((1, 3, 16), np.float32), 5, C=np.zeros((2, 5), np.float64))


def test_gemm_special_values_propagate():
    A = np.ones((7, 5), np.float32)
    W = np.ones((5, 20), np.float32)
    A[3, 2] = np.inf
    A[5, 1] = np.nan
    out = _C.gemm_packed(A, pack_ref(W), 20)
    assert np.all(np.isinf(out[3])) and np.all(np.isnan(out[5]))
    assert np.all(out[0] == 5.0)


def test_gemm_threads_agree_bitwise_with_serial_for_large_shapes():
    # parallel splitting never changes the per-element summation order
    rng = np.random.default_rng(3)
    for M, K, N in [(64, 512, 1280), (3, 1024, 2560), (256, 300, 96), (40, 700, 16)]:
        A, W = rand(rng, M, K), rand(rng, K, N)
        Bp = pack_ref(W)
        np.testing.assert_array_equal(_C.gemm_packed(A, Bp, N), _C.gemm_packed(A, Bp, N, serial=True))


@pytest.mark.parametrize("K,N", [(1, 17), (7, 16), (300, 80), (512, 1280), (600, 33)])
def test_gemm_rows_do_not_depend_on_the_other_rows(K, N):
    # batch invariance (cortex.serving merges requests into one forest and promises the bits of separate runs): a
    # row's result is the same whether its product has 1, 2, ..., 6 rows (each tile size, the streaming path for
    # M <= 4) or many, serial or parallel, with a bias or accumulating
    rng = np.random.default_rng(K + N)
    A, W, bias, C0 = rand(rng, 40, K), rand(rng, K, N), rand(rng, N), rand(rng, 40, N)
    Bp = pack_ref(W)
    whole = _C.gemm_packed(A, Bp, N, bias=bias)
    whole_acc = _C.gemm_packed(A, Bp, N, bias=bias, C=C0.copy(), accumulate=True)
    for M in list(range(1, 14)) + [17, 25]:
        for start in (0, 40 - M):
            rows = slice(start, start + M)
            for serial in (False, True):
                part = _C.gemm_packed(np.ascontiguousarray(A[rows]), Bp, N, bias=bias, serial=serial)
                np.testing.assert_array_equal(part, whole[rows], err_msg=f"M={M} rows from {start}")
            acc = _C.gemm_packed(np.ascontiguousarray(A[rows]), Bp, N, bias=bias, C=C0[rows].copy(), accumulate=True)
            np.testing.assert_array_equal(acc, whole_acc[rows], err_msg=f"accumulate, M={M} rows from {start}")


def test_num_threads_and_env_override():
    assert _C.num_threads() >= 1
    code = "import sys; sys.path.insert(0, %r); from _build_c import load_C; print(load_C().num_threads())" % (
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for n in ("1", "3"):
        env = dict(os.environ, CORTEX_NUM_THREADS=n)
        out = subprocess.check_output([sys.executable, "-c", code], env=env, cwd=REPO, text=True)
        assert out.strip() == n


def test_parallel_for_many_regions():
    for n in [0, 1, 2, 3, 7, 64, 1000]:
        for _ in range(50):
            assert _C._parallel_sum_test(n) == n * (n + 1) // 2


def test_gemm_from_python_threads():
    # concurrent callers share one pool: a busy pool runs the caller's region inline
    import threading

    rng = np.random.default_rng(4)
    A, W = rand(rng, 33, 256), rand(rng, 256, 300)
    Bp = pack_ref(W)
    want = _C.gemm_packed(A, Bp, 300, serial=True)
    errors = []

    def work():
        for _ in range(30):
            if not np.array_equal(_C.gemm_packed(A, Bp, 300), want):
                errors.append("mismatch")

    ts = [threading.Thread(target=work) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors


def test_activations_match_libm():
    xs = np.concatenate([np.linspace(-100, 100, 2001, dtype=np.float32),
                         np.array([0.0, -0.0, 1e-8, -1e-8, 88.0, -88.0, 89.0, -104.0, 1e30, -1e30], np.float32)])
    for x in xs:
        x64 = float(x)
        sig = 1.0 / (1.0 + np.exp(-x64)) if x64 > -700 else 0.0
        assert abs(_C.sigmoid(float(x)) - sig) <= 1e-6 * max(abs(sig), 1e-30) + 1e-45
        assert abs(_C.tanh(float(x)) - np.tanh(x64)) <= 1e-6 * max(abs(np.tanh(x64)), 1e-30)
        assert _C.relu(float(x)) == max(float(x), 0.0)
    assert np.isnan(_C.sigmoid(float("nan"))) and np.isnan(_C.tanh(float("nan"))) and np.isnan(_C.relu(float("nan")))

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
# The micro-kernels this build of cortex._C has (-march=native: the machine's ISA decides which exist).
ISAS = _C.gemm_isas() if _C is not None else {"f32": [], "bf16": []}
F32_ISAS = ISAS["f32"]
BF16_ISAS = ISAS["bf16"] + ["auto"]


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


@pytest.mark.parametrize("isa", F32_ISAS)
@pytest.mark.parametrize("serial", [False, True])
@pytest.mark.parametrize("M,K,N", SHAPES)
def test_gemm_shapes(M, K, N, serial, isa):
    rng = np.random.default_rng(M * 1000 + K * 7 + N)
    A, W = rand(rng, M, K), rand(rng, K, N)
    out = _C.gemm_packed(A, _C.pack_panels(W), N, serial=serial, isa=isa)
    assert out.shape == (M, N) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref_gemm(A, W), rtol=0, atol=tol(K))


@pytest.mark.parametrize("isa", F32_ISAS)
@pytest.mark.parametrize("K,N", [(1, 33), (70, 47), (512, 80)])
def test_gemm_every_row_count(isa, K, N):
    # M = 1..100 covers every row-block cut of every micro-kernel (6- and 12-row blocks, 1-3 row k splits)
    rng = np.random.default_rng(K + N)
    A, W, bias = rand(rng, 100, K), rand(rng, K, N), rand(rng, N)
    Bp = _C.pack_panels(W)
    for M in range(1, 101):
        out = _C.gemm_packed(A[:M], Bp, N, bias=bias, serial=True, isa=isa)
        np.testing.assert_allclose(out, ref_gemm(A[:M], W, bias), rtol=0, atol=tol(K), err_msg=f"M={M}")


@pytest.mark.parametrize("isa", F32_ISAS)
def test_gemm_isas_agree_within_rounding(isa):
    # every level computes the same float32 products; only the summation order may differ
    rng = np.random.default_rng(11)
    for M, K, N in [(1, 300, 70), (3, 64, 17), (13, 512, 1280), (100, 128, 320)]:
        A, W = rand(rng, M, K), rand(rng, K, N)
        Bp = _C.pack_panels(W)
        np.testing.assert_allclose(_C.gemm_packed(A, Bp, N, isa=isa), _C.gemm_packed(A, Bp, N, isa="portable"),
                                   rtol=0, atol=2 * tol(K))


def column_ranges(N):
    """A few [n0, n1) ranges a fused level may ask for: n0 a multiple of 16, n1 too or N."""
    edges = sorted({0, N} | {e for e in (16, 32, 48, 80, 16 * ((N // 2) // 16)) if e < N})
    return [(a, b) for i, a in enumerate(edges) for b in edges[i + 1:]]


@pytest.mark.parametrize("isa", F32_ISAS)
@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (2, 7, 17), (5, 33, 50), (12, 512, 97), (13, 64, 320), (37, 300, 100)])
def test_gemm_columns(isa, M, K, N):
    # columns [n0, n1) only, other columns untouched, bitwise what the whole product gives them
    rng = np.random.default_rng(M + K + N)
    A, W, bias = rand(rng, M, K), rand(rng, K, N), rand(rng, N)
    Bp = _C.pack_panels(W)
    whole = _C.gemm_packed(A, Bp, N, bias=bias, serial=True, isa=isa)
    for n0, n1 in column_ranges(N):
        C = np.full((M, N), 7.0, np.float32)
        _C.gemm_packed_columns(A, Bp, N, n0, n1, C, bias=bias, isa=isa)
        np.testing.assert_array_equal(C[:, n0:n1], whole[:, n0:n1], err_msg=f"[{n0}, {n1})")
        assert np.all(C[:, :n0] == 7.0) and np.all(C[:, n1:] == 7.0)
    np.testing.assert_allclose(whole, ref_gemm(A, W, bias), rtol=0, atol=tol(K))


def test_gemm_columns_rejects_unaligned_ranges():
    A, Bp = np.zeros((2, 3), np.float32), np.zeros((3, 3, 16), np.float32)
    C = np.zeros((2, 40), np.float32)
    for n0, n1 in [(8, 40), (0, 20), (16, 41), (32, 16)]:
        with pytest.raises(ValueError):
            _C.gemm_packed_columns(A, Bp, 40, n0, n1, C)


@pytest.mark.parametrize("M,K,N", [(1, 257, 1280), (2, 511, 33), (3, 1024, 2560), (4, 300, 271), (5, 129, 17),
                                   (13, 1023, 1040), (70, 255, 513), (130, 777, 270), (300, 512, 100)])
@pytest.mark.parametrize("mode", ["plain", "bias", "acc", "bias_acc"])
@pytest.mark.parametrize("isa", F32_ISAS)
def test_gemm_bias_accumulate(M, K, N, mode, isa):
    rng = np.random.default_rng(M + K + N)
    A, W = rand(rng, M, K), rand(rng, K, N)
    Bp = pack_ref(W)
    bias = rand(rng, N) if "bias" in mode else None
    acc = "acc" in mode
    C0 = rand(rng, M, N)
    C = C0.copy() if acc else None
    out = _C.gemm_packed(A, Bp, N, bias=bias, C=C, accumulate=acc, isa=isa)
    if acc:
        assert out is C or np.shares_memory(out, C)
    np.testing.assert_allclose(out, ref_gemm(A, W, bias, C0 if acc else None), rtol=0, atol=tol(K))
    out_s = _C.gemm_packed(A, Bp, N, bias=bias, C=C0.copy() if acc else None, accumulate=acc, serial=True, isa=isa)
    np.testing.assert_array_equal(out_s, out)


def test_gemm_overwrites_without_accumulate():
    rng = np.random.default_rng(1)
    A, W = rand(rng, 9, 40), rand(rng, 40, 37)
    C = np.full((9, 37), np.nan, np.float32)
    _C.gemm_packed(A, pack_ref(W), 37, C=C, accumulate=False)
    np.testing.assert_allclose(C, ref_gemm(A, W), atol=tol(40))


@pytest.mark.parametrize("isa", F32_ISAS)
def test_gemm_strided_c_and_untouched_padding(isa):
    # C is a column slice of a wider buffer: columns outside [0, N) must not be written
    rng = np.random.default_rng(2)
    M, K, N = 11, 70, 45
    A, W, bias = rand(rng, M, K), rand(rng, K, N), rand(rng, N)
    big = rand(rng, M, N + 19)
    before = big.copy()
    view = big[:, :N]
    _C.gemm_packed(A, pack_ref(W), N, bias=bias, C=view, accumulate=True, isa=isa)
    np.testing.assert_array_equal(big[:, N:], before[:, N:])
    np.testing.assert_allclose(big[:, :N], ref_gemm(A, W, bias, before[:, :N]), atol=tol(K))


@pytest.mark.parametrize("isa", F32_ISAS)
def test_gemm_k_zero_and_empty(isa):
    Bp = np.zeros((2, 0, 16), np.float32)
    bias = np.arange(20, dtype=np.float32)
    out = _C.gemm_packed(np.zeros((3, 0), np.float32), Bp, 20, bias=bias, isa=isa)
    np.testing.assert_array_equal(out, np.broadcast_to(bias, (3, 20)))
    out = _C.gemm_packed(np.zeros((0, 5), np.float32), np.zeros((1, 5, 16), np.float32), 7, isa=isa)
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


@pytest.mark.parametrize("isa", F32_ISAS)
def test_gemm_special_values_propagate(isa):
    A = np.ones((7, 5), np.float32)
    W = np.ones((5, 20), np.float32)
    A[3, 2] = np.inf
    A[5, 1] = np.nan
    out = _C.gemm_packed(A, pack_ref(W), 20, isa=isa)
    assert np.all(np.isinf(out[3])) and np.all(np.isnan(out[5]))
    assert np.all(out[0] == 5.0)


@pytest.mark.parametrize("isa", F32_ISAS)
def test_gemm_threads_agree_bitwise_with_serial_for_large_shapes(isa):
    # parallel splitting never changes the per-element summation order
    rng = np.random.default_rng(3)
    for M, K, N in [(64, 512, 1280), (3, 1024, 2560), (256, 300, 96), (40, 700, 16), (13, 512, 1296)]:
        A, W = rand(rng, M, K), rand(rng, K, N)
        Bp = pack_ref(W)
        np.testing.assert_array_equal(_C.gemm_packed(A, Bp, N, isa=isa), _C.gemm_packed(A, Bp, N, serial=True, isa=isa))


@pytest.mark.parametrize("isa", F32_ISAS)
@pytest.mark.parametrize("K,N", [(1, 17), (7, 16), (300, 80), (512, 1280), (600, 33)])
def test_gemm_rows_do_not_depend_on_the_other_rows(K, N, isa):
    # batch invariance (cortex.serving merges requests into one forest and promises the bits of separate runs): a
    # row's result is the same whether its product has 1, 2, ... rows (each tile size, the streaming path for
    # M <= 4, K blocks) or many, serial or parallel, with a bias or accumulating, at every ISA level
    rng = np.random.default_rng(K + N)
    A, W, bias, C0 = rand(rng, 40, K), rand(rng, K, N), rand(rng, N), rand(rng, 40, N)
    Bp = pack_ref(W)
    whole = _C.gemm_packed(A, Bp, N, bias=bias, isa=isa)
    whole_acc = _C.gemm_packed(A, Bp, N, bias=bias, C=C0.copy(), accumulate=True, isa=isa)
    for M in list(range(1, 14)) + [17, 25]:
        for start in (0, 40 - M):
            rows = slice(start, start + M)
            for serial in (False, True):
                part = _C.gemm_packed(np.ascontiguousarray(A[rows]), Bp, N, bias=bias, serial=serial, isa=isa)
                np.testing.assert_array_equal(part, whole[rows], err_msg=f"M={M} rows from {start}")
            acc = _C.gemm_packed(np.ascontiguousarray(A[rows]), Bp, N, bias=bias, C=C0[rows].copy(), accumulate=True,
                                 isa=isa)
            np.testing.assert_array_equal(acc, whole_acc[rows], err_msg=f"accumulate, M={M} rows from {start}")


def test_gemm_avx2_and_avx512_agree_bitwise():
    # both are one FMA chain per element in k order from (C) + bias: the same bits
    if not {"avx2", "avx512"} <= set(F32_ISAS):
        pytest.skip("this build lacks the AVX2 or the AVX-512 kernel")
    rng = np.random.default_rng(5)
    for M, K, N in [(1, 300, 70), (3, 64, 17), (13, 512, 1280), (100, 600, 320)]:
        A, W, bias = rand(rng, M, K), rand(rng, K, N), rand(rng, N)
        Bp = pack_ref(W)
        np.testing.assert_array_equal(_C.gemm_packed(A, Bp, N, bias=bias, isa="avx2"),
                                      _C.gemm_packed(A, Bp, N, bias=bias, isa="avx512"))


def test_num_threads_and_env_override():
    assert _C.num_threads() >= 1
    code = "import sys; sys.path.insert(0, %r); from _build_c import load_C; print(load_C().num_threads())" % (
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for n in ("1", "3"):
        env = dict(os.environ, CORTEX_NUM_THREADS=n)
        out = subprocess.check_output([sys.executable, "-c", code], env=env, cwd=REPO, text=True)
        assert out.strip() == n


def _in_subprocess(code: str, threads: int) -> str:
    prelude = "import sys; sys.path.insert(0, %r); from _build_c import load_C; C = load_C()\n" % (
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, CORTEX_NUM_THREADS=str(threads))
    return subprocess.check_output([sys.executable, "-c", prelude + code], env=env, cwd=REPO, text=True,
                                   timeout=120)  # a hang fails here


def test_fused_level_split_prefers_rows_where_the_weights_stay_in_l2():
    # what a fused level's workers take (kernel_support.h fused_tasks): at 16 threads, hidden 256 (weights 2.6 MB,
    # 80 chunks) at 100 rows: 8 column ranges x 2 row ranges (slices of 328 KB, half the gathers of 16 x 1); hidden
    # 64 (160 KB of weights) at 200 rows: the rows split 16 ways; at 24 rows the work pays for 7 workers, all on
    # columns (3 x 2 would leave one idle); a small level: one worker; 2 threads at 10 rows: the columns, as before
    code = """
h256 = lambda rows: C._fused_tasks(80, rows, 2.0 * 512 * 1280 * rows)
h64 = lambda rows: C._fused_tasks(20, rows, 2.0 * 128 * 320 * rows)
print(h256(100), h256(10), h64(200), h64(24), h64(1))
"""
    assert _in_subprocess(code, 16).split() == ["(8,", "2)", "(16,", "1)", "(1,", "16)", "(7,", "1)", "(1,", "1)"]
    assert _in_subprocess("print(C._fused_tasks(80, 10, 2.0 * 512 * 1280 * 10))", 2).strip() == "(2, 1)"


def test_parallel_for_many_regions():
    for n in [0, 1, 2, 3, 7, 64, 1000]:
        for _ in range(50):
            assert _C._parallel_sum_test(n) == n * (n + 1) // 2


def test_run_affine_runs_every_task_once():
    for n in [0, 1, 2, 3, 7, 64, 1000, 4096, 5000]:
        for _ in range(20):
            hits = _C._run_affine_test(n)
            assert hits.shape == (n,) and np.all(hits == 1)


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


# ------------------------------------------------------------------------------------------------------------------
# Panel layouts (cortex/codegen/layouts.py is the reference) and the bf16 products.

from cortex.codegen import layouts  # noqa: E402


def test_panel_layouts_reference_and_inverse():
    rng = np.random.default_rng(5)
    for K, N in [(1, 1), (3, 16), (5, 17), (33, 40), (64, 320), (31, 2), (300, 97)]:
        W = rand(rng, K, N)
        np.testing.assert_array_equal(layouts.PANELS.pack(W), _C.pack_panels(W))
        np.testing.assert_array_equal(layouts.PANELS.unpack(layouts.PANELS.pack(W), (K, N)), W)
        Pb = layouts.pack_panels_bf16(W)
        assert Pb.dtype == np.uint16 and Pb.shape == ((N + 15) // 16, -(-K // 32) * 16, 16, 2)
        np.testing.assert_array_equal(_C.pack_panels_bf16(W), Pb)
        Wb = layouts.unpack_panels_bf16(Pb, (K, N))
        np.testing.assert_array_equal(Wb, layouts.bf16_to_float32(layouts.bf16_bits(W)))
        np.testing.assert_array_equal(layouts.pack_panels_bf16(Wb), Pb)  # packing the inverse gives the same bits
        for p, kk, r, t in [(0, 0, 0, 0), (Pb.shape[0] - 1, Pb.shape[1] - 1, 15, 1), (0, 0, 1, 1)]:
            k, n = 2 * kk + t, 16 * p + r
            assert Pb[p, kk, r, t] == (layouts.bf16_bits(W[k, n]) if k < K and n < N else 0)
        # the stored form: int32 pairs, the even k in the low half
        stored = layouts.PANELS_BF16.pack(W)
        assert stored.dtype == np.int32 and stored.shape == Pb.shape[:3]
        np.testing.assert_array_equal(stored.view(np.uint16).reshape(Pb.shape), Pb)
        np.testing.assert_array_equal(layouts.PANELS_BF16.unpack(stored, (K, N)), Wb)
    for name in ("panels", "panels_bf16"):
        assert layouts.LAYOUTS[name].name == name
    with pytest.raises(layouts.LayoutError):
        layouts.unpack_panels_bf16(np.zeros((1, 16, 16, 2), np.uint16), (33, 16))
    with pytest.raises(layouts.LayoutError):
        layouts.PANELS_BF16.unpack(np.zeros((1, 16, 16), np.float32), (32, 16))


def bf16_special_values():
    f32 = np.finfo(np.float32)
    vals = [0.0, -0.0, 1.0, -1.0, 1.00390625, 1.005859375, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, 1.0 + 2 ** -9,
            f32.max, -f32.max, f32.tiny, -f32.tiny, f32.tiny / 2, -f32.tiny / 3, 3.0e38, np.inf, -np.inf, np.nan,
            -np.nan, 65504.0, 1e-30, 0.1, 1 / 3]
    bits = np.array([0x7FC00001, 0xFF800001, 0x3F808000, 0x3F818000, 0x3F807FFF, 0x7F7F8000], np.uint32)
    return np.concatenate([np.array(vals, np.float32), bits.view(np.float32)])


def test_bf16_rounding_matches_reference():
    # round to nearest even (ties both ways), overflow to inf, denormals to signed zero, NaN stays NaN
    x = np.concatenate([bf16_special_values(), np.random.default_rng(6).standard_normal(997).astype(np.float32)])
    want = layouts.bf16_bits(x)
    got = _C.bf16_bits(x.reshape(1, -1))[0]  # the products' conversion (vector where the build has AVX512-BF16)
    np.testing.assert_array_equal(got, want)
    y = layouts.bf16_to_float32(want)
    finite = np.isfinite(x) & (np.abs(x) >= np.finfo(np.float32).tiny) & (np.abs(x) < 3.38e38)
    assert np.all(np.abs(y[finite] - x[finite]) <= np.abs(x[finite]) * 2.0 ** -8)  # 8 significant bits
    assert np.all(np.isnan(y) == np.isnan(x))
    assert layouts.bf16_bits(np.float32(1.0 + 2 ** -8)) == 0x3F80  # tie to even (down)
    assert layouts.bf16_bits(np.float32(1.0 + 3 * 2 ** -8)) == 0x3F82  # tie to even (up)
    assert layouts.bf16_bits(np.float32(np.finfo(np.float32).tiny / 2)) == 0
    assert layouts.bf16_bits(np.float32(-np.finfo(np.float32).tiny / 2)) == 0x8000


def bf16_ref(A, W, bias=None, C0=None):
    """The bf16 product's exact meaning: bf16-rounded operands, float64 here (float32 sums in the runtime)."""
    r = lambda x: layouts.bf16_to_float32(layouts.bf16_bits(x))  # noqa: E731
    return ref_gemm(r(A), r(W), bias, C0)


BF16_SHAPES = [(M, K, N) for M in [1, 2, 3, 4, 5, 6, 11, 12, 13, 16, 17, 31, 32, 33, 47, 48, 49, 64, 100]
               for (K, N) in [(1, 1), (3, 17), (33, 50), (64, 16), (97, 300), (600, 33)]]


@pytest.mark.parametrize("isa", BF16_ISAS)
@pytest.mark.parametrize("M,K,N", BF16_SHAPES)
def test_gemm_bf16_shapes(M, K, N, isa):
    rng = np.random.default_rng(M * 1000 + K * 7 + N)
    A, W, bias = rand(rng, M, K), rand(rng, K, N), rand(rng, N)
    out = _C.gemm_packed_bf16(A, _C.pack_panels_bf16(W), N, bias=bias, isa=isa)
    assert out.shape == (M, N) and out.dtype == np.float32
    np.testing.assert_allclose(out, bf16_ref(A, W, bias), rtol=0, atol=tol(K))


@pytest.mark.parametrize("isa", BF16_ISAS)
@pytest.mark.parametrize("M,K,N", [(1, 257, 1280), (3, 1024, 260), (13, 1023, 1040), (33, 512, 80), (70, 255, 513),
                                   (130, 777, 270)])
@pytest.mark.parametrize("mode", ["bias", "acc", "bias_acc"])
def test_gemm_bf16_bias_accumulate_and_threads(M, K, N, mode, isa):
    rng = np.random.default_rng(M + K + N)
    A, W = rand(rng, M, K), rand(rng, K, N)
    Bp = _C.pack_panels_bf16(W)
    bias = rand(rng, N) if "bias" in mode else None
    acc = "acc" in mode
    C0 = rand(rng, M, N)
    out = _C.gemm_packed_bf16(A, Bp, N, bias=bias, C=C0.copy() if acc else None, accumulate=acc, isa=isa)
    np.testing.assert_allclose(out, bf16_ref(A, W, bias, C0 if acc else None), rtol=0, atol=tol(K))
    serial = _C.gemm_packed_bf16(A, Bp, N, bias=bias, C=C0.copy() if acc else None, accumulate=acc, serial=True,
                                 isa=isa)
    np.testing.assert_array_equal(serial, out)  # the split never changes an element's summation order


@pytest.mark.parametrize("isa", BF16_ISAS)
@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (2, 7, 17), (5, 33, 50), (12, 512, 97), (20, 64, 320), (37, 300, 100)])
def test_gemm_bf16_columns(isa, M, K, N):
    rng = np.random.default_rng(M + K + N)
    A, W, bias = rand(rng, M, K), rand(rng, K, N), rand(rng, N)
    Bp = _C.pack_panels_bf16(W)
    whole = _C.gemm_packed_bf16(A, Bp, N, bias=bias, serial=True, isa=isa)
    for n0, n1 in column_ranges(N):
        C = np.full((M, N), 7.0, np.float32)
        _C.gemm_packed_bf16_columns(A, Bp, N, n0, n1, C, bias=bias, isa=isa)
        np.testing.assert_array_equal(C[:, n0:n1], whole[:, n0:n1], err_msg=f"[{n0}, {n1})")
        assert np.all(C[:, :n0] == 7.0) and np.all(C[:, n1:] == 7.0)


@pytest.mark.parametrize("isa", BF16_ISAS)
@pytest.mark.parametrize("M", [1, 2, 3, 11, 16, 17, 36])
def test_gemm_bf16_blocks_equal_one_call_per_block(isa, M):
    # a fused level's worker: the same columns of each of 5 gate blocks (hidden 64: 5 x 64 columns), one call
    rng = np.random.default_rng(M)
    K, N, width = 128, 320, 64
    A, W, bias = rand(rng, M, K), rand(rng, K, N), rand(rng, N)
    Bp = _C.pack_panels_bf16(W)
    for j0, j1 in [(0, 64), (0, 32), (16, 48), (48, 64)]:
        want = np.full((M, N), 7.0, np.float32)
        for g in range(5):
            _C.gemm_packed_bf16_columns(A, Bp, N, g * width + j0, g * width + j1, want, bias=bias, isa=isa)
        got = np.full((M, N), 7.0, np.float32)
        _C.gemm_packed_bf16_blocks(A, Bp, N, j0, j1, 0, 5, width, got, bias=bias, isa=isa)
        np.testing.assert_array_equal(got, want, err_msg=f"[{j0}, {j1})")
        assert np.all(got[:, :j0] == 7.0) and np.all(got[:, 4 * width + j1:] == 7.0)
    with pytest.raises(ValueError):
        _C.gemm_packed_bf16_blocks(A, Bp, N, 0, 64, 0, 6, width, got, isa=isa)  # past N


@pytest.mark.parametrize("isa", BF16_ISAS)
def test_gemm_bf16_edge_cases(isa):
    rng = np.random.default_rng(9)
    bias = np.arange(20, dtype=np.float32)
    out = _C.gemm_packed_bf16(np.zeros((3, 0), np.float32), np.zeros((2, 0, 16, 2), np.uint16), 20, bias=bias, isa=isa)
    np.testing.assert_array_equal(out, np.broadcast_to(bias, (3, 20)))
    assert _C.gemm_packed_bf16(np.zeros((0, 5), np.float32), np.zeros((1, 16, 16, 2), np.uint16), 7, isa=isa).shape == (0, 7)
    A, W = np.ones((20, 5), np.float32), np.ones((5, 20), np.float32)
    A[3, 2], A[5, 1] = np.inf, np.nan
    out = _C.gemm_packed_bf16(A, _C.pack_panels_bf16(W), 20, isa=isa)
    assert np.all(np.isinf(out[3])) and np.all(np.isnan(out[5])) and np.all(out[0] == 5.0)
    # C a column slice of a wider buffer: nothing outside [0, N) written
    M, K, N = 18, 70, 45
    A, W = rand(rng, M, K), rand(rng, K, N)
    big = rand(rng, M, N + 19)
    before = big.copy()
    _C.gemm_packed_bf16(A, _C.pack_panels_bf16(W), N, C=big[:, :N], accumulate=True, isa=isa)
    np.testing.assert_array_equal(big[:, N:], before[:, N:])
    np.testing.assert_allclose(big[:, :N], bf16_ref(A, W, None, before[:, :N]), atol=tol(K))
    with pytest.raises(ValueError):  # a float32 panel size is not a bf16 one
        _C.gemm_packed_bf16(A, np.zeros((3, 70, 16, 2), np.uint16), N, isa=isa)


@pytest.mark.parametrize("hidden", [64, 256])
@pytest.mark.parametrize("isa", BF16_ISAS)
def test_gemm_bf16_error_bound_on_treelstm_operands(hidden, isa):
    # Each operand is rounded to 8 significant bits (relative error <= u = 2^-8), so an element's error is at most
    # (2u + u^2) sum_k |a_k w_k|, plus float32 summation; measured errors are far below (tools/gemm_peak.py --bf16).
    from cortex.examples.treelstm import level_product_operands

    A, U = level_product_operands(hidden)
    exact = ref_gemm(A, U)
    out = _C.gemm_packed_bf16(A, _C.pack_panels_bf16(U), U.shape[1], isa=isa)
    err = np.abs(out - exact)
    bound = 2.0 ** -6.9 * (np.abs(A).astype(np.float64) @ np.abs(U).astype(np.float64)) + 1e-6
    assert np.all(err <= bound)
    assert err.max() < 2e-3 and err.mean() < 2e-4


# ------------------------------------------------------------------------------------------------------------------
# The headers at each -march level the generated kernels use: the default micro-kernel each level gets, and its
# results (x86-64-v3 must keep the AVX2 path; v4 brings AVX-512; the bf16 paths need their own flags).

ISA_PROGRAM = r"""
#include <cmath>
#include <cstdio>
#include <vector>
#include "gemm.h"
#include "gemm_bf16.h"
int main() {
  const int64_t M = 37, K = 300, N = 97;
  std::vector<float> A(M * K), W(K * N), bias(N), C(M * N), Cb(M * N);
  uint32_t s = 12345;
  auto next = [&] { s = s * 1664525u + 1013904223u; return static_cast<float>(s >> 8) / 16777216.0f - 0.5f; };
  for (auto& x : A) x = next();
  for (auto& x : W) x = next();
  for (auto& x : bias) x = next();
  std::vector<float> P(cortex::packed_panels_size(K, N));
  std::vector<uint16_t> Pb(cortex::packed_panels_bf16_size(K, N));
  cortex::pack_panels(W.data(), K, N, P.data());
  cortex::pack_panels_bf16(W.data(), K, N, Pb.data());
  cortex::gemm_packed(M, N, K, A.data(), K, P.data(), C.data(), N, bias.data(), false);
  cortex::gemm_packed_bf16(M, N, K, A.data(), K, Pb.data(), Cb.data(), N, bias.data(), false);
  double err = 0, errb = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double r = bias[n], rb = bias[n];
      for (int64_t k = 0; k < K; ++k) {
        r += double(A[m * K + k]) * W[k * N + n];
        rb += double(cortex::bf16_to_float(cortex::bf16_bits(A[m * K + k]))) *
              cortex::bf16_to_float(cortex::bf16_bits(W[k * N + n]));
      }
      err = std::fmax(err, std::fabs(r - C[m * N + n]));
      errb = std::fmax(errb, std::fabs(rb - Cb[m * N + n]));
    }
  std::printf("%s %s %d %g %g\n", cortex::gemm_isa(), cortex::gemm_bf16_isa(), int(cortex::gemm_bf16_uses_amx(M)), err, errb);
  return 0;
}
"""


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@pytest.mark.parametrize("flags,needs,want", [
    (["-march=x86-64-v3"], {"avx2", "fma"}, ("avx2", "portable", "0")),
    (["-march=x86-64-v4"], {"avx512f", "avx512bw"}, ("avx512", "portable", "0")),
    (["-march=x86-64-v4", "-mavx512bf16"], {"avx512f", "avx512_bf16"}, ("avx512", "avx512bf16", "0")),
    (["-march=x86-64-v4", "-mavx512bf16", "-mamx-tile", "-mamx-bf16"], {"avx512_bf16", "amx_tile", "amx_bf16"},
     ("avx512", "avx512bf16", "1")),
])
def test_headers_at_each_isa_level(tmp_path, flags, needs, want):
    import platform
    import shutil

    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if platform.machine() not in ("x86_64", "AMD64") or cxx is None:
        pytest.skip("needs an x86-64 host with a C++ compiler")
    missing = needs - _cpu_flags()
    if missing:
        pytest.skip(f"this CPU lacks {', '.join(sorted(missing))}: a kernel built with {' '.join(flags)} cannot run here")
    src, exe = tmp_path / "isa.cc", tmp_path / "isa"
    src.write_text(ISA_PROGRAM)
    subprocess.run([cxx, "-O2", "-std=c++17", *flags, "-I" + os.path.join(REPO, "csrc", "runtime"), str(src), "-o",
                    str(exe), "-pthread"], check=True, capture_output=True, text=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split()
    assert tuple(out[:3]) == want
    assert float(out[3]) < tol(300) and float(out[4]) < tol(300)

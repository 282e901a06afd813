// cortex::gemm_packed_f64: the matrix products of a float64 kernel (a model written with `model.double()`), with
// gemm_packed's arguments: C[M,N] (= or +=) A[M,K] * W[K,N] + bias, in double, W pre-packed in the same panel
// layout as float32 (docs/contracts.md), of doubles: packed[p][k][r] = W[k][p*16 + r], [ceil(N/16), K, 16].
//
//   C[m][n] = (accumulate ? C[m][n] : 0) + bias[n] (if bias) + sum_k A[m][k] * W[k][n]
//
// A register tile of up to 4 rows x 16 columns of double accumulators, written as plain loops the compiler
// vectorizes at the kernel's -march (8 doubles an AVX-512 register, 4 an AVX2 one); panels outer, rows inner, so
// one panel (K x 128 bytes) stays in cache while the rows stream over it. Each element is one sequential
// multiply-add chain over k = 0..K-1 (fused where the level has FMA), whatever M, the tile's row count or the thread split: a row's bits do not
// depend on the other rows of its product (batch invariance, as gemm.h). The AVX-512 float micro-kernels of gemm.h
// stay float-only. No allocation; A and C may have any leading dimension.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "gemm.h"  // kGemmNR, gemm_num_panels
#include "parallel.h"

namespace cortex {

namespace gemm_f64_detail {

// c + a * b as one rounding where the level has FMA (std::fma, which GCC vectorizes to vfmadd), else two: spelled
// out so that the compiler's own contraction never makes one tile's chain differ from another's.
inline double madd(double a, double b, double c) {
#if defined(__FMA__)
  return std::fma(a, b, c);
#else
  return c + a * b;  // no FMA instruction: nothing to contract
#endif
}

// C[0:MR, 0:nvalid] = (load_c ? C : 0) + (bias ? bias : 0) + A[0:MR, 0:K] * panel[0:K, 0:nvalid].
template <int MR>
inline void tile(int64_t K, const double* A, int64_t lda, const double* panel, double* C, int64_t ldc,
                 int64_t nvalid, const double* bias, bool load_c) {
  double acc[MR][kGemmNR];
  for (int r = 0; r < MR; ++r) {
    for (int c = 0; c < kGemmNR; ++c) {
      const double start = load_c && c < nvalid ? C[r * ldc + c] : 0.0;
      acc[r][c] = bias != nullptr && c < nvalid ? start + bias[c] : start;
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    const double* w = panel + k * kGemmNR;
    for (int r = 0; r < MR; ++r) {
      const double a = A[r * lda + k];
      for (int c = 0; c < kGemmNR; ++c) acc[r][c] = madd(a, w[c], acc[r][c]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int64_t c = 0; c < nvalid; ++c) C[r * ldc + c] = acc[r][c];
  }
}

// Rows [m0, m1) of panels [p0, p1).
inline void block(int64_t m0, int64_t m1, int64_t p0, int64_t p1, int64_t N, int64_t K, const double* A, int64_t lda,
                  const double* W, double* C, int64_t ldc, const double* bias, bool accumulate) {
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t n0 = p * kGemmNR;
    const int64_t nvalid = std::min<int64_t>(kGemmNR, N - n0);
    const double* panel = W + p * K * kGemmNR;
    const double* bias_p = bias != nullptr ? bias + n0 : nullptr;
    int64_t m = m0;
    for (; m + 4 <= m1; m += 4) tile<4>(K, A + m * lda, lda, panel, C + m * ldc + n0, ldc, nvalid, bias_p, accumulate);
    for (; m < m1; ++m) tile<1>(K, A + m * lda, lda, panel, C + m * ldc + n0, ldc, nvalid, bias_p, accumulate);
  }
}

}  // namespace gemm_f64_detail

// On the calling thread.
inline void gemm_packed_f64_serial(int64_t M, int64_t N, int64_t K, const double* A, int64_t lda, const double* W,
                                   double* C, int64_t ldc, const double* bias, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  gemm_f64_detail::block(0, M, 0, gemm_num_panels(N), N, K, A, lda, W, C, ldc, bias, accumulate);
}

// Columns [n0, n1) only (n0 a multiple of 16; whole panels are computed, up to N), rows all M, on the calling
// thread: the fused sections' per-worker products.
inline void gemm_packed_f64_columns(int64_t M, int64_t N, int64_t K, const double* A, int64_t lda, const double* W,
                                    double* C, int64_t ldc, const double* bias, int64_t n0, int64_t n1) {
  if (M <= 0 || n1 <= n0) return;
  const int64_t p1 = std::min(gemm_num_panels(N), (n1 + kGemmNR - 1) / kGemmNR);
  gemm_f64_detail::block(0, M, n0 / kGemmNR, p1, N, K, A, lda, W, C, ldc, bias, false);
}

// Column panels (and row ranges where the panels are fewer than the threads) over the pool when the work pays.
inline void gemm_packed_f64(int64_t M, int64_t N, int64_t K, const double* A, int64_t lda, const double* W, double* C,
                            int64_t ldc, const double* bias, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  const int64_t panels = gemm_num_panels(N);
  const int64_t threads = num_threads();
  if (threads <= 1 || 2.0 * static_cast<double>(M) * N * K < 2.0e5) {
    gemm_f64_detail::block(0, M, 0, panels, N, K, A, lda, W, C, ldc, bias, accumulate);
    return;
  }
  const int64_t row_parts = std::max<int64_t>(1, std::min<int64_t>((threads + panels - 1) / panels, (M + 3) / 4));
  parallel_for(panels * row_parts, [&](int64_t task) {
    const int64_t p = task % panels, r = task / panels;
    gemm_f64_detail::block(M * r / row_parts, M * (r + 1) / row_parts, p, p + 1, N, K, A, lda, W, C, ldc, bias,
                           accumulate);
  });
}

}  // namespace cortex

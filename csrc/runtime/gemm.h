// cortex::gemm_packed: C[M,N] (= or +=) A[M,K] * W[K,N] + bias, with W pre-packed in the panel
// layout of docs/contracts.md:  NR = 16,  packed[p][k][r] = W[k][p*16 + r]  (0 where p*16+r >= N),
// shape [ceil(N/16), K, 16], float32.
//
//   C[m][n] = (accumulate ? C[m][n] : 0) + bias[n] (if bias) + sum_k A[m][k] * W[k][n]
//
// AVX2+FMA path: 6x16 register-blocked micro-kernel (12 ymm accumulators), K blocked so one panel
// slice stays in L1 while all row blocks stream over it; a streaming kernel for M <= 4
// (bandwidth-bound). Batch-invariant: every element is one sequential FMA chain over k, whatever M
// and the tile size, so a row's bits do not depend on the other rows of its product (a request
// gives the same bits alone and merged into a forest: cortex.serving). gemm_packed splits column panels (and row blocks when
// there are few panels) over cortex::parallel_for; gemm_packed_serial runs on the calling thread.
// No allocation. A and C may have any leading dimension; no alignment is required.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "parallel.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define CORTEX_GEMM_AVX2 1
#endif

namespace cortex {

constexpr int64_t kGemmNR = 16;

inline int64_t gemm_num_panels(int64_t N) { return (N + kGemmNR - 1) / kGemmNR; }
inline int64_t packed_panels_size(int64_t K, int64_t N) { return gemm_num_panels(N) * K * kGemmNR; }

// Reference packing: W row-major [K, N] -> out [ceil(N/16), K, 16].
inline void pack_panels(const float* W, int64_t K, int64_t N, float* out) {
  const int64_t P = gemm_num_panels(N);
  for (int64_t p = 0; p < P; ++p) {
    for (int64_t k = 0; k < K; ++k) {
      float* dst = out + (p * K + k) * kGemmNR;
      for (int64_t r = 0; r < kGemmNR; ++r) {
        const int64_t n = p * kGemmNR + r;
        dst[r] = n < N ? W[k * N + n] : 0.0f;
      }
    }
  }
}

namespace gemm_detail {

constexpr int64_t kMR = 6;     // rows per micro-tile
constexpr int64_t kKC = 256;   // K block: one panel slice = 16 KiB
constexpr int64_t kSmallM = 4; // M <= this: streaming kernel

// Portable tile: rows [0, mr), one panel, k in [0, kc). Plain C++ (GCC/Clang vector extensions
// when available, 4-wide: SSE on any x86-64, NEON on arm64). Two rows at a time share the B loads.
#if defined(__GNUC__)
typedef float v4f __attribute__((vector_size(16)));
inline v4f v4_load(const float* p) {
  v4f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void v4_store(float* p, v4f v) { std::memcpy(p, &v, sizeof(v)); }

inline void tile_scalar(int64_t mr, int64_t kc, const float* A, int64_t lda, const float* B, float* C,
                        int64_t ldc, int64_t nvalid, const float* bias, bool load_c) {
  alignas(16) float init[2][kGemmNR];
  alignas(16) float out[2][kGemmNR];
  for (int64_t i0 = 0; i0 < mr; i0 += 2) {
    const int64_t rows = std::min<int64_t>(2, mr - i0);
    for (int64_t i = 0; i < 2; ++i)
      for (int64_t r = 0; r < kGemmNR; ++r) {
        float v = 0.0f;
        if (r < nvalid && i < rows) {
          if (load_c) v = C[(i0 + i) * ldc + r];
          if (bias) v += bias[r];
        }
        init[i][r] = v;
      }
    v4f c00 = v4_load(init[0]), c01 = v4_load(init[0] + 4), c02 = v4_load(init[0] + 8), c03 = v4_load(init[0] + 12);
    v4f c10 = v4_load(init[1]), c11 = v4_load(init[1] + 4), c12 = v4_load(init[1] + 8), c13 = v4_load(init[1] + 12);
    const float* a0 = A + i0 * lda;
    const float* a1 = rows > 1 ? a0 + lda : a0;
    const float* b = B;
    for (int64_t k = 0; k < kc; ++k, b += kGemmNR) {
      const v4f b0 = v4_load(b), b1 = v4_load(b + 4), b2 = v4_load(b + 8), b3 = v4_load(b + 12);
      const float x0 = a0[k], x1 = a1[k];
      c00 += x0 * b0;
      c01 += x0 * b1;
      c02 += x0 * b2;
      c03 += x0 * b3;
      c10 += x1 * b0;
      c11 += x1 * b1;
      c12 += x1 * b2;
      c13 += x1 * b3;
    }
    v4_store(out[0], c00), v4_store(out[0] + 4, c01), v4_store(out[0] + 8, c02), v4_store(out[0] + 12, c03);
    v4_store(out[1], c10), v4_store(out[1] + 4, c11), v4_store(out[1] + 8, c12), v4_store(out[1] + 12, c13);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t r = 0; r < nvalid; ++r) C[(i0 + i) * ldc + r] = out[i][r];
  }
}
#else
inline void tile_scalar(int64_t mr, int64_t kc, const float* A, int64_t lda, const float* B, float* C,
                        int64_t ldc, int64_t nvalid, const float* bias, bool load_c) {
  for (int64_t i = 0; i < mr; ++i) {
    float acc[kGemmNR];
    for (int64_t r = 0; r < kGemmNR; ++r) {
      float v = 0.0f;
      if (r < nvalid) {
        if (load_c) v = C[i * ldc + r];
        if (bias) v += bias[r];
      }
      acc[r] = v;
    }
    const float* a = A + i * lda;
    for (int64_t k = 0; k < kc; ++k)
      for (int64_t r = 0; r < kGemmNR; ++r) acc[r] += a[k] * B[k * kGemmNR + r];
    for (int64_t r = 0; r < nvalid; ++r) C[i * ldc + r] = acc[r];
  }
}
#endif

#ifdef CORTEX_GEMM_AVX2

// Keeps B in registers: otherwise GCC may fold the two B loads into every FMA (2 loads per FMA
// pair instead of 2 per row block), which starves the load ports for MR <= 4.
#if defined(__GNUC__)
#define CX_PIN(x, y) __asm__("" : "+x"(x), "+x"(y));
#else
#define CX_PIN(x, y)
#endif
// Accumulators are named variables (not arrays) so that GCC keeps them in registers.
#define CX_DECL(i) __m256 c##i##0 = _mm256_setzero_ps(), c##i##1 = _mm256_setzero_ps(), \
                          d##i##0 = _mm256_setzero_ps(), d##i##1 = _mm256_setzero_ps(), \
                          e##i##0 = _mm256_setzero_ps(), e##i##1 = _mm256_setzero_ps(), \
                          f##i##0 = _mm256_setzero_ps(), f##i##1 = _mm256_setzero_ps()
#define CX_INIT(i)                                                   \
  if (MR > i) {                                                      \
    if (load_c) {                                                    \
      c##i##0 = _mm256_loadu_ps(C + i * ldc);                        \
      c##i##1 = _mm256_loadu_ps(C + i * ldc + 8);                    \
    }                                                                \
    if (bias16) {                                                    \
      c##i##0 = _mm256_add_ps(c##i##0, _mm256_loadu_ps(bias16));     \
      c##i##1 = _mm256_add_ps(c##i##1, _mm256_loadu_ps(bias16 + 8)); \
    }                                                                \
  }
#define CX_FMA(acc, i, kk)                                    \
  if (MR > i) {                                               \
    const __m256 av = _mm256_broadcast_ss(a##i + (kk));       \
    acc##i##0 = _mm256_fmadd_ps(av, b0, acc##i##0);           \
    acc##i##1 = _mm256_fmadd_ps(av, b1, acc##i##1);           \
  }
#define CX_STEP(acc, kk)                                      \
  {                                                           \
    __m256 b0 = _mm256_loadu_ps(B + (kk) * kGemmNR);          \
    __m256 b1 = _mm256_loadu_ps(B + (kk) * kGemmNR + 8);      \
    CX_PIN(b0, b1)                                            \
    CX_FMA(acc, 0, kk)                                        \
    CX_FMA(acc, 1, kk)                                        \
    CX_FMA(acc, 2, kk)                                        \
    CX_FMA(acc, 3, kk)                                        \
    CX_FMA(acc, 4, kk)                                        \
    CX_FMA(acc, 5, kk)                                        \
  }
#define CX_MERGE(i)                                                  \
  if (MR > i && U == 4) {                                            \
    c##i##0 = _mm256_add_ps(_mm256_add_ps(c##i##0, d##i##0), _mm256_add_ps(e##i##0, f##i##0)); \
    c##i##1 = _mm256_add_ps(_mm256_add_ps(c##i##1, d##i##1), _mm256_add_ps(e##i##1, f##i##1)); \
  } else if (MR > i && U == 2) {                                     \
    c##i##0 = _mm256_add_ps(c##i##0, d##i##0);                       \
    c##i##1 = _mm256_add_ps(c##i##1, d##i##1);                       \
  }
#define CX_STORE(i)                                \
  if (MR > i) {                                    \
    _mm256_storeu_ps(C + i * ldc, c##i##0);        \
    _mm256_storeu_ps(C + i * ldc + 8, c##i##1);    \
  }

// Full 16-wide tile of MR (1..6) rows: C[0:MR, 0:16] = (load_c ? C : 0) + (bias16 ? bias16 : 0)
// + A[0:MR, 0:kc] * B[0:kc, 0:16]. U = 2 or 4 splits k over U accumulator sets (for MR <= 3,
// where one set is too few independent FMA chains to hide the FMA latency).
template <int MR, int U>
inline void kern(int64_t kc, const float* A, int64_t lda, const float* B, float* C, int64_t ldc,
                 const float* bias16, bool load_c) {
  static_assert(MR >= 1 && MR <= 6 && (U == 1 || (U == 2 && MR <= 3) || (U == 4 && MR == 1)),
                "bad micro-kernel shape");
  CX_DECL(0); CX_DECL(1); CX_DECL(2); CX_DECL(3); CX_DECL(4); CX_DECL(5);
  CX_INIT(0) CX_INIT(1) CX_INIT(2) CX_INIT(3) CX_INIT(4) CX_INIT(5)
  const float* a0 = A;
  const float* a1 = A + (MR > 1 ? lda : 0);
  const float* a2 = A + (MR > 2 ? 2 * lda : 0);
  const float* a3 = A + (MR > 3 ? 3 * lda : 0);
  const float* a4 = A + (MR > 4 ? 4 * lda : 0);
  const float* a5 = A + (MR > 5 ? 5 * lda : 0);
  (void)a1; (void)a2; (void)a3; (void)a4; (void)a5;
  if (U == 4) {
    const int64_t kquads = kc / 4;
    for (int64_t j = 0; j < kquads; ++j) {
      CX_STEP(c, 0)
      CX_STEP(d, 1)
      CX_STEP(e, 2)
      CX_STEP(f, 3)
      B += 4 * kGemmNR;
      a0 += 4;
    }
    for (int64_t k = 0; k < (kc & 3); ++k) {
      CX_STEP(c, 0)
      B += kGemmNR;
      ++a0;
    }
  } else if (U == 2) {
    const int64_t kpairs = kc / 2;
    for (int64_t j = 0; j < kpairs; ++j) {
      CX_STEP(c, 0)
      CX_STEP(d, 1)
      B += 2 * kGemmNR;
      a0 += 2; a1 += 2; a2 += 2; a3 += 2; a4 += 2; a5 += 2;
    }
    if (kc & 1) CX_STEP(c, 0)
  } else {
    for (int64_t k = 0; k < kc; ++k) {
      CX_STEP(c, 0)
      B += kGemmNR;
      ++a0; ++a1; ++a2; ++a3; ++a4; ++a5;
    }
  }
  CX_MERGE(0) CX_MERGE(1) CX_MERGE(2)
  CX_STORE(0) CX_STORE(1) CX_STORE(2) CX_STORE(3) CX_STORE(4) CX_STORE(5)
}

#undef CX_PIN
#undef CX_DECL
#undef CX_INIT
#undef CX_FMA
#undef CX_STEP
#undef CX_MERGE
#undef CX_STORE

// U = 1 for every tile size: split accumulators (U = 2 or 4 for 1-3 rows) hid FMA latency but summed k in
// another order than the 4-6 row tiles, so a row's result depended on how many rows shared its product.
inline void kern_dispatch(int64_t mr, int64_t kc, const float* A, int64_t lda, const float* B, float* C,
                          int64_t ldc, const float* bias16, bool load_c) {
  switch (mr) {
    case 6: kern<6, 1>(kc, A, lda, B, C, ldc, bias16, load_c); break;
    case 5: kern<5, 1>(kc, A, lda, B, C, ldc, bias16, load_c); break;
    case 4: kern<4, 1>(kc, A, lda, B, C, ldc, bias16, load_c); break;
    case 3: kern<3, 1>(kc, A, lda, B, C, ldc, bias16, load_c); break;
    case 2: kern<2, 1>(kc, A, lda, B, C, ldc, bias16, load_c); break;
    default: kern<1, 1>(kc, A, lda, B, C, ldc, bias16, load_c); break;
  }
}

// One MR x 16 tile; a partial last panel (nvalid < 16) goes through a 16-wide stack buffer.
inline void tile(int64_t mr, int64_t kc, const float* A, int64_t lda, const float* B, float* C, int64_t ldc,
                 int64_t nvalid, const float* bias, bool load_c) {
  if (nvalid == kGemmNR) {
    kern_dispatch(mr, kc, A, lda, B, C, ldc, bias, load_c);
    return;
  }
  alignas(32) float tmp[kMR * kGemmNR];
  alignas(32) float btmp[kGemmNR];
  for (int64_t i = 0; i < mr; ++i)
    for (int64_t r = 0; r < kGemmNR; ++r) tmp[i * kGemmNR + r] = (load_c && r < nvalid) ? C[i * ldc + r] : 0.0f;
  if (bias)
    for (int64_t r = 0; r < kGemmNR; ++r) btmp[r] = r < nvalid ? bias[r] : 0.0f;
  kern_dispatch(mr, kc, A, lda, B, tmp, kGemmNR, bias ? btmp : nullptr, load_c);
  for (int64_t i = 0; i < mr; ++i)
    for (int64_t r = 0; r < nvalid; ++r) C[i * ldc + r] = tmp[i * kGemmNR + r];
}

#else  // portable fallback

inline void tile(int64_t mr, int64_t kc, const float* A, int64_t lda, const float* B, float* C, int64_t ldc,
                 int64_t nvalid, const float* bias, bool load_c) {
  tile_scalar(mr, kc, A, lda, B, C, ldc, nvalid, bias, load_c);
}

#endif

// Row blocks: M rows are cut into nb = ceil(M / 6) balanced blocks (16 -> 6,5,5 rather than
// 6,6,4). The cut depends on M only, so every row is computed by the same micro-kernel whatever
// the thread split: parallel and serial results are bitwise identical.
struct RowBlocks {
  int64_t nb, base, extra;
  explicit RowBlocks(int64_t M) : nb((M + kMR - 1) / kMR), base(nb ? M / nb : 0), extra(nb ? M % nb : 0) {}
  int64_t start(int64_t b) const { return b * base + std::min(b, extra); }
};

// Row blocks [b0, b1) x panels [p0, p1) of the product.
inline void gemm_block(const RowBlocks& rb, int64_t b0, int64_t b1, int64_t p0, int64_t p1, int64_t M, int64_t N,
                       int64_t K, const float* A, int64_t lda, const float* Bpacked, float* C, int64_t ldc,
                       const float* bias, bool accumulate) {
  if (b1 <= b0 || p1 <= p0) return;
  const int64_t m0 = rb.start(b0), m1 = rb.start(b1);
  if (K <= 0) {  // no products: C = (accumulate ? C : 0) + bias
    for (int64_t m = m0; m < m1; ++m) {
      for (int64_t n = p0 * kGemmNR; n < std::min(N, p1 * kGemmNR); ++n) {
        float v = accumulate ? C[m * ldc + n] : 0.0f;
        if (bias) v += bias[n];
        C[m * ldc + n] = v;
      }
    }
    return;
  }
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t n0 = p * kGemmNR;
    const int64_t nvalid = std::min<int64_t>(kGemmNR, N - n0);
    const float* panel = Bpacked + p * K * kGemmNR;
    const float* bias_p = bias ? bias + n0 : nullptr;
    if (M <= kSmallM) {  // streaming: the whole K of the panel in one pass
      tile(M, K, A, lda, panel, C + n0, ldc, nvalid, bias_p, accumulate);
      continue;
    }
    // K blocks: the panel slice (kKC x 16 floats) stays in L1 while the row blocks stream over it.
    // Storing and reloading C between K blocks is exact, so the blocking does not change results.
    for (int64_t k0 = 0; k0 < K; k0 += kKC) {
      const int64_t kc = std::min(kKC, K - k0);
      const bool first = k0 == 0;
      const bool load_c = first ? accumulate : true;
      const float* bk = panel + k0 * kGemmNR;
      const float* bias_k = first ? bias_p : nullptr;
      for (int64_t b = b0, m = m0; b < b1; ++b) {
        const int64_t mr = rb.base + (b < rb.extra ? 1 : 0);
        tile(mr, kc, A + m * lda + k0, lda, bk, C + m * ldc + n0, ldc, nvalid, bias_k, load_c);
        m += mr;
      }
    }
  }
}

}  // namespace gemm_detail

// Single-threaded: runs entirely on the calling thread.
inline void gemm_packed_serial(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* Bpacked,
                               float* C, int64_t ldc, const float* bias, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  const gemm_detail::RowBlocks rb(M);
  gemm_detail::gemm_block(rb, 0, rb.nb, 0, gemm_num_panels(N), M, N, K, A, lda, Bpacked, C, ldc, bias, accumulate);
}

// Single-threaded, columns [n0, n1) only (n0 a multiple of 16; n1 one too, or N): a worker's share of a product.
inline void gemm_packed_columns(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* Bpacked,
                                float* C, int64_t ldc, const float* bias, int64_t n0, int64_t n1) {
  if (M <= 0 || n1 <= n0) return;
  const gemm_detail::RowBlocks rb(M);
  gemm_detail::gemm_block(rb, 0, rb.nb, n0 / kGemmNR, (n1 + kGemmNR - 1) / kGemmNR, M, N, K, A, lda, Bpacked, C, ldc,
                          bias, false);
}

// Parallel over column panels (and row blocks when panels are few) with cortex::parallel_for.
// Called from inside another parallel_for region it runs serially (the pool is busy).
inline void gemm_packed(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* Bpacked, float* C,
                        int64_t ldc, const float* bias, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  const int64_t P = gemm_num_panels(N);
  const double flops = 2.0 * static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K);
  int64_t T = num_threads();
  // Below ~0.25 MFLOP (a few microseconds) the dispatch costs more than it saves.
  if (T <= 1 || flops < 2.5e5) {
    gemm_packed_serial(M, N, K, A, lda, Bpacked, C, ldc, bias, accumulate);
    return;
  }
  const gemm_detail::RowBlocks rb(M);
  // Tasks: contiguous panel ranges, plus row-block splits when there are few panels. A few tasks
  // per thread so that the calling thread can take over the work of a worker that starts late (a
  // busy machine); the pool hands tasks out dynamically.
  const int64_t want = 4 * T;
  const int64_t tp = std::min(P, want);
  int64_t tm = 1;
  if (P < 2 * T && M > gemm_detail::kSmallM) tm = std::min(rb.nb, (want + tp - 1) / tp);
  const int64_t tasks = tp * tm;
  if (tasks <= 1) {
    gemm_packed_serial(M, N, K, A, lda, Bpacked, C, ldc, bias, accumulate);
    return;
  }
  parallel_for(tasks, [&](int64_t t) {
    const int64_t ip = t % tp, im = t / tp;
    const int64_t p0 = P * ip / tp, p1 = P * (ip + 1) / tp;
    const int64_t b0 = rb.nb * im / tm, b1 = rb.nb * (im + 1) / tm;
    gemm_detail::gemm_block(rb, b0, b1, p0, p1, M, N, K, A, lda, Bpacked, C, ldc, bias, accumulate);
  });
}

}  // namespace cortex

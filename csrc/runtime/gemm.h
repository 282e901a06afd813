// cortex::gemm_packed: C[M,N] (= or +=) A[M,K] * W[K,N] + bias, float32, with W pre-packed in the panel
// layout of docs/contracts.md:  NR = 16,  packed[p][k][r] = W[k][p*16 + r]  (0 where p*16+r >= N),
// shape [ceil(N/16), K, 16], float32.
//
//   C[m][n] = (accumulate ? C[m][n] : 0) + bias[n] (if bias) + sum_k A[m][k] * W[k][n]
//
// One layout for every ISA level: a panel row is 16 floats, one AVX-512 register and one cache line, so the
// AVX-512 kernel reads two adjacent panels per tile (2 streams) instead of needing a wider layout; measured on
// a Xeon with AMX, a 32-wide layout gave the same speed. Weights packed once run on any level.
//
// The micro-kernel is chosen at compile time from the compiler's ISA macros (the kernel's -march):
//   __AVX512F__          Avx512F32: up to 12 rows x 32 columns (24 zmm accumulators), 16-wide FMAs
//   __AVX2__ && __FMA__  Avx2F32:   up to 6 rows x 16 columns (12 ymm accumulators)
//   otherwise            PortableF32: GCC vector extensions (SSE / NEON) or scalar C++
// Each is exact float32 (fused multiply-adds, float32 accumulators) and batch-invariant: every element of C is
// one sequential FMA chain over k = 0..K-1 from (accumulate ? C : 0) + bias, whatever M, the tile's row count, the
// K blocking (a K block stores C and the next reloads it: exact) and the thread split. A row's bits do not depend
// on the other rows of its product (cortex.serving merges requests into one forest and promises the bits of
// separate runs); the AVX2 and AVX-512 kernels even agree bitwise with each other. No split accumulators: where
// few rows give too few independent chains to hide the FMA latency, the AVX-512 streaming tile covers more
// panels instead (more columns, each still one chain). The portable kernel fuses as the compiler contracts.
//
// K is blocked so one slice of the tile's panels stays in L1 while all row blocks stream over it; few rows
// (M <= 4: bandwidth-bound) stream the whole K. gemm_packed splits column panels (and
// row blocks when there are few panels) over cortex::parallel_for; gemm_packed_serial runs on the calling
// thread. No allocation. A and C may have any leading dimension; no alignment is required.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "parallel.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define CORTEX_GEMM_AVX2 1
#endif
#if defined(__AVX512F__)
#include <immintrin.h>
#define CORTEX_GEMM_AVX512 1
#endif

namespace cortex {

constexpr int64_t kGemmNR = 16;  // panel width; column ranges (gemm_packed_columns) are multiples of it

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

// Row blocks: M rows are cut into nb = ceil(M / MR) balanced blocks (16 at MR 6 -> 6,5,5 rather than 6,6,4).
// The cut depends on M only, so every row is computed by the same micro-kernel whatever the thread split.
struct RowBlocks {
  int64_t nb, base, extra;
  RowBlocks(int64_t M, int64_t MR) : nb((M + MR - 1) / MR), base(nb ? M / nb : 0), extra(nb ? M % nb : 0) {}
  int64_t start(int64_t b) const { return b * base + std::min(b, extra); }
  int64_t rows(int64_t b) const { return base + (b < extra ? 1 : 0); }
};

// A micro-kernel policy provides:
//   kMR      most rows of a tile (row blocks are cut with it)
//   kPanels  panels (16 columns each) a tile covers at most
//   kStreamPanels  the same for M <= kSmallM
//   kKC      K block for M > kSmallM: kPanels panel slices of kKC rows stay in L1
//   kSmallM  at most this many rows: one pass over the whole K (bandwidth-bound)
//   kGflops  one core's speed at level shapes (the parallel threshold)
//   tile(mr, np, kc, A, lda, B, panel_stride, C, ldc, nvalid, bias, load_c):
//     C[0:mr, 0:nvalid] = (load_c ? C : 0) + (bias ? bias : 0) + A[0:mr, 0:kc] * W, where W's 16*np columns are
//     panel j's rows B + j*panel_stride + k*16 (j < np), and nvalid in (16*(np-1), 16*np] columns are real.
//   The summation order of an element must depend on mr and kc only (never on np or nvalid).
constexpr int64_t kSmallM = 4;

// Portable tile: plain C++ (GCC/Clang vector extensions when available, 4-wide: SSE on any x86-64, NEON on
// arm64). Two rows at a time share the B loads.
struct PortableF32 {
  static constexpr int64_t kMR = 6, kPanels = 1, kStreamPanels = 1, kKC = 256;
  static constexpr double kGflops = 20;
  static constexpr const char* name = "portable";

#if defined(__GNUC__)
  typedef float v4f __attribute__((vector_size(16)));
  static v4f v4_load(const float* p) {
    v4f v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static void v4_store(float* p, v4f v) { std::memcpy(p, &v, sizeof(v)); }

  static void tile(int64_t mr, int64_t, int64_t kc, const float* A, int64_t lda, const float* B, int64_t, float* C,
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
  static void tile(int64_t mr, int64_t, int64_t kc, const float* A, int64_t lda, const float* B, int64_t, float* C,
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
};

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
inline void avx2_kern(int64_t kc, const float* A, int64_t lda, const float* B, float* C, int64_t ldc,
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

struct Avx2F32 {
  static constexpr int64_t kMR = 6, kPanels = 1, kStreamPanels = 1, kKC = 256;
  static constexpr double kGflops = 110;
  static constexpr const char* name = "avx2";

  // U = 1 for every tile size (batch invariance): split accumulators (U = 2 or 4 for 1-3 rows) hid the FMA
  // latency but summed k in another order than the 4-6 row tiles.
  static void full(int64_t mr, int64_t kc, const float* A, int64_t lda, const float* B, float* C, int64_t ldc,
                   const float* bias16, bool load_c) {
    switch (mr) {
      case 6: avx2_kern<6, 1>(kc, A, lda, B, C, ldc, bias16, load_c); break;
      case 5: avx2_kern<5, 1>(kc, A, lda, B, C, ldc, bias16, load_c); break;
      case 4: avx2_kern<4, 1>(kc, A, lda, B, C, ldc, bias16, load_c); break;
      case 3: avx2_kern<3, 1>(kc, A, lda, B, C, ldc, bias16, load_c); break;
      case 2: avx2_kern<2, 1>(kc, A, lda, B, C, ldc, bias16, load_c); break;
      default: avx2_kern<1, 1>(kc, A, lda, B, C, ldc, bias16, load_c); break;
    }
  }

  // A partial last panel (nvalid < 16) goes through a 16-wide stack buffer.
  static void tile(int64_t mr, int64_t, int64_t kc, const float* A, int64_t lda, const float* B, int64_t, float* C,
                   int64_t ldc, int64_t nvalid, const float* bias, bool load_c) {
    if (nvalid == kGemmNR) {
      full(mr, kc, A, lda, B, C, ldc, bias, load_c);
      return;
    }
    alignas(32) float tmp[kMR * kGemmNR];
    alignas(32) float btmp[kGemmNR];
    for (int64_t i = 0; i < mr; ++i)
      for (int64_t r = 0; r < kGemmNR; ++r) tmp[i * kGemmNR + r] = (load_c && r < nvalid) ? C[i * ldc + r] : 0.0f;
    if (bias)
      for (int64_t r = 0; r < kGemmNR; ++r) btmp[r] = r < nvalid ? bias[r] : 0.0f;
    full(mr, kc, A, lda, B, tmp, kGemmNR, bias ? btmp : nullptr, load_c);
    for (int64_t i = 0; i < mr; ++i)
      for (int64_t r = 0; r < nvalid; ++r) C[i * ldc + r] = tmp[i * kGemmNR + r];
  }
};

#endif  // CORTEX_GEMM_AVX2

#ifdef CORTEX_GEMM_AVX512

// Split accumulators over k for few rows (too few independent FMA chains to cover the FMA latency on two
// ports otherwise): only the opt-in bf16 products use them (Op::kSplitK); float32 keeps one chain per element
// (batch invariance, see the top of this file) and widens the streaming tile instead (kStreamPanels).
constexpr int avx512_ksplit(int MR) { return MR == 1 ? 4 : MR <= 3 ? 2 : 1; }

// MR x 16*NV tile over a k-loop whose step multiplies one broadcast A element (4 bytes: a float, or a pair of
// bf16) by NV 64-byte rows of B (panel j's row k at B + j*pstride + k*Op::kBRow). Op supplies the element
// types and the multiply-accumulate: Fma (float32) here, vdpbf16ps pairs in gemm_bf16.h. The arrays are
// fully unrolled, so GCC keeps them in zmm registers (12 x 2 tile: 24 accumulators, 2 B rows, 1 broadcast).
template <class Op, int MR, int NV>
inline void avx512_kern(int64_t kc, const typename Op::AT* A, int64_t lda, const typename Op::BT* B,
                        int64_t pstride, float* C, int64_t ldc, const float* bias, __mmask16 mlast, bool load_c) {
  constexpr int U = Op::kSplitK ? avx512_ksplit(MR) : 1;
  static_assert(MR >= 1 && MR * NV * U <= 24, "bad micro-kernel shape");
  __m512 acc[U][MR][NV];
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) {
      const __mmask16 m = j == NV - 1 ? mlast : __mmask16(0xFFFF);
      __m512 v = load_c ? _mm512_maskz_loadu_ps(m, C + i * ldc + 16 * j) : _mm512_setzero_ps();
      if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, bias + 16 * j));
      acc[0][i][j] = v;
#pragma GCC unroll 4
      for (int u = 1; u < U; ++u) acc[u][i][j] = _mm512_setzero_ps();
    }
  }
  int64_t k = 0;
  for (; k + U <= kc; k += U) {
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u) {
      __m512 b[NV];
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) b[j] = Op::load_b(B + j * pstride + (k + u) * Op::kBRow);
#pragma GCC unroll 32
      for (int i = 0; i < MR; ++i) {
        const __m512 a = Op::broadcast_a(A + i * lda + k + u);
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) acc[u][i][j] = Op::mac(acc[u][i][j], a, b[j]);
      }
    }
  }
  for (; k < kc; ++k) {
    __m512 b[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) b[j] = Op::load_b(B + j * pstride + k * Op::kBRow);
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i) {
      const __m512 a = Op::broadcast_a(A + i * lda + k);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[0][i][j] = Op::mac(acc[0][i][j], a, b[j]);
    }
  }
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) {
      __m512 v = acc[0][i][j];
      if (U == 4) v = _mm512_add_ps(_mm512_add_ps(v, acc[1 % U][i][j]), _mm512_add_ps(acc[2 % U][i][j], acc[3 % U][i][j]));
      if (U == 2) v = _mm512_add_ps(v, acc[1 % U][i][j]);
      _mm512_mask_storeu_ps(C + i * ldc + 16 * j, j == NV - 1 ? mlast : __mmask16(0xFFFF), v);
    }
  }
}

// mr (1..12) x np (1..2; up to 4 for mr <= 4) panels, dispatched to the unrolled instantiations.
template <class Op>
inline void avx512_tile(int64_t mr, int64_t np, int64_t kc, const typename Op::AT* A, int64_t lda,
                        const typename Op::BT* B, int64_t pstride, float* C, int64_t ldc, int64_t nvalid,
                        const float* bias, bool load_c) {
  const int64_t last = nvalid - 16 * (np - 1);  // columns of the last panel, 1..16
  const __mmask16 mlast = static_cast<__mmask16>((1u << last) - 1u);
#define CX_CASE(R)                                                                                  \
  case R:                                                                                           \
    if (R <= 4 && np == 4)                                                                          \
      avx512_kern<Op, R, (R <= 4 ? 4 : 1)>(kc, A, lda, B, pstride, C, ldc, bias, mlast, load_c);    \
    else if (R <= 4 && np == 3)                                                                     \
      avx512_kern<Op, R, (R <= 4 ? 3 : 1)>(kc, A, lda, B, pstride, C, ldc, bias, mlast, load_c);    \
    else if (np == 2)                                                                               \
      avx512_kern<Op, R, 2>(kc, A, lda, B, pstride, C, ldc, bias, mlast, load_c);                   \
    else                                                                                            \
      avx512_kern<Op, R, 1>(kc, A, lda, B, pstride, C, ldc, bias, mlast, load_c);                   \
    break;
  switch (mr) {
    CX_CASE(12) CX_CASE(11) CX_CASE(10) CX_CASE(9) CX_CASE(8) CX_CASE(7)
    CX_CASE(6) CX_CASE(5) CX_CASE(4) CX_CASE(3) CX_CASE(2) CX_CASE(1)
    default: break;
  }
#undef CX_CASE
}

struct Avx512F32 {
  // 12 x 32: 24 FMAs per 14 loads each k step; the two panel slices of a 256-deep K block take 32 KiB of L1.
  // Few rows (M <= kSmallM) stream 4 panels a tile: 4 independent chains a row instead of split accumulators.
  static constexpr int64_t kMR = 12, kPanels = 2, kStreamPanels = 4, kKC = 256;
  static constexpr double kGflops = 175;
  static constexpr const char* name = "avx512";

  struct Fma {
    static constexpr bool kSplitK = false;  // one FMA chain per element: batch-invariant
    using AT = float;
    using BT = float;
    static constexpr int64_t kBRow = kGemmNR;
    static __m512 load_b(const float* b) { return _mm512_loadu_ps(b); }
    static __m512 broadcast_a(const float* a) { return _mm512_set1_ps(*a); }
    static __m512 mac(__m512 acc, __m512 a, __m512 b) { return _mm512_fmadd_ps(a, b, acc); }
  };

  static void tile(int64_t mr, int64_t np, int64_t kc, const float* A, int64_t lda, const float* B, int64_t pstride,
                   float* C, int64_t ldc, int64_t nvalid, const float* bias, bool load_c) {
    avx512_tile<Fma>(mr, np, kc, A, lda, B, pstride, C, ldc, nvalid, bias, load_c);
  }
};

#endif  // CORTEX_GEMM_AVX512

// The best float32 micro-kernel the compiler's flags allow.
#if defined(CORTEX_GEMM_AVX512)
using BestF32 = Avx512F32;
#elif defined(CORTEX_GEMM_AVX2)
using BestF32 = Avx2F32;
#else
using BestF32 = PortableF32;
#endif

// K = 0: no products, C[m0:m1, n0:n1] = (accumulate ? C : 0) + bias.
inline void no_products(int64_t m0, int64_t m1, int64_t n0, int64_t n1, float* C, int64_t ldc, const float* bias,
                        bool accumulate) {
  for (int64_t m = m0; m < m1; ++m) {
    for (int64_t n = n0; n < n1; ++n) {
      float v = accumulate ? C[m * ldc + n] : 0.0f;
      if (bias) v += bias[n];
      C[m * ldc + n] = v;
    }
  }
}

// Row blocks [b0, b1) x panels [p0, p1) of the product, with micro-kernel Kern.
template <class Kern>
inline void gemm_block(const RowBlocks& rb, int64_t b0, int64_t b1, int64_t p0, int64_t p1, int64_t M, int64_t N,
                       int64_t K, const float* A, int64_t lda, const float* Bpacked, float* C, int64_t ldc,
                       const float* bias, bool accumulate) {
  if (b1 <= b0 || p1 <= p0) return;
  if (K <= 0) {
    no_products(rb.start(b0), rb.start(b1), p0 * kGemmNR, std::min(N, p1 * kGemmNR), C, ldc, bias, accumulate);
    return;
  }
  const int64_t pstride = K * kGemmNR;  // floats from one panel to the next
  const int64_t step = M <= kSmallM ? Kern::kStreamPanels : Kern::kPanels;
  for (int64_t p = p0; p < p1; p += step) {
    const int64_t np = std::min(step, p1 - p);
    const int64_t n0 = p * kGemmNR;
    const int64_t nvalid = std::min(np * kGemmNR, N - n0);
    const float* panel = Bpacked + p * pstride;
    const float* bias_p = bias ? bias + n0 : nullptr;
    if (M <= kSmallM) {  // streaming: the whole K of the panels in one pass
      Kern::tile(M, np, K, A, lda, panel, pstride, C + n0, ldc, nvalid, bias_p, accumulate);
      continue;
    }
    // K blocks: the panel slices stay in L1 while the row blocks stream over them. Storing and reloading C
    // between K blocks is exact, so the blocking does not change results.
    for (int64_t k0 = 0; k0 < K; k0 += Kern::kKC) {
      const int64_t kc = std::min(Kern::kKC, K - k0);
      const bool first = k0 == 0;
      const bool load_c = first ? accumulate : true;
      const float* bk = panel + k0 * kGemmNR;
      const float* bias_k = first ? bias_p : nullptr;
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t m = rb.start(b);
        Kern::tile(rb.rows(b), np, kc, A + m * lda + k0, lda, bk, pstride, C + m * ldc + n0, ldc, nvalid, bias_k,
                   load_c);
      }
    }
  }
}

// Splits a product of P panels (in groups of `group`, a tile's width) and nb row blocks into tasks on the pool:
// contiguous panel ranges, times row-block ranges when the panels are few. A few tasks per thread so that the others
// can take over the share of a thread that starts late (a busy machine); each thread takes its own share first
// (run_affine), so in a loop of products (a level loop) a core multiplies the same weight columns every time and
// finds them in its L2. Below kMinParallelSeconds of one core's work (`seconds`) the dispatch and the barrier cost
// more than they save: one serial call. Called from inside another parallel_for region it runs serially.
// block(b0, b1, p0, p1) computes row blocks [b0, b1) x panels [p0, p1).
constexpr double kMinParallelSeconds = 5e-6;

template <class Block>
inline void gemm_tasks(int64_t M, int64_t P, int64_t group, int64_t nb, double seconds, Block&& block) {
  const int64_t T = num_threads();
  const int64_t G = (P + group - 1) / group;
  const int64_t want = 4 * T;
  const int64_t tp = std::min(G, want);
  int64_t tm = 1;
  if (G < 2 * T && M > kSmallM) tm = std::min(nb, (want + tp - 1) / tp);
  if (T <= 1 || seconds < kMinParallelSeconds || tp * tm <= 1) {
    block(0, nb, 0, P);
    return;
  }
  run_affine(tp * tm, [&](int64_t t) {  // consecutive tasks share a panel range
    const int64_t ip = t / tm, im = t % tm;
    const int64_t p0 = std::min(P, group * (G * ip / tp)), p1 = std::min(P, group * (G * (ip + 1) / tp));
    block(nb * im / tm, nb * (im + 1) / tm, p0, p1);
  });
}

// One core's time for a product of `flops` at a policy's speed (Kern::kGflops: what one core of a Xeon with
// AVX-512 and AMX reaches at level shapes; only the parallel threshold reads it).
template <class Kern>
inline double core_seconds(int64_t M, int64_t N, int64_t K) {
  return 2.0 * static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K) / (Kern::kGflops * 1e9);
}

}  // namespace gemm_detail

// The entry points, for any micro-kernel policy (tests and tools compare them); the generated kernels call the
// plain names below, which use the best one for the -march they are built with.

template <class Kern>
inline void gemm_packed_serial_with(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                                    const float* Bpacked, float* C, int64_t ldc, const float* bias, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  const gemm_detail::RowBlocks rb(M, Kern::kMR);
  gemm_detail::gemm_block<Kern>(rb, 0, rb.nb, 0, gemm_num_panels(N), M, N, K, A, lda, Bpacked, C, ldc, bias,
                                accumulate);
}

template <class Kern>
inline void gemm_packed_columns_with(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                                     const float* Bpacked, float* C, int64_t ldc, const float* bias, int64_t n0,
                                     int64_t n1) {
  if (M <= 0 || n1 <= n0) return;
  const gemm_detail::RowBlocks rb(M, Kern::kMR);
  gemm_detail::gemm_block<Kern>(rb, 0, rb.nb, n0 / kGemmNR, (n1 + kGemmNR - 1) / kGemmNR, M, N, K, A, lda, Bpacked,
                                C, ldc, bias, false);
}

template <class Kern>
inline void gemm_packed_with(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* Bpacked,
                             float* C, int64_t ldc, const float* bias, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  const gemm_detail::RowBlocks rb(M, Kern::kMR);
  gemm_detail::gemm_tasks(M, gemm_num_panels(N), Kern::kPanels, rb.nb, gemm_detail::core_seconds<Kern>(M, N, K),
                          [&](int64_t b0, int64_t b1, int64_t p0, int64_t p1) {
                            gemm_detail::gemm_block<Kern>(rb, b0, b1, p0, p1, M, N, K, A, lda, Bpacked, C, ldc, bias,
                                                          accumulate);
                          });
}

// The micro-kernel the generated code gets: "avx512", "avx2" or "portable".
constexpr const char* gemm_isa() { return gemm_detail::BestF32::name; }

// Single-threaded: runs entirely on the calling thread.
inline void gemm_packed_serial(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* Bpacked,
                               float* C, int64_t ldc, const float* bias, bool accumulate) {
  gemm_packed_serial_with<gemm_detail::BestF32>(M, N, K, A, lda, Bpacked, C, ldc, bias, accumulate);
}

// Single-threaded, columns [n0, n1) only (n0 a multiple of 16; n1 one too, or N): a worker's share of a product.
inline void gemm_packed_columns(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* Bpacked,
                                float* C, int64_t ldc, const float* bias, int64_t n0, int64_t n1) {
  gemm_packed_columns_with<gemm_detail::BestF32>(M, N, K, A, lda, Bpacked, C, ldc, bias, n0, n1);
}

// Parallel over column panels (and row blocks when panels are few) with cortex::parallel_for.
inline void gemm_packed(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* Bpacked, float* C,
                        int64_t ldc, const float* bias, bool accumulate) {
  gemm_packed_with<gemm_detail::BestF32>(M, N, K, A, lda, Bpacked, C, ldc, bias, accumulate);
}

}  // namespace cortex

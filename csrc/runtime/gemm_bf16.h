// cortex::gemm_packed_bf16: the opt-in reduced-precision product. C[M,N] (= or +=) A[M,K] * W[K,N] + bias with
// W stored as bfloat16 and A rounded to bfloat16 per use; products and sums in float32:
//
//   C[m][n] = (accumulate ? C[m][n] : 0) + bias[n] (if bias) + sum_k bf16(A[m][k]) * bf16(W[k][n])
//
// bf16(x): round to nearest even, denormals to zero (what VCVTNEPS2BF16 does), NaN stays NaN; the product of two
// bf16 values is exact in float32, so the error against float32 comes from the rounding of A and W (relative
// 2^-8 each: 8 significant bits) and the hardware's float32 sums (denormal results flushed to zero).
//
// Weights: the "panels_bf16" layout (docs/contracts.md; reference packer and inverse in
// cortex/codegen/panel_layouts.py): 16 columns a panel, K in pairs, padded to a multiple of 32:
//   packed[p][kk][r][t] = bf16(W[2*kk + t][p*16 + r])   (0 where 2kk+t >= K or p*16+r >= N)
//   shape [ceil(N/16), Kp/2, 16, 2] uint16 (bf16 bits), Kp = round_up(K, 32).
// A pair row (16 columns x 2 k) is 64 bytes: one zmm operand of vdpbf16ps, and 16 consecutive pair rows of a
// panel are one AMX B tile (16 rows x 64 bytes, "VNNI" order); the K padding makes every AMX tile whole.
//
// Paths, chosen at compile time from the ISA macros, and for AMX at run time:
//   AMX (__AMX_TILE__, __AMX_BF16__, __AVX512BF16__, Linux): tdpbf16ps on 16x16 tiles, rows in blocks of 32,
//     when the OS grants the tile state (amx_ready) and the product has more than kAmxMinRows rows;
//   AVX512-BF16 (__AVX512BF16__): vdpbf16ps in gemm.h's 12 x 32 register tile;
//   otherwise a portable loop with the same rounding (correct, not fast).
// The paths differ in summation order; the choice depends on M only, so parallel, serial and column-range calls
// agree bitwise. Unlike the float32 products, bf16 is NOT batch-invariant: the path (AMX from kAmxMinRows rows) and
// the register tile's split accumulators for 1-3 rows depend on M, so a row's bits depend on how many rows share
// its product (opt-in precision; cortex.serving's bitwise promise holds for float32 models). No allocation (stack
// buffers for the rounded A rows).
#pragma once

#include <cstdint>
#include <cstring>

#include "gemm.h"

#if defined(__AVX512BF16__) && defined(__AVX512F__)
#define CORTEX_GEMM_AVX512BF16 1
#endif
#if defined(CORTEX_GEMM_AVX512BF16) && defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__linux__)
#define CORTEX_GEMM_AMX 1
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace cortex {

constexpr int64_t kBf16KStep = 32;  // K of the bf16 panels is padded to a multiple of this (one AMX tile's depth)

inline int64_t bf16_padded_k(int64_t K) { return (K + kBf16KStep - 1) / kBf16KStep * kBf16KStep; }
inline int64_t packed_panels_bf16_size(int64_t K, int64_t N) {
  return gemm_num_panels(N) * bf16_padded_k(K) * kGemmNR;
}

// float32 -> bf16 bits: round to nearest even, denormals to (signed) zero, NaN quiet.
inline uint16_t bf16_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  if ((u & 0x7F800000u) == 0) return static_cast<uint16_t>((u >> 16) & 0x8000u);  // zero or denormal
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // NaN
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

inline float bf16_to_float(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
}

// W row-major [K, N] -> out, the panels_bf16 layout (size packed_panels_bf16_size(K, N)).
inline void pack_panels_bf16(const float* W, int64_t K, int64_t N, uint16_t* out) {
  const int64_t P = gemm_num_panels(N), K2 = bf16_padded_k(K) / 2;
  for (int64_t p = 0; p < P; ++p)
    for (int64_t kk = 0; kk < K2; ++kk)
      for (int64_t r = 0; r < kGemmNR; ++r)
        for (int64_t t = 0; t < 2; ++t) {
          const int64_t k = 2 * kk + t, n = p * kGemmNR + r;
          out[((p * K2 + kk) * kGemmNR + r) * 2 + t] = (k < K && n < N) ? bf16_bits(W[k * N + n]) : 0;
        }
}

namespace gemm_detail {

// The panels a block computes: [p0, p1), and `count` such ranges `stride` panels apart (a fused level's worker
// takes the same columns of each gate's block of the product: one call, its rows rounded once).
struct PanelSet {
  int64_t p0, p1, count = 1, stride = 0;
  int64_t begin(int64_t g) const { return p0 + g * stride; }
  int64_t end(int64_t g) const { return p1 + g * stride; }
};

// Rows [0, rows) of A[:, 0:kc] rounded to bf16, as k pairs (uint32: even k in the low half) in dst[i * ld + kk];
// zero from kc up to the next multiple of 32. ld (pairs) >= round_up(kc, 32) / 2.
inline void bf16_pairs(const float* A, int64_t lda, int64_t rows, int64_t kc, uint32_t* dst, int64_t ld) {
  const int64_t kcp = bf16_padded_k(kc);
  for (int64_t i = 0; i < rows; ++i) {
    const float* a = A + i * lda;
    uint32_t* d = dst + i * ld;
#ifdef CORTEX_GEMM_AVX512BF16
    for (int64_t k = 0; k < kcp; k += 32) {
      const int64_t left = kc - k;
      const __mmask16 lo = static_cast<__mmask16>(left >= 16 ? 0xFFFF : left <= 0 ? 0 : (1u << left) - 1u);
      const __mmask16 hi = static_cast<__mmask16>(left >= 32 ? 0xFFFF : left <= 16 ? 0 : (1u << (left - 16)) - 1u);
      const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, a + k + 16), _mm512_maskz_loadu_ps(lo, a + k));
      _mm512_storeu_si512(d + k / 2, (__m512i)v);
    }
#else
    for (int64_t kk = 0; kk < kcp / 2; ++kk) {
      const uint32_t lo = 2 * kk < kc ? bf16_bits(a[2 * kk]) : 0, hi = 2 * kk + 1 < kc ? bf16_bits(a[2 * kk + 1]) : 0;
      d[kk] = lo | (hi << 16);
    }
#endif
  }
}

// The epilogue of a product summed from zero into S[0:rows, 0:cols] (row stride lds):
// C = (init ? (accumulate ? C : 0) + bias : C) + S.
inline void add_sums(const float* S, int64_t lds, int64_t rows, int64_t cols, float* C, int64_t ldc,
                     const float* bias, bool init, bool accumulate) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t n = 0; n < cols; ++n) {
      float v = (!init || accumulate) ? C[i * ldc + n] : 0.0f;
      if (init && bias) v += bias[n];
      C[i * ldc + n] = v + S[i * lds + n];
    }
}

// Portable: each row, each panel, the pairs in order; float32 sums.
struct PortableBf16 {
  static constexpr int64_t kMR = 1, kPanels = 1;
  static constexpr double kGflops = 5;
  static constexpr const char* name = "portable";

  static void block(const RowBlocks& rb, int64_t b0, int64_t b1, const PanelSet& ps, int64_t, int64_t N,
                    int64_t K, const float* A, int64_t lda, const uint16_t* Bp, float* C, int64_t ldc,
                    const float* bias, bool accumulate) {
    const int64_t K2 = bf16_padded_k(K) / 2;
    for (int64_t m = rb.start(b0); m < rb.start(b1); ++m) {
      for (int64_t g = 0; g < ps.count; ++g)
      for (int64_t p = ps.begin(g); p < ps.end(g); ++p) {
        const int64_t n0 = p * kGemmNR, nvalid = std::min(kGemmNR, N - n0);
        float acc[kGemmNR] = {};
        const uint16_t* b = Bp + p * K2 * 2 * kGemmNR;
        for (int64_t kk = 0; 2 * kk < K; ++kk, b += 2 * kGemmNR) {
          const float a0 = bf16_to_float(bf16_bits(A[m * lda + 2 * kk]));
          const float a1 = 2 * kk + 1 < K ? bf16_to_float(bf16_bits(A[m * lda + 2 * kk + 1])) : 0.0f;
          for (int64_t r = 0; r < kGemmNR; ++r) acc[r] += a0 * bf16_to_float(b[2 * r]) + a1 * bf16_to_float(b[2 * r + 1]);
        }
        add_sums(acc, kGemmNR, 1, nvalid, C + m * ldc + n0, ldc, bias ? bias + n0 : nullptr, true, accumulate);
      }
    }
  }
};

#ifdef CORTEX_GEMM_AVX512BF16

// vdpbf16ps in gemm.h's register tile: rows of A as bf16 pairs (K blocks of kKC, several row blocks at once so
// the panel slices stay in L1 across them), accumulators initialised from C and bias as in the float32 kernel.
struct Avx512Bf16 {
  static constexpr int64_t kMR = 12, kPanels = 2;
  static constexpr int64_t kKC = 256;        // k per block: 2 panel slices = 16 KiB of bf16
  static constexpr int64_t kMacroRows = 48;  // rows rounded at once: 24 KiB on the stack
  static constexpr double kGflops = 115;     // vdpbf16ps issues every other cycle on Intel: below float32 FMAs
  static constexpr const char* name = "avx512bf16";

  struct DpBf16 {
    static constexpr bool kSplitK = true;  // few rows split k over accumulators: not batch-invariant (opt-in)
    using AT = uint32_t;  // a pair of bf16
    using BT = uint16_t;
    static constexpr int64_t kBRow = 2 * kGemmNR;
    static __m512 load_b(const uint16_t* b) { return _mm512_castsi512_ps(_mm512_loadu_si512(b)); }
    static __m512 broadcast_a(const uint32_t* a) { return _mm512_castsi512_ps(_mm512_set1_epi32(static_cast<int>(*a))); }
    static __m512 mac(__m512 acc, __m512 a, __m512 b) { return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b); }
  };

  static void block(const RowBlocks& rb, int64_t b0, int64_t b1, const PanelSet& ps, int64_t, int64_t N,
                    int64_t K, const float* A, int64_t lda, const uint16_t* Bp, float* C, int64_t ldc,
                    const float* bias, bool accumulate) {
    alignas(64) uint32_t abuf[kMacroRows * kKC / 2];
    const int64_t pstride = bf16_padded_k(K) * kGemmNR;  // uint16 from one panel to the next
    for (int64_t bm = b0; bm < b1;) {
      int64_t be = bm, rows = 0;
      while (be < b1 && rows + rb.rows(be) <= kMacroRows) rows += rb.rows(be++);
      const int64_t mm = rb.start(bm);
      for (int64_t k0 = 0; k0 < K; k0 += kKC) {
        const int64_t kc = std::min(kKC, K - k0);
        bf16_pairs(A + mm * lda + k0, lda, rows, kc, abuf, kKC / 2);
        const bool first = k0 == 0;
        for (int64_t g = 0; g < ps.count; ++g)
        for (int64_t p = ps.begin(g), p1 = ps.end(g); p < p1; p += kPanels) {
          const int64_t np = std::min(kPanels, p1 - p), n0 = p * kGemmNR;
          const int64_t nvalid = std::min(np * kGemmNR, N - n0);
          const uint16_t* bk = Bp + p * pstride + k0 * kGemmNR;
          for (int64_t b = bm; b < be; ++b) {
            const int64_t m = rb.start(b);
            avx512_tile<DpBf16>(rb.rows(b), np, (kc + 1) / 2, abuf + (m - mm) * (kKC / 2), kKC / 2, bk, pstride,
                                C + m * ldc + n0, ldc, nvalid, first && bias ? bias + n0 : nullptr,
                                first ? accumulate : true);
          }
        }
      }
      bm = be;
    }
  }
};

#endif  // CORTEX_GEMM_AVX512BF16

#ifdef CORTEX_GEMM_AMX

// Linux hands a process the AMX tile state only on request (arch_prctl ARCH_REQ_XCOMP_PERM); asked once, for
// every thread of the process. False when the CPU or the kernel says no: the products then use AVX512-BF16.
inline bool amx_ready() {
  static const bool ready = [] {
    constexpr long kArchGetXcompPerm = 0x1022, kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    if (!__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-bf16")) return false;
    if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) return false;
    unsigned long features = 0;
    return syscall(SYS_arch_prctl, kArchGetXcompPerm, &features) == 0 && (features >> kXfeatureXtiledata) & 1;
  }();
  return ready;
}

// AMX: rows in blocks of up to 32 (two A tiles), two panels at a time (two B tiles), four C tiles of 16 x 16
// float32 sums. With at most 16 rows the second A tile and the second pair of C tiles take the odd k tiles
// instead, so there are always four independent tdpbf16ps chains (its latency is ~3 times its issue interval).
// The tile configuration is thread state: loaded at the start of every block, released at its end (other code
// on the thread may use AMX, and an unused tile state is cheaper to switch).
struct AmxBf16 {
  static constexpr int64_t kMR = 32, kPanels = 2;
  static constexpr int64_t kKC = 512;  // k per block: 32 rows x 512 bf16 = 32 KiB on the stack
  static constexpr double kGflops = 600;
  static constexpr const char* name = "amx";

  struct alignas(64) TileConfig {
    uint8_t palette = 1, start_row = 0, reserved[14] = {};
    uint16_t colsb[16] = {64, 64, 64, 64, 64, 64, 64, 64};
    uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
  };

  static void block(const RowBlocks& rb, int64_t b0, int64_t b1, const PanelSet& ps, int64_t, int64_t N,
                    int64_t K, const float* A, int64_t lda, const uint16_t* Bp, float* C, int64_t ldc,
                    const float* bias, bool accumulate) {
    static const TileConfig config;
    constexpr int64_t lda2 = kKC / 2;              // pairs per A buffer row
    alignas(64) uint32_t abuf[kMR * kKC / 2];
    alignas(64) float sums[4][16 * 16];            // C tiles 0..3
    const int64_t pstride = bf16_padded_k(K) * kGemmNR;
    _tile_loadconfig(&config);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t m = rb.start(b), mr = rb.rows(b);
      const bool two_row_tiles = mr > 16;
      for (int64_t k0 = 0; k0 < K; k0 += kKC) {
        const int64_t kc = std::min(kKC, K - k0), tiles = bf16_padded_k(kc) / kBf16KStep;
        bf16_pairs(A + m * lda + k0, lda, mr, kc, abuf, lda2);
        const int64_t pad_rows = two_row_tiles ? kMR : 16;
        for (int64_t i = mr; i < pad_rows; ++i) std::memset(abuf + i * lda2, 0, sizeof(uint32_t) * tiles * 16);
        for (int64_t g = 0; g < ps.count; ++g)
        for (int64_t p = ps.begin(g), p1 = ps.end(g); p < p1; p += kPanels) {
          const bool two_panels = p + 1 < p1;
          const uint16_t* b0p = Bp + p * pstride + k0 * kGemmNR;
          const uint16_t* b1p = b0p + pstride;
          _tile_zero(0);
          _tile_zero(1);
          _tile_zero(2);
          _tile_zero(3);
          if (two_row_tiles) {  // C0 = A0 B0, C1 = A0 B1, C2 = A1 B0, C3 = A1 B1
            for (int64_t t = 0; t < tiles; ++t) {
              _tile_loadd(4, abuf + t * 16, lda2 * 4);
              _tile_loadd(5, abuf + 16 * lda2 + t * 16, lda2 * 4);
              _tile_loadd(6, b0p + t * 16 * 2 * kGemmNR, 64);
              _tile_dpbf16ps(0, 4, 6);
              _tile_dpbf16ps(2, 5, 6);
              if (two_panels) {
                _tile_loadd(7, b1p + t * 16 * 2 * kGemmNR, 64);
                _tile_dpbf16ps(1, 4, 7);
                _tile_dpbf16ps(3, 5, 7);
              }
            }
          } else {  // C0/C1 = A B0/B1 over even k tiles, C2/C3 over odd ones
            for (int64_t t = 0; t < tiles; ++t) {
              if (t % 2 == 0) {
                _tile_loadd(4, abuf + t * 16, lda2 * 4);
                _tile_loadd(6, b0p + t * 16 * 2 * kGemmNR, 64);
                _tile_dpbf16ps(0, 4, 6);
                if (two_panels) {
                  _tile_loadd(7, b1p + t * 16 * 2 * kGemmNR, 64);
                  _tile_dpbf16ps(1, 4, 7);
                }
              } else {
                _tile_loadd(5, abuf + t * 16, lda2 * 4);
                _tile_loadd(6, b0p + t * 16 * 2 * kGemmNR, 64);
                _tile_dpbf16ps(2, 5, 6);
                if (two_panels) {
                  _tile_loadd(7, b1p + t * 16 * 2 * kGemmNR, 64);
                  _tile_dpbf16ps(3, 5, 7);
                }
              }
            }
          }
          _tile_stored(0, sums[0], 64);
          _tile_stored(1, sums[1], 64);
          _tile_stored(2, sums[2], 64);
          _tile_stored(3, sums[3], 64);
          if (!two_row_tiles)  // the odd k tiles' sums
            for (int64_t j = 0; j < 2; ++j)
              for (int64_t e = 0; e < 16 * 16; ++e) sums[j][e] += sums[2 + j][e];
          const bool first = k0 == 0;
          for (int64_t j = 0; j < (two_panels ? 2 : 1); ++j) {
            const int64_t n0 = (p + j) * kGemmNR, cols = std::min(kGemmNR, N - n0);
            const float* bj = first && bias ? bias + n0 : nullptr;
            add_sums(sums[j], 16, std::min<int64_t>(mr, 16), cols, C + m * ldc + n0, ldc, bj, first, accumulate);
            if (two_row_tiles)
              add_sums(sums[2 + j], 16, mr - 16, cols, C + (m + 16) * ldc + n0, ldc, bj, first, accumulate);
          }
        }
      }
    }
    _tile_release();
  }
};

#endif  // CORTEX_GEMM_AMX

#if defined(CORTEX_GEMM_AVX512BF16)
using BestRegisterBf16 = Avx512Bf16;
#else
using BestRegisterBf16 = PortableBf16;
#endif

// AMX pays from this many rows up: with one or two rows the time is streaming the weights, which both paths do at
// about the same speed (tools/gemm_peak.py, one thread: M = 1 vdpbf16ps 75-93 GFLOP/s, AMX 54-67; M = 2 about
// even, and AMX the slower on two threads), from three rows AMX is 1.5-4x ahead.
constexpr int64_t kAmxMinRows = 3;

}  // namespace gemm_detail

// Entry points for any bf16 policy (tests, tools); the generated kernels call the plain names further down.

template <class Kern>
inline void gemm_packed_bf16_columns_with(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                                          const uint16_t* Bp, float* C, int64_t ldc, const float* bias, int64_t n0,
                                          int64_t n1, bool accumulate = false) {
  if (M <= 0 || n1 <= n0) return;
  const int64_t p0 = n0 / kGemmNR, p1 = (n1 + kGemmNR - 1) / kGemmNR;
  if (K <= 0) {
    gemm_detail::no_products(0, M, p0 * kGemmNR, std::min(N, p1 * kGemmNR), C, ldc, bias, accumulate);
    return;
  }
  const gemm_detail::RowBlocks rb(M, Kern::kMR);
  Kern::block(rb, 0, rb.nb, gemm_detail::PanelSet{p0, p1}, M, N, K, A, lda, Bp, C, ldc, bias, accumulate);
}

// Columns [first + g * stride + j0, first + g * stride + j1) for g in [0, count), in one call (first, stride and
// j0 multiples of 16; j1 one too, or the end of the block): the same bits as one columns call per range.
template <class Kern>
inline void gemm_packed_bf16_blocks_with(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                                         const uint16_t* Bp, float* C, int64_t ldc, const float* bias, int64_t j0,
                                         int64_t j1, int64_t first, int64_t count, int64_t stride) {
  if (M <= 0 || j1 <= j0 || count <= 0) return;
  if (K <= 0) {
    for (int64_t g = 0; g < count; ++g)
      gemm_packed_bf16_columns_with<Kern>(M, N, K, A, lda, Bp, C, ldc, bias, first + g * stride + j0,
                                          first + g * stride + j1);
    return;
  }
  const gemm_detail::PanelSet ps{(first + j0) / kGemmNR, (first + j1 + kGemmNR - 1) / kGemmNR, count,
                                 stride / kGemmNR};
  const gemm_detail::RowBlocks rb(M, Kern::kMR);
  Kern::block(rb, 0, rb.nb, ps, M, N, K, A, lda, Bp, C, ldc, bias, false);
}

template <class Kern>
inline void gemm_packed_bf16_serial_with(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                                         const uint16_t* Bp, float* C, int64_t ldc, const float* bias,
                                         bool accumulate) {
  gemm_packed_bf16_columns_with<Kern>(M, N, K, A, lda, Bp, C, ldc, bias, 0, N, accumulate);
}

template <class Kern>
inline void gemm_packed_bf16_with(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const uint16_t* Bp,
                                  float* C, int64_t ldc, const float* bias, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    gemm_detail::no_products(0, M, 0, N, C, ldc, bias, accumulate);
    return;
  }
  const gemm_detail::RowBlocks rb(M, Kern::kMR);
  gemm_detail::gemm_tasks(M, gemm_num_panels(N), Kern::kPanels, rb.nb, gemm_detail::core_seconds<Kern>(M, N, K),
                          [&](int64_t b0, int64_t b1, int64_t p0, int64_t p1) {
                            Kern::block(rb, b0, b1, gemm_detail::PanelSet{p0, p1}, M, N, K, A, lda, Bp, C, ldc,
                                        bias, accumulate);
                          });
}

// True when products of M rows run on AMX tiles (compiled for AMX, granted by the OS, enough rows).
inline bool gemm_bf16_uses_amx(int64_t M) {
#ifdef CORTEX_GEMM_AMX
  return M >= gemm_detail::kAmxMinRows && gemm_detail::amx_ready();
#else
  (void)M;
  return false;
#endif
}

// Calls f with the policy a bf16 product of M rows uses (a function of M: every split of one product agrees).
template <class F>
inline void with_bf16_kernel(int64_t M, F&& f) {
#ifdef CORTEX_GEMM_AMX
  if (gemm_bf16_uses_amx(M)) {
    f(gemm_detail::AmxBf16{});
    return;
  }
#endif
  (void)M;
  f(gemm_detail::BestRegisterBf16{});
}

// The register-tile path the generated code gets: "avx512bf16" or "portable" (AMX on top where gemm_bf16_uses_amx).
constexpr const char* gemm_bf16_isa() { return gemm_detail::BestRegisterBf16::name; }

// Single-threaded: runs entirely on the calling thread.
inline void gemm_packed_bf16_serial(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const uint16_t* Bp,
                                    float* C, int64_t ldc, const float* bias, bool accumulate) {
  with_bf16_kernel(M, [&](auto kern) {
    gemm_packed_bf16_serial_with<decltype(kern)>(M, N, K, A, lda, Bp, C, ldc, bias, accumulate);
  });
}

// Single-threaded, columns [n0, n1) only (n0 a multiple of 16; n1 one too, or N), C overwritten.
inline void gemm_packed_bf16_columns(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                                     const uint16_t* Bp, float* C, int64_t ldc, const float* bias, int64_t n0,
                                     int64_t n1) {
  with_bf16_kernel(M, [&](auto kern) {
    gemm_packed_bf16_columns_with<decltype(kern)>(M, N, K, A, lda, Bp, C, ldc, bias, n0, n1);
  });
}

// Single-threaded, `count` column ranges `stride` apart (gemm_packed_bf16_blocks_with), C overwritten.
inline void gemm_packed_bf16_blocks(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const uint16_t* Bp,
                                    float* C, int64_t ldc, const float* bias, int64_t j0, int64_t j1, int64_t first,
                                    int64_t count, int64_t stride) {
  with_bf16_kernel(M, [&](auto kern) {
    gemm_packed_bf16_blocks_with<decltype(kern)>(M, N, K, A, lda, Bp, C, ldc, bias, j0, j1, first, count, stride);
  });
}

// Parallel over column panels (and row blocks when panels are few) with cortex::parallel_for.
inline void gemm_packed_bf16(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const uint16_t* Bp,
                             float* C, int64_t ldc, const float* bias, bool accumulate) {
  with_bf16_kernel(M, [&](auto kern) {
    gemm_packed_bf16_with<decltype(kern)>(M, N, K, A, lda, Bp, C, ldc, bias, accumulate);
  });
}

}  // namespace cortex

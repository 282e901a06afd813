// cortex._C: runtime pieces (csrc/runtime) exposed for tests and tools, and the serving path's forest rows
// (forest_rows.cc) and bounds check (index_check.cc).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "activations.h"
#include "gemm.h"
#include "gemm_bf16.h"
#include "kernel_support.h"
#include "linearize.h"
#include "parallel.h"

namespace py = pybind11;

void register_forest_rows(py::module_& m);  // forest_rows.cc
void register_index_check(py::module_& m);  // index_check.cc

namespace {

using I64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using I32Array = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
using F32Array = py::array_t<float, py::array::c_style | py::array::forcecast>;

template <class T>
py::array_t<T> to_numpy(const std::vector<T>& v) {
  py::array_t<T> a(static_cast<py::ssize_t>(v.size()));
  if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(T));
  return a;
}

py::dict schedule_dict(const cortex::Schedule& s) {
  py::dict d;
  d["valid"] = s.valid;
  d["num_levels"] = s.num_levels;
  d["batch_offsets"] = to_numpy(s.batch_offsets);
  d["batch_level"] = to_numpy(s.batch_level);
  d["batch_case"] = to_numpy(s.batch_case);
  d["positions"] = to_numpy(s.positions);
  return d;
}

// reads: [L, K] (K may be 0); a 1-D array of length L is taken as K = 1.
int32_t reads_k(const I64Array& reads, int64_t L, const char* what) {
  if (reads.ndim() == 2) {
    if (reads.shape(0) != L)
      throw py::value_error(std::string(what) + ": reads has " + std::to_string(reads.shape(0)) +
                            " rows, expected " + std::to_string(L));
    return static_cast<int32_t>(reads.shape(1));
  }
  if (reads.ndim() == 1 && reads.shape(0) == L) return 1;
  throw py::value_error(std::string(what) + ": reads must have shape [L, K]");
}

struct Linearizers {
  cortex::Linearizer lin;
  cortex::Schedule sched;
};

Linearizers& tls_linearizer() {
  thread_local Linearizers l;
  return l;
}

py::dict linearize_visit(int64_t num_nodes, const I64Array& node, const I32Array& case_id, int32_t num_cases,
                         const I64Array& reads) {
  if (node.ndim() != 1) throw py::value_error("linearize_visit: node must be 1-D");
  const int64_t L = node.shape(0);
  if (case_id.ndim() != 1 || case_id.shape(0) != L)
    throw py::value_error("linearize_visit: case_id must be 1-D with the length of node");
  const int32_t K = reads_k(reads, L, "linearize_visit");
  auto& t = tls_linearizer();
  std::string err;
  {
    py::gil_scoped_release nogil;
    err = t.lin.visit(num_nodes, L, node.data(), case_id.data(), num_cases, reads.data(), K, t.sched);
  }
  if (!err.empty()) throw py::value_error(err);
  return schedule_dict(t.sched);
}

// The visit's schedule cut into lanes (cortex::Lanes): a list of lane schedules, empty when it is not cut.
py::list split_lanes(int64_t num_nodes, const I64Array& node, const I32Array& case_id, int32_t num_cases,
                     const I64Array& reads, int64_t max_lanes) {
  const int64_t L = node.ndim() == 1 ? node.shape(0) : -1;
  if (L < 0 || case_id.ndim() != 1 || case_id.shape(0) != L)
    throw py::value_error("split_lanes: node and case_id must be 1-D of one length");
  const int32_t K = reads_k(reads, L, "split_lanes");
  cortex::Linearizer lin;
  cortex::Schedule sched;
  cortex::Lanes lanes;
  const std::string err = lin.visit(num_nodes, L, node.data(), case_id.data(), num_cases, reads.data(), K, sched);
  if (!err.empty()) throw py::value_error(err);
  const int64_t count = lanes.split(sched, num_nodes, L, node.data(), reads.data(), K, max_lanes);
  py::list out;
  for (int64_t l = 0; l < count; ++l) out.append(schedule_dict(lanes.lane[static_cast<size_t>(l)]));
  return out;
}

py::dict linearize_dag(int64_t num_nodes, const I32Array& case_id, int32_t num_cases, const I64Array& reads) {
  if (case_id.ndim() != 1 || case_id.shape(0) != num_nodes)
    throw py::value_error("linearize_dag: case_id must be 1-D of length num_nodes");
  const int32_t K = reads_k(reads, num_nodes, "linearize_dag");
  auto& t = tls_linearizer();
  std::string err;
  {
    py::gil_scoped_release nogil;
    err = t.lin.dag(num_nodes, case_id.data(), num_cases, reads.data(), K, t.sched);
  }
  if (!err.empty()) throw py::value_error(err);
  return schedule_dict(t.sched);
}

F32Array pack_panels(const F32Array& W) {
  if (W.ndim() != 2) throw py::value_error("pack_panels: W must be 2-D [K, N]");
  const int64_t K = W.shape(0), N = W.shape(1);
  F32Array out({cortex::gemm_num_panels(N), K, cortex::kGemmNR});
  cortex::pack_panels(W.data(), K, N, out.mutable_data());
  return out;
}

using U16Array = py::array_t<uint16_t, py::array::c_style | py::array::forcecast>;

U16Array pack_panels_bf16(const F32Array& W) {
  if (W.ndim() != 2) throw py::value_error("pack_panels_bf16: W must be 2-D [K, N]");
  const int64_t K = W.shape(0), N = W.shape(1);
  U16Array out({cortex::gemm_num_panels(N), cortex::bf16_padded_k(K) / 2, cortex::kGemmNR, int64_t{2}});
  cortex::pack_panels_bf16(W.data(), K, N, out.mutable_data());
  return out;
}

// bf16 bits of A [M, K] as the products round it (the vector conversion where the build has AVX512-BF16).
U16Array bf16_bits(const F32Array& A) {
  if (A.ndim() != 2) throw py::value_error("bf16_bits: A must be 2-D");
  const int64_t M = A.shape(0), K = A.shape(1), ld = cortex::bf16_padded_k(K) / 2;
  std::vector<uint32_t> pairs(static_cast<size_t>(std::max<int64_t>(M * ld, 1)));
  cortex::gemm_detail::bf16_pairs(A.data(), K, M, K, pairs.data(), ld);
  U16Array out({M, K});
  uint16_t* o = out.mutable_data();
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) o[m * K + k] = static_cast<uint16_t>(pairs[m * ld + k / 2] >> (16 * (k % 2)));
  return out;
}

// The micro-kernel policies this build has, by name ("auto": what generated code compiled like _C gets).
template <class F>
void with_f32_isa(const std::string& isa, F&& f) {
  namespace d = cortex::gemm_detail;
  if (isa == "auto") return f(d::BestF32{});
  if (isa == "portable") return f(d::PortableF32{});
#ifdef CORTEX_GEMM_AVX2
  if (isa == "avx2") return f(d::Avx2F32{});
#endif
#ifdef CORTEX_GEMM_AVX512
  if (isa == "avx512") return f(d::Avx512F32{});
#endif
  throw py::value_error("float32 isa '" + isa + "' is not in this build (see gemm_isas())");
}

// bf16: "auto" is the choice gemm_packed_bf16 makes for the product's M.
struct AutoBf16 {};

template <class F>
void with_bf16_isa(const std::string& isa, F&& f) {
  namespace d = cortex::gemm_detail;
  if (isa == "auto") return f(AutoBf16{});
  if (isa == "portable") return f(d::PortableBf16{});
#ifdef CORTEX_GEMM_AVX512BF16
  if (isa == "avx512bf16") return f(d::Avx512Bf16{});
#endif
#ifdef CORTEX_GEMM_AMX
  if (isa == "amx") {
    if (!d::amx_ready()) throw py::value_error("bf16 isa 'amx': the OS did not grant the AMX tile state");
    return f(d::AmxBf16{});
  }
#endif
  throw py::value_error("bf16 isa '" + isa + "' is not in this build (see gemm_isas())");
}

py::dict gemm_isas() {
  py::list f32, bf16;
  f32.append("portable");
  bf16.append("portable");
#ifdef CORTEX_GEMM_AVX2
  f32.append("avx2");
#endif
#ifdef CORTEX_GEMM_AVX512
  f32.append("avx512");
#endif
#ifdef CORTEX_GEMM_AVX512BF16
  bf16.append("avx512bf16");
#endif
  bool amx = false;
#ifdef CORTEX_GEMM_AMX
  amx = cortex::gemm_detail::amx_ready();
  if (amx) bf16.append("amx");
#endif
  py::dict d;
  d["f32"] = f32;
  d["bf16"] = bf16;
  d["f32_default"] = cortex::gemm_isa();
  d["bf16_default"] = cortex::gemm_bf16_isa();
  d["amx_ready"] = amx;
#ifdef CORTEX_GEMM_AMX
  d["amx_min_rows"] = cortex::gemm_detail::kAmxMinRows;
#endif
  return d;
}

// The operands of a product call, checked: A [M, K], packed weights of `need` elements, bias [N], C [M, N].
struct Operands {
  int64_t M, K, N, ldc;
  const float* bias = nullptr;
  float* c = nullptr;
  py::array_t<float> C;
  F32Array bias_array;
};

template <class PackedArray>
Operands operands(const char* what, const F32Array& A, const PackedArray& Bp, int64_t N, int64_t need_of_k_n(int64_t, int64_t),
                  py::object bias_obj, py::object C_obj, bool needs_c) {
  const std::string w(what);
  if (A.ndim() != 2) throw py::value_error(w + ": A must be 2-D [M, K]");
  Operands o;
  o.M = A.shape(0), o.K = A.shape(1), o.N = N;
  if (N < 0) throw py::value_error(w + ": N must be >= 0");
  const int64_t need = need_of_k_n(o.K, N);
  if (Bp.size() != need)
    throw py::value_error(w + ": the packed weights have " + std::to_string(Bp.size()) + " elements, expected " +
                          std::to_string(need) + " for K=" + std::to_string(o.K) + ", N=" + std::to_string(N));
  if (!bias_obj.is_none()) {
    o.bias_array = F32Array::ensure(bias_obj);
    if (!o.bias_array || o.bias_array.ndim() != 1 || o.bias_array.shape(0) != N)
      throw py::value_error(w + ": bias must be 1-D of length N");
    o.bias = o.bias_array.data();
  }
  if (C_obj.is_none()) {
    if (needs_c) throw py::value_error(w + ": accumulate=True needs C");
    o.C = py::array_t<float>({o.M, N});
  } else {
    if (!py::isinstance<py::array_t<float>>(C_obj)) throw py::value_error(w + ": C must be a float32 numpy array");
    o.C = py::reinterpret_borrow<py::array_t<float>>(C_obj);
    if (o.C.ndim() != 2 || o.C.shape(0) != o.M || o.C.shape(1) != N) throw py::value_error(w + ": C must have shape [M, N]");
    if (!o.C.writeable()) throw py::value_error(w + ": C must be writeable");
    if (o.C.strides(1) != static_cast<py::ssize_t>(sizeof(float)) || o.C.strides(0) % sizeof(float) != 0 ||
        (o.M > 1 && o.C.strides(0) < static_cast<py::ssize_t>(N * sizeof(float))))
      throw py::value_error(w + ": C must be row-major with unit column stride");
  }
  o.ldc = o.M > 0 ? static_cast<int64_t>(o.C.strides(0) / static_cast<py::ssize_t>(sizeof(float))) : N;
  o.c = o.C.mutable_data();
  return o;
}

void check_columns(const char* what, int64_t N, int64_t n0, int64_t n1) {
  if (n0 < 0 || n1 > N || n0 > n1 || n0 % cortex::kGemmNR != 0 || (n1 % cortex::kGemmNR != 0 && n1 != N))
    throw py::value_error(std::string(what) + ": columns [n0, n1) must lie in [0, N), n0 a multiple of 16, n1 one "
                          "too or N");
}

py::object gemm_packed(const F32Array& A, const F32Array& Bpacked, int64_t N, py::object bias_obj, py::object C_obj,
                       bool accumulate, bool serial, const std::string& isa) {
  Operands o = operands("gemm_packed", A, Bpacked, N, cortex::packed_panels_size, bias_obj, C_obj, accumulate);
  with_f32_isa(isa, [&](auto kern) {
    using Kern = decltype(kern);
    py::gil_scoped_release nogil;
    if (serial)
      cortex::gemm_packed_serial_with<Kern>(o.M, N, o.K, A.data(), o.K, Bpacked.data(), o.c, o.ldc, o.bias, accumulate);
    else
      cortex::gemm_packed_with<Kern>(o.M, N, o.K, A.data(), o.K, Bpacked.data(), o.c, o.ldc, o.bias, accumulate);
  });
  return o.C;
}

py::object gemm_packed_columns(const F32Array& A, const F32Array& Bpacked, int64_t N, int64_t n0, int64_t n1,
                               py::object C_obj, py::object bias_obj, const std::string& isa) {
  check_columns("gemm_packed_columns", N, n0, n1);
  Operands o = operands("gemm_packed_columns", A, Bpacked, N, cortex::packed_panels_size, bias_obj, C_obj, false);
  with_f32_isa(isa, [&](auto kern) {
    py::gil_scoped_release nogil;
    cortex::gemm_packed_columns_with<decltype(kern)>(o.M, N, o.K, A.data(), o.K, Bpacked.data(), o.c, o.ldc, o.bias,
                                                     n0, n1);
  });
  return o.C;
}

py::object gemm_packed_bf16(const F32Array& A, const U16Array& Bp, int64_t N, py::object bias_obj, py::object C_obj,
                            bool accumulate, bool serial, const std::string& isa) {
  Operands o = operands("gemm_packed_bf16", A, Bp, N, cortex::packed_panels_bf16_size, bias_obj, C_obj, accumulate);
  with_bf16_isa(isa, [&](auto kern) {
    using Kern = decltype(kern);
    py::gil_scoped_release nogil;
    if constexpr (std::is_same_v<Kern, AutoBf16>) {
      if (serial)
        cortex::gemm_packed_bf16_serial(o.M, N, o.K, A.data(), o.K, Bp.data(), o.c, o.ldc, o.bias, accumulate);
      else
        cortex::gemm_packed_bf16(o.M, N, o.K, A.data(), o.K, Bp.data(), o.c, o.ldc, o.bias, accumulate);
    } else if (serial) {
      cortex::gemm_packed_bf16_serial_with<Kern>(o.M, N, o.K, A.data(), o.K, Bp.data(), o.c, o.ldc, o.bias, accumulate);
    } else {
      cortex::gemm_packed_bf16_with<Kern>(o.M, N, o.K, A.data(), o.K, Bp.data(), o.c, o.ldc, o.bias, accumulate);
    }
  });
  return o.C;
}

py::object gemm_packed_bf16_columns(const F32Array& A, const U16Array& Bp, int64_t N, int64_t n0, int64_t n1,
                                    py::object C_obj, py::object bias_obj, const std::string& isa) {
  check_columns("gemm_packed_bf16_columns", N, n0, n1);
  Operands o = operands("gemm_packed_bf16_columns", A, Bp, N, cortex::packed_panels_bf16_size, bias_obj, C_obj, false);
  with_bf16_isa(isa, [&](auto kern) {
    using Kern = decltype(kern);
    py::gil_scoped_release nogil;
    if constexpr (std::is_same_v<Kern, AutoBf16>)
      cortex::gemm_packed_bf16_columns(o.M, N, o.K, A.data(), o.K, Bp.data(), o.c, o.ldc, o.bias, n0, n1);
    else
      cortex::gemm_packed_bf16_columns_with<Kern>(o.M, N, o.K, A.data(), o.K, Bp.data(), o.c, o.ldc, o.bias, n0, n1);
  });
  return o.C;
}

py::object gemm_packed_bf16_blocks(const F32Array& A, const U16Array& Bp, int64_t N, int64_t j0, int64_t j1,
                                   int64_t first, int64_t count, int64_t stride, py::object C_obj,
                                   py::object bias_obj, const std::string& isa) {
  if (count < 1 || stride < 0 || stride % cortex::kGemmNR != 0 || first % cortex::kGemmNR != 0)
    throw py::value_error("gemm_packed_bf16_blocks: count >= 1, first and stride multiples of 16");
  for (int64_t g = 0; g < count; ++g)
    check_columns("gemm_packed_bf16_blocks", N, first + g * stride + j0, first + g * stride + j1);
  Operands o = operands("gemm_packed_bf16_blocks", A, Bp, N, cortex::packed_panels_bf16_size, bias_obj, C_obj, false);
  with_bf16_isa(isa, [&](auto kern) {
    using Kern = decltype(kern);
    py::gil_scoped_release nogil;
    if constexpr (std::is_same_v<Kern, AutoBf16>)
      cortex::gemm_packed_bf16_blocks(o.M, N, o.K, A.data(), o.K, Bp.data(), o.c, o.ldc, o.bias, j0, j1, first,
                                      count, stride);
    else
      cortex::gemm_packed_bf16_blocks_with<Kern>(o.M, N, o.K, A.data(), o.K, Bp.data(), o.c, o.ldc, o.bias, j0, j1,
                                                 first, count, stride);
  });
  return o.C;
}

// Seconds per call of `call` (reps calls a loop, best of 3 loops), without the GIL.
template <class F>
double best_seconds(int64_t reps, F&& call) {
  double best = 1e30;
  py::gil_scoped_release nogil;
  for (int trial = 0; trial < 3; ++trial) {
    auto t0 = std::chrono::steady_clock::now();
    for (int64_t r = 0; r < reps; ++r) call();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps);
  }
  return best;
}

// Times `reps` calls of gemm_packed (isa as in gemm_packed); returns seconds per call (best of 3 loops).
double bench_gemm(const F32Array& A, const F32Array& Bpacked, int64_t N, int64_t reps, bool serial, const std::string& isa) {
  const int64_t M = A.shape(0), K = A.shape(1);
  if (A.ndim() != 2 || Bpacked.size() != cortex::packed_panels_size(K, N)) throw py::value_error("bench_gemm: bad operands");
  std::vector<float> C(static_cast<size_t>(M * N));
  double s = 0;
  with_f32_isa(isa, [&](auto kern) {
    using Kern = decltype(kern);
    s = best_seconds(reps, [&] {
      if (serial)
        cortex::gemm_packed_serial_with<Kern>(M, N, K, A.data(), K, Bpacked.data(), C.data(), N, nullptr, false);
      else
        cortex::gemm_packed_with<Kern>(M, N, K, A.data(), K, Bpacked.data(), C.data(), N, nullptr, false);
    });
  });
  return s;
}

double bench_gemm_bf16(const F32Array& A, const U16Array& Bp, int64_t N, int64_t reps, bool serial, const std::string& isa) {
  const int64_t M = A.shape(0), K = A.shape(1);
  if (A.ndim() != 2 || Bp.size() != cortex::packed_panels_bf16_size(K, N)) throw py::value_error("bench_gemm_bf16: bad operands");
  std::vector<float> C(static_cast<size_t>(M * N));
  double s = 0;
  with_bf16_isa(isa, [&](auto kern) {
    using Kern = decltype(kern);
    s = best_seconds(reps, [&] {
      if constexpr (std::is_same_v<Kern, AutoBf16>) {
        if (serial)
          cortex::gemm_packed_bf16_serial(M, N, K, A.data(), K, Bp.data(), C.data(), N, nullptr, false);
        else
          cortex::gemm_packed_bf16(M, N, K, A.data(), K, Bp.data(), C.data(), N, nullptr, false);
      } else if (serial) {
        cortex::gemm_packed_bf16_serial_with<Kern>(M, N, K, A.data(), K, Bp.data(), C.data(), N, nullptr, false);
      } else {
        cortex::gemm_packed_bf16_with<Kern>(M, N, K, A.data(), K, Bp.data(), C.data(), N, nullptr, false);
      }
    });
  });
  return s;
}

// Peak FMA throughput estimate (GFLOP/s) over `threads` threads: 12 independent 8-wide FMA chains
// per thread, kept in registers by inline asm. Best of 3.
#if defined(__AVX2__) && defined(__FMA__) && defined(__x86_64__) && defined(__GNUC__)
double fma_loop_seconds(int64_t iters) {
  auto t0 = std::chrono::steady_clock::now();
  int64_t n = iters;
  __asm__ __volatile__(
      "vxorps %%ymm0, %%ymm0, %%ymm0\n\t"
      "vxorps %%ymm1, %%ymm1, %%ymm1\n\t"
      "vxorps %%ymm2, %%ymm2, %%ymm2\n\t"
      "vxorps %%ymm3, %%ymm3, %%ymm3\n\t"
      "vxorps %%ymm4, %%ymm4, %%ymm4\n\t"
      "vxorps %%ymm5, %%ymm5, %%ymm5\n\t"
      "vxorps %%ymm6, %%ymm6, %%ymm6\n\t"
      "vxorps %%ymm7, %%ymm7, %%ymm7\n\t"
      "vxorps %%ymm8, %%ymm8, %%ymm8\n\t"
      "vxorps %%ymm9, %%ymm9, %%ymm9\n\t"
      "vxorps %%ymm10, %%ymm10, %%ymm10\n\t"
      "vxorps %%ymm11, %%ymm11, %%ymm11\n\t"
      "vxorps %%ymm14, %%ymm14, %%ymm14\n\t"
      "vxorps %%ymm15, %%ymm15, %%ymm15\n\t"
      "1:\n\t"
      "vfmadd231ps %%ymm14, %%ymm15, %%ymm0\n\t"
      "vfmadd231ps %%ymm14, %%ymm15, %%ymm1\n\t"
      "vfmadd231ps %%ymm14, %%ymm15, %%ymm2\n\t"
      "vfmadd231ps %%ymm14, %%ymm15, %%ymm3\n\t"
      "vfmadd231ps %%ymm14, %%ymm15, %%ymm4\n\t"
      "vfmadd231ps %%ymm14, %%ymm15, %%ymm5\n\t"
      "vfmadd231ps %%ymm14, %%ymm15, %%ymm6\n\t"
      "vfmadd231ps %%ymm14, %%ymm15, %%ymm7\n\t"
      "vfmadd231ps %%ymm14, %%ymm15, %%ymm8\n\t"
      "vfmadd231ps %%ymm14, %%ymm15, %%ymm9\n\t"
      "vfmadd231ps %%ymm14, %%ymm15, %%ymm10\n\t"
      "vfmadd231ps %%ymm14, %%ymm15, %%ymm11\n\t"
      "dec %0\n\t"
      "jnz 1b\n\t"
      "vzeroupper\n\t"
      : "+r"(n)
      :
      : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11",
        "xmm14", "xmm15", "cc");
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double bench_fma_peak(int threads, int64_t iters) {
  if (threads < 1) threads = 1;
  py::gil_scoped_release nogil;
  double best = 0;
  for (int trial = 0; trial < 3; ++trial) {
    std::vector<double> secs(static_cast<size_t>(threads));
    std::vector<std::thread> ts;
    for (int t = 1; t < threads; ++t) ts.emplace_back([&, t] { secs[static_cast<size_t>(t)] = fma_loop_seconds(iters); });
    secs[0] = fma_loop_seconds(iters);
    for (auto& t : ts) t.join();
    double total = 0;
    for (double sec : secs) total += 12.0 * 16.0 * static_cast<double>(iters) / sec * 1e-9;
    best = std::max(best, total);
  }
  return best;
}
#else
double bench_fma_peak(int, int64_t) { return 0.0; }
#endif

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "Cortex runtime pieces (csrc/runtime) for tests and tools; the serving path's forest rows";
  register_forest_rows(m);
  register_index_check(m);

  m.def("linearize_visit", &linearize_visit, py::arg("num_nodes"), py::arg("node"), py::arg("case_id"),
        py::arg("num_cases"), py::arg("reads"),
        "Level batches of a visit sequence (Loop semantics). Returns dict(valid, num_levels, batch_offsets, "
        "batch_level, batch_case, positions); raises ValueError on malformed input.");
  m.def("split_lanes", &split_lanes, py::arg("num_nodes"), py::arg("node"), py::arg("case_id"), py::arg("num_cases"),
        py::arg("reads"), py::arg("max_lanes"), "A visit's schedule cut into independent lanes (linearize.h's Lanes)");
  m.def("linearize_dag", &linearize_dag, py::arg("num_nodes"), py::arg("case_id"), py::arg("num_cases"),
        py::arg("reads"),
        "Level batches of a DAG (TreeRec semantics, node[p] == p). Raises ValueError on a cycle.");
  m.def("pack_panels", &pack_panels, py::arg("W"), "W [K, N] float32 -> panel layout [ceil(N/16), K, 16]");
  m.def("pack_panels_bf16", &pack_panels_bf16, py::arg("W"),
        "W [K, N] float32 -> panels_bf16 layout [ceil(N/16), ceil(K/32)*16, 16, 2] uint16 (bf16 bits, RNE)");
  m.def("bf16_bits", &bf16_bits, py::arg("A"), "A [M, K] float32 rounded to bf16 as the bf16 products round it (uint16)");
  m.def("gemm_isas", &gemm_isas, "The float32 and bf16 micro-kernels in this build (names for isa=) and the defaults");
  m.def("gemm_packed", &gemm_packed, py::arg("A"), py::arg("Bpacked"), py::arg("N"), py::arg("bias") = py::none(),
        py::arg("C") = py::none(), py::arg("accumulate") = false, py::arg("serial") = false, py::arg("isa") = "auto",
        "C[M,N] (= or +=) A[M,K] @ W + bias with W packed by pack_panels. Writes into C when given. isa: a name "
        "from gemm_isas()['f32'] or 'auto' (the -march default).");
  m.def("gemm_packed_columns", &gemm_packed_columns, py::arg("A"), py::arg("Bpacked"), py::arg("N"), py::arg("n0"),
        py::arg("n1"), py::arg("C"), py::arg("bias") = py::none(), py::arg("isa") = "auto",
        "Columns [n0, n1) of A @ W + bias into C (serial; n0 a multiple of 16, n1 too or N); other columns untouched.");
  m.def("gemm_packed_bf16", &gemm_packed_bf16, py::arg("A"), py::arg("Bpacked"), py::arg("N"),
        py::arg("bias") = py::none(), py::arg("C") = py::none(), py::arg("accumulate") = false,
        py::arg("serial") = false, py::arg("isa") = "auto",
        "gemm_packed with bf16 weights (pack_panels_bf16) and A rounded to bf16, float32 sums. isa: a name from "
        "gemm_isas()['bf16'] or 'auto' (AMX from amx_min_rows rows where granted, else the register kernel).");
  m.def("gemm_packed_bf16_columns", &gemm_packed_bf16_columns, py::arg("A"), py::arg("Bpacked"), py::arg("N"),
        py::arg("n0"), py::arg("n1"), py::arg("C"), py::arg("bias") = py::none(), py::arg("isa") = "auto",
        "Columns [n0, n1) of the bf16 product into C (serial).");
  m.def("gemm_packed_bf16_blocks", &gemm_packed_bf16_blocks, py::arg("A"), py::arg("Bpacked"), py::arg("N"),
        py::arg("j0"), py::arg("j1"), py::arg("first"), py::arg("count"), py::arg("stride"), py::arg("C"),
        py::arg("bias") = py::none(), py::arg("isa") = "auto",
        "Columns [first + g * stride + j0, first + g * stride + j1), g < count, of the bf16 product into C (serial).");
  m.def("num_threads", []() { return cortex::num_threads(); }, "Threads of the runtime pool (caller included)");
  m.def("sigmoid", [](float x) { return cortex::sigmoid(x); });
  m.def("tanh", [](float x) { return cortex::tanh_f(x); });
  m.def("relu", [](float x) { return cortex::relu(x); });
  m.def("_bench_gemm", &bench_gemm, py::arg("A"), py::arg("Bpacked"), py::arg("N"), py::arg("reps"),
        py::arg("serial") = false, py::arg("isa") = "auto");
  m.def("_bench_gemm_bf16", &bench_gemm_bf16, py::arg("A"), py::arg("Bpacked"), py::arg("N"), py::arg("reps"),
        py::arg("serial") = false, py::arg("isa") = "auto");
  m.def("_bench_fma_peak", &bench_fma_peak, py::arg("threads") = 1, py::arg("iters") = 50000000,
        "FMA peak estimate in GFLOP/s (0 when built without AVX2/FMA)");
#if defined(__AVX2__) && defined(__FMA__)
  m.attr("_has_avx2_fma") = true;
#else
  m.attr("_has_avx2_fma") = false;
#endif
  m.def("_fused_tasks", [](int64_t chunks, int64_t rows, double flops) {
    const cortex::FusedTasks split = cortex::fused_tasks(chunks, rows, flops);
    return py::make_tuple(split.columns, split.rows);
  }, py::arg("chunks"), py::arg("rows"), py::arg("flops"), "(column ranges, row ranges) of a fused level's split");
  m.def("_run_affine_test", [](int64_t n) {
    // exercises run_affine: how many times each task ran
    std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
    {
      py::gil_scoped_release nogil;
      cortex::run_affine(n, [&](int64_t t) { hits[static_cast<size_t>(t)].fetch_add(1); });
    }
    std::vector<int64_t> out;
    for (auto& h : hits) out.push_back(h.load());
    return to_numpy(out);
  });
  m.def("_parallel_sum_test", [](int64_t n) {
    // exercises parallel_for: sum of f(i) = i over [0, n) via per-index slots
    std::vector<int64_t> slots(static_cast<size_t>(n), 0);
    {
      py::gil_scoped_release nogil;
      cortex::parallel_for(n, [&](int64_t i) { slots[static_cast<size_t>(i)] = i + 1; });
    }
    int64_t s = 0;
    for (auto v : slots) s += v;
    return s;
  });
}

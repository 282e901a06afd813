// cortex._C: runtime pieces (csrc/runtime) exposed for tests and tools.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <chrono>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "activations.h"
#include "gemm.h"
#include "linearize.h"
#include "parallel.h"

namespace py = pybind11;

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

py::object gemm_packed(const F32Array& A, const F32Array& Bpacked, int64_t N, py::object bias_obj, py::object C_obj,
                       bool accumulate, bool serial) {
  if (A.ndim() != 2) throw py::value_error("gemm_packed: A must be 2-D [M, K]");
  const int64_t M = A.shape(0), K = A.shape(1);
  if (N < 0) throw py::value_error("gemm_packed: N must be >= 0");
  const int64_t need = cortex::packed_panels_size(K, N);
  if (Bpacked.size() != need)
    throw py::value_error("gemm_packed: Bpacked has " + std::to_string(Bpacked.size()) + " elements, expected " +
                          std::to_string(need) + " = ceil(N/16)*K*16");
  F32Array bias;
  const float* bias_ptr = nullptr;
  if (!bias_obj.is_none()) {
    bias = F32Array::ensure(bias_obj);
    if (!bias || bias.ndim() != 1 || bias.shape(0) != N)
      throw py::value_error("gemm_packed: bias must be 1-D of length N");
    bias_ptr = bias.data();
  }
  py::array_t<float> C;
  if (C_obj.is_none()) {
    if (accumulate) throw py::value_error("gemm_packed: accumulate=True needs C");
    C = py::array_t<float>({M, N});
  } else {
    if (!py::isinstance<py::array_t<float>>(C_obj))
      throw py::value_error("gemm_packed: C must be a float32 numpy array");
    C = py::reinterpret_borrow<py::array_t<float>>(C_obj);
    if (C.ndim() != 2 || C.shape(0) != M || C.shape(1) != N)
      throw py::value_error("gemm_packed: C must have shape [M, N]");
    if (!C.writeable()) throw py::value_error("gemm_packed: C must be writeable");
    if (C.strides(1) != static_cast<py::ssize_t>(sizeof(float)) || C.strides(0) % sizeof(float) != 0 ||
        (M > 1 && C.strides(0) < static_cast<py::ssize_t>(N * sizeof(float))))
      throw py::value_error("gemm_packed: C must be row-major with unit column stride");
  }
  const int64_t ldc = M > 0 ? static_cast<int64_t>(C.strides(0) / static_cast<py::ssize_t>(sizeof(float))) : N;
  float* c = C.mutable_data();
  {
    py::gil_scoped_release nogil;
    if (serial)
      cortex::gemm_packed_serial(M, N, K, A.data(), K, Bpacked.data(), c, ldc, bias_ptr, accumulate);
    else
      cortex::gemm_packed(M, N, K, A.data(), K, Bpacked.data(), c, ldc, bias_ptr, accumulate);
  }
  return C;
}

// Times `reps` calls of gemm_packed on the given operands; returns seconds per call (best of 3).
double bench_gemm(const F32Array& A, const F32Array& Bpacked, int64_t N, int64_t reps, bool serial) {
  const int64_t M = A.shape(0), K = A.shape(1);
  if (Bpacked.size() != cortex::packed_panels_size(K, N)) throw py::value_error("bench_gemm: bad Bpacked size");
  std::vector<float> C(static_cast<size_t>(M * N));
  double best = 1e30;
  py::gil_scoped_release nogil;
  for (int trial = 0; trial < 3; ++trial) {
    auto t0 = std::chrono::steady_clock::now();
    for (int64_t r = 0; r < reps; ++r) {
      if (serial)
        cortex::gemm_packed_serial(M, N, K, A.data(), K, Bpacked.data(), C.data(), N, nullptr, false);
      else
        cortex::gemm_packed(M, N, K, A.data(), K, Bpacked.data(), C.data(), N, nullptr, false);
    }
    double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
    best = std::min(best, dt);
  }
  return best;
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
  m.doc() = "Cortex runtime pieces (csrc/runtime) for tests and tools";

  m.def("linearize_visit", &linearize_visit, py::arg("num_nodes"), py::arg("node"), py::arg("case_id"),
        py::arg("num_cases"), py::arg("reads"),
        "Level batches of a visit sequence (Loop semantics). Returns dict(valid, num_levels, batch_offsets, "
        "batch_level, batch_case, positions); raises ValueError on malformed input.");
  m.def("linearize_dag", &linearize_dag, py::arg("num_nodes"), py::arg("case_id"), py::arg("num_cases"),
        py::arg("reads"),
        "Level batches of a DAG (TreeRec semantics, node[p] == p). Raises ValueError on a cycle.");
  m.def("pack_panels", &pack_panels, py::arg("W"), "W [K, N] float32 -> panel layout [ceil(N/16), K, 16]");
  m.def("gemm_packed", &gemm_packed, py::arg("A"), py::arg("Bpacked"), py::arg("N"), py::arg("bias") = py::none(),
        py::arg("C") = py::none(), py::arg("accumulate") = false, py::arg("serial") = false,
        "C[M,N] (= or +=) A[M,K] @ W + bias with W packed by pack_panels. Writes into C when given.");
  m.def("num_threads", []() { return cortex::num_threads(); }, "Threads of the runtime pool (caller included)");
  m.def("sigmoid", [](float x) { return cortex::sigmoid(x); });
  m.def("tanh", [](float x) { return cortex::tanh_f(x); });
  m.def("relu", [](float x) { return cortex::relu(x); });
  m.def("_bench_gemm", &bench_gemm, py::arg("A"), py::arg("Bpacked"), py::arg("N"), py::arg("reps"),
        py::arg("serial") = false);
  m.def("_bench_fma_peak", &bench_fma_peak, py::arg("threads") = 1, py::arg("iters") = 50000000,
        "FMA peak estimate in GFLOP/s (0 when built without AVX2/FMA)");
#if defined(__AVX2__) && defined(__FMA__)
  m.attr("_has_avx2_fma") = true;
#else
  m.attr("_has_avx2_fma") = false;
#endif
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

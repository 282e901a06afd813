// Helpers every generated kernel uses: input checking, ONNX index semantics, row-parallel loops.
#pragma once
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "kernel_abi.h"
#include "parallel.h"
#include "sets.h"

namespace cortex {

struct KernelError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ONNX Gather / ScatterND index semantics: i in [-len, len) with negative values counting from the end;
// anything else is the error ONNX Runtime raises too.
inline std::string at_position(int64_t position) {
  return position < 0 ? std::string(" before the recursion") : " at position " + std::to_string(position);
}

inline int64_t normalize_index(int64_t i, int64_t len, const char* what, int64_t position) {
  if (i < -len || i >= len) {
    throw KernelError("index " + std::to_string(i) + " out of range for " + what + " (size " + std::to_string(len) +
                      ")" + at_position(position));
  }
  return i < 0 ? i + len : i;
}

// prepare's once-per-position input load (cstyle.MemoLoads): the first call evaluates `load`, later calls return its
// value. A call, not an inline expression: two operands of one expression may both reach the same load, and the
// evaluations of a function's body are sequenced where those of plain operands are not.
template <class Load>
inline int64_t memo_load(bool& have, int64_t& value, Load&& load) {
  if (!have) {
    value = load();
    have = true;
  }
  return value;
}

// Integer add, subtract and multiply as ONNX Runtime computes them on int64: modulo 2**64 (two's complement), where
// `a + b` on int64_t would be undefined behaviour on overflow (an input's ids near INT64_MAX).
inline int64_t wrapping_add(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
}
inline int64_t wrapping_sub(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) - static_cast<uint64_t>(b));
}
inline int64_t wrapping_mul(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) * static_cast<uint64_t>(b));
}

// Integer division and remainder as ONNX defines them on integers (Div truncates; Mod takes the divisor's sign,
// fmod the dividend's); division by zero is an error, as in ONNX Runtime.
inline int64_t check_divisor(int64_t b, int64_t position) {
  if (b == 0) throw KernelError("integer division by zero" + at_position(position));
  return b;
}
// A divisor of -1 is taken apart: INT64_MIN / -1 traps on x86 (the quotient wraps to INT64_MIN, the remainder is 0).
inline int64_t idiv(int64_t a, int64_t b, int64_t position) {
  return check_divisor(b, position) == -1 ? wrapping_sub(0, a) : a / b;
}
inline int64_t ifloordiv(int64_t a, int64_t b, int64_t position) {
  if (check_divisor(b, position) == -1) return wrapping_sub(0, a);
  const int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}
inline int64_t imod(int64_t a, int64_t b, int64_t position) {
  if (check_divisor(b, position) == -1) return 0;
  const int64_t r = a % b;
  return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}
inline int64_t ifmod(int64_t a, int64_t b, int64_t position) {
  return check_divisor(b, position) == -1 ? 0 : a % b;
}

// A value Cortex computes only under a condition the model's inputs must meet (see ir.Guard).
inline int64_t guard(bool ok, int64_t value, const char* message, int64_t position) {
  if (!ok) throw KernelError(std::string(message) + at_position(position));
  return value;
}

// TreeRec child semantics: -1 means "no child" (returned as -1); other values must be rows in [0, len).
inline int64_t child_index(int64_t i, int64_t len, const char* what, int64_t position) {
  if (i < -1 || i >= len) {
    throw KernelError("child index " + std::to_string(i) + " out of range for " + what + " (" + std::to_string(len) +
                      " nodes) at node " + std::to_string(position));
  }
  return i;
}

// A TreeRec node input has one row per node of the structure (the op's spec), whether or not a node reads it.
inline void check_node_rows(int64_t rows, int64_t nodes, const char* input, const char* structure) {
  if (rows != nodes) {
    throw KernelError(std::string("node input '") + input + "' has " + std::to_string(rows) + " rows; the structure '" +
                      structure + "' has " + std::to_string(nodes) + " nodes (a TreeRec node input has one row per node)");
  }
}

// A parent array names the state rows' parents: one entry per row (the model's mask over rows has their length).
inline void check_parent_rows(int64_t entries, int64_t rows, const char* array) {
  if (entries != rows) {
    throw KernelError(std::string("the parent array '") + array + "' has " + std::to_string(entries) +
                      " entries; the state tables have " + std::to_string(rows) + " rows");
  }
}

// An initial table the model's graph fills with zeros, which a table derived from it relies on (a product lifted
// from a child set starts at 0 @ W).
template <typename Real>  // float, or double in a float64 kernel
inline void check_zeros(const Real* data, int64_t count, const char* input) {
  for (int64_t i = 0; i < count; ++i) {
    if (data[i] != Real(0)) {
      throw KernelError(std::string("the initial table '") + input + "' is not zeros, as the model's graph makes it");
    }
  }
}

// The shape vector [d_0 .. d_{lead-1}, inner...] of a state table the model fills with zeros (torch.zeros(N, H): the
// converted node takes the vector its ConstantOfShape or Expand reads, not the table, and the kernel fills the table):
// int64 of the table's rank, no dimension negative (ONNX Runtime refuses one), the inner ones those the kernel was
// built for. Returns the table's rows (the leading dimensions' product), each leading dimension in `leading`.
inline int64_t zeros_table_rows(const CortexTensor& t, const void* host, int32_t lead, const int64_t* inner,
                                int32_t n_inner, const char* name, int64_t* leading) {
  if (t.dtype != CORTEX_INT64 || t.rank != 1 || t.shape[0] != lead + n_inner) {
    throw KernelError(std::string("the shape '") + name + "' of an initial table must be " +
                      std::to_string(lead + n_inner) + " int64 values");
  }
  const int64_t* shape = static_cast<const int64_t*>(host);
  for (int32_t d = 0; d < lead + n_inner; ++d) {
    if (shape[d] < 0) {
      throw KernelError(std::string("the shape '") + name + "' of an initial table has a negative dimension (" +
                        std::to_string(shape[d]) + ")");
    }
  }
  for (int32_t d = 0; d < n_inner; ++d) {
    if (shape[lead + d] != inner[d]) {
      throw KernelError(std::string("the initial table of shape '") + name + "' has " +
                        std::to_string(shape[lead + d]) + " in dimension " + std::to_string(lead + d) +
                        "; the model's state has " + std::to_string(inner[d]));
    }
  }
  int64_t rows = 1;
  for (int32_t d = 0; d < lead; ++d) {
    leading[d] = shape[d];
    if (__builtin_mul_overflow(rows, shape[d], &rows)) {
      throw KernelError(std::string("the initial table of shape '") + name + "' has too many rows");
    }
  }
  return rows;
}

// The element count of an integer table the loop carries (its ConstantOfShape): at most 2^31 elements.
inline int64_t host_table_size(int64_t size, const char* name) {
  if (size < 0 || size > (INT64_C(1) << 31)) {
    throw KernelError(std::string("the integer table '") + name + "' would have " + std::to_string(size) +
                      " elements");
  }
  return size;
}

// An edge list [K, E] read at rows up to `rows` - 1 (ONNX Gather of a missing row is an error).
inline void check_edge_rows(int64_t have, int64_t rows, const char* array) {
  if (have < rows) {
    throw KernelError(std::string("the edge list '") + array + "' has " + std::to_string(have) + " rows; the model "
                      "reads row " + std::to_string(rows - 1));
  }
}

// Every value of an index vector the model gathers rows at (h[edge_index[0]]) is a row index (ONNX Gather).
template <class T>
inline void check_row_ids(const T* ids, int64_t count, int64_t rows, const char* array, int64_t position) {
  for (int64_t e = 0; e < count; ++e) {
    const int64_t i = static_cast<int64_t>(ids[e]);
    if (i < -rows || i >= rows) {
      normalize_index(i, rows, (std::string("a row gathered at ") + array).c_str(), position);
    }
  }
}

// An edge list given as two vectors read element by element together (h[src] masked by dst == v): as long as
// each other.
inline void check_same_length(int64_t a, int64_t b, const char* first, const char* second) {
  if (a != b) {
    throw KernelError(std::string("edge arrays '") + first + "' (" + std::to_string(a) + " entries) and '" + second +
                      "' (" + std::to_string(b) + " entries) must have the same length");
  }
}

inline const char* dtype_name(int32_t dtype) {
  switch (dtype) {
    case CORTEX_FLOAT: return "float32";
    case CORTEX_DOUBLE: return "float64";
    case CORTEX_INT64: return "int64";
    case CORTEX_INT32: return "int32";
    case CORTEX_BOOL: return "bool";
    default: return "unsupported";
  }
}

// Checks one input's dtype, rank and static trailing dims (-1: any); returns its data pointer.
inline const void* check_input(const CortexTensor& t, const char* name, int32_t dtype, int32_t rank,
                               const int64_t* inner_dims) {
  if (t.dtype != dtype) {
    throw KernelError(std::string("input '") + name + "' must be " + dtype_name(dtype) + ", got " + dtype_name(t.dtype));
  }
  if (t.rank != rank) {
    throw KernelError(std::string("input '") + name + "' must have rank " + std::to_string(rank) + ", got " +
                      std::to_string(t.rank));
  }
  for (int32_t d = 1; d < rank; ++d) {
    if (inner_dims[d - 1] >= 0 && t.shape[d] != inner_dims[d - 1]) {
      throw KernelError(std::string("input '") + name + "' dimension " + std::to_string(d) + " must be " +
                        std::to_string(inner_dims[d - 1]) + ", got " + std::to_string(t.shape[d]));
    }
  }
  return t.data;
}

// The data of an input a CPU kernel reads: it must be in host memory.
inline const void* host_data(const CortexTensor& t, const char* name) {
  if (t.device != CORTEX_DEVICE_CPU) {
    throw KernelError(std::string("input '") + name + "' is in device memory; a CPU kernel reads host memory");
  }
  return t.data;
}

// A scalar int64 input given as shape [] or [1] (ONNX Loop trip counts come as either).
inline int64_t scalar_int64(const CortexTensor& t, const char* name) {
  int64_t elements = 1;
  for (int32_t d = 0; d < t.rank; ++d) elements *= t.shape[d];
  if (t.dtype != CORTEX_INT64 || elements != 1) {
    throw KernelError(std::string("input '") + name + "' must be one int64 value");
  }
  return *static_cast<const int64_t*>(t.data);
}

// memcpy of a state table's initial values: split over the pool from 1 MiB up (at batch 100, hidden 256, two 3.6 MB
// tables; one core's copy bandwidth is a fraction of the socket's), in pieces of at least 256 KiB.
inline void copy_table(void* dst, const void* src, size_t bytes) {
  constexpr size_t kParallelFrom = size_t(1) << 20, kPiece = size_t(1) << 18;
  const int64_t threads = num_threads();
  if (threads <= 1 || bytes < kParallelFrom) {
    if (bytes) std::memcpy(dst, src, bytes);
    return;
  }
  const int64_t pieces = std::min<int64_t>(threads, static_cast<int64_t>(bytes / kPiece));
  parallel_for(pieces, [&](int64_t k) {
    const size_t begin = bytes * static_cast<size_t>(k) / static_cast<size_t>(pieces);
    const size_t end = bytes * static_cast<size_t>(k + 1) / static_cast<size_t>(pieces);
    std::memcpy(static_cast<char*>(dst) + begin, static_cast<const char*>(src) + begin, end - begin);
  });
}

// Runs f(b) for rows b in [0, rows): across the thread pool when there is enough work to pay for it.
template <class F>
inline void for_rows(int64_t rows, int64_t work_per_row, F&& f) {
  const int64_t threads = num_threads();
  if (threads <= 1 || rows < 2 || rows * work_per_row < 8192) {
    for (int64_t b = 0; b < rows; ++b) f(b);
    return;
  }
  const int64_t chunks = std::min(rows, threads);
  parallel_for(chunks, [&](int64_t c) {
    const int64_t b0 = rows * c / chunks, b1 = rows * (c + 1) / chunks;
    for (int64_t b = b0; b < b1; ++b) f(b);
  });
}

// A state table's first value where the schedule is valid (linearize.h): every read of a listed position's row
// then comes after that row's one write, so the initial value (or zeros) is needed only in the rows no position
// overwrites first: rows that no listed position of a case writing this table targets, and rows a position reads
// as its own (it reads the initial state, then writes). overwritten[r] = 1 for the others. writes[c]: case c writes
// this table. `extra_offsets`, `extra_rows`: the child sets' members, as for reads_own_row.
inline void mark_overwritten_rows(int64_t N, int64_t listed, const int64_t* node, const int32_t* case_id,
                                  const bool* writes, const int64_t* reads, int64_t K, std::vector<uint8_t>& overwritten,
                                  const int64_t* extra_offsets = nullptr, const int64_t* extra_rows = nullptr) {
  overwritten.assign(static_cast<size_t>(N), 0);
  for (int64_t q = 0; q < listed; ++q)
    if (node[q] >= 0 && writes[case_id[q]]) overwritten[node[q]] = 1;
  for (int64_t q = 0; q < listed; ++q) {
    const int64_t r = node[q];
    if (r < 0) continue;
    for (int64_t k = 0; k < K; ++k)
      if (reads[q * K + k] == r) overwritten[r] = 0;
    if (extra_offsets != nullptr)
      for (int64_t e = extra_offsets[q]; e < extra_offsets[q + 1]; ++e)
        if (extra_rows[e] == r) overwritten[r] = 0;
  }
}

// Gives the rows not overwritten (mark_overwritten_rows) their first value: src's rows, or zeros (src nullptr).
inline void fill_rows_not_overwritten(void* dst, const void* src, size_t row_bytes, int64_t N,
                                      const std::vector<uint8_t>& overwritten) {
  for (int64_t r = 0; r < N;) {
    if (overwritten[r]) {
      ++r;
      continue;
    }
    int64_t e = r + 1;
    while (e < N && !overwritten[e]) ++e;
    char* d = static_cast<char*>(dst) + r * row_bytes;
    const size_t bytes = static_cast<size_t>(e - r) * row_bytes;
    if (src != nullptr) copy_table(d, static_cast<const char*>(src) + r * row_bytes, bytes);
    else std::memset(d, 0, bytes);
    r = e;
  }
}

// True when a position of the batch reads its own row before writing it (the batch must compute every new row before
// it writes any); reads are the prepared child-state rows, kReads a position.
// `extra_offsets`, `extra_rows` (optional): the members of each position's child sets, as CSR (linearize.h).
inline bool reads_own_row(const int64_t* node, const int64_t* reads, int64_t K, const int64_t* batch, int64_t B,
                          const int64_t* extra_offsets = nullptr, const int64_t* extra_rows = nullptr) {
  for (int64_t b = 0; b < B; ++b) {
    const int64_t q = batch[b];
    for (int64_t k = 0; k < K; ++k) {
      if (reads[q * K + k] >= 0 && reads[q * K + k] == node[q]) return true;
    }
    if (extra_offsets != nullptr) {
      for (int64_t e = extra_offsets[q]; e < extra_offsets[q + 1]; ++e) {
        if (extra_rows[e] == node[q]) return true;
      }
    }
  }
  return false;
}

// How a fused product + epilogue is split: `columns` ranges of column chunks times `rows` ranges of the level's
// rows; task t takes column range t % columns and row range t / columns.
struct FusedTasks {
  int64_t columns = 1, rows = 1;
  int64_t tasks() const { return columns * rows; }
};

// One worker when the work is too small to pay for a dispatch, else one per kTaskFlops of work (a few microseconds
// of one core, so that waking a worker and the level's barrier stay small beside its share), at most one per thread:
// on many cores a small level runs on a few threads instead of paying a barrier across all of them.
//
// The split of `workers` into column ranges x row ranges: every column range gathers all the input rows of its row
// range (a worker's own copy), so C column ranges gather the level's rows C times over, and R row ranges read each
// weight slice R times (from their own L2, where it stays level after level: run_tasks keeps a task on its thread).
// So: as many row ranges as keep each worker's weight slice within kWeightShare bytes (L2-resident) and each row
// range at least kTaskRows rows, the rest in column ranges; among splits that use as many workers, the most row
// ranges. (16 threads, hidden 256, 100 trees: 8 x 2 instead of 16 x 1, half the gathers; hidden 64: weights of
// 160 KB, rows split as far as the rows allow.) `flops` is the level's: 2 x (sum of K x N of its products) x rows.
inline FusedTasks fused_tasks(int64_t chunks, int64_t rows, double flops) {
  constexpr double kTaskFlops = 2.5e5;
  constexpr int64_t kTaskRows = 12;  // whole GEMM row blocks: two of AVX2's (6 rows), one of AVX-512's (12)
  constexpr double kWeightShare = 512.0 * 1024;  // bytes of float32 weights a worker keeps in its L2
  const int64_t threads = num_threads();
  if (threads <= 1 || flops < kTaskFlops || rows <= 0) return {};
  const int64_t workers = std::max<int64_t>(1, std::min(threads, static_cast<int64_t>(flops / kTaskFlops)));
  const double weight_bytes = 4.0 * flops / (2.0 * static_cast<double>(rows));
  FusedTasks split;
  split.columns = std::min(chunks, workers);
  for (int64_t r = 2; r <= workers && rows / r >= kTaskRows; ++r) {
    const int64_t c = std::min(chunks, workers / r);
    if (weight_bytes / static_cast<double>(c) > kWeightShare) break;  // fewer column ranges: larger slices
    if (c * r >= split.columns * split.rows) split.columns = c, split.rows = r;
  }
  return split;
}

// f(task) for task in [0, tasks): on the pool, or inline for one task. Each thread takes the same tasks level after
// level when it can (run_affine): its columns of the weights stay in its L2.
template <class F>
inline void run_tasks(int64_t tasks, F&& f) {
  if (tasks <= 1) {
    f(0);
    return;
  }
  run_affine(tasks, f);
}

// A kernel is compiled for one ISA level (cortex-convert --cpu). The EP checks the CPU features recorded in the
// converted model before it loads the kernel; this is the kernel's own second check of every feature its compiler
// flags enabled (cpu_features.def), so a kernel loaded by other means fails with a message, never SIGILL.
// CORTEX_IS_ENABLED(M) is 1 when macro M is defined to 1 and 0 when M is not defined (the Linux kernel's trick).
#define CORTEX_ENABLED_PLACEHOLDER_1 0,
#define CORTEX_IS_ENABLED(macro) CORTEX_IS_ENABLED_1(macro)
#define CORTEX_IS_ENABLED_1(value) CORTEX_IS_ENABLED_2(CORTEX_ENABLED_PLACEHOLDER_##value)
#define CORTEX_IS_ENABLED_2(arg_or_junk) CORTEX_IS_ENABLED_3(arg_or_junk 1, 0)
#define CORTEX_IS_ENABLED_3(ignored, value, ...) value

inline void check_cpu_features() {
#if defined(__x86_64__) || defined(__i386__)
#define CORTEX_CPU_FEATURE(name, macro, cpuinfo_flag)                                                   \
  if (CORTEX_IS_ENABLED(macro) && !__builtin_cpu_supports(name)) {                                     \
    throw KernelError(std::string("this kernel was compiled for CPUs with ") + name +                  \
                      ", which this CPU lacks; rebuild it here with `cortex rebuild MODEL`");            \
  }
#include "cpu_features.def"
#undef CORTEX_CPU_FEATURE
#endif
}

// The phases of one run, microseconds since its start (and values such as a GPU kernel's own time), recorded only
// when CORTEX_PROFILE is set; `cortex_kernel_profile` returns the calling thread's last run (tools/cuda_check.py,
// tools/bench.py --phases).
class Phases {
 public:
  static constexpr int kSlots = 8;
  Phases() : on_(enabled()) {
    if (on_) start_ = std::chrono::steady_clock::now();
  }
  bool on() const { return on_; }
  void mark(int i) {
    if (on_ && i >= 0 && i < kSlots) values_[i] = std::chrono::duration<double, std::micro>(
        std::chrono::steady_clock::now() - start_).count();
  }
  void set(int i, double value) {
    if (on_ && i >= 0 && i < kSlots) values_[i] = value;
  }
  void publish() const {
    if (!on_) return;
    for (int i = 0; i < kSlots; ++i) last_run()[i] = values_[i];
  }
  static int32_t last(double* out, int32_t n) {
    for (int32_t i = 0; i < n && i < kSlots; ++i) out[i] = last_run()[i];
    return kSlots;
  }
  static bool enabled() {
    static const bool on = std::getenv("CORTEX_PROFILE") != nullptr;
    return on;
  }

 private:
  static double* last_run() {
    thread_local double last[kSlots] = {};
    return last;
  }
  bool on_;
  std::chrono::steady_clock::time_point start_;
  double values_[kSlots] = {};
};

// The workspaces of one kernel (buffers, linearizer, schedule), reused across runs: a run leases one, a new one when
// every workspace is in use by a concurrent run, and gives it back when it ends, even by an exception. Not
// thread_local: glibc keeps a library loaded for good once a thread_local object with a destructor was created in
// it, and the EP unloads a kernel when no session uses it. The pool is a static of the kernel, destroyed with it.
template <class Workspace>
class WorkspacePool {
 public:
  class Lease {
   public:
    explicit Lease(WorkspacePool& pool) : pool_(pool), workspace_(pool.take()) {}
    ~Lease() { pool_.give_back(std::move(workspace_)); }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    Workspace& operator*() const { return *workspace_; }

   private:
    WorkspacePool& pool_;
    std::unique_ptr<Workspace> workspace_;
  };

 private:
  std::unique_ptr<Workspace> take() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!free_.empty()) {
        std::unique_ptr<Workspace> workspace = std::move(free_.back());
        free_.pop_back();
        return workspace;
      }
    }
    return std::unique_ptr<Workspace>(new Workspace());
  }

  void give_back(std::unique_ptr<Workspace> workspace) noexcept {
    std::lock_guard<std::mutex> lock(mutex_);
    try {
      free_.push_back(std::move(workspace));
    } catch (...) {
      // no memory to keep it: it is freed, and a later run makes a new one
    }
  }

  std::mutex mutex_;
  std::vector<std::unique_ptr<Workspace>> free_;
};

inline void write_error(char* error, size_t error_size, const char* message) {
  if (error != nullptr && error_size > 0) std::snprintf(error, error_size, "%s", message);
}

}  // namespace cortex

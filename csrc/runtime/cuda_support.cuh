// What every generated CUDA kernel shares: error checks, pinned staging and device scratch that persist across runs,
// the grid-cooperative GEMM with weight columns resident in shared memory, and the batch-row helpers.
//
// The persistent kernel runs on one block per SM (cooperative launch); every grid-wide step is a loop in which
// block b owns a contiguous range of output columns (so its weight columns can stay in shared memory for the whole
// run) and each warp computes dot products with its lanes striding over K.
#pragma once

#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "kernel_support.h"
#include "linearize.h"
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>

namespace cortex {
namespace cuda {

namespace cg = cooperative_groups;

constexpr int kThreads = 512;  // threads per block of the persistent kernel
constexpr int kWarps = kThreads / 32;

inline void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw KernelError(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(status));
  }
}

// A device allocation that grows and is reused across runs (one per workspace and device), freed with its workspace:
// the EP unloads a kernel no session uses. Freeing at process exit, after the CUDA runtime shut down, only returns an
// error, which is ignored.
struct DeviceBuffer {
  void* data = nullptr;
  size_t size = 0;
  int device = -1;
  DeviceBuffer() = default;
  DeviceBuffer(DeviceBuffer&& other) noexcept : data(other.data), size(other.size), device(other.device) {
    other.data = nullptr;
    other.size = 0;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (data != nullptr) cudaFree(data);
  }
  void* reserve(size_t bytes, int dev) {
    if (bytes <= size && dev == device) return data;
    if (data != nullptr) cudaFree(data);
    data = nullptr;
    size = 0;
    check(cudaMalloc(&data, bytes < 256 ? 256 : bytes), "cudaMalloc");
    size = bytes;
    device = dev;
    return data;
  }
};

// Pinned host memory that grows and is reused across runs (the schedule's staging area), freed like DeviceBuffer.
struct PinnedBuffer {
  void* data = nullptr;
  size_t size = 0;
  PinnedBuffer() = default;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  ~PinnedBuffer() {
    if (data != nullptr) cudaFreeHost(data);
  }
  void* reserve(size_t bytes) {
    if (bytes <= size) return data;
    if (data != nullptr) cudaFreeHost(data);
    data = nullptr;
    size = 0;
    check(cudaMallocHost(&data, bytes < 256 ? 256 : bytes), "cudaMallocHost");
    size = bytes;
    return data;
  }
};

// Output columns [c0, c1) of an N-column product that block `block` of `blocks` computes.
__host__ __device__ inline void column_range(int64_t N, int64_t block, int64_t blocks, int64_t* c0, int64_t* c1) {
  *c0 = N * block / blocks;
  *c1 = N * (block + 1) / blocks;
}

__device__ inline float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

// C[m][n] = A[m] . Wt[n] (+ bias[n]) for m < M, n in this block's columns. Wt is W transposed ([N, K], row n is
// column n of W), in global memory or, when `resident` is not null, this block's columns of it in shared memory
// ([c1 - c0, K] at `resident`).
__device__ inline void gemm_columns(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* Wt,
                                    const float* resident, const float* bias, float* C, int64_t ldc) {
  int64_t c0, c1;
  column_range(N, blockIdx.x, gridDim.x, &c0, &c1);
  const int64_t cols = c1 - c0;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t t = warp; t < M * cols; t += kWarps) {
    const int64_t m = t / cols, c = c0 + t % cols;
    const float* a = A + m * lda;
    const float* w = resident != nullptr ? resident + (c - c0) * K : Wt + c * K;
    float acc = 0.0f;
    for (int64_t k = lane; k < K; k += 32) acc = fmaf(a[k], w[k], acc);
    acc = warp_sum(acc);
    if (lane == 0) C[m * ldc + c] = bias != nullptr ? acc + bias[c] : acc;
  }
}

// Copies this block's columns of Wt ([N, K]) into shared memory at `resident`.
__device__ inline void load_resident(int64_t N, int64_t K, const float* Wt, float* resident) {
  int64_t c0, c1;
  column_range(N, blockIdx.x, gridDim.x, &c0, &c1);
  const float* src = Wt + c0 * K;
  for (int64_t i = threadIdx.x; i < (c1 - c0) * K; i += blockDim.x) resident[i] = src[i];
}

// Copies the weight columns offsets[s] + j (s < S, j in this block's share of [0, W)) of Wt ([N, K]) into shared
// memory at `resident` ([S][nj][K]): the columns a fused epilogue's elements j read.
__device__ inline void load_resident_columns(int64_t S, const int64_t* offsets, int64_t W, int64_t K, const float* Wt,
                                             float* resident) {
  int64_t j0, j1;
  column_range(W, blockIdx.x, gridDim.x, &j0, &j1);
  const int64_t nj = j1 - j0;
  for (int64_t i = threadIdx.x; i < S * nj * K; i += blockDim.x) {
    const int64_t row = i / K, k = i % K;
    const int64_t s = row / nj, jj = row % nj;
    resident[i] = Wt[(offsets[s] + j0 + jj) * K + k];
  }
}

// Floats of shared memory a block needs to hold its columns of an [N, K] weight.
inline int64_t resident_floats(int64_t N, int64_t K, int64_t blocks) { return ((N + blocks - 1) / blocks + 1) * K; }

// Times the kernel alone with CUDA events when profiling (Phases::enabled()).
class KernelTimer {
 public:
  void start(cudaStream_t stream) {
    if (!Phases::enabled()) return;
    if (begin_ == nullptr) check(cudaEventCreate(&begin_), "cudaEventCreate");
    if (end_ == nullptr) check(cudaEventCreate(&end_), "cudaEventCreate");
    check(cudaEventRecord(begin_, stream), "cudaEventRecord");
    started_ = true;
  }
  void stop(cudaStream_t stream) {
    if (started_) check(cudaEventRecord(end_, stream), "cudaEventRecord");
  }
  // After the stream synchronized: the kernel's microseconds, or -1.
  double elapsed_us() {
    float ms = -1.0f;
    if (!started_ || cudaEventElapsedTime(&ms, begin_, end_) != cudaSuccess) return -1.0;
    started_ = false;
    return ms * 1e3;
  }
  ~KernelTimer() {
    if (begin_ != nullptr) cudaEventDestroy(begin_);
    if (end_ != nullptr) cudaEventDestroy(end_);
  }

 private:
  cudaEvent_t begin_ = nullptr, end_ = nullptr;
  bool started_ = false;
};

// The schedule as the device reads it (all pointers into one device allocation).
struct DeviceSchedule {
  const int64_t* node = nullptr;
  const int64_t* position = nullptr;
  const int64_t* reads = nullptr;
  const int64_t* slots = nullptr;
  const int64_t* positions = nullptr;     // per batch entry: the listed position q
  const int64_t* batch_offset = nullptr;  // num_batches + 1
  const int32_t* batch_case = nullptr;
  const int32_t* batch_hazard = nullptr;  // 1: a position of the batch reads its own row before writing it
  const int32_t* batch_level = nullptr;
  int64_t num_batches = 0;
  int64_t max_batch = 0;
};

// The host side every CUDA kernel shares, kept in a workspace across runs: copies between host and device, the
// schedule's upload, the per-batch buffers and the cooperative launch with resident weights.
class Runtime {
 public:
  // Makes the host data of the structure inputs `which` (n of them) available through host_data(i): an input in
  // host memory is read in place; those in device memory are copied into one pinned buffer, all on the stream,
  // with one synchronisation for all of them (the structure is read on the host).
  void host_copies(const CortexTensor* inputs, const int* which, int n, cudaStream_t stream) {
    size_t total = 0;
    for (int k = 0; k < n; ++k) {
      const CortexTensor& t = inputs[which[k]];
      if (t.device == CORTEX_DEVICE_CUDA) total += aligned(tensor_bytes(t));
      if (host_.size() <= static_cast<size_t>(which[k])) host_.resize(which[k] + 1, nullptr);
    }
    unsigned char* base = total > 0 ? static_cast<unsigned char*>(host_staging_.reserve(total)) : nullptr;
    size_t at = 0;
    for (int k = 0; k < n; ++k) {
      const CortexTensor& t = inputs[which[k]];
      if (t.device != CORTEX_DEVICE_CUDA) {
        host_[which[k]] = t.data;
        continue;
      }
      const size_t bytes = tensor_bytes(t);
      if (bytes > 0) {
        check(cudaMemcpyAsync(base + at, t.data, bytes, cudaMemcpyDeviceToHost, stream), "copying an input to the host");
      }
      host_[which[k]] = base + at;
      at += aligned(bytes);
    }
    if (total > 0) check(cudaStreamSynchronize(stream), "copying the structure to the host");
  }

  // The host data of input i (after host_copies named it).
  const void* host_data(int i) const { return host_[i]; }

  // The device data of input i: itself when it is on the device, else a copy.
  const void* device_copy(int i, const CortexTensor& t, cudaStream_t stream) {
    if (t.device == CORTEX_DEVICE_CUDA) return t.data;
    const size_t bytes = tensor_bytes(t);
    if (inputs_.size() <= static_cast<size_t>(i)) inputs_.resize(i + 1);
    void* dst = inputs_[i].reserve(bytes, current_device());
    check(cudaMemcpyAsync(dst, t.data, bytes, cudaMemcpyHostToDevice, stream), "copying an input to the device");
    return dst;
  }

  // Sends the prepared positions and the batches to the device in one copy. An invalid visit (not a topological
  // order) runs one position per batch, in order: the exact sequential semantics.
  DeviceSchedule upload_schedule(const Schedule& sched, int64_t listed, const int32_t* case_id, const int64_t* node,
                                 const int64_t* position, const int64_t* reads, int64_t K, const int64_t* slots,
                                 int64_t J, cudaStream_t stream, const int64_t* member_offsets = nullptr,
                                 const int64_t* members = nullptr) {
    // Not a topological visit: the exact sequential semantics, one position a batch and a level (linearize.h).
    const Schedule* batches_of = &sched;
    if (!sched.valid) {
      sequential_.make_sequential(listed, case_id);
      batches_of = &sequential_;
    }
    const int64_t batches = batches_of->num_batches();
    std::vector<int64_t>& offsets = offsets_;
    offsets.assign(batches_of->batch_offsets.begin(), batches_of->batch_offsets.end());
    const std::vector<int32_t>& cases = batches_of->batch_case;
    const std::vector<int32_t>& levels = batches_of->batch_level;
    const int64_t* order = batches_of->positions.data();
    hazards_.assign(batches, 0);
    for (int64_t b = 0; b < batches; ++b) {  // the hazard test the CPU kernels run too (kernel_support.h)
      hazards_[b] = reads_own_row(node, reads, K, order + offsets[b], offsets[b + 1] - offsets[b], member_offsets,
                                  members) ? 1 : 0;
    }
    DeviceSchedule out;
    out.num_batches = batches;
    for (int64_t b = 0; b < batches; ++b) out.max_batch = std::max(out.max_batch, offsets[b + 1] - offsets[b]);
    const int64_t n_int64 = 2 * listed + listed * K + listed * J + listed + (batches + 1);
    const size_t bytes = sizeof(int64_t) * n_int64 + sizeof(int32_t) * 3 * (batches + 1);
    int64_t* host = static_cast<int64_t*>(staging_.reserve(bytes));
    int64_t* at = host;
    auto put = [&](const int64_t* src, int64_t n) {
      if (n > 0) std::memcpy(at, src, sizeof(int64_t) * n);
      at += n;
    };
    // In schedule order: batch b's positions are rows batch_offset[b] .. batch_offset[b + 1] of every array, so the
    // device reads a position's rows with no indirection (one dependent load fewer per access).
    for (int64_t i = 0; i < listed; ++i) at[i] = node[order[i]];
    at += listed;
    for (int64_t i = 0; i < listed; ++i) at[i] = position[order[i]];
    at += listed;
    for (int64_t i = 0; i < listed; ++i) std::memcpy(at + i * K, reads + order[i] * K, sizeof(int64_t) * K);
    at += listed * K;
    for (int64_t i = 0; i < listed; ++i) std::memcpy(at + i * J, slots + order[i] * J, sizeof(int64_t) * J);
    at += listed * J;
    put(order, listed);
    put(offsets.data(), batches + 1);
    if (batches > 0) std::memcpy(at, cases.data(), sizeof(int32_t) * batches);
    if (batches > 0) std::memcpy(reinterpret_cast<int32_t*>(at) + batches + 1, hazards_.data(), sizeof(int32_t) * batches);
    if (batches > 0) std::memcpy(reinterpret_cast<int32_t*>(at) + 2 * (batches + 1), levels.data(), sizeof(int32_t) * batches);
    int64_t* device = static_cast<int64_t*>(schedule_.reserve(bytes, current_device()));
    check(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, stream), "uploading the schedule");
    int64_t* d = device;
    out.node = d; d += listed;
    out.position = d; d += listed;
    out.reads = d; d += listed * K;
    out.slots = d; d += listed * J;
    out.positions = d; d += listed;
    out.batch_offset = d; d += batches + 1;
    out.batch_case = reinterpret_cast<const int32_t*>(d);
    out.batch_hazard = out.batch_case + batches + 1;
    out.batch_level = out.batch_case + 2 * (batches + 1);
    order_ = order;
    listed_ = listed;
    return out;
  }

  // Sends the child sets' members and each position's [begin, end) per set (S a position), in the order of the
  // schedule upload_schedule sent last.
  void upload_sets(const int64_t* begin, const int64_t* end, int64_t S, const std::vector<int64_t>& members,
                   const int64_t** out_begin, const int64_t** out_end, const int64_t** out_members,
                   cudaStream_t stream) {
    const int64_t listed = listed_;
    const int64_t M = static_cast<int64_t>(members.size());
    const size_t bytes = sizeof(int64_t) * (2 * listed * S + M + 1);
    int64_t* host = static_cast<int64_t*>(set_staging_.reserve(bytes));
    for (int64_t i = 0; i < listed; ++i) {
      std::memcpy(host + i * S, begin + order_[i] * S, sizeof(int64_t) * S);
      std::memcpy(host + (listed + i) * S, end + order_[i] * S, sizeof(int64_t) * S);
    }
    if (M > 0) std::memcpy(host + 2 * listed * S, members.data(), sizeof(int64_t) * M);
    int64_t* device = static_cast<int64_t*>(sets_.reserve(bytes, current_device()));
    check(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, stream), "uploading the child sets");
    *out_begin = device;
    *out_end = device + listed * S;
    *out_members = device + 2 * listed * S;
  }

  // One device allocation for the per-batch buffers: buffer k holds max_batch rows of widths[k] floats.
  void buffers(const int64_t* widths, int n, int64_t max_batch, float** out) {
    int64_t total = 0;
    for (int k = 0; k < n; ++k) total += std::max<int64_t>(max_batch, 1) * widths[k];
    float* base = static_cast<float*>(buffers_.reserve(sizeof(float) * std::max<int64_t>(total, 1), current_device()));
    for (int k = 0; k < n; ++k) {
      out[k] = base;
      base += std::max<int64_t>(max_batch, 1) * widths[k];
    }
  }

  float* projection(int k, int64_t floats) {
    if (projections_.size() <= static_cast<size_t>(k)) projections_.resize(k + 1);
    return static_cast<float*>(projections_[k].reserve(sizeof(float) * std::max<int64_t>(floats, 1), current_device()));
  }

  // Chooses which weights stay in shared memory (largest first, within the block's limit), then launches the
  // persistent kernel on one block per SM. shapes: n_weights quads (N, K, S, W): S == 0, the block's range of N
  // columns; else the S column offsets + j of a fused epilogue's elements j < W. resident: out, float offsets.
  void launch(const void* kernel, void* params, const int64_t* shapes, int n_weights, int64_t* resident,
              cudaStream_t stream) {
    const int device = current_device();
    int sms = 0, max_smem = 0, cooperative = 0;
    check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
    check(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "cudaDeviceGetAttribute");
    check(cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device), "cudaDeviceGetAttribute");
    if (!cooperative) throw KernelError("this GPU does not support cooperative launches");
    const int64_t budget = (max_smem - 4096) / static_cast<int64_t>(sizeof(float));
    auto need = [&](int w) {
      const int64_t N = shapes[4 * w], K = shapes[4 * w + 1], S = shapes[4 * w + 2], W = shapes[4 * w + 3];
      return S == 0 ? resident_floats(N, K, sms) : S * ((W + sms - 1) / sms) * K;
    };
    std::vector<int> by_size(n_weights);
    for (int w = 0; w < n_weights; ++w) by_size[w] = w;
    std::sort(by_size.begin(), by_size.end(), [&](int a, int b) { return need(a) > need(b); });
    int64_t used = 0;
    for (int w : by_size) {
      if (used + need(w) <= budget) {
        resident[w] = used;
        used += need(w);
      } else {
        resident[w] = -1;
      }
    }
    const size_t smem = sizeof(float) * used;
    if (smem != configured_smem_ || kernel != configured_kernel_) {
      check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
            "cudaFuncSetAttribute");
      int per_sm = 0;
      check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem), "occupancy");
      if (per_sm < 1) throw KernelError("the Cortex kernel does not fit on an SM");
      configured_smem_ = smem;
      configured_kernel_ = kernel;
    }
    void* args[] = {params};
    timer.start(stream);
    check(cudaLaunchCooperativeKernel(kernel, dim3(sms), dim3(kThreads), args, smem, stream), "launching the kernel");
    timer.stop(stream);
  }

  KernelTimer timer;  // the kernel alone, when profiling

  ~Runtime() = default;

 private:
  static int current_device() {
    int device = 0;
    check(cudaGetDevice(&device), "cudaGetDevice");
    return device;
  }

  static size_t aligned(size_t bytes) { return (bytes + 63) / 64 * 64; }

  static size_t tensor_bytes(const CortexTensor& t) {
    int64_t elements = 1;
    for (int32_t d = 0; d < t.rank; ++d) elements *= t.shape[d];
    const size_t item = t.dtype == CORTEX_FLOAT || t.dtype == CORTEX_INT32 ? 4 : t.dtype == CORTEX_BOOL ? 1 : 8;
    return static_cast<size_t>(elements) * item;
  }

  std::vector<const void*> host_;  // per input: its host data this run (host_copies)
  std::vector<DeviceBuffer> inputs_, projections_;
  DeviceBuffer schedule_, buffers_, sets_;
  PinnedBuffer staging_, set_staging_, host_staging_;
  const int64_t* order_ = nullptr;  // the schedule's positions in batch order (upload_schedule), for upload_sets
  int64_t listed_ = 0;
  std::vector<int64_t> offsets_;
  Schedule sequential_;  // the schedule of a visit that is not a topological order
  size_t configured_smem_ = static_cast<size_t>(-1);
  const void* configured_kernel_ = nullptr;
  std::vector<int32_t> hazards_;
};

}  // namespace cuda
}  // namespace cortex

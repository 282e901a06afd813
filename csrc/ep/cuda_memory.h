// GPU memory for the Cortex EP on an NVIDIA GPU: the allocators ONNX Runtime asks the factory for (device memory,
// pinned host memory) and the data transfer it copies tensors with. Each is a C-ABI struct of ORT's with a C++ body;
// CUDA comes through CudaApi (never linked).
#pragma once
#include <cstdint>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "cuda_api.h"
#include "ort_api.h"

namespace cortex_ep {

inline constexpr uint32_t kNvidiaVendorId = 0x10DE;

// Makes `device` current on this thread for the guard's life (CUDA allocations, events and copies belong to the
// current device), then restores the previous one.
class CudaDeviceGuard {
 public:
  CudaDeviceGuard(const CudaApi& cuda, int device);
  ~CudaDeviceGuard();
  CudaDeviceGuard(const CudaDeviceGuard&) = delete;
  CudaDeviceGuard& operator=(const CudaDeviceGuard&) = delete;
  CudaApi::Error error() const { return error_; }

 private:
  const CudaApi& cuda_;
  int previous_ = -1;
  CudaApi::Error error_ = 0;
};

// cudaMalloc (device) or cudaMallocHost (pinned) memory for one GPU, with a cache of freed blocks: ORT has no arena
// for a plugin EP's allocator, and cudaMalloc/cudaFree per tensor and run would cost more than a small kernel (and
// cudaFree synchronizes the device). Blocks are kept by rounded size and reused; Shrink and the destructor return
// them to CUDA. Thread-safe. Alloc returns null on failure (ORT reports it); nothing throws.
class CudaAllocator : public OrtAllocator {
 public:
  CudaAllocator(const CudaApi& cuda, const OrtMemoryInfo* info, int device, bool pinned);
  ~CudaAllocator();
  CudaAllocator(const CudaAllocator&) = delete;
  CudaAllocator& operator=(const CudaAllocator&) = delete;

 private:
  static void* ORT_API_CALL AllocImpl(OrtAllocator* this_ptr, size_t size) noexcept;
  static void ORT_API_CALL FreeImpl(OrtAllocator* this_ptr, void* p) noexcept;
  static const OrtMemoryInfo* ORT_API_CALL InfoImpl(const OrtAllocator* this_ptr) noexcept;
  static OrtStatus* ORT_API_CALL ShrinkImpl(OrtAllocator* this_ptr) noexcept;

  void* Allocate(size_t size);
  void Release(void* p);
  void ReleaseCached();  // with mutex_ held
  void FreeBlock(void* p);

  const CudaApi& cuda_;
  const OrtMemoryInfo* info_;  // owned by the factory, which outlives its allocators
  int device_;
  bool pinned_;
  std::mutex mutex_;
  std::unordered_map<void*, size_t> in_use_;   // block -> rounded size
  std::map<size_t, std::vector<void*>> free_;  // rounded size -> cached blocks
};

// Copies tensors between host memory (ORT's CPU memory, pinned memory) and NVIDIA GPU memory: cudaMemcpyAsync on the
// stream ORT gives (ORT synchronizes the stream before the data is used on the host), cudaMemcpy when it gives none.
// One instance per factory; ORT's Release is a no-op.
class CudaDataTransfer : public OrtDataTransferImpl {
 public:
  CudaDataTransfer(const Api& api, const CudaApi& cuda);

 private:
  static void ORT_API_CALL ReleaseImpl(OrtDataTransferImpl* this_ptr) noexcept;
  static bool ORT_API_CALL CanCopyImpl(const OrtDataTransferImpl* this_ptr, const OrtMemoryDevice* src,
                                       const OrtMemoryDevice* dst) noexcept;
  static OrtStatus* ORT_API_CALL CopyTensorsImpl(OrtDataTransferImpl* this_ptr, const OrtValue** src_tensors,
                                                 OrtValue** dst_tensors, OrtSyncStream** streams,
                                                 size_t num_tensors) noexcept;

  OrtStatus* Copy(const OrtValue* src, OrtValue* dst, OrtSyncStream* stream) const;
  bool IsNvidiaGpu(const OrtMemoryDevice* device) const;  // GPU memory or pinned memory of an NVIDIA GPU
  bool IsHostMemory(const OrtMemoryDevice* device) const;  // CPU memory or pinned (host accessible) memory

  Api api_;
  const CudaApi& cuda_;
};

}  // namespace cortex_ep

#include "cuda_memory.h"

#include <algorithm>
#include <string>

namespace cortex_ep {
namespace {

constexpr size_t kMinBlock = 256;
constexpr size_t kMaxCachedBytes = size_t(1) << 30;  // freed blocks beyond this go back to CUDA

// The size class of a request: at least 256 bytes, then four classes per power of two (at most 25% slack), so a
// stream of different tree sizes reuses a bounded set of blocks.
size_t SizeClass(size_t size) {
  if (size <= kMinBlock) return kMinBlock;
  size_t power = kMinBlock;
  while (power * 2 <= size) power *= 2;  // power <= size < 2 * power
  const size_t step = power / 4;
  return (size + step - 1) / step * step;
}

}  // namespace

CudaDeviceGuard::CudaDeviceGuard(const CudaApi& cuda, int device) : cuda_(cuda) {
  int current = -1;
  error_ = cuda_.GetDevice(&current);
  if (error_ != 0) return;
  if (current != device) {
    error_ = cuda_.SetDevice(device);
    if (error_ == 0) previous_ = current;
  }
}

CudaDeviceGuard::~CudaDeviceGuard() {
  if (previous_ >= 0) cuda_.SetDevice(previous_);
}

// ---- CudaAllocator ---------------------------------------------------------------------------------------------

CudaAllocator::CudaAllocator(const CudaApi& cuda, const OrtMemoryInfo* info, int device, bool pinned)
    : OrtAllocator{}, cuda_(cuda), info_(info), device_(device), pinned_(pinned) {
  version = ORT_API_VERSION;
  Alloc = AllocImpl;
  Free = FreeImpl;
  Info = InfoImpl;
  Reserve = AllocImpl;
  GetStats = nullptr;
  AllocOnStream = nullptr;
  Shrink = ShrinkImpl;
}

CudaAllocator::~CudaAllocator() {
  std::lock_guard<std::mutex> lock(mutex_);
  ReleaseCached();
  // Blocks still in use when ORT releases the allocator are ORT's to leak; freeing them could free live memory.
}

void* ORT_API_CALL CudaAllocator::AllocImpl(OrtAllocator* this_ptr, size_t size) noexcept {
  try {
    return static_cast<CudaAllocator*>(this_ptr)->Allocate(size);
  } catch (...) {
    return nullptr;
  }
}

void ORT_API_CALL CudaAllocator::FreeImpl(OrtAllocator* this_ptr, void* p) noexcept {
  try {
    static_cast<CudaAllocator*>(this_ptr)->Release(p);
  } catch (...) {
  }
}

const OrtMemoryInfo* ORT_API_CALL CudaAllocator::InfoImpl(const OrtAllocator* this_ptr) noexcept {
  return static_cast<const CudaAllocator*>(this_ptr)->info_;
}

OrtStatus* ORT_API_CALL CudaAllocator::ShrinkImpl(OrtAllocator* this_ptr) noexcept {
  auto* self = static_cast<CudaAllocator*>(this_ptr);
  try {
    std::lock_guard<std::mutex> lock(self->mutex_);
    self->ReleaseCached();
  } catch (...) {
  }
  return nullptr;
}

void* CudaAllocator::Allocate(size_t size) {
  const size_t rounded = SizeClass(size);
  std::lock_guard<std::mutex> lock(mutex_);
  void* block = nullptr;
  auto cached = free_.find(rounded);
  if (cached != free_.end() && !cached->second.empty()) {
    block = cached->second.back();
    cached->second.pop_back();
  } else {
    CudaDeviceGuard guard(cuda_, device_);
    if (guard.error() != 0) return nullptr;
    CudaApi::Error error = pinned_ ? cuda_.MallocHost(&block, rounded) : cuda_.Malloc(&block, rounded);
    if (error != 0 && !free_.empty()) {  // out of memory with blocks cached: give them back and try once more
      ReleaseCached();
      error = pinned_ ? cuda_.MallocHost(&block, rounded) : cuda_.Malloc(&block, rounded);
    }
    if (error != 0) return nullptr;
  }
  in_use_[block] = rounded;
  return block;
}

void CudaAllocator::Release(void* p) {
  if (p == nullptr) return;
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = in_use_.find(p);
  if (it == in_use_.end()) return;  // not ours: never hand a foreign pointer to cudaFree
  const size_t rounded = it->second;
  in_use_.erase(it);
  size_t cached = 0;
  for (const auto& [bytes, blocks] : free_) cached += bytes * blocks.size();
  if (cached + rounded > kMaxCachedBytes) {
    FreeBlock(p);
    return;
  }
  free_[rounded].push_back(p);
}

void CudaAllocator::ReleaseCached() {
  for (auto& [bytes, blocks] : free_) {
    for (void* block : blocks) FreeBlock(block);
  }
  free_.clear();
}

void CudaAllocator::FreeBlock(void* p) {
  // Errors are ignored: at process exit the runtime may already be gone, and there is nobody to tell.
  CudaDeviceGuard guard(cuda_, device_);
  if (pinned_) {
    cuda_.FreeHost(p);
  } else {
    cuda_.Free(p);
  }
}

// ---- CudaDataTransfer ------------------------------------------------------------------------------------------

CudaDataTransfer::CudaDataTransfer(const Api& api, const CudaApi& cuda)
    : OrtDataTransferImpl{}, api_(api), cuda_(cuda) {
  ort_version_supported = ORT_API_VERSION;
  Release = ReleaseImpl;
  CanCopy = CanCopyImpl;
  CopyTensors = CopyTensorsImpl;
}

void ORT_API_CALL CudaDataTransfer::ReleaseImpl(OrtDataTransferImpl*) noexcept {}  // the factory owns it

bool CudaDataTransfer::IsNvidiaGpu(const OrtMemoryDevice* device) const {
  return device != nullptr && api_.ep.MemoryDevice_GetDeviceType(device) == OrtMemoryInfoDeviceType_GPU &&
         api_.ep.MemoryDevice_GetVendorId(device) == kNvidiaVendorId;
}

bool CudaDataTransfer::IsHostMemory(const OrtMemoryDevice* device) const {
  return device != nullptr && (api_.ep.MemoryDevice_GetDeviceType(device) == OrtMemoryInfoDeviceType_CPU ||
                               api_.ep.MemoryDevice_GetMemoryType(device) == OrtDeviceMemoryType_HOST_ACCESSIBLE);
}

bool ORT_API_CALL CudaDataTransfer::CanCopyImpl(const OrtDataTransferImpl* this_ptr, const OrtMemoryDevice* src,
                                                const OrtMemoryDevice* dst) noexcept {
  const auto* self = static_cast<const CudaDataTransfer*>(this_ptr);
  // Between the CPU and an NVIDIA GPU (its memory or its pinned memory) or between NVIDIA GPUs; CPU to CPU is ORT's.
  const auto known = [self](const OrtMemoryDevice* device) {
    return self->IsNvidiaGpu(device) ||
           (device != nullptr && self->api_.ep.MemoryDevice_GetDeviceType(device) == OrtMemoryInfoDeviceType_CPU);
  };
  return known(src) && known(dst) && (self->IsNvidiaGpu(src) || self->IsNvidiaGpu(dst));
}

OrtStatus* ORT_API_CALL CudaDataTransfer::CopyTensorsImpl(OrtDataTransferImpl* this_ptr, const OrtValue** src_tensors,
                                                          OrtValue** dst_tensors, OrtSyncStream** streams,
                                                          size_t num_tensors) noexcept {
  auto* self = static_cast<CudaDataTransfer*>(this_ptr);
  CORTEX_API_BEGIN
  for (size_t i = 0; i < num_tensors; ++i) {
    CORTEX_RETURN_IF_ERROR(self->Copy(src_tensors[i], dst_tensors[i], streams != nullptr ? streams[i] : nullptr));
  }
  return nullptr;
  CORTEX_API_END(self->api_)
}

OrtStatus* CudaDataTransfer::Copy(const OrtValue* src, OrtValue* dst, OrtSyncStream* stream) const {
  const OrtMemoryDevice* src_device = api_.ep.Value_GetMemoryDevice(src);
  const OrtMemoryDevice* dst_device = api_.ep.Value_GetMemoryDevice(dst);
  if (src_device == nullptr || dst_device == nullptr) {
    return MakeStatus(api_, ORT_INVALID_ARGUMENT, "Cortex EP data transfer: only tensors can be copied");
  }
  size_t bytes = 0, dst_bytes = 0;
  CORTEX_RETURN_IF_ERROR(api_.ort.GetTensorSizeInBytes(src, &bytes));
  CORTEX_RETURN_IF_ERROR(api_.ort.GetTensorSizeInBytes(dst, &dst_bytes));
  if (bytes != dst_bytes) {
    return MakeStatus(api_, ORT_INVALID_ARGUMENT,
                      "Cortex EP data transfer: source has " + std::to_string(bytes) + " bytes, destination " +
                          std::to_string(dst_bytes));
  }
  if (bytes == 0) return nullptr;
  const void* src_data = nullptr;
  void* dst_data = nullptr;
  CORTEX_RETURN_IF_ERROR(api_.ort.GetTensorData(src, &src_data));
  CORTEX_RETURN_IF_ERROR(api_.ort.GetTensorMutableData(dst, &dst_data));
  if (src_data == dst_data) return nullptr;

  const bool src_host = IsHostMemory(src_device), dst_host = IsHostMemory(dst_device);
  const int kind = src_host ? (dst_host ? CudaApi::kHostToHost : CudaApi::kHostToDevice)
                            : (dst_host ? CudaApi::kDeviceToHost : CudaApi::kDeviceToDevice);
  // The GPU the copy belongs to: the destination's when it is on a GPU, else the source's.
  const OrtMemoryDevice* gpu = IsNvidiaGpu(dst_device) ? dst_device : src_device;
  const int device = static_cast<int>(api_.ep.MemoryDevice_GetDeviceId(gpu));
  CudaDeviceGuard guard(cuda_, device);
  if (guard.error() != 0) {
    return MakeStatus(api_, ORT_EP_FAIL,
                      "Cortex EP data transfer: " + cuda_.Describe(("cudaSetDevice(" + std::to_string(device) + ")").c_str(),
                                                                   guard.error()));
  }
  void* handle = stream != nullptr ? api_.ort.SyncStream_GetHandle(stream) : nullptr;
  CudaApi::Error error = stream != nullptr ? cuda_.MemcpyAsync(dst_data, src_data, bytes, kind, handle)
                                           : cuda_.Memcpy(dst_data, src_data, bytes, kind);
  if (error == 0 && stream == nullptr && kind != CudaApi::kDeviceToHost) {
    // Without a stream the copy must be complete on return, but cudaMemcpy returns before the DMA from pageable
    // memory (and device to device copies) finish: wait for the legacy default stream it ran on.
    error = cuda_.StreamSynchronize(nullptr);
  }
  if (error != 0) {
    return MakeStatus(api_, ORT_EP_FAIL,
                      "Cortex EP data transfer: " +
                          cuda_.Describe(stream != nullptr ? "cudaMemcpyAsync" : "cudaMemcpy", error) + " (" +
                          std::to_string(bytes) + " bytes, kind " + std::to_string(kind) + ")");
  }
  return nullptr;
}

}  // namespace cortex_ep

// The factory ONNX Runtime gets from CreateEpFactories: offers the Cortex EP on the CPU and, where the CUDA runtime
// sees NVIDIA GPUs, on each of them (with device and pinned allocators, a data transfer and sync streams); creates
// EPs for the device a session selected.
#pragma once
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cuda_api.h"
#include "ort_api.h"

namespace cortex_ep {

class CudaDataTransfer;

// ep_metadata key of a GPU OrtEpDevice: the CUDA device ordinal the EP runs on.
inline constexpr const char* kCudaDeviceIdKey = "cuda_device_id";
// ep_metadata key of the CPU OrtEpDevice where no GPU is offered: why (no CUDA runtime, no GPU, ...).
inline constexpr const char* kCudaUnavailableKey = "cuda_unavailable";

class CortexEpFactory : public OrtEpFactory {
 public:
  explicit CortexEpFactory(const Api& api);
  ~CortexEpFactory();
  CortexEpFactory(const CortexEpFactory&) = delete;
  CortexEpFactory& operator=(const CortexEpFactory&) = delete;

 private:
  struct MemoryInfoDeleter {
    const OrtApi* ort;
    void operator()(OrtMemoryInfo* info) const { ort->ReleaseMemoryInfo(info); }
  };
  using MemoryInfoPtr = std::unique_ptr<OrtMemoryInfo, MemoryInfoDeleter>;

  // One CUDA device the factory offers; its memory infos are registered with the OrtEpDevice (ORT keeps the
  // pointers, so they live as long as the factory).
  struct Gpu {
    int ordinal = 0;
    MemoryInfoPtr device_memory;  // GPU, NVIDIA, ordinal, DEFAULT
    MemoryInfoPtr pinned_memory;  // GPU, NVIDIA, ordinal, HOST_ACCESSIBLE
  };

  static const char* ORT_API_CALL GetNameImpl(const OrtEpFactory* this_ptr) noexcept;
  static const char* ORT_API_CALL GetVendorImpl(const OrtEpFactory* this_ptr) noexcept;
  static uint32_t ORT_API_CALL GetVendorIdImpl(const OrtEpFactory* this_ptr) noexcept;
  static const char* ORT_API_CALL GetVersionImpl(const OrtEpFactory* this_ptr) noexcept;
  static OrtStatus* ORT_API_CALL GetSupportedDevicesImpl(OrtEpFactory* this_ptr, const OrtHardwareDevice* const* devices,
                                                         size_t num_devices, OrtEpDevice** ep_devices,
                                                         size_t max_ep_devices, size_t* num_ep_devices) noexcept;
  static OrtStatus* ORT_API_CALL CreateEpImpl(OrtEpFactory* this_ptr, const OrtHardwareDevice* const* devices,
                                              const OrtKeyValuePairs* const* ep_metadata, size_t num_devices,
                                              const OrtSessionOptions* session_options, const OrtLogger* logger,
                                              OrtEp** ep) noexcept;
  static void ORT_API_CALL ReleaseEpImpl(OrtEpFactory* this_ptr, OrtEp* ep) noexcept;
  static OrtStatus* ORT_API_CALL CreateAllocatorImpl(OrtEpFactory* this_ptr, const OrtMemoryInfo* memory_info,
                                                     const OrtKeyValuePairs* allocator_options,
                                                     OrtAllocator** allocator) noexcept;
  static void ORT_API_CALL ReleaseAllocatorImpl(OrtEpFactory* this_ptr, OrtAllocator* allocator) noexcept;
  static OrtStatus* ORT_API_CALL CreateDataTransferImpl(OrtEpFactory* this_ptr,
                                                        OrtDataTransferImpl** data_transfer) noexcept;
  static bool ORT_API_CALL IsStreamAwareImpl(const OrtEpFactory* this_ptr) noexcept;
  static OrtStatus* ORT_API_CALL CreateSyncStreamForDeviceImpl(OrtEpFactory* this_ptr,
                                                               const OrtMemoryDevice* memory_device,
                                                               const OrtKeyValuePairs* stream_options,
                                                               OrtSyncStreamImpl** stream) noexcept;

  OrtStatus* SupportedDevices(const OrtHardwareDevice* const* devices, size_t num_devices, OrtEpDevice** ep_devices,
                              size_t max_ep_devices, size_t* num_ep_devices);
  // Creates the OrtEpDevice for CUDA device `ordinal` on `hardware` (with its allocator infos).
  OrtStatus* CreateGpuEpDevice(const OrtHardwareDevice* hardware, int ordinal, OrtEpDevice** ep_device);
  OrtStatus* NewEp(const OrtHardwareDevice* const* devices, const OrtKeyValuePairs* const* ep_metadata,
                      size_t num_devices, const OrtSessionOptions* session_options, const OrtLogger* logger,
                      OrtEp** ep);
  const Gpu* FindGpu(int ordinal) const;  // with mutex_ held

  Api api_;
  const CudaApi* cuda_;  // null: no usable CUDA runtime or no GPU (the factory offers the CPU only)
  std::unique_ptr<CudaDataTransfer> data_transfer_;
  mutable std::mutex mutex_;
  std::vector<std::unique_ptr<Gpu>> gpus_;
  std::vector<OrtHardwareDevice*> created_hardware_;  // GPUs ORT's discovery missed, created here; released at the end
};

}  // namespace cortex_ep

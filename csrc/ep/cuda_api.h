// The CUDA runtime as the Cortex EP uses it: a table of the few functions it needs, resolved at run time from
// libcudart with dlopen. The EP never links CUDA, so it loads (and runs CPU kernels) on machines without it; where
// libcudart is absent or sees no GPU, CudaApi::Get() is null and the factory offers the CPU device only.
//
// The types are our own stand-ins for the runtime's (an int for cudaError_t, void* for cudaStream_t and cudaEvent_t;
// the enum values below are the runtime's, stable across CUDA 11-13). Generated kernels link their own copy of the
// runtime; streams, events and device pointers are the driver's objects, shared by every runtime in the process.
#pragma once
#include <cstddef>
#include <string>

namespace cortex_ep {

struct CudaApi {
  using Error = int;  // cudaError_t; 0 is cudaSuccess
  using Stream = void*;  // cudaStream_t; nullptr is the legacy default stream
  using Event = void*;   // cudaEvent_t

  enum MemcpyKind { kHostToHost = 0, kHostToDevice = 1, kDeviceToHost = 2, kDeviceToDevice = 3 };
  static constexpr unsigned kStreamNonBlocking = 0x01;   // cudaStreamNonBlocking
  static constexpr unsigned kEventDisableTiming = 0x02;  // cudaEventDisableTiming
  static constexpr int kAttrComputeCapabilityMajor = 75;  // cudaDevAttrComputeCapabilityMajor
  static constexpr int kAttrComputeCapabilityMinor = 76;  // cudaDevAttrComputeCapabilityMinor

  Error (*GetDeviceCount)(int* count);
  Error (*SetDevice)(int device);
  Error (*GetDevice)(int* device);
  Error (*DeviceGetAttribute)(int* value, int attribute, int device);
  Error (*DeviceGetPCIBusId)(char* bus_id, int length, int device);
  Error (*Malloc)(void** pointer, size_t bytes);
  Error (*Free)(void* pointer);
  Error (*MallocHost)(void** pointer, size_t bytes);
  Error (*FreeHost)(void* pointer);
  Error (*Memcpy)(void* dst, const void* src, size_t bytes, int kind);
  Error (*MemcpyAsync)(void* dst, const void* src, size_t bytes, int kind, Stream stream);
  Error (*StreamCreateWithFlags)(Stream* stream, unsigned flags);
  Error (*StreamDestroy)(Stream stream);
  Error (*StreamSynchronize)(Stream stream);
  Error (*StreamWaitEvent)(Stream stream, Event event, unsigned flags);
  Error (*EventCreateWithFlags)(Event* event, unsigned flags);
  Error (*EventDestroy)(Event event);
  Error (*EventRecord)(Event event, Stream stream);
  Error (*EventSynchronize)(Event event);
  const char* (*GetErrorString)(Error error);
  const char* (*GetErrorName)(Error error);

  int device_count = 0;  // GPUs the runtime sees (CUDA_VISIBLE_DEVICES applies)
  std::string library;   // the libcudart that was loaded

  // The runtime, loaded once per process; null when there is none or it sees no GPU (the reason: WhyUnavailable).
  // CORTEX_DISABLE_CUDA=1 makes it null without touching CUDA; CORTEX_CUDART names the library to load.
  static const CudaApi* Get();
  static const std::string& WhyUnavailable();

  // "<what>: <error name>: <error string>" for messages.
  std::string Describe(const char* what, Error error) const;
};

}  // namespace cortex_ep

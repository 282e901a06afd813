#include "cuda_stream.h"

#include <string>

#include "cuda_memory.h"

namespace cortex_ep {
namespace {

OrtStatus* CudaFailure(const Api& api, const CudaApi& cuda, const char* what, CudaApi::Error error) {
  return MakeStatus(api, ORT_EP_FAIL, "Cortex EP: " + cuda.Describe(what, error));
}

}  // namespace

// ---- CudaSyncStream --------------------------------------------------------------------------------------------

CudaSyncStream::CudaSyncStream(const Api& api, const CudaApi& cuda, int device, CudaApi::Stream stream)
    : OrtSyncStreamImpl{}, api_(api), cuda_(cuda), device_(device), stream_(stream) {
  ort_version_supported = ORT_API_VERSION;
  Release = ReleaseImpl;
  GetHandle = GetHandleImpl;
  CreateNotification = CreateNotificationImpl;
  Flush = FlushImpl;
  OnSessionRunEnd = OnSessionRunEndImpl;
}

OrtStatus* CudaSyncStream::Create(const Api& api, const CudaApi& cuda, int device, CudaSyncStream** stream) {
  *stream = nullptr;
  CudaDeviceGuard guard(cuda, device);
  if (guard.error() != 0) return CudaFailure(api, cuda, "cudaSetDevice", guard.error());
  CudaApi::Stream handle = nullptr;
  if (const CudaApi::Error error = cuda.StreamCreateWithFlags(&handle, CudaApi::kStreamNonBlocking)) {
    return CudaFailure(api, cuda, "cudaStreamCreateWithFlags", error);
  }
  *stream = new CudaSyncStream(api, cuda, device, handle);
  return nullptr;
}

CudaSyncStream::~CudaSyncStream() {
  CudaDeviceGuard guard(cuda_, device_);
  cuda_.StreamDestroy(stream_);  // work still queued completes first (CUDA's rule); errors at exit are moot
}

void ORT_API_CALL CudaSyncStream::ReleaseImpl(OrtSyncStreamImpl* this_ptr) noexcept {
  delete static_cast<CudaSyncStream*>(this_ptr);
}

void* ORT_API_CALL CudaSyncStream::GetHandleImpl(OrtSyncStreamImpl* this_ptr) noexcept {
  return static_cast<CudaSyncStream*>(this_ptr)->stream_;
}

OrtStatus* ORT_API_CALL CudaSyncStream::CreateNotificationImpl(OrtSyncStreamImpl* this_ptr,
                                                               OrtSyncNotificationImpl** notification) noexcept {
  auto* self = static_cast<CudaSyncStream*>(this_ptr);
  *notification = nullptr;
  CORTEX_API_BEGIN
  CudaNotification* created = nullptr;
  CORTEX_RETURN_IF_ERROR(CudaNotification::Create(self->api_, self->cuda_, self->device_, self->stream_, &created));
  *notification = created;
  return nullptr;
  CORTEX_API_END(self->api_)
}

OrtStatus* ORT_API_CALL CudaSyncStream::FlushImpl(OrtSyncStreamImpl* this_ptr) noexcept {
  auto* self = static_cast<CudaSyncStream*>(this_ptr);
  if (const CudaApi::Error error = self->cuda_.StreamSynchronize(self->stream_)) {
    return CudaFailure(self->api_, self->cuda_, "cudaStreamSynchronize", error);
  }
  return nullptr;
}

OrtStatus* ORT_API_CALL CudaSyncStream::OnSessionRunEndImpl(OrtSyncStreamImpl*) noexcept {
  return nullptr;  // nothing is tied to a run: Cortex kernels finish their work before they return
}

// ---- CudaNotification ------------------------------------------------------------------------------------------

CudaNotification::CudaNotification(const Api& api, const CudaApi& cuda, int device, CudaApi::Stream stream,
                                   CudaApi::Event event)
    : OrtSyncNotificationImpl{}, api_(api), cuda_(cuda), device_(device), stream_(stream), event_(event) {
  ort_version_supported = ORT_API_VERSION;
  Release = ReleaseImpl;
  Activate = ActivateImpl;
  WaitOnDevice = WaitOnDeviceImpl;
  WaitOnHost = WaitOnHostImpl;
}

OrtStatus* CudaNotification::Create(const Api& api, const CudaApi& cuda, int device, CudaApi::Stream stream,
                                    CudaNotification** notification) {
  *notification = nullptr;
  CudaDeviceGuard guard(cuda, device);  // an event belongs to the device current when it is created
  if (guard.error() != 0) return CudaFailure(api, cuda, "cudaSetDevice", guard.error());
  CudaApi::Event event = nullptr;
  if (const CudaApi::Error error = cuda.EventCreateWithFlags(&event, CudaApi::kEventDisableTiming)) {
    return CudaFailure(api, cuda, "cudaEventCreateWithFlags", error);
  }
  *notification = new CudaNotification(api, cuda, device, stream, event);
  return nullptr;
}

CudaNotification::~CudaNotification() { cuda_.EventDestroy(event_); }

void ORT_API_CALL CudaNotification::ReleaseImpl(OrtSyncNotificationImpl* this_ptr) noexcept {
  delete static_cast<CudaNotification*>(this_ptr);
}

OrtStatus* ORT_API_CALL CudaNotification::ActivateImpl(OrtSyncNotificationImpl* this_ptr) noexcept {
  auto* self = static_cast<CudaNotification*>(this_ptr);
  CudaDeviceGuard guard(self->cuda_, self->device_);
  if (const CudaApi::Error error = self->cuda_.EventRecord(self->event_, self->stream_)) {
    return CudaFailure(self->api_, self->cuda_, "cudaEventRecord", error);
  }
  return nullptr;
}

OrtStatus* ORT_API_CALL CudaNotification::WaitOnDeviceImpl(OrtSyncNotificationImpl* this_ptr,
                                                           OrtSyncStream* consumer_stream) noexcept {
  auto* self = static_cast<CudaNotification*>(this_ptr);
  // The consumer is a GPU stream (ORT registers this wait for GPU to GPU only); its handle is a cudaStream_t,
  // whichever EP made it. No handle: the legacy default stream.
  void* consumer = consumer_stream != nullptr ? self->api_.ort.SyncStream_GetHandle(consumer_stream) : nullptr;
  if (const CudaApi::Error error = self->cuda_.StreamWaitEvent(consumer, self->event_, 0)) {
    return CudaFailure(self->api_, self->cuda_, "cudaStreamWaitEvent", error);
  }
  return nullptr;
}

OrtStatus* ORT_API_CALL CudaNotification::WaitOnHostImpl(OrtSyncNotificationImpl* this_ptr) noexcept {
  auto* self = static_cast<CudaNotification*>(this_ptr);
  if (const CudaApi::Error error = self->cuda_.EventSynchronize(self->event_)) {
    return CudaFailure(self->api_, self->cuda_, "cudaEventSynchronize", error);
  }
  return nullptr;
}

}  // namespace cortex_ep

// The sync stream ONNX Runtime runs the Cortex EP's GPU nodes and copies on: a cudaStream_t, with notifications
// (cudaEvent_t) that let other streams, or the host, wait for the work queued on it so far.
#pragma once
#include "cuda_api.h"
#include "ort_api.h"

namespace cortex_ep {

class CudaSyncStream : public OrtSyncStreamImpl {
 public:
  // A new non-blocking stream on `device`; on failure returns the error and sets *stream to null.
  static OrtStatus* Create(const Api& api, const CudaApi& cuda, int device, CudaSyncStream** stream);
  ~CudaSyncStream();
  CudaSyncStream(const CudaSyncStream&) = delete;
  CudaSyncStream& operator=(const CudaSyncStream&) = delete;

 private:
  CudaSyncStream(const Api& api, const CudaApi& cuda, int device, CudaApi::Stream stream);

  static void ORT_API_CALL ReleaseImpl(OrtSyncStreamImpl* this_ptr) noexcept;
  static void* ORT_API_CALL GetHandleImpl(OrtSyncStreamImpl* this_ptr) noexcept;
  static OrtStatus* ORT_API_CALL CreateNotificationImpl(OrtSyncStreamImpl* this_ptr,
                                                        OrtSyncNotificationImpl** notification) noexcept;
  static OrtStatus* ORT_API_CALL FlushImpl(OrtSyncStreamImpl* this_ptr) noexcept;
  static OrtStatus* ORT_API_CALL OnSessionRunEndImpl(OrtSyncStreamImpl* this_ptr) noexcept;

  Api api_;
  const CudaApi& cuda_;
  int device_;
  CudaApi::Stream stream_;
};

// A point in a CudaSyncStream's work: Activate records it; WaitOnDevice makes another stream wait for it, WaitOnHost
// blocks the calling thread until it is reached.
class CudaNotification : public OrtSyncNotificationImpl {
 public:
  static OrtStatus* Create(const Api& api, const CudaApi& cuda, int device, CudaApi::Stream stream,
                           CudaNotification** notification);
  ~CudaNotification();
  CudaNotification(const CudaNotification&) = delete;
  CudaNotification& operator=(const CudaNotification&) = delete;

 private:
  CudaNotification(const Api& api, const CudaApi& cuda, int device, CudaApi::Stream stream, CudaApi::Event event);

  static void ORT_API_CALL ReleaseImpl(OrtSyncNotificationImpl* this_ptr) noexcept;
  static OrtStatus* ORT_API_CALL ActivateImpl(OrtSyncNotificationImpl* this_ptr) noexcept;
  static OrtStatus* ORT_API_CALL WaitOnDeviceImpl(OrtSyncNotificationImpl* this_ptr,
                                                  OrtSyncStream* consumer_stream) noexcept;
  static OrtStatus* ORT_API_CALL WaitOnHostImpl(OrtSyncNotificationImpl* this_ptr) noexcept;

  Api api_;
  const CudaApi& cuda_;
  int device_;
  CudaApi::Stream stream_;  // the producer
  CudaApi::Event event_;
};

}  // namespace cortex_ep

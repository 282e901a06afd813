#include "cortex_ep_factory.h"

#include "cortex_ep.h"

namespace cortex_ep {

CortexEpFactory::CortexEpFactory(const Api& api) : OrtEpFactory{}, api_(api) {
  ort_version_supported = ORT_API_VERSION;
  GetName = GetNameImpl;
  GetVendor = GetVendorImpl;
  GetVendorId = GetVendorIdImpl;
  GetVersion = GetVersionImpl;
  GetSupportedDevices = GetSupportedDevicesImpl;
  CreateEp = CreateEpImpl;
  ReleaseEp = ReleaseEpImpl;
  // The EP runs in ORT's CPU memory: no allocator, data transfer or streams of its own.
  CreateAllocator = CreateAllocatorImpl;
  ReleaseAllocator = ReleaseAllocatorImpl;
  CreateDataTransfer = CreateDataTransferImpl;
  IsStreamAware = IsStreamAwareImpl;
}

const char* ORT_API_CALL CortexEpFactory::GetNameImpl(const OrtEpFactory*) noexcept { return kEpName; }
const char* ORT_API_CALL CortexEpFactory::GetVendorImpl(const OrtEpFactory*) noexcept { return "Cortex"; }
uint32_t ORT_API_CALL CortexEpFactory::GetVendorIdImpl(const OrtEpFactory*) noexcept { return 0; }
const char* ORT_API_CALL CortexEpFactory::GetVersionImpl(const OrtEpFactory*) noexcept { return "0.1.0"; }

OrtStatus* ORT_API_CALL CortexEpFactory::GetSupportedDevicesImpl(OrtEpFactory* this_ptr,
                                                                 const OrtHardwareDevice* const* devices,
                                                                 size_t num_devices, OrtEpDevice** ep_devices,
                                                                 size_t max_ep_devices,
                                                                 size_t* num_ep_devices) noexcept {
  auto* factory = static_cast<CortexEpFactory*>(this_ptr);
  const Api& api = factory->api_;
  *num_ep_devices = 0;
  for (size_t i = 0; i < num_devices && *num_ep_devices < max_ep_devices; ++i) {
    if (api.ort.HardwareDevice_Type(devices[i]) != OrtHardwareDeviceType_CPU) continue;
    OrtEpDevice* ep_device = nullptr;
    CORTEX_RETURN_IF_ERROR(api.ep.CreateEpDevice(factory, devices[i], nullptr, nullptr, &ep_device));
    ep_devices[(*num_ep_devices)++] = ep_device;
  }
  return nullptr;
}

OrtStatus* ORT_API_CALL CortexEpFactory::CreateEpImpl(OrtEpFactory* this_ptr, const OrtHardwareDevice* const*,
                                                      const OrtKeyValuePairs* const*, size_t num_devices,
                                                      const OrtSessionOptions*, const OrtLogger*,
                                                      OrtEp** ep) noexcept {
  auto* factory = static_cast<CortexEpFactory*>(this_ptr);
  *ep = nullptr;
  CORTEX_API_BEGIN
  if (num_devices == 0) return MakeStatus(factory->api_, ORT_INVALID_ARGUMENT, "Cortex EP: no device selected");
  *ep = new CortexEp(factory->api_);
  return nullptr;
  CORTEX_API_END(factory->api_)
}

void ORT_API_CALL CortexEpFactory::ReleaseEpImpl(OrtEpFactory*, OrtEp* ep) noexcept {
  delete static_cast<CortexEp*>(ep);
}

OrtStatus* ORT_API_CALL CortexEpFactory::CreateAllocatorImpl(OrtEpFactory* this_ptr, const OrtMemoryInfo*,
                                                             const OrtKeyValuePairs*,
                                                             OrtAllocator** allocator) noexcept {
  *allocator = nullptr;
  return MakeStatus(static_cast<CortexEpFactory*>(this_ptr)->api_, ORT_NOT_IMPLEMENTED,
                    "Cortex EP uses ONNX Runtime's CPU allocator and registers none of its own");
}

void ORT_API_CALL CortexEpFactory::ReleaseAllocatorImpl(OrtEpFactory*, OrtAllocator*) noexcept {}

OrtStatus* ORT_API_CALL CortexEpFactory::CreateDataTransferImpl(OrtEpFactory*,
                                                                OrtDataTransferImpl** data_transfer) noexcept {
  *data_transfer = nullptr;
  return nullptr;
}

bool ORT_API_CALL CortexEpFactory::IsStreamAwareImpl(const OrtEpFactory*) noexcept { return false; }

}  // namespace cortex_ep

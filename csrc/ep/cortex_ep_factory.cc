#include "cortex_ep_factory.h"

#include <vector>

#include "cortex_ep.h"
#include "trust_policy.h"

namespace cortex_ep {
namespace {

// Reads a session config entry; *present is false when the options have none of that key.
OrtStatus* ReadConfigEntry(const Api& api, const OrtSessionOptions* options, const char* key, std::string* value,
                           bool* present) {
  int has = 0;
  *present = false;
  CORTEX_RETURN_IF_ERROR(api.ort.HasSessionConfigEntry(options, key, &has));
  if (!has) return nullptr;
  size_t size = 0;
  CORTEX_RETURN_IF_ERROR(api.ort.GetSessionConfigEntry(options, key, nullptr, &size));
  std::vector<char> buffer(size + 1, '\0');
  size = buffer.size();
  CORTEX_RETURN_IF_ERROR(api.ort.GetSessionConfigEntry(options, key, buffer.data(), &size));
  *value = buffer.data();
  *present = true;
  return nullptr;
}

// The sha256 digests this session trusts explicitly (or the reason they cannot be read): the session config entry cortex.trusted_kernels and the EP
// option trusted_kernels (which ORT stores as ep.cortexexecutionprovider.trusted_kernels).
OrtStatus* SessionTrust(const Api& api, const OrtSessionOptions* options, TrustPolicy* policy) {
  std::vector<std::string> trusted;
  if (options != nullptr) {
    for (const char* key : {kTrustedKernelsConfigKey, kTrustedKernelsEpOption}) {
      std::string value;
      bool present = false;
      CORTEX_RETURN_IF_ERROR(ReadConfigEntry(api, options, key, &value, &present));
      if (!present) continue;
      std::vector<std::string> hashes;
      std::string error;
      if (!ParseHashList(value, &hashes, &error)) {
        // Reported when a Cortex node is compiled: ORT's Python API would hide a failure here behind its fallback
        // to the CPU EP.
        *policy = TrustPolicy({}, std::string("session option ") + key + ": " + error);
        return nullptr;
      }
      trusted.insert(trusted.end(), hashes.begin(), hashes.end());
    }
  }
  *policy = TrustPolicy(std::move(trusted), "");
  return nullptr;
}

}  // namespace

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
                                                      const OrtSessionOptions* session_options, const OrtLogger*,
                                                      OrtEp** ep) noexcept {
  auto* factory = static_cast<CortexEpFactory*>(this_ptr);
  *ep = nullptr;
  CORTEX_API_BEGIN
  if (num_devices == 0) return MakeStatus(factory->api_, ORT_INVALID_ARGUMENT, "Cortex EP: no device selected");
  TrustPolicy trust;
  CORTEX_RETURN_IF_ERROR(SessionTrust(factory->api_, session_options, &trust));
  *ep = new CortexEp(factory->api_, std::move(trust));
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

#include "cortex_ep_factory.h"

#include <cstdlib>
#include <vector>

#include "cortex_ep.h"
#include "cuda_memory.h"
#include "cuda_stream.h"
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

struct KeyValuePairsDeleter {
  const OrtApi* ort;
  void operator()(OrtKeyValuePairs* pairs) const { ort->ReleaseKeyValuePairs(pairs); }
};
using KeyValuePairsPtr = std::unique_ptr<OrtKeyValuePairs, KeyValuePairsDeleter>;

KeyValuePairsPtr NewKeyValuePairs(const Api& api) {
  OrtKeyValuePairs* pairs = nullptr;
  api.ort.CreateKeyValuePairs(&pairs);
  return KeyValuePairsPtr(pairs, KeyValuePairsDeleter{&api.ort});
}

// Owns the OrtEpDevices made so far in one GetSupportedDevices call; on an error they go back to ORT unpublished.
class EpDeviceList {
 public:
  EpDeviceList(const Api& api, OrtEpDevice** slots, size_t capacity) : api_(api), slots_(slots), capacity_(capacity) {}
  ~EpDeviceList() {
    if (committed_) return;
    for (size_t i = 0; i < count_; ++i) {
      api_.ep.ReleaseEpDevice(slots_[i]);
      slots_[i] = nullptr;
    }
  }
  bool full() const { return count_ >= capacity_; }
  void Add(OrtEpDevice* device) { slots_[count_++] = device; }
  size_t Commit() {
    committed_ = true;
    return count_;
  }

 private:
  const Api& api_;
  OrtEpDevice** slots_;
  size_t capacity_;
  size_t count_ = 0;
  bool committed_ = false;
};

bool IsNvidiaGpu(const Api& api, const OrtHardwareDevice* device) {
  return api.ort.HardwareDevice_Type(device) == OrtHardwareDeviceType_GPU &&
         api.ort.HardwareDevice_VendorId(device) == kNvidiaVendorId;
}

}  // namespace

CortexEpFactory::CortexEpFactory(const Api& api) : OrtEpFactory{}, api_(api), cuda_(CudaApi::Get()) {
  ort_version_supported = ORT_API_VERSION;
  GetName = GetNameImpl;
  GetVendor = GetVendorImpl;
  GetVendorId = GetVendorIdImpl;
  GetVersion = GetVersionImpl;
  GetSupportedDevices = GetSupportedDevicesImpl;
  CreateEp = CreateEpImpl;
  ReleaseEp = ReleaseEpImpl;
  // The CPU device uses ORT's CPU memory; a GPU device has the allocators, data transfer and streams below.
  CreateAllocator = CreateAllocatorImpl;
  ReleaseAllocator = ReleaseAllocatorImpl;
  CreateDataTransfer = CreateDataTransferImpl;
  IsStreamAware = IsStreamAwareImpl;
  CreateSyncStreamForDevice = CreateSyncStreamForDeviceImpl;
  if (cuda_ != nullptr) data_transfer_ = std::make_unique<CudaDataTransfer>(api_, *cuda_);
}

CortexEpFactory::~CortexEpFactory() {
  for (OrtHardwareDevice* device : created_hardware_) api_.ep.ReleaseHardwareDevice(device);
}

const char* ORT_API_CALL CortexEpFactory::GetNameImpl(const OrtEpFactory*) noexcept { return kEpName; }
const char* ORT_API_CALL CortexEpFactory::GetVendorImpl(const OrtEpFactory*) noexcept { return "Cortex"; }
uint32_t ORT_API_CALL CortexEpFactory::GetVendorIdImpl(const OrtEpFactory*) noexcept { return 0; }
const char* ORT_API_CALL CortexEpFactory::GetVersionImpl(const OrtEpFactory*) noexcept { return "0.2.0"; }

OrtStatus* ORT_API_CALL CortexEpFactory::GetSupportedDevicesImpl(OrtEpFactory* this_ptr,
                                                                 const OrtHardwareDevice* const* devices,
                                                                 size_t num_devices, OrtEpDevice** ep_devices,
                                                                 size_t max_ep_devices,
                                                                 size_t* num_ep_devices) noexcept {
  auto* factory = static_cast<CortexEpFactory*>(this_ptr);
  *num_ep_devices = 0;
  CORTEX_API_BEGIN
  return factory->SupportedDevices(devices, num_devices, ep_devices, max_ep_devices, num_ep_devices);
  CORTEX_API_END(factory->api_)
}

OrtStatus* CortexEpFactory::SupportedDevices(const OrtHardwareDevice* const* devices, size_t num_devices,
                                             OrtEpDevice** ep_devices, size_t max_ep_devices,
                                             size_t* num_ep_devices) {
  std::lock_guard<std::mutex> lock(mutex_);
  EpDeviceList list(api_, ep_devices, max_ep_devices);
  for (size_t i = 0; i < num_devices && !list.full(); ++i) {
    if (api_.ort.HardwareDevice_Type(devices[i]) != OrtHardwareDeviceType_CPU) continue;
    // The CPU device says why no GPU is offered (for cortex.session_options(device="cuda")'s message).
    KeyValuePairsPtr metadata = NewKeyValuePairs(api_);
    api_.ort.AddKeyValuePair(metadata.get(), "target", TargetOfDevice(CORTEX_DEVICE_CPU));
    if (cuda_ == nullptr) api_.ort.AddKeyValuePair(metadata.get(), kCudaUnavailableKey, CudaApi::WhyUnavailable().c_str());
    OrtEpDevice* ep_device = nullptr;
    CORTEX_RETURN_IF_ERROR(api_.ep.CreateEpDevice(this, devices[i], metadata.get(), nullptr, &ep_device));
    list.Add(ep_device);
  }
  if (cuda_ != nullptr) {
    // ORT's NVIDIA GPUs, in ORT's order, are CUDA devices 0, 1, ... (as ORT's CUDA EP maps them); GPUs beyond what
    // CUDA sees (CUDA_VISIBLE_DEVICES) are not offered.
    int ordinal = 0;
    bool discovered = false;
    for (size_t i = 0; i < num_devices; ++i) {
      if (!IsNvidiaGpu(api_, devices[i])) continue;
      discovered = true;
      if (ordinal >= cuda_->device_count || list.full()) break;
      OrtEpDevice* ep_device = nullptr;
      CORTEX_RETURN_IF_ERROR(CreateGpuEpDevice(devices[i], ordinal++, &ep_device));
      list.Add(ep_device);
    }
    // ORT's discovery can miss a GPU CUDA sees (in containers it reads the PCI/DRM tables, which may be absent):
    // create the hardware devices then, as ORT's own GPU EPs do.
    for (int cuda_device = 0; !discovered && cuda_device < cuda_->device_count && !list.full(); ++cuda_device) {
      KeyValuePairsPtr metadata = NewKeyValuePairs(api_);
      api_.ort.AddKeyValuePair(metadata.get(), "discovered_by", kEpName);
      api_.ort.AddKeyValuePair(metadata.get(), kCudaDeviceIdKey, std::to_string(cuda_device).c_str());
      OrtHardwareDevice* hardware = nullptr;
      CORTEX_RETURN_IF_ERROR(api_.ep.CreateHardwareDevice(OrtHardwareDeviceType_GPU, kNvidiaVendorId, 0, "NVIDIA",
                                                          metadata.get(), &hardware));
      created_hardware_.push_back(hardware);  // kept until the factory goes: its OrtEpDevice points at it
      OrtEpDevice* ep_device = nullptr;
      CORTEX_RETURN_IF_ERROR(CreateGpuEpDevice(hardware, cuda_device, &ep_device));
      list.Add(ep_device);
    }
  }
  *num_ep_devices = list.Commit();
  return nullptr;
}

OrtStatus* CortexEpFactory::CreateGpuEpDevice(const OrtHardwareDevice* hardware, int ordinal, OrtEpDevice** ep_device) {
  *ep_device = nullptr;
  const Gpu* gpu = FindGpu(ordinal);
  if (gpu == nullptr) {
    auto created = std::make_unique<Gpu>();
    created->ordinal = ordinal;
    OrtMemoryInfo* info = nullptr;
    CORTEX_RETURN_IF_ERROR(api_.ort.CreateMemoryInfo_V2("Cortex CUDA", OrtMemoryInfoDeviceType_GPU, kNvidiaVendorId,
                                                        ordinal, OrtDeviceMemoryType_DEFAULT, 0, OrtDeviceAllocator,
                                                        &info));
    created->device_memory = MemoryInfoPtr(info, MemoryInfoDeleter{&api_.ort});
    CORTEX_RETURN_IF_ERROR(api_.ort.CreateMemoryInfo_V2("Cortex CUDA pinned", OrtMemoryInfoDeviceType_GPU,
                                                        kNvidiaVendorId, ordinal, OrtDeviceMemoryType_HOST_ACCESSIBLE,
                                                        0, OrtDeviceAllocator, &info));
    created->pinned_memory = MemoryInfoPtr(info, MemoryInfoDeleter{&api_.ort});
    gpus_.push_back(std::move(created));
    gpu = gpus_.back().get();
  }
  KeyValuePairsPtr metadata = NewKeyValuePairs(api_);
  api_.ort.AddKeyValuePair(metadata.get(), kCudaDeviceIdKey, std::to_string(ordinal).c_str());
  api_.ort.AddKeyValuePair(metadata.get(), "target", TargetOfDevice(CORTEX_DEVICE_CUDA));
  int major = 0, minor = 0;
  if (cuda_->DeviceGetAttribute(&major, CudaApi::kAttrComputeCapabilityMajor, ordinal) == 0 &&
      cuda_->DeviceGetAttribute(&minor, CudaApi::kAttrComputeCapabilityMinor, ordinal) == 0) {
    api_.ort.AddKeyValuePair(metadata.get(), "cuda_compute_capability",
                             (std::to_string(major) + "." + std::to_string(minor)).c_str());
  }
  char bus_id[32] = {0};
  if (cuda_->DeviceGetPCIBusId(bus_id, sizeof(bus_id) - 1, ordinal) == 0) {
    api_.ort.AddKeyValuePair(metadata.get(), "cuda_pci_bus_id", bus_id);
  }
  api_.ort.AddKeyValuePair(metadata.get(), "cuda_runtime", cuda_->library.c_str());
  OrtEpDevice* created = nullptr;
  CORTEX_RETURN_IF_ERROR(api_.ep.CreateEpDevice(this, hardware, metadata.get(), nullptr, &created));
  for (const OrtMemoryInfo* info : {gpu->device_memory.get(), gpu->pinned_memory.get()}) {
    if (OrtStatus* status = api_.ep.EpDevice_AddAllocatorInfo(created, info)) {
      api_.ep.ReleaseEpDevice(created);
      return status;
    }
  }
  *ep_device = created;
  return nullptr;
}

const CortexEpFactory::Gpu* CortexEpFactory::FindGpu(int ordinal) const {
  for (const auto& gpu : gpus_) {
    if (gpu->ordinal == ordinal) return gpu.get();
  }
  return nullptr;
}

OrtStatus* ORT_API_CALL CortexEpFactory::CreateEpImpl(OrtEpFactory* this_ptr, const OrtHardwareDevice* const* devices,
                                                      const OrtKeyValuePairs* const* ep_metadata, size_t num_devices,
                                                      const OrtSessionOptions* session_options,
                                                      const OrtLogger* logger, OrtEp** ep) noexcept {
  auto* factory = static_cast<CortexEpFactory*>(this_ptr);
  *ep = nullptr;
  CORTEX_API_BEGIN
  return factory->NewEp(devices, ep_metadata, num_devices, session_options, logger, ep);
  CORTEX_API_END(factory->api_)
}

OrtStatus* CortexEpFactory::NewEp(const OrtHardwareDevice* const* devices, const OrtKeyValuePairs* const* ep_metadata,
                                     size_t num_devices, const OrtSessionOptions* session_options,
                                     const OrtLogger* logger, OrtEp** ep) {
  if (num_devices == 0) return MakeStatus(api_, ORT_INVALID_ARGUMENT, "Cortex EP: no device selected");
  size_t cpus = 0;
  std::vector<int> gpu_ordinals;
  for (size_t i = 0; i < num_devices; ++i) {
    if (api_.ort.HardwareDevice_Type(devices[i]) != OrtHardwareDeviceType_GPU) {
      ++cpus;
      continue;
    }
    const char* id = ep_metadata != nullptr && ep_metadata[i] != nullptr
                         ? api_.ort.GetKeyValue(ep_metadata[i], kCudaDeviceIdKey)
                         : nullptr;
    char* end = nullptr;
    const long ordinal = id != nullptr ? std::strtol(id, &end, 10) : -1;
    if (id == nullptr || end == id || *end != '\0' || ordinal < 0) {
      return MakeStatus(api_, ORT_INVALID_ARGUMENT,
                        "Cortex EP: a selected GPU device is not one this Cortex EP offered (no cuda_device_id); "
                        "select devices from onnxruntime.get_ep_devices() of CortexExecutionProvider");
    }
    gpu_ordinals.push_back(static_cast<int>(ordinal));
  }
  if (!gpu_ordinals.empty() && (cpus > 0 || gpu_ordinals.size() > 1)) {
    return MakeStatus(api_, ORT_INVALID_ARGUMENT,
                      "Cortex EP: a session runs the Cortex EP on the CPU or on one GPU, not on " +
                          std::to_string(num_devices) + " devices at once; select one device "
                          "(cortex.session_options(device=\"cpu\"), device=\"cuda\" or device=\"cuda:N\")");
  }
  TrustPolicy trust;
  CORTEX_RETURN_IF_ERROR(SessionTrust(api_, session_options, &trust));
  std::string model_path;  // a model given as bytes: the file it was made from, whose folder holds its kernels
  bool has_model_path = false;
  if (session_options != nullptr) {
    CORTEX_RETURN_IF_ERROR(ReadConfigEntry(api_, session_options, kModelPathConfigKey, &model_path, &has_model_path));
  }
  if (gpu_ordinals.empty()) {
    *ep = new CortexEp(api_, std::move(trust), EpPlacement{}, logger, model_path);
    return nullptr;
  }
  const int ordinal = gpu_ordinals[0];
  const Gpu* gpu = nullptr;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    gpu = FindGpu(ordinal);
  }
  if (cuda_ == nullptr || gpu == nullptr) {
    return MakeStatus(api_, ORT_INVALID_ARGUMENT,
                      "Cortex EP: CUDA device " + std::to_string(ordinal) + " is not available in this process" +
                          (cuda_ == nullptr ? " (" + CudaApi::WhyUnavailable() + ")" : std::string()));
  }
  EpPlacement placement;
  placement.target = TargetOfDevice(CORTEX_DEVICE_CUDA);
  placement.device_id = ordinal;
  placement.device_memory = gpu->device_memory.get();
  *ep = new CortexEp(api_, std::move(trust), placement, logger, model_path);
  return nullptr;
}

void ORT_API_CALL CortexEpFactory::ReleaseEpImpl(OrtEpFactory*, OrtEp* ep) noexcept {
  delete static_cast<CortexEp*>(ep);
}

OrtStatus* ORT_API_CALL CortexEpFactory::CreateAllocatorImpl(OrtEpFactory* this_ptr, const OrtMemoryInfo* memory_info,
                                                             const OrtKeyValuePairs*,
                                                             OrtAllocator** allocator) noexcept {
  auto* factory = static_cast<CortexEpFactory*>(this_ptr);
  const Api& api = factory->api_;
  *allocator = nullptr;
  CORTEX_API_BEGIN
  if (factory->cuda_ == nullptr || memory_info == nullptr) {
    return MakeStatus(api, ORT_INVALID_ARGUMENT,
                      "Cortex EP: no allocator for this memory: on the CPU the Cortex EP uses ONNX Runtime's");
  }
  // The memory info is one the factory registered (ORT hands back the pointer), or an equal one.
  OrtMemoryInfoDeviceType type = OrtMemoryInfoDeviceType_CPU;
  api.ort.MemoryInfoGetDeviceType(memory_info, &type);
  int id = -1;
  CORTEX_RETURN_IF_ERROR(api.ort.MemoryInfoGetId(memory_info, &id));
  const OrtDeviceMemoryType memory_type = api.ort.MemoryInfoGetDeviceMemType(memory_info);
  std::lock_guard<std::mutex> lock(factory->mutex_);
  for (const auto& gpu : factory->gpus_) {
    const bool same_device = type == OrtMemoryInfoDeviceType_GPU && id == gpu->ordinal &&
                             api.ort.MemoryInfoGetVendorId(memory_info) == kNvidiaVendorId;
    const bool device = memory_info == gpu->device_memory.get() ||
                        (same_device && memory_type == OrtDeviceMemoryType_DEFAULT);
    const bool pinned = memory_info == gpu->pinned_memory.get() ||
                        (same_device && memory_type == OrtDeviceMemoryType_HOST_ACCESSIBLE);
    if (device || pinned) {
      *allocator = new CudaAllocator(*factory->cuda_, device ? gpu->device_memory.get() : gpu->pinned_memory.get(),
                                     gpu->ordinal, pinned);
      return nullptr;
    }
  }
  return MakeStatus(api, ORT_INVALID_ARGUMENT,
                    "Cortex EP: no allocator for this memory (not the memory of a GPU this Cortex EP offered)");
  CORTEX_API_END(api)
}

void ORT_API_CALL CortexEpFactory::ReleaseAllocatorImpl(OrtEpFactory*, OrtAllocator* allocator) noexcept {
  delete static_cast<CudaAllocator*>(allocator);
}

OrtStatus* ORT_API_CALL CortexEpFactory::CreateDataTransferImpl(OrtEpFactory* this_ptr,
                                                                OrtDataTransferImpl** data_transfer) noexcept {
  *data_transfer = static_cast<CortexEpFactory*>(this_ptr)->data_transfer_.get();  // null without CUDA
  return nullptr;
}

bool ORT_API_CALL CortexEpFactory::IsStreamAwareImpl(const OrtEpFactory* this_ptr) noexcept {
  return static_cast<const CortexEpFactory*>(this_ptr)->cuda_ != nullptr;
}

OrtStatus* ORT_API_CALL CortexEpFactory::CreateSyncStreamForDeviceImpl(OrtEpFactory* this_ptr,
                                                                       const OrtMemoryDevice* memory_device,
                                                                       const OrtKeyValuePairs*,
                                                                       OrtSyncStreamImpl** stream) noexcept {
  auto* factory = static_cast<CortexEpFactory*>(this_ptr);
  const Api& api = factory->api_;
  *stream = nullptr;
  CORTEX_API_BEGIN
  // Streams are for the GPU's own memory; host memory needs none.
  if (factory->cuda_ == nullptr || memory_device == nullptr ||
      api.ep.MemoryDevice_GetDeviceType(memory_device) != OrtMemoryInfoDeviceType_GPU ||
      api.ep.MemoryDevice_GetVendorId(memory_device) != kNvidiaVendorId ||
      api.ep.MemoryDevice_GetMemoryType(memory_device) != OrtDeviceMemoryType_DEFAULT) {
    return nullptr;
  }
  const int ordinal = static_cast<int>(api.ep.MemoryDevice_GetDeviceId(memory_device));
  if (ordinal >= factory->cuda_->device_count) {
    return MakeStatus(api, ORT_INVALID_ARGUMENT, "Cortex EP: no CUDA device " + std::to_string(ordinal) +
                                                     " for a stream (this process sees " +
                                                     std::to_string(factory->cuda_->device_count) + ")");
  }
  CudaSyncStream* created = nullptr;
  CORTEX_RETURN_IF_ERROR(CudaSyncStream::Create(api, *factory->cuda_, ordinal, &created));
  *stream = created;
  return nullptr;
  CORTEX_API_END(api)
}

}  // namespace cortex_ep

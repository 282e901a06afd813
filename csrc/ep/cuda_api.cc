#include "cuda_api.h"

#include <dlfcn.h>

#include <cstdlib>
#include <memory>
#include <vector>

namespace cortex_ep {
namespace {

struct Loaded {
  std::unique_ptr<CudaApi> api;  // null when unavailable
  std::string why;
};

// Candidate libraries, most specific first: the user's choice, the runtime sonames (CUDA 13, 12, unversioned: an
// already loaded runtime, e.g. PyTorch's, matches its soname), then the toolkit's usual places.
std::vector<std::string> Candidates() {
  std::vector<std::string> names;
  if (const char* chosen = std::getenv("CORTEX_CUDART"); chosen != nullptr && chosen[0] != '\0') {
    names.emplace_back(chosen);
    return names;
  }
  const char* sonames[] = {"libcudart.so.13", "libcudart.so.12", "libcudart.so"};
  for (const char* soname : sonames) names.emplace_back(soname);
  std::vector<std::string> roots;
  if (const char* home = std::getenv("CUDA_HOME"); home != nullptr && home[0] != '\0') roots.emplace_back(home);
  if (const char* path = std::getenv("CUDA_PATH"); path != nullptr && path[0] != '\0') roots.emplace_back(path);
  roots.emplace_back("/usr/local/cuda");
  for (const std::string& root : roots) {
    for (const char* soname : sonames) names.push_back(root + "/lib64/" + soname);
  }
  return names;
}

template <typename Fn>
bool Resolve(void* handle, const char* name, Fn* fn, std::string* missing) {
  *fn = reinterpret_cast<Fn>(dlsym(handle, name));
  if (*fn == nullptr && missing->empty()) *missing = name;
  return *fn != nullptr;
}

Loaded Load() {
  Loaded out;
  if (const char* off = std::getenv("CORTEX_DISABLE_CUDA"); off != nullptr && off[0] != '\0' && off[0] != '0') {
    out.why = "CORTEX_DISABLE_CUDA is set";
    return out;
  }
  void* handle = nullptr;
  std::string library, errors;
  for (const std::string& name : Candidates()) {
    handle = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle != nullptr) {
      library = name;
      break;
    }
    const char* error = dlerror();
    if (errors.size() < 600) errors += (errors.empty() ? "" : "; ") + std::string(error ? error : name.c_str());
  }
  if (handle == nullptr) {
    out.why = "no CUDA runtime library (libcudart) could be loaded (" + errors +
              "); install the CUDA runtime or set CORTEX_CUDART to its path";
    return out;
  }
  // The library stays loaded for the life of the process: allocations and streams made through it outlive any one
  // session, and an unload at exit races with CUDA's own teardown.
  auto api = std::make_unique<CudaApi>();
  std::string missing;
  Resolve(handle, "cudaGetDeviceCount", &api->GetDeviceCount, &missing);
  Resolve(handle, "cudaSetDevice", &api->SetDevice, &missing);
  Resolve(handle, "cudaGetDevice", &api->GetDevice, &missing);
  Resolve(handle, "cudaDeviceGetAttribute", &api->DeviceGetAttribute, &missing);
  Resolve(handle, "cudaDeviceGetPCIBusId", &api->DeviceGetPCIBusId, &missing);
  Resolve(handle, "cudaMalloc", &api->Malloc, &missing);
  Resolve(handle, "cudaFree", &api->Free, &missing);
  Resolve(handle, "cudaMallocHost", &api->MallocHost, &missing);
  Resolve(handle, "cudaFreeHost", &api->FreeHost, &missing);
  Resolve(handle, "cudaMemcpy", &api->Memcpy, &missing);
  Resolve(handle, "cudaMemcpyAsync", &api->MemcpyAsync, &missing);
  Resolve(handle, "cudaStreamCreateWithFlags", &api->StreamCreateWithFlags, &missing);
  Resolve(handle, "cudaStreamDestroy", &api->StreamDestroy, &missing);
  Resolve(handle, "cudaStreamSynchronize", &api->StreamSynchronize, &missing);
  Resolve(handle, "cudaStreamWaitEvent", &api->StreamWaitEvent, &missing);
  Resolve(handle, "cudaEventCreateWithFlags", &api->EventCreateWithFlags, &missing);
  Resolve(handle, "cudaEventDestroy", &api->EventDestroy, &missing);
  Resolve(handle, "cudaEventRecord", &api->EventRecord, &missing);
  Resolve(handle, "cudaEventSynchronize", &api->EventSynchronize, &missing);
  Resolve(handle, "cudaGetErrorString", &api->GetErrorString, &missing);
  Resolve(handle, "cudaGetErrorName", &api->GetErrorName, &missing);
  if (!missing.empty()) {
    out.why = library + " has no " + missing + " (not a CUDA runtime library?)";
    return out;
  }
  int count = 0;
  const CudaApi::Error error = api->GetDeviceCount(&count);
  if (error != 0 || count <= 0) {
    out.why = error != 0 ? api->Describe("cudaGetDeviceCount", error) : "the CUDA runtime sees no GPU";
    return out;
  }
  api->device_count = count;
  api->library = library;
  out.api = std::move(api);
  return out;
}

const Loaded& Instance() {
  static const Loaded* loaded = new Loaded(Load());  // never destroyed (see Load)
  return *loaded;
}

}  // namespace

const CudaApi* CudaApi::Get() { return Instance().api.get(); }

const std::string& CudaApi::WhyUnavailable() { return Instance().why; }

std::string CudaApi::Describe(const char* what, Error error) const {
  const char* name = GetErrorName ? GetErrorName(error) : nullptr;
  const char* text = GetErrorString ? GetErrorString(error) : nullptr;
  return std::string(what) + ": " + (name ? name : "CUDA error") + " (" + std::to_string(error) + "): " +
         (text ? text : "no description");
}

}  // namespace cortex_ep

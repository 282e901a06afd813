// A loaded Cortex kernel library (kernel_abi.h). Loading checks, in this order and before the library is mapped:
// the path policy (artifact_path.h), the file itself (a regular file of at most kMaxKernelBytes), the file's sha256
// against the node's record, the trust policy (trust_policy.h), the CPU (cpu_check.h); then dlopen of the very file
// that was hashed, the ABI version, the device and the kernel's signature (kernel_signature.h).
// Plain C++, no ONNX Runtime types. The library is unloaded when the last owner lets go.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernel_abi.h"
#include "targets.h"
#include "kernel_signature.h"
#include "trust_policy.h"

namespace cortex_ep {

// What the converted node says about its kernel.
struct KernelRequest {
  std::string model_path;       // as ONNX Runtime reports it; "" for a model given as bytes
  std::string relative_path;    // ep_cache_context
  std::string expected_sha256;  // notes.kernel_sha256
  std::string cpu_arch;         // notes.cpu_arch ("" when not recorded)
  std::string cpu_level;        // notes.cpu_level (for messages)
  std::vector<std::string> cpu_features;  // notes.cpu_features
  std::string target = TargetOfDevice(CORTEX_DEVICE_CPU);  // notes.target: the device the kernel runs on (targets.h)
};

// The largest kernel file the EP reads: a generated kernel is a few hundred KiB; 512 MiB leaves room for any model
// while a hostile path (a 1 TiB sparse file) is refused before a byte is read.
inline constexpr int64_t kMaxKernelBytes = int64_t{512} << 20;

class KernelMapping;  // one reference to a mapped kernel file (kernel_library.cc)

class KernelLibrary {
 public:
  enum class LoadError { kNone, kRefusedPath, kRefusedFile, kMissing, kCorrupted, kUntrusted, kUnsupportedCpu,
                         kUnloadable, kAbiMismatch };

  // On failure returns null, sets *error_kind and a message naming the path and what to do in *error.
  static std::shared_ptr<const KernelLibrary> Load(const KernelRequest& request, const TrustPolicy& trust,
                                                   LoadError* error_kind, std::string* error);

  ~KernelLibrary();
  KernelLibrary(const KernelLibrary&) = delete;
  KernelLibrary& operator=(const KernelLibrary&) = delete;

  const std::string& path() const { return path_; }
  const std::string& identity() const { return identity_; }
  // What the kernel reads and writes; the EP checks the model and every run against it.
  const KernelSignature& signature() const { return signature_; }

  // cortex_kernel_run; never throws.
  int32_t Run(const CortexTensor* inputs, int32_t num_inputs, CortexAllocOutput alloc_output, void* alloc_context,
              const CortexExecution* execution, char* error, size_t error_size) const {
    return run_(inputs, num_inputs, alloc_output, alloc_context, execution, error, error_size);
  }

 private:
  using RunFn = decltype(&cortex_kernel_run);
  KernelLibrary(std::unique_ptr<KernelMapping> mapping, std::string path, std::string identity, RunFn run,
                KernelSignature signature);

  std::unique_ptr<KernelMapping> mapping_;  // keeps the library mapped while run_ may be called
  std::string path_;
  std::string identity_;
  RunFn run_;
  KernelSignature signature_;
};

}  // namespace cortex_ep

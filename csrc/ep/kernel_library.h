// A loaded Cortex kernel library (kernel_abi.h): verified against its recorded sha256, dlopen'ed, ABI-checked.
// Plain C++, no ONNX Runtime types. dlclose happens when the last owner lets go.
#pragma once
#include <memory>
#include <string>

#include "kernel_abi.h"

namespace cortex_ep {

class KernelLibrary {
 public:
  enum class LoadError { kNone, kMissing, kCorrupted, kUnloadable, kAbiMismatch };

  // Loads `path` after checking that the file exists and hashes to `expected_sha256` (hex, any case).
  // On failure returns null, sets *error_kind and a message naming the path in *error.
  static std::shared_ptr<const KernelLibrary> Load(const std::string& path, const std::string& expected_sha256,
                                                   LoadError* error_kind, std::string* error);

  ~KernelLibrary();
  KernelLibrary(const KernelLibrary&) = delete;
  KernelLibrary& operator=(const KernelLibrary&) = delete;

  const std::string& path() const { return path_; }
  const std::string& identity() const { return identity_; }

  // cortex_kernel_run; never throws.
  int32_t Run(const CortexTensor* inputs, int32_t num_inputs, CortexAllocOutput alloc_output, void* alloc_context,
              const CortexExecution* execution, char* error, size_t error_size) const {
    return run_(inputs, num_inputs, alloc_output, alloc_context, execution, error, error_size);
  }

 private:
  using RunFn = decltype(&cortex_kernel_run);
  KernelLibrary(void* handle, std::string path, std::string identity, RunFn run)
      : handle_(handle), path_(std::move(path)), identity_(std::move(identity)), run_(run) {}

  void* handle_;
  std::string path_;
  std::string identity_;
  RunFn run_;
};

}  // namespace cortex_ep

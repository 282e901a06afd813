#include "kernel_library.h"

#include <dlfcn.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>

#include "sha256.h"

namespace cortex_ep {
namespace {

std::string Lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(), [](unsigned char c) { return std::tolower(c); });
  return text;
}

std::string DlError() {
  const char* message = dlerror();
  return message ? message : "unknown dlopen error";
}

struct DlCloser {
  void operator()(void* handle) const { dlclose(handle); }
};

}  // namespace

std::shared_ptr<const KernelLibrary> KernelLibrary::Load(const std::string& path, const std::string& expected_sha256,
                                                         LoadError* error_kind, std::string* error) {
  struct stat info;
  if (stat(path.c_str(), &info) != 0 || !S_ISREG(info.st_mode)) {
    *error_kind = LoadError::kMissing;
    *error = "Cortex kernel artifact missing: " + path;
    return nullptr;
  }
  std::string digest, read_error;
  if (!Sha256File(path, &digest, &read_error)) {
    *error_kind = LoadError::kMissing;
    *error = "Cortex kernel artifact unreadable: " + path + " (" + read_error + ")";
    return nullptr;
  }
  if (digest != Lower(expected_sha256)) {
    *error_kind = LoadError::kCorrupted;
    *error = "Cortex kernel artifact corrupted (sha256 mismatch): " + path + " (expected " + expected_sha256 +
             ", found " + digest + "); convert the model again";
    return nullptr;
  }

  dlerror();
  std::unique_ptr<void, DlCloser> handle(dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL));
  if (!handle) {
    *error_kind = LoadError::kUnloadable;
    *error = "Cortex kernel artifact cannot be loaded: " + path + ": " + DlError();
    return nullptr;
  }
  auto abi_version = reinterpret_cast<decltype(&cortex_kernel_abi_version)>(
      dlsym(handle.get(), "cortex_kernel_abi_version"));
  auto identity = reinterpret_cast<decltype(&cortex_kernel_identity)>(dlsym(handle.get(), "cortex_kernel_identity"));
  auto run = reinterpret_cast<RunFn>(dlsym(handle.get(), "cortex_kernel_run"));
  if (!abi_version || !identity || !run) {
    *error_kind = LoadError::kUnloadable;
    *error = "Cortex kernel artifact " + path +
             " does not export cortex_kernel_abi_version, cortex_kernel_identity and cortex_kernel_run";
    return nullptr;
  }
  const int32_t version = abi_version();
  if (version != CORTEX_KERNEL_ABI_VERSION) {
    *error_kind = LoadError::kAbiMismatch;
    *error = "Cortex kernel artifact " + path + " has kernel ABI version " + std::to_string(version) +
             ", this Cortex EP expects " + std::to_string(CORTEX_KERNEL_ABI_VERSION) +
             "; convert the model again with this version of Cortex";
    return nullptr;
  }
  const char* name = identity();
  std::shared_ptr<const KernelLibrary> library(
      new KernelLibrary(handle.get(), path, name ? name : "", run));
  handle.release();
  *error_kind = LoadError::kNone;
  return library;
}

KernelLibrary::~KernelLibrary() { dlclose(handle_); }

}  // namespace cortex_ep

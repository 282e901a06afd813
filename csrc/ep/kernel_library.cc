#include "kernel_library.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <utility>

#include "artifact_path.h"
#include "cpu_check.h"
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

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_;
};

// The path of an open file as the kernel sees it now (/proc/self/fd/N), or "" where /proc is not mounted.
std::string OpenFilePath(int fd) {
  const std::string link = "/proc/self/fd/" + std::to_string(fd);
  char target[PATH_MAX + 1];
  const ssize_t size = readlink(link.c_str(), target, PATH_MAX);
  if (size <= 0) return "";
  return std::string(target, static_cast<size_t>(size));
}

const char* FileKind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode) || S_ISBLK(mode)) return "a device";
  return "not a regular file";
}

// dlopen of a checked file through its descriptor, so the library mapped is the file that was hashed (a rename in
// the folder between the check and the load cannot substitute another). glibc reuses an already loaded library
// whose name matches the string given, and descriptor numbers are reused after close: so the descriptor of each file
// (device, inode) loaded this way stays open for the life of the process, and its name /proc/self/fd/N always means
// that file. One descriptor per distinct kernel file loaded, never more.
class FdLoader {
 public:
  static FdLoader& Instance() {
    static FdLoader* loader = new FdLoader();  // never destroyed: kernels may outlive static destruction
    return *loader;
  }

  // Takes ownership of `fd`; returns the dlopen handle (null: see dlerror) of the file it refers to.
  void* Open(int fd, const struct stat& info) {
    std::lock_guard<std::mutex> lock(mutex_);
    const std::pair<dev_t, ino_t> key(info.st_dev, info.st_ino);
    auto it = kept_.find(key);
    if (it == kept_.end()) {
      it = kept_.emplace(key, fd).first;
    } else {
      close(fd);  // the kept descriptor already names this very file
    }
    return dlopen(("/proc/self/fd/" + std::to_string(it->second)).c_str(), RTLD_NOW | RTLD_LOCAL);
  }

 private:
  std::mutex mutex_;
  std::map<std::pair<dev_t, ino_t>, int> kept_;
};

std::string ModelForMessages(const KernelRequest& request) {
  return request.model_path.empty() ? std::string("MODEL") : request.model_path;
}

std::string RebuildAdvice(const KernelRequest& request) {
  return "Run `cortex rebuild " + ModelForMessages(request) +
         "` to compile the kernel on this machine from the IR the model carries (data, not code)";
}

}  // namespace

std::shared_ptr<const KernelLibrary> KernelLibrary::Load(const KernelRequest& request, const TrustPolicy& trust,
                                                         LoadError* error_kind, std::string* error) {
  // 1. The path policy, before any file is opened.
  ArtifactLocation location;
  std::string path_error;
  switch (ResolveArtifact(request.model_path, request.relative_path, &location, &path_error)) {
    case PathVerdict::kOk:
      break;
    case PathVerdict::kRefused:
      *error_kind = LoadError::kRefusedPath;
      *error = "Cortex kernel refused: " + path_error + " (" + location.model_dir + "). " + RebuildAdvice(request) +
               ": it writes the kernel into the model's own folder.";
      return nullptr;
    case PathVerdict::kMissing:
      *error_kind = LoadError::kMissing;
      *error = path_error;
      return nullptr;
  }
  const std::string& path = location.path;

  // 2. Open the resolved file itself (no symlink at the last step; O_NONBLOCK: opening a FIFO must not wait for a
  // writer) and look at what it is before reading a byte: a regular file of a bounded size. Then check where the
  // open file really is: a folder swapped for a symlink since realpath cannot redirect us.
  Fd fd(open(path.c_str(), O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC));
  if (fd.get() < 0) {
    *error_kind = LoadError::kMissing;
    *error = "Cortex kernel artifact unreadable: " + path + " (" + std::strerror(errno) + ")";
    return nullptr;
  }
  struct stat info;
  if (fstat(fd.get(), &info) != 0) {
    *error_kind = LoadError::kMissing;
    *error = "Cortex kernel artifact unreadable: " + path + " (" + std::strerror(errno) + ")";
    return nullptr;
  }
  if (!S_ISREG(info.st_mode)) {
    *error_kind = LoadError::kRefusedFile;
    *error = "Cortex kernel refused: " + path + " is " + FileKind(info.st_mode) + ", not a regular file. " +
             RebuildAdvice(request) + ".";
    return nullptr;
  }
  if (info.st_size > kMaxKernelBytes) {
    *error_kind = LoadError::kRefusedFile;
    *error = "Cortex kernel refused: " + path + " is " + std::to_string(static_cast<int64_t>(info.st_size)) +
             " bytes, more than a kernel may be (" + std::to_string(kMaxKernelBytes) + "). " +
             RebuildAdvice(request) + ".";
    return nullptr;
  }
  const std::string opened = OpenFilePath(fd.get());
  if (!opened.empty() && !IsInside(location.model_dir, opened)) {
    *error_kind = LoadError::kRefusedPath;
    *error = "Cortex kernel refused: the kernel library " + path + " was replaced by " + opened +
             ", outside the model's folder " + location.model_dir;
    return nullptr;
  }

  // 3. Integrity: the file is the one the node was written for.
  std::string digest, read_error;
  if (!Sha256Fd(fd.get(), kMaxKernelBytes, &digest, &read_error)) {
    *error_kind = LoadError::kMissing;
    *error = "Cortex kernel artifact unreadable: " + path + " (" + read_error + ")";
    return nullptr;
  }
  if (digest != Lower(request.expected_sha256)) {
    *error_kind = LoadError::kCorrupted;
    *error = "Cortex kernel artifact corrupted (sha256 mismatch): " + path + " (expected " +
             request.expected_sha256.substr(0, 80) + ", found " + digest + "); convert the model again, or " +
             "run `cortex rebuild " + ModelForMessages(request) + "`";
    return nullptr;
  }

  // 4. Trust: a kernel is code; this machine compiled it, or someone here chose to trust it.
  std::string how, note;
  if (!trust.IsTrusted(digest, &how, &note)) {
    *error_kind = LoadError::kUntrusted;
    *error = "Cortex kernel refused: " + path + " (sha256 " + digest +
             ") is not trusted on this machine: this machine's Cortex did not compile it and nobody trusted it, "
             "and a kernel is native code, not data" + (note.empty() ? std::string() : " (" + note + ")") + ". " +
             RebuildAdvice(request) + ", or `cortex trust " + ModelForMessages(request) +
             "` if you trust the model's author (deployments: " + kTrustedKernelsEnv + "=" + digest +
             ", or cortex.session_options(trust=...)).";
    return nullptr;
  }

  // 5. The CPU: a kernel built for a higher ISA level would die on an illegal instruction.
  std::string cpu_error;
  if (!CpuSupports(request.cpu_arch, request.cpu_features, &cpu_error)) {
    *error_kind = LoadError::kUnsupportedCpu;
    *error = "Cortex kernel refused: " + path +
             (request.cpu_level.empty() ? std::string() : " (compiled for " + request.cpu_level.substr(0, 40) + ")") +
             " " + cpu_error + ". " + RebuildAdvice(request) + " for this CPU.";
    return nullptr;
  }

  // 6. Load the very file that was checked: through its open descriptor where /proc is mounted.
  dlerror();
  std::unique_ptr<void, DlCloser> handle(opened.empty() ? dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL)
                                                        : FdLoader::Instance().Open(fd.release(), info));
  if (!handle) {
    *error_kind = LoadError::kUnloadable;
    *error = "Cortex kernel artifact cannot be loaded: " + path + ": " + DlError();
    return nullptr;
  }
  // 7. The kernel ABI: the version first (an older kernel lacks what follows), the device, the signature.
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
             "; convert the model again with this version of Cortex, or run `cortex rebuild " +
             ModelForMessages(request) + "`";
    return nullptr;
  }
  auto device = reinterpret_cast<decltype(&cortex_kernel_device)>(dlsym(handle.get(), "cortex_kernel_device"));
  if (!device || device() != DeviceOfTarget(request.target)) {
    *error_kind = LoadError::kAbiMismatch;
    *error = "Cortex kernel artifact " + path + " is not a kernel for the node's target '" + request.target + "'";
    return nullptr;
  }
  auto signature_fn =
      reinterpret_cast<decltype(&cortex_kernel_signature)>(dlsym(handle.get(), "cortex_kernel_signature"));
  KernelSignature signature;
  std::string signature_error = "it does not export cortex_kernel_signature";
  if (!signature_fn || !CopySignature(signature_fn(), &signature, &signature_error)) {
    *error_kind = LoadError::kAbiMismatch;
    *error = "Cortex kernel artifact " + path + " has no valid signature: " + signature_error +
             "; convert the model again with this version of Cortex, or run `cortex rebuild " +
             ModelForMessages(request) + "`";
    return nullptr;
  }
  const char* name = identity();
  std::shared_ptr<const KernelLibrary> library(
      new KernelLibrary(handle.get(), path, name ? name : "", run, std::move(signature)));
  handle.release();
  *error_kind = LoadError::kNone;
  return library;
}

KernelLibrary::~KernelLibrary() { dlclose(handle_); }

}  // namespace cortex_ep

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

std::string FdName(int fd) { return "/proc/self/fd/" + std::to_string(fd); }

// The path of an open file as the kernel sees it now (/proc/self/fd/N), or "" where /proc is not mounted.
std::string OpenFilePath(int fd) {
  char target[PATH_MAX + 1];
  const ssize_t size = readlink(FdName(fd).c_str(), target, PATH_MAX);
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

using FileKey = std::pair<dev_t, ino_t>;

// The kernel files loaded through their descriptors (dlopen of /proc/self/fd/N maps the very file that was hashed;
// a rename in the folder between the check and the load cannot substitute another). glibc hands back an already
// loaded library whose name string matches, and descriptor numbers are reused after close, so a descriptor stays
// open as long as glibc may hold a library under its name: all loads of one file (device, inode) share one
// descriptor and one handle; when the last user goes, the library is closed, and its descriptor is closed only once
// dlopen(RTLD_NOLOAD) shows that glibc really unloaded it. A library glibc keeps (STB_GNU_UNIQUE symbols, pending
// thread_local destructors) keeps its descriptor for the life of the process, so its name never means another file.
class KernelRegistry {
 public:
  static KernelRegistry& Instance() {
    static KernelRegistry* registry = new KernelRegistry();  // never destroyed: kernels may outlive static destruction
    return *registry;
  }

  // Takes ownership of `fd`, a checked kernel file whose sha256 is `digest`; returns its dlopen handle, or null and
  // why in *error.
  void* Acquire(int fd, const FileKey& key, const std::string& digest, std::string* error) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = files_.find(key);
    if (it != files_.end()) {
      close(fd);  // the kept descriptor names this very file
      Entry& entry = it->second;
      if (entry.digest != digest) {  // rewritten in place: the library glibc holds is the old content
        *error = "the file was rewritten in place while its earlier content is loaded in this process; replace "
                 "kernel files with a new file (write, then rename), never in place";
        return nullptr;
      }
      if (entry.handle == nullptr) {  // unused, but glibc kept it loaded: its name still denotes it
        dlerror();
        entry.handle = dlopen(FdName(entry.fd).c_str(), RTLD_NOW | RTLD_LOCAL);
        if (entry.handle == nullptr) {
          *error = DlError();
          return nullptr;
        }
      }
      ++entry.users;
      return entry.handle;
    }
    dlerror();
    void* handle = dlopen(FdName(fd).c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      *error = DlError();
      if (StillLoaded(fd)) {
        files_.emplace(key, Entry{fd, nullptr, 0, digest});
      } else {
        close(fd);
      }
      return nullptr;
    }
    files_.emplace(key, Entry{fd, handle, 1, digest});
    return handle;
  }

  void Release(const FileKey& key) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = files_.find(key);
    if (it == files_.end() || --it->second.users > 0) return;
    Entry& entry = it->second;
    dlclose(entry.handle);  // runs the kernel's destructors: its thread pool joins its workers
    entry.handle = nullptr;
    if (StillLoaded(entry.fd)) return;
    close(entry.fd);
    files_.erase(it);
  }

 private:
  struct Entry {
    int fd;
    void* handle;  // null while no KernelLibrary uses the file
    size_t users;
    std::string digest;
  };

  static bool StillLoaded(int fd) {
    void* handle = dlopen(FdName(fd).c_str(), RTLD_NOLOAD | RTLD_LAZY);
    if (handle == nullptr) return false;
    dlclose(handle);
    return true;
  }

  std::mutex mutex_;
  std::map<FileKey, Entry> files_;
};

}  // namespace

// One reference to a mapped kernel: through the registry (loaded by descriptor), or a plain dlopen handle where
// /proc is not mounted.
class KernelMapping {
 public:
  explicit KernelMapping(void* handle) : handle_(handle), registered_(false) {}
  KernelMapping(void* handle, const FileKey& key) : handle_(handle), registered_(true), key_(key) {}
  ~KernelMapping() {
    if (registered_) {
      KernelRegistry::Instance().Release(key_);
    } else {
      dlclose(handle_);
    }
  }
  KernelMapping(const KernelMapping&) = delete;
  KernelMapping& operator=(const KernelMapping&) = delete;

  void* handle() const { return handle_; }

 private:
  void* handle_;
  bool registered_;
  FileKey key_{};
};

namespace {

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
  std::unique_ptr<KernelMapping> mapping;
  if (opened.empty()) {
    dlerror();
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle != nullptr) mapping = std::make_unique<KernelMapping>(handle);
  } else {
    const FileKey key(info.st_dev, info.st_ino);
    std::string load_error;
    void* handle = KernelRegistry::Instance().Acquire(fd.release(), key, digest, &load_error);
    if (handle == nullptr) {
      *error_kind = LoadError::kUnloadable;
      *error = "Cortex kernel artifact cannot be loaded: " + path + ": " + load_error;
      return nullptr;
    }
    mapping = std::make_unique<KernelMapping>(handle, key);
  }
  if (!mapping) {
    *error_kind = LoadError::kUnloadable;
    *error = "Cortex kernel artifact cannot be loaded: " + path + ": " + DlError();
    return nullptr;
  }
  void* handle = mapping->handle();

  // 7. The kernel ABI: the version first (an older kernel lacks what follows), the device, the signature.
  auto abi_version = reinterpret_cast<decltype(&cortex_kernel_abi_version)>(dlsym(handle, "cortex_kernel_abi_version"));
  auto identity = reinterpret_cast<decltype(&cortex_kernel_identity)>(dlsym(handle, "cortex_kernel_identity"));
  auto run = reinterpret_cast<RunFn>(dlsym(handle, "cortex_kernel_run"));
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
  auto device = reinterpret_cast<decltype(&cortex_kernel_device)>(dlsym(handle, "cortex_kernel_device"));
  if (!device || device() != DeviceOfTarget(request.target)) {
    *error_kind = LoadError::kAbiMismatch;
    *error = "Cortex kernel artifact " + path + " is not a kernel for the node's target '" + request.target + "'";
    return nullptr;
  }
  auto signature_fn = reinterpret_cast<decltype(&cortex_kernel_signature)>(dlsym(handle, "cortex_kernel_signature"));
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
      new KernelLibrary(std::move(mapping), path, name ? name : "", run, std::move(signature)));
  *error_kind = LoadError::kNone;
  return library;
}

KernelLibrary::KernelLibrary(std::unique_ptr<KernelMapping> mapping, std::string path, std::string identity,
                             RunFn run, KernelSignature signature)
    : mapping_(std::move(mapping)),
      path_(std::move(path)),
      identity_(std::move(identity)),
      run_(run),
      signature_(std::move(signature)) {}

KernelLibrary::~KernelLibrary() = default;

}  // namespace cortex_ep

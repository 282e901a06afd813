#include "artifact_path.h"

#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>

namespace cortex_ep {
namespace {

struct FreeDeleter {
  void operator()(char* p) const { free(p); }
};

// realpath(3) into a std::string; false (errno set) on failure.
bool RealPath(const std::string& path, std::string* out) {
  std::unique_ptr<char, FreeDeleter> resolved(realpath(path.c_str(), nullptr));
  if (!resolved) return false;
  *out = resolved.get();
  return true;
}

bool HasDotDotComponent(const std::string& path) {
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    if (path.compare(start, end - start, "..") == 0 && end - start == 2) return true;
    start = end + 1;
  }
  return false;
}

std::string Quote(const std::string& text) {
  std::string out = "'";
  for (const char c : text) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      static const char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[u >> 4];
      out += kHex[u & 0xf];
    } else {
      out += c;
    }
  }
  return out + "'";
}

}  // namespace

bool IsInside(const std::string& dir, const std::string& path) {
  if (dir.empty() || path.size() <= dir.size()) return false;
  if (dir == "/") return path[0] == '/' && path.size() > 1;
  return path.compare(0, dir.size(), dir) == 0 && path[dir.size()] == '/';
}

PathVerdict ResolveArtifact(const std::string& model_path, const std::string& relative, ArtifactLocation* location,
                            std::string* error) {
  const std::string shown = Quote(relative);
  auto refuse = [&](const std::string& why) {
    *error = "the model names its kernel library " + shown + ", which " + why +
             "; a kernel path must be relative and stay inside the model's folder";
    return PathVerdict::kRefused;
  };
  if (relative.empty()) return refuse("is empty");
  if (relative.find('\0') != std::string::npos) return refuse("contains a NUL byte");
  if (relative[0] == '/') return refuse("is an absolute path");
  if (HasDotDotComponent(relative)) return refuse("climbs out with '..'");

  // The model's folder: the directory of the model file after resolving symlinks (of the file and its folders),
  // or the current directory for a model given as bytes.
  std::string folder;
  if (model_path.empty()) {
    folder = ".";
  } else {
    std::string real_model;
    if (RealPath(model_path, &real_model)) {
      folder = real_model.substr(0, real_model.find_last_of('/'));
      if (folder.empty()) folder = "/";
    } else {
      const size_t slash = model_path.find_last_of('/');
      folder = slash == std::string::npos ? "." : (slash == 0 ? "/" : model_path.substr(0, slash));
    }
  }
  if (!RealPath(folder, &location->model_dir)) {
    *error = "the model's folder " + Quote(folder) + " cannot be resolved: " + std::strerror(errno);
    return PathVerdict::kMissing;
  }
  const std::string candidate = (location->model_dir == "/" ? "" : location->model_dir) + "/" + relative;
  if (!RealPath(candidate, &location->path)) {
    const int saved = errno;
    if (saved == ENOENT || saved == ENOTDIR) {
      // A dangling symlink also lands here: missing either way, and nothing was opened.
      *error = "Cortex kernel artifact missing: " + candidate;
      return PathVerdict::kMissing;
    }
    *error = "Cortex kernel artifact cannot be resolved: " + candidate + ": " + std::strerror(saved);
    return PathVerdict::kMissing;
  }
  if (!IsInside(location->model_dir, location->path)) {
    return refuse("resolves (through a symbolic link) to " + Quote(location->path) + ", outside the model's folder " +
                  Quote(location->model_dir));
  }
  return PathVerdict::kOk;
}

}  // namespace cortex_ep

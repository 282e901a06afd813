// Where a converted model's kernel may live: a relative path inside the model's folder, after resolving symlinks.
// Plain C++ (POSIX), no ONNX Runtime types.
#pragma once
#include <string>

namespace cortex_ep {

struct ArtifactLocation {
  std::string model_dir;  // realpath of the model's folder (the current directory for a model given as bytes)
  std::string path;       // realpath of the kernel library, inside model_dir
};

enum class PathVerdict { kOk, kRefused, kMissing };

// Applies the path policy to `relative` (the node's ep_cache_context) for the model at `model_path` ("" when the
// model came as bytes). Lexical checks first (not empty, no NUL, not absolute, no ".." component), then realpath
// of the folder and of the candidate; the result must lie strictly inside the folder. Opens no file.
// On kRefused / kMissing, *error says why and names the path.
PathVerdict ResolveArtifact(const std::string& model_path, const std::string& relative, ArtifactLocation* location,
                            std::string* error);

// True when `path` lies strictly inside directory `dir` (both absolute and normalized).
bool IsInside(const std::string& dir, const std::string& path);

}  // namespace cortex_ep

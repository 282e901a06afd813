// Which kernel libraries the EP may load: native kernels are code, so by default only those this machine's Cortex
// compiled (the local trust store) or that the user trusted explicitly (a session option, an environment variable).
// Plain C++ (POSIX), no ONNX Runtime types. See docs/contracts.md ("Trust").
#pragma once
#include <string>
#include <vector>

namespace cortex_ep {

inline constexpr const char* kTrustDirEnv = "CORTEX_TRUST_DIR";            // the store's location
inline constexpr const char* kTrustedKernelsEnv = "CORTEX_TRUSTED_KERNELS";  // sha256 list for deployments
inline constexpr const char* kTrustedKernelsConfigKey = "cortex.trusted_kernels";  // session config entry
inline constexpr const char* kTrustedKernelsEpOption = "ep.cortexexecutionprovider.trusted_kernels";

// Parses a list of sha256 hex digests separated by commas, semicolons or white space (any case; stored lowercase).
// Returns false naming the first entry that is not 64 hex digits.
bool ParseHashList(const std::string& text, std::vector<std::string>* hashes, std::string* error);

// The trust store directory: $CORTEX_TRUST_DIR, else $XDG_CONFIG_HOME/cortex/trusted-kernels, else
// $HOME/.config/cortex/trusted-kernels. The Python writer (cortex/trust.py) uses the same rule.
std::string TrustStoreDir();

class TrustPolicy {
 public:
  TrustPolicy() = default;
  TrustPolicy(std::vector<std::string> session_hashes, std::string config_error)
      : session_hashes_(std::move(session_hashes)), config_error_(std::move(config_error)) {}

  // Why the session's trust options could not be read ("" when they could): every kernel load then fails with it.
  const std::string& config_error() const { return config_error_; }

  // True when `sha256` (lowercase hex) is trusted; *how says by what. When false, *note may say why the store
  // was not consulted (it is writable by others, say) or that the environment variable is malformed.
  bool IsTrusted(const std::string& sha256, std::string* how, std::string* note) const;

 private:
  std::vector<std::string> session_hashes_;
  std::string config_error_;
};

}  // namespace cortex_ep

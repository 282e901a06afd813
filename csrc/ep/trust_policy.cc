#include "trust_policy.h"

#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>

namespace cortex_ep {
namespace {

bool IsSha256Hex(const std::string& text) {
  return text.size() == 64 &&
         std::all_of(text.begin(), text.end(), [](unsigned char c) { return std::isxdigit(c) != 0; });
}

std::string Lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(), [](unsigned char c) { return std::tolower(c); });
  return text;
}

std::string HomeDir() {
  if (const char* home = std::getenv("HOME"); home != nullptr && home[0] != '\0') return home;
  if (const passwd* entry = getpwuid(geteuid()); entry != nullptr && entry->pw_dir != nullptr) return entry->pw_dir;
  return "";
}

// A store directory counts only when it belongs to this user (or root) and no one else can write into it: otherwise
// another account could add entries. Returns "" when safe, else why not.
std::string UnsafeStoreReason(const std::string& dir, const struct stat& info) {
  if (!S_ISDIR(info.st_mode)) return "the trust store " + dir + " is not a directory";
  if (info.st_uid != geteuid() && info.st_uid != 0) return "the trust store " + dir + " belongs to another user";
  if ((info.st_mode & (S_IWGRP | S_IWOTH)) != 0) return "the trust store " + dir + " is writable by other users";
  return "";
}

}  // namespace

bool ParseHashList(const std::string& text, std::vector<std::string>* hashes, std::string* error) {
  hashes->clear();
  std::string entry;
  auto flush = [&]() {
    if (entry.empty()) return true;
    if (!IsSha256Hex(entry)) {
      *error = "'" + entry.substr(0, 80) + "' is not a sha256 digest (64 hex digits)";
      return false;
    }
    hashes->push_back(Lower(entry));
    entry.clear();
    return true;
  };
  for (const char c : text) {
    if (c == ',' || c == ';' || std::isspace(static_cast<unsigned char>(c))) {
      if (!flush()) return false;
    } else {
      entry += c;
    }
  }
  return flush();
}

std::string TrustStoreDir() {
  if (const char* dir = std::getenv(kTrustDirEnv); dir != nullptr && dir[0] != '\0') return dir;
  if (const char* config = std::getenv("XDG_CONFIG_HOME"); config != nullptr && config[0] == '/') {
    return std::string(config) + "/cortex/trusted-kernels";
  }
  const std::string home = HomeDir();
  return home.empty() ? "" : home + "/.config/cortex/trusted-kernels";
}

bool TrustPolicy::IsTrusted(const std::string& sha256, std::string* how, std::string* note) const {
  note->clear();
  if (!IsSha256Hex(sha256)) return false;
  const std::string digest = Lower(sha256);
  if (std::find(session_hashes_.begin(), session_hashes_.end(), digest) != session_hashes_.end()) {
    *how = std::string("the session option ") + kTrustedKernelsConfigKey;
    return true;
  }
  if (const char* listed = std::getenv(kTrustedKernelsEnv); listed != nullptr) {
    std::vector<std::string> hashes;
    std::string parse_error;
    if (!ParseHashList(listed, &hashes, &parse_error)) {
      *note = std::string(kTrustedKernelsEnv) + " ignored: " + parse_error;
    } else if (std::find(hashes.begin(), hashes.end(), digest) != hashes.end()) {
      *how = kTrustedKernelsEnv;
      return true;
    }
  }
  const std::string dir = TrustStoreDir();
  if (dir.empty()) return false;
  struct stat dir_info;
  if (stat(dir.c_str(), &dir_info) != 0) return false;  // no store yet: nothing compiled or trusted here
  if (const std::string unsafe = UnsafeStoreReason(dir, dir_info); !unsafe.empty()) {
    *note = unsafe + " and was ignored";
    return false;
  }
  const std::string entry = dir + "/" + digest;
  struct stat entry_info;
  // lstat: an entry is a plain file of this user's (or root's), never a symlink to somewhere else.
  if (lstat(entry.c_str(), &entry_info) != 0 || !S_ISREG(entry_info.st_mode)) return false;
  if (entry_info.st_uid != geteuid() && entry_info.st_uid != 0) {
    *note = "the trust store entry " + entry + " belongs to another user and was ignored";
    return false;
  }
  *how = "the trust store " + dir;
  return true;
}

}  // namespace cortex_ep

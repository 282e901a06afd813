#include "cpu_check.h"

#include <cstring>

namespace cortex_ep {
namespace {

enum class Support { kUnknown, kMissing, kPresent };

Support Probe(const std::string& feature) {
#if defined(__x86_64__) || defined(__i386__)
  // __builtin_cpu_supports takes string literals only: one comparison per table entry.
#define CORTEX_CPU_FEATURE(name, macro, cpuinfo_flag) \
  if (feature == name) return __builtin_cpu_supports(name) ? Support::kPresent : Support::kMissing;
#include "cpu_features.def"
#undef CORTEX_CPU_FEATURE
#endif
  (void)feature;
  return Support::kUnknown;
}

}  // namespace

const char* HostArch() {
#if defined(__x86_64__)
  return "x86_64";
#elif defined(__aarch64__)
  return "aarch64";
#elif defined(__i386__)
  return "i386";
#elif defined(__powerpc64__)
  return "ppc64le";
#else
  return "unknown";
#endif
}

bool CpuSupports(const std::string& arch, const std::vector<std::string>& features, std::string* error) {
  if (!arch.empty() && arch != HostArch()) {
    *error = "was compiled for " + arch + " CPUs; this machine is " + HostArch();
    return false;
  }
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
#endif
  for (const std::string& feature : features) {
    switch (Probe(feature)) {
      case Support::kPresent:
        break;
      case Support::kMissing:
        *error = "needs the CPU feature '" + feature + "', which this CPU lacks";
        return false;
      case Support::kUnknown:
        *error = "needs the CPU feature '" + feature.substr(0, 64) + "', which this Cortex EP does not know";
        return false;
    }
  }
  return true;
}

}  // namespace cortex_ep

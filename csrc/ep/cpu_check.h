// Does this CPU run a kernel? The converted node records the architecture and the CPU features its kernel was
// compiled to use (names from csrc/runtime/cpu_features.def); the EP checks them before it loads the kernel, so
// a kernel built for a higher ISA level is refused with a message instead of dying on an illegal instruction.
#pragma once
#include <string>
#include <vector>

namespace cortex_ep {

// This build's architecture as converted models record it ("x86_64", "aarch64", ...).
const char* HostArch();

// True when every feature is known (cpu_features.def) and this CPU has it, and `arch` is empty or HostArch().
// Otherwise false, and *error names the first unknown or missing feature (or the architecture).
bool CpuSupports(const std::string& arch, const std::vector<std::string>& features, std::string* error);

}  // namespace cortex_ep

// The code generation targets the EP knows, in one place (cortex/codegen/targets.py is the Python registry): the name
// a converted node records in notes.target, the device its kernel runs on, and what to tell a user whose session runs
// the EP on another device.
#pragma once
#include <cstdint>
#include <string>

#include "kernel_abi.h"

namespace cortex_ep {

struct TargetInfo {
  const char* name;
  int32_t device;      // a CortexDeviceType
  const char* advice;  // for a node of this target that a session on another device does not claim
};

inline constexpr TargetInfo kTargets[] = {
    {"cpu", CORTEX_DEVICE_CPU,
     "Run it with cortex.InferenceSession(path) (device=\"cpu\"), or convert the model with --target cuda."},
    {"cuda", CORTEX_DEVICE_CUDA,
     "Run it with cortex.InferenceSession(path, device=\"cuda\") on a machine with an NVIDIA GPU, or convert the "
     "model with --target cpu."},
};

inline const TargetInfo* FindTarget(const std::string& name) {
  for (const TargetInfo& target : kTargets) {
    if (name == target.name) return &target;
  }
  return nullptr;
}

// The target whose kernels run on `device` (a CortexDeviceType).
inline const char* TargetOfDevice(int32_t device) {
  for (const TargetInfo& target : kTargets) {
    if (target.device == device) return target.name;
  }
  return "";
}

// CORTEX_DEVICE_CPU / CORTEX_DEVICE_CUDA for a target name, -1 for an unknown one.
inline int32_t DeviceOfTarget(const std::string& name) {
  const TargetInfo* target = FindTarget(name);
  return target != nullptr ? target->device : -1;
}

}  // namespace cortex_ep

// The ONNX Runtime C API as the Cortex EP uses it: the API tables, and small RAII helpers for OrtStatus.
#pragma once
#include <memory>
#include <string>

#include "onnxruntime_c_api.h"  // also declares the EP API (onnxruntime_ep_c_api.h)

namespace cortex_ep {

// The API tables handed over in CreateEpFactories; valid for the library's lifetime.
struct Api {
  const OrtApi& ort;
  const OrtEpApi& ep;
};

struct StatusDeleter {
  const OrtApi* ort;
  void operator()(OrtStatus* status) const { ort->ReleaseStatus(status); }
};
using StatusPtr = std::unique_ptr<OrtStatus, StatusDeleter>;

inline OrtStatus* MakeStatus(const Api& api, OrtErrorCode code, const std::string& message) {
  return api.ort.CreateStatus(code, message.c_str());
}

}  // namespace cortex_ep

// Returns the OrtStatus of `expr` from the enclosing function when it is an error.
#define CORTEX_RETURN_IF_ERROR(expr)        \
  do {                                      \
    OrtStatus* cortex_status_ = (expr);     \
    if (cortex_status_ != nullptr) return cortex_status_; \
  } while (0)

// Wraps the body of a C-ABI entry point so no C++ exception crosses into ONNX Runtime.
#define CORTEX_API_BEGIN try {
#define CORTEX_API_END(api)                                                         \
  }                                                                                 \
  catch (const std::exception& ex) {                                                \
    return ::cortex_ep::MakeStatus(api, ORT_EP_FAIL, std::string("Cortex EP: ") + ex.what()); \
  }                                                                                 \
  catch (...) {                                                                     \
    return ::cortex_ep::MakeStatus(api, ORT_EP_FAIL, "Cortex EP: unknown C++ exception"); \
  }

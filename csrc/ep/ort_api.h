// The ONNX Runtime C API as the Cortex EP uses it: the API tables, ORT's C++ wrapper over them for the graph
// queries, and small RAII helpers for OrtStatus.
#pragma once
#include <memory>
#include <string>

// The EP does not link ONNX Runtime: the wrapper gets the API table CreateEpFactories is given (Ort::InitApi), never
// OrtGetApiBase. Every file of the EP includes the wrapper through this header, so all agree on the macro.
#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"  // the C API, the EP API (onnxruntime_ep_c_api.h) and the C++ wrapper
#undef ORT_API_MANUAL_INIT

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

// Wraps the body of a C-ABI entry point so no C++ exception crosses into ONNX Runtime. A failed call through ORT's
// C++ wrapper (Ort::Exception) returns ORT's own error code and message, as the C call's status would have.
#define CORTEX_API_BEGIN try {
#define CORTEX_API_END(api)                                                         \
  }                                                                                 \
  catch (const Ort::Exception& ex) {                                                \
    return ::cortex_ep::MakeStatus(api, ex.GetOrtErrorCode(), ex.what());           \
  }                                                                                 \
  catch (const std::exception& ex) {                                                \
    return ::cortex_ep::MakeStatus(api, ORT_EP_FAIL, std::string("Cortex EP: ") + ex.what()); \
  }                                                                                 \
  catch (...) {                                                                     \
    return ::cortex_ep::MakeStatus(api, ORT_EP_FAIL, "Cortex EP: unknown C++ exception"); \
  }

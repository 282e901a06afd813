// The library's two exported entry points (see exports.map); everything else is hidden.
#include <new>

#include "cortex_ep_factory.h"

#define CORTEX_EXPORT __attribute__((visibility("default")))

extern "C" {

CORTEX_EXPORT OrtStatus* CreateEpFactories(const char* /*registration_name*/, const OrtApiBase* ort_api_base,
                                           const OrtLogger* /*default_logger*/, OrtEpFactory** factories,
                                           size_t max_factories, size_t* num_factories) {
  *num_factories = 0;
  const OrtApi* ort = ort_api_base->GetApi(ORT_API_VERSION);
  if (ort == nullptr) return nullptr;  // an ONNX Runtime older than our headers: offer nothing
  Ort::InitApi(ort);  // the C++ wrapper's table (ort_api.h)
  const OrtEpApi* ep = ort->GetEpApi();
  if (max_factories < 1) return ort->CreateStatus(ORT_INVALID_ARGUMENT, "Cortex EP needs room for one factory");
  const cortex_ep::Api api{*ort, *ep};
  auto* factory = new (std::nothrow) cortex_ep::CortexEpFactory(api);
  if (factory == nullptr) return ort->CreateStatus(ORT_FAIL, "Cortex EP: out of memory");
  factories[0] = factory;
  *num_factories = 1;
  return nullptr;
}

CORTEX_EXPORT OrtStatus* ReleaseEpFactory(OrtEpFactory* factory) {
  delete static_cast<cortex_ep::CortexEpFactory*>(factory);
  return nullptr;
}

}  // extern "C"

// The Cortex execution provider (an OrtEp): claims Cortex EPContext nodes, loads their kernels, runs them.
#pragma once
#include <map>
#include <mutex>
#include <string>

#include "ort_api.h"
#include "targets.h"
#include "trust_policy.h"

namespace cortex_ep {

inline constexpr const char* kEpName = "CortexExecutionProvider";
// Session config entry: for a model given as bytes, the path of the model file it was made from (the merge path
// runs a converted model's body as bytes, cortex/serving/tail.py); its kernels are resolved in that file's folder.
inline constexpr const char* kModelPathConfigKey = "cortex.model_path";

// Where an EP instance runs its kernels: the CPU, or one CUDA device (its ordinal and its memory info, owned by the
// factory); `target` names the kernels it claims (targets.h).
struct EpPlacement {
  std::string target = TargetOfDevice(CORTEX_DEVICE_CPU);
  int device_id = 0;
  const OrtMemoryInfo* device_memory = nullptr;
};

class CortexEp : public OrtEp {
 public:
  // `bytes_model_path`: for a model given as bytes, the path of the model file it was made from (the session
  // config entry cortex.model_path, set by the caller): its kernels are found in that file's folder.
  CortexEp(const Api& api, TrustPolicy trust, EpPlacement placement = {}, const OrtLogger* logger = nullptr,
           std::string bytes_model_path = "");

 private:
  static const char* ORT_API_CALL GetNameImpl(const OrtEp* this_ptr) noexcept;
  static OrtStatus* ORT_API_CALL GetCapabilityImpl(OrtEp* this_ptr, const OrtGraph* graph,
                                                   OrtEpGraphSupportInfo* graph_support_info) noexcept;
  static OrtStatus* ORT_API_CALL CompileImpl(OrtEp* this_ptr, const OrtGraph** graphs, const OrtNode** fused_nodes,
                                             size_t count, OrtNodeComputeInfo** node_compute_infos,
                                             OrtNode** ep_context_nodes) noexcept;
  static void ORT_API_CALL ReleaseNodeComputeInfosImpl(OrtEp* this_ptr, OrtNodeComputeInfo** node_compute_infos,
                                                       size_t num_node_compute_infos) noexcept;

  OrtStatus* ClaimCortexNodes(const OrtGraph* graph, OrtEpGraphSupportInfo* graph_support_info);
  // Loads the kernel of the one Cortex node in `graph` (fused as `fused_node`) and wraps it as a compute info.
  OrtStatus* CompileNode(const OrtGraph* graph, const OrtNode* fused_node, OrtNodeComputeInfo** compute_info);

  // Logs through the session's logger (when ORT gave one); logging failures are ignored.
  void Log(OrtLoggingLevel level, const std::string& message) const;

  Api api_;
  TrustPolicy trust_;  // the session's explicit trust, plus the environment and the store
  EpPlacement placement_;  // placement_.target: the kernels this EP runs and the only nodes it claims
  const OrtLogger* logger_;  // the session's, valid for the EP's life
  std::string bytes_model_path_;  // where a model given as bytes came from ("": the current directory)

  // Cortex nodes GetCapability found inside a subgraph (node name -> the node whose subgraph holds it). They are
  // claimed so that Compile refuses them with a clear message: the graph Compile gets does not tell a subgraph, and
  // ORT reports an error of Compile, while one of GetCapability only leaves the node unclaimed.
  std::mutex subgraph_nodes_mutex_;
  std::map<std::string, std::string> subgraph_nodes_;
};

}  // namespace cortex_ep

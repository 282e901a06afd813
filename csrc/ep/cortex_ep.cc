#include "cortex_ep.h"

#include <algorithm>
#include <memory>
#include <type_traits>
#include <vector>

#include "json_field.h"
#include "kernel_library.h"

namespace cortex_ep {
namespace {

// ---- graph queries through ORT's C++ wrapper (Ort::ConstGraph, Ort::ConstNode, Ort::ConstOpAttr): a failed call
// throws Ort::Exception, which the entry points (CORTEX_API_END) return as ORT's own status ----------------------

// Names of a node's inputs or outputs (a missing optional value gives "").
std::vector<std::string> ValueNames(Ort::ConstNode node, bool outputs) {
  std::vector<std::string> names;
  for (const Ort::ConstValueInfo& info : outputs ? node.GetOutputs() : node.GetInputs()) {
    names.push_back(info ? info.GetName() : std::string());
  }
  return names;
}

// What the model declares about a value (its type and shape after ORT's inference).
DeclaredTensor ReadDeclared(Ort::ConstValueInfo info) {
  DeclaredTensor declared;
  if (!info) return declared;
  const Ort::ConstTypeInfo type_info = info.TypeInfo();
  if (!type_info) return declared;
  const ONNXType onnx_type = type_info.GetONNXType();
  declared.typed = onnx_type != ONNX_TYPE_UNKNOWN;
  if (onnx_type != ONNX_TYPE_TENSOR) return declared;
  const Ort::ConstTensorTypeAndShapeInfo tensor = type_info.GetTensorTypeAndShapeInfo();
  if (!tensor) return declared;
  declared.tensor = true;
  const ONNXTensorElementDataType element_type = tensor.GetElementType();
  declared.dtype = static_cast<int32_t>(element_type);
  declared.typed = element_type != ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  declared.shaped = tensor.HasShape();
  if (declared.shaped) declared.dims = tensor.GetShape();
  return declared;
}

// The node's inputs and outputs as the model declares them against the kernel's signature: "" when they agree, else
// the first disagreement. The kernel trusts its signature: a model that declares its outputs narrower than the
// float32 rows the kernel writes would have it write past ORT's buffers.
std::string SignatureDisagreement(Ort::ConstNode node, const KernelSignature& signature) {
  for (const bool outputs : {false, true}) {
    const std::vector<Ort::ConstValueInfo> infos = outputs ? node.GetOutputs() : node.GetInputs();
    const std::vector<TensorSignature>& tensors = outputs ? signature.outputs : signature.inputs;
    const char* what = outputs ? "outputs" : "inputs";
    if (infos.size() != tensors.size()) {
      return "the node has " + std::to_string(infos.size()) + " " + what + ", but its kernel " +
             (outputs ? "writes " : "reads ") + std::to_string(tensors.size());
    }
    for (size_t i = 0; i < infos.size(); ++i) {
      const std::string name = infos[i] ? infos[i].GetName() : std::string();
      const std::string which = std::string(outputs ? "output " : "input ") + std::to_string(i) + " '" + name + "' ";
      if (name.empty()) return which + "is not given, but its kernel needs it";
      const std::string disagreement = CompareDeclared(ReadDeclared(infos[i]), tensors[i], outputs);
      if (!disagreement.empty()) return which + disagreement;
    }
  }
  return "";
}

// The one message for a Cortex node that is not in the main graph (the Python tools say the same).
std::string InsideSubgraphMessage(const std::string& node_name, const std::string& parent_name) {
  return "Cortex node '" + node_name + "' is inside the subgraph of node '" + parent_name +
         "': Cortex writes its nodes only into the main graph, so this model was edited; convert the original "
         "model again";
}

// The node whose subgraph `graph` is ("(unnamed <op>)" when it has no name), or "" for the main graph.
std::string ParentNodeName(Ort::ConstGraph graph) {
  const Ort::ConstNode parent = graph.GetParentNode();
  if (!parent) return "";
  const std::string name = parent.GetName();
  return name.empty() ? "(unnamed " + parent.GetOperatorType() + ")" : name;
}

// For each input of the Cortex node, the index of the fused node's input that carries the same value. ORT gives
// a fused node each distinct value once, so a node that reads one value twice has fewer fused inputs; the kernel
// wants the node's own input list. Returns "" or why an input cannot be mapped.
std::string MapToFusedInputs(Ort::ConstNode node, Ort::ConstNode fused_node, std::vector<size_t>* map) {
  const std::vector<std::string> fused_inputs = ValueNames(fused_node, false);
  map->clear();
  for (const std::string& name : ValueNames(node, false)) {
    const auto it = std::find(fused_inputs.begin(), fused_inputs.end(), name);
    if (name.empty() || it == fused_inputs.end()) {
      return "input '" + name + "' of the node is not an input of its fused node";
    }
    map->push_back(static_cast<size_t>(it - fused_inputs.begin()));
  }
  return "";
}

constexpr size_t kScratchOutput = static_cast<size_t>(-1);

// For each output of the Cortex node, the index of the fused node's output that carries it, or kScratchOutput
// when ORT dropped it because nothing reads it: the kernel still needs the memory (a state table it reads back
// while it runs), so it gets a scratch buffer instead.
std::vector<size_t> MapToFusedOutputs(Ort::ConstNode node, Ort::ConstNode fused_node) {
  const std::vector<std::string> fused_outputs = ValueNames(fused_node, true);
  std::vector<size_t> map;
  for (const std::string& name : ValueNames(node, true)) {
    const auto it = std::find(fused_outputs.begin(), fused_outputs.end(), name);
    map.push_back(name.empty() || it == fused_outputs.end() ? kScratchOutput
                                                            : static_cast<size_t>(it - fused_outputs.begin()));
  }
  return map;
}

// Reads the STRING (T = std::string) or INT (T = int64_t) attribute `name`; false when the node has none of that
// name. An attribute of another type is an error (thrown as ORT_INVALID_ARGUMENT).
template <typename T>
bool ReadAttribute(Ort::ConstNode node, const char* name, T* value) {
  constexpr bool kString = std::is_same_v<T, std::string>;
  Ort::ConstOpAttr attribute{nullptr};
  Ort::Status lookup = node.GetAttributeByName(name, attribute);
  if (!lookup.IsOK() && lookup.GetErrorCode() == ORT_NOT_FOUND) return false;
  Ort::ThrowOnError(lookup);
  if (!attribute) return false;
  if (attribute.GetType() != (kString ? ORT_OP_ATTR_STRING : ORT_OP_ATTR_INT)) {
    throw Ort::Exception(std::string("attribute '") + name + (kString ? "' is not a string" : "' is not an integer"),
                         ORT_INVALID_ARGUMENT);
  }
  Ort::ThrowOnError(attribute.GetValue(*value));
  return true;
}

// True for an EPContext node (domain com.microsoft) whose `source` names this EP.
bool IsCortexNode(Ort::ConstNode node) {
  if (node.GetOperatorType() != "EPContext" || node.GetDomain() != "com.microsoft") return false;
  std::string source;
  return ReadAttribute(node, "source", &source) && source == kEpName;
}

// The node's notes (docs/contracts.md): kernel_sha256 (required), cpu_arch, cpu_level, cpu_features (optional).
bool ReadNotes(const std::string& notes, KernelRequest* request, std::string* error) {
  JsonObject members;
  if (!ParseJsonObject(notes, &members, error)) return false;
  auto string_member = [&](const char* key, std::string* value, bool required) {
    const auto it = members.find(key);
    if (it == members.end()) {
      if (required) *error = std::string("no member \"") + key + "\"";
      return !required;
    }
    if (it->second.kind != JsonMember::Kind::kString) {
      *error = std::string("member \"") + key + "\" is not a string";
      return false;
    }
    *value = it->second.string_value;
    return true;
  };
  if (!string_member("kernel_sha256", &request->expected_sha256, true)) return false;
  if (!string_member("cpu_arch", &request->cpu_arch, false)) return false;
  if (!string_member("cpu_level", &request->cpu_level, false)) return false;
  if (!string_member("target", &request->target, false)) return false;
  if (DeviceOfTarget(request->target) < 0) {
    *error = "member \"target\" names an unknown target '" + request->target + "'";
    return false;
  }
  if (const auto it = members.find("cpu_features"); it != members.end()) {
    if (it->second.kind != JsonMember::Kind::kStringArray) {
      *error = "member \"cpu_features\" is not an array of strings";
      return false;
    }
    request->cpu_features = it->second.items;
  }
  return true;
}

// ---- per-run: ORT tensors in, kernel call, ORT tensors out ---------------------------------------------------

// "input 2 'left' " / "output 0 'h' ": a value of the node, for messages.
std::string ValueLabel(bool output, size_t index, const std::vector<std::string>& names) {
  return std::string(output ? "output " : "input ") + std::to_string(index) + " '" +
         (index < names.size() ? names[index] : std::string()) + "' ";
}

// Backs the kernel's CortexAllocOutput with KernelContext_GetOutput; remembers the first failure. Every output is
// held to the kernel's signature: the shape the kernel asks for, and the type of the tensor ORT creates (the kernel
// writes its signature's element type, whatever ORT allocated).
class OutputAllocator {
 public:
  // `device_memory`: where the kernel's outputs live when it runs on a GPU (scratch outputs are allocated there), or
  // null for a CPU kernel.
  OutputAllocator(const Api& api, OrtKernelContext* context, const std::vector<size_t>& output_map,
                  const std::vector<TensorSignature>& signature, const std::vector<std::string>& names,
                  const OrtMemoryInfo* device_memory)
      : api_(api),
        context_(context),
        output_map_(output_map),
        signature_(signature),
        names_(names),
        device_memory_(device_memory),
        allocated_(output_map.size(), false),
        scratch_(output_map.size()),
        error_(nullptr, StatusDeleter{&api.ort}) {}

  // Device scratch goes back when the run is over (a CUDA kernel has synchronized its stream before it returns).
  ~OutputAllocator() {
    if (device_allocator_ == nullptr) return;
    for (void* block : device_scratch_) device_allocator_->Free(device_allocator_, block);
    api_.ort.ReleaseAllocator(device_allocator_);
  }
  OutputAllocator(const OutputAllocator&) = delete;
  OutputAllocator& operator=(const OutputAllocator&) = delete;

  static void* Allocate(void* self, int32_t index, const int64_t* shape, int32_t rank) noexcept {
    try {
      return static_cast<OutputAllocator*>(self)->AllocateOutput(index, shape, rank);
    } catch (...) {
      return nullptr;
    }
  }

  OrtStatus* TakeError() { return error_.release(); }

  // Index of the first output the kernel did not create, or -1.
  int64_t FirstMissingOutput() const {
    for (size_t i = 0; i < allocated_.size(); ++i) {
      if (!allocated_[i]) return static_cast<int64_t>(i);
    }
    return -1;
  }

 private:
  void* AllocateOutput(int32_t index, const int64_t* shape, int32_t rank) {
    if (index < 0 || static_cast<size_t>(index) >= allocated_.size() ||
        static_cast<size_t>(index) >= signature_.size() || rank < 0 || (rank > 0 && shape == nullptr)) {
      Fail(MakeStatus(api_, ORT_FAIL, "kernel asked for output " + std::to_string(index) + " of rank " +
                                          std::to_string(rank) + "; the node has " +
                                          std::to_string(allocated_.size()) + " outputs"));
      return nullptr;
    }
    const TensorSignature& expected = signature_[index];
    const std::string label = ValueLabel(true, static_cast<size_t>(index), names_);
    if (!CompareTensor(expected.dtype, shape, static_cast<size_t>(rank), expected, true).empty()) {
      const std::vector<int64_t> asked(shape, shape + rank);
      Fail(MakeStatus(api_, ORT_FAIL, "the kernel asked for " + label + "as " + Describe(expected.dtype, asked) +
                                          ", against its own signature " + Describe(expected.dtype, expected.dims)));
      return nullptr;
    }
    if (output_map_[index] == kScratchOutput) {
      size_t elements = 1;
      for (int32_t d = 0; d < rank; ++d) elements *= static_cast<size_t>(shape[d] > 0 ? shape[d] : 0);
      if (device_memory_ != nullptr) return DeviceScratch(index, 8 * (elements + 1));
      scratch_[index].resize(elements + 1);  // 8-byte elements hold any kernel dtype
      allocated_[index] = true;
      return scratch_[index].data();
    }
    OrtValue* value = nullptr;
    if (OrtStatus* status = api_.ort.KernelContext_GetOutput(context_, output_map_[index], shape, rank, &value)) {
      Fail(status);
      return nullptr;
    }
    ONNXTensorElementDataType created_type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    const int64_t* created_shape = nullptr;
    size_t created_rank = 0;
    if (OrtStatus* status = api_.ort.GetTensorElementTypeAndShapeDataReference(value, &created_type, &created_shape,
                                                                               &created_rank)) {
      Fail(status);
      return nullptr;
    }
    const std::string disagreement =
        CompareTensor(static_cast<int32_t>(created_type), created_shape, created_rank, expected, true);
    if (!disagreement.empty()) {
      Fail(MakeStatus(api_, ORT_FAIL, "ONNX Runtime created " + label + "that " + disagreement));
      return nullptr;
    }
    void* data = nullptr;
    if (OrtStatus* status = api_.ort.GetTensorMutableData(value, &data)) {
      Fail(status);
      return nullptr;
    }
    allocated_[index] = true;
    static char empty_tensor;  // an empty output may have no buffer; the kernel must still see success
    return data != nullptr ? data : &empty_tensor;
  }

  // Scratch for an output no one reads, in the kernel's device memory (the session's allocator for it).
  void* DeviceScratch(int32_t index, size_t bytes) {
    if (device_allocator_ == nullptr) {
      if (OrtStatus* status = api_.ort.KernelContext_GetAllocator(context_, device_memory_, &device_allocator_)) {
        device_allocator_ = nullptr;
        Fail(status);
        return nullptr;
      }
    }
    void* block = device_allocator_->Alloc(device_allocator_, bytes);
    if (block == nullptr) {
      Fail(MakeStatus(api_, ORT_FAIL, "out of device memory for a scratch output of " + std::to_string(bytes) +
                                          " bytes"));
      return nullptr;
    }
    device_scratch_.push_back(block);
    allocated_[index] = true;
    return block;
  }

  void Fail(OrtStatus* status) {
    if (error_) {
      api_.ort.ReleaseStatus(status);
    } else {
      error_.reset(status);
    }
  }

  const Api& api_;
  OrtKernelContext* context_;
  const std::vector<size_t>& output_map_;
  const std::vector<TensorSignature>& signature_;
  const std::vector<std::string>& names_;
  const OrtMemoryInfo* device_memory_;
  std::vector<bool> allocated_;
  std::vector<std::vector<int64_t>> scratch_;  // outputs no one reads (host kernels)
  OrtAllocator* device_allocator_ = nullptr;   // released with ReleaseAllocator
  std::vector<void*> device_scratch_;          // outputs no one reads (device kernels)
  StatusPtr error_;
};

// One compiled Cortex node. Owns its kernel library, so the library stays loaded while ORT can run the node
// (ORT releases compute infos when the session's EP is destroyed).
class KernelComputeInfo : public OrtNodeComputeInfo {
 public:
  KernelComputeInfo(const Api& api, std::string node_name, std::shared_ptr<const KernelLibrary> kernel,
                    std::vector<size_t> input_map, std::vector<size_t> output_map, std::vector<std::string> input_names,
                    std::vector<std::string> output_names, EpPlacement placement)
      : OrtNodeComputeInfo{},
        api_(api),
        node_name_(std::move(node_name)),
        kernel_(std::move(kernel)),
        input_map_(std::move(input_map)),
        output_map_(std::move(output_map)),
        input_names_(std::move(input_names)),
        output_names_(std::move(output_names)),
        placement_(std::move(placement)) {
    ort_version_supported = ORT_API_VERSION;
    CreateState = CreateStateImpl;
    Compute = ComputeImpl;
    ReleaseState = ReleaseStateImpl;
  }

 private:
  static OrtStatus* ORT_API_CALL CreateStateImpl(OrtNodeComputeInfo* this_ptr, OrtNodeComputeContext*,
                                                 void** compute_state) noexcept {
    *compute_state = this_ptr;  // all state lives in the compute info; runs share nothing mutable
    return nullptr;
  }

  static OrtStatus* ORT_API_CALL ComputeImpl(OrtNodeComputeInfo* this_ptr, void*,
                                             OrtKernelContext* kernel_context) noexcept {
    auto* self = static_cast<KernelComputeInfo*>(this_ptr);
    CORTEX_API_BEGIN
    return self->Run(kernel_context);
    CORTEX_API_END(self->api_)
  }

  static void ORT_API_CALL ReleaseStateImpl(OrtNodeComputeInfo*, void*) noexcept {}

  OrtStatus* Run(OrtKernelContext* context) const {
    size_t num_inputs = 0, num_outputs = 0;
    CORTEX_RETURN_IF_ERROR(api_.ort.KernelContext_GetInputCount(context, &num_inputs));
    CORTEX_RETURN_IF_ERROR(api_.ort.KernelContext_GetOutputCount(context, &num_outputs));

    const bool on_gpu = DeviceOfTarget(placement_.target) == CORTEX_DEVICE_CUDA;
    const KernelSignature& signature = kernel_->signature();
    std::vector<CortexTensor> inputs(input_map_.size());
    for (size_t i = 0; i < input_map_.size(); ++i) {
      if (input_map_[i] >= num_inputs) {
        return MakeStatus(api_, ORT_FAIL, Prefix() + "the fused node has " + std::to_string(num_inputs) +
                                              " inputs; the node's input " + std::to_string(i) + " is missing");
      }
      const OrtValue* value = nullptr;
      CORTEX_RETURN_IF_ERROR(api_.ort.KernelContext_GetInput(context, input_map_[i], &value));
      if (value == nullptr) {
        return MakeStatus(api_, ORT_INVALID_ARGUMENT, Prefix() + "input " + std::to_string(i) + " is missing");
      }
      ONNXTensorElementDataType type;
      const int64_t* shape = nullptr;
      size_t rank = 0;
      CORTEX_RETURN_IF_ERROR(api_.ort.GetTensorElementTypeAndShapeDataReference(value, &type, &shape, &rank));
      // The kernel reads what its signature says: a tensor of another type or shape never reaches it.
      const std::string disagreement =
          i < signature.inputs.size()
              ? CompareTensor(static_cast<int32_t>(type), shape, rank, signature.inputs[i], false)
              : std::string("is not in the kernel's signature");
      if (!disagreement.empty()) {
        return MakeStatus(api_, ORT_INVALID_ARGUMENT, Prefix() + ValueLabel(false, i, input_names_) + disagreement);
      }
      const void* data = nullptr;
      CORTEX_RETURN_IF_ERROR(api_.ort.GetTensorData(value, &data));
      const int32_t device = DeviceOf(value);
      if (device != CORTEX_DEVICE_CPU && !on_gpu) {
        return MakeStatus(api_, ORT_FAIL, Prefix() + "input " + std::to_string(i) +
                                              " is in GPU memory; a CPU kernel reads host memory");
      }
      inputs[i] = CortexTensor{data, shape, static_cast<int32_t>(rank), static_cast<int32_t>(type), device, 0};
    }

    (void)num_outputs;
    CortexExecution execution{CORTEX_DEVICE_CPU, 0, nullptr};
    if (on_gpu) {
      // The stream ORT runs this node on (our sync stream, or the one of the EP whose stream handlers the session
      // uses for GPUs); null: the legacy default stream. The kernel synchronizes it before returning.
      void* stream = nullptr;
      CORTEX_RETURN_IF_ERROR(api_.ort.KernelContext_GetGPUComputeStream(context, &stream));
      execution = CortexExecution{CORTEX_DEVICE_CUDA, placement_.device_id, stream};
    }
    OutputAllocator allocator(api_, context, output_map_, signature.outputs, output_names_,
                              on_gpu ? placement_.device_memory : nullptr);
    char message[4096] = {0};
    const int32_t rc = kernel_->Run(inputs.data(), static_cast<int32_t>(inputs.size()), &OutputAllocator::Allocate,
                                    &allocator, &execution, message, sizeof(message));
    message[sizeof(message) - 1] = '\0';
    if (OrtStatus* allocation_error = allocator.TakeError()) {
      StatusPtr owned(allocation_error, StatusDeleter{&api_.ort});
      return MakeStatus(api_, api_.ort.GetErrorCode(owned.get()),
                        Prefix() + "creating an output failed: " + api_.ort.GetErrorMessage(owned.get()) +
                            (rc != 0 ? std::string(" (kernel: ") + message + ")" : std::string()));
    }
    if (rc != 0) {
      return MakeStatus(api_, ORT_FAIL, Prefix() + (message[0] ? message : "failed without a message"));
    }
    if (const int64_t missing = allocator.FirstMissingOutput(); missing >= 0) {
      return MakeStatus(api_, ORT_FAIL, Prefix() + "the kernel returned without creating output " +
                                            std::to_string(missing));
    }
    return nullptr;
  }

  std::string Prefix() const { return "Cortex kernel '" + kernel_->identity() + "' (node " + node_name_ + "): "; }

  // Where a tensor is: CORTEX_DEVICE_CUDA for GPU device memory, else CORTEX_DEVICE_CPU (CPU memory, and pinned
  // host memory, which the host reads directly).
  int32_t DeviceOf(const OrtValue* value) const {
    const OrtMemoryDevice* memory = api_.ep.Value_GetMemoryDevice(value);
    if (memory != nullptr && api_.ep.MemoryDevice_GetDeviceType(memory) == OrtMemoryInfoDeviceType_GPU &&
        api_.ep.MemoryDevice_GetMemoryType(memory) == OrtDeviceMemoryType_DEFAULT) {
      return CORTEX_DEVICE_CUDA;
    }
    return CORTEX_DEVICE_CPU;
  }

  const Api& api_;
  std::string node_name_;
  std::shared_ptr<const KernelLibrary> kernel_;
  std::vector<size_t> input_map_;   // node input -> fused node input
  std::vector<size_t> output_map_;  // node output -> fused node output, or kScratchOutput
  std::vector<std::string> input_names_, output_names_;  // the node's, for messages
  EpPlacement placement_;
};

}  // namespace

CortexEp::CortexEp(const Api& api, TrustPolicy trust, EpPlacement placement, const OrtLogger* logger,
                   std::string bytes_model_path)
    : OrtEp{},
      api_(api),
      trust_(std::move(trust)),
      placement_(std::move(placement)),
      logger_(logger),
      bytes_model_path_(std::move(bytes_model_path)) {
  ort_version_supported = ORT_API_VERSION;
  GetName = GetNameImpl;
  GetCapability = GetCapabilityImpl;
  Compile = CompileImpl;
  ReleaseNodeComputeInfos = ReleaseNodeComputeInfosImpl;
}

const char* ORT_API_CALL CortexEp::GetNameImpl(const OrtEp*) noexcept { return kEpName; }

OrtStatus* ORT_API_CALL CortexEp::GetCapabilityImpl(OrtEp* this_ptr, const OrtGraph* graph,
                                                    OrtEpGraphSupportInfo* graph_support_info) noexcept {
  auto* ep = static_cast<CortexEp*>(this_ptr);
  CORTEX_API_BEGIN
  return ep->ClaimCortexNodes(graph, graph_support_info);
  CORTEX_API_END(ep->api_)
}

OrtStatus* CortexEp::ClaimCortexNodes(const OrtGraph* graph, OrtEpGraphSupportInfo* graph_support_info) {
  const Ort::ConstGraph ort_graph{graph};
  const std::string parent_name = ParentNodeName(ort_graph);
  OrtNodeFusionOptions fusion_options{};
  fusion_options.ort_version_supported = ORT_API_VERSION;
  fusion_options.drop_constant_initializers = false;  // the kernel receives its prepared constants as inputs
  for (const Ort::ConstNode& node : ort_graph.GetNodes()) {
    if (!IsCortexNode(node)) continue;
    const OrtNode* claimed = node;
    if (!parent_name.empty()) {
      const std::string name = node.GetName();
      {
        std::lock_guard<std::mutex> lock(subgraph_nodes_mutex_);
        subgraph_nodes_[name] = parent_name;
      }
      Log(ORT_LOGGING_LEVEL_WARNING, InsideSubgraphMessage(name, parent_name));
      CORTEX_RETURN_IF_ERROR(api_.ep.EpGraphSupportInfo_AddNodesToFuse(graph_support_info, &claimed, 1,
                                                                       &fusion_options));
      continue;
    }
    // Only nodes compiled for this EP's device: a CUDA node is left to a Cortex EP on the GPU.
    std::string notes, error;
    KernelRequest request;
    if (ReadAttribute(node, "notes", &notes) && ReadNotes(notes, &request, &error) &&
        request.target != placement_.target) {
      Log(ORT_LOGGING_LEVEL_WARNING,
          std::string("Cortex EP (") + placement_.target + "): not claiming node '" + node.GetName() +
              "': its kernel is for target '" + request.target + "'. " + FindTarget(request.target)->advice);
      continue;
    }
    // One call per node: each Cortex node becomes its own fused node, compiled alone.
    CORTEX_RETURN_IF_ERROR(api_.ep.EpGraphSupportInfo_AddNodesToFuse(graph_support_info, &claimed, 1,
                                                                     &fusion_options));
  }
  return nullptr;
}

OrtStatus* ORT_API_CALL CortexEp::CompileImpl(OrtEp* this_ptr, const OrtGraph** graphs, const OrtNode** fused_nodes,
                                              size_t count, OrtNodeComputeInfo** node_compute_infos,
                                              OrtNode** /*ep_context_nodes*/) noexcept {
  auto* ep = static_cast<CortexEp*>(this_ptr);
  CORTEX_API_BEGIN
  for (size_t i = 0; i < count; ++i) node_compute_infos[i] = nullptr;
  for (size_t i = 0; i < count; ++i) {
    CORTEX_RETURN_IF_ERROR(ep->CompileNode(graphs[i], fused_nodes[i], &node_compute_infos[i]));
  }
  return nullptr;
  CORTEX_API_END(ep->api_)
}

OrtStatus* CortexEp::CompileNode(const OrtGraph* graph, const OrtNode* fused_node,
                                 OrtNodeComputeInfo** compute_info) {
  const Ort::ConstGraph ort_graph{graph};
  const std::vector<Ort::ConstNode> nodes = ort_graph.GetNodes();
  if (nodes.size() != 1 || !IsCortexNode(nodes[0])) {
    return MakeStatus(api_, ORT_EP_FAIL, "Cortex EP: expected one Cortex EPContext node per fused node, got " +
                                             std::to_string(nodes.size()) + " nodes");
  }
  const Ort::ConstNode node = nodes[0];
  const std::string node_name = node.GetName();
  const std::string where = "Cortex node '" + node_name + "': ";

  // Cortex writes its nodes only into the main graph; one in a subgraph was put there by someone else.
  {
    std::lock_guard<std::mutex> lock(subgraph_nodes_mutex_);
    const auto it = subgraph_nodes_.find(node_name);
    if (it != subgraph_nodes_.end()) {
      return MakeStatus(api_, ORT_INVALID_GRAPH, InsideSubgraphMessage(node_name, it->second));
    }
  }

  std::string cache_context, notes;
  int64_t embed_mode = 0;
  const bool has_cache_context = ReadAttribute(node, "ep_cache_context", &cache_context);
  const bool has_notes = ReadAttribute(node, "notes", &notes);
  const bool has_embed_mode = ReadAttribute(node, "embed_mode", &embed_mode);
  if (!has_cache_context || cache_context.empty()) {
    return MakeStatus(api_, ORT_INVALID_GRAPH, where + "no ep_cache_context (the kernel library path)");
  }
  if (has_embed_mode && embed_mode != 0) {
    return MakeStatus(api_, ORT_INVALID_GRAPH, where + "embed_mode must be 0 (the kernel is a file beside the model)");
  }
  if (!trust_.config_error().empty()) return MakeStatus(api_, ORT_INVALID_ARGUMENT, "Cortex EP: " + trust_.config_error());
  if (!has_notes) return MakeStatus(api_, ORT_INVALID_GRAPH, where + "no attribute notes (JSON with \"kernel_sha256\")");
  KernelRequest request;
  std::string notes_error;
  if (!ReadNotes(notes, &request, &notes_error)) {
    return MakeStatus(api_, ORT_INVALID_GRAPH, where + "attribute notes: " + notes_error);
  }
  request.relative_path = cache_context;
  request.model_path = ort_graph.GetModelPath();
  if (request.model_path.empty()) request.model_path = bytes_model_path_;

  KernelLibrary::LoadError load_error = KernelLibrary::LoadError::kNone;
  std::string message;
  std::shared_ptr<const KernelLibrary> kernel = KernelLibrary::Load(request, trust_, &load_error, &message);
  if (!kernel) {
    OrtErrorCode code = ORT_FAIL;
    if (load_error == KernelLibrary::LoadError::kMissing) code = ORT_NO_SUCHFILE;
    if (load_error == KernelLibrary::LoadError::kRefusedPath || load_error == KernelLibrary::LoadError::kRefusedFile) {
      code = ORT_INVALID_GRAPH;
    }
    return MakeStatus(api_, code, message);
  }

  // The model must declare what the kernel reads and writes (types and ranks, and every dimension static in both).
  const std::string signature_error = SignatureDisagreement(node, kernel->signature());
  if (!signature_error.empty()) {
    return MakeStatus(api_, ORT_INVALID_GRAPH,
                      where + signature_error + " (" + kernel->path() +
                          "); the model no longer matches its kernel, so it was edited after conversion: convert the "
                          "original model again");
  }
  std::vector<size_t> input_map;
  const std::string map_error = MapToFusedInputs(node, Ort::ConstNode{fused_node}, &input_map);
  if (!map_error.empty()) return MakeStatus(api_, ORT_EP_FAIL, where + map_error);

  *compute_info = new KernelComputeInfo(api_, node_name, std::move(kernel), std::move(input_map),
                                        MapToFusedOutputs(node, Ort::ConstNode{fused_node}), ValueNames(node, false),
                                        ValueNames(node, true), placement_);
  return nullptr;
}

void CortexEp::Log(OrtLoggingLevel level, const std::string& message) const {
  if (logger_ == nullptr) return;
  StatusPtr ignored(api_.ort.Logger_LogMessage(logger_, level, message.c_str(), ORT_FILE, __LINE__, "CortexEp"),
                    StatusDeleter{&api_.ort});
}

void ORT_API_CALL CortexEp::ReleaseNodeComputeInfosImpl(OrtEp*, OrtNodeComputeInfo** node_compute_infos,
                                                        size_t num_node_compute_infos) noexcept {
  for (size_t i = 0; i < num_node_compute_infos; ++i) {
    delete static_cast<KernelComputeInfo*>(node_compute_infos[i]);
  }
}

}  // namespace cortex_ep

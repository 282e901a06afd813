#include "kernel_signature.h"

namespace cortex_ep {
namespace {

// Bounds on what a signature may say; a kernel beyond them is malformed, not merely large.
constexpr int32_t kMaxTensors = 4096;
constexpr int32_t kMaxRank = 32;

bool IsKernelDType(int32_t dtype) {
  return dtype == CORTEX_FLOAT || dtype == CORTEX_DOUBLE || dtype == CORTEX_INT32 || dtype == CORTEX_INT64 ||
         dtype == CORTEX_BOOL;
}

bool CopyTensors(const CortexTensorSignature* raw, int32_t count, const char* what,
                 std::vector<TensorSignature>* tensors, std::string* error) {
  if (count < 0 || count > kMaxTensors || (count > 0 && raw == nullptr)) {
    *error = std::string("it declares ") + std::to_string(count) + " " + what;
    return false;
  }
  tensors->assign(static_cast<size_t>(count), TensorSignature{});
  for (int32_t i = 0; i < count; ++i) {
    const CortexTensorSignature& t = raw[i];
    const std::string which = std::string(what) + " " + std::to_string(i);
    if (!IsKernelDType(t.dtype)) {
      *error = which + " has element type " + std::to_string(t.dtype) + ", which the kernel ABI does not have";
      return false;
    }
    if (t.rank < 0 || t.rank > kMaxRank || (t.rank > 0 && t.dims == nullptr)) {
      *error = which + " has rank " + std::to_string(t.rank);
      return false;
    }
    TensorSignature& out = (*tensors)[static_cast<size_t>(i)];
    out.dtype = t.dtype;
    out.dims.assign(t.dims, t.dims + t.rank);
    for (int64_t d : out.dims) {
      if (d < -1) {
        *error = which + " has a dimension of " + std::to_string(d);
        return false;
      }
    }
  }
  return true;
}

std::string Verb(bool is_output) { return is_output ? "writes" : "reads"; }

}  // namespace

bool CopySignature(const CortexSignature* raw, KernelSignature* signature, std::string* error) {
  if (raw == nullptr) {
    *error = "it returns no signature";
    return false;
  }
  return CopyTensors(raw->inputs, raw->num_inputs, "inputs", &signature->inputs, error) &&
         CopyTensors(raw->outputs, raw->num_outputs, "outputs", &signature->outputs, error);
}

std::string ElementTypeName(int32_t onnx_type) {
  static const char* const kNames[] = {"undefined", "float32", "uint8",  "int8",    "uint16",    "int16",
                                       "int32",     "int64",   "string", "bool",    "float16",   "float64",
                                       "uint32",    "uint64",  "complex64", "complex128", "bfloat16"};
  if (onnx_type >= 0 && onnx_type < static_cast<int32_t>(sizeof(kNames) / sizeof(kNames[0]))) {
    return kNames[onnx_type];
  }
  return "element type " + std::to_string(onnx_type);
}

std::string Describe(int32_t dtype, const std::vector<int64_t>& dims) {
  std::string text = ElementTypeName(dtype) + " [";
  for (size_t d = 0; d < dims.size(); ++d) {
    if (d > 0) text += ", ";
    text += dims[d] < 0 ? std::string("?") : std::to_string(dims[d]);
  }
  return text + "]";
}

std::string CompareDeclared(const DeclaredTensor& declared, const TensorSignature& kernel, bool is_output) {
  const std::string wanted = ", but its kernel " + Verb(is_output) + " " + Describe(kernel.dtype, kernel.dims);
  if (!declared.typed) return is_output ? "has no declared type" + wanted : "";
  if (!declared.tensor) return "is declared as a value that is not a tensor" + wanted;
  bool agrees = declared.dtype == kernel.dtype;
  if (declared.shaped) {
    agrees = agrees && declared.dims.size() == kernel.dims.size();
    for (size_t d = 0; agrees && d < kernel.dims.size(); ++d) {
      agrees = declared.dims[d] < 0 || kernel.dims[d] < 0 || declared.dims[d] == kernel.dims[d];
    }
  }
  if (agrees) return "";
  if (!declared.shaped) return "is declared " + ElementTypeName(declared.dtype) + " (any shape)" + wanted;
  return "is declared " + Describe(declared.dtype, declared.dims) + wanted;
}

std::string CompareTensor(int32_t dtype, const int64_t* shape, size_t rank, const TensorSignature& kernel,
                          bool is_output) {
  bool agrees = dtype == kernel.dtype && rank == kernel.dims.size() && (rank == 0 || shape != nullptr);
  for (size_t d = 0; agrees && d < rank; ++d) agrees = kernel.dims[d] < 0 || shape[d] == kernel.dims[d];
  if (agrees) return "";
  const std::vector<int64_t> dims = shape != nullptr ? std::vector<int64_t>(shape, shape + rank)
                                                     : std::vector<int64_t>();
  return "is " + Describe(dtype, dims) + ", but the kernel " + Verb(is_output) + " " +
         Describe(kernel.dtype, kernel.dims);
}

}  // namespace cortex_ep

// The tensors a kernel reads and writes (kernel_abi.h's CortexSignature, copied and checked when the kernel is
// loaded), and the comparisons the EP makes against it: what a model declares (at session creation) and what a run
// feeds or allocates (at each run). Plain C++, no ONNX Runtime types.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kernel_abi.h"

namespace cortex_ep {

struct TensorSignature {
  int32_t dtype = 0;          // a CortexDType (the same numbers as ONNX's element types)
  std::vector<int64_t> dims;  // one per dimension; -1 where dynamic
};

struct KernelSignature {
  std::vector<TensorSignature> inputs;
  std::vector<TensorSignature> outputs;
};

// Copies the kernel's signature. False (and why in *error) when it is malformed: null, a count or a rank out of
// range, a dtype the ABI does not have, a dimension below -1.
bool CopySignature(const CortexSignature* raw, KernelSignature* signature, std::string* error);

// What a model declares about one value, after ONNX Runtime's type and shape inference.
struct DeclaredTensor {
  bool typed = false;         // the value has a type
  bool tensor = false;        // ... and it is a tensor type
  int32_t dtype = 0;          // its ONNX element type
  bool shaped = false;        // its rank is known
  std::vector<int64_t> dims;  // -1 where unknown or symbolic
};

// "" when `declared` agrees with the kernel's tensor (an unknown rank or dimension agrees with anything, except that
// an output must have a declared tensor type), else the disagreement, e.g.
// "is declared uint8 [?, 8], but its kernel writes float32 [?, 8]".
std::string CompareDeclared(const DeclaredTensor& declared, const TensorSignature& kernel, bool is_output);

// "" when a tensor of this element type and shape fits the kernel's tensor, else the disagreement, e.g.
// "is int32 [5], but the kernel reads int64 [?]" (reads: an input; writes: an output).
std::string CompareTensor(int32_t dtype, const int64_t* shape, size_t rank, const TensorSignature& kernel,
                          bool is_output);

// "float32", "uint8", ... ("element type N" for a number ONNX does not name).
std::string ElementTypeName(int32_t onnx_type);

// "float32 [?, 8]"
std::string Describe(int32_t dtype, const std::vector<int64_t>& dims);

}  // namespace cortex_ep

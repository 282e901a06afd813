// The C ABI between the Cortex execution provider (csrc/ep) and a generated kernel library.
//
// A kernel library is produced by `cortex-convert` (cortex/codegen) and loaded by the EP with dlopen.
// It exports the functions below with C linkage. The EP never sees C++ types of the kernel, so the two may be
// built by different compilers at different times.
//
// Version 3 added cortex_kernel_signature: the kernel states the element type and shape of every tensor it reads
// and writes, and the EP holds the model (what it declares) and every run (what it feeds) to it, so an edited
// model can never make a kernel write float32 rows into a smaller buffer.
#pragma once
#include <stddef.h>
#include <stdint.h>

#define CORTEX_KERNEL_ABI_VERSION 3

#ifdef __cplusplus
extern "C" {
#endif

// ONNX TensorProto.DataType values, the only ones a kernel exchanges. A kernel computes its float values in one
// type: float32 (CORTEX_FLOAT), or float64 (CORTEX_DOUBLE: a model written with `model.double()`); its signature
// says which.
enum CortexDType { CORTEX_FLOAT = 1, CORTEX_INT32 = 6, CORTEX_INT64 = 7, CORTEX_BOOL = 9, CORTEX_DOUBLE = 11 };

// Where memory lives and code runs.
enum CortexDeviceType { CORTEX_DEVICE_CPU = 0, CORTEX_DEVICE_CUDA = 1 };

// One input tensor, borrowed for the duration of the call. Dense, row-major.
typedef struct CortexTensor {
  const void* data;
  const int64_t* shape;
  int32_t rank;
  int32_t dtype;   // a CortexDType
  int32_t device;  // a CortexDeviceType: where `data` is
  int32_t reserved;
} CortexTensor;

// Where the kernel runs: the device and, for CUDA, the stream (a cudaStream_t) its work goes on.
typedef struct CortexExecution {
  int32_t device_type;  // a CortexDeviceType
  int32_t device_id;
  void* stream;
} CortexExecution;

// Allocates output `index` with the given shape (its dtype is the one in the kernel's signature) and
// returns its dense row-major buffer on the kernel's device, or NULL on failure. Provided by the EP, backed by ORT.
typedef void* (*CortexAllocOutput)(void* alloc_context, int32_t index, const int64_t* shape, int32_t rank);

// One tensor of the kernel's signature: its element type and shape. dims[d] is the size of dimension d, or -1 where
// it is dynamic (the leading N or L of structure arrays and state tables); dims may be NULL when rank is 0.
typedef struct CortexTensorSignature {
  int32_t dtype;  // a CortexDType
  int32_t rank;
  const int64_t* dims;
} CortexTensorSignature;

// Every input the kernel reads and every output it writes, in the order of cortex_kernel_run's `inputs` and of
// the output indices it allocates (the converted node's inputs and outputs).
typedef struct CortexSignature {
  int32_t num_inputs;
  int32_t num_outputs;
  const CortexTensorSignature* inputs;
  const CortexTensorSignature* outputs;
} CortexSignature;

// Returns CORTEX_KERNEL_ABI_VERSION as compiled into the kernel.
int32_t cortex_kernel_abi_version(void);

// The device the kernel runs on (a CortexDeviceType): its outputs live there.
int32_t cortex_kernel_device(void);

// The kernel's signature: static data, valid while the library is loaded.
const CortexSignature* cortex_kernel_signature(void);

// Human-readable identity of the kernel: model name and content hash.
const char* cortex_kernel_identity(void);

// Runs the kernel. Returns 0 on success; otherwise writes a NUL-terminated message of at most
// error_size bytes into `error` and returns non-zero. Never throws across this boundary.
int32_t cortex_kernel_run(const CortexTensor* inputs, int32_t num_inputs, CortexAllocOutput alloc_output,
                          void* alloc_context, const CortexExecution* execution, char* error, size_t error_size);

#ifdef __cplusplus
}
#endif

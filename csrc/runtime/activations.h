// Elementwise activations used by generated kernels. float32, plain libm math (std::exp /
// std::tanh), identical on every code path: the array helpers below call the scalar functions, so
// a value never depends on which path (or which thread) computed it.
#pragma once

#include <cmath>
#include <cstdint>

namespace cortex {

// 1 / (1 + e^-x). Saturates cleanly: exp overflow gives 0, large x gives 1. NaN propagates.
inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

inline float tanh_f(float x) { return std::tanh(x); }
// Same as tanh_f (the contract names it `tanh`); float only.
inline float tanh(float x) { return std::tanh(x); }

// max(x, 0); NaN propagates.
inline float relu(float x) { return x < 0.0f ? 0.0f : x; }

inline float identity(float x) { return x; }

// In-place array helpers.
inline void sigmoid_inplace(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = sigmoid(x[i]);
}
inline void tanh_inplace(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = tanh_f(x[i]);
}
inline void relu_inplace(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = relu(x[i]);
}

}  // namespace cortex

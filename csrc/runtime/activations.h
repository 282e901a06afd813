// Elementwise activations used by generated kernels, float32 (and float64 overloads, below).
//
// They are branch-free inline arithmetic (Cephes-style polynomials, exponent built with integer ops), so the
// fused elementwise loops of a kernel auto-vectorize: a libm call per element would cost more than the whole
// matrix product of a TreeLSTM node. Accuracy: a few float ulps (relative error < 3e-7 for exp and sigmoid,
// absolute error < 3e-7 for tanh), far inside the 1e-4 the converted models are held to. NaN propagates;
// +-inf give the limits of sigmoid and tanh. The scalar value of a function never depends on the code path that computed it.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

// The same functions on the host and, compiled by nvcc, on the device: CPU and GPU kernels compute identical math.
#if defined(__CUDACC__)
#define CORTEX_HD __host__ __device__
#else
#define CORTEX_HD
#endif

namespace cortex {

namespace detail {

CORTEX_HD inline float bits_to_float(int32_t i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}

}  // namespace detail

// e^x for the activations. x is clamped to [-87.34, 88.38] (e^88.38 = 2.4e38: large inputs saturate there rather
// than at inf, which sigmoid and tanh do not see), then x = n ln2 + r with |r| <= ln2/2, e^r by a degree-6
// polynomial, times 2^n built in the exponent bits. Written with plain comparisons and casts (no fmin, no
// rint, no NaN test) because those are what GCC vectorizes; a NaN input flows through the arithmetic to a NaN.
// The IR's own `exp` op uses std::exp (exact range); this one serves sigmoid and tanh.
CORTEX_HD inline float exp_f(float x) {
  const float c = x < -87.3365447505531f ? -87.3365447505531f : (x > 88.3762626647949f ? 88.3762626647949f : x);
  const float t = c * 1.44269504088896341f;
  // A NaN must not reach the float->int conversion (undefined behaviour; UBSan found it): it becomes -127 here, and
  // r below is still NaN, so the result stays NaN. Every other t is already in [-126, 128).
  const float t_finite = t >= -127.0f ? t : -127.0f;
  const float n = static_cast<float>(static_cast<int32_t>(t_finite + (t_finite >= 0.0f ? 0.5f : -0.5f)));
  float r = c - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  const float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r2 + r + 1.0f;
  return p * detail::bits_to_float(static_cast<int32_t>(static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23));
}

// 1 / (1 + e^-x): 0 and 1 at the extremes, NaN propagates.
CORTEX_HD inline float sigmoid(float x) { return 1.0f / (1.0f + exp_f(-x)); }

// tanh: an odd polynomial near 0 (no cancellation), 1 - 2 / (e^2|x| + 1) with the sign elsewhere.
CORTEX_HD inline float tanh_f(float x) {
  const float ax = x < 0.0f ? -x : x;
  const float z = x * x;
  float small = -5.70498872745e-3f;
  small = small * z + 2.06390887954e-2f;
  small = small * z - 5.37397155531e-2f;
  small = small * z + 1.33314422036e-1f;
  small = small * z - 3.33332819422e-1f;
  small = small * z * x + x;
  const float magnitude = 1.0f - 2.0f / (exp_f(2.0f * ax) + 1.0f);
  const float large = x < 0.0f ? -magnitude : magnitude;
  return ax < 0.625f ? small : large;  // NaN: the comparison is false and exp_f carries the NaN
}

// Same as tanh_f (the contract names it `tanh`); float only.
CORTEX_HD inline float tanh(float x) { return tanh_f(x); }

// max(x, 0); NaN propagates.
CORTEX_HD inline float relu(float x) { return x < 0.0f ? 0.0f : x; }

CORTEX_HD inline float identity(float x) { return x; }

// max / min that propagate a NaN from either side (numpy, PyTorch and ONNX Max/Min semantics).
CORTEX_HD inline float fmax_nan(float a, float b) { return (a > b || a != a) ? a : b; }
CORTEX_HD inline float fmin_nan(float a, float b) { return (a < b || a != a) ? a : b; }

// ONNX Clip as std::min(std::max(x, lo), hi) computes it (a NaN x stays NaN; lo > hi gives hi), on the device too.
CORTEX_HD inline float clip(float x, float lo, float hi) {
  const float m = x < lo ? lo : x;
  return hi < m ? hi : m;
}

// log(1 + e^x) without overflow: x + log1p(e^-x) for x > 0.
CORTEX_HD inline float softplus(float x) { return x > 0.0f ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x)); }

CORTEX_HD inline float elu(float x, float alpha) { return x > 0.0f ? x : alpha * std::expm1(x); }

CORTEX_HD inline float celu(float x, float alpha) {
  return (x > 0.0f ? x : 0.0f) + std::fmin(0.0f, alpha * std::expm1(x / alpha));
}

CORTEX_HD inline float hardsigmoid(float x, float alpha, float beta) {
  const float y = alpha * x + beta;
  return y < 0.0f ? 0.0f : (y > 1.0f ? 1.0f : y);
}

CORTEX_HD inline float gelu(float x) { return 0.5f * x * (1.0f + std::erf(x * 0.70710678118654752f)); }

CORTEX_HD inline float gelu_tanh(float x) {
  return 0.5f * x * (1.0f + tanh_f(0.79788456080286536f * (x + 0.044715f * x * x * x)));
}

CORTEX_HD inline float sign(float x) { return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : x); }  // NaN and +-0 stay

// float64 kernels (a model written with `model.double()`): the same functions in double, through libm, accurate
// to double rounding as PyTorch's own double math is (the float versions above are float-accurate only). Overloads:
// a generated expression calls the same name for either element type.
CORTEX_HD inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
CORTEX_HD inline double tanh_f(double x) { return std::tanh(x); }
CORTEX_HD inline double tanh(double x) { return std::tanh(x); }
CORTEX_HD inline double relu(double x) { return x < 0.0 ? 0.0 : x; }
CORTEX_HD inline double identity(double x) { return x; }
CORTEX_HD inline double fmax_nan(double a, double b) { return (a > b || a != a) ? a : b; }
CORTEX_HD inline double fmin_nan(double a, double b) { return (a < b || a != a) ? a : b; }
CORTEX_HD inline double softplus(double x) { return x > 0.0 ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x)); }
CORTEX_HD inline double elu(double x, double alpha) { return x > 0.0 ? x : alpha * std::expm1(x); }
CORTEX_HD inline double celu(double x, double alpha) {
  return (x > 0.0 ? x : 0.0) + std::fmin(0.0, alpha * std::expm1(x / alpha));
}
CORTEX_HD inline double hardsigmoid(double x, double alpha, double beta) {
  const double y = alpha * x + beta;
  return y < 0.0 ? 0.0 : (y > 1.0 ? 1.0 : y);
}
CORTEX_HD inline double gelu(double x) { return 0.5 * x * (1.0 + std::erf(x * 0.70710678118654752440)); }
CORTEX_HD inline double gelu_tanh(double x) {
  return 0.5 * x * (1.0 + std::tanh(0.79788456080286535588 * (x + 0.044715 * x * x * x)));
}
CORTEX_HD inline double clip(double x, double lo, double hi) {
  const double m = x < lo ? lo : x;
  return hi < m ? hi : m;
}
CORTEX_HD inline double sign(double x) { return x > 0.0 ? 1.0 : (x < 0.0 ? -1.0 : x); }

// In-place array helpers.
CORTEX_HD inline void sigmoid_inplace(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = sigmoid(x[i]);
}
CORTEX_HD inline void tanh_inplace(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = tanh_f(x[i]);
}
CORTEX_HD inline void relu_inplace(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = relu(x[i]);
}

}  // namespace cortex

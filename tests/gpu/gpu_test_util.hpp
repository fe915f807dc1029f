#pragma once
// Helpers of the GPU tests: seeded inputs derived from (seed, view, global row, column) so any rank
// can rebuild any other's rows, host <-> device copies in every device dtype, and the no-device
// skip.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "simclr/detail/cuda_check.hpp"
#include "simclr/cuda/device_loss.hpp"

namespace simclr::gputest {

using cuda::DeviceArray;
using cuda::DeviceDType;

// Why no test can run here, or "" when a device is visible.
inline std::string no_device_reason() {
  int count = 0;
  const cudaError_t rc = cudaGetDeviceCount(&count);
  if (rc != cudaSuccess)
    return std::string("no CUDA device visible (") + cudaGetErrorString(rc) + ")";
  if (count == 0) return "no CUDA device visible (0 devices)";
  return "";
}

// Standard normal from (seed, view, row, col): splitmix64 and Box-Muller.
inline double seeded_value(std::uint64_t seed, int view, std::int64_t row, std::int64_t col) {
  auto mix = [](std::uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  };
  const std::uint64_t key = mix(seed * 0x9E3779B97F4A7C15ULL + static_cast<std::uint64_t>(view)) ^
                            mix(static_cast<std::uint64_t>(row) * 0xD1B54A32D192ED03ULL +
                                static_cast<std::uint64_t>(col) * 0x8CB92BA72F3D8DD7ULL + 1);
  const double u1 = (static_cast<double>(mix(key) >> 11) + 0.5) / 9007199254740992.0;
  const double u2 =
      static_cast<double>(mix(key + 0x632BE59BD9B4E019ULL) >> 11) / 9007199254740992.0;
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

// Rows [begin, begin + rows) of view `view`, row-major [rows, d].
inline std::vector<double> seeded_rows(std::uint64_t seed, int view, std::int64_t begin,
                                       std::int64_t rows, std::int64_t d) {
  std::vector<double> out(static_cast<std::size_t>(rows * d));
  for (std::int64_t i = 0; i < rows; ++i)
    for (std::int64_t j = 0; j < d; ++j)
      out[static_cast<std::size_t>(i * d + j)] = seeded_value(seed, view, begin + i, j);
  return out;
}

// The value of x once stored in dtype (round to nearest even).
inline double round_to(double x, DeviceDType dtype) {
  const auto f = static_cast<float>(x);
  if (dtype == DeviceDType::kBFloat16)
    return static_cast<double>(__bfloat162float(__float2bfloat16_rn(f)));
  if (dtype == DeviceDType::kFloat16) return static_cast<double>(__half2float(__float2half_rn(f)));
  return static_cast<double>(f);
}

inline std::vector<double> rounded(std::vector<double> v, DeviceDType dtype) {
  for (auto& x : v) x = round_to(x, dtype);
  return v;
}

inline void encode(double x, DeviceDType dtype, unsigned char* out) {
  const auto f = static_cast<float>(x);
  if (dtype == DeviceDType::kFloat32) {
    std::memcpy(out, &f, 4);
  } else if (dtype == DeviceDType::kBFloat16) {
    const __nv_bfloat16 b = __float2bfloat16_rn(f);
    std::memcpy(out, &b, 2);
  } else {
    const __half h = __float2half_rn(f);
    std::memcpy(out, &h, 2);
  }
}

inline double decode(const unsigned char* in, DeviceDType dtype) {
  if (dtype == DeviceDType::kFloat32) {
    float f;
    std::memcpy(&f, in, 4);
    return f;
  }
  if (dtype == DeviceDType::kBFloat16) {
    __nv_bfloat16 b;
    std::memcpy(&b, in, 2);
    return static_cast<double>(__bfloat162float(b));
  }
  __half h;
  std::memcpy(&h, in, 2);
  return static_cast<double>(__half2float(h));
}

// A device matrix owned by the test, with a row stride (>= cols, padding filled with garbage).
struct DeviceMatrix {
  DeviceArray memory;
  std::int64_t rows = 0, cols = 0, stride = 0;
  DeviceDType dtype = DeviceDType::kFloat32;
  cuda::DeviceMatrixView view() const { return {memory.data(), rows, cols, dtype, stride}; }
  cuda::DeviceMutableMatrixView mutable_view() const {
    return {memory.data(), rows, cols, dtype, stride};
  }
};

inline DeviceMatrix upload(const std::vector<double>& values, std::int64_t rows, std::int64_t cols,
                           DeviceDType dtype, cudaStream_t stream, std::int64_t stride = -1) {
  DeviceMatrix m;
  m.rows = rows;
  m.cols = cols;
  m.stride = stride < 0 ? cols : stride;
  m.dtype = dtype;
  const std::size_t elem = cuda::element_size(dtype);
  std::vector<unsigned char> bytes(static_cast<std::size_t>(rows * m.stride) * elem, 0x7F);
  for (std::int64_t i = 0; i < rows; ++i)
    for (std::int64_t j = 0; j < cols; ++j)
      encode(values[static_cast<std::size_t>(i * cols + j)], dtype,
             bytes.data() + static_cast<std::size_t>(i * m.stride + j) * elem);
  m.memory = DeviceArray(bytes.size(), stream);
  if (!bytes.empty())
    SIMCLR_CHECK_CUDA(cudaMemcpyAsync(m.memory.data(), bytes.data(), bytes.size(),
                                      cudaMemcpyHostToDevice, stream));
  SIMCLR_CHECK_CUDA(cudaStreamSynchronize(stream));
  return m;
}

inline DeviceMatrix zeros(std::int64_t rows, std::int64_t cols, DeviceDType dtype,
                          cudaStream_t stream, std::int64_t stride = -1) {
  return upload(std::vector<double>(static_cast<std::size_t>(rows * cols), 0.0), rows, cols, dtype,
                stream, stride);
}

// [rows, cols] of dtype at `data` (row stride `stride`) as host doubles; synchronises.
inline std::vector<double> download(const void* data, std::int64_t rows, std::int64_t cols,
                                    DeviceDType dtype, cudaStream_t stream,
                                    std::int64_t stride = -1) {
  if (stride < 0) stride = cols;
  const std::size_t elem = cuda::element_size(dtype);
  std::vector<unsigned char> bytes(static_cast<std::size_t>(rows * stride) * elem);
  if (!bytes.empty())
    SIMCLR_CHECK_CUDA(
        cudaMemcpyAsync(bytes.data(), data, bytes.size(), cudaMemcpyDeviceToHost, stream));
  SIMCLR_CHECK_CUDA(cudaStreamSynchronize(stream));
  std::vector<double> out(static_cast<std::size_t>(rows * cols));
  for (std::int64_t i = 0; i < rows; ++i)
    for (std::int64_t j = 0; j < cols; ++j)
      out[static_cast<std::size_t>(i * cols + j)] =
          decode(bytes.data() + static_cast<std::size_t>(i * stride + j) * elem, dtype);
  return out;
}

inline std::vector<double> download(const DeviceMatrix& m, cudaStream_t stream) {
  return download(m.memory.data(), m.rows, m.cols, m.dtype, stream, m.stride);
}

// max |a - b| / max |b|: the norm-wise relative error, which (unlike an element-wise one) is not
// dominated by entries that are tiny by cancellation.
inline double rel_err(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double err = 0, scale = 0;
  for (std::size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    // A NaN is never within a bound (std::max would drop it).
    if (std::isnan(a[i]) != std::isnan(b[i])) return std::numeric_limits<double>::infinity();
    err = std::max(err, std::abs(a[i] - b[i]));
    scale = std::max(scale, std::abs(b[i]));
  }
  return scale > 0 ? err / scale : err;
}

}  // namespace simclr::gputest

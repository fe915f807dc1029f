#pragma once
// Views of caller-owned device memory, the device dtypes, and owned stream-ordered device memory.
// No Eigen here: this header is what the CUDA sources see.

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace simclr::cuda {

// Element types of the device path. Codes 1 (float32) match simclr::DType; 2 (float64) is CPU only.
enum class DeviceDType : std::int32_t { kFloat32 = 1, kBFloat16 = 3, kFloat16 = 4 };

// "float32", "bfloat16", "float16" ("dtype(<code>)" for anything else).
std::string to_string(DeviceDType dtype);
// Bytes of one element (0 for an unknown code).
std::size_t element_size(DeviceDType dtype);

// Where a small vector (sample weights, an upstream gradient) lives.
enum class MemorySpace : std::int32_t { kHost = 0, kDevice = 1 };

// A read-only [rows, cols] row-major matrix of `dtype` in device memory; row_stride in elements
// (>= cols). Never owns or copies.
struct DeviceMatrixView {
  const void* data = nullptr;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t row_stride = 0;
  DeviceDType dtype = DeviceDType::kFloat32;

  DeviceMatrixView() = default;
  DeviceMatrixView(const void* data_, std::int64_t rows_, std::int64_t cols_, DeviceDType dtype_,
                   std::int64_t row_stride_ = -1)
      : data(data_),
        rows(rows_),
        cols(cols_),
        row_stride(row_stride_ < 0 ? cols_ : row_stride_),
        dtype(dtype_) {}
};

// A writable [rows, cols] row-major matrix of `dtype` in device memory.
struct DeviceMutableMatrixView {
  void* data = nullptr;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t row_stride = 0;
  DeviceDType dtype = DeviceDType::kFloat32;

  DeviceMutableMatrixView() = default;
  DeviceMutableMatrixView(void* data_, std::int64_t rows_, std::int64_t cols_, DeviceDType dtype_,
                          std::int64_t row_stride_ = -1)
      : data(data_),
        rows(rows_),
        cols(cols_),
        row_stride(row_stride_ < 0 ? cols_ : row_stride_),
        dtype(dtype_) {}
};

// A float32 vector of `size` values in host or device memory.
struct FloatVectorView {
  const float* data = nullptr;
  std::int64_t size = 0;
  MemorySpace space = MemorySpace::kHost;
};

// Device memory owned by the library, allocated and freed stream-ordered (cudaMallocAsync /
// cudaFreeAsync) on the stream it was made for, so no call synchronises the host. The stream must
// outlive the array. Move-only; the destructor never throws.
class DeviceArray {
 public:
  DeviceArray() = default;
  // Throws DeviceError naming the call, the size and the device when the allocation fails. 0 bytes
  // allocates nothing (data() is null).
  DeviceArray(std::size_t bytes, cudaStream_t stream);
  ~DeviceArray();
  DeviceArray(DeviceArray&& other) noexcept;
  DeviceArray& operator=(DeviceArray&& other) noexcept;
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  // A view of caller memory (a workspace, an output buffer): never freed by the library.
  static DeviceArray borrow(void* data, std::size_t bytes);
  bool owned() const { return owned_; }

  void* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }
  cudaStream_t stream() const { return stream_; }
  template <class T>
  T* as() const {
    return static_cast<T*>(data_);
  }

 private:
  void release() noexcept;
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
  cudaStream_t stream_ = nullptr;
  bool owned_ = true;
};

}  // namespace simclr::cuda

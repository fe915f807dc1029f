// The cuBLAS calls of the GPU path, emulated on the host (emulation.hpp): handles, streams, pointer
// and math modes, and cublasGemmEx with cuBLAS's column-major conventions and argument checks.
// Operands are checked the way a GPU would fault on them: every matrix element the call reads or
// writes must lie inside one device allocation, and alpha/beta must be host memory in
// CUBLAS_POINTER_MODE_HOST and device memory in CUBLAS_POINTER_MODE_DEVICE. Products accumulate in
// float32, as CUBLAS_COMPUTE_32F does; with beta == 0, C is written without being read.

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "emulation.hpp"

namespace {

using simclr::cuda::emu::describe;
using simclr::cuda::emu::is_device;
using simclr::cuda::emu::touches_device;

struct Handle {
  cudaStream_t stream = nullptr;
  cublasPointerMode_t pointer_mode = CUBLAS_POINTER_MODE_HOST;
  cublasMath_t math_mode = CUBLAS_DEFAULT_MATH;
};

cublasStatus_t reject(cublasStatus_t status, const std::string& why) {
  simclr::cuda::emu::fail(cudaErrorInvalidValue, "cublasGemmEx: " + why);
  (void)cudaGetLastError();  // a cuBLAS failure is its status, not a CUDA error
  return status;
}

std::size_t type_size(cudaDataType t) {
  switch (t) {
    case CUDA_R_32F:
      return 4;
    case CUDA_R_16BF:
    case CUDA_R_16F:
      return 2;
    default:
      return 0;
  }
}

float load(const void* base, std::int64_t index, cudaDataType t) {
  if (t == CUDA_R_32F) return static_cast<const float*>(base)[index];
  if (t == CUDA_R_16BF) return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[index]);
  return __half2float(static_cast<const __half*>(base)[index]);
}

void store(void* base, std::int64_t index, cudaDataType t, float v) {
  if (t == CUDA_R_32F)
    static_cast<float*>(base)[index] = v;
  else if (t == CUDA_R_16BF)
    static_cast<__nv_bfloat16*>(base)[index] = __float2bfloat16_rn(v);
  else
    static_cast<__half*>(base)[index] = __float2half_rn(v);
}

// The bytes a column-major [rows, cols] operand with leading dimension ld spans.
std::size_t span_bytes(std::int64_t rows, std::int64_t cols, std::int64_t ld, std::size_t elem) {
  if (rows == 0 || cols == 0) return 0;
  return static_cast<std::size_t>((cols - 1) * ld + rows) * elem;
}

bool is_handle(cublasHandle_t h) { return h != nullptr; }

}  // namespace

extern "C" {

cublasStatus_t cublasCreate_v2(cublasHandle_t* handle) {
  if (handle == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *handle = reinterpret_cast<cublasHandle_t>(new Handle);
  simclr::cuda::emu::count_blas_handle_created();
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
  if (!is_handle(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
  simclr::cuda::emu::count_host_sync();  // cublasDestroy synchronises the device
  delete reinterpret_cast<Handle*>(handle);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream) {
  if (!is_handle(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!simclr::cuda::emu::valid_stream(stream)) return CUBLAS_STATUS_INVALID_VALUE;
  reinterpret_cast<Handle*>(handle)->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetStream_v2(cublasHandle_t handle, cudaStream_t* stream) {
  if (!is_handle(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (stream == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *stream = reinterpret_cast<Handle*>(handle)->stream;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetPointerMode_v2(cublasHandle_t handle, cublasPointerMode_t mode) {
  if (!is_handle(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
  reinterpret_cast<Handle*>(handle)->pointer_mode = mode;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetPointerMode_v2(cublasHandle_t handle, cublasPointerMode_t* mode) {
  if (!is_handle(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (mode == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *mode = reinterpret_cast<Handle*>(handle)->pointer_mode;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  if (!is_handle(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
  reinterpret_cast<Handle*>(handle)->math_mode = mode;
  return CUBLAS_STATUS_SUCCESS;
}

const char* cublasGetStatusName(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
    default:
      return "CUBLAS_STATUS_UNKNOWN";
  }
}

const char* cublasGetStatusString(cublasStatus_t status) {
  return status == CUBLAS_STATUS_SUCCESS ? "success" : "failure (emulation)";
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa,
                            cublasOperation_t transb, int m, int n, int k, const void* alpha,
                            const void* A, cudaDataType Atype, int lda, const void* B,
                            cudaDataType Btype, int ldb, const void* beta, void* C,
                            cudaDataType Ctype, int ldc, cublasComputeType_t computeType,
                            cublasGemmAlgo_t) {
  if (!is_handle(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
  const Handle& h = *reinterpret_cast<const Handle*>(handle);
  if (computeType != CUBLAS_COMPUTE_32F)
    return reject(CUBLAS_STATUS_NOT_SUPPORTED, "only CUBLAS_COMPUTE_32F is emulated");
  if (Atype != Btype || type_size(Atype) == 0 || (Ctype != CUDA_R_32F && Ctype != Atype))
    return reject(CUBLAS_STATUS_NOT_SUPPORTED, "unsupported combination of data types");
  const bool ta = transa == CUBLAS_OP_T, tb = transb == CUBLAS_OP_T;
  if ((!ta && transa != CUBLAS_OP_N) || (!tb && transb != CUBLAS_OP_N))
    return reject(CUBLAS_STATUS_INVALID_VALUE, "only CUBLAS_OP_N and CUBLAS_OP_T are emulated");
  // op(A) is [m, k], op(B) is [k, n]; A is stored [m, k] (N) or [k, m] (T), B [k, n] or [n, k].
  const std::int64_t a_rows = ta ? k : m, a_cols = ta ? m : k;
  const std::int64_t b_rows = tb ? n : k, b_cols = tb ? k : n;
  if (m < 0 || n < 0 || k < 0 || lda < std::max<std::int64_t>(1, a_rows) ||
      ldb < std::max<std::int64_t>(1, b_rows) || ldc < std::max(1, m))
    return reject(CUBLAS_STATUS_INVALID_VALUE,
                  "m " + std::to_string(m) + ", n " + std::to_string(n) + ", k " +
                      std::to_string(k) + " with lda " + std::to_string(lda) + ", ldb " +
                      std::to_string(ldb) + ", ldc " + std::to_string(ldc));
  const bool device_scalars = h.pointer_mode == CUBLAS_POINTER_MODE_DEVICE;
  for (const void* s : {alpha, beta}) {
    if (s == nullptr) return reject(CUBLAS_STATUS_INVALID_VALUE, "null alpha or beta");
    if (device_scalars ? !is_device(s, sizeof(float)) : touches_device(s, sizeof(float)))
      return reject(CUBLAS_STATUS_INVALID_VALUE,
                    std::string("alpha or beta at ") + describe(s, sizeof(float)) + " is not " +
                        (device_scalars ? "device memory (CUBLAS_POINTER_MODE_DEVICE)"
                                        : "host memory (CUBLAS_POINTER_MODE_HOST)"));
  }
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  const struct {
    const void* p;
    std::size_t bytes;
    const char* name;
  } operands[] = {{A, span_bytes(a_rows, a_cols, lda, type_size(Atype)), "A"},
                  {B, span_bytes(b_rows, b_cols, ldb, type_size(Btype)), "B"},
                  {C, span_bytes(m, n, ldc, type_size(Ctype)), "C"}};
  for (const auto& o : operands)
    if (o.bytes > 0 && !is_device(o.p, o.bytes))
      return reject(CUBLAS_STATUS_INVALID_VALUE, std::string(o.name) + " " +
                                                     describe(o.p, o.bytes) +
                                                     " is not inside one device allocation");
  float a_scale = 0, b_scale = 0;
  std::memcpy(&a_scale, alpha, sizeof(float));
  std::memcpy(&b_scale, beta, sizeof(float));

  // op(A) as row-major [m, k] floats, then one column of op(B) at a time.
  std::vector<float> opa(static_cast<std::size_t>(m) * static_cast<std::size_t>(k));
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t l = 0; l < k; ++l)
      opa[static_cast<std::size_t>(i * k + l)] = load(A, ta ? l + i * lda : i + l * lda, Atype);
  std::vector<float> column(static_cast<std::size_t>(k));
  for (std::int64_t j = 0; j < n; ++j) {
    for (std::int64_t l = 0; l < k; ++l)
      column[static_cast<std::size_t>(l)] = load(B, tb ? j + l * ldb : l + j * ldb, Btype);
    for (std::int64_t i = 0; i < m; ++i) {
      const float* row = opa.data() + i * k;
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      std::int64_t l = 0;
      for (; l + 8 <= k; l += 8)
        for (int u = 0; u < 8; ++u) acc[u] += row[l + u] * column[static_cast<std::size_t>(l + u)];
      for (; l < k; ++l) acc[0] += row[l] * column[static_cast<std::size_t>(l)];
      const float dot =
          ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
      const std::int64_t at = i + j * ldc;
      const float out =
          b_scale == 0.f ? a_scale * dot : a_scale * dot + b_scale * load(C, at, Ctype);
      store(C, at, Ctype, out);
    }
  }
  return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"

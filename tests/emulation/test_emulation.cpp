// The CPU emulation of the GPU path (tests/emulation) against what a GPU does: warp shuffles and
// block barriers give the values CUDA defines, and the faults a GPU would report (a barrier some
// threads skip, a refused launch configuration, an operand outside its allocation, a host pointer
// where a device one belongs, a bad leading dimension) make the call fail here too. These are what
// make a passing emulated GPU test mean something.

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "builtins.hpp"

namespace {

// ---- kernels, written as kernels.cu writes them ----

__global__ void warp_sum_kernel(const float* in, float* out) {
  float v = in[threadIdx.x];
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  out[threadIdx.x] = v;
}

__global__ void xor_kernel(int lane_mask, int* out) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, lane, lane_mask);
}

__global__ void block_sum_kernel(const double* in, double* out) {
  __shared__ double partial[1024];
  partial[threadIdx.x] = in[blockIdx.x * blockDim.x + threadIdx.x];
  __syncthreads();
  for (unsigned stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = partial[0];
}

// Lane 0 leaves before the shuffle the other 31 lanes wait at: undefined on a GPU (a hang, or
// garbage), a launch failure here.
__global__ void early_exit_kernel(float* out) {
  if (threadIdx.x % 32 == 0) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.f, 1);
}

__global__ void divergent_sync_kernel(float* out) {
  if (threadIdx.x < 64) __syncthreads();
  out[threadIdx.x] = 1.f;
}

__global__ void grid_kernel(unsigned* out) {
  const unsigned block = blockIdx.x + gridDim.x * blockIdx.y;
  out[block * blockDim.x + threadIdx.x] = block * 1000 + threadIdx.x;
}

// ---- helpers ----

template <class T>
T* device_alloc(std::size_t count) {
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, count * sizeof(T)), cudaSuccess);
  return static_cast<T*>(p);
}

template <class T>
std::vector<T> to_host(const T* device, std::size_t count) {
  std::vector<T> out(count);
  EXPECT_EQ(cudaMemcpy(out.data(), device, count * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  return out;
}

template <class T>
void to_device(T* device, const std::vector<T>& host) {
  EXPECT_EQ(cudaMemcpy(device, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice),
            cudaSuccess);
}

class EmulationTest : public ::testing::Test {
 protected:
  void SetUp() override { (void)cudaGetLastError(); }
};

// ---- the execution model ----

TEST_F(EmulationTest, WarpShuffleSumsEveryLane) {
  std::vector<float> in(64);
  for (int i = 0; i < 64; ++i) in[static_cast<std::size_t>(i)] = static_cast<float>(i + 1);
  float* d_in = device_alloc<float>(64);
  float* d_out = device_alloc<float>(64);
  to_device(d_in, in);
  SIMCLR_LAUNCH_SYNC(warp_sum_kernel, 1, 64, nullptr)(d_in, d_out);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const auto out = to_host(d_out, 64);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(out[static_cast<std::size_t>(i)], 528.f);  // 1 + ... + 32
  for (int i = 32; i < 64; ++i) EXPECT_EQ(out[static_cast<std::size_t>(i)], 1552.f);  // 33..64
  cudaFree(d_in);
  cudaFree(d_out);
}

TEST_F(EmulationTest, ShuffleXorReadsLaneXorMask) {
  int* d_out = device_alloc<int>(32);
  for (int mask : {1, 5, 16, 31}) {
    SIMCLR_LAUNCH_SYNC(xor_kernel, 1, 32, nullptr)(mask, d_out);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    const auto out = to_host(d_out, 32);
    for (int lane = 0; lane < 32; ++lane)
      EXPECT_EQ(out[static_cast<std::size_t>(lane)], lane ^ mask);
  }
  cudaFree(d_out);
}

TEST_F(EmulationTest, BlockBarrierAndSharedMemoryReduceEachBlock) {
  const int blocks = 3, threads = 1024;
  std::vector<double> in(static_cast<std::size_t>(blocks * threads));
  for (std::size_t i = 0; i < in.size(); ++i) in[i] = static_cast<double>(i);
  double* d_in = device_alloc<double>(in.size());
  double* d_out = device_alloc<double>(blocks);
  to_device(d_in, in);
  SIMCLR_LAUNCH_SYNC(block_sum_kernel, blocks, threads, nullptr)(d_in, d_out);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const auto out = to_host(d_out, blocks);
  for (int b = 0; b < blocks; ++b) {
    const double first = b * threads, last = first + threads - 1;
    EXPECT_EQ(out[static_cast<std::size_t>(b)], (first + last) * threads / 2);
  }
  cudaFree(d_in);
  cudaFree(d_out);
}

TEST_F(EmulationTest, TwoDimensionalGridCoversEveryBlock) {
  unsigned* d_out = device_alloc<unsigned>(6 * 32);
  SIMCLR_LAUNCH(grid_kernel, dim3(3, 2), 32, nullptr)(d_out);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const auto out = to_host(d_out, 6 * 32);
  for (unsigned b = 0; b < 6; ++b)
    for (unsigned t = 0; t < 32; ++t) EXPECT_EQ(out[b * 32 + t], b * 1000 + t);
  cudaFree(d_out);
}

TEST_F(EmulationTest, ThreadsThatSkipAShuffleFailTheLaunch) {
  float* d_out = device_alloc<float>(64);
  SIMCLR_LAUNCH_SYNC(early_exit_kernel, 1, 64, nullptr)(d_out);
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // read and cleared, as CUDA's
  cudaFree(d_out);
}

TEST_F(EmulationTest, DivergentSyncthreadsFailsTheLaunch) {
  float* d_out = device_alloc<float>(128);
  SIMCLR_LAUNCH_SYNC(divergent_sync_kernel, 1, 128, nullptr)(d_out);
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
  cudaFree(d_out);
}

TEST_F(EmulationTest, ABarrierInAKernelLaunchedWithoutSyncFailsTheLaunch) {
  std::vector<float> in(32, 1.f);
  float* d_in = device_alloc<float>(32);
  float* d_out = device_alloc<float>(32);
  to_device(d_in, in);
  SIMCLR_LAUNCH(warp_sum_kernel, 1, 32, nullptr)(d_in, d_out);
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
  cudaFree(d_in);
  cudaFree(d_out);
}

TEST_F(EmulationTest, ConfigurationsAGpuRefusesFail) {
  unsigned* d_out = device_alloc<unsigned>(32);
  SIMCLR_LAUNCH(grid_kernel, dim3(1, 65536), 32, nullptr)(d_out);  // gridDim.y <= 65535
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  SIMCLR_LAUNCH(grid_kernel, 1, 2048, nullptr)(d_out);  // <= 1024 threads per block
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  SIMCLR_LAUNCH(grid_kernel, 0, 32, nullptr)(d_out);  // an empty grid
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  cudaFree(d_out);
}

// ---- memory and streams ----

TEST_F(EmulationTest, FreshDeviceMemoryReadsAsNaN) {
  float* d = device_alloc<float>(8);
  for (float v : to_host(d, 8)) EXPECT_TRUE(std::isnan(v));
  cudaFree(d);
}

TEST_F(EmulationTest, CopiesCheckDirectionAndBounds) {
  float* d = device_alloc<float>(8);
  std::vector<float> h(16, 0.f);
  // A host destination for a host-to-device copy, and a copy past the allocation's end.
  EXPECT_EQ(cudaMemcpy(h.data(), d, 8 * sizeof(float), cudaMemcpyHostToDevice),
            cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemcpy(h.data(), d, 9 * sizeof(float), cudaMemcpyDeviceToHost),
            cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemsetAsync(d + 4, 0, 5 * sizeof(float), nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemcpy(h.data(), d, 8 * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(cudaFree(h.data()), cudaErrorInvalidValue);
  cudaFree(d);
  EXPECT_EQ(cudaMemcpy(h.data(), d, sizeof(float), cudaMemcpyDeviceToHost), cudaErrorInvalidValue);
  (void)cudaGetLastError();
}

TEST_F(EmulationTest, InjectedAllocationFailuresFailOnlyThatManyAllocationsOfThisThread) {
  simclr::cuda::emu::fail_next_allocations(2);
  // Another thread's allocations are not affected.
  std::thread([] {
    void* p = nullptr;
    EXPECT_EQ(cudaMalloc(&p, 64), cudaSuccess);
    EXPECT_EQ(cudaFree(p), cudaSuccess);
  }).join();
  void* p = reinterpret_cast<void*>(1);
  EXPECT_EQ(cudaMalloc(&p, 64), cudaErrorMemoryAllocation);
  EXPECT_EQ(p, nullptr);
  EXPECT_EQ(cudaMallocAsync(&p, 64, nullptr), cudaErrorMemoryAllocation);
  EXPECT_EQ(cudaGetLastError(), cudaErrorMemoryAllocation);
  EXPECT_EQ(cudaMalloc(&p, 64), cudaSuccess);
  EXPECT_EQ(cudaFree(p), cudaSuccess);
  simclr::cuda::emu::fail_next_allocations(1);
  simclr::cuda::emu::fail_next_allocations(0);  // disarmed
  EXPECT_EQ(cudaMalloc(&p, 64), cudaSuccess);
  EXPECT_EQ(cudaFree(p), cudaSuccess);
}

TEST_F(EmulationTest, ADestroyedStreamIsRefused) {
  cudaStream_t s = nullptr;
  ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);
  EXPECT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  ASSERT_EQ(cudaStreamDestroy(s), cudaSuccess);
  EXPECT_EQ(cudaStreamSynchronize(s), cudaErrorInvalidResourceHandle);
  (void)cudaGetLastError();
}

TEST_F(EmulationTest, ADestroyedEventIsRefused) {
  cudaEvent_t e = nullptr;
  ASSERT_EQ(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), cudaSuccess);
  EXPECT_EQ(cudaEventRecord(e, nullptr), cudaSuccess);
  EXPECT_EQ(cudaStreamWaitEvent(nullptr, e, 0), cudaSuccess);
  ASSERT_EQ(cudaEventDestroy(e), cudaSuccess);
  EXPECT_EQ(cudaStreamWaitEvent(nullptr, e, 0), cudaErrorInvalidResourceHandle);
  EXPECT_EQ(cudaEventRecord(e, nullptr), cudaErrorInvalidResourceHandle);
  (void)cudaGetLastError();
}

// ---- cuBLAS ----

class EmulatedGemmTest : public EmulationTest {
 protected:
  void SetUp() override {
    EmulationTest::SetUp();
    ASSERT_EQ(cublasCreate(&handle_), CUBLAS_STATUS_SUCCESS);
  }
  void TearDown() override { cublasDestroy(handle_); }
  cublasHandle_t handle_ = nullptr;
};

TEST_F(EmulatedGemmTest, ColumnMajorProductsWithTransposes) {
  // Column-major A stored [k, m] (used transposed) and B [k, n]: C = alpha A^T B + beta C.
  const int m = 3, n = 2, k = 4, lda = 5, ldb = 4, ldc = 3;
  std::vector<float> a(static_cast<std::size_t>(lda * m)), b(static_cast<std::size_t>(ldb * n)),
      c(static_cast<std::size_t>(ldc * n), 1.f);
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i % 7) - 3.f;
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>(i % 5) - 2.f;
  float* d_a = device_alloc<float>(a.size());
  float* d_b = device_alloc<float>(b.size());
  float* d_c = device_alloc<float>(c.size());
  to_device(d_a, a);
  to_device(d_b, b);
  to_device(d_c, c);
  const float alpha = 2.f, beta = 0.5f;
  ASSERT_EQ(cublasGemmEx(handle_, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, d_a, CUDA_R_32F, lda,
                         d_b, CUDA_R_32F, ldb, &beta, d_c, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT),
            CUBLAS_STATUS_SUCCESS);
  const auto out = to_host(d_c, c.size());
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < m; ++i) {
      float dot = 0;
      for (int l = 0; l < k; ++l)
        dot += a[static_cast<std::size_t>(l + i * lda)] * b[static_cast<std::size_t>(l + j * ldb)];
      EXPECT_FLOAT_EQ(out[static_cast<std::size_t>(i + j * ldc)], alpha * dot + beta * 1.f);
    }
  cudaFree(d_a);
  cudaFree(d_b);
  cudaFree(d_c);
}

TEST_F(EmulatedGemmTest, BetaZeroNeverReadsC) {
  float* d_a = device_alloc<float>(4);
  float* d_c = device_alloc<float>(4);  // NaN until written
  to_device(d_a, std::vector<float>{1, 2, 3, 4});
  const float alpha = 1.f, beta = 0.f;
  ASSERT_EQ(cublasGemmEx(handle_, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 2, &alpha, d_a, CUDA_R_32F, 2,
                         d_a, CUDA_R_32F, 2, &beta, d_c, CUDA_R_32F, 2, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT),
            CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(to_host(d_c, 4), (std::vector<float>{7, 10, 15, 22}));
  cudaFree(d_a);
  cudaFree(d_c);
}

TEST_F(EmulatedGemmTest, ArgumentsAGpuWouldFaultOnAreRejected) {
  float* d_a = device_alloc<float>(6);  // [2, 3] column-major, lda 2
  float* d_c = device_alloc<float>(4);
  const float alpha = 1.f, beta = 0.f;
  auto gemm = [&](int k, int lda, const float* a, const float* al, const float* be) {
    return cublasGemmEx(handle_, CUBLAS_OP_N, CUBLAS_OP_T, 2, 2, k, al, a, CUDA_R_32F, lda, a,
                        CUDA_R_32F, lda, be, d_c, CUDA_R_32F, 2, CUBLAS_COMPUTE_32F,
                        CUBLAS_GEMM_DEFAULT);
  };
  EXPECT_EQ(gemm(3, 2, d_a, &alpha, &beta), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(gemm(3, 1, d_a, &alpha, &beta), CUBLAS_STATUS_INVALID_VALUE);  // lda < rows
  EXPECT_EQ(gemm(4, 2, d_a, &alpha, &beta), CUBLAS_STATUS_INVALID_VALUE);  // reads past A
  std::vector<float> host_a(6, 1.f);
  EXPECT_EQ(gemm(3, 2, host_a.data(), &alpha, &beta), CUBLAS_STATUS_INVALID_VALUE);
  // Device pointer mode with host scalars.
  ASSERT_EQ(cublasSetPointerMode(handle_, CUBLAS_POINTER_MODE_DEVICE), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(gemm(3, 2, d_a, &alpha, &beta), CUBLAS_STATUS_INVALID_VALUE);
  float* d_scalars = device_alloc<float>(2);
  to_device(d_scalars, std::vector<float>{1.f, 0.f});
  EXPECT_EQ(gemm(3, 2, d_a, d_scalars, d_scalars + 1), CUBLAS_STATUS_SUCCESS);
  cudaFree(d_a);
  cudaFree(d_c);
  cudaFree(d_scalars);
}

}  // namespace

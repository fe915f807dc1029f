#pragma once
// The device step calls (not installed): the forward and backward of DeviceSimCLRLoss cut at their
// gathers, for callers whose framework gathers between them as graph operations (XLA on the GPU,
// python/src/jax_ffi_cuda.hpp). The device twins of the host step calls of the C API
// (simclr_step_*): each enqueues on `stream`, never synchronises the host (except step_check_finite,
// whose verdict must reach the host), and takes its arrays from `workspace` when it is set (sized
// by the *_workspace_bytes queries), else allocates them stream-ordered. Defined in
// cuda/frontend/device_loss.cpp, next to the forward and backward they share their code with.

#include <cstddef>
#include <cstdint>

#include "simclr/cuda/device_loss.hpp"

namespace simclr::cuda::steps {

// A device sample weight: `size` float32 values on the device (1 or pairs), or none (data null).
struct StepWeight {
  const float* data = nullptr;
  std::int64_t size = 0;
};

// Where a step runs and what it may use.
struct StepContext {
  cudaStream_t stream = nullptr;
  DeviceWorkspace workspace;          // scratch, free once the step has run in stream order
  cublasContext* blas = nullptr;      // the caller's handle, or null (the library's cached one)
  DeviceOptions device;               // tiles, symmetry
};

// Bytes of workspace each step needs for `pairs` of this rank out of `global_pairs`, at `dim`.
std::size_t forward_step_workspace_bytes(std::int64_t pairs, std::int64_t global_pairs,
                                         std::int64_t dim, DeviceDType dtype,
                                         const DeviceOptions& device);
std::size_t alpha_step_workspace_bytes(std::int64_t pairs);
std::size_t backward_step_workspace_bytes(std::int64_t pairs, std::int64_t global_pairs,
                                          std::int64_t dim, DeviceDType dtype,
                                          const DeviceOptions& device);

// The finiteness of the step's device inputs that are set (za, zb: [n, d] matrices; weight and
// upstream: float32 vectors), in one pass and one stream synchronisation. Throws the ValueError the
// forward throws ("za has NaN at row 3, column 5", "upstream gradient has Inf at index 2").
void step_check_finite(const DeviceMatrixView* za, const DeviceMatrixView* zb,
                       const StepWeight& weight, const float* upstream,
                       std::int64_t upstream_count, cudaStream_t stream);

// u_local [2n, d] (dtype of za, dense) = [l2_normalize(za); l2_normalize(zb)]; squared_norms [2n]
// float32.
void step_normalize(const DeviceMatrixView& za, const DeviceMatrixView& zb, void* u_local,
                    float* squared_norms, cudaStream_t stream);

// This rank's 2n anchors (rows [anchor_begin, anchor_begin + 2n) of u_global [2G, d], dense) against
// every row: row_lse [2n] float32, per_example [n] (dtype; may be null), values ([n] for none, else
// [1]; dtype). reduction is resolved (never kAuto); denominator as StepPlan's.
void step_forward(double temperature, Reduction reduction, double denominator, const void* u_global,
                  std::int64_t global_rows, std::int64_t dim, DeviceDType dtype,
                  std::int64_t anchor_begin, std::int64_t pairs, const StepWeight& weight,
                  const StepContext& context, float* row_lse, void* per_example, void* values);

// alpha [2n] float32 from the upstream gradient on the device (upstream_count 1: a scalar, n: per
// example), the weights, the reduction (divide: sum_over_batch_size, by denominator) and scale.
void step_alpha(std::int64_t pairs, const StepWeight& weight, const float* upstream,
                std::int64_t upstream_count, bool divide, double denominator, double scale,
                const StepContext& context, float* alpha);

// grad_a, grad_b [n, d] (dtype) from u_global, this rank's squared_norms [2n] and every row's
// lse_all, alpha_all [2G] (float32, U order).
void step_backward(double temperature, const void* u_global, std::int64_t global_rows,
                   std::int64_t dim, DeviceDType dtype, std::int64_t anchor_begin,
                   std::int64_t pairs, const float* squared_norms, const float* lse_all,
                   const float* alpha_all, const StepContext& context,
                   const DeviceMutableMatrixView& grad_a, const DeviceMutableMatrixView& grad_b);

}  // namespace simclr::cuda::steps

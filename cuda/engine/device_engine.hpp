#pragma once
// The tiled core of the device loss (docs/math.md sections 3-5): logits tiles by cuBLAS into a
// float32 workspace, the online log-sum-exp and the M tiles by kernels.cu, the gradient by a second
// cuBLAS product per tile. Memory: one tile workspace, never the [2n, 2G] logits.

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels.cuh"
#include "simclr/cuda/device_loss.hpp"

namespace simclr::cuda::detail {

// Tile shape and the workspace's leading dimension (a multiple of 8, so rows of the float32 logits
// and of a 16-bit M tile start 16-byte aligned for vector loads and tensor cores).
struct TilePlan {
  std::int64_t rows = 1;
  std::int64_t cols = 1;
  std::int64_t ld = 8;
};

// Resolves DeviceOptions for `anchors` x `total` logits of `dtype` (ValueError for negative sizes).
TilePlan plan_tiles(std::int64_t anchors, std::int64_t total, DeviceDType dtype,
                    const DeviceOptions& options);

// What the forward and the backward share: anchors of `layout` against all `total` rows of u
// ([total, d], dtype, unit rows), tiled by `plan`. With `symmetric` and the anchors being all of u
// (one process), only the square tiles on and above the diagonal are computed, each off-diagonal
// one serving its rows and its columns.
struct DeviceTileProblem {
  cublasHandle_t blas = nullptr;
  DeviceDType dtype = DeviceDType::kFloat32;
  const void* u = nullptr;
  std::int64_t d = 0;
  std::int64_t total = 0;
  AnchorLayout layout;
  float inv_temperature = 1.f;
  TilePlan plan;
  bool symmetric = true;
  cudaStream_t stream = nullptr;
};

// Where a call's arrays come from (docs/gpu.md, "Workspace"): carved in order out of the caller's
// workspace (256-byte aligned, never freed by the library), or stream-ordered allocations. A
// counting arena hands out empty arrays and only adds up the bytes, for the workspace queries, so
// the queries and the calls take the same arrays in the same order.
class Arena {
 public:
  static constexpr std::size_t kAlign = 256;
  Arena(const DeviceWorkspace& workspace, cudaStream_t stream, const char* call);
  static Arena counting();
  DeviceArray take(std::size_t bytes);
  std::size_t used() const { return used_; }
  bool carving() const { return base_ != nullptr; }

 private:
  Arena() = default;
  char* base_ = nullptr;
  std::size_t capacity_ = 0;
  std::size_t used_ = 0;
  bool counting_ = false;
  cudaStream_t stream_ = nullptr;
  const char* call_ = "";
};

// The tile scratch of one call: the float32 logits tile, the M tile (backward), the fused pass's
// row and column partials (symmetric forward, kernels.cuh).
struct EngineScratch {
  DeviceArray logits;
  DeviceArray m;
  DeviceArray partial;
};
EngineScratch engine_forward_scratch(const DeviceTileProblem& p, Arena& arena);
EngineScratch engine_backward_scratch(const DeviceTileProblem& p, Arena& arena);

// Forward: the row statistics ([2n] float32 each) are initialised and filled. Returns the flops.
double engine_forward(const DeviceTileProblem& p, const RowStats& stats,
                      const EngineScratch& scratch);

// Backward: grad ([2n, d] float32) = dJ/du for this rank's anchors given every row's LSE and alpha
// in U order and the device params of launch_backward_params. Returns the flops.
double engine_backward(const DeviceTileProblem& p, const float* lse_all, const float* alpha_all,
                       const float* params, float* grad, const EngineScratch& scratch);

// ---- the balanced schedule's off-diagonal blocks (docs/performance.md, "Schedules") ----
// `blocks` holds 4 U row indices per block, rows [r0, r1) against rows [c0, c1) of p.u (all 2G
// rows; p.total = 2G), blocks of two different ranks, so no tile holds a self or positive entry.
// Each block is walked in tiles of p.plan, in a fixed order (deterministic results).

// The scratch of both walks: a logits tile, an M tile (dtype) and the fused pass's partials. Large
// enough for this rank's own diagonal block walked with the symmetric scheme too.
EngineScratch engine_pairs_scratch(const DeviceTileProblem& p, Arena& arena);

// Forward: each tile's rows and columns merge their (max, sum) of exp into stats (U order, [2G]
// each; stats.positive is never written). Returns the flops.
double engine_forward_pairs(const DeviceTileProblem& p, const std::vector<std::int64_t>& blocks,
                            const RowStats& stats, const EngineScratch& scratch);

// Backward: grad ([2G, d] float32, U order, accumulated into) += the M tile's products with U on
// both sides of each tile: rows r get M U_c, rows c get M^T U_r. Returns the flops.
double engine_backward_pairs(const DeviceTileProblem& p, const std::vector<std::int64_t>& blocks,
                             const float* lse_all, const float* alpha_all, const float* params,
                             float* grad, const EngineScratch& scratch);

// cuBLAS's data type for a device dtype.
cudaDataType_t blas_type(DeviceDType dtype);

}  // namespace simclr::cuda::detail

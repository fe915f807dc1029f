#pragma once
// SimCLRLoss on the GPU (docs/gpu.md): the same semantics as simclr::SimCLRLoss (spec sections 1-4,
// docs/semantics.md) on device memory, on a caller-given stream. Inputs float32, bfloat16 or
// float16; normalisation, logits, log-sum-exp and gradient accumulation in float32; outputs in the
// input dtype.
//
// Memory: the gathered, normalised U [2G, d] in the input dtype, O(n) float32 scalars, the float32
// gradient accumulator [2n, d], and one workspace tile (DeviceOptions). The [2n, 2G] logits are
// never held: the forward streams column tiles with an online log-sum-exp, the backward recomputes
// each tile and applies M (spec section 4) to U tile by tile.
//
// Host synchronisation: only where a result must reach the host before the step can go on: the
// finiteness check of the inputs (its verdict decides the exception, and the agreement step needs
// it) and, for a device-resident per-example upstream gradient, the same check in the backward.

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

#include "simclr/cuda/device_communicator.hpp"
#include "simclr/cuda/device_types.hpp"
#include "simclr/options.hpp"

namespace simclr::cuda {

// Keras sample_weight on the device path, float32 in host or device memory: size 1 weighs every
// example alike (Keras shapes [], [1], [1, 1]); size n is one weight per example ([N], [N, 1]).
using DeviceSampleWeight = FloatVectorView;

// Tiling of the logits. 0 picks the default: 8192 x 8192 tiles, shrunk until a tile's workspace
// (float32 logits plus the M tile in the input dtype) fits workspace_bytes. Tests force small tiles
// to cross tile boundaries.
struct DeviceOptions {
  std::int64_t tile_rows = 0;  // anchors per tile (<= 65535 * 8)
  std::int64_t tile_cols = 0;  // candidates per tile
  std::size_t workspace_bytes = std::size_t{512} << 20;
  // When one process holds the whole batch, the logits and M are symmetric: forward and backward
  // compute only the square tiles on and above the diagonal (min(tile_rows, tile_cols) wide), each
  // off-diagonal tile serving its columns' anchors too: 2 GEMM-equivalents per step instead of 3.
  // false: every tile, as a rank of a distributed call does (for comparisons).
  bool symmetric = true;
};

// Options of one call.
struct DeviceCallOptions {
  // When set, the call is distributed (collective over every rank) and contrasts every anchor with
  // the global batch; big transfers go through it on device buffers, the agreement through its
  // host(). Must outlive the backward.
  DeviceCommunicator* communicator = nullptr;
  // Denominator of sum_over_batch_size; required for auto / sum_over_batch_size with a
  // communicator.
  std::optional<GlobalBatchSize> global_batch_size;
  DeviceOptions device;
};

namespace detail {
struct DeviceSaved;
}

// The result of a forward call. Device arrays are allocated on the call's stream, which must
// outlive this object; they are ready in stream order (no host synchronisation was made for them).
struct DeviceLossOutput {
  Reduction reduction = Reduction::kSumOverBatchSize;  // resolved: never kAuto
  DeviceDType dtype = DeviceDType::kFloat32;
  // none: [n] weighted per-example loss; otherwise [1]: the reduced loss. Input dtype.
  DeviceArray values;
  // [n] unweighted per-example loss l_i = CE_i(a->[b,a]) + CE_i(b->[a,b]). Input dtype.
  DeviceArray per_example;
  // [1] float32: this rank's objective J_r (the reduced loss, or for none the sum of values).
  DeviceArray objective;
  // Rows of every rank (one entry when local), this rank's first global row, and G.
  std::vector<std::int64_t> rank_rows;
  std::int64_t row_offset = 0;
  std::int64_t global_rows = 0;
  double flops = 0;  // forward flops performed

  std::shared_ptr<const detail::DeviceSaved> saved;  // opaque, for backward()
};

// cuBLAS handles, one per device, made on first use (opaque).
struct BlasHandles;

// TensorFlow Similarity's SimCLRLoss on device memory. One object may be used by one host thread at
// a time (it keeps cuBLAS handles).
class DeviceSimCLRLoss {
 public:
  // Throws ValueError for temperature <= 0, NaN or Inf (as SimCLRLoss).
  explicit DeviceSimCLRLoss(double temperature = 0.05, Reduction reduction = Reduction::kAuto,
                            std::optional<std::string> name = std::nullopt);
  explicit DeviceSimCLRLoss(const LossConfig& config);
  ~DeviceSimCLRLoss();
  DeviceSimCLRLoss(DeviceSimCLRLoss&&) noexcept;
  DeviceSimCLRLoss& operator=(DeviceSimCLRLoss&&) noexcept;

  const LossConfig& config() const { return config_; }
  // As SimCLRLoss::get_config() (a caller that uses the value includes <nlohmann/json.hpp>).
  nlohmann::ordered_json get_config() const;
  // get_config() as compact JSON text.
  std::string get_config_string() const;

  // Forward. za, zb: [n, d] device matrices of one dtype (n may be 0), caller-owned, on the current
  // device. sample_weight: size 1 or n, or null. Work is enqueued on `stream`. Collective when
  // options.communicator is set: bad input on any rank throws the same exception on every rank
  // before any large transfer. Nothing the caller owns is written.
  DeviceLossOutput forward(DeviceMatrixView za, DeviceMatrixView zb, cudaStream_t stream,
                           const DeviceSampleWeight* sample_weight = nullptr,
                           const DeviceCallOptions& options = {}) const;

  // Backward with a scalar upstream gradient g (for none it applies to every example): writes
  // dJ/dza, dJ/dzb ([n, d], the input dtype) into the caller's device buffers, enqueued on `stream`
  // (the forward's stream, or one ordered after it; then the forward's stream is made to wait for
  // this backward, so dropping the output frees nothing the backward still reads). Collective when
  // the forward was.
  void backward(const DeviceLossOutput& output, float upstream, DeviceMutableMatrixView grad_a,
                DeviceMutableMatrixView grad_b, cudaStream_t stream) const;
  // Backward with a per-example upstream gradient [n] (reduction none only), host or device
  // float32.
  void backward(const DeviceLossOutput& output, FloatVectorView upstream,
                DeviceMutableMatrixView grad_a, DeviceMutableMatrixView grad_b,
                cudaStream_t stream) const;

 private:
  void backward_impl(const DeviceLossOutput& output, float scalar,
                     const FloatVectorView* per_example, DeviceMutableMatrixView grad_a,
                     DeviceMutableMatrixView grad_b, cudaStream_t stream) const;

  LossConfig config_;  // validated by validate_config, as SimCLRLoss's
  std::unique_ptr<BlasHandles> blas_;
};

// Copies `count` float32 values of a device array to the host; synchronises `stream`. A helper for
// tests and tools.
std::vector<float> copy_to_host_f32(const DeviceArray& array, std::size_t count,
                                    cudaStream_t stream);

}  // namespace simclr::cuda

#pragma once
// SimCLRLoss on the GPU (docs/gpu.md): the same semantics as simclr::SimCLRLoss (docs/math.md
// sections 1-4, docs/semantics.md) on device memory, on a caller-given stream. Inputs float32,
// bfloat16 or float16; normalisation, logits, log-sum-exp and gradient accumulation in float32;
// outputs in the input dtype.
//
// Memory: the gathered, normalised U [2G, d] in the input dtype, O(n) float32 scalars, the float32
// gradient accumulator [2n, d], and one workspace tile (DeviceOptions). The [2n, 2G] logits are
// never held: the forward streams column tiles with an online log-sum-exp, the backward recomputes
// each tile and applies M (docs/math.md section 4.2) to U tile by tile.
//
// Host synchronisation: in the checked mode (the default), only where a result must reach the host
// before the step can go on: the finiteness check of the inputs (its verdict decides the exception,
// and the agreement step needs it) and, for a device-resident per-example upstream gradient, the
// same check in the backward. In the asynchronous mode (DeviceCheckMode::kAsync), none: the verdict
// stays in a device status array the caller reads when it chooses.
//
// Memory: with a caller workspace (DeviceWorkspace, sized by forward_workspace_bytes /
// backward_workspace_bytes) no call allocates; without one, arrays are stream-ordered allocations
// (cudaMallocAsync) on the call's stream. The first call that allocates on a device raises the
// release threshold of that device's current memory pool to UINT64_MAX, once per process, when it
// is still 0 (CUDA's default), so the pool keeps the step's memory mapped between steps; a
// threshold the caller has set (any other value) is left alone (docs/gpu.md).

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "simclr/cuda/device_communicator.hpp"
#include "simclr/cuda/device_types.hpp"
#include "simclr/options.hpp"

struct cublasContext;  // cublasHandle_t is cublasContext*; this header does not need cuBLAS's

namespace simclr::cuda {

// Keras sample_weight on the device path: `size` float32 values in host or device memory, in the
// Keras shape the caller had ([], [N], [N, 1], [1], [1, 1]; empty `shape` means [size]). The shape
// rules are the library's one set (SampleWeight's, docs/semantics.md): size 1 weighs every example
// alike, size n is one weight per example.
struct DeviceSampleWeight {
  const float* data = nullptr;
  std::int64_t size = 0;
  MemorySpace space = MemorySpace::kHost;
  std::vector<std::int64_t> shape;
};

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
  // Which rank computes which blocks in a distributed call, as EngineOptions::schedule
  // (docs/performance.md, "Schedules"). kBalanced computes each pair of rank blocks once: each rank
  // does 2/P of the single-process work, and the backward adds a reduce-scatter of [2G, d] float32
  // (in the forward's communicator; one that lacks a device reduce-scatter keeps own_rows, as does
  // a temperature without the fixed shift). kAuto is own_rows on the device until the schedules
  // have been measured on GPUs; choose kBalanced explicitly where compute, not the link, is the
  // limit.
  Schedule schedule = Schedule::kAuto;
};

// How a call checks its inputs (za, zb, a device sample weight, a device per-example upstream) for
// NaN and Inf.
enum class DeviceCheckMode {
  // The verdict reaches the host before the call returns (one stream synchronisation): bad input
  // throws ValueError naming the first bad element ("za has NaN at row 3, column 5"), on every rank
  // of a distributed call. The default of the C++ API.
  kChecked,
  // No host synchronisation at all: the first bad element of each input is recorded on the device
  // in the status array (DeviceLossOutput::status, kStatusSlots uint64 values), and the call goes
  // on; its results are then NaN. What framework routes use (they cannot stall the stream).
  kAsync,
};

// The status array: slot k holds the flat index (row * cols + column) of the first NaN or Inf of
// input k, or kStatusClean. Written by the forward (za, zb, weight) and by a backward with a device
// per-example upstream (slot 3), in stream order; in the checked mode too.
inline constexpr int kStatusSlots = 4;
inline constexpr int kStatusZa = 0, kStatusZb = 1, kStatusWeight = 2, kStatusUpstream = 3;
inline constexpr unsigned long long kStatusClean = ~0ull;

// Caller-provided device memory (e.g. from PyTorch's caching allocator or XLA's scratch allocator).
// When data is set, the call allocates nothing: every array comes out of it, and a workspace
// smaller than the *_workspace_bytes query throws ValueError before any work is enqueued. data must
// be 256-byte aligned. The forward's workspace holds the state saved for the backward (U, the
// per-row LSE, norms, weights, the status array): the caller keeps it alive and unmodified until
// the backward has run, in stream order. The backward's workspace is scratch, free once it has run.
struct DeviceWorkspace {
  void* data = nullptr;
  std::size_t bytes = 0;
};

// Caller buffers for the forward's outputs (device memory, each optional; a null one comes out of
// the workspace, or is allocated): values [n] (reduction none) or [1], per_example [n], both in the
// input dtype; objective [1] float32.
struct DeviceOutputBuffers {
  void* values = nullptr;
  void* per_example = nullptr;
  float* objective = nullptr;
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
  // Distributed calls: the gradient convention (GradientReduction); every rank passes the same.
  GradientReduction gradient_reduction = GradientReduction::kSum;
  DeviceOptions device;
  DeviceCheckMode check = DeviceCheckMode::kChecked;
  DeviceWorkspace workspace;
  // Forward only, with a workspace: when set, `workspace` holds only what the backward reads (the
  // saved state and the outputs not in caller buffers: forward_saved_bytes) and `scratch` the
  // rest (forward_workspace_bytes - forward_saved_bytes: the tile, the staging arrays). The scratch
  // is free for other use once the forward's work is done in stream order (a stream-ordered
  // allocator may take it back right after the call); the workspace must stay until the backward.
  DeviceWorkspace scratch;
  DeviceOutputBuffers outputs;
  // The caller's cuBLAS handle (its stream is set to the call's; the library never destroys it).
  // Null: one handle per device and host thread, cached for the life of the process, is used.
  cublasContext* blas_handle = nullptr;
};

// Options of a backward call.
struct DeviceBackwardOptions {
  DeviceCheckMode check = DeviceCheckMode::kChecked;  // for a device per-example upstream
  DeviceWorkspace workspace;
  cublasContext* blas_handle = nullptr;
};

// What a call needs, for the workspace queries. global_rows is G, the rows of every rank together
// (rows when local); distributed as the call will be (a communicator doubles U's staging).
struct DeviceProblem {
  std::int64_t rows = 0;
  std::int64_t global_rows = 0;
  std::int64_t dim = 0;
  DeviceDType dtype = DeviceDType::kFloat32;
  bool distributed = false;
};

// Bytes of DeviceCallOptions::workspace a forward of `problem` needs with these options (tiles as
// options.device, outputs not in caller buffers counted). Includes the saved state.
std::size_t forward_workspace_bytes(const DeviceProblem& problem,
                                    const DeviceCallOptions& options = {});
// The leading part of those bytes that the backward reads (DeviceCallOptions::scratch): the status
// array, U, the squared norms, the per-row LSE, the weights and the outputs not in caller buffers.
std::size_t forward_saved_bytes(const DeviceProblem& problem,
                                const DeviceCallOptions& options = {});
// Bytes of DeviceBackwardOptions::workspace a backward of `problem` needs (tiles as `device`).
std::size_t backward_workspace_bytes(const DeviceProblem& problem,
                                     const DeviceOptions& device = {});

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
  // [kStatusSlots] uint64 on the device: the finiteness verdicts (kStatusZa...). Ready in stream
  // order; read it (copy_status_to_host) after the stream has passed the call.
  DeviceArray status;

  std::shared_ptr<const detail::DeviceSaved> saved;  // opaque, for backward()
};

// TensorFlow Similarity's SimCLRLoss on device memory. Holds only its configuration; cuBLAS handles
// come from the caller or a per-device, per-thread cache shared by every loss.
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
  // SimCLRLoss::get_config() as compact JSON text (keys in TF Similarity's order). The header
  // needs no JSON library.
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
                DeviceMutableMatrixView grad_b, cudaStream_t stream,
                const DeviceBackwardOptions& options = {}) const;
  // Backward with a per-example upstream gradient [n] (reduction none only), host or device
  // float32.
  void backward(const DeviceLossOutput& output, FloatVectorView upstream,
                DeviceMutableMatrixView grad_a, DeviceMutableMatrixView grad_b, cudaStream_t stream,
                const DeviceBackwardOptions& options = {}) const;

 private:
  void backward_impl(const DeviceLossOutput& output, float scalar,
                     const FloatVectorView* per_example, DeviceMutableMatrixView grad_a,
                     DeviceMutableMatrixView grad_b, cudaStream_t stream,
                     const DeviceBackwardOptions& options) const;

  LossConfig config_;  // validated by validate_config, as SimCLRLoss's
};

// Copies `count` float32 values of a device array to the host; synchronises `stream`. A helper for
// tests and tools.
std::vector<float> copy_to_host_f32(const DeviceArray& array, std::size_t count,
                                    cudaStream_t stream);
// Copies the status array of a forward to the host; synchronises `stream`.
std::vector<unsigned long long> copy_status_to_host(const DeviceLossOutput& output,
                                                    cudaStream_t stream);

}  // namespace simclr::cuda

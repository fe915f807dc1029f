// The device front end (docs/gpu.md): the shared step (detail/step.hpp: validation, the agreement,
// the plan), normalisation, the gather, the tiled device engine, the reduction kernels; and the
// backward. Only the engine differs from src/frontend/loss.cpp.

#include "simclr/cuda/device_loss.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <nlohmann/json.hpp>
#include <numeric>
#include <thread>
#include <utility>
#include <vector>

#include "blas.hpp"
#include "device_engine.hpp"
#include "kernels.cuh"
#include "simclr/detail/agreement.hpp"
#include "simclr/detail/cuda_check.hpp"
#include "simclr/detail/device_steps.hpp"
#include "simclr/detail/reduction.hpp"
#include "simclr/detail/step.hpp"
#include "simclr/detail/engine.hpp"
#include "simclr/loss.hpp"

namespace simclr::cuda {

static_assert(detail::kReductionNone == static_cast<int>(Reduction::kNone), "reduction codes");
static_assert(detail::kReductionSum == static_cast<int>(Reduction::kSum), "reduction codes");
static_assert(detail::kReductionSumOverBatchSize == static_cast<int>(Reduction::kSumOverBatchSize),
              "reduction codes");

std::string to_string(DeviceDType dtype) {
  switch (dtype) {
    case DeviceDType::kFloat32:
      return "float32";
    case DeviceDType::kBFloat16:
      return "bfloat16";
    case DeviceDType::kFloat16:
      return "float16";
  }
  return "dtype(" + std::to_string(static_cast<int>(dtype)) + ")";
}

std::size_t element_size(DeviceDType dtype) {
  switch (dtype) {
    case DeviceDType::kFloat32:
      return 4;
    case DeviceDType::kBFloat16:
    case DeviceDType::kFloat16:
      return 2;
  }
  return 0;
}

// ---- DeviceArray ----

namespace {

// The first allocation on a device: CUDA's pools start with a release threshold of 0, so memory a
// step frees goes back to the driver at the next synchronisation and is mapped again by the next
// step. The device's current pool (the one cudaMallocAsync takes from) keeps its memory instead,
// as a framework's caching allocator would: its threshold is raised to UINT64_MAX once per device
// and process, and only while it is still 0. A threshold the caller has set is theirs, and a
// caller who lowers it again later is not overridden (docs/gpu.md, "Memory pool").
void keep_pool_memory() {
  static std::mutex mutex;
  static std::vector<int> seen;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    (void)cudaGetLastError();  // the allocation itself reports the failure
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (std::find(seen.begin(), seen.end(), device) != seen.end()) return;
    seen.push_back(device);
  }
  cudaMemPool_t pool = nullptr;
  std::uint64_t threshold = 0;
  if (cudaDeviceGetMemPool(&pool, device) != cudaSuccess ||
      cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold) != cudaSuccess) {
    (void)cudaGetLastError();  // a setting, not a failure of the call
    return;
  }
  if (threshold != 0) return;
  threshold = UINT64_MAX;
  if (cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold) != cudaSuccess)
    (void)cudaGetLastError();
}

}  // namespace

DeviceArray::DeviceArray(std::size_t bytes, cudaStream_t stream) : bytes_(bytes), stream_(stream) {
  if (bytes == 0) return;
  keep_pool_memory();
  const cudaError_t rc = cudaMallocAsync(&data_, bytes, stream);
  if (rc != cudaSuccess) {
    data_ = nullptr;
    bytes_ = 0;
    // The size is what tells an exhausted device from a bug; cudaErrorMemoryAllocation is OOM.
    throw DeviceError(simclr::detail::cuda_failure(
        simclr::detail::str_cat("cudaMallocAsync(&ptr, ", bytes, " bytes)"), rc));
  }
}

DeviceArray::~DeviceArray() { release(); }

DeviceArray DeviceArray::borrow(void* data, std::size_t bytes) {
  DeviceArray out;
  out.data_ = data;
  out.bytes_ = bytes;
  out.owned_ = false;
  return out;
}

DeviceArray::DeviceArray(DeviceArray&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      bytes_(std::exchange(other.bytes_, 0)),
      stream_(other.stream_),
      owned_(std::exchange(other.owned_, true)) {}

DeviceArray& DeviceArray::operator=(DeviceArray&& other) noexcept {
  if (this != &other) {
    release();
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
    stream_ = other.stream_;
    owned_ = std::exchange(other.owned_, true);
  }
  return *this;
}

void DeviceArray::release() noexcept {
  // never throw from a destructor
  if (data_ != nullptr && owned_) (void)cudaFreeAsync(data_, stream_);
  data_ = nullptr;
  bytes_ = 0;
  owned_ = true;
}

std::vector<float> copy_to_host_f32(const DeviceArray& array, std::size_t count,
                                    cudaStream_t stream) {
  SIMCLR_ENFORCE(count * sizeof(float) <= array.bytes(), ValueError, "copy_to_host_f32: ", count,
                 " floats from an array of ", array.bytes(), " bytes");
  std::vector<float> out(count);
  if (count == 0) return out;
  SIMCLR_CHECK_CUDA(cudaMemcpyAsync(out.data(), array.data(), count * sizeof(float),
                                    cudaMemcpyDeviceToHost, stream));
  SIMCLR_CHECK_CUDA(cudaStreamSynchronize(stream));
  return out;
}

std::vector<unsigned long long> copy_status_to_host(const DeviceLossOutput& output,
                                                    cudaStream_t stream) {
  std::vector<unsigned long long> out(kStatusSlots, kStatusClean);
  if (output.status.bytes() < out.size() * sizeof(unsigned long long)) return out;
  SIMCLR_CHECK_CUDA(cudaMemcpyAsync(out.data(), output.status.data(),
                                    out.size() * sizeof(unsigned long long), cudaMemcpyDeviceToHost,
                                    stream));
  SIMCLR_CHECK_CUDA(cudaStreamSynchronize(stream));
  return out;
}

// ---- cuBLAS handles: the caller's, or one per device for the life of the process ----

namespace {

// One handle per device and host thread, never destroyed (cublasDestroy synchronises the device,
// and at exit the runtime may be gone). Per thread because cublasSetStream on a handle shared by
// threads calling on one device at once would race (cuBLAS's own advice: a handle per thread and
// device); frameworks call from a few long-lived threads (PyTorch: the Python thread and one
// autograd thread per device), so a few handles in all. Kept in one process-wide table, not in
// thread_local storage, so the handles stay reachable after their thread ends (a new thread that
// gets a dead thread's id takes its handle over).
// A caller's cuBLAS handle is borrowed for one call: the stream and pointer mode the call sets on it
// are put back when the call returns or throws (the cached handles are the library's own).
class BorrowedBlasHandle {
 public:
  explicit BorrowedBlasHandle(cublasContext* caller) : handle_(caller) {
    if (handle_ == nullptr) return;
    SIMCLR_CHECK_CUBLAS(cublasGetStream(handle_, &stream_));
    SIMCLR_CHECK_CUBLAS(cublasGetPointerMode(handle_, &mode_));
  }
  ~BorrowedBlasHandle() {
    if (handle_ == nullptr) return;
    // Never throws: a failure here leaves the handle as the call left it.
    (void)cublasSetStream(handle_, stream_);
    (void)cublasSetPointerMode(handle_, mode_);
  }
  BorrowedBlasHandle(const BorrowedBlasHandle&) = delete;
  BorrowedBlasHandle& operator=(const BorrowedBlasHandle&) = delete;

 private:
  cublasHandle_t handle_;
  cudaStream_t stream_ = nullptr;
  cublasPointerMode_t mode_ = CUBLAS_POINTER_MODE_HOST;
};

cublasHandle_t blas_handle(cublasContext* caller, cudaStream_t stream) {
  cublasHandle_t handle = caller;
  if (handle == nullptr) {
    using Key = std::pair<int, std::thread::id>;
    static std::mutex mutex;
    static auto* handles = new std::vector<std::pair<Key, cublasHandle_t>>;
    int device = 0;
    SIMCLR_CHECK_CUDA(cudaGetDevice(&device));
    const Key key{device, std::this_thread::get_id()};
    std::lock_guard<std::mutex> lock(mutex);
    auto it = std::find_if(handles->begin(), handles->end(),
                           [&](const auto& h) { return h.first == key; });
    if (it == handles->end()) {
      SIMCLR_CHECK_CUBLAS(cublasCreate(&handle));
      handles->emplace_back(key, handle);
      // Plain float32 products: no TF32, so the float32 path matches the CPU to ~1e-6.
      SIMCLR_CHECK_CUBLAS(cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH));
    } else {
      handle = it->second;
    }
  }
  SIMCLR_CHECK_CUBLAS(cublasSetStream(handle, stream));
  return handle;
}

}  // namespace

namespace detail {

// What the forward keeps for the backward.
struct DeviceSaved {
  simclr::detail::StepPlan plan;  // what every rank agreed on (layout, rows, denominator, scale)
  DeviceDType dtype = DeviceDType::kFloat32;
  std::int64_t dim = 0;
  DeviceArray u;              // [2G, d] normalised rows of every rank, input dtype
  DeviceArray squared_norms;  // [2n] float32
  DeviceArray row_lse;        // [2n] float32
  DeviceArray weight;         // [n] float32, after broadcasting
  DeviceCommunicator* communicator = nullptr;
  cudaStream_t stream = nullptr;  // the forward's: the arrays above are freed in its order
  DeviceOptions options;
  float inv_temperature = 1;
  std::vector<std::int64_t>
      blocks;  // balanced schedule: this rank's off-diagonal blocks; else empty
  bool balanced = false;
};

namespace {

using simclr::detail::AgreementRecord;

// Whether host bits of one element of `dtype` are NaN (else Inf).
bool element_is_nan(const unsigned char* bits, DeviceDType dtype) {
  if (dtype == DeviceDType::kFloat32) {
    float v;
    std::memcpy(&v, bits, sizeof(v));
    return std::isnan(v);
  }
  std::uint16_t h;
  std::memcpy(&h, bits, sizeof(h));
  if (dtype == DeviceDType::kBFloat16) return (h & 0x7F80u) == 0x7F80u && (h & 0x007Fu) != 0;
  return (h & 0x7C00u) == 0x7C00u && (h & 0x03FFu) != 0;
}

void check_view(const DeviceMatrixView& z, const char* view) {
  SIMCLR_ENFORCE(element_size(z.dtype) != 0, TypeError, view, " has an unsupported dtype (",
                 to_string(z.dtype), "); the device loss takes float32, bfloat16 or float16");
  simclr::detail::check_view_shape(view, z.rows, z.cols, z.row_stride, z.data == nullptr);
}

void check_grad_view(const DeviceMutableMatrixView& g, const char* what, std::int64_t n,
                     std::int64_t d, DeviceDType dtype) {
  SIMCLR_ENFORCE(g.dtype == dtype, TypeError, what, " buffer is ", to_string(g.dtype),
                 " but the loss was computed in ", to_string(dtype));
  SIMCLR_ENFORCE(g.rows == n && g.cols == d, ValueError, what, " buffer is [", g.rows, ", ", g.cols,
                 "] but the gradient is [", n, ", ", d, "]");
  SIMCLR_ENFORCE(n == 0 || d == 0 || g.data != nullptr, ValueError, what, " buffer is null");
  SIMCLR_ENFORCE(g.rows <= 1 || g.row_stride >= g.cols, ValueError, what, " row stride ",
                 g.row_stride, " is smaller than its ", g.cols, " columns");
}

// Finiteness of up to three device arrays in one pass and one synchronisation: the verdict must
// reach the host (it decides the exception, which the agreement step carries to every rank).
struct FiniteCheck {
  const void* data;
  DeviceDType dtype;
  std::int64_t rows, cols, stride;
  const char* what;  // "za has"
  bool matrix;       // message "at row r, column c" (else "at index i")
};

// Enqueues the finiteness checks: slot[k] of `status` gets the first bad flat index of checks[k]
// (or kStatusClean). No synchronisation.
void launch_finite_checks(const std::vector<FiniteCheck>& checks, unsigned long long* status,
                          cudaStream_t stream) {
  for (std::size_t k = 0; k < checks.size(); ++k) {
    const auto& c = checks[k];
    launch_find_nonfinite(c.data, c.dtype, c.rows, c.cols, c.stride, status + k, stream);
  }
}

// The checked mode: the verdicts reach the host (one synchronisation), and the first bad input
// throws ValueError naming the element.
void report_finite_checks(const std::vector<FiniteCheck>& checks, const unsigned long long* status,
                          cudaStream_t stream) {
  if (checks.empty()) return;
  std::vector<unsigned long long> host(checks.size());
  SIMCLR_CHECK_CUDA(cudaMemcpyAsync(host.data(), status, host.size() * sizeof(unsigned long long),
                                    cudaMemcpyDeviceToHost, stream));
  SIMCLR_CHECK_CUDA(cudaStreamSynchronize(stream));
  for (std::size_t k = 0; k < checks.size(); ++k) {
    if (host[k] == kStatusClean) continue;
    const auto& c = checks[k];
    const auto idx = static_cast<std::int64_t>(host[k]);
    const std::int64_t row = idx / c.cols, col = idx - row * c.cols;
    const std::size_t elem = element_size(c.dtype);
    unsigned char bits[4] = {0, 0, 0, 0};
    SIMCLR_CHECK_CUDA(cudaMemcpy(bits,
                                 static_cast<const char*>(c.data) + (row * c.stride + col) * elem,
                                 elem, cudaMemcpyDeviceToHost));
    const char* kind = element_is_nan(bits, c.dtype) ? "NaN" : "Inf";
    if (c.matrix)
      throw ValueError(
          simclr::detail::str_cat(c.what, " ", kind, " at row ", row, ", column ", col));
    throw ValueError(simclr::detail::str_cat(c.what, " ", kind, " at index ", row));
  }
}

void check_weight(const DeviceSampleWeight* sw, std::int64_t n) {
  if (sw == nullptr) return;
  // The shape rules are the host path's (detail/reduction.hpp).
  simclr::detail::check_weight_shape(sw->shape.empty() ? std::vector<std::int64_t>{sw->size}
                                                       : sw->shape,
                                     sw->size, n);
  SIMCLR_ENFORCE(sw->size == 0 || sw->data != nullptr, ValueError, "sample_weight is null with ",
                 sw->size, " values");
  if (sw->space == MemorySpace::kHost) {
    for (std::int64_t i = 0; i < sw->size; ++i) {
      SIMCLR_ENFORCE(std::isfinite(sw->data[i]), ValueError, "sample_weight has ",
                     std::isnan(sw->data[i]) ? "NaN" : "Inf", " at index ", i);
    }
  }
}

// Makes `later` wait for what is enqueued on `earlier` so far. The backward may run on another
// stream than the forward; the forward's arrays, which it reads, are freed in the forward stream's
// order when the output is dropped, so that stream must not get there before the backward is done.
void order_after(cudaStream_t later, cudaStream_t earlier) {
  if (later == earlier) return;
  cudaEvent_t done = nullptr;
  SIMCLR_CHECK_CUDA(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  const cudaError_t recorded = cudaEventRecord(done, earlier);
  const cudaError_t waited =
      recorded == cudaSuccess ? cudaStreamWaitEvent(later, done, 0) : cudaSuccess;
  (void)cudaEventDestroy(done);  // released once the wait is satisfied
  SIMCLR_CHECK_CUDA(recorded);
  SIMCLR_CHECK_CUDA(waited);
}

// A float32 host vector copied into `out` (pageable source: safe to free on return).
void upload(const float* data, std::int64_t count, const DeviceArray& out, cudaStream_t stream) {
  if (count > 0)
    SIMCLR_CHECK_CUDA(cudaMemcpyAsync(out.data(), data, static_cast<std::size_t>(count) * 4,
                                      cudaMemcpyHostToDevice, stream));
}

std::size_t z(std::int64_t count, std::size_t bytes) {
  return static_cast<std::size_t>(count) * bytes;
}

// Every array of a forward, in the order both the call and the workspace queries take them: first
// what the backward reads (and the outputs not in caller buffers), out of `saved`, then the arrays
// only the forward uses, out of `rest` (the same arena, or the caller's scratch).
struct ForwardArrays {
  DeviceArray status, u, squared_norms, row_lse, weight, staged_weight, local, stats;
  DeviceArray values, per_example, objective;
};

ForwardArrays take_forward_arrays(Arena& saved, Arena& rest, std::int64_t n, std::int64_t total,
                                  std::int64_t d, std::size_t elem, std::int64_t value_count,
                                  bool distributed, bool host_weight,
                                  const DeviceOutputBuffers& outputs) {
  ForwardArrays a;
  a.status = saved.take(kStatusSlots * sizeof(unsigned long long));
  a.u = saved.take(z(2 * total * d, elem));
  a.squared_norms = saved.take(z(2 * n, sizeof(float)));
  a.row_lse = saved.take(z(2 * n, sizeof(float)));
  a.weight = saved.take(z(n, sizeof(float)));
  a.values = outputs.values != nullptr ? DeviceArray::borrow(outputs.values, z(value_count, elem))
                                       : saved.take(z(value_count, elem));
  a.per_example = outputs.per_example != nullptr
                      ? DeviceArray::borrow(outputs.per_example, z(n, elem))
                      : saved.take(z(n, elem));
  a.objective = outputs.objective != nullptr ? DeviceArray::borrow(outputs.objective, sizeof(float))
                                             : saved.take(sizeof(float));
  if (host_weight) a.staged_weight = rest.take(z(n, sizeof(float)));
  if (distributed) a.local = rest.take(z(2 * n * d, elem));
  a.stats = rest.take(z(6 * n, sizeof(float)));
  return a;
}

// The balanced forward's arrays beyond the own_rows ones: every row's (max, sum, unused positive)
// [3 * 2G] and the shifted sums [2G].
struct BalancedForwardArrays {
  DeviceArray stats, sums;
};

BalancedForwardArrays take_balanced_forward_arrays(Arena& arena, std::int64_t total) {
  BalancedForwardArrays a;
  a.stats = arena.take(z(6 * total, sizeof(float)));
  a.sums = arena.take(z(2 * total, sizeof(float)));
  return a;
}

// Every array of a backward (beyond the engine's scratch), in order.
struct BackwardArrays {
  DeviceArray staged_upstream, alpha, lse_gathered, alpha_gathered, params, grad_u;
};

BackwardArrays take_backward_arrays(Arena& arena, std::int64_t n, std::int64_t total_rows,
                                    std::int64_t d, bool distributed, bool host_upstream) {
  BackwardArrays a;
  if (host_upstream) a.staged_upstream = arena.take(z(n, sizeof(float)));
  a.alpha = arena.take(z(2 * n, sizeof(float)));
  if (distributed) {
    a.lse_gathered = arena.take(z(total_rows, sizeof(float)));
    a.alpha_gathered = arena.take(z(total_rows, sizeof(float)));
  }
  a.params = arena.take(3 * sizeof(float));
  a.grad_u = arena.take(z(2 * n * d, sizeof(float)));
  return a;
}

DeviceTileProblem tile_problem(std::int64_t n, std::int64_t total_rows, std::int64_t anchor_begin,
                               std::int64_t d, DeviceDType dtype, const DeviceOptions& options) {
  DeviceTileProblem problem;
  problem.dtype = dtype;
  problem.d = d;
  problem.total = total_rows;
  problem.layout = AnchorLayout{anchor_begin, n};
  problem.plan = plan_tiles(2 * n, total_rows, dtype, options);
  problem.symmetric = options.symmetric;
  return problem;
}

// The balanced schedule's own diagonal block [2n, 2n] of a rank whose row block is `pairs`: it is
// walked with the row block's tiles (clamped to 2n), because it shares the row block's scratch,
// which was sized for that plan (a plan of its own could be larger under a workspace budget).
DeviceTileProblem own_block_problem(const DeviceTileProblem& pairs, std::int64_t n,
                                    std::int64_t anchor_begin) {
  DeviceTileProblem own = pairs;
  own.total = 2 * n;
  own.layout = AnchorLayout{0, n};
  own.plan.rows = std::min(pairs.plan.rows, std::max<std::int64_t>(2 * n, 1));
  own.plan.cols = std::min(pairs.plan.cols, std::max<std::int64_t>(2 * n, 1));
  own.plan.ld = std::min(pairs.plan.ld, (own.plan.cols + 7) / 8 * 8);
  own.u = static_cast<const char*>(pairs.u) + z(anchor_begin * pairs.d, element_size(pairs.dtype));
  return own;
}

}  // namespace
}  // namespace detail

using detail::AgreementRecord;

DeviceSimCLRLoss::DeviceSimCLRLoss(double temperature, Reduction reduction,
                                   std::optional<std::string> name)
    : DeviceSimCLRLoss(LossConfig{temperature, reduction, std::move(name)}) {}

DeviceSimCLRLoss::DeviceSimCLRLoss(const LossConfig& config) : config_(config) {
  validate_config(config_);
}

std::string DeviceSimCLRLoss::get_config_string() const {
  return SimCLRLoss(config_).get_config().dump();
}

DeviceSimCLRLoss::~DeviceSimCLRLoss() = default;
DeviceSimCLRLoss::DeviceSimCLRLoss(DeviceSimCLRLoss&&) noexcept = default;
DeviceSimCLRLoss& DeviceSimCLRLoss::operator=(DeviceSimCLRLoss&&) noexcept = default;

namespace {

void check_problem(const DeviceProblem& p, const char* where) {
  SIMCLR_ENFORCE(p.rows >= 0 && p.dim >= 0 && p.global_rows >= p.rows, ValueError, where, ": rows ",
                 p.rows, ", global_rows ", p.global_rows, ", dim ", p.dim,
                 "; need rows >= 0, dim >= 0 and global_rows >= rows");
  SIMCLR_ENFORCE(element_size(p.dtype) != 0, TypeError, where, ": unsupported dtype ",
                 to_string(p.dtype));
}

}  // namespace

std::size_t forward_workspace_bytes(const DeviceProblem& problem,
                                    const DeviceCallOptions& options) {
  check_problem(problem, "forward_workspace_bytes");
  const std::int64_t n = problem.rows;
  const std::int64_t total = problem.distributed ? problem.global_rows : n;
  detail::Arena arena = detail::Arena::counting();
  // Upper bounds where the call knows more: a host weight staged, values of reduction none.
  detail::take_forward_arrays(arena, arena, n, total, problem.dim, element_size(problem.dtype), n,
                              problem.distributed, true, options.outputs);
  // The anchors' offset does not change the scratch: the general scheme when distributed.
  const auto tiles = detail::tile_problem(n, 2 * total, problem.distributed ? 2 * total - 2 * n : 0,
                                          problem.dim, problem.dtype, options.device);
  if (problem.distributed && options.device.schedule == Schedule::kBalanced) {
    // Counted whether or not the call ends up balanced (it may fall back to own_rows).
    detail::take_balanced_forward_arrays(arena, total);
    detail::engine_pairs_scratch(tiles, arena);
  } else {
    detail::engine_forward_scratch(tiles, arena);
  }
  return arena.used();
}

std::size_t forward_saved_bytes(const DeviceProblem& problem, const DeviceCallOptions& options) {
  check_problem(problem, "forward_saved_bytes");
  const std::int64_t n = problem.rows;
  const std::int64_t total = problem.distributed ? problem.global_rows : n;
  detail::Arena saved = detail::Arena::counting();
  detail::Arena rest = detail::Arena::counting();
  detail::take_forward_arrays(saved, rest, n, total, problem.dim, element_size(problem.dtype), n,
                              problem.distributed, true, options.outputs);
  return saved.used();
}

std::size_t backward_workspace_bytes(const DeviceProblem& problem, const DeviceOptions& device) {
  check_problem(problem, "backward_workspace_bytes");
  const std::int64_t n = problem.rows;
  const std::int64_t total = problem.distributed ? problem.global_rows : n;
  detail::Arena arena = detail::Arena::counting();
  detail::take_backward_arrays(arena, n, 2 * total, problem.dim, problem.distributed, true);
  const auto tiles = detail::tile_problem(n, 2 * total, 0, problem.dim, problem.dtype, device);
  if (problem.distributed && device.schedule == Schedule::kBalanced) {
    arena.take(detail::z(2 * total * problem.dim, sizeof(float)));  // the [2G, d] gradient
    detail::engine_pairs_scratch(tiles, arena);
  } else {
    detail::engine_backward_scratch(tiles, arena);
  }
  return arena.used();
}

namespace detail {
namespace {

std::string device_dtype_name(std::int32_t t) { return to_string(static_cast<DeviceDType>(t)); }

std::vector<FiniteCheck> input_checks(const DeviceMatrixView& za, const DeviceMatrixView& zb,
                                      const DeviceSampleWeight* sample_weight) {
  std::vector<FiniteCheck> checks = {
      {za.data, za.dtype, za.rows, za.cols, za.row_stride, "za has", true},
      {zb.data, zb.dtype, zb.rows, zb.cols, zb.row_stride, "zb has", true}};
  if (sample_weight != nullptr && sample_weight->space == MemorySpace::kDevice)
    checks.push_back({sample_weight->data, DeviceDType::kFloat32, sample_weight->size, 1, 1,
                      "sample_weight has", false});
  return checks;
}

// The checked mode of a distributed call: the finiteness verdict is read back before the agreement
// gather, which carries it to every rank. The status array opens the workspace
// (take_forward_arrays), so this is the same memory the call's arrays use afterwards.
DeviceArray check_finite_before_agreement(const std::vector<FiniteCheck>& checks,
                                          const DeviceWorkspace& workspace, cudaStream_t stream) {
  const std::size_t status_bytes = kStatusSlots * sizeof(unsigned long long);
  DeviceArray status = workspace.data != nullptr && workspace.bytes >= status_bytes
                           ? DeviceArray::borrow(workspace.data, status_bytes)
                           : DeviceArray(status_bytes, stream);
  SIMCLR_CHECK_CUDA(cudaMemsetAsync(status.data(), 0xFF, status.bytes(), stream));
  launch_finite_checks(checks, status.as<unsigned long long>(), stream);
  report_finite_checks(checks, status.as<unsigned long long>(), stream);
  return status;
}

// Weights [n] on the device, after Keras's broadcasting.
void place_weights(const DeviceSampleWeight* sample_weight, ForwardArrays& arrays,
                   const DeviceSaved& saved, cudaStream_t stream) {
  const float* src = nullptr;
  std::int64_t src_size = 0;
  if (sample_weight != nullptr) {
    src_size = sample_weight->size;
    if (sample_weight->space == MemorySpace::kHost) {
      upload(sample_weight->data, sample_weight->size, arrays.staged_weight, stream);
      src = arrays.staged_weight.as<float>();
    } else {
      src = sample_weight->data;
    }
  }
  const std::int64_t n = saved.plan.layout.pairs;
  launch_broadcast_weight(n == 0 ? nullptr : src, src_size, n, saved.weight.as<float>(), stream);
  arrays.staged_weight = DeviceArray();
}

// Normalise own rows ([a; b], 2n x d), then gather every rank's into U (docs/math.md section 3).
void normalise_and_gather(const DeviceMatrixView& za, const DeviceMatrixView& zb,
                          ForwardArrays& arrays, DeviceSaved& saved, cudaStream_t stream) {
  const std::int64_t n = saved.plan.layout.pairs, d = saved.dim;
  const std::size_t elem = element_size(saved.dtype);
  DeviceCommunicator* comm = saved.communicator;
  void* dst = comm != nullptr ? arrays.local.data() : saved.u.data();
  float* norms = saved.squared_norms.as<float>();
  launch_l2_normalize(za.data, saved.dtype, n, d, za.row_stride, dst, norms, stream);
  launch_l2_normalize(zb.data, saved.dtype, n, d, zb.row_stride,
                      static_cast<char*>(dst) + z(n * d, elem), norms + n, stream);
  if (comm == nullptr) return;
  comm->set_stream(stream);
  comm->all_gather_v(arrays.local.data(), z(2 * n * d, elem), saved.u.data(),
                     saved.plan.rank_counts(d, elem));
  arrays.local = DeviceArray();  // stream-ordered free when allocated
}

// The balanced schedule (docs/performance.md, "Schedules"): this rank's diagonal block with the
// symmetric scheme, its off-diagonal blocks into every row's (max, sum), both turned into sums at
// the fixed shift, and a reduce-scatter that brings each rank the full sums of its own rows:
// LSE = shift + log(sum). run_max gets the shift, run_sum the sums.
double balanced_forward(DeviceSaved& saved, DeviceTileProblem& problem, Arena& arena,
                        float* run_max, cudaStream_t stream) {
  const simclr::detail::StepPlan& plan = saved.plan;
  const std::int64_t n = plan.layout.pairs, total = plan.total;
  saved.blocks = simclr::detail::balanced_blocks(plan.rank_rows, plan.rank);
  const std::int64_t rows_all = 2 * total;
  BalancedForwardArrays extra = take_balanced_forward_arrays(arena, total);
  const EngineScratch scratch = engine_pairs_scratch(problem, arena);
  float* g_max = extra.stats.as<float>();
  const RowStats global{g_max, g_max + rows_all, g_max + 2 * rows_all};
  launch_fill(global.run_max, rows_all, -std::numeric_limits<float>::infinity(), stream);
  launch_fill(global.run_sum, rows_all, 0.f, stream);
  double flops = 0;
  if (n > 0) {
    const DeviceTileProblem own = own_block_problem(problem, n, plan.layout.anchor_begin);
    flops = engine_forward(own, {run_max, run_max + 2 * n, run_max + 4 * n}, scratch);
  }
  flops += engine_forward_pairs(problem, saved.blocks, global, scratch);
  const float shift = simclr::detail::fixed_shift_of(saved.inv_temperature);
  float* sums = extra.sums.as<float>();
  launch_shifted_sums(global.run_max, global.run_sum, rows_all, shift, false, sums, stream);
  launch_shifted_sums(run_max, run_max + 2 * n, 2 * n, shift, true,
                      sums + plan.layout.anchor_begin, stream);
  saved.communicator->set_stream(stream);
  saved.communicator->reduce_scatter_v(sums, run_max + 2 * n, plan.rank_counts(1, 1),
                                       SumType::kFloat32);
  launch_fill(run_max, 2 * n, shift, stream);
  return flops;
}

}  // namespace
}  // namespace detail

DeviceLossOutput DeviceSimCLRLoss::forward(DeviceMatrixView za, DeviceMatrixView zb,
                                           cudaStream_t stream,
                                           const DeviceSampleWeight* sample_weight,
                                           const DeviceCallOptions& options) const {
  DeviceCommunicator* comm = options.communicator;
  const bool checked = options.check == DeviceCheckMode::kChecked;
  const std::int64_t n = za.rows, d = za.cols;
  const bool host_weight = sample_weight != nullptr && sample_weight->space == MemorySpace::kHost;
  const std::vector<detail::FiniteCheck> checks = detail::input_checks(za, zb, sample_weight);

  // Shapes, dtypes, weights (host-side), and in the checked mode of a distributed call the
  // finiteness verdict, so that bad input on one rank raises on all.
  DeviceArray early_status;
  auto validate = [&] {
    detail::check_view(za, "za");
    detail::check_view(zb, "zb");
    simclr::detail::check_same_shape(za.rows, za.cols, zb.rows, zb.cols);
    SIMCLR_ENFORCE(za.dtype == zb.dtype, TypeError,
                   "za and zb must have the same dtype: ", to_string(za.dtype), " vs. ",
                   to_string(zb.dtype));
    detail::check_weight(sample_weight, za.rows);
    if (comm != nullptr && checked)
      early_status = detail::check_finite_before_agreement(checks, options.workspace, stream);
  };
  const simclr::detail::StepRequest request{
      n, d, static_cast<std::int32_t>(za.dtype), &config_, options.global_batch_size,
      options.device.schedule, options.gradient_reduction, detail::device_dtype_name,
      "DeviceCallOptions"};
  auto saved = std::make_shared<detail::DeviceSaved>();
  saved->plan =
      simclr::detail::plan_step(comm != nullptr ? &comm->host() : nullptr, request, validate);
  const simclr::detail::StepPlan& plan = saved->plan;
  const std::int64_t total = plan.total;
  const bool split = options.scratch.data != nullptr;
  if (options.workspace.data != nullptr) {
    // A workspace sized for other global rows fails on this rank only (documented: size it with G).
    const DeviceProblem problem{n, total, d, za.dtype, comm != nullptr};
    const std::size_t need = forward_workspace_bytes(problem, options);
    const std::size_t saved_need = forward_saved_bytes(problem, options);
    SIMCLR_ENFORCE(
        (split ? options.workspace.bytes >= saved_need && options.scratch.bytes >= need - saved_need
               : options.workspace.bytes >= need),
        ValueError, "forward: the workspace has ", options.workspace.bytes, " bytes",
        (split ? simclr::detail::str_cat(" and the scratch ", options.scratch.bytes) : ""),
        " but this call needs ", (split ? saved_need : need),
        (split ? simclr::detail::str_cat(" and ", need - saved_need) : ""),
        (split ? " (forward_saved_bytes and the rest of forward_workspace_bytes"
               : " (forward_workspace_bytes"),
        " with rows ", n, ", global_rows ", total, ", dim ", d, ", ", to_string(za.dtype), ")");
  } else {
    SIMCLR_ENFORCE(!split, ValueError,
                   "forward: a scratch without a workspace (the scratch holds what the workspace "
                   "does not: give both, or neither)");
  }
  detail::Arena arena(options.workspace, stream, "forward");
  detail::Arena scratch_arena(split ? options.scratch : options.workspace, stream, "forward scratch");
  detail::Arena& rest = split ? scratch_arena : arena;
  detail::ForwardArrays arrays = detail::take_forward_arrays(
      arena, rest, n, total, d, element_size(za.dtype),
      plan.reduction == Reduction::kNone ? n : 1, comm != nullptr, host_weight, options.outputs);
  SIMCLR_CHECK_CUDA(cudaMemsetAsync(arrays.status.data(), 0xFF, arrays.status.bytes(), stream));
  detail::launch_finite_checks(checks, arrays.status.as<unsigned long long>(), stream);
  if (comm == nullptr && checked)
    detail::report_finite_checks(checks, arrays.status.as<unsigned long long>(), stream);

  const DeviceDType dtype = za.dtype;
  saved->dtype = dtype;
  saved->dim = d;
  saved->communicator = comm;
  saved->stream = stream;
  saved->options = options.device;
  saved->inv_temperature = static_cast<float>(1.0 / config_.temperature);
  saved->u = std::move(arrays.u);
  saved->squared_norms = std::move(arrays.squared_norms);
  saved->row_lse = std::move(arrays.row_lse);
  saved->weight = std::move(arrays.weight);
  detail::place_weights(sample_weight, arrays, *saved, stream);
  detail::normalise_and_gather(za, zb, arrays, *saved, stream);

  // The tiled forward: per-row LSE and positives. Device auto keeps own_rows until measured.
  detail::DeviceTileProblem problem =
      detail::tile_problem(n, 2 * total, plan.layout.anchor_begin, d, dtype, options.device);
  problem.u = saved->u.data();
  problem.inv_temperature = saved->inv_temperature;
  problem.stream = stream;
  float* run_max = arrays.stats.as<float>();
  double flops = 0;
  if (comm != nullptr && comm->has_reduce_scatter()) {
    const Schedule asked =
        options.device.schedule == Schedule::kAuto ? Schedule::kOwnRows : options.device.schedule;
    saved->balanced =
        simclr::detail::resolve_schedule(asked, plan.rank_rows, d, sizeof(float),
                                         simclr::detail::has_fixed_shift(saved->inv_temperature)) ==
        Schedule::kBalanced;
  }
  const BorrowedBlasHandle borrowed(options.blas_handle);
  if (saved->balanced || n > 0) problem.blas = blas_handle(options.blas_handle, stream);
  if (saved->balanced) {
    flops = detail::balanced_forward(*saved, problem, rest, run_max, stream);
  } else if (n > 0) {
    const detail::EngineScratch scratch = detail::engine_forward_scratch(problem, rest);
    flops = detail::engine_forward(problem, {run_max, run_max + 2 * n, run_max + 4 * n}, scratch);
  }

  DeviceLossOutput out;
  out.reduction = plan.reduction;
  out.dtype = dtype;
  out.rank_rows = plan.rank_rows;
  out.row_offset = plan.offset;
  out.global_rows = total;
  out.flops = flops;
  out.values = std::move(arrays.values);
  out.per_example = std::move(arrays.per_example);
  out.objective = std::move(arrays.objective);
  out.status = std::move(arrays.status);
  detail::ForwardFinishParams finish;
  finish.run_max = run_max;
  finish.run_sum = run_max + 2 * n;
  finish.positive = run_max + 4 * n;
  finish.weight = saved->weight.as<float>();
  finish.pairs = n;
  finish.reduction = static_cast<int>(plan.reduction);
  finish.denominator = static_cast<double>(plan.denominator);
  finish.dtype = dtype;
  finish.row_lse = saved->row_lse.as<float>();
  finish.per_example = out.per_example.data();
  finish.values = out.values.data();
  finish.objective = out.objective.as<float>();
  detail::launch_forward_finish(finish, stream);
  out.saved = std::move(saved);
  return out;
}

void DeviceSimCLRLoss::backward(const DeviceLossOutput& output, float upstream,
                                DeviceMutableMatrixView grad_a, DeviceMutableMatrixView grad_b,
                                cudaStream_t stream, const DeviceBackwardOptions& options) const {
  backward_impl(output, upstream, nullptr, grad_a, grad_b, stream, options);
}

void DeviceSimCLRLoss::backward(const DeviceLossOutput& output, FloatVectorView upstream,
                                DeviceMutableMatrixView grad_a, DeviceMutableMatrixView grad_b,
                                cudaStream_t stream, const DeviceBackwardOptions& options) const {
  SIMCLR_ENFORCE(output.saved != nullptr, ValueError,
                 "backward needs the DeviceLossOutput of a forward call of this loss");
  SIMCLR_ENFORCE(output.reduction == Reduction::kNone, ValueError,
                 "a per-example upstream gradient needs reduction 'none'; reduction '",
                 to_string(output.reduction), "' takes a scalar");
  backward_impl(output, 0.f, &upstream, grad_a, grad_b, stream, options);
}

void DeviceSimCLRLoss::backward_impl(const DeviceLossOutput& output, float scalar,
                                     const FloatVectorView* per_example,
                                     DeviceMutableMatrixView grad_a, DeviceMutableMatrixView grad_b,
                                     cudaStream_t stream,
                                     const DeviceBackwardOptions& options) const {
  SIMCLR_ENFORCE(output.saved != nullptr, ValueError,
                 "backward needs the DeviceLossOutput of a forward call of this loss");
  const detail::DeviceSaved& s = *output.saved;
  const BorrowedBlasHandle borrowed(options.blas_handle);
  const simclr::detail::StepPlan& plan = s.plan;
  const std::int64_t n = plan.layout.pairs, d = s.dim, total_rows = plan.layout.total_rows;
  const std::size_t elem = element_size(s.dtype);
  DeviceCommunicator* comm = s.communicator;
  const bool host_upstream = per_example != nullptr && per_example->space == MemorySpace::kHost;
  const bool device_upstream = per_example != nullptr && !host_upstream;

  auto validate = [&] {
    detail::check_grad_view(grad_a, "grad_a", n, d, s.dtype);
    detail::check_grad_view(grad_b, "grad_b", n, d, s.dtype);
    if (options.workspace.data != nullptr) {
      const DeviceProblem problem{n, total_rows / 2, d, s.dtype, comm != nullptr};
      const std::size_t need = backward_workspace_bytes(problem, s.options);
      SIMCLR_ENFORCE(options.workspace.bytes >= need, ValueError, "backward: the workspace has ",
                     options.workspace.bytes, " bytes but this call needs ", need,
                     " (backward_workspace_bytes with rows ", n, ", global_rows ", total_rows / 2,
                     ", dim ", d, ", ", to_string(s.dtype), ")");
    }
    if (per_example == nullptr) {
      simclr::detail::check_upstream(&scalar, 1, false, output.reduction, n);
      return;
    }
    SIMCLR_ENFORCE(n == 0 || per_example->data != nullptr, ValueError, "upstream gradient is null");
    simclr::detail::check_upstream(host_upstream ? per_example->data : nullptr, per_example->size,
                                   true, output.reduction, n);
    if (host_upstream) {
      return;
    } else if (output.status.bytes() >= kStatusSlots * sizeof(unsigned long long)) {
      // Slot kStatusUpstream of the forward's status array; in the checked mode its verdict is
      // read back here.
      const std::vector<detail::FiniteCheck> checks{
          {per_example->data, DeviceDType::kFloat32, n, 1, 1, "upstream gradient has", false}};
      auto* slot = output.status.as<unsigned long long>() + kStatusUpstream;
      SIMCLR_CHECK_CUDA(cudaMemsetAsync(slot, 0xFF, sizeof(unsigned long long), stream));
      detail::launch_finite_checks(checks, slot, stream);
      if (options.check == DeviceCheckMode::kChecked)
        detail::report_finite_checks(checks, slot, stream);
    }
  };
  simclr::detail::agree_backward(comm != nullptr ? &comm->host() : nullptr, validate);
  (void)device_upstream;

  detail::Arena arena(options.workspace, stream, "backward");
  detail::BackwardArrays arrays =
      detail::take_backward_arrays(arena, n, total_rows, d, comm != nullptr, host_upstream);

  // alpha_i (docs/math.md section 4.1), shared by both anchors of pair i.
  {
    const float* upstream = nullptr;
    if (per_example != nullptr) {
      if (host_upstream) {
        detail::upload(per_example->data, n, arrays.staged_upstream, stream);
        upstream = arrays.staged_upstream.as<float>();
      } else {
        upstream = per_example->data;
      }
    }
    detail::launch_pair_weight(upstream, scalar, s.weight.as<float>(), n,
                               plan.reduction == Reduction::kSumOverBatchSize,
                               static_cast<float>(plan.denominator),
                               static_cast<float>(plan.gradient_scale), arrays.alpha.as<float>(),
                               stream);
  }

  // Every row's LSE and alpha in U order: two small gathers when distributed.
  const float* lse_all = s.row_lse.as<float>();
  const float* alpha_all = arrays.alpha.as<float>();
  if (comm != nullptr) {
    const std::vector<std::size_t> bytes = plan.rank_counts(1, sizeof(float));
    comm->set_stream(stream);
    const std::size_t mine = static_cast<std::size_t>(2 * n) * sizeof(float);
    comm->all_gather_v(s.row_lse.data(), mine, arrays.lse_gathered.data(), bytes);
    comm->all_gather_v(arrays.alpha.data(), mine, arrays.alpha_gathered.data(), bytes);
    lse_all = arrays.lse_gathered.as<float>();
    alpha_all = arrays.alpha_gathered.as<float>();
  }
  // A rank without rows still joins the balanced schedule's reduce-scatter.
  if (n == 0 && !s.balanced) {
    detail::order_after(s.stream, stream);
    return;
  }

  detail::launch_backward_params(alpha_all, total_rows, s.inv_temperature, s.dtype,
                                 arrays.params.as<float>(), stream);
  detail::DeviceTileProblem problem =
      detail::tile_problem(n, total_rows, plan.layout.anchor_begin, d, s.dtype, s.options);
  problem.u = s.u.data();
  problem.inv_temperature = s.inv_temperature;
  problem.stream = stream;
  if (s.balanced) {
    // This rank's diagonal block into its own rows of a [2G, d] gradient, its off-diagonal blocks
    // into both sides, and a reduce-scatter that brings each rank the sums of its own rows.
    DeviceArray grad_all = arena.take(detail::z(total_rows * d, sizeof(float)));
    const detail::EngineScratch scratch = detail::engine_pairs_scratch(problem, arena);
    problem.blas = blas_handle(options.blas_handle, stream);
    float* g = grad_all.as<float>();
    SIMCLR_CHECK_CUDA(cudaMemsetAsync(g, 0, grad_all.bytes(), stream));
    const std::int64_t begin = plan.layout.anchor_begin;
    const detail::DeviceTileProblem own = detail::own_block_problem(problem, n, begin);
    detail::engine_backward(own, lse_all + begin, alpha_all + begin, arrays.params.as<float>(),
                            g + begin * d, scratch);
    detail::engine_backward_pairs(problem, s.blocks, lse_all, alpha_all, arrays.params.as<float>(),
                                  g, scratch);
    comm->set_stream(stream);
    comm->reduce_scatter_v(g, arrays.grad_u.data(), plan.rank_counts(d, 1), SumType::kFloat32);
  } else {
    const detail::EngineScratch scratch = detail::engine_backward_scratch(problem, arena);
    problem.blas = blas_handle(options.blas_handle, stream);
    detail::engine_backward(problem, lse_all, alpha_all, arrays.params.as<float>(),
                            arrays.grad_u.as<float>(), scratch);
  }
  const char* anchors = static_cast<const char*>(s.u.data()) +
                        static_cast<std::size_t>(plan.layout.anchor_begin * d) * elem;
  const float* norms = s.squared_norms.as<float>();
  float* grad_u = arrays.grad_u.as<float>();
  detail::launch_l2_normalize_backward(anchors, norms, grad_u, n, d, s.dtype, grad_a.data,
                                       grad_a.row_stride, stream);
  detail::launch_l2_normalize_backward(anchors + static_cast<std::size_t>(n * d) * elem, norms + n,
                                       grad_u + n * d, n, d, s.dtype, grad_b.data,
                                       grad_b.row_stride, stream);
  detail::order_after(s.stream, stream);
}

// ---- the step calls (detail/device_steps.hpp): the forward and backward above, cut at their
// gathers; the same kernels, tiles and arrays, nothing kept between calls ----

namespace steps {
namespace {

std::int64_t weight_size_checked(const StepWeight& w, std::int64_t pairs) {
  if (w.data == nullptr) return 0;
  SIMCLR_ENFORCE(w.size == 1 || w.size == pairs, ValueError, "sample_weight has ", w.size,
                 " values for ", pairs, " pairs; it takes 1 or ", pairs);
  return w.size;
}

detail::DeviceTileProblem step_tiles(const void* u_global, std::int64_t global_rows,
                                     std::int64_t dim, DeviceDType dtype,
                                     std::int64_t anchor_begin, std::int64_t pairs,
                                     float inv_temperature, const DeviceOptions& device,
                                     cudaStream_t stream) {
  SIMCLR_ENFORCE(element_size(dtype) != 0, TypeError, "u_global has an unsupported dtype (",
                 to_string(dtype), ")");
  SIMCLR_ENFORCE(pairs >= 0 && dim >= 0 && global_rows % 2 == 0 && anchor_begin >= 0 &&
                     anchor_begin + 2 * pairs <= global_rows,
                 ValueError, "this rank's anchors [", anchor_begin, ", ", anchor_begin + 2 * pairs,
                 ") are outside u_global's ", global_rows, " rows (an even count)");
  detail::DeviceTileProblem p =
      detail::tile_problem(pairs, global_rows, anchor_begin, dim, dtype, device);
  p.u = u_global;
  p.inv_temperature = inv_temperature;
  p.stream = stream;
  return p;
}

}  // namespace

std::size_t forward_step_workspace_bytes(std::int64_t pairs, std::int64_t global_pairs,
                                         std::int64_t dim, DeviceDType dtype,
                                         const DeviceOptions& device) {
  detail::Arena arena = detail::Arena::counting();
  arena.take(detail::z(pairs, sizeof(float)));      // weights [n]
  arena.take(detail::z(6 * pairs, sizeof(float)));  // (max, sum, positive) [2n] each
  arena.take(detail::z(pairs, element_size(dtype)));  // per_example when the caller has none
  arena.take(sizeof(float));                          // the objective
  const auto tiles = detail::tile_problem(pairs, 2 * global_pairs,
                                          pairs == global_pairs ? 0 : 2 * (global_pairs - pairs),
                                          dim, dtype, device);
  detail::engine_forward_scratch(tiles, arena);
  return arena.used();
}

std::size_t alpha_step_workspace_bytes(std::int64_t pairs) {
  detail::Arena arena = detail::Arena::counting();
  arena.take(detail::z(pairs, sizeof(float)));  // weights [n]
  arena.take(detail::z(pairs, sizeof(float)));  // the upstream, broadcast to [n]
  return arena.used();
}

std::size_t backward_step_workspace_bytes(std::int64_t pairs, std::int64_t global_pairs,
                                          std::int64_t dim, DeviceDType dtype,
                                          const DeviceOptions& device) {
  detail::Arena arena = detail::Arena::counting();
  arena.take(3 * sizeof(float));                           // the backward's params
  arena.take(detail::z(2 * pairs * dim, sizeof(float)));  // dJ/du [2n, d]
  const auto tiles = detail::tile_problem(pairs, 2 * global_pairs, 0, dim, dtype, device);
  detail::engine_backward_scratch(tiles, arena);
  return arena.used();
}

void step_check_finite(const DeviceMatrixView* za, const DeviceMatrixView* zb,
                       const StepWeight& weight, const float* upstream,
                       std::int64_t upstream_count, cudaStream_t stream) {
  std::vector<detail::FiniteCheck> checks;
  if (za != nullptr) checks.push_back({za->data, za->dtype, za->rows, za->cols, za->row_stride,
                                       "za has", true});
  if (zb != nullptr) checks.push_back({zb->data, zb->dtype, zb->rows, zb->cols, zb->row_stride,
                                       "zb has", true});
  if (weight.data != nullptr && weight.size > 0)
    checks.push_back({weight.data, DeviceDType::kFloat32, weight.size, 1, 1, "sample_weight has",
                      false});
  if (upstream != nullptr && upstream_count > 0)
    checks.push_back({upstream, DeviceDType::kFloat32, upstream_count, 1, 1,
                      "upstream gradient has", false});
  if (checks.empty()) return;
  DeviceArray status(checks.size() * sizeof(unsigned long long), stream);
  SIMCLR_CHECK_CUDA(cudaMemsetAsync(status.data(), 0xFF, status.bytes(), stream));
  detail::launch_finite_checks(checks, status.as<unsigned long long>(), stream);
  detail::report_finite_checks(checks, status.as<unsigned long long>(), stream);
}

void step_normalize(const DeviceMatrixView& za, const DeviceMatrixView& zb, void* u_local,
                    float* squared_norms, cudaStream_t stream) {
  detail::check_view(za, "za");
  detail::check_view(zb, "zb");
  simclr::detail::check_same_shape(za.rows, za.cols, zb.rows, zb.cols);
  SIMCLR_ENFORCE(za.dtype == zb.dtype, TypeError, "za and zb must have the same dtype: ",
                 to_string(za.dtype), " vs. ", to_string(zb.dtype));
  const std::int64_t n = za.rows, d = za.cols;
  if (n == 0) return;
  detail::launch_l2_normalize(za.data, za.dtype, n, d, za.row_stride, u_local, squared_norms, stream);
  detail::launch_l2_normalize(zb.data, zb.dtype, n, d, zb.row_stride,
                      static_cast<char*>(u_local) + detail::z(n * d, element_size(za.dtype)),
                      squared_norms + n, stream);
}

void step_forward(double temperature, Reduction reduction, double denominator, const void* u_global,
                  std::int64_t global_rows, std::int64_t dim, DeviceDType dtype,
                  std::int64_t anchor_begin, std::int64_t pairs, const StepWeight& weight,
                  const StepContext& context, float* row_lse, void* per_example, void* values) {
  SIMCLR_ENFORCE(reduction != Reduction::kAuto, ValueError, "step_forward: resolve the reduction");
  const cudaStream_t stream = context.stream;
  const std::int64_t n = pairs;
  detail::DeviceTileProblem problem =
      step_tiles(u_global, global_rows, dim, dtype, anchor_begin, pairs,
                 static_cast<float>(1.0 / temperature), context.device, stream);
  const std::int64_t weight_size = weight_size_checked(weight, n);
  if (context.workspace.data != nullptr) {
    const std::size_t need =
        forward_step_workspace_bytes(n, global_rows / 2, dim, dtype, context.device);
    SIMCLR_ENFORCE(context.workspace.bytes >= need, ValueError, "forward step: the workspace has ",
                   context.workspace.bytes, " bytes but this call needs ", need);
  }
  detail::Arena arena(context.workspace, stream, "forward step");
  DeviceArray w = arena.take(detail::z(n, sizeof(float)));
  DeviceArray stats = arena.take(detail::z(6 * n, sizeof(float)));
  DeviceArray own_per_example = arena.take(detail::z(n, element_size(dtype)));
  DeviceArray objective = arena.take(sizeof(float));
  detail::launch_broadcast_weight(n == 0 ? nullptr : weight.data, weight_size, n, w.as<float>(), stream);
  float* run_max = stats.as<float>();
  const BorrowedBlasHandle borrowed(context.blas);
  if (n > 0) {
    problem.blas = blas_handle(context.blas, stream);
    const detail::EngineScratch scratch = detail::engine_forward_scratch(problem, arena);
    detail::engine_forward(problem, {run_max, run_max + 2 * n, run_max + 4 * n}, scratch);
  }
  detail::ForwardFinishParams finish;
  finish.run_max = run_max;
  finish.run_sum = run_max + 2 * n;
  finish.positive = run_max + 4 * n;
  finish.weight = w.as<float>();
  finish.pairs = n;
  finish.reduction = static_cast<int>(reduction);
  finish.denominator = denominator;
  finish.dtype = dtype;
  finish.row_lse = row_lse;
  finish.per_example = per_example != nullptr ? per_example : own_per_example.data();
  finish.values = values;
  finish.objective = objective.as<float>();
  detail::launch_forward_finish(finish, stream);
}

void step_alpha(std::int64_t pairs, const StepWeight& weight, const float* upstream,
                std::int64_t upstream_count, bool divide, double denominator, double scale,
                const StepContext& context, float* alpha) {
  const cudaStream_t stream = context.stream;
  const std::int64_t n = pairs;
  const std::int64_t weight_size = weight_size_checked(weight, n);
  SIMCLR_ENFORCE(upstream_count == 1 || upstream_count == n, ValueError, "upstream gradient has ",
                 upstream_count, " values for ", n, " pairs; it takes 1 or ", n);
  SIMCLR_ENFORCE(n == 0 || upstream != nullptr, ValueError, "upstream gradient is null");
  if (context.workspace.data != nullptr) {
    const std::size_t need = alpha_step_workspace_bytes(n);
    SIMCLR_ENFORCE(context.workspace.bytes >= need, ValueError, "alpha step: the workspace has ",
                   context.workspace.bytes, " bytes but this call needs ", need);
  }
  if (n == 0) return;
  detail::Arena arena(context.workspace, stream, "alpha step");
  DeviceArray w = arena.take(detail::z(n, sizeof(float)));
  DeviceArray g = arena.take(detail::z(n, sizeof(float)));
  detail::launch_broadcast_weight(weight.data, weight_size, n, w.as<float>(), stream);
  // A scalar upstream stays on the device: broadcast to [n], never read on the host.
  detail::launch_broadcast_weight(upstream, upstream_count, n, g.as<float>(), stream);
  detail::launch_pair_weight(g.as<float>(), 0.f, w.as<float>(), n, divide, static_cast<float>(denominator),
                     static_cast<float>(scale), alpha, stream);
}

void step_backward(double temperature, const void* u_global, std::int64_t global_rows,
                   std::int64_t dim, DeviceDType dtype, std::int64_t anchor_begin,
                   std::int64_t pairs, const float* squared_norms, const float* lse_all,
                   const float* alpha_all, const StepContext& context,
                   const DeviceMutableMatrixView& grad_a, const DeviceMutableMatrixView& grad_b) {
  const cudaStream_t stream = context.stream;
  const std::int64_t n = pairs, d = dim;
  detail::DeviceTileProblem problem =
      step_tiles(u_global, global_rows, dim, dtype, anchor_begin, pairs,
                 static_cast<float>(1.0 / temperature), context.device, stream);
  detail::check_grad_view(grad_a, "grad_a", n, d, dtype);
  detail::check_grad_view(grad_b, "grad_b", n, d, dtype);
  if (context.workspace.data != nullptr) {
    const std::size_t need =
        backward_step_workspace_bytes(n, global_rows / 2, dim, dtype, context.device);
    SIMCLR_ENFORCE(context.workspace.bytes >= need, ValueError,
                   "backward step: the workspace has ", context.workspace.bytes,
                   " bytes but this call needs ", need);
  }
  if (n == 0 || d == 0) return;
  detail::Arena arena(context.workspace, stream, "backward step");
  DeviceArray params = arena.take(3 * sizeof(float));
  DeviceArray grad_u = arena.take(detail::z(2 * n * d, sizeof(float)));
  detail::launch_backward_params(alpha_all, global_rows, problem.inv_temperature, dtype,
                         params.as<float>(), stream);
  const BorrowedBlasHandle borrowed(context.blas);
  const detail::EngineScratch scratch = detail::engine_backward_scratch(problem, arena);
  problem.blas = blas_handle(context.blas, stream);
  detail::engine_backward(problem, lse_all, alpha_all, params.as<float>(), grad_u.as<float>(),
                          scratch);
  const char* anchors = static_cast<const char*>(u_global) +
                        detail::z(anchor_begin * d, element_size(dtype));
  detail::launch_l2_normalize_backward(anchors, squared_norms, grad_u.as<float>(), n, d, dtype,
                               grad_a.data, grad_a.row_stride, stream);
  detail::launch_l2_normalize_backward(anchors + detail::z(n * d, element_size(dtype)), squared_norms + n,
                               grad_u.as<float>() + n * d, n, d, dtype, grad_b.data,
                               grad_b.row_stride, stream);
}

}  // namespace steps

}  // namespace simclr::cuda

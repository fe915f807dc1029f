// The device front end (docs/gpu.md): validation, the agreement step, normalisation, the gather,
// the tiled engine, the Keras reduction; and the backward. Mirrors src/frontend/loss.cpp step by step.

#include "simclr/cuda/device_loss.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <nlohmann/json.hpp>
#include <numeric>
#include <utility>

#include "blas.hpp"
#include "device_engine.hpp"
#include "kernels.cuh"
#include "simclr/detail/cuda_check.hpp"
#include "simclr/detail/agreement.hpp"
#include "simclr/engine.hpp"
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

DeviceArray::DeviceArray(std::size_t bytes, cudaStream_t stream) : bytes_(bytes), stream_(stream) {
  if (bytes > 0) SIMCLR_CHECK_CUDA(cudaMallocAsync(&data_, bytes, stream));
}

DeviceArray::~DeviceArray() { release(); }

DeviceArray::DeviceArray(DeviceArray&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      bytes_(std::exchange(other.bytes_, 0)),
      stream_(other.stream_) {}

DeviceArray& DeviceArray::operator=(DeviceArray&& other) noexcept {
  if (this != &other) {
    release();
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
    stream_ = other.stream_;
  }
  return *this;
}

void DeviceArray::release() noexcept {
  if (data_ != nullptr) (void)cudaFreeAsync(data_, stream_);  // never throw from a destructor
  data_ = nullptr;
  bytes_ = 0;
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

// ---- cuBLAS handles, one per device ----

struct BlasHandles {
  std::mutex mutex;
  std::vector<std::pair<int, cublasHandle_t>> handles;

  cublasHandle_t get(cudaStream_t stream) {
    int device = 0;
    SIMCLR_CHECK_CUDA(cudaGetDevice(&device));
    std::lock_guard<std::mutex> lock(mutex);
    auto it = std::find_if(handles.begin(), handles.end(),
                           [&](const auto& h) { return h.first == device; });
    cublasHandle_t handle = nullptr;
    if (it == handles.end()) {
      SIMCLR_CHECK_CUBLAS(cublasCreate(&handle));
      handles.emplace_back(device, handle);
      // Plain float32 products: no TF32, so the float32 path matches the CPU to ~1e-6.
      SIMCLR_CHECK_CUBLAS(cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH));
    } else {
      handle = it->second;
    }
    SIMCLR_CHECK_CUBLAS(cublasSetStream(handle, stream));
    return handle;
  }

  ~BlasHandles() {
    for (auto& [device, handle] : handles) (void)cublasDestroy(handle);
  }
};

namespace detail {

// What the forward keeps for the backward.
struct DeviceSaved {
  DeviceDType dtype = DeviceDType::kFloat32;
  std::int64_t dim = 0;
  simclr::detail::RowLayout layout;  // where this rank's 2n anchors sit in u
  DeviceArray u;                     // [2G, d] normalised rows of every rank, input dtype
  DeviceArray squared_norms;         // [2n] float32
  DeviceArray row_lse;               // [2n] float32
  DeviceArray weight;                // [n] float32, after broadcasting
  float denominator = 1;             // of sum_over_batch_size (0 gives 0)
  Reduction reduction = Reduction::kSum;
  DeviceCommunicator* communicator = nullptr;
  std::vector<std::int64_t> rank_rows;
  cudaStream_t stream = nullptr;  // the forward's: the arrays above are freed in its order
  DeviceOptions options;
  float inv_temperature = 1;
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
  SIMCLR_ENFORCE(z.rows >= 0 && z.cols >= 0, ValueError, view, " has a negative dimension: [",
                 z.rows, ", ", z.cols, "]");
  SIMCLR_ENFORCE(z.rows == 0 || z.cols == 0 || z.data != nullptr, ValueError, view,
                 " is null with ", z.rows, " rows");
  SIMCLR_ENFORCE(z.rows <= 1 || z.row_stride >= z.cols, ValueError, view, " row stride ",
                 z.row_stride, " is smaller than its ", z.cols, " columns");
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

void check_finite_on_device(const std::vector<FiniteCheck>& checks, cudaStream_t stream) {
  if (checks.empty()) return;
  DeviceArray first(checks.size() * sizeof(unsigned long long), stream);
  SIMCLR_CHECK_CUDA(cudaMemsetAsync(first.data(), 0xFF, first.bytes(), stream));
  for (std::size_t k = 0; k < checks.size(); ++k) {
    const auto& c = checks[k];
    launch_find_nonfinite(c.data, c.dtype, c.rows, c.cols, c.stride,
                          first.as<unsigned long long>() + k, stream);
  }
  std::vector<unsigned long long> host(checks.size());
  SIMCLR_CHECK_CUDA(
      cudaMemcpyAsync(host.data(), first.data(), first.bytes(), cudaMemcpyDeviceToHost, stream));
  SIMCLR_CHECK_CUDA(cudaStreamSynchronize(stream));
  for (std::size_t k = 0; k < checks.size(); ++k) {
    if (host[k] == ~0ull) continue;
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

void check_weight_shape(const DeviceSampleWeight* sw, std::int64_t n) {
  if (sw == nullptr) return;
  SIMCLR_ENFORCE(sw->size == 1 || sw->size == n, ValueError, "Incompatible shapes: [", n, "] vs. [",
                 sw->size, "] (sample_weight on the device path has 1 or n values)");
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

// A float32 host vector copied to a fresh device array (pageable source: safe to free on return).
DeviceArray upload(const float* data, std::int64_t count, cudaStream_t stream) {
  DeviceArray out(static_cast<std::size_t>(count) * sizeof(float), stream);
  if (count > 0)
    SIMCLR_CHECK_CUDA(
        cudaMemcpyAsync(out.data(), data, out.bytes(), cudaMemcpyHostToDevice, stream));
  return out;
}

}  // namespace
}  // namespace detail

using detail::AgreementRecord;

DeviceSimCLRLoss::DeviceSimCLRLoss(double temperature, Reduction reduction,
                                   std::optional<std::string> name)
    : DeviceSimCLRLoss(LossConfig{temperature, reduction, std::move(name)}) {}

DeviceSimCLRLoss::DeviceSimCLRLoss(const LossConfig& config) : config_(config) {
  validate_config(config_);
  blas_ = std::make_unique<BlasHandles>();
}

nlohmann::ordered_json DeviceSimCLRLoss::get_config() const {
  return SimCLRLoss(config_).get_config();
}

std::string DeviceSimCLRLoss::get_config_string() const { return get_config().dump(); }

DeviceSimCLRLoss::~DeviceSimCLRLoss() = default;
DeviceSimCLRLoss::DeviceSimCLRLoss(DeviceSimCLRLoss&&) noexcept = default;
DeviceSimCLRLoss& DeviceSimCLRLoss::operator=(DeviceSimCLRLoss&&) noexcept = default;

DeviceLossOutput DeviceSimCLRLoss::forward(DeviceMatrixView za, DeviceMatrixView zb,
                                           cudaStream_t stream,
                                           const DeviceSampleWeight* sample_weight,
                                           const DeviceCallOptions& options) const {
  DeviceCommunicator* comm = options.communicator;
  const LossConfig& cfg = config_;
  const Reduction reduction =
      cfg.reduction == Reduction::kAuto ? Reduction::kSumOverBatchSize : cfg.reduction;
  const std::int64_t gbs = !options.global_batch_size ? simclr::detail::kNoGlobalBatch
                           : options.global_batch_size->is_infer()
                               ? simclr::detail::kInferGlobalBatch
                               : options.global_batch_size->rows();

  auto validate = [&] {
    detail::check_view(za, "za");
    detail::check_view(zb, "zb");
    SIMCLR_ENFORCE(za.rows == zb.rows && za.cols == zb.cols, ValueError,
                   "za and zb must have the same shape: [", za.rows, ", ", za.cols, "] vs. [",
                   zb.rows, ", ", zb.cols, "]");
    SIMCLR_ENFORCE(za.dtype == zb.dtype, TypeError,
                   "za and zb must have the same dtype: ", to_string(za.dtype), " vs. ",
                   to_string(zb.dtype));
    detail::check_weight_shape(sample_weight, za.rows);
    std::vector<detail::FiniteCheck> checks{
        {za.data, za.dtype, za.rows, za.cols, za.row_stride, "za has", true},
        {zb.data, zb.dtype, zb.rows, zb.cols, zb.row_stride, "zb has", true}};
    if (sample_weight != nullptr && sample_weight->space == MemorySpace::kDevice)
      checks.push_back({sample_weight->data, DeviceDType::kFloat32, sample_weight->size, 1, 1,
                        "sample_weight has", false});
    detail::check_finite_on_device(checks, stream);
  };

  const std::int64_t n = za.rows, d = za.cols;
  std::vector<std::int64_t> rank_rows{n};
  std::int64_t offset = 0, total = n;
  if (comm == nullptr) {
    validate();
  } else {
    AgreementRecord mine = simclr::detail::forward_record(n, d, static_cast<std::int32_t>(za.dtype),
                                                          reduction, cfg.temperature, gbs);
    simclr::detail::capture(mine, validate);
    const auto all = simclr::detail::gather_records(comm->host(), mine);
    const int size = comm->size(), rank = comm->rank();
    SIMCLR_ENFORCE_EQ(static_cast<int>(all.size()), size, CommError,
                      "device communicator: ranks of host() vs the device communicator");
    simclr::detail::check_forward_records(
        all, [](std::int32_t t) { return to_string(static_cast<DeviceDType>(t)); }, cfg.reduction,
        "DeviceCallOptions");
    rank_rows.resize(static_cast<std::size_t>(size));
    for (int r = 0; r < size; ++r)
      rank_rows[static_cast<std::size_t>(r)] = all[static_cast<std::size_t>(r)].rows;
    offset = std::accumulate(rank_rows.begin(), rank_rows.begin() + rank, std::int64_t{0});
    total = std::accumulate(rank_rows.begin(), rank_rows.end(), std::int64_t{0});
  }

  const DeviceDType dtype = za.dtype;
  const std::size_t elem = element_size(dtype);
  auto saved = std::make_shared<detail::DeviceSaved>();
  saved->dtype = dtype;
  saved->dim = d;
  saved->layout = simclr::detail::RowLayout{2 * total, 2 * offset, n};
  saved->communicator = comm;
  saved->rank_rows = rank_rows;
  saved->stream = stream;
  saved->options = options.device;
  saved->inv_temperature = static_cast<float>(1.0 / cfg.temperature);
  saved->reduction = reduction;
  const auto z = [](std::int64_t count, std::size_t bytes) {
    return static_cast<std::size_t>(count) * bytes;
  };
  saved->u = DeviceArray(z(2 * total * d, elem), stream);
  saved->squared_norms = DeviceArray(z(2 * n, sizeof(float)), stream);
  saved->row_lse = DeviceArray(z(2 * n, sizeof(float)), stream);
  saved->weight = DeviceArray(z(n, sizeof(float)), stream);

  // Weights [n] on the device, after Keras's broadcasting.
  {
    DeviceArray staged;
    const float* src = nullptr;
    std::int64_t src_size = 0;
    if (sample_weight != nullptr) {
      src_size = sample_weight->size;
      if (sample_weight->space == MemorySpace::kHost) {
        staged = detail::upload(sample_weight->data, sample_weight->size, stream);
        src = staged.as<float>();
      } else {
        src = sample_weight->data;
      }
    }
    detail::launch_broadcast_weight(n == 0 ? nullptr : src, src_size, n, saved->weight.as<float>(),
                                    stream);
  }

  // Normalise this rank's rows ([a; b], 2n x d), then gather every rank's into U (spec section 2).
  {
    DeviceArray local;
    void* dst = saved->u.data();
    if (comm != nullptr) {
      local = DeviceArray(z(2 * n * d, elem), stream);
      dst = local.data();
    }
    float* norms = saved->squared_norms.as<float>();
    detail::launch_l2_normalize(za.data, dtype, n, d, za.row_stride, dst, norms, stream);
    detail::launch_l2_normalize(zb.data, dtype, n, d, zb.row_stride,
                                static_cast<char*>(dst) + z(n * d, elem), norms + n, stream);
    if (comm != nullptr) {
      std::vector<std::size_t> bytes(rank_rows.size());
      for (std::size_t r = 0; r < rank_rows.size(); ++r) bytes[r] = z(2 * rank_rows[r] * d, elem);
      comm->set_stream(stream);
      comm->all_gather_v(local.data(), local.bytes(), saved->u.data(), bytes);
    }
  }

  // The tiled forward: per-row LSE and positives.
  const detail::AnchorLayout layout{saved->layout.anchor_begin, n};
  const detail::TilePlan plan = detail::plan_tiles(2 * n, 2 * total, dtype, options.device);
  DeviceArray stats(z(6 * n, sizeof(float)), stream);
  float* run_max = stats.as<float>();
  double flops = 0;
  if (n > 0) {
    flops = detail::engine_forward(blas_->get(stream), dtype, saved->u.data(), d, 2 * total, layout,
                                   saved->inv_temperature, plan, options.device.symmetric, run_max,
                                   run_max + 2 * n, run_max + 4 * n, stream);
  }

  DeviceLossOutput out;
  out.reduction = reduction;
  out.dtype = dtype;
  out.rank_rows = rank_rows;
  out.row_offset = offset;
  out.global_rows = total;
  out.flops = flops;
  out.values = DeviceArray(z(reduction == Reduction::kNone ? n : 1, elem), stream);
  out.per_example = DeviceArray(z(n, elem), stream);
  out.objective = DeviceArray(sizeof(float), stream);
  std::int64_t denom = 1;
  if (reduction == Reduction::kSumOverBatchSize)
    denom = gbs == simclr::detail::kNoGlobalBatch      ? n
            : gbs == simclr::detail::kInferGlobalBatch ? total
                                                       : gbs;
  saved->denominator = static_cast<float>(denom);
  detail::launch_forward_finish(
      run_max, run_max + 2 * n, run_max + 4 * n, saved->weight.as<float>(), n,
      static_cast<int>(reduction), static_cast<double>(denom), dtype, saved->row_lse.as<float>(),
      out.per_example.data(), out.values.data(), out.objective.as<float>(), stream);
  out.saved = std::move(saved);
  return out;
}

void DeviceSimCLRLoss::backward(const DeviceLossOutput& output, float upstream,
                                DeviceMutableMatrixView grad_a, DeviceMutableMatrixView grad_b,
                                cudaStream_t stream) const {
  backward_impl(output, upstream, nullptr, grad_a, grad_b, stream);
}

void DeviceSimCLRLoss::backward(const DeviceLossOutput& output, FloatVectorView upstream,
                                DeviceMutableMatrixView grad_a, DeviceMutableMatrixView grad_b,
                                cudaStream_t stream) const {
  SIMCLR_ENFORCE(output.saved != nullptr, ValueError,
                 "backward needs the DeviceLossOutput of a forward call of this loss");
  SIMCLR_ENFORCE(output.reduction == Reduction::kNone, ValueError,
                 "a per-example upstream gradient needs reduction 'none'; reduction '",
                 to_string(output.reduction), "' takes a scalar");
  backward_impl(output, 0.f, &upstream, grad_a, grad_b, stream);
}

void DeviceSimCLRLoss::backward_impl(const DeviceLossOutput& output, float scalar,
                                     const FloatVectorView* per_example,
                                     DeviceMutableMatrixView grad_a, DeviceMutableMatrixView grad_b,
                                     cudaStream_t stream) const {
  SIMCLR_ENFORCE(output.saved != nullptr, ValueError,
                 "backward needs the DeviceLossOutput of a forward call of this loss");
  const detail::DeviceSaved& s = *output.saved;
  const std::int64_t n = s.layout.pairs, d = s.dim, total_rows = s.layout.total_rows;
  const std::size_t elem = element_size(s.dtype);
  DeviceCommunicator* comm = s.communicator;

  auto validate = [&] {
    detail::check_grad_view(grad_a, "grad_a", n, d, s.dtype);
    detail::check_grad_view(grad_b, "grad_b", n, d, s.dtype);
    if (per_example == nullptr) {
      SIMCLR_ENFORCE(std::isfinite(scalar), ValueError, "upstream gradient has ",
                     std::isnan(scalar) ? "NaN" : "Inf", " at index 0");
      return;
    }
    SIMCLR_ENFORCE(per_example->size == n, ValueError, "upstream gradient has ", per_example->size,
                   " elements but the loss has ", n);
    SIMCLR_ENFORCE(n == 0 || per_example->data != nullptr, ValueError, "upstream gradient is null");
    if (per_example->space == MemorySpace::kHost) {
      for (std::int64_t i = 0; i < n; ++i)
        SIMCLR_ENFORCE(std::isfinite(per_example->data[i]), ValueError, "upstream gradient has ",
                       std::isnan(per_example->data[i]) ? "NaN" : "Inf", " at index ", i);
    } else {
      detail::check_finite_on_device(
          {{per_example->data, DeviceDType::kFloat32, n, 1, 1, "upstream gradient has", false}},
          stream);
    }
  };
  if (comm == nullptr) {
    validate();
  } else {
    AgreementRecord mine = simclr::detail::empty_record();
    simclr::detail::capture(mine, validate);
    simclr::detail::gather_records(comm->host(), mine);
  }

  // alpha_i (spec section 4), shared by both anchors of pair i.
  DeviceArray alpha(static_cast<std::size_t>(2 * n) * sizeof(float), stream);
  {
    DeviceArray staged;
    const float* upstream = nullptr;
    if (per_example != nullptr) {
      if (per_example->space == MemorySpace::kHost) {
        staged = detail::upload(per_example->data, n, stream);
        upstream = staged.as<float>();
      } else {
        upstream = per_example->data;
      }
    }
    detail::launch_pair_weight(upstream, scalar, s.weight.as<float>(), n,
                               s.reduction == Reduction::kSumOverBatchSize, s.denominator,
                               alpha.as<float>(), stream);
  }

  // Every row's LSE and alpha in U order: two small gathers when distributed.
  DeviceArray lse_gathered, alpha_gathered;
  const float* lse_all = s.row_lse.as<float>();
  const float* alpha_all = alpha.as<float>();
  if (comm != nullptr) {
    std::vector<std::size_t> bytes(s.rank_rows.size());
    for (std::size_t r = 0; r < bytes.size(); ++r)
      bytes[r] = static_cast<std::size_t>(2 * s.rank_rows[r]) * sizeof(float);
    lse_gathered = DeviceArray(static_cast<std::size_t>(total_rows) * sizeof(float), stream);
    alpha_gathered = DeviceArray(static_cast<std::size_t>(total_rows) * sizeof(float), stream);
    comm->set_stream(stream);
    comm->all_gather_v(s.row_lse.data(), s.row_lse.bytes(), lse_gathered.data(), bytes);
    comm->all_gather_v(alpha.data(), alpha.bytes(), alpha_gathered.data(), bytes);
    lse_all = lse_gathered.as<float>();
    alpha_all = alpha_gathered.as<float>();
  }
  if (n == 0) {
    detail::order_after(s.stream, stream);
    return;
  }

  DeviceArray params(3 * sizeof(float), stream);
  detail::launch_backward_params(alpha_all, total_rows, s.inv_temperature, s.dtype,
                                 params.as<float>(), stream);
  DeviceArray grad_u(static_cast<std::size_t>(2 * n * d) * sizeof(float), stream);
  const detail::AnchorLayout layout{s.layout.anchor_begin, n};
  const detail::TilePlan plan = detail::plan_tiles(2 * n, total_rows, s.dtype, s.options);
  detail::engine_backward(blas_->get(stream), s.dtype, s.u.data(), d, total_rows, layout,
                          s.inv_temperature, plan, s.options.symmetric, lse_all, alpha_all,
                          params.as<float>(), grad_u.as<float>(), stream);
  const char* anchors = static_cast<const char*>(s.u.data()) +
                        static_cast<std::size_t>(s.layout.anchor_begin * d) * elem;
  const float* norms = s.squared_norms.as<float>();
  detail::launch_l2_normalize_backward(anchors, norms, grad_u.as<float>(), n, d, s.dtype,
                                       grad_a.data, grad_a.row_stride, stream);
  detail::launch_l2_normalize_backward(anchors + static_cast<std::size_t>(n * d) * elem, norms + n,
                                       grad_u.as<float>() + n * d, n, d, s.dtype, grad_b.data,
                                       grad_b.row_stride, stream);
  detail::order_after(s.stream, stream);
}

}  // namespace simclr::cuda

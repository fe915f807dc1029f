// The simclr_device_* calls of the C API (include/simclr/c_api.h), in target simclr::cuda, over
// simclr::cuda::DeviceSimCLRLoss. Outputs are copied from the library's stream-ordered arrays into
// the caller's device buffers with cudaMemcpyAsync on the call's stream, so nothing synchronises
// the host but what the device loss itself does (and info->objective, which is read back). Also the
// device communicator over the caller's callbacks (simclr_comm_create_device_callbacks).

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "simclr/c_api.h"
#include "simclr/cuda/device_communicator.hpp"
#include "simclr/cuda/device_loss.hpp"
#include "simclr/detail/agreement.hpp"
#include "simclr/detail/c_api_impl.hpp"
#include "simclr/detail/check.hpp"
#include "simclr/detail/cuda_check.hpp"
#include "simclr/detail/device_steps.hpp"
#include "simclr/detail/reduction.hpp"
#include "simclr/detail/step.hpp"

namespace simclr::detail {
namespace {

struct DeviceForward final : simclr_forward_state {
  cuda::DeviceLossOutput output;
  cuda::DeviceCommunicator* comm = nullptr;  // the forward's, for the backward's agreement
};

constexpr std::size_t kCallbackErrorCapacity = 1024;

// Turns a callback's return code into CommError "<backend>: <collective> failed on rank r of p".
void check_callback(int rc, char* error, const std::string& backend, const char* collective,
                    int rank, int size) {
  if (rc == 0) return;
  error[kCallbackErrorCapacity - 1] = '\0';  // a callback that filled the buffer without a NUL
  throw CommError(str_cat(backend, ": ", collective, " failed on rank ", rank, " of ", size,
                          " (callback returned ", rc,
                          "): ", error[0] != '\0' ? error : "no message given"));
}

// The host side of a callback device communicator: the agreement's small records through the
// caller's host_all_gather. all_gather_v pads every part to the largest (the counts are known on
// every rank), as the records are small.
class CallbackHostCommunicator final : public Communicator {
 public:
  CallbackHostCommunicator(const simclr_device_comm_callbacks& callbacks, std::string backend)
      : callbacks_(callbacks), backend_(std::move(backend)) {}
  int rank() const override { return callbacks_.rank; }
  int size() const override { return callbacks_.size; }
  std::string backend() const override { return backend_ + " (host)"; }
  void all_gather(const void* send, std::size_t bytes, void* recv) override {
    char error[kCallbackErrorCapacity] = {0};
    check_callback(
        callbacks_.host_all_gather(callbacks_.user, send, bytes, recv, error, sizeof(error)), error,
        backend(), "host_all_gather", callbacks_.rank, callbacks_.size);
  }
  void all_gather_v(const void* send, std::size_t send_bytes, void* recv,
                    const std::vector<std::size_t>& recv_bytes) override {
    SIMCLR_ENFORCE(recv_bytes.size() == static_cast<std::size_t>(callbacks_.size), CommError,
                   backend(), ": all_gather_v got ", recv_bytes.size(), " counts for ",
                   callbacks_.size, " ranks");
    SIMCLR_ENFORCE(send_bytes == recv_bytes[static_cast<std::size_t>(callbacks_.rank)], CommError,
                   backend(), ": all_gather_v sends ", send_bytes, " bytes but the counts say ",
                   recv_bytes[static_cast<std::size_t>(callbacks_.rank)]);
    const std::size_t width = *std::max_element(recv_bytes.begin(), recv_bytes.end());
    std::vector<unsigned char> mine(width, 0), all(width * recv_bytes.size());
    if (send_bytes > 0) std::memcpy(mine.data(), send, send_bytes);
    all_gather(mine.data(), width, all.data());
    auto* out = static_cast<unsigned char*>(recv);
    for (std::size_t r = 0; r < recv_bytes.size(); ++r) {
      if (recv_bytes[r] > 0) std::memcpy(out, all.data() + r * width, recv_bytes[r]);
      out += recv_bytes[r];
    }
  }
  void barrier() override {
    const unsigned char one = 1;
    std::vector<unsigned char> all(static_cast<std::size_t>(callbacks_.size));
    all_gather(&one, 1, all.data());
  }

 private:
  simclr_device_comm_callbacks callbacks_;
  std::string backend_;
};

// A DeviceCommunicator whose collectives are the caller's C functions (a framework's collectives
// on device memory, e.g. torch.distributed over NCCL).
class CallbackDeviceCommunicator final : public cuda::DeviceCommunicator {
 public:
  CallbackDeviceCommunicator(const simclr_device_comm_callbacks& callbacks, std::string backend)
      : callbacks_(callbacks), backend_(std::move(backend)), host_(callbacks, backend_) {}
  ~CallbackDeviceCommunicator() override {
    if (callbacks_.release != nullptr) callbacks_.release(callbacks_.user);
  }
  CallbackDeviceCommunicator(const CallbackDeviceCommunicator&) = delete;
  CallbackDeviceCommunicator& operator=(const CallbackDeviceCommunicator&) = delete;

  int rank() const override { return callbacks_.rank; }
  int size() const override { return callbacks_.size; }
  std::string backend() const override { return backend_; }
  void all_gather(const void* send, std::size_t bytes, void* recv) override {
    all_gather_v(send, bytes, recv,
                 std::vector<std::size_t>(static_cast<std::size_t>(size()), bytes));
  }
  void all_gather_v(const void* send, std::size_t send_bytes, void* recv,
                    const std::vector<std::size_t>& recv_bytes) override {
    SIMCLR_ENFORCE(recv_bytes.size() == static_cast<std::size_t>(callbacks_.size), CommError,
                   backend_, ": all_gather_v got ", recv_bytes.size(), " counts for ",
                   callbacks_.size, " ranks");
    char error[kCallbackErrorCapacity] = {0};
    check_callback(callbacks_.all_gather_v(callbacks_.user, send, send_bytes, recv,
                                           recv_bytes.data(), stream_, error, sizeof(error)),
                   error, backend_, "all_gather_v", callbacks_.rank, callbacks_.size);
  }
  void barrier() override {
    if (callbacks_.barrier == nullptr) {
      SIMCLR_CHECK_CUDA(cudaStreamSynchronize(stream_));
      host_.barrier();
      return;
    }
    char error[kCallbackErrorCapacity] = {0};
    check_callback(callbacks_.barrier(callbacks_.user, stream_, error, sizeof(error)), error,
                   backend_, "barrier", callbacks_.rank, callbacks_.size);
  }
  void set_stream(cudaStream_t stream) override { stream_ = stream; }
  cudaStream_t stream() const override { return stream_; }
  Communicator& host() override { return host_; }

 private:
  simclr_device_comm_callbacks callbacks_;
  std::string backend_;
  CallbackHostCommunicator host_;
  cudaStream_t stream_ = nullptr;
};

// options->comm as the device communicator it must be (NULL: a local call).
cuda::DeviceCommunicator* device_communicator(const simclr_call_options& o, const char* where) {
  if (o.comm == nullptr) return nullptr;
  auto* comm = dynamic_cast<cuda::DeviceCommunicator*>(o.comm->comm.get());
  if (!o.comm->device || comm == nullptr)
    c_api_fail(
        SIMCLR_UNSUPPORTED,
        str_cat(where, ": options->comm is a host communicator (backend '", o.comm->comm->backend(),
                "'), whose collectives take host buffers; device calls take a device "
                "communicator (simclr_comm_create_device_callbacks), or NULL for a local "
                "call"));
  return comm;
}

cuda::DeviceDType device_dtype(const simclr_dtype& dtype, const char* what, const char* where) {
  const std::int64_t raw = c_enum_value(dtype);
  if (raw == SIMCLR_FLOAT32) return cuda::DeviceDType::kFloat32;
  if (raw == SIMCLR_FLOAT16) return cuda::DeviceDType::kFloat16;
  if (raw == SIMCLR_BFLOAT16) return cuda::DeviceDType::kBFloat16;
  if (raw == SIMCLR_FLOAT64)
    c_api_fail(SIMCLR_UNSUPPORTED, str_cat(where, ": ", what,
                                           " is float64, which only the host calls take; device "
                                           "calls take float32, float16 or bfloat16"));
  c_api_fail(SIMCLR_TYPE_ERROR,
             str_cat(where, ": ", what, " has dtype ", raw, ", not a simclr_dtype"));
}

// A device matrix argument: not NULL, on the current device, a device dtype.
cuda::DeviceDType check_device_matrix(const simclr_matrix* m, const char* what, const char* where) {
  SIMCLR_ENFORCE(m != nullptr, ValueError, where, ": ", what, " is NULL");
  if (m->device < 0)
    c_api_fail(SIMCLR_UNSUPPORTED, str_cat(where, ": ", what, " is host memory (device ", m->device,
                                           "); use simclr_forward for host memory"));
  int current = 0;
  const cudaError_t rc = cudaGetDevice(&current);
  if (rc != cudaSuccess)
    throw DeviceError(str_cat(where, ": cudaGetDevice failed: ", cudaGetErrorName(rc), ": ",
                              cudaGetErrorString(rc)));
  SIMCLR_ENFORCE(m->device == current, ValueError, where, ": ", what, " is on device ", m->device,
                 " but the current device is ", current, "; call cudaSetDevice(", m->device,
                 ") first");
  return device_dtype(m->dtype, what, where);
}

void copy_async(void* dst, const cuda::DeviceArray& src, cudaStream_t stream, const char* what) {
  if (src.bytes() == 0) return;
  const cudaError_t rc =
      cudaMemcpyAsync(dst, src.data(), src.bytes(), cudaMemcpyDeviceToDevice, stream);
  if (rc != cudaSuccess)
    throw DeviceError(str_cat("simclr_device_forward: cudaMemcpyAsync of ", what, " (", src.bytes(),
                              " bytes) failed: ", cudaGetErrorName(rc), ": ",
                              cudaGetErrorString(rc)));
}

// The loss's device twin, made on first use. The caller holds loss.device_mutex.
cuda::DeviceSimCLRLoss& device_loss(simclr_loss& loss) {
  if (!loss.device_loss)
    loss.device_loss = std::make_shared<cuda::DeviceSimCLRLoss>(loss.loss.config());
  return *static_cast<cuda::DeviceSimCLRLoss*>(loss.device_loss.get());
}

// A call's own temperature, dJ/dT and extra negatives are host calls only so far (docs/gpu.md,
// "Not done yet").
void refuse_temperature_options(const simclr_call_options& o, const char* where) {
  if (o.use_temperature != 0 || o.temperature_gradient != 0)
    c_api_fail(SIMCLR_UNSUPPORTED,
               str_cat(where, ": use_temperature and temperature_gradient (a call's own "
                              "temperature, dJ/dT) are not supported by the device calls yet; "
                              "use the host calls"));
  if (o.negatives != nullptr || o.negative_rows != 0)
    c_api_fail(SIMCLR_UNSUPPORTED,
               str_cat(where, ": negatives and negative_rows (extra negatives, a memory bank) are "
                              "not supported by the device calls yet; use the host calls"));
}

// The device options of a simclr_call_options (options may be NULL: the defaults).
cuda::DeviceCallOptions device_call_options(const simclr_call_options* options, const char* where) {
  simclr_call_options defaults;
  simclr_call_options_init(&defaults);
  const simclr_call_options& o = options != nullptr ? *options : defaults;
  refuse_temperature_options(o, where);
  cuda::DeviceCallOptions call;
  call.communicator = device_communicator(o, where);
  call.global_batch_size = c_global_batch(o.global_batch_size, where);
  call.gradient_reduction = c_gradient_reduction(o.gradient_reduction, where);
  call.device.symmetric = o.symmetric != 0;
  call.device.schedule = c_schedule(o.schedule, where);
  if (o.workspace_bytes != 0) call.device.workspace_bytes = o.workspace_bytes;
  return call;
}

void apply_device_call(const simclr_device_call* c, cuda::DeviceCheckMode& check,
                       cuda::DeviceWorkspace& workspace, cublasContext*& blas) {
  if (c == nullptr) return;
  check = c->async != 0 ? cuda::DeviceCheckMode::kAsync : cuda::DeviceCheckMode::kChecked;
  workspace = {c->workspace, c->workspace_size};
  blas = static_cast<cublasContext*>(c->cublas_handle);
}

void fill_info(simclr_forward_info* info, const cuda::DeviceLossOutput& out, std::int64_t rows) {
  info->reduction = c_api_reduction(out.reduction);
  info->ranks = static_cast<std::int32_t>(out.rank_rows.size());
  info->rows = rows;
  info->row_offset = out.row_offset;
  info->global_rows = out.global_rows;
  info->flops = out.flops;
}

// The body of both device forwards: the C-level checks (collective with a communicator), then the
// device loss. outputs: the caller's buffers of the asynchronous forward (NULL: the library's
// arrays, copied out by simclr_device_forward).
std::unique_ptr<DeviceForward> device_forward(
    simclr_loss_t loss, const simclr_matrix* za, const simclr_matrix* zb,
    const simclr_call_options* options, const simclr_device_call* device_call, cudaStream_t stream,
    void* values, const cuda::DeviceOutputBuffers* outputs, const char* where) {
  simclr_call_options defaults;
  simclr_call_options_init(&defaults);
  cuda::DeviceCommunicator* comm =
      device_communicator(options != nullptr ? *options : defaults, where);
  cuda::DeviceCallOptions call;
  cuda::DeviceDType dtype = cuda::DeviceDType::kFloat32;
  check_collectively(comm != nullptr ? &comm->host() : nullptr, options, [&] {
    SIMCLR_ENFORCE(loss != nullptr, ValueError, where, ": loss is NULL");
    dtype = check_device_matrix(za, "za", where);
    const cuda::DeviceDType tb = check_device_matrix(zb, "zb", where);
    SIMCLR_ENFORCE(dtype == tb, TypeError, where, ": za is ", cuda::to_string(dtype), " but zb is ",
                   cuda::to_string(tb), "; both views take the same dtype");
    SIMCLR_ENFORCE(values != nullptr, ValueError, where, ": values is NULL");
    call = device_call_options(options, where);
  });
  apply_device_call(device_call, call.check, call.workspace, call.blas_handle);
  if (device_call != nullptr) call.scratch = {device_call->scratch, device_call->scratch_size};
  if (outputs != nullptr) call.outputs = *outputs;
  const cuda::DeviceMatrixView a(za->data, za->rows, za->cols, dtype, za->row_stride);
  const cuda::DeviceMatrixView b(zb->data, zb->rows, zb->cols, dtype, zb->row_stride);
  std::optional<cuda::DeviceSampleWeight> weight;
  if (device_call != nullptr && device_call->weight != nullptr) {
    weight = cuda::DeviceSampleWeight{device_call->weight, device_call->weight_size,
                                      cuda::MemorySpace::kDevice, {}};
    // A rank above 2 is refused by the shape rules; the struct holds two dimensions.
    const std::int32_t ndim = device_call->weight_ndim;
    if (ndim >= 0)
      weight->shape.assign(device_call->weight_shape, device_call->weight_shape + std::min(ndim, 2));
    if (ndim > 2) weight->shape.resize(static_cast<std::size_t>(ndim), 1);
  }
  auto keep = std::make_unique<DeviceForward>();
  {
    std::lock_guard<std::mutex> lock(loss->device_mutex);
    keep->output = device_loss(*loss).forward(a, b, stream, weight ? &*weight : nullptr, call);
  }
  keep->comm = comm;
  keep->dtype = za->dtype;
  keep->device = za->device;
  keep->rank_rows = keep->output.rank_rows;
  return keep;
}

// The checks of both device backwards (collective when the forward was); returns the forward.
const DeviceForward& device_backward_checks(simclr_loss_t loss, simclr_forward_t saved,
                                            const simclr_matrix* grad_a,
                                            const simclr_matrix* grad_b, const char* where) {
  SIMCLR_ENFORCE(saved != nullptr, ValueError, where,
                 ": saved is NULL; pass the simclr_forward_t of a device forward");
  const auto* forward = dynamic_cast<const DeviceForward*>(saved);
  if (forward == nullptr)
    c_api_fail(SIMCLR_UNSUPPORTED,
               str_cat(where, ": saved comes from a host forward; use simclr_backward"));
  check_collectively(forward->comm != nullptr ? &forward->comm->host() : nullptr, nullptr, [&] {
    SIMCLR_ENFORCE(loss != nullptr, ValueError, where, ": loss is NULL");
    const cuda::DeviceDType ta = check_device_matrix(grad_a, "grad_a", where);
    const cuda::DeviceDType tb = check_device_matrix(grad_b, "grad_b", where);
    SIMCLR_ENFORCE(ta == forward->output.dtype && tb == forward->output.dtype, TypeError, where,
                   ": grad_a is ", cuda::to_string(ta), " and grad_b ", cuda::to_string(tb),
                   " but the forward was ", cuda::to_string(forward->output.dtype));
  });
  return *forward;
}


// ---- the device step calls ----

// The options a device step reads: no communicator (the framework gathers between the steps).
struct DeviceStepOptions {
  cuda::DeviceOptions device;
  std::int64_t global_batch = kNoGlobalBatch;
};

DeviceStepOptions device_step_options(const simclr_call_options* o, const char* where) {
  DeviceStepOptions out;
  if (o == nullptr) return out;
  SIMCLR_ENFORCE(o->comm == nullptr, ValueError, where,
                 ": options->comm must be NULL; the step calls never communicate");
  refuse_temperature_options(*o, where);
  out.global_batch = encode_global_batch(c_global_batch(o->global_batch_size, where));
  out.device.symmetric = o->symmetric != 0;
  if (o->workspace_bytes != 0) out.device.workspace_bytes = o->workspace_bytes;
  return out;
}

cuda::steps::StepContext step_context(const simclr_device_call* c, const DeviceStepOptions& o,
                                      void* stream) {
  cuda::steps::StepContext ctx;
  ctx.stream = static_cast<cudaStream_t>(stream);
  ctx.device = o.device;
  if (c != nullptr) {
    ctx.workspace = {c->workspace, c->workspace_size};
    ctx.blas = static_cast<cublasContext*>(c->cublas_handle);
  }
  return ctx;
}

// call->weight, its Keras shape checked for `pairs` (the library's one set of rules).
cuda::steps::StepWeight step_weight(const simclr_device_call* c, std::int64_t pairs) {
  if (c == nullptr || c->weight == nullptr) return {};
  std::vector<std::int64_t> shape{c->weight_size};
  if (c->weight_ndim >= 0) {
    shape.assign(c->weight_shape, c->weight_shape + std::min(c->weight_ndim, 2));
    if (c->weight_ndim > 2) shape.resize(static_cast<std::size_t>(c->weight_ndim), 1);
  }
  check_weight_shape(shape, c->weight_size, pairs);
  return {c->weight, c->weight_size};
}

Reduction resolved_reduction(const simclr_loss& loss) {
  return loss.loss.reduction() == Reduction::kAuto ? Reduction::kSumOverBatchSize
                                                   : loss.loss.reduction();
}

// The distribution rule of the collective calls, and the denominator of sum_over_batch_size.
double step_denominator(const simclr_loss& loss, const DeviceStepOptions& o, std::int64_t pairs,
                        std::int64_t global_pairs, const char* where) {
  SIMCLR_ENFORCE(global_pairs == pairs || resolved_reduction(loss) != Reduction::kSumOverBatchSize ||
                     o.global_batch != kNoGlobalBatch,
                 ValueError, where, ": reduction '", to_string(loss.loss.reduction()),
                 "' over several ranks needs a global batch size (a count, or infer) to divide by; "
                 "or use reduction 'sum' or 'none'");
  return static_cast<double>(reduction_denominator(o.global_batch, pairs, global_pairs));
}

// A dense device matrix of `rows` x `cols` (-1: any) in `dtype`.
void check_dense(const simclr_matrix* m, const char* what, const char* where,
                 cuda::DeviceDType dtype, std::int64_t rows, std::int64_t cols) {
  const cuda::DeviceDType t = check_device_matrix(m, what, where);
  SIMCLR_ENFORCE(t == dtype, TypeError, where, ": ", what, " is ", cuda::to_string(t),
                 " but the call is ", cuda::to_string(dtype));
  SIMCLR_ENFORCE((rows < 0 || m->rows == rows) && (cols < 0 || m->cols == cols), ValueError, where,
                 ": ", what, " is [", m->rows, ", ", m->cols, "] but must be [",
                 rows < 0 ? m->rows : rows, ", ", cols < 0 ? m->cols : cols, "]");
  SIMCLR_ENFORCE(m->rows <= 1 || m->row_stride == m->cols, ValueError, where, ": ", what,
                 " must be dense (row_stride ", m->row_stride, ", cols ", m->cols, ")");
  SIMCLR_ENFORCE(m->rows == 0 || m->cols == 0 || m->data != nullptr, ValueError, where, ": ", what,
                 " data is NULL");
}

}  // namespace
}  // namespace simclr::detail

extern "C" {

simclr_status simclr_device_forward(simclr_loss_t loss, const simclr_matrix* za,
                                    const simclr_matrix* zb, const simclr_call_options* options,
                                    void* cuda_stream, void* values, void* per_example,
                                    simclr_forward_info* info, simclr_forward_t* saved) {
  return simclr::detail::c_api_guard([&] {
    using namespace simclr;
    const auto stream = static_cast<cudaStream_t>(cuda_stream);
    std::unique_ptr<detail::DeviceForward> keep = detail::device_forward(
        loss, za, zb, options, nullptr, stream, values, nullptr, "simclr_device_forward");
    const cuda::DeviceLossOutput& out = keep->output;
    detail::copy_async(values, out.values, stream, "values");
    if (per_example != nullptr)
      detail::copy_async(per_example, out.per_example, stream, "per_example");
    if (info != nullptr) {
      detail::fill_info(info, out, za->rows);
      info->objective =
          out.objective.bytes() == 0 ? 0.0 : cuda::copy_to_host_f32(out.objective, 1, stream)[0];
    }
    if (saved != nullptr) *saved = keep.release();
  });
}

simclr_status simclr_device_backward(simclr_loss_t loss, simclr_forward_t saved, float upstream,
                                     const simclr_matrix* grad_a, const simclr_matrix* grad_b,
                                     void* cuda_stream) {
  return simclr::detail::c_api_guard([&] {
    using namespace simclr;
    const detail::DeviceForward& forward =
        detail::device_backward_checks(loss, saved, grad_a, grad_b, "simclr_device_backward");
    const cuda::DeviceDType t = forward.output.dtype;
    const cuda::DeviceMutableMatrixView ga(grad_a->data, grad_a->rows, grad_a->cols, t,
                                           grad_a->row_stride);
    const cuda::DeviceMutableMatrixView gb(grad_b->data, grad_b->rows, grad_b->cols, t,
                                           grad_b->row_stride);
    std::lock_guard<std::mutex> lock(loss->device_mutex);
    detail::device_loss(*loss).backward(forward.output, upstream, ga, gb,
                                        static_cast<cudaStream_t>(cuda_stream));
  });
}

void simclr_device_call_init(simclr_device_call* call) {
  if (call == nullptr) return;
  call->async = 0;
  call->workspace = nullptr;
  call->workspace_size = 0;
  call->cublas_handle = nullptr;
  call->weight = nullptr;
  call->weight_size = 0;
  call->weight_ndim = -1;
  call->weight_shape[0] = call->weight_shape[1] = 0;
  call->scratch = nullptr;
  call->scratch_size = 0;
}

namespace simclr::detail {
namespace {
// The options and the problem a sizing query describes (the workspace queries share them).
std::pair<cuda::DeviceCallOptions, cuda::DeviceProblem> device_sizing(
    int64_t rows, int64_t global_rows, int64_t dim, simclr_dtype dtype,
    const simclr_call_options* options, const char* where) {
  cuda::DeviceCallOptions call = device_call_options(options, where);
  const cuda::DeviceProblem problem{rows, global_rows, dim, device_dtype(dtype, "dtype", where),
                                    call.communicator != nullptr};
  return {call, problem};
}
}  // namespace
}  // namespace simclr::detail

simclr_status simclr_device_workspace_size(int64_t rows, int64_t global_rows, int64_t dim,
                                           simclr_dtype dtype, const simclr_call_options* options,
                                           size_t* forward_bytes, size_t* backward_bytes) {
  return simclr::detail::c_api_guard([&] {
    using namespace simclr;
    const auto [call, problem] = detail::device_sizing(rows, global_rows, dim, dtype, options,
                                                       "simclr_device_workspace_size");
    if (forward_bytes != nullptr) *forward_bytes = cuda::forward_workspace_bytes(problem, call);
    if (backward_bytes != nullptr)
      *backward_bytes = cuda::backward_workspace_bytes(problem, call.device);
  });
}

simclr_status simclr_device_forward_saved_size(int64_t rows, int64_t global_rows, int64_t dim,
                                               simclr_dtype dtype,
                                               const simclr_call_options* options,
                                               size_t* saved_bytes) {
  return simclr::detail::c_api_guard([&] {
    using namespace simclr;
    const auto [call, problem] = detail::device_sizing(rows, global_rows, dim, dtype, options,
                                                       "simclr_device_forward_saved_size");
    if (saved_bytes != nullptr) *saved_bytes = cuda::forward_saved_bytes(problem, call);
  });
}

simclr_status simclr_device_forward_async(simclr_loss_t loss, const simclr_matrix* za,
                                          const simclr_matrix* zb,
                                          const simclr_call_options* options,
                                          const simclr_device_call* device_call, void* cuda_stream,
                                          void* values, void* per_example, void* objective,
                                          simclr_forward_info* info, simclr_forward_t* saved) {
  return simclr::detail::c_api_guard([&] {
    using namespace simclr;
    const cuda::DeviceOutputBuffers outputs{values, per_example, static_cast<float*>(objective)};
    std::unique_ptr<detail::DeviceForward> keep = detail::device_forward(
        loss, za, zb, options, device_call, static_cast<cudaStream_t>(cuda_stream), values,
        &outputs, "simclr_device_forward_async");
    if (info != nullptr) {
      detail::fill_info(info, keep->output, za->rows);
      info->objective = std::nan("");
    }
    if (saved != nullptr) *saved = keep.release();
  });
}

simclr_status simclr_device_backward_async(simclr_loss_t loss, simclr_forward_t saved,
                                           float upstream, const float* upstream_per_example,
                                           const simclr_matrix* grad_a, const simclr_matrix* grad_b,
                                           const simclr_device_call* device_call,
                                           void* cuda_stream) {
  return simclr::detail::c_api_guard([&] {
    using namespace simclr;
    const detail::DeviceForward& forward =
        detail::device_backward_checks(loss, saved, grad_a, grad_b, "simclr_device_backward_async");
    const cuda::DeviceDType t = forward.output.dtype;
    cuda::DeviceBackwardOptions back;
    detail::apply_device_call(device_call, back.check, back.workspace, back.blas_handle);
    const cuda::DeviceMutableMatrixView ga(grad_a->data, grad_a->rows, grad_a->cols, t,
                                           grad_a->row_stride);
    const cuda::DeviceMutableMatrixView gb(grad_b->data, grad_b->rows, grad_b->cols, t,
                                           grad_b->row_stride);
    const auto stream = static_cast<cudaStream_t>(cuda_stream);
    std::lock_guard<std::mutex> lock(loss->device_mutex);
    if (upstream_per_example != nullptr) {
      const cuda::FloatVectorView per_example{upstream_per_example, grad_a->rows,
                                              cuda::MemorySpace::kDevice};
      detail::device_loss(*loss).backward(forward.output, per_example, ga, gb, stream, back);
    } else {
      detail::device_loss(*loss).backward(forward.output, upstream, ga, gb, stream, back);
    }
  });
}

void* simclr_device_status(simclr_forward_t saved) {
  const auto* forward = dynamic_cast<const simclr::detail::DeviceForward*>(saved);
  return forward != nullptr ? forward->output.status.data() : nullptr;
}

simclr_status simclr_comm_create_device_callbacks(const simclr_device_comm_callbacks* callbacks,
                                                  const char* backend, simclr_comm_t* out) {
  return simclr::detail::c_api_guard([&] {
    using namespace simclr;
    const char* where = "simclr_comm_create_device_callbacks";
    SIMCLR_ENFORCE(out != nullptr, ValueError, where, ": out is NULL");
    SIMCLR_ENFORCE(callbacks != nullptr, ValueError, where, ": callbacks is NULL");
    SIMCLR_ENFORCE(callbacks->all_gather_v != nullptr && callbacks->host_all_gather != nullptr,
                   ValueError, where, ": all_gather_v and host_all_gather must be set");
    SIMCLR_ENFORCE(callbacks->size >= 1, ValueError, where, ": size is ", callbacks->size,
                   "; a communicator has at least 1 rank");
    SIMCLR_ENFORCE(callbacks->rank >= 0 && callbacks->rank < callbacks->size, ValueError, where,
                   ": rank ", callbacks->rank, " is outside [0, ", callbacks->size, ")");
    auto comm = std::make_unique<simclr_comm>();
    comm->comm = std::make_unique<detail::CallbackDeviceCommunicator>(
        *callbacks, backend != nullptr ? backend : "device callbacks");
    comm->device = true;
    *out = comm.release();
  });
}

simclr_status simclr_device_step_workspace_size(int64_t pairs, int64_t global_pairs, int64_t dim,
                                                simclr_dtype dtype,
                                                const simclr_call_options* options,
                                                size_t* forward_bytes, size_t* alpha_bytes,
                                                size_t* backward_bytes) {
  return simclr::detail::c_api_guard([&] {
    using namespace simclr;
    const char* where = "simclr_device_step_workspace_size";
    const auto o = detail::device_step_options(options, where);
    const cuda::DeviceDType t = detail::device_dtype(dtype, "dtype", where);
    SIMCLR_ENFORCE(pairs >= 0 && dim >= 0 && global_pairs >= pairs, ValueError, where, ": pairs ",
                   pairs, ", global_pairs ", global_pairs, ", dim ", dim,
                   "; need 0 <= pairs <= global_pairs and dim >= 0");
    if (forward_bytes != nullptr)
      *forward_bytes = cuda::steps::forward_step_workspace_bytes(pairs, global_pairs, dim, t, o.device);
    if (alpha_bytes != nullptr) *alpha_bytes = cuda::steps::alpha_step_workspace_bytes(pairs);
    if (backward_bytes != nullptr)
      *backward_bytes =
          cuda::steps::backward_step_workspace_bytes(pairs, global_pairs, dim, t, o.device);
  });
}

simclr_status simclr_device_step_check(const simclr_matrix* za, const simclr_matrix* zb,
                                       const simclr_device_call* call, const float* upstream,
                                       int64_t upstream_count, void* cuda_stream) {
  return simclr::detail::c_api_guard([&] {
    using namespace simclr;
    const char* where = "simclr_device_step_check";
    std::optional<cuda::DeviceMatrixView> a, b;
    if (za != nullptr)
      a.emplace(za->data, za->rows, za->cols, detail::check_device_matrix(za, "za", where),
                za->row_stride);
    if (zb != nullptr)
      b.emplace(zb->data, zb->rows, zb->cols, detail::check_device_matrix(zb, "zb", where),
                zb->row_stride);
    cuda::steps::StepWeight w;
    if (call != nullptr && call->weight != nullptr) w = {call->weight, call->weight_size};
    cuda::steps::step_check_finite(a ? &*a : nullptr, b ? &*b : nullptr, w, upstream,
                                   upstream_count, static_cast<cudaStream_t>(cuda_stream));
  });
}

simclr_status simclr_device_step_normalize(const simclr_matrix* za, const simclr_matrix* zb,
                                           const simclr_matrix* u_local, float* squared_norms,
                                           void* cuda_stream) {
  return simclr::detail::c_api_guard([&] {
    using namespace simclr;
    const char* where = "simclr_device_step_normalize";
    const cuda::DeviceDType t = detail::check_device_matrix(za, "za", where);
    const cuda::DeviceDType tb = detail::check_device_matrix(zb, "zb", where);
    SIMCLR_ENFORCE(t == tb, TypeError, where, ": za is ", cuda::to_string(t), " but zb is ",
                   cuda::to_string(tb), "; both views take the same dtype");
    detail::check_dense(u_local, "u_local", where, t, 2 * za->rows, za->cols);
    SIMCLR_ENFORCE(za->rows == 0 || squared_norms != nullptr, ValueError, where,
                   ": squared_norms is NULL");
    cuda::steps::step_normalize(cuda::DeviceMatrixView(za->data, za->rows, za->cols, t, za->row_stride),
                                cuda::DeviceMatrixView(zb->data, zb->rows, zb->cols, t, zb->row_stride),
                                u_local->data, squared_norms, static_cast<cudaStream_t>(cuda_stream));
  });
}

simclr_status simclr_device_step_forward(simclr_loss_t loss, const simclr_matrix* u_global,
                                         int64_t anchor_begin, int64_t pairs,
                                         const simclr_call_options* options,
                                         const simclr_device_call* call, void* cuda_stream,
                                         float* row_lse, void* per_example, void* values) {
  return simclr::detail::c_api_guard([&] {
    using namespace simclr;
    const char* where = "simclr_device_step_forward";
    SIMCLR_ENFORCE(loss != nullptr, ValueError, where, ": loss is NULL");
    const cuda::DeviceDType t = detail::check_device_matrix(u_global, "u_global", where);
    detail::check_dense(u_global, "u_global", where, t, -1, -1);
    const auto o = detail::device_step_options(options, where);
    SIMCLR_ENFORCE(pairs >= 0 && u_global->rows % 2 == 0, ValueError, where, ": pairs ", pairs,
                   " with u_global of ", u_global->rows, " rows (an even count)");
    const double denominator =
        detail::step_denominator(*loss, o, pairs, u_global->rows / 2, where);
    const cuda::steps::StepWeight w = detail::step_weight(call, pairs);
    SIMCLR_ENFORCE(values != nullptr && (pairs == 0 || row_lse != nullptr), ValueError, where,
                   ": values or row_lse is NULL");
    cuda::steps::step_forward(loss->loss.temperature(), detail::resolved_reduction(*loss),
                              denominator, u_global->data, u_global->rows, u_global->cols, t,
                              anchor_begin, pairs, w, detail::step_context(call, o, cuda_stream),
                              row_lse, per_example, values);
  });
}

simclr_status simclr_device_step_alpha(simclr_loss_t loss, int64_t pairs, int64_t global_pairs,
                                       const simclr_call_options* options,
                                       const simclr_device_call* call, const float* upstream,
                                       int64_t upstream_count, void* cuda_stream, float* alpha) {
  return simclr::detail::c_api_guard([&] {
    using namespace simclr;
    const char* where = "simclr_device_step_alpha";
    SIMCLR_ENFORCE(loss != nullptr, ValueError, where, ": loss is NULL");
    SIMCLR_ENFORCE(pairs >= 0 && global_pairs >= pairs, ValueError, where, ": pairs ", pairs,
                   " and global_pairs ", global_pairs, " must satisfy 0 <= pairs <= global_pairs");
    const auto o = detail::device_step_options(options, where);
    const double denominator = detail::step_denominator(*loss, o, pairs, global_pairs, where);
    const Reduction reduction = detail::resolved_reduction(*loss);
    // The count rules of the host step (values are not read: they stay on the device).
    SIMCLR_ENFORCE(upstream_count == 1 || (reduction == Reduction::kNone && upstream_count == pairs),
                   ValueError, where, ": the upstream gradient has ", upstream_count,
                   " values; it takes 1, or (reduction 'none' only) one per example (", pairs, ")");
    SIMCLR_ENFORCE(upstream != nullptr, ValueError, where, ": upstream is NULL");
    const cuda::steps::StepWeight w = detail::step_weight(call, pairs);
    SIMCLR_ENFORCE(pairs == 0 || alpha != nullptr, ValueError, where, ": alpha is NULL");
    cuda::steps::step_alpha(pairs, w, upstream, upstream_count,
                            reduction == Reduction::kSumOverBatchSize, denominator, 1.0,
                            detail::step_context(call, o, cuda_stream), alpha);
  });
}

simclr_status simclr_device_step_backward(simclr_loss_t loss, const simclr_matrix* u_global,
                                          int64_t anchor_begin, int64_t pairs,
                                          const float* squared_norms, const float* lse_all,
                                          const float* alpha_all,
                                          const simclr_call_options* options,
                                          const simclr_device_call* call, void* cuda_stream,
                                          const simclr_matrix* grad_a,
                                          const simclr_matrix* grad_b) {
  return simclr::detail::c_api_guard([&] {
    using namespace simclr;
    const char* where = "simclr_device_step_backward";
    SIMCLR_ENFORCE(loss != nullptr, ValueError, where, ": loss is NULL");
    const cuda::DeviceDType t = detail::check_device_matrix(u_global, "u_global", where);
    detail::check_dense(u_global, "u_global", where, t, -1, -1);
    const auto o = detail::device_step_options(options, where);
    const std::int64_t d = u_global->cols;
    detail::check_device_matrix(grad_a, "grad_a", where);
    detail::check_device_matrix(grad_b, "grad_b", where);
    SIMCLR_ENFORCE(pairs == 0 || (squared_norms != nullptr && lse_all != nullptr &&
                                  alpha_all != nullptr),
                   ValueError, where, ": squared_norms, lse_all or alpha_all is NULL");
    cuda::steps::step_backward(
        loss->loss.temperature(), u_global->data, u_global->rows, d, t, anchor_begin, pairs,
        squared_norms, lse_all, alpha_all, detail::step_context(call, o, cuda_stream),
        cuda::DeviceMutableMatrixView(grad_a->data, grad_a->rows, grad_a->cols,
                                      detail::device_dtype(grad_a->dtype, "grad_a", where),
                                      grad_a->row_stride),
        cuda::DeviceMutableMatrixView(grad_b->data, grad_b->rows, grad_b->cols,
                                      detail::device_dtype(grad_b->dtype, "grad_b", where),
                                      grad_b->row_stride));
  });
}

}  // extern "C"

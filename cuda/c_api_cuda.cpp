// The simclr_device_* calls of the C API (include/simclr/c_api.h), in target simclr::cuda, over
// simclr::cuda::DeviceSimCLRLoss. Outputs are copied from the library's stream-ordered arrays into
// the caller's device buffers with cudaMemcpyAsync on the call's stream, so nothing synchronises
// the host but what the device loss itself does (and info->objective, which is read back).

#include <cuda_runtime_api.h>

#include <cmath>
#include <memory>
#include <mutex>

#include "simclr/c_api.h"
#include "simclr/cuda/device_loss.hpp"
#include "simclr/detail/c_api_impl.hpp"
#include "simclr/detail/check.hpp"

namespace simclr::detail {
namespace {

struct DeviceForward final : simclr_forward_state {
  cuda::DeviceLossOutput output;
};

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

// The device options of a simclr_call_options (no communicator yet).
cuda::DeviceCallOptions device_call_options(const simclr_call_options* options, const char* where) {
  simclr_call_options defaults;
  simclr_call_options_init(&defaults);
  const simclr_call_options& o = options != nullptr ? *options : defaults;
  if (o.comm != nullptr)
    c_api_fail(SIMCLR_UNSUPPORTED, str_cat(where,
                                           ": a communicator is not supported by the device C API "
                                           "yet; pass options->comm = NULL for a local call"));
  cuda::DeviceCallOptions call;
  if (o.global_batch_size == SIMCLR_GLOBAL_BATCH_INFER) {
    call.global_batch_size = GlobalBatchSize::infer();
  } else if (o.global_batch_size != SIMCLR_GLOBAL_BATCH_NONE) {
    SIMCLR_ENFORCE(o.global_batch_size >= 0, ValueError, where, ": global_batch_size is ",
                   o.global_batch_size,
                   "; pass a count >= 0, SIMCLR_GLOBAL_BATCH_INFER or SIMCLR_GLOBAL_BATCH_NONE");
    call.global_batch_size = GlobalBatchSize::of(o.global_batch_size);
  }
  call.device.symmetric = o.symmetric != 0;
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

}  // namespace
}  // namespace simclr::detail

extern "C" {

simclr_status simclr_device_forward(simclr_loss_t loss, const simclr_matrix* za,
                                    const simclr_matrix* zb, const simclr_call_options* options,
                                    void* cuda_stream, void* values, void* per_example,
                                    simclr_forward_info* info, simclr_forward_t* saved) {
  return simclr::detail::c_api_guard([&] {
    using namespace simclr;
    using detail::str_cat;
    const char* where = "simclr_device_forward";
    SIMCLR_ENFORCE(loss != nullptr, ValueError, where, ": loss is NULL");
    const cuda::DeviceDType ta = detail::check_device_matrix(za, "za", where);
    const cuda::DeviceDType tb = detail::check_device_matrix(zb, "zb", where);
    SIMCLR_ENFORCE(ta == tb, TypeError, where, ": za is ", cuda::to_string(ta), " but zb is ",
                   cuda::to_string(tb), "; both views take the same dtype");
    SIMCLR_ENFORCE(values != nullptr, ValueError, where, ": values is NULL");
    simclr_call_options defaults;
    simclr_call_options_init(&defaults);
    const simclr_call_options& o = options != nullptr ? *options : defaults;
    if (o.comm != nullptr)
      detail::c_api_fail(SIMCLR_UNSUPPORTED,
                         str_cat(where,
                                 ": a communicator is not supported by the device C API "
                                 "yet; pass options->comm = NULL for a local call"));
    cuda::DeviceCallOptions call;
    if (o.global_batch_size == SIMCLR_GLOBAL_BATCH_INFER) {
      call.global_batch_size = GlobalBatchSize::infer();
    } else if (o.global_batch_size != SIMCLR_GLOBAL_BATCH_NONE) {
      SIMCLR_ENFORCE(o.global_batch_size >= 0, ValueError, where, ": global_batch_size is ",
                     o.global_batch_size,
                     "; pass a count >= 0, SIMCLR_GLOBAL_BATCH_INFER or SIMCLR_GLOBAL_BATCH_NONE");
      call.global_batch_size = GlobalBatchSize::of(o.global_batch_size);
    }
    call.device.symmetric = o.symmetric != 0;
    if (o.workspace_bytes != 0) call.device.workspace_bytes = o.workspace_bytes;

    const auto stream = static_cast<cudaStream_t>(cuda_stream);
    const cuda::DeviceMatrixView a(za->data, za->rows, za->cols, ta, za->row_stride);
    const cuda::DeviceMatrixView b(zb->data, zb->rows, zb->cols, tb, zb->row_stride);
    std::unique_ptr<detail::DeviceForward> keep = std::make_unique<detail::DeviceForward>();
    {
      std::lock_guard<std::mutex> lock(loss->device_mutex);
      keep->output = detail::device_loss(*loss).forward(a, b, stream, nullptr, call);
    }
    const cuda::DeviceLossOutput& out = keep->output;
    detail::copy_async(values, out.values, stream, "values");
    if (per_example != nullptr)
      detail::copy_async(per_example, out.per_example, stream, "per_example");
    if (info != nullptr) {
      info->reduction = detail::c_api_reduction(out.reduction);
      info->ranks = static_cast<std::int32_t>(out.rank_rows.size());
      info->rows = za->rows;
      info->row_offset = out.row_offset;
      info->global_rows = out.global_rows;
      info->objective =
          out.objective.bytes() == 0 ? 0.0 : cuda::copy_to_host_f32(out.objective, 1, stream)[0];
      info->flops = out.flops;
    }
    if (saved != nullptr) {
      keep->dtype = za->dtype;
      keep->device = za->device;
      keep->rank_rows = out.rank_rows;
      *saved = keep.release();
    }
  });
}

simclr_status simclr_device_backward(simclr_loss_t loss, simclr_forward_t saved, float upstream,
                                     const simclr_matrix* grad_a, const simclr_matrix* grad_b,
                                     void* cuda_stream) {
  return simclr::detail::c_api_guard([&] {
    using namespace simclr;
    const char* where = "simclr_device_backward";
    SIMCLR_ENFORCE(loss != nullptr, ValueError, where, ": loss is NULL");
    SIMCLR_ENFORCE(saved != nullptr, ValueError, where,
                   ": saved is NULL; pass the simclr_forward_t of a device forward");
    const auto* forward = dynamic_cast<const detail::DeviceForward*>(saved);
    if (forward == nullptr)
      detail::c_api_fail(SIMCLR_UNSUPPORTED,
                         "simclr_device_backward: saved comes from a host forward; use "
                         "simclr_backward");
    const cuda::DeviceDType ta = detail::check_device_matrix(grad_a, "grad_a", where);
    const cuda::DeviceDType tb = detail::check_device_matrix(grad_b, "grad_b", where);
    SIMCLR_ENFORCE(ta == forward->output.dtype && tb == forward->output.dtype, TypeError, where,
                   ": grad_a is ", cuda::to_string(ta), " and grad_b ", cuda::to_string(tb),
                   " but the forward was ", cuda::to_string(forward->output.dtype));
    const cuda::DeviceMutableMatrixView ga(grad_a->data, grad_a->rows, grad_a->cols, ta,
                                           grad_a->row_stride);
    const cuda::DeviceMutableMatrixView gb(grad_b->data, grad_b->rows, grad_b->cols, tb,
                                           grad_b->row_stride);
    std::lock_guard<std::mutex> lock(loss->device_mutex);
    detail::device_loss(*loss).backward(forward->output, upstream, ga, gb,
                                        static_cast<cudaStream_t>(cuda_stream));
  });
}

void simclr_device_call_init(simclr_device_call* call) {
  if (call == nullptr) return;
  call->async = 0;
  call->workspace = nullptr;
  call->workspace_size = 0;
  call->cublas_handle = nullptr;
}

simclr_status simclr_device_workspace_size(int64_t rows, int64_t global_rows, int64_t dim,
                                           simclr_dtype dtype, const simclr_call_options* options,
                                           size_t* forward_bytes, size_t* backward_bytes) {
  return simclr::detail::c_api_guard([&] {
    using namespace simclr;
    const char* where = "simclr_device_workspace_size";
    const cuda::DeviceCallOptions call = detail::device_call_options(options, where);
    const cuda::DeviceProblem problem{rows, global_rows, dim,
                                      detail::device_dtype(dtype, "dtype", where), false};
    if (forward_bytes != nullptr) *forward_bytes = cuda::forward_workspace_bytes(problem, call);
    if (backward_bytes != nullptr)
      *backward_bytes = cuda::backward_workspace_bytes(problem, call.device);
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
    const char* where = "simclr_device_forward_async";
    SIMCLR_ENFORCE(loss != nullptr, ValueError, where, ": loss is NULL");
    const cuda::DeviceDType ta = detail::check_device_matrix(za, "za", where);
    const cuda::DeviceDType tb = detail::check_device_matrix(zb, "zb", where);
    SIMCLR_ENFORCE(ta == tb, TypeError, where, ": za is ", cuda::to_string(ta), " but zb is ",
                   cuda::to_string(tb), "; both views take the same dtype");
    SIMCLR_ENFORCE(values != nullptr, ValueError, where, ": values is NULL");
    cuda::DeviceCallOptions call = detail::device_call_options(options, where);
    detail::apply_device_call(device_call, call.check, call.workspace, call.blas_handle);
    call.outputs = {values, per_example, static_cast<float*>(objective)};
    const auto stream = static_cast<cudaStream_t>(cuda_stream);
    const cuda::DeviceMatrixView a(za->data, za->rows, za->cols, ta, za->row_stride);
    const cuda::DeviceMatrixView b(zb->data, zb->rows, zb->cols, tb, zb->row_stride);
    std::unique_ptr<detail::DeviceForward> keep = std::make_unique<detail::DeviceForward>();
    {
      std::lock_guard<std::mutex> lock(loss->device_mutex);
      keep->output = detail::device_loss(*loss).forward(a, b, stream, nullptr, call);
    }
    if (info != nullptr) {
      detail::fill_info(info, keep->output, za->rows);
      info->objective = std::nan("");
    }
    if (saved != nullptr) {
      keep->dtype = za->dtype;
      keep->device = za->device;
      keep->rank_rows = keep->output.rank_rows;
      *saved = keep.release();
    }
  });
}

simclr_status simclr_device_backward_async(simclr_loss_t loss, simclr_forward_t saved,
                                           float upstream, const float* upstream_per_example,
                                           const simclr_matrix* grad_a, const simclr_matrix* grad_b,
                                           const simclr_device_call* device_call,
                                           void* cuda_stream) {
  return simclr::detail::c_api_guard([&] {
    using namespace simclr;
    const char* where = "simclr_device_backward_async";
    SIMCLR_ENFORCE(loss != nullptr, ValueError, where, ": loss is NULL");
    SIMCLR_ENFORCE(saved != nullptr, ValueError, where,
                   ": saved is NULL; pass the simclr_forward_t of a device forward");
    const auto* forward = dynamic_cast<const detail::DeviceForward*>(saved);
    if (forward == nullptr)
      detail::c_api_fail(SIMCLR_UNSUPPORTED,
                         "simclr_device_backward_async: saved comes from a host forward; use "
                         "simclr_backward");
    const cuda::DeviceDType ta = detail::check_device_matrix(grad_a, "grad_a", where);
    const cuda::DeviceDType tb = detail::check_device_matrix(grad_b, "grad_b", where);
    SIMCLR_ENFORCE(ta == forward->output.dtype && tb == forward->output.dtype, TypeError, where,
                   ": grad_a is ", cuda::to_string(ta), " and grad_b ", cuda::to_string(tb),
                   " but the forward was ", cuda::to_string(forward->output.dtype));
    cuda::DeviceBackwardOptions back;
    detail::apply_device_call(device_call, back.check, back.workspace, back.blas_handle);
    const cuda::DeviceMutableMatrixView ga(grad_a->data, grad_a->rows, grad_a->cols, ta,
                                           grad_a->row_stride);
    const cuda::DeviceMutableMatrixView gb(grad_b->data, grad_b->rows, grad_b->cols, tb,
                                           grad_b->row_stride);
    std::lock_guard<std::mutex> lock(loss->device_mutex);
    if (upstream_per_example != nullptr) {
      const cuda::FloatVectorView per_example{upstream_per_example, grad_a->rows,
                                              cuda::MemorySpace::kDevice};
      detail::device_loss(*loss).backward(forward->output, per_example, ga, gb,
                                          static_cast<cudaStream_t>(cuda_stream), back);
    } else {
      detail::device_loss(*loss).backward(forward->output, upstream, ga, gb,
                                          static_cast<cudaStream_t>(cuda_stream), back);
    }
  });
}

void* simclr_device_status(simclr_forward_t saved) {
  const auto* forward = dynamic_cast<const simclr::detail::DeviceForward*>(saved);
  return forward != nullptr ? forward->output.status.data() : nullptr;
}

}  // extern "C"

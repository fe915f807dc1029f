// The XLA FFI handlers of simclr_loss.jax on the GPU (platform "CUDA"): the CPU handlers' steps
// (python/src/jax_ffi.cpp) over the C API's device step calls (simclr_device_step_*), enqueued on
// XLA's stream, with their workspace from XLA's scratch allocator. XLA gathers between the steps
// (jax.lax.all_gather inside shard_map), exactly as on the CPU, so no handler communicates.
//
// The bodies are templates over the scratch allocator (anything with XLA's
// `std::optional<void*> Allocate(size_t bytes, size_t alignment)`), so that the same code runs
// under XLA (ffi::ScratchAllocator, python/src/jax_ffi_cuda.cpp) and on the CPU emulation of the GPU
// path with a test allocator (tests/gpu/test_jax_ffi_cuda.cpp).
//
// Host synchronisations: none without axis_name. With axis_name, the agreement needs a verdict on
// the host: the record steps read the finiteness of this device's inputs (one synchronisation
// each), the agreement steps read every device's records (one each; the backward's reads this
// device's first row in the same copy), and a forward over more than one device reads its first row
// (one). docs/gpu.md, "JAX on the GPU".

#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "jax_ffi_common.hpp"
#include "simclr/c_api.h"
#include "xla/ffi/api/ffi.h"

namespace simclr_jax_cuda {

namespace ffi = xla::ffi;

using simclr_jax_ffi::dim;
using simclr_jax_ffi::LossHandle;

inline ffi::Error step_error(const char* step) {
  return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                    std::string("simclr_loss.jax (GPU) ") + step + ": " + simclr_last_error());
}

inline ffi::Error cuda_error(const char* step, const char* what, cudaError_t rc) {
  return ffi::Error(ffi::ErrorCode::kInternal, std::string("simclr_loss.jax (GPU) ") + step + ": " +
                                                   what + " failed: " + cudaGetErrorName(rc) +
                                                   ": " + cudaGetErrorString(rc));
}

// The device every buffer of the call is on (XLA runs a handler with the current device set).
inline int current_device() {
  int device = 0;
  (void)cudaGetDevice(&device);
  return device;
}

inline simclr_matrix matrix(void* data, std::int64_t rows, std::int64_t cols) {
  return simclr_jax_ffi::dense_matrix(data, rows, cols, SIMCLR_FLOAT32, current_device());
}

// The GPU handlers take what simclr_loss.jax sends them: float32 (bfloat16 and float16 are cast to
// float32 in Python, as on the CPU); float64 is the CPU handlers' alone.
inline ffi::Error check_f32(const ffi::AnyBuffer& b, const char* what, const char* step) {
  if (b.element_type() == ffi::DataType::F32) return ffi::Error::Success();
  return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                    std::string("simclr_loss.jax (GPU) ") + step + ": " + what +
                        " must be float32 on the GPU (float64 runs on the CPU only; bfloat16 and "
                        "float16 are computed in float32)");
}

// The Keras sample_weight of a call on the device (float32, its Keras shape), or none.
inline simclr_device_call device_call(const ffi::AnyBuffer* weight, bool has_weight) {
  simclr_device_call c;
  simclr_device_call_init(&c);
  if (weight != nullptr && has_weight) {
    const auto dims = weight->dimensions();
    c.weight = static_cast<const float*>(weight->untyped_data());
    c.weight_size = static_cast<std::int64_t>(weight->element_count());
    c.weight_ndim = static_cast<std::int32_t>(dims.size());
    for (std::size_t k = 0; k < dims.size() && k < 2; ++k)
      c.weight_shape[k] = static_cast<std::int64_t>(dims[k]);
  }
  return c;
}

inline simclr_call_options options(std::int64_t global_batch) {
  simclr_call_options o;
  simclr_call_options_init(&o);
  o.global_batch_size = global_batch;
  return o;
}

// Scratch of `bytes` from the allocator into call->workspace (none for 0 bytes).
template <class Scratch>
ffi::Error take_workspace(Scratch& scratch, std::size_t bytes, simclr_device_call& call,
                          const char* step) {
  if (bytes == 0) return ffi::Error::Success();
  const auto p = scratch.Allocate(bytes, 256);
  if (!p.has_value() || *p == nullptr)
    return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                      std::string("simclr_loss.jax (GPU) ") + step + ": XLA's scratch allocator " +
                          "could not give " + std::to_string(bytes) + " bytes");
  call.workspace = *p;
  call.workspace_size = bytes;
  return ffi::Error::Success();
}

// An integer device scalar (anchor_begin), read back: one synchronisation of the stream.
inline ffi::Error read_index(const ffi::AnyBuffer& b, cudaStream_t stream, std::int64_t& out,
                             const char* step) {
  std::int64_t v64 = 0;
  std::int32_t v32 = 0;
  const bool wide = b.element_type() == ffi::DataType::S64;
  cudaError_t rc = cudaMemcpyAsync(wide ? static_cast<void*>(&v64) : static_cast<void*>(&v32),
                                   b.untyped_data(), wide ? 8 : 4, cudaMemcpyDeviceToHost, stream);
  if (rc == cudaSuccess) rc = cudaStreamSynchronize(stream);
  if (rc != cudaSuccess) return cuda_error(step, "reading this device's first row", rc);
  out = wide ? v64 : v32;
  return ffi::Error::Success();
}

// This device's record to the device buffer `record` (512 bytes): rows, cols, the configuration,
// and `check`'s failure (its status and message) as the input error.
inline ffi::Error write_record(simclr_loss_t loss, std::int64_t rows, std::int64_t cols,
                               simclr_call_options o, simclr_status check, ffi::AnyBuffer record,
                               cudaStream_t stream, const char* step) {
  std::string message;
  if (check != SIMCLR_OK) {
    message = simclr_last_error();
    o.input_error = check;
    o.input_error_message = message.c_str();
  }
  std::vector<unsigned char> host(SIMCLR_RECORD_BYTES, 0);
  if (simclr_record_call(loss, rows, cols, SIMCLR_FLOAT32, &o, host.data()) != SIMCLR_OK)
    return step_error(step);
  // Pageable source: cudaMemcpyAsync returns once it has been staged, so `host` may go.
  const cudaError_t rc = cudaMemcpyAsync(record.untyped_data(), host.data(), host.size(),
                                         cudaMemcpyHostToDevice, stream);
  if (rc != cudaSuccess) return cuda_error(step, "copying the record", rc);
  return ffi::Error::Success();
}

// Every device's records (device memory, [P, 512]) and, when `index` is set, this device's first
// row, read in one copy each and one synchronisation; then simclr_step_agree.
inline ffi::Error agree(simclr_loss_t loss, const ffi::AnyBuffer& records,
                        const ffi::AnyBuffer* index, std::int64_t* first_row, cudaStream_t stream,
                        const char* step) {
  if (records.dimensions().size() != 2 || dim(records, 1) != SIMCLR_RECORD_BYTES)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      std::string("simclr_loss.jax (GPU) ") + step +
                          ": the records must be [devices, " +
                          std::to_string(SIMCLR_RECORD_BYTES) + "] bytes");
  std::vector<unsigned char> host(records.size_bytes());
  std::int64_t v64 = 0;
  std::int32_t v32 = 0;
  const bool wide = index != nullptr && index->element_type() == ffi::DataType::S64;
  cudaError_t rc = cudaMemcpyAsync(host.data(), records.untyped_data(), host.size(),
                                   cudaMemcpyDeviceToHost, stream);
  if (rc == cudaSuccess && index != nullptr)
    rc = cudaMemcpyAsync(wide ? static_cast<void*>(&v64) : static_cast<void*>(&v32),
                         index->untyped_data(), wide ? 8 : 4, cudaMemcpyDeviceToHost, stream);
  if (rc == cudaSuccess) rc = cudaStreamSynchronize(stream);
  if (rc != cudaSuccess) return cuda_error(step, "reading the records", rc);
  if (first_row != nullptr) *first_row = wide ? v64 : v32;
  if (simclr_step_agree(loss, host.data(), static_cast<std::int32_t>(dim(records, 0)), nullptr) !=
      SIMCLR_OK)
    return step_error(step);
  return ffi::Error::Success();
}

// ---- the steps, as the CPU handlers' ----

// za, zb [n, d] -> u_local [2n, d], squared_norms [2n]. Values are not checked (no synchronisation):
// NaN or Inf in the input gives NaN results; with axis_name the record step checks them.
inline ffi::Error normalize(cudaStream_t stream, ffi::AnyBuffer za, ffi::AnyBuffer zb,
                            ffi::AnyBuffer u, ffi::AnyBuffer squared_norms) {
  for (const auto* b : {&za, &zb, &u, &squared_norms}) {
    const ffi::Error e = check_f32(*b, "every buffer", "forward");
    if (e.failure()) return e;
  }
  const simclr_matrix a = matrix(za.untyped_data(), dim(za, 0), dim(za, 1));
  const simclr_matrix b = matrix(zb.untyped_data(), dim(zb, 0), dim(zb, 1));
  const simclr_matrix out = matrix(u.untyped_data(), dim(u, 0), dim(u, 1));
  if (simclr_device_step_normalize(&a, &b, &out, static_cast<float*>(squared_norms.untyped_data()),
                                   stream) != SIMCLR_OK)
    return step_error("forward");
  return ffi::Error::Success();
}

// za, zb, weight -> this device's record: the finiteness of its inputs read on the host (one
// synchronisation), carried as the record's input error.
inline ffi::Error record(cudaStream_t stream, ffi::AnyBuffer za, ffi::AnyBuffer zb,
                         ffi::AnyBuffer weight, ffi::AnyBuffer out, double temperature,
                         std::int64_t reduction, std::int64_t global_batch,
                         std::int64_t has_weight, std::int64_t gradient_reduction) {
  if (out.element_count() != SIMCLR_RECORD_BYTES)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "simclr_loss.jax (GPU) forward: the record must have " +
                          std::to_string(SIMCLR_RECORD_BYTES) + " bytes");
  for (const auto* b : {&za, &zb, &weight}) {
    const ffi::Error e = check_f32(*b, "za, zb and the weight", "forward");
    if (e.failure()) return e;
  }
  LossHandle loss(temperature, reduction);
  if (!loss.ok()) return step_error("forward");
  const simclr_matrix a = matrix(za.untyped_data(), dim(za, 0), dim(za, 1));
  const simclr_matrix b = matrix(zb.untyped_data(), dim(zb, 0), dim(zb, 1));
  const simclr_device_call call = device_call(&weight, has_weight != 0);
  const simclr_status check = simclr_device_step_check(&a, &b, &call, nullptr, 0, stream);
  simclr_call_options o = options(global_batch);
  o.gradient_reduction = static_cast<std::int32_t>(gradient_reduction);
  return write_record(loss.get(), a.rows, a.cols, o, check, out, stream, "forward");
}

// records, za, zb, weight -> the agreement, then normalize, and the weight passed through.
inline ffi::Error agree_normalize(cudaStream_t stream, ffi::AnyBuffer records, ffi::AnyBuffer za,
                                  ffi::AnyBuffer zb, ffi::AnyBuffer weight, ffi::AnyBuffer u,
                                  ffi::AnyBuffer squared_norms, ffi::AnyBuffer agreed_weight,
                                  double temperature, std::int64_t reduction) {
  if (agreed_weight.size_bytes() != weight.size_bytes())
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "simclr_loss.jax (GPU) forward: the agreed weight must have the weight's "
                      "shape");
  {
    LossHandle loss(temperature, reduction);
    if (!loss.ok()) return step_error("forward");
    const ffi::Error e = agree(loss.get(), records, nullptr, nullptr, stream, "forward");
    if (e.failure()) return e;
  }
  if (agreed_weight.untyped_data() != weight.untyped_data() && weight.size_bytes() != 0) {
    const cudaError_t rc = cudaMemcpyAsync(agreed_weight.untyped_data(), weight.untyped_data(),
                                           weight.size_bytes(), cudaMemcpyDeviceToDevice, stream);
    if (rc != cudaSuccess) return cuda_error("forward", "copying the weight", rc);
  }
  return normalize(stream, za, zb, u, squared_norms);
}

// u_global [2G, d], anchor_begin, weight -> row_lse [2n], per_example [n], values.
template <class Scratch>
ffi::Error forward(cudaStream_t stream, Scratch& scratch, ffi::AnyBuffer u_global,
                   ffi::AnyBuffer anchor_begin, ffi::AnyBuffer weight, ffi::AnyBuffer row_lse,
                   ffi::AnyBuffer per_example, ffi::AnyBuffer values, double temperature,
                   std::int64_t reduction, std::int64_t global_batch, std::int64_t has_weight) {
  for (const auto* b : {&u_global, &weight, &row_lse, &per_example, &values}) {
    const ffi::Error e = check_f32(*b, "every float buffer", "forward");
    if (e.failure()) return e;
  }
  LossHandle loss(temperature, reduction);
  if (!loss.ok()) return step_error("forward");
  const std::int64_t n = dim(per_example, 0), rows = dim(u_global, 0), d = dim(u_global, 1);
  // One device holds every row: its anchors start at 0, and the offset is not read.
  std::int64_t begin = 0;
  if (rows != 2 * n) {
    const ffi::Error e = read_index(anchor_begin, stream, begin, "forward");
    if (e.failure()) return e;
  }
  const simclr_call_options o = options(global_batch);
  simclr_device_call call = device_call(&weight, has_weight != 0);
  std::size_t bytes = 0;
  if (simclr_device_step_workspace_size(n, rows / 2, d, SIMCLR_FLOAT32, &o, &bytes, nullptr,
                                        nullptr) != SIMCLR_OK)
    return step_error("forward");
  ffi::Error e = take_workspace(scratch, bytes, call, "forward");
  if (e.failure()) return e;
  const simclr_matrix u = matrix(u_global.untyped_data(), rows, d);
  if (simclr_device_step_forward(loss.get(), &u, begin, n, &o, &call, stream,
                                 static_cast<float*>(row_lse.untyped_data()),
                                 per_example.untyped_data(), values.untyped_data()) != SIMCLR_OK)
    return step_error("forward");
  return ffi::Error::Success();
}

// upstream [1] or [n], weight -> alpha [2n] (the upstream stays on the device).
template <class Scratch>
ffi::Error alpha(cudaStream_t stream, Scratch& scratch, ffi::AnyBuffer upstream,
                 ffi::AnyBuffer weight, ffi::AnyBuffer alpha_out, double temperature,
                 std::int64_t reduction, std::int64_t global_batch, std::int64_t has_weight,
                 std::int64_t global_pairs) {
  for (const auto* b : {&upstream, &weight, &alpha_out}) {
    const ffi::Error e = check_f32(*b, "every float buffer", "backward");
    if (e.failure()) return e;
  }
  LossHandle loss(temperature, reduction);
  if (!loss.ok()) return step_error("backward");
  const std::int64_t n = dim(alpha_out, 0) / 2;
  const simclr_call_options o = options(global_batch);
  simclr_device_call call = device_call(&weight, has_weight != 0);
  std::size_t bytes = 0;
  if (simclr_device_step_workspace_size(n, global_pairs, 0, SIMCLR_FLOAT32, &o, nullptr, &bytes,
                                        nullptr) != SIMCLR_OK)
    return step_error("backward");
  ffi::Error e = take_workspace(scratch, bytes, call, "backward");
  if (e.failure()) return e;
  if (simclr_device_step_alpha(loss.get(), n, global_pairs, &o, &call,
                               static_cast<const float*>(upstream.untyped_data()),
                               static_cast<std::int64_t>(upstream.element_count()), stream,
                               static_cast<float*>(alpha_out.untyped_data())) != SIMCLR_OK)
    return step_error("backward");
  return ffi::Error::Success();
}

// As alpha, and this device's record of the backward: the finiteness of its upstream read on the
// host (one synchronisation) and carried as the record's input error.
template <class Scratch>
ffi::Error alpha_record(cudaStream_t stream, Scratch& scratch, ffi::AnyBuffer upstream,
                        ffi::AnyBuffer weight, ffi::AnyBuffer alpha_out, ffi::AnyBuffer record_out,
                        double temperature, std::int64_t reduction, std::int64_t global_batch,
                        std::int64_t has_weight, std::int64_t global_pairs,
                        std::int64_t gradient_reduction) {
  if (record_out.element_count() != SIMCLR_RECORD_BYTES)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "simclr_loss.jax (GPU) backward: the record must have " +
                          std::to_string(SIMCLR_RECORD_BYTES) + " bytes");
  const ffi::Error e = alpha(stream, scratch, upstream, weight, alpha_out, temperature, reduction,
                             global_batch, has_weight, global_pairs);
  if (e.failure()) return e;
  LossHandle loss(temperature, reduction);
  if (!loss.ok()) return step_error("backward");
  const simclr_status check =
      simclr_device_step_check(nullptr, nullptr, nullptr,
                               static_cast<const float*>(upstream.untyped_data()),
                               static_cast<std::int64_t>(upstream.element_count()), stream);
  simclr_call_options o = options(global_batch);
  o.gradient_reduction = static_cast<std::int32_t>(gradient_reduction);
  // The backward's record describes no rows' values: the rows were agreed in the forward.
  return write_record(loss.get(), dim(alpha_out, 0) / 2, 0, o, check, record_out, stream,
                      "backward");
}

template <class Scratch>
ffi::Error backward_at(cudaStream_t stream, Scratch& scratch, simclr_loss_t loss,
                       ffi::AnyBuffer u_global, std::int64_t begin, ffi::AnyBuffer squared_norms,
                       ffi::AnyBuffer lse_all, ffi::AnyBuffer alpha_all, ffi::AnyBuffer grad_a,
                       ffi::AnyBuffer grad_b) {
  for (const auto* b : {&u_global, &squared_norms, &lse_all, &alpha_all, &grad_a, &grad_b}) {
    const ffi::Error e = check_f32(*b, "every float buffer", "backward");
    if (e.failure()) return e;
  }
  const std::int64_t n = dim(grad_a, 0), rows = dim(u_global, 0), d = dim(u_global, 1);
  const simclr_call_options o = options(SIMCLR_GLOBAL_BATCH_NONE);
  simclr_device_call call = device_call(nullptr, false);
  std::size_t bytes = 0;
  if (simclr_device_step_workspace_size(n, rows / 2, d, SIMCLR_FLOAT32, &o, nullptr, nullptr,
                                        &bytes) != SIMCLR_OK)
    return step_error("backward");
  ffi::Error e = take_workspace(scratch, bytes, call, "backward");
  if (e.failure()) return e;
  const simclr_matrix u = matrix(u_global.untyped_data(), rows, d);
  const simclr_matrix ga = matrix(grad_a.untyped_data(), n, dim(grad_a, 1));
  const simclr_matrix gb = matrix(grad_b.untyped_data(), n, dim(grad_b, 1));
  if (simclr_device_step_backward(loss, &u, begin, n,
                                  static_cast<const float*>(squared_norms.untyped_data()),
                                  static_cast<const float*>(lse_all.untyped_data()),
                                  static_cast<const float*>(alpha_all.untyped_data()), &o, &call,
                                  stream, &ga, &gb) != SIMCLR_OK)
    return step_error("backward");
  return ffi::Error::Success();
}

// u_global, anchor_begin, squared_norms [2n], lse_all [2G], alpha_all [2G] -> grad_a, grad_b.
template <class Scratch>
ffi::Error backward(cudaStream_t stream, Scratch& scratch, ffi::AnyBuffer u_global,
                    ffi::AnyBuffer anchor_begin, ffi::AnyBuffer squared_norms,
                    ffi::AnyBuffer lse_all, ffi::AnyBuffer alpha_all, ffi::AnyBuffer grad_a,
                    ffi::AnyBuffer grad_b, double temperature, std::int64_t reduction) {
  LossHandle loss(temperature, reduction);
  if (!loss.ok()) return step_error("backward");
  std::int64_t begin = 0;
  if (dim(u_global, 0) != 2 * dim(grad_a, 0)) {
    const ffi::Error e = read_index(anchor_begin, stream, begin, "backward");
    if (e.failure()) return e;
  }
  return backward_at(stream, scratch, loss.get(), u_global, begin, squared_norms, lse_all,
                     alpha_all, grad_a, grad_b);
}

// records, then as backward: the first row is read with the records, in one synchronisation.
template <class Scratch>
ffi::Error agree_backward(cudaStream_t stream, Scratch& scratch, ffi::AnyBuffer records,
                          ffi::AnyBuffer u_global, ffi::AnyBuffer anchor_begin,
                          ffi::AnyBuffer squared_norms, ffi::AnyBuffer lse_all,
                          ffi::AnyBuffer alpha_all, ffi::AnyBuffer grad_a, ffi::AnyBuffer grad_b,
                          double temperature, std::int64_t reduction) {
  LossHandle loss(temperature, reduction);
  if (!loss.ok()) return step_error("backward");
  std::int64_t begin = 0;
  const ffi::Error e = agree(loss.get(), records, &anchor_begin, &begin, stream, "backward");
  if (e.failure()) return e;
  return backward_at(stream, scratch, loss.get(), u_global, begin, squared_norms, lse_all,
                     alpha_all, grad_a, grad_b);
}

}  // namespace simclr_jax_cuda

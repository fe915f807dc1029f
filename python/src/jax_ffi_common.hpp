// What the two sets of simclr_loss.jax handlers share (the CPU ones in jax_ffi.cpp, the CUDA ones in
// jax_ffi_cuda.hpp / jax_ffi_cuda.cpp): each custom call's operands, results and attributes, in the
// order both bind them after their own contexts (none on the CPU; XLA's stream and scratch
// allocator on the GPU), the target names simclr_loss.jax registers them under, a call's loss
// handle and a buffer's dimensions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>

#include "simclr/c_api.h"
#include "xla/ffi/api/ffi.h"

namespace simclr_jax_ffi {

namespace ffi = xla::ffi;

// A loss handle for one call (cheap: a configuration), released at scope exit.
class LossHandle {
 public:
  LossHandle(double temperature, std::int64_t reduction) {
    status_ =
        simclr_loss_create(temperature, static_cast<simclr_reduction>(reduction), nullptr, &loss_);
  }
  ~LossHandle() { simclr_loss_destroy(loss_); }
  LossHandle(const LossHandle&) = delete;
  LossHandle& operator=(const LossHandle&) = delete;
  bool ok() const { return status_ == SIMCLR_OK; }
  simclr_loss_t get() const { return loss_; }

 private:
  simclr_loss_t loss_ = nullptr;
  simclr_status status_ = SIMCLR_OK;
};

// Dimension k of a buffer (1 past its rank).
inline std::int64_t dim(const ffi::AnyBuffer& b, std::size_t k) {
  const auto dims = b.dimensions();
  return k < dims.size() ? static_cast<std::int64_t>(dims[k]) : 1;
}

// A binding is built only by the calls that extend it (its constructors are private), so these take
// it by reference and return what those calls return. args<N>: N more buffer operands.
// A [rows, cols] dense row-major view of a buffer (XLA's default layout for these calls) on a device
// (-1: the host).
inline simclr_matrix dense_matrix(void* data, std::int64_t rows, std::int64_t cols,
                                  simclr_dtype dtype, int device) {
  simclr_matrix m;
  m.data = data;
  m.rows = rows;
  m.cols = cols;
  m.row_stride = cols;
  m.dtype = dtype;
  m.device = device;
  return m;
}

template <int N, typename B>
auto args(B&& b) {
  static_assert(N >= 1, "at least one operand");
  if constexpr (N == 1) {
    return std::move(b).template Arg<ffi::AnyBuffer>();
  } else {
    return args<N - 1>(std::move(b).template Arg<ffi::AnyBuffer>());
  }
}

// rets<N>: N more buffer results.
template <int N, typename B>
auto rets(B&& b) {
  static_assert(N >= 1, "at least one result");
  if constexpr (N == 1) {
    return std::move(b).template Ret<ffi::AnyBuffer>();
  } else {
    return rets<N - 1>(std::move(b).template Ret<ffi::AnyBuffer>());
  }
}

// temperature and reduction: every call's loss configuration.
template <typename B>
auto config(B&& b) {
  return std::move(b).template Attr<double>("temperature").template Attr<std::int64_t>("reduction");
}

// Extra negatives (a memory bank): u_global's last negative_rows rows are their unit rows, after
// the batch's 2G (simclr_call_options.negative_rows); lse_all and alpha_all stay [2G]. The records
// carry their scope (negatives_scope: SIMCLR_NEGATIVES_LOCAL or _GLOBAL); record and agree_normalize
// take this device's own rows, negatives [K, d] (K may be 0), which the record checks and
// agree_normalize normalises, so that bad negatives on one device fail every device alike.

// record(za, zb, weight, negatives) -> record
template <typename B>
auto record(B&& b) {
  return config(rets<1>(args<4>(std::move(b))))
      .template Attr<std::int64_t>("global_batch")
      .template Attr<std::int64_t>("has_weight")
      .template Attr<std::int64_t>("gradient_reduction")
      .template Attr<std::int64_t>("negatives_scope");
}

// agree_normalize(records, za, zb, weight, negatives)
//   -> (u_local, squared_norms, agreed weight, the negatives' unit rows)
template <typename B>
auto agree_normalize(B&& b) {
  return config(rets<4>(args<5>(std::move(b))));
}

// normalize(za, zb) -> (u_local, squared_norms)
template <typename B>
auto normalize(B&& b) {
  return rets<2>(args<2>(std::move(b)));
}

// normalize_rows(negatives [K, d]) -> their unit rows [K, d] (simclr_step_normalize_rows)
template <typename B>
auto normalize_rows(B&& b) {
  return rets<1>(args<1>(std::move(b)));
}

// forward(u_global, offset, weight) -> (row_lse, per_example, values)
template <typename B>
auto forward(B&& b) {
  return config(rets<3>(args<3>(std::move(b))))
      .template Attr<std::int64_t>("global_batch")
      .template Attr<std::int64_t>("has_weight")
      .template Attr<std::int64_t>("threads")
      .template Attr<std::int64_t>("negative_rows");
}

// alpha(upstream, weight) -> alpha
template <typename B>
auto alpha(B&& b) {
  return config(rets<1>(args<2>(std::move(b))))
      .template Attr<std::int64_t>("global_batch")
      .template Attr<std::int64_t>("has_weight")
      .template Attr<std::int64_t>("global_pairs");
}

// alpha_record(upstream, weight) -> (alpha, record)
template <typename B>
auto alpha_record(B&& b) {
  return config(rets<2>(args<2>(std::move(b))))
      .template Attr<std::int64_t>("global_batch")
      .template Attr<std::int64_t>("has_weight")
      .template Attr<std::int64_t>("global_pairs")
      .template Attr<std::int64_t>("gradient_reduction");
}

// backward(u_global, offset, squared_norms, lse_all, alpha_all) -> (grad_a, grad_b)
template <typename B>
auto backward(B&& b) {
  return config(rets<2>(args<5>(std::move(b))))
      .template Attr<std::int64_t>("threads")
      .template Attr<std::int64_t>("negative_rows");
}

// agree_backward(records, u_global, offset, squared_norms, lse_all, alpha_all) -> (grad_a, grad_b)
template <typename B>
auto agree_backward(B&& b) {
  return config(rets<2>(args<6>(std::move(b))))
      .template Attr<std::int64_t>("threads")
      .template Attr<std::int64_t>("negative_rows");
}

// A traced temperature (CPU only so far): the temperature is an operand, not an attribute.
// forward_t(u_global, offset, weight, temperature) -> (row_lse, per_example, values)
template <typename B>
auto forward_t(B&& b) {
  return rets<3>(args<4>(std::move(b)))
      .template Attr<std::int64_t>("reduction")
      .template Attr<std::int64_t>("global_batch")
      .template Attr<std::int64_t>("has_weight")
      .template Attr<std::int64_t>("threads")
      .template Attr<std::int64_t>("negative_rows");
}

// backward_t(u_global, offset, squared_norms, lse_all, alpha_all, temperature)
//   -> (grad_a, grad_b, grad_temperature)
template <typename B>
auto backward_t(B&& b) {
  return rets<3>(args<6>(std::move(b)))
      .template Attr<std::int64_t>("reduction")
      .template Attr<std::int64_t>("threads")
      .template Attr<std::int64_t>("negative_rows");
}

// agree_backward_t(records, u_global, offset, squared_norms, lse_all, alpha_all, temperature)
//   -> (grad_a, grad_b, grad_temperature)
template <typename B>
auto agree_backward_t(B&& b) {
  return rets<3>(args<7>(std::move(b)))
      .template Attr<std::int64_t>("reduction")
      .template Attr<std::int64_t>("threads")
      .template Attr<std::int64_t>("negative_rows");
}

}  // namespace simclr_jax_ffi

// X(target name, handler symbol stem): the handlers' dictionary of both extensions.
#define SIMCLR_JAX_FFI_TARGETS(X)                       \
  X("simclr_record", Record)                           \
  X("simclr_agree_normalize", AgreeNormalize)          \
  X("simclr_normalize", Normalize)                     \
  X("simclr_normalize_rows", NormalizeRows)            \
  X("simclr_forward", Forward)                         \
  X("simclr_alpha", Alpha)                             \
  X("simclr_backward", Backward)                       \
  X("simclr_alpha_record", AlphaRecord)                \
  X("simclr_agree_backward", AgreeBackward)

// The CPU handlers' own targets (a traced temperature; the CUDA handlers have none yet).
#define SIMCLR_JAX_FFI_CPU_TARGETS(X)                   \
  X("simclr_forward_t", ForwardT)                      \
  X("simclr_backward_t", BackwardT)                    \
  X("simclr_agree_backward_t", AgreeBackwardT)

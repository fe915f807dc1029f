// simclr_loss._jax_ffi: XLA FFI handlers (CPU) over the C API's step calls (include/simclr/c_api.h,
// "step calls for frameworks whose collectives are graph ops"), exposed to Python as capsules that
// simclr_loss.jax registers with jax.ffi.register_ffi_target. Between the steps, XLA itself gathers the
// agreement records, the rows and the per-row scalars (jax.lax.all_gather inside shard_map), so no
// handler communicates.
// Built only when jax's FFI headers are found at configure time (python/CMakeLists.txt).

#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "simclr/c_api.h"
#include "jax_ffi_common.hpp"
#include "xla/ffi/api/ffi.h"

namespace nb = nanobind;
namespace ffi = xla::ffi;
using namespace nb::literals;

namespace {

using simclr_jax_ffi::dim;
using simclr_jax_ffi::LossHandle;

// Errors a handler returns: the C API's message, prefixed with the step that failed.
ffi::Error step_error(const char* step) {
  return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                    std::string("simclr_loss.jax ") + step + ": " + simclr_last_error());
}

// The float dtype of a buffer, or 0 for anything else (Python sends only float32 and float64).
simclr_dtype dtype_of(ffi::DataType t) {
  if (t == ffi::DataType::F32) return SIMCLR_FLOAT32;
  if (t == ffi::DataType::F64) return SIMCLR_FLOAT64;
  return static_cast<simclr_dtype>(0);
}

// A [rows, cols] dense row-major view of a buffer (XLA's default layout for these calls).
simclr_matrix matrix(void* data, std::int64_t rows, std::int64_t cols, simclr_dtype dtype) {
  return simclr_jax_ffi::dense_matrix(data, rows, cols, dtype, -1);
}

// The Keras sample_weight a buffer holds (any float dtype), converted to float64 values.
struct Weight {
  std::vector<double> values;
  simclr_weight view{};
  Weight(const ffi::AnyBuffer& w) {
    const auto dims = w.dimensions();
    const std::size_t count = w.element_count();
    values.resize(count);
    if (w.element_type() == ffi::DataType::F64) {
      const double* p = static_cast<const double*>(w.untyped_data());
      values.assign(p, p + count);
    } else {
      const float* p = static_cast<const float*>(w.untyped_data());
      for (std::size_t i = 0; i < count; ++i) values[i] = static_cast<double>(p[i]);
    }
    view.values = values.data();
    view.ndim = static_cast<std::int32_t>(dims.size());
    for (std::size_t k = 0; k < dims.size() && k < 2; ++k)
      view.shape[k] = static_cast<std::int64_t>(dims[k]);
  }
};

// negative_rows: how many extra negatives' unit rows end u_global (0: none).
simclr_call_options options(std::int64_t global_batch, std::int64_t threads,
                            std::int64_t negative_rows = 0) {
  simclr_call_options o;
  simclr_call_options_init(&o);
  o.global_batch_size = global_batch;
  o.threads = static_cast<std::int32_t>(threads);
  o.negative_rows = negative_rows;
  return o;
}

// Extra negatives x [K, d] -> their unit rows in out [K, d] (simclr_step_normalize_rows); nothing
// to do for K = 0.
simclr_status normalize_negatives(const ffi::AnyBuffer& x, void* out) {
  if (dim(x, 0) == 0) return SIMCLR_OK;
  const simclr_dtype t = dtype_of(x.element_type());
  const simclr_matrix in = matrix(x.untyped_data(), dim(x, 0), dim(x, 1), t);
  const simclr_matrix o = matrix(out, dim(x, 0), dim(x, 1), t);
  return simclr_step_normalize_rows(&in, &o);
}

std::int64_t scalar_index(const ffi::AnyBuffer& b) {
  if (b.element_type() == ffi::DataType::S64)
    return *static_cast<const std::int64_t*>(b.untyped_data());
  return *static_cast<const std::int32_t*>(b.untyped_data());
}

// za, zb, weight, negatives -> this device's agreement record (uint8 [SIMCLR_RECORD_BYTES]): its
// rows, dim, dtype, configuration and options (the negatives' scope among them), and the first
// error of its inputs (the extra negatives' first, then the views'). Bad input is not an error here:
// it travels in the record, so that every device raises it in agree_normalize_impl.
ffi::Error record_impl(ffi::AnyBuffer za, ffi::AnyBuffer zb, ffi::AnyBuffer weight,
                       ffi::AnyBuffer negatives, ffi::Result<ffi::AnyBuffer> record,
                       double temperature, std::int64_t reduction, std::int64_t global_batch,
                       std::int64_t has_weight, std::int64_t gradient_reduction,
                       std::int64_t negatives_scope) {
  if (record->element_count() != SIMCLR_RECORD_BYTES)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "simclr_loss.jax forward: the record must have " +
                          std::to_string(SIMCLR_RECORD_BYTES) + " bytes");
  LossHandle loss(temperature, reduction);
  if (!loss.ok()) return step_error("forward");
  simclr_matrix a = matrix(za.untyped_data(), dim(za, 0), dim(za, 1), dtype_of(za.element_type()));
  simclr_matrix b = matrix(zb.untyped_data(), dim(zb, 0), dim(zb, 1), dtype_of(zb.element_type()));
  const Weight w(weight);
  simclr_call_options o = options(global_batch, 0);
  o.gradient_reduction = static_cast<std::int32_t>(gradient_reduction);
  o.negatives_scope = static_cast<std::int32_t>(negatives_scope);
  // This device's extra negatives go with the record, whose checks are the library's (their dtype
  // and width against the views', NaN/Inf): an error travels to every device.
  simclr_matrix k;
  if (dim(negatives, 0) > 0) {
    k = matrix(negatives.untyped_data(), dim(negatives, 0), dim(negatives, 1),
               dtype_of(negatives.element_type()));
    o.negatives = &k;
  }
  if (simclr_step_record(loss.get(), &a, &b, has_weight != 0 ? &w.view : nullptr, &o,
                         record->untyped_data()) != SIMCLR_OK)
    return step_error("forward");
  return ffi::Error::Success();
}

// za, zb [n, d] -> u_local [2n, d], squared_norms [2n].
ffi::Error normalize_impl(ffi::AnyBuffer za, ffi::AnyBuffer zb, ffi::Result<ffi::AnyBuffer> u,
                          ffi::Result<ffi::AnyBuffer> squared_norms) {
  const simclr_dtype t = dtype_of(za.element_type());
  simclr_matrix a = matrix(za.untyped_data(), dim(za, 0), dim(za, 1), t);
  simclr_matrix b = matrix(zb.untyped_data(), dim(zb, 0), dim(zb, 1), dtype_of(zb.element_type()));
  simclr_matrix out = matrix(u->untyped_data(), dim(*u, 0), dim(*u, 1), t);
  if (simclr_step_normalize(&a, &b, &out, squared_norms->untyped_data()) != SIMCLR_OK)
    return step_error("forward");
  return ffi::Error::Success();
}

// negatives [K, d] -> their unit rows [K, d].
ffi::Error normalize_rows_impl(ffi::AnyBuffer negatives, ffi::Result<ffi::AnyBuffer> out) {
  if (normalize_negatives(negatives, out->untyped_data()) != SIMCLR_OK)
    return step_error("forward");
  return ffi::Error::Success();
}

// records [P, SIMCLR_RECORD_BYTES] (every device's record, device by device), za, zb, weight,
// negatives -> as normalize_impl, the weight again and the negatives' unit rows, after the
// agreement: an input error of any device, or devices that disagree, fail here on every device
// alike, before the rows' all-gather that a failed device would never reach. The weight comes out
// of the agreement so that the steps that read it (forward, alpha) depend on it: XLA runs nothing
// that can fail on one device alone before it.
ffi::Error agree_normalize_impl(ffi::AnyBuffer records, ffi::AnyBuffer za, ffi::AnyBuffer zb,
                                ffi::AnyBuffer weight, ffi::AnyBuffer negatives,
                                ffi::Result<ffi::AnyBuffer> u,
                                ffi::Result<ffi::AnyBuffer> squared_norms,
                                ffi::Result<ffi::AnyBuffer> agreed_weight,
                                ffi::Result<ffi::AnyBuffer> negatives_unit, double temperature,
                                std::int64_t reduction) {
  if (records.dimensions().size() != 2 || dim(records, 1) != SIMCLR_RECORD_BYTES)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "simclr_loss.jax forward: the records must be [devices, " +
                          std::to_string(SIMCLR_RECORD_BYTES) + "] bytes");
  if (agreed_weight->size_bytes() != weight.size_bytes())
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "simclr_loss.jax forward: the agreed weight must have the weight's shape");
  LossHandle loss(temperature, reduction);
  if (!loss.ok()) return step_error("forward");
  if (simclr_step_agree(loss.get(), records.untyped_data(),
                        static_cast<std::int32_t>(dim(records, 0)), nullptr) != SIMCLR_OK)
    return step_error("forward");
  if (agreed_weight->untyped_data() != weight.untyped_data() && weight.size_bytes() != 0)
    std::memcpy(agreed_weight->untyped_data(), weight.untyped_data(), weight.size_bytes());
  if (normalize_negatives(negatives, negatives_unit->untyped_data()) != SIMCLR_OK)
    return step_error("forward");
  return normalize_impl(za, zb, u, squared_norms);
}

// u_global [2G + K, d] (the batch's rows, then K = negative_rows extra negatives' unit rows),
// anchor_begin (int scalar), weight -> row_lse [2n], per_example [n], values.
ffi::Error forward_impl(ffi::AnyBuffer u_global, ffi::AnyBuffer anchor_begin, ffi::AnyBuffer weight,
                        ffi::Result<ffi::AnyBuffer> row_lse,
                        ffi::Result<ffi::AnyBuffer> per_example, ffi::Result<ffi::AnyBuffer> values,
                        double temperature, std::int64_t reduction, std::int64_t global_batch,
                        std::int64_t has_weight, std::int64_t threads,
                        std::int64_t negative_rows) {
  LossHandle loss(temperature, reduction);
  if (!loss.ok()) return step_error("forward");
  const simclr_dtype t = dtype_of(u_global.element_type());
  simclr_matrix u = matrix(u_global.untyped_data(), dim(u_global, 0), dim(u_global, 1), t);
  const Weight w(weight);
  const simclr_call_options o = options(global_batch, threads, negative_rows);
  if (simclr_step_forward(loss.get(), &u, scalar_index(anchor_begin), dim(*per_example, 0),
                          has_weight != 0 ? &w.view : nullptr, &o, row_lse->untyped_data(),
                          per_example->untyped_data(), values->untyped_data()) != SIMCLR_OK)
    return step_error("forward");
  return ffi::Error::Success();
}

// upstream [1] or [n], weight -> alpha [2n].
ffi::Error alpha_impl(ffi::AnyBuffer upstream, ffi::AnyBuffer weight,
                      ffi::Result<ffi::AnyBuffer> alpha, double temperature, std::int64_t reduction,
                      std::int64_t global_batch, std::int64_t has_weight,
                      std::int64_t global_pairs) {
  LossHandle loss(temperature, reduction);
  if (!loss.ok()) return step_error("backward");
  const Weight w(weight);
  const simclr_call_options o = options(global_batch, 0);
  if (simclr_step_alpha(
          loss.get(), dtype_of(upstream.element_type()), dim(*alpha, 0) / 2, global_pairs,
          has_weight != 0 ? &w.view : nullptr, &o, upstream.untyped_data(),
          static_cast<std::int64_t>(upstream.element_count()), alpha->untyped_data()) != SIMCLR_OK)
    return step_error("backward");
  return ffi::Error::Success();
}

// upstream, weight -> alpha [2n] as alpha_impl, and this device's record of the backward (uint8
// [SIMCLR_RECORD_BYTES]): a failure of the alpha step (NaN or Inf in this device's upstream
// gradient) is not an error here but the record's input error, so that every device raises it in
// agree_backward_impl, after the gather of the per-row scalars that every device then joins.
ffi::Error alpha_record_impl(ffi::AnyBuffer upstream, ffi::AnyBuffer weight,
                             ffi::Result<ffi::AnyBuffer> alpha, ffi::Result<ffi::AnyBuffer> record,
                             double temperature, std::int64_t reduction, std::int64_t global_batch,
                             std::int64_t has_weight, std::int64_t global_pairs,
                             std::int64_t gradient_reduction) {
  if (record->element_count() != SIMCLR_RECORD_BYTES)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "simclr_loss.jax backward: the record must have " +
                          std::to_string(SIMCLR_RECORD_BYTES) + " bytes");
  LossHandle loss(temperature, reduction);
  if (!loss.ok()) return step_error("backward");
  const Weight w(weight);
  simclr_call_options o = options(global_batch, 0);
  o.gradient_reduction = static_cast<std::int32_t>(gradient_reduction);
  const simclr_dtype t = dtype_of(upstream.element_type());
  const std::int64_t pairs = dim(*alpha, 0) / 2;
  std::string message;
  const simclr_status status =
      simclr_step_alpha(loss.get(), t, pairs, global_pairs, has_weight != 0 ? &w.view : nullptr, &o,
                        upstream.untyped_data(),
                        static_cast<std::int64_t>(upstream.element_count()), alpha->untyped_data());
  if (status != SIMCLR_OK) {
    message = simclr_last_error();
    o.input_error = status;
    o.input_error_message = message.c_str();
    std::memset(alpha->untyped_data(), 0, alpha->size_bytes());
  }
  // The backward's record describes no rows' values (its views have no columns): the rows were
  // agreed on in the forward; what this one carries is the alpha step's error, if any.
  const simclr_matrix rows = matrix(nullptr, pairs, 0, t);
  if (simclr_step_record(loss.get(), &rows, &rows, nullptr, &o, record->untyped_data()) !=
      SIMCLR_OK)
    return step_error("backward");
  return ffi::Error::Success();
}

// u_global [2G + K, d], anchor_begin, squared_norms [2n], lse_all [2G], alpha_all [2G] -> grad_a,
// grad_b (the extra negatives get none).
ffi::Error backward_impl(ffi::AnyBuffer u_global, ffi::AnyBuffer anchor_begin,
                         ffi::AnyBuffer squared_norms, ffi::AnyBuffer lse_all,
                         ffi::AnyBuffer alpha_all, ffi::Result<ffi::AnyBuffer> grad_a,
                         ffi::Result<ffi::AnyBuffer> grad_b, double temperature,
                         std::int64_t reduction, std::int64_t threads,
                         std::int64_t negative_rows) {
  LossHandle loss(temperature, reduction);
  if (!loss.ok()) return step_error("backward");
  const simclr_dtype t = dtype_of(u_global.element_type());
  simclr_matrix u = matrix(u_global.untyped_data(), dim(u_global, 0), dim(u_global, 1), t);
  simclr_matrix ga = matrix(grad_a->untyped_data(), dim(*grad_a, 0), dim(*grad_a, 1), t);
  simclr_matrix gb = matrix(grad_b->untyped_data(), dim(*grad_b, 0), dim(*grad_b, 1), t);
  const simclr_call_options o = options(SIMCLR_GLOBAL_BATCH_NONE, threads, negative_rows);
  if (simclr_step_backward(loss.get(), &u, scalar_index(anchor_begin), ga.rows,
                           squared_norms.untyped_data(), lse_all.untyped_data(),
                           alpha_all.untyped_data(), &o, &ga, &gb) != SIMCLR_OK)
    return step_error("backward");
  return ffi::Error::Success();
}

// records [P, SIMCLR_RECORD_BYTES] (every device's backward record), then as backward_impl: an
// alpha step that failed on any device fails here on every device alike.
ffi::Error agree_backward_impl(ffi::AnyBuffer records, ffi::AnyBuffer u_global,
                               ffi::AnyBuffer anchor_begin, ffi::AnyBuffer squared_norms,
                               ffi::AnyBuffer lse_all, ffi::AnyBuffer alpha_all,
                               ffi::Result<ffi::AnyBuffer> grad_a,
                               ffi::Result<ffi::AnyBuffer> grad_b, double temperature,
                               std::int64_t reduction, std::int64_t threads,
                               std::int64_t negative_rows) {
  if (records.dimensions().size() != 2 || dim(records, 1) != SIMCLR_RECORD_BYTES)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "simclr_loss.jax backward: the records must be [devices, " +
                          std::to_string(SIMCLR_RECORD_BYTES) + "] bytes");
  {
    LossHandle loss(temperature, reduction);
    if (!loss.ok()) return step_error("backward");
    if (simclr_step_agree(loss.get(), records.untyped_data(),
                          static_cast<std::int32_t>(dim(records, 0)), nullptr) != SIMCLR_OK)
      return step_error("backward");
  }
  return backward_impl(u_global, anchor_begin, squared_norms, lse_all, alpha_all, grad_a, grad_b,
                       temperature, reduction, threads, negative_rows);
}

// ---- a traced temperature (a learnable one): the temperature is an operand, not an attribute ----

// The call's own temperature from a scalar buffer (float32 or float64), in the options.
void use_temperature(simclr_call_options& o, const ffi::AnyBuffer& t) {
  o.use_temperature = 1;
  o.temperature = t.element_type() == ffi::DataType::F64
                      ? *static_cast<const double*>(t.untyped_data())
                      : static_cast<double>(*static_cast<const float*>(t.untyped_data()));
}

// As forward_impl, at the temperature of the operand `temperature` (the loss's attribute is a
// placeholder).
ffi::Error forward_t_impl(ffi::AnyBuffer u_global, ffi::AnyBuffer anchor_begin,
                          ffi::AnyBuffer weight, ffi::AnyBuffer temperature,
                          ffi::Result<ffi::AnyBuffer> row_lse,
                          ffi::Result<ffi::AnyBuffer> per_example,
                          ffi::Result<ffi::AnyBuffer> values, std::int64_t reduction,
                          std::int64_t global_batch, std::int64_t has_weight,
                          std::int64_t threads, std::int64_t negative_rows) {
  LossHandle loss(1.0, reduction);
  if (!loss.ok()) return step_error("forward");
  const simclr_dtype t = dtype_of(u_global.element_type());
  simclr_matrix u = matrix(u_global.untyped_data(), dim(u_global, 0), dim(u_global, 1), t);
  const Weight w(weight);
  simclr_call_options o = options(global_batch, threads, negative_rows);
  use_temperature(o, temperature);
  if (simclr_step_forward(loss.get(), &u, scalar_index(anchor_begin), dim(*per_example, 0),
                          has_weight != 0 ? &w.view : nullptr, &o, row_lse->untyped_data(),
                          per_example->untyped_data(), values->untyped_data()) != SIMCLR_OK)
    return step_error("forward");
  return ffi::Error::Success();
}

// As backward_impl at the operand's temperature, and this device's share of dJ/dT (a scalar of
// u_global's dtype; simclr_step_backward_temperature).
ffi::Error backward_t_impl(ffi::AnyBuffer u_global, ffi::AnyBuffer anchor_begin,
                           ffi::AnyBuffer squared_norms, ffi::AnyBuffer lse_all,
                           ffi::AnyBuffer alpha_all, ffi::AnyBuffer temperature,
                           ffi::Result<ffi::AnyBuffer> grad_a, ffi::Result<ffi::AnyBuffer> grad_b,
                           ffi::Result<ffi::AnyBuffer> grad_t, std::int64_t reduction,
                           std::int64_t threads, std::int64_t negative_rows) {
  LossHandle loss(1.0, reduction);
  if (!loss.ok()) return step_error("backward");
  const simclr_dtype t = dtype_of(u_global.element_type());
  simclr_matrix u = matrix(u_global.untyped_data(), dim(u_global, 0), dim(u_global, 1), t);
  simclr_matrix ga = matrix(grad_a->untyped_data(), dim(*grad_a, 0), dim(*grad_a, 1), t);
  simclr_matrix gb = matrix(grad_b->untyped_data(), dim(*grad_b, 0), dim(*grad_b, 1), t);
  simclr_call_options o = options(SIMCLR_GLOBAL_BATCH_NONE, threads, negative_rows);
  use_temperature(o, temperature);
  if (simclr_step_backward_temperature(loss.get(), &u, scalar_index(anchor_begin), ga.rows,
                                       squared_norms.untyped_data(), lse_all.untyped_data(),
                                       alpha_all.untyped_data(), &o, &ga, &gb,
                                       grad_t->untyped_data()) != SIMCLR_OK)
    return step_error("backward");
  return ffi::Error::Success();
}

// records, then as backward_t_impl (agree_backward_impl with a traced temperature).
ffi::Error agree_backward_t_impl(ffi::AnyBuffer records, ffi::AnyBuffer u_global,
                                 ffi::AnyBuffer anchor_begin, ffi::AnyBuffer squared_norms,
                                 ffi::AnyBuffer lse_all, ffi::AnyBuffer alpha_all,
                                 ffi::AnyBuffer temperature, ffi::Result<ffi::AnyBuffer> grad_a,
                                 ffi::Result<ffi::AnyBuffer> grad_b,
                                 ffi::Result<ffi::AnyBuffer> grad_t, std::int64_t reduction,
                                 std::int64_t threads, std::int64_t negative_rows) {
  if (records.dimensions().size() != 2 || dim(records, 1) != SIMCLR_RECORD_BYTES)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "simclr_loss.jax backward: the records must be [devices, " +
                          std::to_string(SIMCLR_RECORD_BYTES) + "] bytes");
  {
    LossHandle loss(1.0, reduction);
    if (!loss.ok()) return step_error("backward");
    if (simclr_step_agree(loss.get(), records.untyped_data(),
                          static_cast<std::int32_t>(dim(records, 0)), nullptr) != SIMCLR_OK)
      return step_error("backward");
  }
  return backward_t_impl(u_global, anchor_begin, squared_norms, lse_all, alpha_all, temperature,
                         grad_a, grad_b, grad_t, reduction, threads, negative_rows);
}

}  // namespace

namespace sig = simclr_jax_ffi;

XLA_FFI_DEFINE_HANDLER_SYMBOL(SimclrRecord, record_impl, sig::record(ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SimclrAgreeNormalize, agree_normalize_impl, sig::agree_normalize(ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SimclrAlphaRecord, alpha_record_impl, sig::alpha_record(ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SimclrAgreeBackward, agree_backward_impl, sig::agree_backward(ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SimclrNormalize, normalize_impl, sig::normalize(ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SimclrNormalizeRows, normalize_rows_impl, sig::normalize_rows(ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SimclrForward, forward_impl, sig::forward(ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SimclrAlpha, alpha_impl, sig::alpha(ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SimclrBackward, backward_impl, sig::backward(ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SimclrForwardT, forward_t_impl, sig::forward_t(ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SimclrBackwardT, backward_t_impl, sig::backward_t(ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SimclrAgreeBackwardT, agree_backward_t_impl, sig::agree_backward_t(ffi::Ffi::Bind()));

NB_MODULE(_jax_ffi, m) {
  m.doc() = "XLA FFI handlers (CPU) of simclr_loss.jax; use simclr_loss.jax, which registers them.";
  m.def("handlers", [] {
    nb::dict d;
#define SIMCLR_ADD_TARGET(name, stem) d[name] = nb::capsule(reinterpret_cast<void*>(Simclr##stem));
    SIMCLR_JAX_FFI_TARGETS(SIMCLR_ADD_TARGET)
    SIMCLR_JAX_FFI_CPU_TARGETS(SIMCLR_ADD_TARGET)
#undef SIMCLR_ADD_TARGET
    return d;
  });
  m.attr("RECORD_BYTES") = SIMCLR_RECORD_BYTES;

}

// The C API's step calls (include/simclr/c_api.h, "step calls for frameworks whose collectives are
// graph ops"): the forward and backward of simclr_forward / simclr_backward cut at their
// collectives, over the same layer-1 functions (engine.hpp) and the same reduction code
// (detail/reduction.hpp), for callers that gather between the steps themselves.

#include <algorithm>
#include <cstring>
#include <functional>
#include <optional>

#include "simclr/c_api.h"
#include "simclr/detail/agreement.hpp"
#include "simclr/detail/c_api_impl.hpp"
#include "simclr/detail/check.hpp"
#include "simclr/detail/reduction.hpp"
#include "simclr/detail/step.hpp"
#include "simclr/detail/engine.hpp"

namespace simclr::detail {
namespace {

// A record's dtype code (a simclr_dtype) by name, for the cross-rank messages.
std::string record_dtype_name(std::int32_t t) {
  return std::string(t == SIMCLR_FLOAT32    ? "float32"
                     : t == SIMCLR_FLOAT64  ? "float64"
                     : t == SIMCLR_FLOAT16  ? "float16"
                     : t == SIMCLR_BFLOAT16 ? "bfloat16"
                                            : "unknown");
}


bool is_host_dtype(const simclr_dtype& dtype) {
  const std::int64_t raw = c_enum_value(dtype);
  return raw == SIMCLR_FLOAT32 || raw == SIMCLR_FLOAT64;
}

const char* host_dtype_name(const simclr_dtype& dtype) {
  return c_enum_value(dtype) == SIMCLR_FLOAT32 ? "float32" : "float64";
}

// A host matrix of `rows` x `cols` (-1: any) in `dtype`, readable or writable.
void check_matrix(const simclr_matrix* m, const char* what, const char* where, simclr_dtype dtype,
                  std::int64_t rows, std::int64_t cols) {
  SIMCLR_ENFORCE(m != nullptr, ValueError, where, ": ", what, " is NULL");
  if (m->device != -1)
    c_api_fail(SIMCLR_UNSUPPORTED, str_cat(where, ": ", what, " is on CUDA device ", m->device,
                                           "; the step calls take host memory (device -1)"));
  if (!is_host_dtype(m->dtype))
    c_api_fail(SIMCLR_TYPE_ERROR,
               str_cat(where, ": ", what, " has dtype ", c_enum_value(m->dtype),
                       "; the step calls take SIMCLR_FLOAT32 or SIMCLR_FLOAT64"));
  SIMCLR_ENFORCE(m->dtype == dtype, TypeError, where, ": ", what, " is ", host_dtype_name(m->dtype),
                 " but the call is ", host_dtype_name(dtype));
  SIMCLR_ENFORCE(m->rows >= 0 && m->cols >= 0, ValueError, where, ": ", what,
                 " has a negative dimension: [", m->rows, ", ", m->cols, "]");
  SIMCLR_ENFORCE((rows < 0 || m->rows == rows) && (cols < 0 || m->cols == cols), ValueError, where,
                 ": ", what, " is [", m->rows, ", ", m->cols, "] but must be [",
                 rows < 0 ? m->rows : rows, ", ", cols < 0 ? m->cols : cols, "]");
  SIMCLR_ENFORCE(m->rows == 0 || m->cols == 0 || m->data != nullptr, ValueError, where, ": ",
                 what, " data is NULL with ", m->rows, " rows");
  SIMCLR_ENFORCE(m->rows <= 1 || m->row_stride >= m->cols, ValueError, where, ": ", what,
                 " row_stride ", m->row_stride, " is smaller than its ", m->cols, " columns");
}

void check_buffer(const void* p, std::int64_t count, const char* what, const char* where) {
  SIMCLR_ENFORCE(count == 0 || p != nullptr, ValueError, where, ": ", what, " is NULL");
}

template <class T>
ConstMatrixView<T> const_view(const simclr_matrix& m) {
  return ConstMatrixView<T>(static_cast<const T*>(m.data), m.rows, m.cols, m.row_stride);
}

// The engine reads u_global in place when its rows are contiguous (what every framework hands
// over); a strided one is packed into `packed` once.
template <class T>
ConstMatrixView<T> engine_rows(const simclr_matrix& m, RowMatrix<T>& packed) {
  const ConstMatrixView<T> v = const_view<T>(m);
  if (m.rows <= 1 || m.row_stride == m.cols) return ConstMatrixView<T>(v.data, m.rows, m.cols);
  packed.resize(m.rows, m.cols);
  for (std::int64_t i = 0; i < m.rows; ++i)
    std::copy(v.row(i), v.row(i) + m.cols, packed.row(i).data());
  return ConstMatrixView<T>(packed);
}

std::optional<SampleWeight> to_sample_weight(const simclr_weight* w, std::int64_t rows,
                                             const char* where) {
  if (w == nullptr) return std::nullopt;
  SIMCLR_ENFORCE(w->ndim >= 0, ValueError, where, ": weight has ndim ", w->ndim);
  check_weight_rank(static_cast<std::size_t>(w->ndim), rows);
  std::vector<std::int64_t> shape(w->shape, w->shape + w->ndim);
  std::int64_t count = 1;
  for (const auto s : shape) {
    SIMCLR_ENFORCE(s >= 0, ValueError, where, ": weight has a negative dimension ", s);
    count *= s;
  }
  SIMCLR_ENFORCE(count == 0 || w->values != nullptr, ValueError, where,
                 ": weight values are NULL with ", count, " elements");
  return SampleWeight(std::move(shape), count == 0
                                            ? std::vector<double>{}
                                            : std::vector<double>(w->values, w->values + count));
}

// The options a step reads: no communicator (the caller's framework communicates).
struct StepOptions {
  EngineOptions engine;
  std::int64_t global_batch = kNoGlobalBatch;
  std::optional<double> temperature;  // the call's (use_temperature), or none: the loss's
  std::int64_t negatives = 0;         // negative_rows: the last rows of u_global
  // The temperature the step runs at.
  double temperature_of(const SimCLRLoss& loss) const {
    return temperature ? *temperature : loss.temperature();
  }
};

StepOptions to_step_options(const simclr_call_options* o, const char* where) {
  StepOptions out;
  if (o == nullptr) return out;
  SIMCLR_ENFORCE(o->comm == nullptr, ValueError, where,
                 ": options->comm must be NULL; the step calls never communicate (gather between "
                 "them, or use simclr_forward with the communicator)");
  SIMCLR_ENFORCE(o->threads >= 0, ValueError, where, ": threads is ", o->threads,
                 "; pass 0 (the process default) or a count");
  out.global_batch = encode_global_batch(c_global_batch(o->global_batch_size, where));
  out.engine.threads = o->threads;
  out.engine.symmetric = o->symmetric != 0;
  if (o->memory_budget_bytes != 0) out.engine.memory_budget_bytes = o->memory_budget_bytes;
  if (o->use_temperature != 0) {
    validate_temperature(o->temperature);
    out.temperature = o->temperature;
  }
  SIMCLR_ENFORCE(o->negative_rows >= 0, ValueError, where, ": negative_rows is ", o->negative_rows,
                 "; pass 0 (no extra negatives) or their count");
  out.negatives = o->negative_rows;
  return out;
}

Reduction resolved(const SimCLRLoss& loss) {
  return loss.reduction() == Reduction::kAuto ? Reduction::kSumOverBatchSize : loss.reduction();
}

// The distribution rule of the collective calls: with several ranks, sum_over_batch_size needs a
// global batch size.
void check_distribution_rule(const SimCLRLoss& loss, bool several_ranks, std::int64_t global_batch,
                             const char* where) {
  SIMCLR_ENFORCE(!several_ranks || resolved(loss) != Reduction::kSumOverBatchSize ||
                     global_batch != kNoGlobalBatch,
                 ValueError, where, ": reduction '", to_string(loss.reduction()),
                 "' over several ranks needs a global batch size (a count, or infer) to divide by; "
                 "or use reduction 'sum' or 'none'");
}

// The layout of this rank's anchors in u_global (the batch's 2G rows, then `negatives` extra
// negatives), checked.
RowLayout step_layout(const simclr_matrix& u_global, std::int64_t anchor_begin, std::int64_t pairs,
                      std::int64_t negatives, const char* where) {
  SIMCLR_ENFORCE(pairs >= 0, ValueError, where, ": pairs is ", pairs);
  const std::int64_t batch = u_global.rows - negatives;
  SIMCLR_ENFORCE(batch >= 0, ValueError, where, ": negative_rows is ", negatives,
                 " but u_global has only ", u_global.rows, " rows");
  SIMCLR_ENFORCE(batch % 2 == 0, ValueError, where, ": u_global has ", batch,
                 " rows before its extra negatives; it stacks two views per pair, so an even count");
  SIMCLR_ENFORCE(anchor_begin >= 0 && anchor_begin + 2 * pairs <= batch, ValueError, where,
                 ": this rank's anchors [", anchor_begin, ", ", anchor_begin + 2 * pairs,
                 ") are outside u_global's ", batch, " rows of the batch");
  return RowLayout{u_global.rows, anchor_begin, pairs};
}

// What the step calls on u_global check first: the loss, u_global, this rank's anchors, the options.
struct StepCall {
  RowLayout layout;
  StepOptions options;
};

StepCall step_call(simclr_loss_t loss, const simclr_matrix* u_global, std::int64_t anchor_begin,
                   std::int64_t pairs, const simclr_call_options* options, const char* where) {
  SIMCLR_ENFORCE(loss != nullptr, ValueError, where, ": loss is NULL");
  SIMCLR_ENFORCE(u_global != nullptr, ValueError, where, ": u_global is NULL");
  check_matrix(u_global, "u_global", where, u_global->dtype, -1, -1);
  StepOptions o = to_step_options(options, where);
  return StepCall{step_layout(*u_global, anchor_begin, pairs, o.negatives, where), o};
}

template <class T>
void step_normalize(const simclr_matrix& za, const simclr_matrix& zb, const simclr_matrix& u,
                    void* squared_norms) {
  const ConstMatrixView<T> a = const_view<T>(za), b = const_view<T>(zb);
  check_finite(a, "za");
  check_finite(b, "zb");
  T* out = static_cast<T*>(u.data);
  T* norms = static_cast<T*>(squared_norms);
  l2_normalize_rows(a, out, u.row_stride, norms);
  l2_normalize_rows(b, out + za.rows * u.row_stride, u.row_stride, norms + za.rows);
}

template <class T>
void step_normalize_rows(const simclr_matrix& x, const simclr_matrix& out) {
  const ConstMatrixView<T> v = const_view<T>(x);
  check_finite(v, "negatives");
  std::vector<T> norms(static_cast<std::size_t>(std::max<std::int64_t>(x.rows, 1)));
  l2_normalize_rows(v, static_cast<T*>(out.data), out.row_stride, norms.data());
}

template <class T>
void step_forward(const SimCLRLoss& loss, const simclr_matrix& u_global, const RowLayout& layout,
                  const std::vector<double>& weight, const StepOptions& options, void* row_lse,
                  void* per_example, void* values) {
  RowMatrix<T> packed;
  const ConstMatrixView<T> u = engine_rows<T>(u_global, packed);
  // Nothing outlives the call, so a kept logits block would never be read: always stream.
  EngineOptions engine = options.engine;
  engine.memory_budget_bytes = 0;
  const EngineForward<T> f =
      engine_forward(u, layout, static_cast<T>(1.0 / options.temperature_of(loss)), engine);
  const ReducedLoss<T> r = reduce_examples(
      f.row_lse.data(), f.row_positive.data(), layout.pairs, weight, resolved(loss),
      reduction_denominator(options.global_batch, layout.pairs,
                            (layout.total_rows - options.negatives) / 2));
  std::copy(f.row_lse.begin(), f.row_lse.end(), static_cast<T*>(row_lse));
  if (per_example != nullptr)
    std::copy(r.per_example.begin(), r.per_example.end(), static_cast<T*>(per_example));
  std::copy(r.values.begin(), r.values.end(), static_cast<T*>(values));
}

template <class T>
void step_backward(const SimCLRLoss& loss, const simclr_matrix& u_global, const RowLayout& layout,
                   const void* squared_norms, const void* lse_all, const void* alpha_all,
                   const StepOptions& options, const simclr_matrix& grad_a,
                   const simclr_matrix& grad_b, void* grad_temperature) {
  RowMatrix<T> packed;
  const ConstMatrixView<T> u = engine_rows<T>(u_global, packed);
  const EngineForward<T> nothing_kept;  // no logits block: the engine recomputes the logits
  EngineBackwardArgs<T> args;
  args.u = u;
  args.layout = layout;
  const double temperature = options.temperature_of(loss);
  args.inv_temperature = static_cast<T>(1.0 / temperature);
  args.lse_all = static_cast<const T*>(lse_all);
  args.alpha_all = static_cast<const T*>(alpha_all);
  // The extra negatives are candidates only: weight 0, and an LSE at the largest logit (1 / T), as
  // SimCLRLoss::backward gives them; the caller's lse_all and alpha_all cover the batch's rows.
  std::vector<T> lse_u, alpha_u;
  if (options.negatives > 0) {
    const std::int64_t batch = layout.total_rows - options.negatives;
    lse_u.assign(args.lse_all, args.lse_all + batch);
    alpha_u.assign(args.alpha_all, args.alpha_all + batch);
    lse_u.resize(static_cast<std::size_t>(layout.total_rows), args.inv_temperature);
    alpha_u.resize(static_cast<std::size_t>(layout.total_rows), T(0));
    args.lse_all = lse_u.data();
    args.alpha_all = alpha_u.data();
  }
  args.saved = &nothing_kept;
  args.negatives = options.negatives;
  double negatives_dot = 0;
  if (grad_temperature != nullptr && options.negatives > 0) args.negatives_dot = &negatives_dot;
  args.options = options.engine;
  RowMatrix<T> grad_u;
  engine_backward(args, grad_u);
  const std::int64_t n = layout.pairs, d = u.cols;
  const T* anchors = u.data + layout.anchor_begin * d;
  const T* norms = static_cast<const T*>(squared_norms);
  if (grad_temperature != nullptr)
    *static_cast<T*>(grad_temperature) = static_cast<T>(
        temperature_gradient_share(anchors, grad_u.data(), 2 * n, d, temperature, negatives_dot));
  l2_normalize_backward(anchors, d, norms, grad_u.data(), d, n, d, static_cast<T*>(grad_a.data),
                        grad_a.row_stride);
  l2_normalize_backward(anchors + n * d, d, norms + n, grad_u.data() + n * d, d, n, d,
                        static_cast<T*>(grad_b.data), grad_b.row_stride);
}

}  // namespace
}  // namespace simclr::detail

using simclr::ValueError;
using simclr::detail::c_api_guard;

extern "C" {

simclr_status simclr_step_normalize(const simclr_matrix* za, const simclr_matrix* zb,
                                    const simclr_matrix* u_local, void* squared_norms) {
  return c_api_guard([&] {
    namespace d = simclr::detail;
    const char* where = "simclr_step_normalize";
    SIMCLR_ENFORCE(za != nullptr, ValueError, where, ": za is NULL");
    d::check_matrix(za, "za", where, za->dtype, -1, -1);
    d::check_matrix(zb, "zb", where, za->dtype, -1, -1);
    d::check_same_shape(za->rows, za->cols, zb->rows, zb->cols);
    d::check_matrix(u_local, "u_local", where, za->dtype, 2 * za->rows, za->cols);
    d::check_buffer(squared_norms, za->rows, "squared_norms", where);
    if (za->dtype == SIMCLR_FLOAT32)
      d::step_normalize<float>(*za, *zb, *u_local, squared_norms);
    else
      d::step_normalize<double>(*za, *zb, *u_local, squared_norms);
  });
}

simclr_status simclr_step_normalize_rows(const simclr_matrix* x, const simclr_matrix* out) {
  return c_api_guard([&] {
    namespace d = simclr::detail;
    const char* where = "simclr_step_normalize_rows";
    SIMCLR_ENFORCE(x != nullptr, ValueError, where, ": x is NULL");
    d::check_matrix(x, "negatives", where, x->dtype, -1, -1);
    d::check_matrix(out, "out", where, x->dtype, x->rows, x->cols);
    if (x->dtype == SIMCLR_FLOAT32)
      d::step_normalize_rows<float>(*x, *out);
    else
      d::step_normalize_rows<double>(*x, *out);
  });
}

simclr_status simclr_step_forward(simclr_loss_t loss, const simclr_matrix* u_global,
                                  int64_t anchor_begin, int64_t pairs, const simclr_weight* weight,
                                  const simclr_call_options* options, void* row_lse,
                                  void* per_example, void* values) {
  return c_api_guard([&] {
    namespace d = simclr::detail;
    const char* where = "simclr_step_forward";
    const auto [layout, o] = d::step_call(loss, u_global, anchor_begin, pairs, options, where);
    d::check_distribution_rule(loss->loss, layout.total_rows - o.negatives != 2 * pairs,
                               o.global_batch, where);
    const auto sw = d::to_sample_weight(weight, pairs, where);
    const std::vector<double> w = d::broadcast_weight(sw ? &*sw : nullptr, pairs);
    d::check_buffer(row_lse, pairs, "row_lse", where);
    SIMCLR_ENFORCE(values != nullptr, ValueError, where, ": values is NULL");
    if (u_global->dtype == SIMCLR_FLOAT32)
      d::step_forward<float>(loss->loss, *u_global, layout, w, o, row_lse, per_example, values);
    else
      d::step_forward<double>(loss->loss, *u_global, layout, w, o, row_lse, per_example, values);
  });
}

simclr_status simclr_step_alpha(simclr_loss_t loss, simclr_dtype dtype, int64_t pairs,
                                int64_t global_pairs, const simclr_weight* weight,
                                const simclr_call_options* options, const void* upstream,
                                int64_t upstream_count, void* alpha) {
  return c_api_guard([&] {
    namespace d = simclr::detail;
    const char* where = "simclr_step_alpha";
    SIMCLR_ENFORCE(loss != nullptr, ValueError, where, ": loss is NULL");
    if (!d::is_host_dtype(dtype))
      d::c_api_fail(SIMCLR_TYPE_ERROR, d::str_cat(where, ": dtype ", d::c_enum_value(dtype),
                                                  " is not SIMCLR_FLOAT32 or SIMCLR_FLOAT64"));
    SIMCLR_ENFORCE(pairs >= 0 && global_pairs >= pairs, ValueError, where, ": pairs ", pairs,
                   " and global_pairs ", global_pairs, " must satisfy 0 <= pairs <= global_pairs");
    const d::StepOptions o = d::to_step_options(options, where);
    d::check_distribution_rule(loss->loss, global_pairs != pairs, o.global_batch, where);
    const simclr::Reduction reduction = d::resolved(loss->loss);
    const bool per_example = upstream_count != 1;
    d::check_buffer(upstream, upstream_count, "upstream", where);
    if (dtype == SIMCLR_FLOAT32)
      d::check_upstream(static_cast<const float*>(upstream), upstream_count, per_example,
                        reduction, pairs);
    else
      d::check_upstream(static_cast<const double*>(upstream), upstream_count, per_example,
                        reduction, pairs);
    d::check_buffer(alpha, pairs, "alpha", where);
    const auto sw = d::to_sample_weight(weight, pairs, where);
    const std::vector<double> w = d::broadcast_weight(sw ? &*sw : nullptr, pairs);
    const std::int64_t denom = d::reduction_denominator(o.global_batch, pairs, global_pairs);
    if (dtype == SIMCLR_FLOAT32)
      d::pair_alpha(static_cast<const float*>(upstream), per_example, pairs, w, reduction, denom,
                    1.0, static_cast<float*>(alpha));
    else
      d::pair_alpha(static_cast<const double*>(upstream), per_example, pairs, w, reduction, denom,
                    1.0, static_cast<double*>(alpha));
  });
}

simclr_status simclr_step_backward(simclr_loss_t loss, const simclr_matrix* u_global,
                                   int64_t anchor_begin, int64_t pairs, const void* squared_norms,
                                   const void* lse_all, const void* alpha_all,
                                   const simclr_call_options* options, const simclr_matrix* grad_a,
                                   const simclr_matrix* grad_b) {
  return simclr_step_backward_temperature(loss, u_global, anchor_begin, pairs, squared_norms,
                                          lse_all, alpha_all, options, grad_a, grad_b, nullptr);
}

simclr_status simclr_step_backward_temperature(simclr_loss_t loss, const simclr_matrix* u_global,
                                               int64_t anchor_begin, int64_t pairs,
                                               const void* squared_norms, const void* lse_all,
                                               const void* alpha_all,
                                               const simclr_call_options* options,
                                               const simclr_matrix* grad_a,
                                               const simclr_matrix* grad_b, void* grad_temperature) {
  return c_api_guard([&] {
    namespace d = simclr::detail;
    const char* where = "simclr_step_backward";
    const auto [layout, o] = d::step_call(loss, u_global, anchor_begin, pairs, options, where);
    d::check_buffer(squared_norms, pairs, "squared_norms", where);
    d::check_buffer(lse_all, u_global->rows, "lse_all", where);
    d::check_buffer(alpha_all, u_global->rows, "alpha_all", where);
    d::check_matrix(grad_a, "grad_a", where, u_global->dtype, pairs, u_global->cols);
    d::check_matrix(grad_b, "grad_b", where, u_global->dtype, pairs, u_global->cols);
    if (u_global->dtype == SIMCLR_FLOAT32)
      d::step_backward<float>(loss->loss, *u_global, layout, squared_norms, lse_all, alpha_all, o,
                              *grad_a, *grad_b, grad_temperature);
    else
      d::step_backward<double>(loss->loss, *u_global, layout, squared_norms, lse_all, alpha_all, o,
                               *grad_a, *grad_b, grad_temperature);
  });
}

simclr_status simclr_check_shapes(const int64_t* za_shape, int32_t za_ndim, const int64_t* zb_shape,
                                  int32_t zb_ndim, const int64_t* weight_shape,
                                  int32_t weight_ndim) {
  return c_api_guard([&] {
    namespace d = simclr::detail;
    const char* where = "simclr_check_shapes";
    SIMCLR_ENFORCE(za_ndim >= 0 && zb_ndim >= 0 && weight_ndim >= -1, ValueError, where,
                   ": a negative ndim");
    SIMCLR_ENFORCE((za_shape != nullptr || za_ndim == 0) && (zb_shape != nullptr || zb_ndim == 0) &&
                       (weight_shape != nullptr || weight_ndim <= 0),
                   ValueError, where, ": a shape is NULL");
    const std::vector<std::int64_t> a(za_shape, za_shape + za_ndim), b(zb_shape, zb_shape + zb_ndim);
    if (weight_ndim < 0) {
      d::check_input_shapes(a, b, nullptr);
      return;
    }
    const std::vector<std::int64_t> w(weight_shape, weight_shape + weight_ndim);
    d::check_input_shapes(a, b, &w);
  });
}

simclr_status simclr_check_negatives(const int64_t* shape, int32_t ndim, simclr_dtype dtype,
                                     int32_t negatives_scope, int64_t dim,
                                     simclr_dtype views_dtype) {
  return c_api_guard([&] {
    namespace d = simclr::detail;
    SIMCLR_ENFORCE(ndim == 2 && shape != nullptr, ValueError,
                   "negatives must be a [K, d] matrix, got ", ndim, " dimensions");
    d::c_negatives_scope(negatives_scope, "simclr_check_negatives");
    d::check_negatives(shape[0], shape[1], static_cast<std::int32_t>(d::c_enum_value(dtype)),
                       negatives_scope, dim, static_cast<std::int32_t>(d::c_enum_value(views_dtype)),
                       d::record_dtype_name);
  });
}

}  // extern "C"

namespace simclr::detail {
namespace {

// The record both record calls write: this rank's shapes (zero when input_error is set), the loss's
// configuration, the options, and the first error of options->input_error or `checks`, which never
// escapes (it travels in the record).
void write_record(simclr_loss_t loss, std::int64_t rows, std::int64_t cols, std::int64_t dtype,
                  const simclr_call_options* options, const char* where,
                  const std::function<void()>& checks, void* record) {
  SIMCLR_ENFORCE(loss != nullptr, ValueError, where, ": loss is NULL");
  SIMCLR_ENFORCE(record != nullptr, ValueError, where, ": record is NULL");
  simclr_call_options defaults;
  simclr_call_options_init(&defaults);
  const simclr_call_options& o = options != nullptr ? *options : defaults;
  const LossConfig& config = loss->loss.config();
  const bool shaped = o.input_error == SIMCLR_OK;
  AgreementRecord mine = forward_record(
      shaped ? rows : 0, shaped ? cols : 0, shaped ? static_cast<std::int32_t>(dtype) : 0,
      config.reduction == Reduction::kAuto ? Reduction::kSumOverBatchSize : config.reduction,
      o.use_temperature != 0 ? o.temperature : config.temperature, kNoGlobalBatch);
  capture(mine, [&] {
    check_collectively(nullptr, &o, [&] {
      checks();
      if (o.use_temperature != 0) validate_temperature(o.temperature);
      mine.global_batch = encode_global_batch(c_global_batch(o.global_batch_size, where));
      mine.schedule = static_cast<std::int32_t>(c_schedule(o.schedule, where));
      mine.gradient_reduction =
          static_cast<std::int32_t>(c_gradient_reduction(o.gradient_reduction, where));
      mine.negatives_scope = c_negatives_scope(o.negatives_scope, where);
      if (o.negatives != nullptr) {
        // This rank's extra negatives, checked by the rules of simclr_forward: their dtype and
        // width against the views' (cols and dtype as recorded), and NaN/Inf.
        const simclr_matrix& k = *o.negatives;
        check_matrix(&k, "negatives", where, k.dtype, -1, -1);
        check_negatives(k.rows, k.cols, static_cast<std::int32_t>(c_enum_value(k.dtype)),
                        o.negatives_scope, cols, static_cast<std::int32_t>(dtype),
                        record_dtype_name);
        if (k.dtype == SIMCLR_FLOAT32)
          check_finite(const_view<float>(k), "negatives");
        else
          check_finite(const_view<double>(k), "negatives");
        mine.negative_rows = k.rows;
      }
    });
  });
  std::memcpy(record, &mine, sizeof(mine));
}

}  // namespace
}  // namespace simclr::detail

extern "C" {

simclr_status simclr_step_record(simclr_loss_t loss, const simclr_matrix* za, const simclr_matrix* zb,
                                 const simclr_weight* weight, const simclr_call_options* options,
                                 void* record) {
  return c_api_guard([&] {
    namespace d = simclr::detail;
    const char* where = "simclr_step_record";
    d::write_record(
        loss, za != nullptr ? za->rows : 0, za != nullptr ? za->cols : 0,
        za != nullptr ? d::c_enum_value(za->dtype) : 0, options, where,
        [&] {
          SIMCLR_ENFORCE(za != nullptr, ValueError, where, ": za is NULL");
          d::check_matrix(za, "za", where, za->dtype, -1, -1);
          d::check_matrix(zb, "zb", where, za->dtype, -1, -1);
          d::check_same_shape(za->rows, za->cols, zb->rows, zb->cols);
          if (za->dtype == SIMCLR_FLOAT32) {
            d::check_finite(d::const_view<float>(*za), "za");
            d::check_finite(d::const_view<float>(*zb), "zb");
          } else {
            d::check_finite(d::const_view<double>(*za), "za");
            d::check_finite(d::const_view<double>(*zb), "zb");
          }
          const auto sw = d::to_sample_weight(weight, za->rows, where);
          (void)d::broadcast_weight(sw ? &*sw : nullptr, za->rows);
        },
        record);
  });
}

simclr_status simclr_record_call(simclr_loss_t loss, int64_t rows, int64_t cols, simclr_dtype dtype,
                                 const simclr_call_options* options, void* record) {
  return c_api_guard([&] {
    namespace d = simclr::detail;
    const char* where = "simclr_record_call";
    d::write_record(
        loss, rows, cols, d::c_enum_value(dtype), options, where,
        [&] {
          SIMCLR_ENFORCE(rows >= 0 && cols >= 0, ValueError, where, ": rows ", rows, " and cols ",
                         cols, " must be >= 0");
        },
        record);
  });
}

simclr_status simclr_step_agree(simclr_loss_t loss, const void* records, int32_t ranks,
                                int64_t* rank_rows) {
  return c_api_guard([&] {
    namespace d = simclr::detail;
    const char* where = "simclr_step_agree";
    SIMCLR_ENFORCE(loss != nullptr, ValueError, where, ": loss is NULL");
    SIMCLR_ENFORCE(ranks >= 1, ValueError, where, ": ranks is ", ranks, "; at least 1");
    SIMCLR_ENFORCE(records != nullptr, ValueError, where, ": records is NULL");
    std::vector<d::AgreementRecord> all(static_cast<std::size_t>(ranks));
    std::memcpy(all.data(), records, all.size() * sizeof(d::AgreementRecord));
    d::raise_first_error(all);
    d::check_forward_records(all, d::record_dtype_name, loss->loss.reduction(),
                             "simclr_call_options");
    if (rank_rows != nullptr)
      for (std::size_t r = 0; r < all.size(); ++r) rank_rows[r] = all[r].rows;
  });
}

}  // extern "C"

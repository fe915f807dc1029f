// The C API over the C++ front end (include/simclr/c_api.h): handles, the callback communicator,
// and the host forward/backward. Every entry point maps exceptions to a status through
// detail::c_api_guard; nothing C++ crosses the boundary.

#include "simclr/c_api.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <optional>

#include "simclr/build_config.hpp"
#include "simclr/detail/agreement.hpp"
#include "simclr/detail/c_api_impl.hpp"
#include "simclr/detail/reduction.hpp"
#include "simclr/detail/check.hpp"
#include "simclr/loss.hpp"

namespace simclr::detail {

std::string& c_api_last_error() {
  thread_local std::string message;
  return message;
}

Reduction c_api_reduction(const simclr_reduction& reduction, const char* where) {
  const std::int64_t raw = c_enum_value(reduction);
  if (raw == SIMCLR_REDUCTION_AUTO) return Reduction::kAuto;
  if (raw == SIMCLR_REDUCTION_NONE) return Reduction::kNone;
  if (raw == SIMCLR_REDUCTION_SUM) return Reduction::kSum;
  if (raw == SIMCLR_REDUCTION_SUM_OVER_BATCH_SIZE) return Reduction::kSumOverBatchSize;
  throw ValueError(str_cat(where, ": reduction ", raw,
                           " is not a simclr_reduction (SIMCLR_REDUCTION_AUTO, _NONE, _SUM or "
                           "_SUM_OVER_BATCH_SIZE)"));
}

simclr_reduction c_api_reduction(Reduction reduction) {
  switch (reduction) {
    case Reduction::kAuto:
      return SIMCLR_REDUCTION_AUTO;
    case Reduction::kNone:
      return SIMCLR_REDUCTION_NONE;
    case Reduction::kSum:
      return SIMCLR_REDUCTION_SUM;
    case Reduction::kSumOverBatchSize:
      return SIMCLR_REDUCTION_SUM_OVER_BATCH_SIZE;
  }
  return SIMCLR_REDUCTION_AUTO;
}

std::optional<GlobalBatchSize> c_global_batch(std::int64_t global_batch_size, const char* where) {
  if (global_batch_size == SIMCLR_GLOBAL_BATCH_NONE) return std::nullopt;
  if (global_batch_size == SIMCLR_GLOBAL_BATCH_INFER) return GlobalBatchSize::infer();
  SIMCLR_ENFORCE(global_batch_size >= 0, ValueError, where, ": global_batch_size is ",
                 global_batch_size,
                 "; pass a count >= 0, SIMCLR_GLOBAL_BATCH_INFER or SIMCLR_GLOBAL_BATCH_NONE");
  return GlobalBatchSize::of(global_batch_size);
}

GradientReduction c_gradient_reduction(std::int32_t gradient_reduction, const char* where) {
  if (gradient_reduction == SIMCLR_GRADIENT_SUM) return GradientReduction::kSum;
  if (gradient_reduction == SIMCLR_GRADIENT_MEAN) return GradientReduction::kMean;
  c_api_fail(SIMCLR_VALUE_ERROR, str_cat(where, ": gradient_reduction is ", gradient_reduction,
                                         "; pass SIMCLR_GRADIENT_SUM or SIMCLR_GRADIENT_MEAN"));
}

std::int32_t c_negatives_scope(std::int32_t scope, const char* where) {
  if (scope == SIMCLR_NEGATIVES_LOCAL || scope == SIMCLR_NEGATIVES_GLOBAL) return scope;
  c_api_fail(SIMCLR_VALUE_ERROR, str_cat(where, ": negatives_scope is ", scope,
                                         "; pass SIMCLR_NEGATIVES_LOCAL or SIMCLR_NEGATIVES_GLOBAL"));
}

void check_collectively(Communicator* comm, const simclr_call_options* options,
                        const std::function<void()>& checks) {
  try {
    if (options != nullptr && options->input_error != SIMCLR_OK) {
      const char* message = options->input_error_message;
      c_api_fail(options->input_error,
                 message != nullptr && message[0] != '\0' ? message : "the front end rejected "
                                                                     "this rank's input");
    }
    checks();
  } catch (const CommError&) {
    throw;
  } catch (const Error& e) {
    if (comm == nullptr) throw;
    AgreementRecord mine = empty_record();
    set_error(mine, error_kind_of(e), e.what());
    gather_records(*comm, mine);  // raises the error on every rank
    throw;                        // not reached: the record carries an error
  }
}

namespace {

// A Communicator whose collectives are the caller's C functions.
class CallbackCommunicator final : public Communicator {
 public:
  CallbackCommunicator(const simclr_comm_callbacks& callbacks, std::string backend)
      : callbacks_(callbacks), backend_(std::move(backend)) {}
  ~CallbackCommunicator() override {
    if (callbacks_.release != nullptr) callbacks_.release(callbacks_.user);
  }
  CallbackCommunicator(const CallbackCommunicator&) = delete;
  CallbackCommunicator& operator=(const CallbackCommunicator&) = delete;

  int rank() const override { return callbacks_.rank; }
  int size() const override { return callbacks_.size; }
  std::string backend() const override { return backend_; }

  void all_gather(const void* send, std::size_t bytes, void* recv) override {
    char error[kErrorCapacity] = {0};
    check(callbacks_.all_gather(callbacks_.user, send, bytes, recv, error, sizeof(error)), error,
          "all_gather");
  }
  void all_gather_v(const void* send, std::size_t send_bytes, void* recv,
                    const std::vector<std::size_t>& recv_bytes) override {
    SIMCLR_ENFORCE(recv_bytes.size() == static_cast<std::size_t>(callbacks_.size), CommError,
                   backend_, ": all_gather_v got ", recv_bytes.size(), " counts for ",
                   callbacks_.size, " ranks");
    char error[kErrorCapacity] = {0};
    check(callbacks_.all_gather_v(callbacks_.user, send, send_bytes, recv, recv_bytes.data(), error,
                                  sizeof(error)),
          error, "all_gather_v");
  }
  void barrier() override {
    char error[kErrorCapacity] = {0};
    if (callbacks_.barrier != nullptr) {
      check(callbacks_.barrier(callbacks_.user, error, sizeof(error)), error, "barrier");
      return;
    }
    // No barrier given: a 1-byte all_gather also returns only when every rank has entered it.
    const unsigned char one = 1;
    std::vector<unsigned char> all(static_cast<std::size_t>(callbacks_.size));
    check(callbacks_.all_gather(callbacks_.user, &one, 1, all.data(), error, sizeof(error)), error,
          "barrier (as a 1-byte all_gather)");
  }

 private:
  static constexpr std::size_t kErrorCapacity = 1024;

  void check(int rc, char* error, const char* collective) const {
    if (rc == 0) return;
    error[kErrorCapacity - 1] = '\0';  // a callback that filled the buffer without a NUL
    throw CommError(str_cat(backend_, ": ", collective, " failed on rank ", callbacks_.rank, " of ",
                            callbacks_.size, " (callback returned ", rc,
                            "): ", error[0] != '\0' ? error : "no message given"));
  }

  simclr_comm_callbacks callbacks_;
  std::string backend_;
};

template <class T>
struct HostForward final : simclr_forward_state {
  LossOutput<T> output;
};

const char* dtype_name(const simclr_dtype& dtype) {
  const std::int64_t raw = c_enum_value(dtype);
  if (raw == SIMCLR_FLOAT32) return "float32";
  if (raw == SIMCLR_FLOAT64) return "float64";
  if (raw == SIMCLR_FLOAT16) return "float16";
  if (raw == SIMCLR_BFLOAT16) return "bfloat16";
  return "an unknown dtype";
}

// A host matrix argument: not NULL, host memory, a host dtype.
void check_host_matrix(const simclr_matrix* m, const char* what, const char* where) {
  SIMCLR_ENFORCE(m != nullptr, ValueError, where, ": ", what, " is NULL");
  if (m->device != -1)
    c_api_fail(SIMCLR_UNSUPPORTED,
               str_cat(where, ": ", what, " is on CUDA device ", m->device,
                       " but this call takes host memory (device -1); use the simclr_device_* "
                       "calls for device memory"));
  const std::int64_t dtype = c_enum_value(m->dtype);
  if (dtype == SIMCLR_FLOAT16 || dtype == SIMCLR_BFLOAT16)
    c_api_fail(SIMCLR_UNSUPPORTED, str_cat(where, ": ", what, " is ", dtype_name(m->dtype),
                                           ", which only the device calls take; host calls "
                                           "take float32 or float64"));
  if (dtype != SIMCLR_FLOAT32 && dtype != SIMCLR_FLOAT64)
    c_api_fail(SIMCLR_TYPE_ERROR,
               str_cat(where, ": ", what, " has dtype ", dtype,
                       ", not a simclr_dtype (SIMCLR_FLOAT32 or SIMCLR_FLOAT64)"));
}

SampleWeight to_weight(const simclr_weight& w, std::int64_t rows) {
  SIMCLR_ENFORCE(w.ndim >= 0, ValueError, "simclr_forward: weight has ndim ", w.ndim);
  check_weight_rank(static_cast<std::size_t>(w.ndim), rows);
  std::vector<std::int64_t> shape(w.shape, w.shape + w.ndim);
  std::int64_t count = 1;
  for (std::int32_t k = 0; k < w.ndim; ++k) {
    SIMCLR_ENFORCE(w.shape[k] >= 0, ValueError, "simclr_forward: weight shape[", k, "] is ",
                   w.shape[k]);
    count *= w.shape[k];
  }
  SIMCLR_ENFORCE(count == 0 || w.values != nullptr, ValueError,
                 "simclr_forward: weight values are NULL with ", count, " elements");
  return SampleWeight(std::move(shape), count == 0
                                            ? std::vector<double>{}
                                            : std::vector<double>(w.values, w.values + count));
}

CallOptions to_call_options(const simclr_call_options& o) {
  CallOptions options;
  options.communicator = o.comm != nullptr ? o.comm->comm.get() : nullptr;
  options.global_batch_size = c_global_batch(o.global_batch_size, "simclr_call_options");
  options.gradient_reduction = c_gradient_reduction(o.gradient_reduction, "simclr_call_options");
  SIMCLR_ENFORCE(o.threads >= 0, ValueError, "simclr_call_options: threads is ", o.threads,
                 "; pass 0 (the process default) or a count");
  options.engine.threads = o.threads;
  options.engine.symmetric = o.symmetric != 0;
  options.engine.schedule = c_schedule(o.schedule, "simclr_call_options");
  if (o.memory_budget_bytes != 0) options.engine.memory_budget_bytes = o.memory_budget_bytes;
  if (o.use_temperature != 0) options.temperature = o.temperature;
  options.temperature_gradient = o.temperature_gradient != 0;
  options.negatives.scope =
      static_cast<NegativesScope>(c_negatives_scope(o.negatives_scope, "simclr_call_options"));
  if (o.negatives != nullptr) {
    check_host_matrix(o.negatives, "negatives", "simclr_forward");
    options.negatives.data = o.negatives->data;
    options.negatives.rows = o.negatives->rows;
    options.negatives.cols = o.negatives->cols;
    options.negatives.row_stride = o.negatives->row_stride;
    options.negatives.dtype = static_cast<DType>(o.negatives->dtype);
  }
  return options;
}

template <class T>
void host_forward(const SimCLRLoss& loss, const simclr_matrix& za, const simclr_matrix& zb,
                  const SampleWeight* weight, const CallOptions& options, void* values,
                  void* per_example, simclr_forward_info* info, simclr_forward_t* saved) {
  const ConstMatrixView<T> a(static_cast<const T*>(za.data), za.rows, za.cols, za.row_stride);
  const ConstMatrixView<T> b(static_cast<const T*>(zb.data), zb.rows, zb.cols, zb.row_stride);
  LossOutput<T> out = loss.forward(a, b, weight, options);
  std::unique_ptr<HostForward<T>> keep;
  if (saved != nullptr) {
    keep = std::make_unique<HostForward<T>>();
    keep->dtype = za.dtype;
    keep->rank_rows = out.rank_rows;
  }
  // Nothing can fail from here on: the outputs are written together.
  std::copy(out.values.begin(), out.values.end(), static_cast<T*>(values));
  if (per_example != nullptr)
    std::copy(out.per_example.begin(), out.per_example.end(), static_cast<T*>(per_example));
  if (info != nullptr) {
    info->reduction = c_api_reduction(out.reduction);
    info->ranks = static_cast<std::int32_t>(out.rank_rows.size());
    info->rows = a.rows;
    info->row_offset = out.row_offset;
    info->global_rows = out.global_rows;
    info->objective = static_cast<double>(out.objective);
    info->flops = out.flops;
  }
  if (saved != nullptr) {
    keep->output = std::move(out);
    *saved = keep.release();
  }
}

template <class T>
void host_backward(const SimCLRLoss& loss, const HostForward<T>& saved, const void* upstream,
                   std::int64_t upstream_count, const simclr_matrix* grad_a,
                   const simclr_matrix* grad_b, void* grad_temperature) {
  const LossOutput<T>& out = saved.output;
  const T* up = static_cast<const T*>(upstream);
  Gradients<T> g;
  if (upstream_count == 1 && up != nullptr) {
    g = loss.backward(out, up[0]);
  } else {
    // Anything else goes through the per-example path, whose checks (the reduction, the count)
    // are collective: a wrong count on one rank fails every rank instead of leaving them waiting.
    std::vector<T> per(up != nullptr && upstream_count > 0 ? up : nullptr,
                       up != nullptr && upstream_count > 0 ? up + upstream_count : nullptr);
    g = loss.backward(out, per);
  }
  // Checked after the (possibly collective) backward, so one rank's bad buffer cannot leave the
  // others waiting in it.
  for (auto [m, what] : {std::pair{grad_a, "grad_a"}, std::pair{grad_b, "grad_b"}}) {
    check_host_matrix(m, what, "simclr_backward");
    SIMCLR_ENFORCE(m->dtype == saved.dtype, TypeError, "simclr_backward: ", what, " is ",
                   dtype_name(m->dtype), " but the forward was ", dtype_name(saved.dtype));
    const RowMatrix<T>& src = what[5] == 'a' ? g.grad_a : g.grad_b;
    SIMCLR_ENFORCE(m->rows == src.rows() && m->cols == src.cols(), ValueError,
                   "simclr_backward: ", what, " is [", m->rows, ", ", m->cols,
                   "] but the gradient is [", src.rows(), ", ", src.cols(), "]");
    SIMCLR_ENFORCE(m->rows == 0 || m->cols == 0 || m->data != nullptr, ValueError, "simclr_backward: ", what,
                   " data is NULL");
    SIMCLR_ENFORCE(m->rows <= 1 || m->row_stride >= m->cols, ValueError, "simclr_backward: ", what,
                   " row_stride ", m->row_stride, " is smaller than its ", m->cols, " columns");
  }
  SIMCLR_ENFORCE(grad_temperature == nullptr || g.grad_temperature, ValueError,
                 "simclr_backward_temperature: grad_temperature is set but the forward was not asked "
                 "for dJ/dT (simclr_call_options.temperature_gradient)");
  if (grad_temperature != nullptr) *static_cast<T*>(grad_temperature) = *g.grad_temperature;
  for (auto [m, src] : {std::pair{grad_a, &g.grad_a}, std::pair{grad_b, &g.grad_b}}) {
    const MatrixView<T> view(static_cast<T*>(m->data), m->rows, m->cols, m->row_stride);
    for (std::int64_t i = 0; i < view.rows; ++i)
      std::copy(src->row(i).data(), src->row(i).data() + view.cols, view.row(i));
  }
}

}  // namespace
}  // namespace simclr::detail

using simclr::detail::c_api_fail;
using simclr::detail::c_api_guard;
using simclr::detail::str_cat;

extern "C" {

const char* simclr_last_error(void) { return simclr::detail::c_api_last_error().c_str(); }

const char* simclr_version(void) { return SIMCLR_VERSION_STRING; }

simclr_status simclr_loss_create(double temperature, simclr_reduction reduction, const char* name,
                                 simclr_loss_t* out) {
  return c_api_guard([&] {
    SIMCLR_ENFORCE(out != nullptr, simclr::ValueError, "simclr_loss_create: out is NULL");
    const simclr::Reduction r = simclr::detail::c_api_reduction(reduction, "simclr_loss_create");
    std::optional<std::string> n;
    if (name != nullptr) n = std::string(name);
    *out = new simclr_loss(simclr::SimCLRLoss(temperature, r, std::move(n)));
  });
}

simclr_status simclr_loss_from_config(const char* json, simclr_loss_t* out) {
  return c_api_guard([&] {
    SIMCLR_ENFORCE(out != nullptr, simclr::ValueError, "simclr_loss_from_config: out is NULL");
    SIMCLR_ENFORCE(json != nullptr, simclr::ValueError, "simclr_loss_from_config: json is NULL");
    *out = new simclr_loss(simclr::SimCLRLoss::from_config_string(json));
  });
}

simclr_status simclr_loss_get_config(simclr_loss_t loss, char* buffer, size_t capacity,
                                     size_t* length) {
  return c_api_guard([&] {
    SIMCLR_ENFORCE(loss != nullptr, simclr::ValueError, "simclr_loss_get_config: loss is NULL");
    const std::string text = loss->loss.get_config_string();
    if (length != nullptr) *length = text.size();
    SIMCLR_ENFORCE(buffer != nullptr || capacity == 0, simclr::ValueError,
                   "simclr_loss_get_config: buffer is NULL with capacity ", capacity);
    SIMCLR_ENFORCE(text.size() < capacity, simclr::ValueError,
                   "simclr_loss_get_config: the config needs ", text.size() + 1,
                   " bytes with its NUL but the buffer has ", capacity,
                   " (*length has the text's length)");
    std::memcpy(buffer, text.c_str(), text.size() + 1);
  });
}

void simclr_loss_destroy(simclr_loss_t loss) { delete loss; }

simclr_status simclr_comm_create_callbacks(const simclr_comm_callbacks* callbacks,
                                           const char* backend, simclr_comm_t* out) {
  return c_api_guard([&] {
    const char* where = "simclr_comm_create_callbacks";
    SIMCLR_ENFORCE(out != nullptr, simclr::ValueError, where, ": out is NULL");
    SIMCLR_ENFORCE(callbacks != nullptr, simclr::ValueError, where, ": callbacks is NULL");
    SIMCLR_ENFORCE(callbacks->all_gather != nullptr && callbacks->all_gather_v != nullptr,
                   simclr::ValueError, where, ": all_gather and all_gather_v must be set");
    SIMCLR_ENFORCE(callbacks->size >= 1, simclr::ValueError, where, ": size is ", callbacks->size,
                   "; a communicator has at least 1 rank");
    SIMCLR_ENFORCE(callbacks->rank >= 0 && callbacks->rank < callbacks->size, simclr::ValueError,
                   where, ": rank ", callbacks->rank, " is outside [0, ", callbacks->size, ")");
    auto comm = std::make_unique<simclr_comm>();
    comm->comm = std::make_unique<simclr::detail::CallbackCommunicator>(
        *callbacks, backend != nullptr ? backend : "callbacks");
    *out = comm.release();
  });
}

simclr_status simclr_comm_create_single(simclr_comm_t* out) {
  return c_api_guard([&] {
    SIMCLR_ENFORCE(out != nullptr, simclr::ValueError, "simclr_comm_create_single: out is NULL");
    auto comm = std::make_unique<simclr_comm>();
    comm->comm = std::make_unique<simclr::SingleProcessCommunicator>();
    *out = comm.release();
  });
}

int32_t simclr_comm_rank(simclr_comm_t comm) { return comm != nullptr ? comm->comm->rank() : -1; }

int32_t simclr_comm_size(simclr_comm_t comm) { return comm != nullptr ? comm->comm->size() : -1; }

int32_t simclr_comm_is_device(simclr_comm_t comm) {
  return comm == nullptr ? -1 : (comm->device ? 1 : 0);
}

void simclr_comm_destroy(simclr_comm_t comm) { delete comm; }

void simclr_call_options_init(simclr_call_options* options) {
  if (options == nullptr) return;
  options->comm = nullptr;
  options->global_batch_size = SIMCLR_GLOBAL_BATCH_NONE;
  options->threads = 0;
  options->symmetric = 1;
  options->memory_budget_bytes = 0;
  options->workspace_bytes = 0;
  options->schedule = SIMCLR_SCHEDULE_AUTO;
  options->gradient_reduction = SIMCLR_GRADIENT_SUM;
  options->input_error = SIMCLR_OK;
  options->input_error_message = nullptr;
  options->use_temperature = 0;
  options->temperature = 0;
  options->temperature_gradient = 0;
  options->negatives = nullptr;
  options->negatives_scope = SIMCLR_NEGATIVES_LOCAL;
  options->negative_rows = 0;
}

simclr_status simclr_forward(simclr_loss_t loss, const simclr_matrix* za, const simclr_matrix* zb,
                             const simclr_weight* weight, const simclr_call_options* options,
                             void* values, void* per_example, simclr_forward_info* info,
                             simclr_forward_t* saved) {
  return c_api_guard([&] {
    using namespace simclr;
    simclr_call_options defaults;
    simclr_call_options_init(&defaults);
    const simclr_call_options& o = options != nullptr ? *options : defaults;
    if (o.comm != nullptr && o.comm->device)
      c_api_fail(SIMCLR_UNSUPPORTED,
                 str_cat("simclr_forward: options->comm is a device communicator (backend '",
                         o.comm->comm->backend(),
                         "'), whose collectives take device buffers; host calls take a host "
                         "communicator (simclr_comm_create_callbacks, _mpi or _single)"));
    Communicator* comm = o.comm != nullptr ? o.comm->comm.get() : nullptr;

    // The C-level checks (and the front end's own rejection), collective with a communicator.
    CallOptions call;
    std::optional<SampleWeight> w;
    detail::check_collectively(comm, options, [&] {
      SIMCLR_ENFORCE(loss != nullptr, ValueError, "simclr_forward: loss is NULL");
      detail::check_host_matrix(za, "za", "simclr_forward");
      detail::check_host_matrix(zb, "zb", "simclr_forward");
      SIMCLR_ENFORCE(za->dtype == zb->dtype, TypeError, "simclr_forward: za is ",
                     detail::dtype_name(za->dtype), " but zb is ", detail::dtype_name(zb->dtype),
                     "; both views take the same dtype");
      SIMCLR_ENFORCE(values != nullptr, ValueError, "simclr_forward: values is NULL");
      if (weight != nullptr) w = detail::to_weight(*weight, za->rows);
      call = detail::to_call_options(o);
    });
    const SampleWeight* wp = w ? &*w : nullptr;
    if (za->dtype == SIMCLR_FLOAT32)
      detail::host_forward<float>(loss->loss, *za, *zb, wp, call, values, per_example, info, saved);
    else
      detail::host_forward<double>(loss->loss, *za, *zb, wp, call, values, per_example, info,
                                   saved);
  });
}

simclr_status simclr_backward(simclr_loss_t loss, simclr_forward_t saved, const void* upstream,
                              int64_t upstream_count, const simclr_matrix* grad_a,
                              const simclr_matrix* grad_b) {
  return simclr_backward_temperature(loss, saved, upstream, upstream_count, grad_a, grad_b,
                                     nullptr);
}

simclr_status simclr_backward_temperature(simclr_loss_t loss, simclr_forward_t saved,
                                          const void* upstream, int64_t upstream_count,
                                          const simclr_matrix* grad_a, const simclr_matrix* grad_b,
                                          void* grad_temperature) {
  return c_api_guard([&] {
    using namespace simclr;
    SIMCLR_ENFORCE(loss != nullptr, ValueError, "simclr_backward: loss is NULL");
    SIMCLR_ENFORCE(saved != nullptr, ValueError,
                   "simclr_backward: saved is NULL; pass the simclr_forward_t of a forward");
    if (saved->device != -1)
      c_api_fail(SIMCLR_UNSUPPORTED,
                 "simclr_backward: saved comes from a device forward; use simclr_device_backward");
    if (auto* f = dynamic_cast<const detail::HostForward<float>*>(saved))
      detail::host_backward(loss->loss, *f, upstream, upstream_count, grad_a, grad_b,
                            grad_temperature);
    else if (auto* d = dynamic_cast<const detail::HostForward<double>*>(saved))
      detail::host_backward(loss->loss, *d, upstream, upstream_count, grad_a, grad_b,
                            grad_temperature);
    else
      throw Error("simclr_backward: saved is not a host forward");
  });
}

int32_t simclr_forward_rank_rows(simclr_forward_t saved, int64_t* rows, int32_t capacity) {
  if (saved == nullptr) return 0;
  const auto ranks = static_cast<int32_t>(saved->rank_rows.size());
  if (rows != nullptr)
    for (int32_t r = 0; r < std::min(capacity, ranks); ++r)
      rows[r] = saved->rank_rows[static_cast<std::size_t>(r)];
  return ranks;
}

void simclr_forward_destroy(simclr_forward_t saved) { delete saved; }

}  // extern "C"

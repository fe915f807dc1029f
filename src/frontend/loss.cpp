// The SimCLRLoss front end on the CPU engine: the shared step (detail/step.hpp: validation, the
// agreement, the plan), normalisation, the gather, the engine, the shared reduction
// (detail/reduction.hpp); and the backward (docs/math.md sections 2-4, docs/semantics.md,
// docs/distributed.md).

#include "simclr/loss.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "simclr/detail/agreement.hpp"
#include "simclr/detail/reduction.hpp"
#include "simclr/detail/step.hpp"

namespace simclr {
namespace detail {

template <class T>
struct SavedForward {
  StepPlan plan;                 // what every rank agreed on
  RowMatrix<T> u;                // [2G, d] normalised rows of every rank, rank by rank
  std::vector<T> squared_norms;  // [2n] for the normalisation backward
  EngineForward<T> engine;       // per-row LSE (and the logits block when it fit)
  std::vector<double> weight;    // [n] weights after broadcasting
  Communicator* communicator = nullptr;
  EngineOptions options;
  T inv_temperature = 1;
  double temperature = 1;             // the call's (CallOptions::temperature, or the loss's)
  bool temperature_gradient = false;  // CallOptions::temperature_gradient
  Schedule schedule = Schedule::kOwnRows;  // resolved
  std::vector<std::int64_t> blocks;        // balanced: this rank's off-diagonal blocks
};

namespace {

template <class T>
constexpr SumType sum_type() {
  return sizeof(T) == sizeof(double) ? SumType::kFloat64 : SumType::kFloat32;
}

std::string host_dtype_name(std::int32_t t) { return to_string(static_cast<DType>(t)); }

// The engine's forward under the resolved schedule: per-row LSE and positives of this rank's
// anchors (docs/performance.md, "Schedules").
template <class T>
void run_forward_engine(SavedForward<T>& s) {
  const StepPlan& plan = s.plan;
  if (s.schedule != Schedule::kBalanced) {
    s.engine = engine_forward<T>(s.u, plan.layout, s.inv_temperature, s.options);
    return;
  }
  // This rank's blocks give partial row sums of every row; the reduce-scatter brings each rank the
  // full sums of its own rows.
  const std::int64_t n = plan.layout.pairs;
  s.blocks = balanced_blocks(plan.rank_rows, plan.rank);
  std::vector<T> sums;
  s.engine =
      engine_forward_balanced<T>(s.u, plan.layout, s.inv_temperature, s.options, s.blocks, sums);
  std::vector<std::size_t> counts = plan.rank_counts(1, 1);
  std::vector<T> own(static_cast<std::size_t>(std::max<std::int64_t>(2 * n, 1)));
  s.communicator->reduce_scatter_v(sums.data(), own.data(), counts, sum_type<T>());
  balanced_lse(s.inv_temperature, own.data(), 2 * n, s.engine.row_lse.data());
}

// Writes the extra negatives' unit rows into U after the batch's 2G rows: this rank's own (local
// scope), or every rank's in rank order (global scope, one gather of K_r d elements per rank).
template <class T>
void place_negatives(Communicator* comm, const StepPlan& plan, ConstMatrixView<T> bank,
                     RowMatrix<T>& u) {
  const std::int64_t d = u.cols(), begin = 2 * plan.total;
  SIMCLR_CHECK_EQ(u.rows(), begin + plan.negatives);
  std::vector<T> norms(static_cast<std::size_t>(std::max<std::int64_t>(bank.rows, 1)));
  if (comm == nullptr || plan.negatives_scope == NegativesScope::kLocal) {
    l2_normalize_rows(bank, u.data() + begin * d, d, norms.data());
    return;
  }
  RowMatrix<T> own(bank.rows, d);
  l2_normalize_rows(bank, own.data(), d, norms.data());
  comm->all_gather_v(own.data(), static_cast<std::size_t>(own.size()) * sizeof(T),
                     u.data() + begin * d, plan.negative_counts(d, sizeof(T)));
}

}  // namespace
}  // namespace detail

using detail::AgreementRecord;
using detail::SavedForward;
using detail::StepPlan;

template <class T>
LossOutput<T> SimCLRLoss::forward(ConstMatrixView<T> za, ConstMatrixView<T> zb,
                                  const SampleWeight* sample_weight,
                                  const CallOptions& options) const {
  Communicator* comm = options.communicator;
  auto saved = std::make_shared<SavedForward<T>>();
  // The call's temperature, in place of the loss's (CallOptions::temperature); the agreement step
  // compares it across ranks as it does the loss's.
  LossConfig call_config = config_;
  if (options.temperature) call_config.temperature = *options.temperature;
  // Local validation; the shared step carries its errors to every rank when distributed.
  const Negatives& negatives = options.negatives;
  const ConstMatrixView<T> bank(static_cast<const T*>(negatives.data), negatives.rows,
                                negatives.cols,
                                negatives.row_stride > 0 ? negatives.row_stride : negatives.cols);
  auto validate = [&] {
    if (options.temperature) validate_temperature(*options.temperature);
    detail::check_view(za, "za");
    detail::check_view(zb, "zb");
    detail::check_same_shape(za.rows, za.cols, zb.rows, zb.cols);
    detail::check_finite(za, "za");
    detail::check_finite(zb, "zb");
    detail::check_negatives(negatives.rows, negatives.cols, static_cast<std::int32_t>(negatives.dtype),
                            static_cast<std::int32_t>(negatives.scope), za.cols,
                            static_cast<std::int32_t>(dtype_of<T>()), detail::host_dtype_name);
    if (negatives.rows > 0) {
      detail::check_view(bank, "negatives");
      detail::check_finite(bank, "negatives");
    }
    saved->weight = detail::broadcast_weight(sample_weight, za.rows);
  };
  detail::StepRequest request{
      za.rows, za.cols, static_cast<std::int32_t>(dtype_of<T>()), &call_config,
      options.global_batch_size, options.engine.schedule, options.gradient_reduction};
  request.negative_rows = std::max<std::int64_t>(negatives.rows, 0);
  request.negatives_scope = negatives.scope;
  request.dtype_name = detail::host_dtype_name;
  request.options_name = "CallOptions";
  saved->plan = detail::plan_step(comm, request, validate);
  const StepPlan& plan = saved->plan;
  const std::int64_t n = za.rows, d = za.cols;
  saved->communicator = comm;
  saved->options = options.engine;
  saved->temperature = call_config.temperature;
  saved->temperature_gradient = options.temperature_gradient;
  saved->inv_temperature = static_cast<T>(1.0 / call_config.temperature);

  // Normalise own rows ([a; b], 2n x d), then gather every rank's into U (docs/math.md section 3).
  saved->squared_norms.resize(static_cast<std::size_t>(2 * n));
  RowMatrix<T>& u = saved->u;
  RowMatrix<T> local;
  RowMatrix<T>& own = comm == nullptr ? u : local;
  own.resize(2 * n, d);
  detail::l2_normalize_rows(za, own.data(), d, saved->squared_norms.data());
  detail::l2_normalize_rows(zb, own.data() + n * d, d, saved->squared_norms.data() + n);
  if (comm != nullptr) {
    u.resize(plan.layout.total_rows, d);
    comm->all_gather_v(own.data(), static_cast<std::size_t>(own.size()) * sizeof(T), u.data(),
                       plan.rank_counts(d, sizeof(T)));
    // Extra negatives on any rank: own_rows, whose row blocks take their columns like any others.
    saved->schedule = plan.any_negatives()
                          ? Schedule::kOwnRows
                          : detail::resolve_schedule(
                                options.engine.schedule, plan.rank_rows, d, sizeof(T),
                                detail::has_fixed_shift(saved->inv_temperature),
                                comm->has_reduce_scatter());
  } else if (plan.negatives > 0) {
    // The local U grows by the negatives' rows; the batch's 2n rows keep their place at the top.
    u.conservativeResize(plan.layout.total_rows, d);
  }
  if (plan.negatives > 0) detail::place_negatives(comm, plan, bank, u);
  detail::run_forward_engine(*saved);

  const detail::ReducedLoss<T> reduced =
      detail::reduce_examples(saved->engine.row_lse.data(), saved->engine.row_positive.data(), n,
                              saved->weight, plan.reduction, plan.denominator);
  LossOutput<T> out;
  out.reduction = plan.reduction;
  out.rank_rows = plan.rank_rows;
  out.row_offset = plan.offset;
  out.global_rows = plan.total;
  out.negative_rows = plan.negatives;
  out.temperature = call_config.temperature;
  out.flops = saved->engine.flops;
  out.per_example = reduced.per_example;
  out.values = reduced.values;
  out.objective = static_cast<T>(reduced.objective);
  out.saved = std::move(saved);
  return out;
}

namespace detail {
namespace {

// Every rank's (LSE, alpha) in U order, with one agreement record per rank in the same gather: an
// error in any rank's upstream gradient raises on every rank. `scalars` is this rank's [lse (2n),
// alpha (2n)]; lse_u and alpha_u get [2G] each.
template <class T>
void gather_row_scalars(Communicator& comm, const StepPlan& plan, const AgreementRecord& mine,
                        const std::vector<T>& scalars, std::vector<T>& lse_u,
                        std::vector<T>& alpha_u) {
  const std::size_t nranks = plan.rank_rows.size();
  SIMCLR_CHECK_EQ(nranks, static_cast<std::size_t>(comm.size()));
  std::vector<std::size_t> bytes = plan.rank_counts(2, sizeof(T));
  std::size_t total_bytes = 0;
  for (auto& b : bytes) total_bytes += (b += sizeof(AgreementRecord));
  std::vector<unsigned char> send(bytes[static_cast<std::size_t>(plan.rank)]);
  std::memcpy(send.data(), &mine, sizeof(mine));
  // std::copy_n, not memcpy: with 0 rows the vectors' data() may be null, which memcpy must not
  // get even for 0 bytes (UBSan, tests/reliability DistributedBadInput.EveryRankEmptyIsAZeroLoss).
  std::copy_n(reinterpret_cast<const unsigned char*>(scalars.data()), scalars.size() * sizeof(T),
              send.data() + sizeof(mine));
  std::vector<unsigned char> recv(total_bytes);
  comm.all_gather_v(send.data(), send.size(), recv.data(), bytes);
  std::vector<AgreementRecord> records(nranks);
  lse_u.resize(static_cast<std::size_t>(plan.layout.total_rows));
  alpha_u.resize(static_cast<std::size_t>(plan.layout.total_rows));
  std::size_t at = 0;
  std::int64_t row = 0;
  for (std::size_t r = 0; r < nranks; ++r) {
    std::memcpy(&records[r], recv.data() + at, sizeof(AgreementRecord));
    const std::int64_t m = 2 * plan.rank_rows[r];
    const unsigned char* scalars_r = recv.data() + at + sizeof(AgreementRecord);
    std::copy_n(scalars_r, m * sizeof(T), reinterpret_cast<unsigned char*>(lse_u.data() + row));
    std::copy_n(scalars_r + m * sizeof(T), m * sizeof(T),
                reinterpret_cast<unsigned char*>(alpha_u.data() + row));
    at += bytes[r];
    row += m;
  }
  SIMCLR_CHECK_EQ(at, recv.size());
  raise_first_error(records);
}

// dJ/du of this rank's anchors ([2n, d]) under the forward's schedule; negatives_dot (may be null):
// EngineBackwardArgs::negatives_dot.
template <class T>
double run_backward_engine(const SavedForward<T>& s, const T* lse_all, const T* alpha_all,
                           RowMatrix<T>& grad_u, double* negatives_dot) {
  EngineBackwardArgs<T> args;
  args.u = s.u;
  args.layout = s.plan.layout;
  args.inv_temperature = s.inv_temperature;
  args.lse_all = lse_all;
  args.alpha_all = alpha_all;
  args.saved = &s.engine;
  args.options = s.options;
  args.negatives = s.plan.negatives;
  args.negatives_dot = negatives_dot;
  if (s.schedule != Schedule::kBalanced) return engine_backward(args, grad_u);
  // Partial gradients of every row; the reduce-scatter brings each rank the sums of its own.
  const std::int64_t n = s.plan.layout.pairs, d = s.u.cols();
  RowMatrix<T> grad_all;
  const double flops = engine_backward_balanced(args, s.blocks, grad_all);
  std::vector<T> own(static_cast<std::size_t>(std::max<std::int64_t>(2 * n * d, 1)));
  s.communicator->reduce_scatter_v(grad_all.data(), own.data(), s.plan.rank_counts(d, 1),
                                   sum_type<T>());
  grad_u.resize(2 * n, d);
  std::copy_n(own.data(), 2 * n * d, grad_u.data());
  return flops;
}

}  // namespace
}  // namespace detail

template <class T>
Gradients<T> SimCLRLoss::backward_alpha(const LossOutput<T>& output, const T* upstream,
                                        std::size_t upstream_size, bool per_example) const {
  SIMCLR_ENFORCE(output.saved != nullptr, ValueError,
                 "backward needs the LossOutput of a forward call of this loss");
  const SavedForward<T>& s = *output.saved;
  const StepPlan& plan = s.plan;
  const std::int64_t n = plan.layout.pairs, d = s.u.cols();
  Communicator* comm = s.communicator;

  // [lse (2n), alpha (2n)]; alpha_i is the weight the reduction gives pair i (docs/math.md 4.1).
  std::vector<T> scalars(static_cast<std::size_t>(4 * n));
  auto compute_alpha = [&] {
    detail::check_upstream(upstream, static_cast<std::int64_t>(upstream_size), per_example,
                           output.reduction, n);
    detail::pair_alpha(upstream, per_example, n, s.weight, plan.reduction, plan.denominator,
                       plan.gradient_scale, scalars.data() + 2 * n);
    std::copy(s.engine.row_lse.begin(), s.engine.row_lse.end(), scalars.begin());
  };
  std::vector<T> lse_u, alpha_u;
  const T* lse_all = scalars.data();
  const T* alpha_all = scalars.data() + 2 * n;
  if (comm == nullptr) {
    compute_alpha();
  } else {
    AgreementRecord mine = detail::empty_record();
    detail::capture(mine, compute_alpha);
    detail::gather_row_scalars(*comm, plan, mine, scalars, lse_u, alpha_u);
    lse_all = lse_u.data();
    alpha_all = alpha_u.data();
  }

  // Extra negatives are candidates only: weight 0 in the objective, and an LSE at the largest
  // possible logit (1 / T), so that their terms vanish without overflow on every path.
  if (plan.negatives > 0) {
    const auto batch_rows = static_cast<std::size_t>(plan.layout.total_rows - plan.negatives);
    if (comm == nullptr) {
      lse_u.assign(scalars.begin(), scalars.begin() + 2 * n);
      alpha_u.assign(scalars.begin() + 2 * n, scalars.end());
    }
    lse_u.resize(batch_rows);
    alpha_u.resize(batch_rows);
    lse_u.resize(static_cast<std::size_t>(plan.layout.total_rows), s.inv_temperature);
    alpha_u.resize(static_cast<std::size_t>(plan.layout.total_rows), T(0));
    lse_all = lse_u.data();
    alpha_all = alpha_u.data();
  }
  RowMatrix<T> grad_u;
  Gradients<T> out;
  // The extra negatives' part of dJ/dT, from the backward's own tiles (docs/math.md 4.7).
  double negatives_dot = 0;
  const bool with_dot = s.temperature_gradient && plan.negatives > 0;
  out.flops =
      detail::run_backward_engine(s, lse_all, alpha_all, grad_u, with_dot ? &negatives_dot : nullptr);
  out.grad_a.resize(n, d);
  out.grad_b.resize(n, d);
  const T* anchors = s.u.data() + plan.layout.anchor_begin * d;
  if (s.temperature_gradient) {
    // The identity of docs/math.md 4.6 sums over every row of U; the extra negatives' rows get no
    // gradient here, so their u . dJ/du is the backward's negatives_dot (4.7).
    out.grad_temperature = static_cast<T>(detail::temperature_gradient_share(
        anchors, grad_u.data(), 2 * n, d, s.temperature, negatives_dot));
  }
  detail::l2_normalize_backward(anchors, d, s.squared_norms.data(), grad_u.data(), d, n, d,
                                out.grad_a.data(), d);
  detail::l2_normalize_backward(anchors + n * d, d, s.squared_norms.data() + n,
                                grad_u.data() + n * d, d, n, d, out.grad_b.data(), d);
  return out;
}

template <class T>
Gradients<T> SimCLRLoss::backward(const LossOutput<T>& output, T upstream) const {
  return backward_alpha(output, &upstream, 1, false);
}

template <class T>
Gradients<T> SimCLRLoss::backward(const LossOutput<T>& output,
                                  const std::vector<T>& upstream) const {
  SIMCLR_ENFORCE(output.saved != nullptr, ValueError,
                 "backward needs the LossOutput of a forward call of this loss");
  // The reduction is checked inside backward_alpha, where a distributed call agrees on the error:
  // a caller that passes a per-example gradient on one rank only must not leave the others waiting.
  return backward_alpha(output, upstream.data(), upstream.size(), true);
}

template <class T>
void SimCLRLoss::backward_into(const LossOutput<T>& output, T upstream, MatrixView<T> grad_a,
                               MatrixView<T> grad_b) const {
  Gradients<T> g = backward(output, upstream);
  for (auto [view, src, what] :
       {std::tuple{grad_a, &g.grad_a, "grad_a"}, std::tuple{grad_b, &g.grad_b, "grad_b"}}) {
    SIMCLR_ENFORCE(view.rows == src->rows() && view.cols == src->cols(), ValueError, what,
                   " buffer is [", view.rows, ", ", view.cols, "] but the gradient is [",
                   src->rows(), ", ", src->cols(), "]");
    SIMCLR_ENFORCE(view.rows == 0 || view.data != nullptr, ValueError, what, " buffer is null");
  }
  for (auto [view, src] : {std::pair{grad_a, &g.grad_a}, std::pair{grad_b, &g.grad_b}}) {
    for (std::int64_t i = 0; i < view.rows; ++i)
      std::copy(src->row(i).data(), src->row(i).data() + view.cols, view.row(i));
  }
}

template <class T>
std::pair<LossOutput<T>, Gradients<T>> SimCLRLoss::value_and_gradient(
    ConstMatrixView<T> za, ConstMatrixView<T> zb, const SampleWeight* sample_weight,
    const CallOptions& options) const {
  LossOutput<T> out = forward(za, zb, sample_weight, options);
  Gradients<T> grads = backward(out, T(1));
  return {std::move(out), std::move(grads)};
}

#define SIMCLR_INSTANTIATE(T)                                                                   \
  template LossOutput<T> SimCLRLoss::forward<T>(ConstMatrixView<T>, ConstMatrixView<T>,         \
                                                const SampleWeight*, const CallOptions&) const; \
  template Gradients<T> SimCLRLoss::backward<T>(const LossOutput<T>&, T) const;                 \
  template Gradients<T> SimCLRLoss::backward<T>(const LossOutput<T>&, const std::vector<T>&)    \
      const;                                                                                    \
  template void SimCLRLoss::backward_into<T>(const LossOutput<T>&, T, MatrixView<T>,            \
                                             MatrixView<T>) const;                              \
  template std::pair<LossOutput<T>, Gradients<T>> SimCLRLoss::value_and_gradient<T>(            \
      ConstMatrixView<T>, ConstMatrixView<T>, const SampleWeight*, const CallOptions&) const;

SIMCLR_INSTANTIATE(float)
SIMCLR_INSTANTIATE(double)
#undef SIMCLR_INSTANTIATE

}  // namespace simclr

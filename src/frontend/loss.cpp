// The SimCLRLoss front end: validation, the agreement step, normalisation, the gather, the engine,
// the Keras reduction; and the backward (docs/math.md sections 2-4, docs/semantics.md,
// docs/distributed.md).

#include "simclr/loss.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "simclr/detail/agreement.hpp"
#include "simclr/detail/reduction.hpp"

namespace simclr {
namespace detail {

template <class T>
struct SavedForward {
  RowMatrix<T> u;                // [2G, d] normalised rows of every rank, rank by rank
  RowLayout layout;              // where this rank's 2n anchors sit in u
  std::vector<T> squared_norms;  // [2n] for the normalisation backward
  EngineForward<T> engine;       // per-row LSE (and the logits block when it fit)
  std::vector<T> weight;         // [n] weights after broadcasting
  T denominator = 1;             // of sum_over_batch_size (0 gives 0)
  Reduction reduction = Reduction::kSum;
  Communicator* communicator = nullptr;
  std::vector<std::int64_t> rank_rows;
  EngineOptions options;
  T inv_temperature = 1;
  Schedule schedule = Schedule::kOwnRows;  // resolved
  std::vector<std::int64_t> blocks;        // balanced: this rank's off-diagonal blocks
};

namespace {

template <class T>
constexpr SumType sum_type() {
  return sizeof(T) == sizeof(double) ? SumType::kFloat64 : SumType::kFloat32;
}

}  // namespace
}  // namespace detail

using detail::AgreementRecord;
using detail::SavedForward;

template <class T>
LossOutput<T> SimCLRLoss::forward(ConstMatrixView<T> za, ConstMatrixView<T> zb,
                                  const SampleWeight* sample_weight,
                                  const CallOptions& options) const {
  Communicator* comm = options.communicator;
  const Reduction reduction =
      config_.reduction == Reduction::kAuto ? Reduction::kSumOverBatchSize : config_.reduction;
  const std::int64_t gbs = !options.global_batch_size ? detail::kNoGlobalBatch
                           : options.global_batch_size->is_infer()
                               ? detail::kInferGlobalBatch
                               : options.global_batch_size->rows();

  // Local validation. Without a communicator errors propagate as they are; with one they are
  // carried by the agreement step so every rank raises the same exception.
  std::vector<double> weight;
  auto validate = [&] {
    detail::check_view(za, "za");
    detail::check_view(zb, "zb");
    SIMCLR_ENFORCE(za.rows == zb.rows && za.cols == zb.cols, ValueError,
                   "za and zb must have the same shape: [", za.rows, ", ", za.cols, "] vs. [",
                   zb.rows, ", ", zb.cols, "]");
    detail::check_finite(za, "za");
    detail::check_finite(zb, "zb");
    weight = detail::broadcast_weight(sample_weight, za.rows);
  };

  const std::int64_t n = za.rows, d = za.cols;
  std::vector<std::int64_t> rank_rows{n};
  std::int64_t offset = 0, total = n;
  if (comm == nullptr) {
    validate();
  } else {
    AgreementRecord mine = detail::forward_record(n, d, static_cast<std::int32_t>(dtype_of<T>()),
                                                  reduction, config_.temperature, gbs);
    // The schedule decides which collectives follow, so every rank must ask for the same one.
    mine.reserved = static_cast<std::int32_t>(options.engine.schedule);
    detail::capture(mine, validate);
    const int size = comm->size(), rank = comm->rank();
    const std::vector<AgreementRecord> all = detail::gather_records(*comm, mine);
    detail::check_forward_records(
        all, [](std::int32_t t) { return to_string(static_cast<DType>(t)); }, config_.reduction,
        "CallOptions");
    detail::check_same_schedule(all, "CallOptions engine.schedule");
    rank_rows.resize(static_cast<std::size_t>(size));
    for (int r = 0; r < size; ++r)
      rank_rows[static_cast<std::size_t>(r)] = all[static_cast<std::size_t>(r)].rows;
    offset = std::accumulate(rank_rows.begin(), rank_rows.begin() + rank, std::int64_t{0});
    total = std::accumulate(rank_rows.begin(), rank_rows.end(), std::int64_t{0});
  }

  auto saved = std::make_shared<SavedForward<T>>();
  saved->layout = detail::RowLayout{2 * total, 2 * offset, n};
  saved->communicator = comm;
  saved->rank_rows = rank_rows;
  saved->options = options.engine;
  saved->inv_temperature = static_cast<T>(1.0 / config_.temperature);
  saved->reduction = reduction;
  saved->weight.assign(weight.begin(), weight.end());

  // Normalise own rows ([a; b], 2n x d), then gather every rank's into U (docs/math.md section 3).
  saved->squared_norms.resize(static_cast<std::size_t>(2 * n));
  RowMatrix<T>& u = saved->u;
  if (comm == nullptr) {
    u.resize(2 * n, d);
    detail::l2_normalize_rows(za, u.data(), d, saved->squared_norms.data());
    detail::l2_normalize_rows(zb, u.data() + n * d, d, saved->squared_norms.data() + n);
  } else {
    RowMatrix<T> local(2 * n, d);
    detail::l2_normalize_rows(za, local.data(), d, saved->squared_norms.data());
    detail::l2_normalize_rows(zb, local.data() + n * d, d, saved->squared_norms.data() + n);
    u.resize(2 * total, d);
    std::vector<std::size_t> bytes(rank_rows.size());
    for (std::size_t r = 0; r < rank_rows.size(); ++r)
      bytes[r] = static_cast<std::size_t>(2 * rank_rows[r] * d) * sizeof(T);
    comm->all_gather_v(local.data(), static_cast<std::size_t>(local.size()) * sizeof(T), u.data(),
                       bytes);
  }

  if (comm != nullptr)
    saved->schedule = detail::resolve_schedule(options.engine.schedule, rank_rows, d, sizeof(T),
                                               detail::has_fixed_shift(saved->inv_temperature),
                                               comm->has_reduce_scatter());
  if (saved->schedule == Schedule::kBalanced) {
    // This rank's blocks give partial row sums of every row; the reduce-scatter brings each rank
    // the full sums of its own rows (docs/performance.md).
    saved->blocks = detail::balanced_blocks(rank_rows, comm->rank());
    std::vector<T> sums;
    saved->engine = detail::engine_forward_balanced(u, saved->layout, saved->inv_temperature,
                                                    options.engine, saved->blocks, sums);
    std::vector<std::size_t> counts(rank_rows.size());
    for (std::size_t r = 0; r < rank_rows.size(); ++r)
      counts[r] = static_cast<std::size_t>(2 * rank_rows[r]);
    std::vector<T> own(static_cast<std::size_t>(std::max<std::int64_t>(2 * n, 1)));
    comm->reduce_scatter_v(sums.data(), own.data(), counts, detail::sum_type<T>());
    detail::balanced_lse(saved->inv_temperature, own.data(), 2 * n, saved->engine.row_lse.data());
  } else {
    saved->engine =
        detail::engine_forward(u, saved->layout, saved->inv_temperature, options.engine);
  }

  LossOutput<T> out;
  out.reduction = reduction;
  out.rank_rows = rank_rows;
  out.row_offset = offset;
  out.global_rows = total;
  out.flops = saved->engine.flops;
  out.per_example.resize(static_cast<std::size_t>(n));
  const auto& lse = saved->engine.row_lse;
  const auto& pos = saved->engine.row_positive;
  double weighted_sum = 0;
  std::vector<T> weighted(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    const T l = (lse[i] - pos[i]) + (lse[n + i] - pos[n + i]);
    out.per_example[i] = l;
    weighted[i] = static_cast<T>(l * saved->weight[i]);
    weighted_sum += static_cast<double>(weighted[i]);
  }
  if (reduction == Reduction::kSumOverBatchSize) {
    const std::int64_t denom = gbs == detail::kNoGlobalBatch      ? n
                               : gbs == detail::kInferGlobalBatch ? total
                                                                  : gbs;
    saved->denominator = static_cast<T>(denom);
    out.values = {denom == 0 ? T(0) : static_cast<T>(weighted_sum / static_cast<double>(denom))};
    out.objective = out.values[0];
  } else if (reduction == Reduction::kSum) {
    out.values = {static_cast<T>(weighted_sum)};
    out.objective = out.values[0];
  } else {
    out.values = std::move(weighted);
    out.objective = static_cast<T>(weighted_sum);
  }
  out.saved = std::move(saved);
  return out;
}

template <class T>
Gradients<T> SimCLRLoss::backward_alpha(const LossOutput<T>& output, const T* upstream,
                                        std::size_t upstream_size, bool per_example) const {
  SIMCLR_ENFORCE(output.saved != nullptr, ValueError,
                 "backward needs the LossOutput of a forward call of this loss");
  const SavedForward<T>& s = *output.saved;
  const detail::RowLayout& layout = s.layout;
  const std::int64_t n = layout.pairs, d = s.u.cols();
  Communicator* comm = s.communicator;

  // alpha_i: the weight the reduction gives pair i (docs/math.md section 4.1), for both anchors.
  std::vector<T> scalars(static_cast<std::size_t>(4 * n));  // [lse (2n), alpha (2n)]
  auto compute_alpha = [&] {
    SIMCLR_ENFORCE(!per_example || output.reduction == Reduction::kNone, ValueError,
                   "a per-example upstream gradient needs reduction 'none'; reduction '",
                   to_string(output.reduction), "' takes a scalar");
    SIMCLR_ENFORCE(!per_example || static_cast<std::int64_t>(upstream_size) == n, ValueError,
                   "upstream gradient has ", upstream_size, " elements but the loss has ", n);
    for (std::int64_t i = 0; i < (per_example ? n : 1); ++i) {
      SIMCLR_ENFORCE(std::isfinite(upstream[i]), ValueError, "upstream gradient has ",
                     std::isnan(upstream[i]) ? "NaN" : "Inf", " at index ", i);
    }
    for (std::int64_t i = 0; i < n; ++i) {
      const T g = per_example ? upstream[i] : upstream[0];
      T a = g * s.weight[i];
      if (s.reduction == Reduction::kSumOverBatchSize)
        a = s.denominator == 0 ? T(0) : a / s.denominator;
      scalars[2 * n + i] = scalars[3 * n + i] = a;
    }
    std::copy(s.engine.row_lse.begin(), s.engine.row_lse.end(), scalars.begin());
  };

  std::vector<T> gathered;
  const T* lse_all = nullptr;
  const T* alpha_all = nullptr;
  std::vector<T> lse_u, alpha_u;
  if (comm == nullptr) {
    compute_alpha();
    lse_all = scalars.data();
    alpha_all = scalars.data() + 2 * n;
  } else {
    // One gather of a status record and 4 scalars per pair: an error on any rank raises everywhere.
    AgreementRecord mine = detail::empty_record();
    detail::capture(mine, compute_alpha);
    const std::size_t nranks = s.rank_rows.size();
    SIMCLR_CHECK_EQ(nranks, static_cast<std::size_t>(comm->size()));
    std::vector<std::size_t> bytes(nranks);
    std::size_t total_bytes = 0;
    for (std::size_t r = 0; r < nranks; ++r) {
      bytes[r] = sizeof(AgreementRecord) + static_cast<std::size_t>(4 * s.rank_rows[r]) * sizeof(T);
      total_bytes += bytes[r];
    }
    std::vector<unsigned char> send(bytes[static_cast<std::size_t>(comm->rank())]);
    std::memcpy(send.data(), &mine, sizeof(mine));
    // std::copy_n, not memcpy: with 0 rows the vectors' data() may be null, which memcpy must not
    // get even for 0 bytes (UBSan, tests/reliability
    // DistributedBadInput.EveryRankEmptyIsAZeroLoss).
    std::copy_n(reinterpret_cast<const unsigned char*>(scalars.data()), scalars.size() * sizeof(T),
                send.data() + sizeof(mine));
    std::vector<unsigned char> recv(total_bytes);
    comm->all_gather_v(send.data(), send.size(), recv.data(), bytes);
    std::vector<AgreementRecord> records(nranks);
    lse_u.resize(static_cast<std::size_t>(layout.total_rows));
    alpha_u.resize(static_cast<std::size_t>(layout.total_rows));
    std::size_t at = 0;
    std::int64_t row = 0;
    for (std::size_t r = 0; r < nranks; ++r) {
      std::memcpy(&records[r], recv.data() + at, sizeof(AgreementRecord));
      const std::int64_t m = 2 * s.rank_rows[r];
      const unsigned char* scalars_r = recv.data() + at + sizeof(AgreementRecord);
      std::copy_n(scalars_r, m * sizeof(T), reinterpret_cast<unsigned char*>(lse_u.data() + row));
      std::copy_n(scalars_r + m * sizeof(T), m * sizeof(T),
                  reinterpret_cast<unsigned char*>(alpha_u.data() + row));
      at += bytes[r];
      row += m;
    }
    SIMCLR_CHECK_EQ(at, recv.size());
    detail::raise_first_error(records);
    lse_all = lse_u.data();
    alpha_all = alpha_u.data();
  }

  RowMatrix<T> grad_u;
  Gradients<T> out;
  detail::EngineBackwardArgs<T> engine_args;
  engine_args.u = &s.u;
  engine_args.layout = layout;
  engine_args.inv_temperature = s.inv_temperature;
  engine_args.lse_all = lse_all;
  engine_args.alpha_all = alpha_all;
  engine_args.saved = &s.engine;
  engine_args.options = s.options;
  if (s.schedule == Schedule::kBalanced) {
    // Partial gradients of every row; the reduce-scatter brings each rank the sums of its own.
    RowMatrix<T> grad_all;
    out.flops = detail::engine_backward_balanced(engine_args, s.blocks, grad_all);
    std::vector<std::size_t> counts(s.rank_rows.size());
    for (std::size_t r = 0; r < s.rank_rows.size(); ++r)
      counts[r] = static_cast<std::size_t>(2 * s.rank_rows[r] * d);
    std::vector<T> own(static_cast<std::size_t>(std::max<std::int64_t>(2 * n * d, 1)));
    comm->reduce_scatter_v(grad_all.data(), own.data(), counts, detail::sum_type<T>());
    grad_u.resize(2 * n, d);
    std::copy_n(own.data(), 2 * n * d, grad_u.data());
  } else {
    out.flops = detail::engine_backward(engine_args, grad_u);
  }
  out.grad_a.resize(n, d);
  out.grad_b.resize(n, d);
  const T* anchors = s.u.data() + layout.anchor_begin * d;
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

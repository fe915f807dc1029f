// The setup every loss step shares (include/simclr/detail/step.hpp; docs/architecture.md, "One loss
// step"; docs/distributed.md for the agreement step).

#include "simclr/detail/step.hpp"

#include <cmath>
#include <numeric>

#include "simclr/detail/check.hpp"
#include "simclr/detail/reduction.hpp"

namespace simclr::detail {

std::vector<std::size_t> StepPlan::rank_counts(std::int64_t per_row, std::size_t elem) const {
  std::vector<std::size_t> out(rank_rows.size());
  for (std::size_t r = 0; r < rank_rows.size(); ++r)
    out[r] = static_cast<std::size_t>(2 * rank_rows[r] * per_row) * elem;
  return out;
}

std::vector<std::size_t> StepPlan::negative_counts(std::int64_t dim, std::size_t elem) const {
  std::vector<std::size_t> out(rank_negatives.size());
  for (std::size_t r = 0; r < rank_negatives.size(); ++r)
    out[r] = static_cast<std::size_t>(rank_negatives[r] * dim) * elem;
  return out;
}

bool StepPlan::any_negatives() const {
  for (const std::int64_t k : rank_negatives)
    if (k > 0) return true;
  return false;
}

std::int64_t encode_global_batch(const std::optional<GlobalBatchSize>& global_batch_size) {
  if (!global_batch_size) return kNoGlobalBatch;
  return global_batch_size->is_infer() ? kInferGlobalBatch : global_batch_size->rows();
}

StepPlan plan_step(Communicator* comm, const StepRequest& request,
                   const std::function<void()>& validate) {
  SIMCLR_CHECK(request.config != nullptr && request.dtype_name != nullptr);
  const LossConfig& config = *request.config;
  StepPlan plan;
  plan.reduction =
      config.reduction == Reduction::kAuto ? Reduction::kSumOverBatchSize : config.reduction;
  plan.global_batch = encode_global_batch(request.global_batch_size);
  const std::int64_t n = request.rows;
  plan.negatives_scope = request.negatives_scope;
  if (comm == nullptr) {
    validate();
    plan.rank_rows = {n};
    plan.rank_negatives = {request.negative_rows};
  } else {
    plan.distributed = true;
    AgreementRecord mine =
        forward_record(n, request.cols, request.dtype, plan.reduction, config.temperature,
                       plan.global_batch, request.schedule, request.gradient_reduction);
    mine.negative_rows = request.negative_rows;
    mine.negatives_scope = static_cast<std::int32_t>(request.negatives_scope);
    capture(mine, validate);
    const std::vector<AgreementRecord> all = gather_records(*comm, mine);
    check_forward_records(all, request.dtype_name, config.reduction, request.options_name);
    plan.rank = comm->rank();
    plan.size = comm->size();
    SIMCLR_ENFORCE_EQ(static_cast<int>(all.size()), plan.size, CommError,
                      "agreement records vs. ranks of the communicator");
    plan.rank_rows.resize(all.size());
    plan.rank_negatives.resize(all.size());
    for (std::size_t r = 0; r < all.size(); ++r) {
      plan.rank_rows[r] = all[r].rows;
      plan.rank_negatives[r] = all[r].negative_rows;
    }
    if (request.gradient_reduction == GradientReduction::kMean)
      plan.gradient_scale = static_cast<double>(plan.size);
  }
  const auto begin = plan.rank_rows.begin();
  plan.offset = std::accumulate(begin, begin + plan.rank, std::int64_t{0});
  plan.total = std::accumulate(begin, plan.rank_rows.end(), std::int64_t{0});
  plan.negatives = plan.negatives_scope == NegativesScope::kGlobal
                       ? std::accumulate(plan.rank_negatives.begin(), plan.rank_negatives.end(),
                                         std::int64_t{0})
                       : request.negative_rows;
  plan.layout = RowLayout{2 * plan.total + plan.negatives, 2 * plan.offset, n};
  if (plan.reduction == Reduction::kSumOverBatchSize)
    plan.denominator = reduction_denominator(plan.global_batch, n, plan.total);
  return plan;
}

void agree_backward(Communicator* comm, const std::function<void()>& validate) {
  if (comm == nullptr) {
    validate();
    return;
  }
  AgreementRecord mine = empty_record();
  capture(mine, validate);
  gather_records(*comm, mine);
}

template <class T>
void check_upstream(const T* values, std::int64_t count, bool per_example, Reduction reduction,
                    std::int64_t pairs) {
  SIMCLR_ENFORCE(!per_example || reduction == Reduction::kNone, ValueError,
                 "a per-example upstream gradient needs reduction 'none'; reduction '",
                 to_string(reduction), "' takes a scalar");
  SIMCLR_ENFORCE(!per_example || count == pairs, ValueError, "upstream gradient has ", count,
                 " elements but the loss has ", pairs);
  SIMCLR_ENFORCE(count == 0 || values != nullptr || per_example, ValueError,
                 "upstream gradient is null");
  if (values == nullptr) return;
  for (std::int64_t i = 0; i < count; ++i) {
    SIMCLR_ENFORCE(std::isfinite(values[i]), ValueError, "upstream gradient has ",
                   std::isnan(values[i]) ? "NaN" : "Inf", " at index ", i);
  }
}

template void check_upstream<float>(const float*, std::int64_t, bool, Reduction, std::int64_t);
template void check_upstream<double>(const double*, std::int64_t, bool, Reduction, std::int64_t);

}  // namespace simclr::detail

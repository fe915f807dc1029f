#pragma once
// The setup every loss step shares, whichever engine it drives (the CPU engine in
// src/frontend/loss.cpp, the device engine in cuda/frontend/device_loss.cpp; the C API and every binding
// reach one of the two): local validation, the agreement between ranks, every rank's rows, this
// rank's layout in U, the resolved reduction and its denominator, the gradient scale. Not public
// API, not installed.

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "simclr/communicator.hpp"
#include "simclr/detail/agreement.hpp"
#include "simclr/detail/engine.hpp"
#include "simclr/options.hpp"

namespace simclr::detail {

// What one rank asks of a forward step.
struct StepRequest {
  std::int64_t rows = 0;  // n of this rank
  std::int64_t cols = 0;  // d
  std::int32_t dtype = 0;
  const LossConfig* config = nullptr;
  std::optional<GlobalBatchSize> global_batch_size;
  Schedule schedule = Schedule::kAuto;
  GradientReduction gradient_reduction = GradientReduction::kSum;
  // Names a record's dtype in the cross-rank messages.
  std::string (*dtype_name)(std::int32_t) = nullptr;
  // Where the caller passes the global batch size and the schedule, for messages: "CallOptions",
  // "DeviceCallOptions".
  const char* options_name = "CallOptions";
  // Extra negatives of this rank (CallOptions::negatives): K and their scope.
  std::int64_t negative_rows = 0;
  NegativesScope negatives_scope = NegativesScope::kLocal;
};

// What every rank agreed on, identical on every rank except rank, offset and layout.
struct StepPlan {
  bool distributed = false;
  int rank = 0;
  int size = 1;
  Reduction reduction = Reduction::kSumOverBatchSize;  // resolved: never kAuto
  std::vector<std::int64_t> rank_rows;                 // n of every rank (one entry when local)
  std::int64_t offset = 0;                             // this rank's first global pair
  std::int64_t total = 0;                              // G
  // Extra negatives: K of every rank (one entry when local), their scope, and how many of them
  // this rank's anchors see (its own K, or the sum for kGlobal): U's rows after the 2G of the batch.
  std::vector<std::int64_t> rank_negatives;
  NegativesScope negatives_scope = NegativesScope::kLocal;
  std::int64_t negatives = 0;
  RowLayout layout;  // this rank's anchors in U [2G + negatives, d]
  std::int64_t denominator = 1;  // of sum_over_batch_size (0 gives a zero loss)
  double gradient_scale = 1;     // P for GradientReduction::kMean over P ranks, else 1
  std::int64_t global_batch = kNoGlobalBatch;  // the request's, encoded as in the record

  // Byte counts of every rank's share of a per-row array of `per_row` elements of `elem` bytes,
  // 2 n_r rows each (the all_gather_v / reduce_scatter_v counts of U, LSE, alpha, gradients).
  std::vector<std::size_t> rank_counts(std::int64_t per_row, std::size_t elem) const;
  // Byte counts of every rank's extra negatives ([K_r, d] of `elem` bytes), for their gather.
  std::vector<std::size_t> negative_counts(std::int64_t dim, std::size_t elem) const;
  // Whether any rank has extra negatives (then the schedule is own_rows on every rank).
  bool any_negatives() const;
};

// The global batch size option as the agreement record carries it.
std::int64_t encode_global_batch(const std::optional<GlobalBatchSize>& global_batch_size);

// Runs `validate` (the caller's local checks: shapes, dtypes, finiteness, weights, buffers; it
// throws the library's exceptions). Without a communicator its exception propagates as it is;
// with one it is carried by the agreement gather, so every rank raises the same exception (naming
// the first failing rank) or none, before any large transfer; then the cross-rank checks and the
// distribution rule. Collective when comm is set.
StepPlan plan_step(Communicator* comm, const StepRequest& request,
                   const std::function<void()>& validate);

// The backward's agreement: runs `validate` (upstream gradient, output buffers) and, with a
// communicator, gathers one record per rank so an error anywhere raises everywhere. Collective
// when comm is set. (The CPU path folds its record into the gather of the per-row scalars instead,
// saving one round trip; see loss.cpp.)
void agree_backward(Communicator* comm, const std::function<void()>& validate);

// Checks a per-example or scalar upstream gradient against the forward's reduction and rows
// (ValueError otherwise): shared by the CPU and device backwards. `values` may be null when only
// the count is known (device memory); it is then not checked for NaN/Inf here.
template <class T>
void check_upstream(const T* values, std::int64_t count, bool per_example, Reduction reduction,
                    std::int64_t pairs);

}  // namespace simclr::detail

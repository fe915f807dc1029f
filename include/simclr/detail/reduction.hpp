#pragma once
// The input checks, the Keras sample_weight rules and the reduction of per-example losses
// (docs/semantics.md, docs/math.md section 4.1): the one place these rules live, used by the C++
// front end (src/frontend/loss.cpp), the C API's step calls (src/c_api/c_api_step.cpp) and the
// device front end (cuda/frontend/device_loss.cpp, for the shapes; its kernels apply the same weights). Not
// public API, not installed.

#include <cstdint>
#include <string>
#include <vector>

#include "simclr/loss.hpp"
#include "simclr/types.hpp"

namespace simclr::detail {

// ValueError naming the view, row and column of the first NaN or Inf in z.
template <class T>
void check_finite(ConstMatrixView<T> z, const char* view);

// ValueError for a negative dimension, null data with elements, or a row stride below the columns:
// the checks of any [rows, cols] view, host or device, named `view`.
void check_view_shape(const char* view, std::int64_t rows, std::int64_t cols,
                      std::int64_t row_stride, bool null_data);
template <class T>
void check_view(ConstMatrixView<T> z, const char* view);

// ValueError unless the two views have the same shape ("za and zb must have the same shape: ...").
void check_same_shape(std::int64_t rows_a, std::int64_t cols_a, std::int64_t rows_b,
                      std::int64_t cols_b);

// The checks of a call's extra negatives that need only their shape and dtype (CallOptions::negatives;
// the C API's simclr_call_options.negatives): a scope that is local or global (ValueError), the
// views' dtype (TypeError; `dtype_name` names a dtype code) and width `dim` (ValueError) when K > 0.
void check_negatives(std::int64_t rows, std::int64_t cols, std::int32_t dtype, std::int32_t scope,
                     std::int64_t dim, std::int32_t views_dtype,
                     std::string (*dtype_name)(std::int32_t));

// Keras sample_weight for a [n] loss: the rank fix-up, then broadcasting to [n] (all ones for
// nullptr). ValueError for shapes Keras rejects and for NaN/Inf weights.
std::vector<double> broadcast_weight(const SampleWeight* sw, std::int64_t n);

// The sum_over_batch_size denominator: n for kNoGlobalBatch, the global pair count for
// kInferGlobalBatch, else the count itself.
std::int64_t reduction_denominator(std::int64_t global_batch, std::int64_t pairs,
                                   std::int64_t global_pairs);

// A rank's reduced loss from its anchors' LSE and positive logits ([2n] each: a rows, then b).
template <class T>
struct ReducedLoss {
  std::vector<T> per_example;  // [n] unweighted
  std::vector<T> values;       // [n] weighted (none) or [1]
  double objective = 0;        // values[0], or the weighted sum for none
};
template <class T>
ReducedLoss<T> reduce_examples(const T* row_lse, const T* row_positive, std::int64_t pairs,
                               const std::vector<double>& weight, Reduction reduction,
                               std::int64_t denominator);

// ValueError unless a sample_weight of `rank` dimensions is one the library takes for a [n] loss
// (at most 2; Keras would broadcast a higher rank to an outer product).
void check_weight_rank(std::size_t rank, std::int64_t n);

// The checks of a call's inputs that need only their shapes (2-D views, za against zb, the
// sample_weight rules; `weight` may be null): what bindings raise before the data exists (trace
// time), in the library's words. ValueError.
void check_input_shapes(const std::vector<std::int64_t>& za, const std::vector<std::int64_t>& zb,
                        const std::vector<std::int64_t>* weight);

// The sample_weight shape rules alone (rank, squeeze, broadcast), for callers whose values live
// elsewhere (device memory): ValueError as broadcast_weight. `size` is the number of values.
void check_weight_shape(const std::vector<std::int64_t>& shape, std::int64_t size, std::int64_t n);

// alpha_i, the weight the reduction gives pair i's two cross entropies (docs/math.md section 4.1),
// times gradient_scale (StepPlan::gradient_scale), written to alpha[i] and alpha[n + i]. upstream:
// one value (a scalar gradient) or n (per example); the caller has checked it (check_upstream).
template <class T>
void pair_alpha(const T* upstream, bool per_example, std::int64_t pairs,
                const std::vector<double>& weight, Reduction reduction, std::int64_t denominator,
                double gradient_scale, T* alpha);

}  // namespace simclr::detail

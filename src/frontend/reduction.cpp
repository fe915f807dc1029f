// The input checks, sample_weight broadcasting and the reduction
// (include/simclr/detail/reduction.hpp; docs/semantics.md, docs/math.md section 4.1).

#include "simclr/detail/reduction.hpp"

#include <cmath>

#include "simclr/detail/agreement.hpp"
#include "simclr/detail/check.hpp"

namespace simclr::detail {

template <class T>
void check_finite(ConstMatrixView<T> z, const char* view) {
  for (std::int64_t i = 0; i < z.rows; ++i) {
    const T* row = z.row(i);
    // A vectorised test of the whole row first; the element loop only runs to name the culprit.
    if (Eigen::Map<const Eigen::Array<T, 1, Eigen::Dynamic>>(row, z.cols).allFinite()) continue;
    for (std::int64_t j = 0; j < z.cols; ++j) {
      if (!std::isfinite(row[j])) {
        throw ValueError(str_cat(view, " has ", std::isnan(row[j]) ? "NaN" : "Inf", " at row ", i,
                                 ", column ", j));
      }
    }
  }
}

void check_view_shape(const char* view, std::int64_t rows, std::int64_t cols,
                      std::int64_t row_stride, bool null_data) {
  SIMCLR_ENFORCE(rows >= 0 && cols >= 0, ValueError, view, " has a negative dimension: [", rows,
                 ", ", cols, "]");
  // [n, 0] holds no element, and frameworks hand it over with a null pointer: TF Similarity's value
  // for it is that of all-zero rows, 2 ln(2G - 1).
  SIMCLR_ENFORCE(rows == 0 || cols == 0 || !null_data, ValueError, view, " is null with ", rows,
                 " rows");
  SIMCLR_ENFORCE(rows <= 1 || row_stride >= cols, ValueError, view, " row stride ", row_stride,
                 " is smaller than its ", cols, " columns");
}

void check_negatives(std::int64_t rows, std::int64_t cols, std::int32_t dtype, std::int32_t scope,
                     std::int64_t dim, std::int32_t views_dtype,
                     std::string (*dtype_name)(std::int32_t)) {
  SIMCLR_ENFORCE(scope == static_cast<std::int32_t>(NegativesScope::kLocal) ||
                     scope == static_cast<std::int32_t>(NegativesScope::kGlobal),
                 ValueError, "negatives_scope has the invalid value ", scope,
                 "; use local or global");
  SIMCLR_ENFORCE(rows >= 0 && cols >= 0, ValueError, "negatives has a negative dimension: [", rows,
                 ", ", cols, "]");
  if (rows == 0) return;
  SIMCLR_ENFORCE(dtype == views_dtype, TypeError, "negatives have dtype ", dtype_name(dtype),
                 " but za and zb have ", dtype_name(views_dtype), "; pass them in the same dtype");
  SIMCLR_ENFORCE(cols == dim, ValueError, "negatives are [", rows, ", ", cols,
                 "] but the embeddings have ", dim, " columns; they must have the same width");
}

template <class T>
void check_view(ConstMatrixView<T> z, const char* view) {
  check_view_shape(view, z.rows, z.cols, z.row_stride, z.data == nullptr);
}

void check_same_shape(std::int64_t rows_a, std::int64_t cols_a, std::int64_t rows_b,
                      std::int64_t cols_b) {
  SIMCLR_ENFORCE(rows_a == rows_b && cols_a == cols_b, ValueError,
                 "za and zb must have the same shape: [", rows_a, ", ", cols_a, "] vs. [", rows_b,
                 ", ", cols_b, "]");
}

namespace {

std::string shape_string(const std::vector<std::int64_t>& shape) {
  std::string out = "[";
  for (std::size_t k = 0; k < shape.size(); ++k) out += (k ? ", " : "") + std::to_string(shape[k]);
  return out + "]";
}

}  // namespace

void check_input_shapes(const std::vector<std::int64_t>& za, const std::vector<std::int64_t>& zb,
                        const std::vector<std::int64_t>* weight) {
  for (auto [shape, view] : {std::pair{&za, "za"}, std::pair{&zb, "zb"}}) {
    SIMCLR_ENFORCE(shape->size() == 2, ValueError, view, " must be a 2-D [n, d] matrix, got shape ",
                   shape_string(*shape));
    SIMCLR_ENFORCE((*shape)[0] >= 0 && (*shape)[1] >= 0, ValueError, view,
                   " has a negative dimension: ", shape_string(*shape));
  }
  check_same_shape(za[0], za[1], zb[0], zb[1]);
  if (weight == nullptr) return;
  check_weight_rank(weight->size(), za[0]);
  std::int64_t count = 1;
  for (const std::int64_t s : *weight) count *= s < 0 ? 0 : s;
  check_weight_shape(*weight, count, za[0]);
}

void check_weight_rank(std::size_t rank, std::int64_t n) {
  SIMCLR_ENFORCE(rank <= 2, ValueError, "sample_weight of rank ", rank,
                 " is not supported for a [", n,
                 "] loss (Keras would broadcast it to an outer product); pass [N] or [N, 1]");
}

void check_weight_shape(const std::vector<std::int64_t>& shape, std::int64_t size, std::int64_t n) {
  std::int64_t count = 1;
  for (const auto s : shape) {
    SIMCLR_ENFORCE(s >= 0, ValueError, "sample_weight has a negative dimension ", s);
    count *= s;
  }
  SIMCLR_ENFORCE(count == size, ValueError, "sample_weight shape holds ", count, " values but ",
                 size, " were given");
  check_weight_rank(shape.size(), n);
  if (shape.size() == 2) {
    SIMCLR_ENFORCE(shape[1] == 1, ValueError,
                   "Can not squeeze dim[1], expected a dimension of 1, got ", shape[1],
                   " (sample_weight [", shape[0], ", ", shape[1], "] for a [", n, "] loss)");
  }
  if (!shape.empty() && shape[0] != 1)
    SIMCLR_ENFORCE(shape[0] == n, ValueError, "Incompatible shapes: [", n, "] vs. [", shape[0],
                   "]");
  // [0] and [0, 1] for a [0] loss hold no value to broadcast; a scalar-like shape holds one.
}

std::vector<double> broadcast_weight(const SampleWeight* sw, std::int64_t n) {
  if (sw == nullptr) return std::vector<double>(static_cast<std::size_t>(n), 1.0);
  // The shape's own rules first (they name the shapes), then the values.
  check_weight_shape(sw->shape, static_cast<std::int64_t>(sw->values.size()), n);
  for (std::size_t i = 0; i < sw->values.size(); ++i) {
    SIMCLR_ENFORCE(std::isfinite(sw->values[i]), ValueError, "sample_weight has ",
                   std::isnan(sw->values[i]) ? "NaN" : "Inf", " at index ", i);
  }
  if (sw->shape.empty() || sw->shape[0] == 1)
    return std::vector<double>(static_cast<std::size_t>(n), sw->values[0]);
  return sw->values;
}

std::int64_t reduction_denominator(std::int64_t global_batch, std::int64_t pairs,
                                   std::int64_t global_pairs) {
  return global_batch == kNoGlobalBatch      ? pairs
         : global_batch == kInferGlobalBatch ? global_pairs
                                             : global_batch;
}

template <class T>
ReducedLoss<T> reduce_examples(const T* row_lse, const T* row_positive, std::int64_t pairs,
                               const std::vector<double>& weight, Reduction reduction,
                               std::int64_t denominator) {
  const std::int64_t n = pairs;
  ReducedLoss<T> out;
  out.per_example.resize(static_cast<std::size_t>(n));
  std::vector<T> weighted(static_cast<std::size_t>(n));
  double weighted_sum = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const T l = (row_lse[i] - row_positive[i]) + (row_lse[n + i] - row_positive[n + i]);
    out.per_example[i] = l;
    // The weight is rounded to T first, as the C++ front end keeps it.
    weighted[i] = static_cast<T>(l * static_cast<T>(weight[i]));
    weighted_sum += static_cast<double>(weighted[i]);
  }
  if (reduction == Reduction::kSumOverBatchSize) {
    out.values = {
        denominator == 0 ? T(0) : static_cast<T>(weighted_sum / static_cast<double>(denominator))};
    out.objective = static_cast<double>(out.values[0]);
  } else if (reduction == Reduction::kSum) {
    out.values = {static_cast<T>(weighted_sum)};
    out.objective = static_cast<double>(out.values[0]);
  } else {
    out.values = std::move(weighted);
    out.objective = static_cast<double>(static_cast<T>(weighted_sum));
  }
  return out;
}

template <class T>
void pair_alpha(const T* upstream, bool per_example, std::int64_t pairs,
                const std::vector<double>& weight, Reduction reduction, std::int64_t denominator,
                double gradient_scale, T* alpha) {
  const std::int64_t n = pairs;
  const T denom = static_cast<T>(denominator);
  const T scale = static_cast<T>(gradient_scale);
  for (std::int64_t i = 0; i < n; ++i) {
    const T g = per_example ? upstream[i] : upstream[0];
    T a = g * static_cast<T>(weight[static_cast<std::size_t>(i)]);
    if (reduction == Reduction::kSumOverBatchSize) a = denom == 0 ? T(0) : a / denom;
    alpha[i] = alpha[n + i] = a * scale;
  }
}

#define SIMCLR_INSTANTIATE(T)                                                                      \
  template void check_finite<T>(ConstMatrixView<T>, const char*);                                  \
  template void check_view<T>(ConstMatrixView<T>, const char*);                                    \
  template ReducedLoss<T> reduce_examples<T>(const T*, const T*, std::int64_t,                     \
                                             const std::vector<double>&, Reduction, std::int64_t); \
  template void pair_alpha<T>(const T*, bool, std::int64_t, const std::vector<double>&, Reduction, \
                              std::int64_t, double, T*);

SIMCLR_INSTANTIATE(float)
SIMCLR_INSTANTIATE(double)
#undef SIMCLR_INSTANTIATE

}  // namespace simclr::detail

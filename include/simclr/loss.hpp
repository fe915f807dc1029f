#pragma once
// The front end: SimCLRLoss, configured and reduced the Keras way (docs/semantics.md), local or
// through a Communicator (docs/distributed.md).

#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

#include "simclr/communicator.hpp"
#include "simclr/engine.hpp"
#include "simclr/errors.hpp"
#include "simclr/options.hpp"
#include "simclr/types.hpp"

namespace simclr {

// Keras sample_weight: any shape the semantics page allows ([], [N], [N, 1], [1], [1, 1]); values
// in row-major order. Applied to the per-example loss [N] after the rank fix-up, with broadcasting.
struct SampleWeight {
  std::vector<std::int64_t> shape;
  std::vector<double> values;

  SampleWeight() = default;
  SampleWeight(std::vector<std::int64_t> shape_, std::vector<double> values_)
      : shape(std::move(shape_)), values(std::move(values_)) {}
  // A rank-0 weight that scales every example.
  static SampleWeight scalar(double w) { return SampleWeight({}, {w}); }
  // A [N] weight, one per example.
  static SampleWeight per_example(std::vector<double> w) {
    const auto n = static_cast<std::int64_t>(w.size());
    return SampleWeight({n}, std::move(w));
  }
};

// Extra negatives of one call (CallOptions::negatives): K rows [K, d] of the call's dtype
// (row-major, row_stride elements apart; K may be 0), L2-normalised by the call as the views are,
// that join every anchor's candidates as negatives only: never anchors, never positives, and they
// get no gradient (a memory bank's rows are detached). A view of the caller's memory, read during
// the forward only.
struct Negatives {
  const void* data = nullptr;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t row_stride = 0;  // elements; 0: cols
  DType dtype = DType::kFloat32;
  // Distributed calls: this rank's rows only, or every rank's (gathered). Every rank passes the same.
  NegativesScope scope = NegativesScope::kLocal;

  Negatives() = default;
  template <class T>
  explicit Negatives(ConstMatrixView<T> m, NegativesScope scope_ = NegativesScope::kLocal)
      : data(m.data), rows(m.rows), cols(m.cols), row_stride(m.row_stride),
        dtype(dtype_of<T>()), scope(scope_) {}
};

// Options of one call.
struct CallOptions {
  // When set, the call is distributed (collective over every rank of the communicator) and the loss
  // contrasts every anchor with the whole global batch. The communicator must outlive the backward.
  Communicator* communicator = nullptr;
  // Denominator of sum_over_batch_size; required for auto / sum_over_batch_size with a
  // communicator.
  std::optional<GlobalBatchSize> global_batch_size;
  // Distributed calls: the gradient convention (GradientReduction); every rank passes the same.
  GradientReduction gradient_reduction = GradientReduction::kSum;
  // This call's temperature, in place of the loss's (config().temperature): a learnable temperature
  // changes every step without a new loss object. Checked as the constructor's (a finite number > 0,
  // ValueError); distributed, every rank must pass the same (checked). The loss's configuration is
  // not changed: get_config() keeps the constructor's value.
  std::optional<double> temperature;
  // Ask the backward for dJ/dT as well (Gradients::grad_temperature; docs/math.md section 4.6).
  // Without it the backward does exactly the work it always did. Distributed, each rank gets its
  // share of the global dJ/dT under `gradient_reduction` (docs/distributed.md, "Gradient
  // conventions"); ranks may differ in this flag, as it adds no collective.
  bool temperature_gradient = false;
  // Extra negatives (a memory bank); none by default. Their dtype must be the views' (TypeError)
  // and their width d (ValueError); NaN/Inf in them is a ValueError. A distributed call with
  // negatives on any rank runs the own_rows schedule (docs/performance.md, "Schedules").
  Negatives negatives;
  EngineOptions engine;
};

namespace detail {
template <class T>
struct SavedForward;
}

// The result of a forward call, in the input dtype T, plus what the backward needs.
template <class T>
struct LossOutput {
  Reduction reduction = Reduction::kSumOverBatchSize;  // resolved: never kAuto
  // none: the weighted per-example loss [n]; otherwise one element, the reduced loss.
  std::vector<T> values;
  // This rank's objective J_r: the reduced loss, or for none the sum of `values`.
  T objective = 0;
  // Unweighted per-example loss l_i = CE_i(a->[b,a]) + CE_i(b->[a,b]), [n].
  std::vector<T> per_example;
  // Rows of every rank (one entry when local), this rank's first global row, and G.
  std::vector<std::int64_t> rank_rows;
  std::int64_t row_offset = 0;
  std::int64_t global_rows = 0;
  // Extra negatives every anchor of this rank saw (this rank's K, or every rank's for kGlobal).
  std::int64_t negative_rows = 0;
  // The temperature the call ran at: CallOptions::temperature, or the loss's.
  double temperature = 0;
  // Flops the forward performed.
  double flops = 0;

  std::shared_ptr<const detail::SavedForward<T>> saved;  // opaque, for backward()
};

// dJ/dza and dJ/dzb for this rank's rows, [n, d] each, in the input dtype; and, when the forward's
// CallOptions::temperature_gradient was set, dJ/dT (this rank's share when distributed: the shares
// of all ranks add up to the global dJ/dT under GradientReduction::kSum, and average to it under
// kMean, as the embeddings' parameter gradients do).
template <class T>
struct Gradients {
  RowMatrix<T> grad_a;
  RowMatrix<T> grad_b;
  std::optional<T> grad_temperature;
  double flops = 0;
};

// TensorFlow Similarity's SimCLRLoss (NT-Xent, both directions summed) with Keras reductions.
class SimCLRLoss {
 public:
  // Throws ValueError for temperature <= 0, NaN or Inf.
  explicit SimCLRLoss(double temperature = 0.05, Reduction reduction = Reduction::kAuto,
                      std::optional<std::string> name = std::nullopt);
  explicit SimCLRLoss(const LossConfig& config);

  double temperature() const { return config_.temperature; }
  Reduction reduction() const { return config_.reduction; }
  const std::optional<std::string>& name() const { return config_.name; }
  const LossConfig& config() const { return config_; }

  // {"reduction": ..., "name": ..., "temperature": ...} in that key order. The JSON types are only
  // declared here (<nlohmann/json_fwd.hpp>): a caller that uses the value includes
  // <nlohmann/json.hpp>; get_config_string() needs neither.
  nlohmann::ordered_json get_config() const;
  // get_config() as compact JSON text.
  std::string get_config_string() const;
  // Construction from get_config() keys, or the Keras wrapper {"class_name": ..., "config": {...}}.
  // Unknown key: TypeError "...unexpected keyword argument 'k'"; wrong JSON type: TypeError; bad
  // reduction: ValueError "Invalid Reduction Key: ..."; bad temperature: ValueError.
  static SimCLRLoss from_config(const nlohmann::json& config);
  static SimCLRLoss from_config(const nlohmann::ordered_json& config);
  // Same, from JSON text (a parse error is a ValueError).
  static SimCLRLoss from_config_string(const std::string& text);

  // Forward. za, zb: [n, d] (n may be 0), the two views, caller-owned, T = float or double.
  // Collective when options.communicator is set (every rank calls it, in the same order as every
  // other collective call of the library). Bad input on any rank throws the same exception on every
  // rank before any large transfer. Nothing the caller owns is written.
  template <class T>
  LossOutput<T> forward(ConstMatrixView<T> za, ConstMatrixView<T> zb,
                        const SampleWeight* sample_weight = nullptr,
                        const CallOptions& options = {}) const;

  // Backward with a scalar upstream gradient g (sum / sum_over_batch_size; for none it is
  // applied to every example). Collective when the forward was.
  template <class T>
  Gradients<T> backward(const LossOutput<T>& output, T upstream = T(1)) const;
  // Backward with a per-example upstream gradient [n] (reduction none only).
  template <class T>
  Gradients<T> backward(const LossOutput<T>& output, const std::vector<T>& upstream) const;
  // Backward into caller buffers [n, d]; written only when the call succeeds.
  template <class T>
  void backward_into(const LossOutput<T>& output, T upstream, MatrixView<T> grad_a,
                     MatrixView<T> grad_b) const;

  // Forward and the gradient of the objective (upstream 1) in one call. Collective when
  // distributed.
  template <class T>
  std::pair<LossOutput<T>, Gradients<T>> value_and_gradient(
      ConstMatrixView<T> za, ConstMatrixView<T> zb, const SampleWeight* sample_weight = nullptr,
      const CallOptions& options = {}) const;

 private:
  template <class T>
  Gradients<T> backward_alpha(const LossOutput<T>& output, const T* upstream,
                              std::size_t upstream_size, bool per_example) const;

  LossConfig config_;
};

}  // namespace simclr

#pragma once
// The loss's configuration shared by the CPU and device front ends: the Keras reduction keys, the
// global batch size of tf.nn.compute_average_loss, and the constructor arguments. Light on purpose
// (no Eigen, no JSON), so the device header and the C API's users do not pay for them.

#include <cstdint>
#include <optional>
#include <string>

namespace simclr {

// Keras reduction keys. kAuto resolves to kSumOverBatchSize.
enum class Reduction : std::int32_t { kAuto = 0, kNone = 1, kSum = 2, kSumOverBatchSize = 3 };

// "auto", "none", "sum", "sum_over_batch_size".
std::string to_string(Reduction reduction);

// Parses a reduction key (case-sensitive). Throws ValueError "Invalid Reduction Key: <key>. ...".
Reduction parse_reduction(const std::string& key);

// The global batch size of tf.nn.compute_average_loss: a count >= 0, or "infer" (the total number
// of rows over all ranks, found by the agreement step; exact with uneven batches).
class GlobalBatchSize {
 public:
  // Throws ValueError for a negative count.
  static GlobalBatchSize of(std::int64_t rows);
  static GlobalBatchSize infer() { return GlobalBatchSize(-1); }
  bool is_infer() const { return rows_ < 0; }
  std::int64_t rows() const { return rows_; }  // -1 when infer

 private:
  explicit GlobalBatchSize(std::int64_t rows) : rows_(rows) {}
  std::int64_t rows_;
};

// Which rank computes which blocks of the [2G, 2G] logit matrix in a distributed call
// (docs/performance.md, "Schedules"). The result is the same to rounding; the cost is not.
enum class Schedule : std::int32_t {
  // balanced when the cost model says it wins (several ranks, a fixed shift, G large enough for the
  // saved products to pay for the backward's reduce-scatter), otherwise own_rows.
  kAuto = 0,
  // Each rank computes its whole [2n, 2G] row block (the symmetry only of its own diagonal block);
  // the backward exchanges 2 scalars per row.
  kOwnRows = 1,
  // Each pair of rank blocks is computed once, on one rank, spread evenly: every rank does 2/P of
  // the single-process work (to within one block); the forward adds a reduce-scatter of 2G
  // scalars, the backward a reduce-scatter of [2G, d]. Needs the fixed shift of the exponentials
  // (2 / temperature < 80 in float32, < 700 in float64); otherwise own_rows is used.
  kBalanced = 2,
};
// "auto" / "own_rows" / "balanced".
const char* to_string(Schedule schedule);
// The inverse of to_string; ValueError naming the choices otherwise.
Schedule parse_schedule(const std::string& text);

// How a distributed call's gradients are scaled (docs/distributed.md, "Gradient conventions").
// kSum: each rank gets dJ/dz of J = the SUM over ranks of their objectives, which TensorFlow's
// strategies then sum over replicas. kMean: that gradient times the number of ranks, for frameworks
// that AVERAGE the replicas' parameter gradients (DistributedDataParallel, Horovod, jax.lax.pmean):
// their mean is then the sum. Local calls ignore it. Every rank must pass the same (checked).
enum class GradientReduction : std::int32_t { kSum = 0, kMean = 1 };
// "sum" / "mean".
const char* to_string(GradientReduction reduction);
// The inverse of to_string; ValueError naming the choices otherwise.
GradientReduction parse_gradient_reduction(const std::string& text);

// Which extra negatives (CallOptions::negatives) an anchor of a distributed call sees
// (docs/api.md, "Extra negatives"). kLocal: this rank's own rows only. That is lightly's memory bank
// by default (gather_distributed=False: each process enqueues its own keys), and the right choice
// when every rank already holds the same queue (MoCo, lightly with gather_distributed=True: they
// enqueue all-gathered keys). kGlobal: every rank's rows, gathered by the call (one all-gather of
// K_r d elements): each rank stores only its own part of the queue and every anchor sees the
// union. Local calls: the same. Every rank must pass the same (checked).
enum class NegativesScope : std::int32_t { kLocal = 0, kGlobal = 1 };
// "local" / "global".
const char* to_string(NegativesScope scope);
// The inverse of to_string; ValueError naming the choices otherwise.
NegativesScope parse_negatives_scope(const std::string& text);

// Constructor arguments and get_config() content.
struct LossConfig {
  double temperature = 0.05;
  Reduction reduction = Reduction::kAuto;
  // TensorFlow Similarity 0.17 passes no name to Keras, so its default is None (docs/semantics.md).
  std::optional<std::string> name = std::nullopt;
};

// Throws ValueError for a temperature <= 0, NaN or Inf, or a reduction outside the enum: the checks
// of the losses' constructors.
void validate_config(const LossConfig& config);

// Throws ValueError "temperature must be a finite number > 0, got <t>" unless t is one: the check of
// the constructors' temperature and of a call's own (CallOptions::temperature).
void validate_temperature(double temperature);

}  // namespace simclr

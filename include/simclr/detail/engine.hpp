#pragma once
// Core math (docs/math.md sections 3-5): the loss of a set of anchor rows against all rows of the
// stacked, normalised embeddings U, streamed in tiles, and its closed-form gradient. No
// communication here: the front ends (src/frontend/loss.cpp, the C API's step calls) gather U and
// the per-row scalars and call these. Not public API, not installed.

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "simclr/engine.hpp"
#include "simclr/types.hpp"

namespace simclr {

namespace detail {

// Where this rank's anchors sit in U (docs/math.md section 3). U stacks every rank's rows rank by
// rank, [a_0; b_0; a_1; b_1; ...], so a rank's 2n anchors are the contiguous rows [anchor_begin,
// anchor_begin + 2n): first its n rows of view a, then its n rows of view b. The positive of local
// anchor q is local anchor q + n (q < n) or q - n. The loss does not depend on the order of U.
struct RowLayout {
  std::int64_t total_rows = 0;    // 2G, and the extra negatives' rows after them
  std::int64_t anchor_begin = 0;  // 2 * (rows of earlier ranks)
  std::int64_t pairs = 0;         // n
  std::int64_t anchors() const { return 2 * pairs; }
  std::int64_t partner(std::int64_t q) const { return q < pairs ? q + pairs : q - pairs; }
  bool whole() const { return anchor_begin == 0 && anchors() == total_rows; }
};

// What the forward keeps for the backward.
template <class T>
struct EngineForward {
  std::vector<T> row_lse;       // [2n] log-sum-exp over c != q of s_qc
  std::vector<T> row_positive;  // [2n] s_{q, p(q)}
  RowMatrix<T> logits;  // [2n, 2G] with -inf on the self entries, kept when it fit the budget
  double flops = 0;     // multiply-adds * 2 actually performed
};

// Forward over the anchors of `layout` against all rows of u ([2G, d], unit rows, contiguous:
// row_stride == cols; a view of the caller's memory, never copied), logits scaled by
// inv_temperature.
template <class T>
EngineForward<T> engine_forward(ConstMatrixView<T> u, const RowLayout& layout, T inv_temperature,
                                const EngineOptions& options);

// What the backward reads: the forward's inputs and result, and every row's LSE and weight alpha in
// U order (gathered from every rank).
template <class T>
struct EngineBackwardArgs {
  ConstMatrixView<T> u;  // [2G, d] unit rows, contiguous, as given to engine_forward
  RowLayout layout;
  T inv_temperature = T(1);
  const T* lse_all = nullptr;               // [2G]
  const T* alpha_all = nullptr;             // [2G]
  const EngineForward<T>* saved = nullptr;  // this rank's engine_forward
  EngineOptions options;
  // The last `negatives` rows of u are extra negatives (lse_all and alpha_all give them weight 0).
  // When negatives_dot is set, the backward also writes the sum over this rank's anchors q and those
  // rows c of alpha_q P_qc s_qc (their part of docs/math.md section 4.7's identity), in double, at
  // no extra product: the terms come from the tiles the backward walks anyway.
  std::int64_t negatives = 0;
  double* negatives_dot = nullptr;
};

// Backward: dJ/du for this rank's anchors ([2n, d]) where J = sum_q alpha_q CE_q over ALL 2G rows
// (docs/math.md section 4). Returns the flops performed.
template <class T>
double engine_backward(const EngineBackwardArgs<T>& args, RowMatrix<T>& grad_anchors);

// This rank's share of dJ/dT (docs/math.md section 4.6): J depends on U and T only through
// U U^T / T, so sum_k u_k . dJ/du_k = -2 T dJ/dT over all 2G rows; a rank's share is the sum over
// its own anchors, -(1 / (2 T)) sum_q u_q . dJ/du_q, and the shares of all ranks add up to dJ/dT.
// anchors: this rank's [rows, d] unit rows (row stride d); grad: engine_backward's [rows, d].
// Accumulated in double.
// `extra`: the sum of u_k . dJ/du_k over rows of U whose gradient is not in `grad` (the extra
// negatives: EngineBackwardArgs::negatives_dot), added before the scaling.
template <class T>
double temperature_gradient_share(const T* anchors, const T* grad, std::int64_t rows,
                                  std::int64_t dim, double temperature, double extra = 0);


// ---- the balanced schedule (docs/performance.md) ----

// Whether the fixed shift applies at this inverse temperature (the balanced forward's statistics
// are then plain sums).
template <class T>
bool has_fixed_shift(T inv_temperature);
// The shift itself (just above the largest logit, 1 / temperature), NaN where it does not apply.
template <class T>
T fixed_shift_of(T inv_temperature);

// Resolves kAuto from the cost model: `rank_pairs` is n of every rank (agreed), d the dimension,
// elem the bytes of T; `native_reduce_scatter` false when the communicator's reduce-scatter is the
// all_gather_v default (size() times the bytes). Identical on every rank. Never kAuto.
Schedule resolve_schedule(Schedule requested, const std::vector<std::int64_t>& rank_pairs,
                          std::int64_t dim, std::size_t elem, bool fixed_shift,
                          bool native_reduce_scatter = true);

// The off-diagonal blocks `rank` computes under the balanced schedule, 4 U row indices each
// (rows [r0, r1) against rows [c0, c1)): rank r takes the pairs (r, r + k mod P) for
// k = 1..(P-1)/2; for even P the pair at distance P/2 is split, rank r < P/2 taking the first half
// of its own rows against the partner's, the partner the rest. Every pair is covered exactly once.
std::vector<std::int64_t> balanced_blocks(const std::vector<std::int64_t>& rank_pairs, int rank);

// Balanced forward: this rank's diagonal block (row_lse / row_positive of its anchors as
// engine_forward, but over the diagonal block only) and its off-diagonal blocks. `sums` [2G] is set
// to this rank's contribution to every row's sum of exp(s - shift); summed over ranks
// (reduce-scatter) it gives the full statistic, which balanced_lse turns into the LSE.
template <class T>
EngineForward<T> engine_forward_balanced(ConstMatrixView<T> u, const RowLayout& layout,
                                         T inv_temperature, const EngineOptions& options,
                                         const std::vector<std::int64_t>& blocks,
                                         std::vector<T>& sums);

// LSE_q = shift + log(sum_q) for `count` rows.
template <class T>
void balanced_lse(T inv_temperature, const T* sums, std::int64_t count, T* lse);

// Balanced backward: grad_all [2G, d] is set to this rank's contribution to every row's gradient
// (its diagonal block on its anchors, its off-diagonal blocks on both sides); summed over ranks
// (reduce-scatter) it gives dJ/du. Returns the flops performed.
template <class T>
double engine_backward_balanced(const EngineBackwardArgs<T>& args,
                                const std::vector<std::int64_t>& blocks, RowMatrix<T>& grad_all);

// The instruction sets the engine's tile loops were compiled for, chosen at run time: the widest
// this CPU supports, unless the environment variable SIMCLR_CPU_DISPATCH (baseline, avx2, avx512)
// names one (ValueError at the first engine call when that level is not built or not supported).
// baseline is the build's own target (x86-64-v2 unless SIMCLR_NATIVE); avx2 is x86-64-v3 (AVX2,
// FMA); avx512 is x86-64-v4 (AVX-512 F/BW/CD/DQ/VL).
enum class CpuLevel : std::int32_t { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

// "baseline" / "avx2" / "avx512".
const char* to_string(CpuLevel level);
// The levels built into this library that this CPU can run, ascending (baseline first).
std::vector<CpuLevel> supported_cpu_levels();
// The level the engine uses now.
CpuLevel cpu_level();
// Makes the engine use `level` from now on, process-wide (tests and measurements); ValueError when
// it is not in supported_cpu_levels(). Not thread-safe against concurrent engine calls.
void set_cpu_level(CpuLevel level);

// C = A B of [n, n] row-major matrices with Eigen's GEMM on `threads` OpenMP threads (0: 1),
// compiled for and run at cpu_level(), as the tile loops are: the machine's reference rate that
// `simclr-loss bench` reports (gemm_gflops) and divides the engine's rate by.
template <class T>
void reference_gemm(const T* a, const T* b, T* c, std::int64_t n, int threads);

// Row-wise L2 normalisation as tf.math.l2_normalize(x, axis=1): out = x * rsqrt(max(sum x^2,
// 1e-12)). Writes out rows [0, x.rows) and the squared norms.
template <class T>
void l2_normalize_rows(ConstMatrixView<T> x, T* out, std::int64_t out_stride, T* squared_norms);

// Backward of l2_normalize_rows (docs/math.md section 4.5): dx = (g - xhat (xhat . g)) / sqrt(nrm2)
// when nrm2 >= 1e-12 (TensorFlow's maximum gradient at a tie), else g / sqrt(1e-12).
template <class T>
void l2_normalize_backward(const T* xhat, std::int64_t xhat_stride, const T* squared_norms,
                           const T* grad_xhat, std::int64_t grad_stride, std::int64_t rows,
                           std::int64_t cols, T* out, std::int64_t out_stride);

}  // namespace detail

}  // namespace simclr

// Core math of the loss (docs/math.md sections 3-5): checks the options, decides whether to keep
// the logits, and hands the tile loops (engine_kernels.cpp) to the widest instruction set this CPU
// runs. The normalisation lives here too; it is not where the time goes.

#include "simclr/detail/engine.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "engine_kernels.hpp"
#include "simclr/detail/check.hpp"

namespace simclr::detail {
namespace {

constexpr std::int64_t kDefaultTileRows = 128;
constexpr std::int64_t kDefaultTileCols = 1024;

int resolve_threads(const EngineOptions& options) {
  SIMCLR_ENFORCE(options.threads >= 0 && options.threads <= 4096, ValueError,
                 "threads must be in [0, 4096] (0: what the process is allowed), got ",
                 options.threads);
#ifdef _OPENMP
  return options.threads > 0 ? options.threads : omp_get_max_threads();
#else
  return 1;
#endif
}

std::int64_t resolve(std::int64_t value, std::int64_t fallback, const char* what) {
  SIMCLR_ENFORCE(value >= 0, ValueError, what, " must be >= 0, got ", value);
  return value > 0 ? value : fallback;
}

// Whether a [rows, cols] logits block of T fits the budget (without overflow).
bool fits_budget(std::int64_t rows, std::int64_t cols, std::size_t elem, std::size_t budget) {
  if (rows == 0 || cols == 0) return true;
  const double bytes =
      static_cast<double>(rows) * static_cast<double>(cols) * static_cast<double>(elem);
  return bytes <= static_cast<double>(budget);
}

// The fixed shift of the exponentials, as engine_kernels.cpp's fixed_shift (NaN: none).
template <class T>
T fixed_shift(T inv_t) {
  const T limit = sizeof(T) == 4 ? T(80) : T(700);
  return 2 * inv_t < limit ? inv_t * (T(1) + T(1e-6)) : std::numeric_limits<T>::quiet_NaN();
}

// beta_q = alpha_q exp(shift - LSE_q) for every row of U, or empty when the fixed shift cannot be
// used (no shift, or a weight so large that beta would overflow).
template <class T>
std::vector<T> make_beta(std::int64_t rows, T shift, const T* lse_all, const T* alpha_all) {
  std::vector<T> beta;
  if (std::isnan(shift)) return beta;
  beta.resize(static_cast<std::size_t>(rows));
  const T limit = std::numeric_limits<T>::max() / 16;
  for (std::int64_t q = 0; q < rows; ++q) {
    beta[q] = alpha_all[q] * std::exp(shift - lse_all[q]);
    if (!(std::abs(beta[q]) < limit)) return {};
  }
  return beta;
}

template <class T>
kernels::TileProblem<T> tile_problem(ConstMatrixView<T> u, const RowLayout& layout, T inv_t,
                                     const EngineOptions& options) {
  // The front ends build u and the layout together: a mismatch is a bug of theirs, not bad input.
  SIMCLR_CHECK_EQ(u.rows, layout.total_rows);
  SIMCLR_CHECK(u.rows <= 1 || u.row_stride == u.cols);  // the tile loops read contiguous rows
  SIMCLR_CHECK(u.rows == 0 || u.cols == 0 || u.data != nullptr);
  kernels::TileProblem<T> p;
  p.u = u.data;
  p.total_rows = layout.total_rows;
  p.dim = u.cols;
  p.anchor_begin = layout.anchor_begin;
  p.pairs = layout.pairs;
  p.inv_temperature = inv_t;
  p.threads = resolve_threads(options);
  p.tile_rows = resolve(options.tile_rows, kDefaultTileRows, "tile_rows");
  p.tile_cols = resolve(options.tile_cols, kDefaultTileCols, "tile_cols");
  p.symmetric = options.symmetric;
  return p;
}

// ---- run-time choice of the tile loops' instruction set ----

#if defined(SIMCLR_ENGINE_HAS_AVX2) || defined(SIMCLR_ENGINE_HAS_AVX512)
// __builtin_cpu_supports also checks that the OS saves the wider registers (XCR0). x86-64-v3 also
// assumes F16C, LZCNT and MOVBE, which every CPU with AVX2, FMA and BMI2 has (and which clang 14's
// builtin cannot name).
bool cpu_runs(CpuLevel level) {
  __builtin_cpu_init();
  switch (level) {
    case CpuLevel::kBaseline:
      return true;
    case CpuLevel::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("bmi2");
    case CpuLevel::kAvx512:
      return cpu_runs(CpuLevel::kAvx2) && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512cd") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  }
  return false;
}
#endif

bool built(CpuLevel level) {
  switch (level) {
    case CpuLevel::kBaseline:
      return true;
    case CpuLevel::kAvx2:
#ifdef SIMCLR_ENGINE_HAS_AVX2
      return cpu_runs(level);
#else
      return false;
#endif
    case CpuLevel::kAvx512:
#ifdef SIMCLR_ENGINE_HAS_AVX512
      return cpu_runs(level);
#else
      return false;
#endif
  }
  return false;
}

std::string level_list() {
  std::string out;
  for (CpuLevel level : supported_cpu_levels())
    out += std::string(out.empty() ? "" : ", ") + to_string(level);
  return out;
}

// -1: not chosen yet. The first engine call chooses (SIMCLR_CPU_DISPATCH or the widest).
std::atomic<int> chosen_level{-1};

CpuLevel choose_level() {
  const char* env = std::getenv("SIMCLR_CPU_DISPATCH");
  if (env != nullptr && *env != '\0') {
    for (CpuLevel level : {CpuLevel::kBaseline, CpuLevel::kAvx2, CpuLevel::kAvx512}) {
      if (std::strcmp(env, to_string(level)) != 0) continue;
      SIMCLR_ENFORCE(built(level), ValueError, "SIMCLR_CPU_DISPATCH=", env,
                     " is not available in this build on this CPU (available: ", level_list(),
                     "); unset it or name one of those");
      return level;
    }
    throw ValueError(str_cat(
        "SIMCLR_CPU_DISPATCH=", env,
        " is not a CPU level; use baseline, avx2 or avx512 (available here: ", level_list(), ")"));
  }
  return supported_cpu_levels().back();
}

template <class T>
double run_forward(const kernels::ForwardArgs<T>& args) {
  switch (cpu_level()) {
    case CpuLevel::kAvx512:
#ifdef SIMCLR_ENGINE_HAS_AVX512
      return kernels::avx512::forward(args);
#endif
    case CpuLevel::kAvx2:
#ifdef SIMCLR_ENGINE_HAS_AVX2
      return kernels::avx2::forward(args);
#endif
    case CpuLevel::kBaseline:
      break;
  }
  return kernels::baseline::forward(args);
}

template <class T>
double run_backward(const kernels::BackwardArgs<T>& args) {
  switch (cpu_level()) {
    case CpuLevel::kAvx512:
#ifdef SIMCLR_ENGINE_HAS_AVX512
      return kernels::avx512::backward(args);
#endif
    case CpuLevel::kAvx2:
#ifdef SIMCLR_ENGINE_HAS_AVX2
      return kernels::avx2::backward(args);
#endif
    case CpuLevel::kBaseline:
      break;
  }
  return kernels::baseline::backward(args);
}

template <class T>
double run_pair(const kernels::PairArgs<T>& args, bool backward) {
  switch (cpu_level()) {
    case CpuLevel::kAvx512:
#ifdef SIMCLR_ENGINE_HAS_AVX512
      return backward ? kernels::avx512::pair_backward(args) : kernels::avx512::pair_forward(args);
#endif
    case CpuLevel::kAvx2:
#ifdef SIMCLR_ENGINE_HAS_AVX2
      return backward ? kernels::avx2::pair_backward(args) : kernels::avx2::pair_forward(args);
#endif
    case CpuLevel::kBaseline:
      break;
  }
  return backward ? kernels::baseline::pair_backward(args) : kernels::baseline::pair_forward(args);
}

// The cost model's machine (docs/performance.md): flop rate of one rank, bytes per second of its
// link, and the latency of one collective. Conservative for the link (10 Gb/s Ethernet) and the
// rank (one core), so auto leaves own_rows only where balanced cannot win on any usual machine.
constexpr double kRankFlops = 5e10;
constexpr double kLinkBytes = 1.25e9;
constexpr double kLatency = 5e-5;

}  // namespace

template <class T>
bool has_fixed_shift(T inv_temperature) {
  return !std::isnan(fixed_shift(inv_temperature));
}

template <class T>
T fixed_shift_of(T inv_temperature) {
  return fixed_shift(inv_temperature);
}

Schedule resolve_schedule(Schedule requested, const std::vector<std::int64_t>& rank_pairs,
                          std::int64_t dim, std::size_t elem, bool shift,
                          bool native_reduce_scatter) {
  SIMCLR_ENFORCE(requested == Schedule::kAuto || requested == Schedule::kOwnRows ||
                     requested == Schedule::kBalanced,
                 ValueError, "EngineOptions::schedule has the invalid value ",
                 static_cast<int>(requested), "; use auto, own_rows or balanced");
  const auto p = static_cast<double>(rank_pairs.size());
  if (!shift || rank_pairs.size() < 2) return Schedule::kOwnRows;
  if (requested != Schedule::kAuto) return requested;
  double g = 0;
  for (const std::int64_t n : rank_pairs) g += static_cast<double>(n);
  const double d = static_cast<double>(dim);
  // Per rank: own_rows does (3P - 1) / P^2 of E = 8 G^2 d flops, balanced 2 / P; balanced moves
  // (P - 1) / P of 2 G d elements more and makes one more collective in each direction.
  const double saved = (p - 1) / (p * p) * 8 * g * g * d / kRankFlops;
  const double volume = native_reduce_scatter ? 1.0 : p;  // the all_gather_v default moves P times
  const double extra =
      volume * (p - 1) / p * 2 * g * d * static_cast<double>(elem) / kLinkBytes + 2 * kLatency;
  return saved > extra ? Schedule::kBalanced : Schedule::kOwnRows;
}

std::vector<std::int64_t> balanced_blocks(const std::vector<std::int64_t>& rank_pairs, int rank) {
  const auto p = static_cast<int>(rank_pairs.size());
  std::vector<std::int64_t> begin(rank_pairs.size() + 1, 0);
  for (int r = 0; r < p; ++r) begin[r + 1] = begin[r] + 2 * rank_pairs[static_cast<std::size_t>(r)];
  std::vector<std::int64_t> out;
  auto add = [&](std::int64_t r0, std::int64_t r1, std::int64_t c0, std::int64_t c1) {
    if (r1 > r0 && c1 > c0) out.insert(out.end(), {r0, r1, c0, c1});
  };
  for (int k = 1; 2 * k < p; ++k) {
    const int s = (rank + k) % p;
    add(begin[rank], begin[rank + 1], begin[s], begin[s + 1]);
  }
  if (p % 2 == 0 && p >= 2) {
    const int half = p / 2;
    const int r = rank < half ? rank : rank - half, s = r + half;
    const std::int64_t split = begin[r] + rank_pairs[static_cast<std::size_t>(r)];
    if (rank == r) {
      add(begin[r], split, begin[s], begin[s + 1]);
    } else {
      add(begin[s], begin[s + 1], split, begin[r + 1]);
    }
  }
  return out;
}

template <class T>
double temperature_gradient_share(const T* anchors, const T* grad, std::int64_t rows,
                                  std::int64_t dim, double temperature, double extra) {
  double dot = extra;
  for (std::int64_t q = 0; q < rows * dim; ++q)
    dot += static_cast<double>(anchors[q]) * static_cast<double>(grad[q]);
  return -dot / (2 * temperature);
}

template <class T>
EngineForward<T> engine_forward_balanced(ConstMatrixView<T> u, const RowLayout& layout,
                                         T inv_temperature, const EngineOptions& options,
                                         const std::vector<std::int64_t>& blocks,
                                         std::vector<T>& sums) {
  SIMCLR_CHECK(has_fixed_shift(inv_temperature));
  const std::int64_t na = layout.anchors();
  EngineForward<T> out;
  out.row_lse.assign(static_cast<std::size_t>(na), T(0));
  out.row_positive.assign(static_cast<std::size_t>(na), T(0));
  sums.assign(static_cast<std::size_t>(layout.total_rows), T(0));
  const kernels::TileProblem<T> problem = tile_problem(u, layout, inv_temperature, options);
  if (na > 0) {
    kernels::ForwardArgs<T> args;
    args.problem = problem;
    args.problem.own_block_only = true;
    args.row_lse = out.row_lse.data();
    args.row_positive = out.row_positive.data();
    args.row_sum = sums.data() + layout.anchor_begin;
    out.flops = run_forward(args);
  }
  kernels::PairArgs<T> pair;
  pair.problem = problem;
  pair.blocks = blocks.data();
  pair.count = static_cast<std::int64_t>(blocks.size() / 4);
  pair.sums = sums.data();
  out.flops += run_pair(pair, false);
  return out;
}

template <class T>
void balanced_lse(T inv_temperature, const T* sums, std::int64_t count, T* lse) {
  const T shift = fixed_shift(inv_temperature);
  for (std::int64_t q = 0; q < count; ++q) lse[q] = shift + std::log(sums[q]);
}

template <class T>
double engine_backward_balanced(const EngineBackwardArgs<T>& in,
                                const std::vector<std::int64_t>& blocks, RowMatrix<T>& grad_all) {
  SIMCLR_CHECK(in.saved != nullptr);
  const RowLayout& layout = in.layout;
  SIMCLR_CHECK_EQ(in.u.rows, layout.total_rows);
  const std::int64_t na = layout.anchors(), d = in.u.cols;
  grad_all.setZero(layout.total_rows, d);
  const std::vector<T> beta =
      make_beta(layout.total_rows, fixed_shift(in.inv_temperature), in.lse_all, in.alpha_all);
  const kernels::TileProblem<T> problem =
      tile_problem(in.u, layout, in.inv_temperature, in.options);
  kernels::PairArgs<T> pair;
  pair.problem = problem;
  pair.blocks = blocks.data();
  pair.count = static_cast<std::int64_t>(blocks.size() / 4);
  pair.lse_all = in.lse_all;
  pair.alpha_all = in.alpha_all;
  pair.beta_all = beta.empty() ? nullptr : beta.data();
  pair.grad = grad_all.data();
  double flops = run_pair(pair, true);
  if (na > 0) {
    RowMatrix<T> own;
    own.setZero(na, d);
    kernels::BackwardArgs<T> args;
    args.problem = problem;
    args.problem.own_block_only = true;
    args.lse_all = in.lse_all;
    args.alpha_all = in.alpha_all;
    args.beta_all = pair.beta_all;
    args.grad = own.data();
    flops += run_backward(args);
    grad_all.middleRows(layout.anchor_begin, na) += own;
  }
  return flops;
}

const char* to_string(CpuLevel level) {
  switch (level) {
    case CpuLevel::kBaseline:
      return "baseline";
    case CpuLevel::kAvx2:
      return "avx2";
    case CpuLevel::kAvx512:
      return "avx512";
  }
  return "unknown";
}

std::vector<CpuLevel> supported_cpu_levels() {
  std::vector<CpuLevel> out;
  for (CpuLevel level : {CpuLevel::kBaseline, CpuLevel::kAvx2, CpuLevel::kAvx512})
    if (built(level)) out.push_back(level);
  return out;
}

CpuLevel cpu_level() {
  int level = chosen_level.load(std::memory_order_acquire);
  if (level < 0) {
    level = static_cast<int>(choose_level());
    chosen_level.store(level, std::memory_order_release);
  }
  return static_cast<CpuLevel>(level);
}

void set_cpu_level(CpuLevel level) {
  SIMCLR_ENFORCE(built(level), ValueError, "CPU level ", to_string(level),
                 " is not available in this build on this CPU (available: ", level_list(), ")");
  chosen_level.store(static_cast<int>(level), std::memory_order_release);
}

template <class T>
void reference_gemm(const T* a, const T* b, T* c, std::int64_t n, int threads) {
  SIMCLR_CHECK_GE(n, 0);
  switch (cpu_level()) {
    case CpuLevel::kAvx512:
#ifdef SIMCLR_ENGINE_HAS_AVX512
      return kernels::avx512::square_gemm(a, b, c, n, std::max(threads, 1));
#endif
    case CpuLevel::kAvx2:
#ifdef SIMCLR_ENGINE_HAS_AVX2
      return kernels::avx2::square_gemm(a, b, c, n, std::max(threads, 1));
#endif
    case CpuLevel::kBaseline:
      break;
  }
  kernels::baseline::square_gemm(a, b, c, n, std::max(threads, 1));
}

template <class T>
EngineForward<T> engine_forward(ConstMatrixView<T> u, const RowLayout& layout, T inv_temperature,
                                const EngineOptions& options) {
  SIMCLR_CHECK_GE(layout.anchor_begin, 0);
  SIMCLR_CHECK_LE(layout.anchor_begin + layout.anchors(), layout.total_rows);
  const std::int64_t na = layout.anchors();
  EngineForward<T> out;
  out.row_lse.assign(static_cast<std::size_t>(na), T(0));
  out.row_positive.assign(static_cast<std::size_t>(na), T(0));
  if (na == 0) return out;
  kernels::ForwardArgs<T> args;
  args.problem = tile_problem(u, layout, inv_temperature, options);
  // Keeping the block saves the backward's recomputation, but in a single process the streamed
  // symmetric path does the same number of products (1/2 + 3/2 versus 1 + 1) in far less memory, so
  // keeping only pays where the symmetric part is a fraction of the block (several ranks).
  const bool symmetric_covers_all = options.symmetric && layout.whole();
  if (!symmetric_covers_all &&
      fits_budget(na, layout.total_rows, sizeof(T), options.memory_budget_bytes)) {
    out.logits.resize(na, layout.total_rows);
    args.logits = out.logits.data();
  }
  args.row_lse = out.row_lse.data();
  args.row_positive = out.row_positive.data();
  out.flops = run_forward(args);
  return out;
}

template <class T>
double engine_backward(const EngineBackwardArgs<T>& in, RowMatrix<T>& grad_anchors) {
  SIMCLR_CHECK(in.saved != nullptr);
  const RowLayout& layout = in.layout;
  SIMCLR_CHECK_EQ(in.u.rows, layout.total_rows);
  SIMCLR_CHECK_LE(layout.anchor_begin + layout.anchors(), layout.total_rows);
  const std::int64_t na = layout.anchors();
  grad_anchors.setZero(na, in.u.cols);
  if (na == 0) return 0;
  kernels::BackwardArgs<T> args;
  args.problem = tile_problem(in.u, layout, in.inv_temperature, in.options);
  const std::vector<T> beta =
      make_beta(layout.total_rows, fixed_shift(in.inv_temperature), in.lse_all, in.alpha_all);
  args.lse_all = in.lse_all;
  args.alpha_all = in.alpha_all;
  args.beta_all = beta.empty() ? nullptr : beta.data();
  const RowMatrix<T>& logits = in.saved->logits;
  if (logits.rows() == na && logits.cols() == layout.total_rows) {
    args.logits = logits.data();
    args.problem.tile_cols = kDefaultTileCols;  // the kept block is read in default-width tiles
  }
  args.grad = grad_anchors.data();
  if (in.negatives_dot != nullptr) {
    SIMCLR_CHECK(in.negatives >= 0 && in.negatives <= layout.total_rows);
    *in.negatives_dot = 0;
    args.negatives_dot = in.negatives_dot;
    args.negatives_begin = layout.total_rows - in.negatives;
  }
  return run_backward(args);
}

template <class T>
void l2_normalize_rows(ConstMatrixView<T> x, T* out, std::int64_t out_stride, T* squared_norms) {
  for (std::int64_t i = 0; i < x.rows; ++i) {
    Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>> row(x.row(i), x.cols);
    Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>> dst(out + i * out_stride, x.cols);
    const T nrm2 = row.squaredNorm();
    squared_norms[i] = nrm2;
    dst = row * (T(1) / std::sqrt(std::max(nrm2, T(1e-12))));
  }
}

template <class T>
void l2_normalize_backward(const T* xhat, std::int64_t xhat_stride, const T* squared_norms,
                           const T* grad_xhat, std::int64_t grad_stride, std::int64_t rows,
                           std::int64_t cols, T* out, std::int64_t out_stride) {
  using Row = Eigen::Matrix<T, 1, Eigen::Dynamic>;
  for (std::int64_t i = 0; i < rows; ++i) {
    Eigen::Map<const Row> h(xhat + i * xhat_stride, cols), g(grad_xhat + i * grad_stride, cols);
    Eigen::Map<Row> dst(out + i * out_stride, cols);
    const T nrm2 = squared_norms[i];
    // >=, not >: TensorFlow's gradient of maximum(a, b) goes to a when a >= b, so at the clamp
    // itself the gradient still flows through the norm (docs/math.md section 4.5).
    if (nrm2 >= T(1e-12)) {
      dst = (g - h * h.dot(g)) / std::sqrt(nrm2);
    } else {
      dst = g / std::sqrt(T(1e-12));
    }
  }
}

#define SIMCLR_INSTANTIATE(T)                                                                      \
  template EngineForward<T> engine_forward<T>(ConstMatrixView<T>, const RowLayout&, T,             \
                                              const EngineOptions&);                               \
  template double engine_backward<T>(const EngineBackwardArgs<T>&, RowMatrix<T>&);                 \
  template void l2_normalize_rows<T>(ConstMatrixView<T>, T*, std::int64_t, T*);                    \
  template void l2_normalize_backward<T>(const T*, std::int64_t, const T*, const T*, std::int64_t, \
                                         std::int64_t, std::int64_t, T*, std::int64_t);            \
  template double temperature_gradient_share<T>(const T*, const T*, std::int64_t, std::int64_t,    \
                                                double, double);                                   \
  template bool has_fixed_shift<T>(T);                                                             \
  template T fixed_shift_of<T>(T);                                                                 \
  template EngineForward<T> engine_forward_balanced<T>(                                            \
      ConstMatrixView<T>, const RowLayout&, T, const EngineOptions&,                               \
      const std::vector<std::int64_t>&, std::vector<T>&);                                          \
  template void balanced_lse<T>(T, const T*, std::int64_t, T*);                                    \
  template double engine_backward_balanced<T>(const EngineBackwardArgs<T>&,                        \
                                              const std::vector<std::int64_t>&, RowMatrix<T>&);    \
  template void reference_gemm<T>(const T*, const T*, T*, std::int64_t, int);

SIMCLR_INSTANTIATE(float)
SIMCLR_INSTANTIATE(double)
#undef SIMCLR_INSTANTIATE

}  // namespace simclr::detail

namespace simclr {

const char* to_string(Schedule schedule) {
  switch (schedule) {
    case Schedule::kAuto:
      return "auto";
    case Schedule::kOwnRows:
      return "own_rows";
    case Schedule::kBalanced:
      return "balanced";
  }
  return "unknown";
}

Schedule parse_schedule(const std::string& text) {
  for (Schedule s : {Schedule::kAuto, Schedule::kOwnRows, Schedule::kBalanced})
    if (text == to_string(s)) return s;
  throw ValueError(detail::str_cat("schedule '", text, "' is not one of auto, own_rows, balanced"));
}

}  // namespace simclr

// Core math of the loss (docs/math.md sections 3-5): tiled logits, online log-sum-exp, and the
// closed-form backward that applies M (section 4.2) tile by tile without materialising it.

#include "simclr/engine.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "simclr/detail/check.hpp"

namespace simclr::detail {
namespace {

constexpr std::int64_t kDefaultRowBlock = 128;
constexpr std::int64_t kDefaultColTile = 1024;

template <class T>
using Array = Eigen::Array<T, Eigen::Dynamic, 1>;

// Inside our parallel regions Eigen's products must not start their own threads: with a team of one
// thread Eigen would (it only checks the team size), oversubscribing the cores the caller allowed.
// omp_set_num_threads inside a region sets the calling thread's ICV only, for nested regions.
inline void single_threaded_eigen() {
#ifdef _OPENMP
  omp_set_num_threads(1);
#endif
}

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

// Running (max, sum) of one row's log-sum-exp, merged with a tile's (max,
// sum-relative-to-that-max).
template <class T>
inline void lse_merge(T& run_max, T& run_sum, T tile_max, T tile_sum) {
  if (tile_max == -std::numeric_limits<T>::infinity()) return;
  if (tile_max <= run_max) {
    run_sum += tile_sum * std::exp(tile_max - run_max);
  } else {
    run_sum = run_sum * std::exp(run_max - tile_max) + tile_sum;
    run_max = tile_max;
  }
}

// The shift of the exponentials. Unit rows bound every logit by |s| <= 1/T, so when exp(-2/T) is a
// normal number of T (float: 2/T < 80, double: 2/T < 700) the constant 1/T can serve every row and
// column: one exponential per logit feeds both the row and the column sums, and the backward needs
// one exponential per logit instead of two. Otherwise (tiny temperatures) each row keeps a running
// max.
template <class T>
T fixed_shift(T inv_t) {
  const T limit = sizeof(T) == 4 ? T(80) : T(700);
  return 2 * inv_t < limit ? inv_t * (T(1) + T(1e-6)) : std::numeric_limits<T>::quiet_NaN();
}

// Row-side statistics of a tile: per row, its max (or the fixed shift) and sum of exp(s - max).
// Entries are -inf where masked; a row with no live entry gets max -inf and sum 0.
template <class T, class Tile>
void tile_row_stats(const Tile& s, T shift, Array<T>& row_max, Array<T>& row_sum) {
  const T ninf = -std::numeric_limits<T>::infinity();
  if (!std::isnan(shift)) {
    row_max.setConstant(s.rows(), shift);
    row_sum = (s.array() - shift).exp().rowwise().sum();
    return;
  }
  row_max = s.array().rowwise().maxCoeff();
  Array<T> safe = (row_max == ninf).select(Array<T>::Zero(row_max.size()), row_max);
  row_sum = (s.array().colwise() - safe).exp().rowwise().sum();
}

// Row- and column-side statistics of an off-diagonal tile of the symmetric path.
template <class T, class Tile>
void tile_row_col_stats(const Tile& s, T shift, RowMatrix<T>& ebuf, Array<T>& row_max,
                        Array<T>& row_sum, Array<T>& col_max, Array<T>& col_sum) {
  const T ninf = -std::numeric_limits<T>::infinity();
  if (!std::isnan(shift)) {
    auto e = ebuf.block(0, 0, s.rows(), s.cols());
    e.array() = (s.array() - shift).exp();
    row_max.setConstant(s.rows(), shift);
    col_max.setConstant(s.cols(), shift);
    row_sum = e.array().rowwise().sum();
    col_sum = e.array().colwise().sum().transpose();
    return;
  }
  tile_row_stats(s, shift, row_max, row_sum);
  col_max = s.array().colwise().maxCoeff().transpose();
  Array<T> safe = (col_max == ninf).select(Array<T>::Zero(col_max.size()), col_max);
  col_sum = (s.array().rowwise() - safe.transpose()).exp().colwise().sum().transpose();
}

// s_qc for anchors [q0, q0 + rows) of the layout against U rows [c0, c0 + cols), with the self
// entries set to -inf; records the positives that fall in the tile.
template <class T, class Tile>
void logits_tile(const RowMatrix<T>& u, const RowLayout& layout, T inv_t, std::int64_t q0,
                 std::int64_t rows, std::int64_t c0, std::int64_t cols, Tile&& s, T* row_positive) {
  s.noalias() =
      inv_t * (u.middleRows(layout.anchor_begin + q0, rows) * u.middleRows(c0, cols).transpose());
  const T ninf = -std::numeric_limits<T>::infinity();
  for (std::int64_t i = 0; i < rows; ++i) {
    const std::int64_t q = q0 + i;
    const std::int64_t self = layout.anchor_begin + q - c0;
    if (self >= 0 && self < cols) s(i, self) = ninf;
    const std::int64_t pos = layout.anchor_begin + layout.partner(q) - c0;
    if (row_positive != nullptr && pos >= 0 && pos < cols) row_positive[q] = s(i, pos);
  }
}

// M tile (docs/math.md sections 4.2 and 4.4) from a logits tile, into m:
// M_kc = a_k exp(s_kc - LSE_k) + a_c exp(s_kc - LSE_c) - (a_k + a_c) [c == p(k)].
// With a fixed shift and beta_q = a_q exp(shift - LSE_q) this is exp(s_kc - shift) (beta_k +
// beta_c): one exponential per logit.
template <class T, class Tile, class Out>
void m_tile(const Tile& s, const RowLayout& layout, std::int64_t q0, std::int64_t c0,
            const T* lse_all, const T* alpha_all, T shift, const T* beta_all, Out&& m) {
  const std::int64_t rows = s.rows(), cols = s.cols();
  const std::int64_t g0 = layout.anchor_begin + q0;
  if (beta_all != nullptr) {
    Eigen::Map<const Array<T>> beta_c(beta_all + c0, cols);
    for (std::int64_t i = 0; i < rows; ++i) {
      m.row(i).array() = (s.row(i).array() - shift).exp() * (beta_c.transpose() + beta_all[g0 + i]);
    }
  } else {
    Eigen::Map<const Array<T>> lse_r(lse_all + g0, rows), alpha_r(alpha_all + g0, rows);
    Eigen::Map<const Array<T>> lse_c(lse_all + c0, cols), alpha_c(alpha_all + c0, cols);
    m.array() = (s.array().colwise() - lse_r).exp().colwise() * alpha_r +
                (s.array().rowwise() - lse_c.transpose()).exp().rowwise() * alpha_c.transpose();
  }
  for (std::int64_t i = 0; i < rows; ++i) {
    const std::int64_t q = q0 + i;
    const std::int64_t pos = layout.anchor_begin + layout.partner(q);
    if (pos >= c0 && pos < c0 + cols) m(i, pos - c0) -= alpha_all[g0 + i] + alpha_all[pos];
  }
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

// ---- the two ways of covering this rank's [2n, 2G] block of logits ----
//
// Rectangular: row blocks of the anchors against a set of column ranges, in parallel over row
// blocks. Symmetric: the rank's own [2n, 2n] diagonal block is symmetric (it holds every positive),
// so only its tiles I <= J are computed, each feeding the row statistics of I and the column
// statistics of J. The streamed path covers the block with the symmetric own block plus the
// rectangular rest (all of it in a single process); the kept path stores the whole block
// rectangularly.

using ColumnRanges = std::vector<std::pair<std::int64_t, std::int64_t>>;  // [begin, end) of U rows

// Running (max, sum) per anchor, one set per thread, merged in thread order (deterministic).
template <class T>
struct PartialStats {
  std::vector<Array<T>> max, sum;
  PartialStats(int threads, std::int64_t rows)
      : max(static_cast<std::size_t>(threads),
            Array<T>::Constant(rows, -std::numeric_limits<T>::infinity())),
        sum(static_cast<std::size_t>(threads), Array<T>::Zero(rows)) {}
};

inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

template <class T>
double rect_forward(const RowMatrix<T>& u, const RowLayout& layout, T inv_t,
                    const EngineOptions& options, const ColumnRanges& columns, RowMatrix<T>* keep,
                    PartialStats<T>& stats, T* row_positive) {
  const std::int64_t na = layout.anchors(), d = u.cols();
  std::int64_t ncols = 0;
  for (const auto& [b, e] : columns) ncols += e - b;
  if (na == 0 || ncols == 0) return 0;
  const std::int64_t br = resolve(options.row_block, kDefaultRowBlock, "row_block");
  const std::int64_t bc =
      keep ? layout.total_rows : resolve(options.col_tile, kDefaultColTile, "col_tile");
  const std::int64_t nblocks = (na + br - 1) / br;
  const int threads = static_cast<int>(stats.max.size());
  const T shift = fixed_shift(inv_t);
#pragma omp parallel num_threads(threads)
  {
    single_threaded_eigen();
    RowMatrix<T> buf;
    if (!keep) buf.resize(std::min(br, na), bc);
    Array<T> tmax, tsum;
    Array<T>& pmax = stats.max[static_cast<std::size_t>(thread_id())];
    Array<T>& psum = stats.sum[static_cast<std::size_t>(thread_id())];
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t b = 0; b < nblocks; ++b) {
      const std::int64_t q0 = b * br, rows = std::min(br, na - q0);
      for (const auto& [cb, ce] : columns) {
        for (std::int64_t c0 = cb; c0 < ce; c0 += bc) {
          const std::int64_t cols = std::min(bc, ce - c0);
          auto s = keep ? keep->block(q0, c0, rows, cols) : buf.block(0, 0, rows, cols);
          logits_tile(u, layout, inv_t, q0, rows, c0, cols, s, row_positive);
          tile_row_stats<T>(s, shift, tmax, tsum);
          for (std::int64_t i = 0; i < rows; ++i)
            lse_merge(pmax[q0 + i], psum[q0 + i], tmax[i], tsum[i]);
        }
      }
    }
  }
  return 2.0 * static_cast<double>(na) * static_cast<double>(ncols) * static_cast<double>(d);
}

template <class T, class Logits>
double rect_backward(const RowMatrix<T>& u, const RowLayout& layout, T inv_t, const T* lse_all,
                     const T* alpha_all, const T* beta_all, const EngineOptions& options,
                     const ColumnRanges& columns, const Logits* kept, int threads,
                     RowMatrix<T>& grad) {
  const std::int64_t na = layout.anchors(), d = u.cols();
  std::int64_t ncols = 0;
  for (const auto& [b, e] : columns) ncols += e - b;
  if (na == 0 || ncols == 0) return 0;
  const std::int64_t br = resolve(options.row_block, kDefaultRowBlock, "row_block");
  const std::int64_t bc =
      kept ? kDefaultColTile : resolve(options.col_tile, kDefaultColTile, "col_tile");
  const std::int64_t nblocks = (na + br - 1) / br;
  const T shift = fixed_shift(inv_t);
#pragma omp parallel num_threads(threads)
  {
    single_threaded_eigen();
    RowMatrix<T> sbuf(std::min(br, na), bc), mbuf(std::min(br, na), bc);
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t b = 0; b < nblocks; ++b) {
      const std::int64_t q0 = b * br, rows = std::min(br, na - q0);
      auto g = grad.middleRows(q0, rows);
      for (const auto& [cb, ce] : columns) {
        for (std::int64_t c0 = cb; c0 < ce; c0 += bc) {
          const std::int64_t cols = std::min(bc, ce - c0);
          auto m = mbuf.block(0, 0, rows, cols);
          if (kept) {
            m_tile(kept->block(q0, c0, rows, cols), layout, q0, c0, lse_all, alpha_all, shift,
                   beta_all, m);
          } else {
            auto s = sbuf.block(0, 0, rows, cols);
            logits_tile(u, layout, inv_t, q0, rows, c0, cols, s, static_cast<T*>(nullptr));
            m_tile(s, layout, q0, c0, lse_all, alpha_all, shift, beta_all, m);
          }
          g.noalias() += inv_t * (m * u.middleRows(c0, cols));
        }
      }
    }
  }
  const double product =
      2.0 * static_cast<double>(na) * static_cast<double>(ncols) * static_cast<double>(d);
  return kept ? product : 2 * product;
}

// Tile pairs I <= J over this rank's own 2n rows.
struct TilePairs {
  std::int64_t tile = 0, ntiles = 0;
  std::vector<std::pair<std::int64_t, std::int64_t>> pairs;
  double entries = 0;  // logits computed: sum of tile areas over the pairs
  TilePairs(std::int64_t n, std::int64_t tile_) : tile(tile_), ntiles((n + tile_ - 1) / tile_) {
    for (std::int64_t i = 0; i < ntiles; ++i)
      for (std::int64_t j = i; j < ntiles; ++j) {
        pairs.emplace_back(i, j);
        entries += static_cast<double>(std::min(tile, n - i * tile)) *
                   static_cast<double>(std::min(tile, n - j * tile));
      }
  }
};

template <class T>
double sym_forward(const RowMatrix<T>& u, const RowLayout& layout, T inv_t,
                   const EngineOptions& options, PartialStats<T>& stats, T* row_positive) {
  const std::int64_t n = layout.anchors(), base = layout.anchor_begin, d = u.cols();
  if (n == 0) return 0;
  const TilePairs tp(n, resolve(options.row_block, kDefaultRowBlock, "row_block"));
  const int threads = static_cast<int>(stats.max.size());
  const T shift = fixed_shift(inv_t);
  const auto npairs = static_cast<std::int64_t>(tp.pairs.size());
#pragma omp parallel num_threads(threads)
  {
    single_threaded_eigen();
    RowMatrix<T> buf(std::min(tp.tile, n), std::min(tp.tile, n)), ebuf(buf.rows(), buf.cols());
    Array<T> tmax, tsum, cmax, csum;
    Array<T>& pmax = stats.max[static_cast<std::size_t>(thread_id())];
    Array<T>& psum = stats.sum[static_cast<std::size_t>(thread_id())];
#pragma omp for schedule(static, 1)
    for (std::int64_t p = 0; p < npairs; ++p) {
      const auto [ti, tj] = tp.pairs[static_cast<std::size_t>(p)];
      const std::int64_t r0 = ti * tp.tile,
                         rows = std::min(tp.tile, n - r0);  // local anchor indices
      const std::int64_t c0 = tj * tp.tile, cols = std::min(tp.tile, n - c0);
      auto s = buf.block(0, 0, rows, cols);
      logits_tile(u, layout, inv_t, r0, rows, base + c0, cols, s, row_positive);
      if (ti == tj) {
        tile_row_stats<T>(s, shift, tmax, tsum);
      } else {
        tile_row_col_stats<T>(s, shift, ebuf, tmax, tsum, cmax, csum);
      }
      for (std::int64_t i = 0; i < rows; ++i)
        lse_merge(pmax[r0 + i], psum[r0 + i], tmax[i], tsum[i]);
      if (ti != tj) {
        for (std::int64_t j = 0; j < cols; ++j) {
          lse_merge(pmax[c0 + j], psum[c0 + j], cmax[j], csum[j]);
          const std::int64_t pos = layout.partner(c0 + j) - r0;
          if (pos >= 0 && pos < rows) row_positive[c0 + j] = s(pos, j);
        }
      }
    }
  }
  return 2.0 * tp.entries * static_cast<double>(d);
}

// On the own block M is symmetric too (docs/math.md section 5.5): tile (I, J) feeds rows I with
// M_IJ U_J and rows J with M_IJ^T U_I. Per-thread accumulators, merged in thread order.
template <class T>
double sym_backward(const RowMatrix<T>& u, const RowLayout& layout, T inv_t, const T* lse_all,
                    const T* alpha_all, const T* beta_all, const EngineOptions& options,
                    int threads, RowMatrix<T>& grad) {
  const std::int64_t n = layout.anchors(), base = layout.anchor_begin, d = u.cols();
  if (n == 0) return 0;
  const TilePairs tp(n, resolve(options.row_block, kDefaultRowBlock, "row_block"));
  const T shift = fixed_shift(inv_t);
  std::vector<RowMatrix<T>> part(static_cast<std::size_t>(threads > 1 ? threads - 1 : 0));
  const auto npairs = static_cast<std::int64_t>(tp.pairs.size());
  const auto anchors = u.middleRows(base, n);
  double both_sides = 0;
  for (const auto& [ti, tj] : tp.pairs)
    both_sides += static_cast<double>(std::min(tp.tile, n - ti * tp.tile)) *
                  static_cast<double>(std::min(tp.tile, n - tj * tp.tile)) * (ti == tj ? 1.0 : 2.0);
#pragma omp parallel num_threads(threads)
  {
    single_threaded_eigen();
    const int tid = thread_id();
    RowMatrix<T>& acc = tid == 0 ? grad : part[static_cast<std::size_t>(tid - 1)];
    if (tid != 0) acc.setZero(n, d);
    RowMatrix<T> sbuf(std::min(tp.tile, n), std::min(tp.tile, n)), mbuf(sbuf.rows(), sbuf.cols());
#pragma omp for schedule(static, 1)
    for (std::int64_t p = 0; p < npairs; ++p) {
      const auto [ti, tj] = tp.pairs[static_cast<std::size_t>(p)];
      const std::int64_t r0 = ti * tp.tile, rows = std::min(tp.tile, n - r0);
      const std::int64_t c0 = tj * tp.tile, cols = std::min(tp.tile, n - c0);
      auto s = sbuf.block(0, 0, rows, cols);
      auto m = mbuf.block(0, 0, rows, cols);
      logits_tile(u, layout, inv_t, r0, rows, base + c0, cols, s, static_cast<T*>(nullptr));
      m_tile(s, layout, r0, base + c0, lse_all, alpha_all, shift, beta_all, m);
      acc.middleRows(r0, rows).noalias() += inv_t * (m * anchors.middleRows(c0, cols));
      if (ti != tj)
        acc.middleRows(c0, cols).noalias() +=
            inv_t * (m.transpose() * anchors.middleRows(r0, rows));
    }
  }
  for (auto& p : part) grad += p;
  // Recomputed tiles plus the products with U on both sides of each off-diagonal tile.
  return 2.0 * (tp.entries + both_sides) * static_cast<double>(d);
}

// Columns of U outside this rank's own rows.
ColumnRanges other_columns(const RowLayout& layout) {
  ColumnRanges out;
  if (layout.anchor_begin > 0) out.emplace_back(0, layout.anchor_begin);
  const std::int64_t end = layout.anchor_begin + layout.anchors();
  if (end < layout.total_rows) out.emplace_back(end, layout.total_rows);
  return out;
}

}  // namespace

template <class T>
EngineForward<T> engine_forward(const RowMatrix<T>& u, const RowLayout& layout, T inv_temperature,
                                const EngineOptions& options) {
  // The front ends build u and the layout together: a mismatch is a bug of theirs, not bad input.
  SIMCLR_CHECK_EQ(u.rows(), layout.total_rows);
  SIMCLR_CHECK_GE(layout.anchor_begin, 0);
  SIMCLR_CHECK_LE(layout.anchor_begin + layout.anchors(), layout.total_rows);
  const std::int64_t na = layout.anchors();
  EngineForward<T> out;
  out.row_lse.assign(static_cast<std::size_t>(na), T(0));
  out.row_positive.assign(static_cast<std::size_t>(na), T(0));
  if (na == 0) return out;
  const int threads = resolve_threads(options);
  PartialStats<T> stats(threads, na);
  // Keeping the block saves the backward's recomputation, but in a single process the streamed
  // symmetric path does the same number of products (1/2 + 3/2 versus 1 + 1) in far less memory, so
  // keeping only pays where the symmetric part is a fraction of the block (several ranks).
  const bool symmetric_covers_all = options.use_symmetry && layout.whole();
  const bool keep = !symmetric_covers_all &&
                    fits_budget(na, layout.total_rows, sizeof(T), options.memory_budget_bytes);
  if (keep) {
    out.logits.resize(na, layout.total_rows);
    out.flops = rect_forward(u, layout, inv_temperature, options, {{0, layout.total_rows}},
                             &out.logits, stats, out.row_positive.data());
  } else if (options.use_symmetry) {
    out.flops = sym_forward(u, layout, inv_temperature, options, stats, out.row_positive.data());
    out.flops += rect_forward(u, layout, inv_temperature, options, other_columns(layout),
                              static_cast<RowMatrix<T>*>(nullptr), stats, out.row_positive.data());
  } else {
    out.flops = rect_forward(u, layout, inv_temperature, options, {{0, layout.total_rows}},
                             static_cast<RowMatrix<T>*>(nullptr), stats, out.row_positive.data());
  }
  for (std::int64_t q = 0; q < na; ++q) {
    T run_max = -std::numeric_limits<T>::infinity(), run_sum = 0;
    for (int t = 0; t < threads; ++t)
      lse_merge(run_max, run_sum, stats.max[static_cast<std::size_t>(t)][q],
                stats.sum[static_cast<std::size_t>(t)][q]);
    out.row_lse[static_cast<std::size_t>(q)] = run_max + std::log(run_sum);
  }
  return out;
}

template <class T>
double engine_backward(const RowMatrix<T>& u, const RowLayout& layout, T inv_temperature,
                       const T* lse_all, const T* alpha_all, const EngineForward<T>& saved,
                       const EngineOptions& options, RowMatrix<T>& grad_anchors) {
  SIMCLR_CHECK_EQ(u.rows(), layout.total_rows);
  SIMCLR_CHECK_LE(layout.anchor_begin + layout.anchors(), layout.total_rows);
  const std::int64_t na = layout.anchors();
  grad_anchors.setZero(na, u.cols());
  if (na == 0) return 0;
  const int threads = resolve_threads(options);
  const std::vector<T> beta =
      make_beta(layout.total_rows, fixed_shift(inv_temperature), lse_all, alpha_all);
  const T* beta_all = beta.empty() ? nullptr : beta.data();
  const bool kept = saved.logits.rows() == na && saved.logits.cols() == layout.total_rows;
  if (kept) {
    return rect_backward(u, layout, inv_temperature, lse_all, alpha_all, beta_all, options,
                         {{0, layout.total_rows}}, &saved.logits, threads, grad_anchors);
  }
  const RowMatrix<T>* none = nullptr;
  if (options.use_symmetry) {
    double flops = sym_backward(u, layout, inv_temperature, lse_all, alpha_all, beta_all, options,
                                threads, grad_anchors);
    flops += rect_backward(u, layout, inv_temperature, lse_all, alpha_all, beta_all, options,
                           other_columns(layout), none, threads, grad_anchors);
    return flops;
  }
  return rect_backward(u, layout, inv_temperature, lse_all, alpha_all, beta_all, options,
                       {{0, layout.total_rows}}, none, threads, grad_anchors);
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
    if (nrm2 > T(1e-12)) {
      dst = (g - h * h.dot(g)) / std::sqrt(nrm2);
    } else {
      dst = g / std::sqrt(T(1e-12));
    }
  }
}

#define SIMCLR_INSTANTIATE(T)                                                                      \
  template EngineForward<T> engine_forward<T>(const RowMatrix<T>&, const RowLayout&, T,            \
                                              const EngineOptions&);                               \
  template double engine_backward<T>(const RowMatrix<T>&, const RowLayout&, T, const T*, const T*, \
                                     const EngineForward<T>&, const EngineOptions&,                \
                                     RowMatrix<T>&);                                               \
  template void l2_normalize_rows<T>(ConstMatrixView<T>, T*, std::int64_t, T*);                    \
  template void l2_normalize_backward<T>(const T*, std::int64_t, const T*, const T*, std::int64_t, \
                                         std::int64_t, std::int64_t, T*, std::int64_t);

SIMCLR_INSTANTIATE(float)
SIMCLR_INSTANTIATE(double)
#undef SIMCLR_INSTANTIATE

}  // namespace simclr::detail

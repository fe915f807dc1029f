// Core math of the loss (spec sections 3-5): tiled logits, online log-sum-exp, and the closed-form
// backward that applies M (spec section 4) tile by tile without materialising it.

#include "simclr/engine.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "simclr/errors.hpp"

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
  SIMCLR_ENFORCE(options.threads >= 0, ValueError, "threads must be >= 0, got ", options.threads);
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
  const double bytes = static_cast<double>(rows) * static_cast<double>(cols) * static_cast<double>(elem);
  return bytes <= static_cast<double>(budget);
}

// Running (max, sum) of one row's log-sum-exp, merged with a tile's (max, sum-relative-to-that-max).
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
// column: one exponential per logit feeds both the row and the column sums, and the backward needs one
// exponential per logit instead of two. Otherwise (tiny temperatures) each row keeps a running max.
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
void tile_row_col_stats(const Tile& s, T shift, RowMatrix<T>& ebuf, Array<T>& row_max, Array<T>& row_sum,
                        Array<T>& col_max, Array<T>& col_sum) {
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

// s_qc for anchors [q0, q0 + rows) of the layout against U rows [c0, c0 + cols), with the self entries
// set to -inf; records the positives that fall in the tile.
template <class T, class Tile>
void logits_tile(const RowMatrix<T>& u, const RowLayout& layout, T inv_t, std::int64_t q0,
                 std::int64_t rows, std::int64_t c0, std::int64_t cols, Tile&& s, T* row_positive) {
  s.noalias() = inv_t * (u.middleRows(layout.anchor_begin + q0, rows) *
                         u.middleRows(c0, cols).transpose());
  const T ninf = -std::numeric_limits<T>::infinity();
  for (std::int64_t i = 0; i < rows; ++i) {
    const std::int64_t q = q0 + i;
    const std::int64_t self = layout.anchor_begin + q - c0;
    if (self >= 0 && self < cols) s(i, self) = ninf;
    const std::int64_t pos = layout.anchor_begin + layout.partner(q) - c0;
    if (row_positive != nullptr && pos >= 0 && pos < cols) row_positive[q] = s(i, pos);
  }
}

// M tile (spec section 4) from a logits tile, into m:
// M_kc = a_k exp(s_kc - LSE_k) + a_c exp(s_kc - LSE_c) - (a_k + a_c) [c == p(k)].
// With a fixed shift and beta_q = a_q exp(shift - LSE_q) this is exp(s_kc - shift) (beta_k + beta_c):
// one exponential per logit.
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

// beta_q = alpha_q exp(shift - LSE_q) for every row of U, or empty when the fixed shift cannot be used
// (no shift, or a weight so large that beta would overflow).
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

// ---- general path: this rank's anchors against all of U, row blocks in parallel ----

template <class T>
EngineForward<T> forward_rows(const RowMatrix<T>& u, const RowLayout& layout, T inv_t,
                              const EngineOptions& options, bool keep) {
  const std::int64_t na = layout.anchors(), nc = layout.total_rows, d = u.cols();
  EngineForward<T> out;
  out.row_lse.assign(na, T(0));
  out.row_positive.assign(na, T(0));
  if (na == 0) return out;
  const std::int64_t br = resolve(options.row_block, kDefaultRowBlock, "row_block");
  const std::int64_t bc = keep ? nc : std::min(nc, resolve(options.col_tile, kDefaultColTile, "col_tile"));
  if (keep) out.logits.resize(na, nc);
  const std::int64_t nblocks = (na + br - 1) / br;
  const int threads = resolve_threads(options);
  const T shift = fixed_shift(inv_t);
#pragma omp parallel num_threads(threads)
  {
    single_threaded_eigen();
    RowMatrix<T> buf;
    if (!keep) buf.resize(std::min(br, na), bc);
    Array<T> tmax, tsum;
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t b = 0; b < nblocks; ++b) {
      const std::int64_t q0 = b * br, rows = std::min(br, na - q0);
      Array<T> run_max = Array<T>::Constant(rows, -std::numeric_limits<T>::infinity());
      Array<T> run_sum = Array<T>::Zero(rows);
      for (std::int64_t c0 = 0; c0 < nc; c0 += bc) {
        const std::int64_t cols = std::min(bc, nc - c0);
        auto s = keep ? out.logits.block(q0, c0, rows, cols) : buf.block(0, 0, rows, cols);
        logits_tile(u, layout, inv_t, q0, rows, c0, cols, s, out.row_positive.data());
        tile_row_stats<T>(s, shift, tmax, tsum);
        for (std::int64_t i = 0; i < rows; ++i) lse_merge(run_max[i], run_sum[i], tmax[i], tsum[i]);
      }
      for (std::int64_t i = 0; i < rows; ++i) out.row_lse[q0 + i] = run_max[i] + std::log(run_sum[i]);
    }
  }
  out.flops = 2.0 * static_cast<double>(na) * static_cast<double>(nc) * static_cast<double>(d);
  return out;
}

template <class T>
double backward_rows(const RowMatrix<T>& u, const RowLayout& layout, T inv_t, const T* lse_all,
                     const T* alpha_all, const EngineForward<T>& saved, const EngineOptions& options,
                     RowMatrix<T>& grad) {
  const std::int64_t na = layout.anchors(), nc = layout.total_rows, d = u.cols();
  grad.setZero(na, d);
  if (na == 0) return 0;
  const bool keep = saved.logits.rows() == na && saved.logits.cols() == nc;
  const std::int64_t br = resolve(options.row_block, kDefaultRowBlock, "row_block");
  const std::int64_t bc = keep ? std::min(nc, std::max<std::int64_t>(kDefaultColTile, 1))
                               : std::min(nc, resolve(options.col_tile, kDefaultColTile, "col_tile"));
  const std::int64_t nblocks = (na + br - 1) / br;
  const int threads = resolve_threads(options);
  const T shift = fixed_shift(inv_t);
  const std::vector<T> beta = make_beta(nc, shift, lse_all, alpha_all);
  const T* beta_all = beta.empty() ? nullptr : beta.data();
#pragma omp parallel num_threads(threads)
  {
    single_threaded_eigen();
    RowMatrix<T> sbuf, mbuf(std::min(br, na), bc);
    if (!keep) sbuf.resize(std::min(br, na), bc);
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t b = 0; b < nblocks; ++b) {
      const std::int64_t q0 = b * br, rows = std::min(br, na - q0);
      auto g = grad.middleRows(q0, rows);
      for (std::int64_t c0 = 0; c0 < nc; c0 += bc) {
        const std::int64_t cols = std::min(bc, nc - c0);
        auto m = mbuf.block(0, 0, rows, cols);
        if (keep) {
          m_tile(saved.logits.block(q0, c0, rows, cols), layout, q0, c0, lse_all, alpha_all, shift,
                 beta_all, m);
        } else {
          auto s = sbuf.block(0, 0, rows, cols);
          logits_tile(u, layout, inv_t, q0, rows, c0, cols, s, static_cast<T*>(nullptr));
          m_tile(s, layout, q0, c0, lse_all, alpha_all, shift, beta_all, m);
        }
        g.noalias() += m * u.middleRows(c0, cols);
      }
      g *= inv_t;
    }
  }
  const double product = 2.0 * static_cast<double>(na) * static_cast<double>(nc) * static_cast<double>(d);
  return keep ? product : 2 * product;
}

// ---- single-process symmetric path: S = U U^T / T is symmetric, so only tiles I <= J are computed ----

struct TilePairs {
  std::int64_t tile = 0, ntiles = 0;
  std::vector<std::pair<std::int64_t, std::int64_t>> pairs;
  TilePairs(std::int64_t n, std::int64_t tile_) : tile(tile_), ntiles((n + tile_ - 1) / tile_) {
    for (std::int64_t i = 0; i < ntiles; ++i)
      for (std::int64_t j = i; j < ntiles; ++j) pairs.emplace_back(i, j);
  }
};

template <class T>
EngineForward<T> forward_symmetric(const RowMatrix<T>& u, const RowLayout& layout, T inv_t,
                                   const EngineOptions& options, bool keep) {
  const std::int64_t n = layout.total_rows, d = u.cols();
  const T ninf = -std::numeric_limits<T>::infinity();
  EngineForward<T> out;
  out.row_lse.assign(n, T(0));
  out.row_positive.assign(n, T(0));
  if (n == 0) return out;
  if (keep) out.logits.resize(n, n);
  const TilePairs tp(n, resolve(options.row_block, kDefaultRowBlock, "row_block"));
  const int threads = resolve_threads(options);
  const T shift = fixed_shift(inv_t);
  // Per-thread (max, sum) for every row, merged in thread order afterwards: deterministic for a fixed
  // thread count, no races on the column-side updates.
  std::vector<Array<T>> part_max(threads, Array<T>::Constant(n, ninf));
  std::vector<Array<T>> part_sum(threads, Array<T>::Zero(n));
  const auto npairs = static_cast<std::int64_t>(tp.pairs.size());
#pragma omp parallel num_threads(threads)
  {
    single_threaded_eigen();
#ifdef _OPENMP
    const int tid = omp_get_thread_num();
#else
    const int tid = 0;
#endif
    RowMatrix<T> buf(std::min(tp.tile, n), std::min(tp.tile, n)), ebuf(buf.rows(), buf.cols());
    Array<T> tmax, tsum, cmax, csum;
    Array<T>& pmax = part_max[tid];
    Array<T>& psum = part_sum[tid];
#pragma omp for schedule(static, 1)
    for (std::int64_t p = 0; p < npairs; ++p) {
      const auto [ti, tj] = tp.pairs[p];
      const std::int64_t r0 = ti * tp.tile, rows = std::min(tp.tile, n - r0);
      const std::int64_t c0 = tj * tp.tile, cols = std::min(tp.tile, n - c0);
      auto s = keep ? out.logits.block(r0, c0, rows, cols) : buf.block(0, 0, rows, cols);
      logits_tile(u, layout, inv_t, r0, rows, c0, cols, s, out.row_positive.data());
      if (ti == tj) {
        tile_row_stats<T>(s, shift, tmax, tsum);
      } else {
        tile_row_col_stats<T>(s, shift, ebuf, tmax, tsum, cmax, csum);
      }
      for (std::int64_t i = 0; i < rows; ++i) lse_merge(pmax[r0 + i], psum[r0 + i], tmax[i], tsum[i]);
      if (ti != tj) {
        for (std::int64_t j = 0; j < cols; ++j) {
          lse_merge(pmax[c0 + j], psum[c0 + j], cmax[j], csum[j]);
          const std::int64_t pos = layout.partner(c0 + j) - r0;
          if (pos >= 0 && pos < rows) out.row_positive[c0 + j] = s(pos, j);
        }
        if (keep) out.logits.block(c0, r0, cols, rows) = s.transpose();
      }
    }
  }
  for (std::int64_t q = 0; q < n; ++q) {
    T run_max = ninf, run_sum = 0;
    for (int t = 0; t < threads; ++t) lse_merge(run_max, run_sum, part_max[t][q], part_sum[t][q]);
    out.row_lse[q] = run_max + std::log(run_sum);
  }
  // Tiles I <= J: n(n + tile)/2 entries of S instead of n^2.
  double entries = 0;
  for (const auto& [ti, tj] : tp.pairs)
    entries += static_cast<double>(std::min(tp.tile, n - ti * tp.tile)) *
               static_cast<double>(std::min(tp.tile, n - tj * tp.tile));
  out.flops = 2.0 * entries * static_cast<double>(d);
  return out;
}

template <class T>
double backward_symmetric(const RowMatrix<T>& u, const RowLayout& layout, T inv_t, const T* lse_all,
                          const T* alpha_all, const EngineOptions& options, RowMatrix<T>& grad) {
  const std::int64_t n = layout.total_rows, d = u.cols();
  grad.setZero(n, d);
  if (n == 0) return 0;
  const TilePairs tp(n, resolve(options.row_block, kDefaultRowBlock, "row_block"));
  const int threads = resolve_threads(options);
  // M is symmetric too (spec section 4), so tile (I, J) feeds rows I with M_IJ U_J and rows J with
  // M_IJ^T U_I. Per-thread accumulators merged in thread order keep the result deterministic.
  std::vector<RowMatrix<T>> part(threads > 1 ? threads - 1 : 0);
  const T shift = fixed_shift(inv_t);
  const std::vector<T> beta = make_beta(n, shift, lse_all, alpha_all);
  const T* beta_all = beta.empty() ? nullptr : beta.data();
  const auto npairs = static_cast<std::int64_t>(tp.pairs.size());
  double entries = 0;
  for (const auto& [ti, tj] : tp.pairs)
    entries += static_cast<double>(std::min(tp.tile, n - ti * tp.tile)) *
               static_cast<double>(std::min(tp.tile, n - tj * tp.tile)) * (ti == tj ? 1.0 : 2.0);
#pragma omp parallel num_threads(threads)
  {
    single_threaded_eigen();
#ifdef _OPENMP
    const int tid = omp_get_thread_num();
#else
    const int tid = 0;
#endif
    RowMatrix<T>& acc = tid == 0 ? grad : part[tid - 1];
    if (tid != 0) acc.setZero(n, d);
    RowMatrix<T> sbuf(std::min(tp.tile, n), std::min(tp.tile, n)), mbuf(sbuf.rows(), sbuf.cols());
#pragma omp for schedule(static, 1)
    for (std::int64_t p = 0; p < npairs; ++p) {
      const auto [ti, tj] = tp.pairs[p];
      const std::int64_t r0 = ti * tp.tile, rows = std::min(tp.tile, n - r0);
      const std::int64_t c0 = tj * tp.tile, cols = std::min(tp.tile, n - c0);
      auto s = sbuf.block(0, 0, rows, cols);
      auto m = mbuf.block(0, 0, rows, cols);
      logits_tile(u, layout, inv_t, r0, rows, c0, cols, s, static_cast<T*>(nullptr));
      m_tile(s, layout, r0, c0, lse_all, alpha_all, shift, beta_all, m);
      acc.middleRows(r0, rows).noalias() += m * u.middleRows(c0, cols);
      if (ti != tj) acc.middleRows(c0, cols).noalias() += m.transpose() * u.middleRows(r0, rows);
    }
  }
  for (auto& p : part) grad += p;
  grad *= inv_t;
  // Recomputed tiles (forward's count) plus the products with U (both sides of each off-diagonal tile).
  double half = 0;
  for (const auto& [ti, tj] : tp.pairs)
    half += static_cast<double>(std::min(tp.tile, n - ti * tp.tile)) *
            static_cast<double>(std::min(tp.tile, n - tj * tp.tile));
  return 2.0 * (half + entries) * static_cast<double>(d);
}

bool symmetric_ok(const RowLayout& layout, const EngineOptions& options) {
  return options.use_symmetry && layout.whole();
}

}  // namespace

template <class T>
EngineForward<T> engine_forward(const RowMatrix<T>& u, const RowLayout& layout, T inv_temperature,
                                const EngineOptions& options) {
  SIMCLR_ENFORCE_EQ(u.rows(), layout.total_rows, ValueError, "engine: rows of U vs 2G");
  const bool keep =
      fits_budget(layout.anchors(), layout.total_rows, sizeof(T), options.memory_budget_bytes);
  if (symmetric_ok(layout, options)) return forward_symmetric(u, layout, inv_temperature, options, keep);
  return forward_rows(u, layout, inv_temperature, options, keep);
}

template <class T>
double engine_backward(const RowMatrix<T>& u, const RowLayout& layout, T inv_temperature,
                       const T* lse_all, const T* alpha_all, const EngineForward<T>& saved,
                       const EngineOptions& options, RowMatrix<T>& grad_anchors) {
  const bool keep = saved.logits.rows() == layout.anchors() && layout.anchors() > 0;
  if (!keep && symmetric_ok(layout, options))
    return backward_symmetric(u, layout, inv_temperature, lse_all, alpha_all, options, grad_anchors);
  return backward_rows(u, layout, inv_temperature, lse_all, alpha_all, saved, options, grad_anchors);
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

#define SIMCLR_INSTANTIATE(T)                                                                       \
  template EngineForward<T> engine_forward<T>(const RowMatrix<T>&, const RowLayout&, T,           \
                                              const EngineOptions&);                              \
  template double engine_backward<T>(const RowMatrix<T>&, const RowLayout&, T, const T*, const T*, \
                                     const EngineForward<T>&, const EngineOptions&, RowMatrix<T>&); \
  template void l2_normalize_rows<T>(ConstMatrixView<T>, T*, std::int64_t, T*);                   \
  template void l2_normalize_backward<T>(const T*, std::int64_t, const T*, const T*, std::int64_t, \
                                         std::int64_t, std::int64_t, T*, std::int64_t);

SIMCLR_INSTANTIATE(float)
SIMCLR_INSTANTIATE(double)
#undef SIMCLR_INSTANTIATE

}  // namespace simclr::detail

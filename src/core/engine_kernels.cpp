// The engine's tile loops (docs/math.md: tiled logits, online log-sum-exp, and the closed-form
// backward that applies M tile by tile without materialising it).
//
// This file is compiled once per CPU level (cmake/SimclrCpuDispatch.cmake), each time with its own
// -march and SIMCLR_KERNEL_LEVEL naming the namespace of its entry points. Every Eigen template
// used here is instantiated inside a namespace of that level too: Eigen's namespace is renamed
// before Eigen is included, so the AVX-512 copy of, say, Eigen's GEMM has another symbol name than
// the baseline copy and the linker can never merge the two (which would run AVX-512 code on a CPU
// without it, or baseline code where AVX-512 was chosen). Only raw pointers cross into this file.

#ifndef SIMCLR_KERNEL_LEVEL
#define SIMCLR_KERNEL_LEVEL baseline
#endif
#define SIMCLR_PASTE_(a, b) a##b
#define SIMCLR_PASTE(a, b) SIMCLR_PASTE_(a, b)
// Must come before the first include of Eigen in this translation unit.
#define Eigen SIMCLR_PASTE(simclr_eigen_, SIMCLR_KERNEL_LEVEL)

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "engine_kernels.hpp"

namespace simclr::detail::kernels::SIMCLR_KERNEL_LEVEL {
namespace {

template <class T>
using Array = Eigen::Array<T, Eigen::Dynamic, 1>;
template <class T>
using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using ConstMap = Eigen::Map<const Matrix<T>>;

// Inside our parallel regions Eigen's products must not start their own threads: with a team of one
// thread Eigen would (it only checks the team size), oversubscribing the cores the caller allowed.
// omp_set_num_threads inside a region sets the calling thread's ICV only, for nested regions.
inline void single_threaded_eigen() {
#ifdef _OPENMP
  omp_set_num_threads(1);
#endif
}

inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Where this rank's anchors sit in U (as simclr::detail::RowLayout, engine.hpp).
struct Layout {
  std::int64_t total_rows = 0;
  std::int64_t anchor_begin = 0;
  std::int64_t pairs = 0;
  std::int64_t anchors() const { return 2 * pairs; }
  std::int64_t partner(std::int64_t q) const { return q < pairs ? q + pairs : q - pairs; }
  bool whole() const { return anchor_begin == 0 && anchors() == total_rows; }
};

template <class T>
Layout layout_of(const TileProblem<T>& p) {
  return {p.total_rows, p.anchor_begin, p.pairs};
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
// max. engine.cpp computes the same shift for the backward's beta.
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
void tile_row_col_stats(const Tile& s, T shift, Matrix<T>& ebuf, Array<T>& row_max,
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

// A tile of logits: anchors [q0, q0 + rows) of the layout against U rows [c0, c0 + cols).
struct TileRange {
  std::int64_t q0 = 0, rows = 0, c0 = 0, cols = 0;
};

// s_qc over `tile`, with the self entries set to -inf; records the positives that fall in the tile.
template <class T, class Tile>
void logits_tile(const ConstMap<T>& u, const Layout& layout, T inv_t, const TileRange& tile,
                 Tile&& s, T* row_positive) {
  s.noalias() = inv_t * (u.middleRows(layout.anchor_begin + tile.q0, tile.rows) *
                         u.middleRows(tile.c0, tile.cols).transpose());
  const T ninf = -std::numeric_limits<T>::infinity();
  for (std::int64_t i = 0; i < tile.rows; ++i) {
    const std::int64_t q = tile.q0 + i;
    const std::int64_t self = layout.anchor_begin + q - tile.c0;
    if (self >= 0 && self < tile.cols) s(i, self) = ninf;
    const std::int64_t pos = layout.anchor_begin + layout.partner(q) - tile.c0;
    if (row_positive != nullptr && pos >= 0 && pos < tile.cols) row_positive[q] = s(i, pos);
  }
}

// The per-row scalars the M tiles read (docs/math.md, the backward).
template <class T>
struct RowScalars {
  const T* lse_all = nullptr;
  const T* alpha_all = nullptr;
  const T* beta_all = nullptr;
  T shift = T(0);
};

// M tile from a logits tile, into m:
// M_kc = a_k exp(s_kc - LSE_k) + a_c exp(s_kc - LSE_c) - (a_k + a_c) [c == p(k)].
// With a fixed shift and beta_q = a_q exp(shift - LSE_q) this is exp(s_kc - shift) (beta_k +
// beta_c): one exponential per logit.
template <class T, class Tile, class Out>
void m_tile(const Tile& s, const Layout& layout, std::int64_t q0, std::int64_t c0,
            const RowScalars<T>& sc, Out&& m) {
  const std::int64_t rows = s.rows(), cols = s.cols();
  const std::int64_t g0 = layout.anchor_begin + q0;
  if (sc.beta_all != nullptr) {
    Eigen::Map<const Array<T>> beta_c(sc.beta_all + c0, cols);
    for (std::int64_t i = 0; i < rows; ++i) {
      m.row(i).array() =
          (s.row(i).array() - sc.shift).exp() * (beta_c.transpose() + sc.beta_all[g0 + i]);
    }
  } else {
    Eigen::Map<const Array<T>> lse_r(sc.lse_all + g0, rows), alpha_r(sc.alpha_all + g0, rows);
    Eigen::Map<const Array<T>> lse_c(sc.lse_all + c0, cols), alpha_c(sc.alpha_all + c0, cols);
    m.array() = (s.array().colwise() - lse_r).exp().colwise() * alpha_r +
                (s.array().rowwise() - lse_c.transpose()).exp().rowwise() * alpha_c.transpose();
  }
  for (std::int64_t i = 0; i < rows; ++i) {
    const std::int64_t q = q0 + i;
    const std::int64_t pos = layout.anchor_begin + layout.partner(q);
    if (pos >= c0 && pos < c0 + cols) m(i, pos - c0) -= sc.alpha_all[g0 + i] + sc.alpha_all[pos];
  }
}

// ---- the two ways of covering this rank's [2n, 2G] block of logits ----
//
// Rectangular: row blocks of the anchors against a set of column ranges, in parallel over row
// blocks. Symmetric: the rank's own [2n, 2n] diagonal block is symmetric (it holds every positive),
// so only its tiles I <= J are computed, each feeding the row statistics of I and the column
// statistics of J. The streamed path covers the block with the symmetric own block plus the
// rectangular rest (all of it in a single process); the kept path stores the whole block
// rectangularly.

// At most two [begin, end) ranges of U rows (the columns before and after the rank's own rows).
struct ColumnRanges {
  std::int64_t begin[2] = {0, 0};
  std::int64_t end[2] = {0, 0};
  int count = 0;
  void add(std::int64_t b, std::int64_t e) {
    begin[count] = b;
    end[count] = e;
    ++count;
  }
  std::int64_t total() const {
    std::int64_t c = 0;
    for (int k = 0; k < count; ++k) c += end[k] - begin[k];
    return c;
  }
};

ColumnRanges all_columns(const Layout& layout) {
  ColumnRanges out;
  out.add(0, layout.total_rows);
  return out;
}

// Columns of U outside this rank's own rows.
ColumnRanges other_columns(const Layout& layout) {
  ColumnRanges out;
  if (layout.anchor_begin > 0) out.add(0, layout.anchor_begin);
  const std::int64_t end = layout.anchor_begin + layout.anchors();
  if (end < layout.total_rows) out.add(end, layout.total_rows);
  return out;
}

// Running (max, sum) per anchor, one set per thread, merged in thread order (deterministic).
template <class T>
struct PartialStats {
  std::vector<Array<T>> max, sum;
  PartialStats(int threads, std::int64_t rows)
      : max(static_cast<std::size_t>(threads),
            Array<T>::Constant(rows, -std::numeric_limits<T>::infinity())),
        sum(static_cast<std::size_t>(threads), Array<T>::Zero(rows)) {}
};

template <class T>
double rect_forward(const TileProblem<T>& p, const ColumnRanges& columns, T* keep,
                    PartialStats<T>& stats, T* row_positive) {
  const Layout layout = layout_of(p);
  const ConstMap<T> u(p.u, p.total_rows, p.dim);
  const std::int64_t na = layout.anchors(), ncols = columns.total();
  if (na == 0 || ncols == 0) return 0;
  const std::int64_t br = p.tile_rows;
  const std::int64_t bc = keep ? layout.total_rows : p.tile_cols;
  const std::int64_t nblocks = (na + br - 1) / br;
  const T shift = fixed_shift(p.inv_temperature);
#pragma omp parallel num_threads(p.threads)
  {
    single_threaded_eigen();
    Matrix<T> buf;
    if (!keep) buf.resize(std::min(br, na), bc);
    // Tiles go into the kept block, or into this thread's buffer.
    Eigen::Map<Matrix<T>> out(keep ? keep : buf.data(), keep ? na : buf.rows(),
                              keep ? layout.total_rows : buf.cols());
    Array<T> tmax, tsum;
    Array<T>& pmax = stats.max[static_cast<std::size_t>(thread_id())];
    Array<T>& psum = stats.sum[static_cast<std::size_t>(thread_id())];
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t b = 0; b < nblocks; ++b) {
      const std::int64_t q0 = b * br, rows = std::min(br, na - q0);
      for (int k = 0; k < columns.count; ++k) {
        for (std::int64_t c0 = columns.begin[k]; c0 < columns.end[k]; c0 += bc) {
          const TileRange tile{q0, rows, c0, std::min(bc, columns.end[k] - c0)};
          auto s = keep ? out.block(q0, c0, rows, tile.cols) : out.block(0, 0, rows, tile.cols);
          logits_tile(u, layout, p.inv_temperature, tile, s, row_positive);
          tile_row_stats<T>(s, shift, tmax, tsum);
          for (std::int64_t i = 0; i < rows; ++i)
            lse_merge(pmax[q0 + i], psum[q0 + i], tmax[i], tsum[i]);
        }
      }
    }
  }
  return 2.0 * static_cast<double>(na) * static_cast<double>(ncols) * static_cast<double>(p.dim);
}

// The sum of m_qc s_qc over a tile's columns at or after U row `begin` (its first column is c0):
// vectorised in T along each row of the tile (at most tile_cols terms), the rows added in double.
template <class S, class Mm>
double negatives_dot(const S& s, const Mm& m, std::int64_t c0, std::int64_t begin) {
  const std::int64_t j0 = std::max<std::int64_t>(begin - c0, 0), cols = s.cols() - j0;
  if (cols <= 0) return 0;
  return (m.rightCols(cols).array() * s.rightCols(cols).array())
      .rowwise()
      .sum()
      .template cast<double>()
      .sum();
}

template <class T>
double rect_backward(const BackwardArgs<T>& args, const ColumnRanges& columns) {
  const TileProblem<T>& p = args.problem;
  const Layout layout = layout_of(p);
  const ConstMap<T> u(p.u, p.total_rows, p.dim);
  const std::int64_t na = layout.anchors(), ncols = columns.total();
  if (na == 0 || ncols == 0) return 0;
  const std::int64_t br = p.tile_rows;
  const std::int64_t bc = p.tile_cols;
  const std::int64_t nblocks = (na + br - 1) / br;
  const T inv_t = p.inv_temperature;
  const RowScalars<T> sc{args.lse_all, args.alpha_all, args.beta_all, fixed_shift(inv_t)};
  Eigen::Map<Matrix<T>> grad(args.grad, na, p.dim);
  const ConstMap<T> kept(args.logits, args.logits ? na : 0, args.logits ? layout.total_rows : 0);
  // Per row block, added in block order: the same sum on any number of threads.
  std::vector<double> dots(args.negatives_dot != nullptr ? static_cast<std::size_t>(nblocks) : 0);
  const std::int64_t nb = args.negatives_begin;
#pragma omp parallel num_threads(p.threads)
  {
    single_threaded_eigen();
    Matrix<T> sbuf(std::min(br, na), bc), mbuf(std::min(br, na), bc);
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t b = 0; b < nblocks; ++b) {
      const std::int64_t q0 = b * br, rows = std::min(br, na - q0);
      auto g = grad.middleRows(q0, rows);
      for (int k = 0; k < columns.count; ++k) {
        for (std::int64_t c0 = columns.begin[k]; c0 < columns.end[k]; c0 += bc) {
          const TileRange tile{q0, rows, c0, std::min(bc, columns.end[k] - c0)};
          auto m = mbuf.block(0, 0, rows, tile.cols);
          const bool dot = !dots.empty() && c0 + tile.cols > nb;
          if (args.logits) {
            const auto s = kept.block(q0, c0, rows, tile.cols);
            m_tile(s, layout, q0, c0, sc, m);
            if (dot) dots[static_cast<std::size_t>(b)] += negatives_dot(s, m, c0, nb);
          } else {
            auto s = sbuf.block(0, 0, rows, tile.cols);
            logits_tile(u, layout, inv_t, tile, s, static_cast<T*>(nullptr));
            m_tile(s, layout, q0, c0, sc, m);
            if (dot) dots[static_cast<std::size_t>(b)] += negatives_dot(s, m, c0, nb);
          }
          g.noalias() += inv_t * (m * u.middleRows(c0, tile.cols));
        }
      }
    }
  }
  for (const double d : dots) *args.negatives_dot += d;
  const double product =
      2.0 * static_cast<double>(na) * static_cast<double>(ncols) * static_cast<double>(p.dim);
  return args.logits ? product : 2 * product;
}

// Tile pairs I <= J over this rank's own 2n rows.
struct TilePair {
  std::int64_t i = 0, j = 0;
};
struct TilePairs {
  std::int64_t tile = 0, ntiles = 0;
  std::vector<TilePair> pairs;
  double entries = 0;  // logits computed: sum of tile areas over the pairs
  TilePairs(std::int64_t n, std::int64_t tile_) : tile(tile_), ntiles((n + tile_ - 1) / tile_) {
    for (std::int64_t i = 0; i < ntiles; ++i)
      for (std::int64_t j = i; j < ntiles; ++j) {
        pairs.push_back({i, j});
        entries += static_cast<double>(std::min(tile, n - i * tile)) *
                   static_cast<double>(std::min(tile, n - j * tile));
      }
  }
};

template <class T>
double sym_forward(const TileProblem<T>& p, PartialStats<T>& stats, T* row_positive) {
  const Layout layout = layout_of(p);
  const ConstMap<T> u(p.u, p.total_rows, p.dim);
  const std::int64_t n = layout.anchors(), base = layout.anchor_begin;
  if (n == 0) return 0;
  const TilePairs tp(n, p.tile_rows);
  const T shift = fixed_shift(p.inv_temperature);
  const auto npairs = static_cast<std::int64_t>(tp.pairs.size());
#pragma omp parallel num_threads(p.threads)
  {
    single_threaded_eigen();
    Matrix<T> buf(std::min(tp.tile, n), std::min(tp.tile, n)), ebuf(buf.rows(), buf.cols());
    Array<T> tmax, tsum, cmax, csum;
    Array<T>& pmax = stats.max[static_cast<std::size_t>(thread_id())];
    Array<T>& psum = stats.sum[static_cast<std::size_t>(thread_id())];
#pragma omp for schedule(static, 1)
    for (std::int64_t k = 0; k < npairs; ++k) {
      const TilePair pair = tp.pairs[static_cast<std::size_t>(k)];
      const std::int64_t r0 = pair.i * tp.tile,
                         rows = std::min(tp.tile, n - r0);  // local anchor indices
      const std::int64_t c0 = pair.j * tp.tile, cols = std::min(tp.tile, n - c0);
      auto s = buf.block(0, 0, rows, cols);
      logits_tile(u, layout, p.inv_temperature, TileRange{r0, rows, base + c0, cols}, s,
                  row_positive);
      if (pair.i == pair.j) {
        tile_row_stats<T>(s, shift, tmax, tsum);
      } else {
        tile_row_col_stats<T>(s, shift, ebuf, tmax, tsum, cmax, csum);
      }
      for (std::int64_t i = 0; i < rows; ++i)
        lse_merge(pmax[r0 + i], psum[r0 + i], tmax[i], tsum[i]);
      if (pair.i != pair.j) {
        for (std::int64_t j = 0; j < cols; ++j) {
          lse_merge(pmax[c0 + j], psum[c0 + j], cmax[j], csum[j]);
          const std::int64_t pos = layout.partner(c0 + j) - r0;
          if (pos >= 0 && pos < rows) row_positive[c0 + j] = s(pos, j);
        }
      }
    }
  }
  return 2.0 * tp.entries * static_cast<double>(p.dim);
}

// M restricted to the own block is symmetric too (docs/math.md): tile (I, J) feeds rows I with
// M_IJ U_J and rows J with M_IJ^T U_I. Per-thread accumulators, merged in thread order.
template <class T>
double sym_backward(const BackwardArgs<T>& args) {
  const TileProblem<T>& p = args.problem;
  const Layout layout = layout_of(p);
  const ConstMap<T> u(p.u, p.total_rows, p.dim);
  const std::int64_t n = layout.anchors(), base = layout.anchor_begin, d = p.dim;
  if (n == 0) return 0;
  const TilePairs tp(n, p.tile_rows);
  const T inv_t = p.inv_temperature;
  const RowScalars<T> sc{args.lse_all, args.alpha_all, args.beta_all, fixed_shift(inv_t)};
  const int threads = p.threads;
  std::vector<Matrix<T>> part(static_cast<std::size_t>(threads > 1 ? threads - 1 : 0));
  Eigen::Map<Matrix<T>> grad(args.grad, n, d);
  const auto npairs = static_cast<std::int64_t>(tp.pairs.size());
  const auto anchors = u.middleRows(base, n);
  double both_sides = 0;
  for (const TilePair& pair : tp.pairs)
    both_sides += static_cast<double>(std::min(tp.tile, n - pair.i * tp.tile)) *
                  static_cast<double>(std::min(tp.tile, n - pair.j * tp.tile)) *
                  (pair.i == pair.j ? 1.0 : 2.0);
#pragma omp parallel num_threads(threads)
  {
    single_threaded_eigen();
    const int tid = thread_id();
    if (tid != 0) part[static_cast<std::size_t>(tid - 1)].setZero(n, d);
    Eigen::Map<Matrix<T>> acc(tid == 0 ? args.grad : part[static_cast<std::size_t>(tid - 1)].data(),
                              n, d);
    Matrix<T> sbuf(std::min(tp.tile, n), std::min(tp.tile, n)), mbuf(sbuf.rows(), sbuf.cols());
#pragma omp for schedule(static, 1)
    for (std::int64_t k = 0; k < npairs; ++k) {
      const TilePair pair = tp.pairs[static_cast<std::size_t>(k)];
      const std::int64_t r0 = pair.i * tp.tile, rows = std::min(tp.tile, n - r0);
      const std::int64_t c0 = pair.j * tp.tile, cols = std::min(tp.tile, n - c0);
      auto s = sbuf.block(0, 0, rows, cols);
      auto m = mbuf.block(0, 0, rows, cols);
      logits_tile(u, layout, inv_t, TileRange{r0, rows, base + c0, cols}, s,
                  static_cast<T*>(nullptr));
      m_tile(s, layout, r0, base + c0, sc, m);
      acc.middleRows(r0, rows).noalias() += inv_t * (m * anchors.middleRows(c0, cols));
      if (pair.i != pair.j)
        acc.middleRows(c0, cols).noalias() +=
            inv_t * (m.transpose() * anchors.middleRows(r0, rows));
    }
  }
  for (auto& part_grad : part) grad += part_grad;
  // Recomputed tiles plus the products with U on both sides of each off-diagonal tile.
  return 2.0 * (tp.entries + both_sides) * static_cast<double>(d);
}

// ---- the balanced schedule's off-diagonal blocks ----

// The tiles of a PairArgs' blocks, in block order: every thread walks the same list.
template <class T>
std::vector<TileRange> pair_tiles(const PairArgs<T>& args) {
  std::vector<TileRange> tiles;
  const std::int64_t br = args.problem.tile_rows, bc = args.problem.tile_cols;
  for (std::int64_t k = 0; k < args.count; ++k) {
    const std::int64_t* b = args.blocks + 4 * k;
    for (std::int64_t r0 = b[0]; r0 < b[1]; r0 += br)
      for (std::int64_t c0 = b[2]; c0 < b[3]; c0 += bc)
        tiles.push_back({r0, std::min(br, b[1] - r0), c0, std::min(bc, b[3] - c0)});
  }
  return tiles;
}

double tile_entries(const std::vector<TileRange>& tiles) {
  double entries = 0;
  for (const TileRange& t : tiles)
    entries += static_cast<double>(t.rows) * static_cast<double>(t.cols);
  return entries;
}

}  // namespace

// Each tile of U rows R against U rows C adds exp(s - shift) to the sums of its rows and of its
// columns. Per-thread sums, merged in thread order; static scheduling so that a thread count gives
// the same additions every time.
template <class T>
double pair_forward(const PairArgs<T>& args) {
  const TileProblem<T>& p = args.problem;
  const std::vector<TileRange> tiles = pair_tiles(args);
  if (tiles.empty()) return 0;
  const ConstMap<T> u(p.u, p.total_rows, p.dim);
  const T shift = fixed_shift(p.inv_temperature);
  const auto ntiles = static_cast<std::int64_t>(tiles.size());
  std::vector<Array<T>> part(static_cast<std::size_t>(p.threads));
#pragma omp parallel num_threads(p.threads)
  {
    single_threaded_eigen();
    Array<T>& acc = part[static_cast<std::size_t>(thread_id())];
    acc = Array<T>::Zero(p.total_rows);
    Matrix<T> buf(p.tile_rows, p.tile_cols);
#pragma omp for schedule(static, 1)
    for (std::int64_t k = 0; k < ntiles; ++k) {
      const TileRange& t = tiles[static_cast<std::size_t>(k)];
      auto e = buf.block(0, 0, t.rows, t.cols);
      e.noalias() =
          p.inv_temperature * (u.middleRows(t.q0, t.rows) * u.middleRows(t.c0, t.cols).transpose());
      e.array() = (e.array() - shift).exp();
      acc.segment(t.q0, t.rows) += e.array().rowwise().sum();
      acc.segment(t.c0, t.cols) += e.array().colwise().sum().transpose();
    }
  }
  Eigen::Map<Array<T>> sums(args.sums, p.total_rows);
  for (const Array<T>& acc : part)
    if (acc.size() == p.total_rows) sums += acc;
  return 2.0 * tile_entries(tiles) * static_cast<double>(p.dim);
}

// Each tile recomputes its logits, forms M (no self entry and no positive off the diagonal blocks)
// and adds M U_C to its rows and M^T U_R to its columns, in per-thread [2G, d] accumulators merged
// in thread order (thread 0 writes into args.grad).
template <class T>
double pair_backward(const PairArgs<T>& args) {
  const TileProblem<T>& p = args.problem;
  const std::vector<TileRange> tiles = pair_tiles(args);
  if (tiles.empty()) return 0;
  const ConstMap<T> u(p.u, p.total_rows, p.dim);
  const T inv_t = p.inv_temperature, shift = fixed_shift(inv_t);
  const auto ntiles = static_cast<std::int64_t>(tiles.size());
  std::vector<Matrix<T>> part(static_cast<std::size_t>(p.threads > 1 ? p.threads - 1 : 0));
  Eigen::Map<Matrix<T>> grad(args.grad, p.total_rows, p.dim);
#pragma omp parallel num_threads(p.threads)
  {
    single_threaded_eigen();
    const int tid = thread_id();
    if (tid != 0) part[static_cast<std::size_t>(tid - 1)].setZero(p.total_rows, p.dim);
    Eigen::Map<Matrix<T>> acc(tid == 0 ? args.grad : part[static_cast<std::size_t>(tid - 1)].data(),
                              p.total_rows, p.dim);
    Matrix<T> mbuf(p.tile_rows, p.tile_cols);
#pragma omp for schedule(static, 1)
    for (std::int64_t k = 0; k < ntiles; ++k) {
      const TileRange& t = tiles[static_cast<std::size_t>(k)];
      auto m = mbuf.block(0, 0, t.rows, t.cols);
      const auto ur = u.middleRows(t.q0, t.rows);
      const auto uc = u.middleRows(t.c0, t.cols);
      m.noalias() = inv_t * (ur * uc.transpose());
      if (args.beta_all != nullptr) {
        // Row by row, as m_tile does: a replicated [rows, cols] operand keeps Eigen from
        // vectorising the exp (it fell back to scalar expf, 15% of a balanced step at G = 8192).
        Eigen::Map<const Array<T>> beta_c(args.beta_all + t.c0, t.cols);
        for (std::int64_t i = 0; i < t.rows; ++i)
          m.row(i).array() =
              (m.row(i).array() - shift).exp() * (beta_c.transpose() + args.beta_all[t.q0 + i]);
      } else {
        Eigen::Map<const Array<T>> lse_r(args.lse_all + t.q0, t.rows),
            alpha_r(args.alpha_all + t.q0, t.rows), lse_c(args.lse_all + t.c0, t.cols),
            alpha_c(args.alpha_all + t.c0, t.cols);
        m.array() = (m.array().colwise() - lse_r).exp().colwise() * alpha_r +
                    (m.array().rowwise() - lse_c.transpose()).exp().rowwise() * alpha_c.transpose();
      }
      acc.middleRows(t.q0, t.rows).noalias() += inv_t * (m * uc);
      acc.middleRows(t.c0, t.cols).noalias() += inv_t * (m.transpose() * ur);
    }
  }
  for (auto& part_grad : part) grad += part_grad;
  // The recomputed logits and the two products with U.
  return 6.0 * tile_entries(tiles) * static_cast<double>(p.dim);
}

template <class T>
double forward(const ForwardArgs<T>& args) {
  const TileProblem<T>& p = args.problem;
  const Layout layout = layout_of(p);
  const std::int64_t na = layout.anchors();
  if (na == 0) return 0;
  PartialStats<T> stats(p.threads, na);
  double flops = 0;
  if (p.own_block_only) {
    ColumnRanges own;
    own.add(layout.anchor_begin, layout.anchor_begin + na);
    flops = p.symmetric ? sym_forward(p, stats, args.row_positive)
                        : rect_forward(p, own, static_cast<T*>(nullptr), stats, args.row_positive);
  } else if (args.logits != nullptr) {
    flops = rect_forward(p, all_columns(layout), args.logits, stats, args.row_positive);
  } else if (p.symmetric) {
    flops = sym_forward(p, stats, args.row_positive);
    flops +=
        rect_forward(p, other_columns(layout), static_cast<T*>(nullptr), stats, args.row_positive);
  } else {
    flops =
        rect_forward(p, all_columns(layout), static_cast<T*>(nullptr), stats, args.row_positive);
  }
  for (std::int64_t q = 0; q < na; ++q) {
    T run_max = -std::numeric_limits<T>::infinity(), run_sum = 0;
    for (int t = 0; t < p.threads; ++t)
      lse_merge(run_max, run_sum, stats.max[static_cast<std::size_t>(t)][q],
                stats.sum[static_cast<std::size_t>(t)][q]);
    args.row_lse[q] = run_max + std::log(run_sum);
    if (args.row_sum != nullptr)
      args.row_sum[q] = run_max == -std::numeric_limits<T>::infinity() ? T(0) : run_sum;
  }
  return flops;
}

template <class T>
double backward(const BackwardArgs<T>& args) {
  const Layout layout = layout_of(args.problem);
  if (layout.anchors() == 0) return 0;
  if (args.problem.own_block_only) {
    if (args.problem.symmetric) return sym_backward(args);
    ColumnRanges own;
    own.add(layout.anchor_begin, layout.anchor_begin + layout.anchors());
    return rect_backward(args, own);
  }
  if (args.logits != nullptr) return rect_backward(args, all_columns(layout));
  if (args.problem.symmetric)
    return sym_backward(args) + rect_backward(args, other_columns(layout));
  return rect_backward(args, all_columns(layout));
}

template <class T>
void square_gemm(const T* a, const T* b, T* c, std::int64_t n, int threads) {
  const ConstMap<T> ma(a, n, n), mb(b, n, n);
  Eigen::Map<Matrix<T>> mc(c, n, n);
  // This level's copy of Eigen keeps its own thread count (its namespace is renamed): set it here.
  Eigen::setNbThreads(threads);
  mc.noalias() = ma * mb;
  Eigen::setNbThreads(0);
}

template void square_gemm<float>(const float*, const float*, float*, std::int64_t, int);
template void square_gemm<double>(const double*, const double*, double*, std::int64_t, int);

template double forward<float>(const ForwardArgs<float>&);
template double forward<double>(const ForwardArgs<double>&);
template double backward<float>(const BackwardArgs<float>&);
template double backward<double>(const BackwardArgs<double>&);
template double pair_forward<float>(const PairArgs<float>&);
template double pair_forward<double>(const PairArgs<double>&);
template double pair_backward<float>(const PairArgs<float>&);
template double pair_backward<double>(const PairArgs<double>&);

}  // namespace simclr::detail::kernels::SIMCLR_KERNEL_LEVEL

// The engine's paths agree with each other and with the naive reference: streamed (memory budget
// 0), kept logits (large budget), the single-process symmetric path, several thread counts and tile
// sizes that do not divide the batch (docs/math.md section 5).

#include <gtest/gtest.h>

#include <algorithm>

#include "reference.hpp"
#include "simclr/detail/engine.hpp"
#include "simclr/loss.hpp"

namespace simclr {
namespace {

using M = RowMatrix<double>;

struct PathResult {
  std::vector<double> values;
  M ga, gb;
};

PathResult run(const M& a, const M& b, const EngineOptions& opt, double t = 0.1,
               Reduction r = Reduction::kNone) {
  CallOptions o;
  o.engine = opt;
  const SimCLRLoss loss(t, r);
  auto [out, g] = loss.value_and_gradient<double>(a, b, nullptr, o);
  return {out.values, g.grad_a, g.grad_b};
}

EngineOptions opts(std::size_t budget, int threads, std::int64_t rb, std::int64_t ct, bool sym) {
  EngineOptions e;
  e.memory_budget_bytes = budget;
  e.threads = threads;
  e.tile_rows = rb;
  e.tile_cols = ct;
  e.symmetric = sym;
  return e;
}

M seeded(int view, int n, int d) {
  M m(n, d);
  const auto rows = test::seeded_rows(5, view, 0, n, d);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < d; ++j) m(i, j) = rows[i][j];
  return m;
}

double max_rel(const std::vector<double>& x, const std::vector<double>& y) {
  double e = 0;
  for (std::size_t i = 0; i < x.size(); ++i) e = std::max(e, test::rel_err(x[i], y[i]));
  return e;
}

TEST(EnginePaths, AllPathsAgreeAcrossTileBoundaries) {
  for (int n : {1, 2, 7, 13, 40}) {
    const M a = seeded(0, n, 9), b = seeded(1, n, 9);
    const auto za = test::seeded_rows(5, 0, 0, n, 9), zb = test::seeded_rows(5, 1, 0, n, 9);
    const auto ref = test::ref_per_example(za, zb, 0.1);
    const PathResult base = run(a, b, opts(0, 1, 0, 0, false));
    EXPECT_LE(max_rel(base.values, ref), 1e-11) << "n=" << n;
    for (std::size_t budget : {std::size_t{0}, std::size_t{1} << 30}) {
      for (int threads : {1, 2, 3}) {
        for (auto [rb, ct] :
             {std::pair<std::int64_t, std::int64_t>{0, 0}, {3, 5}, {4, 7}, {1, 1}}) {
          for (bool sym : {false, true}) {
            SCOPED_TRACE(::testing::Message()
                         << "n=" << n << " budget=" << budget << " threads=" << threads
                         << " rb=" << rb << " ct=" << ct << " sym=" << sym);
            const PathResult r = run(a, b, opts(budget, threads, rb, ct, sym));
            EXPECT_LE(max_rel(r.values, base.values), 1e-12);
            EXPECT_LE((r.ga - base.ga).norm(), 1e-11 * std::max(1.0, base.ga.norm()));
            EXPECT_LE((r.gb - base.gb).norm(), 1e-11 * std::max(1.0, base.gb.norm()));
          }
        }
      }
    }
  }
}

TEST(EnginePaths, DoubleIsBitStableRunToRunForFixedThreads) {
  const M a = seeded(0, 300, 16), b = seeded(1, 300, 16);
  for (bool sym : {false, true}) {
    for (std::size_t budget : {std::size_t{0}, std::size_t{1} << 30}) {
      const auto o = opts(budget, 2, 32, 64, sym);
      const PathResult r1 = run(a, b, o), r2 = run(a, b, o);
      EXPECT_EQ(r1.values, r2.values);
      EXPECT_EQ(r1.ga, r2.ga);
      EXPECT_EQ(r1.gb, r2.gb);
    }
  }
}

TEST(EnginePaths, RowPathIsIndependentOfThreadCount) {
  // Each anchor row is reduced over the same tiles in the same order whatever thread runs it.
  const M a = seeded(0, 150, 8), b = seeded(1, 150, 8);
  const PathResult r1 = run(a, b, opts(0, 1, 16, 32, false)),
                   r3 = run(a, b, opts(0, 3, 16, 32, false));
  EXPECT_EQ(r1.values, r3.values);
  EXPECT_EQ(r1.ga, r3.ga);
}

TEST(EnginePaths, FloatPathsAgree) {
  const int n = 97, d = 12;
  RowMatrix<float> a = seeded(0, n, d).cast<float>(), b = seeded(1, n, d).cast<float>();
  // The float inputs, exactly, for the reference.
  std::vector<std::vector<double>> fa(n, std::vector<double>(d)), fb(n, std::vector<double>(d));
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < d; ++j) {
      fa[i][j] = static_cast<double>(a(i, j));
      fb[i][j] = static_cast<double>(b(i, j));
    }
  }
  const auto ref = test::ref_per_example(fa, fb, 0.05);
  for (bool sym : {false, true}) {
    for (std::size_t budget : {std::size_t{0}, std::size_t{1} << 30}) {
      CallOptions o;
      o.engine = opts(budget, 2, 8, 24, sym);
      const auto out = SimCLRLoss(0.05, Reduction::kNone).forward<float>(a, b, nullptr, o);
      // float32: logits up to 1/T = 20 carry ~20 * 6e-8 absolute error each; LSE inherits it.
      for (int i = 0; i < n; ++i) EXPECT_NEAR(out.values[i], ref[i], 2e-5 * std::max(1.0, ref[i]));
    }
  }
}

TEST(EnginePaths, TinyTemperatureStaysFiniteInFloat) {
  // T = 1e-3: logits reach 1000, far beyond exp's float range; the online max keeps LSE finite.
  RowMatrix<float> a = seeded(0, 20, 6).cast<float>(), b = seeded(1, 20, 6).cast<float>();
  const SimCLRLoss loss(1e-3, Reduction::kSum);
  auto [out, g] = loss.value_and_gradient<float>(a, b);
  EXPECT_TRUE(std::isfinite(out.objective));
  EXPECT_TRUE(g.grad_a.allFinite());
  EXPECT_TRUE(g.grad_b.allFinite());
}

TEST(EnginePaths, MemoryBudgetSelectsThePath) {
  // Kept logits do one product fewer in the backward; the flops report tells which path ran.
  const M a = seeded(0, 64, 8), b = seeded(1, 64, 8);
  CallOptions keep, stream;
  keep.engine = opts(std::size_t{1} << 30, 1, 0, 0, false);
  stream.engine = opts(0, 1, 0, 0, false);
  const SimCLRLoss loss(0.1, Reduction::kSum);
  const auto k = loss.value_and_gradient<double>(a, b, nullptr, keep);
  const auto s = loss.value_and_gradient<double>(a, b, nullptr, stream);
  const double equivalent = 2.0 * 128 * 128 * 8;  // one [2N, 2N] x d product
  EXPECT_DOUBLE_EQ(k.first.flops + k.second.flops, 2 * equivalent);
  EXPECT_DOUBLE_EQ(s.first.flops + s.second.flops, 3 * equivalent);
  // Streaming with symmetry: tiles I <= J only, (8 * 9 / 2) of 64 tiles of 16 x 16 in the forward;
  // the backward recomputes those and multiplies both sides of each off-diagonal tile (64
  // tile-products).
  CallOptions sym = stream;
  sym.engine.symmetric = true;
  sym.engine.tile_rows = 16;
  const auto y = loss.value_and_gradient<double>(a, b, nullptr, sym);
  EXPECT_DOUBLE_EQ(y.second.flops, equivalent * (36.0 + 64.0) / 64.0);
  EXPECT_DOUBLE_EQ(y.first.flops, equivalent * 36.0 / 64.0);
}

}  // namespace
}  // namespace simclr

namespace simclr {
namespace {

TEST(EnginePaths, HugeWeightsFallBackToTheTwoExponentialBackward) {
  // beta = alpha exp(1/T - LSE) would overflow float for alpha = 1e36: the engine must notice and
  // use the two-exponential form. The gradient is linear in the weight, so it must equal 1e36 x
  // weight 1.
  RowMatrix<float> a = RowMatrix<float>::Random(12, 5), b = RowMatrix<float>::Random(12, 5);
  const SimCLRLoss loss(0.05, Reduction::kSum);
  const SampleWeight big = SampleWeight::scalar(1e36), one = SampleWeight::scalar(1);
  for (bool sym : {false, true}) {
    CallOptions o;
    o.engine.symmetric = sym;
    o.engine.memory_budget_bytes = 0;
    const auto gb = loss.value_and_gradient<float>(a, b, &big, o).second;
    const auto g1 = loss.value_and_gradient<float>(a, b, &one, o).second;
    ASSERT_TRUE(gb.grad_a.allFinite());
    EXPECT_TRUE((gb.grad_a / 1e36f).isApprox(g1.grad_a, 1e-4f));
  }
}

TEST(EnginePaths, FixedShiftAndRunningMaxAgree) {
  // Double precision takes the fixed shift for T = 0.01 (2/T = 200 < 700) and float the running
  // max; both must agree with the long-double reference.
  const int n = 30, d = 7;
  const auto za = test::seeded_rows(8, 0, 0, n, d), zb = test::seeded_rows(8, 1, 0, n, d);
  std::vector<std::vector<double>> fa = za, fb = zb;
  RowMatrix<float> af(n, d), bf(n, d);
  RowMatrix<double> ad(n, d), bd(n, d);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < d; ++j) {
      af(i, j) = static_cast<float>(za[i][j]);
      bf(i, j) = static_cast<float>(zb[i][j]);
      fa[i][j] = ad(i, j) = static_cast<double>(af(i, j));
      fb[i][j] = bd(i, j) = static_cast<double>(bf(i, j));
    }
  const auto ref = test::ref_per_example(fa, fb, 0.01);
  const SimCLRLoss loss(0.01, Reduction::kNone);
  const auto lf = loss.forward<float>(af, bf).values;
  const auto ld = loss.forward<double>(ad, bd).values;
  for (int i = 0; i < n; ++i) {
    EXPECT_NEAR(ld[i], ref[i], 1e-10 * std::max(1.0, ref[i]));
    // float: logits up to 100 carry ~1e-5 absolute rounding.
    EXPECT_NEAR(lf[i], ref[i], 1e-4 * std::max(1.0, ref[i]));
  }
}

// The balanced schedule's blocks cover every off-diagonal pair of rank blocks exactly once (as
// (i, j) or as (j, i)), never a diagonal block, and with an even split give every rank the same
// number of logits to within one rank block; at every P from 1 to 9 and for uneven and empty ranks.
TEST(BalancedSchedule, BlocksCoverEveryPairOnceAndEvenly) {
  for (int p = 1; p <= 9; ++p) {
    std::vector<std::vector<std::int64_t>> splits = {std::vector<std::int64_t>(p, 3)};
    std::vector<std::int64_t> uneven(p);
    for (int r = 0; r < p; ++r) uneven[r] = (r * 5) % 4;  // includes empty ranks
    splits.push_back(uneven);
    for (const auto& split : splits) {
      std::vector<std::int64_t> owner;  // rank of each U row
      for (int r = 0; r < p; ++r)
        for (std::int64_t i = 0; i < 2 * split[r]; ++i) owner.push_back(r);
      const auto rows = static_cast<std::int64_t>(owner.size());
      std::vector<int> hits(static_cast<std::size_t>(rows * rows), 0);
      std::vector<double> work(static_cast<std::size_t>(p), 0);
      for (int r = 0; r < p; ++r) {
        const std::vector<std::int64_t> blocks = detail::balanced_blocks(split, r);
        ASSERT_EQ(blocks.size() % 4, 0u);
        for (std::size_t k = 0; k < blocks.size(); k += 4) {
          for (std::int64_t i = blocks[k]; i < blocks[k + 1]; ++i) {
            for (std::int64_t j = blocks[k + 2]; j < blocks[k + 3]; ++j) {
              ASSERT_NE(owner[i], owner[j]) << "P " << p << ": a diagonal block on rank " << r;
              ++hits[static_cast<std::size_t>(std::min(i, j) * rows + std::max(i, j))];
              work[static_cast<std::size_t>(r)] += 1;
            }
          }
        }
      }
      for (std::int64_t i = 0; i < rows; ++i)
        for (std::int64_t j = i + 1; j < rows; ++j)
          EXPECT_EQ(hits[static_cast<std::size_t>(i * rows + j)], owner[i] == owner[j] ? 0 : 1)
              << "P " << p << " rows " << i << ", " << j;
      if (split == splits[0]) {
        const auto [lo, hi] = std::minmax_element(work.begin(), work.end());
        EXPECT_LE(*hi - *lo, 36.0) << "P " << p;  // one 6 x 6 rank block
      }
    }
  }
}

TEST(BalancedSchedule, NamesRoundTripAndBadNamesSayWhatIsAllowed) {
  for (Schedule s : {Schedule::kAuto, Schedule::kOwnRows, Schedule::kBalanced})
    EXPECT_EQ(parse_schedule(to_string(s)), s);
  try {
    parse_schedule("ring");
    FAIL() << "no exception";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("auto, own_rows, balanced"), std::string::npos);
  }
}

// auto follows the cost model: own_rows for one rank, tiny batches or no fixed shift; balanced for
// the large batches where the saved products outweigh the reduce-scatters.
TEST(BalancedSchedule, AutoFollowsTheCostModel) {
  using detail::resolve_schedule;
  EXPECT_EQ(resolve_schedule(Schedule::kAuto, {4096}, 128, 4, true), Schedule::kOwnRows);
  EXPECT_EQ(resolve_schedule(Schedule::kBalanced, {4096}, 128, 4, true), Schedule::kOwnRows);
  EXPECT_EQ(resolve_schedule(Schedule::kAuto, {4096, 4096}, 128, 4, true), Schedule::kBalanced);
  EXPECT_EQ(resolve_schedule(Schedule::kAuto, {4096, 4096}, 128, 4, false), Schedule::kOwnRows);
  EXPECT_EQ(resolve_schedule(Schedule::kBalanced, {4096, 4096}, 128, 4, false), Schedule::kOwnRows);
  EXPECT_EQ(resolve_schedule(Schedule::kAuto, {5, 6}, 6, 8, true), Schedule::kOwnRows);
  EXPECT_EQ(resolve_schedule(Schedule::kOwnRows, {4096, 4096}, 128, 4, true), Schedule::kOwnRows);
  // Through a gather-only communicator the reduce-scatter costs P times more: at 64 ranks of 1024
  // pairs the saved products no longer pay for it.
  const std::vector<std::int64_t> many(64, 1024);
  EXPECT_EQ(resolve_schedule(Schedule::kAuto, many, 128, 4, true, true), Schedule::kBalanced);
  EXPECT_EQ(resolve_schedule(Schedule::kAuto, many, 128, 4, true, false), Schedule::kOwnRows);
}

}  // namespace
}  // namespace simclr

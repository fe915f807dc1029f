// The engine's tile loops at every CPU level this build has and this machine runs (baseline,
// avx2, avx512) give the baseline's results: every engine path (streamed, kept, symmetric, a rank's
// part of a larger batch), float and double, values and gradients. The levels differ only in
// vector width and FMA contraction, so double agrees to rounding (1e-12) and float to its
// condition (logits up to 1/T = 10 with ~1e-7 relative rounding each).

#include <gtest/gtest.h>

#include <cstdlib>

#include "reference.hpp"
#include "simclr/detail/engine.hpp"
#include "simclr/loss.hpp"

namespace simclr {
namespace {

template <class T>
RowMatrix<T> seeded(int seed, int view, int n, int d) {
  RowMatrix<T> m(n, d);
  const auto rows = test::seeded_rows(seed, view, 0, n, d);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < d; ++j) m(i, j) = static_cast<T>(rows[i][j]);
  return m;
}

template <class T>
struct Result {
  std::vector<T> values;
  RowMatrix<T> ga, gb;
};

template <class T>
Result<T> run(const RowMatrix<T>& a, const RowMatrix<T>& b, const EngineOptions& e) {
  CallOptions o;
  o.engine = e;
  auto [out, g] = SimCLRLoss(0.1, Reduction::kNone).value_and_gradient<T>(a, b, nullptr, o);
  return {out.values, g.grad_a, g.grad_b};
}

// A rank's part of a larger batch through the engine directly: the anchors are rows
// [anchor_begin, anchor_begin + 2n) of U, so the rectangular columns on both sides are used.
template <class T>
Result<T> run_part(const RowMatrix<T>& u, const EngineOptions& e) {
  detail::RowLayout layout;
  layout.total_rows = u.rows();
  layout.pairs = u.rows() / 6;
  layout.anchor_begin = 2 * layout.pairs;
  const T inv_t = T(10);
  const auto fwd = detail::engine_forward<T>(u, layout, inv_t, e);
  // Every row's LSE and weight in U order: this rank's own LSE for its rows, a fixed value
  // elsewhere.
  std::vector<T> lse(static_cast<std::size_t>(u.rows()), T(4)), alpha(lse.size());
  for (std::size_t i = 0; i < alpha.size(); ++i) alpha[i] = T(0.5) + T(i % 7) / T(8);
  for (std::int64_t q = 0; q < layout.anchors(); ++q)
    lse[static_cast<std::size_t>(layout.anchor_begin + q)] =
        fwd.row_lse[static_cast<std::size_t>(q)];
  detail::EngineBackwardArgs<T> args;
  args.u = u;
  args.layout = layout;
  args.inv_temperature = inv_t;
  args.lse_all = lse.data();
  args.alpha_all = alpha.data();
  args.saved = &fwd;
  args.options = e;
  RowMatrix<T> grad;
  detail::engine_backward(args, grad);
  return {fwd.row_lse, grad, RowMatrix<T>()};
}

template <class T>
void expect_close(const Result<T>& r, const Result<T>& base, double tol) {
  ASSERT_EQ(r.values.size(), base.values.size());
  for (std::size_t i = 0; i < r.values.size(); ++i)
    EXPECT_NEAR(r.values[i], base.values[i], tol * std::max(1.0, std::abs(double(base.values[i]))))
        << "row " << i;
  EXPECT_LE(double((r.ga - base.ga).norm()), tol * std::max(1.0, double(base.ga.norm())));
  EXPECT_LE(double((r.gb - base.gb).norm()), tol * std::max(1.0, double(base.gb.norm())));
}

std::vector<EngineOptions> engine_paths() {
  std::vector<EngineOptions> out;
  for (std::size_t budget : {std::size_t{0}, std::size_t{1} << 30})
    for (bool sym : {false, true})
      for (std::int64_t tile : {0, 13}) {
        EngineOptions e;
        e.memory_budget_bytes = budget;
        e.symmetric = sym;
        e.tile_rows = tile;
        e.tile_cols = tile == 0 ? 0 : 2 * tile + 1;
        e.threads = 2;
        out.push_back(e);
      }
  return out;
}

template <class T>
void check_levels(double tol) {
  const std::vector<detail::CpuLevel> levels = detail::supported_cpu_levels();
  ASSERT_FALSE(levels.empty());
  ASSERT_EQ(levels.front(), detail::CpuLevel::kBaseline);
  const detail::CpuLevel before = detail::cpu_level();
  const int n = 60, d = 33;  // d not a multiple of any vector width
  const RowMatrix<T> a = seeded<T>(3, 0, n, d), b = seeded<T>(3, 1, n, d);
  RowMatrix<T> u = seeded<T>(4, 0, 6 * n, d);
  u.rowwise().normalize();
  for (const EngineOptions& e : engine_paths()) {
    detail::set_cpu_level(detail::CpuLevel::kBaseline);
    const Result<T> base = run(a, b, e), base_part = run_part(u, e);
    for (detail::CpuLevel level : levels) {
      SCOPED_TRACE(::testing::Message()
                   << "level=" << detail::to_string(level) << " budget=" << e.memory_budget_bytes
                   << " symmetric=" << e.symmetric << " tile_rows=" << e.tile_rows);
      detail::set_cpu_level(level);
      expect_close(run(a, b, e), base, tol);
      expect_close(run_part(u, e), base_part, tol);
    }
  }
  detail::set_cpu_level(before);
}

TEST(CpuDispatch, EveryLevelAgreesWithBaselineDouble) { check_levels<double>(1e-12); }

TEST(CpuDispatch, EveryLevelAgreesWithBaselineFloat) { check_levels<float>(2e-5); }

// The reference GEMM of `simclr-loss bench` runs at the same level as the tile loops; at every
// level it is the product, on one thread and on two (n not a multiple of any vector width).
template <class T>
void check_reference_gemm(double tol) {
  const detail::CpuLevel before = detail::cpu_level();
  const int n = 67;
  const RowMatrix<T> a = seeded<T>(5, 0, n, n), b = seeded<T>(5, 1, n, n);
  const RowMatrix<T> want =
      (a.template cast<double>() * b.template cast<double>()).template cast<T>();
  for (detail::CpuLevel level : detail::supported_cpu_levels()) {
    detail::set_cpu_level(level);
    for (int threads : {0, 1, 2}) {
      SCOPED_TRACE(::testing::Message()
                   << "level=" << detail::to_string(level) << " threads=" << threads);
      RowMatrix<T> c = RowMatrix<T>::Constant(n, n, T(7));
      detail::reference_gemm(a.data(), b.data(), c.data(), n, threads);
      EXPECT_LE(double((c - want).norm()), tol * double(want.norm()));
    }
  }
  detail::set_cpu_level(before);
}

TEST(CpuDispatch, ReferenceGemmIsTheProductAtEveryLevel) {
  check_reference_gemm<double>(1e-13);
  check_reference_gemm<float>(1e-6);
}

TEST(CpuDispatch, LevelsAreOrderedAndNamed) {
  const auto levels = detail::supported_cpu_levels();
  for (std::size_t i = 1; i < levels.size(); ++i) EXPECT_LT(levels[i - 1], levels[i]);
  EXPECT_STREQ(detail::to_string(detail::CpuLevel::kBaseline), "baseline");
  EXPECT_STREQ(detail::to_string(detail::CpuLevel::kAvx2), "avx2");
  EXPECT_STREQ(detail::to_string(detail::CpuLevel::kAvx512), "avx512");
  // This machine's widest level is the default unless SIMCLR_CPU_DISPATCH says otherwise.
  if (std::getenv("SIMCLR_CPU_DISPATCH") == nullptr) {
    const detail::CpuLevel before = detail::cpu_level();
    EXPECT_EQ(before, levels.back());
  }
}

TEST(CpuDispatch, EnvironmentForcesTheLevel) {
  // Registered again with SIMCLR_CPU_DISPATCH=baseline (tests/CMakeLists.txt).
  const char* env = std::getenv("SIMCLR_CPU_DISPATCH");
  if (env == nullptr) GTEST_SKIP() << "SIMCLR_CPU_DISPATCH not set";
  EXPECT_STREQ(detail::to_string(detail::cpu_level()), env);
}

TEST(CpuDispatch, UnavailableLevelIsAValueError) {
  const auto levels = detail::supported_cpu_levels();
  if (levels.back() == detail::CpuLevel::kAvx512) GTEST_SKIP() << "every level runs here";
  EXPECT_THROW(detail::set_cpu_level(detail::CpuLevel::kAvx512), ValueError);
}

}  // namespace
}  // namespace simclr

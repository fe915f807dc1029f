// Every hand-checked value of docs/math.md section 1.5, and every row of the sample-weight table
// of section 1.4.

#include <gtest/gtest.h>

#include <cmath>

#include "reference.hpp"
#include "simclr/loss.hpp"

namespace simclr {
namespace {

using M = RowMatrix<double>;

M mat(std::initializer_list<std::initializer_list<double>> rows) {
  M m(static_cast<Eigen::Index>(rows.size()), static_cast<Eigen::Index>(rows.begin()->size()));
  Eigen::Index i = 0;
  for (const auto& r : rows) {
    Eigen::Index j = 0;
    for (double v : r) m(i, j++) = v;
    ++i;
  }
  return m;
}

std::vector<double> none_loss(const M& a, const M& b, double t, const SampleWeight* w = nullptr) {
  return SimCLRLoss(t, Reduction::kNone).forward<double>(a, b, w).values;
}

TEST(HandValues, IdentityPairsTemperatureOne) {
  const double want = 2 * (std::log(std::exp(1.0) + 2) - 1);  // 1.102889428
  EXPECT_NEAR(want, 1.102889428, 1e-9);
  const auto l = none_loss(mat({{1, 0}, {0, 1}}), mat({{1, 0}, {0, 1}}), 1.0);
  ASSERT_EQ(l.size(), 2u);
  EXPECT_NEAR(l[0], 1.102889428, 1e-9);
  EXPECT_NEAR(l[1], 1.102889428, 1e-9);
  const auto sum = SimCLRLoss(1.0, Reduction::kSum)
                       .forward<double>(mat({{1, 0}, {0, 1}}), mat({{1, 0}, {0, 1}}));
  EXPECT_NEAR(sum.values.at(0), 2.205778856, 1e-9);
}

TEST(HandValues, NormalisationMakesScaleIrrelevant) {
  const auto l = none_loss(mat({{2, 0}, {0, 3}}), mat({{5, 0}, {0, 0.5}}), 1.0);
  EXPECT_NEAR(l[0], 1.102889428, 1e-9);
  EXPECT_NEAR(l[1], 1.102889428, 1e-9);
}

TEST(HandValues, TemperatureHalf) {
  const auto l = none_loss(mat({{1, 0}, {0, 1}}), mat({{1, 0}, {0, 1}}), 0.5);
  EXPECT_NEAR(l[0], 0.479089532, 1e-9);
  EXPECT_NEAR(l[1], 0.479089532, 1e-9);
}

TEST(HandValues, SingleExampleIsZero) {
  const auto l = none_loss(mat({{1, 2, 3}}), mat({{-1, 0.5, 2}}), 0.05);
  ASSERT_EQ(l.size(), 1u);
  EXPECT_EQ(l[0], 0.0);
}

TEST(HandValues, ThreeExamples) {
  const M a = mat({{1, 0}, {0, 1}, {1, 1}}), b = mat({{1, 0}, {0, 1}, {1, -1}});
  const auto l = none_loss(a, b, 1.0);
  EXPECT_NEAR(l[0], 2.343702263, 1e-9);
  EXPECT_NEAR(l[1], 1.959094756, 1e-9);
  EXPECT_NEAR(l[2], 4.008438580, 1e-9);
  EXPECT_NEAR(SimCLRLoss(1.0, Reduction::kSumOverBatchSize).forward<double>(a, b).values.at(0),
              2.770411866, 1e-9);
  EXPECT_NEAR(SimCLRLoss(1.0, Reduction::kAuto).forward<double>(a, b).values.at(0), 2.770411866,
              1e-9);
  EXPECT_NEAR(SimCLRLoss(1.0, Reduction::kSum).forward<double>(a, b).values.at(0), 8.311235598,
              1e-9);
  const SampleWeight w = SampleWeight::per_example({1, 2, 3});
  EXPECT_NEAR(SimCLRLoss(1.0, Reduction::kSumOverBatchSize).forward<double>(a, b, &w).values.at(0),
              6.095735838, 1e-9);
}

TEST(HandValues, IdenticalRowsGiveLog2NMinus1) {
  for (int n : {2, 4, 7}) {
    M a = M::Ones(n, 5), b = M::Ones(n, 5) * 3.0;
    const auto l = none_loss(a, b, 0.05);
    for (double v : l) EXPECT_NEAR(v, 2 * std::log(2.0 * n - 1), 1e-9) << "N=" << n;
  }
  EXPECT_NEAR(2 * std::log(7.0), 3.8918, 1e-4);
}

TEST(HandValues, ResultsKeepTheInputDtype) {
  RowMatrix<float> a(2, 2), b(2, 2);
  a << 1, 0, 0, 1;
  b << 1, 0, 0, 1;
  const LossOutput<float> out = SimCLRLoss(1.0, Reduction::kNone).forward<float>(a, b);
  static_assert(std::is_same_v<decltype(out.values)::value_type, float>);
  EXPECT_NEAR(out.values[0], 1.102889428f, 1e-6f);
}

TEST(HandValues, SumOverBatchSizeDividesByCountNotWeights) {
  // losses [1, 2, 3, 4] weighted [1, 0, 1, 0] -> (1 + 3) / 4 = 1.0, not 2.0. Build four examples
  // whose per-example losses we know from the reference, and check the reduction arithmetic on
  // them.
  const auto za = test::seeded_rows(3, 0, 0, 4, 3), zb = test::seeded_rows(3, 1, 0, 4, 3);
  const auto lref = test::ref_per_example(za, zb, 0.3);
  const auto fa = test::flatten<double>(za), fb = test::flatten<double>(zb);
  const ConstMatrixView<double> a(fa.data(), 4, 3), b(fb.data(), 4, 3);
  const SampleWeight w = SampleWeight::per_example({1, 0, 1, 0});
  const double got = SimCLRLoss(0.3, Reduction::kSumOverBatchSize).forward(a, b, &w).values.at(0);
  EXPECT_NEAR(got, (lref[0] + lref[2]) / 4, 1e-12);
}

// d = 0: every row normalises to zero, so every logit is 0 and each direction's CE is ln(2N - 1),
// TensorFlow Similarity's value (N = 3: 2 ln 5 = 3.2189). Frameworks hand [n, 0] over with a null
// pointer; that is not an error.
TEST(HandValues, ZeroDimensionIsAllZeroRows) {
  const ConstMatrixView<double> empty(nullptr, 3, 0);
  const auto out = SimCLRLoss(0.1, Reduction::kNone).forward<double>(empty, empty);
  ASSERT_EQ(out.values.size(), 3u);
  for (double v : out.values) EXPECT_NEAR(v, 2 * std::log(5.0), 1e-12);
  const SimCLRLoss sum(0.1, Reduction::kSum);
  const auto [o, g] = sum.value_and_gradient<double>(empty, empty);
  EXPECT_NEAR(o.objective, 6 * std::log(5.0), 1e-12);
  EXPECT_EQ(g.grad_a.rows(), 3);
  EXPECT_EQ(g.grad_a.cols(), 0);
}

TEST(HandValues, EmptyBatch) {
  const ConstMatrixView<double> empty(nullptr, 0, 4);
  for (auto r : {Reduction::kSum, Reduction::kSumOverBatchSize}) {
    const auto out = SimCLRLoss(0.1, r).forward(empty, empty);
    EXPECT_EQ(out.values.at(0), 0.0);
    EXPECT_FALSE(std::isnan(out.values.at(0)));
  }
  EXPECT_TRUE(SimCLRLoss(0.1, Reduction::kNone).forward(empty, empty).values.empty());
  const auto g = SimCLRLoss(0.1, Reduction::kSum).value_and_gradient(empty, empty);
  EXPECT_EQ(g.second.grad_a.rows(), 0);
}

// ---- the sample-weight table ----

class SampleWeightTable : public ::testing::Test {
 protected:
  static constexpr int kN = 4;
  void SetUp() override {
    za_ = test::flatten<double>(test::seeded_rows(11, 0, 0, kN, 3));
    zb_ = test::flatten<double>(test::seeded_rows(11, 1, 0, kN, 3));
    plain_ = none(nullptr);
  }
  std::vector<double> none(const SampleWeight* w) const {
    return SimCLRLoss(0.2, Reduction::kNone)
        .forward(ConstMatrixView<double>(za_.data(), kN, 3),
                 ConstMatrixView<double>(zb_.data(), kN, 3), w)
        .values;
  }
  std::string error_of(const SampleWeight& w) const {
    try {
      none(&w);
    } catch (const ValueError& e) {
      return e.what();
    }
    return "no error";
  }
  std::vector<double> za_, zb_, plain_;
};

TEST_F(SampleWeightTable, ScalarScalesEveryExample) {
  const auto w = SampleWeight::scalar(2.5);
  const auto l = none(&w);
  for (int i = 0; i < kN; ++i) EXPECT_DOUBLE_EQ(l[i], 2.5 * plain_[i]);
}

TEST_F(SampleWeightTable, PerExample) {
  const auto w = SampleWeight::per_example({1, 0, -2, 0.5});
  const auto l = none(&w);
  const double f[] = {1, 0, -2, 0.5};
  for (int i = 0; i < kN; ++i) EXPECT_DOUBLE_EQ(l[i], f[i] * plain_[i]);
}

TEST_F(SampleWeightTable, ColumnIsSqueezed) {
  const SampleWeight w({kN, 1}, {3, 1, 0, 2});
  const auto l = none(&w);
  const double f[] = {3, 1, 0, 2};
  for (int i = 0; i < kN; ++i) EXPECT_DOUBLE_EQ(l[i], f[i] * plain_[i]);
}

TEST_F(SampleWeightTable, OneElementActsAsScalar) {
  for (const SampleWeight& w : {SampleWeight({1}, {0.5}), SampleWeight({1, 1}, {0.5})}) {
    const auto l = none(&w);
    for (int i = 0; i < kN; ++i) EXPECT_DOUBLE_EQ(l[i], 0.5 * plain_[i]);
  }
}

TEST_F(SampleWeightTable, IncompatibleLength) {
  EXPECT_NE(error_of(SampleWeight({3}, {1, 1, 1})).find("Incompatible shapes: [4] vs. [3]"),
            std::string::npos);
}

TEST_F(SampleWeightTable, CannotSqueezeLastDimension) {
  EXPECT_NE(error_of(SampleWeight({1, kN}, {1, 1, 1, 1})).find("expected a dimension of 1, got 4"),
            std::string::npos);
  EXPECT_NE(error_of(SampleWeight({kN, 2}, std::vector<double>(8, 1)))
                .find("expected a dimension of 1, got 2"),
            std::string::npos);
}

TEST_F(SampleWeightTable, RankThreeRejected) {
  EXPECT_NE(error_of(SampleWeight({kN, 1, 1}, std::vector<double>(4, 1))).find("rank 3"),
            std::string::npos);
}

TEST_F(SampleWeightTable, NonFiniteWeightNamesIndex) {
  EXPECT_NE(error_of(SampleWeight::per_example({1, NAN, 1, 1})).find("NaN at index 1"),
            std::string::npos);
  EXPECT_NE(error_of(SampleWeight::per_example({1, 1, 1, INFINITY})).find("Inf at index 3"),
            std::string::npos);
}

}  // namespace
}  // namespace simclr

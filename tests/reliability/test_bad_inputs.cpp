// Rows of the bad-input matrix (docs/errors.md) that no other test covers: huge norms, a tiny
// temperature in float32 against float64, and the caller's buffers after every failing call,
// locally and through the distributed code path (SingleProcessCommunicator).

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "simclr/loss.hpp"

namespace simclr {
namespace {

template <class T>
RowMatrix<T> seeded(unsigned seed, std::int64_t n, std::int64_t d) {
  std::srand(seed);
  return RowMatrix<double>::Random(n, d).cast<T>();
}

// Bitwise equality: NaN compares equal to the same NaN, which == does not.
template <class M>
bool same_bits(const M& x, const M& y) {
  return x.rows() == y.rows() && x.cols() == y.cols() &&
         std::memcmp(x.data(), y.data(), static_cast<std::size_t>(x.size()) * sizeof(*x.data())) ==
             0;
}

TEST(HugeNorms, DoubleRowsOf1e30AreScaleInvariant) {
  // The loss depends on directions only; norms of 1e30 square to 1e60, far inside double's range.
  const RowMatrix<double> a = seeded<double>(1, 6, 5), b = seeded<double>(2, 6, 5);
  const SimCLRLoss loss(0.2, Reduction::kNone);
  const auto [ref, gref] = loss.value_and_gradient<double>(a, b);
  const RowMatrix<double> a_big = a * 1e30, b_big = b * 1e30;
  const auto [big, gbig] = loss.value_and_gradient<double>(a_big, b_big);
  for (std::size_t i = 0; i < ref.values.size(); ++i)
    EXPECT_NEAR(big.values[i], ref.values[i], 1e-12);
  // d l / d x scales as 1 / |x|.
  EXPECT_LE((gbig.grad_a * 1e30 - gref.grad_a).cwiseAbs().maxCoeff(), 1e-10);
  EXPECT_LE((gbig.grad_b * 1e30 - gref.grad_b).cwiseAbs().maxCoeff(), 1e-10);
}

TEST(HugeNorms, FloatRowsWhoseSquaredNormOverflowsBehaveAsZeroRows) {
  // In float32 sum(x^2) of a 1e30 row is +Inf, so rsqrt gives 0 and the row normalises to zero, as
  // tf.math.l2_normalize does in float32. No exception, and everything stays finite: the result is
  // the loss of the same batch with those rows set to zero.
  RowMatrix<float> a = seeded<float>(3, 6, 5), b = seeded<float>(4, 6, 5);
  RowMatrix<float> a_big = a, a_zero = a;
  a_big.row(2) *= 1e30f;
  a_zero.row(2).setZero();
  const SimCLRLoss loss(0.2, Reduction::kNone);
  const auto [big, gbig] = loss.value_and_gradient<float>(a_big, b);
  const auto [zero, gzero] = loss.value_and_gradient<float>(a_zero, b);
  for (std::size_t i = 0; i < big.values.size(); ++i) {
    ASSERT_TRUE(std::isfinite(big.values[i])) << i;
    EXPECT_NEAR(big.values[i], zero.values[i], 1e-5f) << i;
  }
  EXPECT_TRUE(gbig.grad_a.allFinite());
  EXPECT_TRUE(gbig.grad_b.allFinite());
  // The overflowed row gets no gradient (1 / sqrt(inf) = 0).
  EXPECT_EQ(gbig.grad_a.row(2).cwiseAbs().maxCoeff(), 0.0f);
  // Rows just below the overflow (|x| ~ 1e18, sum of squares ~ 1e36) are still exact directions.
  RowMatrix<float> a_large = a;
  a_large.row(2) *= 1e18f;
  const auto large = loss.forward<float>(a_large, b);
  const auto ref = loss.forward<float>(a, b);
  for (std::size_t i = 0; i < ref.values.size(); ++i)
    EXPECT_NEAR(large.values[i], ref.values[i], 1e-4f) << i;
}

TEST(TinyTemperature, Float32AtOneThousandthMatchesFloat64) {
  // Logits reach 1/T = 1000. The float result carries an absolute error of about
  // 1000 * (float eps 6e-8) * (a few roundings per logit and LSE term) ~ 1e-3 on per-example losses
  // of size up to ~1e3; 1e-2 + 1e-5 relative bounds it with room, while a lost row or an overflow
  // would be off by O(1) or more.
  const RowMatrix<double> a = seeded<double>(5, 24, 8), b = seeded<double>(6, 24, 8);
  const SimCLRLoss loss(1e-3, Reduction::kNone);
  const auto d = loss.forward<double>(a, b);
  const RowMatrix<float> af = a.cast<float>(), bf = b.cast<float>();
  const auto [f, g] = loss.value_and_gradient<float>(af, bf);
  for (std::size_t i = 0; i < d.values.size(); ++i) {
    ASSERT_TRUE(std::isfinite(f.values[i])) << i;
    EXPECT_NEAR(static_cast<double>(f.values[i]), d.values[i], 1e-2 + 1e-5 * std::abs(d.values[i]))
        << i;
  }
  EXPECT_TRUE(g.grad_a.allFinite() && g.grad_b.allFinite());
}

// ---- every failing call leaves the caller's buffers exactly as they were ----

struct BadCase {
  std::string name;
  std::string needle;  // part of the message
  std::function<void(RowMatrix<float>&, RowMatrix<float>&, SampleWeight&)> spoil;
};

std::vector<BadCase> bad_cases() {
  const float nan = std::numeric_limits<float>::quiet_NaN(),
              inf = std::numeric_limits<float>::infinity();
  return {
      {"NaN in za", "za has NaN at row 3, column 1", [=](auto& a, auto&, auto&) { a(3, 1) = nan; }},
      {"-Inf in zb", "zb has Inf at row 0, column 4",
       [=](auto&, auto& b, auto&) { b(0, 4) = -inf; }},
      {"shape mismatch", "za and zb must have the same shape: [5, 6] vs. [4, 6]",
       [](auto&, auto& b, auto&) { b.conservativeResize(4, 6); }},
      {"weight length", "Incompatible shapes: [5] vs. [3]",
       [](auto&, auto&, auto& w) {
         w = SampleWeight::per_example({1, 2, 3});
       }},
      {"NaN weight", "sample_weight has NaN at index 2",
       [](auto&, auto&, auto& w) { w.values[2] = std::nan(""); }},
      {"weight rank 3", "sample_weight of rank 3 is not supported",
       [](auto&, auto&, auto& w) {
         w = SampleWeight({5, 1, 1}, std::vector<double>(5, 1.0));
       }},
      {"weight values vs shape", "sample_weight shape holds 5 values but 4 were given",
       [](auto&, auto&, auto& w) { w.values.pop_back(); }},
  };
}

void check_unchanged_after_failure(bool through_communicator) {
  for (const auto& c : bad_cases()) {
    SCOPED_TRACE(c.name);
    RowMatrix<float> a = seeded<float>(7, 5, 6), b = seeded<float>(8, 5, 6);
    SampleWeight w = SampleWeight::per_example({1, 1, 2, 2, 3});
    c.spoil(a, b, w);
    const RowMatrix<float> a0 = a, b0 = b;
    const SampleWeight w0 = w;
    SingleProcessCommunicator single;
    CallOptions o;
    if (through_communicator) o.communicator = &single;
    std::string what = "no exception";
    try {
      SimCLRLoss(0.1, Reduction::kSum).value_and_gradient<float>(a, b, &w, o);
    } catch (const ValueError& e) {
      what = e.what();
    }
    EXPECT_NE(what.find(c.needle), std::string::npos) << what;
    if (through_communicator) {
      EXPECT_NE(what.find("(rank 0)"), std::string::npos) << what;
    }
    EXPECT_TRUE(same_bits(a, a0));
    EXPECT_TRUE(same_bits(b, b0));
    EXPECT_EQ(w.shape, w0.shape);
    EXPECT_EQ(std::memcmp(w.values.data(), w0.values.data(), w.values.size() * sizeof(double)), 0);
  }
}

TEST(CallerBuffers, UnchangedAfterEveryFailingLocalCall) { check_unchanged_after_failure(false); }

TEST(CallerBuffers, UnchangedAfterEveryFailingDistributedCall) {
  check_unchanged_after_failure(true);
}

TEST(CallerBuffers, BadViewsAreRejectedWithoutReading) {
  // A null view with rows, a negative dimension, a stride smaller than the row: ValueError, no
  // read.
  const SimCLRLoss loss(0.1, Reduction::kSum);
  const RowMatrix<double> ok = seeded<double>(9, 3, 4);
  EXPECT_THROW(loss.forward<double>(ConstMatrixView<double>(nullptr, 3, 4), ok), ValueError);
  EXPECT_THROW(loss.forward<double>(ConstMatrixView<double>(ok.data(), -1, 4), ok), ValueError);
  EXPECT_THROW(loss.forward<double>(ConstMatrixView<double>(ok.data(), 3, 4, 2), ok), ValueError);
}

TEST(CallerBuffers, FailedBackwardIntoLeavesGradientBuffersUnchanged) {
  const RowMatrix<float> a = seeded<float>(10, 4, 3), b = seeded<float>(11, 4, 3);
  SingleProcessCommunicator single;
  CallOptions o;
  o.communicator = &single;
  const SimCLRLoss loss(0.1, Reduction::kSum);
  const auto out = loss.forward<float>(a, b, nullptr, o);
  RowMatrix<float> ga = RowMatrix<float>::Constant(4, 3, 7.0f),
                   gb = RowMatrix<float>::Constant(4, 3, 7.0f);
  EXPECT_THROW(loss.backward_into<float>(out, std::numeric_limits<float>::infinity(), ga, gb),
               ValueError);
  EXPECT_TRUE((ga.array() == 7.0f).all() && (gb.array() == 7.0f).all());
}

}  // namespace
}  // namespace simclr

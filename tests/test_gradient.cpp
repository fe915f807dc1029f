// The closed-form gradient (docs/math.md section 4) against finite differences in double precision.
// Richardson-extrapolated central differences, step scaled by the temperature (the curvature is
// O(1/T^2)), so truncation and rounding both stay near 1e-10 and the 1e-6 bound has room.

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>

#include "reference.hpp"
#include "simclr/detail/engine.hpp"
#include "simclr/loss.hpp"

namespace simclr {
namespace {

using M = RowMatrix<double>;

struct Case {
  const char* name;
  int n, d;
  double temperature;
  Reduction reduction;
  bool zero_row;
  bool weights;
};

double objective(const SimCLRLoss& loss, const M& a, const M& b, const SampleWeight* w,
                 const std::vector<double>* upstream_none, double upstream) {
  const auto out = loss.forward<double>(a, b, w);
  if (upstream_none) {
    double j = 0;
    for (std::size_t i = 0; i < out.values.size(); ++i) j += (*upstream_none)[i] * out.values[i];
    return j;
  }
  return upstream * out.objective;
}

// d objective / d x for every entry of a and b.
std::pair<M, M> finite_differences(const std::function<double(const M&, const M&)>& f, const M& a,
                                   const M& b, double temperature) {
  M ga(a.rows(), a.cols()), gb(b.rows(), b.cols());
  for (int view = 0; view < 2; ++view) {
    const M& x = view == 0 ? a : b;
    M& g = view == 0 ? ga : gb;
    for (Eigen::Index i = 0; i < x.rows(); ++i) {
      const double norm = x.row(i).norm();
      // A zero row is in the max(., 1e-12) branch while |x|^2 <= 1e-12: stay inside it.
      const double h = norm == 0 ? 1e-11 * temperature : 1e-3 * temperature * norm;
      for (Eigen::Index j = 0; j < x.cols(); ++j) {
        auto at = [&](double step) {
          M xa = a, xb = b;
          (view == 0 ? xa : xb)(i, j) += step;
          return f(xa, xb);
        };
        const double d1 = (at(h) - at(-h)) / (2 * h);
        const double d2 = (at(h / 2) - at(-h / 2)) / h;
        g(i, j) = (4 * d2 - d1) / 3;
      }
    }
  }
  return {ga, gb};
}

double worst_row_error(const M& got, const M& want) {
  double worst = 0;
  for (Eigen::Index i = 0; i < want.rows(); ++i) {
    const double scale = want.row(i).norm();
    if (scale < 1e-9) {
      worst = std::max(worst, (got.row(i) - want.row(i)).norm());
    } else {
      worst = std::max(worst, (got.row(i) - want.row(i)).norm() / scale);
    }
  }
  return worst;
}

class GradientVsFiniteDifferences : public ::testing::TestWithParam<Case> {};

TEST_P(GradientVsFiniteDifferences, RelativeErrorBelow1e6) {
  const Case c = GetParam();
  M a(c.n, c.d), b(c.n, c.d);
  const auto ra = test::seeded_rows(17, 0, 0, c.n, c.d), rb = test::seeded_rows(17, 1, 0, c.n, c.d);
  for (int i = 0; i < c.n; ++i)
    for (int j = 0; j < c.d; ++j) {
      a(i, j) = ra[i][j];
      b(i, j) = rb[i][j];
    }
  if (c.zero_row) a.row(1).setZero();
  std::optional<SampleWeight> w;
  if (c.weights) {
    std::vector<double> v;
    for (int i = 0; i < c.n; ++i) v.push_back(0.25 + 0.5 * i);
    w = SampleWeight::per_example(v);
  }
  const SimCLRLoss loss(c.temperature, c.reduction);
  std::vector<double> up_none;
  for (int i = 0; i < c.n; ++i) up_none.push_back(1.0 - 0.3 * i);
  const bool none = c.reduction == Reduction::kNone;
  const double upstream = 1.7;
  auto f = [&](const M& xa, const M& xb) {
    return objective(loss, xa, xb, w ? &*w : nullptr, none ? &up_none : nullptr, upstream);
  };
  const auto out = loss.forward<double>(a, b, w ? &*w : nullptr);
  const Gradients<double> g =
      none ? loss.backward<double>(out, up_none) : loss.backward<double>(out, upstream);
  const auto [fa, fb] = finite_differences(f, a, b, c.temperature);
  EXPECT_LE(worst_row_error(g.grad_a, fa), 1e-6);
  EXPECT_LE(worst_row_error(g.grad_b, fb), 1e-6);
  // The gradient is not trivially zero.
  EXPECT_GT(fa.norm(), 1e-3);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, GradientVsFiniteDifferences,
    ::testing::Values(Case{"sum_t05", 5, 4, 0.5, Reduction::kSum, false, false},
                      Case{"none_t1_weights", 4, 3, 1.0, Reduction::kNone, false, true},
                      Case{"sobs_t02_weights", 6, 5, 0.2, Reduction::kSumOverBatchSize, false,
                           true},
                      Case{"auto_t005", 5, 8, 0.05, Reduction::kAuto, false, false},
                      Case{"zero_row_t05", 4, 3, 0.5, Reduction::kSum, true, false},
                      Case{"zero_row_t001", 4, 3, 0.01, Reduction::kSum, true, true},
                      Case{"t001", 6, 4, 0.01, Reduction::kSumOverBatchSize, false, false},
                      Case{"n2_d2", 2, 2, 0.3, Reduction::kSum, false, false}),
    [](const ::testing::TestParamInfo<Case>& p) { return std::string(p.param.name); });

TEST(Gradient, ValueAndGradientEqualsForwardBackward) {
  M a = M::Random(7, 5), b = M::Random(7, 5);
  const SimCLRLoss loss(0.1, Reduction::kSumOverBatchSize);
  const auto [out, g] = loss.value_and_gradient<double>(a, b);
  const auto out2 = loss.forward<double>(a, b);
  const auto g2 = loss.backward<double>(out2);
  EXPECT_EQ(out.objective, out2.objective);
  EXPECT_EQ(g.grad_a, g2.grad_a);
  EXPECT_EQ(g.grad_b, g2.grad_b);
}

TEST(Gradient, UpstreamScalesLinearly) {
  M a = M::Random(6, 4), b = M::Random(6, 4);
  const SimCLRLoss loss(0.2, Reduction::kSum);
  const auto out = loss.forward<double>(a, b);
  const auto g1 = loss.backward<double>(out, 1.0), g3 = loss.backward<double>(out, -3.0);
  EXPECT_TRUE(g3.grad_a.isApprox(-3.0 * g1.grad_a, 1e-13));
}

TEST(Gradient, StridedViewsReadOnlyTheirColumns) {
  // A view with row_stride > cols over a wider buffer: the padding never enters the loss.
  M wide = M::Random(5, 7), wide_b = M::Random(5, 7);
  const M a = wide.leftCols(4), b = wide_b.leftCols(4);
  const SimCLRLoss loss(0.3, Reduction::kNone);
  const auto v1 = loss.forward<double>(ConstMatrixView<double>(wide.data(), 5, 4, 7),
                                       ConstMatrixView<double>(wide_b.data(), 5, 4, 7));
  const auto v2 = loss.forward<double>(a, b);
  EXPECT_EQ(v1.values, v2.values);
}

}  // namespace
}  // namespace simclr

// The normalisation backward at the clamp itself (docs/math.md section 4.5). A row [1e-6, 0, 0] has
// a squared norm of exactly 1e-12 in float32 and in float64. TensorFlow's gradient of
// maximum(|x|^2, 1e-12) goes to |x|^2 at a tie, so the gradient is the projected one,
// (g - x_hat (x_hat . g)) / sqrt(1e-12) with x_hat = [1, 0, 0]: for g = [1, 2, 3] that is
// [0, 2e6, 3e6], where the constant branch would give [1e6, 2e6, 3e6]. Just below the clamp the
// constant branch applies.
template <class T>
void check_clamp_tie() {
  const T tie = T(1e-6);
  ASSERT_EQ(tie * tie, T(1e-12));  // the premise: this row sits exactly on the clamp
  const T below = std::nextafter(tie, T(0));
  const T x[6] = {tie, 0, 0, below, 0, 0};
  T xhat[6], nrm2[2], out[6];
  simclr::detail::l2_normalize_rows(simclr::ConstMatrixView<T>(x, 2, 3), xhat, 3, nrm2);
  const T g[6] = {1, 2, 3, 1, 2, 3};
  simclr::detail::l2_normalize_backward(xhat, 3, nrm2, g, 3, 2, 3, out, 3);
  const T tol = T(1e6) * std::numeric_limits<T>::epsilon() * 8;
  EXPECT_NEAR(out[0], T(0), tol);
  EXPECT_NEAR(out[1], T(2e6), tol);
  EXPECT_NEAR(out[2], T(3e6), tol);
  EXPECT_NEAR(out[3], T(1e6), tol);  // below the clamp: g / sqrt(1e-12)
  EXPECT_NEAR(out[4], T(2e6), tol);
  EXPECT_NEAR(out[5], T(3e6), tol);
}

TEST(Gradient, NormalisationAtTheClampFollowsTensorFlowsTieRule) {
  check_clamp_tie<double>();
  check_clamp_tie<float>();
}

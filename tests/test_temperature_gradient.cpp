// The temperature as an input of the call (CallOptions::temperature) and dJ/dT
// (CallOptions::temperature_gradient, docs/math.md section 4.6): against central finite differences
// in T of the library's own forward (Richardson-extrapolated, float64), against a closed form worked
// by hand, across the engine's fixed-shift threshold, and the default call left as it was.

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <optional>

#include "reference.hpp"
#include "simclr/loss.hpp"

namespace simclr {
namespace {

using M = RowMatrix<double>;

M seeded(int view, int n, int d, std::uint64_t seed = 31) {
  const auto rows = test::seeded_rows(seed, view, 0, n, d);
  M m(n, d);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < d; ++j) m(i, j) = rows[i][j];
  return m;
}

template <class T>
RowMatrix<T> cast(const M& m) {
  return m.cast<T>();
}

struct Problem {
  Reduction reduction = Reduction::kSum;
  bool weights = false;
  bool zero_row = false;
  int n = 5, d = 4;
  EngineOptions engine;
};

struct Inputs {
  M a, b;
  std::optional<SampleWeight> w;
  std::vector<double> up_none;
  double upstream = 1.7;
};

Inputs make(const Problem& p) {
  Inputs s;
  s.a = seeded(0, p.n, p.d);
  s.b = seeded(1, p.n, p.d);
  if (p.zero_row) s.a.row(1).setZero();
  if (p.weights) {
    std::vector<double> v;
    for (int i = 0; i < p.n; ++i) v.push_back(0.25 + 0.5 * i);
    v[static_cast<std::size_t>(p.n - 1)] = 0;  // a zero weight too
    s.w = SampleWeight::per_example(v);
  }
  for (int i = 0; i < p.n; ++i) s.up_none.push_back(1.0 - 0.3 * i);
  return s;
}

// The objective the backward differentiates, g . values, with the call run at temperature t.
template <class T>
double objective(const SimCLRLoss& loss, const Problem& p, const Inputs& s, double t) {
  CallOptions o;
  o.temperature = t;
  o.engine = p.engine;
  const RowMatrix<T> a = cast<T>(s.a), b = cast<T>(s.b);
  const auto out = loss.forward<T>(a, b, s.w ? &*s.w : nullptr, o);
  if (p.reduction == Reduction::kNone) {
    double j = 0;
    for (std::size_t i = 0; i < out.values.size(); ++i)
      j += s.up_none[i] * static_cast<double>(out.values[i]);
    return j;
  }
  return s.upstream * static_cast<double>(out.objective);
}

// dJ/dT by central differences, Richardson-extrapolated: truncation O(h^4).
double finite_difference(const std::function<double(double)>& j, double t, double rel_step) {
  const double h = rel_step * t;
  const double d1 = (j(t + h) - j(t - h)) / (2 * h);
  const double d2 = (j(t + h / 2) - j(t - h / 2)) / h;
  return (4 * d2 - d1) / 3;
}

// dJ/dT of the library at temperature t: a loss built with another temperature, run at t.
template <class T>
std::pair<double, Gradients<T>> library_gradient(const Problem& p, const Inputs& s, double t,
                                                 bool flag = true) {
  const SimCLRLoss loss(0.77, p.reduction);
  CallOptions o;
  o.temperature = t;
  o.temperature_gradient = flag;
  o.engine = p.engine;
  const RowMatrix<T> a = cast<T>(s.a), b = cast<T>(s.b);
  const auto out = loss.forward<T>(a, b, s.w ? &*s.w : nullptr, o);
  EXPECT_EQ(out.temperature, t);
  std::vector<T> up(s.up_none.begin(), s.up_none.end());
  Gradients<T> g = p.reduction == Reduction::kNone ? loss.backward<T>(out, up)
                                                   : loss.backward<T>(out, T(s.upstream));
  const double gt = g.grad_temperature ? static_cast<double>(*g.grad_temperature) : std::nan("");
  return {gt, std::move(g)};
}

double rel(double got, double want) { return std::abs(got - want) / std::abs(want); }

struct Case {
  const char* name;
  Problem problem;
  double temperature;
};

Problem problem(Reduction r, bool weights, bool zero_row, int n = 5, int d = 4) {
  Problem p;
  p.reduction = r;
  p.weights = weights;
  p.zero_row = zero_row;
  p.n = n;
  p.d = d;
  return p;
}

class TemperatureGradientVsFiniteDifferences : public ::testing::TestWithParam<Case> {};

TEST_P(TemperatureGradientVsFiniteDifferences, RelativeErrorBelow1e7) {
  const Case c = GetParam();
  const Inputs s = make(c.problem);
  const SimCLRLoss loss(0.77, c.problem.reduction);
  const double want = finite_difference(
      [&](double t) { return objective<double>(loss, c.problem, s, t); }, c.temperature, 1e-3);
  const double got = library_gradient<double>(c.problem, s, c.temperature).first;
  EXPECT_LE(rel(got, want), 1e-7) << "got " << got << " want " << want;
  EXPECT_GT(std::abs(want), 1e-3);  // not trivially zero
}

Problem streamed(Problem p) {
  p.engine.memory_budget_bytes = 0;
  p.engine.tile_rows = 3;
  p.engine.tile_cols = 4;
  return p;
}

Problem unsymmetric(Problem p) {
  p = streamed(p);
  p.engine.symmetric = false;
  return p;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, TemperatureGradientVsFiniteDifferences,
    ::testing::Values(
        Case{"sum", problem(Reduction::kSum, false, false), 0.5},
        Case{"sum_weights", problem(Reduction::kSum, true, false), 0.3},
        Case{"none_upstream", problem(Reduction::kNone, false, false), 0.4},
        Case{"none_weights_zero_row", problem(Reduction::kNone, true, true), 0.2},
        Case{"sobs", problem(Reduction::kSumOverBatchSize, false, false), 0.1},
        Case{"sobs_weights_zero_row", problem(Reduction::kSumOverBatchSize, true, true), 0.25},
        Case{"auto_weights", problem(Reduction::kAuto, true, false), 0.07},
        Case{"sum_zero_row", problem(Reduction::kSum, false, true), 1.0},
        Case{"streamed_tiles", streamed(problem(Reduction::kSum, true, true, 11, 6)), 0.15},
        Case{"streamed_unsymmetric", unsymmetric(problem(Reduction::kNone, true, false, 9, 5)),
             0.3},
        // Either side of the fixed shift's threshold in float64 (2 / T < 700: T > 0.002857): the
        // one-exponential backward and the running-maximum one.
        Case{"fixed_shift_t0029", problem(Reduction::kSum, true, false, 6, 3), 0.0029},
        Case{"running_max_t0028", problem(Reduction::kSum, true, false, 6, 3), 0.0028},
        Case{"running_max_t0005", problem(Reduction::kSumOverBatchSize, false, true, 6, 3),
             0.0005}),
    [](const ::testing::TestParamInfo<Case>& p) { return std::string(p.param.name); });

// Two orthogonal pairs, za = zb = [[1, 0], [0, 1]] (docs/math.md section 1.5): each direction's
// cross entropy is ln(e^(1/T) + 2) - 1/T, so the sum over both examples and directions is
// J(T) = 4 (ln(e^(1/T) + 2) - 1/T) and dJ/dT = 8 / (T^2 (e^(1/T) + 2)).
TEST(TemperatureGradient, TwoOrthogonalPairsByHand) {
  M a(2, 2);
  a << 1, 0, 0, 1;
  // (At small T the answer is a difference of nearly equal softmax terms: 1 - P_positive is
  // 2 / (e^(1/T) + 2), so the attainable relative precision falls as e^(-1/T) does.)
  for (double t : {1.0, 0.5, 0.25}) {
    const double want = 8 / (t * t * (std::exp(1 / t) + 2));
    Problem p;
    p.n = 2;
    Inputs s;
    s.a = a;
    s.b = a;
    s.upstream = 1;
    EXPECT_LE(rel(library_gradient<double>(p, s, t).first, want), 1e-12) << "T = " << t;
    EXPECT_LE(rel(library_gradient<float>(p, s, t).first, want), 1e-5) << "T = " << t;
  }
}

// float32 against float64 either side of the float32 threshold (2 / T < 80: T > 0.025), and at
// temperatures far below it, where the running maximum keeps every exponential in range.
TEST(TemperatureGradient, Float32FollowsFloat64AcrossTheShiftThreshold) {
  for (double t : {0.0251, 0.0249, 0.01, 1e-3}) {
    const Problem p = problem(Reduction::kSum, true, true, 7, 5);
    const Inputs s = make(p);
    const double want = library_gradient<double>(p, s, t).first;
    const double got = library_gradient<float>(p, s, t).first;
    EXPECT_TRUE(std::isfinite(got)) << "T = " << t;
    EXPECT_LE(rel(got, want), 2e-4) << "T = " << t << ": " << got << " vs " << want;
  }
}

// The default call: no dJ/dT, and the embeddings' gradients bit for bit those of a call that asks
// for it; a call at the loss's own temperature is the call without one.
TEST(TemperatureGradient, DefaultCallIsUnchanged) {
  const Problem p = problem(Reduction::kSumOverBatchSize, true, true, 6, 4);
  const Inputs s = make(p);
  const SimCLRLoss loss(0.2, p.reduction);
  const auto [out, g] = loss.value_and_gradient<double>(s.a, s.b, &*s.w);
  EXPECT_FALSE(g.grad_temperature.has_value());
  EXPECT_EQ(out.temperature, 0.2);
  CallOptions o;
  o.temperature = 0.2;
  o.temperature_gradient = true;
  const auto [out2, g2] = loss.value_and_gradient<double>(s.a, s.b, &*s.w, o);
  EXPECT_TRUE(g2.grad_temperature.has_value());
  EXPECT_EQ(out.values, out2.values);
  EXPECT_EQ(g.grad_a, g2.grad_a);
  EXPECT_EQ(g.grad_b, g2.grad_b);
}

// A call's temperature is the temperature of a loss built with it, and leaves the configuration
// alone.
TEST(TemperatureGradient, CallTemperatureEqualsAConstructedOne) {
  const Inputs s = make(problem(Reduction::kNone, true, false));
  const SimCLRLoss at_03(0.3, Reduction::kNone), other(0.05, Reduction::kNone);
  CallOptions o;
  o.temperature = 0.3;
  const auto want = at_03.forward<double>(s.a, s.b, &*s.w);
  const auto got = other.forward<double>(s.a, s.b, &*s.w, o);
  EXPECT_EQ(got.values, want.values);
  const auto gw = at_03.backward<double>(want, 1.0), gg = other.backward<double>(got, 1.0);
  EXPECT_EQ(gg.grad_a, gw.grad_a);
  EXPECT_EQ(other.temperature(), 0.05);
  EXPECT_EQ(other.get_config_string(), SimCLRLoss(0.05, Reduction::kNone).get_config_string());
}

TEST(TemperatureGradient, BadCallTemperatureIsAValueError) {
  const Inputs s = make(problem(Reduction::kSum, false, false));
  const SimCLRLoss loss(0.2, Reduction::kSum);
  for (double t : {0.0, -0.5, std::nan(""), std::numeric_limits<double>::infinity()}) {
    CallOptions o;
    o.temperature = t;
    try {
      (void)loss.forward<double>(s.a, s.b, nullptr, o);
      ADD_FAILURE() << "no error for temperature " << t;
    } catch (const ValueError& e) {
      EXPECT_NE(std::string(e.what()).find("temperature must be a finite number > 0, got"),
                std::string::npos)
          << e.what();
    }
  }
}

// The upstream gradient scales dJ/dT as it scales the embeddings' gradients.
TEST(TemperatureGradient, LinearInTheUpstream) {
  Problem p = problem(Reduction::kSum, true, false);
  Inputs s = make(p);
  const double g1 = library_gradient<double>(p, s, 0.3).first;
  s.upstream = -2.5;
  const double g2 = library_gradient<double>(p, s, 0.3).first;
  EXPECT_LE(rel(g2, -2.5 / 1.7 * g1), 1e-13);
}

}  // namespace
}  // namespace simclr

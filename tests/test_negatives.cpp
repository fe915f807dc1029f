// Extra negatives (CallOptions::negatives, docs/api.md "Extra negatives"): rows that join every
// anchor's candidates as negatives only. Checked against a reference written here, independently of
// the library: TF Similarity's formula in long double with the negatives' unit rows appended to each
// direction's logits, its gradients and dJ/dT by central differences of that reference; and the
// library's own paths (streamed, kept logits, symmetric or not, small tiles) against each other.

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <optional>

#include "reference.hpp"
#include "simclr/loss.hpp"

namespace simclr {
namespace {

using M = RowMatrix<double>;

M seeded(int view, int n, int d, std::uint64_t seed = 47) {
  const auto rows = test::seeded_rows(seed, view, 0, n, d);
  M m(n, d);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < d; ++j) m(i, j) = rows[i][j];
  return m;
}

test::Rows rows_of(const M& m) {
  test::Rows out(static_cast<std::size_t>(m.rows()));
  for (int i = 0; i < m.rows(); ++i) out[i].assign(m.row(i).data(), m.row(i).data() + m.cols());
  return out;
}

// TF Similarity's per-example loss with the bank appended (tests/reference.hpp): direction h1 ->
// [h1 h2^T | h1 h1^T (self -1e9) | h1 bank^T] / T, cross entropy against column i; both summed.
std::vector<long double> ref_per_example(const M& za, const M& zb, const M& bank, long double t) {
  return test::ref_per_example_long(rows_of(za), rows_of(zb), t, rows_of(bank));
}

struct Problem {
  Reduction reduction = Reduction::kSum;
  int n = 5, d = 4, k = 7;
  bool weights = true;
  EngineOptions engine;
  double temperature = 0.3;
};

struct Inputs {
  M a, b, bank;
  std::vector<double> w;
  std::vector<double> up_none;
  double upstream = 1.3;
};

Inputs make(const Problem& p) {
  Inputs s;
  s.a = seeded(0, p.n, p.d);
  s.b = seeded(1, p.n, p.d);
  s.bank = seeded(2, p.k, p.d) * 2.5;  // not unit rows: the call normalises them
  for (int i = 0; i < p.n; ++i) {
    s.w.push_back(p.weights ? 0.2 + 0.4 * i : 1.0);
    s.up_none.push_back(1.0 - 0.35 * i);
  }
  return s;
}

// The reference objective the backward differentiates: upstream . reduced values.
long double ref_objective(const Problem& p, const Inputs& s, const M& a, const M& b, long double t) {
  const auto l = ref_per_example(a, b, s.bank, t);
  long double j = 0;
  for (int i = 0; i < p.n; ++i) {
    const long double wl = s.w[static_cast<std::size_t>(i)] * l[static_cast<std::size_t>(i)];
    switch (p.reduction) {
      case Reduction::kNone:
        j += s.up_none[static_cast<std::size_t>(i)] * wl;
        break;
      case Reduction::kSum:
        j += s.upstream * wl;
        break;
      default:
        j += s.upstream * wl / p.n;
        break;
    }
  }
  return j;
}

template <class T>
struct Outcome {
  LossOutput<T> out;
  Gradients<T> grads;
};

template <class T>
Outcome<T> run(const Problem& p, const Inputs& s, bool temperature_gradient = true,
           std::optional<RowMatrix<T>> bank_override = std::nullopt) {
  const SimCLRLoss loss(p.temperature, p.reduction);
  const RowMatrix<T> a = s.a.cast<T>(), b = s.b.cast<T>();
  const RowMatrix<T> bank = bank_override ? *bank_override : RowMatrix<T>(s.bank.cast<T>());
  const SampleWeight w = SampleWeight::per_example(s.w);
  CallOptions o;
  o.engine = p.engine;
  o.negatives = Negatives(ConstMatrixView<T>(bank));
  o.temperature_gradient = temperature_gradient;
  Outcome<T> r;
  r.out = loss.forward<T>(a, b, &w, o);
  std::vector<T> up(s.up_none.begin(), s.up_none.end());
  r.grads = p.reduction == Reduction::kNone ? loss.backward<T>(r.out, up)
                                            : loss.backward<T>(r.out, T(s.upstream));
  return r;
}

double rel(double got, double want) { return std::abs(got - want) / std::max(std::abs(want), 1e-300); }

Problem make_problem(Reduction r, int k, EngineOptions engine = {}) {
  Problem p;
  p.reduction = r;
  p.k = k;
  p.engine = engine;
  return p;
}

EngineOptions small_tiles(bool symmetric, std::size_t budget) {
  EngineOptions e;
  e.tile_rows = 3;
  e.tile_cols = 4;
  e.symmetric = symmetric;
  e.memory_budget_bytes = budget;
  return e;
}

struct Case {
  const char* name;
  Problem problem;
};

class NegativesVsReference : public ::testing::TestWithParam<Case> {};

TEST_P(NegativesVsReference, ValuesGradientsAndTemperatureGradient) {
  const Problem p = GetParam().problem;
  const Inputs s = make(p);
  const Outcome<double> r = run<double>(p, s);
  const auto want = ref_per_example(s.a, s.b, s.bank, p.temperature);
  ASSERT_EQ(r.out.per_example.size(), want.size());
  for (int i = 0; i < p.n; ++i)
    EXPECT_LE(rel(r.out.per_example[i], static_cast<double>(want[i])), 1e-12) << "row " << i;
  EXPECT_EQ(r.out.negative_rows, p.k);
  // The reduced value, from the reference's per-example loss.
  long double sum = 0;
  for (int i = 0; i < p.n; ++i) sum += s.w[static_cast<std::size_t>(i)] * want[i];
  const auto total = static_cast<double>(sum);
  if (p.reduction == Reduction::kSum) {
    EXPECT_LE(rel(r.out.values[0], total), 1e-12);
  }
  if (p.reduction == Reduction::kSumOverBatchSize) {
    EXPECT_LE(rel(r.out.values[0], total / p.n), 1e-12);
  }
  if (p.reduction == Reduction::kNone) {
    for (int i = 0; i < p.n; ++i)
      EXPECT_LE(rel(r.out.values[i],
                    s.w[static_cast<std::size_t>(i)] * static_cast<double>(want[i])),
                1e-12);
  }

  // Gradients of za and zb: central differences of the reference, in long double.
  const long double h = 1e-6L;
  for (int view = 0; view < 2; ++view) {
    const RowMatrix<double>& got = view == 0 ? r.grads.grad_a : r.grads.grad_b;
    for (int i = 0; i < p.n; ++i) {
      for (int j = 0; j < p.d; ++j) {
        M a = s.a, b = s.b;
        M& x = view == 0 ? a : b;
        const double x0 = x(i, j);
        x(i, j) = x0 + static_cast<double>(h);
        const long double up = ref_objective(p, s, a, b, p.temperature);
        x(i, j) = x0 - static_cast<double>(h);
        const long double down = ref_objective(p, s, a, b, p.temperature);
        const double fd = static_cast<double>((up - down) / (2 * h));
        EXPECT_NEAR(got(i, j), fd, 1e-7 * (1 + std::abs(fd)))
            << "view " << view << " [" << i << ", " << j << "]";
      }
    }
  }
  // dJ/dT: central differences of the reference in T.
  const long double t = p.temperature, ht = 1e-5L * t;
  const long double fd_t =
      (ref_objective(p, s, s.a, s.b, t + ht) - ref_objective(p, s, s.a, s.b, t - ht)) / (2 * ht);
  ASSERT_TRUE(r.grads.grad_temperature.has_value());
  EXPECT_LE(rel(*r.grads.grad_temperature, static_cast<double>(fd_t)), 1e-7)
      << "got " << *r.grads.grad_temperature << " want " << static_cast<double>(fd_t);
}

INSTANTIATE_TEST_SUITE_P(
    Paths, NegativesVsReference,
    ::testing::Values(
        Case{"sum_k7", make_problem(Reduction::kSum, 7)},
        Case{"none_k7", make_problem(Reduction::kNone, 7)},
        Case{"sobs_k7", make_problem(Reduction::kSumOverBatchSize, 7)},
        Case{"sum_k1", make_problem(Reduction::kSum, 1)},
        Case{"sum_k0", make_problem(Reduction::kSum, 0)},
        Case{"sum_k40_small_tiles_streamed", make_problem(Reduction::kSum, 40, small_tiles(true, 0))},
        Case{"none_k40_small_tiles_kept",
             make_problem(Reduction::kNone, 40, small_tiles(false, std::size_t{1} << 20))},
        Case{"sobs_k9_not_symmetric", make_problem(Reduction::kSumOverBatchSize, 9,
                                                   small_tiles(false, 0))},
        Case{"sum_small_temperature",
             [] {
               Problem p = make_problem(Reduction::kSum, 7);
               p.temperature = 0.002;  // below the float64 fixed-shift threshold: running max
               return p;
             }()}),
    [](const ::testing::TestParamInfo<Case>& c) { return std::string(c.param.name); });

TEST(Negatives, EmptyBankEqualsNoBankExactly) {
  const Problem p = make_problem(Reduction::kSum, 0);
  const Inputs s = make(p);
  const SimCLRLoss loss(p.temperature, p.reduction);
  const SampleWeight w = SampleWeight::per_example(s.w);
  const auto plain = loss.forward<double>(s.a, s.b, &w);
  const auto plain_grads = loss.backward(plain, s.upstream);
  const Outcome<double> r = run<double>(p, s, false, M(0, p.d));
  EXPECT_EQ(r.out.values[0], plain.values[0]);
  EXPECT_EQ(r.grads.grad_a, plain_grads.grad_a);
  EXPECT_EQ(r.grads.grad_b, plain_grads.grad_b);
}

TEST(Negatives, BankChangesTheLossAndIsNormalised) {
  const Problem p = make_problem(Reduction::kSum, 7);
  const Inputs s = make(p);
  const Outcome<double> with = run<double>(p, s);
  const Outcome<double> scaled = run<double>(p, s, true, RowMatrix<double>(s.bank * 0.01));
  EXPECT_NEAR(with.out.values[0], scaled.out.values[0], 1e-12 * std::abs(with.out.values[0]));
  const Outcome<double> none = run<double>(p, s, true, M(0, p.d));
  EXPECT_GT(with.out.values[0], none.out.values[0] + 1e-3);  // more negatives, larger loss
}

TEST(Negatives, Float32AgreesWithFloat64) {
  const Problem p = make_problem(Reduction::kSumOverBatchSize, 9, small_tiles(true, 0));
  const Inputs s = make(p);
  const Outcome<double> r64 = run<double>(p, s);
  const Outcome<float> r32 = run<float>(p, s);
  EXPECT_LE(rel(r32.out.values[0], r64.out.values[0]), 1e-5);
  EXPECT_LE((r32.grads.grad_a.cast<double>() - r64.grads.grad_a).cwiseAbs().maxCoeff(), 1e-5);
  EXPECT_LE(rel(*r32.grads.grad_temperature, *r64.grads.grad_temperature), 1e-4);
}

TEST(Negatives, InputErrors) {
  const SimCLRLoss loss(0.3, Reduction::kSum);
  const M a = seeded(0, 3, 4), b = seeded(1, 3, 4);
  CallOptions o;
  const RowMatrix<float> wrong_dtype = seeded(2, 2, 4).cast<float>();
  o.negatives = Negatives(ConstMatrixView<float>(wrong_dtype));
  EXPECT_THROW(loss.forward<double>(a, b, nullptr, o), TypeError);
  const M wrong_width = seeded(2, 2, 5);
  o.negatives = Negatives(ConstMatrixView<double>(wrong_width));
  try {
    loss.forward<double>(a, b, nullptr, o);
    ADD_FAILURE() << "no error";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("negatives are [2, 5]"), std::string::npos) << e.what();
  }
  M bad = seeded(2, 2, 4);
  bad(1, 2) = std::nan("");
  o.negatives = Negatives(ConstMatrixView<double>(bad));
  try {
    loss.forward<double>(a, b, nullptr, o);
    ADD_FAILURE() << "no error";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("negatives"), std::string::npos) << e.what();
  }
  const M good = seeded(2, 2, 4);
  o.negatives = Negatives(ConstMatrixView<double>(good));
  o.negatives.scope = static_cast<NegativesScope>(7);
  EXPECT_THROW(loss.forward<double>(a, b, nullptr, o), ValueError);
  EXPECT_EQ(parse_negatives_scope("global"), NegativesScope::kGlobal);
  EXPECT_THROW(parse_negatives_scope("all"), ValueError);
}

}  // namespace
}  // namespace simclr

// The library against the real TensorFlow Similarity (tests/data, made by tests/data/make_golden.py).
//
// Tolerances: float64 cases agree to rounding (1e-12 relative; observed below 1e-13). float32: TF and
// the library both round every logit (|s| <= 1/T) and sum up to 2N terms in float32 in different orders,
// so differences of a few ulps of the output scale are expected; observed at most 1.6e-6, the bound is
// 5e-6, while a wrong formula (a missing direction, another denominator) is off by far more.

#include <gtest/gtest.h>

#include "golden.hpp"

namespace simclr {
namespace {

template <class T>
void check_case(const nlohmann::json& c, double tol) {
  std::int64_t n = 0, d = 0;
  const auto za = test::flat<T>(c["za"], &n, &d);
  const auto zb = test::flat<T>(c["zb"]);
  const auto w = test::weight_of(c);
  const SimCLRLoss loss(c["temperature"].get<double>(), parse_reduction(c["reduction"]));
  auto [out, grads] = loss.value_and_gradient<T>(
      ConstMatrixView<T>(za.data(), n, d), ConstMatrixView<T>(zb.data(), n, d), w ? &*w : nullptr);
  std::vector<T> want_loss;
  if (c["loss"].is_array()) {
    for (const auto& v : c["loss"]) want_loss.push_back(static_cast<T>(v.get<double>()));
  } else {
    want_loss.push_back(static_cast<T>(c["loss"].get<double>()));
  }
  ASSERT_EQ(out.values.size(), want_loss.size());
  EXPECT_LE(test::max_rel(out.values.data(), want_loss, 1.0), tol) << "loss";
  EXPECT_LE(test::max_rel(&out.objective,
                          std::vector<T>{static_cast<T>(c["objective"].get<double>())}, 1.0),
            tol)
      << "objective";
  const auto ga = test::flat<T>(c["grad_za"]), gb = test::flat<T>(c["grad_zb"]);
  // Gradient scale: the largest entry, but at least the size of one term of dJ/dx, 1 / (T |x|),
  // since where the true gradient cancels to ~0 (identical rows) both sides hold rounding noise of
  // that term.
  double max_norm = 0;
  for (const auto* z : {&za, &zb})
    for (std::int64_t i = 0; i < n; ++i) {
      double s = 0;
      for (std::int64_t j = 0; j < d; ++j)
        s += static_cast<double>((*z)[i * d + j]) * static_cast<double>((*z)[i * d + j]);
      max_norm = std::max(max_norm, std::sqrt(s));
    }
  double scale = 1.0 / (c["temperature"].get<double>() * std::max(max_norm, 1e-6));
  for (auto v : ga) scale = std::max(scale, std::abs(static_cast<double>(v)));
  for (auto v : gb) scale = std::max(scale, std::abs(static_cast<double>(v)));
  EXPECT_LE(test::max_rel(grads.grad_a.data(), ga, scale), tol) << "grad_za";
  EXPECT_LE(test::max_rel(grads.grad_b.data(), gb, scale), tol) << "grad_zb";
}

TEST(Golden, EveryCaseMatchesTensorFlowSimilarity) {
  const auto g = test::load_golden("golden_single.json");
  ASSERT_GE(g["cases"].size(), 50u);
  int f32 = 0, f64 = 0;
  for (const auto& c : g["cases"]) {
    SCOPED_TRACE(c["id"].get<std::string>());
    if (c["dtype"] == "float32") {
      check_case<float>(c, 5e-6);
      ++f32;
    } else {
      check_case<double>(c, 1e-12);
      ++f64;
    }
  }
  EXPECT_GT(f32, 10);
  EXPECT_GT(f64, 10);
}

}  // namespace
}  // namespace simclr

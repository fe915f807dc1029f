#pragma once
// An independent, deliberately naive reference of TensorFlow Similarity's SimCLRLoss (docs/math.md
// section 1), written the way TF writes it: two directions, logits [h1 h2^T | h1 h1^T] with the
// self entry pushed to -1e9, softmax cross-entropy against the positive. Long double, full
// matrices, no tiling, no shared code with the library. Used to check the library on random inputs;
// the golden files check both against TF.

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace simclr::test {

using Rows = std::vector<std::vector<double>>;

inline std::vector<long double> ref_normalize(const std::vector<double>& x) {
  long double s = 0;
  for (double v : x) s += static_cast<long double>(v) * v;
  const long double inv = 1.0L / std::sqrt(std::max(s, 1e-12L));
  std::vector<long double> out(x.size());
  for (std::size_t j = 0; j < x.size(); ++j) out[j] = x[j] * inv;
  return out;
}

// Per-example loss [N] in long double: CE_i(a -> [b, a, k]) + CE_i(b -> [a, b, k]), where k are
// the extra negatives' rows (none by default), normalised like the views and appended to every
// anchor's candidates.
inline std::vector<long double> ref_per_example_long(const Rows& za, const Rows& zb,
                                                     long double temperature,
                                                     const Rows& negatives = {}) {
  const std::size_t n = za.size();
  std::vector<std::vector<long double>> a(n), b(n), k;
  for (std::size_t i = 0; i < n; ++i) {
    a[i] = ref_normalize(za[i]);
    b[i] = ref_normalize(zb[i]);
  }
  for (const auto& row : negatives) k.push_back(ref_normalize(row));
  auto dot = [](const std::vector<long double>& x, const std::vector<long double>& y) {
    long double s = 0;
    for (std::size_t j = 0; j < x.size(); ++j) s += x[j] * y[j];
    return s;
  };
  auto direction = [&](const std::vector<std::vector<long double>>& h1,
                       const std::vector<std::vector<long double>>& h2, std::size_t i) {
    std::vector<long double> logits;
    for (std::size_t j = 0; j < n; ++j) logits.push_back(dot(h1[i], h2[j]) / temperature);
    for (std::size_t j = 0; j < n; ++j)
      logits.push_back(j == i ? -1e9L : dot(h1[i], h1[j]) / temperature);
    for (const auto& row : k) logits.push_back(dot(h1[i], row) / temperature);
    long double m = logits[0];
    for (auto v : logits) m = std::max(m, v);
    long double s = 0;
    for (auto v : logits) s += std::exp(v - m);
    return m + std::log(s) - logits[i];
  };
  std::vector<long double> out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = direction(a, b, i) + direction(b, a, i);
  return out;
}

// The same in double.
inline std::vector<double> ref_per_example(const Rows& za, const Rows& zb, double temperature,
                                           const Rows& negatives = {}) {
  const auto l = ref_per_example_long(za, zb, temperature, negatives);
  return std::vector<double>(l.begin(), l.end());
}

// Embedding row `row` of view `view`: a function of (seed, view, row) only, as nccl-tests derives
// data, so any rank can rebuild any other rank's rows and a split batch equals the whole one.
inline std::vector<double> seeded_row(std::uint64_t seed, int view, std::int64_t row,
                                      std::int64_t d) {
  std::mt19937_64 gen(seed * 1000003ULL + static_cast<std::uint64_t>(row) * 2 +
                      static_cast<std::uint64_t>(view));
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> out(static_cast<std::size_t>(d));
  for (auto& v : out) v = normal(gen) * 1.7;
  return out;
}

inline Rows seeded_rows(std::uint64_t seed, int view, std::int64_t begin, std::int64_t n,
                        std::int64_t d) {
  Rows out;
  for (std::int64_t i = 0; i < n; ++i) out.push_back(seeded_row(seed, view, begin + i, d));
  return out;
}

template <class T>
std::vector<T> flatten(const Rows& rows) {
  std::vector<T> out;
  for (const auto& r : rows)
    for (double v : r) out.push_back(static_cast<T>(v));
  return out;
}

inline double rel_err(double got, double want) {
  return std::abs(got - want) / std::max(1.0, std::abs(want));
}

}  // namespace simclr::test

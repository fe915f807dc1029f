#pragma once
// k-nearest-neighbour classification by cosine similarity: how well an embedding separates the
// classes without training a classifier on it.

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

namespace simclr::examples {

// Fraction of `queries` whose k nearest `references` (cosine) vote for the query's label; ties
// between labels go to the larger summed similarity. queries [q, d], references [r, d], row-major.
template <class Real>
double knn_accuracy(Eigen::Matrix<Real, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> queries,
                    const std::vector<int>& query_labels,
                    Eigen::Matrix<Real, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> references,
                    const std::vector<int>& reference_labels, int classes, int k) {
  auto normalise = [](auto& m) {
    for (Eigen::Index i = 0; i < m.rows(); ++i) {
      const Real norm = m.row(i).norm();
      if (norm > Real(0)) m.row(i) /= norm;
    }
  };
  normalise(queries);
  normalise(references);
  const Eigen::Index q = queries.rows(), r = references.rows();
  if (q == 0) return 0.0;
  const auto kk = static_cast<Eigen::Index>(std::min<std::int64_t>(k, r));
  // One block of queries at a time keeps the similarity matrix small.
  constexpr Eigen::Index kBlock = 256;
  std::int64_t correct = 0;
  std::vector<Eigen::Index> order(static_cast<std::size_t>(r));
  std::vector<double> votes(static_cast<std::size_t>(classes));
  std::vector<int> count(static_cast<std::size_t>(classes));
  for (Eigen::Index begin = 0; begin < q; begin += kBlock) {
    const Eigen::Index rows = std::min(kBlock, q - begin);
    const Eigen::Matrix<Real, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> sim =
        queries.middleRows(begin, rows) * references.transpose();
    for (Eigen::Index i = 0; i < rows; ++i) {
      std::iota(order.begin(), order.end(), Eigen::Index{0});
      std::partial_sort(order.begin(), order.begin() + kk, order.end(),
                        [&](Eigen::Index a, Eigen::Index b) { return sim(i, a) > sim(i, b); });
      std::fill(votes.begin(), votes.end(), 0.0);
      std::fill(count.begin(), count.end(), 0);
      for (Eigen::Index j = 0; j < kk; ++j) {
        const auto label =
            static_cast<std::size_t>(reference_labels[static_cast<std::size_t>(order[j])]);
        ++count[label];
        votes[label] += static_cast<double>(sim(i, order[j]));
      }
      std::size_t best = 0;
      for (std::size_t c = 1; c < count.size(); ++c) {
        if (count[c] > count[best] || (count[c] == count[best] && votes[c] > votes[best])) best = c;
      }
      if (static_cast<int>(best) == query_labels[static_cast<std::size_t>(begin + i)]) ++correct;
    }
  }
  return static_cast<double>(correct) / static_cast<double>(q);
}

}  // namespace simclr::examples

#pragma once
// Reading the golden files made by tests/data/make_golden.py from the real TensorFlow Similarity.

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "simclr/loss.hpp"

namespace simclr::test {

inline nlohmann::json load_golden(const std::string& file) {
  std::ifstream in(std::string(SIMCLR_TEST_DATA) + "/" + file);
  if (!in) throw std::runtime_error("cannot open golden file " + file);
  return nlohmann::json::parse(in);
}

// A [rows, d] JSON array as a flat row-major vector of T (float cases hold exact float32 values).
template <class T>
std::vector<T> flat(const nlohmann::json& rows, std::int64_t* n = nullptr,
                    std::int64_t* d = nullptr) {
  std::vector<T> out;
  for (const auto& r : rows)
    for (const auto& v : r) out.push_back(static_cast<T>(v.get<double>()));
  if (n) *n = static_cast<std::int64_t>(rows.size());
  if (d) *d = rows.empty() ? 0 : static_cast<std::int64_t>(rows[0].size());
  return out;
}

inline std::optional<SampleWeight> weight_of(const nlohmann::json& c) {
  if (c["sample_weight"].is_null()) return std::nullopt;
  return SampleWeight(c["sample_weight"]["shape"].get<std::vector<std::int64_t>>(),
                      c["sample_weight"]["values"].get<std::vector<double>>());
}

// Relative error in the max norm: max |got - want| / max(max |want|, floor).
template <class T>
double max_rel(const T* got, const std::vector<T>& want, double floor = 1e-30) {
  double num = 0, den = floor;
  for (std::size_t i = 0; i < want.size(); ++i) {
    num = std::max(num, std::abs(static_cast<double>(got[i]) - static_cast<double>(want[i])));
    den = std::max(den, std::abs(static_cast<double>(want[i])));
  }
  return num / den;
}

}  // namespace simclr::test

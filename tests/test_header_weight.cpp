// The public headers stay light: the loss header declares the JSON types without defining them, and
// the options header needs neither Eigen nor JSON. Checked at compile time; the test only runs.

#include "simclr/options.hpp"

#ifdef EIGEN_CORE_H
#error "simclr/options.hpp must not include Eigen"
#endif
#ifdef INCLUDE_NLOHMANN_JSON_FWD_HPP_
#error "simclr/options.hpp must not include nlohmann/json"
#endif

#include "simclr/loss.hpp"

#ifdef INCLUDE_NLOHMANN_JSON_HPP_
#error "simclr/loss.hpp must include <nlohmann/json_fwd.hpp>, not <nlohmann/json.hpp>"
#endif

#include <gtest/gtest.h>

namespace simclr {
namespace {

TEST(HeaderWeight, LossHeaderWorksWithoutTheJsonDefinitions) {
  const SimCLRLoss loss(1.0, Reduction::kSum, "x");
  EXPECT_EQ(loss.get_config_string(), R"({"reduction":"sum","name":"x","temperature":1.0})");
  EXPECT_EQ(to_string(parse_reduction("none")), "none");
}

}  // namespace
}  // namespace simclr

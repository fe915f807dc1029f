// The device header stays light: no Eigen, no JSON definitions, no CPU loss header. Compiled with
// the emulated GPU target; the check is at compile time.

#include "simclr/cuda/device_loss.hpp"

#ifdef EIGEN_CORE_H
#error "simclr/cuda/device_loss.hpp must not include Eigen"
#endif
#ifdef INCLUDE_NLOHMANN_JSON_HPP_
#error "simclr/cuda/device_loss.hpp must not include <nlohmann/json.hpp>"
#endif

#include <cstdio>

int main() {
  // Only the light options are needed to configure a device loss.
  const simclr::LossConfig config{0.5, simclr::Reduction::kNone, std::nullopt};
  simclr::validate_config(config);
  std::printf("%s\n", simclr::to_string(config.reduction).c_str());
  return 0;
}

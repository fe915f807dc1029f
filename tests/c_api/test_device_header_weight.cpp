// The device header needs only the CUDA runtime and the standard library: no Eigen, no JSON (not
// even its forward declarations), no cuBLAS. Compiled with the emulated GPU
// target; the check is at compile time.

#include "simclr/cuda/device_loss.hpp"

#ifdef EIGEN_CORE_H
#error "simclr/cuda/device_loss.hpp must not include Eigen"
#endif
#ifdef INCLUDE_NLOHMANN_JSON_HPP_
#error "simclr/cuda/device_loss.hpp must not include <nlohmann/json.hpp>"
#endif
#ifdef INCLUDE_NLOHMANN_JSON_FWD_HPP_
#error "simclr/cuda/device_loss.hpp must not include <nlohmann/json_fwd.hpp>"
#endif
#if defined(CUBLAS_V2_H_) || defined(CUBLAS_API_H_)
#error "simclr/cuda/device_loss.hpp must not include cuBLAS"
#endif

#include <cstdio>

int main() {
  // Only the light options are needed to configure a device loss.
  const simclr::LossConfig config{0.5, simclr::Reduction::kNone, std::nullopt};
  simclr::validate_config(config);
  std::printf("%s\n", simclr::to_string(config.reduction).c_str());
  return 0;
}

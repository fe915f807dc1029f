// Fuzz target: SimCLRLoss::from_config_string on arbitrary text. Bad text must raise ValueError or
// TypeError; an accepted config must round-trip through get_config() to the same configuration.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>

#include "simclr/loss.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const simclr::SimCLRLoss loss = simclr::SimCLRLoss::from_config_string(text);
    if (!(std::isfinite(loss.temperature()) && loss.temperature() > 0)) std::abort();
    const simclr::SimCLRLoss again = simclr::SimCLRLoss::from_config(loss.get_config());
    if (again.temperature() != loss.temperature() || again.reduction() != loss.reduction() ||
        again.name() != loss.name())
      std::abort();
  } catch (const simclr::ValueError&) {
  } catch (const simclr::TypeError&) {
  }
  return 0;
}

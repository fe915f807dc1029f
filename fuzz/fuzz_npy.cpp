// Fuzz target: simclr::tools::parse_npy on arbitrary bytes. A malformed image must raise
// simclr::ValueError; an accepted one must be self-consistent (its bytes hold exactly its shape).

#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "npy.hpp"
#include "simclr/detail/check.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  simclr::tools::NpyArray a;
  try {
    a = simclr::tools::parse_npy(data, size, "fuzz.npy");
  } catch (const simclr::ValueError&) {
    return 0;
  }
  const std::size_t elem = a.dtype == simclr::DType::kFloat32 ? 4 : 8;
  const std::int64_t n = a.size();
  if (n < 0 || static_cast<std::size_t>(n) * elem != a.bytes.size()) std::abort();
  const auto values = a.to_double();
  if (values.size() != static_cast<std::size_t>(n)) std::abort();
  return 0;
}

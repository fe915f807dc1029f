// Fuzz target: simclr::tools::parse_args with simclr-loss's real command specs, then the strict
// number parsers on every value. The input is argv: arguments separated by NUL bytes. Every problem
// must be a simclr::ValueError.

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "cli.hpp"
#include "commands.hpp"
#include "simclr/detail/check.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::string> args{"simclr-loss"};
  std::string cur;
  for (std::size_t i = 0; i < size; ++i) {
    if (data[i] == 0) {
      args.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(static_cast<char>(data[i]));
    }
  }
  if (!cur.empty() || size == 0) args.push_back(cur);
  using namespace simclr::tools;
  ParsedArgs parsed;
  try {
    parsed = parse_args(args, command_specs());
  } catch (const simclr::ValueError&) {
    return 0;
  }
  // What the subcommands do with values (tools/simclr_loss.cpp, tools/bench.cpp).
  for (const auto& [flag, value] : parsed.values) {
    try {
      if (flag == "temperature") (void)parse_double(value, flag);
      if (flag == "threads" || flag == "memory-budget" || flag == "repeat" || flag == "warmup" ||
          flag == "seed" || flag == "batch" || flag == "dim" || flag == "tile-rows" ||
          flag == "tile-cols")
        (void)parse_int(value, flag, 0);
      if (flag == "global-batch-size" && value != "infer") (void)parse_int(value, flag, 0);
      if (flag == "split") (void)parse_counts(value, flag);
    } catch (const simclr::ValueError&) {
    }
  }
  return 0;
}

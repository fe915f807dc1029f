#pragma once
// The flags of each simclr-loss subcommand, shared by the command and the command-line fuzzer
// (fuzz/fuzz_cli.cpp) so that the fuzzer parses exactly what the command accepts.

#include <map>
#include <string>

#include "bench.hpp"
#include "cli.hpp"

namespace simclr::tools {

inline const std::map<std::string, FlagSpec>& command_specs() {
  static const std::map<std::string, FlagSpec> specs = {
      {"compute",
       {{"za", "zb", "temperature", "reduction", "name", "config", "sample-weight", "loss-out",
         "grad-a-out", "grad-b-out", "split", "global-batch-size", "threads", "memory-budget",
         "schedule"},
        {}}},
      {"config", {{"temperature", "reduction", "name", "config"}, {}}},
      {"bench", bench_flags()},
  };
  return specs;
}

}  // namespace simclr::tools

#pragma once
// `simclr-loss bench`: seeded random embeddings, one warm-up, then timed forward+backward steps.

#include "cli.hpp"
#include "runtime.hpp"

namespace simclr::tools {

// The flags of `simclr-loss bench` and what --help says of them.
CommandSpec bench_spec();
int run_bench(Runtime& rt, const ParsedArgs& args);

}  // namespace simclr::tools

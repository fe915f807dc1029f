#pragma once
// The engine's options (how the core math may spend memory and threads). The engine itself (docs/math.md
// sections 3-5) is the library's own: include/simclr/detail/engine.hpp, not installed.

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "simclr/types.hpp"

namespace simclr {

// How the engine may spend memory and threads. The defaults suit most callers.
struct EngineOptions {
  // Bytes the engine may use for a kept logits block. When this rank's [2n, 2G] block of logits
  // fits, the forward keeps it and the backward skips recomputing it (2 products instead of 3);
  // otherwise both stream column tiles and memory stays O(threads * tile). A single process with
  // `symmetric` always streams: its symmetric path needs 2 products too, in far less memory.
  // (Not the device's DeviceOptions::workspace_bytes, which bounds a tile rather than decide
  // whether to keep the whole block.)
  std::size_t memory_budget_bytes = std::size_t{8} << 20;
  // OpenMP threads for the row blocks; 0 means what the process is allowed (omp_get_max_threads()).
  int threads = 0;
  // Tile sizes, anchors by candidates (the symmetric block uses square tiles of tile_rows); 0 picks
  // the defaults (128, 1024). Tests force small tiles to cross tile boundaries. Same names as
  // cuda::DeviceOptions.
  std::int64_t tile_rows = 0;
  std::int64_t tile_cols = 0;
  // Compute one triangle of this rank's own [2n, 2n] diagonal block of logits, which is symmetric
  // and holds every positive (a single process: the whole matrix, half the forward products).
  bool symmetric = true;
  // Distributed calls only; every rank must pass the same value (checked, ValueError on every
  // rank).
  Schedule schedule = Schedule::kAuto;
};

}  // namespace simclr

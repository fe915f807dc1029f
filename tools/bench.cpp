#include "bench.hpp"

#include <sys/resource.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>

#include "simclr/detail/check.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

#include "simclr/detail/engine.hpp"
#include "simclr/loss.hpp"

namespace simclr::tools {
namespace {

using Clock = std::chrono::steady_clock;

// CPU seconds this process has used, all its threads together: on a shared machine the work a
// configuration does is steadier than its wall time.
double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

double peak_rss_mib() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_maxrss) / 1024.0;  // Linux reports KiB
}

// Row `global_row` of view `view` depends only on (seed, view, global_row), so any split of the
// global batch sees the same embeddings.
template <class T>
RowMatrix<T> make_rows(std::uint64_t seed, int view, std::int64_t begin, std::int64_t n,
                       std::int64_t d) {
  RowMatrix<T> m(n, d);
  for (std::int64_t i = 0; i < n; ++i) {
    std::mt19937_64 gen(seed * 0x9E3779B97F4A7C15ULL + static_cast<std::uint64_t>(begin + i) * 2 +
                        static_cast<std::uint64_t>(view));
    std::normal_distribution<double> normal;
    for (std::int64_t j = 0; j < d; ++j) m(i, j) = static_cast<T>(normal(gen));
  }
  return m;
}

// GFLOP/s of a square product C = A B with Eigen's GEMM at the CPU level the engine's tile loops
// run at (detail::reference_gemm, dispatched as they are), the machine's reference rate: built for
// the baseline level here, it would run SSE code against AVX-512 tile loops. The fastest of 5
// products after a warm-up: what the machine's GEMM does, which a burst of load from other
// processes would otherwise lower (one product takes about 0.1 s).
template <class T>
double square_gemm_gflops(std::int64_t size, int threads) {
  const RowMatrix<T> a = RowMatrix<T>::Random(size, size), b = RowMatrix<T>::Random(size, size);
  RowMatrix<T> c(size, size);
  detail::reference_gemm(a.data(), b.data(), c.data(), size, threads);  // warm-up
  double best = std::numeric_limits<double>::infinity();
  for (int r = 0; r < 5; ++r) {
    const auto t0 = Clock::now();
    detail::reference_gemm(a.data(), b.data(), c.data(), size, threads);
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return 2.0 * static_cast<double>(size) * static_cast<double>(size) * static_cast<double>(size) /
         best / 1e9;
}

struct BenchResult {
  double median = 0, min = 0, flops = 0, rss = 0;
  double rank_flops_max = 0, rank_flops_min = 0;  // the balance of the work between ranks
  double cpu_median = 0;  // CPU seconds per step, summed over ranks (median over steps)
};

// What one measurement runs: the global batch, the sizes and the engine's settings.
struct BenchCase {
  std::int64_t batch = 0;
  std::int64_t dim = 0;
  int threads = 1;
  int warmup = 1;
  int repeat = 3;
  std::size_t budget = 0;
  std::int64_t tile_rows = 0;  // 0: the engine's defaults
  std::int64_t tile_cols = 0;
  bool symmetric = true;
  Schedule schedule = Schedule::kAuto;
  std::uint64_t seed = 1;
};

template <class T>
BenchResult bench_one(Runtime& rt, const BenchCase& c) {
  const std::int64_t batch = c.batch, dim = c.dim;
  Communicator* comm = rt.communicator();
  const int world = rt.size(), rank = rt.rank();
  const std::int64_t n = batch / world + (rank < batch % world ? 1 : 0);
  const std::int64_t begin = rank * (batch / world) + std::min<std::int64_t>(rank, batch % world);
  const RowMatrix<T> za = make_rows<T>(c.seed, 0, begin, n, dim);
  const RowMatrix<T> zb = make_rows<T>(c.seed, 1, begin, n, dim);
  const SimCLRLoss loss(0.05, Reduction::kSum);
  CallOptions options;
  options.communicator = comm;
  options.engine.threads = c.threads;
  options.engine.memory_budget_bytes = c.budget;
  options.engine.tile_rows = c.tile_rows;
  options.engine.tile_cols = c.tile_cols;
  options.engine.symmetric = c.symmetric;
  options.engine.schedule = c.schedule;
  std::vector<double> times, cpu;
  double flops = 0;
  for (int r = 0; r < c.warmup + c.repeat; ++r) {
    if (comm) comm->barrier();
    const auto t0 = Clock::now();
    const double c0 = process_cpu_seconds();
    auto [out, grads] = loss.value_and_gradient<T>(za, zb, nullptr, options);
    if (comm) comm->barrier();
    const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    flops = out.flops + grads.flops;
    const double dc = process_cpu_seconds() - c0;
    if (r >= c.warmup) {
      times.push_back(dt);
      cpu.push_back(dc);
    }
  }
  // Totals over ranks: flops add up, memory is the largest rank's.
  std::sort(cpu.begin(), cpu.end());
  double mine[3] = {flops, peak_rss_mib(), cpu[cpu.size() / 2]};
  std::vector<double> all(3 * static_cast<std::size_t>(world));
  if (comm) {
    comm->all_gather(mine, sizeof(mine), all.data());
  } else {
    all.assign(mine, mine + 3);
  }
  BenchResult res;
  res.rank_flops_min = all[0];
  for (int r = 0; r < world; ++r) {
    const double* rank_values = all.data() + 3 * static_cast<std::size_t>(r);
    res.flops += rank_values[0];
    res.rank_flops_max = std::max(res.rank_flops_max, rank_values[0]);
    res.rank_flops_min = std::min(res.rank_flops_min, rank_values[0]);
    res.rss = std::max(res.rss, rank_values[1]);
    res.cpu_median += rank_values[2];
  }
  std::sort(times.begin(), times.end());
  res.median = times[times.size() / 2];
  if (times.size() % 2 == 0)
    res.median = 0.5 * (times[times.size() / 2 - 1] + times[times.size() / 2]);
  res.min = times.front();
  return res;
}

template <class T>
int bench_typed(Runtime& rt, const ParsedArgs& args, const std::string& dtype) {
  const std::int64_t dim = parse_int(args.get("dim").value_or("128"), "dim", 1);
  int threads = static_cast<int>(parse_int(args.get("threads").value_or("0"), "threads", 0));
#ifdef _OPENMP
  if (threads == 0) threads = omp_get_max_threads();
#else
  threads = 1;
#endif
  BenchCase c;
  c.dim = dim;
  c.threads = threads;
  c.repeat = static_cast<int>(parse_int(args.get("repeat").value_or("3"), "repeat", 1));
  c.warmup = static_cast<int>(parse_int(args.get("warmup").value_or("1"), "warmup", 0));
  c.budget = static_cast<std::size_t>(parse_int(
      args.get("memory-budget").value_or(std::to_string(EngineOptions{}.memory_budget_bytes)),
      "memory-budget", 0));
  c.tile_rows = parse_int(args.get("tile-rows").value_or("0"), "tile-rows", 0);
  c.tile_cols = parse_int(args.get("tile-cols").value_or("0"), "tile-cols", 0);
  c.symmetric = !args.has("no-symmetry");
  c.schedule = parse_schedule(args.get("schedule").value_or("auto"));
  c.seed = static_cast<std::uint64_t>(parse_int(args.get("seed").value_or("1"), "seed", 0));
  std::vector<std::int64_t> batches;
  if (args.has("sweep")) {
    batches = args.has("batch") ? parse_counts(*args.get("batch"), "batch")
                                : std::vector<std::int64_t>{1024, 2048, 4096, 8192, 16384};
  } else {
    SIMCLR_ENFORCE(args.has("batch"), ValueError, "bench needs --batch G");
    batches = {parse_int(*args.get("batch"), "batch", 1)};
  }
  // The reference GEMM runs after the timed steps, so its matrices do not count in their peak RSS.
  double gemm = -1;
  auto reference_gemm = [&] {
    if (gemm < 0)
      gemm = rt.rank() == 0 && !args.has("no-gemm")
                 ? square_gemm_gflops<T>(sizeof(T) == 4 ? 2048 : 1536, threads)
                 : 0;
    if (rt.communicator()) rt.communicator()->barrier();
    return gemm;
  };
  if (args.has("sweep") && rt.rank() == 0) {
    std::printf(
        "| G | d | dtype | ranks | threads | median s | min s | GFLOP/s | peak RSS MiB |\n");
    std::printf("|---|---|---|---|---|---|---|---|---|\n");
  }
  for (const auto g : batches) {
    c.batch = g;
    const BenchResult r = bench_one<T>(rt, c);
    if (!args.has("sweep")) reference_gemm();
    if (rt.rank() != 0) continue;
    const double gflops = r.flops / r.median / 1e9;
    if (args.has("sweep")) {
      std::printf("| %lld | %lld | %s | %d | %d | %.4f | %.4f | %.1f | %.1f |\n",
                  static_cast<long long>(g), static_cast<long long>(dim), dtype.c_str(), rt.size(),
                  threads, r.median, r.min, gflops, r.rss);
      continue;
    }
    nlohmann::ordered_json j;
    j["batch"] = g;
    j["dim"] = dim;
    j["dtype"] = dtype;
    j["world_size"] = rt.size();
    j["threads"] = threads;
    j["warmup"] = c.warmup;
    j["repeat"] = c.repeat;
    j["symmetric"] = c.symmetric;
    j["schedule"] = to_string(c.schedule);
    j["cpu_level"] = detail::to_string(detail::cpu_level());
    j["seconds_median"] = r.median;
    j["seconds_min"] = r.min;
    j["cpu_seconds_median"] = r.cpu_median;
    j["flops"] = r.flops;
    // In units of one product of the whole [2G, 2G] logit matrix with U (2 (2G)^2 d flops): a
    // single process with the symmetric path does 2 per step, and so does the balanced schedule at
    // any number of ranks.
    const double equivalent =
        2.0 * static_cast<double>(2 * g) * static_cast<double>(2 * g) * static_cast<double>(dim);
    j["gemm_equivalents"] = r.flops / equivalent;
    j["rank_flops_max"] = r.rank_flops_max;
    j["rank_flops_min"] = r.rank_flops_min;
    j["gflops"] = gflops;
    j["peak_rss_mib"] = r.rss;
    if (gemm > 0) {
      j["gemm_gflops"] = gemm;
      j["fraction_of_gemm"] = gflops / (gemm * rt.size());
    }
    std::cout << j.dump() << std::endl;
  }
  return 0;
}

}  // namespace

CommandSpec bench_spec() {
  const std::string budget = std::to_string(EngineOptions{}.memory_budget_bytes);
  return {
      "timed forward+backward steps of seeded random embeddings (one JSON line)",
      "bench --batch 4096 --dim 128 --threads 2",
      {
          {"batch", "G", "the global batch; with --sweep a list G1,G2,...",
           "required (with --sweep: 1024,2048,4096,8192,16384)", "--batch 4096"},
          {"dim", "d", "the embedding dimension", "128", "--dim 256"},
          {"dtype", "float32|float64", "the embeddings' dtype", "float32", "--dtype float64"},
          {"threads", "t", "OpenMP threads, 0 for all the process may use", "0", "--threads 2"},
          {"warmup", "w", "untimed steps first", "1", "--warmup 2"},
          {"repeat", "r", "timed steps", "3", "--repeat 10"},
          {"memory-budget", "BYTES", "bytes the engine may keep a block of logits in", budget,
           "--memory-budget 0"},
          {"tile-rows", "N", "EngineOptions::tile_rows, 0 for the engine's choice", "0",
           "--tile-rows 256"},
          {"tile-cols", "N", "EngineOptions::tile_cols, 0 for the engine's choice", "0",
           "--tile-cols 512"},
          {"seed", "s", "the seed of the embeddings", "1", "--seed 7"},
          {"device", "cpu", "only cpu here; the GPU path has simclr-gpu-bench", "cpu",
           "--device cpu"},
          {"schedule", "auto|own_rows|balanced",
           "under mpirun: which rank computes which blocks of logits", "auto",
           "--schedule balanced"},
          {"sweep", "", "a Markdown table over the batches of --batch", "off", "--sweep"},
          {"no-gemm", "", "skips the reference GEMM (no gemm_gflops, fraction_of_gemm)", "off",
           "--no-gemm"},
          {"no-symmetry", "", "EngineOptions::symmetric = false", "off", "--no-symmetry"},
      },
  };
}

int run_bench(Runtime& rt, const ParsedArgs& args) {
  const std::string dtype = args.get("dtype").value_or("float32");
  const std::string device = args.get("device").value_or("cpu");
  SIMCLR_ENFORCE(
      device == "cpu", ValueError, "--device ", device,
      " is not available in simclr-loss, which runs the CPU path; the GPU path has its own "
      "benchmark, simclr-gpu-bench (docs/gpu.md)");
  if (dtype == "float32") return bench_typed<float>(rt, args, dtype);
  SIMCLR_ENFORCE(dtype == "float64", ValueError, "--dtype must be float32 or float64, got '", dtype,
                 "'");
  return bench_typed<double>(rt, args, dtype);
}

}  // namespace simclr::tools

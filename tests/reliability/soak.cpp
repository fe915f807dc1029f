// simclr_soak: thousands of distributed steps under mpirun, each with a random global batch,
// dimension, uneven split (ranks with 0 rows included), reduction and dtype, checked against the
// single-process call on the whole batch; and the resident memory, which must not grow after
// warm-up. Run by tests/scripts/soak.sh (not a default test). Prints one summary line on rank 0; exit 1
// on failure. Usage: simclr_soak [seconds=40] [seed=1]

#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

#include "reference.hpp"
#include "simclr/loss.hpp"
#include "simclr/mpi/mpi_communicator.hpp"

namespace {

using namespace simclr;

long rss_kib() {
  long pages_total = 0, pages_resident = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &pages_total, &pages_resident) != 2) pages_resident = 0;
    std::fclose(f);
  }
  return pages_resident * (sysconf(_SC_PAGESIZE) / 1024);
}

template <class T>
double max_abs_diff(const T* got, const T* want, std::size_t n) {
  double m = 0;
  for (std::size_t i = 0; i < n; ++i)
    m = std::max(m, std::abs(static_cast<double>(got[i]) - static_cast<double>(want[i])));
  return m;
}

// One step; returns the largest error relative to the result's scale.
template <class T>
double step(Communicator& comm, std::uint64_t seed, std::int64_t g, std::int64_t d,
            const std::vector<std::int64_t>& split, Reduction reduction) {
  const int rank = comm.rank();
  RowMatrix<T> za(g, d), zb(g, d);
  for (std::int64_t i = 0; i < g; ++i) {
    const auto ra = test::seeded_row(seed, 0, i, d), rb = test::seeded_row(seed, 1, i, d);
    for (std::int64_t j = 0; j < d; ++j) {
      za(i, j) = static_cast<T>(ra[static_cast<std::size_t>(j)]);
      zb(i, j) = static_cast<T>(rb[static_cast<std::size_t>(j)]);
    }
  }
  std::int64_t begin = 0;
  for (int r = 0; r < rank; ++r) begin += split[static_cast<std::size_t>(r)];
  const std::int64_t n = split[static_cast<std::size_t>(rank)];
  const ConstMatrixView<T> a(za.data() + begin * d, n, d), b(zb.data() + begin * d, n, d);

  const SimCLRLoss loss(0.1, reduction);
  CallOptions o;
  o.communicator = &comm;
  if (reduction == Reduction::kSumOverBatchSize) o.global_batch_size = GlobalBatchSize::infer();
  const auto [out, grads] = loss.value_and_gradient<T>(a, b, nullptr, o);

  // The single-process reference: per-example losses of the whole batch, and the gradient of the
  // objective every rank's gradient belongs to, the sum of all ranks' objectives
  // (docs/distributed.md).
  const SimCLRLoss whole_loss(0.1, Reduction::kNone);
  const auto whole = whole_loss.forward<T>(za, zb);
  const T scale = reduction == Reduction::kSumOverBatchSize ? T(1) / static_cast<T>(g) : T(1);
  const std::vector<T> up(static_cast<std::size_t>(g), scale);
  const auto gw = whole_loss.backward(whole, up);

  double err = max_abs_diff(out.per_example.data(), whole.per_example.data() + begin,
                            static_cast<std::size_t>(n)) /
               std::max(1.0, std::log(2.0 * static_cast<double>(g)));
  const RowMatrix<T> ga = gw.grad_a.middleRows(begin, n), gb = gw.grad_b.middleRows(begin, n);
  if (n > 0 && d > 0) {
    // Floor of the scale: the reduction's weight per pair. At d = 1 every normalised row is +-1 and
    // the exact gradient is 0 (only the normalisation's rounding is left), so a relative error
    // would be 0/0.
    const double gscale =
        std::max(static_cast<double>(scale),
                 static_cast<double>(std::max(ga.cwiseAbs().maxCoeff(), gb.cwiseAbs().maxCoeff())));
    err = std::max(
        err,
        max_abs_diff(grads.grad_a.data(), ga.data(), static_cast<std::size_t>(ga.size())) / gscale);
    err = std::max(
        err,
        max_abs_diff(grads.grad_b.data(), gb.data(), static_cast<std::size_t>(gb.size())) / gscale);
  }
  if (out.global_rows != g || out.row_offset != begin) err = 1e300;
  return err;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  const double seconds = argc > 1 ? std::atof(argv[1]) : 40;
  const std::uint64_t seed0 = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 1;
  int rank = 0, k = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &k);
  // Generous: a rank never waits this long unless something hangs; then the step fails loudly.
  MpiCommunicator comm(MPI_COMM_WORLD, MpiCommunicatorOptions{std::chrono::milliseconds(60000)});
  const auto t0 = std::chrono::steady_clock::now();
  long steps = 0, failures = 0, rss_warm = 0, rss_peak_after_warm = 0;
  double worst_double = 0, worst_float = 0;
  const double warm_seconds = std::min(10.0, seconds / 4);
  std::string first_failure;
  while (true) {
    int go = 0;
    if (rank == 0)
      go = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < seconds;
    MPI_Bcast(&go, 1, MPI_INT, 0, MPI_COMM_WORLD);
    if (!go) break;
    // Every rank draws the same step from (seed0, step).
    std::mt19937_64 gen(seed0 * 7919 + static_cast<std::uint64_t>(steps));
    const std::int64_t g = std::uniform_int_distribution<std::int64_t>(1, 48)(gen);
    const std::int64_t d = std::uniform_int_distribution<std::int64_t>(1, 24)(gen);
    std::vector<std::int64_t> split(static_cast<std::size_t>(k), 0);
    // Skewed: rank r draws rows with weight (r+1)^2, and one step in four all rows go to one rank.
    std::vector<double> weights;
    for (int q = 0; q < k; ++q) weights.push_back((q + 1.0) * (q + 1.0));
    std::discrete_distribution<int> pick(weights.begin(), weights.end());
    const bool lump = gen() % 4 == 0;
    const int lump_rank = static_cast<int>(gen() % static_cast<std::uint64_t>(k));
    for (std::int64_t i = 0; i < g; ++i)
      ++split[static_cast<std::size_t>(lump ? lump_rank : pick(gen))];
    const Reduction reductions[] = {Reduction::kSum, Reduction::kNone,
                                    Reduction::kSumOverBatchSize};
    const Reduction red = reductions[gen() % 3];
    const bool dbl = gen() % 2 == 0;
    double err = 0;
    try {
      err = dbl ? step<double>(comm, seed0 + static_cast<std::uint64_t>(steps), g, d, split, red)
                : step<float>(comm, seed0 + static_cast<std::uint64_t>(steps), g, d, split, red);
    } catch (const std::exception& e) {
      err = 1e300;
      if (first_failure.empty()) first_failure = e.what();
    }
    // double: 1e-10 (the double tests' bound); float: 1e-4 relative to the result's scale, from
    // float's 6e-8 times the O(G d) roundings of a step at these sizes.
    const double tol = dbl ? 1e-10 : 1e-4;
    (dbl ? worst_double : worst_float) = std::max(dbl ? worst_double : worst_float, err);
    if (!(err <= tol)) {
      ++failures;
      if (first_failure.empty()) {
        std::string sp;
        for (auto c : split) sp += (sp.empty() ? "" : ",") + std::to_string(c);
        first_failure = "step " + std::to_string(steps) + " (G " + std::to_string(g) + ", d " +
                        std::to_string(d) + ", split " + sp + ", " + to_string(red) + ", " +
                        (dbl ? "float64" : "float32") + "): error " + std::to_string(err) + " > " +
                        std::to_string(tol);
      }
    }
    ++steps;
    const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (t >= warm_seconds) {
      const long rss = rss_kib();
      if (rss_warm == 0) rss_warm = rss;
      rss_peak_after_warm = std::max(rss_peak_after_warm, rss);
    }
  }
  // Growth allowed after warm-up: 4 MiB (allocator and Open MPI free-list noise); a leak of even
  // one small buffer per step grows by far more over thousands of steps.
  const long growth = rss_peak_after_warm - rss_warm;
  const int mine_bad = failures > 0 || growth > 4096 || rss_warm == 0 ? 1 : 0;
  long all_steps = 0, all_failures = 0, max_growth = 0;
  int any_bad = 0;
  MPI_Reduce(&steps, &all_steps, 1, MPI_LONG, MPI_MAX, 0, MPI_COMM_WORLD);
  MPI_Reduce(&failures, &all_failures, 1, MPI_LONG, MPI_SUM, 0, MPI_COMM_WORLD);
  MPI_Reduce(&growth, &max_growth, 1, MPI_LONG, MPI_MAX, 0, MPI_COMM_WORLD);
  MPI_Allreduce(&mine_bad, &any_bad, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  double worst[2] = {worst_double, worst_float}, worst_all[2] = {0, 0};
  MPI_Reduce(worst, worst_all, 2, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
  if (!first_failure.empty())
    std::fprintf(stderr, "rank %d: first failure: %s\n", rank, first_failure.c_str());
  if (rank == 0) {
    std::printf(
        "soak: ranks=%d steps=%ld failures=%ld max_err_double=%.3g max_err_float=%.3g "
        "rss_after_warmup=%ld KiB max_growth=%ld KiB: %s\n",
        k, all_steps, all_failures, worst_all[0], worst_all[1], rss_warm, max_growth,
        any_bad ? "FAIL" : "PASS");
    std::fflush(stdout);
  }
  MPI_Finalize();
  return any_bad;
}

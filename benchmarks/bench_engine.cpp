// Kernel benchmarks: the engine's forward and backward on one process for each path (streamed,
// kept logits, symmetric), and the normalisation. Counters report GFLOP/s on the flops each path
// does.
//   build/bin/simclr_kernel_bench [--benchmark_filter=...]

#include <benchmark/benchmark.h>

#include "simclr/detail/engine.hpp"
#include "simclr/loss.hpp"

namespace {

using simclr::RowMatrix;

enum Path { kStreamed = 0, kKept = 1, kSymmetric = 2 };

simclr::EngineOptions options_for(int path) {
  simclr::EngineOptions e;
  e.symmetric = path == kSymmetric;
  e.memory_budget_bytes = path == kKept ? (std::size_t{1} << 34) : 0;
  return e;
}

template <class T>
void BM_Forward(benchmark::State& state) {
  const auto g = state.range(0), d = state.range(1);
  const int path = static_cast<int>(state.range(2));
  const RowMatrix<T> za = RowMatrix<T>::Random(g, d), zb = RowMatrix<T>::Random(g, d);
  const simclr::SimCLRLoss loss(0.1, simclr::Reduction::kSum);
  simclr::CallOptions o;
  o.engine = options_for(path);
  double flops = 0;
  for (auto _ : state) {
    auto out = loss.forward<T>(za, zb, nullptr, o);
    flops = out.flops;
    benchmark::DoNotOptimize(out.objective);
  }
  state.counters["gflops"] =
      benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

template <class T>
void BM_ForwardBackward(benchmark::State& state) {
  const auto g = state.range(0), d = state.range(1);
  const int path = static_cast<int>(state.range(2));
  const RowMatrix<T> za = RowMatrix<T>::Random(g, d), zb = RowMatrix<T>::Random(g, d);
  const simclr::SimCLRLoss loss(0.1, simclr::Reduction::kSum);
  simclr::CallOptions o;
  o.engine = options_for(path);
  double flops = 0;
  for (auto _ : state) {
    auto [out, grads] = loss.value_and_gradient<T>(za, zb, nullptr, o);
    flops = out.flops + grads.flops;
    benchmark::DoNotOptimize(grads.grad_a.data());
  }
  state.counters["gflops"] =
      benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

template <class T>
void BM_Normalize(benchmark::State& state) {
  const auto g = state.range(0), d = state.range(1);
  const RowMatrix<T> x = RowMatrix<T>::Random(g, d);
  RowMatrix<T> out(g, d);
  std::vector<T> nrm(static_cast<std::size_t>(g));
  for (auto _ : state) {
    simclr::detail::l2_normalize_rows<T>(x, out.data(), d, nrm.data());
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(state.iterations() * g * d * static_cast<std::int64_t>(sizeof(T)) * 2);
}

void Sizes(benchmark::internal::Benchmark* b) {
  for (std::int64_t g : {512, 2048, 8192})
    for (std::int64_t path : {kStreamed, kKept, kSymmetric}) {
      if (path == kKept && g > 4096) continue;  // 1 GiB of logits: not a sensible configuration
      b->Args({g, 128, path});
    }
  b->ArgNames({"batch", "dim", "path"})->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK_TEMPLATE(BM_Forward, float)->Apply(Sizes);
BENCHMARK_TEMPLATE(BM_ForwardBackward, float)->Apply(Sizes);
BENCHMARK_TEMPLATE(BM_ForwardBackward, double)->Apply(Sizes);
BENCHMARK_TEMPLATE(BM_Normalize, float)->Args({8192, 128})->Args({512, 128});

}  // namespace

BENCHMARK_MAIN();

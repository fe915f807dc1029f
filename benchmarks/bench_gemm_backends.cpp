// Eigen's GEMM against OpenBLAS on the shapes the engine multiplies: a logits tile
// [rows, d] x [d, cols] (k = d small) and the backward's [rows, cols] x [cols, d], single-threaded
// as the engine calls them (one product per thread). Decides which backend the engine uses.
//   build/bin/simclr_gemm_backends

#include <benchmark/benchmark.h>
#include <cblas.h>

#include "simclr/types.hpp"

namespace {

using simclr::RowMatrix;

// Logits tile: S = A B^T with A [m, k], B [n, k].
void BM_TileEigen(benchmark::State& state) {
  const auto m = state.range(0), n = state.range(1), k = state.range(2);
  const RowMatrix<float> a = RowMatrix<float>::Random(m, k), b = RowMatrix<float>::Random(n, k);
  RowMatrix<float> s(m, n);
  Eigen::setNbThreads(1);
  for (auto _ : state) {
    s.noalias() = 0.5f * (a * b.transpose());
    benchmark::DoNotOptimize(s.data());
  }
  state.counters["gflops"] = benchmark::Counter(2e-9 * static_cast<double>(m * n * k),
                                                benchmark::Counter::kIsIterationInvariantRate);
}

void BM_TileOpenBLAS(benchmark::State& state) {
  const auto m = state.range(0), n = state.range(1), k = state.range(2);
  const RowMatrix<float> a = RowMatrix<float>::Random(m, k), b = RowMatrix<float>::Random(n, k);
  RowMatrix<float> s(m, n);
  openblas_set_num_threads(1);
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m), static_cast<int>(n),
                static_cast<int>(k), 0.5f, a.data(), static_cast<int>(k), b.data(),
                static_cast<int>(k), 0.0f, s.data(), static_cast<int>(n));
    benchmark::DoNotOptimize(s.data());
  }
  state.counters["gflops"] = benchmark::Counter(2e-9 * static_cast<double>(m * n * k),
                                                benchmark::Counter::kIsIterationInvariantRate);
}

// Backward: G += M U with M [m, n], U [n, k].
void BM_BackEigen(benchmark::State& state) {
  const auto m = state.range(0), n = state.range(1), k = state.range(2);
  const RowMatrix<float> mm = RowMatrix<float>::Random(m, n), u = RowMatrix<float>::Random(n, k);
  RowMatrix<float> g = RowMatrix<float>::Zero(m, k);
  Eigen::setNbThreads(1);
  for (auto _ : state) {
    g.noalias() += 0.5f * (mm * u);
    benchmark::DoNotOptimize(g.data());
  }
  state.counters["gflops"] = benchmark::Counter(2e-9 * static_cast<double>(m * n * k),
                                                benchmark::Counter::kIsIterationInvariantRate);
}

void BM_BackOpenBLAS(benchmark::State& state) {
  const auto m = state.range(0), n = state.range(1), k = state.range(2);
  const RowMatrix<float> mm = RowMatrix<float>::Random(m, n), u = RowMatrix<float>::Random(n, k);
  RowMatrix<float> g = RowMatrix<float>::Zero(m, k);
  openblas_set_num_threads(1);
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(m), static_cast<int>(k),
                static_cast<int>(n), 0.5f, mm.data(), static_cast<int>(n), u.data(),
                static_cast<int>(k), 1.0f, g.data(), static_cast<int>(k));
    benchmark::DoNotOptimize(g.data());
  }
  state.counters["gflops"] = benchmark::Counter(2e-9 * static_cast<double>(m * n * k),
                                                benchmark::Counter::kIsIterationInvariantRate);
}

void Shapes(benchmark::internal::Benchmark* b) {
  b->Args({128, 1024, 128})->Args({128, 128, 128})->Args({128, 1024, 64})->Args({128, 1024, 256});
  b->ArgNames({"m", "n", "k"});
}

BENCHMARK(BM_TileEigen)->Apply(Shapes);
BENCHMARK(BM_TileOpenBLAS)->Apply(Shapes);
BENCHMARK(BM_BackEigen)->Apply(Shapes);
BENCHMARK(BM_BackOpenBLAS)->Apply(Shapes);

}  // namespace

BENCHMARK_MAIN();

// The installed package's smoke test: the loss of one global batch computed through MPI on every
// rank (each rank its own uneven slice) must equal the plain local call over the whole batch, and
// so must each rank's gradient rows. Every rank checks, all agree on the verdict, rank 0 prints it.

#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <memory>
#include <simclr/loss.hpp>
#include <simclr/mpi/mpi_communicator.hpp>

namespace {

using Matrix = simclr::RowMatrix<double>;

// Embeddings as a function of (view, global row, column) only, so every rank can build the whole
// batch.
Matrix make_view(int view, std::int64_t rows, std::int64_t dim) {
  Matrix m(rows, dim);
  for (std::int64_t i = 0; i < rows; ++i) {
    for (std::int64_t j = 0; j < dim; ++j) {
      const double t = static_cast<double>(7 * i + 3 * j + 11 * view);
      m(i, j) = std::sin(0.37 * t) + 0.25 * std::cos(1.3 * t + static_cast<double>(i % 3));
    }
  }
  return m;
}

int run(int rank, int size) {
  // 13 rows split unevenly: rank r takes the rows [begin, begin + n).
  const std::int64_t global_rows = 13, dim = 8;
  const Matrix za = make_view(0, global_rows, dim), zb = make_view(1, global_rows, dim);
  const simclr::SimCLRLoss loss(0.1, simclr::Reduction::kSumOverBatchSize);

  // The local reference over the whole global batch (no communicator).
  const auto [reference, reference_grads] = loss.value_and_gradient<double>(za, zb);

  const std::int64_t base = global_rows / size, extra = global_rows % size;
  const std::int64_t begin = rank * base + std::min<std::int64_t>(rank, extra);
  const std::int64_t n = base + (rank < extra ? 1 : 0);
  double distributed = 0, max_grad_diff = 0;
  {
    simclr::MpiCommunicator comm(MPI_COMM_WORLD);
    simclr::CallOptions options;
    options.communicator = &comm;
    options.global_batch_size = simclr::GlobalBatchSize::of(global_rows);
    const simclr::ConstMatrixView<double> a(za.data() + begin * dim, n, dim);
    const simclr::ConstMatrixView<double> b(zb.data() + begin * dim, n, dim);
    const auto [mine, grads] = loss.value_and_gradient<double>(a, b, nullptr, options);
    // Each rank's objective is its share of the global mean; the shares add up to it.
    double share = mine.objective;
    MPI_Allreduce(&share, &distributed, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    for (std::int64_t i = 0; i < n; ++i) {
      for (std::int64_t j = 0; j < dim; ++j) {
        max_grad_diff = std::max(
            {max_grad_diff, std::abs(grads.grad_a(i, j) - reference_grads.grad_a(begin + i, j)),
             std::abs(grads.grad_b(i, j) - reference_grads.grad_b(begin + i, j))});
      }
    }
  }

  // Double path, 13 rows: the two computations differ only in summation order (~1e-15 relative).
  const double loss_diff = std::abs(distributed - reference.objective);
  int failed =
      (loss_diff <= 1e-10 * std::abs(reference.objective) && max_grad_diff <= 1e-10) ? 0 : 1;
  int any_failed = 0;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (failed) {
    std::fprintf(stderr, "rank %d: loss %.17g vs local %.17g, max gradient difference %.3g\n", rank,
                 distributed, reference.objective, max_grad_diff);
  }
  if (rank == 0) {
    std::printf(
        "%s: simclr loss over %d ranks %.12f, local %.12f (|diff| %.2e, gradient |diff| %.2e)\n",
        any_failed ? "FAILED" : "ok", size, distributed, reference.objective, loss_diff,
        max_grad_diff);
  }
  return any_failed ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int status = 0;
  try {
    status = run(rank, size);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d: error: %s\n", rank, e.what());
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  MPI_Finalize();
  return status;
}

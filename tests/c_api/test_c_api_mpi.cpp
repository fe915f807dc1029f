// The C API through simclr_comm_create_mpi at several process counts: the distributed forward and
// backward on an uneven split equal the single-process C API call on the whole batch, and bad input
// on one rank fails with the same status and message on every rank. Only the C API and MPI are
// used, as a front end binding it would.

#include <mpi.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "simclr/c_api.h"

namespace {

int failures = 0;
int rank = 0, size = 1;

#define CHECK(cond)                                                                                \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      ++failures;                                                                                  \
      std::fprintf(stderr, "rank %d: %s:%d: CHECK(%s) failed\n", rank, __FILE__, __LINE__, #cond); \
    }                                                                                              \
  } while (0)

#define CHECK_OK(call)                                                                       \
  do {                                                                                       \
    const simclr_status st_ = (call);                                                        \
    if (st_ != SIMCLR_OK) {                                                                  \
      ++failures;                                                                            \
      std::fprintf(stderr, "rank %d: %s:%d: %s returned %d: %s\n", rank, __FILE__, __LINE__, \
                   #call, static_cast<int>(st_), simclr_last_error());                       \
    }                                                                                        \
  } while (0)

#define CHECK_NEAR(a, b, tol)                                                              \
  do {                                                                                     \
    const double a_ = (a), b_ = (b);                                                       \
    if (!(std::fabs(a_ - b_) <= (tol))) {                                                  \
      ++failures;                                                                          \
      std::fprintf(stderr, "rank %d: %s:%d: %s = %.17g, expected %.17g\n", rank, __FILE__, \
                   __LINE__, #a, a_, b_);                                                  \
    }                                                                                      \
  } while (0)

constexpr std::int64_t kD = 5;

simclr_matrix host64(double* data, std::int64_t rows, std::int64_t cols) {
  return simclr_matrix{data, rows, cols, cols, SIMCLR_FLOAT64, -1};
}

void fill(std::vector<double>& x, unsigned seed) {
  unsigned s = seed * 2654435761u + 1u;
  for (double& v : x) {
    s = s * 1664525u + 1013904223u;
    v = static_cast<double>(s >> 8) / static_cast<double>(1u << 23) - 1.0;
  }
}

// The uneven split: rank r holds 2r + 1 rows (1, 3, 5, ...).
std::int64_t rows_of(int r) { return 2 * r + 1; }
std::int64_t offset_of(int r) {
  std::int64_t o = 0;
  for (int q = 0; q < r; ++q) o += rows_of(q);
  return o;
}

struct Result {
  std::vector<double> values, grad_a, grad_b;
};

// One forward and backward through the C API: za, zb [n, kD], upstream (1 or n values).
Result run(simclr_loss_t loss, double* za, double* zb, std::int64_t n, const simclr_weight* weight,
           const simclr_call_options* options, const std::vector<double>& upstream, bool none) {
  Result r;
  r.values.assign(static_cast<std::size_t>(none ? n : 1), 0.0);
  r.grad_a.assign(static_cast<std::size_t>(n * kD), 0.0);
  r.grad_b.assign(static_cast<std::size_t>(n * kD), 0.0);
  simclr_matrix a = host64(za, n, kD), b = host64(zb, n, kD);
  simclr_matrix ga = host64(r.grad_a.data(), n, kD), gb = host64(r.grad_b.data(), n, kD);
  simclr_forward_t saved = nullptr;
  CHECK_OK(
      simclr_forward(loss, &a, &b, weight, options, r.values.data(), nullptr, nullptr, &saved));
  CHECK_OK(simclr_backward(loss, saved, upstream.data(), static_cast<std::int64_t>(upstream.size()),
                           &ga, &gb));
  simclr_forward_destroy(saved);
  return r;
}

void test_matches_single_process(simclr_comm_t comm, simclr_reduction reduction, bool weighted,
                                 int32_t schedule = SIMCLR_SCHEDULE_AUTO) {
  const std::int64_t total = offset_of(size), n = rows_of(rank), off = offset_of(rank);
  std::vector<double> za(static_cast<std::size_t>(total * kD)), zb(za.size()), w(total),
      up(static_cast<std::size_t>(total));
  fill(za, 11), fill(zb, 23), fill(w, 5), fill(up, 3);
  for (double& x : w) x += 1.5;  // positive weights
  const bool none = reduction == SIMCLR_REDUCTION_NONE;

  simclr_loss_t loss = nullptr;
  CHECK_OK(simclr_loss_create(0.3, reduction, "c_api_mpi", &loss));

  simclr_weight whole_w{w.data(), 1, 0, {total, 0}};
  const Result whole = run(loss, za.data(), zb.data(), total, weighted ? &whole_w : nullptr,
                           nullptr, none ? up : std::vector<double>{1.0}, none);

  simclr_call_options options;
  simclr_call_options_init(&options);
  options.comm = comm;
  options.global_batch_size = SIMCLR_GLOBAL_BATCH_INFER;
  options.schedule = schedule;
  simclr_weight mine_w{w.data() + off, 1, 0, {n, 0}};
  std::vector<double> my_up =
      none ? std::vector<double>(up.begin() + off, up.begin() + off + n) : std::vector<double>{1.0};
  const Result mine = run(loss, za.data() + off * kD, zb.data() + off * kD, n,
                          weighted ? &mine_w : nullptr, &options, my_up, none);

  if (none) {
    for (std::int64_t i = 0; i < n; ++i)
      CHECK_NEAR(mine.values[static_cast<std::size_t>(i)],
                 whole.values[static_cast<std::size_t>(off + i)], 1e-10);
  } else {
    // Each rank's reduced loss sums over the ranks to the whole batch's.
    double sum = 0;
    MPI_Allreduce(mine.values.data(), &sum, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    CHECK_NEAR(sum, whole.values[0], 1e-10);
  }
  for (std::int64_t k = 0; k < n * kD; ++k) {
    CHECK_NEAR(mine.grad_a[static_cast<std::size_t>(k)],
               whole.grad_a[static_cast<std::size_t>(off * kD + k)], 1e-10);
    CHECK_NEAR(mine.grad_b[static_cast<std::size_t>(k)],
               whole.grad_b[static_cast<std::size_t>(off * kD + k)], 1e-10);
  }
  simclr_loss_destroy(loss);
}

// Every rank got `status` and the same message as every other rank.
void check_same_failure(simclr_status got, simclr_status expected, const char* text) {
  CHECK(got == expected);
  char mine[512] = {0};
  std::snprintf(mine, sizeof(mine), "%d|%s", static_cast<int>(got), simclr_last_error());
  std::vector<char> all(static_cast<std::size_t>(size) * sizeof(mine));
  MPI_Allgather(mine, sizeof(mine), MPI_CHAR, all.data(), sizeof(mine), MPI_CHAR, MPI_COMM_WORLD);
  for (int r = 0; r < size; ++r) CHECK(std::strcmp(all.data() + r * sizeof(mine), mine) == 0);
  if (std::strstr(mine, text) == nullptr) {
    ++failures;
    std::fprintf(stderr, "rank %d: message \"%s\" lacks \"%s\"\n", rank, mine, text);
  }
}

void test_bad_input_on_one_rank(simclr_comm_t comm) {
  const std::int64_t n = rows_of(rank);
  std::vector<double> za(static_cast<std::size_t>(n * kD)), zb(za.size()), values(1);
  std::vector<float> zb32(za.size(), 0.5f);
  fill(za, 1), fill(zb, 2);
  simclr_loss_t loss = nullptr;
  CHECK_OK(simclr_loss_create(0.5, SIMCLR_REDUCTION_SUM, nullptr, &loss));
  simclr_call_options options;
  simclr_call_options_init(&options);
  options.comm = comm;
  simclr_matrix a = host64(za.data(), n, kD), b = host64(zb.data(), n, kD);
  const int last = size - 1;

  // NaN on the last rank: found by the C++ forward's validation.
  if (rank == last) za[2] = std::nan("");
  check_same_failure(
      simclr_forward(loss, &a, &b, nullptr, &options, values.data(), nullptr, nullptr, nullptr),
      SIMCLR_VALUE_ERROR, "NaN");
  za[2] = 0.25;

  // A dtype mismatch on rank 0: found by the C API's own checks, carried the same way.
  simclr_matrix b32{zb32.data(), n, kD, kD, SIMCLR_FLOAT32, -1};
  check_same_failure(simclr_forward(loss, &a, rank == 0 ? &b32 : &b, nullptr, &options,
                                    values.data(), nullptr, nullptr, nullptr),
                     SIMCLR_TYPE_ERROR, "float32");

  // A schedule outside the enum on one rank.
  options.schedule = rank == last ? 7 : SIMCLR_SCHEDULE_AUTO;
  check_same_failure(
      simclr_forward(loss, &a, &b, nullptr, &options, values.data(), nullptr, nullptr, nullptr),
      SIMCLR_VALUE_ERROR, "SIMCLR_SCHEDULE_BALANCED");
  options.schedule = SIMCLR_SCHEDULE_AUTO;

  // The front end rejected its own input on the last rank (a binding's "not a tensor"): that rank
  // calls with input_error and NULL views, and every rank fails with its status and message.
  if (rank == last) {
    options.input_error = SIMCLR_TYPE_ERROR;
    options.input_error_message = "simclr_loss.torch: za must be a torch.Tensor, got list";
  }
  check_same_failure(simclr_forward(loss, rank == last ? nullptr : &a, rank == last ? nullptr : &b,
                                    nullptr, &options, rank == last ? nullptr : values.data(),
                                    nullptr, nullptr, nullptr),
                     SIMCLR_TYPE_ERROR,
                     (std::string("must be a torch.Tensor, got list (rank ") +
                      std::to_string(last) + ")")
                         .c_str());
  options.input_error = SIMCLR_UNSUPPORTED;
  options.input_error_message = "simclr_loss.torch: za is a sparse tensor";
  if (rank != last) options.input_error = SIMCLR_OK;
  check_same_failure(
      simclr_forward(loss, &a, &b, nullptr, &options, values.data(), nullptr, nullptr, nullptr),
      SIMCLR_UNSUPPORTED, "sparse tensor");
  options.input_error = SIMCLR_OK;
  options.input_error_message = nullptr;

  // gradient_reduction differs on one rank (a value outside the enum fails alike).
  if (size > 1) {
    options.gradient_reduction = rank == last ? SIMCLR_GRADIENT_MEAN : SIMCLR_GRADIENT_SUM;
    check_same_failure(
        simclr_forward(loss, &a, &b, nullptr, &options, values.data(), nullptr, nullptr, nullptr),
        SIMCLR_VALUE_ERROR, "gradient_reduction differs between ranks");
  }
  options.gradient_reduction = rank == last ? 9 : SIMCLR_GRADIENT_SUM;
  check_same_failure(
      simclr_forward(loss, &a, &b, nullptr, &options, values.data(), nullptr, nullptr, nullptr),
      SIMCLR_VALUE_ERROR, "SIMCLR_GRADIENT_MEAN");
  options.gradient_reduction = SIMCLR_GRADIENT_SUM;

  // A NULL output on the last rank.
  check_same_failure(
      simclr_forward(loss, &a, &b, nullptr, &options, rank == last ? nullptr : values.data(),
                     nullptr, nullptr, nullptr),
      SIMCLR_VALUE_ERROR, "values is NULL");

  // A backward whose upstream has the wrong count (or is NULL) on one rank only: the check runs
  // inside the backward's collective, so every rank fails alike instead of waiting for that rank.
  simclr_forward_t saved = nullptr;
  CHECK_OK(
      simclr_forward(loss, &a, &b, nullptr, &options, values.data(), nullptr, nullptr, &saved));
  std::vector<double> ga(za.size()), gb(za.size()), up(3, 1.0);
  simclr_matrix ma = host64(ga.data(), n, kD), mb = host64(gb.data(), n, kD);
  check_same_failure(simclr_backward(loss, saved, up.data(), rank == last ? 3 : 1, &ma, &mb),
                     SIMCLR_VALUE_ERROR, "needs reduction 'none'");
  check_same_failure(simclr_backward(loss, saved, rank == 0 ? nullptr : up.data(), 1, &ma, &mb),
                     SIMCLR_VALUE_ERROR, "needs reduction 'none'");
  CHECK_OK(simclr_backward(loss, saved, up.data(), 1, &ma, &mb));
  simclr_forward_destroy(saved);

  // The communicator is still good afterwards.
  CHECK_OK(
      simclr_forward(loss, &a, &b, nullptr, &options, values.data(), nullptr, nullptr, nullptr));
  simclr_loss_destroy(loss);
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);

  simclr_comm_t comm = nullptr;
  CHECK_OK(simclr_comm_create_mpi(MPI_Comm_c2f(MPI_COMM_WORLD), 60.0, &comm));
  CHECK(simclr_comm_rank(comm) == rank && simclr_comm_size(comm) == size);
  simclr_comm_t bad = nullptr;
  CHECK(simclr_comm_create_mpi(MPI_Comm_c2f(MPI_COMM_WORLD), -1.0, &bad) == SIMCLR_VALUE_ERROR);

  test_matches_single_process(comm, SIMCLR_REDUCTION_NONE, false);
  test_matches_single_process(comm, SIMCLR_REDUCTION_SUM, true);
  test_matches_single_process(comm, SIMCLR_REDUCTION_SUM_OVER_BATCH_SIZE, true);
  test_matches_single_process(comm, SIMCLR_REDUCTION_AUTO, false);
  for (int32_t schedule : {SIMCLR_SCHEDULE_OWN_ROWS, SIMCLR_SCHEDULE_BALANCED}) {
    test_matches_single_process(comm, SIMCLR_REDUCTION_NONE, false, schedule);
    test_matches_single_process(comm, SIMCLR_REDUCTION_SUM_OVER_BATCH_SIZE, true, schedule);
  }
  test_bad_input_on_one_rank(comm);
  simclr_comm_destroy(comm);

  int any = 0;
  MPI_Allreduce(&failures, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0) std::printf(any == 0 ? "simclr C API over MPI: all checks passed\n" : "FAILED\n");
  MPI_Finalize();
  return any == 0 ? 0 : 1;
}

// The NCCL communicator and the distributed device loss, under mpiexec (1 and 2 ranks, one GPU per
// rank). Every rank rebuilds the whole batch from (seed, view, global row), runs the CPU path in
// double on it, and compares its own slice. Skips with one line when fewer CUDA devices than ranks
// are visible (NCCL needs one GPU per rank).

#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "gpu_test_util.hpp"
#include "simclr/cuda/device_loss.hpp"
#include "simclr/loss.hpp"
#include "simclr/nccl/nccl_communicator.hpp"

#ifdef SIMCLR_CUDA_EMULATION
#include "emulation.hpp"  // fail_next_allocations
#endif

namespace simclr::gputest {
namespace {

constexpr double kFloat32Tol = 1e-5;  // as test_device_loss.cpp: float32 rounding, a margin of ~10

class NcclTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SIMCLR_CHECK_CUDA(cudaStreamCreate(&stream_));
    comm_ = std::make_unique<NcclCommunicator>(MPI_COMM_WORLD, stream_);
  }
  void TearDown() override {
    comm_.reset();
    if (stream_ != nullptr) {
      (void)cudaStreamSynchronize(stream_);
      (void)cudaStreamDestroy(stream_);
    }
  }
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<NcclCommunicator> comm_;
};

TEST_F(NcclTest, AllGatherVWithARankOfZeroBytes) {
  const int rank = comm_->rank(), size = comm_->size();
  std::vector<std::size_t> bytes(static_cast<std::size_t>(size));
  for (int r = 0; r < size; ++r)
    bytes[static_cast<std::size_t>(r)] = r == 1 ? 0 : static_cast<std::size_t>(4 * (r + 3));
  const std::size_t total = std::accumulate(bytes.begin(), bytes.end(), std::size_t{0});
  std::vector<unsigned char> mine(bytes[static_cast<std::size_t>(rank)]);
  for (std::size_t i = 0; i < mine.size(); ++i)
    mine[i] = static_cast<unsigned char>(rank * 50 + static_cast<int>(i));
  cuda::DeviceArray send(mine.size(), stream_), recv(total, stream_);
  if (!mine.empty())
    SIMCLR_CHECK_CUDA(
        cudaMemcpyAsync(send.data(), mine.data(), mine.size(), cudaMemcpyHostToDevice, stream_));
  comm_->all_gather_v(send.data(), mine.size(), recv.data(), bytes);
  std::vector<unsigned char> got(total);
  SIMCLR_CHECK_CUDA(
      cudaMemcpyAsync(got.data(), recv.data(), total, cudaMemcpyDeviceToHost, stream_));
  SIMCLR_CHECK_CUDA(cudaStreamSynchronize(stream_));
  std::size_t at = 0;
  for (int r = 0; r < size; ++r)
    for (std::size_t i = 0; i < bytes[static_cast<std::size_t>(r)]; ++i, ++at)
      EXPECT_EQ(got[at], static_cast<unsigned char>(r * 50 + static_cast<int>(i)))
          << "rank " << r << " byte " << i;
  comm_->barrier();
}

// Rows of each rank for a global batch of G: `split` gives rank r's share; the last rank takes the
// rest.
std::vector<std::int64_t> split_rows(std::int64_t G, int size, bool empty_rank1) {
  std::vector<std::int64_t> rows(static_cast<std::size_t>(size), 0);
  if (size == 1) {
    rows[0] = G;
    return rows;
  }
  std::int64_t left = G;
  for (int r = 0; r < size; ++r) {
    const std::int64_t share =
        (r == 1 && empty_rank1) ? 0 : (r == size - 1 ? left : (G * 2) / (3 * size));
    rows[static_cast<std::size_t>(r)] = share;
    left -= share;
  }
  rows[0] += left;  // with an empty last rank
  return rows;
}

// Returns this rank's forward flops.
double check_distributed(NcclCommunicator& comm, cudaStream_t stream, Reduction reduction,
                         bool empty_rank1, Schedule schedule = Schedule::kAuto,
                         double temperature = 0.1) {
  const std::int64_t G = 41, d = 12;
  const int rank = comm.rank();
  const auto rows = split_rows(G, comm.size(), empty_rank1);
  const std::int64_t n = rows[static_cast<std::size_t>(rank)];
  const std::int64_t begin = std::accumulate(rows.begin(), rows.begin() + rank, std::int64_t{0});
  SCOPED_TRACE(::testing::Message() << "rank " << rank << " rows " << n << " reduction "
                                    << to_string(reduction) << " schedule " << to_string(schedule));

  const auto all_a = rounded(seeded_rows(11, 0, 0, G, d), DeviceDType::kFloat32);
  const auto all_b = rounded(seeded_rows(11, 1, 0, G, d), DeviceDType::kFloat32);
  RowMatrix<double> ma = Eigen::Map<const RowMatrix<double>>(all_a.data(), G, d);
  RowMatrix<double> mb = Eigen::Map<const RowMatrix<double>>(all_b.data(), G, d);
  // Whole batch on one process: J = sum_r J_r for sum; for sum_over_batch_size with the global
  // batch size inferred, J = mean over G; the gradients are slices of the whole batch's.
  auto [ref, grads] = SimCLRLoss(temperature, reduction).value_and_gradient<double>(ma, mb);

  const std::vector<double> a(all_a.begin() + begin * d, all_a.begin() + (begin + n) * d);
  const std::vector<double> b(all_b.begin() + begin * d, all_b.begin() + (begin + n) * d);
  DeviceMatrix za = upload(a, n, d, DeviceDType::kFloat32, stream),
               zb = upload(b, n, d, DeviceDType::kFloat32, stream);
  DeviceMatrix ga = zeros(n, d, DeviceDType::kFloat32, stream),
               gb = zeros(n, d, DeviceDType::kFloat32, stream);
  cuda::DeviceSimCLRLoss loss(temperature, reduction);
  cuda::DeviceCallOptions options;
  options.communicator = &comm;
  options.global_batch_size = GlobalBatchSize::infer();
  options.device.tile_rows = 10;
  options.device.tile_cols = 28;
  options.device.schedule = schedule;
  auto out = loss.forward(za.view(), zb.view(), stream, nullptr, options);
  loss.backward(out, 1.f, ga.mutable_view(), gb.mutable_view(), stream);
  EXPECT_EQ(out.global_rows, G);
  EXPECT_EQ(out.row_offset, begin);
  const auto per_example = download(out.per_example.data(), 1, n, DeviceDType::kFloat32, stream);
  for (std::int64_t i = 0; i < n; ++i)
    EXPECT_NEAR(per_example[static_cast<std::size_t>(i)],
                ref.per_example[static_cast<std::size_t>(begin + i)],
                kFloat32Tol * std::abs(ref.per_example[static_cast<std::size_t>(begin + i)]));
  // This rank's share of the objective, summed over ranks, is the whole batch's.
  const float mine = copy_to_host_f32(out.objective, 1, stream)[0];
  float total = 0;
  MPI_Allreduce(&mine, &total, 1, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
  EXPECT_NEAR(total, ref.objective, kFloat32Tol * std::abs(ref.objective));
  std::vector<double> rga(grads.grad_a.data() + begin * d, grads.grad_a.data() + (begin + n) * d);
  std::vector<double> rgb(grads.grad_b.data() + begin * d, grads.grad_b.data() + (begin + n) * d);
  if (n > 0) {
    EXPECT_LE(rel_err(download(ga, stream), rga), kFloat32Tol);
    EXPECT_LE(rel_err(download(gb, stream), rgb), kFloat32Tol);
  }
  return out.flops;
}

// This rank's rows alone, on one process, with the tiles of check_distributed: the flops of its
// diagonal block under the symmetric scheme.
double own_block_flops(NcclCommunicator& comm, cudaStream_t stream, bool empty_rank1) {
  const std::int64_t G = 41, d = 12;
  const auto rows = split_rows(G, comm.size(), empty_rank1);
  const std::int64_t n = rows[static_cast<std::size_t>(comm.rank())];
  DeviceMatrix za = upload(seeded_rows(5, 0, 0, n, d), n, d, DeviceDType::kFloat32, stream),
               zb = upload(seeded_rows(5, 1, 0, n, d), n, d, DeviceDType::kFloat32, stream);
  cuda::DeviceCallOptions options;
  options.device.tile_rows = 10;
  options.device.tile_cols = 28;
  return cuda::DeviceSimCLRLoss(0.1, Reduction::kSum)
      .forward(za.view(), zb.view(), stream, nullptr, options)
      .flops;
}

double sum_over_ranks(double mine) {
  double total = 0;
  MPI_Allreduce(&mine, &total, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  return total;
}

TEST_F(NcclTest, LossMatchesTheWholeBatchOnTheCpuWithUnevenRanks) {
  for (Reduction r : {Reduction::kSum, Reduction::kSumOverBatchSize, Reduction::kNone})
    check_distributed(*comm_, stream_, r, false);
}

TEST_F(NcclTest, LossMatchesTheWholeBatchWithARankOfZeroRows) {
  check_distributed(*comm_, stream_, Reduction::kSumOverBatchSize, true);
}

TEST_F(NcclTest, TheBalancedScheduleMatchesTheWholeBatchWithUnevenAndEmptyRanks) {
  for (bool empty : {false, true})
    for (Reduction r : {Reduction::kSum, Reduction::kSumOverBatchSize, Reduction::kNone})
      check_distributed(*comm_, stream_, r, empty, Schedule::kBalanced);
}

// Over all ranks, the balanced forward computes each rank's diagonal block (as that rank alone
// would, symmetric) and every off-diagonal pair of blocks exactly once: sum_{r<s} 2n_r x 2n_s
// logits. own_rows computes every rank's whole [2n_r, 2G] row block.
TEST_F(NcclTest, TheBalancedScheduleComputesEachPairOfRankBlocksOnce) {
  const std::int64_t G = 41, d = 12;
  for (bool empty : {false, true}) {
    const auto rows = split_rows(G, comm_->size(), empty);
    double pairs = 0, own_rows = 0;
    for (std::size_t r = 0; r < rows.size(); ++r) {
      own_rows += 2.0 * static_cast<double>(2 * rows[r] * 2 * G * d);
      for (std::size_t s = r + 1; s < rows.size(); ++s)
        pairs += static_cast<double>(2 * rows[r]) * static_cast<double>(2 * rows[s]);
    }
    const double diagonal = sum_over_ranks(own_block_flops(*comm_, stream_, empty));
    const double balanced = sum_over_ranks(
        check_distributed(*comm_, stream_, Reduction::kSum, empty, Schedule::kBalanced));
    const double unbalanced = sum_over_ranks(
        check_distributed(*comm_, stream_, Reduction::kSum, empty, Schedule::kOwnRows));
    EXPECT_EQ(balanced, diagonal + 2.0 * pairs * static_cast<double>(d)) << "empty " << empty;
    // A rank holding the whole batch (one rank, or the others empty) is symmetric under either
    // schedule.
    const bool whole = std::find(rows.begin(), rows.end(), G) != rows.end();
    EXPECT_EQ(unbalanced, whole ? diagonal : own_rows) << "empty " << empty;
  }
}

// Without the fixed shift (2 / temperature >= 80 in float32) balanced falls back to own_rows, with
// the same results.
TEST_F(NcclTest, TheBalancedScheduleFallsBackToOwnRowsWithoutTheFixedShift) {
  const double fallback =
      check_distributed(*comm_, stream_, Reduction::kSum, false, Schedule::kBalanced, 0.02);
  const double own =
      check_distributed(*comm_, stream_, Reduction::kSum, false, Schedule::kOwnRows, 0.02);
  EXPECT_EQ(fallback, own);
}

#ifdef SIMCLR_CUDA_EMULATION
// With workspaces from the queries, a balanced step allocates nothing and never synchronises the
// host (the reduce-scatter is grouped ncclReduce calls, no padded staging), and gives own_rows's
// gradients; also with the forward's workspace split (DeviceCallOptions::scratch), the scratch
// poisoned and freed before the backward.
TEST_F(NcclTest, TheBalancedScheduleWithWorkspacesAllocatesNothingAndMatchesOwnRows) {
  const std::int64_t G = 41, d = 12;
  const auto rows = split_rows(G, comm_->size(), false);
  const std::int64_t n = rows[static_cast<std::size_t>(comm_->rank())];
  const std::int64_t begin =
      std::accumulate(rows.begin(), rows.begin() + comm_->rank(), std::int64_t{0});
  const auto a = seeded_rows(17, 0, begin, n, d), b = seeded_rows(17, 1, begin, n, d);
  DeviceMatrix za = upload(a, n, d, DeviceDType::kFloat32, stream_),
               zb = upload(b, n, d, DeviceDType::kFloat32, stream_);
  std::vector<std::vector<double>> grads;
  const std::pair<Schedule, bool> runs[] = {
      {Schedule::kOwnRows, false}, {Schedule::kBalanced, false}, {Schedule::kBalanced, true}};
  for (const auto& [schedule, split] : runs) {
    cuda::DeviceCallOptions options;
    options.communicator = comm_.get();
    options.check = cuda::DeviceCheckMode::kAsync;
    options.device.tile_rows = 10;
    options.device.tile_cols = 28;
    options.device.schedule = schedule;
    const cuda::DeviceProblem problem{n, G, d, DeviceDType::kFloat32, true};
    const std::size_t fbytes = cuda::forward_workspace_bytes(problem, options);
    const std::size_t bbytes = cuda::backward_workspace_bytes(problem, options.device);
    const std::size_t saved = split ? cuda::forward_saved_bytes(problem, options) : fbytes;
    DeviceArray fws(saved, stream_), bws(bbytes, stream_), sws(fbytes - saved + 1, stream_);
    options.workspace = {fws.data(), saved};
    if (split) options.scratch = {sws.data(), fbytes - saved};
    cuda::DeviceBackwardOptions back;
    back.check = cuda::DeviceCheckMode::kAsync;
    back.workspace = {bws.data(), bbytes};
    DeviceMatrix ga = zeros(n, d, DeviceDType::kFloat32, stream_),
                 gb = zeros(n, d, DeviceDType::kFloat32, stream_);
    cuda::DeviceSimCLRLoss loss(0.1, Reduction::kSum);
    (void)loss.forward(za.view(), zb.view(), stream_, nullptr, options);  // the cuBLAS handle
    cuda::emu::reset_call_counts();
    auto out = loss.forward(za.view(), zb.view(), stream_, nullptr, options);
    if (split) {  // the backward must not read the scratch
      SIMCLR_CHECK_CUDA(cudaMemsetAsync(sws.data(), 0xFF, sws.bytes(), stream_));
      sws = DeviceArray();
    }
    loss.backward(out, 1.f, ga.mutable_view(), gb.mutable_view(), stream_, back);
    const cuda::emu::CallCounts counts = cuda::emu::call_counts();
    EXPECT_EQ(counts.allocations, 0) << to_string(schedule) << (split ? " split" : "");
    EXPECT_EQ(counts.host_syncs, 0) << to_string(schedule) << (split ? " split" : "");
    grads.push_back(download(ga, stream_));
    const auto gbv = download(gb, stream_);
    grads.back().insert(grads.back().end(), gbv.begin(), gbv.end());
  }
  if (n > 0) {
    EXPECT_LE(rel_err(grads[1], grads[0]), kFloat32Tol);
    EXPECT_LE(rel_err(grads[2], grads[0]), kFloat32Tol) << "balanced, split workspace";
  }
}
#endif

// Two ranks of rows[0] and rows[1] rows (d = 8, temperature 0.1, sum) on the balanced schedule with
// `device` options, against the whole batch on the CPU: each rank's gradient and the objective
// summed over ranks.
void check_balanced_two_ranks(NcclCommunicator& comm, cudaStream_t stream,
                              const std::vector<std::int64_t>& rows, cuda::DeviceOptions device) {
  const std::int64_t d = 8, G = rows[0] + rows[1];
  const int rank = comm.rank();
  const std::int64_t n = rows[static_cast<std::size_t>(rank)], begin = rank == 0 ? 0 : rows[0];
  const auto all_a = rounded(seeded_rows(23, 0, 0, G, d), DeviceDType::kFloat32);
  const auto all_b = rounded(seeded_rows(23, 1, 0, G, d), DeviceDType::kFloat32);
  RowMatrix<double> ma = Eigen::Map<const RowMatrix<double>>(all_a.data(), G, d);
  RowMatrix<double> mb = Eigen::Map<const RowMatrix<double>>(all_b.data(), G, d);
  auto [ref, grads] = SimCLRLoss(0.1, Reduction::kSum).value_and_gradient<double>(ma, mb);
  const std::vector<double> a(all_a.begin() + begin * d, all_a.begin() + (begin + n) * d);
  const std::vector<double> b(all_b.begin() + begin * d, all_b.begin() + (begin + n) * d);
  DeviceMatrix za = upload(a, n, d, DeviceDType::kFloat32, stream),
               zb = upload(b, n, d, DeviceDType::kFloat32, stream);
  DeviceMatrix ga = zeros(n, d, DeviceDType::kFloat32, stream),
               gb = zeros(n, d, DeviceDType::kFloat32, stream);
  cuda::DeviceSimCLRLoss loss(0.1, Reduction::kSum);
  cuda::DeviceCallOptions options;
  options.communicator = &comm;
  options.device = device;
  options.device.schedule = Schedule::kBalanced;
  auto out = loss.forward(za.view(), zb.view(), stream, nullptr, options);
  loss.backward(out, 1.f, ga.mutable_view(), gb.mutable_view(), stream);
  const std::vector<double> rga(grads.grad_a.data() + begin * d,
                                grads.grad_a.data() + (begin + n) * d);
  const std::vector<double> rgb(grads.grad_b.data() + begin * d,
                                grads.grad_b.data() + (begin + n) * d);
  EXPECT_LE(rel_err(download(ga, stream), rga), kFloat32Tol);
  EXPECT_LE(rel_err(download(gb, stream), rgb), kFloat32Tol);
  const float mine = copy_to_host_f32(out.objective, 1, stream)[0];
  float total = 0;
  MPI_Allreduce(&mine, &total, 1, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
  EXPECT_NEAR(total, ref.objective, kFloat32Tol * std::abs(ref.objective));
}

// The balanced schedule with the default tiles under a workspace budget: each rank's diagonal block
// [2n, 2n] is walked with the plan of its [2n, 2G] row block, whose scratch it shares. With 350 and
// 650 rows and a 4 MB budget the row block's tiles shrink to 700 x 500 while a plan of the diagonal
// block alone would keep 700 x 700, more than the scratch holds (the engine checks every scratch
// against its plan).
TEST_F(NcclTest, TheBalancedScheduleUnderAWorkspaceBudgetStaysInsideItsScratch) {
  if (comm_->size() != 2) GTEST_SKIP() << "needs 2 ranks";
  cuda::DeviceOptions device;
  device.workspace_bytes = 4000000;
  check_balanced_two_ranks(*comm_, stream_, {350, 650}, device);
}

// The pair tiles of the balanced schedule go through the fused pass (kernels.cuh), which merges
// rows over blocks of 1024 columns and columns over chunks of 128 rows. With 150 and 520 pairs,
// rank 0's pair block is [150, 1040]: in 300 x 1030 tiles, 2 chunks (the last of 22 rows), 2
// column blocks (the last of 6 columns), and a 10-column tile at the edge; rank 1's is [1040, 150].
TEST_F(NcclTest, TheBalancedPairTilesAcrossTheFusedPassesBlocksAndChunks) {
  if (comm_->size() != 2) GTEST_SKIP() << "needs 2 ranks";
  cuda::DeviceOptions device;
  device.tile_rows = 300;
  device.tile_cols = 1030;
  check_balanced_two_ranks(*comm_, stream_, {150, 520}, device);
}

TEST_F(NcclTest, ASchedulePassedOnOneRankOnlyIsAValueErrorOnEveryRank) {
  if (comm_->size() < 2) GTEST_SKIP() << "needs 2 ranks";
  const std::int64_t n = 3, d = 4;
  DeviceMatrix za = upload(seeded_rows(2, 0, 0, n, d), n, d, DeviceDType::kFloat32, stream_),
               zb = upload(seeded_rows(2, 1, 0, n, d), n, d, DeviceDType::kFloat32, stream_);
  cuda::DeviceCallOptions options;
  options.communicator = comm_.get();
  options.device.schedule = comm_->rank() == 1 ? Schedule::kBalanced : Schedule::kOwnRows;
  try {
    (void)cuda::DeviceSimCLRLoss(0.1, Reduction::kSum)
        .forward(za.view(), zb.view(), stream_, nullptr, options);
    ADD_FAILURE() << "no error";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("schedule differs between ranks"), std::string::npos)
        << e.what();
  }
}

TEST_F(NcclTest, BadInputOnOneRankRaisesTheSameErrorOnEveryRank) {
  const int size = comm_->size();
  const std::int64_t n = 4, d = 5;
  auto a = seeded_rows(2, 0, 0, n, d);
  if (comm_->rank() == size - 1) a[7] = std::nan("");
  DeviceMatrix za = upload(a, n, d, DeviceDType::kFloat32, stream_);
  cuda::DeviceSimCLRLoss loss(0.1, Reduction::kSum);
  cuda::DeviceCallOptions options;
  options.communicator = comm_.get();
  std::string what;
  try {
    loss.forward(za.view(), za.view(), stream_, nullptr, options);
  } catch (const ValueError& e) {
    what = e.what();
  }
  EXPECT_EQ(what, "za has NaN at row 1, column 2 (rank " + std::to_string(size - 1) + ")");
  // The distribution rule holds on every rank too.
  cuda::DeviceSimCLRLoss auto_loss(0.1);
  DeviceMatrix zb = upload(seeded_rows(2, 1, 0, n, d), n, d, DeviceDType::kFloat32, stream_);
  EXPECT_THROW(auto_loss.forward(zb.view(), zb.view(), stream_, nullptr, options), ValueError);
  comm_->barrier();
}

// The MPI bootstrap takes MpiCommunicator's options: with a timeout, a rank that skips a host-side
// collective makes the others raise CommError naming it within the timeout, instead of a hang.
TEST(NcclOptions, TheBootstrapCommunicatorTakesTheTimeout) {
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const std::chrono::milliseconds timeout{1000};
  {
    NcclCommunicator comm(MPI_COMM_WORLD, nullptr, MpiCommunicatorOptions{timeout});
    EXPECT_EQ(comm.options().timeout, timeout);
    if (size > 1 && rank != size - 1) {
      std::string what = "no exception";
      try {
        comm.barrier();
      } catch (const CommError& e) {
        what = e.what();
      }
      EXPECT_NE(what.find("mpi: barrier timed out on rank " + std::to_string(rank)),
                std::string::npos)
          << what;
      EXPECT_NE(what.find("(timeout 1000 ms)"), std::string::npos) << what;
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

#ifdef SIMCLR_CUDA_EMULATION
// Device memory running out on one rank during validation (the finiteness check's allocation):
// every rank raises the same DeviceError naming that rank, and the ranks stay in step.
TEST_F(NcclTest, AnAllocationFailureOnOneRankRaisesTheSameDeviceErrorOnEveryRank) {
  const int size = comm_->size(), failing = size - 1;
  const std::int64_t n = 4, d = 5;
  DeviceMatrix za = upload(seeded_rows(5, 0, 0, n, d), n, d, DeviceDType::kFloat32, stream_);
  cuda::DeviceSimCLRLoss loss(0.1, Reduction::kSum);
  cuda::DeviceCallOptions options;
  options.communicator = comm_.get();
  if (comm_->rank() == failing) cuda::emu::fail_next_allocations(1);
  std::string what = "no exception";
  try {
    loss.forward(za.view(), za.view(), stream_, nullptr, options);
  } catch (const DeviceError& e) {
    what = e.what();
  } catch (const std::exception& e) {
    what = std::string("wrong type: ") + e.what();
  }
  cuda::emu::fail_next_allocations(0);
  (void)cudaGetLastError();
  EXPECT_EQ(what.rfind("cudaMallocAsync(&ptr, ", 0), 0u) << what;
  EXPECT_NE(what.find("cudaErrorMemoryAllocation"), std::string::npos) << what;
  EXPECT_NE(what.find("(rank " + std::to_string(failing) + ")"), std::string::npos) << what;
  // The same message everywhere.
  char buf[512] = {0};
  std::strncpy(buf, what.c_str(), sizeof(buf) - 1);
  std::vector<char> all(sizeof(buf) * static_cast<std::size_t>(size));
  MPI_Allgather(buf, sizeof(buf), MPI_CHAR, all.data(), sizeof(buf), MPI_CHAR, MPI_COMM_WORLD);
  for (int r = 0; r < size; ++r) EXPECT_STREQ(all.data() + r * sizeof(buf), buf) << "rank " << r;
  comm_->barrier();
}
#endif

// ---- NCCL without MPI: from an ncclUniqueId, or a borrowed ncclComm_t ----

// The id is shared here over MPI, standing in for a framework's store (e.g. torch.distributed's).
ncclUniqueId shared_id() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  ncclUniqueId id;
  std::memset(&id, 0, sizeof(id));
  if (rank == 0) {
    EXPECT_EQ(ncclGetUniqueId(&id), ncclSuccess);
  }
  MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, MPI_COMM_WORLD);
  return id;
}

TEST(NcclWithoutMpi, FromAUniqueIdTheLossMatchesTheWholeBatchWithHostCollectivesOverNccl) {
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  cudaStream_t stream = nullptr;
  SIMCLR_CHECK_CUDA(cudaStreamCreate(&stream));
  {
    NcclCommunicator comm(shared_id(), rank, size, stream);
    EXPECT_EQ(comm.rank(), rank);
    EXPECT_EQ(comm.size(), size);
    EXPECT_TRUE(comm.owns_comm());
    // The agreement step runs through NCCL, not MPI.
    EXPECT_EQ(comm.host().backend(), "nccl-host");
    std::vector<std::size_t> bytes(static_cast<std::size_t>(size));
    for (int r = 0; r < size; ++r) bytes[static_cast<std::size_t>(r)] = static_cast<std::size_t>(r);
    std::vector<char> mine(static_cast<std::size_t>(rank), static_cast<char>('a' + rank));
    std::vector<char> all(static_cast<std::size_t>(size * (size - 1) / 2));
    comm.host().all_gather_v(mine.data(), mine.size(), all.data(), bytes);
    std::size_t at = 0;
    for (int r = 0; r < size; ++r)
      for (int k = 0; k < r; ++k) EXPECT_EQ(all[at++], static_cast<char>('a' + r));
    for (Reduction r : {Reduction::kSumOverBatchSize, Reduction::kNone})
      check_distributed(comm, stream, r, size > 1);
    comm.barrier();
  }
  SIMCLR_CHECK_CUDA(cudaStreamDestroy(stream));
}

TEST(NcclWithoutMpi, ABorrowedCommIsUsedButNeverDestroyed) {
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  cudaStream_t stream = nullptr;
  SIMCLR_CHECK_CUDA(cudaStreamCreate(&stream));
  ncclComm_t raw = nullptr;
  ASSERT_EQ(ncclCommInitRank(&raw, size, shared_id(), rank), ncclSuccess);
#ifdef SIMCLR_CUDA_EMULATION
  const int aborts = cuda::emu::nccl_aborts();
#endif
  {
    NcclCommunicator comm(raw, stream);
    EXPECT_FALSE(comm.owns_comm());
    EXPECT_EQ(comm.rank(), rank);
    EXPECT_EQ(comm.size(), size);
    check_distributed(comm, stream, Reduction::kSum, false);
  }
  // Still alive: NCCL answers for it, and the caller destroys it.
  int count = 0;
  EXPECT_EQ(ncclCommCount(raw, &count), ncclSuccess);
  EXPECT_EQ(count, size);
#ifdef SIMCLR_CUDA_EMULATION
  EXPECT_EQ(cuda::emu::nccl_aborts(), aborts);
#endif
  EXPECT_EQ(ncclCommDestroy(raw), ncclSuccess);
  SIMCLR_CHECK_CUDA(cudaStreamDestroy(stream));
}

#ifdef SIMCLR_CUDA_EMULATION
// A borrowed non-blocking communicator answers ncclInProgress: a collective returns only once NCCL
// reports the work enqueued (its state polled to ncclSuccess), never half-ready.
TEST(NcclWithoutMpi, ANonBlockingCommIsPolledUntilItsWorkIsEnqueued) {
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  cudaStream_t stream = nullptr;
  SIMCLR_CHECK_CUDA(cudaStreamCreate(&stream));
  ncclComm_t raw = nullptr;
  ASSERT_EQ(ncclCommInitRank(&raw, size, shared_id(), rank), ncclSuccess);
  {
    NcclCommunicator comm(raw, stream);
    DeviceArray send(4, stream), recv(4 * static_cast<std::size_t>(size), stream);
    cuda::emu::nccl_set_in_progress(raw, 3);
    comm.all_gather(send.data(), 4, recv.data());
    EXPECT_EQ(cuda::emu::nccl_pending_polls(raw), 0);
  }
  EXPECT_EQ(ncclCommDestroy(raw), ncclSuccess);
  SIMCLR_CHECK_CUDA(cudaStreamDestroy(stream));
}

// The emulation can give a communicator an asynchronous error on demand (emulation.hpp).
TEST(NcclWithoutMpi, AnAsynchronousErrorFailsTheNextCollectiveAndTheDestructorAborts) {
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const int aborts = cuda::emu::nccl_aborts();
  {
    NcclCommunicator comm(shared_id(), rank, size);
    cuda::emu::nccl_set_async_error(comm.nccl_comm(), ncclRemoteError);
    try {
      comm.all_gather(nullptr, 0, nullptr);
      ADD_FAILURE() << "expected CommError";
    } catch (const CommError& e) {
      EXPECT_NE(std::string(e.what()).find("asynchronous error"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(cuda::emu::nccl_aborts(), aborts + 1);
  {
    // Without a failed collective the destructor still looks: an error raised after the last call.
    NcclCommunicator comm(shared_id(), rank, size);
    cuda::emu::nccl_set_async_error(comm.nccl_comm(), ncclRemoteError);
  }
  EXPECT_EQ(cuda::emu::nccl_aborts(), aborts + 2);
  {
    NcclCommunicator comm(shared_id(), rank, size);  // healthy: destroyed, not aborted
  }
  EXPECT_EQ(cuda::emu::nccl_aborts(), aborts + 2);
}
#endif

}  // namespace
}  // namespace simclr::gputest

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  // One GPU per rank of a node: the ranks sharing this node pick devices by their rank on the node
  // (not the global rank, which exceeds the device count on a second node).
  MPI_Comm node = MPI_COMM_NULL;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node);
  int local_rank = 0, local_size = 1;
  MPI_Comm_rank(node, &local_rank);
  MPI_Comm_size(node, &local_size);
  MPI_Comm_free(&node);
  // Every rank must take the same decision: 0 when some node has fewer devices than its ranks.
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) count = 0;
  const int enough = count >= local_size ? 1 : 0;
  int all_enough = 0, min_count = 0;
  MPI_Allreduce(&enough, &all_enough, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(&count, &min_count, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (all_enough == 0) {
    // One line, from rank 0; ctest's SKIP_REGULAR_EXPRESSION turns it into "Skipped".
    std::string reason;
    if (min_count == 0) {
      reason = simclr::gputest::no_device_reason();
      if (reason.empty()) reason = "no CUDA device visible (on some rank)";
    } else {
      reason = "fewer CUDA devices than ranks: " + std::to_string(min_count) + " for " +
               std::to_string(size) + " ranks (NCCL needs one GPU per rank)";
    }
    if (rank == 0) std::printf("simclr_nccl_tests: skipped: %s\n", reason.c_str());
    MPI_Finalize();
    return 0;
  }
  SIMCLR_CHECK_CUDA(cudaSetDevice(local_rank));
  if (rank != 0) {
    // Only rank 0 prints gtest's report.
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int failed = RUN_ALL_TESTS();
  int any_failed = 0;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return any_failed;
}

// NcclCommunicator on one GPU without MPI: built whenever simclr_nccl is (the device machine has no
// MPI headers, so tests/gpu/test_nccl.cpp is not built there). The process makes its own
// ncclUniqueId, as a framework's store would hand it out; the agreement step's host collectives then
// run over NCCL ("nccl-host"). The device loss through that communicator must equal the CPU path on
// the whole batch and the same device loss without a communicator. On the emulation (NCCL's calls
// over MPI) main initialises MPI for the emulated NCCL alone; the test itself never calls MPI.

#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <vector>

#include "gpu_test_util.hpp"
#include "simclr/cuda/device_loss.hpp"
#include "simclr/loss.hpp"
#include "simclr/nccl/nccl_communicator.hpp"

#ifdef SIMCLR_CUDA_EMULATION
#include <mpi.h>
#endif

namespace simclr::gputest {
namespace {

constexpr double kFloat32Tol = 1e-5;  // as test_device_loss.cpp

struct Step {
  std::vector<double> per_example, grad_a, grad_b;
  float objective = 0;
};

Step device_step(cudaStream_t stream, NcclCommunicator* comm, Reduction reduction,
                 const std::vector<double>& a, const std::vector<double>& b, std::int64_t n,
                 std::int64_t d) {
  DeviceMatrix za = upload(a, n, d, DeviceDType::kFloat32, stream),
               zb = upload(b, n, d, DeviceDType::kFloat32, stream);
  DeviceMatrix ga = zeros(n, d, DeviceDType::kFloat32, stream),
               gb = zeros(n, d, DeviceDType::kFloat32, stream);
  cuda::DeviceSimCLRLoss loss(0.1, reduction);
  cuda::DeviceCallOptions options;
  options.communicator = comm;
  if (comm != nullptr) options.global_batch_size = GlobalBatchSize::infer();
  options.device.tile_rows = 10;
  options.device.tile_cols = 28;
  auto out = loss.forward(za.view(), zb.view(), stream, nullptr, options);
  loss.backward(out, 1.f, ga.mutable_view(), gb.mutable_view(), stream);
  Step s;
  s.per_example = download(out.per_example.data(), 1, n, DeviceDType::kFloat32, stream);
  s.objective = copy_to_host_f32(out.objective, 1, stream)[0];
  s.grad_a = download(ga, stream);
  s.grad_b = download(gb, stream);
  return s;
}

TEST(NcclOneRank, FromItsOwnUniqueIdTheLossIsTheWholeBatchsAndTheLocalCallsOwn) {
  cudaStream_t stream = nullptr;
  SIMCLR_CHECK_CUDA(cudaStreamCreate(&stream));
  ncclUniqueId id;
  ASSERT_EQ(ncclGetUniqueId(&id), ncclSuccess);
  {
    NcclCommunicator comm(id, 0, 1, stream);
    EXPECT_EQ(comm.rank(), 0);
    EXPECT_EQ(comm.size(), 1);
    EXPECT_TRUE(comm.owns_comm());
    EXPECT_EQ(comm.host().backend(), "nccl-host");
    // The host collectives alone: one rank's bytes come back as they went.
    const std::vector<char> mine = {'s', 'i', 'm'};
    std::vector<char> all(mine.size());
    comm.host().all_gather_v(mine.data(), mine.size(), all.data(), {mine.size()});
    EXPECT_EQ(all, mine);

    const std::int64_t n = 23, d = 12;
    const auto a = rounded(seeded_rows(7, 0, 0, n, d), DeviceDType::kFloat32);
    const auto b = rounded(seeded_rows(7, 1, 0, n, d), DeviceDType::kFloat32);
    RowMatrix<double> ma = Eigen::Map<const RowMatrix<double>>(a.data(), n, d);
    RowMatrix<double> mb = Eigen::Map<const RowMatrix<double>>(b.data(), n, d);
    for (Reduction r : {Reduction::kSumOverBatchSize, Reduction::kSum, Reduction::kNone}) {
      SCOPED_TRACE(to_string(r));
      auto [ref, grads] = SimCLRLoss(0.1, r).value_and_gradient<double>(ma, mb);
      const Step over = device_step(stream, &comm, r, a, b, n, d);
      const Step local = device_step(stream, nullptr, r, a, b, n, d);
      EXPECT_NEAR(over.objective, ref.objective, kFloat32Tol * std::abs(ref.objective));
      EXPECT_LE(rel_err(over.per_example, ref.per_example), kFloat32Tol);
      EXPECT_LE(rel_err(over.grad_a, std::vector<double>(grads.grad_a.data(),
                                                         grads.grad_a.data() + n * d)),
                kFloat32Tol);
      EXPECT_LE(rel_err(over.grad_b, std::vector<double>(grads.grad_b.data(),
                                                         grads.grad_b.data() + n * d)),
                kFloat32Tol);
      EXPECT_EQ(over.per_example, local.per_example);
      EXPECT_EQ(over.grad_a, local.grad_a);
      EXPECT_EQ(over.grad_b, local.grad_b);
    }
    comm.barrier();
  }
  SIMCLR_CHECK_CUDA(cudaStreamDestroy(stream));
}

}  // namespace
}  // namespace simclr::gputest

int main(int argc, char** argv) {
#ifdef SIMCLR_CUDA_EMULATION
  MPI_Init(&argc, &argv);
#endif
  ::testing::InitGoogleTest(&argc, argv);
  int count = 0;
  int failed = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::string reason = simclr::gputest::no_device_reason();
    std::printf("simclr_nccl_one_rank_tests: skipped: %s\n",
                reason.empty() ? "no CUDA device visible" : reason.c_str());
  } else {
    failed = RUN_ALL_TESTS();
  }
#ifdef SIMCLR_CUDA_EMULATION
  MPI_Finalize();
#endif
  return failed;
}

// The asynchronous device contract (docs/gpu.md, "Asynchronous calls and workspaces"), on the CPU
// emulation, whose runtime counts host synchronisations, allocations and cuBLAS handles made: an
// asynchronous call with a caller workspace synchronises nothing and allocates nothing, gives the
// CPU path's results, records bad input in the device status array, and runs its backward on
// another stream ordered by an event. Emulation only (the counters are the emulation's).

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include <cublas_v2.h>

#include "emulation.hpp"
#include "gpu_test_util.hpp"
#include "simclr/cuda/device_loss.hpp"
#include "simclr/loss.hpp"

namespace simclr::gputest {
namespace {

using cuda::DeviceCheckMode;
using cuda::DeviceSimCLRLoss;
namespace emu = cuda::emu;

// The bounds of tests/gpu/test_device_loss.cpp: float32 1e-5; 16-bit ones from the unit roundoff.
double loss_tol(DeviceDType dtype, double temperature, double magnitude) {
  if (dtype == DeviceDType::kFloat32) return 1e-5 * magnitude;
  const double u = dtype == DeviceDType::kBFloat16 ? 0x1p-8 : 0x1p-11;
  return 8 * u / temperature + u * magnitude;
}
double grad_tol(DeviceDType dtype, double temperature) {
  if (dtype == DeviceDType::kFloat32) return 1e-5;
  const double u = dtype == DeviceDType::kBFloat16 ? 0x1p-8 : 0x1p-11;
  return std::expm1(4 * u / temperature) + 4 * u;
}

// A device buffer for a workspace (256-byte aligned, as cudaMalloc's are).
DeviceArray workspace_of(std::size_t bytes, cudaStream_t stream) {
  return DeviceArray(bytes == 0 ? 1 : bytes, stream);
}

class DeviceAsyncTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SIMCLR_CHECK_CUDA(cudaStreamCreate(&stream_));
    SIMCLR_CHECK_CUDA(cudaStreamCreate(&other_));
  }
  void TearDown() override {
    (void)cudaStreamDestroy(stream_);
    (void)cudaStreamDestroy(other_);
  }
  cudaStream_t stream_ = nullptr, other_ = nullptr;
};

struct Case {
  std::int64_t n = 37, d = 19;
  DeviceDType dtype = DeviceDType::kFloat32;
  Reduction reduction = Reduction::kSumOverBatchSize;
  bool symmetric = true;
  bool other_stream = false;  // backward on a second stream, ordered by an event
  bool caller_outputs = false;
  // The forward's workspace split: the saved state in one buffer, the rest in a scratch that is
  // poisoned and freed right after the forward (DeviceCallOptions::scratch).
  bool split_scratch = false;
};

TEST_F(DeviceAsyncTest, AsyncCallWithWorkspaceNeitherSynchronisesNorAllocatesAndMatchesCpu) {
  std::vector<Case> cases;
  for (DeviceDType dtype : {DeviceDType::kFloat32, DeviceDType::kBFloat16, DeviceDType::kFloat16})
    for (bool symmetric : {true, false}) {
      Case c;
      c.dtype = dtype;
      c.symmetric = symmetric;
      cases.push_back(c);
    }
  Case none;
  none.reduction = Reduction::kNone;
  none.caller_outputs = true;
  none.other_stream = true;
  cases.push_back(none);
  Case streams;
  streams.other_stream = true;
  streams.dtype = DeviceDType::kBFloat16;
  cases.push_back(streams);
  for (bool symmetric : {true, false}) {
    Case split;
    split.split_scratch = true;
    split.symmetric = symmetric;
    split.other_stream = !symmetric;
    cases.push_back(split);
  }
  Case split_none = none;
  split_none.split_scratch = true;
  split_none.caller_outputs = false;
  cases.push_back(split_none);

  const double temperature = 0.1;
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message()
                 << cuda::to_string(c.dtype) << (c.symmetric ? " symmetric" : " general") << " "
                 << to_string(c.reduction) << (c.other_stream ? " two streams" : "")
                 << (c.caller_outputs ? " caller outputs" : "")
                 << (c.split_scratch ? " split scratch" : ""));
    const auto a = rounded(seeded_rows(11, 0, 0, c.n, c.d), c.dtype);
    const auto b = rounded(seeded_rows(11, 1, 0, c.n, c.d), c.dtype);
    RowMatrix<double> ma = Eigen::Map<const RowMatrix<double>>(a.data(), c.n, c.d);
    RowMatrix<double> mb = Eigen::Map<const RowMatrix<double>>(b.data(), c.n, c.d);
    auto [ref, ref_grad] =
        SimCLRLoss(temperature, c.reduction).value_and_gradient<double>(ma, mb, nullptr);

    DeviceMatrix za = upload(a, c.n, c.d, c.dtype, stream_);
    DeviceMatrix zb = upload(b, c.n, c.d, c.dtype, stream_);
    DeviceMatrix ga = zeros(c.n, c.d, c.dtype, stream_), gb = zeros(c.n, c.d, c.dtype, stream_);
    const std::size_t elem = cuda::element_size(c.dtype);
    const std::int64_t value_count = c.reduction == Reduction::kNone ? c.n : 1;
    DeviceArray values_buf(static_cast<std::size_t>(value_count) * elem, stream_);
    DeviceArray per_example_buf(static_cast<std::size_t>(c.n) * elem, stream_);
    DeviceArray objective_buf(sizeof(float), stream_);

    cuda::DeviceCallOptions options;
    options.check = DeviceCheckMode::kAsync;
    options.device.tile_rows = 16;  // 2n = 74: ragged tiles
    options.device.tile_cols = 24;
    options.device.symmetric = c.symmetric;
    if (c.caller_outputs)
      options.outputs = {values_buf.data(), per_example_buf.data(), objective_buf.as<float>()};
    const cuda::DeviceProblem problem{c.n, c.n, c.d, c.dtype, false};
    const std::size_t forward_bytes = cuda::forward_workspace_bytes(problem, options);
    const std::size_t saved_bytes = cuda::forward_saved_bytes(problem, options);
    // The saved part is U and O(n) arrays; the tile (16 x 24 floats at least) is in the rest.
    EXPECT_LE(saved_bytes + 16 * 24 * sizeof(float), forward_bytes);
    DeviceArray fws = workspace_of(c.split_scratch ? saved_bytes : forward_bytes, stream_);
    DeviceArray sws = workspace_of(c.split_scratch ? forward_bytes - saved_bytes : 0, stream_);
    DeviceArray bws =
        workspace_of(cuda::backward_workspace_bytes(problem, options.device), stream_);
    options.workspace = {fws.data(), c.split_scratch ? saved_bytes : forward_bytes};
    if (c.split_scratch) options.scratch = {sws.data(), forward_bytes - saved_bytes};
    cuda::DeviceBackwardOptions back;
    back.check = DeviceCheckMode::kAsync;
    back.workspace = {bws.data(), cuda::backward_workspace_bytes(problem, options.device)};

    DeviceSimCLRLoss loss(temperature, c.reduction);
    // This thread's cuBLAS handle exists after one call; later calls make none.
    (void)loss.forward(za.view(), zb.view(), stream_, nullptr, {});
    cudaEvent_t done = nullptr;
    SIMCLR_CHECK_CUDA(cudaEventCreate(&done));

    emu::reset_call_counts();
    auto out = loss.forward(za.view(), zb.view(), stream_, nullptr, options);
    if (c.split_scratch) {
      // The backward must not read the scratch: poison it, then free it before the backward.
      SIMCLR_CHECK_CUDA(cudaMemsetAsync(sws.data(), 0xFF, sws.bytes(), stream_));
      sws = DeviceArray();
    }
    cudaStream_t back_stream = stream_;
    if (c.other_stream) {
      SIMCLR_CHECK_CUDA(cudaEventRecord(done, stream_));
      SIMCLR_CHECK_CUDA(cudaStreamWaitEvent(other_, done, 0));
      back_stream = other_;
    }
    loss.backward(out, 1.0f, ga.mutable_view(), gb.mutable_view(), back_stream, back);
    const emu::CallCounts counts = emu::call_counts();
    EXPECT_EQ(counts.host_syncs, 0) << "an asynchronous call synchronised the host";
    EXPECT_EQ(counts.allocations, 0) << "a call with a workspace allocated device memory";
    EXPECT_EQ(counts.blas_handles_created, 0) << "a call made a cuBLAS handle";
    SIMCLR_CHECK_CUDA(cudaEventDestroy(done));
    SIMCLR_CHECK_CUDA(cudaStreamSynchronize(back_stream));

    if (c.caller_outputs) {
      EXPECT_EQ(out.values.data(), values_buf.data());
      EXPECT_EQ(out.per_example.data(), per_example_buf.data());
      EXPECT_EQ(out.objective.data(), objective_buf.data());
    } else {
      // Everything else came out of the workspace.
      const auto* lo = static_cast<const char*>(fws.data());
      const auto* p = static_cast<const char*>(out.values.data());
      EXPECT_TRUE(p >= lo && p < lo + fws.bytes());
    }
    const auto status = cuda::copy_status_to_host(out, stream_);
    for (int k = 0; k < cuda::kStatusSlots; ++k) EXPECT_EQ(status[k], cuda::kStatusClean) << k;

    double magnitude = 0;
    for (double v : ref.per_example) magnitude = std::max(magnitude, std::abs(v));
    const auto per_example = download(out.per_example.data(), 1, c.n, c.dtype, stream_);
    for (std::int64_t i = 0; i < c.n; ++i)
      EXPECT_NEAR(per_example[i], ref.per_example[i], loss_tol(c.dtype, temperature, magnitude));
    const auto values = download(out.values.data(), 1, value_count, c.dtype, stream_);
    for (std::int64_t i = 0; i < value_count; ++i)
      EXPECT_NEAR(values[i], ref.values[i], loss_tol(c.dtype, temperature, magnitude));
    const std::vector<double> want_a(ref_grad.grad_a.data(),
                                     ref_grad.grad_a.data() + ref_grad.grad_a.size());
    const std::vector<double> want_b(ref_grad.grad_b.data(),
                                     ref_grad.grad_b.data() + ref_grad.grad_b.size());
    EXPECT_LE(rel_err(download(ga, stream_), want_a), grad_tol(c.dtype, temperature));
    EXPECT_LE(rel_err(download(gb, stream_), want_b), grad_tol(c.dtype, temperature));
  }
}

// Without a caller handle, each host thread gets one cuBLAS handle per device on its first call
// (cublasSetStream on a handle shared by concurrent threads would race), and none after that.
// The only test of this binary that starts a thread, so the new thread cannot take over a dead
// thread's id (and its handle).
TEST_F(DeviceAsyncTest, EachHostThreadCachesItsOwnCublasHandle) {
  const std::int64_t n = 5, d = 4;
  DeviceMatrix za = upload(seeded_rows(4, 0, 0, n, d), n, d, DeviceDType::kFloat32, stream_);
  DeviceMatrix zb = upload(seeded_rows(4, 1, 0, n, d), n, d, DeviceDType::kFloat32, stream_);
  DeviceSimCLRLoss loss(0.1, Reduction::kSum);
  auto call = [&] { (void)loss.forward(za.view(), zb.view(), stream_, nullptr, {}); };
  call();
  emu::reset_call_counts();
  call();
  EXPECT_EQ(emu::call_counts().blas_handles_created, 0);
  std::thread other([&] {
    call();
    call();
  });
  other.join();
  EXPECT_EQ(emu::call_counts().blas_handles_created, 1);
}

// A caller's cuBLAS handle keeps the stream and pointer mode it had: a forward and a backward on
// another stream borrow it and put both back.
TEST_F(DeviceAsyncTest, TheCallersCublasHandleGetsItsStreamAndPointerModeBack) {
  const std::int64_t n = 6, d = 5;
  DeviceMatrix za = upload(seeded_rows(6, 0, 0, n, d), n, d, DeviceDType::kFloat32, stream_);
  DeviceMatrix zb = upload(seeded_rows(6, 1, 0, n, d), n, d, DeviceDType::kFloat32, stream_);
  DeviceMatrix ga = zeros(n, d, DeviceDType::kFloat32, stream_),
               gb = zeros(n, d, DeviceDType::kFloat32, stream_);
  cublasHandle_t mine = nullptr;
  ASSERT_EQ(cublasCreate(&mine), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasSetStream(mine, other_), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasSetPointerMode(mine, CUBLAS_POINTER_MODE_DEVICE), CUBLAS_STATUS_SUCCESS);
  DeviceSimCLRLoss loss(0.1, Reduction::kSum);
  cuda::DeviceCallOptions options;
  options.blas_handle = mine;
  auto out = loss.forward(za.view(), zb.view(), stream_, nullptr, options);
  cuda::DeviceBackwardOptions back;
  back.blas_handle = mine;
  loss.backward(out, 1.f, ga.mutable_view(), gb.mutable_view(), stream_, back);
  cudaStream_t stream = nullptr;
  cublasPointerMode_t mode = CUBLAS_POINTER_MODE_HOST;
  EXPECT_EQ(cublasGetStream(mine, &stream), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(cublasGetPointerMode(mine, &mode), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(stream, other_);
  EXPECT_EQ(mode, CUBLAS_POINTER_MODE_DEVICE);
  SIMCLR_CHECK_CUDA(cudaStreamSynchronize(stream_));
  EXPECT_EQ(cublasDestroy(mine), CUBLAS_STATUS_SUCCESS);
}

TEST_F(DeviceAsyncTest, AsyncModeRecordsBadInputInTheStatusArrayAndCheckedModeThrows) {
  const std::int64_t n = 6, d = 7;
  auto a = seeded_rows(3, 0, 0, n, d);
  const auto b = seeded_rows(3, 1, 0, n, d);
  a[static_cast<std::size_t>(3 * d + 5)] = std::nan("");
  a[static_cast<std::size_t>(4 * d + 1)] = INFINITY;  // later: the first one is reported
  DeviceMatrix za = upload(a, n, d, DeviceDType::kFloat32, stream_);
  DeviceMatrix zb = upload(b, n, d, DeviceDType::kFloat32, stream_);
  DeviceSimCLRLoss loss(0.1, Reduction::kNone);

  cuda::DeviceCallOptions options;
  options.check = DeviceCheckMode::kAsync;
  emu::reset_call_counts();
  auto out = loss.forward(za.view(), zb.view(), stream_, nullptr, options);
  EXPECT_EQ(emu::call_counts().host_syncs, 0);
  auto status = cuda::copy_status_to_host(out, stream_);
  EXPECT_EQ(status[cuda::kStatusZa], static_cast<unsigned long long>(3 * d + 5));
  EXPECT_EQ(status[cuda::kStatusZb], cuda::kStatusClean);
  EXPECT_EQ(status[cuda::kStatusWeight], cuda::kStatusClean);

  // A device per-example upstream with an Inf at index 2: slot kStatusUpstream, no sync.
  std::vector<float> up(static_cast<std::size_t>(n), 1.f);
  up[2] = INFINITY;
  DeviceArray up_dev(up.size() * sizeof(float), stream_);
  SIMCLR_CHECK_CUDA(
      cudaMemcpyAsync(up_dev.data(), up.data(), up_dev.bytes(), cudaMemcpyHostToDevice, stream_));
  DeviceMatrix ga = zeros(n, d, DeviceDType::kFloat32, stream_),
               gb = zeros(n, d, DeviceDType::kFloat32, stream_);
  cuda::DeviceBackwardOptions back;
  back.check = DeviceCheckMode::kAsync;
  const cuda::FloatVectorView upstream{up_dev.as<float>(), n, cuda::MemorySpace::kDevice};
  emu::reset_call_counts();
  loss.backward(out, upstream, ga.mutable_view(), gb.mutable_view(), stream_, back);
  EXPECT_EQ(emu::call_counts().host_syncs, 0);
  status = cuda::copy_status_to_host(out, stream_);
  EXPECT_EQ(status[cuda::kStatusUpstream], 2u);

  // The checked mode (the default) raises the agreed error instead.
  try {
    (void)loss.forward(za.view(), zb.view(), stream_);
    FAIL() << "expected ValueError";
  } catch (const ValueError& e) {
    EXPECT_EQ(std::string(e.what()), "za has NaN at row 3, column 5");
  }
  const auto good = seeded_rows(3, 0, 0, n, d);
  DeviceMatrix ok = upload(good, n, d, DeviceDType::kFloat32, stream_);
  auto clean = loss.forward(ok.view(), zb.view(), stream_);
  try {
    loss.backward(clean, upstream, ga.mutable_view(), gb.mutable_view(), stream_);
    FAIL() << "expected ValueError";
  } catch (const ValueError& e) {
    EXPECT_EQ(std::string(e.what()), "upstream gradient has Inf at index 2");
  }
}

TEST_F(DeviceAsyncTest, WorkspaceTooSmallOrMisalignedIsRefusedBeforeAnyWork) {
  const std::int64_t n = 9, d = 5;
  DeviceMatrix za = upload(seeded_rows(5, 0, 0, n, d), n, d, DeviceDType::kFloat32, stream_);
  DeviceMatrix zb = upload(seeded_rows(5, 1, 0, n, d), n, d, DeviceDType::kFloat32, stream_);
  DeviceSimCLRLoss loss(0.2);
  cuda::DeviceCallOptions options;
  options.check = DeviceCheckMode::kAsync;
  const cuda::DeviceProblem problem{n, n, d, DeviceDType::kFloat32, false};
  const std::size_t need = cuda::forward_workspace_bytes(problem, options);
  ASSERT_GT(need, 0u);
  DeviceArray ws(need, stream_);
  options.workspace = {ws.data(), need - 1};
  emu::reset_call_counts();
  try {
    (void)loss.forward(za.view(), zb.view(), stream_, nullptr, options);
    FAIL() << "expected ValueError";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("forward_workspace_bytes"), std::string::npos) << e.what();
  }
  EXPECT_EQ(emu::call_counts().allocations, 0);
  options.workspace = {static_cast<char*>(ws.data()) + 8, need - 8};
  EXPECT_THROW((void)loss.forward(za.view(), zb.view(), stream_, nullptr, options), ValueError);

  // The backward's workspace is checked the same way.
  options.workspace = {ws.data(), need};
  auto out = loss.forward(za.view(), zb.view(), stream_, nullptr, options);
  DeviceMatrix ga = zeros(n, d, DeviceDType::kFloat32, stream_),
               gb = zeros(n, d, DeviceDType::kFloat32, stream_);
  cuda::DeviceBackwardOptions back;
  const std::size_t bneed = cuda::backward_workspace_bytes(problem);
  DeviceArray bws(bneed, stream_);
  back.workspace = {bws.data(), bneed / 2};
  EXPECT_THROW(loss.backward(out, 1.f, ga.mutable_view(), gb.mutable_view(), stream_, back),
               ValueError);
}

TEST_F(DeviceAsyncTest, WorkspaceQueriesGrowWithTheProblem) {
  // The workspace holds U [2G, d]: its size grows with G and d and halves for 16-bit inputs' U.
  const cuda::DeviceProblem small{64, 64, 32, DeviceDType::kFloat32, false};
  cuda::DeviceProblem big = small;
  big.rows = big.global_rows = 128;
  EXPECT_GT(cuda::forward_workspace_bytes(big), cuda::forward_workspace_bytes(small));
  EXPECT_GE(cuda::forward_workspace_bytes(small),
            static_cast<std::size_t>(2 * 64 * 32) * sizeof(float));
  cuda::DeviceProblem dist = small;
  dist.distributed = true;
  dist.global_rows = 256;
  EXPECT_GE(cuda::forward_workspace_bytes(dist),
            static_cast<std::size_t>(2 * 256 * 32 + 2 * 64 * 32) * sizeof(float));
  EXPECT_GE(cuda::backward_workspace_bytes(small),
            static_cast<std::size_t>(2 * 64 * 32) * sizeof(float));
  cuda::DeviceProblem bad = small;
  bad.global_rows = 3;
  EXPECT_THROW((void)cuda::forward_workspace_bytes(bad), ValueError);
}

// A call without workspaces allocates from the device's current memory pool; the first such call
// on a device raises the pool's release threshold from CUDA's 0 to UINT64_MAX, once, and leaves a
// threshold the caller has set alone (docs/gpu.md, "Memory pool"). Devices 1 and 2 of the
// emulation: this binary's other tests allocate on device 0.
TEST_F(DeviceAsyncTest, CallsWithoutWorkspaceKeepThePoolsMemoryOnceAndLeaveTheCallersThreshold) {
  const std::int64_t n = 9, d = 5;
  const auto a = seeded_rows(3, 0, 0, n, d), b = seeded_rows(3, 1, 0, n, d);
  // Inputs, outputs and a workspace allocated on device 0, so only the calls allocate on 1 and 2.
  DeviceMatrix za = upload(a, n, d, DeviceDType::kFloat32, stream_);
  DeviceMatrix zb = upload(b, n, d, DeviceDType::kFloat32, stream_);
  DeviceMatrix ga = zeros(n, d, DeviceDType::kFloat32, stream_);
  DeviceMatrix gb = zeros(n, d, DeviceDType::kFloat32, stream_);
  const cuda::DeviceProblem problem{n, n, d, DeviceDType::kFloat32, false};
  cuda::DeviceCallOptions with;
  with.check = DeviceCheckMode::kAsync;
  DeviceArray fws = workspace_of(cuda::forward_workspace_bytes(problem, with), stream_);
  DeviceArray bws = workspace_of(cuda::backward_workspace_bytes(problem, with.device), stream_);
  with.workspace = {fws.data(), fws.bytes()};
  cuda::DeviceBackwardOptions back_with;
  back_with.check = DeviceCheckMode::kAsync;
  back_with.workspace = {bws.data(), bws.bytes()};
  DeviceSimCLRLoss loss(0.1, Reduction::kSum);
  auto step = [&](const cuda::DeviceCallOptions& options, const cuda::DeviceBackwardOptions& back) {
    auto out = loss.forward(za.view(), zb.view(), stream_, nullptr, options);
    loss.backward(out, 1.0f, ga.mutable_view(), gb.mutable_view(), stream_, back);
    SIMCLR_CHECK_CUDA(cudaStreamSynchronize(stream_));
  };
  auto threshold_of = [](int device) {
    cudaMemPool_t pool = nullptr;
    SIMCLR_CHECK_CUDA(cudaDeviceGetMemPool(&pool, device));
    std::uint64_t t = 1;
    SIMCLR_CHECK_CUDA(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &t));
    return t;
  };
  auto set_threshold = [](int device, std::uint64_t t) {
    cudaMemPool_t pool = nullptr;
    SIMCLR_CHECK_CUDA(cudaDeviceGetMemPool(&pool, device));
    SIMCLR_CHECK_CUDA(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &t));
  };

  SIMCLR_CHECK_CUDA(cudaSetDevice(1));
  ASSERT_EQ(threshold_of(1), 0u) << "a fresh pool starts at CUDA's default";
  emu::reset_call_counts();
  step(with, back_with);  // workspaces: nothing allocated, the pool is not touched
  EXPECT_EQ(threshold_of(1), 0u);
  EXPECT_EQ(emu::call_counts().pool_threshold_sets, 0);
  step({}, {});  // no workspace: the pool keeps its memory from now on
  EXPECT_EQ(threshold_of(1), UINT64_MAX);
  EXPECT_EQ(emu::call_counts().pool_threshold_sets, 1);
  step({}, {});
  EXPECT_EQ(emu::call_counts().pool_threshold_sets, 1) << "the threshold is set once per device";
  set_threshold(1, 0);  // the caller wants memory released after all: not overridden
  step({}, {});
  EXPECT_EQ(threshold_of(1), 0u);
  EXPECT_EQ(emu::call_counts().pool_threshold_sets, 2);

  SIMCLR_CHECK_CUDA(cudaSetDevice(2));
  set_threshold(2, std::uint64_t{64} << 20);  // a caller's own setting
  emu::reset_call_counts();
  step({}, {});
  EXPECT_EQ(threshold_of(2), std::uint64_t{64} << 20);
  EXPECT_EQ(emu::call_counts().pool_threshold_sets, 0);
  SIMCLR_CHECK_CUDA(cudaSetDevice(0));
}

}  // namespace
}  // namespace simclr::gputest

// The device loss against the CPU path (simclr::SimCLRLoss in double on host copies of the same
// inputs): values, per-example losses, objective and gradients, across tile boundaries, in float32,
// bfloat16 and float16; validation; the distributed code path on one GPU; the empty batch.
// Built twice: against the CUDA toolkit (simclr_gpu_tests, run on a GPU) and against the CPU
// emulation of the GPU path (simclr_gpu_emulated_tests, run everywhere; tests/emulation).

#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <exception>
#include <functional>
#include <mutex>
#include <numeric>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "gpu_test_util.hpp"
#include "simclr/cuda/device_loss.hpp"
#include "simclr/detail/check.hpp"
#include "simclr/loss.hpp"

#ifdef SIMCLR_CUDA_EMULATION
#include "emulation.hpp"  // fail_next_allocations: a device that runs out of memory on demand
#endif

namespace simclr::gputest {
namespace {

using cuda::DeviceSimCLRLoss;
using cuda::MemorySpace;

// float32: the CPU reference is double, so the device error is float32 rounding in the
// normalisation, the products (d-term sums), exp/log (~2 ulp) and the LSE (2G terms): a few hundred
// ulps at these sizes, i.e. <= 1e-5 relative (the bar) with a margin of ~10.
constexpr double kFloat32Tol = 1e-5;

// 16-bit inputs: both paths see the same rounded inputs, but the device stores the normalised rows
// U, the M tiles and the outputs in the input dtype (as any plain bf16/fp16 implementation does),
// with unit roundoff u (2^-8 bf16, 2^-11 fp16). |x_hat| = 1, so each logit moves by at most 2u/T;
// each direction's CE (an LSE, 1-Lipschitz in the max norm, minus the positive) by at most 4u/T,
// and l_i by 8u/T, plus u|l| for storing it. The gradient's norm-wise relative error is bounded the
// same way: P entries move by a factor <= exp(4u/T), M, U, x_hat and the output each add u.
double loss_tol(DeviceDType dtype, double temperature, double magnitude) {
  if (dtype == DeviceDType::kFloat32) return kFloat32Tol * magnitude;
  const double u = dtype == DeviceDType::kBFloat16 ? 0x1p-8 : 0x1p-11;
  return 8 * u / temperature + u * magnitude;
}
double grad_tol(DeviceDType dtype, double temperature) {
  if (dtype == DeviceDType::kFloat32) return kFloat32Tol;
  const double u = dtype == DeviceDType::kBFloat16 ? 0x1p-8 : 0x1p-11;
  return std::expm1(4 * u / temperature) + 4 * u;
}

enum class Weights { kNone, kScalarHost, kHost, kDevice };

struct Case {
  std::int64_t n = 37, d = 20;
  double temperature = 0.05;
  Reduction reduction = Reduction::kSumOverBatchSize;
  Weights weights = Weights::kNone;
  DeviceDType dtype = DeviceDType::kFloat32;
  std::int64_t tile_rows = 16, tile_cols = 24;  // 2n = 74: ragged last tiles, a 2-column tail
  std::int64_t stride_pad = 0;                  // extra elements per row of inputs and gradients
  bool symmetric = true;                        // DeviceOptions::symmetric
  std::uint64_t seed = 7;
};

class DeviceLossTest : public ::testing::Test {
 protected:
  void SetUp() override { SIMCLR_CHECK_CUDA(cudaStreamCreate(&stream_)); }
  void TearDown() override {
    if (stream_ != nullptr) {
      (void)cudaStreamSynchronize(stream_);
      (void)cudaStreamDestroy(stream_);
    }
  }

  // Runs the device forward + backward (upstream 1) and the CPU double reference; checks them.
  void check_case(const Case& c) {
    SCOPED_TRACE(::testing::Message() << "n=" << c.n << " d=" << c.d << " T=" << c.temperature
                                      << " reduction=" << to_string(c.reduction) << " dtype="
                                      << cuda::to_string(c.dtype) << " tiles=" << c.tile_rows << "x"
                                      << c.tile_cols << (c.symmetric ? " symmetric" : " general"));
    const auto a = rounded(seeded_rows(c.seed, 0, 0, c.n, c.d), c.dtype);
    const auto b = rounded(seeded_rows(c.seed, 1, 0, c.n, c.d), c.dtype);
    std::vector<float> w(static_cast<std::size_t>(c.n));
    for (std::int64_t i = 0; i < c.n; ++i)
      w[static_cast<std::size_t>(i)] = 0.25f + 0.5f * static_cast<float>(i % 4);
    const float scalar_w = 1.5f;

    // CPU reference in double.
    RowMatrix<double> ma = Eigen::Map<const RowMatrix<double>>(a.data(), c.n, c.d);
    RowMatrix<double> mb = Eigen::Map<const RowMatrix<double>>(b.data(), c.n, c.d);
    SimCLRLoss cpu(c.temperature, c.reduction);
    std::optional<SampleWeight> sw;
    if (c.weights == Weights::kScalarHost) sw = SampleWeight::scalar(scalar_w);
    if (c.weights == Weights::kHost || c.weights == Weights::kDevice)
      sw = SampleWeight::per_example(std::vector<double>(w.begin(), w.end()));
    auto [ref, ref_grad] = cpu.value_and_gradient<double>(ma, mb, sw ? &*sw : nullptr);

    // Device.
    const std::int64_t stride = c.d + c.stride_pad;
    DeviceMatrix za = upload(a, c.n, c.d, c.dtype, stream_, stride);
    DeviceMatrix zb = upload(b, c.n, c.d, c.dtype, stream_, stride);
    DeviceMatrix ga = zeros(c.n, c.d, c.dtype, stream_, stride),
                 gb = zeros(c.n, c.d, c.dtype, stream_, stride);
    DeviceArray w_dev(w.size() * sizeof(float), stream_);
    SIMCLR_CHECK_CUDA(
        cudaMemcpyAsync(w_dev.data(), w.data(), w_dev.bytes(), cudaMemcpyHostToDevice, stream_));
    cuda::DeviceSampleWeight dsw;
    if (c.weights == Weights::kScalarHost) dsw = {&scalar_w, 1, MemorySpace::kHost, {}};
    if (c.weights == Weights::kHost) dsw = {w.data(), c.n, MemorySpace::kHost, {}};
    if (c.weights == Weights::kDevice) dsw = {w_dev.as<float>(), c.n, MemorySpace::kDevice, {}};
    DeviceSimCLRLoss loss(c.temperature, c.reduction);
    cuda::DeviceCallOptions options;
    options.device.tile_rows = c.tile_rows;
    options.device.tile_cols = c.tile_cols;
    options.device.symmetric = c.symmetric;
    auto out = loss.forward(za.view(), zb.view(), stream_,
                            c.weights == Weights::kNone ? nullptr : &dsw, options);
    loss.backward(out, 1.0f, ga.mutable_view(), gb.mutable_view(), stream_);

    const auto values = download(out.values.data(), 1, static_cast<std::int64_t>(ref.values.size()),
                                 c.dtype, stream_);
    const auto per_example = download(out.per_example.data(), 1, c.n, c.dtype, stream_);
    const auto objective = copy_to_host_f32(out.objective, 1, stream_);
    ASSERT_EQ(out.reduction, ref.reduction);
    double magnitude = 0;
    for (double v : ref.per_example) magnitude = std::max(magnitude, std::abs(v));
    for (std::size_t i = 0; i < ref.per_example.size(); ++i)
      EXPECT_NEAR(per_example[i], ref.per_example[i], loss_tol(c.dtype, c.temperature, magnitude))
          << "example " << i;
    double vmag = 0;
    for (double v : ref.values) vmag = std::max(vmag, std::abs(v));
    // Reduced values are weighted means/sums of the l_i, so they inherit the l_i bound times the
    // weights' scale (max weight 1.5, times n for the sum).
    const double wscale = (c.weights == Weights::kNone ? 1.0 : 1.5) *
                          (c.reduction == Reduction::kSum ? static_cast<double>(c.n) : 1.0);
    const double vtol = c.dtype == DeviceDType::kFloat32
                            ? kFloat32Tol * std::max(vmag, 1e-30)
                            : loss_tol(c.dtype, c.temperature, magnitude) * wscale;
    for (std::size_t i = 0; i < ref.values.size(); ++i)
      EXPECT_NEAR(values[i], ref.values[i], vtol) << "value " << i;
    EXPECT_NEAR(objective[0], ref.objective,
                c.dtype == DeviceDType::kFloat32
                    ? kFloat32Tol * std::abs(ref.objective)
                    : loss_tol(c.dtype, c.temperature, magnitude) * wscale *
                          (c.reduction == Reduction::kNone ? static_cast<double>(c.n) : 1.0));
    const std::vector<double> rga(ref_grad.grad_a.data(),
                                  ref_grad.grad_a.data() + ref_grad.grad_a.size());
    const std::vector<double> rgb(ref_grad.grad_b.data(),
                                  ref_grad.grad_b.data() + ref_grad.grad_b.size());
    EXPECT_LE(rel_err(download(ga, stream_), rga), grad_tol(c.dtype, c.temperature));
    EXPECT_LE(rel_err(download(gb, stream_), rgb), grad_tol(c.dtype, c.temperature));
  }

  cudaStream_t stream_ = nullptr;
};

TEST_F(DeviceLossTest, Float32MatchesCpuAcrossTilesForEveryReductionAndWeight) {
  for (Reduction r :
       {Reduction::kAuto, Reduction::kSum, Reduction::kSumOverBatchSize, Reduction::kNone}) {
    for (Weights w : {Weights::kNone, Weights::kScalarHost, Weights::kHost, Weights::kDevice}) {
      Case c;
      c.reduction = r;
      c.weights = w;
      check_case(c);
    }
  }
}

TEST_F(DeviceLossTest, Float32TileShapesDoNotChangeTheResult) {
  for (auto [rows, cols] : std::vector<std::pair<std::int64_t, std::int64_t>>{
           {1, 1}, {5, 7}, {74, 74}, {8, 3}, {0, 0}}) {
    Case c;
    c.tile_rows = rows;
    c.tile_cols = cols;
    c.n = 19;
    check_case(c);
  }
}

// One process: forward and backward compute the tiles on and above the diagonal only (symmetric);
// the general path, which every rank of a distributed call takes, must give the same results. Tile
// sizes put the partners of some anchors in tiles below the diagonal (their positive then comes
// from the fused pass's columns), span several of its 128-row chunks, and leave ragged edges.
TEST_F(DeviceLossTest, Float32SymmetricAndGeneralPathsMatchTheCpu) {
  for (bool symmetric : {true, false}) {
    for (auto [n, rows, cols] : std::vector<std::array<std::int64_t, 3>>{{37, 16, 24},
                                                                         {37, 24, 16},
                                                                         {150, 130, 300},
                                                                         {150, 300, 130},
                                                                         {5, 1, 1},
                                                                         {9, 64, 64}}) {
      Case c;
      c.n = n;
      c.tile_rows = rows;
      c.tile_cols = cols;
      c.symmetric = symmetric;
      c.reduction = Reduction::kNone;
      check_case(c);
    }
  }
}

// The symmetric forward's off-diagonal tiles go through the fused pass (row and column statistics
// from one read of the tile), which merges rows over blocks of 1024 columns and columns over chunks
// of 128 rows. 2G = 2200 in 1030-wide tiles: the tile (0, 1030) has 9 chunks (the last of 6 rows)
// and 2 row blocks (the last of 6 columns: one float4 and a 2-column tail); the tiles (I, 2060)
// have 140 columns (a warp with 12 of its 128). Partners sit on both sides of the 1024-column
// boundary, so positives are picked by the rows and by the columns of the fused tiles.
TEST_F(DeviceLossTest, Float32FusedPassAcrossItsRowBlocksAndColumnChunks) {
  Case c;
  c.n = 1100;
  c.d = 8;
  c.tile_rows = 1030;
  c.tile_cols = 1030;
  c.reduction = Reduction::kNone;
  c.weights = Weights::kHost;
  check_case(c);
}

TEST_F(DeviceLossTest, Float32StridedInputsAndGradientsAndOddDimensions) {
  Case c;
  c.d = 13;
  c.stride_pad = 5;
  c.reduction = Reduction::kSum;
  check_case(c);
}

TEST_F(DeviceLossTest, Float32SmallTemperatureKeepsTheOnlineMaxStable) {
  Case c;
  c.temperature = 0.005;  // logits up to 200: a fixed-offset exp would underflow
  c.n = 24;
  check_case(c);
}

TEST_F(DeviceLossTest, Float32DefaultTilesOnALargerBatch) {
  Case c;
  c.n = 4500;  // 2G = 9000 crosses the default 8192-wide tiles
  c.d = 64;
  c.tile_rows = 0;
  c.tile_cols = 0;
  c.weights = Weights::kDevice;
  check_case(c);
}

TEST_F(DeviceLossTest, BFloat16WithinTheErrorOfAPlainBFloat16Implementation) {
  for (Reduction r : {Reduction::kSumOverBatchSize, Reduction::kNone}) {
    Case c;
    c.dtype = DeviceDType::kBFloat16;
    c.n = 64;
    c.d = 32;
    c.temperature = 0.2;
    c.reduction = r;
    c.weights = Weights::kHost;
    c.tile_rows = 48;
    c.tile_cols = 40;
    check_case(c);
  }
}

TEST_F(DeviceLossTest, Float16WithinTheErrorOfAPlainFloat16Implementation) {
  Case c;
  c.dtype = DeviceDType::kFloat16;
  c.n = 64;
  c.d = 32;
  c.temperature = 0.2;
  c.tile_rows = 48;
  c.tile_cols = 40;
  check_case(c);
  // Tiny pair weights (sum_over_batch_size over a large batch): M is rescaled into float16's range.
  c.n = 300;
  c.weights = Weights::kHost;
  check_case(c);
}

TEST_F(DeviceLossTest, IdenticalRowsGiveTheClosedForm) {
  const std::int64_t n = 4, d = 3;
  const std::vector<double> rows = {1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3};
  DeviceMatrix za = upload(rows, n, d, DeviceDType::kFloat32, stream_);
  DeviceSimCLRLoss loss(0.05, Reduction::kNone);
  auto out = loss.forward(za.view(), za.view(), stream_);
  const auto per_example = download(out.per_example.data(), 1, n, DeviceDType::kFloat32, stream_);
  for (double v : per_example) EXPECT_NEAR(v, 2 * std::log(2.0 * n - 1), 1e-5);
}

TEST_F(DeviceLossTest, ZeroRowStaysFiniteAndMatchesCpu) {
  std::vector<double> a = seeded_rows(3, 0, 0, 6, 5), b = seeded_rows(3, 1, 0, 6, 5);
  for (int j = 0; j < 5; ++j) a[static_cast<std::size_t>(2 * 5 + j)] = 0;
  a = rounded(a, DeviceDType::kFloat32);
  b = rounded(b, DeviceDType::kFloat32);
  DeviceMatrix za = upload(a, 6, 5, DeviceDType::kFloat32, stream_),
               zb = upload(b, 6, 5, DeviceDType::kFloat32, stream_);
  DeviceMatrix ga = zeros(6, 5, DeviceDType::kFloat32, stream_),
               gb = zeros(6, 5, DeviceDType::kFloat32, stream_);
  DeviceSimCLRLoss loss(0.1, Reduction::kSum);
  auto out = loss.forward(za.view(), zb.view(), stream_);
  loss.backward(out, 1.0f, ga.mutable_view(), gb.mutable_view(), stream_);
  SimCLRLoss cpu(0.1, Reduction::kSum);
  RowMatrix<double> ma = Eigen::Map<const RowMatrix<double>>(a.data(), 6, 5);
  RowMatrix<double> mb = Eigen::Map<const RowMatrix<double>>(b.data(), 6, 5);
  auto [ref, grads] = cpu.value_and_gradient<double>(ma, mb);
  EXPECT_NEAR(download(out.values.data(), 1, 1, DeviceDType::kFloat32, stream_)[0], ref.values[0],
              kFloat32Tol * std::abs(ref.values[0]));
  const auto dga = download(ga, stream_);
  for (double v : dga) EXPECT_TRUE(std::isfinite(v));
  EXPECT_LE(rel_err(dga, std::vector<double>(grads.grad_a.data(), grads.grad_a.data() + 30)),
            kFloat32Tol);
}

TEST_F(DeviceLossTest, PerExampleUpstreamOnHostAndDevice) {
  const std::int64_t n = 21, d = 9;
  const auto a = rounded(seeded_rows(5, 0, 0, n, d), DeviceDType::kFloat32);
  const auto b = rounded(seeded_rows(5, 1, 0, n, d), DeviceDType::kFloat32);
  std::vector<float> g(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i)
    g[static_cast<std::size_t>(i)] = static_cast<float>(i % 5) - 1.5f;
  SimCLRLoss cpu(0.3, Reduction::kNone);
  RowMatrix<double> ma = Eigen::Map<const RowMatrix<double>>(a.data(), n, d);
  RowMatrix<double> mb = Eigen::Map<const RowMatrix<double>>(b.data(), n, d);
  auto ref = cpu.forward<double>(ma, mb);
  auto grads = cpu.backward<double>(ref, std::vector<double>(g.begin(), g.end()));
  DeviceMatrix za = upload(a, n, d, DeviceDType::kFloat32, stream_),
               zb = upload(b, n, d, DeviceDType::kFloat32, stream_);
  DeviceArray g_dev(g.size() * sizeof(float), stream_);
  SIMCLR_CHECK_CUDA(
      cudaMemcpyAsync(g_dev.data(), g.data(), g_dev.bytes(), cudaMemcpyHostToDevice, stream_));
  DeviceSimCLRLoss loss(0.3, Reduction::kNone);
  auto out = loss.forward(za.view(), zb.view(), stream_);
  for (MemorySpace space : {MemorySpace::kHost, MemorySpace::kDevice}) {
    DeviceMatrix ga = zeros(n, d, DeviceDType::kFloat32, stream_),
                 gb = zeros(n, d, DeviceDType::kFloat32, stream_);
    const cuda::FloatVectorView up{space == MemorySpace::kHost ? g.data() : g_dev.as<float>(), n,
                                   space};
    loss.backward(out, up, ga.mutable_view(), gb.mutable_view(), stream_);
    EXPECT_LE(rel_err(download(ga, stream_),
                      std::vector<double>(grads.grad_a.data(), grads.grad_a.data() + n * d)),
              kFloat32Tol);
    EXPECT_LE(rel_err(download(gb, stream_),
                      std::vector<double>(grads.grad_b.data(), grads.grad_b.data() + n * d)),
              kFloat32Tol);
  }
}

// The backward on a second stream, ordered after the forward by an event, with the forward's output
// dropped right after the call: the library orders the forward stream after the backward, so the
// output's arrays are not freed (in the forward stream's order) while the backward still reads
// them.
TEST_F(DeviceLossTest, BackwardOnAnotherStreamWhileTheOutputIsDropped) {
  const std::int64_t n = 150, d = 40;
  const auto a = rounded(seeded_rows(9, 0, 0, n, d), DeviceDType::kFloat32);
  const auto b = rounded(seeded_rows(9, 1, 0, n, d), DeviceDType::kFloat32);
  SimCLRLoss cpu(0.1, Reduction::kSum);
  RowMatrix<double> ma = Eigen::Map<const RowMatrix<double>>(a.data(), n, d);
  RowMatrix<double> mb = Eigen::Map<const RowMatrix<double>>(b.data(), n, d);
  auto [ref, grads] = cpu.value_and_gradient<double>(ma, mb);
  DeviceMatrix za = upload(a, n, d, DeviceDType::kFloat32, stream_),
               zb = upload(b, n, d, DeviceDType::kFloat32, stream_);
  cudaStream_t other = nullptr;
  SIMCLR_CHECK_CUDA(cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking));
  DeviceMatrix ga = zeros(n, d, DeviceDType::kFloat32, other),
               gb = zeros(n, d, DeviceDType::kFloat32, other);
  DeviceSimCLRLoss loss(0.1, Reduction::kSum);
  cuda::DeviceCallOptions options;
  options.device.tile_rows = 64;
  options.device.tile_cols = 96;
  {
    auto out = loss.forward(za.view(), zb.view(), stream_, nullptr, options);
    cudaEvent_t forward_done = nullptr;
    SIMCLR_CHECK_CUDA(cudaEventCreateWithFlags(&forward_done, cudaEventDisableTiming));
    SIMCLR_CHECK_CUDA(cudaEventRecord(forward_done, stream_));
    SIMCLR_CHECK_CUDA(cudaStreamWaitEvent(other, forward_done, 0));
    SIMCLR_CHECK_CUDA(cudaEventDestroy(forward_done));
    loss.backward(out, 1.0f, ga.mutable_view(), gb.mutable_view(), other);
  }  // out dropped: its arrays are freed on stream_
  const auto dga = download(ga, other), dgb = download(gb, other);
  SIMCLR_CHECK_CUDA(cudaStreamSynchronize(stream_));
  ga.memory = DeviceArray();
  gb.memory = DeviceArray();
  SIMCLR_CHECK_CUDA(cudaStreamSynchronize(other));
  SIMCLR_CHECK_CUDA(cudaStreamDestroy(other));
  EXPECT_LE(rel_err(dga, std::vector<double>(grads.grad_a.data(), grads.grad_a.data() + n * d)),
            kFloat32Tol);
  EXPECT_LE(rel_err(dgb, std::vector<double>(grads.grad_b.data(), grads.grad_b.data() + n * d)),
            kFloat32Tol);
}

template <class Exc>
std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Exc& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("wrong exception: ") + e.what();
  }
  return "no exception";
}

TEST_F(DeviceLossTest, BadInputRaisesTheCpuPathsErrors) {
  const std::int64_t n = 8, d = 6;
  auto a = seeded_rows(1, 0, 0, n, d);
  const auto b = seeded_rows(1, 1, 0, n, d);
  a[static_cast<std::size_t>(3 * d + 5)] = std::nan("");
  DeviceMatrix za = upload(a, n, d, DeviceDType::kFloat32, stream_),
               zb = upload(b, n, d, DeviceDType::kFloat32, stream_);
  DeviceSimCLRLoss loss;
  EXPECT_EQ(message_of<ValueError>([&] { loss.forward(za.view(), zb.view(), stream_); }),
            "za has NaN at row 3, column 5");
  auto b_inf = b;
  b_inf[static_cast<std::size_t>(7 * d)] = INFINITY;
  DeviceMatrix zb_bad = upload(b_inf, n, d, DeviceDType::kBFloat16, stream_);
  DeviceMatrix zb16 = upload(b, n, d, DeviceDType::kBFloat16, stream_);
  DeviceMatrix za16 = upload(b, n, d, DeviceDType::kBFloat16, stream_);
  EXPECT_EQ(message_of<ValueError>([&] { loss.forward(za16.view(), zb_bad.view(), stream_); }),
            "zb has Inf at row 7, column 0");
  EXPECT_NE(message_of<TypeError>([&] {
              loss.forward(zb.view(), zb16.view(), stream_);
            }).find("same dtype"),
            std::string::npos);
  DeviceMatrix short_b = upload(b, n - 1, d, DeviceDType::kFloat32, stream_);
  EXPECT_NE(message_of<ValueError>([&] {
              loss.forward(zb.view(), short_b.view(), stream_);
            }).find("same shape"),
            std::string::npos);
  const float w[3] = {1, 2, 3};
  const cuda::DeviceSampleWeight sw{w, 3, MemorySpace::kHost, {}};
  EXPECT_NE(message_of<ValueError>([&] {
              loss.forward(zb.view(), zb.view(), stream_, &sw);
            }).find("Incompatible shapes: [8] vs. [3]"),
            std::string::npos);
  // The Keras shape rules are the host path's, one set (detail/reduction.hpp).
  std::vector<float> w16(16, 1.f);
  const cuda::DeviceSampleWeight columns{w16.data(), 16, MemorySpace::kHost, {8, 2}};
  EXPECT_NE(message_of<ValueError>([&] {
              loss.forward(zb.view(), zb.view(), stream_, &columns);
            }).find("Can not squeeze dim[1], expected a dimension of 1, got 2"),
            std::string::npos);
  const cuda::DeviceSampleWeight rank3{w16.data(), 8, MemorySpace::kHost, {8, 1, 1}};
  EXPECT_NE(message_of<ValueError>([&] {
              loss.forward(zb.view(), zb.view(), stream_, &rank3);
            }).find("sample_weight of rank 3 is not supported"),
            std::string::npos);
  auto out = loss.forward(zb.view(), zb.view(), stream_);
  DeviceMatrix g_small = zeros(n, d - 1, DeviceDType::kFloat32, stream_),
               g = zeros(n, d, DeviceDType::kFloat32, stream_);
  EXPECT_NE(message_of<ValueError>([&] {
              loss.backward(out, 1.f, g_small.mutable_view(), g.mutable_view(), stream_);
            }).find("grad_a buffer is [8, 5]"),
            std::string::npos);
  const cuda::FloatVectorView up{w, 3, MemorySpace::kHost};
  EXPECT_NE(message_of<ValueError>([&] {
              loss.backward(out, up, g.mutable_view(), g.mutable_view(), stream_);
            }).find("needs reduction 'none'"),
            std::string::npos);
  EXPECT_NE(message_of<ValueError>([&] {
              loss.backward(out, NAN, g.mutable_view(), g.mutable_view(), stream_);
            }).find("upstream gradient has NaN"),
            std::string::npos);
}

TEST_F(DeviceLossTest, DistributedPathOnOneGpuFollowsTheDistributionRule) {
  const std::int64_t n = 30, d = 16;
  const auto a = rounded(seeded_rows(9, 0, 0, n, d), DeviceDType::kFloat32);
  const auto b = rounded(seeded_rows(9, 1, 0, n, d), DeviceDType::kFloat32);
  DeviceMatrix za = upload(a, n, d, DeviceDType::kFloat32, stream_),
               zb = upload(b, n, d, DeviceDType::kFloat32, stream_);
  cuda::SingleDeviceCommunicator comm;
  cuda::DeviceCallOptions options;
  options.communicator = &comm;
  options.device.tile_rows = 17;
  options.device.tile_cols = 23;
  DeviceSimCLRLoss loss(0.1);  // auto
  EXPECT_NE(message_of<ValueError>([&] {
              loss.forward(za.view(), zb.view(), stream_, nullptr, options);
            }).find("global batch size"),
            std::string::npos);
  options.global_batch_size = GlobalBatchSize::of(100);
  auto out = loss.forward(za.view(), zb.view(), stream_, nullptr, options);
  DeviceMatrix ga = zeros(n, d, DeviceDType::kFloat32, stream_),
               gb = zeros(n, d, DeviceDType::kFloat32, stream_);
  loss.backward(out, 1.f, ga.mutable_view(), gb.mutable_view(), stream_);

  SingleProcessCommunicator cpu_comm;
  CallOptions cpu_options;
  cpu_options.communicator = &cpu_comm;
  cpu_options.global_batch_size = GlobalBatchSize::of(100);
  RowMatrix<double> ma = Eigen::Map<const RowMatrix<double>>(a.data(), n, d);
  RowMatrix<double> mb = Eigen::Map<const RowMatrix<double>>(b.data(), n, d);
  auto [ref, grads] = SimCLRLoss(0.1).value_and_gradient<double>(ma, mb, nullptr, cpu_options);
  EXPECT_NEAR(download(out.values.data(), 1, 1, DeviceDType::kFloat32, stream_)[0], ref.values[0],
              kFloat32Tol * std::abs(ref.values[0]));
  EXPECT_LE(rel_err(download(ga, stream_),
                    std::vector<double>(grads.grad_a.data(), grads.grad_a.data() + n * d)),
            kFloat32Tol);
  EXPECT_EQ(out.global_rows, n);
  EXPECT_EQ(out.rank_rows, std::vector<std::int64_t>{n});
}

// ---- several ranks on one GPU: one host thread and one stream per rank ----
//
// The machine the device check runs on may have a single GPU, where NCCL cannot run 2 ranks. These
// communicators run R ranks as R threads of this process on the current device, so the distributed
// code path (anchor_begin > 0, uneven ranks, a rank of 0 rows, the gathered LSE and alpha) is
// checked on one GPU against the whole batch on the CPU.

// Shared state of the ranks: a generation barrier (with a deadline, so a rank that failed makes the
// others fail instead of hang) and one slot per rank.
class ThreadGroup {
 public:
  explicit ThreadGroup(int size)
      : host_send_(static_cast<std::size_t>(size)),
        dev_send_(static_cast<std::size_t>(size)),
        ready_(static_cast<std::size_t>(size)),
        done_(static_cast<std::size_t>(size)),
        size_(size) {
    for (int r = 0; r < size; ++r) {
      SIMCLR_CHECK_CUDA(
          cudaEventCreateWithFlags(&ready_[static_cast<std::size_t>(r)], cudaEventDisableTiming));
      SIMCLR_CHECK_CUDA(
          cudaEventCreateWithFlags(&done_[static_cast<std::size_t>(r)], cudaEventDisableTiming));
    }
  }
  ~ThreadGroup() {
    for (auto e : ready_) (void)cudaEventDestroy(e);
    for (auto e : done_) (void)cudaEventDestroy(e);
  }
  int size() const { return size_; }

  void arrive_and_wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    if (broken_) throw CommError("thread group: another rank failed");
    const std::uint64_t gen = generation_;
    if (++arrived_ == size_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    if (!cv_.wait_for(lock, std::chrono::seconds(60),
                      [&] { return generation_ != gen || broken_; }) ||
        broken_) {
      broken_ = true;
      cv_.notify_all();
      throw CommError("thread group: a rank did not arrive (failed or deadlocked)");
    }
  }
  void break_group() {
    std::lock_guard<std::mutex> lock(mutex_);
    broken_ = true;
    cv_.notify_all();
  }

  std::vector<const void*> host_send_;
  std::vector<const void*> dev_send_;
  std::vector<cudaEvent_t> ready_, done_;

 private:
  int size_;
  std::mutex mutex_;
  std::condition_variable cv_;
  int arrived_ = 0;
  std::uint64_t generation_ = 0;
  bool broken_ = false;
};

std::vector<std::size_t> offsets_of(const std::vector<std::size_t>& bytes) {
  std::vector<std::size_t> at(bytes.size(), 0);
  for (std::size_t r = 1; r < bytes.size(); ++r) at[r] = at[r - 1] + bytes[r - 1];
  return at;
}

class ThreadHostCommunicator final : public Communicator {
 public:
  ThreadHostCommunicator(ThreadGroup& group, int rank) : group_(group), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return group_.size(); }
  std::string backend() const override { return "thread-host"; }
  void all_gather(const void* send, std::size_t bytes, void* recv) override {
    all_gather_v(send, bytes, recv,
                 std::vector<std::size_t>(static_cast<std::size_t>(size()), bytes));
  }
  void all_gather_v(const void* send, std::size_t send_bytes, void* recv,
                    const std::vector<std::size_t>& recv_bytes) override {
    SIMCLR_ENFORCE(send_bytes == recv_bytes[static_cast<std::size_t>(rank_)], CommError,
                   "thread-host: counts");
    group_.host_send_[static_cast<std::size_t>(rank_)] = send;
    group_.arrive_and_wait();
    const auto at = offsets_of(recv_bytes);
    for (std::size_t r = 0; r < recv_bytes.size(); ++r)
      if (recv_bytes[r] > 0)
        std::memcpy(static_cast<char*>(recv) + at[r], group_.host_send_[r], recv_bytes[r]);
    group_.arrive_and_wait();  // every rank has read every send buffer
  }
  void barrier() override { group_.arrive_and_wait(); }

 private:
  ThreadGroup& group_;
  int rank_;
};

class ThreadDeviceCommunicator final : public cuda::DeviceCommunicator {
 public:
  ThreadDeviceCommunicator(ThreadGroup& group, int rank)
      : group_(group), rank_(rank), host_(group, rank) {}
  int rank() const override { return rank_; }
  int size() const override { return group_.size(); }
  std::string backend() const override { return "thread-device"; }
  void all_gather(const void* send, std::size_t bytes, void* recv) override {
    all_gather_v(send, bytes, recv,
                 std::vector<std::size_t>(static_cast<std::size_t>(size()), bytes));
  }
  // Stream-ordered: my stream waits for each sender's data, copies it, and does not go on (e.g.
  // free or overwrite my send buffer) until every rank's copies of it are done.
  void all_gather_v(const void* send, std::size_t send_bytes, void* recv,
                    const std::vector<std::size_t>& recv_bytes) override {
    SIMCLR_ENFORCE(send_bytes == recv_bytes[static_cast<std::size_t>(rank_)], CommError,
                   "thread-device: counts");
    const auto me = static_cast<std::size_t>(rank_);
    group_.dev_send_[me] = send;
    SIMCLR_CHECK_CUDA(cudaEventRecord(group_.ready_[me], stream_));
    group_.arrive_and_wait();
    const auto at = offsets_of(recv_bytes);
    for (std::size_t r = 0; r < recv_bytes.size(); ++r) {
      if (recv_bytes[r] == 0) continue;
      SIMCLR_CHECK_CUDA(cudaStreamWaitEvent(stream_, group_.ready_[r], 0));
      SIMCLR_CHECK_CUDA(cudaMemcpyAsync(static_cast<char*>(recv) + at[r], group_.dev_send_[r],
                                        recv_bytes[r], cudaMemcpyDeviceToDevice, stream_));
    }
    SIMCLR_CHECK_CUDA(cudaEventRecord(group_.done_[me], stream_));
    group_.arrive_and_wait();
    for (std::size_t r = 0; r < recv_bytes.size(); ++r)
      SIMCLR_CHECK_CUDA(cudaStreamWaitEvent(stream_, group_.done_[r], 0));
  }
  void barrier() override {
    SIMCLR_CHECK_CUDA(cudaStreamSynchronize(stream_));
    group_.arrive_and_wait();
  }
  void set_stream(cudaStream_t stream) override { stream_ = stream; }
  cudaStream_t stream() const override { return stream_; }
  Communicator& host() override { return host_; }

 private:
  ThreadGroup& group_;
  int rank_;
  cudaStream_t stream_ = nullptr;
  ThreadHostCommunicator host_;
};

struct RankResult {
  std::vector<double> per_example, grad_a, grad_b;
  float objective = 0;
  std::int64_t row_offset = -1, global_rows = -1;
  std::string error;
};

// Runs the device loss on `rows[r]` rows per rank (rank r's slice of one seeded batch), one thread
// per rank, and checks every rank's slice against the whole batch on the CPU in double.
void check_thread_ranks(const std::vector<std::int64_t>& rows, DeviceDType dtype,
                        Reduction reduction, std::int64_t tile_rows, std::int64_t tile_cols) {
  const auto size = static_cast<int>(rows.size());
  const std::int64_t G = std::accumulate(rows.begin(), rows.end(), std::int64_t{0}), d = 24;
  const double temperature = 0.2;
  SCOPED_TRACE(::testing::Message()
               << size << " ranks, G=" << G << " dtype=" << cuda::to_string(dtype)
               << " reduction=" << to_string(reduction));
  const auto all_a = rounded(seeded_rows(21, 0, 0, G, d), dtype);
  const auto all_b = rounded(seeded_rows(21, 1, 0, G, d), dtype);
  std::vector<float> w(static_cast<std::size_t>(G));
  for (std::int64_t i = 0; i < G; ++i)
    w[static_cast<std::size_t>(i)] = 0.5f + 0.25f * static_cast<float>(i % 3);
  RowMatrix<double> ma = Eigen::Map<const RowMatrix<double>>(all_a.data(), G, d);
  RowMatrix<double> mb = Eigen::Map<const RowMatrix<double>>(all_b.data(), G, d);
  const SampleWeight sw = SampleWeight::per_example(std::vector<double>(w.begin(), w.end()));
  auto [ref, grads] = SimCLRLoss(temperature, reduction).value_and_gradient<double>(ma, mb, &sw);

  ThreadGroup group(size);
  std::vector<RankResult> results(static_cast<std::size_t>(size));
  std::vector<std::thread> threads;
  for (int rank = 0; rank < size; ++rank) {
    threads.emplace_back([&, rank] {
      RankResult& res = results[static_cast<std::size_t>(rank)];
      cudaStream_t stream = nullptr;
      try {
        SIMCLR_CHECK_CUDA(cudaSetDevice(0));
        SIMCLR_CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
        const std::int64_t n = rows[static_cast<std::size_t>(rank)];
        const std::int64_t begin =
            std::accumulate(rows.begin(), rows.begin() + rank, std::int64_t{0});
        {
          const std::vector<double> a(all_a.begin() + begin * d, all_a.begin() + (begin + n) * d);
          const std::vector<double> b(all_b.begin() + begin * d, all_b.begin() + (begin + n) * d);
          DeviceMatrix za = upload(a, n, d, dtype, stream, d + 3),
                       zb = upload(b, n, d, dtype, stream);
          DeviceMatrix ga = zeros(n, d, dtype, stream), gb = zeros(n, d, dtype, stream, d + 1);
          ThreadDeviceCommunicator comm(group, rank);
          cuda::DeviceCallOptions options;
          options.communicator = &comm;
          options.global_batch_size = GlobalBatchSize::infer();
          options.device.tile_rows = tile_rows;
          options.device.tile_cols = tile_cols;
          const cuda::DeviceSampleWeight dsw{w.data() + begin, n, MemorySpace::kHost, {}};
          DeviceSimCLRLoss loss(temperature, reduction);
          auto out = loss.forward(za.view(), zb.view(), stream, &dsw, options);
          loss.backward(out, 1.f, ga.mutable_view(), gb.mutable_view(), stream);
          res.per_example = download(out.per_example.data(), 1, n, dtype, stream);
          res.objective = copy_to_host_f32(out.objective, 1, stream)[0];
          res.grad_a = download(ga, stream);
          res.grad_b = download(gb, stream);
          res.row_offset = out.row_offset;
          res.global_rows = out.global_rows;
          comm.barrier();
        }
        SIMCLR_CHECK_CUDA(cudaStreamSynchronize(stream));
      } catch (const std::exception& e) {
        res.error = e.what();
        group.break_group();
      }
      if (stream != nullptr) {
        (void)cudaStreamSynchronize(stream);
        (void)cudaStreamDestroy(stream);
      }
    });
  }
  for (auto& t : threads) t.join();

  double magnitude = 0;
  for (double v : ref.per_example) magnitude = std::max(magnitude, std::abs(v));
  double objective = 0;
  std::int64_t begin = 0;
  for (int rank = 0; rank < size; ++rank) {
    const RankResult& res = results[static_cast<std::size_t>(rank)];
    const std::int64_t n = rows[static_cast<std::size_t>(rank)];
    SCOPED_TRACE(::testing::Message() << "rank " << rank << " rows " << n);
    ASSERT_EQ(res.error, "");
    EXPECT_EQ(res.row_offset, begin);
    EXPECT_EQ(res.global_rows, G);
    for (std::int64_t i = 0; i < n; ++i)
      EXPECT_NEAR(res.per_example[static_cast<std::size_t>(i)],
                  ref.per_example[static_cast<std::size_t>(begin + i)],
                  loss_tol(dtype, temperature, magnitude))
          << "example " << i;
    objective += res.objective;
    if (n > 0) {
      const std::vector<double> rga(grads.grad_a.data() + begin * d,
                                    grads.grad_a.data() + (begin + n) * d);
      const std::vector<double> rgb(grads.grad_b.data() + begin * d,
                                    grads.grad_b.data() + (begin + n) * d);
      EXPECT_LE(rel_err(res.grad_a, rga), grad_tol(dtype, temperature));
      EXPECT_LE(rel_err(res.grad_b, rgb), grad_tol(dtype, temperature));
    }
    begin += n;
  }
  // The ranks' objectives add up to the whole batch's (docs/math.md section 2.3).
  const double otol =
      dtype == DeviceDType::kFloat32
          ? kFloat32Tol * std::abs(ref.objective)
          : loss_tol(dtype, temperature, magnitude) *
                (reduction == Reduction::kSumOverBatchSize ? 1.0 : static_cast<double>(G));
  EXPECT_NEAR(objective, ref.objective, otol);
}

TEST_F(DeviceLossTest, ThreadRanksOnOneGpuMatchTheWholeBatch) {
  // Uneven ranks, ragged tiles that straddle rank boundaries, and a rank of 0 rows in the middle.
  for (Reduction r : {Reduction::kSum, Reduction::kSumOverBatchSize, Reduction::kNone})
    check_thread_ranks({13, 28}, DeviceDType::kFloat32, r, 10, 28);
  check_thread_ranks({9, 0, 17, 5}, DeviceDType::kFloat32, Reduction::kSumOverBatchSize, 7, 13);
  check_thread_ranks({1, 30, 0}, DeviceDType::kFloat32, Reduction::kSum, 0, 0);
  check_thread_ranks({20, 0, 24}, DeviceDType::kBFloat16, Reduction::kSumOverBatchSize, 16, 40);
  check_thread_ranks({31, 12}, DeviceDType::kFloat16, Reduction::kNone, 12, 20);
}

#ifdef SIMCLR_CUDA_EMULATION
// Device memory running out is a DeviceError (not a CommError: the transport is fine) whose message
// names the call, the size and the device.
TEST_F(DeviceLossTest, AnAllocationFailureIsADeviceErrorNamingTheCall) {
  static_assert(!std::is_base_of_v<CommError, DeviceError>);
  const std::int64_t n = 8, d = 6;
  DeviceMatrix za = upload(seeded_rows(3, 0, 0, n, d), n, d, DeviceDType::kFloat32, stream_),
               zb = upload(seeded_rows(3, 1, 0, n, d), n, d, DeviceDType::kFloat32, stream_);
  DeviceSimCLRLoss loss(0.1, Reduction::kSum);
  cuda::emu::fail_next_allocations(1);
  const std::string what =
      message_of<DeviceError>([&] { loss.forward(za.view(), zb.view(), stream_); });
  EXPECT_EQ(what.rfind("cudaMallocAsync(&ptr, ", 0), 0u) << what;
  EXPECT_NE(what.find(" bytes) failed: cudaErrorMemoryAllocation: out of memory"),
            std::string::npos)
      << what;
  EXPECT_NE(what.find("(device 0)"), std::string::npos) << what;
  (void)cudaGetLastError();
  // One failure only: the same call then succeeds.
  auto out = loss.forward(za.view(), zb.view(), stream_);
  EXPECT_TRUE(std::isfinite(copy_to_host_f32(out.objective, 1, stream_)[0]));
}

// A device failure in one rank's validation (the finiteness check's allocation) is carried by the
// agreement step: every rank raises the same DeviceError naming that rank, and the ranks stay in
// step (a barrier afterwards passes). Before, the failing rank left and the others waited.
TEST_F(DeviceLossTest, ADeviceFailureOnOneRankRaisesTheSameErrorOnEveryRank) {
  const int size = 3, failing = 1;
  const std::int64_t n = 5, d = 4;
  ThreadGroup group(size);
  std::vector<std::string> errors(static_cast<std::size_t>(size));
  std::vector<bool> barrier_passed(static_cast<std::size_t>(size), false);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < size; ++rank) {
    threads.emplace_back([&, rank] {
      cudaStream_t stream = nullptr;
      try {
        SIMCLR_CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
        DeviceMatrix za = upload(seeded_rows(4, 0, rank * n, n, d), n, d, DeviceDType::kFloat32,
                                 stream),
                     zb = upload(seeded_rows(4, 1, rank * n, n, d), n, d, DeviceDType::kFloat32,
                                 stream);
        ThreadDeviceCommunicator comm(group, rank);
        cuda::DeviceCallOptions options;
        options.communicator = &comm;
        DeviceSimCLRLoss loss(0.1, Reduction::kSum);
        if (rank == failing) cuda::emu::fail_next_allocations(1);
        errors[static_cast<std::size_t>(rank)] = message_of<DeviceError>(
            [&] { loss.forward(za.view(), zb.view(), stream, nullptr, options); });
        cuda::emu::fail_next_allocations(0);
        comm.barrier();
        barrier_passed[static_cast<std::size_t>(rank)] = true;
      } catch (const std::exception& e) {
        errors[static_cast<std::size_t>(rank)] = std::string("escaped: ") + e.what();
        group.break_group();
      }
      if (stream != nullptr) {
        (void)cudaStreamSynchronize(stream);
        (void)cudaStreamDestroy(stream);
      }
      (void)cudaGetLastError();
    });
  }
  for (auto& t : threads) t.join();
  for (int rank = 0; rank < size; ++rank) {
    SCOPED_TRACE(::testing::Message() << "rank " << rank);
    const std::string& what = errors[static_cast<std::size_t>(rank)];
    EXPECT_EQ(what, errors[static_cast<std::size_t>(failing)]);
    EXPECT_EQ(what.rfind("cudaMallocAsync(&ptr, ", 0), 0u) << what;
    EXPECT_NE(what.find("cudaErrorMemoryAllocation"), std::string::npos) << what;
    EXPECT_NE(what.find("(rank 1)"), std::string::npos) << what;
    EXPECT_TRUE(barrier_passed[static_cast<std::size_t>(rank)]);
  }
}
#endif

TEST_F(DeviceLossTest, EmptyBatchGivesZeroAndNoWork) {
  DeviceSimCLRLoss loss;
  const cuda::DeviceMatrixView empty(nullptr, 0, 8, DeviceDType::kBFloat16);
  auto out = loss.forward(empty, empty, stream_);
  EXPECT_EQ(download(out.values.data(), 1, 1, DeviceDType::kBFloat16, stream_)[0], 0.0);
  EXPECT_EQ(copy_to_host_f32(out.objective, 1, stream_)[0], 0.f);
  const cuda::DeviceMutableMatrixView g(nullptr, 0, 8, DeviceDType::kBFloat16);
  loss.backward(out, 1.f, g, g, stream_);
  SIMCLR_CHECK_CUDA(cudaStreamSynchronize(stream_));
}

}  // namespace
}  // namespace simclr::gputest

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  const std::string reason = simclr::gputest::no_device_reason();
  if (!reason.empty()) {
    // One line; ctest's SKIP_REGULAR_EXPRESSION turns it into "Skipped".
    std::printf("simclr_gpu_tests: skipped: %s\n", reason.c_str());
    return 0;
  }
  return RUN_ALL_TESTS();
}

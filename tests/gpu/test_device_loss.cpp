// The device loss against the CPU path (simclr::SimCLRLoss in double on host copies of the same
// inputs): values, per-example losses, objective and gradients, across tile boundaries, in float32,
// bfloat16 and float16; validation; the distributed code path on one GPU; the empty batch.

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "gpu_test_util.hpp"
#include "simclr/cuda/device_loss.hpp"
#include "simclr/loss.hpp"

namespace simclr::gputest {
namespace {

using cuda::DeviceSimCLRLoss;
using cuda::MemorySpace;

// float32: the CPU reference is double, so the device error is float32 rounding in the normalisation,
// the products (d-term sums), exp/log (~2 ulp) and the LSE (2G terms): a few hundred ulps at these
// sizes, i.e. <= 1e-5 relative (the bar) with a margin of ~10.
constexpr double kFloat32Tol = 1e-5;

// 16-bit inputs: both paths see the same rounded inputs, but the device stores the normalised rows U,
// the M tiles and the outputs in the input dtype (as any plain bf16/fp16 implementation does), with
// unit roundoff u (2^-8 bf16, 2^-11 fp16). |x_hat| = 1, so each logit moves by at most 2u/T; each
// direction's CE (an LSE, 1-Lipschitz in the max norm, minus the positive) by at most 4u/T, and l_i by
// 8u/T, plus u|l| for storing it. The gradient's norm-wise relative error is bounded the same way:
// P entries move by a factor <= exp(4u/T), M, U, x_hat and the output each add u.
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
                                      << c.tile_cols);
    const auto a = rounded(seeded_rows(c.seed, 0, 0, c.n, c.d), c.dtype);
    const auto b = rounded(seeded_rows(c.seed, 1, 0, c.n, c.d), c.dtype);
    std::vector<float> w(static_cast<std::size_t>(c.n));
    for (std::int64_t i = 0; i < c.n; ++i) w[static_cast<std::size_t>(i)] = 0.25f + 0.5f * static_cast<float>(i % 4);
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
    DeviceMatrix ga = zeros(c.n, c.d, c.dtype, stream_, stride), gb = zeros(c.n, c.d, c.dtype, stream_, stride);
    DeviceArray w_dev(w.size() * sizeof(float), stream_);
    SIMCLR_CHECK_CUDA(cudaMemcpyAsync(w_dev.data(), w.data(), w_dev.bytes(), cudaMemcpyHostToDevice, stream_));
    cuda::DeviceSampleWeight dsw;
    if (c.weights == Weights::kScalarHost) dsw = {&scalar_w, 1, MemorySpace::kHost};
    if (c.weights == Weights::kHost) dsw = {w.data(), c.n, MemorySpace::kHost};
    if (c.weights == Weights::kDevice) dsw = {w_dev.as<float>(), c.n, MemorySpace::kDevice};
    DeviceSimCLRLoss loss(c.temperature, c.reduction);
    cuda::DeviceCallOptions options;
    options.device.tile_rows = c.tile_rows;
    options.device.tile_cols = c.tile_cols;
    auto out = loss.forward(za.view(), zb.view(), stream_, c.weights == Weights::kNone ? nullptr : &dsw, options);
    loss.backward(out, 1.0f, ga.mutable_view(), gb.mutable_view(), stream_);

    const auto values = download(out.values.data(), 1, static_cast<std::int64_t>(ref.values.size()), c.dtype, stream_);
    const auto per_example = download(out.per_example.data(), 1, c.n, c.dtype, stream_);
    const auto objective = copy_to_host_f32(out.objective, 1, stream_);
    ASSERT_EQ(out.reduction, ref.reduction);
    double magnitude = 0;
    for (double v : ref.per_example) magnitude = std::max(magnitude, std::abs(v));
    for (std::size_t i = 0; i < ref.per_example.size(); ++i)
      EXPECT_NEAR(per_example[i], ref.per_example[i], loss_tol(c.dtype, c.temperature, magnitude)) << "example " << i;
    double vmag = 0;
    for (double v : ref.values) vmag = std::max(vmag, std::abs(v));
    // Reduced values are weighted means/sums of the l_i, so they inherit the l_i bound times the
    // weights' scale (max weight 1.5, times n for the sum).
    const double wscale = (c.weights == Weights::kNone ? 1.0 : 1.5) *
                          (c.reduction == Reduction::kSum ? static_cast<double>(c.n) : 1.0);
    const double vtol = c.dtype == DeviceDType::kFloat32 ? kFloat32Tol * std::max(vmag, 1e-30)
                                                         : loss_tol(c.dtype, c.temperature, magnitude) * wscale;
    for (std::size_t i = 0; i < ref.values.size(); ++i) EXPECT_NEAR(values[i], ref.values[i], vtol) << "value " << i;
    EXPECT_NEAR(objective[0], ref.objective,
                c.dtype == DeviceDType::kFloat32 ? kFloat32Tol * std::abs(ref.objective)
                                                 : loss_tol(c.dtype, c.temperature, magnitude) * wscale *
                                                       (c.reduction == Reduction::kNone ? static_cast<double>(c.n) : 1.0));
    const std::vector<double> rga(ref_grad.grad_a.data(), ref_grad.grad_a.data() + ref_grad.grad_a.size());
    const std::vector<double> rgb(ref_grad.grad_b.data(), ref_grad.grad_b.data() + ref_grad.grad_b.size());
    EXPECT_LE(rel_err(download(ga, stream_), rga), grad_tol(c.dtype, c.temperature));
    EXPECT_LE(rel_err(download(gb, stream_), rgb), grad_tol(c.dtype, c.temperature));
  }

  cudaStream_t stream_ = nullptr;
};

TEST_F(DeviceLossTest, Float32MatchesCpuAcrossTilesForEveryReductionAndWeight) {
  for (Reduction r : {Reduction::kAuto, Reduction::kSum, Reduction::kSumOverBatchSize, Reduction::kNone}) {
    for (Weights w : {Weights::kNone, Weights::kScalarHost, Weights::kHost, Weights::kDevice}) {
      Case c;
      c.reduction = r;
      c.weights = w;
      check_case(c);
    }
  }
}

TEST_F(DeviceLossTest, Float32TileShapesDoNotChangeTheResult) {
  for (auto [rows, cols] : std::vector<std::pair<std::int64_t, std::int64_t>>{{1, 1}, {5, 7}, {74, 74}, {8, 3}, {0, 0}}) {
    Case c;
    c.tile_rows = rows;
    c.tile_cols = cols;
    c.n = 19;
    check_case(c);
  }
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
  DeviceMatrix za = upload(a, 6, 5, DeviceDType::kFloat32, stream_), zb = upload(b, 6, 5, DeviceDType::kFloat32, stream_);
  DeviceMatrix ga = zeros(6, 5, DeviceDType::kFloat32, stream_), gb = zeros(6, 5, DeviceDType::kFloat32, stream_);
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
  EXPECT_LE(rel_err(dga, std::vector<double>(grads.grad_a.data(), grads.grad_a.data() + 30)), kFloat32Tol);
}

TEST_F(DeviceLossTest, PerExampleUpstreamOnHostAndDevice) {
  const std::int64_t n = 21, d = 9;
  const auto a = rounded(seeded_rows(5, 0, 0, n, d), DeviceDType::kFloat32);
  const auto b = rounded(seeded_rows(5, 1, 0, n, d), DeviceDType::kFloat32);
  std::vector<float> g(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) g[static_cast<std::size_t>(i)] = static_cast<float>(i % 5) - 1.5f;
  SimCLRLoss cpu(0.3, Reduction::kNone);
  RowMatrix<double> ma = Eigen::Map<const RowMatrix<double>>(a.data(), n, d);
  RowMatrix<double> mb = Eigen::Map<const RowMatrix<double>>(b.data(), n, d);
  auto ref = cpu.forward<double>(ma, mb);
  auto grads = cpu.backward<double>(ref, std::vector<double>(g.begin(), g.end()));
  DeviceMatrix za = upload(a, n, d, DeviceDType::kFloat32, stream_), zb = upload(b, n, d, DeviceDType::kFloat32, stream_);
  DeviceArray g_dev(g.size() * sizeof(float), stream_);
  SIMCLR_CHECK_CUDA(cudaMemcpyAsync(g_dev.data(), g.data(), g_dev.bytes(), cudaMemcpyHostToDevice, stream_));
  DeviceSimCLRLoss loss(0.3, Reduction::kNone);
  auto out = loss.forward(za.view(), zb.view(), stream_);
  for (MemorySpace space : {MemorySpace::kHost, MemorySpace::kDevice}) {
    DeviceMatrix ga = zeros(n, d, DeviceDType::kFloat32, stream_), gb = zeros(n, d, DeviceDType::kFloat32, stream_);
    const cuda::FloatVectorView up{space == MemorySpace::kHost ? g.data() : g_dev.as<float>(), n, space};
    loss.backward(out, up, ga.mutable_view(), gb.mutable_view(), stream_);
    EXPECT_LE(rel_err(download(ga, stream_), std::vector<double>(grads.grad_a.data(), grads.grad_a.data() + n * d)),
              kFloat32Tol);
    EXPECT_LE(rel_err(download(gb, stream_), std::vector<double>(grads.grad_b.data(), grads.grad_b.data() + n * d)),
              kFloat32Tol);
  }
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
  DeviceMatrix za = upload(a, n, d, DeviceDType::kFloat32, stream_), zb = upload(b, n, d, DeviceDType::kFloat32, stream_);
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
  EXPECT_NE(message_of<TypeError>([&] { loss.forward(zb.view(), zb16.view(), stream_); }).find("same dtype"),
            std::string::npos);
  DeviceMatrix short_b = upload(b, n - 1, d, DeviceDType::kFloat32, stream_);
  EXPECT_NE(message_of<ValueError>([&] { loss.forward(zb.view(), short_b.view(), stream_); }).find("same shape"),
            std::string::npos);
  const float w[3] = {1, 2, 3};
  const cuda::DeviceSampleWeight sw{w, 3, MemorySpace::kHost};
  EXPECT_NE(message_of<ValueError>([&] { loss.forward(zb.view(), zb.view(), stream_, &sw); })
                .find("Incompatible shapes: [8] vs. [3]"),
            std::string::npos);
  auto out = loss.forward(zb.view(), zb.view(), stream_);
  DeviceMatrix g_small = zeros(n, d - 1, DeviceDType::kFloat32, stream_), g = zeros(n, d, DeviceDType::kFloat32, stream_);
  EXPECT_NE(message_of<ValueError>([&] { loss.backward(out, 1.f, g_small.mutable_view(), g.mutable_view(), stream_); })
                .find("grad_a buffer is [8, 5]"),
            std::string::npos);
  const cuda::FloatVectorView up{w, 3, MemorySpace::kHost};
  EXPECT_NE(message_of<ValueError>([&] { loss.backward(out, up, g.mutable_view(), g.mutable_view(), stream_); })
                .find("needs reduction 'none'"),
            std::string::npos);
  EXPECT_NE(message_of<ValueError>([&] { loss.backward(out, NAN, g.mutable_view(), g.mutable_view(), stream_); })
                .find("upstream gradient has NaN"),
            std::string::npos);
}

TEST_F(DeviceLossTest, DistributedPathOnOneGpuFollowsTheDistributionRule) {
  const std::int64_t n = 30, d = 16;
  const auto a = rounded(seeded_rows(9, 0, 0, n, d), DeviceDType::kFloat32);
  const auto b = rounded(seeded_rows(9, 1, 0, n, d), DeviceDType::kFloat32);
  DeviceMatrix za = upload(a, n, d, DeviceDType::kFloat32, stream_), zb = upload(b, n, d, DeviceDType::kFloat32, stream_);
  cuda::SingleDeviceCommunicator comm;
  cuda::DeviceCallOptions options;
  options.communicator = &comm;
  options.device.tile_rows = 17;
  options.device.tile_cols = 23;
  DeviceSimCLRLoss loss(0.1);  // auto
  EXPECT_NE(message_of<ValueError>([&] { loss.forward(za.view(), zb.view(), stream_, nullptr, options); })
                .find("global batch size"),
            std::string::npos);
  options.global_batch_size = GlobalBatchSize::of(100);
  auto out = loss.forward(za.view(), zb.view(), stream_, nullptr, options);
  DeviceMatrix ga = zeros(n, d, DeviceDType::kFloat32, stream_), gb = zeros(n, d, DeviceDType::kFloat32, stream_);
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
  EXPECT_LE(rel_err(download(ga, stream_), std::vector<double>(grads.grad_a.data(), grads.grad_a.data() + n * d)),
            kFloat32Tol);
  EXPECT_EQ(out.global_rows, n);
  EXPECT_EQ(out.rank_rows, std::vector<std::int64_t>{n});
}

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
  if (!reason.empty()) ::testing::AddGlobalTestEnvironment(new simclr::gputest::SkipAllEnvironment(reason));
  return RUN_ALL_TESTS();
}

// The GPU handlers of simclr_loss.jax (python/src/jax_ffi_cuda.hpp) on the CPU emulation of the GPU
// path: the bodies XLA calls, given XLA FFI buffers over (emulated) device memory, a stream and a
// scratch allocator, checked against the host C API's simclr_forward / simclr_backward on the
// whole batch. The distributed case runs the steps of two devices as simclr_loss.jax orders them
// under shard_map, with the test concatenating where XLA's all-gathers would. What this cannot
// check: XLA's own binding and dispatch of the handlers (the device check does, on a GPU).

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "jax_ffi_cuda.hpp"
#include "simclr/c_api.h"

namespace {

namespace ffi = xla::ffi;
namespace h = simclr_jax_cuda;

// XLA's scratch allocator, as the handlers use it: device memory freed after the call.
class TestScratch {
 public:
  ~TestScratch() {
    for (void* p : blocks_) (void)cudaFree(p);
  }
  std::optional<void*> Allocate(std::size_t bytes, std::size_t alignment) {
    void* p = nullptr;
    if (cudaMalloc(&p, bytes) != cudaSuccess) return std::nullopt;
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(p) % alignment, 0u);
    blocks_.push_back(p);
    allocated += bytes;
    return p;
  }
  std::size_t allocated = 0;

 private:
  std::vector<void*> blocks_;
};

// A device buffer as XLA hands it to a handler.
class Buffer {
 public:
  Buffer(XLA_FFI_DataType type, std::vector<std::int64_t> dims, std::size_t elem = 4)
      : dims_(std::move(dims)) {
    std::size_t count = 1;
    for (auto d : dims_) count *= static_cast<std::size_t>(d);
    bytes_ = count * elem;
    if (bytes_ > 0) EXPECT_EQ(cudaMalloc(&data_, bytes_), cudaSuccess);
    raw_.struct_size = XLA_FFI_Buffer_STRUCT_SIZE;
    raw_.extension_start = nullptr;
    raw_.dtype = type;
    raw_.data = data_;
    raw_.rank = static_cast<std::int64_t>(dims_.size());
    raw_.dims = dims_.data();
  }
  ~Buffer() {
    if (data_ != nullptr) (void)cudaFree(data_);
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ffi::AnyBuffer any() const { return ffi::AnyBuffer(&raw_); }
  template <class T>
  void set(const std::vector<T>& v) {
    ASSERT_EQ(v.size() * sizeof(T), bytes_);
    if (bytes_ > 0) ASSERT_EQ(cudaMemcpy(data_, v.data(), bytes_, cudaMemcpyHostToDevice), cudaSuccess);
  }
  template <class T>
  std::vector<T> get() const {
    std::vector<T> v(bytes_ / sizeof(T));
    if (bytes_ > 0) EXPECT_EQ(cudaMemcpy(v.data(), data_, bytes_, cudaMemcpyDeviceToHost), cudaSuccess);
    return v;
  }

 private:
  std::vector<std::int64_t> dims_;
  std::size_t bytes_ = 0;
  void* data_ = nullptr;
  XLA_FFI_Buffer raw_{};
};

std::vector<float> seeded(std::size_t count, unsigned seed) {
  std::vector<float> v(count);
  std::uint64_t s = seed * 0x9E3779B97F4A7C15ULL + 1;
  for (auto& x : v) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    x = static_cast<float>(static_cast<double>(s >> 11) / 9007199254740992.0 * 2.0 - 1.0);
  }
  return v;
}

simclr_matrix host(const std::vector<float>& v, std::int64_t rows, std::int64_t cols) {
  return simclr_matrix{const_cast<float*>(v.data()), rows, cols, cols, SIMCLR_FLOAT32, -1};
}

// The host C API on the whole batch: values, and the gradient of sum(values * upstream).
struct Reference {
  std::vector<float> values, grad_a, grad_b;
};
Reference reference(const std::vector<float>& za, const std::vector<float>& zb, std::int64_t n,
                    std::int64_t d, double temperature, simclr_reduction reduction,
                    const std::vector<float>* weight, const std::vector<float>& upstream) {
  simclr_loss_t loss = nullptr;
  EXPECT_EQ(simclr_loss_create(temperature, reduction, nullptr, &loss), SIMCLR_OK);
  const simclr_matrix a = host(za, n, d), b = host(zb, n, d);
  std::vector<double> w;
  simclr_weight wv{};
  if (weight != nullptr) {
    w.assign(weight->begin(), weight->end());
    wv.values = w.data();
    wv.ndim = 1;
    wv.shape[0] = static_cast<std::int64_t>(w.size());
  }
  Reference r;
  r.values.resize(reduction == SIMCLR_REDUCTION_NONE ? static_cast<std::size_t>(n) : 1);
  simclr_forward_t saved = nullptr;
  EXPECT_EQ(simclr_forward(loss, &a, &b, weight != nullptr ? &wv : nullptr, nullptr,
                           r.values.data(), nullptr, nullptr, &saved),
            SIMCLR_OK)
      << simclr_last_error();
  r.grad_a.resize(static_cast<std::size_t>(n * d));
  r.grad_b.resize(static_cast<std::size_t>(n * d));
  const simclr_matrix ga{r.grad_a.data(), n, d, d, SIMCLR_FLOAT32, -1};
  const simclr_matrix gb{r.grad_b.data(), n, d, d, SIMCLR_FLOAT32, -1};
  EXPECT_EQ(simclr_backward(loss, saved, upstream.data(),
                            static_cast<std::int64_t>(upstream.size()), &ga, &gb),
            SIMCLR_OK)
      << simclr_last_error();
  simclr_forward_destroy(saved);
  simclr_loss_destroy(loss);
  return r;
}

double rel_err(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    num += (static_cast<double>(got.at(i)) - want[i]) * (static_cast<double>(got.at(i)) - want[i]);
    den += static_cast<double>(want[i]) * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

void expect_ok(const ffi::Error& e) { EXPECT_TRUE(e.success()) << e.message(); }

constexpr double kT = 0.2;

// One device (no axis_name): normalize, forward, alpha, backward, as simclr_loss.jax calls them.
void run_single(std::int64_t reduction, bool weighted, bool per_example_upstream) {
  const std::int64_t n = 37, d = 13;
  const auto za = seeded(static_cast<std::size_t>(n * d), 1);
  const auto zb = seeded(static_cast<std::size_t>(n * d), 2);
  const auto w = seeded(static_cast<std::size_t>(n), 3);
  std::vector<float> wpos(w.size());
  for (std::size_t i = 0; i < w.size(); ++i) wpos[i] = 0.5f + std::fabs(w[i]);
  const std::int64_t nv = reduction == SIMCLR_REDUCTION_NONE ? n : 1;
  std::vector<float> g(per_example_upstream ? static_cast<std::size_t>(n) : 1, 1.f);
  if (per_example_upstream)
    for (std::size_t i = 0; i < g.size(); ++i) g[i] = 0.25f + 0.01f * static_cast<float>(i);
  const cudaStream_t stream = nullptr;

  Buffer a(XLA_FFI_DataType_F32, {n, d}), b(XLA_FFI_DataType_F32, {n, d});
  a.set(za);
  b.set(zb);
  Buffer weight(XLA_FFI_DataType_F32, weighted ? std::vector<std::int64_t>{n} : std::vector<std::int64_t>{});
  weight.set(weighted ? wpos : std::vector<float>{1.f});
  Buffer u(XLA_FFI_DataType_F32, {2 * n, d}), norms(XLA_FFI_DataType_F32, {2 * n});
  Buffer offset(XLA_FFI_DataType_S32, {});
  offset.set(std::vector<std::int32_t>{0});
  Buffer lse(XLA_FFI_DataType_F32, {2 * n}), per_example(XLA_FFI_DataType_F32, {n}),
      values(XLA_FFI_DataType_F32, {nv});
  Buffer upstream(XLA_FFI_DataType_F32, {static_cast<std::int64_t>(g.size())});
  upstream.set(g);
  Buffer alpha(XLA_FFI_DataType_F32, {2 * n});
  Buffer ga(XLA_FFI_DataType_F32, {n, d}), gb(XLA_FFI_DataType_F32, {n, d});

  TestScratch scratch;
  expect_ok(h::normalize(stream, a.any(), b.any(), u.any(), norms.any()));
  expect_ok(h::forward(stream, scratch, u.any(), offset.any(), weight.any(), lse.any(),
                       per_example.any(), values.any(), kT, reduction, SIMCLR_GLOBAL_BATCH_NONE,
                       weighted ? 1 : 0));
  EXPECT_GT(scratch.allocated, 0u);  // the forward's workspace came from the allocator
  expect_ok(h::alpha(stream, scratch, upstream.any(), weight.any(), alpha.any(), kT, reduction,
                     SIMCLR_GLOBAL_BATCH_NONE, weighted ? 1 : 0, n));
  expect_ok(h::backward(stream, scratch, u.any(), offset.any(), norms.any(), lse.any(),
                        alpha.any(), ga.any(), gb.any(), kT, reduction));

  const Reference ref = reference(za, zb, n, d, kT, static_cast<simclr_reduction>(reduction),
                                  weighted ? &wpos : nullptr, g);
  EXPECT_LT(rel_err(values.get<float>(), ref.values), 1e-5);
  EXPECT_LT(rel_err(ga.get<float>(), ref.grad_a), 1e-5);
  EXPECT_LT(rel_err(gb.get<float>(), ref.grad_b), 1e-5);
}

TEST(JaxFfiCudaHandlers, OneDeviceMatchesTheHostCall) {
  run_single(SIMCLR_REDUCTION_SUM_OVER_BATCH_SIZE, false, false);
}
TEST(JaxFfiCudaHandlers, OneDeviceWeightedSumMatchesTheHostCall) {
  run_single(SIMCLR_REDUCTION_SUM, true, false);
}
TEST(JaxFfiCudaHandlers, OneDeviceNoneWithPerExampleUpstreamMatchesTheHostCall) {
  run_single(SIMCLR_REDUCTION_NONE, true, true);
}

// What each device of a shard_map holds between the steps.
struct DeviceState {
  std::unique_ptr<Buffer> za, zb, weight, record, u_local, norms, agreed_weight, offset, lse,
      per_example, values, upstream, alpha, back_record, ga, gb;
};

// Two devices under shard_map, uneven inputs on neither (shard_map splits evenly), every step of
// simclr_loss.jax's distributed path; `bad_row` puts a NaN into device 1's zb.
void run_two_devices(std::int64_t bad_row, std::vector<std::string>* errors) {
  const std::int64_t P = 2, n = 19, d = 11, G = P * n;
  const std::int64_t reduction = SIMCLR_REDUCTION_SUM_OVER_BATCH_SIZE;
  const auto za = seeded(static_cast<std::size_t>(G * d), 11);
  auto zb = seeded(static_cast<std::size_t>(G * d), 12);
  const cudaStream_t stream = nullptr;
  std::vector<DeviceState> dev(P);
  const auto rows = [&](const std::vector<float>& z, std::int64_t r) {
    return std::vector<float>(z.begin() + r * n * d, z.begin() + (r + 1) * n * d);
  };
  // Forward: records, their all-gather, agreement and normalisation.
  std::vector<unsigned char> records;
  for (std::int64_t r = 0; r < P; ++r) {
    DeviceState& s = dev[static_cast<std::size_t>(r)];
    s.za = std::make_unique<Buffer>(XLA_FFI_DataType_F32, std::vector<std::int64_t>{n, d});
    s.zb = std::make_unique<Buffer>(XLA_FFI_DataType_F32, std::vector<std::int64_t>{n, d});
    s.za->set(rows(za, r));
    auto b = rows(zb, r);
    if (r == 1 && bad_row >= 0) b[static_cast<std::size_t>(bad_row * d + 3)] = std::nanf("");
    s.zb->set(b);
    s.weight = std::make_unique<Buffer>(XLA_FFI_DataType_F32, std::vector<std::int64_t>{});
    s.weight->set(std::vector<float>{1.f});
    s.record = std::make_unique<Buffer>(XLA_FFI_DataType_U8,
                                        std::vector<std::int64_t>{SIMCLR_RECORD_BYTES}, 1);
    expect_ok(h::record(stream, s.za->any(), s.zb->any(), s.weight->any(), s.record->any(), kT,
                        reduction, G, 0, 0));
    const auto rec = s.record->get<unsigned char>();
    records.insert(records.end(), rec.begin(), rec.end());
  }
  std::vector<float> u_all;
  for (std::int64_t r = 0; r < P; ++r) {
    DeviceState& s = dev[static_cast<std::size_t>(r)];
    Buffer gathered(XLA_FFI_DataType_U8, {P, SIMCLR_RECORD_BYTES}, 1);
    gathered.set(records);
    s.u_local = std::make_unique<Buffer>(XLA_FFI_DataType_F32, std::vector<std::int64_t>{2 * n, d});
    s.norms = std::make_unique<Buffer>(XLA_FFI_DataType_F32, std::vector<std::int64_t>{2 * n});
    s.agreed_weight = std::make_unique<Buffer>(XLA_FFI_DataType_F32, std::vector<std::int64_t>{});
    const ffi::Error e =
        h::agree_normalize(stream, gathered.any(), s.za->any(), s.zb->any(), s.weight->any(),
                           s.u_local->any(), s.norms->any(), s.agreed_weight->any(), kT, reduction);
    if (errors != nullptr) {
      errors->push_back(e.success() ? "" : e.message());
      continue;
    }
    expect_ok(e);
    const auto ul = s.u_local->get<float>();
    u_all.insert(u_all.end(), ul.begin(), ul.end());
  }
  if (errors != nullptr) return;
  // Forward on the gathered rows, alpha and its records, the backward's gathers and agreement.
  Buffer u_global(XLA_FFI_DataType_F32, {2 * G, d});
  u_global.set(u_all);
  std::vector<float> lse_all, alpha_all;
  std::vector<unsigned char> back_records;
  double total = 0;
  for (std::int64_t r = 0; r < P; ++r) {
    DeviceState& s = dev[static_cast<std::size_t>(r)];
    s.offset = std::make_unique<Buffer>(XLA_FFI_DataType_S32, std::vector<std::int64_t>{});
    s.offset->set(std::vector<std::int32_t>{static_cast<std::int32_t>(2 * n * r)});
    s.lse = std::make_unique<Buffer>(XLA_FFI_DataType_F32, std::vector<std::int64_t>{2 * n});
    s.per_example = std::make_unique<Buffer>(XLA_FFI_DataType_F32, std::vector<std::int64_t>{n});
    s.values = std::make_unique<Buffer>(XLA_FFI_DataType_F32, std::vector<std::int64_t>{1});
    TestScratch scratch;
    expect_ok(h::forward(stream, scratch, u_global.any(), s.offset->any(), s.agreed_weight->any(),
                         s.lse->any(), s.per_example->any(), s.values->any(), kT, reduction, G, 0));
    total += s.values->get<float>()[0];
    s.upstream = std::make_unique<Buffer>(XLA_FFI_DataType_F32, std::vector<std::int64_t>{1});
    s.upstream->set(std::vector<float>{1.f});
    s.alpha = std::make_unique<Buffer>(XLA_FFI_DataType_F32, std::vector<std::int64_t>{2 * n});
    s.back_record = std::make_unique<Buffer>(XLA_FFI_DataType_U8,
                                             std::vector<std::int64_t>{SIMCLR_RECORD_BYTES}, 1);
    expect_ok(h::alpha_record(stream, scratch, s.upstream->any(), s.agreed_weight->any(),
                              s.alpha->any(), s.back_record->any(), kT, reduction, G, 0, G, 0));
    const auto l = s.lse->get<float>();
    const auto al = s.alpha->get<float>();
    const auto br = s.back_record->get<unsigned char>();
    lse_all.insert(lse_all.end(), l.begin(), l.end());
    alpha_all.insert(alpha_all.end(), al.begin(), al.end());
    back_records.insert(back_records.end(), br.begin(), br.end());
  }
  Buffer lse_g(XLA_FFI_DataType_F32, {2 * G}), alpha_g(XLA_FFI_DataType_F32, {2 * G});
  lse_g.set(lse_all);
  alpha_g.set(alpha_all);
  Buffer recs(XLA_FFI_DataType_U8, {P, SIMCLR_RECORD_BYTES}, 1);
  recs.set(back_records);
  std::vector<float> grad_a, grad_b;
  for (std::int64_t r = 0; r < P; ++r) {
    DeviceState& s = dev[static_cast<std::size_t>(r)];
    s.ga = std::make_unique<Buffer>(XLA_FFI_DataType_F32, std::vector<std::int64_t>{n, d});
    s.gb = std::make_unique<Buffer>(XLA_FFI_DataType_F32, std::vector<std::int64_t>{n, d});
    TestScratch scratch;
    expect_ok(h::agree_backward(stream, scratch, recs.any(), u_global.any(), s.offset->any(),
                                s.norms->any(), lse_g.any(), alpha_g.any(), s.ga->any(),
                                s.gb->any(), kT, reduction));
    const auto a = s.ga->get<float>(), b = s.gb->get<float>();
    grad_a.insert(grad_a.end(), a.begin(), a.end());
    grad_b.insert(grad_b.end(), b.begin(), b.end());
  }
  const Reference ref = reference(za, zb, G, d, kT, static_cast<simclr_reduction>(reduction),
                                  nullptr, {1.f});
  EXPECT_LT(rel_err({static_cast<float>(total)}, ref.values), 1e-5);
  EXPECT_LT(rel_err(grad_a, ref.grad_a), 1e-5);
  EXPECT_LT(rel_err(grad_b, ref.grad_b), 1e-5);
}

TEST(JaxFfiCudaHandlers, TwoDevicesUnderShardMapMatchTheWholeBatch) { run_two_devices(-1, nullptr); }

TEST(JaxFfiCudaHandlers, BadInputOnOneDeviceFailsEveryDeviceAlike) {
  std::vector<std::string> errors;
  run_two_devices(4, &errors);
  ASSERT_EQ(errors.size(), 2u);
  EXPECT_EQ(errors[0], errors[1]);
  EXPECT_NE(errors[0].find("zb has NaN at row 4, column 3"), std::string::npos) << errors[0];
  EXPECT_NE(errors[0].find("rank 1"), std::string::npos) << errors[0];
}

TEST(JaxFfiCudaHandlers, Float64IsRefusedOnTheGpu) {
  Buffer a(XLA_FFI_DataType_F64, {2, 3}, 8), b(XLA_FFI_DataType_F64, {2, 3}, 8);
  Buffer u(XLA_FFI_DataType_F64, {4, 3}, 8), norms(XLA_FFI_DataType_F64, {4}, 8);
  const ffi::Error e = h::normalize(nullptr, a.any(), b.any(), u.any(), norms.any());
  ASSERT_TRUE(e.failure());
  EXPECT_NE(e.message().find("float32 on the GPU"), std::string::npos) << e.message();
}

}  // namespace

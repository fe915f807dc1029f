// The simclr_device_* calls of the C API against the host C API call on the same values (float32,
// and float16 inputs to check the dtype mapping), plus their argument errors. Built against the GPU
// path (run on a GPU) and against its CPU emulation (tests/emulation, run everywhere).

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "simclr/c_api.h"

namespace {

int failures = 0;

#define CHECK(cond)                                                                 \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      ++failures;                                                                   \
      std::fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
    }                                                                               \
  } while (0)

#define CHECK_STATUS(call, expected)                                                               \
  do {                                                                                             \
    const simclr_status st_ = (call);                                                              \
    if (st_ != (expected)) {                                                                       \
      ++failures;                                                                                  \
      std::fprintf(stderr, "%s:%d: %s returned %d (%s), expected %d\n", __FILE__, __LINE__, #call, \
                   static_cast<int>(st_), simclr_last_error(), static_cast<int>(expected));        \
    }                                                                                              \
  } while (0)

#define CHECK_NEAR(a, b, tol)                                                                    \
  do {                                                                                           \
    const double a_ = (a), b_ = (b);                                                             \
    if (!(std::fabs(a_ - b_) <= (tol))) {                                                        \
      ++failures;                                                                                \
      std::fprintf(stderr, "%s:%d: %s = %.9g, expected %.9g\n", __FILE__, __LINE__, #a, a_, b_); \
    }                                                                                            \
  } while (0)

void cuda_ok(cudaError_t rc, const char* what) {
  if (rc != cudaSuccess) {
    std::fprintf(stderr, "%s failed: %s\n", what, cudaGetErrorString(rc));
    ++failures;
  }
}

template <class T>
T* to_device(const std::vector<T>& host) {
  void* p = nullptr;
  cuda_ok(cudaMalloc(&p, host.size() * sizeof(T)), "cudaMalloc");
  cuda_ok(cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice),
          "cudaMemcpy");
  return static_cast<T*>(p);
}

template <class T>
std::vector<T> to_host(const T* device, std::size_t count) {
  std::vector<T> host(count);
  cuda_ok(cudaMemcpy(host.data(), device, count * sizeof(T), cudaMemcpyDeviceToHost), "cudaMemcpy");
  return host;
}

std::vector<float> inputs(std::size_t count, unsigned seed) {
  std::vector<float> x(count);
  unsigned s = seed * 2654435761u + 1u;
  for (float& v : x) {
    s = s * 1664525u + 1013904223u;
    v = static_cast<float>(static_cast<double>(s >> 8) / static_cast<double>(1u << 23) - 1.0);
  }
  return x;
}

constexpr std::int64_t kN = 9, kD = 6, kStride = 8;  // za's rows are padded to kStride

void test_float32(simclr_reduction reduction, int device) {
  // The same values on both sides: za padded (row_stride kStride), zb dense.
  std::vector<float> za = inputs(kN * kStride, 3), zb = inputs(kN * kD, 4);
  simclr_loss_t loss = nullptr;
  CHECK_STATUS(simclr_loss_create(0.5, reduction, nullptr, &loss), SIMCLR_OK);
  const bool none = reduction == SIMCLR_REDUCTION_NONE;
  const std::size_t nv = none ? kN : 1;

  // Host reference through the host C API.
  std::vector<float> hv(nv), hp(kN), hga(kN * kD), hgb(kN * kD);
  simclr_matrix ha{za.data(), kN, kD, kStride, SIMCLR_FLOAT32, -1};
  simclr_matrix hb{zb.data(), kN, kD, kD, SIMCLR_FLOAT32, -1};
  simclr_matrix hgam{hga.data(), kN, kD, kD, SIMCLR_FLOAT32, -1};
  simclr_matrix hgbm{hgb.data(), kN, kD, kD, SIMCLR_FLOAT32, -1};
  simclr_forward_t hs = nullptr;
  simclr_forward_info hinfo;
  const float one = 1.0f;
  CHECK_STATUS(simclr_forward(loss, &ha, &hb, nullptr, nullptr, hv.data(), hp.data(), &hinfo, &hs),
               SIMCLR_OK);
  CHECK_STATUS(simclr_backward(loss, hs, &one, 1, &hgam, &hgbm), SIMCLR_OK);

  // The device call.
  float* da = to_device(za);
  float* db = to_device(zb);
  float* dv = to_device(std::vector<float>(nv, -1.0f));
  float* dp = to_device(std::vector<float>(kN, -1.0f));
  float* dga = to_device(std::vector<float>(kN * kD, 0.0f));
  float* dgb = to_device(std::vector<float>(kN * kD, 0.0f));
  cudaStream_t stream = nullptr;
  cuda_ok(cudaStreamCreate(&stream), "cudaStreamCreate");
  simclr_matrix a{da, kN, kD, kStride, SIMCLR_FLOAT32, device};
  simclr_matrix b{db, kN, kD, kD, SIMCLR_FLOAT32, device};
  simclr_matrix ga{dga, kN, kD, kD, SIMCLR_FLOAT32, device};
  simclr_matrix gb{dgb, kN, kD, kD, SIMCLR_FLOAT32, device};
  simclr_forward_t ds = nullptr;
  simclr_forward_info info;
  CHECK_STATUS(simclr_device_forward(loss, &a, &b, nullptr, stream, dv, dp, &info, &ds), SIMCLR_OK);
  CHECK_STATUS(simclr_device_backward(loss, ds, 1.0f, &ga, &gb, stream), SIMCLR_OK);
  cuda_ok(cudaStreamSynchronize(stream), "cudaStreamSynchronize");

  const std::vector<float> v = to_host(dv, nv), p = to_host(dp, kN);
  const std::vector<float> gav = to_host(dga, kN * kD), gbv = to_host(dgb, kN * kD);
  for (std::size_t i = 0; i < nv; ++i) CHECK_NEAR(v[i], hv[i], 1e-5 * (1 + std::fabs(hv[i])));
  for (std::size_t i = 0; i < static_cast<std::size_t>(kN); ++i)
    CHECK_NEAR(p[i], hp[i], 1e-5 * (1 + std::fabs(hp[i])));
  for (std::size_t k = 0; k < gav.size(); ++k) {
    CHECK_NEAR(gav[k], hga[k], 1e-5);
    CHECK_NEAR(gbv[k], hgb[k], 1e-5);
  }
  CHECK(info.reduction == hinfo.reduction && info.ranks == 1 && info.rows == kN &&
        info.global_rows == kN);
  CHECK_NEAR(info.objective, hinfo.objective, 1e-5 * (1 + std::fabs(hinfo.objective)));

  // A host forward's state is refused by the device backward, and the other way round.
  CHECK_STATUS(simclr_device_backward(loss, hs, 1.0f, &ga, &gb, stream), SIMCLR_UNSUPPORTED);
  CHECK_STATUS(simclr_backward(loss, ds, &one, 1, &hgam, &hgbm), SIMCLR_UNSUPPORTED);

  simclr_forward_destroy(ds);
  simclr_forward_destroy(hs);
  cuda_ok(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  cuda_ok(cudaStreamDestroy(stream), "cudaStreamDestroy");
  for (void* q : {static_cast<void*>(da), static_cast<void*>(db), static_cast<void*>(dv),
                  static_cast<void*>(dp), static_cast<void*>(dga), static_cast<void*>(dgb)})
    cuda_ok(cudaFree(q), "cudaFree");
  simclr_loss_destroy(loss);
}

// float16 inputs (SIMCLR_FLOAT16): the host reference sees the same rounded values in float32.
void test_float16(int device) {
  std::vector<float> za = inputs(kN * kD, 5), zb = inputs(kN * kD, 6);
  std::vector<__half> za16(za.size()), zb16(zb.size());
  for (std::size_t k = 0; k < za.size(); ++k) {
    za16[k] = __float2half_rn(za[k]);
    zb16[k] = __float2half_rn(zb[k]);
    za[k] = __half2float(za16[k]);
    zb[k] = __half2float(zb16[k]);
  }
  simclr_loss_t loss = nullptr;
  CHECK_STATUS(simclr_loss_create(1.0, SIMCLR_REDUCTION_NONE, nullptr, &loss), SIMCLR_OK);
  std::vector<float> hv(kN);
  simclr_matrix ha{za.data(), kN, kD, kD, SIMCLR_FLOAT32, -1};
  simclr_matrix hb{zb.data(), kN, kD, kD, SIMCLR_FLOAT32, -1};
  CHECK_STATUS(
      simclr_forward(loss, &ha, &hb, nullptr, nullptr, hv.data(), nullptr, nullptr, nullptr),
      SIMCLR_OK);
  __half* da = to_device(za16);
  __half* db = to_device(zb16);
  __half* dv = to_device(std::vector<__half>(kN));
  simclr_matrix a{da, kN, kD, kD, SIMCLR_FLOAT16, device};
  simclr_matrix b{db, kN, kD, kD, SIMCLR_FLOAT16, device};
  CHECK_STATUS(simclr_device_forward(loss, &a, &b, nullptr, nullptr, dv, nullptr, nullptr, nullptr),
               SIMCLR_OK);
  cuda_ok(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  const std::vector<__half> v = to_host(dv, kN);
  // float16 keeps the normalised rows and the outputs: 8u/T + u|l| with u = 2^-11.
  for (std::size_t i = 0; i < static_cast<std::size_t>(kN); ++i)
    CHECK_NEAR(__half2float(v[i]), hv[i], 8 * 0x1p-11 + 0x1p-11 * std::fabs(hv[i]));
  for (void* q : {static_cast<void*>(da), static_cast<void*>(db), static_cast<void*>(dv)})
    cuda_ok(cudaFree(q), "cudaFree");
  simclr_loss_destroy(loss);
}

void test_errors(int device) {
  simclr_loss_t loss = nullptr;
  CHECK_STATUS(simclr_loss_create(0.5, SIMCLR_REDUCTION_SUM, nullptr, &loss), SIMCLR_OK);
  std::vector<double> z64(kN * kD, 0.5);
  double* d64 = to_device(z64);
  float* d32 = to_device(std::vector<float>(kN * kD, 0.5f));
  float* dv = to_device(std::vector<float>(1));
  simclr_matrix a64{d64, kN, kD, kD, SIMCLR_FLOAT64, device};
  simclr_matrix a32{d32, kN, kD, kD, SIMCLR_FLOAT32, device};
  simclr_matrix host{z64.data(), kN, kD, kD, SIMCLR_FLOAT64, -1};
  CHECK_STATUS(
      simclr_device_forward(loss, &a64, &a64, nullptr, nullptr, dv, nullptr, nullptr, nullptr),
      SIMCLR_UNSUPPORTED);
  CHECK(std::strstr(simclr_last_error(), "float64") != nullptr);
  CHECK_STATUS(
      simclr_device_forward(loss, &host, &host, nullptr, nullptr, dv, nullptr, nullptr, nullptr),
      SIMCLR_UNSUPPORTED);
  CHECK_STATUS(
      simclr_device_forward(loss, &a32, &a64, nullptr, nullptr, dv, nullptr, nullptr, nullptr),
      SIMCLR_UNSUPPORTED);
  simclr_comm_t comm = nullptr;
  CHECK_STATUS(simclr_comm_create_single(&comm), SIMCLR_OK);
  simclr_call_options options;
  simclr_call_options_init(&options);
  options.comm = comm;
  CHECK_STATUS(
      simclr_device_forward(loss, &a32, &a32, &options, nullptr, dv, nullptr, nullptr, nullptr),
      SIMCLR_UNSUPPORTED);
  CHECK_STATUS(
      simclr_device_forward(loss, &a32, &a32, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr),
      SIMCLR_VALUE_ERROR);
  simclr_matrix other = a32;
  other.device = device + 1;
  CHECK_STATUS(
      simclr_device_forward(loss, &a32, &other, nullptr, nullptr, dv, nullptr, nullptr, nullptr),
      SIMCLR_VALUE_ERROR);
  simclr_comm_destroy(comm);
  for (void* q : {static_cast<void*>(d64), static_cast<void*>(d32), static_cast<void*>(dv)})
    cuda_ok(cudaFree(q), "cudaFree");
  simclr_loss_destroy(loss);
}

// The asynchronous calls with a caller workspace against the host call; the status array at the
// start of the workspace reports a NaN without a synchronisation inside the call.
void test_async(int device) {
  std::vector<float> za = inputs(kN * kD, 7), zb = inputs(kN * kD, 8);
  simclr_loss_t loss = nullptr;
  CHECK_STATUS(simclr_loss_create(0.3, SIMCLR_REDUCTION_SUM, nullptr, &loss), SIMCLR_OK);
  std::vector<float> hv(1), hga(kN * kD), hgb(kN * kD);
  simclr_matrix ha{za.data(), kN, kD, kD, SIMCLR_FLOAT32, -1};
  simclr_matrix hb{zb.data(), kN, kD, kD, SIMCLR_FLOAT32, -1};
  simclr_matrix hgam{hga.data(), kN, kD, kD, SIMCLR_FLOAT32, -1};
  simclr_matrix hgbm{hgb.data(), kN, kD, kD, SIMCLR_FLOAT32, -1};
  simclr_forward_t hs = nullptr;
  const float one = 1.0f;
  CHECK_STATUS(simclr_forward(loss, &ha, &hb, nullptr, nullptr, hv.data(), nullptr, nullptr, &hs),
               SIMCLR_OK);
  CHECK_STATUS(simclr_backward(loss, hs, &one, 1, &hgam, &hgbm), SIMCLR_OK);

  std::size_t fbytes = 0, bbytes = 0;
  CHECK_STATUS(simclr_device_workspace_size(kN, kN, kD, SIMCLR_FLOAT32, nullptr, &fbytes, &bbytes),
               SIMCLR_OK);
  CHECK(fbytes >= 2 * kN * kD * sizeof(float) && bbytes >= 2 * kN * kD * sizeof(float));
  CHECK_STATUS(simclr_device_workspace_size(kN, kN, kD, SIMCLR_FLOAT64, nullptr, &fbytes, &bbytes),
               SIMCLR_UNSUPPORTED);
  CHECK_STATUS(simclr_device_workspace_size(kN, kN, kD, SIMCLR_FLOAT32, nullptr, &fbytes, &bbytes),
               SIMCLR_OK);
  void* fws = nullptr;
  void* bws = nullptr;
  cuda_ok(cudaMalloc(&fws, fbytes), "cudaMalloc");
  cuda_ok(cudaMalloc(&bws, bbytes), "cudaMalloc");
  float* da = to_device(za);
  float* db = to_device(zb);
  float* dv = to_device(std::vector<float>(1, -1.0f));
  float* dobj = to_device(std::vector<float>(1, -1.0f));
  float* dga = to_device(std::vector<float>(kN * kD, 0.0f));
  float* dgb = to_device(std::vector<float>(kN * kD, 0.0f));
  cudaStream_t stream = nullptr;
  cuda_ok(cudaStreamCreate(&stream), "cudaStreamCreate");
  simclr_matrix a{da, kN, kD, kD, SIMCLR_FLOAT32, device};
  simclr_matrix b{db, kN, kD, kD, SIMCLR_FLOAT32, device};
  simclr_matrix ga{dga, kN, kD, kD, SIMCLR_FLOAT32, device};
  simclr_matrix gb{dgb, kN, kD, kD, SIMCLR_FLOAT32, device};
  simclr_device_call fcall, bcall;
  simclr_device_call_init(&fcall);
  simclr_device_call_init(&bcall);
  fcall.async = bcall.async = 1;
  fcall.workspace = fws;
  fcall.workspace_size = fbytes;
  bcall.workspace = bws;
  bcall.workspace_size = bbytes;
  simclr_forward_t ds = nullptr;
  simclr_forward_info info;
  CHECK_STATUS(simclr_device_forward_async(loss, &a, &b, nullptr, &fcall, stream, dv, nullptr, dobj,
                                           &info, &ds),
               SIMCLR_OK);
  CHECK(std::isnan(info.objective) && info.rows == kN);
  CHECK(simclr_device_status(ds) == fws);  // the status array opens the workspace
  CHECK(simclr_device_status(hs) == nullptr);
  CHECK_STATUS(simclr_device_backward_async(loss, ds, 1.0f, nullptr, &ga, &gb, &bcall, stream),
               SIMCLR_OK);
  cuda_ok(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  CHECK_NEAR(to_host(dv, 1)[0], hv[0], 1e-5 * (1 + std::fabs(hv[0])));
  CHECK_NEAR(to_host(dobj, 1)[0], hv[0], 1e-5 * (1 + std::fabs(hv[0])));
  const std::vector<float> gav = to_host(dga, kN * kD), gbv = to_host(dgb, kN * kD);
  for (std::size_t k = 0; k < gav.size(); ++k) {
    CHECK_NEAR(gav[k], hga[k], 1e-5);
    CHECK_NEAR(gbv[k], hgb[k], 1e-5);
  }
  std::vector<std::uint64_t> status =
      to_host(static_cast<const std::uint64_t*>(fws), SIMCLR_DEVICE_STATUS_SLOTS);
  for (std::uint64_t v : status) CHECK(v == UINT64_MAX);
  simclr_forward_destroy(ds);

  // A NaN in zb at row 2, column 3: no error from the call, the index in slot 1.
  std::vector<float> bad = zb;
  bad[2 * kD + 3] = std::nanf("");
  float* dbad = to_device(bad);
  simclr_matrix nb{dbad, kN, kD, kD, SIMCLR_FLOAT32, device};
  CHECK_STATUS(simclr_device_forward_async(loss, &a, &nb, nullptr, &fcall, stream, dv, nullptr,
                                           nullptr, nullptr, nullptr),
               SIMCLR_OK);
  cuda_ok(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  status = to_host(static_cast<const std::uint64_t*>(fws), SIMCLR_DEVICE_STATUS_SLOTS);
  CHECK(status[0] == UINT64_MAX && status[1] == static_cast<std::uint64_t>(2 * kD + 3));
  // The checked mode raises instead; a workspace too small is refused.
  fcall.async = 0;
  CHECK_STATUS(simclr_device_forward_async(loss, &a, &nb, nullptr, &fcall, stream, dv, nullptr,
                                           nullptr, nullptr, nullptr),
               SIMCLR_VALUE_ERROR);
  CHECK(std::strstr(simclr_last_error(), "zb has NaN at row 2, column 3") != nullptr);
  fcall.workspace_size = fbytes / 2;  // the query is an upper bound: outputs may live elsewhere
  CHECK_STATUS(simclr_device_forward_async(loss, &a, &b, nullptr, &fcall, stream, dv, nullptr,
                                           nullptr, nullptr, nullptr),
               SIMCLR_VALUE_ERROR);

  simclr_forward_destroy(hs);
  cuda_ok(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  cuda_ok(cudaStreamDestroy(stream), "cudaStreamDestroy");
  for (void* q : {fws, bws, static_cast<void*>(da), static_cast<void*>(db), static_cast<void*>(dv),
                  static_cast<void*>(dobj), static_cast<void*>(dga), static_cast<void*>(dgb),
                  static_cast<void*>(dbad)})
    cuda_ok(cudaFree(q), "cudaFree");
  simclr_loss_destroy(loss);
}

}  // namespace

int main() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("no CUDA device visible\n");
    return 0;
  }
  int device = 0;
  cuda_ok(cudaGetDevice(&device), "cudaGetDevice");
  test_float32(SIMCLR_REDUCTION_NONE, device);
  test_float32(SIMCLR_REDUCTION_SUM_OVER_BATCH_SIZE, device);
  test_float16(device);
  test_errors(device);
  test_async(device);
  if (failures != 0) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("simclr device C API: all checks passed\n");
  return 0;
}

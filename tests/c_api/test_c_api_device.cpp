// The simclr_device_* calls of the C API against the host C API call on the same values (float32,
// and float16 inputs to check the dtype mapping), plus their argument errors; and the distributed
// device calls through a callback device communicator whose ranks are threads of this process,
// against the whole batch in one process. Built against the GPU path (run on a GPU) and against its
// CPU emulation (tests/emulation, run everywhere; SIMCLR_TEST_EMULATION also checks the
// asynchronous contract through the emulation's call counts).

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "simclr/c_api.h"
#ifdef SIMCLR_TEST_EMULATION
#include "emulation.hpp"
#endif

namespace {

int failures = 0;
std::mutex failures_mutex;  // the distributed tests check from one thread per rank

void count_failure() {
  std::lock_guard<std::mutex> lock(failures_mutex);
  ++failures;
}

#define CHECK(cond)                                                                 \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      count_failure();                                                              \
      std::fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
    }                                                                               \
  } while (0)

#define CHECK_STATUS(call, expected)                                                               \
  do {                                                                                             \
    const simclr_status st_ = (call);                                                              \
    if (st_ != (expected)) {                                                                       \
      count_failure();                                                                             \
      std::fprintf(stderr, "%s:%d: %s returned %d (%s), expected %d\n", __FILE__, __LINE__, #call, \
                   static_cast<int>(st_), simclr_last_error(), static_cast<int>(expected));        \
    }                                                                                              \
  } while (0)

#define CHECK_NEAR(a, b, tol)                                                                    \
  do {                                                                                           \
    const double a_ = (a), b_ = (b);                                                             \
    if (!(std::fabs(a_ - b_) <= (tol))) {                                                        \
      count_failure();                                                                           \
      std::fprintf(stderr, "%s:%d: %s = %.9g, expected %.9g\n", __FILE__, __LINE__, #a, a_, b_); \
    }                                                                                            \
  } while (0)

void cuda_ok(cudaError_t rc, const char* what) {
  if (rc != cudaSuccess) {
    std::fprintf(stderr, "%s failed: %s\n", what, cudaGetErrorString(rc));
    count_failure();
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
  // A call's own temperature and dJ/dT are host calls only (docs/gpu.md, "Not done yet").
  for (int which = 0; which < 2; ++which) {
    simclr_call_options t_options;
    simclr_call_options_init(&t_options);
    if (which == 0) {
      t_options.use_temperature = 1;
      t_options.temperature = 0.3;
    } else {
      t_options.temperature_gradient = 1;
    }
    CHECK_STATUS(simclr_device_forward(loss, &a32, &a32, &t_options, nullptr, dv, nullptr, nullptr,
                                       nullptr),
                 SIMCLR_UNSUPPORTED);
    CHECK(std::strstr(simclr_last_error(), "use_temperature and temperature_gradient") != nullptr);
  }
  // Extra negatives too, in both forms (a host matrix, rows inside u_global).
  for (int which = 0; which < 2; ++which) {
    simclr_call_options n_options;
    simclr_call_options_init(&n_options);
    simclr_matrix bank = a32;
    if (which == 0)
      n_options.negatives = &bank;
    else
      n_options.negative_rows = 2;
    CHECK_STATUS(simclr_device_forward(loss, &a32, &a32, &n_options, nullptr, dv, nullptr, nullptr,
                                       nullptr),
                 SIMCLR_UNSUPPORTED);
    CHECK(std::strstr(simclr_last_error(), "negatives and negative_rows") != nullptr);
  }
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

  // The forward's workspace split (simclr_device_call.scratch): the saved state alone is kept, the
  // scratch is freed before the backward, which still gives the host call's gradients.
  {
    std::size_t saved_bytes = 0;
    CHECK_STATUS(simclr_device_forward_saved_size(kN, kN, kD, SIMCLR_FLOAT32, nullptr, &saved_bytes),
                 SIMCLR_OK);
    CHECK(saved_bytes >= 2 * kN * kD * sizeof(float) && saved_bytes < fbytes);
    void* kept = nullptr;
    void* scratch = nullptr;
    cuda_ok(cudaMalloc(&kept, saved_bytes), "cudaMalloc");
    cuda_ok(cudaMalloc(&scratch, fbytes - saved_bytes), "cudaMalloc");
    simclr_device_call split = fcall;
    split.workspace = kept;
    split.workspace_size = saved_bytes;
    split.scratch = scratch;
    split.scratch_size = fbytes - saved_bytes - 1;  // one byte short: refused
    CHECK_STATUS(simclr_device_forward_async(loss, &a, &b, nullptr, &split, stream, dv, nullptr,
                                             dobj, nullptr, &ds),
                 SIMCLR_VALUE_ERROR);
    split.scratch_size = fbytes - saved_bytes;
    CHECK_STATUS(simclr_device_forward_async(loss, &a, &b, nullptr, &split, stream, dv, nullptr,
                                             dobj, nullptr, &ds),
                 SIMCLR_OK);
    CHECK(simclr_device_status(ds) == kept);
    cuda_ok(cudaFree(scratch), "cudaFree");
    cuda_ok(cudaMemsetAsync(dga, 0, kN * kD * sizeof(float), stream), "cudaMemsetAsync");
    CHECK_STATUS(simclr_device_backward_async(loss, ds, 1.0f, nullptr, &ga, &gb, &bcall, stream),
                 SIMCLR_OK);
    cuda_ok(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    CHECK_NEAR(to_host(dv, 1)[0], hv[0], 1e-5 * (1 + std::fabs(hv[0])));
    const std::vector<float> gsplit = to_host(dga, kN * kD);
    for (std::size_t k = 0; k < gsplit.size(); ++k) CHECK_NEAR(gsplit[k], hga[k], 1e-5);
    simclr_forward_destroy(ds);
    cuda_ok(cudaFree(kept), "cudaFree");
  }

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

// ---- distributed device calls: ranks are threads of this process ----

// The ranks of a distributed test meet at a barrier; a collective publishes each rank's send
// buffer, and every rank copies the parts it needs between two barriers (the senders' buffers stay
// valid until the second).
class ThreadGroup {
 public:
  explicit ThreadGroup(int size)
      : size_(size),
        sends_(static_cast<std::size_t>(size)),
        bytes_(static_cast<std::size_t>(size)) {}
  int size() const { return size_; }

  void barrier() {
    std::unique_lock<std::mutex> lock(mutex_);
    const long generation = generation_;
    if (++arrived_ == size_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return generation_ != generation; });
    }
  }

  // copy(sends, bytes) runs on every rank once every rank has published its part.
  void exchange(int rank, const void* send, std::size_t bytes,
                const std::function<void(const std::vector<const void*>&,
                                         const std::vector<std::size_t>&)>& copy) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      sends_[static_cast<std::size_t>(rank)] = send;
      bytes_[static_cast<std::size_t>(rank)] = bytes;
    }
    barrier();
    copy(sends_, bytes_);
    barrier();
  }

  // Runs body(rank) on one thread per rank.
  void run(const std::function<void(int)>& body) {
    std::vector<std::thread> threads;
    for (int r = 0; r < size_; ++r) threads.emplace_back(body, r);
    for (std::thread& t : threads) t.join();
  }

 private:
  int size_;
  std::mutex mutex_;
  std::condition_variable cv_;
  int arrived_ = 0;
  long generation_ = 0;
  std::vector<const void*> sends_;
  std::vector<std::size_t> bytes_;
};

// The user data of one rank's callbacks.
struct RankComm {
  ThreadGroup* group = nullptr;
  int rank = 0;
  bool fail_device = false;  // all_gather_v reports a transport failure
  int* releases = nullptr;   // counts release calls
  int host_gathers = 0;      // host_all_gather calls (the agreement records)
};

int device_all_gather_v(void* user, const void* send, std::size_t send_bytes, void* recv,
                        const std::size_t* recv_bytes, void* cuda_stream, char* error,
                        std::size_t error_capacity) {
  auto* u = static_cast<RankComm*>(user);
  if (u->fail_device) {
    std::snprintf(error, error_capacity, "test transport down on rank %d", u->rank);
    return 7;
  }
  const auto stream = static_cast<cudaStream_t>(cuda_stream);
#ifndef SIMCLR_TEST_EMULATION
  // On a GPU the other ranks read `send` from their threads: this rank's stream must have written
  // it. (The emulation runs every call synchronously, so there the callbacks never synchronise and
  // the asynchronous test counts only the library's synchronisations.)
  if (cudaStreamSynchronize(stream) != cudaSuccess) return 2;
#endif
  int rc = 0;
  u->group->exchange(
      u->rank, send, send_bytes,
      [&](const std::vector<const void*>& sends, const std::vector<std::size_t>& bytes) {
        char* out = static_cast<char*>(recv);
        for (std::size_t r = 0; r < sends.size(); ++r) {
          if (bytes[r] != recv_bytes[r]) {
            std::snprintf(error, error_capacity, "rank %zu sent %zu bytes but the counts say %zu",
                          r, bytes[r], recv_bytes[r]);
            rc = 1;
          } else if (bytes[r] > 0 &&
                     cudaMemcpyAsync(out, sends[r], bytes[r], cudaMemcpyDeviceToDevice, stream) !=
                         cudaSuccess) {
            std::snprintf(error, error_capacity, "cudaMemcpyAsync failed");
            rc = 3;
          }
          out += recv_bytes[r];
        }
#ifndef SIMCLR_TEST_EMULATION
        if (cudaStreamSynchronize(stream) != cudaSuccess) rc = 2;  // before the senders go on
#endif
      });
  return rc;
}

int host_all_gather(void* user, const void* send, std::size_t bytes, void* recv, char*,
                    std::size_t) {
  auto* u = static_cast<RankComm*>(user);
  ++u->host_gathers;
  u->group->exchange(u->rank, send, bytes,
                     [&](const std::vector<const void*>& sends, const std::vector<std::size_t>&) {
                       for (std::size_t r = 0; r < sends.size(); ++r)
                         std::memcpy(static_cast<char*>(recv) + r * bytes, sends[r], bytes);
                     });
  return 0;
}

void release(void* user) { ++*static_cast<RankComm*>(user)->releases; }

simclr_comm_t make_device_comm(RankComm& user) {
  simclr_device_comm_callbacks cb;
  std::memset(&cb, 0, sizeof(cb));
  cb.user = &user;
  cb.rank = user.rank;
  cb.size = user.group->size();
  cb.all_gather_v = device_all_gather_v;
  cb.host_all_gather = host_all_gather;
  cb.release = release;
  simclr_comm_t comm = nullptr;
  CHECK_STATUS(simclr_comm_create_device_callbacks(&cb, "test threads", &comm), SIMCLR_OK);
  return comm;
}

// The whole batch of G pairs through the host C API in one process: the reference of every rank.
struct WholeBatch {
  std::int64_t rows = 0;
  std::vector<float> za, zb;
  std::vector<double> weight;         // empty: unweighted
  std::vector<float> per_example;     // [G], unweighted
  double total = 0;                   // the reduced loss (or, for none, the sum)
  std::vector<float> grad_a, grad_b;  // of the loss with upstream 1 ([G, D])
};

WholeBatch whole_batch(std::int64_t rows, simclr_reduction reduction, bool weighted) {
  WholeBatch w;
  w.rows = rows;
  w.za = inputs(static_cast<std::size_t>(rows * kD), 11);
  w.zb = inputs(static_cast<std::size_t>(rows * kD), 12);
  if (weighted)
    for (std::int64_t i = 0; i < rows; ++i)
      w.weight.push_back(0.5 + 0.25 * static_cast<double>(i % 3));
  simclr_loss_t loss = nullptr;
  CHECK_STATUS(simclr_loss_create(0.4, reduction, nullptr, &loss), SIMCLR_OK);
  const bool none = reduction == SIMCLR_REDUCTION_NONE;
  std::vector<float> values(none ? static_cast<std::size_t>(rows) : 1);
  w.per_example.resize(static_cast<std::size_t>(rows));
  w.grad_a.resize(w.za.size());
  w.grad_b.resize(w.zb.size());
  simclr_matrix a{w.za.data(), rows, kD, kD, SIMCLR_FLOAT32, -1};
  simclr_matrix b{w.zb.data(), rows, kD, kD, SIMCLR_FLOAT32, -1};
  simclr_matrix ga{w.grad_a.data(), rows, kD, kD, SIMCLR_FLOAT32, -1};
  simclr_matrix gb{w.grad_b.data(), rows, kD, kD, SIMCLR_FLOAT32, -1};
  simclr_weight sw{w.weight.data(), 1, 0, {rows, 0}};
  simclr_forward_t saved = nullptr;
  simclr_forward_info info;
  const float one = 1.0f;
  CHECK_STATUS(simclr_forward(loss, &a, &b, weighted ? &sw : nullptr, nullptr, values.data(),
                              w.per_example.data(), &info, &saved),
               SIMCLR_OK);
  CHECK_STATUS(simclr_backward(loss, saved, &one, 1, &ga, &gb), SIMCLR_OK);
  w.total = info.objective;
  simclr_forward_destroy(saved);
  simclr_loss_destroy(loss);
  return w;
}

std::vector<std::int64_t> offsets_of(const std::vector<std::int64_t>& split) {
  std::vector<std::int64_t> offsets(split.size(), 0);
  for (std::size_t r = 1; r < split.size(); ++r) offsets[r] = offsets[r - 1] + split[r - 1];
  return offsets;
}

// One rank's device buffers: its rows of the whole batch, outputs and gradients (at least one
// element each, so an empty rank has valid pointers).
struct RankBuffers {
  float *za, *zb, *values, *per_example, *objective, *grad_a, *grad_b, *weight;
  RankBuffers(const WholeBatch& w, std::int64_t offset, std::int64_t n) {
    const auto begin = static_cast<std::size_t>(offset * kD),
               end = static_cast<std::size_t>((offset + n) * kD);
    std::vector<float> a(w.za.begin() + begin, w.za.begin() + end),
        b(w.zb.begin() + begin, w.zb.begin() + end);
    a.resize(std::max<std::size_t>(a.size(), 1));
    b.resize(std::max<std::size_t>(b.size(), 1));
    std::vector<float> wt(std::max<std::int64_t>(n, 1), 1.0f);
    for (std::int64_t i = 0; i < n && !w.weight.empty(); ++i)
      wt[static_cast<std::size_t>(i)] =
          static_cast<float>(w.weight[static_cast<std::size_t>(offset + i)]);
    const std::size_t rows = static_cast<std::size_t>(std::max<std::int64_t>(n, 1));
    za = to_device(a);
    zb = to_device(b);
    weight = to_device(wt);
    values = to_device(std::vector<float>(rows, -1.0f));
    per_example = to_device(std::vector<float>(rows, -1.0f));
    objective = to_device(std::vector<float>(1, -1.0f));
    grad_a = to_device(std::vector<float>(rows * kD, 0.0f));
    grad_b = to_device(std::vector<float>(rows * kD, 0.0f));
  }
  ~RankBuffers() {
    for (float* p : {za, zb, values, per_example, objective, grad_a, grad_b, weight}) cudaFree(p);
  }
  RankBuffers(const RankBuffers&) = delete;
  RankBuffers& operator=(const RankBuffers&) = delete;
};

// Every rank's outputs against the whole batch: values, per-example losses and gradient rows. The
// float32 tolerance as the local device test's: both sides are float32 sums of O(G) terms.
void check_rank(const WholeBatch& w, simclr_reduction reduction, std::int64_t offset,
                std::int64_t n, const RankBuffers& buf, double* rank_value) {
  const auto o = static_cast<std::size_t>(offset);
  const auto rows = static_cast<std::size_t>(n);
  const std::vector<float> p = to_host(buf.per_example, rows);
  double weighted_sum = 0;
  for (std::size_t i = 0; i < rows; ++i) {
    CHECK_NEAR(p[i], w.per_example[o + i], 1e-5 * (1 + std::fabs(w.per_example[o + i])));
    weighted_sum += (w.weight.empty() ? 1.0 : w.weight[o + i]) * w.per_example[o + i];
  }
  if (reduction == SIMCLR_REDUCTION_NONE) {
    const std::vector<float> v = to_host(buf.values, rows);
    for (std::size_t i = 0; i < rows; ++i) {
      const double expect = (w.weight.empty() ? 1.0 : w.weight[o + i]) * w.per_example[o + i];
      CHECK_NEAR(v[i], expect, 1e-5 * (1 + std::fabs(expect)));
    }
    *rank_value = weighted_sum;
  } else {
    const double expect = reduction == SIMCLR_REDUCTION_SUM
                              ? weighted_sum
                              : weighted_sum / static_cast<double>(w.rows);
    const float v = to_host(buf.values, 1)[0];
    CHECK_NEAR(v, expect, 1e-5 * (1 + std::fabs(expect)));
    *rank_value = v;
  }
  const std::vector<float> ga = to_host(buf.grad_a, rows * kD), gb = to_host(buf.grad_b, rows * kD);
  for (std::size_t k = 0; k < rows * kD; ++k) {
    CHECK_NEAR(ga[k], w.grad_a[o * kD + k], 1e-5);
    CHECK_NEAR(gb[k], w.grad_b[o * kD + k], 1e-5);
  }
}

// The checked calls (simclr_device_forward, or with a weight simclr_device_forward_async in the
// checked mode) at the given split of G rows over ranks, sum_over_batch_size dividing by the
// inferred G, against the whole batch.
void test_distributed(const std::vector<std::int64_t>& split, simclr_reduction reduction,
                      bool weighted, int device) {
  const std::int64_t total = std::accumulate(split.begin(), split.end(), std::int64_t{0});
  const WholeBatch w = whole_batch(total, reduction, weighted);
  const std::vector<std::int64_t> offsets = offsets_of(split);
  ThreadGroup group(static_cast<int>(split.size()));
  std::vector<double> rank_values(split.size(), 0.0);
  int releases = 0;
  std::mutex releases_mutex;
  group.run([&](int rank) {
    const auto r = static_cast<std::size_t>(rank);
    cuda_ok(cudaSetDevice(device), "cudaSetDevice");
    const std::int64_t n = split[r];
    int released = 0;
    RankComm user{&group, rank, false, &released};
    simclr_comm_t comm = make_device_comm(user);
    CHECK(simclr_comm_is_device(comm) == 1 && simclr_comm_rank(comm) == rank &&
          simclr_comm_size(comm) == group.size());
    simclr_loss_t loss = nullptr;  // one per rank: a loss serves one host thread at a time
    CHECK_STATUS(simclr_loss_create(0.4, reduction, nullptr, &loss), SIMCLR_OK);
    {
      RankBuffers buf(w, offsets[r], n);
      simclr_matrix a{buf.za, n, kD, kD, SIMCLR_FLOAT32, device};
      simclr_matrix b{buf.zb, n, kD, kD, SIMCLR_FLOAT32, device};
      simclr_matrix ga{buf.grad_a, n, kD, kD, SIMCLR_FLOAT32, device};
      simclr_matrix gb{buf.grad_b, n, kD, kD, SIMCLR_FLOAT32, device};
      simclr_call_options options;
      simclr_call_options_init(&options);
      options.comm = comm;
      options.global_batch_size = SIMCLR_GLOBAL_BATCH_INFER;
      simclr_forward_t saved = nullptr;
      simclr_forward_info info;
      if (weighted) {
        simclr_device_call call;
        simclr_device_call_init(&call);
        call.weight = buf.weight;
        call.weight_size = n;
        CHECK_STATUS(simclr_device_forward_async(loss, &a, &b, &options, &call, nullptr, buf.values,
                                                 buf.per_example, nullptr, &info, &saved),
                     SIMCLR_OK);
      } else {
        CHECK_STATUS(simclr_device_forward(loss, &a, &b, &options, nullptr, buf.values,
                                           buf.per_example, &info, &saved),
                     SIMCLR_OK);
      }
      CHECK(info.ranks == group.size() && info.rows == n && info.row_offset == offsets[r] &&
            info.global_rows == total);
      std::vector<std::int64_t> rows(split.size(), -1);
      CHECK(simclr_forward_rank_rows(saved, rows.data(), static_cast<std::int32_t>(rows.size())) ==
                group.size() &&
            rows == split);
      CHECK_STATUS(simclr_device_backward(loss, saved, 1.0f, &ga, &gb, nullptr), SIMCLR_OK);
      cuda_ok(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
      check_rank(w, reduction, offsets[r], n, buf, &rank_values[r]);
      simclr_forward_destroy(saved);
    }
    simclr_loss_destroy(loss);
    simclr_comm_destroy(comm);
    CHECK(released == 1);
    std::lock_guard<std::mutex> lock(releases_mutex);
    releases += released;
  });
  CHECK(releases == group.size());
  // The ranks' losses add up to the whole batch's (for none: the sums of the weighted examples).
  const double sum = std::accumulate(rank_values.begin(), rank_values.end(), 0.0);
  CHECK_NEAR(sum, w.total, 1e-5 * (1 + std::fabs(w.total)));
}

// The asynchronous calls at 3 ranks (one empty), each with its own stream and cuBLAS handle, a
// weight and workspaces sized for the distributed call: the results match the whole batch, the
// status arrays are clean and, on the emulation, the calls made no host synchronisation and no
// device allocation. The forward's workspace is split (simclr_device_call.scratch, freed before the
// backward), and each call gathers the agreement records once (host_all_gather).
void test_distributed_async(int device) {
  const std::vector<std::int64_t> split{4, 0, 5};
  const std::int64_t total = 9;
  const simclr_reduction reduction = SIMCLR_REDUCTION_SUM_OVER_BATCH_SIZE;
  const WholeBatch w = whole_batch(total, reduction, true);
  const std::vector<std::int64_t> offsets = offsets_of(split);
  ThreadGroup group(3);
  std::vector<double> rank_values(3, 0.0);
  long host_syncs = -1, allocations = -1;
  group.run([&](int rank) {
    const auto r = static_cast<std::size_t>(rank);
    cuda_ok(cudaSetDevice(device), "cudaSetDevice");
    const std::int64_t n = split[r];
    int released = 0;
    RankComm user{&group, rank, false, &released};
    simclr_comm_t comm = make_device_comm(user);
    simclr_loss_t loss = nullptr;
    CHECK_STATUS(simclr_loss_create(0.4, reduction, nullptr, &loss), SIMCLR_OK);
    cudaStream_t stream = nullptr;
    cuda_ok(cudaStreamCreate(&stream), "cudaStreamCreate");
    cublasHandle_t blas = nullptr;
    CHECK(cublasCreate(&blas) == CUBLAS_STATUS_SUCCESS);
    {
      RankBuffers buf(w, offsets[r], n);
      simclr_call_options options;
      simclr_call_options_init(&options);
      options.comm = comm;
      options.global_batch_size = SIMCLR_GLOBAL_BATCH_INFER;
      std::size_t fbytes = 0, bbytes = 0, local_f = 0;
      CHECK_STATUS(
          simclr_device_workspace_size(n, total, kD, SIMCLR_FLOAT32, &options, &fbytes, &bbytes),
          SIMCLR_OK);
      CHECK_STATUS(
          simclr_device_workspace_size(n, total, kD, SIMCLR_FLOAT32, nullptr, &local_f, nullptr),
          SIMCLR_OK);
      CHECK(fbytes > local_f);  // a distributed call stages its own rows before the gather
      std::size_t saved_bytes = 0;
      CHECK_STATUS(simclr_device_forward_saved_size(n, total, kD, SIMCLR_FLOAT32, &options,
                                                    &saved_bytes),
                   SIMCLR_OK);
      CHECK(n == 0 ? saved_bytes <= fbytes : saved_bytes < fbytes);  // no tile without rows
      void* fws = nullptr;
      void* bws = nullptr;
      void* scratch = nullptr;
      cuda_ok(cudaMalloc(&fws, saved_bytes), "cudaMalloc");
      cuda_ok(cudaMalloc(&scratch, fbytes - saved_bytes), "cudaMalloc");
      cuda_ok(cudaMalloc(&bws, bbytes), "cudaMalloc");
      simclr_matrix a{buf.za, n, kD, kD, SIMCLR_FLOAT32, device};
      simclr_matrix b{buf.zb, n, kD, kD, SIMCLR_FLOAT32, device};
      simclr_matrix ga{buf.grad_a, n, kD, kD, SIMCLR_FLOAT32, device};
      simclr_matrix gb{buf.grad_b, n, kD, kD, SIMCLR_FLOAT32, device};
      simclr_device_call fcall, bcall;
      simclr_device_call_init(&fcall);
      simclr_device_call_init(&bcall);
      fcall.async = bcall.async = 1;
      fcall.workspace = fws;
      fcall.workspace_size = saved_bytes;
      fcall.scratch = scratch;
      fcall.scratch_size = fbytes - saved_bytes;
      fcall.cublas_handle = bcall.cublas_handle = blas;
      fcall.weight = buf.weight;
      fcall.weight_size = n;
      bcall.workspace = bws;
      bcall.workspace_size = bbytes;
      cuda_ok(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
      group.barrier();
#ifdef SIMCLR_TEST_EMULATION
      if (rank == 0) simclr::cuda::emu::reset_call_counts();
#endif
      group.barrier();
      simclr_forward_t saved = nullptr;
      simclr_forward_info info;
      CHECK_STATUS(simclr_device_forward_async(loss, &a, &b, &options, &fcall, stream, buf.values,
                                               buf.per_example, buf.objective, &info, &saved),
                   SIMCLR_OK);
      CHECK(std::isnan(info.objective) && info.ranks == 3 && info.global_rows == total);
      CHECK(simclr_device_status(saved) == fws);
      CHECK(user.host_gathers == 1);  // the forward's agreement
      // The scratch goes back in stream order, before the backward is enqueued.
      cuda_ok(cudaFreeAsync(scratch, stream), "cudaFreeAsync");
      scratch = nullptr;
      CHECK_STATUS(
          simclr_device_backward_async(loss, saved, 1.0f, nullptr, &ga, &gb, &bcall, stream),
          SIMCLR_OK);
      CHECK(user.host_gathers == 2);  // and the backward's
      group.barrier();
#ifdef SIMCLR_TEST_EMULATION
      if (rank == 0) {
        host_syncs = simclr::cuda::emu::call_counts().host_syncs;
        allocations = simclr::cuda::emu::call_counts().allocations;
      }
#endif
      group.barrier();
      cuda_ok(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
      check_rank(w, reduction, offsets[r], n, buf, &rank_values[r]);
      CHECK_NEAR(to_host(buf.objective, 1)[0], rank_values[r],
                 1e-5 * (1 + std::fabs(rank_values[r])));
      for (std::uint64_t v :
           to_host(static_cast<const std::uint64_t*>(fws), SIMCLR_DEVICE_STATUS_SLOTS))
        CHECK(v == UINT64_MAX);
      simclr_forward_destroy(saved);
      cuda_ok(cudaFree(fws), "cudaFree");
      cuda_ok(cudaFree(bws), "cudaFree");
    }
    CHECK(cublasDestroy(blas) == CUBLAS_STATUS_SUCCESS);
    cuda_ok(cudaStreamDestroy(stream), "cudaStreamDestroy");
    simclr_loss_destroy(loss);
    simclr_comm_destroy(comm);
  });
  const double sum = std::accumulate(rank_values.begin(), rank_values.end(), 0.0);
  CHECK_NEAR(sum, w.total, 1e-5 * (1 + std::fabs(w.total)));
#ifdef SIMCLR_TEST_EMULATION
  CHECK(host_syncs == 0);
  CHECK(allocations == 0);
#else
  (void)host_syncs;
  (void)allocations;
#endif
}

// Bad input on one rank fails on every rank with the same status and message: a NaN found by the
// device loss, a C-level argument error of the forward and one of the backward. A transport failure
// in a callback is a COMM_ERROR with its message; the communicator kinds are not interchangeable.
void test_distributed_errors(int device) {
  const std::vector<std::int64_t> split{3, 2, 4};
  const WholeBatch w = whole_batch(9, SIMCLR_REDUCTION_SUM, false);
  const std::vector<std::int64_t> offsets = offsets_of(split);
  ThreadGroup group(3);
  std::vector<std::string> nan_msg(3), dtype_msg(3), grad_msg(3), comm_msg(3);
  group.run([&](int rank) {
    const auto r = static_cast<std::size_t>(rank);
    cuda_ok(cudaSetDevice(device), "cudaSetDevice");
    const std::int64_t n = split[r];
    int released = 0;
    RankComm user{&group, rank, false, &released};
    simclr_comm_t comm = make_device_comm(user);
    simclr_loss_t loss = nullptr;
    CHECK_STATUS(simclr_loss_create(0.4, SIMCLR_REDUCTION_SUM, nullptr, &loss), SIMCLR_OK);
    RankBuffers buf(w, offsets[r], n);
    simclr_matrix a{buf.za, n, kD, kD, SIMCLR_FLOAT32, device};
    simclr_matrix b{buf.zb, n, kD, kD, SIMCLR_FLOAT32, device};
    simclr_matrix ga{buf.grad_a, n, kD, kD, SIMCLR_FLOAT32, device};
    simclr_matrix gb{buf.grad_b, n, kD, kD, SIMCLR_FLOAT32, device};
    simclr_call_options options;
    simclr_call_options_init(&options);
    options.comm = comm;

    // A NaN in rank 1's za at row 1, column 2.
    float* bad = nullptr;
    if (rank == 1) {
      std::vector<float> host = to_host(buf.za, static_cast<std::size_t>(n * kD));
      host[1 * kD + 2] = std::nanf("");
      bad = to_device(host);
    }
    simclr_matrix nan_a = a;
    if (bad != nullptr) nan_a.data = bad;
    CHECK_STATUS(simclr_device_forward(loss, &nan_a, &b, &options, nullptr, buf.values, nullptr,
                                       nullptr, nullptr),
                 SIMCLR_VALUE_ERROR);
    nan_msg[r] = simclr_last_error();

    // Rank 2 says zb is float16 while za is float32: a C-level check, carried to every rank.
    simclr_matrix half_b = b;
    if (rank == 2) half_b.dtype = SIMCLR_FLOAT16;
    CHECK_STATUS(simclr_device_forward(loss, &a, &half_b, &options, nullptr, buf.values, nullptr,
                                       nullptr, nullptr),
                 SIMCLR_TYPE_ERROR);
    dtype_msg[r] = simclr_last_error();

    // A good forward; rank 0's grad_a names another device in the backward.
    simclr_forward_t saved = nullptr;
    CHECK_STATUS(simclr_device_forward(loss, &a, &b, &options, nullptr, buf.values, nullptr,
                                       nullptr, &saved),
                 SIMCLR_OK);
    simclr_matrix other = ga;
    if (rank == 0) other.device = device + 1;
    CHECK_STATUS(simclr_device_backward(loss, saved, 1.0f, &other, &gb, nullptr),
                 SIMCLR_VALUE_ERROR);
    grad_msg[r] = simclr_last_error();
    // The same state still serves a good backward on every rank.
    CHECK_STATUS(simclr_device_backward(loss, saved, 1.0f, &ga, &gb, nullptr), SIMCLR_OK);
    simclr_forward_destroy(saved);

    // The device transport fails on every rank.
    group.barrier();
    user.fail_device = true;
    CHECK_STATUS(simclr_device_forward(loss, &a, &b, &options, nullptr, buf.values, nullptr,
                                       nullptr, nullptr),
                 SIMCLR_COMM_ERROR);
    comm_msg[r] = simclr_last_error();
    user.fail_device = false;

    // A device communicator is refused by the host calls, a host one by the device calls.
    std::vector<float> host_a(static_cast<std::size_t>(n * kD) + 1), host_v(1);
    simclr_matrix ha{host_a.data(), n, kD, kD, SIMCLR_FLOAT32, -1};
    CHECK_STATUS(
        simclr_forward(loss, &ha, &ha, nullptr, &options, host_v.data(), nullptr, nullptr, nullptr),
        SIMCLR_UNSUPPORTED);
    CHECK(std::strstr(simclr_last_error(), "device communicator") != nullptr);
    simclr_comm_t single = nullptr;
    CHECK_STATUS(simclr_comm_create_single(&single), SIMCLR_OK);
    CHECK(simclr_comm_is_device(single) == 0 && simclr_comm_is_device(nullptr) == -1);
    simclr_call_options host_options = options;
    host_options.comm = single;
    CHECK_STATUS(simclr_device_forward(loss, &a, &b, &host_options, nullptr, buf.values, nullptr,
                                       nullptr, nullptr),
                 SIMCLR_UNSUPPORTED);
    CHECK(std::strstr(simclr_last_error(), "host communicator") != nullptr);
    simclr_comm_destroy(single);

    if (bad != nullptr) cuda_ok(cudaFree(bad), "cudaFree");
    simclr_loss_destroy(loss);
    simclr_comm_destroy(comm);
  });
  for (std::size_t r = 0; r < 3; ++r) {
    CHECK(nan_msg[r] == nan_msg[0]);
    CHECK(dtype_msg[r] == dtype_msg[0]);
    CHECK(grad_msg[r] == grad_msg[0]);
    CHECK(comm_msg[r].find("test transport down on rank " + std::to_string(r)) !=
          std::string::npos);
  }
  CHECK(nan_msg[0].find("za has NaN at row 1, column 2") != std::string::npos &&
        nan_msg[0].find("rank 1") != std::string::npos);
  CHECK(dtype_msg[0].find("zb is float16") != std::string::npos &&
        dtype_msg[0].find("rank 2") != std::string::npos);
  CHECK(grad_msg[0].find("grad_a is on device") != std::string::npos &&
        grad_msg[0].find("rank 0") != std::string::npos);
  for (const std::string* m : {&nan_msg[0], &dtype_msg[0], &grad_msg[0], &comm_msg[0]})
    std::printf("  %s\n", m->c_str());
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
  test_distributed({5, 4}, SIMCLR_REDUCTION_SUM_OVER_BATCH_SIZE, false, device);
  test_distributed({5, 4}, SIMCLR_REDUCTION_NONE, true, device);
  test_distributed({4, 0, 5}, SIMCLR_REDUCTION_SUM, false, device);
  test_distributed({3, 3, 3}, SIMCLR_REDUCTION_SUM_OVER_BATCH_SIZE, true, device);
  test_distributed({2, 6, 1}, SIMCLR_REDUCTION_NONE, false, device);
  test_distributed_async(device);
  test_distributed_errors(device);
  if (failures != 0) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("simclr device C API: all checks passed\n");
  return 0;
}

// simclr-gpu-bench: one forward+backward step of the device loss on seeded random embeddings, timed
// with CUDA events, next to a plain cuBLAS GEMM of the same tile shapes measured in the same run.
// Prints one JSON line. Exit 0 on success, 2 for bad flags, 3 when no CUDA device is visible.

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "blas.hpp"
#include "device_engine.hpp"
#include "simclr/detail/cuda_check.hpp"
#include "simclr/cuda/device_loss.hpp"
#include "simclr/loss.hpp"

namespace {

using simclr::cuda::DeviceArray;
using simclr::cuda::DeviceDType;

struct Flags {
  std::int64_t batch = 65536;
  std::int64_t dim = 256;
  std::string dtype = "bfloat16";
  int repeat = 5;
  int warmup = 1;
  std::int64_t tile_rows = 0;
  std::int64_t tile_cols = 0;
  double temperature = 0.05;
  std::uint64_t seed = 1;
  bool check = false;     // compare with the CPU path in double (small sizes only)
  bool symmetric = true;  // DeviceOptions::symmetric (--no-symmetry turns it off)
};

[[noreturn]] void usage(const std::string& error) {
  std::cerr << "simclr-gpu-bench: " << error << "\n"
            << "usage: simclr-gpu-bench [--batch G] [--dim d] [--dtype bfloat16|float16|float32]\n"
            << "                        [--repeat R] [--warmup W] [--tile-rows N] [--tile-cols N]\n"
            << "                        [--temperature T] [--seed S] [--check] [--no-symmetry]\n";
  std::exit(2);
}

Flags parse(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage("missing value for " + a);
      return argv[++i];
    };
    try {
      if (a == "--batch")
        f.batch = std::stoll(value());
      else if (a == "--dim")
        f.dim = std::stoll(value());
      else if (a == "--dtype")
        f.dtype = value();
      else if (a == "--repeat")
        f.repeat = std::stoi(value());
      else if (a == "--warmup")
        f.warmup = std::stoi(value());
      else if (a == "--tile-rows")
        f.tile_rows = std::stoll(value());
      else if (a == "--tile-cols")
        f.tile_cols = std::stoll(value());
      else if (a == "--temperature")
        f.temperature = std::stod(value());
      else if (a == "--seed")
        f.seed = std::stoull(value());
      else if (a == "--check")
        f.check = true;
      else if (a == "--no-symmetry")
        f.symmetric = false;
      else if (a == "--help" || a == "-h")
        usage("help");
      else
        usage("unknown flag " + a);
    } catch (const std::logic_error&) {
      usage("bad value for " + a);
    }
  }
  if (f.batch < 1 || f.dim < 1 || f.repeat < 1 || f.warmup < 0)
    usage("sizes and counts must be positive");
  if (f.dtype != "bfloat16" && f.dtype != "float16" && f.dtype != "float32")
    usage("unknown dtype " + f.dtype);
  return f;
}

DeviceDType dtype_of(const std::string& s) {
  if (s == "float32") return DeviceDType::kFloat32;
  if (s == "float16") return DeviceDType::kFloat16;
  return DeviceDType::kBFloat16;
}

// Uniform in [-1, 1) from (seed, index): splitmix64, so the data do not depend on the thread order.
double uniform(std::uint64_t seed, std::uint64_t index) {
  std::uint64_t z = seed * 0x9E3779B97F4A7C15ULL + index + 0x632BE59BD9B4E019ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * (2.0 / 9007199254740992.0) - 1.0;
}

// Host values rounded to dtype, and their bytes.
struct HostRows {
  std::vector<double> values;  // after rounding to dtype
  std::vector<unsigned char> bytes;
};

HostRows make_rows(std::uint64_t seed, int view, std::int64_t rows, std::int64_t dim,
                   DeviceDType dtype) {
  HostRows h;
  const auto count = static_cast<std::size_t>(rows * dim);
  h.values.resize(count);
  h.bytes.resize(count * simclr::cuda::element_size(dtype));
  for (std::size_t i = 0; i < count; ++i) {
    const auto x = static_cast<float>(uniform(seed * 2 + static_cast<std::uint64_t>(view), i));
    if (dtype == DeviceDType::kFloat32) {
      std::memcpy(h.bytes.data() + 4 * i, &x, 4);
      h.values[i] = x;
    } else if (dtype == DeviceDType::kBFloat16) {
      const __nv_bfloat16 b = __float2bfloat16_rn(x);
      std::memcpy(h.bytes.data() + 2 * i, &b, 2);
      h.values[i] = static_cast<double>(__bfloat162float(b));
    } else {
      const __half b = __float2half_rn(x);
      std::memcpy(h.bytes.data() + 2 * i, &b, 2);
      h.values[i] = static_cast<double>(__half2float(b));
    }
  }
  return h;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

std::string version_string(int v) {
  std::ostringstream os;
  os << v / 1000 << "." << (v % 1000) / 10;
  return os.str();
}

// Converts a device array of dtype to host doubles (synchronises).
std::vector<double> to_host(const void* data, std::size_t count, DeviceDType dtype,
                            cudaStream_t stream) {
  const std::size_t elem = simclr::cuda::element_size(dtype);
  std::vector<unsigned char> bytes(count * elem);
  if (count > 0)
    SIMCLR_CHECK_CUDA(
        cudaMemcpyAsync(bytes.data(), data, bytes.size(), cudaMemcpyDeviceToHost, stream));
  SIMCLR_CHECK_CUDA(cudaStreamSynchronize(stream));
  std::vector<double> out(count);
  for (std::size_t i = 0; i < count; ++i) {
    if (dtype == DeviceDType::kFloat32) {
      float x;
      std::memcpy(&x, bytes.data() + 4 * i, 4);
      out[i] = x;
    } else if (dtype == DeviceDType::kBFloat16) {
      __nv_bfloat16 x;
      std::memcpy(&x, bytes.data() + 2 * i, 2);
      out[i] = static_cast<double>(__bfloat162float(x));
    } else {
      __half x;
      std::memcpy(&x, bytes.data() + 2 * i, 2);
      out[i] = static_cast<double>(__half2float(x));
    }
  }
  return out;
}

// The floor: the same GEMMs as the loss (2 logits products and 1 product with U per tile) in plain
// cuBLAS, input dtype in and out, float32 compute, no element-wise work. Seconds per step.
std::vector<double> cublas_floor_seconds(const Flags& f, const simclr::cuda::detail::TilePlan& plan,
                                         const DeviceArray& za, const DeviceArray& zb,
                                         DeviceDType dtype, cudaStream_t stream) {
  const std::size_t elem = simclr::cuda::element_size(dtype);
  const std::int64_t d = f.dim, rows_total = 2 * f.batch;
  DeviceArray c_tile(static_cast<std::size_t>(plan.rows * plan.ld) * elem, stream);
  DeviceArray m_tile(static_cast<std::size_t>(plan.rows * plan.ld) * elem, stream);
  DeviceArray u_ref(static_cast<std::size_t>(rows_total * d) * elem, stream);
  DeviceArray g_ref(static_cast<std::size_t>(plan.rows * d) * elem, stream);
  SIMCLR_CHECK_CUDA(cudaMemsetAsync(m_tile.data(), 0, m_tile.bytes(), stream));
  SIMCLR_CHECK_CUDA(
      cudaMemcpyAsync(u_ref.data(), za.data(), za.bytes(), cudaMemcpyDeviceToDevice, stream));
  SIMCLR_CHECK_CUDA(cudaMemcpyAsync(static_cast<char*>(u_ref.data()) + za.bytes(), zb.data(),
                                    zb.bytes(), cudaMemcpyDeviceToDevice, stream));
  cublasHandle_t blas;
  SIMCLR_CHECK_CUBLAS(cublasCreate(&blas));
  SIMCLR_CHECK_CUBLAS(cublasSetStream(blas, stream));
  const cudaDataType_t type = simclr::cuda::detail::blas_type(dtype);
  const float one = 1.f, zero_f = 0.f;
  const auto* u = static_cast<const char*>(u_ref.data());
  auto reference_step = [&] {
    for (std::int64_t q0 = 0; q0 < rows_total; q0 += plan.rows) {
      const int rows = static_cast<int>(std::min(plan.rows, rows_total - q0));
      for (std::int64_t c0 = 0; c0 < rows_total; c0 += plan.cols) {
        const int cols = static_cast<int>(std::min(plan.cols, rows_total - c0));
        for (int pass = 0; pass < 2; ++pass)
          SIMCLR_CHECK_CUBLAS(
              cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, cols, rows, static_cast<int>(d), &one,
                           u + c0 * d * elem, type, static_cast<int>(d), u + q0 * d * elem, type,
                           static_cast<int>(d), &zero_f, c_tile.data(), type,
                           static_cast<int>(plan.ld), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        SIMCLR_CHECK_CUBLAS(
            cublasGemmEx(blas, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(d), rows, cols, &one,
                         u + c0 * d * elem, type, static_cast<int>(d), m_tile.data(), type,
                         static_cast<int>(plan.ld), c0 == 0 ? &zero_f : &one, g_ref.data(), type,
                         static_cast<int>(d), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      }
    }
  };
  cudaEvent_t e0, e1;
  SIMCLR_CHECK_CUDA(cudaEventCreate(&e0));
  SIMCLR_CHECK_CUDA(cudaEventCreate(&e1));
  std::vector<double> ref;
  for (int r = 0; r < f.warmup + f.repeat; ++r) {
    SIMCLR_CHECK_CUDA(cudaEventRecord(e0, stream));
    reference_step();
    SIMCLR_CHECK_CUDA(cudaEventRecord(e1, stream));
    SIMCLR_CHECK_CUDA(cudaEventSynchronize(e1));
    float ms = 0;
    SIMCLR_CHECK_CUDA(cudaEventElapsedTime(&ms, e0, e1));
    if (r >= f.warmup) ref.push_back(ms * 1e-3);
  }
  SIMCLR_CHECK_CUBLAS(cublasDestroy(blas));
  for (cudaEvent_t e : {e0, e1}) SIMCLR_CHECK_CUDA(cudaEventDestroy(e));
  SIMCLR_CHECK_CUDA(cudaStreamSynchronize(stream));  // the arrays are freed in stream order
  return ref;
}

// The CPU path in double on the same (rounded) inputs, against the last step's loss and gradients:
// the JSON fields check_loss_rel_err and check_grad_rel_err (errors relative to the largest
// magnitude).
std::string check_against_cpu(const Flags& f, const HostRows& ha, const HostRows& hb,
                              const simclr::cuda::DeviceLossOutput& last, const DeviceArray& ga,
                              const DeviceArray& gb, DeviceDType dtype, cudaStream_t stream) {
  const std::int64_t G = f.batch, d = f.dim;
  using Mat = simclr::RowMatrix<double>;
  Mat a = Eigen::Map<const Mat>(ha.values.data(), G, d),
      b = Eigen::Map<const Mat>(hb.values.data(), G, d);
  simclr::SimCLRLoss cpu(f.temperature, simclr::Reduction::kSumOverBatchSize);
  auto [out, grads] = cpu.value_and_gradient<double>(a, b);
  const double loss_dev = to_host(last.values.data(), 1, dtype, stream)[0];
  // The gradient buffers hold the last backward's.
  const auto gad = to_host(ga.data(), static_cast<std::size_t>(G * d), dtype, stream);
  const auto gbd = to_host(gb.data(), static_cast<std::size_t>(G * d), dtype, stream);
  double err = 0, scale = 0;
  for (std::int64_t i = 0; i < G * d; ++i) {
    err = std::max({err, std::abs(gad[i] - grads.grad_a.data()[i]),
                    std::abs(gbd[i] - grads.grad_b.data()[i])});
    scale = std::max({scale, std::abs(grads.grad_a.data()[i]), std::abs(grads.grad_b.data()[i])});
  }
  std::ostringstream json;
  json.precision(6);
  json << ",\"check_loss_rel_err\":"
       << std::abs(loss_dev - out.values[0]) / std::abs(out.values[0])
       << ",\"check_grad_rel_err\":" << (scale > 0 ? err / scale : err);
  return json.str();
}

int run(const Flags& f) {
  int count = 0;
  const cudaError_t rc = cudaGetDeviceCount(&count);
  if (rc != cudaSuccess || count == 0) {
    std::cerr << "simclr-gpu-bench: no CUDA device visible ("
              << (rc != cudaSuccess ? cudaGetErrorString(rc) : "0 devices") << ")\n";
    std::cout << "{\"error\":\"no CUDA device visible\"}\n";
    return 3;
  }
  int device = 0, driver = 0, runtime = 0;
  SIMCLR_CHECK_CUDA(cudaGetDevice(&device));
  cudaDeviceProp prop{};
  SIMCLR_CHECK_CUDA(cudaGetDeviceProperties(&prop, device));
  SIMCLR_CHECK_CUDA(cudaDriverGetVersion(&driver));
  SIMCLR_CHECK_CUDA(cudaRuntimeGetVersion(&runtime));
  // The benchmark keeps freed pool memory (a framework's caching allocator would). The library's
  // first allocating call would raise this threshold too, when still 0 (docs/gpu.md, "Memory
  // pool"); setting it here first keeps the timing independent of which call allocates first.
  cudaMemPool_t pool;
  SIMCLR_CHECK_CUDA(cudaDeviceGetDefaultMemPool(&pool, device));
  std::uint64_t threshold = UINT64_MAX;
  SIMCLR_CHECK_CUDA(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));

  const DeviceDType dtype = dtype_of(f.dtype);
  const std::int64_t G = f.batch, d = f.dim;
  cudaStream_t stream;
  SIMCLR_CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));

  const HostRows ha = make_rows(f.seed, 0, G, d, dtype), hb = make_rows(f.seed, 1, G, d, dtype);
  std::uint64_t zero = 0;
  SIMCLR_CHECK_CUDA(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &zero));
  DeviceArray za(ha.bytes.size(), stream), zb(hb.bytes.size(), stream);
  DeviceArray ga(ha.bytes.size(), stream), gb(hb.bytes.size(), stream);
  SIMCLR_CHECK_CUDA(
      cudaMemcpyAsync(za.data(), ha.bytes.data(), ha.bytes.size(), cudaMemcpyHostToDevice, stream));
  SIMCLR_CHECK_CUDA(
      cudaMemcpyAsync(zb.data(), hb.bytes.data(), hb.bytes.size(), cudaMemcpyHostToDevice, stream));

  simclr::cuda::DeviceSimCLRLoss loss(f.temperature, simclr::Reduction::kSumOverBatchSize);
  simclr::cuda::DeviceCallOptions options;
  options.device.tile_rows = f.tile_rows;
  options.device.tile_cols = f.tile_cols;
  options.device.symmetric = f.symmetric;
  const simclr::cuda::DeviceMatrixView va(za.data(), G, d, dtype), vb(zb.data(), G, d, dtype);
  const simclr::cuda::DeviceMutableMatrixView wa(ga.data(), G, d, dtype),
      wb(gb.data(), G, d, dtype);

  cudaEvent_t e0, e1, e2;
  SIMCLR_CHECK_CUDA(cudaEventCreate(&e0));
  SIMCLR_CHECK_CUDA(cudaEventCreate(&e1));
  SIMCLR_CHECK_CUDA(cudaEventCreate(&e2));
  std::vector<double> step, fwd;
  simclr::cuda::DeviceLossOutput last;
  for (int r = 0; r < f.warmup + f.repeat; ++r) {
    SIMCLR_CHECK_CUDA(cudaEventRecord(e0, stream));
    auto out = loss.forward(va, vb, stream, nullptr, options);
    SIMCLR_CHECK_CUDA(cudaEventRecord(e1, stream));
    loss.backward(out, 1.0f, wa, wb, stream);
    SIMCLR_CHECK_CUDA(cudaEventRecord(e2, stream));
    SIMCLR_CHECK_CUDA(cudaEventSynchronize(e2));
    float ms_all = 0, ms_fwd = 0;
    SIMCLR_CHECK_CUDA(cudaEventElapsedTime(&ms_all, e0, e2));
    SIMCLR_CHECK_CUDA(cudaEventElapsedTime(&ms_fwd, e0, e1));
    if (r >= f.warmup) {
      step.push_back(ms_all * 1e-3);
      fwd.push_back(ms_fwd * 1e-3);
    }
    last = std::move(out);
  }
  std::uint64_t peak = 0;
  SIMCLR_CHECK_CUDA(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &peak));

  const std::int64_t rows_total = 2 * G;
  const simclr::cuda::detail::TilePlan plan =
      simclr::cuda::detail::plan_tiles(rows_total, rows_total, dtype, options.device);
  const std::vector<double> ref = cublas_floor_seconds(f, plan, za, zb, dtype, stream);

  // 3 GEMM-equivalents (docs/math.md section 5.4): the forward's logits, the backward's recomputed
  // logits and its product with U, for the loss and the floor alike: the work of the plain scheme.
  // The loss's symmetric path does less of it (forward_gemm_equivalents: about 0.5 instead of 1;
  // the backward about 1.5 instead of 2).
  const double flops = 3.0 * 2.0 * static_cast<double>(rows_total) *
                       static_cast<double>(rows_total) * static_cast<double>(d);
  const double t_med = median(step), t_min = *std::min_element(step.begin(), step.end());
  const double tflops = flops / t_med / 1e12, cublas_tflops = flops / median(ref) / 1e12;

  std::ostringstream json;
  json.precision(6);
  json << "{\"batch\":" << G << ",\"dim\":" << d << ",\"dtype\":\"" << f.dtype
       << "\",\"world_size\":1"
       << ",\"warmup\":" << f.warmup << ",\"repeat\":" << f.repeat
       << ",\"seconds_median\":" << t_med << ",\"seconds_min\":" << t_min
       << ",\"forward_seconds_median\":" << median(fwd) << ",\"flops\":" << flops
       << ",\"gflops\":" << tflops * 1e3 << ",\"tflops\":" << tflops
       << ",\"cublas_tflops\":" << cublas_tflops
       << ",\"fraction_of_cublas\":" << tflops / cublas_tflops
       << ",\"forward_gemm_equivalents\":" << last.flops / (flops / 3.0)
       << ",\"symmetric\":" << (f.symmetric ? "true" : "false")
       << ",\"peak_device_mib\":" << static_cast<double>(peak) / (1024.0 * 1024.0)
       << ",\"tile_rows\":" << plan.rows << ",\"tile_cols\":" << plan.cols << ",\"gpu\":\""
       << prop.name << "\",\"driver\":\"" << version_string(driver) << "\",\"runtime\":\""
       << version_string(runtime) << "\"";

  if (f.check) json << check_against_cpu(f, ha, hb, last, ga, gb, dtype, stream);
  json << "}";
  std::cout << json.str() << std::endl;
  SIMCLR_CHECK_CUDA(cudaStreamSynchronize(stream));
  last = simclr::cuda::DeviceLossOutput{};
  za = DeviceArray();
  zb = DeviceArray();
  ga = DeviceArray();
  gb = DeviceArray();
  SIMCLR_CHECK_CUDA(cudaStreamSynchronize(stream));
  for (cudaEvent_t e : {e0, e1, e2}) SIMCLR_CHECK_CUDA(cudaEventDestroy(e));
  SIMCLR_CHECK_CUDA(cudaStreamDestroy(stream));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Flags flags = parse(argc, argv);
  try {
    return run(flags);
  } catch (const std::exception& e) {
    std::cerr << "simclr-gpu-bench: " << e.what() << "\n";
    std::cout << "{\"error\":\"" << e.what() << "\"}\n";
    return 1;
  }
}

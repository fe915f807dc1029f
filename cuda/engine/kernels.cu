// Device loss kernels (docs/math.md sections 1-4): element-wise and row-wise work only; products
// with U go through cuBLAS (device_engine.cpp). All arithmetic is float32; exponentials are exp2f
// of a pre-scaled argument, which for the terms that matter (s - max near 0) is accurate to ~1 ulp.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "kernels.cuh"
#include "simclr/detail/cuda_check.hpp"

// The launch seam: SIMCLR_LAUNCH(kernel, grid, block, stream)(args...). SIMCLR_LAUNCH_SYNC marks
// the kernels whose threads meet at __syncthreads or a warp shuffle. nvcc gets the triple-chevron
// launch below; the tests' CPU emulation (tests/emulation) compiles this file with the host
// compiler and defines both macros itself, before this point, through a forced include.
#ifndef SIMCLR_LAUNCH
#define SIMCLR_LAUNCH(kernel, grid, block, stream) kernel<<<grid, block, 0, stream>>>
#define SIMCLR_LAUNCH_SYNC(kernel, grid, block, stream) kernel<<<grid, block, 0, stream>>>
#endif

namespace simclr::cuda::detail {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kNormEps = 1e-12f;
constexpr int kWarp = 32;
constexpr int kRowsPerBlock = 8;  // one warp per row, 256 threads

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

template <class T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2)
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Merge (m, s) with (om, os): both are (max, sum of exp(x - max)) of disjoint sets; -inf max =
// empty.
__device__ __forceinline__ void lse_merge(float& m, float& s, float om, float os) {
  if (om == -INFINITY) return;
  if (m == -INFINITY) {
    m = om;
    s = os;
    return;
  }
  const float nm = fmaxf(m, om);
  s = s * exp2f((m - nm) * kLog2e) + os * exp2f((om - nm) * kLog2e);
  m = nm;
}

std::int64_t blocks_for(std::int64_t work, std::int64_t per_block, std::int64_t cap) {
  const std::int64_t b = (work + per_block - 1) / per_block;
  return b < 1 ? 1 : (b > cap ? cap : b);
}

// Runs `body.template operator()<T>()` with T the element type of `dtype`.
template <class Body>
void dispatch(DeviceDType dtype, Body&& body) {
  switch (dtype) {
    case DeviceDType::kFloat32:
      body(float{});
      return;
    case DeviceDType::kBFloat16:
      body(__nv_bfloat16{});
      return;
    case DeviceDType::kFloat16:
      body(__half{});
      return;
  }
  throw ::simclr::TypeError(
      ::simclr::detail::str_cat("device loss: unsupported dtype code ", static_cast<int>(dtype)));
}

// ---- kernels ----

template <class T>
__global__ void find_nonfinite_kernel(const T* x, std::int64_t rows, std::int64_t cols,
                                      std::int64_t stride, unsigned long long* first_bad) {
  const std::int64_t total = rows * cols;
  for (std::int64_t idx = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
       idx < total; idx += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t r = idx / cols, c = idx - r * cols;
    if (!isfinite(to_float(x[r * stride + c])))
      atomicMin(first_bad, static_cast<unsigned long long>(idx));
  }
}

template <class T>
__global__ void l2_normalize_kernel(const T* x, std::int64_t rows, std::int64_t cols,
                                    std::int64_t stride, T* out, float* squared_norms) {
  const std::int64_t row =
      static_cast<std::int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = static_cast<int>(threadIdx.x % kWarp);
  if (row >= rows) return;
  const T* xr = x + row * stride;
  float acc = 0.f;
  for (std::int64_t c = lane; c < cols; c += kWarp) {
    const float v = to_float(xr[c]);
    acc = fmaf(v, v, acc);
  }
  acc = warp_sum(acc);
  if (lane == 0) squared_norms[row] = acc;
  const float inv = 1.0f / sqrtf(fmaxf(acc, kNormEps));
  T* dst = out + row * cols;
  for (std::int64_t c = lane; c < cols; c += kWarp) dst[c] = from_float<T>(to_float(xr[c]) * inv);
}

__global__ void lse_tile_kernel(LogitsTile t, RowStats stats) {
  const float* s = t.s;
  const std::int64_t lds = t.lds, rows = t.rows, cols = t.cols, q0 = t.q0, c0 = t.c0;
  const AnchorLayout layout = t.layout;
  float *run_max = stats.run_max, *run_sum = stats.run_sum, *positive = stats.positive;
  const std::int64_t i =
      static_cast<std::int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = static_cast<int>(threadIdx.x % kWarp);
  if (i >= rows) return;
  const std::int64_t q = q0 + i;
  const std::int64_t self = layout.anchor_begin + q - c0;
  const std::int64_t partner = q < layout.pairs ? q + layout.pairs : q - layout.pairs;
  const std::int64_t pos = layout.anchor_begin + partner - c0;
  const float* row = s + i * lds;
  float m = -INFINITY, sum = 0.f;
  const std::int64_t cols4 = cols & ~std::int64_t{3};
  for (std::int64_t c = 4 * lane; c < cols4; c += 4 * kWarp) {
    const float4 v = *reinterpret_cast<const float4*>(row + c);
    float x[4] = {v.x, v.y, v.z, v.w};
    if (self >= c && self < c + 4) x[self - c] = -INFINITY;
    const float tmax = fmaxf(fmaxf(x[0], x[1]), fmaxf(x[2], x[3]));
    if (tmax > m) {
      sum = (m == -INFINITY) ? 0.f : sum * exp2f((m - tmax) * kLog2e);
      m = tmax;
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) sum += exp2f((x[k] - m) * kLog2e);  // x = -inf gives 0; m is finite
  }
  for (std::int64_t c = cols4 + lane; c < cols; c += kWarp) {
    if (c == self) continue;
    const float x = row[c];
    if (x > m) {
      sum = (m == -INFINITY) ? 0.f : sum * exp2f((m - x) * kLog2e);
      m = x;
    }
    sum += exp2f((x - m) * kLog2e);
  }
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    const float om = __shfl_xor_sync(0xffffffffu, m, offset);
    const float os = __shfl_xor_sync(0xffffffffu, sum, offset);
    lse_merge(m, sum, om, os);
  }
  if (lane == 0) {
    float rm = run_max[q], rs = run_sum[q];
    lse_merge(rm, rs, m, sum);
    run_max[q] = rm;
    run_sum[q] = rs;
    if (pos >= 0 && pos < cols) positive[q] = row[pos];
  }
}

// The fused pass over a tile with no self entry (launch_lse_tile_fused): the row and the column
// statistics from one read of the tile. Block = kColumnChunk rows (blockIdx.y) x kRowBlockCols
// columns (blockIdx.x); warp w takes 128 of those columns, one float4 per lane, and walks the
// chunk's rows in order, kFusedRowBatch rows' loads issued before any of them is used.
// - Columns: each lane keeps the online (max, sum) of its four columns, updated element by element
//   in row order (lse_tile_kernel's update), and writes one partial per (chunk, column) to
//   col_partial[2 * (chunk * cols + c) + {0, 1}]: what the column pass before the fusion wrote.
// - Rows: per row, the warp's max (xor shuffles), then each lane's sum of exp(x - max) and the
//   warp's sum (xor shuffles) give one (max, sum) per (row, warp) in shared memory; after the
//   barrier, thread i merges warps 0, 1, ... in order into row_partial[2 * (blockIdx.x * rows + r)
//   + {0, 1}] (row_blocks(cols) * rows pairs).
// Every order is fixed, so the result does not depend on scheduling.
constexpr int kFusedWarps = static_cast<int>(kRowBlockCols / (4 * kWarp));  // 8 warps, 256 threads
constexpr int kFusedRowBatch = 4;

__global__ void lse_tile_fused_kernel(const float* s, std::int64_t lds, std::int64_t rows,
                                      std::int64_t cols, float* col_partial, float* row_partial) {
  __shared__ float part_max[kColumnChunk][kFusedWarps];
  __shared__ float part_sum[kColumnChunk][kFusedWarps];
  const int warp = static_cast<int>(threadIdx.x / kWarp);
  const int lane = static_cast<int>(threadIdx.x % kWarp);
  const std::int64_t block_c0 = static_cast<std::int64_t>(blockIdx.x) * kRowBlockCols;
  const std::int64_t warp_c0 = block_c0 + warp * 4 * kWarp;
  const std::int64_t c = warp_c0 + 4 * lane;  // this lane's first column
  const int count = c >= cols ? 0 : (cols - c < 4 ? static_cast<int>(cols - c) : 4);
  const std::int64_t begin = static_cast<std::int64_t>(blockIdx.y) * kColumnChunk;
  const std::int64_t end = begin + kColumnChunk < rows ? begin + kColumnChunk : rows;
  float cm[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
  float cs[4] = {0.f, 0.f, 0.f, 0.f};
  if (warp_c0 < cols) {  // the same for every lane of the warp: its shuffles are all taken
    for (std::int64_t r0 = begin; r0 < end; r0 += kFusedRowBatch) {
      float x[kFusedRowBatch][4];
#pragma unroll
      for (int j = 0; j < kFusedRowBatch; ++j) {
        const std::int64_t r = r0 + j < end ? r0 + j : end - 1;  // past the end: unused
        const float* row = s + r * lds;
        if (count == 4) {
          const float4 v = *reinterpret_cast<const float4*>(row + c);
          x[j][0] = v.x;
          x[j][1] = v.y;
          x[j][2] = v.z;
          x[j][3] = v.w;
        } else {
          for (int k = 0; k < 4; ++k) x[j][k] = k < count ? row[c + k] : -INFINITY;
        }
      }
#pragma unroll
      for (int j = 0; j < kFusedRowBatch; ++j) {
        if (r0 + j >= end) break;  // the same for the whole warp
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (k >= count) break;
          const float v = x[j][k];
          if (v > cm[k]) {
            cs[k] = (cm[k] == -INFINITY) ? 0.f : cs[k] * exp2f((cm[k] - v) * kLog2e);
            cm[k] = v;
          }
          cs[k] += exp2f((v - cm[k]) * kLog2e);
        }
        float m = fmaxf(fmaxf(x[j][0], x[j][1]), fmaxf(x[j][2], x[j][3]));
        for (int offset = kWarp / 2; offset > 0; offset /= 2)
          m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, offset));
        float sum = 0.f;
        if (m != -INFINITY) {  // always, for finite logits: lane 0 holds at least one column
#pragma unroll
          for (int k = 0; k < 4; ++k) sum += exp2f((x[j][k] - m) * kLog2e);  // -inf gives 0
        }
        sum = warp_sum(sum);
        if (lane == 0) {
          part_max[r0 + j - begin][warp] = m;
          part_sum[r0 + j - begin][warp] = sum;
        }
      }
    }
  }
  for (int k = 0; k < count; ++k) {
    float* out = col_partial + 2 * (static_cast<std::int64_t>(blockIdx.y) * cols + c + k);
    out[0] = cm[k];
    out[1] = cs[k];
  }
  __syncthreads();
  const std::int64_t i = static_cast<std::int64_t>(threadIdx.x);
  if (i < end - begin) {
    const std::int64_t warps = (cols - block_c0 + 4 * kWarp - 1) / (4 * kWarp);
    float m = -INFINITY, sum = 0.f;
    for (int w = 0; w < kFusedWarps && w < warps; ++w)
      lse_merge(m, sum, part_max[i][w], part_sum[i][w]);
    float* out = row_partial + 2 * (static_cast<std::int64_t>(blockIdx.x) * rows + begin + i);
    out[0] = m;
    out[1] = sum;
  }
}

// Merges the fused pass's partials in a fixed order. Thread k < rows: row k's row_blocks(cols)
// partials, in order, into (m, sum), then that into the anchor's running pair (as lse_tile_kernel
// merges a tile), and its positive when the partner's column lies in the tile. Thread rows + c: the
// column_chunks(rows) partials of column c, in order, into the running pair of anchor c0 + c -
// anchor_begin, and its positive when the partner's row lies in the tile. The tile has no self
// entry, so its rows and columns are different anchors and no two threads write the same one.
__global__ void lse_merge_fused_kernel(LogitsTile t, const float* col_partial, std::int64_t chunks,
                                       const float* row_partial, std::int64_t blocks,
                                       RowStats stats) {
  const float* s = t.s;
  const std::int64_t lds = t.lds, rows = t.rows, cols = t.cols, q0 = t.q0, c0 = t.c0;
  const AnchorLayout layout = t.layout;
  const std::int64_t r0 = layout.anchor_begin + q0;  // U row of the tile's first row
  float *run_max = stats.run_max, *run_sum = stats.run_sum, *positive = stats.positive;
  const std::int64_t k = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k < rows) {
    const std::int64_t i = k, q = q0 + i;
    float m = -INFINITY, sum = 0.f;
    for (std::int64_t b = 0; b < blocks; ++b)
      lse_merge(m, sum, row_partial[2 * (b * rows + i)], row_partial[2 * (b * rows + i) + 1]);
    float rm = run_max[q], rs = run_sum[q];
    lse_merge(rm, rs, m, sum);
    run_max[q] = rm;
    run_sum[q] = rs;
    const std::int64_t partner = q < layout.pairs ? q + layout.pairs : q - layout.pairs;
    const std::int64_t pos = layout.anchor_begin + partner - c0;
    if (pos >= 0 && pos < cols) positive[q] = s[i * lds + pos];
  } else if (k < rows + cols) {
    const std::int64_t c = k - rows;
    const std::int64_t q = c0 + c - layout.anchor_begin;
    float m = run_max[q], sum = run_sum[q];
    for (std::int64_t b = 0; b < chunks; ++b)
      lse_merge(m, sum, col_partial[2 * (b * cols + c)], col_partial[2 * (b * cols + c) + 1]);
    run_max[q] = m;
    run_sum[q] = sum;
    const std::int64_t partner = q < layout.pairs ? q + layout.pairs : q - layout.pairs;
    const std::int64_t row = layout.anchor_begin + partner - r0;
    if (row >= 0 && row < rows) positive[q] = s[row * lds + c];
  }
}

constexpr int kFinishThreads = 1024;

template <class T>
__global__ void forward_finish_kernel(ForwardFinishParams p) {
  const float *run_max = p.run_max, *run_sum = p.run_sum, *positive = p.positive,
              *weight = p.weight;
  const std::int64_t n = p.pairs;
  const int reduction = p.reduction;
  const double denominator = p.denominator;
  float *row_lse = p.row_lse, *objective = p.objective;
  T* per_example = static_cast<T*>(p.per_example);
  T* values = static_cast<T*>(p.values);
  __shared__ double partial[kFinishThreads];
  double acc = 0;
  for (std::int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float la = run_max[i] + logf(run_sum[i]);
    const float lb = run_max[n + i] + logf(run_sum[n + i]);
    row_lse[i] = la;
    row_lse[n + i] = lb;
    const float l = (la - positive[i]) + (lb - positive[n + i]);
    per_example[i] = from_float<T>(l);
    const float wl = l * weight[i];
    if (reduction == kReductionNone) values[i] = from_float<T>(wl);
    acc += static_cast<double>(wl);
  }
  partial[threadIdx.x] = acc;
  __syncthreads();
  for (int stride = kFinishThreads / 2; stride > 0; stride /= 2) {
    if (static_cast<int>(threadIdx.x) < stride)
      partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const double sum = partial[0];
    if (reduction == kReductionNone) {
      objective[0] = static_cast<float>(sum);
    } else {
      const double reduced = reduction == kReductionSum ? sum
                             : denominator <= 0         ? 0.0
                                                        : sum / denominator;
      values[0] = from_float<T>(static_cast<float>(reduced));
      objective[0] = static_cast<float>(reduced);
    }
  }
}

__global__ void fill_kernel(float* p, std::int64_t count, float value) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    p[i] = value;
}

__global__ void shifted_sums_kernel(const float* run_max, const float* run_sum, std::int64_t count,
                                    float shift, bool accumulate, float* sums) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const float m = run_max[i];
    const float v = m == -INFINITY ? 0.f : run_sum[i] * exp2f((m - shift) * kLog2e);
    sums[i] = accumulate ? sums[i] + v : v;
  }
}

__global__ void broadcast_weight_kernel(const float* src, std::int64_t src_size, std::int64_t n,
                                        float* weight) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    weight[i] = src == nullptr ? 1.f : src[src_size == 1 ? 0 : i];
}

__global__ void pair_weight_kernel(const float* upstream, float upstream_scalar,
                                   const float* weight, std::int64_t n, bool divide,
                                   float denominator, float scale, float* alpha) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const float g = upstream != nullptr ? upstream[i] : upstream_scalar;
    float a = g * weight[i];
    if (divide) a = denominator == 0.f ? 0.f : a / denominator;
    a *= scale;
    alpha[i] = a;
    alpha[n + i] = a;
  }
}

__global__ void backward_params_kernel(const float* alpha_all, std::int64_t total, float inv_t,
                                       bool scale_up, float* params) {
  __shared__ float partial[kFinishThreads];
  float amax = 0.f;
  if (scale_up)
    for (std::int64_t i = threadIdx.x; i < total; i += blockDim.x)
      amax = fmaxf(amax, fabsf(alpha_all[i]));
  partial[threadIdx.x] = amax;
  __syncthreads();
  for (int stride = kFinishThreads / 2; stride > 0; stride /= 2) {
    if (static_cast<int>(threadIdx.x) < stride)
      partial[threadIdx.x] = fmaxf(partial[threadIdx.x], partial[threadIdx.x + stride]);
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    float scale = 1.f;
    if (scale_up && partial[0] > 0.f) {
      int e = 0;
      frexpf(partial[0], &e);    // max|alpha| < 2^e, and |M| <= 2 max|alpha| < 2^15 after scaling
      const int shift = 14 - e;  // clamped below: 2^shift is never 0 or inf
      scale = ldexpf(1.f, shift < -100 ? -100 : (shift > 100 ? 100 : shift));
    }
    params[0] = scale;
    params[1] = inv_t / scale;
    params[2] = 1.f;
  }
}

constexpr int kMThreads = 256;

// Four elements of T as one aligned unit, for packed stores (8 bytes of a 16-bit type, 16 of
// float32).
template <class T>
struct alignas(4 * sizeof(T)) Pack4 {
  T v[4];
};

template <class T>
__global__ void m_tile_kernel(MTileParams p) {
  const float* s = p.tile.s;
  const std::int64_t lds = p.tile.lds, rows = p.tile.rows, cols = p.tile.cols;
  const std::int64_t q0 = p.tile.q0, c0 = p.tile.c0, ldm = p.ldm;
  const AnchorLayout layout = p.tile.layout;
  const float *lse_all = p.lse_all, *alpha_all = p.alpha_all, *params = p.params;
  T* m = static_cast<T*>(p.m);
  const std::int64_t c = 4 * (static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x);
  if (c >= cols) return;
  const float scale = params[0];
  for (std::int64_t i = blockIdx.y; i < rows; i += gridDim.y) {
    const std::int64_t q = q0 + i;
    const std::int64_t gq = layout.anchor_begin + q;
    const std::int64_t self = gq - c0;
    const std::int64_t partner = q < layout.pairs ? q + layout.pairs : q - layout.pairs;
    const std::int64_t pos = layout.anchor_begin + partner - c0;
    const float lse_k = lse_all[gq], a_k = alpha_all[gq];
    const float* srow = s + i * lds;
    float x[4];
    if (c + 4 <= cols) {
      const float4 v = *reinterpret_cast<const float4*>(srow + c);
      x[0] = v.x;
      x[1] = v.y;
      x[2] = v.z;
      x[3] = v.w;
    } else {
      for (int k = 0; k < 4; ++k) x[k] = c + k < cols ? srow[c + k] : 0.f;
    }
    T* mrow = m + i * ldm;
    const int count = cols - c < 4 ? static_cast<int>(cols - c) : 4;
    Pack4<T> out;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const std::int64_t j = c + k;
      if (k >= count) break;
      const float a_c = alpha_all[c0 + j];
      float val =
          a_k * exp2f((x[k] - lse_k) * kLog2e) + a_c * exp2f((x[k] - lse_all[c0 + j]) * kLog2e);
      if (j == self) val = 0.f;
      if (j == pos) val -= a_k + a_c;
      out.v[k] = from_float<T>(val * scale);
    }
    // The thread's four values as one 16-byte (float32) or 8-byte (16-bit) store where the group
    // is whole and aligned (always, with the plan's leading dimension a multiple of 8 and an
    // aligned tile); element by element in a ragged tail.
    if (count == 4 && reinterpret_cast<std::uintptr_t>(mrow + c) % sizeof(Pack4<T>) == 0) {
      *reinterpret_cast<Pack4<T>*>(mrow + c) = out;
    } else {
      for (int k = 0; k < count; ++k) mrow[c + k] = out.v[k];
    }
  }
}

template <class T>
__global__ void l2_normalize_backward_kernel(const T* xhat, const float* squared_norms,
                                             const float* grad, std::int64_t rows,
                                             std::int64_t cols, T* out, std::int64_t out_stride) {
  const std::int64_t row =
      static_cast<std::int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = static_cast<int>(threadIdx.x % kWarp);
  if (row >= rows) return;
  const T* h = xhat + row * cols;
  const float* g = grad + row * cols;
  T* dst = out + row * out_stride;
  const float nrm2 = squared_norms[row];
  if (nrm2 >= kNormEps) {  // as the CPU path: TensorFlow's maximum gradient ties to the norm
    float dot = 0.f;
    for (std::int64_t c = lane; c < cols; c += kWarp) dot = fmaf(to_float(h[c]), g[c], dot);
    dot = warp_sum(dot);
    const float norm = sqrtf(nrm2);
    for (std::int64_t c = lane; c < cols; c += kWarp)
      dst[c] = from_float<T>((g[c] - to_float(h[c]) * dot) / norm);
  } else {
    const float norm = sqrtf(kNormEps);
    for (std::int64_t c = lane; c < cols; c += kWarp) dst[c] = from_float<T>(g[c] / norm);
  }
}

}  // namespace

// ---- launchers ----

void launch_find_nonfinite(const void* x, DeviceDType dtype, std::int64_t rows, std::int64_t cols,
                           std::int64_t row_stride, unsigned long long* first_bad,
                           cudaStream_t stream) {
  if (rows == 0 || cols == 0) return;
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto blocks = static_cast<unsigned>(blocks_for(rows * cols, 256, 4096));
    SIMCLR_LAUNCH(find_nonfinite_kernel<T>, blocks, 256, stream)
    (static_cast<const T*>(x), rows, cols, row_stride, first_bad);
  });
  SIMCLR_CHECK_LAUNCH("find_nonfinite_kernel");
}

void launch_l2_normalize(const void* x, DeviceDType dtype, std::int64_t rows, std::int64_t cols,
                         std::int64_t row_stride, void* out, float* squared_norms,
                         cudaStream_t stream) {
  if (rows == 0) return;
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto blocks = static_cast<unsigned>(blocks_for(rows, kRowsPerBlock, INT32_MAX));
    SIMCLR_LAUNCH_SYNC(l2_normalize_kernel<T>, blocks, kRowsPerBlock * kWarp, stream)
    (static_cast<const T*>(x), rows, cols, row_stride, static_cast<T*>(out), squared_norms);
  });
  SIMCLR_CHECK_LAUNCH("l2_normalize_kernel");
}

void launch_lse_tile(const LogitsTile& t, const RowStats& stats, cudaStream_t stream) {
  if (t.rows == 0 || t.cols == 0) return;
  const auto blocks = static_cast<unsigned>(blocks_for(t.rows, kRowsPerBlock, INT32_MAX));
  SIMCLR_LAUNCH_SYNC(lse_tile_kernel, blocks, kRowsPerBlock * kWarp, stream)(t, stats);
  SIMCLR_CHECK_LAUNCH("lse_tile_kernel");
}

void launch_lse_tile_fused(const LogitsTile& t, float* partial, const RowStats& stats,
                           cudaStream_t stream) {
  if (t.rows == 0 || t.cols == 0) return;
  // No self entry: the tile's U rows and its columns are disjoint ranges (lse_merge_fused_kernel
  // relies on it, and lse_tile_fused_kernel skips no entry).
  const std::int64_t r0 = t.layout.anchor_begin + t.q0;
  SIMCLR_CHECK(r0 + t.rows <= t.c0 || t.c0 + t.cols <= r0);
  float* col_partial = partial;
  float* row_partial = partial + 2 * column_chunks(t.rows) * t.cols;
  const dim3 grid(static_cast<unsigned>(row_blocks(t.cols)),
                  static_cast<unsigned>(column_chunks(t.rows)));
  SIMCLR_LAUNCH_SYNC(lse_tile_fused_kernel, grid, kFusedWarps * kWarp, stream)
  (t.s, t.lds, t.rows, t.cols, col_partial, row_partial);
  SIMCLR_CHECK_LAUNCH("lse_tile_fused_kernel");
  const auto blocks = static_cast<unsigned>(blocks_for(t.rows + t.cols, 256, INT32_MAX));
  SIMCLR_LAUNCH(lse_merge_fused_kernel, blocks, 256, stream)
  (t, col_partial, column_chunks(t.rows), row_partial, row_blocks(t.cols), stats);
  SIMCLR_CHECK_LAUNCH("lse_merge_fused_kernel");
}

void launch_forward_finish(const ForwardFinishParams& p, cudaStream_t stream) {
  dispatch(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    SIMCLR_LAUNCH_SYNC(forward_finish_kernel<T>, 1, kFinishThreads, stream)(p);
  });
  SIMCLR_CHECK_LAUNCH("forward_finish_kernel");
}

void launch_fill(float* p, std::int64_t count, float value, cudaStream_t stream) {
  if (count == 0) return;
  const auto blocks = static_cast<unsigned>(blocks_for(count, 256, 1024));
  SIMCLR_LAUNCH(fill_kernel, blocks, 256, stream)(p, count, value);
  SIMCLR_CHECK_LAUNCH("fill_kernel");
}

void launch_shifted_sums(const float* run_max, const float* run_sum, std::int64_t count,
                         float shift, bool accumulate, float* sums, cudaStream_t stream) {
  if (count == 0) return;
  const auto blocks = static_cast<unsigned>(blocks_for(count, 256, 1024));
  SIMCLR_LAUNCH(shifted_sums_kernel, blocks, 256, stream)
  (run_max, run_sum, count, shift, accumulate, sums);
  SIMCLR_CHECK_LAUNCH("shifted_sums_kernel");
}

void launch_broadcast_weight(const float* src, std::int64_t src_size, std::int64_t pairs,
                             float* weight, cudaStream_t stream) {
  if (pairs == 0) return;
  const auto blocks = static_cast<unsigned>(blocks_for(pairs, 256, 1024));
  SIMCLR_LAUNCH(broadcast_weight_kernel, blocks, 256, stream)(src, src_size, pairs, weight);
  SIMCLR_CHECK_LAUNCH("broadcast_weight_kernel");
}

void launch_pair_weight(const float* upstream, float upstream_scalar, const float* weight,
                        std::int64_t pairs, bool divide, float denominator, float scale,
                        float* alpha, cudaStream_t stream) {
  if (pairs == 0) return;
  const auto blocks = static_cast<unsigned>(blocks_for(pairs, 256, 1024));
  SIMCLR_LAUNCH(pair_weight_kernel, blocks, 256, stream)
  (upstream, upstream_scalar, weight, pairs, divide, denominator, scale, alpha);
  SIMCLR_CHECK_LAUNCH("pair_weight_kernel");
}

void launch_backward_params(const float* alpha_all, std::int64_t total, float inv_temperature,
                            DeviceDType dtype, float* params, cudaStream_t stream) {
  SIMCLR_LAUNCH_SYNC(backward_params_kernel, 1, kFinishThreads, stream)
  (alpha_all, total, inv_temperature, dtype == DeviceDType::kFloat16, params);
  SIMCLR_CHECK_LAUNCH("backward_params_kernel");
}

void launch_m_tile(const MTileParams& p, cudaStream_t stream) {
  const std::int64_t rows = p.tile.rows, cols = p.tile.cols;
  if (rows == 0 || cols == 0) return;
  const dim3 grid(static_cast<unsigned>(blocks_for((cols + 3) / 4, kMThreads, INT32_MAX)),
                  static_cast<unsigned>(rows < 65535 ? rows : 65535));
  dispatch(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    SIMCLR_LAUNCH(m_tile_kernel<T>, grid, kMThreads, stream)(p);
  });
  SIMCLR_CHECK_LAUNCH("m_tile_kernel");
}

void launch_l2_normalize_backward(const void* xhat, const float* squared_norms, const float* grad,
                                  std::int64_t rows, std::int64_t cols, DeviceDType dtype,
                                  void* out, std::int64_t out_stride, cudaStream_t stream) {
  if (rows == 0) return;
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto blocks = static_cast<unsigned>(blocks_for(rows, kRowsPerBlock, INT32_MAX));
    SIMCLR_LAUNCH_SYNC(l2_normalize_backward_kernel<T>, blocks, kRowsPerBlock * kWarp, stream)
    (static_cast<const T*>(xhat), squared_norms, grad, rows, cols, static_cast<T*>(out),
     out_stride);
  });
  SIMCLR_CHECK_LAUNCH("l2_normalize_backward_kernel");
}

}  // namespace simclr::cuda::detail

#pragma once
// Launchers of the device loss's kernels (kernels.cu). Plain host declarations, so the C++ front
// end never sees CUDA device code. Every launcher enqueues on `stream` and checks the launch.

#include <cuda_runtime_api.h>

#include <cstdint>

#include "simclr/cuda/device_types.hpp"

namespace simclr::cuda::detail {

// Where the anchors of one rank sit in U (as simclr::detail::RowLayout): anchors [anchor_begin,
// anchor_begin + 2 * pairs) of U's 2G rows; the positive of local anchor q is q +/- pairs.
struct AnchorLayout {
  std::int64_t anchor_begin = 0;
  std::int64_t pairs = 0;
};

// Reduction codes as simclr::Reduction (checked in device_loss.cpp), so no Eigen header reaches
// nvcc.
constexpr int kReductionNone = 1;
constexpr int kReductionSum = 2;
constexpr int kReductionSumOverBatchSize = 3;

// p[0, count) = value.
void launch_fill(float* p, std::int64_t count, float value, cudaStream_t stream);

// atomicMin of the flat index (row * cols + col) of any non-finite element into *first_bad, which
// the caller initialises to ~0ull.
void launch_find_nonfinite(const void* x, DeviceDType dtype, std::int64_t rows, std::int64_t cols,
                           std::int64_t row_stride, unsigned long long* first_bad,
                           cudaStream_t stream);

// out[i, :] = x[i, :] / sqrt(max(sum x^2, 1e-12)) in float32, stored in dtype (out stride = cols);
// squared_norms[i] = sum x^2.
void launch_l2_normalize(const void* x, DeviceDType dtype, std::int64_t rows, std::int64_t cols,
                         std::int64_t row_stride, void* out, float* squared_norms,
                         cudaStream_t stream);

// One float32 logits tile [rows, cols] (leading dimension lds, a multiple of 4) of this rank's
// anchors [q0, q0 + rows) against U rows [c0, c0 + cols): what every tile launcher reads.
struct LogitsTile {
  const float* s = nullptr;
  std::int64_t lds = 0;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t q0 = 0;  // first anchor, this rank's index (U row layout.anchor_begin + q0)
  std::int64_t c0 = 0;  // first U row of the columns
  AnchorLayout layout;
};

// Online log-sum-exp over one logits tile: the self entry is skipped, the positive is picked into
// positive[q], and (run_max, run_sum)[q] are merged with the tile's.
// What a forward tile updates: each anchor's running (max, sum) of its LSE and its positive logit,
// [2n] float32 each.
struct RowStats {
  float* run_max = nullptr;
  float* run_sum = nullptr;
  float* positive = nullptr;
};
void launch_lse_tile(const LogitsTile& tile, const RowStats& stats, cudaStream_t stream);

// The row and the column statistics of one tile in one read of it, for the tiles whose columns
// are anchors too: the symmetric forward's off-diagonal tiles (one process holds the whole batch,
// so S is symmetric and tile (I, J) above the diagonal stands for (J, I) as well) and the balanced
// schedule's pair tiles. The tile must have no self entry (its rows' U rows and its columns are
// disjoint; checked). Two launches: lse_tile_fused_kernel reads the tile once and writes
// partial[0, 2 * column_chunks(rows) * cols): the (max, sum) of each column over each chunk of
// kColumnChunk rows, at 2 * (chunk * cols + c); then partial[that, + 2 * row_blocks(cols) * rows):
// the (max, sum) of each row over each block of kRowBlockCols columns, at 2 * (block * rows + i)
// from there. lse_merge_fused_kernel merges both in a fixed order into (run_max, run_sum) of the
// row anchors [q0, q0 + rows) and the column anchors c0 + c - anchor_begin, and picks the positive
// of each whose partner lies in the tile. fused_partial_floats(rows, cols) floats of `partial`.
constexpr std::int64_t kColumnChunk = 128;
constexpr std::int64_t kRowBlockCols = 1024;
inline std::int64_t column_chunks(std::int64_t rows) {
  return (rows + kColumnChunk - 1) / kColumnChunk;
}
inline std::int64_t row_blocks(std::int64_t cols) {
  return (cols + kRowBlockCols - 1) / kRowBlockCols;
}
inline std::int64_t fused_partial_floats(std::int64_t rows, std::int64_t cols) {
  return 2 * (column_chunks(rows) * cols + row_blocks(cols) * rows);
}
void launch_lse_tile_fused(const LogitsTile& tile, float* partial, const RowStats& stats,
                           cudaStream_t stream);

// The balanced schedule's statistics at the fixed shift (docs/performance.md, "Schedules"): sums[k]
// = run_sum[k] exp(run_max[k] - shift), or sums[k] += that with `accumulate`, for k < count (0
// where run_max is -inf). Unlike (max, sum) pairs, these add across ranks in a reduce-scatter.
void launch_shifted_sums(const float* run_max, const float* run_sum, std::int64_t count,
                         float shift, bool accumulate, float* sums, cudaStream_t stream);

// One block: row_lse[q] = run_max + log(run_sum) for 2n anchors; per_example[i] = l_i (dtype);
// values = l_i * w_i (none, [n]) or the reduction ([1], dtype); objective[0] = J_r (float32).
// denominator <= 0 makes sum_over_batch_size 0 (Keras's divide_no_nan).
struct ForwardFinishParams {
  const float* run_max = nullptr;   // [2n]
  const float* run_sum = nullptr;   // [2n]
  const float* positive = nullptr;  // [2n]
  const float* weight = nullptr;    // [n]
  std::int64_t pairs = 0;           // n
  int reduction = kReductionSumOverBatchSize;
  double denominator = 0;
  DeviceDType dtype = DeviceDType::kFloat32;
  float* row_lse = nullptr;     // [2n] out
  void* per_example = nullptr;  // [n] out, dtype
  void* values = nullptr;       // [n] or [1] out, dtype
  float* objective = nullptr;   // [1] out
};
void launch_forward_finish(const ForwardFinishParams& p, cudaStream_t stream);

// Weights [n] from a sample weight of size 1 (broadcast) or n, already on the device.
void launch_broadcast_weight(const float* src, std::int64_t src_size, std::int64_t pairs,
                             float* weight, cudaStream_t stream);

// alpha[i] = alpha[n + i] = g_i * w_i (/ denominator for sum_over_batch_size; 0 when it is 0)
// * scale (the gradient scale of detail::StepPlan), with g_i = upstream[i] when upstream is
// non-null, else upstream_scalar.
void launch_pair_weight(const float* upstream, float upstream_scalar, const float* weight,
                        std::int64_t pairs, bool divide, float denominator, float scale,
                        float* alpha, cudaStream_t stream);

// params[0] = scale of the M tile (a power of two: 2^14 / max|alpha| for float16 so M uses its
// range, else 1); params[1] = inv_temperature / scale (the backward GEMM's alpha); params[2] = 1
// (its beta: every product accumulates into a zeroed gradient).
void launch_backward_params(const float* alpha_all, std::int64_t total, float inv_temperature,
                            DeviceDType dtype, float* params, cudaStream_t stream);

// M tile (docs/math.md section 4.2) from a float32 logits tile, scaled by params[0], stored in
// dtype with leading dimension ldm (the arguments in one struct, as flash-attention's kernels take
// theirs): M_kc = a_k exp(s - LSE_k) + a_c exp(s - LSE_c) - (a_k + a_c)[c == p(k)], 0 on the self
// entry.
struct MTileParams {
  LogitsTile tile;
  const float* lse_all = nullptr;    // [2G] every row's LSE, U order
  const float* alpha_all = nullptr;  // [2G] every row's weight
  const float* params = nullptr;     // launch_backward_params's output (device)
  DeviceDType dtype = DeviceDType::kFloat32;
  void* m = nullptr;  // [rows, cols] out, dtype
  std::int64_t ldm = 0;
};
void launch_m_tile(const MTileParams& p, cudaStream_t stream);

// Backward of launch_l2_normalize (docs/math.md section 4.5): out = (g - xhat (xhat . g)) /
// sqrt(nrm2) when nrm2 >= 1e-12, else g / sqrt(1e-12). xhat: dtype, stride cols; g: float32, stride
// cols; out: dtype.
void launch_l2_normalize_backward(const void* xhat, const float* squared_norms, const float* grad,
                                  std::int64_t rows, std::int64_t cols, DeviceDType dtype,
                                  void* out, std::int64_t out_stride, cudaStream_t stream);

}  // namespace simclr::cuda::detail

#include "device_engine.hpp"

#include <algorithm>
#include <climits>
#include <limits>

#include "blas.hpp"
#include "simclr/detail/cuda_check.hpp"

namespace simclr::cuda::detail {
namespace {

constexpr std::int64_t kDefaultTile = 8192;
constexpr std::int64_t kMinDefaultTile = 256;
constexpr std::int64_t kMaxTileRows = std::int64_t{65535} * 8;

std::int64_t round_up(std::int64_t x, std::int64_t m) { return (x + m - 1) / m * m; }

int as_int(std::int64_t v, const char* what) {
  SIMCLR_ENFORCE(v >= 0 && v <= INT_MAX, ValueError, "device loss: ", what, " ", v,
                 " exceeds cuBLAS's int range");
  return static_cast<int>(v);
}

const char* row_ptr(const void* base, std::int64_t row, std::int64_t d, std::size_t elem) {
  return static_cast<const char*>(base) + static_cast<std::size_t>(row * d) * elem;
}

// s[rows, cols] (row-major, ld lds) = inv_t * U[q, :] . U[c, :] for U rows [row0, row0 + rows) and
// [c0, c0 + cols). Column-major cuBLAS sees s^T = U_c * U_q^T with U_c read transposed.
void logits_gemm(const DeviceTileProblem& p, std::int64_t row0, std::int64_t rows, std::int64_t c0,
                 std::int64_t cols, float* s, std::int64_t lds) {
  cublasHandle_t blas = p.blas;
  const DeviceDType dtype = p.dtype;
  const void* u = p.u;
  const std::int64_t d = p.d;
  const float inv_t = p.inv_temperature;
  const float beta = 0.f;
  const cudaDataType_t type = blas_type(dtype);
  const std::size_t elem = element_size(dtype);
  if (d == 0) {
    // Empty rows: every logit is 0. U has no storage then (null), so no cuBLAS call with k = 0.
    cudaStream_t stream = nullptr;
    SIMCLR_CHECK_CUBLAS(cublasGetStream(blas, &stream));
    SIMCLR_CHECK_CUDA(
        cudaMemsetAsync(s, 0, static_cast<std::size_t>(rows * lds) * sizeof(float), stream));
    return;
  }
  const int ld_u = as_int(d, "dimension");
  SIMCLR_CHECK_CUBLAS(cublasSetPointerMode(blas, CUBLAS_POINTER_MODE_HOST));
  SIMCLR_CHECK_CUBLAS(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, as_int(cols, "tile cols"),
                                   as_int(rows, "tile rows"), as_int(d, "dimension"), &inv_t,
                                   row_ptr(u, c0, d, elem), type, ld_u, row_ptr(u, row0, d, elem),
                                   type, ld_u, &beta, s, CUDA_R_32F, as_int(lds, "tile ld"),
                                   CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// An M tile [rows, cols] in the problem's dtype, leading dimension ldm.
struct MTile {
  const void* m = nullptr;
  std::int64_t ldm = 0;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
};

// grad[g0 : g0 + count] += params[1] * op(M) U[o0 : o0 + other] for the M tile: op(M) = M
// (count = rows, other = cols) or, with `transposed`, M^T (count = cols, other = rows).
// Column-major: grad^T [d, count] = U_o^T [d, other] op(M)^T, where the stored M reads as
// M^T [cols, rows]. g0 indexes grad's rows (this rank's anchors), o0 U's.
void gradient_gemm(const DeviceTileProblem& p, const MTile& tile, std::int64_t g0, std::int64_t o0,
                   bool transposed, const float* params, float* grad) {
  cublasHandle_t blas = p.blas;
  const DeviceDType dtype = p.dtype;
  const void* u = p.u;
  const std::int64_t d = p.d;
  const void* m = tile.m;
  const std::int64_t ldm = tile.ldm, rows = tile.rows, cols = tile.cols;
  const int ld_u = as_int(d, "dimension");
  const std::int64_t count = transposed ? cols : rows, other = transposed ? rows : cols;
  const cudaDataType_t type = blas_type(dtype);
  SIMCLR_CHECK_CUBLAS(cublasSetPointerMode(blas, CUBLAS_POINTER_MODE_DEVICE));
  SIMCLR_CHECK_CUBLAS(cublasGemmEx(blas, CUBLAS_OP_N, transposed ? CUBLAS_OP_T : CUBLAS_OP_N, ld_u,
                                   as_int(count, "tile rows"), as_int(other, "tile cols"),
                                   params + 1, row_ptr(u, o0, d, element_size(dtype)), type, ld_u,
                                   m, type, as_int(ldm, "tile ld"), params + 2, grad + g0 * d,
                                   CUDA_R_32F, ld_u, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  SIMCLR_CHECK_CUBLAS(cublasSetPointerMode(blas, CUBLAS_POINTER_MODE_HOST));
}

// The symmetric scheme applies when this process's anchors are all of U: its block of S is then all
// of S, which is symmetric (docs/math.md section 3), and so is M (section 4.2).
bool use_symmetry(bool symmetric, AnchorLayout layout, std::int64_t total) {
  return symmetric && layout.anchor_begin == 0 && 2 * layout.pairs == total;
}

// Calls tile(q0, rows, c0, cols, mirrored) for each logits tile to compute, in a fixed order (the
// results are deterministic): anchors [q0, q0 + rows) (this rank's indices) against U rows
// [c0, c0 + cols). General scheme: every tile of the plan's shape. Symmetric scheme: the square
// tiles on and above the diagonal, min(plan.rows, plan.cols) wide; `mirrored` marks the
// off-diagonal ones, which stand for their transposes too.
template <class Tile>
void for_each_tile(bool symmetric_scheme, std::int64_t anchors, std::int64_t total,
                   const TilePlan& plan, Tile&& tile) {
  if (symmetric_scheme) {
    const std::int64_t b = std::min(plan.rows, plan.cols);
    for (std::int64_t i0 = 0; i0 < total; i0 += b)
      for (std::int64_t j0 = i0; j0 < total; j0 += b)
        tile(i0, std::min(b, total - i0), j0, std::min(b, total - j0), j0 > i0);
    return;
  }
  for (std::int64_t q0 = 0; q0 < anchors; q0 += plan.rows)
    for (std::int64_t c0 = 0; c0 < total; c0 += plan.cols)
      tile(q0, std::min(plan.rows, anchors - q0), c0, std::min(plan.cols, total - c0), false);
}

}  // namespace

cudaDataType_t blas_type(DeviceDType dtype) {
  switch (dtype) {
    case DeviceDType::kFloat32:
      return CUDA_R_32F;
    case DeviceDType::kBFloat16:
      return CUDA_R_16BF;
    case DeviceDType::kFloat16:
      return CUDA_R_16F;
  }
  throw TypeError(
      ::simclr::detail::str_cat("device loss: unsupported dtype code ", static_cast<int>(dtype)));
}

TilePlan plan_tiles(std::int64_t anchors, std::int64_t total, DeviceDType dtype,
                    const DeviceOptions& options) {
  SIMCLR_ENFORCE(options.tile_rows >= 0 && options.tile_cols >= 0, ValueError,
                 "tile sizes must be >= 0, got ", options.tile_rows, " x ", options.tile_cols);
  SIMCLR_ENFORCE(options.tile_rows <= kMaxTileRows, ValueError, "tile_rows ", options.tile_rows,
                 " exceeds ", kMaxTileRows);
  TilePlan plan;
  plan.rows = std::max<std::int64_t>(
      1, std::min(options.tile_rows > 0 ? options.tile_rows : kDefaultTile, anchors));
  plan.cols = std::max<std::int64_t>(
      1, std::min(options.tile_cols > 0 ? options.tile_cols : kDefaultTile, total));
  const auto bytes = [&](const TilePlan& p) {
    return static_cast<double>(p.rows) * static_cast<double>(round_up(p.cols, 8)) *
           static_cast<double>(sizeof(float) + element_size(dtype));
  };
  // Only default sizes shrink to the budget; sizes the caller chose are kept.
  while (bytes(plan) > static_cast<double>(options.workspace_bytes)) {
    const bool shrink_cols = options.tile_cols == 0 && plan.cols > kMinDefaultTile &&
                             (plan.cols >= plan.rows || options.tile_rows != 0);
    const bool shrink_rows = options.tile_rows == 0 && plan.rows > kMinDefaultTile;
    if (shrink_cols) {
      plan.cols = (plan.cols + 1) / 2;
    } else if (shrink_rows) {
      plan.rows = (plan.rows + 1) / 2;
    } else {
      break;
    }
  }
  plan.ld = round_up(plan.cols, 8);
  return plan;
}

Arena::Arena(const DeviceWorkspace& workspace, cudaStream_t stream, const char* call)
    : base_(static_cast<char*>(workspace.data)),
      capacity_(workspace.bytes),
      stream_(stream),
      call_(call) {
  SIMCLR_ENFORCE(reinterpret_cast<std::uintptr_t>(base_) % kAlign == 0, ValueError, call,
                 ": the workspace must be ", kAlign, "-byte aligned (got ",
                 static_cast<const void*>(base_), ")");
}

Arena Arena::counting() {
  Arena a;
  a.counting_ = true;
  return a;
}

DeviceArray Arena::take(std::size_t bytes) {
  const std::size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
  if (counting_) {
    used_ += rounded;
    return DeviceArray();
  }
  if (base_ == nullptr) return DeviceArray(bytes, stream_);
  SIMCLR_ENFORCE(used_ + bytes <= capacity_, ValueError, call_, ": the workspace of ", capacity_,
                 " bytes is too small (", used_ + bytes,
                 " bytes so far); size it with forward_workspace_bytes / "
                 "backward_workspace_bytes for the same problem and options");
  DeviceArray out = DeviceArray::borrow(bytes == 0 ? nullptr : base_ + used_, bytes);
  used_ += rounded;
  return out;
}

EngineScratch engine_forward_scratch(const DeviceTileProblem& p, Arena& arena) {
  EngineScratch s;
  const std::int64_t anchors = 2 * p.layout.pairs;
  if (anchors == 0 || p.total == 0) return s;
  const TilePlan& plan = p.plan;
  s.logits = arena.take(static_cast<std::size_t>(plan.rows * plan.ld) * sizeof(float));
  const std::int64_t b = std::min(plan.rows, plan.cols);
  if (use_symmetry(p.symmetric, p.layout, p.total))
    s.partial = arena.take(static_cast<std::size_t>(fused_partial_floats(b, b)) * sizeof(float));
  return s;
}

EngineScratch engine_backward_scratch(const DeviceTileProblem& p, Arena& arena) {
  EngineScratch s;
  const std::int64_t anchors = 2 * p.layout.pairs;
  if (anchors == 0 || p.d == 0) return s;
  const TilePlan& plan = p.plan;
  s.logits = arena.take(static_cast<std::size_t>(plan.rows * plan.ld) * sizeof(float));
  s.m = arena.take(static_cast<std::size_t>(plan.rows * plan.ld) * element_size(p.dtype));
  return s;
}

namespace {

// Every launch below writes at most one tile of the plan into the scratch: a scratch taken for
// another plan is a bug of the caller, caught here on every run (GPU or emulation) rather than as
// a silent overrun of the workspace. `partial_floats`: what the fused pass's partials need.
void check_scratch(const DeviceTileProblem& p, const EngineScratch& s, bool needs_m,
                   std::int64_t partial_floats) {
  const auto tile = static_cast<std::size_t>(p.plan.rows * p.plan.ld);
  SIMCLR_CHECK_GE(s.logits.bytes(), tile * sizeof(float));
  if (needs_m) SIMCLR_CHECK_GE(s.m.bytes(), tile * element_size(p.dtype));
  SIMCLR_CHECK_GE(s.partial.bytes(), static_cast<std::size_t>(partial_floats) * sizeof(float));
}

// Whether the blocks (4 U row indices each) hold any tile.
bool any_tile(const std::vector<std::int64_t>& blocks) {
  for (std::size_t k = 0; k + 3 < blocks.size(); k += 4)
    if (blocks[k + 1] > blocks[k] && blocks[k + 3] > blocks[k + 2]) return true;
  return false;
}

}  // namespace

double engine_forward(const DeviceTileProblem& p, const RowStats& stats,
                      const EngineScratch& scratch) {
  const std::int64_t d = p.d, total = p.total;
  const AnchorLayout layout = p.layout;
  const TilePlan& plan = p.plan;
  const bool symmetric = p.symmetric;
  cudaStream_t stream = p.stream;
  const std::int64_t anchors = 2 * layout.pairs;
  SIMCLR_CHECK_LE(layout.anchor_begin + anchors, total);
  launch_fill(stats.run_max, anchors, -std::numeric_limits<float>::infinity(), stream);
  launch_fill(stats.run_sum, anchors, 0.f, stream);
  launch_fill(stats.positive, anchors, 0.f, stream);
  if (anchors == 0 || total == 0) return 0;
  float* s = scratch.logits.as<float>();
  // With the symmetry (docs/math.md section 3), the rows of tile (I, J) serve the anchors of I and,
  // off the diagonal, its columns serve those of J, whose tile (J, I) is not computed: there one
  // fused pass reads the tile once for both. A diagonal tile needs its rows only.
  const bool symmetric_scheme = use_symmetry(symmetric, layout, total);
  const std::int64_t b = std::min(plan.rows, plan.cols);
  check_scratch(p, scratch, false, symmetric_scheme ? fused_partial_floats(b, b) : 0);
  const DeviceArray& partial = scratch.partial;
  double flops = 0;
  for_each_tile(
      symmetric_scheme, anchors, total, plan,
      [&](std::int64_t q0, std::int64_t rows, std::int64_t c0, std::int64_t cols, bool mirrored) {
        logits_gemm(p, layout.anchor_begin + q0, rows, c0, cols, s, plan.ld);
        const LogitsTile tile{s, plan.ld, rows, cols, q0, c0, layout};
        if (mirrored) {
          launch_lse_tile_fused(tile, partial.as<float>(), stats, stream);
        } else {
          launch_lse_tile(tile, stats, stream);
        }
        flops += 2.0 * static_cast<double>(rows * cols) * static_cast<double>(d);
      });
  return flops;
}

double engine_backward(const DeviceTileProblem& p, const float* lse_all, const float* alpha_all,
                       const float* params, float* grad, const EngineScratch& scratch) {
  const DeviceDType dtype = p.dtype;
  const std::int64_t d = p.d, total = p.total;
  const AnchorLayout layout = p.layout;
  const TilePlan& plan = p.plan;
  cudaStream_t stream = p.stream;
  const std::int64_t anchors = 2 * layout.pairs;
  SIMCLR_CHECK_LE(layout.anchor_begin + anchors, total);
  if (anchors == 0 || d == 0) return 0;
  check_scratch(p, scratch, true, 0);
  float* s = scratch.logits.as<float>();
  void* m = scratch.m.data();
  // Every product accumulates (beta = 1) into a zeroed grad.
  SIMCLR_CHECK_CUDA(
      cudaMemsetAsync(grad, 0, static_cast<std::size_t>(anchors * d) * sizeof(float), stream));
  // With the symmetry, M is symmetric too (docs/math.md section 4.2: M_kc = M_ck, as p is an
  // involution): an off-diagonal tile (I, J) gives grad[I] += M_IJ U_J and grad[J] += M_IJ^T U_I.
  double flops = 0;
  for_each_tile(
      use_symmetry(p.symmetric, layout, total), anchors, total, plan,
      [&](std::int64_t q0, std::int64_t rows, std::int64_t c0, std::int64_t cols, bool mirrored) {
        const std::int64_t r0 = layout.anchor_begin + q0;
        logits_gemm(p, r0, rows, c0, cols, s, plan.ld);
        MTileParams mp;
        mp.tile = LogitsTile{s, plan.ld, rows, cols, q0, c0, layout};
        mp.lse_all = lse_all;
        mp.alpha_all = alpha_all;
        mp.params = params;
        mp.dtype = dtype;
        mp.m = m;
        mp.ldm = plan.ld;
        launch_m_tile(mp, stream);
        const MTile tile{m, plan.ld, rows, cols};
        gradient_gemm(p, tile, q0, c0, false, params, grad);
        if (mirrored) gradient_gemm(p, tile, c0 - layout.anchor_begin, r0, true, params, grad);
        flops +=
            2.0 * static_cast<double>(rows * cols) * static_cast<double>(d) * (mirrored ? 3 : 2);
      });
  return flops;
}

EngineScratch engine_pairs_scratch(const DeviceTileProblem& p, Arena& arena) {
  EngineScratch s;
  if (p.layout.pairs == 0 || p.total == 0) return s;
  const TilePlan& plan = p.plan;
  s.logits = arena.take(static_cast<std::size_t>(plan.rows * plan.ld) * sizeof(float));
  s.m = arena.take(static_cast<std::size_t>(plan.rows * plan.ld) * element_size(p.dtype));
  s.partial = arena.take(static_cast<std::size_t>(fused_partial_floats(plan.rows, plan.cols)) *
                         sizeof(float));
  return s;
}

namespace {

// Calls tile(r0, rows, c0, cols) for each tile of each block, in block order.
template <class Tile>
void for_each_pair_tile(const TilePlan& plan, const std::vector<std::int64_t>& blocks,
                        Tile&& tile) {
  for (std::size_t k = 0; k + 3 < blocks.size(); k += 4) {
    const std::int64_t r1 = blocks[k + 1], c1 = blocks[k + 3];
    for (std::int64_t r0 = blocks[k]; r0 < r1; r0 += plan.rows)
      for (std::int64_t c0 = blocks[k + 2]; c0 < c1; c0 += plan.cols)
        tile(r0, std::min(plan.rows, r1 - r0), c0, std::min(plan.cols, c1 - c0));
  }
}

// The tile as the launchers see it: its rows are "anchors" r0.. of a layout whose partners lie
// beyond U (pairs = total), so neither a self nor a positive entry is ever matched.
LogitsTile pair_tile(const float* s, std::int64_t lds, std::int64_t r0, std::int64_t rows,
                     std::int64_t c0, std::int64_t cols, std::int64_t total) {
  return LogitsTile{s, lds, rows, cols, r0, c0, AnchorLayout{0, total}};
}

}  // namespace

double engine_forward_pairs(const DeviceTileProblem& p, const std::vector<std::int64_t>& blocks,
                            const RowStats& stats, const EngineScratch& scratch) {
  if (!any_tile(blocks)) return 0;
  check_scratch(p, scratch, false, fused_partial_floats(p.plan.rows, p.plan.cols));
  float* s = scratch.logits.as<float>();
  double flops = 0;
  for_each_pair_tile(p.plan, blocks,
                     [&](std::int64_t r0, std::int64_t rows, std::int64_t c0, std::int64_t cols) {
                       logits_gemm(p, r0, rows, c0, cols, s, p.plan.ld);
                       const LogitsTile tile = pair_tile(s, p.plan.ld, r0, rows, c0, cols, p.total);
                       launch_lse_tile_fused(tile, scratch.partial.as<float>(), stats, p.stream);
                       flops += 2.0 * static_cast<double>(rows * cols) * static_cast<double>(p.d);
                     });
  return flops;
}

double engine_backward_pairs(const DeviceTileProblem& p, const std::vector<std::int64_t>& blocks,
                             const float* lse_all, const float* alpha_all, const float* params,
                             float* grad, const EngineScratch& scratch) {
  if (p.d == 0 || !any_tile(blocks)) return 0;
  check_scratch(p, scratch, true, 0);
  float* s = scratch.logits.as<float>();
  void* m = scratch.m.data();
  double flops = 0;
  for_each_pair_tile(p.plan, blocks,
                     [&](std::int64_t r0, std::int64_t rows, std::int64_t c0, std::int64_t cols) {
                       logits_gemm(p, r0, rows, c0, cols, s, p.plan.ld);
                       MTileParams mp;
                       mp.tile = pair_tile(s, p.plan.ld, r0, rows, c0, cols, p.total);
                       mp.lse_all = lse_all;
                       mp.alpha_all = alpha_all;
                       mp.params = params;
                       mp.dtype = p.dtype;
                       mp.m = m;
                       mp.ldm = p.plan.ld;
                       launch_m_tile(mp, p.stream);
                       const MTile tile{m, p.plan.ld, rows, cols};
                       gradient_gemm(p, tile, r0, c0, false, params, grad);
                       gradient_gemm(p, tile, c0, r0, true, params, grad);
                       flops += 6.0 * static_cast<double>(rows * cols) * static_cast<double>(p.d);
                     });
  return flops;
}

}  // namespace simclr::cuda::detail

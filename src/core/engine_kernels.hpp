#pragma once
// The engine's tile loops (engine_kernels.cpp), compiled once per CPU level into its own namespace
// and chosen at run time by engine.cpp. Only plain structs and raw pointers cross this boundary:
// each level has its own copy of Eigen's templates (engine_kernels.cpp renames Eigen's namespace),
// so no Eigen object built for one instruction set is handed to code built for another, and no
// inline function compiled with AVX-512 can be picked by the linker for a caller that runs without
// it.

#include <cstdint>

namespace simclr::detail::kernels {

// What the forward and the backward share: U, where this rank's anchors are, and how to tile.
template <class T>
struct TileProblem {
  const T* u = nullptr;           // [total_rows, dim] row-major, contiguous, unit rows
  std::int64_t total_rows = 0;    // 2G
  std::int64_t dim = 0;           // d
  std::int64_t anchor_begin = 0;  // first anchor row of this rank in U
  std::int64_t pairs = 0;         // n: the rank's 2n anchors are [anchor_begin, anchor_begin + 2n)
  T inv_temperature = T(1);       // logits are inv_temperature * u_q . u_c
  int threads = 1;                // OpenMP threads, resolved (>= 1)
  std::int64_t tile_rows = 1;     // resolved tile sizes (>= 1)
  std::int64_t tile_cols = 1;
  bool symmetric = true;  // compute one triangle of the rank's own diagonal block
  // Only the rank's own [2n, 2n] diagonal block (the balanced schedule adds the other blocks with
  // pair_forward / pair_backward).
  bool own_block_only = false;
};

template <class T>
struct ForwardArgs {
  TileProblem<T> problem;
  T* logits = nullptr;        // [2n, 2G] row-major to keep, or nullptr to stream tiles
  T* row_lse = nullptr;       // [2n] out
  T* row_positive = nullptr;  // [2n] out
  // [2n] out when set and the fixed shift applies: sum over the covered columns of exp(s - shift).
  T* row_sum = nullptr;
};

// Off-diagonal blocks of the logit matrix for the balanced schedule: block k covers U rows
// [blocks[4k], blocks[4k+1]) against U rows [blocks[4k+2], blocks[4k+3]), disjoint ranges of
// different ranks (no self entry, no positive). Each logit feeds its row and its column.
template <class T>
struct PairArgs {
  TileProblem<T> problem;  // u, total_rows, dim, inv_temperature, threads, tile sizes
  const std::int64_t* blocks = nullptr;
  std::int64_t count = 0;
  T* sums = nullptr;             // forward: [2G] += row and column sums of exp(s - shift)
  const T* lse_all = nullptr;    // backward: [2G]
  const T* alpha_all = nullptr;  // backward: [2G]
  const T* beta_all = nullptr;   // backward: [2G] or nullptr (see BackwardArgs)
  T* grad = nullptr;             // backward: [2G, d] += M_RC U_C on rows R and M_RC^T U_R on C
};

template <class T>
struct BackwardArgs {
  TileProblem<T> problem;
  const T* lse_all = nullptr;    // [2G] every row's LSE, U order
  const T* alpha_all = nullptr;  // [2G] every row's weight
  const T* beta_all = nullptr;   // [2G] alpha exp(shift - LSE), or nullptr without a fixed shift
  const T* logits = nullptr;     // the forward's kept [2n, 2G] block, or nullptr
  T* grad = nullptr;             // [2n, d] out, zeroed by the caller
  // When set: += the sum over the anchors q and the columns c >= negatives_begin (the extra
  // negatives' rows of U) of M_qc s_qc, in double (docs/math.md section 4.7).
  double* negatives_dot = nullptr;
  std::int64_t negatives_begin = 0;
};

}  // namespace simclr::detail::kernels

// One set of entry points per level (namespaces baseline, avx2, avx512); each of the tile loops
// returns the flops it performed. square_gemm is C = A B of [n, n] row-major matrices with the
// level's copy of Eigen's GEMM on `threads` OpenMP threads: the reference rate that
// `simclr-loss bench` compares the tile loops with, so both run the same instruction set. Defined
// for float and double.
#define SIMCLR_DECLARE_ENGINE_KERNELS(level)                                                      \
  namespace simclr::detail::kernels::level {                                                      \
  template <class T>                                                                              \
  double forward(const ForwardArgs<T>& args);                                                     \
  template <class T>                                                                              \
  double backward(const BackwardArgs<T>& args);                                                   \
  template <class T>                                                                              \
  double pair_forward(const PairArgs<T>& args);                                                   \
  template <class T>                                                                              \
  double pair_backward(const PairArgs<T>& args);                                                  \
  template <class T>                                                                              \
  void square_gemm(const T* a, const T* b, T* c, std::int64_t n, int threads);                    \
  extern template void square_gemm<float>(const float*, const float*, float*, std::int64_t, int); \
  extern template void square_gemm<double>(const double*, const double*, double*, std::int64_t,   \
                                           int);                                                  \
  extern template double pair_forward<float>(const PairArgs<float>&);                             \
  extern template double pair_forward<double>(const PairArgs<double>&);                           \
  extern template double pair_backward<float>(const PairArgs<float>&);                            \
  extern template double pair_backward<double>(const PairArgs<double>&);                          \
  extern template double forward<float>(const ForwardArgs<float>&);                               \
  extern template double forward<double>(const ForwardArgs<double>&);                             \
  extern template double backward<float>(const BackwardArgs<float>&);                             \
  extern template double backward<double>(const BackwardArgs<double>&);                           \
  }

SIMCLR_DECLARE_ENGINE_KERNELS(baseline)
SIMCLR_DECLARE_ENGINE_KERNELS(avx2)
SIMCLR_DECLARE_ENGINE_KERNELS(avx512)

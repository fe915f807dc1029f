#pragma once
// Check macros for the CUDA runtime, in the style of SIMCLR_CHECK_MPI: a failure becomes
// simclr::CommError naming the call and CUDA's error name and text. Header-only, for the GPU
// targets.

#include <cuda_runtime_api.h>

#include "simclr/detail/check.hpp"

// Wraps a CUDA runtime call: a failure throws CommError "<call> failed: <cudaErrorName>: <text>".
#define SIMCLR_CHECK_CUDA(call)                                                                  \
  do {                                                                                           \
    const cudaError_t simclr_cuda_rc_ = (call);                                                  \
    if (simclr_cuda_rc_ != cudaSuccess)                                                          \
      throw ::simclr::CommError(                                                                 \
          ::simclr::detail::str_cat(#call, " failed: ", cudaGetErrorName(simclr_cuda_rc_), ": ", \
                                    cudaGetErrorString(simclr_cuda_rc_)));                       \
  } while (0)

// After a kernel launch: a launch failure throws CommError naming the kernel.
#define SIMCLR_CHECK_LAUNCH(kernel_name)                                                   \
  do {                                                                                     \
    const cudaError_t simclr_cuda_rc_ = cudaGetLastError();                                \
    if (simclr_cuda_rc_ != cudaSuccess)                                                    \
      throw ::simclr::CommError(::simclr::detail::str_cat(                                 \
          "launch of ", kernel_name, " failed: ", cudaGetErrorName(simclr_cuda_rc_), ": ", \
          cudaGetErrorString(simclr_cuda_rc_)));                                           \
  } while (0)

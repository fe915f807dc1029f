#pragma once
// Check macros for the CUDA runtime: a failure becomes simclr::DeviceError naming the call, CUDA's
// error name and text, and the device current on the calling thread. Header-only, for the GPU
// targets. NCCL failures are CommError (distributed/nccl_communicator.cpp), not these.

#include <cuda_runtime_api.h>

#include <string>

#include "simclr/detail/check.hpp"

namespace simclr::detail {

// "<call> failed: <cudaErrorName>: <text> (device N)"; the device is left out when even
// cudaGetDevice fails. Reading the device does not clear the sticky error being reported.
inline std::string cuda_failure(const std::string& call, cudaError_t rc) {
  int device = -1;
  const bool known = cudaGetDevice(&device) == cudaSuccess;
  return str_cat(call, " failed: ", cudaGetErrorName(rc), ": ", cudaGetErrorString(rc),
                 known ? str_cat(" (device ", device, ")") : std::string());
}

}  // namespace simclr::detail

// Wraps a CUDA runtime call: a failure throws DeviceError
// "<call> failed: <cudaErrorName>: <text> (device N)".
#define SIMCLR_CHECK_CUDA(call)                                                            \
  do {                                                                                     \
    const cudaError_t simclr_cuda_rc_ = (call);                                            \
    if (simclr_cuda_rc_ != cudaSuccess)                                                    \
      throw ::simclr::DeviceError(::simclr::detail::cuda_failure(#call, simclr_cuda_rc_)); \
  } while (0)

// After a kernel launch: a launch failure throws DeviceError "launch of <kernel> failed: ...".
#define SIMCLR_CHECK_LAUNCH(kernel_name)                                           \
  do {                                                                             \
    const cudaError_t simclr_cuda_rc_ = cudaGetLastError();                        \
    if (simclr_cuda_rc_ != cudaSuccess)                                            \
      throw ::simclr::DeviceError(::simclr::detail::cuda_failure(                  \
          ::simclr::detail::str_cat("launch of ", kernel_name), simclr_cuda_rc_)); \
  } while (0)

#pragma once
// cuBLAS check macro (private to the GPU targets).

#include <cublas_v2.h>

#include "simclr/detail/check.hpp"

// Wraps a cuBLAS call: a failure throws DeviceError "<call> failed: <status name>: <status text>".
#define SIMCLR_CHECK_CUBLAS(call)                                                             \
  do {                                                                                        \
    const cublasStatus_t simclr_blas_rc_ = (call);                                            \
    if (simclr_blas_rc_ != CUBLAS_STATUS_SUCCESS)                                             \
      throw ::simclr::DeviceError(                                                            \
          ::simclr::detail::str_cat(#call, " failed: ", cublasGetStatusName(simclr_blas_rc_), \
                                    ": ", cublasGetStatusString(simclr_blas_rc_)));           \
  } while (0)

#pragma once
// The device built-ins kernels.cu uses, on the host (emulation.hpp), and the launch seam
// (SIMCLR_LAUNCH). The emulated build compiles cuda/engine/kernels.cu with the host compiler and forces
// this header in first (-include), so the product source never names the emulation. The CUDA
// headers come first, so that their own definitions (__shared__) are the ones replaced here.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cmath>

#include "emulation.hpp"

// The float overloads of device math that <cmath> keeps in std.
using std::isfinite;

#define threadIdx (::simclr::cuda::emu::current_thread().thread_idx)
#define blockIdx (::simclr::cuda::emu::current_thread().block_idx)
#define blockDim (::simclr::cuda::emu::current_thread().block_dim)
#define gridDim (::simclr::cuda::emu::current_thread().grid_dim)
#define __syncthreads() ::simclr::cuda::emu::sync_block()
#define __shfl_xor_sync(mask, value, lane_mask) \
  ::simclr::cuda::emu::shfl_xor_sync(mask, value, lane_mask)
#define atomicMin(address, value) ::simclr::cuda::emu::atomic_min(address, value)
// Block-shared memory: one copy per kernel instantiation, which the serialised launches make
// per block.
#undef __shared__
#define __shared__ static

#define SIMCLR_LAUNCH(kernel, grid, block, stream) \
  ::simclr::cuda::emu::make_launcher(kernel, #kernel, grid, block, stream, false)
#define SIMCLR_LAUNCH_SYNC(kernel, grid, block, stream) \
  ::simclr::cuda::emu::make_launcher(kernel, #kernel, grid, block, stream, true)

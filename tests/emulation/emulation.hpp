#pragma once
// CPU emulation of the CUDA kernels' execution model, for testing the GPU path on machines without
// a GPU (docs/gpu.md, "Emulation"). The emulated build compiles cuda/engine/kernels.cu with the host
// compiler, with builtins.hpp (which includes this header) forced in first; runtime.cpp implements
// it together with the CUDA runtime and cuBLAS calls the GPU path makes.
//
// A launch runs synchronously on the calling thread, one block after another. Threads of a block
// that never meet (SIMCLR_LAUNCH) run one after another; threads that meet at __syncthreads or a
// warp shuffle (SIMCLR_LAUNCH_SYNC) run as cooperative fibers, so every barrier is a real
// rendezvous. A barrier that not every thread of its block (or warp) reaches, a barrier in a kernel
// launched with SIMCLR_LAUNCH, and launch configurations a GPU would refuse make the launch fail
// (cudaGetLastError), as a hung or failed kernel would on the device. Launches from several host
// threads are serialised, so block-shared memory can be a static array of the kernel.
//
// What this checks: indices, offsets, shapes, the kernels' arithmetic in float32, barrier
// discipline, and (under AddressSanitizer) every out-of-bounds access of a kernel. What it cannot
// check: the memory model of a real GPU, timing, and the performance of anything.

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>

namespace simclr::cuda::emu {

// Index registers of the emulated thread that is running (valid inside a kernel only).
struct ThreadIndex {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};
const ThreadIndex& current_thread();

// Runs `body` once per thread of grid x block; `cooperative` as SIMCLR_LAUNCH_SYNC. A failure is
// reported through cudaGetLastError, never thrown.
void launch(const char* kernel_name, dim3 grid, dim3 block, cudaStream_t stream, bool cooperative,
            const std::function<void()>& body);

// __syncthreads: every thread of the block meets here.
void sync_block();

// One shuffle step of the warp the running thread belongs to: publishes `bits` (up to 8 bytes of
// the value) and returns those of lane `lane ^ lane_mask`. Every lane of the warp must take part.
std::uint64_t shuffle_xor_bits(std::uint64_t bits, int lane_mask, unsigned member_mask);

// The launch syntax of kernels.cu: SIMCLR_LAUNCH(kernel, grid, block, stream)(args...).
template <class... Params>
struct Launcher {
  void (*kernel)(Params...);
  const char* name;
  dim3 grid, block;
  cudaStream_t stream;
  bool cooperative;

  template <class... Args>
  void operator()(Args&&... args) const {
    auto run = [&] { kernel(args...); };
    launch(name, grid, block, stream, cooperative, run);
  }
};

template <class... Params>
Launcher<Params...> make_launcher(void (*kernel)(Params...), const char* name, dim3 grid,
                                  dim3 block, cudaStream_t stream, bool cooperative) {
  return {kernel, name, grid, block, stream, cooperative};
}

template <class T>
T shfl_xor_sync(unsigned member_mask, T value, int lane_mask) {
  static_assert(sizeof(T) <= sizeof(std::uint64_t), "shuffle of at most 8 bytes");
  std::uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = shuffle_xor_bits(bits, lane_mask, member_mask);
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}

// Device atomics: launches are serialised and a block's threads never run at the same time.
inline unsigned long long atomic_min(unsigned long long* address, unsigned long long value) {
  const unsigned long long old = *address;
  if (value < old) *address = value;
  return old;
}

// Device memory as the emulated runtime sees it (for the emulated cuBLAS's operand checks).
bool is_device(const void* p, std::size_t bytes);       // inside one live allocation
bool touches_device(const void* p, std::size_t bytes);  // any byte of it is device memory
bool valid_stream(cudaStream_t stream);                 // null, a legacy handle or a live stream
std::string describe(const void* p, std::size_t bytes);
// Test hook: the next `count` device allocations (cudaMalloc, cudaMallocAsync) made by the calling
// thread fail with cudaErrorMemoryAllocation, as an exhausted GPU would. 0 disarms.
void fail_next_allocations(int count);
// What the runtime was asked to do since the last reset_call_counts(), for tests of the
// asynchronous contract (docs/gpu.md): calls that block the host until the device is done
// (cudaDeviceSynchronize, cudaStreamSynchronize, cudaEventSynchronize, the synchronous cudaMemcpy,
// cublasDestroy), device allocations (cudaMalloc, cudaMallocAsync), cuBLAS handles created and
// the memory pools' release thresholds set (cudaMemPoolSetAttribute of
// cudaMemPoolAttrReleaseThreshold; each device has one pool, its default and current one, whose
// threshold starts at CUDA's 0). Counted over every thread.
struct CallCounts {
  long host_syncs = 0;
  long allocations = 0;
  long blas_handles_created = 0;
  long pool_threshold_sets = 0;
};
CallCounts call_counts();
void reset_call_counts();
void count_host_sync();
void count_blas_handle_created();
// NCCL emulation hooks (tests/emulation/nccl.cpp): make ncclCommGetAsyncError of `comm` (an
// ncclComm_t) report `result` (an ncclResult_t), and count the ncclCommAbort calls so far.
void nccl_set_async_error(void* comm, int result);
int nccl_aborts();
// A non-blocking communicator: `comm`'s next collectives return ncclInProgress, and its
// ncclCommGetAsyncError reports ncclInProgress for the next `polls` calls, then ncclSuccess.
// nccl_pending_polls says how many of those polls are still unanswered.
void nccl_set_in_progress(void* comm, int polls);
int nccl_pending_polls(void* comm);
// Reports a failure on stderr and as the thread's last CUDA error; returns `code`.
cudaError_t fail(cudaError_t code, const std::string& why);

}  // namespace simclr::cuda::emu

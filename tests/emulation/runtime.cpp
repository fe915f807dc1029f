// The CPU emulation of the GPU path (emulation.hpp): kernel launches on fibers, and the CUDA
// runtime and cuBLAS calls of the GPU targets, on host memory, with the checks a GPU would make.
// Linked instead of libcudart and libcublas into the emulated build of simclr_cuda (docs/gpu.md).
//
// Device memory is host memory from the allocator, registered so that every copy, memset and GEMM
// can check that its device operands lie inside one live allocation and its host operands do not.
// Fresh allocations are filled with 0xFF bytes, a NaN in float32, bfloat16 and float16, so reading
// memory nobody wrote shows up in the results.

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <ucontext.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <set>
#include <string>
#include <vector>

#include "emulation.hpp"

#if defined(__SANITIZE_ADDRESS__)
#define SIMCLR_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SIMCLR_EMU_ASAN 1
#endif
#endif
#ifdef SIMCLR_EMU_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

namespace simclr::cuda::emu {
namespace {

// ---- errors ----

thread_local cudaError_t last_error = cudaSuccess;
// Devices share one memory (the host's); an MPI process per device is what the NCCL tests run.
constexpr int kDevices = 8;
thread_local int current_device = 0;
thread_local int allocations_to_fail = 0;  // fail_next_allocations

// ---- device memory ----

struct Memory {
  std::mutex mutex;
  std::map<std::uintptr_t, std::size_t> live;  // begin -> bytes
  std::size_t used = 0, high = 0;
  std::set<const void*> streams, events;
};

Memory& memory() {
  static Memory* m = new Memory;  // never destroyed: static destructors may still free
  return *m;
}

}  // namespace

namespace {
std::atomic<long> host_syncs{0}, allocations{0}, blas_handles{0}, threshold_sets{0};
}  // namespace

CallCounts call_counts() {
  CallCounts c;
  c.host_syncs = host_syncs.load();
  c.allocations = allocations.load();
  c.blas_handles_created = blas_handles.load();
  c.pool_threshold_sets = threshold_sets.load();
  return c;
}

void reset_call_counts() {
  host_syncs = 0;
  allocations = 0;
  blas_handles = 0;
  threshold_sets = 0;
}

void count_host_sync() { ++host_syncs; }
void count_blas_handle_created() { ++blas_handles; }

void fail_next_allocations(int count) { allocations_to_fail = count > 0 ? count : 0; }

cudaError_t fail(cudaError_t code, const std::string& why) {
  std::fprintf(stderr, "cuda emulation: %s\n", why.c_str());
  last_error = code;
  return code;
}

bool is_device(const void* p, std::size_t bytes) {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  Memory& m = memory();
  std::lock_guard<std::mutex> lock(m.mutex);
  auto it = m.live.upper_bound(a);
  if (it == m.live.begin()) return false;
  --it;
  return a >= it->first && a + bytes <= it->first + it->second &&
         (bytes > 0 || a < it->first + it->second);
}

bool touches_device(const void* p, std::size_t bytes) {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  Memory& m = memory();
  std::lock_guard<std::mutex> lock(m.mutex);
  auto it = m.live.upper_bound(a + std::max<std::size_t>(bytes, 1) - 1);
  if (it == m.live.begin()) return false;
  --it;
  return it->first + it->second > a;
}

std::string describe(const void* p, std::size_t bytes) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "[%p, +%zu bytes)", p, bytes);
  return buf;
}

bool valid_stream(cudaStream_t s) {
  if (s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread) return true;
  Memory& m = memory();
  std::lock_guard<std::mutex> lock(m.mutex);
  return m.streams.count(s) != 0;
}

namespace {

cudaError_t allocate(void** out, std::size_t bytes) {
  ++allocations;
  if (out == nullptr) return fail(cudaErrorInvalidValue, "allocation with a null result pointer");
  *out = nullptr;
  if (bytes == 0) return cudaSuccess;
  if (allocations_to_fail > 0) {
    --allocations_to_fail;
    return fail(cudaErrorMemoryAllocation,
                "allocation of " + std::to_string(bytes) + " bytes failed (injected by the test)");
  }
  const std::size_t rounded = (bytes + 255) / 256 * 256;
  void* p = std::aligned_alloc(256, rounded);
  if (p == nullptr) return fail(cudaErrorMemoryAllocation, "out of host memory");
  std::memset(p, 0xFF, bytes);
  Memory& m = memory();
  std::lock_guard<std::mutex> lock(m.mutex);
  m.live.emplace(reinterpret_cast<std::uintptr_t>(p), bytes);
  m.used += bytes;
  m.high = std::max(m.high, m.used);
  *out = p;
  return cudaSuccess;
}

cudaError_t release(void* p) {
  if (p == nullptr) return cudaSuccess;
  Memory& m = memory();
  {
    std::lock_guard<std::mutex> lock(m.mutex);
    auto it = m.live.find(reinterpret_cast<std::uintptr_t>(p));
    if (it == m.live.end())
      return fail(cudaErrorInvalidValue, "free of " + describe(p, 0) + ", not a live allocation");
    m.used -= it->second;
    m.live.erase(it);
  }
  std::free(p);
  return cudaSuccess;
}

cudaError_t check_stream(cudaStream_t s, const char* call) {
  if (valid_stream(s)) return cudaSuccess;
  return fail(cudaErrorInvalidResourceHandle, std::string(call) + " on a stream that is not live");
}

cudaError_t check_event(cudaEvent_t e, const char* call) {
  Memory& m = memory();
  {
    std::lock_guard<std::mutex> lock(m.mutex);
    if (m.events.count(e) != 0) return cudaSuccess;
  }
  return fail(cudaErrorInvalidResourceHandle, std::string(call) + " of an event that is not live");
}

template <class Handle>
cudaError_t make_handle(Handle* out, std::set<const void*> Memory::*registry) {
  if (out == nullptr) return fail(cudaErrorInvalidValue, "null handle pointer");
  auto* h = reinterpret_cast<Handle>(new std::int64_t(0));
  Memory& m = memory();
  std::lock_guard<std::mutex> lock(m.mutex);
  (m.*registry).insert(h);
  *out = h;
  return cudaSuccess;
}

template <class Handle>
cudaError_t drop_handle(Handle h, std::set<const void*> Memory::*registry, const char* what) {
  Memory& m = memory();
  {
    std::lock_guard<std::mutex> lock(m.mutex);
    if ((m.*registry).erase(h) == 0)
      return fail(cudaErrorInvalidResourceHandle,
                  std::string("destroy of a ") + what + " that is not live");
  }
  delete reinterpret_cast<std::int64_t*>(h);
  return cudaSuccess;
}

cudaError_t check_copy(void* dst, const void* src, std::size_t count, cudaMemcpyKind kind,
                       const char* call) {
  const bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if (kind == cudaMemcpyDefault) {
    if (touches_device(dst, count) && !is_device(dst, count))
      return fail(cudaErrorInvalidValue, std::string(call) + ": destination " +
                                             describe(dst, count) + " overruns its allocation");
    if (touches_device(src, count) && !is_device(src, count))
      return fail(cudaErrorInvalidValue, std::string(call) + ": source " + describe(src, count) +
                                             " overruns its allocation");
    return cudaSuccess;
  }
  if (dst_dev ? !is_device(dst, count) : touches_device(dst, count))
    return fail(cudaErrorInvalidValue,
                std::string(call) + ": destination " + describe(dst, count) + " is not " +
                    (dst_dev ? "inside one device allocation" : "host memory"));
  if (src_dev ? !is_device(src, count) : touches_device(src, count))
    return fail(cudaErrorInvalidValue,
                std::string(call) + ": source " + describe(src, count) + " is not " +
                    (src_dev ? "inside one device allocation" : "host memory"));
  return cudaSuccess;
}

// ---- fibers ----

constexpr std::size_t kStackBytes = 256 * 1024;
constexpr unsigned kWarp = 32;

struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  ThreadIndex index;
  bool started = false, done = false;
#ifdef SIMCLR_EMU_ASAN
  void* fake_stack = nullptr;
#endif
};

struct Barrier {
  unsigned arrived = 0;
  std::uint64_t generation = 0;
};

// The state of the launch that is running (one at a time: launches are serialised).
struct Launch {
  const char* kernel = "";
  const std::function<void()>* body = nullptr;
  bool cooperative = false;
  unsigned threads = 0;       // per block
  std::vector<Fiber> fibers;  // one per thread of the running block
  std::vector<Barrier> warp_barriers;
  Barrier block_barrier;
  std::vector<std::uint64_t> slots;  // shuffle values, one per thread
  std::uint64_t progress = 0;        // arrivals, releases and exits, to tell a deadlock
  Fiber* running = nullptr;          // the fiber on the CPU, or null in the scheduler
  ucontext_t scheduler;
  std::string error;   // the first failure of this launch
  ThreadIndex direct;  // the thread running without a fiber
  const ThreadIndex* current = nullptr;
#ifdef SIMCLR_EMU_ASAN
  const void* scheduler_stack = nullptr;
  std::size_t scheduler_stack_size = 0;
#endif
};

std::mutex launch_mutex;
Launch* active = nullptr;

struct BarrierOutsideSyncLaunch {};

unsigned linear_thread(const ThreadIndex& t) {
  return t.thread_idx.x + t.block_dim.x * (t.thread_idx.y + t.block_dim.y * t.thread_idx.z);
}

void yield_to_scheduler() {
  Launch& l = *active;
  Fiber* self = l.running;
#ifdef SIMCLR_EMU_ASAN
  __sanitizer_start_switch_fiber(&self->fake_stack, l.scheduler_stack, l.scheduler_stack_size);
#endif
  swapcontext(&self->context, &l.scheduler);
#ifdef SIMCLR_EMU_ASAN
  __sanitizer_finish_switch_fiber(self->fake_stack, nullptr, nullptr);
#endif
}

// Waits until `count` threads have arrived at `barrier` (the running thread included).
void rendezvous(Barrier& barrier, unsigned count) {
  Launch& l = *active;
  if (!l.cooperative) throw BarrierOutsideSyncLaunch{};
  ++l.progress;
  if (++barrier.arrived == count) {
    barrier.arrived = 0;
    ++barrier.generation;
    return;
  }
  const std::uint64_t generation = barrier.generation;
  while (barrier.generation == generation) yield_to_scheduler();
}

void fiber_entry() {
  Launch& l = *active;
  Fiber* self = l.running;
#ifdef SIMCLR_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &l.scheduler_stack, &l.scheduler_stack_size);
#endif
  try {
    (*l.body)();
  } catch (...) {
    if (l.error.empty()) l.error = "an exception escaped a thread of the kernel";
  }
  self->done = true;
  ++l.progress;
#ifdef SIMCLR_EMU_ASAN
  __sanitizer_start_switch_fiber(nullptr, l.scheduler_stack, l.scheduler_stack_size);
#endif
  // Returns to the scheduler through uc_link.
}

void resume(Launch& l, Fiber& f) {
  if (!f.started) {
    f.started = true;
    if (!f.stack) f.stack.reset(new char[kStackBytes]);
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack.get();
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = &l.scheduler;
    makecontext(&f.context, fiber_entry, 0);
  }
  l.running = &f;
  l.current = &f.index;
#ifdef SIMCLR_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f.stack.get(), kStackBytes);
#endif
  swapcontext(&l.scheduler, &f.context);
#ifdef SIMCLR_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  l.running = nullptr;
}

std::string block_name(const uint3& b) {
  return "block (" + std::to_string(b.x) + ", " + std::to_string(b.y) + ", " + std::to_string(b.z) +
         ")";
}

// Runs every thread of one block; false (with l.error set) when the block cannot finish.
bool run_block(Launch& l, const uint3& block, const dim3& grid, const dim3& dims) {
  ThreadIndex base{};
  base.block_idx = block;
  base.block_dim = dims;
  base.grid_dim = grid;
  if (!l.cooperative) {
    for (unsigned z = 0; z < dims.z; ++z)
      for (unsigned y = 0; y < dims.y; ++y)
        for (unsigned x = 0; x < dims.x; ++x) {
          l.direct = base;
          l.direct.thread_idx = make_uint3(x, y, z);
          l.current = &l.direct;
          try {
            (*l.body)();
          } catch (const BarrierOutsideSyncLaunch&) {
            l.error =
                "a thread reached a barrier (__syncthreads or a warp shuffle) in a kernel "
                "launched with SIMCLR_LAUNCH; launch it with SIMCLR_LAUNCH_SYNC";
            return false;
          }
        }
    return true;
  }
  if (l.fibers.size() < l.threads) l.fibers.resize(l.threads);
  unsigned t = 0;
  for (unsigned z = 0; z < dims.z; ++z)
    for (unsigned y = 0; y < dims.y; ++y)
      for (unsigned x = 0; x < dims.x; ++x, ++t) {
        Fiber& f = l.fibers[t];
        f.index = base;
        f.index.thread_idx = make_uint3(x, y, z);
        f.started = f.done = false;
      }
  l.warp_barriers.assign((l.threads + kWarp - 1) / kWarp, Barrier{});
  l.block_barrier = Barrier{};
  l.slots.assign(l.threads, 0);
  unsigned live = l.threads;
  while (live > 0) {
    const std::uint64_t before = l.progress;
    for (unsigned i = 0; i < l.threads; ++i) {
      Fiber& f = l.fibers[i];
      if (f.done) continue;
      resume(l, f);
      if (f.done) --live;
    }
    if (!l.error.empty()) return false;
    if (live > 0 && l.progress == before) {
      l.error = block_name(block) + ": " + std::to_string(live) + " of " +
                std::to_string(l.threads) +
                " threads wait at a barrier (__syncthreads or a warp shuffle) that the other "
                "threads of their block or warp left the kernel without reaching";
      return false;
    }
  }
  return true;
}

}  // namespace

const ThreadIndex& current_thread() { return *active->current; }

void launch(const char* kernel_name, dim3 grid, dim3 block, cudaStream_t stream, bool cooperative,
            const std::function<void()>& body) {
  const std::string name = kernel_name;
  if (check_stream(stream, kernel_name) != cudaSuccess) return;
  const unsigned long long threads = static_cast<unsigned long long>(block.x) * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64 ||
      grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 ||
      grid.z > 65535) {
    fail(cudaErrorInvalidConfiguration,
         "launch of " + name + " with grid (" + std::to_string(grid.x) + ", " +
             std::to_string(grid.y) + ", " + std::to_string(grid.z) + ") and block (" +
             std::to_string(block.x) + ", " + std::to_string(block.y) + ", " +
             std::to_string(block.z) + "), which a GPU refuses");
    return;
  }
  std::lock_guard<std::mutex> lock(launch_mutex);
  static Launch* state = new Launch;  // keeps its fibers' stacks between launches
  Launch& l = *state;
  l.kernel = kernel_name;
  l.body = &body;
  l.cooperative = cooperative;
  l.threads = static_cast<unsigned>(threads);
  l.error.clear();
  active = &l;
  bool ok = true;
  for (unsigned z = 0; z < grid.z && ok; ++z)
    for (unsigned y = 0; y < grid.y && ok; ++y)
      for (unsigned x = 0; x < grid.x && ok; ++x)
        ok = run_block(l, make_uint3(x, y, z), grid, block);
  active = nullptr;
  if (!ok) fail(cudaErrorLaunchFailure, "kernel " + name + ": " + l.error);
}

void sync_block() { rendezvous(active->block_barrier, active->threads); }

std::uint64_t shuffle_xor_bits(std::uint64_t bits, int lane_mask, unsigned member_mask) {
  Launch& l = *active;
  if (!l.cooperative) throw BarrierOutsideSyncLaunch{};
  const unsigned t = linear_thread(*l.current);
  const unsigned warp = t / kWarp, lane = t % kWarp, first = warp * kWarp;
  const unsigned width = std::min(kWarp, l.threads - first);
  const unsigned full = width == kWarp ? 0xFFFFFFFFu : (1u << width) - 1u;
  if (member_mask != full && l.error.empty())
    l.error = "a warp shuffle with member mask " + std::to_string(member_mask) + " in a warp of " +
              std::to_string(width) + " threads";
  l.slots[t] = bits;
  rendezvous(l.warp_barriers[warp], width);  // every lane has published
  const unsigned source = lane ^ static_cast<unsigned>(lane_mask);
  const std::uint64_t out = source < width ? l.slots[first + source] : bits;
  rendezvous(l.warp_barriers[warp], width);  // every lane has read before the next publish
  return out;
}

}  // namespace simclr::cuda::emu

// ---- the CUDA runtime ----

using simclr::cuda::emu::check_copy;
using simclr::cuda::emu::check_event;
using simclr::cuda::emu::check_stream;
using simclr::cuda::emu::fail;
using simclr::cuda::emu::is_device;
using simclr::cuda::emu::memory;

extern "C" {

cudaError_t cudaGetLastError() {
  const cudaError_t e = simclr::cuda::emu::last_error;
  simclr::cuda::emu::last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError() { return simclr::cuda::emu::last_error; }

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration:
      return "cudaErrorInvalidConfiguration";
    case cudaErrorLaunchFailure:
      return "cudaErrorLaunchFailure";
    case cudaErrorInvalidDevice:
      return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle:
      return "cudaErrorInvalidResourceHandle";
    default:
      return "cudaErrorUnknown";
  }
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument (emulation)";
    case cudaErrorMemoryAllocation:
      return "out of memory (emulation)";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument (emulation)";
    case cudaErrorLaunchFailure:
      return "unspecified launch failure (emulation)";
    case cudaErrorInvalidDevice:
      return "invalid device ordinal (emulation)";
    case cudaErrorInvalidResourceHandle:
      return "invalid resource handle (emulation)";
    default:
      return "unknown error (emulation)";
  }
}

cudaError_t cudaGetDeviceCount(int* count) {
  if (count == nullptr) return fail(cudaErrorInvalidValue, "cudaGetDeviceCount(null)");
  *count = simclr::cuda::emu::kDevices;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  if (device == nullptr) return fail(cudaErrorInvalidValue, "cudaGetDevice(null)");
  *device = simclr::cuda::emu::current_device;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  if (device < 0 || device >= simclr::cuda::emu::kDevices)
    return fail(cudaErrorInvalidDevice, "cudaSetDevice(" + std::to_string(device) +
                                            "): the emulation has devices 0 to " +
                                            std::to_string(simclr::cuda::emu::kDevices - 1));
  simclr::cuda::emu::current_device = device;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (prop == nullptr || device < 0 || device >= simclr::cuda::emu::kDevices)
    return fail(cudaErrorInvalidDevice, "cudaGetDeviceProperties of a device that does not exist");
  std::memset(prop, 0, sizeof(*prop));
  std::snprintf(prop->name, sizeof(prop->name), "CPU emulation (no GPU)");
  prop->major = 9;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = 1024;
  return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int* version) {
  if (version == nullptr) return fail(cudaErrorInvalidValue, "cudaDriverGetVersion(null)");
  *version = 0;
  return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int* version) {
  if (version == nullptr) return fail(cudaErrorInvalidValue, "cudaRuntimeGetVersion(null)");
  *version = CUDART_VERSION;
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() {
  simclr::cuda::emu::count_host_sync();
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** ptr, size_t bytes) { return simclr::cuda::emu::allocate(ptr, bytes); }

cudaError_t cudaFree(void* ptr) { return simclr::cuda::emu::release(ptr); }

cudaError_t cudaMallocAsync(void** ptr, size_t bytes, cudaStream_t stream) {
  if (check_stream(stream, "cudaMallocAsync") != cudaSuccess) return cudaErrorInvalidResourceHandle;
  return simclr::cuda::emu::allocate(ptr, bytes);
}

cudaError_t cudaFreeAsync(void* ptr, cudaStream_t stream) {
  if (check_stream(stream, "cudaFreeAsync") != cudaSuccess) return cudaErrorInvalidResourceHandle;
  return simclr::cuda::emu::release(ptr);
}

namespace {
// One pool per device (the default pool, which is also the current one): its release threshold is
// kept (CUDA's default 0); the memory counters are the shared memory's.
struct EmulatedPool {
  std::uint64_t release_threshold = 0;
};
EmulatedPool* the_pools() {
  static EmulatedPool pools[simclr::cuda::emu::kDevices];
  return pools;
}
EmulatedPool* pool_of(cudaMemPool_t pool) { return reinterpret_cast<EmulatedPool*>(pool); }
}  // namespace

cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int device) {
  if (pool == nullptr || device < 0 || device >= simclr::cuda::emu::kDevices)
    return fail(cudaErrorInvalidValue,
                "cudaDeviceGetDefaultMemPool of a device that does not exist");
  *pool = reinterpret_cast<cudaMemPool_t>(&the_pools()[device]);
  return cudaSuccess;
}

cudaError_t cudaDeviceGetMemPool(cudaMemPool_t* pool, int device) {
  if (pool == nullptr || device < 0 || device >= simclr::cuda::emu::kDevices)
    return fail(cudaErrorInvalidValue, "cudaDeviceGetMemPool of a device that does not exist");
  *pool = reinterpret_cast<cudaMemPool_t>(&the_pools()[device]);
  return cudaSuccess;
}

cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* value) {
  if (value == nullptr || pool == nullptr)
    return fail(cudaErrorInvalidValue, "cudaMemPoolSetAttribute(null)");
  auto& m = memory();
  std::lock_guard<std::mutex> lock(m.mutex);
  if (attr == cudaMemPoolAttrUsedMemHigh) m.high = m.used;  // as CUDA: any value resets it
  if (attr == cudaMemPoolAttrReleaseThreshold) {
    std::memcpy(&pool_of(pool)->release_threshold, value, sizeof(std::uint64_t));
    ++simclr::cuda::emu::threshold_sets;
  }
  return cudaSuccess;
}

cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* value) {
  if (value == nullptr || pool == nullptr) return fail(cudaErrorInvalidValue, "cudaMemPoolGetAttribute(null)");
  auto& m = memory();
  std::lock_guard<std::mutex> lock(m.mutex);
  std::uint64_t v = 0;
  if (attr == cudaMemPoolAttrUsedMemHigh || attr == cudaMemPoolAttrReservedMemHigh) v = m.high;
  if (attr == cudaMemPoolAttrUsedMemCurrent || attr == cudaMemPoolAttrReservedMemCurrent)
    v = m.used;
  if (attr == cudaMemPoolAttrReleaseThreshold) v = pool_of(pool)->release_threshold;
  std::memcpy(value, &v, sizeof(v));
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  simclr::cuda::emu::count_host_sync();
  if (check_copy(dst, src, count, kind, "cudaMemcpy") != cudaSuccess) return cudaErrorInvalidValue;
  if (count > 0) std::memmove(dst, src, count);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind,
                            cudaStream_t stream) {
  if (check_stream(stream, "cudaMemcpyAsync") != cudaSuccess) return cudaErrorInvalidResourceHandle;
  if (check_copy(dst, src, count, kind, "cudaMemcpyAsync") != cudaSuccess)
    return cudaErrorInvalidValue;
  if (count > 0) std::memmove(dst, src, count);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* dst, int value, size_t count, cudaStream_t stream) {
  if (check_stream(stream, "cudaMemsetAsync") != cudaSuccess) return cudaErrorInvalidResourceHandle;
  if (count > 0 && !is_device(dst, count))
    return fail(cudaErrorInvalidValue,
                "cudaMemsetAsync: " + simclr::cuda::emu::describe(dst, count) +
                    " is not inside one device allocation");
  if (count > 0) std::memset(dst, value, count);
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  return simclr::cuda::emu::make_handle(stream, &simclr::cuda::emu::Memory::streams);
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) {
  return simclr::cuda::emu::make_handle(stream, &simclr::cuda::emu::Memory::streams);
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  return simclr::cuda::emu::drop_handle(stream, &simclr::cuda::emu::Memory::streams, "stream");
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  simclr::cuda::emu::count_host_sync();
  return check_stream(stream, "cudaStreamSynchronize");
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int) {
  if (check_event(event, "cudaStreamWaitEvent") != cudaSuccess)
    return cudaErrorInvalidResourceHandle;
  return check_stream(stream, "cudaStreamWaitEvent");
}

// Events hold the host time they were recorded at (launches run synchronously).
cudaError_t cudaEventCreate(cudaEvent_t* event) {
  return simclr::cuda::emu::make_handle(event, &simclr::cuda::emu::Memory::events);
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int) {
  return simclr::cuda::emu::make_handle(event, &simclr::cuda::emu::Memory::events);
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  return simclr::cuda::emu::drop_handle(event, &simclr::cuda::emu::Memory::events, "event");
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  if (check_stream(stream, "cudaEventRecord") != cudaSuccess ||
      check_event(event, "cudaEventRecord") != cudaSuccess)
    return cudaErrorInvalidResourceHandle;
  *reinterpret_cast<std::int64_t*>(event) =
      std::chrono::steady_clock::now().time_since_epoch().count();
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  simclr::cuda::emu::count_host_sync();
  return check_event(event, "cudaEventSynchronize");
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  if (ms == nullptr) return fail(cudaErrorInvalidValue, "cudaEventElapsedTime(null)");
  if (check_event(start, "cudaEventElapsedTime") != cudaSuccess ||
      check_event(end, "cudaEventElapsedTime") != cudaSuccess)
    return cudaErrorInvalidResourceHandle;
  const auto ticks =
      *reinterpret_cast<std::int64_t*>(end) - *reinterpret_cast<std::int64_t*>(start);
  *ms = static_cast<float>(
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::duration(ticks))
          .count());
  return cudaSuccess;
}

}  // extern "C"

// The NCCL calls of simclr::NcclCommunicator, emulated over MPI for the CPU emulation of the GPU
// path (emulation.hpp): one MPI process per emulated GPU, device buffers in host memory, so an NCCL
// collective is the MPI collective that moves the same bytes. What this checks is the
// communicator's own logic (bootstrapping, the grouped broadcasts of all_gather_v, ranks of 0
// bytes, buffer bounds); NCCL's transport and its asynchrony are not emulated.
//
// ncclCommAbort, ncclCommCount, ncclCommUserRank and ncclCommCuDevice are emulated, and a test can
// give a communicator an asynchronous error (emulation.hpp: nccl_set_async_error) and count the
// aborts. ncclCommInitRank splits MPI_COMM_WORLD by the unique id, so every process of the job has
// to create its NCCL communicators in the same order, as the tests do. Collectives check that their
// buffers lie inside one device allocation and that the stream is live. Broadcasts between
// ncclGroupStart and ncclGroupEnd are queued and run in order at ncclGroupEnd, which every rank
// reaches with the same sequence (NCCL requires it).

#include <mpi.h>
#include <nccl.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "emulation.hpp"

struct ncclComm {
  MPI_Comm mpi = MPI_COMM_NULL;
  int rank = 0;
  int size = 1;
  int device = 0;
  ncclResult_t async_error = ncclSuccess;  // nccl_set_async_error
  int in_progress_polls = 0;               // nccl_set_in_progress: a non-blocking communicator
  std::string last_error;
};

namespace simclr::cuda::emu {

std::atomic<int> nccl_abort_count{0};

void nccl_set_async_error(void* comm, int result) {
  static_cast<ncclComm*>(comm)->async_error = static_cast<ncclResult_t>(result);
}

int nccl_aborts() { return nccl_abort_count.load(); }

void nccl_set_in_progress(void* comm, int polls) {
  static_cast<ncclComm*>(comm)->in_progress_polls = polls;
}

int nccl_pending_polls(void* comm) { return static_cast<ncclComm*>(comm)->in_progress_polls; }

}  // namespace simclr::cuda::emu

namespace {

// A rooted collective queued inside a group: a broadcast of `bytes` bytes, or (reduce) a float sum
// of `count` elements of `type` into the root's recv.
struct Broadcast {
  const void* send;
  void* recv;
  std::size_t bytes;
  int root;
  ncclComm_t comm;
  bool reduce = false;
  std::size_t count = 0;
  ncclDataType_t type = ncclFloat32;
};

thread_local int group_depth = 0;
thread_local std::vector<Broadcast> queued;

std::size_t type_bytes(ncclDataType_t t) {
  switch (t) {
    case ncclInt8:
    case ncclUint8:
      return 1;
    case ncclFloat16:
    case ncclBfloat16:
      return 2;
    case ncclInt32:
    case ncclUint32:
    case ncclFloat32:
      return 4;
    case ncclInt64:
    case ncclUint64:
    case ncclFloat64:
      return 8;
    default:
      return 0;
  }
}

ncclResult_t invalid(ncclComm_t comm, const std::string& why) {
  if (comm != nullptr) comm->last_error = why;
  simclr::cuda::emu::fail(cudaErrorInvalidValue, "nccl: " + why);
  (void)cudaGetLastError();  // an NCCL failure is its result code
  return ncclInvalidArgument;
}

ncclResult_t check_buffer(ncclComm_t comm, const void* p, std::size_t bytes, const char* what) {
  if (bytes == 0 || simclr::cuda::emu::is_device(p, bytes)) return ncclSuccess;
  return invalid(comm, std::string(what) + " " + simclr::cuda::emu::describe(p, bytes) +
                           " is not inside one device allocation");
}

ncclResult_t run(const Broadcast& b) {
  if (b.reduce) {
    const MPI_Datatype t = b.type == ncclFloat32 ? MPI_FLOAT : MPI_DOUBLE;
    if (MPI_Reduce(b.send, b.comm->rank == b.root ? b.recv : nullptr, static_cast<int>(b.count), t,
                   MPI_SUM, b.root, b.comm->mpi) != MPI_SUCCESS)
      return ncclSystemError;
    return ncclSuccess;
  }
  if (b.comm->rank == b.root && b.send != b.recv) std::memmove(b.recv, b.send, b.bytes);
  if (b.comm->size > 1 &&
      MPI_Bcast(b.recv, static_cast<int>(b.bytes), MPI_BYTE, b.root, b.comm->mpi) != MPI_SUCCESS)
    return ncclSystemError;
  return ncclSuccess;
}

}  // namespace

extern "C" {

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  if (id == nullptr) return ncclInvalidArgument;
  static std::atomic<std::uint64_t> counter{0};
  std::memset(id, 0, sizeof(*id));
  const std::uint64_t value = ++counter;
  std::memcpy(id->internal, &value, sizeof(value));
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
  if (comm == nullptr || nranks < 1 || rank < 0 || rank >= nranks) return ncclInvalidArgument;
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) return ncclInvalidUsage;
  std::uint64_t key = 0;
  std::memcpy(&key, id.internal, sizeof(key));
  auto* c = new ncclComm;
  if (MPI_Comm_split(MPI_COMM_WORLD, static_cast<int>(key & 0x3FFFFFFF), rank, &c->mpi) !=
      MPI_SUCCESS) {
    delete c;
    return ncclSystemError;
  }
  MPI_Comm_rank(c->mpi, &c->rank);
  MPI_Comm_size(c->mpi, &c->size);
  cudaGetDevice(&c->device);
  if (c->rank != rank || c->size != nranks) {
    MPI_Comm_free(&c->mpi);
    delete c;
    return ncclInvalidUsage;
  }
  *comm = c;
  return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (comm == nullptr) return ncclInvalidArgument;
  MPI_Comm_free(&comm->mpi);
  delete comm;
  return ncclSuccess;
}

// As NCCL's: frees the communicator without waiting for outstanding work (there is none here).
ncclResult_t ncclCommAbort(ncclComm_t comm) {
  if (comm == nullptr) return ncclInvalidArgument;
  ++simclr::cuda::emu::nccl_abort_count;
  MPI_Comm_free(&comm->mpi);
  delete comm;
  return ncclSuccess;
}

ncclResult_t ncclCommCount(const ncclComm_t comm, int* count) {
  if (comm == nullptr || count == nullptr) return ncclInvalidArgument;
  *count = comm->size;
  return ncclSuccess;
}

ncclResult_t ncclCommUserRank(const ncclComm_t comm, int* rank) {
  if (comm == nullptr || rank == nullptr) return ncclInvalidArgument;
  *rank = comm->rank;
  return ncclSuccess;
}

ncclResult_t ncclCommCuDevice(const ncclComm_t comm, int* device) {
  if (comm == nullptr || device == nullptr) return ncclInvalidArgument;
  *device = comm->device;
  return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess:
      return "no error";
    case ncclSystemError:
      return "unhandled system error (emulation)";
    case ncclInvalidArgument:
      return "invalid argument (emulation)";
    case ncclInvalidUsage:
      return "invalid usage (emulation)";
    case ncclRemoteError:
      return "remote process exited or there was a network error (emulation)";
    default:
      return "unknown result code (emulation)";
  }
}

const char* ncclGetLastError(ncclComm_t comm) {
  return comm != nullptr ? comm->last_error.c_str() : "";
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* async_error) {
  if (comm == nullptr || async_error == nullptr) return ncclInvalidArgument;
  if (comm->in_progress_polls > 0) {
    --comm->in_progress_polls;
    *async_error = ncclInProgress;
    return ncclSuccess;
  }
  *async_error = comm->async_error;
  return ncclSuccess;
}

ncclResult_t ncclAllGather(const void* send, void* recv, size_t count, ncclDataType_t type,
                           ncclComm_t comm, cudaStream_t stream) {
  if (comm == nullptr) return ncclInvalidArgument;
  if (!simclr::cuda::emu::valid_stream(stream))
    return invalid(comm, "ncclAllGather on a dead stream");
  const std::size_t bytes = count * type_bytes(type);
  if (type_bytes(type) == 0) return invalid(comm, "ncclAllGather of an unsupported type");
  if (ncclResult_t rc = check_buffer(comm, send, bytes, "ncclAllGather send"); rc != ncclSuccess)
    return rc;
  if (ncclResult_t rc = check_buffer(comm, recv, bytes * static_cast<std::size_t>(comm->size),
                                     "ncclAllGather recv");
      rc != ncclSuccess)
    return rc;
  if (group_depth > 0) return invalid(comm, "ncclAllGather inside a group is not emulated");
  char* mine = static_cast<char*>(recv) + bytes * static_cast<std::size_t>(comm->rank);
  if (mine != send) std::memmove(mine, send, bytes);
  if (comm->size > 1 && MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, recv,
                                      static_cast<int>(bytes), MPI_BYTE, comm->mpi) != MPI_SUCCESS)
    return ncclSystemError;
  // A non-blocking communicator answers "in progress" until its state is polled to completion.
  return comm->in_progress_polls > 0 ? ncclInProgress : ncclSuccess;
}

ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, ncclDataType_t type,
                           int root, ncclComm_t comm, cudaStream_t stream) {
  if (comm == nullptr) return ncclInvalidArgument;
  if (!simclr::cuda::emu::valid_stream(stream))
    return invalid(comm, "ncclBroadcast on a dead stream");
  if (root < 0 || root >= comm->size) return invalid(comm, "ncclBroadcast root out of range");
  const std::size_t bytes = count * type_bytes(type);
  if (type_bytes(type) == 0) return invalid(comm, "ncclBroadcast of an unsupported type");
  if (comm->rank == root)
    if (ncclResult_t rc = check_buffer(comm, send, bytes, "ncclBroadcast send"); rc != ncclSuccess)
      return rc;
  if (ncclResult_t rc = check_buffer(comm, recv, bytes, "ncclBroadcast recv"); rc != ncclSuccess)
    return rc;
  const Broadcast b{send, recv, bytes, root, comm};
  if (group_depth > 0) {
    queued.push_back(b);
    return ncclSuccess;
  }
  return run(b);
}

ncclResult_t ncclGroupStart() {
  ++group_depth;
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd() {
  if (group_depth == 0) return ncclInvalidUsage;
  if (--group_depth > 0) return ncclSuccess;
  std::vector<Broadcast> work;
  work.swap(queued);
  for (const Broadcast& b : work)
    if (ncclResult_t rc = run(b); rc != ncclSuccess) return rc;
  return ncclSuccess;
}

// The float sums of NcclCommunicator::reduce_scatter_v: one ncclReduce per rank inside a group,
// queued like the broadcasts and run as MPI_Reduce at ncclGroupEnd.
ncclResult_t ncclReduce(const void* send, void* recv, size_t count, ncclDataType_t type,
                        ncclRedOp_t op, int root, ncclComm_t comm, cudaStream_t stream) {
  if (comm == nullptr) return ncclInvalidArgument;
  if (!simclr::cuda::emu::valid_stream(stream)) return invalid(comm, "ncclReduce on a dead stream");
  if (root < 0 || root >= comm->size) return invalid(comm, "ncclReduce root out of range");
  if (op != ncclSum || (type != ncclFloat32 && type != ncclFloat64))
    return invalid(comm, "ncclReduce: only float32/float64 sums are emulated");
  const std::size_t bytes = count * type_bytes(type);
  if (ncclResult_t rc = check_buffer(comm, send, bytes, "ncclReduce send"); rc != ncclSuccess)
    return rc;
  if (comm->rank == root)
    if (ncclResult_t rc = check_buffer(comm, recv, bytes, "ncclReduce recv"); rc != ncclSuccess)
      return rc;
  Broadcast b{send, recv, bytes, root, comm};
  b.reduce = true;
  b.count = count;
  b.type = type;
  if (group_depth > 0) {
    queued.push_back(b);
    return ncclSuccess;
  }
  return run(b);
}

// ncclReduceScatter (equal counts): MPI_Reduce_scatter_block over the same
// bytes (outside groups only, as the communicator calls it).
ncclResult_t ncclReduceScatter(const void* send, void* recv, size_t count, ncclDataType_t type,
                               ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  if (comm == nullptr) return ncclInvalidArgument;
  if (!simclr::cuda::emu::valid_stream(stream))
    return invalid(comm, "ncclReduceScatter on a dead stream");
  if (op != ncclSum || (type != ncclFloat32 && type != ncclFloat64))
    return invalid(comm, "ncclReduceScatter: only float32/float64 sums are emulated");
  if (group_depth > 0) return invalid(comm, "ncclReduceScatter inside a group is not emulated");
  const std::size_t bytes = count * type_bytes(type);
  if (ncclResult_t rc = check_buffer(comm, send, bytes * static_cast<std::size_t>(comm->size),
                                     "ncclReduceScatter send");
      rc != ncclSuccess)
    return rc;
  if (ncclResult_t rc = check_buffer(comm, recv, bytes, "ncclReduceScatter recv");
      rc != ncclSuccess)
    return rc;
  if (MPI_Reduce_scatter_block(send, recv, static_cast<int>(count),
                               type == ncclFloat32 ? MPI_FLOAT : MPI_DOUBLE, MPI_SUM,
                               comm->mpi) != MPI_SUCCESS)
    return ncclSystemError;
  return ncclSuccess;
}

}  // extern "C"

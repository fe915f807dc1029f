#pragma once
// The NCCL backend of the Communicator (target simclr::nccl), on device buffers and a CUDA stream.
// Three ways to make one (docs/gpu.md, "NCCL without MPI"):
// - from a caller's MPI_Comm (only when the library was built with MPI, SIMCLR_NCCL_HAS_MPI): it
//   is duplicated into an MpiCommunicator, which also serves the host-side agreement step; rank 0
//   makes the ncclUniqueId and it travels over MPI;
// - from an ncclUniqueId plus rank and size, the id shared by the caller (e.g. through PyTorch's
//   store): ncclCommInitRank on the current device;
// - from an existing ncclComm_t (e.g. the one of a framework's process group), borrowed: the
//   library never destroys it.
// Without MPI, host() runs the agreement step's small host collectives through NCCL on a small
// device buffer, on stream(), and synchronises the stream to read the result back.
// The library never calls MPI_Init / MPI_Finalize; destroy this object before MPI_Finalize.

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "simclr/cuda/device_communicator.hpp"

#if defined(SIMCLR_NCCL_HAS_MPI) && SIMCLR_NCCL_HAS_MPI
#include <mpi.h>

#include "simclr/mpi/mpi_communicator.hpp"
#endif

namespace simclr {

class NcclCommunicator final : public cuda::DeviceCommunicator {
 public:
#if defined(SIMCLR_NCCL_HAS_MPI) && SIMCLR_NCCL_HAS_MPI
  // Collective over `comm` (MPI_Comm_dup, then ncclCommInitRank on the current device). `options`
  // are those of the MpiCommunicator it bootstraps over: with a timeout, the exchange of the NCCL
  // id and every host-side collective (the agreement step, barrier()) wait at most that long, then
  // throw CommError; NCCL's own collectives are not bounded by it. Throws CommError naming the
  // failing MPI or NCCL call, DeviceError for a failing CUDA call.
  explicit NcclCommunicator(MPI_Comm comm, cudaStream_t stream = nullptr,
                            MpiCommunicatorOptions options = {});
#endif
  // Collective over the `size` ranks that call it with the same id (ncclCommInitRank on the current
  // device); owned: destroyed (or aborted) with this object. Throws CommError.
  NcclCommunicator(const ncclUniqueId& id, int rank, int size, cudaStream_t stream = nullptr);
  // Borrows `comm` (rank, size and device from NCCL): never destroyed or aborted by the library;
  // it must outlive this object. Not collective.
  explicit NcclCommunicator(ncclComm_t comm, cudaStream_t stream = nullptr);
  // An owned communicator: ncclCommAbort when it has an asynchronous error (ncclCommDestroy would
  // wait for work that may never finish), ncclCommDestroy otherwise. Never throws.
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "nccl"; }
  // Collective, device buffers, enqueued on stream() (ncclAllGather).
  void all_gather(const void* send, std::size_t bytes, void* recv) override;
  // Collective, device buffers, enqueued on stream(): one grouped ncclBroadcast per rank with
  // bytes.
  void all_gather_v(const void* send, std::size_t send_bytes, void* recv,
                    const std::vector<std::size_t>& recv_bytes) override;
  // Collective: waits for stream(), then for every rank (on host()).
  void barrier() override;
  // One grouped ncclReduce per rank (device buffers, stream-ordered; no allocation, no padding).
  void reduce_scatter_v(const void* send, void* recv, const std::vector<std::size_t>& counts,
                        SumType dtype) override;
  bool has_reduce_scatter() const override { return true; }

  void set_stream(cudaStream_t stream) override { stream_ = stream; }
  cudaStream_t stream() const override { return stream_; }
  // Host-memory collectives for the agreement step: the duplicated MPI communicator, or (without
  // one) NCCL on a small device buffer, which synchronises stream().
  Communicator& host() override { return *host_; }

  ncclComm_t nccl_comm() const { return nccl_; }
  int device() const { return device_; }
  // Whether the library destroys the NCCL communicator (false for a borrowed ncclComm_t).
  bool owns_comm() const { return owned_; }
#if defined(SIMCLR_NCCL_HAS_MPI) && SIMCLR_NCCL_HAS_MPI
  // The bootstrap options (MPI constructor only; default options otherwise).
  const MpiCommunicatorOptions& options() const;
#endif

 private:
  void check_async(const char* collective) const;

  std::unique_ptr<Communicator> host_;
  const void* mpi_ = nullptr;  // the MpiCommunicator inside host_, when made from an MPI_Comm
  ncclComm_t nccl_ = nullptr;
  cudaStream_t stream_ = nullptr;
  int rank_ = 0;
  int size_ = 1;
  int device_ = 0;
  bool owned_ = true;
  mutable bool failed_ = false;  // an asynchronous error was seen: abort, never destroy
};

}  // namespace simclr

#pragma once
// The NCCL backend of the Communicator (target simclr::nccl), on device buffers and a CUDA stream.
// Bootstrapped from a caller's MPI_Comm, which it duplicates (an MpiCommunicator, also used for the
// host-side agreement step): rank 0 makes the ncclUniqueId and broadcasts it over MPI, as
// nccl-tests does. Uses the CUDA device current when it is constructed (call cudaSetDevice first).
// The library never calls MPI_Init / MPI_Finalize; destroy this object before MPI_Finalize.

#include <cuda_runtime_api.h>
#include <mpi.h>
#include <nccl.h>

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "simclr/cuda/device_communicator.hpp"
#include "simclr/mpi/mpi_communicator.hpp"

namespace simclr {

class NcclCommunicator final : public cuda::DeviceCommunicator {
 public:
  // Collective over `comm` (MPI_Comm_dup, then ncclCommInitRank on the current device). `options`
  // are those of the MpiCommunicator it bootstraps over: with a timeout, the exchange of the NCCL
  // id and every host-side collective (the agreement step, barrier()) wait at most that long, then
  // throw CommError; NCCL's own collectives are not bounded by it. Throws CommError naming the
  // failing MPI or NCCL call, DeviceError for a failing CUDA call.
  explicit NcclCommunicator(MPI_Comm comm, cudaStream_t stream = nullptr,
                            MpiCommunicatorOptions options = {});
  // ncclCommDestroy; never throws.
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
  // Collective: waits for stream(), then for every rank (MPI barrier on the host communicator).
  void barrier() override;
  // ncclReduceScatter over segments padded to the largest count (device buffers, stream-ordered).
  void reduce_scatter_v(const void* send, void* recv, const std::vector<std::size_t>& counts,
                        SumType dtype) override;
  bool has_reduce_scatter() const override { return true; }

  void set_stream(cudaStream_t stream) override { stream_ = stream; }
  cudaStream_t stream() const override { return stream_; }
  // The duplicated MPI communicator, for host-side agreement.
  Communicator& host() override { return *mpi_; }

  ncclComm_t nccl_comm() const { return nccl_; }
  int device() const { return device_; }
  const MpiCommunicatorOptions& options() const { return mpi_->options(); }

 private:
  void check_async(const char* collective) const;

  std::unique_ptr<MpiCommunicator> mpi_;
  ncclComm_t nccl_ = nullptr;
  cudaStream_t stream_ = nullptr;
  int rank_ = 0;
  int size_ = 1;
  int device_ = 0;
};

}  // namespace simclr

#pragma once
// Communicators whose collectives move device buffers on a CUDA stream (the NCCL backend and a
// single-GPU stand-in), plus a host-memory communicator over the same ranks for the agreement step.

#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>
#include <vector>

#include "simclr/communicator.hpp"

namespace simclr::cuda {

// A Communicator on device buffers. all_gather / all_gather_v are enqueued on stream() and return
// without waiting (results are ready in stream order); barrier() waits for the stream and for every
// rank. Every rank calls the collectives in the same order (as for every Communicator).
class DeviceCommunicator : public Communicator {
 public:
  // The stream the collectives are enqueued on. The device loss sets it to the stream of each call.
  virtual void set_stream(cudaStream_t stream) = 0;
  virtual cudaStream_t stream() const = 0;
  // Host-memory collectives over the same ranks (small agreement records). Same call order rule.
  virtual Communicator& host() = 0;
  // On device buffers, enqueued on stream(). Communicator's default adds on the host, which device
  // memory does not allow, so a device communicator without its own refuses (CommError); the
  // balanced schedule then falls back to own_rows (has_reduce_scatter() is false).
  void reduce_scatter_v(const void* send, void* recv, const std::vector<std::size_t>& counts,
                        SumType dtype) override;
};

// One rank on one GPU: the distributed code path of the device loss without NCCL or MPI.
// Collectives copy device memory to device memory on the stream.
class SingleDeviceCommunicator final : public DeviceCommunicator {
 public:
  explicit SingleDeviceCommunicator(cudaStream_t stream = nullptr) : stream_(stream) {}
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "single-device"; }
  void all_gather(const void* send, std::size_t bytes, void* recv) override;
  void all_gather_v(const void* send, std::size_t send_bytes, void* recv,
                    const std::vector<std::size_t>& recv_bytes) override;
  // Waits for the stream.
  void barrier() override;
  // A copy of the one segment on the stream.
  void reduce_scatter_v(const void* send, void* recv, const std::vector<std::size_t>& counts,
                        SumType dtype) override;
  bool has_reduce_scatter() const override { return true; }
  void set_stream(cudaStream_t stream) override { stream_ = stream; }
  cudaStream_t stream() const override { return stream_; }
  Communicator& host() override { return host_; }

 private:
  cudaStream_t stream_;
  SingleProcessCommunicator host_;
};

}  // namespace simclr::cuda

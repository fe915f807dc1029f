#include "simclr/cuda/device_communicator.hpp"

#include "simclr/detail/cuda_check.hpp"

namespace simclr::cuda {

void SingleDeviceCommunicator::all_gather(const void* send, std::size_t bytes, void* recv) {
  if (bytes > 0 && send != recv)
    SIMCLR_CHECK_CUDA(cudaMemcpyAsync(recv, send, bytes, cudaMemcpyDeviceToDevice, stream_));
}

void SingleDeviceCommunicator::all_gather_v(const void* send, std::size_t send_bytes, void* recv,
                                            const std::vector<std::size_t>& recv_bytes) {
  SIMCLR_ENFORCE(recv_bytes.size() == 1, CommError,
                 "single-device: all_gather_v needs one count: ", recv_bytes.size(), " vs 1");
  SIMCLR_ENFORCE(send_bytes == recv_bytes[0], CommError, "single-device: all_gather_v sends ",
                 send_bytes, " bytes but the counts say ", recv_bytes[0]);
  all_gather(send, send_bytes, recv);
}

void SingleDeviceCommunicator::barrier() { SIMCLR_CHECK_CUDA(cudaStreamSynchronize(stream_)); }

}  // namespace simclr::cuda

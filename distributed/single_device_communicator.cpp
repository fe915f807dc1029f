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

void SingleDeviceCommunicator::reduce_scatter_v(const void* send, void* recv,
                                                const std::vector<std::size_t>& counts,
                                                SumType dtype) {
  SIMCLR_ENFORCE(counts.size() == 1, CommError,
                 "single-device: reduce_scatter_v needs one count: ", counts.size(), " vs 1");
  const std::size_t bytes =
      counts[0] * (dtype == SumType::kFloat64 ? sizeof(double) : sizeof(float));
  all_gather(send, bytes, recv);
}

void DeviceCommunicator::reduce_scatter_v(const void*, void*, const std::vector<std::size_t>&,
                                          SumType) {
  throw CommError(backend() +
                  ": reduce_scatter_v on device buffers is not implemented by this communicator; "
                  "use the own_rows schedule");
}

}  // namespace simclr::cuda

#include <cstring>

#include "simclr/communicator.hpp"
#include "simclr/errors.hpp"

namespace simclr {

void SingleProcessCommunicator::all_gather(const void* send, std::size_t bytes, void* recv) {
  if (bytes > 0) std::memmove(recv, send, bytes);
}

void SingleProcessCommunicator::all_gather_v(const void* send, std::size_t send_bytes, void* recv,
                                             const std::vector<std::size_t>& recv_bytes) {
  SIMCLR_ENFORCE(recv_bytes.size() == 1, CommError, "single: all_gather_v expects 1 count, got ",
                 recv_bytes.size());
  SIMCLR_ENFORCE_EQ(send_bytes, recv_bytes[0], CommError,
                    "single: all_gather_v send vs recv bytes");
  if (send_bytes > 0) std::memmove(recv, send, send_bytes);
}

}  // namespace simclr

#pragma once
// The communication layer: one small abstract class with the few collectives the loss uses.
//
// Every rank calls these collectives in the same order with consistent arguments, as with c10d
// process groups; the loss itself guarantees that order (docs/distributed.md). Buffers are host
// memory for the CPU backends and device memory for the NCCL backend.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "simclr/errors.hpp"

namespace simclr {

class Communicator {
 public:
  virtual ~Communicator() = default;

  // This process's rank in [0, size()).
  virtual int rank() const = 0;
  // Number of ranks.
  virtual int size() const = 0;
  // Backend name for messages: "single", "mpi", "nccl".
  virtual std::string backend() const = 0;

  // Collective. Every rank contributes `bytes` bytes (the same count on every rank); `recv`
  // receives size() * bytes bytes, rank r's contribution at offset r * bytes. Used for the small
  // agreement step.
  virtual void all_gather(const void* send, std::size_t bytes, void* recv) = 0;

  // Collective. Rank r contributes recv_bytes[r] bytes (every rank passes the same recv_bytes
  // vector, which the agreement step makes known); `recv` receives them back to back in rank order.
  virtual void all_gather_v(const void* send, std::size_t send_bytes, void* recv,
                            const std::vector<std::size_t>& recv_bytes) = 0;

  // Collective. Returns when every rank has entered it.
  virtual void barrier() = 0;
};

// A communicator of one rank: the distributed code path without any transport, so that path is
// testable without MPI. Collectives copy send to recv.
class SingleProcessCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "single"; }
  void all_gather(const void* send, std::size_t bytes, void* recv) override {
    if (bytes > 0) std::memmove(recv, send, bytes);
  }
  void all_gather_v(const void* send, std::size_t send_bytes, void* recv,
                    const std::vector<std::size_t>& recv_bytes) override {
    if (recv_bytes.size() != 1)
      throw CommError("single: all_gather_v expects 1 count, got " +
                      std::to_string(recv_bytes.size()));
    if (send_bytes != recv_bytes[0])
      throw CommError("single: all_gather_v send vs recv bytes: " + std::to_string(send_bytes) +
                      " vs " + std::to_string(recv_bytes[0]));
    if (send_bytes > 0) std::memmove(recv, send, send_bytes);
  }
  void barrier() override {}
};

}  // namespace simclr

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

// The element type of reduce_scatter_v (the values of DType, which this light header does not
// include).
enum class SumType : std::int32_t { kFloat32 = 1, kFloat64 = 2 };

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

  // Collective. Element-wise sum, then scatter: every rank passes `send` of sum(counts) elements of
  // `dtype` (float32 or float64) and the same `counts` vector (one per rank); rank r receives in
  // `recv` (counts[r] elements) the sum over ranks of segment r. The order of the additions is
  // fixed for a backend and a number of ranks (this default: rank order), so results repeat bit for
  // bit. Used by the balanced schedule (docs/performance.md). This default moves every rank's whole
  // vector with all_gather_v and adds on the host (size() times the bytes of a real
  // reduce-scatter); the MPI and NCCL backends override it with their own reduce-scatter.
  virtual void reduce_scatter_v(const void* send, void* recv,
                                const std::vector<std::size_t>& counts, SumType dtype);
  // Whether reduce_scatter_v is the backend's own (true) or the all_gather_v default above, which
  // moves size() times the bytes; the balanced schedule's cost model reads it.
  virtual bool has_reduce_scatter() const { return false; }
};

namespace detail {
// The host sum of reduce_scatter_v over gathered vectors: `all` holds `ranks` vectors of `total`
// elements back to back; adds segment `rank` of each, in rank order, into recv.
template <class T>
void sum_segment(const T* all, std::size_t ranks, std::size_t total, std::size_t offset,
                 std::size_t count, T* recv) {
  for (std::size_t i = 0; i < count; ++i) recv[i] = T(0);
  for (std::size_t r = 0; r < ranks; ++r) {
    const T* src = all + r * total + offset;
    for (std::size_t i = 0; i < count; ++i) recv[i] += src[i];
  }
}
}  // namespace detail

inline void Communicator::reduce_scatter_v(const void* send, void* recv,
                                           const std::vector<std::size_t>& counts, SumType dtype) {
  const auto ranks = static_cast<std::size_t>(size());
  if (counts.size() != ranks)
    throw CommError(backend() + ": reduce_scatter_v needs one count per rank: " +
                    std::to_string(counts.size()) + " vs " + std::to_string(ranks));
  const std::size_t elem = dtype == SumType::kFloat64 ? sizeof(double) : sizeof(float);
  std::size_t total = 0, offset = 0;
  for (std::size_t r = 0; r < ranks; ++r) {
    if (r == static_cast<std::size_t>(rank())) offset = total;
    total += counts[r];
  }
  const std::size_t count = counts[static_cast<std::size_t>(rank())];
  std::vector<unsigned char> all(ranks * total * elem);
  all_gather_v(send, total * elem, all.data(), std::vector<std::size_t>(ranks, total * elem));
  if (dtype == SumType::kFloat64) {
    detail::sum_segment(reinterpret_cast<const double*>(all.data()), ranks, total, offset, count,
                        static_cast<double*>(recv));
  } else {
    detail::sum_segment(reinterpret_cast<const float*>(all.data()), ranks, total, offset, count,
                        static_cast<float*>(recv));
  }
}

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
  void reduce_scatter_v(const void* send, void* recv, const std::vector<std::size_t>& counts,
                        SumType dtype) override {
    if (counts.size() != 1)
      throw CommError("single: reduce_scatter_v expects 1 count, got " +
                      std::to_string(counts.size()));
    const std::size_t elem = dtype == SumType::kFloat64 ? sizeof(double) : sizeof(float);
    if (counts[0] > 0) std::memmove(recv, send, counts[0] * elem);
  }
  bool has_reduce_scatter() const override { return true; }
};

}  // namespace simclr

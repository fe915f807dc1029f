#pragma once
// The MPI backend of the Communicator (target simclr::mpi). Built from a caller's MPI_Comm, which
// it duplicates so the library's traffic never mixes with the job's. The library never calls
// MPI_Init or MPI_Finalize: the caller owns MPI's lifetime and must destroy this object before
// MPI_Finalize.

#include <mpi.h>

#include <chrono>
#include <memory>
#include <vector>

#include "simclr/communicator.hpp"

namespace simclr {

struct MpiCommunicatorOptions {
  // When > 0, every collective waits at most this long and then throws CommError naming the
  // collective, the rank and the time waited, instead of blocking forever. A communicator whose
  // collective timed out or failed is broken: every later call throws. 0 (the default) blocks as
  // MPI does. While a timed collective waits, MPI_COMM_WORLD's and MPI_COMM_SELF's error handlers
  // are MPI_ERRORS_RETURN (Open MPI 4 reports a failed non-blocking collective there), restored
  // after.
  std::chrono::milliseconds timeout{0};
};

class MpiCommunicator final : public Communicator {
 public:
  // Collective over `comm` (MPI_Comm_dup). Sets MPI_ERRORS_RETURN on the duplicate, so MPI errors
  // come back as CommError instead of aborting the job. Throws CommError if MPI is not initialised.
  explicit MpiCommunicator(MPI_Comm comm, MpiCommunicatorOptions options = {});
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }
  void all_gather(const void* send, std::size_t bytes, void* recv) override;
  void all_gather_v(const void* send, std::size_t send_bytes, void* recv,
                    const std::vector<std::size_t>& recv_bytes) override;
  void barrier() override;
  // MPI_Reduce_scatter (MPI_Ireduce_scatter with a timeout) with MPI_SUM.
  void reduce_scatter_v(const void* send, void* recv, const std::vector<std::size_t>& counts,
                        SumType dtype) override;
  bool has_reduce_scatter() const override { return true; }

  // The duplicated communicator (for callers that want to issue their own traffic beside it).
  MPI_Comm comm() const { return comm_; }
  const MpiCommunicatorOptions& options() const { return options_; }

 private:
  // Buffers of a collective with a timeout, owned here so that a collective we stopped waiting for
  // never writes into memory the caller has freed.
  struct Staging {
    std::vector<unsigned char> send, recv;
    std::vector<int> counts, displs;
  };
  void wait(MPI_Request* request, const char* collective, std::shared_ptr<Staging> staging);
  void check_usable(const char* collective) const;

  MPI_Comm comm_ = MPI_COMM_NULL;
  MpiCommunicatorOptions options_;
  int rank_ = 0;
  int size_ = 1;
  bool broken_ = false;
  std::vector<std::shared_ptr<Staging>> abandoned_;
};

}  // namespace simclr

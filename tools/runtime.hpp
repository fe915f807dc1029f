#pragma once
// Process set-up shared by the tools: MPI when started by a launcher, and the agreement of every
// rank on the outcome of a step that may fail on some ranks only (so all exit 2 together, none
// hangs).

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "simclr/communicator.hpp"

namespace simclr::tools {

// Whether this process was started by an MPI launcher (mpirun / srun with PMIx).
bool started_by_launcher();

class Runtime {
 public:
  // Initialises MPI when started by a launcher and SIMCLR_WITH_MPI was built; otherwise local.
  Runtime(int* argc, char*** argv);
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // nullptr when local (no launcher): the plain local call.
  Communicator* communicator() { return comm_.get(); }
  int rank() const { return comm_ ? comm_->rank() : 0; }
  int size() const { return comm_ ? comm_->size() : 1; }

  // Runs `step`; when distributed, every rank learns whether any rank failed and the lowest failing
  // rank's message is rethrown (as ValueError) on every rank.
  void agreed(const std::function<void()>& step);

 private:
  std::unique_ptr<Communicator> comm_;
  bool mpi_initialised_here_ = false;
};

// The main() of the tools: sets up the runtime, runs `body` with it and the arguments, and maps
// exceptions to exit statuses: 2 for bad input (rank 0 prints one `error: ...` line; the agreement
// step made every rank raise it), 3 for a communication failure (each rank prints its own).
int run_main(int argc, char** argv,
             const std::function<int(Runtime&, const std::vector<std::string>&)>& body);

}  // namespace simclr::tools

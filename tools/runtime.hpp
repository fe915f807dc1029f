#pragma once
// Process set-up shared by the tools: MPI when started by a launcher, and the agreement of every
// rank on the outcome of a step that may fail on some ranks only (so all exit with the same status
// together, none hangs).

#include <exception>
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
  // Distributed over `comm` (tests: any Communicator); nullptr is local. MPI is not touched.
  explicit Runtime(std::unique_ptr<Communicator> comm);
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // nullptr when local (no launcher): the plain local call.
  Communicator* communicator() { return comm_.get(); }
  int rank() const { return comm_ ? comm_->rank() : 0; }
  int size() const { return comm_ ? comm_->size() : 1; }

  // Runs `step`; when distributed, every rank learns whether any rank failed (the library's
  // agreement step, detail::capture / gather_records) and the lowest failing rank's exception is
  // raised on every rank with its type and message plus " (rank r)". A CommError propagates.
  void agreed(const std::function<void()>& step);

 private:
  std::unique_ptr<Communicator> comm_;
  bool mpi_initialised_here_ = false;
};

// Exit statuses of the tools (docs/cli.md).
enum ExitStatus : int {
  kExitOk = 0,
  kExitBadInput = 2,       // ValueError, TypeError: usage, file, shape, dtype, config, value
  kExitCommFailure = 3,    // CommError: MPI failed or a collective timed out
  kExitDeviceFailure = 4,  // DeviceError: a CUDA or cuBLAS call failed, device memory ran out
  kExitOtherFailure = 5,   // anything else: a failed internal check, host memory ran out
};

// The status for an exception `body` let escape (a null pointer: kExitOk).
int exit_status(const std::exception_ptr& error);

// The main() of the tools: sets up the runtime, runs `body` with it and the arguments, and maps
// exceptions to exit statuses with exit_status. Bad input is printed as one `error: ...` line by
// rank 0 (the agreement step made every rank raise it); any other failure by each rank that has
// it.
int run_main(int argc, char** argv,
             const std::function<int(Runtime&, const std::vector<std::string>&)>& body);

}  // namespace simclr::tools

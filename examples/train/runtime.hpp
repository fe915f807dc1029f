#pragma once
// What a trainer needs around the loss, written against the public API only: MPI when the program
// was started by a launcher, a communicator for the loss, every rank agreeing on a step that may
// fail on some ranks only, strict flag values, and main()'s mapping of exceptions to exit statuses.

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "simclr/communicator.hpp"
#include "simclr/errors.hpp"

#ifdef SIMCLR_TRAIN_WITH_MPI
#include <mpi.h>

#include "simclr/mpi/mpi_communicator.hpp"
#endif

namespace simclr::examples {

// Throws ValueError(parts...) unless `ok`.
template <class... Parts>
void require(bool ok, const Parts&... parts) {
  if (ok) return;
  std::ostringstream os;
  (os << ... << parts);
  throw ValueError(os.str());
}

// Whether an MPI launcher (mpirun, srun with PMI/PMIx) started this process.
inline bool started_by_launcher() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"})
    if (std::getenv(var) != nullptr) return true;
  return false;
}

class Runtime {
 public:
  // MPI and a communicator over MPI_COMM_WORLD when started by a launcher (and built with MPI);
  // otherwise one local process.
  Runtime(int* argc, char*** argv) {
#ifdef SIMCLR_TRAIN_WITH_MPI
    if (started_by_launcher()) {
      int provided = 0;
      MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
      mpi_ = true;
      comm_ = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD);
    }
#else
    (void)argc;
    (void)argv;
#endif
  }
  ~Runtime() {
    comm_.reset();
#ifdef SIMCLR_TRAIN_WITH_MPI
    if (mpi_) MPI_Finalize();
#endif
  }
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // nullptr for one local process.
  Communicator* communicator() { return comm_.get(); }
  int rank() const { return comm_ ? comm_->rank() : 0; }
  int size() const { return comm_ ? comm_->size() : 1; }

  // Runs `step` on every rank; if it threw on any rank, every rank throws the lowest failing rank's
  // message (ValueError), so all stop together and none waits in a collective. Collective.
  void agreed(const std::function<void()>& step) {
    std::string error;
    try {
      step();
    } catch (const std::exception& e) {
      if (!comm_) throw;
      error = e.what();
    }
    if (!comm_) return;
    char mine[512] = {0};
    std::strncpy(mine, error.c_str(), sizeof(mine) - 1);
    std::vector<char> all(sizeof(mine) * static_cast<std::size_t>(comm_->size()));
    comm_->all_gather(mine, sizeof(mine), all.data());
    for (int r = 0; r < comm_->size(); ++r) {
      const char* message = all.data() + sizeof(mine) * static_cast<std::size_t>(r);
      if (message[0] != '\0') throw ValueError(message);
    }
  }

 private:
  std::unique_ptr<Communicator> comm_;
  bool mpi_ = false;
};

// Strict flag values: the whole text must be the number.
inline std::int64_t parse_int(const std::string& text, const std::string& flag,
                              std::int64_t min_value) {
  std::size_t used = 0;
  long long value = 0;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  require(used == text.size() && !text.empty(), "--", flag, " needs an integer, got '", text, "'");
  require(value >= min_value, "--", flag, " must be >= ", min_value, ", got ", value);
  return value;
}

inline double parse_double(const std::string& text, const std::string& flag) {
  std::size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  require(used == text.size() && !text.empty(), "--", flag, " needs a number, got '", text, "'");
  return value;
}

// main(): runs `body`; bad input ends with `error: ...` from rank 0 and status 2 (every rank raised
// it, through agreed()), a communication failure with each rank's own message and status 3.
inline int run_main(int argc, char** argv,
                    const std::function<int(Runtime&, const std::vector<std::string>&)>& body) {
  std::unique_ptr<Runtime> rt;
  try {
    rt = std::make_unique<Runtime>(&argc, &argv);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << std::endl;
    return 2;
  }
  const std::vector<std::string> args(argv, argv + argc);
  int status = 0;
  try {
    status = body(*rt, args);
  } catch (const CommError& e) {
    std::cerr << "error: " << e.what() << std::endl;
    status = 3;
  } catch (const std::exception& e) {
    if (rt->rank() == 0) std::cerr << "error: " << e.what() << std::endl;
    status = 2;
  }
  rt.reset();
  return status;
}

}  // namespace simclr::examples

#include "runtime.hpp"

#include <cstdlib>
#include <cstring>
#include <iostream>
#include <vector>

#include "simclr/detail/check.hpp"

#ifdef SIMCLR_TOOLS_WITH_MPI
#include "simclr/mpi/mpi_communicator.hpp"
#endif

namespace simclr::tools {

bool started_by_launcher() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"}) {
    if (std::getenv(var) != nullptr) return true;
  }
  return false;
}

Runtime::Runtime(int* argc, char*** argv) {
#ifdef SIMCLR_TOOLS_WITH_MPI
  if (started_by_launcher()) {
    int provided = 0;
    MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    mpi_initialised_here_ = true;
    comm_ = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD);
  }
#else
  (void)argc;
  (void)argv;
#endif
}

Runtime::~Runtime() {
  comm_.reset();
#ifdef SIMCLR_TOOLS_WITH_MPI
  if (mpi_initialised_here_) MPI_Finalize();
#endif
}

void Runtime::agreed(const std::function<void()>& step) {
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
    const char* msg = all.data() + sizeof(mine) * static_cast<std::size_t>(r);
    if (msg[0] != '\0') throw ValueError(std::string(msg));
  }
}

int run_main(int argc, char** argv,
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

}  // namespace simclr::tools

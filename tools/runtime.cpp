#include "runtime.hpp"

#include <cstdlib>
#include <iostream>
#include <utility>
#include <vector>

#include "simclr/detail/agreement.hpp"

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

Runtime::Runtime(std::unique_ptr<Communicator> comm) : comm_(std::move(comm)) {}

Runtime::~Runtime() {
  comm_.reset();
#ifdef SIMCLR_TOOLS_WITH_MPI
  if (mpi_initialised_here_) MPI_Finalize();
#endif
}

void Runtime::agreed(const std::function<void()>& step) {
  if (!comm_) {
    step();
    return;
  }
  detail::AgreementRecord mine = detail::empty_record();
  detail::capture(mine, step);
  detail::gather_records(*comm_, mine);
}

int exit_status(const std::exception_ptr& error) {
  if (!error) return kExitOk;
  try {
    std::rethrow_exception(error);
  } catch (const ValueError&) {
    return kExitBadInput;
  } catch (const TypeError&) {
    return kExitBadInput;
  } catch (const CommError&) {
    return kExitCommFailure;
  } catch (const DeviceError&) {
    return kExitDeviceFailure;
  } catch (...) {
    return kExitOtherFailure;
  }
}

int run_main(int argc, char** argv,
             const std::function<int(Runtime&, const std::vector<std::string>&)>& body) {
  std::unique_ptr<Runtime> rt;
  try {
    rt = std::make_unique<Runtime>(&argc, &argv);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << std::endl;
    return kExitBadInput;
  }
  const std::vector<std::string> args(argv, argv + argc);
  int status = kExitOk;
  try {
    status = body(*rt, args);
  } catch (const std::exception& e) {
    status = exit_status(std::current_exception());
    if (status != kExitBadInput || rt->rank() == 0) std::cerr << "error: " << e.what() << std::endl;
  } catch (...) {
    status = kExitOtherFailure;
    std::cerr << "error: an exception that is not a std::exception" << std::endl;
  }
  rt.reset();
  return status;
}

}  // namespace simclr::tools

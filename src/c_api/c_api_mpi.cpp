// simclr_comm_create_mpi of the C API (include/simclr/c_api.h), in target simclr::mpi so that the
// core library never depends on MPI.

#include <mpi.h>

#include <chrono>
#include <cmath>

#include "simclr/c_api.h"
#include "simclr/detail/c_api_impl.hpp"
#include "simclr/detail/check.hpp"
#include "simclr/mpi/mpi_communicator.hpp"

extern "C" simclr_status simclr_comm_create_mpi(int64_t fortran_handle, double timeout_seconds,
                                                simclr_comm_t* out) {
  return simclr::detail::c_api_guard([&] {
    using simclr::ValueError;
    SIMCLR_ENFORCE(out != nullptr, ValueError, "simclr_comm_create_mpi: out is NULL");
    SIMCLR_ENFORCE(std::isfinite(timeout_seconds) && timeout_seconds >= 0, ValueError,
                   "simclr_comm_create_mpi: timeout_seconds is ", timeout_seconds,
                   "; pass 0 (no timeout) or a positive number of seconds");
    int initialized = 0;
    MPI_Initialized(&initialized);
    SIMCLR_ENFORCE(initialized != 0, simclr::CommError,
                   "simclr_comm_create_mpi: MPI is not initialised; call MPI_Init (mpi4py does on "
                   "import) before creating the communicator");
    const MPI_Comm comm = MPI_Comm_f2c(static_cast<MPI_Fint>(fortran_handle));
    SIMCLR_ENFORCE(comm != MPI_COMM_NULL, ValueError, "simclr_comm_create_mpi: handle ",
                   fortran_handle, " is MPI_COMM_NULL; pass MPI_Comm_c2f of a live communicator");
    simclr::MpiCommunicatorOptions options;
    // Rounded up to whole milliseconds, so a small positive timeout never becomes "no timeout".
    options.timeout =
        std::chrono::milliseconds(static_cast<std::int64_t>(std::ceil(timeout_seconds * 1000.0)));
    auto handle = std::make_unique<simclr_comm>();
    handle->comm = std::make_unique<simclr::MpiCommunicator>(comm, options);
    *out = handle.release();
  });
}

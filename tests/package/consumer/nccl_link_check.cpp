// Built only when the installed package has simclr::nccl: its headers (CUDA, NCCL, MPI) must be
// found and its static libraries linked through the exported targets alone. Not run (it needs a
// GPU).
#include <simclr/nccl/nccl_communicator.hpp>

int main(int argc, char** argv) {
  if (argc > 1000) {  // never true: the constructor is referenced, so the link must resolve it
    MPI_Init(&argc, &argv);
    { simclr::NcclCommunicator comm(MPI_COMM_WORLD); }
    MPI_Finalize();
  }
  return 0;
}

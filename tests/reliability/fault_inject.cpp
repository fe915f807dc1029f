// simclr_fault_inject: a distributed training-like loop under mpirun in which something goes wrong.
//   die      after one good step the last rank exits without MPI_Finalize (_exit) while the others
//            wait in a timed collective (tests/reliability/rank_death.sh)
//   steps    every rank runs timed forward+backward steps until a collective fails; the multi-host
//            run (tests/scripts/multihost.sh) cuts one host's link meanwhile
// Every rank that sees a CommError prints "SURVIVOR rank r: <message>" and leaves with _exit(0):
// with a peer gone MPI_Finalize could block, so a real job would exit (or be restarted) the same
// way. Usage: simclr_fault_inject die|steps [timeout_ms=2000] [max_steps=100000]

#include <mpi.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "simclr/loss.hpp"
#include "simclr/mpi/mpi_communicator.hpp"

namespace {

void say(const std::string& line) {
  std::fprintf(stdout, "%s\n", line.c_str());
  std::fflush(stdout);
}

// One forward+backward step of 16 rows per rank, dimension 32.
void step(const simclr::SimCLRLoss& loss, simclr::Communicator& comm, int seed) {
  using M = simclr::RowMatrix<float>;
  std::srand(static_cast<unsigned>(seed * 131 + comm.rank()));
  const M a = M::Random(16, 32), b = M::Random(16, 32);
  simclr::CallOptions o;
  o.communicator = &comm;
  loss.value_and_gradient<float>(a, b, nullptr, o);
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  const std::string mode = argc > 1 ? argv[1] : "";
  const long timeout_ms = argc > 2 ? std::atol(argv[2]) : 2000;
  const long max_steps = argc > 3 ? std::atol(argv[3]) : 100000;
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (mode != "die" && mode != "steps") {
    if (rank == 0)
      std::fprintf(stderr, "usage: simclr_fault_inject die|steps [timeout_ms] [max_steps]\n");
    MPI_Finalize();
    return 2;
  }
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  simclr::MpiCommunicator comm(
      MPI_COMM_WORLD, simclr::MpiCommunicatorOptions{std::chrono::milliseconds(timeout_ms)});
  const simclr::SimCLRLoss loss(0.1, simclr::Reduction::kSum);
  long done = 0;
  try {
    step(loss, comm, 0);
    say("rank " + std::to_string(rank) + " on " + host + ": first step ok");
    if (mode == "die") {
      if (rank == size - 1) {
        say("rank " + std::to_string(rank) + " exits now");
        _exit(0);
      }
      comm.barrier();
      say("rank " + std::to_string(rank) +
          ": barrier completed without the dead rank (unexpected)");
    } else {
      for (done = 1; done < max_steps; ++done) {
        step(loss, comm, static_cast<int>(done));
        if (rank == 0 && done % 20 == 0) say("step " + std::to_string(done) + " ok");
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      say("rank " + std::to_string(rank) + ": all " + std::to_string(done) + " steps completed");
    }
  } catch (const simclr::CommError& e) {
    say("SURVIVOR rank " + std::to_string(rank) + " on " + host + " after " + std::to_string(done) +
        " steps: " + e.what());
    _exit(0);
  }
  MPI_Finalize();
  return 0;
}

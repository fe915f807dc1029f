// One rank failing alone, under mpirun (2-3 ranks): host memory runs out on one rank in the middle
// of the forward's validation. The agreement step must carry that failure like any bad input, so
// every rank raises the same exception (type and message, naming the rank) and the ranks stay in
// step: a barrier afterwards passes. Without it the failing rank leaves while the others wait in
// the agreement gather (a hang without a timeout; with one, a CommError on the others).
//
// The failure is a real std::bad_alloc: this binary replaces the global operator new with one that
// fails the next allocation of one chosen size on this process, once.

#include <gtest/gtest.h>
#include <mpi.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <typeinfo>
#include <vector>

#include "simclr/loss.hpp"
#include "simclr/mpi/mpi_communicator.hpp"

namespace {

// Bytes of the allocation to fail (0: none). Read by every allocation, so relaxed and lock-free.
std::atomic<std::size_t> fail_allocation_of{0};

void* allocate(std::size_t bytes) {
  std::size_t armed = fail_allocation_of.load(std::memory_order_relaxed);
  if (armed != 0 && armed == bytes && fail_allocation_of.compare_exchange_strong(armed, 0))
    throw std::bad_alloc();
  if (void* p = std::malloc(bytes == 0 ? 1 : bytes)) return p;
  throw std::bad_alloc();
}

}  // namespace

// Every plain form, so that whatever one of them allocates another frees with the same allocator.
void* operator new(std::size_t bytes) { return allocate(bytes); }
void* operator new[](std::size_t bytes) { return allocate(bytes); }
void* operator new(std::size_t bytes, const std::nothrow_t&) noexcept {
  try {
    return allocate(bytes);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t bytes, const std::nothrow_t& tag) noexcept {
  return operator new(bytes, tag);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }

namespace simclr {
namespace {

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int world_size() {
  int s = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}

// Generous: a rank that takes part never trips it; one that does not makes the others fail within
// it instead of hanging until ctest's timeout.
constexpr std::chrono::milliseconds kTimeout{30000};

// "<dynamic type>: <message>" of what `call` throws, or a marker.
template <class F>
std::string outcome_of(F&& call) {
  try {
    call();
  } catch (const std::exception& e) {
    const char* type = typeid(e) == typeid(Error)        ? "simclr::Error"
                       : typeid(e) == typeid(ValueError) ? "simclr::ValueError"
                       : typeid(e) == typeid(CommError)  ? "simclr::CommError"
                                                         : typeid(e).name();
    return std::string(type) + ": " + e.what();
  }
  return "no exception";
}

// Every rank's string, gathered to every rank (over MPI_COMM_WORLD, not the communicator under
// test).
std::vector<std::string> everyones(const std::string& mine) {
  char buf[512] = {0};
  std::strncpy(buf, mine.c_str(), sizeof(buf) - 1);
  std::vector<char> all(sizeof(buf) * static_cast<std::size_t>(world_size()));
  MPI_Allgather(buf, sizeof(buf), MPI_CHAR, all.data(), sizeof(buf), MPI_CHAR, MPI_COMM_WORLD);
  std::vector<std::string> out;
  for (int r = 0; r < world_size(); ++r) out.emplace_back(all.data() + r * sizeof(buf));
  return out;
}

TEST(OneRankFails, OutOfHostMemoryInValidationRaisesTheSameErrorOnEveryRank) {
  MpiCommunicator comm(MPI_COMM_WORLD, MpiCommunicatorOptions{kTimeout});
  const int failing = world_size() - 1;
  // The failing rank's row count gives its weight vector (n doubles, built during validation) a
  // size nothing else of the call allocates.
  const std::int64_t n = world_rank() == failing ? 1237 : 3, d = 4;
  const RowMatrix<double> a = RowMatrix<double>::Random(n, d), b = RowMatrix<double>::Random(n, d);
  CallOptions o;
  o.communicator = &comm;
  const SimCLRLoss loss(0.1, Reduction::kSum);
  if (world_rank() == failing) fail_allocation_of = static_cast<std::size_t>(n) * sizeof(double);
  const std::string outcome = outcome_of([&] { loss.forward<double>(a, b, nullptr, o); });
  // The injection did fire, where this test expects it.
  if (world_rank() == failing) {
    EXPECT_EQ(fail_allocation_of.exchange(0), 0u);
  }

  const std::string expected =
      "simclr::Error: out of host memory (std::bad_alloc) (rank " + std::to_string(failing) + ")";
  EXPECT_EQ(outcome, expected);
  const std::vector<std::string> all = everyones(outcome);
  for (int r = 0; r < world_size(); ++r)
    EXPECT_EQ(all[static_cast<std::size_t>(r)], outcome) << "rank " << r << " raised otherwise";
  // Still in step: the same communicator completes a barrier and a whole step.
  EXPECT_EQ(outcome_of([&] { comm.barrier(); }), "no exception");
  const RowMatrix<double> a3 = RowMatrix<double>::Random(3, d),
                          b3 = RowMatrix<double>::Random(3, d);
  EXPECT_EQ(outcome_of([&] { loss.value_and_gradient<double>(a3, b3, nullptr, o); }),
            "no exception");
}

}  // namespace
}  // namespace simclr

#include "simclr/mpi/mpi_communicator.hpp"

#include <algorithm>
#include <climits>
#include <memory>
#include <thread>

#include "simclr/detail/check.hpp"

namespace simclr {
namespace {

std::string mpi_error_string(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(text, static_cast<std::size_t>(len));
}

// Open MPI 4 raises an error found while completing a non-blocking collective on MPI_COMM_WORLD's
// error handler instead of the request's communicator (Open MPI 5 uses MPI_COMM_SELF): with the
// default MPI_ERRORS_ARE_FATAL a failed MPI_Iallgatherv aborts the job instead of MPI_Test
// returning the error (tests/reliability/test_collectives.cpp, MpiErrors.*). While a timed
// collective is polled, both handlers are MPI_ERRORS_RETURN; the caller's handlers are restored
// afterwards.
class ReturnErrorsWhilePolling {
 public:
  ReturnErrorsWhilePolling() {
    for (int i = 0; i < 2; ++i) {
      if (MPI_Comm_get_errhandler(comm(i), &saved_[i]) != MPI_SUCCESS)
        saved_[i] = MPI_ERRHANDLER_NULL;
      if (saved_[i] != MPI_ERRHANDLER_NULL) MPI_Comm_set_errhandler(comm(i), MPI_ERRORS_RETURN);
    }
  }
  ~ReturnErrorsWhilePolling() {
    for (int i = 0; i < 2; ++i) {
      if (saved_[i] == MPI_ERRHANDLER_NULL) continue;
      MPI_Comm_set_errhandler(comm(i), saved_[i]);
      MPI_Errhandler_free(&saved_[i]);
    }
  }
  ReturnErrorsWhilePolling(const ReturnErrorsWhilePolling&) = delete;
  ReturnErrorsWhilePolling& operator=(const ReturnErrorsWhilePolling&) = delete;

 private:
  static MPI_Comm comm(int i) { return i == 0 ? MPI_COMM_WORLD : MPI_COMM_SELF; }
  MPI_Errhandler saved_[2] = {MPI_ERRHANDLER_NULL, MPI_ERRHANDLER_NULL};
};

}  // namespace
}  // namespace simclr

// Wraps an MPI call: a failure becomes CommError naming the call, the error string and the rank.
#define SIMCLR_CHECK_MPI(call, rank)                                                          \
  do {                                                                                        \
    const int simclr_rc_ = (call);                                                            \
    if (simclr_rc_ != MPI_SUCCESS)                                                            \
      throw ::simclr::CommError(::simclr::detail::str_cat(                                    \
          #call, " failed: ", ::simclr::mpi_error_string(simclr_rc_), " (rank ", rank, ")")); \
  } while (0)

namespace simclr {

MpiCommunicator::MpiCommunicator(MPI_Comm comm, MpiCommunicatorOptions options)
    : options_(options) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  SIMCLR_ENFORCE(
      initialized && !finalized, CommError,
      "MpiCommunicator needs MPI initialised (call MPI_Init first; the library never does)");
  SIMCLR_ENFORCE(comm != MPI_COMM_NULL, CommError, "MpiCommunicator: MPI_COMM_NULL given");
  // Errors on the caller's communicator would abort before we could set a handler on the duplicate;
  // MPI_Comm_dup's own failure is reported through the caller's handler, which is theirs to choose.
  SIMCLR_CHECK_MPI(MPI_Comm_dup(comm, &comm_), -1);
  SIMCLR_CHECK_MPI(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), -1);
  SIMCLR_CHECK_MPI(MPI_Comm_rank(comm_, &rank_), -1);
  SIMCLR_CHECK_MPI(MPI_Comm_size(comm_, &size_), rank_);
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 1;
  MPI_Finalized(&finalized);
  // A timed-out collective may still be pending on comm_; freeing it then is not safe, so it is
  // left to MPI_Finalize. Never throw from here.
  if (!finalized && comm_ != MPI_COMM_NULL && !broken_) MPI_Comm_free(&comm_);
  // Buffers of abandoned collectives are deliberately leaked: MPI may still write into them.
  for (auto& staging : abandoned_) new std::shared_ptr<Staging>(std::move(staging));  // NOLINT
}

void MpiCommunicator::check_usable(const char* collective) const {
  SIMCLR_ENFORCE(
      !broken_, CommError, "mpi: ", collective, " on rank ", rank_,
      ": this communicator is broken by an earlier failed or timed-out collective; make a "
      "new one");
}

void MpiCommunicator::wait(MPI_Request* request, const char* collective,
                           std::shared_ptr<Staging> staging) {
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  int done = 0;
  std::chrono::microseconds nap{1};
  const ReturnErrorsWhilePolling return_errors;
  while (true) {
    const int rc = MPI_Test(request, &done, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) {
      // The collective's state on the other ranks is unknown and MPI may still touch the buffers.
      broken_ = true;
      if (staging) abandoned_.push_back(std::move(staging));
      throw CommError(detail::str_cat("mpi: ", collective, " failed on rank ", rank_, " of ", size_,
                                      ": ", mpi_error_string(rc),
                                      "; the communicator is now unusable"));
    }
    if (done) return;
    const auto waited = clock::now() - start;
    if (waited >= options_.timeout) {
      broken_ = true;
      if (staging) abandoned_.push_back(std::move(staging));  // MPI may still write into it
      throw CommError(detail::str_cat(
          "mpi: ", collective, " timed out on rank ", rank_, " of ", size_, " after ",
          std::chrono::duration_cast<std::chrono::milliseconds>(waited).count(), " ms (timeout ",
          options_.timeout.count(),
          " ms): another rank did not take part; the communicator is now unusable"));
    }
    std::this_thread::sleep_for(nap);
    nap = std::min(nap * 2, std::chrono::microseconds(1000));
  }
}

void MpiCommunicator::all_gather(const void* send, std::size_t bytes, void* recv) {
  check_usable("all_gather");
  SIMCLR_ENFORCE(bytes <= static_cast<std::size_t>(INT_MAX), CommError, "mpi: all_gather of ",
                 bytes, " bytes exceeds MPI's int count");
  const int count = static_cast<int>(bytes);
  if (options_.timeout.count() <= 0) {
    SIMCLR_CHECK_MPI(MPI_Allgather(send, count, MPI_BYTE, recv, count, MPI_BYTE, comm_), rank_);
    return;
  }
  // With a timeout the buffers MPI may still touch after we give up are our own, kept alive on
  // failure.
  auto staging = std::make_shared<Staging>();
  staging->send.assign(static_cast<const unsigned char*>(send),
                       static_cast<const unsigned char*>(send) + bytes);
  staging->recv.resize(bytes * static_cast<std::size_t>(size_));
  MPI_Request request;
  SIMCLR_CHECK_MPI(MPI_Iallgather(staging->send.data(), count, MPI_BYTE, staging->recv.data(),
                                  count, MPI_BYTE, comm_, &request),
                   rank_);
  wait(&request, "all_gather", staging);
  std::copy(staging->recv.begin(), staging->recv.end(), static_cast<unsigned char*>(recv));
}

void MpiCommunicator::all_gather_v(const void* send, std::size_t send_bytes, void* recv,
                                   const std::vector<std::size_t>& recv_bytes) {
  check_usable("all_gather_v");
  SIMCLR_ENFORCE(recv_bytes.size() == static_cast<std::size_t>(size_), CommError,
                 "mpi: all_gather_v needs one count per rank: ", recv_bytes.size(), " vs ", size_);
  SIMCLR_ENFORCE(send_bytes == recv_bytes[static_cast<std::size_t>(rank_)], CommError,
                 "mpi: all_gather_v on rank ", rank_, ": sends ", send_bytes,
                 " bytes but the counts say ", recv_bytes[static_cast<std::size_t>(rank_)]);
  std::vector<int> counts(recv_bytes.size()), displs(recv_bytes.size());
  std::size_t at = 0;
  for (std::size_t r = 0; r < recv_bytes.size(); ++r) {
    SIMCLR_ENFORCE(recv_bytes[r] <= static_cast<std::size_t>(INT_MAX) &&
                       at <= static_cast<std::size_t>(INT_MAX),
                   CommError, "mpi: all_gather_v of ", recv_bytes[r], " bytes at offset ", at,
                   " exceeds MPI's int counts");
    counts[r] = static_cast<int>(recv_bytes[r]);
    displs[r] = static_cast<int>(at);
    at += recv_bytes[r];
  }
  const int count = static_cast<int>(send_bytes);
  if (options_.timeout.count() <= 0) {
    SIMCLR_CHECK_MPI(
        MPI_Allgatherv(send, count, MPI_BYTE, recv, counts.data(), displs.data(), MPI_BYTE, comm_),
        rank_);
    return;
  }
  auto staging = std::make_shared<Staging>();
  staging->send.assign(static_cast<const unsigned char*>(send),
                       static_cast<const unsigned char*>(send) + send_bytes);
  staging->recv.resize(at);
  staging->counts = std::move(counts);
  staging->displs = std::move(displs);
  MPI_Request request;
  SIMCLR_CHECK_MPI(
      MPI_Iallgatherv(staging->send.data(), count, MPI_BYTE, staging->recv.data(),
                      staging->counts.data(), staging->displs.data(), MPI_BYTE, comm_, &request),
      rank_);
  wait(&request, "all_gather_v", staging);
  std::copy(staging->recv.begin(), staging->recv.end(), static_cast<unsigned char*>(recv));
}

void MpiCommunicator::barrier() {
  check_usable("barrier");
  if (options_.timeout.count() <= 0) {
    SIMCLR_CHECK_MPI(MPI_Barrier(comm_), rank_);
    return;
  }
  MPI_Request request;
  SIMCLR_CHECK_MPI(MPI_Ibarrier(comm_, &request), rank_);
  wait(&request, "barrier", nullptr);
}

void MpiCommunicator::reduce_scatter_v(const void* send, void* recv,
                                       const std::vector<std::size_t>& counts, SumType dtype) {
  check_usable("reduce_scatter_v");
  SIMCLR_ENFORCE(counts.size() == static_cast<std::size_t>(size_), CommError,
                 "mpi: reduce_scatter_v needs one count per rank: ", counts.size(), " vs ", size_);
  const MPI_Datatype type = dtype == SumType::kFloat64 ? MPI_DOUBLE : MPI_FLOAT;
  const std::size_t elem = dtype == SumType::kFloat64 ? sizeof(double) : sizeof(float);
  std::vector<int> ints(counts.size());
  std::size_t total = 0;
  for (std::size_t r = 0; r < counts.size(); ++r) {
    SIMCLR_ENFORCE(counts[r] <= static_cast<std::size_t>(INT_MAX), CommError,
                   "mpi: reduce_scatter_v of ", counts[r], " elements exceeds MPI's int counts");
    ints[r] = static_cast<int>(counts[r]);
    total += counts[r];
  }
  const std::size_t mine = counts[static_cast<std::size_t>(rank_)];
  if (options_.timeout.count() <= 0) {
    SIMCLR_CHECK_MPI(MPI_Reduce_scatter(send, recv, ints.data(), type, MPI_SUM, comm_), rank_);
    return;
  }
  auto staging = std::make_shared<Staging>();
  staging->send.assign(static_cast<const unsigned char*>(send),
                       static_cast<const unsigned char*>(send) + total * elem);
  staging->recv.resize(std::max<std::size_t>(mine * elem, 1));
  staging->counts = std::move(ints);
  MPI_Request request;
  SIMCLR_CHECK_MPI(MPI_Ireduce_scatter(staging->send.data(), staging->recv.data(),
                                       staging->counts.data(), type, MPI_SUM, comm_, &request),
                   rank_);
  wait(&request, "reduce_scatter_v", staging);
  std::copy_n(staging->recv.begin(), mine * elem, static_cast<unsigned char*>(recv));
}

}  // namespace simclr

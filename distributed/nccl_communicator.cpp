#include "simclr/nccl/nccl_communicator.hpp"

#include <algorithm>
#include <cstring>
#include <thread>

#include "simclr/detail/check.hpp"
#include "simclr/detail/cuda_check.hpp"

// Wraps an NCCL call: a failure becomes CommError naming the call, NCCL's error string, its last
// error message when it has one, and the rank. ncclInProgress (a non-blocking communicator, which a
// caller may lend) is not success yet: the call's state is polled until NCCL has enqueued it.
#define SIMCLR_CHECK_NCCL(call, comm, rank)                                                     \
  do {                                                                                          \
    ncclResult_t simclr_nccl_rc_ = (call);                                                      \
    if (simclr_nccl_rc_ == ncclInProgress) simclr_nccl_rc_ = ::simclr::wait_in_progress(comm);  \
    if (simclr_nccl_rc_ != ncclSuccess) {                                                       \
      const char* simclr_nccl_last_ = ncclGetLastError(comm);                                   \
      throw ::simclr::CommError(::simclr::detail::str_cat(                                      \
          #call, " failed: ", ncclGetErrorString(simclr_nccl_rc_),                              \
          (simclr_nccl_last_ != nullptr && simclr_nccl_last_[0] != '\0') ? " (" : "",           \
          simclr_nccl_last_ != nullptr ? simclr_nccl_last_ : "",                                \
          (simclr_nccl_last_ != nullptr && simclr_nccl_last_[0] != '\0') ? ")" : "", " (rank ", \
          rank, ")"));                                                                          \
    }                                                                                           \
  } while (0)

namespace simclr {

// Polls a non-blocking communicator's state until it is no longer ncclInProgress; returns that
// state (or the poll's own failure). A null communicator (an init that returned early) is success.
ncclResult_t wait_in_progress(ncclComm_t comm) {
  if (comm == nullptr) return ncclSuccess;
  ncclResult_t state = ncclInProgress;
  while (state == ncclInProgress) {
    const ncclResult_t rc = ncclCommGetAsyncError(comm, &state);
    if (rc != ncclSuccess) return rc;
    if (state == ncclInProgress) std::this_thread::yield();
  }
  return state;
}

namespace {

// The agreement step's host collectives without MPI: NCCL on a small device buffer, read back.
class NcclHostCommunicator final : public Communicator {
 public:
  explicit NcclHostCommunicator(NcclCommunicator& nccl) : nccl_(nccl) {}
  ~NcclHostCommunicator() override {
    if (buffer_ != nullptr) (void)cudaFree(buffer_);
  }
  int rank() const override { return nccl_.rank(); }
  int size() const override { return nccl_.size(); }
  std::string backend() const override { return "nccl-host"; }

  void all_gather(const void* send, std::size_t bytes, void* recv) override {
    if (bytes == 0) return;
    const auto size = static_cast<std::size_t>(nccl_.size());
    char* dev = reserve(bytes * (size + 1));
    cudaStream_t stream = nccl_.stream();
    SIMCLR_CHECK_CUDA(cudaMemcpyAsync(dev, send, bytes, cudaMemcpyHostToDevice, stream));
    nccl_.all_gather(dev, bytes, dev + bytes);
    SIMCLR_CHECK_CUDA(
        cudaMemcpyAsync(recv, dev + bytes, bytes * size, cudaMemcpyDeviceToHost, stream));
    SIMCLR_CHECK_CUDA(cudaStreamSynchronize(stream));
  }

  // Every rank's slice padded to the largest, then packed on the host.
  void all_gather_v(const void* send, std::size_t send_bytes, void* recv,
                    const std::vector<std::size_t>& recv_bytes) override {
    SIMCLR_ENFORCE(recv_bytes.size() == static_cast<std::size_t>(nccl_.size()), CommError,
                   "nccl host: all_gather_v needs one count per rank: ", recv_bytes.size(), " vs ",
                   nccl_.size());
    std::size_t widest = 0;
    for (std::size_t b : recv_bytes) widest = std::max(widest, b);
    if (widest == 0) return;
    std::vector<char> mine(widest, 0), all(widest * recv_bytes.size());
    if (send_bytes > 0) std::memcpy(mine.data(), send, std::min(send_bytes, widest));
    all_gather(mine.data(), widest, all.data());
    std::size_t at = 0;
    for (std::size_t r = 0; r < recv_bytes.size(); ++r) {
      if (recv_bytes[r] > 0)
        std::memcpy(static_cast<char*>(recv) + at, all.data() + r * widest, recv_bytes[r]);
      at += recv_bytes[r];
    }
  }

  void barrier() override {
    const char byte = 0;
    std::vector<char> all(static_cast<std::size_t>(nccl_.size()));
    all_gather(&byte, 1, all.data());
  }

 private:
  char* reserve(std::size_t bytes) {
    if (bytes > capacity_) {
      if (buffer_ != nullptr) SIMCLR_CHECK_CUDA(cudaFree(buffer_));
      buffer_ = nullptr;
      capacity_ = 0;
      const std::size_t want = std::max<std::size_t>(bytes, 4096);
      SIMCLR_CHECK_CUDA(cudaMalloc(&buffer_, want));
      capacity_ = want;
    }
    return static_cast<char*>(buffer_);
  }

  NcclCommunicator& nccl_;
  void* buffer_ = nullptr;
  std::size_t capacity_ = 0;
};

}  // namespace

#if defined(SIMCLR_NCCL_HAS_MPI) && SIMCLR_NCCL_HAS_MPI
NcclCommunicator::NcclCommunicator(MPI_Comm comm, cudaStream_t stream,
                                   MpiCommunicatorOptions options)
    : stream_(stream) {
  auto mpi = std::make_unique<MpiCommunicator>(comm, options);
  MpiCommunicator& host = *mpi;
  mpi_ = mpi.get();
  host_ = std::move(mpi);
  rank_ = host.rank();
  size_ = host.size();
  SIMCLR_CHECK_CUDA(cudaGetDevice(&device_));
  // The id travels over the host communicator; every rank learns whether rank 0 could make one, so
  // a failure there raises on every rank instead of leaving the others waiting in ncclCommInitRank.
  struct IdRecord {
    ncclUniqueId id;
    int status;
    char message[252];
  } record;
  std::memset(&record, 0, sizeof(record));
  if (rank_ == 0) {
    const ncclResult_t rc = ncclGetUniqueId(&record.id);
    if (rc != ncclSuccess) {
      record.status = static_cast<int>(rc);
      std::strncpy(record.message, ncclGetErrorString(rc), sizeof(record.message) - 1);
    }
  }
  std::vector<IdRecord> all(static_cast<std::size_t>(size_));
  host.all_gather(&record, sizeof(record), all.data());
  SIMCLR_ENFORCE(all[0].status == 0, CommError,
                 "ncclGetUniqueId failed on rank 0: ", all[0].message, " (rank ", rank_, ")");
  SIMCLR_CHECK_NCCL(ncclCommInitRank(&nccl_, size_, all[0].id, rank_), nullptr, rank_);
}

const MpiCommunicatorOptions& NcclCommunicator::options() const {
  static const MpiCommunicatorOptions defaults;
  return mpi_ != nullptr ? static_cast<const MpiCommunicator*>(mpi_)->options() : defaults;
}
#endif

NcclCommunicator::NcclCommunicator(const ncclUniqueId& id, int rank, int size, cudaStream_t stream)
    : stream_(stream), rank_(rank), size_(size) {
  SIMCLR_ENFORCE(size >= 1 && rank >= 0 && rank < size, ValueError, "NcclCommunicator: rank ", rank,
                 " of size ", size, "; need 0 <= rank < size");
  SIMCLR_CHECK_CUDA(cudaGetDevice(&device_));
  SIMCLR_CHECK_NCCL(ncclCommInitRank(&nccl_, size_, id, rank_), nullptr, rank_);
  host_ = std::make_unique<NcclHostCommunicator>(*this);
}

NcclCommunicator::NcclCommunicator(ncclComm_t comm, cudaStream_t stream)
    : nccl_(comm), stream_(stream), owned_(false) {
  SIMCLR_ENFORCE(comm != nullptr, ValueError, "NcclCommunicator: the ncclComm_t is null");
  SIMCLR_CHECK_NCCL(ncclCommUserRank(comm, &rank_), comm, rank_);
  SIMCLR_CHECK_NCCL(ncclCommCount(comm, &size_), comm, rank_);
  SIMCLR_CHECK_NCCL(ncclCommCuDevice(comm, &device_), comm, rank_);
  host_ = std::make_unique<NcclHostCommunicator>(*this);
}

NcclCommunicator::~NcclCommunicator() {
  host_.reset();  // its device buffer first
  if (nccl_ == nullptr || !owned_) return;
  // never throw from a destructor; after an asynchronous error ncclCommDestroy could hang
  ncclResult_t async = ncclSuccess;
  if (!failed_ && ncclCommGetAsyncError(nccl_, &async) != ncclSuccess) failed_ = true;
  if (failed_ || (async != ncclSuccess && async != ncclInProgress)) {
    (void)ncclCommAbort(nccl_);
  } else {
    (void)ncclCommDestroy(nccl_);
  }
}

void NcclCommunicator::check_async(const char* collective) const {
  // A non-blocking communicator still enqueuing earlier work is waited for, not used half-ready.
  const ncclResult_t async = wait_in_progress(nccl_);
  if (async != ncclSuccess) failed_ = true;
  SIMCLR_ENFORCE(async == ncclSuccess, CommError, "nccl: ", collective,
                 " on rank ", rank_,
                 ": communicator has an asynchronous error: ", ncclGetErrorString(async));
}

void NcclCommunicator::all_gather(const void* send, std::size_t bytes, void* recv) {
  check_async("all_gather");
  if (bytes == 0) return;
  SIMCLR_CHECK_NCCL(ncclAllGather(send, recv, bytes, ncclUint8, nccl_, stream_), nccl_, rank_);
}

void NcclCommunicator::all_gather_v(const void* send, std::size_t send_bytes, void* recv,
                                    const std::vector<std::size_t>& recv_bytes) {
  check_async("all_gather_v");
  SIMCLR_ENFORCE(recv_bytes.size() == static_cast<std::size_t>(size_), CommError,
                 "nccl: all_gather_v needs one count per rank: ", recv_bytes.size(), " vs ", size_);
  SIMCLR_ENFORCE(send_bytes == recv_bytes[static_cast<std::size_t>(rank_)], CommError,
                 "nccl: all_gather_v on rank ", rank_, ": sends ", send_bytes,
                 " bytes but the counts say ", recv_bytes[static_cast<std::size_t>(rank_)]);
  // One broadcast per rank that has data, rooted there, all in one group so NCCL runs them
  // together.
  SIMCLR_CHECK_NCCL(ncclGroupStart(), nccl_, rank_);
  std::size_t at = 0;
  bool grouped = true;
  try {
    for (int r = 0; r < size_; ++r) {
      const std::size_t bytes = recv_bytes[static_cast<std::size_t>(r)];
      char* dst = static_cast<char*>(recv) + at;
      at += bytes;
      if (bytes == 0) continue;
      SIMCLR_CHECK_NCCL(
          ncclBroadcast(r == rank_ ? send : dst, dst, bytes, ncclUint8, r, nccl_, stream_), nccl_,
          rank_);
    }
  } catch (...) {
    grouped = false;
    (void)ncclGroupEnd();
    throw;
  }
  if (grouped) SIMCLR_CHECK_NCCL(ncclGroupEnd(), nccl_, rank_);
}

void NcclCommunicator::barrier() {
  check_async("barrier");
  SIMCLR_CHECK_CUDA(cudaStreamSynchronize(stream_));
  host_->barrier();
}

// NCCL has no reduce-scatter of uneven segments. One ncclReduce per rank with a segment, rooted at
// that rank, in one group: a reduce-scatter of uneven counts that needs no padded copy and
// allocates nothing (so a device call with a caller workspace stays allocation-free). NCCL runs the
// group's reductions as one launch.
void NcclCommunicator::reduce_scatter_v(const void* send, void* recv,
                                        const std::vector<std::size_t>& counts, SumType dtype) {
  check_async("reduce_scatter_v");
  SIMCLR_ENFORCE(counts.size() == static_cast<std::size_t>(size_), CommError,
                 "nccl: reduce_scatter_v needs one count per rank: ", counts.size(), " vs ", size_);
  const std::size_t elem = dtype == SumType::kFloat64 ? sizeof(double) : sizeof(float);
  const ncclDataType_t type = dtype == SumType::kFloat64 ? ncclFloat64 : ncclFloat32;
  SIMCLR_CHECK_NCCL(ncclGroupStart(), nccl_, rank_);
  std::size_t at = 0;
  ncclResult_t rc = ncclSuccess;
  for (int r = 0; r < size_ && rc == ncclSuccess; ++r) {
    const std::size_t count = counts[static_cast<std::size_t>(r)];
    if (count > 0)
      rc = ncclReduce(static_cast<const char*>(send) + at * elem, r == rank_ ? recv : nullptr,
                      count, type, ncclSum, r, nccl_, stream_);
    at += count;
  }
  // The group is closed even after a failed enqueue, so NCCL's group state stays consistent.
  const ncclResult_t end = ncclGroupEnd();
  SIMCLR_CHECK_NCCL(rc, nccl_, rank_);
  SIMCLR_CHECK_NCCL(end, nccl_, rank_);
}

}  // namespace simclr

#pragma once
// The agreement step every distributed call starts with (docs/distributed.md): each rank
// contributes a small fixed-size record (rows, dimension, dtype, configuration, and the error its
// own validation raised, if any); after one all-gather every rank raises the same exception or
// none. Shared by the CPU front end (src/frontend/loss.cpp) and the device one
// (cuda/frontend/device_loss.cpp). Not public API.

#include <cstdint>
#include <string>
#include <vector>

#include "simclr/communicator.hpp"
#include "simclr/detail/check.hpp"
#include "simclr/types.hpp"

namespace simclr::detail {

struct AgreementRecord {
  std::int64_t rows;
  std::int64_t cols;
  std::int32_t dtype;
  std::int32_t reduction;
  double temperature;
  std::int64_t global_batch;  // kNoGlobalBatch, kInferGlobalBatch, or the count (>= 0)
  std::int32_t error_kind;          // ErrorKind
  std::int32_t schedule;            // Schedule: it decides which collectives follow
  std::int32_t gradient_reduction;  // GradientReduction
  std::int32_t negatives_scope;     // NegativesScope of the call's extra negatives
  std::int64_t negative_rows;       // K: this rank's extra negatives (0: none)
  char message[448];
};
static_assert(sizeof(AgreementRecord) == 512, "agreement record is 512 bytes");

constexpr std::int64_t kNoGlobalBatch = -2;
constexpr std::int64_t kInferGlobalBatch = -1;

// What an agreement record carries: no error, or the kind of exception every rank then raises.
enum ErrorKind : std::int32_t {
  kNoError = 0,
  kValueErrorKind = 1,   // ValueError
  kTypeErrorKind = 2,    // TypeError
  kDeviceErrorKind = 3,  // DeviceError (a CUDA or cuBLAS call, device memory)
  kOtherErrorKind = 4,   // simclr::Error: a failed internal check, std::bad_alloc, anything else
  kUnsupportedErrorKind = 5,  // UnsupportedError (what this build or call lacks)
};

// The kind of an exception, for a record: TypeError, ValueError, DeviceError, UnsupportedError.
ErrorKind error_kind_of(const Error& e);

// Throws the exception a kind names with `what` (ValueError for kNoError, which callers avoid).
[[noreturn]] void throw_error_kind(std::int32_t kind, const std::string& what);

// A zeroed record (no uninitialised padding goes over the wire).
AgreementRecord empty_record();
// A forward call's record.
AgreementRecord forward_record(std::int64_t rows, std::int64_t cols, std::int32_t dtype,
                               Reduction reduction, double temperature, std::int64_t global_batch,
                               Schedule schedule = Schedule::kAuto,
                               GradientReduction gradient_reduction = GradientReduction::kSum);

void set_error(AgreementRecord& record, ErrorKind kind, const std::string& what);

// Inside a catch handler: stores the exception being handled in the record, with its kind. A
// CommError is rethrown instead (the transport failed; the other ranks learn it from theirs).
void set_current_error(AgreementRecord& record);

// Runs `validate`; whatever it throws, except CommError, is stored in the record instead of
// propagating, so that this rank still takes part in the agreement gather and every rank raises
// the same exception. Without this a std::bad_alloc or a DeviceError on one rank would leave the
// others waiting in the gather.
template <class F>
void capture(AgreementRecord& record, F&& validate) {
  try {
    validate();
  } catch (...) {
    set_current_error(record);
  }
}

// The error of the lowest rank that has one, raised (with "(rank r)") on every rank as the type its
// kind names.
void raise_first_error(const std::vector<AgreementRecord>& all);

// Collective: gathers every rank's record and raises the first error of any rank.
std::vector<AgreementRecord> gather_records(Communicator& comm, const AgreementRecord& mine);

// After gather_records of forward records: the cross-rank checks (dtype, dimension, reduction,
// temperature, global batch size option, schedule, gradient reduction, negatives scope; `dtype_name` names a record's
// dtype) and the distribution rule (`options_name` names where the caller passes a global batch
// size and the schedule: "CallOptions", "DeviceCallOptions", "simclr_call_options"). Identical on
// every rank.
void check_forward_records(const std::vector<AgreementRecord>& all,
                           std::string (*dtype_name)(std::int32_t), Reduction configured,
                           const char* options_name);

std::string global_batch_string(std::int64_t global_batch);

}  // namespace simclr::detail

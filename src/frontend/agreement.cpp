#include "simclr/detail/agreement.hpp"

#include <algorithm>
#include <cstring>
#include <new>

namespace simclr::detail {

AgreementRecord empty_record() {
  AgreementRecord record;
  std::memset(&record, 0, sizeof(record));
  return record;
}

AgreementRecord forward_record(std::int64_t rows, std::int64_t cols, std::int32_t dtype,
                               Reduction reduction, double temperature, std::int64_t global_batch,
                               Schedule schedule, GradientReduction gradient_reduction) {
  AgreementRecord record = empty_record();
  record.rows = rows;
  record.cols = cols;
  record.dtype = dtype;
  record.reduction = static_cast<std::int32_t>(reduction);
  record.temperature = temperature;
  record.global_batch = global_batch;
  record.schedule = static_cast<std::int32_t>(schedule);
  record.gradient_reduction = static_cast<std::int32_t>(gradient_reduction);
  return record;
}

void set_error(AgreementRecord& record, ErrorKind kind, const std::string& what) {
  record.error_kind = kind;
  const std::size_t n = std::min(what.size(), sizeof(record.message) - 1);
  std::memcpy(record.message, what.data(), n);
  record.message[n] = '\0';
}

void set_current_error(AgreementRecord& record) {
  try {
    throw;
  } catch (const CommError&) {
    throw;
  } catch (const TypeError& e) {
    set_error(record, kTypeErrorKind, e.what());
  } catch (const ValueError& e) {
    set_error(record, kValueErrorKind, e.what());
  } catch (const DeviceError& e) {
    set_error(record, kDeviceErrorKind, e.what());
  } catch (const UnsupportedError& e) {
    set_error(record, kUnsupportedErrorKind, e.what());
  } catch (const Error& e) {
    set_error(record, kOtherErrorKind, e.what());
  } catch (const std::bad_alloc& e) {
    set_error(record, kOtherErrorKind, str_cat("out of host memory (", e.what(), ")"));
  } catch (const std::exception& e) {
    set_error(record, kOtherErrorKind, e.what());
  } catch (...) {
    set_error(record, kOtherErrorKind, "an exception that is not a std::exception");
  }
}

void raise_first_error(const std::vector<AgreementRecord>& all) {
  for (std::size_t r = 0; r < all.size(); ++r) {
    if (all[r].error_kind == kNoError) continue;
    // strnlen: a record from another rank is trusted to be ours, but never read past its end.
    const std::string message(all[r].message, strnlen(all[r].message, sizeof(all[r].message)));
    throw_error_kind(all[r].error_kind, str_cat(message, " (rank ", r, ")"));
  }
}

ErrorKind error_kind_of(const Error& e) {
  if (dynamic_cast<const TypeError*>(&e) != nullptr) return kTypeErrorKind;
  if (dynamic_cast<const ValueError*>(&e) != nullptr) return kValueErrorKind;
  if (dynamic_cast<const DeviceError*>(&e) != nullptr) return kDeviceErrorKind;
  if (dynamic_cast<const UnsupportedError*>(&e) != nullptr) return kUnsupportedErrorKind;
  return kOtherErrorKind;
}

void throw_error_kind(std::int32_t kind, const std::string& what) {
  switch (kind) {
    case kTypeErrorKind:
      throw TypeError(what);
    case kDeviceErrorKind:
      throw DeviceError(what);
    case kUnsupportedErrorKind:
      throw UnsupportedError(what);
    case kOtherErrorKind:
      throw Error(what);
    default:
      throw ValueError(what);
  }
}

std::vector<AgreementRecord> gather_records(Communicator& comm, const AgreementRecord& mine) {
  std::vector<AgreementRecord> all(static_cast<std::size_t>(comm.size()));
  comm.all_gather(&mine, sizeof(mine), all.data());
  raise_first_error(all);
  return all;
}

std::string global_batch_string(std::int64_t global_batch) {
  if (global_batch == kNoGlobalBatch) return "none";
  if (global_batch == kInferGlobalBatch) return "infer";
  return std::to_string(global_batch);
}

void check_forward_records(const std::vector<AgreementRecord>& all,
                           std::string (*dtype_name)(std::int32_t), Reduction configured,
                           const char* options_name) {
  const AgreementRecord& a = all.at(0);
  for (std::size_t r = 1; r < all.size(); ++r) {
    const AgreementRecord& b = all[r];
    SIMCLR_ENFORCE(a.dtype == b.dtype, TypeError, "dtype differs across ranks: rank 0 has ",
                   dtype_name(a.dtype), ", rank ", r, " has ", dtype_name(b.dtype));
    SIMCLR_ENFORCE(a.cols == b.cols, ValueError,
                   "embedding dimension differs across ranks: rank 0 has ", a.cols, ", rank ", r,
                   " has ", b.cols);
    SIMCLR_ENFORCE(a.reduction == b.reduction, ValueError,
                   "reduction differs across ranks: rank 0 has ",
                   to_string(static_cast<Reduction>(a.reduction)), ", rank ", r, " has ",
                   to_string(static_cast<Reduction>(b.reduction)));
    SIMCLR_ENFORCE(a.temperature == b.temperature, ValueError,
                   "temperature differs across ranks: rank 0 has ", a.temperature, ", rank ", r,
                   " has ", b.temperature);
    SIMCLR_ENFORCE(a.global_batch == b.global_batch, ValueError,
                   "global batch size differs across ranks: rank 0 has ",
                   global_batch_string(a.global_batch), ", rank ", r, " has ",
                   global_batch_string(b.global_batch));
    // The schedule decides which collectives follow, so every rank must ask for the same one.
    SIMCLR_ENFORCE(a.schedule == b.schedule, ValueError, options_name,
                   " schedule differs between ranks: rank 0 asks for '",
                   to_string(static_cast<Schedule>(a.schedule)), "', rank ", r, " for '",
                   to_string(static_cast<Schedule>(b.schedule)), "'; pass the same on every rank");
    SIMCLR_ENFORCE(a.gradient_reduction == b.gradient_reduction, ValueError,
                   "gradient_reduction differs between ranks: rank 0 has '",
                   to_string(static_cast<GradientReduction>(a.gradient_reduction)), "', rank ", r,
                   " has '", to_string(static_cast<GradientReduction>(b.gradient_reduction)),
                   "'; pass the same on every rank");
    SIMCLR_ENFORCE(a.negatives_scope == b.negatives_scope, ValueError,
                   "negatives_scope differs between ranks: rank 0 has '",
                   to_string(static_cast<NegativesScope>(a.negatives_scope)), "', rank ", r,
                   " has '", to_string(static_cast<NegativesScope>(b.negatives_scope)),
                   "'; pass the same on every rank");
  }
  // The distribution rule (keras-loss-semantics.md): every rank holds the same records, so every
  // rank raises it.
  if (static_cast<Reduction>(a.reduction) == Reduction::kSumOverBatchSize &&
      a.global_batch == kNoGlobalBatch) {
    throw ValueError(
        str_cat("Please use simclr::Reduction::kSum or simclr::Reduction::kNone for loss reduction "
                "when losses are "
                "used through a simclr::Communicator (a distributed context), or pass a global "
                "batch size (",
                options_name,
                "::global_batch_size, a count or GlobalBatchSize::infer()) so that reduction '",
                to_string(configured), "' can divide by it"));
  }
}

}  // namespace simclr::detail

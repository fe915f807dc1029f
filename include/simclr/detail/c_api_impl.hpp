#pragma once
// What the C API's translation units share (src/c_api/c_api.cpp, src/c_api/c_api_mpi.cpp,
// src/c_api/c_api_cuda.cpp): the definitions of the opaque handles and the exception-to-status guard.
// Not public API, not installed.

#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <mutex>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

#include "simclr/c_api.h"
#include "simclr/communicator.hpp"
#include "simclr/detail/agreement.hpp"
#include "simclr/detail/check.hpp"
#include "simclr/errors.hpp"
#include "simclr/loss.hpp"

struct simclr_loss {
  explicit simclr_loss(simclr::SimCLRLoss l) : loss(std::move(l)) {}
  simclr::SimCLRLoss loss;
  // The device loss of the simclr_device_* calls (a simclr::cuda::DeviceSimCLRLoss, which keeps
  // cuBLAS handles), made on first use; type-erased so the core needs no CUDA. Its calls hold
  // device_mutex: one host thread at a time may use a device loss.
  std::shared_ptr<void> device_loss;
  std::mutex device_mutex;
};

struct simclr_comm {
  std::unique_ptr<simclr::Communicator> comm;
  // A simclr::cuda::DeviceCommunicator, whose collectives take device buffers: only the device
  // calls take it (the core cannot tell by dynamic_cast without the CUDA headers).
  bool device = false;
};

// A forward's saved state. The host and device forwards derive from it; the handle is deleted
// through this base.
struct simclr_forward_state {
  virtual ~simclr_forward_state() = default;
  simclr_dtype dtype = SIMCLR_FLOAT32;
  std::int32_t device = -1;
  std::vector<std::int64_t> rank_rows;
};

namespace simclr::detail {

using simclr::UnsupportedError;

// The thread's last error message (simclr_last_error()).
std::string& c_api_last_error();

// Runs f (returning void) and maps every exception to a status, storing its message.
template <class F>
simclr_status c_api_guard(F&& f) noexcept {
  try {
    f();
    return SIMCLR_OK;
  } catch (const ValueError& e) {
    c_api_last_error() = e.what();
    return SIMCLR_VALUE_ERROR;
  } catch (const TypeError& e) {
    c_api_last_error() = e.what();
    return SIMCLR_TYPE_ERROR;
  } catch (const CommError& e) {
    c_api_last_error() = e.what();
    return SIMCLR_COMM_ERROR;
  } catch (const DeviceError& e) {
    c_api_last_error() = e.what();
    return SIMCLR_DEVICE_ERROR;
  } catch (const UnsupportedError& e) {
    c_api_last_error() = e.what();
    return SIMCLR_UNSUPPORTED;
  } catch (const std::bad_alloc&) {
    c_api_last_error() = "out of host memory (std::bad_alloc)";
    return SIMCLR_INTERNAL_ERROR;
  } catch (const std::exception& e) {
    c_api_last_error() = e.what();
    return SIMCLR_INTERNAL_ERROR;
  } catch (...) {
    c_api_last_error() = "unknown exception";
    return SIMCLR_INTERNAL_ERROR;
  }
}

// The status a C-level argument check raises, thrown as the matching exception (the agreement
// record's kinds: one mapping from kinds to exceptions).
[[noreturn]] inline void c_api_fail(simclr_status status, const std::string& what) {
  throw_error_kind(status == SIMCLR_TYPE_ERROR     ? kTypeErrorKind
                   : status == SIMCLR_UNSUPPORTED  ? kUnsupportedErrorKind
                   : status == SIMCLR_DEVICE_ERROR ? kDeviceErrorKind
                                                   : kValueErrorKind,
                   what);
}

// The integer a C caller stored in an enum argument or field. Read through memcpy: C lets a caller
// store any int there, and loading a value outside the enumerators as the C++ enum type is
// undefined.
template <class E>
std::int64_t c_enum_value(const E& e) {
  std::underlying_type_t<E> raw;
  std::memcpy(&raw, &e, sizeof(raw));
  return static_cast<std::int64_t>(raw);
}

// The C reduction as the C++ one; ValueError for a value outside the enum.
Reduction c_api_reduction(const simclr_reduction& reduction, const char* where);
simclr_reduction c_api_reduction(Reduction reduction);

// A SIMCLR_SCHEDULE_* value as the Schedule; ValueError naming the choices otherwise.
inline Schedule c_schedule(std::int32_t schedule, const char* where) {
  if (schedule == SIMCLR_SCHEDULE_AUTO) return Schedule::kAuto;
  if (schedule == SIMCLR_SCHEDULE_OWN_ROWS) return Schedule::kOwnRows;
  if (schedule == SIMCLR_SCHEDULE_BALANCED) return Schedule::kBalanced;
  c_api_fail(SIMCLR_VALUE_ERROR, str_cat(where, ": schedule is ", schedule,
                                         "; pass SIMCLR_SCHEDULE_AUTO, SIMCLR_SCHEDULE_OWN_ROWS or "
                                         "SIMCLR_SCHEDULE_BALANCED"));
}

// A simclr_call_options global_batch_size as the option (NONE: no value); ValueError naming `where`
// for anything below NONE.
std::optional<GlobalBatchSize> c_global_batch(std::int64_t global_batch_size, const char* where);

// A SIMCLR_GRADIENT_* value; ValueError naming the choices otherwise.
GradientReduction c_gradient_reduction(std::int32_t gradient_reduction, const char* where);

// A SIMCLR_NEGATIVES_* value, as the agreement record carries it; ValueError naming the choices
// otherwise.
std::int32_t c_negatives_scope(std::int32_t scope, const char* where);

// Runs a call's C-level argument checks, after the front end's own rejection of its inputs
// (options->input_error) if any. Without a communicator an error propagates as it is; with one it
// is carried by the agreement gather the other ranks are entering (the forward's or the
// backward's), so every rank fails with the same status and message instead of the others waiting
// in a collective (a record that carries an error needs no other field). Collective when comm is set
// and a check fails.
void check_collectively(Communicator* comm, const simclr_call_options* options,
                        const std::function<void()>& checks);

}  // namespace simclr::detail

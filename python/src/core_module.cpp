// simclr_loss._core: the Python binding of the C API (include/simclr/c_api.h), and nothing else: no C++
// API, no math. Arrays cross without copies through nanobind's ndarray (numpy buffers and DLPack,
// such as CPU torch tensors); the GIL is released while the library computes or communicates, and
// taken back inside the communicator callbacks that call Python collectives (torch.distributed,
// mpi4py).

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "simclr/c_api.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

// Exception types of the module (subclasses of RuntimeError), created at import.
PyObject* comm_error_type = nullptr;
PyObject* device_error_type = nullptr;

[[noreturn]] void raise(PyObject* type, const std::string& message) {
  PyErr_SetString(type, message.c_str());
  throw nb::python_error();
}

// Raises the Python exception for a failed C API call. `cause` (a Python exception a communicator
// callback raised during the call) becomes the __cause__ of the CommError.
void check(simclr_status status, nb::object cause = nb::object()) {
  if (status == SIMCLR_OK) return;
  const std::string message = simclr_last_error();
  switch (status) {
    case SIMCLR_VALUE_ERROR:
      raise(PyExc_ValueError, message);
    case SIMCLR_TYPE_ERROR:
      raise(PyExc_TypeError, message);
    case SIMCLR_COMM_ERROR:
      if (cause.is_valid()) {
        nb::object exc = nb::steal(PyObject_CallFunction(comm_error_type, "s", message.c_str()));
        if (!exc.is_valid()) throw nb::python_error();
        PyException_SetCause(exc.ptr(), cause.release().ptr());  // steals the reference
        PyErr_SetObject(comm_error_type, exc.ptr());
        throw nb::python_error();
      }
      raise(comm_error_type, message);
    case SIMCLR_DEVICE_ERROR:
      raise(device_error_type, message);
    case SIMCLR_UNSUPPORTED:  // what this build or this call lacks (float16 on the host, a device)
      raise(PyExc_NotImplementedError, message);
    default:
      raise(PyExc_RuntimeError, message);
  }
}

std::string qualified_type_name(nb::handle type) {
  std::string module;
  if (nb::hasattr(type, "__module__"))
    module = nb::cast<std::string>(nb::str(type.attr("__module__")));
  std::string name = nb::cast<std::string>(nb::str(type.attr("__qualname__")));
  return module.empty() || module == "builtins" ? name : module + "." + name;
}

const char* dtype_name(simclr_dtype dtype) {
  return dtype == SIMCLR_FLOAT32 ? "float32" : "float64";
}

size_t dtype_size(simclr_dtype dtype) { return dtype == SIMCLR_FLOAT32 ? 4 : 8; }

nb::dlpack::dtype dlpack_of(simclr_dtype dtype) {
  return dtype == SIMCLR_FLOAT32 ? nb::dtype<float>() : nb::dtype<double>();
}

std::optional<simclr_dtype> simclr_dtype_of(nb::dlpack::dtype dtype) {
  if (dtype == nb::dtype<float>()) return SIMCLR_FLOAT32;
  if (dtype == nb::dtype<double>()) return SIMCLR_FLOAT64;
  return std::nullopt;
}

std::string describe_dtype(nb::dlpack::dtype dtype) {
  const char* kind = "?";
  switch (static_cast<nb::dlpack::dtype_code>(dtype.code)) {
    case nb::dlpack::dtype_code::Int:
      kind = "int";
      break;
    case nb::dlpack::dtype_code::UInt:
      kind = "uint";
      break;
    case nb::dlpack::dtype_code::Float:
      kind = "float";
      break;
    case nb::dlpack::dtype_code::Bfloat:
      kind = "bfloat";
      break;
    case nb::dlpack::dtype_code::Complex:
      kind = "complex";
      break;
    case nb::dlpack::dtype_code::Bool:
      kind = "bool";
      break;
    default:
      break;
  }
  return std::string(kind) + std::to_string(dtype.bits);
}

// A new numpy array of `dtype` that owns its (zeroed) memory.
nb::object new_array(simclr_dtype dtype, std::vector<size_t> shape, void** data) {
  size_t count = 1;
  for (size_t s : shape) count *= s;
  void* p = std::calloc(count == 0 ? 1 : count, dtype_size(dtype));
  if (!p) throw std::bad_alloc();
  nb::capsule owner(p, [](void* q) noexcept { std::free(q); });
  *data = p;
  return nb::cast(
      nb::ndarray<nb::numpy>(p, shape.size(), shape.data(), owner, nullptr, dlpack_of(dtype)));
}

// Copies a strided [rows, cols] matrix (strides in elements, any sign) into a dense one, or back.
void copy_strided(const char* src, int64_t src_s0, int64_t src_s1, char* dst, int64_t dst_s0,
                  int64_t dst_s1, int64_t rows, int64_t cols, size_t item) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j)
      std::memcpy(dst + (i * dst_s0 + j * dst_s1) * static_cast<int64_t>(item),
                  src + (i * src_s0 + j * src_s1) * static_cast<int64_t>(item), item);
}

// An argument the binding itself rejects. Raised only after the call was offered to the library, so
// that in a collective call the other ranks fail too instead of waiting (see forward()).
struct ArgError {
  PyObject* type = nullptr;
  std::string message;
  explicit operator bool() const { return type != nullptr; }
};

// A [rows, cols] array argument as a simclr_matrix: the caller's memory when its rows are dense
// (any row stride >= cols), otherwise a dense copy made once (kept alive by `keep`). Arrays the
// library reports on itself (device memory, float16, bfloat16) are passed to it as they are.
struct MatrixArg {
  simclr_matrix view{};
  nb::object keep;  // the array, or its copy
  nb::ndarray<nb::ro> array;
  ArgError error;
};

bool rows_dense(int64_t rows, int64_t cols, int64_t s0, int64_t s1) {
  return (cols <= 1 || s1 == 1) && (rows <= 1 || s0 >= cols);
}

MatrixArg matrix_arg(nb::handle obj, const char* what) {
  MatrixArg out;
  if (!nb::try_cast(obj, out.array, false)) {
    // An array whose elements cannot be handed over (numpy's object or string dtypes) names its
    // dtype; anything else its type. (A failed DLPack export may leave its exception set.)
    PyErr_Clear();
    std::string got = qualified_type_name(obj.type());
    if (PyObject* dtype = PyObject_GetAttrString(obj.ptr(), "dtype")) {
      nb::object d = nb::steal(dtype);
      got += " of dtype " + nb::cast<std::string>(nb::str(d));
    } else {
      PyErr_Clear();
    }
    out.error = {PyExc_TypeError, std::string(what) +
                                      " must be a 2-D array [n, d] of float32 or float64 (a numpy "
                                      "array, or an object with __dlpack__ such as a dense CPU "
                                      "torch tensor), got " +
                                      got};
    return out;
  }
  const auto& a = out.array;
  if (a.ndim() != 2) {
    std::string shape = "(";
    for (size_t i = 0; i < a.ndim(); ++i) shape += (i ? ", " : "") + std::to_string(a.shape(i));
    shape += a.ndim() == 1 ? ",)" : ")";
    out.error = {PyExc_ValueError, std::string(what) + " must be 2-D [n, d], got shape " + shape};
    return out;
  }
  const int64_t rows = static_cast<int64_t>(a.shape(0)), cols = static_cast<int64_t>(a.shape(1));
  out.view.rows = rows;
  out.view.cols = cols;
  out.view.row_stride = cols;
  out.view.device = a.device_type() == nb::device::cpu::value ? -1 : a.device_id();
  const auto dtype = simclr_dtype_of(a.dtype());
  const auto code = static_cast<nb::dlpack::dtype_code>(a.dtype().code);
  if (code == nb::dlpack::dtype_code::Float && a.dtype().bits == 16) {
    out.view.dtype = SIMCLR_FLOAT16;
  } else if (code == nb::dlpack::dtype_code::Bfloat && a.dtype().bits == 16) {
    out.view.dtype = SIMCLR_BFLOAT16;
  } else if (!dtype) {
    out.error = {PyExc_TypeError, std::string(what) + " has dtype " + describe_dtype(a.dtype()) +
                                      "; the loss takes float32 or float64 (cast it first)"};
    return out;
  } else {
    out.view.dtype = *dtype;
  }
  if (!dtype || out.view.device != -1) {
    // Only for the library's message (it reads nothing from such a view).
    out.view.data = const_cast<void*>(static_cast<const void*>(a.data()));
    out.keep = nb::borrow(obj);
  } else if (rows_dense(rows, cols, a.stride(0), a.stride(1))) {
    out.view.data = const_cast<void*>(static_cast<const void*>(a.data()));
    out.view.row_stride = rows <= 1 ? cols : a.stride(0);
    out.keep = nb::borrow(obj);
  } else {
    void* dense = nullptr;
    out.keep = new_array(*dtype, {static_cast<size_t>(rows), static_cast<size_t>(cols)}, &dense);
    copy_strided(static_cast<const char*>(a.data()), a.stride(0), a.stride(1),
                 static_cast<char*>(dense), cols, 1, rows, cols, dtype_size(*dtype));
    out.view.data = dense;
  }
  return out;
}

// ---- the loss ----

struct Loss {
  simclr_loss_t handle = nullptr;
  explicit Loss(simclr_loss_t h) : handle(h) {}
  Loss(const Loss&) = delete;
  Loss& operator=(const Loss&) = delete;
  ~Loss() { simclr_loss_destroy(handle); }

  std::string config_json() const {
    // The first call only measures (it fails for want of room; the length is written regardless).
    size_t length = 0;
    char probe[1];
    (void)simclr_loss_get_config(handle, probe, 0, &length);
    std::string text(length + 1, '\0');
    check(simclr_loss_get_config(handle, text.data(), text.size(), &length));
    text.resize(length);
    return text;
  }
};

// JSON string literal of s (for handing a Python string to the library's config parser).
std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

simclr_reduction parse_reduction(const std::string& key) {
  if (key == "auto") return SIMCLR_REDUCTION_AUTO;
  if (key == "none") return SIMCLR_REDUCTION_NONE;
  if (key == "sum") return SIMCLR_REDUCTION_SUM;
  if (key == "sum_over_batch_size") return SIMCLR_REDUCTION_SUM_OVER_BATCH_SIZE;
  // The library's config parser owns the message for a bad key (Keras's "Invalid Reduction Key").
  simclr_loss_t probe = nullptr;
  const simclr_status status =
      simclr_loss_from_config(("{\"reduction\": " + json_string(key) + "}").c_str(), &probe);
  simclr_loss_destroy(probe);
  check(status);
  raise(PyExc_ValueError, "Invalid Reduction Key: " + key + ".");
}

const char* reduction_name(simclr_reduction r) {
  switch (r) {
    case SIMCLR_REDUCTION_NONE:
      return "none";
    case SIMCLR_REDUCTION_SUM:
      return "sum";
    case SIMCLR_REDUCTION_SUM_OVER_BATCH_SIZE:
      return "sum_over_batch_size";
    default:
      return "auto";
  }
}

// ---- communicators ----

// What a callback communicator's C callbacks reach through `user`. Owned by the library's
// communicator, released (under the GIL) by simclr_comm_destroy.
struct CallbackState {
  int32_t rank = 0, size = 1;
  nb::object all_gather, all_gather_v, barrier;
  nb::object raised;  // the Python exception the last failing callback raised (for __cause__)
};

// Inside a catch block: records the Python exception a callback raised and writes "Type: text" for
// the library, which fails the call with SIMCLR_COMM_ERROR and that text.
int callback_failed(CallbackState* state, char* error, size_t capacity) {
  std::string text;
  try {
    throw;
  } catch (nb::python_error& e) {
    try {
      const std::string what = nb::cast<std::string>(nb::str(e.value()));
      text = qualified_type_name(e.type()) +
             (what.empty() ? " (raised without a message)" : ": " + what);
    } catch (...) {
      text = "an exception that could not be printed";
    }
    state->raised = nb::borrow(e.value());
  } catch (const std::exception& e) {
    text = std::string("C++ exception in a communicator callback: ") + e.what();
  } catch (...) {
    text = "unknown exception in a communicator callback";
  }
  if (capacity > 0) std::snprintf(error, capacity, "%s", text.c_str());
  return 1;
}

// A 1-D uint8 numpy view of the library's buffer, valid only during the callback.
nb::object byte_view(const void* data, size_t bytes, bool writable) {
  static unsigned char empty[1] = {0};
  const size_t shape[1] = {bytes};
  void* p = (bytes == 0 || data == nullptr) ? empty : const_cast<void*>(data);
  // rv_policy::reference: a view without an owner (the default would copy it).
  if (writable)
    return nb::cast(nb::ndarray<nb::numpy, uint8_t>(p, 1, shape, nb::handle()),
                    nb::rv_policy::reference);
  return nb::cast(nb::ndarray<nb::numpy, const uint8_t>(p, 1, shape, nb::handle()),
                  nb::rv_policy::reference);
}

// A gather callback fills recv with every rank's bytes, this rank's `send` among them, and returns
// None. The first byte of this rank's part of recv is made to differ from send's before the call,
// so a callback that returns without writing into recv (one that returns the gathered bytes
// instead, or forgets the copy) is reported as such, not left for the library to read stale bytes.
struct OwnPart {
  unsigned char* part = nullptr;  // this rank's bytes in recv
  const unsigned char* send = nullptr;
  size_t bytes = 0;

  OwnPart(void* recv, size_t offset, const void* sent, size_t n)
      : send(static_cast<const unsigned char*>(sent)), bytes(n) {
    auto* begin = static_cast<unsigned char*>(recv);
    const bool overlaps = send >= begin && send < begin + offset + n;  // an in-place gather
    if (n == 0 || recv == nullptr || send == nullptr || overlaps) return;
    part = begin + offset;
    part[0] = static_cast<unsigned char>(~send[0]);
  }
  bool written() const { return part == nullptr || std::memcmp(part, send, bytes) == 0; }
};

int not_written(const char* collective, nb::handle returned, size_t offset, size_t bytes,
                char* error, size_t capacity) {
  const std::string what =
      returned.is_none() ? std::string("None")
                         : "a " + qualified_type_name(returned.type()) + " (which is ignored)";
  const std::string text = std::string("the ") + collective + " callback returned " + what +
                           " without writing this rank's send into recv[" +
                           std::to_string(offset) + ":" + std::to_string(offset + bytes) +
                           "]; it must write every rank's bytes into recv, in rank order";
  if (capacity > 0) std::snprintf(error, capacity, "%s", text.c_str());
  return 1;
}

int cb_all_gather(void* user, const void* send, size_t bytes, void* recv, char* error,
                  size_t capacity) {
  nb::gil_scoped_acquire gil;
  auto* state = static_cast<CallbackState*>(user);
  try {
    const size_t offset = bytes * static_cast<size_t>(state->rank);
    const OwnPart own(recv, offset, send, bytes);
    nb::object returned =
        state->all_gather(byte_view(send, bytes, false),
                          byte_view(recv, bytes * static_cast<size_t>(state->size), true));
    if (!own.written()) return not_written("all_gather", returned, offset, bytes, error, capacity);
    return 0;
  } catch (...) {
    return callback_failed(state, error, capacity);
  }
}

int cb_all_gather_v(void* user, const void* send, size_t send_bytes, void* recv,
                    const size_t* recv_bytes, char* error, size_t capacity) {
  nb::gil_scoped_acquire gil;
  auto* state = static_cast<CallbackState*>(user);
  try {
    nb::list counts;
    size_t total = 0, offset = 0;
    for (int32_t r = 0; r < state->size; ++r) {
      counts.append(recv_bytes[r]);
      if (r < state->rank) offset += recv_bytes[r];
      total += recv_bytes[r];
    }
    const OwnPart own(recv, offset, send, send_bytes);
    nb::object returned = state->all_gather_v(byte_view(send, send_bytes, false),
                                              byte_view(recv, total, true), counts);
    if (!own.written())
      return not_written("all_gather_v", returned, offset, send_bytes, error, capacity);
    return 0;
  } catch (...) {
    return callback_failed(state, error, capacity);
  }
}

int cb_barrier(void* user, char* error, size_t capacity) {
  nb::gil_scoped_acquire gil;
  auto* state = static_cast<CallbackState*>(user);
  try {
    state->barrier();
    return 0;
  } catch (...) {
    return callback_failed(state, error, capacity);
  }
}

void cb_release(void* user) {
  nb::gil_scoped_acquire gil;
  delete static_cast<CallbackState*>(user);
}

struct Comm {
  simclr_comm_t handle = nullptr;
  std::string backend;
  CallbackState* callbacks = nullptr;  // owned by the handle; null for the MPI and single kinds
  Comm(simclr_comm_t h, std::string b, CallbackState* c)
      : handle(h), backend(std::move(b)), callbacks(c) {}
  Comm(const Comm&) = delete;
  Comm& operator=(const Comm&) = delete;
  ~Comm() { simclr_comm_destroy(handle); }

  // The exception a callback raised during the last call, taken (so it is reported once).
  nb::object take_raised() {
    if (!callbacks) return nb::object();
    nb::object r = std::move(callbacks->raised);
    callbacks->raised = nb::object();
    return r;
  }
};

Comm* comm_from_callbacks(int32_t rank, int32_t size, const std::string& backend,
                          nb::object all_gather, nb::object all_gather_v, nb::object barrier) {
  if (!PyCallable_Check(all_gather.ptr()) || !PyCallable_Check(all_gather_v.ptr()))
    raise(PyExc_TypeError, "all_gather and all_gather_v must be callables");
  if (!barrier.is_none() && !PyCallable_Check(barrier.ptr()))
    raise(PyExc_TypeError, "barrier must be a callable or None");
  auto* state = new CallbackState();
  state->rank = rank;
  state->size = size;
  state->all_gather = std::move(all_gather);
  state->all_gather_v = std::move(all_gather_v);
  if (!barrier.is_none()) state->barrier = std::move(barrier);
  simclr_comm_callbacks callbacks{};
  callbacks.user = state;
  callbacks.rank = rank;
  callbacks.size = size;
  callbacks.all_gather = cb_all_gather;
  callbacks.all_gather_v = cb_all_gather_v;
  callbacks.barrier = state->barrier.is_valid() ? cb_barrier : nullptr;
  callbacks.release = cb_release;
  simclr_comm_t handle = nullptr;
  const simclr_status status = simclr_comm_create_callbacks(&callbacks, backend.c_str(), &handle);
  if (status != SIMCLR_OK) {
    delete state;  // the library takes ownership only on success
    check(status);
  }
  return new Comm(handle, backend, state);
}

Comm* comm_mpi(int64_t fortran_handle, double timeout) {
#ifdef SIMCLR_PY_HAS_MPI
  simclr_comm_t handle = nullptr;
  simclr_status status;
  {
    nb::gil_scoped_release release;  // collective: MPI_Comm_dup
    status = simclr_comm_create_mpi(fortran_handle, timeout, &handle);
  }
  check(status);
  return new Comm(handle, "mpi", nullptr);
#else
  (void)fortran_handle;
  (void)timeout;
  raise(PyExc_RuntimeError,
        "simclr_loss._core was built without MPI (no MPI library was found when it was compiled); "
        "simclr_loss.comm.from_mpi4py(comm) uses mpi4py's own collectives instead, or reinstall the "
        "package where MPI is installed (Debian: libopenmpi-dev)");
#endif
}

Comm* comm_single() {
  simclr_comm_t handle = nullptr;
  check(simclr_comm_create_single(&handle));
  return new Comm(handle, "single", nullptr);
}

// ---- one call ----

struct Forward {
  simclr_forward_t handle = nullptr;
  nb::object loss, comm;        // kept alive: the backward uses both
  nb::object za_keep, zb_keep;  // the inputs (or their dense copies) the saved state may read
  simclr_dtype dtype = SIMCLR_FLOAT32;
  int64_t cols = 0;
  simclr_forward_info info{};
  nb::object values, per_example;
  std::vector<int64_t> rank_rows;
  bool temperature_gradient = false;  // the forward asked for dJ/dT

  Forward() = default;
  Forward(const Forward&) = delete;
  Forward& operator=(const Forward&) = delete;
  ~Forward() { simclr_forward_destroy(handle); }

  Comm* comm_ptr() const {
    return comm.is_valid() && !comm.is_none() ? nb::cast<Comm*>(comm) : nullptr;
  }
};

// Keras sample_weight as the C API's view (float64, ndim 0-2, C order). A weight of higher rank is
// passed on with its rank for the library to reject.
struct WeightArg {
  simclr_weight view{};
  nb::ndarray<nb::ro, double, nb::c_contig, nb::device::cpu> array;
  bool given = false;
  ArgError error;
};

WeightArg weight_arg(nb::handle obj) {
  WeightArg out;
  if (obj.is_none()) return out;
  out.given = true;
  if (!nb::try_cast(obj, out.array, true)) {
    out.error = {PyExc_TypeError,
                 "sample_weight must be None or a float64 host array of ndim 0, "
                 "1 or 2, got " +
                     qualified_type_name(obj.type())};
    return out;
  }
  const auto& a = out.array;
  out.view.values = a.data();
  out.view.ndim = static_cast<int32_t>(a.ndim());
  for (size_t i = 0; i < a.ndim() && i < 2; ++i)
    out.view.shape[i] = static_cast<int64_t>(a.shape(i));
  return out;
}

// The status of an input error a front end found itself: TypeError, ValueError or
// NotImplementedError (a subclass of one of them counts as it).
simclr_status input_error_status(nb::handle type) {
  if (PyType_Check(type.ptr())) {
    auto* t = reinterpret_cast<PyTypeObject*>(type.ptr());
    if (PyType_IsSubtype(t, reinterpret_cast<PyTypeObject*>(PyExc_TypeError))) return SIMCLR_TYPE_ERROR;
    if (PyType_IsSubtype(t, reinterpret_cast<PyTypeObject*>(PyExc_ValueError)))
      return SIMCLR_VALUE_ERROR;
    if (PyType_IsSubtype(t, reinterpret_cast<PyTypeObject*>(PyExc_NotImplementedError)))
      return SIMCLR_UNSUPPORTED;
  }
  raise(PyExc_TypeError,
        "input_error must be None or (TypeError, ValueError or NotImplementedError, message), got "
        "a kind of " +
            qualified_type_name(type.type()) + " " + nb::cast<std::string>(nb::repr(type)));
}

// forward(): a call whose input this binding or its front end rejected (`status`, `message`),
// handed to the library, which fails it: at once for a local call, and for a collective one on
// every rank alike after the agreement step (the message naming this rank), so that no other rank
// is left waiting.
[[noreturn]] void forward_rejected(const Loss& loss, Comm* comm, simclr_status status,
                                   const std::string& message, int64_t global_batch_size,
                                   int32_t threads, int32_t gradient_reduction) {
  simclr_call_options options;
  simclr_call_options_init(&options);
  options.comm = comm ? comm->handle : nullptr;
  options.global_batch_size = global_batch_size;
  options.threads = threads;
  options.gradient_reduction = gradient_reduction;
  options.input_error = status;
  options.input_error_message = message.c_str();
  simclr_status got;
  {
    nb::gil_scoped_release release;
    got = simclr_forward(loss.handle, nullptr, nullptr, nullptr, &options, nullptr, nullptr,
                         nullptr, nullptr);
  }
  check(got, comm ? comm->take_raised() : nb::object());
  raise(PyExc_RuntimeError, "simclr_forward accepted a call with an input error: " + message);
}

// An input_error argument, (TypeError, ValueError or NotImplementedError, message), as the C API's
// status and message.
std::pair<simclr_status, std::string> input_error_arg(nb::handle input_error) {
  nb::tuple pair;
  if (!nb::try_cast(input_error, pair) || pair.size() != 2 || !nb::isinstance<nb::str>(pair[1]))
    raise(PyExc_TypeError,
          "input_error must be None or (TypeError, ValueError or NotImplementedError, message), "
          "got " +
              qualified_type_name(input_error.type()));
  return {input_error_status(pair[0]), nb::cast<std::string>(pair[1])};
}

// Loss.record_call: this rank's agreement record from shapes alone (simclr_record_call), as bytes.
nb::bytes record_call(const Loss& loss, int64_t rows, int64_t cols, int32_t dtype,
                      int64_t global_batch_size, int32_t gradient_reduction,
                      nb::object input_error) {
  simclr_call_options options;
  simclr_call_options_init(&options);
  options.global_batch_size = global_batch_size;
  options.gradient_reduction = gradient_reduction;
  std::string message;
  if (!input_error.is_none()) {
    const auto [status, text] = input_error_arg(input_error);
    options.input_error = status;
    message = text;
    options.input_error_message = message.c_str();
  }
  std::string record(SIMCLR_RECORD_BYTES, '\0');
  check(simclr_record_call(loss.handle, rows, cols, static_cast<simclr_dtype>(dtype), &options,
                           record.data()));
  return nb::bytes(record.data(), record.size());
}

// agree(): every rank's records gathered (bytes, rank order) -> every rank's rows, or the library's
// exception (the first failing rank's, naming it) on every rank (simclr_step_agree).
std::vector<int64_t> agree(const Loss& loss, nb::bytes records) {
  const size_t bytes = records.size();
  if (bytes == 0 || bytes % SIMCLR_RECORD_BYTES != 0)
    raise(PyExc_ValueError, "agree: records must be a multiple of RECORD_BYTES (" +
                                std::to_string(SIMCLR_RECORD_BYTES) + "), got " +
                                std::to_string(bytes) + " bytes");
  const auto ranks = static_cast<int32_t>(bytes / SIMCLR_RECORD_BYTES);
  std::vector<int64_t> rows(static_cast<size_t>(ranks));
  check(simclr_step_agree(loss.handle, records.c_str(), ranks, rows.data()));
  return rows;
}

Forward* forward(nb::object loss_obj, nb::handle za, nb::handle zb, nb::handle weight,
                 nb::object comm_obj, int64_t global_batch_size, int32_t threads,
                 int32_t gradient_reduction, nb::object input_error, nb::object temperature,
                 bool temperature_gradient, nb::handle negatives, int32_t negatives_scope) {
  Loss& loss = nb::cast<Loss&>(loss_obj);
  Comm* comm = comm_obj.is_none() ? nullptr : nb::cast<Comm*>(comm_obj);
  if (!input_error.is_none()) {
    const auto [status, text] = input_error_arg(input_error);
    forward_rejected(loss, comm, status, text, global_batch_size, threads, gradient_reduction);
  }
  MatrixArg a = matrix_arg(za, "za"), b = matrix_arg(zb, "zb");
  WeightArg w = weight_arg(weight);
  // Extra negatives: a view of the caller's array (or a dense copy) for this call only; the
  // library copies their unit rows into its own state, so nothing of them outlives the forward.
  MatrixArg k;
  const bool with_negatives = !negatives.is_none();
  if (with_negatives) k = matrix_arg(negatives, "negatives");
  for (const ArgError* e : {&a.error, &b.error, &w.error, &k.error}) {
    if (!*e) continue;
    forward_rejected(loss, comm, input_error_status(e->type), e->message, global_batch_size,
                     threads, gradient_reduction);
  }

  simclr_call_options options;
  simclr_call_options_init(&options);
  options.comm = comm ? comm->handle : nullptr;
  options.global_batch_size = global_batch_size;
  options.threads = threads;
  options.gradient_reduction = gradient_reduction;
  if (!temperature.is_none()) {
    // A Python number; its value is the library's to check (finite, > 0).
    options.use_temperature = 1;
    options.temperature = nb::cast<double>(temperature);
  }
  options.temperature_gradient = temperature_gradient ? 1 : 0;
  // The scope's value is the library's to check (on every rank alike).
  options.negatives = with_negatives ? &k.view : nullptr;
  options.negatives_scope = negatives_scope;

  auto fwd = std::make_unique<Forward>();
  fwd->temperature_gradient = temperature_gradient;
  fwd->dtype = a.view.dtype;
  fwd->cols = a.view.cols;
  const int64_t n = a.view.rows;
  // The outputs are allocated before the call (their size cannot depend on a failure); the library
  // writes them only on success. A dtype mismatch between za and zb is the library's to report.
  void* values = nullptr;
  void* per_example = nullptr;
  nb::object values_obj, per_example_obj;
  // reduction none gives [n] values; the others [1]. Which one is known from the config only, so
  // allocate [n] (>= 1) and trim afterwards.
  const size_t vcount = static_cast<size_t>(n > 1 ? n : 1);
  values_obj = new_array(a.view.dtype, {vcount}, &values);
  per_example_obj = new_array(a.view.dtype, {static_cast<size_t>(n)}, &per_example);

  simclr_status status;
  {
    nb::gil_scoped_release release;
    status = simclr_forward(loss.handle, &a.view, &b.view, w.given ? &w.view : nullptr, &options,
                            values, per_example, &fwd->info, &fwd->handle);
  }
  check(status, comm ? comm->take_raised() : nb::object());

  fwd->loss = std::move(loss_obj);
  fwd->comm = std::move(comm_obj);
  fwd->za_keep = std::move(a.keep);
  fwd->zb_keep = std::move(b.keep);
  const bool none = fwd->info.reduction == SIMCLR_REDUCTION_NONE;
  const size_t kept = none ? static_cast<size_t>(n) : 1;
  fwd->values = values_obj.attr("__getitem__")(
      nb::steal(PySlice_New(nullptr, nb::int_(kept).ptr(), nullptr)));
  fwd->per_example = std::move(per_example_obj);
  const int32_t ranks = simclr_forward_rank_rows(fwd->handle, nullptr, 0);
  fwd->rank_rows.resize(static_cast<size_t>(ranks > 0 ? ranks : 0));
  if (ranks > 0) simclr_forward_rank_rows(fwd->handle, fwd->rank_rows.data(), ranks);
  return fwd.release();
}

// The upstream gradient as `count` values of the forward's dtype.
std::vector<char> upstream_arg(nb::handle obj, simclr_dtype dtype, int64_t* count) {
  std::vector<double> vals;
  nb::ndarray<nb::ro, nb::device::cpu> array;
  if (PyFloat_Check(obj.ptr()) || PyLong_Check(obj.ptr())) {
    vals.push_back(nb::cast<double>(obj));
  } else if (nb::try_cast(obj, array, false)) {
    if (array.ndim() > 1)
      raise(PyExc_ValueError, "upstream must be a scalar or a 1-D array [n], got ndim " +
                                  std::to_string(array.ndim()));
    const auto dt = simclr_dtype_of(array.dtype());
    if (!dt)
      raise(PyExc_TypeError,
            "upstream has dtype " + describe_dtype(array.dtype()) + "; give float32 or float64");
    const int64_t len = array.ndim() == 0 ? 1 : static_cast<int64_t>(array.shape(0));
    const int64_t stride = array.ndim() == 0 ? 0 : array.stride(0);
    for (int64_t i = 0; i < len; ++i) {
      if (*dt == SIMCLR_FLOAT32)
        vals.push_back(static_cast<const float*>(array.data())[i * stride]);
      else
        vals.push_back(static_cast<const double*>(array.data())[i * stride]);
    }
  } else {
    const double v = PyFloat_AsDouble(obj.ptr());
    if (v == -1.0 && PyErr_Occurred()) {
      PyErr_Clear();
      raise(PyExc_TypeError, "upstream must be a number or a 1-D float array, got " +
                                 qualified_type_name(obj.type()));
    }
    vals.push_back(v);
  }
  *count = static_cast<int64_t>(vals.size());
  std::vector<char> out(vals.size() * dtype_size(dtype) + 1);
  for (size_t i = 0; i < vals.size(); ++i) {
    if (dtype == SIMCLR_FLOAT32) {
      const float f = static_cast<float>(vals[i]);
      std::memcpy(out.data() + i * 4, &f, 4);
    } else {
      std::memcpy(out.data() + i * 8, &vals[i], 8);
    }
  }
  return out;
}

// A gradient output: the caller's writable [n, d] array of the forward's dtype (written in place,
// through a dense temporary when its rows are not dense), or a new numpy array. A rejected array is
// replaced by a temporary so the (collective) backward still runs on this rank; the error is raised
// after it.
struct GradArg {
  simclr_matrix view{};
  nb::object result;
  nb::ndarray<nb::device::cpu> target;  // set when the result is the caller's strided array
  nb::object scratch;
  ArgError error;
};

GradArg grad_arg(nb::handle obj, const char* what, simclr_dtype dtype, int64_t rows, int64_t cols) {
  GradArg g;
  g.view.rows = rows;
  g.view.cols = cols;
  g.view.dtype = dtype;
  g.view.device = -1;
  g.view.row_stride = cols;
  const std::vector<size_t> shape{static_cast<size_t>(rows), static_cast<size_t>(cols)};
  if (obj.is_none()) {
    g.result = new_array(dtype, shape, &g.view.data);
    return g;
  }
  nb::ndarray<nb::device::cpu> a;
  if (!nb::try_cast(obj, a, false)) {
    g.error = {PyExc_TypeError, std::string(what) +
                                    " must be a writable host array [n, d] "
                                    "(numpy, or DLPack such as a CPU torch tensor), got " +
                                    qualified_type_name(obj.type())};
  } else if (a.ndim() != 2 || static_cast<int64_t>(a.shape(0)) != rows ||
             static_cast<int64_t>(a.shape(1)) != cols) {
    g.error = {PyExc_ValueError, std::string(what) + " must have the forward's shape [" +
                                     std::to_string(rows) + ", " + std::to_string(cols) + "]"};
  } else if (a.dtype() != dlpack_of(dtype)) {
    g.error = {PyExc_TypeError, std::string(what) + " has dtype " + describe_dtype(a.dtype()) +
                                    " but the forward's input was " + dtype_name(dtype)};
  }
  if (g.error) {
    g.scratch = new_array(dtype, shape, &g.view.data);
    return g;
  }
  g.result = nb::borrow(obj);
  if (rows_dense(rows, cols, a.stride(0), a.stride(1))) {
    g.view.data = a.data();
    g.view.row_stride = rows <= 1 ? cols : a.stride(0);
  } else {
    g.scratch = new_array(dtype, shape, &g.view.data);
    g.target = a;
  }
  return g;
}

void grad_finish(GradArg& g) {
  if (!g.target.is_valid()) return;
  copy_strided(static_cast<const char*>(g.view.data), g.view.cols, 1,
               static_cast<char*>(g.target.data()), g.target.stride(0), g.target.stride(1),
               g.view.rows, g.view.cols, dtype_size(g.view.dtype));
}

std::tuple<nb::object, nb::object, nb::object> backward_with_temperature(Forward& fwd,
                                                                        nb::handle upstream,
                                                                        nb::handle grad_a,
                                                                        nb::handle grad_b) {
  int64_t count = 0;
  const std::vector<char> up = upstream_arg(upstream, fwd.dtype, &count);
  GradArg ga = grad_arg(grad_a, "grad_a", fwd.dtype, fwd.info.rows, fwd.cols);
  GradArg gb = grad_arg(grad_b, "grad_b", fwd.dtype, fwd.info.rows, fwd.cols);
  Loss& loss = nb::cast<Loss&>(fwd.loss);
  Comm* comm = fwd.comm_ptr();
  simclr_status status;
  double gt64 = 0;
  float gt32 = 0;
  void* gt = !fwd.temperature_gradient ? nullptr
             : fwd.dtype == SIMCLR_FLOAT32 ? static_cast<void*>(&gt32)
                                           : static_cast<void*>(&gt64);
  {
    nb::gil_scoped_release release;
    status = simclr_backward_temperature(loss.handle, fwd.handle, up.data(), count, &ga.view,
                                         &gb.view, gt);
  }
  check(status, comm ? comm->take_raised() : nb::object());
  for (const ArgError* e : {&ga.error, &gb.error})
    if (*e) raise(e->type, e->message);
  grad_finish(ga);
  grad_finish(gb);
  nb::object grad_t = nb::none();
  if (gt != nullptr)
    grad_t = nb::float_(fwd.dtype == SIMCLR_FLOAT32 ? static_cast<double>(gt32) : gt64);
  return {ga.result, gb.result, grad_t};
}

std::tuple<nb::object, nb::object> backward(Forward& fwd, nb::handle upstream, nb::handle grad_a,
                                            nb::handle grad_b) {
  auto [ga, gb, gt] = backward_with_temperature(fwd, upstream, grad_a, grad_b);
  return {ga, gb};
}

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "The SimCLR loss library's C API for Python (used by the simclr package).";
  // Objects still referenced at interpreter exit (a module-level loss, a torch autograd graph that
  // holds a Forward and is torn down after this module) are not leaks; without this nanobind prints
  // a "leaked instances" report on every such exit.
  nb::set_leak_warnings(false);

  comm_error_type = PyErr_NewExceptionWithDoc(
      "simclr_loss.CommError",
      "A collective failed or timed out (MPI, or a communicator callback that raised).",
      PyExc_RuntimeError, nullptr);
  device_error_type =
      PyErr_NewExceptionWithDoc("simclr_loss.DeviceError", "A CUDA, cuBLAS or device memory failure.",
                                PyExc_RuntimeError, nullptr);
  m.attr("CommError") = nb::handle(comm_error_type);
  m.attr("DeviceError") = nb::handle(device_error_type);

  // The C API's codes, for the front ends' argument parsing (simclr_loss/_args.py) and the FFI and op
  // front ends' attributes, so that no front end copies them.
  m.attr("REDUCTION_AUTO") = static_cast<int>(SIMCLR_REDUCTION_AUTO);
  m.attr("REDUCTION_NONE") = static_cast<int>(SIMCLR_REDUCTION_NONE);
  m.attr("REDUCTION_SUM") = static_cast<int>(SIMCLR_REDUCTION_SUM);
  m.attr("REDUCTION_SUM_OVER_BATCH_SIZE") = static_cast<int>(SIMCLR_REDUCTION_SUM_OVER_BATCH_SIZE);
  nb::dict reductions;
  for (simclr_reduction r : {SIMCLR_REDUCTION_AUTO, SIMCLR_REDUCTION_NONE, SIMCLR_REDUCTION_SUM,
                             SIMCLR_REDUCTION_SUM_OVER_BATCH_SIZE})
    reductions[reduction_name(r)] = static_cast<int>(r);
  m.attr("REDUCTIONS") = reductions;
  m.attr("GRADIENT_SUM") = SIMCLR_GRADIENT_SUM;
  m.attr("GRADIENT_MEAN") = SIMCLR_GRADIENT_MEAN;
  m.attr("GLOBAL_BATCH_NONE") = static_cast<int64_t>(SIMCLR_GLOBAL_BATCH_NONE);
  m.attr("GLOBAL_BATCH_INFER") = static_cast<int64_t>(SIMCLR_GLOBAL_BATCH_INFER);
  m.attr("RECORD_BYTES") = SIMCLR_RECORD_BYTES;
  m.attr("NEGATIVES_LOCAL") = SIMCLR_NEGATIVES_LOCAL;
  m.attr("NEGATIVES_GLOBAL") = SIMCLR_NEGATIVES_GLOBAL;
  m.attr("FLOAT32") = static_cast<int>(SIMCLR_FLOAT32);
  m.attr("FLOAT64") = static_cast<int>(SIMCLR_FLOAT64);
  m.attr("FLOAT16") = static_cast<int>(SIMCLR_FLOAT16);
  m.attr("BFLOAT16") = static_cast<int>(SIMCLR_BFLOAT16);

  m.def(
      "check_shapes",
      [](const std::vector<int64_t>& za, const std::vector<int64_t>& zb,
         const std::optional<std::vector<int64_t>>& weight) {
        check(simclr_check_shapes(za.data(), static_cast<int32_t>(za.size()), zb.data(),
                                  static_cast<int32_t>(zb.size()),
                                  weight ? weight->data() : nullptr,
                                  weight ? static_cast<int32_t>(weight->size()) : -1));
      },
      "za"_a, "zb"_a, "weight"_a = nb::none(),
      "The library's checks of a call's shapes (2-D views alike, the sample_weight rules; weight "
      "None: no weight): its ValueError, with the message a call would give, for front ends that "
      "know the shapes before the data.");
  m.def(
      "check_negatives",
      [](const std::vector<int64_t>& shape, const std::string& dtype, int negatives_scope,
         int64_t dim, const std::string& views_dtype) {
        auto code = [](const std::string& name) {
          return static_cast<simclr_dtype>(name == "float32"    ? SIMCLR_FLOAT32
                                           : name == "float64"  ? SIMCLR_FLOAT64
                                           : name == "float16"  ? SIMCLR_FLOAT16
                                           : name == "bfloat16" ? SIMCLR_BFLOAT16
                                                                : 0);
        };
        check(simclr_check_negatives(shape.data(), static_cast<int32_t>(shape.size()), code(dtype),
                                     negatives_scope, dim, code(views_dtype)));
      },
      "shape"_a, "dtype"_a, "negatives_scope"_a, "dim"_a, "views_dtype"_a,
      "The library's checks of extra negatives from their shape and dtype name (a [K, d] matrix, "
      "the scope code, and when K > 0 the views' dtype and width): its TypeError or ValueError, "
      "with the message a call would give, for front ends that know them before the data.");
  m.def(
      "reduction_code",
      [](const std::string& key) { return static_cast<int>(parse_reduction(key)); }, "key"_a,
      "The C API's code of a Keras reduction key; the library's ValueError (\"Invalid Reduction "
      "Key: ...\") for any other.");
  m.def(
      "version", [] { return std::string(simclr_version()); },
      "The library's version (the CMake project version).");
  m.def(
      "has_mpi",
      [] {
#ifdef SIMCLR_PY_HAS_MPI
        return true;
#else
        return false;
#endif
      },
      "Whether this build has the MPI communicator (Comm.mpi).");

  nb::class_<Loss>(m, "Loss", "TensorFlow Similarity's SimCLRLoss (the C API's loss handle).")
      .def(
          "__init__",
          [](Loss* self, double temperature, const std::string& reduction,
             std::optional<std::string> name) {
            const simclr_reduction r = parse_reduction(reduction);
            simclr_loss_t handle = nullptr;
            check(simclr_loss_create(temperature, r, name ? name->c_str() : nullptr, &handle));
            new (self) Loss(handle);
          },
          "temperature"_a = 0.05, "reduction"_a = "auto", "name"_a = nb::none())
      .def_static(
          "from_config",
          [](const std::string& json) {
            simclr_loss_t handle = nullptr;
            check(simclr_loss_from_config(json.c_str(), &handle));
            return new Loss(handle);
          },
          "json_text"_a, nb::rv_policy::take_ownership,
          "From get_config() JSON text, or the Keras wrapper {\"class_name\": ..., \"config\": "
          "...}.")
      .def("get_config_json", &Loss::config_json,
           "get_config() as JSON text, keys in TF Similarity's order.")
      .def("record_call", &record_call, "rows"_a, "cols"_a, "dtype"_a,
           "global_batch_size"_a = SIMCLR_GLOBAL_BATCH_NONE,
           "gradient_reduction"_a = SIMCLR_GRADIENT_SUM, "input_error"_a = nb::none(),
           "This rank's agreement record (RECORD_BYTES bytes) for a call of rows x cols of the "
           "C API dtype code, from shapes alone (simclr_record_call); input_error: None or "
           "(TypeError, ValueError or NotImplementedError, message), carried to every rank.")
      .def("agree", &agree, "records"_a,
           "Every rank's records, gathered in rank order: every rank's rows, or the library's "
           "exception (the first failing rank's, naming it, or a mismatch between ranks), the same "
           "on every rank (simclr_step_agree).")
      .def("forward", &forward, "za"_a.none(), "zb"_a.none(), "weight"_a = nb::none(),
           "comm"_a = nb::none(), "global_batch_size"_a = SIMCLR_GLOBAL_BATCH_NONE,
           "threads"_a = 0, "gradient_reduction"_a = SIMCLR_GRADIENT_SUM,
           "input_error"_a = nb::none(), "temperature"_a = nb::none(),
           "temperature_gradient"_a = false, "negatives"_a = nb::none(),
           "negatives_scope"_a = SIMCLR_NEGATIVES_LOCAL,
           "Forward on host arrays za, zb [n, d] (float32 or float64, the same). weight: None or "
           "float64 ndim 0-2. comm: a Comm (collective). global_batch_size: GLOBAL_BATCH_NONE, "
           "GLOBAL_BATCH_INFER or >= 0. gradient_reduction: GRADIENT_SUM or GRADIENT_MEAN (a "
           "distributed call's backward times the ranks; every rank the same). input_error: None, "
           "or (TypeError, ValueError or NotImplementedError, message) for an input the caller "
           "rejected itself: the call then fails with it, on every rank of comm (za, zb, weight "
           "are not read). temperature: None (the loss's) or this call's own (a number; every rank "
           "the same). temperature_gradient: the backward also gives dJ/dT "
           "(Forward.backward_with_temperature). negatives: None, or extra negatives [K, d] (a host "
           "array of the views' dtype, K >= 0; L2-normalised by the library, candidates only, no "
           "gradient; read during this call only). negatives_scope: NEGATIVES_LOCAL (each rank's "
           "anchors see its own) or NEGATIVES_GLOBAL (every rank's, gathered). Returns a Forward.");

  nb::class_<Comm>(m, "Comm", nb::is_weak_referenceable(),
                   "A communicator (the C API's handle): callbacks, MPI or one rank.")
      .def_static("from_callbacks", &comm_from_callbacks, "rank"_a, "size"_a, "backend"_a,
                  "all_gather"_a.none(), "all_gather_v"_a.none(), "barrier"_a = nb::none(),
                  nb::rv_policy::take_ownership,
                  "all_gather(send: uint8[bytes], recv: uint8[size*bytes]) fills recv; "
                  "all_gather_v(send: uint8[send_bytes], recv: uint8[sum], recv_bytes: list[int]); "
                  "barrier() or None. The arrays are views valid only during the call.")
      .def_static("mpi", &comm_mpi, "fortran_handle"_a, "timeout"_a = 0.0,
                  nb::rv_policy::take_ownership,
                  "An MPI communicator over a duplicate of the caller's (mpi4py's comm.py2f()); "
                  "collective. timeout > 0 bounds every collective, in seconds.")
      .def_static("single", &comm_single, nb::rv_policy::take_ownership,
                  "A communicator of one rank.")
      .def_prop_ro("rank", [](const Comm& c) { return simclr_comm_rank(c.handle); })
      .def_prop_ro("size", [](const Comm& c) { return simclr_comm_size(c.handle); })
      .def_prop_ro("backend", [](const Comm& c) { return c.backend; })
      .def("__repr__", [](const Comm& c) {
        return "<simclr_loss._core.Comm backend=" + c.backend +
               " rank=" + std::to_string(simclr_comm_rank(c.handle)) +
               " size=" + std::to_string(simclr_comm_size(c.handle)) + ">";
      });

  nb::class_<Forward>(m, "Forward", "What a forward computed, and what its backward needs.")
      .def_prop_ro("values", [](const Forward& f) { return f.values; })
      .def_prop_ro("per_example", [](const Forward& f) { return f.per_example; })
      .def_prop_ro("objective", [](const Forward& f) { return f.info.objective; })
      .def_prop_ro("reduction", [](const Forward& f) { return reduction_name(f.info.reduction); })
      .def_prop_ro("rows", [](const Forward& f) { return f.info.rows; })
      .def_prop_ro("row_offset", [](const Forward& f) { return f.info.row_offset; })
      .def_prop_ro("global_rows", [](const Forward& f) { return f.info.global_rows; })
      .def_prop_ro("ranks", [](const Forward& f) { return f.info.ranks; })
      .def_prop_ro("rank_rows", [](const Forward& f) { return f.rank_rows; })
      .def_prop_ro("flops", [](const Forward& f) { return f.info.flops; })
      .def_prop_ro("dtype", [](const Forward& f) { return dtype_name(f.dtype); })
      .def_prop_ro("comm", [](const Forward& f) { return f.comm; })
      .def("backward", &backward, "upstream"_a, "grad_a"_a = nb::none(), "grad_b"_a = nb::none(),
           "dJ/dza, dJ/dzb for an upstream gradient (a number, or [n] for reduction none); "
           "written into grad_a / grad_b when given. Collective when the forward was.")
      .def("backward_with_temperature", &backward_with_temperature, "upstream"_a,
           "grad_a"_a = nb::none(), "grad_b"_a = nb::none(),
           "backward, and dJ/dT as a float (this rank's share when distributed, under the "
           "forward's gradient_reduction), or None when the forward had no temperature_gradient.")
      .def_prop_ro("temperature_gradient",
                   [](const Forward& f) { return f.temperature_gradient; });
}

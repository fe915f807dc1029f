// simclr_loss._device: the asynchronous device calls of the C API (include/simclr/c_api.h, "asynchronous
// device calls") for python/simclr_loss/_torch_cuda.py. Arguments are raw device addresses and a
// cudaStream_t as integers (a framework's tensor.data_ptr() and stream handle), so this module
// needs neither PyTorch nor CUDA headers beyond the C API. Built only with the GPU path
// (SIMCLR_WITH_CUDA=ON and target simclr::cuda; docs/gpu.md, "The PyTorch CUDA route").
// DeviceComm is the C API's callback device communicator over Python callables (the front end's
// torch.distributed collectives): the library calls them, with the GIL taken, from inside the
// forward and backward, which run with the GIL released.

#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "simclr/c_api.h"

namespace nb = nanobind;

namespace {

void check(simclr_status status) {
  if (status == SIMCLR_OK) return;
  const std::string message = simclr_last_error();
  switch (status) {
    case SIMCLR_VALUE_ERROR:
      throw nb::value_error(message.c_str());
    case SIMCLR_TYPE_ERROR:
      throw nb::type_error(message.c_str());
    case SIMCLR_UNSUPPORTED:  // a host communicator, float64: arguments this route cannot take
      throw nb::value_error(message.c_str());
    default:
      throw std::runtime_error("simclr (status " + std::to_string(static_cast<int>(status)) +
                               "): " + message);
  }
}

void* ptr(std::uintptr_t address) { return reinterpret_cast<void*>(address); }

simclr_dtype dtype_of(int code) { return static_cast<simclr_dtype>(code); }

// A device forward's saved state; destroyed with the Python object.
struct Saved {
  simclr_forward_t state = nullptr;
  Saved() = default;
  Saved(const Saved&) = delete;
  Saved& operator=(const Saved&) = delete;
  ~Saved() { simclr_forward_destroy(state); }
};

struct DeviceLoss {
  simclr_loss_t loss = nullptr;
  DeviceLoss(double temperature, int reduction) {
    check(
        simclr_loss_create(temperature, static_cast<simclr_reduction>(reduction), nullptr, &loss));
  }
  DeviceLoss(const DeviceLoss&) = delete;
  DeviceLoss& operator=(const DeviceLoss&) = delete;
  ~DeviceLoss() { simclr_loss_destroy(loss); }
};

// The Python callables behind a DeviceComm; owned by the C communicator (freed by its release).
struct PyCollectives {
  nb::object all_gather_v;     // (send, send_bytes, recv, recv_bytes: list, stream) -> None
  nb::object host_all_gather;  // (send: bytes) -> bytes of size * len(send)
  nb::object barrier;          // (stream) -> None, or None
  int size = 1;
};

// A Python exception raised by a callback, as the callback's error text ("Type: message").
int report(nb::python_error& e, char* error, std::size_t capacity) {
  std::string text;
  try {
    text = nb::cast<std::string>(nb::str(e.type().attr("__name__"))) + ": " +
           nb::cast<std::string>(nb::str(e.value()));
  } catch (...) {
    text = e.what();
  }
  // The exception is dropped with e: the library raises the failure as its own error, with this
  // text, on the way out of the call.
  std::snprintf(error, capacity, "%s", text.c_str());
  return 1;
}

int py_all_gather_v(void* user, const void* send, std::size_t send_bytes, void* recv,
                    const std::size_t* recv_bytes, void* cuda_stream, char* error,
                    std::size_t capacity) {
  nb::gil_scoped_acquire gil;
  auto* c = static_cast<PyCollectives*>(user);
  try {
    std::vector<std::size_t> counts(recv_bytes, recv_bytes + c->size);
    c->all_gather_v(reinterpret_cast<std::uintptr_t>(send), send_bytes,
                    reinterpret_cast<std::uintptr_t>(recv), counts,
                    reinterpret_cast<std::uintptr_t>(cuda_stream));
    return 0;
  } catch (nb::python_error& e) {
    return report(e, error, capacity);
  }
}

int py_host_all_gather(void* user, const void* send, std::size_t bytes, void* recv, char* error,
                       std::size_t capacity) {
  nb::gil_scoped_acquire gil;
  auto* c = static_cast<PyCollectives*>(user);
  try {
    nb::object got = c->host_all_gather(nb::bytes(static_cast<const char*>(send), bytes));
    nb::bytes all = nb::cast<nb::bytes>(got);
    const std::size_t want = bytes * static_cast<std::size_t>(c->size);
    if (all.size() != want) {
      std::snprintf(error, capacity, "host_all_gather returned %zu bytes, expected %zu", all.size(),
                    want);
      return 1;
    }
    if (want > 0) std::memcpy(recv, all.c_str(), want);
    return 0;
  } catch (nb::python_error& e) {
    return report(e, error, capacity);
  } catch (const nb::cast_error&) {
    std::snprintf(error, capacity, "host_all_gather must return bytes");
    return 1;
  }
}

int py_barrier(void* user, void* cuda_stream, char* error, std::size_t capacity) {
  nb::gil_scoped_acquire gil;
  auto* c = static_cast<PyCollectives*>(user);
  try {
    c->barrier(reinterpret_cast<std::uintptr_t>(cuda_stream));
    return 0;
  } catch (nb::python_error& e) {
    return report(e, error, capacity);
  }
}

void py_release(void* user) {
  nb::gil_scoped_acquire gil;
  delete static_cast<PyCollectives*>(user);
}

// A device communicator over Python collectives (simclr_comm_create_device_callbacks).
struct DeviceComm {
  simclr_comm_t comm = nullptr;
  DeviceComm(int rank, int size, const std::string& backend, nb::object all_gather_v,
             nb::object host_all_gather, nb::object barrier) {
    auto collectives = std::make_unique<PyCollectives>();
    collectives->all_gather_v = std::move(all_gather_v);
    collectives->host_all_gather = std::move(host_all_gather);
    collectives->barrier = std::move(barrier);
    collectives->size = size;
    simclr_device_comm_callbacks cb;
    std::memset(&cb, 0, sizeof(cb));
    cb.user = collectives.get();
    cb.rank = rank;
    cb.size = size;
    cb.all_gather_v = py_all_gather_v;
    cb.host_all_gather = py_host_all_gather;
    cb.barrier = collectives->barrier.is_none() ? nullptr : py_barrier;
    cb.release = py_release;
    check(simclr_comm_create_device_callbacks(&cb, backend.c_str(), &comm));
    collectives.release();  // owned by the communicator now
  }
  DeviceComm(const DeviceComm&) = delete;
  DeviceComm& operator=(const DeviceComm&) = delete;
  ~DeviceComm() { simclr_comm_destroy(comm); }
};

simclr_call_options call_options(std::int64_t global_batch_size, std::size_t tile_bytes,
                                 bool symmetric, const DeviceComm* comm = nullptr) {
  simclr_call_options o;
  simclr_call_options_init(&o);
  o.global_batch_size = global_batch_size;
  o.workspace_bytes = tile_bytes;
  o.symmetric = symmetric ? 1 : 0;
  o.comm = comm != nullptr ? comm->comm : nullptr;
  return o;
}

simclr_device_call device_call(std::uintptr_t workspace, std::size_t workspace_size, bool async,
                               std::uintptr_t weight = 0, std::int64_t weight_size = 0,
                               std::uintptr_t scratch = 0, std::size_t scratch_size = 0) {
  simclr_device_call c;
  simclr_device_call_init(&c);
  c.async = async ? 1 : 0;
  c.workspace = ptr(workspace);
  c.workspace_size = workspace_size;
  c.scratch = ptr(scratch);
  c.scratch_size = scratch_size;
  c.weight = static_cast<const float*>(ptr(weight));
  c.weight_size = weight_size;
  return c;
}

}  // namespace

NB_MODULE(_device, m) {
  m.doc() = "simclr's asynchronous device calls (raw device addresses; see simclr_loss._torch_cuda)";
  m.attr("FLOAT32") = static_cast<int>(SIMCLR_FLOAT32);
  m.attr("FLOAT16") = static_cast<int>(SIMCLR_FLOAT16);
  m.attr("BFLOAT16") = static_cast<int>(SIMCLR_BFLOAT16);
  m.attr("STATUS_SLOTS") = SIMCLR_DEVICE_STATUS_SLOTS;
  m.attr("GLOBAL_BATCH_NONE") = static_cast<std::int64_t>(SIMCLR_GLOBAL_BATCH_NONE);
  m.attr("GLOBAL_BATCH_INFER") = static_cast<std::int64_t>(SIMCLR_GLOBAL_BATCH_INFER);

  m.def(
      "workspace_size",
      [](std::int64_t rows, std::int64_t global_rows, std::int64_t dim, int dtype,
         std::size_t tile_bytes, bool symmetric, const DeviceComm* comm) {
        const simclr_call_options o =
            call_options(SIMCLR_GLOBAL_BATCH_NONE, tile_bytes, symmetric, comm);
        std::size_t f = 0, b = 0;
        check(simclr_device_workspace_size(rows, global_rows, dim, dtype_of(dtype), &o, &f, &b));
        return std::make_tuple(f, b);
      },
      nb::arg("rows"), nb::arg("global_rows"), nb::arg("dim"), nb::arg("dtype"),
      nb::arg("tile_bytes") = 0, nb::arg("symmetric") = true, nb::arg("comm").none() = nb::none(),
      "(forward_bytes, backward_bytes) of workspace for one call (distributed with a comm)");

  m.def(
      "saved_size",
      [](std::int64_t rows, std::int64_t global_rows, std::int64_t dim, int dtype,
         std::size_t tile_bytes, bool symmetric, const DeviceComm* comm) {
        const simclr_call_options o =
            call_options(SIMCLR_GLOBAL_BATCH_NONE, tile_bytes, symmetric, comm);
        std::size_t saved = 0;
        check(simclr_device_forward_saved_size(rows, global_rows, dim, dtype_of(dtype), &o, &saved));
        return saved;
      },
      nb::arg("rows"), nb::arg("global_rows"), nb::arg("dim"), nb::arg("dtype"),
      nb::arg("tile_bytes") = 0, nb::arg("symmetric") = true, nb::arg("comm").none() = nb::none(),
      "the leading bytes of the forward's workspace that the backward reads; with a scratch of "
      "forward_bytes - saved_bytes, the workspace needs only these");

  nb::class_<DeviceComm>(m, "DeviceComm")
      .def(nb::init<int, int, const std::string&, nb::object, nb::object, nb::object>(),
           nb::arg("rank"), nb::arg("size"), nb::arg("backend"), nb::arg("all_gather_v"),
           nb::arg("host_all_gather"), nb::arg("barrier").none() = nb::none(),
           "a device communicator over Python collectives: all_gather_v(send, send_bytes, recv, "
           "recv_bytes, stream) on device addresses, enqueued on the cudaStream_t `stream`; "
           "host_all_gather(send: bytes) -> bytes of every rank's, in rank order; "
           "barrier(stream) or None")
      .def_prop_ro("rank", [](const DeviceComm& c) { return simclr_comm_rank(c.comm); })
      .def_prop_ro("size", [](const DeviceComm& c) { return simclr_comm_size(c.comm); });

  nb::class_<Saved>(m, "Saved");
  nb::class_<DeviceLoss>(m, "DeviceLoss")
      .def(nb::init<double, int>(), nb::arg("temperature"), nb::arg("reduction"))
      .def(
          "forward",
          [](DeviceLoss& self, std::uintptr_t za, std::uintptr_t zb, std::int64_t rows,
             std::int64_t dim, std::int64_t stride_a, std::int64_t stride_b, int dtype, int device,
             std::uintptr_t stream, std::uintptr_t workspace, std::size_t workspace_size,
             std::uintptr_t values, std::uintptr_t per_example, std::uintptr_t objective,
             std::int64_t global_batch_size, std::size_t tile_bytes, bool symmetric, bool async,
             const DeviceComm* comm, std::uintptr_t weight, std::int64_t weight_size,
             std::uintptr_t scratch, std::size_t scratch_size) -> Saved* {
            const simclr_matrix a{ptr(za), rows, dim, stride_a, dtype_of(dtype), device};
            const simclr_matrix b{ptr(zb), rows, dim, stride_b, dtype_of(dtype), device};
            const simclr_call_options o =
                call_options(global_batch_size, tile_bytes, symmetric, comm);
            const simclr_device_call c =
                device_call(workspace, workspace_size, async, weight, weight_size, scratch,
                            scratch_size);
            auto saved = std::make_unique<Saved>();
            simclr_status status;
            {
              // A distributed call's collectives are Python callables, which take the GIL back.
              nb::gil_scoped_release released;
              status = simclr_device_forward_async(self.loss, &a, &b, &o, &c, ptr(stream),
                                                   ptr(values), ptr(per_example), ptr(objective),
                                                   nullptr, &saved->state);
            }
            check(status);
            return saved.release();
          },
          nb::arg("za"), nb::arg("zb"), nb::arg("rows"), nb::arg("dim"), nb::arg("stride_a"),
          nb::arg("stride_b"), nb::arg("dtype"), nb::arg("device"), nb::arg("stream"),
          nb::arg("workspace"), nb::arg("workspace_size"), nb::arg("values"),
          nb::arg("per_example"), nb::arg("objective"), nb::arg("global_batch_size"),
          nb::arg("tile_bytes") = 0, nb::arg("symmetric") = true, nb::arg("async_") = true,
          nb::arg("comm").none() = nb::none(), nb::arg("weight") = 0, nb::arg("weight_size") = 0,
          nb::arg("scratch") = 0, nb::arg("scratch_size") = 0, nb::rv_policy::take_ownership,
          "enqueue a forward on `stream` (collective over comm's ranks when given; weight: a "
          "device float32 address of weight_size values, 1 or rows, or 0; scratch: the part of "
          "the workspace the backward does not read, free once the forward is enqueued, or 0); "
          "returns the saved state")
      .def(
          "backward",
          [](DeviceLoss& self, Saved& saved, float upstream, std::uintptr_t upstream_per_example,
             std::uintptr_t grad_a, std::uintptr_t grad_b, std::int64_t rows, std::int64_t dim,
             int dtype, int device, std::uintptr_t stream, std::uintptr_t workspace,
             std::size_t workspace_size, bool async) {
            const simclr_matrix ga{ptr(grad_a), rows, dim, dim, dtype_of(dtype), device};
            const simclr_matrix gb{ptr(grad_b), rows, dim, dim, dtype_of(dtype), device};
            const simclr_device_call c = device_call(workspace, workspace_size, async);
            simclr_status status;
            {
              nb::gil_scoped_release released;
              status = simclr_device_backward_async(
                  self.loss, saved.state, upstream,
                  static_cast<const float*>(ptr(upstream_per_example)), &ga, &gb, &c, ptr(stream));
            }
            check(status);
          },
          nb::arg("saved"), nb::arg("upstream"), nb::arg("upstream_per_example"), nb::arg("grad_a"),
          nb::arg("grad_b"), nb::arg("rows"), nb::arg("dim"), nb::arg("dtype"), nb::arg("device"),
          nb::arg("stream"), nb::arg("workspace"), nb::arg("workspace_size"),
          nb::arg("async_") = true,
          "enqueue the backward (dense [rows, dim] gradients) on `stream`; collective when the "
          "forward was (its comm must still exist)");
}

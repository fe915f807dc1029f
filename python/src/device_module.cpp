// simclr._device: the asynchronous device calls of the C API (include/simclr/c_api.h, "asynchronous
// device calls") for python/simclr/_torch_cuda.py. Arguments are raw device addresses and a
// cudaStream_t as integers (a framework's tensor.data_ptr() and stream handle), so this module
// needs neither PyTorch nor CUDA headers beyond the C API. Built only with the GPU path
// (SIMCLR_WITH_CUDA=ON and target simclr::cuda; docs/gpu.md, "The PyTorch CUDA route").

#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>

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

simclr_call_options call_options(std::int64_t global_batch_size, std::size_t tile_bytes,
                                 bool symmetric) {
  simclr_call_options o;
  simclr_call_options_init(&o);
  o.global_batch_size = global_batch_size;
  o.workspace_bytes = tile_bytes;
  o.symmetric = symmetric ? 1 : 0;
  return o;
}

simclr_device_call device_call(std::uintptr_t workspace, std::size_t workspace_size, bool async) {
  simclr_device_call c;
  simclr_device_call_init(&c);
  c.async = async ? 1 : 0;
  c.workspace = ptr(workspace);
  c.workspace_size = workspace_size;
  return c;
}

}  // namespace

NB_MODULE(_device, m) {
  m.doc() = "simclr's asynchronous device calls (raw device addresses; see simclr._torch_cuda)";
  m.attr("FLOAT32") = static_cast<int>(SIMCLR_FLOAT32);
  m.attr("FLOAT16") = static_cast<int>(SIMCLR_FLOAT16);
  m.attr("BFLOAT16") = static_cast<int>(SIMCLR_BFLOAT16);
  m.attr("STATUS_SLOTS") = SIMCLR_DEVICE_STATUS_SLOTS;
  m.attr("GLOBAL_BATCH_NONE") = static_cast<std::int64_t>(SIMCLR_GLOBAL_BATCH_NONE);
  m.attr("GLOBAL_BATCH_INFER") = static_cast<std::int64_t>(SIMCLR_GLOBAL_BATCH_INFER);

  m.def(
      "workspace_size",
      [](std::int64_t rows, std::int64_t global_rows, std::int64_t dim, int dtype,
         std::size_t tile_bytes, bool symmetric) {
        const simclr_call_options o = call_options(SIMCLR_GLOBAL_BATCH_NONE, tile_bytes, symmetric);
        std::size_t f = 0, b = 0;
        check(simclr_device_workspace_size(rows, global_rows, dim, dtype_of(dtype), &o, &f, &b));
        return std::make_tuple(f, b);
      },
      nb::arg("rows"), nb::arg("global_rows"), nb::arg("dim"), nb::arg("dtype"),
      nb::arg("tile_bytes") = 0, nb::arg("symmetric") = true,
      "(forward_bytes, backward_bytes) of workspace for one call");

  nb::class_<Saved>(m, "Saved");
  nb::class_<DeviceLoss>(m, "DeviceLoss")
      .def(nb::init<double, int>(), nb::arg("temperature"), nb::arg("reduction"))
      .def(
          "forward",
          [](DeviceLoss& self, std::uintptr_t za, std::uintptr_t zb, std::int64_t rows,
             std::int64_t dim, std::int64_t stride_a, std::int64_t stride_b, int dtype, int device,
             std::uintptr_t stream, std::uintptr_t workspace, std::size_t workspace_size,
             std::uintptr_t values, std::uintptr_t per_example, std::uintptr_t objective,
             std::int64_t global_batch_size, std::size_t tile_bytes, bool symmetric,
             bool async) -> Saved* {
            const simclr_matrix a{ptr(za), rows, dim, stride_a, dtype_of(dtype), device};
            const simclr_matrix b{ptr(zb), rows, dim, stride_b, dtype_of(dtype), device};
            const simclr_call_options o = call_options(global_batch_size, tile_bytes, symmetric);
            const simclr_device_call c = device_call(workspace, workspace_size, async);
            auto saved = std::make_unique<Saved>();
            check(simclr_device_forward_async(self.loss, &a, &b, &o, &c, ptr(stream), ptr(values),
                                              ptr(per_example), ptr(objective), nullptr,
                                              &saved->state));
            return saved.release();
          },
          nb::arg("za"), nb::arg("zb"), nb::arg("rows"), nb::arg("dim"), nb::arg("stride_a"),
          nb::arg("stride_b"), nb::arg("dtype"), nb::arg("device"), nb::arg("stream"),
          nb::arg("workspace"), nb::arg("workspace_size"), nb::arg("values"),
          nb::arg("per_example"), nb::arg("objective"), nb::arg("global_batch_size"),
          nb::arg("tile_bytes") = 0, nb::arg("symmetric") = true, nb::arg("async_") = true,
          nb::rv_policy::take_ownership, "enqueue a forward on `stream`; returns the saved state")
      .def(
          "backward",
          [](DeviceLoss& self, Saved& saved, float upstream, std::uintptr_t upstream_per_example,
             std::uintptr_t grad_a, std::uintptr_t grad_b, std::int64_t rows, std::int64_t dim,
             int dtype, int device, std::uintptr_t stream, std::uintptr_t workspace,
             std::size_t workspace_size, bool async) {
            const simclr_matrix ga{ptr(grad_a), rows, dim, dim, dtype_of(dtype), device};
            const simclr_matrix gb{ptr(grad_b), rows, dim, dim, dtype_of(dtype), device};
            const simclr_device_call c = device_call(workspace, workspace_size, async);
            check(simclr_device_backward_async(self.loss, saved.state, upstream,
                                               static_cast<const float*>(ptr(upstream_per_example)),
                                               &ga, &gb, &c, ptr(stream)));
          },
          nb::arg("saved"), nb::arg("upstream"), nb::arg("upstream_per_example"), nb::arg("grad_a"),
          nb::arg("grad_b"), nb::arg("rows"), nb::arg("dim"), nb::arg("dtype"), nb::arg("device"),
          nb::arg("stream"), nb::arg("workspace"), nb::arg("workspace_size"),
          nb::arg("async_") = true,
          "enqueue the backward (dense [rows, dim] gradients) on `stream`");
}

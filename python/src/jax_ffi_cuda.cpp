// simclr_loss._jax_ffi_cuda: the XLA FFI handlers of simclr_loss.jax for platform "CUDA" (bodies in
// jax_ffi_cuda.hpp), on XLA's stream (ffi::PlatformStream<cudaStream_t>) with their workspace from
// XLA's scratch allocator (ffi::ScratchAllocator). They take the CPU handlers' names, operands,
// results and attributes (python/src/jax_ffi.cpp), so simclr_loss.jax registers both sets under the
// same targets and XLA picks the one of the platform the computation runs on.
// Built when the GPU path is (SIMCLR_WITH_CUDA) and jax's FFI headers are found: as this Python
// extension (python/CMakeLists.txt), and, with SIMCLR_JAX_FFI_NO_MODULE, as a plain library of the
// handlers in the CUDA build (tests/gpu/CMakeLists.txt), so that build compiles them without
// nanobind.

#include <cstdint>
#include <string>

#include "jax_ffi_cuda.hpp"
#include "jax_ffi_common.hpp"

namespace {

namespace ffi = xla::ffi;
namespace h = simclr_jax_cuda;

// Extra negatives (a memory bank) are a host feature: the device step calls refuse them, so these
// handlers do too, with this error, whenever a call has any (rows > 0).
ffi::Error no_negatives(const char* step) {
  return ffi::Error(ffi::ErrorCode::kUnimplemented,
                    std::string("simclr_loss.jax (GPU) ") + step +
                        ": extra negatives (negatives=) are not supported on the GPU (the device "
                        "step calls refuse them); run the loss on the CPU, or pass none");
}

ffi::Error record_cuda(cudaStream_t stream, ffi::AnyBuffer za, ffi::AnyBuffer zb,
                       ffi::AnyBuffer weight, ffi::AnyBuffer negatives,
                       ffi::Result<ffi::AnyBuffer> record, double temperature,
                       std::int64_t reduction, std::int64_t global_batch, std::int64_t has_weight,
                       std::int64_t gradient_reduction, std::int64_t /*negatives_scope*/) {
  if (simclr_jax_ffi::dim(negatives, 0) != 0) return no_negatives("forward");
  return h::record(stream, za, zb, weight, *record, temperature, reduction, global_batch,
                   has_weight, gradient_reduction);
}

ffi::Error agree_normalize_cuda(cudaStream_t stream, ffi::AnyBuffer records, ffi::AnyBuffer za,
                                ffi::AnyBuffer zb, ffi::AnyBuffer weight,
                                ffi::AnyBuffer negatives, ffi::Result<ffi::AnyBuffer> u,
                                ffi::Result<ffi::AnyBuffer> squared_norms,
                                ffi::Result<ffi::AnyBuffer> agreed_weight,
                                ffi::Result<ffi::AnyBuffer> /*negatives_unit*/,
                                double temperature, std::int64_t reduction) {
  if (simclr_jax_ffi::dim(negatives, 0) != 0) return no_negatives("forward");
  return h::agree_normalize(stream, records, za, zb, weight, *u, *squared_norms, *agreed_weight,
                            temperature, reduction);
}

ffi::Error normalize_cuda(cudaStream_t stream, ffi::AnyBuffer za, ffi::AnyBuffer zb,
                          ffi::Result<ffi::AnyBuffer> u,
                          ffi::Result<ffi::AnyBuffer> squared_norms) {
  return h::normalize(stream, za, zb, *u, *squared_norms);
}

ffi::Error normalize_rows_cuda(cudaStream_t /*stream*/, ffi::AnyBuffer negatives,
                               ffi::Result<ffi::AnyBuffer> /*out*/) {
  if (simclr_jax_ffi::dim(negatives, 0) != 0) return no_negatives("forward");
  return ffi::Error::Success();
}

ffi::Error forward_cuda(cudaStream_t stream, ffi::ScratchAllocator scratch,
                        ffi::AnyBuffer u_global, ffi::AnyBuffer anchor_begin,
                        ffi::AnyBuffer weight, ffi::Result<ffi::AnyBuffer> row_lse,
                        ffi::Result<ffi::AnyBuffer> per_example,
                        ffi::Result<ffi::AnyBuffer> values, double temperature,
                        std::int64_t reduction, std::int64_t global_batch,
                        std::int64_t has_weight, std::int64_t /*threads: CPU only*/,
                        std::int64_t negative_rows) {
  if (negative_rows != 0) return no_negatives("forward");
  return h::forward(stream, scratch, u_global, anchor_begin, weight, *row_lse, *per_example,
                    *values, temperature, reduction, global_batch, has_weight);
}

ffi::Error alpha_cuda(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer upstream,
                      ffi::AnyBuffer weight, ffi::Result<ffi::AnyBuffer> alpha,
                      double temperature, std::int64_t reduction, std::int64_t global_batch,
                      std::int64_t has_weight, std::int64_t global_pairs) {
  return h::alpha(stream, scratch, upstream, weight, *alpha, temperature, reduction, global_batch,
                  has_weight, global_pairs);
}

ffi::Error alpha_record_cuda(cudaStream_t stream, ffi::ScratchAllocator scratch,
                             ffi::AnyBuffer upstream, ffi::AnyBuffer weight,
                             ffi::Result<ffi::AnyBuffer> alpha,
                             ffi::Result<ffi::AnyBuffer> record, double temperature,
                             std::int64_t reduction, std::int64_t global_batch,
                             std::int64_t has_weight, std::int64_t global_pairs,
                             std::int64_t gradient_reduction) {
  return h::alpha_record(stream, scratch, upstream, weight, *alpha, *record, temperature,
                         reduction, global_batch, has_weight, global_pairs, gradient_reduction);
}

ffi::Error backward_cuda(cudaStream_t stream, ffi::ScratchAllocator scratch,
                         ffi::AnyBuffer u_global, ffi::AnyBuffer anchor_begin,
                         ffi::AnyBuffer squared_norms, ffi::AnyBuffer lse_all,
                         ffi::AnyBuffer alpha_all, ffi::Result<ffi::AnyBuffer> grad_a,
                         ffi::Result<ffi::AnyBuffer> grad_b, double temperature,
                         std::int64_t reduction, std::int64_t /*threads*/,
                         std::int64_t negative_rows) {
  if (negative_rows != 0) return no_negatives("backward");
  return h::backward(stream, scratch, u_global, anchor_begin, squared_norms, lse_all, alpha_all,
                     *grad_a, *grad_b, temperature, reduction);
}

ffi::Error agree_backward_cuda(cudaStream_t stream, ffi::ScratchAllocator scratch,
                               ffi::AnyBuffer records, ffi::AnyBuffer u_global,
                               ffi::AnyBuffer anchor_begin, ffi::AnyBuffer squared_norms,
                               ffi::AnyBuffer lse_all, ffi::AnyBuffer alpha_all,
                               ffi::Result<ffi::AnyBuffer> grad_a,
                               ffi::Result<ffi::AnyBuffer> grad_b, double temperature,
                               std::int64_t reduction, std::int64_t /*threads*/,
                               std::int64_t negative_rows) {
  if (negative_rows != 0) return no_negatives("backward");
  return h::agree_backward(stream, scratch, records, u_global, anchor_begin, squared_norms,
                           lse_all, alpha_all, *grad_a, *grad_b, temperature, reduction);
}

}  // namespace

namespace sig = simclr_jax_ffi;

// XLA's stream for every call; its scratch allocator for the calls that need a workspace.
static auto on_stream() { return ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>(); }
static auto with_scratch() { return on_stream().Ctx<ffi::ScratchAllocator>(); }

XLA_FFI_DEFINE_HANDLER_SYMBOL(SimclrRecordCuda, record_cuda, sig::record(on_stream()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SimclrAgreeNormalizeCuda, agree_normalize_cuda, sig::agree_normalize(on_stream()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SimclrNormalizeCuda, normalize_cuda, sig::normalize(on_stream()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SimclrNormalizeRowsCuda, normalize_rows_cuda, sig::normalize_rows(on_stream()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SimclrForwardCuda, forward_cuda, sig::forward(with_scratch()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SimclrAlphaCuda, alpha_cuda, sig::alpha(with_scratch()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SimclrAlphaRecordCuda, alpha_record_cuda, sig::alpha_record(with_scratch()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SimclrBackwardCuda, backward_cuda, sig::backward(with_scratch()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SimclrAgreeBackwardCuda, agree_backward_cuda, sig::agree_backward(with_scratch()));

#ifndef SIMCLR_JAX_FFI_NO_MODULE
#include <nanobind/nanobind.h>

namespace nb = nanobind;

NB_MODULE(_jax_ffi_cuda, m) {
  m.doc() =
      "XLA FFI handlers (CUDA) of simclr_loss.jax; use simclr_loss.jax, which registers them.";
  m.def("handlers", [] {
    nb::dict d;
#define SIMCLR_ADD_TARGET(name, stem) \
  d[name] = nb::capsule(reinterpret_cast<void*>(Simclr##stem##Cuda));
    SIMCLR_JAX_FFI_TARGETS(SIMCLR_ADD_TARGET)
#undef SIMCLR_ADD_TARGET
    return d;
  });
}
#endif

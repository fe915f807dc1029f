// simclr_loss/_tf_ops.so: TensorFlow custom ops (CPU kernels) over the C API's step calls
// (include/simclr/c_api.h, "step calls for frameworks whose collectives are graph ops"), loaded by
// simclr_loss.tensorflow with tf.load_op_library. Between the steps, TensorFlow itself gathers the
// agreement records, the rows and the per-row scalars (tf.distribute's all_gather in a replica
// context), so no kernel communicates. The ops compute the per-example loss [n] (reduction none, no
// weights): the Keras Loss base class applies sample_weight, the reduction and the distribution
// scaling itself. Built only when TensorFlow is found at configure time (python/CMakeLists.txt),
// with the compile and link flags tf.sysconfig reports; only the C API crosses between TensorFlow's
// and the library's code.

#include <cstdint>
#include <string>

#include "simclr/c_api.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace {

namespace tf = ::tensorflow;
using tf::shape_inference::DimensionHandle;
using tf::shape_inference::InferenceContext;
using tf::shape_inference::ShapeHandle;

// The C API's message for a failed step, prefixed with the op that failed.
tf::Status step_error(const char* op) {
  return tf::errors::InvalidArgument(std::string("simclr ") + op + ": " + simclr_last_error());
}

template <typename T>
constexpr simclr_dtype dtype_of() {
  return sizeof(T) == 4 ? SIMCLR_FLOAT32 : SIMCLR_FLOAT64;
}

// A tensor's buffer. An empty tensor (a replica with no rows) may have none, but the C API takes
// NULL for "not wanted": it then gets a valid address that is never read or written.
template <typename T>
T* data(const tf::Tensor& t) {
  static T empty[1] = {T(0)};
  return t.NumElements() == 0 ? empty : const_cast<T*>(t.flat<T>().data());
}

// A [rows, cols] dense row-major view of a tensor's buffer.
template <typename T>
simclr_matrix matrix(const tf::Tensor& t, std::int64_t rows, std::int64_t cols) {
  simclr_matrix m;
  m.data = data<T>(t);
  m.rows = rows;
  m.cols = cols;
  m.row_stride = cols;
  m.dtype = dtype_of<T>();
  m.device = -1;
  return m;
}

simclr_call_options call_options(int threads) {
  simclr_call_options o;
  simclr_call_options_init(&o);
  o.threads = threads;
  return o;
}

// A reduction-none loss of the temperature a call passes (a float64 scalar input, not a float attr,
// so float64 runs see the exact value), released at scope exit. Cheap: a configuration.
class LossHandle {
 public:
  explicit LossHandle(const tf::Tensor& temperature) : scalar_(temperature.dims() == 0) {
    if (scalar_)
      status_ = simclr_loss_create(temperature.scalar<double>()(), SIMCLR_REDUCTION_NONE, nullptr,
                                   &loss_);
  }
  ~LossHandle() { simclr_loss_destroy(loss_); }
  LossHandle(const LossHandle&) = delete;
  LossHandle& operator=(const LossHandle&) = delete;
  tf::Status status(const char* op) const {
    if (!scalar_)
      return tf::errors::InvalidArgument("simclr ", op, ": temperature must be a scalar");
    return status_ == SIMCLR_OK ? tf::Status() : step_error(op);
  }
  simclr_loss_t get() const { return loss_; }

 private:
  bool scalar_;
  simclr_loss_t loss_ = nullptr;
  simclr_status status_ = SIMCLR_OK;
};

// The threads attr every op with a loss takes (CPU threads of the library; 0: its default).
class SimclrKernel : public tf::OpKernel {
 public:
  explicit SimclrKernel(tf::OpKernelConstruction* ctx) : tf::OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("threads", &threads_));
    OP_REQUIRES(ctx, threads_ >= 0,
                tf::errors::InvalidArgument("simclr: threads must be >= 0, got ", threads_));
  }

 protected:
  int threads_ = 0;
};

tf::Status require_matrix(const tf::Tensor& t, const char* what) {
  if (t.dims() != 2)
    return tf::errors::InvalidArgument("simclr: ", what, " must be a [rows, d] matrix, got shape ",
                                       t.shape().DebugString());
  return tf::Status();
}

tf::Status require_vector(const tf::Tensor& t, std::int64_t size, const char* what) {
  if (t.dims() != 1 || t.dim_size(0) != size)
    return tf::errors::InvalidArgument("simclr: ", what, " must have shape [", size, "], got ",
                                       t.shape().DebugString());
  return tf::Status();
}

std::int64_t scalar_index(const tf::Tensor& t) {
  return t.dtype() == tf::DT_INT64 ? t.scalar<std::int64_t>()()
                                   : static_cast<std::int64_t>(t.scalar<std::int32_t>()());
}

// Outputs 0 and 1 of a normalising kernel: u [2n, d] = [l2_normalize(za); l2_normalize(zb)] and
// squared_norms [2n] (simclr_step_normalize); `op` names the kernel in an error.
template <typename T>
void normalize_outputs(tf::OpKernelContext* ctx, const tf::Tensor& za, const tf::Tensor& zb,
                       const char* op) {
  const std::int64_t n = za.dim_size(0);
  const std::int64_t d = za.dim_size(1);
  tf::Tensor* u = nullptr;
  tf::Tensor* squared_norms = nullptr;
  OP_REQUIRES_OK(ctx, ctx->allocate_output(0, tf::TensorShape({2 * n, d}), &u));
  OP_REQUIRES_OK(ctx, ctx->allocate_output(1, tf::TensorShape({2 * n}), &squared_norms));
  const simclr_matrix a = matrix<T>(za, n, d);
  const simclr_matrix b = matrix<T>(zb, zb.dim_size(0), zb.dim_size(1));
  const simclr_matrix out = matrix<T>(*u, 2 * n, d);
  OP_REQUIRES(ctx, simclr_step_normalize(&a, &b, &out, data<T>(*squared_norms)) == SIMCLR_OK,
              step_error(op));
}

// za, zb [n, d] -> u [2n, d] = [l2_normalize(za); l2_normalize(zb)], squared_norms [2n].
template <typename T>
class NormalizeOp : public tf::OpKernel {
 public:
  explicit NormalizeOp(tf::OpKernelConstruction* ctx) : tf::OpKernel(ctx) {}
  void Compute(tf::OpKernelContext* ctx) override {
    const tf::Tensor& za = ctx->input(0);
    const tf::Tensor& zb = ctx->input(1);
    OP_REQUIRES_OK(ctx, require_matrix(za, "za"));
    OP_REQUIRES_OK(ctx, require_matrix(zb, "zb"));
    normalize_outputs<T>(ctx, za, zb, "SimclrNormalize");
  }
};

// u_global [2G + K, d] (the batch's rows, then K = negative_rows extra negatives' unit rows),
// anchor_begin, pairs (n), temperature, negative_rows -> row_lse [2n], per_example [n] (both
// directions summed).
template <typename T>
class ForwardOp : public SimclrKernel {
 public:
  using SimclrKernel::SimclrKernel;
  void Compute(tf::OpKernelContext* ctx) override {
    const tf::Tensor& u_global = ctx->input(0);
    OP_REQUIRES_OK(ctx, require_matrix(u_global, "u_global"));
    const std::int64_t begin = scalar_index(ctx->input(1));
    const std::int64_t pairs = scalar_index(ctx->input(2));
    OP_REQUIRES(ctx, pairs >= 0,
                tf::errors::InvalidArgument("simclr: pairs must be >= 0, got ", pairs));
    tf::Tensor* row_lse = nullptr;
    tf::Tensor* per_example = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, tf::TensorShape({2 * pairs}), &row_lse));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, tf::TensorShape({pairs}), &per_example));
    const simclr_matrix u = matrix<T>(u_global, u_global.dim_size(0), u_global.dim_size(1));
    const LossHandle loss(ctx->input(3));
    OP_REQUIRES_OK(ctx, loss.status("SimclrForward"));
    simclr_call_options o = call_options(threads_);
    o.negative_rows = scalar_index(ctx->input(4));
    // Reduction none without weights: the values are the per-example losses themselves.
    OP_REQUIRES(ctx,
                simclr_step_forward(loss.get(), &u, begin, pairs, nullptr, &o, data<T>(*row_lse),
                                    nullptr, data<T>(*per_example)) == SIMCLR_OK,
                step_error("SimclrForward"));
  }
};

// upstream [n] (the gradient of the per-example losses) -> alpha [2n], each anchor's weight.
template <typename T>
class AlphaOp : public SimclrKernel {
 public:
  using SimclrKernel::SimclrKernel;
  void Compute(tf::OpKernelContext* ctx) override {
    const tf::Tensor& upstream = ctx->input(0);
    OP_REQUIRES(ctx, upstream.dims() == 1,
                tf::errors::InvalidArgument("simclr: the upstream gradient must be [n], got ",
                                            upstream.shape().DebugString()));
    const std::int64_t n = upstream.dim_size(0);
    tf::Tensor* alpha = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, tf::TensorShape({2 * n}), &alpha));
    const LossHandle loss(ctx->input(1));
    OP_REQUIRES_OK(ctx, loss.status("SimclrAlpha"));
    const simclr_call_options o = call_options(threads_);
    OP_REQUIRES(ctx,
                simclr_step_alpha(loss.get(), dtype_of<T>(), n, n, nullptr, &o, data<T>(upstream),
                                  n, data<T>(*alpha)) == SIMCLR_OK,
                step_error("SimclrAlpha"));
  }
};

// u_global [2G + K, d], anchor_begin, squared_norms [2n], lse_all [2G], alpha_all [2G],
// temperature, negative_rows (K) -> grad_a, grad_b [n, d].
template <typename T>
class BackwardOp : public SimclrKernel {
 public:
  using SimclrKernel::SimclrKernel;
  void Compute(tf::OpKernelContext* ctx) override {
    const tf::Tensor& u_global = ctx->input(0);
    const tf::Tensor& squared_norms = ctx->input(2);
    const tf::Tensor& lse_all = ctx->input(3);
    const tf::Tensor& alpha_all = ctx->input(4);
    OP_REQUIRES_OK(ctx, require_matrix(u_global, "u_global"));
    const std::int64_t rows = u_global.dim_size(0);
    const std::int64_t d = u_global.dim_size(1);
    // The last input, in both kernels: how many extra negatives end u_global.
    const std::int64_t negatives = scalar_index(ctx->input(ctx->num_inputs() - 1));
    OP_REQUIRES(ctx, squared_norms.dims() == 1 && squared_norms.dim_size(0) % 2 == 0,
                tf::errors::InvalidArgument("simclr: squared_norms must be [2n], got ",
                                            squared_norms.shape().DebugString()));
    OP_REQUIRES_OK(ctx, require_vector(lse_all, rows - negatives, "lse_all"));
    OP_REQUIRES_OK(ctx, require_vector(alpha_all, rows - negatives, "alpha_all"));
    const std::int64_t n = squared_norms.dim_size(0) / 2;
    tf::Tensor* grad_a = nullptr;
    tf::Tensor* grad_b = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, tf::TensorShape({n, d}), &grad_a));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, tf::TensorShape({n, d}), &grad_b));
    const simclr_matrix u = matrix<T>(u_global, rows, d);
    const simclr_matrix ga = matrix<T>(*grad_a, n, d);
    const simclr_matrix gb = matrix<T>(*grad_b, n, d);
    const LossHandle loss(ctx->input(5));
    OP_REQUIRES_OK(ctx, loss.status("SimclrBackward"));
    simclr_call_options o = call_options(threads_);
    o.negative_rows = negatives;
    OP_REQUIRES(
        ctx,
        simclr_step_backward(loss.get(), &u, scalar_index(ctx->input(1)), n, data<T>(squared_norms),
                             data<T>(lse_all), data<T>(alpha_all), &o, &ga, &gb) == SIMCLR_OK,
        step_error("SimclrBackward"));
  }
};

// An agreement record (SIMCLR_RECORD_BYTES bytes) travels as int64 words: tf.distribute's
// all_gather takes no uint8.
static_assert(SIMCLR_RECORD_BYTES % 8 == 0, "a record is a whole number of int64 words");
constexpr std::int64_t kRecordWords = SIMCLR_RECORD_BYTES / 8;

// The records of every replica, [replicas, kRecordWords] int64, replica by replica.
tf::Status require_records(const tf::Tensor& records) {
  if (records.dims() != 2 || records.dim_size(1) != kRecordWords || records.dim_size(0) < 1)
    return tf::errors::InvalidArgument("simclr: records must be [replicas, ", kRecordWords,
                                       "] int64, got shape ", records.shape().DebugString());
  return tf::Status();
}

// A view of `rows` rows and no columns: what a record of a step without rows' values describes.
simclr_matrix no_columns(std::int64_t rows, simclr_dtype dtype) {
  simclr_matrix m;
  m.data = nullptr;
  m.rows = rows;
  m.cols = 0;
  m.row_stride = 0;
  m.dtype = dtype;
  m.device = -1;
  return m;
}

// Writes this replica's record of za, zb [n, d] into `record` (kRecordWords int64). Bad input is
// not an error here: it is in the record, for the agreement to raise on every replica.
template <typename T, typename Tn>
tf::Status write_record(const tf::Tensor& za, const tf::Tensor& zb, const tf::Tensor& negatives,
                        int negatives_scope, simclr_loss_t loss, tf::Tensor* record) {
  simclr_call_options o = call_options(0);
  o.negatives_scope = negatives_scope;
  // This replica's extra negatives, checked with the views by the library (their dtype and width
  // against the views', NaN/Inf); none when it has no rows.
  simclr_matrix k = no_columns(0, dtype_of<Tn>());
  if (negatives.dims() == 2 && negatives.dim_size(0) > 0) {
    k = matrix<Tn>(negatives, negatives.dim_size(0), negatives.dim_size(1));
    o.negatives = &k;
  }
  std::string message;
  simclr_matrix a = no_columns(0, dtype_of<T>());
  simclr_matrix b = a;
  tf::Status shapes = za.dims() != 2 ? require_matrix(za, "za") : require_matrix(zb, "zb");
  if (shapes.ok() && negatives.dims() != 2) shapes = require_matrix(negatives, "negatives");
  if (!shapes.ok()) {
    message = std::string(shapes.message());
    o.input_error = SIMCLR_VALUE_ERROR;
    o.input_error_message = message.c_str();
  } else {
    a = matrix<T>(za, za.dim_size(0), za.dim_size(1));
    b = matrix<T>(zb, zb.dim_size(0), zb.dim_size(1));
  }
  if (simclr_step_record(loss, &a, &b, nullptr, &o, record->flat<std::int64_t>().data()) !=
      SIMCLR_OK)
    return step_error("SimclrRecord");
  return tf::Status();
}

// za, zb [n, d], temperature, negatives [K, d] -> record [kRecordWords] int64: this replica's
// shapes, dtype, configuration (the negatives' scope among it) and the first error of its inputs
// (NaN or Inf in za, zb or the negatives, mismatched shapes, negatives of another width or dtype).
template <typename T, typename Tn>
class RecordOp : public tf::OpKernel {
 public:
  explicit RecordOp(tf::OpKernelConstruction* ctx) : tf::OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("negatives_scope", &negatives_scope_));
  }
  void Compute(tf::OpKernelContext* ctx) override {
    tf::Tensor* record = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, tf::TensorShape({kRecordWords}), &record));
    const LossHandle loss(ctx->input(2));
    OP_REQUIRES_OK(ctx, loss.status("SimclrRecord"));
    OP_REQUIRES_OK(ctx, write_record<T, Tn>(ctx->input(0), ctx->input(1), ctx->input(3),
                                            negatives_scope_, loss.get(), record));
  }

 private:
  int negatives_scope_ = 0;
};

// records [P, kRecordWords], za, zb [n, d], temperature, negatives [K, d] -> as NormalizeOp,
// rank_rows [P] (every replica's pairs) and the negatives' unit rows [K, d], after the agreement: an input error of any replica fails here on every replica
// alike, before the rows' all_gather, which a failed replica would never join.
template <typename T>
class AgreeNormalizeOp : public tf::OpKernel {
 public:
  explicit AgreeNormalizeOp(tf::OpKernelConstruction* ctx) : tf::OpKernel(ctx) {}
  void Compute(tf::OpKernelContext* ctx) override {
    const tf::Tensor& records = ctx->input(0);
    OP_REQUIRES_OK(ctx, require_records(records));
    const std::int64_t replicas = records.dim_size(0);
    tf::Tensor* rank_rows = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, tf::TensorShape({replicas}), &rank_rows));
    {
      const LossHandle loss(ctx->input(3));
      OP_REQUIRES_OK(ctx, loss.status("SimclrAgreeNormalize"));
      OP_REQUIRES(ctx,
                  simclr_step_agree(loss.get(), records.flat<std::int64_t>().data(),
                                    static_cast<std::int32_t>(replicas),
                                    rank_rows->flat<std::int64_t>().data()) == SIMCLR_OK,
                  step_error("SimclrAgreeNormalize"));
    }
    normalize_outputs<T>(ctx, ctx->input(1), ctx->input(2), "SimclrAgreeNormalize");
    // The extra negatives' unit rows (agreed above: their dtype is the views' when they have rows).
    const tf::Tensor& negatives = ctx->input(4);
    const std::int64_t k = negatives.dims() == 2 ? negatives.dim_size(0) : 0;
    const std::int64_t d = ctx->input(1).dim_size(1);
    tf::Tensor* unit = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, tf::TensorShape({k, d}), &unit));
    if (k == 0) return;
    OP_REQUIRES(ctx, negatives.dtype() == ctx->input(1).dtype(),
                tf::errors::InvalidArgument("simclr SimclrAgreeNormalize: negatives' dtype"));
    const simclr_matrix in = matrix<T>(negatives, k, d);
    const simclr_matrix out = matrix<T>(*unit, k, d);
    OP_REQUIRES(ctx, simclr_step_normalize_rows(&in, &out) == SIMCLR_OK,
                step_error("SimclrAgreeNormalize"));
  }
};

// upstream [n], temperature -> alpha [2n] as AlphaOp, and this replica's record of the backward
// [kRecordWords]: a failed alpha step (NaN or Inf in the upstream gradient) is not an error here
// but the record's input error, raised on every replica by SimclrAgreeBackward after the gathers
// that every replica then joins.
template <typename T>
class AlphaRecordOp : public SimclrKernel {
 public:
  using SimclrKernel::SimclrKernel;
  void Compute(tf::OpKernelContext* ctx) override {
    const tf::Tensor& upstream = ctx->input(0);
    OP_REQUIRES(ctx, upstream.dims() == 1,
                tf::errors::InvalidArgument("simclr: the upstream gradient must be [n], got ",
                                            upstream.shape().DebugString()));
    const std::int64_t n = upstream.dim_size(0);
    tf::Tensor* alpha = nullptr;
    tf::Tensor* record = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, tf::TensorShape({2 * n}), &alpha));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, tf::TensorShape({kRecordWords}), &record));
    const LossHandle loss(ctx->input(1));
    OP_REQUIRES_OK(ctx, loss.status("SimclrAlphaRecord"));
    simclr_call_options o = call_options(threads_);
    std::string message;
    const simclr_status status = simclr_step_alpha(loss.get(), dtype_of<T>(), n, n, nullptr, &o,
                                                   data<T>(upstream), n, data<T>(*alpha));
    if (status != SIMCLR_OK) {
      message = simclr_last_error();
      o.input_error = status;
      o.input_error_message = message.c_str();
      alpha->flat<T>().setZero();
    }
    // The rows were agreed on in the forward: this record describes no rows' values.
    const simclr_matrix rows = no_columns(n, dtype_of<T>());
    o.threads = 0;
    OP_REQUIRES(ctx,
                simclr_step_record(loss.get(), &rows, &rows, nullptr, &o,
                                   record->flat<std::int64_t>().data()) == SIMCLR_OK,
                step_error("SimclrAlphaRecord"));
  }
};

// records [P, kRecordWords] (every replica's backward record), then as BackwardOp: an alpha step
// that failed on any replica fails here on every replica alike.
template <typename T>
class AgreeBackwardOp : public BackwardOp<T> {
 public:
  using BackwardOp<T>::BackwardOp;
  void Compute(tf::OpKernelContext* ctx) override {
    const tf::Tensor& records = ctx->input(6);
    OP_REQUIRES_OK(ctx, require_records(records));
    {
      const LossHandle loss(ctx->input(5));
      OP_REQUIRES_OK(ctx, loss.status("SimclrAgreeBackward"));
      OP_REQUIRES(
          ctx,
          simclr_step_agree(loss.get(), records.flat<std::int64_t>().data(),
                            static_cast<std::int32_t>(records.dim_size(0)), nullptr) == SIMCLR_OK,
          step_error("SimclrAgreeBackward"));
    }
    BackwardOp<T>::Compute(ctx);
  }
};

tf::Status vector_of_unknown(InferenceContext* c, int output) {
  c->set_output(output, c->Vector(InferenceContext::kUnknownDim));
  return tf::Status();
}

}  // namespace

REGISTER_OP("SimclrNormalize")
    .Input("za: T")
    .Input("zb: T")
    .Output("u: T")
    .Output("squared_norms: T")
    .Attr("T: {float, double}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle a;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &a));
      DimensionHandle rows;
      TF_RETURN_IF_ERROR(c->Multiply(c->Dim(a, 0), 2, &rows));
      c->set_output(0, c->Matrix(rows, c->Dim(a, 1)));
      c->set_output(1, c->Vector(rows));
      return tf::Status();
    });

REGISTER_OP("SimclrForward")
    .Input("u_global: T")
    .Input("anchor_begin: int64")
    .Input("pairs: int64")
    .Input("temperature: double")
    .Input("negative_rows: int64")
    .Output("row_lse: T")
    .Output("per_example: T")
    .Attr("T: {float, double}")
    .Attr("threads: int = 0")
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(vector_of_unknown(c, 0));
      return vector_of_unknown(c, 1);
    });

REGISTER_OP("SimclrAlpha")
    .Input("upstream: T")
    .Input("temperature: double")
    .Output("alpha: T")
    .Attr("T: {float, double}")
    .Attr("threads: int = 0")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle g;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &g));
      DimensionHandle rows;
      TF_RETURN_IF_ERROR(c->Multiply(c->Dim(g, 0), 2, &rows));
      c->set_output(0, c->Vector(rows));
      return tf::Status();
    });

REGISTER_OP("SimclrBackward")
    .Input("u_global: T")
    .Input("anchor_begin: int64")
    .Input("squared_norms: T")
    .Input("lse_all: T")
    .Input("alpha_all: T")
    .Input("temperature: double")
    .Input("negative_rows: int64")
    .Output("grad_a: T")
    .Output("grad_b: T")
    .Attr("T: {float, double}")
    .Attr("threads: int = 0")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle u;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &u));
      c->set_output(0, c->Matrix(InferenceContext::kUnknownDim, c->Dim(u, 1)));
      c->set_output(1, c->Matrix(InferenceContext::kUnknownDim, c->Dim(u, 1)));
      return tf::Status();
    });

REGISTER_OP("SimclrRecord")
    .Input("za: T")
    .Input("zb: T")
    .Input("temperature: double")
    .Input("negatives: Tn")
    .Output("record: int64")
    .Attr("T: {float, double}")
    .Attr("Tn: {float, double}")
    .Attr("negatives_scope: int = 0")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->Vector(kRecordWords));
      return tf::Status();
    });

REGISTER_OP("SimclrAgreeNormalize")
    .Input("records: int64")
    .Input("za: T")
    .Input("zb: T")
    .Input("temperature: double")
    .Input("negatives: Tn")
    .Output("u: T")
    .Output("squared_norms: T")
    .Output("rank_rows: int64")
    .Output("negatives_unit: T")
    .Attr("T: {float, double}")
    .Attr("Tn: {float, double}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle records;
      ShapeHandle a;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &records));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &a));
      DimensionHandle rows;
      TF_RETURN_IF_ERROR(c->Multiply(c->Dim(a, 0), 2, &rows));
      c->set_output(0, c->Matrix(rows, c->Dim(a, 1)));
      c->set_output(1, c->Vector(rows));
      c->set_output(2, c->Vector(c->Dim(records, 0)));
      c->set_output(3, c->Matrix(InferenceContext::kUnknownDim, c->Dim(a, 1)));
      return tf::Status();
    });

REGISTER_OP("SimclrAlphaRecord")
    .Input("upstream: T")
    .Input("temperature: double")
    .Output("alpha: T")
    .Output("record: int64")
    .Attr("T: {float, double}")
    .Attr("threads: int = 0")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle g;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &g));
      DimensionHandle rows;
      TF_RETURN_IF_ERROR(c->Multiply(c->Dim(g, 0), 2, &rows));
      c->set_output(0, c->Vector(rows));
      c->set_output(1, c->Vector(kRecordWords));
      return tf::Status();
    });

REGISTER_OP("SimclrAgreeBackward")
    .Input("u_global: T")
    .Input("anchor_begin: int64")
    .Input("squared_norms: T")
    .Input("lse_all: T")
    .Input("alpha_all: T")
    .Input("temperature: double")
    .Input("records: int64")
    .Input("negative_rows: int64")
    .Output("grad_a: T")
    .Output("grad_b: T")
    .Attr("T: {float, double}")
    .Attr("threads: int = 0")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle u;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &u));
      c->set_output(0, c->Matrix(InferenceContext::kUnknownDim, c->Dim(u, 1)));
      c->set_output(1, c->Matrix(InferenceContext::kUnknownDim, c->Dim(u, 1)));
      return tf::Status();
    });

#define SIMCLR_REGISTER_KERNELS(T)                                                                 \
  REGISTER_KERNEL_BUILDER(Name("SimclrNormalize").Device(tf::DEVICE_CPU).TypeConstraint<T>("T"),   \
                          NormalizeOp<T>);                                                         \
  REGISTER_KERNEL_BUILDER(Name("SimclrForward").Device(tf::DEVICE_CPU).TypeConstraint<T>("T"),     \
                          ForwardOp<T>);                                                           \
  REGISTER_KERNEL_BUILDER(Name("SimclrAlpha").Device(tf::DEVICE_CPU).TypeConstraint<T>("T"),       \
                          AlphaOp<T>);                                                             \
  REGISTER_KERNEL_BUILDER(Name("SimclrBackward").Device(tf::DEVICE_CPU).TypeConstraint<T>("T"),    \
                          BackwardOp<T>);                                                          \
  REGISTER_KERNEL_BUILDER(Name("SimclrRecord")                                                     \
                              .Device(tf::DEVICE_CPU)                                              \
                              .TypeConstraint<T>("T")                                              \
                              .TypeConstraint<float>("Tn"),                                        \
                          RecordOp<T, float>);                                                     \
  REGISTER_KERNEL_BUILDER(Name("SimclrRecord")                                                     \
                              .Device(tf::DEVICE_CPU)                                              \
                              .TypeConstraint<T>("T")                                              \
                              .TypeConstraint<double>("Tn"),                                       \
                          RecordOp<T, double>);                                                    \
  REGISTER_KERNEL_BUILDER(                                                                         \
      Name("SimclrAgreeNormalize").Device(tf::DEVICE_CPU).TypeConstraint<T>("T"),                  \
      AgreeNormalizeOp<T>);                                                                        \
  REGISTER_KERNEL_BUILDER(Name("SimclrAlphaRecord").Device(tf::DEVICE_CPU).TypeConstraint<T>("T"), \
                          AlphaRecordOp<T>);                                                       \
  REGISTER_KERNEL_BUILDER(                                                                         \
      Name("SimclrAgreeBackward").Device(tf::DEVICE_CPU).TypeConstraint<T>("T"),                   \
      AgreeBackwardOp<T>);

SIMCLR_REGISTER_KERNELS(float)
SIMCLR_REGISTER_KERNELS(double)

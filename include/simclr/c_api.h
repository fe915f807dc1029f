/*
 * simclr C API: the narrow binding surface for framework front ends (Python, TensorFlow custom ops,
 * XLA FFI handlers). Plain C: opaque handles, plain structs for matrix views, status codes, and a
 * thread-local message for the last failure. No C++ exception crosses it, and no C++ type, so code
 * built with another compiler, standard library or ABI setting (a TensorFlow op) can call it.
 *
 * Every function that can fail returns a simclr_status; on failure simclr_last_error() gives the
 * message (the same text the C++ API would throw). Outputs are written only on success.
 *
 * Where each function lives: the core library (target simclr::simclr) defines everything here but
 * simclr_comm_create_mpi (target simclr::mpi, when SIMCLR_HAS_MPI) and the simclr_device_* calls
 * (target simclr::cuda, when SIMCLR_HAS_CUDA); <simclr/build_config.hpp> says what a build has.
 */
#ifndef SIMCLR_C_API_H_
#define SIMCLR_C_API_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status and errors ---- */

typedef enum simclr_status {
  SIMCLR_OK = 0,
  SIMCLR_VALUE_ERROR = 1,   /* simclr::ValueError: shapes, NaN/Inf, config values, the
                               distribution rule. Python: ValueError */
  SIMCLR_TYPE_ERROR = 2,    /* simclr::TypeError: unknown config key, wrong dtype. Python: TypeError */
  SIMCLR_COMM_ERROR = 3,    /* simclr::CommError: a collective failed or timed out */
  SIMCLR_DEVICE_ERROR = 4,  /* simclr::DeviceError: CUDA, cuBLAS, device out of memory */
  SIMCLR_UNSUPPORTED = 5,   /* this build or this call lacks what is asked (a dtype, a device) */
  SIMCLR_INTERNAL_ERROR = 6 /* anything else: host out of memory, a broken invariant */
} simclr_status;

/* The message of the last failed call on this thread ("" if none). Valid until the next call of
 * this API on the same thread. Never NULL. */
const char* simclr_last_error(void);

/* "MAJOR.MINOR.PATCH" of the library. */
const char* simclr_version(void);

/* ---- values ---- */

typedef enum simclr_dtype {
  SIMCLR_FLOAT32 = 1,
  SIMCLR_FLOAT64 = 2, /* host calls only */
  SIMCLR_FLOAT16 = 3, /* device calls only */
  SIMCLR_BFLOAT16 = 4 /* device calls only */
} simclr_dtype;

typedef enum simclr_reduction {
  SIMCLR_REDUCTION_AUTO = 0, /* resolves to SUM_OVER_BATCH_SIZE */
  SIMCLR_REDUCTION_NONE = 1,
  SIMCLR_REDUCTION_SUM = 2,
  SIMCLR_REDUCTION_SUM_OVER_BATCH_SIZE = 3
} simclr_reduction;

/* A [rows, cols] row-major view of caller-owned memory. row_stride is in elements (>= cols; the
 * library reads or writes rows at data + i * row_stride). device: -1 for host memory, otherwise the
 * CUDA device ordinal the memory lives on. Never owned by the library. */
typedef struct simclr_matrix {
  void* data;
  int64_t rows;
  int64_t cols;
  int64_t row_stride;
  simclr_dtype dtype;
  int32_t device;
} simclr_matrix;

/* Keras sample_weight, float64 values in row-major order: ndim 0 (a scalar), 1 ([N] or [1]) or 2
 * ([N, 1] or [1, 1]); shape[0..ndim) gives the dimensions. The rules are those of the C++
 * SampleWeight (docs/semantics.md). */
typedef struct simclr_weight {
  const double* values;
  int32_t ndim;
  int32_t reserved;
  int64_t shape[2];
} simclr_weight;

/* ---- the loss ---- */

typedef struct simclr_loss* simclr_loss_t;

/* TensorFlow Similarity's SimCLRLoss. name may be NULL (the TF Similarity default). Fails with
 * SIMCLR_VALUE_ERROR for temperature <= 0, NaN or Inf. */
simclr_status simclr_loss_create(double temperature, simclr_reduction reduction, const char* name,
                                 simclr_loss_t* out);
/* From get_config() JSON text, or the Keras wrapper {"class_name": ..., "config": {...}}. */
simclr_status simclr_loss_from_config(const char* json, simclr_loss_t* out);
/* get_config() as JSON text ({"reduction": ..., "name": ..., "temperature": ...}), NUL-terminated
 * into buffer when it fits capacity (including the NUL); *length (if not NULL) always gets the
 * text's length without the NUL. Fails with SIMCLR_VALUE_ERROR when it does not fit. */
simclr_status simclr_loss_get_config(simclr_loss_t loss, char* buffer, size_t capacity,
                                     size_t* length);
/* NULL is allowed. */
void simclr_loss_destroy(simclr_loss_t loss);

/* ---- communicators ---- */

typedef struct simclr_comm* simclr_comm_t;

/* A communicator whose collectives are the caller's functions, for front ends whose framework owns
 * the collectives (torch.distributed, mpi4py). Every rank calls them in the same order. A function
 * returns 0 on success; otherwise nonzero, with a NUL-terminated message written into error (at most
 * error_capacity bytes), and the library raises SIMCLR_COMM_ERROR with it.
 *   all_gather:   every rank sends `bytes` bytes; recv gets size * bytes, rank r's at r * bytes.
 *   all_gather_v: rank r sends recv_bytes[r] bytes (send_bytes on this rank); recv gets them back to
 *                 back in rank order. recv_bytes has `size` entries, the same on every rank.
 *   barrier:      returns when every rank has entered it (may be NULL: then a 1-byte all_gather).
 * The balanced schedule's reduce-scatters (EngineOptions::schedule) go through all_gather_v: every
 * rank gathers every rank's whole vector and sums its own segment on the host, size times the bytes
 * of a real reduce-scatter (there is no reduce_scatter callback); schedule auto counts that cost.
 *   release:      called once by simclr_comm_destroy with user (may be NULL); not called when
 *                 simclr_comm_create_callbacks fails, so the caller still owns user then. */
typedef struct simclr_comm_callbacks {
  void* user;
  int32_t rank;
  int32_t size;
  int (*all_gather)(void* user, const void* send, size_t bytes, void* recv, char* error,
                    size_t error_capacity);
  int (*all_gather_v)(void* user, const void* send, size_t send_bytes, void* recv,
                      const size_t* recv_bytes, char* error, size_t error_capacity);
  int (*barrier)(void* user, char* error, size_t error_capacity);
  void (*release)(void* user);
} simclr_comm_callbacks;

/* backend names the communicator in messages ("torch.distributed", "mpi4py"); may be NULL. */
simclr_status simclr_comm_create_callbacks(const simclr_comm_callbacks* callbacks,
                                           const char* backend, simclr_comm_t* out);
/* A communicator of one rank (the distributed code path without any transport). */
simclr_status simclr_comm_create_single(simclr_comm_t* out);
/* An MPI communicator over a duplicate of the caller's communicator, given by its Fortran handle
 * (MPI_Comm_c2f; mpi4py's Comm.py2f()). timeout_seconds > 0 bounds every collective (0: none).
 * Defined by simclr::mpi. Collective over the caller's communicator. */
simclr_status simclr_comm_create_mpi(int64_t fortran_handle, double timeout_seconds,
                                     simclr_comm_t* out);
int32_t simclr_comm_rank(simclr_comm_t comm);
int32_t simclr_comm_size(simclr_comm_t comm);
/* NULL is allowed. */
void simclr_comm_destroy(simclr_comm_t comm);

/* ---- one call ---- */

#define SIMCLR_GLOBAL_BATCH_NONE (-2)
#define SIMCLR_GLOBAL_BATCH_INFER (-1)

typedef struct simclr_call_options {
  simclr_comm_t comm;        /* NULL: a local call; otherwise collective over comm's ranks */
  int64_t global_batch_size; /* SIMCLR_GLOBAL_BATCH_NONE, SIMCLR_GLOBAL_BATCH_INFER or >= 0 */
  int32_t threads;           /* CPU threads; 0: the process default */
  int32_t symmetric;         /* 1: use the symmetry of the logits where it applies (default) */
  size_t memory_budget_bytes; /* CPU: bytes for a kept logits block; 0: the default */
  size_t workspace_bytes;     /* device: workspace tile bytes; 0: the default */
} simclr_call_options;

/* The defaults: no communicator, no global batch size, default threads, memory and symmetry. */
void simclr_call_options_init(simclr_call_options* options);

/* What a forward found, beside its outputs. */
typedef struct simclr_forward_info {
  simclr_reduction reduction; /* resolved: never AUTO */
  int32_t ranks;              /* 1 for a local call */
  int64_t rows;               /* this rank's n */
  int64_t row_offset;         /* this rank's first global row */
  int64_t global_rows;        /* G */
  double objective;           /* this rank's J_r: the reduced loss, or for none the sum */
  double flops;               /* performed by the forward */
} simclr_forward_info;

/* What a forward keeps for its backward (opaque). Holds a reference to the call's communicator,
 * which must outlive it. (The struct tag differs from the function simclr_forward so that the header
 * also compiles as C++.) */
typedef struct simclr_forward_state* simclr_forward_t;

/* Forward on host memory. za, zb: [n, d] float32 or float64 (the same dtype, device -1); weight may
 * be NULL. Writes values ([n] weighted per-example loss for reduction none, otherwise [1], the
 * reduced loss; the input dtype), per_example ([n] unweighted; may be NULL), info (may be NULL) and
 * saved (may be NULL when no backward follows; release it with simclr_forward_destroy). Collective
 * when options->comm is set: bad input on any rank fails with the same status and message on every
 * rank. options may be NULL (a local call with the defaults). */
simclr_status simclr_forward(simclr_loss_t loss, const simclr_matrix* za, const simclr_matrix* zb,
                             const simclr_weight* weight, const simclr_call_options* options,
                             void* values, void* per_example, simclr_forward_info* info,
                             simclr_forward_t* saved);

/* Backward of a forward on host memory: writes dJ/dza and dJ/dzb ([n, d], the input dtype) into
 * grad_a and grad_b. upstream: upstream_count values of the input dtype; 1 is a scalar gradient of
 * the reduced loss (for none, applied to every example), n a per-example gradient (reduction none
 * only). Collective when the forward was: the output buffers are checked after the collective, so a
 * bad buffer on one rank fails there alone, while upstream and upstream_count must be valid on every
 * rank (a per-example count of the wrong length fails on every rank). May be called more than once. */
simclr_status simclr_backward(simclr_loss_t loss, simclr_forward_t saved, const void* upstream,
                              int64_t upstream_count, const simclr_matrix* grad_a,
                              const simclr_matrix* grad_b);

/* Rows of every rank, as the forward's agreement step found them: writes min(capacity, ranks)
 * entries and returns ranks. */
int32_t simclr_forward_rank_rows(simclr_forward_t saved, int64_t* rows, int32_t capacity);

/* NULL is allowed. */
void simclr_forward_destroy(simclr_forward_t saved);

/* ---- device calls (simclr::cuda) ---- */

/* The same on CUDA device memory, enqueued on cuda_stream (a cudaStream_t; NULL is the legacy
 * default stream). za, zb: float32, float16 or bfloat16 on the current device. values and
 * per_example are device buffers of the input dtype. Only local calls (options->comm NULL) for now:
 * a communicator fails with SIMCLR_UNSUPPORTED. The outputs are copied with cudaMemcpyAsync on
 * cuda_stream (ready in stream order); info->objective is read back to the host, which synchronises
 * the stream (pass info NULL to avoid that). The device loss of a simclr_loss_t is made on first use
 * and serves one host thread at a time (calls on the same loss are serialised). Defined by
 * simclr::cuda (SIMCLR_HAS_CUDA). */
simclr_status simclr_device_forward(simclr_loss_t loss, const simclr_matrix* za,
                                    const simclr_matrix* zb, const simclr_call_options* options,
                                    void* cuda_stream, void* values, void* per_example,
                                    simclr_forward_info* info, simclr_forward_t* saved);
/* Backward of a device forward with a scalar upstream gradient, into device buffers grad_a, grad_b
 * (the input dtype), enqueued on cuda_stream. */
simclr_status simclr_device_backward(simclr_loss_t loss, simclr_forward_t saved, float upstream,
                                     const simclr_matrix* grad_a, const simclr_matrix* grad_b,
                                     void* cuda_stream);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* SIMCLR_C_API_H_ */

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
  int32_t schedule;           /* distributed calls: SIMCLR_SCHEDULE_* (docs/performance.md) */
  int32_t gradient_reduction; /* distributed calls: SIMCLR_GRADIENT_SUM (default) or _MEAN */
  /* A front end that rejects this rank's inputs itself (not a tensor, an integer dtype, a tensor
   * kind it cannot hand over) still makes the call, with input_error set to the status it would
   * raise (SIMCLR_VALUE_ERROR, SIMCLR_TYPE_ERROR or SIMCLR_UNSUPPORTED) and input_error_message to
   * its message; za, zb, weight and the outputs may then be NULL. A local call fails with that
   * status and message at once; a collective call carries it through the agreement step, so every
   * rank fails with it (the message naming this rank) and none is left waiting. SIMCLR_OK (0): none. */
  simclr_status input_error;
  const char* input_error_message;
  /* use_temperature 1: this call runs at `temperature` instead of the loss's (a learnable
   * temperature that changes every step; the loss's get_config() keeps its own). Checked as the
   * loss's (SIMCLR_VALUE_ERROR "temperature must be a finite number > 0, got ..."); distributed, every
   * rank must pass the same. 0 (default): the loss's; temperature is then ignored. */
  int32_t use_temperature;
  double temperature;
  /* 1: the backward also gives dJ/dT (simclr_backward_temperature, simclr_step_backward_temperature);
   * 0 (default): it does not, and costs nothing more. Distributed, each rank gets its share under
   * gradient_reduction: the ranks' shares sum (SUM) or average (MEAN) to the global dJ/dT, as the
   * embeddings' parameter gradients do (docs/distributed.md). Ranks may differ in it. Host calls only:
   * the device calls refuse it (SIMCLR_UNSUPPORTED), and use_temperature too. */
  int32_t temperature_gradient;
  /* Extra negatives (a memory bank; docs/api.md, "Extra negatives"). simclr_forward: negatives is a
   * host matrix [K, d] of the views' dtype (K may be 0; NULL: none), L2-normalised by the call, whose
   * rows join every anchor's candidates as negatives only (never anchors or positives; they get no
   * gradient); read during the forward only. negatives_scope: SIMCLR_NEGATIVES_LOCAL (default; a
   * distributed call's anchors see this rank's rows) or SIMCLR_NEGATIVES_GLOBAL (every rank's,
   * gathered); every rank must pass the same. A distributed call with negatives on any rank runs the
   * own_rows schedule. The step calls take the negatives inside u_global instead: negative_rows K
   * says that its last K rows are the negatives' unit rows (simclr_step_normalize_rows), after the
   * batch's 2G; lse_all and alpha_all stay [2G]; negatives is ignored there. The device calls refuse
   * both (SIMCLR_UNSUPPORTED). */
  const simclr_matrix* negatives;
  int32_t negatives_scope;
  int64_t negative_rows;
} simclr_call_options;

#define SIMCLR_NEGATIVES_LOCAL 0
#define SIMCLR_NEGATIVES_GLOBAL 1

/* The gradient convention of a distributed call (docs/distributed.md): SUM gives each rank dJ/dz of
 * J = the sum over ranks of their losses (TensorFlow's strategies sum replica gradients); MEAN gives
 * that times the number of ranks, for frameworks that average replica gradients (DDP, Horovod,
 * jax.lax.pmean), whose mean is then the sum. Every rank must pass the same (checked). */
#define SIMCLR_GRADIENT_SUM 0
#define SIMCLR_GRADIENT_MEAN 1

/* Which rank computes which blocks of the logits in a distributed call (EngineOptions::schedule,
 * cuda::DeviceOptions::schedule). AUTO: the cost model on the CPU; own_rows on the device. Every
 * rank must pass the same. */
#define SIMCLR_SCHEDULE_AUTO 0
#define SIMCLR_SCHEDULE_OWN_ROWS 1
#define SIMCLR_SCHEDULE_BALANCED 2

/* The defaults: no communicator, no global batch size, default threads, memory, symmetry and
 * schedule (AUTO), gradient SUM, no input error, the loss's temperature, no dJ/dT, no extra
 * negatives (scope LOCAL). */
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

/* simclr_backward, and dJ/dT (docs/math.md section 4.6): one value of the input dtype written to
 * grad_temperature (may be NULL: then exactly simclr_backward). Distributed, this rank's share
 * (simclr_call_options.temperature_gradient). SIMCLR_VALUE_ERROR when grad_temperature is set but the
 * forward's options did not set temperature_gradient; like a bad output buffer, that is checked after
 * the collective and fails on this rank alone. */
simclr_status simclr_backward_temperature(simclr_loss_t loss, simclr_forward_t saved,
                                          const void* upstream, int64_t upstream_count,
                                          const simclr_matrix* grad_a, const simclr_matrix* grad_b,
                                          void* grad_temperature);

/* Rows of every rank, as the forward's agreement step found them: writes min(capacity, ranks)
 * entries and returns ranks. */
int32_t simclr_forward_rank_rows(simclr_forward_t saved, int64_t* rows, int32_t capacity);

/* NULL is allowed. */
void simclr_forward_destroy(simclr_forward_t saved);

/* ---- device communicators (simclr::cuda) ---- */

/* A communicator for the device calls whose collectives are the caller's functions, for front ends
 * whose framework owns the collectives on device memory (torch.distributed over NCCL). Every rank
 * calls them in the same order. Return values and error as simclr_comm_callbacks.
 *   all_gather_v:    DEVICE buffers. Rank r sends recv_bytes[r] bytes (send_bytes on this rank);
 *                    recv gets them back to back in rank order. recv_bytes has `size` entries, the
 *                    same on every rank (entries may be 0). The transfer must be ordered on
 *                    cuda_stream (a cudaStream_t, the stream of the library's call): it may read send
 *                    only after the work enqueued on cuda_stream before the call, and work the
 *                    library enqueues on cuda_stream after it returns must see recv filled. It need
 *                    not wait for the transfer on the host (NCCL's ncclAllGather on cuda_stream, or
 *                    a framework collective that makes cuda_stream wait for it).
 *   host_all_gather: HOST buffers, for the small agreement records (512 bytes a rank) every
 *                    distributed call starts with: every rank sends `bytes` bytes; recv gets
 *                    size * bytes, rank r's at r * bytes, filled when the function returns.
 *   barrier:         returns when every rank has entered it and cuda_stream's work is done (may be
 *                    NULL: then cudaStreamSynchronize and a 1-byte host_all_gather).
 *   release:         called once by simclr_comm_destroy with user (may be NULL); not called when
 *                    simclr_comm_create_device_callbacks fails.
 * There is no reduce-scatter callback yet, so SIMCLR_SCHEDULE_BALANCED runs as own_rows over such a
 * communicator (the NCCL communicator of the C++ API has the schedule). */
typedef struct simclr_device_comm_callbacks {
  void* user;
  int32_t rank;
  int32_t size;
  int (*all_gather_v)(void* user, const void* send, size_t send_bytes, void* recv,
                      const size_t* recv_bytes, void* cuda_stream, char* error,
                      size_t error_capacity);
  int (*host_all_gather)(void* user, const void* send, size_t bytes, void* recv, char* error,
                         size_t error_capacity);
  int (*barrier)(void* user, void* cuda_stream, char* error, size_t error_capacity);
  void (*release)(void* user);
} simclr_device_comm_callbacks;

/* A communicator the device calls take (options->comm); host calls refuse it (SIMCLR_UNSUPPORTED),
 * as device calls refuse host communicators. backend names it in messages; may be NULL. Defined by
 * simclr::cuda. */
simclr_status simclr_comm_create_device_callbacks(const simclr_device_comm_callbacks* callbacks,
                                                  const char* backend, simclr_comm_t* out);
/* 1 when comm moves device buffers (a device communicator), 0 when host buffers, -1 for NULL. */
int32_t simclr_comm_is_device(simclr_comm_t comm);

/* ---- device calls (simclr::cuda) ---- */

/* The same on CUDA device memory, enqueued on cuda_stream (a cudaStream_t; NULL is the legacy
 * default stream). za, zb: float32, float16 or bfloat16 on the current device. values and
 * per_example are device buffers of the input dtype. options->comm: NULL for a local call, or a
 * device communicator (simclr_comm_create_device_callbacks): then the call is collective over its
 * ranks (rows may differ between ranks and may be 0), and bad input on any rank, the C-level
 * argument checks included, fails with the same status and message on every rank; a host
 * communicator fails with SIMCLR_UNSUPPORTED (a NULL saved or a host communicator fails on its rank
 * alone). No sample weight here (simclr_device_forward_async takes one). The outputs are copied
 * with cudaMemcpyAsync on cuda_stream (ready in stream order); info->objective is read back to the
 * host, which synchronises the stream (pass info NULL to avoid that). The device loss of a simclr_loss_t is made on first use
 * and serves one host thread at a time (calls on the same loss are serialised). Defined by
 * simclr::cuda (SIMCLR_HAS_CUDA). */
simclr_status simclr_device_forward(simclr_loss_t loss, const simclr_matrix* za,
                                    const simclr_matrix* zb, const simclr_call_options* options,
                                    void* cuda_stream, void* values, void* per_example,
                                    simclr_forward_info* info, simclr_forward_t* saved);
/* Backward of a device forward with a scalar upstream gradient, into device buffers grad_a, grad_b
 * (the input dtype), enqueued on cuda_stream. Collective when the forward was (its communicator
 * must still exist): an error in grad_a or grad_b on one rank fails on every rank. */
simclr_status simclr_device_backward(simclr_loss_t loss, simclr_forward_t saved, float upstream,
                                     const simclr_matrix* grad_a, const simclr_matrix* grad_b,
                                     void* cuda_stream);

/* ---- asynchronous device calls with a caller workspace (simclr::cuda) ----
 * For frameworks (PyTorch, XLA): nothing synchronises the host, nothing is allocated when a
 * workspace is given, and the state the backward needs lives in the forward's workspace, which the
 * caller keeps (unmodified) until the backward has run in stream order. docs/gpu.md. */

#define SIMCLR_DEVICE_STATUS_SLOTS 4

typedef struct simclr_device_call {
  int32_t async;         /* 1: no host synchronisation; NaN/Inf recorded in the status array */
  void* workspace;       /* device memory, 256-byte aligned; NULL: the library allocates */
  size_t workspace_size; /* bytes at workspace (>= what simclr_device_workspace_size says) */
  void* cublas_handle;   /* a cublasHandle_t of the caller, or NULL (one cached per device and thread) */
  /* Forward only: Keras sample_weight, weight_size float32 values in device memory, in the Keras
   * shape weight_shape[0..weight_ndim) ([], [N], [N, 1], [1], [1, 1]; weight_ndim -1: [weight_size]),
   * checked by the same rules as simclr_weight (Incompatible shapes ..., rank 3 and more refused);
   * 1 value weighs every example alike, n one each. NULL: no weight. Checked for NaN/Inf as za is
   * (status slot 2). The backward uses the forward's. */
  const float* weight;
  int64_t weight_size;
  int32_t weight_ndim;
  int64_t weight_shape[2];
  /* Forward only, with a workspace: when scratch is set, workspace holds only what the backward
   * reads (simclr_device_forward_saved_size's bytes, the status array first) and scratch
   * (scratch_size >= forward_bytes - saved_bytes, 256-byte aligned) the rest: the logits tile and
   * staging arrays, free for other use once the forward's work is done in stream order. NULL: the
   * workspace holds everything. */
  void* scratch;
  size_t scratch_size;
} simclr_device_call;

/* async 0, no workspace, no scratch, no handle, no weight (weight_ndim -1). */
void simclr_device_call_init(simclr_device_call* call);

/* Bytes of workspace a forward and a backward need for rows n of this rank, global_rows G (n when
 * local), dim d and dtype, with options' tiles and symmetry (options may be NULL). */
simclr_status simclr_device_workspace_size(int64_t rows, int64_t global_rows, int64_t dim,
                                           simclr_dtype dtype, const simclr_call_options* options,
                                           size_t* forward_bytes, size_t* backward_bytes);
/* The leading part of forward_bytes that the backward reads (the saved state, and the outputs the
 * library holds): the workspace's size when simclr_device_call.scratch takes the rest. */
simclr_status simclr_device_forward_saved_size(int64_t rows, int64_t global_rows, int64_t dim,
                                               simclr_dtype dtype,
                                               const simclr_call_options* options,
                                               size_t* saved_bytes);

/* Forward as simclr_device_forward, but writing straight into the caller's device buffers values
 * ([n] for none, else [1]; input dtype), per_example ([n], input dtype; may be NULL) and objective
 * ([1] float32; may be NULL), all on cuda_stream; info->objective is NaN (read objective instead).
 * With call->async, bad input is recorded in the status array: SIMCLR_DEVICE_STATUS_SLOTS uint64 at
 * the start of the workspace (or, without one, simclr_device_status), each the flat index of the
 * first NaN/Inf of za, zb, the weight and a backward's upstream, or UINT64_MAX. */
simclr_status simclr_device_forward_async(simclr_loss_t loss, const simclr_matrix* za,
                                          const simclr_matrix* zb,
                                          const simclr_call_options* options,
                                          const simclr_device_call* call, void* cuda_stream,
                                          void* values, void* per_example, void* objective,
                                          simclr_forward_info* info, simclr_forward_t* saved);
/* Backward into grad_a, grad_b on cuda_stream with the scalar upstream, or (reduction none only)
 * with upstream_per_example: [n] float32 in device memory (NULL: the scalar). call->workspace (if
 * any) is scratch of simclr_device_workspace_size's backward_bytes. */
simclr_status simclr_device_backward_async(simclr_loss_t loss, simclr_forward_t saved,
                                           float upstream, const float* upstream_per_example,
                                           const simclr_matrix* grad_a,
                                           const simclr_matrix* grad_b,
                                           const simclr_device_call* call, void* cuda_stream);
/* The device address of a device forward's status array (NULL for a host forward). */
void* simclr_device_status(simclr_forward_t saved);

/* ---- step calls for frameworks whose collectives are graph ops ---- */

/* For front ends whose framework gathers the rows and the per-row scalars itself, as graph
 * operations (XLA FFI handlers under jax.jit and shard_map: the gathers are XLA all-gathers). Each
 * call is one local step of simclr_forward / simclr_backward over data the caller has already
 * gathered; they share the core's code (normalisation, engine, reduction, weights), keep nothing
 * between calls and never communicate. Host memory; every matrix and buffer of one call has the
 * same dtype, float32 or float64.
 *
 * The steps of one rank with n pairs in a group of ranks holding G pairs in all:
 *   forward:  simclr_step_normalize(za, zb) -> u_local [2n, d], squared_norms [2n]
 *             (caller) u_global [2G, d] = the u_local of every rank, rank by rank
 *             simclr_step_forward(u_global, anchor_begin = 2 * rows before this rank, n) -> row_lse
 *             [2n], values, per_example
 *   backward: simclr_step_alpha(upstream, weight) -> alpha [2n]
 *             (caller) lse_all [2G], alpha_all [2G] = every rank's row_lse and alpha, rank by rank
 *             simclr_step_backward(u_global, anchor_begin, n, squared_norms, lse_all, alpha_all)
 *             -> grad_a, grad_b [n, d]
 * A single process is the group of one rank: u_global = u_local, anchor_begin 0. The options give
 * threads, symmetric and global_batch_size (comm must be NULL; no logits block is kept, as nothing
 * outlives a call): sum_over_batch_size divides by n for SIMCLR_GLOBAL_BATCH_NONE, by G for
 * SIMCLR_GLOBAL_BATCH_INFER, else by the count; with more than one rank (u_global has more rows than
 * 2n) it needs a global batch size, as the collective calls do. The call's temperature
 * (use_temperature, temperature) applies to simclr_step_record, _forward and _backward alike: pass the
 * same options to the three. */

/* The checks of a call's inputs that need only their shapes, for front ends that know the shapes
 * before the data (JAX and TensorFlow at trace time): za and zb 2-D and alike, and the sample_weight
 * rules of simclr_weight (weight_ndim -1: no weight; any rank is taken, so a rank-3 weight gets the
 * library's own refusal). SIMCLR_VALUE_ERROR with the same message a call would give. */
simclr_status simclr_check_shapes(const int64_t* za_shape, int32_t za_ndim, const int64_t* zb_shape,
                                  int32_t zb_ndim, const int64_t* weight_shape, int32_t weight_ndim);

/* The checks of a call's extra negatives that need only their shape and dtype, for front ends that
 * know them before the data (trace time): a 2-D [K, d] shape, a negatives_scope that is
 * SIMCLR_NEGATIVES_LOCAL or _GLOBAL, and when K > 0 the views' dtype (views_dtype; SIMCLR_TYPE_ERROR)
 * and width dim (SIMCLR_VALUE_ERROR), with simclr_forward's messages. */
simclr_status simclr_check_negatives(const int64_t* shape, int32_t ndim, simclr_dtype dtype,
                                     int32_t negatives_scope, int64_t dim,
                                     simclr_dtype views_dtype);

/* The agreement of a distributed step: before the first gather of a step a rank may stall in (XLA's
 * all-gather has no error path), every rank writes its record with simclr_step_record, the
 * framework all-gathers the records ([ranks, SIMCLR_RECORD_BYTES] bytes, rank order), and
 * simclr_step_agree fails on every rank with the same status and message, or on none. This is the
 * agreement step of simclr_forward, cut at its gather. */
#define SIMCLR_RECORD_BYTES 512

/* This rank's record (SIMCLR_RECORD_BYTES bytes written to record): rows, dimension, dtype, the
 * loss's configuration, options' global batch size, schedule, gradient reduction and negatives
 * scope, and the first error of this rank's inputs: options->input_error, the checks of
 * simclr_forward on za, zb, weight and options->negatives when set (shapes, dtype, NaN/Inf, the
 * sample_weight rules; the negatives' rows are then recorded too). An input error does not fail this call
 * (it is in the record, for simclr_step_agree to raise everywhere); only a NULL loss or record does. */
simclr_status simclr_step_record(simclr_loss_t loss, const simclr_matrix* za, const simclr_matrix* zb,
                                 const simclr_weight* weight, const simclr_call_options* options,
                                 void* record);
/* The same record from shapes alone, for a front end that must agree before its data reaches the
 * library (the PyTorch CUDA route sizes its device workspace with every rank's rows): rows, cols and
 * dtype as this rank's call will pass them, options as it will pass them (input_error, a rejection
 * of this rank's input, travels in the record; rows and cols are then ignored). Reads no data; the
 * call itself checks the values later. Fails only for a NULL loss or record. */
simclr_status simclr_record_call(simclr_loss_t loss, int64_t rows, int64_t cols, simclr_dtype dtype,
                                 const simclr_call_options* options, void* record);
/* Every rank's records (ranks * SIMCLR_RECORD_BYTES bytes): fails with the first failing rank's
 * status and message (naming the rank), or with a cross-rank mismatch (dtype, dimension,
 * configuration, options) or the distribution rule, identically on every rank. On success writes
 * every rank's rows to rank_rows[0..ranks) (may be NULL). */
simclr_status simclr_step_agree(simclr_loss_t loss, const void* records, int32_t ranks,
                                int64_t* rank_rows);

/* u_local [2n, d] (written) = [l2_normalize(za); l2_normalize(zb)]; squared_norms [2n] (written)
 * the squared row norms before normalisation. za, zb: [n, d]. SIMCLR_VALUE_ERROR for a shape
 * mismatch or NaN/Inf in za or zb (the message names the view, the row and the column). */
simclr_status simclr_step_normalize(const simclr_matrix* za, const simclr_matrix* zb,
                                    const simclr_matrix* u_local, void* squared_norms);

/* out [K, d] (written) = l2_normalize(x), x [K, d] (the dtype of out): the extra negatives' unit rows,
 * for the caller to place after the batch's rows in u_global (simclr_call_options.negative_rows).
 * SIMCLR_VALUE_ERROR for a shape mismatch or NaN/Inf in x (named "negatives"). */
simclr_status simclr_step_normalize_rows(const simclr_matrix* x, const simclr_matrix* out);

/* The forward of this rank's 2n anchors (rows [anchor_begin, anchor_begin + 2n) of u_global, the
 * gathered unit rows [2G, d]) against every row. Writes row_lse [2n] (each anchor's log-sum-exp
 * over every other row, which every rank's backward reads), per_example [n] (unweighted; may be
 * NULL) and values: [n] weighted per-example losses for reduction none, otherwise [1], this rank's
 * reduced loss. weight: this rank's Keras sample_weight, or NULL. */
simclr_status simclr_step_forward(simclr_loss_t loss, const simclr_matrix* u_global,
                                  int64_t anchor_begin, int64_t pairs, const simclr_weight* weight,
                                  const simclr_call_options* options, void* row_lse,
                                  void* per_example, void* values);

/* alpha [2n] (written, dtype): the weight of each of this rank's 2n anchors' cross entropy in the
 * objective, from the upstream gradient of this rank's loss (upstream_count 1: a scalar; n: per
 * example, reduction none only), the sample weights and the reduction. global_pairs: G. */
simclr_status simclr_step_alpha(simclr_loss_t loss, simclr_dtype dtype, int64_t pairs,
                                int64_t global_pairs, const simclr_weight* weight,
                                const simclr_call_options* options, const void* upstream,
                                int64_t upstream_count, void* alpha);

/* dJ/dza and dJ/dzb ([n, d], written into grad_a and grad_b) of J = sum over all 2G rows of
 * alpha_q CE_q, from the forward's u_global, anchor_begin and pairs, this rank's squared_norms [2n]
 * (simclr_step_normalize) and every rank's row_lse and alpha (lse_all, alpha_all: [2G]). */
simclr_status simclr_step_backward(simclr_loss_t loss, const simclr_matrix* u_global,
                                   int64_t anchor_begin, int64_t pairs, const void* squared_norms,
                                   const void* lse_all, const void* alpha_all,
                                   const simclr_call_options* options, const simclr_matrix* grad_a,
                                   const simclr_matrix* grad_b);

/* simclr_step_backward, and this rank's share of dJ/dT (docs/math.md section 4.6) written to
 * grad_temperature (one value of u_global's dtype; may be NULL: then exactly simclr_step_backward):
 * -(1 / 2T) times the sum over this rank's anchors of u_q . dJ/du_q. The shares of all ranks add up
 * to dJ/dT (alpha carries the gradient convention, as for grad_a and grad_b). */
simclr_status simclr_step_backward_temperature(simclr_loss_t loss, const simclr_matrix* u_global,
                                               int64_t anchor_begin, int64_t pairs,
                                               const void* squared_norms, const void* lse_all,
                                               const void* alpha_all,
                                               const simclr_call_options* options,
                                               const simclr_matrix* grad_a,
                                               const simclr_matrix* grad_b, void* grad_temperature);

/* ---- device step calls (simclr::cuda), for frameworks whose collectives are graph ops on the GPU ----
 * The step calls above on CUDA device memory, enqueued on cuda_stream (a cudaStream_t): XLA FFI
 * handlers on the GPU (simclr_loss.jax) gather between them with XLA's own all-gathers. Matrices
 * are float32, float16 or bfloat16 on the current device (u_local and u_global dense, row_stride =
 * cols); squared_norms, row_lse, alpha, lse_all and alpha_all are float32 device vectors whatever the
 * matrices' dtype; values and per_example have the matrices' dtype. call (may be NULL) gives the
 * workspace (scratch of simclr_device_step_workspace_size's bytes for that step; free once the step
 * has run in stream order; NULL: stream-ordered allocations), the cuBLAS handle and, for the forward
 * and alpha steps, the device sample weight (its Keras shape as simclr_device_call documents).
 * call->async is ignored: these steps never check values and never synchronise the host, except
 * simclr_device_step_check, which exists to do so. Nothing is kept between calls. */

/* Bytes of workspace each step needs for pairs n of this rank among global_pairs G, at dim d
 * (options' tiles and symmetry; options may be NULL). Any output pointer may be NULL. */
simclr_status simclr_device_step_workspace_size(int64_t pairs, int64_t global_pairs, int64_t dim,
                                                simclr_dtype dtype,
                                                const simclr_call_options* options,
                                                size_t* forward_bytes, size_t* alpha_bytes,
                                                size_t* backward_bytes);
/* The finiteness of the device inputs that are set (za, zb; call->weight; upstream: upstream_count
 * float32 values), in one pass and ONE stream synchronisation: SIMCLR_VALUE_ERROR naming the first
 * bad element (the message a device forward gives), for a front end to carry in its agreement
 * record (simclr_record_call's input_error). */
simclr_status simclr_device_step_check(const simclr_matrix* za, const simclr_matrix* zb,
                                       const simclr_device_call* call, const float* upstream,
                                       int64_t upstream_count, void* cuda_stream);
/* As simclr_step_normalize: u_local [2n, d] (za's dtype), squared_norms [2n] float32. */
simclr_status simclr_device_step_normalize(const simclr_matrix* za, const simclr_matrix* zb,
                                           const simclr_matrix* u_local, float* squared_norms,
                                           void* cuda_stream);
/* As simclr_step_forward: row_lse [2n] float32, per_example [n] (may be NULL), values. */
simclr_status simclr_device_step_forward(simclr_loss_t loss, const simclr_matrix* u_global,
                                         int64_t anchor_begin, int64_t pairs,
                                         const simclr_call_options* options,
                                         const simclr_device_call* call, void* cuda_stream,
                                         float* row_lse, void* per_example, void* values);
/* As simclr_step_alpha, with the upstream (upstream_count float32 values: 1 or n) in device memory,
 * never read on the host: alpha [2n] float32. */
simclr_status simclr_device_step_alpha(simclr_loss_t loss, int64_t pairs, int64_t global_pairs,
                                       const simclr_call_options* options,
                                       const simclr_device_call* call, const float* upstream,
                                       int64_t upstream_count, void* cuda_stream, float* alpha);
/* As simclr_step_backward: grad_a, grad_b [n, d] (u_global's dtype). */
simclr_status simclr_device_step_backward(simclr_loss_t loss, const simclr_matrix* u_global,
                                          int64_t anchor_begin, int64_t pairs,
                                          const float* squared_norms, const float* lse_all,
                                          const float* alpha_all,
                                          const simclr_call_options* options,
                                          const simclr_device_call* call, void* cuda_stream,
                                          const simclr_matrix* grad_a,
                                          const simclr_matrix* grad_b);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* SIMCLR_C_API_H_ */

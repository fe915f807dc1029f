/* The C API driven from C (C99): handles, configuration, hand-derived values, the backward against
 * central finite differences, error statuses and messages, and the callback communicator. The
 * expected numbers are hand derivations (docs/math.md), not outputs of the library. */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "simclr/c_api.h"

static int failures = 0;

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      ++failures;                                                              \
      fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
    }                                                                          \
  } while (0)

#define CHECK_OK(call)                                                                    \
  do {                                                                                    \
    simclr_status st_ = (call);                                                           \
    if (st_ != SIMCLR_OK) {                                                               \
      ++failures;                                                                         \
      fprintf(stderr, "%s:%d: %s returned %d: %s\n", __FILE__, __LINE__, #call, (int)st_, \
              simclr_last_error());                                                       \
    }                                                                                     \
  } while (0)

#define CHECK_NEAR(a, b, tol)                                                                     \
  do {                                                                                            \
    double a_ = (a), b_ = (b);                                                                    \
    if (!(fabs(a_ - b_) <= (tol))) {                                                              \
      ++failures;                                                                                 \
      fprintf(stderr, "%s:%d: %s = %.12g, expected %.12g (tol %g)\n", __FILE__, __LINE__, #a, a_, \
              b_, (double)(tol));                                                                 \
    }                                                                                             \
  } while (0)

/* The call must fail with `status` and a last error containing `text`. */
#define CHECK_FAILS(call, status, text)                                                      \
  do {                                                                                       \
    simclr_status st_ = (call);                                                              \
    if (st_ != (status) || strstr(simclr_last_error(), (text)) == NULL) {                    \
      ++failures;                                                                            \
      fprintf(stderr, "%s:%d: %s returned %d (\"%s\"), expected %d with \"%s\"\n", __FILE__, \
              __LINE__, #call, (int)st_, simclr_last_error(), (int)(status), (text));        \
    }                                                                                        \
  } while (0)

static simclr_matrix host64(double* data, int64_t rows, int64_t cols) {
  simclr_matrix m;
  m.data = data;
  m.rows = rows;
  m.cols = cols;
  m.row_stride = cols;
  m.dtype = SIMCLR_FLOAT64;
  m.device = -1;
  return m;
}

/* The hand-checked example (temperature 1): za=[[1,0],[0,1],[1,1]], zb=[[1,0],[0,1],[1,-1]]. */
static double hand_za[6] = {1, 0, 0, 1, 1, 1};
static double hand_zb[6] = {1, 0, 0, 1, 1, -1};
static const double hand_none[3] = {2.343702263, 1.959094756, 4.008438580};

static void expect_config(simclr_loss_t loss, const char* expected) {
  char buffer[256];
  size_t length = 0;
  CHECK_OK(simclr_loss_get_config(loss, buffer, sizeof(buffer), &length));
  CHECK(length == strlen(expected));
  if (strcmp(buffer, expected) != 0) {
    ++failures;
    fprintf(stderr, "get_config gave %s, expected %s\n", buffer, expected);
  }
}

static void test_config(void) {
  simclr_loss_t loss = NULL;
  char small[8];
  size_t length = 0;
  CHECK_OK(simclr_loss_create(1.0, SIMCLR_REDUCTION_NONE, NULL, &loss));
  expect_config(loss, "{\"reduction\":\"none\",\"name\":null,\"temperature\":1.0}");
  /* Too small: VALUE_ERROR, but the length is reported. */
  CHECK_FAILS(simclr_loss_get_config(loss, small, sizeof(small), &length), SIMCLR_VALUE_ERROR,
              "bytes");
  CHECK(length == strlen("{\"reduction\":\"none\",\"name\":null,\"temperature\":1.0}"));
  simclr_loss_destroy(loss);

  CHECK_OK(simclr_loss_create(0.5, SIMCLR_REDUCTION_AUTO, "simclr", &loss));
  expect_config(loss, "{\"reduction\":\"auto\",\"name\":\"simclr\",\"temperature\":0.5}");
  simclr_loss_destroy(loss);

  CHECK_OK(simclr_loss_from_config(
      "{\"reduction\": \"sum\", \"name\": \"x\", \"temperature\": 0.25}", &loss));
  expect_config(loss, "{\"reduction\":\"sum\",\"name\":\"x\",\"temperature\":0.25}");
  simclr_loss_destroy(loss);

  CHECK_OK(
      simclr_loss_from_config("{\"class_name\": \"SimCLRLoss\", \"config\": {\"reduction\": "
                              "\"sum_over_batch_size\", \"name\": null, \"temperature\": 2.0}}",
                              &loss));
  expect_config(loss, "{\"reduction\":\"sum_over_batch_size\",\"name\":null,\"temperature\":2.0}");
  simclr_loss_destroy(loss);

  loss = NULL;
  CHECK_FAILS(simclr_loss_from_config("{\"reduction\": \"mean\"}", &loss), SIMCLR_VALUE_ERROR,
              "Invalid Reduction Key");
  CHECK(loss == NULL);
  CHECK_FAILS(simclr_loss_from_config("{\"margin\": 1.0}", &loss), SIMCLR_TYPE_ERROR, "margin");
  CHECK_FAILS(simclr_loss_from_config("{\"temperature\": ", &loss), SIMCLR_VALUE_ERROR, "");
  CHECK_FAILS(simclr_loss_create(0.0, SIMCLR_REDUCTION_SUM, NULL, &loss), SIMCLR_VALUE_ERROR,
              "temperature");
  CHECK_FAILS(simclr_loss_create(1.0, (simclr_reduction)7, NULL, &loss), SIMCLR_VALUE_ERROR,
              "reduction");
  CHECK(strlen(simclr_version()) >= 5);
}

static void test_hand_values(void) {
  simclr_loss_t loss = NULL;
  simclr_matrix za = host64(hand_za, 3, 2), zb = host64(hand_zb, 3, 2);
  double values[3] = {0, 0, 0}, per_example[3] = {0, 0, 0}, reduced = 0;
  simclr_forward_info info;
  int i;

  CHECK_OK(simclr_loss_create(1.0, SIMCLR_REDUCTION_NONE, NULL, &loss));
  CHECK_OK(simclr_forward(loss, &za, &zb, NULL, NULL, values, per_example, &info, NULL));
  for (i = 0; i < 3; ++i) {
    CHECK_NEAR(values[i], hand_none[i], 1e-8);
    CHECK_NEAR(per_example[i], hand_none[i], 1e-8);
  }
  CHECK(info.reduction == SIMCLR_REDUCTION_NONE && info.ranks == 1 && info.rows == 3 &&
        info.global_rows == 3 && info.row_offset == 0);
  CHECK_NEAR(info.objective, 8.311235598, 1e-8);
  simclr_loss_destroy(loss);

  CHECK_OK(simclr_loss_create(1.0, SIMCLR_REDUCTION_SUM_OVER_BATCH_SIZE, NULL, &loss));
  CHECK_OK(simclr_forward(loss, &za, &zb, NULL, NULL, &reduced, NULL, NULL, NULL));
  CHECK_NEAR(reduced, 2.770411866, 1e-8);
  {
    /* sample_weight [1, 2, 3]: (2.3437 + 2 * 1.9591 + 3 * 4.0084) / 3. */
    double w[3] = {1, 2, 3};
    simclr_weight weight;
    weight.values = w;
    weight.ndim = 1;
    weight.reserved = 0;
    weight.shape[0] = 3;
    weight.shape[1] = 0;
    CHECK_OK(simclr_forward(loss, &za, &zb, &weight, NULL, &reduced, NULL, NULL, NULL));
    CHECK_NEAR(reduced, 6.095735838, 1e-8);
  }
  simclr_loss_destroy(loss);

  CHECK_OK(simclr_loss_create(1.0, SIMCLR_REDUCTION_SUM, NULL, &loss));
  CHECK_OK(simclr_forward(loss, &za, &zb, NULL, NULL, &reduced, NULL, NULL, NULL));
  CHECK_NEAR(reduced, 8.311235598, 1e-8);
  simclr_loss_destroy(loss);

  /* za = zb = I: each direction is log(e + 2) - 1, so every example is 1.102889428. */
  {
    double eye[4] = {1, 0, 0, 1};
    simclr_matrix a = host64(eye, 2, 2);
    double v[2];
    CHECK_OK(simclr_loss_create(1.0, SIMCLR_REDUCTION_NONE, NULL, &loss));
    CHECK_OK(simclr_forward(loss, &a, &a, NULL, NULL, v, NULL, NULL, NULL));
    CHECK_NEAR(v[0], 1.102889428, 1e-8);
    CHECK_NEAR(v[1], 1.102889428, 1e-8);
    simclr_loss_destroy(loss);
  }

  /* float32, through padded rows (row_stride 3 over 2 columns). */
  {
    float a32[9] = {1, 0, -7, 0, 1, -7, 1, 1, -7}, b32[9] = {1, 0, 9, 0, 1, 9, 1, -1, 9};
    float v32[3];
    simclr_matrix a, b;
    a.data = a32;
    a.rows = 3;
    a.cols = 2;
    a.row_stride = 3;
    a.dtype = SIMCLR_FLOAT32;
    a.device = -1;
    b = a;
    b.data = b32;
    CHECK_OK(simclr_loss_create(1.0, SIMCLR_REDUCTION_NONE, NULL, &loss));
    CHECK_OK(simclr_forward(loss, &a, &b, NULL, NULL, v32, NULL, NULL, NULL));
    for (i = 0; i < 3; ++i) CHECK_NEAR(v32[i], hand_none[i], 1e-5);
    simclr_loss_destroy(loss);
  }
}

/* A deterministic pseudo-random fill in [-1, 1). */
static void fill(double* x, int count, unsigned seed) {
  unsigned s = seed * 2654435761u + 1u;
  int i;
  for (i = 0; i < count; ++i) {
    s = s * 1664525u + 1013904223u;
    x[i] = (double)(s >> 8) / (double)(1u << 23) - 1.0;
  }
}

enum { kN = 4, kD = 3 };

/* J = sum_i up_i * values_i (one upstream for a reduced loss), from a fresh forward. */
static double objective(simclr_loss_t loss, double* za, double* zb, const simclr_weight* weight,
                        const double* upstream, int count) {
  simclr_matrix a = host64(za, kN, kD), b = host64(zb, kN, kD);
  double values[kN];
  double j = 0;
  int i;
  CHECK_OK(simclr_forward(loss, &a, &b, weight, NULL, values, NULL, NULL, NULL));
  for (i = 0; i < count; ++i) j += upstream[i] * values[i];
  return j;
}

static void check_gradient(simclr_reduction reduction, const simclr_weight* weight,
                           const double* upstream, int count) {
  double za[kN * kD], zb[kN * kD];
  /* Gradient buffers with padded rows: the padding must stay untouched. */
  double ga[kN * (kD + 1)], gb[kN * (kD + 1)], values[kN];
  simclr_loss_t loss = NULL;
  simclr_forward_t saved = NULL;
  simclr_matrix a = host64(za, kN, kD), b = host64(zb, kN, kD);
  simclr_matrix grad_a = host64(ga, kN, kD), grad_b = host64(gb, kN, kD);
  const double h = 1e-6;
  int i, k;

  fill(za, kN * kD, 1u + (unsigned)reduction);
  fill(zb, kN * kD, 7u + (unsigned)reduction);
  for (i = 0; i < kN * (kD + 1); ++i) ga[i] = gb[i] = -99.0;
  grad_a.row_stride = grad_b.row_stride = kD + 1;
  CHECK_OK(simclr_loss_create(0.5, reduction, NULL, &loss));
  CHECK_OK(simclr_forward(loss, &a, &b, weight, NULL, values, NULL, NULL, &saved));
  CHECK_OK(simclr_backward(loss, saved, upstream, count, &grad_a, &grad_b));
  for (k = 0; k < 2; ++k) {
    double* z = k == 0 ? za : zb;
    const double* g = k == 0 ? ga : gb;
    for (i = 0; i < kN * kD; ++i) {
      const double keep = z[i];
      double plus, minus;
      z[i] = keep + h;
      plus = objective(loss, za, zb, weight, upstream, count);
      z[i] = keep - h;
      minus = objective(loss, za, zb, weight, upstream, count);
      z[i] = keep;
      CHECK_NEAR(g[(i / kD) * (kD + 1) + i % kD], (plus - minus) / (2 * h), 1e-7);
    }
  }
  for (i = 0; i < kN; ++i) CHECK(ga[i * (kD + 1) + kD] == -99.0 && gb[i * (kD + 1) + kD] == -99.0);
  simclr_forward_destroy(saved);
  simclr_loss_destroy(loss);
}

static void test_backward(void) {
  double up_none[kN] = {0.5, -1.0, 2.0, 0.25}, up_one = 1.5, w[kN] = {1, 0, 2, 0.5};
  simclr_weight weight;
  weight.values = w;
  weight.ndim = 2;
  weight.reserved = 0;
  weight.shape[0] = kN;
  weight.shape[1] = 1;
  check_gradient(SIMCLR_REDUCTION_NONE, NULL, up_none, kN);
  check_gradient(SIMCLR_REDUCTION_SUM, NULL, &up_one, 1);
  check_gradient(SIMCLR_REDUCTION_SUM_OVER_BATCH_SIZE, &weight, &up_one, 1);
}

static void test_errors(void) {
  simclr_loss_t loss = NULL;
  double za[6], zb[6], values[3];
  simclr_matrix a, b;
  float f[6] = {1, 0, 0, 1, 1, 1};
  memcpy(za, hand_za, sizeof(za));
  memcpy(zb, hand_zb, sizeof(zb));
  a = host64(za, 3, 2);
  b = host64(zb, 3, 2);
  CHECK_OK(simclr_loss_create(1.0, SIMCLR_REDUCTION_NONE, NULL, &loss));

  za[3] = NAN;
  CHECK_FAILS(simclr_forward(loss, &a, &b, NULL, NULL, values, NULL, NULL, NULL),
              SIMCLR_VALUE_ERROR, "NaN");
  za[3] = 1;
  b.rows = 2;
  CHECK_FAILS(simclr_forward(loss, &a, &b, NULL, NULL, values, NULL, NULL, NULL),
              SIMCLR_VALUE_ERROR, "same shape");
  b.rows = 3;
  b.data = f;
  b.dtype = SIMCLR_FLOAT32;
  CHECK_FAILS(simclr_forward(loss, &a, &b, NULL, NULL, values, NULL, NULL, NULL), SIMCLR_TYPE_ERROR,
              "float32");
  b = host64(zb, 3, 2);
  b.dtype = (simclr_dtype)9;
  CHECK_FAILS(simclr_forward(loss, &a, &b, NULL, NULL, values, NULL, NULL, NULL), SIMCLR_TYPE_ERROR,
              "dtype 9");
  b.dtype = SIMCLR_FLOAT64;
  b.device = 0;
  CHECK_FAILS(simclr_forward(loss, &a, &b, NULL, NULL, values, NULL, NULL, NULL),
              SIMCLR_UNSUPPORTED, "device");
  b.device = -1;
  CHECK_FAILS(simclr_forward(loss, &a, NULL, NULL, NULL, values, NULL, NULL, NULL),
              SIMCLR_VALUE_ERROR, "zb is NULL");
  CHECK_FAILS(simclr_forward(NULL, &a, &b, NULL, NULL, values, NULL, NULL, NULL),
              SIMCLR_VALUE_ERROR, "loss is NULL");
  {
    /* A per-example upstream of the wrong length. */
    simclr_forward_t saved = NULL;
    double up[2] = {1, 1}, ga[6], gb[6];
    simclr_matrix grad_a = host64(ga, 3, 2), grad_b = host64(gb, 3, 2);
    CHECK_OK(simclr_forward(loss, &a, &b, NULL, NULL, values, NULL, NULL, &saved));
    CHECK_FAILS(simclr_backward(loss, saved, up, 2, &grad_a, &grad_b), SIMCLR_VALUE_ERROR,
                "2 elements");
    grad_b.rows = 2;
    CHECK_FAILS(simclr_backward(loss, saved, up, 1, &grad_a, &grad_b), SIMCLR_VALUE_ERROR,
                "grad_b is [2, 2]");
    simclr_forward_destroy(saved);
  }
  simclr_loss_destroy(loss);
}

/* ---- a callback communicator of one rank ---- */

typedef struct {
  int calls;
  int released;
  int fail_all_gather_v;
} comm_state;

static int cb_all_gather(void* user, const void* send, size_t bytes, void* recv, char* error,
                         size_t capacity) {
  (void)error;
  (void)capacity;
  ((comm_state*)user)->calls++;
  if (bytes > 0) memcpy(recv, send, bytes);
  return 0;
}

static int cb_all_gather_v(void* user, const void* send, size_t send_bytes, void* recv,
                           const size_t* recv_bytes, char* error, size_t capacity) {
  comm_state* s = (comm_state*)user;
  s->calls++;
  if (s->fail_all_gather_v) {
    snprintf(error, capacity, "peer 3 went away");
    return 5;
  }
  if (recv_bytes[0] != send_bytes) {
    snprintf(error, capacity, "count mismatch");
    return 1;
  }
  if (send_bytes > 0) memcpy(recv, send, send_bytes);
  return 0;
}

static void cb_release(void* user) { ((comm_state*)user)->released++; }

static void test_callback_communicator(void) {
  comm_state state = {0, 0, 0};
  simclr_comm_callbacks callbacks;
  simclr_comm_t comm = NULL;
  simclr_loss_t loss = NULL;
  simclr_call_options options;
  simclr_forward_t saved = NULL;
  simclr_matrix za = host64(hand_za, 3, 2), zb = host64(hand_zb, 3, 2);
  double reduced = 0, local = 0, ga[6], gb[6], lga[6], lgb[6], one = 1;
  simclr_matrix grad_a = host64(ga, 3, 2), grad_b = host64(gb, 3, 2);
  simclr_matrix local_a = host64(lga, 3, 2), local_b = host64(lgb, 3, 2);
  int64_t rows[4] = {-1, -1, -1, -1};
  int i;

  memset(&callbacks, 0, sizeof(callbacks));
  callbacks.user = &state;
  callbacks.rank = 0;
  callbacks.size = 1;
  callbacks.all_gather = cb_all_gather;
  callbacks.all_gather_v = cb_all_gather_v;
  callbacks.barrier = NULL;
  callbacks.release = cb_release;
  CHECK_OK(simclr_comm_create_callbacks(&callbacks, "test-callbacks", &comm));
  CHECK(simclr_comm_rank(comm) == 0 && simclr_comm_size(comm) == 1);

  CHECK_OK(simclr_loss_create(1.0, SIMCLR_REDUCTION_AUTO, NULL, &loss));
  simclr_call_options_init(&options);
  options.comm = comm;
  /* The distribution rule: auto through a communicator needs a global batch size. */
  CHECK_FAILS(simclr_forward(loss, &za, &zb, NULL, &options, &reduced, NULL, NULL, NULL),
              SIMCLR_VALUE_ERROR, "global");

  options.global_batch_size = SIMCLR_GLOBAL_BATCH_INFER;
  CHECK_OK(simclr_forward(loss, &za, &zb, NULL, &options, &reduced, NULL, NULL, &saved));
  CHECK(state.calls > 0);
  CHECK_NEAR(reduced, 2.770411866, 1e-8);
  CHECK(simclr_forward_rank_rows(saved, rows, 4) == 1 && rows[0] == 3 && rows[1] == -1);
  CHECK_OK(simclr_backward(loss, saved, &one, 1, &grad_a, &grad_b));
  simclr_forward_destroy(saved);
  saved = NULL;

  /* The same call without the communicator gives the same gradient. */
  CHECK_OK(simclr_forward(loss, &za, &zb, NULL, NULL, &local, NULL, NULL, &saved));
  CHECK_OK(simclr_backward(loss, saved, &one, 1, &local_a, &local_b));
  simclr_forward_destroy(saved);
  saved = NULL;
  CHECK_NEAR(reduced, local, 1e-12);
  for (i = 0; i < 6; ++i) {
    CHECK_NEAR(ga[i], lga[i], 1e-12);
    CHECK_NEAR(gb[i], lgb[i], 1e-12);
  }

  /* A failing collective: COMM_ERROR naming the backend, the collective and the caller's text. */
  state.fail_all_gather_v = 1;
  CHECK_FAILS(simclr_forward(loss, &za, &zb, NULL, &options, &reduced, NULL, NULL, NULL),
              SIMCLR_COMM_ERROR, "peer 3 went away");
  CHECK(strstr(simclr_last_error(), "test-callbacks") != NULL);
  CHECK(strstr(simclr_last_error(), "all_gather_v") != NULL);

  CHECK(state.released == 0);
  simclr_comm_destroy(comm);
  CHECK(state.released == 1);
  simclr_loss_destroy(loss);

  /* Bad callbacks are refused, and release is not called then. */
  callbacks.all_gather_v = NULL;
  CHECK_FAILS(simclr_comm_create_callbacks(&callbacks, NULL, &comm), SIMCLR_VALUE_ERROR,
              "all_gather_v");
  callbacks.all_gather_v = cb_all_gather_v;
  callbacks.rank = 1;
  CHECK_FAILS(simclr_comm_create_callbacks(&callbacks, NULL, &comm), SIMCLR_VALUE_ERROR, "rank 1");
  CHECK(state.released == 1);
}

static void test_single_communicator(void) {
  simclr_comm_t comm = NULL;
  simclr_loss_t loss = NULL;
  simclr_call_options options;
  simclr_matrix za = host64(hand_za, 3, 2), zb = host64(hand_zb, 3, 2);
  double reduced = 0;
  CHECK_OK(simclr_comm_create_single(&comm));
  CHECK_OK(simclr_loss_create(1.0, SIMCLR_REDUCTION_SUM_OVER_BATCH_SIZE, NULL, &loss));
  simclr_call_options_init(&options);
  options.comm = comm;
  options.global_batch_size = 6;
  CHECK_OK(simclr_forward(loss, &za, &zb, NULL, &options, &reduced, NULL, NULL, NULL));
  CHECK_NEAR(reduced, 8.311235598 / 6, 1e-8);
  options.global_batch_size = -5;
  CHECK_FAILS(simclr_forward(loss, &za, &zb, NULL, &options, &reduced, NULL, NULL, NULL),
              SIMCLR_VALUE_ERROR, "global_batch_size");
  simclr_loss_destroy(loss);
  simclr_comm_destroy(comm);
}

int main(void) {
  test_config();
  test_hand_values();
  test_backward();
  test_errors();
  test_callback_communicator();
  test_single_communicator();
  if (failures != 0) {
    fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  printf("simclr C API: all checks passed\n");
  return 0;
}

// The step calls (c_api.h, "step calls for frameworks whose collectives are graph ops") against the
// collective-free simclr_forward / simclr_backward on the whole batch: P simulated ranks run
// normalize, forward, alpha and backward, the test doing the gathers between them, and must give
// the whole batch's loss (summed over ranks) and gradients, and dJ/dT (the ranks' shares of
// simclr_step_backward_temperature summed) at a call's own temperature. Also their errors.

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "simclr/c_api.h"

namespace {

int failures = 0;

#define CHECK(cond)                                                                 \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                                   \
    }                                                                               \
  } while (0)
#define CHECK_OK(call)                                                          \
  do {                                                                          \
    if ((call) != SIMCLR_OK) {                                                  \
      std::fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #call, \
                   simclr_last_error());                                        \
      ++failures;                                                               \
    }                                                                           \
  } while (0)

simclr_matrix view(double* p, int64_t rows, int64_t cols) {
  return simclr_matrix{p, rows, cols, cols, SIMCLR_FLOAT64, -1};
}

bool close(double a, double b) { return std::fabs(a - b) <= 1e-12 * std::fmax(1.0, std::fabs(b)); }

// One reduction, P ranks of n pairs each, d columns, per-example weights, and k extra negatives
// (simclr_call_options.negatives in the whole-batch call; their unit rows after the batch's in
// u_global, negative_rows, for the steps).
void check_against_whole_batch(simclr_reduction reduction, int ranks, int64_t n, int64_t d,
                               int64_t k = 0) {
  const int64_t G = ranks * n;
  std::mt19937 gen(7 + ranks);
  std::normal_distribution<double> normal;
  std::vector<double> za(G * d), zb(G * d), w(G), bank(k * d);
  for (auto& x : za) x = normal(gen);
  for (auto& x : zb) x = normal(gen);
  for (auto& x : bank) x = 2 * normal(gen);
  simclr_matrix bank_m = view(bank.data(), k, d);
  for (int64_t i = 0; i < G; ++i) w[i] = 0.5 + 0.1 * static_cast<double>(i % 7);

  simclr_loss_t loss = nullptr;
  CHECK_OK(simclr_loss_create(0.2, reduction, nullptr, &loss));
  // The steps run on a loss of another temperature, at the call's own 0.2 (use_temperature).
  simclr_loss_t step_loss = nullptr;
  CHECK_OK(simclr_loss_create(0.9, reduction, nullptr, &step_loss));
  const bool per_example = reduction == SIMCLR_REDUCTION_NONE;
  simclr_call_options host;
  simclr_call_options_init(&host);
  host.temperature_gradient = 1;
  if (k > 0) host.negatives = &bank_m;

  // The whole batch in one local call.
  simclr_matrix a = view(za.data(), G, d), b = view(zb.data(), G, d);
  simclr_weight wt{w.data(), 1, 0, {G, 0}};
  std::vector<double> want_values(per_example ? G : 1);
  simclr_forward_t saved = nullptr;
  CHECK_OK(simclr_forward(loss, &a, &b, &wt, &host, want_values.data(), nullptr, nullptr, &saved));
  std::vector<double> want_ga(G * d), want_gb(G * d);
  simclr_matrix ga = view(want_ga.data(), G, d), gb = view(want_gb.data(), G, d);
  const double one = 1.0;
  std::vector<double> ones(G, 1.0);
  double want_t = 0;
  CHECK_OK(simclr_backward_temperature(loss, saved, per_example ? ones.data() : &one,
                                       per_example ? G : 1, &ga, &gb, &want_t));
  CHECK(want_t != 0);
  simclr_forward_destroy(saved);

  // The steps, rank by rank, with the gathers done here.
  simclr_call_options o;
  simclr_call_options_init(&o);
  if (ranks > 1) o.global_batch_size = SIMCLR_GLOBAL_BATCH_INFER;
  o.use_temperature = 1;
  o.temperature = 0.2;
  o.negative_rows = k;
  std::vector<double> u_global((2 * G + k) * d), norms(2 * G), lse(2 * G), alpha(2 * G);
  for (int r = 0; r < ranks; ++r) {
    simclr_matrix ar = view(za.data() + r * n * d, n, d), br = view(zb.data() + r * n * d, n, d);
    simclr_matrix ur = view(u_global.data() + 2 * r * n * d, 2 * n, d);
    CHECK_OK(simclr_step_normalize(&ar, &br, &ur, norms.data() + 2 * r * n));
  }
  simclr_matrix u_bank = view(u_global.data() + 2 * G * d, k, d);
  CHECK_OK(simclr_step_normalize_rows(&bank_m, &u_bank));
  simclr_matrix u = view(u_global.data(), 2 * G + k, d);
  double total = 0;
  for (int r = 0; r < ranks; ++r) {
    std::vector<double> values(per_example ? n : 1), per(n);
    simclr_weight wr{w.data() + r * n, 1, 0, {n, 0}};
    CHECK_OK(simclr_step_forward(step_loss, &u, 2 * r * n, n, &wr, &o, lse.data() + 2 * r * n,
                                 per.data(), values.data()));
    for (std::size_t i = 0; i < values.size(); ++i) {
      total += values[i];
      if (per_example) CHECK(close(values[i], want_values[r * n + i]));
    }
    CHECK_OK(simclr_step_alpha(step_loss, SIMCLR_FLOAT64, n, G, &wr, &o,
                               per_example ? ones.data() : &one, per_example ? n : 1,
                               alpha.data() + 2 * r * n));
  }
  double want_total = 0;
  for (double v : want_values) want_total += v;
  CHECK(close(total, want_total));
  double total_t = 0;
  for (int r = 0; r < ranks; ++r) {
    std::vector<double> got_a(n * d), got_b(n * d);
    simclr_matrix gar = view(got_a.data(), n, d), gbr = view(got_b.data(), n, d);
    double share = 0;
    CHECK_OK(simclr_step_backward_temperature(step_loss, &u, 2 * r * n, n,
                                              norms.data() + 2 * r * n, lse.data(), alpha.data(),
                                              &o, &gar, &gbr, &share));
    total_t += share;
    for (int64_t e = 0; e < n * d; ++e) {
      CHECK(close(got_a[e], want_ga[r * n * d + e]));
      CHECK(close(got_b[e], want_gb[r * n * d + e]));
    }
  }
  CHECK(std::fabs(total_t - want_t) <= 1e-11 * std::fabs(want_t));
  simclr_loss_destroy(step_loss);
  simclr_loss_destroy(loss);
}

void check_errors() {
  simclr_loss_t loss = nullptr;
  CHECK_OK(simclr_loss_create(0.1, SIMCLR_REDUCTION_AUTO, nullptr, &loss));
  std::vector<double> za(6, 1.0), zb(6, 1.0), u(12), norms(4), lse(2), values(1);
  zb[3] = NAN;
  simclr_matrix a = view(za.data(), 2, 3), b = view(zb.data(), 2, 3), um = view(u.data(), 4, 3);
  CHECK(simclr_step_normalize(&a, &b, &um, norms.data()) == SIMCLR_VALUE_ERROR);
  CHECK(std::string(simclr_last_error()).find("zb has NaN at row 1, column 0") !=
        std::string::npos);
  // sum_over_batch_size over several ranks without a global batch size: the distribution rule.
  std::vector<double> big(8 * 3, 0.5);
  simclr_matrix ug = view(big.data(), 8, 3);
  CHECK(simclr_step_forward(loss, &ug, 0, 2, nullptr, nullptr, lse.data(), nullptr,
                            values.data()) == SIMCLR_VALUE_ERROR);
  CHECK(std::string(simclr_last_error()).find("global batch size") != std::string::npos);
  // Anchors outside u_global.
  CHECK(simclr_step_forward(loss, &ug, 6, 2, nullptr, nullptr, lse.data(), nullptr,
                            values.data()) == SIMCLR_VALUE_ERROR);
  simclr_loss_destroy(loss);
}

// The agreement of a distributed step: 3 simulated ranks write records, the test "gathers" them,
// and simclr_step_agree gives every rank the same verdict.
void check_agreement() {
  simclr_loss_t loss = nullptr;
  CHECK_OK(simclr_loss_create(0.1, SIMCLR_REDUCTION_SUM, nullptr, &loss));
  std::vector<double> za(6, 1.0), zb(6, 0.5), bad(6, 1.0);
  bad[4] = NAN;
  std::vector<unsigned char> records(3 * SIMCLR_RECORD_BYTES);
  auto record = [&](int r, double* a_data, const simclr_call_options* o) {
    simclr_matrix a = view(a_data, 2, 3), b = view(zb.data(), 2, 3);
    CHECK_OK(simclr_step_record(loss, &a, &b, nullptr, o,
                                records.data() + static_cast<std::size_t>(r) * SIMCLR_RECORD_BYTES));
  };
  // Good everywhere: rows come back.
  for (int r = 0; r < 3; ++r) record(r, za.data(), nullptr);
  int64_t rows[3] = {-1, -1, -1};
  CHECK_OK(simclr_step_agree(loss, records.data(), 3, rows));
  CHECK(rows[0] == 2 && rows[1] == 2 && rows[2] == 2);
  // NaN on rank 1 only: the record call succeeds there; the agreement fails for everyone alike.
  record(1, bad.data(), nullptr);
  CHECK(simclr_step_agree(loss, records.data(), 3, nullptr) == SIMCLR_VALUE_ERROR);
  CHECK(std::string(simclr_last_error()) == "za has NaN at row 1, column 1 (rank 1)");
  // A front end's own rejection on rank 2 (rank 1 fixed): its status and message.
  record(1, za.data(), nullptr);
  simclr_call_options o;
  simclr_call_options_init(&o);
  o.input_error = SIMCLR_TYPE_ERROR;
  o.input_error_message = "za must be a jax.Array, got list";
  record(2, nullptr, &o);
  CHECK(simclr_step_agree(loss, records.data(), 3, nullptr) == SIMCLR_TYPE_ERROR);
  CHECK(std::string(simclr_last_error()) == "za must be a jax.Array, got list (rank 2)");
  // Options that differ: gradient_reduction on rank 2.
  simclr_call_options_init(&o);
  o.gradient_reduction = SIMCLR_GRADIENT_MEAN;
  record(2, za.data(), &o);
  CHECK(simclr_step_agree(loss, records.data(), 3, nullptr) == SIMCLR_VALUE_ERROR);
  CHECK(std::string(simclr_last_error()).find("gradient_reduction differs between ranks") !=
        std::string::npos);
  // Records from shapes alone (a front end that agrees before its data reaches the library): rows
  // come back, and an input error travels the same way.
  simclr_call_options_init(&o);
  for (int r = 0; r < 3; ++r)
    CHECK_OK(simclr_record_call(loss, 4 + r, 3, SIMCLR_BFLOAT16, &o,
                                records.data() + static_cast<std::size_t>(r) * SIMCLR_RECORD_BYTES));
  CHECK_OK(simclr_step_agree(loss, records.data(), 3, rows));
  CHECK(rows[0] == 4 && rows[1] == 5 && rows[2] == 6);
  o.input_error = SIMCLR_UNSUPPORTED;
  o.input_error_message = "za is a sparse tensor";
  CHECK_OK(simclr_record_call(loss, 0, 0, SIMCLR_FLOAT32, &o,
                              records.data() + SIMCLR_RECORD_BYTES));
  CHECK(simclr_step_agree(loss, records.data(), 3, nullptr) == SIMCLR_UNSUPPORTED);
  CHECK(std::string(simclr_last_error()) == "za is a sparse tensor (rank 1)");
  simclr_loss_destroy(loss);
  // The distribution rule, even at one rank (a distributed context).
  CHECK_OK(simclr_loss_create(0.1, SIMCLR_REDUCTION_AUTO, nullptr, &loss));
  record(0, za.data(), nullptr);
  CHECK(simclr_step_agree(loss, records.data(), 1, nullptr) == SIMCLR_VALUE_ERROR);
  CHECK(std::string(simclr_last_error()).find("global batch size") != std::string::npos);
  simclr_loss_destroy(loss);
}

}  // namespace

// The shape-only checks bindings make at trace time: the same messages a call gives.
void check_shapes() {
  const int64_t a[2] = {3, 2}, b[2] = {2, 2}, v[1] = {3}, w2[2] = {3, 2}, w3[3] = {3, 1, 1};
  CHECK_OK(simclr_check_shapes(a, 2, a, 2, nullptr, -1));
  CHECK_OK(simclr_check_shapes(a, 2, a, 2, v, 1));
  CHECK(simclr_check_shapes(a, 2, b, 2, nullptr, -1) == SIMCLR_VALUE_ERROR);
  CHECK(std::string(simclr_last_error()) == "za and zb must have the same shape: [3, 2] vs. [2, 2]");
  CHECK(simclr_check_shapes(a, 1, a, 2, nullptr, -1) == SIMCLR_VALUE_ERROR);
  CHECK(std::string(simclr_last_error()) == "za must be a 2-D [n, d] matrix, got shape [3]");
  CHECK(simclr_check_shapes(a, 2, a, 2, w2, 2) == SIMCLR_VALUE_ERROR);
  CHECK(std::string(simclr_last_error()).find("Can not squeeze dim[1]") != std::string::npos);
  CHECK(simclr_check_shapes(a, 2, a, 2, w3, 3) == SIMCLR_VALUE_ERROR);
  CHECK(std::string(simclr_last_error()).find("sample_weight of rank 3 is not supported") !=
        std::string::npos);
}

// dJ/dT asked of a backward whose forward did not ask for it; a bad call temperature in a step.
void check_temperature_errors() {
  simclr_loss_t loss = nullptr;
  CHECK_OK(simclr_loss_create(0.2, SIMCLR_REDUCTION_SUM, nullptr, &loss));
  std::vector<double> za = {1, 0, 0, 1, 1, 1}, zb = {1, 0, 0, 1, 1, -1}, g(6);
  simclr_matrix a = view(za.data(), 3, 2), b = view(zb.data(), 3, 2), ga = view(g.data(), 3, 2);
  double value = 0, t = 0, one = 1;
  simclr_forward_t saved = nullptr;
  CHECK_OK(simclr_forward(loss, &a, &b, nullptr, nullptr, &value, nullptr, nullptr, &saved));
  CHECK(simclr_backward_temperature(loss, saved, &one, 1, &ga, &ga, &t) == SIMCLR_VALUE_ERROR);
  CHECK(std::string(simclr_last_error()).find("temperature_gradient") != std::string::npos);
  simclr_forward_destroy(saved);
  simclr_call_options o;
  simclr_call_options_init(&o);
  o.use_temperature = 1;
  o.temperature = 0;
  std::vector<double> u(12), norms(6), lse(6);
  simclr_matrix um = view(u.data(), 6, 2);
  CHECK_OK(simclr_step_normalize(&a, &b, &um, norms.data()));
  CHECK(simclr_step_forward(loss, &um, 0, 3, nullptr, &o, lse.data(), nullptr, &value) ==
        SIMCLR_VALUE_ERROR);
  CHECK(std::string(simclr_last_error()).find("temperature must be a finite number > 0, got 0") !=
        std::string::npos);
  simclr_loss_destroy(loss);
}

void check_negatives_errors() {
  simclr_loss_t loss = nullptr;
  CHECK_OK(simclr_loss_create(0.2, SIMCLR_REDUCTION_SUM, nullptr, &loss));
  std::vector<double> za = {1, 0, 0, 1, 1, 1}, zb = {1, 0, 0, 1, 1, -1}, wide(6, 1.0);
  std::vector<float> narrow(4, 1.0f);
  simclr_matrix a = view(za.data(), 3, 2), b = view(zb.data(), 3, 2);
  simclr_matrix bank3 = view(wide.data(), 2, 3);
  simclr_matrix bank_f{narrow.data(), 2, 2, 2, SIMCLR_FLOAT32, -1};
  double value = 0;
  simclr_call_options o;
  simclr_call_options_init(&o);
  o.negatives = &bank3;
  CHECK(simclr_forward(loss, &a, &b, nullptr, &o, &value, nullptr, nullptr, nullptr) ==
        SIMCLR_VALUE_ERROR);
  CHECK(std::string(simclr_last_error()).find("negatives are [2, 3]") != std::string::npos);
  o.negatives = &bank_f;
  CHECK(simclr_forward(loss, &a, &b, nullptr, &o, &value, nullptr, nullptr, nullptr) ==
        SIMCLR_TYPE_ERROR);
  o.negatives = nullptr;
  o.negatives_scope = 5;
  CHECK(simclr_forward(loss, &a, &b, nullptr, &o, &value, nullptr, nullptr, nullptr) ==
        SIMCLR_VALUE_ERROR);
  CHECK(std::string(simclr_last_error()).find("negatives_scope is 5") != std::string::npos);
  // The record checks this rank's negatives by simclr_forward's rules; the agreement raises them.
  {
    simclr_call_options r;
    simclr_call_options_init(&r);
    r.negatives = &bank3;
    std::vector<unsigned char> record(SIMCLR_RECORD_BYTES);
    CHECK_OK(simclr_step_record(loss, &a, &b, nullptr, &r, record.data()));
    CHECK(simclr_step_agree(loss, record.data(), 1, nullptr) == SIMCLR_VALUE_ERROR);
    CHECK(std::string(simclr_last_error()).find("negatives are [2, 3]") != std::string::npos);
    r.negatives = &bank_f;
    CHECK_OK(simclr_step_record(loss, &a, &b, nullptr, &r, record.data()));
    CHECK(simclr_step_agree(loss, record.data(), 1, nullptr) == SIMCLR_TYPE_ERROR);
    CHECK(std::string(simclr_last_error()).find("negatives have dtype float32") !=
          std::string::npos);
    std::vector<double> ok = {1, 2, NAN, 4};
    simclr_matrix with_nan = view(ok.data(), 2, 2);
    r.negatives = &with_nan;
    CHECK_OK(simclr_step_record(loss, &a, &b, nullptr, &r, record.data()));
    CHECK(simclr_step_agree(loss, record.data(), 1, nullptr) == SIMCLR_VALUE_ERROR);
    CHECK(std::string(simclr_last_error()).find("negatives") != std::string::npos);
    ok[2] = 3;
    CHECK_OK(simclr_step_record(loss, &a, &b, nullptr, &r, record.data()));
    CHECK_OK(simclr_step_agree(loss, record.data(), 1, nullptr));
    // Two ranks with different scopes.
    std::vector<unsigned char> two(2 * SIMCLR_RECORD_BYTES);
    CHECK_OK(simclr_step_record(loss, &a, &b, nullptr, &r, two.data()));
    r.negatives_scope = SIMCLR_NEGATIVES_GLOBAL;
    CHECK_OK(simclr_step_record(loss, &a, &b, nullptr, &r, two.data() + SIMCLR_RECORD_BYTES));
    CHECK(simclr_step_agree(loss, two.data(), 2, nullptr) == SIMCLR_VALUE_ERROR);
    CHECK(std::string(simclr_last_error()).find("negatives_scope differs") != std::string::npos);
  }
  // The trace-time check from shapes and dtypes alone.
  {
    const int64_t good[2] = {4, 2}, wide_shape[2] = {4, 3}, empty[2] = {0, 9};
    CHECK_OK(simclr_check_negatives(good, 2, SIMCLR_FLOAT32, SIMCLR_NEGATIVES_LOCAL, 2,
                                    SIMCLR_FLOAT32));
    CHECK_OK(simclr_check_negatives(empty, 2, SIMCLR_FLOAT64, SIMCLR_NEGATIVES_GLOBAL, 2,
                                    SIMCLR_FLOAT32));
    CHECK(simclr_check_negatives(wide_shape, 2, SIMCLR_FLOAT32, SIMCLR_NEGATIVES_LOCAL, 2,
                                 SIMCLR_FLOAT32) == SIMCLR_VALUE_ERROR);
    CHECK(std::string(simclr_last_error()).find("negatives are [4, 3]") != std::string::npos);
    CHECK(simclr_check_negatives(good, 2, SIMCLR_BFLOAT16, SIMCLR_NEGATIVES_LOCAL, 2,
                                 SIMCLR_FLOAT32) == SIMCLR_TYPE_ERROR);
    CHECK(std::string(simclr_last_error()).find("negatives have dtype bfloat16") !=
          std::string::npos);
    CHECK(simclr_check_negatives(good, 1, SIMCLR_FLOAT32, SIMCLR_NEGATIVES_LOCAL, 2,
                                 SIMCLR_FLOAT32) == SIMCLR_VALUE_ERROR);
    CHECK(simclr_check_negatives(good, 2, SIMCLR_FLOAT32, 3, 2, SIMCLR_FLOAT32) ==
          SIMCLR_VALUE_ERROR);
  }
  // The steps: negative_rows beyond u_global, or leaving an odd batch.
  simclr_call_options_init(&o);
  std::vector<double> u(14), norms(6), lse(6);
  simclr_matrix um = view(u.data(), 7, 2);
  o.negative_rows = 8;
  CHECK(simclr_step_forward(loss, &um, 0, 3, nullptr, &o, lse.data(), nullptr, &value) ==
        SIMCLR_VALUE_ERROR);
  o.negative_rows = 2;
  CHECK(simclr_step_forward(loss, &um, 0, 3, nullptr, &o, lse.data(), nullptr, &value) ==
        SIMCLR_VALUE_ERROR);
  CHECK(std::string(simclr_last_error()).find("even count") != std::string::npos);
  o.negative_rows = 1;
  simclr_matrix batch_rows = view(u.data(), 6, 2);
  CHECK_OK(simclr_step_normalize(&a, &b, &batch_rows, norms.data()));
  std::vector<double> nan_row = {NAN, 1.0};
  simclr_matrix bad = view(nan_row.data(), 1, 2), last = view(u.data() + 12, 1, 2);
  CHECK(simclr_step_normalize_rows(&bad, &last) == SIMCLR_VALUE_ERROR);
  CHECK(std::string(simclr_last_error()).find("negatives") != std::string::npos);
  simclr_loss_destroy(loss);
}

int main() {
  check_shapes();
  check_temperature_errors();
  check_agreement();
  for (simclr_reduction r : {SIMCLR_REDUCTION_AUTO, SIMCLR_REDUCTION_SUM, SIMCLR_REDUCTION_NONE})
    for (int ranks : {1, 2, 3})
      for (int64_t k : {0, 1, 9}) check_against_whole_batch(r, ranks, 5, 7, k);
  check_negatives_errors();
  check_errors();
  if (failures != 0) {
    std::fprintf(stderr, "%d checks failed\n", failures);
    return 1;
  }
  std::printf("c_api step calls: all checks passed\n");
  return 0;
}

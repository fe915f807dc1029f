// The conformance table (tests/conformance/cases.json, tests/data/golden_single.json) through the
// C API. Run alone it is the local front end: every value case against its expected loss and
// gradients, every error case against its status and message. Built with SIMCLR_CONFORMANCE_MPI and
// run under mpirun it is the distributed one: every value case split over the ranks (the rows of
// rank r are the r-th slice; reductions that divide use SIMCLR_GLOBAL_BATCH_INFER, so the
// denominator is the same G) must give the whole batch's loss and each rank's rows of its gradients;
// every input error case is given to the LAST rank only, and every rank must fail with the same
// status and the same message, naming that rank.

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "simclr/c_api.h"

#ifdef SIMCLR_CONFORMANCE_MPI
#include <mpi.h>
#endif

namespace {

using nlohmann::json;

int rank = 0, size = 1;
int passed = 0, failed = 0;

void report(bool ok, const std::string& id, const std::string& what) {
  if (ok) {
    ++passed;
    return;
  }
  ++failed;
  std::fprintf(stderr, "rank %d: case %s: %s\n", rank, id.c_str(), what.c_str());
}

json load(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path);
  return json::parse(in);
}

double number(const json& v) {
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    if (s == "nan") return std::numeric_limits<double>::quiet_NaN();
    if (s == "inf") return std::numeric_limits<double>::infinity();
    if (s == "-inf") return -std::numeric_limits<double>::infinity();
    throw std::runtime_error("not a number: " + s);
  }
  return v.get<double>();
}

// A matrix of the table: nested lists, or {"shape": [n, d]} (zeros).
struct Matrix {
  std::int64_t rows = 0, cols = 0;
  std::vector<double> values;
};

Matrix matrix(const json& v) {
  Matrix m;
  if (v.is_object()) {
    m.rows = v["shape"][0].get<std::int64_t>();
    m.cols = v["shape"][1].get<std::int64_t>();
    m.values.assign(static_cast<std::size_t>(m.rows * m.cols), 0.0);
    return m;
  }
  m.rows = static_cast<std::int64_t>(v.size());
  m.cols = m.rows == 0 ? 0 : static_cast<std::int64_t>(v[0].size());
  for (const auto& row : v)
    for (const auto& x : row) m.values.push_back(number(x));
  return m;
}

// One call's inputs, in the case's dtype, for rows [begin, begin + n) of the case.
struct Inputs {
  bool f32 = false;
  std::vector<float> a32, b32;
  std::vector<double> a64, b64, weight;
  simclr_matrix a{}, b{};
  simclr_weight w{};
  bool weighted = false;
  std::int64_t n = 0, d = 0;
  // Extra negatives ("negatives", "negatives_dtype", "negatives_scope"): the view the call gets.
  std::vector<float> k32;
  std::vector<double> k64;
  simclr_matrix k{};
  bool with_negatives = false;
  std::int32_t scope = SIMCLR_NEGATIVES_LOCAL;
};

void slice(const Matrix& m, std::int64_t begin, std::int64_t n, bool f32, std::vector<float>& o32,
           std::vector<double>& o64, simclr_matrix& view) {
  const auto first = m.values.begin() + begin * m.cols;
  o64.assign(first, first + n * m.cols);
  o32.assign(o64.begin(), o64.end());
  view.data = n * m.cols == 0 ? nullptr : (f32 ? static_cast<void*>(o32.data()) : o64.data());
  view.rows = n;
  view.cols = m.cols;
  view.row_stride = m.cols;
  view.dtype = f32 ? SIMCLR_FLOAT32 : SIMCLR_FLOAT64;
  view.device = -1;
}

// rows [begin, begin + n) of za and zb, and the weight (a [N] or [N, 1] weight sliced likewise).
void make_inputs(const json& c, std::int64_t begin, std::int64_t n, Inputs& in) {
  in.f32 = c["dtype"] == "float32";
  const Matrix za = matrix(c["za"]), zb = matrix(c["zb"]);
  slice(za, begin, std::min(n, za.rows - begin), in.f32, in.a32, in.a64, in.a);
  slice(zb, begin, std::min(n, zb.rows - begin), in.f32, in.b32, in.b64, in.b);
  in.n = in.a.rows;
  in.d = za.cols;
  in.weighted = !c["sample_weight"].is_null();
  if (!in.weighted) return;
  const auto shape = c["sample_weight"]["shape"].get<std::vector<std::int64_t>>();
  std::vector<double> values;
  for (const auto& v : c["sample_weight"]["values"]) values.push_back(number(v));
  in.w.ndim = static_cast<std::int32_t>(shape.size());
  for (std::size_t k = 0; k < shape.size() && k < 2; ++k) in.w.shape[k] = shape[k];
  const bool per_row = !shape.empty() && shape[0] == za.rows && za.rows != 1 && shape.size() <= 2;
  if (per_row && size > 1) {
    const std::int64_t width = shape.size() == 2 ? shape[1] : 1;
    in.weight.assign(values.begin() + begin * width, values.begin() + (begin + in.n) * width);
    in.w.shape[0] = in.n;
  } else {
    in.weight = values;
  }
  in.w.values = in.weight.data();
}

// The case's extra negatives, if any: the whole bank with the local scope, and with the global scope
// rank r's share of its rows (the ranks' banks gathered are the whole bank again). An unknown scope
// name is passed on as a code the library refuses.
void make_negatives(const json& c, Inputs& in) {
  in.with_negatives = c.contains("negatives");
  if (c.contains("negatives_scope")) {
    const std::string scope = c["negatives_scope"].get<std::string>();
    in.scope = scope == "local" ? SIMCLR_NEGATIVES_LOCAL
               : scope == "global" ? SIMCLR_NEGATIVES_GLOBAL
                                   : 7;
  }
  if (!in.with_negatives) return;
  const Matrix k = matrix(c["negatives"]);
  const bool f32 = c.value("negatives_dtype", c["dtype"].get<std::string>()) == "float32";
  std::int64_t begin = 0, rows = k.rows;
  if (in.scope == SIMCLR_NEGATIVES_GLOBAL) {
    std::int64_t at = 0;
    for (int r = 0; r < rank; ++r) at += k.rows / size + (r < k.rows % size ? 1 : 0);
    begin = at;
    rows = k.rows / size + (rank < k.rows % size ? 1 : 0);
  }
  slice(k, begin, rows, f32, in.k32, in.k64, in.k);
}

simclr_reduction reduction_of(const std::string& r) {
  if (r == "none") return SIMCLR_REDUCTION_NONE;
  if (r == "sum") return SIMCLR_REDUCTION_SUM;
  if (r == "sum_over_batch_size") return SIMCLR_REDUCTION_SUM_OVER_BATCH_SIZE;
  return SIMCLR_REDUCTION_AUTO;
}

// The loss of a case; an unknown reduction key goes through the config, as a front end's string.
simclr_status make_loss(const json& c, simclr_loss_t* loss) {
  const std::string r = c["reduction"].get<std::string>();
  const double t = number(c["temperature"]);
  if (r == "auto" || r == "none" || r == "sum" || r == "sum_over_batch_size")
    return simclr_loss_create(t, reduction_of(r), nullptr, loss);
  const json config = {{"reduction", r}, {"temperature", t}};
  return simclr_loss_from_config(config.dump().c_str(), loss);
}

std::vector<double> flat(const json& v) {
  std::vector<double> out;
  if (v.is_number()) return {v.get<double>()};
  for (const auto& x : v) {
    if (x.is_array())
      for (const auto& y : x) out.push_back(y.get<double>());
    else
      out.push_back(x.get<double>());
  }
  return out;
}

// max |got - want|; a NaN makes it NaN, which fails every comparison with a tolerance.
double rel(const std::vector<double>& got, const std::vector<double>& want) {
  if (got.size() != want.size()) return std::numeric_limits<double>::infinity();
  double num = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    const double e = std::abs(got[i] - want[i]);
    num = std::isnan(e) || e > num ? e : num;
    if (std::isnan(num)) return num;
  }
  return num;
}

// max |got - want| / max(1, max |want|).
double scaled_rel(const std::vector<double>& got, const std::vector<double>& want) {
  double den = 1;
  for (double w : want) den = std::max(den, std::abs(w));
  return rel(got, want) / den;
}

#ifdef SIMCLR_CONFORMANCE_MPI
double sum_over_ranks(double x) {
  double out = 0;
  MPI_Allreduce(&x, &out, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  return out;
}
#endif

std::int64_t rows_before(std::int64_t total, int r) {
  std::int64_t at = 0;
  for (int k = 0; k < r; ++k) at += total / size + (k < total % size ? 1 : 0);
  return at;
}

// A value case: loss (and with "grad_za" the gradients of the summed loss) within the tolerance.
void run_value_case(const json& c, double tol, simclr_comm_t comm) {
  const std::string id = c["id"].get<std::string>();
  const Matrix za = matrix(c["za"]);
  const std::int64_t begin = rows_before(za.rows, rank);
  const std::int64_t n = rows_before(za.rows, rank + 1) - begin;
  Inputs in;
  make_inputs(c, begin, n, in);
  make_negatives(c, in);
  simclr_loss_t loss = nullptr;
  if (make_loss(c, &loss) != SIMCLR_OK) {
    report(false, id, std::string("loss: ") + simclr_last_error());
    return;
  }
  simclr_call_options o;
  simclr_call_options_init(&o);
  o.comm = comm;
  const std::string r = c["reduction"].get<std::string>();
  if (comm != nullptr && (r == "auto" || r == "sum_over_batch_size"))
    o.global_batch_size = SIMCLR_GLOBAL_BATCH_INFER;
  if (c.contains("call_temperature")) {
    o.use_temperature = 1;
    o.temperature = number(c["call_temperature"]);
  }
  const bool want_t = c.contains("grad_temperature");
  o.temperature_gradient = want_t ? 1 : 0;
  o.negatives = in.with_negatives ? &in.k : nullptr;
  o.negatives_scope = in.scope;
  const bool none = r == "none";
  std::vector<double> v64(static_cast<std::size_t>(std::max<std::int64_t>(in.n, 1)));
  std::vector<float> v32(v64.size());
  simclr_forward_t saved = nullptr;
  simclr_forward_info info{};
  const simclr_status st =
      simclr_forward(loss, &in.a, &in.b, in.weighted ? &in.w : nullptr, &o,
                     in.f32 ? static_cast<void*>(v32.data()) : v64.data(), nullptr, &info, &saved);
  if (st != SIMCLR_OK) {
    report(false, id, std::string("forward: ") + simclr_last_error());
    simclr_loss_destroy(loss);
    return;
  }
  std::vector<double> got = in.f32 ? std::vector<double>(v32.begin(), v32.end()) : v64;
  got.resize(static_cast<std::size_t>(none ? in.n : 1));
  std::vector<double> want = flat(c["loss"]);
  if (none) {
    want.assign(want.begin() + begin, want.begin() + begin + in.n);
  } else {
#ifdef SIMCLR_CONFORMANCE_MPI
    got = {sum_over_ranks(got[0])};
#endif
  }
  const double t = c.contains("tolerance") ? c["tolerance"].get<double>() : tol;
  const double e = scaled_rel(got, want);
  report(e <= t, id, "loss off by " + std::to_string(e));
  if (c.contains("grad_za") || want_t) {
    // J = sum of the returned loss: upstream 1 for a reduced loss, ones for none.
    std::vector<double> up64(static_cast<std::size_t>(none ? in.n : 1), 1.0);
    std::vector<float> up32(up64.begin(), up64.end());
    std::vector<double> ga64(static_cast<std::size_t>(in.n * in.d)), gb64(ga64.size());
    std::vector<float> ga32(ga64.size()), gb32(ga64.size());
    const simclr_dtype dt = in.f32 ? SIMCLR_FLOAT32 : SIMCLR_FLOAT64;
    simclr_matrix ma{in.f32 ? static_cast<void*>(ga32.data()) : ga64.data(), in.n, in.d, in.d, dt,
                     -1};
    simclr_matrix mb{in.f32 ? static_cast<void*>(gb32.data()) : gb64.data(), in.n, in.d, in.d, dt,
                     -1};
    const void* up = in.f32 ? static_cast<const void*>(up32.data()) : up64.data();
    double gt64 = 0;
    float gt32 = 0;
    void* gt = !want_t ? nullptr : in.f32 ? static_cast<void*>(&gt32) : &gt64;
    if (simclr_backward_temperature(loss, saved, up, static_cast<std::int64_t>(up64.size()), &ma,
                                    &mb, gt) != SIMCLR_OK) {
      report(false, id, std::string("backward: ") + simclr_last_error());
    } else {
      if (want_t) {
        // dJ/dT: this rank's share; the shares add up to the whole batch's.
        double share = in.f32 ? static_cast<double>(gt32) : gt64;
#ifdef SIMCLR_CONFORMANCE_MPI
        share = sum_over_ranks(share);
#endif
        const double et = scaled_rel({share}, {number(c["grad_temperature"])});
        report(et <= t, id, "grad_temperature off by " + std::to_string(et));
      }
      for (auto [got32, got64, key] : {std::tuple{&ga32, &ga64, "grad_za"},
                                       std::tuple{&gb32, &gb64, "grad_zb"}}) {
        if (!c.contains(key)) continue;
        const std::vector<double> gv =
            in.f32 ? std::vector<double>(got32->begin(), got32->end()) : *got64;
        std::vector<double> gw = flat(c[key]);
        gw.assign(gw.begin() + begin * in.d, gw.begin() + (begin + in.n) * in.d);
        // Gradients scale with 1/T: the tolerance is relative to that scale (tests/test_golden).
        double scale = 1.0 / number(c["temperature"]);
        for (double x : gw) scale = std::max(scale, std::abs(x));
        const double eg = rel(gv, gw) / scale;
        report(eg <= t, id, std::string(key) + " off by " + std::to_string(eg));
      }
    }
  }
  simclr_forward_destroy(saved);
  simclr_loss_destroy(loss);
}

simclr_status status_of(const std::string& error) {
  if (error == "ValueError") return SIMCLR_VALUE_ERROR;
  if (error == "TypeError") return SIMCLR_TYPE_ERROR;
  if (error == "NotImplementedError") return SIMCLR_UNSUPPORTED;
  return SIMCLR_INTERNAL_ERROR;
}

// An error case: locally, the status and message; distributed, the input goes wrong on the last
// rank only and every rank must fail alike, the message naming that rank.
void run_error_case(json c, const json& defaults, simclr_comm_t comm) {
  for (const auto& [key, value] : defaults.items())
    if (!c.contains(key)) c[key] = value;
  const std::string id = c["id"].get<std::string>();
  const bool config_error = c.contains("temperature") && defaults["temperature"] != c["temperature"];
  const bool reduction_error = c["reduction"] != defaults["reduction"];
  if (comm != nullptr && (config_error || reduction_error)) return;  // not a collective error
  json mine = c;
  const int last = size - 1;
  if (comm != nullptr && rank != last) {
    for (const char* key : {"za", "zb", "sample_weight"}) mine[key] = defaults[key];
    for (const char* key : {"call_temperature", "negatives", "negatives_dtype", "negatives_scope"})
      mine.erase(key);
  }
  Inputs in;
  make_inputs(mine, 0, matrix(mine["za"]).rows, in);
  make_negatives(mine, in);
  simclr_loss_t loss = nullptr;
  simclr_status st = make_loss(mine, &loss);
  if (st == SIMCLR_OK) {
    simclr_call_options o;
    simclr_call_options_init(&o);
    o.comm = comm;
    if (mine.contains("call_temperature")) {
      o.use_temperature = 1;
      o.temperature = number(mine["call_temperature"]);
    }
    o.negatives = in.with_negatives ? &in.k : nullptr;
    o.negatives_scope = in.scope;
    std::vector<double> values(static_cast<std::size_t>(std::max<std::int64_t>(in.n, 1)));
    st = simclr_forward(loss, &in.a, &in.b, in.weighted ? &in.w : nullptr, &o, values.data(),
                        nullptr, nullptr, nullptr);
  }
  const std::string message = st == SIMCLR_OK ? "" : simclr_last_error();
  simclr_loss_destroy(loss);
  std::string want = c["message"].get<std::string>();
  report(st == status_of(c["error"].get<std::string>()), id,
         "status " + std::to_string(st) + " (" + message + ")");
  report(message.find(want) != std::string::npos, id,
         "message \"" + message + "\" lacks \"" + want + "\"");
#ifdef SIMCLR_CONFORMANCE_MPI
  if (comm != nullptr) {
    const std::string suffix = "(rank " + std::to_string(last) + ")";
    report(message.size() >= suffix.size() &&
               message.compare(message.size() - suffix.size(), suffix.size(), suffix) == 0,
           id, "message \"" + message + "\" does not name rank " + std::to_string(last));
    char buffer[512] = {0};
    std::snprintf(buffer, sizeof(buffer), "%d|%s", static_cast<int>(st), message.c_str());
    std::vector<char> all(static_cast<std::size_t>(size) * sizeof(buffer));
    MPI_Allgather(buffer, sizeof(buffer), MPI_CHAR, all.data(), sizeof(buffer), MPI_CHAR,
                  MPI_COMM_WORLD);
    bool same = true;
    for (int r = 0; r < size; ++r) same = same && std::strcmp(all.data() + r * 512, buffer) == 0;
    report(same, id, "ranks failed differently");
  }
#endif
}

}  // namespace

int main(int argc, char** argv) {
#ifdef SIMCLR_CONFORMANCE_MPI
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
#endif
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s CASES.json GOLDEN_SINGLE.json\n", argv[0]);
    return 2;
  }
  const json table = load(argv[1]), golden = load(argv[2]);
  simclr_comm_t comm = nullptr;
#ifdef SIMCLR_CONFORMANCE_MPI
  if (simclr_comm_create_mpi(MPI_Comm_c2f(MPI_COMM_WORLD), 120.0, &comm) != SIMCLR_OK) {
    std::fprintf(stderr, "simclr_comm_create_mpi: %s\n", simclr_last_error());
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
#endif
  for (const auto& c : golden["cases"]) {
    json v = c;  // the golden's "loss", "grad_za", "grad_zb" are what TF Similarity returned
    run_value_case(v, table["tolerance"][c["dtype"].get<std::string>()].get<double>(), comm);
  }
  for (const auto& c : table["values"])
    run_value_case(c, table["tolerance"][c["dtype"].get<std::string>()].get<double>(), comm);
  for (const auto& c : table["errors"]) run_error_case(c, table["error_defaults"], comm);
  simclr_comm_destroy(comm);
  int any = failed;
#ifdef SIMCLR_CONFORMANCE_MPI
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
#endif
  if (rank == 0)
    std::printf("conformance (C API, %d rank%s): %d passed, %d failed\n", size,
                size == 1 ? "" : "s", passed, failed);
#ifdef SIMCLR_CONFORMANCE_MPI
  MPI_Finalize();
#endif
  return any == 0 ? 0 : 1;
}

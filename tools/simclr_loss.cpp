// simclr-loss: the loss from the command line, thin over the public API (docs/cli.md).
//   simclr-loss compute --za A.npy --zb B.npy [...]   loss and gradients of .npy embeddings
//   simclr-loss config [...]                           the get_config() JSON
//   simclr-loss bench --batch G --dim d [...]          timed forward+backward steps
//   simclr-loss [COMMAND] --help                       the flags, their defaults and examples
// Under mpirun every rank reads the same files and takes its rows; rank 0 prints and writes.
// Any bad input: every rank exits 2, rank 0 prints one `error: ...` line on stderr.

#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <numeric>

#include "bench.hpp"
#include "cli.hpp"
#include "commands.hpp"
#include "input_file.hpp"
#include "npy.hpp"
#include "runtime.hpp"
#include "simclr/detail/check.hpp"
#include "simclr/loss.hpp"

namespace simclr::tools {
namespace {

// A config JSON is a few hundred bytes; 1 MiB is far beyond any real one.
constexpr std::size_t kMaxConfigBytes = 1 << 20;

// The loss from --config or from the individual flags (not both).
SimCLRLoss make_loss(const ParsedArgs& args) {
  if (args.has("config")) {
    for (const char* flag : {"temperature", "reduction", "name"}) {
      SIMCLR_ENFORCE(!args.has(flag), ValueError, "--", flag,
                     " cannot be combined with --config (put it in the config file)");
    }
    const std::string path = *args.get("config");
    const std::string text =
        read_small_file(path, describe_input(path, "config"), "a config file", kMaxConfigBytes);
    try {
      return SimCLRLoss::from_config_string(text);
    } catch (const Error& e) {
      throw ValueError(describe_input(path, "config") + ": " + e.what());
    }
  }
  LossConfig cfg;
  if (auto t = args.get("temperature")) cfg.temperature = parse_double(*t, "temperature");
  if (auto r = args.get("reduction")) cfg.reduction = parse_reduction(*r);
  if (auto n = args.get("name")) cfg.name = *n;
  return SimCLRLoss(cfg);
}

// Output files are written to temporaries first and moved into place only when all succeeded.
class StagedOutputs {
 public:
  template <class T>
  void stage(const std::optional<std::string>& path, const std::vector<T>& data,
             std::vector<std::int64_t> shape) {
    if (!path) return;
    const std::string tmp = *path + ".partial";
    write_npy<T>(tmp, data.data(), shape);
    staged_.emplace_back(tmp, *path);
  }
  void commit() {
    for (const auto& [tmp, path] : staged_) {
      SIMCLR_ENFORCE(std::rename(tmp.c_str(), path.c_str()) == 0, ValueError, path,
                     ": cannot move the written file into place");
    }
    staged_.clear();
  }
  ~StagedOutputs() {
    for (const auto& [tmp, path] : staged_) std::remove(tmp.c_str());
  }

 private:
  std::vector<std::pair<std::string, std::string>> staged_;
};

template <class T>
std::vector<T> gather_all(Communicator* comm, const std::vector<T>& mine,
                          const std::vector<std::int64_t>& counts) {
  if (comm == nullptr) return mine;
  std::vector<std::size_t> bytes(counts.size());
  std::size_t total = 0;
  for (std::size_t r = 0; r < counts.size(); ++r) {
    bytes[r] = static_cast<std::size_t>(counts[r]) * sizeof(T);
    total += bytes[r];
  }
  std::vector<T> all(total / sizeof(T));
  comm->all_gather_v(mine.data(), mine.size() * sizeof(T), all.data(), bytes);
  return all;
}

template <class T>
void compute(Runtime& rt, const ParsedArgs& args, const SimCLRLoss& loss, const NpyArray& za,
             const NpyArray& zb, const std::optional<NpyArray>& weight_file,
             const std::optional<NpyArray>& negatives) {
  Communicator* comm = rt.communicator();
  const int world = rt.size(), rank = rt.rank();
  const std::int64_t rows = za.shape[0], dim = za.shape[1];

  std::vector<std::int64_t> split;
  SampleWeight weight;
  CallOptions options;
  options.communicator = comm;
  options.temperature_gradient = args.has("temperature-gradient");
  // Every rank holds the whole bank and its anchors see all of it: the single process's result.
  // The file's own dtype: the library refuses one that is not the views' (TypeError).
  if (negatives) {
    options.negatives.data = negatives->bytes.data();
    options.negatives.rows = negatives->shape[0];
    options.negatives.cols = negatives->shape[1];
    options.negatives.row_stride = negatives->shape[1];
    options.negatives.dtype = negatives->dtype;
  }
  rt.agreed([&] {
    if (auto s = args.get("split")) {
      split = parse_counts(*s, "split");
      SIMCLR_ENFORCE(static_cast<int>(split.size()) == world, ValueError, "--split has ",
                     split.size(), " counts but there are ", world, " ranks");
      SIMCLR_ENFORCE(std::accumulate(split.begin(), split.end(), std::int64_t{0}) == rows,
                     ValueError, "--split counts sum to ",
                     std::accumulate(split.begin(), split.end(), std::int64_t{0}), " but za has ",
                     rows, " rows");
    } else {
      for (int r = 0; r < world; ++r) split.push_back(rows / world + (r < rows % world ? 1 : 0));
    }
    if (auto g = args.get("global-batch-size")) {
      options.global_batch_size = *g == "infer"
                                      ? GlobalBatchSize::infer()
                                      : GlobalBatchSize::of(parse_int(*g, "global-batch-size", 0));
    }
    if (auto t = args.get("threads"))
      options.engine.threads = static_cast<int>(parse_int(*t, "threads", 0));
    if (auto sc = args.get("schedule")) options.engine.schedule = parse_schedule(*sc);
    if (auto m = args.get("memory-budget"))
      options.engine.memory_budget_bytes =
          static_cast<std::size_t>(parse_int(*m, "memory-budget", 0));
    if (weight_file) {
      weight = SampleWeight(weight_file->shape, weight_file->to_double());
      // A per-example weight of the global batch ([G] or [G, 1]) is sliced to this rank's rows.
      const auto& sh = weight.shape;
      const bool global_rows = !sh.empty() && sh[0] == rows && rows != 1 &&
                               (sh.size() == 1 || (sh.size() == 2 && sh[1] == 1));
      if (comm != nullptr && global_rows) {
        const std::int64_t begin =
            std::accumulate(split.begin(), split.begin() + rank, std::int64_t{0});
        std::vector<double> mine(
            weight.values.begin() + begin,
            weight.values.begin() + begin + split[static_cast<std::size_t>(rank)]);
        std::vector<std::int64_t> shape = sh;
        shape[0] = split[static_cast<std::size_t>(rank)];
        weight = SampleWeight(shape, mine);
      }
    }
  });

  const std::int64_t begin = std::accumulate(split.begin(), split.begin() + rank, std::int64_t{0});
  const std::int64_t n = split[static_cast<std::size_t>(rank)];
  const ConstMatrixView<T> a(za.data<T>() + begin * dim, n, dim);
  const ConstMatrixView<T> b(zb.data<T>() + begin * dim, n, dim);
  auto [out, grads] = loss.value_and_gradient(a, b, weight_file ? &weight : nullptr, options);

  // J = sum over ranks of each rank's objective; --loss-out in global row order.
  std::vector<double> objectives =
      gather_all(comm, std::vector<double>{static_cast<double>(out.objective)},
                 std::vector<std::int64_t>(world, 1));
  double total = 0;
  for (double j : objectives) total += j;
  double grad_temperature = 0;  // the ranks' shares add up to dJ/dT
  if (grads.grad_temperature) {
    for (double share :
         gather_all(comm, std::vector<double>{static_cast<double>(*grads.grad_temperature)},
                    std::vector<std::int64_t>(world, 1)))
      grad_temperature += share;
  }
  std::vector<T> loss_vec = out.values;
  std::vector<std::int64_t> loss_counts(world, 1);
  if (out.reduction == Reduction::kNone) loss_counts = split;
  loss_vec = gather_all(comm, loss_vec, loss_counts);
  std::vector<std::int64_t> grad_counts(split);
  for (auto& c : grad_counts) c *= dim;
  auto flat = [](const RowMatrix<T>& m) { return std::vector<T>(m.data(), m.data() + m.size()); };
  const bool want_grads = args.has("grad-a-out") || args.has("grad-b-out");
  std::vector<T> ga, gb;
  if (want_grads) {
    ga = gather_all(comm, flat(grads.grad_a), grad_counts);
    gb = gather_all(comm, flat(grads.grad_b), grad_counts);
  }

  rt.agreed([&] {
    if (rank != 0) return;
    StagedOutputs outputs;
    outputs.stage(args.get("loss-out"), loss_vec, {static_cast<std::int64_t>(loss_vec.size())});
    outputs.stage(args.get("grad-a-out"), ga, {rows, dim});
    outputs.stage(args.get("grad-b-out"), gb, {rows, dim});
    outputs.commit();
  });
  if (rank == 0) {
    nlohmann::ordered_json j;
    j["loss"] = total;
    j["reduction"] = to_string(loss.reduction());
    j["world_size"] = world;
    j["rows"] = split;
    if (!options.global_batch_size) {
      j["global_batch_size"] = nullptr;
    } else {
      j["global_batch_size"] = options.global_batch_size->is_infer()
                                   ? out.global_rows
                                   : options.global_batch_size->rows();
    }
    j["dtype"] = to_string(dtype_of<T>());
    if (negatives) j["negatives"] = negatives->shape[0];
    if (grads.grad_temperature) j["grad_temperature"] = grad_temperature;
    std::cout << j.dump() << std::endl;
  }
}

int run(Runtime& rt, const std::vector<std::string>& argv) {
  ParsedArgs args;
  rt.agreed([&] { args = parse_args(argv, command_specs()); });
  if (!args.help.empty()) {  // --help or -h: every rank parsed it, rank 0 prints it
    if (rt.rank() == 0) std::cout << args.help << std::flush;
    return 0;
  }
  if (args.subcommand == "config") {
    std::optional<SimCLRLoss> loss;
    rt.agreed([&] { loss = make_loss(args); });
    if (rt.rank() == 0) std::cout << loss->get_config_string() << std::endl;
    return 0;
  }
  if (args.subcommand == "bench") return run_bench(rt, args);

  std::optional<SimCLRLoss> loss;
  std::optional<NpyArray> za, zb, w, k;
  rt.agreed([&] {
    SIMCLR_ENFORCE(args.has("za") && args.has("zb"), ValueError,
                   "compute needs --za A.npy and --zb B.npy");
    loss = make_loss(args);
    za = read_npy(*args.get("za"), "za");
    zb = read_npy(*args.get("zb"), "zb");
    SIMCLR_ENFORCE(za->shape.size() == 2, ValueError, describe_input(*args.get("za"), "za"),
                   ": expected a 2-D array [N, d], got ", za->shape.size(), "-D");
    SIMCLR_ENFORCE(zb->shape.size() == 2, ValueError, describe_input(*args.get("zb"), "zb"),
                   ": expected a 2-D array [N, d], got ", zb->shape.size(), "-D");
    SIMCLR_ENFORCE(za->shape == zb->shape, ValueError, "za and zb must have the same shape: [",
                   za->shape[0], ", ", za->shape[1], "] vs. [", zb->shape[0], ", ", zb->shape[1],
                   "]");
    SIMCLR_ENFORCE(za->dtype == zb->dtype, ValueError,
                   "za and zb must have the same dtype: ", to_string(za->dtype), " vs. ",
                   to_string(zb->dtype));
    if (auto p = args.get("sample-weight")) w = read_npy(*p, "sample-weight");
    if (auto p = args.get("negatives")) {
      k = read_npy(*p, "negatives");
      SIMCLR_ENFORCE(k->shape.size() == 2, ValueError, describe_input(*p, "negatives"),
                     ": expected a 2-D array [K, d], got ", k->shape.size(), "-D");
    }
  });
  if (za->dtype == DType::kFloat32) {
    compute<float>(rt, args, *loss, *za, *zb, w, k);
  } else {
    compute<double>(rt, args, *loss, *za, *zb, w, k);
  }
  return 0;
}

}  // namespace
}  // namespace simclr::tools

int main(int argc, char** argv) { return simclr::tools::run_main(argc, argv, simclr::tools::run); }

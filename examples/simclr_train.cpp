// simclr-train: contrastive training of a small encoder on synthetic data with the library's
// distributed SimCLR loss, the data-parallel way (docs/architecture.md, "One training step").
//
//   simclr-train [--epochs N] [--batch B] ...        one process
//   mpirun -np 2 simclr-train [...]                  every rank takes its slice of each global
//   batch
//
// Everything random depends on (seed, global example index) only, never on the rank, so 1 and N
// ranks follow the same loss curve up to float rounding. Rank 0 prints progress, a k-NN accuracy of
// the learned representation on held-out data, and as its last stdout line one JSON object with the
// figures. Bad flags: `error: ...` on stderr, exit 2.

#include <omp.h>
#include <unistd.h>

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "simclr/loss.hpp"
#include "train/knn.hpp"
#include "train/mlp.hpp"
#include "train/runtime.hpp"
#include "train/synthetic_data.hpp"

#ifdef SIMCLR_TRAIN_WITH_MPI
#include <mpi.h>
#endif

namespace simclr::examples {
namespace {

using Real = double;
using Clock = std::chrono::steady_clock;

constexpr const char* kUsage = R"(usage: simclr-train [flags]
       mpirun -np N simclr-train [flags]

Trains a small MLP encoder with the SimCLR loss on seeded synthetic data (K classes, two
augmented views per example), then reports the k-NN accuracy of its representation on held-out
data. Under an MPI launcher every rank takes its slice of each global batch; the loss contrasts
the whole global batch.

flags:
  --epochs N        passes over the training set (default 20)
  --batch B         global batch size, split over the ranks (default 256)
  --examples N      training examples; need not be a multiple of the batch (default 4000)
  --classes K       number of classes (default 10)
  --seed S          seed of the data, augmentations and model (default 1)
  --lr X            Adam learning rate (default 0.002)
  --temperature T   SimCLR temperature (default 0.1)
  --threads N       threads per rank; 0 = cores / ranks on this node (default 0)
  --out DIR         write DIR/loss_curve.csv, DIR/summary.json, and DIR/loss_curve.png when
                    gnuplot is on PATH
  --help            this text

The last line on stdout is a JSON object:
  {"world_size", "steps", "initial_loss", "final_loss", "knn_accuracy", "chance", "seconds"}
)";

struct Options {
  std::int64_t epochs = 20;
  std::int64_t batch = 256;
  std::int64_t examples = 4000;
  std::int64_t classes = 10;
  std::int64_t seed = 1;
  double lr = 2e-3;
  double temperature = 0.1;
  std::int64_t threads = 0;
  std::optional<std::string> out;
  bool help = false;
};

constexpr std::int64_t kHeldOutExamples = 1000;
constexpr int kNeighbours = 5;

Options parse_options(const std::vector<std::string>& args) {
  const std::vector<std::string> with_value = {
      "epochs", "batch", "examples", "classes", "seed", "lr", "temperature", "threads", "out"};
  std::map<std::string, std::string> given;
  Options o;
  for (std::size_t i = 1; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      o.help = true;
      continue;
    }
    require(a.size() > 2 && a.compare(0, 2, "--") == 0, "unexpected argument '", a,
            "' (flags start with --; see --help)");
    std::string flag = a.substr(2), value;
    const auto eq = flag.find('=');
    const bool inline_value = eq != std::string::npos;
    if (inline_value) {
      value = flag.substr(eq + 1);
      flag = flag.substr(0, eq);
    }
    require(std::find(with_value.begin(), with_value.end(), flag) != with_value.end(),
            "unknown flag --", flag, " (see --help)");
    require(given.count(flag) == 0, "--", flag, " given twice");
    if (!inline_value) {
      require(i + 1 < args.size(), "--", flag, " needs a value");
      value = args[++i];
    }
    given[flag] = value;
  }
  auto positive = [](double v, const char* flag) {
    require(std::isfinite(v) && v > 0, "--", flag, " must be a positive finite number, got ", v);
    return v;
  };
  for (const auto& [flag, value] : given) {
    if (flag == "epochs") o.epochs = parse_int(value, flag, 1);
    if (flag == "batch") o.batch = parse_int(value, flag, 2);
    if (flag == "examples") o.examples = parse_int(value, flag, 2);
    if (flag == "classes") o.classes = parse_int(value, flag, 2);
    if (flag == "seed") o.seed = parse_int(value, flag, 0);
    if (flag == "lr") o.lr = positive(parse_double(value, flag), "lr");
    if (flag == "temperature") o.temperature = positive(parse_double(value, flag), "temperature");
    if (flag == "threads") o.threads = parse_int(value, flag, 0);
    if (flag == "out") {
      require(!value.empty(), "--out needs a directory");
      o.out = value;
    }
  }
  require(o.classes <= 1000, "--classes must be <= 1000, got ", o.classes);
  require(o.examples >= o.classes, "--examples (", o.examples, ") must be at least --classes (",
          o.classes, ")");
  return o;
}

// Parameter-gradient and loss sums over the ranks, on the demo's own duplicate of MPI_COMM_WORLD so
// that its traffic never mixes with the loss's communicator. Without MPI every sum is the identity.
class DataParallel {
 public:
  explicit DataParallel(bool distributed) {
#ifdef SIMCLR_TRAIN_WITH_MPI
    if (distributed) {
      check(MPI_Comm_dup(MPI_COMM_WORLD, &comm_), "MPI_Comm_dup");
      check(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
      MPI_Comm node = MPI_COMM_NULL;
      check(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node),
            "MPI_Comm_split_type");
      check(MPI_Comm_size(node, &ranks_on_node_), "MPI_Comm_size");
      MPI_Comm_free(&node);
    }
#else
    (void)distributed;
#endif
  }
  ~DataParallel() {
#ifdef SIMCLR_TRAIN_WITH_MPI
    if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
#endif
  }
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  int ranks_on_node() const { return ranks_on_node_; }

  // In place: v = sum over ranks of v. Collective.
  void sum(std::vector<double>& v) {
#ifdef SIMCLR_TRAIN_WITH_MPI
    if (comm_ != MPI_COMM_NULL) {
      check(MPI_Allreduce(MPI_IN_PLACE, v.data(), static_cast<int>(v.size()), MPI_DOUBLE, MPI_SUM,
                          comm_),
            "MPI_Allreduce (parameter gradients)");
    }
#else
    (void)v;
#endif
  }
  double sum(double x) {
#ifdef SIMCLR_TRAIN_WITH_MPI
    if (comm_ != MPI_COMM_NULL) {
      check(MPI_Allreduce(MPI_IN_PLACE, &x, 1, MPI_DOUBLE, MPI_SUM, comm_), "MPI_Allreduce (loss)");
    }
#endif
    return x;
  }

 private:
#ifdef SIMCLR_TRAIN_WITH_MPI
  static void check(int code, const char* call) {
    if (code == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING] = {0};
    int length = 0;
    MPI_Error_string(code, text, &length);
    throw CommError(std::string(call) + " failed: " + text);
  }
  MPI_Comm comm_ = MPI_COMM_NULL;
#endif
  int ranks_on_node_ = 1;
};

// Whether stdout ends on a terminal. An MPI launcher (Open MPI) hands its ranks a pseudo-terminal
// even when its own output goes to a pipe or a file, so under a launcher ask about the launcher's
// stdout (the parent process for local ranks; a remote rank's daemon has none, so it gets plain
// lines).
bool stdout_is_terminal(bool under_launcher) {
  if (isatty(STDOUT_FILENO) != 1) return false;
  if (!under_launcher) return true;
  const std::string link = "/proc/" + std::to_string(getppid()) + "/fd/1";
  std::error_code ec;
  const std::string target = std::filesystem::read_symlink(link, ec).string();
  return !ec && (target.rfind("/dev/pts/", 0) == 0 || target.rfind("/dev/tty", 0) == 0);
}

// Rank 0's progress: a live bar on a terminal, one plain line per epoch otherwise.
class Progress {
 public:
  Progress(bool enabled, bool live, std::int64_t epochs, std::int64_t total_steps)
      : enabled_(enabled),
        live_(enabled && live),
        epochs_(epochs),
        total_steps_(total_steps),
        start_(Clock::now()),
        last_draw_(start_) {}

  void step(std::int64_t epoch, std::int64_t step, double loss, std::int64_t examples) {
    examples_ += examples;
    if (!live_) return;
    const auto now = Clock::now();
    if (step != total_steps_ && now - last_draw_ < std::chrono::milliseconds(80)) return;
    last_draw_ = now;
    constexpr int kWidth = 28;
    const auto filled = static_cast<int>(kWidth * step / total_steps_);
    std::ostringstream bar;
    bar << "\r  epoch " << std::setw(width(epochs_)) << epoch + 1 << "/" << epochs_ << " ["
        << std::string(static_cast<std::size_t>(filled), '#')
        << std::string(static_cast<std::size_t>(kWidth - filled), '.') << "] step "
        << std::setw(width(total_steps_)) << step << "/" << total_steps_ << "  loss " << std::fixed
        << std::setprecision(4) << loss << "  " << std::setprecision(0) << rate() << " ex/s  ";
    std::cout << bar.str() << std::flush;
  }

  void epoch_done(std::int64_t epoch, std::int64_t step, double mean_loss) {
    if (!enabled_ || live_) return;
    std::cout << "epoch " << epoch + 1 << "/" << epochs_ << "  step " << step << "/" << total_steps_
              << "  loss " << std::fixed << std::setprecision(4) << mean_loss << "  examples/s "
              << std::setprecision(0) << rate() << std::defaultfloat << std::setprecision(6)
              << std::endl;
  }

  void finish() {
    if (live_) std::cout << std::endl;
    std::cout << std::defaultfloat << std::setprecision(6);
  }

 private:
  static int width(std::int64_t n) { return static_cast<int>(std::to_string(n).size()); }
  double rate() const {
    const double s = std::chrono::duration<double>(Clock::now() - start_).count();
    return s > 0 ? static_cast<double>(examples_) / s : 0.0;
  }

  bool enabled_, live_;
  std::int64_t epochs_, total_steps_;
  std::int64_t examples_ = 0;
  Clock::time_point start_, last_draw_;
};

// Rows of a global batch of `rows` that rank r takes: as even as possible, the first ranks one
// more.
std::pair<std::int64_t, std::int64_t> slice_of(std::int64_t rows, int rank, int world) {
  const std::int64_t base = rows / world, extra = rows % world;
  const std::int64_t begin = rank * base + std::min<std::int64_t>(rank, extra);
  return {begin, base + (rank < extra ? 1 : 0)};
}

// The epoch's order of the training examples, the same on every rank.
std::vector<std::int64_t> shuffled(std::int64_t n, std::uint64_t seed, std::int64_t epoch) {
  std::vector<std::int64_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), std::int64_t{0});
  Rng rng{seed, static_cast<std::uint64_t>(Stream::kShuffle), static_cast<std::uint64_t>(epoch)};
  for (std::size_t i = order.size(); i > 1; --i) {
    std::swap(order[i - 1], order[static_cast<std::size_t>(rng.next() % i)]);
  }
  return order;
}

bool on_path(const std::string& program) {
  const char* path = std::getenv("PATH");
  if (path == nullptr) return false;
  std::stringstream dirs(path);
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    if (!dir.empty() && access((dir + "/" + program).c_str(), X_OK) == 0) return true;
  }
  return false;
}

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

struct CurvePoint {
  std::int64_t step, epoch, rows;
  double loss, seconds;
};

void write_outputs(const std::filesystem::path& dir, const std::vector<CurvePoint>& curve) {
  const auto csv_path = dir / "loss_curve.csv";
  {
    std::ofstream csv(csv_path);
    require(csv.good(), csv_path.string(), ": cannot write");
    csv << "step,epoch,global_batch,loss,seconds\n" << std::setprecision(9);
    for (const auto& p : curve) {
      csv << p.step << ',' << p.epoch + 1 << ',' << p.rows << ',' << p.loss << ',' << p.seconds
          << '\n';
    }
    require(csv.good(), csv_path.string(), ": write failed");
  }
  std::cout << "wrote " << csv_path.string() << std::endl;
  if (!on_path("gnuplot")) {
    std::cout << "gnuplot not on PATH: no loss_curve.png" << std::endl;
    return;
  }
  {
    std::ofstream gp(dir / "loss_curve.gp");
    gp << "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {\n"
          "  set terminal pngcairo size 900,500\n"
          "} else {\n"
          "  set terminal png size 900,500\n"
          "}\n"
          "set output 'loss_curve.png'\n"
          "set datafile separator ','\n"
          "set title 'simclr-train: SimCLR loss per step'\n"
          "set xlabel 'step'\n"
          "set ylabel 'loss (global batch mean)'\n"
          "set grid\n"
          "plot 'loss_curve.csv' using 1:4 skip 1 with lines lw 2 title 'loss'\n";
  }
  const std::string command =
      "cd " + shell_quote(dir.string()) + " && gnuplot loss_curve.gp > /dev/null 2>&1";
  if (std::system(command.c_str()) == 0) {
    std::cout << "wrote " << (dir / "loss_curve.png").string() << std::endl;
  } else {
    std::cerr << "warning: gnuplot failed; see " << (dir / "loss_curve.gp").string() << std::endl;
  }
}

int train(Runtime& rt, const Options& opt, Clock::time_point start) {
  const int rank = rt.rank(), world = rt.size();
  DataParallel parallel(rt.communicator() != nullptr);

  int threads = static_cast<int>(opt.threads);
  if (threads == 0) {
    const int cores = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
    threads = std::max(1, cores / parallel.ranks_on_node());
  }
  omp_set_num_threads(threads);
  Eigen::setNbThreads(threads);

  std::optional<std::filesystem::path> out_dir;
  rt.agreed([&] {
    if (!opt.out || rank != 0) return;
    std::error_code ec;
    std::filesystem::create_directories(*opt.out, ec);
    require(!ec && std::filesystem::is_directory(*opt.out), "--out ", *opt.out,
            ": cannot create the directory (", ec.message(), ")");
    out_dir = std::filesystem::path(*opt.out);
  });

  const auto seed = static_cast<std::uint64_t>(opt.seed);
  SyntheticTaskOptions task_options;
  task_options.classes = static_cast<int>(opt.classes);
  const SyntheticTask<Real> task(seed, task_options);
  EncoderShape shape;
  shape.input = task.dim();
  Encoder<Real> model(shape, seed);
  Adam<Real> adam(model, opt.lr);
  const SimCLRLoss loss(opt.temperature, Reduction::kSumOverBatchSize);

  const std::int64_t steps_per_epoch = (opt.examples + opt.batch - 1) / opt.batch;
  const std::int64_t total_steps = steps_per_epoch * opt.epochs;
  if (rank == 0) {
    std::cout << "simclr-train: " << world << (world == 1 ? " rank" : " ranks") << " x " << threads
              << (threads == 1 ? " thread" : " threads") << ", " << opt.examples << " examples of "
              << opt.classes << " classes in R^" << task.dim() << ", batch " << opt.batch << " ("
              << steps_per_epoch << " steps/epoch, last batch "
              << opt.examples - (steps_per_epoch - 1) * opt.batch << "), temperature "
              << opt.temperature << ", " << model.parameter_count() << " parameters" << std::endl;
  }

  CallOptions call;
  call.communicator = rt.communicator();
  call.engine.threads = threads;
  const auto d = task.dim();
  Matrix<Real> views;      // [2n, d]: this rank's rows of view 0, then of view 1
  Matrix<Real> grad_proj;  // [2n, projection]
  std::vector<Real> flat_grad;
  std::vector<CurvePoint> curve;
  Progress progress(rank == 0, stdout_is_terminal(started_by_launcher()), opt.epochs, total_steps);
  const auto train_start = Clock::now();
  double final_epoch_loss = 0;
  std::int64_t step = 0;

  for (std::int64_t epoch = 0; epoch < opt.epochs; ++epoch) {
    const std::vector<std::int64_t> order = shuffled(opt.examples, seed, epoch);
    double epoch_loss_sum = 0;  // sum of per-example losses: batches weighted by their size
    for (std::int64_t batch_begin = 0; batch_begin < opt.examples; batch_begin += opt.batch) {
      const std::int64_t global_rows = std::min(opt.batch, opt.examples - batch_begin);
      const auto [mine_begin, n] = slice_of(global_rows, rank, world);
      views.resize(2 * n, d);
      for (std::int64_t i = 0; i < n; ++i) {
        const std::int64_t index = order[static_cast<std::size_t>(batch_begin + mine_begin + i)];
        task.augmented(epoch, index, 0, views.row(i).data());
        task.augmented(epoch, index, 1, views.row(n + i).data());
      }

      model.zero_grad();
      const Matrix<Real>& z = model.forward(views);
      const auto p = z.cols();
      // The loss's sum_over_batch_size divides by the GLOBAL batch, so the ranks' objectives add up
      // to the global mean and each rank's embedding gradient is already d(global mean)/dz.
      if (call.communicator != nullptr) call.global_batch_size = GlobalBatchSize::of(global_rows);
      const auto [value, grads] = loss.value_and_gradient<Real>(
          ConstMatrixView<Real>(z.data(), n, p), ConstMatrixView<Real>(z.data() + n * p, n, p),
          nullptr, call);
      grad_proj.resize(2 * n, p);
      grad_proj.topRows(n) = grads.grad_a;
      grad_proj.bottomRows(n) = grads.grad_b;
      model.backward(grad_proj);

      // Data parallel: every rank applies the same summed gradient, so the replicas stay identical.
      model.pack_gradients(flat_grad);
      parallel.sum(flat_grad);
      model.unpack_gradients(flat_grad);
      adam.step(model);

      const double step_loss = parallel.sum(static_cast<double>(value.objective));
      ++step;
      epoch_loss_sum += step_loss * static_cast<double>(global_rows);
      curve.push_back({step, epoch, global_rows, step_loss,
                       std::chrono::duration<double>(Clock::now() - train_start).count()});
      progress.step(epoch, step, step_loss, global_rows);
    }
    final_epoch_loss = epoch_loss_sum / static_cast<double>(opt.examples);
    progress.epoch_done(epoch, step, final_epoch_loss);
  }
  progress.finish();
  const double train_seconds = std::chrono::duration<double>(Clock::now() - train_start).count();

  if (rank != 0) return 0;

  // Evaluation on rank 0 (the replicas are identical): k-NN of held-out clean examples against the
  // clean training examples, in the learned representation, in the projection, and on raw inputs.
  Matrix<Real> reference(opt.examples, d), held_out(kHeldOutExamples, d);
  std::vector<int> reference_labels(static_cast<std::size_t>(opt.examples));
  std::vector<int> held_out_labels(static_cast<std::size_t>(kHeldOutExamples));
  for (std::int64_t i = 0; i < opt.examples; ++i) {
    task.clean(Split::kTrain, i, reference.row(i).data());
    reference_labels[static_cast<std::size_t>(i)] = task.label(i);
  }
  for (std::int64_t i = 0; i < kHeldOutExamples; ++i) {
    task.clean(Split::kHeldOut, i, held_out.row(i).data());
    held_out_labels[static_cast<std::size_t>(i)] = task.label(i);
  }
  const int k = static_cast<int>(opt.classes);
  const double knn =
      knn_accuracy<Real>(model.represent(held_out), held_out_labels, model.represent(reference),
                         reference_labels, k, kNeighbours);
  const Matrix<Real> projected_held_out = model.forward(held_out);
  const double knn_projection =
      knn_accuracy<Real>(projected_held_out, held_out_labels, model.forward(reference),
                         reference_labels, k, kNeighbours);
  const double knn_raw =
      knn_accuracy<Real>(held_out, held_out_labels, reference, reference_labels, k, kNeighbours);
  const double chance = 1.0 / static_cast<double>(opt.classes);

  std::cout << "loss " << std::setprecision(5) << curve.front().loss << " -> " << final_epoch_loss
            << " (last epoch mean) in " << step << " steps, " << std::setprecision(3)
            << train_seconds << " s\n"
            << kNeighbours << "-NN accuracy on " << kHeldOutExamples
            << " held-out examples: representation " << knn << ", projection " << knn_projection
            << ", raw inputs " << knn_raw << " (chance " << chance << ")" << std::endl;
  if (out_dir) {
    try {
      write_outputs(*out_dir, curve);
      std::cout << "outputs in " << out_dir->string() << std::endl;
    } catch (const Error& e) {
      std::cerr << "error: " << e.what() << std::endl;
      return 2;
    }
  }

  nlohmann::ordered_json summary;
  summary["world_size"] = world;
  summary["steps"] = step;
  summary["initial_loss"] = curve.front().loss;
  summary["final_loss"] = final_epoch_loss;
  summary["knn_accuracy"] = knn;
  summary["chance"] = chance;
  summary["seconds"] =
      std::round(std::chrono::duration<double>(Clock::now() - start).count() * 1000.0) / 1000.0;
  if (out_dir) {
    std::ofstream json(*out_dir / "summary.json");
    json << summary.dump(2) << '\n';
    if (!json.good()) std::cerr << "warning: could not write summary.json" << std::endl;
  }
  std::cout << summary.dump() << std::endl;
  return 0;
}

}  // namespace
}  // namespace simclr::examples

int main(int argc, char** argv) {
  namespace ex = simclr::examples;
  const auto start = ex::Clock::now();
  return ex::run_main(argc, argv, [&](ex::Runtime& rt, const std::vector<std::string>& args) {
    // Every rank parses the same argv, so every rank reaches the same verdict without talking.
    const ex::Options options = ex::parse_options(args);
    if (options.help) {
      if (rt.rank() == 0) std::cout << ex::kUsage;
      return 0;
    }
    return ex::train(rt, options, start);
  });
}

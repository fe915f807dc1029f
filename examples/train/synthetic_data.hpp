#pragma once
// The demo's data: a seeded synthetic task whose every value is a pure function of (seed, what,
// index), so any rank can rebuild any example without communication, and 1 rank and N ranks see the
// same data.
//
// K classes live in R^dim. A clean example is
//     x_i = prototype[class_i] + within_i + nuisance_basis^T * z_i
// where within_i is small example-specific detail and z_i (large) moves x_i inside a fixed low-rank
// "nuisance" subspace that carries no class information (think colour or lighting in images). The
// raw inputs are therefore hard to classify by cosine similarity. An augmented view resamples the
// nuisance (z is drawn afresh per view, as colour jitter redraws colour), adds isotropic noise,
// drops features and rescales the whole vector. The only thing two views of the same example share
// is its class prototype plus its detail, which is what contrastive training has to discover.

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <initializer_list>

namespace simclr::examples {

// A counter-based generator: splitmix64 over a key hashed from (seed, tags...). Cheap to construct,
// so every example and view gets its own independent stream.
class Rng {
 public:
  Rng(std::initializer_list<std::uint64_t> key) {
    for (const std::uint64_t k : key) state_ = mix(state_ ^ mix(k + 0x632be59bd9b4e019ULL));
  }
  std::uint64_t next() {
    state_ += 0x9e3779b97f4a7c15ULL;
    return mix(state_);
  }
  // Uniform in [0, 1).
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  // Standard normal (Box-Muller; one value per call keeps streams independent of call pairing).
  double normal() {
    const double u1 = 1.0 - uniform();  // (0, 1]
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

 private:
  static std::uint64_t mix(std::uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  std::uint64_t state_ = 0x853c49e6748fea9bULL;
};

// Tags that keep the random streams apart.
enum class Stream : std::uint64_t {
  kPrototype = 1,
  kNuisanceBasis,
  kExample,
  kView,
  kShuffle,
  kInit,
};

// Which pool an example index refers to: training examples, or held-out examples for the
// evaluation.
enum class Split : std::uint64_t { kTrain = 1, kHeldOut = 2 };

struct SyntheticTaskOptions {
  int classes = 10;
  int dim = 32;
  int nuisance_rank = 16;
  double prototype_scale = 1.0;  // per coordinate
  double within_scale = 0.35;    // per coordinate, example-specific detail
  double nuisance_scale = 4.5;   // per nuisance direction (unit directions)
  // Augmentation strengths.
  double view_noise = 0.25;    // isotropic Gaussian noise per coordinate
  double view_dropout = 0.15;  // probability that a feature is zeroed
  double view_scale_min = 0.6, view_scale_max = 1.4;
};

template <class Real>
class SyntheticTask {
 public:
  using RowVector = Eigen::Matrix<Real, 1, Eigen::Dynamic>;
  using Matrix = Eigen::Matrix<Real, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

  SyntheticTask(std::uint64_t seed, SyntheticTaskOptions options) : seed_(seed), options_(options) {
    const int d = options_.dim;
    prototypes_.resize(options_.classes, d);
    for (int c = 0; c < options_.classes; ++c) {
      Rng rng{seed_, static_cast<std::uint64_t>(Stream::kPrototype), static_cast<std::uint64_t>(c)};
      for (int j = 0; j < d; ++j) prototypes_(c, j) = real(options_.prototype_scale * rng.normal());
    }
    // Unit nuisance directions (random, not orthogonalised: they only need to span a subspace).
    nuisance_basis_.resize(options_.nuisance_rank, d);
    for (int k = 0; k < options_.nuisance_rank; ++k) {
      Rng rng{seed_, static_cast<std::uint64_t>(Stream::kNuisanceBasis),
              static_cast<std::uint64_t>(k)};
      for (int j = 0; j < d; ++j) nuisance_basis_(k, j) = real(rng.normal());
      nuisance_basis_.row(k).normalize();
    }
  }

  int classes() const { return options_.classes; }
  int dim() const { return options_.dim; }

  // Balanced classes: exactly 1/K of any run of K consecutive indices.
  int label(std::int64_t index) const { return static_cast<int>(index % options_.classes); }

  // The clean example (what the evaluation embeds), written to out[0, dim).
  void clean(Split split, std::int64_t index, Real* out) const {
    Rng rng = example_rng(split, index);
    signal(index, rng, out);
    add_nuisance(rng, out);
  }

  // View `view` (0 or 1) of training example `index` in epoch `epoch`.
  void augmented(std::int64_t epoch, std::int64_t index, int view, Real* out) const {
    Rng example = example_rng(Split::kTrain, index);
    signal(index, example, out);
    Rng rng{seed_, static_cast<std::uint64_t>(Stream::kView), static_cast<std::uint64_t>(epoch),
            static_cast<std::uint64_t>(index), static_cast<std::uint64_t>(view)};
    add_nuisance(rng, out);
    const double scale = options_.view_scale_min +
                         (options_.view_scale_max - options_.view_scale_min) * rng.uniform();
    for (int j = 0; j < options_.dim; ++j) {
      const double noisy = static_cast<double>(out[j]) + options_.view_noise * rng.normal();
      const bool dropped = rng.uniform() < options_.view_dropout;
      out[j] = dropped ? Real(0) : real(scale * noisy);
    }
  }

 private:
  static Real real(double v) { return static_cast<Real>(v); }

  Rng example_rng(Split split, std::int64_t index) const {
    return Rng{seed_, static_cast<std::uint64_t>(Stream::kExample),
               static_cast<std::uint64_t>(split), static_cast<std::uint64_t>(index)};
  }

  // Prototype of the class plus the example's own detail (drawn first from the example's stream).
  void signal(std::int64_t index, Rng& rng, Real* out) const {
    const int c = label(index);
    for (int j = 0; j < options_.dim; ++j) {
      out[j] = real(static_cast<double>(prototypes_(c, j)) + options_.within_scale * rng.normal());
    }
  }

  void add_nuisance(Rng& rng, Real* out) const {
    for (int k = 0; k < options_.nuisance_rank; ++k) {
      const double z = options_.nuisance_scale * rng.normal();
      for (int j = 0; j < options_.dim; ++j) {
        out[j] = real(static_cast<double>(out[j]) + z * static_cast<double>(nuisance_basis_(k, j)));
      }
    }
  }

  std::uint64_t seed_;
  SyntheticTaskOptions options_;
  Matrix prototypes_;      // [K, dim]
  Matrix nuisance_basis_;  // [nuisance_rank, dim], unit rows
};

}  // namespace simclr::examples

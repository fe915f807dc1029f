#pragma once
// A small encoder with its own backward, in Eigen: the demo's model.
//
//   x [n, in] -> Dense -> ReLU -> Dense -> h [n, rep]          (encoder f; h is the representation)
//   h         -> Dense -> ReLU -> Dense -> z [n, proj]         (projection head g; the loss sees z)
//
// Rows are examples (row-major, so a block of rows is a simclr::ConstMatrixView without a copy).
// The backward accumulates parameter gradients, which the trainer all-reduces and hands to Adam.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "train/synthetic_data.hpp"

namespace simclr::examples {

template <class Real>
using Matrix = Eigen::Matrix<Real, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class Real>
using RowVector = Eigen::Matrix<Real, 1, Eigen::Dynamic>;

// y = x w + b, w [in, out], b [1, out].
template <class Real>
struct Dense {
  Matrix<Real> weight, grad_weight;
  RowVector<Real> bias, grad_bias;

  // He-normal weights from the seed and the layer's id only, so every rank starts identical.
  Dense(int in, int out, std::uint64_t seed, int layer_id)
      : weight(in, out),
        grad_weight(Matrix<Real>::Zero(in, out)),
        bias(RowVector<Real>::Zero(out)),
        grad_bias(RowVector<Real>::Zero(out)) {
    Rng rng{seed, static_cast<std::uint64_t>(Stream::kInit), static_cast<std::uint64_t>(layer_id)};
    const double stddev = std::sqrt(2.0 / in);
    for (Eigen::Index i = 0; i < weight.size(); ++i) {
      weight.data()[i] = static_cast<Real>(stddev * rng.normal());
    }
  }

  void forward(const Matrix<Real>& x, Matrix<Real>& y) const {
    y.noalias() = x * weight;
    y.rowwise() += bias;
  }
  // Accumulates dL/dw, dL/db; writes dL/dx when asked.
  void backward(const Matrix<Real>& x, const Matrix<Real>& grad_y, Matrix<Real>* grad_x) {
    grad_weight.noalias() += x.transpose() * grad_y;
    grad_bias += grad_y.colwise().sum();
    if (grad_x != nullptr) grad_x->noalias() = grad_y * weight.transpose();
  }
};

struct EncoderShape {
  int input = 32;
  int hidden = 128;
  int representation = 64;
  int projection = 32;
};

template <class Real>
class Encoder {
 public:
  Encoder(EncoderShape shape, std::uint64_t seed)
      : layers_{Dense<Real>(shape.input, shape.hidden, seed, 0),
                Dense<Real>(shape.hidden, shape.representation, seed, 1),
                Dense<Real>(shape.representation, shape.representation, seed, 2),
                Dense<Real>(shape.representation, shape.projection, seed, 3)} {}

  // Full forward; keeps the activations for backward().
  const Matrix<Real>& forward(const Matrix<Real>& x) {
    input_ = &x;
    layers_[0].forward(x, pre1_);
    post1_ = pre1_.cwiseMax(Real(0));
    layers_[1].forward(post1_, rep_);
    layers_[2].forward(rep_, pre2_);
    post2_ = pre2_.cwiseMax(Real(0));
    layers_[3].forward(post2_, proj_);
    return proj_;
  }

  // The representation h only (evaluation; no state kept).
  Matrix<Real> represent(const Matrix<Real>& x) const {
    Matrix<Real> pre, rep;
    layers_[0].forward(x, pre);
    pre = pre.cwiseMax(Real(0));
    layers_[1].forward(pre, rep);
    return rep;
  }

  // Backward of the last forward() given dL/dz; accumulates every parameter gradient.
  void backward(const Matrix<Real>& grad_proj) {
    layers_[3].backward(post2_, grad_proj, &grad_a_);
    grad_a_ = grad_a_.cwiseProduct((pre2_.array() > Real(0)).template cast<Real>().matrix());
    layers_[2].backward(rep_, grad_a_, &grad_b_);
    layers_[1].backward(post1_, grad_b_, &grad_a_);
    grad_a_ = grad_a_.cwiseProduct((pre1_.array() > Real(0)).template cast<Real>().matrix());
    layers_[0].backward(*input_, grad_a_, nullptr);
  }

  void zero_grad() {
    for (auto& l : layers_) {
      l.grad_weight.setZero();
      l.grad_bias.setZero();
    }
  }

  // Every parameter gradient, flattened in a fixed order (for the all-reduce), and back.
  std::size_t parameter_count() const {
    std::size_t n = 0;
    for (const auto& l : layers_) n += static_cast<std::size_t>(l.weight.size() + l.bias.size());
    return n;
  }
  void pack_gradients(std::vector<Real>& flat) const {
    flat.resize(parameter_count());
    Real* p = flat.data();
    for (const auto& l : layers_) {
      p = std::copy(l.grad_weight.data(), l.grad_weight.data() + l.grad_weight.size(), p);
      p = std::copy(l.grad_bias.data(), l.grad_bias.data() + l.grad_bias.size(), p);
    }
  }
  void unpack_gradients(const std::vector<Real>& flat) {
    const Real* p = flat.data();
    for (auto& l : layers_) {
      std::copy(p, p + l.grad_weight.size(), l.grad_weight.data());
      p += l.grad_weight.size();
      std::copy(p, p + l.grad_bias.size(), l.grad_bias.data());
      p += l.grad_bias.size();
    }
  }

  std::vector<Dense<Real>>& layers() { return layers_; }

 private:
  std::vector<Dense<Real>> layers_;
  const Matrix<Real>* input_ = nullptr;
  Matrix<Real> pre1_, post1_, rep_, pre2_, post2_, proj_, grad_a_, grad_b_;
};

// Adam (Kingma & Ba) with bias correction, one moment pair per parameter tensor.
template <class Real>
class Adam {
 public:
  Adam(Encoder<Real>& model, double lr, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8)
      : lr_(lr), beta1_(beta1), beta2_(beta2), eps_(eps) {
    for (auto& l : model.layers()) {
      m_.push_back(Matrix<Real>::Zero(l.weight.rows(), l.weight.cols()));
      v_.push_back(Matrix<Real>::Zero(l.weight.rows(), l.weight.cols()));
      m_.push_back(Matrix<Real>::Zero(1, l.bias.size()));
      v_.push_back(Matrix<Real>::Zero(1, l.bias.size()));
    }
  }

  void step(Encoder<Real>& model) {
    ++t_;
    const double c1 = 1.0 - std::pow(beta1_, static_cast<double>(t_));
    const double c2 = 1.0 - std::pow(beta2_, static_cast<double>(t_));
    std::size_t k = 0;
    for (auto& l : model.layers()) {
      update(l.weight.data(), l.grad_weight.data(), l.weight.size(), k++, c1, c2);
      update(l.bias.data(), l.grad_bias.data(), l.bias.size(), k++, c1, c2);
    }
  }

 private:
  void update(Real* param, const Real* grad, Eigen::Index size, std::size_t k, double c1,
              double c2) {
    Eigen::Map<Eigen::Array<Real, Eigen::Dynamic, 1>> p(param, size);
    Eigen::Map<const Eigen::Array<Real, Eigen::Dynamic, 1>> g(grad, size);
    Eigen::Map<Eigen::Array<Real, Eigen::Dynamic, 1>> m(m_[k].data(), size);
    Eigen::Map<Eigen::Array<Real, Eigen::Dynamic, 1>> v(v_[k].data(), size);
    const auto b1 = static_cast<Real>(beta1_), b2 = static_cast<Real>(beta2_);
    m = b1 * m + (Real(1) - b1) * g;
    v = b2 * v + (Real(1) - b2) * g.square();
    const auto step = static_cast<Real>(lr_ / c1);
    const auto root_c2 = static_cast<Real>(std::sqrt(c2));
    p -= step * m / ((v.sqrt() / root_c2) + static_cast<Real>(eps_));
  }

  double lr_, beta1_, beta2_, eps_;
  std::int64_t t_ = 0;
  std::vector<Matrix<Real>> m_, v_;
};

}  // namespace simclr::examples

#pragma once
// Views of caller-owned memory and the dtypes shared by every layer (and, through options.hpp, the
// reduction keys).

#include <Eigen/Core>
#include <cstdint>
#include <string>

#include "simclr/options.hpp"

namespace simclr {

// The two dtypes of the CPU path.
enum class DType : std::int32_t { kFloat32 = 1, kFloat64 = 2 };

template <class T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() {
  return DType::kFloat32;
}
template <>
constexpr DType dtype_of<double>() {
  return DType::kFloat64;
}

// "float32" / "float64".
std::string to_string(DType dtype);

// A read-only [rows, cols] row-major view of caller-owned memory; row_stride (in elements, >= cols)
// lets a view skip padding or select columns of a wider buffer. Never owns or copies.
template <class T>
struct ConstMatrixView {
  const T* data = nullptr;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t row_stride = 0;

  ConstMatrixView() = default;
  ConstMatrixView(const T* data_, std::int64_t rows_, std::int64_t cols_,
                  std::int64_t row_stride_ = -1)
      : data(data_), rows(rows_), cols(cols_), row_stride(row_stride_ < 0 ? cols_ : row_stride_) {}
  // Any Eigen dense expression with direct access (a row-major matrix, a block of one, a Map).
  template <class Derived>
  ConstMatrixView(const Eigen::DenseBase<Derived>& m)  // NOLINT(google-explicit-constructor)
      : data(m.derived().data()),
        rows(m.rows()),
        cols(m.cols()),
        row_stride(m.rows() <= 1 ? m.cols() : m.derived().outerStride()) {
    static_assert(bool(Derived::IsRowMajor) || Derived::ColsAtCompileTime == 1,
                  "simclr views need row-major Eigen matrices (Eigen::RowMajor)");
  }
  const T* row(std::int64_t i) const { return data + i * row_stride; }
};

// A writable [rows, cols] row-major view of caller-owned memory.
template <class T>
struct MatrixView {
  T* data = nullptr;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t row_stride = 0;

  MatrixView() = default;
  MatrixView(T* data_, std::int64_t rows_, std::int64_t cols_, std::int64_t row_stride_ = -1)
      : data(data_), rows(rows_), cols(cols_), row_stride(row_stride_ < 0 ? cols_ : row_stride_) {}
  template <class Derived>
  MatrixView(Eigen::DenseBase<Derived>& m)  // NOLINT(google-explicit-constructor)
      : data(m.derived().data()),
        rows(m.rows()),
        cols(m.cols()),
        row_stride(m.rows() <= 1 ? m.cols() : m.derived().outerStride()) {
    static_assert(bool(Derived::IsRowMajor) || Derived::ColsAtCompileTime == 1,
                  "simclr views need row-major Eigen matrices (Eigen::RowMajor)");
  }
  T* row(std::int64_t i) const { return data + i * row_stride; }
};

// Row-major dense matrix, the type the library returns gradients in.
template <class T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

}  // namespace simclr

#pragma once
// The exception hierarchy of the library. Every error a caller can see derives from simclr::Error,
// named for what a Python user of TensorFlow Similarity would see for the same mistake.

#include <sstream>
#include <stdexcept>
#include <string>

namespace simclr {

// Root of every exception the library throws (a std::runtime_error).
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// A bad value: shapes that do not match, NaN/Inf in an embedding, an invalid reduction or
// temperature, the distribution rule. Python: ValueError.
class ValueError : public Error {
 public:
  explicit ValueError(const std::string& what) : Error(what) {}
};

// A value of the wrong kind: an unknown config key, a config value of the wrong JSON type, a wrong
// dtype. Python: TypeError.
class TypeError : public Error {
 public:
  explicit TypeError(const std::string& what) : Error(what) {}
};

// A failure of the communication layer (MPI, NCCL, CUDA runtime) or a collective that timed out.
class CommError : public Error {
 public:
  explicit CommError(const std::string& what) : Error(what) {}
};

namespace detail {

template <class... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream os;
  os.precision(17);
  (os << ... << args);
  return os.str();
}

}  // namespace detail
}  // namespace simclr

// Check macros that print both sides ("rows 7 vs 8"), in the style of gloo's GLOO_ENFORCE_EQ.
#define SIMCLR_ENFORCE(cond, ExcType, ...)                              \
  do {                                                                  \
    if (!(cond)) throw ExcType(::simclr::detail::str_cat(__VA_ARGS__)); \
  } while (0)

#define SIMCLR_ENFORCE_EQ(a, b, ExcType, what)                                            \
  do {                                                                                    \
    const auto simclr_a_ = (a);                                                           \
    const auto simclr_b_ = (b);                                                           \
    if (!(simclr_a_ == simclr_b_))                                                        \
      throw ExcType(::simclr::detail::str_cat(what, ": ", simclr_a_, " vs ", simclr_b_)); \
  } while (0)

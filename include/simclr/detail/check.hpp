#pragma once
// Check macros of the library's own sources; not installed, not public API.
//
// SIMCLR_ENFORCE / SIMCLR_ENFORCE_EQ check what a caller passed and throw the exception type given,
// with a message for the user ("rows 7 vs 8"), in the style of gloo's GLOO_ENFORCE_EQ.
// SIMCLR_CHECK / SIMCLR_CHECK_EQ guard the library's internal invariants: a failure is a bug of the
// library, and the message gives file:line, the condition and both sides.

#include <sstream>
#include <string>

#include "simclr/errors.hpp"

namespace simclr::detail {

template <class... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream os;
  os.precision(17);
  (os << ... << args);
  return os.str();
}

// The file name of a __FILE__ path, without the directories: the build machine's paths stay out of
// messages, and the library's file names are unique.
constexpr const char* file_name(const char* path) {
  const char* name = path;
  for (const char* p = path; *p != '\0'; ++p)
    if (*p == '/' || *p == '\\') name = p + 1;
  return name;
}

}  // namespace simclr::detail

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

// Internal invariant: throws simclr::Error "internal error at file.cpp:line: check `cond` failed".
#define SIMCLR_CHECK(cond)                                                                        \
  do {                                                                                            \
    if (!(cond))                                                                                  \
      throw ::simclr::Error(::simclr::detail::str_cat("internal error at ",                       \
                                                      ::simclr::detail::file_name(__FILE__), ":", \
                                                      __LINE__, ": check `", #cond, "` failed")); \
  } while (0)

// Internal invariant a OP b with both sides printed: "check `rows == cols` failed (7 vs 8)".
#define SIMCLR_CHECK_OP(a, b, op)                                                                  \
  do {                                                                                             \
    const auto simclr_a_ = (a);                                                                    \
    const auto simclr_b_ = (b);                                                                    \
    if (!(simclr_a_ op simclr_b_))                                                                 \
      throw ::simclr::Error(::simclr::detail::str_cat(                                             \
          "internal error at ", ::simclr::detail::file_name(__FILE__), ":", __LINE__, ": check `", \
          #a, " " #op " ", #b, "` failed (", simclr_a_, " vs ", simclr_b_, ")"));                  \
  } while (0)
#define SIMCLR_CHECK_EQ(a, b) SIMCLR_CHECK_OP(a, b, ==)
#define SIMCLR_CHECK_LE(a, b) SIMCLR_CHECK_OP(a, b, <=)
#define SIMCLR_CHECK_LT(a, b) SIMCLR_CHECK_OP(a, b, <)
#define SIMCLR_CHECK_GE(a, b) SIMCLR_CHECK_OP(a, b, >=)

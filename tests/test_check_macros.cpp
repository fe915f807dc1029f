// The internal check macros (include/simclr/detail/check.hpp): a failed invariant is a bug of the
// library, so the message must let a maintainer find it (file:line, the condition as written, both
// sides), and its type must not pass for bad input (ValueError / TypeError).

#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "simclr/detail/check.hpp"

namespace simclr {
namespace {

// The message of the simclr::Error that `f` throws; a marker when it throws something else or
// nothing. A ValueError or TypeError counts as something else.
template <class F>
std::string check_message(F&& f) {
  try {
    f();
  } catch (const ValueError& e) {
    return std::string("ValueError: ") + e.what();
  } catch (const TypeError& e) {
    return std::string("TypeError: ") + e.what();
  } catch (const Error& e) {
    return e.what();
  }
  return "no exception";
}

std::string at(int line) {
  return "internal error at test_check_macros.cpp:" + std::to_string(line);
}

TEST(CheckMacros, CheckNamesFileLineAndCondition) {
  const int rows = 7;
  const int line = __LINE__ + 1;
  const std::string what = check_message([&] { SIMCLR_CHECK(rows % 2 == 0); });
  EXPECT_EQ(what, at(line) + ": check `rows % 2 == 0` failed");
  EXPECT_EQ(check_message([&] { SIMCLR_CHECK(rows == 7); }), "no exception");
}

TEST(CheckMacros, ComparisonsPrintBothSides) {
  const std::int64_t rows = 7, cols = 8;
  int line = __LINE__ + 1;
  EXPECT_EQ(check_message([&] { SIMCLR_CHECK_EQ(rows, cols); }),
            at(line) + ": check `rows == cols` failed (7 vs 8)");
  line = __LINE__ + 1;
  EXPECT_EQ(check_message([&] { SIMCLR_CHECK_LE(cols, rows); }),
            at(line) + ": check `cols <= rows` failed (8 vs 7)");
  line = __LINE__ + 1;
  EXPECT_EQ(check_message([&] { SIMCLR_CHECK_LT(rows, rows); }),
            at(line) + ": check `rows < rows` failed (7 vs 7)");
  line = __LINE__ + 1;
  EXPECT_EQ(check_message([&] { SIMCLR_CHECK_GE(rows - 8, 0); }),
            at(line) + ": check `rows - 8 >= 0` failed (-1 vs 0)");
  // The passing side of each.
  EXPECT_EQ(check_message([&] {
              SIMCLR_CHECK_EQ(rows, 7);
              SIMCLR_CHECK_LE(rows, cols);
              SIMCLR_CHECK_LE(rows, rows);
              SIMCLR_CHECK_LT(rows, cols);
              SIMCLR_CHECK_GE(cols, rows);
              SIMCLR_CHECK_GE(rows, rows);
            }),
            "no exception");
}

TEST(CheckMacros, EachSideIsEvaluatedOnce) {
  int calls = 0;
  auto next = [&] { return ++calls; };
  const std::string what = check_message([&] { SIMCLR_CHECK_EQ(next(), 5); });
  EXPECT_EQ(calls, 1);
  EXPECT_NE(what.find("check `next() == 5` failed (1 vs 5)"), std::string::npos) << what;
}

TEST(CheckMacros, UserErrorsKeepTheirTypeAndMessage) {
  // The macros for what a caller passed are unchanged by the above: no file:line, the given type.
  EXPECT_EQ(check_message([] { SIMCLR_ENFORCE_EQ(5, 4, ValueError, "rows"); }),
            "ValueError: rows: 5 vs 4");
  EXPECT_EQ(check_message([] { SIMCLR_ENFORCE(false, TypeError, "dtype ", "float16"); }),
            "TypeError: dtype float16");
}

}  // namespace
}  // namespace simclr

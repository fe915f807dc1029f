// The parsers that read untrusted input, as the fuzzers (fuzz/) drive them: every committed corpus
// file replayed, every prefix of a valid .npy, and one case per fuzzer finding (docs/errors.md).
// Contract: a malformed input raises simclr::ValueError (TypeError for config value kinds) naming
// what is wrong; an accepted input is self-consistent; nothing crashes or overflows.

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli.hpp"
#include "commands.hpp"
#include "npy.hpp"
#include "simclr/loss.hpp"

namespace fs = std::filesystem;

namespace simclr {
namespace {

std::string read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::vector<fs::path> corpus(const std::string& target) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(fs::path(SIMCLR_FUZZ_CORPUS) / target))
    if (e.is_regular_file()) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

std::string npy_image(const std::string& descr, const std::string& shape, const std::string& data) {
  std::string dict = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  dict.append((64 - (10 + dict.size() + 1) % 64) % 64, ' ');
  dict.push_back('\n');
  std::string out = "\x93NUMPY";
  out += '\x01';
  out += '\x00';
  out += static_cast<char>(dict.size() & 0xff);
  out += static_cast<char>(dict.size() >> 8);
  return out + dict + data;
}

tools::NpyArray parse(const std::string& bytes) {
  return tools::parse_npy(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(),
                          "t.npy");
}

std::string npy_error(const std::string& bytes) {
  try {
    parse(bytes);
  } catch (const ValueError& e) {
    return e.what();
  }
  return "accepted";
}

// Same checks as fuzz/fuzz_npy.cpp.
void expect_consistent(const tools::NpyArray& a) {
  const std::size_t elem = a.dtype == DType::kFloat32 ? 4 : 8;
  ASSERT_GE(a.size(), 0);
  EXPECT_EQ(static_cast<std::size_t>(a.size()) * elem, a.bytes.size());
  EXPECT_EQ(a.to_double().size(), static_cast<std::size_t>(a.size()));
}

TEST(NpyParser, EveryCorpusFileIsAcceptedConsistentlyOrRejectedWithValueError) {
  const auto files = corpus("npy");
  ASSERT_FALSE(files.empty());
  for (const auto& f : files) {
    SCOPED_TRACE(f.filename().string());
    const std::string bytes = read_bytes(f);
    try {
      expect_consistent(parse(bytes));
      EXPECT_EQ(f.filename().string().rfind("valid_", 0), 0u)
          << "accepted a file not named valid_*";
    } catch (const ValueError&) {
      EXPECT_NE(f.filename().string().rfind("valid_", 0), 0u) << "rejected a valid_* file";
    }
  }
}

TEST(NpyParser, EveryPrefixOfAValidFileIsRejected) {
  const double v[] = {1, 2, 3, 4, 5, 6};
  const std::string full =
      npy_image("<f8", "(3, 2)", std::string(reinterpret_cast<const char*>(v), sizeof(v)));
  expect_consistent(parse(full));
  for (std::size_t n = 0; n < full.size(); ++n) {
    const std::string what = npy_error(full.substr(0, n));
    EXPECT_TRUE(what.find("bad magic") != std::string::npos ||
                what.find("truncated") != std::string::npos ||
                what.find("npy header") != std::string::npos)
        << n << " bytes: " << what;
  }
}

TEST(NpyParser, WrongEndiannessNamesTheFix) {
  EXPECT_NE(npy_error(npy_image(">f4", "(1,)", std::string(4, '\0')))
                .find("big-endian data ('>f4') is not supported"),
            std::string::npos);
}

// Fuzzer finding (fuzz/corpus/npy/regress_count_out_of_long_long_range.npy): shape (3, 3.1e18) of
// float64 made the element count (then a double) 9.3e18, converted to long long for the "truncated"
// message: out of range, undefined behaviour (UBSan). Now counts are exact int64 with an overflow
// check.
TEST(NpyParser, RegressionElementCountBeyondInt64) {
  const auto file =
      read_bytes(fs::path(SIMCLR_FUZZ_CORPUS) / "npy" / "regress_count_out_of_long_long_range.npy");
  EXPECT_NE(npy_error(file).find("is too large"), std::string::npos) << npy_error(file);
  EXPECT_NE(npy_error(npy_image("<f4", "(3, 3106511852580896772)", "")).find("is too large"),
            std::string::npos);
  // Just inside int64 elements but not in bytes: also too large, never a wrapped byte count.
  EXPECT_NE(npy_error(npy_image("<f8", "(2, 2305843009213693952)", "")).find("is too large"),
            std::string::npos);
  // Large but representable: the ordinary truncation message with the exact count.
  EXPECT_NE(npy_error(npy_image("<f8", "(1000000, 1000000)", ""))
                .find("header says 1000000000000 elements"),
            std::string::npos);
}

// Found while writing the fuzz target's invariant
// (fuzz/corpus/npy/regress_shape_overflow_with_zero.npy): a zero dimension made the byte count 0
// and the file "valid", but NpyArray::size() then multiplied the other dimensions in int64 and
// overflowed (undefined behaviour). The non-zero dimensions must fit.
TEST(NpyParser, RegressionShapeWhoseProductOverflowsDespiteAZeroDimension) {
  const std::string big = std::to_string(std::numeric_limits<std::int64_t>::max() / 4);
  const std::string what = npy_error(npy_image("<f8", "(" + big + ", " + big + ", 0)", ""));
  EXPECT_NE(what.find("too large"), std::string::npos) << what;
  // A zero dimension with small others is a valid empty array.
  const auto empty = parse(npy_image("<f8", "(1000000, 0, 3)", ""));
  EXPECT_EQ(empty.size(), 0);
  expect_consistent(empty);
  const auto file =
      read_bytes(fs::path(SIMCLR_FUZZ_CORPUS) / "npy" / "regress_shape_overflow_with_zero.npy");
  EXPECT_NE(npy_error(file).find("too large"), std::string::npos);
}

TEST(ConfigParser, EveryCorpusFileIsAcceptedOrRejectedWithTheLibrarysErrors) {
  const auto files = corpus("config");
  ASSERT_FALSE(files.empty());
  for (const auto& f : files) {
    SCOPED_TRACE(f.filename().string());
    try {
      const auto loss = SimCLRLoss::from_config_string(read_bytes(f));
      const auto again = SimCLRLoss::from_config(loss.get_config());
      EXPECT_EQ(again.temperature(), loss.temperature());
      EXPECT_EQ(again.reduction(), loss.reduction());
      EXPECT_EQ(again.name(), loss.name());
    } catch (const ValueError&) {
    } catch (const TypeError&) {
    }
  }
}

TEST(ConfigParser, DeepNestingIsAnErrorNotAStackOverflow) {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  EXPECT_THROW(SimCLRLoss::from_config_string(deep), TypeError);
  const std::string deep_obj =
      "{\"config\": " + std::string(50000, '[') + std::string(50000, ']') + "}";
  EXPECT_THROW(SimCLRLoss::from_config_string(deep_obj), TypeError);
}

std::vector<std::string> argv_of(const std::string& bytes) {
  // fuzz/fuzz_cli.cpp's encoding: arguments separated by NUL.
  std::vector<std::string> args{"simclr-loss"};
  std::string cur;
  for (char c : bytes) {
    if (c == '\0') {
      args.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(c);
    }
  }
  if (!cur.empty() || bytes.empty()) args.push_back(cur);
  return args;
}

TEST(CliParser, EveryCorpusFileIsParsedOrRejectedWithValueError) {
  const auto files = corpus("cli");
  ASSERT_FALSE(files.empty());
  int accepted = 0;
  for (const auto& f : files) {
    SCOPED_TRACE(f.filename().string());
    try {
      const auto parsed = tools::parse_args(argv_of(read_bytes(f)), tools::command_specs());
      EXPECT_TRUE(tools::command_specs().count(parsed.subcommand));
      ++accepted;
    } catch (const ValueError&) {
    }
  }
  EXPECT_GE(accepted, 4);  // the seeds of real command lines
}

TEST(CliParser, RealSpecsRejectEachKindOfMistake) {
  const auto& specs = tools::command_specs();
  auto error_of = [&](std::vector<std::string> args) {
    args.insert(args.begin(), "simclr-loss");
    try {
      tools::parse_args(args, specs);
    } catch (const ValueError& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_NE(error_of({}).find("missing command; expected one of: bench, compute, config"),
            std::string::npos);
  EXPECT_NE(error_of({"train"}).find("unknown command 'train'"), std::string::npos);
  EXPECT_NE(error_of({"compute", "za"}).find("unexpected argument 'za'"), std::string::npos);
  EXPECT_NE(error_of({"compute", "--"}).find("unexpected argument '--'"), std::string::npos);
  EXPECT_NE(error_of({"compute", "--za"}).find("--za needs a value"), std::string::npos);
  EXPECT_NE(error_of({"compute", "--za=a", "--za", "b"}).find("--za given twice"),
            std::string::npos);
  EXPECT_NE(error_of({"bench", "--sweep=1"}).find("--sweep takes no value"), std::string::npos);
  EXPECT_NE(error_of({"config", "--split", "1"}).find("unknown flag --split for 'config'"),
            std::string::npos);
  EXPECT_NE(error_of({"compute", "--=x"}).find("unknown flag -- for 'compute'"), std::string::npos);
  EXPECT_EQ(error_of({"compute", "--za=", "--zb", ""}),
            "accepted");  // empty values are the files' problem
}

TEST(CliParser, NumbersAreStrict) {
  EXPECT_THROW(tools::parse_int("", "threads", 0), ValueError);
  EXPECT_THROW(tools::parse_int("99999999999999999999", "threads", 0), ValueError);
  EXPECT_THROW(tools::parse_int("-1", "threads", 0), ValueError);
  EXPECT_THROW(tools::parse_int("12abc", "threads", 0), ValueError);
  EXPECT_THROW(tools::parse_double("1e999", "temperature"), ValueError);
  EXPECT_THROW(tools::parse_double("0.1 ", "temperature"), ValueError);
  EXPECT_THROW(tools::parse_counts("1,,2", "split"), ValueError);
  EXPECT_THROW(tools::parse_counts("1,2,", "split"), ValueError);
  EXPECT_EQ(tools::parse_counts("0,3,0", "split"), (std::vector<std::int64_t>{0, 3, 0}));
}

}  // namespace
}  // namespace simclr

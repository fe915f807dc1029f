// The parsers that read untrusted input, as the fuzzers (fuzz/) drive them: every committed corpus
// file replayed, every prefix of a valid .npy, and one case per fuzzer finding (docs/errors.md).
// Contract: a malformed input raises simclr::ValueError (TypeError for config value kinds) naming
// what is wrong; an accepted input is self-consistent; nothing crashes or overflows.

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
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

// The reader stops at the header: a length field over 64 KiB is refused before the header is read
// (a version 1.0 header can say at most 65535).
TEST(NpyParser, HeaderLengthOverTheLimitIsRejected) {
  std::string v2("\x93NUMPY\x02\x00\xff\xff\xff\xff", 12);
  EXPECT_NE(npy_error(v2 + "{'descr'").find("npy header length 4294967295 bytes is over the 65536"),
            std::string::npos)
      << npy_error(v2);
  std::string v3("\x93NUMPY\x03\x00\x01\x00\x01\x00", 12);
  EXPECT_NE(npy_error(v3 + std::string(65537, ' ')).find("npy header length 65537 bytes"),
            std::string::npos);
  // At the limit: read, then judged by its content.
  std::string v1("\x93NUMPY\x01\x00\xff\xff", 10);
  EXPECT_NE(npy_error(v1 + std::string(65535, ' ')).find("npy header has no 'descr' key"),
            std::string::npos);
}

TEST(NpyParser, TruncatedDataSaysBothByteCounts) {
  EXPECT_NE(npy_error(npy_image("<f4", "(3, 2)", std::string(20, '\0')))
                .find("file is truncated: the header says 6 elements (24 bytes of data), 20 bytes "
                      "present"),
            std::string::npos);
}

class NpyReader : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("simclr_npy_reader_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string write(const std::string& name, const std::string& bytes) const {
    const std::string path = (dir_ / name).string();
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
  }
  static std::string read_error(const std::string& path, const std::string& flag = "") {
    try {
      tools::read_npy(path, flag);
    } catch (const ValueError& e) {
      return e.what();
    } catch (const std::exception& e) {
      return std::string("not a ValueError: ") + e.what();
    }
    return "accepted";
  }
  fs::path dir_;
};

// Rejected by kind before anything is read (was: a directory raised std::ios_base::failure from
// libstdc++, a bug's exit status, without the file's name). FIFOs and /dev/zero, which the previous
// reader blocked on or streamed without end, are checked end to end with a time limit in
// simclr_cli_tests (Cli.FifoInputIsRejectedWithoutBlocking, Cli.DevZeroIsRejectedUnread).
TEST_F(NpyReader, NonRegularAndMissingFilesAreRejectedByKindNamingThePath) {
  const std::string dir = dir_.string();
  EXPECT_EQ(read_error(dir, "za"), "--za '" + dir + "': is a directory, not a .npy file");
  EXPECT_EQ(read_error(dir), "'" + dir + "': is a directory, not a .npy file");
  EXPECT_EQ(read_error("/dev/null", "zb"),
            "--zb '/dev/null': is a character device, not a .npy file: only regular files are "
            "read (write the data to a file first)");
  const std::string missing = (dir_ / "missing.npy").string();
  EXPECT_EQ(read_error(missing, "sample-weight"),
            "--sample-weight '" + missing + "': cannot open file: No such file or directory");
}

// read_npy reads only the preamble, the header and the data it announces, and judges the file as
// parse_npy judges the same bytes in memory: the same array or the same message.
TEST_F(NpyReader, EveryCorpusFileReadsAsItParses) {
  for (const auto& f : corpus("npy")) {
    SCOPED_TRACE(f.filename().string());
    const std::string bytes = read_bytes(f);
    const std::string path = write(f.filename().string(), bytes);
    std::string parsed_error = "accepted";
    tools::NpyArray parsed;
    try {
      parsed = tools::parse_npy(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(),
                                "'" + path + "'");
    } catch (const ValueError& e) {
      parsed_error = e.what();
    }
    EXPECT_EQ(read_error(path), parsed_error);
    if (parsed_error == "accepted") {
      const auto read = tools::read_npy(path);
      EXPECT_EQ(read.dtype, parsed.dtype);
      EXPECT_EQ(read.shape, parsed.shape);
      EXPECT_EQ(read.bytes, parsed.bytes);
    }
  }
}

TEST_F(NpyReader, DataOfTheWrongSizeIsRejected) {
  const std::string data(48, '\0');
  const std::string trunc = write("t.npy", npy_image("<f8", "(3, 2)", data.substr(0, 40)));
  EXPECT_EQ(read_error(trunc, "za"), "--za '" + trunc +
                                         "': file is truncated: the header says 6 elements (48 "
                                         "bytes of data), 40 bytes present");
  const std::string longer = write("l.npy", npy_image("<f8", "(3, 2)", data + "x"));
  EXPECT_NE(read_error(longer).find("npy data size 49 bytes does not match its shape (48 bytes)"),
            std::string::npos);
  // A shape far beyond the file is refused from its size: nothing allocated for it.
  const std::string huge = write("h.npy", npy_image("<f8", "(100000000000, 100000)", ""));
  EXPECT_NE(read_error(huge).find("(80000000000000000 bytes of data), 0 bytes present"),
            std::string::npos)
      << read_error(huge);
  // The header length field over the limit: refused after the 12-byte preamble.
  const std::string over =
      write("o.npy", std::string("\x93NUMPY\x02\x00\x00\x00\x00\x01", 12) + "{'descr': '<f8', ");
  EXPECT_NE(read_error(over).find("npy header length 16777216 bytes is over the 65536-byte limit"),
            std::string::npos)
      << read_error(over);
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
  // `--` ends the flags (CLI11, as getopt); nothing may follow it, since no subcommand takes
  // positional arguments.
  EXPECT_EQ(error_of({"compute", "--"}), "accepted");
  EXPECT_NE(error_of({"compute", "--", "--za", "a"}).find("unknown flag --za"), std::string::npos);
  EXPECT_NE(error_of({"compute", "-x"}).find("unexpected argument '-x' (flags start with --)"),
            std::string::npos);
  EXPECT_NE(error_of({"--za", "a", "compute"}).find("unknown command '--za'"), std::string::npos);
  EXPECT_NE(error_of({"compute", "--za"}).find("--za needs a value"), std::string::npos);
  EXPECT_NE(error_of({"compute", "--za=a", "--za", "b"}).find("--za given twice"),
            std::string::npos);
  EXPECT_NE(error_of({"bench", "--sweep=1"}).find("--sweep takes no value"), std::string::npos);
  EXPECT_NE(error_of({"config", "--split", "1"}).find("unknown flag --split for 'config'"),
            std::string::npos);
  EXPECT_NE(error_of({"compute", "--=x"}).find("unknown flag -- for 'compute'"), std::string::npos);
  EXPECT_EQ(error_of({"compute", "--za=", "--zb", ""}),
            "accepted");  // empty values are the files' problem
  EXPECT_NE(error_of({"bench", "--sweep", "--sweep"}).find("--sweep given twice"),
            std::string::npos);
}

TEST(CliParser, ValuesAndSwitchesReachTheCommand) {
  // A value that starts with '-' is still the flag's value; `--flag=` is the empty value.
  const auto parsed =
      tools::parse_args({"simclr-loss", "bench", "--batch=8", "--dim", "-4", "--sweep", "--seed="},
                        tools::command_specs());
  EXPECT_EQ(parsed.subcommand, "bench");
  EXPECT_TRUE(parsed.help.empty());
  EXPECT_EQ(parsed.values, (std::map<std::string, std::string>{
                               {"batch", "8"}, {"dim", "-4"}, {"sweep", ""}, {"seed", ""}}));
}

// --help and -h are not errors: the help of the command or of the subcommand, nothing else.
TEST(CliParser, HelpIsTheTextToPrint) {
  const auto& specs = tools::command_specs();
  const auto top = tools::parse_args({"/some/dir/simclr-loss", "-h"}, specs);
  EXPECT_TRUE(top.values.empty());
  EXPECT_NE(top.help.find("Usage: simclr-loss"), std::string::npos) << top.help;
  for (const auto& [name, spec] : specs) {
    EXPECT_NE(top.help.find(name), std::string::npos) << top.help;
    const auto sub = tools::parse_args({"simclr-loss", name, "--help"}, specs);
    EXPECT_NE(sub.help.find("Usage: simclr-loss " + name), std::string::npos) << sub.help;
    for (const auto& f : spec.flags) EXPECT_NE(sub.help.find("--" + f.name), std::string::npos);
  }
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

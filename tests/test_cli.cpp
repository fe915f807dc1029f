// The simclr-loss command's contract: its JSON line, output files, and `error: ` + exit 2 on bad
// input with no partial output. Also under mpirun (2 ranks) when MPI was built.

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <typeinfo>

#include "commands.hpp"
#include "npy.hpp"
#include "runtime.hpp"
#include "reference.hpp"
#include "simclr/loss.hpp"

namespace fs = std::filesystem;

namespace simclr {
namespace {

struct Result {
  int status = -1;
  std::string out, err;
};

Result run(const std::string& args, const std::string& prefix = "") {
  static int counter = 0;
  const fs::path dir = fs::temp_directory_path();
  const std::string out =
      (dir / ("simclr_cli_out_" + std::to_string(getpid()) + "_" + std::to_string(counter)))
          .string();
  const std::string err =
      (dir / ("simclr_cli_err_" + std::to_string(getpid()) + "_" + std::to_string(counter++)))
          .string();
  const std::string cmd =
      prefix + std::string(SIMCLR_LOSS_BIN) + " " + args + " >" + out + " 2>" + err + " </dev/null";
  const int rc = std::system(cmd.c_str());
  Result r;
  r.status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  std::ifstream o(out), e(err);
  r.out.assign(std::istreambuf_iterator<char>(o), {});
  r.err.assign(std::istreambuf_iterator<char>(e), {});
  fs::remove(out);
  fs::remove(err);
  return r;
}

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("simclr_cli_" + std::to_string(getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    // The hand-checked example of the semantics page.
    const double a[] = {1, 0, 0, 1, 1, 1}, b[] = {1, 0, 0, 1, 1, -1};
    tools::write_npy<double>(p("a.npy"), a, {3, 2});
    tools::write_npy<double>(p("b.npy"), b, {3, 2});
    const float af[] = {1, 0, 0, 1, 1, 1}, bf[] = {1, 0, 0, 1, 1, -1};
    tools::write_npy<float>(p("af.npy"), af, {3, 2});
    tools::write_npy<float>(p("bf.npy"), bf, {3, 2});
  }
  void TearDown() override { fs::remove_all(dir_); }

 public:
  std::string p(const std::string& name) const { return (dir_ / name).string(); }
  void write_file(const std::string& name, const std::string& bytes) const {
    std::ofstream(p(name), std::ios::binary) << bytes;
  }
  void expect_usage_error(const std::string& args, const std::string& needle) const {
    const Result r = run(args);
    EXPECT_EQ(r.status, 2) << args << "\n" << r.err;
    EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
    EXPECT_TRUE(r.out.empty()) << r.out;
    EXPECT_FALSE(fs::exists(p("loss_out.npy")));
    EXPECT_FALSE(fs::exists(p("ga.npy")));
  }
  fs::path dir_;
};

TEST_F(Cli, ComputePrintsOneJsonLineWithTheContractKeys) {
  const Result r = run("compute --za " + p("a.npy") + " --zb " + p("b.npy") + " --temperature 1");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1);
  const auto j = nlohmann::ordered_json::parse(r.out);
  std::vector<std::string> keys;
  for (const auto& [k, v] : j.items()) keys.push_back(k);
  EXPECT_EQ(keys, (std::vector<std::string>{"loss", "reduction", "world_size", "rows",
                                            "global_batch_size", "dtype"}));
  EXPECT_NEAR(j["loss"].get<double>(), 2.770411866, 1e-9);  // auto = sum_over_batch_size
  EXPECT_EQ(j["reduction"], "auto");
  EXPECT_EQ(j["world_size"], 1);
  EXPECT_EQ(j["rows"].dump(), "[3]");
  EXPECT_TRUE(j["global_batch_size"].is_null());
  EXPECT_EQ(j["dtype"], "float64");
}

TEST_F(Cli, NoneWritesWeightedPerExampleAndGradients) {
  const std::vector<double> w = {1, 2, 3};
  tools::write_npy<double>(p("w.npy"), w.data(), {3});
  const Result r =
      run("compute --za " + p("a.npy") + " --zb " + p("b.npy") +
          " --temperature 1 --reduction none --sample-weight " + p("w.npy") + " --loss-out " +
          p("loss_out.npy") + " --grad-a-out " + p("ga.npy") + " --grad-b-out " + p("gb.npy"));
  ASSERT_EQ(r.status, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  const double want[] = {2.343702263, 2 * 1.959094756, 3 * 4.008438580};
  EXPECT_NEAR(j["loss"].get<double>(), want[0] + want[1] + want[2], 1e-8);
  const auto l = tools::read_npy(p("loss_out.npy"));
  ASSERT_EQ(l.shape, std::vector<std::int64_t>{3});
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(l.data<double>()[i], want[i], 1e-8);
  // Gradients equal the library's for the same objective.
  const double a[] = {1, 0, 0, 1, 1, 1}, b[] = {1, 0, 0, 1, 1, -1};
  const SampleWeight sw = SampleWeight::per_example(w);
  const auto g = SimCLRLoss(1.0, Reduction::kNone)
                     .value_and_gradient<double>(ConstMatrixView<double>(a, 3, 2),
                                                 ConstMatrixView<double>(b, 3, 2), &sw)
                     .second;
  const auto ga = tools::read_npy(p("ga.npy")), gb = tools::read_npy(p("gb.npy"));
  ASSERT_EQ(ga.shape, (std::vector<std::int64_t>{3, 2}));
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(ga.data<double>()[i], g.grad_a.data()[i]);
    EXPECT_EQ(gb.data<double>()[i], g.grad_b.data()[i]);
  }
}

TEST_F(Cli, Float32InFloat32Out) {
  const Result r = run("compute --za " + p("af.npy") + " --zb " + p("bf.npy") +
                       " --temperature 1 --reduction sum --loss-out " + p("l.npy") +
                       " --grad-a-out " + p("g.npy"));
  ASSERT_EQ(r.status, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["dtype"], "float32");
  EXPECT_NEAR(j["loss"].get<double>(), 8.311235598, 1e-5);
  EXPECT_EQ(tools::read_npy(p("l.npy")).dtype, DType::kFloat32);
  EXPECT_EQ(tools::read_npy(p("l.npy")).shape, std::vector<std::int64_t>{1});
  EXPECT_EQ(tools::read_npy(p("g.npy")).dtype, DType::kFloat32);
}

TEST_F(Cli, ConfigFileAndConfigCommand) {
  write_file(
      "cfg.json",
      R"({"class_name": "Similarity>SimCLRLoss", "config": {"reduction": "sum", "name": null, "temperature": 1.0}})");
  const Result r =
      run("compute --za " + p("a.npy") + " --zb " + p("b.npy") + " --config " + p("cfg.json"));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NEAR(nlohmann::json::parse(r.out)["loss"].get<double>(), 8.311235598, 1e-9);
  const Result c = run("config --config " + p("cfg.json"));
  ASSERT_EQ(c.status, 0) << c.err;
  EXPECT_EQ(c.out, "{\"reduction\":\"sum\",\"name\":null,\"temperature\":1.0}\n");
  const Result d = run("config");
  EXPECT_EQ(d.out, "{\"reduction\":\"auto\",\"name\":null,\"temperature\":0.05}\n");
  const Result e = run("config --temperature 0.5 --reduction none --name x");
  EXPECT_EQ(e.out, "{\"reduction\":\"none\",\"name\":\"x\",\"temperature\":0.5}\n");
}

TEST_F(Cli, GlobalBatchSize) {
  const Result r = run("compute --za " + p("a.npy") + " --zb " + p("b.npy") +
                       " --temperature 1 --global-batch-size 6");
  ASSERT_EQ(r.status, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_NEAR(j["loss"].get<double>(), 8.311235598 / 6, 1e-9);
  EXPECT_EQ(j["global_batch_size"], 6);
}

TEST_F(Cli, UsageErrorsExit2WithOneLine) {
  const std::string ab = " --za " + p("a.npy") + " --zb " + p("b.npy");
  const std::string outs = " --loss-out " + p("loss_out.npy") + " --grad-a-out " + p("ga.npy");
  expect_usage_error("", "missing command; expected one of: bench, compute, config");
  expect_usage_error("", "'simclr-loss --help' lists them");
  expect_usage_error("frobnicate", "unknown command 'frobnicate'");
  expect_usage_error("compute --za " + p("a.npy"), "compute needs --za");
  expect_usage_error("compute" + ab + " --bogus 1", "unknown flag --bogus");
  expect_usage_error("compute" + ab + " --temperature", "--temperature needs a value");
  expect_usage_error("compute" + ab + " --temperature abc" + outs, "expects a number");
  expect_usage_error("compute" + ab + " --temperature 0" + outs,
                     "temperature must be a finite number > 0");
  expect_usage_error("compute" + ab + " --reduction mean" + outs, "Invalid Reduction Key: mean.");
  expect_usage_error("compute" + ab + " --temperature 1 --temperature 2", "given twice");
  expect_usage_error("compute" + ab + " --temperature=1 --temperature 2",
                     "--temperature given twice");
  expect_usage_error("bench --batch 8 --sweep=1", "--sweep takes no value");
  expect_usage_error("compute" + ab + " za", "unexpected argument 'za' (flags start with --)");
  expect_usage_error("--temperature 1 compute" + ab, "unknown command '--temperature'");
  expect_usage_error("config --split 1", "unknown flag --split for 'config'");
  write_file("cfg.json", R"({"margin": 0.1})");
  expect_usage_error("compute" + ab + " --config " + p("cfg.json") + outs,
                     "unexpected keyword argument 'margin'");
  expect_usage_error("compute" + ab + " --config " + p("cfg.json") + " --temperature 1",
                     "cannot be combined with --config");
  expect_usage_error("compute" + ab + " --global-batch-size -3" + outs, "must be >= 0");
}

// The lines of `text`.
std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start < text.size()) {
    const auto end = text.find('\n', start);
    out.push_back(text.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return out;
}

// `--help` / `-h` of one subcommand: exit 0, the help on stdout and nothing on stderr, naming every
// flag the parser has for it with its description: what it does, its default (or "required") and
// an example of the flag. A flag added to the parser without all three fails here.
void expect_help_names_every_flag(const CLI::App& sub, const std::string& help_flag) {
  SCOPED_TRACE(sub.get_name() + " " + help_flag);
  const Result r = run(sub.get_name() + " " + help_flag);
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(r.err.empty()) << r.err;
  EXPECT_NE(r.out.find("Usage: simclr-loss " + sub.get_name() + " [OPTIONS]"), std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("Example:\n  simclr-loss " + sub.get_name() + " "), std::string::npos)
      << r.out;
  int flags = 0;
  for (const CLI::Option* opt : sub.get_options()) {
    if (opt == sub.get_help_ptr()) continue;
    ++flags;
    const std::string name = opt->get_name();  // "--za"
    EXPECT_NE(r.out.find("\n  " + name + " "), std::string::npos) << name << "\n" << r.out;
    const auto what = lines_of(opt->get_description());
    ASSERT_EQ(what.size(), 2u) << name << ": " << opt->get_description();
    EXPECT_FALSE(what[0].empty()) << name;
    EXPECT_TRUE(what[1].rfind("default: ", 0) == 0 || what[1].rfind("required", 0) == 0)
        << name << ": " << what[1];
    EXPECT_EQ(what[1].find("default: ;"), std::string::npos) << name << ": " << what[1];
    EXPECT_NE(what[1].find("; e.g. " + name), std::string::npos) << name << ": " << what[1];
    for (const std::string& line : what) {
      EXPECT_NE(r.out.find(line), std::string::npos) << name << ": " << line << "\n" << r.out;
    }
  }
  EXPECT_EQ(static_cast<std::size_t>(flags),
            tools::command_specs().at(sub.get_name()).flags.size());
}

TEST_F(Cli, HelpOfEachSubcommandNamesEveryFlagWithItsDefaultAndAnExample) {
  const auto app = tools::make_app("simclr-loss", tools::command_specs());
  const auto subs = app->get_subcommands([](CLI::App*) { return true; });
  ASSERT_EQ(subs.size(), 3u);  // compute, config, bench
  for (const std::string help_flag : {"--help", "-h"}) {
    for (const CLI::App* sub : subs) expect_help_names_every_flag(*sub, help_flag);
  }
}

TEST_F(Cli, HelpOfTheCommandNamesEverySubcommand) {
  const auto app = tools::make_app("simclr-loss", tools::command_specs());
  for (const std::string help_flag : {"--help", "-h"}) {
    SCOPED_TRACE(help_flag);
    const Result r = run(help_flag);
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_TRUE(r.err.empty()) << r.err;
    EXPECT_NE(r.out.find("Usage: simclr-loss"), std::string::npos) << r.out;
    for (const CLI::App* sub : app->get_subcommands([](CLI::App*) { return true; })) {
      EXPECT_NE(r.out.find("\n  " + sub->get_name() + " "), std::string::npos) << r.out;
      EXPECT_NE(r.out.find(sub->get_description()), std::string::npos) << r.out;
    }
  }
  // Help wins over everything else on the line, as it does in CLI11; nothing is computed.
  const Result h = run("compute --za " + p("a.npy") + " --bogus --help");
  EXPECT_EQ(h.status, 0) << h.err;
  EXPECT_NE(h.out.find("Usage: simclr-loss compute"), std::string::npos) << h.out;
}

TEST_F(Cli, FileErrorsExit2WithNoOutput) {
  const std::string outs = " --loss-out " + p("loss_out.npy") + " --grad-a-out " + p("ga.npy");
  expect_usage_error("compute --za " + p("missing.npy") + " --zb " + p("b.npy") + outs,
                     "cannot open file");
  write_file("junk.npy", "not numpy at all");
  expect_usage_error("compute --za " + p("junk.npy") + " --zb " + p("b.npy") + outs, "bad magic");
  // Truncated: drop the last 8 bytes of a valid file.
  {
    std::ifstream in(p("a.npy"), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    write_file("trunc.npy", bytes.substr(0, bytes.size() - 8));
  }
  expect_usage_error("compute --za " + p("trunc.npy") + " --zb " + p("b.npy") + outs, "truncated");
  // Big-endian and integer dtypes.
  {
    std::ifstream in(p("a.npy"), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    std::string be = bytes, i8 = bytes;
    be.replace(be.find("<f8"), 3, ">f8");
    i8.replace(i8.find("<f8"), 3, "<i8");
    write_file("be.npy", be);
    write_file("i8.npy", i8);
  }
  expect_usage_error("compute --za " + p("be.npy") + " --zb " + p("b.npy") + outs, "big-endian");
  expect_usage_error("compute --za " + p("i8.npy") + " --zb " + p("b.npy") + outs,
                     "dtype '<i8' is not supported");
  const double v[] = {1, 2, 3};
  tools::write_npy<double>(p("v.npy"), v, {3});
  expect_usage_error("compute --za " + p("v.npy") + " --zb " + p("b.npy") + outs,
                     "expected a 2-D array");
  const double c[] = {1, 0, 0, 1};
  tools::write_npy<double>(p("c.npy"), c, {2, 2});
  expect_usage_error("compute --za " + p("c.npy") + " --zb " + p("b.npy") + outs, "same shape");
  expect_usage_error("compute --za " + p("af.npy") + " --zb " + p("b.npy") + outs, "same dtype");
  const double nan[] = {1, 0, 0, std::nan(""), 1, 1};
  tools::write_npy<double>(p("nan.npy"), nan, {3, 2});
  expect_usage_error("compute --za " + p("a.npy") + " --zb " + p("nan.npy") + outs,
                     "zb has NaN at row 1");
  const double w[] = {1, 2};
  tools::write_npy<double>(p("w2.npy"), w, {2});
  expect_usage_error("compute --za " + p("a.npy") + " --zb " + p("b.npy") + " --sample-weight " +
                         p("w2.npy") + outs,
                     "Incompatible shapes: [3] vs. [2]");
  // An output that cannot be written: nothing else is left behind either.
  expect_usage_error("compute --za " + p("a.npy") + " --zb " + p("b.npy") + " --loss-out " +
                         p("loss_out.npy") + " --grad-a-out " + p("no/such/dir/ga.npy"),
                     "cannot open for writing");
}

// ---- hostile input files: each is rejected by its kind or its header, exit 2, the path named ----

// Runs `compute` with `path` as --za (a valid --zb) under a time limit: a reader that blocks on a
// FIFO or streams /dev/zero shows as status 124 instead of hanging the test. The message must name
// the file as "--za 'path'" and say `needle`.
void expect_bad_za(const Cli& t, const std::string& path, const std::string& needle) {
  const Result r =
      run("compute --za " + path + " --zb " + t.p("b.npy") + " --loss-out " + t.p("loss_out.npy"),
          "timeout 20 ");
  EXPECT_EQ(r.status, 2) << path << "\n" << r.err;
  EXPECT_EQ(r.err.rfind("error: --za '" + path + "': ", 0), 0u) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
  EXPECT_FALSE(fs::exists(t.p("loss_out.npy")));
}

// A version 1.0 .npy image with this header and data (as tests/reliability/test_parsers.cpp).
std::string npy_image(const std::string& descr, const std::string& shape, const std::string& data) {
  std::string dict = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  dict.append((64 - (10 + dict.size() + 1) % 64) % 64, ' ');
  dict.push_back('\n');
  std::string out("\x93NUMPY\x01\x00", 8);
  out += static_cast<char>(dict.size() & 0xff);
  out += static_cast<char>(dict.size() >> 8);
  return out + dict + data;
}

// Was exit 5 with libstdc++'s "basic_filebuf::underflow error reading the file: Is a directory".
TEST_F(Cli, DirectoryInputExits2NamingIt) {
  expect_bad_za(*this, p(""), "is a directory, not a .npy file");  // p("") ends in '/'

  fs::create_directories(p("d.npy"));
  expect_bad_za(*this, p("d.npy"), "is a directory, not a .npy file");
}

TEST_F(Cli, MissingInputExits2NamingIt) {
  expect_bad_za(*this, p("missing.npy"), "cannot open file: No such file or directory");
  expect_bad_za(*this, p("no/such/dir/a.npy"), "cannot open file: No such file or directory");
}

// Was read without end (3 GB in 40 s).
TEST_F(Cli, DevZeroIsRejectedUnread) {
  expect_bad_za(*this, "/dev/zero", "is a character device, not a .npy file");
}

// A FIFO with no writer: opening it blocked forever. With a writer that wrote a valid .npy and
// keeps it open: the old reader waited for the end of the stream forever. Rejected before open().
TEST_F(Cli, FifoInputIsRejectedWithoutBlocking) {
  ASSERT_EQ(::mkfifo(p("f.npy").c_str(), 0600), 0);
  expect_bad_za(*this, p("f.npy"), "is a FIFO (named pipe), not a .npy file");
  // O_RDWR opens a FIFO on Linux without waiting for the other end; it is the writer here.
  const int fd = ::open(p("f.npy").c_str(), O_RDWR | O_NONBLOCK);
  ASSERT_GE(fd, 0);
  const std::string bytes = npy_image("<f8", "(3, 2)", std::string(48, '\0'));
  ASSERT_EQ(::write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
  expect_bad_za(*this, p("f.npy"), "is a FIFO (named pipe), not a .npy file");
  ::close(fd);
}

TEST_F(Cli, TruncatedDataSaysBothByteCounts) {
  write_file("trunc.npy", npy_image("<f8", "(3, 2)", std::string(40, '\0')));
  expect_bad_za(
      *this, p("trunc.npy"),
      "file is truncated: the header says 6 elements (48 bytes of data), 40 bytes present");
  // A shape far beyond the file: refused from the file's size, nothing allocated for it.
  write_file("huge.npy", npy_image("<f8", "(9999999999, 99)", ""));
  expect_bad_za(*this, p("huge.npy"), "(7919999999208 bytes of data), 0 bytes present");
}

TEST_F(Cli, HeaderLengthOverTheLimitIsRejectedUnread) {
  // Version 2.0: a 4-byte header length, here 4 GiB - 1, then a few bytes.
  write_file("long.npy", std::string("\x93NUMPY\x02\x00\xff\xff\xff\xff", 12) + "{'descr': '<f8'");
  expect_bad_za(*this, p("long.npy"), "npy header length 4294967295 bytes is over the 65536-byte");
  // Just over the limit, with the bytes present.
  std::string at_limit("\x93NUMPY\x03\x00\x01\x00\x01\x00", 12);
  at_limit.append(65537, ' ');
  write_file("over.npy", at_limit);
  expect_bad_za(*this, p("over.npy"), "npy header length 65537 bytes is over the 65536-byte");
}

TEST_F(Cli, HeaderGarbageIsRejectedNamingThePath) {
  write_file("garbage.npy",
             std::string("\x93NUMPY\x01\x00\x10\x00", 10) + "\x01\xfe garbage !!!!!");
  expect_bad_za(*this, p("garbage.npy"), "npy header has no 'descr' key");
  write_file("empty.npy", "");
  expect_bad_za(*this, p("empty.npy"), "not a .npy file (bad magic): the file is empty");
  write_file("magic.npy", "\x93NUMPY\x01");
  expect_bad_za(*this, p("magic.npy"), "truncated .npy header: 7 bytes");
}

// --sample-weight goes through the same reader; --config through the same file checks.
TEST_F(Cli, SampleWeightAndConfigAreReadTheSameWay) {
  const std::string ab = " --za " + p("a.npy") + " --zb " + p("b.npy");
  const Result w = run("compute" + ab + " --sample-weight /dev/zero", "timeout 20 ");
  EXPECT_EQ(w.status, 2) << w.err;
  EXPECT_NE(w.err.find("--sample-weight '/dev/zero': is a character device"), std::string::npos)
      << w.err;
  const Result c = run("compute" + ab + " --config /dev/zero", "timeout 20 ");
  EXPECT_EQ(c.status, 2) << c.err;
  EXPECT_NE(c.err.find("--config '/dev/zero': is a character device, not a config file"),
            std::string::npos)
      << c.err;
  const Result d = run("config --config " + p(""), "timeout 20 ");
  EXPECT_EQ(d.status, 2) << d.err;
  EXPECT_NE(d.err.find("--config '" + p("") + "': is a directory"), std::string::npos) << d.err;
  write_file("big.json", std::string((1 << 20) + 1, ' '));
  const Result b = run("config --config " + p("big.json"), "timeout 20 ");
  EXPECT_EQ(b.status, 2) << b.err;
  EXPECT_NE(b.err.find("is larger than 1048576 bytes"), std::string::npos) << b.err;
}

// ---- under mpirun ----

std::string mpirun(int np) {
  const std::string exe = SIMCLR_MPIEXEC;
  if (exe.empty()) return "";
  return exe + " -np " + std::to_string(np) +
         " --oversubscribe --allow-run-as-root --bind-to none ";
}

TEST_F(Cli, MpirunMatchesTheLocalCall) {
  if (mpirun(2).empty()) GTEST_SKIP() << "built without MPI";
  // 7 rows so the default split is uneven (4, 3).
  std::vector<double> a, b;
  for (int i = 0; i < 7 * 3; ++i) {
    a.push_back(std::sin(1.0 + i));
    b.push_back(std::cos(2.0 * i));
  }
  tools::write_npy<double>(p("a7.npy"), a.data(), {7, 3});
  tools::write_npy<double>(p("b7.npy"), b.data(), {7, 3});
  std::vector<double> w7 = {1, 2, 3, 4, 5, 6, 7};
  tools::write_npy<double>(p("w7.npy"), w7.data(), {7, 1});
  const std::string ab = " --za " + p("a7.npy") + " --zb " + p("b7.npy") +
                         " --temperature 0.3 --sample-weight " + p("w7.npy");
  const Result local = run("compute" + ab + " --reduction none --loss-out " + p("l1.npy") +
                           " --grad-a-out " + p("g1.npy"));
  ASSERT_EQ(local.status, 0) << local.err;
  for (const std::string split : {"", " --split 3,4", " --split 0,7"}) {
    SCOPED_TRACE(split);
    const Result dist = run("compute" + ab + split + " --reduction none --loss-out " + p("l2.npy") +
                                " --grad-a-out " + p("g2.npy"),
                            mpirun(2));
    ASSERT_EQ(dist.status, 0) << dist.err;
    const auto jl = nlohmann::json::parse(local.out), jd = nlohmann::json::parse(dist.out);
    EXPECT_EQ(jd["world_size"], 2);
    EXPECT_NEAR(jd["loss"].get<double>(), jl["loss"].get<double>(),
                1e-10 * std::abs(jl["loss"].get<double>()));
    const auto l1 = tools::read_npy(p("l1.npy")), l2 = tools::read_npy(p("l2.npy"));
    const auto g1 = tools::read_npy(p("g1.npy")), g2 = tools::read_npy(p("g2.npy"));
    ASSERT_EQ(l2.shape, std::vector<std::int64_t>{7});
    ASSERT_EQ(g2.shape, (std::vector<std::int64_t>{7, 3}));
    for (int i = 0; i < 7; ++i) EXPECT_NEAR(l2.data<double>()[i], l1.data<double>()[i], 1e-10);
    for (int i = 0; i < 21; ++i) EXPECT_NEAR(g2.data<double>()[i], g1.data<double>()[i], 1e-10);
  }
  const Result split = run("compute" + ab + " --reduction sum", mpirun(2));
  EXPECT_EQ(nlohmann::json::parse(split.out)["rows"], nlohmann::json::array({4, 3}));
  // sum: --loss-out holds each rank's reduced loss.
  const Result per_rank =
      run("compute" + ab + " --reduction sum --loss-out " + p("lr.npy"), mpirun(2));
  ASSERT_EQ(per_rank.status, 0) << per_rank.err;
  EXPECT_EQ(tools::read_npy(p("lr.npy")).shape, std::vector<std::int64_t>{2});
}

// --negatives: the reference with the bank appended (tests/reference.hpp), the same under mpirun
// (every rank reads the whole bank), and --temperature-gradient's dJ/dT against central
// differences of the reference; a bank of another dtype is the library's TypeError (exit 2).
TEST_F(Cli, NegativesAndTemperatureGradient) {
  const double bank[] = {2, 1, -1, 3, 0.5, -2, 0, 0.25};
  tools::write_npy<double>(p("k.npy"), bank, {4, 2});
  const float bank32[] = {2, 1};
  tools::write_npy<float>(p("k32.npy"), bank32, {1, 2});
  const test::Rows za = {{1, 0}, {0, 1}, {1, 1}}, zb = {{1, 0}, {0, 1}, {1, -1}};
  const test::Rows k = {{2, 1}, {-1, 3}, {0.5, -2}, {0, 0.25}};
  auto ref_sum = [&](long double t) {
    long double s = 0;
    for (long double v : test::ref_per_example_long(za, zb, t, k)) s += v;
    return s;
  };
  const std::string args = "compute --za " + p("a.npy") + " --zb " + p("b.npy") +
                           " --temperature 0.4 --reduction sum --negatives " + p("k.npy") +
                           " --temperature-gradient";
  std::vector<std::string> prefixes = {""};
  if (!mpirun(2).empty()) prefixes.push_back(mpirun(2));
  for (const std::string& prefix : prefixes) {
    SCOPED_TRACE(prefix);
    const Result r = run(args, prefix);
    ASSERT_EQ(r.status, 0) << r.err;
    const auto j = nlohmann::json::parse(r.out);
    EXPECT_EQ(j["negatives"], 4);
    const double want = static_cast<double>(ref_sum(0.4L));
    EXPECT_NEAR(j["loss"].get<double>(), want, 1e-12 * want);
    const long double h = 1e-5L;
    const double want_t = static_cast<double>((ref_sum(0.4L + h) - ref_sum(0.4L - h)) / (2 * h));
    EXPECT_NEAR(j["grad_temperature"].get<double>(), want_t, 1e-7 * std::abs(want_t));
  }
  expect_usage_error("compute --za " + p("a.npy") + " --zb " + p("b.npy") + " --negatives " +
                         p("k32.npy"),
                     "negatives have dtype float32 but za and zb have float64");
}

TEST_F(Cli, MpirunDistributionRuleAndErrors) {
  if (mpirun(2).empty()) GTEST_SKIP() << "built without MPI";
  const std::string ab = " --za " + p("a.npy") + " --zb " + p("b.npy");
  const Result rule = run("compute" + ab, mpirun(2));
  EXPECT_NE(rule.status, 0);
  EXPECT_EQ(std::count(rule.err.begin(), rule.err.end(), '\n') >= 1, true);
  EXPECT_NE(rule.err.find("error: Please use simclr::Reduction::kSum"), std::string::npos)
      << rule.err;
  // Printed once (rank 0), not once per rank.
  EXPECT_EQ(rule.err.find("error: ", rule.err.find("error: ") + 1), std::string::npos) << rule.err;
  // -np 1 is a distributed context too, as any tf.distribute strategy is; without a launcher it is
  // not.
  const Result one = run("compute" + ab, mpirun(1));
  EXPECT_NE(one.status, 0);
  EXPECT_NE(one.err.find("error: Please use simclr::Reduction::kSum"), std::string::npos)
      << one.err;
  EXPECT_EQ(run("compute" + ab).status, 0);
  const Result ok = run("compute" + ab + " --global-batch-size infer --temperature 1", mpirun(2));
  ASSERT_EQ(ok.status, 0) << ok.err;
  EXPECT_NEAR(nlohmann::json::parse(ok.out)["loss"].get<double>(), 2.770411866, 1e-9);
  EXPECT_EQ(nlohmann::json::parse(ok.out)["global_batch_size"], 3);
  const Result bad_split = run("compute" + ab + " --reduction sum --split 1,1", mpirun(2));
  EXPECT_NE(bad_split.status, 0);
  EXPECT_NE(bad_split.err.find("error: --split counts sum to 2 but za has 3 rows"),
            std::string::npos)
      << bad_split.err;
  // The library's agreement step names the rank that failed; bad input keeps exit status 2.
  EXPECT_NE(bad_split.err.find("rows (rank 0)"), std::string::npos) << bad_split.err;
  EXPECT_EQ(bad_split.status, 2);
}

// Every rank parses the same argv: --help is printed once (rank 0) and every rank exits 0; a usage
// error is one line from rank 0 and every rank exits 2.
TEST_F(Cli, MpirunHelpOnceAndUsageErrorsOnce) {
  if (mpirun(2).empty()) GTEST_SKIP() << "built without MPI";
  const Result help = run("bench --help", mpirun(2));
  EXPECT_EQ(help.status, 0) << help.err;
  const std::string usage = "Usage: simclr-loss bench";
  const auto first = help.out.find(usage);
  ASSERT_NE(first, std::string::npos) << help.out;
  EXPECT_EQ(help.out.find(usage, first + 1), std::string::npos) << help.out;
  // mpirun adds its own lines after a non-zero exit; the command's is the first, and the only one.
  for (const auto& [args, line] : std::vector<std::pair<std::string, std::string>>{
           {"", "error: missing command; expected one of: bench, compute, config"},
           {"config --temperature abc",
            "error: --temperature expects a number, got 'abc' (rank 0)"}}) {
    SCOPED_TRACE(args);
    const Result r = run(args, mpirun(2));
    EXPECT_EQ(r.status, 2) << r.err;
    EXPECT_EQ(r.err.rfind(line, 0), 0u) << r.err;
    EXPECT_EQ(r.err.find("error: ", 1), std::string::npos) << r.err;
  }
}

// The message of the exception of exactly type E that rt.agreed(step) raises, or a marker.
template <class E, class F>
std::string agreed_message(tools::Runtime& rt, F&& step) {
  try {
    rt.agreed(step);
  } catch (const std::exception& e) {
    if (typeid(e) != typeid(E)) return std::string("wrong type: ") + e.what();
    return e.what();
  }
  return "no exception";
}

// Runtime::agreed with a communicator is the library's agreement step: the type of the failing
// rank's exception survives, and its message gains the rank.
TEST(CliRuntime, AgreedKeepsTheExceptionTypeAndNamesTheRank) {
  tools::Runtime rt(std::make_unique<SingleProcessCommunicator>());
  EXPECT_EQ(agreed_message<TypeError>(rt, [] { throw TypeError("wrong kind"); }),
            "wrong kind (rank 0)");
  EXPECT_EQ(agreed_message<ValueError>(rt, [] { throw ValueError("bad value"); }),
            "bad value (rank 0)");
  EXPECT_EQ(agreed_message<DeviceError>(rt, [] { throw DeviceError("cudaMalloc failed"); }),
            "cudaMalloc failed (rank 0)");
  EXPECT_EQ(agreed_message<Error>(rt, [] { throw std::bad_alloc(); }),
            "out of host memory (std::bad_alloc) (rank 0)");
  // The transport failing is not agreed on (it cannot be): it propagates as it is.
  EXPECT_THROW(rt.agreed([] { throw CommError("mpi: all_gather failed"); }), CommError);
  EXPECT_NO_THROW(rt.agreed([] {}));
  // Without a communicator the exception is the step's own.
  tools::Runtime local(nullptr);
  EXPECT_THROW(local.agreed([] { throw TypeError("t"); }), TypeError);
}

TEST(CliRuntime, EachErrorKindHasItsExitStatus) {
  auto status_of = [](auto e) { return tools::exit_status(std::make_exception_ptr(e)); };
  EXPECT_EQ(tools::exit_status(nullptr), 0);
  EXPECT_EQ(status_of(ValueError("v")), 2);
  EXPECT_EQ(status_of(TypeError("t")), 2);
  EXPECT_EQ(status_of(CommError("c")), 3);
  EXPECT_EQ(status_of(DeviceError("d")), 4);
  EXPECT_EQ(status_of(Error("internal error at x.cpp:1: check `a` failed")), 5);
  EXPECT_EQ(status_of(std::bad_alloc()), 5);
  EXPECT_EQ(status_of(42), 5);
}

}  // namespace
}  // namespace simclr

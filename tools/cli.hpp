#pragma once
// Command-line parsing shared by the tools: `prog <subcommand> --flag value ...`, parsed by CLI11
// from a table of commands and flags (CommandSpecs), which is also what `--help` prints. Every
// problem is a simclr::ValueError whose message says what is wrong; the tools turn it into
// `error: ...`, exit 2. `--help` / `-h` is not a problem: ParsedArgs::help holds the text to print.

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace CLI {
class App;
}  // namespace CLI

namespace simclr::tools {

struct ParsedArgs {
  std::string subcommand;
  std::map<std::string, std::string> values;  // flag (without --) -> value ("" for switches)
  // Set when --help or -h was given: the help of the command or of its subcommand, for stdout.
  // Nothing else is then filled in.
  std::string help;

  bool has(const std::string& flag) const { return values.count(flag) != 0; }
  std::optional<std::string> get(const std::string& flag) const;
};

// One flag of a subcommand, as the parser accepts it and as --help lists it.
struct FlagSpec {
  std::string name;        // without the leading --
  std::string value;       // the value's placeholder in the help ("T", "A.npy"); empty: a switch
  std::string help;        // what it does
  std::string default_is;  // its default, or what happens without it ("0.05", "required")
  std::string example;     // a use of it ("--temperature 0.1")
};

struct CommandSpec {
  std::string help;     // one line: what the subcommand does
  std::string example;  // a whole command line
  std::vector<FlagSpec> flags;
};

using CommandSpecs = std::map<std::string, CommandSpec>;

// The CLI11 application of `program` with one subcommand per spec: what parse_args runs and what
// --help prints (tests compare the help with its options).
std::unique_ptr<CLI::App> make_app(const std::string& program, const CommandSpecs& specs);

// args[0] is the program, args[1] the subcommand, looked up in `specs`; then flags, each at most
// once, a value as `--flag VALUE` or `--flag=VALUE`. --help / -h anywhere: ParsedArgs::help.
ParsedArgs parse_args(const std::vector<std::string>& args, const CommandSpecs& specs);

// Strict number parsing: the whole text must be the number.
double parse_double(const std::string& text, const std::string& flag);
std::int64_t parse_int(const std::string& text, const std::string& flag, std::int64_t min_value);
// "n0,n1,..." with every count >= 0.
std::vector<std::int64_t> parse_counts(const std::string& text, const std::string& flag);

}  // namespace simclr::tools

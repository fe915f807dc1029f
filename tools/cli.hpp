#pragma once
// Command-line parsing shared by the tools: `prog <subcommand> --flag value ...`. Every problem is
// a simclr::ValueError whose message says what is wrong; the tools turn it into `error: ...`,
// exit 2.

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace simclr::tools {

struct ParsedArgs {
  std::string subcommand;
  std::map<std::string, std::string> values;  // flag (without --) -> value ("" for switches)

  bool has(const std::string& flag) const { return values.count(flag) != 0; }
  std::optional<std::string> get(const std::string& flag) const;
};

struct FlagSpec {
  std::set<std::string> with_value;  // --flag VALUE
  std::set<std::string> switches;    // --flag
};

// argv[1] is the subcommand, looked up in `specs`; then flags, each at most once.
ParsedArgs parse_args(const std::vector<std::string>& args,
                      const std::map<std::string, FlagSpec>& specs);

// Strict number parsing: the whole text must be the number.
double parse_double(const std::string& text, const std::string& flag);
std::int64_t parse_int(const std::string& text, const std::string& flag, std::int64_t min_value);
// "n0,n1,..." with every count >= 0.
std::vector<std::int64_t> parse_counts(const std::string& text, const std::string& flag);

}  // namespace simclr::tools

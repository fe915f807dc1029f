#include "cli.hpp"

#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "simclr/detail/check.hpp"

namespace simclr::tools {

std::optional<std::string> ParsedArgs::get(const std::string& flag) const {
  const auto it = values.find(flag);
  if (it == values.end()) return std::nullopt;
  return it->second;
}

ParsedArgs parse_args(const std::vector<std::string>& args,
                      const std::map<std::string, FlagSpec>& specs) {
  std::string known;
  for (const auto& [name, spec] : specs) known += (known.empty() ? "" : ", ") + name;
  SIMCLR_ENFORCE(args.size() >= 2, ValueError, "missing command; expected one of: ", known);
  ParsedArgs out;
  out.subcommand = args[1];
  const auto spec_it = specs.find(out.subcommand);
  SIMCLR_ENFORCE(spec_it != specs.end(), ValueError, "unknown command '", out.subcommand,
                 "'; expected one of: ", known);
  const FlagSpec& spec = spec_it->second;
  for (std::size_t i = 2; i < args.size(); ++i) {
    const std::string& a = args[i];
    SIMCLR_ENFORCE(a.size() > 2 && a.compare(0, 2, "--") == 0, ValueError, "unexpected argument '",
                   a, "' (flags start with --)");
    std::string flag = a.substr(2), value;
    bool inline_value = false;
    if (const auto eq = flag.find('='); eq != std::string::npos) {
      value = flag.substr(eq + 1);
      flag = flag.substr(0, eq);
      inline_value = true;
    }
    SIMCLR_ENFORCE(out.values.count(flag) == 0, ValueError, "--", flag, " given twice");
    if (spec.switches.count(flag)) {
      SIMCLR_ENFORCE(!inline_value, ValueError, "--", flag, " takes no value");
      out.values[flag] = "";
    } else if (spec.with_value.count(flag)) {
      if (!inline_value) {
        SIMCLR_ENFORCE(i + 1 < args.size(), ValueError, "--", flag, " needs a value");
        value = args[++i];
      }
      out.values[flag] = value;
    } else {
      throw ValueError("unknown flag --" + flag + " for '" + out.subcommand + "'");
    }
  }
  return out;
}

double parse_double(const std::string& text, const std::string& flag) {
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  SIMCLR_ENFORCE(!text.empty() && end == text.c_str() + text.size() && errno == 0, ValueError, "--",
                 flag, " expects a number, got '", text, "'");
  return v;
}

std::int64_t parse_int(const std::string& text, const std::string& flag, std::int64_t min_value) {
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  SIMCLR_ENFORCE(!text.empty() && end == text.c_str() + text.size() && errno == 0, ValueError, "--",
                 flag, " expects an integer, got '", text, "'");
  SIMCLR_ENFORCE(v >= min_value, ValueError, "--", flag, " must be >= ", min_value, ", got ", v);
  return v;
}

std::vector<std::int64_t> parse_counts(const std::string& text, const std::string& flag) {
  std::vector<std::int64_t> out;
  std::size_t start = 0;
  while (true) {
    const auto comma = text.find(',', start);
    out.push_back(parse_int(
        text.substr(start, comma == std::string::npos ? std::string::npos : comma - start), flag,
        0));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

}  // namespace simclr::tools

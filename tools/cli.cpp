#include "cli.hpp"

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "simclr/detail/check.hpp"

namespace simclr::tools {

std::optional<std::string> ParsedArgs::get(const std::string& flag) const {
  const auto it = values.find(flag);
  if (it == values.end()) return std::nullopt;
  return it->second;
}

namespace {

// What --help says of a flag: what it does, then (indented by CLI11) its default and an example.
std::string describe_flag(const FlagSpec& f) {
  const bool required = f.default_is.compare(0, 8, "required") == 0;
  return f.help + "\n" + (required ? "" : "default: ") + f.default_is + "; e.g. " + f.example;
}

std::string command_names(const CommandSpecs& specs) {
  std::string known;
  for (const auto& [name, spec] : specs) known += (known.empty() ? "" : ", ") + name;
  return known;
}

const FlagSpec* find_flag(const CommandSpecs& specs, const std::string& subcommand,
                          const std::string& flag) {
  const auto it = specs.find(subcommand);
  if (it == specs.end()) return nullptr;
  for (const FlagSpec& f : it->second.flags) {
    if (f.name == flag) return &f;
  }
  return nullptr;
}

// The arguments after the program's name, in the reversed order CLI11's parse() takes. CLI11 reads
// `--flag=` (nothing after '=') as `--flag` followed by the next argument; here it is an empty
// value, as getopt has it, so a value flag's `--flag=` becomes `--flag ""`.
std::vector<std::string> cli11_arguments(const std::vector<std::string>& args,
                                         const CommandSpecs& specs) {
  std::vector<std::string> out;
  for (std::size_t i = 1; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a.size() > 3 && a.compare(0, 2, "--") == 0 && a.back() == '=') {
      const FlagSpec* f = find_flag(specs, args[1], a.substr(2, a.size() - 3));
      if (f != nullptr && !f->value.empty()) {
        out.push_back(a.substr(0, a.size() - 1));
        out.emplace_back();
        continue;
      }
    }
    out.push_back(a);
  }
  return {out.rbegin(), out.rend()};
}

// The flags CLI11 matched, each at most once; anything it did not match is an error.
ParsedArgs collect(const CLI::App& app, const CLI::App& sub, const CommandSpec& spec) {
  ParsedArgs out;
  out.subcommand = sub.get_name();
  std::vector<std::string> extra = sub.remaining();
  for (const std::string& a : app.remaining()) extra.push_back(a);  // after a `--`
  if (!extra.empty()) {
    const std::string& a = extra.front();
    SIMCLR_ENFORCE(a.compare(0, 2, "--") != 0, ValueError, "unknown flag ",
                   a.substr(0, a.find('=')), " for '", out.subcommand, "'");
    throw ValueError("unexpected argument '" + a + "' (flags start with --)");
  }
  for (const FlagSpec& f : spec.flags) {
    const CLI::Option* opt = sub.get_option("--" + f.name);
    if (opt->count() == 0) continue;
    SIMCLR_ENFORCE(opt->count() == 1, ValueError, "--", f.name, " given twice");
    const std::string& value = opt->results().front();
    // CLI11 records a bare switch as "true" and `--switch=x` as "x".
    SIMCLR_ENFORCE(!f.value.empty() || value == "true", ValueError, "--", f.name,
                   " takes no value");
    out.values[f.name] = f.value.empty() ? "" : value;
  }
  return out;
}

}  // namespace

std::unique_ptr<CLI::App> make_app(const std::string& program, const CommandSpecs& specs) {
  auto app = std::make_unique<CLI::App>(
      "The SimCLR (NT-Xent) loss as TensorFlow Similarity computes it, from .npy files "
      "(docs/cli.md).",
      program);
  // Every flag is taken as often as it is given, so that parse_args can say "given twice".
  app->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  // Unknown commands and flags are left over, and parse_args names them in its own words.
  app->allow_extras();
  app->require_subcommand(1);  // exactly one
  app->footer("Run '" + program +
              " SUBCOMMAND --help' for the flags of a subcommand, their defaults and examples.\n"
              "Exit status: 0 success, 2 bad input (one line `error: ...` on stderr),\n"
              "3 communication failure, 4 device failure, 5 any other failure.");
  for (const auto& [name, spec] : specs) {
    CLI::App* sub = app->add_subcommand(name, spec.help);
    sub->allow_extras();
    sub->footer("Example:\n  " + program + " " + spec.example);
    for (const FlagSpec& f : spec.flags) {
      const std::string description = describe_flag(f);  // CLI11 takes it by reference
      if (f.value.empty()) {
        sub->add_flag("--" + f.name, description);
      } else {
        sub->add_option("--" + f.name, description)->type_name(f.value);
      }
    }
  }
  return app;
}

ParsedArgs parse_args(const std::vector<std::string>& args, const CommandSpecs& specs) {
  const std::string program =
      args.empty() ? "simclr-loss" : std::filesystem::path(args[0]).filename().string();
  const std::string known = command_names(specs);
  SIMCLR_ENFORCE(args.size() >= 2, ValueError, "missing command; expected one of: ", known, " ('",
                 program, " --help' lists them)");
  const auto app = make_app(program, specs);
  std::vector<std::string> reversed = cli11_arguments(args, specs);
  try {
    app->parse(reversed);
  } catch (const CLI::CallForHelp&) {
    ParsedArgs out;
    out.help = app->help();  // the selected subcommand's, if any
    return out;
  } catch (const CLI::ArgumentMismatch& e) {
    // The one mismatch left with TakeAll: a value flag at the end, without its value.
    const std::string& last = args.back();
    SIMCLR_ENFORCE(
        last.compare(0, 2, "--") != 0 || find_flag(specs, args[1], last.substr(2)) == nullptr,
        ValueError, last, " needs a value");
    throw ValueError(e.what());
  } catch (const CLI::RequiredError&) {
    // The one requirement: a subcommand, which is not among the arguments.
    throw ValueError("unknown command '" + args[1] + "'; expected one of: " + known);
  } catch (const CLI::Error& e) {
    throw ValueError(e.what());
  }
  const CLI::App& sub = *app->get_subcommands().front();
  // The subcommand comes first: `prog --za a compute` is not `prog compute --za a`.
  SIMCLR_ENFORCE(args[1] == sub.get_name(), ValueError, "unknown command '", args[1],
                 "'; expected one of: ", known);
  return collect(*app, sub, specs.at(args[1]));
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

// Keras-style configuration: reduction keys, get_config / from_config (docs/semantics.md).

#include <cmath>
#include <nlohmann/json.hpp>

#include "simclr/detail/check.hpp"
#include "simclr/loss.hpp"

namespace simclr {

std::string to_string(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "float32";
    case DType::kFloat64:
      return "float64";
  }
  return "unknown";
}

std::string to_string(Reduction reduction) {
  switch (reduction) {
    case Reduction::kAuto:
      return "auto";
    case Reduction::kNone:
      return "none";
    case Reduction::kSum:
      return "sum";
    case Reduction::kSumOverBatchSize:
      return "sum_over_batch_size";
  }
  return "unknown";
}

Reduction parse_reduction(const std::string& key) {
  if (key == "auto") return Reduction::kAuto;
  if (key == "none") return Reduction::kNone;
  if (key == "sum") return Reduction::kSum;
  if (key == "sum_over_batch_size") return Reduction::kSumOverBatchSize;
  throw ValueError("Invalid Reduction Key: " + key +
                   ". Expected keys are \"('auto', 'none', 'sum', 'sum_over_batch_size')\"");
}

const char* to_string(GradientReduction reduction) {
  return reduction == GradientReduction::kMean ? "mean" : "sum";
}

GradientReduction parse_gradient_reduction(const std::string& text) {
  if (text == "sum") return GradientReduction::kSum;
  if (text == "mean") return GradientReduction::kMean;
  throw ValueError("gradient_reduction must be \"sum\" or \"mean\", got '" + text + "'");
}

const char* to_string(NegativesScope scope) {
  switch (scope) {
    case NegativesScope::kLocal:
      return "local";
    case NegativesScope::kGlobal:
      return "global";
  }
  return "unknown";
}

NegativesScope parse_negatives_scope(const std::string& text) {
  if (text == "local") return NegativesScope::kLocal;
  if (text == "global") return NegativesScope::kGlobal;
  throw ValueError("negatives_scope must be \"local\" or \"global\", got '" + text + "'");
}

GlobalBatchSize GlobalBatchSize::of(std::int64_t rows) {
  SIMCLR_ENFORCE(rows >= 0, ValueError, "global_batch_size must be >= 0 or \"infer\", got ", rows);
  return GlobalBatchSize(rows);
}

void validate_temperature(double t) {
  SIMCLR_ENFORCE(std::isfinite(t) && t > 0, ValueError,
                 "temperature must be a finite number > 0, got ", t);
}

namespace {

void check_temperature(double t) { validate_temperature(t); }

const char* json_type(const nlohmann::json& v) { return v.type_name(); }

LossConfig parse_config(const nlohmann::json& in) {
  SIMCLR_ENFORCE(in.is_object(), TypeError, "SimCLRLoss config must be a JSON object, got ",
                 json_type(in));
  const nlohmann::json* cfg = &in;
  if (in.contains("class_name") || in.contains("config")) {
    // Keras serialization wrapper; Keras 2.13+ also writes "module" and "registered_name".
    for (const auto& [key, value] : in.items()) {
      SIMCLR_ENFORCE(
          key == "class_name" || key == "config" || key == "module" || key == "registered_name",
          TypeError, "unexpected key '", key, "' in the Keras wrapper object");
    }
    SIMCLR_ENFORCE(in.contains("class_name") && in.at("class_name").is_string(), TypeError,
                   "the Keras wrapper needs a string \"class_name\"");
    const auto cls = in.at("class_name").get<std::string>();
    SIMCLR_ENFORCE(cls == "Similarity>SimCLRLoss" || cls == "SimCLRLoss", ValueError,
                   "class_name must be \"Similarity>SimCLRLoss\" or \"SimCLRLoss\", got \"", cls,
                   "\"");
    SIMCLR_ENFORCE(in.contains("config"), TypeError, "the Keras wrapper needs a \"config\" object");
    cfg = &in.at("config");
    SIMCLR_ENFORCE(cfg->is_object(), TypeError, "\"config\" must be a JSON object, got ",
                   json_type(*cfg));
  }
  LossConfig out;
  for (const auto& [key, value] : cfg->items()) {
    if (key == "temperature") {
      SIMCLR_ENFORCE(value.is_number(), TypeError, "temperature must be a number, got ",
                     json_type(value));
      out.temperature = value.get<double>();
    } else if (key == "reduction") {
      SIMCLR_ENFORCE(value.is_string(), TypeError, "reduction must be a string, got ",
                     json_type(value));
      out.reduction = parse_reduction(value.get<std::string>());
    } else if (key == "name") {
      SIMCLR_ENFORCE(value.is_string() || value.is_null(), TypeError,
                     "name must be a string or null, got ", json_type(value));
      out.name =
          value.is_null() ? std::nullopt : std::optional<std::string>(value.get<std::string>());
    } else {
      throw TypeError("SimCLRLoss.__init__() got an unexpected keyword argument '" + key + "'");
    }
  }
  check_temperature(out.temperature);
  return out;
}

}  // namespace

SimCLRLoss::SimCLRLoss(double temperature, Reduction reduction, std::optional<std::string> name)
    : SimCLRLoss(LossConfig{temperature, reduction, std::move(name)}) {}

void validate_config(const LossConfig& config) {
  check_temperature(config.temperature);
  SIMCLR_ENFORCE(static_cast<int>(config.reduction) >= 0 && static_cast<int>(config.reduction) <= 3,
                 ValueError, "Invalid Reduction Key: ", static_cast<int>(config.reduction), ".");
}

SimCLRLoss::SimCLRLoss(const LossConfig& config) : config_(config) { validate_config(config_); }

nlohmann::ordered_json SimCLRLoss::get_config() const {
  nlohmann::ordered_json cfg;
  cfg["reduction"] = to_string(config_.reduction);
  if (config_.name) {
    cfg["name"] = *config_.name;
  } else {
    cfg["name"] = nullptr;
  }
  cfg["temperature"] = config_.temperature;
  return cfg;
}

std::string SimCLRLoss::get_config_string() const { return get_config().dump(); }

SimCLRLoss SimCLRLoss::from_config(const nlohmann::json& config) {
  return SimCLRLoss(parse_config(config));
}

SimCLRLoss SimCLRLoss::from_config(const nlohmann::ordered_json& config) {
  return from_config(nlohmann::json::parse(config.dump()));
}

SimCLRLoss SimCLRLoss::from_config_string(const std::string& text) {
  nlohmann::json parsed;
  try {
    parsed = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw ValueError(std::string("config is not valid JSON: ") + e.what());
  }
  return from_config(parsed);
}

}  // namespace simclr

// Config, reduction keys and every error of the semantics page.

#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "simclr/loss.hpp"

namespace simclr {
namespace {

template <class E, class F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("wrong exception type: ") + e.what();
  }
  return "no exception";
}

TEST(Config, DefaultsAndKeyOrder) {
  const SimCLRLoss loss;
  EXPECT_EQ(loss.get_config().dump(), R"({"reduction":"auto","name":null,"temperature":0.05})");
  EXPECT_EQ(loss.temperature(), 0.05);
  EXPECT_EQ(loss.reduction(), Reduction::kAuto);
}

TEST(Config, NamedAndNullName) {
  EXPECT_EQ(SimCLRLoss(0.1, Reduction::kSum, "simclr_loss").get_config().dump(),
            R"({"reduction":"sum","name":"simclr_loss","temperature":0.1})");
  EXPECT_EQ(SimCLRLoss(0.1, Reduction::kNone, std::nullopt).get_config().dump(),
            R"({"reduction":"none","name":null,"temperature":0.1})");
}

TEST(Config, RoundTrip) {
  for (const auto& loss : {SimCLRLoss(), SimCLRLoss(0.2, Reduction::kSumOverBatchSize, "x"),
                           SimCLRLoss(1e-3, Reduction::kNone, std::nullopt)}) {
    const auto cfg = loss.get_config();
    EXPECT_EQ(SimCLRLoss::from_config(cfg).get_config(), cfg);
    EXPECT_EQ(SimCLRLoss::from_config_string(cfg.dump()).get_config(), cfg);
  }
}

TEST(Config, MissingKeysTakeDefaults) {
  EXPECT_EQ(SimCLRLoss::from_config_string("{}").get_config(), SimCLRLoss().get_config());
  const auto l = SimCLRLoss::from_config_string(R"({"temperature": 1})");
  EXPECT_EQ(l.temperature(), 1.0);
  EXPECT_EQ(l.reduction(), Reduction::kAuto);
}

TEST(Config, KerasWrapperAccepted) {
  for (const char* cls : {"Similarity>SimCLRLoss", "SimCLRLoss"}) {
    const std::string text =
        std::string(R"({"class_name": ")") + cls +
        R"(", "config": {"reduction": "sum", "name": "n", "temperature": 0.5}})";
    const auto l = SimCLRLoss::from_config_string(text);
    EXPECT_EQ(l.reduction(), Reduction::kSum);
    EXPECT_EQ(l.temperature(), 0.5);
    EXPECT_EQ(*l.name(), "n");
  }
  // Keras 2.13+ writes module and registered_name too.
  EXPECT_NO_THROW(SimCLRLoss::from_config_string(
      R"({"module": "tensorflow_similarity.losses", "class_name": "SimCLRLoss", "config": {}, "registered_name": "Similarity>SimCLRLoss"})"));
  EXPECT_NE(message_of<ValueError>([] {
              SimCLRLoss::from_config_string(R"({"class_name": "TripletLoss", "config": {}})");
            }).find("class_name"),
            std::string::npos);
}

TEST(Config, UnknownKeyIsTypeError) {
  EXPECT_EQ(message_of<TypeError>([] { SimCLRLoss::from_config_string(R"({"margin": 0.001})"); }),
            "SimCLRLoss.__init__() got an unexpected keyword argument 'margin'");
}

TEST(Config, WrongJsonTypeIsTypeError) {
  EXPECT_NE(message_of<TypeError>([] {
              SimCLRLoss::from_config_string(R"({"temperature": "0.1"})");
            }).find("temperature must be a number"),
            std::string::npos);
  EXPECT_NE(message_of<TypeError>([] {
              SimCLRLoss::from_config_string(R"({"reduction": 3})");
            }).find("reduction must be a string"),
            std::string::npos);
  EXPECT_NE(message_of<TypeError>([] {
              SimCLRLoss::from_config_string(R"({"name": 7})");
            }).find("name must be a string or null"),
            std::string::npos);
  EXPECT_NE(
      message_of<TypeError>([] { SimCLRLoss::from_config_string("[1, 2]"); }).find("JSON object"),
      std::string::npos);
  EXPECT_NE(message_of<TypeError>([] {
              SimCLRLoss::from_config_string(R"({"temperature": true})");
            }).find("temperature must be a number"),
            std::string::npos);
}

TEST(Config, InvalidReductionKey) {
  const auto m =
      message_of<ValueError>([] { SimCLRLoss::from_config_string(R"({"reduction": "mean"})"); });
  EXPECT_EQ(m.rfind("Invalid Reduction Key: mean.", 0), 0u) << m;
  for (const char* key : {"'auto'", "'none'", "'sum'", "'sum_over_batch_size'"})
    EXPECT_NE(m.find(key), std::string::npos) << key;
  // Case-sensitive.
  EXPECT_THROW(parse_reduction("SUM"), ValueError);
  EXPECT_EQ(parse_reduction("sum_over_batch_size"), Reduction::kSumOverBatchSize);
  for (auto r : {Reduction::kAuto, Reduction::kNone, Reduction::kSum, Reduction::kSumOverBatchSize})
    EXPECT_EQ(parse_reduction(to_string(r)), r);
}

TEST(Config, BadTemperatureIsValueError) {
  for (double t : {0.0, -0.1, std::nan(""), static_cast<double>(INFINITY)}) {
    EXPECT_NE(message_of<ValueError>([t] { SimCLRLoss loss(t); }).find("temperature must be"),
              std::string::npos)
        << t;
  }
  EXPECT_THROW(SimCLRLoss::from_config_string(R"({"temperature": 0})"), ValueError);
  EXPECT_THROW(SimCLRLoss::from_config_string(R"({"temperature": -1})"), ValueError);
}

TEST(Config, MalformedJsonIsValueError) {
  EXPECT_THROW(SimCLRLoss::from_config_string("{\"temperature\": "), ValueError);
}

TEST(Errors, HierarchyRootsInError) {
  static_assert(std::is_base_of_v<Error, ValueError>);
  static_assert(std::is_base_of_v<Error, TypeError>);
  static_assert(std::is_base_of_v<Error, CommError>);
  static_assert(std::is_base_of_v<std::runtime_error, Error>);
  EXPECT_THROW(SimCLRLoss(-1.0), Error);
}

TEST(Errors, NonFiniteEmbeddingNamesViewAndRow) {
  RowMatrix<double> a = RowMatrix<double>::Ones(5, 3), b = RowMatrix<double>::Ones(5, 3);
  a(3, 1) = std::nan("");
  EXPECT_NE(message_of<ValueError>([&] {
              SimCLRLoss().forward<double>(a, b);
            }).find("za has NaN at row 3"),
            std::string::npos);
  a(3, 1) = 1;
  b(4, 2) = -INFINITY;
  EXPECT_NE(message_of<ValueError>([&] {
              SimCLRLoss().forward<double>(a, b);
            }).find("zb has Inf at row 4"),
            std::string::npos);
}

TEST(Errors, ShapeMismatch) {
  RowMatrix<float> a = RowMatrix<float>::Ones(5, 3), b = RowMatrix<float>::Ones(4, 3),
                   c = RowMatrix<float>::Ones(5, 2);
  EXPECT_NE(
      message_of<ValueError>([&] { SimCLRLoss().forward<float>(a, b); }).find("[5, 3] vs. [4, 3]"),
      std::string::npos);
  EXPECT_THROW(SimCLRLoss().forward<float>(a, c), ValueError);
}

TEST(Errors, FailedCallLeavesCallerBuffersUntouched) {
  RowMatrix<double> a = RowMatrix<double>::Random(4, 3), b = RowMatrix<double>::Random(4, 3);
  const SimCLRLoss loss(0.1, Reduction::kSum);
  const auto out = loss.forward<double>(a, b);
  RowMatrix<double> ga = RowMatrix<double>::Constant(4, 3, 7.0),
                    gb = RowMatrix<double>::Constant(3, 3, 7.0);
  // grad_b has the wrong shape: the call fails and writes neither buffer.
  EXPECT_THROW(loss.backward_into<double>(out, 1.0, ga, gb), ValueError);
  EXPECT_TRUE((ga.array() == 7.0).all());
  EXPECT_TRUE((gb.array() == 7.0).all());
  // NaN upstream: rejected before anything is written.
  RowMatrix<double> gb2 = RowMatrix<double>::Constant(4, 3, 7.0);
  EXPECT_THROW(loss.backward_into<double>(out, std::nan(""), ga, gb2), ValueError);
  EXPECT_TRUE((ga.array() == 7.0).all());
  // A good call writes both.
  loss.backward_into<double>(out, 1.0, ga, gb2);
  const auto g = loss.backward<double>(out);
  EXPECT_EQ(ga, g.grad_a);
  EXPECT_EQ(gb2, g.grad_b);
  // The inputs were never written.
  const RowMatrix<double> a0 = a;
  RowMatrix<double> bad = a;
  bad(0, 0) = std::nan("");
  EXPECT_THROW(loss.forward<double>(bad, b), ValueError);
  EXPECT_TRUE(a0.isApprox(a));
}

TEST(Errors, UpstreamShapeMustMatchReduction) {
  RowMatrix<double> a = RowMatrix<double>::Random(4, 3), b = RowMatrix<double>::Random(4, 3);
  const SimCLRLoss none(0.1, Reduction::kNone), sum(0.1, Reduction::kSum);
  const auto on = none.forward<double>(a, b);
  EXPECT_THROW(none.backward<double>(on, std::vector<double>{1, 2}), ValueError);
  EXPECT_NO_THROW(none.backward<double>(on, std::vector<double>{1, 2, 3, 4}));
  const auto os = sum.forward<double>(a, b);
  EXPECT_THROW(sum.backward<double>(os, std::vector<double>{1, 2, 3, 4}), ValueError);
  EXPECT_THROW(sum.backward<double>(LossOutput<double>{}), ValueError);
}

TEST(Errors, NegativeGlobalBatchSize) { EXPECT_THROW(GlobalBatchSize::of(-1), ValueError); }

}  // namespace
}  // namespace simclr

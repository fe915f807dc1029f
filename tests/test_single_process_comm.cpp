// The distributed code path with the single-process communicator: same numbers as the local call,
// and the distribution rule (a communicator of size 1 is a distributed context, as TF's strategies
// are).

#include <gtest/gtest.h>

#include "simclr/loss.hpp"

namespace simclr {
namespace {

using M = RowMatrix<double>;

TEST(SingleProcessComm, SameAsLocalForSumAndNone) {
  const M a = M::Random(9, 5), b = M::Random(9, 5);
  SingleProcessCommunicator comm;
  CallOptions dist;
  dist.communicator = &comm;
  for (auto r : {Reduction::kSum, Reduction::kNone}) {
    const SimCLRLoss loss(0.2, r);
    const auto [lo, lg] = loss.value_and_gradient<double>(a, b);
    const auto [dout, dg] = loss.value_and_gradient<double>(a, b, nullptr, dist);
    EXPECT_EQ(lo.values, dout.values);
    EXPECT_TRUE(lg.grad_a.isApprox(dg.grad_a, 1e-14));
    EXPECT_EQ(dout.rank_rows, std::vector<std::int64_t>{9});
    EXPECT_EQ(dout.global_rows, 9);
  }
}

TEST(SingleProcessComm, DistributionRuleRaises) {
  const M a = M::Random(4, 3), b = M::Random(4, 3);
  SingleProcessCommunicator comm;
  CallOptions dist;
  dist.communicator = &comm;
  for (auto r : {Reduction::kAuto, Reduction::kSumOverBatchSize}) {
    try {
      SimCLRLoss(0.1, r).forward<double>(a, b, nullptr, dist);
      ADD_FAILURE() << "no error for " << to_string(r);
    } catch (const ValueError& e) {
      EXPECT_EQ(std::string(e.what()).rfind(
                    "Please use simclr::Reduction::kSum or simclr::Reduction::kNone", 0),
                0u)
          << e.what();
      EXPECT_NE(std::string(e.what()).find("global batch size"), std::string::npos);
    }
  }
}

TEST(SingleProcessComm, GlobalBatchSizeLiftsTheRule) {
  const M a = M::Random(4, 3), b = M::Random(4, 3);
  SingleProcessCommunicator comm;
  const SimCLRLoss sum(0.1, Reduction::kSum), sobs(0.1, Reduction::kAuto);
  const double total = sum.forward<double>(a, b).values[0];
  CallOptions dist;
  dist.communicator = &comm;
  dist.global_batch_size = GlobalBatchSize::of(10);
  EXPECT_DOUBLE_EQ(sobs.forward<double>(a, b, nullptr, dist).values[0], total / 10);
  dist.global_batch_size = GlobalBatchSize::infer();
  EXPECT_DOUBLE_EQ(sobs.forward<double>(a, b, nullptr, dist).values[0], total / 4);
  dist.global_batch_size = GlobalBatchSize::of(0);
  EXPECT_EQ(sobs.forward<double>(a, b, nullptr, dist).values[0], 0.0);
  // Gradient of sum / 10 is the gradient of sum over 10.
  dist.global_batch_size = GlobalBatchSize::of(10);
  const auto g = sobs.value_and_gradient<double>(a, b, nullptr, dist).second;
  const auto gs = sum.value_and_gradient<double>(a, b).second;
  EXPECT_TRUE(g.grad_a.isApprox(gs.grad_a / 10, 1e-13));
}

TEST(SingleProcessComm, LocalCallWithGlobalBatchSize) {
  // Without a communicator a global batch size is still honoured (tf.nn.compute_average_loss).
  const M a = M::Random(4, 3), b = M::Random(4, 3);
  CallOptions o;
  o.global_batch_size = GlobalBatchSize::of(8);
  const double total = SimCLRLoss(0.1, Reduction::kSum).forward<double>(a, b).values[0];
  EXPECT_DOUBLE_EQ(SimCLRLoss(0.1).forward<double>(a, b, nullptr, o).values[0], total / 8);
}

}  // namespace
}  // namespace simclr

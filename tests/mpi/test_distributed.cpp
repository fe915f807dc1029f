// The distributed loss under mpirun (1 to 4 ranks): equal to the single-process call on the whole
// batch for uneven splits and every reduction, equal to TensorFlow's own MirroredStrategy run, the
// same exception on every rank for bad input on one rank, and the bytes each rank sends.

#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <numeric>

#include "../golden.hpp"
#include "../reference.hpp"
#include "simclr/loss.hpp"
#include "simclr/mpi/mpi_communicator.hpp"

namespace simclr {
namespace {

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int world_size() {
  int s = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}

// Splits of G rows over K ranks: even, uneven, a rank with 0 rows, everything on the last rank.
std::vector<std::vector<std::int64_t>> splits(std::int64_t g, int k) {
  std::vector<std::vector<std::int64_t>> out;
  std::vector<std::int64_t> even(k);
  for (int r = 0; r < k; ++r) even[r] = g / k + (r < g % k ? 1 : 0);
  out.push_back(even);
  if (k >= 2) {
    std::vector<std::int64_t> uneven(k, 1);
    uneven[0] = g - (k - 1);
    out.push_back(uneven);
    std::vector<std::int64_t> zero = even;
    zero[k - 1] += zero[0];
    zero[0] = 0;
    out.push_back(zero);
    std::vector<std::int64_t> last(k, 0);
    last[k - 1] = g;
    out.push_back(last);
  }
  return out;
}

template <class T>
RowMatrix<T> global_view(int view, std::int64_t g, std::int64_t d) {
  RowMatrix<T> m(g, d);
  const auto rows = test::seeded_rows(23, view, 0, g, d);
  for (std::int64_t i = 0; i < g; ++i)
    for (std::int64_t j = 0; j < d; ++j) m(i, j) = static_cast<T>(rows[i][j]);
  return m;
}

template <class T>
double max_rel(const RowMatrix<T>& got, const RowMatrix<T>& want) {
  if (want.size() == 0) return got.size() == 0 ? 0.0 : 1e300;
  const double scale = std::max(1e-30, static_cast<double>(want.cwiseAbs().maxCoeff()));
  return static_cast<double>((got - want).cwiseAbs().maxCoeff()) / scale;
}

// Engine configurations: defaults (small problems keep their logits), streamed with the symmetric
// own block plus the rectangular rest on tiny tiles, and streamed without symmetry; each under the
// own_rows and the balanced schedule (auto picks own_rows at these sizes).
std::vector<EngineOptions> engine_variants() {
  EngineOptions kept, sym, rect;
  sym.memory_budget_bytes = 0;
  sym.tile_rows = 3;
  sym.tile_cols = 4;
  rect = sym;
  rect.symmetric = false;
  std::vector<EngineOptions> out;
  for (Schedule schedule : {Schedule::kAuto, Schedule::kOwnRows, Schedule::kBalanced}) {
    for (EngineOptions e : {kept, sym, rect}) {
      e.schedule = schedule;
      out.push_back(e);
    }
  }
  return out;
}

// The whole batch every rank rebuilds: both views, a per-example weight and an upstream gradient.
template <class T>
struct GlobalBatch {
  GlobalBatch(std::int64_t g, std::int64_t d)
      : za(global_view<T>(0, g, d)), zb(global_view<T>(1, g, d)), w_global(g), up_global(g) {
    for (std::int64_t i = 0; i < g; ++i) {
      w_global[i] = 0.5 + 0.25 * static_cast<double>(i % 3);
      up_global[i] = static_cast<T>(1.0 - 0.1 * static_cast<double>(i));
    }
    w_all = SampleWeight::per_example(w_global);
  }
  RowMatrix<T> za, zb;
  std::vector<double> w_global;
  std::vector<T> up_global;
  SampleWeight w_all;
};

template <class T>
void check_against_single_process(double tol, const EngineOptions& engine);

template <class T>
void check_against_single_process(double tol) {
  for (const EngineOptions& engine : engine_variants())
    check_against_single_process<T>(tol, engine);
}

template <class T>
void check_against_single_process(double tol, const EngineOptions& engine) {
  const int k = world_size(), rank = world_rank();
  MpiCommunicator comm(MPI_COMM_WORLD);
  const std::int64_t g = 11, d = 6;
  const GlobalBatch<T> batch(g, d);
  const RowMatrix<T>& za = batch.za;
  const RowMatrix<T>& zb = batch.zb;
  const std::vector<double>& w_global = batch.w_global;
  const std::vector<T>& up_global = batch.up_global;
  const SampleWeight& w_all = batch.w_all;

  for (const auto& split : splits(g, k)) {
    const std::int64_t begin =
        std::accumulate(split.begin(), split.begin() + rank, std::int64_t{0});
    const std::int64_t n = split[rank];
    const ConstMatrixView<T> a(za.data() + begin * d, n, d), b(zb.data() + begin * d, n, d);
    const SampleWeight w_mine = SampleWeight::per_example(
        std::vector<double>(w_global.begin() + begin, w_global.begin() + begin + n));
    for (auto reduction :
         {Reduction::kNone, Reduction::kSum, Reduction::kSumOverBatchSize, Reduction::kAuto}) {
      SCOPED_TRACE(::testing::Message()
                   << "rank " << rank << " split[0]=" << split[0] << " n=" << n << " reduction "
                   << to_string(reduction) << " schedule " << to_string(engine.schedule)
                   << " symmetric " << engine.symmetric << " tile_rows " << engine.tile_rows);
      const SimCLRLoss loss(0.2, reduction);
      CallOptions o;
      o.communicator = &comm;
      o.engine = engine;
      if (reduction == Reduction::kSumOverBatchSize || reduction == Reduction::kAuto)
        o.global_batch_size = GlobalBatchSize::infer();
      const LossOutput<T> out = loss.forward(a, b, &w_mine, o);
      EXPECT_EQ(out.global_rows, g);
      EXPECT_EQ(out.row_offset, begin);
      std::vector<T> up_mine(up_global.begin() + begin, up_global.begin() + begin + n);
      const Gradients<T> grads =
          reduction == Reduction::kNone ? loss.backward(out, up_mine) : loss.backward(out, T(1));

      // Single process on the whole batch: per-example losses, and the gradient of the same J.
      const SimCLRLoss local_none(0.2, Reduction::kNone);
      const auto whole = local_none.forward<T>(za, zb, &w_all);
      double want_j = 0;
      for (std::int64_t i = begin; i < begin + n; ++i)
        want_j += static_cast<double>(whole.values[i]);
      if (reduction == Reduction::kNone) {
        ASSERT_EQ(static_cast<std::int64_t>(out.values.size()), n);
        for (std::int64_t i = 0; i < n; ++i)
          EXPECT_LE(test::rel_err(out.values[i], whole.values[begin + i]), tol);
      } else {
        if (reduction != Reduction::kSum) want_j /= static_cast<double>(g);
        EXPECT_LE(test::rel_err(static_cast<double>(out.values.at(0)), want_j), tol);
      }
      std::vector<T> up_whole(g, T(1));
      if (reduction == Reduction::kNone) up_whole = up_global;
      if (reduction == Reduction::kSumOverBatchSize || reduction == Reduction::kAuto)
        for (auto& u : up_whole) u = static_cast<T>(1.0 / static_cast<double>(g));
      const auto gw = local_none.backward(whole, up_whole);
      EXPECT_LE(max_rel<T>(grads.grad_a, gw.grad_a.middleRows(begin, n)), tol);
      EXPECT_LE(max_rel<T>(grads.grad_b, gw.grad_b.middleRows(begin, n)), tol);
    }
  }
}

TEST(Distributed, DoubleEqualsSingleProcessForEverySplitAndReduction) {
  check_against_single_process<double>(1e-10);
}

TEST(Distributed, FloatEqualsSingleProcessForEverySplitAndReduction) {
  check_against_single_process<float>(1e-5);
}

template <class T>
void check_golden(const nlohmann::json& c, double tol) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const auto& mine = c["per_replica"][world_rank()];
  std::int64_t g = 0, d = 0;
  const auto za = test::flat<T>(c["za"], &g, &d), zb = test::flat<T>(c["zb"]);
  const std::int64_t begin = mine["row_start"], n = mine["rows"];
  const SimCLRLoss loss(c["temperature"].get<double>(), Reduction::kNone);
  CallOptions o;
  o.communicator = &comm;
  const auto out = loss.forward<T>(ConstMatrixView<T>(za.data() + begin * d, n, d),
                                   ConstMatrixView<T>(zb.data() + begin * d, n, d), nullptr, o);
  const auto grads = loss.backward(out, T(1));
  std::vector<T> want_loss;
  for (const auto& v : mine["loss"]) want_loss.push_back(static_cast<T>(v.get<double>()));
  EXPECT_LE(test::max_rel(out.values.data(), want_loss, 1.0), tol);
  const auto ga = test::flat<T>(mine["grad_za"]), gb = test::flat<T>(mine["grad_zb"]);
  // Gradient entries are O(1 / (T |x|)); use that as the floor of the scale (see test_golden.cpp).
  const double floor = 1.0 / c["temperature"].get<double>() / 10.0;
  EXPECT_LE(test::max_rel(grads.grad_a.data(), ga, floor), tol);
  EXPECT_LE(test::max_rel(grads.grad_b.data(), gb, floor), tol);
}

TEST(Distributed, MatchesTensorFlowMirroredStrategy) {
  const auto golden = test::load_golden("golden_distributed.json");
  int ran = 0;
  for (const auto& c : golden["cases"]) {
    if (c["replicas"].get<int>() != world_size()) continue;
    SCOPED_TRACE(c["id"].get<std::string>());
    if (c["dtype"] == "float32") {
      check_golden<float>(c, 2e-5);
    } else {
      check_golden<double>(c, 1e-10);
    }
    ++ran;
  }
  if (ran == 0)
    GTEST_SKIP() << "TensorFlow's golden runs have 2 and 4 replicas, not " << world_size();
}

// ---- bad input on one rank: the same exception everywhere, then a barrier every rank reaches ----

template <class E, class F>
void expect_everywhere(F&& call, const std::string& needle) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  std::string what = "no exception";
  try {
    call(comm);
  } catch (const E& e) {
    what = e.what();
  } catch (const std::exception& e) {
    what = std::string("wrong type: ") + e.what();
  }
  EXPECT_NE(what.find(needle), std::string::npos) << what;
  // Every rank must hold the same message.
  char buf[512] = {0};
  std::strncpy(buf, what.c_str(), sizeof(buf) - 1);
  std::vector<char> all(sizeof(buf) * world_size());
  MPI_Allgather(buf, sizeof(buf), MPI_CHAR, all.data(), sizeof(buf), MPI_CHAR, MPI_COMM_WORLD);
  for (int r = 0; r < world_size(); ++r)
    EXPECT_STREQ(all.data() + r * sizeof(buf), buf) << "rank " << r;
  comm.barrier();
  MPI_Barrier(MPI_COMM_WORLD);
}

int bad_rank() { return world_size() - 1; }

TEST(DistributedErrors, NaNOnOneRank) {
  RowMatrix<double> a = RowMatrix<double>::Ones(3, 4), b = RowMatrix<double>::Random(3, 4);
  if (world_rank() == bad_rank()) a(2, 1) = std::nan("");
  expect_everywhere<ValueError>(
      [&](Communicator& c) {
        CallOptions o;
        o.communicator = &c;
        SimCLRLoss(0.1, Reduction::kSum).forward<double>(a, b, nullptr, o);
      },
      "za has NaN at row 2, column 1 (rank " + std::to_string(bad_rank()) + ")");
}

TEST(DistributedErrors, WrongDimensionOnOneRank) {
  const int d = world_rank() == bad_rank() && world_size() > 1 ? 5 : 4;
  RowMatrix<double> a = RowMatrix<double>::Random(3, d), b = RowMatrix<double>::Random(3, d);
  if (world_size() == 1) GTEST_SKIP() << "needs 2 ranks";
  expect_everywhere<ValueError>(
      [&](Communicator& c) {
        CallOptions o;
        o.communicator = &c;
        SimCLRLoss(0.1, Reduction::kSum).forward<double>(a, b, nullptr, o);
      },
      "embedding dimension differs across ranks");
}

TEST(DistributedErrors, WrongDtypeOnOneRank) {
  if (world_size() == 1) GTEST_SKIP() << "needs 2 ranks";
  expect_everywhere<TypeError>(
      [&](Communicator& c) {
        CallOptions o;
        o.communicator = &c;
        const SimCLRLoss loss(0.1, Reduction::kSum);
        if (world_rank() == bad_rank()) {
          RowMatrix<float> a = RowMatrix<float>::Random(3, 4);
          loss.forward<float>(a, a, nullptr, o);
        } else {
          RowMatrix<double> a = RowMatrix<double>::Random(3, 4);
          loss.forward<double>(a, a, nullptr, o);
        }
      },
      "dtype differs across ranks");
}

TEST(DistributedErrors, BadWeightShapeOnOneRank) {
  RowMatrix<double> a = RowMatrix<double>::Random(3, 4), b = RowMatrix<double>::Random(3, 4);
  const SampleWeight w =
      world_rank() == bad_rank() ? SampleWeight({2}, {1, 1}) : SampleWeight::scalar(1);
  expect_everywhere<ValueError>(
      [&](Communicator& c) {
        CallOptions o;
        o.communicator = &c;
        SimCLRLoss(0.1, Reduction::kSum).forward<double>(a, b, &w, o);
      },
      "Incompatible shapes: [3] vs. [2]");
}

TEST(DistributedErrors, DistributionRule) {
  RowMatrix<double> a = RowMatrix<double>::Random(3, 4), b = RowMatrix<double>::Random(3, 4);
  for (auto r : {Reduction::kAuto, Reduction::kSumOverBatchSize}) {
    expect_everywhere<ValueError>(
        [&](Communicator& c) {
          CallOptions o;
          o.communicator = &c;
          SimCLRLoss(0.1, r).forward<double>(a, b, nullptr, o);
        },
        "Please use simclr::Reduction::kSum or simclr::Reduction::kNone");
  }
}

TEST(DistributedErrors, MismatchedConfig) {
  if (world_size() == 1) GTEST_SKIP() << "needs 2 ranks";
  RowMatrix<double> a = RowMatrix<double>::Random(3, 4), b = RowMatrix<double>::Random(3, 4);
  expect_everywhere<ValueError>(
      [&](Communicator& c) {
        CallOptions o;
        o.communicator = &c;
        SimCLRLoss(world_rank() == bad_rank() ? 0.2 : 0.1, Reduction::kSum)
            .forward<double>(a, b, nullptr, o);
      },
      "temperature differs across ranks");
}

TEST(DistributedErrors, GradientReductionDiffersOnOneRank) {
  if (world_size() == 1) GTEST_SKIP() << "needs 2 ranks";
  RowMatrix<double> a = RowMatrix<double>::Random(3, 4), b = RowMatrix<double>::Random(3, 4);
  expect_everywhere<ValueError>(
      [&](Communicator& c) {
        CallOptions o;
        o.communicator = &c;
        o.gradient_reduction =
            world_rank() == bad_rank() ? GradientReduction::kMean : GradientReduction::kSum;
        SimCLRLoss(0.1, Reduction::kSum).forward<double>(a, b, nullptr, o);
      },
      "gradient_reduction differs between ranks: rank 0 has 'sum', rank " +
          std::to_string(bad_rank()) + " has 'mean'");
}

// kMean is the kSum gradient times the number of ranks; the loss itself is unchanged.
TEST(Distributed, GradientReductionMeanScalesByTheRanks) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const RowMatrix<double> a = global_view<double>(0, 3, 5), b = global_view<double>(1, 3, 5);
  const SimCLRLoss loss(0.2, Reduction::kSum);
  CallOptions sum, mean;
  sum.communicator = mean.communicator = &comm;
  mean.gradient_reduction = GradientReduction::kMean;
  const auto [out_s, g_s] = loss.value_and_gradient<double>(a, b, nullptr, sum);
  const auto [out_m, g_m] = loss.value_and_gradient<double>(a, b, nullptr, mean);
  EXPECT_EQ(out_s.objective, out_m.objective);
  const double p = world_size();
  EXPECT_LE(max_rel<double>(g_m.grad_a, p * g_s.grad_a), 1e-15);
  EXPECT_LE(max_rel<double>(g_m.grad_b, p * g_s.grad_b), 1e-15);
}

// dJ/dT (CallOptions::temperature_gradient): each rank's share; the shares add up (kSum) or average
// (kMean) to the single-process dJ/dT of the whole batch, for every split (uneven, a rank with no
// rows), every reduction, the kept and streamed engines and both schedules; the call's temperature
// (not the loss's) is the one used.
template <class T>
void check_temperature_gradient(double tol) {
  const int k = world_size(), rank = world_rank();
  MpiCommunicator comm(MPI_COMM_WORLD);
  const std::int64_t g = 10, d = 5;
  const double t = 0.15;
  const GlobalBatch<T> batch(g, d);
  const RowMatrix<T>& za = batch.za;
  const RowMatrix<T>& zb = batch.zb;
  const std::vector<double>& w_global = batch.w_global;
  const std::vector<T>& up_global = batch.up_global;
  const SampleWeight& w_all = batch.w_all;
  for (const auto& split : splits(g, k)) {
    const std::int64_t begin =
        std::accumulate(split.begin(), split.begin() + rank, std::int64_t{0});
    const std::int64_t n = split[rank];
    const ConstMatrixView<T> a(za.data() + begin * d, n, d), b(zb.data() + begin * d, n, d);
    const SampleWeight w_mine = SampleWeight::per_example(
        std::vector<double>(w_global.begin() + begin, w_global.begin() + begin + n));
    const std::vector<T> up_mine(up_global.begin() + begin, up_global.begin() + begin + n);
    for (auto reduction : {Reduction::kNone, Reduction::kSum, Reduction::kSumOverBatchSize}) {
      // The single process on the whole batch.
      const SimCLRLoss local(t, reduction);
      CallOptions lo;
      lo.temperature_gradient = true;
      const auto whole = local.forward<T>(za, zb, &w_all, lo);
      const auto gw = reduction == Reduction::kNone ? local.backward(whole, up_global)
                                                    : local.backward(whole, T(1));
      ASSERT_TRUE(gw.grad_temperature.has_value());
      const double want = static_cast<double>(*gw.grad_temperature);
      for (const EngineOptions& engine : engine_variants()) {
        for (auto convention : {GradientReduction::kSum, GradientReduction::kMean}) {
          SCOPED_TRACE(::testing::Message()
                       << "rank " << rank << " split[0]=" << split[0] << " reduction "
                       << to_string(reduction) << " schedule " << to_string(engine.schedule)
                       << " symmetric " << engine.symmetric << " " << to_string(convention));
          const SimCLRLoss loss(0.9, reduction);  // the call's temperature overrides it
          CallOptions o;
          o.communicator = &comm;
          o.engine = engine;
          o.gradient_reduction = convention;
          o.temperature = t;
          o.temperature_gradient = true;
          if (reduction == Reduction::kSumOverBatchSize)
            o.global_batch_size = GlobalBatchSize::infer();
          const LossOutput<T> out = loss.forward(a, b, &w_mine, o);
          const Gradients<T> grads = reduction == Reduction::kNone ? loss.backward(out, up_mine)
                                                                   : loss.backward(out, T(1));
          ASSERT_TRUE(grads.grad_temperature.has_value());
          double share = static_cast<double>(*grads.grad_temperature), total = 0;
          MPI_Allreduce(&share, &total, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
          if (convention == GradientReduction::kMean) total /= k;  // what DDP's averaging does
          EXPECT_LE(test::rel_err(total, want), tol) << total << " vs " << want;
          if (n == 0) {
            EXPECT_EQ(share, 0.0);
          }
        }
      }
    }
  }
}

TEST(Distributed, TemperatureGradientSharesAddUpToTheSingleProcess) {
  check_temperature_gradient<double>(1e-10);
  check_temperature_gradient<float>(2e-5);
}

// Extra negatives (CallOptions::negatives). Rank r holds bank_r (2r + 1 rows for even r, none
// for odd r: ranks without a bank too). Global scope: every anchor sees every bank, which is the
// single process with the banks stacked in rank order. Local scope: rank s's anchors see bank_s, so
// J = sum_s J_s where J_s is the single process with bank_s restricted (by its upstream) to rank
// s's rows. Values, gradients and the dJ/dT shares against those single-process calls.
template <class T>
RowMatrix<T> rank_bank(int rank, std::int64_t d) {
  const std::int64_t k = rank % 2 == 0 ? 2 * rank + 1 : 0;
  RowMatrix<T> m(k, d);
  const auto rows = test::seeded_rows(29, 2 + rank, 0, k, d);
  for (std::int64_t i = 0; i < k; ++i)
    for (std::int64_t j = 0; j < d; ++j) m(i, j) = static_cast<T>(3 * rows[i][j]);
  return m;
}

template <class T>
void check_negatives(double tol, NegativesScope scope) {
  const int k = world_size(), rank = world_rank();
  MpiCommunicator comm(MPI_COMM_WORLD);
  const std::int64_t g = 9, d = 5;
  const double t = 0.25;
  const GlobalBatch<T> batch(g, d);
  std::vector<RowMatrix<T>> banks;
  RowMatrix<T> stacked(0, d);
  for (int r = 0; r < k; ++r) {
    banks.push_back(rank_bank<T>(r, d));
    RowMatrix<T> next(stacked.rows() + banks.back().rows(), d);
    next << stacked, banks.back();
    stacked = next;
  }
  for (const auto& split : splits(g, k)) {
    std::vector<std::int64_t> begins(static_cast<std::size_t>(k) + 1, 0);
    for (int r = 0; r < k; ++r) begins[r + 1] = begins[r] + split[r];
    const std::int64_t begin = begins[rank], n = split[rank];
    const ConstMatrixView<T> a(batch.za.data() + begin * d, n, d),
        b(batch.zb.data() + begin * d, n, d);
    const SampleWeight w_mine = SampleWeight::per_example(std::vector<double>(
        batch.w_global.begin() + begin, batch.w_global.begin() + begin + n));
    const std::vector<T> up_mine(batch.up_global.begin() + begin,
                                 batch.up_global.begin() + begin + n);
    for (auto reduction : {Reduction::kNone, Reduction::kSum}) {
      // The single-process reference: J_s for every rank s whose anchors see its own bank (local)
      // or all of them (global), each through a per-example upstream that is 0 off rank s's rows.
      const SimCLRLoss local(t, Reduction::kNone);
      RowMatrix<T> want_a = RowMatrix<T>::Zero(g, d), want_b = RowMatrix<T>::Zero(g, d);
      double want_t = 0;
      std::vector<T> want_values(static_cast<std::size_t>(n));
      for (int s = 0; s < k; ++s) {
        CallOptions lo;
        lo.temperature_gradient = true;
        const RowMatrix<T>& bank = scope == NegativesScope::kGlobal ? stacked : banks[s];
        lo.negatives = Negatives(ConstMatrixView<T>(bank));
        const auto whole = local.forward<T>(batch.za, batch.zb, &batch.w_all, lo);
        std::vector<T> up(static_cast<std::size_t>(g), T(0));
        for (std::int64_t i = begins[s]; i < begins[s + 1]; ++i)
          up[i] = reduction == Reduction::kNone ? batch.up_global[i] : T(1);
        const auto gw = local.backward(whole, up);
        want_a += gw.grad_a;
        want_b += gw.grad_b;
        want_t += static_cast<double>(*gw.grad_temperature);
        if (s == rank)
          for (std::int64_t i = 0; i < n; ++i) want_values[i] = whole.values[begin + i];
      }
      for (const EngineOptions& engine : engine_variants()) {
        SCOPED_TRACE(::testing::Message()
                     << "rank " << rank << " split[0]=" << split[0] << " reduction "
                     << to_string(reduction) << " scope " << to_string(scope) << " schedule "
                     << to_string(engine.schedule) << " symmetric " << engine.symmetric);
        const SimCLRLoss loss(t, reduction);
        CallOptions o;
        o.communicator = &comm;
        o.engine = engine;
        o.temperature_gradient = true;
        o.negatives = Negatives(ConstMatrixView<T>(banks[rank]), scope);
        const LossOutput<T> out = loss.forward(a, b, &w_mine, o);
        EXPECT_EQ(out.negative_rows, scope == NegativesScope::kGlobal ? stacked.rows()
                                                                      : banks[rank].rows());
        const Gradients<T> grads = reduction == Reduction::kNone ? loss.backward(out, up_mine)
                                                                 : loss.backward(out, T(1));
        if (reduction == Reduction::kNone) {
          for (std::int64_t i = 0; i < n; ++i)
            EXPECT_LE(test::rel_err(out.values[i], want_values[i]), tol);
        } else {
          double want = 0;
          for (std::int64_t i = 0; i < n; ++i) want += static_cast<double>(want_values[i]);
          EXPECT_LE(test::rel_err(static_cast<double>(out.values.at(0)), want), tol);
        }
        EXPECT_LE(max_rel<T>(grads.grad_a, want_a.middleRows(begin, n)), tol);
        EXPECT_LE(max_rel<T>(grads.grad_b, want_b.middleRows(begin, n)), tol);
        double share = static_cast<double>(*grads.grad_temperature), total = 0;
        MPI_Allreduce(&share, &total, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
        EXPECT_LE(test::rel_err(total, want_t), tol) << total << " vs " << want_t;
      }
    }
  }
}

TEST(Distributed, GlobalNegativesEqualTheSingleProcessWithEveryBank) {
  check_negatives<double>(1e-10, NegativesScope::kGlobal);
  check_negatives<float>(5e-5, NegativesScope::kGlobal);
}

TEST(Distributed, LocalNegativesEqualTheSingleProcessWithEachRanksBank) {
  check_negatives<double>(1e-10, NegativesScope::kLocal);
  check_negatives<float>(5e-5, NegativesScope::kLocal);
}

TEST(DistributedErrors, NegativesScopeDiffersOnOneRank) {
  if (world_size() < 2) GTEST_SKIP() << "needs two ranks";
  const auto za = global_view<double>(0, 3, 4), zb = global_view<double>(1, 3, 4);
  const RowMatrix<double> bank = global_view<double>(2, 2, 4);
  expect_everywhere<ValueError>(
      [&](Communicator& c) {
        CallOptions o;
        o.communicator = &c;
        o.negatives = Negatives(ConstMatrixView<double>(bank), world_rank() == bad_rank()
                                                                   ? NegativesScope::kGlobal
                                                                   : NegativesScope::kLocal);
        SimCLRLoss(0.3, Reduction::kSum).forward<double>(za, zb, nullptr, o);
      },
      "negatives_scope differs between ranks: rank 0 has 'local', rank " +
          std::to_string(bad_rank()) + " has 'global'");
}

TEST(DistributedErrors, NegativesOfTheWrongWidthOnOneRank) {
  const auto za = global_view<double>(0, 3, 4), zb = global_view<double>(1, 3, 4);
  const RowMatrix<double> bank = global_view<double>(2, 2, world_rank() == bad_rank() ? 5 : 4);
  expect_everywhere<ValueError>(
      [&](Communicator& c) {
        CallOptions o;
        o.communicator = &c;
        o.negatives = Negatives(ConstMatrixView<double>(bank));
        SimCLRLoss(0.3, Reduction::kSum).forward<double>(za, zb, nullptr, o);
      },
      "negatives are [2, 5] but the embeddings have 4 columns");
}

TEST(DistributedErrors, CallTemperatureDiffersOnOneRank) {
  if (world_size() < 2) GTEST_SKIP() << "needs two ranks";
  MpiCommunicator comm(MPI_COMM_WORLD);
  const RowMatrix<double> a = global_view<double>(0, 3, 4), b = global_view<double>(1, 3, 4);
  const SimCLRLoss loss(0.2, Reduction::kSum);
  CallOptions o;
  o.communicator = &comm;
  o.temperature = world_rank() == world_size() - 1 ? 0.3 : 0.25;
  try {
    (void)loss.forward<double>(a, b, nullptr, o);
    ADD_FAILURE() << "no error";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("temperature differs across ranks"), std::string::npos)
        << e.what();
  }
  o.temperature = world_rank() == world_size() - 1 ? -1.0 : 0.25;  // a bad one on the last rank
  try {
    (void)loss.forward<double>(a, b, nullptr, o);
    ADD_FAILURE() << "no error";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("temperature must be a finite number > 0, got -1"),
              std::string::npos)
        << e.what();
  }
}

TEST(DistributedErrors, BadUpstreamOnOneRankInBackward) {
  RowMatrix<double> a = RowMatrix<double>::Random(3, 4), b = RowMatrix<double>::Random(3, 4);
  MpiCommunicator comm(MPI_COMM_WORLD);
  CallOptions o;
  o.communicator = &comm;
  const SimCLRLoss loss(0.1, Reduction::kNone);
  const auto out = loss.forward<double>(a, b, nullptr, o);
  expect_everywhere<ValueError>(
      [&](Communicator&) {
        std::vector<double> up(world_rank() == bad_rank() ? 2 : 3, 1.0);
        loss.backward(out, up);
      },
      "upstream gradient has 2 elements but the loss has 3");
}

// ---- traffic: O(n_r d) in the forward's gather, O(n_r) in the backward ----

class CountingCommunicator final : public Communicator {
 public:
  explicit CountingCommunicator(Communicator& inner) : inner_(inner) {}
  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  std::string backend() const override { return "counting+" + inner_.backend(); }
  void all_gather(const void* s, std::size_t bytes, void* r) override {
    sent += bytes;
    inner_.all_gather(s, bytes, r);
  }
  void all_gather_v(const void* s, std::size_t bytes, void* r,
                    const std::vector<std::size_t>& rb) override {
    sent += bytes;
    inner_.all_gather_v(s, bytes, r, rb);
  }
  void barrier() override { inner_.barrier(); }
  void reduce_scatter_v(const void* s, void* r, const std::vector<std::size_t>& counts,
                        SumType t) override {
    const std::size_t elem = t == SumType::kFloat64 ? sizeof(double) : sizeof(float);
    reduced += std::accumulate(counts.begin(), counts.end(), std::size_t{0}) * elem;
    inner_.reduce_scatter_v(s, r, counts, t);
  }
  std::size_t sent = 0;     // all_gather and all_gather_v: this rank's contribution
  std::size_t reduced = 0;  // reduce_scatter_v: the vector this rank contributes to the sum

 private:
  Communicator& inner_;
};

TEST(DistributedTraffic, BackwardSendsScalarsPerRowNotGradients) {
  MpiCommunicator mpi(MPI_COMM_WORLD);
  CountingCommunicator comm(mpi);
  const std::int64_t n = 8 + world_rank(), d = 64;
  RowMatrix<float> a = RowMatrix<float>::Random(n, d), b = RowMatrix<float>::Random(n, d);
  CallOptions o;
  o.communicator = &comm;
  o.engine.schedule = Schedule::kOwnRows;
  const SimCLRLoss loss(0.1, Reduction::kSum);
  const auto out = loss.forward<float>(a, b, nullptr, o);
  EXPECT_EQ(comm.reduced, 0u);
  const std::size_t forward_bytes = comm.sent;
  comm.sent = 0;
  loss.backward(out, 1.0f);
  const std::size_t backward_bytes = comm.sent;
  // Forward: one 512-byte agreement record plus this rank's 2 n d normalised embeddings.
  EXPECT_EQ(forward_bytes, 512 + static_cast<std::size_t>(2 * n * d) * sizeof(float));
  // Backward: one status record plus LSE and alpha for this rank's 2n rows, independent of d and G.
  EXPECT_EQ(backward_bytes, 512 + static_cast<std::size_t>(4 * n) * sizeof(float));
  EXPECT_LT(backward_bytes, static_cast<std::size_t>(n * d) * sizeof(float));
  EXPECT_EQ(comm.reduced, 0u);
}

// The balanced schedule adds a reduce-scatter of 2G row sums to the forward and one of the [2G, d]
// partial gradients to the backward; the gathers stay as they are.
TEST(DistributedTraffic, BalancedReduceScattersRowSumsThenGradients) {
  MpiCommunicator mpi(MPI_COMM_WORLD);
  CountingCommunicator comm(mpi);
  const int k = world_size();
  const std::int64_t n = 8 + world_rank(), d = 64;
  std::int64_t g = 0;
  for (int r = 0; r < k; ++r) g += 8 + r;
  RowMatrix<float> a = RowMatrix<float>::Random(n, d), b = RowMatrix<float>::Random(n, d);
  CallOptions o;
  o.communicator = &comm;
  o.engine.schedule = Schedule::kBalanced;
  const SimCLRLoss loss(0.1, Reduction::kSum);
  const auto out = loss.forward<float>(a, b, nullptr, o);
  EXPECT_EQ(comm.sent, 512 + static_cast<std::size_t>(2 * n * d) * sizeof(float));
  EXPECT_EQ(comm.reduced, k > 1 ? static_cast<std::size_t>(2 * g) * sizeof(float) : 0u);
  comm.sent = comm.reduced = 0;
  loss.backward(out, 1.0f);
  EXPECT_EQ(comm.sent, 512 + static_cast<std::size_t>(4 * n) * sizeof(float));
  EXPECT_EQ(comm.reduced, k > 1 ? static_cast<std::size_t>(2 * g * d) * sizeof(float) : 0u);
}

// ---- the balanced schedule: work, determinism, agreement ----

// With 1-row tiles the balanced ranks together perform exactly the single process's products (each
// logit once in the forward, once recomputed and twice multiplied in the backward); own_rows does
// more as soon as there are two ranks.
TEST(DistributedBalanced, FlopsAddUpToTheSingleProcess) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int k = world_size(), rank = world_rank();
  const std::int64_t g = 40, d = 8;
  const RowMatrix<double> za = global_view<double>(0, g, d), zb = global_view<double>(1, g, d);
  for (const auto& split : splits(g, k)) {
    const std::int64_t begin =
        std::accumulate(split.begin(), split.begin() + rank, std::int64_t{0});
    const std::int64_t n = split[rank];
    const ConstMatrixView<double> a(za.data() + begin * d, n, d), b(zb.data() + begin * d, n, d);
    const SimCLRLoss loss(0.2, Reduction::kSum);
    CallOptions o;
    o.engine.memory_budget_bytes = 0;  // own_rows streams too (a kept block is not recomputed)
    o.engine.tile_rows = 1;
    o.engine.tile_cols = 5;
    const auto whole = loss.value_and_gradient<double>(za, zb, nullptr, o);
    const double single = whole.first.flops + whole.second.flops;
    o.communicator = &comm;
    double totals[2] = {0, 0};
    for (int i = 0; i < 2; ++i) {
      o.engine.schedule = i == 0 ? Schedule::kBalanced : Schedule::kOwnRows;
      const auto mine = loss.value_and_gradient<double>(a, b, nullptr, o);
      double flops = mine.first.flops + mine.second.flops;
      MPI_Allreduce(MPI_IN_PLACE, &flops, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
      totals[i] = flops;
    }
    EXPECT_EQ(totals[0], single) << "split[0]=" << split[0];
    if (k > 1 && split[0] > 0 && split[0] < g) {
      EXPECT_GT(totals[1], single);
    }
  }
}

// Every rank's work under the balanced schedule is within one rank block of every other's (even
// split), for any number of ranks.
TEST(DistributedBalanced, WorkIsEvenAcrossRanks) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int k = world_size();
  const std::int64_t n = 12, d = 8;
  RowMatrix<double> a = RowMatrix<double>::Random(n, d), b = RowMatrix<double>::Random(n, d);
  CallOptions o;
  o.communicator = &comm;
  o.engine.tile_rows = 1;
  o.engine.schedule = Schedule::kBalanced;
  const auto r = SimCLRLoss(0.2, Reduction::kSum).value_and_gradient<double>(a, b, nullptr, o);
  const double mine = r.first.flops + r.second.flops;
  std::vector<double> all(static_cast<std::size_t>(k));
  MPI_Allgather(&mine, 1, MPI_DOUBLE, all.data(), 1, MPI_DOUBLE, MPI_COMM_WORLD);
  const auto [lo, hi] = std::minmax_element(all.begin(), all.end());
  // One rank block of 2n x 2n logits costs 4 products in total (forward plus backward).
  const double block =
      4.0 * 2.0 * static_cast<double>(2 * n) * static_cast<double>(2 * n) * static_cast<double>(d);
  EXPECT_LE(*hi - *lo, block);
}

TEST(DistributedBalanced, DoubleIsBitwiseRepeatable) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const std::int64_t n = 9 + world_rank(), d = 7;
  RowMatrix<double> a = RowMatrix<double>::Random(n, d), b = RowMatrix<double>::Random(n, d);
  CallOptions o;
  o.communicator = &comm;
  o.engine.threads = 2;
  o.engine.tile_rows = 2;
  o.engine.tile_cols = 3;
  o.engine.schedule = Schedule::kBalanced;
  const SimCLRLoss loss(0.2, Reduction::kNone);
  const auto first = loss.value_and_gradient<double>(a, b, nullptr, o);
  for (int i = 0; i < 3; ++i) {
    const auto again = loss.value_and_gradient<double>(a, b, nullptr, o);
    EXPECT_EQ(again.first.values, first.first.values);
    EXPECT_TRUE(again.second.grad_a == first.second.grad_a);
    EXPECT_TRUE(again.second.grad_b == first.second.grad_b);
  }
}

TEST(DistributedErrors, ScheduleDiffersOnOneRank) {
  if (world_size() < 2) GTEST_SKIP() << "needs 2 ranks";
  RowMatrix<double> a = RowMatrix<double>::Random(3, 4), b = RowMatrix<double>::Random(3, 4);
  expect_everywhere<ValueError>(
      [&](Communicator& c) {
        CallOptions o;
        o.communicator = &c;
        o.engine.schedule = world_rank() == bad_rank() ? Schedule::kOwnRows : Schedule::kBalanced;
        SimCLRLoss(0.1, Reduction::kSum).forward<double>(a, b, nullptr, o);
      },
      "schedule differs between ranks: rank 0 asks for 'balanced', rank " +
          std::to_string(bad_rank()) + " for 'own_rows'");
}

// A communicator that keeps the base class's reduce_scatter_v (all_gather_v and a host sum), as
// the C API's callback communicator does.
class GatherOnlyCommunicator final : public Communicator {
 public:
  explicit GatherOnlyCommunicator(Communicator& inner) : inner_(inner) {}
  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  std::string backend() const override { return "gather-only"; }
  void all_gather(const void* s, std::size_t bytes, void* r) override {
    inner_.all_gather(s, bytes, r);
  }
  void all_gather_v(const void* s, std::size_t bytes, void* r,
                    const std::vector<std::size_t>& rb) override {
    inner_.all_gather_v(s, bytes, r, rb);
  }
  void barrier() override { inner_.barrier(); }

 private:
  Communicator& inner_;
};

template <class T>
void check_reduce_scatter(Communicator& comm) {
  const int k = comm.size(), r = comm.rank();
  std::vector<std::size_t> counts(k);
  for (int i = 0; i < k; ++i) counts[i] = static_cast<std::size_t>(i % 2 == 0 ? 0 : i + 1);
  counts[static_cast<std::size_t>(k - 1)] += 2;
  const std::size_t total = std::accumulate(counts.begin(), counts.end(), std::size_t{0});
  std::vector<T> send(total);
  for (std::size_t j = 0; j < total; ++j) send[j] = static_cast<T>(r + 1) * static_cast<T>(j + 1);
  std::vector<T> recv(counts[static_cast<std::size_t>(r)] + 1, T(-1));
  comm.reduce_scatter_v(send.data(), recv.data(), counts,
                        sizeof(T) == 8 ? SumType::kFloat64 : SumType::kFloat32);
  const std::size_t offset = std::accumulate(counts.begin(), counts.begin() + r, std::size_t{0});
  const T ranks_sum = static_cast<T>(k * (k + 1) / 2);
  for (std::size_t j = 0; j < counts[static_cast<std::size_t>(r)]; ++j)
    EXPECT_EQ(recv[j], ranks_sum * static_cast<T>(offset + j + 1)) << comm.backend() << " " << j;
  EXPECT_EQ(recv.back(), T(-1)) << "wrote past its segment";
}

TEST(MpiCommunicator, ReduceScatterVWithEmptyRanks) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  check_reduce_scatter<float>(comm);
  check_reduce_scatter<double>(comm);
  MpiCommunicator timed(MPI_COMM_WORLD, MpiCommunicatorOptions{std::chrono::milliseconds(60000)});
  check_reduce_scatter<float>(timed);
  check_reduce_scatter<double>(timed);
  GatherOnlyCommunicator fallback(comm);
  check_reduce_scatter<float>(fallback);
  check_reduce_scatter<double>(fallback);
}

TEST(MpiCommunicator, DuplicatesTheCallersCommunicator) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  int result = MPI_UNEQUAL;
  MPI_Comm_compare(comm.comm(), MPI_COMM_WORLD, &result);
  EXPECT_EQ(result, MPI_CONGRUENT);  // same group, different context: no traffic mixes
  EXPECT_EQ(comm.rank(), world_rank());
  EXPECT_EQ(comm.size(), world_size());
  EXPECT_EQ(comm.backend(), "mpi");
}

TEST(MpiCommunicator, AllGatherVWithEmptyRanks) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int k = comm.size(), r = comm.rank();
  std::vector<std::size_t> counts(k);
  for (int i = 0; i < k; ++i) counts[i] = static_cast<std::size_t>(i % 2 == 0 ? 0 : i);
  std::vector<unsigned char> mine(counts[r], static_cast<unsigned char>(r));
  std::vector<unsigned char> all(std::accumulate(counts.begin(), counts.end(), std::size_t{0}));
  comm.all_gather_v(mine.data(), mine.size(), all.data(), counts);
  std::size_t at = 0;
  for (int i = 0; i < k; ++i)
    for (std::size_t j = 0; j < counts[i]; ++j) EXPECT_EQ(all[at++], i);
}

}  // namespace
}  // namespace simclr

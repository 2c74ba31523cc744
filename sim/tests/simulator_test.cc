// The simulator as the heart of the suite: many seeds of hostile delivery histories through the
// real library, on memory and SQLite, in lease and transactional mode; every run must pass the
// oracle, and the sweep as a whole must have exercised every fault and every outcome.
#include "idem/sim/simulator.h"

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "idem/sim/config.h"
#include "idem/sim/report.h"

namespace idem::sim {
namespace {

// Hostile rates: far more faults per message than a real broker produces.
SimConfig Hostile(uint64_t seed) {
  SimConfig c;
  c.seed = seed;
  c.messages = 40;
  c.keys = 4;
  c.consumers = 1 + static_cast<int>(seed % 4);
  c.dup_rate = 0.35;
  c.conflict_rate = 0.05;
  c.reorder_window = 6;
  c.crash_rate = 0.12;
  c.pause_rate = 0.04;
  c.store_error_rate = 0.06;
  c.outage_rate = 0.01;
  c.lost_reply_rate = 0.04;
  c.lease_ms = 100;
  return c;
}

// Describes a failing run for the test log: seed, config, the report and the shrunk trace.
std::string Explain(const SimConfig& config, const RunResult& result) {
  std::string out =
      absl::StrCat("seed ", config.seed, " failed\n  idem-sim ", DescribeConfig(config), "\n",
                   FormatReport(result.report, config, result.store_description));
  absl::StatusOr<ShrinkResult> shrunk = ShrinkFailure(config, 100, 10);
  if (shrunk.ok()) {
    absl::StrAppend(&out, "shrunk to ", shrunk->deliveries_after, " deliveries:\n");
    for (std::size_t i = 0; i < shrunk->replay.trace.size() && i < 80; ++i) {
      absl::StrAppend(&out, "  ", shrunk->replay.trace[i], "\n");
    }
  }
  return out;
}

struct Sweep {
  std::string name;
  std::string store;  // "" = temporary SQLite file
  Mode mode;
  int batch;
  int seeds;
};

// Names the sweep in test output instead of dumping its bytes.
void PrintTo(const Sweep& sweep, std::ostream* os) { *os << sweep.name; }

class SimulatorSweep : public ::testing::TestWithParam<Sweep> {};

TEST_P(SimulatorSweep, EverySeedPassesTheOracleAndTheSweepCoversEveryFault) {
  const Sweep& sweep = GetParam();
  Report total;
  int failures = 0;
  for (int seed = 1; seed <= sweep.seeds && failures < 3; ++seed) {
    SimConfig config = Hostile(static_cast<uint64_t>(seed));
    config.store_uri = sweep.store;
    config.mode = sweep.mode;
    config.batch = sweep.batch;
    absl::StatusOr<RunResult> result = RunSimulation(config);
    ASSERT_TRUE(result.ok()) << result.status();
    const Report& r = result->report;
    if (!r.passed()) {
      ++failures;
      ADD_FAILURE() << Explain(config, *result);
    }
    total.handler_runs += r.handler_runs;
    total.effects += r.effects;
    total.processed += r.processed;
    total.duplicates += r.duplicates;
    total.stale += r.stale;
    total.in_progress += r.in_progress;
    total.conflicts += r.conflicts;
    total.crashes += r.crashes;
    for (int f = 0; f < static_cast<int>(Fault::kCount); ++f) total.faults[f] += r.faults[f];
  }
  // An oracle that never saw a fault proves nothing: the sweep must have hit them all.
  std::vector<Fault> expected = {Fault::kCrashBeforeClaim, Fault::kCrashAfterClaim,
                                 Fault::kCrashAfterEffect, Fault::kCrashAfterComplete};
  if (sweep.mode == Mode::kLease) {
    expected.insert(expected.end(),
                    {Fault::kPauseBeyondLease, Fault::kStoreErrorOnClaim,
                     Fault::kStoreErrorOnComplete, Fault::kStoreOutage, Fault::kLostReplyOnClaim,
                     Fault::kLostReplyOnComplete, Fault::kLeaseExpired});
  } else {
    expected.push_back(Fault::kLostReplyOnComplete);
  }
  for (Fault f : expected) {
    EXPECT_GT(total.faults[static_cast<int>(f)], 0) << FaultName(f) << " never happened";
  }
  EXPECT_GT(total.processed, 0);
  EXPECT_GT(total.duplicates, 0);
  EXPECT_GT(total.stale, 0);
  // Only a live lease makes another consumer wait; transactions hold no lease.
  if (sweep.mode == Mode::kLease) {
    EXPECT_GT(total.in_progress, 0);
  }
  EXPECT_GT(total.conflicts, 0);
  // Faults after the effect make handlers run more often than effects commit.
  EXPECT_GT(total.handler_runs, total.effects);
}

INSTANTIATE_TEST_SUITE_P(
    Seeds, SimulatorSweep,
    ::testing::Values(Sweep{"MemoryLease", "memory:", Mode::kLease, 1, 2000},
                      Sweep{"MemoryLeaseBatch", "memory:", Mode::kLease, 4, 500},
                      Sweep{"SqliteLease", "", Mode::kLease, 1, 150},
                      Sweep{"SqliteLeaseBatch", "", Mode::kLease, 3, 100},
                      Sweep{"SqliteTransactional", "", Mode::kTransactional, 1, 200}),
    [](const ::testing::TestParamInfo<Sweep>& info) { return info.param.name; });

TEST(Simulator, ASeedReplaysTheSameInterleavingExactly) {
  SimConfig config = Hostile(77);
  config.store_uri = "memory:";
  config.consumers = 4;
  config.messages = 200;
  RunOptions options;
  options.record_trace = true;
  absl::StatusOr<RunResult> a = RunSimulation(config, options);
  absl::StatusOr<RunResult> b = RunSimulation(config, options);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(FormatResultLine(a->report, 77), FormatResultLine(b->report, 77));
  ASSERT_EQ(a->trace.size(), b->trace.size());
  EXPECT_EQ(absl::StrJoin(a->trace, "\n"), absl::StrJoin(b->trace, "\n"));
  EXPECT_GT(a->trace.size(), 200u);
}

TEST(Simulator, ALargerRunWithFourConsumersPasses) {
  SimConfig config;
  config.store_uri = "memory:";
  config.seed = 2024;
  config.messages = 20'000;
  config.keys = 100;
  config.consumers = 4;
  absl::StatusOr<RunResult> result = RunSimulation(config);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(result->report.passed()) << FormatReport(result->report, config, "memory:");
  EXPECT_EQ(result->report.messages, 20'000);
  // A redelivered copy is refused as a duplicate, or as stale when the gate sees it first.
  EXPECT_GT(result->report.duplicates + result->report.stale, 3'000);
}

TEST(Simulator, TransactionalModeRefusesAStoreOtherThanSqlite) {
  SimConfig config;
  config.store_uri = "memory:";
  config.mode = Mode::kTransactional;
  absl::StatusOr<RunResult> result = RunSimulation(config);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(result.status().message().find("SQLite"), std::string::npos);
}

TEST(Simulator, RejectsAnOutOfRangeConfig) {
  SimConfig config;
  config.dup_rate = 1.5;
  EXPECT_EQ(RunSimulation(config).status().code(), absl::StatusCode::kInvalidArgument);
  config = SimConfig();
  config.messages = 0;
  EXPECT_EQ(RunSimulation(config).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace idem::sim

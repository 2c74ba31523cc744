// The simulator at its default settings (idem-sim's defaults are SimConfig's, and they are the
// README demo's shape) must catch every deliberately broken store in at least 19 of 20 seeds, on
// memory and on SQLite; and an honest default run must really take the fencing path: a paused
// consumer's lease ends, another takes the claim over, and the late completion is refused.
// Message counts are smaller than the demo's 100000; every rate is the default.
#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "idem/sim/config.h"
#include "idem/sim/report.h"
#include "idem/sim/simulator.h"

namespace idem::sim {
namespace {

constexpr int kSeeds = 20;
constexpr int kMustCatch = 19;

TEST(Defaults, AreTheReadmeDemoShape) {
  // ./dev demo: --messages 100000 --consumers 4 --dup-rate 0.2 --reorder-window 16
  // --crash-rate 0.02, everything else default. The tests below rely on these being defaults.
  const SimConfig c;
  EXPECT_EQ(c.consumers, 4);
  EXPECT_EQ(c.dup_rate, 0.2);
  EXPECT_EQ(c.reorder_window, 16);
  EXPECT_EQ(c.crash_rate, 0.02);
  EXPECT_EQ(c.mode, Mode::kLease);
  EXPECT_EQ(c.batch, 1);
  EXPECT_EQ(c.sabotage, Sabotage::kNone);
}

struct Case {
  std::string name;
  Sabotage sabotage;
  std::string store;  // "" = temporary SQLite file
  int64_t messages;
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class DefaultsCatch : public ::testing::TestWithParam<Case> {};

TEST_P(DefaultsCatch, EverySabotageInAtLeast19Of20Seeds) {
  const Case& param = GetParam();
  std::vector<uint64_t> missed;
  for (uint64_t seed = 1; seed <= kSeeds; ++seed) {
    SimConfig config;
    config.store_uri = param.store;
    config.sabotage = param.sabotage;
    config.messages = param.messages;
    config.seed = seed;
    RunOptions options;
    options.keep_files_on_failure = false;  // these runs fail on purpose
    absl::StatusOr<RunResult> result = RunSimulation(config, options);
    ASSERT_TRUE(result.ok()) << "seed " << seed << ": " << result.status();
    if (result->report.passed()) missed.push_back(seed);
  }
  EXPECT_GE(kSeeds - static_cast<int>(missed.size()), kMustCatch)
      << SabotageName(param.sabotage) << " passed the oracle with seeds "
      << absl::StrJoin(missed, ", ");
}

// A broken fencing check shows only when a takeover meets a late completion, which a few
// thousand deliveries make likely but not certain; the default 10000 messages make it so. The
// other sabotages show on any traffic.
INSTANTIATE_TEST_SUITE_P(
    Seeds, DefaultsCatch,
    ::testing::Values(
        Case{"MemoryCompleteIgnoresToken", Sabotage::kCompleteIgnoresToken, "memory:", 10000},
        Case{"SqliteCompleteIgnoresToken", Sabotage::kCompleteIgnoresToken, "", 10000},
        Case{"MemoryClaimForgetsRecords", Sabotage::kClaimForgetsRecords, "memory:", 1000},
        Case{"SqliteClaimForgetsRecords", Sabotage::kClaimForgetsRecords, "", 1000},
        Case{"MemoryIgnoreVersions", Sabotage::kIgnoreVersions, "memory:", 1000},
        Case{"SqliteIgnoreVersions", Sabotage::kIgnoreVersions, "", 1000},
        Case{"MemoryFalseDuplicates", Sabotage::kFalseDuplicates, "memory:", 1000},
        Case{"SqliteFalseDuplicates", Sabotage::kFalseDuplicates, "", 1000}),
    [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

TEST(Defaults, AnHonestRunTakesTheFencingPath) {
  for (uint64_t seed = 1; seed <= 5; ++seed) {
    SimConfig config;
    config.store_uri = "memory:";
    config.seed = seed;
    absl::StatusOr<RunResult> result = RunSimulation(config);
    ASSERT_TRUE(result.ok()) << result.status();
    const Report& r = result->report;
    EXPECT_TRUE(r.passed()) << "seed " << seed << "\n"
                            << FormatReport(r, config, result->store_description);
    // Each observed lease expiry is a completion refused because another consumer had taken
    // the claim over: the path that complete_ignores_token breaks.
    EXPECT_GT(r.faults[static_cast<int>(Fault::kPauseBeyondLease)], 0) << "seed " << seed;
    EXPECT_GT(r.faults[static_cast<int>(Fault::kLeaseExpired)], 0)
        << "seed " << seed << ": no late completion was fenced\n"
        << FormatReport(r, config, result->store_description);
  }
}

}  // namespace
}  // namespace idem::sim

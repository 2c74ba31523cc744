// An oracle that cannot fail is not an oracle: each deliberately broken store must turn the
// verdict to FAIL with a count in the column of the invariant it breaks.
#include <cstdint>
#include <string>

#include "gtest/gtest.h"
#include "idem/sim/config.h"
#include "idem/sim/report.h"
#include "idem/sim/simulator.h"

namespace idem::sim {
namespace {

SimConfig Broken(Sabotage sabotage, std::string store = "memory:") {
  SimConfig c;
  c.store_uri = std::move(store);
  c.sabotage = sabotage;
  c.seed = 3;
  c.messages = 300;
  c.keys = 6;
  c.consumers = 3;
  c.dup_rate = 0.3;
  c.crash_rate = 0.05;
  c.pause_rate = 0.05;
  c.lease_ms = 100;
  return c;
}

Report RunAndReport(const SimConfig& config) {
  RunOptions options;
  options.keep_files_on_failure = false;  // these runs fail on purpose
  absl::StatusOr<RunResult> result = RunSimulation(config, options);
  EXPECT_TRUE(result.ok()) << result.status();
  if (!result.ok()) return Report{};
  return result->report;
}

TEST(Oracle, PassesTheRealStoreOnTheSameHistories) {
  EXPECT_TRUE(RunAndReport(Broken(Sabotage::kNone)).passed());
  EXPECT_TRUE(RunAndReport(Broken(Sabotage::kNone, "")).passed());
}

TEST(Oracle, CatchesACompletionThatIgnoresTheFencingToken) {
  SimConfig config = Broken(Sabotage::kCompleteIgnoresToken);
  // Many keys: a paused consumer's message is then rarely made stale by a newer version, so
  // its claim is taken over and its late completion is the one that must be fenced.
  config.keys = 300;
  const Report r = RunAndReport(config);
  EXPECT_FALSE(r.passed());
  EXPECT_GT(r.fencing_violations, 0);
  EXPECT_GT(r.unexplained, 0);
  EXPECT_GT(r.double_effects, 0);
  EXPECT_NE(FormatResultLine(r, 3).find("verdict=FAIL"), std::string::npos);
}

TEST(Oracle, CatchesAClaimThatForgetsCompletedRecords) {
  for (const std::string store : {"memory:", ""}) {
    const Report r = RunAndReport(Broken(Sabotage::kClaimForgetsRecords, store));
    EXPECT_FALSE(r.passed()) << store;
    EXPECT_GT(r.runs_after_complete, 0) << store;
    EXPECT_GT(r.unexplained, 0) << store;
    EXPECT_GT(r.double_effects, 0) << store;
  }
}

TEST(Oracle, CatchesAVersionGateThatIsNotApplied) {
  const Report r = RunAndReport(Broken(Sabotage::kIgnoreVersions));
  EXPECT_FALSE(r.passed());
  EXPECT_GT(r.stale_applied, 0);
}

TEST(Oracle, CatchesDuplicatesReportedForMessagesNeverProcessed) {
  const Report r = RunAndReport(Broken(Sabotage::kFalseDuplicates));
  EXPECT_FALSE(r.passed());
  EXPECT_GT(r.lost, 0);
  EXPECT_GT(r.wrong_outcomes, 0);
}

TEST(Shrinker, ReducesAFailingHistoryToAFewDeliveriesThatStillFail) {
  const SimConfig config = Broken(Sabotage::kClaimForgetsRecords);
  absl::StatusOr<ShrinkResult> shrunk = ShrinkFailure(config, 300, 30);
  ASSERT_TRUE(shrunk.ok()) << shrunk.status();
  EXPECT_GT(shrunk->deliveries_before, 300);
  // A forgotten record needs one delivery to complete it and one more to run again.
  EXPECT_LE(shrunk->deliveries_after, 3);
  EXPECT_FALSE(shrunk->replay.report.passed());
  EXPECT_FALSE(shrunk->replay.trace.empty());
}

TEST(Shrinker, RefusesAPassingRun) {
  EXPECT_EQ(ShrinkFailure(Broken(Sabotage::kNone), 10, 5).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace idem::sim

// The process profile: consumers are separate processes on one SQLite file, killed with SIGKILL
// at their crash points and restarted, with this process as the broker.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "gtest/gtest.h"
#include "idem/sim/config.h"
#include "idem/sim/report.h"
#include "idem/sim/simulator.h"

namespace idem::sim {
namespace {

std::string SimBinary() {
  const char* env = std::getenv("IDEM_SIM_BINARY");
  return env != nullptr && *env != '\0' ? env : IDEM_SIM_BINARY;
}

SimConfig Killing(uint64_t seed, Mode mode) {
  SimConfig c;
  c.seed = seed;
  c.mode = mode;
  c.messages = 150;
  c.keys = 5;
  c.processes = 3;
  c.dup_rate = 0.3;
  c.crash_rate = 0.12;
  c.pause_rate = 0.02;
  c.lease_ms = 150;
  return c;
}

void ExpectPassesWithKills(const SimConfig& config, const std::string& binary) {
  RunOptions options;
  options.self_binary = binary;
  absl::StatusOr<RunResult> result = RunSimulation(config, options);
  ASSERT_TRUE(result.ok()) << result.status();
  const Report& r = result->report;
  EXPECT_TRUE(r.passed()) << "seed " << config.seed << "\n"
                          << FormatReport(r, config, result->store_description);
  EXPECT_GT(r.crashes, 0) << "no consumer was killed";
  EXPECT_GT(r.duplicates, 0);
  EXPECT_GE(r.handler_runs, r.effects);
}

TEST(ProcessProfile, LeaseModeKeepsItsGuaranteesWhenConsumersAreSigkilled) {
  for (uint64_t seed : {1, 2, 3}) ExpectPassesWithKills(Killing(seed, Mode::kLease), SimBinary());
}

TEST(ProcessProfile, TransactionalModeCommitsEachEffectOnceWhenConsumersAreSigkilled) {
  for (uint64_t seed : {1, 2}) {
    ExpectPassesWithKills(Killing(seed, Mode::kTransactional), SimBinary());
  }
}

TEST(ProcessProfile, BatchesAndForkedConsumersWork) {
  SimConfig config = Killing(4, Mode::kLease);
  config.batch = 4;
  ExpectPassesWithKills(config, /*binary=*/"");
}

// The process profile is judged by the same oracle as the in-process one, fed from the
// consumers' event log: a broken store in the consumer processes must fail the run.
TEST(ProcessProfile, FailsWhenTheConsumersStoreIsSabotaged) {
  for (Sabotage sabotage : {Sabotage::kCompleteIgnoresToken, Sabotage::kClaimForgetsRecords,
                            Sabotage::kIgnoreVersions, Sabotage::kFalseDuplicates}) {
    SimConfig config = Killing(1, Mode::kLease);
    config.sabotage = sabotage;
    if (sabotage == Sabotage::kCompleteIgnoresToken) {
      // Broken fencing shows when a paused consumer's claim is taken over and it completes
      // late: pause often, with a lease long enough for the takeover to fall inside the pause on
      // a busy host, and few crashes to interrupt the takeover's redeliveries.
      config.messages = 300;
      config.pause_rate = 0.15;
      config.crash_rate = 0.02;
      config.lease_ms = 400;
    }
    RunOptions options;
    options.self_binary = SimBinary();
    options.keep_files_on_failure = false;  // these runs fail on purpose
    absl::StatusOr<RunResult> result = RunSimulation(config, options);
    ASSERT_TRUE(result.ok()) << SabotageName(sabotage) << ": " << result.status();
    const Report& r = result->report;
    EXPECT_FALSE(r.passed()) << SabotageName(sabotage) << " passed the oracle\n"
                             << FormatReport(r, config, result->store_description);
    switch (sabotage) {
      case Sabotage::kCompleteIgnoresToken:
        EXPECT_GT(r.fencing_violations, 0) << FormatReport(r, config, result->store_description);
        break;
      case Sabotage::kClaimForgetsRecords:
        EXPECT_GT(r.double_effects, 0);
        break;
      case Sabotage::kIgnoreVersions:
        EXPECT_GT(r.stale_applied, 0);
        break;
      case Sabotage::kFalseDuplicates:
        EXPECT_GT(r.wrong_outcomes, 0);
        break;
      case Sabotage::kNone:
        break;
    }
  }
}

TEST(ProcessProfile, RefusesAStoreTheProcessesCannotShare) {
  SimConfig config = Killing(1, Mode::kLease);
  config.store_uri = "memory:";
  EXPECT_EQ(RunSimulation(config).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace idem::sim

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

TEST(ProcessProfile, RefusesAStoreTheProcessesCannotShare) {
  SimConfig config = Killing(1, Mode::kLease);
  config.store_uri = "memory:";
  EXPECT_EQ(RunSimulation(config).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace idem::sim

// The delivery simulator (docs/design.md, "Simulator"): drives the real library (Processor,
// ProcessBatch, SqliteTransactional) through a generated at-least-once delivery history with
// faults, and lets an oracle check the invariants I1-I7 (docs/design.md, "Invariants") by counting.
//
// Two profiles:
//  - in process: consumers are threads that take turns at scheduling points (before each store
//    call, after each effect) in an order drawn from the seed, on a simulated clock. A run is
//    therefore reproducible from its config, and leases expire without waiting; thousands of
//    seeds run in seconds. Crashes are emulated: a crashed consumer's later store calls never
//    reach the store, as if its process had died.
//  - processes (config.processes > 0): each consumer is a separate process on a shared store (a
//    SQLite file, or a server such as Redis), on real time, SIGKILLed at its crash points and
//    restarted; the simulator is the broker that redelivers what was not acknowledged. Each
//    consumer writes what its store applied and what its handler did to a durable event log (and,
//    in transactional mode, effect rows in its transaction); the broker replays that log into
//    the same oracle as the in-process profile.
//
// Thread-safety: RunSimulation and ShrinkFailure may run concurrently with each other as long as
// they use different stores.
#ifndef IDEM_SIM_SIMULATOR_H_
#define IDEM_SIM_SIMULATOR_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "idem/sim/config.h"
#include "idem/sim/report.h"
#include "idem/sim/workload.h"

namespace idem::sim {

struct RunOptions {
  // Called from time to time with (acknowledged deliveries, initial deliveries).
  std::function<void(int64_t done, int64_t total)> progress;
  // Record a trace of every step (for the shrunk replay of a failure).
  bool record_trace = false;
  // Process profile: the idem-sim binary, exec'd with --child_fd for each consumer. Empty: the
  // consumers are forked without exec.
  std::string self_binary;
  // Directory for the default SQLite file and the process profile's logs. Empty: $TMPDIR or /tmp.
  std::string work_dir;
  // Keep the temporary directory (the store and logs) after the run; and after a failed run.
  bool keep_files = false;
  bool keep_files_on_failure = true;
};

struct RunResult {
  Report report;
  std::string store_description;   // the store URI actually used (passwords redacted)
  std::vector<std::string> trace;  // when RunOptions::record_trace
};

// Generates the workload from `config` and runs it. A non-OK status means the run could not be
// set up (bad config, store cannot be opened, transactional mode on a non-SQLite store); a
// broken invariant is a Report that did not pass.
[[nodiscard]] absl::StatusOr<RunResult> RunSimulation(const SimConfig& config,
                                                      const RunOptions& options = {});

// Runs a given workload (a subset of a generated one) in process. For the shrinker and tests.
[[nodiscard]] absl::StatusOr<RunResult> RunWorkload(const SimConfig& config,
                                                    const Workload& workload,
                                                    const RunOptions& options = {});

struct ShrinkResult {
  int64_t deliveries_before = 0;
  int64_t deliveries_after = 0;
  int runs = 0;       // simulations run while shrinking
  Workload workload;  // the smallest failing workload found
  RunResult replay;   // its run, with a trace
};

// Delta-debugs the initial deliveries of a failing in-process run down to a small set that still
// fails, on fresh stores of the same kind. Bounded in runs and time: returns the smallest found.
// FailedPrecondition when the full workload does not fail.
[[nodiscard]] absl::StatusOr<ShrinkResult> ShrinkFailure(const SimConfig& config,
                                                         int max_runs = 200,
                                                         double max_seconds = 30);

// The environment variable through which the process profile hands each consumer process the
// store URI (a command line is readable by every user of the host; the environment is not).
inline constexpr char kChildStoreEnv[] = "IDEM_SIM_CHILD_STORE";

// The consumer side of the process profile: reads deliveries from `fd`, processes them, answers
// on `fd`, and kills itself with SIGKILL at its crash points. Returns the process exit code.
int RunChildConsumer(const SimConfig& config, int fd, const std::string& run_dir,
                     const std::string& scope);

}  // namespace idem::sim

#endif  // IDEM_SIM_SIMULATOR_H_

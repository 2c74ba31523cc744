// Configuration of one simulator run, and the names of its modes, faults and sabotages.
//
// A run is fully described by a SimConfig: the same config (seed included) replays the same
// delivery history, the same fault schedule and, in the in-process profile, the same
// interleaving of consumers.
//
// Thread-safety: plain values.
#ifndef IDEM_SIM_CONFIG_H_
#define IDEM_SIM_CONFIG_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace idem::sim {

enum class Mode {
  kLease,          // Processor: claim -> handler -> complete, on any store
  kTransactional,  // SqliteTransactional: the effect is a row in the dedup row's transaction
};
std::string_view ModeName(Mode mode);
[[nodiscard]] absl::StatusOr<Mode> ParseMode(std::string_view name);

// Deliberately broken stores, wrapped around the real one, to prove that the oracle fails when an
// invariant is broken. Never used outside tests and demonstrations.
enum class Sabotage {
  kNone,
  kCompleteIgnoresToken,  // Complete succeeds for a stale token (breaks I4 fencing)
  kClaimForgetsRecords,   // Claim forgets COMPLETED records (breaks I3 duplicate suppression)
  kIgnoreVersions,        // the version gate is not applied (breaks I5)
  kFalseDuplicates,       // Claim reports unseen ids as duplicates (breaks I1 no loss)
};
std::string_view SabotageName(Sabotage sabotage);
[[nodiscard]] absl::StatusOr<Sabotage> ParseSabotage(std::string_view name);

// Faults the schedule injects into one delivery attempt, and faults the oracle observes.
enum class Fault : uint8_t {
  kNone,
  kCrashBeforeClaim,      // the consumer dies with the message in hand, before claiming
  kCrashAfterClaim,       // ... after the claim, before the handler's effect
  kCrashAfterEffect,      // ... after the effect, before the completion
  kCrashAfterComplete,    // ... after the completion, before the ack
  kPauseBeyondLease,      // the consumer freezes for longer than its lease after the effect
  kStoreErrorOnClaim,     // the claim call fails once (Unavailable), nothing applied
  kStoreErrorOnComplete,  // the completion call fails once (Unavailable), nothing applied
  kStoreOutage,           // every store call fails for a while (persistent failure)
  kLostReplyOnClaim,      // the store applied the claim, the reply was lost (DeadlineExceeded)
  kLostReplyOnComplete,   // the store applied the completion, the reply was lost
  kLeaseExpired,          // observed: a completion was fenced after the run's lease ran out
  kCount,
};
std::string_view FaultName(Fault fault);

// Which faults a profile can inject.
enum class Profile {
  kInProcessLease,          // all of them
  kInProcessTransactional,  // crashes, and a lost reply after the commit
  kProcesses,               // crashes (SIGKILL) and pauses
};

// The defaults are idem-sim's defaults (its flags take them from here), so a test that builds a
// SimConfig and changes only the message count runs the program's default workload.
struct SimConfig {
  // Where dedup records live: memory: (options such as ?capacity=N&evict=1), sqlite:///abs.db,
  // sqlite:rel.db (?synchronous=...), or any URI OpenStore knows (those run on real time).
  // Opened by idem::OpenStore, so it means what it means everywhere else. Empty: a fresh SQLite
  // file (synchronous=normal) in a temporary directory.
  std::string store_uri;
  Mode mode = Mode::kLease;
  uint64_t seed = 1;
  int64_t messages = 10000;
  int64_t keys = 100;
  // In-process consumers (threads). Ignored when processes > 0.
  int consumers = 4;
  // Consumers as separate processes, SIGKILLed at their crash points and restarted. 0: threads.
  int processes = 0;
  // Share of messages delivered more than once.
  double dup_rate = 0.2;
  // Share of messages that reuse an earlier message's id with another payload.
  double conflict_rate = 0.01;
  // Share of messages without a version stamp (never stale; see SimMessage::versioned).
  double unversioned_rate = 0.5;
  // Deliveries may overtake up to this many earlier ones (per-key reordering included).
  int64_t reorder_window = 16;
  // Per delivery attempt: crash at one of the four named points.
  double crash_rate = 0.02;
  // Per delivery attempt: freeze for longer than the lease after the effect. High enough that a
  // run of a few thousand messages sees several takeovers of an unversioned message whose
  // paused consumer then completes late: the fencing path (I4) is exercised by default.
  double pause_rate = 0.0015;
  // Per delivery attempt: one store call fails once.
  double store_error_rate = 0.01;
  // Per delivery attempt: the store becomes unavailable for a while.
  double outage_rate = 0.0002;
  // Per delivery attempt: the store applies a write and the reply is lost.
  double lost_reply_rate = 0.005;
  // Lease of a claim. Simulated milliseconds in process, real ones with processes.
  int64_t lease_ms = 1000;
  // Messages per ProcessBatch call (lease mode); 1: Process one at a time.
  int batch = 1;
  // Real milliseconds a consumer process waits for an in-flight duplicate to finish
  // (ProcessorOptions::wait_for_in_flight) instead of answering InProgress at once. 0: no wait.
  // Consumer processes only: the in-process scheduler runs one consumer at a time, so a waiting
  // consumer would stall the one it waits for.
  int64_t wait_ms = 0;
  // In-process lease mode: the consumer threads run at once on the store object (its calls
  // overlap, so group commit gathers them into shared writes) instead of taking turns under the
  // seeded scheduler; every store runs on real time then, and the interleaving, chosen by the
  // machine, does not replay from the seed. The simulator's own bookkeeping stays one consumer at
  // a time: only store calls overlap.
  bool concurrent = false;
  Sabotage sabotage = Sabotage::kNone;
};

// One line naming every setting, for reports and failure messages: the command line that
// replays the run. The store URI appears redacted (idem::RedactUri): a password never reaches a
// terminal or a log through it.
std::string DescribeConfig(const SimConfig& config);

// REQUIRES nothing; returns InvalidArgument naming the first setting out of range.
[[nodiscard]] absl::Status ValidateConfig(const SimConfig& config);

}  // namespace idem::sim

#endif  // IDEM_SIM_CONFIG_H_

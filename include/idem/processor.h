// Processor: wraps a message handler so that it runs once per message id (lease mode,
// docs/design.md, "Modes"), on any DedupStore.
//
//   claim (with lease) -> handler -> complete (fenced by the claim's token)
//                                \-> release, if the handler throws
//
// The outcome of each message is a value (Processed, Duplicate, InProgress, Stale, Conflict,
// DeadLettered); a store failure is a non-OK status and the handler did not run (I6). A handler's
// exception releases the claim and propagates unchanged. Lease mode gives at-least-once with
// duplicate suppression: a handler runs again for an id only after a recorded fault (a crash
// after its effect, an expired lease).
//
// Thread-safety: a Processor is immutable after Create and may be shared by threads; the store
// must outlive it. A HandlerContext belongs to one handler call.
#ifndef IDEM_PROCESSOR_H_
#define IDEM_PROCESSOR_H_

#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "idem/observer.h"
#include "idem/store.h"
#include "idem/types.h"

namespace idem {

// One delivery of a message, as the broker handed it over.
struct Message {
  std::string_view id;       // the broker's or producer's message id: opaque bytes
  std::string_view payload;  // fingerprinted (XXH3-128) to detect a reused id
  // Optional version stamp for the per-key version gate.
  std::optional<VersionStamp> version;
};

enum class Outcome {
  kProcessed,     // the handler ran and returned; the record is COMPLETED: ack
  kDuplicate,     // completed before (stored result handed back): ack
  kInProgress,    // another live claim holds it: do not ack, redeliver later
  kStale,         // version <= the key's applied version: ack and count
  kConflict,      // same id, different payload: dead-letter and alert
  kDeadLettered,  // attempts reached max_attempts: dead-letter
};
std::string_view OutcomeName(Outcome outcome);

struct ProcessResult {
  Outcome outcome = Outcome::kProcessed;
  // kProcessed: what the handler set; kDuplicate: what was stored by the first run.
  std::optional<std::string> result;
  // The attempt number of this run (kProcessed), or the attempts recorded so far.
  uint32_t attempt = 0;
  // kInProgress: when the other claim's lease ends, in the store's clock (milliseconds), and how
  // long from now that is by ProcessorOptions::store_clock (zero when it already ended or the
  // store did not say). A consumer loop redelivers the message no sooner than that (OutcomePolicy).
  int64_t lease_until_ms = 0;
  std::chrono::milliseconds retry_after{0};
};

// What a handler sees of its own claim.
class HandlerContext {
 public:
  std::string_view scope() const { return scope_; }
  std::string_view message_id() const { return message_id_; }
  // 1 for the first attempt; +1 for each release or takeover before this one.
  uint32_t attempt() const { return attempt_; }
  // The fencing token of this claim. Pass it (with the id) downstream as an idempotency key.
  uint64_t token() const { return token_; }

  // Renews the lease to now + `lease`. Aborted if the claim was lost to a takeover: the handler
  // should stop, its completion would be refused. In transactional mode it does nothing.
  [[nodiscard]] absl::Status ExtendLease(std::chrono::milliseconds lease);

  // A result to store with the record; duplicates get it back.
  void set_result(std::string result) { result_ = std::move(result); }
  const std::optional<std::string>& result() const { return result_; }

  // Made by the wrappers; `store` may be null where there is no lease (transactional mode).
  HandlerContext(DedupStore* store, std::string_view scope, std::string_view message_id,
                 uint32_t attempt, uint64_t token)
      : store_(store), scope_(scope), message_id_(message_id), attempt_(attempt), token_(token) {}

 private:
  DedupStore* store_;
  std::string_view scope_;
  std::string_view message_id_;
  uint32_t attempt_;
  uint64_t token_;
  std::optional<std::string> result_;
};

using Handler = absl::FunctionRef<void(HandlerContext&)>;

struct ProcessorOptions {
  std::chrono::milliseconds lease = kDefaultLease;
  // 0: unlimited. Otherwise the attempt after the max_attempts-th yields kDeadLettered.
  uint32_t max_attempts = 0;
  // Retention of COMPLETED records; 0: the store's default.
  std::chrono::milliseconds retention{0};
  // Fingerprint payloads (XXH3-128) and report a reused id with another payload as kConflict.
  bool fingerprint_payloads = true;
  // Measures how long a batch has been running: past half a lease, ProcessBatch renews each
  // remaining claim before running its handler. nullptr: SteadyClock(). Not owned.
  Clock* clock = nullptr;
  // The store's clock, to turn the lease end of another claim (kInProgress) into
  // ProcessResult::retry_after. nullptr: SteadyClock() for the "memory" backend (its default),
  // SystemClock() otherwise (SQLite's default; Redis counts in server time, assumed close to this
  // host's wall clock: a skew only shifts when the message is retried). Not owned.
  Clock* store_clock = nullptr;
  // Receives one ProcessEvent per message (idem/observer.h). nullptr: none, and no cost. Not
  // owned; must outlive the Processor.
  ProcessObserver* observer = nullptr;
  // 0 (default): a delivery that finds a live claim returns kInProgress at once. Otherwise
  // Process waits up to this long for that claim to end (DedupStore::WaitForCompletion, which
  // blocks or polls with backoff, never spins), then claims once more: kDuplicate with the stored
  // result if the first consumer completed, the handler runs if it released or lost its lease,
  // kInProgress if it still holds the claim. ProcessBatch never waits.
  std::chrono::milliseconds wait_for_in_flight{0};
};

class Processor {
 public:
  // Returns InvalidArgument for a bad scope or options.
  [[nodiscard]] static absl::StatusOr<Processor> Create(DedupStore& store, std::string scope,
                                                        ProcessorOptions options = {});

  // Processes one delivery. Returns the outcome; a non-OK status when the store failed (the
  // handler did not run if the claim failed), or Aborted when the handler ran but its claim had
  // been taken over (the completion changed nothing). A handler exception releases the claim
  // and propagates unchanged.
  [[nodiscard]] absl::StatusOr<ProcessResult> Process(const Message& message,
                                                      Handler handler) const;

  // Processes a batch: one batch claim, the handlers in order, one batch completion. One entry per
  // message. Once half a lease has passed since the claim, each remaining claim is renewed
  // (Extend) before its handler runs; a claim lost meanwhile gets Aborted and its handler does not
  // run. If a handler throws, the messages already handled are completed, the rest are released,
  // and the exception propagates.
  [[nodiscard]] std::vector<absl::StatusOr<ProcessResult>> ProcessBatch(
      std::span<const Message> messages, Handler handler) const;

  std::string_view scope() const { return scope_; }
  const ProcessorOptions& options() const { return options_; }

 private:
  Processor(DedupStore& store, std::string scope, ProcessorOptions options)
      : store_(&store), scope_(std::move(scope)), options_(options) {}

  // Process, with kObserved: timing each step and reporting to options_.observer. Two
  // instantiations, so that the path without an observer reads no clock and builds no event.
  template <bool kObserved>
  absl::StatusOr<ProcessResult> ProcessImpl(const Message& message, Handler handler) const;

  ClaimRequest MakeClaim(const Message& message) const;
  // OutcomeOfClaim, with retry_after filled in from the store's clock.
  ProcessResult NotAcquired(const ClaimResult& claim) const;
  // ProcessBatch's last step: messages that repeat an id whose record the batch completed
  // (`completed_here`) are asked again (their first answer was the batch's own open claim). Ids
  // whose claim the batch released are not: claiming them again would count an attempt that
  // never ran. `events` is empty without an observer.
  void AskRepeatsAgain(std::span<const Message> messages, std::span<const ClaimRequest> requests,
                       const absl::flat_hash_set<std::string_view>& completed_here,
                       std::vector<absl::StatusOr<ProcessResult>>& out,
                       std::vector<ProcessEvent>& events) const;

  DedupStore* store_;
  std::string scope_;
  ProcessorOptions options_;
};

// Maps a claim that was not acquired to the consumer's outcome (lease_until_ms included;
// retry_after stays zero: only a Processor knows the store's clock).
// REQUIRES: claim.status != ClaimStatus::kAcquired.
ProcessResult OutcomeOfClaim(const ClaimResult& claim);

}  // namespace idem

#endif  // IDEM_PROCESSOR_H_

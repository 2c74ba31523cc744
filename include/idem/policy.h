// OutcomePolicy: what a consumer loop does with each result of Processor::Process, for any broker.
//
// Every result of a delivery maps to one Action:
//
//   result                                   default action            why
//   kProcessed, kDuplicate, kStale           kAck                      the message has its outcome
//   kInProgress                              kRedeliver after the      another consumer holds a
//                                            other claim's lease ends  live claim; it may still fail
//   kConflict                                kDeadLetter "conflict"    same id, another payload
//   kDeadLettered                            kDeadLetter "max_attempts"
//   handler threw (the claim was released)   kRedeliver with backoff   poison ends as kDeadLettered
//                                                                      once max_attempts is reached
//   status InvalidArgument (bad id, key...)  kDeadLetter "invalid"     never retried: nothing ran
//   status Aborted (claim taken over)        kRedeliver after a delay  the new owner completes it;
//                                                                      the redelivery is kDuplicate
//   any other status (store down, timeout)   kRetry with backoff       the handler did not run
//
// How an adapter carries each action out on its broker:
//
//   action       Redis Streams              Kafka                       RabbitMQ (ack/nack broker)
//   kAck         XACK                       store offset; commit when   basic.ack
//                                           every earlier one is final
//   kRedeliver   leave pending, XCLAIM      pause the partition, hold   basic.nack requeue=true
//   kRetry       again after `delay`        its messages, again after   after `delay` (or a TTL'd
//                                           `delay`, in offset order
//                                                                       retry queue)
//   kDeadLetter  XADD to the dead-letter    produce to the dead-letter  publish to the dead-letter
//                stream with the reason,    topic with reason headers,  exchange with the reason,
//                XACK (one script)          then store the offset       then basic.ack
//
// kRedeliver and kRetry differ only in what they count: a redelivery waits for something that
// happens elsewhere (a lease, a release), a retry waits out a failure of idem's own store.
//
// Thread-safety: an OutcomePolicy is immutable after construction and may be shared by threads,
// provided the override (if any) is thread-safe. Backoff() is thread-safe.
#ifndef IDEM_POLICY_H_
#define IDEM_POLICY_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "idem/processor.h"

namespace idem {

enum class Action {
  kAck,         // acknowledge: the message has its final outcome
  kRedeliver,   // do not acknowledge; deliver again after `delay`
  kRetry,       // the store call failed and nothing ran: try the message again after `delay`
  kDeadLetter,  // move it to the dead-letter destination with `reason`, then acknowledge
};
std::string_view ActionName(Action action);

struct Decision {
  Action action = Action::kAck;
  // kRedeliver, kRetry: how long to wait before the next delivery.
  std::chrono::milliseconds delay{0};
  // kDeadLetter: why ("conflict", "max_attempts", "invalid: ..."); also set for the others, for
  // logs ("processed", "in_progress", "store: UNAVAILABLE: ...", "handler: ...").
  std::string reason;
  // The outcome the decision was made from, when there was one.
  std::optional<Outcome> outcome;
};

// Capped exponential backoff with full jitter on the top `jitter` fraction:
//   base = min(max, initial * multiplier^(attempt-1)); delay in [base * (1 - jitter), base].
struct BackoffOptions {
  std::chrono::milliseconds initial{100};
  std::chrono::milliseconds max{10'000};
  double multiplier = 2.0;
  double jitter = 0.2;  // 0: no jitter; 1: anywhere in [0, base]
};

// Returns the delay before retry number `attempt` (1 for the first retry; 0 is treated as 1).
// `random` in [0, 1) picks the point in the jitter range; pass nullopt to draw one.
std::chrono::milliseconds Backoff(const BackoffOptions& options, uint32_t attempt,
                                  std::optional<double> random = std::nullopt);

// Returns InvalidArgument unless 0 < initial <= max, multiplier >= 1 and 0 <= jitter <= 1.
[[nodiscard]] absl::Status ValidateBackoff(const BackoffOptions& options);

// What the loop knows of one delivery when it asks for a decision.
struct Delivery {
  // The result of Process (or one entry of ProcessBatch). Ignored when `handler_error` is set.
  const absl::StatusOr<ProcessResult>* result = nullptr;
  // Set when the handler threw (the Processor released the claim): the exception's what().
  std::optional<std::string_view> handler_error;
  // How many times this loop has tried this message so far, this try included (1 for the first).
  // Drives the backoff of kRetry and of a throwing handler.
  uint32_t tries = 1;
};

struct OutcomePolicyOptions {
  // Store errors (kRetry) and throwing handlers (kRedeliver) back off with this.
  BackoffOptions backoff;
  // kInProgress waits until the other claim's lease ends (ProcessResult::retry_after), clamped
  // to [in_progress_min_delay, in_progress_max_delay]. The minimum also covers a lease end that
  // the store did not report.
  std::chrono::milliseconds in_progress_min_delay{100};
  std::chrono::milliseconds in_progress_max_delay{30'000};
  // Aborted (the claim was taken over while the handler ran) waits this long: the new owner
  // completes the message and the redelivery is then a kDuplicate.
  std::chrono::milliseconds aborted_delay{1'000};
  // kStale is acked by default (the newer version was applied); true dead-letters it instead.
  bool dead_letter_stale = false;
  // A user override: gets the delivery and the default decision, returns the decision to use.
  // It must not return kAck for a store error: the handler did not run (nothing would record
  // the message as done). Decide() turns such an answer back into kRetry.
  std::function<Decision(const Delivery&, Decision)> override_decision;
};

class OutcomePolicy {
 public:
  // REQUIRES: ValidateOptions(options) is OK (Create checks it).
  explicit OutcomePolicy(OutcomePolicyOptions options = {}) : options_(std::move(options)) {}

  // Returns InvalidArgument for bad options (backoff, negative or inverted delays).
  [[nodiscard]] static absl::StatusOr<OutcomePolicy> Create(OutcomePolicyOptions options = {});
  [[nodiscard]] static absl::Status ValidateOptions(const OutcomePolicyOptions& options);

  // The action for one delivery. REQUIRES: delivery.result != nullptr or handler_error is set.
  Decision Decide(const Delivery& delivery) const;

  // Shorthands for the common cases.
  Decision Decide(const absl::StatusOr<ProcessResult>& result, uint32_t tries = 1) const {
    return Decide(Delivery{.result = &result, .tries = tries});
  }
  Decision DecideHandlerError(std::string_view what, uint32_t tries) const {
    return Decide(Delivery{.handler_error = what, .tries = tries});
  }

  const OutcomePolicyOptions& options() const { return options_; }

 private:
  Decision Default(const Delivery& delivery) const;

  OutcomePolicyOptions options_;
};

}  // namespace idem

#endif  // IDEM_POLICY_H_

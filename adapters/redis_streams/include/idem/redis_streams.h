// RedisStreamsConsumer: one consumer of a Redis Streams consumer group, with idem between the
// stream and the handler, and OutcomePolicy (idem/policy.h) deciding what happens to each entry.
//
//   XREADGROUP GROUP g c COUNT n BLOCK b STREAMS s >    new entries
//   XAUTOCLAIM s g c <reclaim_idle> <cursor>            entries of dead consumers (idle > lease)
//   XCLAIM s g c 0 <ids>                                this consumer's retries that are due
//   -> Processor (or any ProcessFn) -> OutcomePolicy -> one action per entry:
//   kAck         XACK                                             (one script: the XACK decides)
//   kDeadLetter  XACK, and only if it acked: XADD to the dead-letter stream with the reason
//   kRedeliver,  the entry stays pending in this consumer's PEL and is XCLAIMed again when its
//   kRetry       delay is over; if this consumer dies, another XAUTOCLAIMs it after reclaim_idle
//
// Retries go through the pending entries list, not a delay sorted set: the PEL already survives
// a consumer crash, counts deliveries and hands entries of dead consumers over (XAUTOCLAIM), so a
// retry needs no second structure that would have to stay consistent with it (an entry moved to a
// zset and acked, or left in both, when a consumer dies between the two writes). The delay lives
// only in this consumer's memory; losing it with the process only means the entry waits
// reclaim_idle instead. reclaim_idle defaults to the lease plus a second, so an entry whose
// consumer died mid-handler is reclaimed after its claim's lease has ended: the new claim takes
// it over (kProcessed) instead of finding it kInProgress.
//
// Each acknowledgement is one Lua script: XACK, then (only when XACK removed the entry from the
// PEL) the XADD to the dead-letter stream and, when `outcome_stream` is set, an XADD recording the
// entry's final outcome. Two consumers that both hold an entry (a reclaim raced a slow consumer)
// therefore record one final outcome and at most one dead letter.
//
// Message ids: the entry's `id_field` (the producer's id: a producer that XADDs twice gets a
// kDuplicate), or the entry ID when id_field is empty (dedups redeliveries only). An entry without
// the field is dead-lettered with reason "missing_id" and never processed without dedup.
//
// Thread-safety: a consumer is used by one thread at a time (it owns one hiredis connection).
// Run() may be stopped from another thread through its `stop` flag. Several consumers (threads
// or processes) with distinct `consumer` names form the group.
//
// Errors: InvalidArgument (bad options), Unavailable (cannot connect, connection lost),
// DeadlineExceeded (I/O timeout), Internal (unexpected reply). PollOnce leaves every entry it
// could not acknowledge pending: nothing is lost by an error.
#ifndef IDEM_REDIS_STREAMS_H_
#define IDEM_REDIS_STREAMS_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "idem/policy.h"
#include "idem/processor.h"

namespace idem {

// One stream entry as read from Redis.
struct StreamEntry {
  std::string entry_id;  // "1700000000000-0"
  std::vector<std::pair<std::string, std::string>> fields;
  bool reclaimed = false;  // taken over from another consumer (XAUTOCLAIM)

  // The first value of field `name`, or nullopt.
  std::optional<std::string_view> Field(std::string_view name) const;
};

struct RedisStreamsOptions {
  std::string host = "127.0.0.1";
  int port = 6379;
  std::string password;  // AUTH when non-empty; never logged
  std::chrono::milliseconds connect_timeout{2'000};
  // Added to `block` for the read timeout of a blocking XREADGROUP.
  std::chrono::milliseconds io_timeout{5'000};

  std::string stream;
  std::string group;
  std::string consumer;  // unique within the group
  // Where dead letters go; empty: "<stream>:dead-letter".
  std::string dead_letter_stream;
  // When set, one entry per final outcome (entry, outcome, reason, consumer) is XADDed here
  // in the same script as the XACK: an audit trail of what each entry became.
  std::string outcome_stream;
  bool create_group = true;  // XGROUP CREATE <stream> <group> 0 MKSTREAM if it does not exist

  std::string id_field = "id";  // empty: the entry ID is the message id
  // Fingerprinted payload: this field; empty: every field but the id field, length-prefixed.
  std::string payload_field;
  // Both set: the version gate reads the key and a decimal uint64 version from these fields.
  std::string version_key_field;
  std::string version_field;

  int batch = 32;                             // COUNT of XREADGROUP and XAUTOCLAIM
  std::chrono::milliseconds block{500};       // BLOCK of XREADGROUP
  std::chrono::milliseconds reclaim_idle{0};  // 0: the lease + 1 s
  OutcomePolicyOptions policy;
};

// What one consumer did since it was created.
struct RedisStreamsStats {
  uint64_t deliveries = 0;  // entries handed to the processor (reclaims and retries included)
  uint64_t reclaimed = 0;   // entries taken over with XAUTOCLAIM
  uint64_t processed = 0;
  uint64_t duplicates = 0;
  uint64_t stale = 0;
  uint64_t in_progress = 0;
  uint64_t conflicts = 0;
  uint64_t dead_lettered = 0;  // dead letters this consumer wrote (any reason)
  uint64_t handler_errors = 0;
  uint64_t store_errors = 0;
  uint64_t acked = 0;        // XACKs that removed an entry (dead letters included)
  uint64_t ack_raced = 0;    // XACKs that found the entry already acked by another consumer
};

using StreamHandler = std::function<void(const StreamEntry&, HandlerContext&)>;
// Any way of processing one message exactly like Processor::Process does (e.g. a
// SqliteTransactional). May throw: the exception counts as a handler error.
using StreamProcessFn =
    std::function<absl::StatusOr<ProcessResult>(const Message&, const StreamEntry&)>;

class RedisStreamsConsumer {
 public:
  // Lease mode: `processor` (not owned, must outlive the consumer) runs `handler` once per id.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<RedisStreamsConsumer>> Create(
      RedisStreamsOptions options, const Processor& processor, StreamHandler handler);
  // Any processing function; `lease` sets the default reclaim_idle.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<RedisStreamsConsumer>> Create(
      RedisStreamsOptions options, std::chrono::milliseconds lease, StreamProcessFn process);
  ~RedisStreamsConsumer();

  // One round: XAUTOCLAIM (every reclaim_idle / 2), the retries that are due, then one
  // XREADGROUP, blocking up to `block` (less when a retry falls due sooner). Returns how many
  // entries were delivered. On an error the connection is dropped and re-made by the next call.
  [[nodiscard]] absl::StatusOr<int> PollOnce();

  // PollOnce until `stop` is true; connection errors back off (OutcomePolicy's backoff) and retry.
  // Returns OK when stopped, or the first InvalidArgument/PermissionDenied/Unauthenticated error.
  [[nodiscard]] absl::Status Run(const std::atomic<bool>& stop);

  const RedisStreamsStats& stats() const { return stats_; }
  // Entries this consumer holds for a retry (pending, with a delay).
  std::size_t pending_retries() const;
  const RedisStreamsOptions& options() const { return options_; }

  class Impl;

 private:
  RedisStreamsConsumer(RedisStreamsOptions options, std::unique_ptr<Impl> impl);
  // Processes entries and carries out their decisions (pipelined scripts).
  [[nodiscard]] absl::Status Handle(std::vector<StreamEntry>& entries);

  RedisStreamsOptions options_;
  RedisStreamsStats stats_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace idem

#endif  // IDEM_REDIS_STREAMS_H_

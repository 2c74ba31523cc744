// KafkaConsumer: a librdkafka consumer-group loop with idem between the topic and the handler and
// OutcomePolicy (idem/policy.h) deciding what happens to each message.
//
//   poll a batch -> Processor::ProcessBatch -> per partition, in offset order:
//   kAck         rd_kafka_offsets_store(offset + 1); librdkafka auto-commits stored offsets
//   kDeadLetter  produce the message to the dead-letter topic with headers idem-reason,
//                idem-source-topic, idem-source-partition, idem-source-offset; wait for the
//                broker's acknowledgement; then store the offset
//   kRedeliver,  pause the partition and hold this message and the later fetched ones of it in
//   kRetry       memory; after the delay they go through again, in offset order (no seek)
//
// So an offset is never stored, hence never committed, past a message without a final outcome
// (enable.auto.offset.store=false; the commit is librdkafka's auto-commit of stored offsets,
// also on revoke and close). A consumer killed before a commit leaves its messages to whoever
// gets the partition: they are delivered again and are kDuplicate in the store.
//
// Order: a partition that waits is paused, and messages of it that were already fetched are
// held behind the waiting one, so no later message of that partition starts before the earlier one has an outcome
// in a later poll. Inside one poll's batch ProcessBatch has already run the later messages of a
// partition whose earlier message turned out kInProgress or failed: they are completed, not
// stored, and come again as kDuplicate (their effect ran before the earlier message's).
//
// A copy of a message that this same batch claimed and completed (a producer retry that wrote
// the record twice, back to back) gets kInProgress from ProcessBatch, since the first copy's claim
// is open until the batch completes; it is retried at once (and comes back kDuplicate) rather
// than after the lease.
//
// Message ids: the header `id_header` (the producer's id, so a producer retry that wrote the
// record twice is a kDuplicate); without it "<topic>/<partition>/<offset>" (which only dedups
// redeliveries). The version gate key is the message key; its version the decimal header
// `version_header`, when that header is present.
//
// A handler exception: ProcessBatch completes what was handled and releases the rest (a release
// counts an attempt); every partition of the batch is held from its first message of the
// batch and retried after a backoff, and the next `batch` messages go through ProcessBatch one at
// a time, so the thrower alone uses up its attempts and is dead-lettered at max_attempts. The
// messages released by that first exception carry one extra attempt: keep max_attempts >= 2.
//
// Thread-safety: one thread at a time (librdkafka's consumer handle is thread-safe, but the
// pause/seek bookkeeping is not). Run() stops when its `stop` flag is set.
//
// Errors: InvalidArgument (bad options or configuration), Internal (librdkafka failed to create
// a handle), Unavailable (a dead letter could not be produced: the message is retried).
#ifndef IDEM_KAFKA_H_
#define IDEM_KAFKA_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "idem/policy.h"
#include "idem/processor.h"

namespace idem {

// One Kafka record as the handler sees it (views into librdkafka's message, valid for the call).
struct KafkaRecord {
  std::string_view topic;
  int32_t partition = 0;
  int64_t offset = 0;
  std::string_view key;
  std::string_view value;
  // The last value of header `name`, or nullopt.
  std::function<std::optional<std::string_view>(std::string_view name)> header;
};

struct KafkaConsumerOptions {
  std::string brokers;  // bootstrap.servers
  std::string group_id;
  std::vector<std::string> topics;
  std::string dead_letter_topic;  // empty: "<first topic>.dead-letter"
  std::string id_header = "id";
  std::string version_header = "version";  // empty: no version gate
  int batch = 64;                          // messages per ProcessBatch
  std::chrono::milliseconds poll_timeout{100};
  // Extra librdkafka properties for the consumer (session.timeout.ms, ...) and the producer.
  std::map<std::string, std::string> consumer_config;
  std::map<std::string, std::string> producer_config;
  OutcomePolicyOptions policy;
};

struct KafkaConsumerStats {
  uint64_t deliveries = 0;  // messages handed to ProcessBatch
  uint64_t processed = 0;
  uint64_t duplicates = 0;
  uint64_t stale = 0;
  uint64_t in_progress = 0;
  uint64_t conflicts = 0;
  uint64_t dead_lettered = 0;
  uint64_t stored = 0;         // offsets stored (final outcomes)
  uint64_t paused = 0;         // times a partition was paused and sought back
  uint64_t handler_errors = 0;
  uint64_t store_errors = 0;
};

using KafkaHandler = std::function<void(const KafkaRecord&, HandlerContext&)>;

class KafkaConsumer {
 public:
  // `processor` is not owned and must outlive the consumer.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<KafkaConsumer>> Create(
      KafkaConsumerOptions options, const Processor& processor, KafkaHandler handler);
  ~KafkaConsumer();  // closes the consumer (commits stored offsets, leaves the group)

  // Resumes partitions whose delay is over, polls one batch and handles it. Returns how many
  // messages were handed to ProcessBatch.
  [[nodiscard]] absl::StatusOr<int> PollOnce();
  // PollOnce until `stop`; returns the first InvalidArgument or FailedPrecondition (a fatal
  // consumer error, an authorization refused), otherwise OK when stopped.
  [[nodiscard]] absl::Status Run(const std::atomic<bool>& stop);
  // Commits the stored offsets now (synchronously).
  [[nodiscard]] absl::Status Commit();

  const KafkaConsumerStats& stats() const { return stats_; }

  class Impl;

 private:
  explicit KafkaConsumer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  KafkaConsumerStats stats_;
};

}  // namespace idem

#endif  // IDEM_KAFKA_H_

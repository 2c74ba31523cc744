// RabbitMqConsumer: one consumer of a RabbitMQ queue, with idem between the queue and the handler,
// and OutcomePolicy (idem/policy.h) deciding what happens to each delivery.
//
//   basic.qos prefetch_count=N; basic.consume <queue> (manual acknowledgements)
//   -> Processor (or any ProcessFn) -> OutcomePolicy -> one action per delivery:
//   kAck         basic.ack
//   kDeadLetter  publish to the dead-letter exchange (headers x-idem-reason, x-idem-source-*),
//                wait for the publisher confirm, then basic.ack
//   kRedeliver,  RetryMode::kRetryQueue (default): publish a copy to the retry tier queue
//   kRetry       "<queue>.retry.<ms>ms" whose queue TTL is the smallest tier >= the delay and
//                whose dead-letter target is <queue>; wait for the confirm, then basic.ack. The
//                copy comes back to <queue> when its TTL ends, with x-idem-tries + 1.
//                RetryMode::kNackRequeue: hold the delivery unacked for the delay, then
//                basic.nack requeue=true (no extra queues; the delay is lost with the process)
//
// Why tiered retry queues with a queue-level TTL rather than one queue with per-message TTLs:
// RabbitMQ expires per-message TTLs only at the head of a queue, so a 10 s retry ahead of a 100 ms
// one would hold it back for 10 s. Within a tier every message has the same TTL, so each queue is
// FIFO in expiry order. The delay lives in the broker (it survives a crash of this consumer and
// frees the prefetch slot at once), and the broker adds the usual x-death header. A crash between
// the confirmed copy and the ack leaves two deliveries of one id: idem makes the second one a
// kDuplicate (or kInProgress), which is exactly what it is for.
//
// Publishing (dead letters, retry copies) uses a second connection with publisher confirms
// (confirm.select): RabbitMQ advises separate connections for publishing and consuming, and a
// connection that only publishes can wait for its confirm without interleaving deliveries.
// Dead letters and retry copies are mandatory publishes: an unroutable one (basic.return) is an
// error and the delivery is not acked. A dead letter is at-least-once: a crash after its confirm
// and before the ack dead-letters the redelivery again (x-idem-source-* say which delivery).
//
// Message ids: the AMQP message-id property by default, or the header `id_header`, or `id_fn`. A
// delivery without one is dead-lettered with reason "missing_id" and never processed without
// dedup. A producer that publishes the same message twice therefore gets a kDuplicate.
//
// Reconnects: any connection or channel error (a broker restart, a channel closed by the broker)
// drops both connections; Run() reconnects with the policy's backoff and declares the topology
// again. Unacked deliveries are redelivered by the broker (redelivered flag set) and become
// kDuplicate, or a takeover once the lease ends, never a second effect in transactional mode.
//
// Thread-safety: a consumer is used by one thread at a time (it owns its two connections). Run()
// may be stopped from another thread through its `stop` flag. Several consumers (threads or
// processes) on one queue share its deliveries.
//
// Errors: InvalidArgument (bad options), Unavailable (cannot connect, connection or channel lost,
// publish not confirmed), DeadlineExceeded (confirm timeout), PermissionDenied (ACCESS_REFUSED,
// bad login), NotFound (queue missing with declare_topology = false), FailedPrecondition (a queue
// exists with other arguments). PollOnce acks nothing it could not carry out: nothing is lost by
// an error, the broker redelivers.
#ifndef IDEM_RABBITMQ_H_
#define IDEM_RABBITMQ_H_

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

// One delivery as read from the broker. Views stay valid while the handler runs.
struct AmqpDelivery {
  uint64_t delivery_tag = 0;
  bool redelivered = false;  // the broker delivered it before (to this or another consumer)
  std::string exchange;
  std::string routing_key;
  std::string body;
  std::optional<std::string> message_id;      // the message-id property
  std::optional<std::string> correlation_id;  // the correlation-id property
  // Headers with a string, byte-array, integer or boolean value (integers and booleans as decimal
  // text); other kinds are skipped here but kept when the message is republished.
  std::vector<std::pair<std::string, std::string>> headers;
  // How many times this message was tried, this try included: 1 + the x-idem-tries header the
  // adapter sets on retry copies (kNackRequeue: 2 when redelivered).
  uint32_t tries = 1;

  // The value of header `name`, or nullopt.
  std::optional<std::string_view> Header(std::string_view name) const;
};

enum class RetryMode {
  kRetryQueue,   // delayed retry through TTL'd tier queues dead-lettering back (default)
  kNackRequeue,  // hold unacked for the delay, then basic.nack requeue=true
};

using AmqpIdFn = std::function<std::optional<std::string>(const AmqpDelivery&)>;

struct RabbitMqOptions {
  std::string host = "127.0.0.1";
  int port = 5672;
  std::string vhost = "/";
  std::string user = "guest";
  std::string password = "guest";  // never logged
  std::chrono::milliseconds connect_timeout{2'000};  // also bounds every synchronous RPC
  // AMQP heartbeat of the consuming connection; 0 disables it. librabbitmq sends heartbeats only
  // inside its own calls, so a handler longer than two intervals gets the connection closed by
  // the broker (its deliveries are then redelivered): keep it above the longest handler.
  std::chrono::seconds heartbeat{60};

  std::string queue;
  // Declare the durable queue, the dead-letter exchange and queue, and the retry tier queues
  // (all durable). false: they must exist (the adapter still publishes to them).
  bool declare_topology = true;
  // Extra arguments are not supported: a queue that exists with other arguments fails the
  // declaration with FailedPrecondition.
  std::string dead_letter_exchange;  // empty: "<queue>.dead-letter" (direct, durable)
  std::string dead_letter_queue;     // empty: "<queue>.dead-letter", bound with key <queue>
  uint16_t prefetch = 32;            // basic.qos prefetch_count; 1..65535

  // The message id: id_fn when set, else the header id_header when non-empty, else the
  // message-id property.
  std::string id_header;
  AmqpIdFn id_fn;
  // Both set: the version gate reads the key and a decimal uint64 version from these headers.
  std::string version_key_header;
  std::string version_header;

  RetryMode retry_mode = RetryMode::kRetryQueue;
  // Retry tiers (kRetryQueue), ascending; a delay goes to the smallest tier >= it (the largest
  // when none is). Empty: 50 ms doubling to 51.2 s (11 queues).
  std::vector<std::chrono::milliseconds> retry_tiers;

  std::chrono::milliseconds poll_timeout{200};      // longest wait for a delivery in PollOnce
  std::chrono::milliseconds confirm_timeout{5'000};  // longest wait for a publisher confirm
  OutcomePolicyOptions policy;
  // Called after each delivery's action was carried out (the ack sent): for metrics and tests.
  std::function<void(const AmqpDelivery&, const Decision&)> on_decision;
};

// What one consumer did since it was created.
struct RabbitMqStats {
  uint64_t deliveries = 0;   // deliveries handed to the processor (redeliveries included)
  uint64_t redelivered = 0;  // of those, with the broker's redelivered flag
  uint64_t processed = 0;
  uint64_t duplicates = 0;
  uint64_t stale = 0;
  uint64_t in_progress = 0;
  uint64_t conflicts = 0;
  uint64_t missing_ids = 0;
  uint64_t dead_lettered = 0;  // dead letters confirmed by the broker (any reason)
  uint64_t handler_errors = 0;
  uint64_t store_errors = 0;
  uint64_t retried = 0;   // copies confirmed into a retry tier queue
  uint64_t requeued = 0;  // basic.nack requeue=true sent
  uint64_t acked = 0;     // basic.ack sent (dead letters and retries included)
  uint64_t connects = 0;  // successful (re)connections
};

using AmqpHandler = std::function<void(const AmqpDelivery&, HandlerContext&)>;
// Any way of processing one message exactly like Processor::Process does (e.g. a
// SqliteTransactional). May throw: the exception counts as a handler error.
using AmqpProcessFn =
    std::function<absl::StatusOr<ProcessResult>(const Message&, const AmqpDelivery&)>;

class RabbitMqConsumer {
 public:
  // Lease mode: `processor` (not owned, must outlive the consumer) runs `handler` once per id.
  // Does not connect yet: the first PollOnce does. InvalidArgument for bad options.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<RabbitMqConsumer>> Create(
      RabbitMqOptions options, const Processor& processor, AmqpHandler handler);
  // Any processing function.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<RabbitMqConsumer>> Create(
      RabbitMqOptions options, AmqpProcessFn process);
  ~RabbitMqConsumer();

  // Connects (and declares the topology) if not connected, nacks the held deliveries that are due
  // (kNackRequeue), then waits up to poll_timeout for one delivery and carries out its decision.
  // Returns how many deliveries were handled (0 or 1). On an error both connections are dropped
  // and the next call reconnects.
  [[nodiscard]] absl::StatusOr<int> PollOnce();

  // PollOnce until `stop` is true; connection errors back off (the policy's backoff) and
  // reconnect. Returns OK when stopped, or the first InvalidArgument, PermissionDenied, NotFound
  // or FailedPrecondition error (retrying cannot fix those).
  [[nodiscard]] absl::Status Run(const std::atomic<bool>& stop);

  const RabbitMqStats& stats() const { return stats_; }
  const RabbitMqOptions& options() const { return options_; }
  // The retry tier queue a delay goes to ("<queue>.retry.<ms>ms").
  std::string RetryQueueFor(std::chrono::milliseconds delay) const;

  class Impl;

 private:
  RabbitMqConsumer(RabbitMqOptions options, AmqpProcessFn process);

  RabbitMqOptions options_;
  RabbitMqStats stats_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace idem

#endif  // IDEM_RABBITMQ_H_

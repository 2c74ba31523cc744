// A RabbitMQ consumer with idem: each order is charged once per message-id, whatever the broker
// redelivers. Built as build/adapters/rabbitmq/idem_rabbitmq_consumer.
//
//   idem_rabbitmq_consumer [PORT] [STORE_URI]    (publish to queue "orders" with a message-id)
#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "idem/open_store.h"
#include "idem/processor.h"
#include "idem/rabbitmq.h"

std::atomic<bool> stop{false};

int main(int argc, char** argv) {
  std::signal(SIGINT, [](int) { stop = true; });
  auto store = idem::OpenStore(argc > 2 ? argv[2] : "sqlite:orders-dedup.db");  // or redis://
  if (!store.ok()) return std::fprintf(stderr, "%s\n", store.status().ToString().c_str()), 1;
  auto charges = idem::Processor::Create(**store, "billing/orders",
                                         {.lease = std::chrono::seconds(30), .max_attempts = 5});
  if (!charges.ok()) return 1;

  idem::RabbitMqOptions options;
  options.port = argc > 1 ? std::atoi(argv[1]) : 5672;
  options.queue = "orders";  // dead letters: exchange+queue "orders.dead-letter"
  options.prefetch = 32;     // manual acks; at most 32 unacked deliveries in flight
  // The id is the AMQP message-id property (or options.id_header / options.id_fn): a producer's
  // retry is a Duplicate; a message without one is dead-lettered "missing_id".
  auto consumer = idem::RabbitMqConsumer::Create(
      options, *charges, [](const idem::AmqpDelivery& msg, idem::HandlerContext& ctx) {
        // Runs once per id. ctx.message_id() + ctx.token() is the downstream idempotency key.
        std::printf("charge %s: %s\n", std::string(ctx.message_id()).c_str(), msg.body.c_str());
      });
  if (!consumer.ok()) return std::fprintf(stderr, "%s\n", consumer.status().ToString().c_str()), 1;
  // basic.ack after processed/duplicate/stale; in-progress, handler errors and store errors go to
  // a TTL'd retry queue that dead-letters back to "orders"; conflicts and poison go to the
  // dead-letter exchange (confirmed) before the ack. Reconnects with backoff.
  absl::Status s = (*consumer)->Run(stop);
  const idem::RabbitMqStats& st = (*consumer)->stats();
  std::printf("processed %llu, duplicates %llu, dead letters %llu\n",
              static_cast<unsigned long long>(st.processed),
              static_cast<unsigned long long>(st.duplicates),
              static_cast<unsigned long long>(st.dead_lettered));
  if (!s.ok()) std::fprintf(stderr, "%s\n", s.ToString().c_str());
  return s.ok() ? 0 : 1;
}

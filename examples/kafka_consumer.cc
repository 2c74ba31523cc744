// A Kafka consumer-group member with idem: each payment is applied once per id and in version
// order per key. Built as build/adapters/kafka/idem_kafka_consumer.
//
//   idem_kafka_consumer [BROKERS] [TOPIC]     (records carry headers id=... and version=...)
#include <atomic>
#include <csignal>
#include <cstdio>
#include <string>

#include "idem/open_store.h"
#include "idem/kafka.h"
#include "idem/processor.h"

std::atomic<bool> stop{false};

int main(int argc, char** argv) {
  std::signal(SIGINT, [](int) { stop = true; });
  auto store = idem::OpenStore("sqlite:payments-dedup.db");  // or redis://host:6379/0
  if (!store.ok()) return std::fprintf(stderr, "%s\n", store.status().ToString().c_str()), 1;
  auto payments = idem::Processor::Create(**store, "ledger/payments",
                                          {.lease = std::chrono::seconds(30), .max_attempts = 5});
  if (!payments.ok()) return 1;

  idem::KafkaConsumerOptions options{
      .brokers = argc > 1 ? argv[1] : "127.0.0.1:9092",
      .group_id = "ledger",
      .topics = {argc > 2 ? argv[2] : "payments"},  // dead letters: "payments.dead-letter"
      .id_header = "id",                             // the producer's id
      .version_header = "version",                   // gate key: the record's key (user id)
  };
  auto consumer = idem::KafkaConsumer::Create(
      options, *payments, [](const idem::KafkaRecord& record, idem::HandlerContext& ctx) {
        std::printf("apply %s for %.*s (partition %d offset %lld)\n",
                    std::string(ctx.message_id()).c_str(), static_cast<int>(record.key.size()),
                    record.key.data(), record.partition, static_cast<long long>(record.offset));
      });
  if (!consumer.ok()) return std::fprintf(stderr, "%s\n", consumer.status().ToString().c_str()), 1;
  // Offsets are stored (and auto-committed) only up to the first message without a final
  // outcome; in-progress and store errors pause the partition and retry it in order.
  absl::Status s = (*consumer)->Run(stop);
  std::printf("processed %llu, duplicates %llu, stale %llu, dead letters %llu\n",
              static_cast<unsigned long long>((*consumer)->stats().processed),
              static_cast<unsigned long long>((*consumer)->stats().duplicates),
              static_cast<unsigned long long>((*consumer)->stats().stale),
              static_cast<unsigned long long>((*consumer)->stats().dead_lettered));
  return s.ok() ? 0 : 1;
}

// A Redis Streams consumer-group member with idem: each order is charged once per id, whatever
// the stream redelivers. Built as build/adapters/redis_streams/idem_redis_streams_consumer.
//
//   idem_redis_streams_consumer [PORT] [CONSUMER]      (XADD orders * id o-1 amount 42)
#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "idem/open_store.h"
#include "idem/processor.h"
#include "idem/redis_streams.h"

std::atomic<bool> stop{false};

int main(int argc, char** argv) {
  std::signal(SIGINT, [](int) { stop = true; });
  const int port = argc > 1 ? std::atoi(argv[1]) : 6379;
  auto store = idem::OpenStore("redis://127.0.0.1:" + std::to_string(port) + "/0");  // or sqlite:
  if (!store.ok()) return std::fprintf(stderr, "%s\n", store.status().ToString().c_str()), 1;
  auto charges = idem::Processor::Create(**store, "billing/orders",
                                         {.lease = std::chrono::seconds(30), .max_attempts = 5});
  if (!charges.ok()) return 1;

  idem::RedisStreamsOptions options;
  options.port = port;
  options.stream = "orders";         // dead letters go to "orders:dead-letter"
  options.group = "billing";
  options.consumer = argc > 2 ? argv[2] : "billing-1";
  options.id_field = "id";           // the producer's id: its retries are duplicates
  auto consumer = idem::RedisStreamsConsumer::Create(
      options, *charges, [](const idem::StreamEntry& entry, idem::HandlerContext& ctx) {
        // Runs once per id. ctx.message_id() + ctx.token() is the downstream idempotency key.
        std::printf("charge %s: %s\n", std::string(ctx.message_id()).c_str(),
                    std::string(entry.Field("amount").value_or("?")).c_str());
      });
  if (!consumer.ok()) return std::fprintf(stderr, "%s\n", consumer.status().ToString().c_str()), 1;
  // XACK after processed/duplicate/stale; in-progress and store errors stay pending and are
  // retried with backoff; conflicts and poison go to the dead-letter stream.
  absl::Status s = (*consumer)->Run(stop);
  const idem::RedisStreamsStats& st = (*consumer)->stats();
  std::printf("processed %llu, duplicates %llu, dead letters %llu\n",
              static_cast<unsigned long long>(st.processed),
              static_cast<unsigned long long>(st.duplicates),
              static_cast<unsigned long long>(st.dead_lettered));
  return s.ok() ? 0 : 1;
}

// A consumer process for the Kafka tests: one KafkaConsumer in lease mode on an SQLite store
// shared by the workers, effects appended to a ledger ("id token pid" per handler run). SIGTERM
// closes it cleanly (final commit); the tests SIGKILL it.
//
//   kafka_worker BROKERS TOPIC GROUP SQLITE_FILE LEDGER_FILE MAX_ATTEMPTS
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "idem/kafka.h"
#include "idem/processor.h"
#include "idem/sqlite_store.h"

namespace {
std::atomic<bool> g_stop{false};
void OnTerm(int) { g_stop.store(true); }
int Fail(const std::string& what) {
  std::fprintf(stderr, "kafka_worker: %s\n", what.c_str());
  return 2;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 7) return Fail("usage: kafka_worker BROKERS TOPIC GROUP SQLITE LEDGER MAX_ATTEMPTS");
  std::signal(SIGTERM, OnTerm);
  const int ledger = open(argv[5], O_WRONLY | O_APPEND | O_CREAT, 0644);
  if (ledger < 0) return Fail("cannot open the ledger");
  auto store = idem::NewSqliteStore({.path = argv[4], .synchronous = idem::SqliteSynchronous::kNormal});
  if (!store.ok()) return Fail(store.status().ToString());
  auto processor = idem::Processor::Create(
      **store, "kafka-test",
      {.lease = std::chrono::milliseconds(1000),
       .max_attempts = static_cast<uint32_t>(std::atoi(argv[6]))});
  if (!processor.ok()) return Fail(processor.status().ToString());
  idem::KafkaConsumerOptions o{.brokers = argv[1], .group_id = argv[3], .topics = {argv[2]}};
  o.consumer_config = {{"session.timeout.ms", "3000"},
                       {"heartbeat.interval.ms", "300"},
                       {"auto.commit.interval.ms", "200"}};
  o.policy.backoff = {.initial = std::chrono::milliseconds(20), .max = std::chrono::milliseconds(200)};
  auto consumer = idem::KafkaConsumer::Create(
      o, *processor, [&](const idem::KafkaRecord& r, idem::HandlerContext& ctx) {
        if (r.header("poison").has_value()) throw std::runtime_error("poison record");
        const std::string line =
            absl::StrCat(std::string(ctx.message_id()), " ", ctx.token(), " ", getpid(), "\n");
        if (write(ledger, line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
          throw std::runtime_error("ledger write failed");
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      });
  if (!consumer.ok()) return Fail(consumer.status().ToString());
  absl::Status s = (*consumer)->Run(g_stop);
  if (!s.ok()) return Fail(s.ToString());
  return 0;
}

// A consumer process for the kill tests: one RabbitMqConsumer on QUEUE, in lease mode (SQLite
// store, effects appended to a ledger file) or transactional mode (effects in SQLite, in the
// dedup row's transaction). Every carried-out decision is appended to OUTCOMES as
// "id action reason redelivered pid". SIGTERM stops it cleanly; the tests SIGKILL it at random.
//
//   rabbitmq_worker PORT QUEUE lease LEDGER_FILE STORE_FILE LEASE_MS MAX_ATTEMPTS OUTCOMES
//   rabbitmq_worker PORT QUEUE tx    SQLITE_FILE -          LEASE_MS -            OUTCOMES
#include <fcntl.h>
#include <sqlite3.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "idem/processor.h"
#include "idem/rabbitmq.h"
#include "idem/sqlite_store.h"

namespace {

std::atomic<bool> g_stop{false};
void OnTerm(int) { g_stop.store(true); }

// Sleeps between `min_us` and `max_us`: handlers take long enough for SIGKILLs to land in them.
void Pause(unsigned min_us, unsigned max_us) {
  thread_local std::mt19937 rng(static_cast<unsigned>(getpid()));
  std::this_thread::sleep_for(std::chrono::microseconds(min_us + rng() % (max_us - min_us)));
}

int Fail(const std::string& what) {
  std::fprintf(stderr, "rabbitmq_worker: %s\n", what.c_str());
  return 2;
}

void Append(int fd, const std::string& line) {
  if (write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
    throw std::runtime_error("append failed");
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 9) return Fail("usage: see the header of rabbitmq_worker.cc");
  std::signal(SIGTERM, OnTerm);
  idem::RabbitMqOptions o;
  o.port = std::atoi(argv[1]);
  o.queue = argv[2];
  const std::string mode = argv[3];
  const std::string path = argv[4];
  const std::chrono::milliseconds lease(std::atoi(argv[6]));
  o.prefetch = 4;
  o.poll_timeout = std::chrono::milliseconds(50);
  o.retry_tiers = {std::chrono::milliseconds(20), std::chrono::milliseconds(50),
                   std::chrono::milliseconds(100), std::chrono::milliseconds(200),
                   std::chrono::milliseconds(400), std::chrono::milliseconds(800)};
  o.policy.backoff = {.initial = std::chrono::milliseconds(20), .max = std::chrono::milliseconds(200)};
  o.policy.in_progress_min_delay = std::chrono::milliseconds(20);
  const int outcomes = open(argv[8], O_WRONLY | O_APPEND | O_CREAT, 0644);
  if (outcomes < 0) return Fail("cannot open the outcomes file");
  o.on_decision = [outcomes](const idem::AmqpDelivery& d, const idem::Decision& decision) {
    Append(outcomes, absl::StrCat(d.message_id.value_or("-"), " ", std::string(idem::ActionName(decision.action)),
                                  " ", decision.reason.substr(0, decision.reason.find(' ')), " ",
                                  d.redelivered ? 1 : 0, " ", getpid(), "\n"));
  };

  if (mode == "lease") {
    const int ledger = open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (ledger < 0) return Fail("cannot open the ledger");
    auto store = idem::NewSqliteStore({.path = argv[5]});
    if (!store.ok()) return Fail(store.status().ToString());
    auto processor = idem::Processor::Create(
        **store, "rmq-test",
        {.lease = lease, .max_attempts = static_cast<uint32_t>(std::atoi(argv[7]))});
    if (!processor.ok()) return Fail(processor.status().ToString());
    auto consumer = idem::RabbitMqConsumer::Create(
        o, *processor, [&](const idem::AmqpDelivery& d, idem::HandlerContext& ctx) {
          Pause(0, 1000);
          if (d.Header("poison") == "1") throw std::runtime_error("poison message");
          // The effect: one line per handler run, "id token pid".
          Append(ledger, absl::StrCat(std::string(ctx.message_id()), " ", ctx.token(), " ",
                                      getpid(), "\n"));
          Pause(2000, 8000);  // the effect is out, the completion not yet
        });
    if (!consumer.ok()) return Fail(consumer.status().ToString());
    absl::Status s = (*consumer)->Run(g_stop);
    if (!s.ok()) return Fail(s.ToString());
    return 0;
  }
  if (mode == "tx") {
    sqlite3* raw = nullptr;
    if (sqlite3_open(path.c_str(), &raw) != SQLITE_OK) return Fail("cannot open sqlite");
    std::unique_ptr<sqlite3, decltype(&sqlite3_close)> db(raw, &sqlite3_close);
    sqlite3_busy_timeout(db.get(), 10'000);
    if (sqlite3_exec(db.get(),
                     "PRAGMA journal_mode=WAL; CREATE TABLE IF NOT EXISTS effects(id TEXT, pid INT)",
                     nullptr, nullptr, nullptr) != SQLITE_OK) {
      return Fail(sqlite3_errmsg(db.get()));
    }
    auto tx = idem::SqliteTransactional::Create(db.get(), "rmq-tx");
    if (!tx.ok()) return Fail(tx.status().ToString());
    idem::SqliteTransactional* t = tx->get();
    auto consumer = idem::RabbitMqConsumer::Create(
        o, [t](const idem::Message& m, const idem::AmqpDelivery&) -> absl::StatusOr<idem::ProcessResult> {
          return t->Process(m, [&](sqlite3* db, idem::HandlerContext& ctx) {
            const std::string sql = absl::StrCat("INSERT INTO effects VALUES('",
                                                 std::string(ctx.message_id()), "', ", getpid(), ")");
            if (sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr) != SQLITE_OK) {
              throw std::runtime_error(sqlite3_errmsg(db));
            }
            Pause(2000, 8000);  // the effect is written, the commit not yet
          });
        });
    if (!consumer.ok()) return Fail(consumer.status().ToString());
    absl::Status s = (*consumer)->Run(g_stop);
    if (!s.ok()) return Fail(s.ToString());
    return 0;
  }
  return Fail("unknown mode " + mode);
}

// A consumer process for the kill tests: one RedisStreamsConsumer of a group, in lease mode (Redis
// store, effects appended to a ledger file) or transactional mode (effects in SQLite, in the
// dedup row's transaction). SIGTERM stops it cleanly; the tests SIGKILL it at random points.
//
//   stream_worker PORT STREAM GROUP CONSUMER lease LEDGER_FILE LEASE_MS MAX_ATTEMPTS
//   stream_worker PORT STREAM GROUP CONSUMER tx SQLITE_FILE LEASE_MS
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
#include "idem/redis_store.h"
#include "idem/redis_streams.h"
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
  std::fprintf(stderr, "stream_worker: %s\n", what.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 8) return Fail("usage: see the header of stream_worker.cc");
  std::signal(SIGTERM, OnTerm);
  idem::RedisStreamsOptions o;
  o.port = std::atoi(argv[1]);
  o.stream = argv[2];
  o.group = argv[3];
  o.consumer = argv[4];
  o.outcome_stream = o.stream + ":outcomes";
  o.block = std::chrono::milliseconds(100);
  o.batch = 8;
  o.policy.backoff = {.initial = std::chrono::milliseconds(20), .max = std::chrono::milliseconds(200)};
  o.policy.in_progress_min_delay = std::chrono::milliseconds(20);
  const std::string mode = argv[5];
  const std::string path = argv[6];
  const std::chrono::milliseconds lease(std::atoi(argv[7]));

  if (mode == "lease") {
    if (argc < 9) return Fail("lease mode needs MAX_ATTEMPTS");
    const int ledger = open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (ledger < 0) return Fail("cannot open the ledger");
    idem::RedisStoreOptions so;
    so.port = o.port;
    so.key_prefix = "idem-" + o.stream;
    auto store = idem::NewRedisStore(so);
    if (!store.ok()) return Fail(store.status().ToString());
    auto processor = idem::Processor::Create(
        **store, "rs-test",
        {.lease = lease, .max_attempts = static_cast<uint32_t>(std::atoi(argv[8]))});
    if (!processor.ok()) return Fail(processor.status().ToString());
    auto consumer = idem::RedisStreamsConsumer::Create(
        o, *processor, [&](const idem::StreamEntry& entry, idem::HandlerContext& ctx) {
          Pause(0, 1000);
          if (entry.Field("poison") == "1") throw std::runtime_error("poison entry");
          // The effect: one line per handler run, "id token pid".
          const std::string line = absl::StrCat(std::string(ctx.message_id()), " ", ctx.token(), " ", getpid(), "\n");
          if (write(ledger, line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
            throw std::runtime_error("ledger write failed");
          }
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
    auto tx = idem::SqliteTransactional::Create(db.get(), "rs-tx");
    if (!tx.ok()) return Fail(tx.status().ToString());
    idem::SqliteTransactional* t = tx->get();
    auto consumer = idem::RedisStreamsConsumer::Create(
        o, lease,
        [t](const idem::Message& m, const idem::StreamEntry&) -> absl::StatusOr<idem::ProcessResult> {
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

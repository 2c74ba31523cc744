// A consumer process for the kill tests and the demo: one RedisStreamsConsumer of a group, in
// lease mode (Redis store, effects appended to a ledger file) or transactional mode (effects in
// SQLite, in the dedup row's transaction). SIGTERM stops it cleanly; the harness SIGKILLs it at
// random points.
//
//   PORT STREAM GROUP CONSUMER lease LEDGER_FILE LEASE_MS MAX_ATTEMPTS [DELIVERY_LOG]
//   PORT STREAM GROUP CONSUMER tx SQLITE_FILE LEASE_MS [MAX_ATTEMPTS]
//
// DELIVERY_LOG, when given, gets one line per delivery, "entry outcome reclaimed pid" (outcome
// "error" when processing returned an error or the handler threw): what the demo counts
// deliveries, suppressed duplicates and reclaims from, since a SIGKILLed process's own counters
// die with it.
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
#include "streams_harness.h"

namespace idem::streams_harness {
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

// Appends whole lines with one write(2) each: O_APPEND keeps lines of concurrent processes whole.
void AppendLine(int fd, const std::string& line) {
  if (fd < 0) return;
  if (write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
    throw std::runtime_error("log write failed");
  }
}

}  // namespace

int StreamWorkerMain(int argc, char** argv) {
  if (argc < 8) return Fail("usage: see the header of stream_worker_main.cc");
  std::signal(SIGTERM, OnTerm);
  RedisStreamsOptions o;
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
    const int deliveries =
        argc > 9 ? open(argv[9], O_WRONLY | O_APPEND | O_CREAT, 0644) : -1;
    if (argc > 9 && deliveries < 0) return Fail("cannot open the delivery log");
    RedisStoreOptions so;
    so.port = o.port;
    so.key_prefix = "idem-" + o.stream;
    auto store = NewRedisStore(so);
    if (!store.ok()) return Fail(store.status().ToString());
    auto processor = Processor::Create(
        **store, "rs-test",
        {.lease = lease, .max_attempts = static_cast<uint32_t>(std::atoi(argv[8]))});
    if (!processor.ok()) return Fail(processor.status().ToString());
    const Processor& p = *processor;
    auto handler = [&](const StreamEntry& entry, HandlerContext& ctx) {
      Pause(0, 1000);
      if (entry.Field("poison") == "1") throw std::runtime_error("poison entry");
      // The effect: one line per handler run, "id token pid".
      AppendLine(ledger, absl::StrCat(std::string(ctx.message_id()), " ", ctx.token(), " ",
                                      getpid(), "\n"));
      Pause(2000, 8000);  // the effect is out, the completion not yet
    };
    // What RedisStreamsConsumer::Create(options, processor, handler) does, plus the delivery log.
    auto consumer = RedisStreamsConsumer::Create(
        o, lease,
        [&](const Message& m, const StreamEntry& entry) -> absl::StatusOr<ProcessResult> {
          absl::StatusOr<ProcessResult> r;
          try {
            r = p.Process(m, [&](HandlerContext& ctx) { handler(entry, ctx); });
          } catch (...) {
            AppendLine(deliveries, absl::StrCat(entry.entry_id, " error ", entry.reclaimed ? 1 : 0,
                                                " ", getpid(), "\n"));
            throw;
          }
          AppendLine(deliveries,
                     absl::StrCat(entry.entry_id, " ",
                                  r.ok() ? std::string(OutcomeName(r->outcome)) : "error", " ",
                                  entry.reclaimed ? 1 : 0, " ", getpid(), "\n"));
          return r;
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
    auto tx = SqliteTransactional::Create(db.get(), "rs-tx");
    if (!tx.ok()) return Fail(tx.status().ToString());
    SqliteTransactional* t = tx->get();
    auto consumer = RedisStreamsConsumer::Create(
        o, lease, [t](const Message& m, const StreamEntry&) -> absl::StatusOr<ProcessResult> {
          return t->Process(m, [&](sqlite3* db, HandlerContext& ctx) {
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

}  // namespace idem::streams_harness

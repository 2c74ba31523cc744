// The SQLite backend (WAL, synchronous NORMAL and FULL): idem against the raw SQL a consumer
// would write by hand, on the same database file and the same table.
//
// Raw and idem write into one file per synchronous mode, into idem's own `idem_dedup` table
// (schema made by the store), under the same scope, so both see the same table, indexes, WAL
// and page cache. The raw baseline runs on its own connection with prepared statements:
//  - lease, per message: `INSERT … ON CONFLICT DO NOTHING` of an in-progress row (lease and
//    expiry stamped), then, if a row was inserted, the handler and an `UPDATE` to completed,
//    fenced by the token; each statement is its own (autocommit) transaction. A conflict is a
//    duplicate and costs one statement.
//  - batch B: the B inserts in one BEGIN IMMEDIATE … COMMIT, the handlers, the updates of the
//    inserted rows in a second transaction.
//  - transactional: BEGIN IMMEDIATE; insert a completed row; handler if inserted; COMMIT.
// idem runs Processor::Process / ProcessBatch on NewSqliteStore, and SqliteTransactional::Process
// on the raw connection, with its defaults (payload fingerprints on).
//
// Every benchmark here is paired (RunPaired): raw and idem alternate unit by unit within one
// benchmark, because fsync latency on shared disks drifts by 5x within seconds (synchronous=FULL
// pays one fdatasync per commit; strace shows raw and idem issue the same number). WAL
// checkpoints run between units, untimed (see RegisterPaired): their cost is proportional to the
// pages written, which both sides share, and is not part of either side's figure.
//
// Table size: databases pre-filled with N completed rows (IDEM_BENCH_PREFILL, e.g.
// "1000000,10000000") measure lease and batch 100 at NORMAL against a large table. Pre-fill ids are
// UUIDs spread evenly over the key space and inserted in key order in one transaction (fast,
// append-only), so the benchmark's random ids land between them as they would in a table that
// grew by itself. A pre-filled file is kept in IDEM_BENCH_DIR and reused by later runs.
#include <sqlite3.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bench_util.h"
#include "benchmark/benchmark.h"
#include "idem/processor.h"
#include "idem/sqlite_store.h"

namespace idem::bench {
namespace {

constexpr int64_t kLeaseMs = 30'000;
constexpr int64_t kRetentionMs = 7LL * 24 * 3600 * 1000;

struct DbCloser {
  void operator()(sqlite3* db) const noexcept { sqlite3_close_v2(db); }
};
struct StmtFinalizer {
  void operator()(sqlite3_stmt* stmt) const noexcept { sqlite3_finalize(stmt); }
};
using Db = std::unique_ptr<sqlite3, DbCloser>;
using Stmt = std::unique_ptr<sqlite3_stmt, StmtFinalizer>;

[[noreturn]] void Die(std::string_view what, sqlite3* db) {
  std::fprintf(stderr, "sqlite bench: %.*s: %s\n", static_cast<int>(what.size()), what.data(),
               db != nullptr ? sqlite3_errmsg(db) : "");
  std::abort();
}

void Check(int rc, std::string_view what, sqlite3* db) {
  if (rc != SQLITE_OK && rc != SQLITE_DONE && rc != SQLITE_ROW) Die(what, db);
}

const char* SynchronousName(SqliteSynchronous sync) {
  return sync == SqliteSynchronous::kFull ? "FULL" : "NORMAL";
}

// The caller's own connection, for the raw baseline and for transactional mode.
Db OpenConnection(const std::string& path, SqliteSynchronous sync) {
  sqlite3* raw = nullptr;
  const int rc =
      sqlite3_open_v2(path.c_str(), &raw,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  Db db(raw);
  Check(rc, "open", raw);
  sqlite3_busy_timeout(db.get(), 5000);
  Check(sqlite3_exec(db.get(), "PRAGMA journal_mode = WAL", nullptr, nullptr, nullptr),
        "journal_mode", db.get());
  const std::string pragma = absl::StrCat("PRAGMA synchronous = ", SynchronousName(sync));
  Check(sqlite3_exec(db.get(), pragma.c_str(), nullptr, nullptr, nullptr), "synchronous", db.get());
  return db;
}

Stmt Prepare(sqlite3* db, const char* sql) {
  sqlite3_stmt* stmt = nullptr;
  Check(sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt, nullptr), sql, db);
  return Stmt(stmt);
}

// Steps a statement that returns no rows, then resets it (bindings are rebound every use).
void StepDone(sqlite3* db, sqlite3_stmt* stmt, std::string_view what) {
  const int rc = sqlite3_step(stmt);
  sqlite3_reset(stmt);
  if (rc != SQLITE_DONE) Die(what, db);
}

class RawSqlite {
 public:
  explicit RawSqlite(sqlite3* db)
      : db_(db),
        claim_(Prepare(db, R"sql(
INSERT INTO idem_dedup(scope, id, status, token, lease_until, attempts, expires_at)
VALUES(?1, ?2, 0, ?3, ?4, 1, ?5) ON CONFLICT(scope, id) DO NOTHING)sql")),
        complete_(Prepare(db, R"sql(
UPDATE idem_dedup SET status = 2, lease_until = 0, expires_at = ?4
WHERE scope = ?1 AND id = ?2 AND status = 0 AND token = ?3)sql")),
        insert_completed_(Prepare(db, R"sql(
INSERT INTO idem_dedup(scope, id, status, token, lease_until, attempts, expires_at)
VALUES(?1, ?2, 2, ?3, 0, 1, ?4) ON CONFLICT(scope, id) DO NOTHING)sql")),
        begin_(Prepare(db, "BEGIN IMMEDIATE")),
        commit_(Prepare(db, "COMMIT")),
        rng_(std::random_device{}()) {}

  int64_t NewToken() { return static_cast<int64_t>(rng_() | 1); }

  // True when the row was inserted: the caller owns the id.
  bool Claim(std::string_view id, int64_t token) {
    const int64_t now = NowMillis();
    sqlite3_stmt* s = claim_.get();
    BindScopeId(s, id);
    sqlite3_bind_int64(s, 3, token);
    sqlite3_bind_int64(s, 4, now + kLeaseMs);
    sqlite3_bind_int64(s, 5, now + kLeaseMs + kRetentionMs);
    StepDone(db_, s, "raw claim");
    return sqlite3_changes(db_) == 1;
  }

  void Complete(std::string_view id, int64_t token) {
    sqlite3_stmt* s = complete_.get();
    BindScopeId(s, id);
    sqlite3_bind_int64(s, 3, token);
    sqlite3_bind_int64(s, 4, NowMillis() + kRetentionMs);
    StepDone(db_, s, "raw complete");
  }

  bool InsertCompleted(std::string_view id) {
    sqlite3_stmt* s = insert_completed_.get();
    BindScopeId(s, id);
    sqlite3_bind_int64(s, 3, NewToken());
    sqlite3_bind_int64(s, 4, NowMillis() + kRetentionMs);
    StepDone(db_, s, "raw insert completed");
    return sqlite3_changes(db_) == 1;
  }

  void Begin() { StepDone(db_, begin_.get(), "BEGIN IMMEDIATE"); }
  void Commit() { StepDone(db_, commit_.get(), "COMMIT"); }

 private:
  static void BindScopeId(sqlite3_stmt* s, std::string_view id) {
    sqlite3_bind_text(s, 1, kScope.data(), static_cast<int>(kScope.size()), SQLITE_STATIC);
    sqlite3_bind_blob(s, 2, id.data(), static_cast<int>(id.size()), SQLITE_STATIC);
  }

  sqlite3* db_;
  Stmt claim_, complete_, insert_completed_, begin_, commit_;
  std::mt19937_64 rng_;
};

// One database file with idem's store, the caller's connection, and both sides' machinery.
struct Setup {
  std::unique_ptr<DedupStore> store;
  std::unique_ptr<Processor> processor;
  Db db;      // the caller's connection: raw baseline and transactional mode
  Stmt tick;  // a write outside idem's tables, to restart the WAL untimed after a checkpoint
  std::unique_ptr<RawSqlite> raw;
  std::unique_ptr<SqliteTransactional> transactional;
  // The same file through a store that writes every call alone (group_limit=1).
  std::unique_ptr<DedupStore> alone_store;
  std::unique_ptr<Processor> alone_processor;
};

std::string BenchDir() {
  static const std::string dir = [] {
    std::string d = EnvString("IDEM_BENCH_DIR", "");
    if (d.empty()) d = (std::filesystem::temp_directory_path() / "idem-bench").string();
    std::filesystem::create_directories(d);
    return d;
  }();
  return dir;
}

void RemoveDatabase(const std::string& path) {
  for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path + suffix);
}

// `group_limit` 1: every call written by itself (no group commit); 0: the store's default.
std::unique_ptr<DedupStore> OpenStore(const std::string& path, SqliteSynchronous sync,
                                      uint32_t group_limit = 0) {
  SqliteStoreOptions options{.path = path, .synchronous = sync};
  if (group_limit > 0) options.group_limit = group_limit;
  absl::StatusOr<std::unique_ptr<DedupStore>> store = NewSqliteStore(options);
  if (!store.ok()) {
    std::fprintf(stderr, "sqlite store %s: %s\n", path.c_str(), store.status().ToString().c_str());
    std::abort();
  }
  return std::move(store).value();
}

// Pre-fills `path` with `rows` completed records unless an earlier run did.
void Prefill(const std::string& path, int64_t rows) {
  const std::string marker = path + ".prefilled";
  {
    std::ifstream in(marker);
    int64_t done = 0;
    if (in >> done && done == rows && std::filesystem::exists(path)) return;
  }
  RemoveDatabase(path);
  std::filesystem::remove(marker);
  OpenStore(path, SqliteSynchronous::kNormal).reset();  // creates idem's schema

  const auto start = std::chrono::steady_clock::now();
  Db db = OpenConnection(path, SqliteSynchronous::kOff);
  sqlite3_exec(db.get(), "PRAGMA cache_size = -262144", nullptr, nullptr, nullptr);
  Stmt insert = Prepare(db.get(), R"sql(
INSERT INTO idem_dedup(scope, id, status, token, lease_until, attempts, fingerprint, result,
                       expires_at, claim_origin)
VALUES(?1, ?2, 2, ?3, 0, 1, ?4, NULL, ?5, 0))sql");
  Check(sqlite3_exec(db.get(), "BEGIN", nullptr, nullptr, nullptr), "BEGIN", db.get());
  std::mt19937_64 rng(std::random_device{}());
  const int64_t now = NowMillis();
  // Ids spread evenly over the first 48 bits (the first 12 hex digits) are in key order.
  const unsigned __int128 span = (unsigned __int128)1 << 48;
  const uint64_t spacing = static_cast<uint64_t>(span / static_cast<uint64_t>(rows));
  for (int64_t i = 0; i < rows; ++i) {
    const uint64_t prefix =
        static_cast<uint64_t>(span * static_cast<uint64_t>(i) / static_cast<uint64_t>(rows)) +
        rng() % spacing;
    const std::string id = FormatUuid((prefix << 16) | (rng() & 0xFFFF), rng());
    char fingerprint[16];
    const uint64_t f1 = rng(), f2 = rng();
    std::memcpy(fingerprint, &f1, 8);
    std::memcpy(fingerprint + 8, &f2, 8);
    sqlite3_stmt* s = insert.get();
    sqlite3_bind_text(s, 1, kScope.data(), static_cast<int>(kScope.size()), SQLITE_STATIC);
    sqlite3_bind_blob(s, 2, id.data(), static_cast<int>(id.size()), SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 3, static_cast<int64_t>(rng() | 1));
    sqlite3_bind_blob(s, 4, fingerprint, 16, SQLITE_TRANSIENT);
    // Completed over the last `rows` ms, oldest first: the expiry index is appended to as well.
    sqlite3_bind_int64(s, 5, now - rows + i + kRetentionMs);
    StepDone(db.get(), s, "prefill insert");
  }
  Check(sqlite3_exec(db.get(), "COMMIT", nullptr, nullptr, nullptr), "COMMIT", db.get());
  Check(sqlite3_exec(db.get(), "PRAGMA wal_checkpoint(TRUNCATE)", nullptr, nullptr, nullptr),
        "checkpoint", db.get());
  db.reset();
  std::ofstream(marker) << rows << "\n";
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr, "sqlite bench: pre-filled %lld rows into %s in %.1f s\n",
               static_cast<long long>(rows), path.c_str(), seconds);
}

// Setups by database name, opened (and pre-filled with `prefill_rows`, if any) on first use and
// kept for the process: the work happens before a benchmark's timed loop.
Setup& GetSetup(const std::string& name, SqliteSynchronous sync, int64_t prefill_rows) {
  static std::map<std::string, std::unique_ptr<Setup>> setups;
  std::unique_ptr<Setup>& slot = setups[name];
  if (slot) return *slot;
  const std::string path = BenchDir() + "/" + name + ".db";
  if (prefill_rows > 0) Prefill(path, prefill_rows);
  slot = std::make_unique<Setup>();
  Setup& s = *slot;
  s.store = OpenStore(path, sync);
  absl::StatusOr<Processor> processor = Processor::Create(*s.store, std::string(kScope));
  if (!processor.ok()) std::abort();
  s.processor = std::make_unique<Processor>(*std::move(processor));
  s.db = OpenConnection(path, sync);
  s.raw = std::make_unique<RawSqlite>(s.db.get());
  Check(sqlite3_exec(s.db.get(),
                     "CREATE TABLE IF NOT EXISTS idem_bench_tick(n INTEGER NOT NULL);"
                     "INSERT INTO idem_bench_tick(n) SELECT 0 WHERE NOT EXISTS "
                     "(SELECT 1 FROM idem_bench_tick)",
                     nullptr, nullptr, nullptr),
        "create tick table", s.db.get());
  s.tick = Prepare(s.db.get(), "UPDATE idem_bench_tick SET n = n + 1");
  absl::StatusOr<std::unique_ptr<SqliteTransactional>> transactional =
      SqliteTransactional::Create(s.db.get(), std::string(kScope));
  if (!transactional.ok()) {
    std::fprintf(stderr, "transactional: %s\n", transactional.status().ToString().c_str());
    std::abort();
  }
  s.transactional = std::move(transactional).value();
  s.alone_store = OpenStore(path, sync, /*group_limit=*/1);
  absl::StatusOr<Processor> alone = Processor::Create(*s.alone_store, std::string(kScope));
  if (!alone.ok()) std::abort();
  s.alone_processor = std::make_unique<Processor>(*std::move(alone));
  return s;
}

void TrivialSqlHandler(sqlite3* db, HandlerContext& context) {
  benchmark::DoNotOptimize(db);
  benchmark::DoNotOptimize(context.token());
}

// Each function below processes one unit of a paired benchmark (RunPaired): the given messages,
// one at a time or as one batch.

absl::Status RawLease(Setup& s, std::span<const Message> messages) {
  for (const Message& m : messages) {
    const int64_t token = s.raw->NewToken();
    if (s.raw->Claim(m.id, token)) {
      benchmark::DoNotOptimize(token);
      s.raw->Complete(m.id, token);
    }
  }
  return absl::OkStatus();
}

absl::Status IdemLease(Setup& s, std::span<const Message> messages) {
  for (const Message& m : messages) {
    absl::StatusOr<ProcessResult> result = s.processor->Process(m, TrivialHandler);
    if (!result.ok()) return result.status();
  }
  return absl::OkStatus();
}

absl::Status RawBatch(Setup& s, std::span<const Message> messages) {
  int64_t tokens[1000];
  if (messages.size() > std::size(tokens)) return absl::InvalidArgumentError("batch too large");
  s.raw->Begin();
  for (std::size_t i = 0; i < messages.size(); ++i) {
    const int64_t token = s.raw->NewToken();
    tokens[i] = s.raw->Claim(messages[i].id, token) ? token : 0;
  }
  s.raw->Commit();
  for (std::size_t i = 0; i < messages.size(); ++i) {
    if (tokens[i] != 0) benchmark::DoNotOptimize(tokens[i]);
  }
  s.raw->Begin();
  for (std::size_t i = 0; i < messages.size(); ++i) {
    if (tokens[i] != 0) s.raw->Complete(messages[i].id, tokens[i]);
  }
  s.raw->Commit();
  return absl::OkStatus();
}

absl::Status IdemBatch(Setup& s, std::span<const Message> messages) {
  std::vector<absl::StatusOr<ProcessResult>> results =
      s.processor->ProcessBatch(messages, TrivialHandler);
  for (const absl::StatusOr<ProcessResult>& result : results) {
    if (!result.ok()) return result.status();
  }
  return absl::OkStatus();
}

absl::Status RawTransactional(Setup& s, std::span<const Message> messages) {
  for (const Message& m : messages) {
    s.raw->Begin();
    if (s.raw->InsertCompleted(m.id)) benchmark::DoNotOptimize(s.db.get());
    s.raw->Commit();
  }
  return absl::OkStatus();
}

absl::Status IdemTransactional(Setup& s, std::span<const Message> messages) {
  for (const Message& m : messages) {
    absl::StatusOr<ProcessResult> result = s.transactional->Process(m, TrivialSqlHandler);
    if (!result.ok()) return result.status();
  }
  return absl::OkStatus();
}

// Checkpoints the WAL untimed and restarts it with a write outside idem's tables.
void Checkpoint(Setup& s) {
  Check(sqlite3_wal_checkpoint_v2(s.db.get(), nullptr, SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr),
        "checkpoint", s.db.get());
  // The first write after a complete checkpoint restarts the WAL, which costs as much as
  // several messages: do it here too, untimed.
  StepDone(s.db.get(), s.tick.get(), "tick");
}

using SideFn = absl::Status (*)(Setup&, std::span<const Message>);

// Registers the paired benchmark "backend/pattern/pair" on database `name` (opened, and
// pre-filled with `prefill_rows` if > 0, on first use).
void RegisterPaired(const std::string& backend, const std::string& pattern, const std::string& name,
                    SqliteSynchronous sync, int64_t prefill_rows, std::size_t batch, SideFn raw,
                    SideFn idem) {
  Register(backend, pattern, "pair", [=](benchmark::State& state) {
    Setup& s = GetSetup(name, sync, prefill_rows);
    // Checkpoint the WAL untimed often enough (every ~64 messages a side) that SQLite's
    // automatic checkpoint (at 1000 WAL pages, run by whichever connection commits past it)
    // never lands inside one side's timed unit: on a large table one checkpoint costs as much
    // as hundreds of messages, and charging it to a side at random swamps the ratio. A unit of
    // 1000 messages still passes 1000 pages on its own; then each side pays its own. `every` is
    // odd, so the side that runs first after a checkpoint alternates.
    const int64_t every = std::max<int64_t>(1, 64 / static_cast<int64_t>(batch)) | 1;
    RunPaired(
        state, batch, [&](std::span<const Message> m) { return raw(s, m); },
        [&](std::span<const Message> m) { return idem(s, m); },
        [&](int64_t iteration) {
          if ((iteration + 1) % every == 0) Checkpoint(s);
        });
  });
}

// Group commit: per-message Process from one thread (alone and grouped) and from `threads`
// threads, against the raw batch of 100 on the same file (RunGroup).
void RegisterGroup(const std::string& backend, const std::string& name, SqliteSynchronous sync,
                   int threads) {
  Register(backend, absl::StrCat("group", threads), "group", [=](benchmark::State& state) {
    Setup& s = GetSetup(name, sync, 0);
    RunGroup(state, threads,
             GroupSides{.raw_batch = [&](std::span<const Message> m) { return RawBatch(s, m); },
                        .alone = s.alone_processor.get(),
                        .grouped = s.processor.get(),
                        .grouped_store = s.store.get(),
                        .between = [&](int64_t) { Checkpoint(s); }});
  })->MinTime(kGroupMinSeconds);
}

void RegisterAll() {
  for (SqliteSynchronous sync : {SqliteSynchronous::kNormal, SqliteSynchronous::kFull}) {
    const bool full = sync == SqliteSynchronous::kFull;
    const std::string backend = full ? "sqlite-full" : "sqlite-normal";
    // A fresh file per run: the table starts empty and grows only by what the run writes.
    const std::string name = full ? "sync-full" : "sync-normal";
    RemoveDatabase(BenchDir() + "/" + name + ".db");
    RegisterPaired(backend, "lease", name, sync, 0, 1, RawLease, IdemLease);
    RegisterPaired(backend, "txn", name, sync, 0, 1, RawTransactional, IdemTransactional);
    for (std::size_t batch : {1, 10, 100, 1000}) {
      RegisterPaired(backend, absl::StrCat("batch", batch), name, sync, 0, batch, RawBatch,
                     IdemBatch);
    }
    RegisterGroup(backend, name, sync, 16);
  }
  // Cost against a large table, at NORMAL.
  for (absl::string_view item :
       absl::StrSplit(EnvString("IDEM_BENCH_PREFILL", "1000000"), ',', absl::SkipEmpty())) {
    int64_t rows = 0;
    if (!absl::SimpleAtoi(item, &rows) || rows <= 0) {
      std::fprintf(stderr, "sqlite bench: bad IDEM_BENCH_PREFILL entry '%s'\n",
                   std::string(item).c_str());
      std::exit(2);
    }
    const std::string label =
        rows % 1000000 == 0 ? absl::StrCat(rows / 1000000, "M") : absl::StrCat(rows);
    const std::string name = absl::StrCat("rows-", rows);
    RegisterPaired("sqlite-normal", absl::StrCat("lease_rows", label), name,
                   SqliteSynchronous::kNormal, rows, 1, RawLease, IdemLease);
    RegisterPaired("sqlite-normal", absl::StrCat("batch100_rows", label), name,
                   SqliteSynchronous::kNormal, rows, 100, RawBatch, IdemBatch);
  }
}

}  // namespace
}  // namespace idem::bench

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  idem::bench::RegisterAll();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

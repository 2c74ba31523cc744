// The SQLite backend: idem's embedded default.
//
// One dedup table `idem_dedup` with PRIMARY KEY(scope, id), ids as BLOB, and one version table
// `idem_versions`, in WAL mode. Every state change runs in a `BEGIN IMMEDIATE` transaction with a
// busy timeout. A fresh claim is a single INSERT … ON CONFLICT DO NOTHING; a takeover is a single
// INSERT … ON CONFLICT DO UPDATE … WHERE whose own WHERE decides (never read-then-write), so
// several processes may share one database file safely.
//
// Two ways to use it:
//  - NewSqliteStore: a DedupStore on its own connection(s), for lease mode (Processor).
//  - SqliteTransactional: exactly-once effect. The library opens the transaction on the caller's
//    connection, inserts the dedup row, runs the handler with that connection, applies the
//    version gate and commits once. A duplicate or stale event rolls back; a throwing handler
//    rolls back everything and the exception propagates unchanged (with max_attempts, its
//    attempt stays counted, by a write committed before the handler's transaction).
//
// Thread-safety: a store from NewSqliteStore is safe for concurrent use. A SqliteTransactional
// uses the caller's connection and is as thread-safe as that connection: one thread at a time.
#ifndef IDEM_SQLITE_STORE_H_
#define IDEM_SQLITE_STORE_H_

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "idem/open_options.h"
#include "idem/processor.h"
#include "idem/store.h"
#include "idem/types.h"

struct sqlite3;

namespace idem {

// PRAGMA synchronous of the store's connection: when SQLite waits for the disk (fsync).
enum class SqliteSynchronous { kOff, kNormal, kFull, kExtra };

// Reads a synchronous setting by its SQLite name: "off", "normal", "full" or "extra", in any
// letter case. The one spelling shared by URIs, the simulator's flags and the benchmarks.
// InvalidArgument for anything else (the message quotes at most a short prefix of `name`).
[[nodiscard]] absl::StatusOr<SqliteSynchronous> ParseSqliteSynchronous(std::string_view name);
// "off", "normal", "full" or "extra": the name ParseSqliteSynchronous reads back.
std::string_view SqliteSynchronousName(SqliteSynchronous synchronous);

struct SqliteStoreOptions {
  // Path of the database file; created if absent.
  std::string path;
  // PRAGMA synchronous. FULL survives power loss; NORMAL (WAL) survives a process crash.
  SqliteSynchronous synchronous = SqliteSynchronous::kFull;
  // How long a writer waits for another process's lock before the call fails with Unavailable.
  std::chrono::milliseconds busy_timeout{5'000};
  // Retention of COMPLETED records when Complete does not say.
  std::chrono::milliseconds retention = kDefaultRetention;
  std::size_t max_id_bytes = kDefaultMaxIdBytes;
  // Time source; nullptr means SystemClock() (wall clock, shared by processes). Not owned.
  Clock* clock = nullptr;
  // Fencing token source; nullptr means a random source. Tokens must be non-zero, unique per claim.
  // Called under the store's lock: REQUIRES it does not call back into an idem store.
  std::function<uint64_t()> token_source;
  // Group commit (docs/design.md, "Group commit"): the most concurrent Claim and Complete calls
  // written in one transaction, 1..1024. Calls that arrive while a transaction is written queue
  // and go together in the next one; a call alone is written at once, as with 1 (every call in a
  // transaction of its own). The default suits every number of consumer threads: with one
  // there is never a group, with many each commit (and its fsync) carries up to 64 calls.
  std::size_t group_limit = 64;
};

// Opens (creating or migrating the schema forward) the database at options.path.
// Errors: InvalidArgument (bad options), Unavailable (cannot open or locked), FailedPrecondition
// (the file holds a newer schema than this build knows), DataLoss (corrupt file).
[[nodiscard]] absl::StatusOr<std::unique_ptr<DedupStore>> NewSqliteStore(
    SqliteStoreOptions options);

// Parses sqlite:///absolute/path.db or sqlite:relative/path.db (percent-decoded) with options
// ?synchronous=off|normal|full|extra&busy_timeout_ms=N&retention_ms=N&max_id_bytes=N&group_limit=N
// (group_limit: 1..1024, SqliteStoreOptions::group_limit).
// InvalidArgument for anything else; the error never repeats the URI.
[[nodiscard]] absl::StatusOr<SqliteStoreOptions> ParseSqliteUri(std::string_view uri);

// ParseSqliteUri, then NewSqliteStore with `options`' clock and token source. Called by OpenStore
// for sqlite: URIs.
[[nodiscard]] absl::StatusOr<std::unique_ptr<DedupStore>> OpenSqliteStoreFromUri(
    std::string_view uri, const OpenOptions& options = {});

// The schema version this build writes.
int SqliteSchemaVersion();

using SqliteHandler = absl::FunctionRef<void(sqlite3* db, HandlerContext& context)>;

struct SqliteTransactionalOptions {
  std::chrono::milliseconds retention = kDefaultRetention;
  std::size_t max_id_bytes = kDefaultMaxIdBytes;
  bool fingerprint_payloads = true;
  Clock* clock = nullptr;  // nullptr: SystemClock()
  // 0: unlimited. Otherwise a message whose handler was started this many times without
  // committing (it threw, or its process died) yields kDeadLettered and is not run again, as in
  // lease mode. Each delivery then records its attempt in a short transaction of its own,
  // committed before the handler's transaction, so that the count survives the rollback of a
  // throwing handler and a crash; the effect still commits in one transaction. That costs one
  // more commit per processed message. With 0 a failed run leaves no trace and the next run is
  // attempt 1 again.
  uint32_t max_attempts = 0;
};

// Transactional mode on a caller's connection (docs/design.md, "Modes"): I2 exactly-once effect
// for the handler's writes on `db`.
class SqliteTransactional {
 public:
  // Creates (or migrates) the idem tables in `db`'s main database and prepares the statements
  // once. The schema version lives in the idem_meta table: the caller's PRAGMA user_version and
  // the connection's settings (journal mode, busy timeout) stay the caller's. `db` is not owned
  // and must outlive this object. REQUIRES: `db` is not inside a transaction.
  // Errors: InvalidArgument (bad scope or options), FailedPrecondition (inside a transaction, or
  // a newer idem schema), Unavailable (locked), DataLoss (corrupt file).
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<SqliteTransactional>> Create(
      sqlite3* db, std::string scope, SqliteTransactionalOptions options = {});
  virtual ~SqliteTransactional() = default;

  // BEGIN IMMEDIATE; insert the dedup row; check the version gate; run `handler(db, context)`;
  // raise the version; COMMIT. Returns kProcessed after the commit; kDuplicate, kStale,
  // kConflict, kInProgress (a live lease-mode claim holds the id) or, with max_attempts,
  // kDeadLettered after a rollback with the handler not run. With max_attempts the attempt is
  // first counted and committed on its own (the record is RELEASED until the effect commits). A
  // store error rolls back and returns a status (Unavailable when busy: the wait is the
  // connection's busy timeout, none unless the caller set one). A handler exception rolls back and
  // propagates unchanged. Also FailedPrecondition, with nothing applied: `db` was already inside a
  // transaction, or COMMIT failed on the handler's writes (a deferred constraint). If the handler
  // itself ends the transaction (COMMIT or ROLLBACK on `db`), the result is FailedPrecondition and
  // neither the version nor the result was recorded.
  [[nodiscard]] virtual absl::StatusOr<ProcessResult> Process(const Message& message,
                                                              SqliteHandler handler) = 0;
};

}  // namespace idem

#endif  // IDEM_SQLITE_STORE_H_

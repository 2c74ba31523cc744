// Private helpers of the SQLite backend, shared by the lease-mode store and transactional mode:
// owned handles, the one mapping from SQLite result codes to absl::Status, a statement runner
// that binds ids as BLOBs, a write-transaction guard, the schema and its migrations, and the
// encodings of versions, tokens and record states.
//
// Thread-safety: none of these types lock; a connection and its statements are used by one
// thread at a time (the store serialises on its mutex).
#ifndef IDEM_BACKENDS_SQLITE_SRC_SQLITE_INTERNAL_H_
#define IDEM_BACKENDS_SQLITE_SRC_SQLITE_INTERNAL_H_

#include <sqlite3.h>

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "idem/sqlite_store.h"
#include "idem/store.h"
#include "idem/types.h"

namespace idem::internal {

struct SqliteCloser {
  void operator()(sqlite3* db) const noexcept { sqlite3_close_v2(db); }
};
struct SqliteFinalizer {
  void operator()(sqlite3_stmt* stmt) const noexcept { sqlite3_finalize(stmt); }
};
using SqliteDb = std::unique_ptr<sqlite3, SqliteCloser>;
using SqliteStmt = std::unique_ptr<sqlite3_stmt, SqliteFinalizer>;

// The one place where a SQLite result code becomes a status. `rc` is an extended code; the
// message names `operation` and SQLite's description, never ids or payloads (they are bound
// parameters, so SQLite's own messages cannot contain them either).
//   BUSY, LOCKED, CANTOPEN, IOERR, PROTOCOL, SCHEMA -> Unavailable (retry the call)
//   CORRUPT, NOTADB                                  -> DataLoss
//   FULL, NOMEM                                      -> ResourceExhausted
//   READONLY                                         -> FailedPrecondition
//   PERM, AUTH                                       -> PermissionDenied
//   INTERRUPT                                        -> Cancelled
//   TOOBIG, RANGE, MISMATCH                          -> InvalidArgument
//   CONSTRAINT                                       -> FailedPrecondition
//   anything else                                    -> Internal
// idem's own statements never fail a constraint: a clash on (scope, id) is an upsert's outcome.
// A CONSTRAINT code can only come from a transactional handler's own writes (a deferred foreign
// key failing at COMMIT): the caller's data must be fixed first.
// `db` may be null (then only the code's generic description is used).
[[nodiscard]] absl::Status SqliteStatus(int rc, sqlite3* db, std::string_view operation);

// "PRAGMA synchronous = <NAME>": the one place the setting becomes SQL, for the store's
// connection and for any other connection idem opens (the simulator's).
std::string SynchronousPragma(SqliteSynchronous synchronous);

// Prepares `sql` once, for repeated use (SQLITE_PREPARE_PERSISTENT).
[[nodiscard]] absl::StatusOr<SqliteStmt> Prepare(sqlite3* db, std::string_view sql);

// Runs sqlite3_exec over `sql` (DDL and pragmas; never with user data).
[[nodiscard]] absl::Status Exec(sqlite3* db, const char* sql, std::string_view operation);

// One use of a prepared statement: binds, steps, reads columns; resets it and clears its
// bindings when destroyed, so no bound pointer outlives the call that bound it.
// `operation` and `step` name the statement in error messages ("claim: read record"); they are
// views, joined only when an error is reported, so they must outlive the run (string literals
// or the caller's arguments).
class StmtRun {
 public:
  StmtRun(sqlite3_stmt* stmt, std::string_view operation, std::string_view step = {})
      : stmt_(stmt), operation_(operation), step_(step) {}
  StmtRun(const StmtRun&) = delete;
  StmtRun& operator=(const StmtRun&) = delete;
  ~StmtRun() noexcept {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }

  StmtRun& Text(int index, std::string_view value);
  // Binary-safe: NUL and 0xFF are ordinary bytes, and an empty value stays an empty BLOB
  // (sqlite3_bind_blob with a null pointer would bind NULL instead). Bound without a copy
  // (SQLITE_STATIC): `value` must outlive the run.
  StmtRun& Blob(int index, std::string_view value);
  StmtRun& OptionalBlob(int index, const std::optional<std::string_view>& value);
  StmtRun& Int64(int index, int64_t value);
  StmtRun& Null(int index);

  // True when a row is available, false when the statement is done.
  [[nodiscard]] absl::StatusOr<bool> Step();
  // Steps until done, ignoring rows.
  [[nodiscard]] absl::Status Run();

  int64_t ColumnInt64(int column) const { return sqlite3_column_int64(stmt_, column); }
  bool ColumnIsNull(int column) const { return sqlite3_column_type(stmt_, column) == SQLITE_NULL; }
  // The column's bytes (a zero-length BLOB gives ""), or nullopt for NULL.
  std::optional<std::string> ColumnBlob(int column) const;

 private:
  void Check(int rc) {
    if (rc != SQLITE_OK && bind_rc_ == SQLITE_OK) bind_rc_ = rc;
  }
  [[nodiscard]] absl::Status Error(int rc, std::string_view suffix) const;

  sqlite3_stmt* stmt_;
  std::string_view operation_;  // for error messages
  std::string_view step_;
  int bind_rc_ = SQLITE_OK;
};

// Statements both modes use: the row of an id, a key's applied version, and raising it.
//   select row: ?1 scope ?2 id   select version: ?1 scope ?2 key   raise: ?1 scope ?2 key ?3
//   version
inline constexpr char kSelectRowSql[] = R"sql(
SELECT status, token, lease_until, attempts, fingerprint, result, expires_at, claim_origin
FROM idem_dedup WHERE scope = ?1 AND id = ?2
)sql";
inline constexpr char kSelectVersionSql[] =
    "SELECT version FROM idem_versions WHERE scope = ?1 AND key = ?2";
// The raise changed a row (sqlite3_changes() == 1) only if it inserted or raised the version.
inline constexpr char kRaiseVersionSql[] = R"sql(
INSERT INTO idem_versions(scope, key, version) VALUES(?1, ?2, ?3)
ON CONFLICT(scope, key) DO UPDATE SET version = excluded.version
WHERE excluded.version > idem_versions.version
)sql";

// The one rule for taking a held dedup row, as the ON CONFLICT clause of an upsert: lease mode's
// claim, and transactional mode's attempt record and completion, append it to their INSERT of the
// new row, whose VALUES supply status, token, lease_until, expires_at and fingerprint (SQLite's
// `excluded`). The statement's own WHERE decides, so a takeover is one statement and no write
// depends on an earlier read. A row is taken only when
//  - its fingerprint does not conflict with the new one (a conflict holds whatever the state), and
//  - it is COMPLETED past its retention (the id is new again: attempts restart at 1), or
//  - it is RELEASED, or IN_PROGRESS with an ended lease, and below max_attempts (attempts + ?11).
// This matches ClassifyHeld, which answers every row the clause does not take.
// All SET expressions see the replaced row; claim_origin records its state for a later read,
// which sees only the new row.
//   ?9 now (ms)  ?10 max_attempts (0: unlimited)
//   ?11 what the takeover adds to attempts: 1 counts this attempt, 0 when an earlier committed
//       write already counted it (transactional mode with max_attempts)
inline constexpr char kOnConflictTakeOver[] = R"sql(
ON CONFLICT(scope, id) DO UPDATE SET
  status = excluded.status,
  token = excluded.token,
  lease_until = excluded.lease_until,
  expires_at = excluded.expires_at,
  attempts = CASE WHEN idem_dedup.status = 2 THEN 1 ELSE idem_dedup.attempts + ?11 END,
  fingerprint = CASE WHEN idem_dedup.status = 2 THEN excluded.fingerprint
                     ELSE coalesce(idem_dedup.fingerprint, excluded.fingerprint) END,
  result = NULL,
  claim_origin = CASE idem_dedup.status WHEN 2 THEN 3 WHEN 1 THEN 1 ELSE 2 END
WHERE NOT (excluded.fingerprint IS NOT NULL AND idem_dedup.fingerprint IS NOT NULL
           AND idem_dedup.fingerprint <> excluded.fingerprint)
  AND ((idem_dedup.status = 2 AND idem_dedup.expires_at <= ?9)
       OR ((idem_dedup.status = 1
            OR (idem_dedup.status = 0 AND idem_dedup.lease_until <= ?9))
           AND (?10 = 0 OR idem_dedup.attempts < ?10)))
)sql";
// The ON CONFLICT clause of a plain insert: an id already held is left alone, and
// sqlite3_changes() says whether the row was inserted.
inline constexpr char kOnConflictDoNothing[] = "ON CONFLICT(scope, id) DO NOTHING\n";

// BEGIN IMMEDIATE / COMMIT / ROLLBACK, prepared once per connection.
struct TxnStatements {
  SqliteStmt begin_immediate;
  SqliteStmt commit;
  SqliteStmt rollback;
};
[[nodiscard]] absl::StatusOr<TxnStatements> PrepareTxnStatements(sqlite3* db);

// A write transaction: BEGIN IMMEDIATE takes the write lock up front (waiting up to the busy
// timeout), so a transaction never fails half-way on a lock upgrade. Rolls back in its noexcept
// destructor unless committed, so an exception or an early return leaves nothing behind.
class WriteTxn {
 public:
  WriteTxn(sqlite3* db, const TxnStatements& statements) : db_(db), statements_(statements) {}
  WriteTxn(const WriteTxn&) = delete;
  WriteTxn& operator=(const WriteTxn&) = delete;
  ~WriteTxn() noexcept { Rollback(); }

  [[nodiscard]] absl::Status Begin(std::string_view operation);
  // On failure the transaction is rolled back (by SQLite or by this guard).
  [[nodiscard]] absl::Status Commit(std::string_view operation);
  // Idempotent; a no-op when SQLite already ended the transaction (some errors roll back).
  void Rollback() noexcept;

 private:
  sqlite3* db_;
  const TxnStatements& statements_;
  bool active_ = false;
};

// Schema: version 1 holds the three tables; version 2 adds idem_dedup.claim_origin. The version
// lives in the idem_meta table, not PRAGMA user_version, because transactional mode shares the
// caller's database, whose user_version belongs to the caller.
inline constexpr int kSchemaVersion = 2;
// Creates or migrates the idem tables forward, in one BEGIN IMMEDIATE transaction (safe when
// several processes open the file at once). FailedPrecondition for a newer schema.
// REQUIRES: `db` is not inside a transaction.
[[nodiscard]] absl::Status EnsureSchema(sqlite3* db);

// idem_dedup.status values.
inline constexpr int kStatusInProgress = 0;
inline constexpr int kStatusReleased = 1;
inline constexpr int kStatusCompleted = 2;

// idem_dedup.claim_origin: how the current claim was obtained, set by the takeover upsert from
// the row it replaced. Reading the row after the upsert (or RETURNING) sees only the new row,
// and a takeover must stay one statement, so the replaced state is carried in this column
// rather than read first.
inline constexpr int kOriginFresh = 0;      // no record before
inline constexpr int kOriginReleased = 1;   // a released record claimed again
inline constexpr int kOriginTakeover = 2;   // an IN_PROGRESS record with an expired lease
inline constexpr int kOriginRetention = 3;  // a COMPLETED record past its retention

// Versions are 8-byte big-endian BLOBs: SQLite compares BLOBs with memcmp, so BLOB order is
// unsigned order over the whole uint64 range (an INTEGER column is signed and would put 2^63
// below 0).
std::string EncodeVersion(uint64_t version);
// DataLoss unless `bytes` is 8 bytes.
[[nodiscard]] absl::StatusOr<uint64_t> DecodeVersion(std::string_view bytes);

// A fingerprint's 16 stored bytes (Fingerprint::ToBytes), on the stack: bound with
// SQLITE_STATIC on the hot path, where a std::string would allocate.
using FingerprintBytes = std::array<char, 16>;
FingerprintBytes EncodeFingerprint(const Fingerprint& fingerprint);
inline std::string_view AsView(const FingerprintBytes& bytes) {
  return std::string_view(bytes.data(), bytes.size());
}

// Tokens are stored as the int64 with the same bit pattern.
inline int64_t TokenToSql(uint64_t token) { return static_cast<int64_t>(token); }
inline uint64_t TokenFromSql(int64_t value) { return static_cast<uint64_t>(value); }

// The columns of idem_dedup that classify a claim that was not acquired, and say how one that
// was taken over was obtained.
struct DedupRow {
  int status = kStatusInProgress;
  uint64_t token = 0;
  int64_t lease_until = 0;
  uint32_t attempts = 0;
  std::optional<std::string> fingerprint;
  std::optional<std::string> result;
  int64_t expires_at = 0;
  int claim_origin = kOriginFresh;
};

// Reads the row of (scope, id) with `select_row`, a statement prepared from kSelectRowSql;
// nullopt when there is none. `operation` names it in error messages.
[[nodiscard]] absl::StatusOr<std::optional<DedupRow>> ReadRow(sqlite3_stmt* select_row,
                                                              std::string_view scope,
                                                              std::string_view id,
                                                              std::string_view operation);

// The outcome a held record gives a claim before the version gate is consulted, in the order of
// the contract: conflict, duplicate, in progress. nullopt when none applies (the record is
// claimable, or only the version gate or max_attempts can refuse it).
std::optional<ClaimResult> ClassifyHeld(const DedupRow& row,
                                        std::optional<std::string_view> request_fingerprint,
                                        int64_t now);

}  // namespace idem::internal

#endif  // IDEM_BACKENDS_SQLITE_SRC_SQLITE_INTERNAL_H_

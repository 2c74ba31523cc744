// The PostgreSQL backend: the dedup log in the database that consumers on many hosts already share.
//
// Tables (in `schema`, names prefixed by `table_prefix`, default "idem_"):
//   <prefix>dedup     PRIMARY KEY(scope, id), ids as bytea: the dedup records
//   <prefix>versions  PRIMARY KEY(scope, key): the version gate; versions are 8-byte big-endian
//                     bytea, so bytea order is unsigned order over the whole uint64 range
//   <prefix>attempts  attempt counts of transactional mode, committed apart from its transaction
//   <prefix>meta      the schema version; opening migrates an older schema forward
// Creation and migration run under a transaction-scoped advisory lock, so several processes may
// open a fresh database at once.
//
// Lease mode (NewPostgresStore): a claim is one INSERT … ON CONFLICT … DO UPDATE … WHERE whose own
// WHERE decides a takeover (never read-then-write), pipelined with the read that classifies a
// refused claim, in one round trip. Leases are measured by the server's clock_timestamp(), never
// the consumer's. Complete, Release and Extend are fenced by the token; a completion raises the
// key's version in the same statement. Batches go in one round trip (libpq pipeline mode) and one
// transaction. Serialization failures and deadlocks (40001, 40P01) are retried a few times, then
// returned as Unavailable.
//
// Transactional mode (PostgresTransactional): the dedup row, the handler's writes on the caller's
// PGconn and the version gate commit once, in the caller's transaction (inside a savepoint) or in
// one of its own.
//
// Status codes, from the server's SQLSTATE:
//   Unavailable        connection lost or refused, server shutting down or in recovery, too many
//                      connections, 40001/40P01 after retries, lock timeouts (lease mode)
//   DeadlineExceeded   statement_timeout cancelled a statement (57014)
//   FailedPrecondition schema mismatch (a newer idem schema, a missing table), read-only server
//   PermissionDenied   authentication or privilege failure
//   InvalidArgument    bad options or URI; a data exception from the handler's own writes
//   DataLoss           the server reports corruption, or a stored value has the wrong shape
//   Internal           any other server error
// Messages carry the server's primary message and SQLSTATE, never ids, payloads or a password.
//
// Thread-safety: a store from NewPostgresStore is safe for concurrent use; it keeps a pool of
// connections, one per concurrent call, and replaces connections found broken (after a server
// restart). A PostgresTransactional uses the caller's connection and is as thread-safe as that
// connection: one thread at a time.
#ifndef IDEM_POSTGRES_STORE_H_
#define IDEM_POSTGRES_STORE_H_

#include <chrono>
#include <cstddef>
#include <cstdint>
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

// libpq's connection handle (libpq-fe.h); declared here so that users need not include libpq.
typedef struct pg_conn PGconn;

namespace idem {

struct PostgresStoreOptions {
  // A libpq connection string: a postgresql:// URI or "key=value" pairs, as libpq accepts them
  // (host, port, user, password, dbname, sslmode, connect_timeout, …). Holds the password if
  // there is one: never log it (RedactUri shows a URI without it).
  std::string conninfo;
  // Schema of idem's tables; created if absent. [A-Za-z_][A-Za-z0-9_]{0,47}.
  std::string schema = "public";
  // Prefix of idem's table names. [A-Za-z_][A-Za-z0-9_]{0,39}.
  std::string table_prefix = "idem_";
  // Most connections open at once; a call waits for a free one beyond that. 1..1024.
  std::size_t pool_size = 8;
  // Group commit (docs/design.md, "Group commit"): the most concurrent Claim calls (and,
  // separately, Complete calls) written in one pipelined transaction, 1..1024. Calls that arrive
  // while a transaction is in flight queue and go together in the next one; a call alone is
  // written at once, as with 1 (every call a transaction of its own).
  std::size_t group_limit = 64;
  // Unnamed statements (parsed on every call) instead of statements prepared once per connection:
  // needed behind pgbouncer in transaction pooling mode, which keeps no named prepared statements.
  bool unnamed_statements = false;
  // Retention of COMPLETED records when Complete does not say.
  std::chrono::milliseconds retention = kDefaultRetention;
  std::size_t max_id_bytes = kDefaultMaxIdBytes;
  // Fencing token source; empty: a random source. Tokens must be non-zero and unique per claim.
  std::function<uint64_t()> token_source;
  // Receives configuration warnings (e.g. synchronous_commit = off). Empty: stderr.
  std::function<void(std::string_view)> warning;
};

// Connects, creates or migrates the schema forward, and returns the store.
// Errors: InvalidArgument (bad options or conninfo), Unavailable (cannot connect),
// PermissionDenied (authentication), FailedPrecondition (a newer idem schema).
[[nodiscard]] absl::StatusOr<std::unique_ptr<DedupStore>> NewPostgresStore(
    PostgresStoreOptions options);

// Parses a postgresql:// or postgres:// URI as libpq does, plus idem's own query options:
//   table_prefix=P  schema=S  pool_size=N  group_limit=N (1..1024)  unnamed_statements=0|1
//   retention_ms=N  max_id_bytes=N
// Every other query option must be a libpq connection keyword (sslmode, connect_timeout,
// application_name, host=/unix/socket/dir, …). InvalidArgument (never quoting the password or
// an option value) when the URI is malformed or names an unknown option.
[[nodiscard]] absl::StatusOr<PostgresStoreOptions> ParsePostgresUri(std::string_view uri);

// The URI opener of OpenStore: ParsePostgresUri, then NewPostgresStore with `options.warning` and
// `options.token_source` (the clock is ignored: leases follow the server's clock).
[[nodiscard]] absl::StatusOr<std::unique_ptr<DedupStore>> OpenPostgresStoreFromUri(
    std::string_view uri, const OpenOptions& options = {});

// The schema version this build writes.
int PostgresSchemaVersion();

using PostgresHandler = absl::FunctionRef<void(PGconn* conn, HandlerContext& context)>;

struct PostgresTransactionalOptions {
  std::string schema = "public";
  std::string table_prefix = "idem_";
  std::chrono::milliseconds retention = kDefaultRetention;
  std::size_t max_id_bytes = kDefaultMaxIdBytes;
  bool fingerprint_payloads = true;
  // How long Process waits for a row lock held by a concurrent delivery of the same id (or of the
  // same version key) before it answers kInProgress. 1 ms .. 1 h.
  std::chrono::milliseconds lock_timeout{2'000};
  // 0: unlimited. Otherwise a delivery whose id already had this many attempts is kDeadLettered
  // without running the handler. Attempts are counted on a second connection (opened with the
  // caller's connection parameters) and committed before the handler runs, so that a rollback,
  // a crash or a SIGKILL cannot erase them.
  uint32_t max_attempts = 0;
  bool unnamed_statements = false;
  // Fencing token source for HandlerContext::token(); empty: random.
  std::function<uint64_t()> token_source;
};

// Transactional mode on a caller's connection: exactly-once effect for the handler's writes on
// `conn`.
class PostgresTransactional {
 public:
  // Creates or migrates idem's tables (on `conn`, which must be outside a transaction) and, when
  // max_attempts > 0, opens the attempts connection. `conn` is not owned and must outlive this.
  // Errors: InvalidArgument (bad scope or options), FailedPrecondition (inside a transaction, a
  // newer schema), Unavailable (connection problems).
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<PostgresTransactional>> Create(
      PGconn* conn, std::string scope, PostgresTransactionalOptions options = {});
  virtual ~PostgresTransactional() = default;

  // Outside a transaction: BEGIN … COMMIT of its own. Inside the caller's transaction: a
  // SAVEPOINT, released on success (the caller's COMMIT makes everything durable) and rolled
  // back to otherwise, leaving the caller's transaction usable.
  //
  // In one round trip: insert the dedup row (or take over a record a lease-mode consumer left
  // claimable), raise the key's version, and read what holds the id if the insert was refused.
  // Then `handler(conn, context)`, then the result and COMMIT (or RELEASE) in one round trip.
  // Returns kProcessed after the commit; kDuplicate, kStale, kConflict, kDeadLettered or
  // kInProgress (a concurrent delivery of the id or of its version key held the row lock past
  // lock_timeout, or a live lease-mode claim holds it) after a rollback, handler not run.
  // A handler exception rolls back and propagates unchanged. FailedPrecondition, nothing applied,
  // if `conn` was in a failed transaction, if the handler ended the transaction or left it failed
  // (a statement error), or COMMIT failed on the handler's writes (a deferred constraint).
  // Unavailable for connection problems, serialization failures and deadlocks: retry.
  [[nodiscard]] virtual absl::StatusOr<ProcessResult> Process(const Message& message,
                                                              PostgresHandler handler) = 0;
};

}  // namespace idem

#endif  // IDEM_POSTGRES_STORE_H_

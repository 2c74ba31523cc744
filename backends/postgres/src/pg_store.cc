// The lease-mode PostgreSQL store.
//
// Connection strategy: a pool of connections, one per concurrent call (PostgreSQL runs each
// connection in its own backend process, so unlike SQLite, connections do write in parallel).
// A connection is checked before use: one whose socket shows the server closed it (a restart) is
// replaced, so a restart costs at most the calls that were in flight. A call whose connection
// fails mid-way returns Unavailable and its connection is discarded: what the server did with
// the call is unknown, so it is never silently retried.
//
// Every operation is one pipeline: its statements, one Sync, one round trip, one implicit
// transaction. Serialization failures and deadlocks (40001, 40P01) roll that transaction back
// entirely, so the call is retried a few times before Unavailable.
#include <libpq-fe.h>
#include <poll.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <numeric>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "idem/postgres_store.h"
#include "internal/owner.h"
#include "internal/store_counters.h"
#include "internal/strings.h"
#include "internal/token.h"
#include "internal/list_cursor.h"
#include "internal/write_queue.h"
#include "pg_admin.h"
#include "pg_internal.h"

namespace idem {
namespace {

using internal::pg::ArrayBuilder;
using internal::pg::Call;
using internal::pg::DedupRow;
using internal::pg::GetBytea;
using internal::pg::GetInt2;
using internal::pg::GetInt4;
using internal::pg::GetInt8;
using internal::pg::IsNull;
using internal::pg::kByteaArrayOid;
using internal::pg::kByteaOid;
using internal::pg::kInt4Oid;
using internal::pg::kInt8ArrayOid;
using internal::pg::kInt8Oid;
using internal::pg::kTextArrayOid;
using internal::pg::kTextOid;
using internal::pg::Params;
using internal::pg::PgConnPtr;
using internal::pg::PgResultPtr;
using internal::pg::Statement;
using internal::pg::StatementMode;
using internal::pg::TokenToSql;

// Appends a version stamp to a batch's key and version columns (its key, its 8-byte big-endian
// version), or a NULL to each when the entry has none.
void AppendVersion(const std::optional<VersionStamp>& version, ArrayBuilder& keys,
                   ArrayBuilder& versions) {
  if (version) {
    keys.Bytes(version->key);
    versions.Bytes(internal::pg::EncodeVersion(version->version));
  } else {
    keys.Null();
    versions.Null();
  }
}

// The claim: insert a fresh IN_PROGRESS record, or take over one that is claimable, decided by the
// upsert's own WHERE: no fingerprint conflict, and either COMPLETED past its retention (a fresh
// claim, attempts 1) or RELEASED / IN_PROGRESS with an expired lease below max_attempts
// (attempts + 1). The version gate is the insert's own WHERE: a stale request inserts nothing and
// updates nothing. claim_origin records the state replaced (RETURNING sees only the new row).
//   $1 scope  $2 id  $3 token  $4 lease ms  $5 fingerprint  $6 retention ms  $7 max_attempts
//   $8 version key (NULL: none)  $9 version
constexpr char kClaimSql[] = R"sql(
INSERT INTO {dedup} AS d (scope, id, status, token, lease_until, attempts, fingerprint, result,
                          expires_at, claim_origin)
SELECT $1, $2, 0, $3, n.now + $4, 1, $5, NULL, n.now + $4 + $6, 0
FROM (SELECT {now} AS now) AS n
WHERE $8::bytea IS NULL OR NOT EXISTS (
  SELECT 1 FROM {versions} AS v WHERE v.scope = $1 AND v.key = $8 AND v.version >= $9)
ON CONFLICT (scope, id) DO UPDATE SET
  status = 0,
  token = excluded.token,
  lease_until = excluded.lease_until,
  expires_at = excluded.expires_at,
  attempts = CASE WHEN d.status = 2 THEN 1 ELSE d.attempts + 1 END,
  fingerprint = CASE WHEN d.status = 2 THEN excluded.fingerprint
                     ELSE coalesce(d.fingerprint, excluded.fingerprint) END,
  result = NULL,
  claim_origin = CASE d.status WHEN 2 THEN 3 WHEN 1 THEN 1 ELSE 2 END
WHERE NOT (excluded.fingerprint IS NOT NULL AND d.fingerprint IS NOT NULL
           AND d.fingerprint <> excluded.fingerprint)
  AND ((d.status = 2 AND d.expires_at <= {now})
       OR ((d.status = 1 OR (d.status = 0 AND d.lease_until <= {now}))
           AND ($7 = 0 OR d.attempts < $7)))
RETURNING attempts, claim_origin, lease_until
)sql";

// The classifying read, pipelined after the claim in the same transaction: a new snapshot, so it
// sees the row that refused the claim even when that row was inserted concurrently (the upsert
// waited for it to commit). One row always: the server's now, the record (or NULLs), the version.
//   $1 scope  $2 id  $3 version key (NULL: none)
constexpr char kClassifySql[] = R"sql(
SELECT n.now, d.status, d.token, d.lease_until, d.attempts, d.fingerprint, d.result,
       d.expires_at, v.version
FROM (SELECT {now} AS now) AS n
LEFT JOIN {dedup} AS d ON d.scope = $1 AND d.id = $2
LEFT JOIN {versions} AS v ON v.scope = $1 AND v.key = $3
)sql";

// Completion and version gate in one statement: the version is raised only if the fenced update
// matched. Returns (completed rows, raised rows).
//   $1 scope  $2 id  $3 token  $4 retention ms  $5 result  $6 fingerprint  $7 key  $8 version
constexpr char kCompleteSql[] = R"sql(
WITH c AS (
  UPDATE {dedup} SET status = 2, lease_until = 0, expires_at = {now} + $4,
    result = coalesce($5, result), fingerprint = coalesce(fingerprint, $6)
  WHERE scope = $1 AND id = $2 AND status = 0 AND token = $3
  RETURNING 1),
v AS (
  INSERT INTO {versions} AS x (scope, key, version)
  SELECT $1, $7, $8 FROM c WHERE $7::bytea IS NOT NULL
  ON CONFLICT (scope, key) DO UPDATE SET version = excluded.version
  WHERE x.version < excluded.version
  RETURNING 1)
SELECT (SELECT count(*) FROM c)::int8, (SELECT count(*) FROM v)::int8
)sql";

// A completion without a version key: the same fenced update without the version gate's CTE, the
// cheaper statement for the common case (the server plans and runs one UPDATE). A row: completed.
//   $1 scope  $2 id  $3 token  $4 retention ms  $5 result  $6 fingerprint
constexpr char kCompleteUngatedSql[] = R"sql(
UPDATE {dedup} SET status = 2, lease_until = 0, expires_at = {now} + $4,
  result = coalesce($5, result), fingerprint = coalesce(fingerprint, $6)
WHERE scope = $1 AND id = $2 AND status = 0 AND token = $3
RETURNING 1
)sql";

//   $1 scope  $2 id  $3 token  $4 retention ms
constexpr char kReleaseSql[] = R"sql(
UPDATE {dedup} SET status = 1, lease_until = 0, expires_at = {now} + $4
WHERE scope = $1 AND id = $2 AND status = 0 AND token = $3
RETURNING 1
)sql";

//   $1 scope  $2 id  $3 token  $4 lease ms  $5 retention ms
constexpr char kExtendSql[] = R"sql(
UPDATE {dedup} AS d SET lease_until = n.now + $4, expires_at = n.now + $4 + $5
FROM (SELECT {now} AS now) AS n
WHERE d.scope = $1 AND d.id = $2 AND d.status = 0 AND d.token = $3
RETURNING d.lease_until
)sql";

// Live claims are never purged, whatever their expires_at. Expired attempt counts of
// transactional mode go in the same transaction. $1 limit (NULL: none).
constexpr char kPurgeSql[] = R"sql(
WITH gone AS (
  DELETE FROM {dedup} WHERE (scope, id) IN (
    SELECT scope, id FROM {dedup}
    WHERE expires_at <= {now} AND NOT (status = 0 AND lease_until > {now})
    ORDER BY expires_at LIMIT $1)
  RETURNING 1),
attempts AS (
  DELETE FROM {attempts} WHERE (scope, id) IN (
    SELECT scope, id FROM {attempts} WHERE expires_at <= {now} ORDER BY expires_at LIMIT $1))
SELECT count(*)::int8 FROM gone
)sql";

constexpr char kVersionSql[] = "SELECT version FROM {versions} WHERE scope = $1 AND key = $2";

constexpr char kInspectSql[] = R"sql(
SELECT status, token, lease_until, attempts, fingerprint, result, expires_at
FROM {dedup} WHERE scope = $1 AND id = $2
)sql";

// The classifying read of a single claim also says how to commit: a refused claim wrote nothing
// but the row lock its ON CONFLICT DO UPDATE took, and waiting for that to reach the disk would
// cost a refused claim (a duplicate, most often) a WAL flush that a plain read does not pay. When
// the row does not carry this claim's token, the transaction commits without waiting
// (synchronous_commit is transaction-local here). $4 token.
constexpr char kClassifySingleSql[] = R"sql(
SELECT n.now, d.status, d.token, d.lease_until, d.attempts, d.fingerprint, d.result,
       d.expires_at, v.version,
       CASE WHEN d.token IS DISTINCT FROM $4
            THEN set_config('synchronous_commit', 'off', true) END
FROM (SELECT {now} AS now) AS n
LEFT JOIN {dedup} AS d ON d.scope = $1 AND d.id = $2
LEFT JOIN {versions} AS v ON v.scope = $1 AND v.key = $3
)sql";

// Batches bind one array per column and run one statement for all their entries (the per-entry
// statements above cost the server a bind and an execution each, which dominates a batch). The
// same decisions, row by row:
//
// The claim of a batch: kClaimSql's upsert over the rows of the arrays, in their order (the caller
// sorts them, so that batches lock rows in one order). `excluded` carries every per-entry value
// the takeover's WHERE needs except max_attempts, which is therefore one value per statement
// ($6): a batch mixing several runs one statement per value. No id appears twice in one statement
// (ON CONFLICT DO UPDATE may not touch a row twice): a repeated id goes to a later statement of the
// same transaction, which sees the earlier one's claim.
//
// One row per entry, in the arrays' order: the claim's RETURNING for a claimed entry (columns
// 1-3), else the record and version as of the statement's snapshot (columns 4-12, the layout of
// kClassifySql). That snapshot predates the upsert, so a record inserted concurrently is missing
// from it: the caller classifies such an entry again with kClassifyBatchSql (a new snapshot), and
// likewise one that the snapshot shows claimable. What the snapshot shows held stays held when
// the upsert ran: `now` is read before it, a completed record cannot be replaced before it
// expires, and a lease that was running at `now` was running before the upsert's own clock read.
// Only the refused entries are looked up (the claimed ones need no read), each by its own index
// lookup (LATERAL ... OFFSET 0 cannot become a join over a scan of the table).
//   $1 scope[]  $2 id[]  $3 token[]  $4 lease ms[]  $5 fingerprint[]  $6 max_attempts
//   $7 version key[] (NULL elements: none)  $8 version[]  $9 retention ms
constexpr char kClaimBatchSql[] = R"sql(
WITH i AS (
  SELECT * FROM unnest($1::text[], $2::bytea[], $3::int8[], $4::int8[], $5::bytea[], $7::bytea[],
                       $8::bytea[]) WITH ORDINALITY
    AS i(scope, id, token, lease, fingerprint, vkey, version, ord)),
n AS (SELECT {now} AS now),
c AS (
  INSERT INTO {dedup} AS d (scope, id, status, token, lease_until, attempts, fingerprint, result,
                            expires_at, claim_origin)
  SELECT i.scope, i.id, 0, i.token, n.now + i.lease, 1, i.fingerprint, NULL,
         n.now + i.lease + $9, 0
  FROM i, n
  WHERE i.vkey IS NULL OR NOT EXISTS (
    SELECT 1 FROM {versions} AS v
    WHERE v.scope = i.scope AND v.key = i.vkey AND v.version >= i.version)
  ORDER BY i.ord
  ON CONFLICT (scope, id) DO UPDATE SET
    status = 0,
    token = excluded.token,
    lease_until = excluded.lease_until,
    expires_at = excluded.expires_at,
    attempts = CASE WHEN d.status = 2 THEN 1 ELSE d.attempts + 1 END,
    fingerprint = CASE WHEN d.status = 2 THEN excluded.fingerprint
                       ELSE coalesce(d.fingerprint, excluded.fingerprint) END,
    result = NULL,
    claim_origin = CASE d.status WHEN 2 THEN 3 WHEN 1 THEN 1 ELSE 2 END
  WHERE NOT (excluded.fingerprint IS NOT NULL AND d.fingerprint IS NOT NULL
             AND d.fingerprint <> excluded.fingerprint)
    AND ((d.status = 2 AND d.expires_at <= {now})
         OR ((d.status = 1 OR (d.status = 0 AND d.lease_until <= {now}))
             AND ($6 = 0 OR d.attempts < $6)))
  RETURNING d.scope, d.id, d.attempts, d.claim_origin, d.lease_until),
k AS (
  SELECT r.ord, d.status, d.token, d.lease_until, d.attempts, d.fingerprint, d.result,
         d.expires_at, v.version
  FROM (SELECT * FROM i WHERE NOT EXISTS (
          SELECT 1 FROM c WHERE c.scope = i.scope AND c.id = i.id) OFFSET 0) AS r
  LEFT JOIN LATERAL (
    SELECT * FROM {dedup} AS x WHERE x.scope = r.scope AND x.id = r.id OFFSET 0) AS d ON true
  LEFT JOIN LATERAL (
    SELECT * FROM {versions} AS x WHERE x.scope = r.scope AND x.key = r.vkey OFFSET 0) AS v ON true)
SELECT i.ord::int8, c.attempts, c.claim_origin, c.lease_until,
       n.now, k.status, k.token, k.lease_until, k.attempts, k.fingerprint, k.result, k.expires_at,
       k.version
FROM i CROSS JOIN n
LEFT JOIN c ON c.scope = i.scope AND c.id = i.id
LEFT JOIN k ON k.ord = i.ord
ORDER BY i.ord
)sql";

// The classifying read of the entries of a batch that kClaimBatchSql's snapshot left
// undecided: a statement of its own, after the claim committed, so a new snapshot that sees rows
// inserted concurrently (kClassifySql's reason); one row per entry in the arrays' order.
//   $1 scope[]  $2 id[]  $3 version key[]
constexpr char kClassifyBatchSql[] = R"sql(
SELECT n.now, d.status, d.token, d.lease_until, d.attempts, d.fingerprint, d.result,
       d.expires_at, v.version
FROM unnest($1::text[], $2::bytea[], $3::bytea[]) WITH ORDINALITY AS i(scope, id, vkey, ord)
CROSS JOIN (SELECT {now} AS now) AS n
LEFT JOIN {dedup} AS d ON d.scope = i.scope AND d.id = i.id
LEFT JOIN {versions} AS v ON v.scope = i.scope AND v.key = i.vkey
ORDER BY i.ord
)sql";

// The completions of a batch: kCompleteSql over the rows of the arrays. No id and no version key
// appears twice in one statement (the caller puts a later one in a later statement, keeping the
// order in which the handlers ran). Returns (entry's 1-based position, version raised 0/1) for
// each entry whose fenced update matched; an entry without a row lost its claim.
//   $1 scope[]  $2 id[]  $3 token[]  $4 retention ms[]  $5 result[]  $6 fingerprint[]
//   $7 version key[]  $8 version[]
constexpr char kCompleteBatchSql[] = R"sql(
WITH c AS (
  UPDATE {dedup} AS d SET status = 2, lease_until = 0, expires_at = {now} + i.retention,
    result = coalesce(i.result, d.result), fingerprint = coalesce(d.fingerprint, i.fingerprint)
  FROM unnest($1::text[], $2::bytea[], $3::int8[], $4::int8[], $5::bytea[], $6::bytea[],
              $7::bytea[], $8::bytea[])
       WITH ORDINALITY AS i(scope, id, token, retention, result, fingerprint, vkey, version, ord)
  WHERE d.scope = i.scope AND d.id = i.id AND d.status = 0 AND d.token = i.token
  RETURNING i.ord, i.scope, i.vkey, i.version),
v AS (
  INSERT INTO {versions} AS x (scope, key, version)
  SELECT scope, vkey, version FROM c WHERE vkey IS NOT NULL
  ON CONFLICT (scope, key) DO UPDATE SET version = excluded.version
  WHERE x.version < excluded.version
  RETURNING x.scope, x.key)
SELECT c.ord::int8, CASE WHEN v.key IS NULL THEN 0 ELSE 1 END::int8
FROM c LEFT JOIN v ON v.scope = c.scope AND v.key = c.vkey
)sql";

// Runs first in every batch pipeline. A prepared statement's generic plan is built once, from the
// table statistics of that moment: built while idem's tables were still empty, the array
// statements' joins became a hash join over a sequential scan of the dedup table, kept until the
// next ANALYZE, so a batch cost time in proportion to the table. Within the batch's transaction
// only, the planner is kept to index lookups driven by the arrays (nested loops), whatever the
// statistics say; a plan built under these settings stays the cached one.
constexpr char kIndexPlansSql[] =
    "SELECT set_config('enable_seqscan', 'off', true), set_config('enable_hashjoin', 'off', true), "
    "set_config('enable_mergejoin', 'off', true)";
// The same for the claim statement, whose table lookups are LATERAL already: its other joins are
// between the batch's own rows (the arrays, the upsert's RETURNING), where a hash join is right.
constexpr char kIndexScansSql[] = "SELECT set_config('enable_seqscan', 'off', true)";

struct Statements {
  Statement claim, classify, classify_single, complete, release, extend, purge, version, inspect;
  Statement complete_ungated, index_plans, index_scans, claim_batch, classify_batch, complete_batch;

  std::vector<const Statement*> All() const {
    return {&claim,       &classify,    &classify_single, &complete,       &complete_ungated,
            &release,     &extend,      &purge,           &version,        &inspect,
            &index_plans, &index_scans, &claim_batch,     &classify_batch, &complete_batch};
  }
};

Statements MakeStatements(const internal::pg::Tables& t) {
  auto make = [&](const char* name, const char* sql, std::vector<Oid> types) {
    return Statement{.name = absl::StrCat(internal::pg::kStatementPrefix, name),
                     .sql = internal::pg::Expand(sql, t),
                     .types = std::move(types)};
  };
  return Statements{
      .claim = make("claim", kClaimSql,
                    {kTextOid, kByteaOid, kInt8Oid, kInt8Oid, kByteaOid, kInt8Oid, kInt4Oid,
                     kByteaOid, kByteaOid}),
      .classify = make("classify", kClassifySql, {kTextOid, kByteaOid, kByteaOid}),
      .classify_single =
          make("classify_single", kClassifySingleSql, {kTextOid, kByteaOid, kByteaOid, kInt8Oid}),
      .complete = make(
          "complete", kCompleteSql,
          {kTextOid, kByteaOid, kInt8Oid, kInt8Oid, kByteaOid, kByteaOid, kByteaOid, kByteaOid}),
      .release = make("release", kReleaseSql, {kTextOid, kByteaOid, kInt8Oid, kInt8Oid}),
      .extend = make("extend", kExtendSql, {kTextOid, kByteaOid, kInt8Oid, kInt8Oid, kInt8Oid}),
      .purge = make("purge", kPurgeSql, {kInt8Oid}),
      .version = make("version", kVersionSql, {kTextOid, kByteaOid}),
      .inspect = make("inspect", kInspectSql, {kTextOid, kByteaOid}),
      .complete_ungated = make("complete_ungated", kCompleteUngatedSql,
                               {kTextOid, kByteaOid, kInt8Oid, kInt8Oid, kByteaOid, kByteaOid}),
      .index_plans = make("index_plans", kIndexPlansSql, {}),
      .index_scans = make("index_scans", kIndexScansSql, {}),
      .claim_batch = make("claim_batch", kClaimBatchSql,
                          {kTextArrayOid, kByteaArrayOid, kInt8ArrayOid, kInt8ArrayOid,
                           kByteaArrayOid, kInt4Oid, kByteaArrayOid, kByteaArrayOid, kInt8Oid}),
      .classify_batch = make("classify_batch", kClassifyBatchSql,
                             {kTextArrayOid, kByteaArrayOid, kByteaArrayOid}),
      .complete_batch = make("complete_batch", kCompleteBatchSql,
                             {kTextArrayOid, kByteaArrayOid, kInt8ArrayOid, kInt8ArrayOid,
                              kByteaArrayOid, kByteaArrayOid, kByteaArrayOid, kByteaArrayOid}),
  };
}

// How many times a call rolled back by a serialization failure or a deadlock is retried.
constexpr int kMaxTries = 4;

bool IsRetryable(std::string_view state) { return state == "40001" || state == "40P01"; }

// A pool of connections. Acquire hands out a live connection or opens one (up to the bound);
// Return puts a healthy one back and drops a broken one.
class Pool {
 public:
  Pool(std::string conninfo, std::string secret, std::size_t size, StatementMode mode,
       const Statements* statements)
      : conninfo_(std::move(conninfo)),
        secret_(std::move(secret)),
        size_(size),
        mode_(mode),
        statements_(statements) {}

  const std::string& secret() const { return secret_; }
  StatementMode mode() const { return mode_; }

  [[nodiscard]] absl::StatusOr<PgConnPtr> Acquire() {
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](Pool* p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(p->mu_) {
            return !p->idle_.empty() || p->open_ < p->size_;
          },
          this));
      while (!idle_.empty()) {
        PgConnPtr conn = std::move(idle_.back());
        idle_.pop_back();
        if (Healthy(conn.get())) return conn;
        --open_;  // closed by the server meanwhile (a restart): replace it
      }
      ++open_;
    }
    absl::StatusOr<PgConnPtr> conn = Open();
    if (!conn.ok()) {
      absl::MutexLock lock(&mu_);
      --open_;
    }
    return conn;
  }

  void Return(PgConnPtr conn) {
    const bool keep = conn != nullptr && PQstatus(conn.get()) == CONNECTION_OK &&
                      PQtransactionStatus(conn.get()) == PQTRANS_IDLE &&
                      PQpipelineStatus(conn.get()) == PQ_PIPELINE_OFF;
    if (!keep) conn.reset();  // closed outside the lock
    absl::MutexLock lock(&mu_);
    if (keep) {
      idle_.push_back(std::move(conn));
    } else {
      --open_;
    }
  }

 private:
  // An idle connection has nothing to read: readable means the server closed it or sent a FATAL
  // notice (shutdown). One poll() with zero timeout.
  static bool Healthy(PGconn* conn) {
    if (PQstatus(conn) != CONNECTION_OK) return false;
    pollfd fd{.fd = PQsocket(conn), .events = POLLIN, .revents = 0};
    if (poll(&fd, 1, 0) <= 0) return true;
    if (PQconsumeInput(conn) != 1) return false;
    return PQstatus(conn) == CONNECTION_OK;
  }

  absl::StatusOr<PgConnPtr> Open() {
    absl::StatusOr<PgConnPtr> conn = internal::pg::Connect(conninfo_, secret_);
    if (!conn.ok()) return conn.status();
    // Sends never block: RunPipeline flushes, reading replies meanwhile (no pipeline deadlock).
    if (PQsetnonblocking(conn->get(), 1) != 0) {
      return internal::pg::PgStatus(nullptr, conn->get(), "connect", secret_);
    }
    if (mode_ == StatementMode::kNamed) {
      const std::vector<const Statement*> all = statements_->All();
      if (absl::Status s = internal::pg::PrepareAll(conn->get(), all, secret_); !s.ok()) return s;
    }
    return conn;
  }

  const std::string conninfo_;
  const std::string secret_;
  const std::size_t size_;
  const StatementMode mode_;
  const Statements* statements_;
  absl::Mutex mu_;
  std::vector<PgConnPtr> idle_ ABSL_GUARDED_BY(mu_);
  std::size_t open_ ABSL_GUARDED_BY(mu_) = 0;
};

// What a claim's upsert returned for a record it took.
struct Claimed {
  int32_t attempts = 0;
  int16_t origin = 0;
  int64_t lease_until = 0;
};

// (scope, id), or (scope, version key): what two entries of one batch statement must not share.
using EntryKey = std::pair<std::string_view, std::string_view>;

struct ClaimOutcome {
  ClaimResult result;
  bool retention_reclaim = false;
};

// The parameters of one claim, kept alive while its pipeline runs.
struct ClaimArgs {
  uint64_t token = 0;
  std::optional<std::string> fingerprint;
  std::string version;
  Params claim;
  Params classify;
};

class PostgresStore final : public DedupStore {
 public:
  PostgresStore(PostgresStoreOptions options, std::string secret,
                std::unique_ptr<Statements> statements)
      : options_(std::move(options)),
        st_(std::move(statements)),
        pool_(options_.conninfo, std::move(secret), options_.pool_size,
              options_.unnamed_statements ? StatementMode::kUnnamed : StatementMode::kNamed,
              st_.get()) {
    if (!options_.token_source) options_.token_source = internal::RandomTokenSource();
  }

  // Group commit: concurrent claims (and concurrent completions) queue, and each group is one
  // pipelined transaction (ClaimBatch, CompleteBatch), each call with its own outcome; a call
  // alone runs the single-entry path it ran before grouping.
  absl::StatusOr<ClaimResult> Claim(const ClaimRequest& request) override {
    if (absl::Status s = ValidateClaimRequest(request, options_.max_id_bytes); !s.ok()) return s;
    return claims_.Write(
        request,
        [this](const ClaimRequest& r) { return std::move(ClaimBatch(std::span(&r, 1))[0]); },
        [this](std::span<const ClaimRequest> group) { return ClaimBatch(group); });
  }

  std::vector<absl::StatusOr<ClaimResult>> ClaimBatch(
      std::span<const ClaimRequest> requests) override {
    std::vector<absl::StatusOr<ClaimResult>> out(requests.size(), ClaimResult{});
    std::vector<std::size_t> valid;
    for (std::size_t i = 0; i < requests.size(); ++i) {
      if (absl::Status s = ValidateClaimRequest(requests[i], options_.max_id_bytes); !s.ok()) {
        out[i] = s;
      } else {
        valid.push_back(i);
      }
    }
    if (valid.empty()) return out;
    // Rows are locked in (scope, id) order, so two batches over the same ids cannot deadlock;
    // a stable sort keeps a repeated id's deliveries in order (the first claims, the next sees
    // it held).
    std::stable_sort(valid.begin(), valid.end(), [&](std::size_t a, std::size_t b) {
      return std::tie(requests[a].scope, requests[a].id) <
             std::tie(requests[b].scope, requests[b].id);
    });

    if (valid.size() > 1) {
      ClaimArrays(requests, valid, out);
      return out;
    }

    std::vector<ClaimArgs> args(valid.size());
    std::vector<Call> calls;
    calls.reserve(2 * valid.size());
    for (std::size_t k = 0; k < valid.size(); ++k) {
      const ClaimRequest& r = requests[valid[k]];
      ClaimArgs& a = args[k];
      a.token = options_.token_source();
      if (r.fingerprint) a.fingerprint = internal::pg::EncodeFingerprint(*r.fingerprint);
      a.claim.Text(r.scope).Bytea(r.id).Int8(TokenToSql(a.token)).Int8(r.lease.count());
      a.claim.OptionalBytea(a.fingerprint).Int8(Retention());
      a.claim.Int4(static_cast<int32_t>(std::min<uint32_t>(r.max_attempts, INT32_MAX)));
      a.classify.Text(r.scope).Bytea(r.id);
      if (r.version) {
        a.version = internal::pg::EncodeVersion(r.version->version);
        a.claim.Bytea(r.version->key).Bytea(a.version);
        a.classify.Bytea(r.version->key);
      } else {
        a.claim.Null(kByteaOid).Null(kByteaOid);
        a.classify.Null(kByteaOid);
      }
      calls.push_back(Call{&st_->claim, &a.claim});
      // A batch commits once for all its entries: it keeps the server's synchronous_commit.
      const bool single = valid.size() == 1;
      if (single) a.classify.Int8(TokenToSql(a.token));
      calls.push_back(Call{single ? &st_->classify_single : &st_->classify, &a.classify});
    }

    std::vector<ClaimOutcome> outcomes;
    absl::Status failure = Run(calls, "claim", [&](const std::vector<PgResultPtr>& results) {
      outcomes.clear();
      for (std::size_t k = 0; k < valid.size(); ++k) {
        const PGresult* claim = results[2 * k].get();
        std::optional<Claimed> claimed;
        if (PQntuples(claim) == 1) {
          claimed = Claimed{.attempts = GetInt4(claim, 0, 0),
                            .origin = GetInt2(claim, 0, 1),
                            .lease_until = GetInt8(claim, 0, 2)};
        }
        absl::StatusOr<ClaimOutcome> o =
            Decode(requests[valid[k]], args[k], claimed, results[2 * k + 1].get(), 0);
        if (!o.ok()) return o.status();
        outcomes.push_back(*std::move(o));
      }
      return absl::OkStatus();
    });
    for (std::size_t k = 0; k < valid.size(); ++k) {
      if (!failure.ok()) {
        out[valid[k]] = failure;
      } else {
        counters_.CountClaim(outcomes[k].result, outcomes[k].retention_reclaim);
        out[valid[k]] = std::move(outcomes[k].result);
      }
    }
    return out;
  }

  absl::StatusOr<CompleteStatus> Complete(const CompleteRequest& request) override {
    if (absl::Status s = ValidateCompleteRequest(request, options_.max_id_bytes); !s.ok()) {
      return s;
    }
    return completions_.Write(
        request,
        [this](const CompleteRequest& r) { return std::move(CompleteBatch(std::span(&r, 1))[0]); },
        [this](std::span<const CompleteRequest> group) { return CompleteBatch(group); });
  }

  std::vector<absl::StatusOr<CompleteStatus>> CompleteBatch(
      std::span<const CompleteRequest> requests) override {
    std::vector<absl::StatusOr<CompleteStatus>> out(requests.size(), CompleteStatus::kCompleted);
    std::vector<std::size_t> valid;
    for (std::size_t i = 0; i < requests.size(); ++i) {
      if (absl::Status s = ValidateCompleteRequest(requests[i], options_.max_id_bytes); !s.ok()) {
        out[i] = s;
      } else {
        valid.push_back(i);
      }
    }
    if (valid.empty()) return out;
    if (valid.size() > 1) {
      CompleteArrays(requests, valid, out);
      return out;
    }
    // Completions keep the caller's order: two of one version key in a batch raise the version in
    // the order the handlers ran (the later, lower one is stale). A deadlock with another batch
    // over the same keys (40P01) rolls back and is retried.
    struct Args {
      std::optional<std::string> fingerprint;
      std::string version;
      Params params;
    };
    std::vector<Args> args(valid.size());
    std::vector<Call> calls;
    for (std::size_t k = 0; k < valid.size(); ++k) {
      const CompleteRequest& r = requests[valid[k]];
      Args& a = args[k];
      if (r.fingerprint) a.fingerprint = internal::pg::EncodeFingerprint(*r.fingerprint);
      const int64_t retention = r.retention.count() > 0 ? r.retention.count() : Retention();
      a.params.Text(r.scope).Bytea(r.id).Int8(TokenToSql(r.token)).Int8(retention);
      a.params.OptionalBytea(r.result).OptionalBytea(a.fingerprint);
      if (r.version) {
        a.version = internal::pg::EncodeVersion(r.version->version);
        a.params.Bytea(r.version->key).Bytea(a.version);
        calls.push_back(Call{&st_->complete, &a.params});
      } else {
        calls.push_back(Call{&st_->complete_ungated, &a.params});
      }
    }
    // nullopt: the entry's token no longer owns its claim (its update matched nothing).
    std::vector<std::optional<CompleteStatus>> done;
    absl::Status failure = Run(calls, "complete", [&](const std::vector<PgResultPtr>& results) {
      done.clear();
      for (std::size_t k = 0; k < valid.size(); ++k) {
        const PGresult* r = results[k].get();
        if (!requests[valid[k]].version) {
          done.push_back(PQntuples(r) == 1 ? std::optional(CompleteStatus::kCompleted)
                                           : std::nullopt);
          continue;
        }
        if (PQntuples(r) != 1) return absl::InternalError("postgres: complete returned no row");
        if (GetInt8(r, 0, 0) == 0) {
          done.push_back(std::nullopt);
        } else if (requests[valid[k]].version && GetInt8(r, 0, 1) == 0) {
          done.push_back(CompleteStatus::kStale);
        } else {
          done.push_back(CompleteStatus::kCompleted);
        }
      }
      return absl::OkStatus();
    });
    for (std::size_t k = 0; k < valid.size(); ++k) {
      if (!failure.ok()) {
        out[valid[k]] = failure;
      } else if (!done[k]) {
        out[valid[k]] = Fenced("complete");
      } else {
        counters_.CountCompletion(*done[k]);
        out[valid[k]] = *done[k];
      }
    }
    return out;
  }

  absl::Status Release(std::string_view scope, std::string_view id, uint64_t token) override {
    if (absl::Status s = internal::ValidateOwnerArgs(scope, id, token, options_.max_id_bytes);
        !s.ok()) {
      return s;
    }
    Params p;
    p.Text(scope).Bytea(id).Int8(TokenToSql(token)).Int8(Retention());
    const Call call{&st_->release, &p};
    bool matched = false;
    absl::Status s = Run(std::span(&call, 1), "release", [&](const std::vector<PgResultPtr>& r) {
      matched = PQntuples(r[0].get()) == 1;
      return absl::OkStatus();
    });
    if (!s.ok()) return s;
    return matched ? absl::OkStatus() : Fenced("release");
  }

  absl::StatusOr<int64_t> Extend(std::string_view scope, std::string_view id, uint64_t token,
                                 std::chrono::milliseconds lease) override {
    if (absl::Status s = internal::ValidateOwnerArgs(scope, id, token, options_.max_id_bytes);
        !s.ok()) {
      return s;
    }
    if (absl::Status s = ValidateLease(lease); !s.ok()) return s;
    Params p;
    p.Text(scope).Bytea(id).Int8(TokenToSql(token)).Int8(lease.count()).Int8(Retention());
    const Call call{&st_->extend, &p};
    std::optional<int64_t> until;
    absl::Status s = Run(std::span(&call, 1), "extend", [&](const std::vector<PgResultPtr>& r) {
      if (PQntuples(r[0].get()) == 1) until = GetInt8(r[0].get(), 0, 0);
      return absl::OkStatus();
    });
    if (!s.ok()) return s;
    if (!until) return Fenced("extend");
    return *until;
  }

  absl::StatusOr<int64_t> PurgeExpired(int64_t limit) override {
    if (absl::Status s = ValidatePurgeLimit(limit); !s.ok()) return s;
    Params p;
    if (limit > 0) {
      p.Int8(limit);
    } else {
      p.Null(kInt8Oid);
    }
    const Call call{&st_->purge, &p};
    int64_t purged = 0;
    absl::Status s = Run(std::span(&call, 1), "purge", [&](const std::vector<PgResultPtr>& r) {
      purged = GetInt8(r[0].get(), 0, 0);
      return absl::OkStatus();
    });
    if (!s.ok()) return s;
    internal::StoreCounters::Add(counters_.purged, static_cast<uint64_t>(purged));
    return purged;
  }

  absl::StatusOr<std::optional<uint64_t>> AppliedVersion(std::string_view scope,
                                                         std::string_view key) override {
    if (absl::Status s = ValidateScope(scope); !s.ok()) return s;
    if (absl::Status s = ValidateId(key, options_.max_id_bytes, "version key"); !s.ok()) return s;
    Params p;
    p.Text(scope).Bytea(key);
    const Call call{&st_->version, &p};
    std::optional<uint64_t> version;
    absl::Status s = Run(std::span(&call, 1), "read version", [&](const std::vector<PgResultPtr>& r) {
      if (PQntuples(r[0].get()) == 0) return absl::OkStatus();
      absl::StatusOr<uint64_t> v =
          internal::pg::DecodeVersion(GetBytea(r[0].get(), 0, 0).value_or(""));
      if (!v.ok()) return v.status();
      version = *v;
      return absl::OkStatus();
    });
    if (!s.ok()) return s;
    return version;
  }

  absl::StatusOr<std::optional<RecordInfo>> Inspect(std::string_view scope,
                                                    std::string_view id) override {
    if (absl::Status s = ValidateScope(scope); !s.ok()) return s;
    if (absl::Status s = ValidateId(id, options_.max_id_bytes); !s.ok()) return s;
    Params p;
    p.Text(scope).Bytea(id);
    const Call call{&st_->inspect, &p};
    std::optional<RecordInfo> info;
    absl::Status s = Run(std::span(&call, 1), "inspect", [&](const std::vector<PgResultPtr>& rs) {
      const PGresult* r = rs[0].get();
      if (PQntuples(r) == 0) return absl::OkStatus();
      const int status = GetInt2(r, 0, 0);
      RecordInfo i{.token = internal::pg::TokenFromSql(GetInt8(r, 0, 1)),
                   .attempts = static_cast<uint32_t>(GetInt4(r, 0, 3)),
                   .lease_until_ms = status == internal::pg::kStatusInProgress ? GetInt8(r, 0, 2)
                                                                                : 0,
                   .expires_at_ms = GetInt8(r, 0, 6),
                   .result = GetBytea(r, 0, 5)};
      switch (status) {
        case internal::pg::kStatusInProgress:
          i.state = RecordState::kInProgress;
          break;
        case internal::pg::kStatusReleased:
          i.state = RecordState::kReleased;
          break;
        case internal::pg::kStatusCompleted:
          i.state = RecordState::kCompleted;
          break;
        default:
          return absl::DataLossError(absl::StrCat("postgres: unknown record status ", status));
      }
      if (std::optional<std::string> f = GetBytea(r, 0, 4)) i.fingerprint = Fingerprint::FromBytes(*f);
      info = std::move(i);
      return absl::OkStatus();
    });
    if (!s.ok()) return s;
    return info;
  }

  StoreStats Stats() const override { return counters_.Snapshot(); }
  std::string_view BackendName() const override { return "postgres"; }

  // Operator calls (pg_admin.cc). WaitForCompletion is the default: Inspect polled with backoff.
  absl::StatusOr<ListPage> List(const ListRequest& request) override {
    if (absl::Status s = ValidateListRequest(request); !s.ok()) return s;
    absl::StatusOr<std::optional<std::string>> after = internal::DecodeIdCursor(request.cursor);
    if (!after.ok()) return after.status();
    absl::StatusOr<internal::pg::AdminStatements> st = AdminStatementsOf();
    if (!st.ok()) return st.status();
    Params p;
    p.Text(request.scope);
    if (after->has_value()) {
      p.Bytea(**after);
    } else {
      p.Null(kByteaOid);
    }
    p.Int8(static_cast<int64_t>(request.limit) + 1)  // one more: whether a page follows
        .Int8(request.max_attempts)
        .Int8(internal::ListFilterCode(request.filter));
    const Call call{&st->list, &p};
    ListPage page;
    absl::Status s = Run(std::span(&call, 1), "list", [&](const std::vector<PgResultPtr>& r) {
      absl::StatusOr<ListPage> decoded = internal::pg::DecodeListPage(r[0].get(), request.limit);
      if (!decoded.ok()) return decoded.status();
      page = std::move(decoded).value();
      return absl::OkStatus();
    });
    if (!s.ok()) return s;
    return page;
  }

  absl::Status ResetAttempts(std::string_view scope, std::string_view id,
                             uint64_t token) override {
    if (absl::Status s = internal::ValidateOwnerArgs(scope, id, token, options_.max_id_bytes);
        !s.ok()) {
      return s;
    }
    absl::StatusOr<internal::pg::AdminStatements> st = AdminStatementsOf();
    if (!st.ok()) return st.status();
    Params reset;
    reset.Text(scope).Bytea(id).Int8(TokenToSql(token)).Int8(Retention());
    Params why;
    why.Text(scope).Bytea(id);
    // One pipeline, one implicit transaction: the read sees what the reset left.
    const Call calls[] = {{&st->reset, &reset}, {&st->reset_why, &why}};
    absl::Status refusal;
    absl::Status s = Run(calls, "reset", [&](const std::vector<PgResultPtr>& r) {
      refusal = PQntuples(r[0].get()) == 1 ? absl::OkStatus()
                                           : internal::pg::ResetRefusal(r[1].get(), token);
      return absl::OkStatus();
    });
    if (!s.ok()) return s;
    return refusal;
  }

 private:
  int64_t Retention() const { return options_.retention.count(); }

  // The operator calls' statements, unnamed, for this store's tables.
  absl::StatusOr<internal::pg::AdminStatements> AdminStatementsOf() const {
    absl::StatusOr<internal::pg::Tables> tables =
        internal::pg::MakeTables(options_.schema, options_.table_prefix);
    if (!tables.ok()) return tables.status();
    return internal::pg::MakeAdminStatements(*tables);
  }

  [[nodiscard]] absl::Status Fenced(std::string_view operation) {
    internal::StoreCounters::Add(counters_.fenced);
    return internal::FencedError("postgres", operation);
  }

  // A claim batch of several entries (`valid`: indexes into `requests`, sorted by scope and id):
  // one upsert over arrays and its classifying read per group, all pipelined, one transaction.
  // Groups: the n-th delivery of an id in the batch goes to the n-th round (rounds run in order,
  // each sees what the earlier claimed), and within a round one group per max_attempts value.
  void ClaimArrays(std::span<const ClaimRequest> requests, const std::vector<std::size_t>& valid,
                   std::vector<absl::StatusOr<ClaimResult>>& out) {
    struct Group {
      int round = 0;
      int32_t max_attempts = 0;
      std::vector<std::size_t> members;  // positions in `valid`, sorted
      std::string scopes, ids, tokens, leases, fingerprints, keys, versions;  // encoded arrays
      Params claim;
    };
    std::vector<ClaimArgs> args(valid.size());
    std::vector<Group> groups;
    {
      absl::flat_hash_map<EntryKey, int> deliveries;
      absl::flat_hash_map<std::pair<int, int32_t>, std::size_t> group_of;
      for (std::size_t k = 0; k < valid.size(); ++k) {
        const ClaimRequest& r = requests[valid[k]];
        const int round = deliveries[EntryKey(r.scope, r.id)]++;
        const int32_t max_attempts =
            static_cast<int32_t>(std::min<uint32_t>(r.max_attempts, INT32_MAX));
        auto [it, added] = group_of.try_emplace(std::pair(round, max_attempts), groups.size());
        if (added) groups.push_back(Group{.round = round, .max_attempts = max_attempts});
        groups[it->second].members.push_back(k);
      }
    }
    // A later round after every earlier one, whatever order the groups were met in.
    std::stable_sort(groups.begin(), groups.end(),
                     [](const Group& a, const Group& b) { return a.round < b.round; });

    std::vector<Call> calls;
    calls.reserve(1 + groups.size());
    calls.push_back(Call{&st_->index_scans, nullptr});
    for (Group& g : groups) {
      ArrayBuilder scopes(kTextOid), ids(kByteaOid), tokens(kInt8Oid), leases(kInt8Oid),
          fingerprints(kByteaOid), keys(kByteaOid), versions(kByteaOid);
      for (std::size_t k : g.members) {
        const ClaimRequest& r = requests[valid[k]];
        ClaimArgs& a = args[k];
        a.token = options_.token_source();
        if (r.fingerprint) a.fingerprint = internal::pg::EncodeFingerprint(*r.fingerprint);
        scopes.Bytes(r.scope);
        ids.Bytes(r.id);
        tokens.Int8(TokenToSql(a.token));
        leases.Int8(r.lease.count());
        fingerprints.OptionalBytes(a.fingerprint);
        AppendVersion(r.version, keys, versions);
      }
      g.scopes = scopes.Encoded();
      g.ids = ids.Encoded();
      g.tokens = tokens.Encoded();
      g.leases = leases.Encoded();
      g.fingerprints = fingerprints.Encoded();
      g.keys = keys.Encoded();
      g.versions = versions.Encoded();
      g.claim.Array(g.scopes, kTextArrayOid).Array(g.ids, kByteaArrayOid);
      g.claim.Array(g.tokens, kInt8ArrayOid).Array(g.leases, kInt8ArrayOid);
      g.claim.Array(g.fingerprints, kByteaArrayOid).Int4(g.max_attempts);
      g.claim.Array(g.keys, kByteaArrayOid).Array(g.versions, kByteaArrayOid).Int8(Retention());
      calls.push_back(Call{&st_->claim_batch, &g.claim});
    }

    // Entries the claim's snapshot left undecided (positions in `valid`), classified again below.
    std::vector<std::optional<ClaimOutcome>> outcomes(valid.size());
    std::vector<std::size_t> undecided;
    absl::Status failure = Run(calls, "claim", [&](const std::vector<PgResultPtr>& results) {
      undecided.clear();
      for (std::size_t gi = 0; gi < groups.size(); ++gi) {
        const Group& g = groups[gi];
        const PGresult* r = results[1 + gi].get();
        if (PQntuples(r) != static_cast<int>(g.members.size())) {
          return absl::InternalError("postgres: claim returned a row count unlike the batch");
        }
        for (std::size_t m = 0; m < g.members.size(); ++m) {
          const int row = static_cast<int>(m);
          const std::size_t k = g.members[m];
          if (GetInt8(r, row, 0) != row + 1) {
            return absl::InternalError("postgres: claim returned rows out of order");
          }
          if (!IsNull(r, row, 1)) {
            outcomes[k] = Acquired(args[k], Claimed{.attempts = GetInt4(r, row, 1),
                                                    .origin = GetInt2(r, row, 2),
                                                    .lease_until = GetInt8(r, row, 3)});
            continue;
          }
          absl::StatusOr<std::optional<ClaimOutcome>> refused =
              Refusal(requests[valid[k]], args[k], r, row, /*column=*/4, /*snapshot=*/true);
          if (!refused.ok()) return refused.status();
          outcomes[k] = *std::move(refused);
          if (!outcomes[k]) undecided.push_back(k);
        }
      }
      return absl::OkStatus();
    });
    if (failure.ok() && !undecided.empty()) {
      failure = Reclassify(requests, valid, args, undecided, outcomes);
    }
    for (std::size_t k = 0; k < valid.size(); ++k) {
      if (!failure.ok()) {
        out[valid[k]] = failure;
      } else if (!outcomes[k]) {
        out[valid[k]] = absl::UnavailableError(
            "postgres: claim: the record changed while it was classified; retry the claim");
      } else {
        counters_.CountClaim(outcomes[k]->result, outcomes[k]->retention_reclaim);
        out[valid[k]] = std::move(outcomes[k]->result);
      }
    }
  }

  // Classifies again, with a new snapshot (kClassifyBatchSql, one round trip), the entries of a
  // claim batch that the claim's own snapshot left undecided. An entry still undecided keeps
  // nullopt (Unavailable: nothing was written, the caller may claim again).
  [[nodiscard]] absl::Status Reclassify(std::span<const ClaimRequest> requests,
                                        const std::vector<std::size_t>& valid,
                                        const std::vector<ClaimArgs>& args,
                                        const std::vector<std::size_t>& undecided,
                                        std::vector<std::optional<ClaimOutcome>>& outcomes) {
    ArrayBuilder scopes(kTextOid), ids(kByteaOid), keys(kByteaOid);
    for (std::size_t k : undecided) {
      const ClaimRequest& r = requests[valid[k]];
      scopes.Bytes(r.scope);
      ids.Bytes(r.id);
      if (r.version) {
        keys.Bytes(r.version->key);
      } else {
        keys.Null();
      }
    }
    const std::string scope_array(scopes.Encoded()), id_array(ids.Encoded()),
        key_array(keys.Encoded());
    Params p;
    p.Array(scope_array, kTextArrayOid).Array(id_array, kByteaArrayOid);
    p.Array(key_array, kByteaArrayOid);
    const Call calls[] = {{&st_->index_plans, nullptr}, {&st_->classify_batch, &p}};
    return Run(calls, "claim", [&](const std::vector<PgResultPtr>& results) {
      const PGresult* r = results[1].get();
      if (PQntuples(r) != static_cast<int>(undecided.size())) {
        return absl::InternalError("postgres: classify returned a row count unlike the batch");
      }
      for (std::size_t m = 0; m < undecided.size(); ++m) {
        const std::size_t k = undecided[m];
        absl::StatusOr<std::optional<ClaimOutcome>> refused = Refusal(
            requests[valid[k]], args[k], r, static_cast<int>(m), /*column=*/0, /*snapshot=*/false);
        if (!refused.ok()) return refused.status();
        outcomes[k] = *std::move(refused);
      }
      return absl::OkStatus();
    });
  }

  // A completion batch of several entries (`valid`: indexes into `requests`, the caller's order):
  // one statement over arrays per round, all pipelined, one transaction. An entry goes to the
  // round after the last one holding its id or its version key, so that entries sharing either
  // run in the caller's order (the later, lower version of a key is stale).
  void CompleteArrays(std::span<const CompleteRequest> requests,
                      const std::vector<std::size_t>& valid,
                      std::vector<absl::StatusOr<CompleteStatus>>& out) {
    struct Round {
      std::vector<std::size_t> members;  // positions in `valid`, the caller's order
      std::string scopes, ids, tokens, retentions, results, fingerprints, keys, versions;
      Params params;
    };
    std::vector<Round> rounds;
    {
      absl::flat_hash_map<EntryKey, int> last_id, last_key;
      for (std::size_t k = 0; k < valid.size(); ++k) {
        const CompleteRequest& r = requests[valid[k]];
        int round = 0;
        if (auto it = last_id.find(EntryKey(r.scope, r.id)); it != last_id.end()) {
          round = it->second + 1;
        }
        if (r.version) {
          if (auto it = last_key.find(EntryKey(r.scope, r.version->key)); it != last_key.end()) {
            round = std::max(round, it->second + 1);
          }
          last_key[EntryKey(r.scope, r.version->key)] = round;
        }
        last_id[EntryKey(r.scope, r.id)] = round;
        if (static_cast<std::size_t>(round) >= rounds.size()) rounds.resize(round + 1);
        rounds[round].members.push_back(k);
      }
    }
    std::vector<Call> calls;
    calls.reserve(1 + rounds.size());
    calls.push_back(Call{&st_->index_plans, nullptr});
    for (Round& round : rounds) {
      ArrayBuilder scopes(kTextOid), ids(kByteaOid), tokens(kInt8Oid), retentions(kInt8Oid),
          results(kByteaOid), fingerprints(kByteaOid), keys(kByteaOid), versions(kByteaOid);
      for (std::size_t k : round.members) {
        const CompleteRequest& r = requests[valid[k]];
        scopes.Bytes(r.scope);
        ids.Bytes(r.id);
        tokens.Int8(TokenToSql(r.token));
        retentions.Int8(r.retention.count() > 0 ? r.retention.count() : Retention());
        results.OptionalBytes(r.result);
        if (r.fingerprint) {
          fingerprints.Bytes(internal::pg::EncodeFingerprint(*r.fingerprint));
        } else {
          fingerprints.Null();
        }
        AppendVersion(r.version, keys, versions);
      }
      round.scopes = scopes.Encoded();
      round.ids = ids.Encoded();
      round.tokens = tokens.Encoded();
      round.retentions = retentions.Encoded();
      round.results = results.Encoded();
      round.fingerprints = fingerprints.Encoded();
      round.keys = keys.Encoded();
      round.versions = versions.Encoded();
      round.params.Array(round.scopes, kTextArrayOid).Array(round.ids, kByteaArrayOid);
      round.params.Array(round.tokens, kInt8ArrayOid).Array(round.retentions, kInt8ArrayOid);
      round.params.Array(round.results, kByteaArrayOid);
      round.params.Array(round.fingerprints, kByteaArrayOid);
      round.params.Array(round.keys, kByteaArrayOid).Array(round.versions, kByteaArrayOid);
      calls.push_back(Call{&st_->complete_batch, &round.params});
    }
    // nullopt: the entry's token no longer owns its claim (its update matched nothing).
    std::vector<std::optional<CompleteStatus>> done(valid.size());
    absl::Status failure = Run(calls, "complete", [&](const std::vector<PgResultPtr>& results) {
      std::fill(done.begin(), done.end(), std::nullopt);
      for (std::size_t ri = 0; ri < rounds.size(); ++ri) {
        const Round& round = rounds[ri];
        const PGresult* r = results[1 + ri].get();
        for (int row = 0; row < PQntuples(r); ++row) {
          const int64_t position = GetInt8(r, row, 0);
          if (position < 1 || position > static_cast<int64_t>(round.members.size())) {
            return absl::InternalError("postgres: complete returned an unknown entry");
          }
          const std::size_t k = round.members[position - 1];
          done[k] = requests[valid[k]].version && GetInt8(r, row, 1) == 0
                        ? CompleteStatus::kStale
                        : CompleteStatus::kCompleted;
        }
      }
      return absl::OkStatus();
    });
    for (std::size_t k = 0; k < valid.size(); ++k) {
      if (!failure.ok()) {
        out[valid[k]] = failure;
      } else if (!done[k]) {
        out[valid[k]] = Fenced("complete");
      } else {
        counters_.CountCompletion(*done[k]);
        out[valid[k]] = *done[k];
      }
    }
  }

  // Runs `calls` as one pipeline on a pooled connection and hands the results to `decode`, which
  // may run again if the transaction is retried. A server error in any call fails the whole call
  // (the implicit transaction rolled back); 40001 and 40P01 are retried.
  template <typename Decode>
  [[nodiscard]] absl::Status Run(std::span<const Call> calls, std::string_view operation,
                                 Decode&& decode) {
    absl::Status last;
    for (int attempt = 0; attempt < kMaxTries; ++attempt) {
      if (attempt > 0) {
        // Back off a little, jittered by the attempt, so that two retrying batches part ways.
        std::this_thread::sleep_for(std::chrono::milliseconds(2 * attempt * attempt));
      }
      absl::StatusOr<PgConnPtr> conn = pool_.Acquire();
      if (!conn.ok()) return conn.status();
      absl::StatusOr<std::vector<PgResultPtr>> results = internal::pg::RunPipeline(
          conn->get(), calls, pool_.mode(), operation, pool_.secret());
      if (!results.ok()) {
        conn->reset();  // in doubt: never reused
        pool_.Return(std::move(*conn));
        return results.status();
      }
      pool_.Return(std::move(*conn));
      if (const PGresult* error = internal::pg::FirstError(*results)) {
        last = internal::pg::PgStatus(error, nullptr, operation, pool_.secret());
        if (IsRetryable(internal::pg::SqlState(error))) continue;
        return last;
      }
      return decode(*results);
    }
    return absl::UnavailableError(
        absl::StrCat(last.message(), " (still failing after ", kMaxTries, " tries)"));
  }

  // The outcome of one claim from its upsert's RETURNING and its classifying read.
  static ClaimOutcome Acquired(const ClaimArgs& args, const Claimed& claimed) {
    return ClaimOutcome{
        .result = ClaimResult{.status = ClaimStatus::kAcquired,
                              .token = args.token,
                              .attempt = static_cast<uint32_t>(claimed.attempts),
                              .lease_until_ms = claimed.lease_until,
                              .took_over = claimed.origin == internal::pg::kOriginTakeover},
        .retention_reclaim = claimed.origin == internal::pg::kOriginRetention};
  }

  // `claimed`: the row the claim's upsert returned, if it took the record; otherwise row
  // `row_index` of `classify`, from column `column` on, is a classifying read (kClassifySql's
  // layout). Unavailable when the read neither took nor refuses the claim.
  [[nodiscard]] absl::StatusOr<ClaimOutcome> Decode(const ClaimRequest& request,
                                                    const ClaimArgs& args,
                                                    const std::optional<Claimed>& claimed,
                                                    const PGresult* classify, int row_index,
                                                    int column = 0) {
    if (claimed) return Acquired(args, *claimed);
    absl::StatusOr<std::optional<ClaimOutcome>> refused =
        Refusal(request, args, classify, row_index, column, /*snapshot=*/false);
    if (!refused.ok()) return refused.status();
    if (*refused) return **refused;
    // Neither taken nor refused: the record changed between the upsert and the read (a lease
    // that ran out in between, a purge, a version lowered by hand). Nothing was written: the
    // caller may simply claim again.
    return absl::UnavailableError(
        "postgres: claim: the record changed while it was classified; retry the claim");
  }

  // Why a claim that the upsert did not take was refused, from a classifying read (row
  // `row_index` of `classify`, kClassifySql's columns from `column` on); nullopt when the read
  // does not say. `snapshot`: the read predates the upsert (kClaimBatchSql), so only what cannot
  // have changed since counts: a held record, a version at or above the request's (the upsert's
  // own gate read the same snapshot); a record missing from it or dead-lettered by it is left
  // undecided (inserted, or taken by a consumer with a higher max_attempts, in between).
  [[nodiscard]] absl::StatusOr<std::optional<ClaimOutcome>> Refusal(const ClaimRequest& request,
                                                                    const ClaimArgs& args,
                                                                    const PGresult* classify,
                                                                    int row_index, int column,
                                                                    bool snapshot) {
    if (PQntuples(classify) <= row_index) {
      return absl::InternalError("postgres: classify returned no row");
    }
    const int i = row_index;
    const int c = column;
    const int64_t now = GetInt8(classify, i, c);
    std::optional<DedupRow> row;
    if (!IsNull(classify, i, c + 1)) {
      row = DedupRow{.status = GetInt2(classify, i, c + 1),
                     .token = internal::pg::TokenFromSql(GetInt8(classify, i, c + 2)),
                     .lease_until = GetInt8(classify, i, c + 3),
                     .attempts = static_cast<uint32_t>(GetInt4(classify, i, c + 4)),
                     .fingerprint = GetBytea(classify, i, c + 5),
                     .result = GetBytea(classify, i, c + 6),
                     .expires_at = GetInt8(classify, i, c + 7)};
    }
    std::optional<std::string_view> fingerprint;
    if (args.fingerprint) fingerprint = *args.fingerprint;
    if (row) {
      if (std::optional<ClaimResult> held = internal::pg::ClassifyHeld(*row, fingerprint, now)) {
        return ClaimOutcome{.result = *std::move(held)};
      }
    }
    if (request.version && !IsNull(classify, i, c + 8)) {
      absl::StatusOr<uint64_t> applied =
          internal::pg::DecodeVersion(GetBytea(classify, i, c + 8).value_or(""));
      if (!applied.ok()) return applied.status();
      if (*applied >= request.version->version) {
        return ClaimOutcome{
            .result = ClaimResult{.status = ClaimStatus::kStale, .applied_version = *applied}};
      }
    }
    if (!snapshot && row && row->status != internal::pg::kStatusCompleted &&
        request.max_attempts > 0 && row->attempts >= request.max_attempts) {
      return ClaimOutcome{
          .result = ClaimResult{.status = ClaimStatus::kDeadLettered, .attempt = row->attempts}};
    }
    return std::nullopt;
  }

  PostgresStoreOptions options_;
  std::unique_ptr<Statements> st_;
  Pool pool_;
  internal::StoreCounters counters_;
  // Group commit: one group of claims and one of completions in flight (write_queue.h says why
  // not one per pooled connection).
  internal::WriteQueue<ClaimRequest, absl::StatusOr<ClaimResult>> claims_{
      options_.group_limit, &counters_};
  internal::WriteQueue<CompleteRequest, absl::StatusOr<CompleteStatus>> completions_{
      options_.group_limit, &counters_};
};

[[nodiscard]] absl::Status ValidateOptions(const PostgresStoreOptions& options) {
  if (options.conninfo.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError("postgres: conninfo contains a NUL byte");
  }
  if (options.pool_size == 0 || options.pool_size > 1024) {
    return absl::InvalidArgumentError("postgres: pool_size must be within 1..1024");
  }
  if (absl::Status s = internal::ValidateGroupLimit(options.group_limit, "postgres"); !s.ok()) {
    return s;
  }
  if (options.retention.count() <= 0) {
    return absl::InvalidArgumentError("postgres: retention must be > 0");
  }
  // bytea holds up to 1 GB; stay well within an int length.
  if (options.max_id_bytes == 0 || options.max_id_bytes > (1u << 24)) {
    return absl::InvalidArgumentError("postgres: max_id_bytes must be within 1..16 MiB");
  }
  return absl::OkStatus();
}

// Warns about server settings under which an acknowledged completion may be lost.
void CheckServerSettings(PGconn* conn, const PostgresStoreOptions& options) {
  PgResultPtr r(PQexec(conn, "SELECT current_setting('synchronous_commit'), "
                             "current_setting('fsync')"));
  if (r == nullptr || PQresultStatus(r.get()) != PGRES_TUPLES_OK || PQntuples(r.get()) != 1) {
    return;
  }
  auto warn = [&](const std::string& line) {
    if (options.warning) {
      options.warning(line);
    } else {
      std::fprintf(stderr, "idem: %s\n", line.c_str());
    }
  };
  if (std::string_view(PQgetvalue(r.get(), 0, 0)) == "off") {
    warn("postgres: synchronous_commit is off: a server crash may lose the last acknowledged "
         "completions (their messages then run again)");
  }
  if (std::string_view(PQgetvalue(r.get(), 0, 1)) == "off") {
    warn("postgres: fsync is off: a server crash may lose or corrupt dedup records");
  }
}

}  // namespace

int PostgresSchemaVersion() { return internal::pg::kSchemaVersion; }

absl::StatusOr<std::unique_ptr<DedupStore>> NewPostgresStore(PostgresStoreOptions options) {
  if (absl::Status s = ValidateOptions(options); !s.ok()) return s;
  absl::StatusOr<internal::pg::Tables> tables =
      internal::pg::MakeTables(options.schema, options.table_prefix);
  if (!tables.ok()) return tables.status();
  {
    // libpq's own check of the connection string, before any connection attempt. Its message
    // may quote part of the string (the password, too): it is not passed on.
    char* error = nullptr;
    PQconninfoOption* parsed = PQconninfoParse(options.conninfo.c_str(), &error);
    if (error != nullptr) PQfreemem(error);
    if (parsed == nullptr) {
      return absl::InvalidArgumentError("postgres: libpq cannot parse the connection string");
    }
    PQconninfoFree(parsed);
  }
  std::string secret = internal::pg::PasswordOf(options.conninfo);
  absl::StatusOr<PgConnPtr> first = internal::pg::Connect(options.conninfo, secret);
  if (!first.ok()) return first.status();
  if (absl::Status s = internal::pg::EnsureSchema(first->get(), *tables, secret); !s.ok()) return s;
  CheckServerSettings(first->get(), options);
  // The pool opens (and prepares) its connections itself; this one only set up the schema.
  first->reset();
  auto statements = std::make_unique<Statements>(MakeStatements(*tables));
  return std::unique_ptr<DedupStore>(
      new PostgresStore(std::move(options), std::move(secret), std::move(statements)));
}

}  // namespace idem

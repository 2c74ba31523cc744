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
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "idem/postgres_store.h"
#include "internal/owner.h"
#include "internal/store_counters.h"
#include "internal/strings.h"
#include "internal/token.h"
#include "internal/list_cursor.h"
#include "pg_admin.h"
#include "pg_internal.h"

namespace idem {
namespace {

using internal::pg::Call;
using internal::pg::DedupRow;
using internal::pg::GetBytea;
using internal::pg::GetInt2;
using internal::pg::GetInt4;
using internal::pg::GetInt8;
using internal::pg::IsNull;
using internal::pg::kByteaOid;
using internal::pg::kInt4Oid;
using internal::pg::kInt8Oid;
using internal::pg::kTextOid;
using internal::pg::Params;
using internal::pg::PgConnPtr;
using internal::pg::PgResultPtr;
using internal::pg::Statement;
using internal::pg::StatementMode;
using internal::pg::TokenToSql;

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

struct Statements {
  Statement claim, classify, classify_single, complete, release, extend, purge, version, inspect;

  std::vector<const Statement*> All() const {
    return {&claim, &classify, &classify_single, &complete, &release, &extend, &purge, &version, &inspect};
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
      .classify_single = make("classify_single", kClassifySingleSql,
                              {kTextOid, kByteaOid, kByteaOid, kInt8Oid}),
      .complete = make("complete", kCompleteSql,
                       {kTextOid, kByteaOid, kInt8Oid, kInt8Oid, kByteaOid, kByteaOid, kByteaOid,
                        kByteaOid}),
      .release = make("release", kReleaseSql, {kTextOid, kByteaOid, kInt8Oid, kInt8Oid}),
      .extend = make("extend", kExtendSql, {kTextOid, kByteaOid, kInt8Oid, kInt8Oid, kInt8Oid}),
      .purge = make("purge", kPurgeSql, {kInt8Oid}),
      .version = make("version", kVersionSql, {kTextOid, kByteaOid}),
      .inspect = make("inspect", kInspectSql, {kTextOid, kByteaOid}),
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

  absl::StatusOr<ClaimResult> Claim(const ClaimRequest& request) override {
    std::vector<absl::StatusOr<ClaimResult>> out = ClaimBatch(std::span(&request, 1));
    return std::move(out[0]);
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
        absl::StatusOr<ClaimOutcome> o =
            Decode(requests[valid[k]], args[k], results[2 * k].get(), results[2 * k + 1].get());
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
    std::vector<absl::StatusOr<CompleteStatus>> out = CompleteBatch(std::span(&request, 1));
    return std::move(out[0]);
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
      } else {
        a.params.Null(kByteaOid).Null(kByteaOid);
      }
      calls.push_back(Call{&st_->complete, &a.params});
    }
    // nullopt: the entry's token no longer owns its claim (its update matched nothing).
    std::vector<std::optional<CompleteStatus>> done;
    absl::Status failure = Run(calls, "complete", [&](const std::vector<PgResultPtr>& results) {
      done.clear();
      for (std::size_t k = 0; k < valid.size(); ++k) {
        const PGresult* r = results[k].get();
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
        .Int8(internal::pg::ListFilterCode(request.filter));
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
  [[nodiscard]] absl::StatusOr<ClaimOutcome> Decode(const ClaimRequest& request,
                                                    const ClaimArgs& args, const PGresult* claim,
                                                    const PGresult* classify) {
    if (PQntuples(claim) == 1) {
      const int origin = GetInt2(claim, 0, 1);
      return ClaimOutcome{
          .result = ClaimResult{.status = ClaimStatus::kAcquired,
                                .token = args.token,
                                .attempt = static_cast<uint32_t>(GetInt4(claim, 0, 0)),
                                .lease_until_ms = GetInt8(claim, 0, 2),
                                .took_over = origin == internal::pg::kOriginTakeover},
          .retention_reclaim = origin == internal::pg::kOriginRetention};
    }
    if (PQntuples(classify) != 1) return absl::InternalError("postgres: classify returned no row");
    const int64_t now = GetInt8(classify, 0, 0);
    std::optional<DedupRow> row;
    if (!IsNull(classify, 0, 1)) {
      row = DedupRow{.status = GetInt2(classify, 0, 1),
                     .token = internal::pg::TokenFromSql(GetInt8(classify, 0, 2)),
                     .lease_until = GetInt8(classify, 0, 3),
                     .attempts = static_cast<uint32_t>(GetInt4(classify, 0, 4)),
                     .fingerprint = GetBytea(classify, 0, 5),
                     .result = GetBytea(classify, 0, 6),
                     .expires_at = GetInt8(classify, 0, 7)};
    }
    std::optional<std::string_view> fingerprint;
    if (args.fingerprint) fingerprint = *args.fingerprint;
    if (row) {
      if (std::optional<ClaimResult> held = internal::pg::ClassifyHeld(*row, fingerprint, now)) {
        return ClaimOutcome{.result = *std::move(held)};
      }
    }
    if (request.version && !IsNull(classify, 0, 8)) {
      absl::StatusOr<uint64_t> applied =
          internal::pg::DecodeVersion(GetBytea(classify, 0, 8).value_or(""));
      if (!applied.ok()) return applied.status();
      if (*applied >= request.version->version) {
        return ClaimOutcome{
            .result = ClaimResult{.status = ClaimStatus::kStale, .applied_version = *applied}};
      }
    }
    if (row && row->status != internal::pg::kStatusCompleted && request.max_attempts > 0 &&
        row->attempts >= request.max_attempts) {
      return ClaimOutcome{
          .result = ClaimResult{.status = ClaimStatus::kDeadLettered, .attempt = row->attempts}};
    }
    // Neither taken nor refused: the record changed between the upsert and the read (a lease
    // that ran out in between, a purge, a version lowered by hand). Nothing was written: the
    // caller may simply claim again.
    return absl::UnavailableError(
        "postgres: claim: the record changed while it was classified; retry the claim");
  }

  PostgresStoreOptions options_;
  std::unique_ptr<Statements> st_;
  Pool pool_;
  internal::StoreCounters counters_;
};

[[nodiscard]] absl::Status ValidateOptions(const PostgresStoreOptions& options) {
  if (options.conninfo.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError("postgres: conninfo contains a NUL byte");
  }
  if (options.pool_size == 0 || options.pool_size > 1024) {
    return absl::InvalidArgumentError("postgres: pool_size must be within 1..1024");
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

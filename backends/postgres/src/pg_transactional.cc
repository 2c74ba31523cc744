// Transactional mode: the dedup row, the handler's writes on the caller's connection and the
// version gate share one transaction, committed once. Two round trips besides the handler's own:
//   1. [BEGIN | SAVEPOINT]; bound the lock wait; upsert the dedup row as COMPLETED; raise the
//      key's version; restore the lock wait; read what holds the id (pipelined, one Sync);
//   2. [save the result]; [COMMIT | RELEASE SAVEPOINT].
// Raising the version before the handler runs is the same as raising it at commit (one
// transaction), and it takes the key's row lock early: a concurrent delivery of the same key
// waits at most lock_timeout and answers InProgress instead of running a handler whose commit
// would be refused.
#include <libpq-fe.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "idem/postgres_store.h"
#include "internal/token.h"
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

// The dedup row goes in directly as COMPLETED: the transaction commits it only together with the
// handler's writes. The upsert takes over only a record that a lease-mode consumer left claimable
// (RELEASED, an expired lease, COMPLETED past its retention); a concurrent transactional delivery
// of the id holds the row's lock until it commits, and the wait is bounded by lock_timeout.
//   $1 scope  $2 id  $3 token  $4 fingerprint  $5 retention ms
constexpr char kUpsertSql[] = R"sql(
INSERT INTO {dedup} AS d (scope, id, status, token, lease_until, attempts, fingerprint, result,
                          expires_at, claim_origin)
SELECT $1, $2, 2, $3, 0, 1, $4, NULL, n.now + $5, 0 FROM (SELECT {now} AS now) AS n
ON CONFLICT (scope, id) DO UPDATE SET
  status = 2,
  token = excluded.token,
  lease_until = 0,
  expires_at = excluded.expires_at,
  attempts = CASE WHEN d.status = 2 THEN 1 ELSE d.attempts + 1 END,
  fingerprint = CASE WHEN d.status = 2 THEN excluded.fingerprint
                     ELSE coalesce(d.fingerprint, excluded.fingerprint) END,
  result = NULL,
  claim_origin = CASE d.status WHEN 2 THEN 3 WHEN 1 THEN 1 ELSE 2 END
WHERE NOT (excluded.fingerprint IS NOT NULL AND d.fingerprint IS NOT NULL
           AND d.fingerprint <> excluded.fingerprint)
  AND ((d.status = 2 AND d.expires_at <= {now})
       OR d.status = 1
       OR (d.status = 0 AND d.lease_until <= {now}))
RETURNING attempts
)sql";

// Raises the key's version only if this delivery took the id (its token is on the row).
//   $1 scope  $2 key  $3 version  $4 id  $5 token
constexpr char kRaiseSql[] = R"sql(
INSERT INTO {versions} AS x (scope, key, version)
SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM {dedup} WHERE scope = $1 AND id = $4 AND token = $5)
ON CONFLICT (scope, key) DO UPDATE SET version = excluded.version
WHERE x.version < excluded.version
RETURNING 1
)sql";

// What holds the id, and the key's version (as in lease mode).
constexpr char kClassifySql[] = R"sql(
SELECT n.now, d.status, d.token, d.lease_until, d.attempts, d.fingerprint, d.result,
       d.expires_at, v.version
FROM (SELECT {now} AS now) AS n
LEFT JOIN {dedup} AS d ON d.scope = $1 AND d.id = $2
LEFT JOIN {versions} AS v ON v.scope = $1 AND v.key = $3
)sql";

// The lock wait is bounded only around idem's own statements; the caller's setting is saved in a
// custom setting and restored, so the handler (and, in a savepoint, the rest of the caller's
// transaction) runs with the caller's lock_timeout. Transaction-local: a rollback undoes both.
constexpr char kBoundLockWaitSql[] =
    "SELECT set_config('idem.saved_lock_timeout', current_setting('lock_timeout'), true), "
    "set_config('lock_timeout', $1, true)";
constexpr char kRestoreLockWaitSql[] =
    "SELECT set_config('lock_timeout', current_setting('idem.saved_lock_timeout'), true)";

//   $1 scope  $2 id  $3 result  $4 attempts
constexpr char kFinishSql[] =
    "UPDATE {dedup} SET result = coalesce($3, result), attempts = $4 WHERE scope = $1 AND id = $2";

// On the attempts connection, in autocommit: counts this attempt unless max_attempts were already
// made (an expired count starts again). No row: dead-lettered.
//   $1 scope  $2 id  $3 retention ms  $4 max_attempts
constexpr char kCountAttemptSql[] = R"sql(
INSERT INTO {attempts} AS a (scope, id, attempts, expires_at)
VALUES ($1, $2, 1, {now} + $3)
ON CONFLICT (scope, id) DO UPDATE SET
  attempts = CASE WHEN a.expires_at <= {now} THEN 1 ELSE a.attempts + 1 END,
  expires_at = excluded.expires_at
WHERE a.expires_at <= {now} OR a.attempts < $4
RETURNING attempts
)sql";

constexpr char kSavepoint[] = "idem_process";
constexpr char kOperation[] = "transactional process";

struct Statements {
  Statement begin, savepoint, commit, release;
  Statement bound, restore, upsert, raise, classify, finish, count_attempt;
};

// Statement names carry a hash of the tables: two objects over different tables on one
// connection never share a name; over the same tables they share identical statements.
Statements MakeStatements(const internal::pg::Tables& t) {
  uint64_t h = 1469598103934665603ULL;
  for (char c : t.lock_name) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ULL;
  const std::string prefix = absl::StrCat(internal::pg::kStatementPrefix, "tx_", absl::Hex(h), "_");
  auto make = [&](const char* name, const char* sql, std::vector<Oid> types) {
    return Statement{.name = absl::StrCat(prefix, name),
                     .sql = internal::pg::Expand(sql, t),
                     .types = std::move(types)};
  };
  auto plain = [](std::string sql) { return Statement{.name = "", .sql = std::move(sql), .types = {}}; };
  return Statements{
      .begin = plain("BEGIN"),
      .savepoint = plain(absl::StrCat("SAVEPOINT ", kSavepoint)),
      .commit = plain("COMMIT"),
      .release = plain(absl::StrCat("RELEASE SAVEPOINT ", kSavepoint)),
      .bound = make("bound", kBoundLockWaitSql, {kTextOid}),
      .restore = make("restore", kRestoreLockWaitSql, {}),
      .upsert = make("upsert", kUpsertSql, {kTextOid, kByteaOid, kInt8Oid, kByteaOid, kInt8Oid}),
      .raise = make("raise", kRaiseSql, {kTextOid, kByteaOid, kByteaOid, kByteaOid, kInt8Oid}),
      .classify = make("classify", kClassifySql, {kTextOid, kByteaOid, kByteaOid}),
      .finish = make("finish", kFinishSql, {kTextOid, kByteaOid, kByteaOid, kInt4Oid}),
      .count_attempt =
          make("count_attempt", kCountAttemptSql, {kTextOid, kByteaOid, kInt8Oid, kInt4Oid}),
  };
}

// The caller's connection parameters, for the attempts connection.
absl::StatusOr<PgConnPtr> ConnectLike(PGconn* conn, std::string_view secret) {
  PQconninfoOption* info = PQconninfo(conn);
  if (info == nullptr) return absl::ResourceExhaustedError("postgres: out of memory");
  std::vector<const char*> keys, values;
  for (PQconninfoOption* o = info; o->keyword != nullptr; ++o) {
    if (o->val == nullptr || *o->val == '\0') continue;
    keys.push_back(o->keyword);
    values.push_back(o->val);
  }
  keys.push_back(nullptr);
  values.push_back(nullptr);
  PgConnPtr side(PQconnectdbParams(keys.data(), values.data(), /*expand_dbname=*/0));
  PQconninfoFree(info);
  if (side == nullptr) return absl::ResourceExhaustedError("postgres: out of memory");
  if (PQstatus(side.get()) != CONNECTION_OK) {
    return internal::pg::PgStatus(nullptr, side.get(), "connect (attempts connection)", secret);
  }
  PQsetNoticeProcessor(side.get(), [](void*, const char*) {}, nullptr);
  return side;
}

bool DuplicatePrepared(const PGresult* r) { return internal::pg::SqlState(r) == "42P05"; }

// Prepares `statements` on `conn`, accepting ones the session already has (another object over
// the same tables on this connection prepared the identical statement).
absl::Status PrepareOn(PGconn* conn, const std::vector<const Statement*>& statements,
                       std::string_view secret) {
  for (const Statement* s : statements) {
    PgResultPtr r(PQprepare(conn, s->name.c_str(), s->sql.c_str(),
                            static_cast<int>(s->types.size()), s->types.data()));
    if (r == nullptr) return internal::pg::PgStatus(nullptr, conn, "prepare", secret);
    if (PQresultStatus(r.get()) != PGRES_COMMAND_OK && !DuplicatePrepared(r.get())) {
      return internal::pg::PgStatus(r.get(), conn, "prepare", secret);
    }
  }
  return absl::OkStatus();
}

class PostgresTransactionalImpl final : public PostgresTransactional {
 public:
  PostgresTransactionalImpl(PGconn* conn, std::string scope, PostgresTransactionalOptions options,
                            std::unique_ptr<Statements> statements, PgConnPtr side,
                            std::string secret)
      : conn_(conn),
        scope_(std::move(scope)),
        options_(std::move(options)),
        st_(std::move(statements)),
        side_(std::move(side)),
        secret_(std::move(secret)),
        mode_(options_.unnamed_statements ? StatementMode::kUnnamed : StatementMode::kNamed),
        lock_timeout_(absl::StrCat(options_.lock_timeout.count(), "ms")) {
    if (!options_.token_source) options_.token_source = internal::RandomTokenSource();
  }

  absl::StatusOr<ProcessResult> Process(const Message& message, PostgresHandler handler) override {
    if (absl::Status s = ValidateId(message.id, options_.max_id_bytes); !s.ok()) return s;
    if (message.version) {
      if (absl::Status s = ValidateId(message.version->key, options_.max_id_bytes, "version key");
          !s.ok()) {
        return s;
      }
    }
    bool own = false;
    switch (PQtransactionStatus(conn_)) {
      case PQTRANS_IDLE:
        own = true;
        break;
      case PQTRANS_INTRANS:
        break;
      case PQTRANS_INERROR:
        return absl::FailedPreconditionError(
            "postgres: the connection's transaction has failed; roll it back first");
      case PQTRANS_ACTIVE:
        return absl::FailedPreconditionError("postgres: the connection is busy with a query");
      default:
        return internal::pg::PgStatus(nullptr, conn_, kOperation, secret_);
    }

    std::optional<std::string> fingerprint;
    if (options_.fingerprint_payloads) {
      fingerprint = internal::pg::EncodeFingerprint(Fingerprint::Of(message.payload));
    }
    std::optional<std::string_view> fingerprint_view;
    if (fingerprint) fingerprint_view = *fingerprint;
    const uint64_t token = options_.token_source();
    const std::string version =
        message.version ? internal::pg::EncodeVersion(message.version->version) : std::string();

    Params bound, upsert, raise, classify;
    bound.Text(lock_timeout_);
    upsert.Text(scope_).Bytea(message.id).Int8(TokenToSql(token)).OptionalBytea(fingerprint_view);
    upsert.Int8(options_.retention.count());
    classify.Text(scope_).Bytea(message.id);
    std::vector<Call> calls = {{own ? &st_->begin : &st_->savepoint, nullptr},
                               {&st_->bound, &bound},
                               {&st_->upsert, &upsert}};
    if (message.version) {
      raise.Text(scope_).Bytea(message.version->key).Bytea(version).Bytea(message.id);
      raise.Int8(TokenToSql(token));
      calls.push_back({&st_->raise, &raise});
      classify.Bytea(message.version->key);
    } else {
      classify.Null(kByteaOid);
    }
    calls.push_back({&st_->restore, nullptr});
    calls.push_back({&st_->classify, &classify});

    // From here on, every early return and an exception from the handler undo what was begun.
    Undo undo(this, own);
    absl::StatusOr<std::vector<PgResultPtr>> results =
        internal::pg::RunPipeline(conn_, calls, mode_, kOperation, secret_);
    if (!results.ok()) return results.status();
    if (PQresultStatus((*results)[0].get()) == PGRES_COMMAND_OK) undo.Arm();
    if (const PGresult* error = internal::pg::FirstError(*results)) {
      // A concurrent delivery of this id (or of its version key) held the row past lock_timeout.
      if (internal::pg::SqlState(error) == "55P03") {
        return ProcessResult{.outcome = Outcome::kInProgress};
      }
      return internal::pg::PgStatus(error, conn_, kOperation, secret_);
    }
    const PGresult* upserted = (*results)[2].get();
    if (PQntuples(upserted) != 1) return Held(results->back().get(), fingerprint_view);
    uint32_t attempt = static_cast<uint32_t>(GetInt4(upserted, 0, 0));
    if (message.version && PQntuples((*results)[3].get()) == 0) {
      return ProcessResult{.outcome = Outcome::kStale};
    }

    if (options_.max_attempts > 0) {
      absl::StatusOr<std::optional<uint32_t>> counted = CountAttempt(message.id);
      if (!counted.ok()) return counted.status();
      if (!counted->has_value()) {
        return ProcessResult{.outcome = Outcome::kDeadLettered, .attempt = options_.max_attempts};
      }
      attempt = **counted;
    }

    HandlerContext context(/*store=*/nullptr, scope_, message.id, attempt, token);
    // An exception leaves through here: `undo` rolls back the handler's writes and the dedup row
    // together, and the exception travels on unchanged.
    handler(conn_, context);
    switch (PQtransactionStatus(conn_)) {
      case PQTRANS_INTRANS:
        break;
      case PQTRANS_INERROR:
        return absl::FailedPreconditionError(
            "postgres: a statement of the handler failed; everything was rolled back");
      case PQTRANS_IDLE:
        undo.Disarm();  // nothing of ours is left to roll back
        return absl::FailedPreconditionError(
            "postgres: the handler ended the transaction (COMMIT or ROLLBACK on the connection); "
            "the version gate and the result were not applied");
      default:
        return absl::FailedPreconditionError(
            "postgres: the handler left the connection busy or broken; rolled back");
    }

    Params finish;
    std::vector<Call> end;
    const std::optional<std::string>& result = context.result();
    if (result || options_.max_attempts > 0) {
      finish.Text(scope_).Bytea(message.id).OptionalBytea(
          result ? std::optional<std::string_view>(*result) : std::nullopt);
      finish.Int4(static_cast<int32_t>(attempt));
      end.push_back({&st_->finish, &finish});
    }
    end.push_back({own ? &st_->commit : &st_->release, nullptr});
    absl::StatusOr<std::vector<PgResultPtr>> ended =
        internal::pg::RunPipeline(conn_, end, mode_, kOperation, secret_);
    if (!ended.ok()) return ended.status();
    if (const PGresult* error = internal::pg::FirstError(*ended)) {
      // A deferred constraint of the handler's writes (23xxx: FailedPrecondition) or a
      // serialization failure at COMMIT (40001: Unavailable). The undo rolls back whatever is
      // left; a failed COMMIT has already ended the transaction.
      return internal::pg::PgStatus(error, conn_, kOperation, secret_);
    }
    undo.Disarm();
    return ProcessResult{.outcome = Outcome::kProcessed, .result = result, .attempt = attempt};
  }

 private:
  // Rolls back what Process began (ROLLBACK, or back to its savepoint) unless disarmed.
  class Undo {
   public:
    Undo(PostgresTransactionalImpl* self, bool own) : self_(self), own_(own) {}
    Undo(const Undo&) = delete;
    Undo& operator=(const Undo&) = delete;
    void Arm() { armed_ = true; }
    void Disarm() { armed_ = false; }
    ~Undo() noexcept {
      if (!armed_) return;
      PGconn* conn = self_->conn_;
      if (PQstatus(conn) != CONNECTION_OK || PQtransactionStatus(conn) == PQTRANS_IDLE) return;
      if (own_) {
        PQclear(PQexec(conn, "ROLLBACK"));
      } else {
        PQclear(PQexec(conn, "ROLLBACK TO SAVEPOINT idem_process; RELEASE SAVEPOINT idem_process"));
      }
    }

   private:
    PostgresTransactionalImpl* self_;
    bool own_;
    bool armed_ = false;
  };

  // The outcome of a delivery whose upsert took nothing, from the classifying read.
  [[nodiscard]] static absl::StatusOr<ProcessResult> Held(
      const PGresult* classify, std::optional<std::string_view> fingerprint) {
    if (PQntuples(classify) != 1 || IsNull(classify, 0, 1)) {
      return absl::InternalError("postgres: the dedup row was neither inserted nor held");
    }
    const DedupRow row{.status = GetInt2(classify, 0, 1),
                       .token = internal::pg::TokenFromSql(GetInt8(classify, 0, 2)),
                       .lease_until = GetInt8(classify, 0, 3),
                       .attempts = static_cast<uint32_t>(GetInt4(classify, 0, 4)),
                       .fingerprint = GetBytea(classify, 0, 5),
                       .result = GetBytea(classify, 0, 6),
                       .expires_at = GetInt8(classify, 0, 7)};
    if (std::optional<ClaimResult> held =
            internal::pg::ClassifyHeld(row, fingerprint, GetInt8(classify, 0, 0))) {
      return OutcomeOfClaim(*held);
    }
    // A lease that ran out between the upsert and the read: held when the upsert looked.
    return ProcessResult{.outcome = Outcome::kInProgress, .attempt = row.attempts};
  }

  // Counts this attempt on the attempts connection (committed at once). nullopt: max_attempts
  // were made already.
  [[nodiscard]] absl::StatusOr<std::optional<uint32_t>> CountAttempt(std::string_view id) {
    if (side_ == nullptr || PQstatus(side_.get()) != CONNECTION_OK) {
      absl::StatusOr<PgConnPtr> side = ConnectLike(conn_, secret_);
      if (!side.ok()) return side.status();
      side_ = std::move(*side);
      side_prepared_ = false;
    }
    if (mode_ == StatementMode::kNamed && !side_prepared_) {
      if (absl::Status s = PrepareOn(side_.get(), {&st_->count_attempt}, secret_); !s.ok()) {
        return s;
      }
      side_prepared_ = true;
    }
    Params p;
    p.Text(scope_).Bytea(id).Int8(options_.retention.count());
    p.Int4(static_cast<int32_t>(options_.max_attempts));
    const Call call{&st_->count_attempt, &p};
    absl::StatusOr<std::vector<PgResultPtr>> r =
        internal::pg::RunPipeline(side_.get(), std::span(&call, 1), mode_, "count attempt",
                                  secret_);
    if (!r.ok()) {
      side_.reset();
      return r.status();
    }
    const PGresult* result = (*r)[0].get();
    if (!internal::pg::IsOk(result)) {
      return internal::pg::PgStatus(result, side_.get(), "count attempt", secret_);
    }
    if (PQntuples(result) == 0) return std::optional<uint32_t>();
    return std::optional<uint32_t>(static_cast<uint32_t>(GetInt4(result, 0, 0)));
  }

  PGconn* conn_;
  std::string scope_;
  PostgresTransactionalOptions options_;
  std::unique_ptr<Statements> st_;
  PgConnPtr side_;
  bool side_prepared_ = false;
  std::string secret_;
  StatementMode mode_;
  std::string lock_timeout_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<PostgresTransactional>> PostgresTransactional::Create(
    PGconn* conn, std::string scope, PostgresTransactionalOptions options) {
  if (conn == nullptr) return absl::InvalidArgumentError("postgres: conn is null");
  if (absl::Status s = ValidateScope(scope); !s.ok()) return s;
  if (options.retention.count() <= 0) {
    return absl::InvalidArgumentError("postgres: retention must be > 0");
  }
  if (options.max_id_bytes == 0 || options.max_id_bytes > (1u << 24)) {
    return absl::InvalidArgumentError("postgres: max_id_bytes must be within 1..16 MiB");
  }
  if (options.lock_timeout.count() < 1 || options.lock_timeout.count() > 3'600'000) {
    return absl::InvalidArgumentError("postgres: lock_timeout must be within 1 ms .. 1 h");
  }
  if (options.max_attempts > static_cast<uint32_t>(INT32_MAX)) {
    return absl::InvalidArgumentError("postgres: max_attempts must be below 2^31");
  }
  absl::StatusOr<internal::pg::Tables> tables =
      internal::pg::MakeTables(options.schema, options.table_prefix);
  if (!tables.ok()) return tables.status();
  const char* password = PQpass(conn);
  std::string secret = password != nullptr ? password : "";
  if (PQstatus(conn) != CONNECTION_OK) {
    return internal::pg::PgStatus(nullptr, conn, "transactional create", secret);
  }
  if (PQtransactionStatus(conn) != PQTRANS_IDLE || PQpipelineStatus(conn) != PQ_PIPELINE_OFF) {
    return absl::FailedPreconditionError(
        "postgres: PostgresTransactional::Create needs the connection outside a transaction");
  }
  if (absl::Status s = internal::pg::EnsureSchema(conn, *tables, secret); !s.ok()) return s;
  auto statements = std::make_unique<Statements>(MakeStatements(*tables));
  if (!options.unnamed_statements) {
    const Statements& s = *statements;
    if (absl::Status st = PrepareOn(
            conn, {&s.bound, &s.restore, &s.upsert, &s.raise, &s.classify, &s.finish}, secret);
        !st.ok()) {
      return st;
    }
  }
  PgConnPtr side;
  if (options.max_attempts > 0) {
    absl::StatusOr<PgConnPtr> opened = ConnectLike(conn, secret);
    if (!opened.ok()) return opened.status();
    side = std::move(*opened);
  }
  return std::unique_ptr<PostgresTransactional>(
      new PostgresTransactionalImpl(conn, std::move(scope), std::move(options),
                                    std::move(statements), std::move(side), std::move(secret)));
}

}  // namespace idem

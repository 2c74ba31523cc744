// Transactional mode (DESIGN.md §5): the dedup row, the handler's writes and the version gate
// share one BEGIN IMMEDIATE transaction on the caller's connection, committed once (I2, I5).
#include <sqlite3.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "idem/sqlite_store.h"
#include "internal/token.h"
#include "sqlite_internal.h"

namespace idem {
namespace {

using internal::DedupRow;
using internal::SqliteStmt;
using internal::StmtRun;
using internal::TokenToSql;
using internal::TxnStatements;
using internal::WriteTxn;

// The dedup row is written directly as COMPLETED (the transaction commits it only together
// with the handler's writes). As in lease mode, the common case is a plain insert that does
// nothing when the id is held, without RETURNING (it costs SQLite two temporary tables per run):
// sqlite3_changes() says it inserted, with attempts 1. Otherwise one read says why the id is held
// (duplicate, conflict, live lease-mode claim); only a record a lease-mode consumer left claimable
// (RELEASED, an expired lease, COMPLETED past its retention) goes on to the takeover upsert, which
// decides in one statement.
// There is no max_attempts here: a failed transaction leaves no trace to count.
//   ?1 scope  ?2 id  ?3 token  ?4 fingerprint  ?5 expires_at  (takeover:) ?6 now
constexpr char kInsertSql[] = R"sql(
INSERT INTO idem_dedup(scope, id, status, token, lease_until, attempts, fingerprint, result,
                       expires_at, claim_origin)
VALUES(?1, ?2, 2, ?3, 0, 1, ?4, NULL, ?5, 0)
ON CONFLICT(scope, id) DO NOTHING
)sql";
constexpr char kTakeoverSql[] = R"sql(
INSERT INTO idem_dedup(scope, id, status, token, lease_until, attempts, fingerprint, result,
                       expires_at, claim_origin)
VALUES(?1, ?2, 2, ?3, 0, 1, ?4, NULL, ?5, 0)
ON CONFLICT(scope, id) DO UPDATE SET
  status = 2,
  token = excluded.token,
  lease_until = 0,
  expires_at = excluded.expires_at,
  attempts = CASE WHEN idem_dedup.status = 2 THEN 1 ELSE idem_dedup.attempts + 1 END,
  fingerprint = CASE WHEN idem_dedup.status = 2 THEN excluded.fingerprint
                     ELSE coalesce(idem_dedup.fingerprint, excluded.fingerprint) END,
  result = NULL,
  claim_origin = CASE idem_dedup.status WHEN 2 THEN 3 WHEN 1 THEN 1 ELSE 2 END
WHERE NOT (excluded.fingerprint IS NOT NULL AND idem_dedup.fingerprint IS NOT NULL
           AND idem_dedup.fingerprint <> excluded.fingerprint)
  AND ((idem_dedup.status = 2 AND idem_dedup.expires_at <= ?6)
       OR idem_dedup.status = 1
       OR (idem_dedup.status = 0 AND idem_dedup.lease_until <= ?6))
)sql";

constexpr char kSetResultSql[] = "UPDATE idem_dedup SET result = ?3 WHERE scope = ?1 AND id = ?2";

struct Statements {
  TxnStatements txn;
  SqliteStmt insert;
  SqliteStmt takeover;
  SqliteStmt select_row;
  SqliteStmt select_version;
  SqliteStmt raise_version;
  SqliteStmt set_result;
};

[[nodiscard]] absl::StatusOr<Statements> PrepareStatements(sqlite3* db) {
  Statements s;
  absl::StatusOr<TxnStatements> txn = internal::PrepareTxnStatements(db);
  if (!txn.ok()) return txn.status();
  s.txn = std::move(txn).value();
  const std::pair<SqliteStmt*, const char*> all[] = {
      {&s.insert, kInsertSql},
      {&s.takeover, kTakeoverSql},
      {&s.select_row, internal::kSelectRowSql},
      {&s.select_version, internal::kSelectVersionSql},
      {&s.raise_version, internal::kRaiseVersionSql},
      {&s.set_result, kSetResultSql},
  };
  for (const auto& [slot, sql] : all) {
    absl::StatusOr<SqliteStmt> stmt = internal::Prepare(db, sql);
    if (!stmt.ok()) return stmt.status();
    *slot = std::move(stmt).value();
  }
  return s;
}

// Names the statements of Process in error messages.
constexpr char kOperation[] = "transactional process";

class SqliteTransactionalImpl final : public SqliteTransactional {
 public:
  SqliteTransactionalImpl(sqlite3* db, std::string scope, SqliteTransactionalOptions options,
                          Statements statements)
      : db_(db),
        scope_(std::move(scope)),
        options_(options),
        clock_(options_.clock != nullptr ? options_.clock : &SystemClock()),
        tokens_(internal::RandomTokenSource()),
        st_(std::move(statements)) {}

  absl::StatusOr<ProcessResult> Process(const Message& message, SqliteHandler handler) override {
    if (absl::Status s = ValidateId(message.id, options_.max_id_bytes); !s.ok()) return s;
    if (message.version) {
      if (absl::Status s = ValidateId(message.version->key, options_.max_id_bytes, "version key");
          !s.ok()) {
        return s;
      }
    }
    if (sqlite3_get_autocommit(db_) == 0) {
      return absl::FailedPreconditionError(
          "sqlite: Process needs the connection outside a transaction; it opens its own");
    }
    std::optional<internal::FingerprintBytes> fingerprint_bytes;
    if (options_.fingerprint_payloads) {
      fingerprint_bytes = internal::EncodeFingerprint(Fingerprint::Of(message.payload));
    }
    std::optional<std::string_view> fingerprint;
    if (fingerprint_bytes) fingerprint = internal::AsView(*fingerprint_bytes);

    WriteTxn txn(db_, st_.txn);
    if (absl::Status s = txn.Begin(kOperation); !s.ok()) return s;
    const int64_t now = clock_->NowMillis();
    const uint64_t token = tokens_();
    auto bind = [&](StmtRun& run) {
      run.Text(1, scope_).Blob(2, message.id).Int64(3, TokenToSql(token));
      run.OptionalBlob(4, fingerprint).Int64(5, now + options_.retention.count());
    };

    uint32_t attempt = 1;
    {
      StmtRun run(st_.insert.get(), kOperation, "insert record");
      bind(run);
      if (absl::Status s = run.Run(); !s.ok()) return s;
    }
    if (sqlite3_changes(db_) == 0) {
      // The id exists. A duplicate, a conflict or a live lease-mode claim is answered from one
      // read (the guard rolls back); only a record that looks claimable goes on to the takeover,
      // a single upsert whose own WHERE decides, then a read of the attempts it wrote.
      absl::StatusOr<std::optional<DedupRow>> row =
          internal::ReadRow(st_.select_row.get(), scope_, message.id, kOperation);
      if (!row.ok()) return row.status();
      if (!row->has_value()) {
        return absl::InternalError("sqlite: the dedup row was neither inserted nor held");
      }
      if (internal::ClassifyHeld(**row, fingerprint, now)) return Held(**row, fingerprint, now);
      {
        StmtRun run(st_.takeover.get(), kOperation, "take over record");
        bind(run);
        run.Int64(6, now);
        if (absl::Status s = run.Run(); !s.ok()) return s;
      }
      if (sqlite3_changes(db_) == 0) {
        return absl::InternalError("sqlite: a claimable dedup row was not taken over");
      }
      row = internal::ReadRow(st_.select_row.get(), scope_, message.id, kOperation);
      if (!row.ok()) return row.status();
      if (!row->has_value()) return absl::InternalError("sqlite: a taken-over row is missing");
      attempt = (*row)->attempts;
    }

    if (message.version) {
      absl::StatusOr<bool> stale = IsStale(*message.version);
      if (!stale.ok()) return stale.status();
      if (*stale) return ProcessResult{.outcome = Outcome::kStale};
    }

    HandlerContext context(/*store=*/nullptr, scope_, message.id, attempt, token);
    // An exception leaves through here: `txn`'s destructor rolls back the handler's writes and
    // the dedup row together, and the exception travels on unchanged.
    handler(db_, context);
    if (sqlite3_get_autocommit(db_) != 0) {
      return absl::FailedPreconditionError(
          "sqlite: the handler ended the transaction (COMMIT or ROLLBACK on the connection); "
          "the version gate and the result were not applied");
    }

    if (message.version) {
      const std::string version = internal::EncodeVersion(message.version->version);
      {
        StmtRun run(st_.raise_version.get(), kOperation, "raise version");
        run.Text(1, scope_).Blob(2, message.version->key).Blob(3, version);
        if (absl::Status s = run.Run(); !s.ok()) return s;
      }
      // Checked above in this transaction; only a handler writing idem_versions gets here.
      if (sqlite3_changes(db_) == 0) return ProcessResult{.outcome = Outcome::kStale};
    }
    if (context.result()) {
      StmtRun run(st_.set_result.get(), kOperation, "save result");
      run.Text(1, scope_).Blob(2, message.id).Blob(3, *context.result());
      if (absl::Status s = run.Run(); !s.ok()) return s;
    }
    if (absl::Status s = txn.Commit(kOperation); !s.ok()) return s;
    return ProcessResult{
        .outcome = Outcome::kProcessed, .result = context.result(), .attempt = attempt};
  }

 private:
  // Why the insert and the takeover did not take the id held in `row`.
  [[nodiscard]] static absl::StatusOr<ProcessResult> Held(
      const DedupRow& row, std::optional<std::string_view> fingerprint, int64_t now) {
    if (std::optional<ClaimResult> held = internal::ClassifyHeld(row, fingerprint, now)) {
      return OutcomeOfClaim(*held);
    }
    return absl::InternalError("sqlite: the dedup row was neither taken over nor held");
  }

  [[nodiscard]] absl::StatusOr<bool> IsStale(const VersionStamp& stamp) {
    StmtRun run(st_.select_version.get(), kOperation, "read version");
    run.Text(1, scope_).Blob(2, stamp.key);
    absl::StatusOr<bool> found = run.Step();
    if (!found.ok()) return found.status();
    if (!*found) return false;
    std::optional<std::string> bytes = run.ColumnBlob(0);
    absl::StatusOr<uint64_t> applied = internal::DecodeVersion(bytes.value_or(""));
    if (!applied.ok()) return applied.status();
    return *applied >= stamp.version;
  }

  sqlite3* db_;
  std::string scope_;
  SqliteTransactionalOptions options_;
  Clock* clock_;
  std::function<uint64_t()> tokens_;
  Statements st_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<SqliteTransactional>> SqliteTransactional::Create(
    sqlite3* db, std::string scope, SqliteTransactionalOptions options) {
  if (db == nullptr) return absl::InvalidArgumentError("sqlite: db is null");
  if (absl::Status s = ValidateScope(scope); !s.ok()) return s;
  if (options.retention.count() <= 0) {
    return absl::InvalidArgumentError("sqlite: retention must be > 0");
  }
  if (options.max_id_bytes == 0 || options.max_id_bytes > (1u << 24)) {
    return absl::InvalidArgumentError("sqlite: max_id_bytes must be within 1..16 MiB");
  }
  if (sqlite3_get_autocommit(db) == 0) {
    return absl::FailedPreconditionError(
        "sqlite: SqliteTransactional::Create needs the connection outside a transaction");
  }
  if (absl::Status s = internal::EnsureSchema(db); !s.ok()) return s;
  absl::StatusOr<Statements> statements = PrepareStatements(db);
  if (!statements.ok()) return statements.status();
  return std::unique_ptr<SqliteTransactional>(
      new SqliteTransactionalImpl(db, std::move(scope), options, std::move(statements).value()));
}

}  // namespace idem

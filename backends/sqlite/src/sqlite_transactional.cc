// Transactional mode (docs/design.md, "Modes"): the dedup row, the handler's writes and the
// version gate share one BEGIN IMMEDIATE transaction on the caller's connection, committed once
// (I2, I5). With max_attempts, a short transaction before it counts the attempt (see below).
#include <sqlite3.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <variant>

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

// The dedup row of a processed message is written directly as COMPLETED (the transaction commits
// it only together with the handler's writes). As in lease mode, the common case is a plain insert
// that does nothing when the id is held, without RETURNING (it costs SQLite two temporary tables
// per run): sqlite3_changes() says it inserted, with attempts 1. Otherwise one read says why the
// id is held (duplicate, conflict, live lease-mode claim); only a record left claimable (RELEASED,
// an ended lease, COMPLETED past its retention) goes on to the takeover upsert, whose WHERE is
// lease mode's (internal::kOnConflictTakeOver) and decides in one statement.
//
// Attempts and max_attempts. A handler that throws, or a process that dies inside the handler,
// rolls the transaction back, and with it anything written in it: an attempt counted there would
// never be seen. So with max_attempts > 0 each delivery first records its attempt in a short
// transaction of its own, committed before the handler's transaction begins:
//   1. attempt record (BEGIN IMMEDIATE … COMMIT): answers duplicate, conflict, in progress, stale
//      or dead-lettered without writing; otherwise inserts the row as RELEASED with attempts 1, or
//      takes a claimable row over as RELEASED with attempts + 1, below max_attempts only.
//   2. the effect (BEGIN IMMEDIATE … COMMIT): takes the RELEASED row over as COMPLETED without
//      counting again, runs the handler, applies the version gate, commits once.
// Why this is correct under crashes and failures:
//  - The effect still commits in one transaction with the COMPLETED row and the version (I2, I5):
//    step 1 writes only the dedup row, never an effect or a version.
//  - A crash or an exception after step 1 leaves the row RELEASED with the attempt counted, which
//    is durable (committed with the connection's synchronous setting) before the handler runs;
//    the handler's transaction is rolled back (SQLite's journal recovery after a crash). The next
//    delivery counts the next attempt, and the one after max_attempts is dead-lettered.
//  - A crash during step 1 leaves either nothing or the counted attempt (it is one transaction),
//    and no effect ran.
//  - RELEASED is a state every mode understands: a lease-mode claim may take the row over between
//    the two steps (then step 2 sees its live claim and answers in progress), and step 2 takes
//    over a row that another delivery's step 1 left RELEASED (that delivery then finds it
//    COMPLETED: a duplicate). An attempt is counted per delivery that reaches step 2, so a
//    concurrent redelivery counts even if it turns out a duplicate: max_attempts bounds how often
//    the handler may be started, never how often it succeeds.
// With max_attempts == 0 (unlimited) nothing needs counting: step 1 is skipped, a message costs
// one transaction, and a failed run leaves no trace (the next run is attempt 1 again).
//   ?1 scope  ?2 id  ?3 token  ?4 lease_until (always 0)  ?5 fingerprint  ?6 expires_at
//   (takeover:) ?9 now  ?10 max_attempts  ?11 attempt increment (see kOnConflictTakeOver)
constexpr char kCompletedRow[] = R"sql(
INSERT INTO idem_dedup(scope, id, status, token, lease_until, attempts, fingerprint, result,
                       expires_at, claim_origin)
VALUES(?1, ?2, 2, ?3, ?4, 1, ?5, NULL, ?6, 0)
)sql";
constexpr char kAttemptRow[] = R"sql(
INSERT INTO idem_dedup(scope, id, status, token, lease_until, attempts, fingerprint, result,
                       expires_at, claim_origin)
VALUES(?1, ?2, 1, ?3, ?4, 1, ?5, NULL, ?6, 0)
)sql";

constexpr char kSetResultSql[] = "UPDATE idem_dedup SET result = ?3 WHERE scope = ?1 AND id = ?2";

struct Statements {
  TxnStatements txn;
  SqliteStmt insert;    // kCompletedRow, do nothing when held
  SqliteStmt takeover;  // kCompletedRow, take a claimable row over
  SqliteStmt insert_attempt;
  SqliteStmt takeover_attempt;
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
  const std::string insert = absl::StrCat(kCompletedRow, internal::kOnConflictDoNothing);
  const std::string takeover = absl::StrCat(kCompletedRow, internal::kOnConflictTakeOver);
  const std::string insert_attempt = absl::StrCat(kAttemptRow, internal::kOnConflictDoNothing);
  const std::string takeover_attempt = absl::StrCat(kAttemptRow, internal::kOnConflictTakeOver);
  const std::pair<SqliteStmt*, const char*> all[] = {
      {&s.insert, insert.c_str()},
      {&s.takeover, takeover.c_str()},
      {&s.insert_attempt, insert_attempt.c_str()},
      {&s.takeover_attempt, takeover_attempt.c_str()},
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

    // With max_attempts, the attempt is counted and committed first (step 1 above).
    std::optional<uint32_t> counted;
    if (options_.max_attempts > 0) {
      absl::StatusOr<std::variant<uint32_t, ProcessResult>> step =
          RecordAttempt(message, fingerprint);
      if (!step.ok()) return step.status();
      if (const ProcessResult* answered = std::get_if<ProcessResult>(&*step)) return *answered;
      counted = std::get<uint32_t>(*step);
    }

    WriteTxn txn(db_, st_.txn);
    if (absl::Status s = txn.Begin(kOperation); !s.ok()) return s;
    const int64_t now = clock_->NowMillis();
    const uint64_t token = tokens_();
    uint32_t attempt = 1;
    if (counted.has_value()) {
      // The row is RELEASED with this attempt counted: one upsert takes it as COMPLETED without
      // counting again. Anything else that happened in between (a live lease-mode claim, a
      // completion by another delivery) is answered from one read.
      attempt = *counted;
      {
        StmtRun run(st_.takeover.get(), kOperation, "take over record");
        BindRow(run, message.id, token, fingerprint, now);
        run.Int64(9, now).Int64(10, 0).Int64(11, 0);
        if (absl::Status s = run.Run(); !s.ok()) return s;
      }
      if (sqlite3_changes(db_) == 0) {
        absl::StatusOr<std::optional<DedupRow>> row =
            internal::ReadRow(st_.select_row.get(), scope_, message.id, kOperation);
        if (!row.ok()) return row.status();
        if (!row->has_value()) {
          return absl::InternalError("sqlite: the dedup row was neither taken over nor held");
        }
        return Held(**row, fingerprint, now);
      }
    } else {
      absl::StatusOr<std::variant<uint32_t, ProcessResult>> claimed = InsertOrTakeOver(
          st_.insert.get(), st_.takeover.get(), /*max_attempts=*/0, kOperation, message.id, token,
          fingerprint, now);
      if (!claimed.ok()) return claimed.status();
      if (const ProcessResult* answered = std::get_if<ProcessResult>(&*claimed)) return *answered;
      attempt = std::get<uint32_t>(*claimed);
    }

    if (message.version) {
      absl::StatusOr<bool> stale = IsStale(*message.version);
      if (!stale.ok()) return stale.status();
      if (*stale) return ProcessResult{.outcome = Outcome::kStale};
    }

    HandlerContext context(/*store=*/nullptr, scope_, message.id, attempt, token);
    // An exception leaves through here: `txn`'s destructor rolls back the handler's writes and
    // the dedup row together, and the exception travels on unchanged. An attempt counted in step
    // 1 stays counted.
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
  // Binds the row both steps write: ?1 … ?6.
  void BindRow(StmtRun& run, std::string_view id, uint64_t token,
               std::optional<std::string_view> fingerprint, int64_t now) const {
    run.Text(1, scope_).Blob(2, id).Int64(3, TokenToSql(token)).Int64(4, 0);
    run.OptionalBlob(5, fingerprint).Int64(6, now + options_.retention.count());
  }

  // Step 1 with max_attempts: counts this delivery's attempt in a transaction of its own and
  // commits it. Returns the attempt's number, or the answer when the message is not to run
  // (duplicate, conflict, in progress, stale, dead-lettered; nothing written then).
  [[nodiscard]] absl::StatusOr<std::variant<uint32_t, ProcessResult>> RecordAttempt(
      const Message& message, std::optional<std::string_view> fingerprint) {
    static constexpr char kStep[] = "transactional process: record attempt";
    WriteTxn txn(db_, st_.txn);
    if (absl::Status s = txn.Begin(kStep); !s.ok()) return s;
    const int64_t now = clock_->NowMillis();
    // A stale message counts no attempt; the effect's transaction checks again.
    if (message.version) {
      absl::StatusOr<bool> stale = IsStale(*message.version);
      if (!stale.ok()) return stale.status();
      if (*stale) return ProcessResult{.outcome = Outcome::kStale};
    }
    // The row's token is never presented by anyone (Process fences by transaction, not token);
    // a fresh one keeps every token written unique.
    const uint64_t token = tokens_();
    absl::StatusOr<std::variant<uint32_t, ProcessResult>> claimed =
        InsertOrTakeOver(st_.insert_attempt.get(), st_.takeover_attempt.get(),
                         options_.max_attempts, kStep, message.id, token, fingerprint, now);
    if (!claimed.ok() || std::holds_alternative<ProcessResult>(*claimed)) return claimed;
    const uint32_t attempt = std::get<uint32_t>(*claimed);
    if (absl::Status s = txn.Commit(kStep); !s.ok()) return s;
    return attempt;
  }

  // Inserts the dedup row for `id`, or takes over a claimable one (one upsert whose own WHERE
  // decides, `max_attempts` 0 meaning unlimited). Returns the attempt the row now holds, or the
  // answer when the id is held (duplicate, conflict, in progress) or dead-lettered; a held id is
  // answered from one read and nothing is written. REQUIRES: inside a write transaction.
  [[nodiscard]] absl::StatusOr<std::variant<uint32_t, ProcessResult>> InsertOrTakeOver(
      sqlite3_stmt* insert, sqlite3_stmt* takeover, uint32_t max_attempts, const char* operation,
      std::string_view id, uint64_t token, std::optional<std::string_view> fingerprint,
      int64_t now) {
    {
      StmtRun run(insert, operation, "insert record");
      BindRow(run, id, token, fingerprint, now);
      if (absl::Status s = run.Run(); !s.ok()) return s;
    }
    if (sqlite3_changes(db_) != 0) return uint32_t{1};
    absl::StatusOr<std::optional<DedupRow>> row =
        internal::ReadRow(st_.select_row.get(), scope_, id, operation);
    if (!row.ok()) return row.status();
    if (!row->has_value()) {
      return absl::InternalError("sqlite: the dedup row was neither inserted nor held");
    }
    if (internal::ClassifyHeld(**row, fingerprint, now)) return Held(**row, fingerprint, now);
    {
      StmtRun run(takeover, operation, "take over record");
      BindRow(run, id, token, fingerprint, now);
      run.Int64(9, now).Int64(10, max_attempts).Int64(11, 1);
      if (absl::Status s = run.Run(); !s.ok()) return s;
    }
    if (sqlite3_changes(db_) == 0) {
      // Claimable in shape but not taken: only max_attempts refuses that (ClassifyHeld answered
      // the rest). Nothing was written.
      if (max_attempts > 0 && (*row)->status != internal::kStatusCompleted &&
          (*row)->attempts >= max_attempts) {
        return ProcessResult{.outcome = Outcome::kDeadLettered, .attempt = (*row)->attempts};
      }
      return absl::InternalError("sqlite: a claimable dedup row was not taken over");
    }
    row = internal::ReadRow(st_.select_row.get(), scope_, id, operation);
    if (!row.ok()) return row.status();
    if (!row->has_value()) return absl::InternalError("sqlite: a taken-over row is missing");
    return (*row)->attempts;
  }

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

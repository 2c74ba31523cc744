#include "sqlite_internal.h"

#include <cstring>
#include <span>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "internal/big_endian.h"
#include "internal/strings.h"

namespace idem::internal {

absl::Status SqliteStatus(int rc, sqlite3* db, std::string_view operation) {
  std::string message = absl::StrCat("sqlite: ", std::string(operation), ": ", sqlite3_errstr(rc));
  // The connection's message is more precise ("no such table: …", "database is locked") and
  // holds no user data: ids, keys and payloads only ever reach SQLite as bound parameters.
  if (db != nullptr && (sqlite3_extended_errcode(db) & 0xff) == (rc & 0xff)) {
    const char* detail = sqlite3_errmsg(db);
    if (detail != nullptr && std::strcmp(detail, sqlite3_errstr(rc)) != 0) {
      absl::StrAppend(&message, " (", detail, ")");
    }
  }
  absl::StrAppend(&message, " [sqlite extended code ", rc, "]");

  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_CANTOPEN:
    case SQLITE_IOERR:
    case SQLITE_PROTOCOL:
    case SQLITE_SCHEMA:
      return absl::UnavailableError(message);
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return absl::DataLossError(message);
    case SQLITE_FULL:
    case SQLITE_NOMEM:
      return absl::ResourceExhaustedError(message);
    case SQLITE_READONLY:
    case SQLITE_CONSTRAINT:
      return absl::FailedPreconditionError(message);
    case SQLITE_PERM:
    case SQLITE_AUTH:
      return absl::PermissionDeniedError(message);
    case SQLITE_INTERRUPT:
      return absl::CancelledError(message);
    case SQLITE_TOOBIG:
    case SQLITE_RANGE:
    case SQLITE_MISMATCH:
      return absl::InvalidArgumentError(message);
    default:
      return absl::InternalError(message);
  }
}

std::string SynchronousPragma(SqliteSynchronous synchronous) {
  return absl::StrCat("PRAGMA synchronous = ",
                      absl::AsciiStrToUpper(ToAbsl(SqliteSynchronousName(synchronous))));
}

absl::StatusOr<SqliteStmt> Prepare(sqlite3* db, std::string_view sql) {
  sqlite3_stmt* raw = nullptr;
  const int rc = sqlite3_prepare_v3(db, sql.data(), static_cast<int>(sql.size()),
                                    SQLITE_PREPARE_PERSISTENT, &raw, nullptr);
  SqliteStmt stmt(raw);
  if (rc != SQLITE_OK) return SqliteStatus(rc, db, "prepare statement");
  return stmt;
}

absl::Status Exec(sqlite3* db, const char* sql, std::string_view operation) {
  const int rc = sqlite3_exec(db, sql, nullptr, nullptr, nullptr);
  if (rc != SQLITE_OK) return SqliteStatus(rc, db, operation);
  return absl::OkStatus();
}

StmtRun& StmtRun::Text(int index, std::string_view value) {
  Check(
      sqlite3_bind_text(stmt_, index, value.data(), static_cast<int>(value.size()), SQLITE_STATIC));
  return *this;
}

StmtRun& StmtRun::Blob(int index, std::string_view value) {
  if (value.empty()) {
    Check(sqlite3_bind_zeroblob(stmt_, index, 0));
  } else {
    Check(sqlite3_bind_blob(stmt_, index, value.data(), static_cast<int>(value.size()),
                            SQLITE_STATIC));
  }
  return *this;
}

StmtRun& StmtRun::OptionalBlob(int index, const std::optional<std::string_view>& value) {
  return value.has_value() ? Blob(index, *value) : Null(index);
}

StmtRun& StmtRun::Int64(int index, int64_t value) {
  Check(sqlite3_bind_int64(stmt_, index, value));
  return *this;
}

StmtRun& StmtRun::Null(int index) {
  Check(sqlite3_bind_null(stmt_, index));
  return *this;
}

absl::Status StmtRun::Error(int rc, std::string_view suffix) const {
  std::string operation(operation_);
  if (!step_.empty()) absl::StrAppend(&operation, ": ", internal::ToAbsl(step_));
  absl::StrAppend(&operation, internal::ToAbsl(suffix));
  return SqliteStatus(rc, sqlite3_db_handle(stmt_), operation);
}

absl::StatusOr<bool> StmtRun::Step() {
  if (bind_rc_ != SQLITE_OK) return Error(bind_rc_, " (bind)");
  const int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  return Error(rc, "");
}

absl::Status StmtRun::Run() {
  while (true) {
    absl::StatusOr<bool> row = Step();
    if (!row.ok()) return row.status();
    if (!*row) return absl::OkStatus();
  }
}

std::optional<std::string> StmtRun::ColumnBlob(int column) const {
  if (ColumnIsNull(column)) return std::nullopt;
  const void* data = sqlite3_column_blob(stmt_, column);
  const int size = sqlite3_column_bytes(stmt_, column);
  if (data == nullptr || size <= 0) return std::string();
  return std::string(static_cast<const char*>(data), static_cast<std::size_t>(size));
}

absl::StatusOr<TxnStatements> PrepareTxnStatements(sqlite3* db) {
  TxnStatements statements;
  absl::StatusOr<SqliteStmt> begin = Prepare(db, "BEGIN IMMEDIATE");
  if (!begin.ok()) return begin.status();
  absl::StatusOr<SqliteStmt> commit = Prepare(db, "COMMIT");
  if (!commit.ok()) return commit.status();
  absl::StatusOr<SqliteStmt> rollback = Prepare(db, "ROLLBACK");
  if (!rollback.ok()) return rollback.status();
  statements.begin_immediate = std::move(begin).value();
  statements.commit = std::move(commit).value();
  statements.rollback = std::move(rollback).value();
  return statements;
}

absl::Status WriteTxn::Begin(std::string_view operation) {
  StmtRun run(statements_.begin_immediate.get(), operation, "begin immediate");
  absl::Status status = run.Run();
  if (status.ok()) active_ = true;
  return status;
}

absl::Status WriteTxn::Commit(std::string_view operation) {
  absl::Status status;
  {
    StmtRun run(statements_.commit.get(), operation, "commit");
    status = run.Run();
  }
  if (status.ok()) {
    active_ = false;
  } else {
    Rollback();
  }
  return status;
}

void WriteTxn::Rollback() noexcept {
  if (!active_) return;
  active_ = false;
  // Some failures (SQLITE_FULL, IOERR, NOMEM, BUSY during COMMIT) may have rolled back already.
  if (sqlite3_get_autocommit(db_) != 0) return;
  sqlite3_stmt* rollback = statements_.rollback.get();
  sqlite3_step(rollback);
  sqlite3_reset(rollback);
}

namespace {

// Migration i takes the schema from version i to i + 1. Never edit one that has shipped: add
// the next instead.
constexpr const char* kMigrations[kSchemaVersion] = {
    // 0 -> 1: the dedup log, its purge index, and the version gate.
    R"sql(
CREATE TABLE idem_dedup(
  scope TEXT NOT NULL,
  id BLOB NOT NULL,
  status INTEGER NOT NULL,
  token INTEGER NOT NULL,
  lease_until INTEGER NOT NULL,
  attempts INTEGER NOT NULL,
  fingerprint BLOB,
  result BLOB,
  expires_at INTEGER NOT NULL,
  PRIMARY KEY(scope, id)) WITHOUT ROWID;
CREATE INDEX idem_dedup_expires_at ON idem_dedup(expires_at);
CREATE TABLE idem_versions(
  scope TEXT NOT NULL,
  key BLOB NOT NULL,
  version BLOB NOT NULL,
  PRIMARY KEY(scope, key)) WITHOUT ROWID;
)sql",
    // 1 -> 2: how the current claim was obtained, so that a claim stays one statement.
    R"sql(
ALTER TABLE idem_dedup ADD COLUMN claim_origin INTEGER NOT NULL DEFAULT 0;
)sql",
};

// The schema version recorded in `db`, 0 when no idem table exists.
[[nodiscard]] absl::StatusOr<int64_t> ReadSchemaVersion(sqlite3* db) {
  absl::StatusOr<SqliteStmt> has_meta =
      Prepare(db, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'idem_meta'");
  if (!has_meta.ok()) return has_meta.status();
  {
    StmtRun run(has_meta->get(), "read schema version");
    absl::StatusOr<bool> row = run.Step();
    if (!row.ok()) return row.status();
    if (!*row || run.ColumnInt64(0) == 0) return 0;
  }
  absl::StatusOr<SqliteStmt> read =
      Prepare(db, "SELECT value FROM idem_meta WHERE name = 'schema_version'");
  if (!read.ok()) return read.status();
  StmtRun run(read->get(), "read schema version");
  absl::StatusOr<bool> row = run.Step();
  if (!row.ok()) return row.status();
  return *row ? run.ColumnInt64(0) : 0;
}

[[nodiscard]] absl::Status NewerSchemaError(int64_t found) {
  return absl::FailedPreconditionError(
      absl::StrCat("sqlite: the database holds idem schema version ", found,
                   "; this build knows up to ", kSchemaVersion, " (open it with a newer idem)"));
}

}  // namespace

absl::Status EnsureSchema(sqlite3* db) {
  // A plain read first: the common case (schema current) takes no write lock.
  absl::StatusOr<int64_t> found = ReadSchemaVersion(db);
  if (!found.ok()) return found.status();
  if (*found == kSchemaVersion) return absl::OkStatus();
  if (*found > kSchemaVersion) return NewerSchemaError(*found);

  absl::StatusOr<TxnStatements> statements = PrepareTxnStatements(db);
  if (!statements.ok()) return statements.status();
  WriteTxn txn(db, *statements);
  if (absl::Status s = txn.Begin("migrate schema"); !s.ok()) return s;
  // Another process may have migrated while this one waited for the lock.
  found = ReadSchemaVersion(db);
  if (!found.ok()) return found.status();
  if (*found > kSchemaVersion) return NewerSchemaError(*found);
  if (*found < 0) {
    return absl::DataLossError(absl::StrCat("sqlite: invalid idem schema version ", *found));
  }
  if (absl::Status s = Exec(db,
                            "CREATE TABLE IF NOT EXISTS idem_meta("
                            "name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
                            "migrate schema: create idem_meta");
      !s.ok()) {
    return s;
  }
  for (int64_t v = *found; v < kSchemaVersion; ++v) {
    if (absl::Status s =
            Exec(db, kMigrations[v], absl::StrCat("migrate schema to version ", v + 1));
        !s.ok()) {
      return s;
    }
  }
  if (absl::Status s = Exec(db,
                            absl::StrCat("INSERT OR REPLACE INTO idem_meta(name, value) "
                                         "VALUES('schema_version', ",
                                         kSchemaVersion, ")")
                                .c_str(),
                            "migrate schema: record version");
      !s.ok()) {
    return s;
  }
  return txn.Commit("migrate schema");
}

std::string EncodeVersion(uint64_t version) { return BigEndian(version, 8); }

FingerprintBytes EncodeFingerprint(const Fingerprint& fingerprint) {
  FingerprintBytes out;
  StoreBigEndian(fingerprint.high, std::span<char>(out.data(), 8));
  StoreBigEndian(fingerprint.low, std::span<char>(out.data() + 8, 8));
  return out;
}

absl::StatusOr<uint64_t> DecodeVersion(std::string_view bytes) {
  if (bytes.size() != 8) {
    return absl::DataLossError(
        absl::StrCat("sqlite: a stored version is ", bytes.size(), " bytes, expected 8"));
  }
  return LoadBigEndian(bytes);
}

absl::StatusOr<std::optional<DedupRow>> ReadRow(sqlite3_stmt* select_row, std::string_view scope,
                                                std::string_view id, std::string_view operation) {
  StmtRun run(select_row, operation, "read record");
  run.Text(1, scope).Blob(2, id);
  absl::StatusOr<bool> found = run.Step();
  if (!found.ok()) return found.status();
  if (!*found) return std::optional<DedupRow>();
  return std::optional<DedupRow>(DedupRow{
      .status = static_cast<int>(run.ColumnInt64(0)),
      .token = TokenFromSql(run.ColumnInt64(1)),
      .lease_until = run.ColumnInt64(2),
      .attempts = static_cast<uint32_t>(run.ColumnInt64(3)),
      .fingerprint = run.ColumnBlob(4),
      .result = run.ColumnBlob(5),
      .expires_at = run.ColumnInt64(6),
      .claim_origin = static_cast<int>(run.ColumnInt64(7)),
  });
}

std::optional<ClaimResult> ClassifyHeld(const DedupRow& row,
                                        std::optional<std::string_view> request_fingerprint,
                                        int64_t now) {
  if (request_fingerprint && row.fingerprint && *request_fingerprint != *row.fingerprint) {
    return ClaimResult{.status = ClaimStatus::kConflict, .attempt = row.attempts};
  }
  if (row.status == kStatusCompleted && row.expires_at > now) {
    return ClaimResult{
        .status = ClaimStatus::kDuplicate, .attempt = row.attempts, .result = row.result};
  }
  if (row.status == kStatusInProgress && row.lease_until > now) {
    return ClaimResult{.status = ClaimStatus::kInProgress,
                       .attempt = row.attempts,
                       .lease_until_ms = row.lease_until};
  }
  return std::nullopt;
}

}  // namespace idem::internal

#include "pg_internal.h"

#include <poll.h>

#include <cstring>
#include <span>
#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "internal/big_endian.h"
#include "internal/strings.h"

namespace idem::internal::pg {
namespace {

// libpq's binary format: integers big-endian (internal/big_endian.h).
void PutBigEndian(char* out, uint64_t value, std::size_t bytes) {
  StoreBigEndian(value, std::span<char>(out, bytes));
}

uint64_t GetBigEndian(const char* in, std::size_t bytes) {
  return LoadBigEndian(std::string_view(in, bytes));
}

absl::Status StatusForCode(absl::StatusCode code, std::string message) {
  return absl::Status(code, message);
}

// The code of a SQLSTATE (see postgres_store.h).
absl::StatusCode CodeOf(std::string_view state) {
  if (state.size() != 5) return absl::StatusCode::kInternal;
  const std::string_view cls = state.substr(0, 2);
  if (cls == "08") return absl::StatusCode::kUnavailable;  // connection exception
  if (state == "57014") return absl::StatusCode::kDeadlineExceeded;  // statement_timeout
  if (cls == "57") return absl::StatusCode::kUnavailable;  // admin shutdown, cannot connect now
  if (state == "53300") return absl::StatusCode::kUnavailable;  // too many connections
  if (cls == "53") return absl::StatusCode::kResourceExhausted;
  if (cls == "40") return absl::StatusCode::kUnavailable;  // 40001, 40P01: retry
  if (state == "55P03") return absl::StatusCode::kUnavailable;  // lock_not_available
  if (state == "55006" || state == "55000") return absl::StatusCode::kFailedPrecondition;
  if (cls == "28" || state == "42501") return absl::StatusCode::kPermissionDenied;
  if (state == "42P01" || state == "42703" || state == "42883" || state == "3F000" ||
      state == "3D000") {
    return absl::StatusCode::kFailedPrecondition;  // a table, column or schema is missing
  }
  if (cls == "25") return absl::StatusCode::kFailedPrecondition;  // read-only, failed txn
  if (cls == "23") return absl::StatusCode::kFailedPrecondition;  // the handler's constraints
  if (cls == "22") return absl::StatusCode::kInvalidArgument;
  if (state == "XX001" || state == "XX002") return absl::StatusCode::kDataLoss;
  return absl::StatusCode::kInternal;
}

std::string ConnMessage(const PGconn* conn) {
  if (conn == nullptr) return "no connection";
  const char* text = PQerrorMessage(conn);
  std::string message = text != nullptr ? text : "";
  absl::StripTrailingAsciiWhitespace(&message);
  // libpq's messages may span lines ("connection to server … failed: …\n\tIs the server …").
  absl::StrReplaceAll({{"\n", " "}, {"\t", " "}}, &message);
  if (message.empty()) message = "connection failed";
  return message;
}

}  // namespace

std::string MaskSecret(std::string text, std::string_view secret) {
  if (secret.empty()) return text;
  return absl::StrReplaceAll(text, {{internal::ToAbsl(secret), "***"}});
}

std::string_view SqlState(const PGresult* result) {
  if (result == nullptr) return {};
  const char* state = PQresultErrorField(result, PG_DIAG_SQLSTATE);
  return state != nullptr ? std::string_view(state) : std::string_view();
}

absl::Status PgStatus(const PGresult* result, const PGconn* conn, std::string_view operation,
                      std::string_view secret) {
  const std::string_view state = SqlState(result);
  if (result == nullptr || state.empty()) {
    // No server error: the connection failed (or libpq refused the call).
    const bool broken = conn == nullptr || PQstatus(conn) == CONNECTION_BAD || result == nullptr;
    std::string message = ConnMessage(conn);
    if (result != nullptr) {
      const char* text = PQresultErrorMessage(result);
      if (text != nullptr && *text != '\0') {
        message = text;
        absl::StripTrailingAsciiWhitespace(&message);
      }
    }
    return StatusForCode(
        broken ? absl::StatusCode::kUnavailable : absl::StatusCode::kInternal,
        MaskSecret(absl::StrCat("postgres: ", internal::ToAbsl(operation), ": ", message), secret));
  }
  const char* primary = PQresultErrorField(result, PG_DIAG_MESSAGE_PRIMARY);
  // Only the primary message: the DETAIL of a constraint error quotes key values (ids).
  std::string message = absl::StrCat("postgres: ", internal::ToAbsl(operation), ": ",
                                     primary != nullptr ? primary : "error", " [SQLSTATE ",
                                     internal::ToAbsl(state), "]");
  return StatusForCode(CodeOf(state), MaskSecret(std::move(message), secret));
}

std::string PasswordOf(const std::string& conninfo) {
  char* error = nullptr;
  PQconninfoOption* options = PQconninfoParse(conninfo.c_str(), &error);
  if (error != nullptr) PQfreemem(error);
  if (options == nullptr) return "";
  std::string password;
  for (PQconninfoOption* o = options; o->keyword != nullptr; ++o) {
    if (std::strcmp(o->keyword, "password") == 0 && o->val != nullptr) password = o->val;
  }
  PQconninfoFree(options);
  return password;
}

absl::StatusOr<PgConnPtr> Connect(const std::string& conninfo, std::string_view secret) {
  // Defaults that bound a server that does not answer, placed before the conninfo so that the
  // caller's own connect_timeout or tcp_user_timeout wins: libpq keeps the last value given.
  // connect_timeout bounds the connect; tcp_user_timeout (Linux) drops a connection whose sent
  // data goes unacknowledged (a partition), so a call fails Unavailable instead of waiting forever.
  const char* const keywords[] = {"connect_timeout", "tcp_user_timeout", "dbname", nullptr};
  const char* const values[] = {"10", "30000", conninfo.c_str(), nullptr};
  PgConnPtr conn(PQconnectdbParams(keywords, values, /*expand_dbname=*/1));
  if (conn == nullptr) return absl::ResourceExhaustedError("postgres: out of memory");
  if (PQstatus(conn.get()) != CONNECTION_OK) {
    std::string message = ConnMessage(conn.get());
    absl::StatusCode code = absl::StatusCode::kUnavailable;
    if (absl::StrContains(message, "authentication failed") ||
        absl::StrContains(message, "no password supplied") ||
        absl::StrContains(message, "no pg_hba.conf entry")) {
      code = absl::StatusCode::kPermissionDenied;
    } else if (absl::StrContains(message, "does not exist")) {
      code = absl::StatusCode::kFailedPrecondition;  // the database or role is missing
    }
    return StatusForCode(code, MaskSecret(absl::StrCat("postgres: connect: ", message), secret));
  }
  // Server notices (e.g. "relation already exists, skipping") are not errors; keep them off
  // stderr.
  PQsetNoticeProcessor(conn.get(), [](void*, const char*) {}, nullptr);
  return conn;
}

Params& Params::Add(std::string_view value, Oid type) {
  types_[n_] = type;
  // A non-null pointer even for an empty value: null would bind SQL NULL.
  values_[n_] = value.data() != nullptr ? value.data() : "";
  lengths_[n_] = static_cast<int>(value.size());
  formats_[n_] = 1;
  ++n_;
  return *this;
}

Params& Params::OptionalBytea(const std::optional<std::string_view>& value) {
  return value.has_value() ? Bytea(*value) : Null(kByteaOid);
}

Params& Params::Int8(int64_t value) {
  PutBigEndian(ints_[n_].data(), static_cast<uint64_t>(value), 8);
  return Add(std::string_view(ints_[n_].data(), 8), kInt8Oid);
}

Params& Params::Int4(int32_t value) {
  PutBigEndian(ints_[n_].data(), static_cast<uint32_t>(value), 4);
  return Add(std::string_view(ints_[n_].data(), 4), kInt4Oid);
}

Params& Params::Null(Oid type) {
  types_[n_] = type;
  values_[n_] = nullptr;
  lengths_[n_] = 0;
  formats_[n_] = 1;
  ++n_;
  return *this;
}

ArrayBuilder& ArrayBuilder::Bytes(std::string_view value) {
  char length[4];
  PutBigEndian(length, static_cast<uint32_t>(value.size()), 4);
  elements_.append(length, 4);
  elements_.append(value.data(), value.size());
  ++count_;
  return *this;
}

ArrayBuilder& ArrayBuilder::OptionalBytes(const std::optional<std::string_view>& value) {
  return value.has_value() ? Bytes(*value) : Null();
}

ArrayBuilder& ArrayBuilder::Int8(int64_t value) {
  char bytes[8];
  PutBigEndian(bytes, static_cast<uint64_t>(value), 8);
  return Bytes(std::string_view(bytes, 8));
}

ArrayBuilder& ArrayBuilder::Int4(int32_t value) {
  char bytes[4];
  PutBigEndian(bytes, static_cast<uint32_t>(value), 4);
  return Bytes(std::string_view(bytes, 4));
}

ArrayBuilder& ArrayBuilder::Null() {
  char length[4];
  PutBigEndian(length, static_cast<uint32_t>(-1), 4);  // a length of -1 is SQL NULL
  elements_.append(length, 4);
  has_null_ = true;
  ++count_;
  return *this;
}

std::string_view ArrayBuilder::Encoded() {
  // Header: dimensions, has-nulls flag, element type; then per dimension its size and lower
  // bound (1, SQL's convention). An empty array has no dimensions.
  const int32_t dims = count_ > 0 ? 1 : 0;
  encoded_.assign(12 + 8 * dims, '\0');
  PutBigEndian(encoded_.data(), static_cast<uint32_t>(dims), 4);
  PutBigEndian(encoded_.data() + 4, has_null_ ? 1 : 0, 4);
  PutBigEndian(encoded_.data() + 8, element_type_, 4);
  if (dims > 0) {
    PutBigEndian(encoded_.data() + 12, static_cast<uint32_t>(count_), 4);
    PutBigEndian(encoded_.data() + 16, 1, 4);
  }
  encoded_.append(elements_);
  return encoded_;
}

absl::Status PrepareAll(PGconn* conn, std::span<const Statement* const> statements,
                        std::string_view secret) {
  if (PQenterPipelineMode(conn) != 1) return PgStatus(nullptr, conn, "prepare", secret);
  bool sent = true;
  for (const Statement* s : statements) {
    sent = sent && PQsendPrepare(conn, s->name.c_str(), s->sql.c_str(),
                                 static_cast<int>(s->types.size()), s->types.data()) == 1;
  }
  sent = sent && PQpipelineSync(conn) == 1;
  if (!sent) return PgStatus(nullptr, conn, "prepare", secret);
  absl::Status status;
  for (std::size_t i = 0; i < statements.size(); ++i) {
    PgResultPtr result(PQgetResult(conn));
    if (result == nullptr) return PgStatus(nullptr, conn, "prepare", secret);
    if (status.ok() && PQresultStatus(result.get()) != PGRES_COMMAND_OK) {
      status = PgStatus(result.get(), conn, "prepare", secret);
    }
    while (PgResultPtr extra{PQgetResult(conn)}) {
    }
  }
  PgResultPtr sync(PQgetResult(conn));
  if (sync == nullptr || PQresultStatus(sync.get()) != PGRES_PIPELINE_SYNC) {
    return PgStatus(nullptr, conn, "prepare", secret);
  }
  if (PQexitPipelineMode(conn) != 1) return PgStatus(nullptr, conn, "prepare", secret);
  return status;
}

absl::StatusOr<std::vector<PgResultPtr>> RunPipeline(PGconn* conn, std::span<const Call> calls,
                                                     StatementMode mode,
                                                     std::string_view operation,
                                                     std::string_view secret) {
  auto failed = [&]() { return PgStatus(nullptr, conn, operation, secret); };
  if (PQenterPipelineMode(conn) != 1) return failed();
  for (const Call& call : calls) {
    static const Params kNone;
    const Params& p = call.params != nullptr ? *call.params : kNone;
    const Statement& s = *call.statement;
    const int sent =
        mode == StatementMode::kNamed && !s.name.empty()
            ? PQsendQueryPrepared(conn, s.name.c_str(), p.size(), p.values(), p.lengths(),
                                  p.formats(), /*resultFormat=*/1)
            : PQsendQueryParams(conn, s.sql.c_str(), p.size(), p.size() > 0 ? p.types() : nullptr,
                                p.values(), p.lengths(), p.formats(), /*resultFormat=*/1);
    if (sent != 1) return failed();
  }
  if (PQpipelineSync(conn) != 1) return failed();
  // A non-blocking connection (the store's own) buffers what it sends without limit; flush it,
  // reading replies meanwhile so that neither side waits on a full socket buffer.
  if (PQisnonblocking(conn)) {
    while (true) {
      const int flushed = PQflush(conn);
      if (flushed < 0) return failed();
      if (flushed == 0) break;
      pollfd fd{.fd = PQsocket(conn), .events = POLLIN | POLLOUT, .revents = 0};
      if (poll(&fd, 1, -1) < 0 && errno != EINTR) return failed();
      if ((fd.revents & POLLIN) != 0 && PQconsumeInput(conn) != 1) return failed();
    }
  }

  std::vector<PgResultPtr> results;
  results.reserve(calls.size());
  for (std::size_t i = 0; i < calls.size(); ++i) {
    PgResultPtr result(PQgetResult(conn));
    if (result == nullptr) return failed();
    // A connection lost mid-pipeline reports a FATAL_ERROR without SQLSTATE: the whole exchange
    // is in doubt.
    if (PQstatus(conn) == CONNECTION_BAD) return failed();
    // Each query's results end with a null.
    while (PgResultPtr extra{PQgetResult(conn)}) {
      if (PQstatus(conn) == CONNECTION_BAD) return failed();
    }
    results.push_back(std::move(result));
  }
  PgResultPtr sync(PQgetResult(conn));
  if (sync == nullptr || PQresultStatus(sync.get()) != PGRES_PIPELINE_SYNC) return failed();
  if (PQexitPipelineMode(conn) != 1) return failed();
  return results;
}

bool IsOk(const PGresult* result) {
  const ExecStatusType status = PQresultStatus(result);
  return status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK;
}

const PGresult* FirstError(const std::vector<PgResultPtr>& results) {
  for (const PgResultPtr& r : results) {
    if (!IsOk(r.get())) return r.get();
  }
  return nullptr;
}

bool IsNull(const PGresult* result, int row, int column) {
  return PQgetisnull(result, row, column) != 0;
}

int64_t GetInt8(const PGresult* result, int row, int column) {
  if (IsNull(result, row, column) || PQgetlength(result, row, column) != 8) return 0;
  return static_cast<int64_t>(GetBigEndian(PQgetvalue(result, row, column), 8));
}

int32_t GetInt4(const PGresult* result, int row, int column) {
  if (IsNull(result, row, column) || PQgetlength(result, row, column) != 4) return 0;
  return static_cast<int32_t>(GetBigEndian(PQgetvalue(result, row, column), 4));
}

int16_t GetInt2(const PGresult* result, int row, int column) {
  if (IsNull(result, row, column) || PQgetlength(result, row, column) != 2) return 0;
  return static_cast<int16_t>(GetBigEndian(PQgetvalue(result, row, column), 2));
}

std::optional<std::string> GetBytea(const PGresult* result, int row, int column) {
  if (IsNull(result, row, column)) return std::nullopt;
  return std::string(PQgetvalue(result, row, column),
                     static_cast<std::size_t>(PQgetlength(result, row, column)));
}

std::string EncodeVersion(uint64_t version) {
  std::string out(8, '\0');
  PutBigEndian(out.data(), version, 8);
  return out;
}

absl::StatusOr<uint64_t> DecodeVersion(std::string_view bytes) {
  if (bytes.size() != 8) {
    return absl::DataLossError(
        absl::StrCat("postgres: a stored version is ", bytes.size(), " bytes, expected 8"));
  }
  return GetBigEndian(bytes.data(), 8);
}

std::string EncodeFingerprint(const Fingerprint& fingerprint) { return fingerprint.ToBytes(); }

namespace {

bool IsIdentifier(std::string_view name, std::size_t max) {
  if (name.empty() || name.size() > max) return false;
  if (!absl::ascii_isalpha(static_cast<unsigned char>(name[0])) && name[0] != '_') return false;
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '_') return false;
  }
  return true;
}

std::string Quote(std::string_view name) { return absl::StrCat("\"", internal::ToAbsl(name), "\""); }

}  // namespace

absl::StatusOr<Tables> MakeTables(std::string_view schema, std::string_view prefix) {
  // Identifiers are spliced into SQL, so only plain ones are accepted (63 bytes at most in total).
  if (!IsIdentifier(schema, 48)) {
    return absl::InvalidArgumentError(
        "postgres: schema must be 1..48 characters of [A-Za-z0-9_], not starting with a digit");
  }
  if (!IsIdentifier(prefix, 40)) {
    return absl::InvalidArgumentError(
        "postgres: table_prefix must be 1..40 characters of [A-Za-z0-9_], not starting with a "
        "digit");
  }
  const std::string s = Quote(schema);
  const std::string p(prefix);
  return Tables{.schema = s,
                .dedup = absl::StrCat(s, ".", Quote(p + "dedup")),
                .versions = absl::StrCat(s, ".", Quote(p + "versions")),
                .attempts = absl::StrCat(s, ".", Quote(p + "attempts")),
                .meta = absl::StrCat(s, ".", Quote(p + "meta")),
                .lock_name = absl::StrCat(internal::ToAbsl(schema), ".", p),
                .schema_name = std::string(schema),
                .prefix = p};
}

std::string Expand(std::string_view sql, const Tables& tables) {
  return absl::StrReplaceAll(internal::ToAbsl(sql), {{"{dedup}", tables.dedup},
                                                     {"{versions}", tables.versions},
                                                     {"{attempts}", tables.attempts},
                                                     {"{meta}", tables.meta},
                                                     {"{schema}", tables.schema},
                                                     {"{now}", kNowMs}});
}

namespace {

// Migration i takes the schema from version i to i + 1. Never edit one that has shipped: add the
// next instead. {dedup_index} is the purge index's (unqualified) name.
constexpr const char* kMigrations[kSchemaVersion] = {
    // 0 -> 1: the dedup log, its purge index, and the version gate.
    R"sql(
CREATE TABLE {dedup}(
  scope text NOT NULL,
  id bytea NOT NULL,
  status int2 NOT NULL,
  token int8 NOT NULL,
  lease_until int8 NOT NULL,
  attempts int4 NOT NULL,
  fingerprint bytea,
  result bytea,
  expires_at int8 NOT NULL,
  claim_origin int2 NOT NULL DEFAULT 0,
  PRIMARY KEY(scope, id));
CREATE INDEX {dedup_index} ON {dedup}(expires_at);
CREATE TABLE {versions}(
  scope text NOT NULL,
  key bytea NOT NULL,
  version bytea NOT NULL CHECK (length(version) = 8),
  PRIMARY KEY(scope, key));
)sql",
    // 1 -> 2: attempt counts of transactional mode, written outside its transaction.
    R"sql(
CREATE TABLE {attempts}(
  scope text NOT NULL,
  id bytea NOT NULL,
  attempts int4 NOT NULL,
  expires_at int8 NOT NULL,
  PRIMARY KEY(scope, id));
)sql",
};

// 64-bit FNV-1a: the advisory lock's key, computed here so that it does not depend on a server
// function.
int64_t LockKey(std::string_view name) {
  uint64_t h = 1469598103934665603ULL;
  for (char c : name) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ULL;
  }
  return static_cast<int64_t>(h);
}

// PQexec in text mode, for DDL and statements without user data.
absl::StatusOr<PgResultPtr> Exec(PGconn* conn, const std::string& sql, std::string_view operation,
                                 std::string_view secret) {
  PgResultPtr result(PQexec(conn, sql.c_str()));
  if (result == nullptr || !IsOk(result.get())) {
    return PgStatus(result.get(), conn, operation, secret);
  }
  return result;
}

// The schema version recorded, 0 when idem's meta table does not exist.
absl::StatusOr<int64_t> ReadSchemaVersion(PGconn* conn, const Tables& tables,
                                          std::string_view secret) {
  // A scan of the catalog, not to_regclass: inside the migration transaction, after waiting for
  // the advisory lock, the session's catalog cache may still hold "no such table" from before the
  // wait; the first catalog lock this statement takes makes the session read the invalidations,
  // and the scan sees what the previous lock holder committed. Names are plain identifiers.
  absl::StatusOr<PgResultPtr> exists =
      Exec(conn,
           absl::StrCat("SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                        "ON n.oid = c.relnamespace WHERE n.nspname = '",
                        tables.schema_name, "' AND c.relname = '", tables.prefix, "meta'"),
           "read schema version", secret);
  if (!exists.ok()) return exists.status();
  if (std::string_view(PQgetvalue(exists->get(), 0, 0)) == "0") return 0;
  absl::StatusOr<PgResultPtr> read = Exec(
      conn, absl::StrCat("SELECT value FROM ", tables.meta, " WHERE name = 'schema_version'"),
      "read schema version", secret);
  if (!read.ok()) return read.status();
  if (PQntuples(read->get()) == 0) return 0;
  int64_t version = 0;
  if (!absl::SimpleAtoi(PQgetvalue(read->get(), 0, 0), &version)) {
    return absl::DataLossError("postgres: the idem schema version is not a number");
  }
  return version;
}

absl::Status NewerSchemaError(int64_t found) {
  return absl::FailedPreconditionError(
      absl::StrCat("postgres: the database holds idem schema version ", found,
                   "; this build knows up to ", kSchemaVersion, " (open it with a newer idem)"));
}

}  // namespace

absl::Status EnsureSchema(PGconn* conn, const Tables& tables, std::string_view secret) {
  if (PQtransactionStatus(conn) != PQTRANS_IDLE) {
    return absl::FailedPreconditionError(
        "postgres: creating idem's tables needs a connection outside a transaction");
  }
  // A plain read first: the common case (schema current) takes no lock.
  absl::StatusOr<int64_t> found = ReadSchemaVersion(conn, tables, secret);
  if (!found.ok()) return found.status();
  if (*found == kSchemaVersion) return absl::OkStatus();
  if (*found > kSchemaVersion) return NewerSchemaError(*found);

  if (absl::StatusOr<PgResultPtr> r = Exec(conn, "BEGIN", "migrate schema", secret); !r.ok()) {
    return r.status();
  }
  // Rolls back on every early return; COMMIT below disarms it.
  struct Rollback {
    PGconn* conn;
    bool armed = true;
    ~Rollback() {
      if (armed && PQtransactionStatus(conn) != PQTRANS_IDLE) PQclear(PQexec(conn, "ROLLBACK"));
    }
  } rollback{conn};
  // Concurrent CREATE TABLE IF NOT EXISTS can fail in PostgreSQL (a unique violation on the
  // catalog): the advisory lock makes openers of one schema and prefix take turns.
  const std::string lock =
      absl::StrCat("SELECT pg_advisory_xact_lock(", LockKey(tables.lock_name), ")");
  if (absl::StatusOr<PgResultPtr> r = Exec(conn, lock, "migrate schema: lock", secret); !r.ok()) {
    return r.status();
  }
  // Another process may have migrated while this one waited for the lock.
  found = ReadSchemaVersion(conn, tables, secret);
  if (!found.ok()) return found.status();
  if (*found > kSchemaVersion) return NewerSchemaError(*found);
  if (*found < 0) {
    return absl::DataLossError(absl::StrCat("postgres: invalid idem schema version ", *found));
  }
  if (*found == kSchemaVersion) return absl::OkStatus();  // rolls back the empty transaction

  absl::StatusOr<PgResultPtr> has_schema =
      Exec(conn,
           absl::StrCat("SELECT count(*) FROM pg_catalog.pg_namespace WHERE nspname = '",
                        tables.schema_name, "'"),
           "migrate schema: find schema", secret);
  if (!has_schema.ok()) return has_schema.status();
  if (std::string_view(PQgetvalue(has_schema->get(), 0, 0)) == "0") {
    if (absl::StatusOr<PgResultPtr> r = Exec(conn, absl::StrCat("CREATE SCHEMA ", tables.schema),
                                             "migrate schema: create schema", secret);
        !r.ok()) {
      return r.status();
    }
  }
  if (absl::StatusOr<PgResultPtr> r = Exec(
          conn,
          Expand("CREATE TABLE IF NOT EXISTS {meta}(name text PRIMARY KEY, value int8 NOT NULL)",
                 tables),
          "migrate schema: create meta", secret);
      !r.ok()) {
    return r.status();
  }
  // The index name: the dedup table's quoted name with the suffix inside the quotes.
  const std::string table = tables.dedup.substr(tables.dedup.rfind(".\"") + 1);
  const std::string index = absl::StrCat(table.substr(0, table.size() - 1), "_expires_at\"");
  for (int64_t v = *found; v < kSchemaVersion; ++v) {
    const std::string sql =
        absl::StrReplaceAll(Expand(kMigrations[v], tables), {{"{dedup_index}", index}});
    if (absl::StatusOr<PgResultPtr> r =
            Exec(conn, sql, absl::StrCat("migrate schema to version ", v + 1), secret);
        !r.ok()) {
      return r.status();
    }
  }
  if (absl::StatusOr<PgResultPtr> r =
          Exec(conn,
               Expand(absl::StrCat("INSERT INTO {meta}(name, value) VALUES('schema_version', ",
                                   kSchemaVersion,
                                   ") ON CONFLICT(name) DO UPDATE SET value = excluded.value"),
                      tables),
               "migrate schema: record version", secret);
      !r.ok()) {
    return r.status();
  }
  absl::StatusOr<PgResultPtr> commit = Exec(conn, "COMMIT", "migrate schema: commit", secret);
  rollback.armed = false;
  if (!commit.ok()) return commit.status();
  return absl::OkStatus();
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

}  // namespace idem::internal::pg

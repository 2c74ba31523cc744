#include "sqlite_effects.h"

#include <cstdlib>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

namespace idem::sim::internal {
namespace {

absl::Status SqliteError(sqlite3* db, std::string_view what) {
  const int code = db == nullptr ? SQLITE_ERROR : sqlite3_extended_errcode(db);
  std::string text =
      absl::StrCat(std::string(what), ": ", db == nullptr ? "no connection" : sqlite3_errmsg(db));
  if ((code & 0xff) == SQLITE_BUSY || (code & 0xff) == SQLITE_LOCKED) {
    return absl::UnavailableError(text);
  }
  return absl::InternalError(text);
}

absl::Status Exec(sqlite3* db, const char* sql) {
  if (sqlite3_exec(db, sql, nullptr, nullptr, nullptr) != SQLITE_OK) return SqliteError(db, sql);
  return absl::OkStatus();
}

// The backend's own names (SqliteSynchronousName), so the effects connection is opened exactly as
// the store's.
std::string SynchronousPragma(SqliteSynchronous s) {
  return "PRAGMA synchronous=" + std::string(SqliteSynchronousName(s));
}

}  // namespace

absl::StatusOr<SqliteDb> OpenConnection(const std::string& path, SqliteSynchronous synchronous) {
  sqlite3* raw = nullptr;
  const int rc =
      sqlite3_open_v2(path.c_str(), &raw,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  SqliteDb db(raw);
  if (rc != SQLITE_OK) return SqliteError(raw, absl::StrCat("opening ", path));
  sqlite3_busy_timeout(db.get(), 10'000);
  if (absl::Status s = Exec(db.get(), "PRAGMA journal_mode=WAL"); !s.ok()) return s;
  if (absl::Status s = Exec(db.get(), SynchronousPragma(synchronous).c_str()); !s.ok()) return s;
  return db;
}

absl::Status CreateEffectTable(sqlite3* db) {
  return Exec(db,
              "CREATE TABLE IF NOT EXISTS idem_sim_effects ("
              " scope TEXT NOT NULL, message INTEGER NOT NULL, id BLOB NOT NULL,"
              " version INTEGER NOT NULL, token INTEGER NOT NULL)");
}

absl::StatusOr<std::unique_ptr<EffectWriter>> EffectWriter::Create(sqlite3* db) {
  sqlite3_stmt* raw = nullptr;
  if (sqlite3_prepare_v3(db,
                         "INSERT INTO idem_sim_effects(scope, message, id, version, token)"
                         " VALUES (?1, ?2, ?3, ?4, ?5)",
                         -1, SQLITE_PREPARE_PERSISTENT, &raw, nullptr) != SQLITE_OK) {
    return SqliteError(db, "preparing the effect insert");
  }
  return std::unique_ptr<EffectWriter>(new EffectWriter(SqliteStmt(raw)));
}

absl::Status EffectWriter::Write(std::string_view scope, int64_t message, std::string_view id,
                                 uint64_t version, uint64_t token) {
  sqlite3_stmt* st = stmt_.get();
  sqlite3_reset(st);
  sqlite3_bind_text(st, 1, scope.data(), static_cast<int>(scope.size()), SQLITE_TRANSIENT);
  sqlite3_bind_int64(st, 2, message);
  sqlite3_bind_blob(st, 3, id.data(), static_cast<int>(id.size()), SQLITE_TRANSIENT);
  // uint64 versions are stored bit for bit in SQLite's signed 64-bit integers.
  sqlite3_bind_int64(st, 4, static_cast<int64_t>(version));
  sqlite3_bind_int64(st, 5, static_cast<int64_t>(token));
  const int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) return SqliteError(sqlite3_db_handle(st), "writing an effect row");
  return absl::OkStatus();
}

absl::StatusOr<std::vector<EffectRow>> ReadEffects(sqlite3* db, std::string_view scope) {
  sqlite3_stmt* raw = nullptr;
  if (sqlite3_prepare_v2(db,
                         "SELECT message, version FROM idem_sim_effects WHERE scope = ?1"
                         " ORDER BY rowid",
                         -1, &raw, nullptr) != SQLITE_OK) {
    return SqliteError(db, "reading effect rows");
  }
  SqliteStmt stmt(raw);
  sqlite3_bind_text(raw, 1, scope.data(), static_cast<int>(scope.size()), SQLITE_TRANSIENT);
  std::vector<EffectRow> rows;
  int rc;
  while ((rc = sqlite3_step(raw)) == SQLITE_ROW) {
    rows.push_back({.message = sqlite3_column_int64(raw, 0),
                    .version = static_cast<uint64_t>(sqlite3_column_int64(raw, 1))});
  }
  if (rc != SQLITE_DONE) return SqliteError(db, "reading effect rows");
  return rows;
}

#ifdef IDEM_SIM_WITH_POSTGRES
namespace {

struct PgResultClearer {
  void operator()(PGresult* result) const { PQclear(result); }
};
using PgResult = std::unique_ptr<PGresult, PgResultClearer>;

absl::Status PgError(PGconn* conn, const PGresult* result, std::string_view what) {
  const char* text = result != nullptr ? PQresultErrorMessage(result) : PQerrorMessage(conn);
  return absl::InternalError(absl::StrCat(std::string(what), ": ", text != nullptr ? text : ""));
}

std::string EffectTable(std::string_view schema) {
  return absl::StrCat("\"", std::string(schema), "\".idem_sim_effects");
}

}  // namespace

absl::StatusOr<PgConn> OpenPgConnection(const std::string& conninfo) {
  PgConn conn(PQconnectdb(conninfo.c_str()));
  if (PQstatus(conn.get()) != CONNECTION_OK) {
    // libpq's message may name the host but never the password.
    return absl::UnavailableError(
        absl::StrCat("connecting to PostgreSQL: ", PQerrorMessage(conn.get())));
  }
  return conn;
}

absl::Status CreatePgEffectTable(PGconn* conn, std::string_view schema) {
  const std::string sql = absl::StrCat(
      "BEGIN; SELECT pg_advisory_xact_lock(hashtext('idem_sim_effects')); "
      "CREATE TABLE IF NOT EXISTS ",
      EffectTable(schema),
      " (seq bigserial PRIMARY KEY, scope text NOT NULL, message int8 NOT NULL,"
      " id bytea NOT NULL, version int8 NOT NULL, token int8 NOT NULL); COMMIT");
  PgResult r(PQexec(conn, sql.c_str()));
  if (PQresultStatus(r.get()) != PGRES_COMMAND_OK) {
    PgResult rollback(PQexec(conn, "ROLLBACK"));
    return PgError(conn, r.get(), "creating the effect table");
  }
  return absl::OkStatus();
}

absl::Status WritePgEffect(PGconn* conn, std::string_view schema, std::string_view scope,
                           int64_t message, std::string_view id, uint64_t version, uint64_t token) {
  const std::string sql = absl::StrCat("INSERT INTO ", EffectTable(schema),
                                       "(scope, message, id, version, token)"
                                       " VALUES ($1, $2, $3, $4, $5)");
  const std::string scope_text(scope), message_text = absl::StrCat(message);
  // uint64 versions and tokens are stored bit for bit in int8, as in SQLite.
  const std::string version_text = absl::StrCat(static_cast<int64_t>(version));
  const std::string token_text = absl::StrCat(static_cast<int64_t>(token));
  const char* values[] = {scope_text.c_str(), message_text.c_str(), id.data(), version_text.c_str(),
                          token_text.c_str()};
  const int lengths[] = {0, 0, static_cast<int>(id.size()), 0, 0};
  const int formats[] = {0, 0, 1, 0, 0};  // the id in binary: any bytes
  PgResult r(PQexecParams(conn, sql.c_str(), 5, nullptr, values, lengths, formats, 0));
  if (PQresultStatus(r.get()) != PGRES_COMMAND_OK) {
    return PgError(conn, r.get(), "writing an effect row");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<EffectRow>> ReadPgEffects(PGconn* conn, std::string_view schema,
                                                     std::string_view scope) {
  const std::string sql = absl::StrCat("SELECT message, version FROM ", EffectTable(schema),
                                       " WHERE scope = $1 ORDER BY seq");
  const std::string scope_text(scope);
  const char* values[] = {scope_text.c_str()};
  PgResult r(PQexecParams(conn, sql.c_str(), 1, nullptr, values, nullptr, nullptr, 0));
  if (PQresultStatus(r.get()) != PGRES_TUPLES_OK) {
    return PgError(conn, r.get(), "reading effect rows");
  }
  std::vector<EffectRow> rows;
  for (int i = 0; i < PQntuples(r.get()); ++i) {
    rows.push_back(
        {.message = std::strtoll(PQgetvalue(r.get(), i, 0), nullptr, 10),
         .version = static_cast<uint64_t>(std::strtoll(PQgetvalue(r.get(), i, 1), nullptr, 10))});
  }
  return rows;
}
#endif  // IDEM_SIM_WITH_POSTGRES

}  // namespace idem::sim::internal

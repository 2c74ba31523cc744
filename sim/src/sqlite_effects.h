// SQLite helpers of the simulator: the connections it opens itself (transactional mode runs on a
// caller's connection) and the effect table of transactional mode, where each handler run writes
// one row inside the library's transaction. Counting those rows is how the oracle sees I2.
// With the PostgreSQL backend built, the same table in PostgreSQL, for transactional mode over
// PostgresTransactional.
//
// Thread-safety: a connection and its EffectWriter belong to one thread at a time.
#ifndef IDEM_SIM_SRC_SQLITE_EFFECTS_H_
#define IDEM_SIM_SRC_SQLITE_EFFECTS_H_

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "idem/sqlite_store.h"
#ifdef IDEM_SIM_WITH_POSTGRES
#include <libpq-fe.h>
#endif

namespace idem::sim::internal {

struct SqliteCloser {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
using SqliteDb = std::unique_ptr<sqlite3, SqliteCloser>;
struct StmtFinalizer {
  void operator()(sqlite3_stmt* stmt) const { sqlite3_finalize(stmt); }
};
using SqliteStmt = std::unique_ptr<sqlite3_stmt, StmtFinalizer>;

// Opens `path` in WAL mode with a busy timeout and the given synchronous setting.
[[nodiscard]] absl::StatusOr<SqliteDb> OpenConnection(const std::string& path,
                                                      SqliteSynchronous synchronous);

// Creates the effect table if absent.
[[nodiscard]] absl::Status CreateEffectTable(sqlite3* db);

// Writes effect rows with one prepared statement.
class EffectWriter {
 public:
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<EffectWriter>> Create(sqlite3* db);
  [[nodiscard]] absl::Status Write(std::string_view scope, int64_t message, std::string_view id,
                                   uint64_t version, uint64_t token);

 private:
  explicit EffectWriter(SqliteStmt stmt) : stmt_(std::move(stmt)) {}
  SqliteStmt stmt_;
};

struct EffectRow {
  int64_t message = 0;
  uint64_t version = 0;
};

// The effect rows of `scope`, in commit order.
[[nodiscard]] absl::StatusOr<std::vector<EffectRow>> ReadEffects(sqlite3* db,
                                                                 std::string_view scope);

#ifdef IDEM_SIM_WITH_POSTGRES
struct PgCloser {
  void operator()(PGconn* conn) const { PQfinish(conn); }
};
using PgConn = std::unique_ptr<PGconn, PgCloser>;

// Connects with a libpq connection string (PostgresStoreOptions::conninfo).
[[nodiscard]] absl::StatusOr<PgConn> OpenPgConnection(const std::string& conninfo);

// Creates the effect table in `schema` if absent. Several runs may share a schema (the ctest
// profiles do): creation is serialised by an advisory lock, since concurrent CREATE TABLE IF NOT
// EXISTS can fail in PostgreSQL.
[[nodiscard]] absl::Status CreatePgEffectTable(PGconn* conn, std::string_view schema);

// Writes one effect row in the connection's current transaction (the library's).
[[nodiscard]] absl::Status WritePgEffect(PGconn* conn, std::string_view schema,
                                         std::string_view scope, int64_t message,
                                         std::string_view id, uint64_t version, uint64_t token);

// The effect rows of `scope`, in the order their rows were inserted. Transactions that could
// conflict (one id, or one version key) are serialised by row locks that PostgresTransactional
// takes before the handler writes its row, so for them insertion order is commit order.
[[nodiscard]] absl::StatusOr<std::vector<EffectRow>> ReadPgEffects(PGconn* conn,
                                                                   std::string_view schema,
                                                                   std::string_view scope);
#endif  // IDEM_SIM_WITH_POSTGRES

}  // namespace idem::sim::internal

#endif  // IDEM_SIM_SRC_SQLITE_EFFECTS_H_

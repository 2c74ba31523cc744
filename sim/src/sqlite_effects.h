// SQLite helpers of the simulator: the connections it opens itself (transactional mode runs on a
// caller's connection) and the effect table of transactional mode, where each handler run writes
// one row inside the library's transaction. Counting those rows is how the oracle sees I2.
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

}  // namespace idem::sim::internal

#endif  // IDEM_SIM_SRC_SQLITE_EFFECTS_H_

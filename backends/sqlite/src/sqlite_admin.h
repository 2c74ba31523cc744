// The operator calls of the SQLite store (List, ResetAttempts), as functions over its connection,
// so that they live apart from the hot path in sqlite_store.cc. Private to the SQLite backend.
//
// Thread-safety: as the connection: the caller holds the store's mutex.
#ifndef IDEM_BACKENDS_SQLITE_SRC_SQLITE_ADMIN_H_
#define IDEM_BACKENDS_SQLITE_SRC_SQLITE_ADMIN_H_

#include <sqlite3.h>

#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "idem/store.h"
#include "sqlite_internal.h"

namespace idem::internal {

// One page of records in id order, filtered in SQL at store time `now`. Errors: InvalidArgument
// (bad request or cursor), and SqliteStatus's.
[[nodiscard]] absl::StatusOr<ListPage> SqliteList(sqlite3* db, const ListRequest& request,
                                                  int64_t now);

// DedupStore::ResetAttempts in one write transaction; the released record is kept until
// `expires_at`. Errors: NotFound, Aborted, FailedPrecondition (as store.h says), SqliteStatus's.
[[nodiscard]] absl::Status SqliteResetAttempts(sqlite3* db, const TxnStatements& txn_statements,
                                               std::string_view scope, std::string_view id,
                                               uint64_t token, int64_t now, int64_t expires_at);

}  // namespace idem::internal

#endif  // IDEM_BACKENDS_SQLITE_SRC_SQLITE_ADMIN_H_

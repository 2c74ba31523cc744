// Test hooks of the SQLite store. Private to the SQLite backend and its tests.
#ifndef IDEM_BACKENDS_SQLITE_SRC_SQLITE_STORE_TESTING_H_
#define IDEM_BACKENDS_SQLITE_SRC_SQLITE_STORE_TESTING_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "idem/store.h"

namespace idem::internal {

// Runs `PRAGMA max_page_count = pages` on the connection of `store` (opened by NewSqliteStore),
// so that a write that needs more pages fails with SQLITE_FULL, as on a full disk. The pragma
// never shrinks the file below its current size; a large value lifts the bound again.
[[nodiscard]] absl::Status SetSqliteMaxPageCountForTesting(DedupStore& store, int64_t pages);

// The database's size in pages (PRAGMA page_count) on the connection of `store`.
[[nodiscard]] absl::StatusOr<int64_t> SqlitePageCountForTesting(DedupStore& store);

// How many Claim and Complete calls of `store` wait in its write queue for the group in flight.
[[nodiscard]] absl::StatusOr<std::size_t> SqliteQueuedCallsForTesting(DedupStore& store);

}  // namespace idem::internal

#endif  // IDEM_BACKENDS_SQLITE_SRC_SQLITE_STORE_TESTING_H_

// The operator calls of the PostgreSQL store (List, ResetAttempts): their statements, sent
// unnamed (they are rare, so never prepared on every connection), and the decoding of their
// results, apart from the hot path in pg_store.cc. Private to the PostgreSQL backend.
#ifndef IDEM_BACKENDS_POSTGRES_SRC_PG_ADMIN_H_
#define IDEM_BACKENDS_POSTGRES_SRC_PG_ADMIN_H_

#include <libpq-fe.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "idem/store.h"
#include "pg_internal.h"

namespace idem::internal::pg {

struct AdminStatements {
  // $1 scope text, $2 after id bytea (NULL: from the start), $3 limit int8 (one more than the
  // page), $4 max_attempts int8, $5 filter int8 (ListFilter's value).
  Statement list;
  // $1 scope, $2 id, $3 token int8, $4 retention int8. Returns a row when it reset.
  Statement reset;
  // $1 scope, $2 id: status, token, lease_until, now: why a reset was refused.
  Statement reset_why;
};
AdminStatements MakeAdminStatements(const Tables& tables);


// The page from the list statement's rows; `limit` is the request's.
[[nodiscard]] absl::StatusOr<ListPage> DecodeListPage(const PGresult* rows, std::size_t limit);

// The refusal a reset that changed nothing stands for, from reset_why's rows.
absl::Status ResetRefusal(const PGresult* why, uint64_t token);

}  // namespace idem::internal::pg

#endif  // IDEM_BACKENDS_POSTGRES_SRC_PG_ADMIN_H_

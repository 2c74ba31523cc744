#include "sqlite_admin.h"

#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "internal/list_cursor.h"

namespace idem::internal {
namespace {

// The filters of ListFilter, by their enum value (?6); a stuck or dead-lettered record is one
// whose lease ended by ?4 (now). The (scope, id) primary key serves the order and the cursor.
//   ?1 scope  ?2 after id (NULL: from the start)  ?3 limit  ?4 now  ?5 max_attempts  ?6 filter
constexpr char kListSql[] = R"sql(
SELECT id, status, token, lease_until, attempts, fingerprint, result, expires_at
FROM idem_dedup
WHERE scope = ?1 AND (?2 IS NULL OR id > ?2)
  AND (?6 = 0
       OR (?6 = 1 AND status = 0)
       OR (?6 = 2 AND status = 0 AND lease_until <= ?4)
       OR (?6 = 3 AND status = 1)
       OR (?6 = 4 AND status <> 2 AND NOT (status = 0 AND lease_until > ?4) AND attempts >= ?5)
       OR (?6 = 5 AND status = 2))
ORDER BY id LIMIT ?3
)sql";

// The reset itself re-checks everything it was decided on, so the read before it only names
// the refusal.
//   ?1 scope  ?2 id  ?3 token  ?4 now  ?5 expires_at
constexpr char kResetSql[] = R"sql(
UPDATE idem_dedup SET status = 1, attempts = 0, lease_until = 0, expires_at = ?5
WHERE scope = ?1 AND id = ?2 AND token = ?3
  AND (status = 1 OR (status = 0 AND lease_until <= ?4))
)sql";


}  // namespace

absl::StatusOr<ListPage> SqliteList(sqlite3* db, const ListRequest& request, int64_t now) {
  if (absl::Status s = ValidateListRequest(request); !s.ok()) return s;
  absl::StatusOr<std::optional<std::string>> after = DecodeIdCursor(request.cursor);
  if (!after.ok()) return after.status();
  absl::StatusOr<SqliteStmt> stmt = Prepare(db, kListSql);
  if (!stmt.ok()) return stmt.status();
  StmtRun run(stmt->get(), "list");
  run.Text(1, request.scope);
  if (after->has_value()) {
    run.Blob(2, **after);
  } else {
    run.Null(2);
  }
  // One more than the page: whether another page follows.
  run.Int64(3, static_cast<int64_t>(request.limit) + 1).Int64(4, now);
  run.Int64(5, request.max_attempts).Int64(6, internal::ListFilterCode(request.filter));
  ListPage page;
  while (true) {
    absl::StatusOr<bool> row = run.Step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    if (page.records.size() == request.limit) {
      page.next_cursor = EncodeIdCursor(page.records.back().id);
      break;
    }
    ListedRecord record;
    record.id = run.ColumnBlob(0).value_or("");
    RecordInfo& info = record.info;
    switch (run.ColumnInt64(1)) {
      case kStatusInProgress:
        info.state = RecordState::kInProgress;
        info.lease_until_ms = run.ColumnInt64(3);
        break;
      case kStatusReleased:
        info.state = RecordState::kReleased;
        break;
      case kStatusCompleted:
        info.state = RecordState::kCompleted;
        break;
      default:
        return absl::DataLossError(
            absl::StrCat("sqlite: unknown record status ", run.ColumnInt64(1)));
    }
    info.token = TokenFromSql(run.ColumnInt64(2));
    info.attempts = static_cast<uint32_t>(run.ColumnInt64(4));
    if (std::optional<std::string> fp = run.ColumnBlob(5)) info.fingerprint = Fingerprint::FromBytes(*fp);
    info.result = run.ColumnBlob(6);
    info.expires_at_ms = run.ColumnInt64(7);
    page.records.push_back(std::move(record));
  }
  return page;
}

absl::Status SqliteResetAttempts(sqlite3* db, const TxnStatements& txn_statements,
                                 std::string_view scope, std::string_view id, uint64_t token,
                                 int64_t now, int64_t expires_at) {
  absl::StatusOr<SqliteStmt> reset = Prepare(db, kResetSql);
  if (!reset.ok()) return reset.status();
  absl::StatusOr<SqliteStmt> select = Prepare(db, kSelectRowSql);
  if (!select.ok()) return select.status();
  WriteTxn txn(db, txn_statements);
  if (absl::Status s = txn.Begin("reset"); !s.ok()) return s;
  {
    StmtRun run(reset->get(), "reset");
    run.Text(1, scope).Blob(2, id).Int64(3, TokenToSql(token)).Int64(4, now).Int64(5, expires_at);
    if (absl::Status s = run.Run(); !s.ok()) return s;
  }
  if (sqlite3_changes(db) == 1) return txn.Commit("reset");
  absl::StatusOr<std::optional<DedupRow>> row = ReadRow(select->get(), scope, id, "reset");
  if (!row.ok()) return row.status();
  if (!row->has_value()) return absl::NotFoundError("reset: no record for this id");
  if ((*row)->token != token) {
    return absl::AbortedError("reset refused: the record's token changed since it was read");
  }
  if ((*row)->status == kStatusCompleted) {
    return absl::FailedPreconditionError("reset refused: the record is COMPLETED");
  }
  return absl::FailedPreconditionError("reset refused: the record is a live claim");
}

}  // namespace idem::internal

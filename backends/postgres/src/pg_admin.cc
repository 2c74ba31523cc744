#include "pg_admin.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "internal/list_cursor.h"

namespace idem::internal::pg {
namespace {

// The (scope, id) primary key serves the order and the cursor; bytea compares bytewise.
constexpr char kListSql[] = R"sql(
SELECT id, status, token, lease_until, attempts, fingerprint, result, expires_at
FROM {dedup} AS d, (SELECT {now} AS now) AS n
WHERE scope = $1 AND ($2::bytea IS NULL OR id > $2)
  AND ($5 = 0
       OR ($5 = 1 AND status = 0)
       OR ($5 = 2 AND status = 0 AND lease_until <= n.now)
       OR ($5 = 3 AND status = 1)
       OR ($5 = 4 AND status <> 2 AND NOT (status = 0 AND lease_until > n.now)
           AND attempts >= $4)
       OR ($5 = 5 AND status = 2))
ORDER BY id LIMIT $3
)sql";

// The reset re-checks all it depends on in its WHERE: the read that may follow only names the
// refusal.
constexpr char kResetSql[] = R"sql(
UPDATE {dedup} AS d SET status = 1, attempts = 0, lease_until = 0, expires_at = n.now + $4
FROM (SELECT {now} AS now) AS n
WHERE scope = $1 AND id = $2 AND token = $3
  AND (status = 1 OR (status = 0 AND lease_until <= n.now))
RETURNING 1
)sql";

constexpr char kResetWhySql[] = R"sql(
SELECT status, token, lease_until, {now} FROM {dedup} WHERE scope = $1 AND id = $2
)sql";

}  // namespace

AdminStatements MakeAdminStatements(const Tables& tables) {
  return AdminStatements{
      .list = Statement{.name = "",
                        .sql = Expand(kListSql, tables),
                        .types = {kTextOid, kByteaOid, kInt8Oid, kInt8Oid, kInt8Oid}},
      .reset = Statement{.name = "",
                         .sql = Expand(kResetSql, tables),
                         .types = {kTextOid, kByteaOid, kInt8Oid, kInt8Oid}},
      .reset_why = Statement{
          .name = "", .sql = Expand(kResetWhySql, tables), .types = {kTextOid, kByteaOid}},
  };
}


absl::StatusOr<ListPage> DecodeListPage(const PGresult* r, std::size_t limit) {
  ListPage page;
  const int rows = PQntuples(r);
  for (int row = 0; row < rows; ++row) {
    if (page.records.size() == limit) {
      page.next_cursor = EncodeIdCursor(page.records.back().id);
      break;
    }
    ListedRecord record;
    record.id = GetBytea(r, row, 0).value_or("");
    RecordInfo& info = record.info;
    const int status = GetInt2(r, row, 1);
    switch (status) {
      case kStatusInProgress:
        info.state = RecordState::kInProgress;
        info.lease_until_ms = GetInt8(r, row, 3);
        break;
      case kStatusReleased:
        info.state = RecordState::kReleased;
        break;
      case kStatusCompleted:
        info.state = RecordState::kCompleted;
        break;
      default:
        return absl::DataLossError(absl::StrCat("postgres: unknown record status ", status));
    }
    info.token = TokenFromSql(GetInt8(r, row, 2));
    info.attempts = static_cast<uint32_t>(GetInt4(r, row, 4));
    if (std::optional<std::string> f = GetBytea(r, row, 5)) {
      info.fingerprint = Fingerprint::FromBytes(*f);
    }
    info.result = GetBytea(r, row, 6);
    info.expires_at_ms = GetInt8(r, row, 7);
    page.records.push_back(std::move(record));
  }
  return page;
}

absl::Status ResetRefusal(const PGresult* why, uint64_t token) {
  if (PQntuples(why) == 0) return absl::NotFoundError("reset: no record for this id");
  if (TokenFromSql(GetInt8(why, 0, 1)) != token) {
    return absl::AbortedError("reset refused: the record's token changed since it was read");
  }
  if (GetInt2(why, 0, 0) == kStatusCompleted) {
    return absl::FailedPreconditionError("reset refused: the record is COMPLETED");
  }
  return absl::FailedPreconditionError("reset refused: the record is a live claim");
}

}  // namespace idem::internal::pg

// The list cursor and filter codes of backends that order records by id (memory, SQLite, PostgreSQL): "k" and the
// last returned id in hex, so that the next page starts strictly after it. Hex keeps binary ids
// (NUL, 0xFF) safe on a command line and in JSON.
#ifndef IDEM_INTERNAL_LIST_CURSOR_H_
#define IDEM_INTERNAL_LIST_CURSOR_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "idem/store.h"

namespace idem::internal {

inline std::string EncodeIdCursor(std::string_view last_id) {
  return absl::StrCat("k", absl::BytesToHexString(absl::string_view(last_id.data(),
                                                                    last_id.size())));
}

// nullopt for the first page (an empty cursor); InvalidArgument for a cursor not made by
// EncodeIdCursor.
inline absl::StatusOr<std::optional<std::string>> DecodeIdCursor(std::string_view cursor) {
  if (cursor.empty()) return std::optional<std::string>();
  std::string_view hex = cursor.substr(1);
  if (cursor[0] != 'k' || hex.empty() || hex.size() % 2 != 0 ||
      hex.find_first_not_of("0123456789abcdef") != std::string_view::npos) {
    return absl::InvalidArgumentError("list: the cursor was not made by this backend's List");
  }
  return std::optional<std::string>(
      absl::HexStringToBytes(absl::string_view(hex.data(), hex.size())));
}

// The code of a filter as the SQL backends' list statements test it (0 all, 1 in progress, 2 stuck,
// 3 released, 4 dead-lettered, 5 completed): one numbering for every statement that lists.
inline int64_t ListFilterCode(ListFilter filter) {
  switch (filter) {
    case ListFilter::kAll:
      return 0;
    case ListFilter::kInProgress:
      return 1;
    case ListFilter::kStuck:
      return 2;
    case ListFilter::kReleased:
      return 3;
    case ListFilter::kDeadLettered:
      return 4;
    case ListFilter::kCompleted:
      return 5;
  }
  return 0;
}

}  // namespace idem::internal

#endif  // IDEM_INTERNAL_LIST_CURSOR_H_

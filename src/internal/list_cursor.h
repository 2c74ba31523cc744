// The list cursor of backends that order records by id (memory, SQLite, PostgreSQL): "k" and the
// last returned id in hex, so that the next page starts strictly after it. Hex keeps binary ids
// (NUL, 0xFF) safe on a command line and in JSON.
#ifndef IDEM_INTERNAL_LIST_CURSOR_H_
#define IDEM_INTERNAL_LIST_CURSOR_H_

#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

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

}  // namespace idem::internal

#endif  // IDEM_INTERNAL_LIST_CURSOR_H_

// Conversions between std::string_view (idem's public signatures) and absl::string_view, which
// Debian's abseil 20220623 builds as its own type.
#ifndef IDEM_INTERNAL_STRINGS_H_
#define IDEM_INTERNAL_STRINGS_H_

#include <string_view>

#include "absl/strings/string_view.h"

namespace idem::internal {

inline absl::string_view ToAbsl(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}
inline std::string_view ToStd(absl::string_view s) { return std::string_view(s.data(), s.size()); }

}  // namespace idem::internal

#endif  // IDEM_INTERNAL_STRINGS_H_

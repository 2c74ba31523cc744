// absl::StrCat for idem's std::string_view: Debian's abseil 20220623 has its own
// absl::string_view, which StrCat takes but a std::string_view does not convert to.
#ifndef IDEM_BACKENDS_REDIS_SRC_REDIS_STRINGS_H_
#define IDEM_BACKENDS_REDIS_SRC_REDIS_STRINGS_H_

#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "internal/strings.h"

namespace idem::internal::redis {

template <typename T>
const T& CatArg(const T& value) {
  return value;
}
inline absl::string_view CatArg(std::string_view value) { return ToAbsl(value); }

// absl::StrCat, accepting std::string_view arguments too.
template <typename... Args>
std::string Cat(const Args&... args) {
  return absl::StrCat(CatArg(args)...);
}

}  // namespace idem::internal::redis

#endif  // IDEM_BACKENDS_REDIS_SRC_REDIS_STRINGS_H_

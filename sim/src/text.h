// Debian's abseil 20220623 has its own absl::string_view, distinct from std::string_view, so the
// std::string_view names returned by idem (OutcomeName, FaultName, ...) must be converted before
// they reach StrCat or StrFormat.
#ifndef IDEM_SIM_SRC_TEXT_H_
#define IDEM_SIM_SRC_TEXT_H_

#include <string_view>

#include "absl/strings/string_view.h"

namespace idem::sim::internal {

inline absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }
inline std::string_view StdSv(absl::string_view s) { return std::string_view(s.data(), s.size()); }

}  // namespace idem::sim::internal

#endif  // IDEM_SIM_SRC_TEXT_H_

// Status propagation macros (Debian's abseil 20220623 ships none).
#ifndef IDEM_INTERNAL_STATUS_MACROS_H_
#define IDEM_INTERNAL_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define IDEM_INTERNAL_CONCAT_INNER(a, b) a##b
#define IDEM_INTERNAL_CONCAT(a, b) IDEM_INTERNAL_CONCAT_INNER(a, b)

// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define IDEM_RETURN_IF_ERROR(expr)                                  \
  do {                                                              \
    if (::absl::Status idem_status_ = (expr); !idem_status_.ok()) { \
      return idem_status_;                                          \
    }                                                               \
  } while (0)

// `lhs = value of expr` (an absl::StatusOr<T>), or returns its status from the enclosing function.
#define IDEM_ASSIGN_OR_RETURN(lhs, expr) \
  IDEM_INTERNAL_ASSIGN_OR_RETURN(IDEM_INTERNAL_CONCAT(idem_statusor_, __LINE__), lhs, expr)

#define IDEM_INTERNAL_ASSIGN_OR_RETURN(tmp, lhs, expr) \
  auto tmp = (expr);                                   \
  if (!tmp.ok()) {                                     \
    return std::move(tmp).status();                    \
  }                                                    \
  lhs = std::move(tmp).value()

#endif  // IDEM_INTERNAL_STATUS_MACROS_H_

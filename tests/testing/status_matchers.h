// Small gtest helpers for absl::Status (Debian's abseil ships no status matchers).
#ifndef IDEM_TESTS_TESTING_STATUS_MATCHERS_H_
#define IDEM_TESTS_TESTING_STATUS_MATCHERS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace idem::testing {

inline const absl::Status& GetStatus(const absl::Status& status) { return status; }
template <typename T>
const absl::Status& GetStatus(const absl::StatusOr<T>& status_or) {
  return status_or.status();
}

MATCHER(IsOk, "is OK") {
  const absl::Status& status = ::idem::testing::GetStatus(arg);
  if (!status.ok()) *result_listener << "status is " << status;
  return status.ok();
}

MATCHER_P(StatusIs, code, "has status code " + absl::StatusCodeToString(code)) {
  const absl::Status& status = ::idem::testing::GetStatus(arg);
  *result_listener << "status is " << status;
  return status.code() == code;
}

// Matches an OK StatusOr whose value matches `matcher`.
MATCHER_P(IsOkAndHolds, matcher, "is OK and holds a matching value") {
  if (!arg.ok()) {
    *result_listener << "status is " << arg.status();
    return false;
  }
  return ::testing::ExplainMatchResult(matcher, *arg, result_listener);
}

}  // namespace idem::testing

#define IDEM_EXPECT_OK(expr) EXPECT_THAT((expr), ::idem::testing::IsOk())
#define IDEM_ASSERT_OK(expr) ASSERT_THAT((expr), ::idem::testing::IsOk())

// `lhs = value of expr`, failing the test (fatally) if the StatusOr is not OK.
#define IDEM_ASSERT_OK_AND_ASSIGN(lhs, expr) \
  IDEM_ASSERT_OK_AND_ASSIGN_IMPL(IDEM_TEST_CONCAT(idem_test_so_, __LINE__), lhs, expr)
#define IDEM_TEST_CONCAT_INNER(a, b) a##b
#define IDEM_TEST_CONCAT(a, b) IDEM_TEST_CONCAT_INNER(a, b)
#define IDEM_ASSERT_OK_AND_ASSIGN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                   \
  ASSERT_TRUE(tmp.ok()) << tmp.status();               \
  lhs = std::move(tmp).value()

#endif  // IDEM_TESTS_TESTING_STATUS_MATCHERS_H_

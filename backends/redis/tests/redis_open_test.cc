// OpenStore with OpenOptions on a real server: configuration warnings reach the caller's callback
// (not stderr), without the password, and the token source is the caller's.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "idem/open_store.h"
#include "redis_test_server.h"
#include "testing/status_matchers.h"

namespace idem {
namespace {

using ::idem::testing::FixturePort;
using ::idem::testing::RedisCommand;
using ::testing::HasSubstr;
using ::testing::Not;

// A user who may not run CONFIG: the store cannot read the server's persistence settings and
// says so through the warning callback.
TEST(RedisOpenStore, WarningsAndTokensComeFromOpenOptions) {
  const int port = FixturePort();
  ASSERT_GT(port, 0);
  IDEM_ASSERT_OK(RedisCommand(port, {"ACL", "SETUSER", "idem-noconfig", "reset", "on",
                                     ">No-Config-Pw-5", "~*", "+@all", "-config"}));
  std::vector<std::string> warnings;
  uint64_t next = 1000;
  OpenOptions options;
  options.warning = [&](std::string_view line) { warnings.emplace_back(line); };
  options.token_source = [&next] { return ++next; };
  IDEM_ASSERT_OK_AND_ASSIGN(
      auto store, OpenStore(absl::StrCat("redis://idem-noconfig:No-Config-Pw-5@127.0.0.1:", port,
                                         "/0?prefix=open-options"),
                            options));
  ASSERT_FALSE(warnings.empty());
  for (const std::string& line : warnings) EXPECT_THAT(line, Not(HasSubstr("No-Config-Pw-5")));
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult claim,
                            store->Claim({.scope = "s", .id = absl::StrCat("id-", getpid())}));
  EXPECT_EQ(claim.token, 1001u);
  IDEM_EXPECT_OK(RedisCommand(port, {"ACL", "DELUSER", "idem-noconfig"}));
}

}  // namespace
}  // namespace idem

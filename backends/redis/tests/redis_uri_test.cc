// ParseRedisUri / OpenRedisStoreFromUri: no server needed.
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "idem/redis_store.h"
#include "testing/status_matchers.h"

namespace idem {
namespace {

using ::idem::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;

TEST(RedisUri, HostPortDbAndOptions) {
  IDEM_ASSERT_OK_AND_ASSIGN(
      RedisStoreOptions options,
      ParseRedisUri("redis://cache.example:6380/3?prefix=orders&timeout_ms=250&pool_size=8"));
  EXPECT_EQ(options.host, "cache.example");
  EXPECT_EQ(options.port, 6380);
  EXPECT_EQ(options.db, 3);
  EXPECT_EQ(options.key_prefix, "orders");
  EXPECT_EQ(options.connect_timeout.count(), 250);
  EXPECT_EQ(options.io_timeout.count(), 250);
  EXPECT_EQ(options.pool_size, 8u);
  EXPECT_TRUE(options.password.empty());
}

TEST(RedisUri, DefaultsArePort6379Db0PrefixIdem) {
  IDEM_ASSERT_OK_AND_ASSIGN(RedisStoreOptions options, ParseRedisUri("redis://localhost"));
  EXPECT_EQ(options.host, "localhost");
  EXPECT_EQ(options.port, 6379);
  EXPECT_EQ(options.db, 0);
  EXPECT_EQ(options.key_prefix, "idem");
  IDEM_ASSERT_OK_AND_ASSIGN(options, ParseRedisUri("REDIS://localhost/"));
  EXPECT_EQ(options.db, 0);
}

TEST(RedisUri, UserAndPasswordArePercentDecoded) {
  IDEM_ASSERT_OK_AND_ASSIGN(RedisStoreOptions options,
                            ParseRedisUri("redis://alice:p%40ss%3Aw%2Frd@10.0.0.1:7000/1"));
  EXPECT_EQ(options.user, "alice");
  EXPECT_EQ(options.password, "p@ss:w/rd");
  EXPECT_EQ(options.host, "10.0.0.1");
  IDEM_ASSERT_OK_AND_ASSIGN(options, ParseRedisUri("redis://:only-password@h"));
  EXPECT_EQ(options.user, "");
  EXPECT_EQ(options.password, "only-password");
}

TEST(RedisUri, BracketedIpv6Host) {
  IDEM_ASSERT_OK_AND_ASSIGN(RedisStoreOptions options, ParseRedisUri("redis://[::1]:6390/2"));
  EXPECT_EQ(options.host, "::1");
  EXPECT_EQ(options.port, 6390);
  EXPECT_EQ(options.db, 2);
}

TEST(RedisUri, UnixSocketWithQueryOptions) {
  IDEM_ASSERT_OK_AND_ASSIGN(
      RedisStoreOptions options,
      ParseRedisUri("unix:///run/redis/redis.sock?db=4&prefix=p&io_timeout_ms=50&password=x%26y"));
  EXPECT_EQ(options.unix_socket, "/run/redis/redis.sock");
  EXPECT_EQ(options.db, 4);
  EXPECT_EQ(options.key_prefix, "p");
  EXPECT_EQ(options.io_timeout.count(), 50);
  EXPECT_EQ(options.password, "x&y");
  IDEM_ASSERT_OK_AND_ASSIGN(options, ParseRedisUri("unix://bob:pw@/tmp/r.sock"));
  EXPECT_EQ(options.unix_socket, "/tmp/r.sock");
  EXPECT_EQ(options.user, "bob");
  EXPECT_EQ(options.password, "pw");
}

TEST(RedisUri, RedissIsRefusedBecauseThisHiredisHasNoTls) {
  const absl::StatusOr<RedisStoreOptions> parsed =
      ParseRedisUri("rediss://user:TopSecret1@host:6380/0");
  EXPECT_THAT(parsed, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(std::string(parsed.status().message()), HasSubstr("no TLS"));
  EXPECT_THAT(std::string(parsed.status().message()), Not(HasSubstr("TopSecret1")));
  EXPECT_THAT(OpenRedisStoreFromUri("rediss://host"), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(RedisUri, MalformedUrisAreInvalidArgumentAndNeverEchoThePassword) {
  const char* const kBad[] = {
      "",
      "redis:",
      "redis:/host",
      "http://host",
      "redis://",
      "redis://:TopSecret1@",
      "redis://u:TopSecret1@host:",
      "redis://u:TopSecret1@host:notaport",
      "redis://u:TopSecret1@host:70000",
      "redis://u:TopSecret1@host:0",
      "redis://u:TopSecret1@host/db",
      "redis://u:TopSecret1@host/-1",
      "redis://u:TopSecret1@host/1/2",
      "redis://u:TopSecret1@[::1",
      "redis://u:TopSecret1@ho st",
      "redis://u:TopSecret1%zz@host",
      "redis://u:TopSecret1@host?prefix=",
      "redis://u:TopSecret1@host?timeout_ms=0",
      "redis://u:TopSecret1@host?timeout_ms=-5",
      "redis://u:TopSecret1@host?pool_size=0",
      "redis://u:TopSecret1@host?unknown=1",
      "redis://u:TopSecret1@host?prefix=a&prefix=b",
      "redis://u:TopSecret1@host?noequals",
      "redis://u:TopSecret1@host#frag",
      "redis://host?password=TopSecret1&password=TopSecret1",
      "redis://host?timeout_ms=TopSecret1",
      "unix://",
      "unix://relative.sock",
      "unix://u:TopSecret1@relative.sock",
      "unix:///",
  };
  for (const char* uri : kBad) {
    const absl::StatusOr<RedisStoreOptions> parsed = ParseRedisUri(uri);
    EXPECT_THAT(parsed, StatusIs(absl::StatusCode::kInvalidArgument)) << uri;
    EXPECT_THAT(std::string(parsed.status().message()), Not(HasSubstr("TopSecret1"))) << uri;
  }
}

TEST(RedisUri, BadOptionsAreRefusedBeforeConnecting) {
  RedisStoreOptions options;
  options.key_prefix = "";
  EXPECT_THAT(NewRedisStore(options), StatusIs(absl::StatusCode::kInvalidArgument));
  options = RedisStoreOptions();
  options.pool_size = 0;
  EXPECT_THAT(NewRedisStore(options), StatusIs(absl::StatusCode::kInvalidArgument));
  options = RedisStoreOptions();
  options.io_timeout = std::chrono::milliseconds(0);
  EXPECT_THAT(NewRedisStore(options), StatusIs(absl::StatusCode::kInvalidArgument));
  options = RedisStoreOptions();
  options.port = 0;
  EXPECT_THAT(NewRedisStore(options), StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace idem

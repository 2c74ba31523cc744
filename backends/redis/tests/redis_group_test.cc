// Group commit on Redis (docs/design.md, "Group commit"): concurrent calls share pipelined round
// trips (StoreStats::write_groups), group_limit=1 sends every call alone, the option is validated
// and read from URIs, and a redis-server SIGKILLed while 16 threads write breaks no invariant.
#include <signal.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "conformance/group_faults.h"
#include "gtest/gtest.h"
#include "idem/redis_store.h"
#include "redis_test_server.h"
#include "testing/status_matchers.h"

namespace idem {
namespace {

using ::idem::testing::ClaimAndCompleteFromSixteenThreads;
using ::idem::testing::StatusIs;
using ::idem::testing::TestRedisServer;

constexpr std::string_view kScope = "billing/order-events";

RedisStoreOptions FixtureOptions(std::size_t group_limit) {
  static std::atomic<int> counter{0};
  RedisStoreOptions options;
  options.port = ::idem::testing::FixturePort();
  options.key_prefix = absl::StrCat("group/", getpid(), "/", counter.fetch_add(1));
  options.io_timeout = std::chrono::seconds(10);
  options.group_limit = group_limit;
  return options;
}

TEST(RedisGroupCommit, ConcurrentCallsShareRoundTripsByDefault) {
  IDEM_ASSERT_OK_AND_ASSIGN(std::unique_ptr<DedupStore> store,
                            NewRedisStore(FixtureOptions(RedisStoreOptions{}.group_limit)));
  EXPECT_EQ(RedisStoreOptions{}.group_limit, 64u);
  // Bounded rounds: whether a round overlaps is the scheduler's choice; one that groups shows it.
  for (int round = 0; round < 50 && store->Stats().write_groups == 0; ++round) {
    ClaimAndCompleteFromSixteenThreads(*store, kScope, absl::StrCat(round, "-"), 20);
  }
  const StoreStats stats = store->Stats();
  EXPECT_GT(stats.write_groups, 0u);
  EXPECT_GE(stats.grouped_calls, 2 * stats.write_groups);
  EXPECT_EQ(stats.claims_acquired, stats.completed);
}

TEST(RedisGroupCommit, GroupLimitOneSendsEveryCallAlone) {
  IDEM_ASSERT_OK_AND_ASSIGN(std::unique_ptr<DedupStore> store, NewRedisStore(FixtureOptions(1)));
  ClaimAndCompleteFromSixteenThreads(*store, kScope, absl::StrCat(0, "-"), 40);
  EXPECT_EQ(store->Stats().write_groups, 0u);
  EXPECT_EQ(store->Stats().grouped_calls, 0u);
  EXPECT_EQ(store->Stats().completed, 16u * 40u);
}

TEST(RedisGroupCommit, GroupLimitIsValidatedAndReadFromTheUri) {
  for (std::size_t bad : {std::size_t{0}, std::size_t{1025}}) {
    EXPECT_THAT(NewRedisStore(FixtureOptions(bad)).status(),
                StatusIs(absl::StatusCode::kInvalidArgument))
        << bad;
  }
  IDEM_ASSERT_OK_AND_ASSIGN(RedisStoreOptions options,
                            ParseRedisUri("redis://127.0.0.1:6379/0?group_limit=1"));
  EXPECT_EQ(options.group_limit, 1u);
  IDEM_ASSERT_OK_AND_ASSIGN(options, ParseRedisUri("redis://127.0.0.1?group_limit=1024"));
  EXPECT_EQ(options.group_limit, 1024u);
  IDEM_ASSERT_OK_AND_ASSIGN(options, ParseRedisUri("redis://127.0.0.1"));
  EXPECT_EQ(options.group_limit, 64u);
  for (const char* uri : {"redis://h?group_limit=0", "redis://h?group_limit=1025",
                          "redis://h?group_limit=x", "unix:///tmp/r.sock?group_limit=-3"}) {
    EXPECT_THAT(ParseRedisUri(uri), StatusIs(absl::StatusCode::kInvalidArgument)) << uri;
  }
}

TEST(RedisGroupCommit, ServerKilledWhileSixteenThreadsWriteBreaksNoInvariant) {
  // A server of this test's own on a Unix socket (the nine ports above the fixture's are taken).
  TestRedisServer::Options server_options;
  server_options.unix_socket_only = true;
  server_options.dir = (std::filesystem::current_path() / "redis-group-kill").string();
  absl::StatusOr<std::unique_ptr<TestRedisServer>> server = TestRedisServer::Start(server_options);
  ASSERT_TRUE(server.ok()) << server.status();
  RedisStoreOptions options;
  options.unix_socket = (*server)->unix_socket();
  options.key_prefix = "group-kill";
  options.io_timeout = std::chrono::milliseconds(1'000);
  options.connect_timeout = std::chrono::milliseconds(500);
  options.reconnect_backoff_min = std::chrono::milliseconds(10);
  options.reconnect_backoff_max = std::chrono::milliseconds(200);
  options.warning = [](std::string_view line) { ADD_FAILURE() << "unexpected warning: " << line; };
  IDEM_ASSERT_OK_AND_ASSIGN(std::unique_ptr<DedupStore> store, NewRedisStore(options));
  ::idem::testing::SixteenThreadsThroughAnOutage(
      *store, ::idem::testing::Outage{
                  .kill =
                      [&] {
                        (*server)->Signal(SIGKILL);
                        return absl::OkStatus();
                      },
                  .restart = [&] { return (*server)->Restart(); },
                  .reopen = [&] { return NewRedisStore(options); }});
}

}  // namespace
}  // namespace idem

// Group commit on PostgreSQL (docs/design.md, "Group commit"): concurrent calls share pipelined
// transactions (StoreStats::write_groups), group_limit=1 writes every call alone, the option is
// validated and read from URIs, and a server stopped with `-m immediate` while 16 threads write
// breaks no invariant.
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "conformance/group_faults.h"
#include "gtest/gtest.h"
#include "idem/postgres_store.h"
#include "pg_test_util.h"
#include "testing/status_matchers.h"

namespace idem::testing {
namespace {

constexpr std::string_view kScope = "billing/order-events";

PostgresStoreOptions FixtureOptions(std::size_t group_limit) {
  PostgresStoreOptions options;
  options.conninfo = FixtureConninfo();
  options.schema = UniqueSchema();
  options.group_limit = group_limit;
  options.warning = [](std::string_view line) { ADD_FAILURE() << "unexpected warning: " << line; };
  return options;
}

TEST(PostgresGroupCommit, ConcurrentCallsShareTransactionsByDefault) {
  EXPECT_EQ(PostgresStoreOptions{}.group_limit, 64u);
  IDEM_ASSERT_OK_AND_ASSIGN(std::unique_ptr<DedupStore> store,
                            NewPostgresStore(FixtureOptions(PostgresStoreOptions{}.group_limit)));
  // Bounded rounds: whether a round overlaps is the scheduler's choice; one that groups shows it.
  for (int round = 0; round < 50 && store->Stats().write_groups == 0; ++round) {
    ClaimAndCompleteFromSixteenThreads(*store, kScope, absl::StrCat(round, "-"), 10);
  }
  const StoreStats stats = store->Stats();
  EXPECT_GT(stats.write_groups, 0u);
  EXPECT_GE(stats.grouped_calls, 2 * stats.write_groups);
  EXPECT_EQ(stats.claims_acquired, stats.completed);
}

TEST(PostgresGroupCommit, GroupLimitOneWritesEveryCallAlone) {
  IDEM_ASSERT_OK_AND_ASSIGN(std::unique_ptr<DedupStore> store,
                            NewPostgresStore(FixtureOptions(1)));
  ClaimAndCompleteFromSixteenThreads(*store, kScope, absl::StrCat(0, "-"), 10);
  EXPECT_EQ(store->Stats().write_groups, 0u);
  EXPECT_EQ(store->Stats().grouped_calls, 0u);
  EXPECT_EQ(store->Stats().completed, 16u * 10u);
}

TEST(PostgresGroupCommit, GroupLimitIsValidatedAndReadFromTheUri) {
  for (std::size_t bad : {std::size_t{0}, std::size_t{1025}}) {
    EXPECT_THAT(NewPostgresStore(FixtureOptions(bad)).status(),
                StatusIs(absl::StatusCode::kInvalidArgument))
        << bad;
  }
  IDEM_ASSERT_OK_AND_ASSIGN(PostgresStoreOptions options,
                            ParsePostgresUri("postgresql://u@h/db?group_limit=1"));
  EXPECT_EQ(options.group_limit, 1u);
  EXPECT_EQ(options.conninfo.find("group_limit"), std::string::npos)
      << "an idem option is not passed to libpq";
  IDEM_ASSERT_OK_AND_ASSIGN(options, ParsePostgresUri("postgresql://u@h/db?group_limit=1024"));
  EXPECT_EQ(options.group_limit, 1024u);
  IDEM_ASSERT_OK_AND_ASSIGN(options, ParsePostgresUri("postgresql://u@h/db"));
  EXPECT_EQ(options.group_limit, 64u);
  for (const char* uri : {"postgresql://u@h/db?group_limit=0", "postgresql://u@h/db?group_limit=1025",
                          "postgres://u@h/db?group_limit=x"}) {
    EXPECT_THAT(ParsePostgresUri(uri), StatusIs(absl::StatusCode::kInvalidArgument)) << uri;
  }
}

TEST(PostgresGroupCommit, ServerStoppedImmediatelyWhileSixteenThreadsWriteBreaksNoInvariant) {
  auto server = OwnPgServer::Start(2);
  ASSERT_TRUE(server.ok()) << server.status();
  PostgresStoreOptions options;
  options.conninfo = absl::StrCat((*server)->Conninfo(), "?connect_timeout=2");
  options.schema = UniqueSchema();
  options.pool_size = 4;
  IDEM_ASSERT_OK_AND_ASSIGN(std::unique_ptr<DedupStore> store, NewPostgresStore(options));
  SixteenThreadsThroughAnOutage(
      *store, Outage{.kill = [&] { return (*server)->Crash(); },
                     .restart = [&] { return (*server)->Restart(); },
                     .reopen = [&] { return NewPostgresStore(options); }});
}

}  // namespace
}  // namespace idem::testing

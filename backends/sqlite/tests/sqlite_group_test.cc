// Group commit on SQLite (docs/design.md, "Group commit"): concurrent calls share transactions
// (counted as COMMIT statements on the store's connection), group_limit=1 writes every call
// alone, and a full disk in the middle of a group fails each of its members with
// ResourceExhausted, writes none of them and runs no handler.
#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "conformance/group_faults.h"
#include "idem/processor.h"
#include "idem/sqlite_store.h"
#include "sqlite_store_testing.h"
#include "sqlite_test_util.h"
#include "testing/status_matchers.h"

namespace idem::testing {
namespace {

constexpr std::string_view kScope = "billing/order-events";
constexpr int kThreads = 16;
constexpr int kPerThread = 40;
constexpr std::chrono::milliseconds kLease{3'600'000};

// Runs body(thread) on kThreads threads that start together.
template <typename Body>
void OnThreads(Body body) {
  std::barrier start(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      start.arrive_and_wait();
      body(t);
    });
  }
  for (std::thread& thread : threads) thread.join();
}

// kThreads threads, each claiming and completing kPerThread ids of its own, one at a time.
// Returns the number of calls; every one must succeed.
int ClaimAndCompleteFromManyThreads(DedupStore& store, std::string_view prefix) {
  static_assert(kThreads == 16);
  return ClaimAndCompleteFromSixteenThreads(store, kScope, prefix, kPerThread, kLease);
}

int64_t Count(const std::vector<std::string>& statements, std::string_view text) {
  return std::count(statements.begin(), statements.end(), text);
}

TEST(SqliteGroupCommit, ConcurrentCallsShareTransactions) {
  TempDir dir;
  ConnectionCapture capture;
  // FULL: each commit waits for the disk, which is when grouping pays.
  IDEM_ASSERT_OK_AND_ASSIGN(std::unique_ptr<DedupStore> store,
                            NewSqliteStore(SqliteStoreOptions{.path = dir.File("idem.db")}));
  StatementTrace trace(capture.opened()[0]);
  const int calls = ClaimAndCompleteFromManyThreads(*store, "t");
  const StoreStats stats = store->Stats();
  EXPECT_GT(stats.write_groups, 0u);
  EXPECT_LE(stats.grouped_calls, static_cast<uint64_t>(calls));
  // Each call alone is one transaction, each group one: fewer commits than calls, exactly as the
  // counters say. (The trace is written under the store's lock, read after the threads joined.)
  const int64_t commits = Count(trace.statements(), "COMMIT");
  EXPECT_EQ(Count(trace.statements(), "BEGIN IMMEDIATE"), commits);
  EXPECT_EQ(commits, calls - static_cast<int64_t>(stats.grouped_calls) +
                         static_cast<int64_t>(stats.write_groups));
  EXPECT_LT(commits, calls);
}

TEST(SqliteGroupCommit, GroupLimitOneWritesEveryCallAlone) {
  TempDir dir;
  ConnectionCapture capture;
  IDEM_ASSERT_OK_AND_ASSIGN(
      std::unique_ptr<DedupStore> store,
      NewSqliteStore(SqliteStoreOptions{.path = dir.File("idem.db"), .group_limit = 1}));
  StatementTrace trace(capture.opened()[0]);
  const int calls = ClaimAndCompleteFromManyThreads(*store, "t");
  EXPECT_EQ(store->Stats().write_groups, 0u);
  EXPECT_EQ(store->Stats().grouped_calls, 0u);
  EXPECT_EQ(Count(trace.statements(), "COMMIT"), calls);
}

TEST(SqliteGroupCommit, GroupLimitIsValidatedAndReadFromTheUri) {
  TempDir dir;
  for (std::size_t bad : {std::size_t{0}, std::size_t{1025}}) {
    EXPECT_THAT(NewSqliteStore(SqliteStoreOptions{.path = dir.File("a.db"), .group_limit = bad})
                    .status(),
                StatusIs(absl::StatusCode::kInvalidArgument))
        << bad;
  }
  EXPECT_EQ(SqliteStoreOptions{}.group_limit, 64u);
  IDEM_ASSERT_OK_AND_ASSIGN(SqliteStoreOptions options,
                            ParseSqliteUri("sqlite:x.db?group_limit=1"));
  EXPECT_EQ(options.group_limit, 1u);
  IDEM_ASSERT_OK_AND_ASSIGN(options, ParseSqliteUri("sqlite:x.db?group_limit=1024"));
  EXPECT_EQ(options.group_limit, 1024u);
  IDEM_ASSERT_OK_AND_ASSIGN(options, ParseSqliteUri("sqlite:x.db"));
  EXPECT_EQ(options.group_limit, 64u);
  for (const char* uri : {"sqlite:x.db?group_limit=0", "sqlite:x.db?group_limit=1025",
                          "sqlite:x.db?group_limit=-1", "sqlite:x.db?group_limit=many"}) {
    EXPECT_THAT(ParseSqliteUri(uri), StatusIs(absl::StatusCode::kInvalidArgument)) << uri;
  }
}

// Ids of two sizes: a short one fits the free space of the pages the file has, a long one needs
// overflow pages of its own, so under a page bound it fails with SQLITE_FULL wherever it falls in
// a group, after the short ones before it were written in the same transaction.
std::string LongId(int t) { return absl::StrCat("long-", t, std::string(6000, 'x')); }
std::string ShortId(int t) { return absl::StrCat("short-", t); }
std::string IdOf(int t) { return t % 2 == 0 ? ShortId(t) : LongId(t); }

// Makes a group form for certain: the store's first claim holds its token source (which runs
// inside the claim's transaction) until `followers` calls wait in the write queue; when it ends,
// the next front takes all of them as one group.
class HeldFirstClaim {
 public:
  explicit HeldFirstClaim(std::size_t followers) : state_(std::make_shared<State>()) {
    state_->followers = followers;
  }
  std::function<uint64_t()> TokenSource() const {
    return [state = state_] {
      if (state->hold.exchange(false)) {
        state->inside.store(true);
        while (internal::SqliteQueuedCallsForTesting(*state->store).value_or(0) <
               state->followers) {
          std::this_thread::yield();
        }
      }
      return state->next.fetch_add(1) + 1;
    };
  }
  void SetStore(DedupStore* store) { state_->store = store; }
  // Blocks until the first claim is inside its transaction.
  void AwaitInside() const {
    while (!state_->inside.load()) std::this_thread::yield();
  }

 private:
  struct State {
    std::atomic<bool> hold{true};
    std::atomic<bool> inside{false};
    std::atomic<uint64_t> next{0};
    std::atomic<DedupStore*> store{nullptr};
    std::size_t followers = 0;
  };
  std::shared_ptr<State> state_;
};

// Opens a store whose file then has no room for a long id (a full disk).
std::unique_ptr<DedupStore> OpenFull(const TempDir& dir, HeldFirstClaim& held) {
  absl::StatusOr<std::unique_ptr<DedupStore>> store =
      NewSqliteStore(SqliteStoreOptions{.path = dir.File("idem.db"),
                                        .synchronous = SqliteSynchronous::kNormal,
                                        .max_id_bytes = 16 * 1024,
                                        .token_source = held.TokenSource()});
  EXPECT_TRUE(store.ok()) << store.status();
  if (!store.ok()) return nullptr;
  held.SetStore(store->get());
  absl::StatusOr<int64_t> pages = internal::SqlitePageCountForTesting(**store);
  EXPECT_TRUE(pages.ok()) << pages.status();
  // One page more than the file has: room for short ids, none for a long id's overflow pages.
  EXPECT_TRUE(internal::SetSqliteMaxPageCountForTesting(**store, pages.value_or(1) + 1).ok());
  return *std::move(store);
}

TEST(SqliteGroupCommit, FullDiskFailsEveryMemberOfAGroupAndWritesNone) {
  constexpr int kFollowers = kThreads - 1;
  TempDir dir;
  HeldFirstClaim held(kFollowers);
  std::unique_ptr<DedupStore> store = OpenFull(dir, held);
  ASSERT_NE(store, nullptr);

  absl::StatusOr<ClaimResult> first;
  std::thread leader([&] {
    first = store->Claim(ClaimRequest{.scope = kScope, .id = "first", .lease = kLease});
  });
  held.AwaitInside();
  // Short and long ids queue behind it and are written as one group.
  std::vector<absl::StatusOr<ClaimResult>> results(kFollowers);
  std::vector<std::thread> followers;
  for (int t = 0; t < kFollowers; ++t) {
    followers.emplace_back([&, t] {
      results[t] = store->Claim(ClaimRequest{.scope = kScope, .id = IdOf(t), .lease = kLease});
    });
  }
  leader.join();
  for (std::thread& thread : followers) thread.join();

  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->status, ClaimStatus::kAcquired);
  const StoreStats stats = store->Stats();
  EXPECT_EQ(stats.write_groups, 1u);
  EXPECT_EQ(stats.grouped_calls, static_cast<uint64_t>(kFollowers));
  // The group's transaction failed at its first long id: every member, short or long, gets
  // ResourceExhausted, and none of them was written (the short ones before it were rolled back).
  for (int t = 0; t < kFollowers; ++t) {
    EXPECT_THAT(results[t].status(), StatusIs(absl::StatusCode::kResourceExhausted))
        << "member " << t << ": " << results[t].status();
    IDEM_ASSERT_OK_AND_ASSIGN(std::optional<RecordInfo> info, store->Inspect(kScope, IdOf(t)));
    EXPECT_FALSE(info.has_value()) << "member " << t << " of a failed group left a record";
  }
  EXPECT_EQ(stats.claims_acquired, 1u);
  // A short id fits alone: it failed only with its group.
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult alone,
                            store->Claim(ClaimRequest{.scope = kScope, .id = ShortId(0),
                                                      .lease = kLease}));
  EXPECT_EQ(alone.status, ClaimStatus::kAcquired);

  // With room again, every id is claimed: nothing of the failed group was left behind.
  IDEM_ASSERT_OK(internal::SetSqliteMaxPageCountForTesting(*store, int64_t{1} << 30));
  for (int t = 1; t < kFollowers; ++t) {
    IDEM_ASSERT_OK_AND_ASSIGN(
        ClaimResult again,
        store->Claim(ClaimRequest{.scope = kScope, .id = IdOf(t), .lease = kLease}));
    EXPECT_EQ(again.status, ClaimStatus::kAcquired) << t;
    EXPECT_EQ(again.attempt, 1u);
  }
}

TEST(SqliteGroupCommit, FullDiskRunsNoHandlerOnAFailedClaim) {
  constexpr int kFollowers = kThreads - 1;
  TempDir dir;
  HeldFirstClaim held(kFollowers);
  std::unique_ptr<DedupStore> store = OpenFull(dir, held);
  ASSERT_NE(store, nullptr);
  IDEM_ASSERT_OK_AND_ASSIGN(Processor processor,
                            Processor::Create(*store, std::string(kScope)));

  std::atomic<int> handled{0};
  absl::StatusOr<ProcessResult> first;
  std::thread leader([&] {
    first = processor.Process(Message{.id = "first", .payload = "p"},
                              [&](HandlerContext&) { handled.fetch_add(1); });
  });
  held.AwaitInside();
  std::vector<absl::StatusOr<ProcessResult>> results(kFollowers);
  std::vector<std::thread> followers;
  for (int t = 0; t < kFollowers; ++t) {
    followers.emplace_back([&, t] {
      const std::string id = IdOf(t);
      results[t] = processor.Process(Message{.id = id, .payload = "p"},
                                     [&](HandlerContext&) { handled.fetch_add(1); });
    });
  }
  leader.join();
  for (std::thread& thread : followers) thread.join();

  // The first message's handler ran; its completion is written alone, or in the group of the
  // claims queued behind its claim (then it fails with them, and its claim is released).
  if (first.ok()) {
    EXPECT_EQ(first->outcome, Outcome::kProcessed);
  } else {
    EXPECT_THAT(first.status(), StatusIs(absl::StatusCode::kResourceExhausted));
  }
  for (int t = 0; t < kFollowers; ++t) {
    EXPECT_THAT(results[t].status(), StatusIs(absl::StatusCode::kResourceExhausted))
        << "member " << t << ": " << results[t].status();
  }
  // Only the first message's handler ran: no handler runs on a failed claim (I6).
  EXPECT_EQ(handled.load(), 1);
  EXPECT_GE(store->Stats().write_groups, 1u);
  EXPECT_EQ(store->Stats().claims_acquired, 1u);
}

}  // namespace
}  // namespace idem::testing

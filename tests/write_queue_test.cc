// The write queue of group commit (src/internal/write_queue.h): groups form behind a call in
// flight, are capped at the limit, hand every member its own result, and a throwing batch call
// leaves no member waiting. Groups are made to form for certain by holding the call in flight
// until the queue holds the callers expected.
#include "internal/write_queue.h"

#include <atomic>
#include <mutex>
#include <new>
#include <span>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "gtest/gtest.h"
#include "internal/store_counters.h"

namespace idem::internal {
namespace {

using Queue = WriteQueue<int, absl::StatusOr<int>>;

void AwaitWaiting(Queue& queue, std::size_t n) {
  while (queue.waiting() < n) std::this_thread::yield();
}

TEST(WriteQueue, CallsQueuedBehindAWriteGoTogetherCappedAtTheLimitEachWithItsOwnResult) {
  constexpr int kFollowers = 10;
  StoreCounters counters;
  Queue queue(4, &counters);
  std::mutex mu;
  std::vector<std::size_t> group_sizes;  // guarded by mu
  std::atomic<int> alone{0};
  auto one = [&](int request) -> absl::StatusOr<int> {
    if (alone.fetch_add(1) == 0) AwaitWaiting(queue, kFollowers);  // the first call holds
    return request * 2;
  };
  auto many = [&](std::span<const int> requests) {
    {
      std::lock_guard lock(mu);
      group_sizes.push_back(requests.size());
    }
    std::vector<absl::StatusOr<int>> out;
    for (int r : requests) {
      if (r % 3 == 0) {
        out.push_back(absl::NotFoundError("refused"));  // one member's own refusal
      } else {
        out.push_back(r * 2);
      }
    }
    return out;
  };
  absl::StatusOr<int> first;
  std::thread leader([&] { first = queue.Write(1000, one, many); });
  while (alone.load() == 0) std::this_thread::yield();
  std::vector<absl::StatusOr<int>> results(kFollowers);
  std::vector<std::thread> followers;
  for (int t = 0; t < kFollowers; ++t) {
    followers.emplace_back([&, t] { results[t] = queue.Write(t + 1, one, many); });
  }
  leader.join();
  for (std::thread& thread : followers) thread.join();

  EXPECT_EQ(*first, 2000);
  for (int t = 0; t < kFollowers; ++t) {
    if ((t + 1) % 3 == 0) {
      EXPECT_TRUE(absl::IsNotFound(results[t].status())) << t;
    } else {
      ASSERT_TRUE(results[t].ok()) << t;
      EXPECT_EQ(*results[t], 2 * (t + 1));
    }
  }
  // 10 queued behind the first: groups of 4, 4 and 2 (a last one alone would be `one`).
  std::size_t grouped = 0;
  for (std::size_t size : group_sizes) {
    EXPECT_GE(size, 2u);
    EXPECT_LE(size, 4u);
    grouped += size;
  }
  EXPECT_EQ(grouped + (alone.load() - 1), static_cast<std::size_t>(kFollowers));
  EXPECT_EQ(counters.Snapshot().write_groups, group_sizes.size());
  EXPECT_EQ(counters.Snapshot().grouped_calls, grouped);
  EXPECT_GE(group_sizes.size(), 3u);
}

TEST(WriteQueue, AThrowingBatchFailsEveryOtherMemberAndWakesThem) {
  constexpr int kFollowers = 6;
  StoreCounters counters;
  Queue queue(64, &counters);
  std::atomic<int> alone{0};
  auto one = [&](int request) -> absl::StatusOr<int> {
    if (alone.fetch_add(1) == 0) AwaitWaiting(queue, kFollowers);
    return request;
  };
  auto many = [&](std::span<const int>) -> std::vector<absl::StatusOr<int>> {
    throw std::bad_alloc();
  };
  std::thread leader([&] { (void)queue.Write(0, one, many); });
  while (alone.load() == 0) std::this_thread::yield();
  std::atomic<int> threw{0}, exhausted{0};
  std::vector<std::thread> followers;
  for (int t = 0; t < kFollowers; ++t) {
    followers.emplace_back([&, t] {
      try {
        absl::StatusOr<int> r = queue.Write(t + 1, one, many);
        if (absl::IsResourceExhausted(r.status())) exhausted.fetch_add(1);
      } catch (const std::bad_alloc&) {
        threw.fetch_add(1);
      }
    });
  }
  leader.join();
  for (std::thread& thread : followers) thread.join();
  // The group's leader sees the exception; the others a status. Nobody is left waiting (the
  // threads joined), and the queue still works.
  EXPECT_EQ(threw.load(), 1);
  EXPECT_EQ(exhausted.load(), kFollowers - 1);
  EXPECT_EQ(counters.Snapshot().write_groups, 0u);
  auto fine = [](std::span<const int> r) { return std::vector<absl::StatusOr<int>>(r.begin(), r.end()); };
  EXPECT_EQ(*queue.Write(7, one, fine), 7);
}

TEST(WriteQueue, LimitOneWritesEveryCallAloneWithoutQueueing) {
  StoreCounters counters;
  Queue queue(1, &counters);
  std::atomic<int> batches{0};
  auto one = [](int request) -> absl::StatusOr<int> { return request; };
  auto many = [&](std::span<const int> r) {
    batches.fetch_add(1);
    return std::vector<absl::StatusOr<int>>(r.begin(), r.end());
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) EXPECT_EQ(*queue.Write(t * 1000 + i, one, many), t * 1000 + i);
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(batches.load(), 0);
  EXPECT_EQ(counters.Snapshot().write_groups, 0u);
}

TEST(WriteQueue, GroupLimitIsValidated) {
  EXPECT_TRUE(ValidateGroupLimit(1, "x").ok());
  EXPECT_TRUE(ValidateGroupLimit(kMaxGroupLimit, "x").ok());
  EXPECT_TRUE(absl::IsInvalidArgument(ValidateGroupLimit(0, "x")));
  EXPECT_TRUE(absl::IsInvalidArgument(ValidateGroupLimit(kMaxGroupLimit + 1, "x")));
}

}  // namespace
}  // namespace idem::internal

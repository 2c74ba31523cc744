#include "conformance/group_faults.h"

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <iostream>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "idem/processor.h"

namespace idem::testing {

int ClaimAndCompleteFromSixteenThreads(DedupStore& store, std::string_view scope,
                                       std::string_view prefix, int per_thread,
                                       std::chrono::milliseconds lease) {
  constexpr int kThreads = 16;
  std::atomic<int> completed{0};
  std::barrier start(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      start.arrive_and_wait();
      for (int i = 0; i < per_thread; ++i) {
        const std::string id = absl::StrCat(std::string(prefix), t, "-", i);
        absl::StatusOr<ClaimResult> claim =
            store.Claim(ClaimRequest{.scope = scope, .id = id, .lease = lease});
        ASSERT_TRUE(claim.ok()) << claim.status();
        ASSERT_EQ(claim->status, ClaimStatus::kAcquired);
        absl::StatusOr<CompleteStatus> done =
            store.Complete(CompleteRequest{.scope = scope, .id = id, .token = claim->token});
        ASSERT_TRUE(done.ok()) << done.status();
        ASSERT_EQ(*done, CompleteStatus::kCompleted);
        completed.fetch_add(1);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(completed.load(), kThreads * per_thread);
  return 2 * kThreads * per_thread;
}

void SixteenThreadsThroughAnOutage(DedupStore& store, const Outage& outage) {
  using std::chrono::milliseconds;
  constexpr int kThreads = 16;
  constexpr std::string_view kScope = "billing/order-events";
  absl::StatusOr<Processor> processor =
      Processor::Create(store, std::string(kScope), ProcessorOptions{.lease = milliseconds(300)});
  ASSERT_TRUE(processor.ok()) << processor.status();
  const std::string run = absl::StrCat(
      "outage-", std::chrono::steady_clock::now().time_since_epoch().count(), "-");
  // Per message, written by its thread only: handler runs, failed calls, whether it was
  // acknowledged as processed, whether it settled.
  struct Record {
    std::string id;
    int runs = 0;
    int failures = 0;
    bool processed = false;
    bool settled = false;
  };
  std::vector<std::vector<Record>> records(kThreads);
  std::atomic<int> settled{0}, unexpected{0};
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::map<absl::StatusCode, int> codes;  // guarded by mu

  // Each thread processes messages of its own one at a time until told to stop; a message it
  // started is carried to an outcome (or two minutes pass) before it looks at `stop`.
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(120);
      for (int i = 0; !stop.load(); ++i) {
        Record& r = records[t].emplace_back(Record{.id = absl::StrCat(run, t, "-", i)});
        while (!r.settled && std::chrono::steady_clock::now() < give_up) {
          absl::StatusOr<ProcessResult> result = processor->Process(
              Message{.id = r.id, .payload = "p"}, [&](HandlerContext&) { ++r.runs; });
          if (!result.ok()) {
            ++r.failures;
            {
              std::lock_guard lock(mu);
              ++codes[result.status().code()];
            }
            std::this_thread::sleep_for(milliseconds(10));
            continue;
          }
          switch (result->outcome) {
            case Outcome::kProcessed:
              r.processed = true;
              r.settled = true;
              break;
            case Outcome::kDuplicate:  // a completion whose reply the outage swallowed
              r.settled = true;
              break;
            case Outcome::kInProgress:  // a claim whose reply was lost: its lease ends soon
              std::this_thread::sleep_for(milliseconds(50));
              break;
            default:
              unexpected.fetch_add(1);
              r.settled = true;
          }
        }
        if (!r.settled) return;  // gave up: counted below
        settled.fetch_add(1);
      }
    });
  }
  auto await_settled = [&](int n) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (settled.load() < n && std::chrono::steady_clock::now() < end) {
      std::this_thread::sleep_for(milliseconds(1));
    }
  };
  await_settled(500);
  const StoreStats before_kill = store.Stats();
  EXPECT_TRUE(outage.kill().ok());
  std::this_thread::sleep_for(milliseconds(500));
  EXPECT_TRUE(outage.restart().ok());
  const int settled_at_restart = settled.load();
  await_settled(settled_at_restart + 500);  // the store recovered and went on
  stop.store(true);
  for (std::thread& thread : threads) thread.join();

  EXPECT_EQ(unexpected.load(), 0);
  EXPECT_GT(before_kill.write_groups, 0u) << "no groups formed before the kill";
  EXPECT_GE(settled.load(), settled_at_restart + 500) << "the store did not recover";
  int total_failures = 0, extra_runs = 0, messages = 0;
  for (const auto& [code, n] : codes) {
    // The outage is a status: Unavailable or DeadlineExceeded (a broken or silent connection),
    // or Aborted (a completion whose claim the lost write never kept, or that was taken over).
    EXPECT_TRUE(code == absl::StatusCode::kUnavailable ||
                code == absl::StatusCode::kDeadlineExceeded || code == absl::StatusCode::kAborted)
        << absl::StatusCodeToString(code) << " x" << n;
    total_failures += n;
  }
  for (const std::vector<Record>& mine : records) {
    for (const Record& r : mine) {
      ++messages;
      EXPECT_TRUE(r.settled) << r.id << " never reached an outcome";
      extra_runs += std::max(0, r.runs - 1);
      // I3: a second run of an id is attributable to a failed call for that id.
      EXPECT_LE(r.runs, 1 + r.failures) << r.id;
      // Every message acknowledged as processed ran its handler.
      if (r.processed) {
        EXPECT_GE(r.runs, 1) << r.id;
      }
    }
  }
  EXPECT_GT(total_failures, 0) << "the outage must surface as statuses, never as silent success";
  const StoreStats after = store.Stats();
  std::cout << "outage run: " << messages << " messages on 16 threads, " << settled_at_restart
            << " settled when the server was back; failed calls " << total_failures
            << ", extra handler runs " << extra_runs << "; groups " << after.write_groups
            << " carrying " << after.grouped_calls << " calls\n";

  // Every message acknowledged as processed is COMPLETED, seen from a fresh store.
  absl::StatusOr<std::unique_ptr<DedupStore>> fresh = outage.reopen();
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  int lost = 0;
  for (const std::vector<Record>& mine : records) {
    for (const Record& r : mine) {
      if (!r.processed) continue;
      absl::StatusOr<std::optional<RecordInfo>> info = (*fresh)->Inspect(kScope, r.id);
      ASSERT_TRUE(info.ok()) << info.status();
      if (!info->has_value() || (*info)->state != RecordState::kCompleted) ++lost;
    }
  }
  EXPECT_EQ(lost, 0);
}

}  // namespace idem::testing

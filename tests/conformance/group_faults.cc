#include "conformance/group_faults.h"

#include <algorithm>
#include <atomic>
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

void SixteenThreadsThroughAnOutage(DedupStore& store, const Outage& outage) {
  using std::chrono::milliseconds;
  constexpr int kThreads = 16;
  constexpr int kIds = 1600;
  constexpr std::string_view kScope = "billing/order-events";
  absl::StatusOr<Processor> processor =
      Processor::Create(store, std::string(kScope), ProcessorOptions{.lease = milliseconds(300)});
  ASSERT_TRUE(processor.ok()) << processor.status();
  const std::string run = absl::StrCat(
      "outage-", std::chrono::steady_clock::now().time_since_epoch().count(), "-");
  std::vector<std::string> ids;
  for (int i = 0; i < kIds; ++i) ids.push_back(absl::StrCat(run, i));
  // Per id: handler runs, failed calls, and whether it was acknowledged as processed.
  std::vector<std::atomic<int>> runs(kIds), failures(kIds);
  std::vector<std::atomic<bool>> processed(kIds);
  std::atomic<int> settled{0}, unsettled{0}, unexpected{0};
  std::mutex mu;
  std::map<absl::StatusCode, int> codes;  // guarded by mu

  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(120);
      for (int i = t; i < kIds; i += kThreads) {
        bool done = false;
        while (!done && std::chrono::steady_clock::now() < give_up) {
          absl::StatusOr<ProcessResult> result = processor->Process(
              Message{.id = ids[i], .payload = "p"}, [&](HandlerContext&) { runs[i].fetch_add(1); });
          if (!result.ok()) {
            failures[i].fetch_add(1);
            {
              std::lock_guard lock(mu);
              ++codes[result.status().code()];
            }
            std::this_thread::sleep_for(milliseconds(10));
            continue;
          }
          switch (result->outcome) {
            case Outcome::kProcessed:
              processed[i].store(true);
              done = true;
              break;
            case Outcome::kDuplicate:  // a completion whose reply the outage swallowed
              done = true;
              break;
            case Outcome::kInProgress:  // a claim whose reply was lost: its lease ends soon
              std::this_thread::sleep_for(milliseconds(50));
              break;
            default:
              unexpected.fetch_add(1);
              done = true;
          }
        }
        (done ? settled : unsettled).fetch_add(1);
      }
    });
  }
  while (settled.load() + unsettled.load() < kIds / 3) std::this_thread::sleep_for(milliseconds(1));
  const StoreStats before_kill = store.Stats();
  EXPECT_TRUE(outage.kill().ok());
  const int settled_at_kill = settled.load();
  std::this_thread::sleep_for(milliseconds(500));
  EXPECT_TRUE(outage.restart().ok());
  for (std::thread& thread : threads) thread.join();

  EXPECT_LT(settled_at_kill, kIds) << "the run ended before the kill: make it longer";
  EXPECT_EQ(unsettled.load(), 0);
  EXPECT_EQ(unexpected.load(), 0);
  EXPECT_GT(before_kill.write_groups, 0u) << "no groups formed before the kill";
  int total_failures = 0, extra_runs = 0;
  for (const auto& [code, n] : codes) {
    // The outage is a status: Unavailable or DeadlineExceeded (a broken or silent connection),
    // or Aborted (a completion whose claim the lost write never kept, or that was taken over).
    EXPECT_TRUE(code == absl::StatusCode::kUnavailable ||
                code == absl::StatusCode::kDeadlineExceeded || code == absl::StatusCode::kAborted)
        << absl::StatusCodeToString(code) << " x" << n;
    total_failures += n;
  }
  for (int i = 0; i < kIds; ++i) {
    extra_runs += std::max(0, runs[i].load() - 1);
    // I3: a second run of an id is attributable to a failed call for that id.
    EXPECT_LE(runs[i].load(), 1 + failures[i].load()) << ids[i];
    // I6: every acknowledged message ran its handler.
    if (processed[i].load()) {
      EXPECT_GE(runs[i].load(), 1) << ids[i];
    }
  }
  EXPECT_GT(total_failures, 0) << "the outage must surface as statuses, never as silent success";
  const StoreStats after = store.Stats();
  std::cout << "outage run: " << kIds << " ids on 16 threads, kill after " << settled_at_kill
            << " settled; failed calls " << total_failures << ", extra handler runs "
            << extra_runs << "; groups " << after.write_groups << " carrying "
            << after.grouped_calls << " calls\n";

  // Every message acknowledged as processed is COMPLETED, seen from a fresh store.
  absl::StatusOr<std::unique_ptr<DedupStore>> fresh = outage.reopen();
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  int lost = 0;
  for (int i = 0; i < kIds; ++i) {
    if (!processed[i].load()) continue;
    absl::StatusOr<std::optional<RecordInfo>> info = (*fresh)->Inspect(kScope, ids[i]);
    ASSERT_TRUE(info.ok()) << info.status();
    if (!info->has_value() || (*info)->state != RecordState::kCompleted) ++lost;
  }
  EXPECT_EQ(lost, 0);
}

}  // namespace idem::testing

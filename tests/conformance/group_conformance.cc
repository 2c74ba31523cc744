// Group commit (docs/design.md, "Group commit"), checked against every backend: many threads
// calling Claim and Complete at once on one store object each get exactly the outcome a store
// running the calls one at a time (in some order) would give them, and on the stores that group
// (every one but memory) groups of more than one call really form (StoreStats::write_groups).
// Kept apart from store_conformance.cc; linked into every binary that instantiates
// StoreConformance.
#include <atomic>
#include <barrier>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "conformance/store_conformance.h"
#include "testing/status_matchers.h"

namespace idem::testing {
namespace {

constexpr int kThreads = 16;
constexpr std::chrono::milliseconds kLongLease{3'600'000};
constexpr std::string_view kOtherScope = "shipping/order-events";

// Runs body(thread) on kThreads threads that start together.
template <typename Body>
void OnThreads(Body body) {
  std::barrier start(kThreads);
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      start.arrive_and_wait();
      body(t);
    });
  }
  for (std::thread& thread : threads) thread.join();
}

// Whether the store groups concurrent writes (the memory store has no write to amortise).
bool Groups(const DedupStore& store) { return store.BackendName() != "memory"; }

TEST_P(StoreConformance, ConcurrentCallsEachGetTheOutcomeOfASequentialStore) {
  // Every thread claims the same shared ids (in both scopes) and ids of its own, all at once.
  constexpr int kShared = 24;
  constexpr int kOwn = 8;
  struct Won {
    std::string_view scope;
    std::string id;
    uint64_t token;
  };
  std::mutex mu;
  std::vector<Won> won;                                  // guarded by mu
  std::map<std::pair<std::string, std::string>, int> acquired;  // guarded by mu
  std::atomic<int> in_progress{0}, errors{0}, results{0};
  OnThreads([&](int t) {
    for (int i = 0; i < kShared + kOwn; ++i) {
      const std::string_view scope = i % 2 == 0 ? kScope : kOtherScope;
      const std::string id = i < kShared ? absl::StrCat("shared-", i) : absl::StrCat("own-", t, "-", i);
      absl::StatusOr<ClaimResult> claim =
          store_->Claim(ClaimRequest{.scope = scope, .id = id, .lease = kLongLease});
      results.fetch_add(1);
      if (!claim.ok()) {
        ADD_FAILURE() << claim.status();
        errors.fetch_add(1);
      } else if (claim->status == ClaimStatus::kAcquired) {
        EXPECT_NE(claim->token, 0u);
        EXPECT_EQ(claim->attempt, 1u);
        std::lock_guard lock(mu);
        won.push_back(Won{scope, id, claim->token});
        ++acquired[{std::string(scope), id}];
      } else {
        EXPECT_EQ(claim->status, ClaimStatus::kInProgress) << ClaimStatusName(claim->status);
        EXPECT_EQ(claim->token, 0u);
        in_progress.fetch_add(1);
      }
    }
  });
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(results.load(), kThreads * (kShared + kOwn)) << "one result per call";
  // Exactly one claim of each id was acquired; every other claim of a shared id found it held.
  EXPECT_EQ(acquired.size(), static_cast<std::size_t>(kShared + kThreads * kOwn));
  for (const auto& [key, n] : acquired) EXPECT_EQ(n, 1) << key.first << " " << key.second;
  EXPECT_EQ(in_progress.load(), (kThreads - 1) * kShared);

  // Every winner completes at once, while every thread also sends a completion with a token that
  // does not own the claim: those are Aborted and change nothing; the owners' are Completed.
  std::atomic<int> completed{0}, fenced{0};
  const StoreStats before = store_->Stats();
  OnThreads([&](int t) {
    for (std::size_t k = static_cast<std::size_t>(t); k < won.size(); k += kThreads) {
      const Won& w = won[k];
      absl::StatusOr<CompleteStatus> late = store_->Complete(
          CompleteRequest{.scope = w.scope, .id = w.id, .token = w.token ^ 0x5a5a5a5a5a5aULL});
      if (absl::IsAborted(late.status())) {
        fenced.fetch_add(1);
      } else {
        ADD_FAILURE() << "a completion with a foreign token: " << late.status();
      }
      absl::StatusOr<CompleteStatus> done = store_->Complete(
          CompleteRequest{.scope = w.scope, .id = w.id, .token = w.token, .result = w.id});
      if (done.ok() && *done == CompleteStatus::kCompleted) {
        completed.fetch_add(1);
      } else {
        ADD_FAILURE() << "the owner's completion: " << done.status();
      }
    }
  });
  EXPECT_EQ(completed.load(), static_cast<int>(won.size()));
  EXPECT_EQ(fenced.load(), static_cast<int>(won.size()));
  EXPECT_EQ(store_->Stats().fenced - before.fenced, won.size());
  EXPECT_EQ(store_->Stats().completed - before.completed, won.size());

  // Now every claim of a completed id is a duplicate that hands back its own result.
  std::atomic<int> duplicates{0};
  OnThreads([&](int t) {
    for (int k = 0; k < kShared; ++k) {
      const int i = (k + t) % kShared;  // threads start at different ids
      const std::string_view scope = i % 2 == 0 ? kScope : kOtherScope;
      const std::string id = absl::StrCat("shared-", i);
      absl::StatusOr<ClaimResult> claim =
          store_->Claim(ClaimRequest{.scope = scope, .id = id, .lease = kLongLease});
      if (claim.ok() && claim->status == ClaimStatus::kDuplicate && claim->result == id) {
        duplicates.fetch_add(1);
      } else {
        ADD_FAILURE() << id << ": " << (claim.ok() ? ClaimStatusName(claim->status) : "error")
                      << " " << claim.status();
      }
    }
  });
  EXPECT_EQ(duplicates.load(), kThreads * kShared);
}

TEST_P(StoreConformance, ConcurrentCallsAreWrittenInGroups) {
  // Rounds of 16 threads, each claiming and completing ids of its own one at a time, until a
  // write carried more than one call. Whether a given round overlaps is up to the scheduler (a
  // fast store on two cores may run a thread's round within its time slice), so the rounds are
  // repeated, at most 200 times: a store that groups shows it within the first few.
  int rounds = 0;
  std::atomic<int> completed{0};
  while (rounds < 200 && (rounds == 0 || (Groups(*store_) && store_->Stats().write_groups == 0))) {
    OnThreads([&](int t) {
      for (int i = 0; i < 8; ++i) {
        const std::string id = absl::StrCat("g-", rounds, "-", t, "-", i);
        absl::StatusOr<ClaimResult> claim =
            store_->Claim(ClaimRequest{.scope = kScope, .id = id, .lease = kLongLease});
        ASSERT_TRUE(claim.ok()) << claim.status();
        ASSERT_EQ(claim->status, ClaimStatus::kAcquired);
        absl::StatusOr<CompleteStatus> done =
            store_->Complete(CompleteRequest{.scope = kScope, .id = id, .token = claim->token});
        ASSERT_TRUE(done.ok()) << done.status();
        ASSERT_EQ(*done, CompleteStatus::kCompleted);
        completed.fetch_add(1);
      }
    });
    ++rounds;
  }
  EXPECT_EQ(completed.load(), rounds * kThreads * 8);
  const StoreStats stats = store_->Stats();
  if (!Groups(*store_)) {
    EXPECT_EQ(stats.write_groups, 0u);
    return;
  }
  EXPECT_GT(stats.write_groups, 0u) << "16 threads never had two calls written together";
  EXPECT_GE(stats.grouped_calls, 2 * stats.write_groups);
  EXPECT_LE(stats.grouped_calls, static_cast<uint64_t>(2 * completed.load()));
}

TEST_P(StoreConformance, ConcurrentVersionsOfOneKeyAreGatedAsIfOneAtATime) {
  // Each thread claims its own id with a version of one shared key (versions 1..16), and
  // completes it at once with the others. Run one at a time in some order, the completions of the
  // key apply an increasing run of versions and refuse the rest as stale: so the highest version
  // is always applied, and every other completion is Completed or Stale.
  std::vector<std::optional<CompleteStatus>> outcome(kThreads);
  std::vector<std::optional<ClaimStatus>> claimed(kThreads);
  OnThreads([&](int t) {
    const std::string id = absl::StrCat("v-", t);
    const VersionStamp version{.key = "account-7", .version = static_cast<uint64_t>(t + 1)};
    absl::StatusOr<ClaimResult> claim = store_->Claim(
        ClaimRequest{.scope = kScope, .id = id, .lease = kLongLease, .version = version});
    if (!claim.ok()) {
      ADD_FAILURE() << claim.status();
      return;
    }
    claimed[t] = claim->status;
    if (claim->status != ClaimStatus::kAcquired) return;
    absl::StatusOr<CompleteStatus> done = store_->Complete(CompleteRequest{
        .scope = kScope, .id = id, .token = claim->token, .version = version});
    if (!done.ok()) {
      ADD_FAILURE() << done.status();
      return;
    }
    outcome[t] = *done;
  });
  // A claim may already see a higher version applied (Stale); then it ran no completion.
  for (int t = 0; t < kThreads; ++t) {
    ASSERT_TRUE(claimed[t].has_value());
    EXPECT_TRUE(*claimed[t] == ClaimStatus::kAcquired || *claimed[t] == ClaimStatus::kStale)
        << ClaimStatusName(*claimed[t]);
    EXPECT_EQ(outcome[t].has_value(), *claimed[t] == ClaimStatus::kAcquired);
  }
  ASSERT_TRUE(outcome[kThreads - 1].has_value()) << "the highest version cannot be stale";
  EXPECT_EQ(*outcome[kThreads - 1], CompleteStatus::kCompleted);
  IDEM_ASSERT_OK_AND_ASSIGN(std::optional<uint64_t> applied,
                            store_->AppliedVersion(kScope, "account-7"));
  EXPECT_THAT(applied, ::testing::Optional(static_cast<uint64_t>(kThreads)));

  // Then, all at once: versions at or below 16 are refused at the claim (each told the applied
  // version), newer ones are acquired.
  std::atomic<int> stale{0}, acquired{0};
  OnThreads([&](int t) {
    const uint64_t v = static_cast<uint64_t>(t * 2 + 1);  // 1, 3, ..., 31
    absl::StatusOr<ClaimResult> claim = store_->Claim(ClaimRequest{
        .scope = kScope,
        .id = absl::StrCat("w-", t),
        .lease = kLongLease,
        .version = VersionStamp{.key = "account-7", .version = v}});
    ASSERT_TRUE(claim.ok()) << claim.status();
    if (v <= kThreads) {
      EXPECT_EQ(claim->status, ClaimStatus::kStale) << v;
      EXPECT_THAT(claim->applied_version, ::testing::Optional(static_cast<uint64_t>(kThreads)));
      stale.fetch_add(1);
    } else {
      EXPECT_EQ(claim->status, ClaimStatus::kAcquired) << v;
      acquired.fetch_add(1);
    }
  });
  EXPECT_EQ(stale.load(), kThreads / 2);
  EXPECT_EQ(acquired.load(), kThreads / 2);
}

TEST_P(StoreConformance, ConcurrentConflictsAndDeadLettersStayPerCall) {
  // Set up one at a time: an id completed with payload A, and an id released after its only
  // allowed attempt.
  const Fingerprint a = Fingerprint::Of("payload-a");
  const Fingerprint b = Fingerprint::Of("payload-b");
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult first,
                            store_->Claim(ClaimRequest{.scope = kScope,
                                                       .id = "fp",
                                                       .lease = kLongLease,
                                                       .fingerprint = a}));
  ASSERT_EQ(first.status, ClaimStatus::kAcquired);
  IDEM_ASSERT_OK(
      store_->Complete(CompleteRequest{.scope = kScope, .id = "fp", .token = first.token})
          .status());
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult poison,
                            store_->Claim(ClaimRequest{.scope = kScope,
                                                       .id = "poison",
                                                       .lease = kLongLease,
                                                       .max_attempts = 1}));
  ASSERT_EQ(poison.status, ClaimStatus::kAcquired);
  IDEM_ASSERT_OK(store_->Release(kScope, "poison", poison.token));

  // All at once, mixed: the same payload is a duplicate, another payload a conflict, the poison
  // message dead-lettered, an unlimited claim of it acquired exactly once, and fresh ids acquired.
  std::atomic<int> duplicates{0}, conflicts{0}, fresh{0};
  // The poison id, by claims with max_attempts 1 (limited) and 0 (unlimited).
  std::atomic<int> limited_dead{0}, limited_busy{0}, limited_other{0};
  std::atomic<int> unlimited_acquired{0}, unlimited_busy{0}, unlimited_other{0};
  OnThreads([&](int t) {
    auto claim = [&](ClaimRequest request) {
      absl::StatusOr<ClaimResult> r = store_->Claim(request);
      EXPECT_TRUE(r.ok()) << r.status();
      return r.ok() ? std::optional<ClaimStatus>(r->status) : std::nullopt;
    };
    const auto same = claim({.scope = kScope, .id = "fp", .lease = kLongLease, .fingerprint = a});
    if (same == ClaimStatus::kDuplicate) duplicates.fetch_add(1);
    const auto other = claim({.scope = kScope, .id = "fp", .lease = kLongLease, .fingerprint = b});
    if (other == ClaimStatus::kConflict) conflicts.fetch_add(1);
    const bool limited = t % 2 == 0;
    const auto p = claim({.scope = kScope,
                          .id = "poison",
                          .lease = kLongLease,
                          .max_attempts = limited ? 1u : 0u});
    if (limited) {
      (p == ClaimStatus::kDeadLettered  ? limited_dead
       : p == ClaimStatus::kInProgress ? limited_busy
                                        : limited_other)
          .fetch_add(1);
    } else {
      (p == ClaimStatus::kAcquired     ? unlimited_acquired
       : p == ClaimStatus::kInProgress ? unlimited_busy
                                        : unlimited_other)
          .fetch_add(1);
    }
    const std::string id = absl::StrCat("fresh-", t);
    if (claim({.scope = kScope, .id = id, .lease = kLongLease, .fingerprint = b}) ==
        ClaimStatus::kAcquired) {
      fresh.fetch_add(1);
    }
  });
  EXPECT_EQ(duplicates.load(), kThreads);
  EXPECT_EQ(conflicts.load(), kThreads);
  EXPECT_EQ(fresh.load(), kThreads);
  // The poison id: an unlimited claim takes it (attempt 2) exactly once, the other unlimited ones
  // find it in progress; a limited claim that runs before that is dead-lettered, one that runs
  // after finds it in progress. Whatever the order, no limited claim acquires it.
  EXPECT_EQ(unlimited_acquired.load(), 1);
  EXPECT_EQ(unlimited_busy.load(), kThreads / 2 - 1);
  EXPECT_EQ(unlimited_other.load(), 0);
  EXPECT_EQ(limited_other.load(), 0);
  EXPECT_EQ(limited_dead.load() + limited_busy.load(), kThreads / 2);
  IDEM_ASSERT_OK_AND_ASSIGN(std::optional<RecordInfo> info, store_->Inspect(kScope, "poison"));
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->state, RecordState::kInProgress);
  EXPECT_EQ(info->attempts, 2u);
}

}  // namespace
}  // namespace idem::testing

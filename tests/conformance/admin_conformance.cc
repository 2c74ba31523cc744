// The operator calls (List, ResetAttempts, Release of a stuck claim) and WaitForCompletion, with
// the Processor's wait_for_in_flight option: docs/design.md's contract, checked on every backend
// that instantiates StoreConformance. Kept apart from store_conformance.cc so that the core
// contract and these later additions can change independently.
#include <algorithm>
#include <chrono>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "conformance/store_conformance.h"
#include "idem/processor.h"
#include "internal/status_macros.h"
#include "testing/status_matchers.h"

namespace idem::testing {
namespace {

using ::testing::ElementsAre;
using ::testing::Eq;
using ::testing::Optional;
using ::testing::UnorderedElementsAre;
using ::testing::UnorderedElementsAreArray;

constexpr std::chrono::milliseconds kLongLease{60'000};

// Every id of `filter` in kScope, over all pages of `limit`; fails the test on an error, on a
// page longer than the limit, or on a listing that does not end.
std::vector<std::string> ListAll(DedupStore& store, ListFilter filter, std::size_t limit = 100,
                                 uint32_t max_attempts = 0) {
  std::vector<std::string> ids;
  std::string cursor;
  for (int page = 0; page < 1000; ++page) {
    absl::StatusOr<ListPage> got = store.List(ListRequest{.scope = kScope,
                                                          .filter = filter,
                                                          .max_attempts = max_attempts,
                                                          .limit = limit,
                                                          .cursor = cursor});
    EXPECT_TRUE(got.ok()) << got.status();
    if (!got.ok()) return ids;
    EXPECT_LE(got->records.size(), limit);
    for (const ListedRecord& r : got->records) ids.push_back(r.id);
    if (got->next_cursor.empty()) {
      // Redis's SCAN may return a record twice; a set is what the contract promises.
      std::sort(ids.begin(), ids.end());
      ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
      return ids;
    }
    cursor = got->next_cursor;
  }
  ADD_FAILURE() << "the listing did not end";
  return ids;
}

absl::StatusOr<ClaimResult> Acquire(DedupStore& store, std::string_view id,
                                     std::chrono::milliseconds lease, uint32_t max_attempts = 0) {
  ClaimRequest request = ClaimOf(id, lease);
  request.max_attempts = max_attempts;
  absl::StatusOr<ClaimResult> claim = store.Claim(request);
  if (claim.ok() && claim->status != ClaimStatus::kAcquired) {
    return absl::InternalError(absl::StrCat(std::string(id), ": ", std::string(ClaimStatusName(claim->status))));
  }
  return claim;
}

struct OneOfEach {
  ClaimResult stuck;  // IN_PROGRESS past its lease
  ClaimResult live;   // IN_PROGRESS with a long lease
  ClaimResult dead;   // RELEASED after 2 attempts
};

// One record in each state: "stuck", "live", "done" (COMPLETED), "released" (RELEASED after 1
// attempt) and "dead" (RELEASED after 2 attempts).
absl::StatusOr<OneOfEach> MakeOneOfEach(DedupStore& store, StoreHarness& harness,
                                        std::chrono::milliseconds lease) {
  OneOfEach out;
  IDEM_ASSIGN_OR_RETURN(out.stuck, Acquire(store, "stuck", lease));
  harness.Advance(lease + lease / 2);
  IDEM_ASSIGN_OR_RETURN(out.live, Acquire(store, "live", kLongLease));
  IDEM_ASSIGN_OR_RETURN(ClaimResult done, Acquire(store, "done", kLongLease));
  IDEM_ASSIGN_OR_RETURN(
      CompleteStatus completed,
      store.Complete({.scope = kScope, .id = "done", .token = done.token, .result = "receipt"}));
  if (completed != CompleteStatus::kCompleted) return absl::InternalError("done: stale");
  IDEM_ASSIGN_OR_RETURN(ClaimResult released, Acquire(store, "released", kLongLease));
  if (absl::Status s = store.Release(kScope, "released", released.token); !s.ok()) return s;
  for (int i = 0; i < 2; ++i) {
    IDEM_ASSIGN_OR_RETURN(out.dead, Acquire(store, "dead", kLongLease));
    if (absl::Status s = store.Release(kScope, "dead", out.dead.token); !s.ok()) return s;
  }
  return out;
}

TEST_P(StoreConformance, ListFiltersRecordsByState) {
  IDEM_ASSERT_OK_AND_ASSIGN(OneOfEach made, MakeOneOfEach(*store_, *harness_, Lease()));
  (void)made;
  EXPECT_THAT(ListAll(*store_, ListFilter::kAll),
              ElementsAre("dead", "done", "live", "released", "stuck"));
  EXPECT_THAT(ListAll(*store_, ListFilter::kInProgress), ElementsAre("live", "stuck"));
  EXPECT_THAT(ListAll(*store_, ListFilter::kStuck), ElementsAre("stuck"));
  EXPECT_THAT(ListAll(*store_, ListFilter::kReleased), ElementsAre("dead", "released"));
  EXPECT_THAT(ListAll(*store_, ListFilter::kCompleted), ElementsAre("done"));
  // Dead-lettered: no live lease, not completed, attempts >= max_attempts.
  EXPECT_THAT(ListAll(*store_, ListFilter::kDeadLettered, 100, 2), ElementsAre("dead"));
  EXPECT_THAT(ListAll(*store_, ListFilter::kDeadLettered, 100, 1),
              ElementsAre("dead", "released", "stuck"));
}

TEST_P(StoreConformance, ListShowsWhatInspectShows) {
  IDEM_ASSERT_OK_AND_ASSIGN(OneOfEach made, MakeOneOfEach(*store_, *harness_, Lease()));
  IDEM_ASSERT_OK_AND_ASSIGN(ListPage page, store_->List({.scope = kScope}));
  ASSERT_EQ(page.records.size(), 5u);
  EXPECT_TRUE(page.next_cursor.empty());
  std::map<std::string, RecordInfo> by_id;
  for (ListedRecord& r : page.records) by_id[r.id] = r.info;
  EXPECT_EQ(by_id["stuck"].state, RecordState::kInProgress);
  EXPECT_EQ(by_id["stuck"].token, made.stuck.token);
  EXPECT_EQ(by_id["live"].token, made.live.token);
  EXPECT_GT(by_id["live"].lease_until_ms, by_id["stuck"].lease_until_ms);
  EXPECT_EQ(by_id["dead"].attempts, 2u);
  EXPECT_EQ(by_id["dead"].token, made.dead.token);
  EXPECT_EQ(by_id["done"].state, RecordState::kCompleted);
  EXPECT_THAT(by_id["done"].result, Optional(Eq("receipt")));
  for (const auto& [id, info] : by_id) {
    IDEM_ASSERT_OK_AND_ASSIGN(std::optional<RecordInfo> inspected, store_->Inspect(kScope, id));
    ASSERT_TRUE(inspected.has_value()) << id;
    EXPECT_EQ(inspected->state, info.state) << id;
    EXPECT_EQ(inspected->token, info.token) << id;
    EXPECT_EQ(inspected->attempts, info.attempts) << id;
  }
}

TEST_P(StoreConformance, ListPagesThroughEveryRecordWithACursor) {
  std::vector<std::string> ids;
  for (int i = 0; i < 23; ++i) ids.push_back(absl::StrCat("page-", i));
  ids.push_back(std::string("bin\0\xff:*?[", 9));  // binary and glob bytes survive the cursor
  for (const std::string& id : ids) {
    IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult claim, Acquire(*store_, id, kLongLease));
    (void)claim;
  }
  // Another scope, including one that extends this one, is never listed.
  ClaimRequest other = ClaimOf("other", kLongLease);
  other.scope = "billing/order-events2";
  IDEM_ASSERT_OK(store_->Claim(other).status());
  IDEM_ASSERT_OK_AND_ASSIGN(ListPage first, store_->List({.scope = kScope, .limit = 10}));
  EXPECT_EQ(first.records.size(), 10u);
  EXPECT_FALSE(first.next_cursor.empty());
  EXPECT_THAT(ListAll(*store_, ListFilter::kAll, 10), UnorderedElementsAreArray(ids));
  EXPECT_THAT(ListAll(*store_, ListFilter::kInProgress, 1), UnorderedElementsAreArray(ids));
}

TEST_P(StoreConformance, ListRefusesBadRequests) {
  EXPECT_EQ(store_->List({.scope = kScope, .limit = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->List({.scope = "bad scope"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->List({.scope = kScope, .filter = ListFilter::kDeadLettered}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->List({.scope = kScope, .cursor = "not a cursor"}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_P(StoreConformance, ReleaseFreesAStuckClaimAndFencesItsOwner) {
  IDEM_ASSERT_OK_AND_ASSIGN(OneOfEach made, MakeOneOfEach(*store_, *harness_, Lease()));
  // The operator releases with the token List showed: claimable at once, attempts kept.
  IDEM_ASSERT_OK(store_->Release(kScope, "stuck", made.stuck.token));
  EXPECT_THAT(ListAll(*store_, ListFilter::kStuck), ElementsAre());
  // The frozen owner wakes up: its completion is refused.
  EXPECT_EQ(store_->Complete({.scope = kScope, .id = "stuck", .token = made.stuck.token}).status().code(),
            absl::StatusCode::kAborted);
  // A second release with the same token (the claim changed since) is refused too.
  EXPECT_EQ(store_->Release(kScope, "stuck", made.stuck.token).code(), absl::StatusCode::kAborted);
  const ClaimResult again = MustAcquire("stuck");
  EXPECT_EQ(again.attempt, 2u);
  EXPECT_FALSE(again.took_over);
  // A token read before a takeover releases nothing.
  EXPECT_EQ(store_->Release(kScope, "stuck", made.stuck.token).code(), absl::StatusCode::kAborted);
  IDEM_ASSERT_OK_AND_ASSIGN(std::optional<RecordInfo> info, store_->Inspect(kScope, "stuck"));
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->state, RecordState::kInProgress);
  EXPECT_EQ(info->token, again.token);
}

TEST_P(StoreConformance, ResetAttemptsReDrivesADeadLetter) {
  IDEM_ASSERT_OK_AND_ASSIGN(OneOfEach made, MakeOneOfEach(*store_, *harness_, Lease()));
  ClaimRequest capped = ClaimOf("dead", Lease());
  capped.max_attempts = 2;
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult refused, store_->Claim(capped));
  EXPECT_EQ(refused.status, ClaimStatus::kDeadLettered);
  // A wrong token (the record changed since it was read) changes nothing.
  EXPECT_EQ(store_->ResetAttempts(kScope, "dead", made.dead.token + 1).code(),
            absl::StatusCode::kAborted);
  IDEM_ASSERT_OK_AND_ASSIGN(refused, store_->Claim(capped));
  EXPECT_EQ(refused.status, ClaimStatus::kDeadLettered);

  IDEM_ASSERT_OK(store_->ResetAttempts(kScope, "dead", made.dead.token));
  IDEM_ASSERT_OK_AND_ASSIGN(std::optional<RecordInfo> info, store_->Inspect(kScope, "dead"));
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->state, RecordState::kReleased);
  EXPECT_EQ(info->attempts, 0u);
  EXPECT_THAT(ListAll(*store_, ListFilter::kDeadLettered, 100, 2), ElementsAre());
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult redriven, store_->Claim(capped));
  EXPECT_EQ(redriven.status, ClaimStatus::kAcquired);
  EXPECT_EQ(redriven.attempt, 1u);
}

TEST_P(StoreConformance, ResetAttemptsOfAStuckClaimFencesItsOwner) {
  IDEM_ASSERT_OK_AND_ASSIGN(OneOfEach made, MakeOneOfEach(*store_, *harness_, Lease()));
  IDEM_ASSERT_OK(store_->ResetAttempts(kScope, "stuck", made.stuck.token));
  EXPECT_EQ(store_->Complete({.scope = kScope, .id = "stuck", .token = made.stuck.token}).status().code(),
            absl::StatusCode::kAborted);
  EXPECT_EQ(MustAcquire("stuck").attempt, 1u);
}

TEST_P(StoreConformance, ResetAttemptsRefusesLiveCompletedAndAbsentRecords) {
  IDEM_ASSERT_OK_AND_ASSIGN(OneOfEach made, MakeOneOfEach(*store_, *harness_, Lease()));
  EXPECT_EQ(store_->ResetAttempts(kScope, "live", made.live.token).code(),
            absl::StatusCode::kFailedPrecondition);
  IDEM_ASSERT_OK_AND_ASSIGN(std::optional<RecordInfo> done, store_->Inspect(kScope, "done"));
  ASSERT_TRUE(done.has_value());
  EXPECT_EQ(store_->ResetAttempts(kScope, "done", done->token).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store_->ResetAttempts(kScope, "absent", 7).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->ResetAttempts(kScope, "dead", 0).code(), absl::StatusCode::kInvalidArgument);
  // The live claim is untouched: its owner still completes.
  IDEM_ASSERT_OK(
      store_->Complete({.scope = kScope, .id = "live", .token = made.live.token}).status());
}

TEST_P(StoreConformance, WaitForCompletionReturnsWhenTheClaimEnds) {
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult first, Acquire(*store_, "w-1", kLongLease));
  std::thread finisher([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_TRUE(store_->Complete({.scope = kScope, .id = "w-1", .token = first.token}).ok());
  });
  IDEM_ASSERT_OK_AND_ASSIGN(
      bool ended, store_->WaitForCompletion(kScope, "w-1",
                                            std::chrono::steady_clock::now() + std::chrono::seconds(20)));
  finisher.join();
  EXPECT_TRUE(ended);
  EXPECT_EQ(MustClaim("w-1").status, ClaimStatus::kDuplicate);
  // Nothing to wait for: at once.
  IDEM_ASSERT_OK_AND_ASSIGN(ended, store_->WaitForCompletion(kScope, "absent",
                                                             std::chrono::steady_clock::now()));
  EXPECT_TRUE(ended);
}

TEST_P(StoreConformance, WaitForCompletionStopsAtTheDeadline) {
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult first, Acquire(*store_, "w-1", kLongLease));
  const auto start = std::chrono::steady_clock::now();
  IDEM_ASSERT_OK_AND_ASSIGN(
      bool ended, store_->WaitForCompletion(kScope, "w-1", start + std::chrono::milliseconds(150)));
  EXPECT_FALSE(ended);
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(150));
  IDEM_ASSERT_OK(store_->Release(kScope, "w-1", first.token));
}

TEST_P(StoreConformance, ProcessorWaitsForAnInFlightDuplicateAndGetsItsResult) {
  IDEM_ASSERT_OK_AND_ASSIGN(
      Processor waiting,
      Processor::Create(*store_, std::string(kScope),
                        {.lease = kLongLease, .wait_for_in_flight = std::chrono::seconds(20)}));
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult first, Acquire(*store_, "w-1", kLongLease));
  std::thread finisher([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_TRUE(store_
                    ->Complete({.scope = kScope, .id = "w-1", .token = first.token,
                                .result = "receipt-w-1"})
                    .ok());
  });
  int runs = 0;
  absl::StatusOr<ProcessResult> result =
      waiting.Process({.id = "w-1", .payload = "p"}, [&](HandlerContext&) { ++runs; });
  finisher.join();
  IDEM_ASSERT_OK(result.status());
  EXPECT_EQ(result->outcome, Outcome::kDuplicate);
  EXPECT_THAT(result->result, Optional(Eq("receipt-w-1")));
  EXPECT_EQ(runs, 0);
}

TEST_P(StoreConformance, ProcessorWaitingRunsTheHandlerWhenTheFirstReleases) {
  IDEM_ASSERT_OK_AND_ASSIGN(
      Processor waiting,
      Processor::Create(*store_, std::string(kScope),
                        {.lease = kLongLease, .wait_for_in_flight = std::chrono::seconds(20)}));
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult first, Acquire(*store_, "w-1", kLongLease));
  std::thread releaser([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_TRUE(store_->Release(kScope, "w-1", first.token).ok());
  });
  int runs = 0;
  absl::StatusOr<ProcessResult> result =
      waiting.Process({.id = "w-1", .payload = "p"}, [&](HandlerContext&) { ++runs; });
  releaser.join();
  IDEM_ASSERT_OK(result.status());
  EXPECT_EQ(result->outcome, Outcome::kProcessed);
  EXPECT_EQ(result->attempt, 2u);
  EXPECT_EQ(runs, 1);
}

TEST_P(StoreConformance, ProcessorWaitingGivesInProgressAtTheBoundAndOffByDefault) {
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult first, Acquire(*store_, "w-1", kLongLease));
  (void)first;
  IDEM_ASSERT_OK_AND_ASSIGN(
      Processor waiting,
      Processor::Create(*store_, std::string(kScope),
                        {.lease = kLongLease, .wait_for_in_flight = std::chrono::milliseconds(150)}));
  int runs = 0;
  auto start = std::chrono::steady_clock::now();
  IDEM_ASSERT_OK_AND_ASSIGN(
      ProcessResult result,
      waiting.Process({.id = "w-1", .payload = "p"}, [&](HandlerContext&) { ++runs; }));
  EXPECT_EQ(result.outcome, Outcome::kInProgress);
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(150));
  IDEM_ASSERT_OK_AND_ASSIGN(Processor plain,
                            Processor::Create(*store_, std::string(kScope), {.lease = kLongLease}));
  IDEM_ASSERT_OK_AND_ASSIGN(
      result, plain.Process({.id = "w-1", .payload = "p"}, [&](HandlerContext&) { ++runs; }));
  EXPECT_EQ(result.outcome, Outcome::kInProgress);
  EXPECT_EQ(runs, 0);
}

}  // namespace
}  // namespace idem::testing

#include "idem/policy.h"

#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>

#include "gtest/gtest.h"
#include "idem/memory_store.h"
#include "idem/processor.h"
#include "testing/status_matchers.h"

namespace idem {
namespace {

using std::chrono::milliseconds;
using ::idem::testing::StatusIs;

absl::StatusOr<ProcessResult> ResultOf(Outcome outcome, milliseconds retry_after = milliseconds(0)) {
  ProcessResult r;
  r.outcome = outcome;
  r.retry_after = retry_after;
  return r;
}

TEST(BackoffTest, GrowsExponentiallyAndIsCapped) {
  const BackoffOptions o{.initial = milliseconds(100), .max = milliseconds(1000),
                         .multiplier = 2.0, .jitter = 0.0};
  EXPECT_EQ(Backoff(o, 0, 0.5), milliseconds(100));
  EXPECT_EQ(Backoff(o, 1, 0.5), milliseconds(100));
  EXPECT_EQ(Backoff(o, 2, 0.5), milliseconds(200));
  EXPECT_EQ(Backoff(o, 4, 0.5), milliseconds(800));
  EXPECT_EQ(Backoff(o, 5, 0.5), milliseconds(1000));
  EXPECT_EQ(Backoff(o, 4'000'000'000u, 0.5), milliseconds(1000));  // no overflow
}

TEST(BackoffTest, JitterStaysInItsRange) {
  const BackoffOptions o{.initial = milliseconds(1000), .max = milliseconds(1000), .jitter = 0.25};
  EXPECT_EQ(Backoff(o, 3, 0.0), milliseconds(1000));
  EXPECT_EQ(Backoff(o, 3, 1.0), milliseconds(750));
  EXPECT_EQ(Backoff(o, 3, 0.5), milliseconds(875));
  bool saw_below_max = false;
  for (int i = 0; i < 200; ++i) {
    const milliseconds d = Backoff(o, 3);
    EXPECT_GE(d, milliseconds(750));
    EXPECT_LE(d, milliseconds(1000));
    saw_below_max |= d < milliseconds(1000);
  }
  EXPECT_TRUE(saw_below_max);
}

TEST(BackoffTest, ValidatesOptions) {
  EXPECT_THAT(ValidateBackoff({.initial = milliseconds(0)}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ValidateBackoff({.initial = milliseconds(10), .max = milliseconds(5)}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ValidateBackoff({.multiplier = 0.5}), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ValidateBackoff({.jitter = 1.5}), StatusIs(absl::StatusCode::kInvalidArgument));
  IDEM_EXPECT_OK(ValidateBackoff({}));
  EXPECT_THAT(OutcomePolicy::Create({.in_progress_min_delay = milliseconds(10),
                                     .in_progress_max_delay = milliseconds(5)})
                  .status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(OutcomePolicyTest, DefaultsPerOutcome) {
  const OutcomePolicy policy;
  EXPECT_EQ(policy.Decide(ResultOf(Outcome::kProcessed)).action, Action::kAck);
  EXPECT_EQ(policy.Decide(ResultOf(Outcome::kDuplicate)).action, Action::kAck);
  EXPECT_EQ(policy.Decide(ResultOf(Outcome::kStale)).action, Action::kAck);
  const Decision conflict = policy.Decide(ResultOf(Outcome::kConflict));
  EXPECT_EQ(conflict.action, Action::kDeadLetter);
  EXPECT_EQ(conflict.reason, "conflict");
  EXPECT_EQ(conflict.outcome, Outcome::kConflict);
  const Decision dead = policy.Decide(ResultOf(Outcome::kDeadLettered));
  EXPECT_EQ(dead.action, Action::kDeadLetter);
  EXPECT_EQ(dead.reason, "max_attempts");
}

TEST(OutcomePolicyTest, InProgressWaitsForTheOtherLeaseClamped) {
  const OutcomePolicy policy({.in_progress_min_delay = milliseconds(50),
                              .in_progress_max_delay = milliseconds(5000)});
  Decision d = policy.Decide(ResultOf(Outcome::kInProgress, milliseconds(1234)));
  EXPECT_EQ(d.action, Action::kRedeliver);
  EXPECT_EQ(d.delay, milliseconds(1234));
  EXPECT_EQ(policy.Decide(ResultOf(Outcome::kInProgress, milliseconds(0))).delay, milliseconds(50));
  EXPECT_EQ(policy.Decide(ResultOf(Outcome::kInProgress, milliseconds(99999))).delay,
            milliseconds(5000));
}

TEST(OutcomePolicyTest, StatusesMapToRetryDeadLetterOrRedeliver) {
  const OutcomePolicy policy({.backoff = {.initial = milliseconds(100), .max = milliseconds(400),
                                          .jitter = 0.0},
                              .aborted_delay = milliseconds(777)});
  const absl::StatusOr<ProcessResult> down = absl::UnavailableError("redis down");
  Decision d = policy.Decide(down, 1);
  EXPECT_EQ(d.action, Action::kRetry);
  EXPECT_EQ(d.delay, milliseconds(100));
  EXPECT_EQ(policy.Decide(down, 2).delay, milliseconds(200));
  EXPECT_EQ(policy.Decide(down, 9).delay, milliseconds(400));
  EXPECT_NE(d.reason.find("redis down"), std::string::npos);

  const absl::StatusOr<ProcessResult> bad = absl::InvalidArgumentError("empty message id");
  d = policy.Decide(bad);
  EXPECT_EQ(d.action, Action::kDeadLetter);
  EXPECT_EQ(d.reason, "invalid: empty message id");

  const absl::StatusOr<ProcessResult> fenced = absl::AbortedError("lease lost");
  d = policy.Decide(fenced);
  EXPECT_EQ(d.action, Action::kRedeliver);
  EXPECT_EQ(d.delay, milliseconds(777));

  d = policy.DecideHandlerError("boom", 3);
  EXPECT_EQ(d.action, Action::kRedeliver);
  EXPECT_EQ(d.delay, milliseconds(400));
  EXPECT_EQ(d.reason, "handler: boom");
}

TEST(OutcomePolicyTest, StaleCanBeDeadLettered) {
  const OutcomePolicy policy({.dead_letter_stale = true});
  EXPECT_EQ(policy.Decide(ResultOf(Outcome::kStale)).action, Action::kDeadLetter);
}

TEST(OutcomePolicyTest, OverrideSeesDefaultButCannotAckAStoreError) {
  int calls = 0;
  const OutcomePolicy policy({.override_decision = [&](const Delivery& delivery, Decision d) {
    ++calls;
    if (d.outcome == Outcome::kConflict) return Decision{.action = Action::kAck, .reason = "mine"};
    (void)delivery;
    return Decision{.action = Action::kAck};
  }});
  Decision d = policy.Decide(ResultOf(Outcome::kConflict));
  EXPECT_EQ(d.action, Action::kAck);
  EXPECT_EQ(d.reason, "mine");
  const absl::StatusOr<ProcessResult> down = absl::UnavailableError("x");
  EXPECT_EQ(policy.Decide(down).action, Action::kRetry);
  EXPECT_EQ(calls, 2);
}

TEST(ProcessorRetryAfterTest, InProgressCarriesTheOtherLeaseEnd) {
  ManualClock clock;
  MemoryStoreOptions mo;
  mo.clock = &clock;
  IDEM_ASSERT_OK_AND_ASSIGN(std::unique_ptr<DedupStore> store, NewMemoryStore(std::move(mo)));
  IDEM_ASSERT_OK_AND_ASSIGN(
      Processor processor,
      Processor::Create(*store, "t", {.lease = milliseconds(5000), .store_clock = &clock}));
  // A first consumer claims m1 and is still running when the second delivery arrives.
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult claim,
                            store->Claim({.scope = "t", .id = "m1", .lease = milliseconds(5000)}));
  ASSERT_EQ(claim.status, ClaimStatus::kAcquired);
  clock.Advance(2000);
  bool ran = false;
  IDEM_ASSERT_OK_AND_ASSIGN(ProcessResult r,
                            processor.Process({.id = "m1", .payload = ""},
                                              [&](HandlerContext&) { ran = true; }));
  EXPECT_FALSE(ran);
  EXPECT_EQ(r.outcome, Outcome::kInProgress);
  EXPECT_EQ(r.lease_until_ms, claim.lease_until_ms);
  EXPECT_EQ(r.retry_after, milliseconds(3000));
  EXPECT_EQ(OutcomePolicy().Decide(absl::StatusOr<ProcessResult>(r)).delay, milliseconds(3000));

  // The same through ProcessBatch.
  const Message batch[] = {{.id = "m1", .payload = ""}};
  std::vector<absl::StatusOr<ProcessResult>> out =
      processor.ProcessBatch(batch, [&](HandlerContext&) { ran = true; });
  ASSERT_EQ(out.size(), 1u);
  IDEM_ASSERT_OK(out[0].status());
  EXPECT_EQ(out[0]->retry_after, milliseconds(3000));
  EXPECT_FALSE(ran);
}

TEST(ProcessorRetryAfterTest, ThrowingHandlerEndsDeadLettered) {
  IDEM_ASSERT_OK_AND_ASSIGN(std::unique_ptr<DedupStore> store, NewMemoryStore({}));
  IDEM_ASSERT_OK_AND_ASSIGN(Processor processor,
                            Processor::Create(*store, "t", {.max_attempts = 2}));
  const OutcomePolicy policy;
  for (uint32_t tries = 1; tries <= 2; ++tries) {
    try {
      (void)processor.Process({.id = "poison", .payload = "p"},
                              [](HandlerContext&) { throw std::runtime_error("bad"); });
      FAIL() << "the handler's exception must propagate";
    } catch (const std::runtime_error& e) {
      EXPECT_EQ(policy.DecideHandlerError(e.what(), tries).action, Action::kRedeliver);
    }
  }
  const absl::StatusOr<ProcessResult> third =
      processor.Process({.id = "poison", .payload = "p"}, [](HandlerContext&) {});
  const Decision d = policy.Decide(third);
  EXPECT_EQ(d.action, Action::kDeadLetter);
  EXPECT_EQ(d.reason, "max_attempts");
}

}  // namespace
}  // namespace idem

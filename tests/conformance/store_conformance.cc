// docs/design.md ("Records and states" to "Modes"), checked against every backend. Each test reads
// as a sentence of the contract.
#include "conformance/store_conformance.h"

#include <atomic>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "idem/processor.h"
#include "internal/owner.h"
#include "testing/status_matchers.h"

namespace idem::testing {
namespace {

using ::testing::Eq;
using ::testing::Optional;

CompleteRequest CompleteOf(std::string_view id, uint64_t token) {
  return CompleteRequest{.scope = kScope, .id = id, .token = token};
}

}  // namespace

void StoreConformance::SetUp() {
  harness_ = GetParam().make();
  ASSERT_NE(harness_, nullptr);
  auto store = harness_->Open();
  ASSERT_TRUE(store.ok()) << store.status();
  store_ = std::move(store).value();
}

ClaimResult StoreConformance::MustClaim(std::string_view id) {
  absl::StatusOr<ClaimResult> claim = store_->Claim(ClaimOf(id, Lease()));
  EXPECT_TRUE(claim.ok()) << claim.status();
  return claim.ok() ? *claim : ClaimResult{.status = ClaimStatus::kConflict};
}

ClaimResult StoreConformance::MustAcquire(std::string_view id) {
  ClaimResult claim = MustClaim(id);
  EXPECT_EQ(claim.status, ClaimStatus::kAcquired) << ClaimStatusName(claim.status);
  return claim;
}

namespace {

TEST_P(StoreConformance, NewIdIsAcquiredWithFirstAttemptAndNonZeroToken) {
  ClaimResult claim = MustAcquire("m-1");
  EXPECT_EQ(claim.attempt, 1u);
  EXPECT_NE(claim.token, 0u);
  EXPECT_FALSE(claim.took_over);
  EXPECT_GT(claim.lease_until_ms, 0);
}

TEST_P(StoreConformance, ClaimWhileLeaseIsLiveIsInProgress) {
  const ClaimResult first = MustAcquire("m-1");
  const ClaimResult second = MustClaim("m-1");
  EXPECT_EQ(second.status, ClaimStatus::kInProgress);
  EXPECT_EQ(second.attempt, 1u);
  EXPECT_EQ(second.token, 0u) << "an in-progress answer must not leak the owner's token";
  EXPECT_GE(second.lease_until_ms, first.lease_until_ms - 5);
}

TEST_P(StoreConformance, CompletedIdIsDuplicateWithStoredResult) {
  const ClaimResult claim = MustAcquire("m-1");
  CompleteRequest done = CompleteOf("m-1", claim.token);
  done.result = "receipt-42";
  IDEM_ASSERT_OK_AND_ASSIGN(CompleteStatus status, store_->Complete(done));
  EXPECT_EQ(status, CompleteStatus::kCompleted);
  const ClaimResult again = MustClaim("m-1");
  EXPECT_EQ(again.status, ClaimStatus::kDuplicate);
  EXPECT_THAT(again.result, Optional(Eq("receipt-42")));
}

TEST_P(StoreConformance, CompletedWithoutResultIsDuplicateWithoutResult) {
  const ClaimResult claim = MustAcquire("m-1");
  IDEM_ASSERT_OK(store_->Complete(CompleteOf("m-1", claim.token)));
  const ClaimResult again = MustClaim("m-1");
  EXPECT_EQ(again.status, ClaimStatus::kDuplicate);
  EXPECT_EQ(again.result, std::nullopt);
}

TEST_P(StoreConformance, ReleaseMakesIdClaimableAtOnceAndKeepsAttempts) {
  const ClaimResult first = MustAcquire("m-1");
  IDEM_ASSERT_OK(store_->Release(kScope, "m-1", first.token));
  const ClaimResult second = MustAcquire("m-1");
  EXPECT_EQ(second.attempt, 2u);
  EXPECT_FALSE(second.took_over);
  EXPECT_NE(second.token, first.token);
}

TEST_P(StoreConformance, ExpiredLeaseIsTakenOverWithNextAttempt) {
  const ClaimResult first = MustAcquire("m-1");
  PassLease();
  const ClaimResult second = MustAcquire("m-1");
  EXPECT_TRUE(second.took_over);
  EXPECT_EQ(second.attempt, 2u);
  EXPECT_NE(second.token, first.token);
}

TEST_P(StoreConformance, LateCompleteAfterTakeoverIsAbortedAndChangesNothing) {
  const ClaimResult first = MustAcquire("m-1");
  PassLease();
  const ClaimResult second = MustAcquire("m-1");
  CompleteRequest late = CompleteOf("m-1", first.token);
  late.result = "from-the-dead";
  EXPECT_THAT(store_->Complete(late), StatusIs(absl::StatusCode::kAborted));
  // The new owner still holds the claim and completes normally.
  EXPECT_EQ(MustClaim("m-1").status, ClaimStatus::kInProgress);
  IDEM_ASSERT_OK(store_->Complete(CompleteOf("m-1", second.token)));
  const ClaimResult dup = MustClaim("m-1");
  EXPECT_EQ(dup.status, ClaimStatus::kDuplicate);
  EXPECT_EQ(dup.result, std::nullopt) << "the refused completion must not have stored its result";
}

TEST_P(StoreConformance, LateReleaseAndExtendAfterTakeoverAreAborted) {
  const ClaimResult first = MustAcquire("m-1");
  PassLease();
  const ClaimResult second = MustAcquire("m-1");
  EXPECT_THAT(store_->Release(kScope, "m-1", first.token), StatusIs(absl::StatusCode::kAborted));
  EXPECT_THAT(store_->Extend(kScope, "m-1", first.token, Lease()),
              StatusIs(absl::StatusCode::kAborted));
  EXPECT_EQ(MustClaim("m-1").status, ClaimStatus::kInProgress);
  IDEM_EXPECT_OK(store_->Complete(CompleteOf("m-1", second.token)));
}

TEST_P(StoreConformance, CompleteOrReleaseOfUnknownIdIsAborted) {
  EXPECT_THAT(store_->Complete(CompleteOf("never-claimed", 12345)),
              StatusIs(absl::StatusCode::kAborted));
  EXPECT_THAT(store_->Release(kScope, "never-claimed", 12345),
              StatusIs(absl::StatusCode::kAborted));
}

TEST_P(StoreConformance, FencedRefusalsSayTheSameWordsInEveryBackendAndAreCounted) {
  const ClaimResult claim = MustAcquire("m-1");
  const uint64_t stale_token = claim.token + 1;
  const uint64_t fenced_before = store_->Stats().fenced;
  const std::string backend(store_->BackendName());
  // absl::Status compares code and message.
  EXPECT_EQ(store_->Complete(CompleteOf("m-1", stale_token)).status(),
            internal::FencedError(backend, "complete"));
  EXPECT_EQ(store_->Release(kScope, "m-1", stale_token), internal::FencedError(backend, "release"));
  EXPECT_EQ(store_->Extend(kScope, "m-1", stale_token, Lease()).status(),
            internal::FencedError(backend, "extend"));
  EXPECT_EQ(store_->Stats().fenced, fenced_before + 3);
  EXPECT_EQ(MustClaim("m-1").status, ClaimStatus::kInProgress) << "a refusal changes nothing";
}

TEST_P(StoreConformance, NegativePurgeLimitIsInvalidArgumentAndPurgesNothing) {
  const ClaimResult claim = MustAcquire("m-1");
  IDEM_ASSERT_OK(store_->Complete(CompleteOf("m-1", claim.token)));
  EXPECT_THAT(store_->PurgeExpired(-1), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(MustClaim("m-1").status, ClaimStatus::kDuplicate);
}

TEST_P(StoreConformance, CompleteTwiceIsAbortedTheSecondTime) {
  const ClaimResult claim = MustAcquire("m-1");
  IDEM_ASSERT_OK(store_->Complete(CompleteOf("m-1", claim.token)));
  EXPECT_THAT(store_->Complete(CompleteOf("m-1", claim.token)),
              StatusIs(absl::StatusCode::kAborted));
  EXPECT_THAT(store_->Release(kScope, "m-1", claim.token), StatusIs(absl::StatusCode::kAborted));
  EXPECT_EQ(MustClaim("m-1").status, ClaimStatus::kDuplicate);
}

TEST_P(StoreConformance, ExtendKeepsTheClaimPastItsFirstLease) {
  const ClaimResult claim = MustAcquire("m-1");
  harness_->Advance(Lease() / 2);
  IDEM_ASSERT_OK_AND_ASSIGN(int64_t until, store_->Extend(kScope, "m-1", claim.token, Lease() * 4));
  EXPECT_GT(until, claim.lease_until_ms);
  harness_->Advance(Lease());  // past the first lease, inside the extended one
  EXPECT_EQ(MustClaim("m-1").status, ClaimStatus::kInProgress);
  IDEM_EXPECT_OK(store_->Complete(CompleteOf("m-1", claim.token)));
}

TEST_P(StoreConformance, OwnerMayCompleteAfterItsLeaseIfNobodyTookOver) {
  const ClaimResult claim = MustAcquire("m-1");
  PassLease();
  IDEM_ASSERT_OK(store_->Complete(CompleteOf("m-1", claim.token)));
  EXPECT_EQ(MustClaim("m-1").status, ClaimStatus::kDuplicate);
}

TEST_P(StoreConformance, TokensAreUniquePerClaim) {
  std::set<uint64_t> tokens;
  for (int i = 0; i < 50; ++i) {
    const std::string id = absl::StrCat("m-", i);
    const ClaimResult claim = MustAcquire(id);
    EXPECT_TRUE(tokens.insert(claim.token).second);
    IDEM_ASSERT_OK(store_->Release(kScope, id, claim.token));
    EXPECT_TRUE(tokens.insert(MustAcquire(id).token).second);
  }
}

TEST_P(StoreConformance, SameIdWithOtherPayloadIsConflict) {
  ClaimRequest request = ClaimOf("m-1", Lease());
  request.fingerprint = Fingerprint::Of("amount=10");
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult claim, store_->Claim(request));
  ASSERT_EQ(claim.status, ClaimStatus::kAcquired);
  // While in progress...
  ClaimRequest other = request;
  other.fingerprint = Fingerprint::Of("amount=99");
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult conflict, store_->Claim(other));
  EXPECT_EQ(conflict.status, ClaimStatus::kConflict);
  // ...and once completed.
  IDEM_ASSERT_OK(store_->Complete(CompleteOf("m-1", claim.token)));
  IDEM_ASSERT_OK_AND_ASSIGN(conflict, store_->Claim(other));
  EXPECT_EQ(conflict.status, ClaimStatus::kConflict);
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult dup, store_->Claim(request));
  EXPECT_EQ(dup.status, ClaimStatus::kDuplicate);
}

TEST_P(StoreConformance, MaxAttemptsDeadLettersTheNextClaim) {
  ClaimRequest request = ClaimOf("m-1", Lease());
  request.max_attempts = 2;
  for (uint32_t attempt = 1; attempt <= 2; ++attempt) {
    IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult claim, store_->Claim(request));
    ASSERT_EQ(claim.status, ClaimStatus::kAcquired);
    EXPECT_EQ(claim.attempt, attempt);
    IDEM_ASSERT_OK(store_->Release(kScope, "m-1", claim.token));
  }
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult dead, store_->Claim(request));
  EXPECT_EQ(dead.status, ClaimStatus::kDeadLettered);
  EXPECT_EQ(dead.attempt, 2u);
}

TEST_P(StoreConformance, ScopesAreIndependent) {
  MustAcquire("m-1");
  ClaimRequest other = ClaimOf("m-1", Lease());
  other.scope = "shipping/order-events";
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult claim, store_->Claim(other));
  EXPECT_EQ(claim.status, ClaimStatus::kAcquired);
}

TEST_P(StoreConformance, BinaryIdsAreDistinctAndRoundTrip) {
  const std::vector<std::string> ids = {std::string("a\0b", 3), std::string("a\0c", 3),
                                        std::string("a", 1),    std::string("\xff\xfe", 2),
                                        std::string("\xff", 1), std::string("a:b", 3),
                                        std::string("\0", 1),   std::string("%00", 3)};
  for (const std::string& id : ids) {
    const ClaimResult claim = MustAcquire(id);
    CompleteRequest done = CompleteOf(id, claim.token);
    done.result = id;
    IDEM_ASSERT_OK(store_->Complete(done));
  }
  for (const std::string& id : ids) {
    const ClaimResult dup = MustClaim(id);
    EXPECT_EQ(dup.status, ClaimStatus::kDuplicate);
    EXPECT_THAT(dup.result, Optional(Eq(id)));
  }
}

TEST_P(StoreConformance, ScopeAndIdBoundariesDoNotCollide) {
  // ("a", "b:c") and ("a:b", "c") must be two records whatever separator a backend uses.
  ClaimRequest left{.scope = "a", .id = "b:c", .lease = Lease()};
  ClaimRequest right{.scope = "a:b", .id = "c", .lease = Lease()};
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult l, store_->Claim(left));
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult r, store_->Claim(right));
  EXPECT_EQ(l.status, ClaimStatus::kAcquired);
  EXPECT_EQ(r.status, ClaimStatus::kAcquired);
}

TEST_P(StoreConformance, BadInputIsInvalidArgumentAndWritesNothing) {
  const std::size_t max = harness_->MaxIdBytes();
  const std::string oversized(max + 1, 'x');
  const std::string largest(max, 'x');
  EXPECT_THAT(store_->Claim(ClaimOf("", Lease())), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(store_->Claim(ClaimOf(oversized, Lease())),
              StatusIs(absl::StatusCode::kInvalidArgument));
  for (std::string_view scope :
       {std::string_view(""), std::string_view("a'; DROP TABLE idem_dedup;--"),
        std::string_view("bad scope"), std::string_view("a\0b", 3), std::string_view("é")}) {
    ClaimRequest request = ClaimOf("m-1", Lease());
    request.scope = scope;
    EXPECT_THAT(store_->Claim(request), StatusIs(absl::StatusCode::kInvalidArgument));
  }
  const std::string long_scope(kMaxScopeBytes + 1, 'a');
  ClaimRequest request = ClaimOf("m-1", Lease());
  request.scope = long_scope;
  EXPECT_THAT(store_->Claim(request), StatusIs(absl::StatusCode::kInvalidArgument));
  request = ClaimOf("m-1", std::chrono::milliseconds(0));
  EXPECT_THAT(store_->Claim(request), StatusIs(absl::StatusCode::kInvalidArgument));
  request = ClaimOf("m-1", Lease());
  request.version = VersionStamp{.key = "", .version = 1};
  EXPECT_THAT(store_->Claim(request), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(store_->Complete(CompleteOf("m-1", 0)), StatusIs(absl::StatusCode::kInvalidArgument));

  // Nothing was written: the largest valid id and m-1 are still new.
  EXPECT_EQ(MustClaim("m-1").attempt, 1u);
  const ClaimResult big = MustAcquire(largest);
  EXPECT_EQ(big.attempt, 1u);
}

TEST_P(StoreConformance, StaleVersionIsRefusedAtClaim) {
  ClaimRequest v7 = ClaimOf("evt-7", Lease());
  v7.version = VersionStamp{.key = "user-1", .version = 7};
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult claim, store_->Claim(v7));
  ASSERT_EQ(claim.status, ClaimStatus::kAcquired);
  CompleteRequest done = CompleteOf("evt-7", claim.token);
  done.version = v7.version;
  IDEM_ASSERT_OK_AND_ASSIGN(CompleteStatus status, store_->Complete(done));
  EXPECT_EQ(status, CompleteStatus::kCompleted);

  for (uint64_t version : {uint64_t{6}, uint64_t{7}}) {
    const std::string id = absl::StrCat("evt-", version, "-other");
    ClaimRequest old = ClaimOf(id, Lease());
    old.version = VersionStamp{.key = "user-1", .version = version};
    IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult stale, store_->Claim(old));
    EXPECT_EQ(stale.status, ClaimStatus::kStale) << "version " << version;
    EXPECT_THAT(stale.applied_version, Optional(Eq(uint64_t{7})));
  }
  IDEM_ASSERT_OK_AND_ASSIGN(auto applied, store_->AppliedVersion(kScope, "user-1"));
  EXPECT_THAT(applied, Optional(Eq(uint64_t{7})));
}

TEST_P(StoreConformance, VersionGateAtCompleteRefusesAVersionOvertakenMeanwhile) {
  // v5 claims first, v6 claims and completes while v5's handler runs: v5 must not apply.
  ClaimRequest v5 = ClaimOf("evt-5", Lease());
  v5.version = VersionStamp{.key = "order-9", .version = 5};
  ClaimRequest v6 = ClaimOf("evt-6", Lease());
  v6.version = VersionStamp{.key = "order-9", .version = 6};
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult c5, store_->Claim(v5));
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult c6, store_->Claim(v6));
  ASSERT_EQ(c5.status, ClaimStatus::kAcquired);
  ASSERT_EQ(c6.status, ClaimStatus::kAcquired);
  CompleteRequest d6 = CompleteOf("evt-6", c6.token);
  d6.version = v6.version;
  IDEM_ASSERT_OK_AND_ASSIGN(CompleteStatus s6, store_->Complete(d6));
  EXPECT_EQ(s6, CompleteStatus::kCompleted);
  CompleteRequest d5 = CompleteOf("evt-5", c5.token);
  d5.version = v5.version;
  IDEM_ASSERT_OK_AND_ASSIGN(CompleteStatus s5, store_->Complete(d5));
  EXPECT_EQ(s5, CompleteStatus::kStale);
  IDEM_ASSERT_OK_AND_ASSIGN(auto applied, store_->AppliedVersion(kScope, "order-9"));
  EXPECT_THAT(applied, Optional(Eq(uint64_t{6})));
  // The stale message is still done: a redelivery is a duplicate, not a rerun.
  EXPECT_EQ(MustClaim("evt-5").status, ClaimStatus::kDuplicate);
}

TEST_P(StoreConformance, VersionsAreComparedExactlyOverTheFullUint64Range) {
  // Each pair differs only past a double's 53-bit mantissa.
  const std::vector<std::pair<uint64_t, uint64_t>> pairs = {
      {(uint64_t{1} << 53), (uint64_t{1} << 53) + 1},
      {~uint64_t{0} - 1, ~uint64_t{0}},
      {(uint64_t{1} << 63) - 1, uint64_t{1} << 63}};
  int n = 0;
  for (const auto& [lower, higher] : pairs) {
    const std::string key = absl::StrCat("key-", n++);
    for (uint64_t version : {lower, higher}) {
      const std::string id = absl::StrCat(key, "@", version);
      ClaimRequest request = ClaimOf(id, Lease());
      request.version = VersionStamp{.key = key, .version = version};
      IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult claim, store_->Claim(request));
      ASSERT_EQ(claim.status, ClaimStatus::kAcquired) << version;
      CompleteRequest done = CompleteOf(id, claim.token);
      done.version = request.version;
      IDEM_ASSERT_OK_AND_ASSIGN(CompleteStatus status, store_->Complete(done));
      EXPECT_EQ(status, CompleteStatus::kCompleted) << version;
    }
    IDEM_ASSERT_OK_AND_ASSIGN(auto applied, store_->AppliedVersion(kScope, key));
    EXPECT_THAT(applied, Optional(Eq(higher)));
    const std::string replay_id = absl::StrCat(key, "-replay");
    ClaimRequest replay = ClaimOf(replay_id, Lease());
    replay.version = VersionStamp{.key = key, .version = lower};
    IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult stale, store_->Claim(replay));
    EXPECT_EQ(stale.status, ClaimStatus::kStale) << lower << " after " << higher;
  }
}

TEST_P(StoreConformance, VersionGateIsPerScope) {
  ClaimRequest a = ClaimOf("evt-a", Lease());
  a.version = VersionStamp{.key = "user-1", .version = 10};
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult ca, store_->Claim(a));
  CompleteRequest done = CompleteOf("evt-a", ca.token);
  done.version = a.version;
  IDEM_ASSERT_OK(store_->Complete(done));
  ClaimRequest b{.scope = "analytics/users",
                 .id = "evt-b",
                 .lease = Lease(),
                 .version = VersionStamp{.key = "user-1", .version = 3}};
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult cb, store_->Claim(b));
  EXPECT_EQ(cb.status, ClaimStatus::kAcquired);
  IDEM_ASSERT_OK_AND_ASSIGN(auto none, store_->AppliedVersion(kScope, "user-never"));
  EXPECT_EQ(none, std::nullopt);
}

TEST_P(StoreConformance, CompletedRecordIsForgottenAfterRetention) {
  const ClaimResult claim = MustAcquire("m-1");
  CompleteRequest done = CompleteOf("m-1", claim.token);
  done.retention = Lease();
  IDEM_ASSERT_OK(store_->Complete(done));
  EXPECT_EQ(MustClaim("m-1").status, ClaimStatus::kDuplicate);
  PassLease();
  const ClaimResult again = MustAcquire("m-1");
  EXPECT_EQ(again.attempt, 1u) << "a record past retention is a new id";
}

TEST_P(StoreConformance, PurgeDropsExpiredRecordsButKeepsLiveClaimsAndVersions) {
  ClaimRequest versioned = ClaimOf("done", Lease());
  versioned.version = VersionStamp{.key = "user-1", .version = 3};
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult claim, store_->Claim(versioned));
  CompleteRequest done = CompleteOf("done", claim.token);
  done.retention = Lease();
  done.version = versioned.version;
  IDEM_ASSERT_OK(store_->Complete(done));
  PassLease();
  const ClaimResult live = MustAcquire("live");
  IDEM_ASSERT_OK(store_->PurgeExpired(0));
  IDEM_ASSERT_OK_AND_ASSIGN(auto info, store_->Inspect(kScope, "done"));
  EXPECT_EQ(info, std::nullopt);
  IDEM_ASSERT_OK_AND_ASSIGN(auto live_info, store_->Inspect(kScope, "live"));
  ASSERT_TRUE(live_info.has_value());
  EXPECT_EQ(live_info->state, RecordState::kInProgress);
  EXPECT_EQ(live_info->token, live.token);
  IDEM_ASSERT_OK_AND_ASSIGN(auto applied, store_->AppliedVersion(kScope, "user-1"));
  EXPECT_THAT(applied, Optional(Eq(uint64_t{3})));
}

TEST_P(StoreConformance, InspectShowsEachState) {
  ClaimRequest request = ClaimOf("m-1", Lease());
  request.fingerprint = Fingerprint::Of("payload");
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult claim, store_->Claim(request));
  IDEM_ASSERT_OK_AND_ASSIGN(auto info, store_->Inspect(kScope, "m-1"));
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->state, RecordState::kInProgress);
  EXPECT_EQ(info->attempts, 1u);
  EXPECT_THAT(info->fingerprint, Optional(Eq(Fingerprint::Of("payload"))));
  IDEM_ASSERT_OK(store_->Release(kScope, "m-1", claim.token));
  IDEM_ASSERT_OK_AND_ASSIGN(info, store_->Inspect(kScope, "m-1"));
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->state, RecordState::kReleased);
  IDEM_ASSERT_OK_AND_ASSIGN(claim, store_->Claim(request));
  CompleteRequest done = CompleteOf("m-1", claim.token);
  done.result = "ok";
  IDEM_ASSERT_OK(store_->Complete(done));
  IDEM_ASSERT_OK_AND_ASSIGN(info, store_->Inspect(kScope, "m-1"));
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->state, RecordState::kCompleted);
  EXPECT_EQ(info->attempts, 2u);
  EXPECT_THAT(info->result, Optional(Eq("ok")));
  IDEM_ASSERT_OK_AND_ASSIGN(auto none, store_->Inspect(kScope, "m-2"));
  EXPECT_EQ(none, std::nullopt);
}

TEST_P(StoreConformance, BatchClaimAndCompleteGivePerMessageOutcomes) {
  const ClaimResult done_before = MustAcquire("b-dup");
  IDEM_ASSERT_OK(store_->Complete(CompleteOf("b-dup", done_before.token)));
  MustAcquire("b-busy");
  std::vector<ClaimRequest> requests = {ClaimOf("b-new-1", Lease()), ClaimOf("b-dup", Lease()),
                                        ClaimOf("", Lease()), ClaimOf("b-busy", Lease()),
                                        ClaimOf("b-new-2", Lease())};
  std::vector<absl::StatusOr<ClaimResult>> claims = store_->ClaimBatch(requests);
  ASSERT_EQ(claims.size(), requests.size());
  IDEM_ASSERT_OK(claims[0]);
  EXPECT_EQ(claims[0]->status, ClaimStatus::kAcquired);
  IDEM_ASSERT_OK(claims[1]);
  EXPECT_EQ(claims[1]->status, ClaimStatus::kDuplicate);
  EXPECT_THAT(claims[2], StatusIs(absl::StatusCode::kInvalidArgument));
  IDEM_ASSERT_OK(claims[3]);
  EXPECT_EQ(claims[3]->status, ClaimStatus::kInProgress);
  IDEM_ASSERT_OK(claims[4]);
  EXPECT_EQ(claims[4]->status, ClaimStatus::kAcquired);

  std::vector<CompleteRequest> completes = {CompleteOf("b-new-1", claims[0]->token),
                                            CompleteOf("b-new-2", claims[0]->token),  // wrong
                                            CompleteOf("b-new-2", claims[4]->token)};
  completes[0].result = "r1";
  std::vector<absl::StatusOr<CompleteStatus>> done = store_->CompleteBatch(completes);
  ASSERT_EQ(done.size(), completes.size());
  IDEM_EXPECT_OK(done[0]);
  EXPECT_THAT(done[1], StatusIs(absl::StatusCode::kAborted));
  IDEM_EXPECT_OK(done[2]);
  const ClaimResult dup = MustClaim("b-new-1");
  EXPECT_EQ(dup.status, ClaimStatus::kDuplicate);
  EXPECT_THAT(dup.result, Optional(Eq("r1")));
  EXPECT_EQ(MustClaim("b-new-2").status, ClaimStatus::kDuplicate);
}

TEST_P(StoreConformance, ConcurrentClaimsAcquireEachIdOnce) {
  constexpr int kThreads = 4;
  constexpr int kIds = 100;
  std::vector<std::unique_ptr<DedupStore>> handles;
  for (int t = 0; t < kThreads; ++t) {
    // Half the threads share this handle, half use their own (as other processes would).
    if (t % 2 == 0) {
      handles.push_back(nullptr);
    } else {
      IDEM_ASSERT_OK_AND_ASSIGN(auto handle, harness_->Open());
      handles.push_back(std::move(handle));
    }
  }
  std::vector<std::atomic<int>> acquired(kIds);
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    DedupStore* store = handles[t] ? handles[t].get() : store_.get();
    threads.emplace_back([&, store] {
      for (int i = 0; i < kIds; ++i) {
        const std::string id = absl::StrCat("c-", i);
        absl::StatusOr<ClaimResult> claim =
            store->Claim(ClaimOf(id, std::chrono::milliseconds(3'600'000)));
        if (!claim.ok()) {
          errors.fetch_add(1);
        } else if (claim->status == ClaimStatus::kAcquired) {
          acquired[i].fetch_add(1);
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(errors.load(), 0);
  for (int i = 0; i < kIds; ++i) EXPECT_EQ(acquired[i].load(), 1) << "id c-" << i;
}

TEST_P(StoreConformance, SecondHandleSeesTheSameRecords) {
  const ClaimResult claim = MustAcquire("m-1");
  IDEM_ASSERT_OK_AND_ASSIGN(auto other, harness_->Open());
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult seen, other->Claim(ClaimOf("m-1", Lease())));
  EXPECT_EQ(seen.status, ClaimStatus::kInProgress);
  IDEM_ASSERT_OK(other->Complete(CompleteOf("m-1", claim.token)));
  EXPECT_EQ(MustClaim("m-1").status, ClaimStatus::kDuplicate);
}

// ---- the lease-mode wrapper over this backend ------------------------------------------------

class HandlerError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

TEST_P(StoreConformance, ProcessorRunsTheHandlerOncePerId) {
  IDEM_ASSERT_OK_AND_ASSIGN(Processor processor, Processor::Create(*store_, std::string(kScope)));
  int runs = 0;
  for (int delivery = 0; delivery < 3; ++delivery) {
    IDEM_ASSERT_OK_AND_ASSIGN(
        ProcessResult result,
        processor.Process(Message{.id = "order-1", .payload = "charge 10"}, [&](HandlerContext& c) {
          ++runs;
          EXPECT_EQ(c.message_id(), "order-1");
          EXPECT_EQ(c.attempt(), 1u);
          EXPECT_NE(c.token(), 0u);
          c.set_result("charged");
        }));
    EXPECT_EQ(result.outcome, delivery == 0 ? Outcome::kProcessed : Outcome::kDuplicate);
    EXPECT_THAT(result.result, Optional(Eq("charged")));
  }
  EXPECT_EQ(runs, 1);
}

TEST_P(StoreConformance, ProcessorReleasesOnExceptionAndTheExceptionPropagatesUnchanged) {
  IDEM_ASSERT_OK_AND_ASSIGN(Processor processor, Processor::Create(*store_, std::string(kScope)));
  const Message message{.id = "order-1", .payload = "charge 10"};
  try {
    (void)processor.Process(message, [](HandlerContext&) { throw HandlerError("card declined"); });
    FAIL() << "the handler's exception must propagate";
  } catch (const HandlerError& e) {
    EXPECT_STREQ(e.what(), "card declined");
  }
  uint32_t attempt = 0;
  IDEM_ASSERT_OK_AND_ASSIGN(
      ProcessResult result,
      processor.Process(message, [&](HandlerContext& c) { attempt = c.attempt(); }));
  EXPECT_EQ(result.outcome, Outcome::kProcessed);
  EXPECT_EQ(attempt, 2u) << "released at once, attempt count kept";
}

TEST_P(StoreConformance, ProcessorReportsConflictStaleAndDeadLetter) {
  IDEM_ASSERT_OK_AND_ASSIGN(
      Processor processor,
      Processor::Create(*store_, std::string(kScope), ProcessorOptions{.max_attempts = 1}));
  auto noop = [](HandlerContext&) {};
  IDEM_ASSERT_OK(processor.Process(Message{.id = "m-1", .payload = "a"}, noop));
  IDEM_ASSERT_OK_AND_ASSIGN(ProcessResult conflict,
                            processor.Process(Message{.id = "m-1", .payload = "b"}, noop));
  EXPECT_EQ(conflict.outcome, Outcome::kConflict);

  IDEM_ASSERT_OK(processor.Process(
      Message{.id = "v-2", .payload = "x", .version = VersionStamp{.key = "k", .version = 2}},
      noop));
  bool ran = false;
  IDEM_ASSERT_OK_AND_ASSIGN(
      ProcessResult stale,
      processor.Process(
          Message{.id = "v-1", .payload = "x", .version = VersionStamp{.key = "k", .version = 1}},
          [&](HandlerContext&) { ran = true; }));
  EXPECT_EQ(stale.outcome, Outcome::kStale);
  EXPECT_FALSE(ran);

  EXPECT_THROW((void)processor.Process(Message{.id = "m-2", .payload = "x"},
                                       [](HandlerContext&) { throw HandlerError("boom"); }),
               HandlerError);
  IDEM_ASSERT_OK_AND_ASSIGN(ProcessResult dead,
                            processor.Process(Message{.id = "m-2", .payload = "x"}, noop));
  EXPECT_EQ(dead.outcome, Outcome::kDeadLettered);
}

TEST_P(StoreConformance, ProcessorLateCompleteAfterTakeoverIsAborted) {
  IDEM_ASSERT_OK_AND_ASSIGN(
      Processor processor,
      Processor::Create(*store_, std::string(kScope), ProcessorOptions{.lease = Lease()}));
  IDEM_ASSERT_OK_AND_ASSIGN(auto rival, harness_->Open());
  int rival_runs = 0;
  absl::StatusOr<ProcessResult> result =
      processor.Process(Message{.id = "slow", .payload = "p"}, [&](HandlerContext&) {
        PassLease();  // the handler stalls past its lease; another consumer takes over
        IDEM_ASSERT_OK_AND_ASSIGN(Processor other,
                                  Processor::Create(*rival, std::string(kScope),
                                                    ProcessorOptions{.lease = Lease() * 20}));
        IDEM_ASSERT_OK_AND_ASSIGN(
            ProcessResult r,
            other.Process(Message{.id = "slow", .payload = "p"}, [&](HandlerContext& c) {
              ++rival_runs;
              c.set_result("rival");
            }));
        EXPECT_EQ(r.outcome, Outcome::kProcessed);
      });
  EXPECT_THAT(result, StatusIs(absl::StatusCode::kAborted));
  EXPECT_EQ(rival_runs, 1);
  const ClaimResult dup = MustClaim("slow");
  EXPECT_EQ(dup.status, ClaimStatus::kDuplicate);
  EXPECT_THAT(dup.result, Optional(Eq("rival")));
}

TEST_P(StoreConformance, HandlerExtendsItsLeaseAndLearnsWhenItLostIt) {
  IDEM_ASSERT_OK_AND_ASSIGN(
      Processor processor,
      Processor::Create(*store_, std::string(kScope), ProcessorOptions{.lease = Lease()}));
  IDEM_ASSERT_OK_AND_ASSIGN(auto rival, harness_->Open());
  absl::Status extended = absl::UnknownError("the handler did not run");
  absl::Status lost = absl::UnknownError("the handler did not run");
  absl::StatusOr<ProcessResult> result =
      processor.Process(Message{.id = "long", .payload = "p"}, [&](HandlerContext& c) {
        harness_->Advance(Lease() / 2);
        extended = c.ExtendLease(Lease() * 4);
        // Past the first lease, within the extended one: the claim still holds.
        harness_->Advance(Lease());
        EXPECT_EQ(MustClaim("long").status, ClaimStatus::kInProgress) << "the extension holds";
        // Past the extended lease too: another consumer takes the message over.
        harness_->Advance(Lease() * 4);
        IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult takeover,
                                  rival->Claim(ClaimOf("long", Lease() * 20)));
        EXPECT_EQ(takeover.status, ClaimStatus::kAcquired);
        EXPECT_TRUE(takeover.took_over);
        // The handler learns it lost the claim the next time it extends.
        lost = c.ExtendLease(Lease() * 4);
      });
  IDEM_EXPECT_OK(extended);
  EXPECT_THAT(lost, StatusIs(absl::StatusCode::kAborted));
  EXPECT_THAT(result, StatusIs(absl::StatusCode::kAborted)) << "its completion is fenced too";
  EXPECT_EQ(MustClaim("long").status, ClaimStatus::kInProgress) << "the rival owns the claim";
}

TEST_P(StoreConformance, ProcessBatchGivesPerMessageOutcomesAndRunsEachHandlerOnce) {
  IDEM_ASSERT_OK_AND_ASSIGN(Processor processor, Processor::Create(*store_, std::string(kScope)));
  std::vector<std::string> ids;
  for (int i = 0; i < 10; ++i) ids.push_back(absl::StrCat("batch-", i));
  std::vector<Message> messages;
  for (const std::string& id : ids) messages.push_back(Message{.id = id, .payload = id});
  std::map<std::string, int> runs;
  auto handler = [&](HandlerContext& c) {
    ++runs[std::string(c.message_id())];
    c.set_result("r-" + std::string(c.message_id()));
  };
  auto first = processor.ProcessBatch(std::span<const Message>(messages.data(), 5), handler);
  ASSERT_EQ(first.size(), 5u);
  for (std::size_t i = 0; i < first.size(); ++i) {
    IDEM_ASSERT_OK(first[i]);
    EXPECT_EQ(first[i]->outcome, Outcome::kProcessed) << i;
    EXPECT_EQ(first[i]->attempt, 1u) << i;
    EXPECT_THAT(first[i]->result, Optional(Eq(absl::StrCat("r-", ids[i])))) << i;
  }
  auto second = processor.ProcessBatch(messages, handler);
  ASSERT_EQ(second.size(), messages.size());
  for (std::size_t i = 0; i < messages.size(); ++i) {
    IDEM_ASSERT_OK(second[i]);
    EXPECT_EQ(second[i]->outcome, i < 5 ? Outcome::kDuplicate : Outcome::kProcessed) << i;
    EXPECT_THAT(second[i]->result, Optional(Eq(absl::StrCat("r-", ids[i]))));
    EXPECT_EQ(runs[ids[i]], 1) << ids[i];
  }
}

TEST_P(StoreConformance, ProcessBatchWithTheSameIdTwiceRunsItOnce) {
  IDEM_ASSERT_OK_AND_ASSIGN(Processor processor, Processor::Create(*store_, std::string(kScope)));
  std::vector<Message> messages = {{.id = "twice", .payload = "p"},
                                   {.id = "other", .payload = "q"},
                                   {.id = "twice", .payload = "p"},
                                   {.id = "other", .payload = "changed"}};
  int runs = 0;
  auto out = processor.ProcessBatch(messages, [&](HandlerContext& c) {
    if (c.message_id() == "twice") ++runs;
    c.set_result(absl::StrCat("done-", std::string(c.message_id())));
  });
  ASSERT_EQ(out.size(), 4u);
  IDEM_ASSERT_OK(out[0]);
  EXPECT_EQ(out[0]->outcome, Outcome::kProcessed);
  // The copies met the batch's own claims; once those are completed they are asked again and
  // hear what a later delivery would: a duplicate with the stored result, or a conflict.
  IDEM_ASSERT_OK(out[2]);
  EXPECT_EQ(out[2]->outcome, Outcome::kDuplicate);
  EXPECT_THAT(out[2]->result, Optional(Eq("done-twice")));
  IDEM_ASSERT_OK(out[3]);
  EXPECT_EQ(out[3]->outcome, Outcome::kConflict);
  EXPECT_EQ(runs, 1);
  EXPECT_EQ(MustClaim("twice").status, ClaimStatus::kDuplicate);
}

// The first copy's handler runs while another consumer applies a newer version of its key: the
// record is completed with its version refused (stale). The copy is asked again all the same, and
// hears what a later delivery would (the completed record), never "in progress".
TEST_P(StoreConformance, ProcessBatchAsksARepeatAgainAfterAStaleCompletion) {
  IDEM_ASSERT_OK_AND_ASSIGN(Processor processor, Processor::Create(*store_, std::string(kScope)));
  const VersionStamp v5{.key = "user-7", .version = 5};
  std::vector<Message> messages = {{.id = "late", .payload = "p", .version = v5},
                                   {.id = "late", .payload = "p", .version = v5}};
  int runs = 0;
  auto out = processor.ProcessBatch(messages, [&](HandlerContext&) {
    ++runs;
    ClaimRequest newer = ClaimOf("rival", Lease());
    newer.version = VersionStamp{.key = "user-7", .version = 9};
    IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult rival, store_->Claim(newer));
    ASSERT_EQ(rival.status, ClaimStatus::kAcquired);
    IDEM_ASSERT_OK(store_->Complete(CompleteRequest{
        .scope = kScope, .id = "rival", .token = rival.token,
        .version = VersionStamp{.key = "user-7", .version = 9}}));
  });
  ASSERT_EQ(out.size(), 2u);
  IDEM_ASSERT_OK(out[0]);
  EXPECT_EQ(out[0]->outcome, Outcome::kStale) << "completed, its version refused";
  IDEM_ASSERT_OK(out[1]);
  EXPECT_NE(out[1]->outcome, Outcome::kInProgress) << "asked again after the batch";
  EXPECT_EQ(runs, 1);
  EXPECT_EQ(MustClaim("late").status, ClaimStatus::kDuplicate) << "the record is completed";
}

TEST_P(StoreConformance, ProcessBatchRenewsLateClaimsAndSkipsOnesLostMeanwhile) {
  ManualClock batch_clock;  // what the processor measures the batch's duration with
  IDEM_ASSERT_OK_AND_ASSIGN(
      Processor processor,
      Processor::Create(*store_, std::string(kScope),
                        ProcessorOptions{.lease = Lease(), .clock = &batch_clock}));
  IDEM_ASSERT_OK_AND_ASSIGN(auto rival, harness_->Open());
  std::vector<Message> messages = {
      {.id = "r-0", .payload = "0"}, {.id = "r-1", .payload = "1"}, {.id = "r-2", .payload = "2"}};
  std::set<std::string> ran;
  auto out = processor.ProcessBatch(messages, [&](HandlerContext& c) {
    ran.insert(std::string(c.message_id()));
    if (c.message_id() != "r-0") return;
    // The first handler stalls past the batch's leases; another consumer takes r-1 over.
    PassLease();
    batch_clock.Advance(2 * Lease().count());
    ClaimRequest takeover = ClaimOf("r-1", Lease() * 20);
    IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult claim, rival->Claim(takeover));
    EXPECT_EQ(claim.status, ClaimStatus::kAcquired);
  });
  ASSERT_EQ(out.size(), 3u);
  IDEM_ASSERT_OK(out[0]);
  EXPECT_EQ(out[0]->outcome, Outcome::kProcessed);
  EXPECT_THAT(out[1], StatusIs(absl::StatusCode::kAborted));
  IDEM_ASSERT_OK(out[2]);
  EXPECT_EQ(out[2]->outcome, Outcome::kProcessed);
  EXPECT_EQ(ran, (std::set<std::string>{"r-0", "r-2"})) << "a lost claim's handler must not run";
  EXPECT_EQ(MustClaim("r-1").status, ClaimStatus::kInProgress) << "the rival still owns r-1";
  EXPECT_EQ(MustClaim("r-2").status, ClaimStatus::kDuplicate);
}

TEST_P(StoreConformance, ProcessBatchCompletesHandledAndReleasesTheRestWhenAHandlerThrows) {
  IDEM_ASSERT_OK_AND_ASSIGN(Processor processor, Processor::Create(*store_, std::string(kScope)));
  std::vector<Message> messages = {
      {.id = "t-0", .payload = "0"}, {.id = "t-1", .payload = "1"}, {.id = "t-2", .payload = "2"}};
  EXPECT_THROW((void)processor.ProcessBatch(messages,
                                            [](HandlerContext& c) {
                                              if (c.message_id() == "t-1") throw HandlerError("x");
                                            }),
               HandlerError);
  EXPECT_EQ(MustClaim("t-0").status, ClaimStatus::kDuplicate);
  const ClaimResult t1 = MustClaim("t-1");
  EXPECT_EQ(t1.status, ClaimStatus::kAcquired);
  EXPECT_EQ(t1.attempt, 2u);
  const ClaimResult t2 = MustClaim("t-2");
  EXPECT_EQ(t2.status, ClaimStatus::kAcquired);
  EXPECT_EQ(t2.attempt, 2u);
}

// Every claim of a batch passes the gate against what was applied before the batch; an older
// version that follows a newer one of the same key in the batch must still not run its handler.
TEST_P(StoreConformance, ProcessBatchNeverRunsAVersionOlderThanOneItAlreadyRan) {
  IDEM_ASSERT_OK_AND_ASSIGN(Processor processor, Processor::Create(*store_, std::string(kScope)));
  std::vector<Message> messages = {
      {.id = "v-8", .payload = "8", .version = VersionStamp{"user-b", 8}},
      {.id = "v-7", .payload = "7", .version = VersionStamp{"user-b", 7}},
      {.id = "w-3", .payload = "3", .version = VersionStamp{"user-c", 3}},
      {.id = "v-8-again", .payload = "8b", .version = VersionStamp{"user-b", 8}},
      {.id = "v-9", .payload = "9", .version = VersionStamp{"user-b", 9}}};
  std::set<std::string> ran;
  auto out = processor.ProcessBatch(
      messages, [&](HandlerContext& c) { ran.insert(std::string(c.message_id())); });
  ASSERT_EQ(out.size(), messages.size());
  const Outcome expected[] = {Outcome::kProcessed, Outcome::kStale, Outcome::kProcessed,
                              Outcome::kStale, Outcome::kProcessed};
  for (std::size_t i = 0; i < out.size(); ++i) {
    IDEM_ASSERT_OK(out[i]) << i;
    EXPECT_EQ(out[i]->outcome, expected[i]) << messages[i].id;
  }
  EXPECT_EQ(ran, (std::set<std::string>{"v-8", "w-3", "v-9"}));
  IDEM_ASSERT_OK_AND_ASSIGN(auto applied, store_->AppliedVersion(kScope, "user-b"));
  EXPECT_THAT(applied, Optional(Eq(uint64_t{9})));
  // The superseded claim was released, not left to its lease: a redelivery is refused at once.
  IDEM_ASSERT_OK_AND_ASSIGN(
      const ClaimResult again,
      store_->Claim({.scope = kScope, .id = "v-7", .version = VersionStamp{"user-b", 7}}));
  EXPECT_EQ(again.status, ClaimStatus::kStale);
}

}  // namespace

// A binary that links the suite without a backend to run it on is not an error.
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(StoreConformance);

}  // namespace idem::testing

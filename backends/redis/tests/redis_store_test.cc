// Redis-specific behaviour against the fixture's redis-server: the key encoding, exact versions,
// server time and TTLs, threads sharing one store, pipelined batches.
#include "idem/redis_store.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "idem/open_store.h"
#include "internal/big_endian.h"
#include "redis_keys.h"
#include "redis_test_server.h"
#include "testing/status_matchers.h"

namespace idem {
namespace {

using ::idem::testing::FixturePort;
using ::idem::testing::IsOkAndHolds;
using ::idem::testing::RedisCommand;
using ::idem::testing::StatusIs;
using ::testing::Eq;
using ::testing::Optional;

constexpr std::string_view kScope = "billing/order-events";
constexpr auto kLongLease = std::chrono::milliseconds(60'000);

// A prefix no other test (or process) uses.
std::string UniquePrefix() {
  static std::atomic<int> counter{0};
  return absl::StrCat("store-test/",
                      ::testing::UnitTest::GetInstance()->current_test_info()->name(), "/",
                      getpid(), "/", counter.fetch_add(1));
}

ClaimRequest Claim(std::string_view scope, std::string_view id) {
  return ClaimRequest{.scope = scope, .id = id, .lease = kLongLease};
}

class RedisStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    prefix_ = UniquePrefix();
    auto store = Open(prefix_);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
  }

  absl::StatusOr<std::unique_ptr<DedupStore>> Open(std::string prefix, std::size_t pool = 4) {
    RedisStoreOptions options;
    options.port = FixturePort();
    options.key_prefix = std::move(prefix);
    options.pool_size = pool;
    options.io_timeout = std::chrono::seconds(10);
    options.warning = [this](std::string_view line) { warnings_.emplace_back(line); };
    return NewRedisStore(std::move(options));
  }

  // One command on the fixture's server, failing the test on an error.
  std::string Admin(const std::vector<std::string>& args) {
    absl::StatusOr<std::string> reply = RedisCommand(FixturePort(), args);
    EXPECT_TRUE(reply.ok()) << reply.status();
    return reply.ok() ? *reply : std::string();
  }

  ClaimResult MustClaim(const ClaimRequest& request) {
    absl::StatusOr<ClaimResult> claim = store_->Claim(request);
    EXPECT_TRUE(claim.ok()) << claim.status();
    return claim.ok() ? *claim : ClaimResult{.status = ClaimStatus::kConflict};
  }

  // Claims and completes (scope, id) with `version`; returns the completion's outcome.
  CompleteStatus ApplyVersion(std::string_view id, uint64_t version) {
    ClaimRequest request = Claim(kScope, id);
    request.version = VersionStamp{.key = "user-1", .version = version};
    const ClaimResult claim = MustClaim(request);
    EXPECT_EQ(claim.status, ClaimStatus::kAcquired) << ClaimStatusName(claim.status);
    CompleteRequest done{.scope = kScope, .id = id, .token = claim.token};
    done.version = request.version;
    absl::StatusOr<CompleteStatus> status = store_->Complete(done);
    EXPECT_TRUE(status.ok()) << status.status();
    return status.ok() ? *status : CompleteStatus::kStale;
  }

  std::string prefix_;
  std::vector<std::string> warnings_;
  std::unique_ptr<DedupStore> store_;
};

TEST_F(RedisStoreTest, BackendNameIsRedis) { EXPECT_EQ(store_->BackendName(), "redis"); }

TEST_F(RedisStoreTest, FixtureServerSettingsRaiseNoWarning) {
  // appendonly yes, appendfsync always, maxmemory-policy noeviction.
  EXPECT_TRUE(warnings_.empty()) << warnings_.front();
}

TEST_F(RedisStoreTest, OpenStoreOpensRedisUrisAndRefusesRediss) {
  IDEM_ASSERT_OK_AND_ASSIGN(auto opened,
                            OpenStore(absl::StrCat("redis://127.0.0.1:", FixturePort(),
                                                   "/0?prefix=", prefix_, "&timeout_ms=5000")));
  EXPECT_EQ(opened->BackendName(), "redis");
  const ClaimResult claim = MustClaim(Claim(kScope, "via-uri"));
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult seen, opened->Claim(Claim(kScope, "via-uri")));
  EXPECT_EQ(seen.status, ClaimStatus::kInProgress) << "same server, db and prefix";
  IDEM_ASSERT_OK(
      opened->Complete(CompleteRequest{.scope = kScope, .id = "via-uri", .token = claim.token}));
  const absl::StatusOr<std::unique_ptr<DedupStore>> tls =
      OpenStore("rediss://user:Tls-Secret-3@127.0.0.1:6380/0");
  EXPECT_THAT(tls, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(std::string(tls.status().message()),
              ::testing::AllOf(::testing::HasSubstr("no TLS"),
                               ::testing::Not(::testing::HasSubstr("Tls-Secret-3"))));
}

TEST(RedisKeys, EncodingIsLengthPrefixedAndTagged) {
  using internal::redis::RecordKey;
  using internal::redis::VersionKey;
  EXPECT_EQ(RecordKey("idem", "a", "b:c"), "4:idem:r:1:a:b:c");
  EXPECT_EQ(RecordKey("idem", "a:b", "c"), "4:idem:r:3:a:b:c");
  EXPECT_EQ(VersionKey("idem", "a", "b:c"), "4:idem:v:1:a:b:c");
  EXPECT_NE(RecordKey("x", "a", "b"), RecordKey("x:r:1:a", "b", "b"));
  EXPECT_EQ(RecordKey("p", "s", std::string_view("\0\xff", 2)),
            std::string("1:p:r:1:s:\0\xff", 12));
}

TEST(RedisKeys, VersionsAreTwentyDigitsAndOrderLikeNumbers) {
  using internal::redis::DecodeVersion;
  using internal::redis::EncodeVersion;
  const uint64_t max = std::numeric_limits<uint64_t>::max();
  EXPECT_EQ(EncodeVersion(0), "00000000000000000000");
  EXPECT_EQ(EncodeVersion(max), "18446744073709551615");
  EXPECT_LT(EncodeVersion(uint64_t{1} << 53), EncodeVersion((uint64_t{1} << 53) + 1));
  EXPECT_LT(EncodeVersion(9), EncodeVersion(10));
  EXPECT_LT(EncodeVersion(max - 1), EncodeVersion(max));
  for (uint64_t v : {uint64_t{0}, uint64_t{1} << 53, (uint64_t{1} << 53) + 1, max}) {
    EXPECT_THAT(DecodeVersion(EncodeVersion(v)), Optional(Eq(v)));
  }
  EXPECT_EQ(DecodeVersion("18446744073709551616"), std::nullopt);
  EXPECT_EQ(DecodeVersion("123"), std::nullopt);
  EXPECT_EQ(DecodeVersion("0000000000000000000x"), std::nullopt);
}

TEST_F(RedisStoreTest, ScopeAndIdBoundariesDoNotCollide) {
  // A naive "scope:id" key would make these two the same record.
  EXPECT_EQ(MustClaim(Claim("a", "b:c")).status, ClaimStatus::kAcquired);
  EXPECT_EQ(MustClaim(Claim("a:b", "c")).status, ClaimStatus::kAcquired);
  // Ids shaped like the encoding itself, and the record/version tags.
  EXPECT_EQ(MustClaim(Claim("a", "1:a:b")).status, ClaimStatus::kAcquired);
  EXPECT_EQ(MustClaim(Claim("a", ":r:1:a:b")).status, ClaimStatus::kAcquired);
  EXPECT_EQ(MustClaim(Claim("a", "b:c")).status, ClaimStatus::kInProgress);
}

TEST_F(RedisStoreTest, BinaryIdsAreDistinct) {
  const std::string ids[] = {std::string("x\0y", 3),
                             std::string("x\0z", 3),
                             std::string("x", 1),
                             std::string("\xff\xfe", 2),
                             std::string("\0", 1),
                             std::string("\0\0", 2),
                             "x:y",
                             absl::StrCat(prefix_, ":r:1:x")};
  for (const std::string& id : ids) {
    EXPECT_EQ(MustClaim(Claim(kScope, id)).status, ClaimStatus::kAcquired) << absl::CEscape(id);
  }
  for (const std::string& id : ids) {
    EXPECT_EQ(MustClaim(Claim(kScope, id)).status, ClaimStatus::kInProgress) << absl::CEscape(id);
  }
}

TEST_F(RedisStoreTest, PrefixesDoNotCollideWithScopes) {
  // ("x", "a:r:1:b") and ("x:r:1:a", "b") would meet under a "prefix:r:scope" layout.
  IDEM_ASSERT_OK_AND_ASSIGN(auto one, Open(prefix_ + "/x"));
  IDEM_ASSERT_OK_AND_ASSIGN(auto two, Open(prefix_ + "/x:r:1:a"));
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult first, one->Claim(Claim("a:r:1:b", "id")));
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult second, two->Claim(Claim("b", "id")));
  EXPECT_EQ(first.status, ClaimStatus::kAcquired);
  EXPECT_EQ(second.status, ClaimStatus::kAcquired);
}

TEST_F(RedisStoreTest, VersionsAboveTwoToThe53AreComparedExactly) {
  const uint64_t two53 = uint64_t{1} << 53;
  EXPECT_EQ(ApplyVersion("v1", two53), CompleteStatus::kCompleted);
  // As doubles 2^53 + 1 == 2^53: a Lua number comparison would call this stale.
  EXPECT_EQ(ApplyVersion("v2", two53 + 1), CompleteStatus::kCompleted);
  IDEM_ASSERT_OK_AND_ASSIGN(auto applied, store_->AppliedVersion(kScope, "user-1"));
  EXPECT_THAT(applied, Optional(Eq(two53 + 1)));

  ClaimRequest equal = Claim(kScope, "v3");
  equal.version = VersionStamp{.key = "user-1", .version = two53 + 1};
  const ClaimResult stale = MustClaim(equal);
  EXPECT_EQ(stale.status, ClaimStatus::kStale);
  EXPECT_THAT(stale.applied_version, Optional(Eq(two53 + 1)));
  equal.version->version = two53;
  EXPECT_EQ(MustClaim(equal).status, ClaimStatus::kStale);

  const uint64_t max = std::numeric_limits<uint64_t>::max();
  EXPECT_EQ(ApplyVersion("v4", max - 1), CompleteStatus::kCompleted);
  EXPECT_EQ(ApplyVersion("v5", max), CompleteStatus::kCompleted);
  IDEM_ASSERT_OK_AND_ASSIGN(applied, store_->AppliedVersion(kScope, "user-1"));
  EXPECT_THAT(applied, Optional(Eq(max)));
  equal.version->version = max;
  EXPECT_EQ(MustClaim(equal).status, ClaimStatus::kStale);
}

TEST_F(RedisStoreTest, VersionGateAtCompleteIsExactAboveTwoToThe53) {
  const uint64_t two53 = uint64_t{1} << 53;
  ClaimRequest newer = Claim(kScope, "newer");
  newer.version = VersionStamp{.key = "user-2", .version = two53 + 1};
  ClaimRequest older = Claim(kScope, "older");
  older.version = VersionStamp{.key = "user-2", .version = two53};
  const ClaimResult newer_claim = MustClaim(newer);
  const ClaimResult older_claim = MustClaim(older);
  ASSERT_EQ(newer_claim.status, ClaimStatus::kAcquired);
  ASSERT_EQ(older_claim.status, ClaimStatus::kAcquired);
  CompleteRequest done_newer{.scope = kScope, .id = "newer", .token = newer_claim.token};
  done_newer.version = newer.version;
  CompleteRequest done_older{.scope = kScope, .id = "older", .token = older_claim.token};
  done_older.version = older.version;
  EXPECT_THAT(store_->Complete(done_newer), IsOkAndHolds(Eq(CompleteStatus::kCompleted)));
  EXPECT_THAT(store_->Complete(done_older), IsOkAndHolds(Eq(CompleteStatus::kStale)));
  IDEM_ASSERT_OK_AND_ASSIGN(auto applied, store_->AppliedVersion(kScope, "user-2"));
  EXPECT_THAT(applied, Optional(Eq(two53 + 1)));
  // Completed either way: a redelivery of the stale one is a duplicate.
  EXPECT_EQ(MustClaim(Claim(kScope, "older")).status, ClaimStatus::kDuplicate);
}

// That lease ends come from the server's clock, not the client's, needs a server on another clock
// than the test's: RedisServerClock.LeaseEndsFollowTheServersClockNotTheClients. On loopback the
// two agree, so this test only checks the TTLs and that reported times are near TIME's.
TEST_F(RedisStoreTest, RecordsCarryTtlsAndReportedTimesAreNearTheServersTime) {
  const ClaimResult claim = MustClaim(Claim(kScope, "ttl"));
  ASSERT_EQ(claim.status, ClaimStatus::kAcquired);
  // TIME answers seconds and microseconds.
  const std::string time = Admin({"TIME"});
  const size_t newline = time.find('\n');
  int64_t seconds = 0;
  ASSERT_TRUE(absl::SimpleAtoi(time.substr(0, newline), &seconds));
  const int64_t server_now_ms = seconds * 1000;
  EXPECT_NEAR(static_cast<double>(claim.lease_until_ms - kLongLease.count()),
              static_cast<double>(server_now_ms), 5'000.0);

  const std::string record = internal::redis::RecordKey(prefix_, kScope, "ttl");
  int64_t pttl = 0;
  ASSERT_TRUE(absl::SimpleAtoi(Admin({"PTTL", record}), &pttl));
  // An abandoned claim is kept for its lease plus the retention (7 days by default).
  EXPECT_GT(pttl, kDefaultRetention.count());
  EXPECT_LE(pttl, kLongLease.count() + kDefaultRetention.count());

  CompleteRequest done{.scope = kScope, .id = "ttl", .token = claim.token};
  done.retention = std::chrono::milliseconds(123'000);
  done.version = VersionStamp{.key = "k", .version = 1};
  IDEM_ASSERT_OK(store_->Complete(done));
  ASSERT_TRUE(absl::SimpleAtoi(Admin({"PTTL", record}), &pttl));
  EXPECT_GT(pttl, 100'000);
  EXPECT_LE(pttl, 123'000);
  // Version-gate entries never expire.
  EXPECT_EQ(Admin({"PTTL", internal::redis::VersionKey(prefix_, kScope, "k")}), "-1");
  IDEM_ASSERT_OK_AND_ASSIGN(auto info, store_->Inspect(kScope, "ttl"));
  ASSERT_TRUE(info.has_value());
  EXPECT_NEAR(static_cast<double>(info->expires_at_ms),
              static_cast<double>(server_now_ms + 123'000), 5'000.0);
}

TEST_F(RedisStoreTest, ARecordIsOnePackedStringWithTheDocumentedLayout) {
  ClaimRequest request = Claim(kScope, "packed");
  request.fingerprint = Fingerprint::Of("payload");
  const ClaimResult claim = MustClaim(request);
  ASSERT_EQ(claim.status, ClaimStatus::kAcquired);
  const std::string key = internal::redis::RecordKey(prefix_, kScope, "packed");
  EXPECT_EQ(Admin({"TYPE", key}), "string");
  // format 1, IN_PROGRESS, token, attempt 1, keep (the default retention), flags: fingerprint.
  // The record layout stores integers big-endian (internal::BigEndian).
  const std::string header =
      internal::BigEndian(claim.token, 8) + internal::BigEndian(1, 4) +
      internal::BigEndian(static_cast<uint64_t>(kDefaultRetention.count()), 8);
  const std::string fingerprint = request.fingerprint->ToBytes();
  EXPECT_EQ(Admin({"GET", key}), std::string("\x01P", 2) + header + '\x01' + fingerprint);

  const std::string result("r\0\xFF", 3);
  CompleteRequest done{.scope = kScope, .id = "packed", .token = claim.token};
  done.result = result;  // no fingerprint: the claim's stays
  IDEM_ASSERT_OK(store_->Complete(done));
  EXPECT_EQ(Admin({"GET", key}), std::string("\x01"
                                             "C",
                                             2) +
                                     header + '\x03' + fingerprint + result);
  IDEM_ASSERT_OK_AND_ASSIGN(auto info, store_->Inspect(kScope, "packed"));
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->state, RecordState::kCompleted);
  EXPECT_EQ(info->token, claim.token);
  EXPECT_EQ(info->attempts, 1u);
  EXPECT_THAT(info->fingerprint, Optional(Eq(*request.fingerprint)));
  EXPECT_THAT(info->result, Optional(Eq(result)));
}

TEST_F(RedisStoreTest, KeysOfAnotherTypeAreFailedPreconditionAndLeftAlone) {
  // A record as an earlier idem wrote it: a hash.
  const std::string key = internal::redis::RecordKey(prefix_, kScope, "old");
  Admin({"HSET", key, "state", "C", "attempts", "1"});
  constexpr auto kFailedPrecondition = absl::StatusCode::kFailedPrecondition;
  EXPECT_THAT(store_->Claim(Claim(kScope, "old")), StatusIs(kFailedPrecondition));
  ClaimRequest versioned = Claim(kScope, "old");  // through the claim script
  versioned.version = VersionStamp{.key = "k", .version = 1};
  EXPECT_THAT(store_->Claim(versioned), StatusIs(kFailedPrecondition));
  EXPECT_THAT(store_->Complete(CompleteRequest{.scope = kScope, .id = "old", .token = 7}),
              StatusIs(kFailedPrecondition));
  EXPECT_THAT(store_->Release(kScope, "old", 7), StatusIs(kFailedPrecondition));
  EXPECT_THAT(store_->Extend(kScope, "old", 7, kLongLease), StatusIs(kFailedPrecondition));
  EXPECT_THAT(store_->Inspect(kScope, "old"), StatusIs(kFailedPrecondition));
  EXPECT_EQ(Admin({"TYPE", key}), "hash");
  EXPECT_EQ(Admin({"HGET", key, "state"}), "C");
}

TEST_F(RedisStoreTest, StringsThatAreNotRecordsAreDataLossAndLeftAlone) {
  const std::string key = internal::redis::RecordKey(prefix_, kScope, "foreign");
  Admin({"SET", key, "not an idem record"});
  constexpr auto kDataLoss = absl::StatusCode::kDataLoss;
  EXPECT_THAT(store_->Claim(Claim(kScope, "foreign")), StatusIs(kDataLoss));
  ClaimRequest versioned = Claim(kScope, "foreign");  // through the claim script
  versioned.version = VersionStamp{.key = "k", .version = 1};
  EXPECT_THAT(store_->Claim(versioned), StatusIs(kDataLoss));
  EXPECT_THAT(store_->Complete(CompleteRequest{.scope = kScope, .id = "foreign", .token = 7}),
              StatusIs(kDataLoss));
  EXPECT_THAT(store_->Release(kScope, "foreign", 7), StatusIs(kDataLoss));
  EXPECT_THAT(store_->Inspect(kScope, "foreign"), StatusIs(kDataLoss));
  EXPECT_EQ(Admin({"GET", key}), "not an idem record");
}

TEST_F(RedisStoreTest, TokenZeroAndBadInputAreInvalidArgumentWithoutIo) {
  EXPECT_THAT(store_->Complete(CompleteRequest{.scope = kScope, .id = "x", .token = 0}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(store_->Release(kScope, "x", 0), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(store_->Extend(kScope, "x", 0, kLongLease),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(store_->Claim(Claim("bad scope!", "x")),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(store_->Claim(Claim(kScope, std::string(kDefaultMaxIdBytes + 1, 'x'))),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(store_->AppliedVersion(kScope, ""), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(Admin({"EXISTS", internal::redis::RecordKey(prefix_, kScope, "x")}), "0");
}

TEST_F(RedisStoreTest, ThreadsSharingOneStoreAcquireEachIdOnce) {
  IDEM_ASSERT_OK_AND_ASSIGN(auto shared, Open(prefix_ + "/shared", /*pool=*/3));
  constexpr int kThreads = 8;
  constexpr int kIds = 200;
  std::vector<std::atomic<int>> acquired(kIds);
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int k = 0; k < kIds; ++k) {
        const int i = (k + t * 25) % kIds;  // threads start at different ids
        const std::string id = absl::StrCat("id-", i);
        absl::StatusOr<ClaimResult> claim = shared->Claim(Claim(kScope, id));
        if (!claim.ok()) {
          errors.fetch_add(1);
          continue;
        }
        if (claim->status != ClaimStatus::kAcquired) continue;
        acquired[i].fetch_add(1);
        if (i % 2 == 0) {
          if (!shared->Complete(CompleteRequest{.scope = kScope, .id = id, .token = claim->token})
                   .ok()) {
            errors.fetch_add(1);
          }
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(errors.load(), 0);
  for (int i = 0; i < kIds; ++i) EXPECT_EQ(acquired[i].load(), 1) << "id-" << i;
  const StoreStats stats = shared->Stats();
  EXPECT_EQ(stats.claims_acquired, static_cast<uint64_t>(kIds));
  EXPECT_EQ(stats.completed, static_cast<uint64_t>(kIds / 2));
  EXPECT_EQ(stats.duplicates + stats.in_progress, static_cast<uint64_t>((kThreads - 1) * kIds));
}

TEST_F(RedisStoreTest, PipelinedBatchesGivePerMessageOutcomes) {
  const ClaimResult done_before = MustClaim(Claim(kScope, "dup"));
  CompleteRequest first{.scope = kScope, .id = "dup", .token = done_before.token};
  const std::string stored("stored\0result", 13);
  first.result = stored;
  IDEM_ASSERT_OK(store_->Complete(first));
  ASSERT_EQ(MustClaim(Claim(kScope, "busy")).status, ClaimStatus::kAcquired);
  ClaimRequest with_fingerprint = Claim(kScope, "fp");
  with_fingerprint.fingerprint = Fingerprint::Of("payload");
  const ClaimResult fp_claim = MustClaim(with_fingerprint);
  IDEM_ASSERT_OK(
      store_->Complete(CompleteRequest{.scope = kScope, .id = "fp", .token = fp_claim.token}));
  ClaimRequest conflict = Claim(kScope, "fp");
  conflict.fingerprint = Fingerprint::Of("another payload");

  std::vector<ClaimRequest> requests;
  std::vector<std::string> ids;  // the requests hold views of these
  for (int i = 0; i < 20; ++i) ids.push_back(absl::StrCat("new-", i));
  for (int i = 0; i < 20; ++i) requests.push_back(Claim(kScope, ids[i]));
  requests.push_back(Claim(kScope, "dup"));
  requests.push_back(Claim(kScope, ""));
  requests.push_back(Claim(kScope, "busy"));
  requests.push_back(conflict);
  std::vector<absl::StatusOr<ClaimResult>> claims = store_->ClaimBatch(requests);
  ASSERT_EQ(claims.size(), requests.size());
  for (int i = 0; i < 20; ++i) {
    IDEM_ASSERT_OK(claims[i]);
    EXPECT_EQ(claims[i]->status, ClaimStatus::kAcquired);
  }
  IDEM_ASSERT_OK(claims[20]);
  EXPECT_EQ(claims[20]->status, ClaimStatus::kDuplicate);
  EXPECT_THAT(claims[20]->result, Optional(Eq(std::string("stored\0result", 13))));
  EXPECT_THAT(claims[21], StatusIs(absl::StatusCode::kInvalidArgument));
  IDEM_ASSERT_OK(claims[22]);
  EXPECT_EQ(claims[22]->status, ClaimStatus::kInProgress);
  IDEM_ASSERT_OK(claims[23]);
  EXPECT_EQ(claims[23]->status, ClaimStatus::kConflict);

  std::vector<CompleteRequest> completes;
  for (int i = 0; i < 20; ++i) {
    completes.push_back(CompleteRequest{.scope = kScope,
                                        .id = requests[i].id,
                                        // every other one with another claim's token: fenced
                                        .token = i % 2 == 0 ? claims[i]->token : claims[0]->token});
  }
  std::vector<absl::StatusOr<CompleteStatus>> done = store_->CompleteBatch(completes);
  ASSERT_EQ(done.size(), completes.size());
  for (int i = 0; i < 20; ++i) {
    if (i % 2 == 0) {
      EXPECT_THAT(done[i], IsOkAndHolds(Eq(CompleteStatus::kCompleted))) << i;
    } else {
      EXPECT_THAT(done[i], StatusIs(absl::StatusCode::kAborted)) << i;
    }
  }
}

}  // namespace
}  // namespace idem

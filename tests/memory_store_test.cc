#include "idem/memory_store.h"

#include <atomic>
#include <string>

#include "absl/strings/str_cat.h"
#include "conformance/store_conformance.h"
#include "gtest/gtest.h"
#include "idem/forwarding_store.h"
#include "testing/status_matchers.h"

namespace idem {
namespace {

using ::idem::testing::HarnessParam;
using ::idem::testing::StatusIs;
using ::idem::testing::StoreConformance;

// Every Open() returns the same store: the in-memory store lives in one process, so a "second
// handle" is a second pointer to it.
class MemoryHarness final : public testing::StoreHarness {
 public:
  absl::StatusOr<std::unique_ptr<DedupStore>> Open() override {
    if (store_ == nullptr) {
      MemoryStoreOptions options;
      options.clock = &clock_;
      absl::StatusOr<std::unique_ptr<DedupStore>> store = NewMemoryStore(std::move(options));
      if (!store.ok()) return store.status();
      store_ = std::move(store).value();
    }
    return std::unique_ptr<DedupStore>(new ForwardingStore(*store_));
  }
  void Advance(std::chrono::milliseconds by) override { clock_.Advance(by.count()); }

 private:
  ManualClock clock_;
  std::unique_ptr<DedupStore> store_;
};

INSTANTIATE_TEST_SUITE_P(Memory, StoreConformance,
                         ::testing::Values(HarnessParam{
                             "memory", [] { return std::make_unique<MemoryHarness>(); }}),
                         testing::HarnessName);

ClaimRequest Claim(std::string_view id) {
  return ClaimRequest{.scope = "s", .id = id, .lease = std::chrono::seconds(10)};
}

TEST(MemoryStore, FullStoreFailsClosedAndCountsIt) {
  auto store = NewMemoryStore({.capacity = 3, .shards = 2});
  IDEM_ASSERT_OK(store);
  std::vector<std::string> ids = {"a", "b", "c", "d"};
  for (int i = 0; i < 3; ++i) IDEM_ASSERT_OK((*store)->Claim(Claim(ids[i])));
  EXPECT_THAT((*store)->Claim(Claim("d")), StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_EQ((*store)->Stats().capacity_rejections, 1u);
  // An id already held is still answered.
  auto again = (*store)->Claim(Claim("a"));
  IDEM_ASSERT_OK(again);
  EXPECT_EQ(again->status, ClaimStatus::kInProgress);
}

TEST(MemoryStore, NeverHoldsMoreThanCapacityUnderConcurrentClaims) {
  constexpr std::size_t kCapacity = 500;
  auto store = NewMemoryStore({.capacity = kCapacity});
  IDEM_ASSERT_OK(store);
  std::atomic<int> acquired{0}, exhausted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 400; ++i) {
        auto claim = (*store)->Claim(Claim(absl::StrCat(t, "-", i)));
        if (claim.ok()) {
          acquired.fetch_add(1);
        } else if (claim.status().code() == absl::StatusCode::kResourceExhausted) {
          exhausted.fetch_add(1);
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(acquired.load(), static_cast<int>(kCapacity));
  EXPECT_EQ(exhausted.load(), 1600 - static_cast<int>(kCapacity));
}

TEST(MemoryStore, EvictOldestDropsCompletedRecordsNeverLiveClaims) {
  ManualClock clock;
  auto store = NewMemoryStore({.capacity = 2, .evict_oldest = true, .shards = 1, .clock = &clock});
  IDEM_ASSERT_OK(store);
  auto a = (*store)->Claim(Claim("a"));
  auto b = (*store)->Claim(Claim("b"));
  IDEM_ASSERT_OK(a);
  IDEM_ASSERT_OK(b);
  // Both live: nothing may be evicted.
  EXPECT_THAT((*store)->Claim(Claim("c")), StatusIs(absl::StatusCode::kResourceExhausted));
  IDEM_ASSERT_OK((*store)->Complete({.scope = "s", .id = "b", .token = b->token}));
  IDEM_ASSERT_OK((*store)->Claim(Claim("c")));
  EXPECT_EQ((*store)->Stats().evictions, 1u);
  auto a_again = (*store)->Claim(Claim("a"));
  IDEM_ASSERT_OK(a_again);
  EXPECT_EQ(a_again->status, ClaimStatus::kInProgress) << "the live claim survived";
  auto b_info = (*store)->Inspect("s", "b");
  IDEM_ASSERT_OK(b_info);
  EXPECT_EQ(*b_info, std::nullopt) << "the completed record was evicted";
}

TEST(MemoryStore, EvictOldestKeepsReleasedAndAbandonedClaimsWithTheirAttemptCounts) {
  ManualClock clock;
  auto store = NewMemoryStore({.capacity = 2, .evict_oldest = true, .shards = 1, .clock = &clock});
  IDEM_ASSERT_OK(store);
  ClaimRequest poison = Claim("poison");
  poison.max_attempts = 1;
  auto released = (*store)->Claim(poison);
  IDEM_ASSERT_OK(released);
  ASSERT_EQ(released->status, ClaimStatus::kAcquired);
  IDEM_ASSERT_OK((*store)->Release("s", "poison", released->token));
  auto abandoned = (*store)->Claim(Claim("abandoned"));
  IDEM_ASSERT_OK(abandoned);
  clock.Advance(20'000);  // the abandoned claim's lease ends

  // Neither record may make room: both hold an attempt count.
  EXPECT_THAT((*store)->Claim(Claim("new")), StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_EQ((*store)->Stats().evictions, 0u);
  auto again = (*store)->Claim(poison);
  IDEM_ASSERT_OK(again);
  EXPECT_EQ(again->status, ClaimStatus::kDeadLettered)
      << "evicting the released record would have restarted it at attempt 1";
  auto takeover = (*store)->Claim(Claim("abandoned"));
  IDEM_ASSERT_OK(takeover);
  EXPECT_EQ(takeover->status, ClaimStatus::kAcquired);
  EXPECT_EQ(takeover->attempt, 2u);
}

TEST(MemoryStore, PurgeFreesCapacity) {
  ManualClock clock;
  auto store =
      NewMemoryStore({.capacity = 1, .retention = std::chrono::seconds(5), .clock = &clock});
  IDEM_ASSERT_OK(store);
  auto a = (*store)->Claim(Claim("a"));
  IDEM_ASSERT_OK(a);
  IDEM_ASSERT_OK((*store)->Complete({.scope = "s", .id = "a", .token = a->token}));
  EXPECT_THAT((*store)->Claim(Claim("b")), StatusIs(absl::StatusCode::kResourceExhausted));
  clock.Advance(6'000);
  auto purged = (*store)->PurgeExpired(0);
  IDEM_ASSERT_OK(purged);
  EXPECT_EQ(*purged, 1);
  IDEM_EXPECT_OK((*store)->Claim(Claim("b")));
}

TEST(MemoryStore, VersionKeysAreBoundedToo) {
  auto store = NewMemoryStore({.max_version_keys = 1});
  IDEM_ASSERT_OK(store);
  for (const char* key : {"k1", "k2"}) {
    ClaimRequest request = Claim(key);
    request.version = VersionStamp{.key = key, .version = 1};
    auto claim = (*store)->Claim(request);
    IDEM_ASSERT_OK(claim);
    auto done = (*store)->Complete(
        {.scope = "s", .id = key, .token = claim->token, .version = request.version});
    if (std::string_view(key) == "k1") {
      IDEM_EXPECT_OK(done);
    } else {
      EXPECT_THAT(done, StatusIs(absl::StatusCode::kResourceExhausted));
      auto info = (*store)->Inspect("s", key);
      IDEM_ASSERT_OK(info);
      EXPECT_EQ((*info)->state, RecordState::kInProgress) << "a refused completion changes nothing";
    }
  }
}

TEST(MemoryStore, RejectsBadOptions) {
  EXPECT_THAT(NewMemoryStore({.capacity = 0}), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(NewMemoryStore({.retention = std::chrono::milliseconds(0)}),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(MemoryStore, DeterministicTokensFromAnInjectedSource) {
  uint64_t next = 100;
  auto store = NewMemoryStore({.token_source = [&] { return next++; }});
  IDEM_ASSERT_OK(store);
  auto claim = (*store)->Claim(Claim("a"));
  IDEM_ASSERT_OK(claim);
  EXPECT_EQ(claim->token, 100u);
}

}  // namespace
}  // namespace idem

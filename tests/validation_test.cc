#include <string>

#include "gtest/gtest.h"
#include "idem/open_store.h"
#include "idem/processor.h"
#include "idem/store.h"
#include "idem/types.h"
#include "internal/big_endian.h"
#include "testing/status_matchers.h"

namespace idem {
namespace {

using ::idem::testing::StatusIs;

// A default argument on a virtual function is bound by the caller's static type; PurgeExpired
// takes its limit explicitly.
template <typename Store>
concept PurgesWithoutALimit = requires(Store& store) {
  store.PurgeExpired();
};
template <typename Store>
concept PurgesWithALimit = requires(Store& store) {
  store.PurgeExpired(0);
};
static_assert(!PurgesWithoutALimit<DedupStore>);
static_assert(PurgesWithALimit<DedupStore>);

TEST(BigEndian, RoundTripsAndOrdersAsUnsignedBytes) {
  EXPECT_EQ(internal::BigEndian(0x0102030405060708, 8), "\x01\x02\x03\x04\x05\x06\x07\x08");
  EXPECT_EQ(internal::BigEndian(0x0102, 2), "\x01\x02");
  EXPECT_EQ(internal::BigEndian(1, 4), std::string("\0\0\0\x01", 4));
  for (uint64_t v : {uint64_t{0}, uint64_t{1}, uint64_t{255}, uint64_t{256}, uint64_t{1} << 53,
                     (uint64_t{1} << 63) - 1, uint64_t{1} << 63, ~uint64_t{0}}) {
    EXPECT_EQ(internal::LoadBigEndian(internal::BigEndian(v, 8)), v) << v;
  }
  // memcmp order is unsigned order: 2^63 sorts above 2^63 - 1 (a signed encoding would not).
  EXPECT_LT(internal::BigEndian((uint64_t{1} << 63) - 1, 8),
            internal::BigEndian(uint64_t{1} << 63, 8));
  const Fingerprint f{.high = 0x0011223344556677, .low = 0x8899aabbccddeeff};
  EXPECT_EQ(f.ToBytes(), internal::BigEndian(f.high, 8) + internal::BigEndian(f.low, 8));
  EXPECT_EQ(Fingerprint::FromBytes(f.ToBytes()), f);
}

TEST(Validation, ScopesAreOneTo128BytesOfASafeAlphabet) {
  IDEM_EXPECT_OK(ValidateScope("billing/order-events"));
  IDEM_EXPECT_OK(ValidateScope("a.b_c:d/e-F9"));
  IDEM_EXPECT_OK(ValidateScope(std::string(128, 'a')));
  for (std::string bad : {std::string(), std::string(129, 'a'), std::string("a b"),
                          std::string("a'; DROP TABLE idem_dedup;--"), std::string("a\0b", 3),
                          std::string("caf\xc3\xa9"), std::string("a\nb"), std::string("a*")}) {
    EXPECT_THAT(ValidateScope(bad), StatusIs(absl::StatusCode::kInvalidArgument)) << bad;
  }
}

TEST(Validation, IdsAreBinarySafeAndNeverTruncated) {
  IDEM_EXPECT_OK(ValidateId(std::string("\0\xff", 2)));
  IDEM_EXPECT_OK(ValidateId(std::string(kDefaultMaxIdBytes, 'x')));
  const absl::Status too_long = ValidateId(std::string(kDefaultMaxIdBytes + 1, 'x'));
  EXPECT_THAT(too_long, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(too_long.message().find("1025 bytes"), std::string_view::npos) << too_long;
  EXPECT_THAT(ValidateId(""), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ValidateId("abcd", 3), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(Fingerprint, IsStableXxh3Of128Bits) {
  // Fixed across processes and builds: these values are stored and compared later.
  EXPECT_EQ(Fingerprint::Of("").ToHex(), "99aa06d3014798d86001c324468d497f");
  EXPECT_EQ(Fingerprint::Of("hello").ToHex(), Fingerprint::Of(std::string("hello")).ToHex());
  EXPECT_NE(Fingerprint::Of("hello"), Fingerprint::Of("hellp"));
  const Fingerprint f = Fingerprint::Of("payload");
  EXPECT_EQ(Fingerprint::FromBytes(f.ToBytes()), f);
  EXPECT_EQ(f.ToBytes().size(), 16u);
}

TEST(Processor, RefusesBadScopeAndLease) {
  auto store = OpenStore("memory:");
  IDEM_ASSERT_OK(store);
  EXPECT_THAT(Processor::Create(**store, "bad scope"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Processor::Create(**store, "ok", {.lease = std::chrono::milliseconds(0)}),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(Processor, HandlerNeverRunsWhenTheClaimCannotBeRecorded) {
  auto store = OpenStore("memory:?capacity=1");
  IDEM_ASSERT_OK(store);
  auto processor = Processor::Create(**store, "s");
  IDEM_ASSERT_OK(processor);
  int runs = 0;
  auto count = [&](HandlerContext&) { ++runs; };
  IDEM_ASSERT_OK(processor->Process(Message{.id = "a", .payload = "x"}, count));
  EXPECT_THAT(processor->Process(Message{.id = "b", .payload = "x"}, count),
              StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_THAT(processor->Process(Message{.id = "", .payload = "x"}, count),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(runs, 1);
}

TEST(OpenStore, OpensMemoryStores) {
  auto store = OpenStore("memory:");
  IDEM_ASSERT_OK(store);
  EXPECT_EQ((*store)->BackendName(), "memory");
  IDEM_EXPECT_OK(OpenStore("memory:?capacity=10&evict=1&retention_ms=1000"));
  IDEM_EXPECT_OK(OpenStore("MEMORY:"));
}

}  // namespace
}  // namespace idem

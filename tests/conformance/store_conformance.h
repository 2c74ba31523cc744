// The conformance suite: the semantics of docs/design.md, checked by counting, for every backend.
//
// A backend's test binary instantiates it with a harness that opens fresh, empty stores:
//
//   INSTANTIATE_TEST_SUITE_P(Sqlite, StoreConformance,
//                            ::testing::Values(idem::testing::HarnessParam{"sqlite", MakeHarness}),
//                            idem::testing::HarnessName);
#ifndef IDEM_TESTS_CONFORMANCE_STORE_CONFORMANCE_H_
#define IDEM_TESTS_CONFORMANCE_STORE_CONFORMANCE_H_

#include <chrono>
#include <functional>
#include <memory>
#include <ostream>
#include <string>

#include "absl/status/statusor.h"
#include "gtest/gtest.h"
#include "idem/store.h"

namespace idem::testing {

// Opens stores of one backend for one test.
class StoreHarness {
 public:
  virtual ~StoreHarness() = default;
  // A handle on this test's store: empty on the first call; further calls return another handle
  // on the same data (another consumer, as a second process would open it).
  virtual absl::StatusOr<std::unique_ptr<DedupStore>> Open() = 0;
  // Moves the store's clock forward: a ManualClock where the backend takes one, a real sleep
  // where the backend uses server time.
  virtual void Advance(std::chrono::milliseconds by) = 0;
  // The shortest lease the backend measures reliably with Advance (a manual clock: 1 s; a server
  // clock: a few tens of ms, so that tests stay fast).
  virtual std::chrono::milliseconds ShortLease() const { return std::chrono::seconds(1); }
  // Largest id the store accepts (its max_id_bytes).
  virtual std::size_t MaxIdBytes() const { return kDefaultMaxIdBytes; }
};

struct HarnessParam {
  std::string name;
  std::function<std::unique_ptr<StoreHarness>()> make;
};

// gtest prints a parameter in test names and failures; the backend's name says it all.
inline void PrintTo(const HarnessParam& param, std::ostream* os) { *os << param.name; }

inline std::string HarnessName(const ::testing::TestParamInfo<HarnessParam>& info) {
  return info.param.name;
}

inline constexpr std::string_view kScope = "billing/order-events";

inline ClaimRequest ClaimOf(std::string_view id, std::chrono::milliseconds lease) {
  return ClaimRequest{.scope = kScope, .id = id, .lease = lease};
}

class StoreConformance : public ::testing::TestWithParam<HarnessParam> {
 protected:
  void SetUp() override;

  std::chrono::milliseconds Lease() const { return harness_->ShortLease(); }
  // Past the end of a lease of Lease(), with a margin for server clocks.
  void PassLease() { harness_->Advance(Lease() + Lease() / 2); }
  // Claims `id` with Lease(), failing the test on a non-OK status.
  ClaimResult MustClaim(std::string_view id);
  // As MustClaim, and expects kAcquired.
  ClaimResult MustAcquire(std::string_view id);

  std::unique_ptr<StoreHarness> harness_;
  std::unique_ptr<DedupStore> store_;
};

}  // namespace idem::testing

#endif  // IDEM_TESTS_CONFORMANCE_STORE_CONFORMANCE_H_

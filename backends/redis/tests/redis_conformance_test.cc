// The conformance suite against the fixture's redis-server. Redis keeps time itself (TIME, TTLs),
// so Advance sleeps for real and ShortLease is short. Each harness writes under its own key prefix,
// so tests never see each other's records even when ctest runs them in parallel.
//
// Twice: as opened (a new id is claimed by a plain SET NX GET), and with every claim through the
// claim script, as against a Redis before 7.0.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "conformance/store_conformance.h"
#include "idem/redis_store.h"
#include "redis_store_testing.h"
#include "redis_test_server.h"

namespace idem::testing {
namespace {

class RedisHarness final : public StoreHarness {
 public:
  explicit RedisHarness(bool script_claims) : script_claims_(script_claims) {
    static std::atomic<int> counter{0};
    const ::testing::TestInfo* test = ::testing::UnitTest::GetInstance()->current_test_info();
    prefix_ = absl::StrCat("conformance/", test != nullptr ? test->name() : "unknown", "/",
                           getpid(), "/", counter.fetch_add(1));
  }

  absl::StatusOr<std::unique_ptr<DedupStore>> Open() override {
    RedisStoreOptions options;
    options.port = FixturePort();
    options.key_prefix = prefix_;
    options.io_timeout = std::chrono::seconds(10);
    options.warning = [](std::string_view line) {
      ADD_FAILURE() << "unexpected warning for the fixture's server: " << line;
    };
    absl::StatusOr<std::unique_ptr<DedupStore>> store = NewRedisStore(std::move(options));
    if (store.ok() && script_claims_) internal::redis::UseScriptClaimsForTesting(**store);
    return store;
  }

  void Advance(std::chrono::milliseconds by) override { std::this_thread::sleep_for(by); }

  // Long enough for a few round trips (even under sanitizers), short enough for a fast suite.
  std::chrono::milliseconds ShortLease() const override { return std::chrono::milliseconds(200); }

 private:
  const bool script_claims_;
  std::string prefix_;
};

INSTANTIATE_TEST_SUITE_P(
    Redis, StoreConformance,
    ::testing::Values(HarnessParam{"redis", [] { return std::make_unique<RedisHarness>(false); }},
                      HarnessParam{"redis_script_claims",
                                   [] { return std::make_unique<RedisHarness>(true); }}),
    HarnessName);

}  // namespace
}  // namespace idem::testing

// The conformance suite against the Redis Cluster fixture (3 masters, 3 replicas), in cluster mode:
// every key routed by its hash slot, versioned messages through their route pointers. Twice, as
// for a single server: new ids claimed by a plain SET NX GET, and every claim through the script.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "conformance/store_conformance.h"
#include "idem/redis_store.h"
#include "redis_cluster_testing.h"
#include "redis_store_testing.h"

namespace idem::testing {
namespace {

class RedisClusterHarness final : public StoreHarness {
 public:
  explicit RedisClusterHarness(bool script_claims) : script_claims_(script_claims) {
    static std::atomic<int> counter{0};
    const ::testing::TestInfo* test = ::testing::UnitTest::GetInstance()->current_test_info();
    prefix_ = absl::StrCat("conformance/", test != nullptr ? test->name() : "unknown", "/",
                           getpid(), "/", counter.fetch_add(1));
  }

  absl::StatusOr<std::unique_ptr<DedupStore>> Open() override {
    RedisStoreOptions options;
    options.cluster_seeds = {RedisNodeAddress{.host = "127.0.0.1", .port = ClusterPort(0)},
                             RedisNodeAddress{.host = "127.0.0.1", .port = ClusterPort(1)}};
    options.key_prefix = prefix_;
    options.io_timeout = std::chrono::seconds(10);
    options.warning = [](std::string_view line) {
      ADD_FAILURE() << "unexpected warning for the fixture's cluster: " << line;
    };
    absl::StatusOr<std::unique_ptr<DedupStore>> store = NewRedisStore(std::move(options));
    if (store.ok() && script_claims_) internal::redis::UseScriptClaimsForTesting(**store);
    return store;
  }

  void Advance(std::chrono::milliseconds by) override { std::this_thread::sleep_for(by); }
  std::chrono::milliseconds ShortLease() const override { return std::chrono::milliseconds(200); }

 private:
  const bool script_claims_;
  std::string prefix_;
};

INSTANTIATE_TEST_SUITE_P(
    RedisCluster, StoreConformance,
    ::testing::Values(
        HarnessParam{"redis_cluster", [] { return std::make_unique<RedisClusterHarness>(false); }},
        HarnessParam{"redis_cluster_script_claims",
                     [] { return std::make_unique<RedisClusterHarness>(true); }}),
    HarnessName);

}  // namespace
}  // namespace idem::testing

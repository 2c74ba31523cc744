// The conformance suite against the fixture's PostgreSQL server. Leases follow the server's clock
// (clock_timestamp()), so Advance sleeps for real and ShortLease is short. Each harness writes in
// a schema of its own, so tests never see each other's records when ctest runs them in parallel.
//
// Twice: with statements prepared once per connection, and with unnamed statements (the mode for
// pgbouncer's transaction pooling).
#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include "conformance/store_conformance.h"
#include "idem/postgres_store.h"
#include "pg_test_util.h"

namespace idem::testing {
namespace {

class PostgresHarness final : public StoreHarness {
 public:
  explicit PostgresHarness(bool unnamed) : unnamed_(unnamed), schema_(UniqueSchema()) {}

  absl::StatusOr<std::unique_ptr<DedupStore>> Open() override {
    PostgresStoreOptions options;
    options.conninfo = FixtureConninfo();
    options.schema = schema_;
    options.pool_size = 4;
    options.unnamed_statements = unnamed_;
    options.warning = [](std::string_view line) {
      ADD_FAILURE() << "unexpected warning for the fixture's server: " << line;
    };
    return NewPostgresStore(std::move(options));
  }

  void Advance(std::chrono::milliseconds by) override { std::this_thread::sleep_for(by); }

  // Long enough for a few round trips (even under sanitizers), short enough for a fast suite.
  std::chrono::milliseconds ShortLease() const override { return std::chrono::milliseconds(200); }

 private:
  const bool unnamed_;
  const std::string schema_;
};

INSTANTIATE_TEST_SUITE_P(
    Postgres, StoreConformance,
    ::testing::Values(
        HarnessParam{"postgres", [] { return std::make_unique<PostgresHarness>(false); }},
        HarnessParam{"postgres_unnamed", [] { return std::make_unique<PostgresHarness>(true); }}),
    HarnessName);

}  // namespace
}  // namespace idem::testing

// The SQLite store runs the conformance suite: every handle of one test opens the same file in a
// fresh temporary directory, with one ManualClock shared by all of them.
#include <chrono>
#include <memory>

#include "conformance/store_conformance.h"
#include "idem/sqlite_store.h"
#include "idem/types.h"
#include "sqlite_test_util.h"

namespace idem::testing {
namespace {

class SqliteHarness final : public StoreHarness {
 public:
  absl::StatusOr<std::unique_ptr<DedupStore>> Open() override {
    // NORMAL keeps the suite fast; durability settings have their own tests.
    return NewSqliteStore(SqliteStoreOptions{
        .path = dir_.File("idem.db"), .synchronous = SqliteSynchronous::kNormal, .clock = &clock_});
  }
  void Advance(std::chrono::milliseconds by) override { clock_.Advance(by.count()); }

 private:
  TempDir dir_;
  ManualClock clock_;
};

INSTANTIATE_TEST_SUITE_P(Sqlite, StoreConformance,
                         ::testing::Values(HarnessParam{
                             "sqlite", [] { return std::make_unique<SqliteHarness>(); }}),
                         HarnessName);

}  // namespace
}  // namespace idem::testing

// The simulator opens its store as every program does (idem::OpenStore): a URI's options take
// effect or are refused, a percent-encoded path names the file OpenStore opens, a memory store's
// capacity is exercised and checked (I7), and a password never appears in what it prints.
#include <sys/stat.h>

#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "idem/open_store.h"
#include "idem/sim/config.h"
#include "idem/sim/report.h"
#include "idem/sim/simulator.h"
#include "idem/sim/workload.h"
#include "in_process.h"
#include "oracle.h"

namespace idem::sim {
namespace {

SimConfig Small(std::string store) {
  SimConfig c;
  c.store_uri = std::move(store);
  c.messages = 2000;
  c.seed = 5;
  return c;
}

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

TEST(StoreUri, DescribeConfigRedactsThePassword) {
  SimConfig c;
  c.store_uri = "redis://user:s3cretpw@127.0.0.1:6379/0";
  const std::string line = DescribeConfig(c);
  EXPECT_EQ(line.find("s3cretpw"), std::string::npos) << line;
  // The form every idem tool prints (idem::RedactUri), not a second redaction of the sim's own.
  EXPECT_NE(line.find(absl::StrCat("--store=", RedactUri(c.store_uri), " ")), std::string::npos)
      << line;
}

TEST(StoreUri, UnknownAndMalformedOptionsAreRefused) {
  for (const std::string uri : {"memory:?bogus=1", "memory:?capacity=lots", "memory:/path"}) {
    absl::StatusOr<RunResult> r = RunSimulation(Small(uri));
    ASSERT_FALSE(r.ok()) << uri << " ran";
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << uri << r.status();
  }
  absl::StatusOr<std::string> dir = internal::MakeTempDir("");
  ASSERT_TRUE(dir.ok()) << dir.status();
  for (const std::string query : {"?synchronous=bogus", "?bogus=1"}) {
    const std::string uri = absl::StrCat("sqlite://", *dir, "/x.db", query);
    absl::StatusOr<RunResult> r = RunSimulation(Small(uri));
    ASSERT_FALSE(r.ok()) << uri << " ran";
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << uri << r.status();
  }
  internal::RemoveDir(*dir);
}

TEST(StoreUri, APercentEncodedPathNamesOneFileForTheStoreAndTheEffects) {
  absl::StatusOr<std::string> dir = internal::MakeTempDir("");
  ASSERT_TRUE(dir.ok()) << dir.status();
  SimConfig config = Small(absl::StrCat("sqlite://", *dir, "/a%20b.db?synchronous=off"));
  config.mode = Mode::kTransactional;  // effect rows on the simulator's own connections
  config.messages = 300;
  absl::StatusOr<RunResult> r = RunSimulation(config);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->report.passed()) << FormatReport(r->report, config, r->store_description);
  EXPECT_GT(r->report.effects, 0);
  EXPECT_TRUE(Exists(absl::StrCat(*dir, "/a b.db")));
  EXPECT_FALSE(Exists(absl::StrCat(*dir, "/a%20b.db")));
  internal::RemoveDir(*dir);
}

TEST(StoreUri, AFullMemoryStoreFailsClosedAndTheOracleChecksTheBound) {
  const SimConfig config = Small("memory:?capacity=1500");
  absl::StatusOr<RunResult> r = RunSimulation(config);
  ASSERT_TRUE(r.ok()) << r.status();
  const Report& report = r->report;
  EXPECT_TRUE(report.passed()) << FormatReport(report, config, r->store_description);
  // More distinct ids than the capacity: the ones past it were refused, their handlers never ran.
  EXPECT_GT(report.capacity_refusals, 0);
  EXPECT_LE(report.processed, 1500);
  EXPECT_EQ(report.over_capacity, 0);
}

TEST(StoreUri, AnEvictingMemoryStoreRunsEvictedIdsAgainAndTheOracleExplainsThem) {
  const SimConfig config = Small("memory:?capacity=1500&evict=1");
  absl::StatusOr<RunResult> r = RunSimulation(config);
  ASSERT_TRUE(r.ok()) << r.status();
  const Report& report = r->report;
  EXPECT_TRUE(report.passed()) << FormatReport(report, config, r->store_description);
  EXPECT_GT(report.evicted_reruns, 0);
  EXPECT_EQ(report.capacity_refusals, 0);
}

// The I7 checks themselves, fed directly.
TEST(OracleCapacity, FailsAStoreHoldingMoreThanItsCapacity) {
  SimConfig c;
  c.messages = 10;
  const Workload w = GenerateWorkload(c);
  internal::Oracle oracle(w, Mode::kLease, /*exact_time=*/true);
  oracle.SetCapacity(3, /*evict=*/false);
  oracle.StoreBound(4, 0);
  const Report r = oracle.Finish({}, nullptr);
  EXPECT_FALSE(r.passed());
  EXPECT_EQ(r.over_capacity, 1);
}

TEST(OracleCapacity, FailsARefusalWhileTheStoreWasNotFull) {
  SimConfig c;
  c.messages = 10;
  const Workload w = GenerateWorkload(c);
  internal::Oracle oracle(w, Mode::kLease, /*exact_time=*/true);
  oracle.SetCapacity(3, /*evict=*/false);
  ClaimResult granted;
  granted.token = 1;
  granted.lease_until_ms = 100;
  oracle.ClaimApplied(0, granted, 0);  // one record of three
  oracle.RefusedFull(1);
  const Report r = oracle.Finish({}, nullptr);
  EXPECT_FALSE(r.passed());
  EXPECT_EQ(r.over_capacity, 1);
}

TEST(OracleCapacity, FailsRerunsOfCompletedIdsThatNoEvictionExplains) {
  SimConfig c;
  c.messages = 10;
  const Workload w = GenerateWorkload(c);
  internal::Oracle oracle(w, Mode::kLease, /*exact_time=*/true);
  oracle.SetCapacity(3, /*evict=*/true);
  ClaimResult first;
  first.token = 1;
  first.lease_until_ms = 100;
  oracle.ClaimApplied(0, first, 0);
  oracle.ClaimReturned(1);
  oracle.HandlerRan(0, 1, 1);
  oracle.CompleteApplied(0, 1, StampOf(w.messages[0]), CompleteStatus::kCompleted, 2);
  ClaimResult again = first;
  again.token = 2;
  again.lease_until_ms = 200;
  oracle.ClaimApplied(0, again, 3);  // claimed again after completion
  oracle.StoreBound(1, /*evictions=*/0);
  const Report r = oracle.Finish({}, nullptr);
  EXPECT_FALSE(r.passed());
  EXPECT_EQ(r.evicted_reruns, 1);
  EXPECT_GT(r.over_capacity, 0);
}

}  // namespace
}  // namespace idem::sim

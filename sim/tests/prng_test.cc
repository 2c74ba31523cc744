// The generator must replay a seed identically on every platform: its PRNG, distributions,
// workload and fault schedule are checked against fixed values and against their specification.
#include "idem/sim/prng.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <set>
#include <string>

#include "gtest/gtest.h"
#include "idem/sim/workload.h"

namespace idem::sim {
namespace {

TEST(Rng, MatchesTheReferenceXoshiro256StarStarSequence) {
  // Computed with an independent implementation of splitmix64 seeding + xoshiro256**.
  Rng rng(42);
  EXPECT_EQ(rng.Next(), 0x15780b2e0c2ec716ULL);
  EXPECT_EQ(rng.Next(), 0x6104d9866d113a7eULL);
  EXPECT_EQ(rng.Next(), 0xae17533239e499a1ULL);
}

TEST(Rng, BelowStaysInRangeAndIsRoughlyUniform) {
  Rng rng(7);
  std::map<uint64_t, int> counts;
  constexpr int kDraws = 60'000;
  for (int i = 0; i < kDraws; ++i) {
    const uint64_t v = rng.Below(6);
    ASSERT_LT(v, 6u);
    ++counts[v];
  }
  for (const auto& [value, count] : counts) {
    EXPECT_NEAR(count, kDraws / 6, kDraws / 6 / 20) << "value " << value;
  }
  for (int i = 0; i < 1000; ++i) {
    const int64_t v = rng.Between(-3, 3);
    ASSERT_GE(v, -3);
    ASSERT_LE(v, 3);
  }
}

TEST(Rng, ChanceHonoursItsProbability) {
  Rng rng(9);
  int hits = 0;
  for (int i = 0; i < 100'000; ++i) hits += rng.Chance(0.2);
  EXPECT_NEAR(hits, 20'000, 800);
  EXPECT_FALSE(rng.Chance(0));
  EXPECT_TRUE(rng.Chance(1));
}

SimConfig SmallConfig(uint64_t seed) {
  SimConfig c;
  c.seed = seed;
  c.messages = 3000;
  c.keys = 20;
  c.dup_rate = 0.2;
  c.conflict_rate = 0.02;
  c.reorder_window = 16;
  return c;
}

TEST(Workload, TheSameSeedReplaysTheSameHistory) {
  const Workload a = GenerateWorkload(SmallConfig(5));
  const Workload b = GenerateWorkload(SmallConfig(5));
  const Workload c = GenerateWorkload(SmallConfig(6));
  ASSERT_EQ(a.messages.size(), b.messages.size());
  ASSERT_EQ(a.deliveries.size(), b.deliveries.size());
  bool differs = a.deliveries.size() != c.deliveries.size();
  for (std::size_t i = 0; i < a.messages.size(); ++i) {
    EXPECT_EQ(a.messages[i].id, b.messages[i].id);
    EXPECT_EQ(a.messages[i].payload, b.messages[i].payload);
    EXPECT_EQ(a.messages[i].version, b.messages[i].version);
    differs = differs || a.messages[i].payload != c.messages[i].payload;
  }
  for (std::size_t i = 0; i < a.deliveries.size(); ++i) {
    EXPECT_EQ(a.deliveries[i].message, b.deliveries[i].message);
    EXPECT_EQ(a.deliveries[i].at_ms, b.deliveries[i].at_ms);
  }
  EXPECT_TRUE(differs) << "another seed must give another history";
}

TEST(Workload, HasDuplicatesReorderingReusedIdsBinaryIdsAndHugeVersions) {
  const SimConfig config = SmallConfig(11);
  const Workload w = GenerateWorkload(config);
  const double copies = static_cast<double>(w.deliveries.size()) / w.messages.size();
  EXPECT_GT(copies, 1.15);
  EXPECT_LT(copies, 1.35);

  // Versions increase per key in generation order, with gaps somewhere.
  std::map<std::string, uint64_t> last;
  bool gap = false;
  for (const SimMessage& m : w.messages) {
    auto it = last.find(m.key);
    if (it != last.end()) {
      ASSERT_GT(m.version, it->second) << m.key;
      gap = gap || m.version > it->second + 1;
    }
    last[m.key] = m.version;
  }
  EXPECT_TRUE(gap);
  EXPECT_GT(last["key-0"], uint64_t{1} << 63) << "one key lives at the top of the range";

  // Per-key reordering: in delivery order, some first copies arrive after a newer version.
  std::map<std::string, uint64_t> seen;
  int inversions = 0;
  for (const InitialDelivery& d : w.deliveries) {
    if (d.copy != 0) continue;
    const SimMessage& m = w.messages[d.message];
    if (seen.contains(m.key) && seen[m.key] > m.version) ++inversions;
    seen[m.key] = std::max(seen[m.key], m.version);
  }
  EXPECT_GT(inversions, 10);

  const auto reused = std::count_if(w.messages.begin(), w.messages.end(),
                                    [](const SimMessage& m) { return m.reuses_id; });
  EXPECT_GT(reused, 20);
  EXPECT_LT(reused, 120);
  const auto binary = std::count_if(w.messages.begin(), w.messages.end(), [](const SimMessage& m) {
    return m.id.find('\0') != std::string::npos && m.id.find('\xff') != std::string::npos;
  });
  EXPECT_GT(binary, 100);
}

TEST(FaultPlan, IsAPureFunctionWithTheConfiguredRates) {
  SimConfig c = SmallConfig(3);
  c.crash_rate = 0.2;
  c.pause_rate = 0.05;
  std::map<Fault, int> counts;
  constexpr int kDraws = 40'000;
  for (int m = 0; m < kDraws; ++m) {
    const Fault f = PlanFault(c, Profile::kInProcessLease, m, 0, 0);
    ASSERT_EQ(f, PlanFault(c, Profile::kInProcessLease, m, 0, 0));
    ++counts[f];
  }
  for (Fault f : {Fault::kCrashBeforeClaim, Fault::kCrashAfterClaim, Fault::kCrashAfterEffect,
                  Fault::kCrashAfterComplete}) {
    EXPECT_NEAR(counts[f], kDraws * 0.05, kDraws * 0.01) << FaultName(f);
  }
  EXPECT_NEAR(counts[Fault::kPauseBeyondLease], kDraws * 0.05, kDraws * 0.01);
  // Past a few attempts nothing is faulted, so every message eventually gets through.
  for (int m = 0; m < 1000; ++m) {
    EXPECT_EQ(PlanFault(c, Profile::kInProcessLease, m, 0, 6), Fault::kNone);
  }
  // The transactional profile has no store-call faults to inject.
  c.store_error_rate = 0.5;
  for (int m = 0; m < 1000; ++m) {
    const Fault f = PlanFault(c, Profile::kInProcessTransactional, m, 0, 0);
    EXPECT_NE(f, Fault::kStoreErrorOnClaim);
    EXPECT_NE(f, Fault::kPauseBeyondLease);
  }
}

}  // namespace
}  // namespace idem::sim

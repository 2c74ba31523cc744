#include "idem/sim/workload.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "idem/sim/prng.h"

namespace idem::sim {
namespace {

// Stream separators, so that the workload, the fault schedule and the scheduler draw
// independent sequences from one seed.
constexpr uint64_t kWorkloadStream = 0x776f726b6c6f6164ULL;
constexpr uint64_t kFaultStream = 0x6661756c74730000ULL;

// How many times a delivery copy may be hit by a fault. Past it every attempt is clean, so each
// message gets through however unlucky the seed.
constexpr int32_t kMaxFaultedAttempts = 6;

std::string MakeId(int64_t id_index) {
  std::string id = absl::StrCat("msg-", id_index);
  // Ids are bytes, not text: some carry NUL and 0xFF so every backend's binary handling is on the
  // path the oracle checks.
  if (id_index % 16 == 7) id.append("\0\xff", 2);
  return id;
}

}  // namespace

Workload GenerateWorkload(const SimConfig& config) {
  Rng rng(Hash64(config.seed, kWorkloadStream));
  Workload w;
  w.keys.reserve(config.keys);
  std::vector<uint64_t> next_version(config.keys);
  for (int64_t k = 0; k < config.keys; ++k) {
    w.keys.push_back(absl::StrCat("key-", k));
    next_version[k] = static_cast<uint64_t>(rng.Between(1, 3));
  }
  // One key lives at the top of the uint64 range, where a comparison through doubles would
  // confuse neighbouring versions. Headroom: at most 4 per message.
  if (config.keys > 1) {
    next_version[0] = UINT64_MAX - 4 * static_cast<uint64_t>(config.messages) - 16;
  }

  w.messages.reserve(config.messages);
  w.deliveries.reserve(config.messages + config.messages * config.dup_rate * 1.3 + 1);
  for (int64_t i = 0; i < config.messages; ++i) {
    SimMessage m;
    const int64_t k = static_cast<int64_t>(rng.Below(config.keys));
    m.key = w.keys[k];
    m.version = next_version[k];
    // Gaps: a producer may skip versions (filtered events, other partitions).
    next_version[k] += 1 + (rng.Chance(0.2) ? static_cast<uint64_t>(rng.Between(1, 3)) : 0);
    if (i > 0 && rng.Chance(config.conflict_rate)) {
      // A producer bug: an id reused for another payload, close in time to the first use.
      const int64_t j = i - 1 - static_cast<int64_t>(rng.Below(std::min<int64_t>(i, 256)));
      m.id = w.messages[j].id;
      m.id_index = w.messages[j].id_index;
      m.reuses_id = true;
    } else {
      m.id_index = w.distinct_ids++;
      m.id = MakeId(m.id_index);
    }
    m.versioned = !rng.Chance(config.unversioned_rate);
    m.payload =
        absl::StrFormat("key=%s;version=%u;n=%d;salt=%016x", m.key, m.version, i, rng.Next());
    w.messages.push_back(std::move(m));

    // One simulated millisecond between sends; each copy may overtake up to reorder_window
    // earlier ones, which reorders versions of a key as a partitioned broker's retries do.
    const int64_t base = i + rng.Between(0, config.reorder_window);
    w.deliveries.push_back({.message = i, .copy = 0, .at_ms = base});
    if (rng.Chance(config.dup_rate)) {
      const int extra = rng.Chance(0.25) ? 2 : 1;
      for (int e = 1; e <= extra; ++e) {
        // Redelivered after a delay: some within the first copy's lease, some well after.
        const int64_t delay = rng.Between(1, 2 * config.lease_ms);
        w.deliveries.push_back({.message = i, .copy = e, .at_ms = base + delay});
      }
    }
  }
  std::stable_sort(w.deliveries.begin(), w.deliveries.end(),
                   [](const InitialDelivery& a, const InitialDelivery& b) {
                     return std::tie(a.at_ms, a.message, a.copy) <
                            std::tie(b.at_ms, b.message, b.copy);
                   });
  return w;
}

std::optional<VersionStamp> StampOf(const SimMessage& m) {
  if (!m.versioned) return std::nullopt;
  return VersionStamp{m.key, m.version};
}

Fault PlanFault(const SimConfig& config, Profile profile, int64_t message, int32_t copy,
                int32_t attempt) {
  if (attempt >= kMaxFaultedAttempts) return Fault::kNone;
  const uint64_t h = Hash64(config.seed ^ kFaultStream, static_cast<uint64_t>(message),
                            static_cast<uint64_t>(copy), static_cast<uint64_t>(attempt));
  double u = UnitOf(h);
  // Walks the cumulative distribution; `take(p)` consumes a slice of width p.
  auto take = [&u](double p) {
    if (u < p) return true;
    u -= p;
    return false;
  };
  const double crash = config.crash_rate / 4;
  if (take(crash)) return Fault::kCrashBeforeClaim;
  if (take(crash)) return Fault::kCrashAfterClaim;
  if (take(crash)) return Fault::kCrashAfterEffect;
  if (take(crash)) return Fault::kCrashAfterComplete;
  switch (profile) {
    case Profile::kInProcessLease:
      if (take(config.pause_rate)) return Fault::kPauseBeyondLease;
      if (take(config.store_error_rate / 2)) return Fault::kStoreErrorOnClaim;
      if (take(config.store_error_rate / 2)) return Fault::kStoreErrorOnComplete;
      if (take(config.outage_rate)) return Fault::kStoreOutage;
      if (take(config.lost_reply_rate / 2)) return Fault::kLostReplyOnClaim;
      if (take(config.lost_reply_rate / 2)) return Fault::kLostReplyOnComplete;
      return Fault::kNone;
    case Profile::kInProcessTransactional:
      // The transaction is the library's own: the only reply to lose is the commit's.
      if (take(config.lost_reply_rate / 2)) return Fault::kLostReplyOnComplete;
      return Fault::kNone;
    case Profile::kProcesses:
      if (take(config.pause_rate)) return Fault::kPauseBeyondLease;
      return Fault::kNone;
  }
  return Fault::kNone;
}

int64_t PauseMillis(const SimConfig& config) { return config.lease_ms + config.lease_ms / 4 + 1; }

int64_t OutageMillis(const SimConfig& config) { return std::max<int64_t>(config.lease_ms / 5, 5); }

}  // namespace idem::sim

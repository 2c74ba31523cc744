// The counters behind DedupStore::Stats(), shared by the backends so that each outcome is counted
// the same way everywhere.
#ifndef IDEM_INTERNAL_STORE_COUNTERS_H_
#define IDEM_INTERNAL_STORE_COUNTERS_H_

#include <atomic>
#include <cstdint>

#include "idem/store.h"

namespace idem::internal {

// Thread-safe; relaxed atomics: the counters are statistics, not synchronisation.
struct StoreCounters {
  std::atomic<uint64_t> claims_acquired{0}, takeovers{0}, duplicates{0}, in_progress{0}, stale{0},
      conflicts{0}, dead_lettered{0}, completed{0}, fenced{0}, retention_reclaims{0},
      capacity_rejections{0}, evictions{0}, purged{0}, write_groups{0}, grouped_calls{0};

  static void Add(std::atomic<uint64_t>& counter, uint64_t n = 1) {
    counter.fetch_add(n, std::memory_order_relaxed);
  }

  // Counts one claim by its outcome; `retention_reclaim`: it claimed a COMPLETED record whose
  // retention had run out.
  void CountClaim(const ClaimResult& claim, bool retention_reclaim = false) {
    switch (claim.status) {
      case ClaimStatus::kAcquired:
        Add(claims_acquired);
        if (claim.took_over) Add(takeovers);
        if (retention_reclaim) Add(retention_reclaims);
        break;
      case ClaimStatus::kDuplicate:
        Add(duplicates);
        break;
      case ClaimStatus::kInProgress:
        Add(in_progress);
        break;
      case ClaimStatus::kStale:
        Add(stale);
        break;
      case ClaimStatus::kConflict:
        Add(conflicts);
        break;
      case ClaimStatus::kDeadLettered:
        Add(dead_lettered);
        break;
    }
  }

  // A stale completion still COMPLETES the record, so it counts in both.
  void CountCompletion(CompleteStatus status) {
    Add(completed);
    if (status == CompleteStatus::kStale) Add(stale);
  }

  StoreStats Snapshot() const {
    auto get = [](const std::atomic<uint64_t>& c) { return c.load(std::memory_order_relaxed); };
    return StoreStats{.claims_acquired = get(claims_acquired),
                      .takeovers = get(takeovers),
                      .duplicates = get(duplicates),
                      .in_progress = get(in_progress),
                      .stale = get(stale),
                      .conflicts = get(conflicts),
                      .dead_lettered = get(dead_lettered),
                      .completed = get(completed),
                      .fenced = get(fenced),
                      .retention_reclaims = get(retention_reclaims),
                      .capacity_rejections = get(capacity_rejections),
                      .evictions = get(evictions),
                      .purged = get(purged),
                      .write_groups = get(write_groups),
                      .grouped_calls = get(grouped_calls)};
  }
};

// Adds `part` to `total`, field by field: a store that keeps counters per shard sums them.
inline void Accumulate(StoreStats& total, const StoreStats& part) {
  total.claims_acquired += part.claims_acquired;
  total.takeovers += part.takeovers;
  total.duplicates += part.duplicates;
  total.in_progress += part.in_progress;
  total.stale += part.stale;
  total.conflicts += part.conflicts;
  total.dead_lettered += part.dead_lettered;
  total.completed += part.completed;
  total.fenced += part.fenced;
  total.retention_reclaims += part.retention_reclaims;
  total.capacity_rejections += part.capacity_rejections;
  total.evictions += part.evictions;
  total.purged += part.purged;
  total.write_groups += part.write_groups;
  total.grouped_calls += part.grouped_calls;
}

}  // namespace idem::internal

#endif  // IDEM_INTERNAL_STORE_COUNTERS_H_

#include "idem/memory_store.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <bit>
#include <cstddef>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "internal/adaptive_mutex.h"
#include "internal/list_cursor.h"
#include "internal/owner.h"
#include "internal/store_counters.h"
#include "internal/strings.h"
#include "internal/token.h"

namespace idem {
namespace {

struct Record {
  RecordState state = RecordState::kInProgress;
  uint64_t token = 0;
  uint32_t attempts = 0;
  int64_t lease_until = 0;
  int64_t expires_at = 0;
  // Creation order, for evict-oldest: a queue entry whose seq differs refers to an earlier
  // record under the same key and is skipped.
  uint64_t seq = 0;
  std::optional<Fingerprint> fingerprint;
  std::optional<std::string> result;
};

// A scope never holds NUL (ValidateScope), so scope + '\0' + id is injective.
//
// Lookups build the key in a per-thread buffer that keeps its capacity, so only an insert
// allocates: `which` picks one of two buffers (a record key and a version key are alive at once).
enum class KeyBuffer { kRecord, kVersion };
const std::string& LookupKey(KeyBuffer which, std::string_view scope, std::string_view id) {
  thread_local std::string buffers[2];
  std::string& key = buffers[static_cast<int>(which)];
  key.assign(scope).push_back('\0');
  key.append(id);
  return key;
}

using RecordMap = absl::flat_hash_map<std::string, Record>;

// Cache-line aligned, counters included: two threads on two shards share no line.
struct alignas(64) Shard {
  internal::AdaptiveMutex mu;
  // Per shard, so that counting does not make every call contend on one cache line.
  internal::StoreCounters counters;
  // Both guarded by mu.
  RecordMap records;
  // (key, seq) in creation order; maintained only with evict_oldest.
  std::deque<std::pair<std::string, uint64_t>> order;
};

struct VersionShard {
  internal::AdaptiveMutex mu;
  absl::flat_hash_map<std::string, uint64_t> versions;  // guarded by mu
};

using Counters = internal::StoreCounters;

std::size_t RoundUpToPowerOfTwo(std::size_t n) {
  std::size_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

// Lock order: a record shard's mutex, then a version shard's mutex; never the other way round.
class MemoryStore final : public DedupStore {
 public:
  explicit MemoryStore(MemoryStoreOptions options)
      : options_(std::move(options)),
        clock_(options_.clock != nullptr ? options_.clock : &SteadyClock()),
        shards_(RoundUpToPowerOfTwo(options_.shards == 0 ? 1 : options_.shards)),
        version_shards_(shards_.size()),
        shard_bits_(std::countr_zero(shards_.size())) {
    if (!options_.token_source) options_.token_source = internal::RandomTokenSource();
  }

  absl::StatusOr<ClaimResult> Claim(const ClaimRequest& request) override {
    if (absl::Status s = ValidateClaimRequest(request, options_.max_id_bytes); !s.ok()) return s;
    const std::string& key = LookupKey(KeyBuffer::kRecord, request.scope, request.id);
    const std::size_t hash = HashOf(key);
    Shard& shard = ShardFor(hash);
    std::lock_guard<internal::AdaptiveMutex> lock(shard.mu);
    const int64_t now = clock_->NowMillis();

    auto it = shard.records.find(key, hash);
    bool reclaim_expired = false;
    if (it != shard.records.end()) {
      Record& r = it->second;
      if (request.fingerprint && r.fingerprint && *request.fingerprint != *r.fingerprint) {
        Counters::Add(shard.counters.conflicts);
        return ClaimResult{.status = ClaimStatus::kConflict, .attempt = r.attempts};
      }
      if (r.state == RecordState::kCompleted) {
        if (r.expires_at > now) {
          Counters::Add(shard.counters.duplicates);
          return ClaimResult{
              .status = ClaimStatus::kDuplicate, .attempt = r.attempts, .result = r.result};
        }
        reclaim_expired = true;
      } else if (r.state == RecordState::kInProgress && r.lease_until > now) {
        Counters::Add(shard.counters.in_progress);
        return ClaimResult{.status = ClaimStatus::kInProgress,
                           .attempt = r.attempts,
                           .lease_until_ms = r.lease_until};
      }
    }

    if (request.version) {
      std::optional<uint64_t> applied = LookupVersion(request.scope, request.version->key);
      if (applied && *applied >= request.version->version) {
        Counters::Add(shard.counters.stale);
        return ClaimResult{.status = ClaimStatus::kStale, .applied_version = applied};
      }
    }

    const int64_t lease_until = now + request.lease.count();
    const int64_t expires_at = lease_until + options_.retention.count();
    if (it != shard.records.end() && !reclaim_expired) {
      // RELEASED, or IN_PROGRESS with an expired lease: takeover.
      Record& r = it->second;
      if (request.max_attempts > 0 && r.attempts >= request.max_attempts) {
        Counters::Add(shard.counters.dead_lettered);
        return ClaimResult{.status = ClaimStatus::kDeadLettered, .attempt = r.attempts};
      }
      const bool took_over = r.state == RecordState::kInProgress;
      r.state = RecordState::kInProgress;
      r.token = options_.token_source();
      r.attempts += 1;
      r.lease_until = lease_until;
      r.expires_at = expires_at;
      if (!r.fingerprint) r.fingerprint = request.fingerprint;
      Counters::Add(shard.counters.claims_acquired);
      if (took_over) Counters::Add(shard.counters.takeovers);
      return ClaimResult{.status = ClaimStatus::kAcquired,
                         .token = r.token,
                         .attempt = r.attempts,
                         .lease_until_ms = lease_until,
                         .took_over = took_over};
    }

    if (reclaim_expired) {
      // Retention ran out: the id is new again (documented; counted).
      Counters::Add(shard.counters.retention_reclaims);
    } else if (absl::Status s = ReserveSlot(shard); !s.ok()) {
      return s;
    }
    Record fresh{
        .state = RecordState::kInProgress,
        .token = options_.token_source(),
        .attempts = 1,
        .lease_until = lease_until,
        .expires_at = expires_at,
        .seq = options_.evict_oldest ? next_seq_.fetch_add(1, std::memory_order_relaxed) : 0,
        .fingerprint = request.fingerprint};
    const uint64_t token = fresh.token;
    if (options_.evict_oldest) shard.order.emplace_back(key, fresh.seq);
    shard.records.insert_or_assign(key, std::move(fresh));
    Counters::Add(shard.counters.claims_acquired);
    return ClaimResult{.status = ClaimStatus::kAcquired,
                       .token = token,
                       .attempt = 1,
                       .lease_until_ms = lease_until};
  }

  absl::StatusOr<CompleteStatus> Complete(const CompleteRequest& request) override {
    if (absl::Status s = ValidateCompleteRequest(request, options_.max_id_bytes); !s.ok()) return s;
    const std::string& key = LookupKey(KeyBuffer::kRecord, request.scope, request.id);
    const std::size_t hash = HashOf(key);
    Shard& shard = ShardFor(hash);
    std::lock_guard<internal::AdaptiveMutex> lock(shard.mu);
    Record* r = OwnedRecord(shard, key, hash, request.token);
    if (r == nullptr) return Fenced(shard, "complete");
    const int64_t now = clock_->NowMillis();

    CompleteStatus status = CompleteStatus::kCompleted;
    if (request.version) {
      const std::string& vkey = LookupKey(KeyBuffer::kVersion, request.scope, request.version->key);
      const std::size_t vhash = HashOf(vkey);
      VersionShard& vshard = VersionShardFor(vhash);
      std::lock_guard<internal::AdaptiveMutex> vlock(vshard.mu);
      auto vit = vshard.versions.find(vkey, vhash);
      if (vit != vshard.versions.end() && vit->second >= request.version->version) {
        status = CompleteStatus::kStale;
        Counters::Add(shard.counters.stale);
      } else if (vit != vshard.versions.end()) {
        vit->second = request.version->version;
      } else {
        if (version_count_.fetch_add(1, std::memory_order_relaxed) >= options_.max_version_keys) {
          version_count_.fetch_sub(1, std::memory_order_relaxed);
          Counters::Add(shard.counters.capacity_rejections);
          return absl::ResourceExhaustedError(
              absl::StrCat("in-memory store holds max_version_keys=", options_.max_version_keys,
                           " version keys; the completion was not recorded"));
        }
        vshard.versions.emplace(vkey, request.version->version);
      }
    }
    const int64_t retention =
        request.retention.count() > 0 ? request.retention.count() : options_.retention.count();
    r->state = RecordState::kCompleted;
    r->lease_until = 0;
    r->expires_at = now + retention;
    if (request.result) r->result = std::string(*request.result);
    if (!r->fingerprint) r->fingerprint = request.fingerprint;
    Counters::Add(shard.counters.completed);
    NotifyWaiters();
    return status;
  }

  absl::Status Release(std::string_view scope, std::string_view id, uint64_t token) override {
    if (absl::Status s = internal::ValidateOwnerArgs(scope, id, token, options_.max_id_bytes);
        !s.ok()) {
      return s;
    }
    const std::string& key = LookupKey(KeyBuffer::kRecord, scope, id);
    const std::size_t hash = HashOf(key);
    Shard& shard = ShardFor(hash);
    std::lock_guard<internal::AdaptiveMutex> lock(shard.mu);
    Record* r = OwnedRecord(shard, key, hash, token);
    if (r == nullptr) return Fenced(shard, "release");
    r->state = RecordState::kReleased;
    r->lease_until = 0;
    r->expires_at = clock_->NowMillis() + options_.retention.count();
    NotifyWaiters();
    return absl::OkStatus();
  }

  absl::StatusOr<int64_t> Extend(std::string_view scope, std::string_view id, uint64_t token,
                                 std::chrono::milliseconds lease) override {
    if (absl::Status s = internal::ValidateOwnerArgs(scope, id, token, options_.max_id_bytes);
        !s.ok()) {
      return s;
    }
    if (absl::Status s = ValidateLease(lease); !s.ok()) return s;
    const std::string& key = LookupKey(KeyBuffer::kRecord, scope, id);
    const std::size_t hash = HashOf(key);
    Shard& shard = ShardFor(hash);
    std::lock_guard<internal::AdaptiveMutex> lock(shard.mu);
    Record* r = OwnedRecord(shard, key, hash, token);
    if (r == nullptr) return Fenced(shard, "extend");
    r->lease_until = clock_->NowMillis() + lease.count();
    r->expires_at = r->lease_until + options_.retention.count();
    return r->lease_until;
  }

  absl::StatusOr<int64_t> PurgeExpired(int64_t limit) override {
    if (absl::Status s = ValidatePurgeLimit(limit); !s.ok()) return s;
    int64_t purged = 0;
    for (Shard& shard : shards_) {
      std::lock_guard<internal::AdaptiveMutex> lock(shard.mu);
      const int64_t now = clock_->NowMillis();
      int64_t purged_here = 0;
      for (auto it = shard.records.begin(); it != shard.records.end();) {
        if (limit > 0 && purged + purged_here >= limit) break;
        if (IsPurgeable(it->second, now)) {
          shard.records.erase(it++);
          ++purged_here;
        } else {
          ++it;
        }
      }
      Counters::Add(shard.counters.purged, static_cast<uint64_t>(purged_here));
      purged += purged_here;
      CompactOrder(shard);
    }
    count_.fetch_sub(static_cast<std::size_t>(purged), std::memory_order_relaxed);
    return purged;
  }

  absl::StatusOr<std::optional<uint64_t>> AppliedVersion(std::string_view scope,
                                                         std::string_view key) override {
    if (absl::Status s = ValidateScope(scope); !s.ok()) return s;
    if (absl::Status s = ValidateId(key, options_.max_id_bytes, "version key"); !s.ok()) return s;
    return LookupVersion(scope, key);
  }

  absl::StatusOr<std::optional<RecordInfo>> Inspect(std::string_view scope,
                                                    std::string_view id) override {
    if (absl::Status s = ValidateScope(scope); !s.ok()) return s;
    if (absl::Status s = ValidateId(id, options_.max_id_bytes); !s.ok()) return s;
    const std::string& key = LookupKey(KeyBuffer::kRecord, scope, id);
    const std::size_t hash = HashOf(key);
    Shard& shard = ShardFor(hash);
    std::lock_guard<internal::AdaptiveMutex> lock(shard.mu);
    auto it = shard.records.find(key, hash);
    if (it == shard.records.end()) return std::optional<RecordInfo>();
    const Record& r = it->second;
    return std::optional<RecordInfo>(RecordInfo{.state = r.state,
                                                .token = r.token,
                                                .attempts = r.attempts,
                                                .lease_until_ms = r.lease_until,
                                                .expires_at_ms = r.expires_at,
                                                .fingerprint = r.fingerprint,
                                                .result = r.result});
  }

  StoreStats Stats() const override {
    StoreStats total;
    for (const Shard& shard : shards_) internal::Accumulate(total, shard.counters.Snapshot());
    return total;
  }

  std::string_view BackendName() const override { return "memory"; }

  // --- Operator calls and waiting (store.h).

  absl::StatusOr<ListPage> List(const ListRequest& request) override {
    if (absl::Status s = ValidateListRequest(request); !s.ok()) return s;
    absl::StatusOr<std::optional<std::string>> after = internal::DecodeIdCursor(request.cursor);
    if (!after.ok()) return after.status();
    std::string prefix(request.scope);
    prefix.push_back('\0');
    // The shards hash their keys, so a page is the smallest ids after the cursor over all of
    // them: O(records) per page, fine for an operator's listing of an in-process store.
    std::vector<ListedRecord> found;
    for (Shard& shard : shards_) {
      std::lock_guard<internal::AdaptiveMutex> lock(shard.mu);
      const int64_t now = clock_->NowMillis();
      for (const auto& [key, r] : shard.records) {
        if (!key.starts_with(prefix)) continue;
        std::string_view id = std::string_view(key).substr(prefix.size());
        if (after->has_value() && id <= **after) continue;
        RecordInfo info{.state = r.state,
                        .token = r.token,
                        .attempts = r.attempts,
                        .lease_until_ms = r.state == RecordState::kInProgress ? r.lease_until : 0,
                        .expires_at_ms = r.expires_at,
                        .fingerprint = r.fingerprint,
                        .result = r.result};
        if (!MatchesListFilter(info, request.filter, request.max_attempts, now)) continue;
        found.push_back(ListedRecord{.id = std::string(id), .info = std::move(info)});
      }
    }
    std::sort(found.begin(), found.end(),
              [](const ListedRecord& a, const ListedRecord& b) { return a.id < b.id; });
    ListPage page;
    if (found.size() > request.limit) {
      found.resize(request.limit);
      page.next_cursor = internal::EncodeIdCursor(found.back().id);
    }
    page.records = std::move(found);
    return page;
  }

  absl::Status ResetAttempts(std::string_view scope, std::string_view id,
                             uint64_t token) override {
    if (absl::Status s = internal::ValidateOwnerArgs(scope, id, token, options_.max_id_bytes);
        !s.ok()) {
      return s;
    }
    {
      const std::string& key = LookupKey(KeyBuffer::kRecord, scope, id);
      const std::size_t hash = HashOf(key);
      Shard& shard = ShardFor(hash);
      std::lock_guard<internal::AdaptiveMutex> lock(shard.mu);
      auto it = shard.records.find(key, hash);
      if (it == shard.records.end()) return absl::NotFoundError("reset: no record for this id");
      Record& r = it->second;
      const int64_t now = clock_->NowMillis();
      if (r.token != token) {
        return absl::AbortedError("reset refused: the record's token changed since it was read");
      }
      if (r.state == RecordState::kCompleted) {
        return absl::FailedPreconditionError("reset refused: the record is COMPLETED");
      }
      if (r.state == RecordState::kInProgress && r.lease_until > now) {
        return absl::FailedPreconditionError("reset refused: the record is a live claim");
      }
      r.state = RecordState::kReleased;
      r.attempts = 0;
      r.lease_until = 0;
      r.expires_at = now + options_.retention.count();
    }
    NotifyWaiters();
    return absl::OkStatus();
  }

  absl::StatusOr<bool> WaitForCompletion(
      std::string_view scope, std::string_view id,
      std::chrono::steady_clock::time_point deadline) override {
    if (absl::Status s = ValidateScope(scope); !s.ok()) return s;
    if (absl::Status s = ValidateId(id, options_.max_id_bytes); !s.ok()) return s;
    // Counted before the first look at the record, so that a completion that follows it sees a
    // waiter and notifies (its shard lock orders the two).
    waiters_.fetch_add(1, std::memory_order_seq_cst);
    struct Leave {
      std::atomic<int>& waiters;
      ~Leave() { waiters.fetch_sub(1, std::memory_order_seq_cst); }
    } leave{waiters_};
    while (true) {
      uint64_t seen;
      {
        std::lock_guard<std::mutex> lock(wait_mu_);
        seen = wait_generation_;
      }
      {
        const std::string& key = LookupKey(KeyBuffer::kRecord, scope, id);
        const std::size_t hash = HashOf(key);
        Shard& shard = ShardFor(hash);
        std::lock_guard<internal::AdaptiveMutex> lock(shard.mu);
        auto it = shard.records.find(key, hash);
        if (it == shard.records.end() || it->second.state != RecordState::kInProgress ||
            it->second.lease_until <= clock_->NowMillis()) {
          return true;
        }
      }
      if (std::chrono::steady_clock::now() >= deadline) return false;
      // Woken by a completion, release or reset; at most every 50 ms it looks again, because a
      // lease ends by the store's clock (maybe a manual one), which tells nobody.
      std::unique_lock<std::mutex> lock(wait_mu_);
      wait_changed_.wait_until(
          lock, std::min(deadline, std::chrono::steady_clock::now() + std::chrono::milliseconds(50)),
          [&] { return wait_generation_ != seen; });
    }
  }

 private:
  // The maps' own hash of a key, computed once per call: its top bits pick the shard (the maps'
  // probing relies on the low bits), and the maps' find() takes it instead of hashing again.
  static std::size_t HashOf(const std::string& key) { return RecordMap::hasher{}(key); }
  std::size_t ShardIndex(std::size_t hash) const {
    return shard_bits_ == 0 ? 0 : hash >> (64 - shard_bits_);
  }
  Shard& ShardFor(std::size_t hash) { return shards_[ShardIndex(hash)]; }
  VersionShard& VersionShardFor(std::size_t hash) { return version_shards_[ShardIndex(hash)]; }

  std::optional<uint64_t> LookupVersion(std::string_view scope, std::string_view key) {
    const std::string& vkey = LookupKey(KeyBuffer::kVersion, scope, key);
    const std::size_t vhash = HashOf(vkey);
    VersionShard& vshard = VersionShardFor(vhash);
    std::lock_guard<internal::AdaptiveMutex> lock(vshard.mu);
    auto it = vshard.versions.find(vkey, vhash);
    if (it == vshard.versions.end()) return std::nullopt;
    return it->second;
  }

  // The record if `token` owns its live claim, else nullptr.
  static Record* OwnedRecord(Shard& shard, const std::string& key, std::size_t hash,
                             uint64_t token) {
    auto it = shard.records.find(key, hash);
    if (it == shard.records.end()) return nullptr;
    Record& r = it->second;
    if (r.state != RecordState::kInProgress || r.token != token) return nullptr;
    return &r;
  }

  static absl::Status Fenced(Shard& shard, std::string_view operation) {
    Counters::Add(shard.counters.fenced);
    return internal::FencedError("memory", operation);
  }

  static bool IsPurgeable(const Record& r, int64_t now) {
    if (r.state == RecordState::kInProgress && r.lease_until > now) return false;
    return r.expires_at <= now;
  }

  // Takes one slot of the capacity for a new record, evicting if configured (I7).
  absl::Status ReserveSlot(Shard& shard) {
    if (count_.fetch_add(1, std::memory_order_relaxed) < options_.capacity) {
      return absl::OkStatus();
    }
    if (options_.evict_oldest && EvictOldest(shard)) {
      return absl::OkStatus();  // the evicted record's slot is reused
    }
    count_.fetch_sub(1, std::memory_order_relaxed);
    Counters::Add(shard.counters.capacity_rejections);
    return absl::ResourceExhaustedError(
        absl::StrCat("in-memory store is full (capacity=", options_.capacity,
                     options_.evict_oldest ? "; no COMPLETED record to evict in this shard"
                                           : "; eviction is off",
                     "); the claim was not recorded"));
  }

  // Evicts the oldest COMPLETED record of `shard`. Returns whether one was.
  //
  // Only COMPLETED records: a RELEASED record, or an IN_PROGRESS one whose lease ended, holds the
  // attempt count that max_attempts is judged by; evicting it would let the next claim start
  // again at attempt 1, so a poison message would never be dead-lettered. A live claim is never
  // evicted either. Evicting a COMPLETED record only forgets a duplicate early, which is what the
  // capacity bound trades (I7).
  bool EvictOldest(Shard& shard) {
    for (auto q = shard.order.begin(); q != shard.order.end();) {
      auto it = shard.records.find(q->first);
      if (it == shard.records.end() || it->second.seq != q->second) {
        q = shard.order.erase(q);  // its record was purged or replaced
        continue;
      }
      if (it->second.state != RecordState::kCompleted) {
        ++q;
        continue;
      }
      shard.records.erase(it);
      shard.order.erase(q);
      Counters::Add(shard.counters.evictions);
      return true;
    }
    return false;
  }

  // Drops queue entries of records that no longer exist, so the queue stays O(records).
  static void CompactOrder(Shard& shard) {
    if (shard.order.size() <= 2 * shard.records.size() + 64) return;
    std::deque<std::pair<std::string, uint64_t>> kept;
    for (auto& entry : shard.order) {
      auto it = shard.records.find(entry.first);
      if (it != shard.records.end() && it->second.seq == entry.second) {
        kept.push_back(std::move(entry));
      }
    }
    shard.order.swap(kept);
  }

  MemoryStoreOptions options_;
  Clock* clock_;
  std::vector<Shard> shards_;
  std::vector<VersionShard> version_shards_;
  const int shard_bits_;  // log2 of the number of shards
  std::atomic<std::size_t> count_{0};
  std::atomic<std::size_t> version_count_{0};
  std::atomic<uint64_t> next_seq_{0};
  // WaitForCompletion: waiters block on wait_changed_ until wait_generation_ moves. Writers that
  // end a claim notify only when waiters_ > 0, so the hot path pays one relaxed load.
  std::atomic<int> waiters_{0};
  std::mutex wait_mu_;
  std::condition_variable wait_changed_;
  uint64_t wait_generation_ = 0;  // guarded by wait_mu_

  void NotifyWaiters() {
    if (waiters_.load(std::memory_order_seq_cst) == 0) return;
    {
      std::lock_guard<std::mutex> lock(wait_mu_);
      ++wait_generation_;
    }
    wait_changed_.notify_all();
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<DedupStore>> NewMemoryStore(MemoryStoreOptions options) {
  if (options.capacity == 0) return absl::InvalidArgumentError("capacity must be > 0");
  if (options.max_version_keys == 0) {
    return absl::InvalidArgumentError("max_version_keys must be > 0");
  }
  if (options.max_id_bytes == 0) return absl::InvalidArgumentError("max_id_bytes must be > 0");
  if (options.retention.count() <= 0) return absl::InvalidArgumentError("retention must be > 0");
  if (options.shards > 4096) return absl::InvalidArgumentError("shards must be <= 4096");
  return std::unique_ptr<DedupStore>(new MemoryStore(std::move(options)));
}

}  // namespace idem

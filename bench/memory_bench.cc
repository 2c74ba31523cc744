// The in-memory backend: idem's lease mode (Processor over NewMemoryStore) against a raw
// absl::flat_hash_map claim + mark-complete, per message (1 and 2 threads) and in batches.
//
// The raw baseline does what a hand-written in-process dedup needs and nothing more: the same
// 16 shards as the store, each an absl::flat_hash_map under an absl::Mutex (so it may be shared by
// threads), keyed by the id; a claim inserts {in progress, lease deadline} under the shard's lock,
// the handler runs unlocked, and the completion relocks to mark the record completed with its
// retention deadline. A record found completed is a duplicate; one found in progress with a live
// lease is skipped. It keeps no fencing token, fingerprint, attempt count, capacity bound or stats.
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/hash/hash.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "bench_util.h"
#include "benchmark/benchmark.h"
#include "idem/memory_store.h"
#include "idem/observer.h"
#include "idem/processor.h"

namespace idem::bench {
namespace {

constexpr int64_t kLeaseMs = 30'000;
constexpr int64_t kRetentionMs = 7LL * 24 * 3600 * 1000;
// Far above what one benchmark run inserts: the capacity bound is not what is measured.
constexpr std::size_t kCapacity = std::size_t{1} << 26;

int64_t SteadyMillis() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

class RawDedupMap {
 public:
  // True when the caller now owns the id and should run the handler.
  bool Claim(std::string_view id) {
    const absl::string_view key(id.data(), id.size());
    Shard& shard = ShardOf(key);
    const int64_t now = SteadyMillis();
    absl::MutexLock lock(&shard.mu);
    auto [it, inserted] = shard.map.try_emplace(key, Record{false, now + kLeaseMs, 0});
    if (inserted) return true;
    Record& record = it->second;
    if (record.completed || record.lease_until_ms > now) return false;
    record.lease_until_ms = now + kLeaseMs;  // an expired lease: take it over
    return true;
  }

  void Complete(std::string_view id) {
    const absl::string_view key(id.data(), id.size());
    Shard& shard = ShardOf(key);
    const int64_t now = SteadyMillis();
    absl::MutexLock lock(&shard.mu);
    auto it = shard.map.find(key);
    if (it == shard.map.end()) return;
    it->second = Record{true, 0, now + kRetentionMs};
  }

 private:
  struct Record {
    bool completed;
    int64_t lease_until_ms;
    int64_t expires_at_ms;
  };
  struct alignas(64) Shard {
    absl::Mutex mu;
    absl::flat_hash_map<std::string, Record> map ABSL_GUARDED_BY(mu);
  };

  Shard& ShardOf(absl::string_view key) {
    return shards_[absl::Hash<absl::string_view>{}(key) % 16];
  }

  std::array<Shard, 16> shards_;
};

// Shared by the threads of one run; made and destroyed by thread 0 (the benchmark loop's start
// and end are barriers).
std::unique_ptr<RawDedupMap> raw_map;
std::unique_ptr<DedupStore> store;
std::unique_ptr<Processor> processor;

// What a metrics observer does per message, at the least: count the outcome and add up the
// times, with relaxed atomics (idem::prometheus does more).
class CountingObserver final : public ProcessObserver {
 public:
  void OnMessage(const ProcessEvent& event) noexcept override {
    const std::size_t i = event.outcome.has_value() ? static_cast<std::size_t>(*event.outcome) : 6;
    counts_[i].fetch_add(1, std::memory_order_relaxed);
    nanos_.fetch_add(event.handler_time.count() + event.store_time.count(),
                     std::memory_order_relaxed);
  }

 private:
  std::array<std::atomic<uint64_t>, 7> counts_{};
  std::atomic<int64_t> nanos_{0};
};
CountingObserver counting_observer;

void SetUpIdem(ProcessObserver* observer = nullptr) {
  MemoryStoreOptions options;
  options.capacity = kCapacity;
  absl::StatusOr<std::unique_ptr<DedupStore>> made = NewMemoryStore(options);
  if (!made.ok()) {
    std::fprintf(stderr, "memory store: %s\n", made.status().ToString().c_str());
    std::abort();
  }
  store = std::move(made).value();
  absl::StatusOr<Processor> p =
      Processor::Create(*store, std::string(kScope), {.observer = observer});
  if (!p.ok()) std::abort();
  processor = std::make_unique<Processor>(*std::move(p));
}

void TearDownIdem() {
  processor.reset();
  store.reset();
}

void RawPerMessage(benchmark::State& state) {
  if (state.thread_index() == 0) raw_map = std::make_unique<RawDedupMap>();
  MessageStream stream;
  for (auto _ : state) {
    const std::string_view id = stream.Next(state);
    if (raw_map->Claim(id)) {
      benchmark::DoNotOptimize(id.data());
      raw_map->Complete(id);
    }
  }
  state.SetItemsProcessed(state.iterations());
  if (state.thread_index() == 0) raw_map.reset();
}

// The per-message path with an observer set (`observed`) or none: the observer hook's cost is
// the ratio of the two in one run.
void IdemPerMessageWith(benchmark::State& state, bool observed) {
  if (state.thread_index() == 0) SetUpIdem(observed ? &counting_observer : nullptr);
  MessageStream stream;
  for (auto _ : state) {
    absl::StatusOr<ProcessResult> result =
        processor->Process(Message{.id = stream.Next(state), .payload = kPayload}, TrivialHandler);
    if (!result.ok()) {
      state.SkipWithError(result.status().ToString().c_str());
      break;
    }
  }
  state.SetItemsProcessed(state.iterations());
  if (state.thread_index() == 0) TearDownIdem();
}

void IdemPerMessage(benchmark::State& state) { IdemPerMessageWith(state, false); }
void IdemPerMessageObserved(benchmark::State& state) { IdemPerMessageWith(state, true); }

void RawBatch(benchmark::State& state, std::size_t batch) {
  raw_map = std::make_unique<RawDedupMap>();
  MessageStream stream;
  std::vector<Message> messages(batch);
  std::vector<bool> owned(batch);
  for (auto _ : state) {
    stream.NextBatch(state, messages);
    for (std::size_t i = 0; i < batch; ++i) owned[i] = raw_map->Claim(messages[i].id);
    for (std::size_t i = 0; i < batch; ++i) {
      if (owned[i]) benchmark::DoNotOptimize(messages[i].id.data());
    }
    for (std::size_t i = 0; i < batch; ++i) {
      if (owned[i]) raw_map->Complete(messages[i].id);
    }
  }
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(batch));
  raw_map.reset();
}

void IdemBatch(benchmark::State& state, std::size_t batch) {
  SetUpIdem();
  MessageStream stream;
  std::vector<Message> messages(batch);
  for (auto _ : state) {
    stream.NextBatch(state, messages);
    std::vector<absl::StatusOr<ProcessResult>> results =
        processor->ProcessBatch(messages, TrivialHandler);
    if (!results.front().ok()) {
      state.SkipWithError(results.front().status().ToString().c_str());
      break;
    }
  }
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(batch));
  TearDownIdem();
}

void RegisterAll() {
  Register("memory", "lease", "raw", RawPerMessage);
  Register("memory", "lease", "idem", IdemPerMessage);
  Register("memory", "lease", "idem_observed", IdemPerMessageObserved);
  Register("memory", "lease_2threads", "raw", RawPerMessage)->Threads(2);
  Register("memory", "lease_2threads", "idem", IdemPerMessage)->Threads(2);
  for (std::size_t batch : {1, 10, 100, 1000}) {
    const std::string pattern = "batch" + std::to_string(batch);
    Register("memory", pattern, "raw", [batch](benchmark::State& s) { RawBatch(s, batch); });
    Register("memory", pattern, "idem", [batch](benchmark::State& s) { IdemBatch(s, batch); });
  }
}

}  // namespace
}  // namespace idem::bench

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  idem::bench::RegisterAll();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

// The in-memory DedupStore: sharded abseil hash maps under mutexes.
//
// For tests and for single-process consumers whose dedup window may be lost on restart. It honours
// every invariant of docs/design.md ("Invariants") within one process, and bounds its memory (I7):
// once `capacity` dedup records are held, a new claim fails closed with ResourceExhausted, or,
// with `evict_oldest`, evicts the oldest COMPLETED record of its shard. Only COMPLETED records are
// evicted: never a claim, live or with an ended lease, nor a RELEASED record, because those hold
// the attempt count that max_attempts is judged by. When the shard holds no COMPLETED record the
// claim fails closed as without eviction. Rejections and evictions are counted in Stats().
//
// Thread-safety: safe for concurrent use; each shard has its own mutex.
#ifndef IDEM_MEMORY_STORE_H_
#define IDEM_MEMORY_STORE_H_

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>

#include "idem/open_options.h"
#include "idem/store.h"
#include "idem/types.h"

namespace idem {

struct MemoryStoreOptions {
  // Most dedup records held at once (I7). Must be > 0.
  std::size_t capacity = 1'000'000;
  // Most version-gate keys held at once; past it the gate fails closed (ResourceExhausted).
  std::size_t max_version_keys = 1'000'000;
  // When full: false (default) fails closed; true evicts the oldest COMPLETED record of the
  // claim's shard, and fails closed when that shard holds none.
  bool evict_oldest = false;
  // How long COMPLETED records are kept when Complete does not say.
  std::chrono::milliseconds retention = kDefaultRetention;
  std::size_t max_id_bytes = kDefaultMaxIdBytes;
  // Number of independently locked shards (rounded up to a power of two).
  std::size_t shards = 16;
  // Time source; nullptr means SteadyClock(). Not owned; must outlive the store.
  Clock* clock = nullptr;
  // Fencing token source; nullptr means a per-store random source. Tokens must be non-zero and
  // unique per claim. Tests inject a counter for determinism. It is called under a shard's lock:
  // REQUIRES it does not call back into an idem store.
  std::function<uint64_t()> token_source;
};

// REQUIRES: options.capacity > 0. Returns InvalidArgument for a bad option.
[[nodiscard]] absl::StatusOr<std::unique_ptr<DedupStore>> NewMemoryStore(
    MemoryStoreOptions options = {});

// The options a memory: URI names (?capacity=N&evict=1&...), as OpenMemoryStoreFromUri reads
// them; clock and token source are left unset. InvalidArgument for a malformed URI or an
// unknown option. Programs that open a store by URI and must know its bound (idem-sim checks I7
// against it) read it here rather than parse the URI themselves.
[[nodiscard]] absl::StatusOr<MemoryStoreOptions> ParseMemoryUri(std::string_view uri);

// Parses memory: with options ?capacity=N&max_version_keys=N&evict=0|1&retention_ms=N&shards=N&
// max_id_bytes=N, then NewMemoryStore with `options`' clock and token source. Called by OpenStore
// for memory: URIs. InvalidArgument for a malformed URI or an unknown option.
[[nodiscard]] absl::StatusOr<std::unique_ptr<DedupStore>> OpenMemoryStoreFromUri(
    std::string_view uri, const OpenOptions& options = {});

}  // namespace idem

#endif  // IDEM_MEMORY_STORE_H_

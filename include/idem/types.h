// Plain value types shared by every part of idem: payload fingerprints, version stamps, clocks,
// and the validation rules for scopes, message ids and version keys (docs/design.md, "Records and
// states").
//
// Thread-safety: value types are safe to copy and read from any thread. SystemClock() and
// SteadyClock() are shared and thread-safe; ManualClock is thread-safe (atomic).
#ifndef IDEM_TYPES_H_
#define IDEM_TYPES_H_

#include <atomic>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace idem {

// Longest message id or version key accepted by default. Longer ones are refused with
// InvalidArgument, never truncated.
inline constexpr std::size_t kDefaultMaxIdBytes = 1024;
// Longest scope accepted.
inline constexpr std::size_t kMaxScopeBytes = 128;

// A stable 128-bit payload fingerprint (XXH3-128). Stable across processes, builds and machines,
// so it can be stored and compared later by another consumer.
struct Fingerprint {
  uint64_t high = 0;
  uint64_t low = 0;

  // XXH3-128 of `payload`.
  static Fingerprint Of(std::string_view payload);

  // 16 bytes, big-endian high then low: the form stored by backends.
  std::string ToBytes() const;
  // REQUIRES: bytes.size() == 16, else returns a zero fingerprint.
  static Fingerprint FromBytes(std::string_view bytes);
  // 32 lowercase hex digits, for logs and operators.
  std::string ToHex() const;

  friend bool operator==(const Fingerprint&, const Fingerprint&) = default;
};

// A version stamp for the per-key version gate: the event carries `version` of business key
// `key` (user id, order id). Versions are compared exactly over the full uint64 range.
struct VersionStamp {
  std::string_view key;
  uint64_t version = 0;
};

// Time source used by stores for leases and retention. Milliseconds; the epoch is the clock's.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual int64_t NowMillis() = 0;
};

// Wall clock, milliseconds since the Unix epoch. Comparable across processes of one machine;
// the SQLite store uses it because several processes share one database file.
Clock& SystemClock();
// Monotonic clock of this process. The in-memory store uses it by default.
Clock& SteadyClock();

// A clock that only moves when told to: deterministic tests of leases and retention.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(int64_t start_millis = 1'000'000) : now_(start_millis) {}
  int64_t NowMillis() override { return now_.load(std::memory_order_acquire); }
  void Advance(int64_t millis) { now_.fetch_add(millis, std::memory_order_acq_rel); }
  void Set(int64_t millis) { now_.store(millis, std::memory_order_release); }

 private:
  std::atomic<int64_t> now_;
};

// Returns OK if `scope` is 1..128 bytes of [A-Za-z0-9._:/-]; InvalidArgument otherwise.
[[nodiscard]] absl::Status ValidateScope(std::string_view scope);
// Returns OK if `id` is 1..max_bytes bytes (any bytes, NUL and 0xFF included);
// InvalidArgument otherwise. `what` names the field in the error ("message id", "version key").
[[nodiscard]] absl::Status ValidateId(std::string_view id,
                                      std::size_t max_bytes = kDefaultMaxIdBytes,
                                      std::string_view what = "message id");

}  // namespace idem

#endif  // IDEM_TYPES_H_

// The Redis backend: the shared store for consumers on many machines.
//
// Each dedup record is one packed string (state, token, attempts, fingerprint, result; layout in
// src/redis_record.h) and each version-gate entry a 20-digit string, under keys that are an
// injective, binary-safe encoding of (key_prefix, scope, id). Every state change that reads
// before it writes (a takeover, complete with its version gate, release, extend) is one Lua
// script, loaded once with SCRIPT LOAD and run with EVALSHA (falling back to EVAL when a
// restarted server answers NOSCRIPT). The claim of a new id is itself one atomic command, a plain
// `SET key record NX GET PX ttl` (Redis >= 7.0; against an older server every claim goes through
// the claim script): it inserts the record if the key is absent and otherwise returns the
// record unchanged, which already answers a duplicate or a conflict; only an id that is
// IN_PROGRESS or RELEASED is then decided by the claim script. Leases and retention are the keys'
// TTLs, counted by the server's clock, never the client's, so consumers on machines with skewed
// clocks agree; the lease ends reported (ClaimResult::lease_until_ms, Extend) come from a TIME
// read in the same round trip just before, so they are never later than the server's. Versions
// are compared exactly over the full uint64 range. ClaimBatch and CompleteBatch are pipelined: one
// round trip per batch (plus one for the claims of ids that are IN_PROGRESS or RELEASED).
//
// Records expire by themselves: a COMPLETED record after its retention, an IN_PROGRESS or
// RELEASED one after its lease plus the store's retention. PurgeExpired therefore does nothing
// and returns 0. Version-gate entries never expire.
//
// A key under the prefix that is not such a record fails the call and is left as it is: of
// another type (WRONGTYPE; e.g. a hash written by idem before this layout) FailedPrecondition,
// a string that is not a record DataLoss. Delete such keys, or use another key_prefix.
//
// What the guarantees assume of the server (checked at open, see `warning`):
//  - `maxmemory-policy noeviction`. Any eviction policy may silently drop dedup records and
//    version-gate entries: duplicates run again and stale events are applied.
//  - `appendonly yes`. Without the AOF a restart loses everything since the last RDB snapshot.
//    With `appendfsync always` an acknowledged completion survives a server crash and power loss;
//    with `everysec` (Redis's default) it survives a server crash, and power loss can lose about
//    the last second; with `no` the OS decides when data reaches the disk.
//  - a primary, not a replica that may be promoted: replication is asynchronous, so a failover
//    can lose the last acknowledged writes.
// A lost record makes a redelivery run its handler again (at-least-once still holds; I3's
// "attributable" fault is the store's data loss).
//
// Errors: InvalidArgument (bad options or input), Unavailable (cannot connect, connection dropped,
// server loading or busy; retry the call), DeadlineExceeded (connect or I/O timeout: a state
// change may or may not have been applied), Unauthenticated (AUTH refused: NOAUTH, WRONGPASS),
// PermissionDenied (the ACL user may not run a command: NOPERM), ResourceExhausted (server OOM),
// Aborted (the token no longer owns the claim), FailedPrecondition (SELECT of a db the server does
// not have; a key of another type under the prefix), DataLoss (a string under the prefix that is
// not a record), Internal (protocol error or unexpected reply).
// Passwords never appear in errors, warnings or logs.
//
// Thread-safety: a store is safe for concurrent use. It keeps a pool of up to `pool_size`
// connections; a call holds one connection for its round trip and waits when all are busy.
// While it writes, it blocks SIGPIPE in the calling thread (as libpq does), so a connection the
// server dropped is an Unavailable status, never a signal; the process's handlers are untouched.
#ifndef IDEM_REDIS_STORE_H_
#define IDEM_REDIS_STORE_H_

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "idem/open_options.h"
#include "idem/store.h"
#include "idem/types.h"

namespace idem {

struct RedisStoreOptions {
  // TCP server. Ignored when `unix_socket` is set.
  std::string host = "127.0.0.1";
  int port = 6379;
  // Path of the server's Unix socket; when non-empty, used instead of host and port.
  std::string unix_socket;
  // Logical database (SELECT), re-selected on every reconnect.
  int db = 0;
  // ACL user (Redis 6+); empty means the default user. Used only with a password.
  std::string user;
  // Sent with AUTH on every (re)connect when non-empty. Never logged or put in an error.
  std::string password;
  // First component of every key. Stores with different prefixes never see each other's records.
  std::string key_prefix = "idem";
  // Name set with CLIENT SETNAME on each connection, for CLIENT LIST; empty: none.
  std::string client_name;

  // Bound on connecting (TCP or Unix), and on each command's round trip. Must be > 0.
  std::chrono::milliseconds connect_timeout{2'000};
  std::chrono::milliseconds io_timeout{2'000};
  // Most connections held at once; calls beyond it wait for a free one. Must be > 0.
  std::size_t pool_size = 4;
  // Group commit (docs/design.md, "Group commit"): the most concurrent Claim calls (and,
  // separately, Complete calls) sent in one pipelined round trip, 1..1024. Calls that arrive while
  // a round trip is in flight queue and go together in the next one; a call alone is sent at
  // once, as with 1 (every call a round trip of its own).
  std::size_t group_limit = 64;
  // Retention of COMPLETED records when Complete does not say, and how long an abandoned
  // IN_PROGRESS or RELEASED record is kept after its lease.
  std::chrono::milliseconds retention = kDefaultRetention;
  std::size_t max_id_bytes = kDefaultMaxIdBytes;
  // After a failed connect, calls fail fast with Unavailable until the next attempt is due. The
  // delay starts at `reconnect_backoff_min`, doubles with each failure up to
  // `reconnect_backoff_max`, and resets after a successful connect.
  std::chrono::milliseconds reconnect_backoff_min{20};
  std::chrono::milliseconds reconnect_backoff_max{2'000};

  // Receives one line per unsafe server setting found at open (`appendonly no`, `appendfsync
  // no`, a `maxmemory-policy` other than `noeviction`), or a note that the settings could not be
  // read (CONFIG disabled or not permitted). Opening still succeeds. Empty: lines go to stderr.
  std::function<void(std::string_view)> warning;
  // Fencing token source; empty means a random source. Tokens must be non-zero and unique per
  // claim across every consumer of the store.
  std::function<uint64_t()> token_source;
};

// Connects (with AUTH and SELECT), reads the server's persistence and eviction settings
// (reporting unsafe ones through options.warning) and loads the Lua scripts.
// Errors: InvalidArgument (bad options), Unavailable, DeadlineExceeded, Unauthenticated,
// PermissionDenied, FailedPrecondition.
[[nodiscard]] absl::StatusOr<std::unique_ptr<DedupStore>> NewRedisStore(RedisStoreOptions options);

// Parses a Redis URI into options, without connecting:
//   redis://[[user]:password@]host[:port][/db][?option=value&...]
//   unix://[[user]:password@]/path/to/redis.sock[?option=value&...]
// host may be a name, an IPv4 address or a bracketed IPv6 address; port defaults to 6379, db to 0.
// User, password and option values are percent-decoded. Options: prefix, db, timeout_ms (connect
// and I/O), connect_timeout_ms, io_timeout_ms, pool_size, group_limit (1..1024), retention_ms,
// max_id_bytes, client_name, user, password.
// Errors: InvalidArgument for a malformed URI, an unknown or repeated option, or `rediss://`
// (this build's hiredis has no TLS). The error text never contains the password.
[[nodiscard]] absl::StatusOr<RedisStoreOptions> ParseRedisUri(std::string_view uri);

// ParseRedisUri, then NewRedisStore with `options`' warning sink and token source (the clock is the
// server's). Called by OpenStore for redis://, rediss:// and unix://.
[[nodiscard]] absl::StatusOr<std::unique_ptr<DedupStore>> OpenRedisStoreFromUri(
    std::string_view uri, const OpenOptions& options = {});

}  // namespace idem

#endif  // IDEM_REDIS_STORE_H_

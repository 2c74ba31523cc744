// Redis Cluster routing for the Redis store, on plain hiredis (0.14 has no cluster API): hash
// slots, the slot map read with CLUSTER SLOTS, MOVED / ASK redirections, TRYAGAIN / CLUSTERDOWN
// retries, and one connection pool per node. Private to the Redis backend.
//
// As cluster clients do (redis-plus-plus, Lettuce, redis-py): a command goes to the master that
// the slot map names for its key's slot. MOVED says the slot lives elsewhere now: the slot is
// pointed at the new node at once, the whole map is read again, and the command is sent again.
// ASK says the slot is being migrated and this key already moved: the command is sent once to the
// named node, preceded by ASKING, and the map is left as it is. TRYAGAIN (a multi-key command
// during a migration) and CLUSTERDOWN (no quorum, a slot without a master) are retried after a
// growing pause, at most `max_retries` times, then returned as Unavailable. A node that cannot be
// reached before anything was sent to it (connection refused, its pool in reconnect backoff) is
// handled the same way, with the map read again before each retry: during a failover the slot map
// names the new master as soon as it is promoted. A connection that breaks after a command was
// sent is never retried: the command may have run, so its caller gets the status.
#ifndef IDEM_BACKENDS_REDIS_SRC_REDIS_CLUSTER_H_
#define IDEM_BACKENDS_REDIS_SRC_REDIS_CLUSTER_H_

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "redis_connection.h"

struct redisReply;

namespace idem::internal::redis {

inline constexpr int kClusterSlots = 16384;

// CRC16 (XMODEM: polynomial 0x1021, initial value 0, no reflection), as the Redis Cluster
// specification defines it.
uint16_t Crc16(std::string_view bytes);

// The hash slot of `key`: CRC16 of the hash tag (the bytes between the first '{' and the first
// '}' after it, when there are any) or of the whole key, modulo 16384.
int KeySlot(std::string_view key);

// Appends the hash tag of cluster mode's keys: "{" 16 hex digits "}", a 64-bit FNV-1a hash of
// (prefix, scope, route key), each length-prefixed. Every key of one message carries the tag of
// its route key, so a record and the version-gate entry it raises share one slot. The tag only
// places keys; the encoding after it (redis_keys.h) keeps keys distinct.
void AppendClusterTag(std::string* out, std::string_view prefix, std::string_view scope,
                      std::string_view route);
inline constexpr std::size_t kClusterTagSize = 18;

struct NodeAddress {
  std::string host;
  int port = 0;
  bool operator==(const NodeAddress& other) const = default;
  // "127.0.0.1:7000", "[::1]:7000"
  std::string Endpoint() const;
};

// One range of CLUSTER SLOTS: slots first..last and the master serving them.
struct SlotRange {
  int first = 0;
  int last = 0;
  NodeAddress master;
};

// Parses a CLUSTER SLOTS reply. A master whose host is empty or "?" (its endpoint unknown to the
// node asked) is at `asked_host`. Internal for any reply of another shape (slots out of range,
// ports out of 1..65535, hosts longer than 255 bytes).
absl::StatusOr<std::vector<SlotRange>> ParseClusterSlots(const redisReply* reply,
                                                         std::string_view asked_host);

// A MOVED or ASK error reply: "MOVED 3999 127.0.0.1:6381", "ASK 3999 127.0.0.1:6381". An empty
// host (an endpoint the node does not know) is `asked_host`.
struct Redirect {
  bool ask = false;
  int slot = 0;
  NodeAddress target;
};
// nullopt unless `error` is a well-formed MOVED or ASK.
std::optional<Redirect> ParseRedirect(std::string_view error, std::string_view asked_host);

// Parses a seed list, "host[:port],host[:port],..." (port 6379 when absent), as the store URI
// grammar reads it: `host` is everything up to the last port, `last_port` that port. A single seed
// may be an IPv6 address (given in brackets in the URI); in a list, hosts hold no ':'.
// InvalidArgument naming the fault (empty host, bad port, too many seeds): never quoting a value.
inline constexpr std::size_t kMaxClusterSeeds = 64;
absl::StatusOr<std::vector<NodeAddress>> ParseSeedList(std::string_view host,
                                                       std::optional<int64_t> last_port);

// What a router counted since it was made.
struct ClusterCounts {
  uint64_t moved = 0;
  uint64_t ask = 0;
  uint64_t tryagain = 0;
  uint64_t clusterdown = 0;
  uint64_t unreachable = 0;  // a node could not be reached before sending: retried
  uint64_t refreshes = 0;    // slot map reads
};

class ClusterRouter {
 public:
  struct Options {
    // AUTH, CLIENT SETNAME and timeouts for every node; host and port are replaced by each node's.
    ConnectParams params;
    std::vector<NodeAddress> seeds;
    std::size_t pool_size = 4;
    std::chrono::milliseconds backoff_min{20};
    std::chrono::milliseconds backoff_max{2'000};
    int max_redirects = 5;
    int max_retries = 5;
  };
  explicit ClusterRouter(Options options);

  // Reads the slot map from a known node or a seed. Unavailable when none answers with a map
  // that covers every slot... or the node's status when all failed the same way.
  absl::Status Refresh();

  // One command of a Run: the slot of its key and whether it is a script call (sent again with
  // its EVAL form after NOSCRIPT).
  struct Request {
    int slot = 0;
    bool script = false;
  };
  // Writes command `i`'s arguments into `argv`: the EVALSHA form, or with `eval` the EVAL form.
  using BuildFn = std::function<void(std::size_t i, bool eval, std::vector<std::string_view>*)>;
  struct Result {
    // Per command: its reply (an error reply other than a redirection is kept as one), or nullptr
    // with failures[i] saying why.
    std::vector<ReplyPtr> replies;
    std::vector<absl::Status> failures;
    // With `read_time`: the clock (ms) of the node that answered command i, read by a TIME sent
    // in the same pipeline just ahead of it.
    std::vector<int64_t> server_ms;
  };
  // Runs the commands: grouped by node, each group pipelined on one of its node's connections,
  // every group written before any reply is read, so a batch costs one round trip per node (in
  // parallel), plus one per redirection or retry.
  Result Run(std::span<const Request> requests, const BuildFn& build, bool read_time,
             std::string_view what);

  // A connection to the master of `slot` (for a single command outside Run's retries).
  absl::StatusOr<Pool::Handle> AcquireForSlot(int slot);
  ConnectParams ParamsForSlot(int slot);
  // The masters of the current slot map, sorted by endpoint.
  std::vector<NodeAddress> Masters();
  absl::StatusOr<Pool::Handle> AcquireAt(const NodeAddress& node);

  ClusterCounts Counts() const;

 private:
  struct Node {
    NodeAddress address;
    std::unique_ptr<Pool> pool;
  };
  // The node at `address`, made (with its pool) if new. Nodes are never removed, so the pointer
  // stays valid for the router's life.
  Node* NodeAt(const NodeAddress& address);
  Node* NodeForSlot(int slot);

  const Options options_;
  std::mutex nodes_mu_;
  std::vector<std::unique_ptr<Node>> nodes_;  // guarded by nodes_mu_
  std::shared_mutex map_mu_;
  std::array<Node*, kClusterSlots> slots_{};  // guarded by map_mu_
  std::mutex refresh_mu_;                     // one slot-map read at a time

  std::atomic<uint64_t> moved_{0};
  std::atomic<uint64_t> ask_{0};
  std::atomic<uint64_t> tryagain_{0};
  std::atomic<uint64_t> clusterdown_{0};
  std::atomic<uint64_t> unreachable_{0};
  std::atomic<uint64_t> refreshes_{0};
};

}  // namespace idem::internal::redis

#endif  // IDEM_BACKENDS_REDIS_SRC_REDIS_CLUSTER_H_

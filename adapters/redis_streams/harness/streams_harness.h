// The Redis Streams kill harness, shared by the adapter's kill tests and idem_streams_demo: a
// plain hiredis client, the entry mix (duplicates, conflicting payloads, poison entries), a fleet
// of stream_worker consumer processes that are SIGKILLed and restarted at random points, and the
// checks of what the streams, the effect ledger and the delivery log hold afterwards.
//
// Internal to idem (not installed): the checks return lists of violations instead of asserting,
// so a test turns them into expectations and the demo into its report.
//
// Thread-safety: none of these types is safe for concurrent use.
#ifndef IDEM_ADAPTERS_REDIS_STREAMS_HARNESS_STREAMS_HARNESS_H_
#define IDEM_ADAPTERS_REDIS_STREAMS_HARNESS_STREAMS_HARNESS_H_

#include <hiredis/hiredis.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "idem/store.h"

namespace idem::streams_harness {

struct ReplyDeleter {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using ReplyPtr = std::unique_ptr<redisReply, ReplyDeleter>;

// A plain hiredis connection for the harness's own commands (producing, reading streams back).
class RedisClient {
 public:
  explicit RedisClient(int port);
  bool ok() const { return ctx_ != nullptr && ctx_->err == 0; }

  ReplyPtr Cmd(const std::vector<std::string>& args);
  // An integer reply, or -1.
  long long Int(const std::vector<std::string>& args);
  // XADD stream * fields...: the new entry id, or "" on an error.
  std::string Add(const std::string& stream, const std::vector<std::string>& fields);
  // XRANGE - +: entry id -> fields.
  std::vector<std::pair<std::string, std::map<std::string, std::string>>> Range(
      const std::string& stream);
  // XPENDING's count of entries delivered and not acked, or -1.
  long long Pending(const std::string& stream, const std::string& group);

 private:
  std::unique_ptr<redisContext, decltype(&redisFree)> ctx_;
};

// One entry to produce: its id field and the other fields.
struct Spec {
  std::string id;
  std::vector<std::string> fields;
  enum Kind { kNormal, kDuplicate, kConflict, kPoison } kind = kNormal;
};

// `ids` distinct ids m0..m<ids-1>, `duplicates` producer duplicates (an id sent again with the
// same payload, three entries later), `conflicts` ids sent again with another payload (at the
// end) and `poison` entries x0.. whose handler always throws, spread through the first part.
// REQUIRES: duplicates <= ids / 6, conflicts * 37 + 7 < ids, poison * 40 + 20 <= size so far.
std::vector<Spec> MakeSpecs(int ids, int duplicates, int conflicts, int poison);

struct FleetOptions {
  std::string worker;                  // the executable
  std::vector<std::string> worker_prefix;  // arguments before stream_worker's own
  int port = 0;
  std::string stream;
  std::string group = "g";
  std::string mode = "lease";  // "lease" or "tx" (see stream_worker_main.cc)
  std::string path;            // the ledger file (lease) or the SQLite file (tx)
  int lease_ms = 600;
  int max_attempts = 3;
  std::string delivery_log;  // lease mode: one line per delivery when set
  uint32_t seed = 12345;
  // The pause before each SIGKILL, drawn uniformly from this range.
  std::chrono::milliseconds kill_pause_min{20};
  std::chrono::milliseconds kill_pause_max{80};
  std::chrono::seconds drain_timeout{40};
};

// Consumer processes of one group; SIGKILLs whatever is still running when destroyed.
class ConsumerFleet {
 public:
  explicit ConsumerFleet(FleetOptions options);
  ~ConsumerFleet();
  ConsumerFleet(const ConsumerFleet&) = delete;
  ConsumerFleet& operator=(const ConsumerFleet&) = delete;

  pid_t Spawn();
  // SIGKILLs a random live consumer and starts a new one in its place.
  void KillOne();

  // Starts `consumers`, produces `specs` in three chunks with `kills` SIGKILLs in between and
  // after, waits until every entry has an outcome and nothing is pending, then stops the
  // consumers with SIGTERM. Returns what went wrong (empty: nothing).
  std::vector<std::string> Run(RedisClient& redis, const std::vector<Spec>& specs, int consumers,
                               int kills);

  const std::string& stream() const { return options_.stream; }
  const std::vector<std::string>& entry_ids() const { return entry_ids_; }
  const std::set<pid_t>& killed() const { return killed_; }
  int started() const { return next_; }

 private:
  FleetOptions options_;
  std::mt19937 rng_;
  int next_ = 0;
  std::vector<pid_t> alive_;
  std::set<pid_t> killed_;
  std::vector<std::string> entry_ids_;
};

// What the outcome and dead-letter streams say after a run.
struct StreamReport {
  std::map<std::string, std::string> outcome;  // entry id -> final outcome
  long long pending = 0;
  std::size_t outcome_records = 0;  // entries of the outcome stream (one per final outcome)
  std::size_t processed = 0, duplicates = 0, conflicts = 0, dead_lettered = 0, other = 0;
  std::size_t dead_letters = 0;           // entries of the dead-letter stream
  std::size_t expected_dead_letters = 0;  // poison entries + one per conflicting pair
  std::vector<std::string> violations;
};

// Each entry has exactly one final outcome, nothing is pending, every id ran at most once to
// kProcessed, and the dead-letter stream holds exactly the poison entries (max_attempts) plus one
// entry of each conflicting pair (conflict).
StreamReport CheckStreams(RedisClient& redis, const std::string& stream,
                          const std::vector<std::string>& entry_ids,
                          const std::vector<Spec>& specs);

// What the lease-mode effect ledger ("id token pid" per handler run) says.
struct LedgerReport {
  std::size_t runs = 0;        // handler runs (effects started)
  std::size_t extra_runs = 0;  // runs of an id after its first
  std::size_t unexplained = 0;  // extra runs whose earlier run was not in a SIGKILLed process
  std::vector<std::string> violations;
};

// Every non-poison id ran and is COMPLETED in `store` (scope `scope`) with the last run's token;
// no poison id ran; a second run of an id is explained only by a SIGKILLed process's earlier run.
LedgerReport CheckLedger(const std::string& ledger_path, const std::vector<Spec>& specs,
                         const std::set<pid_t>& killed, DedupStore& store, std::string_view scope);

// What the delivery log ("entry outcome reclaimed pid" per delivery) says.
struct DeliveryReport {
  std::size_t deliveries = 0;
  std::size_t reclaimed = 0;  // deliveries of entries taken over from a dead consumer
  std::map<std::string, std::size_t> by_outcome;  // outcome name or "error"
};
DeliveryReport ReadDeliveryLog(const std::string& path);

// The body of stream_worker (its usage is in stream_worker_main.cc); returns the exit status.
int StreamWorkerMain(int argc, char** argv);

}  // namespace idem::streams_harness

#endif  // IDEM_ADAPTERS_REDIS_STREAMS_HARNESS_STREAMS_HARNESS_H_

// Helpers shared by idem's benchmarks: the delivery stream every raw and idem benchmark consumes,
// the trivial handler, and settings read from the environment (bench/run.sh sets them).
//
// The stream models a broker under redelivery: five new ids, then one duplicate. Ids are 36-byte
// random UUID-like strings. The duplicate repeats the first id of the group kDuplicateLookback
// groups earlier (768 messages back), so that at batch 100 or 64 in flight it is a redelivery of a
// completed message rather than of one still in flight; the first groups repeat their own first
// id. Ids are generated in chunks with the benchmark's timer paused, so the cost of making them is
// measured neither for raw nor for idem.
//
// Thread-safety: a MessageStream belongs to one benchmark thread.
#ifndef IDEM_BENCH_BENCH_UTIL_H_
#define IDEM_BENCH_BENCH_UTIL_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "benchmark/benchmark.h"
#include "idem/processor.h"

namespace idem::bench {

inline constexpr std::size_t kGroupSize = 6;  // five new ids, then one duplicate
inline constexpr std::size_t kDuplicateLookback = 128;
inline constexpr std::size_t kIdBytes = 36;

// Every benchmark writes under this scope (raw baselines too, where the store has scopes).
inline constexpr std::string_view kScope = "bench";

// A small JSON payload, the same for every message. idem fingerprints it (its default); a raw
// baseline ignores it.
inline constexpr std::string_view kPayload =
    R"({"order_id":"A-1029","amount_cents":4200,"currency":"EUR","kind":"order.paid"})";

// Formats 128 random bits as a version-4 UUID: 36 bytes, lower-case hex.
std::string FormatUuid(uint64_t hi, uint64_t lo);

class MessageStream {
 public:
  // Seeded from std::random_device: each stream's ids are new to every store.
  MessageStream();

  // The next message id; valid until the next call.
  std::string_view Next(benchmark::State& state) {
    if (next_ == chunk_.size()) Refill(state);
    return chunk_[next_++];
  }

  // Fills `out` with the next out.size() messages, valid until the next call.
  // REQUIRES: out.size() <= 12288.
  void NextBatch(benchmark::State& state, std::span<Message> out);

  // The same, for callers that time by hand (RunPaired): ids are made here, untimed.
  void Fill(std::span<Message> out);

 private:
  static constexpr std::size_t kChunk = 6 * 2048;

  void Refill(benchmark::State& state);
  void RefillChunk();
  std::string NextId();

  std::mt19937_64 rng_;
  uint64_t position_ = 0;  // messages generated so far
  std::array<std::string, kDuplicateLookback> group_heads_;
  std::string lookback_head_;  // what the current group's duplicate repeats
  std::vector<std::string> chunk_;
  std::size_t next_ = 0;
};

// One unit of work of one side of a paired benchmark: the messages, one at a time or as a batch.
using Unit = std::function<absl::Status(std::span<const Message>)>;

// A paired benchmark: each iteration runs one unit of `batch` messages on the raw side and one
// on the idem side, in alternating order, each timed by hand, so that drift in the machine
// (fsync latency, other processes) falls on both sides alike and their ratio stays meaningful.
// Reports the counters raw_msgs_per_s and idem_msgs_per_s (time spent in each side only).
// `between`, when set, runs untimed after every iteration (upkeep that belongs to neither side).
void RunPaired(benchmark::State& state, std::size_t batch, const Unit& raw, const Unit& idem,
               const std::function<void(int64_t iteration)>& between = nullptr);

// The sides of a group-commit benchmark (RunGroup). Both processors run on the same backend and
// data: `alone` on a store opened with group_limit=1 (every call written by itself, as before
// group commit), `grouped` on a store with the default group_limit.
struct GroupSides {
  Unit raw_batch;  // kGroupRawBatch messages in one raw transaction or pipeline
  const Processor* alone = nullptr;
  const Processor* grouped = nullptr;
  const DedupStore* grouped_store = nullptr;  // read for write_groups and grouped_calls
  // Untimed upkeep after every unit (e.g. SQLite's WAL checkpoint), or null.
  std::function<void(int64_t iteration)> between;
};
inline constexpr std::size_t kGroupRawBatch = 100;
// Messages each consumer thread handles one at a time in one unit.
inline constexpr std::size_t kGroupPerThread = 48;
// A group benchmark's minimum time whatever --benchmark_min_time says: one iteration is five
// units and lasts up to half a second with synchronous fsyncs, and its one-thread units hold only
// kGroupPerThread messages each, so a short run would rest on a handful of samples.
inline constexpr double kGroupMinSeconds = 4.0;

// A group-commit benchmark: each iteration runs five units in rotating order, each timed by hand
// (so drift falls on all of them alike): the raw batch of 100; `alone` and `grouped` from one
// thread, kGroupPerThread messages each through Processor::Process; and `alone` and `grouped`
// from `threads` threads at once, kGroupPerThread messages each (wall time from release to the
// last thread's finish). Counters: raw_batch100, per_msg_1t_alone, per_msg_1t, per_msg_nt_alone,
// per_msg_nt (msgs/s); p50/p99 latency of one Process call in microseconds for each per-message
// unit; calls_per_group (calls per write that carried more than one) and grouped_share (fraction
// of the grouped store's writes carried by such writes), from the store's counters.
void RunGroup(benchmark::State& state, int threads, const GroupSides& sides);

// The handler every benchmark runs: it does nothing the compiler may drop.
inline void TrivialHandler(HandlerContext& context) { benchmark::DoNotOptimize(context.token()); }

// Reads an environment variable as an integer; `fallback` when unset or malformed.
int64_t EnvInt(const char* name, int64_t fallback);
// Reads an environment variable; `fallback` when unset or empty.
std::string EnvString(const char* name, std::string_view fallback);

// Wall-clock milliseconds, as a raw baseline stamps its leases.
int64_t NowMillis();

// Registers `fn` under "backend/pattern/impl" (the name run.sh parses), reporting msgs/s as
// items_per_second against wall time. IDEM_BENCH_ITERATIONS=N fixes the iteration count (for
// profiling: the cost per message is the difference of two profiles over their difference in N).
benchmark::internal::Benchmark* Register(std::string_view backend, std::string_view pattern,
                                         std::string_view impl,
                                         std::function<void(benchmark::State&)> fn);

}  // namespace idem::bench

#endif  // IDEM_BENCH_BENCH_UTIL_H_

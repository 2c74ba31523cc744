#include "bench_util.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace idem::bench {

std::string FormatUuid(uint64_t hi, uint64_t lo) {
  static constexpr char kHex[] = "0123456789abcdef";
  // Version 4 and the RFC 4122 variant, as a UUID library would set them.
  hi = (hi & ~uint64_t{0xF000}) | 0x4000;
  lo = (lo & ~(uint64_t{0xC} << 60)) | (uint64_t{0x8} << 60);
  std::string out(kIdBytes, '-');
  std::size_t pos = 0;
  auto put = [&](uint64_t bits, int nibbles) {
    for (int i = nibbles - 1; i >= 0; --i) out[pos++] = kHex[(bits >> (4 * i)) & 0xF];
  };
  put(hi >> 32, 8);
  ++pos;
  put(hi >> 16, 4);
  ++pos;
  put(hi, 4);
  ++pos;
  put(lo >> 48, 4);
  ++pos;
  put(lo, 12);
  return out;
}

MessageStream::MessageStream() : rng_(std::random_device{}()) {
  chunk_.reserve(kChunk);
  // The first chunk is made before the benchmark loop starts its timer.
  for (std::size_t i = 0; i < kChunk; ++i) chunk_.push_back(NextId());
}

std::string MessageStream::NextId() {
  const uint64_t group = position_ / kGroupSize;
  const std::size_t slot = group % kDuplicateLookback;
  const uint64_t in_group = position_ % kGroupSize;
  ++position_;
  if (in_group == kGroupSize - 1) {
    // group_heads_[slot] still holds the head of `group - kDuplicateLookback` until this group's
    // head overwrote it, so the lookback reads a copy kept at the group's start.
    return lookback_head_;
  }
  std::string id = FormatUuid(rng_(), rng_());
  if (in_group == 0) {
    lookback_head_ = group >= kDuplicateLookback ? std::move(group_heads_[slot]) : id;
    group_heads_[slot] = id;
  }
  return id;
}

void MessageStream::RefillChunk() {
  // Ids not handed out yet move to the front, so the stream's order is kept.
  std::rotate(chunk_.begin(), chunk_.begin() + static_cast<std::ptrdiff_t>(next_), chunk_.end());
  for (std::size_t i = chunk_.size() - next_; i < chunk_.size(); ++i) chunk_[i] = NextId();
  next_ = 0;
}

void MessageStream::Refill(benchmark::State& state) {
  state.PauseTiming();
  RefillChunk();
  state.ResumeTiming();
}

void MessageStream::Fill(std::span<Message> out) {
  if (chunk_.size() - next_ < out.size()) RefillChunk();
  for (Message& message : out) message = Message{.id = chunk_[next_++], .payload = kPayload};
}

void RunPaired(benchmark::State& state, std::size_t batch, const Unit& raw, const Unit& idem,
               const std::function<void(int64_t iteration)>& between) {
  using Clock = std::chrono::steady_clock;
  MessageStream raw_stream, idem_stream;
  std::vector<Message> messages(batch);
  Clock::duration raw_time{}, idem_time{};
  bool raw_first = true;
  int64_t iteration = 0;
  for (auto _ : state) {
    for (int turn = 0; turn < 2; ++turn) {
      const bool is_raw = (turn == 0) == raw_first;
      (is_raw ? raw_stream : idem_stream).Fill(messages);
      const Clock::time_point start = Clock::now();
      const absl::Status status = (is_raw ? raw : idem)(messages);
      (is_raw ? raw_time : idem_time) += Clock::now() - start;
      if (!status.ok()) {
        state.SkipWithError(status.ToString().c_str());
        return;
      }
    }
    raw_first = !raw_first;
    if (between) between(iteration);
    ++iteration;
  }
  const double msgs = static_cast<double>(state.iterations()) * static_cast<double>(batch);
  auto rate = [msgs](Clock::duration d) {
    const double seconds = std::chrono::duration<double>(d).count();
    return seconds > 0 ? msgs / seconds : 0.0;
  };
  state.counters["raw_msgs_per_s"] = rate(raw_time);
  state.counters["idem_msgs_per_s"] = rate(idem_time);
}

namespace {

using Clock = std::chrono::steady_clock;

// Threads kept for the whole benchmark: Run(fn) has every thread call fn(its index) once and
// returns when all are done, so a unit's time holds no thread creation.
class Gang {
 public:
  explicit Gang(int size) {
    for (int i = 0; i < size; ++i) threads_.emplace_back([this, i] { Loop(i); });
  }
  ~Gang() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    start_.notify_all();
    for (std::thread& t : threads_) t.join();
  }
  void Run(const std::function<void(int)>& fn) {
    std::unique_lock lock(mu_);
    fn_ = &fn;
    running_ = static_cast<int>(threads_.size());
    ++generation_;
    start_.notify_all();
    done_.wait(lock, [this] { return running_ == 0; });
    fn_ = nullptr;
  }

 private:
  void Loop(int index) {
    uint64_t seen = 0;
    while (true) {
      const std::function<void(int)>* fn;
      {
        std::unique_lock lock(mu_);
        start_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        fn = fn_;
      }
      (*fn)(index);
      std::lock_guard lock(mu_);
      if (--running_ == 0) done_.notify_one();
    }
  }

  std::mutex mu_;
  std::condition_variable start_, done_;
  const std::function<void(int)>* fn_ = nullptr;
  uint64_t generation_ = 0;
  int running_ = 0;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

// Processes `messages` one at a time, appending each call's latency (ns) to `latencies`.
absl::Status ProcessEach(const Processor& processor, std::span<const Message> messages,
                         std::vector<int64_t>& latencies) {
  for (const Message& m : messages) {
    const Clock::time_point start = Clock::now();
    absl::StatusOr<ProcessResult> result = processor.Process(m, TrivialHandler);
    latencies.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start)
                            .count());
    if (!result.ok()) return result.status();
  }
  return absl::OkStatus();
}

double PercentileMicros(std::vector<int64_t>& ns, double q) {
  if (ns.empty()) return 0;
  const std::size_t k = std::min(ns.size() - 1, static_cast<std::size_t>(q * ns.size()));
  std::nth_element(ns.begin(), ns.begin() + static_cast<std::ptrdiff_t>(k), ns.end());
  return static_cast<double>(ns[k]) / 1000.0;
}

uint64_t StoreWrites(const StoreStats& s) {
  return s.claims_acquired + s.duplicates + s.in_progress + s.stale + s.conflicts +
         s.dead_lettered + s.completed;
}

}  // namespace

void RunGroup(benchmark::State& state, int threads, const GroupSides& sides) {
  enum Unit { kRaw, kAlone, kOneThread, kAloneThreads, kThreads, kUnits };
  Gang gang(threads);
  MessageStream raw_stream, alone_stream, one_stream;
  std::vector<MessageStream> streams(static_cast<std::size_t>(threads));
  std::vector<Message> raw_messages(kGroupRawBatch), messages(kGroupPerThread);
  std::vector<std::vector<Message>> thread_messages(static_cast<std::size_t>(threads),
                                                    std::vector<Message>(kGroupPerThread));
  std::vector<std::vector<int64_t>> thread_latencies(static_cast<std::size_t>(threads));
  std::vector<std::vector<int64_t>> alone_thread_latencies(static_cast<std::size_t>(threads));
  std::vector<int64_t> alone_latencies, one_latencies;
  std::vector<absl::Status> thread_status(static_cast<std::size_t>(threads));
  Clock::duration time[kUnits] = {};
  const StoreStats before = sides.grouped_store->Stats();
  int64_t iteration = 0;
  for (auto _ : state) {
    for (int turn = 0; turn < kUnits; ++turn) {
      const int unit = static_cast<int>((iteration + turn) % kUnits);
      absl::Status status;
      Clock::time_point start;
      switch (unit) {
        case kRaw:
          raw_stream.Fill(raw_messages);
          start = Clock::now();
          status = sides.raw_batch(raw_messages);
          break;
        case kAlone:
        case kOneThread: {
          (unit == kAlone ? alone_stream : one_stream).Fill(messages);
          start = Clock::now();
          status = ProcessEach(unit == kAlone ? *sides.alone : *sides.grouped, messages,
                               unit == kAlone ? alone_latencies : one_latencies);
          break;
        }
        case kAloneThreads:
        case kThreads: {
          for (std::size_t t = 0; t < streams.size(); ++t) streams[t].Fill(thread_messages[t]);
          const Processor& processor = unit == kThreads ? *sides.grouped : *sides.alone;
          auto& latencies = unit == kThreads ? thread_latencies : alone_thread_latencies;
          const std::function<void(int)> work = [&](int t) {
            const auto i = static_cast<std::size_t>(t);
            thread_status[i] = ProcessEach(processor, thread_messages[i], latencies[i]);
          };
          start = Clock::now();
          gang.Run(work);
          for (const absl::Status& s : thread_status) {
            if (!s.ok()) status = s;
          }
          break;
        }
      }
      time[unit] += Clock::now() - start;
      if (!status.ok()) {
        state.SkipWithError(status.ToString().c_str());
        return;
      }
      if (sides.between) sides.between(iteration);
    }
    ++iteration;
  }
  const StoreStats after = sides.grouped_store->Stats();
  const double n = static_cast<double>(state.iterations());
  auto rate = [](double msgs, Clock::duration d) {
    const double seconds = std::chrono::duration<double>(d).count();
    return seconds > 0 ? msgs / seconds : 0.0;
  };
  const double per_thread = static_cast<double>(kGroupPerThread);
  state.counters["raw_batch100"] = rate(n * static_cast<double>(kGroupRawBatch), time[kRaw]);
  state.counters["per_msg_1t_alone"] = rate(n * per_thread, time[kAlone]);
  state.counters["per_msg_1t"] = rate(n * per_thread, time[kOneThread]);
  state.counters["per_msg_nt_alone"] = rate(n * per_thread * threads, time[kAloneThreads]);
  state.counters["per_msg_nt"] = rate(n * per_thread * threads, time[kThreads]);
  std::vector<int64_t> all, all_alone;
  for (std::vector<int64_t>& v : thread_latencies) all.insert(all.end(), v.begin(), v.end());
  for (std::vector<int64_t>& v : alone_thread_latencies) {
    all_alone.insert(all_alone.end(), v.begin(), v.end());
  }
  state.counters["p50_1t_alone_us"] = PercentileMicros(alone_latencies, 0.50);
  state.counters["p99_1t_alone_us"] = PercentileMicros(alone_latencies, 0.99);
  state.counters["p50_1t_us"] = PercentileMicros(one_latencies, 0.50);
  state.counters["p99_1t_us"] = PercentileMicros(one_latencies, 0.99);
  state.counters["p50_nt_alone_us"] = PercentileMicros(all_alone, 0.50);
  state.counters["p99_nt_alone_us"] = PercentileMicros(all_alone, 0.99);
  state.counters["p50_nt_us"] = PercentileMicros(all, 0.50);
  state.counters["p99_nt_us"] = PercentileMicros(all, 0.99);
  const double groups = static_cast<double>(after.write_groups - before.write_groups);
  const double grouped = static_cast<double>(after.grouped_calls - before.grouped_calls);
  const double writes = static_cast<double>(StoreWrites(after) - StoreWrites(before));
  state.counters["calls_per_group"] = groups > 0 ? grouped / groups : 0.0;
  state.counters["grouped_share"] = writes > 0 ? grouped / writes : 0.0;
}

void MessageStream::NextBatch(benchmark::State& state, std::span<Message> out) {
  // A whole batch comes from one chunk: a refill would overwrite ids the batch still views.
  if (chunk_.size() - next_ < out.size()) Refill(state);
  for (Message& message : out) {
    message = Message{.id = Next(state), .payload = kPayload};
  }
}

int64_t EnvInt(const char* name, int64_t fallback) {
  const char* value = std::getenv(name);
  int64_t out = 0;
  if (value == nullptr || !absl::SimpleAtoi(value, &out)) return fallback;
  return out;
}

std::string EnvString(const char* name, std::string_view fallback) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return std::string(fallback);
  return value;
}

int64_t NowMillis() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

benchmark::internal::Benchmark* Register(std::string_view backend, std::string_view pattern,
                                         std::string_view impl,
                                         std::function<void(benchmark::State&)> fn) {
  const std::string name =
      absl::StrCat(std::string(backend), "/", std::string(pattern), "/", std::string(impl));
  benchmark::internal::Benchmark* b =
      benchmark::RegisterBenchmark(name.c_str(), std::move(fn))->UseRealTime();
  // A fixed iteration count makes two profiles (e.g. under callgrind) differ by a known number of
  // messages; see run.sh's header.
  if (const int64_t n = EnvInt("IDEM_BENCH_ITERATIONS", 0); n > 0) b->Iterations(n);
  return b;
}

}  // namespace idem::bench

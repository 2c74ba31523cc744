#include "bench_util.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <string>
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

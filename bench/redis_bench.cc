// The Redis backend: idem (Lua scripts over EVALSHA, pipelined batches) against the raw commands
// a consumer would send by hand with the same hiredis, on the same server.
//
// The raw baseline, per message: `SET key P NX PX <lease>`; if it was set, the handler, then
// `SET key C PX <retention>` (two round trips; a duplicate costs one). In batches of B: the B
// `SET NX PX` pipelined (one round trip), the handlers, the completions of the ids that were set
// pipelined (a second round trip). Raw keys are "idem-bench-raw:" + id; idem uses its own key
// encoding under the prefix "idem-bench". Each thread of a raw benchmark has its own connection;
// idem's threads share one store (its pool holds up to 4 connections).
//
// Single-threaded patterns are paired (RunPaired: raw and idem alternate unit by unit), so that
// load from other processes on the machine falls on both alike.
//
// The server is the one bench/run.sh starts (IDEM_BENCH_REDIS_PORT on 127.0.0.1); without one
// reachable, no Redis benchmark is registered.
#include <hiredis/hiredis.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench_util.h"
#include "benchmark/benchmark.h"
#include "idem/processor.h"
#include "idem/redis_store.h"

namespace idem::bench {
namespace {

constexpr std::string_view kLeaseMs = "30000";
constexpr std::string_view kRetentionMs = "604800000";  // 7 days, idem's default retention
constexpr std::string_view kRawPrefix = "idem-bench-raw:";

struct ContextFree {
  void operator()(redisContext* c) const noexcept { redisFree(c); }
};
struct ReplyFree {
  void operator()(redisReply* r) const noexcept { freeReplyObject(r); }
};
using Context = std::unique_ptr<redisContext, ContextFree>;
using Reply = std::unique_ptr<redisReply, ReplyFree>;

std::string Host() { return EnvString("IDEM_BENCH_REDIS_HOST", "127.0.0.1"); }
int Port() { return static_cast<int>(EnvInt("IDEM_BENCH_REDIS_PORT", 6379)); }

Context Connect() {
  Context c(redisConnect(Host().c_str(), Port()));
  if (c == nullptr || c->err != 0) return nullptr;
  return c;
}

[[noreturn]] void Die(std::string_view what, redisContext* c) {
  std::fprintf(stderr, "redis bench: %.*s: %s\n", static_cast<int>(what.size()), what.data(),
               c != nullptr ? c->errstr : "");
  std::abort();
}

// The raw commands, on one connection, binary-safe (redisAppendCommandArgv with lengths).
class RawRedis {
 public:
  RawRedis() : c_(Connect()) {
    if (c_ == nullptr) Die("connect", nullptr);
  }

  void AppendClaim(std::string_view id) {
    key_.assign(kRawPrefix).append(id);
    const std::string_view args[] = {"SET", key_, "P", "NX", "PX", kLeaseMs};
    Append(args);
  }
  void AppendComplete(std::string_view id) {
    key_.assign(kRawPrefix).append(id);
    const std::string_view args[] = {"SET", key_, "C", "PX", kRetentionMs};
    Append(args);
  }
  // The reply of the oldest appended command: true for OK, false for nil (NX refused).
  bool Reply() {
    void* raw = nullptr;
    if (redisGetReply(c_.get(), &raw) != REDIS_OK) Die("reply", c_.get());
    const ::idem::bench::Reply reply(static_cast<redisReply*>(raw));
    if (reply->type == REDIS_REPLY_ERROR) Die(std::string_view(reply->str, reply->len), nullptr);
    return reply->type == REDIS_REPLY_STATUS;
  }

 private:
  template <std::size_t N>
  void Append(const std::string_view (&args)[N]) {
    const char* argv[N];
    std::size_t lens[N];
    for (std::size_t i = 0; i < N; ++i) {
      argv[i] = args[i].data();
      lens[i] = args[i].size();
    }
    if (redisAppendCommandArgv(c_.get(), static_cast<int>(N), argv, lens) != REDIS_OK) {
      Die("append", c_.get());
    }
  }

  Context c_;
  std::string key_;
};

// idem's store and processor, shared by the threads of a run; opened before any benchmark runs and
// left to the process's exit (no destruction-order questions with benchmark threads).
struct IdemRedis {
  std::unique_ptr<DedupStore> store;
  std::unique_ptr<Processor> processor;
};

// `group_limit` 1: a store that writes every call alone (no group commit); 0: the default.
IdemRedis* OpenIdem(uint32_t group_limit) {
  RedisStoreOptions options;
  options.host = Host();
  options.port = Port();
  options.key_prefix = "idem-bench";
  if (group_limit > 0) options.group_limit = group_limit;
  absl::StatusOr<std::unique_ptr<DedupStore>> store = NewRedisStore(options);
  if (!store.ok()) {
    std::fprintf(stderr, "redis store: %s\n", store.status().ToString().c_str());
    std::abort();
  }
  auto* made = new IdemRedis{.store = std::move(store).value()};
  absl::StatusOr<Processor> processor = Processor::Create(*made->store, std::string(kScope));
  if (!processor.ok()) std::abort();
  made->processor = std::make_unique<Processor>(*std::move(processor));
  return made;
}

IdemRedis& Idem() {
  static IdemRedis* idem = OpenIdem(0);
  return *idem;
}

IdemRedis& IdemAlone() {
  static IdemRedis* idem = OpenIdem(1);
  return *idem;
}

void RawPerMessage(benchmark::State& state) {
  RawRedis raw;
  MessageStream stream;
  for (auto _ : state) {
    const std::string_view id = stream.Next(state);
    raw.AppendClaim(id);
    if (raw.Reply()) {
      benchmark::DoNotOptimize(id.data());
      raw.AppendComplete(id);
      raw.Reply();
    }
  }
  state.SetItemsProcessed(state.iterations());
}

void IdemPerMessage(benchmark::State& state) {
  const Processor& processor = *Idem().processor;
  MessageStream stream;
  for (auto _ : state) {
    absl::StatusOr<ProcessResult> result =
        processor.Process(Message{.id = stream.Next(state), .payload = kPayload}, TrivialHandler);
    if (!result.ok()) {
      state.SkipWithError(result.status().ToString().c_str());
      break;
    }
  }
  state.SetItemsProcessed(state.iterations());
}

// One unit of a paired benchmark, raw side: the messages one at a time (batch == false) or
// pipelined as one batch.
absl::Status RawUnit(RawRedis& raw, std::span<const Message> messages, bool batch) {
  if (!batch) {
    for (const Message& m : messages) {
      raw.AppendClaim(m.id);
      if (raw.Reply()) {
        benchmark::DoNotOptimize(m.id.data());
        raw.AppendComplete(m.id);
        raw.Reply();
      }
    }
    return absl::OkStatus();
  }
  bool owned[1000];
  if (messages.size() > std::size(owned)) return absl::InvalidArgumentError("batch too large");
  for (const Message& m : messages) raw.AppendClaim(m.id);
  for (std::size_t i = 0; i < messages.size(); ++i) owned[i] = raw.Reply();
  std::size_t sent = 0;
  for (std::size_t i = 0; i < messages.size(); ++i) {
    if (!owned[i]) continue;
    benchmark::DoNotOptimize(messages[i].id.data());
    raw.AppendComplete(messages[i].id);
    ++sent;
  }
  for (std::size_t i = 0; i < sent; ++i) raw.Reply();
  return absl::OkStatus();
}

// The idem side: Process per message, or one ProcessBatch.
absl::Status IdemUnit(std::span<const Message> messages, bool batch) {
  const Processor& processor = *Idem().processor;
  if (!batch) {
    for (const Message& m : messages) {
      absl::StatusOr<ProcessResult> result = processor.Process(m, TrivialHandler);
      if (!result.ok()) return result.status();
    }
    return absl::OkStatus();
  }
  for (const absl::StatusOr<ProcessResult>& result :
       processor.ProcessBatch(messages, TrivialHandler)) {
    if (!result.ok()) return result.status();
  }
  return absl::OkStatus();
}

void RegisterPaired(const std::string& pattern, std::size_t size, bool batch) {
  Register("redis", pattern, "pair", [=](benchmark::State& state) {
    RawRedis raw;
    RunPaired(
        state, size, [&](std::span<const Message> m) { return RawUnit(raw, m, batch); },
        [&](std::span<const Message> m) { return IdemUnit(m, batch); });
  });
}

// Group commit: per-message Process from one thread (alone and grouped) and from `threads`
// threads, against the raw pipeline of 100 (RunGroup).
void RegisterGroup(int threads) {
  Register("redis", absl::StrCat("group", threads), "group", [=](benchmark::State& state) {
    RawRedis raw;
    RunGroup(state, threads,
             GroupSides{.raw_batch = [&](std::span<const Message> m) { return RawUnit(raw, m, true); },
                        .alone = IdemAlone().processor.get(),
                        .grouped = Idem().processor.get(),
                        .grouped_store = Idem().store.get()});
  })->MinTime(kGroupMinSeconds);
}

bool RegisterAll() {
  if (Connect() == nullptr) {
    std::fprintf(stderr, "redis bench: no Redis server at %s:%d; nothing registered\n",
                 Host().c_str(), Port());
    return false;
  }
  Idem();  // open before any timing: connect, read settings, load scripts
  IdemAlone();
  RegisterPaired("lease", 1, false);
  for (std::size_t batch : {1, 10, 100, 1000}) {
    RegisterPaired(absl::StrCat("batch", batch), batch, true);
  }
  // Threads cannot alternate sides without running raw and idem at the same time: these two are
  // separate benchmarks, each thread on its own stream (and, raw, its own connection).
  Register("redis", "lease_2threads", "raw", RawPerMessage)->Threads(2);
  Register("redis", "lease_2threads", "idem", IdemPerMessage)->Threads(2);
  RegisterGroup(16);
  return true;
}

}  // namespace
}  // namespace idem::bench

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  if (!idem::bench::RegisterAll()) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

// Redis Cluster against a single Redis server, idem on both at the same load: the paired patterns
// of the Redis benchmark (one message at a time, batches of 100), where the "raw" side is idem on
// one server and the "idem" side idem on a 3-master cluster, so report.py prints
//   RATIO backend=redis-cluster pattern=lease|batch100 raw=<single node idem> idem=<cluster idem>
// Then how evenly the records spread over the masters: DBSIZE of each master after the runs
// (every key of the benchmark's prefix; the cluster holds nothing else), printed as
//   SPREAD backend=redis-cluster masters=3 keys=<k1,k2,k3> max/min=<ratio>
//
// Servers: the single one on IDEM_BENCH_REDIS_PORT, the cluster's seed on
// IDEM_BENCH_REDIS_CLUSTER_PORT (bench/run.sh starts both on 127.0.0.1); without both reachable,
// nothing is registered.
#include <hiredis/hiredis.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "bench_util.h"
#include "benchmark/benchmark.h"
#include "idem/processor.h"
#include "idem/redis_store.h"

namespace idem::bench {
namespace {

int SinglePort() { return static_cast<int>(EnvInt("IDEM_BENCH_REDIS_PORT", 6379)); }
int ClusterPort() { return static_cast<int>(EnvInt("IDEM_BENCH_REDIS_CLUSTER_PORT", 7000)); }

struct Side {
  std::unique_ptr<DedupStore> store;
  std::unique_ptr<Processor> processor;
};

Side Open(const RedisStoreOptions& options) {
  absl::StatusOr<std::unique_ptr<DedupStore>> store = NewRedisStore(options);
  if (!store.ok()) {
    std::fprintf(stderr, "redis cluster bench: %s\n", store.status().ToString().c_str());
    std::exit(1);
  }
  Side side{.store = *std::move(store)};
  absl::StatusOr<Processor> processor = Processor::Create(*side.store, std::string(kScope));
  if (!processor.ok()) std::exit(1);
  side.processor = std::make_unique<Processor>(*std::move(processor));
  return side;
}

// Opened before any benchmark runs and left to the process's exit.
Side& Single() {
  static Side* side = [] {
    RedisStoreOptions options;
    options.port = SinglePort();
    options.key_prefix = "idem-bench-cluster-single";
    return new Side(Open(options));
  }();
  return *side;
}
Side& Cluster() {
  static Side* side = [] {
    RedisStoreOptions options;
    options.cluster_seeds = {RedisNodeAddress{.host = "127.0.0.1", .port = ClusterPort()}};
    options.key_prefix = "idem-bench-cluster";
    return new Side(Open(options));
  }();
  return *side;
}

absl::Status Unit(Side& side, std::span<const Message> messages, bool batch) {
  if (!batch) {
    for (const Message& m : messages) {
      absl::StatusOr<ProcessResult> result = side.processor->Process(m, TrivialHandler);
      if (!result.ok()) return result.status();
    }
    return absl::OkStatus();
  }
  for (const absl::StatusOr<ProcessResult>& result :
       side.processor->ProcessBatch(messages, TrivialHandler)) {
    if (!result.ok()) return result.status();
  }
  return absl::OkStatus();
}

void RegisterPaired(const std::string& pattern, std::size_t size, bool batch) {
  Register("redis-cluster", pattern, "pair", [=](benchmark::State& state) {
    RunPaired(
        state, size, [&](std::span<const Message> m) { return Unit(Single(), m, batch); },
        [&](std::span<const Message> m) { return Unit(Cluster(), m, batch); });
  });
}

bool Reachable(int port) {
  redisContext* c = redisConnect("127.0.0.1", port);
  const bool ok = c != nullptr && c->err == 0;
  redisFree(c);
  return ok;
}

// One reply of a command on 127.0.0.1:port, as text (integers in decimal); empty on failure.
std::string Command(int port, const char* command) {
  redisContext* c = redisConnect("127.0.0.1", port);
  std::string out;
  if (c != nullptr && c->err == 0) {
    auto* reply = static_cast<redisReply*>(redisCommand(c, command));
    if (reply != nullptr) {
      if (reply->type == REDIS_REPLY_INTEGER) out = std::to_string(reply->integer);
      if (reply->type == REDIS_REPLY_STRING || reply->type == REDIS_REPLY_STATUS) {
        out.assign(reply->str, reply->len);
      }
      if (reply->type == REDIS_REPLY_ARRAY && reply->elements > 0 &&
          reply->element[0]->type == REDIS_REPLY_STRING) {
        out.assign(reply->element[0]->str, reply->element[0]->len);
      }
      freeReplyObject(reply);
    }
  }
  redisFree(c);
  return out;
}

// The masters' DBSIZE: the cluster's nodes are the seed's port and the 5 above it (bench/run.sh).
void PrintSpread() {
  std::vector<long long> keys;
  for (int port = ClusterPort(); port < ClusterPort() + 6; ++port) {
    if (Command(port, "ROLE") != "master") continue;
    keys.push_back(std::atoll(Command(port, "DBSIZE").c_str()));
  }
  if (keys.empty()) return;
  const long long max = *std::max_element(keys.begin(), keys.end());
  const long long min = *std::min_element(keys.begin(), keys.end());
  std::printf("SPREAD backend=redis-cluster masters=%zu keys=%s max/min=%.3f\n", keys.size(),
              absl::StrJoin(keys, ",").c_str(), min > 0 ? double(max) / double(min) : 0.0);
}

bool RegisterAll() {
  if (!Reachable(SinglePort()) || !Reachable(ClusterPort())) {
    std::fprintf(stderr,
                 "redis cluster bench: no Redis at 127.0.0.1:%d or no cluster seed at "
                 "127.0.0.1:%d; nothing registered\n",
                 SinglePort(), ClusterPort());
    return false;
  }
  Single();  // open before any timing: connect, read settings (and the slot map), load scripts
  Cluster();
  RegisterPaired("lease", 1, false);
  RegisterPaired("batch100", 100, true);
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
  idem::bench::PrintSpread();
  return 0;
}

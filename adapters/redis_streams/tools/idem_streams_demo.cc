// idem_streams_demo: a Redis Streams consumer group a user can watch survive SIGKILLs.
//
// Starts its own redis-server on 127.0.0.1 (an unusual port, AOF with everysec, stopped by PID at
// the end) unless --port names a running one, produces entries with producer duplicates,
// conflicting payloads and poison entries, and runs several consumer processes (this program
// re-executed with --worker: RedisStreamsConsumer over a Redis dedup store, lease mode) that it
// SIGKILLs and restarts at random points. Then it checks what the streams and the effect ledger
// hold and prints a report in the style of idem-sim's, with a RESULT line for scripts.
//
//   idem_streams_demo [--entries N] [--duplicates N] [--conflicts N] [--poison N]
//                     [--consumers N] [--kills N] [--lease-ms N] [--seed N]
//                     [--port P | --redis-port P] [--keep]
//
// Exit status: 0 on PASS, 1 on FAIL, 2 on a usage or setup error.
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "idem/redis_store.h"
#include "streams_harness.h"

namespace {

namespace sh = idem::streams_harness;

struct Config {
  int entries = 600;      // distinct ids
  int duplicates = -1;    // -1: entries / 6
  int conflicts = 5;
  int poison = 5;
  int consumers = 4;
  int kills = 12;
  int lease_ms = 600;
  uint32_t seed = 0;      // 0: from the clock
  int port = 0;           // a running server; 0: start one
  int redis_port = 26391;  // where the demo's own server listens
  bool keep = false;       // keep the temporary directory (ledger, delivery log, server log)
};

constexpr std::string_view kUsage =
    "usage: idem_streams_demo [--entries N] [--duplicates N] [--conflicts N] [--poison N]\n"
    "                         [--consumers N] [--kills N] [--lease-ms N] [--seed N]\n"
    "                         [--port P | --redis-port P] [--keep]\n";

std::optional<Config> ParseArgs(int argc, char** argv) {
  Config c;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a == "--keep") {
      c.keep = true;
      continue;
    }
    if (i + 1 >= argc) return std::nullopt;
    int64_t v = 0;
    if (!absl::SimpleAtoi(argv[++i], &v) || v < 0 || v > 1'000'000) return std::nullopt;
    const int n = static_cast<int>(v);
    if (a == "--entries") c.entries = n;
    else if (a == "--duplicates") c.duplicates = n;
    else if (a == "--conflicts") c.conflicts = n;
    else if (a == "--poison") c.poison = n;
    else if (a == "--consumers") c.consumers = n;
    else if (a == "--kills") c.kills = n;
    else if (a == "--lease-ms") c.lease_ms = n;
    else if (a == "--seed") c.seed = static_cast<uint32_t>(v);
    else if (a == "--port") c.port = n;
    else if (a == "--redis-port") c.redis_port = n;
    else return std::nullopt;
  }
  if (c.duplicates < 0) c.duplicates = c.entries / 6;
  // MakeSpecs' layout: duplicates three entries after an earlier copy, conflicts 37 ids apart,
  // poison entries 40 entries apart.
  if (c.entries < 30 || c.consumers < 1 || c.lease_ms < 100 || c.duplicates > c.entries / 6 ||
      c.conflicts * 37 + 7 >= c.entries || c.poison * 40 + 20 > c.entries + c.duplicates) {
    std::fputs("idem_streams_demo: needs --entries >= 30, --duplicates <= entries / 6, "
               "--conflicts * 37 + 7 < entries, --poison * 40 + 20 <= entries + duplicates, "
               "--consumers >= 1, --lease-ms >= 100\n", stderr);
    return std::nullopt;
  }
  return c;
}

// A private redis-server on 127.0.0.1, stopped by its PID.
class OwnRedis {
 public:
  ~OwnRedis() { Stop(); }
  bool Start(int port, const std::string& dir) {
    if (sh::RedisClient(port).Cmd({"PING"}) != nullptr) {
      std::fprintf(stderr, "idem_streams_demo: something already listens on 127.0.0.1:%d; "
                           "use --redis-port or --port\n", port);
      return false;
    }
    const std::string p = std::to_string(port);
    const std::string log = dir + "/redis.log";
    pid_ = fork();
    if (pid_ == 0) {
      execlp("redis-server", "redis-server", "--bind", "127.0.0.1", "--port", p.c_str(),
             "--protected-mode", "yes", "--save", "", "--appendonly", "yes",
             "--appendfsync", "everysec", "--dir", dir.c_str(),
             "--logfile", log.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    if (pid_ < 0) return false;
    for (int i = 0; i < 100; ++i) {
      sh::ReplyPtr r = sh::RedisClient(port).Cmd({"PING"});
      if (r != nullptr && r->type == REDIS_REPLY_STATUS) return true;
      if (waitpid(pid_, nullptr, WNOHANG) == pid_) break;  // it exited: no retry helps
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    std::fprintf(stderr, "idem_streams_demo: redis-server did not start (see %s)\n", log.c_str());
    return false;
  }
  void Stop() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

 private:
  pid_t pid_ = -1;
};

int64_t Count(const std::map<std::string, std::size_t>& m, const std::string& k) {
  auto it = m.find(k);
  return it == m.end() ? 0 : static_cast<int64_t>(it->second);
}

int Run(const Config& config) {
  const uint32_t seed = config.seed != 0
                            ? config.seed
                            : static_cast<uint32_t>(
                                  std::chrono::steady_clock::now().time_since_epoch().count());
  std::string dir_template =
      (std::filesystem::temp_directory_path() / "idem-streams-demo-XXXXXX").string();
  if (mkdtemp(dir_template.data()) == nullptr) {
    std::perror("idem_streams_demo: mkdtemp");
    return 2;
  }
  const std::string dir = dir_template;
  OwnRedis own;
  int port = config.port;
  if (port == 0) {
    port = config.redis_port;
    if (!own.Start(port, dir)) return 2;
  }
  sh::RedisClient redis(port);
  if (!redis.ok()) {
    std::fprintf(stderr, "idem_streams_demo: cannot connect to 127.0.0.1:%d\n", port);
    return 2;
  }

  const std::vector<sh::Spec> specs =
      sh::MakeSpecs(config.entries, config.duplicates, config.conflicts, config.poison);
  sh::FleetOptions fo;
  fo.worker = "/proc/self/exe";  // resolved in the forked child: this program
  fo.worker_prefix = {"--worker"};
  fo.port = port;
  fo.stream = absl::StrCat("idem-demo-", getpid(), "-", seed);
  fo.mode = "lease";
  fo.path = dir + "/ledger";
  fo.delivery_log = dir + "/deliveries";
  fo.lease_ms = config.lease_ms;
  fo.max_attempts = 3;
  fo.seed = seed;
  // Kills spread over roughly the time the consumers need for the entries (~5 ms each).
  const int spread_ms = std::max(100, config.entries * 5 / std::max(1, config.consumers));
  fo.kill_pause_min = std::chrono::milliseconds(10);
  fo.kill_pause_max = std::chrono::milliseconds(
      std::max(20, 2 * spread_ms / std::max(1, config.kills)));
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::string> problems;
  sh::StreamReport streams;
  sh::LedgerReport ledger;
  sh::DeliveryReport deliveries;
  int started = 0;
  std::size_t kills = 0;
  {
    sh::ConsumerFleet fleet(fo);
    problems = fleet.Run(redis, specs, config.consumers, config.kills);
    streams = sh::CheckStreams(redis, fleet.stream(), fleet.entry_ids(), specs);
    idem::RedisStoreOptions so;
    so.port = port;
    so.key_prefix = "idem-" + fo.stream;
    auto store = idem::NewRedisStore(so);
    if (!store.ok()) {
      problems.push_back(absl::StrCat("dedup store: ", store.status().ToString()));
    } else {
      ledger = sh::CheckLedger(fo.path, specs, fleet.killed(), **store, "rs-test");
    }
    started = fleet.started();
    kills = fleet.killed().size();
  }
  deliveries = sh::ReadDeliveryLog(fo.delivery_log);
  const double wall =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  const int64_t stream_violations = static_cast<int64_t>(streams.violations.size());
  const int64_t ledger_violations =
      static_cast<int64_t>(ledger.violations.size() - ledger.unexplained);
  const int64_t harness_problems = static_cast<int64_t>(problems.size());
  const bool passed = stream_violations == 0 && ledger.unexplained == 0 &&
                      ledger_violations == 0 && harness_problems == 0;

  std::string out;
  auto row = [&out](std::string_view name, int64_t value, std::string_view note = "") {
    absl::StrAppendFormat(&out, "  %-30s %9d  %s\n", name, value, note);
  };
  absl::StrAppendFormat(&out,
                        "idem_streams_demo report: Redis Streams consumer group, lease mode, Redis "
                        "store on 127.0.0.1:%d, seed %d, %d consumer processes\n",
                        port, seed, config.consumers);
  out += "  traffic\n";
  row("entries produced", static_cast<int64_t>(specs.size()),
      absl::StrFormat("%d ids + %d producer duplicates + %d conflicting + %d poison",
                      config.entries, config.duplicates, config.conflicts, config.poison));
  row("deliveries", static_cast<int64_t>(deliveries.deliveries),
      "hand-outs to idem (XREADGROUP, retries, reclaims); a cut by SIGKILL is not logged");
  row("reclaimed entries", static_cast<int64_t>(deliveries.reclaimed),
      "taken over from a dead consumer with XAUTOCLAIM");
  row("handler runs", static_cast<int64_t>(ledger.runs), "effects started (ledger lines)");
  out += "  final outcomes (one per entry, from the outcome stream)\n";
  row("processed", static_cast<int64_t>(streams.processed));
  row("duplicates suppressed", static_cast<int64_t>(streams.duplicates),
      "acked without running the handler (producer copies, and entries whose run completed in a "
      "consumer killed before its XACK)");
  row("conflicts", static_cast<int64_t>(streams.conflicts),
      "same id, different payload: dead-lettered");
  row("poison dead-lettered", static_cast<int64_t>(streams.dead_lettered),
      "the handler threw max_attempts (3) times");
  row("dead letters", static_cast<int64_t>(streams.dead_letters),
      absl::StrCat("in ", fo.stream, ":dead-letter"));
  out += "  on the way (per delivery)\n";
  row("in progress", Count(deliveries.by_outcome, "in_progress"),
      "another live claim held it: left pending, retried after its lease");
  row("duplicate deliveries", Count(deliveries.by_outcome, "duplicate"),
      "redeliveries and producer copies answered from the store");
  row("handler errors", Count(deliveries.by_outcome, "error"), "retried with backoff");
  out += "  faults injected\n";
  row("consumer kills (SIGKILL)", static_cast<int64_t>(kills), "each followed by a restart");
  row("consumer processes started", started);
  row("extra runs explained by kills", static_cast<int64_t>(ledger.extra_runs),
      "a second run after a SIGKILLed run of the same id");
  out += "  invariants (all must be 0)\n";
  row("stream violations", stream_violations,
      "each entry exactly one final outcome, none pending, dead letters exactly the poison + "
      "conflicts");
  row("unexplained second runs", static_cast<int64_t>(ledger.unexplained),
      "a run again after a run in a process that was never killed");
  row("ledger violations", ledger_violations,
      "every id ran and is COMPLETED with its last run's token; no poison ran");
  row("harness problems", harness_problems, "drained in time, consumers stopped cleanly");
  for (const std::string& v : problems) absl::StrAppend(&out, "  ! ", v, "\n");
  int shown = 0;
  for (const auto* list : {&streams.violations, &ledger.violations}) {
    for (const std::string& v : *list) {
      if (shown++ < 20) absl::StrAppend(&out, "  ! ", v, "\n");
    }
  }
  absl::StrAppendFormat(&out, "  verdict: %s   (%.2f s wall, %.0f deliveries/s)\n",
                        passed ? "PASS" : "FAIL", wall,
                        wall > 0 ? static_cast<double>(deliveries.deliveries) / wall : 0.0);
  absl::StrAppendFormat(
      &out,
      "RESULT verdict=%s entries=%d deliveries=%d reclaimed=%d handler_runs=%d processed=%d "
      "duplicates=%d conflicts=%d dead_letters=%d kills=%d extra_runs=%d unexplained=%d "
      "violations=%d seed=%d\n",
      passed ? "PASS" : "FAIL", specs.size(), deliveries.deliveries, deliveries.reclaimed,
      ledger.runs, streams.processed, streams.duplicates, streams.conflicts, streams.dead_letters,
      kills, ledger.extra_runs, ledger.unexplained,
      stream_violations + ledger_violations + harness_problems, seed);
  std::fputs(out.c_str(), stdout);

  // The demo's keys go with its server; on a server it was pointed at, it deletes them.
  if (config.port != 0) {
    for (const std::string& k : {fo.stream, fo.stream + ":outcomes", fo.stream + ":dead-letter"}) {
      redis.Cmd({"DEL", k});
    }
    // The dedup records expire with idem's retention; they are under the prefix "idem-<stream>".
  }
  own.Stop();
  if (config.keep) {
    std::printf("kept %s\n", dir.c_str());
  } else {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  return passed ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string_view(argv[1]) == "--worker") {
    return sh::StreamWorkerMain(argc - 1, argv + 1);
  }
  std::optional<Config> config = ParseArgs(argc, argv);
  if (!config) {
    std::fputs(kUsage.data(), stderr);
    return 2;
  }
  return Run(*config);
}

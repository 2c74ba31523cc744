// idem-sim: the delivery simulator as a program (docs/design.md, "Simulator"). Generates an
// at-least-once delivery history with duplicates, reordering, crashes and store faults from a seed,
// runs it through the real library against a store, and reports whether every invariant held.
//
// Exit status: 0 PASS, 1 FAIL, 2 bad command line, 3 the run could not be set up.
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "idem/sim/config.h"
#include "idem/sim/report.h"
#include "idem/sim/simulator.h"

namespace {
// The flags' defaults are SimConfig's, so the library and the program cannot drift apart.
const idem::sim::SimConfig kDefaults;
}  // namespace

ABSL_FLAG(std::string, store, "",
          "Store URI, opened by idem::OpenStore with its options: memory: (?capacity=N&evict=1), "
          "sqlite:///abs/path.db or sqlite:rel.db (?synchronous=off|normal|full|extra), or "
          "another URI OpenStore knows (those run on real time). Default: a fresh SQLite file "
          "(synchronous=normal) in a temporary directory, removed after a passing run. Printed "
          "with its password redacted.");
ABSL_FLAG(std::string, mode, "lease",
          "lease: claim -> handler -> complete (at-least-once, duplicates suppressed). "
          "transactional: the handler's effect is a row written in the dedup row's "
          "transaction (exactly-once effect); needs a SQLite or PostgreSQL store.");
ABSL_FLAG(int64_t, messages, kDefaults.messages, "Distinct messages to generate.");
ABSL_FLAG(int64_t, keys, kDefaults.keys,
          "Business keys; each message carries the next version of one.");
ABSL_FLAG(int32_t, consumers, kDefaults.consumers, "Consumer threads (in-process profile).");
ABSL_FLAG(int32_t, processes, 0,
          "Consumer processes on a shared SQLite file, SIGKILLed at their crash points and "
          "restarted (process profile, real time). 0: use --consumers threads instead.");
ABSL_FLAG(double, dup_rate, kDefaults.dup_rate,
          "Share of messages the broker delivers more than once.");
ABSL_FLAG(double, conflict_rate, kDefaults.conflict_rate,
          "Share of messages that reuse an earlier id with another payload.");
ABSL_FLAG(double, unversioned_rate, kDefaults.unversioned_rate,
          "Share of messages without a version stamp: never stale, so a paused consumer's "
          "unversioned message is taken over and its late completion must be fenced.");
ABSL_FLAG(int64_t, reorder_window, kDefaults.reorder_window,
          "A delivery may overtake up to this many earlier ones (versions of a key arrive out "
          "of order).");
ABSL_FLAG(double, crash_rate, kDefaults.crash_rate,
          "Per delivery attempt: the consumer crashes before the claim, after the claim, after "
          "the effect or after the completion (a quarter each).");
ABSL_FLAG(double, pause_rate, kDefaults.pause_rate,
          "Per delivery attempt: the consumer freezes for longer than its lease after the "
          "effect; its deliveries go to the others, which take the claim over once the lease "
          "has ended, and its late completion must be refused (fencing).");
ABSL_FLAG(double, store_error_rate, kDefaults.store_error_rate,
          "Per delivery attempt (lease mode, in process): one claim or completion call fails.");
ABSL_FLAG(double, outage_rate, kDefaults.outage_rate,
          "Per delivery attempt (lease mode, in process): every store call fails for a fifth "
          "of a lease.");
ABSL_FLAG(double, lost_reply_rate, kDefaults.lost_reply_rate,
          "Per delivery attempt: the store applies a claim or completion and the reply is lost.");
ABSL_FLAG(uint64_t, seed, kDefaults.seed,
          "Seed of the whole history: the same seed replays the same run.");
ABSL_FLAG(int64_t, lease_ms, kDefaults.lease_ms,
          "Claim lease in milliseconds (simulated in process, real with --processes).");
ABSL_FLAG(int64_t, wait_ms, kDefaults.wait_ms,
          "With --processes: real ms a consumer waits for an in-flight duplicate to finish "
          "(ProcessorOptions::wait_for_in_flight) instead of answering in progress; 0: no wait.");
ABSL_FLAG(bool, concurrent, kDefaults.concurrent,
          "In-process lease mode: consumer threads call the store at once (group commit gathers "
          "their writes) instead of taking turns; real time, and no exact replay from the seed.");
ABSL_FLAG(int32_t, batch, kDefaults.batch,
          "Messages per ProcessBatch call (lease mode); 1: Process.");
ABSL_FLAG(std::string, sabotage, "none",
          "For demonstrations and tests: wrap the store in a deliberately broken one "
          "(complete_ignores_token, claim_forgets_records, ignore_versions, false_duplicates) "
          "and watch the oracle fail; in lease mode, with threads or --processes.");
ABSL_FLAG(bool, shrink, true, "On FAIL, shrink the history to a small failing trace and print it.");
ABSL_FLAG(int32_t, trace_lines, 120, "Most lines of the shrunk trace to print.");
ABSL_FLAG(bool, trace, false,
          "Print every step of the run (deliveries, store calls and answers, faults, acks) "
          "before the report; for small runs.");
ABSL_FLAG(bool, keep_files, false, "Keep the temporary store and logs after a passing run.");
ABSL_FLAG(std::string, progress, "auto",
          "Progress on stderr: auto (a bar on a terminal, lines otherwise), bar, lines, none.");
// The process profile's consumers are this program, started with these.
ABSL_FLAG(int32_t, child_fd, -1, "internal");
ABSL_FLAG(std::string, child_dir, "", "internal");
ABSL_FLAG(std::string, child_scope, "", "internal");

namespace {

constexpr int kExitFail = 1;
constexpr int kExitUsage = 2;
constexpr int kExitSetup = 3;

bool IsOurs(const absl::CommandLineFlag& flag) {
  return flag.Filename().find("idem_sim_main") != std::string::npos &&
         flag.Name().rfind("child_", 0) != 0;
}

void PrintUsage() {
  std::string out =
      "idem-sim: runs a seeded, deterministic at-least-once delivery history (duplicates,\n"
      "reordering, consumer crashes, lease expiry, store faults) through idem against a store,\n"
      "checks the invariants I1-I7 (docs/design.md, \"Invariants\") by counting, and reports. The "
      "last line of the\n"
      "output is machine-readable:\n"
      "  RESULT verdict=PASS|FAIL messages=N deliveries=N handler_runs=N effects=N duplicates=N\n"
      "         stale=N in_progress=N conflicts=N dead_lettered=N lost=N double_effects=N\n"
      "         unexplained=N stale_applied=N seed=N\n"
      "Exit status: 0 PASS, 1 FAIL, 2 bad command line, 3 the run could not be set up.\n\n"
      "Usage: idem-sim [--flag=value ...]   (flag names take '-' or '_')\n\n";
  std::map<std::string, const absl::CommandLineFlag*> flags;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (IsOurs(*flag)) flags[std::string(name)] = flag;
  }
  for (const auto& [name, flag] : flags) {
    absl::StrAppendFormat(&out, "  --%s (default: %s)\n", absl::StrReplaceAll(name, {{"_", "-"}}),
                          flag->DefaultValue().empty() ? "\"\"" : flag->DefaultValue());
    absl::StrAppendFormat(&out, "      %s\n", flag->Help());
  }
  std::fputs(out.c_str(), stdout);
}

[[noreturn]] void UsageError(const std::string& message) {
  std::fprintf(stderr, "idem-sim: %s\nRun 'idem-sim --help' for the flags.\n", message.c_str());
  std::exit(kExitUsage);
}

// Checks every argument against the flag registry before abseil parses the command line, so a
// bad flag is reported as a usage error (exit 2) rather than abseil's generic exit 1, and
// rewrites '-' in flag names to abseil's '_'.
std::vector<std::string> Normalize(int argc, char** argv) {
  std::vector<std::string> out = {argv[0]};
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--") {
      for (++i; i < argc; ++i) out.push_back(argv[i]);
      break;
    }
    if (arg.size() < 2 || arg[0] != '-')
      UsageError(absl::StrCat("unexpected argument '", arg, "'"));
    const std::size_t dashes = arg[1] == '-' ? 2 : 1;
    const std::size_t eq = arg.find('=');
    std::string name = absl::StrReplaceAll(arg.substr(dashes, eq - dashes), {{"-", "_"}});
    if (name == "help" || name == "h" || name == "helpfull" || name == "helpshort") {
      PrintUsage();
      std::exit(0);
    }
    std::string value;
    bool has_value = eq != std::string::npos;
    if (has_value) value = arg.substr(eq + 1);
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr && !has_value && name.rfind("no", 0) == 0) {
      absl::CommandLineFlag* negated = absl::FindCommandLineFlag(name.substr(2));
      if (negated != nullptr && negated->IsOfType<bool>()) {
        flag = negated;
        name = name.substr(2);
        value = "false";
        has_value = true;
      }
    }
    if (flag == nullptr || (!IsOurs(*flag) && name.rfind("child_", 0) != 0)) {
      UsageError(absl::StrCat("unknown flag '", arg.substr(0, eq), "'"));
    }
    if (!has_value) {
      if (flag->IsOfType<bool>()) {
        value = "true";
      } else if (i + 1 < argc) {
        value = argv[++i];
      } else {
        UsageError(absl::StrCat("flag '--", name, "' needs a value"));
      }
    }
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      UsageError(absl::StrCat("bad value '", value, "' for --",
                              absl::StrReplaceAll(name, {{"_", "-"}}), ": ", error));
    }
    out.push_back(absl::StrCat("--", name, "=", value));
  }
  return out;
}

idem::sim::SimConfig ConfigFromFlags() {
  idem::sim::SimConfig c;
  c.store_uri = absl::GetFlag(FLAGS_store);
  absl::StatusOr<idem::sim::Mode> mode = idem::sim::ParseMode(absl::GetFlag(FLAGS_mode));
  if (!mode.ok()) UsageError(std::string(mode.status().message()));
  c.mode = *mode;
  absl::StatusOr<idem::sim::Sabotage> sabotage =
      idem::sim::ParseSabotage(absl::GetFlag(FLAGS_sabotage));
  if (!sabotage.ok()) UsageError(std::string(sabotage.status().message()));
  c.sabotage = *sabotage;
  c.seed = absl::GetFlag(FLAGS_seed);
  c.messages = absl::GetFlag(FLAGS_messages);
  c.keys = absl::GetFlag(FLAGS_keys);
  c.consumers = absl::GetFlag(FLAGS_consumers);
  c.processes = absl::GetFlag(FLAGS_processes);
  c.dup_rate = absl::GetFlag(FLAGS_dup_rate);
  c.conflict_rate = absl::GetFlag(FLAGS_conflict_rate);
  c.unversioned_rate = absl::GetFlag(FLAGS_unversioned_rate);
  c.reorder_window = absl::GetFlag(FLAGS_reorder_window);
  c.crash_rate = absl::GetFlag(FLAGS_crash_rate);
  c.pause_rate = absl::GetFlag(FLAGS_pause_rate);
  c.store_error_rate = absl::GetFlag(FLAGS_store_error_rate);
  c.outage_rate = absl::GetFlag(FLAGS_outage_rate);
  c.lost_reply_rate = absl::GetFlag(FLAGS_lost_reply_rate);
  c.lease_ms = absl::GetFlag(FLAGS_lease_ms);
  c.wait_ms = absl::GetFlag(FLAGS_wait_ms);
  c.batch = absl::GetFlag(FLAGS_batch);
  c.concurrent = absl::GetFlag(FLAGS_concurrent);
  return c;
}

// Progress on stderr, so that stdout ends with the RESULT line whatever the terminal.
class ProgressDisplay {
 public:
  explicit ProgressDisplay(const std::string& style) {
    if (style == "auto") {
      bar_ = isatty(STDERR_FILENO) != 0;
      lines_ = !bar_;
    } else {
      bar_ = style == "bar";
      lines_ = style == "lines";
    }
  }
  void Update(int64_t done, int64_t total) {
    if (total <= 0) return;
    const int percent = static_cast<int>(100 * done / total);
    if (bar_) {
      constexpr int kWidth = 40;
      const int filled = percent * kWidth / 100;
      std::fprintf(stderr, "\r[%s%s] %3d%%  %lld/%lld deliveries acked",
                   std::string(filled, '#').c_str(), std::string(kWidth - filled, '.').c_str(),
                   percent, static_cast<long long>(done), static_cast<long long>(total));
      if (done >= total) std::fputc('\n', stderr);
      std::fflush(stderr);
      bar_done_ = done >= total;
    } else if (lines_ && percent / 10 != last_tenth_) {
      last_tenth_ = percent / 10;
      std::fprintf(stderr, "progress: %d%% (%lld/%lld deliveries acked)\n", percent,
                   static_cast<long long>(done), static_cast<long long>(total));
    }
  }
  void Finish() {
    if (bar_ && !bar_done_) std::fputc('\n', stderr);
  }
  bool enabled() const { return bar_ || lines_; }

 private:
  bool bar_ = false;
  bool lines_ = false;
  bool bar_done_ = false;
  int last_tenth_ = -1;
};

std::string SelfBinary(const char* argv0) {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n > 0) return std::string(buf, static_cast<std::size_t>(n));
  return argv0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("delivery simulator for idem; see --help");
  std::vector<std::string> normalized = Normalize(argc, argv);
  std::vector<char*> args;
  for (std::string& a : normalized) args.push_back(a.data());
  (void)absl::ParseCommandLine(static_cast<int>(args.size()), args.data());

  idem::sim::SimConfig config = ConfigFromFlags();
  if (absl::GetFlag(FLAGS_child_fd) >= 0) {
    // A consumer process gets the store URI through its environment, not its command line,
    // which every user of the host can read (ps, /proc/<pid>/cmdline).
    if (const char* uri = std::getenv(idem::sim::kChildStoreEnv)) config.store_uri = uri;
    return idem::sim::RunChildConsumer(config, absl::GetFlag(FLAGS_child_fd),
                                       absl::GetFlag(FLAGS_child_dir),
                                       absl::GetFlag(FLAGS_child_scope));
  }
  if (absl::Status s = idem::sim::ValidateConfig(config); !s.ok()) {
    UsageError(std::string(s.message()));
  }

  ProgressDisplay progress(absl::GetFlag(FLAGS_progress));
  idem::sim::RunOptions options;
  options.keep_files = absl::GetFlag(FLAGS_keep_files);
  options.record_trace = absl::GetFlag(FLAGS_trace);
  options.self_binary = SelfBinary(argv[0]);
  if (progress.enabled()) {
    options.progress = [&progress](int64_t done, int64_t total) { progress.Update(done, total); };
  }
  std::printf("idem-sim: %s\n", idem::sim::DescribeConfig(config).c_str());
  std::fflush(stdout);
  absl::StatusOr<idem::sim::RunResult> result = idem::sim::RunSimulation(config, options);
  progress.Finish();
  if (!result.ok()) {
    std::fprintf(stderr, "idem-sim: %s\n", result.status().ToString().c_str());
    return kExitSetup;
  }
  const idem::sim::Report& report = result->report;
  for (const std::string& line : result->trace) std::printf("  %s\n", line.c_str());
  std::fputs(idem::sim::FormatReport(report, config, result->store_description).c_str(), stdout);
  if (!report.passed()) {
    std::printf("FAILED: seed %llu, reproduce with:\n  idem-sim %s\n",
                static_cast<unsigned long long>(config.seed),
                idem::sim::DescribeConfig(config).c_str());
    if (absl::GetFlag(FLAGS_shrink)) {
      std::fflush(stdout);
      absl::StatusOr<idem::sim::ShrinkResult> shrunk = idem::sim::ShrinkFailure(config);
      if (!shrunk.ok()) {
        std::printf("shrinking: %s\n", std::string(shrunk.status().message()).c_str());
      } else {
        const std::vector<std::string>& trace = shrunk->replay.trace;
        std::printf(
            "shrunk to %lld of %lld initial deliveries in %d runs; trace of the shrunk run "
            "(%zu steps):\n",
            static_cast<long long>(shrunk->deliveries_after),
            static_cast<long long>(shrunk->deliveries_before), shrunk->runs, trace.size());
        const std::size_t limit =
            static_cast<std::size_t>(std::max<int32_t>(0, absl::GetFlag(FLAGS_trace_lines)));
        for (std::size_t i = 0; i < trace.size() && i < limit; ++i) {
          std::printf("  %s\n", trace[i].c_str());
        }
        if (trace.size() > limit) std::printf("  ... %zu more steps\n", trace.size() - limit);
        for (const std::string& v : shrunk->replay.report.violations) {
          std::printf("  ! %s\n", v.c_str());
        }
      }
    }
  }
  std::printf("%s\n", idem::sim::FormatResultLine(report, config.seed).c_str());
  return report.passed() ? 0 : kExitFail;
}

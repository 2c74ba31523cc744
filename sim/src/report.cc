#include "idem/sim/report.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "text.h"

namespace idem::sim {

using internal::Sv;

std::string FormatReport(const Report& r, const SimConfig& config,
                         const std::string& store_description) {
  std::string out;
  auto row = [&out](std::string_view name, int64_t value, std::string_view note = "") {
    absl::StrAppendFormat(&out, "  %-26s %12d  %s\n", name, value, note);
  };
  absl::StrAppendFormat(&out, "idem-sim report: %s mode, %s, seed %d, %s\n",
                        Sv(ModeName(config.mode)), store_description, config.seed,
                        config.processes > 0 ? absl::StrCat(config.processes, " consumer processes")
                                             : absl::StrCat(config.consumers, " consumer threads"));
  out += "  traffic\n";
  row("messages", r.messages, "distinct (id, payload) pairs generated");
  row("deliveries", r.deliveries, "hand-outs to consumers, redeliveries included");
  row("handler runs", r.handler_runs, "effects started (rolled back or repeated included)");
  row("committed effects", r.effects,
      config.mode == Mode::kLease ? "completions the store accepted" : "effect rows committed");
  out += "  outcomes\n";
  row("processed", r.processed);
  row("duplicates", r.duplicates, "suppressed: acked without running the handler");
  row("stale", r.stale, "refused by the version gate");
  row("in progress", r.in_progress, "another consumer held the claim: redelivered later");
  row("conflicts", r.conflicts, "same id, different payload");
  row("dead-lettered", r.dead_lettered);
  if (r.capacity_refusals > 0 || r.evicted_reruns > 0) {
    row("refused: store full", r.capacity_refusals, "claim failed closed (ResourceExhausted)");
    row("run again after eviction", r.evicted_reruns, "the store evicted their COMPLETED record");
  }
  row("store errors", r.store_errors, "nacked and redelivered (handler not run on a failed claim)");
  if (config.processes == 0) {
    out += "  store\n";
    row("write groups", r.write_groups, "writes that carried several concurrent calls");
    row("grouped calls", r.grouped_calls, "calls carried by them");
  }
  out += "  faults injected\n";
  for (int f = 1; f < static_cast<int>(Fault::kCount); ++f) {
    if (r.faults[f] == 0) continue;
    row(FaultName(static_cast<Fault>(f)), r.faults[f],
        static_cast<Fault>(f) == Fault::kLeaseExpired ? "observed: a fenced completion" : "");
  }
  row("consumer crashes", r.crashes, "each followed by a restart");
  out += "  invariants (all must be 0)\n";
  row("lost (I1)", r.lost,
      r.unacked > 0 || r.wrong_outcomes > 0
          ? absl::StrFormat("%d unacknowledged deliveries, %d unjustified outcomes", r.unacked,
                            r.wrong_outcomes)
          : "every delivery acked with a justified outcome");
  row("double effects (I2/I3)", r.double_effects, "ids whose effect committed twice");
  row("unexplained (I3/I4/I6)", r.unexplained,
      absl::StrFormat("fencing %d, fail-open %d, double claims %d, runs after completion %d",
                      r.fencing_violations, r.fail_open_runs, r.double_claims,
                      r.runs_after_complete));
  row("stale applied (I5)", r.stale_applied, "per key, applied versions strictly increase");
  row("over capacity (I7)", r.over_capacity, "the store stays within its record bound");
  if (r.budget_exhausted)
    out += "  the run hit its delivery budget (a livelock) and was cut short\n";
  for (const std::string& v : r.violations) absl::StrAppend(&out, "  ! ", v, "\n");
  absl::StrAppendFormat(&out, "  verdict: %s   (%.2f s wall, %.0f deliveries/s)\n",
                        r.passed() ? "PASS" : "FAIL", r.wall_seconds,
                        r.wall_seconds > 0 ? r.deliveries / r.wall_seconds : 0.0);
  return out;
}

std::string FormatResultLine(const Report& r, uint64_t seed) {
  return absl::StrFormat(
      "RESULT verdict=%s messages=%d deliveries=%d handler_runs=%d effects=%d duplicates=%d "
      "stale=%d in_progress=%d conflicts=%d dead_lettered=%d lost=%d double_effects=%d "
      "unexplained=%d stale_applied=%d seed=%d",
      r.passed() ? "PASS" : "FAIL", r.messages, r.deliveries, r.handler_runs, r.effects,
      r.duplicates, r.stale, r.in_progress, r.conflicts, r.dead_lettered, r.lost, r.double_effects,
      r.unexplained, r.stale_applied, seed);
}

}  // namespace idem::sim

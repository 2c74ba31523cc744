// What the oracle concluded about one run: the counters of the RESULT line, the details behind
// them, and the two renderings (a table for people, one line for machines).
//
// Thread-safety: plain values.
#ifndef IDEM_SIM_REPORT_H_
#define IDEM_SIM_REPORT_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "idem/sim/config.h"

namespace idem::sim {

struct Report {
  // ---- the RESULT line ----
  int64_t messages = 0;       // distinct messages generated (id + payload)
  int64_t deliveries = 0;     // hand-outs to consumers, redeliveries included
  int64_t handler_runs = 0;   // times a handler started its effect (rolled back ones included)
  int64_t effects = 0;        // committed effects (lease: accepted completions; tx: effect rows)
  int64_t processed = 0;      // acks with outcome Processed
  int64_t duplicates = 0;     // acks with outcome Duplicate
  int64_t stale = 0;          // acks with outcome Stale
  int64_t in_progress = 0;    // InProgress answers (each one a redelivery)
  int64_t conflicts = 0;      // acks with outcome Conflict
  int64_t dead_lettered = 0;  // acks with outcome DeadLettered
  // I1: messages not acknowledged with a justified outcome (never acked, a Duplicate without a
  // committed effect, a Stale/Conflict the store's history does not justify), plus completions
  // of runs whose effect never happened.
  int64_t lost = 0;
  // I2 / I3: ids whose effect was committed more than once.
  int64_t double_effects = 0;
  // I3 / I4 / I6: extra handler runs no recorded fault explains, runs without a claim, runs on a
  // completed id, completions by a token that no longer owned the claim, claims granted over a
  // live lease.
  int64_t unexplained = 0;
  // I5: versions applied out of order per key, and gates that disagree with what was applied.
  int64_t stale_applied = 0;
  // I7: a store bound broken: more records held than its capacity, a claim refused as full while
  // it was not, ids run again after completion beyond what the store's evictions explain.
  int64_t over_capacity = 0;

  // ---- details ----
  int64_t capacity_refusals = 0;    // acks of deliveries refused because the store was full
  int64_t evicted_reruns = 0;       // ids claimed again after their COMPLETED record was evicted
  int64_t store_errors = 0;         // non-OK statuses the consumers saw
  int64_t crashes = 0;              // consumer crashes (restarts)
  int64_t unacked = 0;              // deliveries never acknowledged (part of lost)
  int64_t wrong_outcomes = 0;       // unjustified Duplicate/Stale/Conflict (part of lost)
  int64_t fencing_violations = 0;   // part of unexplained
  int64_t fail_open_runs = 0;       // part of unexplained
  int64_t double_claims = 0;        // part of unexplained
  int64_t runs_after_complete = 0;  // part of unexplained
  // Group commit (in process): the store's StoreStats::write_groups and grouped_calls.
  int64_t write_groups = 0;
  int64_t grouped_calls = 0;
  std::array<int64_t, static_cast<int>(Fault::kCount)> faults{};
  bool budget_exhausted = false;  // the run was cut short (a livelock); unacked counts as lost
  double wall_seconds = 0;
  // The first few violations, described for people.
  std::vector<std::string> violations;

  bool passed() const {
    return lost == 0 && double_effects == 0 && unexplained == 0 && stale_applied == 0 &&
           over_capacity == 0;
  }
};

// The human-readable table; ends with a newline.
std::string FormatReport(const Report& report, const SimConfig& config,
                         const std::string& store_description);

// RESULT verdict=PASS|FAIL messages=N ... seed=N  (no newline)
std::string FormatResultLine(const Report& report, uint64_t seed);

}  // namespace idem::sim

#endif  // IDEM_SIM_REPORT_H_

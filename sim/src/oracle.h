// The oracle: counts, per message id, handler runs and committed effects, and per key the applied
// versions, and checks the invariants I1-I7 (docs/design.md, "Invariants") against those counts.
// There is one oracle for both profiles.
//
// In lease mode it is fed the store's answers as seen just below the fault injector (so it knows
// what the store applied even when the reply was lost), in the order the store applied them. In
// transactional mode it is fed the committed effect rows, in commit order. The in-process
// profile feeds it directly; the process profile's consumers write the same events to a durable
// log (event_log.h) which the broker replays into it after the run. On real time (the process
// profile, server stores) the oracle judges nothing by lease ends or by the exact order of
// events of different consumers, only by counts.
//
// Thread-safety: none; the simulator calls it from one thread at a time (the scheduler's baton).
#ifndef IDEM_SIM_SRC_ORACLE_H_
#define IDEM_SIM_SRC_ORACLE_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "idem/processor.h"
#include "idem/sim/config.h"
#include "idem/sim/report.h"
#include "idem/sim/workload.h"
#include "idem/store.h"

namespace idem::sim::internal {

// What a consumer observes of its store calls and handler runs. The Oracle is one; the process
// profile's consumers write another to their event log.
class EventSink {
 public:
  virtual ~EventSink() = default;

  // ---- lease mode: the store's answers, in the order it applied them ----
  virtual void ClaimApplied(int64_t message, const ClaimResult& result, int64_t now_ms) = 0;
  // The consumer received the claim's token (its reply was not lost).
  virtual void ClaimReturned(uint64_t token) = 0;
  virtual void CompleteApplied(int64_t message, uint64_t token,
                               const std::optional<VersionStamp>& version,
                               const absl::StatusOr<CompleteStatus>& result, int64_t now_ms) = 0;
  virtual void ReleaseApplied(int64_t message, uint64_t token, const absl::Status& status) = 0;

  // ---- both modes ----
  // A handler started its effect under `token` at `now_ms`.
  virtual void HandlerRan(int64_t message, uint64_t token, int64_t now_ms) = 0;
  // A fault hit the run of `token` (0: no run involved).
  virtual void FaultInjected(int64_t message, uint64_t token, Fault fault) = 0;
  // The run of `token` was hit by a fault already counted (a call failed during an outage).
  virtual void RunFaulted(uint64_t token) = 0;
};

class Oracle final : public EventSink {
 public:
  // `exact_time`: the store's clock is the simulator's, so lease ends can be judged exactly.
  Oracle(const Workload& workload, Mode mode, bool exact_time);

  void ClaimApplied(int64_t message, const ClaimResult& result, int64_t now_ms) override;
  void ClaimReturned(uint64_t token) override;
  void CompleteApplied(int64_t message, uint64_t token, const std::optional<VersionStamp>& version,
                       const absl::StatusOr<CompleteStatus>& result, int64_t now_ms) override;
  void ReleaseApplied(int64_t message, uint64_t token, const absl::Status& status) override;
  void HandlerRan(int64_t message, uint64_t token, int64_t now_ms) override;
  void FaultInjected(int64_t message, uint64_t token, Fault fault) override;
  void RunFaulted(uint64_t token) override;

  // I7: the store holds at most `capacity` dedup records; past it a new claim fails closed
  // (ResourceExhausted) or, with `evict`, an old COMPLETED record is evicted, after which its id
  // may run again. Without this call the oracle assumes no bound.
  void SetCapacity(int64_t capacity, bool evict);
  // A delivery the consumer acknowledged as refused because the store was full (its claim failed
  // with ResourceExhausted): justified only when the store held `capacity` records.
  void RefusedFull(int64_t message);
  // The store's final state (I7): how many records it holds, how many it evicted.
  void StoreBound(int64_t records_held, int64_t evictions);

  void Delivered() { ++report_.deliveries; }
  void Crashed() { ++report_.crashes; }
  void StoreError() { ++report_.store_errors; }
  void InProgress() { ++report_.in_progress; }
  // The broker took an acknowledgement of a live delivery of `message`.
  void Acked(int64_t message, Outcome outcome);

  // ---- transactional mode: committed effect rows, in commit order ----
  void EffectCommitted(int64_t message, uint64_t version);

  // `unacked`: the message of every delivery never acknowledged. `applied_version` (lease mode)
  // reads the store's version gate for a key; null skips that check.
  Report Finish(
      const std::vector<int64_t>& unacked,
      const std::function<absl::StatusOr<std::optional<uint64_t>>(const std::string& key)>&
          applied_version);

  const Report& report() const { return report_; }

 private:
  struct Run {
    int64_t message = 0;
    int64_t lease_until_ms = 0;
    bool returned = false;      // the consumer got the token
    bool ran = false;           // the handler started its effect
    bool committed = false;     // the store accepted its completion
    bool faulted = false;       // a recorded fault explains why it may not have committed
    bool before_commit = true;  // it ran before any completion of its id
  };
  struct IdState {
    uint64_t owner = 0;  // token of the latest claim the store granted
    int64_t owner_lease_until = 0;
    bool owner_live = false;  // that claim is neither released nor completed
    int64_t commits = 0;
    std::vector<int64_t> claimed_by;    // messages that were granted a claim
    std::vector<int64_t> committed_by;  // messages whose run committed (or effect rows)
    std::vector<uint64_t> runs;         // tokens that ran
    bool has_record = false;            // a claim on it was ever granted
  };

  void Violation(std::string text);
  bool OutcomeJustified(int64_t message, Outcome outcome, std::string* why) const;

  const Workload& workload_;
  Mode mode_;
  bool exact_time_;
  Report report_;
  std::vector<IdState> ids_;
  absl::flat_hash_map<uint64_t, Run> runs_;
  absl::flat_hash_map<std::string, uint64_t> applied_;  // key -> highest applied version
  std::vector<std::vector<Outcome>> acks_;              // per message
  std::vector<int> users_of_id_;                        // messages per distinct id
  // Real time: runs that started after a completion of their id, judged at Finish (explained
  // only when their own completion was fenced or a fault hit them).
  std::vector<uint64_t> late_runs_;
  int64_t capacity_ = 0;  // 0: no bound
  bool evict_ = false;
  int64_t records_ = 0;  // ids ever granted a claim: at least the records held
};

}  // namespace idem::sim::internal

#endif  // IDEM_SIM_SRC_ORACLE_H_

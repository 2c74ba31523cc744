#include "oracle.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "text.h"

namespace idem::sim::internal {
namespace {

constexpr std::size_t kMaxViolationsKept = 20;

// Ids may hold NUL and 0xFF: render them printable in messages.
std::string Printable(std::string_view bytes) {
  std::string out;
  for (unsigned char c : bytes) {
    if (c >= 0x20 && c < 0x7f) {
      out.push_back(static_cast<char>(c));
    } else {
      out += absl::StrFormat("\\x%02x", c);
    }
  }
  return out;
}

}  // namespace

Oracle::Oracle(const Workload& workload, Mode mode, bool exact_time)
    : workload_(workload),
      mode_(mode),
      exact_time_(exact_time),
      ids_(workload.distinct_ids),
      acks_(workload.messages.size()),
      users_of_id_(workload.distinct_ids, 0) {
  report_.messages = static_cast<int64_t>(workload.messages.size());
  for (const SimMessage& m : workload.messages) ++users_of_id_[m.id_index];
}

void Oracle::Violation(std::string text) {
  if (report_.violations.size() < kMaxViolationsKept) report_.violations.push_back(std::move(text));
}

void Oracle::SetCapacity(int64_t capacity, bool evict) {
  capacity_ = capacity;
  evict_ = evict;
}

void Oracle::RefusedFull(int64_t message) {
  ++report_.capacity_refusals;
  if (capacity_ > 0 && records_ >= capacity_) return;
  ++report_.over_capacity;
  Violation(absl::StrFormat(
      "I7: a claim of id %s was refused as the store being full, but it held at most %d of %s "
      "records",
      Printable(workload_.messages[message].id), records_,
      capacity_ > 0 ? absl::StrCat(capacity_) : "unbounded"));
}

void Oracle::StoreBound(int64_t records_held, int64_t evictions) {
  if (capacity_ > 0 && records_held > capacity_) {
    ++report_.over_capacity;
    Violation(absl::StrFormat("I7: the store holds %d records, more than its capacity %d",
                              records_held, capacity_));
  }
  if (report_.evicted_reruns > evictions) {
    report_.over_capacity += report_.evicted_reruns - evictions;
    Violation(absl::StrFormat(
        "I3/I7: %d completed ids were claimed again, but the store evicted only %d records",
        report_.evicted_reruns, evictions));
  }
}

void Oracle::ClaimApplied(int64_t message, const ClaimResult& result, int64_t now_ms) {
  if (result.status != ClaimStatus::kAcquired) return;
  IdState& id = ids_[workload_.messages[message].id_index];
  if (!id.has_record) {
    id.has_record = true;
    ++records_;
  }
  if (evict_ && id.commits > 0) {
    // The COMPLETED record was evicted (counted against the store's evictions at the end): the
    // id starts over, and its runs and completions so far belong to the evicted record.
    ++report_.evicted_reruns;
    id.commits = 0;
    id.runs.clear();
  }
  if (exact_time_ && id.owner_live && now_ms < id.owner_lease_until) {
    ++report_.double_claims;
    ++report_.unexplained;
    Violation(absl::StrFormat(
        "I3: id %s claimed with token %d at t=%d while token %d held a lease until t=%d",
        Printable(workload_.messages[message].id), result.token, now_ms, id.owner,
        id.owner_lease_until));
  }
  // On real time, consumers' events reach the log in roughly the store's order only: the store's
  // own clock orders two claims of an id (a takeover's lease ends after the lease it took over).
  if (exact_time_ || id.owner == 0 || result.lease_until_ms >= id.owner_lease_until) {
    id.owner = result.token;
    id.owner_lease_until = result.lease_until_ms;
    id.owner_live = true;
  }
  if (std::find(id.claimed_by.begin(), id.claimed_by.end(), message) == id.claimed_by.end()) {
    id.claimed_by.push_back(message);
  }
  Run& run = runs_[result.token];
  run.message = message;
  run.lease_until_ms = result.lease_until_ms;
}

void Oracle::ClaimReturned(uint64_t token) { runs_[token].returned = true; }

void Oracle::CompleteApplied(int64_t message, uint64_t token,
                             const std::optional<VersionStamp>& version,
                             const absl::StatusOr<CompleteStatus>& result, int64_t now_ms) {
  const SimMessage& m = workload_.messages[message];
  IdState& id = ids_[m.id_index];
  auto it = runs_.find(token);
  if (!result.ok()) {
    if (result.status().code() != absl::StatusCode::kAborted) {
      // The store says it applied nothing: this run did not commit, and another may follow.
      if (it != runs_.end()) it->second.faulted = true;
      return;
    }
    if (it != runs_.end()) {
      // A fenced completion is how a lease expiry shows itself; it explains the next run only if
      // the lease had really ended.
      if (!exact_time_ || now_ms >= it->second.lease_until_ms) {
        it->second.faulted = true;
        ++report_.faults[static_cast<int>(Fault::kLeaseExpired)];
      } else {
        Violation(absl::StrFormat(
            "I4: completion of id %s by token %d refused at t=%d though its lease ran until t=%d",
            Printable(m.id), token, now_ms, it->second.lease_until_ms));
      }
    }
    return;
  }
  ++report_.effects;
  if (token != id.owner || it == runs_.end()) {
    ++report_.fencing_violations;
    ++report_.unexplained;
    Violation(absl::StrFormat("I4: id %s completed by token %d while token %d owned the claim",
                              Printable(m.id), token, id.owner));
  }
  if (it != runs_.end()) {
    if (!it->second.ran) {
      ++report_.lost;
      Violation(absl::StrFormat("I1: id %s completed by token %d whose handler never ran",
                                Printable(m.id), token));
    }
    it->second.committed = true;
  }
  if (token == id.owner) id.owner_live = false;
  ++id.commits;
  if (id.commits == 2) {
    ++report_.double_effects;
    Violation(
        absl::StrFormat("I3/I4: id %s completed a second time (token %d)", Printable(m.id), token));
  }
  id.committed_by.push_back(message);
  if (version.has_value() && *result == CompleteStatus::kCompleted) {
    const std::string key(version->key);
    auto [slot, inserted] = applied_.try_emplace(key, version->version);
    if (!inserted) {
      // On real time two consumers' completions reach the log in roughly the store's order
      // only: there the gate is judged at the end, against the highest version applied.
      if (exact_time_ && version->version <= slot->second) {
        ++report_.stale_applied;
        Violation(absl::StrFormat("I5: key %s applied version %u after version %u", key,
                                  version->version, slot->second));
      }
      slot->second = std::max(slot->second, version->version);
    }
  }
}

void Oracle::ReleaseApplied(int64_t message, uint64_t token, const absl::Status& status) {
  if (!status.ok()) return;
  IdState& id = ids_[workload_.messages[message].id_index];
  if (token == id.owner) id.owner_live = false;
}

void Oracle::HandlerRan(int64_t message, uint64_t token, int64_t now_ms) {
  ++report_.handler_runs;
  if (mode_ != Mode::kLease) return;
  const SimMessage& m = workload_.messages[message];
  IdState& id = ids_[m.id_index];
  Run& run = runs_[token];
  if (!run.returned) {
    ++report_.fail_open_runs;
    ++report_.unexplained;
    Violation(absl::StrFormat("I6: handler of id %s ran under token %d, which no claim returned",
                              Printable(m.id), token));
  }
  run.message = message;
  run.ran = true;
  run.before_commit = id.commits == 0;
  if (exact_time_ && run.returned && now_ms >= run.lease_until_ms) {
    // The claim's lease ended before its handler started (a batch whose consumer paused before
    // reaching this message): the lease expiry explains the run, even after another consumer
    // took the id over and completed it.
    run.faulted = true;
    ++report_.faults[static_cast<int>(Fault::kLeaseExpired)];
    if (!run.before_commit) {
      run.before_commit = true;
      id.runs.push_back(token);
      return;
    }
  }
  if (!run.before_commit && !exact_time_) {
    // On real time the log's order of two consumers' events is only roughly the store's: judged
    // at the end, when it is known whether this run's own completion was fenced.
    late_runs_.push_back(token);
    return;
  }
  if (!run.before_commit) {
    ++report_.runs_after_complete;
    ++report_.unexplained;
    Violation(absl::StrFormat("I3: handler of id %s ran again (token %d) after it was completed",
                              Printable(m.id), token));
  }
  id.runs.push_back(token);
}

void Oracle::FaultInjected(int64_t message, uint64_t token, Fault fault) {
  (void)message;
  ++report_.faults[static_cast<int>(fault)];
  if (token != 0) {
    auto it = runs_.find(token);
    if (it != runs_.end()) it->second.faulted = true;
  }
}

void Oracle::RunFaulted(uint64_t token) {
  auto it = runs_.find(token);
  if (it != runs_.end()) it->second.faulted = true;
}

void Oracle::Acked(int64_t message, Outcome outcome) {
  switch (outcome) {
    case Outcome::kProcessed:
      ++report_.processed;
      break;
    case Outcome::kDuplicate:
      ++report_.duplicates;
      break;
    case Outcome::kStale:
      ++report_.stale;
      break;
    case Outcome::kConflict:
      ++report_.conflicts;
      break;
    case Outcome::kDeadLettered:
      ++report_.dead_lettered;
      break;
    case Outcome::kInProgress:
      break;  // never an ack
  }
  acks_[message].push_back(outcome);
}

void Oracle::EffectCommitted(int64_t message, uint64_t version) {
  const SimMessage& m = workload_.messages[message];
  IdState& id = ids_[m.id_index];
  ++report_.effects;
  ++id.commits;
  if (id.commits == 2) {
    ++report_.double_effects;
    Violation(absl::StrFormat("I2: id %s has %s effect rows", Printable(m.id), "two or more"));
  }
  id.committed_by.push_back(message);
  if (!m.versioned) return;  // no version gate orders it
  auto [slot, inserted] = applied_.try_emplace(m.key, version);
  if (!inserted) {
    if (version <= slot->second) {
      ++report_.stale_applied;
      Violation(absl::StrFormat("I5: key %s committed version %u after version %u", m.key, version,
                                slot->second));
    }
    slot->second = std::max(slot->second, version);
  }
}

bool Oracle::OutcomeJustified(int64_t message, Outcome outcome, std::string* why) const {
  const SimMessage& m = workload_.messages[message];
  const IdState& id = ids_[m.id_index];
  auto committed = [&] {
    return std::find(id.committed_by.begin(), id.committed_by.end(), message) !=
           id.committed_by.end();
  };
  switch (outcome) {
    case Outcome::kProcessed:
    case Outcome::kDuplicate:
      if (committed()) return true;
      *why = "no effect of this message was committed";
      return false;
    case Outcome::kStale: {
      if (!m.versioned) {
        *why = "it carries no version";
        return false;
      }
      auto it = applied_.find(m.key);
      if (it != applied_.end() && it->second >= m.version) return true;
      *why = "no version >= its own was applied to its key";
      return false;
    }
    case Outcome::kConflict: {
      // Another payload under the same id must have reached the store first.
      if (mode_ == Mode::kLease) {
        for (int64_t other : id.claimed_by) {
          if (other != message) return true;
        }
      } else {
        if (users_of_id_[m.id_index] > 1) return true;
      }
      *why = "no other payload with this id was ever claimed";
      return false;
    }
    case Outcome::kDeadLettered:
      return true;
    case Outcome::kInProgress:
      *why = "InProgress is not an ack";
      return false;
  }
  return false;
}

Report Oracle::Finish(
    const std::vector<int64_t>& unacked,
    const std::function<absl::StatusOr<std::optional<uint64_t>>(const std::string& key)>&
        applied_version) {
  std::vector<bool> lost(workload_.messages.size(), false);
  for (int64_t message : unacked) {
    ++report_.unacked;
    if (!lost[message]) {
      lost[message] = true;
      Violation(absl::StrFormat("I1: a delivery of id %s (key %s v%u) was never acknowledged",
                                Printable(workload_.messages[message].id),
                                workload_.messages[message].key,
                                workload_.messages[message].version));
    }
  }
  for (std::size_t message = 0; message < acks_.size(); ++message) {
    for (Outcome outcome : acks_[message]) {
      std::string why;
      if (OutcomeJustified(static_cast<int64_t>(message), outcome, &why)) continue;
      ++report_.wrong_outcomes;
      if (!lost[message]) {
        lost[message] = true;
        Violation(absl::StrFormat("I1: id %s acknowledged as %s, but %s",
                                  Printable(workload_.messages[message].id),
                                  Sv(OutcomeName(outcome)), why));
      }
    }
  }
  report_.lost += std::count(lost.begin(), lost.end(), true);

  if (mode_ == Mode::kLease) {
    // A run that started after its id was completed is explained only by its own lease having
    // ended: then its completion was fenced (or a fault stopped it first).
    for (uint64_t token : late_runs_) {
      const Run& run = runs_[token];
      if (run.faulted && !run.committed) continue;
      ++report_.runs_after_complete;
      ++report_.unexplained;
      Violation(absl::StrFormat("I3: handler of id %s ran again (token %d) after it was completed",
                                Printable(workload_.messages[run.message].id), token));
    }
    // I3: before an id's first completion, every run but one must have a recorded fault that
    // kept it from completing (a crash after the effect, an expired lease, a failed completion).
    for (std::size_t i = 0; i < ids_.size(); ++i) {
      int64_t runs = 0;
      int64_t explained = 0;
      for (uint64_t token : ids_[i].runs) {
        const Run& run = runs_[token];
        if (!run.before_commit) continue;  // already counted as a run after completion
        ++runs;
        if (!run.committed && run.faulted) ++explained;
      }
      if (runs - 1 > explained) {
        report_.unexplained += runs - 1 - explained;
        Violation(absl::StrFormat("I3: id index %d ran %d times with %d recorded faults", i, runs,
                                  explained));
      }
    }
    if (applied_version) {
      for (const std::string& key : workload_.keys) {
        absl::StatusOr<std::optional<uint64_t>> stored = applied_version(key);
        auto it = applied_.find(key);
        const bool applied_any = it != applied_.end();
        const uint64_t expected = applied_any ? it->second : 0;
        if (!stored.ok()) {
          Violation(absl::StrCat("reading the version gate of ", key,
                                 " failed: ", stored.status().ToString()));
          continue;
        }
        if (stored->has_value() != applied_any || (applied_any && **stored != expected)) {
          ++report_.stale_applied;
          Violation(absl::StrFormat("I5: the store's version gate of %s holds %s, applied %s", key,
                                    stored->has_value() ? absl::StrCat(**stored) : "nothing",
                                    applied_any ? absl::StrCat(expected) : "nothing"));
        }
      }
    }
  }
  return report_;
}

}  // namespace idem::sim::internal

#include "idem/processor.h"

#include <algorithm>
#include <chrono>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "internal/status_macros.h"

namespace idem {
namespace {

// Releases a claim if the handler unwinds with an exception. The destructor is noexcept: the
// handler's exception travels on untouched, and a failed release only means the claim becomes
// claimable when its lease ends instead of at once (I1 still holds).
class ReleaseOnUnwind {
 public:
  ReleaseOnUnwind(DedupStore& store, std::string_view scope, std::string_view id, uint64_t token)
      : store_(store), scope_(scope), id_(id), token_(token) {}
  ReleaseOnUnwind(const ReleaseOnUnwind&) = delete;
  ReleaseOnUnwind& operator=(const ReleaseOnUnwind&) = delete;
  ~ReleaseOnUnwind() noexcept {
    if (armed_) (void)store_.Release(scope_, id_, token_);
  }
  void Disarm() { armed_ = false; }

 private:
  DedupStore& store_;
  std::string_view scope_;
  std::string_view id_;
  uint64_t token_;
  bool armed_ = true;
};

// Times the steps of one message and reports them to the observer (kObserved), or does nothing
// at all (!kObserved: every member is empty and inlined away).
template <bool kObserved>
class Probe;

template <>
class Probe<false> {
 public:
  Probe(ProcessObserver*, std::string_view, std::string_view) {}
  template <typename F>
  auto Store(F&& f) {
    return f();
  }
  template <typename F>
  void RunHandler(F&& f) {
    f();
  }
  void Claimed(const ClaimResult&) {}
  void Waited() {}
  absl::Status Fail(absl::Status status) { return status; }
  ProcessResult Done(ProcessResult result) { return result; }
};

template <>
class Probe<true> {
 public:
  using SteadyClock = std::chrono::steady_clock;

  Probe(ProcessObserver* observer, std::string_view scope, std::string_view id)
      : observer_(observer), exceptions_(std::uncaught_exceptions()) {
    event_.scope = scope;
    event_.id = id;
  }
  Probe(const Probe&) = delete;
  Probe& operator=(const Probe&) = delete;
  // A handler that threw: reported on the way out, the exception travels on untouched.
  ~Probe() {
    if (reported_ || std::uncaught_exceptions() <= exceptions_) return;
    event_.handler_threw = true;
    observer_->OnMessage(event_);
  }

  template <typename F>
  auto Store(F&& f) {
    const SteadyClock::time_point start = SteadyClock::now();
    auto out = f();
    event_.store_time += SteadyClock::now() - start;
    return out;
  }
  template <typename F>
  void RunHandler(F&& f) {
    event_.handler_ran = true;
    const SteadyClock::time_point start = SteadyClock::now();
    struct AddOnExit {  // the handler's time counts also when it throws
      ProcessEvent& event;
      SteadyClock::time_point start;
      ~AddOnExit() { event.handler_time += SteadyClock::now() - start; }
    } add{event_, start};
    f();
  }
  void Claimed(const ClaimResult& claim) {
    event_.attempt = claim.attempt;
    event_.took_over = claim.took_over;
  }
  void Waited() { event_.waited = true; }
  absl::Status Fail(absl::Status status) {
    event_.status = status.code();
    event_.fenced = status.code() == absl::StatusCode::kAborted && event_.handler_ran;
    Report();
    return status;
  }
  ProcessResult Done(ProcessResult result) {
    event_.outcome = result.outcome;
    event_.attempt = result.attempt;
    Report();
    return result;
  }

 private:
  void Report() {
    reported_ = true;
    observer_->OnMessage(event_);
  }

  ProcessObserver* observer_;
  const int exceptions_;
  bool reported_ = false;
  ProcessEvent event_;
};

}  // namespace

std::string_view OutcomeName(Outcome outcome) {
  switch (outcome) {
    case Outcome::kProcessed:
      return "processed";
    case Outcome::kDuplicate:
      return "duplicate";
    case Outcome::kInProgress:
      return "in_progress";
    case Outcome::kStale:
      return "stale";
    case Outcome::kConflict:
      return "conflict";
    case Outcome::kDeadLettered:
      return "dead_lettered";
  }
  return "unknown";
}

absl::Status HandlerContext::ExtendLease(std::chrono::milliseconds lease) {
  if (store_ == nullptr) return absl::OkStatus();  // transactional mode: the transaction holds it
  return store_->Extend(scope_, message_id_, token_, lease).status();
}

ProcessResult OutcomeOfClaim(const ClaimResult& claim) {
  ProcessResult out{.attempt = claim.attempt};
  switch (claim.status) {
    case ClaimStatus::kAcquired:  // not an outcome on its own; callers run the handler
    case ClaimStatus::kInProgress:
      out.outcome = Outcome::kInProgress;
      out.lease_until_ms = claim.lease_until_ms;
      break;
    case ClaimStatus::kDuplicate:
      out.outcome = Outcome::kDuplicate;
      out.result = claim.result;
      break;
    case ClaimStatus::kStale:
      out.outcome = Outcome::kStale;
      break;
    case ClaimStatus::kConflict:
      out.outcome = Outcome::kConflict;
      break;
    case ClaimStatus::kDeadLettered:
      out.outcome = Outcome::kDeadLettered;
      break;
  }
  return out;
}

absl::StatusOr<Processor> Processor::Create(DedupStore& store, std::string scope,
                                            ProcessorOptions options) {
  IDEM_RETURN_IF_ERROR(ValidateScope(scope));
  IDEM_RETURN_IF_ERROR(ValidateLease(options.lease));
  if (options.retention.count() < 0) {
    return absl::InvalidArgumentError("retention must not be negative");
  }
  if (options.wait_for_in_flight.count() < 0) {
    return absl::InvalidArgumentError("wait_for_in_flight must not be negative");
  }
  return Processor(store, std::move(scope), options);
}

ProcessResult Processor::NotAcquired(const ClaimResult& claim) const {
  ProcessResult out = OutcomeOfClaim(claim);
  if (out.outcome == Outcome::kInProgress && out.lease_until_ms > 0) {
    Clock* clock = options_.store_clock;
    if (clock == nullptr) {
      clock = store_->BackendName() == "memory" ? &SteadyClock() : &SystemClock();
    }
    const int64_t left = out.lease_until_ms - clock->NowMillis();
    if (left > 0) out.retry_after = std::chrono::milliseconds(left);
  }
  return out;
}

ClaimRequest Processor::MakeClaim(const Message& message) const {
  ClaimRequest request{.scope = scope_,
                       .id = message.id,
                       .lease = options_.lease,
                       .max_attempts = options_.max_attempts,
                       .version = message.version};
  if (options_.fingerprint_payloads) request.fingerprint = Fingerprint::Of(message.payload);
  return request;
}

absl::StatusOr<ProcessResult> Processor::Process(const Message& message, Handler handler) const {
  if (options_.observer != nullptr) return ProcessImpl<true>(message, handler);
  return ProcessImpl<false>(message, handler);
}

template <bool kObserved>
absl::StatusOr<ProcessResult> Processor::ProcessImpl(const Message& message,
                                                     Handler handler) const {
  Probe<kObserved> probe(options_.observer, scope_, message.id);
  const ClaimRequest request = MakeClaim(message);
  absl::StatusOr<ClaimResult> claim = probe.Store([&] { return store_->Claim(request); });
  if (!claim.ok()) return probe.Fail(std::move(claim).status());
  if (claim->status == ClaimStatus::kInProgress && options_.wait_for_in_flight.count() > 0) {
    // Wait for the live claim to end, then claim once more: the store, not the wait, decides
    // (COMPLETED: a duplicate with its result; released or expired: this delivery runs it).
    probe.Waited();
    // No longer than until the other claim's lease ends (plus a little): a consumer that died
    // never completes, and once its lease is over the claim below takes it over at once. The
    // stores' default wait polls Inspect and cannot tell a dead claim from a slow one.
    std::chrono::milliseconds bound = options_.wait_for_in_flight;
    if (const std::chrono::milliseconds left = NotAcquired(*claim).retry_after; left.count() > 0) {
      bound = std::min(bound, left + std::chrono::milliseconds(20));
    }
    const auto deadline = std::chrono::steady_clock::now() + bound;
    absl::StatusOr<bool> ended =
        probe.Store([&] { return store_->WaitForCompletion(scope_, message.id, deadline); });
    if (!ended.ok()) return probe.Fail(std::move(ended).status());
    claim = probe.Store([&] { return store_->Claim(request); });
    if (!claim.ok()) return probe.Fail(std::move(claim).status());
  }
  probe.Claimed(*claim);
  if (claim->status != ClaimStatus::kAcquired) return probe.Done(NotAcquired(*claim));

  HandlerContext context(store_, scope_, message.id, claim->attempt, claim->token);
  {
    ReleaseOnUnwind guard(*store_, scope_, message.id, claim->token);
    probe.RunHandler([&] { handler(context); });
    guard.Disarm();
  }
  CompleteRequest complete{.scope = scope_,
                           .id = message.id,
                           .token = claim->token,
                           .fingerprint = request.fingerprint,
                           .version = message.version,
                           .retention = options_.retention};
  if (context.result()) complete.result = *context.result();
  // A failed completion leaves the claim to expire: the write may have been applied (a lost
  // reply), so releasing it could let another consumer run the handler at once.
  absl::StatusOr<CompleteStatus> done = probe.Store([&] { return store_->Complete(complete); });
  if (!done.ok()) return probe.Fail(std::move(done).status());
  return probe.Done(ProcessResult{
      .outcome = *done == CompleteStatus::kStale ? Outcome::kStale : Outcome::kProcessed,
      .result = context.result(),
      .attempt = claim->attempt});
}

namespace {

// Completes `event` with a message's final result and hands it to the observer.
void Report(ProcessObserver& observer, ProcessEvent& event,
            const absl::StatusOr<ProcessResult>& result) {
  if (result.ok()) {
    event.outcome = result->outcome;
    event.attempt = result->attempt;
  } else {
    event.status = result.status().code();
    event.fenced =
        event.status == absl::StatusCode::kAborted && (event.handler_ran || event.attempt > 0);
  }
  observer.OnMessage(event);
}

// Per-message bookkeeping of a batch between its claim and its completion.
struct BatchEntry {
  std::size_t index = 0;  // position in the caller's batch
  uint64_t token = 0;
  uint32_t attempt = 0;
  // kPending until its handler ran (kHandled), its claim was found lost before it could run
  // (kAbandoned: neither completed nor released, it belongs to someone else now), or a newer
  // version of its key ran earlier in the batch (kSuperseded: stale, released without running).
  enum class State { kPending, kHandled, kAbandoned, kSuperseded } state = State::kPending;
  std::optional<std::string> result;
};

// If a handler throws, completes the messages already handled and releases the ones not yet
// handled, so the batch leaves nothing claimed behind; the exception travels on untouched.
class BatchUnwind {
 public:
  BatchUnwind(DedupStore& store, std::vector<CompleteRequest>& completes,
              std::vector<BatchEntry>& entries, std::string_view scope,
              std::span<const Message> messages)
      : store_(store),
        completes_(completes),
        entries_(entries),
        scope_(scope),
        messages_(messages) {}
  BatchUnwind(const BatchUnwind&) = delete;
  BatchUnwind& operator=(const BatchUnwind&) = delete;
  ~BatchUnwind() noexcept {
    if (!armed_) return;
    try {
      if (!completes_.empty()) (void)store_.CompleteBatch(completes_);
      for (const BatchEntry& entry : entries_) {
        if (entry.state == BatchEntry::State::kPending ||
            entry.state == BatchEntry::State::kSuperseded) {
          (void)store_.Release(scope_, messages_[entry.index].id, entry.token);
        }
      }
    } catch (...) {
      // Unwinding already: an allocation failure here leaves the claims to their leases.
    }
  }
  void Disarm() { armed_ = false; }

 private:
  DedupStore& store_;
  std::vector<CompleteRequest>& completes_;
  std::vector<BatchEntry>& entries_;
  std::string_view scope_;
  std::span<const Message> messages_;
  bool armed_ = true;
};

}  // namespace

std::vector<absl::StatusOr<ProcessResult>> Processor::ProcessBatch(
    std::span<const Message> messages, Handler handler) const {
  std::vector<ClaimRequest> requests;
  requests.reserve(messages.size());
  for (const Message& message : messages) requests.push_back(MakeClaim(message));
  // With an observer: one event per message, reported once every outcome is known.
  ProcessObserver* const observer = options_.observer;
  using SteadyTime = std::chrono::steady_clock;
  std::vector<ProcessEvent> events;
  SteadyTime::time_point started;
  if (observer != nullptr) {
    events.resize(messages.size());
    started = SteadyTime::now();
  }
  std::vector<absl::StatusOr<ClaimResult>> claims = store_->ClaimBatch(requests);
  if (observer != nullptr && !messages.empty()) {
    const auto share = (SteadyTime::now() - started) / messages.size();
    for (std::size_t i = 0; i < messages.size(); ++i) {
      events[i].scope = scope_;
      events[i].id = messages[i].id;
      events[i].store_time = share;
      if (i < claims.size() && claims[i].ok()) {
        events[i].attempt = claims[i]->attempt;
        events[i].took_over = claims[i]->took_over;
      }
    }
  }

  std::vector<absl::StatusOr<ProcessResult>> out(messages.size(), ProcessResult{});
  std::vector<BatchEntry> entries;
  for (std::size_t i = 0; i < messages.size(); ++i) {
    if (i >= claims.size()) {
      out[i] = absl::InternalError("the store returned fewer claim results than requests");
    } else if (!claims[i].ok()) {
      out[i] = claims[i].status();
    } else if (claims[i]->status != ClaimStatus::kAcquired) {
      out[i] = NotAcquired(*claims[i]);
    } else {
      entries.push_back(
          BatchEntry{.index = i, .token = claims[i]->token, .attempt = claims[i]->attempt});
    }
  }

  // The whole batch was claimed at once, so the later handlers run late in their leases: past half
  // a lease, each claim is renewed before its handler runs, and a claim lost meanwhile is not run.
  Clock& clock = options_.clock != nullptr ? *options_.clock : SteadyClock();
  const int64_t claimed_at = clock.NowMillis();
  std::vector<CompleteRequest> completes;
  std::vector<const BatchEntry*> completed_entries;
  completes.reserve(entries.size());
  completed_entries.reserve(entries.size());
  // Every claim of the batch passed the store's version gate against the versions applied before
  // the batch, so a key's older version that follows a newer one in the same batch would run its
  // handler although it is stale: the newest version of each key handled so far refuses it here.
  absl::flat_hash_map<std::string_view, uint64_t> handled_versions;
  {
    BatchUnwind guard(*store_, completes, entries, scope_, messages);
    for (BatchEntry& entry : entries) {
      const Message& message = messages[entry.index];
      if (message.version) {
        const auto newer = handled_versions.find(message.version->key);
        if (newer != handled_versions.end() && newer->second >= message.version->version) {
          entry.state = BatchEntry::State::kSuperseded;
          continue;
        }
      }
      if (clock.NowMillis() - claimed_at >= options_.lease.count() / 2) {
        if (observer != nullptr) started = SteadyTime::now();
        absl::StatusOr<int64_t> renewed =
            store_->Extend(scope_, message.id, entry.token, options_.lease);
        if (observer != nullptr) events[entry.index].store_time += SteadyTime::now() - started;
        if (!renewed.ok()) {
          entry.state = BatchEntry::State::kAbandoned;
          out[entry.index] = renewed.status();
          continue;
        }
      }
      HandlerContext context(store_, scope_, message.id, entry.attempt, entry.token);
      if (observer == nullptr) {
        handler(context);
      } else {
        ProcessEvent& event = events[entry.index];
        event.handler_ran = true;
        started = SteadyTime::now();
        try {
          handler(context);
        } catch (...) {
          event.handler_time += SteadyTime::now() - started;
          event.handler_threw = true;
          // One event per message, as on the normal path: the ones the claim decided with their
          // outcome, the ones handled before (the unwind completes them) as processed, the rest
          // (released unrun by the unwind) as cancelled.
          std::vector<bool> claimed(messages.size(), false);
          for (const BatchEntry& other : entries) claimed[other.index] = true;
          for (std::size_t i = 0; i < messages.size(); ++i) {
            if (!claimed[i]) Report(*observer, events[i], out[i]);
          }
          for (const BatchEntry& other : entries) {
            if (other.index == entry.index) continue;
            ProcessEvent& e = events[other.index];
            if (other.state == BatchEntry::State::kHandled) {
              e.outcome = Outcome::kProcessed;
            } else {
              e.status = absl::StatusCode::kCancelled;
            }
            observer->OnMessage(e);
          }
          observer->OnMessage(event);
          throw;
        }
        event.handler_time += SteadyTime::now() - started;
      }
      entry.state = BatchEntry::State::kHandled;
      entry.result = context.result();
      if (message.version) {
        uint64_t& newest = handled_versions[message.version->key];
        newest = std::max(newest, message.version->version);
      }
      CompleteRequest complete{.scope = scope_,
                               .id = message.id,
                               .token = entry.token,
                               .fingerprint = requests[entry.index].fingerprint,
                               .version = message.version,
                               .retention = options_.retention};
      if (entry.result) complete.result = *entry.result;
      completes.push_back(complete);
      completed_entries.push_back(&entry);
    }
    guard.Disarm();
  }

  if (observer != nullptr) started = SteadyTime::now();
  std::vector<absl::StatusOr<CompleteStatus>> done = store_->CompleteBatch(completes);
  if (observer != nullptr && !completed_entries.empty()) {
    const auto share = (SteadyTime::now() - started) / completed_entries.size();
    for (const BatchEntry* entry : completed_entries) events[entry->index].store_time += share;
  }
  // A superseded message is acked as stale and its claim released, not completed: were the newer
  // version's completion to fail, completing the older one would apply a version whose handler
  // never ran. A redelivery is refused at its claim once the newer version is applied.
  for (const BatchEntry& entry : entries) {
    if (entry.state != BatchEntry::State::kSuperseded) continue;
    (void)store_->Release(scope_, messages[entry.index].id, entry.token);
    out[entry.index] = ProcessResult{.outcome = Outcome::kStale, .attempt = entry.attempt};
  }
  for (std::size_t k = 0; k < completed_entries.size(); ++k) {
    const BatchEntry& entry = *completed_entries[k];
    if (k >= done.size()) {
      out[entry.index] = absl::InternalError("the store returned fewer completions than requests");
    } else if (!done[k].ok()) {
      out[entry.index] = done[k].status();
    } else {
      out[entry.index] = ProcessResult{
          .outcome = *done[k] == CompleteStatus::kStale ? Outcome::kStale : Outcome::kProcessed,
          .result = entry.result,
          .attempt = entry.attempt};
    }
  }
  // Ids whose record this batch completed (processed, or completed with its version refused).
  absl::flat_hash_set<std::string_view> completed_here;
  for (std::size_t k = 0; k < completed_entries.size() && k < done.size(); ++k) {
    if (done[k].ok()) completed_here.insert(messages[completed_entries[k]->index].id);
  }
  AskRepeatsAgain(messages, requests, completed_here, out, events);
  if (observer != nullptr) {
    for (std::size_t i = 0; i < messages.size(); ++i) Report(*observer, events[i], out[i]);
  }
  return out;
}

void Processor::AskRepeatsAgain(std::span<const Message> messages,
                                std::span<const ClaimRequest> requests,
                                const absl::flat_hash_set<std::string_view>& completed_here,
                                std::vector<absl::StatusOr<ProcessResult>>& out,
                                std::vector<ProcessEvent>& events) const {
  // A message whose id an earlier message of the batch claimed (a producer retry written twice,
  // back to back) met that claim open and was answered in progress. Once the batch completed the
  // claim, the store is asked again and answers what a later delivery would hear: duplicate, or
  // conflict for another payload. One more round trip, only when a batch repeats an id.
  std::vector<std::size_t> repeats;
  std::vector<ClaimRequest> again;
  for (std::size_t i = 0; i < messages.size(); ++i) {
    if (out[i].ok() && out[i]->outcome == Outcome::kInProgress &&
        completed_here.contains(messages[i].id)) {
      repeats.push_back(i);
      again.push_back(requests[i]);
    }
  }
  if (repeats.empty()) return;
  const auto started = std::chrono::steady_clock::now();
  std::vector<absl::StatusOr<ClaimResult>> claims = store_->ClaimBatch(again);
  const auto share = (std::chrono::steady_clock::now() - started) / repeats.size();
  for (std::size_t k = 0; k < repeats.size(); ++k) {
    const std::size_t i = repeats[k];
    if (!events.empty()) events[i].store_time += share;
    // A failed second ask leaves the first answer (in progress: the broker delivers it again).
    if (k >= claims.size() || !claims[k].ok()) continue;
    if (claims[k]->status == ClaimStatus::kAcquired) {
      // The completed record is already gone (evicted by a capacity bound, or a retention shorter
      // than the batch): give the claim back unrun; the redelivery runs it.
      (void)store_->Release(scope_, messages[i].id, claims[k]->token);
      continue;
    }
    out[i] = NotAcquired(*claims[k]);
  }
}

}  // namespace idem

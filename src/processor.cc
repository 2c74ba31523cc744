#include "idem/processor.h"

#include <algorithm>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
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
  const ClaimRequest request = MakeClaim(message);
  IDEM_ASSIGN_OR_RETURN(const ClaimResult claim, store_->Claim(request));
  if (claim.status != ClaimStatus::kAcquired) return NotAcquired(claim);

  HandlerContext context(store_, scope_, message.id, claim.attempt, claim.token);
  {
    ReleaseOnUnwind guard(*store_, scope_, message.id, claim.token);
    handler(context);
    guard.Disarm();
  }
  CompleteRequest complete{.scope = scope_,
                           .id = message.id,
                           .token = claim.token,
                           .fingerprint = request.fingerprint,
                           .version = message.version,
                           .retention = options_.retention};
  if (context.result()) complete.result = *context.result();
  // A failed completion leaves the claim to expire: the write may have been applied (a lost
  // reply), so releasing it could let another consumer run the handler at once.
  IDEM_ASSIGN_OR_RETURN(const CompleteStatus done, store_->Complete(complete));
  return ProcessResult{
      .outcome = done == CompleteStatus::kStale ? Outcome::kStale : Outcome::kProcessed,
      .result = context.result(),
      .attempt = claim.attempt};
}

namespace {

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
  std::vector<absl::StatusOr<ClaimResult>> claims = store_->ClaimBatch(requests);

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
        absl::StatusOr<int64_t> renewed =
            store_->Extend(scope_, message.id, entry.token, options_.lease);
        if (!renewed.ok()) {
          entry.state = BatchEntry::State::kAbandoned;
          out[entry.index] = renewed.status();
          continue;
        }
      }
      HandlerContext context(store_, scope_, message.id, entry.attempt, entry.token);
      handler(context);
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

  std::vector<absl::StatusOr<CompleteStatus>> done = store_->CompleteBatch(completes);
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
  return out;
}

}  // namespace idem

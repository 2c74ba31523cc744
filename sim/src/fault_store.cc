#include "fault_store.h"

#include <atomic>
#include <limits>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "idem/forwarding_store.h"
#include "idem/sim/prng.h"
#include "text.h"

namespace idem::sim::internal {
namespace {

// FNV-1a: the same on every platform, unlike std::hash.
uint64_t BytesHash(std::string_view bytes) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : bytes) h = (h ^ c) * 0x100000001b3ULL;
  return Hash64(h);
}

absl::Status CrashedError() {
  return absl::UnavailableError("simulated: the consumer's process is dead");
}
absl::Status OutageError() { return absl::UnavailableError("simulated: store outage"); }
absl::Status InjectedError() { return absl::UnavailableError("simulated: store call failed"); }
absl::Status LostReplyError() {
  return absl::DeadlineExceededError("simulated: the store applied the call, the reply was lost");
}

std::string Describe(const absl::StatusOr<ClaimResult>& r) {
  if (!r.ok()) return r.status().ToString();
  std::string s(Sv(ClaimStatusName(r->status)));
  if (r->status == ClaimStatus::kAcquired) {
    absl::StrAppendFormat(&s, " token=%d attempt=%d lease_until=%d%s", r->token, r->attempt,
                          r->lease_until_ms, r->took_over ? " (takeover)" : "");
  }
  return s;
}

std::string Describe(const absl::StatusOr<CompleteStatus>& r) {
  return r.ok() ? std::string(Sv(CompleteStatusName(*r))) : r.status().ToString();
}

class FaultInjectingStore final : public ForwardingStore {
 public:
  FaultInjectingStore(DedupStore& inner, FaultHooks hooks)
      : ForwardingStore(inner), hooks_(std::move(hooks)) {}

  absl::StatusOr<ClaimResult> Claim(const ClaimRequest& request) override {
    std::vector<absl::StatusOr<ClaimResult>> out = ClaimBatch(std::span(&request, 1));
    return std::move(out[0]);
  }

  absl::StatusOr<CompleteStatus> Complete(const CompleteRequest& request) override {
    std::vector<absl::StatusOr<CompleteStatus>> out = CompleteBatch(std::span(&request, 1));
    return std::move(out[0]);
  }

  std::vector<absl::StatusOr<ClaimResult>> ClaimBatch(
      std::span<const ClaimRequest> requests) override {
    Point();
    CallContext* ctx = CurrentCallContext();
    std::vector<absl::StatusOr<ClaimResult>> out(requests.size(), CrashedError());
    if (ctx != nullptr && ctx->crashed) return out;
    std::vector<ClaimRequest> forwarded;
    std::vector<std::size_t> where;
    for (std::size_t i = 0; i < requests.size(); ++i) {
      CallContext::InHand* h = ctx == nullptr ? nullptr : ctx->Find(requests[i].id);
      if (absl::Status failed = Inject(h, 0, Fault::kStoreErrorOnClaim); !failed.ok()) {
        out[i] = failed;
        Trace(h, absl::StrCat("claim -> ", failed.ToString()));
        continue;
      }
      forwarded.push_back(requests[i]);
      where.push_back(i);
    }
    if (forwarded.empty()) return out;
    std::vector<absl::StatusOr<ClaimResult>> got;
    Store([&] {
      got = forwarded.size() == 1
                ? std::vector<absl::StatusOr<ClaimResult>>{inner().Claim(forwarded[0])}
                : inner().ClaimBatch(forwarded);
    });
    const int64_t now = hooks_.time->Now();
    for (std::size_t k = 0; k < where.size(); ++k) {
      const std::size_t i = where[k];
      absl::StatusOr<ClaimResult> r =
          k < got.size() ? std::move(got[k]) : absl::InternalError("short batch reply");
      CallContext::InHand* h = ctx == nullptr ? nullptr : ctx->Find(requests[i].id);
      if (h != nullptr && r.ok()) hooks_.sink->ClaimApplied(h->message, *r, now);
      Trace(h, absl::StrCat("claim -> ", Describe(r)));
      if (h != nullptr && r.ok() && Take(h, Fault::kLostReplyOnClaim)) {
        const uint64_t token = r->status == ClaimStatus::kAcquired ? r->token : 0;
        hooks_.sink->FaultInjected(h->message, token, Fault::kLostReplyOnClaim);
        Trace(h, "  ...the claim's reply is lost");
        out[i] = LostReplyError();
        continue;
      }
      if (h != nullptr && r.ok() && r->status == ClaimStatus::kAcquired) {
        hooks_.sink->ClaimReturned(r->token);
        h->token = r->token;
      }
      out[i] = std::move(r);
    }
    return out;
  }

  std::vector<absl::StatusOr<CompleteStatus>> CompleteBatch(
      std::span<const CompleteRequest> requests) override {
    Point();
    CallContext* ctx = CurrentCallContext();
    std::vector<absl::StatusOr<CompleteStatus>> out(requests.size(), CrashedError());
    if (ctx != nullptr && ctx->crashed) return out;
    std::vector<CompleteRequest> forwarded;
    std::vector<std::size_t> where;
    for (std::size_t i = 0; i < requests.size(); ++i) {
      CallContext::InHand* h = ctx == nullptr ? nullptr : ctx->Find(requests[i].id);
      if (absl::Status failed = Inject(h, requests[i].token, Fault::kStoreErrorOnComplete);
          !failed.ok()) {
        out[i] = failed;
        Trace(h, absl::StrCat("complete token=", requests[i].token, " -> ", failed.ToString()));
        continue;
      }
      forwarded.push_back(requests[i]);
      where.push_back(i);
    }
    if (forwarded.empty()) return out;
    std::vector<absl::StatusOr<CompleteStatus>> got;
    Store([&] {
      got = forwarded.size() == 1
                ? std::vector<absl::StatusOr<CompleteStatus>>{inner().Complete(forwarded[0])}
                : inner().CompleteBatch(forwarded);
    });
    const int64_t now = hooks_.time->Now();
    for (std::size_t k = 0; k < where.size(); ++k) {
      const std::size_t i = where[k];
      absl::StatusOr<CompleteStatus> r =
          k < got.size() ? std::move(got[k]) : absl::InternalError("short batch reply");
      CallContext::InHand* h = ctx == nullptr ? nullptr : ctx->Find(requests[i].id);
      if (h != nullptr) {
        hooks_.sink->CompleteApplied(h->message, requests[i].token, requests[i].version, r, now);
      }
      Trace(h, absl::StrCat("complete token=", requests[i].token, " -> ", Describe(r)));
      if (h != nullptr && r.ok() && Take(h, Fault::kLostReplyOnComplete)) {
        hooks_.sink->FaultInjected(h->message, requests[i].token, Fault::kLostReplyOnComplete);
        Trace(h, "  ...the completion's reply is lost");
        out[i] = LostReplyError();
        continue;
      }
      out[i] = std::move(r);
    }
    return out;
  }

  absl::Status Release(std::string_view scope, std::string_view id, uint64_t token) override {
    Point();
    CallContext* ctx = CurrentCallContext();
    if (ctx != nullptr && ctx->crashed) return CrashedError();
    if (OutageActive()) return OutageError();
    absl::Status s;
    Store([&] { s = inner().Release(scope, id, token); });
    CallContext::InHand* h = ctx == nullptr ? nullptr : ctx->Find(id);
    if (h != nullptr) hooks_.sink->ReleaseApplied(h->message, token, s);
    Trace(h, absl::StrCat("release token=", token, " -> ", s.ToString()));
    return s;
  }

  absl::StatusOr<int64_t> Extend(std::string_view scope, std::string_view id, uint64_t token,
                                 std::chrono::milliseconds lease) override {
    CallContext* ctx = CurrentCallContext();
    if (ctx != nullptr && ctx->crashed) return CrashedError();
    if (OutageActive()) return OutageError();
    absl::StatusOr<int64_t> extended;
    Store([&] { extended = inner().Extend(scope, id, token, lease); });
    return extended;
  }

 private:
  void Point() {
    if (hooks_.scheduling_point) hooks_.scheduling_point();
  }

  void Store(const std::function<void()>& call) {
    if (hooks_.around_store) {
      hooks_.around_store(call);
    } else {
      call();
    }
  }

  bool OutageActive() { return hooks_.time->Now() < outage_until_; }

  // Consumes `h`'s planned fault if it is `fault`.
  static bool Take(CallContext::InHand* h, Fault fault) {
    if (h == nullptr || h->fault_used || h->fault != fault) return false;
    h->fault_used = true;
    return true;
  }

  // The failure to inject into a call for `h` before it reaches the store, or OK. Starts an
  // outage when `h` plans one; fails once when `h` plans `once`.
  absl::Status Inject(CallContext::InHand* h, uint64_t token, Fault once) {
    // An outage does not extend itself: the calls it fails are retried attempts whose own plans
    // could otherwise chain outages into a store that never comes back.
    if (!OutageActive() && h != nullptr && Take(h, Fault::kStoreOutage)) {
      outage_until_ = hooks_.time->Now() + hooks_.outage_ms;
      hooks_.sink->FaultInjected(h->message, token, Fault::kStoreOutage);
      Trace(h, absl::StrCat("store outage until t=", outage_until_));
    }
    if (OutageActive()) {
      // A completion lost to the outage explains a later run of the same id.
      if (h != nullptr && token != 0) hooks_.sink->RunFaulted(token);
      return OutageError();
    }
    if (Take(h, once)) {
      hooks_.sink->FaultInjected(h->message, token, once);
      return InjectedError();
    }
    return absl::OkStatus();
  }

  void Trace(const CallContext::InHand* h, std::string text) {
    if (!hooks_.trace) return;
    hooks_.trace(h == nullptr ? text : absl::StrCat("m", h->message, " ", text));
  }

  FaultHooks hooks_;
  int64_t outage_until_ = std::numeric_limits<int64_t>::min();
};

// Breaks one invariant on purpose. Batch calls use the base class's loops, so they break the
// same way as the single calls.
class SabotagedStore final : public ForwardingStore {
 public:
  SabotagedStore(DedupStore& inner, Sabotage sabotage)
      : ForwardingStore(inner), sabotage_(sabotage) {}

  absl::StatusOr<ClaimResult> Claim(const ClaimRequest& request) override {
    ClaimRequest req = request;
    if (sabotage_ == Sabotage::kIgnoreVersions) req.version.reset();
    if (sabotage_ == Sabotage::kFalseDuplicates) {
      std::lock_guard<std::mutex> lock(mu_);
      const bool first_sight = seen_.insert(std::string(req.id)).second;
      if (first_sight && BytesHash(req.id) % 3 == 0) {
        ClaimResult r;
        r.status = ClaimStatus::kDuplicate;
        return r;
      }
    }
    absl::StatusOr<ClaimResult> r = inner().Claim(req);
    if (!r.ok()) return r;
    std::lock_guard<std::mutex> lock(mu_);
    if (r->status == ClaimStatus::kAcquired) latest_token_[std::string(req.id)] = r->token;
    if (sabotage_ == Sabotage::kClaimForgetsRecords && r->status == ClaimStatus::kDuplicate) {
      // As if the record had been lost: the id looks new again.
      ClaimResult forged;
      forged.status = ClaimStatus::kAcquired;
      forged.token = (uint64_t{1} << 63) | ++forged_;
      forged.attempt = 1;
      forged.lease_until_ms = std::numeric_limits<int64_t>::max();
      forged_tokens_.insert(forged.token);
      return forged;
    }
    return r;
  }

  absl::StatusOr<CompleteStatus> Complete(const CompleteRequest& request) override {
    CompleteRequest req = request;
    if (sabotage_ == Sabotage::kIgnoreVersions) req.version.reset();
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (forged_tokens_.contains(req.token)) return CompleteStatus::kCompleted;
    }
    absl::StatusOr<CompleteStatus> r = inner().Complete(req);
    if (sabotage_ != Sabotage::kCompleteIgnoresToken || r.ok() ||
        r.status().code() != absl::StatusCode::kAborted) {
      return r;
    }
    // Fencing ignored: complete on behalf of whoever owns the claim now, and report success.
    std::optional<uint64_t> owner;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = latest_token_.find(std::string(req.id));
      if (it != latest_token_.end()) owner = it->second;
    }
    if (owner && *owner != req.token) {
      req.token = *owner;
      (void)inner().Complete(req);
    }
    return CompleteStatus::kCompleted;
  }

  absl::Status Release(std::string_view scope, std::string_view id, uint64_t token) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (forged_tokens_.contains(token)) return absl::OkStatus();
    }
    return inner().Release(scope, id, token);
  }

 private:
  const Sabotage sabotage_;
  std::mutex mu_;
  absl::flat_hash_map<std::string, uint64_t> latest_token_;
  absl::flat_hash_set<uint64_t> forged_tokens_;
  absl::flat_hash_set<std::string> seen_;
  uint64_t forged_ = 0;
};

}  // namespace

CallContext*& CurrentCallContext() {
  thread_local CallContext* context = nullptr;
  return context;
}

std::unique_ptr<DedupStore> NewFaultInjectingStore(DedupStore& inner, FaultHooks hooks) {
  return std::make_unique<FaultInjectingStore>(inner, std::move(hooks));
}

std::unique_ptr<DedupStore> NewSabotagedStore(DedupStore& inner, Sabotage sabotage) {
  return std::make_unique<SabotagedStore>(inner, sabotage);
}

std::string PrintableId(std::string_view id) {
  std::string out;
  for (unsigned char c : id) {
    if (c >= 0x20 && c < 0x7f) {
      out.push_back(static_cast<char>(c));
    } else {
      out += absl::StrFormat("\\x%02x", c);
    }
  }
  return out;
}

}  // namespace idem::sim::internal

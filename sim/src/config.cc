#include "idem/sim/config.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "idem/open_store.h"

namespace idem::sim {

std::string_view ModeName(Mode mode) {
  switch (mode) {
    case Mode::kLease:
      return "lease";
    case Mode::kTransactional:
      return "transactional";
  }
  return "unknown";
}

absl::StatusOr<Mode> ParseMode(std::string_view name) {
  if (name == "lease") return Mode::kLease;
  if (name == "transactional" || name == "tx") return Mode::kTransactional;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown mode '", std::string(name), "' (expected lease or transactional)"));
}

std::string_view SabotageName(Sabotage sabotage) {
  switch (sabotage) {
    case Sabotage::kNone:
      return "none";
    case Sabotage::kCompleteIgnoresToken:
      return "complete_ignores_token";
    case Sabotage::kClaimForgetsRecords:
      return "claim_forgets_records";
    case Sabotage::kIgnoreVersions:
      return "ignore_versions";
    case Sabotage::kFalseDuplicates:
      return "false_duplicates";
  }
  return "unknown";
}

absl::StatusOr<Sabotage> ParseSabotage(std::string_view name) {
  for (Sabotage s :
       {Sabotage::kNone, Sabotage::kCompleteIgnoresToken, Sabotage::kClaimForgetsRecords,
        Sabotage::kIgnoreVersions, Sabotage::kFalseDuplicates}) {
    if (name == SabotageName(s)) return s;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown sabotage '", std::string(name),
      "' (expected none, complete_ignores_token, claim_forgets_records, ignore_versions or "
      "false_duplicates)"));
}

std::string_view FaultName(Fault fault) {
  switch (fault) {
    case Fault::kNone:
      return "none";
    case Fault::kCrashBeforeClaim:
      return "crash_before_claim";
    case Fault::kCrashAfterClaim:
      return "crash_after_claim";
    case Fault::kCrashAfterEffect:
      return "crash_after_effect";
    case Fault::kCrashAfterComplete:
      return "crash_after_complete";
    case Fault::kPauseBeyondLease:
      return "pause_beyond_lease";
    case Fault::kStoreErrorOnClaim:
      return "store_error_on_claim";
    case Fault::kStoreErrorOnComplete:
      return "store_error_on_complete";
    case Fault::kStoreOutage:
      return "store_outage";
    case Fault::kLostReplyOnClaim:
      return "lost_reply_on_claim";
    case Fault::kLostReplyOnComplete:
      return "lost_reply_on_complete";
    case Fault::kLeaseExpired:
      return "lease_expired";
    case Fault::kCount:
      break;
  }
  return "unknown";
}

std::string DescribeConfig(const SimConfig& c) {
  return absl::StrFormat(
      "%s--mode=%s --seed=%d --messages=%d --keys=%d --consumers=%d --processes=%d "
      "--dup-rate=%g --conflict-rate=%g --unversioned-rate=%g --reorder-window=%d --crash-rate=%g "
      "--pause-rate=%g "
      "--store-error-rate=%g --outage-rate=%g --lost-reply-rate=%g --lease-ms=%d --batch=%d%s%s%s",
      c.store_uri.empty() ? "" : absl::StrCat("--store=", RedactUri(c.store_uri), " "),
      ModeName(c.mode), c.seed, c.messages, c.keys, c.consumers, c.processes, c.dup_rate,
      c.conflict_rate, c.unversioned_rate, c.reorder_window, c.crash_rate, c.pause_rate,
      c.store_error_rate, c.outage_rate, c.lost_reply_rate, c.lease_ms, c.batch,
      c.wait_ms == 0 ? "" : absl::StrCat(" --wait-ms=", c.wait_ms),
      c.concurrent ? " --concurrent" : "", c.sabotage == Sabotage::kNone
          ? ""
          : absl::StrCat(" --sabotage=", std::string(SabotageName(c.sabotage))));
}

absl::Status ValidateConfig(const SimConfig& c) {
  auto bad = [](std::string_view what) { return absl::InvalidArgumentError(std::string(what)); };
  if (c.messages < 1) return bad("--messages must be at least 1");
  if (c.messages > 50'000'000) return bad("--messages must be at most 50000000");
  if (c.keys < 1) return bad("--keys must be at least 1");
  if (c.consumers < 1 || c.consumers > 256) return bad("--consumers must be in 1..256");
  if (c.processes < 0 || c.processes > 64) return bad("--processes must be in 0..64");
  if (c.reorder_window < 0) return bad("--reorder-window must not be negative");
  if (c.lease_ms < 1) return bad("--lease-ms must be at least 1");
  if (c.batch < 1 || c.batch > 1000) return bad("--batch must be in 1..1000");
  if (c.wait_ms < 0) return bad("--wait-ms must not be negative");
  if (c.concurrent && (c.processes > 0 || c.mode != Mode::kLease)) {
    return bad("--concurrent needs in-process consumers in lease mode");
  }
  if (c.wait_ms > 0 && (c.processes == 0 || c.mode != Mode::kLease)) {
    return bad("--wait-ms needs --processes and lease mode (in-process consumers take turns)");
  }
  for (auto [name, rate] : {std::pair<std::string_view, double>{"--dup-rate", c.dup_rate},
                            {"--conflict-rate", c.conflict_rate},
                            {"--unversioned-rate", c.unversioned_rate},
                            {"--crash-rate", c.crash_rate},
                            {"--pause-rate", c.pause_rate},
                            {"--store-error-rate", c.store_error_rate},
                            {"--outage-rate", c.outage_rate},
                            {"--lost-reply-rate", c.lost_reply_rate}}) {
    if (!(rate >= 0.0 && rate <= 1.0)) {
      return bad(absl::StrCat(std::string(name), " must be in [0, 1]"));
    }
  }
  if (c.sabotage != Sabotage::kNone && c.mode != Mode::kLease) {
    return bad("--sabotage wraps the DedupStore of lease mode; transactional mode has none");
  }
  const double per_attempt =
      c.crash_rate + c.pause_rate + c.store_error_rate + c.outage_rate + c.lost_reply_rate;
  if (per_attempt > 0.9) {
    return bad("the fault rates add up to more than 0.9 per delivery attempt");
  }
  return absl::OkStatus();
}

}  // namespace idem::sim

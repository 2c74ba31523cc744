#include "idem/policy.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace idem {
namespace {

double DrawUnit() {
  static absl::Mutex mu(absl::kConstInit);
  static absl::BitGen* gen = new absl::BitGen();
  absl::MutexLock lock(&mu);
  return absl::Uniform(*gen, 0.0, 1.0);
}

}  // namespace

std::string_view ActionName(Action action) {
  switch (action) {
    case Action::kAck:
      return "ack";
    case Action::kRedeliver:
      return "redeliver";
    case Action::kRetry:
      return "retry";
    case Action::kDeadLetter:
      return "dead_letter";
  }
  return "unknown";
}

absl::Status ValidateBackoff(const BackoffOptions& options) {
  if (options.initial.count() <= 0 || options.max < options.initial) {
    return absl::InvalidArgumentError("backoff needs 0 < initial <= max");
  }
  if (!(options.multiplier >= 1.0)) {
    return absl::InvalidArgumentError("backoff multiplier must be >= 1");
  }
  if (!(options.jitter >= 0.0 && options.jitter <= 1.0)) {
    return absl::InvalidArgumentError("backoff jitter must be in [0, 1]");
  }
  return absl::OkStatus();
}

std::chrono::milliseconds Backoff(const BackoffOptions& options, uint32_t attempt,
                                  std::optional<double> random) {
  const uint32_t n = std::max<uint32_t>(attempt, 1);
  const double max = static_cast<double>(options.max.count());
  // initial * multiplier^(n-1), computed in doubles and capped before it can overflow.
  double base = static_cast<double>(options.initial.count()) *
                std::pow(std::max(options.multiplier, 1.0), static_cast<double>(n - 1));
  if (!(base <= max)) base = max;  // also catches inf
  const double jitter = std::clamp(options.jitter, 0.0, 1.0);
  const double r = std::clamp(random.has_value() ? *random : DrawUnit(), 0.0, 1.0);
  const double delay = base * (1.0 - jitter * r);
  return std::chrono::milliseconds(static_cast<int64_t>(std::llround(delay)));
}

absl::Status OutcomePolicy::ValidateOptions(const OutcomePolicyOptions& options) {
  if (absl::Status s = ValidateBackoff(options.backoff); !s.ok()) return s;
  if (options.in_progress_min_delay.count() < 0 ||
      options.in_progress_max_delay < options.in_progress_min_delay) {
    return absl::InvalidArgumentError(
        "in_progress delays need 0 <= in_progress_min_delay <= in_progress_max_delay");
  }
  if (options.aborted_delay.count() < 0) {
    return absl::InvalidArgumentError("aborted_delay must not be negative");
  }
  return absl::OkStatus();
}

absl::StatusOr<OutcomePolicy> OutcomePolicy::Create(OutcomePolicyOptions options) {
  if (absl::Status s = ValidateOptions(options); !s.ok()) return s;
  return OutcomePolicy(std::move(options));
}

Decision OutcomePolicy::Default(const Delivery& delivery) const {
  if (delivery.handler_error.has_value()) {
    // The Processor released the claim, keeping its attempt count: back off, and the store
    // dead-letters the message once max_attempts is reached.
    return Decision{.action = Action::kRedeliver,
                    .delay = Backoff(options_.backoff, delivery.tries),
                    .reason = absl::StrCat("handler: ", std::string(*delivery.handler_error))};
  }
  const absl::StatusOr<ProcessResult>& result = *delivery.result;
  if (!result.ok()) {
    const absl::Status& s = result.status();
    if (s.code() == absl::StatusCode::kInvalidArgument) {
      return Decision{.action = Action::kDeadLetter,
                      .reason = absl::StrCat("invalid: ", std::string(s.message()))};
    }
    if (s.code() == absl::StatusCode::kAborted) {
      return Decision{.action = Action::kRedeliver,
                      .delay = options_.aborted_delay,
                      .reason = absl::StrCat("aborted: ", std::string(s.message()))};
    }
    return Decision{.action = Action::kRetry,
                    .delay = Backoff(options_.backoff, delivery.tries),
                    .reason = absl::StrCat("store: ", s.ToString())};
  }
  Decision d{.reason = std::string(OutcomeName(result->outcome)), .outcome = result->outcome};
  switch (result->outcome) {
    case Outcome::kProcessed:
    case Outcome::kDuplicate:
      d.action = Action::kAck;
      break;
    case Outcome::kStale:
      d.action = options_.dead_letter_stale ? Action::kDeadLetter : Action::kAck;
      break;
    case Outcome::kInProgress:
      d.action = Action::kRedeliver;
      d.delay = std::clamp(result->retry_after, options_.in_progress_min_delay,
                           options_.in_progress_max_delay);
      break;
    case Outcome::kConflict:
      d.action = Action::kDeadLetter;
      d.reason = "conflict";
      break;
    case Outcome::kDeadLettered:
      d.action = Action::kDeadLetter;
      d.reason = "max_attempts";
      break;
  }
  return d;
}

Decision OutcomePolicy::Decide(const Delivery& delivery) const {
  Decision d = Default(delivery);
  if (!options_.override_decision) return d;
  const bool store_failed = !delivery.handler_error.has_value() && !delivery.result->ok() &&
                            d.action == Action::kRetry;
  Decision chosen = options_.override_decision(delivery, d);
  if (store_failed && chosen.action == Action::kAck) return d;  // nothing recorded it: never ack
  if (chosen.delay.count() < 0) chosen.delay = std::chrono::milliseconds(0);
  return chosen;
}

}  // namespace idem

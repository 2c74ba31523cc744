// ProcessObserver: what a Processor reports about each message it handled, for metrics and logs
// (idem::prometheus implements it).
//
// Set ProcessorOptions::observer to receive one ProcessEvent per message of Process and
// ProcessBatch, after the message's outcome is known. With no observer set, the Processor reads
// no clock and builds no event: the hook costs one pointer test per message.
//
// Thread-safety: OnMessage is called from every thread that runs the Processor, concurrently; an
// implementation must be thread-safe. It is called synchronously on the message's path, so it
// should be quick (count, observe a histogram), and it must not throw (it is noexcept: a throw
// terminates). It must not call back into the same Processor.
#ifndef IDEM_OBSERVER_H_
#define IDEM_OBSERVER_H_

#include <chrono>
#include <cstdint>
#include <optional>
#include <string_view>

#include "absl/status/status.h"

namespace idem {

enum class Outcome;  // idem/processor.h

struct ProcessEvent {
  // The Processor's scope and the message id; valid only during OnMessage.
  std::string_view scope;
  std::string_view id;
  // The message's outcome; nullopt when `status` is not OK or the handler threw.
  std::optional<Outcome> outcome;
  // OK, or the code of the store error the message ended with (Unavailable, Aborted for a
  // completion fenced off by a takeover, ...). When the claim failed, the handler did not run.
  // Cancelled: a batch message whose handler never ran because an earlier handler of the batch
  // threw (its claim was released for redelivery).
  absl::StatusCode status = absl::StatusCode::kOk;
  // The attempt number of this run (outcome kProcessed), or the attempts recorded so far.
  uint32_t attempt = 0;
  // The claim took over another consumer's expired lease.
  bool took_over = false;
  // The handler ran (to its end or to an exception).
  bool handler_ran = false;
  // The handler threw: its claim was released and the exception propagates to the caller.
  bool handler_threw = false;
  // The completion (or the lease renewal before a batch handler) was refused with Aborted: the
  // claim had been taken over. Implies status == kAborted.
  bool fenced = false;
  // The delivery found a live claim and waited for it (ProcessorOptions::wait_for_in_flight).
  bool waited = false;
  // Time in the handler, and in store calls made for this message (claim, completion, renewal,
  // release, waiting). A batch's one claim and one completion round trip are divided evenly
  // among its messages.
  std::chrono::nanoseconds handler_time{0};
  std::chrono::nanoseconds store_time{0};
};

class ProcessObserver {
 public:
  virtual ~ProcessObserver() = default;
  virtual void OnMessage(const ProcessEvent& event) noexcept = 0;
};

}  // namespace idem

#endif  // IDEM_OBSERVER_H_

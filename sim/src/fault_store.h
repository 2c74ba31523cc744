// Store decorators of the simulator:
//  - the fault injector sits between the library and the store. It fails calls (once, or for an
//    outage), loses replies after the store applied a write, swallows the calls of a crashed
//    consumer (a dead process's calls never arrive), offers a scheduling point before each call,
//    and reports what the store applied to an EventSink (the oracle, or in a consumer process
//    the event log the oracle will replay);
//  - the sabotaged store breaks one invariant on purpose, to prove the oracle notices.
//
// Thread-safety: both are as thread-safe as the store they wrap, but the fault injector's
// bookkeeping assumes the simulator's scheduler runs one consumer at a time (in the concurrent
// profile, one at a time outside the store calls it makes through around_store).
#ifndef IDEM_SIM_SRC_FAULT_STORE_H_
#define IDEM_SIM_SRC_FAULT_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "idem/sim/config.h"
#include "idem/store.h"
#include "oracle.h"
#include "sim_time.h"

namespace idem::sim::internal {

// What the consumer on the current thread holds, for the fault injector below the library.
struct CallContext {
  struct InHand {
    std::string_view id;
    int64_t message = 0;
    Fault fault = Fault::kNone;
    bool fault_used = false;
    uint64_t token = 0;  // of this consumer's claim, once returned
    bool ran = false;    // the handler started its effect
  };
  int consumer = -1;
  bool crashed = false;  // the consumer is dead: its store calls never reach the store
  std::vector<InHand> in_hand;

  InHand* Find(std::string_view id) {
    for (InHand& h : in_hand) {
      if (h.id == id) return &h;
    }
    return nullptr;
  }
};

// The context of the consumer running on this thread, or null.
CallContext*& CurrentCallContext();

struct FaultHooks {
  EventSink* sink = nullptr;
  SimTime* time = nullptr;
  // A point where the scheduler may switch to another consumer.
  std::function<void()> scheduling_point;
  // Runs a call of the wrapped store's Claim, Complete, their batches, Release or Extend; in the
  // concurrent profile without holding the simulator, so that the calls of several consumers
  // overlap. Empty: the call just runs.
  std::function<void(const std::function<void()>&)> around_store;
  // Trace sink; null when not tracing.
  std::function<void(std::string)> trace;
  int64_t outage_ms = 0;
};

std::unique_ptr<DedupStore> NewFaultInjectingStore(DedupStore& inner, FaultHooks hooks);
std::unique_ptr<DedupStore> NewSabotagedStore(DedupStore& inner, Sabotage sabotage);

// Id bytes made printable for traces and messages.
std::string PrintableId(std::string_view id);

}  // namespace idem::sim::internal

#endif  // IDEM_SIM_SRC_FAULT_STORE_H_

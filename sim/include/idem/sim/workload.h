// The generated delivery history: messages (ids, payloads, per-key versions) and the broker's
// initial deliveries (duplicates, delayed redeliveries, reordering), plus the fault schedule.
//
// Everything here is a pure function of the SimConfig, so a seed replays exactly.
//
// Thread-safety: plain values and pure functions.
#ifndef IDEM_SIM_WORKLOAD_H_
#define IDEM_SIM_WORKLOAD_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "idem/sim/config.h"
#include "idem/types.h"

namespace idem::sim {

struct SimMessage {
  std::string id;       // opaque bytes; some ids hold NUL and 0xFF on purpose
  std::string payload;  // fingerprinted by the library
  std::string key;      // business key of the version gate
  uint64_t version = 0;
  // Whether the message carries a version stamp. Events that no version gate orders (a
  // notification, an append-only log entry) are never stale, so a redelivery of one whose
  // consumer paused past its lease is taken over rather than refused as stale, and the late
  // completion of the paused consumer must be fenced.
  bool versioned = true;
  int64_t id_index = 0;    // index of the distinct id; messages reusing an id share it
  bool reuses_id = false;  // same id as an earlier message, different payload
};

// One copy the producer side hands to the broker.
struct InitialDelivery {
  int64_t message = 0;
  int32_t copy = 0;   // 0 for the original send, 1.. for duplicates
  int64_t at_ms = 0;  // when it becomes deliverable (simulated ms after the start)
};

struct Workload {
  std::vector<SimMessage> messages;
  std::vector<InitialDelivery> deliveries;  // sorted by at_ms
  std::vector<std::string> keys;
  int64_t distinct_ids = 0;
};

Workload GenerateWorkload(const SimConfig& config);

// The version stamp a consumer attaches to `m`, or nullopt for an unversioned message.
std::optional<VersionStamp> StampOf(const SimMessage& m);

// The fault injected into attempt `attempt` (0 for the first hand-out) of a delivery copy. A
// pure function of the config and its arguments; attempts past a few are never faulted, so
// every message can eventually get through.
Fault PlanFault(const SimConfig& config, Profile profile, int64_t message, int32_t copy,
                int32_t attempt);

// How long a consumer hit by kPauseBeyondLease freezes (simulated or real ms): past its lease
// by a quarter lease, the interval at which the others retry a claim they found in progress.
int64_t PauseMillis(const SimConfig& config);

// How long a store outage lasts (simulated or real ms).
int64_t OutageMillis(const SimConfig& config);

}  // namespace idem::sim

#endif  // IDEM_SIM_WORKLOAD_H_

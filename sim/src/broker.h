// The simulated broker: at-least-once delivery with acknowledgements. A delivery handed to a
// consumer stays in flight until it is acknowledged; a negative acknowledgement, a dead consumer
// or an expired visibility timeout puts it back, to be handed out again later.
//
// Thread-safety: none; used by the scheduler's baton holder only.
#ifndef IDEM_SIM_SRC_BROKER_H_
#define IDEM_SIM_SRC_BROKER_H_

#include <cstdint>
#include <queue>
#include <tuple>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "idem/sim/workload.h"

namespace idem::sim::internal {

// One hand-out of a delivery copy.
struct Hand {
  uint64_t handle = 0;  // identifies this hand-out; stale after a redelivery
  int64_t message = 0;
  int32_t copy = 0;
  int32_t attempt = 0;  // 0 for the first hand-out of this copy
};

class Broker {
 public:
  // `budget`: most hand-outs in total, so a livelock ends the run instead of hanging it.
  Broker(const Workload& workload, int64_t start_ms, int64_t budget);

  bool HasDue(int64_t now) const;
  // When the next delivery becomes due, or -1.
  int64_t NextDue() const;
  // Up to `max` due deliveries, never two of one id (their outcomes would be ambiguous).
  std::vector<Hand> Poll(int64_t now, int max);
  // Takes an acknowledgement; false (and nothing changes) when the hand-out is stale.
  bool Ack(const Hand& hand);
  // Puts a hand-out back, due at `at`; no-op when stale.
  void Redeliver(const Hand& hand, int64_t at);

  int64_t acked() const { return acked_; }
  int64_t total() const { return total_; }
  int64_t handed_out() const { return handed_; }
  bool budget_exhausted() const { return handed_ >= budget_; }
  // The message of every delivery not acknowledged.
  std::vector<int64_t> Unacked() const;

 private:
  struct Pending {
    int64_t due;
    uint64_t seq;
    int64_t message;
    int32_t copy;
    int32_t attempt;
  };
  struct Later {
    bool operator()(const Pending& a, const Pending& b) const {
      return std::tie(a.due, a.seq) > std::tie(b.due, b.seq);
    }
  };

  const Workload& workload_;
  std::priority_queue<Pending, std::vector<Pending>, Later> pending_;
  absl::flat_hash_map<uint64_t, Hand> in_flight_;
  uint64_t next_seq_ = 0;
  uint64_t next_handle_ = 1;
  int64_t handed_ = 0;
  int64_t budget_;
  int64_t acked_ = 0;
  int64_t total_ = 0;
};

}  // namespace idem::sim::internal

#endif  // IDEM_SIM_SRC_BROKER_H_

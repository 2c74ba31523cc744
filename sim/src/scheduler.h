// The in-process profile's scheduler: consumer threads take turns holding one baton, and at each
// scheduling point the baton goes to a consumer drawn from the seed. So the interleaving of
// consumers (a claim between another's effect and its completion, a takeover during a pause) is
// chosen by the seed and replays exactly, while every consumer is a real thread with a real
// stack running the real library. When no consumer can run, simulated time jumps to the next
// delivery or wake-up.
//
// Concurrent mode (SimConfig::concurrent): no baton and no seeded choice. Every consumer runs on
// its own thread holding one mutex, which it lets go only in Unlocked (around a store call, so
// that store calls overlap) and while it waits in Yield; time is real. The run ends when every
// consumer is idle and nothing is due.
//
// Thread-safety: Yield is called by the baton holder only; the semaphores order every hand-off,
// so state written by one holder is visible to the next. In concurrent mode the mutex does.
#ifndef IDEM_SIM_SRC_SCHEDULER_H_
#define IDEM_SIM_SRC_SCHEDULER_H_

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <memory>
#include <semaphore>
#include <string>
#include <vector>

#include "idem/sim/prng.h"
#include "sim_time.h"

namespace idem::sim::internal {

class Scheduler {
 public:
  enum class State {
    kRunnable,  // can run now
    kIdle,      // waits for a delivery
    kSleeping,  // waits until a time (a paused consumer)
    kDone,
  };

  // `has_due(now)`: a delivery is ready; `next_due()`: when the next one will be (-1: none).
  Scheduler(int consumers, uint64_t seed, SimTime* time, std::function<bool(int64_t)> has_due,
            std::function<int64_t()> next_due, bool concurrent = false);

  // Runs body(i) on one thread per consumer until every consumer is idle and nothing is due, or
  // asleep forever. Exceptions escaping a body are recorded in errors().
  void Run(const std::function<void(int)>& body);

  // Called by consumer `self`, which holds the baton, at a scheduling point: `self` declares what
  // it waits for; returns when `self` holds the baton again or the run has finished.
  void Yield(int self, State state, int64_t until = 0);

  // Runs `call` (a store call) without holding the simulator: in concurrent mode other consumers
  // run meanwhile; otherwise it just runs `call`.
  void Unlocked(const std::function<void()>& call);

  bool finished() const { return finished_; }
  const std::vector<std::string>& errors() const { return errors_; }

 private:
  // The next consumer to run (made runnable), moving time forward as needed; -1 when done.
  int PickNext();
  void FinishAll();
  void RunConcurrent(const std::function<void(int)>& body);
  void YieldConcurrent(int self, State state, int64_t until);

  std::vector<std::unique_ptr<std::binary_semaphore>> baton_;
  std::vector<State> state_;
  std::vector<int64_t> until_;
  std::vector<int> candidates_;
  Rng rng_;
  SimTime* time_;
  std::function<bool(int64_t)> has_due_;
  std::function<int64_t()> next_due_;
  bool finished_ = false;
  std::vector<std::string> errors_;
  const bool concurrent_;
  std::mutex mu_;                    // concurrent mode: held by a running consumer
  std::condition_variable_any wake_;  // concurrent mode: an idle consumer waits on it
};

}  // namespace idem::sim::internal

#endif  // IDEM_SIM_SRC_SCHEDULER_H_

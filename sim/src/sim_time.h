// Time as the simulator sees it: simulated (a ManualClock shared with the store, so leases end
// when the scheduler says) or real (the store's own clock; waiting really waits).
//
// Thread-safety: Now() from any thread; the Advance calls only from the scheduler's baton holder.
#ifndef IDEM_SIM_SRC_SIM_TIME_H_
#define IDEM_SIM_SRC_SIM_TIME_H_

#include <chrono>
#include <cstdint>
#include <thread>

#include "idem/types.h"

namespace idem::sim::internal {

class SimTime {
 public:
  virtual ~SimTime() = default;
  virtual int64_t Now() = 0;
  // Moves time to `t` if it is later (waits for it on real time).
  virtual void AdvanceTo(int64_t t) = 0;
  // The clock to give the stores; null for stores that keep their own time.
  virtual Clock* clock() = 0;
  // Whether the store's lease ends are on this clock, so the oracle may judge them exactly.
  virtual bool exact() const = 0;
  void Advance(int64_t millis) { AdvanceTo(Now() + millis); }
};

class SimulatedTime final : public SimTime {
 public:
  int64_t Now() override { return clock_.NowMillis(); }
  void AdvanceTo(int64_t t) override {
    if (t > clock_.NowMillis()) clock_.Set(t);
  }
  Clock* clock() override { return &clock_; }
  bool exact() const override { return true; }

 private:
  ManualClock clock_;
};

class RealTime final : public SimTime {
 public:
  int64_t Now() override { return SystemClock().NowMillis(); }
  void AdvanceTo(int64_t t) override {
    const int64_t wait = t - Now();
    if (wait > 0) std::this_thread::sleep_for(std::chrono::milliseconds(wait));
  }
  Clock* clock() override { return nullptr; }
  bool exact() const override { return false; }
};

}  // namespace idem::sim::internal

#endif  // IDEM_SIM_SRC_SIM_TIME_H_

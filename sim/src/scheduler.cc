#include "scheduler.h"

#include <algorithm>
#include <chrono>
#include <exception>
#include <thread>
#include <utility>

namespace idem::sim::internal {

Scheduler::Scheduler(int consumers, uint64_t seed, SimTime* time,
                     std::function<bool(int64_t)> has_due, std::function<int64_t()> next_due,
                     bool concurrent)
    : state_(consumers, State::kRunnable),
      until_(consumers, 0),
      rng_(seed),
      time_(time),
      has_due_(std::move(has_due)),
      next_due_(std::move(next_due)),
      concurrent_(concurrent) {
  for (int i = 0; i < consumers; ++i) baton_.push_back(std::make_unique<std::binary_semaphore>(0));
}

namespace {
// Concurrent mode: the lock of the consumer running on this thread.
thread_local std::unique_lock<std::mutex>* tl_lock = nullptr;
}  // namespace

void Scheduler::Unlocked(const std::function<void()>& call) {
  if (!concurrent_ || tl_lock == nullptr) {
    call();
    return;
  }
  tl_lock->unlock();
  try {
    call();
  } catch (...) {
    tl_lock->lock();
    throw;
  }
  tl_lock->lock();
}

void Scheduler::RunConcurrent(const std::function<void(int)>& body) {
  std::vector<std::thread> threads;
  threads.reserve(state_.size());
  for (int i = 0; i < static_cast<int>(state_.size()); ++i) {
    threads.emplace_back([this, &body, i] {
      std::unique_lock lock(mu_);
      tl_lock = &lock;
      try {
        body(i);
      } catch (const std::exception& e) {
        errors_.push_back(e.what());
      } catch (...) {
        errors_.push_back("a consumer threw a non-standard exception");
      }
      state_[i] = State::kDone;
      tl_lock = nullptr;
      wake_.notify_all();
    });
  }
  for (std::thread& t : threads) t.join();
}

// REQUIRES: the caller holds mu_ (through tl_lock).
void Scheduler::YieldConcurrent(int self, State state, int64_t until) {
  std::unique_lock<std::mutex>& lock = *tl_lock;
  if (finished_) return;
  if (state == State::kRunnable) {
    lock.unlock();
    std::this_thread::yield();
    lock.lock();
    return;
  }
  if (state == State::kSleeping) {
    const int64_t now = time_->Now();
    if (until > now) {
      lock.unlock();
      std::this_thread::sleep_for(std::chrono::milliseconds(until - now));
      lock.lock();
    }
    return;
  }
  // Idle: wait for a delivery. The run is over when every consumer is idle (or done) and nothing
  // is due now or later.
  state_[self] = State::kIdle;
  while (!finished_) {
    const int64_t now = time_->Now();
    if (has_due_(now)) break;
    const int64_t next = next_due_();
    bool all_idle = true;
    for (State s : state_) all_idle = all_idle && (s == State::kIdle || s == State::kDone);
    if (next < 0 && all_idle) {
      finished_ = true;
      wake_.notify_all();
      break;
    }
    // A delivery falls due by time (a redelivery), or a busy consumer acks, nacks or finishes.
    const int64_t wait = next < 0 ? 5 : std::clamp<int64_t>(next - now, 1, 5);
    wake_.wait_for(lock, std::chrono::milliseconds(wait));
  }
  state_[self] = State::kRunnable;
}

void Scheduler::Run(const std::function<void(int)>& body) {
  if (concurrent_) {
    RunConcurrent(body);
    return;
  }
  std::vector<std::thread> threads;
  threads.reserve(baton_.size());
  for (int i = 0; i < static_cast<int>(baton_.size()); ++i) {
    threads.emplace_back([this, &body, i] {
      baton_[i]->acquire();
      if (!finished_) {
        try {
          body(i);
        } catch (const std::exception& e) {
          errors_.push_back(e.what());
        } catch (...) {
          errors_.push_back("a consumer threw a non-standard exception");
        }
      }
      if (finished_) return;
      // This consumer is gone: pass the baton on so the others can finish.
      state_[i] = State::kDone;
      const int next = PickNext();
      if (next < 0) {
        FinishAll();
      } else {
        baton_[next]->release();
      }
    });
  }
  const int first = PickNext();
  if (first < 0) {
    FinishAll();
  } else {
    baton_[first]->release();
  }
  for (std::thread& t : threads) t.join();
}

void Scheduler::Yield(int self, State state, int64_t until) {
  if (concurrent_) {
    YieldConcurrent(self, state, until);
    return;
  }
  state_[self] = state;
  until_[self] = until;
  const int next = PickNext();
  if (next < 0) {
    FinishAll();
    return;
  }
  if (next == self) return;
  baton_[next]->release();
  baton_[self]->acquire();
}

int Scheduler::PickNext() {
  while (true) {
    const int64_t now = time_->Now();
    const bool due = has_due_(now);
    candidates_.clear();
    bool any_idle = false;
    for (int i = 0; i < static_cast<int>(state_.size()); ++i) {
      if (state_[i] == State::kIdle) any_idle = true;
      if (state_[i] == State::kRunnable || (state_[i] == State::kIdle && due)) {
        candidates_.push_back(i);
      }
    }
    if (!candidates_.empty()) {
      const int chosen = candidates_[rng_.Below(candidates_.size())];
      state_[chosen] = State::kRunnable;
      return chosen;
    }
    int64_t wake = -1;
    if (any_idle) wake = next_due_();
    for (int i = 0; i < static_cast<int>(state_.size()); ++i) {
      if (state_[i] == State::kSleeping && (wake < 0 || until_[i] < wake)) wake = until_[i];
    }
    if (wake < 0) return -1;
    time_->AdvanceTo(wake);
    const int64_t later = time_->Now();
    for (int i = 0; i < static_cast<int>(state_.size()); ++i) {
      if (state_[i] == State::kSleeping && until_[i] <= later) state_[i] = State::kRunnable;
    }
  }
}

void Scheduler::FinishAll() {
  finished_ = true;
  for (auto& baton : baton_) baton->release();
}

}  // namespace idem::sim::internal

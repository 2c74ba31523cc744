// Group commit (docs/design.md, "Group commit"): a write queue that gathers the concurrent calls of
// one store and writes them together, LevelDB's writers queue in shape.
//
// A caller enqueues itself and waits. The caller at the front leads: it takes up to `limit`
// requests queued at that moment (its own first), lets go of the queue, writes them, hands every
// member its own result and wakes it, then wakes the next front. Requests that arrive while a
// group is written queue behind it and form the next group; nothing waits for company (there is
// no timer), so a caller alone leads a group of one at once, and a group of one is written by the
// backend's single-call path: one thread alone runs exactly the code it ran without a queue.
//
// One group is in flight at a time: the calls that arrive meanwhile are the next group. (A store
// with a pool of connections might let several leaders write at once; measured against Redis and
// PostgreSQL with 16 threads, that made smaller groups and less throughput: Redis 20-21k against
// 23-25k messages/s, PostgreSQL 2.5-2.7k against 5.0-5.5k. A store keeps one queue for claims and
// one for completions, or one for both, as suits its batch path.)
//
// Requests are not copied into the queue: a member's request stays in its caller's frame, which
// is blocked until its result is handed over. The leader copies the request structs (views, not
// the bytes they point at) into one contiguous span for the batch call.
//
// Failure: the batch call hands back one result per member, so each member keeps its own outcome;
// a failure of the whole write is each member's own copy of the status. If the batch call throws
// (std::bad_alloc), every other member gets a status (ResourceExhausted for std::bad_alloc,
// Internal otherwise) and the leader's call rethrows: no member is left waiting.
//
// Thread-safety: Write may be called from any number of threads at once.
#ifndef IDEM_INTERNAL_WRITE_QUEUE_H_
#define IDEM_INTERNAL_WRITE_QUEUE_H_

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <mutex>
#include <new>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "internal/store_counters.h"

namespace idem::internal {

// The bounds of a group: `group_limit` options and the group_limit=N URI option (1..1024).
inline constexpr std::size_t kDefaultGroupLimit = 64;
inline constexpr std::size_t kMaxGroupLimit = 1024;

// InvalidArgument unless 1 <= limit <= kMaxGroupLimit. `backend` names the store in the message.
[[nodiscard]] inline absl::Status ValidateGroupLimit(std::size_t limit, const char* backend) {
  if (limit < 1 || limit > kMaxGroupLimit) {
    return absl::InvalidArgumentError(
        std::string(backend) + ": group_limit must be within 1..1024 (1: every call written alone)");
  }
  return absl::OkStatus();
}

// Request: a copyable struct (the leader copies it into the batch span). Result: constructible
// from an absl::Status (a member's result when the batch call throws).
template <typename Request, typename Result>
class WriteQueue {
 public:
  // `limit`: most calls in one group (1: every call alone). `counters`: where write_groups and
  // grouped_calls are counted; not owned, may be null.
  WriteQueue(std::size_t limit, StoreCounters* counters)
      : limit_(std::max<std::size_t>(limit, 1)), counters_(counters) {}
  WriteQueue(const WriteQueue&) = delete;
  WriteQueue& operator=(const WriteQueue&) = delete;

  std::size_t limit() const { return limit_; }

  // How many callers wait in the queue, not yet taken into a group (for tests).
  std::size_t waiting() {
    std::lock_guard lock(mu_);
    return waiting_.size();
  }

  // Writes `request`, alone or with others: `one(const Request&) -> Result` writes a group of
  // one (the backend's single-call path), `many(std::span<const Request>) -> std::vector<Result>`
  // a larger group in one transaction or round trip, one result per request, in order.
  // REQUIRES: `request` was validated (an invalid request must never join a group).
  template <typename One, typename Many>
  Result Write(const Request& request, One&& one, Many&& many) {
    if (limit_ == 1) {
      // Grouping off: every call is written alone, as without a queue, and concurrent calls go
      // through the backend's own locking.
      return one(request);
    }
    Writer self(&request);
    std::unique_lock lock(mu_);
    waiting_.push_back(&self);
    while (!self.done && !(waiting_.front() == &self && !writing_)) self.cv.wait(lock);
    if (self.done) return *std::move(self.result);

    // This caller leads: its group leaves the queue now; the next front leads the next group when
    // this one is written.
    std::size_t n = std::min(limit_, waiting_.size());
    std::vector<Writer*> members;
    if (n > 1) {
      try {
        members.assign(waiting_.begin(), waiting_.begin() + static_cast<std::ptrdiff_t>(n));
      } catch (const std::bad_alloc&) {
        n = 1;  // no memory for a group: this call goes alone, the others stay queued
      }
    }
    waiting_.erase(waiting_.begin(), waiting_.begin() + static_cast<std::ptrdiff_t>(n));
    writing_ = true;
    lock.unlock();

    if (n == 1) {
      std::optional<Result> result;
      try {
        result.emplace(one(request));
      } catch (...) {
        Finish(members, nullptr);
        throw;
      }
      Finish(members, nullptr);
      return *std::move(result);
    }

    std::vector<Result> results;
    try {
      std::vector<Request> requests;
      requests.reserve(n);
      for (const Writer* w : members) requests.push_back(*w->request);
      results = many(std::span<const Request>(requests));
      if (results.size() != n) {
        throw std::logic_error("write queue: a batch call returned a result count unlike its group");
      }
    } catch (const std::bad_alloc&) {
      FailFollowers(members, absl::ResourceExhaustedError(
                                 "out of memory while this call's group was written"));
      throw;
    } catch (...) {
      FailFollowers(members, absl::InternalError(
                                 "the write of this call's group failed with an exception"));
      throw;
    }
    if (counters_ != nullptr) {
      StoreCounters::Add(counters_->write_groups);
      StoreCounters::Add(counters_->grouped_calls, n);
    }
    Finish(members, &results);
    return std::move(results[0]);
  }

 private:
  struct Writer {
    explicit Writer(const Request* r) : request(r) {}
    const Request* request;
    std::optional<Result> result;
    bool done = false;
    std::condition_variable cv;
  };

  // Hands each follower (members[1..]) its result, wakes it, ends this leader's turn and wakes
  // the next front. Allocates nothing. `results`: one per member, or null for a group of one.
  void Finish(const std::vector<Writer*>& members, std::vector<Result>* results) {
    std::lock_guard lock(mu_);
    if (results != nullptr) {
      for (std::size_t i = 1; i < members.size(); ++i) {
        members[i]->result.emplace(std::move((*results)[i]));
        members[i]->done = true;
        members[i]->cv.notify_one();
      }
    }
    writing_ = false;
    WakeFrontLocked();
  }

  void FailFollowers(const std::vector<Writer*>& members, const absl::Status& status) {
    std::lock_guard lock(mu_);
    for (std::size_t i = 1; i < members.size(); ++i) {
      members[i]->result.emplace(Result(status));
      members[i]->done = true;
      members[i]->cv.notify_one();
    }
    writing_ = false;
    WakeFrontLocked();
  }

  void WakeFrontLocked() {
    if (!waiting_.empty()) waiting_.front()->cv.notify_one();
  }

  const std::size_t limit_;
  StoreCounters* const counters_;
  std::mutex mu_;
  std::deque<Writer*> waiting_;  // guarded by mu_; callers not yet taken into a group
  bool writing_ = false;         // guarded by mu_; a group is in flight
};

}  // namespace idem::internal

#endif  // IDEM_INTERNAL_WRITE_QUEUE_H_

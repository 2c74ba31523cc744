// The process profile's event log: each consumer process appends what it observed of its store
// calls and handler runs (the EventSink calls of oracle.h) to one file, and after the run the
// broker replays the file into the Oracle, the same one the in-process profile feeds directly.
//
// One line per event, written with a single write() to a file opened with O_APPEND: a line is
// never torn, survives the SIGKILL of its writer, and lines of different processes interleave
// in roughly the order the events happened.
//   CLAIM <message> <status> <token> <lease_until_ms> <now_ms>
//   RETURNED <token>
//   COMPLETE <message> <token> <versioned 0|1> <status code> <complete status> <now_ms>
//   RELEASE <message> <token> <status code>
//   RUN <message> <token> <now_ms>
//   FAULT <message> <token> <fault>
//   FAULTED <token>
//
// Thread-safety: an EventLogWriter belongs to one thread.
#ifndef IDEM_SIM_SRC_EVENT_LOG_H_
#define IDEM_SIM_SRC_EVENT_LOG_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "idem/sim/workload.h"
#include "oracle.h"

namespace idem::sim::internal {

class EventLogWriter final : public EventSink {
 public:
  // Appends to `fd` (not owned).
  explicit EventLogWriter(int fd) : fd_(fd) {}

  void ClaimApplied(int64_t message, const ClaimResult& result, int64_t now_ms) override;
  void ClaimReturned(uint64_t token) override;
  void CompleteApplied(int64_t message, uint64_t token, const std::optional<VersionStamp>& version,
                       const absl::StatusOr<CompleteStatus>& result, int64_t now_ms) override;
  void ReleaseApplied(int64_t message, uint64_t token, const absl::Status& status) override;
  void HandlerRan(int64_t message, uint64_t token, int64_t now_ms) override;
  void FaultInjected(int64_t message, uint64_t token, Fault fault) override;
  void RunFaulted(uint64_t token) override;

 private:
  void Write(std::string line);
  int fd_;
};

// Replays the log at `path` into `sink`, in file order. A line that does not parse, or names a
// message outside `workload`, is an error (a consumer wrote garbage: the run is not judged).
[[nodiscard]] absl::Status ReplayEventLog(const std::string& path, const Workload& workload,
                                          EventSink& sink);

}  // namespace idem::sim::internal

#endif  // IDEM_SIM_SRC_EVENT_LOG_H_

// Test support for group commit (docs/design.md, "Group commit"), shared by the backends' tests.
//
// ClaimAndCompleteFromSixteenThreads: the load under which groups form.
//
// SixteenThreadsThroughAnOutage: a fault in the middle of grouped writes, for the server
// backends' tests: 16 threads process messages one at a time through one store while its server
// is killed and restarted. Every call returns (an outcome or a status), a failed claim runs no
// handler, a handler runs again only after a failed call for its id (I3), and every message
// acknowledged as processed is COMPLETED afterwards.
#ifndef IDEM_TESTS_CONFORMANCE_GROUP_FAULTS_H_
#define IDEM_TESTS_CONFORMANCE_GROUP_FAULTS_H_

#include <chrono>
#include <functional>
#include <memory>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "idem/store.h"

namespace idem::testing {

// 16 threads that start together, each claiming and completing `per_thread` ids of its own
// (`prefix`, the thread's number, "-", the index) one at a time, in `scope`, with `lease`. Every
// claim must be acquired and every completion completed (gtest assertions). Returns the number of
// store calls made (two per id).
int ClaimAndCompleteFromSixteenThreads(DedupStore& store, std::string_view scope,
                                       std::string_view prefix, int per_thread,
                                       std::chrono::milliseconds lease = kDefaultLease);

struct Outage {
  // Kills the server (SIGKILL, or an immediate stop), then starts it again on the same data.
  std::function<absl::Status()> kill;
  std::function<absl::Status()> restart;
  // Opens another store on the restarted server, to read what was kept.
  std::function<absl::StatusOr<std::unique_ptr<DedupStore>>()> reopen;
};

// Runs the workload on `store` (grouping on), kills the server after 500 messages, restarts it,
// and stops 500 messages after the restart; checks the invariants above with gtest expectations.
void SixteenThreadsThroughAnOutage(DedupStore& store, const Outage& outage);

}  // namespace idem::testing

#endif  // IDEM_TESTS_CONFORMANCE_GROUP_FAULTS_H_

// A fault in the middle of grouped writes (docs/design.md, "Group commit"), for the server
// backends' tests: 16 threads process messages one at a time through one store while its server
// is killed and restarted. Every call returns (an outcome or a status), a failed claim runs no
// handler, a handler runs again only after a failed call for its id (I3), and every message
// acknowledged as processed is COMPLETED afterwards.
#ifndef IDEM_TESTS_CONFORMANCE_GROUP_FAULTS_H_
#define IDEM_TESTS_CONFORMANCE_GROUP_FAULTS_H_

#include <functional>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "idem/store.h"

namespace idem::testing {

struct Outage {
  // Kills the server (SIGKILL, or an immediate stop), then starts it again on the same data.
  std::function<absl::Status()> kill;
  std::function<absl::Status()> restart;
  // Opens another store on the restarted server, to read what was kept.
  std::function<absl::StatusOr<std::unique_ptr<DedupStore>>()> reopen;
};

// Runs the workload on `store` (grouping on), kills the server a third of the way through and
// restarts it; checks the invariants above with gtest expectations.
void SixteenThreadsThroughAnOutage(DedupStore& store, const Outage& outage);

}  // namespace idem::testing

#endif  // IDEM_TESTS_CONFORMANCE_GROUP_FAULTS_H_

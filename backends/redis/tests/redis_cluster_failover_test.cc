// Failover under load: consumer threads process new messages (with and without version keys)
// through a Processor on a cluster-mode store; one master is SIGKILLed by its PID, its replica is
// promoted (cluster-node-timeout 1500 ms), and the load goes on until calls on the dead master's
// slots succeed again. Then:
//  - every call returned a final outcome or a status that says the store failed (Unavailable,
//    DeadlineExceeded; Aborted for a completion whose claim the failover lost): never another code;
//  - no silent success: every message whose call returned Processed is COMPLETED after the
//    failover (a redelivery is a duplicate), except what asynchronous replication can lose: writes
//    the dead master acknowledged in the moment before it died and had not yet sent to its
//    replica. Those must have returned within a second of the kill; they are counted and printed;
//  - calls on every slot succeed again within 20 s of the kill.
// The killed node is started again at the end and rejoins as a replica, so the fixture keeps six
// nodes.
#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "idem/open_store.h"
#include "idem/processor.h"
#include "idem/redis_store.h"
#include "redis_cluster_testing.h"
#include "redis_test_server.h"

namespace idem::testing {
namespace {

using Clock = std::chrono::steady_clock;

struct Call {
  std::string id;
  std::optional<std::pair<std::string, uint64_t>> version;
  absl::Status status;
  std::optional<Outcome> outcome;
  Clock::time_point returned;
};

// cluster_state:ok on all six nodes, and every replica's link to its master up.
bool ClusterOk() {
  for (int node = 0; node < 6; ++node) {
    absl::StatusOr<std::string> info = RedisCommand(ClusterPort(node), {"CLUSTER", "INFO"});
    if (!info.ok() || info->find("cluster_state:ok") == std::string::npos) return false;
    absl::StatusOr<std::string> replication =
        RedisCommand(ClusterPort(node), {"INFO", "replication"});
    if (!replication.ok() || (replication->find("role:master") == std::string::npos &&
                              replication->find("master_link_status:up") == std::string::npos)) {
      return false;
    }
  }
  return true;
}

bool WaitClusterOk(std::chrono::seconds bound) {
  const Clock::time_point deadline = Clock::now() + bound;
  while (Clock::now() < deadline) {
    if (ClusterOk()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return ClusterOk();
}

// Starts the killed node again however the test ends: the fixture keeps six nodes for the tests
// after this one.
class Revive {
 public:
  Revive(std::string script, std::string dir, int node)
      : script_(std::move(script)), dir_(std::move(dir)), node_(node) {}
  ~Revive() {
    if (!armed_) return;
    const int rc =
        std::system(absl::StrCat("sh ", script_, " restart-node ", dir_, " ", node_).c_str());
    EXPECT_EQ(rc, 0) << "the killed node did not start again";
    EXPECT_TRUE(WaitClusterOk(std::chrono::seconds(30))) << "the cluster did not heal";
  }
  void Arm() { armed_ = true; }

 private:
  std::string script_;
  std::string dir_;
  int node_;
  bool armed_ = false;
};

TEST(RedisClusterFailover, CallsInTheWindowReturnStatusesNeverASilentSuccess) {
  ASSERT_TRUE(WaitClusterOk(std::chrono::seconds(30)))
      << "the fixture's cluster is not healthy before the test";
  const std::string prefix = absl::StrCat("failover/", getpid());
  absl::StatusOr<std::unique_ptr<DedupStore>> opened =
      OpenStore(ClusterUri(prefix, "&timeout_ms=1000"));
  ASSERT_TRUE(opened.ok()) << opened.status();
  DedupStore& store = **opened;

  // The master to kill: the first node that is one, and its PID from the fixture's pidfile.
  int victim = -1;
  for (int node = 0; node < 6 && victim < 0; ++node) {
    absl::StatusOr<std::string> role = RedisCommand(ClusterPort(node), {"ROLE"});
    if (role.ok() && role->substr(0, 6) == "master") victim = node;
  }
  ASSERT_GE(victim, 0);
  const std::string dir = ClusterDir();
  const std::string script = ClusterScript();
  pid_t pid = 0;
  std::ifstream(absl::StrCat(dir, "/node-", victim, "/redis.pid")) >> pid;
  ASSERT_GT(pid, 0);
  Revive revive(script, dir, victim);

  std::mutex mu;
  std::vector<Call> calls;
  std::atomic<bool> stop{false};
  std::atomic<Clock::time_point> recovered{Clock::time_point::max()};
  std::optional<Clock::time_point> killed;
  std::vector<std::thread> workers;
  for (int t = 0; t < 4; ++t) {
    workers.emplace_back([&, t] {
      absl::StatusOr<Processor> processor = Processor::Create(store, "failover");
      ASSERT_TRUE(processor.ok());
      for (int n = 0; !stop.load(); ++n) {
        Call call;
        call.id = absl::StrCat("t", t, "-", n);
        const std::string key = absl::StrCat("key-", t, "-", n % 25);
        Message message{.id = call.id, .payload = "p"};
        if (n % 2 == 0) {
          call.version = std::make_pair(key, uint64_t(n + 1));
          message.version = VersionStamp{.key = key, .version = uint64_t(n + 1)};
        }
        absl::StatusOr<ProcessResult> result =
            processor->Process(message, [](HandlerContext&) {});
        call.returned = Clock::now();
        if (result.ok()) {
          call.outcome = result->outcome;
        } else {
          call.status = result.status();
        }
        std::lock_guard lock(mu);
        calls.push_back(std::move(call));
      }
    });
  }

  std::this_thread::sleep_for(std::chrono::seconds(1));
  killed = Clock::now();
  const int killed_rc = kill(pid, SIGKILL);
  if (killed_rc == 0) revive.Arm();
  // Recovery: a call on every slot succeeds (new ids spread over all masters, the promoted one
  // included).
  int round = 0;
  while (Clock::now() - *killed < std::chrono::seconds(30)) {
    std::vector<ClaimRequest> probes;
    std::vector<std::string> ids;
    for (int i = 0; i < 64; ++i) ids.push_back(absl::StrCat("probe-", round, "-", i));
    for (const std::string& id : ids) probes.push_back(ClaimRequest{.scope = "probe", .id = id});
    ++round;
    std::vector<absl::StatusOr<ClaimResult>> results = store.ClaimBatch(probes);
    bool all = true;
    for (const auto& r : results) all = all && r.ok();
    if (all && Clock::now() - *killed > std::chrono::milliseconds(500)) {
      recovered.store(Clock::now());
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  std::this_thread::sleep_for(std::chrono::seconds(1));
  stop.store(true);
  for (std::thread& w : workers) w.join();
  ASSERT_EQ(killed_rc, 0) << "could not SIGKILL the master's PID " << pid;

  const auto recovery = recovered.load() - *killed;
  ASSERT_NE(recovered.load(), Clock::time_point::max()) << "calls did not succeed again in 30 s";
  EXPECT_LT(recovery, std::chrono::seconds(20));

  // Every call: a final outcome, or a status of the store's failure.
  int failed = 0;
  for (const Call& call : calls) {
    if (call.outcome.has_value()) {
      EXPECT_TRUE(*call.outcome == Outcome::kProcessed || *call.outcome == Outcome::kStale)
          << call.id << ": " << OutcomeName(*call.outcome);
      continue;
    }
    ++failed;
    const absl::StatusCode code = call.status.code();
    EXPECT_TRUE(code == absl::StatusCode::kUnavailable ||
                code == absl::StatusCode::kDeadlineExceeded ||
                code == absl::StatusCode::kAborted)
        << call.id << ": " << call.status;
    // A failure on the dead master happens at or after the kill.
    EXPECT_GE(call.returned, *killed) << call.id << ": " << call.status;
  }
  EXPECT_GT(failed, 0) << "no call met the failover: the test did not test it";

  // No silent success: every Processed message is COMPLETED now, unless it was acknowledged in
  // the replication window just before the kill.
  std::vector<ClaimRequest> again;
  std::vector<const Call*> processed;
  for (const Call& call : calls) {
    if (call.outcome != Outcome::kProcessed) continue;
    ClaimRequest request{.scope = "failover", .id = call.id};
    if (call.version) {
      request.version = VersionStamp{.key = call.version->first, .version = call.version->second};
    }
    again.push_back(request);
    processed.push_back(&call);
  }
  std::vector<absl::StatusOr<ClaimResult>> results = store.ClaimBatch(again);
  int lost = 0;
  for (std::size_t i = 0; i < results.size(); ++i) {
    ASSERT_TRUE(results[i].ok()) << results[i].status();
    const ClaimStatus status = results[i]->status;
    if (status == ClaimStatus::kDuplicate ||
        (again[i].version && status == ClaimStatus::kStale)) {
      continue;
    }
    ++lost;
    const auto before_kill = *killed - processed[i]->returned;
    EXPECT_LT(before_kill, std::chrono::seconds(1))
        << again[i].id << " was acknowledged long before the kill and is "
        << ClaimStatusName(status) << " after the failover";
    EXPECT_LE(processed[i]->returned, *killed)
        << again[i].id << " was acknowledged after the kill and lost: a silent success";
  }
  const RedisClusterCounters counts = *RedisClusterStats(store);
  std::printf(
      "failover: %zu calls, %d returned a status, %zu processed, %d of them lost to asynchronous "
      "replication; calls succeeded again %lld ms after the kill; MOVED %llu, CLUSTERDOWN %llu, "
      "unreachable %llu, slot map reads %llu\n",
      calls.size(), failed, processed.size(), lost,
      static_cast<long long>(
          std::chrono::duration_cast<std::chrono::milliseconds>(recovery).count()),
      static_cast<unsigned long long>(counts.moved),
      static_cast<unsigned long long>(counts.clusterdown),
      static_cast<unsigned long long>(counts.unreachable),
      static_cast<unsigned long long>(counts.refreshes));

  // The killed node comes back (Revive, when the test ends) and rejoins as a replica.
}

}  // namespace
}  // namespace idem::testing

// Resharding under load: consumer threads process messages (per message and in batches, with and
// without version keys) through a Processor on a cluster-mode store while
//  1. `redis-cli --cluster reshard` moves 1500 slots from one master to another, and
//  2. one slot is migrated by hand (CLUSTER SETSLOT IMPORTING / MIGRATING, MIGRATE, SETSLOT NODE),
//     with a claim sent while it migrates, which the old master answers ASK, and one after, which
//     it answers MOVED.
// Then: the store counted MOVED and ASK redirections (both > 0), every message's handler ran
// exactly once (no faults were injected), every message is COMPLETED (a redelivery is a duplicate),
// and each key's applied version is the highest one processed.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "idem/open_store.h"
#include "idem/processor.h"
#include "idem/redis_store.h"
#include "redis_cluster.h"
#include "redis_cluster_testing.h"
#include "redis_keys.h"
#include "redis_test_server.h"

namespace idem::testing {
namespace {

using internal::redis::AppendClusterTag;
using internal::redis::AppendRecordKey;
using internal::redis::KeySlot;

struct NodeInfo {
  int port = 0;
  std::string id;
};

// The masters, by asking each node ROLE and CLUSTER MYID.
std::vector<NodeInfo> Masters() {
  std::vector<NodeInfo> out;
  for (int node = 0; node < 6; ++node) {
    absl::StatusOr<std::string> role = RedisCommand(ClusterPort(node), {"ROLE"});
    if (!role.ok() || role->substr(0, 6) != "master") continue;
    absl::StatusOr<std::string> id = RedisCommand(ClusterPort(node), {"CLUSTER", "MYID"});
    if (id.ok()) out.push_back(NodeInfo{.port = ClusterPort(node), .id = *id});
  }
  return out;
}

// The master serving `slot` (CLUSTER COUNTKEYSINSLOT answers on any master; GETKEYSINSLOT too, so
// ask EXISTS of a key of that slot: only its master does not answer MOVED).
const NodeInfo* OwnerOf(const std::vector<NodeInfo>& masters, const std::string& key) {
  for (const NodeInfo& master : masters) {
    if (RedisCommand(master.port, {"EXISTS", key}).ok()) return &master;
  }
  return nullptr;
}

int RunProgram(const std::vector<std::string>& argv) {
  const pid_t pid = fork();
  if (pid == 0) {
    // redis-cli prints a line per slot: the test's log keeps only its exit status.
    const int null = open("/dev/null", O_WRONLY);
    if (null >= 0) dup2(null, STDOUT_FILENO);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

class Load {
 public:
  Load(DedupStore& store, int threads) : store_(store) {
    for (int t = 0; t < threads; ++t) workers_.emplace_back([this, t] { Work(t); });
  }
  ~Load() { Stop(); }
  void Stop() {
    stop_.store(true);
    for (std::thread& w : workers_) {
      if (w.joinable()) w.join();
    }
  }

  // Per message: the handler's runs. Per key: the highest version processed.
  std::map<std::string, int> effects;
  std::map<std::string, uint64_t> versions;
  std::atomic<int> errors{0};
  std::mutex mu;

 private:
  void Work(int thread) {
    absl::StatusOr<Processor> processor = Processor::Create(store_, "reshard");
    ASSERT_TRUE(processor.ok());
    for (int round = 0; !stop_.load(); ++round) {
      // Batches of 20 on even threads, one at a time on odd ones; a third carry version keys.
      std::vector<std::string> ids;
      std::vector<std::string> keys;
      const int size = thread % 2 == 0 ? 20 : 1;
      for (int i = 0; i < size; ++i) {
        ids.push_back(absl::StrCat("t", thread, "-", round, "-", i));
        keys.push_back(absl::StrCat("key-", thread, "-", (round * size + i) % 40));
      }
      std::vector<Message> messages;
      for (int i = 0; i < size; ++i) {
        Message m{.id = ids[i], .payload = "p"};
        if ((round + i) % 3 == 0) {
          m.version = VersionStamp{.key = keys[i], .version = uint64_t(round * size + i + 1)};
        }
        messages.push_back(m);
      }
      auto handler = [&](HandlerContext& context) {
        std::lock_guard lock(mu);
        ++effects[std::string(context.message_id())];
        for (const Message& m : messages) {
          if (m.id != context.message_id() || !m.version) continue;
          uint64_t& v = versions[std::string(m.version->key)];
          v = std::max(v, m.version->version);
        }
      };
      // A message is redelivered until it has a final outcome: a store error (a redirection
      // beyond the bound, a retry exhausted) means the handler did not run.
      std::vector<bool> done(size, false);
      for (int attempt = 0; attempt < 50; ++attempt) {
        std::vector<Message> pending;
        std::vector<int> index;
        for (int i = 0; i < size; ++i) {
          if (!done[i]) {
            pending.push_back(messages[i]);
            index.push_back(i);
          }
        }
        if (pending.empty()) break;
        std::vector<absl::StatusOr<ProcessResult>> results =
            processor->ProcessBatch(pending, handler);
        for (std::size_t k = 0; k < results.size(); ++k) {
          if (!results[k].ok()) {
            errors.fetch_add(1);
            continue;
          }
          const Outcome o = results[k]->outcome;
          EXPECT_TRUE(o == Outcome::kProcessed || o == Outcome::kDuplicate ||
                      o == Outcome::kStale || o == Outcome::kInProgress)
              << OutcomeName(o);
          if (o != Outcome::kInProgress) done[index[k]] = true;
        }
        if (std::find(done.begin(), done.end(), false) != done.end()) {
          std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
      }
      for (int i = 0; i < size; ++i) {
        EXPECT_TRUE(done[i]) << ids[i] << " never got a final outcome";
        std::lock_guard lock(mu);
        if (!done[i]) continue;
        final_ids_.push_back(ids[i]);
        if (messages[i].version) {
          final_versions_.emplace_back(std::make_pair(keys[i], messages[i].version->version));
        } else {
          final_versions_.emplace_back(std::nullopt);
        }
      }
    }
  }

 public:
  std::vector<std::string> final_ids_;
  std::vector<std::optional<std::pair<std::string, uint64_t>>> final_versions_;

 private:
  DedupStore& store_;
  std::atomic<bool> stop_{false};
  std::vector<std::thread> workers_;
};

TEST(RedisClusterReshard, MovedAndAskUnderLoadKeepEveryInvariant) {
  const std::string prefix = absl::StrCat("reshard/", getpid());
  // Lease long enough that a redirection or a retry pause never lets a claim expire.
  absl::StatusOr<std::unique_ptr<DedupStore>> opened = OpenStore(ClusterUri(prefix));
  ASSERT_TRUE(opened.ok()) << opened.status();
  DedupStore& store = **opened;
  std::vector<NodeInfo> masters = Masters();
  ASSERT_EQ(masters.size(), 3u);

  auto load = std::make_unique<Load>(store, 4);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));

  // 1. A real reshard: 1500 slots from the first master to the second, under load.
  const int reshard = RunProgram({"redis-cli", "--cluster", "reshard",
                           absl::StrCat("127.0.0.1:", masters[0].port), "--cluster-from",
                           masters[0].id, "--cluster-to", masters[1].id, "--cluster-slots",
                           "1500", "--cluster-yes", "--cluster-pipeline", "5"});
  ASSERT_EQ(reshard, 0) << "redis-cli --cluster reshard failed";
  std::this_thread::sleep_for(std::chrono::milliseconds(300));

  // 2. One slot by hand, so that ASK is certain: an id whose record lands on a slot of the third
  // master is claimed, then its slot migrated to the second master with the record moved first.
  // (A command on several keys of a migrating slot of which some are missing gets TRYAGAIN until
  // the migration ends; the completion of an unversioned claim has one key, so it is served.)
  std::string ask_id;
  std::string ask_key;
  const NodeInfo* source = nullptr;
  for (int i = 0; source == nullptr || source->port != masters[2].port; ++i) {
    ask_id = absl::StrCat("ask-", i);
    ask_key.clear();
    AppendClusterTag(&ask_key, prefix, "reshard", ask_id);
    AppendRecordKey(&ask_key, prefix, "reshard", ask_id);
    source = OwnerOf(masters, ask_key);
    ASSERT_LT(i, 1000);
  }
  absl::StatusOr<ClaimResult> claim = store.Claim(ClaimRequest{.scope = "reshard", .id = ask_id});
  ASSERT_TRUE(claim.ok()) << claim.status();
  ASSERT_EQ(claim->status, ClaimStatus::kAcquired);
  const NodeInfo& target = masters[1];
  const std::string slot = std::to_string(KeySlot(ask_key));
  ASSERT_TRUE(RedisCommand(target.port, {"CLUSTER", "SETSLOT", slot, "IMPORTING", source->id}).ok());
  ASSERT_TRUE(RedisCommand(source->port, {"CLUSTER", "SETSLOT", slot, "MIGRATING", target.id}).ok());
  ASSERT_TRUE(RedisCommand(source->port, {"MIGRATE", "127.0.0.1", std::to_string(target.port),
                                          ask_key, "0", "5000"})
                  .ok());
  // The record is no longer at the source, which is migrating the slot: ASK, and the completion
  // runs at the target after ASKING.
  const RedisClusterCounters before = *RedisClusterStats(store);
  absl::StatusOr<CompleteStatus> completed = store.Complete(
      CompleteRequest{.scope = "reshard", .id = ask_id, .token = claim->token});
  ASSERT_TRUE(completed.ok()) << completed.status();
  EXPECT_EQ(*completed, CompleteStatus::kCompleted);
  EXPECT_GT(RedisClusterStats(store)->ask, before.ask);
  // Move the slot's remaining keys (the load's), then give the slot to the target everywhere.
  while (true) {
    absl::StatusOr<std::string> keys =
        RedisCommand(source->port, {"CLUSTER", "GETKEYSINSLOT", slot, "100"});
    ASSERT_TRUE(keys.ok()) << keys.status();
    if (keys->empty()) break;
    std::vector<std::string> migrate = {"MIGRATE", "127.0.0.1", std::to_string(target.port), "",
                                        "0", "5000", "KEYS"};
    for (absl::string_view k : absl::StrSplit(*keys, '\n')) migrate.emplace_back(k);
    ASSERT_TRUE(RedisCommand(source->port, migrate).ok());
  }
  for (const NodeInfo& master : masters) {
    ASSERT_TRUE(RedisCommand(master.port, {"CLUSTER", "SETSLOT", slot, "NODE", target.id}).ok());
  }
  // The store's map still names the source for that slot: MOVED, then the target answers.
  const RedisClusterCounters middle = *RedisClusterStats(store);
  absl::StatusOr<ClaimResult> duplicate =
      store.Claim(ClaimRequest{.scope = "reshard", .id = ask_id});
  ASSERT_TRUE(duplicate.ok()) << duplicate.status();
  EXPECT_EQ(duplicate->status, ClaimStatus::kDuplicate);
  EXPECT_GT(RedisClusterStats(store)->moved, middle.moved);

  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  load->Stop();

  const RedisClusterCounters counts = *RedisClusterStats(store);
  std::printf("redirections seen: MOVED %llu, ASK %llu, TRYAGAIN %llu, CLUSTERDOWN %llu, slot map "
              "reads %llu; messages %zu, store errors retried %d\n",
              static_cast<unsigned long long>(counts.moved),
              static_cast<unsigned long long>(counts.ask),
              static_cast<unsigned long long>(counts.tryagain),
              static_cast<unsigned long long>(counts.clusterdown),
              static_cast<unsigned long long>(counts.refreshes), load->final_ids_.size(),
              load->errors.load());
  EXPECT_GT(counts.moved, 0u);
  EXPECT_GT(counts.ask, 0u);
  ASSERT_GT(load->final_ids_.size(), 100u);

  // Each message's handler ran exactly once, and each is COMPLETED.
  for (const std::string& id : load->final_ids_) {
    EXPECT_EQ(load->effects[id], 1) << id;
  }
  std::vector<ClaimRequest> again;
  for (std::size_t i = 0; i < load->final_ids_.size(); ++i) {
    ClaimRequest request{.scope = "reshard", .id = load->final_ids_[i]};
    if (load->final_versions_[i]) {
      request.version = VersionStamp{.key = load->final_versions_[i]->first,
                                     .version = load->final_versions_[i]->second};
    }
    again.push_back(request);
  }
  std::vector<absl::StatusOr<ClaimResult>> results = store.ClaimBatch(again);
  for (std::size_t i = 0; i < results.size(); ++i) {
    ASSERT_TRUE(results[i].ok()) << results[i].status();
    // A versioned redelivery may meet the gate first (a newer version of its key applied).
    EXPECT_TRUE(results[i]->status == ClaimStatus::kDuplicate ||
                (again[i].version && results[i]->status == ClaimStatus::kStale))
        << again[i].id << ": " << ClaimStatusName(results[i]->status);
  }
  // Each key's applied version is the highest processed.
  for (const auto& [key, version] : load->versions) {
    absl::StatusOr<std::optional<uint64_t>> applied = store.AppliedVersion("reshard", key);
    ASSERT_TRUE(applied.ok()) << applied.status();
    EXPECT_EQ(applied->value_or(0), version) << key;
  }
  // The record claimed during the migration is at the target now.
  absl::StatusOr<std::optional<RecordInfo>> info = store.Inspect("reshard", ask_id);
  ASSERT_TRUE(info.ok() && info->has_value());
  EXPECT_EQ((*info)->state, RecordState::kCompleted);
}

}  // namespace
}  // namespace idem::testing

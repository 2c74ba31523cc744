// Tests of the Kafka adapter against librdkafka's mock cluster, hosted by this test process and
// reached by the consumer processes (kafka_worker) over loopback TCP.
#include "idem/kafka.h"

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "idem/memory_store.h"
#include "idem/sqlite_store.h"
#include "testing/status_matchers.h"

namespace idem {
namespace {

using std::chrono::milliseconds;

struct KafkaDeleter {
  void operator()(rd_kafka_t* rk) const { rd_kafka_destroy(rk); }
};
using KafkaPtr = std::unique_ptr<rd_kafka_t, KafkaDeleter>;

// A producer handle that owns a one-broker mock cluster; other processes connect to bootstraps().
class MockCluster {
 public:
  MockCluster() {
    rd_kafka_conf_t* conf = rd_kafka_conf_new();
    char err[256];
    rd_kafka_conf_set(conf, "test.mock.num.brokers", "1", err, sizeof(err));
    rd_kafka_conf_set(conf, "enable.idempotence", "false", err, sizeof(err));
    rk_.reset(rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err)));
    if (rk_ != nullptr) mock_ = rd_kafka_handle_mock_cluster(rk_.get());
  }
  bool ok() const { return mock_ != nullptr; }
  std::string bootstraps() const { return rd_kafka_mock_cluster_bootstraps(mock_); }
  void CreateTopic(const std::string& topic, int partitions) {
    ASSERT_EQ(rd_kafka_mock_topic_create(mock_, topic.c_str(), partitions, 1),
              RD_KAFKA_RESP_ERR_NO_ERROR);
  }
  // Produces one record and waits for it. Headers as name, value pairs.
  void Produce(const std::string& topic, const std::string& key, const std::string& value,
               const std::vector<std::pair<std::string, std::string>>& headers) {
    rd_kafka_headers_t* hdrs = rd_kafka_headers_new(headers.size() + 1);
    for (const auto& [n, v] : headers) {
      rd_kafka_header_add(hdrs, n.c_str(), -1, v.data(), v.size());
    }
    ASSERT_EQ(rd_kafka_producev(rk_.get(), RD_KAFKA_V_TOPIC(topic.c_str()),
                                RD_KAFKA_V_KEY(key.data(), key.size()),
                                RD_KAFKA_V_VALUE(const_cast<char*>(value.data()), value.size()),
                                RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                RD_KAFKA_V_END),
              RD_KAFKA_RESP_ERR_NO_ERROR);
  }
  void Flush() { ASSERT_EQ(rd_kafka_flush(rk_.get(), 10'000), RD_KAFKA_RESP_ERR_NO_ERROR); }

 private:
  KafkaPtr rk_;
  rd_kafka_mock_cluster_t* mock_ = nullptr;
};

// The group's committed offset and the high watermark, per partition.
std::vector<std::pair<int64_t, int64_t>> CommittedAndEnd(const std::string& brokers,
                                                         const std::string& group,
                                                         const std::string& topic, int partitions) {
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  char err[256];
  rd_kafka_conf_set(conf, "bootstrap.servers", brokers.c_str(), err, sizeof(err));
  rd_kafka_conf_set(conf, "group.id", group.c_str(), err, sizeof(err));
  KafkaPtr rk(rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err)));
  std::vector<std::pair<int64_t, int64_t>> out;
  rd_kafka_topic_partition_list_t* list = rd_kafka_topic_partition_list_new(partitions);
  for (int p = 0; p < partitions; ++p) rd_kafka_topic_partition_list_add(list, topic.c_str(), p);
  (void)rd_kafka_committed(rk.get(), list, 5'000);
  for (int p = 0; p < partitions; ++p) {
    int64_t low = 0, high = -1;
    (void)rd_kafka_query_watermark_offsets(rk.get(), topic.c_str(), p, &low, &high, 5'000);
    out.emplace_back(list->elems[p].offset, high);
  }
  rd_kafka_topic_partition_list_destroy(list);
  return out;
}

// Reads the whole topic from the beginning (no group): each record's headers by name.
std::vector<std::map<std::string, std::string>> ReadAll(const std::string& brokers,
                                                        const std::string& topic, int partitions) {
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  char err[256];
  rd_kafka_conf_set(conf, "bootstrap.servers", brokers.c_str(), err, sizeof(err));
  rd_kafka_conf_set(conf, "group.id", "reader", err, sizeof(err));
  rd_kafka_conf_set(conf, "enable.partition.eof", "true", err, sizeof(err));
  KafkaPtr rk(rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err)));
  rd_kafka_topic_partition_list_t* list = rd_kafka_topic_partition_list_new(partitions);
  for (int p = 0; p < partitions; ++p) {
    rd_kafka_topic_partition_list_add(list, topic.c_str(), p)->offset = RD_KAFKA_OFFSET_BEGINNING;
  }
  rd_kafka_assign(rk.get(), list);
  rd_kafka_topic_partition_list_destroy(list);
  std::vector<std::map<std::string, std::string>> out;
  int eofs = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (eofs < partitions && std::chrono::steady_clock::now() < deadline) {
    rd_kafka_message_t* m = rd_kafka_consumer_poll(rk.get(), 100);
    if (m == nullptr) continue;
    if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
      ++eofs;
    } else if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
      std::map<std::string, std::string> h;
      rd_kafka_headers_t* hdrs = nullptr;
      if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        const char* name;
        const void* value;
        size_t size;
        for (size_t i = 0; rd_kafka_header_get_all(hdrs, i, &name, &value, &size) ==
                           RD_KAFKA_RESP_ERR_NO_ERROR;
             ++i) {
          h[name] = std::string(static_cast<const char*>(value), size);
        }
      }
      out.push_back(std::move(h));
    }
    rd_kafka_message_destroy(m);
  }
  rd_kafka_consumer_close(rk.get());
  return out;
}

pid_t SpawnWorker(const std::vector<std::string>& args) {
  const pid_t pid = fork();
  if (pid == 0) {
    std::vector<char*> argv = {const_cast<char*>(IDEM_KAFKA_WORKER)};
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(IDEM_KAFKA_WORKER, argv.data());
    _exit(127);
  }
  return pid;
}

std::string LedgerText(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

size_t LedgerLines(const std::string& path) {
  std::ifstream in(path);
  size_t n = 0;
  std::string line;
  while (std::getline(in, line)) ++n;
  return n;
}

// ---- one process: the consumer in this process, on the mock cluster ---------------------------

// Polls `consumer` until `done` or `timeout`; true when done.
template <typename Done>
bool PollUntil(KafkaConsumer& consumer, Done done, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done() && std::chrono::steady_clock::now() < deadline) {
    absl::StatusOr<int> n = consumer.PollOnce();
    if (!n.ok()) ADD_FAILURE() << n.status();
  }
  return done();
}

KafkaConsumerOptions InProcessOptions(const MockCluster& cluster, const std::string& topic) {
  KafkaConsumerOptions o{.brokers = cluster.bootstraps(), .group_id = topic + "-group",
                         .topics = {topic}};
  o.poll_timeout = milliseconds(20);
  o.consumer_config = {{"fetch.wait.max.ms", "10"}, {"session.timeout.ms", "6000"}};
  o.policy.backoff = {.initial = milliseconds(20), .max = milliseconds(200)};
  o.policy.in_progress_min_delay = milliseconds(20);
  return o;
}

// Another consumer holds "held"'s claim: the adapter pauses the partition at "held", runs no
// message fetched after it until "held" has run, retries "held" once the other claim's lease has
// ended, and never stores (so never commits) an offset past it meanwhile.
TEST(KafkaInProcessTest, InProgressPausesThePartitionKeepsOrderAndNeverCommitsPast) {
  MockCluster cluster;
  ASSERT_TRUE(cluster.ok());
  const std::string topic = "inprogress";
  cluster.CreateTopic(topic, 1);
  IDEM_ASSERT_OK_AND_ASSIGN(auto store, NewMemoryStore({}));
  IDEM_ASSERT_OK_AND_ASSIGN(Processor p, Processor::Create(*store, "k"));
  std::vector<std::string> runs;
  IDEM_ASSERT_OK_AND_ASSIGN(
      auto consumer, KafkaConsumer::Create(InProcessOptions(cluster, topic), p,
                                           [&](const KafkaRecord& r, HandlerContext& ctx) {
                                             EXPECT_EQ(r.partition, 0);
                                             runs.emplace_back(ctx.message_id());
                                           }));
  // The group join takes seconds on the mock cluster: "a0" first, so that the other consumer's
  // claim below is still open when "held" is fetched.
  cluster.Produce(topic, "", "a0", {{"id", "a0"}});
  cluster.Flush();
  ASSERT_TRUE(PollUntil(*consumer, [&] { return !runs.empty(); }, std::chrono::seconds(20)));
  // A claim of another consumer that stays open for 800 ms.
  constexpr auto kLease = milliseconds(800);
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult held,
                            store->Claim({.scope = "k", .id = "held", .lease = kLease}));
  ASSERT_EQ(held.status, ClaimStatus::kAcquired);
  const auto claimed_at = std::chrono::steady_clock::now();
  // Offsets 1, 2: "a1" may share held's poll batch (ProcessBatch then runs it before held is
  // retried: see kafka.h), but its offset is not stored before held's.
  for (const char* id : {"held", "a1"}) cluster.Produce(topic, "", id, {{"id", id}});
  cluster.Flush();
  ASSERT_TRUE(PollUntil(*consumer, [&] { return consumer->stats().in_progress >= 1; },
                        std::chrono::seconds(20)));
  EXPECT_GE(consumer->stats().paused, 1u);
  // Fetched while paused? No: offsets 3 and 4 arrive while held waits.
  for (const char* id : {"a2", "a3"}) cluster.Produce(topic, "", id, {{"id", id}});
  cluster.Flush();
  // Most of the other claim's lease is left: poll through part of it.
  const auto quiet_until = claimed_at + kLease / 2;
  while (std::chrono::steady_clock::now() < quiet_until) {
    IDEM_ASSERT_OK(consumer->PollOnce().status());
  }
  EXPECT_EQ(std::count(runs.begin(), runs.end(), "held"), 0);
  EXPECT_EQ(std::count(runs.begin(), runs.end(), "a2"), 0) << "a later message ran before held";
  EXPECT_EQ(std::count(runs.begin(), runs.end(), "a3"), 0) << "a later message ran before held";
  IDEM_ASSERT_OK(consumer->Commit());
  auto committed = CommittedAndEnd(cluster.bootstraps(), topic + "-group", topic, 1);
  EXPECT_EQ(committed[0].first, 1) << "committed past the message that has no final outcome";
  EXPECT_EQ(committed[0].second, 5);

  ASSERT_TRUE(PollUntil(*consumer, [&] { return consumer->stats().stored >= 1 &&
                                                std::count(runs.begin(), runs.end(), "a3") == 1; },
                        std::chrono::seconds(20)));
  // Not before the other claim's lease ended.
  EXPECT_GE(std::chrono::steady_clock::now() - claimed_at, kLease - milliseconds(20));
  const auto pos = [&](const std::string& id) {
    return std::find(runs.begin(), runs.end(), id) - runs.begin();
  };
  EXPECT_LT(pos("a0"), pos("held"));
  EXPECT_LT(pos("held"), pos("a2"));
  EXPECT_LT(pos("a2"), pos("a3"));
  for (const char* id : {"a0", "held", "a1", "a2", "a3"}) {
    EXPECT_EQ(std::count(runs.begin(), runs.end(), id), 1) << id;
  }
  IDEM_ASSERT_OK(consumer->Commit());
  committed = CommittedAndEnd(cluster.bootstraps(), topic + "-group", topic, 1);
  EXPECT_EQ(committed[0].first, 5);
}

// A producer retry that wrote the same record twice, back to back, in one poll's batch: the
// second copy finds the first's claim still open until the batch completes; ProcessBatch then
// asks again and it is acked as a duplicate in the same poll, never holding the partition for a
// lease.
TEST(KafkaInProcessTest, SameIdTwiceInOneBatchDoesNotWaitForTheLease) {
  MockCluster cluster;
  ASSERT_TRUE(cluster.ok());
  const std::string topic = "twice";
  cluster.CreateTopic(topic, 1);
  IDEM_ASSERT_OK_AND_ASSIGN(auto store, NewMemoryStore({}));
  IDEM_ASSERT_OK_AND_ASSIGN(Processor p,
                            Processor::Create(*store, "k", {.lease = std::chrono::seconds(30)}));
  // Produced before the consumer joins, so that its first fetch returns all of them together.
  for (const char* id : {"d", "d", "e"}) cluster.Produce(topic, "", id, {{"id", id}});
  cluster.Flush();
  std::vector<std::string> runs;
  KafkaConsumerOptions o = InProcessOptions(cluster, topic);
  o.policy.in_progress_max_delay = std::chrono::seconds(30);
  IDEM_ASSERT_OK_AND_ASSIGN(
      auto consumer, KafkaConsumer::Create(o, p, [&](const KafkaRecord&, HandlerContext& ctx) {
        runs.emplace_back(ctx.message_id());
      }));
  ASSERT_TRUE(PollUntil(*consumer, [&] { return consumer->stats().deliveries >= 3; },
                        std::chrono::seconds(20)));
  const auto first_batch_done = std::chrono::steady_clock::now();
  ASSERT_TRUE(PollUntil(*consumer, [&] { return consumer->stats().stored >= 1 &&
                                                consumer->stats().processed +
                                                        consumer->stats().duplicates >= 3; },
                        std::chrono::seconds(10)))
      << "in_progress " << consumer->stats().in_progress;
  EXPECT_LT(std::chrono::steady_clock::now() - first_batch_done, std::chrono::seconds(2));
  EXPECT_EQ(runs, (std::vector<std::string>{"d", "e"}));
  EXPECT_EQ(consumer->stats().processed, 2u);
  EXPECT_EQ(consumer->stats().duplicates, 1u);
  EXPECT_EQ(consumer->stats().in_progress, 0u) << "the copy never waited";
  IDEM_ASSERT_OK(consumer->Commit());
  EXPECT_EQ(CommittedAndEnd(cluster.bootstraps(), topic + "-group", topic, 1)[0].first, 3);
}

// Consumer processes on the mock cluster: one is SIGKILLed mid-stream, the group rebalances and
// its uncommitted messages are redelivered to the others.
TEST(KafkaKillTest, RebalanceRedeliversAsDuplicatesStaleAndPoisonDeadLettered) {
  MockCluster cluster;
  ASSERT_TRUE(cluster.ok());
  const std::string topic = "orders";
  const int partitions = 4;
  cluster.CreateTopic(topic, partitions);
  cluster.CreateTopic(topic + ".dead-letter", 1);
  const std::string dir = ::testing::TempDir() + "kafka-" + std::to_string(getpid());
  const std::string db = dir + ".db", ledger = dir + ".ledger";

  // 300 ids over 30 keys with increasing versions; 30 producer duplicates; a stale pair; poison.
  std::vector<std::string> normal;
  for (int i = 0; i < 300; ++i) {
    const std::string id = absl::StrCat("m", i);
    normal.push_back(id);
    cluster.Produce(topic, absl::StrCat("user", i % 30), absl::StrCat("v", i),
                    {{"id", id}, {"version", std::to_string(i)}});
    if (i % 10 == 5) {  // the producer retried: the same record again
      cluster.Produce(topic, absl::StrCat("user", i % 30), absl::StrCat("v", i),
                      {{"id", id}, {"version", std::to_string(i)}});
    }
  }
  // Version 7 of a key first; version 6 is produced once 7 has run (so not in the same
  // ProcessBatch, whose claims would both pass the early gate: see Processor::ProcessBatch).
  cluster.Produce(topic, "stale-key", "new", {{"id", "stale-new"}, {"version", "7"}});
  for (int i = 0; i < 3; ++i) {
    cluster.Produce(topic, absl::StrCat("p", i), "?", {{"id", absl::StrCat("poison", i)}, {"poison", "1"}});
  }
  cluster.Flush();

  const std::vector<std::string> args = {cluster.bootstraps(), topic, "g", db, ledger, "3"};
  std::vector<pid_t> alive = {SpawnWorker(args), SpawnWorker(args)};
  // Kill one worker in the middle of the stream; a third joins.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (LedgerLines(ledger) < 60 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(5));
  }
  ASSERT_GE(LedgerLines(ledger), 60u) << "the workers did not start consuming";
  while (LedgerText(ledger).find("stale-new ") == std::string::npos &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(5));
  }
  cluster.Produce(topic, "stale-key", "old", {{"id", "stale-old"}, {"version", "6"}});
  cluster.Flush();
  const pid_t killed = alive[0];
  kill(killed, SIGKILL);
  waitpid(killed, nullptr, 0);
  // The replacement joins after the dead member's session.timeout.ms (3 s), so its JoinGroup
  // rebalances the live members only. (Stalled partitions seen when it joined earlier were at least
  // partly the adapter's: librdkafka keeps a pause flag across a rebalance, and the adapter did not
  // resume partitions on assignment; it does now. Whether the mock cluster also needs the wait was
  // not re-checked.)
  std::this_thread::sleep_for(milliseconds(4000));
  alive[0] = SpawnWorker(args);

  // Done when the group's committed offsets reach the end of every partition.
  deadline = std::chrono::steady_clock::now() + std::chrono::seconds(40);
  bool done = false;
  std::vector<std::pair<int64_t, int64_t>> last;
  while (!done && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(300));
    done = true;
    last = CommittedAndEnd(cluster.bootstraps(), "g", topic, partitions);
    for (const auto& [committed, end] : last) done &= end > 0 && committed == end;
  }
  for (pid_t pid : alive) kill(pid, SIGTERM);
  for (pid_t pid : alive) {
    int status = 0;
    waitpid(pid, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  std::string offsets;
  for (const auto& [committed, end] : last) absl::StrAppend(&offsets, " ", committed, "/", end);
  ASSERT_TRUE(done) << "committed offsets never reached the end of the partitions:" << offsets;

  // The ledger: every id ran; a repeated run only after the killed worker's run.
  std::map<std::string, std::vector<std::pair<uint64_t, pid_t>>> runs;
  {
    std::ifstream in(ledger);
    std::string id;
    uint64_t token;
    pid_t pid;
    while (in >> id >> token >> pid) runs[id].push_back({token, pid});
  }
  IDEM_ASSERT_OK_AND_ASSIGN(auto store, NewSqliteStore({.path = db}));
  int extra = 0;
  for (const std::string& id : normal) {
    const auto& r = runs[id];
    ASSERT_FALSE(r.empty()) << id;
    for (size_t k = 0; k + 1 < r.size(); ++k) {
      ++extra;
      EXPECT_EQ(r[k].second, killed) << id << ": second run not explained by the kill";
    }
    IDEM_ASSERT_OK_AND_ASSIGN(std::optional<RecordInfo> info, store->Inspect("kafka-test", id));
    ASSERT_TRUE(info.has_value());
    EXPECT_EQ(info->state, RecordState::kCompleted);
    EXPECT_EQ(info->token, r.back().first) << id << ": a run after the completion";
  }
  EXPECT_EQ(runs.count("stale-new"), 1u);
  EXPECT_EQ(runs.count("stale-old"), 0u) << "an older version after a newer one must be Stale";
  IDEM_ASSERT_OK_AND_ASSIGN(std::optional<uint64_t> applied,
                            store->AppliedVersion("kafka-test", "stale-key"));
  EXPECT_EQ(applied, std::optional<uint64_t>(7));
  for (int i = 0; i < 3; ++i) EXPECT_EQ(runs.count(absl::StrCat("poison", i)), 0u);
  EXPECT_EQ(runs.size(), normal.size() + 1);

  // The dead-letter topic: only the poison records, with the reason.
  std::set<std::string> dead;
  for (const auto& h : ReadAll(cluster.bootstraps(), topic + ".dead-letter", 1)) {
    EXPECT_EQ(h.count("idem-reason") ? h.at("idem-reason") : "", "max_attempts");
    EXPECT_EQ(h.count("idem-source-topic") ? h.at("idem-source-topic") : "", topic);
    dead.insert(h.count("id") ? h.at("id") : "?");
  }
  EXPECT_EQ(dead, (std::set<std::string>{"poison0", "poison1", "poison2"}));
  std::printf("kafka: %zu ids, 1 kill, %d extra runs (all by the killed worker)\n", normal.size(),
              extra);
  for (const std::string& f : {db, db + "-wal", db + "-shm", ledger}) std::remove(f.c_str());
}

}  // namespace
}  // namespace idem

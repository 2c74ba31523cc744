// Tests of the Redis Streams adapter on a real redis-server (the backend's CTest fixture):
// in-process consumers for each action, then consumer processes SIGKILLed at random points.
#include "idem/redis_streams.h"

#include <hiredis/hiredis.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "idem/memory_store.h"
#include "idem/processor.h"
#include "idem/redis_store.h"
#include "redis_test_server.h"
#include "streams_harness.h"
#include "testing/status_matchers.h"

namespace idem {
namespace {

using std::chrono::milliseconds;

using streams_harness::ReplyPtr;
// A plain hiredis connection for the test's own commands (producing, reading streams back).
using Redis = streams_harness::RedisClient;

std::string Unique(std::string_view what) {
  return absl::StrCat("rs-", std::string(what), "-", getpid(), "-",
                      std::chrono::steady_clock::now().time_since_epoch().count() % 1000000007);
}

RedisStreamsOptions FastOptions(const std::string& stream, const std::string& consumer) {
  RedisStreamsOptions o;
  o.port = testing::FixturePort();
  o.stream = stream;
  o.group = "g";
  o.consumer = consumer;
  o.outcome_stream = stream + ":outcomes";
  o.block = milliseconds(20);
  o.policy.backoff = {.initial = milliseconds(10), .max = milliseconds(50)};
  o.policy.in_progress_min_delay = milliseconds(10);
  return o;
}

// Polls until `done` or 10 s.
template <typename Done>
void PollUntil(RedisStreamsConsumer& c, Done done) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!done() && std::chrono::steady_clock::now() < deadline) {
    absl::StatusOr<int> n = c.PollOnce();
    ASSERT_TRUE(n.ok()) << n.status();
  }
  ASSERT_TRUE(done()) << "timed out";
}

TEST(RedisStreamsTest, RejectsBadOptions) {
  IDEM_ASSERT_OK_AND_ASSIGN(auto store, NewMemoryStore({}));
  IDEM_ASSERT_OK_AND_ASSIGN(Processor p, Processor::Create(*store, "s"));
  auto handler = [](const StreamEntry&, HandlerContext&) {};
  RedisStreamsOptions o = FastOptions("s", "");
  EXPECT_THAT(RedisStreamsConsumer::Create(o, p, handler).status(),
              testing::StatusIs(absl::StatusCode::kInvalidArgument));
  o = FastOptions("s", "c");
  o.version_field = "v";
  EXPECT_THAT(RedisStreamsConsumer::Create(o, p, handler).status(),
              testing::StatusIs(absl::StatusCode::kInvalidArgument));
  o = FastOptions("s", "c");
  o.batch = 0;
  EXPECT_THAT(RedisStreamsConsumer::Create(o, p, handler).status(),
              testing::StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(RedisStreamsTest, AcksDeadLettersAndCountsEachOutcome) {
  Redis redis(testing::FixturePort());
  ASSERT_TRUE(redis.ok());
  const std::string stream = Unique("outcomes");
  IDEM_ASSERT_OK_AND_ASSIGN(auto store, NewMemoryStore({}));
  IDEM_ASSERT_OK_AND_ASSIGN(Processor p, Processor::Create(*store, "s", {.max_attempts = 2}));
  std::map<std::string, int> runs;
  RedisStreamsOptions o = FastOptions(stream, "c1");
  o.version_key_field = "user";
  o.version_field = "v";
  IDEM_ASSERT_OK_AND_ASSIGN(
      auto consumer, RedisStreamsConsumer::Create(o, p, [&](const StreamEntry& e, HandlerContext& ctx) {
        if (e.Field("poison") == "1") throw std::runtime_error("cannot parse");
        ++runs[std::string(ctx.message_id())];
      }));
  IDEM_ASSERT_OK(consumer->PollOnce().status());  // creates the group

  const std::string a = redis.Add(stream, {"id", "a", "body", "1", "user", "u1", "v", "2"});
  const std::string a_dup = redis.Add(stream, {"id", "a", "body", "1", "user", "u1", "v", "2"});
  const std::string a_conflict = redis.Add(stream, {"id", "a", "body", "XX", "user", "u1", "v", "2"});
  const std::string stale = redis.Add(stream, {"id", "b", "body", "1", "user", "u1", "v", "1"});
  const std::string no_id = redis.Add(stream, {"body", "1"});
  const std::string bad_version = redis.Add(stream, {"id", "c", "user", "u1", "v", "x1"});
  const std::string poison = redis.Add(stream, {"id", "p", "poison", "1"});
  const std::string empty_id = redis.Add(stream, {"id", ""});
  PollUntil(*consumer, [&] { return redis.Pending(stream, "g") == 0 &&
                                    redis.Int({"XLEN", stream + ":outcomes"}) == 8; });

  EXPECT_EQ(runs["a"], 1);
  EXPECT_EQ(runs.count("b"), 0u);
  std::map<std::string, std::string> outcome;
  for (const auto& [id, f] : redis.Range(stream + ":outcomes")) {
    outcome[f.at("entry")] = f.at("outcome");
  }
  EXPECT_EQ(outcome[a], "processed");
  EXPECT_EQ(outcome[a_dup], "duplicate");
  EXPECT_EQ(outcome[a_conflict], "conflict");
  EXPECT_EQ(outcome[stale], "stale");
  EXPECT_EQ(outcome[no_id], "missing_id");
  EXPECT_EQ(outcome[bad_version], "invalid");
  EXPECT_EQ(outcome[poison], "dead_lettered");
  EXPECT_EQ(outcome[empty_id], "invalid");

  std::map<std::string, std::string> dead;
  for (const auto& [id, f] : redis.Range(stream + ":dead-letter")) {
    dead[f.at("idem_source_id")] = f.at("idem_reason");
    if (f.at("idem_source_id") == poison) {
      EXPECT_EQ(f.at("poison"), "1");  // the entry's fields are carried over
    }
  }
  EXPECT_EQ(dead.size(), 5u);
  EXPECT_EQ(dead[a_conflict], "conflict");
  EXPECT_EQ(dead[no_id], "missing_id");
  EXPECT_EQ(dead[poison], "max_attempts");
  EXPECT_EQ(dead[bad_version].rfind("invalid: ", 0), 0u) << dead[bad_version];
  EXPECT_EQ(dead[empty_id].rfind("invalid: ", 0), 0u) << dead[empty_id];
  EXPECT_EQ(consumer->stats().handler_errors, 2u);  // max_attempts = 2, then dead-lettered
  EXPECT_EQ(consumer->stats().acked, 8u);
  EXPECT_EQ(consumer->pending_retries(), 0u);
}

TEST(RedisStreamsTest, AcksAfterTheServerForgetsItsScripts) {
  Redis redis(testing::FixturePort());
  ASSERT_TRUE(redis.ok());
  const std::string stream = Unique("noscript");
  IDEM_ASSERT_OK_AND_ASSIGN(auto store, NewMemoryStore({}));
  IDEM_ASSERT_OK_AND_ASSIGN(Processor p, Processor::Create(*store, "s"));
  int runs = 0;
  IDEM_ASSERT_OK_AND_ASSIGN(
      auto consumer, RedisStreamsConsumer::Create(FastOptions(stream, "c1"), p,
                                                  [&](const StreamEntry&, HandlerContext&) { ++runs; }));
  IDEM_ASSERT_OK(consumer->PollOnce().status());  // creates the group, loads the ack script
  for (const char* id : {"a", "b"}) redis.Add(stream, {"id", id});
  PollUntil(*consumer, [&] { return consumer->stats().acked == 2; });

  // A restart or SCRIPT FLUSH empties the server's script cache: the acknowledgements named by
  // SHA1 are answered NOSCRIPT and sent again with the whole script, in the same PollOnce.
  ASSERT_NE(redis.Cmd({"SCRIPT", "FLUSH"}), nullptr);
  for (const char* id : {"c", "d", "e"}) redis.Add(stream, {"id", id});
  PollUntil(*consumer, [&] { return consumer->stats().acked == 5; });
  EXPECT_EQ(redis.Pending(stream, "g"), 0);
  EXPECT_EQ(redis.Int({"XLEN", stream + ":outcomes"}), 5);
  EXPECT_EQ(runs, 5);
  // And the script is loaded again for the next acknowledgements.
  redis.Add(stream, {"id", "f"});
  PollUntil(*consumer, [&] { return consumer->stats().acked == 6; });
  EXPECT_EQ(consumer->stats().ack_raced, 0u);
}

TEST(RedisStreamsTest, InProgressStaysPendingUntilTheOtherLeaseEnds) {
  Redis redis(testing::FixturePort());
  const std::string stream = Unique("inprogress");
  IDEM_ASSERT_OK_AND_ASSIGN(auto store, NewMemoryStore({}));
  IDEM_ASSERT_OK_AND_ASSIGN(Processor p, Processor::Create(*store, "s"));
  int runs = 0;
  IDEM_ASSERT_OK_AND_ASSIGN(auto consumer,
                            RedisStreamsConsumer::Create(FastOptions(stream, "c1"), p,
                                                         [&](const StreamEntry&, HandlerContext&) { ++runs; }));
  IDEM_ASSERT_OK(consumer->PollOnce().status());
  // Another consumer holds "held" for 400 ms and dies without completing.
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult held,
                            store->Claim({.scope = "s", .id = "held", .lease = milliseconds(400)}));
  ASSERT_EQ(held.status, ClaimStatus::kAcquired);
  const auto start = std::chrono::steady_clock::now();
  redis.Add(stream, {"id", "held"});
  PollUntil(*consumer, [&] { return consumer->stats().in_progress >= 1; });
  EXPECT_EQ(redis.Pending(stream, "g"), 1);  // not acked: left pending
  EXPECT_EQ(consumer->pending_retries(), 1u);
  EXPECT_EQ(runs, 0);
  PollUntil(*consumer, [&] { return redis.Pending(stream, "g") == 0; });
  EXPECT_EQ(runs, 1);
  EXPECT_GE(std::chrono::steady_clock::now() - start, milliseconds(380));
  EXPECT_EQ(consumer->stats().processed, 1u);
}

TEST(RedisStreamsTest, ReclaimsEntriesOfADeadConsumerAfterReclaimIdle) {
  Redis redis(testing::FixturePort());
  const std::string stream = Unique("reclaim");
  ASSERT_NE(redis.Cmd({"XGROUP", "CREATE", stream, "g", "0", "MKSTREAM"}), nullptr);
  const std::string e1 = redis.Add(stream, {"id", "r1"});
  // A consumer that read the entry and died: it sits in "dead"'s PEL.
  ReplyPtr read = redis.Cmd({"XREADGROUP", "GROUP", "g", "dead", "COUNT", "10", "STREAMS", stream, ">"});
  ASSERT_NE(read, nullptr);
  ASSERT_EQ(redis.Pending(stream, "g"), 1);

  IDEM_ASSERT_OK_AND_ASSIGN(auto store, NewMemoryStore({}));
  IDEM_ASSERT_OK_AND_ASSIGN(Processor p, Processor::Create(*store, "s", {.lease = milliseconds(200)}));
  std::vector<bool> reclaimed;
  RedisStreamsOptions o = FastOptions(stream, "alive");
  o.create_group = false;
  IDEM_ASSERT_OK_AND_ASSIGN(auto consumer,
                            RedisStreamsConsumer::Create(o, p, [&](const StreamEntry& e, HandlerContext&) {
                              reclaimed.push_back(e.reclaimed);
                            }));
  EXPECT_EQ(consumer->options().reclaim_idle, milliseconds(1200));  // lease + 1 s
  const auto start = std::chrono::steady_clock::now();
  PollUntil(*consumer, [&] { return redis.Pending(stream, "g") == 0; });
  EXPECT_GE(std::chrono::steady_clock::now() - start, milliseconds(1000));
  ASSERT_EQ(reclaimed.size(), 1u);
  EXPECT_TRUE(reclaimed[0]);
  EXPECT_EQ(consumer->stats().reclaimed, 1u);
  (void)e1;
}

TEST(RedisStreamsTest, StoreDownLeavesEntriesPendingAndRetries) {
  Redis redis(testing::FixturePort());
  const std::string stream = Unique("storedown");
  // The dedup store is a second redis-server of the test's own, killed before the entry arrives:
  // every claim fails with Unavailable (the stream's server stays up).
  IDEM_ASSERT_OK_AND_ASSIGN(
      auto server, testing::TestRedisServer::Start({.port = testing::OwnServerPort(7),
                                                    .dir = ::testing::TempDir() + stream}));
  RedisStoreOptions so;
  so.port = server->port();
  so.connect_timeout = milliseconds(100);
  so.io_timeout = milliseconds(200);
  IDEM_ASSERT_OK_AND_ASSIGN(auto store, NewRedisStore(so));
  server->Signal(SIGKILL);
  IDEM_ASSERT_OK_AND_ASSIGN(Processor p, Processor::Create(*store, "s"));
  int runs = 0;
  IDEM_ASSERT_OK_AND_ASSIGN(auto consumer,
                            RedisStreamsConsumer::Create(FastOptions(stream, "c1"), p,
                                                         [&](const StreamEntry&, HandlerContext&) { ++runs; }));
  IDEM_ASSERT_OK(consumer->PollOnce().status());
  redis.Add(stream, {"id", "x"});
  PollUntil(*consumer, [&] { return consumer->stats().store_errors >= 3; });
  EXPECT_EQ(runs, 0);  // the handler never runs when the claim could not be recorded
  EXPECT_EQ(redis.Pending(stream, "g"), 1);
  EXPECT_EQ(redis.Int({"XLEN", stream + ":outcomes"}), 0);
  EXPECT_EQ(consumer->stats().acked, 0u);
}

// ---- consumer processes, SIGKILLed at random points -------------------------------------------

using streams_harness::ConsumerFleet;
using streams_harness::Spec;

// The fleet of stream_worker processes the kill tests SIGKILL: 4 consumers, 10 kills.
streams_harness::FleetOptions Fleet(const std::string& mode, const std::string& path) {
  streams_harness::FleetOptions o;
  o.worker = IDEM_STREAM_WORKER;
  o.port = testing::FixturePort();
  o.stream = Unique(mode);
  o.mode = mode;
  o.path = path;
  o.lease_ms = 600;
  o.max_attempts = 3;
  o.seed = 12345 + static_cast<uint32_t>(getpid());
  return o;
}

// 200 ids, 30 producer duplicates, 5 conflicting payloads and (with_poison) 5 poison entries.
std::vector<Spec> MakeSpecs(bool with_poison) {
  return streams_harness::MakeSpecs(200, 30, 5, with_poison ? 5 : 0);
}

// What every kill test checks of the streams (streams_harness::CheckStreams): each entry has
// exactly one final outcome, nothing is pending, and the dead-letter stream holds exactly the
// poison entries plus one entry of each conflicting pair.
streams_harness::StreamReport CheckStreams(Redis& redis, const ConsumerFleet& h,
                                           const std::vector<Spec>& specs) {
  streams_harness::StreamReport r =
      streams_harness::CheckStreams(redis, h.stream(), h.entry_ids(), specs);
  EXPECT_EQ(r.pending, 0);
  EXPECT_EQ(r.outcome.size(), specs.size());
  EXPECT_EQ(r.dead_letters, r.expected_dead_letters);
  for (const std::string& v : r.violations) ADD_FAILURE() << v;
  return r;
}

TEST(RedisStreamsKillTest, LeaseModeEveryEntryOneOutcomeNoUnexplainedRun) {
  Redis redis(testing::FixturePort());
  ASSERT_TRUE(redis.ok());
  const std::string ledger = ::testing::TempDir() + Unique("ledger");
  const std::vector<Spec> specs = MakeSpecs(/*with_poison=*/true);
  ConsumerFleet h(Fleet("lease", ledger));
  for (const std::string& p : h.Run(redis, specs, /*consumers=*/4, /*kills=*/10)) {
    ADD_FAILURE() << p;
  }
  EXPECT_EQ(h.killed().size(), 10u);
  const streams_harness::StreamReport streams = CheckStreams(redis, h, specs);
  EXPECT_EQ(streams.dead_lettered, 5u);
  EXPECT_EQ(streams.conflicts, 5u);

  // The effect ledger: every id ran; a second run of an id is explained only by a SIGKILLed
  // process's run before it; the completed record's token is the last run's.
  RedisStoreOptions so;
  so.port = testing::FixturePort();
  so.key_prefix = "idem-" + h.stream();
  IDEM_ASSERT_OK_AND_ASSIGN(auto store, NewRedisStore(so));
  const streams_harness::LedgerReport ledger_report =
      streams_harness::CheckLedger(ledger, specs, h.killed(), *store, "rs-test");
  EXPECT_GE(ledger_report.runs, 200u);
  EXPECT_EQ(ledger_report.unexplained, 0u);
  for (const std::string& v : ledger_report.violations) ADD_FAILURE() << v;
  std::printf("lease mode: %zu entries, %zu kills, %zu extra runs all explained by a kill, %zu "
              "duplicates acked\n", specs.size(), h.killed().size(), ledger_report.extra_runs,
              streams.duplicates);
  std::remove(ledger.c_str());
}

TEST(RedisStreamsKillTest, TransactionalModeNoDoubleEffect) {
  Redis redis(testing::FixturePort());
  ASSERT_TRUE(redis.ok());
  const std::string db_path = ::testing::TempDir() + Unique("tx") + ".db";
  const std::vector<Spec> specs = MakeSpecs(/*with_poison=*/false);
  ConsumerFleet h(Fleet("tx", db_path));
  for (const std::string& p : h.Run(redis, specs, /*consumers=*/4, /*kills=*/10)) {
    ADD_FAILURE() << p;
  }
  EXPECT_EQ(h.killed().size(), 10u);
  const streams_harness::StreamReport streams = CheckStreams(redis, h, specs);
  EXPECT_EQ(streams.dead_lettered, 0u);
  std::printf("transactional mode: %zu entries, %zu kills, %zu duplicates acked\n", specs.size(),
              h.killed().size(), streams.duplicates);

  sqlite3* raw = nullptr;
  ASSERT_EQ(sqlite3_open(db_path.c_str(), &raw), SQLITE_OK);
  std::unique_ptr<sqlite3, decltype(&sqlite3_close)> db(raw, &sqlite3_close);
  std::map<std::string, int> effects;
  sqlite3_stmt* stmt = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db.get(), "SELECT id, COUNT(*) FROM effects GROUP BY id", -1, &stmt,
                               nullptr),
            SQLITE_OK);
  while (sqlite3_step(stmt) == SQLITE_ROW) {
    effects[reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0))] = sqlite3_column_int(stmt, 1);
  }
  sqlite3_finalize(stmt);
  EXPECT_EQ(effects.size(), 200u);
  for (int i = 0; i < 200; ++i) EXPECT_EQ(effects[absl::StrCat("m", i)], 1) << "m" << i;
  for (const char* suffix : {"", "-wal", "-shm"}) std::remove((db_path + suffix).c_str());
}

}  // namespace
}  // namespace idem

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
#include "testing/status_matchers.h"

namespace idem {
namespace {

using std::chrono::milliseconds;

struct ReplyDeleter {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using ReplyPtr = std::unique_ptr<redisReply, ReplyDeleter>;

// A plain hiredis connection for the test's own commands (producing, reading streams back).
class Redis {
 public:
  explicit Redis(int port) : ctx_(redisConnect("127.0.0.1", port), &redisFree) {}
  bool ok() const { return ctx_ != nullptr && ctx_->err == 0; }

  ReplyPtr Cmd(const std::vector<std::string>& args) {
    std::vector<const char*> argv;
    std::vector<size_t> lens;
    for (const std::string& a : args) {
      argv.push_back(a.data());
      lens.push_back(a.size());
    }
    return ReplyPtr(static_cast<redisReply*>(
        redisCommandArgv(ctx_.get(), static_cast<int>(args.size()), argv.data(), lens.data())));
  }
  long long Int(const std::vector<std::string>& args) {
    ReplyPtr r = Cmd(args);
    return r != nullptr && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
  }
  std::string Add(const std::string& stream, const std::vector<std::string>& fields) {
    std::vector<std::string> args = {"XADD", stream, "*"};
    args.insert(args.end(), fields.begin(), fields.end());
    ReplyPtr r = Cmd(args);
    return r != nullptr && r->type == REDIS_REPLY_STRING ? std::string(r->str, r->len) : "";
  }
  // XRANGE - +: entry id -> fields.
  std::vector<std::pair<std::string, std::map<std::string, std::string>>> Range(
      const std::string& stream) {
    std::vector<std::pair<std::string, std::map<std::string, std::string>>> out;
    ReplyPtr r = Cmd({"XRANGE", stream, "-", "+"});
    if (r == nullptr || r->type != REDIS_REPLY_ARRAY) return out;
    for (size_t i = 0; i < r->elements; ++i) {
      const redisReply* e = r->element[i];
      std::map<std::string, std::string> fields;
      const redisReply* f = e->element[1];
      for (size_t k = 0; k + 1 < f->elements; k += 2) {
        fields[std::string(f->element[k]->str, f->element[k]->len)] =
            std::string(f->element[k + 1]->str, f->element[k + 1]->len);
      }
      out.emplace_back(std::string(e->element[0]->str, e->element[0]->len), std::move(fields));
    }
    return out;
  }
  // XPENDING's count of entries delivered and not acked.
  long long Pending(const std::string& stream, const std::string& group) {
    ReplyPtr r = Cmd({"XPENDING", stream, group});
    if (r == nullptr || r->type != REDIS_REPLY_ARRAY || r->elements < 1) return -1;
    return r->element[0]->integer;
  }

 private:
  std::unique_ptr<redisContext, decltype(&redisFree)> ctx_;
};

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

struct Spec {
  std::string id;
  std::vector<std::string> fields;
  enum Kind { kNormal, kDuplicate, kConflict, kPoison } kind = kNormal;
};

class KillHarness {
 public:
  KillHarness(std::string mode, std::string path, int lease_ms)
      : mode_(std::move(mode)), path_(std::move(path)), lease_ms_(lease_ms),
        stream_(Unique(mode_)), rng_(12345 + getpid()) {}
  ~KillHarness() {
    for (pid_t pid : alive_) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }

  pid_t Spawn() {
    const std::string consumer = absl::StrCat("c", next_++);
    const std::string port = std::to_string(testing::FixturePort());
    const std::string lease = std::to_string(lease_ms_);
    const pid_t pid = fork();
    if (pid == 0) {
      execl(IDEM_STREAM_WORKER, IDEM_STREAM_WORKER, port.c_str(), stream_.c_str(), "g",
            consumer.c_str(), mode_.c_str(), path_.c_str(), lease.c_str(), "3", nullptr);
      _exit(127);
    }
    alive_.push_back(pid);
    return pid;
  }

  void KillOne() {
    std::uniform_int_distribution<size_t> pick(0, alive_.size() - 1);
    const size_t i = pick(rng_);
    const pid_t pid = alive_[i];
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    killed_.insert(pid);
    alive_.erase(alive_.begin() + static_cast<long>(i));
    Spawn();
  }

  // Produces `specs` in chunks with random SIGKILLs in between, then waits until every entry
  // has an outcome and nothing is pending, and stops the consumers with SIGTERM.
  void Run(Redis& redis, const std::vector<Spec>& specs, int consumers, int kills) {
    for (int i = 0; i < consumers; ++i) Spawn();
    // Three chunks of entries; the kills fall 20-80 ms apart while the consumers work through them.
    const size_t chunk = (specs.size() + 2) / 3;
    int done_kills = 0;
    std::uniform_int_distribution<int> pause(20, 80);
    for (size_t i = 0; i < specs.size(); i += chunk) {
      for (size_t k = i; k < std::min(specs.size(), i + chunk); ++k) {
        std::vector<std::string> fields = {"id", specs[k].id};
        fields.insert(fields.end(), specs[k].fields.begin(), specs[k].fields.end());
        entry_ids_.push_back(redis.Add(stream_, fields));
        ASSERT_FALSE(entry_ids_.back().empty());
      }
      const int kills_now = i + chunk >= specs.size() ? kills - done_kills : kills / 4;
      for (int k = 0; k < kills_now; ++k) {
        std::this_thread::sleep_for(milliseconds(pause(rng_)));
        KillOne();
        ++done_kills;
      }
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(40);
    while (std::chrono::steady_clock::now() < deadline &&
           !(redis.Pending(stream_, "g") == 0 &&
             redis.Int({"XLEN", stream_ + ":outcomes"}) >= static_cast<long long>(specs.size()))) {
      std::this_thread::sleep_for(milliseconds(100));
    }
    for (pid_t pid : alive_) kill(pid, SIGTERM);
    for (pid_t pid : alive_) {
      int status = 0;
      waitpid(pid, &status, 0);
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "consumer pid " << pid;
    }
    alive_.clear();
    EXPECT_EQ(done_kills, kills);
  }

  const std::string& stream() const { return stream_; }
  const std::vector<std::string>& entry_ids() const { return entry_ids_; }
  const std::set<pid_t>& killed() const { return killed_; }

 private:
  std::string mode_;
  std::string path_;
  int lease_ms_;
  std::string stream_;
  std::mt19937 rng_;
  int next_ = 0;
  std::vector<pid_t> alive_;
  std::set<pid_t> killed_;
  std::vector<std::string> entry_ids_;
};

// 200 ids, 30 producer duplicates, 5 conflicting payloads and (with_poison) 5 poison entries,
// shuffled within a small window.
std::vector<Spec> MakeSpecs(bool with_poison) {
  std::vector<Spec> specs;
  for (int i = 0; i < 200; ++i) specs.push_back({absl::StrCat("m", i), {"body", absl::StrCat("p", i)}});
  for (int i = 0; i < 30; ++i) {
    const int j = i * 6;
    specs.insert(specs.begin() + j + 3, Spec{absl::StrCat("m", j), {"body", absl::StrCat("p", j)},
                                             Spec::kDuplicate});
  }
  for (int i = 0; i < 5; ++i) {
    const int j = 7 + i * 37;
    specs.push_back({absl::StrCat("m", j), {"body", "other"}, Spec::kConflict});
  }
  if (with_poison) {
    for (int i = 0; i < 5; ++i) {
      specs.insert(specs.begin() + 20 + i * 40,
                   Spec{absl::StrCat("x", i), {"body", "?", "poison", "1"}, Spec::kPoison});
    }
  }
  return specs;
}

// What every kill test checks of the streams: each entry has exactly one final outcome, nothing
// is pending, and the dead-letter stream holds exactly the poison entries plus one entry of each
// conflicting pair. Returns entry id -> outcome.
std::map<std::string, std::string> CheckStreams(Redis& redis, const KillHarness& h,
                                                const std::vector<Spec>& specs) {
  std::map<std::string, std::string> outcome;
  std::map<std::string, int> count;
  for (const auto& [id, f] : redis.Range(h.stream() + ":outcomes")) {
    outcome[f.at("entry")] = f.at("outcome");
    ++count[f.at("entry")];
  }
  EXPECT_EQ(redis.Pending(h.stream(), "g"), 0);
  EXPECT_EQ(outcome.size(), specs.size());
  for (const std::string& e : h.entry_ids()) EXPECT_EQ(count[e], 1) << "entry " << e;

  std::map<std::string, std::string> dead;  // entry -> reason
  for (const auto& [id, f] : redis.Range(h.stream() + ":dead-letter")) {
    EXPECT_EQ(dead.count(f.at("idem_source_id")), 0u) << "dead-lettered twice";
    dead[f.at("idem_source_id")] = f.at("idem_reason");
  }
  std::map<std::string, std::vector<size_t>> by_id;
  for (size_t k = 0; k < specs.size(); ++k) by_id[specs[k].id].push_back(k);
  size_t expected_dead = 0;
  for (size_t k = 0; k < specs.size(); ++k) {
    const std::string& e = h.entry_ids()[k];
    if (specs[k].kind == Spec::kPoison) {
      ++expected_dead;
      EXPECT_EQ(dead[e], "max_attempts") << specs[k].id;
      EXPECT_EQ(outcome[e], "dead_lettered");
    }
  }
  for (const auto& [id, ks] : by_id) {
    int processed = 0, conflicts = 0;
    bool has_conflict = false;
    for (size_t k : ks) {
      const std::string& e = h.entry_ids()[k];
      if (specs[k].kind == Spec::kPoison) continue;
      has_conflict |= specs[k].kind == Spec::kConflict;
      const std::string& o = outcome[e];
      if (o == "processed") ++processed;
      if (o == "conflict") {
        ++conflicts;
        EXPECT_EQ(dead[e], "conflict");
      } else {
        EXPECT_TRUE(o == "processed" || o == "duplicate") << id << ": " << o;
        EXPECT_EQ(dead.count(e), 0u) << id;
      }
    }
    EXPECT_LE(processed, 1) << id;
    if (has_conflict) {
      EXPECT_EQ(conflicts, 1) << id;  // one of the two payloads lost: exactly one dead letter
      ++expected_dead;
    } else {
      EXPECT_EQ(conflicts, 0) << id;
    }
  }
  EXPECT_EQ(dead.size(), expected_dead);
  return outcome;
}

TEST(RedisStreamsKillTest, LeaseModeEveryEntryOneOutcomeNoUnexplainedRun) {
  Redis redis(testing::FixturePort());
  ASSERT_TRUE(redis.ok());
  const std::string ledger = ::testing::TempDir() + Unique("ledger");
  const std::vector<Spec> specs = MakeSpecs(/*with_poison=*/true);
  KillHarness h("lease", ledger, 600);
  h.Run(redis, specs, /*consumers=*/4, /*kills=*/10);
  const std::map<std::string, std::string> outcomes = CheckStreams(redis, h, specs);

  // The effect ledger: every id ran; a second run of an id is explained only by a SIGKILLed
  // process's run before it; the completed record's token is the last run's.
  std::map<std::string, std::vector<std::pair<uint64_t, pid_t>>> runs;
  std::ifstream in(ledger);
  std::string id;
  uint64_t token = 0;
  pid_t pid = 0;
  while (in >> id >> token >> pid) runs[id].push_back({token, pid});
  RedisStoreOptions so;
  so.port = testing::FixturePort();
  so.key_prefix = "idem-" + h.stream();
  IDEM_ASSERT_OK_AND_ASSIGN(auto store, NewRedisStore(so));
  int extra_runs = 0, unexplained = 0;
  for (const Spec& s : specs) {
    if (s.kind == Spec::kPoison) {
      EXPECT_EQ(runs.count(s.id), 0u);
      continue;
    }
    const auto& r = runs[s.id];
    ASSERT_FALSE(r.empty()) << s.id << " never ran";
    IDEM_ASSERT_OK_AND_ASSIGN(std::optional<RecordInfo> info, store->Inspect("rs-test", s.id));
    ASSERT_TRUE(info.has_value()) << s.id;
    EXPECT_EQ(info->state, RecordState::kCompleted) << s.id;
    EXPECT_EQ(info->token, r.back().first) << s.id << ": a run after the completion";
    for (size_t k = 0; k + 1 < r.size(); ++k) {
      ++extra_runs;
      if (h.killed().count(r[k].second) == 0) ++unexplained;
    }
  }
  runs.clear();
  EXPECT_EQ(unexplained, 0);
  std::printf("lease mode: %zu entries, %zu kills, %d extra runs all explained by a kill, %ld "
              "duplicates acked\n", specs.size(), h.killed().size(), extra_runs,
              std::count_if(outcomes.begin(), outcomes.end(),
                            [](const auto& o) { return o.second == "duplicate"; }));
  std::remove(ledger.c_str());
}

TEST(RedisStreamsKillTest, TransactionalModeNoDoubleEffect) {
  Redis redis(testing::FixturePort());
  ASSERT_TRUE(redis.ok());
  const std::string db_path = ::testing::TempDir() + Unique("tx") + ".db";
  const std::vector<Spec> specs = MakeSpecs(/*with_poison=*/false);
  KillHarness h("tx", db_path, 600);
  h.Run(redis, specs, /*consumers=*/4, /*kills=*/10);
  const std::map<std::string, std::string> outcomes = CheckStreams(redis, h, specs);
  std::printf("transactional mode: %zu entries, %zu kills, %ld duplicates acked\n", specs.size(),
              h.killed().size(),
              std::count_if(outcomes.begin(), outcomes.end(),
                            [](const auto& o) { return o.second == "duplicate"; }));

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

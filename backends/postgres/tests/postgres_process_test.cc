// Processes against a real server: several processes racing on the same ids, a consumer SIGKILLed
// after its claim and taken over after the lease, the server crashed (pg_ctl -m immediate) and
// restarted mid-run, and transactional consumers SIGKILLed mid-handler.
#include <libpq-fe.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "idem/postgres_store.h"
#include "idem/processor.h"
#include "pg_test_util.h"

namespace idem::testing {
namespace {

constexpr char kScope[] = "pg/process-test";

// Runs `body` in a child process; returns its PID. The child exits with body's return value.
pid_t Spawn(const std::function<int()>& body) {
  const pid_t pid = fork();
  if (pid == 0) {
    int code = 1;
    try {
      code = body();
    } catch (...) {
      code = 3;
    }
    _exit(code);
  }
  return pid;
}

int Wait(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

absl::StatusOr<std::unique_ptr<DedupStore>> Open(const std::string& conninfo,
                                                 const std::string& schema) {
  PostgresStoreOptions options;
  options.conninfo = conninfo;
  options.schema = schema;
  options.pool_size = 2;
  return NewPostgresStore(std::move(options));
}

TEST(PostgresProcesses, RacingProcessesRunEachIdOnce) {
  const std::string schema = UniqueSchema();
  ASSERT_TRUE(Open(FixtureConninfo(), schema).ok());  // schema in place before the race
  const std::string dir = ::testing::TempDir();
  constexpr int kProcesses = 5, kIds = 300;
  std::vector<pid_t> children;
  for (int p = 0; p < kProcesses; ++p) {
    children.push_back(Spawn([&, p] {
      auto store = Open(FixtureConninfo(), schema);
      if (!store.ok()) return 2;
      auto processor = Processor::Create(**store, kScope);
      if (!processor.ok()) return 2;
      std::ofstream out(absl::StrCat(dir, "/race-", schema, "-", p));
      std::vector<int> order(kIds);
      for (int i = 0; i < kIds; ++i) order[i] = i;
      std::shuffle(order.begin(), order.end(), std::mt19937(p));
      for (int i : order) {
        const std::string id = absl::StrCat("id-", i);
        for (int tries = 0; tries < 100; ++tries) {
          auto r = processor->Process({.id = id, .payload = "p"},
                                      [&](HandlerContext&) { out << id << "\n" << std::flush; });
          if (!r.ok()) return 4;
          if (r->outcome != Outcome::kInProgress) break;
          std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
      }
      return 0;
    }));
  }
  for (pid_t pid : children) EXPECT_EQ(Wait(pid), 0);
  std::map<std::string, int> runs;
  for (int p = 0; p < kProcesses; ++p) {
    std::ifstream in(absl::StrCat(dir, "/race-", schema, "-", p));
    for (std::string line; std::getline(in, line);) ++runs[line];
  }
  EXPECT_EQ(runs.size(), static_cast<std::size_t>(kIds));
  for (const auto& [id, n] : runs) EXPECT_EQ(n, 1) << id;
}

TEST(PostgresProcesses, ConsumerKilledAfterItsClaimIsTakenOverAfterTheLease) {
  const std::string schema = UniqueSchema();
  ASSERT_TRUE(Open(FixtureConninfo(), schema).ok());
  int pipefd[2];
  ASSERT_EQ(pipe(pipefd), 0);
  const pid_t child = Spawn([&] {
    auto store = Open(FixtureConninfo(), schema);
    if (!store.ok()) return 2;
    auto claim = (*store)->Claim(
        {.scope = kScope, .id = "victim", .lease = std::chrono::milliseconds(1500)});
    if (!claim.ok() || claim->status != ClaimStatus::kAcquired) return 3;
    char c = 'x';
    if (write(pipefd[1], &c, 1) != 1) return 4;
    pause();  // "running the handler" until SIGKILLed
    return 0;
  });
  char c = 0;
  ASSERT_EQ(read(pipefd[0], &c, 1), 1);
  const auto claimed = std::chrono::steady_clock::now();
  kill(child, SIGKILL);
  EXPECT_EQ(Wait(child), 128 + SIGKILL);
  close(pipefd[0]);
  close(pipefd[1]);

  auto store = Open(FixtureConninfo(), schema);
  ASSERT_TRUE(store.ok());
  auto early = (*store)->Claim({.scope = kScope, .id = "victim"});
  ASSERT_TRUE(early.ok());
  if (std::chrono::steady_clock::now() - claimed < std::chrono::milliseconds(1200)) {
    EXPECT_EQ(early->status, ClaimStatus::kInProgress);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(1700) -
                              (std::chrono::steady_clock::now() - claimed));
  auto late = (*store)->Claim({.scope = kScope, .id = "victim"});
  ASSERT_TRUE(late.ok()) << late.status();
  EXPECT_EQ(late->status, ClaimStatus::kAcquired);
  EXPECT_TRUE(late->took_over);
  EXPECT_EQ(late->attempt, 2u);
  EXPECT_TRUE((*store)->Complete({.scope = kScope, .id = "victim", .token = late->token}).ok());
}

// pg_ctl -m immediate mid-run: every call in the outage returns a status (none a silent success),
// the store reconnects after the restart, and nothing acknowledged is lost.
TEST(PostgresProcesses, ServerCrashAndRestartMidRunLosesNothingAcknowledged) {
  auto server = OwnPgServer::Start(1);
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string schema = UniqueSchema();
  PostgresStoreOptions options;
  options.conninfo = absl::StrCat((*server)->Conninfo(), "?connect_timeout=2");
  options.schema = schema;
  options.pool_size = 3;
  auto store = NewPostgresStore(options);
  ASSERT_TRUE(store.ok()) << store.status();
  auto processor = Processor::Create(**store, kScope);
  ASSERT_TRUE(processor.ok());

  std::atomic<bool> stop{false};
  absl::Mutex mu;
  std::set<std::string> acked;
  std::map<absl::StatusCode, int> failures;
  int after_restart = 0;
  std::atomic<bool> restarted{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; !stop.load(); ++i) {
        const std::string id = absl::StrCat("t", t, "-", i), id_b = id + "-b";
        std::vector<Message> batch = {{.id = id, .payload = "p"}, {.id = id_b, .payload = "p"}};
        auto results = i % 2 == 0
                           ? std::vector<absl::StatusOr<ProcessResult>>{processor->Process(
                                 batch[0], [](HandlerContext&) {})}
                           : processor->ProcessBatch(batch, [](HandlerContext&) {});
        absl::MutexLock lock(&mu);
        for (std::size_t k = 0; k < results.size(); ++k) {
          if (results[k].ok()) {
            if (results[k]->outcome == Outcome::kProcessed) {
              acked.insert(batch[k].id.data() == id.data() ? id : id + "-b");
              if (restarted.load()) ++after_restart;
            }
          } else {
            ++failures[results[k].status().code()];
          }
        }
        if (!results.empty() && !results[0].ok()) {
          std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  ASSERT_TRUE((*server)->Crash().ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  ASSERT_TRUE((*server)->Restart().ok());
  restarted.store(true);
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  stop.store(true);
  for (std::thread& t : threads) t.join();

  int failed = 0;
  for (const auto& [code, n] : failures) {
    // An outage is Unavailable (or Aborted: a completion whose claim was lost with the server).
    EXPECT_TRUE(code == absl::StatusCode::kUnavailable || code == absl::StatusCode::kAborted)
        << absl::StatusCodeToString(code) << " x" << n;
    failed += n;
  }
  EXPECT_GT(failed, 0) << "the outage was not observed";
  EXPECT_GT(after_restart, 0) << "the store did not reconnect after the restart";
  // Every acknowledged message is COMPLETED after the crash.
  auto check = NewPostgresStore(options);
  ASSERT_TRUE(check.ok()) << check.status();
  int lost = 0;
  for (const std::string& id : acked) {
    auto info = (*check)->Inspect(kScope, id);
    ASSERT_TRUE(info.ok()) << info.status();
    if (!info->has_value() || (*info)->state != RecordState::kCompleted) ++lost;
  }
  EXPECT_EQ(lost, 0) << "of " << acked.size() << " acknowledged";
  std::printf("acknowledged %zu, failed calls %d, processed after restart %d\n", acked.size(),
              failed, after_restart);
}

// Transactional consumers SIGKILLed mid-handler, again and again: each id's effect row exists
// exactly once at the end.
TEST(PostgresProcesses, TransactionalConsumersKilledMidHandlerLeaveEachEffectExactlyOnce) {
  const std::string schema = UniqueSchema();
  ASSERT_TRUE(Open(FixtureConninfo(), schema).ok());
  ASSERT_TRUE(PgQuery(FixtureConninfo(),
                      absl::StrCat("CREATE TABLE ", schema, ".effects(id text NOT NULL)"))
                  .ok());
  constexpr int kIds = 150, kConsumers = 3;
  auto consumer = [&](int seed) {
    return [&, seed] {
      PGconn* conn = PQconnectdb(FixtureConninfo().c_str());
      if (PQstatus(conn) != CONNECTION_OK) return 2;
      auto tx = PostgresTransactional::Create(
          conn, kScope,
          {.schema = schema, .lock_timeout = std::chrono::milliseconds(200), .max_attempts = 1000});
      if (!tx.ok()) return 2;
      std::mt19937 rng(seed);
      std::vector<int> order(kIds);
      for (int i = 0; i < kIds; ++i) order[i] = i;
      std::shuffle(order.begin(), order.end(), rng);
      for (int i : order) {
        const std::string id = absl::StrCat("e-", i);
        for (int tries = 0; tries < 200; ++tries) {
          auto r = (*tx)->Process({.id = id, .payload = "p"}, [&](PGconn* c, HandlerContext&) {
            PQclear(PQexec(c, absl::StrCat("INSERT INTO ", schema, ".effects VALUES ('", id, "')")
                                  .c_str()));
            std::this_thread::sleep_for(std::chrono::microseconds(rng() % 3000));
          });
          if (r.ok() && r->outcome != Outcome::kInProgress) break;
          std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
      }
      PQfinish(conn);
      return 0;
    };
  };
  std::vector<pid_t> live;
  int seed = 0;
  for (int c = 0; c < kConsumers; ++c) live.push_back(Spawn(consumer(++seed)));
  std::mt19937 rng(42);
  int kills = 0;
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(4);
  while (std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50 + rng() % 100));
    const std::size_t victim = rng() % live.size();
    kill(live[victim], SIGKILL);
    Wait(live[victim]);
    ++kills;
    live[victim] = Spawn(consumer(++seed));
  }
  for (pid_t pid : live) EXPECT_EQ(Wait(pid), 0);
  // A last consumer, never killed, finishes whatever is left.
  EXPECT_EQ(Wait(Spawn(consumer(++seed))), 0);

  EXPECT_EQ(*PgQuery(FixtureConninfo(),
                     absl::StrCat("SELECT count(DISTINCT id) FROM ", schema, ".effects")),
            absl::StrCat(kIds));
  EXPECT_EQ(*PgQuery(FixtureConninfo(),
                     absl::StrCat("SELECT count(*) FROM (SELECT id FROM ", schema,
                                  ".effects GROUP BY id HAVING count(*) <> 1) AS twice")),
            "0");
  std::printf("%d consumers SIGKILLed\n", kills);
}

}  // namespace
}  // namespace idem::testing

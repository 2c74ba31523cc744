// Several processes on one database file, and consumers killed with SIGKILL: real processes,
// real file locks, the wall clock. Children never use gtest: they report through exit codes,
// pipes and files, and leave with _exit.
#include <signal.h>
#include <sqlite3.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "idem/processor.h"
#include "idem/sqlite_store.h"
#include "idem/store.h"
#include "sqlite_test_util.h"
#include "testing/status_matchers.h"

namespace idem::testing {
namespace {

constexpr char kScope[] = "race/order-events";

// Runs `body` in a child process that exits with its result. The caller must not hold an open
// SQLite connection: a connection must not cross fork().
pid_t ForkChild(const std::function<int()>& body) {
  const pid_t pid = fork();
  if (pid == 0) _exit(body());
  return pid;
}

// Waits for `pid`; returns its exit code, or 100 + signal number if a signal ended it.
int Wait(pid_t pid) {
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return -1;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 100 + WTERMSIG(status);
  return -1;
}

bool ReadAll(int fd, void* data, std::size_t size) {
  char* p = static_cast<char*>(data);
  while (size > 0) {
    const ssize_t n = read(fd, p, size);
    if (n <= 0) return false;
    p += n;
    size -= static_cast<std::size_t>(n);
  }
  return true;
}

void WriteAll(int fd, const void* data, std::size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = write(fd, p, size);
    if (n <= 0) return;
    p += n;
    size -= static_cast<std::size_t>(n);
  }
}

std::string IdOf(int i) { return absl::StrCat("order-", i); }

// One consumer process of the race: a Processor over every id, in its own order; each handler
// run appends "<id> <pid>" to `effects_path`. Exit codes: 0 done, 10+ a failure.
int RaceConsumer(const std::string& db_path, const std::string& effects_path, int start_fd,
                 int index, int ids) {
  absl::StatusOr<std::unique_ptr<DedupStore>> store =
      NewSqliteStore({.path = db_path, .synchronous = SqliteSynchronous::kNormal});
  if (!store.ok()) return 10;
  absl::StatusOr<Processor> processor = Processor::Create(**store, std::string(kScope));
  if (!processor.ok()) return 11;
  std::FILE* effects = std::fopen(effects_path.c_str(), "w");
  if (effects == nullptr) return 12;
  char ignored;
  // EOF when the parent closes its end: every consumer, its store open, starts at once.
  (void)read(start_fd, &ignored, 1);
  for (int k = 0; k < ids; ++k) {
    const std::string id = IdOf(index % 2 == 0 ? k : ids - 1 - k);
    absl::StatusOr<ProcessResult> result;
    // Busy beyond the timeout is a retryable status, not a failure of the contract.
    for (int attempt = 0; attempt < 20; ++attempt) {
      result = processor->Process({.id = id, .payload = id}, [&](HandlerContext&) {
        std::fprintf(effects, "%s %d\n", id.c_str(), static_cast<int>(getpid()));
        std::fflush(effects);
        // A handler takes time: claims of the other consumers land while this one holds its.
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      });
      if (result.ok() || result.status().code() != absl::StatusCode::kUnavailable) break;
    }
    if (!result.ok()) return 13;
  }
  std::fclose(effects);
  return 0;
}

TEST(SqliteMultiProcess, ProcessesRacingOnOneFileRunEachHandlerOnce) {
  constexpr int kProcesses = 4;
  constexpr int kIds = 300;
  TempDir dir;
  const std::string db_path = dir.File("shared.db");
  {
    // Create the schema (and WAL) up front; closed again before any fork.
    absl::StatusOr<std::unique_ptr<DedupStore>> store = NewSqliteStore({.path = db_path});
    ASSERT_TRUE(store.ok()) << store.status();
  }

  int start[2];
  ASSERT_EQ(pipe(start), 0);
  std::vector<pid_t> children;
  for (int p = 0; p < kProcesses; ++p) {
    const std::string effects = dir.File(absl::StrCat("effects.", p));
    children.push_back(ForkChild([&, p, effects] {
      close(start[1]);
      return RaceConsumer(db_path, effects, start[0], p, kIds);
    }));
    ASSERT_GT(children.back(), 0);
  }
  close(start[0]);
  close(start[1]);
  for (pid_t pid : children) EXPECT_EQ(Wait(pid), 0) << "consumer " << pid;

  std::map<std::string, int> runs;
  std::map<std::string, int> runs_by_process;
  for (int p = 0; p < kProcesses; ++p) {
    std::ifstream in(dir.File(absl::StrCat("effects.", p)));
    std::string id, pid;
    while (in >> id >> pid) {
      ++runs[id];
      ++runs_by_process[pid];
    }
  }
  EXPECT_EQ(runs.size(), static_cast<std::size_t>(kIds));
  for (const auto& [id, n] : runs) EXPECT_EQ(n, 1) << id << " ran " << n << " times";

  absl::StatusOr<std::unique_ptr<DedupStore>> store = NewSqliteStore({.path = db_path});
  ASSERT_TRUE(store.ok()) << store.status();
  for (int i = 0; i < kIds; ++i) {
    absl::StatusOr<std::optional<RecordInfo>> info = (*store)->Inspect(kScope, IdOf(i));
    ASSERT_TRUE(info.ok()) << info.status();
    ASSERT_TRUE(info->has_value()) << IdOf(i);
    EXPECT_EQ((*info)->state, RecordState::kCompleted) << IdOf(i);
    EXPECT_EQ((*info)->attempts, 1u) << IdOf(i);
  }
  // Not a requirement, but a race in which one process did everything proves little.
  EXPECT_GE(runs_by_process.size(), 2u);
}

struct ChildClaim {
  int ok = 0;
  uint64_t token = 0;
  int64_t lease_until = 0;
};

TEST(SqliteMultiProcess, ClaimOfAKilledConsumerIsTakenOverAfterItsLease) {
  constexpr std::chrono::milliseconds kLease{600};
  TempDir dir;
  const std::string db_path = dir.File("shared.db");
  const ClaimRequest request{.scope = kScope,
                             .id = "order-42",
                             .lease = kLease,
                             .fingerprint = Fingerprint::Of("payload")};
  int report[2];
  ASSERT_EQ(pipe(report), 0);
  const pid_t child = ForkChild([&] {
    close(report[0]);
    ChildClaim out;
    absl::StatusOr<std::unique_ptr<DedupStore>> store = NewSqliteStore({.path = db_path});
    if (store.ok()) {
      absl::StatusOr<ClaimResult> claim = (*store)->Claim(request);
      if (claim.ok() && claim->status == ClaimStatus::kAcquired) {
        out = {.ok = 1, .token = claim->token, .lease_until = claim->lease_until_ms};
      }
    }
    WriteAll(report[1], &out, sizeof(out));
    while (true) pause();  // "working" on the message until killed
    return 0;
  });
  ASSERT_GT(child, 0);
  close(report[1]);
  ChildClaim claimed;
  ASSERT_TRUE(ReadAll(report[0], &claimed, sizeof(claimed)));
  close(report[0]);
  ASSERT_EQ(kill(child, SIGKILL), 0);
  EXPECT_EQ(Wait(child), 100 + SIGKILL);
  ASSERT_EQ(claimed.ok, 1);

  absl::StatusOr<std::unique_ptr<DedupStore>> opened = NewSqliteStore({.path = db_path});
  ASSERT_TRUE(opened.ok()) << opened.status();
  DedupStore& store = **opened;

  // The dead consumer's lease still holds the id.
  ASSERT_LT(SystemClock().NowMillis(), claimed.lease_until) << "machine too slow for the lease";
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult held, store.Claim(request));
  EXPECT_EQ(held.status, ClaimStatus::kInProgress);
  EXPECT_EQ(held.lease_until_ms, claimed.lease_until);
  EXPECT_EQ(held.attempt, 1u);

  std::this_thread::sleep_for(
      std::chrono::milliseconds(claimed.lease_until - SystemClock().NowMillis() + 5));
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult taken, store.Claim(request));
  EXPECT_EQ(taken.status, ClaimStatus::kAcquired);
  EXPECT_EQ(taken.attempt, 2u);
  EXPECT_TRUE(taken.took_over);
  EXPECT_NE(taken.token, claimed.token);

  // The dead consumer's token is fenced off.
  EXPECT_THAT(store.Complete({.scope = kScope, .id = "order-42", .token = claimed.token}),
              StatusIs(absl::StatusCode::kAborted));
  EXPECT_THAT(store.Release(kScope, "order-42", claimed.token),
              StatusIs(absl::StatusCode::kAborted));
  EXPECT_THAT(store.Extend(kScope, "order-42", claimed.token, kLease),
              StatusIs(absl::StatusCode::kAborted));

  IDEM_ASSERT_OK_AND_ASSIGN(
      CompleteStatus done,
      store.Complete(
          {.scope = kScope, .id = "order-42", .token = taken.token, .result = "shipped"}));
  EXPECT_EQ(done, CompleteStatus::kCompleted);
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult dup, store.Claim(request));
  EXPECT_EQ(dup.status, ClaimStatus::kDuplicate);
  EXPECT_EQ(dup.result, std::optional<std::string>("shipped"));
  EXPECT_EQ(dup.attempt, 2u);
}

TEST(SqliteMultiProcess, WriterKilledMidTransactionLeavesNeitherItsWritesNorItsLock) {
  TempDir dir;
  const std::string db_path = dir.File("shared.db");
  {
    absl::StatusOr<std::unique_ptr<DedupStore>> store = NewSqliteStore({.path = db_path});
    ASSERT_TRUE(store.ok()) << store.status();
  }
  int report[2];
  ASSERT_EQ(pipe(report), 0);
  const pid_t child = ForkChild([&] {
    close(report[0]);
    char ok = 0;
    sqlite3* db = nullptr;
    if (sqlite3_open(db_path.c_str(), &db) == SQLITE_OK &&
        sqlite3_exec(db,
                     absl::StrCat("BEGIN IMMEDIATE; INSERT INTO idem_dedup(scope, id, status, "
                                  "token, lease_until, attempts, expires_at) VALUES('",
                                  kScope,
                                  "', x'6f2d31', 0, 7, 9223372036854775807, 1, "
                                  "9223372036854775807)")
                         .c_str(),
                     nullptr, nullptr, nullptr) == SQLITE_OK) {
      ok = 1;
    }
    WriteAll(report[1], &ok, 1);
    while (true) pause();  // holding the write lock, mid-transaction
    return 0;
  });
  ASSERT_GT(child, 0);
  close(report[1]);
  char ok = 0;
  ASSERT_TRUE(ReadAll(report[0], &ok, 1));
  close(report[0]);
  ASSERT_EQ(ok, 1);
  ASSERT_EQ(kill(child, SIGKILL), 0);
  EXPECT_EQ(Wait(child), 100 + SIGKILL);

  absl::StatusOr<std::unique_ptr<DedupStore>> store =
      NewSqliteStore({.path = db_path, .busy_timeout = std::chrono::milliseconds(200)});
  ASSERT_TRUE(store.ok()) << store.status();
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult claim, (*store)->Claim({.scope = kScope, .id = "o-1"}));
  EXPECT_EQ(claim.status, ClaimStatus::kAcquired);  // the uncommitted row is gone
  EXPECT_EQ(claim.attempt, 1u);
}

}  // namespace
}  // namespace idem::testing

// Transactional mode: the handler's writes, the dedup row and the version gate commit together
// on the caller's connection, or not at all (I2, I5).
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "idem/sqlite_store.h"
#include "idem/store.h"
#include "sqlite_test_util.h"
#include "testing/status_matchers.h"

namespace idem::testing {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::Optional;
using ::testing::StartsWith;

constexpr char kScope[] = "ledger/payments";

class HandlerError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class SqliteTransactionalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // The caller's connection keeps SQLite's default rollback journal: transactional mode does
    // not need WAL. synchronous=OFF only keeps the tests fast.
    ASSERT_EQ(ExecRaw(db_.get(), "PRAGMA synchronous = OFF"), SQLITE_OK);
    ASSERT_EQ(ExecRaw(db_.get(), "CREATE TABLE effects(id BLOB NOT NULL, amount INTEGER)"),
              SQLITE_OK);
    absl::StatusOr<std::unique_ptr<SqliteTransactional>> tx =
        SqliteTransactional::Create(db_.get(), std::string(kScope), {.clock = &clock_});
    ASSERT_TRUE(tx.ok()) << tx.status();
    tx_ = std::move(tx).value();
  }

  // A handler that records one effect row on the caller's connection.
  static void WriteEffect(sqlite3* db, HandlerContext& context) {
    sqlite3_stmt* stmt = nullptr;
    ASSERT_EQ(sqlite3_prepare_v2(db, "INSERT INTO effects VALUES(?1, 100)", -1, &stmt, nullptr),
              SQLITE_OK);
    sqlite3_bind_blob(stmt, 1, context.message_id().data(),
                      static_cast<int>(context.message_id().size()), SQLITE_TRANSIENT);
    EXPECT_EQ(sqlite3_step(stmt), SQLITE_DONE);
    sqlite3_finalize(stmt);
  }

  int64_t Effects() { return QueryInt(db_.get(), "SELECT count(*) FROM effects"); }

  // A lease-mode store on the same file.
  std::unique_ptr<DedupStore> LeaseStore() {
    absl::StatusOr<std::unique_ptr<DedupStore>> store = NewSqliteStore(
        {.path = path_, .synchronous = SqliteSynchronous::kNormal, .clock = &clock_});
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? std::move(store).value() : nullptr;
  }

  TempDir dir_;
  std::string path_ = dir_.File("app.db");
  RawDb db_ = OpenRaw(path_);
  ManualClock clock_;
  std::unique_ptr<SqliteTransactional> tx_;
};

TEST_F(SqliteTransactionalTest, HandlerWritesCommitWithTheDedupRow) {
  int runs = 0;
  IDEM_ASSERT_OK_AND_ASSIGN(
      ProcessResult result,
      tx_->Process({.id = "pay-1", .payload = "100 EUR"}, [&](sqlite3* db, HandlerContext& ctx) {
        ++runs;
        EXPECT_EQ(db, db_.get());
        EXPECT_EQ(ctx.message_id(), "pay-1");
        EXPECT_EQ(ctx.scope(), kScope);
        EXPECT_EQ(ctx.attempt(), 1u);
        EXPECT_NE(ctx.token(), 0u);
        EXPECT_THAT(ctx.ExtendLease(std::chrono::seconds(5)), IsOk());  // no lease: a no-op
        EXPECT_EQ(sqlite3_get_autocommit(db), 0);                       // inside idem's transaction
        WriteEffect(db, ctx);
        ctx.set_result("receipt-1");
      }));
  EXPECT_EQ(result.outcome, Outcome::kProcessed);
  EXPECT_THAT(result.result, Optional(std::string("receipt-1")));
  EXPECT_EQ(runs, 1);
  EXPECT_EQ(Effects(), 1);
  EXPECT_NE(sqlite3_get_autocommit(db_.get()), 0);  // committed, connection idle again

  std::unique_ptr<DedupStore> store = LeaseStore();
  ASSERT_NE(store, nullptr);
  IDEM_ASSERT_OK_AND_ASSIGN(std::optional<RecordInfo> info, store->Inspect(kScope, "pay-1"));
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->state, RecordState::kCompleted);
  EXPECT_THAT(info->result, Optional(std::string("receipt-1")));
  EXPECT_EQ(info->fingerprint, Fingerprint::Of("100 EUR"));
}

TEST_F(SqliteTransactionalTest, DuplicateRollsBackWithoutRunningTheHandler) {
  auto handler = [&](sqlite3* db, HandlerContext& ctx) {
    WriteEffect(db, ctx);
    ctx.set_result("receipt-1");
  };
  IDEM_ASSERT_OK(tx_->Process({.id = "pay-1", .payload = "p"}, handler));
  int runs = 0;
  IDEM_ASSERT_OK_AND_ASSIGN(
      ProcessResult again,
      tx_->Process({.id = "pay-1", .payload = "p"}, [&](sqlite3*, HandlerContext&) { ++runs; }));
  EXPECT_EQ(again.outcome, Outcome::kDuplicate);
  EXPECT_THAT(again.result, Optional(std::string("receipt-1")));
  EXPECT_EQ(runs, 0);
  EXPECT_EQ(Effects(), 1);
  EXPECT_NE(sqlite3_get_autocommit(db_.get()), 0);  // rolled back, not left open
}

TEST_F(SqliteTransactionalTest, ReusedIdWithAnotherPayloadIsConflict) {
  IDEM_ASSERT_OK(tx_->Process({.id = "pay-1", .payload = "100 EUR"}, WriteEffect));
  int runs = 0;
  IDEM_ASSERT_OK_AND_ASSIGN(ProcessResult again,
                            tx_->Process({.id = "pay-1", .payload = "999 EUR"},
                                         [&](sqlite3*, HandlerContext&) { ++runs; }));
  EXPECT_EQ(again.outcome, Outcome::kConflict);
  EXPECT_EQ(runs, 0);
  EXPECT_EQ(Effects(), 1);
}

TEST_F(SqliteTransactionalTest, StaleVersionRollsBackWithoutRunningTheHandler) {
  IDEM_ASSERT_OK(tx_->Process(
      {.id = "pay-1", .payload = "a", .version = VersionStamp{.key = "acct-7", .version = 5}},
      WriteEffect));
  int runs = 0;
  IDEM_ASSERT_OK_AND_ASSIGN(
      ProcessResult stale,
      tx_->Process(
          {.id = "pay-2", .payload = "b", .version = VersionStamp{.key = "acct-7", .version = 5}},
          [&](sqlite3*, HandlerContext&) { ++runs; }));
  EXPECT_EQ(stale.outcome, Outcome::kStale);
  EXPECT_EQ(runs, 0);
  EXPECT_EQ(Effects(), 1);
  // Rolled back: not even the dedup row of the stale event remains.
  EXPECT_EQ(QueryInt(db_.get(), "SELECT count(*) FROM idem_dedup"), 1);
  EXPECT_NE(sqlite3_get_autocommit(db_.get()), 0);
}

TEST_F(SqliteTransactionalTest, ThrowingHandlerRollsBackEverythingAndTheExceptionIsUnchanged) {
  const VersionStamp v3{.key = "acct-7", .version = 3};
  try {
    (void)tx_->Process({.id = "pay-1", .payload = "p", .version = v3},
                       [&](sqlite3* db, HandlerContext& ctx) {
                         WriteEffect(db, ctx);
                         throw HandlerError("card declined: code 51");
                       });
    ADD_FAILURE() << "the handler's exception did not propagate";
  } catch (const HandlerError& e) {
    EXPECT_STREQ(e.what(), "card declined: code 51");
  } catch (...) {
    ADD_FAILURE() << "the exception changed type";
  }
  EXPECT_NE(sqlite3_get_autocommit(db_.get()), 0);
  EXPECT_EQ(Effects(), 0);
  EXPECT_EQ(QueryInt(db_.get(), "SELECT count(*) FROM idem_dedup"), 0);
  EXPECT_EQ(QueryInt(db_.get(), "SELECT count(*) FROM idem_versions"), 0);

  // Nothing remembers the failed run: the redelivery runs as a first attempt.
  IDEM_ASSERT_OK_AND_ASSIGN(ProcessResult retry,
                            tx_->Process({.id = "pay-1", .payload = "p", .version = v3},
                                         [&](sqlite3* db, HandlerContext& ctx) {
                                           EXPECT_EQ(ctx.attempt(), 1u);
                                           WriteEffect(db, ctx);
                                         }));
  EXPECT_EQ(retry.outcome, Outcome::kProcessed);
  EXPECT_EQ(Effects(), 1);
}

// A transactional processor on the fixture's connection with max_attempts.
std::unique_ptr<SqliteTransactional> WithMaxAttempts(sqlite3* db, Clock* clock,
                                                     uint32_t max_attempts) {
  absl::StatusOr<std::unique_ptr<SqliteTransactional>> tx = SqliteTransactional::Create(
      db, std::string(kScope), {.clock = clock, .max_attempts = max_attempts});
  EXPECT_TRUE(tx.ok()) << tx.status();
  return tx.ok() ? std::move(tx).value() : nullptr;
}

TEST_F(SqliteTransactionalTest, PoisonMessageThatAlwaysThrowsIsDeadLetteredAfterMaxAttempts) {
  std::unique_ptr<SqliteTransactional> tx = WithMaxAttempts(db_.get(), &clock_, 3);
  ASSERT_NE(tx, nullptr);
  std::vector<uint32_t> attempts;
  auto poison = [&](sqlite3* db, HandlerContext& ctx) {
    attempts.push_back(ctx.attempt());
    WriteEffect(db, ctx);
    throw HandlerError("cannot parse");
  };
  for (int i = 0; i < 3; ++i) {
    EXPECT_THROW((void)tx->Process({.id = "poison", .payload = "p"}, poison), HandlerError);
    EXPECT_NE(sqlite3_get_autocommit(db_.get()), 0);
  }
  EXPECT_THAT(attempts, ElementsAre(1u, 2u, 3u)) << "each rolled-back run was counted";
  IDEM_ASSERT_OK_AND_ASSIGN(ProcessResult dead,
                            tx->Process({.id = "poison", .payload = "p"}, poison));
  EXPECT_EQ(dead.outcome, Outcome::kDeadLettered);
  EXPECT_EQ(dead.attempt, 3u);
  EXPECT_EQ(attempts.size(), 3u) << "a dead-lettered message's handler must not run";
  EXPECT_EQ(Effects(), 0) << "every throwing run rolled back its effect";
  // The record keeps the count, RELEASED: claimable, as a lease-mode consumer would leave it.
  EXPECT_EQ(QueryInt(db_.get(), "SELECT attempts FROM idem_dedup"), 3);
  EXPECT_EQ(QueryInt(db_.get(), "SELECT status FROM idem_dedup"), 1);
  // Another message is unaffected, and a success after failures commits once with its attempt.
  int fails = 1;
  auto flaky = [&](sqlite3* db, HandlerContext& ctx) {
    WriteEffect(db, ctx);
    if (fails-- > 0) throw HandlerError("timeout");
    ctx.set_result(absl::StrCat("attempt ", ctx.attempt()));
  };
  EXPECT_THROW((void)tx->Process({.id = "flaky", .payload = "p"}, flaky), HandlerError);
  IDEM_ASSERT_OK_AND_ASSIGN(ProcessResult ok, tx->Process({.id = "flaky", .payload = "p"}, flaky));
  EXPECT_EQ(ok.outcome, Outcome::kProcessed);
  EXPECT_EQ(ok.attempt, 2u);
  EXPECT_THAT(ok.result, Optional(std::string("attempt 2")));
  EXPECT_EQ(Effects(), 1);
  IDEM_ASSERT_OK_AND_ASSIGN(ProcessResult dup, tx->Process({.id = "flaky", .payload = "p"}, flaky));
  EXPECT_EQ(dup.outcome, Outcome::kDuplicate);
  EXPECT_EQ(QueryInt(db_.get(), "SELECT attempts FROM idem_dedup WHERE id = CAST('flaky' AS BLOB)"),
            2)
      << "a duplicate counts no attempt";
}

TEST_F(SqliteTransactionalTest, WithMaxAttemptsTheCountIsCommittedBeforeTheHandlersTransaction) {
  std::unique_ptr<SqliteTransactional> tx = WithMaxAttempts(db_.get(), &clock_, 5);
  ASSERT_NE(tx, nullptr);
  StatementTrace trace(db_.get());
  IDEM_ASSERT_OK_AND_ASSIGN(ProcessResult first,
                            tx->Process({.id = "pay-1", .payload = "p"}, WriteEffect));
  EXPECT_EQ(first.outcome, Outcome::kProcessed);
  EXPECT_EQ(first.attempt, 1u);
  // Step 1 commits the attempt (the row RELEASED); step 2 takes it as COMPLETED in one upsert, in
  // the same transaction as the handler's write.
  EXPECT_THAT(trace.statements(),
              ElementsAre("BEGIN IMMEDIATE",
                          AllOf(StartsWith("INSERT INTO idem_dedup"), HasSubstr("DO NOTHING")),
                          "COMMIT", "BEGIN IMMEDIATE",
                          AllOf(StartsWith("INSERT INTO idem_dedup"), HasSubstr("DO UPDATE SET")),
                          StartsWith("INSERT INTO effects"), "COMMIT"));
  // A duplicate is answered by step 1 alone, writing nothing.
  trace.Clear();
  IDEM_ASSERT_OK_AND_ASSIGN(ProcessResult dup,
                            tx->Process({.id = "pay-1", .payload = "p"}, WriteEffect));
  EXPECT_EQ(dup.outcome, Outcome::kDuplicate);
  EXPECT_THAT(trace.statements(), ElementsAre("BEGIN IMMEDIATE", HasSubstr("DO NOTHING"),
                                              StartsWith("SELECT status"), "ROLLBACK"));
  // So is a stale version: nothing is counted for it.
  IDEM_ASSERT_OK(tx->Process(
      {.id = "v-2", .payload = "p", .version = VersionStamp{.key = "acct", .version = 2}},
      WriteEffect));
  IDEM_ASSERT_OK_AND_ASSIGN(
      ProcessResult stale,
      tx->Process(
          {.id = "v-1", .payload = "p", .version = VersionStamp{.key = "acct", .version = 1}},
          WriteEffect));
  EXPECT_EQ(stale.outcome, Outcome::kStale);
  EXPECT_EQ(QueryInt(db_.get(), "SELECT count(*) FROM idem_dedup WHERE id = CAST('v-1' AS BLOB)"),
            0);
  EXPECT_EQ(Effects(), 2);
}

TEST_F(SqliteTransactionalTest, AttemptsOfLeaseModeCountTowardsMaxAttempts) {
  // Both modes take a held row by one rule (the same takeover clause): a record that lease-mode
  // consumers released max_attempts times is dead-lettered by transactional mode too.
  std::unique_ptr<DedupStore> store = LeaseStore();
  ASSERT_NE(store, nullptr);
  for (int i = 0; i < 2; ++i) {
    IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult claim, store->Claim({.scope = kScope, .id = "pay-1"}));
    ASSERT_EQ(claim.status, ClaimStatus::kAcquired);
    IDEM_ASSERT_OK(store->Release(kScope, "pay-1", claim.token));
  }
  int runs = 0;
  auto counted = [&](sqlite3*, HandlerContext&) { ++runs; };
  std::unique_ptr<SqliteTransactional> tx = WithMaxAttempts(db_.get(), &clock_, 2);
  ASSERT_NE(tx, nullptr);
  IDEM_ASSERT_OK_AND_ASSIGN(ProcessResult dead,
                            tx->Process({.id = "pay-1", .payload = "p"}, counted));
  EXPECT_EQ(dead.outcome, Outcome::kDeadLettered);
  EXPECT_EQ(runs, 0);
  std::unique_ptr<SqliteTransactional> more = WithMaxAttempts(db_.get(), &clock_, 3);
  ASSERT_NE(more, nullptr);
  IDEM_ASSERT_OK_AND_ASSIGN(ProcessResult third,
                            more->Process({.id = "pay-1", .payload = "p"}, counted));
  EXPECT_EQ(third.outcome, Outcome::kProcessed);
  EXPECT_EQ(third.attempt, 3u);
  EXPECT_EQ(runs, 1);
}

TEST_F(SqliteTransactionalTest, AttemptsSurviveAProcessThatDiesInsideTheHandler) {
  // Each child opens its own connection (a connection must not cross fork()), counts its attempt
  // and dies in the middle of the handler's transaction, after writing an effect.
  constexpr int kCrashed = 42;
  for (int i = 0; i < 2; ++i) {
    const pid_t pid = fork();
    if (pid == 0) {
      RawDb child = OpenRaw(path_);
      absl::StatusOr<std::unique_ptr<SqliteTransactional>> tx = SqliteTransactional::Create(
          child.get(), std::string(kScope), {.clock = &clock_, .max_attempts = 2});
      if (!tx.ok()) _exit(1);
      (void)(*tx)->Process({.id = "crash", .payload = "p"}, [](sqlite3* db, HandlerContext& ctx) {
        WriteEffect(db, ctx);
        _exit(kCrashed);
      });
      _exit(2);
    }
    ASSERT_GT(pid, 0);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status));
    ASSERT_EQ(WEXITSTATUS(status), kCrashed);
  }
  // The crashed transactions were rolled back (the hot journal is replayed on the next read);
  // the attempts, committed before them, were not.
  EXPECT_EQ(Effects(), 0);
  EXPECT_EQ(QueryInt(db_.get(), "SELECT attempts FROM idem_dedup"), 2);
  std::unique_ptr<SqliteTransactional> tx = WithMaxAttempts(db_.get(), &clock_, 2);
  ASSERT_NE(tx, nullptr);
  int runs = 0;
  IDEM_ASSERT_OK_AND_ASSIGN(
      ProcessResult dead,
      tx->Process({.id = "crash", .payload = "p"}, [&](sqlite3*, HandlerContext&) { ++runs; }));
  EXPECT_EQ(dead.outcome, Outcome::kDeadLettered);
  EXPECT_EQ(dead.attempt, 2u);
  EXPECT_EQ(runs, 0);
}

TEST_F(SqliteTransactionalTest, VersionGateCommitsAtomicallyWithTheEffect) {
  // Deferred foreign keys let a handler's write fail at COMMIT, after the version was raised in
  // the transaction: the commit failure must take the version back with everything else.
  ASSERT_EQ(ExecRaw(db_.get(),
                    "PRAGMA foreign_keys = ON;"
                    "CREATE TABLE accounts(id TEXT PRIMARY KEY);"
                    "CREATE TABLE postings(account TEXT REFERENCES accounts(id) "
                    "DEFERRABLE INITIALLY DEFERRED)"),
            SQLITE_OK);
  auto post = [](std::string account) {
    return [account](sqlite3* db, HandlerContext&) {
      ASSERT_EQ(ExecRaw(db, "INSERT INTO postings VALUES('" + account + "')"), SQLITE_OK);
    };
  };
  ASSERT_EQ(ExecRaw(db_.get(), "INSERT INTO accounts VALUES('acct-7')"), SQLITE_OK);
  auto message = [](std::string_view id, uint64_t version) {
    return Message{
        .id = id, .payload = id, .version = VersionStamp{.key = "acct-7", .version = version}};
  };
  auto applied = [&] {
    return QueryBlob(db_.get(),
                     "SELECT version FROM idem_versions WHERE key = CAST('acct-7' AS BLOB)");
  };

  IDEM_ASSERT_OK_AND_ASSIGN(ProcessResult first, tx_->Process(message("e-5", 5), post("acct-7")));
  EXPECT_EQ(first.outcome, Outcome::kProcessed);
  EXPECT_EQ(applied(), std::string("\0\0\0\0\0\0\0\x05", 8));

  // COMMIT fails (deferred constraint): nothing of e-6 survives, version 5 stays applied.
  absl::StatusOr<ProcessResult> failed = tx_->Process(message("e-6", 6), post("no-such-acct"));
  EXPECT_THAT(failed, StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_NE(sqlite3_get_autocommit(db_.get()), 0);
  EXPECT_EQ(applied(), std::string("\0\0\0\0\0\0\0\x05", 8));
  EXPECT_EQ(QueryInt(db_.get(), "SELECT count(*) FROM postings"), 1);
  EXPECT_EQ(QueryInt(db_.get(), "SELECT count(*) FROM idem_dedup"), 1);

  IDEM_ASSERT_OK_AND_ASSIGN(ProcessResult six, tx_->Process(message("e-6", 6), post("acct-7")));
  EXPECT_EQ(six.outcome, Outcome::kProcessed);
  EXPECT_EQ(applied(), std::string("\0\0\0\0\0\0\0\x06", 8));
  IDEM_ASSERT_OK_AND_ASSIGN(ProcessResult late, tx_->Process(message("e-4", 4), post("acct-7")));
  EXPECT_EQ(late.outcome, Outcome::kStale);
  EXPECT_EQ(QueryInt(db_.get(), "SELECT count(*) FROM postings"), 2);
}

TEST_F(SqliteTransactionalTest, LiveLeaseModeClaimIsInProgressAndItsReleaseIsTakenOver) {
  std::unique_ptr<DedupStore> store = LeaseStore();
  ASSERT_NE(store, nullptr);
  IDEM_ASSERT_OK_AND_ASSIGN(
      ClaimResult claim,
      store->Claim({.scope = kScope, .id = "pay-1", .fingerprint = Fingerprint::Of("p")}));
  ASSERT_EQ(claim.status, ClaimStatus::kAcquired);

  int runs = 0;
  auto counted = [&](sqlite3* db, HandlerContext& ctx) {
    ++runs;
    WriteEffect(db, ctx);
  };
  IDEM_ASSERT_OK_AND_ASSIGN(ProcessResult held,
                            tx_->Process({.id = "pay-1", .payload = "p"}, counted));
  EXPECT_EQ(held.outcome, Outcome::kInProgress);
  EXPECT_EQ(runs, 0);

  IDEM_ASSERT_OK(store->Release(kScope, "pay-1", claim.token));
  IDEM_ASSERT_OK_AND_ASSIGN(ProcessResult taken,
                            tx_->Process({.id = "pay-1", .payload = "p"}, counted));
  EXPECT_EQ(taken.outcome, Outcome::kProcessed);
  EXPECT_EQ(taken.attempt, 2u);
  EXPECT_EQ(runs, 1);
  // The lease-mode owner lost the claim to the committed transaction.
  EXPECT_THAT(store->Complete({.scope = kScope, .id = "pay-1", .token = claim.token}),
              StatusIs(absl::StatusCode::kAborted));
}

TEST_F(SqliteTransactionalTest, NewIdIsOnePlainInsertAndATakeoverIsOneUpsert) {
  StatementTrace trace(db_.get());
  IDEM_ASSERT_OK_AND_ASSIGN(ProcessResult first,
                            tx_->Process({.id = "pay-1", .payload = "p"}, WriteEffect));
  EXPECT_EQ(first.outcome, Outcome::kProcessed);
  EXPECT_EQ(first.attempt, 1u);
  // No RETURNING (SQLite opens two temporary tables for it on every run), no upsert, no read.
  EXPECT_THAT(trace.statements(), ElementsAre("BEGIN IMMEDIATE",
                                              AllOf(StartsWith("INSERT INTO idem_dedup"),
                                                    HasSubstr("ON CONFLICT(scope, id) DO NOTHING"),
                                                    Not(HasSubstr("RETURNING"))),
                                              StartsWith("INSERT INTO effects"), "COMMIT"));

  // A record left claimable by a lease-mode consumer: the insert leaves it alone, a read finds it
  // claimable in shape, one upsert takes it over, and a read after it gives the attempt.
  std::unique_ptr<DedupStore> store = LeaseStore();
  ASSERT_NE(store, nullptr);
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult claim, store->Claim({.scope = kScope, .id = "pay-2"}));
  IDEM_ASSERT_OK(store->Release(kScope, "pay-2", claim.token));
  trace.Clear();
  IDEM_ASSERT_OK_AND_ASSIGN(ProcessResult taken,
                            tx_->Process({.id = "pay-2", .payload = "p"}, WriteEffect));
  EXPECT_EQ(taken.outcome, Outcome::kProcessed);
  EXPECT_EQ(taken.attempt, 2u);
  EXPECT_THAT(
      trace.statements(),
      ElementsAre("BEGIN IMMEDIATE", HasSubstr("DO NOTHING"), StartsWith("SELECT status"),
                  AllOf(StartsWith("INSERT INTO idem_dedup"), HasSubstr("DO UPDATE SET")),
                  StartsWith("SELECT status"), StartsWith("INSERT INTO effects"), "COMMIT"));
}

TEST_F(SqliteTransactionalTest, ProcessInsideAnOpenTransactionIsFailedPrecondition) {
  ASSERT_EQ(ExecRaw(db_.get(), "BEGIN"), SQLITE_OK);
  int runs = 0;
  EXPECT_THAT(
      tx_->Process({.id = "pay-1", .payload = "p"}, [&](sqlite3*, HandlerContext&) { ++runs; }),
      StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(runs, 0);
  EXPECT_EQ(sqlite3_get_autocommit(db_.get()), 0);  // the caller's transaction is untouched
  ASSERT_EQ(ExecRaw(db_.get(), "ROLLBACK"), SQLITE_OK);
}

TEST_F(SqliteTransactionalTest, HandlerThatEndsTheTransactionIsFailedPrecondition) {
  EXPECT_THAT(tx_->Process({.id = "pay-1", .payload = "p"},
                           [&](sqlite3* db, HandlerContext&) {
                             ASSERT_EQ(ExecRaw(db, "ROLLBACK"), SQLITE_OK);
                           }),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_NE(sqlite3_get_autocommit(db_.get()), 0);
}

TEST_F(SqliteTransactionalTest, BadIdsAndScopesAreInvalidArgument) {
  EXPECT_THAT(tx_->Process({.id = "", .payload = "p"}, WriteEffect),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(
      tx_->Process({.id = std::string(kDefaultMaxIdBytes + 1, 'x'), .payload = "p"}, WriteEffect),
      StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(SqliteTransactional::Create(db_.get(), "a'; DROP TABLE idem_dedup;--"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(Effects(), 0);
  EXPECT_EQ(QueryInt(db_.get(), "SELECT count(*) FROM idem_dedup"), 0);
}

TEST_F(SqliteTransactionalTest, StatementsArePreparedOnceAtCreate) {
  auto open_statements = [&] {
    int n = 0;
    for (sqlite3_stmt* s = sqlite3_next_stmt(db_.get(), nullptr); s != nullptr;
         s = sqlite3_next_stmt(db_.get(), s)) {
      ++n;
    }
    return n;
  };
  const int after_create = open_statements();
  EXPECT_GT(after_create, 0);
  for (int i = 0; i < 20; ++i) {
    IDEM_ASSERT_OK(tx_->Process({.id = absl::StrCat("pay-", i % 10), .payload = "p"},
                                [](sqlite3*, HandlerContext& ctx) { ctx.set_result("r"); }));
  }
  EXPECT_EQ(open_statements(), after_create);
  tx_.reset();
  EXPECT_EQ(open_statements(), 0);  // finalized with the object, before the caller closes db
}

}  // namespace
}  // namespace idem::testing

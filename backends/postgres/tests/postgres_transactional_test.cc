// Transactional mode on the caller's PGconn, against the fixture's server: one commit for the
// dedup row, the handler's writes and the version gate; rollbacks for duplicates, stale events and
// exceptions; savepoints inside the caller's transaction; a bounded wait for a concurrent delivery;
// attempts that survive rollbacks and dead-letter a poison message.
#include <libpq-fe.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "idem/postgres_store.h"
#include "pg_test_util.h"

namespace idem::testing {
namespace {

constexpr char kScope[] = "pg/ledger";

struct ConnCloser {
  void operator()(PGconn* c) const { PQfinish(c); }
};
using Conn = std::unique_ptr<PGconn, ConnCloser>;

Conn Connect() {
  Conn conn(PQconnectdb(FixtureConninfo().c_str()));
  EXPECT_EQ(PQstatus(conn.get()), CONNECTION_OK) << PQerrorMessage(conn.get());
  return conn;
}

void Exec(PGconn* conn, const std::string& sql) {
  PGresult* r = PQexec(conn, sql.c_str());
  const ExecStatusType st = PQresultStatus(r);
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    const std::string message = PQresultErrorMessage(r);
    PQclear(r);
    throw std::runtime_error(message);
  }
  PQclear(r);
}

std::string Query(PGconn* conn, const std::string& sql) {
  PGresult* r = PQexec(conn, sql.c_str());
  std::string out = PQntuples(r) > 0 ? PQgetvalue(r, 0, 0) : "";
  PQclear(r);
  return out;
}

class PostgresTransactionalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    schema_ = UniqueSchema();
    conn_ = Connect();
    options_.schema = schema_;
    auto tx = PostgresTransactional::Create(conn_.get(), kScope, options_);
    ASSERT_TRUE(tx.ok()) << tx.status();
    tx_ = std::move(*tx);
    Exec(conn_.get(), absl::StrCat("CREATE TABLE ", schema_, ".ledger(id text, amount int)"));
  }

  // The handler of most tests: one ledger row.
  auto Insert(const std::string& id) {
    return [this, id](PGconn* conn, HandlerContext&) {
      Exec(conn, absl::StrCat("INSERT INTO ", schema_, ".ledger VALUES ('", id, "', 1)"));
    };
  }
  int Rows(const std::string& id) {
    return std::stoi(Query(conn_.get(), absl::StrCat("SELECT count(*) FROM ", schema_,
                                                     ".ledger WHERE id = '", id, "'")));
  }

  std::string schema_;
  Conn conn_;
  PostgresTransactionalOptions options_;
  std::unique_ptr<PostgresTransactional> tx_;
};

TEST_F(PostgresTransactionalTest, ProcessesOnceAndDuplicatesGetTheStoredResult) {
  int runs = 0;
  auto first = tx_->Process({.id = "m1", .payload = "p"}, [&](PGconn* c, HandlerContext& ctx) {
    ++runs;
    Insert("m1")(c, ctx);
    ctx.set_result("receipt");
  });
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->outcome, Outcome::kProcessed);
  EXPECT_EQ(first->attempt, 1u);
  auto again = tx_->Process({.id = "m1", .payload = "p"}, [&](PGconn*, HandlerContext&) { ++runs; });
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->outcome, Outcome::kDuplicate);
  EXPECT_EQ(again->result, "receipt");
  EXPECT_EQ(runs, 1);
  EXPECT_EQ(Rows("m1"), 1);
  EXPECT_EQ(PQtransactionStatus(conn_.get()), PQTRANS_IDLE);

  auto conflict = tx_->Process({.id = "m1", .payload = "other"}, Insert("m1"));
  ASSERT_TRUE(conflict.ok());
  EXPECT_EQ(conflict->outcome, Outcome::kConflict);
  EXPECT_EQ(Rows("m1"), 1);
}

TEST_F(PostgresTransactionalTest, StaleEventRollsBackWithoutRunningTheHandler) {
  ASSERT_EQ(tx_->Process({.id = "v7", .payload = "p", .version = VersionStamp{"user-1", 7}},
                         Insert("v7"))
                ->outcome,
            Outcome::kProcessed);
  int runs = 0;
  auto stale = tx_->Process({.id = "v6", .payload = "p", .version = VersionStamp{"user-1", 6}},
                            [&](PGconn*, HandlerContext&) { ++runs; });
  ASSERT_TRUE(stale.ok()) << stale.status();
  EXPECT_EQ(stale->outcome, Outcome::kStale);
  EXPECT_EQ(runs, 0);
  // The stale id left nothing: its dedup row was rolled back.
  EXPECT_EQ(Query(conn_.get(), absl::StrCat("SELECT count(*) FROM ", schema_,
                                            ".idem_dedup WHERE id = 'v6'::bytea")),
            "0");
  EXPECT_EQ(tx_->Process({.id = "v8", .payload = "p",
                          .version = VersionStamp{"user-1", UINT64_MAX}},
                         Insert("v8"))
                ->outcome,
            Outcome::kProcessed);
}

TEST_F(PostgresTransactionalTest, ThrowingHandlerRollsEverythingBackAndTheExceptionPropagates) {
  EXPECT_THROW((void)tx_->Process({.id = "boom", .payload = "p"},
                                  [&](PGconn* c, HandlerContext& ctx) {
                                    Insert("boom")(c, ctx);
                                    throw std::logic_error("handler failed");
                                  }),
               std::logic_error);
  EXPECT_EQ(PQtransactionStatus(conn_.get()), PQTRANS_IDLE);
  EXPECT_EQ(Rows("boom"), 0);
  auto retry = tx_->Process({.id = "boom", .payload = "p"}, Insert("boom"));
  ASSERT_TRUE(retry.ok()) << retry.status();
  EXPECT_EQ(retry->outcome, Outcome::kProcessed);
  EXPECT_EQ(Rows("boom"), 1);
}

TEST_F(PostgresTransactionalTest, InsideTheCallersTransactionItUsesASavepoint) {
  Exec(conn_.get(), "BEGIN");
  Exec(conn_.get(), absl::StrCat("INSERT INTO ", schema_, ".ledger VALUES ('outer', 1)"));
  auto r = tx_->Process({.id = "sp1", .payload = "p"}, Insert("sp1"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->outcome, Outcome::kProcessed);
  // A duplicate inside the same transaction rolls back to its savepoint only.
  auto dup = tx_->Process({.id = "sp1", .payload = "p"}, Insert("sp1"));
  ASSERT_TRUE(dup.ok()) << dup.status();
  EXPECT_EQ(dup->outcome, Outcome::kDuplicate);
  EXPECT_EQ(PQtransactionStatus(conn_.get()), PQTRANS_INTRANS);
  Exec(conn_.get(), "ROLLBACK");
  // The caller rolled back: nothing happened, the id is new again.
  EXPECT_EQ(Rows("sp1"), 0);
  EXPECT_EQ(Rows("outer"), 0);

  Exec(conn_.get(), "BEGIN");
  ASSERT_EQ(tx_->Process({.id = "sp1", .payload = "p"}, Insert("sp1"))->outcome,
            Outcome::kProcessed);
  EXPECT_THROW((void)tx_->Process({.id = "sp2", .payload = "p"},
                                  [](PGconn*, HandlerContext&) { throw std::runtime_error("x"); }),
               std::runtime_error);
  // The caller's transaction survived the failed delivery and its lock_timeout is its own.
  EXPECT_EQ(PQtransactionStatus(conn_.get()), PQTRANS_INTRANS);
  EXPECT_EQ(Query(conn_.get(), "SHOW lock_timeout"), "0");
  Exec(conn_.get(), "COMMIT");
  EXPECT_EQ(Rows("sp1"), 1);
  EXPECT_EQ(Rows("sp2"), 0);
}

TEST_F(PostgresTransactionalTest, ConcurrentDeliveryOfTheSameIdAnswersInProgressWithinLockTimeout) {
  Conn other = Connect();
  PostgresTransactionalOptions options = options_;
  options.lock_timeout = std::chrono::milliseconds(300);
  auto tx2 = PostgresTransactional::Create(other.get(), kScope, options);
  ASSERT_TRUE(tx2.ok()) << tx2.status();
  absl::Notification in_handler, release;
  std::thread first([&] {
    auto r = tx_->Process({.id = "hot", .payload = "p"}, [&](PGconn* c, HandlerContext& ctx) {
      Insert("hot")(c, ctx);
      in_handler.Notify();
      release.WaitForNotificationWithTimeout(absl::Seconds(30));
    });
    EXPECT_TRUE(r.ok() && r->outcome == Outcome::kProcessed);
  });
  in_handler.WaitForNotification();
  const auto start = std::chrono::steady_clock::now();
  int runs = 0;
  auto second = (*tx2)->Process({.id = "hot", .payload = "p"},
                                [&](PGconn*, HandlerContext&) { ++runs; });
  const auto waited = std::chrono::steady_clock::now() - start;
  release.Notify();
  first.join();
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->outcome, Outcome::kInProgress);
  EXPECT_EQ(runs, 0);
  EXPECT_LT(waited, std::chrono::seconds(3));
  EXPECT_EQ(PQtransactionStatus(other.get()), PQTRANS_IDLE);
  // After the first committed, the second delivery is a duplicate.
  EXPECT_EQ((*tx2)->Process({.id = "hot", .payload = "p"}, Insert("hot"))->outcome,
            Outcome::kDuplicate);
  EXPECT_EQ(Rows("hot"), 1);
}

TEST_F(PostgresTransactionalTest, AttemptsSurviveRollbacksAndDeadLetterAPoisonMessage) {
  PostgresTransactionalOptions options = options_;
  options.max_attempts = 3;
  auto tx = PostgresTransactional::Create(conn_.get(), kScope, options);
  ASSERT_TRUE(tx.ok()) << tx.status();
  int runs = 0;
  for (int i = 1; i <= 3; ++i) {
    EXPECT_THROW((void)(*tx)->Process({.id = "poison", .payload = "p"},
                                      [&](PGconn*, HandlerContext& ctx) {
                                        ++runs;
                                        EXPECT_EQ(ctx.attempt(), static_cast<uint32_t>(i));
                                        throw std::runtime_error("poison");
                                      }),
                 std::runtime_error);
  }
  auto dead = (*tx)->Process({.id = "poison", .payload = "p"},
                             [&](PGconn*, HandlerContext&) { ++runs; });
  ASSERT_TRUE(dead.ok()) << dead.status();
  EXPECT_EQ(dead->outcome, Outcome::kDeadLettered);
  EXPECT_EQ(runs, 3);
  // Another id is unaffected, and its attempt is 1.
  auto fine = (*tx)->Process({.id = "fine", .payload = "p"}, Insert("fine"));
  ASSERT_TRUE(fine.ok()) << fine.status();
  EXPECT_EQ(fine->outcome, Outcome::kProcessed);
  EXPECT_EQ(fine->attempt, 1u);
}

TEST_F(PostgresTransactionalTest, HandlerThatEndsOrBreaksTheTransactionIsFailedPrecondition) {
  auto ended = tx_->Process({.id = "ends", .payload = "p"},
                            [](PGconn* c, HandlerContext&) { Exec(c, "COMMIT"); });
  EXPECT_EQ(ended.status().code(), absl::StatusCode::kFailedPrecondition) << ended.status();

  auto broken = tx_->Process({.id = "breaks", .payload = "p"}, [](PGconn* c, HandlerContext&) {
    PQclear(PQexec(c, "SELECT * FROM no_such_table"));
  });
  EXPECT_EQ(broken.status().code(), absl::StatusCode::kFailedPrecondition) << broken.status();
  EXPECT_EQ(PQtransactionStatus(conn_.get()), PQTRANS_IDLE);
  EXPECT_EQ(tx_->Process({.id = "breaks", .payload = "p"}, Insert("breaks"))->outcome,
            Outcome::kProcessed);

  // A failed caller transaction is refused without touching it.
  Exec(conn_.get(), "BEGIN");
  PQclear(PQexec(conn_.get(), "SELECT 1/0"));
  auto refused = tx_->Process({.id = "x", .payload = "p"}, Insert("x"));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  Exec(conn_.get(), "ROLLBACK");
}

TEST_F(PostgresTransactionalTest, LeaseModeClaimsAreRespectedAndTakenOverWhenReleased) {
  PostgresStoreOptions store_options;
  store_options.conninfo = FixtureConninfo();
  store_options.schema = schema_;
  auto store = NewPostgresStore(store_options);
  ASSERT_TRUE(store.ok()) << store.status();
  auto claim = (*store)->Claim({.scope = kScope, .id = "shared"});
  ASSERT_TRUE(claim.ok());
  EXPECT_EQ(tx_->Process({.id = "shared", .payload = "p"}, Insert("shared"))->outcome,
            Outcome::kInProgress);
  ASSERT_TRUE((*store)->Release(kScope, "shared", claim->token).ok());
  auto taken = tx_->Process({.id = "shared", .payload = "p"}, Insert("shared"));
  ASSERT_TRUE(taken.ok()) << taken.status();
  EXPECT_EQ(taken->outcome, Outcome::kProcessed);
  EXPECT_EQ(taken->attempt, 2u);
  auto after = (*store)->Claim({.scope = kScope, .id = "shared"});
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->status, ClaimStatus::kDuplicate);
}

TEST_F(PostgresTransactionalTest, BadInputIsInvalidArgumentAndNothingIsWritten) {
  EXPECT_EQ(tx_->Process({.id = "", .payload = "p"}, Insert("e")).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PostgresTransactional::Create(conn_.get(), "bad scope!").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PostgresTransactional::Create(nullptr, kScope).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Query(conn_.get(), absl::StrCat("SELECT count(*) FROM ", schema_, ".idem_dedup")),
            "0");
}

}  // namespace
}  // namespace idem::testing

// What only the SQLite store has: its schema and migrations, pragmas, locking, error mapping,
// byte-exact ids and versions, and the single-statement claim.
#include "idem/sqlite_store.h"

#include <sqlite3.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "idem/open_store.h"
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

constexpr char kScope[] = "billing/order-events";
constexpr std::chrono::milliseconds kLease{10'000};

ClaimRequest ClaimOf(std::string_view id) {
  return ClaimRequest{.scope = kScope, .id = id, .lease = kLease};
}

CompleteRequest CompleteOf(std::string_view id, uint64_t token) {
  return CompleteRequest{.scope = kScope, .id = id, .token = token};
}

class SqliteStoreTest : public ::testing::Test {
 protected:
  SqliteStoreOptions Options() const {
    return SqliteStoreOptions{
        .path = path_, .synchronous = SqliteSynchronous::kNormal, .clock = &clock_};
  }

  std::unique_ptr<DedupStore> MustOpen(SqliteStoreOptions options) {
    absl::StatusOr<std::unique_ptr<DedupStore>> store = NewSqliteStore(std::move(options));
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? std::move(store).value() : nullptr;
  }
  std::unique_ptr<DedupStore> MustOpen() { return MustOpen(Options()); }

  TempDir dir_;
  std::string path_ = dir_.File("idem.db");
  mutable ManualClock clock_;
};

TEST_F(SqliteStoreTest, NewFileGetsTheCurrentSchemaInWalMode) {
  ASSERT_NE(MustOpen(), nullptr);
  RawDb db = OpenRaw(path_);
  EXPECT_EQ(QueryInt(db.get(), "SELECT value FROM idem_meta WHERE name = 'schema_version'"),
            SqliteSchemaVersion());
  EXPECT_EQ(QueryInt(db.get(),
                     "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN "
                     "('idem_dedup', 'idem_versions', 'idem_meta')"),
            3);
  EXPECT_EQ(QueryBlob(db.get(), "PRAGMA journal_mode"), "wal");
  // The caller's user_version is left alone (transactional mode shares the caller's file).
  EXPECT_EQ(QueryInt(db.get(), "PRAGMA user_version"), 0);
}

// The layout of schema version 1, as a file written by that version holds it.
constexpr char kSchemaV1[] = R"sql(
CREATE TABLE idem_meta(name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO idem_meta VALUES('schema_version', 1);
CREATE TABLE idem_dedup(
  scope TEXT NOT NULL, id BLOB NOT NULL, status INTEGER NOT NULL, token INTEGER NOT NULL,
  lease_until INTEGER NOT NULL, attempts INTEGER NOT NULL, fingerprint BLOB, result BLOB,
  expires_at INTEGER NOT NULL, PRIMARY KEY(scope, id)) WITHOUT ROWID;
CREATE INDEX idem_dedup_expires_at ON idem_dedup(expires_at);
CREATE TABLE idem_versions(scope TEXT NOT NULL, key BLOB NOT NULL, version BLOB NOT NULL,
  PRIMARY KEY(scope, key)) WITHOUT ROWID;
)sql";

TEST_F(SqliteStoreTest, OldSchemaIsMigratedForwardKeepingItsRecords) {
  {
    RawDb db = OpenRaw(path_);
    ASSERT_EQ(ExecRaw(db.get(), kSchemaV1), SQLITE_OK);
    // A COMPLETED record (result "r1", kept until far in the future) and an applied version 7.
    ASSERT_EQ(ExecRaw(db.get(), absl::StrCat("INSERT INTO idem_dedup VALUES('", kScope,
                                             "', x'6d2d31', 2, 5, 0, 1, NULL, x'7231', ",
                                             std::numeric_limits<int64_t>::max(), ")")),
              SQLITE_OK);
    ASSERT_EQ(ExecRaw(db.get(), absl::StrCat("INSERT INTO idem_versions VALUES('", kScope,
                                             "', x'6b', x'0000000000000007')")),
              SQLITE_OK);
  }
  std::unique_ptr<DedupStore> store = MustOpen();
  ASSERT_NE(store, nullptr);

  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult dup, store->Claim(ClaimOf("m-1")));
  EXPECT_EQ(dup.status, ClaimStatus::kDuplicate);
  EXPECT_THAT(dup.result, Optional(std::string("r1")));
  EXPECT_THAT(store->AppliedVersion(kScope, "k"), IsOk());
  EXPECT_EQ(*store->AppliedVersion(kScope, "k"), std::optional<uint64_t>(7));

  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult fresh, store->Claim(ClaimOf("m-2")));
  EXPECT_EQ(fresh.status, ClaimStatus::kAcquired);

  RawDb db = OpenRaw(path_);
  EXPECT_EQ(QueryInt(db.get(), "SELECT value FROM idem_meta WHERE name = 'schema_version'"),
            SqliteSchemaVersion());
  EXPECT_EQ(QueryInt(db.get(),
                     "SELECT count(*) FROM pragma_table_info('idem_dedup') "
                     "WHERE name = 'claim_origin'"),
            1);
}

TEST_F(SqliteStoreTest, NewerSchemaIsFailedPrecondition) {
  ASSERT_NE(MustOpen(), nullptr);
  {
    RawDb db = OpenRaw(path_);
    ASSERT_EQ(
        ExecRaw(db.get(), absl::StrCat("UPDATE idem_meta SET value = ", SqliteSchemaVersion() + 1,
                                       " WHERE name = 'schema_version'")),
        SQLITE_OK);
  }
  absl::StatusOr<std::unique_ptr<DedupStore>> store = NewSqliteStore(Options());
  EXPECT_THAT(store, StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(store.status().message(), HasSubstr("newer"));

  RawDb db = OpenRaw(path_);
  EXPECT_THAT(SqliteTransactional::Create(db.get(), "app"),
              StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST(SqliteSynchronousNames, ParseReadsBackEveryNameInAnyCaseAndRefusesTheRest) {
  for (SqliteSynchronous setting : {SqliteSynchronous::kOff, SqliteSynchronous::kNormal,
                                    SqliteSynchronous::kFull, SqliteSynchronous::kExtra}) {
    const std::string name(SqliteSynchronousName(setting));
    EXPECT_THAT(ParseSqliteSynchronous(name), IsOkAndHolds(setting)) << name;
    std::string upper = name;
    std::transform(upper.begin(), upper.end(), upper.begin(), ::toupper);
    EXPECT_THAT(ParseSqliteSynchronous(upper), IsOkAndHolds(setting)) << upper;
  }
  EXPECT_EQ(SqliteSynchronousName(SqliteSynchronous::kNormal), "normal");
  for (std::string_view bad : {"", "sometimes", "2", "ful", "full "}) {
    EXPECT_THAT(ParseSqliteSynchronous(bad), StatusIs(absl::StatusCode::kInvalidArgument)) << bad;
  }
  // A long value is quoted by a short prefix only.
  const absl::StatusOr<SqliteSynchronous> huge = ParseSqliteSynchronous(std::string(1 << 20, 'x'));
  EXPECT_THAT(huge, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_LT(huge.status().message().size(), 200u);
}

TEST_F(SqliteStoreTest, SynchronousOptionIsAppliedToTheConnection) {
  const std::pair<SqliteSynchronous, int> cases[] = {{SqliteSynchronous::kOff, 0},
                                                     {SqliteSynchronous::kNormal, 1},
                                                     {SqliteSynchronous::kFull, 2},
                                                     {SqliteSynchronous::kExtra, 3}};
  for (const auto& [setting, pragma] : cases) {
    ConnectionCapture capture;
    SqliteStoreOptions options = Options();
    options.synchronous = setting;
    std::unique_ptr<DedupStore> store = MustOpen(options);
    ASSERT_NE(store, nullptr);
    ASSERT_EQ(capture.opened().size(), 1u);
    EXPECT_EQ(QueryInt(capture.opened()[0], "PRAGMA synchronous"), pragma);
  }
}

TEST_F(SqliteStoreTest, UriOptionsReachTheConnection) {
  ConnectionCapture capture;
  IDEM_ASSERT_OK_AND_ASSIGN(
      std::unique_ptr<DedupStore> store,
      OpenStore(absl::StrCat("sqlite://", path_, "?synchronous=normal&busy_timeout_ms=1234")));
  EXPECT_EQ(store->BackendName(), "sqlite");
  ASSERT_EQ(capture.opened().size(), 1u);
  EXPECT_EQ(QueryInt(capture.opened()[0], "PRAGMA synchronous"), 1);
  EXPECT_EQ(QueryInt(capture.opened()[0], "PRAGMA busy_timeout"), 1234);
  IDEM_ASSERT_OK_AND_ASSIGN(auto claim, store->Claim(ClaimOf("m-1")));
  EXPECT_EQ(claim.status, ClaimStatus::kAcquired);
}

TEST_F(SqliteStoreTest, DefaultSynchronousIsFull) {
  ConnectionCapture capture;
  std::unique_ptr<DedupStore> store = MustOpen(SqliteStoreOptions{.path = path_});
  ASSERT_NE(store, nullptr);
  ASSERT_EQ(capture.opened().size(), 1u);
  EXPECT_EQ(QueryInt(capture.opened()[0], "PRAGMA synchronous"), 2);
}

TEST_F(SqliteStoreTest, TakeoverOfExpiredLeaseIsOneStatement) {
  ConnectionCapture capture;
  std::unique_ptr<DedupStore> store = MustOpen();
  ASSERT_NE(store, nullptr);
  ASSERT_EQ(capture.opened().size(), 1u);
  sqlite3* store_db = capture.opened()[0];
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult first, store->Claim(ClaimOf("m-1")));
  ASSERT_EQ(first.status, ClaimStatus::kAcquired);
  clock_.Advance(kLease.count());

  StatementTrace trace(store_db);
  const int64_t changes_before = sqlite3_total_changes64(store_db);
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult takeover, store->Claim(ClaimOf("m-1")));
  EXPECT_EQ(takeover.status, ClaimStatus::kAcquired);
  EXPECT_TRUE(takeover.took_over);
  EXPECT_EQ(takeover.attempt, 2u);
  // The lock; the fresh insert, which leaves an existing id alone; a read that finds the record
  // claimable in shape; one upsert whose own WHERE decides and writes the takeover; a read of the
  // attempts it wrote; the commit.
  EXPECT_THAT(trace.statements(),
              ElementsAre("BEGIN IMMEDIATE",
                          AllOf(StartsWith("INSERT INTO idem_dedup"), HasSubstr("DO NOTHING")),
                          StartsWith("SELECT status"),
                          AllOf(StartsWith("INSERT INTO idem_dedup"),
                                HasSubstr("ON CONFLICT(scope, id) DO UPDATE SET")),
                          StartsWith("SELECT status"), "COMMIT"));
  EXPECT_EQ(sqlite3_total_changes64(store_db) - changes_before, 1)
      << "exactly one statement wrote: the takeover";
  EXPECT_EQ(store->Stats().takeovers, 1u);
  ASSERT_EQ(trace.statements().size(), 6u);

  // That one statement is the whole takeover: run alone, on another connection and with no read
  // before it, it refuses a live lease and takes over an ended one. So no write depends on what
  // the read before it saw.
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult live, store->Claim(ClaimOf("m-2")));
  ASSERT_EQ(live.status, ClaimStatus::kAcquired);
  RawDb raw = OpenRaw(path_);
  sqlite3_stmt* upsert = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(raw.get(), trace.statements()[3].c_str(), -1, &upsert, nullptr),
            SQLITE_OK)
      << sqlite3_errmsg(raw.get());
  constexpr int64_t kToken = 777;
  auto run_alone = [&](int64_t now) {
    sqlite3_reset(upsert);
    sqlite3_clear_bindings(upsert);
    sqlite3_bind_text(upsert, 1, kScope, -1, SQLITE_STATIC);
    sqlite3_bind_blob(upsert, 2, "m-2", 3, SQLITE_STATIC);
    sqlite3_bind_int64(upsert, 3, kToken);
    sqlite3_bind_int64(upsert, 4, now + kLease.count());
    sqlite3_bind_null(upsert, 5);
    sqlite3_bind_int64(upsert, 6, now + kLease.count() + 1'000);
    sqlite3_bind_int64(upsert, 9, now);
    sqlite3_bind_int64(upsert, 10, 0);
    sqlite3_bind_int64(upsert, 11, 1);
    EXPECT_EQ(sqlite3_step(upsert), SQLITE_DONE) << sqlite3_errmsg(raw.get());
    return sqlite3_changes(raw.get());
  };
  EXPECT_EQ(run_alone(clock_.NowMillis()), 0) << "a live lease must not be taken";
  IDEM_ASSERT_OK_AND_ASSIGN(std::optional<RecordInfo> held, store->Inspect(kScope, "m-2"));
  ASSERT_TRUE(held.has_value());
  EXPECT_EQ(held->token, live.token);
  clock_.Advance(kLease.count());
  EXPECT_EQ(run_alone(clock_.NowMillis()), 1) << "an ended lease is taken by the statement alone";
  sqlite3_finalize(upsert);
  IDEM_ASSERT_OK_AND_ASSIGN(std::optional<RecordInfo> taken, store->Inspect(kScope, "m-2"));
  ASSERT_TRUE(taken.has_value());
  EXPECT_EQ(taken->state, RecordState::kInProgress);
  EXPECT_EQ(taken->token, static_cast<uint64_t>(kToken));
  EXPECT_EQ(taken->attempts, 2u);
}

TEST_F(SqliteStoreTest, FreshClaimIsOnePlainInsertWithoutReturning) {
  ConnectionCapture capture;
  std::unique_ptr<DedupStore> store = MustOpen();
  ASSERT_NE(store, nullptr);

  StatementTrace trace(capture.opened()[0]);
  IDEM_ASSERT_OK_AND_ASSIGN(
      ClaimResult fresh,
      store->Claim(ClaimRequest{
          .scope = kScope, .id = "m-1", .lease = kLease, .fingerprint = Fingerprint::Of("p")}));
  EXPECT_EQ(fresh.status, ClaimStatus::kAcquired);
  EXPECT_EQ(fresh.attempt, 1u);
  EXPECT_FALSE(fresh.took_over);
  EXPECT_EQ(fresh.lease_until_ms, clock_.NowMillis() + kLease.count());
  // No RETURNING (SQLite opens two temporary tables for it on every run), no upsert, no read:
  // sqlite3_changes() says the insert claimed the id.
  EXPECT_THAT(trace.statements(),
              ElementsAre("BEGIN IMMEDIATE",
                          AllOf(StartsWith("INSERT INTO idem_dedup"), HasSubstr("VALUES"),
                                HasSubstr("ON CONFLICT(scope, id) DO NOTHING"),
                                Not(HasSubstr("RETURNING")), Not(HasSubstr("SELECT"))),
                          "COMMIT"));

  // What the claim wrote is what a takeover-free claim reports.
  IDEM_ASSERT_OK_AND_ASSIGN(std::optional<RecordInfo> info, store->Inspect(kScope, "m-1"));
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->state, RecordState::kInProgress);
  EXPECT_EQ(info->token, fresh.token);
  EXPECT_EQ(info->attempts, 1u);
  EXPECT_EQ(info->lease_until_ms, fresh.lease_until_ms);
  EXPECT_EQ(info->fingerprint, Fingerprint::Of("p"));

  // A completion without a version is one UPDATE, also without RETURNING.
  trace.Clear();
  IDEM_ASSERT_OK(store->Complete(CompleteOf("m-1", fresh.token)));
  EXPECT_THAT(
      trace.statements(),
      ElementsAre("BEGIN IMMEDIATE",
                  AllOf(StartsWith("UPDATE idem_dedup"), Not(HasSubstr("RETURNING"))), "COMMIT"));
}

TEST_F(SqliteStoreTest, VersionedFreshClaimChecksTheGateInTheInsertItself) {
  ConnectionCapture capture;
  std::unique_ptr<DedupStore> store = MustOpen();
  ASSERT_NE(store, nullptr);
  const VersionStamp v5{.key = "order-7", .version = 5};
  IDEM_ASSERT_OK_AND_ASSIGN(
      ClaimResult first,
      store->Claim(ClaimRequest{.scope = kScope, .id = "m-1", .lease = kLease, .version = v5}));
  ASSERT_EQ(first.status, ClaimStatus::kAcquired);
  IDEM_ASSERT_OK_AND_ASSIGN(
      CompleteStatus done, store->Complete(CompleteRequest{
                               .scope = kScope, .id = "m-1", .token = first.token, .version = v5}));
  EXPECT_EQ(done, CompleteStatus::kCompleted);

  StatementTrace trace(capture.opened()[0]);
  IDEM_ASSERT_OK_AND_ASSIGN(
      ClaimResult fresh,
      store->Claim(ClaimRequest{.scope = kScope,
                                .id = "m-2",
                                .lease = kLease,
                                .version = VersionStamp{.key = "order-7", .version = 6}}));
  EXPECT_EQ(fresh.status, ClaimStatus::kAcquired);
  EXPECT_THAT(trace.statements(),
              ElementsAre("BEGIN IMMEDIATE",
                          AllOf(StartsWith("INSERT INTO idem_dedup"), HasSubstr("idem_versions"),
                                HasSubstr("DO NOTHING"), Not(HasSubstr("RETURNING"))),
                          "COMMIT"));

  // A new id with an old version: the insert inserts nothing, the upsert claims nothing, and
  // the read says why.
  trace.Clear();
  IDEM_ASSERT_OK_AND_ASSIGN(
      ClaimResult stale,
      store->Claim(ClaimRequest{.scope = kScope, .id = "m-3", .lease = kLease, .version = v5}));
  EXPECT_EQ(stale.status, ClaimStatus::kStale);
  EXPECT_EQ(stale.applied_version, std::optional<uint64_t>(5));
  IDEM_ASSERT_OK_AND_ASSIGN(std::optional<RecordInfo> none, store->Inspect(kScope, "m-3"));
  EXPECT_FALSE(none.has_value());
}

TEST_F(SqliteStoreTest, HeldIdIsAnsweredFromOneReadWithoutATakeoverAttempt) {
  ConnectionCapture capture;
  std::unique_ptr<DedupStore> store = MustOpen();
  ASSERT_NE(store, nullptr);
  IDEM_ASSERT_OK(store->Claim(ClaimOf("m-1")));

  StatementTrace trace(capture.opened()[0]);
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult busy, store->Claim(ClaimOf("m-1")));
  EXPECT_EQ(busy.status, ClaimStatus::kInProgress);
  // A live claim (as a duplicate or a conflict) cannot be taken over: the upsert is skipped.
  EXPECT_THAT(trace.statements(), ElementsAre("BEGIN IMMEDIATE", HasSubstr("DO NOTHING"),
                                              StartsWith("SELECT status"), "COMMIT"));
}

TEST_F(SqliteStoreTest, ClaimBatchIsOneTransactionWithPerEntryOutcomes) {
  ConnectionCapture capture;
  std::unique_ptr<DedupStore> store = MustOpen();
  ASSERT_NE(store, nullptr);
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult held, store->Claim(ClaimOf("held")));

  StatementTrace trace(capture.opened()[0]);
  const std::vector<ClaimRequest> batch = {ClaimOf("a"), ClaimOf(""), ClaimOf("held"),
                                           ClaimOf("b")};
  std::vector<absl::StatusOr<ClaimResult>> out = store->ClaimBatch(batch);
  ASSERT_EQ(out.size(), 4u);
  ASSERT_THAT(out[0], IsOk());
  EXPECT_EQ(out[0]->status, ClaimStatus::kAcquired);
  EXPECT_THAT(out[1], StatusIs(absl::StatusCode::kInvalidArgument));
  ASSERT_THAT(out[2], IsOk());
  EXPECT_EQ(out[2]->status, ClaimStatus::kInProgress);
  ASSERT_THAT(out[3], IsOk());
  EXPECT_EQ(out[3]->status, ClaimStatus::kAcquired);

  int begins = 0, commits = 0;
  for (const std::string& sql : trace.statements()) {
    begins += sql == "BEGIN IMMEDIATE";
    commits += sql == "COMMIT";
  }
  EXPECT_EQ(begins, 1);
  EXPECT_EQ(commits, 1);

  trace.Clear();
  const std::vector<CompleteRequest> completes = {
      CompleteOf("a", out[0]->token), CompleteOf("b", 12345), CompleteOf("held", held.token)};
  std::vector<absl::StatusOr<CompleteStatus>> done = store->CompleteBatch(completes);
  ASSERT_EQ(done.size(), 3u);
  EXPECT_THAT(done[0], IsOk());
  EXPECT_THAT(done[1], StatusIs(absl::StatusCode::kAborted));
  EXPECT_THAT(done[2], IsOk());
  EXPECT_EQ(std::count(trace.statements().begin(), trace.statements().end(), "COMMIT"), 1);
  IDEM_ASSERT_OK_AND_ASSIGN(std::optional<RecordInfo> b, store->Inspect(kScope, "b"));
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->state, RecordState::kInProgress);  // the fenced entry changed nothing
}

TEST_F(SqliteStoreTest, WriterLockHeldElsewhereGivesUnavailableAfterTheBusyTimeout) {
  SqliteStoreOptions options = Options();
  options.busy_timeout = std::chrono::milliseconds(100);
  std::unique_ptr<DedupStore> store = MustOpen(options);
  ASSERT_NE(store, nullptr);
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult claim, store->Claim(ClaimOf("m-1")));

  RawDb other = OpenRaw(path_, /*busy_timeout_ms=*/0);
  ASSERT_EQ(ExecRaw(other.get(), "BEGIN IMMEDIATE"), SQLITE_OK);
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<ClaimResult> blocked = store->Claim(ClaimOf("secret-id-bytes"));
  const auto waited = std::chrono::steady_clock::now() - start;
  EXPECT_THAT(blocked, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(blocked.status().message(), HasSubstr("claim"));
  EXPECT_THAT(blocked.status().message(), Not(HasSubstr("secret-id-bytes")));
  EXPECT_GE(waited, std::chrono::milliseconds(90));
  EXPECT_THAT(store->Complete(CompleteOf("m-1", claim.token)),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(store->ClaimBatch(std::vector<ClaimRequest>{ClaimOf("x"), ClaimOf("y")}),
              ElementsAre(StatusIs(absl::StatusCode::kUnavailable),
                          StatusIs(absl::StatusCode::kUnavailable)));

  ASSERT_EQ(ExecRaw(other.get(), "ROLLBACK"), SQLITE_OK);
  // Nothing was written while refused: the claim is still live and completes now.
  EXPECT_THAT(store->Complete(CompleteOf("m-1", claim.token)), IsOk());
  IDEM_ASSERT_OK_AND_ASSIGN(std::optional<RecordInfo> x, store->Inspect(kScope, "x"));
  EXPECT_FALSE(x.has_value());
}

TEST_F(SqliteStoreTest, FileThatIsNotADatabaseIsDataLoss) {
  {
    std::ofstream garbage(path_, std::ios::binary);
    garbage << std::string(8192, 'x');
  }
  absl::StatusOr<std::unique_ptr<DedupStore>> store = NewSqliteStore(Options());
  EXPECT_THAT(store, StatusIs(absl::StatusCode::kDataLoss));
}

TEST_F(SqliteStoreTest, CorruptPagesAreDataLoss) {
  {
    std::unique_ptr<DedupStore> store = MustOpen();
    ASSERT_NE(store, nullptr);
    for (int i = 0; i < 200; ++i) {
      IDEM_ASSERT_OK(store->Claim(ClaimOf(absl::StrCat("m-", i))));
    }
  }  // the last connection checkpoints the WAL into the file and removes it
  {
    // Keep page 1 (the header and the schema), overwrite every later page with noise.
    std::fstream file(path_, std::ios::binary | std::ios::in | std::ios::out);
    file.seekg(0, std::ios::end);
    const std::streamoff size = file.tellg();
    ASSERT_GT(size, 4096);
    file.seekp(4096);
    file << std::string(static_cast<std::size_t>(size - 4096), '\xA5');
  }
  absl::StatusOr<std::unique_ptr<DedupStore>> store = NewSqliteStore(Options());
  if (!store.ok()) {
    EXPECT_THAT(store, StatusIs(absl::StatusCode::kDataLoss));
    return;
  }
  EXPECT_THAT((*store)->Claim(ClaimOf("m-7")), StatusIs(absl::StatusCode::kDataLoss));
}

TEST_F(SqliteStoreTest, UnopenableFileIsUnavailable) {
  SqliteStoreOptions options = Options();
  options.path = dir_.File("no/such/dir/idem.db");
  EXPECT_THAT(NewSqliteStore(options), StatusIs(absl::StatusCode::kUnavailable));
}

TEST_F(SqliteStoreTest, BadOptionsAreInvalidArgument) {
  SqliteStoreOptions options = Options();
  options.path = "";
  EXPECT_THAT(NewSqliteStore(options), StatusIs(absl::StatusCode::kInvalidArgument));
  options = Options();
  options.retention = std::chrono::milliseconds(0);
  EXPECT_THAT(NewSqliteStore(options), StatusIs(absl::StatusCode::kInvalidArgument));
  options = Options();
  options.busy_timeout = std::chrono::milliseconds(-1);
  EXPECT_THAT(NewSqliteStore(options), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(SqliteStoreTest, BinaryIdsWithNulAnd0xFFAreDistinctAndRoundTrip) {
  std::unique_ptr<DedupStore> store = MustOpen();
  ASSERT_NE(store, nullptr);
  using namespace std::string_literals;
  const std::vector<std::string> ids = {"\0"s,   "\0\0"s, "\xff"s, "\xff\xff"s,
                                        "a\0b"s, "a\0c"s, "a"s,    "\0\xff\0"s};
  for (const std::string& id : ids) {
    IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult claim, store->Claim(ClaimOf(id)));
    ASSERT_EQ(claim.status, ClaimStatus::kAcquired);
    CompleteRequest complete = CompleteOf(id, claim.token);
    const std::string result = "r\0\xff"s + id;
    complete.result = result;
    IDEM_ASSERT_OK(store->Complete(complete));
  }
  for (const std::string& id : ids) {
    IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult dup, store->Claim(ClaimOf(id)));
    EXPECT_EQ(dup.status, ClaimStatus::kDuplicate);
    EXPECT_THAT(dup.result, Optional("r\0\xff"s + id));
  }
  RawDb db = OpenRaw(path_);
  EXPECT_EQ(QueryInt(db.get(), "SELECT count(*) FROM idem_dedup"),
            static_cast<int64_t>(ids.size()));
  EXPECT_EQ(QueryInt(db.get(), "SELECT count(*) FROM idem_dedup WHERE typeof(id) <> 'blob'"), 0);
}

TEST_F(SqliteStoreTest, EmptyResultIsStoredAsEmptyNotAsNone) {
  std::unique_ptr<DedupStore> store = MustOpen();
  ASSERT_NE(store, nullptr);
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult claim, store->Claim(ClaimOf("m-1")));
  CompleteRequest complete = CompleteOf("m-1", claim.token);
  complete.result = std::string_view();  // empty, with a null data pointer
  IDEM_ASSERT_OK(store->Complete(complete));
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult dup, store->Claim(ClaimOf("m-1")));
  EXPECT_THAT(dup.result, Optional(std::string()));
}

TEST_F(SqliteStoreTest, ScopeShapedLikeSqlInjectionIsRejectedAndTablesSurvive) {
  std::unique_ptr<DedupStore> store = MustOpen();
  ASSERT_NE(store, nullptr);
  const std::string_view evil = "a'; DROP TABLE idem_dedup;--";
  EXPECT_THAT(store->Claim(ClaimRequest{.scope = evil, .id = "m-1"}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(store->Complete(CompleteRequest{.scope = evil, .id = "m-1", .token = 1}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(store->Release(evil, "m-1", 1), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(store->Extend(evil, "m-1", 1, kLease), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(store->Inspect(evil, "m-1"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(store->AppliedVersion(evil, "k"), StatusIs(absl::StatusCode::kInvalidArgument));

  // Ids are bytes bound as BLOBs: an id shaped like SQL is just an id.
  const std::string_view evil_id = "x'); DROP TABLE idem_dedup;--";
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult claim, store->Claim(ClaimOf(evil_id)));
  EXPECT_EQ(claim.status, ClaimStatus::kAcquired);

  RawDb db = OpenRaw(path_);
  EXPECT_EQ(QueryInt(db.get(), "SELECT count(*) FROM sqlite_master WHERE name = 'idem_dedup'"), 1);
  EXPECT_EQ(QueryInt(db.get(), "SELECT count(*) FROM idem_dedup"), 1);
}

TEST_F(SqliteStoreTest, VersionsNearTheTopOfUint64CompareExactly) {
  std::unique_ptr<DedupStore> store = MustOpen();
  ASSERT_NE(store, nullptr);
  constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();
  constexpr uint64_t kSignBit = uint64_t{1} << 63;
  auto process = [&](std::string_view id, std::string_view key,
                     uint64_t version) -> absl::StatusOr<ClaimStatus> {
    ClaimRequest request = ClaimOf(id);
    request.version = VersionStamp{.key = key, .version = version};
    absl::StatusOr<ClaimResult> claim = store->Claim(request);
    if (!claim.ok() || claim->status != ClaimStatus::kAcquired) {
      return claim.ok() ? absl::StatusOr<ClaimStatus>(claim->status) : claim.status();
    }
    CompleteRequest complete = CompleteOf(id, claim->token);
    complete.version = request.version;
    absl::StatusOr<CompleteStatus> done = store->Complete(complete);
    if (!done.ok()) return done.status();
    return *done == CompleteStatus::kStale ? ClaimStatus::kStale : ClaimStatus::kAcquired;
  };

  EXPECT_THAT(process("m-1", "k", kMax - 1), IsOkAndHolds(ClaimStatus::kAcquired));
  EXPECT_THAT(process("m-2", "k", kMax - 1), IsOkAndHolds(ClaimStatus::kStale));
  EXPECT_THAT(process("m-3", "k", kMax), IsOkAndHolds(ClaimStatus::kAcquired));
  EXPECT_THAT(store->AppliedVersion(kScope, "k"), IsOk());
  EXPECT_EQ(*store->AppliedVersion(kScope, "k"), std::optional<uint64_t>(kMax));
  EXPECT_THAT(process("m-4", "k", kMax), IsOkAndHolds(ClaimStatus::kStale));

  // Across the sign bit of int64: 2^63 is above 2^63 - 1, not below 0.
  EXPECT_THAT(process("s-1", "s", kSignBit - 1), IsOkAndHolds(ClaimStatus::kAcquired));
  EXPECT_THAT(process("s-2", "s", kSignBit), IsOkAndHolds(ClaimStatus::kAcquired));
  EXPECT_THAT(process("s-3", "s", kSignBit - 1), IsOkAndHolds(ClaimStatus::kStale));
  EXPECT_THAT(process("s-4", "s", 0), IsOkAndHolds(ClaimStatus::kStale));

  RawDb db = OpenRaw(path_);
  EXPECT_EQ(QueryBlob(db.get(), "SELECT version FROM idem_versions WHERE key = x'6b'"),
            std::string(8, '\xff'));
}

TEST_F(SqliteStoreTest, VersionsDoNotExpireWithPurge) {
  SqliteStoreOptions options = Options();
  options.retention = std::chrono::milliseconds(60'000);
  std::unique_ptr<DedupStore> store = MustOpen(options);
  ASSERT_NE(store, nullptr);
  ClaimRequest request = ClaimOf("m-1");
  request.version = VersionStamp{.key = "user-1", .version = 9};
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult claim, store->Claim(request));
  CompleteRequest complete = CompleteOf("m-1", claim.token);
  complete.version = request.version;
  IDEM_ASSERT_OK(store->Complete(complete));

  clock_.Advance(61'000);
  EXPECT_THAT(store->PurgeExpired(0), IsOkAndHolds(int64_t{1}));
  EXPECT_THAT(store->Inspect(kScope, "m-1"), IsOkAndHolds(::testing::Eq(std::nullopt)));
  EXPECT_THAT(store->AppliedVersion(kScope, "user-1"), IsOkAndHolds(Optional(uint64_t{9})));
  // The redelivered old event is still refused, although its dedup record is gone.
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult again, store->Claim(request));
  EXPECT_EQ(again.status, ClaimStatus::kStale);
  EXPECT_THAT(again.applied_version, Optional(uint64_t{9}));
}

TEST_F(SqliteStoreTest, PurgeHonoursItsLimit) {
  std::unique_ptr<DedupStore> store = MustOpen();
  ASSERT_NE(store, nullptr);
  for (int i = 0; i < 5; ++i) {
    const std::string id = absl::StrCat("m-", i);
    IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult claim, store->Claim(ClaimOf(id)));
    CompleteRequest complete = CompleteOf(id, claim.token);
    complete.retention = std::chrono::milliseconds(1'000);
    IDEM_ASSERT_OK(store->Complete(complete));
  }
  clock_.Advance(1'000);
  EXPECT_THAT(store->PurgeExpired(2), IsOkAndHolds(int64_t{2}));
  EXPECT_THAT(store->PurgeExpired(0), IsOkAndHolds(int64_t{3}));
  EXPECT_EQ(store->Stats().purged, 5u);
}

TEST_F(SqliteStoreTest, TokensAreStoredAsTheirBitPattern) {
  SqliteStoreOptions options = Options();
  options.token_source = [] { return std::numeric_limits<uint64_t>::max() - 1; };
  std::unique_ptr<DedupStore> store = MustOpen(options);
  ASSERT_NE(store, nullptr);
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult claim, store->Claim(ClaimOf("m-1")));
  EXPECT_EQ(claim.token, std::numeric_limits<uint64_t>::max() - 1);
  IDEM_ASSERT_OK_AND_ASSIGN(std::optional<RecordInfo> info, store->Inspect(kScope, "m-1"));
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->token, claim.token);
  EXPECT_THAT(store->Complete(CompleteOf("m-1", claim.token)), IsOk());
}

}  // namespace
}  // namespace idem::testing

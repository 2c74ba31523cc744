// The PostgreSQL store beyond the conformance suite, against the fixture's server: schema
// creation and forward migration, concurrent first opens, authentication and password hygiene,
// the connection pool under threads, serialization failures, the uint64 range of the versions
// table, and pgbouncer in transaction pooling mode.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "idem/postgres_store.h"
#include "idem/processor.h"
#include "pg_internal.h"
#include "pg_test_util.h"

namespace idem::testing {
namespace {

constexpr std::string_view kScope = "pg/store-test";

PostgresStoreOptions Options(const std::string& schema) {
  PostgresStoreOptions options;
  options.conninfo = FixtureConninfo();
  options.schema = schema;
  options.pool_size = 4;
  return options;
}

ClaimRequest Claim(std::string_view id) {
  return ClaimRequest{.scope = kScope, .id = id, .lease = std::chrono::seconds(30)};
}

TEST(PostgresStore, FreshSchemaHasCurrentVersionAndIsReusedOnReopen) {
  const std::string schema = UniqueSchema();
  ASSERT_TRUE(NewPostgresStore(Options(schema)).ok());
  EXPECT_EQ(*PgQuery(FixtureConninfo(),
                     absl::StrCat("SELECT value FROM ", schema,
                                  ".idem_meta WHERE name = 'schema_version'")),
            absl::StrCat(PostgresSchemaVersion()));
  ASSERT_TRUE(NewPostgresStore(Options(schema)).ok());
}

TEST(PostgresStore, OlderSchemaIsMigratedForwardKeepingRecords) {
  const std::string schema = UniqueSchema();
  {
    auto store = NewPostgresStore(Options(schema));
    ASSERT_TRUE(store.ok()) << store.status();
    auto claim = (*store)->Claim(Claim("kept"));
    ASSERT_TRUE(claim.ok());
    ASSERT_TRUE((*store)->Complete({.scope = kScope, .id = "kept", .token = claim->token}).ok());
  }
  // Back to version 1: no attempts table.
  ASSERT_TRUE(PgQuery(FixtureConninfo(),
                      absl::StrCat("DROP TABLE ", schema, ".idem_attempts; UPDATE ", schema,
                                   ".idem_meta SET value = 1"))
                  .ok());
  auto store = NewPostgresStore(Options(schema));
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ(*PgQuery(FixtureConninfo(), absl::StrCat("SELECT value FROM ", schema, ".idem_meta")),
            "2");
  EXPECT_TRUE(PgQuery(FixtureConninfo(), absl::StrCat("SELECT count(*) FROM ", schema,
                                                      ".idem_attempts"))
                  .ok());
  auto again = (*store)->Claim(Claim("kept"));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->status, ClaimStatus::kDuplicate);
}

TEST(PostgresStore, NewerSchemaIsFailedPrecondition) {
  const std::string schema = UniqueSchema();
  ASSERT_TRUE(NewPostgresStore(Options(schema)).ok());
  ASSERT_TRUE(
      PgQuery(FixtureConninfo(), absl::StrCat("UPDATE ", schema, ".idem_meta SET value = 99")).ok());
  absl::Status s = NewPostgresStore(Options(schema)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
}

TEST(PostgresStore, ManyOpenersOfAFreshSchemaAtOnceAllSucceed) {
  const std::string schema = UniqueSchema();
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  absl::Mutex mu;
  std::vector<std::string> errors;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&] {
      absl::StatusOr<std::unique_ptr<DedupStore>> store = NewPostgresStore(Options(schema));
      if (store.ok()) {
        ok.fetch_add(1);
      } else {
        absl::MutexLock lock(&mu);
        errors.push_back(std::string(store.status().message()));
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(ok.load(), 8) << (errors.empty() ? "" : errors[0]);
}

TEST(PostgresStore, PasswordAuthenticationWorksAndAWrongPasswordIsNeverShown) {
  const int port = FixturePort();
  PostgresStoreOptions options = Options(UniqueSchema());
  options.conninfo =
      absl::StrCat("postgresql://idem_pw:p%40ss%3Aw%2Frd%231@127.0.0.1:", port, "/idem_test");
  auto store = NewPostgresStore(options);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_TRUE((*store)->Claim(Claim("a")).ok());

  options.conninfo =
      absl::StrCat("postgresql://idem_pw:Wr0ngPassw0rd@127.0.0.1:", port, "/idem_test");
  absl::Status s = NewPostgresStore(options).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_EQ(s.message().find("Wr0ngPassw0rd"), std::string::npos) << s;

  // Through the URI opener, with the password as a query option.
  auto opened = OpenPostgresStoreFromUri(absl::StrCat(
      "postgresql://idem_pw@127.0.0.1:", port, "/idem_test?password=Wr0ngPassw0rd&schema=x1"));
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.status().message().find("Wr0ngPassw0rd"), std::string::npos)
      << opened.status();
}

TEST(PostgresStore, OpenedThroughTheUnixSocketDirectory) {
  const std::string socket = *PgQuery(FixtureConninfo(), "SHOW unix_socket_directories");
  auto store = OpenPostgresStoreFromUri(absl::StrCat("postgresql:///idem_test?host=", socket,
                                                     "&port=", FixturePort(),
                                                     "&user=postgres&schema=", UniqueSchema()));
  ASSERT_TRUE(store.ok()) << store.status();
  auto claim = (*store)->Claim(Claim("over-the-socket"));
  ASSERT_TRUE(claim.ok()) << claim.status();
  EXPECT_EQ(claim->status, ClaimStatus::kAcquired);
}

TEST(PostgresStore, ThreadsShareASmallPoolAndEachIdIsAcquiredOnce) {
  PostgresStoreOptions options = Options(UniqueSchema());
  options.pool_size = 3;
  auto store = NewPostgresStore(options);
  ASSERT_TRUE(store.ok()) << store.status();
  constexpr int kThreads = 8, kIds = 150;
  std::atomic<int> acquired{0}, failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kIds; ++i) {
        const std::string id = absl::StrCat("id-", i);
        auto claim = (*store)->Claim(Claim(id));
        if (!claim.ok()) {
          failures.fetch_add(1);
          continue;
        }
        if (claim->status != ClaimStatus::kAcquired) continue;
        acquired.fetch_add(1);
        if (!(*store)->Complete({.scope = kScope, .id = id, .token = claim->token}).ok()) {
          failures.fetch_add(1);
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(acquired.load(), kIds);
  EXPECT_EQ((*store)->Stats().claims_acquired, static_cast<uint64_t>(kIds));
}

// Batches run one statement over arrays per round: every outcome a batch can give, with repeated
// ids, several max_attempts values and the refusals only a fresh read decides (dead-lettered).
TEST(PostgresStore, ClaimBatchGivesEachEntryItsOwnOutcome) {
  auto store = NewPostgresStore(Options(UniqueSchema()));
  ASSERT_TRUE(store.ok()) << store.status();
  DedupStore& s = **store;
  // Set up: "done" completed, "v" raised key k to 5, "poison" released at max_attempts 1,
  // "fp" held with fingerprint a.
  auto done = s.Claim(Claim("done"));
  ASSERT_TRUE(done.ok());
  ASSERT_TRUE(
      s.Complete({.scope = kScope, .id = "done", .token = done->token, .result = "r"}).ok());
  ClaimRequest v = Claim("v");
  v.version = VersionStamp{.key = "k", .version = 5};
  auto vc = s.Claim(v);
  ASSERT_TRUE(vc.ok());
  ASSERT_TRUE(
      s.Complete({.scope = kScope, .id = "v", .token = vc->token, .version = v.version}).ok());
  ClaimRequest poison = Claim("poison");
  poison.max_attempts = 1;
  auto pc = s.Claim(poison);
  ASSERT_TRUE(pc.ok());
  ASSERT_TRUE(s.Release(kScope, "poison", pc->token).ok());
  ClaimRequest fp = Claim("fp");
  fp.fingerprint = Fingerprint::Of("a");
  ASSERT_TRUE(s.Claim(fp).ok());

  ClaimRequest stale = Claim("stale");
  stale.version = VersionStamp{.key = "k", .version = 4};
  ClaimRequest newer = Claim("newer");
  newer.version = VersionStamp{.key = "k", .version = 6};
  ClaimRequest other_fp = Claim("fp");
  other_fp.fingerprint = Fingerprint::Of("b");
  ClaimRequest fresh_limited = Claim("fresh-limited");
  fresh_limited.max_attempts = 3;
  const std::vector<ClaimRequest> batch = {Claim("fresh"), Claim("done"),
                                           stale,          newer,
                                           poison,         other_fp,
                                           Claim("fresh"), fresh_limited,
                                           Claim("fresh"), ClaimRequest{.scope = kScope, .id = ""}};
  std::vector<absl::StatusOr<ClaimResult>> out = s.ClaimBatch(batch);
  ASSERT_EQ(out.size(), batch.size());
  for (std::size_t i = 0; i + 1 < out.size(); ++i) ASSERT_TRUE(out[i].ok()) << i << out[i].status();
  EXPECT_EQ(out[0]->status, ClaimStatus::kAcquired);
  EXPECT_EQ(out[1]->status, ClaimStatus::kDuplicate);
  EXPECT_EQ(out[1]->result, "r");
  EXPECT_EQ(out[2]->status, ClaimStatus::kStale);
  EXPECT_EQ(out[2]->applied_version, 5u);
  EXPECT_EQ(out[3]->status, ClaimStatus::kAcquired);
  EXPECT_EQ(out[4]->status, ClaimStatus::kDeadLettered);
  EXPECT_EQ(out[5]->status, ClaimStatus::kConflict);
  // The same id three times: claimed once, the later deliveries see it held.
  EXPECT_EQ(out[6]->status, ClaimStatus::kInProgress);
  EXPECT_EQ(out[8]->status, ClaimStatus::kInProgress);
  EXPECT_EQ(out[6]->lease_until_ms, out[0]->lease_until_ms);
  EXPECT_EQ(out[7]->status, ClaimStatus::kAcquired);
  EXPECT_FALSE(out[9].ok());
  EXPECT_EQ(s.Stats().claims_acquired, 4u + 3u);  // 4 during set-up

  // Completions: one fenced (a wrong token), two of one key where the later is lower (stale),
  // and one id completed twice (the second is fenced: the first ended the claim).
  ClaimRequest k7 = Claim("k7");
  k7.version = VersionStamp{.key = "k2", .version = 7};
  ClaimRequest k3 = Claim("k3");
  k3.version = VersionStamp{.key = "k2", .version = 3};
  std::vector<absl::StatusOr<ClaimResult>> claims = s.ClaimBatch(std::vector{k7, k3});
  ASSERT_TRUE(claims[0].ok() && claims[1].ok());
  ASSERT_EQ(claims[0]->status, ClaimStatus::kAcquired);
  ASSERT_EQ(claims[1]->status, ClaimStatus::kAcquired);
  const std::vector<CompleteRequest> completes = {
      {.scope = kScope, .id = "k7", .token = claims[0]->token, .version = k7.version},
      {.scope = kScope, .id = "k3", .token = claims[1]->token, .version = k3.version},
      {.scope = kScope, .id = "fresh", .token = out[0]->token + 1},
      {.scope = kScope, .id = "fresh", .token = out[0]->token, .result = "x"},
      {.scope = kScope, .id = "fresh", .token = out[0]->token, .result = "y"},
      {.scope = kScope, .id = "newer", .token = out[3]->token, .version = newer.version}};
  std::vector<absl::StatusOr<CompleteStatus>> done_out = s.CompleteBatch(completes);
  ASSERT_EQ(done_out.size(), completes.size());
  ASSERT_TRUE(done_out[0].ok());
  EXPECT_EQ(*done_out[0], CompleteStatus::kCompleted);
  ASSERT_TRUE(done_out[1].ok());
  EXPECT_EQ(*done_out[1], CompleteStatus::kStale);
  EXPECT_EQ(done_out[2].status().code(), absl::StatusCode::kAborted);
  ASSERT_TRUE(done_out[3].ok());
  EXPECT_EQ(done_out[4].status().code(), absl::StatusCode::kAborted);
  ASSERT_TRUE(done_out[5].ok());
  EXPECT_EQ(*done_out[5], CompleteStatus::kCompleted);
  EXPECT_EQ(*s.AppliedVersion(kScope, "k2"), std::optional<uint64_t>(7));
  EXPECT_EQ(*s.AppliedVersion(kScope, "k"), std::optional<uint64_t>(6));
  auto again = s.Claim(Claim("fresh"));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->status, ClaimStatus::kDuplicate);
  EXPECT_EQ(again->result, "x");
}

// Batches racing over the same fresh ids: a record inserted by another batch after a claim
// statement's snapshot is classified by a fresh read; each id is acquired exactly once and no
// entry comes back as a failure.
TEST(PostgresStore, RacingClaimBatchesAcquireEachIdOnce) {
  auto store = NewPostgresStore(Options(UniqueSchema()));
  ASSERT_TRUE(store.ok()) << store.status();
  constexpr int kThreads = 4, kRounds = 30, kBatch = 40;
  std::atomic<int> acquired{0}, failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < kRounds; ++round) {
        std::vector<std::string> ids;
        for (int i = 0; i < kBatch; ++i) {
          // Every thread names the round's ids, each in its own order.
          ids.push_back(absl::StrCat("race-", round, "-", (i * (t + 1)) % kBatch));
        }
        std::vector<ClaimRequest> batch;
        for (const std::string& id : ids) batch.push_back(Claim(id));
        for (const absl::StatusOr<ClaimResult>& r : (*store)->ClaimBatch(batch)) {
          if (!r.ok()) {
            failures.fetch_add(1);
          } else if (r->status == ClaimStatus::kAcquired) {
            acquired.fetch_add(1);
          } else if (r->status != ClaimStatus::kInProgress) {
            failures.fetch_add(1);
          }
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(acquired.load(), kRounds * kBatch);
}

TEST(PostgresStore, SerializationFailuresAreRetriedOrUnavailableNeverDuplicate) {
  // Serializable transactions make overlapping batches fail with 40001 (or deadlock, 40P01).
  PostgresStoreOptions options = Options(UniqueSchema());
  options.conninfo += "?options=-c%20default_transaction_isolation%3Dserializable";
  options.pool_size = 8;
  auto store = NewPostgresStore(options);
  ASSERT_TRUE(store.ok()) << store.status();
  constexpr int kThreads = 6, kIds = 40;
  absl::Mutex mu;
  std::multiset<std::string> acquired;
  int unavailable = 0, other = 0, duplicates = 0;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<std::string> ids;
      for (int i = 0; i < kIds; ++i) ids.push_back(absl::StrCat("s-", (i * (t + 1)) % kIds));
      std::vector<ClaimRequest> requests;
      for (const std::string& id : ids) requests.push_back(Claim(id));
      for (int round = 0; round < 3; ++round) {
        auto results = (*store)->ClaimBatch(requests);
        absl::MutexLock lock(&mu);
        for (std::size_t i = 0; i < results.size(); ++i) {
          if (!results[i].ok()) {
            (results[i].status().code() == absl::StatusCode::kUnavailable ? unavailable : other)++;
          } else if (results[i]->status == ClaimStatus::kAcquired) {
            acquired.insert(ids[i]);
          } else if (results[i]->status == ClaimStatus::kDuplicate) {
            ++duplicates;  // nothing was ever completed: a duplicate would be a lie
          }
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(other, 0);
  EXPECT_EQ(duplicates, 0);
  for (int i = 0; i < kIds; ++i) {
    EXPECT_LE(acquired.count(absl::StrCat("s-", i)), 1u) << i;
  }
  // Every id was claimed by someone unless every try for it failed.
  EXPECT_GT(acquired.size(), 0u);
  std::printf("serializable: %zu acquired, %d unavailable\n", acquired.size(), unavailable);
}

TEST(PostgresStore, SqlStateMappingOfServerErrors) {
  auto conn = internal::pg::Connect(FixtureConninfo(), "");
  ASSERT_TRUE(conn.ok()) << conn.status();
  const std::pair<const char*, absl::StatusCode> cases[] = {
      {"40001", absl::StatusCode::kUnavailable},      {"40P01", absl::StatusCode::kUnavailable},
      {"55P03", absl::StatusCode::kUnavailable},      {"57P01", absl::StatusCode::kUnavailable},
      {"57014", absl::StatusCode::kDeadlineExceeded}, {"28P01", absl::StatusCode::kPermissionDenied},
      {"XX001", absl::StatusCode::kDataLoss},         {"42P01", absl::StatusCode::kFailedPrecondition},
  };
  for (const auto& [state, code] : cases) {
    internal::pg::PgResultPtr r(PQexec(
        conn->get(),
        absl::StrCat("DO $$ BEGIN RAISE EXCEPTION 'boom' USING ERRCODE = '", state, "'; END $$")
            .c_str()));
    absl::Status s = internal::pg::PgStatus(r.get(), conn->get(), "test");
    EXPECT_EQ(s.code(), code) << state << ": " << s;
    EXPECT_NE(s.message().find(state), std::string::npos) << s;
  }
}

TEST(PostgresStore, VersionsTableOrdersTheFullUint64RangeUnsigned) {
  const std::string schema = UniqueSchema();
  auto store = NewPostgresStore(Options(schema));
  ASSERT_TRUE(store.ok());
  const uint64_t versions[] = {0, 1, (uint64_t{1} << 63) - 1, uint64_t{1} << 63,
                               (uint64_t{1} << 63) + 1, UINT64_MAX};
  for (uint64_t v : versions) {
    const std::string key = absl::StrCat("k", v);
    const std::string id = absl::StrCat("id", v);
    auto claim = (*store)->Claim(Claim(id));
    ASSERT_TRUE(claim.ok());
    auto done = (*store)->Complete({.scope = kScope,
                                    .id = id,
                                    .token = claim->token,
                                    .version = VersionStamp{key, v}});
    ASSERT_TRUE(done.ok());
    auto applied = (*store)->AppliedVersion(kScope, key);
    ASSERT_TRUE(applied.ok());
    EXPECT_EQ(applied->value_or(12345), v);
  }
  // The server itself orders them as unsigned numbers.
  auto order = PgQuery(FixtureConninfo(),
                       absl::StrCat("SELECT string_agg(encode(version, 'hex'), ',' ORDER BY "
                                    "version) FROM ",
                                    schema, ".idem_versions"));
  ASSERT_TRUE(order.ok());
  EXPECT_EQ(*order,
            "0000000000000000,0000000000000001,7fffffffffffffff,8000000000000000,"
            "8000000000000001,ffffffffffffffff");
}

TEST(PostgresStore, SynchronousCommitOffIsWarnedAbout) {
  PostgresStoreOptions options = Options(UniqueSchema());
  options.conninfo += "?options=-c%20synchronous_commit%3Doff";
  std::vector<std::string> warnings;
  options.warning = [&](std::string_view line) { warnings.emplace_back(line); };
  ASSERT_TRUE(NewPostgresStore(options).ok());
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("synchronous_commit"), std::string::npos);
}

// pgbouncer in transaction pooling mode keeps no named prepared statements: the store's unnamed
// statements mode works through it, from several threads over a server pool of 2.
TEST(PostgresStore, WorksThroughPgbouncerTransactionPoolingWithUnnamedStatements) {
  const int port = FixturePort() + 2;
  ASSERT_TRUE(RunServerScript(absl::StrCat("pgbouncer ", port, " '", FixtureState(), "'")).ok());
  struct Stop {
    ~Stop() { (void)RunServerScript(absl::StrCat("stop-pgbouncer '", FixtureState(), "'")); }
  } stop;
  const std::string schema = UniqueSchema();
  auto store = OpenPostgresStoreFromUri(absl::StrCat(
      "postgresql://postgres@127.0.0.1:", port, "/idem_test?unnamed_statements=1&pool_size=6&schema=",
      schema));
  ASSERT_TRUE(store.ok()) << store.status();
  auto processor = Processor::Create(**store, std::string(kScope));
  ASSERT_TRUE(processor.ok());
  constexpr int kThreads = 6, kIds = 100;
  std::atomic<int> runs{0}, failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kIds; ++i) {
        const std::string id = absl::StrCat("b-", i);
        auto r = processor->Process({.id = id, .payload = "p"},
                                    [&](HandlerContext&) { runs.fetch_add(1); });
        if (!r.ok()) failures.fetch_add(1);
        // Message ids are views: the strings they name must outlive the batch.
        const std::string first = absl::StrCat("batch-", i), second = absl::StrCat("batch-", i + 1);
        std::vector<Message> batch = {{.id = first, .payload = "p"},
                                      {.id = second, .payload = "p"}};
        for (const auto& br : processor->ProcessBatch(batch, [&](HandlerContext&) { runs++; })) {
          if (!br.ok()) failures.fetch_add(1);
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  // Each distinct id ran once: kIds singles and kIds + 1 batch ids (some may still be
  // in progress elsewhere and are not counted twice).
  EXPECT_EQ(runs.load(), kIds + kIds + 1);

  // Transactional mode through pgbouncer too (one transaction per Process).
  PGconn* conn = PQconnectdb(
      absl::StrCat("postgresql://postgres@127.0.0.1:", port, "/idem_test").c_str());
  ASSERT_EQ(PQstatus(conn), CONNECTION_OK);
  {
    auto tx = PostgresTransactional::Create(
        conn, "pg/bouncer-tx", {.schema = schema, .unnamed_statements = true});
    ASSERT_TRUE(tx.ok()) << tx.status();
    for (int i = 0; i < 20; ++i) {
      for (int twice = 0; twice < 2; ++twice) {
        auto r = (*tx)->Process({.id = absl::StrCat("tx-", i), .payload = "p"},
                                [](PGconn*, HandlerContext&) {});
        ASSERT_TRUE(r.ok()) << r.status();
        EXPECT_EQ(r->outcome, twice == 0 ? Outcome::kProcessed : Outcome::kDuplicate);
      }
    }
  }
  PQfinish(conn);
}

}  // namespace
}  // namespace idem::testing

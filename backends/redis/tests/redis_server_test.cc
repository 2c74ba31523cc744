// The Redis store against redis-servers that each test starts, stops and restarts itself (never
// the fixture's): a restart in the middle of a run, authentication, timeouts, dropped
// connections, unsafe server settings, script cache loss, one round trip per batch, Unix sockets,
// a server at maxmemory, a server whose clock is far from the client's.
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "idem/redis_store.h"
#include "redis_test_server.h"
#include "testing/status_matchers.h"

namespace idem {
namespace {

using ::idem::testing::IsOkAndHolds;
using ::idem::testing::OwnServerPort;
using ::idem::testing::StatusIs;
using ::idem::testing::TestRedisServer;
using ::testing::AllOf;
using ::testing::Eq;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::Optional;

constexpr std::string_view kScope = "billing/order-events";
using std::chrono::milliseconds;

// Starts a server of this test's own on OwnServerPort(offset), in a directory of its own.
std::unique_ptr<TestRedisServer> StartServer(int offset, TestRedisServer::Options options = {}) {
  options.port = OwnServerPort(offset);
  options.dir = (std::filesystem::current_path() / absl::StrCat("redis-own-", offset)).string();
  absl::StatusOr<std::unique_ptr<TestRedisServer>> server = TestRedisServer::Start(options);
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

// Starts a server of this test's own that listens only on a Unix socket, in a directory named
// after `name`: it takes none of the nine ports (all are in use by the tests above).
std::unique_ptr<TestRedisServer> StartUnixServer(const std::string& name,
                                                 TestRedisServer::Options options = {}) {
  options.unix_socket_only = true;
  options.dir = (std::filesystem::current_path() / absl::StrCat("redis-", name)).string();
  absl::StatusOr<std::unique_ptr<TestRedisServer>> server = TestRedisServer::Start(options);
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

RedisStoreOptions OptionsFor(const TestRedisServer& server) {
  RedisStoreOptions options;
  options.port = server.port();
  options.unix_socket = server.unix_socket();
  options.key_prefix = "own";
  options.io_timeout = milliseconds(5'000);
  options.warning = [](std::string_view line) { ADD_FAILURE() << "unexpected warning: " << line; };
  return options;
}

ClaimRequest Claim(std::string_view id, milliseconds lease = milliseconds(60'000)) {
  return ClaimRequest{.scope = kScope, .id = id, .lease = lease};
}

// Retries `call` until it returns OK or `deadline` passes; returns the last result.
template <typename Call>
auto RetryUntilOk(Call call, milliseconds deadline = milliseconds(10'000)) {
  const auto end = std::chrono::steady_clock::now() + deadline;
  auto result = call();
  while (!result.ok() && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(milliseconds(20));
    result = call();
  }
  return result;
}

std::string Message(const absl::Status& status) { return std::string(status.message()); }

// ---- a redis-server restart in the middle of a run --------------------------------------------

TEST(RedisServerRestart, InFlightCallsFailAndNothingCompletedIsLostOrRunTwiceUnexplained) {
  TestRedisServer::Options server_options;
  server_options.password = "restart-Secret-1";  // AUTH must be re-sent after the restart
  auto server = StartServer(1, server_options);
  ASSERT_NE(server, nullptr);
  RedisStoreOptions options = OptionsFor(*server);
  options.password = server_options.password;
  options.db = 3;  // and SELECT: otherwise the records would land in db 0 after the restart
  options.io_timeout = milliseconds(1'000);
  options.connect_timeout = milliseconds(500);
  options.reconnect_backoff_min = milliseconds(10);
  options.reconnect_backoff_max = milliseconds(200);
  options.pool_size = 2;
  IDEM_ASSERT_OK_AND_ASSIGN(auto store, NewRedisStore(options));

  constexpr int kIds = 600;
  constexpr auto kLease = milliseconds(300);
  std::vector<std::string> ids;
  for (int i = 0; i < kIds; ++i) ids.push_back(absl::StrCat("order-", i));
  // Per id: handler runs (acquired claims), calls that failed, and whether Complete said OK.
  std::vector<std::atomic<int>> runs(kIds), failures(kIds);
  std::vector<std::atomic<bool>> completed_ok(kIds);
  std::atomic<int> settled{0};
  std::atomic<int> unexpected{0};

  std::thread worker([&] {
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(90);
    for (int i = 0; i < kIds; ++i) {
      while (std::chrono::steady_clock::now() < give_up) {
        absl::StatusOr<ClaimResult> claim = store->Claim(Claim(ids[i], kLease));
        if (!claim.ok()) {
          failures[i].fetch_add(1);
          std::this_thread::sleep_for(milliseconds(10));
          continue;
        }
        if (claim->status == ClaimStatus::kInProgress) {
          // Our own claim whose reply the crash swallowed: wait for its lease.
          std::this_thread::sleep_for(milliseconds(50));
          continue;
        }
        if (claim->status == ClaimStatus::kDuplicate) break;  // a Complete whose reply was lost
        if (claim->status != ClaimStatus::kAcquired) {
          unexpected.fetch_add(1);
          break;
        }
        runs[i].fetch_add(1);  // the handler's effect happens here
        absl::StatusOr<CompleteStatus> done =
            store->Complete(CompleteRequest{.scope = kScope, .id = ids[i], .token = claim->token});
        if (done.ok()) {
          completed_ok[i].store(true);
          break;
        }
        failures[i].fetch_add(1);
      }
      settled.fetch_add(1);
    }
  });

  // Crash the server a third of the way through the run.
  while (settled.load() < kIds / 3) std::this_thread::sleep_for(milliseconds(1));
  server->Signal(SIGKILL);
  const int settled_at_crash = settled.load();
  std::vector<bool> completed_before_crash(kIds);
  for (int i = 0; i < kIds; ++i) completed_before_crash[i] = completed_ok[i].load();
  std::this_thread::sleep_for(milliseconds(500));
  ASSERT_THAT(server->Restart(), ::idem::testing::IsOk());
  worker.join();

  EXPECT_LT(settled_at_crash, kIds) << "the run ended before the crash: make it longer";
  EXPECT_EQ(unexpected.load(), 0);
  int total_failures = 0, extra_runs = 0;
  for (int i = 0; i < kIds; ++i) {
    total_failures += failures[i].load();
    extra_runs += std::max(0, runs[i].load() - 1);
    // I3: a second run of an id is attributable only to a failed call for that id.
    EXPECT_LE(runs[i].load(), 1 + failures[i].load()) << ids[i];
  }
  std::cout << "restart run: " << kIds << " ids, crash after " << settled_at_crash
            << " settled; failed calls " << total_failures << ", extra handler runs " << extra_runs
            << " (each after a failed call for its id)\n";
  EXPECT_GT(total_failures, 0) << "the crash must surface as errors, never as silent success";
  EXPECT_LE(extra_runs, total_failures);

  // The same store object reconnected (AUTH and SELECT re-sent) and ran the scripts again: the
  // restarted server had an empty script cache, so that went through the NOSCRIPT fallback.
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult after,
                            RetryUntilOk([&] { return store->Claim(Claim("after")); }));
  EXPECT_EQ(after.status, ClaimStatus::kAcquired);
  IDEM_ASSERT_OK_AND_ASSIGN(long long cached,
                            server->InfoField("memory", "number_of_cached_scripts"));
  EXPECT_GE(cached, 1);

  // Nothing lost (AOF, appendfsync always): every completion acknowledged before the crash, and
  // every id after the run, is a duplicate, seen from a fresh store.
  IDEM_ASSERT_OK_AND_ASSIGN(auto fresh, RetryUntilOk([&] { return NewRedisStore(options); }));
  for (int i = 0; i < kIds; ++i) {
    IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult again, fresh->Claim(Claim(ids[i])));
    EXPECT_EQ(again.status, ClaimStatus::kDuplicate)
        << ids[i] << (completed_before_crash[i] ? " (acknowledged before the crash)" : "");
  }
  IDEM_ASSERT_OK_AND_ASSIGN(std::string keyspace, server->Command({"INFO", "keyspace"}));
  EXPECT_THAT(keyspace, HasSubstr("db3:keys=")) << "records must stay in the SELECTed db";
  EXPECT_THAT(keyspace, Not(HasSubstr("db0:keys=")));
}

// ---- authentication ---------------------------------------------------------------------------

TEST(RedisServerAuth, WrongPasswordIsUnauthenticatedAndNeverEchoesAPassword) {
  TestRedisServer::Options server_options;
  server_options.password = "Correct-Horse-42";
  auto server = StartServer(2, server_options);
  ASSERT_NE(server, nullptr);
  std::vector<std::string> warnings;
  RedisStoreOptions options = OptionsFor(*server);
  options.warning = [&](std::string_view line) { warnings.emplace_back(line); };

  options.password = "Wrong-Battery-17";
  absl::StatusOr<std::unique_ptr<DedupStore>> wrong = NewRedisStore(options);
  EXPECT_THAT(wrong, StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(Message(wrong.status()), AllOf(HasSubstr("AUTH"), Not(HasSubstr("Wrong-Battery-17")),
                                             Not(HasSubstr("Correct-Horse-42"))));

  const std::string base = absl::StrCat("127.0.0.1:", server->port());
  wrong = OpenRedisStoreFromUri(absl::StrCat("redis://:Wrong-Battery-17@", base));
  EXPECT_THAT(wrong, StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(Message(wrong.status()), Not(HasSubstr("Wrong-Battery-17")));

  options.password.clear();  // NOAUTH
  EXPECT_THAT(NewRedisStore(options), StatusIs(absl::StatusCode::kUnauthenticated));

  IDEM_ASSERT_OK_AND_ASSIGN(
      auto right, OpenRedisStoreFromUri(absl::StrCat("redis://:Correct-Horse-42@", base)));
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult claim, right->Claim(Claim("m-1")));
  EXPECT_EQ(claim.status, ClaimStatus::kAcquired);

  // ACL users (Redis 6+): user:password in the URI.
  IDEM_ASSERT_OK(
      server->Command({"ACL", "SETUSER", "alice", "on", ">Alice-Secret-9", "~*", "&*", "+@all"}));
  IDEM_ASSERT_OK_AND_ASSIGN(
      auto alice, OpenRedisStoreFromUri(absl::StrCat("redis://alice:Alice-Secret-9@", base)));
  wrong = OpenRedisStoreFromUri(absl::StrCat("redis://alice:Nope-Secret-8@", base));
  EXPECT_THAT(wrong, StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(Message(wrong.status()), Not(HasSubstr("Nope-Secret-8")));

  // A user who may not run scripts: PermissionDenied. One who may not read CONFIG: a warning.
  IDEM_ASSERT_OK(server->Command(
      {"ACL", "SETUSER", "noscript", "on", ">Script-Secret-6", "~*", "+@all", "-@scripting"}));
  EXPECT_THAT(OpenRedisStoreFromUri(absl::StrCat("redis://noscript:Script-Secret-6@", base)),
              StatusIs(absl::StatusCode::kPermissionDenied));
  IDEM_ASSERT_OK(server->Command(
      {"ACL", "SETUSER", "noconfig", "on", ">Config-Secret-5", "~*", "+@all", "-config"}));
  warnings.clear();
  options.user = "noconfig";
  options.password = "Config-Secret-5";
  IDEM_ASSERT_OK_AND_ASSIGN(auto noconfig, NewRedisStore(options));
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_THAT(warnings[0], AllOf(HasSubstr("could not read"), Not(HasSubstr("Config-Secret-5"))));
}

// ---- timeouts and dropped connections ---------------------------------------------------------

TEST(RedisServerFailures, IoTimeoutIsDeadlineExceededAndTheStoreRecovers) {
  auto server = StartServer(3);
  ASSERT_NE(server, nullptr);
  RedisStoreOptions options = OptionsFor(*server);
  options.io_timeout = milliseconds(200);
  options.pool_size = 1;
  IDEM_ASSERT_OK_AND_ASSIGN(auto store, NewRedisStore(options));
  IDEM_ASSERT_OK(store->Claim(Claim("before")));

  server->Signal(SIGSTOP);  // the server hangs: connected, never answering
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<ClaimResult> hung = store->Claim(Claim("during"));
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_THAT(hung, StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_LT(elapsed, milliseconds(2'000));
  // Opening a store against a hung server times out too (the TCP connect itself succeeds).
  EXPECT_THAT(NewRedisStore(options), StatusIs(absl::StatusCode::kDeadlineExceeded));
  server->Signal(SIGCONT);

  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult after,
                            RetryUntilOk([&] { return store->Claim(Claim("after")); }));
  EXPECT_EQ(after.status, ClaimStatus::kAcquired);
}

TEST(RedisServerFailures, DroppedConnectionIsUnavailableThenTheStoreReconnects) {
  auto server = StartServer(4);
  ASSERT_NE(server, nullptr);
  RedisStoreOptions options = OptionsFor(*server);
  options.pool_size = 1;
  options.client_name = "idem-dropped";
  options.reconnect_backoff_min = milliseconds(50);
  options.reconnect_backoff_max = milliseconds(400);
  IDEM_ASSERT_OK_AND_ASSIGN(auto store, NewRedisStore(options));
  IDEM_ASSERT_OK(store->Claim(Claim("before")));
  IDEM_ASSERT_OK_AND_ASSIGN(std::string clients, server->Command({"CLIENT", "LIST"}));
  EXPECT_THAT(clients, HasSubstr("name=idem-dropped"));

  IDEM_ASSERT_OK_AND_ASSIGN(std::string killed,
                            server->Command({"CLIENT", "KILL", "TYPE", "normal"}));
  EXPECT_EQ(killed, "1");
  EXPECT_THAT(store->Claim(Claim("dropped")), StatusIs(absl::StatusCode::kUnavailable));
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult again, store->Claim(Claim("reconnected")));
  EXPECT_EQ(again.status, ClaimStatus::kAcquired);

  // Server gone: the call fails, and the next ones fail fast during the reconnect backoff.
  server->Signal(SIGKILL);
  EXPECT_THAT(store->Claim(Claim("gone")), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(store->Claim(Claim("gone")), StatusIs(absl::StatusCode::kUnavailable));
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<ClaimResult> fast = store->Claim(Claim("gone"));
  EXPECT_THAT(fast, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_LT(std::chrono::steady_clock::now() - start, milliseconds(50));
  ASSERT_THAT(server->Restart(), ::idem::testing::IsOk());
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult back,
                            RetryUntilOk([&] { return store->Claim(Claim("back")); }));
  EXPECT_EQ(back.status, ClaimStatus::kAcquired);
}

// ---- server settings --------------------------------------------------------------------------

TEST(RedisServerSettings, UnsafePersistenceAndEvictionAreReportedThroughTheWarningCallback) {
  TestRedisServer::Options server_options;
  server_options.appendonly = false;
  server_options.extra_args = {"--maxmemory-policy", "allkeys-lru"};
  auto server = StartServer(5, server_options);
  ASSERT_NE(server, nullptr);
  std::vector<std::string> warnings;
  RedisStoreOptions options = OptionsFor(*server);
  options.warning = [&](std::string_view line) { warnings.emplace_back(line); };
  IDEM_ASSERT_OK_AND_ASSIGN(auto store, NewRedisStore(options));  // a warning, not an error
  ASSERT_EQ(warnings.size(), 2u);
  EXPECT_THAT(warnings[0], HasSubstr("appendonly no"));
  EXPECT_THAT(warnings[1], HasSubstr("maxmemory-policy allkeys-lru"));

  IDEM_ASSERT_OK(server->Command({"CONFIG", "SET", "appendonly", "yes"}));
  IDEM_ASSERT_OK(server->Command({"CONFIG", "SET", "appendfsync", "no"}));
  IDEM_ASSERT_OK(server->Command({"CONFIG", "SET", "maxmemory-policy", "noeviction"}));
  warnings.clear();
  IDEM_ASSERT_OK_AND_ASSIGN(store, NewRedisStore(options));
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_THAT(warnings[0], HasSubstr("appendfsync no"));

  IDEM_ASSERT_OK(server->Command({"CONFIG", "SET", "appendfsync", "everysec"}));
  warnings.clear();
  IDEM_ASSERT_OK_AND_ASSIGN(store, NewRedisStore(options));
  EXPECT_TRUE(warnings.empty());
}

TEST(RedisServerSettings, DisabledConfigCommandIsReportedAsUnchecked) {
  TestRedisServer::Options server_options;
  server_options.extra_args = {"--rename-command", "CONFIG", ""};
  auto server = StartServer(6, server_options);
  ASSERT_NE(server, nullptr);
  std::vector<std::string> warnings;
  RedisStoreOptions options = OptionsFor(*server);
  options.warning = [&](std::string_view line) { warnings.emplace_back(line); };
  IDEM_ASSERT_OK_AND_ASSIGN(auto store, NewRedisStore(options));
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_THAT(warnings[0], AllOf(HasSubstr("could not read"), HasSubstr("appendonly yes"),
                                 HasSubstr("noeviction")));
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult claim, store->Claim(Claim("m-1")));
  EXPECT_EQ(claim.status, ClaimStatus::kAcquired);
}

// ---- scripts and pipelining -------------------------------------------------------------------

// Calls per command the server ran so far, from INFO commandstats ("cmdstat_set:calls=3,...").
// Commands run by scripts count too.
std::map<std::string, long long> CommandCalls(const TestRedisServer& server) {
  std::map<std::string, long long> calls;
  absl::StatusOr<std::string> info = server.Command({"INFO", "commandstats"});
  EXPECT_TRUE(info.ok()) << info.status();
  // absl::string_view: Debian's abseil has its own, which StrSplit and SimpleAtoi take.
  for (absl::string_view line : absl::StrSplit(info.value_or(""), "\r\n")) {
    if (!absl::ConsumePrefix(&line, "cmdstat_")) continue;
    const size_t colon = line.find(":calls=");
    const size_t comma = line.find(',', colon);
    long long count = 0;
    if (colon == absl::string_view::npos || comma == absl::string_view::npos) continue;
    if (absl::SimpleAtoi(line.substr(colon + 7, comma - colon - 7), &count)) {
      calls[std::string(line.substr(0, colon))] = count;
    }
  }
  return calls;
}

// The commands run between two CommandCalls, without the INFO that read them.
std::map<std::string, long long> CallsBetween(const std::map<std::string, long long>& before,
                                              const std::map<std::string, long long>& after) {
  std::map<std::string, long long> delta;
  for (const auto& [command, count] : after) {
    const auto it = before.find(command);
    const long long ran = count - (it == before.end() ? 0 : it->second);
    if (ran > 0 && command != "info") delta[command] = ran;
  }
  return delta;
}

TEST(RedisServerScripts, ABatchIsOneRoundTripOfOnlyTheCommandsItNeeds) {
  auto server = StartServer(7);
  ASSERT_NE(server, nullptr);
  RedisStoreOptions options = OptionsFor(*server);
  options.pool_size = 1;
  IDEM_ASSERT_OK_AND_ASSIGN(auto store, NewRedisStore(options));
  IDEM_ASSERT_OK(store->Claim(Claim("warm-up")));  // the pool's connection is open

  constexpr int kBatch = 50;
  std::vector<std::string> ids;
  for (int i = 0; i < kBatch; ++i) ids.push_back(absl::StrCat("b", i));
  std::vector<ClaimRequest> claims;
  for (const std::string& id : ids) claims.push_back(Claim(id));

  // Read events and commands the server processed. Reading them costs reads of its own (the INFO
  // connection's), so an empty interval is measured first as the baseline.
  auto counters = [&] {
    absl::StatusOr<long long> reads = server->InfoField("stats", "total_reads_processed");
    absl::StatusOr<long long> commands = server->InfoField("stats", "total_commands_processed");
    EXPECT_TRUE(reads.ok() && commands.ok());
    return std::pair(reads.value_or(0), commands.value_or(0));
  };
  const auto idle_before = counters();
  const auto idle_after = counters();
  const long long baseline_reads = idle_after.first - idle_before.first;
  const long long baseline_commands = idle_after.second - idle_before.second;

  const auto calls_before_claims = CommandCalls(*server);
  const auto before = counters();
  std::vector<absl::StatusOr<ClaimResult>> claimed = store->ClaimBatch(claims);
  const auto after = counters();
  const auto calls_after_claims = CommandCalls(*server);
  for (const auto& claim : claimed) {
    IDEM_ASSERT_OK(claim);
    EXPECT_EQ(claim->status, ClaimStatus::kAcquired);
  }
  // At least one command per message was processed (a SET NX GET for a new id).
  EXPECT_GE(after.second - before.second - baseline_commands, kBatch);
  // The batch's 50 commands arrive together: one read event, where one per command would be 50.
  EXPECT_LE(after.first - before.first - baseline_reads, 2) << "one round trip per batch";
  // A new id is one SET NX GET (no script at all); one TIME for the batch reports lease ends.
  using Calls = std::map<std::string, long long>;
  EXPECT_EQ(CallsBetween(calls_before_claims, calls_after_claims),
            (Calls{{"set", kBatch}, {"time", 1}}));

  std::vector<CompleteRequest> completes;
  for (int i = 0; i < kBatch; ++i) {
    completes.push_back(CompleteRequest{.scope = kScope, .id = ids[i], .token = claimed[i]->token});
  }
  const auto calls_before_completes = CommandCalls(*server);
  const auto before_complete = counters();
  std::vector<absl::StatusOr<CompleteStatus>> done = store->CompleteBatch(completes);
  const auto after_complete = counters();
  const auto calls_after_completes = CommandCalls(*server);
  // A completion is one script that reads the record and writes it once: no TIME, no second
  // write for the fingerprint or the TTL. Its one PUBLISH tells a delivery waiting for the claim
  // (WaitForCompletion), inside the same script: no extra round trip.
  EXPECT_EQ(CallsBetween(calls_before_completes, calls_after_completes),
            (Calls{{"evalsha", kBatch}, {"get", kBatch}, {"publish", kBatch}, {"set", kBatch}}));
  for (const auto& status : done) EXPECT_THAT(status, IsOkAndHolds(Eq(CompleteStatus::kCompleted)));
  EXPECT_GE(after_complete.second - before_complete.second - baseline_commands, kBatch);
  EXPECT_LE(after_complete.first - before_complete.first - baseline_reads, 2)
      << "one round trip per batch";
}

TEST(RedisServerScripts, FlushedScriptCacheIsRefilledThroughTheNoscriptFallback) {
  auto server = StartServer(8);
  ASSERT_NE(server, nullptr);
  IDEM_ASSERT_OK_AND_ASSIGN(auto store, NewRedisStore(OptionsFor(*server)));
  IDEM_ASSERT_OK_AND_ASSIGN(long long cached,
                            server->InfoField("memory", "number_of_cached_scripts"));
  EXPECT_EQ(cached, 5) << "claim, complete, release, extend and inspect are loaded at open";

  IDEM_ASSERT_OK(server->Command({"SCRIPT", "FLUSH"}));
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult claim, store->Claim(Claim("m-1")));
  EXPECT_EQ(claim.status, ClaimStatus::kAcquired);
  IDEM_ASSERT_OK(store->Extend(kScope, "m-1", claim.token, milliseconds(10'000)));
  IDEM_ASSERT_OK(
      store->Complete(CompleteRequest{.scope = kScope, .id = "m-1", .token = claim.token}));

  IDEM_ASSERT_OK(server->Command({"SCRIPT", "FLUSH"}));
  std::vector<ClaimRequest> batch = {Claim("m-1"), Claim("m-2"), Claim("m-3")};
  std::vector<absl::StatusOr<ClaimResult>> claimed = store->ClaimBatch(batch);
  ASSERT_EQ(claimed.size(), 3u);
  EXPECT_THAT(claimed[0],
              IsOkAndHolds(::testing::Field(&ClaimResult::status, ClaimStatus::kDuplicate)));
  EXPECT_THAT(claimed[1],
              IsOkAndHolds(::testing::Field(&ClaimResult::status, ClaimStatus::kAcquired)));
  EXPECT_THAT(claimed[2],
              IsOkAndHolds(::testing::Field(&ClaimResult::status, ClaimStatus::kAcquired)));
  IDEM_ASSERT_OK(store->Release(kScope, "m-2", claimed[1]->token));
  // A new id is claimed by a plain SET NX GET; a released one needs the claim script.
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult again, store->Claim(Claim("m-2")));
  EXPECT_EQ(again.status, ClaimStatus::kAcquired);
  EXPECT_EQ(again.attempt, 2u);
  IDEM_ASSERT_OK_AND_ASSIGN(cached, server->InfoField("memory", "number_of_cached_scripts"));
  EXPECT_EQ(cached, 2) << "release and claim, re-cached by EVAL";
}

TEST(RedisServerUnix, UnixSocketUriWithDbAndPrefix) {
  TestRedisServer::Options server_options;
  const std::string socket =
      (std::filesystem::current_path() / "redis-own-9" / "redis.sock").string();
  server_options.extra_args = {"--unixsocket", socket, "--unixsocketperm", "700"};
  auto server = StartServer(9, server_options);
  ASSERT_NE(server, nullptr);
  IDEM_ASSERT_OK_AND_ASSIGN(
      auto store, OpenRedisStoreFromUri(absl::StrCat("unix://", socket, "?db=2&prefix=u")));
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult claim, store->Claim(Claim("m-1")));
  ASSERT_EQ(claim.status, ClaimStatus::kAcquired);
  IDEM_ASSERT_OK(
      store->Complete(CompleteRequest{.scope = kScope, .id = "m-1", .token = claim.token}));
  IDEM_ASSERT_OK_AND_ASSIGN(claim, store->Claim(Claim("m-1")));
  EXPECT_EQ(claim.status, ClaimStatus::kDuplicate);
  IDEM_ASSERT_OK_AND_ASSIGN(std::string keyspace, server->Command({"INFO", "keyspace"}));
  EXPECT_THAT(keyspace, HasSubstr("db2:keys=1"));
  // A db the server does not have (16 by default) is a configuration mismatch.
  EXPECT_THAT(OpenRedisStoreFromUri(absl::StrCat("unix://", socket, "?db=99")),
              StatusIs(absl::StatusCode::kFailedPrecondition));
}

// ---- a server at maxmemory ---------------------------------------------------------------------

TEST(RedisServerMaxmemory, InspectReadsRecordsWhileWritesAreRefused) {
  auto server = StartUnixServer("maxmemory");
  ASSERT_NE(server, nullptr);
  IDEM_ASSERT_OK_AND_ASSIGN(auto store, NewRedisStore(OptionsFor(*server)));
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult claim, store->Claim(Claim("m-1")));
  ASSERT_EQ(claim.status, ClaimStatus::kAcquired);
  // Used memory is now far above maxmemory: with noeviction, Redis refuses every write (and every
  // command queued in MULTI) with OOM.
  IDEM_ASSERT_OK(server->Command({"CONFIG", "SET", "maxmemory", "1"}));
  IDEM_ASSERT_OK(server->Command({"CONFIG", "SET", "maxmemory-policy", "noeviction"}));
  EXPECT_THAT(store->Claim(Claim("m-2")), StatusIs(absl::StatusCode::kResourceExhausted));

  // The operator can still look.
  IDEM_ASSERT_OK_AND_ASSIGN(std::optional<RecordInfo> info, store->Inspect(kScope, "m-1"));
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->state, RecordState::kInProgress);
  EXPECT_EQ(info->token, claim.token);
  EXPECT_EQ(info->attempts, 1u);
  EXPECT_NEAR(static_cast<double>(info->lease_until_ms), static_cast<double>(claim.lease_until_ms),
              2'000.0);
  IDEM_ASSERT_OK_AND_ASSIGN(std::optional<RecordInfo> none, store->Inspect(kScope, "m-2"));
  EXPECT_FALSE(none.has_value());
  IDEM_EXPECT_OK(store->AppliedVersion(kScope, "k"));
}

// ---- a server whose clock is far from the client's ----------------------------------------------

// A preload library that moves the wall clock of the process it is loaded into by
// IDEM_CLOCK_OFFSET_S seconds (gettimeofday, clock_gettime on the realtime clocks, time), so that
// a redis-server on loopback runs on another clock than the test. Compiled by the test itself
// (cc), because redis-server is not ours to rebuild and no faketime package is required.
constexpr char kClockShim[] = R"c(
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

static long long offset_s(void) {
  const char* text = getenv("IDEM_CLOCK_OFFSET_S");
  return text == 0 ? 0 : atoll(text);
}

int gettimeofday(struct timeval* tv, void* tz) {
  int (*real)(struct timeval*, void*) =
      (int (*)(struct timeval*, void*))dlsym(RTLD_NEXT, "gettimeofday");
  int rc = real(tv, tz);
  if (rc == 0 && tv != 0) tv->tv_sec += offset_s();
  return rc;
}

int clock_gettime(clockid_t id, struct timespec* ts) {
  int (*real)(clockid_t, struct timespec*) =
      (int (*)(clockid_t, struct timespec*))dlsym(RTLD_NEXT, "clock_gettime");
  int rc = real(id, ts);
  if (rc == 0 && ts != 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) {
    ts->tv_sec += offset_s();
  }
  return rc;
}

time_t time(time_t* out) {
  struct timeval tv;
  gettimeofday(&tv, 0);
  if (out != 0) *out = tv.tv_sec;
  return tv.tv_sec;
}
)c";

int64_t ClientNowMillis() {
  return std::chrono::duration_cast<milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

TEST(RedisServerClock, LeaseEndsFollowTheServersClockNotTheClients) {
  const std::filesystem::path dir = std::filesystem::current_path() / "redis-clock-shim";
  std::filesystem::create_directories(dir);
  const std::string source = (dir / "clock_shim.c").string();
  const std::string library = (dir / "clock_shim.so").string();
  {
    std::ofstream out(source);
    out << kClockShim;
  }
  const std::string compile =
      absl::StrCat("cc -shared -fPIC -O1 -o '", library, "' '", source, "' -ldl");
  ASSERT_EQ(std::system(compile.c_str()), 0) << compile;

  // Ten days ahead of the client.
  constexpr int64_t kOffsetMs = int64_t{10} * 24 * 3600 * 1000;
  TestRedisServer::Options options;
  options.environment = {absl::StrCat("LD_PRELOAD=", library),
                         absl::StrCat("IDEM_CLOCK_OFFSET_S=", kOffsetMs / 1000)};
  auto server = StartUnixServer("clock", options);
  ASSERT_NE(server, nullptr);
  // The server really runs on the moved clock; otherwise this test could not tell the clocks apart.
  IDEM_ASSERT_OK_AND_ASSIGN(std::string time, server->Command({"TIME"}));
  int64_t seconds = 0;
  ASSERT_TRUE(absl::SimpleAtoi(time.substr(0, time.find('\n')), &seconds)) << time;
  ASSERT_NEAR(static_cast<double>(seconds * 1000 - ClientNowMillis()),
              static_cast<double>(kOffsetMs), 60'000.0);

  IDEM_ASSERT_OK_AND_ASSIGN(auto store, NewRedisStore(OptionsFor(*server)));
  const milliseconds lease(60'000);
  const int64_t server_now = ClientNowMillis() + kOffsetMs;
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult claim, store->Claim(Claim("m-1", lease)));
  ASSERT_EQ(claim.status, ClaimStatus::kAcquired);
  // Reported in the server's clock: ten days away from what the client's clock would give.
  EXPECT_NEAR(static_cast<double>(claim.lease_until_ms),
              static_cast<double>(server_now + lease.count()), 5'000.0);
  IDEM_ASSERT_OK_AND_ASSIGN(int64_t extended, store->Extend(kScope, "m-1", claim.token, lease * 2));
  EXPECT_NEAR(static_cast<double>(extended), static_cast<double>(server_now + 2 * lease.count()),
              5'000.0);
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult held, store->Claim(Claim("m-1", lease)));
  EXPECT_EQ(held.status, ClaimStatus::kInProgress);
  EXPECT_NEAR(static_cast<double>(held.lease_until_ms), static_cast<double>(extended), 2'000.0);
  IDEM_ASSERT_OK_AND_ASSIGN(std::optional<RecordInfo> info, store->Inspect(kScope, "m-1"));
  ASSERT_TRUE(info.has_value());
  EXPECT_NEAR(static_cast<double>(info->lease_until_ms), static_cast<double>(extended), 2'000.0);

  // And the lease ends when the server's clock says so: a short one, taken over after it.
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult short_claim, store->Claim(Claim("m-2", milliseconds(200))));
  ASSERT_EQ(short_claim.status, ClaimStatus::kAcquired);
  std::this_thread::sleep_for(milliseconds(400));
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult takeover, store->Claim(Claim("m-2")));
  EXPECT_EQ(takeover.status, ClaimStatus::kAcquired);
  EXPECT_TRUE(takeover.took_over);
}

}  // namespace
}  // namespace idem

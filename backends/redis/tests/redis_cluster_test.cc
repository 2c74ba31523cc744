// Cluster mode on the fixture's cluster: slots against the server's CLUSTER KEYSLOT, the key
// layout (a record and its version-gate entry in one slot, on one master), batches of mixed
// scopes, ids and keys spread over every master, the route pointers of versioned messages
// (Release, Extend, Inspect, ResetAttempts, WaitForCompletion and List find every record), the
// callers' rule (one version key per message id), and opening errors.
#include <unistd.h>

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "idem/open_store.h"
#include "idem/redis_store.h"
#include "redis_cluster.h"
#include "redis_cluster_testing.h"
#include "redis_keys.h"
#include "redis_test_server.h"

namespace idem::testing {
namespace {

using internal::redis::AppendClusterTag;
using internal::redis::AppendRecordKey;
using internal::redis::AppendVersionKey;
using internal::redis::KeySlot;

std::string Prefix(const std::string& name) {
  return absl::StrCat("cluster-test/", name, "/", getpid());
}

std::unique_ptr<DedupStore> OpenCluster(const std::string& prefix, const std::string& extra = "") {
  absl::StatusOr<std::unique_ptr<DedupStore>> store =
      OpenStore(ClusterUri(prefix, extra), OpenOptions{.warning = [](std::string_view line) {
                  ADD_FAILURE() << "unexpected warning: " << line;
                }});
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? *std::move(store) : nullptr;
}

// The port of the master that holds `key` now, asked of the cluster (CLUSTER SLOTS via redis-cli's
// reply to CLUSTER KEYSLOT and CLUSTER NODES would do too; GET answers MOVED from other masters).
int MasterOf(std::string_view key) {
  for (int node = 0; node < 6; ++node) {
    absl::StatusOr<std::string> role = RedisCommand(ClusterPort(node), {"ROLE"});
    if (!role.ok() || role->substr(0, 6) != "master") continue;
    absl::StatusOr<std::string> reply = RedisCommand(ClusterPort(node), {"EXISTS", std::string(key)});
    if (reply.ok()) return ClusterPort(node);  // not MOVED: this master serves the slot
  }
  return 0;
}

TEST(RedisCluster, KeySlotMatchesTheServer) {
  std::vector<std::string> keys = {"foo", "bar", "{user1000}.following", "foo{}{bar}",
                                   "foo{{bar}}zap", "a{b}c{d}", "", "{", "}", "{}",
                                   std::string("bin\0\xff{x}", 8)};
  for (int i = 0; i < 300; ++i) {
    std::string key;
    AppendClusterTag(&key, "idem", "scope", absl::StrCat("route-", i));
    AppendRecordKey(&key, "idem", "scope", absl::StrCat("id{", i, "}"));
    keys.push_back(key);
    keys.push_back(absl::StrCat("plain-", i * 7919));
  }
  for (const std::string& key : keys) {
    absl::StatusOr<std::string> slot = RedisCommand(ClusterPort(0), {"CLUSTER", "KEYSLOT", key});
    ASSERT_TRUE(slot.ok()) << slot.status();
    EXPECT_EQ(*slot, std::to_string(KeySlot(key))) << key;
  }
}

TEST(RedisCluster, RecordAndVersionEntryShareOneMaster) {
  const std::string prefix = Prefix("colocate");
  std::unique_ptr<DedupStore> store = OpenCluster(prefix);
  ASSERT_NE(store, nullptr);
  for (int i = 0; i < 20; ++i) {
    const std::string id = absl::StrCat("m-", i);
    const std::string key = absl::StrCat("order-", i);
    absl::StatusOr<ClaimResult> claim = store->Claim(ClaimRequest{
        .scope = "s", .id = id, .version = VersionStamp{.key = key, .version = 3}});
    ASSERT_TRUE(claim.ok()) << claim.status();
    ASSERT_EQ(claim->status, ClaimStatus::kAcquired);
    absl::StatusOr<CompleteStatus> done = store->Complete(CompleteRequest{
        .scope = "s", .id = id, .token = claim->token,
        .version = VersionStamp{.key = key, .version = 3}});
    ASSERT_TRUE(done.ok()) << done.status();
    std::string record;
    AppendClusterTag(&record, prefix, "s", key);
    AppendRecordKey(&record, prefix, "s", id);
    std::string version;
    AppendClusterTag(&version, prefix, "s", key);
    AppendVersionKey(&version, prefix, "s", key);
    EXPECT_EQ(KeySlot(record), KeySlot(version));
    const int master = MasterOf(record);
    ASSERT_NE(master, 0);
    EXPECT_EQ(RedisCommand(master, {"EXISTS", record}).value_or(""), "1");
    EXPECT_EQ(RedisCommand(master, {"GET", version}).value_or(""), "00000000000000000003");
  }
}

TEST(RedisCluster, MixedBatchesKeepTheCallersOrderOverEveryMaster) {
  std::unique_ptr<DedupStore> store = OpenCluster(Prefix("batch"));
  ASSERT_NE(store, nullptr);
  // 300 requests: two scopes, versioned and not, some keys shared, one id twice, one invalid.
  std::vector<std::string> ids;
  std::vector<std::string> keys;
  for (int i = 0; i < 300; ++i) {
    ids.push_back(absl::StrCat("id-", i % 299));  // id-0 twice (the last entry)
    keys.push_back(absl::StrCat("key-", i % 50));
  }
  std::vector<ClaimRequest> claims;
  for (int i = 0; i < 300; ++i) {
    ClaimRequest request{.scope = i % 2 ? "scope-a" : "scope-b", .id = ids[i]};
    if (i % 3 == 0) request.version = VersionStamp{.key = keys[i], .version = uint64_t(100 + i)};
    claims.push_back(request);
  }
  claims[298].id = "";  // invalid: refused alone
  claims[299].scope = claims[0].scope;  // the same (scope, id) as entry 0
  claims[299].version = claims[0].version;
  std::vector<absl::StatusOr<ClaimResult>> results = store->ClaimBatch(claims);
  ASSERT_EQ(results.size(), claims.size());
  for (int i = 0; i < 298; ++i) {
    ASSERT_TRUE(results[i].ok()) << i << ": " << results[i].status();
    EXPECT_EQ(results[i]->status, ClaimStatus::kAcquired) << i;
  }
  EXPECT_EQ(results[298].status().code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(results[299].ok()) << results[299].status();
  EXPECT_EQ(results[299]->status, ClaimStatus::kInProgress);

  std::vector<CompleteRequest> completes;
  for (int i = 0; i < 298; ++i) {
    completes.push_back(CompleteRequest{.scope = claims[i].scope, .id = claims[i].id,
                                        .token = results[i]->token,
                                        .result = claims[i].id,
                                        .version = claims[i].version});
  }
  completes.push_back(CompleteRequest{.scope = claims[0].scope, .id = claims[0].id, .token = 12345});
  std::vector<absl::StatusOr<CompleteStatus>> done = store->CompleteBatch(completes);
  ASSERT_EQ(done.size(), completes.size());
  // Versions of one key applied in one batch: each raises the key when newer.
  std::map<std::pair<std::string, std::string>, uint64_t> applied;
  for (int i = 0; i < 298; ++i) {
    ASSERT_TRUE(done[i].ok()) << i << ": " << done[i].status();
    if (claims[i].version) {
      const auto k = std::make_pair(std::string(claims[i].scope), std::string(claims[i].version->key));
      EXPECT_EQ(*done[i], CompleteStatus::kCompleted) << i;
      applied[k] = std::max(applied[k], claims[i].version->version);
    }
  }
  EXPECT_EQ(done[298].status().code(), absl::StatusCode::kAborted);
  for (const auto& [k, version] : applied) {
    EXPECT_EQ(store->AppliedVersion(k.first, k.second).value_or(std::nullopt), version);
  }
  // Duplicates answer with their own results, in order.
  std::vector<absl::StatusOr<ClaimResult>> again = store->ClaimBatch(std::span(claims).first(298));
  for (int i = 0; i < 298; ++i) {
    ASSERT_TRUE(again[i].ok()) << again[i].status();
    EXPECT_EQ(again[i]->status, ClaimStatus::kDuplicate) << i;
    EXPECT_EQ(again[i]->result.value_or(""), claims[i].id) << i;
  }
  // Every master holds some of them.
  std::set<int> masters;
  for (int node = 0; node < 6; ++node) {
    absl::StatusOr<std::string> role = RedisCommand(ClusterPort(node), {"ROLE"});
    if (role.ok() && role->substr(0, 6) == "master") {
      absl::StatusOr<std::string> size = RedisCommand(ClusterPort(node), {"DBSIZE"});
      ASSERT_TRUE(size.ok());
      if (std::stoll(*size) > 0) masters.insert(node);
    }
  }
  EXPECT_EQ(masters.size(), 3u);
}

TEST(RedisCluster, CallsWithoutTheVersionKeyFindVersionedRecords) {
  const std::string prefix = Prefix("pointer");
  std::unique_ptr<DedupStore> store = OpenCluster(prefix);
  ASSERT_NE(store, nullptr);
  const VersionStamp version{.key = "account-9", .version = 5};
  absl::StatusOr<ClaimResult> claim =
      store->Claim(ClaimRequest{.scope = "s", .id = "evt-1", .lease = std::chrono::seconds(30),
                                .version = version});
  ASSERT_TRUE(claim.ok()) << claim.status();
  ASSERT_EQ(claim->status, ClaimStatus::kAcquired);
  // Inspect, Extend, Release: by (scope, id) only.
  absl::StatusOr<std::optional<RecordInfo>> info = store->Inspect("s", "evt-1");
  ASSERT_TRUE(info.ok()) << info.status();
  ASSERT_TRUE(info->has_value());
  EXPECT_EQ((*info)->state, RecordState::kInProgress);
  EXPECT_EQ((*info)->token, claim->token);
  EXPECT_TRUE(store->Extend("s", "evt-1", claim->token, std::chrono::seconds(60)).ok());
  EXPECT_EQ(store->Release("s", "evt-1", claim->token + 1).code(), absl::StatusCode::kAborted);
  EXPECT_TRUE(store->Release("s", "evt-1", claim->token).ok());
  // A released record's attempts reset (idem-admin reset), after a claim that is not live.
  info = store->Inspect("s", "evt-1");
  ASSERT_TRUE(info.ok() && info->has_value());
  EXPECT_EQ((*info)->state, RecordState::kReleased);
  EXPECT_TRUE(store->ResetAttempts("s", "evt-1", (*info)->token).ok());
  // Wait: not a live claim, so at once.
  absl::StatusOr<bool> ended = store->WaitForCompletion(
      "s", "evt-1", std::chrono::steady_clock::now() + std::chrono::seconds(1));
  ASSERT_TRUE(ended.ok()) << ended.status();
  EXPECT_TRUE(*ended);

  // A live claim completed by another thread wakes the waiter.
  claim = store->Claim(ClaimRequest{.scope = "s", .id = "evt-1", .version = version});
  ASSERT_TRUE(claim.ok() && claim->status == ClaimStatus::kAcquired);
  std::thread completer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    EXPECT_TRUE(store->Complete(CompleteRequest{.scope = "s", .id = "evt-1",
                                                .token = claim->token, .version = version})
                    .ok());
  });
  const auto start = std::chrono::steady_clock::now();
  ended = store->WaitForCompletion("s", "evt-1", start + std::chrono::seconds(10));
  completer.join();
  ASSERT_TRUE(ended.ok()) << ended.status();
  EXPECT_TRUE(*ended);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));

  // List (idem-admin list) sees it on whichever master holds it, and in the right state.
  absl::StatusOr<ListPage> page = store->List(ListRequest{.scope = "s"});
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_EQ(page->records.size(), 1u);
  EXPECT_EQ(page->records[0].id, "evt-1");
  EXPECT_EQ(page->records[0].info.state, RecordState::kCompleted);
  info = store->Inspect("s", "evt-1");
  ASSERT_TRUE(info.ok() && info->has_value());
  EXPECT_EQ((*info)->state, RecordState::kCompleted);
  // An absent id: nothing anywhere.
  info = store->Inspect("s", "never");
  ASSERT_TRUE(info.ok());
  EXPECT_FALSE(info->has_value());
  EXPECT_EQ(store->ResetAttempts("s", "never", 1).code(), absl::StatusCode::kNotFound);
}

TEST(RedisCluster, AnIdKeepsTheRouteOfItsFirstDelivery) {
  std::unique_ptr<DedupStore> store = OpenCluster(Prefix("rule"));
  ASSERT_NE(store, nullptr);
  const Fingerprint a{.high = 1, .low = 2};
  const Fingerprint b{.high = 3, .low = 4};
  absl::StatusOr<ClaimResult> first = store->Claim(ClaimRequest{
      .scope = "s", .id = "e", .fingerprint = a, .version = VersionStamp{.key = "k1", .version = 1}});
  ASSERT_TRUE(first.ok() && first->status == ClaimStatus::kAcquired);
  // The id again with another version key is claimed at its first record: in progress there, and
  // with another payload a conflict, as on a single server.
  absl::StatusOr<ClaimResult> other = store->Claim(ClaimRequest{
      .scope = "s", .id = "e", .fingerprint = a, .version = VersionStamp{.key = "k2", .version = 1}});
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_EQ(other->status, ClaimStatus::kInProgress);
  absl::StatusOr<ClaimResult> conflict = store->Claim(ClaimRequest{
      .scope = "s", .id = "e", .fingerprint = b, .version = VersionStamp{.key = "k2", .version = 1}});
  ASSERT_TRUE(conflict.ok()) << conflict.status();
  EXPECT_EQ(conflict->status, ClaimStatus::kConflict);
  // Without a version key: found through the id's pointer.
  absl::StatusOr<ClaimResult> bare = store->Claim(ClaimRequest{.scope = "s", .id = "e"});
  ASSERT_TRUE(bare.ok()) << bare.status();
  EXPECT_EQ(bare->status, ClaimStatus::kInProgress);
  // Released, the same payload with another version key would be acquired where its version gate
  // cannot apply: refused, and the claim is released again.
  ASSERT_TRUE(store->Release("s", "e", first->token).ok());
  absl::StatusOr<ClaimResult> refused = store->Claim(ClaimRequest{
      .scope = "s", .id = "e", .fingerprint = a, .version = VersionStamp{.key = "k2", .version = 1}});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
  absl::StatusOr<std::optional<RecordInfo>> info = store->Inspect("s", "e");
  ASSERT_TRUE(info.ok() && info->has_value());
  EXPECT_EQ((*info)->state, RecordState::kReleased);
  // Its own version key claims it, and completes it with the gate.
  absl::StatusOr<ClaimResult> again = store->Claim(ClaimRequest{
      .scope = "s", .id = "e", .fingerprint = a, .version = VersionStamp{.key = "k1", .version = 1}});
  ASSERT_TRUE(again.ok() && again->status == ClaimStatus::kAcquired);
  ASSERT_TRUE(store->Complete(CompleteRequest{.scope = "s", .id = "e", .token = again->token,
                                              .version = VersionStamp{.key = "k1", .version = 1}})
                  .ok());
  EXPECT_EQ(store->AppliedVersion("s", "k1").value_or(std::nullopt), 1u);
  // Completed: every later delivery, whatever its version key, is a duplicate.
  absl::StatusOr<ClaimResult> duplicate = store->Claim(ClaimRequest{
      .scope = "s", .id = "e", .fingerprint = a, .version = VersionStamp{.key = "k3", .version = 9}});
  ASSERT_TRUE(duplicate.ok()) << duplicate.status();
  EXPECT_EQ(duplicate->status, ClaimStatus::kDuplicate);
  // An id first delivered without a version key, then with one: its record routed by the id.
  absl::StatusOr<ClaimResult> plain = store->Claim(ClaimRequest{.scope = "s", .id = "f"});
  ASSERT_TRUE(plain.ok() && plain->status == ClaimStatus::kAcquired);
  absl::StatusOr<ClaimResult> keyed = store->Claim(ClaimRequest{
      .scope = "s", .id = "f", .version = VersionStamp{.key = "k1", .version = 2}});
  ASSERT_TRUE(keyed.ok()) << keyed.status();
  EXPECT_EQ(keyed->status, ClaimStatus::kInProgress);
}

TEST(RedisCluster, IdemAdminFindsRecords) {
  const std::string prefix = Prefix("admin");
  std::unique_ptr<DedupStore> store = OpenCluster(prefix);
  ASSERT_NE(store, nullptr);
  std::set<std::string> expected;
  for (int i = 0; i < 60; ++i) {
    const std::string id = absl::StrCat("a-", i);
    std::optional<VersionStamp> version;
    const std::string key = absl::StrCat("k", i % 7);
    if (i % 2) version = VersionStamp{.key = key, .version = uint64_t(i)};
    absl::StatusOr<ClaimResult> claim =
        store->Claim(ClaimRequest{.scope = "adm", .id = id, .version = version});
    ASSERT_TRUE(claim.ok() && claim->status == ClaimStatus::kAcquired) << i;
    expected.insert(id);
  }
  // Pages of 7 over three masters: every record once.
  std::set<std::string> seen;
  std::string cursor;
  int pages = 0;
  do {
    absl::StatusOr<ListPage> page =
        store->List(ListRequest{.scope = "adm", .limit = 7, .cursor = cursor});
    ASSERT_TRUE(page.ok()) << page.status();
    for (const ListedRecord& r : page->records) EXPECT_TRUE(seen.insert(r.id).second) << r.id;
    cursor = page->next_cursor;
    ASSERT_LT(++pages, 100);
  } while (!cursor.empty());
  EXPECT_EQ(seen, expected);
  EXPECT_EQ(store->List(ListRequest{.scope = "adm", .cursor = "9/0:"}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// AUTH is sent on every connection to every node: an ACL user that exists on every node (ACLs
// are per node in a cluster) works on calls spread over all masters; a wrong password is refused
// at open, and the password shows in no status.
TEST(RedisCluster, AuthenticatesOnEveryNode) {
  const std::string user = absl::StrCat("idem-auth-", getpid());
  const std::string password = "s3cret/with@odd:chars";
  for (int node = 0; node < 6; ++node) {
    ASSERT_TRUE(RedisCommand(ClusterPort(node), {"ACL", "SETUSER", user, "reset", "on",
                                                 ">" + password, "~*", "&*", "+@all"})
                    .ok())
        << node;
  }
  const std::string userinfo = absl::StrCat(user, ":s3cret%2Fwith%40odd%3Achars@");
  const std::string uri = absl::StrCat("redis+cluster://", userinfo, "127.0.0.1:", ClusterPort(0),
                                       ",127.0.0.1:", ClusterPort(1), "/?prefix=", Prefix("auth"));
  {
    absl::StatusOr<std::unique_ptr<DedupStore>> store = OpenStore(uri);
    ASSERT_TRUE(store.ok()) << store.status();
    std::vector<ClaimRequest> claims;
    std::vector<std::string> ids;
    for (int i = 0; i < 60; ++i) ids.push_back(absl::StrCat("auth-", i));
    for (int i = 0; i < 60; ++i) {
      ClaimRequest request{.scope = "s", .id = ids[i]};
      if (i % 2 == 0) request.version = VersionStamp{.key = ids[i], .version = 1};
      claims.push_back(request);
    }
    std::set<int> thirds;
    std::vector<absl::StatusOr<ClaimResult>> claimed = (*store)->ClaimBatch(claims);
    for (int i = 0; i < 60; ++i) {
      ASSERT_TRUE(claimed[i].ok()) << i << ": " << claimed[i].status();
      ASSERT_EQ(claimed[i]->status, ClaimStatus::kAcquired) << i;
      absl::StatusOr<CompleteStatus> done = (*store)->Complete(CompleteRequest{
          .scope = "s", .id = ids[i], .token = claimed[i]->token, .version = claims[i].version});
      ASSERT_TRUE(done.ok()) << i << ": " << done.status();
      std::string key;
      AppendClusterTag(&key, Prefix("auth"), "s", ids[i]);
      thirds.insert(KeySlot(key) * 3 / internal::redis::kClusterSlots);
    }
    EXPECT_EQ(thirds.size(), 3u) << "the ids span every third of the slots";
    // The default user needs no password on the fixture, so success alone would not show AUTH:
    // every master the calls went to holds a connection logged in as the ACL user.
    int masters = 0;
    for (int node = 0; node < 6; ++node) {
      absl::StatusOr<std::string> role = RedisCommand(ClusterPort(node), {"ROLE"});
      if (!role.ok() || role->substr(0, 6) != "master") continue;
      ++masters;
      absl::StatusOr<std::string> clients = RedisCommand(ClusterPort(node), {"CLIENT", "LIST"});
      ASSERT_TRUE(clients.ok()) << clients.status();
      EXPECT_NE(clients->find(absl::StrCat("user=", user)), std::string::npos)
          << "master on port " << ClusterPort(node) << " has no connection of " << user;
    }
    EXPECT_EQ(masters, 3);
  }
  absl::StatusOr<std::unique_ptr<DedupStore>> refused = OpenStore(absl::StrCat(
      "redis+cluster://", user, ":wrong-s3cret@127.0.0.1:", ClusterPort(0), "/?prefix=x"));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnauthenticated) << refused.status();
  EXPECT_EQ(refused.status().message().find("wrong-s3cret"), std::string_view::npos);
  for (int node = 0; node < 6; ++node) (void)RedisCommand(ClusterPort(node), {"ACL", "DELUSER", user});
}

TEST(RedisCluster, OpenErrors) {
  // A seed that is not in cluster mode, or nothing listening: the store is not opened.
  absl::StatusOr<std::unique_ptr<DedupStore>> none =
      OpenStore("redis+cluster://127.0.0.1:1/?connect_timeout_ms=500");
  EXPECT_EQ(none.status().code(), absl::StatusCode::kUnavailable) << none.status();
  // One dead seed and one live: the live one gives the map.
  absl::StatusOr<std::unique_ptr<DedupStore>> one = OpenStore(
      absl::StrCat("redis+cluster://127.0.0.1:1,127.0.0.1:", ClusterPort(2), "/?prefix=x"),
      OpenOptions{.warning = [](std::string_view) {}});
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_TRUE(RedisClusterStats(**one).has_value());
  EXPECT_GE(RedisClusterStats(**one)->refreshes, 1u);
}

}  // namespace
}  // namespace idem::testing

// Cluster mode without a server: CRC16 and hash slots against the Redis Cluster specification's
// values, the hash-tag rules, the reply parsers (CLUSTER SLOTS, MOVED / ASK) and the seed-list
// URIs, with their errors.
#include <hiredis/hiredis.h>

#include <string>
#include <string_view>

#include "gtest/gtest.h"
#include "idem/open_store.h"
#include "idem/redis_store.h"
#include "redis_cluster.h"
#include "redis_keys.h"

namespace idem::internal::redis {
namespace {

TEST(Crc16, MatchesTheSpecification) {
  // The Redis Cluster specification's test vector: CRC16/XMODEM("123456789") = 0x31C3.
  EXPECT_EQ(Crc16("123456789"), 0x31C3);
  EXPECT_EQ(Crc16(""), 0);
}

TEST(KeySlot, KnownSlots) {
  // Values from CLUSTER KEYSLOT (idem_redis_cluster_test checks many more against the server).
  EXPECT_EQ(KeySlot("foo"), 12182);
  EXPECT_EQ(KeySlot("bar"), 5061);
  EXPECT_EQ(KeySlot("123456789"), 0x31C3 % 16384);
}

TEST(KeySlot, HashTagRules) {
  // The first '{', the first '}' after it, a non-empty tag between: only the tag is hashed.
  EXPECT_EQ(KeySlot("{user1000}.following"), KeySlot("user1000"));
  EXPECT_EQ(KeySlot("{user1000}.followers"), KeySlot("user1000"));
  EXPECT_EQ(KeySlot("foo{bar}{zap}"), KeySlot("bar"));
  EXPECT_EQ(KeySlot("foo{{bar}}zap"), KeySlot("{bar"));
  // An empty tag, or none closed: the whole key.
  EXPECT_EQ(KeySlot("foo{}{bar}"), Crc16("foo{}{bar}") % 16384);
  EXPECT_EQ(KeySlot("foo{bar"), Crc16("foo{bar") % 16384);
  EXPECT_EQ(KeySlot("}foo{"), Crc16("}foo{") % 16384);
  EXPECT_EQ(KeySlot(std::string_view("a\0{b}", 5)), KeySlot("b"));
}

TEST(ClusterTag, SharesTheSlotOfOneRouteWhateverTheId) {
  std::string record;
  AppendClusterTag(&record, "idem", "scope", "order-7");
  ASSERT_EQ(record.size(), kClusterTagSize);
  AppendRecordKey(&record, "idem", "scope", "id-1{}}{");
  std::string version;
  AppendClusterTag(&version, "idem", "scope", "order-7");
  AppendVersionKey(&version, "idem", "scope", "order-7");
  EXPECT_EQ(KeySlot(record), KeySlot(version));
  // Ids and keys with braces cannot move the tag: it comes first and holds only hex digits.
  EXPECT_EQ(record.find_first_of("{}", 1), kClusterTagSize - 1);
  std::string other;
  AppendClusterTag(&other, "idem", "scope", "order-8");
  EXPECT_NE(other, record.substr(0, kClusterTagSize));
  // Length-prefixed parts: ("a", "bc") and ("ab", "c") differ.
  std::string a;
  std::string b;
  AppendClusterTag(&a, "p", "a", "bc");
  AppendClusterTag(&b, "p", "ab", "c");
  EXPECT_NE(a, b);
}

TEST(ClusterTag, SpreadsOverSlots) {
  int low = 0;
  for (int i = 0; i < 3000; ++i) {
    std::string tag;
    AppendClusterTag(&tag, "idem", "s", std::to_string(i));
    if (KeySlot(tag) < 16384 / 3) ++low;
  }
  EXPECT_GT(low, 850);
  EXPECT_LT(low, 1150);
}

TEST(ParseRedirect, MovedAndAsk) {
  std::optional<Redirect> moved = ParseRedirect("MOVED 3999 127.0.0.1:6381", "h");
  ASSERT_TRUE(moved.has_value());
  EXPECT_FALSE(moved->ask);
  EXPECT_EQ(moved->slot, 3999);
  EXPECT_EQ(moved->target.host, "127.0.0.1");
  EXPECT_EQ(moved->target.port, 6381);
  std::optional<Redirect> ask = ParseRedirect("ASK 0 ::1:7000", "h");
  ASSERT_TRUE(ask.has_value());
  EXPECT_TRUE(ask->ask);
  EXPECT_EQ(ask->target.host, "::1");
  EXPECT_EQ(ask->target.Endpoint(), "[::1]:7000");
  // An unknown endpoint: the node asked.
  std::optional<Redirect> empty = ParseRedirect("MOVED 16383 :7002", "10.0.0.1");
  ASSERT_TRUE(empty.has_value());
  EXPECT_EQ(empty->target.host, "10.0.0.1");
  for (std::string_view bad :
       {"MOVED", "MOVED 1", "MOVED 16384 h:1", "MOVED -1 h:1", "MOVED x h:1", "MOVED 1 h",
        "MOVED 1 h:0", "MOVED 1 h:65536", "MOVED 1 h:", "ASK 1 h:1x", "ERR MOVED 1 h:1",
        "MOVED 1 h h:1", "MOVED 123456 h:1"}) {
    EXPECT_FALSE(ParseRedirect(bad, "h").has_value()) << bad;
  }
}

// A reply from RESP bytes, as hiredis reads it from a socket.
ReplyPtr ReadReply(std::string_view resp) {
  redisReader* reader = redisReaderCreate();
  redisReaderFeed(reader, resp.data(), resp.size());
  void* reply = nullptr;
  const int rc = redisReaderGetReply(reader, &reply);
  redisReaderFree(reader);
  EXPECT_EQ(rc, REDIS_OK);
  return ReplyPtr(static_cast<redisReply*>(reply));
}

TEST(ParseClusterSlots, ReadsMastersAndIgnoresReplicas) {
  const ReplyPtr reply = ReadReply(
      "*2\r\n"
      "*4\r\n:0\r\n:5460\r\n*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$2\r\nid\r\n"
      "*3\r\n$9\r\n127.0.0.1\r\n:7003\r\n$2\r\nir\r\n"
      "*3\r\n:5461\r\n:16383\r\n*2\r\n$0\r\n\r\n:7001\r\n");
  absl::StatusOr<std::vector<SlotRange>> ranges = ParseClusterSlots(reply.get(), "10.1.1.1");
  ASSERT_TRUE(ranges.ok()) << ranges.status();
  ASSERT_EQ(ranges->size(), 2u);
  EXPECT_EQ((*ranges)[0].first, 0);
  EXPECT_EQ((*ranges)[0].last, 5460);
  EXPECT_EQ((*ranges)[0].master.Endpoint(), "127.0.0.1:7000");
  EXPECT_EQ((*ranges)[1].master.Endpoint(), "10.1.1.1:7001");  // empty host: the node asked
}

TEST(ParseClusterSlots, RefusesOtherShapes) {
  for (std::string_view bad : {
           "$3\r\nfoo\r\n",
           "*1\r\n:1\r\n",
           "*1\r\n*2\r\n:0\r\n:1\r\n",
           "*1\r\n*3\r\n:5\r\n:4\r\n*2\r\n$1\r\nh\r\n:1\r\n",       // last < first
           "*1\r\n*3\r\n:0\r\n:16384\r\n*2\r\n$1\r\nh\r\n:1\r\n",   // slot out of range
           "*1\r\n*3\r\n:0\r\n:1\r\n*2\r\n$1\r\nh\r\n:0\r\n",       // port 0
           "*1\r\n*3\r\n:0\r\n:1\r\n*2\r\n:1\r\n:1\r\n",            // host not a string
           "*1\r\n*3\r\n:0\r\n:1\r\n*1\r\n$1\r\nh\r\n",             // no port
           "*1\r\n*3\r\n:0\r\n:1\r\n*2\r\n$3\r\na b\r\n:1\r\n",     // a space in the host
       }) {
    const ReplyPtr reply = ReadReply(bad);
    EXPECT_EQ(ParseClusterSlots(reply.get(), "h").status().code(), absl::StatusCode::kInternal)
        << bad;
  }
  EXPECT_FALSE(ParseClusterSlots(nullptr, "h").ok());
}

TEST(ClusterUri, ParsesSeedsAndOptions) {
  absl::StatusOr<RedisStoreOptions> options = ParseRedisUri(
      "redis+cluster://u:s3cret@10.0.0.1:7000,10.0.0.2,node-3.example:7002/"
      "?prefix=p&max_redirects=7&max_retries=2&pool_size=3");
  ASSERT_TRUE(options.ok()) << options.status();
  ASSERT_EQ(options->cluster_seeds.size(), 3u);
  EXPECT_EQ(options->cluster_seeds[0].host, "10.0.0.1");
  EXPECT_EQ(options->cluster_seeds[0].port, 7000);
  EXPECT_EQ(options->cluster_seeds[1].host, "10.0.0.2");
  EXPECT_EQ(options->cluster_seeds[1].port, 6379);
  EXPECT_EQ(options->cluster_seeds[2].host, "node-3.example");
  EXPECT_EQ(options->cluster_seeds[2].port, 7002);
  EXPECT_EQ(options->user, "u");
  EXPECT_EQ(options->password, "s3cret");
  EXPECT_EQ(options->key_prefix, "p");
  EXPECT_EQ(options->cluster_max_redirects, 7);
  EXPECT_EQ(options->cluster_max_retries, 2);
  EXPECT_EQ(options->pool_size, 3u);

  absl::StatusOr<RedisStoreOptions> v6 = ParseRedisUri("redis+cluster://[::1]:7000");
  ASSERT_TRUE(v6.ok()) << v6.status();
  ASSERT_EQ(v6->cluster_seeds.size(), 1u);
  EXPECT_EQ(v6->cluster_seeds[0].host, "::1");
  EXPECT_EQ(v6->cluster_seeds[0].port, 7000);
  // Single-server URIs stay single-server.
  absl::StatusOr<RedisStoreOptions> single = ParseRedisUri("redis://127.0.0.1:6379/2");
  ASSERT_TRUE(single.ok());
  EXPECT_TRUE(single->cluster_seeds.empty());
}

TEST(ClusterUri, RefusesBadSeedListsWithBoundedTextsThatNeverShowThePassword) {
  std::string many = "redis+cluster://u:s3cret@";
  for (int i = 0; i < 65; ++i) many += (i ? "," : "") + std::string("h:") + std::to_string(7000 + i);
  const std::string huge_host = "redis+cluster://u:s3cret@" + std::string(300, 'h') + ":1,h:2";
  for (const std::string& bad : {
           std::string("redis+cluster://u:s3cret@"),                  // no seed
           std::string("redis+cluster://u:s3cret@h:7000,,h:7001/"),   // empty seed
           std::string("redis+cluster://u:s3cret@:7000,h:7001/"),     // empty host
           std::string("redis+cluster://u:s3cret@h:70x0,h:7001/"),    // bad port
           std::string("redis+cluster://u:s3cret@h:0,h:7001/"),       // port 0
           std::string("redis+cluster://u:s3cret@h:7000,h:99999/"),   // port out of range
           std::string("redis+cluster://u:s3cret@h:7000,h:/"),        // empty port
           std::string("redis+cluster://u:s3cret@h:7000,::1:7001/"),  // IPv6 in a list
           std::string("redis+cluster://u:s3cret@h:7000/1"),          // a db
           std::string("redis+cluster://u:s3cret@h:7000/?db=1"),      // db option
           std::string("redis+cluster://u:s3cret@h:7000/?bogus=1"),   // unknown option
           std::string("redis+cluster://u:s3cret@h:7000/?max_redirects=101"),
           std::string("redis+cluster://u:s3cret@h:7000/?max_retries=-1"),
           std::string("redis+cluster://u:s3cret@h 1:7000,h:7001/"),
           many,
           huge_host,
       }) {
    absl::StatusOr<RedisStoreOptions> options = ParseRedisUri(bad);
    ASSERT_FALSE(options.ok()) << bad;
    EXPECT_EQ(options.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_LE(options.status().message().size(), 512u) << bad;
    EXPECT_EQ(options.status().message().find("s3cret"), std::string_view::npos) << bad;
  }
  // The max_redirects and max_retries options belong to cluster URIs only.
  EXPECT_FALSE(ParseRedisUri("redis://h:1/?max_redirects=1").ok());
}

TEST(ClusterUri, RedactUriHidesThePassword) {
  const std::string redacted =
      RedactUri("redis+cluster://user:s3cret@10.0.0.1:7000,10.0.0.2:7001/?prefix=p");
  EXPECT_EQ(redacted, "redis+cluster://***@10.0.0.1:7000,10.0.0.2:7001/?prefix=p");
  EXPECT_EQ(RedactUri("redis+cluster://h:1,h:2/?password=s3cret"),
            "redis+cluster://h:1,h:2/?password=***");
}

TEST(ClusterOptions, NewRedisStoreRefusesBadSeeds) {
  RedisStoreOptions options;
  options.cluster_seeds = {RedisNodeAddress{.host = "", .port = 7000}};
  EXPECT_EQ(NewRedisStore(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.cluster_seeds = {RedisNodeAddress{.host = "h", .port = 0}};
  EXPECT_EQ(NewRedisStore(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.cluster_seeds = {RedisNodeAddress{.host = "h", .port = 7000}};
  options.db = 1;
  EXPECT_EQ(NewRedisStore(options).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace idem::internal::redis

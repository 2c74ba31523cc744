// The broker adapters: messages/s through a consumer loop with idem (RedisStreamsConsumer,
// KafkaConsumer over a Processor on SQLite or Redis) against the same loop without any dedup.
//
// The raw loops are what a consumer does by hand with the same client and settings:
//   redis-streams  XREADGROUP COUNT 32, the handler per entry, one XACK of the batch's ids;
//   kafka-mock     rd_kafka_consumer_poll, the handler per message, rd_kafka_offsets_store of
//                  offset + 1 (enable.auto.offset.store=false, auto-commit), as the adapter does.
// The idem side reads the same kind of traffic from its own stream/topic and group: the
// bench_util stream of 36-byte UUID ids, five new then one duplicate (a redelivery of a
// completed message), carried in the "id" field/header.
//
// Pairs: each iteration produces a unit of kUnit messages to the raw side and to the idem side
// (untimed), then times each side consuming its unit, in alternating order, so that drift in
// the machine falls on both alike (as RunPaired does). Counters raw_msgs_per_s and
// idem_msgs_per_s; run.sh prints them as RATIO lines.
//
// Brokers: the Redis Streams entries live on bench/run.sh's redis-server (IDEM_BENCH_REDIS_PORT),
// the same server as the Redis dedup store; Kafka is librdkafka's mock cluster, hosted by this
// process (a real Kafka protocol server on loopback), one partition per topic. The SQLite store
// is the embedded default: NewSqliteStore with default options (synchronous=FULL) on a file in
// IDEM_BENCH_DIR.
#include <hiredis/hiredis.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <span>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "bench_util.h"
#include "benchmark/benchmark.h"
#include "idem/kafka.h"
#include "idem/processor.h"
#include "idem/redis_store.h"
#include "idem/redis_streams.h"
#include "idem/sqlite_store.h"

namespace idem::bench {
namespace {

constexpr std::size_t kUnit = 600;  // messages per side per iteration (100 groups of six)

int RedisPort() { return static_cast<int>(EnvInt("IDEM_BENCH_REDIS_PORT", 6379)); }

std::string UniqueName(std::string_view what) {
  static int n = 0;
  return absl::StrCat("idem-bench-", std::string(what), "-", getpid(), "-", n++);
}

// A consume loop that stops making progress fails the benchmark instead of hanging it.
class Progress {
 public:
  explicit Progress(std::string_view what) : what_(what) {}
  absl::Status Check(std::size_t seen, std::size_t n) {
    const auto now = std::chrono::steady_clock::now();
    if (seen != last_) {
      last_ = seen;
      since_ = now;
    } else if (now - since_ > std::chrono::seconds(30)) {
      return absl::DeadlineExceededError(
          absl::StrCat(std::string(what_), ": ", seen, " of ", n, " messages, none for 30 s"));
    }
    return absl::OkStatus();
  }

 private:
  std::string_view what_;
  std::size_t last_ = 0;
  std::chrono::steady_clock::time_point since_ = std::chrono::steady_clock::now();
};

// One side of a pair: produces a unit (untimed) and consumes exactly that many (timed).
class Side {
 public:
  virtual ~Side() = default;
  virtual absl::Status Produce(std::span<const Message> messages) = 0;
  virtual absl::Status Consume(std::size_t n) = 0;
};

// The store idem runs on.
enum class StoreKind { kSqlite, kRedis };

absl::StatusOr<std::unique_ptr<DedupStore>> MakeStore(StoreKind kind) {
  if (kind == StoreKind::kSqlite) {
    const std::string dir =
        EnvString("IDEM_BENCH_DIR", std::filesystem::temp_directory_path().string());
    const std::string path = absl::StrCat(dir, "/", UniqueName("adapter"), ".db");
    return NewSqliteStore({.path = path});
  }
  RedisStoreOptions o;
  o.port = RedisPort();
  o.key_prefix = UniqueName("store");
  return NewRedisStore(o);
}

// ---- Redis Streams ---------------------------------------------------------------------------

struct ContextFree {
  void operator()(redisContext* c) const noexcept { redisFree(c); }
};
struct ReplyFree {
  void operator()(redisReply* r) const noexcept { freeReplyObject(r); }
};
using Context = std::unique_ptr<redisContext, ContextFree>;
using Reply = std::unique_ptr<redisReply, ReplyFree>;

Reply Command(redisContext* c, const std::vector<std::string_view>& args) {
  std::vector<const char*> argv;
  std::vector<size_t> lens;
  for (std::string_view a : args) {
    argv.push_back(a.data());
    lens.push_back(a.size());
  }
  return Reply(static_cast<redisReply*>(
      redisCommandArgv(c, static_cast<int>(args.size()), argv.data(), lens.data())));
}

// XADDs a unit to `stream`, pipelined (the producer is not what is measured).
absl::Status AddEntries(redisContext* c, const std::string& stream,
                        std::span<const Message> messages) {
  for (const Message& m : messages) {
    const char* argv[] = {"XADD", stream.c_str(), "*", "id", m.id.data(), "body", m.payload.data()};
    const size_t lens[] = {4, stream.size(), 1, 2, m.id.size(), 4, m.payload.size()};
    if (redisAppendCommandArgv(c, 7, argv, lens) != REDIS_OK) {
      return absl::UnavailableError("XADD append");
    }
  }
  for (std::size_t i = 0; i < messages.size(); ++i) {
    void* r = nullptr;
    if (redisGetReply(c, &r) != REDIS_OK) return absl::UnavailableError(c->errstr);
    Reply reply(static_cast<redisReply*>(r));
    if (reply->type != REDIS_REPLY_STRING) return absl::InternalError("XADD failed");
  }
  return absl::OkStatus();
}

Context ConnectRedis() {
  Context c(redisConnect("127.0.0.1", RedisPort()));
  if (c == nullptr || c->err != 0) return nullptr;
  return c;
}

class RawStreamSide : public Side {
 public:
  RawStreamSide()
      : producer_(ConnectRedis()), consumer_(ConnectRedis()), stream_(UniqueName("rs")) {
    if (producer_ == nullptr || consumer_ == nullptr) return;
    Command(consumer_.get(), {"XGROUP", "CREATE", stream_, "g", "0", "MKSTREAM"});
  }
  bool ok() const { return producer_ != nullptr && consumer_ != nullptr; }

  absl::Status Produce(std::span<const Message> messages) override {
    return AddEntries(producer_.get(), stream_, messages);
  }
  absl::Status Consume(std::size_t n) override {
    std::size_t seen = 0;
    std::vector<std::string_view> ack;
    Progress progress("raw redis-streams");
    while (seen < n) {
      if (absl::Status s = progress.Check(seen, n); !s.ok()) return s;
      Reply r = Command(consumer_.get(), {"XREADGROUP", "GROUP", "g", "c", "COUNT", "32", "BLOCK",
                                          "100", "STREAMS", stream_, ">"});
      if (r == nullptr) return absl::UnavailableError(consumer_->errstr);
      if (r->type == REDIS_REPLY_NIL) continue;
      if (r->type != REDIS_REPLY_ARRAY || r->elements != 1) {
        return absl::InternalError("XREADGROUP reply");
      }
      const redisReply* entries = r->element[0]->element[1];
      ack.assign({"XACK", stream_, "g"});
      for (std::size_t i = 0; i < entries->elements; ++i) {
        const redisReply* e = entries->element[i];
        const redisReply* fields = e->element[1];
        // The handler: it reads the id, as a consumer that dedups by hand would.
        for (std::size_t k = 0; k + 1 < fields->elements; k += 2) {
          if (std::string_view(fields->element[k]->str, fields->element[k]->len) == "id") {
            benchmark::DoNotOptimize(fields->element[k + 1]->str);
          }
        }
        ack.emplace_back(e->element[0]->str, e->element[0]->len);
      }
      seen += entries->elements;
      Reply acked = Command(consumer_.get(), ack);
      if (acked == nullptr || acked->type != REDIS_REPLY_INTEGER) {
        return absl::InternalError("XACK failed");
      }
    }
    return absl::OkStatus();
  }

 private:
  Context producer_;
  Context consumer_;
  std::string stream_;
};

class IdemStreamSide : public Side {
 public:
  static absl::StatusOr<std::unique_ptr<IdemStreamSide>> Create(StoreKind kind) {
    auto side = std::unique_ptr<IdemStreamSide>(new IdemStreamSide());
    side->producer_ = ConnectRedis();
    if (side->producer_ == nullptr) return absl::UnavailableError("redis connect");
    auto store = MakeStore(kind);
    if (!store.ok()) return store.status();
    side->store_ = *std::move(store);
    auto processor = Processor::Create(*side->store_, std::string(kScope));
    if (!processor.ok()) return processor.status();
    side->processor_.emplace(*std::move(processor));
    // Strings moved in whole: GCC 12 at -O2 and up warns (-Wrestrict, a false positive) when a
    // literal is assigned to a member string here.
    RedisStreamsOptions o{.stream = side->stream_, .group = std::string("g"),
                          .consumer = std::string("c")};
    o.port = RedisPort();
    o.batch = 32;
    o.block = std::chrono::milliseconds(100);
    auto consumer = RedisStreamsConsumer::Create(
        o, *side->processor_, [](const StreamEntry&, HandlerContext& ctx) { TrivialHandler(ctx); });
    if (!consumer.ok()) return consumer.status();
    side->consumer_ = *std::move(consumer);
    return side;
  }

  absl::Status Produce(std::span<const Message> messages) override {
    return AddEntries(producer_.get(), stream_, messages);
  }
  absl::Status Consume(std::size_t n) override {
    std::size_t seen = 0;
    Progress progress("idem redis-streams");
    while (seen < n) {
      if (absl::Status s = progress.Check(seen, n); !s.ok()) return s;
      absl::StatusOr<int> got = consumer_->PollOnce();
      if (!got.ok()) return got.status();
      seen += static_cast<std::size_t>(*got);
    }
    return absl::OkStatus();
  }

 private:
  IdemStreamSide() : stream_(UniqueName("rs")) {}
  Context producer_;
  std::string stream_;
  std::unique_ptr<DedupStore> store_;
  std::optional<Processor> processor_;
  std::unique_ptr<RedisStreamsConsumer> consumer_;
};

// ---- Kafka (librdkafka's mock cluster) --------------------------------------------------------

struct KafkaFree {
  void operator()(rd_kafka_t* rk) const { rd_kafka_destroy(rk); }
};
using KafkaPtr = std::unique_ptr<rd_kafka_t, KafkaFree>;

// The consumer settings both sides use: short fetch waits, so that a unit produced while the
// consumer idled is fetched at once rather than after a long poll of the broker.
const std::map<std::string, std::string>& KafkaConsumerSettings() {
  static const auto* settings = new std::map<std::string, std::string>{
      {"fetch.wait.max.ms", "5"}, {"session.timeout.ms", "6000"},
      {"heartbeat.interval.ms", "500"}};
  return *settings;
}

// A producer handle that hosts a one-broker mock cluster for the whole program.
class MockCluster {
 public:
  static MockCluster* Get() {
    static MockCluster* cluster = new MockCluster();
    return cluster->mock_ != nullptr ? cluster : nullptr;
  }
  std::string bootstraps() const { return rd_kafka_mock_cluster_bootstraps(mock_); }
  absl::Status CreateTopic(const std::string& topic) {
    if (rd_kafka_mock_topic_create(mock_, topic.c_str(), 1, 1) != RD_KAFKA_RESP_ERR_NO_ERROR) {
      return absl::InternalError("mock topic");
    }
    return absl::OkStatus();
  }
  absl::Status Produce(const std::string& topic, std::span<const Message> messages) {
    for (const Message& m : messages) {
      rd_kafka_headers_t* hdrs = rd_kafka_headers_new(1);
      rd_kafka_header_add(hdrs, "id", 2, m.id.data(), m.id.size());
      const rd_kafka_resp_err_t err = rd_kafka_producev(
          rk_.get(), RD_KAFKA_V_TOPIC(topic.c_str()),
          RD_KAFKA_V_VALUE(const_cast<char*>(m.payload.data()), m.payload.size()),
          RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
      if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        rd_kafka_headers_destroy(hdrs);
        return absl::InternalError(rd_kafka_err2str(err));
      }
    }
    if (rd_kafka_flush(rk_.get(), 10'000) != RD_KAFKA_RESP_ERR_NO_ERROR) {
      return absl::DeadlineExceededError("flush");
    }
    return absl::OkStatus();
  }

 private:
  MockCluster() {
    rd_kafka_conf_t* conf = rd_kafka_conf_new();
    char err[256];
    rd_kafka_conf_set(conf, "test.mock.num.brokers", "1", err, sizeof(err));
    rd_kafka_conf_set(conf, "enable.idempotence", "false", err, sizeof(err));
    rd_kafka_conf_set(conf, "linger.ms", "1", err, sizeof(err));
    rk_.reset(rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err)));
    if (rk_ != nullptr) mock_ = rd_kafka_handle_mock_cluster(rk_.get());
  }
  KafkaPtr rk_;
  rd_kafka_mock_cluster_t* mock_ = nullptr;
};

class RawKafkaSide : public Side {
 public:
  static absl::StatusOr<std::unique_ptr<RawKafkaSide>> Create(MockCluster& cluster) {
    auto side = std::unique_ptr<RawKafkaSide>(new RawKafkaSide(cluster));
    if (absl::Status s = cluster.CreateTopic(side->topic_); !s.ok()) return s;
    rd_kafka_conf_t* conf = rd_kafka_conf_new();
    char err[512];
    std::map<std::string, std::string> settings = {
        {"bootstrap.servers", cluster.bootstraps()},
        {"group.id", UniqueName("group")},
        {"enable.auto.commit", "true"},
        {"enable.auto.offset.store", "false"},
        {"auto.offset.reset", "earliest"},
    };
    for (const auto& [k, v] : KafkaConsumerSettings()) settings[k] = v;
    for (const auto& [k, v] : settings) {
      if (rd_kafka_conf_set(conf, k.c_str(), v.c_str(), err, sizeof(err)) != RD_KAFKA_CONF_OK) {
        rd_kafka_conf_destroy(conf);
        return absl::InvalidArgumentError(err);
      }
    }
    rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
    if (rk == nullptr) return absl::InternalError(err);
    side->consumer_.reset(rk);
    (void)rd_kafka_poll_set_consumer(rk);
    rd_kafka_topic_partition_list_t* topics = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(topics, side->topic_.c_str(), RD_KAFKA_PARTITION_UA);
    const rd_kafka_resp_err_t e = rd_kafka_subscribe(rk, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) return absl::InternalError(rd_kafka_err2str(e));
    return side;
  }
  ~RawKafkaSide() override {
    if (consumer_ != nullptr) rd_kafka_consumer_close(consumer_.get());
  }

  absl::Status Produce(std::span<const Message> messages) override {
    return cluster_.Produce(topic_, messages);
  }
  absl::Status Consume(std::size_t n) override {
    std::size_t seen = 0;
    Progress progress("raw kafka");
    while (seen < n) {
      if (absl::Status s = progress.Check(seen, n); !s.ok()) return s;
      rd_kafka_message_t* m = rd_kafka_consumer_poll(consumer_.get(), 100);
      if (m == nullptr) continue;
      if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        rd_kafka_message_destroy(m);
        continue;  // informational (partition EOF and the like)
      }
      // The handler: it reads the id header, as a consumer that dedups by hand would.
      rd_kafka_headers_t* hdrs = nullptr;
      const void* value = nullptr;
      size_t size = 0;
      if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        (void)rd_kafka_header_get_last(hdrs, "id", &value, &size);
      }
      benchmark::DoNotOptimize(value);
      // A fresh list each time: offsets_store leaves a partition reference in the element, which
      // only destroying the list drops (a reused list leaks it and rd_kafka_destroy waits).
      rd_kafka_topic_partition_list_t* list = rd_kafka_topic_partition_list_new(1);
      rd_kafka_topic_partition_list_add(list, rd_kafka_topic_name(m->rkt), m->partition)->offset =
          m->offset + 1;
      const rd_kafka_resp_err_t e = rd_kafka_offsets_store(consumer_.get(), list);
      rd_kafka_topic_partition_list_destroy(list);
      rd_kafka_message_destroy(m);
      if (e != RD_KAFKA_RESP_ERR_NO_ERROR) return absl::InternalError(rd_kafka_err2str(e));
      ++seen;
    }
    return absl::OkStatus();
  }

 private:
  explicit RawKafkaSide(MockCluster& cluster) : cluster_(cluster), topic_(UniqueName("topic")) {}
  MockCluster& cluster_;
  std::string topic_;
  KafkaPtr consumer_;
};

class IdemKafkaSide : public Side {
 public:
  static absl::StatusOr<std::unique_ptr<IdemKafkaSide>> Create(MockCluster& cluster,
                                                               StoreKind kind) {
    auto side = std::unique_ptr<IdemKafkaSide>(new IdemKafkaSide(cluster));
    if (absl::Status s = cluster.CreateTopic(side->topic_); !s.ok()) return s;
    auto store = MakeStore(kind);
    if (!store.ok()) return store.status();
    side->store_ = *std::move(store);
    auto processor = Processor::Create(*side->store_, std::string(kScope));
    if (!processor.ok()) return processor.status();
    side->processor_.emplace(*std::move(processor));
    KafkaConsumerOptions o{.brokers = cluster.bootstraps(), .group_id = UniqueName("group"),
                           .topics = {side->topic_}};
    o.consumer_config = KafkaConsumerSettings();
    auto consumer = KafkaConsumer::Create(
        o, *side->processor_, [](const KafkaRecord&, HandlerContext& ctx) { TrivialHandler(ctx); });
    if (!consumer.ok()) return consumer.status();
    side->consumer_ = *std::move(consumer);
    return side;
  }

  absl::Status Produce(std::span<const Message> messages) override {
    return cluster_.Produce(topic_, messages);
  }
  absl::Status Consume(std::size_t n) override {
    std::size_t seen = 0;
    Progress progress("idem kafka");
    while (seen < n) {
      if (absl::Status s = progress.Check(seen, n); !s.ok()) return s;
      absl::StatusOr<int> got = consumer_->PollOnce();
      if (!got.ok()) return got.status();
      seen += static_cast<std::size_t>(*got);
    }
    return absl::OkStatus();
  }

 private:
  explicit IdemKafkaSide(MockCluster& cluster) : cluster_(cluster), topic_(UniqueName("topic")) {}

 public:
  ~IdemKafkaSide() override {
    if (EnvInt("IDEM_BENCH_TRACE", 0) == 0 || consumer_ == nullptr) return;
    const KafkaConsumerStats& st = consumer_->stats();
    std::fprintf(stderr,
                 "idem kafka: deliveries %llu processed %llu duplicates %llu in_progress %llu "
                 "paused %llu store_errors %llu\n",
                 static_cast<unsigned long long>(st.deliveries),
                 static_cast<unsigned long long>(st.processed),
                 static_cast<unsigned long long>(st.duplicates),
                 static_cast<unsigned long long>(st.in_progress),
                 static_cast<unsigned long long>(st.paused),
                 static_cast<unsigned long long>(st.store_errors));
  }

 private:
  MockCluster& cluster_;
  std::string topic_;
  std::unique_ptr<DedupStore> store_;
  std::optional<Processor> processor_;
  std::unique_ptr<KafkaConsumer> consumer_;
};

// ---- the pairs -------------------------------------------------------------------------------

// Alternates raw and idem units as RunPaired does, but with the producing untimed: only each
// side's consuming of its unit is timed.
void RunPairedConsume(benchmark::State& state, Side& raw, Side& idem) {
  using Clock = std::chrono::steady_clock;
  // IDEM_BENCH_TRACE=1: one line per unit on stderr, to see where a stuck run waits.
  const bool trace = EnvInt("IDEM_BENCH_TRACE", 0) != 0;
  MessageStream raw_stream, idem_stream;
  std::vector<Message> messages(kUnit);
  // Two units each, untimed: group joins and partition assignment happen here, and the measured
  // units are past the stream's first kDuplicateLookback groups, whose duplicates repeat an id of
  // their own group (in one poll's batch, the Kafka adapter holds the copy's partition for a
  // pause/resume round, ~0.1 s here): measured, a duplicate is a redelivery of a message
  // completed long before, as in the other benchmarks.
  static_assert(2 * kUnit >= kDuplicateLookback * kGroupSize);
  for (Side* side : {&raw, &idem, &raw, &idem}) {
    if (trace) std::fprintf(stderr, "warm-up %s\n", side == &raw ? "raw" : "idem");
    (side == &raw ? raw_stream : idem_stream).Fill(messages);
    absl::Status s = side->Produce(messages);
    if (s.ok()) s = side->Consume(messages.size());
    if (!s.ok()) {
      state.SkipWithError(s.ToString().c_str());
      return;
    }
  }
  Clock::duration raw_time{}, idem_time{};
  bool raw_first = true;
  for (auto _ : state) {
    for (int turn = 0; turn < 2; ++turn) {
      const bool is_raw = (turn == 0) == raw_first;
      Side& side = is_raw ? raw : idem;
      (is_raw ? raw_stream : idem_stream).Fill(messages);
      if (trace) std::fprintf(stderr, "unit %s: produce\n", is_raw ? "raw" : "idem");
      absl::Status status = side.Produce(messages);
      if (trace) std::fprintf(stderr, "unit %s: consume\n", is_raw ? "raw" : "idem");
      if (status.ok()) {
        const Clock::time_point start = Clock::now();
        status = side.Consume(messages.size());
        (is_raw ? raw_time : idem_time) += Clock::now() - start;
      }
      if (!status.ok()) {
        state.SkipWithError(status.ToString().c_str());
        return;
      }
    }
    raw_first = !raw_first;
  }
  const double msgs = static_cast<double>(state.iterations()) * static_cast<double>(kUnit);
  auto rate = [msgs](Clock::duration d) {
    const double seconds = std::chrono::duration<double>(d).count();
    return seconds > 0 ? msgs / seconds : 0.0;
  };
  state.counters["raw_msgs_per_s"] = rate(raw_time);
  state.counters["idem_msgs_per_s"] = rate(idem_time);
  if (trace) {
    std::fprintf(stderr, "done: %lld iterations\n", static_cast<long long>(state.iterations()));
  }
}

void RedisStreamsPair(benchmark::State& state, StoreKind kind) {
  RawStreamSide raw;
  if (!raw.ok()) {
    state.SkipWithError("redis connect");
    return;
  }
  auto idem = IdemStreamSide::Create(kind);
  if (!idem.ok()) {
    state.SkipWithError(idem.status().ToString().c_str());
    return;
  }
  RunPairedConsume(state, raw, **idem);
}

void KafkaPair(benchmark::State& state, StoreKind kind) {
  MockCluster* cluster = MockCluster::Get();
  if (cluster == nullptr) {
    state.SkipWithError("no mock cluster");
    return;
  }
  auto raw = RawKafkaSide::Create(*cluster);
  if (!raw.ok()) {
    state.SkipWithError(raw.status().ToString().c_str());
    return;
  }
  auto idem = IdemKafkaSide::Create(*cluster, kind);
  if (!idem.ok()) {
    state.SkipWithError(idem.status().ToString().c_str());
    return;
  }
  RunPairedConsume(state, **raw, **idem);
}

bool RedisReachable() { return ConnectRedis() != nullptr; }

void RegisterAll() {
  // Kafka needs only this process; Redis Streams and the Redis store need run.sh's server.
  Register("kafka-mock", "sqlite", "pair",
           [](benchmark::State& s) { KafkaPair(s, StoreKind::kSqlite); });
  if (!RedisReachable()) {
    std::fprintf(stderr, "adapter bench: no redis-server on 127.0.0.1:%d; only kafka-mock/sqlite\n",
                 RedisPort());
    return;
  }
  Register("kafka-mock", "redis", "pair",
           [](benchmark::State& s) { KafkaPair(s, StoreKind::kRedis); });
  Register("redis-streams", "sqlite", "pair",
           [](benchmark::State& s) { RedisStreamsPair(s, StoreKind::kSqlite); });
  Register("redis-streams", "redis", "pair",
           [](benchmark::State& s) { RedisStreamsPair(s, StoreKind::kRedis); });
}

}  // namespace
}  // namespace idem::bench

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  idem::bench::RegisterAll();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

// Tests of the RabbitMQ adapter on a real rabbitmq-server (the CTest fixture): in-process consumers
// for each action, a broker restart mid-run, then consumer processes SIGKILLed at random points.
#include "idem/rabbitmq.h"

#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "amqp_test_client.h"
#include "gtest/gtest.h"
#include "idem/memory_store.h"
#include "idem/processor.h"
#include "idem/sqlite_store.h"
#include "testing/status_matchers.h"

namespace idem {
namespace {

using std::chrono::milliseconds;
using testing::AmqpTestClient;
using testing::GotMessage;
using testing::RabbitPort;

std::string Unique(std::string_view what) {
  return absl::StrCat("rmq-", std::string(what), "-", getpid(), "-",
                      std::chrono::steady_clock::now().time_since_epoch().count() % 1000000007);
}

const std::vector<milliseconds> kTiers = {milliseconds(20),  milliseconds(50),
                                          milliseconds(100), milliseconds(200),
                                          milliseconds(400), milliseconds(800)};

RabbitMqOptions FastOptions(const std::string& queue) {
  RabbitMqOptions o;
  o.port = RabbitPort();
  o.queue = queue;
  o.prefetch = 8;
  o.poll_timeout = milliseconds(20);
  o.retry_tiers = kTiers;
  o.policy.backoff = {.initial = milliseconds(20), .max = milliseconds(200)};
  o.policy.in_progress_min_delay = milliseconds(20);
  return o;
}

// Polls until `done` or 10 s.
template <typename Done>
void PollUntil(RabbitMqConsumer& c, Done done) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!done() && std::chrono::steady_clock::now() < deadline) {
    absl::StatusOr<int> n = c.PollOnce();
    ASSERT_TRUE(n.ok()) << n.status();
  }
  ASSERT_TRUE(done()) << "timed out";
}

// Every queue a consumer of `queue` declares, with its ready count.
std::map<std::string, int64_t> QueueCounts(AmqpTestClient& amqp, const std::string& queue) {
  std::map<std::string, int64_t> counts;
  counts[queue] = amqp.Count(queue);
  for (milliseconds t : kTiers) {
    const std::string q = absl::StrCat(queue, ".retry.", t.count(), "ms");
    counts[q] = amqp.Count(q);
  }
  return counts;
}
bool AllEmpty(const std::map<std::string, int64_t>& counts) {
  return std::all_of(counts.begin(), counts.end(), [](const auto& c) { return c.second == 0; });
}

TEST(RabbitMqTest, RejectsBadOptions) {
  IDEM_ASSERT_OK_AND_ASSIGN(std::unique_ptr<DedupStore> store, NewMemoryStore());
  IDEM_ASSERT_OK_AND_ASSIGN(Processor p, Processor::Create(*store, "rmq"));
  auto handler = [](const AmqpDelivery&, HandlerContext&) {};
  RabbitMqOptions o = FastOptions("");
  EXPECT_EQ(RabbitMqConsumer::Create(o, p, handler).status().code(),
            absl::StatusCode::kInvalidArgument);
  o = FastOptions("q");
  o.prefetch = 0;
  EXPECT_EQ(RabbitMqConsumer::Create(o, p, handler).status().code(),
            absl::StatusCode::kInvalidArgument);
  o = FastOptions("q");
  o.version_key_header = "key";
  EXPECT_EQ(RabbitMqConsumer::Create(o, p, handler).status().code(),
            absl::StatusCode::kInvalidArgument);
  o = FastOptions("q");
  o.retry_tiers = {milliseconds(100), milliseconds(50)};
  EXPECT_EQ(RabbitMqConsumer::Create(o, p, handler).status().code(),
            absl::StatusCode::kInvalidArgument);
  o = FastOptions("q");
  o.policy.backoff.initial = milliseconds(0);
  EXPECT_EQ(RabbitMqConsumer::Create(o, p, handler).status().code(),
            absl::StatusCode::kInvalidArgument);
  o = FastOptions("q");
  o.port = 0;
  EXPECT_EQ(RabbitMqConsumer::Create(o, p, handler).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A broker that is not there: Unavailable, retried by Run, never a crash.
  o = FastOptions("q");
  o.port = RabbitPort() + 5;
  IDEM_ASSERT_OK_AND_ASSIGN(auto c, RabbitMqConsumer::Create(o, p, handler));
  EXPECT_EQ(c->PollOnce().status().code(), absl::StatusCode::kUnavailable);
}

TEST(RabbitMqTest, RetryTiersRoundDelaysUp) {
  IDEM_ASSERT_OK_AND_ASSIGN(std::unique_ptr<DedupStore> store, NewMemoryStore());
  IDEM_ASSERT_OK_AND_ASSIGN(Processor p, Processor::Create(*store, "rmq"));
  IDEM_ASSERT_OK_AND_ASSIGN(auto c, RabbitMqConsumer::Create(FastOptions("q"), p,
                                                             [](const AmqpDelivery&, HandlerContext&) {}));
  EXPECT_EQ(c->RetryQueueFor(milliseconds(0)), "q.retry.20ms");
  EXPECT_EQ(c->RetryQueueFor(milliseconds(20)), "q.retry.20ms");
  EXPECT_EQ(c->RetryQueueFor(milliseconds(21)), "q.retry.50ms");
  EXPECT_EQ(c->RetryQueueFor(milliseconds(799)), "q.retry.800ms");
  EXPECT_EQ(c->RetryQueueFor(milliseconds(60'000)), "q.retry.800ms");
}

TEST(RabbitMqTest, AcksDuplicatesAndDeadLettersConflictsAndMissingIds) {
  const std::string queue = Unique("basic");
  IDEM_ASSERT_OK_AND_ASSIGN(std::unique_ptr<DedupStore> store, NewMemoryStore());
  IDEM_ASSERT_OK_AND_ASSIGN(Processor p, Processor::Create(*store, "rmq"));
  std::vector<std::string> runs;
  IDEM_ASSERT_OK_AND_ASSIGN(
      auto c, RabbitMqConsumer::Create(FastOptions(queue), p,
                                       [&](const AmqpDelivery& d, HandlerContext& ctx) {
                                         runs.push_back(std::string(ctx.message_id()) + "=" + d.body);
                                       }));
  IDEM_ASSERT_OK(c->PollOnce().status());  // connects and declares the topology
  AmqpTestClient amqp(RabbitPort());
  ASSERT_TRUE(amqp.ok()) << amqp.error();
  ASSERT_TRUE(amqp.Publish(queue, "pa", "a"));
  ASSERT_TRUE(amqp.Publish(queue, "pa", "a"));     // the producer's retry: a duplicate
  ASSERT_TRUE(amqp.Publish(queue, "other", "a"));  // the id reused for another payload
  ASSERT_TRUE(amqp.Publish(queue, "no id"));       // no message-id: never processed
  ASSERT_TRUE(amqp.Publish(queue, "pb", "b"));
  PollUntil(*c, [&] { return c->stats().acked == 5; });
  EXPECT_EQ(runs, (std::vector<std::string>{"a=pa", "b=pb"}));
  const RabbitMqStats& s = c->stats();
  EXPECT_EQ(s.processed, 2u);
  EXPECT_EQ(s.duplicates, 1u);
  EXPECT_EQ(s.conflicts, 1u);
  EXPECT_EQ(s.missing_ids, 1u);
  EXPECT_EQ(s.dead_lettered, 2u);
  EXPECT_EQ(amqp.Count(queue), 0);

  std::vector<GotMessage> dead = amqp.Drain(queue + ".dead-letter");
  ASSERT_EQ(dead.size(), 2u);
  EXPECT_EQ(dead[0].body, "other");
  EXPECT_EQ(dead[0].message_id, "a");
  EXPECT_EQ(dead[0].headers["x-idem-reason"], "conflict");
  EXPECT_EQ(dead[0].headers["x-idem-source-queue"], queue);
  EXPECT_EQ(dead[1].body, "no id");
  EXPECT_EQ(dead[1].message_id, std::nullopt);
  EXPECT_EQ(dead[1].headers["x-idem-reason"], "missing_id: no message-id property");
}

TEST(RabbitMqTest, IdFromAHeaderOrAFunction) {
  const std::string queue = Unique("idsrc");
  IDEM_ASSERT_OK_AND_ASSIGN(std::unique_ptr<DedupStore> store, NewMemoryStore());
  IDEM_ASSERT_OK_AND_ASSIGN(Processor p, Processor::Create(*store, "rmq"));
  std::vector<std::string> runs;
  auto handler = [&](const AmqpDelivery&, HandlerContext& ctx) {
    runs.push_back(std::string(ctx.message_id()));
  };
  RabbitMqOptions o = FastOptions(queue);
  o.id_header = "x-order-id";
  IDEM_ASSERT_OK_AND_ASSIGN(auto by_header, RabbitMqConsumer::Create(o, p, handler));
  IDEM_ASSERT_OK(by_header->PollOnce().status());
  AmqpTestClient amqp(RabbitPort());
  ASSERT_TRUE(amqp.Publish(queue, "x", "ignored-1", {{"x-order-id", "o-1"}}));
  ASSERT_TRUE(amqp.Publish(queue, "x", "ignored-2", {{"x-order-id", "o-1"}}));
  ASSERT_TRUE(amqp.Publish(queue, "x", "m-3"));  // has a message-id, but not the header
  PollUntil(*by_header, [&] { return by_header->stats().acked == 3; });
  EXPECT_EQ(runs, std::vector<std::string>{"o-1"});
  EXPECT_EQ(by_header->stats().duplicates, 1u);
  EXPECT_EQ(by_header->stats().missing_ids, 1u);
  std::vector<GotMessage> dead = amqp.Drain(queue + ".dead-letter");
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead[0].headers["x-idem-reason"], "missing_id: no header x-order-id");
  by_header.reset();

  o.id_header.clear();
  o.id_fn = [](const AmqpDelivery& d) -> std::optional<std::string> {
    if (d.body.rfind("order:", 0) != 0) return std::nullopt;
    return d.body.substr(6, d.body.find(';') - 6);
  };
  runs.clear();
  IDEM_ASSERT_OK_AND_ASSIGN(auto by_fn, RabbitMqConsumer::Create(o, p, handler));
  ASSERT_TRUE(amqp.Publish(queue, "order:o-9;"));
  ASSERT_TRUE(amqp.Publish(queue, "order:o-9;"));
  ASSERT_TRUE(amqp.Publish(queue, "junk"));
  PollUntil(*by_fn, [&] { return by_fn->stats().acked == 3; });
  EXPECT_EQ(runs, std::vector<std::string>{"o-9"});
  dead = amqp.Drain(queue + ".dead-letter");
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead[0].headers["x-idem-reason"], "missing_id: the id function gave none");
}

TEST(RabbitMqTest, PoisonGoesToTheDeadLetterQueueAfterMaxAttempts) {
  const std::string queue = Unique("poison");
  IDEM_ASSERT_OK_AND_ASSIGN(std::unique_ptr<DedupStore> store, NewMemoryStore());
  IDEM_ASSERT_OK_AND_ASSIGN(Processor p, Processor::Create(*store, "rmq", {.max_attempts = 3}));
  int runs = 0;
  IDEM_ASSERT_OK_AND_ASSIGN(
      auto c, RabbitMqConsumer::Create(FastOptions(queue), p, [&](const AmqpDelivery&, HandlerContext&) {
        ++runs;
        throw std::runtime_error("cannot parse");
      }));
  IDEM_ASSERT_OK(c->PollOnce().status());
  AmqpTestClient amqp(RabbitPort());
  ASSERT_TRUE(amqp.Publish(queue, "{bad", "p-1"));
  PollUntil(*c, [&] { return c->stats().dead_lettered == 1; });
  EXPECT_EQ(runs, 3);
  EXPECT_EQ(c->stats().handler_errors, 3u);
  EXPECT_EQ(c->stats().retried, 3u);  // three copies through the retry tiers, then the dead letter
  std::vector<GotMessage> dead = amqp.Drain(queue + ".dead-letter");
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead[0].message_id, "p-1");
  EXPECT_EQ(dead[0].body, "{bad");
  EXPECT_EQ(dead[0].headers["x-idem-reason"], "max_attempts");
  EXPECT_EQ(dead[0].headers["x-idem-tries"], "3");
  EXPECT_TRUE(AllEmpty(QueueCounts(amqp, queue)));
}

// Another consumer holds a live claim: the delivery waits in a retry tier (not in this
// consumer's prefetch window) and is taken over once that lease has ended.
TEST(RabbitMqTest, InProgressWaitsInARetryQueueUntilTheOtherLeaseEnds) {
  const std::string queue = Unique("inprog");
  IDEM_ASSERT_OK_AND_ASSIGN(std::unique_ptr<DedupStore> store, NewMemoryStore());
  IDEM_ASSERT_OK_AND_ASSIGN(Processor p, Processor::Create(*store, "rmq"));
  // The lease ends 300 ms after this point at the earliest: no takeover before. The store
  // counts whole milliseconds, so the end it records may fall up to 1 ms before claimed_at + 300.
  const auto claimed_at = std::chrono::steady_clock::now() - milliseconds(1);
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult held,
                            store->Claim({.scope = "rmq", .id = "i-1", .lease = milliseconds(300)}));
  ASSERT_EQ(held.status, ClaimStatus::kAcquired);
  int runs = 0;
  IDEM_ASSERT_OK_AND_ASSIGN(
      auto c, RabbitMqConsumer::Create(FastOptions(queue), p,
                                       [&](const AmqpDelivery&, HandlerContext&) { ++runs; }));
  IDEM_ASSERT_OK(c->PollOnce().status());
  AmqpTestClient amqp(RabbitPort());
  ASSERT_TRUE(amqp.Publish(queue, "x", "i-1"));
  PollUntil(*c, [&] { return c->stats().processed == 1; });
  EXPECT_GE(std::chrono::steady_clock::now() - claimed_at, milliseconds(300));
  EXPECT_EQ(runs, 1);
  EXPECT_GE(c->stats().in_progress, 1u);
  EXPECT_EQ(c->stats().retried, c->stats().in_progress);
  EXPECT_TRUE(AllEmpty(QueueCounts(amqp, queue)));
}

TEST(RabbitMqTest, NackRequeueModeHoldsTheDeliveryThenRequeuesIt) {
  const std::string queue = Unique("requeue");
  IDEM_ASSERT_OK_AND_ASSIGN(std::unique_ptr<DedupStore> store, NewMemoryStore());
  IDEM_ASSERT_OK_AND_ASSIGN(Processor p, Processor::Create(*store, "rmq"));
  // The lease ends 300 ms after this point at the earliest: no takeover before. The store
  // counts whole milliseconds, so the end it records may fall up to 1 ms before claimed_at + 300.
  const auto claimed_at = std::chrono::steady_clock::now() - milliseconds(1);
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult held,
                            store->Claim({.scope = "rmq", .id = "r-1", .lease = milliseconds(300)}));
  ASSERT_EQ(held.status, ClaimStatus::kAcquired);
  int runs = 0;
  RabbitMqOptions o = FastOptions(queue);
  o.retry_mode = RetryMode::kNackRequeue;
  IDEM_ASSERT_OK_AND_ASSIGN(
      auto c, RabbitMqConsumer::Create(o, p, [&](const AmqpDelivery&, HandlerContext&) { ++runs; }));
  IDEM_ASSERT_OK(c->PollOnce().status());
  AmqpTestClient amqp(RabbitPort());
  ASSERT_TRUE(amqp.Publish(queue, "x", "r-1"));
  PollUntil(*c, [&] { return c->stats().processed == 1; });
  EXPECT_GE(std::chrono::steady_clock::now() - claimed_at, milliseconds(300));
  EXPECT_EQ(runs, 1);
  EXPECT_GE(c->stats().requeued, 1u);
  EXPECT_GE(c->stats().redelivered, 1u);
  EXPECT_EQ(c->stats().retried, 0u);
  EXPECT_EQ(amqp.Count(queue + ".retry.20ms"), -1);  // no tier queues in this mode
  EXPECT_EQ(amqp.Count(queue), 0);
}

// A store that fails: the handler does not run, the message is retried with backoff, and is
// processed once the store answers again.
TEST(RabbitMqTest, StoreErrorsRetryWithoutRunningTheHandler) {
  const std::string queue = Unique("storeerr");
  IDEM_ASSERT_OK_AND_ASSIGN(std::unique_ptr<DedupStore> store, NewMemoryStore());
  IDEM_ASSERT_OK_AND_ASSIGN(Processor p, Processor::Create(*store, "rmq"));
  int failures_left = 2, runs = 0;
  IDEM_ASSERT_OK_AND_ASSIGN(
      auto c, RabbitMqConsumer::Create(
                  FastOptions(queue),
                  [&](const Message& m, const AmqpDelivery&) -> absl::StatusOr<ProcessResult> {
                    if (failures_left > 0) {
                      --failures_left;
                      return absl::UnavailableError("store down");
                    }
                    return p.Process(m, [&](HandlerContext&) { ++runs; });
                  }));
  IDEM_ASSERT_OK(c->PollOnce().status());
  AmqpTestClient amqp(RabbitPort());
  ASSERT_TRUE(amqp.Publish(queue, "x", "s-1"));
  PollUntil(*c, [&] { return c->stats().processed == 1; });
  EXPECT_EQ(runs, 1);
  EXPECT_EQ(c->stats().store_errors, 2u);
  EXPECT_EQ(c->stats().retried, 2u);
  EXPECT_TRUE(AllEmpty(QueueCounts(amqp, queue)));
}

TEST(RabbitMqTest, VersionGateFromHeaders) {
  const std::string queue = Unique("version");
  IDEM_ASSERT_OK_AND_ASSIGN(std::unique_ptr<DedupStore> store, NewMemoryStore());
  IDEM_ASSERT_OK_AND_ASSIGN(Processor p, Processor::Create(*store, "rmq"));
  std::vector<std::string> runs;
  RabbitMqOptions o = FastOptions(queue);
  o.version_key_header = "user";
  o.version_header = "version";
  IDEM_ASSERT_OK_AND_ASSIGN(
      auto c, RabbitMqConsumer::Create(o, p, [&](const AmqpDelivery& d, HandlerContext&) {
        runs.push_back(d.body);
      }));
  IDEM_ASSERT_OK(c->PollOnce().status());
  AmqpTestClient amqp(RabbitPort());
  ASSERT_TRUE(amqp.Publish(queue, "v7", "e-7", {{"user", "u1"}, {"version", "7"}}));
  ASSERT_TRUE(amqp.Publish(queue, "v6", "e-6", {{"user", "u1"}, {"version", "6"}}));
  ASSERT_TRUE(amqp.Publish(queue, "v?", "e-x", {{"user", "u1"}, {"version", "seven"}}));
  PollUntil(*c, [&] { return c->stats().acked == 3; });
  EXPECT_EQ(runs, std::vector<std::string>{"v7"});
  EXPECT_EQ(c->stats().stale, 1u);
  std::vector<GotMessage> dead = amqp.Drain(queue + ".dead-letter");
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead[0].body, "v?");
  EXPECT_EQ(dead[0].headers["x-idem-reason"].rfind("invalid: ", 0), 0u);
}

// The broker is restarted (stopped gracefully, started on the same data) while a consumer works
// through durable, confirmed messages: it reconnects with backoff, every message is handled, and
// each handler runs exactly once (the SQLite store outlives the broker; an ack lost with the
// connection makes the redelivery a Duplicate).
TEST(RabbitMqRestartTest, ConsumerReconnectsAfterABrokerRestartAndLosesNothing) {
  const std::string queue = Unique("restart");
  const std::string db_path = ::testing::TempDir() + Unique("restart") + ".db";
  IDEM_ASSERT_OK_AND_ASSIGN(auto store, NewSqliteStore({.path = db_path,
                                                        .synchronous = SqliteSynchronous::kNormal}));
  IDEM_ASSERT_OK_AND_ASSIGN(Processor p, Processor::Create(*store, "rmq-restart"));
  std::mutex mu;
  std::map<std::string, int> runs;
  RabbitMqOptions o = FastOptions(queue);
  o.policy.backoff = {.initial = milliseconds(50), .max = milliseconds(300)};
  IDEM_ASSERT_OK_AND_ASSIGN(
      auto c, RabbitMqConsumer::Create(o, p, [&](const AmqpDelivery&, HandlerContext& ctx) {
        std::this_thread::sleep_for(milliseconds(2));
        std::lock_guard<std::mutex> lock(mu);
        ++runs[std::string(ctx.message_id())];
      }));
  IDEM_ASSERT_OK(c->PollOnce().status());
  constexpr int kBefore = 400, kAfter = 100;
  {
    AmqpTestClient amqp(RabbitPort());
    ASSERT_TRUE(amqp.ok()) << amqp.error();
    for (int i = 0; i < kBefore; ++i) {
      ASSERT_TRUE(amqp.Publish(queue, absl::StrCat("p", i), absl::StrCat("m", i)));
    }
  }
  std::atomic<bool> stop{false};
  absl::Status run_status;
  std::thread consumer([&] { run_status = c->Run(stop); });
  auto ran = [&] {
    std::lock_guard<std::mutex> lock(mu);
    return runs.size();
  };
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (ran() < 60 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(5));
  }
  const size_t ran_before_restart = ran();
  ASSERT_LT(ran_before_restart, static_cast<size_t>(kBefore)) << "the consumer finished too soon";
  const std::string restart = absl::StrCat("sh ", IDEM_RABBITMQ_FIXTURE_SCRIPT, " restart ",
                                           IDEM_RABBITMQ_FIXTURE_DIR, " >/dev/null");
  ASSERT_EQ(std::system(restart.c_str()), 0) << "the fixture could not restart the broker";
  {
    AmqpTestClient amqp(RabbitPort());
    ASSERT_TRUE(amqp.ok()) << amqp.error();
    for (int i = kBefore; i < kBefore + kAfter; ++i) {
      ASSERT_TRUE(amqp.Publish(queue, absl::StrCat("p", i), absl::StrCat("m", i)));
    }
    while (ran() < static_cast<size_t>(kBefore + kAfter) &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(milliseconds(20));
    }
    // Whatever was delivered but not acked before the restart came back and was acked as well.
    while (amqp.Count(queue) != 0 && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(milliseconds(20));
    }
    stop = true;
    consumer.join();
    IDEM_EXPECT_OK(run_status);
    EXPECT_GE(c->stats().connects, 2u) << "the consumer never reconnected";
    std::printf("restart: %llu connects, %llu redelivered, %llu duplicates acked\n",
                static_cast<unsigned long long>(c->stats().connects),
                static_cast<unsigned long long>(c->stats().redelivered),
                static_cast<unsigned long long>(c->stats().duplicates));
    c.reset();  // closes the channel: anything still unacked would be requeued and counted
    EXPECT_EQ(amqp.Count(queue), 0);
  }
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(runs.size(), static_cast<size_t>(kBefore + kAfter));
  for (int i = 0; i < kBefore + kAfter; ++i) {
    EXPECT_EQ(runs[absl::StrCat("m", i)], 1) << "m" << i;
  }
  std::printf("restart after %zu of %d messages ran\n", ran_before_restart, kBefore);
  for (const char* suffix : {"", "-wal", "-shm"}) std::remove((db_path + suffix).c_str());
}

struct Spec {
  std::string id;
  std::string body;
  enum Kind { kNormal, kDuplicate, kConflict, kPoison } kind = kNormal;
};

// 200 ids, 30 producer duplicates, 5 conflicting payloads and (with_poison) 5 poison messages.
std::vector<Spec> MakeSpecs(bool with_poison) {
  std::vector<Spec> specs;
  for (int i = 0; i < 200; ++i) specs.push_back({absl::StrCat("m", i), absl::StrCat("p", i)});
  for (int i = 0; i < 30; ++i) {
    const int j = i * 6;
    specs.insert(specs.begin() + j + 3,
                 Spec{absl::StrCat("m", j), absl::StrCat("p", j), Spec::kDuplicate});
  }
  for (int i = 0; i < 5; ++i) {
    specs.push_back({absl::StrCat("m", 7 + i * 37), "other", Spec::kConflict});
  }
  if (with_poison) {
    for (int i = 0; i < 5; ++i) {
      specs.insert(specs.begin() + 20 + i * 40, Spec{absl::StrCat("x", i), "?", Spec::kPoison});
    }
  }
  return specs;
}

class KillHarness {
 public:
  KillHarness(std::string mode, std::string path, std::string store_path)
      : mode_(std::move(mode)), path_(std::move(path)), store_path_(std::move(store_path)),
        queue_(Unique(mode_)), outcomes_(::testing::TempDir() + Unique("outcomes")),
        rng_(12345 + getpid()) {}
  ~KillHarness() {
    for (pid_t pid : alive_) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
    std::remove(outcomes_.c_str());
  }

  pid_t Spawn() {
    const std::string port = std::to_string(RabbitPort());
    const pid_t pid = fork();
    if (pid == 0) {
      execl(IDEM_RABBITMQ_WORKER, IDEM_RABBITMQ_WORKER, port.c_str(), queue_.c_str(),
            mode_.c_str(), path_.c_str(), store_path_.c_str(), "600", "3", outcomes_.c_str(),
            nullptr);
      _exit(127);
    }
    alive_.push_back(pid);
    return pid;
  }

  void KillOne() {
    std::uniform_int_distribution<size_t> pick(0, alive_.size() - 1);
    const size_t i = pick(rng_);
    const pid_t pid = alive_[i];
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    killed_.insert(pid);
    alive_.erase(alive_.begin() + static_cast<long>(i));
    Spawn();
  }

  // "id action reason redelivered pid" lines the workers wrote after each carried-out decision.
  std::vector<std::tuple<std::string, std::string, std::string, int, pid_t>> Outcomes() const {
    std::vector<std::tuple<std::string, std::string, std::string, int, pid_t>> out;
    std::ifstream in(outcomes_);
    std::string id, action, reason;
    int redelivered = 0;
    pid_t pid = 0;
    while (in >> id >> action >> reason >> redelivered >> pid) {
      out.emplace_back(id, action, reason, redelivered, pid);
    }
    return out;
  }

  // Publishes `specs` in three chunks with SIGKILLs 20-80 ms apart in between, waits until every
  // id has a final outcome and every queue has stayed empty for a second, then stops the
  // consumers with SIGTERM (closing their channels: anything unacked would be requeued).
  void Run(AmqpTestClient& amqp, const std::vector<Spec>& specs, int consumers, int kills) {
    ASSERT_TRUE(amqp.Declare(queue_));
    for (int i = 0; i < consumers; ++i) Spawn();
    const size_t chunk = (specs.size() + 2) / 3;
    int done_kills = 0;
    std::uniform_int_distribution<int> pause(20, 80);
    for (size_t i = 0; i < specs.size(); i += chunk) {
      for (size_t k = i; k < std::min(specs.size(), i + chunk); ++k) {
        std::vector<std::pair<std::string, std::string>> headers;
        if (specs[k].kind == Spec::kPoison) headers.push_back({"poison", "1"});
        ASSERT_TRUE(amqp.Publish(queue_, specs[k].body, specs[k].id, headers));
      }
      const int kills_now = i + chunk >= specs.size() ? kills - done_kills : kills / 3;
      for (int k = 0; k < kills_now; ++k) {
        std::this_thread::sleep_for(milliseconds(pause(rng_)));
        KillOne();
        ++done_kills;
      }
    }
    std::set<std::string> ids;
    for (const Spec& s : specs) ids.insert(s.id);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(40);
    int empty_checks = 0;
    while (std::chrono::steady_clock::now() < deadline && empty_checks < 10) {
      std::this_thread::sleep_for(milliseconds(100));
      std::set<std::string> final_ids;
      for (const auto& [id, action, reason, r, pid] : Outcomes()) {
        if (action == "ack" || action == "dead_letter") final_ids.insert(id);
      }
      empty_checks = final_ids == ids && AllEmpty(QueueCounts(amqp, queue_)) ? empty_checks + 1 : 0;
    }
    for (pid_t pid : alive_) kill(pid, SIGTERM);
    for (pid_t pid : alive_) {
      int status = 0;
      waitpid(pid, &status, 0);
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "consumer pid " << pid;
    }
    alive_.clear();
    EXPECT_EQ(done_kills, kills);
    const std::map<std::string, int64_t> counts = QueueCounts(amqp, queue_);
    for (const auto& [q, n] : counts) EXPECT_EQ(n, 0) << q << " still holds messages";
  }

  // The dead-letter queue holds exactly the poison messages (max_attempts) and one payload of
  // each conflicting pair (conflict); a kill between a dead letter's confirm and the ack may
  // repeat one, never more than the kills. Returns how many dead letters there were.
  size_t CheckDeadLetters(AmqpTestClient& amqp, const std::vector<Spec>& specs) {
    std::set<std::tuple<std::string, std::string, std::string>> unique;
    std::vector<GotMessage> dead = amqp.Drain(queue_ + ".dead-letter");
    for (const GotMessage& m : dead) {
      unique.insert({m.message_id.value_or("-"), m.body, m.headers.at("x-idem-reason")});
    }
    std::set<std::tuple<std::string, std::string, std::string>> expected_poison;
    std::set<std::string> conflict_ids;
    for (const Spec& s : specs) {
      if (s.kind == Spec::kPoison) expected_poison.insert({s.id, s.body, "max_attempts"});
      if (s.kind == Spec::kConflict) conflict_ids.insert(s.id);
    }
    std::map<std::string, int> conflicts;
    for (const auto& [id, body, reason] : unique) {
      if (reason == "max_attempts") {
        EXPECT_EQ(expected_poison.count({id, body, reason}), 1u) << id;
      } else {
        EXPECT_EQ(reason, "conflict") << id;
        EXPECT_EQ(conflict_ids.count(id), 1u) << id << " dead-lettered as a conflict";
        ++conflicts[id];
      }
    }
    for (const auto& t : expected_poison) EXPECT_EQ(unique.count(t), 1u) << std::get<0>(t);
    for (const std::string& id : conflict_ids) EXPECT_EQ(conflicts[id], 1) << id;
    EXPECT_LE(dead.size(), unique.size() + killed_.size());
    return dead.size();
  }

  const std::set<pid_t>& killed() const { return killed_; }
  const std::string& queue() const { return queue_; }

 private:
  std::string mode_;
  std::string path_;
  std::string store_path_;
  std::string queue_;
  std::string outcomes_;
  std::mt19937 rng_;
  std::vector<pid_t> alive_;
  std::set<pid_t> killed_;
};

TEST(RabbitMqKillTest, LeaseModeNoUnexplainedSecondRun) {
  AmqpTestClient amqp(RabbitPort());
  ASSERT_TRUE(amqp.ok()) << amqp.error();
  const std::string ledger = ::testing::TempDir() + Unique("ledger");
  const std::string store_path = ::testing::TempDir() + Unique("store") + ".db";
  const std::vector<Spec> specs = MakeSpecs(/*with_poison=*/true);
  KillHarness h("lease", ledger, store_path);
  h.Run(amqp, specs, /*consumers=*/3, /*kills=*/8);
  const size_t dead = h.CheckDeadLetters(amqp, specs);
  int redelivered = 0;
  for (const auto& o : h.Outcomes()) redelivered += std::get<3>(o);

  // The effect ledger: every id ran; a second run of an id is explained only by a SIGKILLed
  // process's run before it; the completed record's token is the last run's.
  std::map<std::string, std::vector<std::pair<uint64_t, pid_t>>> runs;
  std::ifstream in(ledger);
  std::string id;
  uint64_t token = 0;
  pid_t pid = 0;
  while (in >> id >> token >> pid) runs[id].push_back({token, pid});
  IDEM_ASSERT_OK_AND_ASSIGN(auto store, NewSqliteStore({.path = store_path}));
  int extra_runs = 0, unexplained = 0;
  for (const Spec& s : specs) {
    if (s.kind == Spec::kPoison) {
      EXPECT_EQ(runs.count(s.id), 0u);
      continue;
    }
    const auto& r = runs[s.id];
    ASSERT_FALSE(r.empty()) << s.id << " never ran";
    IDEM_ASSERT_OK_AND_ASSIGN(std::optional<RecordInfo> info, store->Inspect("rmq-test", s.id));
    ASSERT_TRUE(info.has_value()) << s.id;
    EXPECT_EQ(info->state, RecordState::kCompleted) << s.id;
    EXPECT_EQ(info->token, r.back().first) << s.id << ": a run after the completion";
  }
  for (const auto& [rid, r] : runs) {
    for (size_t k = 0; k + 1 < r.size(); ++k) {
      ++extra_runs;
      if (h.killed().count(r[k].second) == 0) ++unexplained;
    }
  }
  EXPECT_EQ(unexplained, 0);
  EXPECT_GT(redelivered, 0) << "no kill landed on an unacked delivery";
  std::printf("lease mode: %zu messages, %zu kills, %d redeliveries, %d extra runs all explained "
              "by a kill, %zu dead letters\n",
              specs.size(), h.killed().size(), redelivered, extra_runs, dead);
  std::remove(ledger.c_str());
  for (const char* suffix : {"", "-wal", "-shm"}) std::remove((store_path + suffix).c_str());
}

TEST(RabbitMqKillTest, TransactionalModeNoDoubleEffect) {
  AmqpTestClient amqp(RabbitPort());
  ASSERT_TRUE(amqp.ok()) << amqp.error();
  const std::string db_path = ::testing::TempDir() + Unique("tx") + ".db";
  const std::vector<Spec> specs = MakeSpecs(/*with_poison=*/false);
  KillHarness h("tx", db_path, "-");
  h.Run(amqp, specs, /*consumers=*/3, /*kills=*/8);
  const size_t dead = h.CheckDeadLetters(amqp, specs);
  int redelivered = 0, duplicates = 0;
  for (const auto& o : h.Outcomes()) {
    redelivered += std::get<3>(o);
    duplicates += std::get<2>(o) == "duplicate";
  }

  sqlite3* raw = nullptr;
  ASSERT_EQ(sqlite3_open(db_path.c_str(), &raw), SQLITE_OK);
  std::unique_ptr<sqlite3, decltype(&sqlite3_close)> db(raw, &sqlite3_close);
  std::map<std::string, int> effects;
  sqlite3_stmt* stmt = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db.get(), "SELECT id, COUNT(*) FROM effects GROUP BY id", -1,
                               &stmt, nullptr),
            SQLITE_OK);
  while (sqlite3_step(stmt) == SQLITE_ROW) {
    effects[reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0))] =
        sqlite3_column_int(stmt, 1);
  }
  sqlite3_finalize(stmt);
  EXPECT_EQ(effects.size(), 200u);
  for (int i = 0; i < 200; ++i) EXPECT_EQ(effects[absl::StrCat("m", i)], 1) << "m" << i;
  EXPECT_GT(redelivered, 0) << "no kill landed on an unacked delivery";
  std::printf("transactional mode: %zu messages, %zu kills, %d redeliveries, %d duplicates acked, "
              "%zu dead letters\n",
              specs.size(), h.killed().size(), redelivered, duplicates, dead);
  for (const char* suffix : {"", "-wal", "-shm"}) std::remove((db_path + suffix).c_str());
}

}  // namespace
}  // namespace idem

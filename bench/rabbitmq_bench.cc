// Messages/s through the RabbitMQ adapter on a real broker, without idem (a pass-through process
// function: the same consume, prefetch and basic.ack per message) and with idem (Processor on the
// in-memory store, and on SQLite with synchronous=NORMAL), in alternating rounds of one run.
// Prints one line per pattern (medians over the rounds):
//
//   RATIO backend=rabbitmq pattern=<p> raw=<msgs/s> idem=<msgs/s> ratio=<idem/raw>
//
// The stream is bench_util's: 36-byte UUIDs, five new ids then one duplicate, a JSON payload;
// every message is published persistent and confirmed before a round starts (untimed). A round
// is timed from its first delivery to its last ack.
//
//   idem_bench_rabbitmq PORT [MESSAGES] [ROUNDS] [DIR]
//   idem_bench_rabbitmq --probe PORT        exits 0 once an AMQP login works (for the fixture)
#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench_util.h"
#include "idem/memory_store.h"
#include "idem/processor.h"
#include "idem/rabbitmq.h"
#include "idem/sqlite_store.h"

namespace {

struct ConnectionDeleter {
  void operator()(amqp_connection_state_t_* c) const { amqp_destroy_connection(c); }
};
using ConnectionPtr = std::unique_ptr<amqp_connection_state_t_, ConnectionDeleter>;

amqp_bytes_t Bytes(std::string_view s) {
  return amqp_bytes_t{.len = s.size(), .bytes = const_cast<char*>(s.data())};
}

// A publishing connection with confirms; nullptr if the broker does not answer.
ConnectionPtr Connect(int port) {
  ConnectionPtr c(amqp_new_connection());
  amqp_socket_t* socket = amqp_tcp_socket_new(c.get());
  timeval tv{.tv_sec = 2, .tv_usec = 0};
  if (socket == nullptr || amqp_socket_open_noblock(socket, "127.0.0.1", port, &tv) != 0) {
    return nullptr;
  }
  if (amqp_login(c.get(), "/", 0, AMQP_DEFAULT_FRAME_SIZE, 0, AMQP_SASL_METHOD_PLAIN, "guest",
                 "guest")
          .reply_type != AMQP_RESPONSE_NORMAL) {
    return nullptr;
  }
  amqp_channel_open(c.get(), 1);
  if (amqp_get_rpc_reply(c.get()).reply_type != AMQP_RESPONSE_NORMAL) return nullptr;
  amqp_confirm_select(c.get(), 1);
  if (amqp_get_rpc_reply(c.get()).reply_type != AMQP_RESPONSE_NORMAL) return nullptr;
  return c;
}

// Declares `queue` and publishes `ids` to it (persistent, with message-ids), then waits until
// the broker has confirmed them all. Returns false on any failure.
bool Fill(amqp_connection_state_t c, const std::string& queue,
          const std::vector<std::string>& ids) {
  amqp_queue_declare(c, 1, Bytes(queue), 0, 1, 0, 0, amqp_empty_table);
  if (amqp_get_rpc_reply(c).reply_type != AMQP_RESPONSE_NORMAL) return false;
  uint64_t seq = 0;
  for (const std::string& id : ids) {
    amqp_basic_properties_t props{};
    props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG;
    props.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    props.message_id = Bytes(id);
    if (amqp_basic_publish(c, 1, amqp_empty_bytes, Bytes(queue), 0, 0, &props,
                           Bytes(idem::bench::kPayload)) != AMQP_STATUS_OK) {
      return false;
    }
    ++seq;
  }
  uint64_t confirmed = 0;
  while (confirmed < seq) {
    amqp_frame_t frame;
    timeval tv{.tv_sec = 30, .tv_usec = 0};
    if (amqp_simple_wait_frame_noblock(c, &frame, &tv) != AMQP_STATUS_OK) return false;
    if (frame.frame_type != AMQP_FRAME_METHOD) continue;
    if (frame.payload.method.id != AMQP_BASIC_ACK_METHOD) return false;
    const auto* a = static_cast<amqp_basic_ack_t*>(frame.payload.method.decoded);
    confirmed = std::max<uint64_t>(confirmed, a->delivery_tag);
    amqp_maybe_release_buffers(c);
  }
  return true;
}

// Consumes `n` messages of `queue` through a RabbitMqConsumer running `process`; msgs/s from the
// first delivery to the last ack, or -1 on an error.
double Consume(int port, const std::string& queue, uint64_t n, idem::AmqpProcessFn process) {
  idem::RabbitMqOptions o;
  o.port = port;
  o.queue = queue;
  o.prefetch = 256;
  o.poll_timeout = std::chrono::milliseconds(100);
  auto consumer = idem::RabbitMqConsumer::Create(o, std::move(process));
  if (!consumer.ok()) return -1;
  std::chrono::steady_clock::time_point start;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while ((*consumer)->stats().acked < n) {
    absl::StatusOr<int> got = (*consumer)->PollOnce();
    if (!got.ok()) {
      std::fprintf(stderr, "rabbitmq bench: %s\n", got.status().ToString().c_str());
      return -1;
    }
    if (*got > 0 && (*consumer)->stats().deliveries == 1) start = std::chrono::steady_clock::now();
    if (std::chrono::steady_clock::now() > deadline) return -1;
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return static_cast<double>(n - 1) / secs;  // n - 1 intervals after the first delivery
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--probe") {
    return Connect(std::atoi(argv[2])) == nullptr ? 1 : 0;
  }
  if (argc < 2) return std::fprintf(stderr, "usage: idem_bench_rabbitmq PORT [N] [ROUNDS] [DIR]\n"), 2;
  const int port = std::atoi(argv[1]);
  const uint64_t n = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 20'000;
  const int rounds = argc > 3 ? std::atoi(argv[3]) : 3;
  const std::string dir = argc > 4 ? argv[4] : "/tmp";
  ConnectionPtr pub = Connect(port);
  if (pub == nullptr) return std::fprintf(stderr, "rabbitmq bench: no broker on %d\n", port), 1;

  idem::bench::MessageStream stream;
  auto ids_for_round = [&] {
    std::vector<std::string> ids;
    std::vector<idem::Message> msgs;
    while (ids.size() < n) {  // Fill takes at most 12288 at a time
      msgs.resize(std::min<uint64_t>(n - ids.size(), 4096));
      stream.Fill(msgs);
      for (const idem::Message& m : msgs) ids.emplace_back(m.id);
    }
    return ids;
  };
  // Without idem: the adapter's loop with a process function that only runs the handler.
  auto raw = [](const idem::Message&, const idem::AmqpDelivery&) -> absl::StatusOr<idem::ProcessResult> {
    idem::HandlerContext ctx(nullptr, idem::bench::kScope, "", 1, 1);
    idem::bench::TrivialHandler(ctx);
    return idem::ProcessResult{.outcome = idem::Outcome::kProcessed};
  };

  const std::string db_path = absl::StrCat(dir, "/rabbitmq-bench-", getpid(), ".db");
  struct Pattern {
    std::string name;
    std::unique_ptr<idem::DedupStore> store;
  };
  std::vector<Pattern> patterns;
  patterns.push_back({"lease-memory", *idem::NewMemoryStore()});
  auto sqlite = idem::NewSqliteStore({.path = db_path, .synchronous = idem::SqliteSynchronous::kNormal});
  if (!sqlite.ok()) return std::fprintf(stderr, "%s\n", sqlite.status().ToString().c_str()), 1;
  patterns.push_back({"lease-sqlite-normal", std::move(*sqlite)});

  for (Pattern& p : patterns) {
    auto processor = idem::Processor::Create(*p.store, std::string(idem::bench::kScope));
    if (!processor.ok()) return 1;
    const idem::Processor* proc = &*processor;
    auto with_idem = [proc](const idem::Message& m, const idem::AmqpDelivery&) {
      return proc->Process(m, idem::bench::TrivialHandler);
    };
    std::vector<double> raw_rates, idem_rates;
    for (int r = 0; r < rounds; ++r) {
      // Alternate which side goes first: drift in the machine falls on both alike.
      for (int side = 0; side < 2; ++side) {
        const bool idem_side = (side + r) % 2 == 1;
        const std::string queue = absl::StrCat("bench-", p.name, "-", getpid(), "-", r, "-", side);
        if (!Fill(pub.get(), queue, ids_for_round())) {
          return std::fprintf(stderr, "rabbitmq bench: publishing failed\n"), 1;
        }
        const double rate = idem_side ? Consume(port, queue, n, with_idem) : Consume(port, queue, n, raw);
        if (rate < 0) return 1;
        (idem_side ? idem_rates : raw_rates).push_back(rate);
        // The queue the round used (the broker is private to the run: its data goes with it).
        amqp_queue_delete(pub.get(), 1, Bytes(queue), 0, 0);
        (void)amqp_get_rpc_reply(pub.get());
      }
    }
    const double raw_rate = Median(raw_rates), idem_rate = Median(idem_rates);
    std::printf("RATIO backend=rabbitmq pattern=%s raw=%.0f idem=%.0f ratio=%.3f\n",
                p.name.c_str(), raw_rate, idem_rate, idem_rate / raw_rate);
    std::fflush(stdout);
  }
  for (const char* suffix : {"", "-wal", "-shm"}) std::remove((db_path + suffix).c_str());
  return 0;
}

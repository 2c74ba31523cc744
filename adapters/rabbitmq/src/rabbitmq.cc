#include "idem/rabbitmq.h"

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <sys/time.h>

#include <algorithm>
#include <charconv>
#include <deque>
#include <exception>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace idem {
namespace {

using std::chrono::milliseconds;
using SteadyTime = std::chrono::steady_clock::time_point;

constexpr amqp_channel_t kChannel = 1;
// The header that carries how many tries a retry copy has had (set by this adapter).
constexpr std::string_view kTriesHeader = "x-idem-tries";

struct ConnectionDeleter {
  void operator()(amqp_connection_state_t_* c) const { amqp_destroy_connection(c); }
};
using ConnectionPtr = std::unique_ptr<amqp_connection_state_t_, ConnectionDeleter>;

// Destroys an envelope filled by amqp_consume_message when the delivery is done with.
class EnvelopeGuard {
 public:
  explicit EnvelopeGuard(amqp_envelope_t* e) : e_(e) {}
  ~EnvelopeGuard() { amqp_destroy_envelope(e_); }
  EnvelopeGuard(const EnvelopeGuard&) = delete;
  EnvelopeGuard& operator=(const EnvelopeGuard&) = delete;

 private:
  amqp_envelope_t* e_;
};

std::string ToString(amqp_bytes_t b) {
  return b.len == 0 ? std::string() : std::string(static_cast<const char*>(b.bytes), b.len);
}
// A view of `s` for librabbitmq; valid while `s` lives and is not modified.
amqp_bytes_t Bytes(std::string_view s) {
  return amqp_bytes_t{.len = s.size(), .bytes = const_cast<char*>(s.data())};
}

timeval ToTimeval(milliseconds d) {
  const int64_t ms = std::max<int64_t>(d.count(), 0);
  return timeval{.tv_sec = static_cast<time_t>(ms / 1000),
                 .tv_usec = static_cast<suseconds_t>((ms % 1000) * 1000)};
}

// RabbitMQ's reply codes to status codes: the ones Run() treats as final get their own codes.
absl::Status CodeStatus(int code, const std::string& what, const std::string& text) {
  const std::string msg = absl::StrCat("rabbitmq: ", what, ": ", code, " ", text);
  switch (code) {
    case 403:  // ACCESS_REFUSED (also a bad login)
    case 530:  // NOT_ALLOWED (e.g. vhost access)
      return absl::PermissionDeniedError(msg);
    case 404:  // NOT_FOUND
      return absl::NotFoundError(msg);
    case 406:  // PRECONDITION_FAILED: a queue exists with other arguments
      return absl::FailedPreconditionError(msg);
    default:   // 320 CONNECTION_FORCED (broker shutdown) and the rest: reconnect
      return absl::UnavailableError(msg);
  }
}

absl::Status MethodStatus(const amqp_method_t& m, const std::string& what) {
  if (m.id == AMQP_CONNECTION_CLOSE_METHOD) {
    const auto* c = static_cast<const amqp_connection_close_t*>(m.decoded);
    return CodeStatus(c->reply_code, absl::StrCat(what, " (connection closed)"),
                      ToString(c->reply_text));
  }
  if (m.id == AMQP_CHANNEL_CLOSE_METHOD) {
    const auto* c = static_cast<const amqp_channel_close_t*>(m.decoded);
    return CodeStatus(c->reply_code, absl::StrCat(what, " (channel closed)"),
                      ToString(c->reply_text));
  }
  return absl::UnavailableError(absl::StrCat("rabbitmq: ", what, ": unexpected method 0x",
                                             absl::Hex(m.id)));
}

absl::Status ReplyStatus(const amqp_rpc_reply_t& r, const std::string& what) {
  switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL:
      return absl::OkStatus();
    case AMQP_RESPONSE_NONE:
      return absl::UnavailableError(absl::StrCat("rabbitmq: ", what, ": no reply"));
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
      if (r.library_error == AMQP_STATUS_TIMEOUT) {
        return absl::DeadlineExceededError(absl::StrCat("rabbitmq: ", what, ": timed out"));
      }
      return absl::UnavailableError(
          absl::StrCat("rabbitmq: ", what, ": ", amqp_error_string2(r.library_error)));
    case AMQP_RESPONSE_SERVER_EXCEPTION:
      return MethodStatus(r.reply, what);
  }
  return absl::UnknownError(absl::StrCat("rabbitmq: ", what, ": unknown reply type"));
}

absl::Status LibStatus(int rc, const std::string& what) {
  if (rc == AMQP_STATUS_OK) return absl::OkStatus();
  if (rc == AMQP_STATUS_TIMEOUT) {
    return absl::DeadlineExceededError(absl::StrCat("rabbitmq: ", what, ": timed out"));
  }
  return absl::UnavailableError(absl::StrCat("rabbitmq: ", what, ": ", amqp_error_string2(rc)));
}

// A header value as text: strings and byte arrays as they are, integers and booleans in decimal;
// nullopt for other kinds (tables, arrays, floats, decimals, timestamps, void).
std::optional<std::string> FieldText(const amqp_field_value_t& v) {
  switch (v.kind) {
    case AMQP_FIELD_KIND_UTF8:
    case AMQP_FIELD_KIND_BYTES:
      return ToString(v.value.bytes);
    case AMQP_FIELD_KIND_BOOLEAN:
      return v.value.boolean ? "1" : "0";
    case AMQP_FIELD_KIND_I8:
      return std::to_string(v.value.i8);
    case AMQP_FIELD_KIND_U8:
      return std::to_string(v.value.u8);
    case AMQP_FIELD_KIND_I16:
      return std::to_string(v.value.i16);
    case AMQP_FIELD_KIND_U16:
      return std::to_string(v.value.u16);
    case AMQP_FIELD_KIND_I32:
      return std::to_string(v.value.i32);
    case AMQP_FIELD_KIND_U32:
      return std::to_string(v.value.u32);
    case AMQP_FIELD_KIND_I64:
      return std::to_string(v.value.i64);
    case AMQP_FIELD_KIND_U64:
      return std::to_string(v.value.u64);
    default:
      return std::nullopt;
  }
}

std::optional<uint64_t> ParseU64(std::string_view s) {
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || s.empty()) return std::nullopt;
  return v;
}

AmqpDelivery ToDelivery(const amqp_envelope_t& env, RetryMode mode) {
  AmqpDelivery d;
  d.delivery_tag = env.delivery_tag;
  d.redelivered = env.redelivered != 0;
  d.exchange = ToString(env.exchange);
  d.routing_key = ToString(env.routing_key);
  d.body = ToString(env.message.body);
  const amqp_basic_properties_t& p = env.message.properties;
  if (p._flags & AMQP_BASIC_MESSAGE_ID_FLAG) d.message_id = ToString(p.message_id);
  if (p._flags & AMQP_BASIC_CORRELATION_ID_FLAG) d.correlation_id = ToString(p.correlation_id);
  if (p._flags & AMQP_BASIC_HEADERS_FLAG) {
    for (int i = 0; i < p.headers.num_entries; ++i) {
      const amqp_table_entry_t& e = p.headers.entries[i];
      std::optional<std::string> v = FieldText(e.value);
      if (v.has_value()) d.headers.emplace_back(ToString(e.key), std::move(*v));
    }
  }
  if (mode == RetryMode::kRetryQueue) {
    if (std::optional<std::string_view> t = d.Header(kTriesHeader); t.has_value()) {
      if (std::optional<uint64_t> n = ParseU64(*t); n.has_value() && *n < 0xFFFFFFFEu) {
        d.tries = static_cast<uint32_t>(*n) + 1;
      }
    }
  } else if (d.redelivered) {
    d.tries = 2;  // a requeued message carries no count of its own
  }
  return d;
}

// The headers of a republished copy: the original table (any kinds, shallow copies that point
// into the envelope, which must outlive this) minus the names given here, plus those as long
// strings or integers. Owns copies of the added names and values, so the entries stay valid.
class HeaderTable {
 public:
  HeaderTable(const amqp_basic_properties_t& p,
              std::vector<std::pair<std::string, std::string>> text,
              std::vector<std::pair<std::string, int64_t>> ints)
      : text_(std::move(text)), ints_(std::move(ints)) {
    auto replaced = [&](amqp_bytes_t key) {
      const std::string_view k(static_cast<const char*>(key.bytes), key.len);
      for (const auto& [name, v] : text_) {
        if (name == k) return true;
      }
      for (const auto& [name, v] : ints_) {
        if (name == k) return true;
      }
      return false;
    };
    if (p._flags & AMQP_BASIC_HEADERS_FLAG) {
      for (int i = 0; i < p.headers.num_entries; ++i) {
        if (!replaced(p.headers.entries[i].key)) entries_.push_back(p.headers.entries[i]);
      }
    }
    for (const auto& [name, v] : text_) {
      amqp_table_entry_t e{};
      e.key = Bytes(name);
      e.value.kind = AMQP_FIELD_KIND_UTF8;
      e.value.value.bytes = Bytes(v);
      entries_.push_back(e);
    }
    for (const auto& [name, v] : ints_) {
      amqp_table_entry_t e{};
      e.key = Bytes(name);
      e.value.kind = AMQP_FIELD_KIND_I64;
      e.value.value.i64 = v;
      entries_.push_back(e);
    }
  }
  HeaderTable(const HeaderTable&) = delete;
  HeaderTable& operator=(const HeaderTable&) = delete;

  amqp_table_t table() {
    return amqp_table_t{.num_entries = static_cast<int>(entries_.size()),
                        .entries = entries_.empty() ? nullptr : entries_.data()};
  }

 private:
  const std::vector<std::pair<std::string, std::string>> text_;
  const std::vector<std::pair<std::string, int64_t>> ints_;
  std::vector<amqp_table_entry_t> entries_;
};

absl::Status ValidateOptions(const RabbitMqOptions& o) {
  if (o.queue.empty()) return absl::InvalidArgumentError("rabbitmq: queue must be set");
  if (o.host.empty() || o.port <= 0 || o.port > 65535) {
    return absl::InvalidArgumentError("rabbitmq: host and a port in 1..65535 must be set");
  }
  if (o.prefetch == 0) return absl::InvalidArgumentError("rabbitmq: prefetch must be >= 1");
  if (o.connect_timeout.count() <= 0 || o.poll_timeout.count() <= 0 ||
      o.confirm_timeout.count() <= 0 || o.heartbeat.count() < 0 ||
      o.heartbeat.count() > 65535) {
    return absl::InvalidArgumentError(
        "rabbitmq: connect_timeout, poll_timeout and confirm_timeout must be positive, "
        "heartbeat in 0..65535 s");
  }
  if (o.version_key_header.empty() != o.version_header.empty()) {
    return absl::InvalidArgumentError(
        "rabbitmq: version_key_header and version_header go together");
  }
  milliseconds last{0};
  for (milliseconds t : o.retry_tiers) {
    if (t <= last || t.count() > 0xFFFFFFFFll) {
      return absl::InvalidArgumentError(
          "rabbitmq: retry_tiers must be positive, strictly ascending and fit 32 bits");
    }
    last = t;
  }
  return OutcomePolicy::ValidateOptions(o.policy);
}

}  // namespace

std::optional<std::string_view> AmqpDelivery::Header(std::string_view name) const {
  for (const auto& [k, v] : headers) {
    if (k == name) return std::string_view(v);
  }
  return std::nullopt;
}

class RabbitMqConsumer::Impl {
 public:
  Impl(const RabbitMqOptions& o, AmqpProcessFn process)
      : o_(o), process_(std::move(process)), policy_(o.policy) {
    dlx_ = o.dead_letter_exchange.empty() ? o.queue + ".dead-letter" : o.dead_letter_exchange;
    dlq_ = o.dead_letter_queue.empty() ? o.queue + ".dead-letter" : o.dead_letter_queue;
    tiers_ = o.retry_tiers;
    if (tiers_.empty()) {
      for (int64_t ms = 50; ms <= 51'200; ms *= 2) tiers_.push_back(milliseconds(ms));
    }
  }
  ~Impl() { Drop(/*graceful=*/true); }

  milliseconds TierFor(milliseconds delay) const {
    for (milliseconds t : tiers_) {
      if (t >= delay) return t;
    }
    return tiers_.back();
  }
  std::string TierQueue(milliseconds tier) const {
    return absl::StrCat(o_.queue, ".retry.", tier.count(), "ms");
  }

  absl::StatusOr<int> PollOnce(RabbitMqStats& stats);

 private:
  absl::StatusOr<ConnectionPtr> Open(int heartbeat_s) const;
  absl::Status Connect(RabbitMqStats& stats);
  absl::Status Declare();
  void Drop(bool graceful);
  absl::Status NackDue(RabbitMqStats& stats);
  absl::Status Handle(const amqp_envelope_t& env, RabbitMqStats& stats);
  absl::Status Carry(const amqp_envelope_t& env, const AmqpDelivery& d, const Decision& decision,
                     RabbitMqStats& stats);
  absl::Status Publish(const std::string& exchange, const std::string& routing_key,
                       const amqp_basic_properties_t& props, amqp_bytes_t body);
  absl::Status Ack(uint64_t tag, RabbitMqStats& stats);

  const RabbitMqOptions& o_;
  AmqpProcessFn process_;
  OutcomePolicy policy_;
  std::string dlx_;
  std::string dlq_;
  std::vector<milliseconds> tiers_;

  ConnectionPtr consume_;  // deliveries and acks
  ConnectionPtr publish_;  // confirmed publishes: dead letters and retry copies
  uint64_t next_publish_seq_ = 1;
  // kNackRequeue: deliveries held unacked until their delay ends, in arrival order.
  struct Held {
    SteadyTime due;
    uint64_t tag;
  };
  std::deque<Held> held_;
};

absl::StatusOr<ConnectionPtr> RabbitMqConsumer::Impl::Open(int heartbeat_s) const {
  ConnectionPtr c(amqp_new_connection());
  if (c == nullptr) return absl::ResourceExhaustedError("rabbitmq: cannot allocate a connection");
  amqp_socket_t* socket = amqp_tcp_socket_new(c.get());  // owned by the connection
  if (socket == nullptr) return absl::ResourceExhaustedError("rabbitmq: cannot allocate a socket");
  timeval tv = ToTimeval(o_.connect_timeout);
  const std::string where = absl::StrCat("connect to ", o_.host, ":", o_.port);
  if (absl::Status s = LibStatus(amqp_socket_open_noblock(socket, o_.host.c_str(), o_.port, &tv),
                                 where);
      !s.ok()) {
    return s;
  }
  // Bounds the login and every synchronous RPC (declare, qos, consume, close).
  (void)amqp_set_handshake_timeout(c.get(), &tv);
  (void)amqp_set_rpc_timeout(c.get(), &tv);
  if (absl::Status s = ReplyStatus(
          amqp_login(c.get(), o_.vhost.c_str(), 0, AMQP_DEFAULT_FRAME_SIZE, heartbeat_s,
                     AMQP_SASL_METHOD_PLAIN, o_.user.c_str(), o_.password.c_str()),
          absl::StrCat(where, ": login"));
      !s.ok()) {
    return s;
  }
  amqp_channel_open(c.get(), kChannel);
  if (absl::Status s = ReplyStatus(amqp_get_rpc_reply(c.get()), "channel.open"); !s.ok()) {
    return s;
  }
  return c;
}

absl::Status RabbitMqConsumer::Impl::Declare() {
  amqp_connection_state_t c = consume_.get();
  amqp_queue_declare(c, kChannel, Bytes(o_.queue), 0, /*durable=*/1, 0, 0, amqp_empty_table);
  if (absl::Status s = ReplyStatus(amqp_get_rpc_reply(c), "declare " + o_.queue); !s.ok()) {
    return s;
  }
  amqp_exchange_declare(c, kChannel, Bytes(dlx_), amqp_cstring_bytes("direct"), 0,
                        /*durable=*/1, 0, 0, amqp_empty_table);
  if (absl::Status s = ReplyStatus(amqp_get_rpc_reply(c), "declare exchange " + dlx_); !s.ok()) {
    return s;
  }
  amqp_queue_declare(c, kChannel, Bytes(dlq_), 0, 1, 0, 0, amqp_empty_table);
  if (absl::Status s = ReplyStatus(amqp_get_rpc_reply(c), "declare " + dlq_); !s.ok()) return s;
  amqp_queue_bind(c, kChannel, Bytes(dlq_), Bytes(dlx_), Bytes(o_.queue), amqp_empty_table);
  if (absl::Status s = ReplyStatus(amqp_get_rpc_reply(c), "bind " + dlq_); !s.ok()) return s;
  if (o_.retry_mode != RetryMode::kRetryQueue) return absl::OkStatus();
  // Each tier: a queue-level TTL (FIFO expiry, no head-of-line blocking by longer delays), and
  // dead-lettering back to the consumed queue through the default exchange.
  static constexpr std::string_view kTtl = "x-message-ttl", kDlx = "x-dead-letter-exchange",
                                    kDlk = "x-dead-letter-routing-key";
  for (milliseconds tier : tiers_) {
    amqp_table_entry_t args[3] = {};
    args[0].key = Bytes(kTtl);
    args[0].value.kind = AMQP_FIELD_KIND_I64;
    args[0].value.value.i64 = tier.count();
    args[1].key = Bytes(kDlx);
    args[1].value.kind = AMQP_FIELD_KIND_UTF8;
    args[1].value.value.bytes = Bytes("");
    args[2].key = Bytes(kDlk);
    args[2].value.kind = AMQP_FIELD_KIND_UTF8;
    args[2].value.value.bytes = Bytes(o_.queue);
    const std::string name = TierQueue(tier);
    amqp_queue_declare(c, kChannel, Bytes(name), 0, 1, 0, 0,
                       amqp_table_t{.num_entries = 3, .entries = args});
    if (absl::Status s = ReplyStatus(amqp_get_rpc_reply(c), "declare " + name); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status RabbitMqConsumer::Impl::Connect(RabbitMqStats& stats) {
  absl::StatusOr<ConnectionPtr> c = Open(static_cast<int>(o_.heartbeat.count()));
  if (!c.ok()) return c.status();
  consume_ = std::move(*c);
  if (o_.declare_topology) {
    if (absl::Status s = Declare(); !s.ok()) return s;
  }
  amqp_basic_qos(consume_.get(), kChannel, 0, o_.prefetch, 0);
  if (absl::Status s = ReplyStatus(amqp_get_rpc_reply(consume_.get()), "basic.qos"); !s.ok()) {
    return s;
  }
  amqp_basic_consume(consume_.get(), kChannel, Bytes(o_.queue), amqp_empty_bytes, 0,
                     /*no_ack=*/0, 0, amqp_empty_table);
  if (absl::Status s = ReplyStatus(amqp_get_rpc_reply(consume_.get()), "consume " + o_.queue);
      !s.ok()) {
    return s;
  }
  // No heartbeat on the publishing connection: it is idle between dead letters, and a dead
  // broker shows up as a failed publish or a confirm timeout.
  absl::StatusOr<ConnectionPtr> p = Open(0);
  if (!p.ok()) return p.status();
  publish_ = std::move(*p);
  amqp_confirm_select(publish_.get(), kChannel);
  if (absl::Status s = ReplyStatus(amqp_get_rpc_reply(publish_.get()), "confirm.select");
      !s.ok()) {
    return s;
  }
  next_publish_seq_ = 1;
  ++stats.connects;
  return absl::OkStatus();
}

void RabbitMqConsumer::Impl::Drop(bool graceful) {
  // The broker requeues every unacked delivery of a closed channel, the held ones included.
  held_.clear();
  for (ConnectionPtr* c : {&consume_, &publish_}) {
    if (*c == nullptr) continue;
    if (graceful) {
      (void)amqp_channel_close(c->get(), kChannel, AMQP_REPLY_SUCCESS);
      (void)amqp_connection_close(c->get(), AMQP_REPLY_SUCCESS);
    }
    c->reset();
  }
}

absl::Status RabbitMqConsumer::Impl::Ack(uint64_t tag, RabbitMqStats& stats) {
  if (absl::Status s = LibStatus(amqp_basic_ack(consume_.get(), kChannel, tag, 0), "basic.ack");
      !s.ok()) {
    return s;
  }
  ++stats.acked;
  return absl::OkStatus();
}

absl::Status RabbitMqConsumer::Impl::NackDue(RabbitMqStats& stats) {
  const SteadyTime now = std::chrono::steady_clock::now();
  for (auto it = held_.begin(); it != held_.end();) {
    if (it->due > now) {
      ++it;
      continue;
    }
    if (absl::Status s = LibStatus(
            amqp_basic_nack(consume_.get(), kChannel, it->tag, 0, /*requeue=*/1), "basic.nack");
        !s.ok()) {
      return s;
    }
    ++stats.requeued;
    it = held_.erase(it);
  }
  return absl::OkStatus();
}

absl::Status RabbitMqConsumer::Impl::Publish(const std::string& exchange,
                                             const std::string& routing_key,
                                             const amqp_basic_properties_t& props,
                                             amqp_bytes_t body) {
  amqp_connection_state_t c = publish_.get();
  // mandatory: a copy that no queue receives comes back (basic.return) and counts as a failure.
  if (absl::Status s = LibStatus(amqp_basic_publish(c, kChannel, Bytes(exchange),
                                                    Bytes(routing_key), /*mandatory=*/1, 0,
                                                    &props, body),
                                 "publish");
      !s.ok()) {
    return s;
  }
  const uint64_t seq = next_publish_seq_++;
  bool returned = false;
  const SteadyTime deadline = std::chrono::steady_clock::now() + o_.confirm_timeout;
  while (true) {
    const auto left = std::chrono::duration_cast<milliseconds>(deadline -
                                                               std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      return absl::DeadlineExceededError("rabbitmq: publisher confirm timed out");
    }
    timeval tv = ToTimeval(left);
    amqp_frame_t frame;
    if (absl::Status s = LibStatus(amqp_simple_wait_frame_noblock(c, &frame, &tv),
                                   "wait for publisher confirm");
        !s.ok()) {
      return s;
    }
    if (frame.frame_type != AMQP_FRAME_METHOD) continue;  // content of a basic.return
    const amqp_method_t& m = frame.payload.method;
    if (m.id == AMQP_BASIC_RETURN_METHOD) {
      returned = true;  // the broker still confirms it afterwards
      continue;
    }
    if (m.id == AMQP_BASIC_ACK_METHOD || m.id == AMQP_BASIC_NACK_METHOD) {
      uint64_t tag = 0;
      bool multiple = false;
      if (m.id == AMQP_BASIC_ACK_METHOD) {
        const auto* a = static_cast<const amqp_basic_ack_t*>(m.decoded);
        tag = a->delivery_tag;
        multiple = a->multiple != 0;
      } else {
        const auto* n = static_cast<const amqp_basic_nack_t*>(m.decoded);
        tag = n->delivery_tag;
        multiple = n->multiple != 0;
      }
      if (tag < seq && !(multiple && tag >= seq)) continue;  // an earlier publish's confirm
      amqp_maybe_release_buffers(c);
      if (m.id == AMQP_BASIC_NACK_METHOD) {
        return absl::UnavailableError("rabbitmq: the broker nacked the publish to " + routing_key);
      }
      if (returned) {
        return absl::UnavailableError(absl::StrCat("rabbitmq: publish to exchange '", exchange,
                                                   "' key '", routing_key,
                                                   "' was unroutable (no queue bound)"));
      }
      return absl::OkStatus();
    }
    return MethodStatus(m, "publish");
  }
}

absl::Status RabbitMqConsumer::Impl::Carry(const amqp_envelope_t& env, const AmqpDelivery& d,
                                           const Decision& decision, RabbitMqStats& stats) {
  switch (decision.action) {
    case Action::kAck:
      return Ack(d.delivery_tag, stats);
    case Action::kDeadLetter: {
      HeaderTable headers(env.message.properties,
                          {{"x-idem-reason", decision.reason},
                           {"x-idem-source-queue", o_.queue},
                           {"x-idem-source-exchange", d.exchange},
                           {"x-idem-source-routing-key", d.routing_key}},
                          {{"x-idem-source-redelivered", d.redelivered ? 1 : 0}});
      amqp_basic_properties_t props = env.message.properties;
      props._flags |= AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
      props._flags &= ~AMQP_BASIC_EXPIRATION_FLAG;
      props.headers = headers.table();
      props.delivery_mode = AMQP_DELIVERY_PERSISTENT;
      if (absl::Status s = Publish(dlx_, o_.queue, props, env.message.body); !s.ok()) return s;
      ++stats.dead_lettered;
      return Ack(d.delivery_tag, stats);
    }
    case Action::kRedeliver:
    case Action::kRetry: {
      if (o_.retry_mode == RetryMode::kNackRequeue) {
        held_.push_back({std::chrono::steady_clock::now() + decision.delay, d.delivery_tag});
        return absl::OkStatus();
      }
      HeaderTable headers(env.message.properties, {{"x-idem-retry-reason", decision.reason}},
                          {{std::string(kTriesHeader), static_cast<int64_t>(d.tries)}});
      amqp_basic_properties_t props = env.message.properties;
      props._flags |= AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
      // A per-message TTL would override the tier's; the tier decides.
      props._flags &= ~AMQP_BASIC_EXPIRATION_FLAG;
      props.headers = headers.table();
      props.delivery_mode = AMQP_DELIVERY_PERSISTENT;
      if (absl::Status s = Publish("", TierQueue(TierFor(decision.delay)), props,
                                   env.message.body);
          !s.ok()) {
        return s;
      }
      ++stats.retried;
      return Ack(d.delivery_tag, stats);
    }
  }
  return absl::InternalError("rabbitmq: unknown action");
}

absl::Status RabbitMqConsumer::Impl::Handle(const amqp_envelope_t& env, RabbitMqStats& stats) {
  const AmqpDelivery d = ToDelivery(env, o_.retry_mode);
  ++stats.deliveries;
  if (d.redelivered) ++stats.redelivered;

  Decision decision;
  std::optional<std::string> id;
  if (o_.id_fn) {
    id = o_.id_fn(d);
  } else if (!o_.id_header.empty()) {
    if (std::optional<std::string_view> h = d.Header(o_.id_header); h.has_value()) id = *h;
  } else {
    id = d.message_id;
  }
  std::optional<VersionStamp> version;
  std::string invalid;
  if (!o_.version_key_header.empty()) {
    std::optional<std::string_view> key = d.Header(o_.version_key_header);
    std::optional<std::string_view> v = d.Header(o_.version_header);
    std::optional<uint64_t> n = v.has_value() ? ParseU64(*v) : std::nullopt;
    if (!key.has_value() || !n.has_value()) {
      invalid = absl::StrCat("invalid: headers ", o_.version_key_header, " and ",
                             o_.version_header, " (a decimal uint64) are required");
    } else {
      version = VersionStamp{.key = *key, .version = *n};
    }
  }
  if (!id.has_value() || id->empty()) {
    // Never processed without dedup: nothing could recognise its redelivery.
    ++stats.missing_ids;
    decision = Decision{.action = Action::kDeadLetter,
                        .reason = o_.id_fn             ? "missing_id: the id function gave none"
                                  : o_.id_header.empty() ? "missing_id: no message-id property"
                                                         : "missing_id: no header " + o_.id_header};
  } else if (!invalid.empty()) {
    decision = Decision{.action = Action::kDeadLetter, .reason = invalid};
  } else {
    const Message m{.id = *id, .payload = d.body, .version = version};
    absl::StatusOr<ProcessResult> result = absl::UnknownError("not run");
    std::optional<std::string> handler_error;
    try {
      result = process_(m, d);
    } catch (const std::exception& e) {
      handler_error = e.what();
    } catch (...) {
      handler_error = "unknown exception";
    }
    if (handler_error.has_value()) {
      ++stats.handler_errors;
      decision = policy_.DecideHandlerError(*handler_error, d.tries);
    } else {
      decision = policy_.Decide(result, d.tries);
      if (!result.ok()) {
        ++stats.store_errors;
      } else {
        switch (result->outcome) {
          case Outcome::kProcessed: ++stats.processed; break;
          case Outcome::kDuplicate: ++stats.duplicates; break;
          case Outcome::kStale: ++stats.stale; break;
          case Outcome::kInProgress: ++stats.in_progress; break;
          case Outcome::kConflict: ++stats.conflicts; break;
          case Outcome::kDeadLettered: break;  // counted when the dead letter is confirmed
        }
      }
    }
  }
  if (absl::Status s = Carry(env, d, decision, stats); !s.ok()) return s;
  if (o_.on_decision) o_.on_decision(d, decision);
  return absl::OkStatus();
}

absl::StatusOr<int> RabbitMqConsumer::Impl::PollOnce(RabbitMqStats& stats) {
  if (consume_ == nullptr || publish_ == nullptr) {
    if (absl::Status s = Connect(stats); !s.ok()) {
      Drop(/*graceful=*/false);
      return s;
    }
  }
  if (absl::Status s = NackDue(stats); !s.ok()) {
    Drop(false);
    return s;
  }
  milliseconds wait = o_.poll_timeout;
  if (!held_.empty()) {
    const SteadyTime first =
        std::min_element(held_.begin(), held_.end(),
                         [](const Held& a, const Held& b) { return a.due < b.due; })
            ->due;
    wait = std::clamp(std::chrono::duration_cast<milliseconds>(first -
                                                               std::chrono::steady_clock::now()),
                      milliseconds(1), wait);
  }
  amqp_maybe_release_buffers(consume_.get());
  amqp_envelope_t env;
  timeval tv = ToTimeval(wait);
  const amqp_rpc_reply_t r = amqp_consume_message(consume_.get(), &env, &tv, 0);
  if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && r.library_error == AMQP_STATUS_TIMEOUT) {
    return 0;
  }
  if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
      r.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
    // Something other than a delivery: read it. A channel or connection close (broker shutdown,
    // a refused ack) or a consumer cancel (queue deleted) ends this connection.
    amqp_frame_t frame;
    absl::Status s = LibStatus(amqp_simple_wait_frame(consume_.get(), &frame), "read frame");
    if (s.ok() && frame.frame_type == AMQP_FRAME_METHOD) {
      const amqp_method_t& m = frame.payload.method;
      if (m.id == AMQP_BASIC_CANCEL_METHOD) {
        s = absl::UnavailableError("rabbitmq: the broker cancelled the consumer of " + o_.queue);
      } else if (m.id == AMQP_CHANNEL_CLOSE_METHOD || m.id == AMQP_CONNECTION_CLOSE_METHOD) {
        s = MethodStatus(m, "consume");
      } else {
        return 0;  // e.g. basic.qos-ok stragglers: nothing to do
      }
    }
    if (!s.ok()) {
      Drop(false);
      return s;
    }
    return 0;
  }
  if (absl::Status s = ReplyStatus(r, "consume"); !s.ok()) {
    Drop(false);
    return s;
  }
  EnvelopeGuard guard(&env);
  if (absl::Status s = Handle(env, stats); !s.ok()) {
    Drop(false);
    return s;
  }
  return 1;
}

RabbitMqConsumer::RabbitMqConsumer(RabbitMqOptions options, AmqpProcessFn process)
    : options_(std::move(options)),
      impl_(std::make_unique<Impl>(options_, std::move(process))) {}

RabbitMqConsumer::~RabbitMqConsumer() = default;

absl::StatusOr<std::unique_ptr<RabbitMqConsumer>> RabbitMqConsumer::Create(
    RabbitMqOptions options, AmqpProcessFn process) {
  if (absl::Status s = ValidateOptions(options); !s.ok()) return s;
  if (!process) return absl::InvalidArgumentError("rabbitmq: a process function is required");
  return std::unique_ptr<RabbitMqConsumer>(
      new RabbitMqConsumer(std::move(options), std::move(process)));
}

absl::StatusOr<std::unique_ptr<RabbitMqConsumer>> RabbitMqConsumer::Create(
    RabbitMqOptions options, const Processor& processor, AmqpHandler handler) {
  if (!handler) return absl::InvalidArgumentError("rabbitmq: a handler is required");
  const Processor* p = &processor;
  return Create(std::move(options),
                [p, handler = std::move(handler)](const Message& m, const AmqpDelivery& d) {
                  return p->Process(m, [&](HandlerContext& ctx) { handler(d, ctx); });
                });
}

absl::StatusOr<int> RabbitMqConsumer::PollOnce() { return impl_->PollOnce(stats_); }

absl::Status RabbitMqConsumer::Run(const std::atomic<bool>& stop) {
  uint32_t failures = 0;
  while (!stop.load(std::memory_order_relaxed)) {
    absl::StatusOr<int> n = PollOnce();
    if (n.ok()) {
      failures = 0;
      continue;
    }
    switch (n.status().code()) {
      case absl::StatusCode::kInvalidArgument:
      case absl::StatusCode::kPermissionDenied:
      case absl::StatusCode::kNotFound:
      case absl::StatusCode::kFailedPrecondition:
        return n.status();
      default:
        break;
    }
    // Broker restarting or unreachable: back off, waking up for `stop`.
    const auto until = std::chrono::steady_clock::now() +
                       Backoff(options_.policy.backoff, ++failures);
    while (!stop.load(std::memory_order_relaxed) && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(milliseconds(10));
    }
  }
  return absl::OkStatus();
}

std::string RabbitMqConsumer::RetryQueueFor(milliseconds delay) const {
  return impl_->TierQueue(impl_->TierFor(delay));
}

}  // namespace idem

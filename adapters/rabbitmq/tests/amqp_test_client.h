// A plain librabbitmq client for the RabbitMQ tests and the fixture's probe: publishing with
// publisher confirms, counting, reading and deleting queues. No idem in it.
//
// Thread-safety: one thread at a time per client.
#ifndef IDEM_ADAPTERS_RABBITMQ_TESTS_AMQP_TEST_CLIENT_H_
#define IDEM_ADAPTERS_RABBITMQ_TESTS_AMQP_TEST_CLIENT_H_

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>

#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace idem::testing {

// The fixture broker's AMQP port (ctest sets IDEM_RABBITMQ_TEST_PORT); 0 when unset.
inline int RabbitPort() {
  const char* p = std::getenv("IDEM_RABBITMQ_TEST_PORT");
  return p == nullptr ? 0 : std::atoi(p);
}

struct GotMessage {
  std::string body;
  std::optional<std::string> message_id;
  std::map<std::string, std::string> headers;  // string and integer headers as text
  bool redelivered = false;
};

class AmqpTestClient {
 public:
  explicit AmqpTestClient(int port) {
    conn_.reset(amqp_new_connection());
    amqp_socket_t* socket = amqp_tcp_socket_new(conn_.get());
    timeval tv{.tv_sec = 2, .tv_usec = 0};
    if (socket == nullptr ||
        amqp_socket_open_noblock(socket, "127.0.0.1", port, &tv) != AMQP_STATUS_OK) {
      error_ = "cannot connect";
      return;
    }
    amqp_set_rpc_timeout(conn_.get(), &tv);
    amqp_set_handshake_timeout(conn_.get(), &tv);
    amqp_rpc_reply_t r = amqp_login(conn_.get(), "/", 0, AMQP_DEFAULT_FRAME_SIZE, 0,
                                    AMQP_SASL_METHOD_PLAIN, "guest", "guest");
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
      error_ = "login failed";
      return;
    }
    logged_in_ = true;
    ok_ = OpenChannel();
  }
  ~AmqpTestClient() {
    if (logged_in_) amqp_connection_close(conn_.get(), AMQP_REPLY_SUCCESS);
  }
  AmqpTestClient(const AmqpTestClient&) = delete;
  AmqpTestClient& operator=(const AmqpTestClient&) = delete;

  bool ok() const { return ok_; }
  const std::string& error() const { return error_; }

  // Publishes to the default exchange (routing key = queue), persistent, and waits for the
  // broker's confirm. Returns false on any failure.
  bool Publish(const std::string& queue, const std::string& body,
               std::optional<std::string> message_id = std::nullopt,
               const std::vector<std::pair<std::string, std::string>>& headers = {}) {
    if (!ok_) return false;
    amqp_basic_properties_t props{};
    props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG;
    props.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    if (message_id.has_value()) {
      props._flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
      props.message_id = Bytes(*message_id);
    }
    std::vector<amqp_table_entry_t> entries;
    for (const auto& [k, v] : headers) {
      amqp_table_entry_t e{};
      e.key = Bytes(k);
      e.value.kind = AMQP_FIELD_KIND_UTF8;
      e.value.value.bytes = Bytes(v);
      entries.push_back(e);
    }
    if (!entries.empty()) {
      props._flags |= AMQP_BASIC_HEADERS_FLAG;
      props.headers = amqp_table_t{.num_entries = static_cast<int>(entries.size()),
                                   .entries = entries.data()};
    }
    if (amqp_basic_publish(conn_.get(), 1, amqp_empty_bytes, Bytes(queue), 0, 0, &props,
                           Bytes(body)) != AMQP_STATUS_OK) {
      ok_ = false;
      return false;
    }
    const uint64_t seq = next_seq_++;
    while (true) {
      amqp_frame_t frame;
      timeval tv{.tv_sec = 5, .tv_usec = 0};
      if (amqp_simple_wait_frame_noblock(conn_.get(), &frame, &tv) != AMQP_STATUS_OK) {
        ok_ = false;
        return false;
      }
      if (frame.frame_type != AMQP_FRAME_METHOD) continue;
      if (frame.payload.method.id == AMQP_BASIC_ACK_METHOD) {
        const auto* a = static_cast<amqp_basic_ack_t*>(frame.payload.method.decoded);
        if (a->delivery_tag >= seq) return true;
      } else if (frame.payload.method.id == AMQP_BASIC_NACK_METHOD) {
        return false;
      } else {
        ok_ = false;
        return false;
      }
    }
  }

  // Declares a durable queue (as the adapter does); true on success.
  bool Declare(const std::string& queue) {
    amqp_queue_declare(conn_.get(), 1, Bytes(queue), 0, 1, 0, 0, amqp_empty_table);
    return Rpc();
  }
  // Ready messages in `queue` (unacked ones are not counted); -1 if it does not exist.
  int64_t Count(const std::string& queue) {
    amqp_queue_declare_ok_t* r =
        amqp_queue_declare(conn_.get(), 1, Bytes(queue), /*passive=*/1, 0, 0, 0, amqp_empty_table);
    if (!Rpc() || r == nullptr) return -1;
    return r->message_count;
  }
  // Consumers of `queue`; -1 if it does not exist.
  int64_t Consumers(const std::string& queue) {
    amqp_queue_declare_ok_t* r =
        amqp_queue_declare(conn_.get(), 1, Bytes(queue), 1, 0, 0, 0, amqp_empty_table);
    if (!Rpc() || r == nullptr) return -1;
    return r->consumer_count;
  }
  bool Delete(const std::string& queue) {
    amqp_queue_delete(conn_.get(), 1, Bytes(queue), 0, 0);
    return Rpc();
  }
  // basic.get with auto-ack: the next ready message of `queue`, or nullopt.
  std::optional<GotMessage> Get(const std::string& queue) {
    amqp_rpc_reply_t r = amqp_basic_get(conn_.get(), 1, Bytes(queue), /*no_ack=*/1);
    if (r.reply_type != AMQP_RESPONSE_NORMAL || r.reply.id != AMQP_BASIC_GET_OK_METHOD) {
      return std::nullopt;
    }
    const auto* ok = static_cast<amqp_basic_get_ok_t*>(r.reply.decoded);
    GotMessage got;
    got.redelivered = ok->redelivered != 0;
    amqp_message_t m;
    if (amqp_read_message(conn_.get(), 1, &m, 0).reply_type != AMQP_RESPONSE_NORMAL) {
      return std::nullopt;
    }
    got.body = Str(m.body);
    if (m.properties._flags & AMQP_BASIC_MESSAGE_ID_FLAG) got.message_id = Str(m.properties.message_id);
    if (m.properties._flags & AMQP_BASIC_HEADERS_FLAG) {
      for (int i = 0; i < m.properties.headers.num_entries; ++i) {
        const amqp_table_entry_t& e = m.properties.headers.entries[i];
        if (e.value.kind == AMQP_FIELD_KIND_UTF8 || e.value.kind == AMQP_FIELD_KIND_BYTES) {
          got.headers[Str(e.key)] = Str(e.value.value.bytes);
        } else if (e.value.kind == AMQP_FIELD_KIND_I64) {
          got.headers[Str(e.key)] = std::to_string(e.value.value.i64);
        }
      }
    }
    amqp_destroy_message(&m);
    amqp_maybe_release_buffers(conn_.get());
    return got;
  }
  std::vector<GotMessage> Drain(const std::string& queue) {
    std::vector<GotMessage> out;
    while (std::optional<GotMessage> m = Get(queue)) out.push_back(std::move(*m));
    return out;
  }

 private:
  struct Deleter {
    void operator()(amqp_connection_state_t_* c) const { amqp_destroy_connection(c); }
  };
  static amqp_bytes_t Bytes(const std::string& s) {
    return amqp_bytes_t{.len = s.size(), .bytes = const_cast<char*>(s.data())};
  }
  static std::string Str(amqp_bytes_t b) {
    return b.len == 0 ? std::string() : std::string(static_cast<char*>(b.bytes), b.len);
  }
  bool OpenChannel() {
    amqp_channel_open(conn_.get(), 1);
    if (!Rpc()) return false;
    amqp_confirm_select(conn_.get(), 1);
    next_seq_ = 1;
    return Rpc();
  }
  // The last RPC's reply; a channel error (e.g. 404 on a passive declare) reopens the channel.
  bool Rpc() {
    amqp_rpc_reply_t r = amqp_get_rpc_reply(conn_.get());
    if (r.reply_type == AMQP_RESPONSE_NORMAL) return true;
    if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
        r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
      amqp_channel_close_ok_t close_ok{};
      amqp_send_method(conn_.get(), 1, AMQP_CHANNEL_CLOSE_OK_METHOD, &close_ok);
      ok_ = OpenChannel();
    } else {
      ok_ = false;
    }
    return false;
  }

  std::unique_ptr<amqp_connection_state_t_, Deleter> conn_;
  bool ok_ = false;
  bool logged_in_ = false;
  std::string error_;
  uint64_t next_seq_ = 1;
};

}  // namespace idem::testing

#endif  // IDEM_ADAPTERS_RABBITMQ_TESTS_AMQP_TEST_CLIENT_H_

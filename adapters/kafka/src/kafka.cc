#include "idem/kafka.h"

#include <librdkafka/rdkafka.h>

#include <algorithm>
#include <charconv>
#include <deque>
#include <exception>
#include <map>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace idem {
namespace {

using std::chrono::milliseconds;

struct ConsumerDeleter {
  void operator()(rd_kafka_t* rk) const {
    (void)rd_kafka_consumer_close(rk);  // commits stored offsets, leaves the group
    rd_kafka_destroy(rk);
  }
};
struct ProducerDeleter {
  void operator()(rd_kafka_t* rk) const {
    (void)rd_kafka_flush(rk, 5'000);
    rd_kafka_destroy(rk);
  }
};
struct ConfDeleter {
  void operator()(rd_kafka_conf_t* c) const { rd_kafka_conf_destroy(c); }
};
struct MessageDeleter {
  void operator()(rd_kafka_message_t* m) const { rd_kafka_message_destroy(m); }
};
struct ListDeleter {
  void operator()(rd_kafka_topic_partition_list_t* l) const {
    rd_kafka_topic_partition_list_destroy(l);
  }
};
using ConfPtr = std::unique_ptr<rd_kafka_conf_t, ConfDeleter>;
using MessagePtr = std::unique_ptr<rd_kafka_message_t, MessageDeleter>;
using ListPtr = std::unique_ptr<rd_kafka_topic_partition_list_t, ListDeleter>;

int64_t NowMs() {
  return std::chrono::duration_cast<milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

absl::Status Set(rd_kafka_conf_t* conf, const std::string& name, const std::string& value) {
  char err[512];
  if (rd_kafka_conf_set(conf, name.c_str(), value.c_str(), err, sizeof(err)) !=
      RD_KAFKA_CONF_OK) {
    return absl::InvalidArgumentError(absl::StrCat("kafka: ", name, ": ", err));
  }
  return absl::OkStatus();
}

std::optional<std::string_view> Header(const rd_kafka_message_t* m, std::string_view name) {
  rd_kafka_headers_t* headers = nullptr;
  if (rd_kafka_message_headers(m, &headers) != RD_KAFKA_RESP_ERR_NO_ERROR) return std::nullopt;
  const void* value = nullptr;
  size_t size = 0;
  if (rd_kafka_header_get_last(headers, std::string(name).c_str(), &value, &size) !=
      RD_KAFKA_RESP_ERR_NO_ERROR) {
    return std::nullopt;
  }
  return value == nullptr ? std::string_view() : std::string_view(static_cast<const char*>(value), size);
}

using PartitionKey = std::pair<std::string, int32_t>;

void DeliveryReport(rd_kafka_t*, const rd_kafka_message_t* m, void*) {
  if (m->_private != nullptr) *static_cast<rd_kafka_resp_err_t*>(m->_private) = m->err;
}

}  // namespace

class KafkaConsumer::Impl {
 public:
  // A partition that waits: fetching is paused, and its messages from the first one without a
  // final outcome on are held here, in offset order, to be handed out again when the delay is over.
  struct Paused {
    int64_t resume_at_ms = 0;
    std::deque<MessagePtr> held;
  };

  KafkaConsumerOptions options;
  const Processor* processor = nullptr;
  KafkaHandler handler;
  OutcomePolicy policy;
  std::unique_ptr<rd_kafka_t, ConsumerDeleter> consumer;
  std::unique_ptr<rd_kafka_t, ProducerDeleter> producer;
  std::map<PartitionKey, Paused> paused;
  std::map<std::string, uint32_t> tries;  // "<topic>/<partition>/<offset>" -> tries so far
  // After a handler threw, the next this-many messages go through ProcessBatch one at a time, so
  // a poison message's exception releases (and counts an attempt against) only itself.
  int isolate = 0;

  static void Rebalance(rd_kafka_t* rk, rd_kafka_resp_err_t err,
                        rd_kafka_topic_partition_list_t* parts, void* opaque) {
    auto* self = static_cast<Impl*>(opaque);
    // A revoked partition's held messages are dropped: their offsets were never stored, so its
    // next owner (maybe this consumer again) fetches them from the committed offset.
    for (int i = 0; i < parts->cnt; ++i) {
      self->paused.erase({parts->elems[i].topic, parts->elems[i].partition});
      // Its retry counts go too: another member may finish those messages, and counts kept for
      // them here would never be erased (this member never stores their offsets).
      const std::string prefix = absl::StrCat(parts->elems[i].topic, "/", parts->elems[i].partition, "/");
      for (auto it = self->tries.lower_bound(prefix);
           it != self->tries.end() && it->first.starts_with(prefix);) {
        it = self->tries.erase(it);
      }
    }
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
      (void)rd_kafka_assign(rk, parts);
      // librdkafka keeps a partition's pause flag across a rebalance: a partition this consumer
      // paused (to hold a message) and gets back would never be fetched again. Nothing is held
      // for it any more (above), so it starts unpaused.
      (void)rd_kafka_resume_partitions(rk, parts);
    } else {
      (void)rd_kafka_assign(rk, nullptr);
    }
  }

  // Pauses fetching of the partition and holds `messages` (its messages from the first one
  // without a final outcome on) until the delay is over. No seek: librdkafka keeps its position,
  // the held messages are the ones between the last stored offset and that position.
  void Hold(const PartitionKey& pk, std::vector<MessagePtr> messages, milliseconds delay) {
    auto [it, fresh] = paused.try_emplace(pk);
    if (fresh) {
      ListPtr list(rd_kafka_topic_partition_list_new(1));
      rd_kafka_topic_partition_list_add(list.get(), pk.first.c_str(), pk.second);
      (void)rd_kafka_pause_partitions(consumer.get(), list.get());
    }
    it->second.resume_at_ms = NowMs() + delay.count();
    for (auto m = messages.rbegin(); m != messages.rend(); ++m) {
      it->second.held.push_front(std::move(*m));
    }
  }

  // Resumes fetching of partitions that hold nothing any more.
  void ResumeDrained() {
    for (auto it = paused.begin(); it != paused.end();) {
      if (!it->second.held.empty()) {
        ++it;
        continue;
      }
      ListPtr list(rd_kafka_topic_partition_list_new(1));
      rd_kafka_topic_partition_list_add(list.get(), it->first.first.c_str(), it->first.second);
      (void)rd_kafka_resume_partitions(consumer.get(), list.get());
      it = paused.erase(it);
    }
  }

  absl::Status DeadLetter(const rd_kafka_message_t* m, const std::string& reason) {
    // The delivery report writes here. It lives on the heap: if the report never comes (below)
    // the slot is left to it rather than freed under a pending write.
    auto slot = std::make_unique<rd_kafka_resp_err_t>(RD_KAFKA_RESP_ERR__IN_PROGRESS);
    rd_kafka_resp_err_t& delivered = *slot;
    const std::string partition = std::to_string(m->partition);
    const std::string offset = std::to_string(m->offset);
    const char* topic = rd_kafka_topic_name(m->rkt);
    rd_kafka_headers_t* headers = rd_kafka_headers_new(5);
    (void)rd_kafka_header_add(headers, "idem-reason", -1, reason.data(), reason.size());
    (void)rd_kafka_header_add(headers, "idem-source-topic", -1, topic, -1);
    (void)rd_kafka_header_add(headers, "idem-source-partition", -1, partition.data(), partition.size());
    (void)rd_kafka_header_add(headers, "idem-source-offset", -1, offset.data(), offset.size());
    if (std::optional<std::string_view> id = Header(m, options.id_header)) {
      (void)rd_kafka_header_add(headers, options.id_header.c_str(), -1, id->data(), id->size());
    }
    rd_kafka_resp_err_t err = rd_kafka_producev(
        producer.get(), RD_KAFKA_V_TOPIC(options.dead_letter_topic.c_str()),
        RD_KAFKA_V_KEY(m->key, m->key_len), RD_KAFKA_V_VALUE(m->payload, m->len),
        RD_KAFKA_V_HEADERS(headers), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_OPAQUE(slot.get()), RD_KAFKA_V_END);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      rd_kafka_headers_destroy(headers);
      return absl::UnavailableError(absl::StrCat("kafka: dead letter: ", rd_kafka_err2str(err)));
    }
    (void)rd_kafka_flush(producer.get(), 10'000);
    if (delivered == RD_KAFKA_RESP_ERR__IN_PROGRESS) {
      // Not confirmed in time (a broker down): withdraw it, so that it is neither delivered later
      // (a second dead letter after this one is retried) nor reported into a finished call. A
      // purged message gets its report at the next poll.
      (void)rd_kafka_purge(producer.get(), RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
      for (int i = 0; i < 50 && delivered == RD_KAFKA_RESP_ERR__IN_PROGRESS; ++i) {
        rd_kafka_poll(producer.get(), 100);
      }
      if (delivered == RD_KAFKA_RESP_ERR__IN_PROGRESS) (void)slot.release();
    }
    if (delivered != RD_KAFKA_RESP_ERR_NO_ERROR) {
      return absl::UnavailableError(
          absl::StrCat("kafka: dead letter not delivered: ", rd_kafka_err2str(delivered)));
    }
    return absl::OkStatus();
  }
};

KafkaConsumer::KafkaConsumer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
KafkaConsumer::~KafkaConsumer() {
  if (impl_ != nullptr) {
    impl_->consumer.reset();  // close (final commit) before the producer goes
    impl_->producer.reset();
  }
}

absl::StatusOr<std::unique_ptr<KafkaConsumer>> KafkaConsumer::Create(KafkaConsumerOptions options,
                                                                     const Processor& processor,
                                                                     KafkaHandler handler) {
  if (options.brokers.empty() || options.group_id.empty() || options.topics.empty()) {
    return absl::InvalidArgumentError("kafka: brokers, group_id and topics must be set");
  }
  if (options.batch <= 0) return absl::InvalidArgumentError("kafka: batch must be > 0");
  if (!handler) return absl::InvalidArgumentError("kafka: no handler");
  if (absl::Status s = OutcomePolicy::ValidateOptions(options.policy); !s.ok()) return s;
  if (options.dead_letter_topic.empty()) {
    options.dead_letter_topic = options.topics.front() + ".dead-letter";
  }
  auto impl = std::make_unique<Impl>();
  impl->processor = &processor;
  impl->handler = std::move(handler);
  impl->policy = OutcomePolicy(options.policy);

  ConfPtr conf(rd_kafka_conf_new());
  std::map<std::string, std::string> settings = {
      {"bootstrap.servers", options.brokers},
      {"group.id", options.group_id},
      {"enable.auto.commit", "true"},
      {"enable.auto.offset.store", "false"},
      {"auto.offset.reset", "earliest"},
  };
  for (const auto& [k, v] : options.consumer_config) settings[k] = v;
  for (const auto& [k, v] : settings) {
    if (absl::Status s = Set(conf.get(), k, v); !s.ok()) return s;
  }
  rd_kafka_conf_set_rebalance_cb(conf.get(), &Impl::Rebalance);
  rd_kafka_conf_set_opaque(conf.get(), impl.get());
  char err[512];
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf.get(), err, sizeof(err));
  if (rk == nullptr) return absl::InternalError(absl::StrCat("kafka: consumer: ", err));
  (void)conf.release();  // owned by rk now
  impl->consumer.reset(rk);
  (void)rd_kafka_poll_set_consumer(rk);

  ConfPtr pconf(rd_kafka_conf_new());
  std::map<std::string, std::string> psettings = {{"bootstrap.servers", options.brokers},
                                                  {"acks", "all"}};
  for (const auto& [k, v] : options.producer_config) psettings[k] = v;
  for (const auto& [k, v] : psettings) {
    if (absl::Status s = Set(pconf.get(), k, v); !s.ok()) return s;
  }
  rd_kafka_conf_set_dr_msg_cb(pconf.get(), &DeliveryReport);
  rd_kafka_t* producer = rd_kafka_new(RD_KAFKA_PRODUCER, pconf.get(), err, sizeof(err));
  if (producer == nullptr) return absl::InternalError(absl::StrCat("kafka: producer: ", err));
  (void)pconf.release();
  impl->producer.reset(producer);

  ListPtr topics(rd_kafka_topic_partition_list_new(static_cast<int>(options.topics.size())));
  for (const std::string& t : options.topics) {
    rd_kafka_topic_partition_list_add(topics.get(), t.c_str(), RD_KAFKA_PARTITION_UA);
  }
  if (rd_kafka_resp_err_t e = rd_kafka_subscribe(rk, topics.get()); e != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return absl::InvalidArgumentError(absl::StrCat("kafka: subscribe: ", rd_kafka_err2str(e)));
  }
  impl->options = std::move(options);
  return std::unique_ptr<KafkaConsumer>(new KafkaConsumer(std::move(impl)));
}

absl::StatusOr<int> KafkaConsumer::PollOnce() {
  Impl& im = *impl_;
  const int limit = im.isolate > 0 ? 1 : im.options.batch;
  std::vector<MessagePtr> batch;
  const int64_t now = NowMs();
  for (auto& [pk, p] : im.paused) {
    if (p.resume_at_ms > now) continue;
    while (!p.held.empty() && static_cast<int>(batch.size()) < limit) {
      batch.push_back(std::move(p.held.front()));
      p.held.pop_front();
    }
  }
  rd_kafka_message_t* m = rd_kafka_consumer_poll(
      im.consumer.get(), batch.empty() ? static_cast<int>(im.options.poll_timeout.count()) : 0);
  while (m != nullptr) {
    MessagePtr msg(m);
    if (msg->err != RD_KAFKA_RESP_ERR_NO_ERROR && msg->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
      // A consumer error is not a message. A fatal one, or an authorization this consumer lacks,
      // will not pass by retrying: Run returns it; anything else (an unknown topic that may yet
      // be created, a broker down) is transient and librdkafka retries it.
      const rd_kafka_resp_err_t err = msg->err;
      const std::string what = absl::StrCat("kafka: consume: ", rd_kafka_err2str(err));
      if (err == RD_KAFKA_RESP_ERR__FATAL || err == RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED ||
          err == RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED) {
        if (batch.empty()) return absl::FailedPreconditionError(what);
      }
    }
    if (msg->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
      const PartitionKey pk{rd_kafka_topic_name(msg->rkt), msg->partition};
      auto it = im.paused.find(pk);
      if (it != im.paused.end()) {
        it->second.held.push_back(std::move(msg));  // fetched before the pause: keep the order
      } else {
        batch.push_back(std::move(msg));
      }
    }
    if (static_cast<int>(batch.size()) >= limit) break;
    m = rd_kafka_consumer_poll(im.consumer.get(), 0);
  }
  if (batch.empty()) return 0;
  if (im.isolate > 0) --im.isolate;

  // Messages, with ids and version stamps; malformed ones are decided before the batch.
  const size_t n = batch.size();
  std::vector<std::string> ids(n);
  std::vector<std::optional<Decision>> early(n);
  std::vector<Message> messages;
  std::vector<size_t> index_of;  // messages[k] is batch[index_of[k]]
  std::vector<KafkaRecord> records(n);
  for (size_t i = 0; i < n; ++i) {
    const rd_kafka_message_t* msg = batch[i].get();
    const std::string_view topic = rd_kafka_topic_name(msg->rkt);
    std::optional<std::string_view> id = Header(msg, im.options.id_header);
    ids[i] = id.has_value() ? std::string(*id)
                            : absl::StrCat(std::string(topic), "/", msg->partition, "/", msg->offset);
    const std::string_view key(static_cast<const char*>(msg->key), msg->key != nullptr ? msg->key_len : 0);
    const std::string_view value(static_cast<const char*>(msg->payload), msg->payload != nullptr ? msg->len : 0);
    records[i] = KafkaRecord{.topic = topic, .partition = msg->partition, .offset = msg->offset,
                             .key = key, .value = value,
                             .header = [msg](std::string_view name) { return Header(msg, name); }};
    std::optional<VersionStamp> version;
    if (!im.options.version_header.empty()) {
      if (std::optional<std::string_view> v = Header(msg, im.options.version_header)) {
        uint64_t number = 0;
        auto [ptr, ec] = std::from_chars(v->data(), v->data() + v->size(), number);
        if (ec != std::errc() || ptr != v->data() + v->size() || key.empty()) {
          early[i] = Decision{.action = Action::kDeadLetter,
                              .reason = key.empty() ? "invalid: a version needs a message key"
                                                    : "invalid: version " + std::string(*v)};
          continue;
        }
        version = VersionStamp{.key = key, .version = number};
      }
    }
    messages.push_back(Message{.id = ids[i], .payload = value, .version = version});
    index_of.push_back(i);
  }
  stats_.deliveries += messages.size();

  std::vector<absl::StatusOr<ProcessResult>> results;
  std::optional<std::string> thrown;
  try {
    size_t next = 0;
    results = im.processor->ProcessBatch(messages, [&](HandlerContext& ctx) {
      // Handlers run in batch order over the acquired claims: find this one's record.
      while (next < messages.size() && messages[next].id != ctx.message_id()) ++next;
      im.handler(records[index_of[std::min(next, messages.size() - 1)]], ctx);
    });
  } catch (const std::exception& e) {
    thrown = e.what();
  } catch (...) {
    thrown = "unknown exception";
  }

  // Per partition, in offset order: store while outcomes are final; at the first one that is not,
  // pause and seek back there.
  std::map<PartitionKey, int64_t> store;
  std::map<PartitionKey, bool> blocked;
  // Each partition's messages of this batch from `first[pk]` on, to hold.
  std::map<PartitionKey, std::vector<MessagePtr>> hold;
  std::map<PartitionKey, milliseconds> hold_delay;
  if (thrown.has_value()) {
    ++stats_.handler_errors;
    im.isolate = im.options.batch;
    for (size_t i = 0; i < n; ++i) {
      const PartitionKey pk{std::string(records[i].topic), records[i].partition};
      const std::string tkey = absl::StrCat(pk.first, "/", pk.second, "/", records[i].offset);
      if (hold.count(pk) == 0) {
        const uint32_t t = ++im.tries[tkey];
        hold_delay[pk] = im.policy.DecideHandlerError(*thrown, t).delay;
        ++stats_.paused;
      }
      hold[pk].push_back(std::move(batch[i]));
    }
    for (auto& [pk, msgs] : hold) im.Hold(pk, std::move(msgs), hold_delay[pk]);
    im.ResumeDrained();
    return static_cast<int>(messages.size());
  }
  // A later copy of an id in the same batch (a producer retry that wrote the record twice, back
  // to back) comes back kDuplicate: ProcessBatch asks for it again once its first copy completed.
  size_t k = 0;
  for (size_t i = 0; i < n; ++i) {
    const PartitionKey pk{std::string(records[i].topic), records[i].partition};
    const bool in_batch = k < index_of.size() && index_of[k] == i;
    const absl::StatusOr<ProcessResult>* result = in_batch ? &results[k++] : nullptr;
    if (blocked[pk]) {
      hold[pk].push_back(std::move(batch[i]));
      continue;
    }
    const std::string tkey = absl::StrCat(pk.first, "/", pk.second, "/", records[i].offset);
    const uint32_t t = im.tries[tkey] + 1;
    Decision d = early[i].has_value() ? *early[i] : im.policy.Decide(*result, t);
    if (result != nullptr) {
      if (!result->ok()) {
        if (result->status().code() != absl::StatusCode::kInvalidArgument) ++stats_.store_errors;
      } else {
        switch ((*result)->outcome) {
          case Outcome::kProcessed: ++stats_.processed; break;
          case Outcome::kDuplicate: ++stats_.duplicates; break;
          case Outcome::kStale: ++stats_.stale; break;
          case Outcome::kInProgress: ++stats_.in_progress; break;
          case Outcome::kConflict: ++stats_.conflicts; break;
          case Outcome::kDeadLettered: break;
        }
      }
    }
    if (d.action == Action::kDeadLetter) {
      absl::Status s = im.DeadLetter(batch[i].get(), d.reason);
      if (s.ok()) {
        ++stats_.dead_lettered;
      } else {
        d = Decision{.action = Action::kRetry, .delay = Backoff(im.policy.options().backoff, t),
                     .reason = std::string(s.message())};
      }
    }
    if (d.action == Action::kAck || d.action == Action::kDeadLetter) {
      store[pk] = records[i].offset + 1;
      im.tries.erase(tkey);
    } else {
      im.tries[tkey] = t;
      blocked[pk] = true;
      hold_delay[pk] = d.delay;
      hold[pk].push_back(std::move(batch[i]));
      ++stats_.paused;
    }
  }
  if (!store.empty()) {
    ListPtr list(rd_kafka_topic_partition_list_new(static_cast<int>(store.size())));
    for (const auto& [pk, offset] : store) {
      rd_kafka_topic_partition_list_add(list.get(), pk.first.c_str(), pk.second)->offset = offset;
    }
    if (rd_kafka_offsets_store(im.consumer.get(), list.get()) == RD_KAFKA_RESP_ERR_NO_ERROR) {
      stats_.stored += store.size();
    }
  }
  for (auto& [pk, msgs] : hold) im.Hold(pk, std::move(msgs), hold_delay[pk]);
  im.ResumeDrained();
  return static_cast<int>(messages.size());
}

absl::Status KafkaConsumer::Commit() {
  rd_kafka_resp_err_t e = rd_kafka_commit(impl_->consumer.get(), nullptr, /*async=*/0);
  if (e == RD_KAFKA_RESP_ERR_NO_ERROR || e == RD_KAFKA_RESP_ERR__NO_OFFSET) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat("kafka: commit: ", rd_kafka_err2str(e)));
}

absl::Status KafkaConsumer::Run(const std::atomic<bool>& stop) {
  while (!stop.load(std::memory_order_acquire)) {
    absl::StatusOr<int> n = PollOnce();
    if (!n.ok() && (n.status().code() == absl::StatusCode::kInvalidArgument ||
                    n.status().code() == absl::StatusCode::kFailedPrecondition)) {
      return n.status();
    }
  }
  return absl::OkStatus();
}

}  // namespace idem

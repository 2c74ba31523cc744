#include "idem/redis_streams.h"

#include <hiredis/hiredis.h>
#include <sys/time.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <exception>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace idem {
namespace {

using std::chrono::milliseconds;

struct ContextDeleter {
  void operator()(redisContext* c) const { redisFree(c); }
};
struct ReplyDeleter {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using ContextPtr = std::unique_ptr<redisContext, ContextDeleter>;
using ReplyPtr = std::unique_ptr<redisReply, ReplyDeleter>;

// Only while the entry is still pending for the group (another consumer may have finished it:
// then 0 and nothing is written): the dead letter (ARGV[3] == "dead") and the outcome record
// (ARGV[7] == "1") first, the XACK last, so a dead letter that cannot be written (a key of another
// type, an entry too large) fails the script with the entry still pending, never acked and lost.
// Returns 1 when this call acked the entry.
//   KEYS: stream, dead-letter stream, outcome stream
//   ARGV: group, entry id, mode, outcome, reason, consumer, record-outcome, fields...
constexpr char kAckScript[] = R"lua(
if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1) == 0 then return 0 end
if ARGV[3] == 'dead' then
  local f = {'idem_reason', ARGV[5], 'idem_source_stream', KEYS[1], 'idem_source_id', ARGV[2]}
  for i = 8, #ARGV do f[#f + 1] = ARGV[i] end
  redis.call('XADD', KEYS[2], '*', unpack(f))
end
if ARGV[7] == '1' then
  redis.call('XADD', KEYS[3], '*', 'entry', ARGV[2], 'outcome', ARGV[4], 'reason', ARGV[5],
             'consumer', ARGV[6])
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return 1
)lua";

int64_t NowMs() {
  return std::chrono::duration_cast<milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

timeval ToTimeval(milliseconds ms) {
  return timeval{.tv_sec = static_cast<time_t>(ms.count() / 1000),
                 .tv_usec = static_cast<suseconds_t>((ms.count() % 1000) * 1000)};
}

std::string ReplyString(const redisReply* r) {
  if (r == nullptr) return "";
  if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS ||
      r->type == REDIS_REPLY_ERROR) {
    return std::string(r->str, r->len);
  }
  if (r->type == REDIS_REPLY_INTEGER) return std::to_string(r->integer);
  return "";
}

// Parses an array of [id, [field, value, ...]] entries. Entries whose fields are nil (deleted
// from the stream while pending) are skipped.
absl::Status ParseEntries(const redisReply* r, bool reclaimed, std::vector<StreamEntry>& out) {
  if (r == nullptr || r->type == REDIS_REPLY_NIL) return absl::OkStatus();
  if (r->type != REDIS_REPLY_ARRAY) return absl::InternalError("entries: not an array");
  for (size_t i = 0; i < r->elements; ++i) {
    const redisReply* e = r->element[i];
    if (e == nullptr || e->type == REDIS_REPLY_NIL) continue;
    if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
        e->element[0]->type != REDIS_REPLY_STRING) {
      return absl::InternalError("entries: malformed entry");
    }
    const redisReply* fields = e->element[1];
    if (fields->type == REDIS_REPLY_NIL) continue;
    if (fields->type != REDIS_REPLY_ARRAY || fields->elements % 2 != 0) {
      return absl::InternalError("entries: malformed fields");
    }
    StreamEntry entry{.entry_id = ReplyString(e->element[0]), .reclaimed = reclaimed};
    for (size_t k = 0; k + 1 < fields->elements; k += 2) {
      entry.fields.emplace_back(ReplyString(fields->element[k]),
                                ReplyString(fields->element[k + 1]));
    }
    out.push_back(std::move(entry));
  }
  return absl::OkStatus();
}

bool IsFatal(const absl::Status& s) {
  return s.code() == absl::StatusCode::kInvalidArgument ||
         s.code() == absl::StatusCode::kPermissionDenied ||
         s.code() == absl::StatusCode::kUnauthenticated;
}

}  // namespace

std::optional<std::string_view> StreamEntry::Field(std::string_view name) const {
  for (const auto& [f, v] : fields) {
    if (f == name) return std::string_view(v);
  }
  return std::nullopt;
}

class RedisStreamsConsumer::Impl {
 public:
  struct Retry {
    int64_t due_ms = 0;
    uint32_t tries = 0;
  };

  Impl(OutcomePolicy policy, StreamProcessFn process)
      : policy(std::move(policy)), process(std::move(process)) {}

  absl::Status Connect(const RedisStreamsOptions& o) {
    const timeval tv = ToTimeval(o.connect_timeout);
    ContextPtr c(redisConnectWithTimeout(o.host.c_str(), o.port, tv));
    if (c == nullptr) return absl::UnavailableError("redis: cannot allocate a connection");
    if (c->err != 0) {
      return absl::UnavailableError(absl::StrCat("redis: connect to ", o.host, ":", o.port,
                                                 " failed: ", c->errstr));
    }
    if (redisSetTimeout(c.get(), ToTimeval(o.io_timeout + o.block)) != REDIS_OK) {
      return absl::UnavailableError("redis: cannot set the socket timeout");
    }
    ctx = std::move(c);
    if (!o.password.empty()) {
      absl::StatusOr<ReplyPtr> r = Command({"AUTH", o.password});
      if (!r.ok()) {
        // Command already tells refused credentials (Unauthenticated) from a dropped connection
        // or a timeout (Unavailable, DeadlineExceeded): only the former is final for Run.
        ctx.reset();
        return r.status();
      }
    }
    // The acknowledgement script is sent once and then named by its SHA1; an account that may
    // not run SCRIPT LOAD sends the whole script with each acknowledgement (EVAL).
    ack_sha.clear();
    if (absl::StatusOr<ReplyPtr> r = Command({"SCRIPT", "LOAD", kAckScript}); r.ok()) {
      if ((*r)->type == REDIS_REPLY_STRING) ack_sha = ReplyString(r->get());
    } else if (ctx == nullptr) {
      return r.status();
    }
    if (o.create_group) {
      absl::StatusOr<ReplyPtr> r = Command({"XGROUP", "CREATE", o.stream, o.group, "0", "MKSTREAM"});
      if (!r.ok() && r.status().message().find("BUSYGROUP") == std::string_view::npos) {
        ctx.reset();
        return r.status();
      }
    }
    return absl::OkStatus();
  }

  // One command; an error reply is Internal with the server's text, an I/O failure drops the
  // connection (Unavailable, or DeadlineExceeded on a timeout).
  absl::StatusOr<ReplyPtr> Command(const std::vector<std::string>& args) {
    Append(args);
    return GetReply();
  }

  void Append(const std::vector<std::string>& args) {
    std::vector<const char*> argv;
    std::vector<size_t> lens;
    argv.reserve(args.size());
    lens.reserve(args.size());
    for (const std::string& a : args) {
      argv.push_back(a.data());
      lens.push_back(a.size());
    }
    (void)redisAppendCommandArgv(ctx.get(), static_cast<int>(argv.size()), argv.data(),
                                 lens.data());
  }

  absl::StatusOr<ReplyPtr> GetReply() {
    void* raw = nullptr;
    if (redisGetReply(ctx.get(), &raw) != REDIS_OK || raw == nullptr) {
      const bool timeout = ctx->err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK);
      std::string what = ctx->errstr;
      ctx.reset();
      if (timeout) return absl::DeadlineExceededError("redis: I/O timeout");
      return absl::UnavailableError(absl::StrCat("redis: connection lost: ", what));
    }
    ReplyPtr reply(static_cast<redisReply*>(raw));
    if (reply->type == REDIS_REPLY_ERROR) {
      std::string text = ReplyString(reply.get());
      if (text.rfind("NOPERM", 0) == 0) return absl::PermissionDeniedError("redis: " + text);
      if (text.rfind("NOAUTH", 0) == 0 || text.rfind("WRONGPASS", 0) == 0) {
        return absl::UnauthenticatedError("redis: " + text);
      }
      if (text.rfind("LOADING", 0) == 0 || text.rfind("BUSY", 0) == 0) {
        return absl::UnavailableError("redis: " + text);
      }
      return absl::InternalError("redis: " + text);
    }
    return reply;
  }

  OutcomePolicy policy;
  StreamProcessFn process;
  ContextPtr ctx;
  std::string ack_sha;  // SHA1 of kAckScript as the server loaded it; empty: send it with EVAL
  std::unordered_map<std::string, Retry> retries;
  std::string autoclaim_cursor = "0-0";
  int64_t next_reclaim_ms = 0;
  int failures = 0;
};

RedisStreamsConsumer::RedisStreamsConsumer(RedisStreamsOptions options, std::unique_ptr<Impl> impl)
    : options_(std::move(options)), impl_(std::move(impl)) {}

RedisStreamsConsumer::~RedisStreamsConsumer() = default;

namespace {

absl::Status ValidateOptions(const RedisStreamsOptions& o) {
  if (o.stream.empty() || o.group.empty() || o.consumer.empty()) {
    return absl::InvalidArgumentError("redis streams: stream, group and consumer must be set");
  }
  if (o.port <= 0 || o.port > 65535) return absl::InvalidArgumentError("redis streams: bad port");
  if (o.batch <= 0) return absl::InvalidArgumentError("redis streams: batch must be > 0");
  if (o.block.count() <= 0) return absl::InvalidArgumentError("redis streams: block must be > 0");
  if (o.reclaim_idle.count() < 0) {
    return absl::InvalidArgumentError("redis streams: reclaim_idle must not be negative");
  }
  if (o.version_key_field.empty() != o.version_field.empty()) {
    return absl::InvalidArgumentError(
        "redis streams: set both version_key_field and version_field, or neither");
  }
  return OutcomePolicy::ValidateOptions(o.policy);
}

// Every field but `skip`, each as "<len>:<bytes>": a stable, unambiguous payload to fingerprint.
std::string EncodeFields(const StreamEntry& entry, std::string_view skip) {
  std::string out;
  for (const auto& [f, v] : entry.fields) {
    if (!skip.empty() && f == skip) continue;
    absl::StrAppend(&out, f.size(), ":", f, v.size(), ":", v);
  }
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<RedisStreamsConsumer>> RedisStreamsConsumer::Create(
    RedisStreamsOptions options, std::chrono::milliseconds lease, StreamProcessFn process) {
  if (absl::Status s = ValidateOptions(options); !s.ok()) return s;
  if (lease.count() <= 0) return absl::InvalidArgumentError("redis streams: lease must be > 0");
  if (!process) return absl::InvalidArgumentError("redis streams: no process function");
  if (options.dead_letter_stream.empty()) options.dead_letter_stream = options.stream + ":dead-letter";
  if (options.reclaim_idle.count() == 0) options.reclaim_idle = lease + milliseconds(1000);
  OutcomePolicy policy(options.policy);
  auto impl = std::make_unique<Impl>(std::move(policy), std::move(process));
  return std::unique_ptr<RedisStreamsConsumer>(
      new RedisStreamsConsumer(std::move(options), std::move(impl)));
}

absl::StatusOr<std::unique_ptr<RedisStreamsConsumer>> RedisStreamsConsumer::Create(
    RedisStreamsOptions options, const Processor& processor, StreamHandler handler) {
  if (!handler) return absl::InvalidArgumentError("redis streams: no handler");
  const Processor* p = &processor;
  StreamProcessFn process = [p, handler = std::move(handler)](
                                const Message& message,
                                const StreamEntry& entry) -> absl::StatusOr<ProcessResult> {
    return p->Process(message, [&](HandlerContext& ctx) { handler(entry, ctx); });
  };
  return Create(std::move(options), processor.options().lease, std::move(process));
}

std::size_t RedisStreamsConsumer::pending_retries() const { return impl_->retries.size(); }

absl::Status RedisStreamsConsumer::Handle(std::vector<StreamEntry>& entries) {
  struct Planned {
    const StreamEntry* entry;
    Decision decision;
    std::string label;  // the outcome recorded with the XACK
  };
  std::vector<Planned> acks;
  const int64_t now = NowMs();
  for (const StreamEntry& entry : entries) {
    ++stats_.deliveries;
    if (entry.reclaimed) ++stats_.reclaimed;
    auto it = impl_->retries.find(entry.entry_id);
    const uint32_t tries = it == impl_->retries.end() ? 1 : it->second.tries + 1;

    Decision d;
    std::string label;
    std::optional<std::string_view> id = options_.id_field.empty()
                                             ? std::optional<std::string_view>(entry.entry_id)
                                             : entry.Field(options_.id_field);
    std::optional<VersionStamp> version;
    bool bad = false;
    if (!id.has_value()) {
      d = Decision{.action = Action::kDeadLetter, .reason = "missing_id"};
      label = "missing_id";
      bad = true;
    } else if (!options_.version_key_field.empty()) {
      std::optional<std::string_view> key = entry.Field(options_.version_key_field);
      std::optional<std::string_view> v = entry.Field(options_.version_field);
      uint64_t n = 0;
      if (key.has_value() != v.has_value()) {
        // Half a version stamp: processing it without the gate could apply a stale event.
        d = Decision{.action = Action::kDeadLetter,
                     .reason = "invalid: the version key or the version field is missing"};
        label = "invalid";
        bad = true;
      } else if (key.has_value() && v.has_value()) {
        auto [ptr, ec] = std::from_chars(v->data(), v->data() + v->size(), n);
        if (ec != std::errc() || ptr != v->data() + v->size()) {
          d = Decision{.action = Action::kDeadLetter,
                       .reason = absl::StrCat("invalid: version ", std::string(*v))};
          label = "invalid";
          bad = true;
        } else {
          version = VersionStamp{.key = *key, .version = n};
        }
      }
    }
    if (!bad) {
      std::string encoded;
      std::string_view payload;
      if (!options_.payload_field.empty()) {
        payload = entry.Field(options_.payload_field).value_or("");
      } else {
        encoded = EncodeFields(entry, options_.id_field);
        payload = encoded;
      }
      const Message message{.id = *id, .payload = payload, .version = version};
      try {
        const absl::StatusOr<ProcessResult> result = impl_->process(message, entry);
        d = impl_->policy.Decide(result, tries);
        if (!result.ok()) {
          if (result.status().code() != absl::StatusCode::kInvalidArgument) ++stats_.store_errors;
          label = d.action == Action::kDeadLetter ? "invalid" : "error";
        } else {
          label = std::string(OutcomeName(result->outcome));
          switch (result->outcome) {
            case Outcome::kProcessed: ++stats_.processed; break;
            case Outcome::kDuplicate: ++stats_.duplicates; break;
            case Outcome::kStale: ++stats_.stale; break;
            case Outcome::kInProgress: ++stats_.in_progress; break;
            case Outcome::kConflict: ++stats_.conflicts; break;
            case Outcome::kDeadLettered: break;
          }
        }
      } catch (const std::exception& e) {
        ++stats_.handler_errors;
        d = impl_->policy.DecideHandlerError(e.what(), tries);
        label = "handler_error";
      } catch (...) {
        ++stats_.handler_errors;
        d = impl_->policy.DecideHandlerError("unknown exception", tries);
        label = "handler_error";
      }
    }
    if (d.action == Action::kAck || d.action == Action::kDeadLetter) {
      acks.push_back(Planned{.entry = &entry, .decision = std::move(d), .label = std::move(label)});
    } else {
      impl_->retries[entry.entry_id] = Impl::Retry{.due_ms = now + d.delay.count(), .tries = tries};
    }
  }
  if (acks.empty()) return absl::OkStatus();

  // One pipelined round trip: one script per acknowledgement, named by its SHA1. A server that
  // lost its script cache (a restart, SCRIPT FLUSH) answers NOSCRIPT: those acknowledgements are
  // sent again with the whole script, which also loads it for the next round.
  const bool record = !options_.outcome_stream.empty();
  const std::string& outcome_key = record ? options_.outcome_stream : options_.stream;
  auto append_ack = [&](const Planned& p, bool whole_script) {
    const bool dead = p.decision.action == Action::kDeadLetter;
    const bool by_sha = !whole_script && !impl_->ack_sha.empty();
    std::vector<std::string> args = {by_sha ? "EVALSHA" : "EVAL",
                                     by_sha ? impl_->ack_sha : std::string(kAckScript),
                                     "3", options_.stream,
                                     options_.dead_letter_stream, outcome_key, options_.group,
                                     p.entry->entry_id, dead ? "dead" : "ack", p.label,
                                     p.decision.reason, options_.consumer, record ? "1" : "0"};
    if (dead) {
      for (const auto& [f, v] : p.entry->fields) {
        args.push_back(f);
        args.push_back(v);
      }
    }
    impl_->Append(args);
  };
  absl::Status first = absl::OkStatus();
  std::vector<const Planned*> sent;
  for (const Planned& p : acks) sent.push_back(&p);
  for (bool whole_script : {false, true}) {
    for (const Planned* p : sent) append_ack(*p, whole_script);
    std::vector<const Planned*> unloaded;
    for (const Planned* p : sent) {
      if (impl_->ctx == nullptr) return first.ok() ? absl::UnavailableError("redis: lost") : first;
      absl::StatusOr<ReplyPtr> r = impl_->GetReply();
      if (!r.ok()) {
        if (!whole_script && r.status().message().find("NOSCRIPT") != std::string_view::npos) {
          unloaded.push_back(p);
          continue;
        }
        // Still pending: redelivered by a retry or a reclaim.
        if (first.ok()) first = r.status();
        continue;
      }
      impl_->retries.erase(p->entry->entry_id);
      if ((*r)->type == REDIS_REPLY_INTEGER && (*r)->integer == 1) {
        ++stats_.acked;
        if (p->decision.action == Action::kDeadLetter) ++stats_.dead_lettered;
      } else {
        ++stats_.ack_raced;
      }
    }
    if (unloaded.empty()) break;
    sent = std::move(unloaded);
  }
  return first;
}

absl::StatusOr<int> RedisStreamsConsumer::PollOnce() {
  if (impl_->ctx == nullptr) {
    if (absl::Status s = impl_->Connect(options_); !s.ok()) return s;
  }
  const RedisStreamsOptions& o = options_;
  int delivered = 0;
  int64_t now = NowMs();

  // 1. Entries of consumers that have been idle past reclaim_idle (dead, or stuck past a lease).
  if (now >= impl_->next_reclaim_ms) {
    absl::StatusOr<ReplyPtr> r =
        impl_->Command({"XAUTOCLAIM", o.stream, o.group, o.consumer,
                        std::to_string(o.reclaim_idle.count()), impl_->autoclaim_cursor, "COUNT",
                        std::to_string(o.batch)});
    if (!r.ok()) return r.status();
    const redisReply* reply = r->get();
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 2) {
      return absl::InternalError("XAUTOCLAIM: unexpected reply");
    }
    std::vector<StreamEntry> entries;
    if (absl::Status s = ParseEntries(reply->element[1], /*reclaimed=*/true, entries); !s.ok()) {
      return s;
    }
    impl_->autoclaim_cursor = ReplyString(reply->element[0]);
    if (impl_->autoclaim_cursor == "0-0") {
      impl_->next_reclaim_ms = now + std::max<int64_t>(o.reclaim_idle.count() / 2, 1);
    }
    delivered += static_cast<int>(entries.size());
    if (absl::Status s = Handle(entries); !s.ok()) return s;
  }

  // 2. This consumer's retries that are due: XCLAIM them to itself (also resets their idle time).
  now = NowMs();
  std::vector<std::string> due;
  int64_t next_due = INT64_MAX;
  for (const auto& [id, retry] : impl_->retries) {
    if (retry.due_ms <= now) {
      if (static_cast<int>(due.size()) < o.batch) due.push_back(id);
    } else {
      next_due = std::min(next_due, retry.due_ms);
    }
  }
  if (!due.empty()) {
    std::vector<std::string> args = {"XCLAIM", o.stream, o.group, o.consumer, "0"};
    args.insert(args.end(), due.begin(), due.end());
    absl::StatusOr<ReplyPtr> r = impl_->Command(args);
    if (!r.ok()) return r.status();
    std::vector<StreamEntry> entries;
    if (absl::Status s = ParseEntries(r->get(), /*reclaimed=*/false, entries); !s.ok()) return s;
    // Ids not returned were acked by another consumer (or deleted): nothing left to retry.
    for (const std::string& id : due) {
      const bool back = std::any_of(entries.begin(), entries.end(),
                                    [&](const StreamEntry& e) { return e.entry_id == id; });
      if (!back) impl_->retries.erase(id);
    }
    delivered += static_cast<int>(entries.size());
    if (absl::Status s = Handle(entries); !s.ok()) return s;
  }

  // 3. New entries, blocking until one arrives, a retry falls due or the next reclaim.
  now = NowMs();
  int64_t block = o.block.count();
  if (delivered > 0) block = 1;
  if (next_due != INT64_MAX) block = std::min(block, next_due - now);
  block = std::min(block, impl_->next_reclaim_ms - now);
  block = std::max<int64_t>(block, 1);  // BLOCK 0 would wait forever
  absl::StatusOr<ReplyPtr> r =
      impl_->Command({"XREADGROUP", "GROUP", o.group, o.consumer, "COUNT",
                      std::to_string(o.batch), "BLOCK", std::to_string(block), "STREAMS",
                      o.stream, ">"});
  if (!r.ok()) return r.status();
  const redisReply* reply = r->get();
  if (reply->type == REDIS_REPLY_ARRAY) {
    std::vector<StreamEntry> entries;
    for (size_t i = 0; i < reply->elements; ++i) {
      const redisReply* stream = reply->element[i];
      if (stream->type != REDIS_REPLY_ARRAY || stream->elements != 2) {
        return absl::InternalError("XREADGROUP: unexpected reply");
      }
      if (absl::Status s = ParseEntries(stream->element[1], false, entries); !s.ok()) return s;
    }
    delivered += static_cast<int>(entries.size());
    if (absl::Status s = Handle(entries); !s.ok()) return s;
  }
  return delivered;
}

absl::Status RedisStreamsConsumer::Run(const std::atomic<bool>& stop) {
  uint32_t failures = 0;
  while (!stop.load(std::memory_order_acquire)) {
    absl::StatusOr<int> n = PollOnce();
    if (n.ok()) {
      failures = 0;
      continue;
    }
    if (IsFatal(n.status())) return n.status();
    ++failures;
    const int64_t until = NowMs() + Backoff(impl_->policy.options().backoff, failures).count();
    while (!stop.load(std::memory_order_acquire) && NowMs() < until) {
      std::this_thread::sleep_for(milliseconds(10));
    }
  }
  return absl::OkStatus();
}

}  // namespace idem

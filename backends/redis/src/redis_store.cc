// The Redis DedupStore: each record is one packed string (redis_record.h); the claim of a new id
// is one plain SET NX GET, every other state change one Lua script (redis_scripts.h) run with
// EVALSHA, pipelined over a pooled hiredis connection (redis_connection.h).
#include "idem/redis_store.h"

#include <hiredis/hiredis.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "internal/owner.h"
#include "internal/status_macros.h"
#include "internal/store_counters.h"
#include "internal/strings.h"
#include "internal/token.h"
#include "internal/write_queue.h"
#include "redis_admin_scripts.h"
#include "redis_connection.h"
#include "redis_keys.h"
#include "redis_record.h"
#include "redis_scripts.h"
#include "redis_store_testing.h"
#include "redis_strings.h"

namespace idem {
namespace {

using internal::redis::AppendCompletedTail;
using internal::redis::AppendNewClaimRecord;
using internal::redis::AppendOwner;
using internal::redis::AppendRecordKey;
using internal::redis::AppendVersion;
using internal::redis::AppendVersionKey;
using internal::redis::Cat;
using internal::redis::Connection;
using internal::redis::ConnectParams;
using internal::redis::DecodeRecord;
using internal::redis::DecodeVersion;
using internal::redis::ErrorReplyStatus;
using internal::redis::Pool;
using internal::redis::RecordKey;
using internal::redis::ReplyPtr;
using internal::redis::VersionKey;

// Leases, retention and timeouts stay below 2^40 ms (~35 years), so the scripts' sums of
// durations stay exact in Lua's doubles.
constexpr int64_t kMaxMillis = int64_t{1} << 40;

enum ScriptId { kClaim = 0, kComplete, kRelease, kExtend, kInspect, kScriptCount };

struct ScriptInfo {
  std::string_view name;
  std::string_view body;
};
constexpr std::array<ScriptInfo, kScriptCount> kScripts = {{
    {"claim", internal::redis::kClaimScript},
    {"complete", internal::redis::kCompleteScript},
    {"release", internal::redis::kReleaseScript},
    {"extend", internal::redis::kExtendScript},
    {"inspect", internal::redis::kInspectScript},
}};

// Commands to pipeline, packed in one buffer: a batch costs a few allocations, not a few per
// message. Each is a script call (sent as EVALSHA sha numkeys KEYS... ARGV...) or a plain
// command. Arguments are appended to buffer() and closed by EndArg(); views of them are made
// only when every command is in (the buffer no longer moves).
class Commands {
 public:
  // `operation` names the batch in errors ("claim").
  Commands(std::string_view operation, std::size_t expected) : operation_(operation) {
    commands_.reserve(expected);
    spans_.reserve(expected * 8);
    bytes_.reserve(expected * 160);
  }

  // Starts a call of `script` whose first `num_keys` arguments are KEYS, the rest ARGV.
  void BeginScript(ScriptId script, int num_keys) {
    commands_.push_back(Entry{.script = script,
                              .num_keys = num_keys,
                              .first_span = static_cast<uint32_t>(spans_.size())});
  }
  // Starts a plain command: its arguments are the whole command.
  void BeginPlain() {
    commands_.push_back(
        Entry{.script = kPlain, .num_keys = 0, .first_span = static_cast<uint32_t>(spans_.size())});
  }
  std::string* buffer() { return &bytes_; }
  void EndArg() {
    spans_.push_back(Span{.offset = arg_start_, .size = bytes_.size() - arg_start_});
    arg_start_ = bytes_.size();
  }
  void Arg(std::string_view bytes) {
    bytes_.append(bytes);
    EndArg();
  }
  void ArgDecimal(int64_t value) {
    absl::StrAppend(&bytes_, value);
    EndArg();
  }

  std::string_view operation() const { return operation_; }
  std::size_t size() const { return commands_.size(); }
  bool is_script(std::size_t i) const { return commands_[i].script != kPlain; }
  // Replaces `argv` with command i: for a script, EVALSHA `sha` (or, with `eval`, EVAL and the
  // script's body), numkeys, KEYS, ARGV.
  void Command(std::size_t i, bool eval, const std::array<std::string, kScriptCount>& shas,
               std::vector<std::string_view>* argv) const {
    static constexpr std::string_view kNumKeys[] = {"0", "1", "2"};
    const Entry& entry = commands_[i];
    const uint32_t end = i + 1 < commands_.size() ? commands_[i + 1].first_span
                                                  : static_cast<uint32_t>(spans_.size());
    argv->clear();
    if (entry.script != kPlain) {
      argv->push_back(eval ? "EVAL" : "EVALSHA");
      argv->push_back(eval ? kScripts[entry.script].body : std::string_view(shas[entry.script]));
      argv->push_back(kNumKeys[entry.num_keys]);
    }
    for (uint32_t k = entry.first_span; k < end; ++k) {
      argv->push_back(std::string_view(bytes_).substr(spans_[k].offset, spans_[k].size));
    }
  }

 private:
  static constexpr int kPlain = -1;
  struct Entry {
    int script;    // a ScriptId, or kPlain
    int num_keys;  // 0..2
    uint32_t first_span;
  };
  struct Span {
    std::size_t offset;
    std::size_t size;
  };
  std::string_view operation_;
  std::vector<Entry> commands_;
  std::vector<Span> spans_;
  std::string bytes_;
  std::size_t arg_start_ = 0;
};

// What a pipeline of commands answered.
struct Replies {
  // One per command, in order: the reply (an error reply is kept as one), or nullptr for a
  // command that got no answer because the connection failed; `failure` says how.
  std::vector<ReplyPtr> replies;
  absl::Status failure;
  // The server's clock (ms) read by a TIME sent ahead of the calls, when one was asked for.
  int64_t server_ms = 0;
};

std::string_view ReplyString(const redisReply* reply) {
  return std::string_view(reply->str, reply->len);
}

bool IsString(const redisReply* reply) {
  return reply->type == REDIS_REPLY_STRING || reply->type == REDIS_REPLY_STATUS;
}

absl::Status UnexpectedReply(std::string_view what) {
  return absl::InternalError(Cat("redis ", what, ": unexpected reply shape"));
}

absl::Status CheckMillis(std::chrono::milliseconds value, std::string_view what, bool allow_zero) {
  if (value.count() < (allow_zero ? 0 : 1) || value.count() > kMaxMillis) {
    return absl::InvalidArgumentError(
        Cat(what, " must be ", allow_zero ? "0.." : "1..", kMaxMillis, " ms"));
  }
  return absl::OkStatus();
}

absl::Status ValidateOptions(const RedisStoreOptions& options) {
  if (options.unix_socket.empty()) {
    if (options.host.empty()) return absl::InvalidArgumentError("redis: host must not be empty");
    if (options.port < 1 || options.port > 65535) {
      return absl::InvalidArgumentError("redis: port must be 1..65535");
    }
  }
  if (options.db < 0) return absl::InvalidArgumentError("redis: db must be >= 0");
  if (options.key_prefix.empty()) {
    return absl::InvalidArgumentError("redis: key_prefix must not be empty");
  }
  if (options.pool_size == 0) return absl::InvalidArgumentError("redis: pool_size must be > 0");
  IDEM_RETURN_IF_ERROR(internal::ValidateGroupLimit(options.group_limit, "redis"));
  if (options.max_id_bytes == 0) {
    return absl::InvalidArgumentError("redis: max_id_bytes must be > 0");
  }
  IDEM_RETURN_IF_ERROR(CheckMillis(options.connect_timeout, "redis: connect_timeout", false));
  IDEM_RETURN_IF_ERROR(CheckMillis(options.io_timeout, "redis: io_timeout", false));
  IDEM_RETURN_IF_ERROR(CheckMillis(options.retention, "redis: retention", false));
  IDEM_RETURN_IF_ERROR(
      CheckMillis(options.reconnect_backoff_min, "redis: reconnect_backoff_min", false));
  if (options.reconnect_backoff_max < options.reconnect_backoff_min ||
      options.reconnect_backoff_max.count() > kMaxMillis) {
    return absl::InvalidArgumentError(
        "redis: reconnect_backoff_max must be >= reconnect_backoff_min");
  }
  return absl::OkStatus();
}

class RedisStore final : public DedupStore {
 public:
  static absl::StatusOr<std::unique_ptr<DedupStore>> Open(RedisStoreOptions options);

  // Group commit: concurrent claims (and concurrent completions) queue, and each group goes in
  // one pipeline on one connection (ClaimBatch, CompleteBatch), each call with its own outcome.
  absl::StatusOr<ClaimResult> Claim(const ClaimRequest& request) override {
    IDEM_RETURN_IF_ERROR(ValidateClaimRequest(request, options_.max_id_bytes));
    return claims_.Write(
        request,
        [this](const ClaimRequest& r) { return std::move(ClaimBatch(std::span(&r, 1)).front()); },
        [this](std::span<const ClaimRequest> group) { return ClaimBatch(group); });
  }
  absl::StatusOr<CompleteStatus> Complete(const CompleteRequest& request) override {
    IDEM_RETURN_IF_ERROR(ValidateCompleteRequest(request, options_.max_id_bytes));
    return completions_.Write(
        request,
        [this](const CompleteRequest& r) {
          return std::move(CompleteBatch(std::span(&r, 1)).front());
        },
        [this](std::span<const CompleteRequest> group) { return CompleteBatch(group); });
  }
  absl::Status Release(std::string_view scope, std::string_view id, uint64_t token) override;
  absl::StatusOr<int64_t> Extend(std::string_view scope, std::string_view id, uint64_t token,
                                 std::chrono::milliseconds lease) override;
  std::vector<absl::StatusOr<ClaimResult>> ClaimBatch(
      std::span<const ClaimRequest> requests) override;
  std::vector<absl::StatusOr<CompleteStatus>> CompleteBatch(
      std::span<const CompleteRequest> requests) override;
  absl::StatusOr<int64_t> PurgeExpired(int64_t limit) override;
  absl::StatusOr<std::optional<uint64_t>> AppliedVersion(std::string_view scope,
                                                         std::string_view key) override;
  absl::StatusOr<std::optional<RecordInfo>> Inspect(std::string_view scope,
                                                    std::string_view id) override;
  StoreStats Stats() const override;
  std::string_view BackendName() const override { return "redis"; }

  void UseScriptClaims() { plain_claims_.store(false, std::memory_order_relaxed); }

  // Operator calls and waiting (defined at the end of this file, with redis_admin_scripts.h).
  // List walks the scope's keys with SCAN; WaitForCompletion subscribes to the channel the
  // complete, release and reset scripts publish on.
  absl::StatusOr<ListPage> List(const ListRequest& request) override;
  absl::Status ResetAttempts(std::string_view scope, std::string_view id,
                             uint64_t token) override;
  absl::StatusOr<bool> WaitForCompletion(std::string_view scope, std::string_view id,
                                         std::chrono::steady_clock::time_point deadline) override;

 private:
  RedisStore(RedisStoreOptions options, ConnectParams params)
      : options_(std::move(options)),
        pool_(std::move(params), options_.pool_size, options_.reconnect_backoff_min,
              options_.reconnect_backoff_max) {}

  // Reads the persistence and eviction settings and reports unsafe ones. A refused CONFIG is a
  // warning; a failed connection is the returned status.
  absl::Status CheckServerSettings(Connection& connection);
  absl::Status LoadScripts(Connection& connection);

  absl::StatusOr<uint64_t> NextToken();
  std::string What(std::string_view operation) const {
    return Cat(operation, " at ", pool_.params().Endpoint());
  }

  // Runs the commands pipelined on one connection: all are sent, then all replies read, in one
  // round trip. With `read_time`, a TIME goes first, so `server_ms` is no later than the moment
  // any of the commands ran. Script calls answered NOSCRIPT (the server restarted and lost its
  // script cache, which means they did not run) are sent again with EVAL, which also re-caches
  // the script.
  Replies Run(const Commands& commands, bool read_time);
  // One plain command (GET); a server error reply becomes a status.
  absl::StatusOr<ReplyPtr> RunCommand(std::span<const std::string_view> args,
                                      std::string_view operation);

  // Appends the claim of `request` with `token`: the claim script, or with `plain` the plain
  // SET NX GET that is the whole claim of a new id (see ClaimBatch).
  void AppendClaim(Commands* commands, const ClaimRequest& request, uint64_t token, bool plain);
  // The outcome of one claim from the claim script's reply; `server_ms` is the TIME read ahead.
  absl::StatusOr<ClaimResult> ParseClaimReply(const redisReply* reply, uint64_t token,
                                              int64_t lease_ms, int64_t server_ms);
  // The outcome of a plain SET NX GET: nullopt when the record exists but is not COMPLETED (or
  // the server does not know SET NX GET), so that the claim script must decide.
  std::optional<absl::StatusOr<ClaimResult>> ParsePlainClaimReply(const redisReply* reply,
                                                                  const ClaimRequest& request,
                                                                  uint64_t token,
                                                                  int64_t server_ms);
  absl::StatusOr<CompleteStatus> ParseCompleteReply(const redisReply* reply);
  // The integer reply (1 done, 0 fenced) of release or extend.
  absl::Status ParseOwnerReply(const Replies& replies, std::string_view operation);
  absl::Status Fenced(std::string_view operation);
  // Whether the record `key` is a live claim, and if so how long its lease has left (ms).
  absl::StatusOr<std::optional<int64_t>> LiveLeaseLeft(const std::string& key);

  const RedisStoreOptions options_;
  std::array<std::string, kScriptCount> shas_;
  // Whether new ids are claimed with a plain SET NX GET (Redis >= 7.0). Cleared for good when the
  // server answers it with a syntax error (an older Redis).
  std::atomic<bool> plain_claims_{true};
  Pool pool_;
  // Serializes calls of a user's token source, which need not be thread-safe. (std::mutex: see
  // Pool.)
  std::mutex token_mu_;
  std::function<uint64_t()> token_source_;  // guarded by token_mu_
  mutable internal::StoreCounters counters_;
  // Group commit: one group of claims and one of completions in flight (write_queue.h says why
  // not one per pooled connection).
  internal::WriteQueue<ClaimRequest, absl::StatusOr<ClaimResult>> claims_{
      options_.group_limit, &counters_};
  internal::WriteQueue<CompleteRequest, absl::StatusOr<CompleteStatus>> completions_{
      options_.group_limit, &counters_};
};

absl::StatusOr<std::unique_ptr<DedupStore>> RedisStore::Open(RedisStoreOptions options) {
  IDEM_RETURN_IF_ERROR(ValidateOptions(options));
  ConnectParams params;
  params.host = options.host;
  params.port = options.port;
  params.unix_socket = options.unix_socket;
  params.db = options.db;
  params.user = options.user;
  params.password = options.password;
  params.client_name = options.client_name;
  params.connect_timeout = options.connect_timeout;
  params.io_timeout = options.io_timeout;
  std::function<uint64_t()> token_source =
      options.token_source ? options.token_source : internal::RandomTokenSource();

  std::unique_ptr<RedisStore> store(new RedisStore(std::move(options), std::move(params)));
  store->token_source_ = std::move(token_source);
  // Fail fast: a store that cannot reach its server, or authenticate, is not opened.
  IDEM_ASSIGN_OR_RETURN(Pool::Handle connection, store->pool_.Acquire());
  IDEM_RETURN_IF_ERROR(store->CheckServerSettings(*connection));
  IDEM_RETURN_IF_ERROR(store->LoadScripts(*connection));
  return std::unique_ptr<DedupStore>(std::move(store));
}

absl::Status RedisStore::CheckServerSettings(Connection& connection) {
  auto warn = [this](const std::string& line) {
    if (options_.warning) {
      options_.warning(line);
    } else {
      std::fprintf(stderr, "idem redis warning: %s\n", line.c_str());
    }
  };
  const std::string endpoint = pool_.params().Endpoint();
  // CONFIG GET one parameter at a time: Redis before 7.0 takes a single pattern.
  auto config_get = [&](std::string_view name) -> absl::StatusOr<std::optional<std::string>> {
    const std::string_view args[] = {"CONFIG", "GET", name};
    const std::string operation = Cat("CONFIG GET ", name);
    const std::string what = Cat(operation, " at ", endpoint);
    absl::StatusOr<ReplyPtr> reply = connection.Command(args, operation);
    if (!reply.ok()) return reply.status();
    const redisReply* r = reply->get();
    if (r->type == REDIS_REPLY_ERROR) return ErrorReplyStatus(ReplyString(r), what);
    if (r->type != REDIS_REPLY_ARRAY) return UnexpectedReply(what);
    if (r->elements < 2 || !IsString(r->element[1])) return std::optional<std::string>();
    return std::optional<std::string>(std::string(ReplyString(r->element[1])));
  };

  absl::StatusOr<std::optional<std::string>> appendonly = config_get("appendonly");
  if (connection.broken()) return appendonly.status();
  if (!appendonly.ok()) {
    warn(Cat("could not read the settings of the Redis server at ", endpoint, " (",
             appendonly.status().message(),
             "; CONFIG may be disabled or not permitted): check by hand that it runs "
             "with appendonly yes and maxmemory-policy noeviction"));
    return absl::OkStatus();
  }
  if (appendonly->has_value() && **appendonly == "no") {
    warn(Cat(
        "the Redis server at ", endpoint,
        " runs with appendonly no: a restart loses every dedup record and version written since "
        "the last RDB snapshot, so duplicates may run again and stale events may be applied; set "
        "appendonly yes (with appendfsync always to survive power loss)"));
  } else {
    absl::StatusOr<std::optional<std::string>> appendfsync = config_get("appendfsync");
    if (connection.broken()) return appendfsync.status();
    if (appendfsync.ok() && appendfsync->has_value() && **appendfsync == "no") {
      warn(Cat("the Redis server at ", endpoint,
               " runs with appendfsync no: the OS decides when completions reach the "
               "disk, and a machine crash can lose many seconds of them; use "
               "appendfsync always (or everysec: about one second at risk)"));
    }
  }
  absl::StatusOr<std::optional<std::string>> policy = config_get("maxmemory-policy");
  if (connection.broken()) return policy.status();
  if (policy.ok() && policy->has_value() && **policy != "noeviction") {
    warn(Cat("the Redis server at ", endpoint, " runs with maxmemory-policy ", **policy,
             ": when memory is full it may evict dedup records and version-gate "
             "entries, so duplicates run again and stale events are applied; set "
             "maxmemory-policy noeviction (writes then fail, and idem fails closed)"));
  }
  return absl::OkStatus();
}

absl::Status RedisStore::LoadScripts(Connection& connection) {
  for (int i = 0; i < kScriptCount; ++i) {
    const std::string_view args[] = {"SCRIPT", "LOAD", kScripts[i].body};
    const std::string operation = Cat("SCRIPT LOAD ", kScripts[i].name);
    const std::string what = What(operation);
    IDEM_ASSIGN_OR_RETURN(ReplyPtr reply, connection.Command(args, operation));
    if (reply->type == REDIS_REPLY_ERROR) return ErrorReplyStatus(ReplyString(reply.get()), what);
    if (!IsString(reply.get())) return UnexpectedReply(what);
    shas_[i] = std::string(ReplyString(reply.get()));
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> RedisStore::NextToken() {
  std::lock_guard lock(token_mu_);
  const uint64_t token = token_source_();
  if (token == 0) return absl::InternalError("redis: the token source returned 0");
  return token;
}

Replies RedisStore::Run(const Commands& commands, bool read_time) {
  Replies out;
  out.replies.resize(commands.size());
  if (commands.size() == 0) return out;
  const std::string_view operation = commands.operation();
  absl::StatusOr<Pool::Handle> connection = pool_.Acquire();
  if (!connection.ok()) {
    out.failure = connection.status();
    return out;
  }

  std::vector<std::string_view> argv;
  std::vector<size_t> pending(commands.size());
  for (size_t i = 0; i < commands.size(); ++i) pending[i] = i;
  for (int round = 0; round < 2 && !pending.empty(); ++round) {
    const bool eval = round == 1;
    const bool time = read_time && !eval;
    if (time) {
      const std::string_view time_command[] = {"TIME"};
      out.failure = (*connection)->Append(time_command, operation);
    }
    for (size_t k = 0; k < pending.size() && out.failure.ok(); ++k) {
      commands.Command(pending[k], eval, shas_, &argv);
      out.failure = (*connection)->Append(argv, operation);
    }
    // Nothing buffered was sent: none of the pending commands ran.
    if (!out.failure.ok()) return out;
    if (time) {
      absl::StatusOr<ReplyPtr> reply = (*connection)->GetReply(operation);
      if (!reply.ok()) {
        out.failure = reply.status();
        return out;
      }
      const redisReply* r = reply->get();
      int64_t seconds = 0;
      int64_t micros = 0;
      if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || !IsString(r->element[0]) ||
          !IsString(r->element[1]) ||
          !absl::SimpleAtoi(internal::ToAbsl(ReplyString(r->element[0])), &seconds) ||
          !absl::SimpleAtoi(internal::ToAbsl(ReplyString(r->element[1])), &micros)) {
        // The commands' replies are still to be read: the connection cannot be reused.
        (*connection)->MarkBroken();
        out.failure = UnexpectedReply(What("TIME"));
        return out;
      }
      out.server_ms = seconds * 1000 + micros / 1000;
    }
    std::vector<size_t> noscript;
    for (size_t k = 0; k < pending.size(); ++k) {
      absl::StatusOr<ReplyPtr> reply = (*connection)->GetReply(operation);
      if (!reply.ok()) {
        // The connection is gone: this and the later commands may or may not have run.
        out.failure = reply.status();
        return out;
      }
      const redisReply* r = reply->get();
      if (!eval && commands.is_script(pending[k]) && r->type == REDIS_REPLY_ERROR &&
          ReplyString(r).substr(0, 8) == "NOSCRIPT") {
        noscript.push_back(pending[k]);
        continue;
      }
      out.replies[pending[k]] = *std::move(reply);
    }
    pending = std::move(noscript);
  }
  return out;
}

absl::StatusOr<ReplyPtr> RedisStore::RunCommand(std::span<const std::string_view> args,
                                                std::string_view operation) {
  IDEM_ASSIGN_OR_RETURN(Pool::Handle connection, pool_.Acquire());
  IDEM_ASSIGN_OR_RETURN(ReplyPtr reply, connection->Command(args, operation));
  if (reply->type == REDIS_REPLY_ERROR) {
    return ErrorReplyStatus(ReplyString(reply.get()), What(operation));
  }
  return reply;
}

absl::Status RedisStore::Fenced(std::string_view operation) {
  internal::StoreCounters::Add(counters_.fenced);
  return internal::FencedError("redis", operation);
}

// A claim is one round trip: TIME, then per message either
//  - for a message without a version, on Redis >= 7.0: SET <record> <new claim> NX GET PX <lease +
//    keep>. That one command is the whole atomic claim of a new id; for an existing id it changes
//    nothing and returns the record as it is, and a COMPLETED record (duplicate) or another
//    payload's fingerprint (conflict) is already the answer. Only a record that is IN_PROGRESS or
//    RELEASED (rare: contention, takeover, retry) needs the claim script, in a second round trip;
//  - otherwise the claim script, which decides every case itself.
// TIME is read before any claim runs, so the lease ends reported are never later than the
// server's own (the TTLs, which the server counts from when each claim ran).
void RedisStore::AppendClaim(Commands* commands, const ClaimRequest& request, uint64_t token,
                             bool plain) {
  const int64_t keep = options_.retention.count();
  if (plain) {
    commands->BeginPlain();
    commands->Arg("SET");
  } else {
    commands->BeginScript(kClaim, request.version.has_value() ? 2 : 1);
  }
  AppendRecordKey(commands->buffer(), options_.key_prefix, request.scope, request.id);
  commands->EndArg();
  if (!plain && request.version.has_value()) {
    AppendVersionKey(commands->buffer(), options_.key_prefix, request.scope, request.version->key);
    commands->EndArg();
  }
  AppendNewClaimRecord(commands->buffer(), token, static_cast<uint64_t>(keep), request.fingerprint);
  commands->EndArg();
  if (plain) {
    commands->Arg("NX");
    commands->Arg("GET");
    commands->Arg("PX");
    commands->ArgDecimal(request.lease.count() + keep);
    return;
  }
  commands->ArgDecimal(request.lease.count() + keep);
  commands->ArgDecimal(request.max_attempts);
  if (request.version.has_value()) AppendVersion(commands->buffer(), request.version->version);
  commands->EndArg();
}

std::vector<absl::StatusOr<ClaimResult>> RedisStore::ClaimBatch(
    std::span<const ClaimRequest> requests) {
  // Default-constructed entries (an empty status, no allocation) are all overwritten below.
  std::vector<absl::StatusOr<ClaimResult>> out(requests.size());
  std::vector<uint64_t> tokens(requests.size(), 0);
  std::vector<size_t> sent;  // the request of each command
  sent.reserve(requests.size());
  Commands commands("claim", requests.size());
  const bool plain_claims = plain_claims_.load(std::memory_order_relaxed);
  for (size_t i = 0; i < requests.size(); ++i) {
    const ClaimRequest& request = requests[i];
    // ValidateClaimRequest bounds the lease (ValidateLease) below 2^40 ms, as the scripts need.
    absl::Status status = ValidateClaimRequest(request, options_.max_id_bytes);
    absl::StatusOr<uint64_t> token = status.ok() ? NextToken() : status;
    if (!token.ok()) {
      out[i] = token.status();
      continue;
    }
    tokens[i] = *token;
    AppendClaim(&commands, request, *token, plain_claims && !request.version.has_value());
    sent.push_back(i);
  }

  std::vector<size_t> undecided;  // requests the claim script must decide
  {
    const Replies replies = Run(commands, /*read_time=*/true);
    for (size_t k = 0; k < sent.size(); ++k) {
      const size_t i = sent[k];
      const redisReply* reply = replies.replies[k].get();
      if (reply == nullptr) {
        out[i] = replies.failure;
      } else if (!commands.is_script(k)) {
        std::optional<absl::StatusOr<ClaimResult>> result =
            ParsePlainClaimReply(reply, requests[i], tokens[i], replies.server_ms);
        if (result.has_value()) {
          out[i] = *std::move(result);
        } else {
          undecided.push_back(i);
        }
      } else {
        out[i] = ParseClaimReply(reply, tokens[i], requests[i].lease.count(), replies.server_ms);
      }
    }
  }
  if (undecided.empty()) return out;

  Commands scripts("claim", undecided.size());
  for (size_t i : undecided) AppendClaim(&scripts, requests[i], tokens[i], /*plain=*/false);
  const Replies replies = Run(scripts, /*read_time=*/true);
  for (size_t k = 0; k < undecided.size(); ++k) {
    const size_t i = undecided[k];
    const redisReply* reply = replies.replies[k].get();
    out[i] = reply == nullptr
                 ? absl::StatusOr<ClaimResult>(replies.failure)
                 : ParseClaimReply(reply, tokens[i], requests[i].lease.count(), replies.server_ms);
  }
  return out;
}

std::optional<absl::StatusOr<ClaimResult>> RedisStore::ParsePlainClaimReply(
    const redisReply* r, const ClaimRequest& request, uint64_t token, int64_t server_ms) {
  ClaimResult result;
  if (r->type == REDIS_REPLY_NIL) {  // the key was absent: claimed
    result.status = ClaimStatus::kAcquired;
    result.token = token;
    result.attempt = 1;
    result.lease_until_ms = server_ms + request.lease.count();
    counters_.CountClaim(result);
    return result;
  }
  if (r->type == REDIS_REPLY_ERROR) {
    const std::string_view error = ReplyString(r);
    if (error.substr(0, 16) == "ERR syntax error") {
      // A Redis before 7.0 refuses NX with GET (and changed nothing): scripts from now on.
      plain_claims_.store(false, std::memory_order_relaxed);
      return std::nullopt;
    }
    return ErrorReplyStatus(error, What("claim"));
  }
  if (r->type != REDIS_REPLY_STRING) return UnexpectedReply(What("claim"));
  absl::StatusOr<internal::redis::DecodedRecord> record = DecodeRecord(ReplyString(r));
  if (!record.ok()) {
    return absl::DataLossError(Cat("redis ", What("claim"), ": ", record.status().message()));
  }
  // As in the claim script: a conflict whatever the state, then a duplicate.
  if (request.fingerprint.has_value() && record->fingerprint.has_value() &&
      *request.fingerprint != *record->fingerprint) {
    result.status = ClaimStatus::kConflict;
  } else if (record->state == RecordState::kCompleted) {
    result.status = ClaimStatus::kDuplicate;
    result.result = std::move(record->result);
  } else {
    return std::nullopt;
  }
  result.attempt = record->attempts;
  counters_.CountClaim(result);
  return result;
}

absl::StatusOr<ClaimResult> RedisStore::ParseClaimReply(const redisReply* r, uint64_t token,
                                                        int64_t lease_ms, int64_t server_ms) {
  if (r->type == REDIS_REPLY_ERROR) return ErrorReplyStatus(ReplyString(r), What("claim"));
  ClaimResult result;
  // The lease ends are reported from the TIME read before the claim ran: never later than the
  // server's own (TTL-based) lease end.
  if (r->type == REDIS_REPLY_INTEGER && r->integer == 1) {
    result.status = ClaimStatus::kAcquired;
    result.token = token;
    result.attempt = 1;
    result.lease_until_ms = server_ms + lease_ms;
    counters_.CountClaim(result);
    return result;
  }
  if (r->type != REDIS_REPLY_ARRAY || r->elements < 2 || r->elements > 3 ||
      !IsString(r->element[0]) || r->element[1]->type != REDIS_REPLY_INTEGER) {
    return UnexpectedReply(What("claim"));
  }
  const std::string_view outcome = ReplyString(r->element[0]);
  const redisReply* extra = r->elements == 3 ? r->element[2] : nullptr;
  result.attempt = static_cast<uint32_t>(r->element[1]->integer);
  if (outcome == "acquired") {
    result.status = ClaimStatus::kAcquired;
    result.token = token;
    result.lease_until_ms = server_ms + lease_ms;
    result.took_over =
        extra != nullptr && extra->type == REDIS_REPLY_INTEGER && extra->integer == 1;
  } else if (outcome == "duplicate") {
    result.status = ClaimStatus::kDuplicate;
    if (extra != nullptr && IsString(extra)) result.result = std::string(ReplyString(extra));
  } else if (outcome == "in_progress") {
    result.status = ClaimStatus::kInProgress;
    if (extra == nullptr || extra->type != REDIS_REPLY_INTEGER) {
      return UnexpectedReply(What("claim"));
    }
    result.lease_until_ms = server_ms + extra->integer;
  } else if (outcome == "stale") {
    result.status = ClaimStatus::kStale;
    if (extra == nullptr || !IsString(extra)) return UnexpectedReply(What("claim"));
    const std::optional<uint64_t> applied = DecodeVersion(ReplyString(extra));
    if (!applied.has_value()) {
      return absl::DataLossError(
          Cat("redis ", What("claim"), ": a version-gate entry is not a 20-digit version"));
    }
    result.applied_version = *applied;
  } else if (outcome == "conflict") {
    result.status = ClaimStatus::kConflict;
  } else if (outcome == "dead_lettered") {
    result.status = ClaimStatus::kDeadLettered;
  } else {
    return UnexpectedReply(What("claim"));
  }
  counters_.CountClaim(result);
  return result;
}

std::vector<absl::StatusOr<CompleteStatus>> RedisStore::CompleteBatch(
    std::span<const CompleteRequest> requests) {
  Commands calls("complete", requests.size());
  std::vector<bool> refused(requests.size(), false);
  std::vector<absl::Status> refusals;
  for (size_t i = 0; i < requests.size(); ++i) {
    const CompleteRequest& request = requests[i];
    // ValidateCompleteRequest refuses token 0 and bounds the retention below 2^40 ms.
    absl::Status status = ValidateCompleteRequest(request, options_.max_id_bytes);
    if (!status.ok()) {
      refused[i] = true;
      refusals.push_back(std::move(status));
      continue;
    }
    const std::chrono::milliseconds retention =
        request.retention.count() > 0 ? request.retention : options_.retention;
    calls.BeginScript(kComplete, request.version.has_value() ? 2 : 1);
    AppendRecordKey(calls.buffer(), options_.key_prefix, request.scope, request.id);
    calls.EndArg();
    if (request.version.has_value()) {
      AppendVersionKey(calls.buffer(), options_.key_prefix, request.scope, request.version->key);
      calls.EndArg();
    }
    AppendOwner(calls.buffer(), request.token);
    calls.EndArg();
    calls.ArgDecimal(retention.count());
    AppendCompletedTail(calls.buffer(), request.fingerprint, request.result);
    calls.EndArg();
    if (request.version.has_value()) {
      AppendVersion(calls.buffer(), request.version->version);
      calls.EndArg();
    }
  }

  const Replies replies = Run(calls, /*read_time=*/false);
  std::vector<absl::StatusOr<CompleteStatus>> out;
  out.reserve(requests.size());
  size_t next_call = 0;
  size_t next_refusal = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    if (refused[i]) {
      out.push_back(std::move(refusals[next_refusal++]));
      continue;
    }
    const redisReply* reply = replies.replies[next_call++].get();
    if (reply == nullptr) {
      out.push_back(replies.failure);
    } else {
      out.push_back(ParseCompleteReply(reply));
    }
  }
  return out;
}

absl::StatusOr<CompleteStatus> RedisStore::ParseCompleteReply(const redisReply* r) {
  if (r->type == REDIS_REPLY_ERROR) return ErrorReplyStatus(ReplyString(r), What("complete"));
  if (r->type != REDIS_REPLY_INTEGER || r->integer < 0 || r->integer > 2) {
    return UnexpectedReply(What("complete"));
  }
  if (r->integer == 0) return Fenced("complete");
  const CompleteStatus status =
      r->integer == 2 ? CompleteStatus::kStale : CompleteStatus::kCompleted;
  counters_.CountCompletion(status);
  return status;
}

absl::Status RedisStore::ParseOwnerReply(const Replies& replies, std::string_view operation) {
  const redisReply* r = replies.replies.front().get();
  if (r == nullptr) return replies.failure;
  if (r->type == REDIS_REPLY_ERROR) return ErrorReplyStatus(ReplyString(r), What(operation));
  if (r->type != REDIS_REPLY_INTEGER) return UnexpectedReply(What(operation));
  if (r->integer != 1) return Fenced(operation);
  return absl::OkStatus();
}

absl::Status RedisStore::Release(std::string_view scope, std::string_view id, uint64_t token) {
  IDEM_RETURN_IF_ERROR(internal::ValidateOwnerArgs(scope, id, token, options_.max_id_bytes));
  Commands calls("release", 1);
  calls.BeginScript(kRelease, 1);
  AppendRecordKey(calls.buffer(), options_.key_prefix, scope, id);
  calls.EndArg();
  AppendOwner(calls.buffer(), token);
  calls.EndArg();
  calls.ArgDecimal(options_.retention.count());
  return ParseOwnerReply(Run(calls, /*read_time=*/false), "release");
}

absl::StatusOr<int64_t> RedisStore::Extend(std::string_view scope, std::string_view id,
                                           uint64_t token, std::chrono::milliseconds lease) {
  IDEM_RETURN_IF_ERROR(internal::ValidateOwnerArgs(scope, id, token, options_.max_id_bytes));
  IDEM_RETURN_IF_ERROR(ValidateLease(lease));
  Commands calls("extend", 1);
  calls.BeginScript(kExtend, 1);
  AppendRecordKey(calls.buffer(), options_.key_prefix, scope, id);
  calls.EndArg();
  AppendOwner(calls.buffer(), token);
  calls.EndArg();
  calls.ArgDecimal(lease.count());
  const Replies replies = Run(calls, /*read_time=*/true);
  IDEM_RETURN_IF_ERROR(ParseOwnerReply(replies, "extend"));
  // As for a claim: from the TIME read before the script ran, so never later than the server's.
  return replies.server_ms + lease.count();
}

absl::StatusOr<int64_t> RedisStore::PurgeExpired(int64_t limit) {
  IDEM_RETURN_IF_ERROR(ValidatePurgeLimit(limit));
  // Every record is written with a TTL (SET … PX; Extend moves it with PEXPIRE), so the server
  // deletes expired ones itself.
  return 0;
}

absl::StatusOr<std::optional<uint64_t>> RedisStore::AppliedVersion(std::string_view scope,
                                                                   std::string_view key) {
  IDEM_RETURN_IF_ERROR(ValidateScope(scope));
  IDEM_RETURN_IF_ERROR(ValidateId(key, options_.max_id_bytes, "version key"));
  const std::string redis_key = VersionKey(options_.key_prefix, scope, key);
  const std::string_view args[] = {"GET", redis_key};
  IDEM_ASSIGN_OR_RETURN(ReplyPtr reply, RunCommand(args, "applied version"));
  if (reply->type == REDIS_REPLY_NIL) return std::optional<uint64_t>();
  if (reply->type != REDIS_REPLY_STRING) return UnexpectedReply(What("applied version"));
  const std::optional<uint64_t> version = DecodeVersion(ReplyString(reply.get()));
  if (!version.has_value()) {
    return absl::DataLossError(
        Cat("redis ", What("applied version"), ": the entry is not a 20-digit version"));
  }
  return version;
}

absl::StatusOr<std::optional<RecordInfo>> RedisStore::Inspect(std::string_view scope,
                                                              std::string_view id) {
  IDEM_RETURN_IF_ERROR(ValidateScope(scope));
  IDEM_RETURN_IF_ERROR(ValidateId(id, options_.max_id_bytes));
  // The record, its TTL and the clock they are read against, in one read-only script: one
  // consistent view, which Redis also serves above maxmemory (MULTI would be refused there).
  Commands calls("inspect", 1);
  calls.BeginScript(kInspect, 1);
  AppendRecordKey(calls.buffer(), options_.key_prefix, scope, id);
  calls.EndArg();
  const Replies replies = Run(calls, /*read_time=*/false);
  const std::string what = What("inspect");
  const redisReply* reply = replies.replies.front().get();
  if (reply == nullptr) return replies.failure;
  if (reply->type == REDIS_REPLY_ERROR) return ErrorReplyStatus(ReplyString(reply), what);
  if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3) return UnexpectedReply(what);
  const redisReply* value = reply->element[0];
  const redisReply* ttl = reply->element[1];
  const redisReply* now = reply->element[2];
  if (value->type == REDIS_REPLY_NIL) return std::optional<RecordInfo>();
  int64_t seconds = 0;
  int64_t micros = 0;
  if (!IsString(value) || ttl->type != REDIS_REPLY_INTEGER || now->type != REDIS_REPLY_ARRAY ||
      now->elements != 2 || !IsString(now->element[0]) || !IsString(now->element[1]) ||
      !absl::SimpleAtoi(internal::ToAbsl(ReplyString(now->element[0])), &seconds) ||
      !absl::SimpleAtoi(internal::ToAbsl(ReplyString(now->element[1])), &micros)) {
    return UnexpectedReply(what);
  }
  absl::StatusOr<internal::redis::DecodedRecord> record = DecodeRecord(ReplyString(value));
  if (!record.ok())
    return absl::DataLossError(Cat("redis ", what, ": ", record.status().message()));
  const int64_t now_ms = seconds * 1000 + micros / 1000;
  RecordInfo info;
  info.state = record->state;
  info.token = record->token;
  info.attempts = record->attempts;
  // Every record carries a TTL; -1 (none) would mean it was rewritten by hand.
  info.expires_at_ms = ttl->integer >= 0 ? now_ms + ttl->integer : 0;
  if (info.state == RecordState::kInProgress && ttl->integer >= 0) {
    info.lease_until_ms = now_ms + ttl->integer - record->keep_ms;
  }
  info.fingerprint = record->fingerprint;
  info.result = std::move(record->result);
  return std::optional<RecordInfo>(std::move(info));
}

StoreStats RedisStore::Stats() const { return counters_.Snapshot(); }

// --- Operator calls and waiting.

namespace {

// `text` with the glob characters of SCAN's MATCH escaped.
std::string GlobEscape(std::string_view text) {
  std::string out;
  for (char c : text) {
    if (c == '*' || c == '?' || c == '[' || c == ']' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

// The Redis list cursor: "<SCAN cursor>:<hex of the last id returned from that SCAN batch>", or
// "<SCAN cursor>:" to start that batch from its first id. The batch is read again when the page
// resumes, sorted by id, so the hex says where it stopped.
struct RedisCursor {
  std::string scan = "0";
  std::optional<std::string> after;
};

absl::StatusOr<RedisCursor> ParseRedisCursor(std::string_view cursor) {
  RedisCursor out;
  if (cursor.empty()) return out;
  const std::size_t colon = cursor.find(':');
  uint64_t scan = 0;
  const std::string_view hex = colon == std::string_view::npos ? "" : cursor.substr(colon + 1);
  if (colon == std::string_view::npos ||
      !absl::SimpleAtoi(internal::ToAbsl(cursor.substr(0, colon)), &scan) || hex.size() % 2 != 0 ||
      hex.find_first_not_of("0123456789abcdef") != std::string_view::npos) {
    return absl::InvalidArgumentError("list: the cursor was not made by this backend's List");
  }
  out.scan = std::string(cursor.substr(0, colon));
  if (!hex.empty()) out.after = absl::HexStringToBytes(internal::ToAbsl(hex));
  return out;
}

std::string MakeRedisCursor(std::string_view scan, std::optional<std::string_view> after) {
  std::string out = Cat(scan, ":");
  if (after.has_value()) {
    out += absl::BytesToHexString(absl::string_view(after->data(), after->size()));
  }
  return out;
}

}  // namespace

absl::StatusOr<ListPage> RedisStore::List(const ListRequest& request) {
  IDEM_RETURN_IF_ERROR(ValidateListRequest(request));
  IDEM_ASSIGN_OR_RETURN(RedisCursor cursor, ParseRedisCursor(request.cursor));
  const std::string base = RecordKey(options_.key_prefix, request.scope, "");
  const std::string pattern = GlobEscape(base) + "*";
  const std::string what = What("list");
  IDEM_ASSIGN_OR_RETURN(Pool::Handle connection, pool_.Acquire());
  ListPage page;
  std::string scan = cursor.scan;
  std::optional<std::string> after = cursor.after;
  while (true) {
    const std::string_view scan_args[] = {"SCAN", scan, "MATCH", pattern, "COUNT", "1000"};
    IDEM_ASSIGN_OR_RETURN(ReplyPtr reply, connection->Command(scan_args, "list"));
    if (reply->type == REDIS_REPLY_ERROR) return ErrorReplyStatus(ReplyString(reply.get()), what);
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 || !IsString(reply->element[0]) ||
        reply->element[1]->type != REDIS_REPLY_ARRAY) {
      return UnexpectedReply(what);
    }
    const std::string next(ReplyString(reply->element[0]));
    std::vector<std::string> ids;
    for (std::size_t i = 0; i < reply->element[1]->elements; ++i) {
      const redisReply* key = reply->element[1]->element[i];
      if (!IsString(key)) return UnexpectedReply(what);
      const std::string_view name = ReplyString(key);
      if (name.size() <= base.size() || name.substr(0, base.size()) != base) continue;
      std::string id(name.substr(base.size()));
      if (after.has_value() && id <= *after) continue;
      ids.push_back(std::move(id));
    }
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());

    // The batch's records, their TTLs and the server's clock, in one round trip.
    std::vector<ListedRecord> matches;
    if (!ids.empty()) {
      std::vector<std::string> keys;
      keys.reserve(ids.size());
      for (const std::string& id : ids) keys.push_back(base + id);
      const std::string_view time_args[] = {"TIME"};
      IDEM_RETURN_IF_ERROR(connection->Append(time_args, "list"));
      for (const std::string& key : keys) {
        const std::string_view get[] = {"GET", key};
        const std::string_view pttl[] = {"PTTL", key};
        IDEM_RETURN_IF_ERROR(connection->Append(get, "list"));
        IDEM_RETURN_IF_ERROR(connection->Append(pttl, "list"));
      }
      IDEM_ASSIGN_OR_RETURN(ReplyPtr time, connection->GetReply("list"));
      int64_t seconds = 0;
      int64_t micros = 0;
      const bool time_ok =
          time->type == REDIS_REPLY_ARRAY && time->elements == 2 && IsString(time->element[0]) &&
          IsString(time->element[1]) &&
          absl::SimpleAtoi(internal::ToAbsl(ReplyString(time->element[0])), &seconds) &&
          absl::SimpleAtoi(internal::ToAbsl(ReplyString(time->element[1])), &micros);
      std::vector<std::pair<ReplyPtr, ReplyPtr>> rows;
      rows.reserve(keys.size());
      for (std::size_t i = 0; i < keys.size(); ++i) {
        IDEM_ASSIGN_OR_RETURN(ReplyPtr value, connection->GetReply("list"));
        IDEM_ASSIGN_OR_RETURN(ReplyPtr ttl, connection->GetReply("list"));
        rows.emplace_back(std::move(value), std::move(ttl));
      }
      if (!time_ok) return UnexpectedReply(what);
      const int64_t now_ms = seconds * 1000 + micros / 1000;
      for (std::size_t i = 0; i < ids.size(); ++i) {
        const redisReply* value = rows[i].first.get();
        const redisReply* ttl = rows[i].second.get();
        if (value->type == REDIS_REPLY_NIL) continue;  // expired since the SCAN
        if (value->type == REDIS_REPLY_ERROR) {
          return ErrorReplyStatus(ReplyString(value), what);
        }
        if (!IsString(value) || ttl->type != REDIS_REPLY_INTEGER) return UnexpectedReply(what);
        absl::StatusOr<internal::redis::DecodedRecord> record = DecodeRecord(ReplyString(value));
        if (!record.ok()) {
          return absl::DataLossError(Cat("redis ", what, ": ", record.status().message()));
        }
        RecordInfo info;
        info.state = record->state;
        info.token = record->token;
        info.attempts = record->attempts;
        info.expires_at_ms = ttl->integer >= 0 ? now_ms + ttl->integer : 0;
        if (info.state == RecordState::kInProgress && ttl->integer >= 0) {
          info.lease_until_ms = now_ms + ttl->integer - record->keep_ms;
        }
        info.fingerprint = record->fingerprint;
        info.result = std::move(record->result);
        if (!MatchesListFilter(info, request.filter, request.max_attempts, now_ms)) continue;
        matches.push_back(ListedRecord{.id = ids[i], .info = std::move(info)});
      }
    }

    const std::size_t room = request.limit - page.records.size();
    if (matches.size() > room) {
      matches.resize(room);
      for (ListedRecord& r : matches) page.records.push_back(std::move(r));
      // Resume within this batch, after the last id returned.
      page.next_cursor = MakeRedisCursor(scan, page.records.back().id);
      return page;
    }
    for (ListedRecord& r : matches) page.records.push_back(std::move(r));
    after.reset();
    if (next == "0") return page;  // SCAN is done: so is the listing
    scan = next;
    if (page.records.size() == request.limit) {
      page.next_cursor = MakeRedisCursor(scan, std::nullopt);
      return page;
    }
  }
}

absl::Status RedisStore::ResetAttempts(std::string_view scope, std::string_view id,
                                       uint64_t token) {
  IDEM_RETURN_IF_ERROR(internal::ValidateOwnerArgs(scope, id, token, options_.max_id_bytes));
  const std::string key = RecordKey(options_.key_prefix, scope, id);
  std::string owner;
  AppendOwner(&owner, token);
  const std::string retention = absl::StrCat(options_.retention.count());
  const std::string_view args[] = {"EVAL", internal::redis::kResetAttemptsScript, "1", key,
                                   std::string_view(owner).substr(1), retention};
  IDEM_ASSIGN_OR_RETURN(ReplyPtr reply, RunCommand(args, "reset"));
  if (reply->type != REDIS_REPLY_INTEGER) return UnexpectedReply(What("reset"));
  switch (reply->integer) {
    case 1:
      return absl::OkStatus();
    case 0:
      return absl::NotFoundError("reset: no record for this id");
    case 2:
      return absl::AbortedError("reset refused: the record's token changed since it was read");
    case 3:
      return absl::FailedPreconditionError("reset refused: the record is COMPLETED");
    case 4:
      return absl::FailedPreconditionError("reset refused: the record is a live claim");
    default:
      return UnexpectedReply(What("reset"));
  }
}

absl::StatusOr<std::optional<int64_t>> RedisStore::LiveLeaseLeft(const std::string& key) {
  const std::string_view get[] = {"GET", key};
  IDEM_ASSIGN_OR_RETURN(ReplyPtr value, RunCommand(get, "wait"));
  if (value->type == REDIS_REPLY_NIL) return std::optional<int64_t>();
  if (!IsString(value.get())) return UnexpectedReply(What("wait"));
  absl::StatusOr<internal::redis::DecodedRecord> record = DecodeRecord(ReplyString(value.get()));
  if (!record.ok()) return absl::DataLossError(Cat("redis wait: ", record.status().message()));
  if (record->state != RecordState::kInProgress) return std::optional<int64_t>();
  const std::string_view pttl[] = {"PTTL", key};
  IDEM_ASSIGN_OR_RETURN(ReplyPtr ttl, RunCommand(pttl, "wait"));
  if (ttl->type != REDIS_REPLY_INTEGER) return UnexpectedReply(What("wait"));
  const int64_t left = ttl->integer - record->keep_ms;
  if (left <= 0) return std::optional<int64_t>();
  return std::optional<int64_t>(left);
}

absl::StatusOr<bool> RedisStore::WaitForCompletion(
    std::string_view scope, std::string_view id, std::chrono::steady_clock::time_point deadline) {
  IDEM_RETURN_IF_ERROR(ValidateScope(scope));
  IDEM_RETURN_IF_ERROR(ValidateId(id, options_.max_id_bytes));
  const std::string key = RecordKey(options_.key_prefix, scope, id);
  using std::chrono::milliseconds;
  while (true) {
    // Subscribed first, then the record read: a completion after the read is a message, one
    // before it is seen by the read. A subscriber connection serves nothing else, so it is not
    // the pool's.
    IDEM_ASSIGN_OR_RETURN(std::unique_ptr<Connection> subscriber,
                          Connection::Open(pool_.params()));
    const std::string_view subscribe[] = {"SUBSCRIBE", key};
    IDEM_ASSIGN_OR_RETURN(ReplyPtr confirmed, subscriber->Command(subscribe, "wait"));
    if (confirmed->type == REDIS_REPLY_ERROR) {
      return ErrorReplyStatus(ReplyString(confirmed.get()), What("wait"));
    }
    while (true) {
      IDEM_ASSIGN_OR_RETURN(std::optional<int64_t> left, LiveLeaseLeft(key));
      if (!left.has_value()) return true;
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline) return false;
      // Until the deadline, or a little past the lease's end (which nobody announces).
      const milliseconds wait =
          std::min(std::chrono::ceil<milliseconds>(deadline - now), milliseconds(*left + 5));
      IDEM_RETURN_IF_ERROR(subscriber->SetTimeout(std::max(wait, milliseconds(1))));
      absl::StatusOr<ReplyPtr> message = subscriber->GetReply("wait");
      if (!message.ok()) {
        // A read timeout leaves the connection unusable: subscribe again on a new one.
        if (message.status().code() != absl::StatusCode::kDeadlineExceeded) {
          return message.status();
        }
        break;
      }
    }
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<DedupStore>> NewRedisStore(RedisStoreOptions options) {
  return RedisStore::Open(std::move(options));
}

namespace internal::redis {

void UseScriptClaimsForTesting(DedupStore& store) {
  static_cast<RedisStore&>(store).UseScriptClaims();
}

}  // namespace internal::redis

}  // namespace idem

// The Redis DedupStore: every state change is one Lua script (redis_scripts.h) run with EVALSHA
// over a pooled hiredis connection (redis_connection.h).
#include "idem/redis_store.h"

#include <hiredis/hiredis.h>

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
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "internal/status_macros.h"
#include "internal/store_counters.h"
#include "internal/strings.h"
#include "internal/token.h"
#include "redis_connection.h"
#include "redis_keys.h"
#include "redis_scripts.h"
#include "redis_strings.h"

namespace idem {
namespace {

using internal::redis::Cat;
using internal::redis::Connection;
using internal::redis::ConnectParams;
using internal::redis::DecodeVersion;
using internal::redis::EncodeVersion;
using internal::redis::ErrorReplyStatus;
using internal::redis::Pool;
using internal::redis::RecordKey;
using internal::redis::ReplyPtr;
using internal::redis::VersionKey;

// Leases, retention and timeouts stay below 2^40 ms (~35 years), so the scripts' sums of server
// time and durations stay exact in Lua's doubles.
constexpr int64_t kMaxMillis = int64_t{1} << 40;

enum ScriptId { kClaim = 0, kComplete, kRelease, kExtend, kScriptCount };

struct ScriptInfo {
  std::string_view name;
  std::string_view body;
};
constexpr std::array<ScriptInfo, kScriptCount> kScripts = {{
    {"claim", internal::redis::kClaimScript},
    {"complete", internal::redis::kCompleteScript},
    {"release", internal::redis::kReleaseScript},
    {"extend", internal::redis::kExtendScript},
}};

// One script invocation: its KEYS and ARGV, owned.
struct ScriptCall {
  ScriptId script = kClaim;
  std::vector<std::string> keys;
  std::vector<std::string> args;
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

  absl::StatusOr<ClaimResult> Claim(const ClaimRequest& request) override {
    std::vector<absl::StatusOr<ClaimResult>> results = ClaimBatch(std::span(&request, 1));
    return std::move(results.front());
  }
  absl::StatusOr<CompleteStatus> Complete(const CompleteRequest& request) override {
    std::vector<absl::StatusOr<CompleteStatus>> results = CompleteBatch(std::span(&request, 1));
    return std::move(results.front());
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

  // Runs the calls pipelined on one connection: all are sent, then all replies read, in one
  // round trip. Calls answered NOSCRIPT (the server restarted and lost its script cache, which
  // means they did not run) are sent again with EVAL, which also re-caches the script. One entry
  // per call: the reply, or the status of a transport failure or a server error reply.
  std::vector<absl::StatusOr<ReplyPtr>> RunScripts(std::span<const ScriptCall> calls);
  // One plain command (GET, HMGET); a server error reply becomes a status.
  absl::StatusOr<ReplyPtr> RunCommand(std::span<const std::string_view> args,
                                      std::string_view operation);

  absl::StatusOr<ClaimResult> ParseClaimReply(absl::StatusOr<ReplyPtr> reply, uint64_t token);
  absl::StatusOr<CompleteStatus> ParseCompleteReply(absl::StatusOr<ReplyPtr> reply);
  absl::Status Fenced(std::string_view operation);

  const RedisStoreOptions options_;
  std::array<std::string, kScriptCount> shas_;
  Pool pool_;
  // Serializes calls of a user's token source, which need not be thread-safe. (std::mutex: see
  // Pool.)
  std::mutex token_mu_;
  std::function<uint64_t()> token_source_;  // guarded by token_mu_
  mutable internal::StoreCounters counters_;
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
    const std::string what = Cat("CONFIG GET ", name, " at ", endpoint);
    absl::StatusOr<ReplyPtr> reply = connection.Command(args, what);
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
    const std::string what = What(Cat("SCRIPT LOAD ", kScripts[i].name));
    IDEM_ASSIGN_OR_RETURN(ReplyPtr reply, connection.Command(args, what));
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

std::vector<absl::StatusOr<ReplyPtr>> RedisStore::RunScripts(std::span<const ScriptCall> calls) {
  std::vector<absl::StatusOr<ReplyPtr>> out;
  out.reserve(calls.size());
  for (size_t i = 0; i < calls.size(); ++i) {
    out.emplace_back(absl::InternalError("redis: script call not run"));
  }
  if (calls.empty()) return out;
  const std::string what = What(kScripts[calls.front().script].name);
  absl::StatusOr<Pool::Handle> connection = pool_.Acquire();
  if (!connection.ok()) {
    for (auto& entry : out) entry = connection.status();
    return out;
  }

  std::vector<size_t> pending(calls.size());
  for (size_t i = 0; i < calls.size(); ++i) pending[i] = i;
  for (int round = 0; round < 2 && !pending.empty(); ++round) {
    const bool eval = round == 1;
    for (size_t k = 0; k < pending.size(); ++k) {
      const ScriptCall& call = calls[pending[k]];
      const std::string numkeys = Cat(call.keys.size());
      std::vector<std::string_view> argv;
      argv.reserve(3 + call.keys.size() + call.args.size());
      argv.push_back(eval ? "EVAL" : "EVALSHA");
      argv.push_back(eval ? kScripts[call.script].body : std::string_view(shas_[call.script]));
      argv.push_back(numkeys);
      for (const std::string& key : call.keys) argv.push_back(key);
      for (const std::string& arg : call.args) argv.push_back(arg);
      if (absl::Status status = (*connection)->Append(argv, what); !status.ok()) {
        // Nothing buffered was sent: none of the pending calls ran.
        for (size_t j : pending) out[j] = status;
        return out;
      }
    }
    std::vector<size_t> noscript;
    for (size_t k = 0; k < pending.size(); ++k) {
      absl::StatusOr<ReplyPtr> reply = (*connection)->GetReply(what);
      if (!reply.ok()) {
        // The connection is gone: this and the later calls may or may not have run.
        for (size_t j = k; j < pending.size(); ++j) out[pending[j]] = reply.status();
        return out;
      }
      const redisReply* r = reply->get();
      if (r->type == REDIS_REPLY_ERROR) {
        const std::string_view error = ReplyString(r);
        if (!eval && error.substr(0, 8) == "NOSCRIPT") {
          noscript.push_back(pending[k]);
        } else {
          out[pending[k]] = ErrorReplyStatus(error, what);
        }
        continue;
      }
      out[pending[k]] = std::move(reply);
    }
    pending = std::move(noscript);
  }
  return out;
}

absl::StatusOr<ReplyPtr> RedisStore::RunCommand(std::span<const std::string_view> args,
                                                std::string_view operation) {
  const std::string what = What(operation);
  IDEM_ASSIGN_OR_RETURN(Pool::Handle connection, pool_.Acquire());
  IDEM_ASSIGN_OR_RETURN(ReplyPtr reply, connection->Command(args, what));
  if (reply->type == REDIS_REPLY_ERROR) return ErrorReplyStatus(ReplyString(reply.get()), what);
  return reply;
}

absl::Status RedisStore::Fenced(std::string_view operation) {
  internal::StoreCounters::Add(counters_.fenced);
  return absl::AbortedError(
      Cat("redis ", operation,
          ": the token no longer owns the claim (taken over after its lease, released, completed, "
          "or expired)"));
}

std::vector<absl::StatusOr<ClaimResult>> RedisStore::ClaimBatch(
    std::span<const ClaimRequest> requests) {
  std::vector<absl::StatusOr<ClaimResult>> out;
  out.reserve(requests.size());
  std::vector<ScriptCall> calls;
  std::vector<size_t> call_index;  // out index of each call
  std::vector<uint64_t> tokens;
  for (size_t i = 0; i < requests.size(); ++i) {
    const ClaimRequest& request = requests[i];
    out.emplace_back(absl::InternalError("redis: claim not run"));
    if (absl::Status status = ValidateClaimRequest(request, options_.max_id_bytes); !status.ok()) {
      out[i] = status;
      continue;
    }
    if (absl::Status status = CheckMillis(request.lease, "lease", false); !status.ok()) {
      out[i] = status;
      continue;
    }
    absl::StatusOr<uint64_t> token = NextToken();
    if (!token.ok()) {
      out[i] = token.status();
      continue;
    }
    ScriptCall call;
    call.script = kClaim;
    call.keys.push_back(RecordKey(options_.key_prefix, request.scope, request.id));
    if (request.version.has_value()) {
      call.keys.push_back(VersionKey(options_.key_prefix, request.scope, request.version->key));
    }
    call.args = {Cat(*token),
                 Cat(request.lease.count()),
                 Cat(options_.retention.count()),
                 request.fingerprint ? request.fingerprint->ToBytes() : std::string(),
                 Cat(request.max_attempts),
                 request.version ? EncodeVersion(request.version->version) : std::string()};
    calls.push_back(std::move(call));
    call_index.push_back(i);
    tokens.push_back(*token);
  }
  std::vector<absl::StatusOr<ReplyPtr>> replies = RunScripts(calls);
  for (size_t k = 0; k < calls.size(); ++k) {
    out[call_index[k]] = ParseClaimReply(std::move(replies[k]), tokens[k]);
  }
  return out;
}

absl::StatusOr<ClaimResult> RedisStore::ParseClaimReply(absl::StatusOr<ReplyPtr> reply,
                                                        uint64_t token) {
  if (!reply.ok()) return reply.status();
  const std::string what = What("claim");
  const redisReply* r = reply->get();
  if (r->type != REDIS_REPLY_ARRAY || r->elements != 4 || !IsString(r->element[0]) ||
      r->element[1]->type != REDIS_REPLY_INTEGER || r->element[2]->type != REDIS_REPLY_INTEGER) {
    return UnexpectedReply(what);
  }
  const std::string_view outcome = ReplyString(r->element[0]);
  const redisReply* extra = r->element[3];
  ClaimResult result;
  result.attempt = static_cast<uint32_t>(r->element[1]->integer);
  if (outcome == "acquired") {
    result.status = ClaimStatus::kAcquired;
    result.token = token;
    result.lease_until_ms = r->element[2]->integer;
    result.took_over = extra->type == REDIS_REPLY_INTEGER && extra->integer == 1;
  } else if (outcome == "duplicate") {
    result.status = ClaimStatus::kDuplicate;
    if (IsString(extra)) result.result = std::string(ReplyString(extra));
  } else if (outcome == "in_progress") {
    result.status = ClaimStatus::kInProgress;
    result.lease_until_ms = r->element[2]->integer;
  } else if (outcome == "stale") {
    result.status = ClaimStatus::kStale;
    if (!IsString(extra)) return UnexpectedReply(what);
    const std::optional<uint64_t> applied = DecodeVersion(ReplyString(extra));
    if (!applied.has_value()) {
      return absl::DataLossError(Cat("redis ", what,
                                     ": a version-gate entry is not a "
                                     "20-digit version"));
    }
    result.applied_version = *applied;
  } else if (outcome == "conflict") {
    result.status = ClaimStatus::kConflict;
  } else if (outcome == "dead_lettered") {
    result.status = ClaimStatus::kDeadLettered;
  } else {
    return UnexpectedReply(what);
  }
  counters_.CountClaim(result);
  return result;
}

std::vector<absl::StatusOr<CompleteStatus>> RedisStore::CompleteBatch(
    std::span<const CompleteRequest> requests) {
  std::vector<absl::StatusOr<CompleteStatus>> out;
  out.reserve(requests.size());
  std::vector<ScriptCall> calls;
  std::vector<size_t> call_index;
  for (size_t i = 0; i < requests.size(); ++i) {
    const CompleteRequest& request = requests[i];
    out.emplace_back(absl::InternalError("redis: complete not run"));
    absl::Status status = ValidateCompleteRequest(request, options_.max_id_bytes);
    if (status.ok() && request.token == 0) {
      status = absl::InvalidArgumentError("complete: token 0 is never a claim's token");
    }
    if (status.ok()) status = CheckMillis(request.retention, "retention", true);
    if (!status.ok()) {
      out[i] = status;
      continue;
    }
    const std::chrono::milliseconds retention =
        request.retention.count() > 0 ? request.retention : options_.retention;
    ScriptCall call;
    call.script = kComplete;
    call.keys.push_back(RecordKey(options_.key_prefix, request.scope, request.id));
    if (request.version.has_value()) {
      call.keys.push_back(VersionKey(options_.key_prefix, request.scope, request.version->key));
    }
    call.args = {Cat(request.token),
                 Cat(retention.count()),
                 request.result.has_value() ? "1" : "0",
                 request.result.has_value() ? std::string(*request.result) : std::string(),
                 request.fingerprint ? request.fingerprint->ToBytes() : std::string(),
                 request.version ? EncodeVersion(request.version->version) : std::string()};
    calls.push_back(std::move(call));
    call_index.push_back(i);
  }
  std::vector<absl::StatusOr<ReplyPtr>> replies = RunScripts(calls);
  for (size_t k = 0; k < calls.size(); ++k) {
    out[call_index[k]] = ParseCompleteReply(std::move(replies[k]));
  }
  return out;
}

absl::StatusOr<CompleteStatus> RedisStore::ParseCompleteReply(absl::StatusOr<ReplyPtr> reply) {
  if (!reply.ok()) return reply.status();
  const redisReply* r = reply->get();
  if (!IsString(r)) return UnexpectedReply(What("complete"));
  const std::string_view outcome = ReplyString(r);
  if (outcome == "aborted") return Fenced("complete");
  if (outcome != "completed" && outcome != "stale") return UnexpectedReply(What("complete"));
  const CompleteStatus status =
      outcome == "stale" ? CompleteStatus::kStale : CompleteStatus::kCompleted;
  counters_.CountCompletion(status);
  return status;
}

absl::Status RedisStore::Release(std::string_view scope, std::string_view id, uint64_t token) {
  IDEM_RETURN_IF_ERROR(ValidateScope(scope));
  IDEM_RETURN_IF_ERROR(ValidateId(id, options_.max_id_bytes));
  if (token == 0) return absl::InvalidArgumentError("release: token 0 is never a claim's token");
  ScriptCall call;
  call.script = kRelease;
  call.keys.push_back(RecordKey(options_.key_prefix, scope, id));
  call.args = {Cat(token), Cat(options_.retention.count())};
  std::vector<absl::StatusOr<ReplyPtr>> replies = RunScripts(std::span(&call, 1));
  IDEM_ASSIGN_OR_RETURN(ReplyPtr reply, std::move(replies.front()));
  if (reply->type != REDIS_REPLY_INTEGER) return UnexpectedReply(What("release"));
  if (reply->integer != 1) return Fenced("release");
  return absl::OkStatus();
}

absl::StatusOr<int64_t> RedisStore::Extend(std::string_view scope, std::string_view id,
                                           uint64_t token, std::chrono::milliseconds lease) {
  IDEM_RETURN_IF_ERROR(ValidateScope(scope));
  IDEM_RETURN_IF_ERROR(ValidateId(id, options_.max_id_bytes));
  if (token == 0) return absl::InvalidArgumentError("extend: token 0 is never a claim's token");
  IDEM_RETURN_IF_ERROR(CheckMillis(lease, "lease", false));
  ScriptCall call;
  call.script = kExtend;
  call.keys.push_back(RecordKey(options_.key_prefix, scope, id));
  call.args = {Cat(token), Cat(lease.count()), Cat(options_.retention.count())};
  std::vector<absl::StatusOr<ReplyPtr>> replies = RunScripts(std::span(&call, 1));
  IDEM_ASSIGN_OR_RETURN(ReplyPtr reply, std::move(replies.front()));
  if (reply->type == REDIS_REPLY_NIL) return Fenced("extend");
  if (reply->type != REDIS_REPLY_INTEGER) return UnexpectedReply(What("extend"));
  return static_cast<int64_t>(reply->integer);
}

absl::StatusOr<int64_t> RedisStore::PurgeExpired(int64_t limit) {
  if (limit < 0) return absl::InvalidArgumentError("purge: limit must be >= 0");
  // Every record carries a TTL (PEXPIRE), so the server deletes expired ones itself.
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
  const std::string key = RecordKey(options_.key_prefix, scope, id);
  const std::string_view args[] = {"HMGET",       key,          "state",       "token", "attempts",
                                   "lease_until", "expires_at", "fingerprint", "result"};
  IDEM_ASSIGN_OR_RETURN(ReplyPtr reply, RunCommand(args, "inspect"));
  const std::string what = What("inspect");
  if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 7) return UnexpectedReply(what);
  redisReply** f = reply->element;
  if (f[0]->type == REDIS_REPLY_NIL) return std::optional<RecordInfo>();
  RecordInfo info;
  const std::string_view state = ReplyString(f[0]);
  if (state == "P") {
    info.state = RecordState::kInProgress;
  } else if (state == "R") {
    info.state = RecordState::kReleased;
  } else if (state == "C") {
    info.state = RecordState::kCompleted;
  } else {
    return absl::DataLossError(Cat("redis ", what, ": unknown record state"));
  }
  auto number = [&](const redisReply* field, auto& out) -> bool {
    if (field->type == REDIS_REPLY_NIL) return true;
    return IsString(field) && absl::SimpleAtoi(internal::ToAbsl(ReplyString(field)), &out);
  };
  if (!number(f[1], info.token) || !number(f[2], info.attempts) ||
      !number(f[3], info.lease_until_ms) || !number(f[4], info.expires_at_ms)) {
    return absl::DataLossError(Cat("redis ", what, ": a record field is not a number"));
  }
  if (info.state != RecordState::kInProgress) info.lease_until_ms = 0;
  if (IsString(f[5])) {
    if (f[5]->len != 16) {
      return absl::DataLossError(Cat("redis ", what, ": bad fingerprint length"));
    }
    info.fingerprint = Fingerprint::FromBytes(ReplyString(f[5]));
  }
  if (IsString(f[6])) info.result = std::string(ReplyString(f[6]));
  return std::optional<RecordInfo>(std::move(info));
}

StoreStats RedisStore::Stats() const { return counters_.Snapshot(); }

}  // namespace

absl::StatusOr<std::unique_ptr<DedupStore>> NewRedisStore(RedisStoreOptions options) {
  return RedisStore::Open(std::move(options));
}

}  // namespace idem

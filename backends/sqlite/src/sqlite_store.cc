// The lease-mode SQLite store.
//
// Connection strategy: one connection per store, used under a mutex. SQLite admits one writer
// per database file at a time, and every state change here is a short write transaction, so a
// pool of connections in one process would not write in parallel: its connections would only
// wait on each other through SQLite's busy handler (sleep-and-poll) instead of a mutex queue,
// adding latency and spurious busy timeouts. Reads (Inspect, AppliedVersion) are point lookups
// on a primary key. Other processes open their own stores: file locks, BEGIN IMMEDIATE and the
// busy timeout serialise them.
#include "idem/sqlite_store.h"

#include <sqlite3.h>

#include <atomic>
#include <climits>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "internal/owner.h"
#include "internal/store_counters.h"
#include "internal/strings.h"
#include "internal/token.h"
#include "internal/write_queue.h"
#include "sqlite_admin.h"
#include "sqlite_internal.h"
#include "sqlite_store_testing.h"

namespace idem {
namespace {

using internal::DedupRow;
using internal::SqliteDb;
using internal::SqliteStatus;
using internal::SqliteStmt;
using internal::StmtRun;
using internal::TokenToSql;
using internal::TxnStatements;
using internal::WriteTxn;

// A claim, inside its BEGIN IMMEDIATE transaction:
//  1. the fresh claim: an insert that does nothing when the id exists. It takes the common case
//     (a new id) without RETURNING, which costs SQLite two temporary tables on every run, also
//     when it returns nothing: sqlite3_changes() says whether it inserted, and then attempts is
//     1 and the token and lease are the ones bound.
//  2. when it inserted nothing, one read of the row answers a duplicate, a conflict or a live
//     claim at once;
//  3. only a record that looks claimable goes on to the takeover upsert, whose own WHERE decides
//     (the read above only spares a statement that would change nothing; no write depends on
//     it), followed by a read of the attempts and claim_origin it wrote.
// Each statement comes in two forms, chosen per request: without a version, the row is plain
// VALUES; with one, it is a SELECT that yields no row when the version gate refuses the request
// (then neither the insert nor the update happens). The gate inside the statement costs less
// than a separate version lookup before it, and keeps the claim one statement.
//   ?1 scope  ?2 id  ?3 token  ?4 lease_until  ?5 fingerprint  ?6 expires_at
//   ?7 version key  ?8 version  (takeover:) ?9 now  ?10 max_attempts  ?11 1
constexpr char kClaimRow[] = R"sql(
INSERT INTO idem_dedup(scope, id, status, token, lease_until, attempts, fingerprint, result,
                       expires_at, claim_origin)
VALUES(?1, ?2, 0, ?3, ?4, 1, ?5, NULL, ?6, 0)
)sql";
constexpr char kClaimRowIfNewer[] = R"sql(
INSERT INTO idem_dedup(scope, id, status, token, lease_until, attempts, fingerprint, result,
                       expires_at, claim_origin)
SELECT ?1, ?2, 0, ?3, ?4, 1, ?5, NULL, ?6, 0
WHERE NOT EXISTS (SELECT 1 FROM idem_versions AS v
                  WHERE v.scope = ?1 AND v.key = ?7 AND v.version >= ?8)
)sql";
// Each form ends in internal::kOnConflictDoNothing (the fresh claim) or
// internal::kOnConflictTakeOver (the takeover, with ?9 now, ?10 max_attempts, ?11 = 1: a takeover
// counts its attempt). After the fresh insert found the id held, the upsert's insert branch could
// only run if the row had vanished in between, which the write lock rules out; it is kept so that
// the statement alone is a complete claim.

//   ?1 scope  ?2 id  ?3 token  ?4 expires_at  ?5 result  ?6 fingerprint
constexpr char kCompleteSql[] = R"sql(
UPDATE idem_dedup SET status = 2, lease_until = 0, expires_at = ?4,
  result = coalesce(?5, result), fingerprint = coalesce(fingerprint, ?6)
WHERE scope = ?1 AND id = ?2 AND status = 0 AND token = ?3
)sql";

//   ?1 scope  ?2 id  ?3 token  ?4 expires_at
constexpr char kReleaseSql[] = R"sql(
UPDATE idem_dedup SET status = 1, lease_until = 0, expires_at = ?4
WHERE scope = ?1 AND id = ?2 AND status = 0 AND token = ?3
)sql";

//   ?1 scope  ?2 id  ?3 token  ?4 lease_until  ?5 expires_at
constexpr char kExtendSql[] = R"sql(
UPDATE idem_dedup SET lease_until = ?4, expires_at = ?5
WHERE scope = ?1 AND id = ?2 AND status = 0 AND token = ?3
)sql";

// A WITHOUT ROWID table takes no DELETE … LIMIT (unless SQLite was built with it), hence the
// subquery. Live claims are never purged, whatever their expires_at.
//   ?1 now  ?2 limit (-1: none)
constexpr char kPurgeSql[] = R"sql(
DELETE FROM idem_dedup WHERE (scope, id) IN (
  SELECT scope, id FROM idem_dedup
  WHERE expires_at <= ?1 AND NOT (status = 0 AND lease_until > ?1)
  ORDER BY expires_at LIMIT ?2)
)sql";

struct Statements {
  TxnStatements txn;
  // Claim statements, indexed by whether the request has a version.
  SqliteStmt claim_fresh[2];
  SqliteStmt takeover[2];
  SqliteStmt select_row;
  SqliteStmt select_version;
  SqliteStmt raise_version;
  SqliteStmt complete;
  SqliteStmt release;
  SqliteStmt extend;
  SqliteStmt purge;
};

[[nodiscard]] absl::StatusOr<Statements> PrepareStatements(sqlite3* db) {
  Statements s;
  absl::StatusOr<TxnStatements> txn = internal::PrepareTxnStatements(db);
  if (!txn.ok()) return txn.status();
  s.txn = std::move(txn).value();
  const std::string claim_sql[] = {absl::StrCat(kClaimRow, internal::kOnConflictDoNothing),
                                   absl::StrCat(kClaimRowIfNewer, internal::kOnConflictDoNothing),
                                   absl::StrCat(kClaimRow, internal::kOnConflictTakeOver),
                                   absl::StrCat(kClaimRowIfNewer, internal::kOnConflictTakeOver)};
  const std::pair<SqliteStmt*, const char*> all[] = {
      {&s.claim_fresh[0], claim_sql[0].c_str()},
      {&s.claim_fresh[1], claim_sql[1].c_str()},
      {&s.takeover[0], claim_sql[2].c_str()},
      {&s.takeover[1], claim_sql[3].c_str()},
      {&s.select_row, internal::kSelectRowSql},
      {&s.select_version, internal::kSelectVersionSql},
      {&s.raise_version, internal::kRaiseVersionSql},
      {&s.complete, kCompleteSql},
      {&s.release, kReleaseSql},
      {&s.extend, kExtendSql},
      {&s.purge, kPurgeSql},
  };
  for (const auto& [slot, sql] : all) {
    absl::StatusOr<SqliteStmt> stmt = internal::Prepare(db, sql);
    if (!stmt.ok()) return stmt.status();
    *slot = std::move(stmt).value();
  }
  return s;
}

// The request's fingerprint as bytes, kept on the caller's stack while statements bind it.
class FingerprintArg {
 public:
  explicit FingerprintArg(const std::optional<Fingerprint>& fingerprint) {
    if (fingerprint) bytes_ = internal::EncodeFingerprint(*fingerprint);
  }
  std::optional<std::string_view> view() const {
    if (!bytes_) return std::nullopt;
    return internal::AsView(*bytes_);
  }

 private:
  std::optional<internal::FingerprintBytes> bytes_;
};

// A claim's result and whether it reclaimed a record past its retention (for Stats).
struct ClaimOutcome {
  ClaimResult result;
  bool retention_reclaim = false;
};

// One call in the store's write queue: a claim or a completion (exactly one is set), pointing
// into its caller's frame.
struct WriteOp {
  const ClaimRequest* claim = nullptr;
  const CompleteRequest* complete = nullptr;
};

// Its result: the one of its kind is set.
struct WriteResult {
  explicit WriteResult(absl::StatusOr<ClaimResult> c) : claim(std::move(c)) {}
  explicit WriteResult(absl::StatusOr<CompleteStatus> c) : complete(std::move(c)) {}
  // A failure of the whole write, for either kind.
  explicit WriteResult(const absl::Status& failure) : claim(failure), complete(failure) {}
  std::optional<absl::StatusOr<ClaimResult>> claim;
  std::optional<absl::StatusOr<CompleteStatus>> complete;
};

class SqliteStore final : public DedupStore {
 public:
  SqliteStore(SqliteStoreOptions options, SqliteDb db, Statements statements)
      : options_(std::move(options)),
        clock_(options_.clock != nullptr ? options_.clock : &SystemClock()),
        db_(std::move(db)),
        st_(std::move(statements)) {
    if (!options_.token_source) options_.token_source = internal::RandomTokenSource();
  }

  // Claim and Complete go through the write queue (group commit): concurrent calls are written in
  // one transaction, claims and completions together, in the order they queued; a call alone
  // runs ClaimAlone or CompleteAlone, the code it ran before grouping.
  absl::StatusOr<ClaimResult> Claim(const ClaimRequest& request) override {
    if (absl::Status s = ValidateClaimRequest(request, options_.max_id_bytes); !s.ok()) return s;
    WriteResult result = queue_.Write(WriteOp{.claim = &request}, alone_, group_);
    return *std::move(result.claim);
  }

  absl::StatusOr<CompleteStatus> Complete(const CompleteRequest& request) override {
    if (absl::Status s = ValidateCompleteRequest(request, options_.max_id_bytes); !s.ok()) {
      return s;
    }
    WriteResult result = queue_.Write(WriteOp{.complete = &request}, alone_, group_);
    return *std::move(result.complete);
  }

  // REQUIRES: `request` is valid.
  absl::StatusOr<ClaimResult> ClaimAlone(const ClaimRequest& request) {
    absl::MutexLock lock(&mu_);
    WriteTxn txn(db_.get(), st_.txn);
    if (absl::Status s = txn.Begin("claim"); !s.ok()) return s;
    // Read after the lock is held, so leases follow the order in which writers commit.
    const int64_t now = clock_->NowMillis();
    absl::StatusOr<ClaimOutcome> outcome = ClaimLocked(request, now);
    if (!outcome.ok()) return outcome.status();
    if (absl::Status s = txn.Commit("claim"); !s.ok()) return s;
    Count(*outcome);
    return std::move(outcome)->result;
  }

  std::vector<absl::StatusOr<ClaimResult>> ClaimBatch(
      std::span<const ClaimRequest> requests) override {
    std::vector<absl::StatusOr<ClaimResult>> out(requests.size(), ClaimResult{});
    std::vector<std::size_t> valid;
    for (std::size_t i = 0; i < requests.size(); ++i) {
      if (absl::Status s = ValidateClaimRequest(requests[i], options_.max_id_bytes); !s.ok()) {
        out[i] = s;
      } else {
        valid.push_back(i);
      }
    }
    if (valid.empty()) return out;

    std::vector<ClaimOutcome> outcomes;
    outcomes.reserve(valid.size());
    absl::Status failure = [&]() -> absl::Status {
      absl::MutexLock lock(&mu_);
      WriteTxn txn(db_.get(), st_.txn);
      if (absl::Status s = txn.Begin("claim batch"); !s.ok()) return s;
      const int64_t now = clock_->NowMillis();
      for (std::size_t i : valid) {
        absl::StatusOr<ClaimOutcome> outcome = ClaimLocked(requests[i], now);
        if (!outcome.ok()) return outcome.status();
        outcomes.push_back(*std::move(outcome));
      }
      return txn.Commit("claim batch");
    }();
    for (std::size_t k = 0; k < valid.size(); ++k) {
      if (!failure.ok()) {
        out[valid[k]] = failure;
      } else {
        Count(outcomes[k]);
        out[valid[k]] = std::move(outcomes[k].result);
      }
    }
    return out;
  }

  // REQUIRES: `request` is valid.
  absl::StatusOr<CompleteStatus> CompleteAlone(const CompleteRequest& request) {
    absl::MutexLock lock(&mu_);
    WriteTxn txn(db_.get(), st_.txn);
    if (absl::Status s = txn.Begin("complete"); !s.ok()) return s;
    const int64_t now = clock_->NowMillis();
    absl::StatusOr<std::optional<CompleteStatus>> done = CompleteLocked(request, now);
    if (!done.ok()) return done.status();
    if (!done->has_value()) return Fenced("complete");  // the guard rolls back (nothing changed)
    if (absl::Status s = txn.Commit("complete"); !s.ok()) return s;
    counters_.CountCompletion(**done);
    return **done;
  }

  std::vector<absl::StatusOr<CompleteStatus>> CompleteBatch(
      std::span<const CompleteRequest> requests) override {
    std::vector<absl::StatusOr<CompleteStatus>> out(requests.size(), CompleteStatus::kCompleted);
    std::vector<std::size_t> valid;
    for (std::size_t i = 0; i < requests.size(); ++i) {
      if (absl::Status s = ValidateCompleteRequest(requests[i], options_.max_id_bytes); !s.ok()) {
        out[i] = s;
      } else {
        valid.push_back(i);
      }
    }
    if (valid.empty()) return out;

    // nullopt: the entry's token no longer owns its claim; its UPDATE matched no row, so it
    // changed nothing and the others may still commit.
    std::vector<std::optional<CompleteStatus>> outcomes;
    outcomes.reserve(valid.size());
    absl::Status failure = [&]() -> absl::Status {
      absl::MutexLock lock(&mu_);
      WriteTxn txn(db_.get(), st_.txn);
      if (absl::Status s = txn.Begin("complete batch"); !s.ok()) return s;
      const int64_t now = clock_->NowMillis();
      for (std::size_t i : valid) {
        absl::StatusOr<std::optional<CompleteStatus>> done = CompleteLocked(requests[i], now);
        if (!done.ok()) return done.status();
        outcomes.push_back(*done);
      }
      return txn.Commit("complete batch");
    }();
    for (std::size_t k = 0; k < valid.size(); ++k) {
      if (!failure.ok()) {
        out[valid[k]] = failure;
      } else if (!outcomes[k].has_value()) {
        out[valid[k]] = Fenced("complete");
      } else {
        counters_.CountCompletion(*outcomes[k]);
        out[valid[k]] = *outcomes[k];
      }
    }
    return out;
  }

  // A group of the write queue: every claim and completion in one BEGIN IMMEDIATE … COMMIT, in
  // queue order, each with its own outcome exactly as ClaimBatch and CompleteBatch give them (a
  // later claim of an id sees an earlier one's claim; a fenced completion matches no row and
  // changes nothing). A failure of the transaction (busy, I/O error, disk full) rolls all of it
  // back and is every member's status; one that may come from one member's own record (DataLoss,
  // InvalidArgument, Internal) is not, and each member is then written alone, so that it gets what
  // it would have got alone (the rolled-back group wrote nothing).
  std::vector<WriteResult> WriteGroup(std::span<const WriteOp> ops) {
    struct Done {
      std::optional<ClaimOutcome> claim;
      std::optional<CompleteStatus> complete;  // nullopt for a completion: fenced
    };
    std::vector<Done> done;
    done.reserve(ops.size());
    const absl::Status failure = [&]() -> absl::Status {
      absl::MutexLock lock(&mu_);
      WriteTxn txn(db_.get(), st_.txn);
      if (absl::Status s = txn.Begin("grouped write"); !s.ok()) return s;
      const int64_t now = clock_->NowMillis();
      for (const WriteOp& op : ops) {
        if (op.claim != nullptr) {
          absl::StatusOr<ClaimOutcome> outcome = ClaimLocked(*op.claim, now);
          if (!outcome.ok()) return outcome.status();
          done.push_back(Done{.claim = *std::move(outcome)});
        } else {
          absl::StatusOr<std::optional<CompleteStatus>> completed =
              CompleteLocked(*op.complete, now);
          if (!completed.ok()) return completed.status();
          done.push_back(Done{.complete = *completed});
        }
      }
      return txn.Commit("grouped write");
    }();
    std::vector<WriteResult> out;
    out.reserve(ops.size());
    if (!failure.ok()) {
      // The message names the statement that failed, which may be another member's: say so.
      const absl::Status each(failure.code(),
                              absl::StrCat(failure.message(), " (in a transaction of ",
                                           ops.size(), " calls written together)"));
      const absl::StatusCode code = failure.code();
      const bool own = code == absl::StatusCode::kDataLoss ||
                       code == absl::StatusCode::kInvalidArgument ||
                       code == absl::StatusCode::kInternal;
      for (const WriteOp& op : ops) out.push_back(own ? alone_(op) : WriteResult(each));
      return out;
    }
    for (std::size_t i = 0; i < ops.size(); ++i) {
      if (ops[i].claim != nullptr) {
        Count(*done[i].claim);
        out.push_back(WriteResult(absl::StatusOr<ClaimResult>(std::move(done[i].claim->result))));
      } else if (!done[i].complete.has_value()) {
        out.push_back(WriteResult(absl::StatusOr<CompleteStatus>(Fenced("complete"))));
      } else {
        counters_.CountCompletion(*done[i].complete);
        out.push_back(WriteResult(absl::StatusOr<CompleteStatus>(*done[i].complete)));
      }
    }
    return out;
  }

  absl::Status Release(std::string_view scope, std::string_view id, uint64_t token) override {
    if (absl::Status s = internal::ValidateOwnerArgs(scope, id, token, options_.max_id_bytes);
        !s.ok()) {
      return s;
    }
    absl::MutexLock lock(&mu_);
    WriteTxn txn(db_.get(), st_.txn);
    if (absl::Status s = txn.Begin("release"); !s.ok()) return s;
    const int64_t now = clock_->NowMillis();
    {
      StmtRun run(st_.release.get(), "release");
      run.Text(1, scope).Blob(2, id).Int64(3, TokenToSql(token)).Int64(4, now + Retention());
      if (absl::Status s = run.Run(); !s.ok()) return s;
    }
    if (sqlite3_changes(db_.get()) == 0) return Fenced("release");
    return txn.Commit("release");
  }

  absl::StatusOr<int64_t> Extend(std::string_view scope, std::string_view id, uint64_t token,
                                 std::chrono::milliseconds lease) override {
    if (absl::Status s = internal::ValidateOwnerArgs(scope, id, token, options_.max_id_bytes);
        !s.ok()) {
      return s;
    }
    if (absl::Status s = ValidateLease(lease); !s.ok()) return s;
    absl::MutexLock lock(&mu_);
    WriteTxn txn(db_.get(), st_.txn);
    if (absl::Status s = txn.Begin("extend"); !s.ok()) return s;
    const int64_t lease_until = clock_->NowMillis() + lease.count();
    {
      StmtRun run(st_.extend.get(), "extend");
      run.Text(1, scope).Blob(2, id).Int64(3, TokenToSql(token)).Int64(4, lease_until);
      run.Int64(5, lease_until + Retention());
      if (absl::Status s = run.Run(); !s.ok()) return s;
    }
    if (sqlite3_changes(db_.get()) == 0) return Fenced("extend");
    if (absl::Status s = txn.Commit("extend"); !s.ok()) return s;
    return lease_until;
  }

  absl::StatusOr<int64_t> PurgeExpired(int64_t limit) override {
    if (absl::Status s = ValidatePurgeLimit(limit); !s.ok()) return s;
    absl::MutexLock lock(&mu_);
    WriteTxn txn(db_.get(), st_.txn);
    if (absl::Status s = txn.Begin("purge"); !s.ok()) return s;
    {
      StmtRun run(st_.purge.get(), "purge");
      run.Int64(1, clock_->NowMillis()).Int64(2, limit > 0 ? limit : -1);
      if (absl::Status s = run.Run(); !s.ok()) return s;
    }
    const int64_t purged = sqlite3_changes64(db_.get());
    if (absl::Status s = txn.Commit("purge"); !s.ok()) return s;
    internal::StoreCounters::Add(counters_.purged, static_cast<uint64_t>(purged));
    return purged;
  }

  absl::StatusOr<std::optional<uint64_t>> AppliedVersion(std::string_view scope,
                                                         std::string_view key) override {
    if (absl::Status s = ValidateScope(scope); !s.ok()) return s;
    if (absl::Status s = ValidateId(key, options_.max_id_bytes, "version key"); !s.ok()) return s;
    absl::MutexLock lock(&mu_);
    return ReadVersionLocked(scope, key);
  }

  absl::StatusOr<std::optional<RecordInfo>> Inspect(std::string_view scope,
                                                    std::string_view id) override {
    if (absl::Status s = ValidateScope(scope); !s.ok()) return s;
    if (absl::Status s = ValidateId(id, options_.max_id_bytes); !s.ok()) return s;
    absl::MutexLock lock(&mu_);
    absl::StatusOr<std::optional<DedupRow>> row = ReadRowLocked(scope, id, "inspect");
    if (!row.ok()) return row.status();
    if (!row->has_value()) return std::optional<RecordInfo>();
    const DedupRow& r = **row;
    RecordInfo info{.token = r.token,
                    .attempts = r.attempts,
                    .lease_until_ms = r.status == internal::kStatusInProgress ? r.lease_until : 0,
                    .expires_at_ms = r.expires_at,
                    .result = r.result};
    switch (r.status) {
      case internal::kStatusInProgress:
        info.state = RecordState::kInProgress;
        break;
      case internal::kStatusReleased:
        info.state = RecordState::kReleased;
        break;
      case internal::kStatusCompleted:
        info.state = RecordState::kCompleted;
        break;
      default:
        return absl::DataLossError(absl::StrCat("sqlite: unknown record status ", r.status));
    }
    if (r.fingerprint) info.fingerprint = Fingerprint::FromBytes(*r.fingerprint);
    return std::optional<RecordInfo>(std::move(info));
  }

  StoreStats Stats() const override { return counters_.Snapshot(); }

  std::string_view BackendName() const override { return "sqlite"; }

  // sqlite_store_testing.h. Takes only the queue's lock: callable from a token source.
  std::size_t QueuedForTesting() { return queue_.waiting(); }

  // sqlite_store_testing.h: one pragma that returns one integer, on the store's connection.
  absl::StatusOr<int64_t> PragmaForTesting(const std::string& sql) {
    absl::MutexLock lock(&mu_);
    absl::StatusOr<SqliteStmt> stmt = internal::Prepare(db_.get(), sql);
    if (!stmt.ok()) return stmt.status();
    StmtRun run(stmt->get(), "pragma");
    absl::StatusOr<bool> row = run.Step();
    if (!row.ok()) return row.status();
    if (!*row) return absl::InternalError("sqlite: the pragma returned no row");
    return run.ColumnInt64(0);
  }

  // Operator calls (sqlite_admin.cc). WaitForCompletion is the default: Inspect polled with
  // backoff (another process may complete the claim, and SQLite tells nobody).
  absl::StatusOr<ListPage> List(const ListRequest& request) override {
    absl::MutexLock lock(&mu_);
    return internal::SqliteList(db_.get(), request, clock_->NowMillis());
  }
  absl::Status ResetAttempts(std::string_view scope, std::string_view id,
                             uint64_t token) override {
    if (absl::Status s = internal::ValidateOwnerArgs(scope, id, token, options_.max_id_bytes);
        !s.ok()) {
      return s;
    }
    absl::MutexLock lock(&mu_);
    const int64_t now = clock_->NowMillis();
    return internal::SqliteResetAttempts(db_.get(), st_.txn, scope, id, token, now,
                                         now + Retention());
  }

 private:
  int64_t Retention() const { return options_.retention.count(); }

  [[nodiscard]] absl::Status Fenced(std::string_view operation) {
    internal::StoreCounters::Add(counters_.fenced);
    return internal::FencedError("sqlite", operation);
  }

  // REQUIRES: inside a write transaction.
  [[nodiscard]] absl::StatusOr<ClaimOutcome> ClaimLocked(const ClaimRequest& request, int64_t now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const uint64_t token = options_.token_source();
    const int64_t lease_until = now + request.lease.count();
    const FingerprintArg fingerprint(request.fingerprint);
    const bool versioned = request.version.has_value();
    const std::string version =
        versioned ? internal::EncodeVersion(request.version->version) : std::string();
    // The parameters both claim statements take: ?1 … ?6, and the version gate's ?7, ?8.
    auto bind = [&](StmtRun& run) {
      run.Text(1, request.scope).Blob(2, request.id).Int64(3, TokenToSql(token));
      run.Int64(4, lease_until).OptionalBlob(5, fingerprint.view());
      run.Int64(6, lease_until + Retention());
      if (versioned) run.Blob(7, request.version->key).Blob(8, version);
    };

    {
      StmtRun run(st_.claim_fresh[versioned].get(), "claim");
      bind(run);
      if (absl::Status s = run.Run(); !s.ok()) return s;
    }
    if (sqlite3_changes(db_.get()) == 1) {
      return ClaimOutcome{.result = ClaimResult{.status = ClaimStatus::kAcquired,
                                                .token = token,
                                                .attempt = 1,
                                                .lease_until_ms = lease_until}};
    }

    // The id exists, or the version gate refused it. A duplicate, a conflict or a live claim (most
    // refusals) is answered from one read; only a record that looks claimable goes on to the
    // takeover, which is still a single upsert whose own WHERE decides. Same transaction: the row
    // cannot change in between.
    absl::StatusOr<std::optional<DedupRow>> row = ReadRowLocked(request.scope, request.id, "claim");
    if (!row.ok()) return row.status();
    if (row->has_value()) {
      if (std::optional<ClaimResult> held =
              internal::ClassifyHeld(**row, fingerprint.view(), now)) {
        return ClaimOutcome{.result = *std::move(held)};
      }
    }

    // No row at all: the fresh insert was refused by the version gate alone (classified below).
    if (row->has_value()) {
      StmtRun run(st_.takeover[versioned].get(), "claim", "take over");
      bind(run);
      run.Int64(9, now).Int64(10, request.max_attempts).Int64(11, 1);
      if (absl::Status s = run.Run(); !s.ok()) return s;
    }
    if (row->has_value() && sqlite3_changes(db_.get()) == 1) {
      row = ReadRowLocked(request.scope, request.id, "claim");
      if (!row.ok()) return row.status();
      if (!row->has_value()) return absl::InternalError("sqlite: a claimed record is missing");
      const int origin = (*row)->claim_origin;
      return ClaimOutcome{.result = ClaimResult{.status = ClaimStatus::kAcquired,
                                                .token = token,
                                                .attempt = (*row)->attempts,
                                                .lease_until_ms = lease_until,
                                                .took_over = origin == internal::kOriginTakeover},
                          .retention_reclaim = origin == internal::kOriginRetention};
    }

    // Claimable in shape but not claimed: the version gate or max_attempts refused it.
    if (request.version) {
      absl::StatusOr<std::optional<uint64_t>> applied =
          ReadVersionLocked(request.scope, request.version->key);
      if (!applied.ok()) return applied.status();
      if (applied->has_value() && **applied >= request.version->version) {
        return ClaimOutcome{
            .result = ClaimResult{.status = ClaimStatus::kStale, .applied_version = *applied}};
      }
    }
    if (row->has_value() && (*row)->status != internal::kStatusCompleted &&
        request.max_attempts > 0 && (*row)->attempts >= request.max_attempts) {
      return ClaimOutcome{
          .result = ClaimResult{.status = ClaimStatus::kDeadLettered, .attempt = (*row)->attempts}};
    }
    return absl::InternalError("sqlite: claim was neither acquired nor refused");
  }

  // nullopt when the token does not own the claim (nothing written).
  // REQUIRES: inside a write transaction.
  [[nodiscard]] absl::StatusOr<std::optional<CompleteStatus>> CompleteLocked(
      const CompleteRequest& request, int64_t now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const int64_t retention =
        request.retention.count() > 0 ? request.retention.count() : Retention();
    const FingerprintArg fingerprint(request.fingerprint);
    {
      StmtRun run(st_.complete.get(), "complete");
      run.Text(1, request.scope).Blob(2, request.id).Int64(3, TokenToSql(request.token));
      run.Int64(4, now + retention).OptionalBlob(5, request.result);
      run.OptionalBlob(6, fingerprint.view());
      if (absl::Status s = run.Run(); !s.ok()) return s;
    }
    if (sqlite3_changes(db_.get()) == 0) return std::optional<CompleteStatus>();
    if (!request.version) return CompleteStatus::kCompleted;

    const std::string version = internal::EncodeVersion(request.version->version);
    {
      StmtRun run(st_.raise_version.get(), "complete", "raise version");
      run.Text(1, request.scope).Blob(2, request.version->key).Blob(3, version);
      if (absl::Status s = run.Run(); !s.ok()) return s;
    }
    return sqlite3_changes(db_.get()) == 1 ? CompleteStatus::kCompleted : CompleteStatus::kStale;
  }

  [[nodiscard]] absl::StatusOr<std::optional<DedupRow>> ReadRowLocked(std::string_view scope,
                                                                      std::string_view id,
                                                                      std::string_view operation)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return internal::ReadRow(st_.select_row.get(), scope, id, operation);
  }

  [[nodiscard]] absl::StatusOr<std::optional<uint64_t>> ReadVersionLocked(std::string_view scope,
                                                                          std::string_view key)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    StmtRun run(st_.select_version.get(), "read version");
    run.Text(1, scope).Blob(2, key);
    absl::StatusOr<bool> found = run.Step();
    if (!found.ok()) return found.status();
    if (!*found) return std::optional<uint64_t>();
    std::optional<std::string> bytes = run.ColumnBlob(0);
    absl::StatusOr<uint64_t> version = internal::DecodeVersion(bytes.value_or(""));
    if (!version.ok()) return version.status();
    return std::optional<uint64_t>(*version);
  }

  void Count(const ClaimOutcome& outcome) {
    counters_.CountClaim(outcome.result, outcome.retention_reclaim);
  }

  SqliteStoreOptions options_;
  Clock* clock_;
  internal::StoreCounters counters_;
  // Group commit: one queue per store (SQLite has one writer), one group in flight.
  std::function<WriteResult(const WriteOp&)> alone_ = [this](const WriteOp& op) {
    return op.claim != nullptr ? WriteResult(ClaimAlone(*op.claim))
                               : WriteResult(CompleteAlone(*op.complete));
  };
  std::function<std::vector<WriteResult>(std::span<const WriteOp>)> group_ =
      [this](std::span<const WriteOp> ops) { return WriteGroup(ops); };
  internal::WriteQueue<WriteOp, WriteResult> queue_{options_.group_limit, &counters_};
  absl::Mutex mu_;
  // Declared before the statements, so they are finalized before the connection closes.
  SqliteDb db_ ABSL_GUARDED_BY(mu_);
  Statements st_ ABSL_GUARDED_BY(mu_);
};

[[nodiscard]] absl::Status ValidateOptions(const SqliteStoreOptions& options) {
  if (options.path.empty()) return absl::InvalidArgumentError("sqlite: path is empty");
  if (options.path.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError("sqlite: path contains a NUL byte");
  }
  if (options.busy_timeout.count() < 0 || options.busy_timeout.count() > INT_MAX) {
    return absl::InvalidArgumentError("sqlite: busy_timeout must be within 0..INT_MAX ms");
  }
  if (options.retention.count() <= 0) {
    return absl::InvalidArgumentError("sqlite: retention must be > 0");
  }
  if (absl::Status s = internal::ValidateGroupLimit(options.group_limit, "sqlite"); !s.ok()) {
    return s;
  }
  // SQLite's default SQLITE_MAX_LENGTH is 10^9 bytes; stay well within a bound int.
  if (options.max_id_bytes == 0 || options.max_id_bytes > (1u << 24)) {
    return absl::InvalidArgumentError("sqlite: max_id_bytes must be within 1..16 MiB");
  }
  return absl::OkStatus();
}

// WAL lets readers proceed while one process writes; it is a property of the file, so the first
// opener converts it and later openers find it set.
[[nodiscard]] absl::Status EnableWal(sqlite3* db) {
  absl::StatusOr<SqliteStmt> stmt = internal::Prepare(db, "PRAGMA journal_mode = WAL");
  if (!stmt.ok()) return stmt.status();
  StmtRun run(stmt->get(), "enable WAL");
  absl::StatusOr<bool> row = run.Step();
  if (!row.ok()) return row.status();
  const std::optional<std::string> mode = *row ? run.ColumnBlob(0) : std::nullopt;
  // An in-memory database reports "memory"; it has no file to share.
  if (mode != "wal" && mode != "memory") {
    return absl::FailedPreconditionError(absl::StrCat(
        "sqlite: could not switch the database to WAL (journal_mode is ", mode.value_or("?"), ")"));
  }
  return run.Run();
}

}  // namespace

int SqliteSchemaVersion() { return internal::kSchemaVersion; }

namespace internal {

absl::Status SetSqliteMaxPageCountForTesting(DedupStore& store, int64_t pages) {
  auto* sqlite = dynamic_cast<SqliteStore*>(&store);
  if (sqlite == nullptr) return absl::InvalidArgumentError("not a store from NewSqliteStore");
  return sqlite->PragmaForTesting(absl::StrCat("PRAGMA max_page_count = ", pages)).status();
}

absl::StatusOr<std::size_t> SqliteQueuedCallsForTesting(DedupStore& store) {
  auto* sqlite = dynamic_cast<SqliteStore*>(&store);
  if (sqlite == nullptr) return absl::InvalidArgumentError("not a store from NewSqliteStore");
  return sqlite->QueuedForTesting();
}

absl::StatusOr<int64_t> SqlitePageCountForTesting(DedupStore& store) {
  auto* sqlite = dynamic_cast<SqliteStore*>(&store);
  if (sqlite == nullptr) return absl::InvalidArgumentError("not a store from NewSqliteStore");
  return sqlite->PragmaForTesting("PRAGMA page_count");
}

}  // namespace internal

absl::StatusOr<SqliteSynchronous> ParseSqliteSynchronous(std::string_view name) {
  for (SqliteSynchronous setting : {SqliteSynchronous::kOff, SqliteSynchronous::kNormal,
                                    SqliteSynchronous::kFull, SqliteSynchronous::kExtra}) {
    if (absl::EqualsIgnoreCase(internal::ToAbsl(name),
                               internal::ToAbsl(SqliteSynchronousName(setting)))) {
      return setting;
    }
  }
  // A prefix only: the name may come from a URI or a flag of any length.
  constexpr std::size_t kQuoted = 32;
  return absl::InvalidArgumentError(
      absl::StrCat("sqlite: synchronous must be off, normal, full or extra, got '",
                   internal::ToAbsl(name.substr(0, kQuoted)), name.size() > kQuoted ? "…'" : "'"));
}

std::string_view SqliteSynchronousName(SqliteSynchronous synchronous) {
  switch (synchronous) {
    case SqliteSynchronous::kOff:
      return "off";
    case SqliteSynchronous::kNormal:
      return "normal";
    case SqliteSynchronous::kFull:
      return "full";
    case SqliteSynchronous::kExtra:
      return "extra";
  }
  return "full";
}

absl::StatusOr<std::unique_ptr<DedupStore>> NewSqliteStore(SqliteStoreOptions options) {
  if (absl::Status s = ValidateOptions(options); !s.ok()) return s;
  sqlite3* raw = nullptr;
  // NOMUTEX: the store serialises use of its connection itself.
  const int rc = sqlite3_open_v2(
      options.path.c_str(), &raw,
      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE,
      nullptr);
  SqliteDb db(raw);
  if (rc != SQLITE_OK) return SqliteStatus(rc, raw, "open database");
  sqlite3_extended_result_codes(db.get(), 1);
  sqlite3_busy_timeout(db.get(), static_cast<int>(options.busy_timeout.count()));

  if (absl::Status s = internal::Exec(
          db.get(), internal::SynchronousPragma(options.synchronous).c_str(), "set synchronous");
      !s.ok()) {
    return s;
  }
  if (absl::Status s = EnableWal(db.get()); !s.ok()) return s;
  if (absl::Status s = internal::EnsureSchema(db.get()); !s.ok()) return s;
  absl::StatusOr<Statements> statements = PrepareStatements(db.get());
  if (!statements.ok()) return statements.status();
  return std::unique_ptr<DedupStore>(
      new SqliteStore(std::move(options), std::move(db), std::move(statements).value()));
}

}  // namespace idem

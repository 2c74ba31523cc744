// DedupStore: the contract every idem backend honours (docs/design.md: "Records and states",
// "Outcomes", "Invariants").
//
// A store keeps, per (scope, message id), a dedup record that moves
//   absent -> IN_PROGRESS(token, lease_until, attempts) -> COMPLETED(result?, fingerprint?,
//   expires_at)
// and, per (scope, key), the highest applied version (the version gate).
//
// Outcomes that a consumer expects in normal operation (duplicate, in progress, stale, conflict,
// dead-lettered) are values in the results below. A non-OK absl::Status always means the store
// could not do what was asked and changed nothing that the caller can observe (except where a
// code says the call may have been applied):
//   InvalidArgument    bad scope, id, key, token, lease or request (never retried)
//   Unavailable        the store is down, busy or locked; retry the call with backoff. For a
//                      remote store whose connection broke mid-call, the call may have been
//                      applied (retry: the claim and the owner checks make that safe)
//   DeadlineExceeded   the call timed out (Redis I/O timeout, PostgreSQL statement_timeout); the
//                      write may or may not have been applied
//   Aborted            the token no longer owns the claim (lease lost); retry from the claim
//   ResourceExhausted  a capacity bound was reached: the in-memory store's capacity, a full
//                      disk or out of memory (SQLite, PostgreSQL), Redis at maxmemory (OOM)
//   FailedPrecondition schema or configuration mismatch (a newer schema, a read-only database,
//                      a key of another type, a missing Redis db); in SQLite transactional mode
//                      also a handler's write refused at COMMIT (a deferred constraint), in
//                      PostgreSQL a missing table or a read-only server
//   DataLoss           the store's data is corrupt or not idem's
//   Unauthenticated    the server refused or requires authentication (Redis NOAUTH, WRONGPASS)
//   PermissionDenied   the credentials or the file lack a permission (Redis NOPERM; SQLite PERM,
//                      AUTH; PostgreSQL authentication or privilege errors)
//   Cancelled          the call was interrupted (SQLite INTERRUPT, e.g. sqlite3_interrupt)
//   Internal           a reply or state the store cannot explain (an unexpected server reply,
//                      an unknown SQLite or PostgreSQL error); report it
//   Unimplemented      the operation or backend is not built
// The operator calls (List, ResetAttempts) also return NotFound when the id has no record.
//
// Thread-safety: every DedupStore implementation is safe to call from several threads at once.
#ifndef IDEM_STORE_H_
#define IDEM_STORE_H_

#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "idem/types.h"

namespace idem {

// Default lease of a claim, and default retention of a COMPLETED record.
inline constexpr std::chrono::milliseconds kDefaultLease{30'000};
inline constexpr std::chrono::milliseconds kDefaultRetention{7LL * 24 * 3600 * 1000};

struct ClaimRequest {
  std::string_view scope;
  std::string_view id;
  // How long the claim is held before anyone may take it over. Must be > 0.
  std::chrono::milliseconds lease = kDefaultLease;
  // When set, a record stored with a different fingerprint yields kConflict.
  std::optional<Fingerprint> fingerprint;
  // 0: unlimited. Otherwise a claimable record that already had this many attempts yields
  // kDeadLettered and is not claimed.
  uint32_t max_attempts = 0;
  // When set, a version <= the key's applied version yields kStale and nothing is claimed. The
  // check is repeated atomically at Complete; this early check only saves running a stale handler.
  std::optional<VersionStamp> version;
};

enum class ClaimStatus {
  kAcquired,      // the caller owns the claim: run the handler, then Complete or Release
  kDuplicate,     // COMPLETED before; `result` holds the stored result if one was saved
  kInProgress,    // another live claim holds it
  kStale,         // the version gate refused `request.version`
  kConflict,      // the id is known with a different payload fingerprint
  kDeadLettered,  // attempts reached max_attempts
};
std::string_view ClaimStatusName(ClaimStatus status);

struct ClaimResult {
  ClaimStatus status = ClaimStatus::kAcquired;
  // kAcquired: the fencing token that Complete, Release and Extend must present. Unique per claim.
  uint64_t token = 0;
  // kAcquired: this attempt's number, 1 for the first. Otherwise the attempts recorded so far.
  uint32_t attempt = 0;
  // kAcquired and kInProgress: when the lease ends, in the store's clock (milliseconds).
  int64_t lease_until_ms = 0;
  // kAcquired: true when an expired lease of another claim was taken over.
  bool took_over = false;
  // kDuplicate: the result saved by Complete, if any.
  std::optional<std::string> result;
  // kStale: the key's applied version.
  std::optional<uint64_t> applied_version;
};

struct CompleteRequest {
  std::string_view scope;
  std::string_view id;
  uint64_t token = 0;
  // Saved with the record and handed back to duplicates.
  std::optional<std::string_view> result;
  // Saved with the record if the claim did not already store one.
  std::optional<Fingerprint> fingerprint;
  // When set, the version gate is applied atomically with the completion: the record is
  // COMPLETED either way, and the key's version is raised only if `version` is newer.
  std::optional<VersionStamp> version;
  // How long the COMPLETED record is kept. 0: the store's default retention.
  std::chrono::milliseconds retention{0};
};

enum class CompleteStatus {
  kCompleted,  // COMPLETED, and the version (if any) applied
  kStale,      // COMPLETED, but the version gate refused the version: nothing was applied
};
std::string_view CompleteStatusName(CompleteStatus status);

enum class RecordState { kInProgress, kReleased, kCompleted };
std::string_view RecordStateName(RecordState state);

// What a store holds for one id, for operators and tests.
struct RecordInfo {
  RecordState state = RecordState::kInProgress;
  uint64_t token = 0;
  uint32_t attempts = 0;
  int64_t lease_until_ms = 0;  // IN_PROGRESS only
  int64_t expires_at_ms = 0;   // when the record may be purged
  std::optional<Fingerprint> fingerprint;
  std::optional<std::string> result;
};

// Counters a store keeps since it was opened. Backends fill in what they can count.
struct StoreStats {
  uint64_t claims_acquired = 0;
  uint64_t takeovers = 0;
  uint64_t duplicates = 0;
  uint64_t in_progress = 0;
  uint64_t stale = 0;
  uint64_t conflicts = 0;
  uint64_t dead_lettered = 0;
  uint64_t completed = 0;
  uint64_t fenced = 0;               // Complete/Release/Extend refused with Aborted
  uint64_t retention_reclaims = 0;   // an expired COMPLETED record was claimed again
  uint64_t capacity_rejections = 0;  // in-memory store: ResourceExhausted
  uint64_t evictions = 0;            // in-memory store: oldest record evicted
  uint64_t purged = 0;
  // Group commit (docs/design.md, "Group commit"): writes that carried more than one concurrent
  // call (a transaction or a pipelined round trip), and how many calls they carried. A call
  // written alone is in neither. Stores without grouping (memory) leave both at 0.
  uint64_t write_groups = 0;
  uint64_t grouped_calls = 0;
};

// Which records List returns. The filters overlap: a stuck claim is also in progress, and a
// dead-lettered record is released or stuck.
enum class ListFilter {
  kAll,
  kInProgress,    // IN_PROGRESS, whether its lease is live or not
  kStuck,         // IN_PROGRESS past its lease: its consumer died or hangs
  kReleased,      // RELEASED: claimable again at once
  kDeadLettered,  // not COMPLETED, no live lease, attempts >= ListRequest::max_attempts
  kCompleted,     // COMPLETED
};
std::string_view ListFilterName(ListFilter filter);
// "all", "in_progress", "stuck", "released", "dead_lettered", "completed"; nullopt otherwise.
std::optional<ListFilter> ParseListFilter(std::string_view name);

struct ListRequest {
  std::string_view scope;
  ListFilter filter = ListFilter::kAll;
  // kDeadLettered: the consumers' max_attempts. Must be > 0 with that filter.
  uint32_t max_attempts = 0;
  // Most records in one page: 1..10000.
  std::size_t limit = 100;
  // Empty for the first page, else the `next_cursor` of the previous page. Opaque: its form
  // depends on the backend.
  std::string_view cursor;
};

struct ListedRecord {
  std::string id;
  RecordInfo info;
};

struct ListPage {
  std::vector<ListedRecord> records;
  // Empty when the listing is done; else pass it as ListRequest::cursor for the next page.
  std::string next_cursor;
};

// Whether `info` matches `filter` at store time `now_ms` (shared by backends that filter in C++).
bool MatchesListFilter(const RecordInfo& info, ListFilter filter, uint32_t max_attempts,
                       int64_t now_ms);
// Validates a list request (scope, filter, limit); InvalidArgument otherwise.
[[nodiscard]] absl::Status ValidateListRequest(const ListRequest& request);

class DedupStore {
 public:
  virtual ~DedupStore() = default;

  // Claims (scope, id): inserts an IN_PROGRESS record with a fresh token, or takes over a record
  // that was released or whose lease expired (attempts + 1), in one atomic step.
  // Returns the ClaimResult for every outcome; a non-OK status means nothing was claimed.
  [[nodiscard]] virtual absl::StatusOr<ClaimResult> Claim(const ClaimRequest& request) = 0;

  // Marks the claim COMPLETED. Returns kCompleted, or kStale when the version gate refused
  // `request.version`. Aborted (and no change) when `request.token` does not own the claim.
  [[nodiscard]] virtual absl::StatusOr<CompleteStatus> Complete(const CompleteRequest& request) = 0;

  // Returns the claim to a claimable state at once, keeping the attempt count.
  // Aborted (and no change) when `token` does not own the claim.
  [[nodiscard]] virtual absl::Status Release(std::string_view scope, std::string_view id,
                                             uint64_t token) = 0;

  // Moves the lease end to now + `lease`. Returns the new lease end (store clock, ms).
  // Aborted (and no change) when `token` does not own the claim.
  [[nodiscard]] virtual absl::StatusOr<int64_t> Extend(std::string_view scope, std::string_view id,
                                                       uint64_t token,
                                                       std::chrono::milliseconds lease) = 0;

  // Claims several ids in one transaction or round trip. One entry per request, in order; a
  // failure of the whole batch repeats its status in every entry. The default loops over Claim.
  [[nodiscard]] virtual std::vector<absl::StatusOr<ClaimResult>> ClaimBatch(
      std::span<const ClaimRequest> requests);

  // Completes several claims in one transaction or round trip, with per-entry outcomes.
  // The default loops over Complete.
  [[nodiscard]] virtual std::vector<absl::StatusOr<CompleteStatus>> CompleteBatch(
      std::span<const CompleteRequest> requests);

  // Deletes COMPLETED records past their retention and abandoned claims past their lease and
  // retention, at most `limit` of them (0: no limit). Returns how many were deleted.
  // InvalidArgument for a negative limit (ValidatePurgeLimit). (No default argument: a default on
  // a virtual function is bound by the caller's static type, so an override could never change
  // it.)
  [[nodiscard]] virtual absl::StatusOr<int64_t> PurgeExpired(int64_t limit) = 0;

  // The highest version applied for (scope, key), or nullopt if none was.
  [[nodiscard]] virtual absl::StatusOr<std::optional<uint64_t>> AppliedVersion(
      std::string_view scope, std::string_view key) = 0;

  // What the store holds for (scope, id), or nullopt. The default is Unimplemented.
  [[nodiscard]] virtual absl::StatusOr<std::optional<RecordInfo>> Inspect(std::string_view scope,
                                                                          std::string_view id);

  // Counters since the store was opened. The default returns zeros.
  virtual StoreStats Stats() const { return {}; }

  // "memory", "sqlite", "redis", ...
  virtual std::string_view BackendName() const = 0;

  // --- Operator calls (idem-admin) and waiting. Added after the core contract; each has a
  // default body so that a backend without them still builds (as leveldb's Cache::Prune).

  // One page of the records of `request.scope` that match `request.filter`, in an order the
  // backend keeps from page to page. Records written while a listing runs may or may not be
  // seen; a record present throughout is returned at least once (Redis's SCAN may repeat one).
  // InvalidArgument for a bad request or cursor. The default is Unimplemented.
  [[nodiscard]] virtual absl::StatusOr<ListPage> List(const ListRequest& request);

  // Clears the attempt count of a dead-lettered record, so that its next delivery is claimed
  // again (attempt 1). Fenced by `token`, the record's token as Inspect or List showed it: the
  // record becomes RELEASED with 0 attempts only if it still holds that token and is not a live
  // claim. NotFound when there is no record; Aborted (no change) when the token differs, i.e. the
  // record changed since it was read; FailedPrecondition (no change) when it is COMPLETED or a
  // live claim. The default is Unimplemented.
  [[nodiscard]] virtual absl::Status ResetAttempts(std::string_view scope, std::string_view id,
                                                   uint64_t token);

  // Waits until (scope, id) is no longer a live claim (COMPLETED, RELEASED, absent, or its lease
  // ended) or until `deadline`. Returns true when the claim ended, false at the deadline. It
  // changes nothing: the caller claims again to learn the outcome. The default polls Inspect with
  // a growing delay (1 ms doubling to 50 ms), never in a tight loop; backends that can be told
  // block instead. Errors: those of Inspect.
  [[nodiscard]] virtual absl::StatusOr<bool> WaitForCompletion(
      std::string_view scope, std::string_view id,
      std::chrono::steady_clock::time_point deadline);
};

// Returns OK if 0 < lease <= 2^40 ms (about 34 years); InvalidArgument otherwise.
[[nodiscard]] absl::Status ValidateLease(std::chrono::milliseconds lease);
// Returns OK if limit >= 0 (0: no limit); InvalidArgument otherwise.
[[nodiscard]] absl::Status ValidatePurgeLimit(int64_t limit);
// Validates a claim request: scope (ValidateScope), id and version key (ValidateId), lease
// (ValidateLease).
[[nodiscard]] absl::Status ValidateClaimRequest(const ClaimRequest& request,
                                                std::size_t max_id_bytes = kDefaultMaxIdBytes);
// Validates a complete request (scope, id, version key).
[[nodiscard]] absl::Status ValidateCompleteRequest(const CompleteRequest& request,
                                                   std::size_t max_id_bytes = kDefaultMaxIdBytes);

}  // namespace idem

#endif  // IDEM_STORE_H_

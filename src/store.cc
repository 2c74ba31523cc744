#include "idem/store.h"

#include <algorithm>
#include <thread>

#include "absl/strings/str_cat.h"
#include "internal/owner.h"

namespace idem {
namespace {

// Leases and retentions are kept far below what would overflow `now + duration` in int64
// milliseconds or lose precision in a Lua double (2^53): 2^40 ms is about 34 years.
constexpr int64_t kMaxDurationMillis = int64_t{1} << 40;

}  // namespace

std::string_view ClaimStatusName(ClaimStatus status) {
  switch (status) {
    case ClaimStatus::kAcquired:
      return "acquired";
    case ClaimStatus::kDuplicate:
      return "duplicate";
    case ClaimStatus::kInProgress:
      return "in_progress";
    case ClaimStatus::kStale:
      return "stale";
    case ClaimStatus::kConflict:
      return "conflict";
    case ClaimStatus::kDeadLettered:
      return "dead_lettered";
  }
  return "unknown";
}

std::string_view CompleteStatusName(CompleteStatus status) {
  switch (status) {
    case CompleteStatus::kCompleted:
      return "completed";
    case CompleteStatus::kStale:
      return "stale";
  }
  return "unknown";
}

std::string_view RecordStateName(RecordState state) {
  switch (state) {
    case RecordState::kInProgress:
      return "IN_PROGRESS";
    case RecordState::kReleased:
      return "RELEASED";
    case RecordState::kCompleted:
      return "COMPLETED";
  }
  return "UNKNOWN";
}

absl::Status ValidateLease(std::chrono::milliseconds lease) {
  if (lease.count() <= 0 || lease.count() > kMaxDurationMillis) {
    return absl::InvalidArgumentError(
        absl::StrCat("lease must be within 1..2^40 ms, got ", lease.count(), " ms"));
  }
  return absl::OkStatus();
}

absl::Status ValidatePurgeLimit(int64_t limit) {
  if (limit < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("purge limit must be >= 0 (0: no limit), got ", limit));
  }
  return absl::OkStatus();
}

absl::Status ValidateClaimRequest(const ClaimRequest& request, std::size_t max_id_bytes) {
  if (absl::Status s = ValidateScope(request.scope); !s.ok()) return s;
  if (absl::Status s = ValidateId(request.id, max_id_bytes); !s.ok()) return s;
  if (absl::Status s = ValidateLease(request.lease); !s.ok()) return s;
  if (request.version.has_value()) {
    if (absl::Status s = ValidateId(request.version->key, max_id_bytes, "version key"); !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateCompleteRequest(const CompleteRequest& request, std::size_t max_id_bytes) {
  if (absl::Status s =
          internal::ValidateOwnerArgs(request.scope, request.id, request.token, max_id_bytes);
      !s.ok()) {
    return s;
  }
  if (request.retention.count() < 0 || request.retention.count() > kMaxDurationMillis) {
    return absl::InvalidArgumentError(absl::StrCat("retention must be within 0..2^40 ms, got ",
                                                   request.retention.count(), " ms"));
  }
  if (request.version.has_value()) {
    if (absl::Status s = ValidateId(request.version->key, max_id_bytes, "version key"); !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

namespace internal {

absl::Status ValidateOwnerArgs(std::string_view scope, std::string_view id, uint64_t token,
                               std::size_t max_id_bytes) {
  if (absl::Status s = ValidateScope(scope); !s.ok()) return s;
  if (absl::Status s = ValidateId(id, max_id_bytes); !s.ok()) return s;
  if (token == 0) return absl::InvalidArgumentError("token 0 is never issued by a claim");
  return absl::OkStatus();
}

absl::Status FencedError(std::string_view backend, std::string_view operation) {
  return absl::AbortedError(absl::StrCat(
      std::string(backend), ": ", std::string(operation),
      " refused: the token no longer owns the claim (it was taken over after its lease ended, "
      "released, completed, or the record expired)"));
}

}  // namespace internal

std::vector<absl::StatusOr<ClaimResult>> DedupStore::ClaimBatch(
    std::span<const ClaimRequest> requests) {
  std::vector<absl::StatusOr<ClaimResult>> out;
  out.reserve(requests.size());
  for (const ClaimRequest& request : requests) out.push_back(Claim(request));
  return out;
}

std::vector<absl::StatusOr<CompleteStatus>> DedupStore::CompleteBatch(
    std::span<const CompleteRequest> requests) {
  std::vector<absl::StatusOr<CompleteStatus>> out;
  out.reserve(requests.size());
  for (const CompleteRequest& request : requests) out.push_back(Complete(request));
  return out;
}

absl::StatusOr<std::optional<RecordInfo>> DedupStore::Inspect(std::string_view, std::string_view) {
  return absl::UnimplementedError(
      absl::StrCat("Inspect is not implemented by the ", std::string(BackendName()), " backend"));
}

}  // namespace idem

namespace idem {

std::string_view ListFilterName(ListFilter filter) {
  switch (filter) {
    case ListFilter::kAll:
      return "all";
    case ListFilter::kInProgress:
      return "in_progress";
    case ListFilter::kStuck:
      return "stuck";
    case ListFilter::kReleased:
      return "released";
    case ListFilter::kDeadLettered:
      return "dead_lettered";
    case ListFilter::kCompleted:
      return "completed";
  }
  return "unknown";
}

std::optional<ListFilter> ParseListFilter(std::string_view name) {
  for (ListFilter filter : {ListFilter::kAll, ListFilter::kInProgress, ListFilter::kStuck,
                            ListFilter::kReleased, ListFilter::kDeadLettered,
                            ListFilter::kCompleted}) {
    if (ListFilterName(filter) == name) return filter;
  }
  return std::nullopt;
}

bool MatchesListFilter(const RecordInfo& info, ListFilter filter, uint32_t max_attempts,
                       int64_t now_ms) {
  const bool live = info.state == RecordState::kInProgress && info.lease_until_ms > now_ms;
  switch (filter) {
    case ListFilter::kAll:
      return true;
    case ListFilter::kInProgress:
      return info.state == RecordState::kInProgress;
    case ListFilter::kStuck:
      return info.state == RecordState::kInProgress && !live;
    case ListFilter::kReleased:
      return info.state == RecordState::kReleased;
    case ListFilter::kDeadLettered:
      return info.state != RecordState::kCompleted && !live && max_attempts > 0 &&
             info.attempts >= max_attempts;
    case ListFilter::kCompleted:
      return info.state == RecordState::kCompleted;
  }
  return false;
}

absl::Status ValidateListRequest(const ListRequest& request) {
  if (absl::Status s = ValidateScope(request.scope); !s.ok()) return s;
  if (request.limit < 1 || request.limit > 10'000) {
    return absl::InvalidArgumentError(
        absl::StrCat("list: limit must be within 1..10000, got ", request.limit));
  }
  if (request.filter == ListFilter::kDeadLettered && request.max_attempts == 0) {
    return absl::InvalidArgumentError("list: the dead_lettered filter needs max_attempts > 0");
  }
  return absl::OkStatus();
}

absl::StatusOr<ListPage> DedupStore::List(const ListRequest&) {
  return absl::UnimplementedError(
      absl::StrCat("List is not implemented by the ", std::string(BackendName()), " backend"));
}

absl::Status DedupStore::ResetAttempts(std::string_view, std::string_view, uint64_t) {
  return absl::UnimplementedError(absl::StrCat("ResetAttempts is not implemented by the ",
                                               std::string(BackendName()), " backend"));
}

absl::StatusOr<bool> DedupStore::WaitForCompletion(
    std::string_view scope, std::string_view id,
    std::chrono::steady_clock::time_point deadline) {
  // Polls with a delay that doubles from 1 ms to 50 ms: a claim that ends at once is seen at
  // once, a long one costs at most 20 reads a second. A claim whose lease ended and that nobody
  // took over stays IN_PROGRESS; lease_until is in the store's clock, which this default cannot
  // read, so such a wait lasts until the deadline and the caller's next claim takes it over.
  std::chrono::milliseconds delay(1);
  while (true) {
    absl::StatusOr<std::optional<RecordInfo>> info = Inspect(scope, id);
    if (!info.ok()) return info.status();
    if (!info->has_value() || (*info)->state != RecordState::kInProgress) return true;
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) return false;
    std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(delay, deadline - now));
    delay = std::min(delay * 2, std::chrono::milliseconds(50));
  }
}

}  // namespace idem

#include "idem/store.h"

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

#include "idem/store.h"

#include "absl/strings/str_cat.h"

namespace idem {

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

absl::Status ValidateClaimRequest(const ClaimRequest& request, std::size_t max_id_bytes) {
  if (absl::Status s = ValidateScope(request.scope); !s.ok()) return s;
  if (absl::Status s = ValidateId(request.id, max_id_bytes); !s.ok()) return s;
  if (request.lease.count() <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("lease must be positive, got ", request.lease.count(), " ms"));
  }
  if (request.version.has_value()) {
    if (absl::Status s = ValidateId(request.version->key, max_id_bytes, "version key"); !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateCompleteRequest(const CompleteRequest& request, std::size_t max_id_bytes) {
  if (absl::Status s = ValidateScope(request.scope); !s.ok()) return s;
  if (absl::Status s = ValidateId(request.id, max_id_bytes); !s.ok()) return s;
  if (request.token == 0) return absl::InvalidArgumentError("token 0 is never issued by a claim");
  if (request.retention.count() < 0) {
    return absl::InvalidArgumentError("retention must not be negative");
  }
  if (request.version.has_value()) {
    if (absl::Status s = ValidateId(request.version->key, max_id_bytes, "version key"); !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

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

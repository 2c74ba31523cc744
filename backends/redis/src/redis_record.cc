#include "redis_record.h"

#include "absl/status/status.h"
#include "internal/big_endian.h"

namespace idem::internal::redis {

void AppendOwner(std::string* out, uint64_t token) {
  out->push_back('P');
  AppendBigEndian(out, token, 8);
}

void AppendNewClaimRecord(std::string* out, uint64_t token, uint64_t keep_ms,
                          const std::optional<Fingerprint>& fingerprint) {
  out->push_back(kRecordFormat);
  AppendOwner(out, token);
  AppendBigEndian(out, 1, 4);
  AppendBigEndian(out, keep_ms, 8);
  AppendCompletedTail(out, fingerprint, std::nullopt);
}

void AppendCompletedTail(std::string* out, const std::optional<Fingerprint>& fingerprint,
                         const std::optional<std::string_view>& result) {
  out->push_back(
      static_cast<char>((fingerprint.has_value() ? 1 : 0) | (result.has_value() ? 2 : 0)));
  if (fingerprint.has_value()) {
    AppendBigEndian(out, fingerprint->high, 8);
    AppendBigEndian(out, fingerprint->low, 8);
  }
  if (result.has_value()) out->append(*result);
}

absl::StatusOr<DecodedRecord> DecodeRecord(std::string_view value) {
  if (value.size() < kRecordHeaderSize || value[0] != kRecordFormat) {
    return absl::DataLossError("not an idem record (format 1)");
  }
  DecodedRecord record;
  switch (value[1]) {
    case 'P':
      record.state = RecordState::kInProgress;
      break;
    case 'R':
      record.state = RecordState::kReleased;
      break;
    case 'C':
      record.state = RecordState::kCompleted;
      break;
    default:
      return absl::DataLossError("unknown record state");
  }
  record.token = LoadBigEndian(value.substr(2, 8));
  record.attempts = static_cast<uint32_t>(LoadBigEndian(value.substr(10, 4)));
  record.keep_ms = static_cast<int64_t>(LoadBigEndian(value.substr(14, 8)));
  const unsigned flags = static_cast<unsigned char>(value[22]);
  std::string_view rest = value.substr(kRecordHeaderSize);
  if ((flags & 1) != 0) {
    if (rest.size() < kFingerprintSize) return absl::DataLossError("truncated fingerprint");
    record.fingerprint = Fingerprint::FromBytes(rest.substr(0, kFingerprintSize));
    rest.remove_prefix(kFingerprintSize);
  }
  if ((flags & 2) != 0) {
    record.result = std::string(rest);
  } else if (!rest.empty()) {
    return absl::DataLossError("trailing bytes after the record");
  }
  return record;
}

}  // namespace idem::internal::redis

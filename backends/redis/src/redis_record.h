// The value of a dedup record in Redis: one packed, binary-safe string, written by the C++
// client (a new claim) and by the Lua scripts (redis_scripts.h), and read by both. Private to
// the Redis backend.
//
// Layout, format 1 (integers big-endian; Lua reads the header with struct.unpack(kHeader)):
//   offset  size  field
//   0       1     format, 0x01
//   1       1     state: 'P' IN_PROGRESS, 'R' RELEASED, 'C' COMPLETED
//   2       8     token: the claim's fencing token (uint64). Lua only compares these bytes
//   10      4     attempts: claims so far (uint32)
//   14      8     keep: ms the record outlives its lease (the store's retention at claim time)
//   22      1     flags: bit 0 a fingerprint follows, bit 1 a result follows
//   23      16    fingerprint (only with flag bit 0)
//   23|39   rest  result (only with flag bit 1; may be empty)
//
// Time is not stored: it is the key's TTL, counted by the server's clock. An IN_PROGRESS record
// lives for lease + keep, so its lease is live while PTTL > keep; a RELEASED one lives for keep,
// a COMPLETED one for its retention.
#ifndef IDEM_BACKENDS_REDIS_SRC_REDIS_RECORD_H_
#define IDEM_BACKENDS_REDIS_SRC_REDIS_RECORD_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "idem/store.h"
#include "idem/types.h"

namespace idem::internal::redis {

inline constexpr char kRecordFormat = '\x01';
inline constexpr std::size_t kRecordHeaderSize = 23;
inline constexpr std::size_t kFingerprintSize = 16;

// Appends 'P' and `token`: a record's bytes 1..9 while `token` owns its claim (what the complete,
// release and extend scripts compare).
void AppendOwner(std::string* out, uint64_t token);

// Appends the record of a new claim: IN_PROGRESS, `token`, attempt 1, `keep_ms`, and the
// fingerprint if there is one.
void AppendNewClaimRecord(std::string* out, uint64_t token, uint64_t keep_ms,
                          const std::optional<Fingerprint>& fingerprint);

// Appends what follows the header of a COMPLETED record: flags, the fingerprint and the result,
// each if there is one.
void AppendCompletedTail(std::string* out, const std::optional<Fingerprint>& fingerprint,
                         const std::optional<std::string_view>& result);

struct DecodedRecord {
  RecordState state = RecordState::kInProgress;
  uint64_t token = 0;
  uint32_t attempts = 0;
  int64_t keep_ms = 0;
  std::optional<Fingerprint> fingerprint;
  std::optional<std::string> result;
};

// Decodes a record value. DataLoss if it is not a format-1 record.
absl::StatusOr<DecodedRecord> DecodeRecord(std::string_view value);

}  // namespace idem::internal::redis

#endif  // IDEM_BACKENDS_REDIS_SRC_REDIS_RECORD_H_

// Fuzzes the decoder of Redis record values (what a server, or a corrupted key, hands back): any
// bytes decode to a record or to DataLoss, never a crash, and a decoded record's parts are
// consistent with the bytes.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "redis_record.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace redis = idem::internal::redis;
  const std::string_view value(reinterpret_cast<const char*>(data), size);
  const absl::StatusOr<redis::DecodedRecord> record = redis::DecodeRecord(value);
  if (!record.ok()) {
    if (record.status().code() != absl::StatusCode::kDataLoss) std::abort();
    return 0;
  }
  if (size < redis::kRecordHeaderSize) std::abort();
  std::size_t expected = redis::kRecordHeaderSize;
  if (record->fingerprint) expected += redis::kFingerprintSize;
  if (record->result) expected += record->result->size();
  if (expected != size) std::abort();
  return 0;
}

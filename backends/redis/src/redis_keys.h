// Key and value encodings of the Redis store. Private to the Redis backend.
#ifndef IDEM_BACKENDS_REDIS_SRC_REDIS_KEYS_H_
#define IDEM_BACKENDS_REDIS_SRC_REDIS_KEYS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace idem::internal::redis {

// Keys are
//   <len(prefix)>:<prefix>:r:<len(scope)>:<scope>:<id>     a dedup record (redis_record.h)
//   <len(prefix)>:<prefix>:v:<len(scope)>:<scope>:<key>    a version-gate entry (string)
// with lengths in canonical decimal. Reading left to right, each length says exactly where its
// field ends, the tag separates records from versions, and the id (or key) is the rest: the
// encoding decodes uniquely, so two different (prefix, scope, id) never share a key, whatever
// bytes they hold (NUL, 0xFF, ':'). e.g. ("idem", "a", "b:c") -> "4:idem:r:1:a:b:c" and
// ("idem", "a:b", "c") -> "4:idem:r:3:a:b:c".
std::string RecordKey(std::string_view prefix, std::string_view scope, std::string_view id);
std::string VersionKey(std::string_view prefix, std::string_view scope, std::string_view key);
// Cluster mode's route pointer of (prefix, scope, id), with the tag 'p' (redis_cluster_scripts.h):
//   <len(prefix)>:<prefix>:p:<len(scope)>:<scope>:<id>
// The same, appended to `out`.
void AppendPointerKey(std::string* out, std::string_view prefix, std::string_view scope,
                      std::string_view id);
void AppendRecordKey(std::string* out, std::string_view prefix, std::string_view scope,
                     std::string_view id);
void AppendVersionKey(std::string* out, std::string_view prefix, std::string_view scope,
                      std::string_view key);

// A version as exactly 20 decimal digits, zero-padded: byte-wise order equals numeric order over
// the whole uint64 range (UINT64_MAX has 20 digits).
std::string EncodeVersion(uint64_t version);
void AppendVersion(std::string* out, uint64_t version);
// The inverse; nullopt unless `text` is exactly 20 digits spelling a uint64.
std::optional<uint64_t> DecodeVersion(std::string_view text);

}  // namespace idem::internal::redis

#endif  // IDEM_BACKENDS_REDIS_SRC_REDIS_KEYS_H_

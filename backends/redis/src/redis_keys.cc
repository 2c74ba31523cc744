#include "redis_keys.h"

#include "absl/strings/str_cat.h"

namespace idem::internal::redis {
namespace {

void AppendKey(std::string* out, std::string_view prefix, char tag, std::string_view scope,
               std::string_view id) {
  absl::StrAppend(out, prefix.size());
  out->push_back(':');
  out->append(prefix);
  const char tag_text[] = {':', tag, ':'};
  out->append(tag_text, sizeof(tag_text));
  absl::StrAppend(out, scope.size());
  out->push_back(':');
  out->append(scope);
  out->push_back(':');
  out->append(id);  // binary-safe: appended by length, never through a C string
}

}  // namespace

void AppendRecordKey(std::string* out, std::string_view prefix, std::string_view scope,
                     std::string_view id) {
  AppendKey(out, prefix, 'r', scope, id);
}

void AppendVersionKey(std::string* out, std::string_view prefix, std::string_view scope,
                      std::string_view key) {
  AppendKey(out, prefix, 'v', scope, key);
}

void AppendPointerKey(std::string* out, std::string_view prefix, std::string_view scope,
                      std::string_view id) {
  AppendKey(out, prefix, 'p', scope, id);
}

std::string RecordKey(std::string_view prefix, std::string_view scope, std::string_view id) {
  std::string key;
  AppendRecordKey(&key, prefix, scope, id);
  return key;
}

std::string VersionKey(std::string_view prefix, std::string_view scope, std::string_view key) {
  std::string out;
  AppendVersionKey(&out, prefix, scope, key);
  return out;
}

void AppendVersion(std::string* out, uint64_t version) {
  char digits[20];
  for (int i = 19; i >= 0; --i) {
    digits[i] = static_cast<char>('0' + version % 10);
    version /= 10;
  }
  out->append(digits, sizeof(digits));
}

std::string EncodeVersion(uint64_t version) {
  std::string out;
  AppendVersion(&out, version);
  return out;
}

std::optional<uint64_t> DecodeVersion(std::string_view text) {
  if (text.size() != 20) return std::nullopt;
  // UINT64_MAX = 18446744073709551615; a 20-digit string above it is not a version.
  if (text > std::string_view("18446744073709551615")) return std::nullopt;
  uint64_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    value = value * 10 + static_cast<uint64_t>(c - '0');
  }
  return value;
}

}  // namespace idem::internal::redis
